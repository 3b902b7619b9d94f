//! Mayfly's authenticators: how a caller proves who it is.
//!
//! - [`OperatorTokenAuthenticator`]: `mfy_op_…` bearer tokens for administrators, kept
//!   in the store only as SHA-256. Never a workload credential.
//! - [`OidcAuthenticator`]: workload federation. A CI job or pod presents the OIDC token
//!   its platform issued; it is verified against the issuer's published keys and mapped
//!   to a Mayfly identity by binding rules on its claims. Workloads hold no long-lived
//!   Mayfly secret.
//! - [`JwtSvidAuthenticator`] and [`X509SvidVerifier`] ([`spiffe`]): SPIFFE workloads,
//!   by JWT-SVID bearer token or X.509-SVID TLS client certificate, verified against
//!   the trust domain's bundle file and mapped to an identity by SPIFFE ID rules.
//! - [`AuthChain`]: asks the authenticators in order, as the server does per request.
//!
//! Authenticators only prove a credential and name the identity it binds to; whether
//! that identity exists and is enabled is checked by the server, once, for all methods.
//! No rejection message ever contains the presented credential.

pub mod oidc;
pub mod operator;
pub mod spiffe;

#[cfg(test)]
mod test_store;

use std::sync::Arc;

use mayfly_core::auth::{AuthOutcome, AuthRejection, Authenticator, Presented, Proven};

pub use oidc::{OidcAuthenticator, OidcConfigError, OidcIssuerConfig, OidcRule};
pub use operator::{
    generate_operator_token, hash_operator_token, OperatorTokenAuthenticator, OperatorTokenError,
    OPERATOR_TOKEN_PREFIX,
};
pub use spiffe::{
    JwtSvidAuthenticator, SpiffeConfigError, SpiffeRule, SpiffeTrustDomainConfig, X509SvidVerifier,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use mayfly_core::store::{OperatorTokenRecord, Store};

    use super::*;
    use crate::test_store::TokenStore;

    /// Answers a fixed outcome and counts how often it was asked.
    struct Fixed {
        answer: fn() -> AuthOutcome,
        asked: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Authenticator for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        async fn authenticate(&self, _: &Presented<'_>) -> AuthOutcome {
            self.asked.fetch_add(1, Ordering::SeqCst);
            (self.answer)()
        }
    }

    fn fixed(answer: fn() -> AuthOutcome) -> Arc<Fixed> {
        Arc::new(Fixed {
            answer,
            asked: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn chain_asks_in_order_until_someone_answers() {
        let not_mine = fixed(|| AuthOutcome::NotMine);
        let rejects = fixed(|| AuthOutcome::Rejected(AuthRejection::Expired));
        let accepts = fixed(|| AuthOutcome::Accepted(Proven::Operator { name: "bob".into() }));
        let bearer = Presented {
            bearer: Some("something"),
        };

        let chain = AuthChain::new(vec![not_mine.clone(), rejects.clone(), accepts.clone()]);
        assert_eq!(
            chain.authenticate(&bearer).await,
            Err(AuthRejection::Expired)
        );
        assert_eq!(
            accepts.asked.load(Ordering::SeqCst),
            0,
            "a rejection is final"
        );

        let chain = AuthChain(vec![not_mine.clone(), accepts.clone()]);
        assert_eq!(
            chain.authenticate(&bearer).await,
            Ok(Proven::Operator { name: "bob".into() })
        );

        let chain = AuthChain(vec![not_mine.clone(), not_mine.clone()]);
        assert_eq!(
            chain.authenticate(&bearer).await,
            Err(AuthRejection::Malformed("unrecognised credential".into()))
        );
        assert_eq!(
            AuthChain::default()
                .authenticate(&bearer)
                .await
                .unwrap_err()
                .code(),
            "malformed_credential"
        );

        let asked_before = accepts.asked.load(Ordering::SeqCst);
        let chain = AuthChain(vec![accepts.clone()]);
        for missing in [None, Some(""), Some("   ")] {
            let presented = Presented { bearer: missing };
            assert_eq!(
                chain.authenticate(&presented).await,
                Err(AuthRejection::Missing)
            );
        }
        assert_eq!(accepts.asked.load(Ordering::SeqCst), asked_before);
        assert_eq!(format!("{chain:?}"), "[\"fixed\"]");
    }

    #[tokio::test]
    async fn operator_and_oidc_side_by_side() {
        let store = Arc::new(TokenStore::default());
        let (token, hash) = generate_operator_token().unwrap();
        store
            .add_operator_token(&OperatorTokenRecord::new(
                "root",
                hash,
                mayfly_core::now(),
                None,
                "test",
            ))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
        let oidc: OidcIssuerConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://issuer.example",
            "audiences": ["mayfly"],
            "jwks_file": jwks,
            "rules": [{"identity": "x", "claims": {"sub": "y"}}],
        }))
        .unwrap();
        let chain = AuthChain::new(vec![
            Arc::new(OperatorTokenAuthenticator::new(store)),
            Arc::new(OidcAuthenticator::new(vec![oidc]).unwrap()),
        ]);

        let op = Presented {
            bearer: Some(token.expose()),
        };
        assert_eq!(
            chain.authenticate(&op).await,
            Ok(Proven::Operator {
                name: "root".into()
            })
        );
        // A JWT goes past the operator authenticator to OIDC (which has no usable keys).
        let header = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0"; // {"alg":"EdDSA","kid":"k1"}
        let payload = "eyJpc3MiOiJodHRwczovL2lzc3Vlci5leGFtcGxlIn0"; // {"iss":"https://issuer.example"}
        let jwt = format!("{header}.{payload}.c2ln");
        let rejection = chain
            .authenticate(&Presented { bearer: Some(&jwt) })
            .await
            .unwrap_err();
        assert_eq!(rejection.code(), "keys_unavailable");
        let opaque = Presented {
            bearer: Some("some-opaque-token"),
        };
        assert_eq!(
            chain.authenticate(&opaque).await.unwrap_err().code(),
            "malformed_credential"
        );
    }
}
