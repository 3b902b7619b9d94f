//! The engine's batch rules against a scripted backend: which failures stay with their
//! operation and which fail the whole group commit.

use std::sync::{Arc, Mutex};

use mayfly_core::audit::{AuditDraft, AuditKind, GENESIS_HASH};
use mayfly_core::model::{
    ApprovalRecord, Grant, Identity, IdentityKind, Lease, LeaseSelector, RevocationReason, Target,
};
use mayfly_core::store::{OperatorTokenRecord, SigningKeyRecord, Store, StoreError};
use mayfly_core::{OffsetDateTime, Uuid};

use super::store::{EngineStore, Reads};
use super::writer::{spawn, Placement};
use super::{Backend, Ended, GrantEnd, GrantMove, Head, LeaseRow, SealedRow};

/// What the scripted backend was asked to do, in order.
type Calls = Arc<Mutex<Vec<&'static str>>>;

/// Creating identity `bad` fails with `error`; everything else succeeds.
struct Scripted {
    error: StoreError,
    calls: Calls,
}

impl Scripted {
    fn note(&self, call: &'static str) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }
}

#[async_trait::async_trait]
impl Backend for Scripted {
    type AuditRows = usize;
    const AUDIT_CHUNK: usize = 8;

    async fn begin(&mut self) -> Result<Head, StoreError> {
        self.note("begin");
        Ok(Head {
            seq: 0,
            hash: GENESIS_HASH.into(),
        })
    }
    async fn commit(&mut self) -> Result<(), StoreError> {
        self.note("commit");
        Ok(())
    }
    async fn rollback(&mut self) {
        self.note("rollback");
    }
    async fn savepoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn release_savepoint(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.note("rollback_to_savepoint");
        Ok(())
    }
    async fn insert_identity(&mut self, identity: &Identity) -> Result<(), StoreError> {
        if identity.id == "bad" {
            return Err(self.error.clone());
        }
        Ok(())
    }
    async fn enable_identity(&mut self, _: &str) -> Result<Option<Identity>, StoreError> {
        Ok(None)
    }
    async fn disable_identity(&mut self, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    async fn disabled_among(&mut self, _: &[&str]) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn insert_target(&mut self, _: &Target) -> Result<(), StoreError> {
        Ok(())
    }
    async fn target_exists(&mut self, _: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn put_target_secret(
        &mut self,
        _: &str,
        _: &[u8],
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn begin_root_rotation(
        &mut self,
        _: &str,
        _: &[u8],
        _: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn end_root_rotation(&mut self, _: &str, _: &[u8]) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn insert_grants(
        &mut self,
        _: &[(&Grant, Option<&Lease>)],
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn lease_for_update(&mut self, _: Uuid) -> Result<Option<LeaseRow>, StoreError> {
        Ok(None)
    }
    async fn set_lease_expiry(&mut self, _: Uuid, _: OffsetDateTime) -> Result<(), StoreError> {
        Ok(())
    }
    async fn activate_lease(
        &mut self,
        _: Uuid,
        _: &serde_json::Value,
    ) -> Result<Option<LeaseRow>, StoreError> {
        Ok(None)
    }
    async fn abandon_lease(
        &mut self,
        _: Uuid,
        _: bool,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<Option<LeaseRow>, StoreError> {
        Ok(None)
    }
    async fn move_grant(
        &mut self,
        _: Uuid,
        _: GrantMove,
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn end_grants(
        &mut self,
        _: &[Uuid],
        _: GrantEnd,
        _: RevocationReason,
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn end_leases(
        &mut self,
        _: &LeaseSelector,
        _: RevocationReason,
        _: OffsetDateTime,
    ) -> Result<Vec<Ended>, StoreError> {
        Ok(Vec::new())
    }
    async fn expire_due(&mut self, _: OffsetDateTime, _: u32) -> Result<Vec<LeaseRow>, StoreError> {
        Ok(Vec::new())
    }
    async fn claim_revocations(
        &mut self,
        _: OffsetDateTime,
        _: u32,
        _: OffsetDateTime,
    ) -> Result<Vec<Lease>, StoreError> {
        Ok(Vec::new())
    }
    async fn complete_revocation(&mut self, _: Uuid) -> Result<Option<LeaseRow>, StoreError> {
        Ok(None)
    }
    async fn revocation_failed(
        &mut self,
        _: Uuid,
        _: &str,
        _: OffsetDateTime,
    ) -> Result<Option<LeaseRow>, StoreError> {
        Ok(None)
    }
    async fn retire_active_key(
        &mut self,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn insert_signing_key(&mut self, _: &SigningKeyRecord) -> Result<(), StoreError> {
        Ok(())
    }
    async fn insert_operator_token(&mut self, _: &OperatorTokenRecord) -> Result<(), StoreError> {
        Ok(())
    }
    async fn insert_audit_checkpoint(
        &mut self,
        _: &mayfly_core::checkpoint::Checkpoint,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    fn encode_audit(rows: Vec<SealedRow>) -> Result<usize, StoreError> {
        Ok(rows.len())
    }
    async fn insert_audit(&mut self, _: usize) -> Result<(), StoreError> {
        self.note("insert_audit");
        Ok(())
    }
    async fn set_audit_head(&mut self, _: &Head) -> Result<(), StoreError> {
        Ok(())
    }
    async fn unrevoked_operator_token(
        &mut self,
        _: &str,
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        Ok(None)
    }
    async fn revoke_operator_token(
        &mut self,
        _: &str,
        _: OffsetDateTime,
        _: &str,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn count_live_operator_tokens(&mut self, _: OffsetDateTime) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn update_identity(&mut self, _: &Identity) -> Result<Option<Identity>, StoreError> {
        Ok(None)
    }
    async fn delete_identity(&mut self, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn update_target(&mut self, _: &Target) -> Result<Option<Target>, StoreError> {
        Ok(None)
    }
    async fn delete_target(&mut self, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn root_rotation_pending(&mut self, _: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn count_live_leases(&mut self, _: super::LiveOf<'_>) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn insert_task(&mut self, _: &mayfly_core::model::Task) -> Result<(), StoreError> {
        Ok(())
    }
    async fn task_for_update(
        &mut self,
        _: Uuid,
    ) -> Result<Option<mayfly_core::model::Task>, StoreError> {
        Ok(None)
    }
    async fn end_task_tree(
        &mut self,
        _: Uuid,
        _: mayfly_core::model::TaskState,
        _: OffsetDateTime,
    ) -> Result<Vec<Uuid>, StoreError> {
        Ok(Vec::new())
    }
    async fn due_tasks(&mut self, _: OffsetDateTime, _: u32) -> Result<Vec<Uuid>, StoreError> {
        Ok(Vec::new())
    }
    async fn insert_approval(&mut self, _: &ApprovalRecord) -> Result<(), StoreError> {
        Ok(())
    }
    async fn approval_for_update(&mut self, _: Uuid) -> Result<Option<ApprovalRecord>, StoreError> {
        Ok(None)
    }
    async fn update_approval(&mut self, _: &ApprovalRecord) -> Result<(), StoreError> {
        Ok(())
    }
    async fn due_approvals(&mut self, _: OffsetDateTime, _: u32) -> Result<Vec<Uuid>, StoreError> {
        Ok(Vec::new())
    }
    async fn set_grant_state(
        &mut self,
        _: Uuid,
        _: mayfly_core::model::GrantState,
        _: mayfly_core::model::GrantState,
        _: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn insert_lease(
        &mut self,
        _: &str,
        _: &Lease,
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn insert_webhook_cursor(
        &mut self,
        _: &str,
        _: u64,
        _: OffsetDateTime,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    async fn claim_webhook(
        &mut self,
        _: &str,
        _: &str,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> Result<Option<mayfly_core::store::WebhookCursor>, StoreError> {
        Ok(None)
    }
    async fn advance_webhook(
        &mut self,
        _: &str,
        _: &str,
        _: u64,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn webhook_failed(
        &mut self,
        _: &str,
        _: &str,
        _: &str,
        _: OffsetDateTime,
        _: OffsetDateTime,
        _: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    async fn release_webhook(&mut self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Reads are not under test; the engine store needs some.
struct NoReads;

#[async_trait::async_trait]
impl Reads for NoReads {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn get_task(&self, _: Uuid) -> Result<Option<mayfly_core::model::Task>, StoreError> {
        Ok(None)
    }
    async fn list_tasks(
        &self,
        _: &mayfly_core::store::TaskFilter,
    ) -> Result<Vec<mayfly_core::model::Task>, StoreError> {
        Ok(Vec::new())
    }
    async fn next_task_deadline(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(None)
    }
    async fn get_approval(&self, _: Uuid) -> Result<Option<ApprovalRecord>, StoreError> {
        Ok(None)
    }
    async fn list_approvals(
        &self,
        _: &mayfly_core::store::ApprovalFilter,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn get_identity(&self, _: &str) -> Result<Option<Identity>, StoreError> {
        Ok(None)
    }
    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError> {
        Ok(Vec::new())
    }
    async fn get_target_secret(&self, _: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }
    async fn pending_root_rotations(
        &self,
    ) -> Result<Vec<mayfly_core::store::PendingRootRotation>, StoreError> {
        Ok(Vec::new())
    }
    async fn get_target(&self, _: &str) -> Result<Option<Target>, StoreError> {
        Ok(None)
    }
    async fn list_targets(&self) -> Result<Vec<Target>, StoreError> {
        Ok(Vec::new())
    }
    async fn get_grant(&self, _: Uuid) -> Result<Option<Grant>, StoreError> {
        Ok(None)
    }
    async fn list_grants(
        &self,
        _: &mayfly_core::store::GrantFilter,
    ) -> Result<Vec<Grant>, StoreError> {
        Ok(Vec::new())
    }
    async fn get_lease(&self, _: Uuid) -> Result<Option<Lease>, StoreError> {
        Ok(None)
    }
    async fn list_leases(
        &self,
        _: &mayfly_core::store::LeaseFilter,
    ) -> Result<Vec<Lease>, StoreError> {
        Ok(Vec::new())
    }
    async fn next_expiry(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        Ok(None)
    }
    async fn live_provider_states(&self, _: &str) -> Result<Vec<serde_json::Value>, StoreError> {
        Ok(Vec::new())
    }
    async fn recorded_names(
        &self,
        _: &str,
        _: &str,
        _: &[String],
    ) -> Result<std::collections::BTreeMap<String, bool>, StoreError> {
        Ok(Default::default())
    }
    async fn list_audit(
        &self,
        _: &mayfly_core::store::AuditFilter,
    ) -> Result<Vec<mayfly_core::audit::AuditEvent>, StoreError> {
        Ok(Vec::new())
    }
    async fn verify_audit(&self) -> Result<mayfly_core::audit::VerifyReport, StoreError> {
        Err(StoreError::Backend("not scripted".into()))
    }
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn latest_audit_checkpoint(
        &self,
    ) -> Result<Option<mayfly_core::checkpoint::Checkpoint>, StoreError> {
        Ok(None)
    }
    async fn find_operator_token(
        &self,
        _: &[u8],
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        Ok(None)
    }
    async fn count_operator_tokens(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn stats(&self) -> Result<mayfly_core::store::StoreStats, StoreError> {
        Ok(Default::default())
    }
    async fn close(&self) {}
    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError> {
        Ok(Vec::new())
    }
}

fn identity(id: &str) -> Identity {
    Identity {
        id: id.into(),
        kind: IdentityKind::Service,
        owner: "team".into(),
        purpose: "tests".into(),
        expires_at: None,
        labels: Default::default(),
        enabled: true,
        created_at: mayfly_core::now(),
    }
}

/// Two creations submitted before the writer runs, so they share one group commit.
async fn one_batch(
    error: StoreError,
) -> (
    Result<(), StoreError>,
    Result<(), StoreError>,
    Vec<&'static str>,
) {
    let calls = Calls::default();
    let writer = spawn(
        Scripted {
            error,
            calls: Arc::clone(&calls),
        },
        16,
        Placement::Task,
    )
    .unwrap_or_else(|e| panic!("spawn: {e}"));
    let store = EngineStore {
        writer,
        reads: NoReads,
    };
    let event = || AuditDraft::new(AuditKind::IdentityCreated, "operator");
    let (first, second) = (identity("bad"), identity("good"));
    let (bad, good) = tokio::join!(
        store.create_identity(&first, event()),
        store.create_identity(&second, event()),
    );
    store.close().await;
    let calls = calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
    (bad, good, calls)
}

#[tokio::test]
async fn an_operations_own_error_stays_with_it() {
    let conflict = StoreError::Conflict {
        what: "identity",
        id: "bad".into(),
    };
    let (bad, good, calls) = one_batch(conflict).await;
    assert!(matches!(bad, Err(StoreError::Conflict { .. })), "{bad:?}");
    assert!(good.is_ok(), "{good:?}");
    assert_eq!(
        calls,
        ["begin", "rollback_to_savepoint", "insert_audit", "commit"],
        "one group commit; only the failing call's savepoint is rolled back"
    );
}

#[tokio::test]
async fn unavailable_fails_the_whole_batch() {
    let lost = StoreError::Unavailable("connection reset".into());
    let (bad, good, calls) = one_batch(lost).await;
    assert!(matches!(bad, Err(StoreError::Unavailable(_))), "{bad:?}");
    assert!(
        matches!(good, Err(StoreError::Unavailable(_))),
        "the neighbour must not be acknowledged: {good:?}"
    );
    assert_eq!(calls, ["begin", "rollback"]);
}
