//! Configuration of trusted OIDC issuers, as embedded in the server's TOML config:
//!
//! ```toml
//! [[auth.oidc]]
//! issuer = "https://token.actions.githubusercontent.com"
//! audiences = ["mayfly"]
//! discovery = true                 # or jwks_url = "https://…" or jwks_file = "/etc/mayfly/jwks.json"
//! algorithms = ["RS256"]           # default ["RS256", "ES256", "EdDSA"]
//! clock_skew = "60s"               # default 60s, at most 5m
//! required_claims = ["repository"] # `exp`, `sub` and `aud` are always required
//! attributes = ["repository"]      # copied into WorkloadClaims.attributes for every rule
//!
//! [[auth.oidc.rules]]
//! identity = "billing-deployer"
//! attributes = ["ref"]             # extra attributes for this rule; must come before `claims`
//! claims = { sub = "repo:acme/billing:ref:refs/heads/main" }
//!
//! [[auth.oidc.rules]]
//! identity = "billing-ci"
//! [auth.oidc.rules.claims]         # all must match; exact, or a glob where `*` matches anything
//! sub = "repo:acme/billing:*"
//! ```
//!
//! Claim names (in `required_claims`, `attributes` and rule `claims`) are top-level claim
//! names unless they contain `/` or `~`, in which case they are a JSON pointer into the claims
//! with the leading `/` implied: `kubernetes.io/namespace` reads
//! `{"kubernetes.io": {"namespace": …}}`. A top-level claim whose name itself contains `/`
//! (e.g. `https://example.com/roles`) is written with JSON-pointer escaping, `~1` for `/`
//! and `~0` for `~`: `https:~1~1example.com~1roles`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use mayfly_core::duration::Ttl;
use serde::Deserialize;

/// Largest accepted `clock_skew`: skew is added to every token's lifetime, so a large
/// value silently extends stolen tokens.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// One trusted issuer (`[[auth.oidc]]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Compared byte-for-byte with the token's `iss` (OIDC requires an exact match; a
    /// trailing slash matters).
    pub issuer: String,
    /// The token's `aud` must contain at least one of these. Required and non-empty:
    /// issuers such as GitHub Actions mint tokens for any audience a workflow asks for, so
    /// the audience is what says "this token was meant for Mayfly".
    pub audiences: Vec<String>,
    /// Where to fetch the JWKS.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Find the JWKS through `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Read the JWKS from a local file (air-gapped installations). Re-read on the same
    /// schedule as a URL, so replacing the file rotates keys.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Accepted signature algorithms. `none` and the HMAC algorithms can never be listed.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Tolerance for clock differences when checking `exp`, `nbf` and `iat`.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: Ttl,
    /// Claims that must be present (and not null), in the claim-name syntax above.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Claims copied into `WorkloadClaims.attributes` whichever rule matches.
    #[serde(default)]
    pub attributes: Vec<String>,
    /// Binding rules, tried in order; the first whose claims all match names the identity.
    #[serde(default)]
    pub rules: Vec<OidcRule>,
    /// `[auth.oidc.humans]`: the issuer's tokens that no rule binds are people, who may
    /// answer approval requests (an identity provider such as Okta, Entra ID, Keycloak).
    #[serde(default)]
    pub humans: Option<HumanMapping>,
}

/// How a person's ID token names them and their groups.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HumanMapping {
    /// The claim naming the person in the audit chain (`human:<value>`).
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
    /// The claim listing the person's groups (an array of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
}

fn default_name_claim() -> String {
    "email".into()
}

fn default_groups_claim() -> String {
    "groups".into()
}

/// A binding rule (`[[auth.oidc.rules]]`): tokens whose claims all match are the identity.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcRule {
    /// The Mayfly identity the token binds to.
    pub identity: String,
    /// Claim name -> pattern. A pattern is matched against a string claim, or the JSON text
    /// of a number or boolean claim; against an array claim it matches when any element
    /// does. `*` matches any run of characters (including none); there are no other
    /// wildcards and no escapes.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// Claims copied into `WorkloadClaims.attributes` when this rule matches, in addition
    /// to the issuer's `attributes`.
    #[serde(default)]
    pub attributes: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

fn default_clock_skew() -> Ttl {
    Ttl::from_secs(60)
}

/// A configuration that cannot be used; the message names the issuer and the problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("auth.oidc issuer {issuer:?}: {reason}")]
pub struct OidcConfigError {
    pub issuer: String,
    pub reason: String,
}

/// Where an issuer's keys come from, resolved from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum JwksSource {
    Url(String),
    Discovery,
    File(PathBuf),
}

/// An issuer config checked and converted for use.
#[derive(Debug)]
pub(crate) struct IssuerSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub source: JwksSource,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew_secs: i64,
    pub required_claims: Vec<String>,
    pub attributes: Vec<String>,
    pub rules: Vec<OidcRule>,
    pub humans: Option<HumanMapping>,
}

impl OidcIssuerConfig {
    pub(crate) fn validate(&self) -> Result<IssuerSettings, OidcConfigError> {
        let err = |reason: String| OidcConfigError {
            issuer: self.issuer.clone(),
            reason,
        };
        if self.issuer.trim().is_empty() {
            return Err(err("issuer must not be empty".into()));
        }
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.is_empty()) {
            return Err(err(
                "audiences must list at least one non-empty audience".into()
            ));
        }
        let source = match (&self.jwks_url, self.discovery, &self.jwks_file) {
            (Some(url), false, None) => {
                check_fetch_url(url).map_err(|r| err(format!("jwks_url: {r}")))?;
                JwksSource::Url(url.clone())
            }
            (None, true, None) => {
                check_fetch_url(&self.issuer)
                    .map_err(|r| err(format!("discovery needs an https issuer: {r}")))?;
                JwksSource::Discovery
            }
            (None, false, Some(path)) => JwksSource::File(path.clone()),
            _ => {
                return Err(err(
                    "set exactly one of jwks_url, discovery = true or jwks_file".into(),
                ))
            }
        };
        if self.algorithms.is_empty() {
            return Err(err("algorithms must not be empty".into()));
        }
        let mut algorithms = Vec::new();
        for name in &self.algorithms {
            algorithms.push(parse_allowed_algorithm(name).map_err(err)?);
        }
        if self.clock_skew.as_secs() > MAX_CLOCK_SKEW_SECS {
            return Err(err(format!(
                "clock_skew must be at most {}",
                Ttl::from_secs(MAX_CLOCK_SKEW_SECS)
            )));
        }
        for name in self
            .required_claims
            .iter()
            .chain(&self.attributes)
            .chain(self.rules.iter().flat_map(|r| r.attributes.iter()))
        {
            check_claim_name(name).map_err(err)?;
        }
        if let Some(h) = &self.humans {
            check_claim_name(&h.name_claim).map_err(err)?;
            check_claim_name(&h.groups_claim).map_err(err)?;
        }
        if self.rules.is_empty() && self.humans.is_none() {
            return Err(err(
                "no rules: add at least one [[auth.oidc.rules]] binding tokens to an identity"
                    .into(),
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let rule_err =
                |reason: String| err(format!("rule {} ({}): {reason}", i + 1, rule.identity));
            mayfly_core::validate::name("identity", &rule.identity)
                .map_err(|e| rule_err(e.to_string()))?;
            // A rule without conditions would bind every token of the issuer: for a
            // public issuer like GitHub Actions, that is every repository in the world.
            if rule.claims.values().all(|p| p.chars().all(|c| c == '*')) {
                return Err(rule_err(
                    "claims must constrain at least one claim with a pattern other than '*'".into(),
                ));
            }
            for name in rule.claims.keys() {
                check_claim_name(name).map_err(rule_err)?;
            }
        }
        Ok(IssuerSettings {
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            source,
            algorithms,
            clock_skew_secs: i64::try_from(self.clock_skew.as_secs()).unwrap_or(0),
            required_claims: self.required_claims.clone(),
            attributes: self.attributes.clone(),
            rules: self.rules.clone(),
            humans: self.humans.clone(),
        })
    }
}

/// Parses an algorithm name from the config, refusing the ones that must never verify a
/// workload token.
fn parse_allowed_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("algorithm \"none\" can never be allowed".into());
    }
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown algorithm {name:?}"))?;
    if is_hmac(alg) {
        // An HMAC key would have to be shared with the issuer, and accepting HS* next to
        // asymmetric algorithms is the classic key-confusion hole (public key as secret).
        return Err(format!("HMAC algorithm {name} can never be allowed"));
    }
    Ok(alg)
}

pub(crate) fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn check_claim_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        return Err(format!(
            "claim name {name:?} is not valid (use `claim` or `outer/inner`, no leading, trailing or doubled '/')"
        ));
    }
    Ok(())
}

/// Key sets are fetched over https only, so that a network attacker cannot substitute
/// keys; plain http is allowed for loopback addresses (local development and tests).
pub(crate) fn check_fetch_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err(format!(
            "{url:?} must use https (http is only allowed for loopback addresses)"
        )),
    }
}

pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // IPv6 literals come bracketed (`[::1]`).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}
