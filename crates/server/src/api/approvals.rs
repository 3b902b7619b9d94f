//! Approval requests and break-glass reviews: what approvers see and answer
//! (`/v1/approvals`, `/v1/grants/{id}/approve|deny`, `/v1/reviews`), and how a requester
//! collects an approved credential (`/v1/grants/{id}/collect`).
//!
//! Separation of duties is checked here, before the store counts an answer: the requester
//! (and the person behind an operator token of the same name), members of the identity's
//! owning team, anyone outside the required approver groups, and anyone who has already
//! answered cannot count. The store then counts each approver once and, of answers racing
//! for the last slot, lets exactly one complete the request.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::model::{ApprovalRecord, ApprovalState, ApprovalVote};
use mayfly_core::store::ApprovalFilter;
use mayfly_core::{validate, Uuid};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::grants::{credential_json, GrantResponse, PeerIp};
use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::{Approver, Caller};
use crate::broker::{self, GrantOutcome};
use crate::error::ApiError;
use crate::state::AppState;

/// The longest comment an answer may carry.
pub const MAX_COMMENT_BYTES: usize = 4096;

/// How old an unreviewed break-glass use may get before it is overdue.
pub const REVIEW_DUE: time::Duration = time::Duration::hours(24);

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    /// Why (at most 4 KiB); required, and audited with the answer.
    pub comment: String,
}

#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// `pending` (default: those the caller may answer), `review` (open break-glass
    /// reviews), or any other state (all of them).
    pub state: Option<ApprovalState>,
    /// With `review`: only reviews open for more than 24 hours.
    #[serde(default)]
    pub overdue: bool,
    pub limit: Option<u32>,
}

/// Why `approver` may not answer `request`, if they may not.
fn ineligible(approver: &Approver, request: &ApprovalRecord) -> Option<(&'static str, String)> {
    let me = approver.0.actor();
    let person = |actor: &str| actor.split_once(':').map(|(_, n)| n.to_string());
    if request.requested_by == me || person(&request.requested_by) == person(&me) {
        return Some((
            "self_approval",
            format!("{me} asked for this access and cannot approve it"),
        ));
    }
    if approver.groups().contains(&request.owner) {
        return Some((
            "owner_approval",
            format!(
                "{me} is in {}, the team that owns identity {:?}, and cannot approve its requests",
                request.owner, request.identity
            ),
        ));
    }
    if request.votes.iter().any(|v| v.approver == me) {
        return Some((
            "already_answered",
            format!("{me} has already answered this request"),
        ));
    }
    if !request.groups.is_empty() && !approver.groups().iter().any(|g| request.groups.contains(g)) {
        return Some((
            "not_an_approver",
            format!(
                "{me} is not in {} (the groups that approve this request)",
                request.groups.join(" or ")
            ),
        ));
    }
    None
}

#[utoipa::path(get, path = "/v1/approvals", params(ApprovalQuery),
    responses((status = 200, description = "approval requests (by default those pending that the caller may answer), oldest first", body = [ApprovalRecord]),
    (status = 403, description = "approvers (people and operators) only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    approver: Approver,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> Result<Json<Vec<ApprovalRecord>>, ApiError> {
    let wanted = q.state.unwrap_or(ApprovalState::Pending);
    let mut found = state
        .store
        .list_approvals(&ApprovalFilter {
            state: Some(wanted),
            limit: q.limit,
        })
        .await?;
    let now = mayfly_core::now();
    match wanted {
        ApprovalState::Pending => {
            found.retain(|r| r.expires_at > now && ineligible(&approver, r).is_none());
        }
        ApprovalState::Review if q.overdue => found.retain(|r| r.created_at + REVIEW_DUE <= now),
        _ => {}
    }
    Ok(Json(found))
}

#[utoipa::path(get, path = "/v1/reviews", params(ApprovalQuery),
    responses((status = 200, description = "open break-glass reviews, oldest first (`overdue`: open for more than 24 h)", body = [ApprovalRecord])))]
pub async fn reviews(
    state: State<AppState>,
    approver: Approver,
    ApiQuery(q): ApiQuery<ApprovalQuery>,
) -> Result<Json<Vec<ApprovalRecord>>, ApiError> {
    let q = ApprovalQuery {
        state: Some(q.state.unwrap_or(ApprovalState::Review)),
        ..q
    };
    list(state, approver, ApiQuery(q)).await
}

async fn answer(
    state: &AppState,
    approver: &Approver,
    id: Uuid,
    body: &AnswerRequest,
    approve: bool,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let refuse = |e: ApiError| async {
        let detail = serde_json::json!({
            "operation": if approve { "approve" } else { "deny" },
            "refused": e.to_string(),
        });
        let mut event =
            AuditDraft::new(AuditKind::GrantRejected, approver.0.actor()).detail(detail);
        event.grant_id = Some(id);
        if let Err(audit) = state.store.append_audit(vec![event]).await {
            tracing::warn!(error = %audit, "could not audit a refused approval");
        }
        e
    };
    if let Err(e) = validate::text("comment", &body.comment, MAX_COMMENT_BYTES, true) {
        return Err(refuse(e.into()).await);
    }
    let Some(request) = state.store.get_approval(id).await? else {
        return Err(refuse(ApiError::NotFound {
            what: "approval request",
            id: id.to_string(),
            field: None,
        })
        .await);
    };
    let reviewing = request.state == ApprovalState::Review;
    if !reviewing && request.state != ApprovalState::Pending {
        let e = ApiError::Conflict {
            detail: format!(
                "grant {id} is not waiting for approval (its request is {})",
                request.state
            ),
        };
        return Err(refuse(e).await);
    }
    if let Some((code, detail)) = ineligible(approver, &request) {
        return Err(refuse(ApiError::Forbidden { code, detail }).await);
    }
    if reviewing && !approve {
        let e = ApiError::field(
            "review",
            "a break-glass use is reviewed, not denied: close the review with your findings",
        );
        return Err(refuse(e).await);
    }
    let now = mayfly_core::now();
    let vote = ApprovalVote {
        approver: approver.0.actor(),
        approve,
        comment: body.comment.clone(),
        groups: approver.groups().to_vec(),
        at: mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(now)),
    };
    let kind = match (reviewing, approve) {
        (true, _) => AuditKind::ReviewClosed,
        (false, true) => AuditKind::ApprovalGranted,
        (false, false) => AuditKind::ApprovalDenied,
    };
    let mut event = AuditDraft::new(kind, approver.0.actor()).detail(serde_json::json!({
        "comment": body.comment,
        "groups": vote.groups,
    }));
    event.grant_id = Some(id);
    event.identity = Some(request.identity.clone());
    event.owner = Some(request.owner.clone());
    event.target = Some(request.target.clone());
    event.task = Some(request.task.clone());
    match state.store.vote(id, &vote, event, now).await {
        Ok(done) => Ok(Json(done)),
        Err(e) => Err(refuse(e.into()).await),
    }
}

#[utoipa::path(post, path = "/v1/grants/{id}/approve", params(("id" = Uuid, Path, description = "Grant id")), request_body = AnswerRequest,
    responses((status = 200, description = "counted; `state` is `approved` once enough distinct approvers have approved", body = ApprovalRecord),
    (status = 400, description = "no comment, or one over 4 KiB", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 403, description = "the caller may not approve this request (self, owner, outside the approver groups, a workload)", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 404, description = "no approval request for this grant", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 409, description = "not waiting for approval, expired, or already answered by the caller", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn approve(
    State(state): State<AppState>,
    approver: Approver,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<AnswerRequest>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    answer(&state, &approver, id, &body, true).await
}

#[utoipa::path(post, path = "/v1/grants/{id}/deny", params(("id" = Uuid, Path, description = "Grant id")), request_body = AnswerRequest,
    responses((status = 200, description = "the request is denied", body = ApprovalRecord),
    (status = 400, description = "no comment, or one over 4 KiB", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 403, description = "the caller may not answer this request", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 404, description = "no approval request for this grant", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 409, description = "not waiting for approval", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn deny(
    State(state): State<AppState>,
    approver: Approver,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<AnswerRequest>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    answer(&state, &approver, id, &body, false).await
}

#[utoipa::path(post, path = "/v1/reviews/{id}/close", params(("id" = Uuid, Path, description = "The break-glass grant's id")), request_body = AnswerRequest,
    responses((status = 200, description = "reviewed", body = ApprovalRecord),
    (status = 403, description = "the caller may not review it (the requester, the owner's team, outside the approver groups)", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such review", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn close_review(
    State(state): State<AppState>,
    approver: Approver,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<AnswerRequest>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    answer(&state, &approver, id, &body, true).await
}

#[utoipa::path(post, path = "/v1/grants/{id}/collect", params(("id" = Uuid, Path, description = "Grant id")),
    responses((status = 201, description = "issued: the credential, shown once", body = GrantResponse),
    (status = 403, description = "policy now denies it", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such grant (or another identity's)", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 409, description = "not approved (yet), collected already, or expired", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn collect(
    State(state): State<AppState>,
    caller: Caller,
    peer: PeerIp,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let outcome = broker::collect(&state, &caller, peer.0, id)
        .await
        .map_err(|e| ApiError::from(e).for_caller(&caller.0))?;
    match outcome {
        GrantOutcome::Issued(issued) => {
            let broker::Issued {
                grant,
                lease,
                credential,
            } = *issued;
            Ok((
                StatusCode::CREATED,
                Json(GrantResponse {
                    credential: Some(credential_json(&credential)),
                    grant,
                    lease: Some(lease),
                }),
            )
                .into_response())
        }
        _ => Err(ApiError::Internal(
            "collecting an approved grant came back without a credential".into(),
        )),
    }
}
