//! An in-memory [`Store`] that implements only operator tokens, for this crate's tests.
//! Everything else answers with an error so an accidental dependency shows up.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Mutex;

use mayfly_core::audit::{AuditDraft, AuditEvent, VerifyReport};
use mayfly_core::model::{Grant, Identity, Lease, LeaseSelector, RevocationReason, Target};
use mayfly_core::store::{
    AuditFilter, GrantFilter, LeaseFilter, OperatorTokenRecord, RevokeOutcome, SigningKeyRecord,
    Store, StoreError, StoreStats,
};
use mayfly_core::{OffsetDateTime, Uuid};

#[derive(Default)]
pub(crate) struct TokenStore {
    pub tokens: Mutex<Vec<OperatorTokenRecord>>,
    /// When set, every call fails as if the database were down.
    pub down: std::sync::atomic::AtomicBool,
    pub lookups: std::sync::atomic::AtomicUsize,
}

fn unused<T>() -> Result<T, StoreError> {
    Err(StoreError::Backend(
        "not implemented in the test store".into(),
    ))
}

#[async_trait::async_trait]
impl Store for TokenStore {
    async fn create_task(
        &self,
        _: &mayfly_core::model::Task,
        _: AuditDraft,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn get_task(
        &self,
        _: mayfly_core::Uuid,
    ) -> Result<Option<mayfly_core::model::Task>, StoreError> {
        unused()
    }
    async fn list_tasks(
        &self,
        _: &mayfly_core::store::TaskFilter,
    ) -> Result<Vec<mayfly_core::model::Task>, StoreError> {
        unused()
    }
    async fn end_task(
        &self,
        _: mayfly_core::Uuid,
        _: mayfly_core::model::TaskState,
        _: Option<i32>,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<(mayfly_core::model::Task, RevokeOutcome), StoreError> {
        unused()
    }
    async fn expire_due_tasks(
        &self,
        _: OffsetDateTime,
        _: u32,
    ) -> Result<Vec<mayfly_core::Uuid>, StoreError> {
        unused()
    }
    async fn next_task_deadline(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        unused()
    }
    async fn request_approval(
        &self,
        _: &mayfly_core::model::Grant,
        _: &mayfly_core::model::ApprovalRecord,
        _: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn record_break_glass(
        &self,
        _: &mayfly_core::model::Grant,
        _: &mayfly_core::model::Lease,
        _: &mayfly_core::model::ApprovalRecord,
        _: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn get_approval(
        &self,
        _: mayfly_core::Uuid,
    ) -> Result<Option<mayfly_core::model::ApprovalRecord>, StoreError> {
        unused()
    }
    async fn list_approvals(
        &self,
        _: &mayfly_core::store::ApprovalFilter,
    ) -> Result<Vec<mayfly_core::model::ApprovalRecord>, StoreError> {
        unused()
    }
    async fn vote(
        &self,
        _: mayfly_core::Uuid,
        _: &mayfly_core::model::ApprovalVote,
        _: AuditDraft,
        _: OffsetDateTime,
    ) -> Result<mayfly_core::model::ApprovalRecord, StoreError> {
        unused()
    }
    async fn collect_approval(
        &self,
        _: mayfly_core::Uuid,
        _: &mayfly_core::model::Lease,
        _: Vec<AuditDraft>,
        _: OffsetDateTime,
    ) -> Result<mayfly_core::model::ApprovalRecord, StoreError> {
        unused()
    }
    async fn expire_approvals(
        &self,
        _: OffsetDateTime,
        _: u32,
    ) -> Result<Vec<mayfly_core::Uuid>, StoreError> {
        unused()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn create_identity(&self, _: &Identity, _: AuditDraft) -> Result<(), StoreError> {
        unused()
    }
    async fn get_identity(&self, _: &str) -> Result<Option<Identity>, StoreError> {
        unused()
    }
    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError> {
        unused()
    }
    async fn enable_identity(&self, _: &str, _: AuditDraft) -> Result<Identity, StoreError> {
        unused()
    }
    async fn disable_identity(
        &self,
        _: &str,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        unused()
    }
    async fn create_target(
        &self,
        _: &Target,
        _: Option<&[u8]>,
        _: AuditDraft,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn get_target(&self, _: &str) -> Result<Option<Target>, StoreError> {
        unused()
    }
    async fn list_targets(&self) -> Result<Vec<Target>, StoreError> {
        unused()
    }
    async fn record_grant(
        &self,
        _: &Grant,
        _: Option<&Lease>,
        _: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn get_grant(&self, _: Uuid) -> Result<Option<Grant>, StoreError> {
        unused()
    }
    async fn list_grants(&self, _: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
        unused()
    }
    async fn get_lease(&self, _: Uuid) -> Result<Option<Lease>, StoreError> {
        unused()
    }
    async fn list_leases(&self, _: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        unused()
    }
    async fn renew_lease(
        &self,
        _: Uuid,
        _: OffsetDateTime,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<Lease, StoreError> {
        unused()
    }
    async fn revoke(
        &self,
        _: &LeaseSelector,
        _: RevocationReason,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        unused()
    }
    async fn expire_due(&self, _: OffsetDateTime, _: u32) -> Result<Vec<Lease>, StoreError> {
        unused()
    }
    async fn next_expiry(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        unused()
    }
    async fn append_audit(&self, _: Vec<AuditDraft>) -> Result<(), StoreError> {
        unused()
    }
    async fn list_audit(&self, _: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        unused()
    }
    async fn verify_audit(&self) -> Result<VerifyReport, StoreError> {
        unused()
    }
    async fn add_signing_key(
        &self,
        _: &SigningKeyRecord,
        _: Option<OffsetDateTime>,
        _: AuditDraft,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        unused()
    }
    async fn add_audit_checkpoint(
        &self,
        _: &mayfly_core::checkpoint::Checkpoint,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn latest_audit_checkpoint(
        &self,
    ) -> Result<Option<mayfly_core::checkpoint::Checkpoint>, StoreError> {
        unused()
    }
    async fn add_operator_token(&self, token: &OperatorTokenRecord) -> Result<(), StoreError> {
        self.tokens.lock().unwrap().push(token.clone());
        Ok(())
    }
    async fn find_operator_token(
        &self,
        sha256: &[u8],
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        use std::sync::atomic::Ordering;
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("database is down".into()));
        }
        Ok(self
            .tokens
            .lock()
            .unwrap()
            .iter()
            .find(|t| t.token_sha256 == sha256)
            .cloned())
    }
    async fn count_operator_tokens(&self) -> Result<u64, StoreError> {
        Ok(self.tokens.lock().unwrap().len() as u64)
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        unused()
    }
    async fn get_target_secret(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        unused()
    }
    async fn set_target_secret(&self, _: &str, _: &[u8], _: AuditDraft) -> Result<(), StoreError> {
        unused()
    }
    async fn begin_root_rotation(&self, _: &str, _: &[u8]) -> Result<(), StoreError> {
        unused()
    }
    async fn commit_root_rotation(
        &self,
        _: &str,
        _: &[u8],
        _: AuditDraft,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn abandon_root_rotation(
        &self,
        _: &str,
        _: &[u8],
        _: AuditDraft,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn pending_root_rotations(
        &self,
    ) -> Result<Vec<mayfly_core::store::PendingRootRotation>, StoreError> {
        unused()
    }
    async fn activate_lease(
        &self,
        _: Uuid,
        _: &serde_json::Value,
        _: AuditDraft,
    ) -> Result<Lease, StoreError> {
        unused()
    }
    async fn abandon_lease(
        &self,
        _: Uuid,
        _: bool,
        _: &str,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<Lease, StoreError> {
        unused()
    }
    async fn claim_revocations(
        &self,
        _: OffsetDateTime,
        _: u32,
        _: time::Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        unused()
    }
    async fn complete_revocation(
        &self,
        _: Uuid,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<Option<Lease>, StoreError> {
        unused()
    }
    async fn revocation_failed(
        &self,
        _: Uuid,
        _: &str,
        _: OffsetDateTime,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        unused()
    }
    async fn live_provider_states(&self, _: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        unused()
    }
    async fn recorded_names(
        &self,
        _: &str,
        _: &str,
        _: &[String],
    ) -> Result<std::collections::BTreeMap<String, bool>, StoreError> {
        unused()
    }
    async fn create_operator_token(
        &self,
        token: &OperatorTokenRecord,
        _: AuditDraft,
    ) -> Result<(), StoreError> {
        self.add_operator_token(token).await
    }
    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError> {
        Ok(self.tokens.lock().unwrap().clone())
    }
    async fn revoke_operator_token(
        &self,
        name: &str,
        _: bool,
        now: OffsetDateTime,
        event: AuditDraft,
    ) -> Result<OperatorTokenRecord, StoreError> {
        let mut tokens = self.tokens.lock().unwrap();
        let token = tokens
            .iter_mut()
            .find(|t| t.name == name && t.revoked_at.is_none())
            .ok_or_else(|| StoreError::NotFound {
                what: "operator token",
                id: name.into(),
            })?;
        token.revoked_at = Some(now);
        token.revoked_by = Some(event.actor);
        Ok(token.clone())
    }
    async fn update_identity(&self, _: &Identity, _: AuditDraft) -> Result<Identity, StoreError> {
        unused()
    }
    async fn delete_identity(&self, _: &str, _: AuditDraft) -> Result<(), StoreError> {
        unused()
    }
    async fn update_target(&self, _: &Target, _: AuditDraft) -> Result<Target, StoreError> {
        unused()
    }
    async fn delete_target(&self, _: &str, _: AuditDraft) -> Result<(), StoreError> {
        unused()
    }
    async fn claim_webhook(
        &self,
        _: &str,
        _: &str,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> Result<Option<mayfly_core::store::WebhookCursor>, StoreError> {
        unused()
    }
    async fn advance_webhook(
        &self,
        _: &str,
        _: &str,
        _: u64,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        unused()
    }
    async fn webhook_failed(
        &self,
        _: &str,
        _: &str,
        _: &str,
        _: OffsetDateTime,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        unused()
    }
    async fn release_webhook(&self, _: &str, _: &str) -> Result<(), StoreError> {
        unused()
    }
}
