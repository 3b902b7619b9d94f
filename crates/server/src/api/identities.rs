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

use super::{ApiJson, ApiPath, ApiQuery};
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

/// The fields of an identity that can change in place. Its id and kind are what policy
/// knows it by (a different kind is a different identity: add one); enabling and
/// disabling have their own endpoints. Absent fields are kept; `labels` is replaced whole.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Must be in the future. Live leases keep the expiry they were issued with.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// Changes an identity's owner, purpose, expiry or labels, audited with what changed.
#[utoipa::path(patch, path = "/v1/identities/{id}", params(("id" = String, Path, description = "Identity name")), request_body = UpdateIdentity,
    responses((status = 200, description = "the updated identity", body = Identity), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such identity", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateIdentity>,
) -> Result<Json<Identity>, ApiError> {
    caller.require_operator()?;
    let UpdateIdentity {
        owner,
        purpose,
        expires_at,
        labels,
    } = body;
    if owner.is_none() && purpose.is_none() && expires_at.is_none() && labels.is_none() {
        return Err(ApiError::BadRequest {
            field: None,
            detail: "nothing to change: give at least one of owner, purpose, expires_at, labels"
                .into(),
        });
    }
    if let Some(owner) = &owner {
        validate::text("owner", owner, 256, true)?;
    }
    if let Some(purpose) = &purpose {
        validate::text("purpose", purpose, validate::MAX_PURPOSE_BYTES, true)?;
    }
    for (k, v) in labels.iter().flatten() {
        validate::text("labels", k, 64, true)?;
        validate::text("labels", v, 256, false)?;
    }
    if expires_at.is_some_and(|at| at <= mayfly_core::now()) {
        return Err(ApiError::field("expires_at", "must be in the future"));
    }
    let before = load(&state, &id).await?;
    let mut after = before.clone();
    after.owner = owner.unwrap_or(after.owner);
    after.purpose = purpose.unwrap_or(after.purpose);
    after.expires_at = expires_at
        .map(mayfly_core::truncate_ms)
        .or(after.expires_at);
    after.labels = labels.unwrap_or(after.labels);
    let mut event = AuditDraft::new(AuditKind::IdentityUpdated, caller.0.actor()).detail(
        serde_json::json!({
            "changed": super::changes(&before, &after, &["owner", "purpose", "expires_at", "labels"]),
        }),
    );
    event.identity = Some(id.clone());
    event.owner = Some(after.owner.clone());
    Ok(Json(state.store.update_identity(&after, event).await?))
}

/// Deletes an identity. Refused (409) while it holds a live lease, unless
/// `revoke_leases=true`: it is then disabled first (the kill switch: every lease it holds
/// revoked, no new grant), and deleted once the revocation worker has confirmed every
/// external credential gone. Its grants, leases and audit entries stay.
#[utoipa::path(delete, path = "/v1/identities/{id}", params(("id" = String, Path, description = "Identity name"), super::DeleteQuery),
    responses((status = 200, description = "deleted", body = super::DeleteResponse), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such identity", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "live leases keep the identity", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<super::DeleteQuery>,
) -> Result<Json<super::DeleteResponse>, ApiError> {
    caller.require_operator()?;
    let identity = load(&state, &id).await?;
    let actor = caller.0.actor();
    let mut revoked = RevokeOutcome::default();
    if query.revoke_leases {
        revoked = state
            .store
            .disable_identity(&id, &actor, mayfly_core::now())
            .await?;
        state.record_revocation("identity_disabled", revoked);
        let left = super::wait_for_revocations(|| async {
            let filter = mayfly_core::store::LeaseFilter {
                identity: Some(id.clone()),
                state: Some(mayfly_core::model::LeaseState::Revoking),
                limit: Some(1000),
                ..Default::default()
            };
            Ok(state.store.list_leases(&filter).await?.len())
        })
        .await?;
        if left > 0 {
            return Err(ApiError::Conflict {
                detail: format!(
                    "identity {id:?} is disabled, but {left} of its lease(s) are still being revoked (their targets have not confirmed the credentials gone; they are retried in the background, see `mayfly leases --state revoking`); delete again once none is left"
                ),
            });
        }
    }
    let mut event = AuditDraft::new(AuditKind::IdentityDeleted, actor)
        .detail(serde_json::json!({ "revoked_leases": revoked.total() }));
    event.identity = Some(id.clone());
    event.owner = Some(identity.owner);
    state.store.delete_identity(&id, event).await?;
    Ok(Json(super::DeleteResponse {
        deleted: id,
        revoked,
    }))
}
