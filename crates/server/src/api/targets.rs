//! `/v1/targets`: what access can be granted to, and how credentials for it are made.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{LeaseSelector, RevocationReason, Target};
use mayfly_core::policy::{Outcome, PolicyRequest};
use mayfly_core::provider::{ProviderError, ReconcileReport, TargetAccess};
use mayfly_core::secret::SecretString;
use mayfly_core::validate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiJson, ApiPath, ApiQuery};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::providers::{admin_secret, secret_context};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
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
    /// Admin connection URL with its password, for external kinds (`postgres`, `mariadb`).
    /// Stored sealed under the master key; never returned, logged or audited.
    #[serde(default, serialize_with = "mayfly_core::secret::expose_in_request")]
    #[schema(value_type = Option<String>)]
    pub admin: Option<SecretString>,
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

/// A stored target, with what the operator should know about it.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct CreatedTarget {
    #[serde(flatten)]
    pub target: Target,
    /// Problems that did not stop the target from being stored (e.g. another target on
    /// the same database server whose usernames share this one's prefix).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The database server (kind and `host:port` of the admin URL) and username prefix of a
/// database target; `None` for other kinds.
fn server_and_prefix(target: &Target, admin: Option<&SecretString>) -> Option<(String, String)> {
    use mayfly_providers::{common::Config, conn::Admin};
    let spec = match target.kind.as_str() {
        "postgres" => &mayfly_providers::postgres::SPEC,
        "mariadb" => &mayfly_providers::mariadb::SPEC,
        _ => return None,
    };
    let config = Config::from_target(spec, target).ok()?;
    let admin = Admin::parse(spec, admin).ok()?;
    Some((
        format!("{}://{}:{}", spec.kind, admin.host(), admin.port(spec)),
        config.username.prefix().to_string(),
    ))
}

/// Other targets on the same database server whose username prefix overlaps `target`'s:
/// their users look like each other's. Reconciliation tells them apart by the store's
/// record, but operators reading the server cannot, so it is worth a warning.
async fn shared_prefix_warnings(
    state: &AppState,
    target: &Target,
    admin: Option<&SecretString>,
) -> Result<Vec<String>, ApiError> {
    let Some((server, prefix)) = server_and_prefix(target, admin) else {
        return Ok(Vec::new());
    };
    let mut warnings = Vec::new();
    for other in state.store.list_targets().await? {
        if other.name == target.name || other.kind != target.kind {
            continue;
        }
        let other_admin = admin_secret(state, &other.name).await?;
        let Some((other_server, other_prefix)) = server_and_prefix(&other, other_admin.as_ref())
        else {
            continue;
        };
        if other_server == server
            && (other_prefix.starts_with(&prefix) || prefix.starts_with(&other_prefix))
        {
            warnings.push(format!(
                "target {:?} on the same server uses the username prefix {other_prefix:?}, which overlaps {prefix:?}; give each target its own prefix so their users can be told apart",
                other.name
            ));
        }
    }
    Ok(warnings)
}

/// The checks every stored target passes, on create and on update: actions, allow list,
/// TTLs (against each other, the broker's token lifetime), policy-declared actions.
fn check_fields(
    state: &AppState,
    provider: &dyn mayfly_core::provider::Provider,
    target: &Target,
) -> Result<(), ApiError> {
    if target.actions.is_empty() {
        return Err(ApiError::field(
            "actions",
            "at least one action is required",
        ));
    }
    for action in &target.actions {
        validate::name("actions", action)?;
    }
    for entry in &target.allow {
        let name = entry.strip_prefix("owner:").unwrap_or(entry);
        if entry != "*" && validate::text("allow", name, 256, true).is_err() {
            return Err(ApiError::field("allow", format!("invalid entry {entry:?}")));
        }
    }
    if target.max_ttl.as_secs() == 0 {
        return Err(ApiError::field("max_ttl", "must be greater than zero"));
    }
    if target.default_ttl.as_secs() == 0 || target.default_ttl > target.max_ttl {
        return Err(ApiError::field(
            "default_ttl",
            "must be greater than zero and at most max_ttl",
        ));
    }
    if !provider.external() && target.max_ttl > state.token_max_ttl {
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
        if let Some(missing) = target
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
    if !target.settings.is_object() {
        return Err(ApiError::field("settings", "must be a JSON object"));
    }
    Ok(())
}

/// The provider's own check of the settings (and admin URL) of a target.
fn check_settings(
    provider: &dyn mayfly_core::provider::Provider,
    target: &Target,
    admin: Option<&SecretString>,
) -> Result<(), ApiError> {
    provider
        .validate_target(target, admin)
        .map_err(|e| match e {
            ProviderError::BadSettings(m) => ApiError::field("settings", m),
            other => other.into(),
        })
}

#[utoipa::path(post, path = "/v1/targets", request_body = CreateTarget,
    responses((status = 201, description = "created", body = CreatedTarget), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "conflicts with the current state", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateTarget>,
) -> Result<(StatusCode, Json<CreatedTarget>), ApiError> {
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
    check_fields(&state, provider.as_ref(), &target)?;
    if provider.external() && body.admin.is_none() {
        return Err(ApiError::field(
            "admin",
            format!(
                "{} targets need the admin connection URL Mayfly uses to create users",
                target.kind
            ),
        ));
    }
    check_settings(provider.as_ref(), &target, body.admin.as_ref())?;
    let mut warnings = shared_prefix_warnings(&state, &target, body.admin.as_ref()).await?;
    let access = TargetAccess {
        target: &target,
        admin: body.admin.as_ref(),
    };
    match provider.check_target(access).await {
        Ok(()) => {}
        Err(ProviderError::BadSettings(m)) => return Err(ApiError::field("settings", m)),
        // Created all the same: a target that is down now is still the right target.
        Err(e) => warnings.push(format!(
            "the settings could not be checked against {} now: {e}",
            target.name
        )),
    }
    for w in &warnings {
        tracing::warn!(target = %target.name, "{w}");
    }
    let sealed = match &body.admin {
        Some(secret) => Some(
            state
                .master
                .seal(secret.expose().as_bytes(), &secret_context(&target.name))
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        ),
        None => None,
    };
    let mut event = AuditDraft::new(AuditKind::TargetCreated, caller.0.actor()).detail(serde_json::json!({
        "kind": target.kind, "actions": target.actions, "max_ttl": target.max_ttl, "allow": target.allow,
    }));
    event.target = Some(target.name.clone());
    state
        .store
        .create_target(&target, sealed.as_deref(), event)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTarget { target, warnings }),
    ))
}

/// A target as a workload sees it: what it needs to ask for access, nothing about how
/// credentials are made or who else may have them (no allow list, settings or hosts).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TargetSummary {
    pub name: String,
    pub kind: String,
    pub actions: Vec<String>,
    pub default_ttl: Ttl,
    pub max_ttl: Ttl,
}

impl From<Target> for TargetSummary {
    fn from(t: Target) -> Self {
        TargetSummary {
            name: t.name,
            kind: t.kind,
            actions: t.actions,
            default_ttl: t.default_ttl,
            max_ttl: t.max_ttl,
        }
    }
}

/// Operators see whole targets; workloads see summaries.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TargetView {
    Full(Target),
    Summary(TargetSummary),
}

/// Whether policy could allow this workload some action of `target` (asked as a request
/// without context would be, and recording nothing). Targets it could not are not shown
/// to it at all, as other identities' grants are not.
fn could_request(state: &AppState, caller: &Caller, target: &Target) -> bool {
    let Some(identity) = &caller.1 else {
        return caller.0.is_operator();
    };
    let context = serde_json::Value::Object(Default::default());
    let now = mayfly_core::now();
    target.actions.iter().any(|action| {
        state
            .policy
            .decide(&PolicyRequest {
                principal: &caller.0,
                identity,
                target,
                action,
                purpose: "list targets",
                task: "list targets",
                requested_ttl: target.default_ttl,
                context: &context,
                now,
            })
            .is_ok_and(|d| d.outcome != Outcome::Deny)
    })
}

fn view(caller: &Caller, target: Target) -> TargetView {
    if caller.0.is_operator() {
        TargetView::Full(target)
    } else {
        TargetView::Summary(target.into())
    }
}

/// Operators get every target in full; a workload gets summaries of the targets policy
/// could allow it.
#[utoipa::path(get, path = "/v1/targets", responses((status = 200, description = "targets the caller may see: operators all, in full; a workload summaries of those policy could allow it", body = [TargetView])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TargetView>>, ApiError> {
    let targets = state.store.list_targets().await?;
    Ok(Json(
        targets
            .into_iter()
            .filter(|t| could_request(&state, &caller, t))
            .map(|t| view(&caller, t))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/v1/targets/{name}", params(("name" = String, Path, description = "Target name")),
    responses((status = 200, description = "the target (a summary for workloads)", body = TargetView), (status = 404, description = "no such target, or not one the caller could request", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<TargetView>, ApiError> {
    // One a workload may not see is reported absent, so names cannot be probed.
    let target = state
        .store
        .get_target(&name)
        .await?
        .filter(|t| could_request(&state, &caller, t))
        .ok_or(ApiError::NotFound {
            what: "target",
            id: name,
            field: Some("target"),
        })?;
    Ok(Json(view(&caller, target)))
}

async fn external_target(
    state: &AppState,
    name: &str,
) -> Result<
    (
        mayfly_core::model::Target,
        std::sync::Arc<dyn mayfly_core::provider::Provider>,
    ),
    ApiError,
> {
    let target = state
        .store
        .get_target(name)
        .await?
        .ok_or_else(|| ApiError::NotFound {
            what: "target",
            id: name.to_string(),
            field: Some("target"),
        })?;
    let provider = state
        .providers
        .get(&target.kind)
        .cloned()
        .ok_or_else(|| ApiError::Internal(format!("no provider for {:?}", target.kind)))?;
    if !provider.external() {
        return Err(ApiError::Conflict {
            detail: format!(
                "target {name:?} is a {} target: it has no users to reconcile or root to rotate",
                target.kind
            ),
        });
    }
    Ok((target, provider))
}

/// Drops the users Mayfly created on the target whose leases have all ended; prefixed
/// users it cannot prove it created for this target are listed as `unknown` and kept.
#[utoipa::path(post, path = "/v1/targets/{name}/reconcile", params(("name" = String, Path, description = "Target name")),
    responses((status = 200, description = "what reconciliation removed", body = ReconcileReport), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such target", body = crate::error::Problem, content_type = "application/problem+json"), (status = 502, description = "the target failed or is unreachable", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn reconcile(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ReconcileReport>, ApiError> {
    caller.require_operator()?;
    let (target, _) = external_target(&state, &name).await?;
    Ok(Json(
        crate::scheduler::reconcile_target(&state, &target, &caller.0.actor()).await?,
    ))
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct RotateRootResponse {
    pub target: String,
    pub rotated: bool,
}

/// Replaces the target's admin password with a new random one only Mayfly knows; the new
/// one is recorded before the target changes, so a crash cannot lose it.
#[utoipa::path(post, path = "/v1/targets/{name}/rotate-root", params(("name" = String, Path, description = "Target name")),
    responses((status = 200, description = "the admin credential was rotated", body = RotateRootResponse), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such target", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "not an external target, or a rotation of it is still being settled", body = crate::error::Problem, content_type = "application/problem+json"), (status = 502, description = "the target failed or is unreachable", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn rotate_root(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RotateRootResponse>, ApiError> {
    caller.require_operator()?;
    let (target, provider) = external_target(&state, &name).await?;
    // Run to completion even if the client goes away: the protocol's steps must not be
    // cut between the target's change and the store's commit.
    let actor = caller.0.actor();
    let task = tokio::spawn(async move {
        crate::providers::rotate_root(&state, &target, provider.as_ref(), &actor).await?;
        Ok(RotateRootResponse {
            target: name,
            rotated: true,
        })
    });
    match task.await {
        Ok(result) => result.map(Json),
        Err(e) => Err(ApiError::Internal(format!(
            "root rotation task failed: {e}"
        ))),
    }
}

/// The fields of a target that can change in place. The name and kind are its identity (a
/// different kind is a different target: delete and add); the admin secret changes only
/// through `rotate-root`. Absent fields are kept; `settings` is replaced whole.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<Ttl>,
    /// Applies to grants from now on; live leases keep the cap they were issued with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Ttl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// Replaces the provider settings whole (checked by the provider as on create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
}

fn target_not_found(name: &str) -> ApiError {
    ApiError::NotFound {
        what: "target",
        id: name.to_string(),
        field: Some("target"),
    }
}

/// Changes a target's actions, TTLs, allow list or settings, audited with what changed.
#[utoipa::path(patch, path = "/v1/targets/{name}", params(("name" = String, Path, description = "Target name")), request_body = UpdateTarget,
    responses((status = 200, description = "the updated target", body = Target), (status = 400, description = "invalid request; `field` names the culprit", body = crate::error::Problem, content_type = "application/problem+json"), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such target", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateTarget>,
) -> Result<Json<Target>, ApiError> {
    caller.require_operator()?;
    let before = state
        .store
        .get_target(&name)
        .await?
        .ok_or_else(|| target_not_found(&name))?;
    let mut after = before.clone();
    let UpdateTarget {
        actions,
        default_ttl,
        max_ttl,
        allow,
        settings,
    } = body;
    if actions.is_none()
        && default_ttl.is_none()
        && max_ttl.is_none()
        && allow.is_none()
        && settings.is_none()
    {
        return Err(ApiError::BadRequest {
            field: None,
            detail: "nothing to change: give at least one of actions, default_ttl, max_ttl, allow, settings".into(),
        });
    }
    after.actions = actions.unwrap_or(after.actions);
    after.default_ttl = default_ttl.unwrap_or(after.default_ttl);
    after.max_ttl = max_ttl.unwrap_or(after.max_ttl);
    after.allow = allow.unwrap_or(after.allow);
    after.settings = settings.unwrap_or(after.settings);
    let provider = state
        .providers
        .get(&after.kind)
        .cloned()
        .ok_or_else(|| ApiError::Internal(format!("no provider for {:?}", after.kind)))?;
    check_fields(&state, provider.as_ref(), &after)?;
    if after.settings != before.settings {
        let admin = admin_secret(&state, &name).await?;
        check_settings(provider.as_ref(), &after, admin.as_ref())?;
    }
    let mut event = AuditDraft::new(AuditKind::TargetUpdated, caller.0.actor()).detail(
        serde_json::json!({
            "changed": super::changes(&before, &after, &["actions", "default_ttl", "max_ttl", "allow", "settings"]),
        }),
    );
    event.target = Some(name.clone());
    Ok(Json(state.store.update_target(&after, event).await?))
}

/// Deletes a target. Refused (409) while any of its leases is live, unless
/// `revoke_leases=true`: those are then revoked first, and the target is deleted once the
/// revocation worker has confirmed every external credential gone. Its grants, leases and
/// audit entries stay.
#[utoipa::path(delete, path = "/v1/targets/{name}", params(("name" = String, Path, description = "Target name"), super::DeleteQuery),
    responses((status = 200, description = "deleted", body = super::DeleteResponse), (status = 403, description = "operators only", body = crate::error::Problem, content_type = "application/problem+json"), (status = 404, description = "no such target", body = crate::error::Problem, content_type = "application/problem+json"), (status = 409, description = "live leases (or a root rotation being settled) keep the target", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<super::DeleteQuery>,
) -> Result<Json<super::DeleteResponse>, ApiError> {
    caller.require_operator()?;
    state
        .store
        .get_target(&name)
        .await?
        .ok_or_else(|| target_not_found(&name))?;
    let actor = caller.0.actor();
    let mut revoked = mayfly_core::store::RevokeOutcome::default();
    if query.revoke_leases {
        revoked = state
            .store
            .revoke(
                &LeaseSelector::Target(name.clone()),
                RevocationReason::Admin,
                &actor,
                mayfly_core::now(),
            )
            .await?;
        state.record_revocation(RevocationReason::Admin.as_str(), revoked);
        let left = super::wait_for_revocations(|| async {
            Ok(state.store.live_provider_states(&name).await?.len())
        })
        .await?;
        if left > 0 {
            return Err(ApiError::Conflict {
                detail: format!(
                    "target {name:?}: {left} lease(s) are still being revoked (the target has not confirmed their credentials gone; they are retried in the background, see `mayfly leases --state revoking`); delete again once none is left"
                ),
            });
        }
    }
    let mut event = AuditDraft::new(AuditKind::TargetDeleted, actor)
        .detail(serde_json::json!({ "revoked_leases": revoked.total() }));
    event.target = Some(name.clone());
    state.store.delete_target(&name, event).await?;
    Ok(Json(super::DeleteResponse {
        deleted: name,
        revoked,
    }))
}
