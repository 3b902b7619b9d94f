//! JWT-SVID bearer tokens (SPIFFE JWT-SVID specification), verified against the trust
//! domain's JWT bundle file. Configuration: see the [module docs](super).
//!
//! # Which bearers are this authenticator's
//!
//! A JWT-shaped bearer whose payload `sub` is a string starting with `spiffe://`. Every
//! other bearer — opaque tokens, OIDC tokens whose `sub` is not a SPIFFE ID — is
//! `NotMine`, so put this authenticator *before* the OIDC one in the chain (the OIDC
//! authenticator rejects unknown issuers by default).
//!
//! # Verification, in order
//!
//! 1. Header: `alg` one of RS256/384/512, ES256/384, PS256/384/512, EdDSA (`none` and
//!    `HS*` are `AlgorithmNotAllowed`: HMAC would let a public key serve as the secret);
//!    `typ`, if present, `JWT` or `JOSE`; no `crit`; `kid` required (the spec makes it
//!    mandatory, and choosing among keys without it would turn a forged signature into a
//!    search). Header `jwk`/`jku`/`x5c`/`x5u` are ignored: keys come only from the bundle.
//! 2. `sub` a valid SPIFFE ID (`Malformed`) of a configured trust domain with a
//!    `jwt_bundle_file` (`UntrustedIssuer` naming the trust domain).
//! 3. Key by `kid` in that trust domain's bundle (`UnknownKey`; `KeysUnavailable` if the
//!    bundle never loaded), of a type fitting `alg` (`AlgorithmNotAllowed`).
//! 4. Signature (`BadSignature`).
//! 5. `exp` required, `now < exp + skew` (`Expired`); `nbf`/`iat`, if present, not after
//!    `now + skew` (`NotYetValid`); `aud` required and containing a configured audience
//!    (`WrongAudience`).
//! 6. Rules, first match wins (`NoRuleMatched`) -> `Proven::Workload` with method
//!    `jwt-svid`, issuer = the trust domain, subject = the SPIFFE ID and attributes
//!    `spiffe_id` and `trust_domain`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::Algorithm;
use mayfly_core::auth::{
    AuthOutcome, AuthRejection, Authenticator, Presented, Proven, WorkloadClaims,
};
use serde_json::{Map, Value};

use super::bundle::{FileBundle, CHECK_INTERVAL};
use super::SpiffeTrustDomainConfig;
use super::{parse_spiffe_id, validate_all, DomainSettings, SpiffeConfigError};
use crate::oidc::claims::{numeric_date, Numeric};
use crate::oidc::jwks::{alg_name, parse_jwks_for_use, KeyMatch, KeySet};
use crate::oidc::{audience_matches, decode_json_part, echo, split_jwt, MAX_TOKEN_BYTES};

/// The algorithms the JWT-SVID specification allows (minus ES512, which jsonwebtoken
/// cannot verify), plus EdDSA.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

struct JwtDomain {
    settings: DomainSettings,
    bundle: FileBundle<KeySet>,
}

/// Verifies JWT-SVID bearer tokens. See the module docs for its behaviour.
pub struct JwtSvidAuthenticator {
    domains: Vec<JwtDomain>,
}

impl std::fmt::Debug for JwtSvidAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvidAuthenticator")
            .field(
                "trust_domains",
                &self
                    .domains
                    .iter()
                    .map(|d| &d.settings.trust_domain)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// SPIFFE bundles list JWT and X.509 authorities together; only the former sign tokens.
fn jwt_key_use(u: Option<&str>) -> bool {
    matches!(u, None | Some("jwt-svid") | Some("sig"))
}

fn parse_bundle(bytes: &[u8]) -> Result<KeySet, String> {
    parse_jwks_for_use(bytes, jwt_key_use)
}

impl JwtSvidAuthenticator {
    /// Checks every `[[auth.spiffe]]` entry; those with a `jwt_bundle_file` serve
    /// JWT-SVIDs (the others are X.509-only and ignored here). Fails when no entry has a
    /// `jwt_bundle_file`. Bundles load on first use, or call
    /// [`JwtSvidAuthenticator::load_bundles`] at start-up.
    pub fn new(
        configs: impl IntoIterator<Item = SpiffeTrustDomainConfig>,
    ) -> Result<Self, SpiffeConfigError> {
        Self::with_check_interval(configs, CHECK_INTERVAL)
    }

    /// [`JwtSvidAuthenticator::new`] with another bundle-file check interval (tests).
    pub(crate) fn with_check_interval(
        configs: impl IntoIterator<Item = SpiffeTrustDomainConfig>,
        interval: Duration,
    ) -> Result<Self, SpiffeConfigError> {
        let domains: Vec<JwtDomain> = validate_all(configs)?
            .into_iter()
            .filter_map(|settings| {
                let path = settings.jwt_bundle_file.clone()?;
                Some(JwtDomain {
                    bundle: FileBundle::new(path, parse_bundle).with_check_interval(interval),
                    settings,
                })
            })
            .collect();
        if domains.is_empty() {
            return Err(SpiffeConfigError {
                trust_domain: String::new(),
                reason: "no [[auth.spiffe]] entry has a jwt_bundle_file".into(),
            });
        }
        Ok(JwtSvidAuthenticator { domains })
    }

    /// The trust domains served, in order.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.domains
            .iter()
            .map(|d| d.settings.trust_domain.as_str())
    }

    /// Loads every bundle now (to report misconfiguration at start-up): per trust domain,
    /// the number of usable keys or why none could be loaded. Not fatal: loading is
    /// retried on use.
    pub fn load_bundles(&self) -> Vec<(String, Result<usize, String>)> {
        self.domains
            .iter()
            .map(|d| {
                (
                    d.settings.trust_domain.clone(),
                    d.bundle.get().map(|k| k.keys.len()),
                )
            })
            .collect()
    }

    pub(crate) fn verify(&self, token: &str, now: i64) -> AuthOutcome {
        let Some(jwt) = split_jwt(token) else {
            return AuthOutcome::NotMine;
        };
        // Not decoded at all when oversized (whose it is cannot be known without decoding
        // it); the OIDC authenticator, if configured, reports it as too large.
        if token.len() > MAX_TOKEN_BYTES {
            return AuthOutcome::NotMine;
        }
        // Undecodable parts or a non-SPIFFE `sub`: some other authenticator's token (the
        // OIDC one reports malformed JWTs).
        let (Some(header), Some(payload)) =
            (decode_json_part(jwt.header), decode_json_part(jwt.payload))
        else {
            return AuthOutcome::NotMine;
        };
        let Some(sub) = payload
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| s.starts_with("spiffe://"))
        else {
            return AuthOutcome::NotMine;
        };
        match self.verify_svid(&jwt, &header, &payload, sub, now) {
            Ok(claims) => AuthOutcome::Accepted(Proven::Workload(claims)),
            Err(rejection) => AuthOutcome::Rejected(rejection),
        }
    }

    fn verify_svid(
        &self,
        jwt: &crate::oidc::JwtParts<'_>,
        header: &Map<String, Value>,
        payload: &Map<String, Value>,
        sub: &str,
        now: i64,
    ) -> Result<WorkloadClaims, AuthRejection> {
        // 1. Header.
        let alg = check_algorithm(header)?;
        if let Some(typ) = header.get("typ") {
            if !matches!(typ.as_str(), Some("JWT" | "JOSE")) {
                return Err(AuthRejection::Malformed(
                    "JWT-SVID header typ must be JWT or JOSE".into(),
                ));
            }
        }
        if header.contains_key("crit") {
            return Err(AuthRejection::Malformed(
                "JWT header has critical extensions Mayfly does not understand".into(),
            ));
        }
        let Some(kid) = header.get("kid").and_then(Value::as_str) else {
            return Err(AuthRejection::Malformed(
                "JWT-SVID header has no kid (the JWT-SVID specification requires it)".into(),
            ));
        };

        // 2. Subject and trust domain.
        let id = parse_spiffe_id(sub)
            .map_err(|r| AuthRejection::Malformed(format!("sub is not a valid SPIFFE ID: {r}")))?;
        let Some(domain) = self
            .domains
            .iter()
            .find(|d| d.settings.trust_domain == id.trust_domain)
        else {
            return Err(AuthRejection::UntrustedIssuer(echo(id.trust_domain)));
        };
        let settings = &domain.settings;

        // 3. Key.
        let keys = domain.bundle.get().map_err(|reason| {
            tracing::warn!(trust_domain = %settings.trust_domain, %reason, "no JWT bundle to verify a JWT-SVID");
            AuthRejection::KeysUnavailable(format!(
                "the JWT bundle of trust domain {} could not be loaded",
                settings.trust_domain
            ))
        })?;
        let key = match keys.find(Some(kid), alg) {
            KeyMatch::Found(key) => key,
            KeyMatch::WrongAlgorithm => {
                return Err(AuthRejection::AlgorithmNotAllowed(alg_name(alg).into()))
            }
            KeyMatch::Unknown => return Err(AuthRejection::UnknownKey(echo(kid))),
        };

        // 4. Signature (key type checked to fit alg by `find`).
        match jsonwebtoken::crypto::verify(jwt.signature, jwt.signed.as_bytes(), &key.key, alg) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(AuthRejection::BadSignature),
        }

        // 5. Claims.
        let skew = settings.clock_skew_secs;
        let exp = match numeric_date(payload, "exp") {
            Numeric::Secs(exp) => exp,
            Numeric::Absent => return Err(AuthRejection::MissingClaim("exp".into())),
            Numeric::Invalid => return Err(AuthRejection::Malformed("exp is not a number".into())),
        };
        if now >= exp.saturating_add(skew) {
            return Err(AuthRejection::Expired);
        }
        for name in ["nbf", "iat"] {
            match numeric_date(payload, name) {
                Numeric::Secs(t) if t > now.saturating_add(skew) => {
                    return Err(AuthRejection::NotYetValid)
                }
                Numeric::Invalid => {
                    return Err(AuthRejection::Malformed(format!("{name} is not a number")))
                }
                _ => {}
            }
        }
        if !audience_matches(payload.get("aud"), &settings.audiences) {
            return Err(AuthRejection::WrongAudience);
        }

        // 6. Rules.
        let Some(identity) = settings.identity_for(&id) else {
            tracing::debug!(spiffe_id = %id.id, "no SPIFFE binding rule matched");
            return Err(AuthRejection::NoRuleMatched);
        };
        Ok(WorkloadClaims {
            identity: identity.to_owned(),
            method: "jwt-svid".into(),
            issuer: settings.trust_domain.clone(),
            subject: id.id.to_owned(),
            attributes: attributes(id.id, id.trust_domain),
            expires_at: Some(exp),
        })
    }
}

pub(crate) fn attributes(spiffe_id: &str, trust_domain: &str) -> BTreeMap<String, Value> {
    BTreeMap::from([
        ("spiffe_id".to_owned(), Value::String(spiffe_id.to_owned())),
        (
            "trust_domain".to_owned(),
            Value::String(trust_domain.to_owned()),
        ),
    ])
}

fn check_algorithm(header: &Map<String, Value>) -> Result<Algorithm, AuthRejection> {
    let Some(name) = header.get("alg").and_then(Value::as_str) else {
        return Err(AuthRejection::Malformed("JWT header has no alg".into()));
    };
    if name.eq_ignore_ascii_case("none") {
        return Err(AuthRejection::AlgorithmNotAllowed("none".into()));
    }
    match name.parse::<Algorithm>() {
        Ok(alg) if ALGORITHMS.contains(&alg) => Ok(alg),
        Ok(alg) => Err(AuthRejection::AlgorithmNotAllowed(alg_name(alg).into())),
        Err(_) => Err(AuthRejection::AlgorithmNotAllowed(echo(name))),
    }
}

#[async_trait]
impl Authenticator for JwtSvidAuthenticator {
    fn name(&self) -> &'static str {
        "jwt-svid"
    }

    async fn authenticate(&self, presented: &Presented<'_>) -> AuthOutcome {
        match presented.bearer {
            Some(token) => self.verify(token, time::OffsetDateTime::now_utc().unix_timestamp()),
            None => AuthOutcome::NotMine,
        }
    }
}
