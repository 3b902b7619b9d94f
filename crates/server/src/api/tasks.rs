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

use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// The longest deadline a task may ask for: a task bounds the life of every credential
/// in it, so it stays short. A deadline is relative, so no client clock is trusted.
pub const MAX_DEADLINE: Ttl = Ttl::from_secs(24 * 3600);

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
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
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EndTaskResponse {
    pub task: Task,
    /// The leases the end revoked, in this task and the tasks below it.
    pub revoked: RevokeOutcome,
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
    (status = 403, description = "only a workload opens a task, for itself", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 404, description = "no such parent task", body = crate::error::Problem, content_type = "application/problem+json"),
    (status = 409, description = "the parent task has ended", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTaskRequest>,
) -> Result<(StatusCode, Json<TaskResponse>), ApiError> {
    let (Some(identity), Some(record)) = (caller.0.identity(), caller.1.as_ref()) else {
        return Err(ApiError::forbidden(
            "a task is opened by a workload, for its own identity",
        ));
    };
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
    let now = mayfly_core::now();
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
    let mut event = AuditDraft::new(AuditKind::TaskOpened, format!("identity:{identity}")).detail(
        serde_json::json!({
            "purpose": task.purpose,
            "deadline": task.deadline.format(&time::format_description::well_known::Rfc3339).ok(),
            "parent": task.parent.map(|p| p.to_string()),
        }),
    );
    event.identity = Some(task.identity.clone());
    event.owner = Some(task.owner.clone());
    event.task = Some(task.id.to_string());
    state.store.create_task(&task, event).await?;
    state.expiry_wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(TaskResponse {
            task,
            leases: Vec::new(),
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
    Ok(Json(TaskResponse { task, leases }))
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
) -> Result<Json<EndTaskResponse>, ApiError> {
    visible(state, caller, id).await?;
    let actor = match caller.0.identity() {
        Some(i) => format!("identity:{i}"),
        None => "operator".to_string(),
    };
    let (task, revoked) = state
        .store
        .end_task(id, to, &actor, mayfly_core::now())
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

#[utoipa::path(post, path = "/v1/tasks/{id}/complete", params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 200, description = "the task completed; its leases and its child tasks' leases revoked (task_complete)", body = EndTaskResponse), (status = 404, description = "no such task", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the task has already ended", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<EndTaskResponse>, ApiError> {
    end(&state, &caller, id, TaskState::Completed).await
}

#[utoipa::path(post, path = "/v1/tasks/{id}/fail", params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 200, description = "the task failed; its leases and its child tasks' leases revoked (task_failed)", body = EndTaskResponse), (status = 404, description = "no such task", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the task has already ended", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn fail(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<EndTaskResponse>, ApiError> {
    end(&state, &caller, id, TaskState::Failed).await
}
