//! HTTP API under `/v1`, OAuth endpoints, discovery, health and metrics.
//!
//! The request and response types the `mayfly` CLI uses derive both serde directions: the
//! CLI sends and reads the very structs the handlers take and return.

use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{json_rejection, ApiError};
use crate::state::AppState;

pub mod approvals;
pub mod audit;
pub mod grants;
pub mod identities;
pub mod leases;
pub mod oauth;
pub mod operators;
pub mod system;
pub mod targets;
pub mod tasks;

/// `Json` whose rejections are problem+json naming the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// An optional JSON body: empty means `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| ApiError::TooLarge {
                limit: crate::BODY_LIMIT,
            })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJson)
            .map_err(|e| {
                let detail = e.to_string();
                ApiError::BadRequest {
                    field: crate::error::field_from_serde_message(&detail),
                    detail,
                }
            })
    }
}

/// Query strings with problem+json rejections.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e) => Err(ApiError::BadRequest {
                field: None,
                detail: e.body_text(),
            }),
        }
    }
}

/// Path ids with problem+json rejections (e.g. a malformed UUID).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::BadRequest {
                field: Some("id".into()),
                detail: e.body_text(),
            }),
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .route("/.well-known/jwks.json", get(system::jwks))
        .route(
            "/.well-known/openid-configuration",
            get(system::openid_configuration),
        )
        .route("/oauth2/introspect", post(system::introspect))
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/revoke", post(oauth::revoke))
        .route(
            "/.well-known/oauth-authorization-server",
            get(oauth::authorization_server),
        )
        .route("/v1/whoami", get(system::whoami))
        .route("/v1/keys/rotate", post(system::rotate_keys))
        .route(
            "/v1/identities",
            post(identities::create).get(identities::list),
        )
        .route("/v1/identities/{id}/disable", post(identities::disable))
        .route("/v1/identities/{id}/enable", post(identities::enable))
        .route("/v1/targets", post(targets::create).get(targets::list))
        .route("/v1/targets/{name}/reconcile", post(targets::reconcile))
        .route("/v1/targets/{name}/rotate-root", post(targets::rotate_root))
        .route("/v1/grants", post(grants::request).get(grants::list))
        .route("/v1/grants/{id}", get(grants::show))
        .route("/v1/grants/{id}/revoke", post(grants::revoke))
        .route("/v1/grants/{id}/approve", post(approvals::approve))
        .route("/v1/grants/{id}/deny", post(approvals::deny))
        .route("/v1/grants/{id}/collect", post(approvals::collect))
        .route("/v1/approvals", get(approvals::list))
        .route("/v1/reviews", get(approvals::reviews))
        .route("/v1/reviews/{id}/close", post(approvals::close_review))
        .route("/v1/revoke", post(grants::bulk_revoke))
        .route("/v1/policy/explain", post(grants::explain))
        .route("/v1/leases", get(leases::list))
        .route("/v1/leases/{id}", get(leases::show))
        .route("/v1/leases/{id}/renew", post(leases::renew))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route(
            "/v1/audit/checkpoint",
            get(audit::checkpoint).post(audit::take_checkpoint),
        )
        .route("/v1/audit/keys", get(audit::keys))
        .route("/v1/leases/{id}/revoke", post(leases::revoke))
        .route("/v1/keys", get(system::list_keys))
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::show))
        .route("/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/v1/tasks/{id}/fail", post(tasks::fail))
        .route(
            "/v1/operator/tokens",
            post(operators::create).get(operators::list),
        )
        .route("/v1/operator/tokens/{name}/revoke", post(operators::revoke))
        .route(
            "/v1/targets/{name}",
            get(targets::show)
                .patch(targets::update)
                .delete(targets::delete),
        )
        .route(
            "/v1/identities/{id}",
            get(identities::show)
                .patch(identities::update)
                .delete(identities::delete),
        )
}

/// The audit detail of an update: each of `fields` whose JSON form differs between
/// `before` and `after`, as `{field: {from, to}}`. Only non-secret records are passed.
pub(crate) fn changes<T: serde::Serialize>(
    before: &T,
    after: &T,
    fields: &[&str],
) -> serde_json::Value {
    let (before, after) = (
        serde_json::to_value(before).unwrap_or_default(),
        serde_json::to_value(after).unwrap_or_default(),
    );
    let mut changed = serde_json::Map::new();
    for field in fields {
        let (from, to) = (&before[*field], &after[*field]);
        if from != to {
            changed.insert(
                (*field).to_string(),
                serde_json::json!({ "from": from, "to": to }),
            );
        }
    }
    serde_json::Value::Object(changed)
}

/// Whether delete requests also end the record's live leases first.
#[derive(Debug, Default, serde::Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Revoke the live leases first (through the ordinary revocation path), then delete
    /// once none is left. Without it, live leases make the delete a 409.
    #[serde(default)]
    pub revoke_leases: bool,
}

/// What a delete did.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeleteResponse {
    /// The identity id or target name that was deleted.
    pub deleted: String,
    /// Leases ended first (with `revoke_leases`); zero otherwise.
    pub revoked: mayfly_core::store::RevokeOutcome,
}

/// How long a delete with `revoke_leases` waits for the revocation worker to confirm
/// external credentials gone before answering 409 (they are retried in the background).
pub(crate) const REVOCATION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `live` (how many of the record's leases are still being revoked) until it is
/// zero or [`REVOCATION_WAIT`] has passed; returns the last count.
pub(crate) async fn wait_for_revocations<F, Fut>(mut live: F) -> Result<usize, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, ApiError>>,
{
    let deadline = tokio::time::Instant::now() + REVOCATION_WAIT;
    loop {
        let left = live().await?;
        if left == 0 || tokio::time::Instant::now() >= deadline {
            return Ok(left);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
