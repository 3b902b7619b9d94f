//! Prometheus metrics (text exposition at `/metrics`), and the middleware that counts and
//! times every HTTP request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A grant's target and outcome. Targets are the operator's own (bounded); a rejected
/// request's target is not labelled, because the caller chose that name and it may not
/// exist: labelling it would let anyone grow the metric set without bound.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrantLabel {
    pub target: String,
    pub outcome: String,
}

/// An HTTP request's route (the matched path template, `/v1/grants/{id}`, never the path
/// itself, so ids do not multiply the series), method and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    pub method: String,
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
}

/// The `route` of a request that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// The `target` of a grant request refused before it named a known target.
pub const UNLABELLED_TARGET: &str = "-";

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

/// A configured webhook's name (bounded: names come from the configuration only).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    pub webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

pub struct Metrics {
    registry: Registry,
    pub grants: Family<GrantLabel, Counter>,
    pub http_requests: Family<HttpLabel, Counter>,
    pub http_duration: Family<RouteLabel, Histogram>,
    pub revocations: Family<ReasonLabel, Counter>,
    pub auth_failures: Family<CodeLabel, Counter>,
    pub active_leases: Gauge,
    pub revoking_leases: Gauge,
    pub audit_entries: Gauge,
    /// Break-glass uses nobody has reviewed within 24 hours (measured on each scrape).
    pub break_glass_overdue: Gauge,
    /// Credentials contained because their target refused to remove them.
    pub containments: Counter,
    /// Seconds from a lease's expiry to its revocation by the scheduler.
    pub expiry_lag: Histogram,
    pub store_up: Gauge,
    pub provider_errors: Family<ProviderLabel, Counter>,
    pub revoke_retries: Counter,
    /// Connections closed at once because the connection limit was reached.
    pub connections_refused: Counter,
    pub connection_timeouts: Family<PhaseLabel, Counter>,
    /// Failed webhook delivery attempts.
    pub webhook_failures: Family<WebhookLabel, Counter>,
    /// Audit entries a webhook has yet to go through.
    pub webhook_lag: Family<WebhookLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mayfly");
        let grants = Family::<GrantLabel, Counter>::default();
        registry.register(
            "grants",
            "Grant requests by target and outcome",
            grants.clone(),
        );
        let http_requests = Family::<HttpLabel, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's headers to its response's, by method and route",
            http_duration.clone(),
        );
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
        let containments = Counter::default();
        registry.register(
            "containments",
            "Credentials made unusable because their target refused to remove them",
            containments.clone(),
        );
        let break_glass_overdue = Gauge::default();
        registry.register(
            "break_glass_unreviewed_overdue",
            "Break-glass uses whose review has been open for more than 24 hours",
            break_glass_overdue.clone(),
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
        let webhook_failures = Family::<WebhookLabel, Counter>::default();
        registry.register(
            "webhook_failures",
            "Failed webhook delivery attempts, by webhook (each is retried)",
            webhook_failures.clone(),
        );
        let webhook_lag = Family::<WebhookLabel, Gauge>::default();
        registry.register(
            "webhook_lag_events",
            "Audit entries after a webhook's cursor, not yet delivered or passed over",
            webhook_lag.clone(),
        );
        Metrics {
            webhook_failures,
            webhook_lag,
            http_requests,
            http_duration,
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
            break_glass_overdue,
            containments,
            expiry_lag,
            store_up,
        }
    }

    /// Counts a grant request's outcome; `target` is [`UNLABELLED_TARGET`] for a request
    /// rejected before its target was known to exist.
    pub fn grant(&self, target: &str, outcome: &str) {
        self.grants
            .get_or_create(&GrantLabel {
                target: target.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabel {
                method: method.into(),
                route: route.into(),
                status: status.to_string(),
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabel {
                method: method.into(),
                route: route.into(),
            })
            .observe(seconds);
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

    pub fn webhook_failure(&self, webhook: &str) {
        self.webhook_failures
            .get_or_create(&WebhookLabel {
                webhook: webhook.into(),
            })
            .inc();
    }

    pub fn webhook_lag(&self, webhook: &str, entries: u64) {
        self.webhook_lag
            .get_or_create(&WebhookLabel {
                webhook: webhook.into(),
            })
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Counts and times each request by its route template and final status (the outermost
/// layer, so problem+json rewrites and limits are what is counted).
pub async fn track_http(
    State(state): State<crate::state::AppState>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let response = next.run(req).await;
    state.metrics.http_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}
