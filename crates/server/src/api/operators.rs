//! `/v1/operator/tokens`: operator tokens with a lifecycle.
//!
//! A token is shown once, when it is made, and stored only as its SHA-256. Every token has
//! an expiry (default [`DEFAULT_TOKEN_LIFETIME_DAYS`] days) except the first start's, which
//! is the root of trust until an operator replaces it. Revoking the broker's last live
//! token is refused unless forced: an operator who does that deliberately recovers with
//! `mayfly store recover-operator`, offline, with the master key in hand.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::store::OperatorTokenRecord;
use mayfly_core::{validate, OffsetDateTime};
use mayfly_identity::operator::generate_operator_token;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, ApiPath, ApiQuery, OptionalJson};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// How long a token lives when the request names no expiry.
pub const DEFAULT_TOKEN_LIFETIME_DAYS: i64 = 90;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOperatorToken {
    /// `[a-z0-9][a-z0-9._-]*`, at most 64 characters; unique among live tokens.
    pub name: String,
    /// When the token stops working; default 90 days from now. Must be in the future.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
}

/// Where a token is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperatorTokenState {
    Active,
    Expired,
    Revoked,
}

/// An operator token as listed: never the token or its hash.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct OperatorToken {
    pub name: String,
    pub state: OperatorTokenState,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Who made it: `operator:<token name>`, `system:first-start` or `system:recovery`.
    pub created_by: String,
    /// Absent: never expires (only the first start's token).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
}

impl OperatorToken {
    pub fn from_record(r: OperatorTokenRecord, now: OffsetDateTime) -> Self {
        let state = if r.revoked_at.is_some() {
            OperatorTokenState::Revoked
        } else if r.is_live_at(now) {
            OperatorTokenState::Active
        } else {
            OperatorTokenState::Expired
        };
        OperatorToken {
            name: r.name,
            state,
            created_at: r.created_at,
            created_by: r.created_by,
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
        }
    }
}

/// A new token and the one time its secret is shown.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedOperatorToken {
    #[serde(flatten)]
    pub info: OperatorToken,
    /// The token itself (`mfy_op_…`). Shown only in this answer; the broker keeps its hash.
    pub token: String,
}

impl std::fmt::Debug for CreatedOperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedOperatorToken")
            .field("info", &self.info)
            .field("token", &"[redacted]")
            .finish()
    }
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeOperatorToken {
    /// Revoke even the broker's last live token (everyone is then locked out until
    /// `mayfly store recover-operator` is run offline).
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Also list revoked tokens (default: active and expired ones only).
    #[serde(default)]
    pub include_revoked: bool,
}

/// Makes a token. The answer holds it once; the broker keeps only its hash.
#[utoipa::path(post, path = "/v1/operator/tokens", request_body = CreateOperatorToken,
    responses((status = 201, description = "created; `token` is shown only here", body = CreatedOperatorToken), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "a live token has that name", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateOperatorToken>,
) -> Result<(StatusCode, Json<CreatedOperatorToken>), ApiError> {
    caller.require_operator()?;
    validate::name("name", &body.name)?;
    let now = mayfly_core::now();
    let expires_at = match body.expires_at {
        Some(at) if at <= now => {
            return Err(ApiError::field("expires_at", "must be in the future"))
        }
        Some(at) => mayfly_core::truncate_ms(at),
        None => now + time::Duration::days(DEFAULT_TOKEN_LIFETIME_DAYS),
    };
    let (token, hash) = generate_operator_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let actor = caller.0.actor();
    let record = OperatorTokenRecord::new(&body.name, hash, now, Some(expires_at), &actor);
    state
        .store
        .create_operator_token(&record, created_event(&actor, &record))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedOperatorToken {
            info: OperatorToken::from_record(record, now),
            token: token.expose().to_string(),
        }),
    ))
}

/// The audit entry of a new token: who made which, until when; never the token or hash.
pub fn created_event(actor: &str, record: &OperatorTokenRecord) -> AuditDraft {
    AuditDraft::new(AuditKind::OperatorTokenCreated, actor).detail(serde_json::json!({
        "name": record.name,
        "expires_at": record.expires_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
    }))
}

#[utoipa::path(get, path = "/v1/operator/tokens", params(ListQuery),
    responses((status = 200, description = "operator tokens, oldest first; never a token or its hash", body = [OperatorToken]), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<OperatorToken>>, ApiError> {
    caller.require_operator()?;
    let now = mayfly_core::now();
    Ok(Json(
        state
            .store
            .list_operator_tokens()
            .await?
            .into_iter()
            .filter(|t| query.include_revoked || t.revoked_at.is_none())
            .map(|t| OperatorToken::from_record(t, now))
            .collect(),
    ))
}

/// Revokes a token now: its next use is refused with 401 `operator_token_revoked`.
#[utoipa::path(post, path = "/v1/operator/tokens/{name}/revoke", params(("name" = String, Path, description = "Token name")), request_body = Option<RevokeOperatorToken>,
    responses((status = 200, description = "revoked", body = OperatorToken), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no unrevoked token has that name", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "the broker's last live token (pass `force`)", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    OptionalJson(body): OptionalJson<RevokeOperatorToken>,
) -> Result<Json<OperatorToken>, ApiError> {
    caller.require_operator()?;
    let now = mayfly_core::now();
    let event = AuditDraft::new(AuditKind::OperatorTokenRevoked, caller.0.actor()).detail(
        serde_json::json!({
            "name": name,
            "forced": body.force,
        }),
    );
    let revoked = state
        .store
        .revoke_operator_token(&name, body.force, now, event)
        .await
        .map_err(|e| match e {
            mayfly_core::store::StoreError::NotFound { .. } => ApiError::NotFound {
                what: "operator token",
                id: name.clone(),
                field: Some("name"),
            },
            other => other.into(),
        })?;
    Ok(Json(OperatorToken::from_record(revoked, now)))
}
