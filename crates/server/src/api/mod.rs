//! HTTP API under `/v1`, OAuth endpoints, discovery, health and metrics.
//!
//! The request and response types the `mayfly` CLI uses derive both serde directions: the
//! CLI sends and reads the very structs the handlers take and return.

use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::error::{json_rejection, ApiError};
use crate::state::AppState;

pub mod audit;
pub mod grants;
pub mod identities;
pub mod leases;
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
        .route("/v1/whoami", get(system::whoami))
        .route("/v1/keys/rotate", post(system::rotate_keys))
        .route(
            "/v1/identities",
            post(identities::create).get(identities::list),
        )
        .route("/v1/identities/{id}", get(identities::show))
        .route("/v1/identities/{id}/disable", post(identities::disable))
        .route("/v1/identities/{id}/enable", post(identities::enable))
        .route("/v1/targets", post(targets::create).get(targets::list))
        .route("/v1/targets/{name}", get(targets::show))
        .route("/v1/targets/{name}/reconcile", post(targets::reconcile))
        .route("/v1/targets/{name}/rotate-root", post(targets::rotate_root))
        .route("/v1/grants", post(grants::request).get(grants::list))
        .route("/v1/grants/{id}", get(grants::show))
        .route("/v1/grants/{id}/revoke", post(grants::revoke))
        .route("/v1/revoke", post(grants::bulk_revoke))
        .route("/v1/policy/explain", post(grants::explain))
        .route("/v1/leases", get(leases::list))
        .route("/v1/leases/{id}", get(leases::show))
        .route("/v1/leases/{id}/renew", post(leases::renew))
        .route("/v1/audit", get(audit::list))
        .route("/v1/audit/verify", get(audit::verify))
        .route("/v1/leases/{id}/revoke", post(leases::revoke))
        .route("/v1/keys", get(system::list_keys))
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::show))
        .route("/v1/tasks/{id}/complete", post(tasks::complete))
        .route("/v1/tasks/{id}/fail", post(tasks::fail))
}
