//! [`EngineStore`]: the [`Store`] contract over the engine's writer and a backend's reads.
//!
//! Every write of the contract becomes one [`Op`] for the writer, here and only here; a
//! backend contributes its [`Reads`] (queries that change nothing) and its [`Backend`]
//! (the writer's side).
//!
//! [`Backend`]: super::Backend

use std::collections::BTreeMap;

use mayfly_core::audit::{AuditDraft, AuditEvent, VerifyReport};
use mayfly_core::model::{
    ApprovalRecord, ApprovalVote, Grant, Identity, Lease, LeaseSelector, RevocationReason, Target,
    Task, TaskState,
};
use mayfly_core::store::{
    ApprovalFilter, AuditFilter, GrantFilter, LeaseFilter, OperatorTokenRecord,
    PendingRootRotation, RevokeOutcome, SigningKeyRecord, Store, StoreError, StoreStats,
    TaskFilter, WebhookCursor,
};
use mayfly_core::{OffsetDateTime, Uuid};

use super::ops::{GrantRecord, Op};
use super::writer::WriterHandle;

/// A backend's queries: the read half of [`Store`], same meaning, same errors.
#[async_trait::async_trait]
pub trait Reads: Send + Sync + 'static {
    async fn ping(&self) -> Result<(), StoreError>;
    async fn get_task(&self, id: Uuid) -> Result<Option<Task>, StoreError>;
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError>;
    async fn next_task_deadline(&self) -> Result<Option<OffsetDateTime>, StoreError>;
    async fn get_approval(&self, grant: Uuid) -> Result<Option<ApprovalRecord>, StoreError>;
    async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<Vec<ApprovalRecord>, StoreError>;
    async fn get_identity(&self, id: &str) -> Result<Option<Identity>, StoreError>;
    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError>;
    async fn get_target_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn pending_root_rotations(&self) -> Result<Vec<PendingRootRotation>, StoreError>;
    async fn get_target(&self, name: &str) -> Result<Option<Target>, StoreError>;
    async fn list_targets(&self) -> Result<Vec<Target>, StoreError>;
    async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError>;
    async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError>;
    async fn get_lease(&self, id: Uuid) -> Result<Option<Lease>, StoreError>;
    async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError>;
    async fn next_expiry(&self) -> Result<Option<OffsetDateTime>, StoreError>;
    async fn live_provider_states(
        &self,
        target: &str,
    ) -> Result<Vec<serde_json::Value>, StoreError>;
    /// `key` is checked already: `[a-z_]`, 1–32 characters.
    async fn recorded_names(
        &self,
        target: &str,
        key: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, bool>, StoreError>;
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;
    async fn verify_audit(&self) -> Result<VerifyReport, StoreError>;
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    async fn latest_audit_checkpoint(
        &self,
    ) -> Result<Option<mayfly_core::checkpoint::Checkpoint>, StoreError>;
    async fn find_operator_token(
        &self,
        sha256: &[u8],
    ) -> Result<Option<OperatorTokenRecord>, StoreError>;
    async fn count_operator_tokens(&self) -> Result<u64, StoreError>;
    async fn stats(&self) -> Result<StoreStats, StoreError>;
    /// Closes the connections reads use (after the writer stopped).
    async fn close(&self);
    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError>;
}

/// A store: the engine's writer plus a backend's reads. Backends name it by their reads
/// type ([`crate::SqliteStore`], [`crate::PgStore`]) and add their own constructors.
pub struct EngineStore<R> {
    pub(crate) writer: WriterHandle,
    pub(crate) reads: R,
}

impl<R: Reads> EngineStore<R> {
    /// Finishes queued writes, stops the writer and closes every connection. Later calls
    /// fail with `Unavailable`.
    pub async fn close(&self) {
        self.writer.shutdown().await;
        self.reads.close().await;
    }
}

impl<R> std::fmt::Debug for EngineStore<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStore")
            .field("backend", &std::any::type_name::<R>())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<R: Reads> Store for EngineStore<R> {
    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer.is_stopped() {
            return Err(StoreError::Unavailable(
                "the store's writer has stopped".into(),
            ));
        }
        self.reads.ping().await
    }

    async fn create_task(&self, task: &Task, event: AuditDraft) -> Result<(), StoreError> {
        let task = Box::new(task.clone());
        self.writer
            .call(|reply| Op::CreateTask { task, event, reply })
            .await
    }

    async fn get_task(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        self.reads.get_task(id).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        self.reads.list_tasks(filter).await
    }

    async fn end_task(
        &self,
        id: Uuid,
        to: TaskState,
        exit_status: Option<i32>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(Task, RevokeOutcome), StoreError> {
        let actor = actor.to_string();
        self.writer
            .call(|reply| Op::EndTask {
                id,
                to,
                exit_status,
                actor,
                now,
                reply,
            })
            .await
    }

    async fn expire_due_tasks(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.writer
            .call(|reply| Op::ExpireDueTasks { now, limit, reply })
            .await
    }

    async fn next_task_deadline(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        self.reads.next_task_deadline().await
    }

    async fn request_approval(
        &self,
        grant: &Grant,
        approval: &ApprovalRecord,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        let (grant, approval) = (Box::new(grant.clone()), Box::new(approval.clone()));
        self.writer
            .call(|reply| Op::RequestApproval {
                grant,
                approval,
                events,
                reply,
            })
            .await
    }

    async fn get_approval(&self, grant: Uuid) -> Result<Option<ApprovalRecord>, StoreError> {
        self.reads.get_approval(grant).await
    }

    async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.reads.list_approvals(filter).await
    }

    async fn vote(
        &self,
        grant: Uuid,
        vote: &ApprovalVote,
        event: AuditDraft,
        now: OffsetDateTime,
    ) -> Result<ApprovalRecord, StoreError> {
        let vote = vote.clone();
        self.writer
            .call(|reply| Op::Vote {
                grant,
                vote,
                event,
                now,
                reply,
            })
            .await
    }

    async fn collect_approval(
        &self,
        grant: Uuid,
        lease: &Lease,
        events: Vec<AuditDraft>,
        now: OffsetDateTime,
    ) -> Result<ApprovalRecord, StoreError> {
        let lease = Box::new(lease.clone());
        self.writer
            .call(|reply| Op::CollectApproval {
                grant,
                lease,
                events,
                now,
                reply,
            })
            .await
    }

    async fn expire_approvals(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.writer
            .call(|reply| Op::ExpireApprovals { now, limit, reply })
            .await
    }

    async fn create_identity(
        &self,
        identity: &Identity,
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        let identity = Box::new(identity.clone());
        self.writer
            .call(|reply| Op::CreateIdentity {
                identity,
                event,
                reply,
            })
            .await
    }

    async fn get_identity(&self, id: &str) -> Result<Option<Identity>, StoreError> {
        self.reads.get_identity(id).await
    }

    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError> {
        self.reads.list_identities().await
    }

    async fn enable_identity(&self, id: &str, event: AuditDraft) -> Result<Identity, StoreError> {
        let id = id.to_string();
        self.writer
            .call(|reply| Op::EnableIdentity { id, event, reply })
            .await
    }

    async fn disable_identity(
        &self,
        id: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        let (id, actor) = (id.to_string(), actor.to_string());
        self.writer
            .call(|reply| Op::DisableIdentity {
                id,
                actor,
                now,
                reply,
            })
            .await
    }

    async fn create_target(
        &self,
        target: &Target,
        admin_sealed: Option<&[u8]>,
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        let target = Box::new(target.clone());
        let sealed = admin_sealed.map(<[u8]>::to_vec);
        self.writer
            .call(|reply| Op::CreateTarget {
                target,
                sealed,
                event,
                reply,
            })
            .await
    }

    async fn get_target_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.reads.get_target_secret(name).await
    }

    async fn set_target_secret(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        let (name, sealed) = (name.to_string(), sealed.to_vec());
        self.writer
            .call(|reply| Op::SetTargetSecret {
                name,
                sealed,
                event,
                reply,
            })
            .await
    }

    async fn begin_root_rotation(&self, name: &str, sealed: &[u8]) -> Result<(), StoreError> {
        let (name, sealed) = (name.to_string(), sealed.to_vec());
        self.writer
            .call(|reply| Op::BeginRootRotation {
                name,
                sealed,
                reply,
            })
            .await
    }

    async fn commit_root_rotation(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        let (name, sealed) = (name.to_string(), sealed.to_vec());
        self.writer
            .call(|reply| Op::CommitRootRotation {
                name,
                sealed,
                event,
                reply,
            })
            .await
    }

    async fn abandon_root_rotation(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        let (name, sealed) = (name.to_string(), sealed.to_vec());
        self.writer
            .call(|reply| Op::AbandonRootRotation {
                name,
                sealed,
                event,
                reply,
            })
            .await
    }

    async fn pending_root_rotations(&self) -> Result<Vec<PendingRootRotation>, StoreError> {
        self.reads.pending_root_rotations().await
    }

    async fn get_target(&self, name: &str) -> Result<Option<Target>, StoreError> {
        self.reads.get_target(name).await
    }

    async fn list_targets(&self) -> Result<Vec<Target>, StoreError> {
        self.reads.list_targets().await
    }

    async fn record_grant(
        &self,
        grant: &Grant,
        lease: Option<&Lease>,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        let (grant, lease) = (grant.clone(), lease.cloned());
        self.writer
            .call(|reply| {
                Op::RecordGrant(Box::new(GrantRecord {
                    grant,
                    lease,
                    review: None,
                    events,
                    reply,
                }))
            })
            .await
    }

    async fn record_break_glass(
        &self,
        grant: &Grant,
        lease: &Lease,
        review: &ApprovalRecord,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        let (grant, lease, review) = (grant.clone(), lease.clone(), review.clone());
        self.writer
            .call(|reply| {
                Op::RecordGrant(Box::new(GrantRecord {
                    grant,
                    lease: Some(lease),
                    review: Some(review),
                    events,
                    reply,
                }))
            })
            .await
    }

    async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError> {
        self.reads.get_grant(id).await
    }

    async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
        self.reads.list_grants(filter).await
    }

    async fn get_lease(&self, id: Uuid) -> Result<Option<Lease>, StoreError> {
        self.reads.get_lease(id).await
    }

    async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        self.reads.list_leases(filter).await
    }

    async fn renew_lease(
        &self,
        id: Uuid,
        requested_expiry: OffsetDateTime,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Lease, StoreError> {
        let actor = actor.to_string();
        self.writer
            .call(|reply| Op::RenewLease {
                id,
                requested: requested_expiry,
                actor,
                now,
                reply,
            })
            .await
    }

    async fn revoke(
        &self,
        selector: &LeaseSelector,
        reason: RevocationReason,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        let (selector, actor) = (selector.clone(), actor.to_string());
        self.writer
            .call(|reply| Op::Revoke {
                selector,
                reason,
                actor,
                now,
                reply,
            })
            .await
    }

    async fn expire_due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Lease>, StoreError> {
        self.writer
            .call(|reply| Op::ExpireDue { now, limit, reply })
            .await
    }

    async fn next_expiry(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        self.reads.next_expiry().await
    }

    async fn activate_lease(
        &self,
        id: Uuid,
        provider_state: &serde_json::Value,
        event: AuditDraft,
    ) -> Result<Lease, StoreError> {
        let provider_state = provider_state.clone();
        self.writer
            .call(|reply| Op::ActivateLease {
                id,
                provider_state,
                event,
                reply,
            })
            .await
    }

    async fn abandon_lease(
        &self,
        id: Uuid,
        cleaned: bool,
        error: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Lease, StoreError> {
        let (error, actor) = (error.to_string(), actor.to_string());
        self.writer
            .call(|reply| Op::AbandonLease {
                id,
                cleaned,
                error,
                actor,
                now,
                reply,
            })
            .await
    }

    async fn claim_revocations(
        &self,
        now: OffsetDateTime,
        limit: u32,
        claim_for: time::Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until = now + claim_for;
        self.writer
            .call(|reply| Op::ClaimRevocations {
                now,
                limit,
                until,
                reply,
            })
            .await
    }

    async fn complete_revocation(
        &self,
        id: Uuid,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Lease>, StoreError> {
        let actor = actor.to_string();
        self.writer
            .call(|reply| Op::CompleteRevocation {
                id,
                actor,
                now,
                reply,
            })
            .await
    }

    async fn revocation_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt: OffsetDateTime,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let (error, actor) = (error.to_string(), actor.to_string());
        self.writer
            .call(|reply| Op::RevocationFailed {
                id,
                error,
                next_attempt,
                actor,
                now,
                reply,
            })
            .await
    }

    async fn live_provider_states(
        &self,
        target: &str,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        self.reads.live_provider_states(target).await
    }

    async fn recorded_names(
        &self,
        target: &str,
        key: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, bool>, StoreError> {
        // The key becomes part of a JSON path; only plain names can be one.
        let plain = (1..=32).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !plain {
            return Err(StoreError::Backend(format!(
                "provider state key {key:?} is not a plain name ([a-z_], 1-32 characters)"
            )));
        }
        if names.is_empty() {
            return Ok(BTreeMap::new());
        }
        self.reads.recorded_names(target, key, names).await
    }

    async fn append_audit(&self, events: Vec<AuditDraft>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.writer
            .call(|reply| Op::AppendAudit { events, reply })
            .await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        self.reads.list_audit(filter).await
    }

    async fn verify_audit(&self) -> Result<VerifyReport, StoreError> {
        self.reads.verify_audit().await
    }

    async fn add_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire_active: Option<OffsetDateTime>,
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        let key = Box::new(key.clone());
        self.writer
            .call(|reply| Op::AddSigningKey {
                key,
                retire_active,
                event,
                reply,
            })
            .await
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        self.reads.list_signing_keys().await
    }

    async fn add_audit_checkpoint(
        &self,
        checkpoint: &mayfly_core::checkpoint::Checkpoint,
    ) -> Result<(), StoreError> {
        let checkpoint = Box::new(checkpoint.clone());
        self.writer
            .call(|reply| Op::AddAuditCheckpoint { checkpoint, reply })
            .await
    }

    async fn latest_audit_checkpoint(
        &self,
    ) -> Result<Option<mayfly_core::checkpoint::Checkpoint>, StoreError> {
        self.reads.latest_audit_checkpoint().await
    }

    async fn add_operator_token(&self, token: &OperatorTokenRecord) -> Result<(), StoreError> {
        let token = token.clone();
        self.writer
            .call(|reply| Op::AddOperatorToken { token, reply })
            .await
    }

    async fn find_operator_token(
        &self,
        sha256: &[u8],
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        self.reads.find_operator_token(sha256).await
    }

    async fn count_operator_tokens(&self) -> Result<u64, StoreError> {
        self.reads.count_operator_tokens().await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.reads.stats().await
    }

    async fn create_operator_token(
        &self,
        token: &OperatorTokenRecord,
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        let token = token.clone();
        self.writer
            .call(|reply| Op::CreateOperatorToken {
                token,
                event,
                reply,
            })
            .await
    }

    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError> {
        self.reads.list_operator_tokens().await
    }

    async fn revoke_operator_token(
        &self,
        name: &str,
        force: bool,
        now: OffsetDateTime,
        event: AuditDraft,
    ) -> Result<OperatorTokenRecord, StoreError> {
        let name = name.to_string();
        self.writer
            .call(|reply| Op::RevokeOperatorToken {
                name,
                force,
                now,
                event,
                reply,
            })
            .await
    }

    async fn update_identity(
        &self,
        identity: &Identity,
        event: AuditDraft,
    ) -> Result<Identity, StoreError> {
        let identity = Box::new(identity.clone());
        self.writer
            .call(|reply| Op::UpdateIdentity {
                identity,
                event,
                reply,
            })
            .await
    }

    async fn delete_identity(&self, id: &str, event: AuditDraft) -> Result<(), StoreError> {
        let id = id.to_string();
        self.writer
            .call(|reply| Op::DeleteIdentity { id, event, reply })
            .await
    }

    async fn update_target(
        &self,
        target: &Target,
        event: AuditDraft,
    ) -> Result<Target, StoreError> {
        let target = Box::new(target.clone());
        self.writer
            .call(|reply| Op::UpdateTarget {
                target,
                event,
                reply,
            })
            .await
    }

    async fn delete_target(&self, name: &str, event: AuditDraft) -> Result<(), StoreError> {
        let name = name.to_string();
        self.writer
            .call(|reply| Op::DeleteTarget { name, event, reply })
            .await
    }

    async fn claim_webhook(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<WebhookCursor>, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.writer
            .call(|reply| Op::ClaimWebhook {
                name,
                holder,
                now,
                until,
                reply,
            })
            .await
    }

    async fn advance_webhook(
        &self,
        name: &str,
        holder: &str,
        seq: u64,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.writer
            .call(|reply| Op::AdvanceWebhook {
                name,
                holder,
                seq,
                now,
                until,
                reply,
            })
            .await
    }

    async fn webhook_failed(
        &self,
        name: &str,
        holder: &str,
        error: &str,
        next_attempt: OffsetDateTime,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let (name, holder, error) = (name.to_string(), holder.to_string(), error.to_string());
        self.writer
            .call(|reply| Op::WebhookFailed {
                name,
                holder,
                error,
                next_attempt,
                now,
                until,
                reply,
            })
            .await
    }

    async fn release_webhook(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.writer
            .call(|reply| Op::ReleaseWebhook {
                name,
                holder,
                reply,
            })
            .await
    }
}
