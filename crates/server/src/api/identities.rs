//! `/v1/identities`: the inventory of non-human identities.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::model::{Identity, IdentityKind};
use mayfly_core::store::RevokeOutcome;
use mayfly_core::{validate, OffsetDateTime};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIdentity {
    /// Stable name: `[a-z0-9][a-z0-9._-]*`, at most 64 characters.
    pub id: String,
    pub kind: IdentityKind,
    /// Accountable person or team.
    pub owner: String,
    pub purpose: String,
    /// Every NHI expires; renew it deliberately rather than let it live forever.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DisableResponse {
    pub identity: Identity,
    /// Leases the kill switch ended.
    pub revoked: RevokeOutcome,
}

#[utoipa::path(post, path = "/v1/identities", request_body = CreateIdentity,
    responses((status = 201, description = "created", body = Identity), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateIdentity>,
) -> Result<(StatusCode, Json<Identity>), ApiError> {
    caller.require_operator()?;
    validate::name("id", &body.id)?;
    validate::text("owner", &body.owner, 256, true)?;
    validate::text("purpose", &body.purpose, validate::MAX_PURPOSE_BYTES, true)?;
    for (k, v) in &body.labels {
        validate::text("labels", k, 64, true)?;
        validate::text("labels", v, 256, false)?;
    }
    let now = mayfly_core::now();
    if body.expires_at <= now {
        return Err(ApiError::field("expires_at", "must be in the future"));
    }
    let identity = Identity {
        id: body.id,
        kind: body.kind,
        owner: body.owner,
        purpose: body.purpose,
        expires_at: Some(mayfly_core::truncate_ms(body.expires_at)),
        labels: body.labels,
        enabled: true,
        created_at: now,
    };
    let mut event = AuditDraft::new(AuditKind::IdentityCreated, caller.0.actor()).detail(serde_json::json!({
        "kind": identity.kind, "purpose": identity.purpose, "expires_at": identity.expires_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
    }));
    event.identity = Some(identity.id.clone());
    event.owner = Some(identity.owner.clone());
    state.store.create_identity(&identity, event).await?;
    Ok((StatusCode::CREATED, Json(identity)))
}

#[utoipa::path(get, path = "/v1/identities", responses((status = 200, description = "every identity", body = [Identity]), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Identity>>, ApiError> {
    caller.require_operator()?;
    Ok(Json(state.store.list_identities().await?))
}

async fn load(state: &AppState, id: &str) -> Result<Identity, ApiError> {
    state
        .store
        .get_identity(id)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            what: "identity",
            id: id.to_string(),
            field: Some("identity"),
        })
}

#[utoipa::path(get, path = "/v1/identities/{id}", params(("id" = String, Path, description = "Identity name")),
    responses((status = 200, description = "the identity", body = Identity), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such identity", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Identity>, ApiError> {
    if caller.0.identity() != Some(id.as_str()) {
        caller.require_operator()?;
    }
    Ok(Json(load(&state, &id).await?))
}

/// Kill switch: disables the identity and revokes everything it holds.
#[utoipa::path(post, path = "/v1/identities/{id}/disable", params(("id" = String, Path, description = "Identity name")),
    responses((status = 200, description = "disabled; its leases revoked", body = DisableResponse), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such identity", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DisableResponse>, ApiError> {
    caller.require_operator()?;
    let revoked = state
        .store
        .disable_identity(&id, &caller.0.actor(), mayfly_core::now())
        .await?;
    state.record_revocation("identity_disabled", revoked);
    Ok(Json(DisableResponse {
        identity: load(&state, &id).await?,
        revoked,
    }))
}

#[utoipa::path(post, path = "/v1/identities/{id}/enable", params(("id" = String, Path, description = "Identity name")),
    responses((status = 200, description = "enabled", body = Identity), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such identity", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Identity>, ApiError> {
    caller.require_operator()?;
    let mut event = AuditDraft::new(AuditKind::IdentityEnabled, caller.0.actor());
    event.identity = Some(id.clone());
    Ok(Json(state.store.enable_identity(&id, event).await?))
}
