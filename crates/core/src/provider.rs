//! Credential providers: one per credential kind (`token`, later `postgres`, …).
//!
//! A provider creates the credential for an approved grant, extends it on renewal and
//! destroys it on revocation. `revoke` of something already gone is `Ok`: revocation is
//! retried until it succeeds, so it must be idempotent. What revocation needs is returned
//! at issue time as `provider_state` and stored with the lease.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::model::{Grant, Identity, Lease, Target};
use crate::secret::SecretString;

/// What a provider needs to issue.
#[derive(Debug)]
pub struct IssueRequest<'a> {
    pub grant: &'a Grant,
    pub identity: &'a Identity,
    pub target: &'a Target,
    pub lease_id: uuid::Uuid,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A freshly made credential, handed to the requester once.
#[derive(Debug)]
pub struct IssuedCredential {
    /// Secret parts (`access_token`, `password`, `dsn`), returned once, never stored.
    pub secrets: BTreeMap<String, SecretString>,
    /// Non-secret parts (`token_type`, `username`, `host`).
    pub public: serde_json::Map<String, serde_json::Value>,
    /// Stored with the lease; needed to revoke. Never secret.
    pub provider_state: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The target's settings are wrong for this provider.
    #[error("target settings: {0}")]
    BadSettings(String),
    /// The target could not be reached or refused; worth retrying.
    #[error("target unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the message must not contain secrets.
    #[error("{0}")]
    Failed(String),
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The credential kind this provider issues, as named in target definitions.
    fn kind(&self) -> &'static str;
    /// Whether credentials exist outside Mayfly and revocation must reach the target.
    fn external(&self) -> bool;
    /// Checks a target definition before it is stored.
    fn validate_target(&self, target: &Target) -> Result<(), ProviderError>;
    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError>;
    /// Extends a credential to `new_expiry`. Returns a replacement credential when the kind
    /// cannot be extended in place (a signed token is re-signed).
    async fn renew(
        &self,
        lease: &Lease,
        grant: &Grant,
        target: &Target,
        new_expiry: OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError>;
    async fn revoke(&self, lease: &Lease, target: &Target) -> Result<(), ProviderError>;
}
