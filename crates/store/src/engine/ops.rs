//! The write operations and what each one does, for every backend.
//!
//! Each [`Op`] carries its own typed reply channel; [`run`] performs it against a
//! [`Backend`] inside the batch transaction and holds the result as an [`Answer`] until
//! the batch's fate is known (a caller must never hear "done" for a write that is then
//! rolled back).

use std::time::Instant;

use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::model::{
    ApprovalRecord, ApprovalState, ApprovalVote, Grant, GrantState, Identity, Lease, LeaseSelector,
    LeaseState, RevocationReason, Target, Task, TaskState,
};
use mayfly_core::store::{
    OperatorTokenRecord, RevokeOutcome, SigningKeyRecord, StoreError, WebhookCursor,
};
use mayfly_core::{now as core_now, to_unix_ms, CoreError, OffsetDateTime, Uuid};
use tokio::sync::oneshot;

use super::chain::Chain;
use super::{Backend, Changed, Ended, GrantEnd, GrantMove, LeaseRow, LiveOf};
use crate::events;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A mutation, with everything it needs and where its answer goes.
pub(crate) enum Op {
    CreateIdentity {
        identity: Box<Identity>,
        event: AuditDraft,
        reply: Reply<()>,
    },
    EnableIdentity {
        id: String,
        event: AuditDraft,
        reply: Reply<Identity>,
    },
    DisableIdentity {
        id: String,
        actor: String,
        now: OffsetDateTime,
        reply: Reply<RevokeOutcome>,
    },
    CreateTarget {
        target: Box<Target>,
        sealed: Option<Vec<u8>>,
        event: AuditDraft,
        reply: Reply<()>,
    },
    SetTargetSecret {
        name: String,
        sealed: Vec<u8>,
        event: AuditDraft,
        reply: Reply<()>,
    },
    BeginRootRotation {
        name: String,
        sealed: Vec<u8>,
        reply: Reply<()>,
    },
    CommitRootRotation {
        name: String,
        sealed: Vec<u8>,
        event: AuditDraft,
        reply: Reply<()>,
    },
    AbandonRootRotation {
        name: String,
        sealed: Vec<u8>,
        event: AuditDraft,
        reply: Reply<()>,
    },
    RecordGrant(Box<GrantRecord>),
    ActivateLease {
        id: Uuid,
        provider_state: serde_json::Value,
        event: AuditDraft,
        reply: Reply<Lease>,
    },
    AbandonLease {
        id: Uuid,
        cleaned: bool,
        error: String,
        actor: String,
        now: OffsetDateTime,
        reply: Reply<Lease>,
    },
    RenewLease {
        id: Uuid,
        requested: OffsetDateTime,
        actor: String,
        now: OffsetDateTime,
        reply: Reply<Lease>,
    },
    Revoke {
        selector: LeaseSelector,
        reason: RevocationReason,
        actor: String,
        now: OffsetDateTime,
        reply: Reply<RevokeOutcome>,
    },
    ExpireDue {
        now: OffsetDateTime,
        limit: u32,
        reply: Reply<Vec<Lease>>,
    },
    ClaimRevocations {
        now: OffsetDateTime,
        limit: u32,
        until: OffsetDateTime,
        reply: Reply<Vec<Lease>>,
    },
    CompleteRevocation {
        id: Uuid,
        actor: String,
        now: OffsetDateTime,
        reply: Reply<Option<Lease>>,
    },
    RevocationFailed {
        id: Uuid,
        error: String,
        next_attempt: OffsetDateTime,
        actor: String,
        now: OffsetDateTime,
        reply: Reply<()>,
    },
    AppendAudit {
        events: Vec<AuditDraft>,
        reply: Reply<()>,
    },
    AddSigningKey {
        key: Box<SigningKeyRecord>,
        retire_active: Option<OffsetDateTime>,
        event: AuditDraft,
        reply: Reply<()>,
    },
    AddOperatorToken {
        token: OperatorTokenRecord,
        reply: Reply<()>,
    },
    AddAuditCheckpoint {
        checkpoint: Box<mayfly_core::checkpoint::Checkpoint>,
        reply: Reply<()>,
    },
    CreateOperatorToken {
        token: OperatorTokenRecord,
        event: AuditDraft,
        reply: Reply<()>,
    },
    RevokeOperatorToken {
        name: String,
        force: bool,
        now: OffsetDateTime,
        event: AuditDraft,
        reply: Reply<OperatorTokenRecord>,
    },
    UpdateIdentity {
        identity: Box<Identity>,
        event: AuditDraft,
        reply: Reply<Identity>,
    },
    DeleteIdentity {
        id: String,
        event: AuditDraft,
        reply: Reply<()>,
    },
    UpdateTarget {
        target: Box<Target>,
        event: AuditDraft,
        reply: Reply<Target>,
    },
    DeleteTarget {
        name: String,
        event: AuditDraft,
        reply: Reply<()>,
    },
    CreateTask {
        task: Box<Task>,
        event: AuditDraft,
        reply: Reply<()>,
    },
    EndTask {
        id: Uuid,
        to: TaskState,
        exit_status: Option<i32>,
        actor: String,
        now: OffsetDateTime,
        reply: Reply<(Task, RevokeOutcome)>,
    },
    ExpireDueTasks {
        now: OffsetDateTime,
        limit: u32,
        reply: Reply<Vec<Uuid>>,
    },
    RequestApproval {
        grant: Box<Grant>,
        approval: Box<ApprovalRecord>,
        events: Vec<AuditDraft>,
        reply: Reply<()>,
    },
    Vote {
        grant: Uuid,
        vote: ApprovalVote,
        event: AuditDraft,
        now: OffsetDateTime,
        reply: Reply<ApprovalRecord>,
    },
    CollectApproval {
        grant: Uuid,
        lease: Box<Lease>,
        events: Vec<AuditDraft>,
        now: OffsetDateTime,
        reply: Reply<ApprovalRecord>,
    },
    ExpireApprovals {
        now: OffsetDateTime,
        limit: u32,
        reply: Reply<Vec<Uuid>>,
    },
    ClaimWebhook {
        name: String,
        holder: String,
        now: OffsetDateTime,
        until: OffsetDateTime,
        reply: Reply<Option<WebhookCursor>>,
    },
    AdvanceWebhook {
        name: String,
        holder: String,
        seq: u64,
        now: OffsetDateTime,
        until: OffsetDateTime,
        reply: Reply<bool>,
    },
    WebhookFailed {
        name: String,
        holder: String,
        error: String,
        next_attempt: OffsetDateTime,
        now: OffsetDateTime,
        until: OffsetDateTime,
        reply: Reply<bool>,
    },
    ReleaseWebhook {
        name: String,
        holder: String,
        reply: Reply<()>,
    },
}

/// A decided grant, its lease if one was issued, and their audit events.
pub(crate) struct GrantRecord {
    pub(crate) grant: Grant,
    pub(crate) lease: Option<Lease>,
    /// The review a break-glass grant opens, recorded with it.
    pub(crate) review: Option<ApprovalRecord>,
    pub(crate) events: Vec<AuditDraft>,
    pub(crate) reply: Reply<()>,
}

impl Op {
    /// The identity or target record this operation changes, if any.
    pub(crate) fn changes(&self) -> Option<Changed> {
        match self {
            Op::CreateIdentity { identity, .. } => Some(Changed::Identity(identity.id.clone())),
            Op::EnableIdentity { id, .. } | Op::DisableIdentity { id, .. } => {
                Some(Changed::Identity(id.clone()))
            }
            Op::CreateTarget { target, .. } => Some(Changed::Target(target.name.clone())),
            Op::UpdateIdentity { identity, .. } => Some(Changed::Identity(identity.id.clone())),
            Op::DeleteIdentity { id, .. } => Some(Changed::Identity(id.clone())),
            Op::UpdateTarget { target, .. } => Some(Changed::Target(target.name.clone())),
            Op::DeleteTarget { name, .. } => Some(Changed::Target(name.clone())),
            _ => None,
        }
    }

    /// Answers the caller with `err` without running the operation.
    pub(crate) fn fail(self, err: StoreError) {
        fn send<T>(reply: Reply<T>, err: StoreError) {
            // A caller that stopped waiting needs no answer.
            let _ = reply.send(Err(err));
        }
        match self {
            Op::CreateIdentity { reply, .. }
            | Op::CreateTarget { reply, .. }
            | Op::SetTargetSecret { reply, .. }
            | Op::BeginRootRotation { reply, .. }
            | Op::CommitRootRotation { reply, .. }
            | Op::AbandonRootRotation { reply, .. }
            | Op::RevocationFailed { reply, .. }
            | Op::AppendAudit { reply, .. }
            | Op::AddSigningKey { reply, .. }
            | Op::AddOperatorToken { reply, .. }
            | Op::AddAuditCheckpoint { reply, .. }
            | Op::CreateTask { reply, .. }
            | Op::ReleaseWebhook { reply, .. } => send(reply, err),
            Op::ClaimWebhook { reply, .. } => send(reply, err),
            Op::AdvanceWebhook { reply, .. } | Op::WebhookFailed { reply, .. } => send(reply, err),
            Op::EndTask { reply, .. } => send(reply, err),
            Op::ExpireDueTasks { reply, .. } | Op::ExpireApprovals { reply, .. } => {
                send(reply, err)
            }
            Op::RequestApproval { reply, .. } => send(reply, err),
            Op::Vote { reply, .. } | Op::CollectApproval { reply, .. } => send(reply, err),
            Op::RecordGrant(record) => send(record.reply, err),
            Op::EnableIdentity { reply, .. } => send(reply, err),
            Op::DisableIdentity { reply, .. } | Op::Revoke { reply, .. } => send(reply, err),
            Op::ActivateLease { reply, .. }
            | Op::AbandonLease { reply, .. }
            | Op::RenewLease { reply, .. } => send(reply, err),
            Op::ExpireDue { reply, .. } | Op::ClaimRevocations { reply, .. } => send(reply, err),
            Op::CompleteRevocation { reply, .. } => send(reply, err),
            Op::CreateOperatorToken { reply, .. }
            | Op::DeleteIdentity { reply, .. }
            | Op::DeleteTarget { reply, .. } => send(reply, err),
            Op::RevokeOperatorToken { reply, .. } => send(reply, err),
            Op::UpdateIdentity { reply, .. } => send(reply, err),
            Op::UpdateTarget { reply, .. } => send(reply, err),
        }
    }
}

/// An operation's result, held until its batch commits or rolls back.
pub(crate) trait Answer: Send {
    /// The operation's own error, if it failed.
    fn error(&self) -> Option<&StoreError>;
    /// The batch committed: the caller gets the operation's result.
    fn commit(self: Box<Self>);
    /// The batch rolled back: the caller gets its own error if it had one, else `batch`'s.
    fn fail(self: Box<Self>, batch: &StoreError);
}

struct Ready<T> {
    reply: Reply<T>,
    result: Result<T, StoreError>,
}

impl<T: Send> Answer for Ready<T> {
    fn error(&self) -> Option<&StoreError> {
        self.result.as_ref().err()
    }

    fn commit(self: Box<Self>) {
        // A caller that stopped waiting still had its write committed; nothing to undo.
        let _ = self.reply.send(self.result);
    }

    fn fail(self: Box<Self>, batch: &StoreError) {
        let _ = self.reply.send(match self.result {
            Ok(_) => Err(batch.clone()),
            Err(own) => Err(own),
        });
    }
}

pub(crate) fn answer<T: Send + 'static>(
    reply: Reply<T>,
    result: Result<T, StoreError>,
) -> Box<dyn Answer> {
    Box::new(Ready { reply, result })
}

/// Performs one operation (any but `RecordGrant`, which [`record_grants`] performs in
/// runs) inside the caller's savepoint.
pub(crate) async fn run<B: Backend>(b: &mut B, chain: &mut Chain, op: Op) -> Box<dyn Answer> {
    match op {
        Op::CreateIdentity {
            identity,
            event,
            reply,
        } => {
            let result = b.insert_identity(&identity).await;
            answer(reply, result.map(|()| chain.append(event, core_now())))
        }
        Op::EnableIdentity { id, event, reply } => {
            let result = match b.enable_identity(&id).await {
                Ok(Some(identity)) => {
                    chain.append(event, core_now());
                    Ok(identity)
                }
                Ok(None) => Err(not_found("identity", id)),
                Err(e) => Err(e),
            };
            answer(reply, result)
        }
        Op::DisableIdentity {
            id,
            actor,
            now,
            reply,
        } => answer(reply, disable_identity(b, chain, id, &actor, now).await),
        Op::CreateTarget {
            target,
            sealed,
            event,
            reply,
        } => answer(reply, create_target(b, chain, &target, sealed, event).await),
        Op::SetTargetSecret {
            name,
            sealed,
            event,
            reply,
        } => {
            let result = async {
                require_target(b, &name).await?;
                b.put_target_secret(&name, &sealed, core_now()).await?;
                chain.append(event, core_now());
                Ok(())
            };
            answer(reply, result.await)
        }
        Op::BeginRootRotation {
            name,
            sealed,
            reply,
        } => {
            let result = async {
                require_target(b, &name).await?;
                if b.begin_root_rotation(&name, &sealed, core_now()).await? {
                    Ok(())
                } else {
                    Err(StoreError::Conflict {
                        what: "root rotation of target",
                        id: name,
                    })
                }
            };
            answer(reply, result.await)
        }
        Op::CommitRootRotation {
            name,
            sealed,
            event,
            reply,
        } => {
            let result = async {
                require_target(b, &name).await?;
                b.put_target_secret(&name, &sealed, core_now()).await?;
                b.end_root_rotation(&name, &sealed).await?;
                chain.append(event, core_now());
                Ok(())
            };
            answer(reply, result.await)
        }
        Op::AbandonRootRotation {
            name,
            sealed,
            event,
            reply,
        } => {
            let result = async {
                if !b.end_root_rotation(&name, &sealed).await? {
                    return Err(not_found("root rotation of target", name));
                }
                chain.append(event, core_now());
                Ok(())
            };
            answer(reply, result.await)
        }
        Op::RecordGrant(record) => {
            // Not reached: the writer hands grants to `record_grants`. Answer rather than
            // panic if that ever changes.
            let reply = record.reply;
            answer(
                reply,
                Err(StoreError::Backend(
                    "record_grant reached the single-operation path".into(),
                )),
            )
        }
        Op::ActivateLease {
            id,
            provider_state,
            event,
            reply,
        } => {
            let result = async {
                let LeaseRow { lease, owner } = b
                    .activate_lease(id, &provider_state)
                    .await?
                    .ok_or_else(|| not_in_state(id, "creating"))?;
                b.move_grant(lease.grant_id, GrantMove::Issued, core_now())
                    .await?;
                let mut event = event.for_lease(&lease);
                event.owner = Some(owner);
                chain.append(event, core_now());
                Ok(lease)
            };
            answer(reply, result.await)
        }
        Op::AbandonLease {
            id,
            cleaned,
            error,
            actor,
            now,
            reply,
        } => {
            let result = async {
                let LeaseRow { lease, owner } = b
                    .abandon_lease(id, cleaned, &error, now)
                    .await?
                    .ok_or_else(|| not_in_state(id, "creating"))?;
                b.move_grant(lease.grant_id, GrantMove::Failed, core_now())
                    .await?;
                for event in events::issuance_abandoned(&lease, &owner, &error, cleaned, &actor) {
                    chain.append(event, now);
                }
                Ok(lease)
            };
            answer(reply, result.await)
        }
        Op::RenewLease {
            id,
            requested,
            actor,
            now,
            reply,
        } => answer(
            reply,
            renew_lease(b, chain, id, requested, &actor, now).await,
        ),
        Op::Revoke {
            selector,
            reason,
            actor,
            now,
            reply,
        } => {
            let started = Instant::now();
            let result = revoke(b, chain, &selector, reason, &actor, now).await;
            tracing::debug!(
                selector = %selector,
                leases = result.as_ref().map(RevokeOutcome::total).unwrap_or(0),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "revoked"
            );
            answer(reply, result)
        }
        Op::ExpireDue { now, limit, reply } => {
            answer(reply, expire_due(b, chain, now, limit).await)
        }
        Op::CreateTask { task, event, reply } => {
            answer(reply, create_task(b, chain, &task, event).await)
        }
        Op::EndTask {
            id,
            to,
            exit_status,
            actor,
            now,
            reply,
        } => answer(
            reply,
            end_task(b, chain, id, (to, exit_status), &actor, now).await,
        ),
        Op::ExpireDueTasks { now, limit, reply } => {
            let result = async {
                let mut ended = Vec::new();
                for id in b.due_tasks(now, limit).await? {
                    end_task(
                        b,
                        chain,
                        id,
                        (TaskState::TimedOut, None),
                        "system:expiry",
                        now,
                    )
                    .await?;
                    ended.push(id);
                }
                Ok(ended)
            };
            answer(reply, result.await)
        }
        Op::RequestApproval {
            grant,
            approval,
            events,
            reply,
        } => {
            let result = async {
                let now = core_now();
                b.insert_grants(&[(&grant, None)], now).await?;
                b.insert_approval(&approval).await?;
                for event in events {
                    chain.append(event, now);
                }
                Ok(())
            };
            answer(reply, result.await)
        }
        Op::Vote {
            grant,
            vote,
            event,
            now,
            reply,
        } => answer(reply, record_vote(b, chain, grant, vote, event, now).await),
        Op::CollectApproval {
            grant,
            lease,
            events,
            now,
            reply,
        } => {
            let result = async {
                let mut approval = live_approval(b, grant, now).await?;
                if approval.state != ApprovalState::Approved {
                    return Err(rejected(format!(
                        "grant {grant} is not approved (its request is {})",
                        approval.state
                    )));
                }
                approval.state = ApprovalState::Collected;
                b.update_approval(&approval).await?;
                b.insert_lease(&approval.owner, &lease, now).await?;
                if lease.state == LeaseState::Active {
                    // Self-contained (a token): issued with this commit. An external one
                    // is issued when its write-ahead lease is activated.
                    b.move_grant(grant, GrantMove::Issued, now).await?;
                }
                for event in events {
                    chain.append(event, now);
                }
                Ok(approval)
            };
            answer(reply, result.await)
        }
        Op::ExpireApprovals { now, limit, reply } => {
            let result = async {
                let due = b.due_approvals(now, limit).await?;
                for id in &due {
                    expire_approval(b, chain, *id, now).await?;
                }
                Ok(due)
            };
            answer(reply, result.await)
        }
        Op::ClaimWebhook {
            name,
            holder,
            now,
            until,
            reply,
        } => {
            let result = async {
                // A new cursor starts at the head as this batch sees it: the webhook gets
                // every event committed after it, none from before it was configured.
                b.insert_webhook_cursor(&name, chain.head.seq, now).await?;
                b.claim_webhook(&name, &holder, now, until).await
            };
            answer(reply, result.await)
        }
        Op::AdvanceWebhook {
            name,
            holder,
            seq,
            now,
            until,
            reply,
        } => answer(
            reply,
            b.advance_webhook(&name, &holder, seq, now, until).await,
        ),
        Op::WebhookFailed {
            name,
            holder,
            error,
            next_attempt,
            now,
            until,
            reply,
        } => answer(
            reply,
            b.webhook_failed(&name, &holder, &error, next_attempt, now, until)
                .await,
        ),
        Op::ReleaseWebhook {
            name,
            holder,
            reply,
        } => answer(reply, b.release_webhook(&name, &holder).await),
        Op::ClaimRevocations {
            now,
            limit,
            until,
            reply,
        } => answer(reply, b.claim_revocations(now, limit, until).await),
        Op::CompleteRevocation {
            id,
            actor,
            now,
            reply,
        } => answer(reply, complete_revocation(b, chain, id, &actor, now).await),
        Op::RevocationFailed {
            id,
            error,
            next_attempt,
            actor,
            now,
            reply,
        } => {
            let result = async {
                let LeaseRow { lease, owner } = b
                    .revocation_failed(id, &error, next_attempt)
                    .await?
                    .ok_or_else(|| not_in_state(id, "revoking"))?;
                chain.append(
                    events::revocation_failed(&lease, owner, &error, next_attempt, &actor),
                    now,
                );
                Ok(())
            };
            answer(reply, result.await)
        }
        Op::AppendAudit { events, reply } => {
            let sealing = chain.start::<B>(events, core_now());
            answer(reply, chain.finish(b, sealing).await)
        }
        Op::AddSigningKey {
            key,
            retire_active,
            event,
            reply,
        } => {
            let result = async {
                if let Some(publish_until) = retire_active {
                    b.retire_active_key(key.created_at, publish_until).await?;
                }
                b.insert_signing_key(&key).await?;
                chain.append(event, core_now());
                Ok(())
            };
            answer(reply, result.await)
        }
        Op::AddOperatorToken { token, reply } => {
            answer(reply, b.insert_operator_token(&token).await)
        }
        Op::AddAuditCheckpoint { checkpoint, reply } => {
            answer(reply, b.insert_audit_checkpoint(&checkpoint).await)
        }
        Op::CreateOperatorToken {
            token,
            event,
            reply,
        } => answer(reply, create_operator_token(b, chain, &token, event).await),
        Op::RevokeOperatorToken {
            name,
            force,
            now,
            event,
            reply,
        } => answer(
            reply,
            revoke_operator_token(b, chain, &name, force, now, event).await,
        ),
        Op::UpdateIdentity {
            identity,
            event,
            reply,
        } => {
            let result = async {
                let updated = b
                    .update_identity(&identity)
                    .await?
                    .ok_or_else(|| not_found("identity", identity.id.clone()))?;
                chain.append(event, core_now());
                Ok(updated)
            };
            answer(reply, result.await)
        }
        Op::DeleteIdentity { id, event, reply } => {
            let result = async {
                refuse_live_leases(b, LiveOf::Identity(&id)).await?;
                if !b.delete_identity(&id).await? {
                    return Err(not_found("identity", id));
                }
                chain.append(event, core_now());
                Ok(())
            };
            answer(reply, result.await)
        }
        Op::UpdateTarget {
            target,
            event,
            reply,
        } => {
            let result = async {
                let updated = b
                    .update_target(&target)
                    .await?
                    .ok_or_else(|| not_found("target", target.name.clone()))?;
                chain.append(event, core_now());
                Ok(updated)
            };
            answer(reply, result.await)
        }
        Op::DeleteTarget { name, event, reply } => {
            // Not closed here: a grant decided from a target read just before this commit
            // can still record its lease after it (`record_grant` does not require the
            // target to exist, and the suite records leases of unregistered targets). For
            // a database target that lease's revocation then has no target to reach and
            // stays `revoking`, visible in `mayfly_revoking_leases`.
            let result = async {
                require_target(b, &name).await?;
                refuse_live_leases(b, LiveOf::Target(&name)).await?;
                // The rotation row names the target (a foreign key) and holds a secret
                // that may be the one the target now has: it must be settled first.
                if b.root_rotation_pending(&name).await? {
                    return Err(StoreError::Conflict {
                        what: "root rotation (still being settled) of target",
                        id: name,
                    });
                }
                b.delete_target(&name).await?;
                chain.append(event, core_now());
                Ok(())
            };
            answer(reply, result.await)
        }
    }
}

/// Refuses to remove a record that live leases (creating, active, revoking) still name:
/// a revocation in progress needs its target, and an operator deleting an identity means
/// its access to end, which it has not yet.
async fn refuse_live_leases<B: Backend>(b: &mut B, of: LiveOf<'_>) -> Result<(), StoreError> {
    let live = b.count_live_leases(of).await?;
    if live == 0 {
        return Ok(());
    }
    let (field, what, name) = match of {
        LiveOf::Identity(id) => ("identity", "identity", id),
        LiveOf::Target(name) => ("target", "target", name),
    };
    Err(StoreError::Rejected(CoreError::invalid(
        field,
        format!(
            "{what} {name:?} has {live} live lease(s) (creating, active or still being revoked); \
             revoke them first (revoke_leases=true), and delete once none is left"
        ),
    )))
}

async fn create_operator_token<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    token: &OperatorTokenRecord,
    mut event: AuditDraft,
) -> Result<(), StoreError> {
    if let Some(held) = b.unrevoked_operator_token(&token.name).await? {
        if held.is_live_at(token.created_at) {
            return Err(StoreError::Conflict {
                what: "live operator token",
                id: token.name.clone(),
            });
        }
        // Expired, never revoked: retire it so the name can be given again; the row (and
        // who held the name) stays.
        b.revoke_operator_token(&token.name, token.created_at, &token.created_by)
            .await?;
        if let serde_json::Value::Object(detail) = &mut event.detail {
            detail.insert("replaced_expired".into(), serde_json::Value::Bool(true));
        }
    }
    b.insert_operator_token(token).await?;
    chain.append(event, core_now());
    Ok(())
}

async fn revoke_operator_token<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    name: &str,
    force: bool,
    now: OffsetDateTime,
    event: AuditDraft,
) -> Result<OperatorTokenRecord, StoreError> {
    let mut token = b
        .unrevoked_operator_token(name)
        .await?
        .ok_or_else(|| not_found("operator token", name.to_string()))?;
    if !force && token.is_live_at(now) && b.count_live_operator_tokens(now).await? <= 1 {
        return Err(StoreError::Rejected(CoreError::invalid(
            "name",
            format!(
                "operator token {name:?} is the broker's last live operator token; revoking it \
                 would lock every operator out. Create another first, or force it (recovery \
                 is then offline: mayfly store recover-operator)"
            ),
        )));
    }
    b.revoke_operator_token(name, now, &event.actor).await?;
    token.revoked_at = Some(now);
    token.revoked_by = Some(event.actor.clone());
    chain.append(event, now);
    Ok(token)
}

/// Records a run of consecutive `record_grant` calls with one insert per table. Calls that
/// fail their own checks (mismatched lease, disabled identity) get their own error here
/// and are left out; the rest are inserted together. An `Err` (e.g. a key conflict) means
/// nothing of the run may stand: the caller rolls it back and, for a run of several,
/// redoes it call by call so only the conflicting call fails.
pub(crate) async fn record_grants<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    run: &[GrantRecord],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut outcomes: Vec<Result<(), StoreError>> = run
        .iter()
        .map(|r| match &r.lease {
            Some(l) => lease_matches_grant(&r.grant, l),
            None => Ok(()),
        })
        .collect();

    // The kill switch and this write are serialised by the batch (the writer, and on
    // PostgreSQL the head lock across replicas), so checking here closes the race where a
    // grant decided just before `disable_identity` would record a live lease just after it.
    let live: Vec<&str> = run
        .iter()
        .zip(&outcomes)
        .filter_map(|(r, ok)| match (&r.lease, ok) {
            (Some(l), Ok(())) if is_live(l) => Some(l.identity.as_str()),
            _ => None,
        })
        .collect();
    if !live.is_empty() {
        let disabled = b.disabled_among(&live).await?;
        for (r, outcome) in run.iter().zip(outcomes.iter_mut()) {
            if let (Some(l), Ok(())) = (&r.lease, &outcome) {
                if is_live(l) && disabled.contains(&l.identity) {
                    *outcome = Err(identity_disabled(&l.identity));
                }
            }
        }
    }

    let items: Vec<(&Grant, Option<&Lease>)> = run
        .iter()
        .zip(&outcomes)
        .filter(|(_, ok)| ok.is_ok())
        .map(|(r, _)| (&r.grant, r.lease.as_ref()))
        .collect();
    if !items.is_empty() {
        b.insert_grants(&items, core_now()).await?;
    }
    for (r, _) in run.iter().zip(&outcomes).filter(|(_, ok)| ok.is_ok()) {
        if let Some(review) = &r.review {
            b.insert_approval(review).await?;
        }
    }
    let at = core_now();
    for (r, outcome) in run.iter().zip(&outcomes) {
        if outcome.is_ok() {
            for e in &r.events {
                chain.append(e.clone(), at);
            }
        }
    }
    Ok(outcomes)
}

fn is_live(l: &Lease) -> bool {
    matches!(l.state, LeaseState::Active | LeaseState::Creating)
}

fn lease_matches_grant(g: &Grant, l: &Lease) -> Result<(), StoreError> {
    if l.grant_id == g.id {
        Ok(())
    } else {
        Err(StoreError::Rejected(CoreError::invalid(
            "lease.grant_id",
            format!("lease {} names grant {}, not {}", l.id, l.grant_id, g.id),
        )))
    }
}

fn identity_disabled(identity: &str) -> StoreError {
    StoreError::Rejected(CoreError::invalid(
        "identity",
        format!("identity {identity:?} is disabled; no lease can be issued to it"),
    ))
}

fn not_found(what: &'static str, id: String) -> StoreError {
    StoreError::NotFound { what, id }
}

fn not_in_state(id: Uuid, state: &str) -> StoreError {
    StoreError::Rejected(CoreError::invalid(
        "lease",
        format!("lease {id} is not {state}"),
    ))
}

async fn require_target<B: Backend>(b: &mut B, name: &str) -> Result<(), StoreError> {
    if b.target_exists(name).await? {
        Ok(())
    } else {
        Err(not_found("target", name.to_string()))
    }
}

async fn create_target<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    target: &Target,
    sealed: Option<Vec<u8>>,
    event: AuditDraft,
) -> Result<(), StoreError> {
    b.insert_target(target).await?;
    if let Some(sealed) = sealed {
        b.put_target_secret(&target.name, &sealed, core_now())
            .await?;
    }
    chain.append(event, core_now());
    Ok(())
}

async fn disable_identity<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    id: String,
    actor: &str,
    now: OffsetDateTime,
) -> Result<RevokeOutcome, StoreError> {
    let owner = b
        .disable_identity(&id)
        .await?
        .ok_or_else(|| not_found("identity", id.clone()))?;
    let selector = LeaseSelector::Identity(id.clone());
    // The kill switch's own event comes before the per-lease events it causes, so its
    // counts are known before they are sealed.
    let reason = RevocationReason::IdentityDisabled;
    let ended = b.end_leases(&selector, reason, now).await?;
    let outcome = count(&ended);
    chain.append(events::identity_disabled(id, owner, outcome, actor), now);
    finish_revocation(b, chain, &ended, reason, &selector, actor, now).await?;
    Ok(outcome)
}

async fn create_task<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    task: &Task,
    event: AuditDraft,
) -> Result<(), StoreError> {
    if let Some(parent_id) = task.parent {
        let parent = b
            .task_for_update(parent_id)
            .await?
            .ok_or_else(|| not_found("task", parent_id.to_string()))?;
        if parent.identity != task.identity {
            return Err(
                CoreError::invalid("parent", "the parent task is another identity's").into(),
            );
        }
        if parent.state != TaskState::Open {
            return Err(CoreError::invalid(
                "parent",
                format!("the parent task has ended ({})", parent.state),
            )
            .into());
        }
    }
    b.insert_task(task).await?;
    chain.append(event, core_now());
    Ok(())
}

/// Ends the task and its open descendants, then revokes the leases of each with the end
/// state's reason: the task events come first, then the per-lease events they cause.
async fn end_task<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    id: Uuid,
    (to, exit_status): (TaskState, Option<i32>),
    actor: &str,
    now: OffsetDateTime,
) -> Result<(Task, RevokeOutcome), StoreError> {
    let Some(reason) = to.revocation_reason() else {
        return Err(CoreError::invalid("state", "a task can only end in an ended state").into());
    };
    let task = b
        .task_for_update(id)
        .await?
        .ok_or_else(|| not_found("task", id.to_string()))?;
    if task.state != TaskState::Open {
        return Err(CoreError::invalid(
            "task",
            format!("task {id} has already ended ({})", task.state),
        )
        .into());
    }
    let ended_ids = b.end_task_tree(id, to, now).await?;
    let mut outcome = RevokeOutcome::default();
    for task_id in &ended_ids {
        let selector = LeaseSelector::Task(task_id.to_string());
        let ended = b.end_leases(&selector, reason, now).await?;
        let counts = count(&ended);
        outcome.revoked += counts.revoked;
        outcome.revoking += counts.revoking;
        chain.append(
            events::task_ended(&task, *task_id, (to, exit_status), counts, actor),
            now,
        );
        finish_revocation(b, chain, &ended, reason, &selector, actor, now).await?;
    }
    let task = Task {
        state: to,
        ended_at: Some(now),
        ..task
    };
    Ok((task, outcome))
}

fn rejected(reason: String) -> StoreError {
    CoreError::invalid("approval", reason).into()
}

/// The request of `grant`, locked, if it exists and has not expired at `now`.
async fn live_approval<B: Backend>(
    b: &mut B,
    grant: Uuid,
    now: OffsetDateTime,
) -> Result<ApprovalRecord, StoreError> {
    let approval = b
        .approval_for_update(grant)
        .await?
        .ok_or_else(|| not_found("approval request", grant.to_string()))?;
    let live = matches!(
        approval.state,
        ApprovalState::Pending | ApprovalState::Approved
    );
    if live && approval.expires_at <= now {
        return Err(rejected(format!(
            "the request for grant {grant} expired at {}",
            rfc3339(approval.expires_at)
        )));
    }
    Ok(approval)
}

/// One approver's answer. The row lock (or SQLite's single writer) makes the count read
/// here the one the update replaces, so of two answers racing for the last slot exactly
/// one completes the request.
async fn record_vote<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    grant: Uuid,
    vote: ApprovalVote,
    mut event: AuditDraft,
    now: OffsetDateTime,
) -> Result<ApprovalRecord, StoreError> {
    let mut approval = live_approval(b, grant, now).await?;
    if approval.state == ApprovalState::Review {
        // A review is closed by one approver's answer, whatever it says.
        approval.votes.push(vote);
        approval.state = ApprovalState::Reviewed;
        b.update_approval(&approval).await?;
        chain.append(event, now);
        return Ok(approval);
    }
    if approval.state != ApprovalState::Pending {
        return Err(rejected(format!(
            "grant {grant} is not waiting for approval (its request is {})",
            approval.state
        )));
    }
    if approval.votes.iter().any(|v| v.approver == vote.approver) {
        return Err(rejected(format!(
            "{} has already answered the request for grant {grant}",
            vote.approver
        )));
    }
    let approve = vote.approve;
    approval.votes.push(vote);
    let given = approval.votes.iter().filter(|v| v.approve).count() as u32;
    let complete = approve && given >= approval.needed;
    let grant_to = if !approve {
        approval.state = ApprovalState::Denied;
        Some(GrantState::Denied)
    } else if complete {
        approval.state = ApprovalState::Approved;
        approval.approved_at = Some(now);
        Some(GrantState::Approved)
    } else {
        None
    };
    if let Some(to) = grant_to {
        if !b
            .set_grant_state(grant, GrantState::PendingApproval, to, now)
            .await?
        {
            return Err(rejected(format!(
                "grant {grant} is no longer waiting for approval"
            )));
        }
    }
    b.update_approval(&approval).await?;
    if let serde_json::Value::Object(detail) = &mut event.detail {
        detail.insert("approvals".into(), given.into());
        detail.insert("needed".into(), approval.needed.into());
        detail.insert("complete".into(), complete.into());
    }
    chain.append(event, now);
    Ok(approval)
}

/// Ends a request past its expiry: a pending one is denied (`approval_timeout`), an
/// approved one nobody collected expires.
async fn expire_approval<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    grant: Uuid,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let Some(mut approval) = b.approval_for_update(grant).await? else {
        return Ok(());
    };
    let (from, to) = match approval.state {
        ApprovalState::Pending => (GrantState::PendingApproval, GrantState::Denied),
        ApprovalState::Approved => (GrantState::Approved, GrantState::Expired),
        _ => return Ok(()),
    };
    let was = approval.state;
    approval.state = ApprovalState::Expired;
    b.update_approval(&approval).await?;
    b.set_grant_state(grant, from, to, now).await?;
    let mut event =
        AuditDraft::new(AuditKind::ApprovalExpired, "system:expiry").detail(serde_json::json!({
            "reason": "approval_timeout",
            "was": was.as_str(),
            "approvals": approval.votes.iter().filter(|v| v.approve).count(),
            "needed": approval.needed,
        }));
    event.grant_id = Some(grant);
    event.identity = Some(approval.identity.clone());
    event.owner = Some(approval.owner.clone());
    event.target = Some(approval.target.clone());
    event.task = Some(approval.task.clone());
    chain.append(event, now);
    Ok(())
}

async fn revoke<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    selector: &LeaseSelector,
    reason: RevocationReason,
    actor: &str,
    now: OffsetDateTime,
) -> Result<RevokeOutcome, StoreError> {
    let ended = b.end_leases(selector, reason, now).await?;
    finish_revocation(b, chain, &ended, reason, selector, actor, now).await?;
    Ok(count(&ended))
}

/// Moves the ended leases' issued grants to revoked and audits one event per lease; the
/// events are sealed while the database updates the grants.
async fn finish_revocation<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    ended: &[Ended],
    reason: RevocationReason,
    selector: &LeaseSelector,
    actor: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    if ended.is_empty() {
        return Ok(());
    }
    let selector = serde_json::to_value(selector)
        .map_err(|e| StoreError::Backend(format!("encoding audit detail: {e}")))?;
    let drafts = ended
        .iter()
        .map(|l| {
            let kind = if l.state == LeaseState::Revoking {
                AuditKind::LeaseRevoking
            } else {
                AuditKind::LeaseRevoked
            };
            let mut event = AuditDraft::new(kind, actor).detail(serde_json::json!({
                "reason": reason.as_str(),
                "selector": selector.clone(),
            }));
            event.identity = Some(l.identity.clone());
            event.owner = Some(l.owner.clone());
            event.target = Some(l.target.clone());
            event.task = Some(l.task.clone());
            event.grant_id = Some(l.grant_id);
            event.lease_id = Some(l.id);
            event
        })
        .collect();
    let grants: Vec<Uuid> = ended.iter().map(|l| l.grant_id).collect();
    let sealing = chain.start::<B>(drafts, now);
    b.end_grants(&grants, GrantEnd::Revoked, reason, now)
        .await?;
    chain.finish(b, sealing).await
}

fn count(ended: &[Ended]) -> RevokeOutcome {
    let revoking = ended
        .iter()
        .filter(|l| l.state == LeaseState::Revoking)
        .count() as u64;
    RevokeOutcome {
        revoked: ended.len() as u64 - revoking,
        revoking,
    }
}

async fn renew_lease<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    id: Uuid,
    requested: OffsetDateTime,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Lease, StoreError> {
    let LeaseRow { mut lease, owner } = b
        .lease_for_update(id)
        .await?
        .ok_or_else(|| not_found("lease", id.to_string()))?;
    if lease.state != LeaseState::Active {
        return Err(StoreError::Rejected(CoreError::invalid(
            "lease",
            format!(
                "lease is {}; only an active lease can be renewed",
                lease.state
            ),
        )));
    }
    if lease.expires_at <= now {
        return Err(StoreError::Rejected(CoreError::invalid(
            "lease",
            format!(
                "lease expired at {}; an expired lease cannot be renewed, request a new grant",
                rfc3339(lease.expires_at)
            ),
        )));
    }
    let from = lease.expires_at;
    let capped = requested > lease.max_expires_at;
    // Never beyond the cap fixed at issue time, never shorter than what was granted.
    let to = requested.min(lease.max_expires_at).max(from);
    b.set_lease_expiry(id, to).await?;
    lease.expires_at = to;
    let mut event = AuditDraft::new(AuditKind::LeaseRenewed, actor)
        .for_lease(&lease)
        .detail(serde_json::json!({
            "from": rfc3339(from),
            "to": rfc3339(to),
            "capped": capped,
        }));
    event.owner = Some(owner);
    chain.append(event, now);
    Ok(lease)
}

async fn complete_revocation<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    id: Uuid,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Option<Lease>, StoreError> {
    let Some(LeaseRow { lease, owner }) = b.complete_revocation(id).await? else {
        return Ok(None);
    };
    let reason = lease.revocation_reason.unwrap_or(RevocationReason::Admin);
    let end = if lease.state == LeaseState::Expired {
        GrantEnd::Expired
    } else {
        GrantEnd::Revoked
    };
    b.end_grants(&[lease.grant_id], end, reason, now).await?;
    chain.append(
        events::revocation_completed(&lease, owner, reason, actor),
        now,
    );
    Ok(Some(lease))
}

async fn expire_due<B: Backend>(
    b: &mut B,
    chain: &mut Chain,
    now: OffsetDateTime,
    limit: u32,
) -> Result<Vec<Lease>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut leases = b.expire_due(now, limit).await?;
    // RETURNING yields rows in no promised order; the contract is oldest expiry first.
    leases.sort_by_key(|l| (l.lease.expires_at, l.lease.id));
    // External leases stay covered by their grant until the target confirms removal.
    let ended: Vec<Uuid> = leases
        .iter()
        .filter(|l| !l.lease.external)
        .map(|l| l.lease.grant_id)
        .collect();
    let now_ms = to_unix_ms(now);
    let drafts = leases
        .iter()
        .map(|LeaseRow { lease, owner }| {
            let mut event = AuditDraft::new(AuditKind::LeaseExpired, "system:expiry")
                .for_lease(lease)
                .detail(serde_json::json!({
                    "reason": RevocationReason::Ttl.as_str(),
                    "expires_at": rfc3339(lease.expires_at),
                    "lag_ms": now_ms - to_unix_ms(lease.expires_at),
                    "state": lease.state.as_str(),
                }));
            event.owner = Some(owner.clone());
            event
        })
        .collect();
    let sealing = chain.start::<B>(drafts, now);
    if !ended.is_empty() {
        b.end_grants(&ended, GrantEnd::Expired, RevocationReason::Ttl, now)
            .await?;
    }
    chain.finish(b, sealing).await?;
    Ok(leases.into_iter().map(|l| l.lease).collect())
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| to_unix_ms(t).to_string())
}
