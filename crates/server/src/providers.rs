//! The layer every credential provider call goes through: a deadline, a tracing span and
//! error metrics, so no provider can hang a request or the revocation worker, and each
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

pub struct Guarded {
    inner: Arc<dyn Provider>,
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

    async fn run<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let span = tracing::info_span!("provider", kind = self.inner.kind(), op);
        let result = match tokio::time::timeout(self.deadline, call.instrument(span)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Unavailable(format!(
                "{} {op} did not finish within {}s",
                self.inner.kind(),
                self.deadline.as_secs()
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
        self.run("issue", self.inner.issue(request)).await
    }
    async fn renew(
        &self,
        lease: &Lease,
        grant: &Grant,
        target: TargetAccess<'_>,
        new_expiry: OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError> {
        self.run("renew", self.inner.renew(lease, grant, target, new_expiry))
            .await
    }
    async fn revoke(&self, lease: &Lease, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        self.run("revoke", self.inner.revoke(lease, target)).await
    }
    async fn reconcile(
        &self,
        target: TargetAccess<'_>,
        ledger: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        self.run("reconcile", self.inner.reconcile(target, ledger))
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
    let Some(sealed) = state.store.get_target_secret(target).await? else {
        return Ok(None);
    };
    let plain = state
        .master
        .open(&sealed, &secret_context(target))
        .map_err(|e| {
            crate::error::ApiError::Internal(format!("target {target:?} admin secret: {e}"))
        })?;
    let text = String::from_utf8(plain.expose().to_vec()).map_err(|_| {
        crate::error::ApiError::Internal(format!("target {target:?} admin secret is not text"))
    })?;
    Ok(Some(SecretString::new(text)))
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
