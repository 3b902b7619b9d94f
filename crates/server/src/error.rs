//! The one place errors become HTTP: RFC 9457 `application/problem+json`.
//!
//! Client mistakes are answered precisely (naming the field and the reason) and are not
//! logged as errors; internal failures give the client a generic message and the detail
//! goes to the log.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use mayfly_core::auth::AuthRejection;
use mayfly_core::policy::PolicyError;
use mayfly_core::provider::ProviderError;
use mayfly_core::store::StoreError;
use mayfly_core::CoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document, plus Mayfly's stable `code` and the offending `field`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// URI identifying the problem type (`urn:mayfly:problem:<code>`).
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
    /// The request field at fault, as the API spells it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest {
        field: Option<String>,
        detail: String,
    },
    #[error("{0}")]
    Unauthorized(AuthRejection),
    #[error("{detail}")]
    Forbidden { code: &'static str, detail: String },
    #[error("{what} {id:?} not found")]
    NotFound {
        what: &'static str,
        id: String,
        field: Option<&'static str>,
    },
    /// A path no endpoint serves: said in the caller's own terms (method and path), with
    /// where the API is described.
    #[error("no endpoint serves {method} {path}; the API is described at /openapi.json")]
    NoRoute { method: String, path: String },
    #[error("{detail}")]
    Conflict { detail: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error(
        "too many failed authentication attempts from this address; retry in {retry_after_secs} s"
    )]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    /// A credential target (database, broker) failed or could not be reached. `detail` is
    /// the admin-side reason: logged, and shown to operators only (`reveal`); a workload
    /// learns that the target failed, not how its server is set up.
    #[error("{}", target_detail(*.unavailable, detail, *.reveal))]
    Target {
        unavailable: bool,
        detail: String,
        reveal: bool,
    },
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: &str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.to_string()),
            detail: format!("{field}: {}", detail.into()),
        }
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::Forbidden {
            code: "forbidden",
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Target { .. } => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &str {
        match self {
            ApiError::BadRequest { .. } => "invalid_request",
            ApiError::Unauthorized(r) => r.code(),
            ApiError::Forbidden { code, .. } => code,
            ApiError::NotFound { .. } | ApiError::NoRoute { .. } => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::TooLarge { .. } => "body_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::TooManyRequests { .. } => "too_many_failures",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Target {
                unavailable: true, ..
            } => "target_unavailable",
            ApiError::Target { .. } => "target_failed",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The field the problem names, if any.
    /// Shows a target failure's detail to this caller only if it is an operator: the
    /// detail describes the target's server (database names, roles, grants).
    pub fn for_caller(self, principal: &mayfly_core::auth::Principal) -> Self {
        match self {
            ApiError::Target {
                unavailable,
                detail,
                ..
            } => ApiError::Target {
                unavailable,
                detail,
                reveal: principal.is_operator(),
            },
            other => other,
        }
    }

    pub fn field_name(&self) -> Option<String> {
        match self {
            ApiError::BadRequest { field, .. } => field.clone(),
            ApiError::NotFound { field, .. } => field.map(str::to_string),
            _ => None,
        }
    }

    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            // The detail of an internal error may hold anything; the client gets a pointer
            // to the log instead.
            ApiError::Internal(_) => "internal error; see the server log".to_string(),
            other => other.to_string(),
        };
        Problem {
            type_: format!("urn:mayfly:problem:{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
            code: self.code().to_string(),
            field: self.field_name(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::Unavailable(detail) => tracing::warn!(%detail, "unavailable"),
            ApiError::Target {
                detail,
                unavailable,
                ..
            } => tracing::warn!(%detail, unavailable, "credential target failed"),
            _ => tracing::debug!(code = self.code(), detail = %self, "request rejected"),
        }
        let mut response = (self.status(), axum::Json(self.problem())).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::TooManyRequests { retry_after_secs } = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(retry_after_secs),
            );
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"mayfly\""),
            );
        }
        response
    }
}

/// A problem answer for a status the framework or the connection layer decides (405, 408,
/// 431, …), with its stable code.
pub fn status_problem(status: StatusCode, code: &str, detail: String) -> Response {
    let problem = Problem {
        type_: format!("urn:mayfly:problem:{code}"),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail,
        code: code.to_string(),
        field: None,
    };
    let mut response = (status, axum::Json(problem)).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// Gives an error answer without a body (axum's 405, for one) a problem body, keeping its
/// headers (`Allow`, `Retry-After`, …).
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let reason = status.canonical_reason().unwrap_or("error");
    let code = reason.to_ascii_lowercase().replace([' ', '-'], "_");
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = response
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            format!("method not allowed on this path; allowed: {allowed}")
        }
        _ => reason.to_string(),
    };
    let mut mapped = status_problem(status, &code, detail);
    for (name, value) in response.headers() {
        if name != header::CONTENT_LENGTH {
            mapped
                .headers_mut()
                .entry(name)
                .or_insert_with(|| value.clone());
        }
    }
    mapped
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Invalid { field, reason } => ApiError::BadRequest {
                detail: format!("{field}: {reason}"),
                field: Some(field),
            },
            other => ApiError::Conflict {
                detail: other.to_string(),
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => ApiError::NotFound {
                what,
                id,
                field: None,
            },
            StoreError::Conflict { what, id } => ApiError::Conflict {
                detail: format!("{what} {id:?} already exists"),
            },
            StoreError::Rejected(core) => match core {
                CoreError::Invalid { reason, .. } => ApiError::Conflict { detail: reason },
                other => ApiError::Conflict {
                    detail: other.to_string(),
                },
            },
            StoreError::Unavailable(m) => ApiError::Unavailable(format!("store unavailable: {m}")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::BadRequest { field, reason } => ApiError::BadRequest {
                detail: format!("{field}: {reason}"),
                field: Some(field),
            },
            PolicyError::Internal(m) => ApiError::Internal(format!("policy: {m}")),
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::BadSettings(m) => ApiError::field("settings", m),
            ProviderError::Unavailable(detail) => ApiError::Target {
                unavailable: true,
                detail,
                reveal: false,
            },
            ProviderError::Failed(detail) => ApiError::Target {
                unavailable: false,
                detail,
                reveal: false,
            },
        }
    }
}

fn target_detail(unavailable: bool, detail: &str, reveal: bool) -> String {
    match (unavailable, reveal) {
        (true, true) => format!("target unavailable: {detail}"),
        (false, true) => format!("target failed: {detail}"),
        (true, false) => {
            "the credential target cannot be reached right now; retry later (operators find the reason in the server log)".into()
        }
        (false, false) => {
            "the credential target refused the operation (operators find the reason in the server log)".into()
        }
    }
}

impl From<crate::broker::BrokerError> for ApiError {
    fn from(e: crate::broker::BrokerError) -> Self {
        use crate::broker::BrokerError as B;
        match e {
            B::Invalid { field, reason } => ApiError::BadRequest {
                detail: format!("{field}: {reason}"),
                field: Some(field),
            },
            B::Forbidden { code, detail } => ApiError::Forbidden { code, detail },
            B::NotFound { what, id, field } => ApiError::NotFound { what, id, field },
            B::Core(e) => e.into(),
            B::Store(e) => e.into(),
            B::Policy(e) => e.into(),
            B::Target(e) => e.into(),
            B::Conflict(detail) => ApiError::Conflict { detail },
            B::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

/// Turns serde/axum JSON rejections into problems that name the field.
pub fn json_rejection(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection::*;
    match rejection {
        JsonDataError(e) => {
            let detail = std::error::Error::source(&e)
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.body_text());
            ApiError::BadRequest {
                field: field_from_serde_message(&detail),
                detail,
            }
        }
        JsonSyntaxError(e) => ApiError::BadRequest {
            field: None,
            detail: format!(
                "malformed JSON: {}",
                std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.body_text())
            ),
        },
        MissingJsonContentType(_) => {
            ApiError::UnsupportedMediaType("expected Content-Type: application/json".to_string())
        }
        BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge {
                    limit: crate::BODY_LIMIT,
                }
            } else {
                ApiError::BadRequest {
                    field: None,
                    detail: e.body_text(),
                }
            }
        }
        other => ApiError::BadRequest {
            field: None,
            detail: other.body_text(),
        },
    }
}

/// Serde names fields in backticks: "unknown field `foo`", "missing field `bar`", and
/// prefixes path errors with "a.b: ". Pull the field out so clients can point at it.
pub(crate) fn field_from_serde_message(message: &str) -> Option<String> {
    if let Some(start) = message.find('`') {
        if message[..start].contains("field") {
            let rest = &message[start + 1..];
            if let Some(end) = rest.find('`') {
                return Some(rest[..end].to_string());
            }
        }
    }
    let (path, _) = message.split_once(": ")?;
    (!path.contains(' ') && !path.is_empty()).then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_field_names_are_extracted() {
        assert_eq!(
            field_from_serde_message("unknown field `colour`, expected one of `a`, `b` at line 1"),
            Some("colour".into())
        );
        assert_eq!(
            field_from_serde_message("missing field `purpose` at line 1"),
            Some("purpose".into())
        );
        assert_eq!(
            field_from_serde_message("ttl: duration must not be negative"),
            Some("ttl".into())
        );
        assert_eq!(
            field_from_serde_message("expected value at line 1 column 2"),
            None
        );
    }

    /// A workload learns that the target failed, with a stable code; the admin-side
    /// detail reaches operators only.
    #[test]
    fn target_failures_are_502_with_detail_for_operators_only() {
        use mayfly_core::auth::Principal;
        let secret_detail = "database \"billing_prod\" does not exist";
        for (error, code) in [
            (ProviderError::Failed(secret_detail.into()), "target_failed"),
            (
                ProviderError::Unavailable(secret_detail.into()),
                "target_unavailable",
            ),
        ] {
            let workload = ApiError::from(error).problem();
            assert_eq!(workload.status, 502);
            assert_eq!(workload.code, code);
            assert!(
                !workload.detail.contains("billing_prod"),
                "{}",
                workload.detail
            );
        }
        let operator = ApiError::from(ProviderError::Failed(secret_detail.into()))
            .for_caller(&Principal::Operator { name: "ops".into() })
            .problem();
        assert!(operator.detail.contains("billing_prod"));
    }

    #[test]
    fn internal_detail_is_not_sent() {
        let p = ApiError::Internal("db password=hunter2".into()).problem();
        assert!(!p.detail.contains("hunter2"));
        assert_eq!(p.status, 500);
    }
}
