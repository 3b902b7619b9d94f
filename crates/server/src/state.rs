//! Shared state handed to every handler: the adapters behind their traits.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use mayfly_core::duration::Ttl;
use mayfly_core::policy::PolicyEngine;
use mayfly_core::provider::Provider;
use mayfly_core::store::Store;
use mayfly_identity::AuthChain;
use tokio::sync::Notify;

use crate::keys::Keyring;
use crate::metrics::Metrics;

/// Built-in credential providers, by kind. A new kind is one `register` line in
/// [`crate::Server::prepare`].
#[derive(Default)]
pub struct Providers(BTreeMap<&'static str, Arc<dyn Provider>>);

impl Providers {
    pub fn register(&mut self, provider: Arc<dyn Provider>) {
        self.0.insert(provider.kind(), provider);
    }
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Provider>> {
        self.0.get(kind)
    }
    pub fn kinds(&self) -> Vec<&'static str> {
        self.0.keys().copied().collect()
    }
}

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub auth: AuthChain,
    pub policy: Arc<dyn PolicyEngine>,
    /// The Cedar engine when policies come from a directory (for hot reload and checks).
    pub cedar: Option<Arc<mayfly_policy::ReloadingEngine>>,
    /// Verifies X.509-SVID client certificates presented over mutual TLS.
    pub x509: Option<mayfly_identity::X509SvidVerifier>,
    pub providers: Providers,
    pub keys: Arc<Keyring>,
    /// Signed checkpoints of the audit chain, with their own key (never `keys`).
    pub checkpoints: Arc<crate::checkpoint::Checkpoints>,
    pub metrics: Arc<Metrics>,
    /// Key-encryption key, for sealing and unsealing target admin secrets.
    pub master: Arc<mayfly_core::seal::MasterKey>,
    /// Failed authentication per source: rate limit and aggregated audit.
    pub auth_failures: crate::auth_failures::AuthFailures,
    /// Woken when leases enter `revoking`, so the revocation worker starts at once.
    pub revoker_wake: Notify,
    /// How long a `creating` lease may stay so before it is presumed orphaned by a crash
    /// (another replica may still be creating it until then).
    pub creating_grace: std::time::Duration,
    /// `iss` of issued tokens and base of discovery URLs.
    pub issuer: String,
    /// Hard cap on any token's lifetime; also how long retired keys stay published.
    pub token_max_ttl: Ttl,
    /// Woken when a lease is issued that may expire before the scheduler's next wake-up.
    pub expiry_wake: Notify,
    /// When the expiry scheduler will next wake (unix ms), so a grant wakes it only if
    /// its lease expires sooner; waking it on every grant would cost two queries each.
    pub next_expiry_wake_ms: AtomicI64,
    /// DPoP proof checks (RFC 9449): the jti replay cache and the server-nonce key.
    pub dpop: crate::dpop::DpopVerifier,
}

impl Inner {
    /// Counts ended leases and starts the revocation worker when some must still be
    /// removed from their targets.
    pub fn record_revocation(&self, reason: &str, outcome: mayfly_core::store::RevokeOutcome) {
        self.metrics.revoked(reason, outcome.total());
        if outcome.revoking > 0 {
            self.revoker_wake.notify_one();
        }
    }

    /// Tells the expiry scheduler about a new lease expiry.
    pub fn lease_expires_at(&self, at: mayfly_core::OffsetDateTime) {
        if mayfly_core::to_unix_ms(at) < self.next_expiry_wake_ms.load(Ordering::Relaxed) {
            self.expiry_wake.notify_one();
        }
    }
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
