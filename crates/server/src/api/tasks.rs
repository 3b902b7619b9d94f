//! `/v1/tasks`: task records. A workload opens a task for itself with a purpose and a
//! deadline; grants whose `task` is the task's id belong to it, and every lease in it is
//! revoked when the task completes (`task_complete`), fails (`task_failed`) or reaches its
//! deadline (`task_timeout`, by the expiry scheduler). A child task ends with its parent.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Lease, Task, TaskState};
use mayfly_core::store::{LeaseFilter, RevokeOutcome, TaskFilter};
use mayfly_core::{validate, Uuid};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The longest deadline a task may ask for: a task bounds the life of every credential
/// in it, so it stays short. A deadline is relative, so no client clock is trusted.
pub const MAX_DEADLINE: Ttl = Ttl::from_secs(24 * 3600);

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// The identity the task is for: a workload's own (it may omit it); an operator must
    /// name one (to run work as that identity, as `mayfly exec --identity` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Why the task runs (at most 1 KiB); audited.
    pub purpose: String,
    /// How long from now the task may run (e.g. `30m`), at most 24 hours. At the deadline
    /// every lease in it is revoked (`task_timeout`).
    pub deadline: Ttl,
    /// The open task (of the same identity) this one is a step of; it ends with it.
    pub parent: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskResponse {
    pub task: Task,
    /// The task's leases, newest first (up to 100).
    pub leases: Vec<Lease>,
    /// Only when the task is opened: the signed task token (a JWT of `typ`
    /// `txntoken+jwt`, shaped after OAuth Transaction Tokens) to send in the `Txn-Token`
    /// header of every grant of the task. It expires at the task's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_token: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EndTaskResponse {
    pub task: Task,
    /// The leases the end revoked, in this task and the tasks below it.
    pub revoked: RevokeOutcome,
}

/// What the side ending a task reports (all optional; the body may be empty).
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndTaskRequest {
    /// The exit status of the command the task ran (`mayfly exec` sends it); audited with
    /// the end.
    pub exit_status: Option<i32>,
    /// `fail` only: the task ran out of time on the client's side (`mayfly exec
    /// --timeout`, or a signal), so it ends `timed_out` and its leases are revoked with
    /// `task_timeout`, as at the deadline.
    #[serde(default)]
    pub timed_out: bool,
}

#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskListQuery {
    /// Operators only; a workload always sees its own.
    pub identity: Option<String>,
    pub state: Option<TaskState>,
    pub limit: Option<u32>,
}

#[utoipa::path(post, path = "/v1/tasks", request_body = CreateTaskRequest, responses(
    (status = 201, description = "the task, open", body = TaskResponse),
    (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 403, description = "a workload opens tasks for itself only; the identity is disabled or expired", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such identity or parent task", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 409, description = "the parent task has ended", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    peer: super::grants::PeerIp,
    ApiJson(body): ApiJson<CreateTaskRequest>,
) -> Result<(StatusCode, Json<TaskResponse>), ApiError> {
    let record = match (caller.0.identity(), &body.identity, &caller.1) {
        (Some(_), None, Some(record)) => record.clone(),
        (Some(own), Some(named), Some(record)) if named == own => record.clone(),
        (Some(own), Some(named), _) => {
            return Err(ApiError::Forbidden {
                code: "not_your_identity",
                detail: format!("identity {own:?} may not open a task for {named:?}"),
            })
        }
        (None, Some(named), _) if caller.0.is_operator() => {
            validate::name("identity", named)?;
            state
                .store
                .get_identity(named)
                .await?
                .ok_or_else(|| ApiError::NotFound {
                    what: "identity",
                    id: named.clone(),
                    field: Some("identity"),
                })?
        }
        _ => {
            return Err(ApiError::field(
                "identity",
                "is required when an operator opens a task",
            ))
        }
    };
    let now = mayfly_core::now();
    if let Err(why) = record.is_usable_at(now) {
        return Err(ApiError::Forbidden {
            code: "identity_unusable",
            detail: format!("identity {:?}: {why}", record.id),
        });
    }
    let identity = record.id.as_str();
    validate::purpose(&body.purpose)?;
    if body.deadline.as_secs() == 0 || body.deadline > MAX_DEADLINE {
        return Err(ApiError::BadRequest {
            field: Some("deadline".into()),
            detail: format!("deadline: must be more than 0s and at most {MAX_DEADLINE}"),
        });
    }
    if let Some(parent) = body.parent {
        let found = state.store.get_task(parent).await?;
        if found.as_ref().is_none_or(|p| p.identity != identity) {
            return Err(ApiError::NotFound {
                what: "task",
                id: parent.to_string(),
                field: Some("parent"),
            });
        }
    }
    let task = Task {
        id: Uuid::new_v4(),
        identity: identity.to_string(),
        owner: record.owner.clone(),
        purpose: body.purpose,
        parent: body.parent,
        state: TaskState::Open,
        // Stored in whole milliseconds; the response says what is stored.
        deadline: mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(now + body.deadline.as_time())),
        created_at: mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(now)),
        ended_at: None,
    };
    let mut event =
        AuditDraft::new(AuditKind::TaskOpened, caller.0.actor()).detail(serde_json::json!({
            "purpose": task.purpose,
            "deadline": task.deadline.format(&time::format_description::well_known::Rfc3339).ok(),
            "parent": task.parent.map(|p| p.to_string()),
        }));
    event.identity = Some(task.identity.clone());
    event.owner = Some(task.owner.clone());
    event.task = Some(task.id.to_string());
    // Signed before the task is stored, so a task is never opened without its token.
    let token = crate::task_token::issue(&state.keys, &state.issuer, &task, peer.0)
        .map_err(|e| ApiError::Internal(format!("signing the task token: {e}")))?;
    state.store.create_task(&task, event).await?;
    state.expiry_wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(TaskResponse {
            task,
            leases: Vec::new(),
            task_token: Some(token),
        }),
    ))
}

/// The task if the caller may see it: an operator any, a workload its own (another's is
/// answered as absent, so task ids of others are not confirmed).
async fn visible(state: &AppState, caller: &Caller, id: Uuid) -> Result<Task, ApiError> {
    match state.store.get_task(id).await? {
        Some(t) if caller.0.is_operator() || caller.0.identity() == Some(t.identity.as_str()) => {
            Ok(t)
        }
        _ => Err(ApiError::NotFound {
            what: "task",
            id: id.to_string(),
            field: None,
        }),
    }
}

#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 200, description = "the task and its leases", body = TaskResponse), (status = 404, description = "no such task", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<TaskResponse>, ApiError> {
    let task = visible(&state, &caller, id).await?;
    let leases = state
        .store
        .list_leases(&LeaseFilter {
            task: Some(task.id.to_string()),
            identity: Some(task.identity.clone()),
            ..Default::default()
        })
        .await?;
    Ok(Json(TaskResponse {
        task,
        leases,
        task_token: None,
    }))
}

#[utoipa::path(get, path = "/v1/tasks", params(TaskListQuery),
    responses((status = 200, description = "tasks, newest first; a workload sees its own", body = [Task])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<TaskListQuery>,
) -> Result<Json<Vec<Task>>, ApiError> {
    let identity = caller.0.identity().map(str::to_string).or(q.identity);
    let filter = TaskFilter {
        identity,
        state: q.state,
        limit: q.limit,
    };
    Ok(Json(state.store.list_tasks(&filter).await?))
}

async fn end(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    to: TaskState,
    exit_status: Option<i32>,
) -> Result<Json<EndTaskResponse>, ApiError> {
    visible(state, caller, id).await?;
    let actor = caller.0.actor();
    let (task, revoked) = state
        .store
        .end_task(id, to, exit_status, &actor, mayfly_core::now())
        .await?;
    if let Some(reason) = to.revocation_reason() {
        state.metrics.revoked(reason.as_str(), revoked.total());
    }
    if revoked.revoking > 0 {
        // External credentials: the target must still drop them.
        state.revoker_wake.notify_one();
    }
    Ok(Json(EndTaskResponse { task, revoked }))
}

#[utoipa::path(post, path = "/v1/tasks/{id}/complete", params(("id" = Uuid, Path, description = "Task id")), request_body(content = Option<EndTaskRequest>, description = "optional; `timed_out` is refused here"),
    responses((status = 200, description = "the task completed; its leases and its child tasks' leases revoked (task_complete)", body = EndTaskResponse), (status = 404, description = "no such task", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the task has already ended", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<EndTaskRequest>,
) -> Result<Json<EndTaskResponse>, ApiError> {
    if body.timed_out {
        return Err(ApiError::BadRequest {
            field: Some("timed_out".into()),
            detail: "timed_out: a task that ran out of time is ended with fail, not complete"
                .into(),
        });
    }
    end(&state, &caller, id, TaskState::Completed, body.exit_status).await
}

#[utoipa::path(post, path = "/v1/tasks/{id}/fail", params(("id" = Uuid, Path, description = "Task id")), request_body(content = Option<EndTaskRequest>, description = "optional"),
    responses((status = 200, description = "the task failed (or, with `timed_out`, timed out); its leases and its child tasks' leases revoked (task_failed / task_timeout)", body = EndTaskResponse), (status = 404, description = "no such task", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the task has already ended", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn fail(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<EndTaskRequest>,
) -> Result<Json<EndTaskResponse>, ApiError> {
    let to = if body.timed_out {
        TaskState::TimedOut
    } else {
        TaskState::Failed
    };
    end(&state, &caller, id, to, body.exit_status).await
}
