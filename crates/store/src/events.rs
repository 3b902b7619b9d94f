//! The audit events the store writes for its own operations. Shared by every backend, so
//! one chain reads the same whichever database holds it (and a migrated chain continues
//! in the same vocabulary).

use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::model::{Lease, RevocationReason, Task, TaskState};
use mayfly_core::store::RevokeOutcome;
use mayfly_core::OffsetDateTime;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// The kill switch: written before the per-lease revocation events it causes.
pub(crate) fn identity_disabled(
    id: String,
    owner: String,
    outcome: RevokeOutcome,
    actor: &str,
) -> AuditDraft {
    let mut event = AuditDraft::new(AuditKind::IdentityDisabled, actor)
        .detail(serde_json::json!({"revoked": outcome.revoked, "revoking": outcome.revoking}));
    event.identity = Some(id);
    event.owner = Some(owner);
    event
}

/// An external issuance failed: the grant failed, and the lease was closed (`cleaned`) or
/// queued for revocation.
pub(crate) fn issuance_abandoned(
    lease: &Lease,
    owner: &str,
    error: &str,
    cleaned: bool,
    actor: &str,
) -> [AuditDraft; 2] {
    let mut failed = AuditDraft::new(AuditKind::GrantFailed, actor)
        .for_lease(lease)
        .detail(serde_json::json!({"error": error, "cleaned": cleaned}));
    failed.owner = Some(owner.to_string());
    let kind = if cleaned {
        AuditKind::LeaseRevoked
    } else {
        AuditKind::LeaseRevoking
    };
    let mut ended = AuditDraft::new(kind, actor)
        .for_lease(lease)
        .detail(serde_json::json!({"reason": RevocationReason::TaskFailed.as_str(), "state": lease.state.as_str()}));
    ended.owner = Some(owner.to_string());
    [failed, ended]
}

/// The target confirmed an external credential is gone.
pub(crate) fn revocation_completed(
    lease: &Lease,
    owner: String,
    reason: RevocationReason,
    actor: &str,
) -> AuditDraft {
    let mut event = AuditDraft::new(AuditKind::LeaseRevoked, actor)
        .for_lease(lease)
        .detail(serde_json::json!({
            "reason": reason.as_str(),
            "state": lease.state.as_str(),
            "attempts": lease.revoke_attempts + 1,
            "confirmed_by_target": true,
        }));
    event.owner = Some(owner);
    event
}

/// One failed revocation attempt, and when the next is due.
pub(crate) fn revocation_failed(
    lease: &Lease,
    owner: String,
    error: &str,
    next_attempt: OffsetDateTime,
    actor: &str,
) -> AuditDraft {
    let mut event = AuditDraft::new(AuditKind::LeaseRevokeFailed, actor)
        .for_lease(lease)
        .detail(serde_json::json!({
            "error": error,
            "attempt": lease.revoke_attempts,
            "next_attempt_at": rfc3339(next_attempt),
        }));
    event.owner = Some(owner);
    event
}

/// A task (`id`: the one ended, or a task below it that ends with it) moved to `to`;
/// written before the per-lease revocation events it causes.
pub(crate) fn task_ended(
    root: &Task,
    id: mayfly_core::Uuid,
    (to, exit_status): (TaskState, Option<i32>),
    outcome: RevokeOutcome,
    actor: &str,
) -> AuditDraft {
    let mut detail = serde_json::json!({
        "state": to.as_str(),
        "reason": to.revocation_reason().map(RevocationReason::as_str),
        "revoked": outcome.revoked,
        "revoking": outcome.revoking,
    });
    if id != root.id {
        detail["ended_with"] = serde_json::json!(root.id.to_string());
    } else if let Some(status) = exit_status {
        detail["exit_status"] = serde_json::json!(status);
    }
    let mut event = AuditDraft::new(AuditKind::TaskEnded, actor).detail(detail);
    event.identity = Some(root.identity.clone());
    event.owner = Some(root.owner.clone());
    event.task = Some(id.to_string());
    event
}
