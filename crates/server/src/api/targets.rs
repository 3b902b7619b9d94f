//! `/v1/targets`: what access can be granted to, and how credentials for it are made.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::duration::Ttl;
use mayfly_core::model::Target;
use mayfly_core::validate;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{ApiJson, ApiPath};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTarget {
    pub name: String,
    /// Credential kind, e.g. `token`.
    pub kind: String,
    /// Actions a grant may ask for.
    pub actions: Vec<String>,
    #[serde(default = "default_ttl")]
    pub default_ttl: Ttl,
    #[serde(default = "max_ttl")]
    pub max_ttl: Ttl,
    /// Identities (or `owner:<team>`, or `*`) allowed until Cedar policy is configured.
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
}

fn default_ttl() -> Ttl {
    Ttl::from_secs(15 * 60)
}
fn max_ttl() -> Ttl {
    Ttl::from_secs(3600)
}
fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

#[utoipa::path(post, path = "/v1/targets", request_body = CreateTarget,
    responses((status = 201, body = Target), (status = 400, body = crate::error::Problem), (status = 409, body = crate::error::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTarget>,
) -> Result<(StatusCode, Json<Target>), ApiError> {
    caller.require_operator()?;
    validate::name("name", &body.name)?;
    let provider = state.providers.get(&body.kind).ok_or_else(|| {
        ApiError::field(
            "kind",
            format!(
                "unknown credential kind {:?}; known: {}",
                body.kind,
                state.providers.kinds().join(", ")
            ),
        )
    })?;
    if body.actions.is_empty() {
        return Err(ApiError::field(
            "actions",
            "at least one action is required",
        ));
    }
    for action in &body.actions {
        validate::name("actions", action)?;
    }
    for entry in &body.allow {
        let name = entry.strip_prefix("owner:").unwrap_or(entry);
        if entry != "*" && validate::text("allow", name, 256, true).is_err() {
            return Err(ApiError::field("allow", format!("invalid entry {entry:?}")));
        }
    }
    if body.max_ttl.as_secs() == 0 {
        return Err(ApiError::field("max_ttl", "must be greater than zero"));
    }
    if body.default_ttl.as_secs() == 0 || body.default_ttl > body.max_ttl {
        return Err(ApiError::field(
            "default_ttl",
            "must be greater than zero and at most max_ttl",
        ));
    }
    if !provider.external() && body.max_ttl > state.token_max_ttl {
        return Err(ApiError::field(
            "max_ttl",
            format!(
                "must be at most the broker's token_max_ttl ({})",
                state.token_max_ttl
            ),
        ));
    }
    if let Some(cedar) = &state.cedar {
        let engine = cedar.current();
        let declared: Vec<&str> = engine.actions().collect();
        if let Some(missing) = body
            .actions
            .iter()
            .find(|a| !declared.contains(&a.as_str()))
        {
            return Err(ApiError::field(
                "actions",
                format!("action {missing:?} is not declared in the policy schema; declare it in a .cedarschema fragment in the policy directory"),
            ));
        }
    }
    if !body.settings.is_object() {
        return Err(ApiError::field("settings", "must be a JSON object"));
    }
    let target = Target {
        name: body.name,
        kind: body.kind,
        actions: body.actions,
        default_ttl: body.default_ttl,
        max_ttl: body.max_ttl,
        allow: body.allow,
        settings: body.settings,
        created_at: mayfly_core::now(),
    };
    provider.validate_target(&target, None)?;
    let mut event = AuditDraft::new(AuditKind::TargetCreated, caller.0.actor()).detail(serde_json::json!({
        "kind": target.kind, "actions": target.actions, "max_ttl": target.max_ttl, "allow": target.allow,
    }));
    event.target = Some(target.name.clone());
    state.store.create_target(&target, None, event).await?;
    Ok((StatusCode::CREATED, Json(target)))
}

#[utoipa::path(get, path = "/v1/targets", responses((status = 200, body = [Target])))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<Target>>, ApiError> {
    Ok(Json(state.store.list_targets().await?))
}

#[utoipa::path(get, path = "/v1/targets/{name}", responses((status = 200, body = Target), (status = 404, body = crate::error::Problem)))]
pub async fn show(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Target>, ApiError> {
    state
        .store
        .get_target(&name)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound {
            what: "target",
            id: name,
            field: Some("target"),
        })
}
