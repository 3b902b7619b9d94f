//! `/v1/leases`: issued credentials, and their renewal.

use axum::extract::State;
use axum::Json;
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Lease, LeaseSelector, LeaseState};
use mayfly_core::store::LeaseFilter;
use mayfly_core::Uuid;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::grants::{credential_json, revoke_selected, RevokeRequest, RevokeResponse};
use super::{ApiPath, ApiQuery, OptionalJson};
use crate::auth::Caller;
use crate::broker;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LeaseListQuery {
    pub identity: Option<String>,
    pub task: Option<String>,
    pub grant: Option<Uuid>,
    pub state: Option<LeaseState>,
    pub limit: Option<u32>,
    pub target: Option<String>,
}

#[utoipa::path(get, path = "/v1/leases", params(LeaseListQuery),
    responses((status = 200, description = "leases; a workload sees its own", body = [Lease])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<LeaseListQuery>,
) -> Result<Json<Vec<Lease>>, ApiError> {
    let identity = caller.0.identity().map(str::to_string).or(q.identity);
    let filter = LeaseFilter {
        identity,
        task: q.task,
        grant_id: q.grant,
        state: q.state,
        limit: q.limit,
        target: q.target,
    };
    Ok(Json(state.store.list_leases(&filter).await?))
}

async fn load(state: &AppState, caller: &Caller, id: Uuid) -> Result<Lease, ApiError> {
    Ok(broker::visible_lease(state, caller, id).await?)
}

#[utoipa::path(get, path = "/v1/leases/{id}", params(("id" = Uuid, Path, description = "Lease id")),
    responses((status = 200, description = "the lease", body = Lease), (status = 404, description = "no such lease", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Json<Lease>, ApiError> {
    Ok(Json(load(&state, &caller, id).await?))
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// New lifetime from now; defaults to the grant's TTL. Capped at the lease's maximum.
    pub ttl: Option<Ttl>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RenewResponse {
    pub lease: Lease,
    /// A replacement credential when the kind cannot be extended in place (tokens).
    #[schema(value_type = Option<Object>)]
    pub credential: Option<serde_json::Value>,
    /// Why the new expiry is not now + the TTL asked for: capped (the lease's maximum, the
    /// identity's expiry) or unchanged (a renewal never shortens). Empty when it is.
    pub reasons: Vec<String>,
}

/// Extends an active lease, never beyond its `max_expires_at`.
#[utoipa::path(post, path = "/v1/leases/{id}/renew", params(("id" = Uuid, Path, description = "Lease id")), request_body = Option<RenewRequest>,
    responses((status = 200, description = "renewed", body = RenewResponse), (status = 404, description = "no such lease", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json"), (status = 502, description = "the target failed or is unreachable", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn renew(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RenewRequest>,
) -> Result<Json<RenewResponse>, ApiError> {
    let renewal = broker::renew(&state, &caller, id, body.ttl)
        .await
        .map_err(|e| ApiError::from(e).for_caller(&caller.0))?;
    Ok(Json(RenewResponse {
        credential: renewal.credential.as_ref().map(credential_json),
        lease: renewal.lease,
        reasons: renewal.reasons,
    }))
}

/// Ends one lease's credential now (what `mayfly leases` lists; the grant behind it ends
/// with it). Revoking an already-ended lease succeeds with zero counts.
#[utoipa::path(post, path = "/v1/leases/{id}/revoke", params(("id" = Uuid, Path, description = "Lease id")), request_body = Option<RevokeRequest>,
    responses((status = 200, description = "revoked (zero counts if already ended)", body = RevokeResponse), (status = 404, description = "no such lease", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<Uuid>,
    OptionalJson(body): OptionalJson<RevokeRequest>,
) -> Result<Json<RevokeResponse>, ApiError> {
    load(&state, &caller, id).await?;
    revoke_selected(&state, &caller, LeaseSelector::Lease(id), body.reason).await
}
