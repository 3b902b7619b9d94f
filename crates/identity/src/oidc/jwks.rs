//! Issuer key sets: parsing JWKS documents and caching them per issuer.
//!
//! Caching rules, per issuer:
//! - a loaded key set is fresh for the response's `Cache-Control: max-age` (5 minutes
//!   when absent; `no-cache`/`no-store` count as 0), clamped to [30 s, 24 h]; a file
//!   source is fresh for 5 minutes;
//! - at most one fetch is in flight per issuer (a tokio mutex); requests that find it
//!   busy either use the keys they have (stale but known key) or wait for its result
//!   (unknown key, nothing loaded) instead of starting their own;
//! - after any fetch attempt, the next may start only 30 s later (5 s while no keys were
//!   ever loaded), whatever the reason — so tokens with made-up `kid`s cannot make Mayfly
//!   hammer an issuer, and an issuer outage costs one timed-out request per 30 s;
//! - a failed fetch keeps the previous keys in use; the failure is logged.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;

use super::config::{check_fetch_url, JwksSource};

/// Larger JWKS or discovery documents are refused: real ones are a few KiB, and an
/// unbounded read would let a misbehaving endpoint exhaust memory.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// How long fetched keys are trusted before revalidation, and how often fetches may run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// Freshness when the response says nothing (and for files).
    pub default_max_age: Duration,
    pub min_max_age: Duration,
    pub max_max_age: Duration,
    /// Minimum time between two fetch attempts once keys are loaded.
    pub min_refetch_interval: Duration,
    /// Minimum time between attempts while no keys were ever loaded (shorter, so a
    /// transient failure at start-up does not lock workloads out for long).
    pub retry_without_keys: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            default_max_age: Duration::from_secs(5 * 60),
            min_max_age: Duration::from_secs(30),
            max_max_age: Duration::from_secs(24 * 3600),
            min_refetch_interval: Duration::from_secs(30),
            retry_without_keys: Duration::from_secs(5),
        }
    }
}

/// The key types Mayfly verifies with; each fits exactly the algorithms in
/// [`KeyKind::fits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Checked before verifying: jsonwebtoken's `crypto::verify` assumes the key matches
    /// the algorithm (a mismatched pair can even hit an `unreachable!`), and a token must
    /// not be able to pick how a key is interpreted.
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::EcP256 => alg == Algorithm::ES256,
            KeyKind::EcP384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// One verification key from a JWKS.
pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<String>,
    pub key: DecodingKey,
}

impl VerifyKey {
    pub(crate) fn usable_for(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.as_deref().is_none_or(|a| a == alg_name(alg))
    }
}

pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// The usable keys of one JWKS document.
pub(crate) struct KeySet {
    pub keys: Vec<VerifyKey>,
}

/// What a key lookup found.
pub(crate) enum KeyMatch<'a> {
    Found(&'a VerifyKey),
    /// Keys with that id exist, but none for this algorithm.
    WrongAlgorithm,
    Unknown,
}

impl KeySet {
    /// Finds the key for a token header. Without a `kid`, a key is chosen only when the
    /// set holds exactly one key for the algorithm (some issuers omit `kid` and publish a
    /// single key); guessing among several would turn a bad signature into a search.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> KeyMatch<'_> {
        match kid {
            Some(kid) => {
                let mut with_kid = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                if with_kid.peek().is_none() {
                    return KeyMatch::Unknown;
                }
                match with_kid.find(|k| k.usable_for(alg)) {
                    Some(k) => KeyMatch::Found(k),
                    None => KeyMatch::WrongAlgorithm,
                }
            }
            None => {
                let mut usable = self.keys.iter().filter(|k| k.usable_for(alg));
                match (usable.next(), usable.next()) {
                    (Some(k), None) => KeyMatch::Found(k),
                    _ => KeyMatch::Unknown,
                }
            }
        }
    }

    fn has(&self, kid: Option<&str>) -> bool {
        match kid {
            Some(kid) => self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)),
            None => !self.keys.is_empty(),
        }
    }
}

/// Parses a JWKS document. Keys Mayfly cannot or must not use (encryption keys,
/// symmetric `oct` keys, unsupported curves, malformed entries) are skipped so one odd
/// entry does not disable an issuer; a document with no usable key is an error, so that a
/// broken response never replaces working keys.
pub(crate) fn parse_jwks(bytes: &[u8]) -> Result<KeySet, String> {
    parse_jwks_for_use(bytes, |u| u.is_none_or(|u| u == "sig"))
}

/// [`parse_jwks`] with the caller deciding which JWK `use` values are signature keys for
/// it (SPIFFE bundles mark JWT-SVID authorities `"jwt-svid"` and hold X.509 authorities,
/// `"x509-svid"`, in the same document).
pub(crate) fn parse_jwks_for_use(
    bytes: &[u8],
    accept_use: fn(Option<&str>) -> bool,
) -> Result<KeySet, String> {
    let doc: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no \"keys\" array")?;
    let mut keys = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match parse_jwk(entry, accept_use) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(reason) => tracing::debug!(index = i, %reason, "skipping JWKS entry"),
        }
    }
    if keys.is_empty() {
        return Err("JWKS contains no usable signature verification key".into());
    }
    Ok(KeySet { keys })
}

/// `Ok(None)`: a well-formed key that is not for signatures.
fn parse_jwk(
    jwk: &Value,
    accept_use: fn(Option<&str>) -> bool,
) -> Result<Option<VerifyKey>, String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let required = |name: &str| text(name).ok_or_else(|| format!("missing {name:?}"));
    if !accept_use(text("use")) {
        return Ok(None);
    }
    let kty = required("kty")?;
    let (kind, key) = match kty {
        "RSA" => (
            KeyKind::Rsa,
            DecodingKey::from_rsa_components(required("n")?, required("e")?)
                .map_err(|e| format!("bad RSA key: {e}"))?,
        ),
        "EC" => {
            let kind = match required("crv")? {
                "P-256" => KeyKind::EcP256,
                "P-384" => KeyKind::EcP384,
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let (x, y) = (required("x")?, required("y")?);
            // Coordinates must be exactly the curve's size; jsonwebtoken would otherwise
            // build a malformed point that only fails later, per request.
            let size = if kind == KeyKind::EcP256 { 32 } else { 48 };
            for c in [x, y] {
                let decoded = URL_SAFE_NO_PAD
                    .decode(c)
                    .map_err(|_| "EC coordinate is not base64url".to_string())?;
                if decoded.len() != size {
                    return Err("EC coordinate has the wrong length".into());
                }
            }
            (
                kind,
                DecodingKey::from_ec_components(x, y).map_err(|e| format!("bad EC key: {e}"))?,
            )
        }
        "OKP" => {
            if required("crv")? != "Ed25519" {
                return Err("unsupported OKP curve".into());
            }
            let x = required("x")?;
            let decoded = URL_SAFE_NO_PAD
                .decode(x)
                .map_err(|_| "Ed25519 key is not base64url".to_string())?;
            if decoded.len() != 32 {
                return Err("Ed25519 key has the wrong length".into());
            }
            (
                KeyKind::Ed25519,
                DecodingKey::from_ed_components(x).map_err(|e| format!("bad Ed25519 key: {e}"))?,
            )
        }
        // Symmetric keys are never trusted (see the HMAC ban in the config).
        "oct" => return Ok(None),
        other => return Err(format!("unsupported key type {other:?}")),
    };
    Ok(Some(VerifyKey {
        kid: text("kid").map(str::to_owned),
        kind,
        alg: text("alg").map(str::to_owned),
        key,
    }))
}

/// Freshness from a `Cache-Control` header value, clamped to the configured bounds.
pub(crate) fn max_age(cache_control: Option<&str>, timing: &Timing) -> Duration {
    let mut age = timing.default_max_age;
    if let Some(value) = cache_control {
        for directive in value.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                age = Duration::ZERO;
                break;
            }
            if let Some(secs) = lower.strip_prefix("max-age=") {
                if let Ok(secs) = secs.trim_matches('"').parse::<u64>() {
                    age = Duration::from_secs(secs);
                }
            }
        }
    }
    age.clamp(timing.min_max_age, timing.max_max_age)
}

#[derive(Default)]
struct CacheState {
    keys: Option<Arc<KeySet>>,
    fresh_until: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Counts fetch attempts, so a waiter can tell that someone else fetched meanwhile.
    attempts: u64,
    last_error: Option<String>,
}

/// Why keys could not be produced for a lookup.
#[derive(Debug)]
pub(crate) enum KeysError {
    /// Nothing was ever loaded; carries the last failure.
    Unavailable(String),
}

/// The key cache of one issuer.
pub(crate) struct JwksCache {
    issuer: String,
    source: JwksSource,
    http: reqwest::Client,
    pub(crate) timing: Timing,
    state: RwLock<CacheState>,
    /// Held for the duration of a fetch: at most one per issuer.
    refresh: Mutex<()>,
    #[cfg(test)]
    pub(crate) fetches: std::sync::atomic::AtomicU64,
}

impl JwksCache {
    pub(crate) fn new(issuer: String, source: JwksSource, http: reqwest::Client) -> Self {
        JwksCache {
            issuer,
            source,
            http,
            timing: Timing::default(),
            state: RwLock::new(CacheState::default()),
            refresh: Mutex::new(()),
            #[cfg(test)]
            fetches: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The key set to verify a token with `kid` against, refreshing as the module rules
    /// allow. The returned set may still lack the kid (the caller reports `UnknownKey`).
    pub(crate) async fn keys_for(&self, kid: Option<&str>) -> Result<Arc<KeySet>, KeysError> {
        let (keys, fresh, seen_attempts) = {
            let s = self.state.read().await;
            let fresh = s.fresh_until.is_some_and(|f| Instant::now() < f);
            (s.keys.clone(), fresh, s.attempts)
        };
        if let Some(keys) = keys.filter(|k| k.has(kid)) {
            if fresh {
                return Ok(keys);
            }
            // Stale but the key is there: revalidate unless a fetch is already running, in
            // which case the current keys serve this request rather than making it wait.
            if let Ok(guard) = self.refresh.try_lock() {
                self.refresh_locked(seen_attempts).await;
                drop(guard);
            }
            return Ok(self.current().await.unwrap_or(keys));
        }
        // Unknown kid, or nothing loaded: this request can only succeed with new keys, so
        // it waits for the running fetch (or runs one, if the rate limit allows).
        {
            let _guard = self.refresh.lock().await;
            self.refresh_locked(seen_attempts).await;
        }
        let s = self.state.read().await;
        match &s.keys {
            Some(keys) => Ok(keys.clone()),
            None => Err(KeysError::Unavailable(
                s.last_error
                    .clone()
                    .unwrap_or_else(|| "keys not loaded yet".into()),
            )),
        }
    }

    /// Whether the current, fresh key set still holds `kid` (for the verification cache,
    /// which must not outlive a key's removal).
    pub(crate) async fn fresh_and_has(&self, kid: Option<&str>) -> bool {
        let s = self.state.read().await;
        s.fresh_until.is_some_and(|f| Instant::now() < f)
            && s.keys.as_ref().is_some_and(|k| k.has(kid))
    }

    async fn current(&self) -> Option<Arc<KeySet>> {
        self.state.read().await.keys.clone()
    }

    /// Fetches now unless another attempt happened since `seen_attempts` or the rate limit
    /// forbids it. Must be called with `self.refresh` held.
    async fn refresh_locked(&self, seen_attempts: u64) {
        {
            let s = self.state.read().await;
            if s.attempts != seen_attempts {
                return;
            }
            let interval = if s.keys.is_some() {
                self.timing.min_refetch_interval
            } else {
                self.timing.retry_without_keys
            };
            if s.last_attempt.is_some_and(|t| t.elapsed() < interval) {
                return;
            }
        }
        let started = Instant::now();
        #[cfg(test)]
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let result = self.fetch().await;
        let mut s = self.state.write().await;
        s.attempts += 1;
        s.last_attempt = Some(started);
        match result {
            Ok((keys, ttl)) => {
                tracing::debug!(issuer = %self.issuer, keys = keys.keys.len(), ttl_secs = ttl.as_secs(), "loaded issuer keys");
                s.keys = Some(Arc::new(keys));
                s.fresh_until = Some(started + ttl);
                s.last_error = None;
            }
            Err(e) => {
                tracing::warn!(
                    issuer = %self.issuer,
                    error = %e,
                    keeping_previous_keys = s.keys.is_some(),
                    "could not refresh issuer keys"
                );
                s.last_error = Some(e);
            }
        }
    }

    /// Loads the key set and how long it stays fresh.
    async fn fetch(&self) -> Result<(KeySet, Duration), String> {
        match &self.source {
            JwksSource::File(path) => {
                let bytes = read_file_limited(path).await?;
                Ok((parse_jwks(&bytes)?, self.timing.default_max_age))
            }
            JwksSource::Url(url) => self.fetch_jwks_url(url).await,
            JwksSource::Discovery => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.issuer.trim_end_matches('/')
                );
                let (body, _) = self.get(&url).await?;
                let doc: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("discovery document is not valid JSON: {e}"))?;
                // OIDC Discovery §4.3: the document must name the issuer it was fetched
                // for, or its keys are some other issuer's.
                if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
                    return Err("discovery document names a different issuer".into());
                }
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or("discovery document has no jwks_uri")?;
                check_fetch_url(jwks_uri)?;
                self.fetch_jwks_url(jwks_uri).await
            }
        }
    }

    async fn fetch_jwks_url(&self, url: &str) -> Result<(KeySet, Duration), String> {
        let (body, cache_control) = self.get(url).await?;
        let ttl = max_age(cache_control.as_deref(), &self.timing);
        Ok((parse_jwks(&body)?, ttl))
    }

    /// GET with the client's timeout and a size limit; returns the body and the
    /// `Cache-Control` header.
    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<String>), String> {
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(format!("GET {url}: response too large"));
        }
        let cache_control = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: response too large"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, cache_control))
    }
}

async fn read_file_limited(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| format!("reading {shown}: {e}"))?;
    if meta.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(format!("{shown} is too large for a JWKS"));
    }
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("reading {shown}: {e}"))
}
