//! `/v1/audit`: the chain, filtered, and its verification.

use axum::extract::State;
use axum::Json;
use mayfly_core::audit::{AuditEvent, VerifyReport};
use mayfly_core::store::AuditFilter;
use mayfly_core::Uuid;
use serde::Deserialize;
use utoipa::ToSchema;

use super::ApiQuery;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub task: Option<String>,
    pub identity: Option<String>,
    pub grant: Option<Uuid>,
    /// Only entries after this sequence number (paging).
    pub after: Option<u64>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/audit", responses((status = 200, body = [AuditEvent])))]
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
#[utoipa::path(get, path = "/v1/audit/verify", responses((status = 200, body = VerifyReport)))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VerifyReport>, ApiError> {
    caller.require_operator()?;
    Ok(Json(state.store.verify_audit().await?))
}
