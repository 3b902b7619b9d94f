//! Credential providers: one per credential kind (`token`, `postgres`, `mariadb`, …).
//!
//! A provider creates the credential for an approved grant, extends it on renewal and
//! destroys it on revocation. `revoke` of something already gone is `Ok`: revocation is
//! retried until it succeeds, so it must be idempotent.
//!
//! External credentials (a database user) follow the write-ahead protocol: the server
//! asks [`Provider::plan`] for the name the credential will have, commits the lease in
//! state `creating` with that plan as `provider_state`, and only then calls
//! [`Provider::issue`]. A crash at any point leaves a `creating` lease that names exactly
//! what may exist on the target, so start-up reconciliation can remove it.
//!
//! Reconciliation ([`Provider::reconcile`]) removes only what Mayfly can prove it made
//! for *this* target: an account the target's own leases recorded (their provider state
//! names it) whose every such lease has ended. The [`Ledger`] answers that from the
//! store; a provider may add a marker on the target itself as a second check. Anything
//! else carrying the prefix (a hand-made role, another target's user on the same
//! server) is reported as `unknown` and left alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::model::{Grant, Identity, Lease, Target};
use crate::secret::SecretString;

/// A target and its admin credential (unsealed only for the call).
#[derive(Clone, Copy, Debug)]
pub struct TargetAccess<'a> {
    pub target: &'a Target,
    /// Admin connection secret (e.g. a DSN with password), for external providers.
    pub admin: Option<&'a SecretString>,
}

/// What a provider needs to issue.
#[derive(Debug)]
pub struct IssueRequest<'a> {
    pub grant: &'a Grant,
    pub identity: &'a Identity,
    pub target: TargetAccess<'a>,
    pub lease_id: uuid::Uuid,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// What [`Provider::plan`] returned (already committed with the lease).
    pub plan: &'a serde_json::Value,
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

/// Outcome of a reconciliation pass over one target.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReconcileReport {
    /// Credentials on the target that carry Mayfly's prefix.
    pub found: u64,
    /// Those Mayfly created for this target whose leases have all ended, now removed.
    pub dropped: Vec<String>,
    /// Those that could not be removed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Those Mayfly cannot prove it created for this target (made by hand, by another
    /// target sharing the prefix, or without this target's marker): left untouched.
    #[serde(default)]
    pub unknown: Vec<String>,
}

/// What the broker recorded about one account name on a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// A lease of this target that has not ended (creating, active, revoking) names it.
    Live,
    /// Leases of this target named it, and all of them have ended.
    Ended,
}

/// The broker's record of the credentials it created on one target, which
/// [`Provider::reconcile`] consults before removing anything.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// What this target's leases recorded about each of `names`. A name no lease of this
    /// target ever recorded is absent from the answer: it is not Mayfly's to remove.
    /// An error means the record could not be read; nothing may be removed then.
    async fn recorded(&self, names: &[String])
        -> Result<BTreeMap<String, Recorded>, ProviderError>;
}

#[derive(Clone, Debug, thiserror::Error)]
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
    /// For external kinds: the key of [`Provider::plan`]'s object that names what will
    /// exist on the target (`username` for database users). The broker records the plan
    /// under it before issuing, checks that [`Provider::issue`] created exactly the planned
    /// name, and reconciliation asks the store which names its leases recorded under it.
    fn live_key(&self) -> Option<&'static str> {
        None
    }
    /// Checks a target definition (and its admin secret, if any) before it is stored.
    fn validate_target(
        &self,
        target: &Target,
        admin: Option<&SecretString>,
    ) -> Result<(), ProviderError>;
    /// Chooses what will be created (e.g. the username) before anything is, so the
    /// write-ahead lease can name it. Self-contained kinds return `Null`.
    fn plan(&self, request: &IssueRequest<'_>) -> Result<serde_json::Value, ProviderError> {
        let _ = request;
        Ok(serde_json::Value::Null)
    }
    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError>;
    /// Extends a credential to `new_expiry`. Returns a replacement credential when the kind
    /// cannot be extended in place (a signed token is re-signed).
    async fn renew(
        &self,
        lease: &Lease,
        grant: &Grant,
        target: TargetAccess<'_>,
        new_expiry: OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError>;
    /// Destroys the credential; `Ok` when it is already gone.
    async fn revoke(&self, lease: &Lease, target: TargetAccess<'_>) -> Result<(), ProviderError>;
    /// When `revoke` keeps failing for a reason other than the target being unreachable
    /// (a role that owns objects, say): makes the credential unusable without removing it
    /// (no logins, open sessions ended), so it is contained while removal is retried.
    /// `Ok(true)` when contained; `Ok(false)` for kinds that cannot contain.
    async fn contain(
        &self,
        lease: &Lease,
        target: TargetAccess<'_>,
    ) -> Result<bool, ProviderError> {
        let _ = (lease, target);
        Ok(false)
    }
    /// After `revoke` said "done": whether the credential is really gone from the target
    /// (the user no longer exists). The broker counts `Ok(false)` as a failed attempt and
    /// tries again: a revocation never reports success while the credential still works.
    /// Kinds whose credential is the lease itself (tokens) are gone with it.
    async fn verify_revoked(
        &self,
        lease: &Lease,
        target: TargetAccess<'_>,
    ) -> Result<bool, ProviderError> {
        let _ = (lease, target);
        Ok(true)
    }
    /// Removes credentials on the target that `ledger` records as created for this target
    /// with every lease ended; reports the other prefixed credentials as kept or unknown.
    async fn reconcile(
        &self,
        target: TargetAccess<'_>,
        ledger: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        let _ = (target, ledger);
        Ok(ReconcileReport::default())
    }
    /// Chooses the admin credential the target will have after a root rotation (the admin
    /// secret with a new random password only Mayfly will know), without touching the
    /// target. The server records it sealed, in state `rotating`, before
    /// [`Provider::rotate_root`] sets it, so a crash at any point leaves both candidates
    /// on record.
    fn plan_root_rotation(&self, target: TargetAccess<'_>) -> Result<SecretString, ProviderError> {
        let _ = target;
        Err(self.no_root())
    }
    /// Makes `next` (from [`Provider::plan_root_rotation`]) the target's admin credential,
    /// connecting with `target.admin`, and verifies it by reconnecting with `next`. Setting
    /// the credential the target already has is `Ok`, so an interrupted rotation can be
    /// completed by running it again. On `Err` the target has `target.admin` (restored
    /// if the change was made but did not verify), unless the message says otherwise; the
    /// caller finds out which with [`Provider::check_admin`].
    async fn rotate_root(
        &self,
        target: TargetAccess<'_>,
        next: &SecretString,
    ) -> Result<(), ProviderError> {
        let _ = (target, next);
        Err(self.no_root())
    }
    /// A check of a target being created against the live system, beyond
    /// [`Provider::validate_target`]'s offline one: the rules or permissions parse there,
    /// the named vhosts exist, the admin has the rights it needs. `BadSettings` refuses
    /// the target; `Unavailable` means it could not be checked now.
    async fn check_target(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let _ = target;
        Ok(())
    }
    /// Whether `target.admin` opens an admin session on the target now: `Ok` if it does;
    /// `Unavailable` if the target refused it or could not be reached.
    async fn check_admin(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let _ = target;
        Err(self.no_root())
    }
    /// The error of kinds without a root credential.
    fn no_root(&self) -> ProviderError {
        ProviderError::BadSettings(format!(
            "{} targets have no root credential to rotate",
            self.kind()
        ))
    }
}
