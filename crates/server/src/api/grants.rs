//! `/v1/grants`: request access (decided by policy at request time), inspect, revoke.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{
    Grant, GrantState, Identity, Lease, LeaseSelector, LeaseState, RevocationReason, Target,
};
use mayfly_core::policy::{Decision, Outcome, PolicyRequest};
use mayfly_core::provider::{IssueRequest, IssuedCredential, TargetAccess};
use mayfly_core::store::{GrantFilter, RevokeOutcome};
use mayfly_core::{validate, OffsetDateTime, Uuid};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The identity to grant to. Workloads may omit it (it is their own) and may not name
    /// another; operators must name it.
    pub identity: Option<String>,
    pub target: String,
    /// One of the target's actions; may be omitted when the target has exactly one.
    pub action: Option<String>,
    /// Why access is needed (at most 1 KiB).
    pub purpose: String,
    /// The task this access serves; revocation by task ends it.
    pub task: String,
    /// Requested lifetime; defaults to the target's `default_ttl`.
    pub ttl: Option<Ttl>,
    /// Extra facts for policy.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
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

struct Checked {
    identity: Identity,
    target: Target,
    action: String,
    ttl: Ttl,
}

async fn check(
    state: &AppState,
    caller: &Caller,
    body: &GrantRequest,
    now: OffsetDateTime,
) -> Result<Checked, ApiError> {
    let identity_id = match (caller.0.identity(), &body.identity) {
        (Some(own), None) => own.to_string(),
        (Some(own), Some(named)) if named == own => own.to_string(),
        (Some(own), Some(named)) => {
            return Err(ApiError::Forbidden {
                code: "not_your_identity",
                detail: format!("identity {own:?} may not request access for {named:?}"),
            })
        }
        (None, Some(named)) => named.clone(),
        (None, None) => {
            return Err(ApiError::field(
                "identity",
                "is required when an operator requests",
            ))
        }
    };
    validate::name("identity", &identity_id)?;
    validate::name("target", &body.target)?;
    validate::purpose(&body.purpose)?;
    validate::task(&body.task)?;
    validate::context(&body.context)?;

    // A workload's own identity was read moments ago to authenticate it.
    let identity = match &caller.1 {
        Some(own) if own.id == identity_id => own.clone(),
        _ => state
            .store
            .get_identity(&identity_id)
            .await?
            .ok_or(ApiError::NotFound {
                what: "identity",
                id: identity_id.clone(),
                field: Some("identity"),
            })?,
    };
    if let Err(why) = identity.is_usable_at(now) {
        return Err(ApiError::Forbidden {
            code: "identity_unusable",
            detail: format!("identity {:?}: {why}", identity.id),
        });
    }
    let target = state
        .store
        .get_target(&body.target)
        .await?
        .ok_or(ApiError::NotFound {
            what: "target",
            id: body.target.clone(),
            field: Some("target"),
        })?;
    let action = match &body.action {
        Some(a) if target.actions.contains(a) => a.clone(),
        Some(a) => {
            return Err(ApiError::field(
                "action",
                format!(
                    "{a:?} is not an action of target {:?}; it has: {}",
                    target.name,
                    target.actions.join(", ")
                ),
            ))
        }
        None if target.actions.len() == 1 => target.actions[0].clone(),
        None => {
            return Err(ApiError::field(
                "action",
                format!(
                    "is required; target {:?} has: {}",
                    target.name,
                    target.actions.join(", ")
                ),
            ))
        }
    };
    let ttl = body.ttl.unwrap_or(target.default_ttl);
    if ttl.as_secs() == 0 {
        return Err(ApiError::field("ttl", "must be greater than zero"));
    }
    if ttl > target.max_ttl {
        return Err(ApiError::field(
            "ttl",
            format!(
                "{ttl} exceeds target {:?}'s maximum of {}",
                target.name, target.max_ttl
            ),
        ));
    }
    Ok(Checked {
        identity,
        target,
        action,
        ttl,
    })
}

/// Audits a rejected request (nothing else is stored) and passes the error on.
async fn rejected(
    state: &AppState,
    caller: &Caller,
    body: Option<&GrantRequest>,
    error: ApiError,
) -> ApiError {
    state.metrics.grant("rejected");
    // Filed under the caller only: what the request named (another identity, a task) is
    // the caller's claim, kept in the detail, and must not place entries in someone
    // else's history. The chain bounds every string, so a huge name stays a short entry.
    let mut detail = serde_json::json!({
        "status": error.status().as_u16(),
        "code": error.code(),
        "field": error.field_name(),
        "reason": error.to_string(),
    });
    if let (Some(body), serde_json::Value::Object(map)) = (body, &mut detail) {
        map.insert("requested_identity".into(), body.identity.clone().into());
        map.insert("requested_target".into(), body.target.clone().into());
        map.insert("requested_task".into(), body.task.clone().into());
    }
    let mut event = AuditDraft::new(AuditKind::GrantRejected, caller.0.actor()).detail(detail);
    event.identity = caller.0.identity().map(str::to_string);
    if let Some(body) = body {
        // The task column only when the caller may file under it: an operator, or a
        // workload asking for itself.
        let own = caller.0.is_operator()
            || body
                .identity
                .as_deref()
                .is_none_or(|named| Some(named) == caller.0.identity());
        if own && validate::task(&body.task).is_ok() {
            event.task = Some(body.task.clone());
        }
    }
    if let Err(e) = state.store.append_audit(vec![event]).await {
        tracing::warn!(error = %e, "could not audit a rejected grant request");
    }
    error
}

/// Checks a request and asks policy, without recording anything.
async fn evaluate(
    state: &AppState,
    caller: &Caller,
    body: &GrantRequest,
    peer: &PeerIp,
    now: OffsetDateTime,
) -> Result<(Checked, serde_json::Value, Decision), ApiError> {
    let checked = check(state, caller, body, now).await?;
    if body.context.contains_key("source_ip") {
        return Err(ApiError::field(
            "context.source_ip",
            "is set by the broker from the connection; do not send it",
        ));
    }
    let mut context = body.context.clone();
    if let Some(ip) = peer.0 {
        context.insert(
            "source_ip".into(),
            serde_json::Value::String(ip.to_string()),
        );
    }
    let context = serde_json::Value::Object(context);
    let decision = state.policy.decide(&PolicyRequest {
        principal: &caller.0,
        identity: &checked.identity,
        target: &checked.target,
        action: &checked.action,
        purpose: &body.purpose,
        task: &body.task,
        requested_ttl: checked.ttl,
        context: &context,
        now,
    })?;
    Ok((checked, context, decision))
}

/// The TTL a grant gets and the lease's renewal cap: the minimum of the request, the
/// policy cap, the target's maximum and the time left until the identity expires (no
/// credential outlives the identity it was issued to).
struct Granted {
    ttl: Ttl,
    cap: Ttl,
    /// Set when the identity's expiry cut the TTL: said in the grant's decision.
    identity_cap: Option<String>,
}

fn granted_ttl(checked: &Checked, decision: &Decision, now: OffsetDateTime) -> Granted {
    let mut ttl = checked.ttl.min(checked.target.max_ttl);
    let mut cap = checked.target.max_ttl;
    if let Some(policy_cap) = decision.max_ttl {
        ttl = ttl.min(policy_cap);
        cap = cap.min(policy_cap);
    }
    let mut identity_cap = None;
    if let Some(expires) = checked.identity.expires_at {
        // `check` refused an identity already past its expiry, so this is at least 1 s.
        let left = Ttl::from_secs(
            u64::try_from((expires - now).whole_seconds())
                .unwrap_or(0)
                .max(1),
        );
        if left < ttl {
            identity_cap = Some(format!(
                "granted TTL {left} instead of {ttl}: identity {:?} expires at {}",
                checked.identity.id,
                rfc3339(expires).unwrap_or_default()
            ));
        }
        ttl = ttl.min(left);
        cap = cap.min(left);
    }
    Granted {
        ttl,
        cap,
        identity_cap,
    }
}

#[derive(Debug, Serialize, ToSchema)]
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
    let now = mayfly_core::now();
    let (checked, _, mut decision) = evaluate(&state, &caller, &body, &peer, now).await?;
    let granted = matches!(
        decision.outcome,
        Outcome::Allow | Outcome::RequireApproval { .. }
    )
    .then(|| {
        let granted = granted_ttl(&checked, &decision, now);
        decision.reasons.extend(granted.identity_cap);
        granted.ttl
    });
    Ok(Json(ExplainResponse {
        identity: checked.identity.id,
        target: checked.target.name,
        action: checked.action,
        decision,
        granted_ttl: granted,
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
    body: Result<ApiJson<GrantRequest>, ApiError>,
) -> Result<Response, ApiError> {
    // Even a request that does not parse is audited (and nothing else is stored).
    let body = match body {
        Ok(ApiJson(body)) => body,
        Err(e) => return Err(rejected(&state, &caller, None, e).await),
    };
    let now = mayfly_core::now();
    let (checked, context, mut decision) = match evaluate(&state, &caller, &body, &peer, now).await
    {
        Ok(v) => v,
        Err(e) => return Err(rejected(&state, &caller, Some(&body), e).await),
    };
    if decision.outcome != Outcome::Deny {
        decision
            .reasons
            .extend(granted_ttl(&checked, &decision, now).identity_cap);
    }
    let mut grant = Grant {
        id: Uuid::now_v7(),
        identity: checked.identity.id.clone(),
        owner: checked.identity.owner.clone(),
        target: checked.target.name.clone(),
        action: checked.action.clone(),
        purpose: body.purpose.clone(),
        task: body.task.clone(),
        requested_ttl: checked.ttl,
        granted_ttl: None,
        context,
        state: GrantState::Requested,
        revocation_reason: None,
        decision: serde_json::to_value(&decision).unwrap_or_default(),
        created_at: now,
        updated_at: now,
    };
    let actor = caller.0.actor();
    let requested = AuditDraft::new(AuditKind::GrantRequested, &actor)
        .for_grant(&grant)
        .detail(serde_json::json!({
            "action": grant.action, "purpose": grant.purpose, "requested_ttl": grant.requested_ttl, "context": grant.context,
        }));
    let decided = AuditDraft::new(AuditKind::GrantDecided, &actor)
        .for_grant(&grant)
        .detail(serde_json::json!({ "decision": decision }));

    match decision.outcome {
        Outcome::Deny => {
            grant.state = grant.state.transition(GrantState::Denied)?;
            state
                .store
                .record_grant(&grant, None, vec![requested, decided])
                .await?;
            state.metrics.grant("denied");
            Ok(denied(grant, &decision))
        }
        Outcome::RequireApproval { .. } => {
            grant.state = grant.state.transition(GrantState::PendingApproval)?;
            state
                .store
                .record_grant(&grant, None, vec![requested, decided])
                .await?;
            state.metrics.grant("pending_approval");
            Ok((
                StatusCode::ACCEPTED,
                Json(GrantResponse {
                    grant,
                    lease: None,
                    credential: None,
                }),
            )
                .into_response())
        }
        Outcome::Allow => {
            let external = state
                .providers
                .get(&checked.target.kind)
                .is_some_and(|p| p.external());
            let principal = caller.0.clone();
            if !external {
                return issue(
                    &state, grant, &checked, &decision, requested, decided, &actor, now,
                )
                .await
                .map_err(|e| e.for_caller(&principal));
            }
            // From the write-ahead lease to its activation the issuance runs as a task of
            // its own: a client that disconnects drops this handler, and must not leave
            // a `creating` lease (and maybe a user on the target) for the next start-up to
            // clean up. The task finishes, and records the outcome, either way.
            let task = tokio::spawn(async move {
                issue(
                    &state, grant, &checked, &decision, requested, decided, &actor, now,
                )
                .await
            });
            task.await
                .map_err(|e| ApiError::Internal(format!("the issuance task failed: {e}")))?
                .map_err(|e| e.for_caller(&principal))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn issue(
    state: &AppState,
    mut grant: Grant,
    checked: &Checked,
    decision: &Decision,
    requested: AuditDraft,
    decided: AuditDraft,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Response, ApiError> {
    let target = &checked.target;
    let provider = state.providers.get(&target.kind).ok_or_else(|| {
        ApiError::Internal(format!(
            "target {:?} has kind {:?} with no provider",
            target.name, target.kind
        ))
    })?;
    let Granted { ttl, cap, .. } = granted_ttl(checked, decision, now);
    grant.granted_ttl = Some(ttl);
    grant.state = grant.state.transition(GrantState::Approved)?;
    let mut lease = Lease {
        id: Uuid::now_v7(),
        grant_id: grant.id,
        kind: target.kind.clone(),
        identity: grant.identity.clone(),
        target: grant.target.clone(),
        task: grant.task.clone(),
        issued_at: now,
        expires_at: now + ttl.as_time(),
        max_expires_at: now + cap.as_time(),
        state: LeaseState::Active,
        revocation_reason: None,
        external: provider.external(),
        provider_state: serde_json::Value::Null,
        revoke_attempts: 0,
        last_error: None,
    };
    let admin = if provider.external() {
        Some(
            crate::providers::admin_secret(state, &target.name)
                .await?
                .ok_or_else(|| {
                    ApiError::Internal(format!("target {:?} has no admin secret", target.name))
                })?,
        )
    } else {
        None
    };
    let access = TargetAccess {
        target,
        admin: admin.as_ref(),
    };
    let identity = &checked.identity;
    let owner = grant.owner.clone();
    let issued_event = |lease: &Lease| {
        let event = AuditDraft::new(AuditKind::LeaseIssued, actor).for_lease(lease).detail(serde_json::json!({
            "kind": lease.kind, "granted_ttl": ttl, "expires_at": rfc3339(lease.expires_at), "max_expires_at": rfc3339(lease.max_expires_at),
        }));
        AuditDraft {
            owner: Some(owner.clone()),
            ..event
        }
    };

    if !provider.external() {
        // Self-contained: made in memory, so grant, lease and audit commit together and
        // nothing is acknowledged before they have.
        let credential = provider
            .issue(issue_request(
                &grant,
                identity,
                access,
                &lease,
                &serde_json::Value::Null,
            ))
            .await?;
        lease.provider_state = credential.provider_state.clone();
        let mut grant = grant;
        grant.state = grant.state.transition(GrantState::Issued)?;
        let issued = issued_event(&lease);
        state
            .store
            .record_grant(&grant, Some(&lease), vec![requested, decided, issued])
            .await?;
        return Ok(created(state, grant, lease, &credential));
    }

    // Write-ahead: the lease naming what will be created is committed before the target
    // is touched, so a crash at any later point leaves a `creating` lease that start-up
    // reconciliation cleans up. Nothing exists on the target that Mayfly does not know of.
    let plan = provider.plan(&issue_request(
        &grant,
        identity,
        access,
        &lease,
        &serde_json::Value::Null,
    ))?;
    lease.state = LeaseState::Creating;
    lease.provider_state = plan.clone();
    state
        .store
        .record_grant(&grant, Some(&lease), vec![requested, decided])
        .await?;
    crate::crash_point("after-write-ahead");
    let outcome = provider
        .issue(issue_request(&grant, identity, access, &lease, &plan))
        .await;
    let credential = match outcome {
        Ok(c) => c,
        Err(e) => {
            fail_issuance(
                state,
                provider.as_ref(),
                &lease,
                access,
                &e.to_string(),
                actor,
            )
            .await;
            return Err(e.into());
        }
    };
    crate::crash_point("after-create");
    match state
        .store
        .activate_lease(lease.id, &credential.provider_state, issued_event(&lease))
        .await
    {
        Ok(active) => {
            let mut grant = grant;
            grant.state = grant.state.transition(GrantState::Issued)?;
            Ok(created(state, grant, active, &credential))
        }
        Err(e) => {
            // Not acknowledged, so the credential must not outlive this request.
            fail_issuance(
                state,
                provider.as_ref(),
                &lease,
                access,
                "could not record the issued credential",
                actor,
            )
            .await;
            Err(e.into())
        }
    }
}

fn issue_request<'a>(
    grant: &'a Grant,
    identity: &'a Identity,
    target: TargetAccess<'a>,
    lease: &Lease,
    plan: &'a serde_json::Value,
) -> IssueRequest<'a> {
    IssueRequest {
        grant,
        identity,
        target,
        lease_id: lease.id,
        issued_at: lease.issued_at,
        expires_at: lease.expires_at,
        plan,
    }
}

/// Undoes a failed external issuance: removes whatever may exist on the target and closes
/// the write-ahead lease; if the target cannot confirm, the revocation worker retries.
async fn fail_issuance(
    state: &AppState,
    provider: &dyn mayfly_core::provider::Provider,
    lease: &Lease,
    access: TargetAccess<'_>,
    error: &str,
    actor: &str,
) {
    state.metrics.grant("failed");
    let cleaned = provider.revoke(lease, access).await.is_ok();
    if let Err(e) = state
        .store
        .abandon_lease(lease.id, cleaned, error, actor, mayfly_core::now())
        .await
    {
        tracing::warn!(lease = %lease.id, error = %e, "cannot close a failed issuance; start-up reconciliation will");
    }
    if !cleaned {
        state.revoker_wake.notify_one();
    }
}

fn created(
    state: &AppState,
    grant: Grant,
    lease: Lease,
    credential: &IssuedCredential,
) -> Response {
    state.metrics.grant("issued");
    state.lease_expires_at(lease.expires_at);
    let body = GrantResponse {
        credential: Some(credential_json(credential)),
        grant,
        lease: Some(lease),
    };
    (StatusCode::CREATED, Json(body)).into_response()
}

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
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
    let grant = state.store.get_grant(id).await?.ok_or(ApiError::NotFound {
        what: "grant",
        id: id.to_string(),
        field: None,
    })?;
    // A workload sees only its own grants; others' are reported as absent, not forbidden,
    // so ids cannot be probed.
    if let Some(own) = caller.0.identity() {
        if grant.identity != own {
            return Err(ApiError::NotFound {
                what: "grant",
                id: id.to_string(),
                field: None,
            });
        }
    }
    Ok(grant)
}

#[utoipa::path(get, path = "/v1/grants/{id}", params(("id" = Uuid, Path, description = "Grant id")),
    responses((status = 200, description = "the grant", body = Grant), (status = 404, description = "no such grant", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Grant>, ApiError> {
    Ok(Json(load_grant(&state, &caller, id).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Defaults to `task_complete` for workloads and `admin` for operators.
    pub reason: Option<RevocationReason>,
}

#[derive(Debug, Serialize, ToSchema)]
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
    let reason = reason_for(&caller, body.reason)?;
    load_grant(&state, &caller, id).await?;
    let revoked = state
        .store
        .revoke(
            &LeaseSelector::Grant(id),
            reason,
            &caller.0.actor(),
            mayfly_core::now(),
        )
        .await?;
    state.record_revocation(reason.as_str(), revoked);
    Ok(Json(RevokeResponse {
        total: revoked.total(),
        revoked,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRevokeRequest {
    pub task: Option<String>,
    pub identity: Option<String>,
    pub owner: Option<String>,
    pub reason: Option<RevocationReason>,
}

/// Revokes everything held for a task, by an identity, or by an owner's identities.
#[utoipa::path(post, path = "/v1/revoke", request_body = BulkRevokeRequest,
    responses((status = 200, description = "what was revoked", body = RevokeResponse), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn bulk_revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BulkRevokeRequest>,
) -> Result<Json<RevokeResponse>, ApiError> {
    caller.require_operator()?;
    let reason = reason_for(&caller, body.reason)?;
    let selector = match (body.task, body.identity, body.owner) {
        (Some(t), None, None) => LeaseSelector::Task(t),
        (None, Some(i), None) => LeaseSelector::Identity(i),
        (None, None, Some(o)) => LeaseSelector::Owner(o),
        _ => {
            return Err(ApiError::field(
                "task",
                "give exactly one of task, identity or owner",
            ))
        }
    };
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
