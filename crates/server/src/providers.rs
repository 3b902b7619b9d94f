//! The layer every credential provider call goes through: a deadline (the target's own
//! `timeout_seconds`, else the configured `provider_timeout`), a tracing span and error
//! metrics, so no provider can hang a request or the revocation worker, and each
//! provider stays free of those concerns. It also holds providers to their word: what
//! `issue` created must be what `plan` named (the write-ahead lease records only the
//! plan, so anything else would be an orphan on the target). Also where a target's admin secret is unsealed,
//! where the store answers reconciliation's question ([`StoreLedger`]), and root rotation's
//! protocol ([`rotate_root`], [`resolve_root_rotations`]).
//!
//! Root rotation cannot lose the admin password: the provider plans the next admin secret,
//! it is sealed and recorded (state `rotating`) before the target is changed, and only
//! after the target verified it does it become the admin secret. Until then both the
//! current and the next secret are on record; a crash anywhere leaves them there, and
//! [`resolve_root_rotations`] (at start-up, then from the sweeper) settles which one the
//! target has.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::model::{Grant, Lease, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Ledger, Provider, ProviderError, ReconcileReport, Recorded,
    TargetAccess,
};
use mayfly_core::secret::SecretString;
use mayfly_core::store::{Store, StoreError};
use mayfly_core::OffsetDateTime;
use tracing::Instrument;

use crate::error::ApiError;
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
    fn live_key(&self) -> Option<&'static str> {
        self.inner.live_key()
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
        let access = request.target;
        let planned = request.plan.clone();
        // What a lease for the credential would be, should it have to be removed here.
        let mut made = Lease {
            id: request.lease_id,
            grant_id: request.grant.id,
            kind: self.inner.kind().to_string(),
            identity: request.identity.id.clone(),
            target: access.target.name.clone(),
            task: request.grant.task.clone(),
            issued_at: request.issued_at,
            expires_at: request.expires_at,
            max_expires_at: request.expires_at,
            state: mayfly_core::model::LeaseState::Creating,
            revocation_reason: None,
            external: self.inner.external(),
            provider_state: serde_json::Value::Null,
            revoke_attempts: 0,
            last_error: None,
        };
        let issued = self
            .run("issue", access.target, self.inner.issue(request))
            .await?;
        let Err(broken) = check_answer(self.inner.live_key(), &planned, &issued.provider_state)
        else {
            return Ok(issued);
        };
        // Remove what was made, by its own name: the revocation the broker queues for the
        // failed issuance knows only the planned one.
        self.metrics.provider_error(self.inner.kind(), "issue");
        tracing::error!(kind = self.inner.kind(), error = %broken, "provider issued something other than it planned; removing it");
        made.provider_state = issued.provider_state;
        if let Err(e) = self
            .run("revoke", access.target, self.inner.revoke(&made, access))
            .await
        {
            tracing::error!(kind = self.inner.kind(), error = %e, state = %made.provider_state, "removing the unplanned credential failed; remove it by hand");
        }
        Err(broken)
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
    fn plan_root_rotation(&self, target: TargetAccess<'_>) -> Result<SecretString, ProviderError> {
        self.inner.plan_root_rotation(target)
    }
    async fn rotate_root(
        &self,
        target: TargetAccess<'_>,
        next: &SecretString,
    ) -> Result<(), ProviderError> {
        // No deadline here: a change cancelled client-side may still apply on the server.
        // The provider bounds each statement with the target's own timeouts.
        let result = self.inner.rotate_root(target, next).await;
        if let Err(e) = &result {
            self.metrics
                .provider_error(self.inner.kind(), "rotate_root");
            tracing::warn!(kind = self.inner.kind(), error = %e, "root rotation failed");
        }
        result
    }
    async fn check_admin(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        self.run("check_admin", target.target, self.inner.check_admin(target))
            .await
    }
    async fn contain(
        &self,
        lease: &Lease,
        target: TargetAccess<'_>,
    ) -> Result<bool, ProviderError> {
        self.run("contain", target.target, self.inner.contain(lease, target))
            .await
    }
    async fn verify_revoked(
        &self,
        lease: &Lease,
        target: TargetAccess<'_>,
    ) -> Result<bool, ProviderError> {
        self.run(
            "verify_revoked",
            target.target,
            self.inner.verify_revoked(lease, target),
        )
        .await
    }
    async fn check_target(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        self.run(
            "check_target",
            target.target,
            self.inner.check_target(target),
        )
        .await
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
) -> Result<Option<SecretString>, ApiError> {
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
    /// The provider's live key, under which its plans recorded the names.
    key: &'static str,
    failure: Mutex<Option<StoreError>>,
}

impl<'a> StoreLedger<'a> {
    pub fn new(store: &'a dyn Store, target: &'a str, key: &'static str) -> Self {
        StoreLedger {
            store,
            target,
            key,
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
            match self
                .store
                .recorded_names(self.target, self.key, chunk)
                .await
            {
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

/// `Ok` when the provider state `issue` returned names, under the provider's live key,
/// exactly what `plan` named; providers without a live key (self-contained credentials)
/// have nothing on a target to check.
fn check_answer(
    live_key: Option<&str>,
    planned: &serde_json::Value,
    issued: &serde_json::Value,
) -> Result<(), ProviderError> {
    let Some(key) = live_key else {
        return Ok(());
    };
    match (planned.get(key), issued.get(key)) {
        (Some(p), Some(i)) if p == i && !p.is_null() => Ok(()),
        (None, _) => Err(ProviderError::Failed(format!(
            "the provider's plan names no {key}; the write-ahead lease could not record it"
        ))),
        (Some(p), i) => Err(ProviderError::Failed(format!(
            "the provider planned {key} {p} but issued {}",
            i.map_or_else(|| "none".to_string(), ToString::to_string)
        ))),
    }
}

/// Seals `secret` as target `name`'s admin secret (current or next).
fn seal_admin(state: &AppState, name: &str, secret: &SecretString) -> Result<Vec<u8>, ApiError> {
    state
        .master
        .seal(secret.expose().as_bytes(), &secret_context(name))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Opens a sealed admin secret of target `name`.
fn open_admin(state: &AppState, name: &str, sealed: &[u8]) -> Result<SecretString, ApiError> {
    Ok(crate::broker::open_admin_secret(state, name, sealed)?)
}

fn rotation_event(name: &str, actor: &str, outcome: &str) -> AuditDraft {
    let mut event = AuditDraft::new(AuditKind::TargetRootRotated, actor);
    event.target = Some(name.to_string());
    event.detail = serde_json::json!({ "outcome": outcome });
    event
}

/// Makes the recorded next secret the admin secret. Retried: the target already has it,
/// so giving up early would leave Mayfly with only the old one until the next resolution.
async fn commit(
    state: &AppState,
    name: &str,
    sealed: &[u8],
    actor: &str,
    outcome: &str,
) -> Result<(), ApiError> {
    let mut last = None;
    for attempt in 0..5u32 {
        match state
            .store
            .commit_root_rotation(name, sealed, rotation_event(name, actor, outcome))
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::error!(target = %name, attempt, error = %e, "cannot commit the rotated admin secret; retrying (it stays on record as the pending one)");
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    Err(last
        .map(ApiError::from)
        .unwrap_or_else(|| ApiError::Internal("rotation not recorded".into())))
}

/// How a recorded rotation ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The target has the next secret; it is the admin secret now.
    Committed,
    /// The target kept the current secret; the next one is forgotten.
    Abandoned,
    /// Neither could be confirmed (target down, or a fresh rotation another process may
    /// still be making): both stay on record for the next resolution.
    Pending,
}

/// One recorded rotation of one target: both candidate secrets and the sealed next one.
struct Rotation<'a> {
    state: &'a AppState,
    target: &'a Target,
    provider: &'a dyn Provider,
    current: Option<&'a SecretString>,
    next: &'a SecretString,
    sealed: &'a [u8],
    actor: &'a str,
}

impl Rotation<'_> {
    fn access<'b>(&'b self, admin: Option<&'b SecretString>) -> TargetAccess<'b> {
        TargetAccess {
            target: self.target,
            admin,
        }
    }

    /// Changes the target's admin secret from the current to the next one (outer error:
    /// the change failed), then commits it (inner error: the store failed; the target has
    /// the next secret, which stays on record for the next resolution).
    async fn apply(&self, outcome: &str) -> Result<Result<(), ApiError>, ProviderError> {
        self.provider
            .rotate_root(self.access(self.current), self.next)
            .await?;
        if outcome == "rotated" {
            crate::crash_point("rotate-after-change");
        }
        Ok(commit(
            self.state,
            &self.target.name,
            self.sealed,
            self.actor,
            outcome,
        )
        .await)
    }

    /// After a failed or interrupted change: finds out which recorded secret the target has
    /// by connecting with each. The current one is tried first, since a failed change
    /// restores it; it is given up (`may_abandon`) only when no other process can still be
    /// applying the next one.
    async fn settle(&self, may_abandon: bool) -> Result<Settled, ApiError> {
        let name = self.target.name.as_str();
        match self.provider.check_admin(self.access(self.current)).await {
            Ok(()) if may_abandon => {
                let event = rotation_event(name, self.actor, "kept_previous");
                return match self
                    .state
                    .store
                    .abandon_root_rotation(name, self.sealed, event)
                    .await
                {
                    // `NotFound`: another process resolved it meanwhile.
                    Ok(()) | Err(StoreError::NotFound { .. }) => Ok(Settled::Abandoned),
                    Err(e) => Err(e.into()),
                };
            }
            Ok(()) => return Ok(Settled::Pending),
            Err(_) => {}
        }
        if self
            .provider
            .check_admin(self.access(Some(self.next)))
            .await
            .is_ok()
        {
            commit(
                self.state,
                name,
                self.sealed,
                self.actor,
                "completed_after_interruption",
            )
            .await?;
            return Ok(Settled::Committed);
        }
        Ok(Settled::Pending)
    }
}

/// Rotates `target`'s admin credential to one only Mayfly knows, recording it before the
/// target changes (see the module docs).
pub async fn rotate_root(
    state: &AppState,
    target: &Target,
    provider: &dyn Provider,
    actor: &str,
) -> Result<(), ApiError> {
    let name = target.name.as_str();
    let current = admin_secret(state, name).await?;
    let next = provider.plan_root_rotation(TargetAccess {
        target,
        admin: current.as_ref(),
    })?;
    let sealed = seal_admin(state, name, &next)?;
    state.store.begin_root_rotation(name, &sealed).await?;
    crate::crash_point("rotate-after-record");
    let rotation = Rotation {
        state,
        target,
        provider,
        current: current.as_ref(),
        next: &next,
        sealed: &sealed,
        actor,
    };
    let e = match rotation.apply("rotated").await {
        Ok(committed) => return committed,
        Err(e) => e,
    };
    // The provider put the old password back if it could; which one the target has is
    // settled by connecting, not assumed.
    match rotation.settle(true).await {
        Ok(Settled::Committed) => Ok(()),
        Ok(Settled::Abandoned) => Err(e.into()),
        Ok(Settled::Pending) | Err(_) => {
            tracing::error!(target = %name, "root rotation failed and neither admin secret is confirmed now; both stay on record and are retried in the background");
            Err(e.into())
        }
    }
}

/// Settles the rotations a crash (or a failure with the target down) left recorded: the
/// change is completed with the current secret if it still connects (setting a password
/// the target already has is harmless), else the next secret is kept if it connects,
/// else both stay on record. At start-up (`from_start` is `None`) every record is taken
/// and the ones left unsettled are returned; later passes take those, and any other record
/// older than `grace`, which no other process can still be applying. A current secret is
/// given up only for records older than `grace`.
pub async fn resolve_root_rotations(
    state: &AppState,
    grace: Duration,
    from_start: Option<&BTreeSet<Vec<u8>>>,
) -> BTreeSet<Vec<u8>> {
    let mut left = BTreeSet::new();
    let pending = match state.store.pending_root_rotations().await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list interrupted root rotations");
            return from_start.cloned().unwrap_or_default();
        }
    };
    let cutoff = mayfly_core::now() - time::Duration::seconds_f64(grace.as_secs_f64());
    for record in pending {
        let old = record.started_at < cutoff;
        let eligible = from_start.is_none_or(|seen| old || seen.contains(&record.sealed));
        if !eligible {
            continue;
        }
        let name = record.target.as_str();
        match resolve_one(state, name, &record.sealed, old).await {
            Ok(Settled::Pending) => {
                tracing::warn!(target = %name, "an interrupted root rotation cannot be settled yet (target down?); both secrets stay on record");
                left.insert(record.sealed);
            }
            Ok(outcome) => {
                tracing::info!(target = %name, ?outcome, "settled an interrupted root rotation")
            }
            Err(e) => {
                tracing::warn!(target = %name, error = %e, "cannot settle an interrupted root rotation yet; both secrets stay on record");
                left.insert(record.sealed);
            }
        }
    }
    left
}

async fn resolve_one(
    state: &AppState,
    name: &str,
    sealed: &[u8],
    may_abandon: bool,
) -> Result<Settled, ApiError> {
    let target = state
        .store
        .get_target(name)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("target {name:?} is gone")))?;
    let provider = state
        .providers
        .get(&target.kind)
        .cloned()
        .ok_or_else(|| ApiError::Internal(format!("no provider for {:?}", target.kind)))?;
    let current = admin_secret(state, name).await?;
    let next = open_admin(state, name, sealed)?;
    let rotation = Rotation {
        state,
        target: &target,
        provider: provider.as_ref(),
        current: current.as_ref(),
        next: &next,
        sealed,
        actor: "system:reconcile",
    };
    match rotation.apply("completed_after_interruption").await {
        Ok(committed) => committed.map(|()| Settled::Committed),
        Err(_) => rotation.settle(may_abandon).await,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use mayfly_core::duration::Ttl;
    use mayfly_core::model::{GrantState, Identity, IdentityKind};
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_must_name_what_was_planned() {
        let plan = json!({"username": "mf_a"});
        assert!(check_answer(Some("username"), &plan, &json!({"username": "mf_a"})).is_ok());
        assert!(check_answer(Some("username"), &plan, &json!({"username": "mf_b"})).is_err());
        assert!(check_answer(Some("username"), &plan, &json!({})).is_err());
        assert!(check_answer(Some("username"), &json!(null), &json!({"username": "x"})).is_err());
        // Self-contained kinds plan nothing on a target.
        assert!(check_answer(None, &json!(null), &json!({"anything": 1})).is_ok());
    }

    /// Issues under a name of its own instead of the planned one, and records revocations.
    struct Wayward {
        revoked: StdMutex<Vec<serde_json::Value>>,
    }

    #[async_trait::async_trait]
    impl Provider for Wayward {
        fn kind(&self) -> &'static str {
            "wayward"
        }
        fn external(&self) -> bool {
            true
        }
        fn live_key(&self) -> Option<&'static str> {
            Some("username")
        }
        fn validate_target(
            &self,
            _: &Target,
            _: Option<&SecretString>,
        ) -> Result<(), ProviderError> {
            Ok(())
        }
        fn plan(&self, _: &IssueRequest<'_>) -> Result<serde_json::Value, ProviderError> {
            Ok(json!({"username": "planned"}))
        }
        async fn issue(&self, _: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError> {
            Ok(IssuedCredential {
                secrets: Default::default(),
                public: Default::default(),
                provider_state: json!({"username": "improvised"}),
            })
        }
        async fn renew(
            &self,
            _: &Lease,
            _: &Grant,
            _: TargetAccess<'_>,
            _: OffsetDateTime,
        ) -> Result<Option<IssuedCredential>, ProviderError> {
            Ok(None)
        }
        async fn revoke(&self, lease: &Lease, _: TargetAccess<'_>) -> Result<(), ProviderError> {
            self.revoked
                .lock()
                .unwrap()
                .push(lease.provider_state.clone());
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_unplanned_credential_is_removed_and_the_issue_fails() {
        let wayward = Arc::new(Wayward {
            revoked: StdMutex::new(Vec::new()),
        });
        let guarded = Guarded::new(
            wayward.clone(),
            Duration::from_secs(5),
            Arc::new(Metrics::new()),
        );
        let now = mayfly_core::now();
        let target = Target {
            name: "db".into(),
            kind: "wayward".into(),
            actions: vec!["read".into()],
            default_ttl: Ttl::from_secs(60),
            max_ttl: Ttl::from_secs(600),
            allow: vec!["*".into()],
            settings: json!({}),
            created_at: now,
        };
        let identity = Identity {
            id: "svc".into(),
            kind: IdentityKind::Service,
            owner: "team".into(),
            purpose: "tests".into(),
            expires_at: None,
            labels: Default::default(),
            enabled: true,
            created_at: now,
        };
        let grant = Grant {
            id: uuid::Uuid::new_v4(),
            identity: "svc".into(),
            owner: "team".into(),
            target: "db".into(),
            action: "read".into(),
            purpose: "p".into(),
            task: "t".into(),
            requested_ttl: Ttl::from_secs(60),
            granted_ttl: Some(Ttl::from_secs(60)),
            context: json!({}),
            state: GrantState::Approved,
            revocation_reason: None,
            decision: json!({}),
            created_at: now,
            updated_at: now,
        };
        let plan = json!({"username": "planned"});
        let request = IssueRequest {
            grant: &grant,
            identity: &identity,
            target: TargetAccess {
                target: &target,
                admin: None,
            },
            lease_id: uuid::Uuid::new_v4(),
            issued_at: now,
            expires_at: now + time::Duration::minutes(1),
            plan: &plan,
        };
        let err = guarded.issue(request).await.unwrap_err();
        assert!(err.to_string().contains("improvised"), "{err}");
        assert_eq!(
            *wayward.revoked.lock().unwrap(),
            vec![json!({"username": "improvised"})],
            "what was made is removed by its own name"
        );
    }
}
