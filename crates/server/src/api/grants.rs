//! `/v1/grants`: request access (decided by policy at request time), inspect, revoke.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Grant, GrantState, Lease, LeaseSelector, RevocationReason};
use mayfly_core::policy::Decision;
use mayfly_core::provider::IssuedCredential;
use mayfly_core::store::{GrantFilter, RevokeOutcome};
use mayfly_core::Uuid;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::auth::Caller;
pub use crate::broker::GrantRequest;
use crate::broker::{self, GrantOutcome};
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantResponse {
    pub grant: Grant,
    pub lease: Option<Lease>,
    /// The credential, returned once and never stored (`access_token`, `token_type`, …).
    #[schema(value_type = Option<Object>)]
    pub credential: Option<serde_json::Value>,
}

/// The one place a credential's secret parts are exposed: into the response body.
pub fn credential_json(c: &IssuedCredential) -> serde_json::Value {
    let mut out = c.public.clone();
    for (k, v) in &c.secrets {
        out.insert(k.clone(), serde_json::Value::String(v.expose().to_string()));
    }
    serde_json::Value::Object(out)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExplainResponse {
    pub identity: String,
    pub target: String,
    pub action: String,
    pub decision: Decision,
    /// What an allowed request would be granted.
    pub granted_ttl: Option<Ttl>,
}

/// Evaluates a grant request exactly as `POST /v1/grants` would, and records nothing: the
/// policies that decided, and why.
#[utoipa::path(post, path = "/v1/policy/explain", request_body = GrantRequest,
    responses((status = 200, description = "the decision, recording nothing", body = ExplainResponse), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such identity or target", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn explain(
    State(state): State<AppState>,
    caller: Caller,
    peer: PeerIp,
    ApiJson(body): ApiJson<GrantRequest>,
) -> Result<Json<ExplainResponse>, ApiError> {
    let explained = broker::explain(&state, &caller, peer.0, &body).await?;
    Ok(Json(ExplainResponse {
        identity: explained.identity,
        target: explained.target,
        action: explained.action,
        decision: explained.decision,
        granted_ttl: explained.granted_ttl,
    }))
}

/// The caller's IP from the connection (absent when served without connection info).
pub struct PeerIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let info = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(PeerIp(info.map(|i| i.0.ip())))
    }
}

#[utoipa::path(post, path = "/v1/grants", request_body = GrantRequest, responses(
    (status = 201, description = "issued", body = GrantResponse),
    (status = 202, description = "waiting for approval", body = GrantResponse),
    (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "denied by policy, or the identity is disabled or expired", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such identity or target", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json"), (status = 502, description = "the target failed or is unreachable", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn request(
    State(state): State<AppState>,
    caller: Caller,
    peer: PeerIp,
    headers: axum::http::HeaderMap,
    body: Result<ApiJson<GrantRequest>, ApiError>,
) -> Result<Response, ApiError> {
    // Even a request that does not parse is audited (and nothing else is stored).
    let body = match body {
        Ok(ApiJson(body)) => body,
        Err(e) => {
            broker::record_rejection(&state, &caller, None, &e).await;
            return Err(e);
        }
    };
    let body = match with_task_token(&state, &headers, body) {
        Ok(body) => body,
        Err((body, e)) => {
            broker::record_rejection(&state, &caller, Some(&body), &e).await;
            return Err(e);
        }
    };
    let outcome = broker::request_grant(&state, &caller, peer.0, body)
        .await
        .map_err(|e| ApiError::from(e).for_caller(&caller.0))?;
    Ok(match outcome {
        GrantOutcome::Issued(issued) => {
            let broker::Issued {
                grant,
                lease,
                credential,
            } = *issued;
            (
                StatusCode::CREATED,
                Json(GrantResponse {
                    credential: Some(credential_json(&credential)),
                    grant,
                    lease: Some(lease),
                }),
            )
                .into_response()
        }
        GrantOutcome::PendingApproval { grant } => (
            StatusCode::ACCEPTED,
            Json(GrantResponse {
                grant,
                lease: None,
                credential: None,
            }),
        )
            .into_response(),
        GrantOutcome::Denied { grant, decision } => denied(grant, &decision),
    })
}

/// A `Txn-Token` header makes its task the grant's: the token must be this broker's,
/// unexpired, and name the same task as `task` when both are sent. That the task is open
/// and the identity's own is the broker's check, against the task record.
#[allow(clippy::result_large_err)] // the request goes back with the error, to be audited
fn with_task_token(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    mut body: GrantRequest,
) -> Result<GrantRequest, (GrantRequest, ApiError)> {
    use crate::task_token::{self, TaskTokenError};
    let Some(value) = headers.get(task_token::HEADER) else {
        return Ok(body);
    };
    let bad = |detail: String| ApiError::BadRequest {
        field: Some("Txn-Token".into()),
        detail: format!("Txn-Token header: {detail}"),
    };
    let Ok(token) = value.to_str() else {
        return Err((body, bad("is not a JWT".into())));
    };
    let claims = match task_token::check(&state.keys, &state.issuer, token, mayfly_core::now()) {
        Ok(claims) => claims,
        Err(e @ TaskTokenError::Expired(_)) => {
            let e = ApiError::Forbidden {
                code: "task_ended",
                detail: format!("the task token {e}"),
            };
            return Err((body, e));
        }
        Err(e) => return Err((body, bad(e.to_string()))),
    };
    let txn = claims.txn.to_string();
    if body.task.is_empty() {
        body.task = txn;
    } else if body.task != txn {
        let e = ApiError::field(
            "task",
            format!(
                "is {:?} but the Txn-Token header is for task {txn}",
                body.task
            ),
        );
        return Err((body, e));
    }
    Ok(body)
}

fn denied(grant: Grant, decision: &Decision) -> Response {
    let reasons = if decision.reasons.is_empty() {
        "no policy permits it".to_string()
    } else {
        decision.reasons.join("; ")
    };
    let body = serde_json::json!({
        "type": "urn:mayfly:problem:denied",
        "title": "Forbidden",
        "status": 403,
        "detail": format!("denied by policy: {reasons}"),
        "code": "denied",
        "grant_id": grant.id,
        "decision": decision,
    });
    let mut response = (StatusCode::FORBIDDEN, Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/problem+json"),
    );
    response
}

#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GrantListQuery {
    pub identity: Option<String>,
    pub task: Option<String>,
    pub state: Option<GrantState>,
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/grants", params(GrantListQuery),
    responses((status = 200, description = "grants, newest first; a workload sees its own", body = [Grant])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<GrantListQuery>,
) -> Result<Json<Vec<Grant>>, ApiError> {
    let identity = match caller.0.identity() {
        Some(own) => Some(own.to_string()),
        None => q.identity,
    };
    let filter = GrantFilter {
        identity,
        task: q.task,
        state: q.state,
        limit: q.limit,
    };
    Ok(Json(state.store.list_grants(&filter).await?))
}

pub(crate) async fn load_grant(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Grant, ApiError> {
    Ok(broker::visible_grant(state, caller, id).await?)
}

/// A grant, with its approval request when it went through one.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantView {
    #[serde(flatten)]
    pub grant: Grant,
    /// Approvals so far, who is still needed, until when; or a break-glass review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<mayfly_core::model::ApprovalRecord>,
}

#[utoipa::path(get, path = "/v1/grants/{id}", params(("id" = Uuid, Path, description = "Grant id")),
    responses((status = 200, description = "the grant, with its approval request if it has one", body = GrantView), (status = 404, description = "no such grant", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<GrantView>, ApiError> {
    let grant = load_grant(&state, &caller, id).await?;
    let approval = state.store.get_approval(id).await?;
    Ok(Json(GrantView { grant, approval }))
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Defaults to `task_complete` for workloads and `admin` for operators.
    pub reason: Option<RevocationReason>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RevokeResponse {
    pub revoked: RevokeOutcome,
    /// How many leases ended, in all.
    pub total: u64,
}

fn reason_for(
    caller: &Caller,
    requested: Option<RevocationReason>,
) -> Result<RevocationReason, ApiError> {
    use RevocationReason::*;
    let reason = requested.unwrap_or(if caller.0.is_operator() {
        Admin
    } else {
        TaskComplete
    });
    let allowed: &[RevocationReason] = if caller.0.is_operator() {
        &[TaskComplete, TaskFailed, Timeout, Admin]
    } else {
        &[TaskComplete, TaskFailed, Timeout]
    };
    if allowed.contains(&reason) {
        Ok(reason)
    } else {
        Err(ApiError::field(
            "reason",
            format!(
                "{reason} is set by the broker itself; use one of: {}",
                allowed
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

/// Ends a grant's credential now. Revoking an already-ended grant succeeds with zero counts.
#[utoipa::path(post, path = "/v1/grants/{id}/revoke", params(("id" = Uuid, Path, description = "Grant id")), request_body = Option<RevokeRequest>,
    responses((status = 200, description = "revoked (zero counts if already ended)", body = RevokeResponse), (status = 404, description = "no such grant", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RevokeRequest>,
) -> Result<Json<RevokeResponse>, ApiError> {
    reason_for(&caller, body.reason)?;
    load_grant(&state, &caller, id).await?;
    revoke_selected(&state, &caller, LeaseSelector::Grant(id), body.reason).await
}

/// Revokes what `selector` names (the caller may already be known to see it), for the
/// reason asked or the caller's default, and counts it.
pub(crate) async fn revoke_selected(
    state: &AppState,
    caller: &Caller,
    selector: LeaseSelector,
    reason: Option<RevocationReason>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let reason = reason_for(caller, reason)?;
    let revoked = state
        .store
        .revoke(&selector, reason, &caller.0.actor(), mayfly_core::now())
        .await?;
    state.record_revocation(reason.as_str(), revoked);
    Ok(Json(RevokeResponse {
        total: revoked.total(),
        revoked,
    }))
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRevokeRequest {
    /// Every lease held for this task; a workload ends only its own leases in it.
    pub task: Option<String>,
    pub identity: Option<String>,
    /// The identities this person or team currently owns.
    pub owner: Option<String>,
    pub reason: Option<RevocationReason>,
    /// Every lease of this target.
    pub target: Option<String>,
    /// Every lease of the targets whose names start with this text.
    pub prefix: Option<String>,
}

/// The one field of a bulk revocation, and the leases it selects for this caller.
fn bulk_selector(caller: &Caller, body: BulkRevokeRequest) -> Result<LeaseSelector, ApiError> {
    let BulkRevokeRequest {
        task,
        identity,
        owner,
        target,
        prefix,
        reason: _,
    } = body;
    let given = [
        task.is_some(),
        identity.is_some(),
        owner.is_some(),
        target.is_some(),
        prefix.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ApiError::field(
            "task",
            "give exactly one of task, identity, owner, target or prefix",
        ));
    }
    // A workload may end its own task and nothing wider: the task's leases that are its.
    if let Some(own) = caller.0.identity() {
        return match task {
            Some(task) => Ok(LeaseSelector::IdentityTask {
                identity: own.to_string(),
                task,
            }),
            None => Err(ApiError::forbidden(
                "a workload may revoke only its own grants, leases and tasks",
            )),
        };
    }
    caller.require_operator()?;
    Ok(match (task, identity, owner, target, prefix) {
        (Some(t), ..) => LeaseSelector::Task(t),
        (_, Some(i), ..) => LeaseSelector::Identity(i),
        (_, _, Some(o), ..) => LeaseSelector::Owner(o),
        (_, _, _, Some(t), _) => LeaseSelector::Target(t),
        (.., Some(p)) => {
            // A name's own rules: an empty or odd prefix would select far more, or
            // nothing, without saying so.
            mayfly_core::validate::name("prefix", &p)?;
            LeaseSelector::TargetPrefix(p)
        }
        (None, None, None, None, None) => {
            return Err(ApiError::field("task", "nothing to revoke"));
        }
    })
}

/// Revokes everything held for a task, by an identity, by an owner's identities, of a
/// target, or of the targets whose names start with a prefix. A workload may revoke its
/// own leases in a task; everything else is for operators.
#[utoipa::path(post, path = "/v1/revoke", request_body = BulkRevokeRequest,
    responses((status = 200, description = "what was revoked", body = RevokeResponse), (status = 403, description = "a workload asked for more than its own task", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn bulk_revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BulkRevokeRequest>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let reason = body.reason;
    reason_for(&caller, reason)?;
    let selector = bulk_selector(&caller, body)?;
    revoke_selected(&state, &caller, selector, reason).await
}
