//! The layer every credential provider call goes through: a deadline (the target's own
//! `timeout_seconds`, else the configured `provider_timeout`), a tracing span and error
//! metrics, so no provider can hang a request or the revocation worker, and each
//! provider stays free of those concerns. Also where a target's admin secret is unsealed,
//! and where the store answers reconciliation's question ([`StoreLedger`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_core::model::{Grant, Lease, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Ledger, Provider, ProviderError, ReconcileReport, Recorded,
    TargetAccess,
};
use mayfly_core::secret::SecretString;
use mayfly_core::store::{Store, StoreError};
use mayfly_core::OffsetDateTime;
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::state::AppState;

/// Added to a target's own timeout: the provider bounds its whole operation by that
/// timeout and says which step was slow, so its error should win the race with ours.
const TARGET_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// The longest a guarded call on any target may run: a target's `timeout_seconds` is at
/// most [`mayfly_providers::common::MAX_TIMEOUT_SECONDS`] (checked when it is stored).
pub const LONGEST_TARGET_TIMEOUT: Duration = Duration::from_secs(
    mayfly_providers::common::MAX_TIMEOUT_SECONDS + TARGET_TIMEOUT_MARGIN.as_secs(),
);

pub struct Guarded {
    inner: Arc<dyn Provider>,
    /// For targets that set no `timeout_seconds` of their own.
    deadline: Duration,
    metrics: Arc<Metrics>,
}

impl Guarded {
    pub fn new(inner: Arc<dyn Provider>, deadline: Duration, metrics: Arc<Metrics>) -> Self {
        Guarded {
            inner,
            deadline,
            metrics,
        }
    }

    /// How long a call on `target` may take. A target's own `timeout_seconds` (up to ten
    /// minutes) is what its operator allowed, so a shorter fixed deadline must not cut it
    /// off; a target without one gets the configured deadline.
    fn deadline_for(&self, target: &Target) -> Duration {
        match target
            .settings
            .get("timeout_seconds")
            .and_then(serde_json::Value::as_u64)
        {
            Some(secs) => (Duration::from_secs(secs.max(1)) + TARGET_TIMEOUT_MARGIN)
                .min(LONGEST_TARGET_TIMEOUT),
            None => self.deadline,
        }
    }

    async fn run<T>(
        &self,
        op: &'static str,
        target: &Target,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let span = tracing::info_span!("provider", kind = self.inner.kind(), op);
        let deadline = self.deadline_for(target);
        let result = match tokio::time::timeout(deadline, call.instrument(span)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Unavailable(format!(
                "{} {op} did not finish within {}s",
                self.inner.kind(),
                deadline.as_secs()
            ))),
        };
        if let Err(e) = &result {
            self.metrics.provider_error(self.inner.kind(), op);
            tracing::warn!(kind = self.inner.kind(), op, error = %e, "provider call failed");
        }
        result
    }
}

#[async_trait::async_trait]
impl Provider for Guarded {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn external(&self) -> bool {
        self.inner.external()
    }
    fn validate_target(
        &self,
        target: &Target,
        admin: Option<&SecretString>,
    ) -> Result<(), ProviderError> {
        self.inner.validate_target(target, admin)
    }
    fn plan(&self, request: &IssueRequest<'_>) -> Result<serde_json::Value, ProviderError> {
        self.inner.plan(request)
    }
    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let target = request.target.target;
        self.run("issue", target, self.inner.issue(request)).await
    }
    async fn renew(
        &self,
        lease: &Lease,
        grant: &Grant,
        target: TargetAccess<'_>,
        new_expiry: OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError> {
        self.run(
            "renew",
            target.target,
            self.inner.renew(lease, grant, target, new_expiry),
        )
        .await
    }
    async fn revoke(&self, lease: &Lease, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        self.run("revoke", target.target, self.inner.revoke(lease, target))
            .await
    }
    async fn reconcile(
        &self,
        target: TargetAccess<'_>,
        ledger: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        self.run(
            "reconcile",
            target.target,
            self.inner.reconcile(target, ledger),
        )
        .await
    }
    async fn rotate_root(&self, target: TargetAccess<'_>) -> Result<SecretString, ProviderError> {
        // No deadline here: cancelling after the target accepted the new password would
        // lose it. The provider bounds each statement with the target's own timeouts.
        let result = self.inner.rotate_root(target).await;
        if let Err(e) = &result {
            self.metrics
                .provider_error(self.inner.kind(), "rotate_root");
            tracing::warn!(kind = self.inner.kind(), error = %e, "root rotation failed");
        }
        result
    }
}

/// The sealing context of a target's admin secret: binds the blob to its target.
pub fn secret_context(target: &str) -> String {
    format!("target-secret:{target}")
}

/// Unseals a target's admin secret, if it has one.
pub async fn admin_secret(
    state: &AppState,
    target: &str,
) -> Result<Option<SecretString>, crate::error::ApiError> {
    Ok(crate::broker::admin_secret(state, target).await?)
}

/// Names per store query: keeps each query's bound list small on a target with many users.
const LEDGER_BATCH: usize = 1000;

/// One target's leases as the record of what Mayfly created there: a name counts only if
/// a lease *of this target* recorded it. A store failure is kept, so the caller can report
/// it as the store's (not the target's) and nothing is removed meanwhile.
pub struct StoreLedger<'a> {
    store: &'a dyn Store,
    target: &'a str,
    failure: Mutex<Option<StoreError>>,
}

impl<'a> StoreLedger<'a> {
    pub fn new(store: &'a dyn Store, target: &'a str) -> Self {
        StoreLedger {
            store,
            target,
            failure: Mutex::new(None),
        }
    }

    /// The store error that ended the pass, if one did.
    pub fn take_failure(&self) -> Option<StoreError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

#[async_trait::async_trait]
impl Ledger for StoreLedger<'_> {
    async fn recorded(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Recorded>, ProviderError> {
        let mut out = BTreeMap::new();
        for chunk in names.chunks(LEDGER_BATCH) {
            match self.store.recorded_usernames(self.target, chunk).await {
                Ok(found) => out.extend(found.into_iter().map(|(name, live)| {
                    (
                        name,
                        if live {
                            Recorded::Live
                        } else {
                            Recorded::Ended
                        },
                    )
                })),
                Err(e) => {
                    let message =
                        format!("reading the store's record of target {}: {e}", self.target);
                    *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return Err(ProviderError::Failed(message));
                }
            }
        }
        Ok(out)
    }
}
