//! The `token` credential kind: RFC 9068 JWT access tokens signed by the broker.
//!
//! A token is self-contained, so "revoking" it is ending its lease: resource servers that
//! must honour revocation before `exp` ask the introspection endpoint (RFC 7662), which
//! reads the lease state.

use std::collections::BTreeMap;
use std::sync::Arc;

use mayfly_core::model::{Grant, Lease, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Provider, ProviderError, TargetAccess,
};
use mayfly_core::secret::SecretString;
use mayfly_core::OffsetDateTime;
use serde::{Deserialize, Serialize};

use crate::keys::Keyring;

/// Claims of an issued access token (RFC 9068 plus Mayfly's grant context).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    /// The identity the token was issued to.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    /// The lease id.
    pub jti: String,
    pub scope: String,
    pub client_id: String,
    pub grant_id: String,
    pub task: String,
    pub purpose: String,
    /// The task record the token was issued in (the `txn` of its task token, as in OAuth
    /// Transaction Tokens); absent for a grant with a free `task` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// RFC 9396: for an approved grant, `[{"type": "mayfly_approval", "approvers": […],
    /// "approved_at": …, "request_hash": …, "grant_id": …}]`, so a resource server sees
    /// that, by whom and what exactly was approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_details: Option<serde_json::Value>,
    /// RFC 8693 §4.1: who acts for `sub` (nested, the nearest actor outermost); only in
    /// tokens from a token exchange with an `actor_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<serde_json::Value>,
    /// The key the token is bound to: `jkt` (DPoP, RFC 9449) or `x5t#S256` (mutual TLS,
    /// RFC 8705). A bound token is useless without that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Value>,
}

impl AccessTokenClaims {
    /// `DPoP` for a token bound to a DPoP key, else `Bearer` (RFC 9449 §5).
    pub fn token_type(&self) -> &'static str {
        token_type(self.cnf.as_ref())
    }
}

fn token_type(cnf: Option<&serde_json::Value>) -> &'static str {
    if cnf.is_some_and(|c| c.get("jkt").is_some()) {
        "DPoP"
    } else {
        "Bearer"
    }
}

/// The identities that may introspect this target's tokens: the resource servers the
/// tokens are for (`settings.resource_servers`).
pub fn resource_servers(target: &Target) -> impl Iterator<Item = &str> {
    target
        .settings
        .get("resource_servers")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
}

pub struct TokenProvider {
    keys: Arc<Keyring>,
    issuer: String,
}

impl TokenProvider {
    pub fn new(keys: Arc<Keyring>, issuer: String) -> Self {
        TokenProvider { keys, issuer }
    }

    fn audience(target: &Target) -> String {
        target
            .settings
            .get("audience")
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| target.name.clone())
    }

    fn credential(
        &self,
        grant: &Grant,
        target: &Target,
        lease_id: uuid::Uuid,
        issued_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Result<IssuedCredential, ProviderError> {
        let claims = AccessTokenClaims {
            iss: self.issuer.clone(),
            sub: grant.identity.clone(),
            aud: Self::audience(target),
            exp: expires_at.unix_timestamp(),
            iat: issued_at.unix_timestamp(),
            nbf: issued_at.unix_timestamp(),
            jti: lease_id.to_string(),
            scope: grant.action.clone(),
            client_id: grant.identity.clone(),
            grant_id: grant.id.to_string(),
            task: grant.task.clone(),
            purpose: grant.purpose.clone(),
            // Set by a token exchange in the grant's context (never by the requester:
            // the broker refuses those keys in a request), so renewals keep them.
            act: grant.context.get("act").cloned(),
            cnf: grant.context.get("cnf").cloned(),
            authorization_details: grant.context.get("authorization_details").cloned(),
            txn: grant
                .context
                .get("txn")
                .and_then(|t| t.as_str())
                .map(str::to_string),
        };
        let token = self
            .keys
            .sign(&claims)
            .map_err(|e| ProviderError::Failed(format!("cannot encode token claims: {e}")))?;
        let mut secrets = BTreeMap::new();
        secrets.insert("access_token".to_string(), SecretString::new(token));
        let mut public = serde_json::Map::new();
        public.insert("token_type".into(), claims.token_type().into());
        public.insert(
            "issued_token_type".into(),
            "urn:ietf:params:oauth:token-type:jwt".into(),
        );
        public.insert(
            "expires_in".into(),
            (expires_at - issued_at).whole_seconds().into(),
        );
        public.insert("scope".into(), claims.scope.into());
        public.insert("audience".into(), claims.aud.into());
        Ok(IssuedCredential {
            secrets,
            public,
            provider_state: serde_json::json!({"kid": self.keys.active_kid()}),
        })
    }
}

/// The credential kind of the broker's own signed tokens.
pub const KIND: &str = "token";

impl TokenProvider {
    /// The settings a token target may carry: `audience`, the binding switches and
    /// `resource_servers`.
    fn check_settings(target: &Target) -> Result<(), ProviderError> {
        match target.settings.get("audience") {
            None => {}
            Some(serde_json::Value::String(a)) if !a.is_empty() => {}
            Some(_) => {
                return Err(ProviderError::BadSettings(
                    "audience must be a non-empty string".into(),
                ))
            }
        }
        // Sender-constrained tokens (`crate::api::oauth`): a typo must not silently issue
        // bearer tokens from a target meant to require proof of possession.
        for key in ["proof_of_possession", "dpop_nonce"] {
            match target.settings.get(key) {
                None | Some(serde_json::Value::Bool(_)) => {}
                Some(_) => {
                    return Err(ProviderError::BadSettings(format!(
                        "{key} must be true or false"
                    )))
                }
            }
        }
        match target.settings.get("resource_servers") {
            None => Ok(()),
            Some(serde_json::Value::Array(ids))
                if ids.iter().all(|id| {
                    id.as_str()
                        .is_some_and(|id| mayfly_core::validate::name("resource_servers", id).is_ok())
                }) =>
            {
                Ok(())
            }
            Some(_) => Err(ProviderError::BadSettings(
                "resource_servers must be a list of identity names (the services that may introspect this target's tokens)".into(),
            )),
        }
    }
}

#[async_trait::async_trait]
impl Provider for TokenProvider {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn external(&self) -> bool {
        false
    }

    fn validate_target(
        &self,
        target: &Target,
        admin: Option<&SecretString>,
    ) -> Result<(), ProviderError> {
        if admin.is_some() {
            return Err(ProviderError::BadSettings(
                "token targets take no admin secret".into(),
            ));
        }
        Self::check_settings(target)
    }

    async fn issue(&self, r: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        self.credential(
            r.grant,
            r.target.target,
            r.lease_id,
            r.issued_at,
            r.expires_at,
        )
    }

    async fn renew(
        &self,
        lease: &Lease,
        grant: &Grant,
        target: TargetAccess<'_>,
        new_expiry: OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError> {
        // A JWT's exp cannot change; the renewed lease gets a re-signed token, same jti.
        self.credential(
            grant,
            target.target,
            lease.id,
            mayfly_core::now(),
            new_expiry,
        )
        .map(Some)
    }

    async fn revoke(&self, _lease: &Lease, _target: TargetAccess<'_>) -> Result<(), ProviderError> {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn binding_settings_must_be_booleans() {
        let target = |settings: serde_json::Value| Target {
            name: "api".into(),
            kind: "token".into(),
            actions: vec!["read".into()],
            default_ttl: mayfly_core::duration::Ttl::from_secs(60),
            max_ttl: mayfly_core::duration::Ttl::from_secs(600),
            allow: vec![],
            settings,
            created_at: mayfly_core::now(),
        };
        let ok = |settings| TokenProvider::check_settings(&target(settings)).is_ok();
        assert!(ok(
            serde_json::json!({"proof_of_possession": true, "dpop_nonce": false})
        ));
        assert!(!ok(serde_json::json!({"proof_of_possession": "yes"})));
        assert!(!ok(serde_json::json!({"dpop_nonce": 1})));
    }

    #[test]
    fn token_type_follows_the_binding() {
        assert_eq!(token_type(None), "Bearer");
        assert_eq!(
            token_type(Some(&serde_json::json!({"x5t#S256": "t"}))),
            "Bearer"
        );
        assert_eq!(token_type(Some(&serde_json::json!({"jkt": "t"}))), "DPoP");
    }
}
