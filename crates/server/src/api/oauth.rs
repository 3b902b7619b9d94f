//! OAuth 2.0 for workloads and agents: token exchange (RFC 8693) at `POST /oauth2/token`,
//! revocation (RFC 7009) at `POST /oauth2/revoke` and the authorization server metadata
//! (RFC 8414) at `/.well-known/oauth-authorization-server`.
//!
//! An exchange is a grant like any other: this module parses the form, proves the subject
//! (and actor) tokens with the identity layer, names the target, and hands the request to
//! [`broker::exchange`], which decides, leases, issues and audits it as it does
//! `POST /v1/grants`. Errors are RFC 6749 §5.2 JSON (`error`, `error_description`), not
//! problem+json, so any OAuth client library understands them.
//!
//! Only the token-exchange grant is offered. `client_credentials` and `password` are
//! answered `unsupported_grant_type` on purpose: both need a shared client secret, and
//! workloads here hold none; they prove themselves with the credential their platform
//! gave them (an OIDC JWT, a JWT-SVID), which is exactly a `subject_token`.
//!
//! Which subject tokens are accepted (`subject_token_type`):
//! - `…:jwt`: an OIDC JWT or JWT-SVID the identity layer accepts, or a Mayfly access token;
//! - `…:id_token`: an OIDC JWT;
//! - `…:access_token`: a Mayfly access token, only if it was issued for this broker
//!   (`aud` = the broker's issuer) and its lease is active: a token issued for a resource
//!   server cannot be exchanged by that server. Its `act` chain is carried on, and the new
//!   token never outlives it.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::auth::{Principal, Proven, WorkloadClaims};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Identity, LeaseSelector, LeaseState, RevocationReason, Target};
use mayfly_core::{OffsetDateTime, Uuid};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::broker::{self, Actor, BrokerError, Exchange, GrantOutcome, GrantRequest};
use crate::state::AppState;
use crate::token::AccessTokenClaims;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

/// The one grant type offered (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Token type identifiers (RFC 8693 §3).
pub const TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
pub const TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// How a Mayfly access token presented as a subject or actor token shows as a credential
/// (`principal.method` in policy).
const MAYFLY_TOKEN_METHOD: &str = "mayfly-token";

/// An RFC 6749 §5.2 error answer. The description never contains a presented token.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    /// A fresh server nonce to send as `DPoP-Nonce` (with `use_dpop_nonce`).
    pub dpop_nonce: Option<String>,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            dpop_nonce: None,
        }
    }
    fn with_status(
        status: StatusCode,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        OAuthError {
            status,
            ..OAuthError::new(error, description)
        }
    }
    fn invalid_request(description: impl Into<String>) -> Self {
        OAuthError::new("invalid_request", description)
    }
    fn invalid_grant(description: impl Into<String>) -> Self {
        OAuthError::new("invalid_grant", description)
    }
}

/// The body of an error answer (RFC 6749 §5.2).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_grant`, `invalid_scope`, `invalid_target`,
    /// `unauthorized_client`, `unsupported_grant_type`, `invalid_dpop_proof`,
    /// `use_dpop_nonce`, `temporarily_unavailable` or `server_error`.
    pub error: String,
    pub error_description: String,
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = OAuthErrorBody {
            error: self.error.to_string(),
            error_description: self.description,
        };
        let mut response = (self.status, Json(body)).into_response();
        no_store(response.headers_mut());
        if let Some(nonce) = self.dpop_nonce.and_then(|n| HeaderValue::from_str(&n).ok()) {
            response.headers_mut().insert("dpop-nonce", nonce);
        }
        response
    }
}

/// Token answers must not be cached (RFC 6749 §5.1).
fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

impl From<BrokerError> for OAuthError {
    fn from(e: BrokerError) -> Self {
        use BrokerError as B;
        match &e {
            B::Invalid { field, .. } => match field.as_str() {
                "scope" => OAuthError::new("invalid_scope", e.to_string()),
                "audience" | "target" => OAuthError::new("invalid_target", e.to_string()),
                _ => OAuthError::invalid_request(e.to_string()),
            },
            B::NotFound { what: "target", .. } => OAuthError::new("invalid_target", e.to_string()),
            B::NotFound { .. } => OAuthError::invalid_grant(e.to_string()),
            B::Forbidden {
                code: "delegation_denied",
                ..
            } => OAuthError::new("unauthorized_client", e.to_string()),
            B::Forbidden { .. } => OAuthError::invalid_grant(e.to_string()),
            B::Core(_) | B::Policy(mayfly_core::policy::PolicyError::BadRequest { .. }) => {
                OAuthError::invalid_request(e.to_string())
            }
            B::Store(mayfly_core::store::StoreError::Unavailable(_)) | B::Target(_) => {
                tracing::warn!(error = %e, "token exchange could not be completed");
                OAuthError::with_status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the broker cannot complete this now; retry",
                )
            }
            _ => {
                tracing::error!(error = %e, "token exchange failed");
                OAuthError::with_status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "internal error; see the server log",
                )
            }
        }
    }
}

/// The form of a token request (`application/x-www-form-urlencoded`). Each parameter at
/// most once; unknown parameters are ignored (RFC 6749 §3.2).
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `urn:ietf:params:oauth:grant-type:token-exchange` (the only grant offered).
    pub grant_type: String,
    /// The workload's own credential: an OIDC JWT, a JWT-SVID, or a Mayfly access token
    /// issued for this broker.
    pub subject_token: Option<String>,
    /// `urn:ietf:params:oauth:token-type:jwt`, `…:id_token` or `…:access_token`.
    pub subject_token_type: Option<String>,
    /// The credential of whoever acts for the subject (an agent for a service); the issued
    /// token carries it in `act`.
    pub actor_token: Option<String>,
    /// Required with `actor_token`; the same types as `subject_token_type`.
    pub actor_token_type: Option<String>,
    /// The target: its name, or a token target's `audience` setting.
    pub audience: Option<String>,
    /// The target as a URI (a token target's `audience` setting) or its name.
    pub resource: Option<String>,
    /// Space-separated scopes (the target's actions); default all, narrowed by policy.
    pub scope: Option<String>,
    /// `urn:ietf:params:oauth:token-type:access_token` or `…:jwt` (what is issued anyway).
    pub requested_token_type: Option<String>,
    /// Mayfly: why access is needed (required).
    pub purpose: Option<String>,
    /// Mayfly: the task this access serves (required); revocation by task ends it.
    pub task: Option<String>,
    /// Mayfly: requested lifetime (`90s`, `15m`); default the target's `default_ttl`.
    pub ttl: Option<String>,
}

/// A successful exchange (RFC 8693 §2.2.1).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// An RFC 9068 JWT access token whose `jti` is its lease.
    pub access_token: String,
    /// `urn:ietf:params:oauth:token-type:access_token`.
    pub issued_token_type: String,
    /// `Bearer`, or `DPoP` for a token bound to a DPoP key.
    pub token_type: String,
    /// Seconds until it expires (the granted TTL).
    pub expires_in: i64,
    /// The scopes policy allowed, space-separated.
    pub scope: String,
}

/// Reads a form body: the right content type, within the body limit, each parameter
/// once. A repeated parameter is refused rather than guessed at (RFC 6749 §3.2).
async fn read_form(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<BTreeMap<String, String>, OAuthError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(OAuthError::invalid_request(
            "expected Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let bytes = axum::body::to_bytes(body, crate::BODY_LIMIT)
        .await
        .map_err(|_| {
            OAuthError::with_status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                format!(
                    "request body too large or incomplete: at most {} bytes",
                    crate::BODY_LIMIT
                ),
            )
        })?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
        .map_err(|_| OAuthError::invalid_request("the body is not a valid form"))?;
    let mut params = BTreeMap::new();
    for (key, value) in pairs {
        if params.contains_key(&key) {
            return Err(OAuthError::invalid_request(format!(
                "parameter {key:?} is repeated; each parameter may appear once"
            )));
        }
        params.insert(key, value);
    }
    Ok(params)
}

/// A token request's parameters, each taken once.
struct Params(BTreeMap<String, String>);

impl Params {
    /// A parameter; empty counts as absent (RFC 6749 §3.2).
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
    fn required(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("{name} is required")))
    }
}

/// A proven subject or actor token.
struct Proved {
    principal: Principal,
    identity: Identity,
    /// The `act` chain of a Mayfly token (prior actors), if any.
    act: Option<serde_json::Value>,
    /// When a Mayfly token expires: the new token may not outlive it.
    not_after: Option<OffsetDateTime>,
}

/// Proves a subject or actor token of the stated type (`which` names the parameter).
async fn prove(
    state: &AppState,
    token: &str,
    token_type: &str,
    which: &str,
) -> Result<Proved, OAuthError> {
    if ![TYPE_JWT, TYPE_ID_TOKEN, TYPE_ACCESS_TOKEN].contains(&token_type) {
        return Err(OAuthError::invalid_request(format!(
            "{which}_type {token_type:?} is not accepted; use {TYPE_JWT}, {TYPE_ID_TOKEN} or {TYPE_ACCESS_TOKEN}"
        )));
    }
    // A token this broker signed is checked here (its lease decides); anything else is
    // for the identity layer.
    if let Ok(claims) = state.keys.verify::<AccessTokenClaims>(token) {
        if token_type == TYPE_ID_TOKEN {
            return Err(OAuthError::invalid_request(format!(
                "{which} is a Mayfly access token, not an id_token"
            )));
        }
        return prove_mayfly_token(state, claims, which).await;
    }
    if token_type == TYPE_ACCESS_TOKEN {
        return Err(OAuthError::invalid_grant(format!(
            "{which}: the only access tokens accepted are Mayfly's own, and this is not one"
        )));
    }
    let (principal, identity) = crate::auth::authenticate(state, Some(token))
        .await
        .map_err(|e| match e {
            mayfly_core::auth::AuthRejection::Unavailable(_) => OAuthError::with_status(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "authentication is unavailable; retry",
            ),
            other => OAuthError::invalid_grant(format!("{which}: {other}")),
        })?;
    let Some(identity) = identity else {
        return Err(OAuthError::invalid_grant(format!(
            "{which}: operator tokens cannot be exchanged; present a workload credential"
        )));
    };
    if token_type == TYPE_ID_TOKEN
        && !matches!(&principal, Principal::Workload { claims, .. } if claims.method == "oidc")
    {
        return Err(OAuthError::invalid_request(format!(
            "{which} is not an OIDC id_token; use {TYPE_JWT}"
        )));
    }
    Ok(Proved {
        principal,
        identity,
        act: None,
        not_after: None,
    })
}

async fn prove_mayfly_token(
    state: &AppState,
    claims: AccessTokenClaims,
    which: &str,
) -> Result<Proved, OAuthError> {
    let now = mayfly_core::now();
    if claims.exp <= now.unix_timestamp() {
        return Err(OAuthError::invalid_grant(format!("{which} has expired")));
    }
    if claims.aud != state.issuer {
        return Err(OAuthError::invalid_grant(format!(
            "{which} was issued for {:?}; only tokens issued for this broker ({:?}) can be exchanged",
            claims.aud, state.issuer
        )));
    }
    if claims.cnf.is_some() {
        // Binding checks for exchanged tokens are not offered: refuse rather than let a
        // stolen bound token be exchanged for an unbound one.
        return Err(OAuthError::invalid_grant(format!(
            "{which} is bound to a key (cnf); bound tokens cannot be exchanged"
        )));
    }
    let active = match claims.jti.parse::<Uuid>() {
        Ok(lease) => state
            .store
            .get_lease(lease)
            .await
            .map_err(BrokerError::from)?
            .is_some_and(|l| l.state == LeaseState::Active && l.expires_at > now),
        Err(_) => false,
    };
    if !active {
        return Err(OAuthError::invalid_grant(format!(
            "{which} has been revoked or has expired"
        )));
    }
    let proven = Proven::Workload(WorkloadClaims {
        identity: claims.sub.clone(),
        method: MAYFLY_TOKEN_METHOD.into(),
        issuer: state.issuer.clone(),
        subject: claims.sub.clone(),
        attributes: BTreeMap::new(),
        expires_at: Some(claims.exp),
    });
    let (principal, identity) = crate::auth::bind(state, proven)
        .await
        .map_err(|e| OAuthError::invalid_grant(format!("{which}: {e}")))?;
    let identity =
        identity.ok_or_else(|| OAuthError::invalid_grant(format!("{which}: no identity")))?;
    Ok(Proved {
        principal,
        identity,
        act: claims.act,
        not_after: OffsetDateTime::from_unix_timestamp(claims.exp).ok(),
    })
}

/// The identities named in an `act` chain, nearest first.
fn chain_of(act: Option<&serde_json::Value>) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = act;
    while let Some(a) = next {
        match a.get("sub").and_then(|s| s.as_str()) {
            Some(sub) => out.push(sub.to_string()),
            None => break,
        }
        next = a.get("act");
    }
    out
}

/// The target named by `audience` and/or `resource`: a target's name, or the `audience`
/// setting of a token target. Both given must name the same one.
async fn target_named(state: &AppState, params: &Params) -> Result<Target, OAuthError> {
    let mut found: Option<Target> = None;
    for which in ["audience", "resource"] {
        let Some(value) = params.get(which) else {
            continue;
        };
        let name = resolve_target(state, value).await?.ok_or_else(|| {
            OAuthError::new(
                "invalid_target",
                format!("{which} {value:?} names no target of this broker"),
            )
        })?;
        if let Some(other) = &found {
            if other.name != name.name {
                return Err(OAuthError::new(
                    "invalid_target",
                    "audience and resource name different targets; a token is for one",
                ));
            }
        }
        found = Some(name);
    }
    found.ok_or_else(|| {
        OAuthError::invalid_request("audience or resource is required: the target the token is for")
    })
}

async fn resolve_target(state: &AppState, value: &str) -> Result<Option<Target>, OAuthError> {
    if mayfly_core::validate::name("target", value).is_ok() {
        if let Some(t) = state
            .store
            .get_target(value)
            .await
            .map_err(BrokerError::from)?
        {
            return Ok(Some(t));
        }
    }
    let targets = state
        .store
        .list_targets()
        .await
        .map_err(BrokerError::from)?;
    Ok(targets.into_iter().find(|t| {
        t.kind == "token" && t.settings.get("audience").and_then(|a| a.as_str()) == Some(value)
    }))
}

/// RFC 8693 token exchange; the only grant type offered.
#[utoipa::path(post, path = "/oauth2/token", tag = "public",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "the issued token (RFC 8693 §2.2.1)", body = TokenResponse),
        (status = 400, description = "RFC 6749 §5.2 error", body = OAuthErrorBody),
        (status = 413, description = "request body too large", body = OAuthErrorBody),
        (status = 500, description = "internal error", body = OAuthErrorBody),
        (status = 503, description = "the store or a backend is unavailable", body = OAuthErrorBody),
    ))]
pub async fn token(State(state): State<AppState>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut subject: Option<Principal> = None;
    match exchange(&state, &parts, body, &mut subject).await {
        Ok(response) => {
            let mut response = Json(response).into_response();
            no_store(response.headers_mut());
            response
        }
        Err(Handled::Audited(e)) => e.into_response(),
        Err(Handled::NotAudited(e)) => {
            audit_rejection(&state, subject.as_ref(), &e).await;
            e.into_response()
        }
    }
}

/// Whether a refusal has been audited already (by the broker, which records every
/// refusal it makes), so each bad request is one audit entry.
enum Handled {
    Audited(OAuthError),
    NotAudited(OAuthError),
}

impl From<OAuthError> for Handled {
    fn from(e: OAuthError) -> Self {
        Handled::NotAudited(e)
    }
}

async fn exchange(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
    subject_seen: &mut Option<Principal>,
) -> Result<TokenResponse, Handled> {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let params = Params(read_form(&parts.headers, body).await?);
    match params.get("grant_type") {
        None => return Err(OAuthError::invalid_request("grant_type is required").into()),
        Some(TOKEN_EXCHANGE) => {}
        Some(g @ ("client_credentials" | "password")) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("{g} is not offered: workloads hold no client secrets; exchange the credential your platform issued (grant_type={TOKEN_EXCHANGE})"),
            )
            .into())
        }
        Some(_) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("only {TOKEN_EXCHANGE} is offered"),
            )
            .into())
        }
    }
    if let Some(t) = params.get("requested_token_type") {
        if t != TYPE_ACCESS_TOKEN && t != TYPE_JWT {
            return Err(OAuthError::invalid_request(format!(
                "requested_token_type {t:?}: only access tokens ({TYPE_ACCESS_TOKEN}) are issued"
            ))
            .into());
        }
    }
    let subject_token = params.required("subject_token")?;
    let subject_type = params.required("subject_token_type")?;
    let actor = match (params.get("actor_token"), params.get("actor_token_type")) {
        (Some(token), Some(kind)) => Some((token, kind)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(OAuthError::invalid_request(
                "actor_token_type is required with actor_token",
            )
            .into())
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_request("actor_token_type without actor_token").into())
        }
    };
    let purpose = params.required("purpose")?.to_string();
    let task = params.required("task")?.to_string();
    let ttl = match params.get("ttl") {
        Some(text) => Some(
            text.parse::<Ttl>()
                .map_err(|e| OAuthError::invalid_request(format!("ttl: {e}")))?,
        ),
        None => None,
    };
    let mut scopes: Vec<String> = Vec::new();
    for s in params
        .get("scope")
        .unwrap_or_default()
        .split_ascii_whitespace()
    {
        if !scopes.iter().any(|have| have == s) {
            scopes.push(s.to_string());
        }
    }

    let subject = prove(state, subject_token, subject_type, "subject_token").await?;
    *subject_seen = Some(subject.principal.clone());
    let target = target_named(state, &params).await?;

    let mut actors = Vec::new();
    let mut not_after = subject.not_after;
    let mut act = subject.act.clone();
    if let Some((token, kind)) = actor {
        let proved = prove(state, token, kind, "actor_token").await?;
        if proved.identity.id == subject.identity.id {
            return Err(OAuthError::invalid_request(
                "actor_token names the subject itself; send no actor_token to act as yourself",
            )
            .into());
        }
        not_after = match (not_after, proved.not_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut claim = serde_json::Map::new();
        claim.insert("sub".into(), proved.identity.id.clone().into());
        if let Some(prior) = act.take() {
            claim.insert("act".into(), prior);
        }
        act = Some(serde_json::Value::Object(claim));
        actors.push(Actor {
            principal: proved.principal,
            identity: proved.identity,
        });
    }
    // Earlier actors of the chain are decided again for this target: their delegation
    // was allowed for the token they hold, not for whatever it is exchanged for.
    for id in chain_of(subject.act.as_ref()) {
        let identity = load_usable(state, &id).await?;
        let principal = Principal::workload(
            WorkloadClaims {
                identity: id.clone(),
                method: MAYFLY_TOKEN_METHOD.into(),
                issuer: state.issuer.clone(),
                subject: id.clone(),
                attributes: BTreeMap::new(),
                expires_at: None,
            },
            &identity,
        );
        if actors.iter().any(|a: &Actor| a.identity.id == id) || id == subject.identity.id {
            return Err(OAuthError::invalid_request(format!(
                "identity {id:?} appears twice in the delegation chain"
            ))
            .into());
        }
        actors.push(Actor {
            principal,
            identity,
        });
    }

    // The token is bound to the key of whoever holds it: the nearest actor, else the
    // subject.
    let holder = actors
        .first()
        .map_or(subject.identity.id.as_str(), |a| a.identity.id.as_str());
    let cnf = key_binding(state, parts, &target, holder).await?;
    let caller = Caller(subject.principal, Some(subject.identity));
    let request = GrantRequest {
        identity: None,
        target: target.name,
        action: None,
        purpose,
        task,
        ttl,
        context: serde_json::Map::new(),
    };
    let exchange = Exchange {
        scopes,
        actors,
        act,
        cnf,
        not_after,
    };
    let outcome = broker::exchange(state, &caller, peer, request, &exchange).await;
    match outcome {
        Ok(GrantOutcome::Issued(issued)) => {
            let credential = &issued.credential;
            let access_token = credential
                .secrets
                .get("access_token")
                .map(|s| s.expose().to_string())
                .unwrap_or_default();
            let public = |key: &str| credential.public.get(key).cloned();
            Ok(TokenResponse {
                access_token,
                issued_token_type: TYPE_ACCESS_TOKEN.into(),
                token_type: public("token_type")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| "Bearer".into()),
                expires_in: public("expires_in").and_then(|v| v.as_i64()).unwrap_or(0),
                scope: issued.grant.action.clone(),
            })
        }
        // Recorded as a denied grant (request and decision in the audit chain).
        Ok(GrantOutcome::Denied { decision, .. }) => Err(Handled::Audited(OAuthError::new(
            "invalid_scope",
            format!(
                "denied by policy: {}",
                if decision.reasons.is_empty() {
                    "no policy permits it".to_string()
                } else {
                    decision.reasons.join("; ")
                }
            ),
        ))),
        Ok(GrantOutcome::PendingApproval { .. }) => Err(Handled::Audited(
            BrokerError::Internal("an exchange came back pending approval".into()).into(),
        )),
        Err(e) => Err(Handled::Audited(e.into())),
    }
}

/// The key an issued token is bound to (`cnf`): a DPoP proof's key (RFC 9449), else the
/// X.509-SVID of the connection when it proves the holder (RFC 8705). A target with
/// `settings.proof_of_possession: true` issues no unbound token; with
/// `settings.dpop_nonce: true` its DPoP proofs must carry a server nonce.
async fn key_binding(
    state: &AppState,
    parts: &axum::http::request::Parts,
    target: &Target,
    holder: &str,
) -> Result<Option<serde_json::Value>, OAuthError> {
    let setting = |key: &str| target.settings.get(key).and_then(|v| v.as_bool()) == Some(true);
    let mut proofs = parts.headers.get_all("dpop").iter();
    let now = mayfly_core::now().unix_timestamp();
    if let Some(proof) = proofs.next() {
        let refuse = |e: crate::dpop::DpopError| OAuthError {
            dpop_nonce: (e == crate::dpop::DpopError::UseNonce).then(|| state.dpop.nonce(now)),
            ..OAuthError::new(e.code(), e.to_string())
        };
        if proofs.next().is_some() {
            return Err(refuse(crate::dpop::DpopError::Malformed(
                "more than one DPoP header".into(),
            )));
        }
        let proof = proof
            .to_str()
            .map_err(|_| refuse(crate::dpop::DpopError::Malformed("not ASCII".into())))?;
        let htu = format!("{}/oauth2/token", state.issuer.trim_end_matches('/'));
        let expect = crate::dpop::Expect {
            htm: "POST",
            htu: &htu,
            access_token: None,
            require_nonce: setting("dpop_nonce"),
        };
        let proven = state.dpop.verify(proof, &expect, now).map_err(refuse)?;
        return Ok(Some(serde_json::json!({ "jkt": proven.jkt })));
    }
    if let (Some(chain), Some(verifier)) = (
        parts.extensions.get::<crate::tls::PeerCertificates>(),
        &state.x509,
    ) {
        let proves_holder = verifier
            .authenticate_chain(&chain.0, rustls_pki_types::UnixTime::now())
            .is_ok_and(|claims| claims.identity == holder);
        if let (true, Some(leaf)) = (proves_holder, chain.0.first()) {
            let thumbprint = B64.encode(ring::digest::digest(&ring::digest::SHA256, leaf.as_ref()));
            return Ok(Some(serde_json::json!({ "x5t#S256": thumbprint })));
        }
    }
    if setting("proof_of_possession") {
        return Err(OAuthError::invalid_request(format!(
            "target {:?} issues only sender-constrained tokens: send a DPoP proof, or connect with the holder's X.509-SVID",
            target.name
        )));
    }
    Ok(None)
}

/// For introspection: whether a DPoP proof a resource server forwards (`dpop_proof`,
/// with the `htm` and `htu` of the request it received) was made with the key `token` is
/// bound to. A token not bound to a DPoP key passes; a bound one fails on any mismatch:
/// another key, a replayed proof, another URL.
pub fn dpop_binding_holds(
    state: &AppState,
    claims: &AccessTokenClaims,
    token: &str,
    proof: Option<&str>,
    htm: Option<&str>,
    htu: Option<&str>,
) -> bool {
    let Some(jkt) = claims
        .cnf
        .as_ref()
        .and_then(|c| c.get("jkt"))
        .and_then(|j| j.as_str())
    else {
        return true;
    };
    let (Some(proof), Some(htm), Some(htu)) = (proof, htm, htu) else {
        // Without a proof the answer says `cnf`; the resource server checks it itself.
        return true;
    };
    let expect = crate::dpop::Expect {
        htm,
        htu,
        access_token: Some(token),
        require_nonce: false,
    };
    state
        .dpop
        .verify(proof, &expect, mayfly_core::now().unix_timestamp())
        .is_ok_and(|p| p.jkt == jkt)
}

async fn load_usable(state: &AppState, id: &str) -> Result<Identity, OAuthError> {
    let identity = state
        .store
        .get_identity(id)
        .await
        .map_err(BrokerError::from)?
        .ok_or_else(|| OAuthError::invalid_grant(format!("actor {id:?} no longer exists")))?;
    if !identity.enabled || identity.is_usable_at(mayfly_core::now()).is_err() {
        return Err(OAuthError::invalid_grant(format!(
            "actor {id:?} is disabled or expired"
        )));
    }
    Ok(identity)
}

/// One audit entry for a refused token request the broker did not see (bad form, bad
/// token, unknown target). Never the token: only the error and who it was, if known.
async fn audit_rejection(state: &AppState, subject: Option<&Principal>, e: &OAuthError) {
    state
        .metrics
        .grant(crate::metrics::UNLABELLED_TARGET, "rejected");
    let actor = subject.map_or_else(|| "anonymous".to_string(), Principal::actor);
    let mut event = AuditDraft::new(AuditKind::GrantRejected, actor).detail(serde_json::json!({
        "endpoint": "/oauth2/token",
        "status": e.status.as_u16(),
        "code": e.error,
        "reason": e.description,
    }));
    event.identity = subject.and_then(|p| p.identity().map(str::to_string));
    if let Err(err) = state.store.append_audit(vec![event]).await {
        tracing::warn!(error = %err, "could not audit a refused token request");
    }
}

/// The form of a revocation request (RFC 7009 §2.1).
#[derive(Debug, Deserialize, ToSchema)]
pub struct RevokeTokenRequest {
    pub token: String,
    /// Ignored: only access tokens exist.
    pub token_type_hint: Option<String>,
}

/// RFC 7009 revocation: the holder ends its token early. Holding the token is the
/// credential (workloads have no client secret), as with presenting it; for a DPoP-bound
/// token, holding its key too: the request must carry a proof of it (`ath` included),
/// so a copied bound token cannot even be revoked by whoever copied it. Its lease ends
/// with reason `holder_revoked`, so it introspects inactive at once. A token that is not
/// (or no longer) valid is answered 200 too (§2.2): the answer reveals nothing.
#[utoipa::path(post, path = "/oauth2/revoke", tag = "public",
    request_body(content = RevokeTokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "revoked, or was not valid", body = Object),
        (status = 400, description = "RFC 6749 §5.2 error", body = OAuthErrorBody),
        (status = 413, description = "request body too large", body = OAuthErrorBody),
        (status = 500, description = "internal error", body = OAuthErrorBody),
        (status = 503, description = "the store is unavailable", body = OAuthErrorBody),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    match revoke_token(&state, &headers, body).await {
        Ok(()) => {
            let mut response = Json(serde_json::json!({})).into_response();
            no_store(response.headers_mut());
            response
        }
        Err(e) => e.into_response(),
    }
}

async fn revoke_token(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(), OAuthError> {
    let params = Params(read_form(headers, body).await?);
    let token = params.required("token")?;
    let Ok(claims) = state.keys.verify::<AccessTokenClaims>(token) else {
        return Ok(());
    };
    let Ok(lease) = claims.jti.parse::<Uuid>() else {
        return Ok(());
    };
    if let Some(jkt) = claims
        .cnf
        .as_ref()
        .and_then(|c| c.get("jkt"))
        .and_then(|j| j.as_str())
    {
        let now = mayfly_core::now().unix_timestamp();
        let refuse = |e: crate::dpop::DpopError| OAuthError::new(e.code(), e.to_string());
        let mut proofs = headers.get_all("dpop").iter();
        let (Some(proof), None) = (proofs.next(), proofs.next()) else {
            return Err(refuse(crate::dpop::DpopError::Malformed(
                "a DPoP-bound token is revoked with one DPoP proof of its key".into(),
            )));
        };
        let proof = proof
            .to_str()
            .map_err(|_| refuse(crate::dpop::DpopError::Malformed("not ASCII".into())))?;
        let htu = format!("{}/oauth2/revoke", state.issuer.trim_end_matches('/'));
        let expect = crate::dpop::Expect {
            htm: "POST",
            htu: &htu,
            access_token: Some(token),
            require_nonce: false,
        };
        let proven = state.dpop.verify(proof, &expect, now).map_err(refuse)?;
        if proven.jkt != jkt {
            return Err(refuse(crate::dpop::DpopError::WrongKey));
        }
    }
    let outcome = state
        .store
        .revoke(
            &LeaseSelector::Lease(lease),
            RevocationReason::HolderRevoked,
            &format!("holder:{}", claims.sub),
            mayfly_core::now(),
        )
        .await
        .map_err(BrokerError::from)?;
    state.record_revocation(RevocationReason::HolderRevoked.as_str(), outcome);
    Ok(())
}

/// The authorization server's metadata (RFC 8414), also the base of the OpenID
/// configuration, so the two never disagree.
pub fn metadata(state: &AppState) -> serde_json::Map<String, serde_json::Value> {
    let iss = state.issuer.trim_end_matches('/');
    let serde_json::Value::Object(map) = serde_json::json!({
        "issuer": state.issuer,
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "token_endpoint": format!("{iss}/oauth2/token"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "grant_types_supported": [TOKEN_EXCHANGE],
        // No authorization endpoint: nothing is granted through a browser redirect.
        "response_types_supported": [],
        // Workloads hold no client secret: the subject token is the credential.
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["bearer"],
        "access_token_signing_alg_values_supported": ["EdDSA"],
        "dpop_signing_alg_values_supported": crate::dpop::ALGORITHMS,
        "tls_client_certificate_bound_access_tokens": state.x509.is_some(),
        "token_types_supported": [TYPE_JWT, TYPE_ID_TOKEN, TYPE_ACCESS_TOKEN],
        "service_documentation": format!("{iss}/openapi.json"),
    }) else {
        return serde_json::Map::new();
    };
    map
}

#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "public", responses((status = 200, description = "RFC 8414 authorization server metadata", body = Object)))]
pub async fn authorization_server(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::Value::Object(metadata(&state)))
}
