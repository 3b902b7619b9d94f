//! The guard layer's deadline: a target's own `timeout_seconds` is what its operator
//! allowed a provider call, so the configured `provider_timeout` applies only to targets
//! without one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::model::{Lease, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Ledger, Provider, ProviderError, ReconcileReport, Recorded,
    TargetAccess,
};
use mayfly_core::secret::SecretString;
use mayfly_server::metrics::Metrics;
use mayfly_server::providers::Guarded;
use serde_json::json;

/// A provider whose reconciliation takes `delay`, as a slow target would.
struct Slow {
    delay: Duration,
}

#[async_trait::async_trait]
impl Provider for Slow {
    fn kind(&self) -> &'static str {
        "slow"
    }
    fn external(&self) -> bool {
        true
    }
    fn validate_target(&self, _: &Target, _: Option<&SecretString>) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn issue(&self, _: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        Err(ProviderError::Failed("not used".into()))
    }
    async fn renew(
        &self,
        _: &Lease,
        _: &mayfly_core::model::Grant,
        _: TargetAccess<'_>,
        _: mayfly_core::OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError> {
        Err(ProviderError::Failed("not used".into()))
    }
    async fn revoke(&self, _: &Lease, _: TargetAccess<'_>) -> Result<(), ProviderError> {
        Err(ProviderError::Failed("not used".into()))
    }
    async fn reconcile(
        &self,
        _: TargetAccess<'_>,
        _: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        tokio::time::sleep(self.delay).await;
        Ok(ReconcileReport::default())
    }
}

struct NothingRecorded;

#[async_trait::async_trait]
impl Ledger for NothingRecorded {
    async fn recorded(&self, _: &[String]) -> Result<BTreeMap<String, Recorded>, ProviderError> {
        Ok(BTreeMap::new())
    }
}

fn target(settings: serde_json::Value) -> Target {
    Target {
        name: "db".into(),
        kind: "slow".into(),
        actions: vec!["read".into()],
        default_ttl: mayfly_core::duration::Ttl::from_secs(60),
        max_ttl: mayfly_core::duration::Ttl::from_secs(60),
        allow: vec![],
        settings,
        created_at: mayfly_core::now(),
    }
}

async fn reconcile(guarded: &Guarded, target: &Target) -> Result<ReconcileReport, ProviderError> {
    let access = TargetAccess {
        target,
        admin: None,
    };
    guarded.reconcile(access, &NothingRecorded).await
}

#[tokio::test]
async fn a_target_timeout_longer_than_the_configured_one_is_honoured() {
    let guarded = Guarded::new(
        Arc::new(Slow {
            delay: Duration::from_millis(1500),
        }),
        Duration::from_secs(1),
        Arc::new(Metrics::new()),
    );

    // The operator allowed this target 3 s a call: a 1.5 s call must finish.
    let patient = target(json!({"timeout_seconds": 3}));
    assert_eq!(
        reconcile(&guarded, &patient).await.unwrap(),
        ReconcileReport::default()
    );

    // Without its own timeout, the configured one (1 s) applies.
    let plain = target(json!({}));
    match reconcile(&guarded, &plain).await {
        Err(ProviderError::Unavailable(message)) => {
            assert!(message.contains("within 1s"), "{message}")
        }
        other => panic!("expected the configured deadline to end the call, got {other:?}"),
    }
}

#[tokio::test]
async fn a_target_timeout_shorter_than_the_configured_one_is_honoured() {
    let guarded = Guarded::new(
        Arc::new(Slow {
            delay: Duration::from_secs(5),
        }),
        Duration::from_secs(30),
        Arc::new(Metrics::new()),
    );
    let quick = target(json!({"timeout_seconds": 1}));
    let started = std::time::Instant::now();
    assert!(matches!(
        reconcile(&guarded, &quick).await,
        Err(ProviderError::Unavailable(_))
    ));
    // The target's second plus the margin that lets the provider report first.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
