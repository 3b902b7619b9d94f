//! Background work: ending leases at their expiry, and picking up key rotations made by
//! other replicas.
//!
//! Expiry is driven by the store's index on `expires_at`: the scheduler asks for the next
//! due instant, sleeps until then (at most a second, so leases written by other replicas
//! are noticed), and ends what is due in batches. Nothing is held in memory per lease, so
//! millions of leases cost nothing here, and leases that expired while the broker was
//! down are ended on the first pass after start.

use std::time::Duration;

use mayfly_core::audit::{AuditDraft, AuditKind};

use crate::state::AppState;

const BATCH: u32 = 1000;
const MAX_SLEEP: Duration = Duration::from_secs(1);

pub async fn run_expiry(state: AppState) {
    loop {
        let mut backoff = false;
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
        let sleep = if backoff {
            MAX_SLEEP
        } else {
            match state.store.next_expiry().await {
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
