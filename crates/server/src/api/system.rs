//! Health, metrics, discovery (JWKS, OpenID configuration), OpenAPI, introspection, keys.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::auth::Principal;
use mayfly_core::model::LeaseState;
use mayfly_core::Uuid;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::token::AccessTokenClaims;

#[utoipa::path(get, path = "/healthz", tag = "public", responses((status = 200, description = "the store answers", body = Object), (status = 503, description = "the store does not answer", body = Object)))]
pub async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => {
            state.metrics.store_up.set(1);
            Json(serde_json::json!({"status": "ok", "store": "ok"})).into_response()
        }
        Err(e) => {
            state.metrics.store_up.set(0);
            let body = serde_json::json!({"status": "unavailable", "store": e.to_string()});
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "public", responses((status = 200, description = "Prometheus metrics", body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Measured on every scrape, so the gauge says what it claims without /healthz polling.
    let up = state.store.ping().await.is_ok();
    state.metrics.store_up.set(i64::from(up));
    if let Ok(stats) = state.store.stats().await {
        state.metrics.active_leases.set(stats.active_leases as i64);
        state
            .metrics
            .revoking_leases
            .set(stats.revoking_leases as i64);
        state.metrics.audit_entries.set(stats.audit_entries as i64);
    }
    let open_reviews = mayfly_core::store::ApprovalFilter {
        state: Some(mayfly_core::model::ApprovalState::Review),
        limit: Some(10_000),
    };
    if let Ok(open) = state.store.list_approvals(&open_reviews).await {
        let due = mayfly_core::now() - super::approvals::REVIEW_DUE;
        let overdue = open.iter().filter(|r| r.created_at <= due).count();
        state.metrics.break_glass_overdue.set(overdue as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "public", responses((status = 200, description = "the keys that sign Mayfly's tokens", body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    // Short cache: a rotated key must reach verifiers well within a token's lifetime.
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        Json(state.keys.jwks()),
    )
        .into_response()
}

#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "public", responses((status = 200, description = "discovery metadata", body = Object)))]
pub async fn openid_configuration(State(state): State<AppState>) -> Json<serde_json::Value> {
    // The OAuth metadata (RFC 8414) is the one source, so the two documents agree.
    Json(serde_json::Value::Object(super::oauth::metadata(&state)))
}

#[utoipa::path(get, path = "/openapi.json", tag = "public", responses((status = 200, description = "this document", body = Object)))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

#[utoipa::path(get, path = "/v1/whoami", responses((status = 200, description = "the authenticated caller", body = Object)))]
pub async fn whoami(caller: Caller) -> Json<Principal> {
    Json(caller.0)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotateResponse {
    pub kid: String,
}

#[utoipa::path(post, path = "/v1/keys/rotate", responses((status = 200, description = "the new signing key", body = RotateResponse), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn rotate_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<RotateResponse>, ApiError> {
    caller.require_operator()?;
    let kid = state
        .keys
        .rotate(&caller.0.actor())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(RotateResponse { kid }))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct IntrospectRequest {
    pub token: String,
    pub token_type_hint: Option<String>,
    /// A DPoP proof the resource server received with the token, and that request's
    /// method and URL: a DPoP-bound token is then active only if the proof is fresh and
    /// made with its key (`crate::api::oauth::dpop_binding_holds`).
    pub dpop_proof: Option<String>,
    pub htm: Option<String>,
    pub htu: Option<String>,
}

/// RFC 7662 token introspection: `active` is true only for a token this broker signed,
/// unexpired, whose lease is still active and whose identity is still usable, asked by
/// someone entitled to know about it: an operator, the token's own holder, or an identity
/// named in the target's `resource_servers` setting (the services the token is for).
/// Anyone else learns `active: false`, as RFC 7662 §2.2 allows, and nothing of the token.
#[utoipa::path(post, path = "/oauth2/introspect", request_body(content = IntrospectRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "RFC 7662 introspection response", body = Object), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn introspect(
    State(state): State<AppState>,
    caller: Caller,
    form: Result<axum::Form<IntrospectRequest>, axum::extract::rejection::FormRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::Form(req) = form.map_err(|e| ApiError::field("token", e.body_text()))?;
    let inactive = Json(serde_json::json!({"active": false}));
    let Ok(claims) = state.keys.verify::<AccessTokenClaims>(&req.token) else {
        return Ok(inactive);
    };
    let now = mayfly_core::now();
    if claims.exp <= now.unix_timestamp() {
        return Ok(inactive);
    }
    let Ok(lease_id) = claims.jti.parse::<Uuid>() else {
        return Ok(inactive);
    };
    let Some(lease) = state.store.get_lease(lease_id).await? else {
        return Ok(inactive);
    };
    if lease.state != LeaseState::Active || lease.expires_at <= now {
        return Ok(inactive);
    }
    if !may_introspect(&state, &caller, &claims, &lease.target).await? {
        return Ok(inactive);
    }
    if !super::oauth::dpop_binding_holds(
        &state,
        &claims,
        &req.token,
        req.dpop_proof.as_deref(),
        req.htm.as_deref(),
        req.htu.as_deref(),
    ) {
        return Ok(inactive);
    }
    let Some(identity) = state.store.get_identity(&claims.sub).await? else {
        return Ok(inactive);
    };
    if identity.is_usable_at(now).is_err() {
        return Ok(inactive);
    }
    // An answer of "active" is a use of the token by a resource server: the task's story
    // shows it. Inactive answers are not audited (they disclose nothing and cost nothing).
    let mut used = AuditDraft::new(AuditKind::TokenIntrospected, caller.0.actor())
        .for_lease(&lease)
        .detail(serde_json::json!({ "token_type": claims.token_type(), "scope": claims.scope }));
    used.owner = Some(identity.owner);
    state.store.append_audit(vec![used]).await?;
    let mut body = serde_json::to_value(&claims).unwrap_or_default();
    if let serde_json::Value::Object(map) = &mut body {
        map.insert("active".into(), true.into());
        map.insert("token_type".into(), claims.token_type().into());
    }
    Ok(Json(body))
}

/// Operators, the holder, and the target's configured resource servers.
async fn may_introspect(
    state: &AppState,
    caller: &Caller,
    claims: &AccessTokenClaims,
    target: &str,
) -> Result<bool, ApiError> {
    let Some(asking) = caller.0.identity() else {
        return Ok(caller.0.is_operator());
    };
    if asking == claims.sub {
        return Ok(true);
    }
    let Some(target) = state.store.get_target(target).await? else {
        return Ok(false);
    };
    let listed = crate::token::resource_servers(&target).any(|rs| rs == asking);
    Ok(listed)
}

/// A signing key as operators see it: never its private half.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub kid: String,
    pub alg: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: mayfly_core::OffsetDateTime,
    /// When it stopped signing; absent for the active key.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub retired_at: Option<mayfly_core::OffsetDateTime>,
    /// Published in the JWKS until then, so the tokens it signed still verify.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub published_until: Option<mayfly_core::OffsetDateTime>,
}

/// The signing keys, newest first: the active one, and the retired ones the store keeps.
#[utoipa::path(get, path = "/v1/keys", responses((status = 200, description = "signing keys, newest first", body = [KeyInfo]), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<KeyInfo>>, ApiError> {
    caller.require_operator()?;
    let mut keys: Vec<KeyInfo> = state
        .store
        .list_signing_keys()
        .await?
        .into_iter()
        // The audit checkpoint key signs no token: it is listed at /v1/audit/keys.
        .filter(|k| !crate::keys::is_audit_key(k))
        .map(|k| KeyInfo {
            kid: k.kid,
            alg: k.alg,
            created_at: k.created_at,
            retired_at: k.retired_at,
            published_until: k.publish_until,
        })
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.created_at));
    Ok(Json(keys))
}
