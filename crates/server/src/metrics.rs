//! Prometheus metrics (text exposition at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub kind: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

pub struct Metrics {
    registry: Registry,
    pub grants: Family<OutcomeLabel, Counter>,
    pub revocations: Family<ReasonLabel, Counter>,
    pub auth_failures: Family<CodeLabel, Counter>,
    pub active_leases: Gauge,
    pub revoking_leases: Gauge,
    pub audit_entries: Gauge,
    /// Seconds from a lease's expiry to its revocation by the scheduler.
    pub expiry_lag: Histogram,
    pub store_up: Gauge,
    pub provider_errors: Family<ProviderLabel, Counter>,
    pub revoke_retries: Counter,
    /// Connections closed at once because the connection limit was reached.
    pub connections_refused: Counter,
    pub connection_timeouts: Family<PhaseLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mayfly");
        let grants = Family::<OutcomeLabel, Counter>::default();
        registry.register("grants", "Grant requests by outcome", grants.clone());
        let revocations = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "revocations",
            "Leases ended, by reason",
            revocations.clone(),
        );
        let auth_failures = Family::<CodeLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Rejected credentials, by reason code",
            auth_failures.clone(),
        );
        let active_leases = Gauge::default();
        registry.register(
            "active_leases",
            "Leases currently active",
            active_leases.clone(),
        );
        let revoking_leases = Gauge::default();
        registry.register(
            "revoking_leases",
            "Leases whose revocation on the target is still pending",
            revoking_leases.clone(),
        );
        let audit_entries = Gauge::default();
        registry.register(
            "audit_entries",
            "Entries in the audit chain",
            audit_entries.clone(),
        );
        let expiry_lag = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "expiry_lag_seconds",
            "Delay from lease expiry to its revocation",
            expiry_lag.clone(),
        );
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 when the store answered the last check (each scrape and each /healthz)",
            store_up.clone(),
        );
        let provider_errors = Family::<ProviderLabel, Counter>::default();
        registry.register(
            "provider_errors",
            "Failed credential provider calls, by kind and operation",
            provider_errors.clone(),
        );
        let revoke_retries = Counter::default();
        registry.register(
            "revoke_retries",
            "Revocation attempts that failed and were rescheduled",
            revoke_retries.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed unserved because the connection limit was reached",
            connections_refused.clone(),
        );
        let connection_timeouts = Family::<PhaseLabel, Counter>::default();
        registry.register(
            "connection_timeouts",
            "Connections closed by a deadline, by phase (handshake, header, idle)",
            connection_timeouts.clone(),
        );
        Metrics {
            connections_refused,
            connection_timeouts,
            provider_errors,
            revoke_retries,
            registry,
            grants,
            revocations,
            auth_failures,
            active_leases,
            revoking_leases,
            audit_entries,
            expiry_lag,
            store_up,
        }
    }

    pub fn grant(&self, outcome: &str) {
        self.grants
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn revoked(&self, reason: &str, n: u64) {
        self.revocations
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    pub fn provider_error(&self, kind: &str, op: &str) {
        self.provider_errors
            .get_or_create(&ProviderLabel {
                kind: kind.into(),
                op: op.into(),
            })
            .inc();
    }

    pub fn connection_timeout(&self, phase: &str) {
        self.connection_timeouts
            .get_or_create(&PhaseLabel {
                phase: phase.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
