//! `/v1/audit`: the chain, filtered, its verification, and signed checkpoints of its head.

use axum::extract::State;
use axum::Json;
use mayfly_core::audit::{AuditEvent, VerifyReport};
use mayfly_core::checkpoint::Checkpoint;
use mayfly_core::store::AuditFilter;
use mayfly_core::Uuid;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiQuery;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    pub task: Option<String>,
    pub identity: Option<String>,
    pub grant: Option<Uuid>,
    /// Only entries after this sequence number (paging).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 10,000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/audit", params(AuditQuery),
    responses((status = 200, description = "entries in chain order", body = [AuditEvent]), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    caller.require_operator()?;
    if q.limit.is_some_and(|l| l == 0 || l > 10_000) {
        return Err(ApiError::field("limit", "must be between 1 and 10000"));
    }
    let filter = AuditFilter {
        identity: q.identity,
        task: q.task,
        grant_id: q.grant,
        after_seq: q.after,
        limit: q.limit,
    };
    Ok(Json(state.store.list_audit(&filter).await?))
}

/// Walks the whole chain; the report names the first broken entry, if any.
#[utoipa::path(get, path = "/v1/audit/verify", responses((status = 200, description = "the chain's state; names the first broken entry", body = VerifyReport), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VerifyReport>, ApiError> {
    caller.require_operator()?;
    Ok(Json(state.store.verify_audit().await?))
}

/// The latest signed checkpoint of the chain head kept in the store (a fresh one if none
/// is kept yet). Keep it outside the database: `mayfly audit verify --checkpoint`.
#[utoipa::path(get, path = "/v1/audit/checkpoint", responses((status = 200, description = "a signed statement of the chain head", body = Checkpoint), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the chain is empty or broken: nothing is signed", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn checkpoint(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Checkpoint>, ApiError> {
    caller.require_operator()?;
    Ok(Json(state.checkpoints.latest().await.map_err(map_error)?))
}

/// Verifies the chain and signs its head now.
#[utoipa::path(post, path = "/v1/audit/checkpoint", responses((status = 200, description = "a fresh signed statement of the chain head", body = Checkpoint), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the chain is empty or broken: nothing is signed", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn take_checkpoint(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Checkpoint>, ApiError> {
    caller.require_operator()?;
    Ok(Json(state.checkpoints.take().await.map_err(map_error)?))
}

/// The public audit checkpoint keys (a JWKS whose keys have `use: audit`). They sign
/// checkpoints only, never tokens, so they are not in `/.well-known/jwks.json`.
#[utoipa::path(get, path = "/v1/audit/keys", responses((status = 200, description = "the keys that sign audit checkpoints", body = Object), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.require_operator()?;
    Ok(Json(state.checkpoints.jwks()))
}

fn map_error(e: crate::checkpoint::CheckpointError) -> ApiError {
    use crate::checkpoint::CheckpointError as E;
    match e {
        E::Store(s) => s.into(),
        e @ (E::Broken(_) | E::Empty) => ApiError::Conflict {
            detail: e.to_string(),
        },
        E::Encode(e) => ApiError::Internal(e.to_string()),
    }
}
