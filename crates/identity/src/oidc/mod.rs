//! OIDC / JWT federation: workloads prove themselves with a token their platform issued
//! (GitHub Actions, GitLab CI, Kubernetes service-account tokens, any OIDC issuer), and
//! binding rules map the token's claims to a Mayfly identity.
//!
//! # Which bearers are this authenticator's
//!
//! - A bearer that is not JWT-shaped (three dot-separated base64url parts) is `NotMine`.
//! - A JWT whose `iss` is a configured issuer is verified here; every failure is a
//!   specific [`AuthRejection`].
//! - A JWT whose `iss` is not configured (or that has no `iss`) is
//!   `Rejected(UntrustedIssuer)` by default, which gives the caller the useful answer
//!   "your issuer is not trusted". When another authenticator later in the chain also
//!   accepts JWTs, build with [`OidcAuthenticator::pass_unknown_issuers`] so such tokens
//!   are `NotMine` instead and reach it.
//!
//! # Verification, in order
//!
//! 1. Header pre-checks, before any key is touched: `alg` must not be `none` or `HS*`
//!    (a verifier that accepts HMAC can be fooled into using a public key as the HMAC
//!    secret), must be in the issuer's `algorithms`, and `crit` must be absent; otherwise
//!    `AlgorithmNotAllowed` / `Malformed`. Header `jwk`, `jku`, `x5u` and `x5c` are
//!    ignored: keys come only from the configured JWKS.
//! 2. Key lookup by `kid` in the issuer's JWKS (cached per issuer, see below): unknown ->
//!    `UnknownKey`; nothing loadable -> `KeysUnavailable`; the key's type (and its `alg`,
//!    if the JWK pins one) must fit the token's `alg` -> else `AlgorithmNotAllowed`.
//! 3. Signature -> `BadSignature`.
//! 4. Claims, with the issuer's clock skew: `exp` required and `now < exp + skew`
//!    (`Expired`); `nbf` and `iat`, when present, must not be later than `now + skew`
//!    (`NotYetValid`); `aud` (string or array) must contain one of the configured
//!    audiences (`WrongAudience`, also when absent); `sub` and every `required_claims`
//!    entry must be present (`MissingClaim`).
//! 5. Rules in order, first match wins -> `Proven::Workload`; none -> `NoRuleMatched`.
//!
//! # Key caching
//!
//! Keys are cached per issuer for the JWKS response's `Cache-Control: max-age` (default
//! 5 minutes, clamped to 30 s – 24 h; files: 5 minutes). An unknown `kid` triggers a
//! refresh, but any two fetches of one issuer are at least 30 s apart and concurrent
//! requests share a single fetch, so made-up `kid`s cannot cause a refetch storm. A failed
//! refresh keeps the previous keys. Requests with a known key never wait for a refresh
//! someone else is running; the request that finds stale keys refreshes inline (bounded
//! by the 5 s HTTP timeout).
//!
//! A successfully verified token is remembered (by SHA-256, bounded) until its `exp` plus
//! skew, and only while the key that verified it is still in the fresh key set, so
//! presenting the same token again skips signature verification without ever extending
//! its validity.

pub(crate) mod claims;
pub mod config;
pub(crate) mod jwks;
mod verified;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::Algorithm;
use mayfly_core::auth::{
    AuthOutcome, AuthRejection, Authenticator, HumanClaims, Presented, Proven, WorkloadClaims,
};
use serde_json::{Map, Value};

pub use config::{HumanMapping, OidcConfigError, OidcIssuerConfig, OidcRule, MAX_CLOCK_SKEW_SECS};

use claims::Numeric;
use config::{is_hmac, IssuerSettings};
use jwks::{JwksCache, KeyMatch, KeysError};
use verified::{Verified, VerifiedCache};

/// Tokens longer than this are refused unread: real workload tokens are 1–2 KiB, and
/// every byte is base64-decoded and parsed before the signature is known to be good.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Timeout for every JWKS and discovery request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest issuer/algorithm text echoed back in a rejection; the token is attacker
/// controlled and the message goes into responses and logs.
const MAX_ECHO_CHARS: usize = 128;

struct Issuer {
    settings: IssuerSettings,
    jwks: JwksCache,
}

/// The OIDC / JWT workload authenticator. See the module docs for its behaviour.
pub struct OidcAuthenticator {
    issuers: Vec<Issuer>,
    pass_unknown_issuers: bool,
    verified: VerifiedCache,
}

impl std::fmt::Debug for OidcAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcAuthenticator")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| &i.settings.issuer)
                    .collect::<Vec<_>>(),
            )
            .field("pass_unknown_issuers", &self.pass_unknown_issuers)
            .finish()
    }
}

impl OidcAuthenticator {
    /// Checks every issuer config (see [`OidcIssuerConfig`]); nothing is fetched yet —
    /// keys load on first use, or call [`OidcAuthenticator::prefetch`] at start-up.
    pub fn new(
        configs: impl IntoIterator<Item = OidcIssuerConfig>,
    ) -> Result<Self, OidcConfigError> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            // Follow a few redirects, but never from https to plain http.
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= 3 {
                    attempt.error("too many redirects")
                } else if config::check_fetch_url(attempt.url().as_str()).is_err() {
                    attempt.error("redirect to a non-https URL")
                } else {
                    attempt.follow()
                }
            }))
            .user_agent(concat!("mayfly/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OidcConfigError {
                issuer: String::new(),
                reason: format!("cannot build the HTTP client: {e}"),
            })?;
        let mut issuers: Vec<Issuer> = Vec::new();
        for config in configs {
            let settings = config.validate()?;
            if issuers.iter().any(|i| i.settings.issuer == settings.issuer) {
                return Err(OidcConfigError {
                    issuer: settings.issuer,
                    reason: "configured more than once".into(),
                });
            }
            let jwks = JwksCache::new(
                settings.issuer.clone(),
                settings.source.clone(),
                http.clone(),
            );
            issuers.push(Issuer { settings, jwks });
        }
        Ok(OidcAuthenticator {
            issuers,
            pass_unknown_issuers: false,
            verified: VerifiedCache::new(verified::DEFAULT_CAPACITY),
        })
    }

    /// When set, JWTs from unconfigured issuers are `NotMine` (left for later
    /// authenticators) instead of `Rejected(UntrustedIssuer)`.
    pub fn pass_unknown_issuers(mut self, pass: bool) -> Self {
        self.pass_unknown_issuers = pass;
        self
    }

    /// The configured issuer URLs, in order.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.settings.issuer.as_str())
    }

    /// Loads every issuer's keys now (e.g. at start-up, to report misconfiguration early).
    /// Returns, per issuer, the number of usable keys or why none could be loaded.
    /// Failures are not fatal: loading is retried on use.
    pub async fn prefetch(&self) -> Vec<(String, Result<usize, String>)> {
        let mut out = Vec::new();
        for issuer in &self.issuers {
            let result = match issuer.jwks.keys_for(None).await {
                Ok(keys) => Ok(keys.keys.len()),
                Err(KeysError::Unavailable(e)) => Err(e),
            };
            out.push((issuer.settings.issuer.clone(), result));
        }
        out
    }

    async fn verify(&self, token: &str) -> AuthOutcome {
        let Some(jwt) = split_jwt(token) else {
            return AuthOutcome::NotMine;
        };
        let reject = AuthOutcome::Rejected;
        if token.len() > MAX_TOKEN_BYTES {
            return reject(AuthRejection::Malformed("token is too large".into()));
        }
        let Some(header) = decode_json_part(jwt.header) else {
            return reject(AuthRejection::Malformed(
                "JWT header is not base64url-encoded JSON".into(),
            ));
        };
        let Some(payload) = decode_json_part(jwt.payload) else {
            return reject(AuthRejection::Malformed(
                "JWT payload is not base64url-encoded JSON".into(),
            ));
        };

        let iss = payload.get("iss").and_then(Value::as_str);
        let found = iss.and_then(|iss| {
            self.issuers
                .iter()
                .enumerate()
                .find(|(_, i)| i.settings.issuer == iss)
        });
        let Some((index, issuer)) = found else {
            if self.pass_unknown_issuers {
                return AuthOutcome::NotMine;
            }
            return reject(match iss {
                Some(iss) => AuthRejection::UntrustedIssuer(echo(iss)),
                None => AuthRejection::MissingClaim("iss".into()),
            });
        };
        let settings = &issuer.settings;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();

        // Fast path: this exact token was verified before and nothing has changed since.
        let cache_key = VerifiedCache::key(token);
        if let Some(hit) = self.verified.get(&cache_key, now) {
            if hit.issuer == index && issuer.jwks.fresh_and_has(hit.kid.as_deref()).await {
                return AuthOutcome::Accepted(hit.claims);
            }
        }

        // 1. Header pre-checks.
        let alg = match check_algorithm(&header, &settings.algorithms) {
            Ok(alg) => alg,
            Err(rejection) => return reject(rejection),
        };
        if header.contains_key("crit") {
            return reject(AuthRejection::Malformed(
                "JWT header has critical extensions Mayfly does not understand".into(),
            ));
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => {
                return reject(AuthRejection::Malformed(
                    "JWT header kid is not a string".into(),
                ))
            }
        };

        // 2. Key.
        let keys = match issuer.jwks.keys_for(kid).await {
            Ok(keys) => keys,
            Err(KeysError::Unavailable(reason)) => {
                tracing::warn!(issuer = %settings.issuer, %reason, "no keys to verify a token");
                return reject(AuthRejection::KeysUnavailable(format!(
                    "keys for issuer {} could not be loaded",
                    settings.issuer
                )));
            }
        };
        let key = match keys.find(kid, alg) {
            KeyMatch::Found(key) => key,
            KeyMatch::WrongAlgorithm => {
                return reject(AuthRejection::AlgorithmNotAllowed(
                    jwks::alg_name(alg).into(),
                ))
            }
            KeyMatch::Unknown => {
                return reject(AuthRejection::UnknownKey(echo(kid.unwrap_or(""))));
            }
        };

        // 3. Signature. Only jsonwebtoken's raw primitive is used, with the algorithm and
        // key already checked to fit each other.
        match jsonwebtoken::crypto::verify(jwt.signature, jwt.signed.as_bytes(), &key.key, alg) {
            Ok(true) => {}
            Ok(false) | Err(_) => return reject(AuthRejection::BadSignature),
        }

        // 4. Claims.
        let skew = settings.clock_skew_secs;
        let exp = match claims::numeric_date(&payload, "exp") {
            Numeric::Secs(exp) => exp,
            Numeric::Absent => return reject(AuthRejection::MissingClaim("exp".into())),
            Numeric::Invalid => {
                return reject(AuthRejection::Malformed("exp is not a number".into()))
            }
        };
        let valid_until = exp.saturating_add(skew);
        if now >= valid_until {
            return reject(AuthRejection::Expired);
        }
        for name in ["nbf", "iat"] {
            match claims::numeric_date(&payload, name) {
                Numeric::Secs(t) if t > now.saturating_add(skew) => {
                    return reject(AuthRejection::NotYetValid)
                }
                Numeric::Invalid => {
                    return reject(AuthRejection::Malformed(format!("{name} is not a number")))
                }
                _ => {}
            }
        }
        if !audience_matches(payload.get("aud"), &settings.audiences) {
            return reject(AuthRejection::WrongAudience);
        }
        let Some(subject) = payload.get("sub").and_then(Value::as_str) else {
            return reject(AuthRejection::MissingClaim("sub".into()));
        };
        if let Some(missing) = settings
            .required_claims
            .iter()
            .find(|name| claims::lookup(&payload, name).is_none())
        {
            return reject(AuthRejection::MissingClaim(missing.clone()));
        }

        // 5. Rules; else, for an issuer of people, a person.
        let Some(rule) = settings
            .rules
            .iter()
            .find(|rule| claims::rule_matches(rule, &payload))
        else {
            let Some(humans) = &settings.humans else {
                tracing::debug!(issuer = %settings.issuer, subject, "no binding rule matched");
                return reject(AuthRejection::NoRuleMatched);
            };
            let Some(name) = claims::lookup(&payload, &humans.name_claim).and_then(Value::as_str)
            else {
                return reject(AuthRejection::MissingClaim(humans.name_claim.clone()));
            };
            let groups = match claims::lookup(&payload, &humans.groups_claim) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                Some(Value::String(one)) => vec![one.clone()],
                _ => Vec::new(),
            };
            let proven = Proven::Human(HumanClaims {
                name: name.to_string(),
                issuer: settings.issuer.clone(),
                subject: subject.to_owned(),
                groups,
                expires_at: Some(exp),
            });
            self.verified.insert(
                cache_key,
                Verified {
                    issuer: index,
                    kid: kid.map(str::to_owned),
                    claims: proven.clone(),
                    valid_until,
                },
                now,
            );
            return AuthOutcome::Accepted(proven);
        };
        let attributes: BTreeMap<String, Value> = settings
            .attributes
            .iter()
            .chain(&rule.attributes)
            .filter_map(|name| claims::lookup(&payload, name).map(|v| (name.clone(), v.clone())))
            .collect();
        let workload = WorkloadClaims {
            identity: rule.identity.clone(),
            method: "oidc".into(),
            issuer: settings.issuer.clone(),
            subject: subject.to_owned(),
            attributes,
            expires_at: Some(exp),
        };
        self.verified.insert(
            cache_key,
            Verified {
                issuer: index,
                kid: kid.map(str::to_owned),
                claims: Proven::Workload(workload.clone()),
                valid_until,
            },
            now,
        );
        AuthOutcome::Accepted(Proven::Workload(workload))
    }
}

#[async_trait]
impl Authenticator for OidcAuthenticator {
    fn name(&self) -> &'static str {
        "oidc"
    }

    async fn authenticate(&self, presented: &Presented<'_>) -> AuthOutcome {
        match presented.bearer {
            Some(token) => self.verify(token).await,
            None => AuthOutcome::NotMine,
        }
    }
}

/// The parts of a JWT in compact serialization.
pub(crate) struct JwtParts<'a> {
    pub(crate) header: &'a str,
    pub(crate) payload: &'a str,
    pub(crate) signature: &'a str,
    /// `header.payload`, the signed bytes.
    pub(crate) signed: &'a str,
}

/// Splits a JWT-shaped bearer; `None` when it is not one (so it is someone else's).
pub(crate) fn split_jwt(token: &str) -> Option<JwtParts<'_>> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || header.is_empty() || payload.is_empty() {
        return None;
    }
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !(b64url(header) && b64url(payload) && b64url(signature)) {
        return None;
    }
    Some(JwtParts {
        header,
        payload,
        signature,
        signed: &token[..header.len() + 1 + payload.len()],
    })
}

pub(crate) fn decode_json_part(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The header's algorithm, if this issuer may use it.
fn check_algorithm(
    header: &Map<String, Value>,
    allowed: &[Algorithm],
) -> Result<Algorithm, AuthRejection> {
    let Some(name) = header.get("alg").and_then(Value::as_str) else {
        return Err(AuthRejection::Malformed("JWT header has no alg".into()));
    };
    if name.eq_ignore_ascii_case("none") {
        return Err(AuthRejection::AlgorithmNotAllowed("none".into()));
    }
    let alg: Algorithm = name
        .parse()
        .map_err(|_| AuthRejection::AlgorithmNotAllowed(echo(name)))?;
    // Checked separately from the allow-list (which can never contain HMAC anyway), so
    // that the ban survives any future change to how the list is built.
    if is_hmac(alg) || !allowed.contains(&alg) {
        return Err(AuthRejection::AlgorithmNotAllowed(
            jwks::alg_name(alg).into(),
        ));
    }
    Ok(alg)
}

pub(crate) fn audience_matches(aud: Option<&Value>, accepted: &[String]) -> bool {
    let accepts = |v: &Value| v.as_str().is_some_and(|a| accepted.iter().any(|x| x == a));
    match aud {
        Some(Value::String(_)) => aud.is_some_and(accepts),
        Some(Value::Array(items)) => items.iter().any(accepts),
        _ => false,
    }
}

/// Token-supplied text, shortened for use in a rejection message.
pub(crate) fn echo(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ECHO_CHARS)
        .collect();
    if text.chars().count() > MAX_ECHO_CHARS {
        out.push('…');
    }
    out
}
