//! SPIFFE workload authentication: workloads prove themselves with the SVID their SPIFFE
//! implementation (SPIRE, Istio, …) issued, checked against the trust domain's bundle
//! kept in a local file, and binding rules map the SPIFFE ID to a Mayfly identity.
//!
//! This module owns the `[[auth.spiffe]]` configuration, SPIFFE ID parsing, rule
//! matching and the bundle-file reloading shared by the two SVID kinds:
//!
//! - [`JwtSvidAuthenticator`] ([`jwt_svid`]): a JWT-SVID presented as a bearer token; an
//!   [`Authenticator`](mayfly_core::auth::Authenticator) like the OIDC one.
//! - [`X509SvidVerifier`] ([`x509_svid`]): an X.509-SVID presented as a TLS client
//!   certificate; the server's TLS layer uses its rustls verifier and then asks it for
//!   the workload's claims.
//!
//! # Configuration
//!
//! ```toml
//! [[auth.spiffe]]
//! trust_domain = "prod.acme"
//! jwt_bundle_file = "/etc/mayfly/bundle.jwks"   # JWT-SVID authorities (JWKS / SPIFFE bundle)
//! x509_bundle_file = "/etc/mayfly/bundle.pem"   # X.509-SVID authorities (PEM CA certificates)
//! audiences = ["mayfly"]                        # required with jwt_bundle_file
//! clock_skew = "60s"                            # JWT-SVID exp/nbf/iat tolerance; default 60s, at most 5m
//!
//! [[auth.spiffe.rules]]
//! identity = "payments-api"
//! spiffe_id = "spiffe://prod.acme/ns/payments/sa/api"
//!
//! [[auth.spiffe.rules]]
//! identity = "payments-workers"
//! spiffe_id_pattern = "spiffe://prod.acme/ns/payments/sa/worker-*"
//! ```
//!
//! Each entry is one trust domain; at least one of `jwt_bundle_file` and
//! `x509_bundle_file` must be set (an entry with only one serves only that SVID kind).
//! Rules are tried in order and the first match names the identity. A rule has exactly
//! one of:
//! - `spiffe_id`: the SPIFFE ID, compared exactly;
//! - `spiffe_id_pattern`: matches IDs with the same number of path segments, segment by
//!   segment, where `*` matches any run of characters (possibly none) *within one
//!   segment* and never `/`. Segments are never empty, so a lone `*` is exactly one whole
//!   segment: `…/sa/*` matches `…/sa/api` but neither `…/sa` nor `…/sa/api/v2`, and
//!   `…/sa/worker-*` matches `…/sa/worker-7`. A pattern can never reach into a deeper
//!   part of the namespace than its author wrote — the mistake that would silently widen
//!   who gets an identity. Write one rule per depth if several are meant.
//!
//! Both must name the entry's own trust domain (checked at start-up), so a rule can never
//! bind an ID of another trust domain.
//!
//! # Bundle files
//!
//! Bundles are read from local files that the SPIFFE agent (e.g. a SPIRE helper or
//! `spire-agent api fetch`) keeps up to date. A file's modification time and size are
//! checked at most every 5 seconds, and it is re-read when either changed. A file that
//! cannot be read or parsed keeps the previous bundle in use (the failure is logged); if
//! none was ever loaded, requests are refused with `keys_unavailable`.

pub mod jwt_svid;
pub mod x509_svid;

mod bundle;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use mayfly_core::duration::Ttl;
use serde::Deserialize;

pub use jwt_svid::JwtSvidAuthenticator;
pub use x509_svid::X509SvidVerifier;

/// Longest accepted `clock_skew` (as for OIDC: skew extends every token's lifetime).
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Longest SPIFFE ID accepted (the SPIFFE ID specification's limit for URIs).
const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// One trust domain (`[[auth.spiffe]]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpiffeTrustDomainConfig {
    /// The trust domain name, e.g. `prod.acme` (no `spiffe://`).
    pub trust_domain: String,
    /// JWKS (a SPIFFE bundle or a plain JWKS) with the JWT-SVID signing keys. Keys whose
    /// `use` is `x509-svid` are ignored; `jwt-svid`, `sig` or no `use` are accepted.
    #[serde(default)]
    pub jwt_bundle_file: Option<PathBuf>,
    /// PEM file with the trust domain's X.509 CA certificates.
    #[serde(default)]
    pub x509_bundle_file: Option<PathBuf>,
    /// A JWT-SVID's `aud` must contain one of these. Required with `jwt_bundle_file`:
    /// the audience is what says a token was minted for Mayfly and not for another
    /// service that could replay it here.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Tolerance for clock differences when checking JWT-SVID `exp`, `nbf` and `iat`.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: Ttl,
    /// Binding rules, tried in order.
    #[serde(default)]
    pub rules: Vec<SpiffeRule>,
}

/// A binding rule (`[[auth.spiffe.rules]]`); set exactly one of `spiffe_id` and
/// `spiffe_id_pattern`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpiffeRule {
    /// The Mayfly identity the SVID binds to.
    pub identity: String,
    /// Exact SPIFFE ID.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// SPIFFE ID with `*` wildcards within path segments (see the module docs).
    #[serde(default)]
    pub spiffe_id_pattern: Option<String>,
}

fn default_clock_skew() -> Ttl {
    Ttl::from_secs(60)
}

/// A configuration that cannot be used; the message names the trust domain and problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("auth.spiffe trust domain {trust_domain:?}: {reason}")]
pub struct SpiffeConfigError {
    pub trust_domain: String,
    pub reason: String,
}

/// A parsed, valid SPIFFE ID of a workload (non-empty path).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpiffeId<'a> {
    pub id: &'a str,
    pub trust_domain: &'a str,
    /// Starts with `/`.
    pub path: &'a str,
}

/// Parses a workload SPIFFE ID per the SPIFFE ID specification: lowercase `spiffe`
/// scheme, a trust domain of `[a-z0-9.-_]`, no userinfo, port, query, fragment or
/// percent-encoding, and a non-empty path of non-empty segments of `[A-Za-z0-9.-_]`
/// other than `.` and `..`. The trust-domain ID alone (no path) names no workload and is
/// refused. The error never repeats the input.
pub(crate) fn parse_spiffe_id(id: &str) -> Result<SpiffeId<'_>, &'static str> {
    if id.len() > MAX_SPIFFE_ID_BYTES {
        return Err("SPIFFE ID is too long");
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("SPIFFE ID must start with spiffe://")?;
    let (trust_domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    check_trust_domain(trust_domain)?;
    if path.is_empty() || path == "/" {
        return Err("SPIFFE ID has no path; a workload's ID names more than its trust domain");
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err("SPIFFE ID path has an empty segment or a trailing '/'");
        }
        if segment == "." || segment == ".." {
            return Err("SPIFFE ID path must not contain '.' or '..' segments");
        }
        if !segment.bytes().all(is_path_byte) {
            return Err("SPIFFE ID path may only contain letters, digits, '.', '-' and '_'");
        }
    }
    Ok(SpiffeId {
        id,
        trust_domain,
        path,
    })
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

pub(crate) fn check_trust_domain(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("SPIFFE trust domain is empty");
    }
    if name.len() > 255 {
        return Err("SPIFFE trust domain is too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("SPIFFE trust domain may only contain lowercase letters, digits, '.', '-' and '_' (no port, userinfo or uppercase)");
    }
    Ok(())
}

/// A rule checked at start-up.
#[derive(Clone, Debug)]
pub(crate) enum Matcher {
    Exact(String),
    /// The pattern's path segments (after the trust domain).
    Pattern(Vec<String>),
}

#[derive(Clone, Debug)]
pub(crate) struct CheckedRule {
    pub identity: String,
    pub matcher: Matcher,
}

impl CheckedRule {
    pub(crate) fn matches(&self, id: &SpiffeId<'_>) -> bool {
        match &self.matcher {
            Matcher::Exact(exact) => exact == id.id,
            Matcher::Pattern(segments) => {
                let mut path = id.path[1..].split('/');
                let mut pattern = segments.iter();
                loop {
                    match (pattern.next(), path.next()) {
                        (None, None) => return true,
                        (Some(p), Some(s)) if crate::oidc::claims::glob_match(p, s) => {}
                        _ => return false,
                    }
                }
            }
        }
    }
}

/// The checked settings of one trust domain.
#[derive(Debug)]
pub(crate) struct DomainSettings {
    pub trust_domain: String,
    pub jwt_bundle_file: Option<PathBuf>,
    pub x509_bundle_file: Option<PathBuf>,
    pub audiences: Vec<String>,
    pub clock_skew_secs: i64,
    pub rules: Vec<CheckedRule>,
}

impl DomainSettings {
    /// The first rule matching `id`.
    pub(crate) fn identity_for(&self, id: &SpiffeId<'_>) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| r.matches(id))
            .map(|r| r.identity.as_str())
    }
}

impl SpiffeTrustDomainConfig {
    pub(crate) fn validate(&self) -> Result<DomainSettings, SpiffeConfigError> {
        let err = |reason: String| SpiffeConfigError {
            trust_domain: self.trust_domain.clone(),
            reason,
        };
        check_trust_domain(&self.trust_domain).map_err(|r| err(r.into()))?;
        if self.jwt_bundle_file.is_none() && self.x509_bundle_file.is_none() {
            return Err(err(
                "set jwt_bundle_file, x509_bundle_file or both: there is nothing to verify SVIDs with".into(),
            ));
        }
        if self.jwt_bundle_file.is_some()
            && (self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()))
        {
            return Err(err(
                "audiences must list at least one non-empty audience when jwt_bundle_file is set"
                    .into(),
            ));
        }
        if self.clock_skew.as_secs() > MAX_CLOCK_SKEW_SECS {
            return Err(err(format!(
                "clock_skew must be at most {}",
                Ttl::from_secs(MAX_CLOCK_SKEW_SECS)
            )));
        }
        if self.rules.is_empty() {
            return Err(err(
                "no rules: add at least one [[auth.spiffe.rules]] binding SPIFFE IDs to an identity"
                    .into(),
            ));
        }
        let mut rules = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let rule_err =
                |reason: String| err(format!("rule {} ({}): {reason}", i + 1, rule.identity));
            mayfly_core::validate::name("identity", &rule.identity)
                .map_err(|e| rule_err(e.to_string()))?;
            let matcher = match (&rule.spiffe_id, &rule.spiffe_id_pattern) {
                (Some(id), None) => {
                    let parsed =
                        parse_spiffe_id(id).map_err(|r| rule_err(format!("spiffe_id: {r}")))?;
                    if parsed.trust_domain != self.trust_domain {
                        return Err(rule_err(
                            "spiffe_id must be in this entry's trust domain".into(),
                        ));
                    }
                    Matcher::Exact(id.clone())
                }
                (None, Some(pattern)) => {
                    Matcher::Pattern(self.check_pattern(pattern).map_err(rule_err)?)
                }
                _ => {
                    return Err(rule_err(
                        "set exactly one of spiffe_id and spiffe_id_pattern".into(),
                    ))
                }
            };
            rules.push(CheckedRule {
                identity: rule.identity.clone(),
                matcher,
            });
        }
        Ok(DomainSettings {
            trust_domain: self.trust_domain.clone(),
            jwt_bundle_file: self.jwt_bundle_file.clone(),
            x509_bundle_file: self.x509_bundle_file.clone(),
            audiences: self.audiences.clone(),
            clock_skew_secs: i64::try_from(self.clock_skew.as_secs()).unwrap_or(0),
            rules,
        })
    }

    /// A pattern is a SPIFFE ID of this trust domain whose path segments may contain `*`.
    fn check_pattern(&self, pattern: &str) -> Result<Vec<String>, String> {
        let prefix = format!("spiffe://{}/", self.trust_domain);
        let Some(path) = pattern.strip_prefix(&prefix) else {
            return Err(format!(
                "spiffe_id_pattern must start with {prefix:?} (wildcards are not allowed in the trust domain)"
            ));
        };
        let mut segments = Vec::new();
        for segment in path.split('/') {
            if segment.is_empty() {
                return Err("spiffe_id_pattern has an empty path segment or a trailing '/'".into());
            }
            if !segment.bytes().all(|b| b == b'*' || is_path_byte(b)) {
                return Err("spiffe_id_pattern path may only contain letters, digits, '.', '-', '_' and '*'".into());
            }
            if segment == "." || segment == ".." {
                return Err("spiffe_id_pattern must not contain '.' or '..' segments".into());
            }
            segments.push(segment.to_owned());
        }
        Ok(segments)
    }
}

/// Checks every entry and refuses duplicates.
pub(crate) fn validate_all(
    configs: impl IntoIterator<Item = SpiffeTrustDomainConfig>,
) -> Result<Vec<DomainSettings>, SpiffeConfigError> {
    let mut out: Vec<DomainSettings> = Vec::new();
    for config in configs {
        let settings = config.validate()?;
        if out.iter().any(|d| d.trust_domain == settings.trust_domain) {
            return Err(SpiffeConfigError {
                trust_domain: settings.trust_domain,
                reason: "configured more than once".into(),
            });
        }
        out.push(settings);
    }
    Ok(out)
}
