//! Who is calling: the authenticated principal and the authenticator extension point.
//!
//! Authenticators only *prove* a credential and name the Mayfly identity it binds to; the
//! server then checks that identity exists, is enabled and unexpired, in one place for all
//! authenticators.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{Identity, IdentityKind};

/// What a caller presented. Borrowed from the request; never stored or logged.
#[derive(Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The `Authorization: Bearer` value.
    pub bearer: Option<&'a str>,
}

impl std::fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presented")
            .field("bearer", &self.bearer.map(|_| "[redacted]"))
            .finish()
    }
}

/// A credential an authenticator accepted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Proven {
    /// An operator (administration only; never a workload).
    Operator { name: String },
    /// A workload whose credential binds it to `identity`.
    Workload(WorkloadClaims),
    /// A person (an approver), from an OIDC ID token of an issuer configured for humans.
    Human(HumanClaims),
}

/// The verified facts about a person's ID token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HumanClaims {
    /// Who, as audited (`human:<name>`): the configured name claim (e.g. `email`).
    pub name: String,
    pub issuer: String,
    pub subject: String,
    /// The groups claim: what approver groups the person is in.
    pub groups: Vec<String>,
    #[serde(serialize_with = "unix_as_rfc3339")]
    pub expires_at: Option<i64>,
}

/// The verified facts about a workload credential.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadClaims {
    /// The Mayfly identity the credential binds to.
    pub identity: String,
    /// `oidc`, `spiffe-x509`, `jwt-svid`, …
    pub method: String,
    /// Issuer URL or SPIFFE trust domain.
    pub issuer: String,
    pub subject: String,
    /// Claims selected by the binding rules, for policy.
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// When the presented credential stops being valid (unix seconds), if it says; written
    /// in RFC 3339 like every other time the API shows.
    #[serde(serialize_with = "unix_as_rfc3339")]
    pub expires_at: Option<i64>,
}

fn unix_as_rfc3339<S: serde::Serializer>(secs: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    let text = secs
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
    match text {
        Some(t) => s.serialize_str(&t),
        None => s.serialize_none(),
    }
}

/// The authenticated caller as handlers and policy see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Principal {
    Operator {
        name: String,
    },
    Workload {
        #[serde(flatten)]
        claims: WorkloadClaims,
        kind: IdentityKind,
        owner: String,
    },
    /// A person: approves and denies requests and closes reviews; never requests access.
    Human(HumanClaims),
}

impl Principal {
    pub fn workload(claims: WorkloadClaims, identity: &Identity) -> Principal {
        Principal::Workload {
            claims,
            kind: identity.kind,
            owner: identity.owner.clone(),
        }
    }

    /// The `actor` recorded in audit events.
    pub fn actor(&self) -> String {
        match self {
            Principal::Operator { name } => format!("operator:{name}"),
            Principal::Workload { claims, .. } => format!("identity:{}", claims.identity),
            Principal::Human(h) => format!("human:{}", h.name),
        }
    }

    pub fn is_operator(&self) -> bool {
        matches!(self, Principal::Operator { .. })
    }

    pub fn identity(&self) -> Option<&str> {
        match self {
            Principal::Workload { claims, .. } => Some(&claims.identity),
            Principal::Operator { .. } | Principal::Human(_) => None,
        }
    }
}

/// Why a credential was refused. The message is safe to return to the caller: it never
/// contains the credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthRejection {
    #[error("no credential presented; send Authorization: Bearer <token>")]
    Missing,
    #[error("credential is malformed: {0}")]
    Malformed(String),
    #[error("operator token is not valid")]
    BadOperatorToken,
    /// The token is known but past its expiry: say so, so its holder knows to ask for a
    /// new one rather than suspect a typo. `at` is RFC 3339.
    #[error("operator token {name:?} expired at {at}; ask an operator for a new one (`mayfly operator token create`)")]
    OperatorTokenExpired { name: String, at: String },
    /// The token is known but was revoked. `at` is RFC 3339.
    #[error("operator token {name:?} was revoked at {at}")]
    OperatorTokenRevoked { name: String, at: String },
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audience is not accepted by this issuer's configuration")]
    WrongAudience,
    #[error("token issuer {0:?} is not trusted")]
    UntrustedIssuer(String),
    #[error("token key id {0:?} is unknown to the issuer's JWKS")]
    UnknownKey(String),
    #[error("credential signature is invalid (not signed by a trusted key or CA)")]
    BadSignature,
    #[error("token algorithm {0} is not allowed")]
    AlgorithmNotAllowed(String),
    #[error("token is missing required claim {0:?}")]
    MissingClaim(String),
    #[error("no identity binding rule matched the token's claims")]
    NoRuleMatched,
    #[error("identity {0:?} does not exist")]
    UnknownIdentity(String),
    #[error("identity {0:?} is disabled")]
    IdentityDisabled(String),
    #[error("identity {0:?} is past its expiry date")]
    IdentityExpired(String),
    #[error("issuer keys are unavailable: {0}")]
    KeysUnavailable(String),
    /// A backend needed to decide (the store) is down; the caller should retry. Not the
    /// caller's fault, so the HTTP edge answers 503, not 401.
    #[error("authentication is unavailable: {0}")]
    Unavailable(String),
}

impl AuthRejection {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthRejection::Missing => "missing_credential",
            AuthRejection::Malformed(_) => "malformed_credential",
            AuthRejection::BadOperatorToken => "bad_operator_token",
            AuthRejection::OperatorTokenExpired { .. } => "operator_token_expired",
            AuthRejection::OperatorTokenRevoked { .. } => "operator_token_revoked",
            AuthRejection::Expired => "expired",
            AuthRejection::NotYetValid => "not_yet_valid",
            AuthRejection::WrongAudience => "wrong_audience",
            AuthRejection::UntrustedIssuer(_) => "untrusted_issuer",
            AuthRejection::UnknownKey(_) => "unknown_kid",
            AuthRejection::BadSignature => "bad_signature",
            AuthRejection::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthRejection::MissingClaim(_) => "missing_claim",
            AuthRejection::NoRuleMatched => "no_rule_matched",
            AuthRejection::UnknownIdentity(_) => "unknown_identity",
            AuthRejection::IdentityDisabled(_) => "identity_disabled",
            AuthRejection::IdentityExpired(_) => "identity_expired",
            AuthRejection::KeysUnavailable(_) => "keys_unavailable",
            AuthRejection::Unavailable(_) => "unavailable",
        }
    }
}

/// What an authenticator made of a presented credential.
#[derive(Debug)]
pub enum AuthOutcome {
    /// Not a credential this authenticator handles; try the next.
    NotMine,
    Accepted(Proven),
    Rejected(AuthRejection),
}

/// An authentication method. Implementations are registered once at start; the server
/// asks each in order until one answers other than [`AuthOutcome::NotMine`].
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync {
    /// Short name for logs and metrics (`operator-token`, `oidc`).
    fn name(&self) -> &'static str;
    async fn authenticate(&self, presented: &Presented<'_>) -> AuthOutcome;
}
