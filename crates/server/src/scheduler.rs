//! Background work: ending leases at their expiry, and picking up key rotations made by
//! other replicas.
//!
//! Expiry is driven by the store's index on `expires_at`: the scheduler asks for the next
//! due instant, sleeps until then (at most a second, so leases written by other replicas
//! are noticed), and ends what is due in batches. Nothing is held in memory per lease, so
//! millions of leases cost nothing here, and leases that expired while the broker was
//! down are ended on the first pass after start. Task deadlines are driven the same way by
//! the index on open tasks' deadlines.

use std::time::Duration;

use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::model::{Lease, LeaseState};
use mayfly_core::provider::{ReconcileReport, TargetAccess};
use mayfly_core::store::LeaseFilter;

use crate::state::AppState;

const BATCH: u32 = 1000;
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub async fn run_expiry(state: AppState) {
    loop {
        let mut backoff = false;
        // Task deadlines first: a due task times out with its children and every lease in
        // them (`task_timeout`), before those leases, cut to end with it, expire (`ttl`).
        match state
            .store
            .expire_due_tasks(mayfly_core::now(), BATCH)
            .await
        {
            Ok(ended) if !ended.is_empty() => {
                tracing::debug!(count = ended.len(), "tasks timed out");
                state.revoker_wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "task deadline pass failed; retrying");
                backoff = true;
            }
        }
        // Approval requests nobody answered (or collected) in time.
        match state
            .store
            .expire_approvals(mayfly_core::now(), BATCH)
            .await
        {
            Ok(ended) if !ended.is_empty() => {
                tracing::info!(count = ended.len(), "approval requests expired");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "approval expiry pass failed; retrying");
                backoff = true;
            }
        }
        loop {
            let now = mayfly_core::now();
            match state.store.expire_due(now, BATCH).await {
                Ok(leases) => {
                    for lease in &leases {
                        let lag = (now - lease.expires_at).as_seconds_f64().max(0.0);
                        state.metrics.expiry_lag.observe(lag);
                    }
                    if !leases.is_empty() {
                        state.metrics.revoked("ttl", leases.len() as u64);
                        tracing::debug!(count = leases.len(), "expired leases");
                    }
                    if leases.iter().any(|l| l.state == LeaseState::Revoking) {
                        // External credentials: the target must still drop them.
                        state.revoker_wake.notify_one();
                    }
                    if leases.len() < BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expiry pass failed; retrying");
                    backoff = true;
                    break;
                }
            }
        }
        let next_task = state.store.next_task_deadline().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read next task deadline");
            None
        });
        let sleep = if backoff {
            MAX_SLEEP
        } else {
            match state
                .store
                .next_expiry()
                .await
                .map(|next| match (next, next_task) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }) {
                Ok(Some(next)) => {
                    let until = (next - mayfly_core::now()).as_seconds_f64().max(0.0);
                    Duration::from_secs_f64(until).min(MAX_SLEEP)
                }
                Ok(None) => MAX_SLEEP,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read next expiry");
                    MAX_SLEEP
                }
            }
        };
        let wake_at = mayfly_core::now() + time::Duration::seconds_f64(sleep.as_secs_f64());
        state.next_expiry_wake_ms.store(
            mayfly_core::to_unix_ms(wake_at),
            std::sync::atomic::Ordering::Relaxed,
        );
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = state.expiry_wake.notified() => {}
        }
    }
}

pub async fn run_key_refresh(state: AppState, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = state.keys.reload().await {
            tracing::warn!(error = %e, "cannot reload signing keys");
        }
    }
}

/// Writes the counted failed authentications of each ended interval as one entry per
/// source and reason. Runs a few times per interval so an entry is at most a fraction of
/// an interval late.
pub async fn run_auth_failure_audit(state: AppState) {
    let every = Duration::from_secs((state.auth_failures.interval().as_secs() / 4).clamp(1, 15));
    loop {
        tokio::time::sleep(every).await;
        flush_auth_failures(&state, false).await;
    }
}

/// Audits what [`crate::auth_failures::AuthFailures::flush`] hands over (`everything` at
/// shutdown, so no count is lost to a clean stop).
pub async fn flush_auth_failures(state: &AppState, everything: bool) {
    let events = state
        .auth_failures
        .flush(std::time::Instant::now(), everything);
    if events.is_empty() {
        return;
    }
    if let Err(e) = state.store.append_audit(events).await {
        tracing::warn!(error = %e, "could not audit counted authentication failures");
    }
}

/// Hot reload of the Cedar policy directory: a valid change takes effect, an invalid one is
/// logged and audited and the previous policies stay in force.
pub async fn run_policy_reload(state: AppState, every: Duration) {
    let Some(engine) = state.cedar.clone() else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let probe = engine.clone();
        let outcome = match tokio::task::spawn_blocking(move || probe.reload_if_changed()).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "policy reload task failed");
                continue;
            }
        };
        let dir = engine.dir().display().to_string();
        let event = match outcome {
            mayfly_policy::ReloadOutcome::Unchanged => continue,
            mayfly_policy::ReloadOutcome::Reloaded { policies } => {
                tracing::info!(policies, "policies reloaded");
                AuditDraft::new(AuditKind::PolicyReloaded, "system:policy")
                    .detail(serde_json::json!({"policies": policies, "dir": dir}))
            }
            mayfly_policy::ReloadOutcome::Rejected { error } => {
                let diagnostics: Vec<String> =
                    error.diagnostics.iter().map(|d| d.to_string()).collect();
                tracing::error!(errors = ?diagnostics, "policy change rejected; previous policies stay in force");
                AuditDraft::new(AuditKind::PolicyRejected, "system:policy")
                    .detail(serde_json::json!({"errors": diagnostics, "dir": dir}))
            }
        };
        if let Err(e) = state.store.append_audit(vec![event]).await {
            tracing::warn!(error = %e, "could not audit a policy reload");
        }
    }
}

/// Ends leases a crash left in `creating`: whatever the provider may have created is
/// removed (revoke is idempotent: a user that was never created is simply absent), then
/// the lease is closed. If the target cannot be reached, the lease goes to the revocation
/// queue and is retried until it can.
pub async fn reconcile_creating(state: &AppState, all: bool) {
    let leases = interrupted_issuances(state, all).await;
    close_interrupted(state, leases).await;
}

/// The `creating` leases to close: all of them (`all`, at start-up with an embedded store,
/// where no other process can be mid-issue), or those older than the grace time.
pub async fn interrupted_issuances(state: &AppState, all: bool) -> Vec<Lease> {
    let filter = LeaseFilter {
        state: Some(LeaseState::Creating),
        limit: Some(10_000),
        ..Default::default()
    };
    let leases = match state.store.list_leases(&filter).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list creating leases");
            return Vec::new();
        }
    };
    let cutoff =
        mayfly_core::now() - time::Duration::seconds_f64(state.creating_grace.as_secs_f64());
    leases
        .into_iter()
        .filter(|l| all || l.issued_at < cutoff)
        .collect()
}

/// Removes what each interrupted issuance may have created and closes its lease; a target
/// that cannot be reached now leaves the lease queued for revocation.
pub async fn close_interrupted(state: &AppState, leases: Vec<Lease>) {
    for lease in leases {
        let cleaned = match revoke_on_target(state, &lease).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(lease = %lease.id, error = %e, "cannot clean up an interrupted issuance yet; queued for revocation");
                false
            }
        };
        let why = "issuance interrupted (broker stopped between write-ahead and completion)";
        match state
            .store
            .abandon_lease(
                lease.id,
                cleaned,
                why,
                "system:reconcile",
                mayfly_core::now(),
            )
            .await
        {
            Ok(_) => tracing::info!(lease = %lease.id, cleaned, "closed an interrupted issuance"),
            Err(e) => {
                tracing::warn!(lease = %lease.id, error = %e, "cannot close an interrupted issuance")
            }
        }
    }
    state.revoker_wake.notify_one();
}

/// What a lease's `last_error` starts with once its credential is contained.
pub const CONTAINED: &str = "contained: ";

/// Revokes one lease's credential on its target; the error, as text, is what the lease
/// records for its next attempt (never a secret). When the target refuses the removal
/// itself (not when it is unreachable), the credential is contained first: it cannot be
/// used while removal is retried, and the error says so.
async fn revoke_on_target(state: &AppState, lease: &Lease) -> Result<(), String> {
    use crate::broker::BrokerError;
    use mayfly_core::provider::ProviderError;
    let error = match crate::broker::revoke_on_target(state, lease).await {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if !matches!(error, BrokerError::Target(ProviderError::Failed(_))) {
        return Err(error.to_string());
    }
    match crate::broker::contain_on_target(state, lease).await {
        Ok(true) => {
            let first = !lease
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with(CONTAINED));
            if first {
                state.metrics.containments.inc();
                let event = AuditDraft::new(AuditKind::LeaseContained, "system:revoker")
                    .for_lease(lease)
                    .detail(serde_json::json!({ "error": error.to_string() }));
                if let Err(e) = state.store.append_audit(vec![event]).await {
                    tracing::warn!(lease = %lease.id, error = %e, "cannot audit a containment");
                }
                tracing::warn!(lease = %lease.id, target = %lease.target, %error, "revocation refused; credential contained, removal retried");
            }
            Err(format!(
                "{CONTAINED}the credential cannot be used; its removal keeps being retried: {error}"
            ))
        }
        Ok(false) => Err(error.to_string()),
        Err(contain) => Err(format!("{error}; containing it failed too: {contain}")),
    }
}

/// Exponential backoff with jitter, capped at five minutes: retried until it succeeds, but
/// a target that is down for hours is not hammered.
pub fn backoff(attempts: u32) -> Duration {
    let base = Duration::from_secs(1u64 << attempts.min(8)).min(Duration::from_secs(300));
    let jitter = mayfly_core::secret::random_bytes::<1>()
        .map(|b| f64::from(b[0]) / 255.0)
        .unwrap_or(0.5);
    base.mul_f64(0.5 + jitter)
}

/// The revocation worker: takes due `revoking` leases, revokes them on their targets, and
/// completes or reschedules each. Claims are time-limited, so work claimed by a replica
/// that dies becomes due again for the others.
pub async fn run_revoker(state: AppState) {
    const CLAIM_FOR: time::Duration = time::Duration::seconds(90);
    loop {
        let now = mayfly_core::now();
        let claimed = match state.store.claim_revocations(now, 64, CLAIM_FOR).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim revocations");
                Vec::new()
            }
        };
        let busy = !claimed.is_empty();
        for lease in claimed {
            let result = revoke_on_target(&state, &lease).await;
            let now = mayfly_core::now();
            let outcome = match result {
                Ok(()) => state
                    .store
                    .complete_revocation(lease.id, "system:revoker", now)
                    .await
                    .map(|_| ()),
                Err(error) => {
                    state.metrics.revoke_retries.inc();
                    let next = now
                        + time::Duration::seconds_f64(backoff(lease.revoke_attempts).as_secs_f64());
                    state
                        .store
                        .revocation_failed(lease.id, &error, next, "system:revoker", now)
                        .await
                }
            };
            if let Err(e) = outcome {
                tracing::warn!(lease = %lease.id, error = %e, "cannot record a revocation attempt");
            }
        }
        if !busy {
            tokio::select! {
                _ = tokio::time::sleep(MAX_SLEEP) => {}
                _ = state.revoker_wake.notified() => {}
            }
        }
    }
}

/// Periodic housekeeping: interrupted issuances past their grace time, interrupted root
/// rotations, and reconciliation of every external target. Root rotations a crash left
/// recorded are settled first thing, in the background, so a target that is down cannot
/// hold up the start; one that stays down keeps both secrets on record until a later pass.
pub async fn run_sweeper(state: AppState, every: Duration) {
    let grace = state.creating_grace;
    let from_start = crate::providers::resolve_root_rotations(&state, grace, None).await;
    loop {
        tokio::time::sleep(every).await;
        crate::providers::resolve_root_rotations(&state, grace, Some(&from_start)).await;
        reconcile_creating(&state, false).await;
        let targets = match state.store.list_targets().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list targets to reconcile");
                continue;
            }
        };
        for target in targets {
            if state
                .providers
                .get(&target.kind)
                .is_some_and(|p| p.external())
            {
                if let Err(e) = reconcile_target(&state, &target, "system:reconcile").await {
                    tracing::warn!(target = %target.name, error = %e, "reconciliation failed");
                }
            }
        }
    }
}

/// Drops the users Mayfly created on the target whose leases have all ended (proved by the
/// store's record of this target's leases, and by the provider's own marker where the
/// engine has one), and audits what it found, including the prefixed users it left alone.
pub async fn reconcile_target(
    state: &AppState,
    target: &mayfly_core::model::Target,
    actor: &str,
) -> Result<ReconcileReport, crate::error::ApiError> {
    let provider = crate::broker::provider_for(state, &target.kind)?;
    let admin = crate::broker::admin_secret(state, &target.name).await?;
    // A kind without a live key plans nothing on the target, so nothing can be recorded.
    let key = provider.live_key().unwrap_or("username");
    let ledger = crate::providers::StoreLedger::new(state.store.as_ref(), &target.name, key);
    let result = provider
        .reconcile(
            TargetAccess {
                target,
                admin: admin.as_ref(),
            },
            &ledger,
        )
        .await;
    if let Some(e) = ledger.take_failure() {
        return Err(e.into());
    }
    let report = result?;
    if !report.unknown.is_empty() {
        // Info, not warn: a hand-made role with the prefix is legitimate and would warn
        // every pass; the prefix clash itself is warned about when the target is created.
        tracing::info!(target = %target.name, accounts = ?report.unknown, "reconciliation left accounts with the target's prefix that Mayfly did not create for this target");
    }
    let mut event = AuditDraft::new(AuditKind::TargetReconciled, actor).detail(serde_json::json!({
        "found": report.found,
        "dropped": report.dropped,
        "failed": report.failed,
        // A count: the names are in the answer and the log, and the list is unbounded.
        "unknown": report.unknown.len(),
    }));
    event.target = Some(target.name.clone());
    state.store.append_audit(vec![event]).await?;
    Ok(report)
}
