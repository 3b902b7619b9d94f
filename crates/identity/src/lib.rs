//! Mayfly's authenticators: how a caller proves who it is.
//!
//! - [`OperatorTokenAuthenticator`]: `mfy_op_…` bearer tokens for administrators, kept
//!   in the store only as SHA-256. Never a workload credential.
//! - [`OidcAuthenticator`]: workload federation. A CI job or pod presents the OIDC token
//!   its platform issued; it is verified against the issuer's published keys and mapped
//!   to a Mayfly identity by binding rules on its claims. Workloads hold no long-lived
//!   Mayfly secret.
//! - [`AuthChain`]: asks the authenticators in order, as the server does per request.
//!
//! Authenticators only prove a credential and name the identity it binds to; whether
//! that identity exists and is enabled is checked by the server, once, for all methods.
//! No rejection message ever contains the presented credential.

pub mod oidc;
pub mod operator;

use std::sync::Arc;

use mayfly_core::auth::{AuthOutcome, AuthRejection, Authenticator, Presented, Proven};

pub use oidc::{OidcAuthenticator, OidcConfigError, OidcIssuerConfig, OidcRule};
pub use operator::{
    generate_operator_token, hash_operator_token, OperatorTokenAuthenticator, OperatorTokenError,
    OPERATOR_TOKEN_PREFIX,
};

/// The authenticators of a server, asked in order until one claims the credential.
#[derive(Clone, Default)]
pub struct AuthChain(pub Vec<Arc<dyn Authenticator>>);

impl AuthChain {
    pub fn new(authenticators: Vec<Arc<dyn Authenticator>>) -> Self {
        AuthChain(authenticators)
    }

    /// The first answer other than `NotMine` decides. No bearer (or an empty one) is
    /// `Missing`; a bearer no authenticator recognises is `Malformed`.
    pub async fn authenticate(&self, presented: &Presented<'_>) -> Result<Proven, AuthRejection> {
        let Some(bearer) = presented.bearer.map(str::trim).filter(|b| !b.is_empty()) else {
            return Err(AuthRejection::Missing);
        };
        let presented = Presented {
            bearer: Some(bearer),
        };
        for authenticator in &self.0 {
            match authenticator.authenticate(&presented).await {
                AuthOutcome::NotMine => continue,
                AuthOutcome::Accepted(proven) => return Ok(proven),
                AuthOutcome::Rejected(rejection) => {
                    tracing::debug!(
                        authenticator = authenticator.name(),
                        code = rejection.code(),
                        "credential rejected"
                    );
                    return Err(rejection);
                }
            }
        }
        Err(AuthRejection::Malformed("unrecognised credential".into()))
    }
}

impl std::fmt::Debug for AuthChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|a| a.name()))
            .finish()
    }
}
