//! Authentication at the HTTP edge: one extractor for every handler.
//!
//! Authenticators prove the credential; this layer then checks the bound identity exists,
//! is enabled and unexpired, and audits every rejection (without the credential).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use mayfly_core::auth::{AuthRejection, Presented, Principal, Proven};
use mayfly_core::model::Identity;

use crate::error::ApiError;
use crate::metrics::CodeLabel;
use crate::state::AppState;

/// The authenticated caller.
pub struct Caller(pub Principal, pub Option<Identity>);

impl Caller {
    /// Administration endpoints: operators only.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.0.is_operator() {
            Ok(())
        } else {
            Err(ApiError::Forbidden {
                code: "operator_only",
                detail: "this endpoint is for operators; workloads may only request, renew and revoke their own grants".into(),
            })
        }
    }
}

fn bearer(parts: &Parts) -> Result<Option<&str>, AuthRejection> {
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthRejection::Malformed("Authorization header is not ASCII".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| AuthRejection::Malformed("expected Authorization: Bearer <token>".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthRejection::Malformed(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    Ok(Some(token.trim()))
}

/// Authenticates a bearer; for a workload also returns its identity record, as read for
/// this request (handlers reuse it instead of reading it again).
pub async fn authenticate(
    state: &AppState,
    bearer: Option<&str>,
) -> Result<(Principal, Option<Identity>), AuthRejection> {
    let proven = state.auth.authenticate(&Presented { bearer }).await?;
    bind(state, proven).await
}

/// Authenticates the X.509-SVID the connection presented (mutual TLS).
async fn authenticate_certificate(
    state: &AppState,
    verifier: &mayfly_identity::X509SvidVerifier,
    chain: &crate::tls::PeerCertificates,
) -> Result<(Principal, Option<Identity>), AuthRejection> {
    let claims = verifier.authenticate_chain(&chain.0, rustls_pki_types::UnixTime::now())?;
    bind(state, Proven::Workload(claims)).await
}

/// Turns a proven credential into the principal: for a workload, its identity must exist,
/// be enabled and not be past its expiry date, whichever method proved it.
pub(crate) async fn bind(
    state: &AppState,
    proven: Proven,
) -> Result<(Principal, Option<Identity>), AuthRejection> {
    match proven {
        Proven::Operator { name } => Ok((Principal::Operator { name }, None)),
        Proven::Human(claims) => Ok((Principal::Human(claims), None)),
        Proven::Workload(claims) => {
            let identity = state
                .store
                .get_identity(&claims.identity)
                .await
                .map_err(|_| AuthRejection::Unavailable("store unavailable".into()))?
                .ok_or_else(|| AuthRejection::UnknownIdentity(claims.identity.clone()))?;
            if !identity.enabled {
                return Err(AuthRejection::IdentityDisabled(identity.id));
            }
            if identity.is_usable_at(mayfly_core::now()).is_err() {
                return Err(AuthRejection::IdentityExpired(identity.id));
            }
            Ok((Principal::workload(claims, &identity), Some(identity)))
        }
    }
}

/// A caller who may answer approval requests and close reviews: a person (from an
/// issuer configured for humans) or an operator. Workloads never approve.
pub struct Approver(pub Principal);

impl Approver {
    /// The approver's groups (an operator has none; it approves where no group is required).
    pub fn groups(&self) -> &[String] {
        match &self.0 {
            Principal::Human(h) => &h.groups,
            _ => &[],
        }
    }
}

impl FromRequestParts<AppState> for Approver {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match authenticated(parts, state).await?.0 {
            Principal::Workload { .. } => Err(ApiError::Forbidden {
                code: "approver_only",
                detail: "approvals are answered by people (an ID token from an issuer configured for humans) or operators, never by workloads".into(),
            }),
            principal => Ok(Approver(principal)),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = authenticated(parts, state).await?;
        // People approve; they do not administer or request. Every endpoint but the
        // approver's (`Approver`) turns them away, so no handler written for operators and
        // workloads ever sees one.
        if matches!(caller.0, Principal::Human(_)) {
            return Err(ApiError::Forbidden {
                code: "not_for_humans",
                detail: "a person's ID token answers approvals and reviews only (/v1/approvals, /v1/grants/{id}/approve|deny, /v1/reviews)".into(),
            });
        }
        Ok(caller)
    }
}

/// Authenticates the request (bearer token, else the TLS client certificate), counting
/// and auditing failures, and turning away a source that has failed too often.
async fn authenticated(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    {
        let source = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        // A source that has used up its failures is turned away before any credential
        // is looked at: guessing costs the guesser time, not the broker work or audit.
        if let Err(wait) = state.auth_failures.check(source, std::time::Instant::now()) {
            state
                .metrics
                .auth_failures
                .get_or_create(&CodeLabel {
                    code: "rate_limited".into(),
                })
                .inc();
            return Err(ApiError::TooManyRequests {
                retry_after_secs: wait.0,
            });
        }
        let certificate = parts
            .extensions
            .get::<crate::tls::PeerCertificates>()
            .cloned();
        let result = match (bearer(parts), certificate, &state.x509) {
            // A bearer token, when sent, decides; a client certificate is used without one.
            (Ok(None), Some(chain), Some(verifier)) => {
                authenticate_certificate(state, verifier, &chain).await
            }
            (Ok(token), _, _) => authenticate(state, token).await,
            (Err(e), _, _) => Err(e),
        };
        match result {
            Ok((principal, identity)) => Ok(Caller(principal, identity)),
            Err(AuthRejection::Unavailable(why)) => Err(ApiError::Unavailable(why)),
            Err(rejection) => {
                state
                    .metrics
                    .auth_failures
                    .get_or_create(&CodeLabel {
                        code: rejection.code().into(),
                    })
                    .inc();
                let first = state.auth_failures.record(
                    source,
                    rejection.code(),
                    &rejection.to_string(),
                    parts.uri.path(),
                    std::time::Instant::now(),
                    mayfly_core::now(),
                );
                if let Some(event) = first {
                    if let Err(e) = state.store.append_audit(vec![event]).await {
                        tracing::warn!(error = %e, "could not audit a failed authentication");
                    }
                }
                Err(ApiError::Unauthorized(rejection))
            }
        }
    }
}
