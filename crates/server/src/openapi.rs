//! The OpenAPI document served at `/openapi.json`, generated from the handlers.
//!
//! Handlers declare what is particular to them (their answers, parameters, and the errors
//! only they give); [`Conventions`] adds what follows from the edge itself to every
//! operation, so it cannot be forgotten on one: the bearer requirement and 401/429 on all
//! but the public operations (tagged `public`), 400/408/413/415 where there is input to
//! reject, and 500/503, all as problem+json.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{Content, Ref, RefOr, Required, Response, ResponseBuilder};
use utoipa::OpenApi;

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(title = "Mayfly", description = "Just-in-time access broker for non-human identities"),
    paths(
        api::system::healthz, api::system::metrics, api::system::openapi, api::system::jwks, api::system::openid_configuration,
        api::system::whoami, api::system::rotate_keys, api::system::introspect,
        api::identities::create, api::identities::list, api::identities::show, api::identities::disable, api::identities::enable,
        api::targets::create, api::targets::list, api::targets::show, api::targets::reconcile, api::targets::rotate_root,
        api::grants::request, api::grants::list, api::grants::show, api::grants::revoke, api::grants::bulk_revoke, api::grants::explain,
        api::leases::list, api::leases::show, api::leases::renew,
        api::audit::list, api::audit::verify, api::audit::checkpoint, api::audit::take_checkpoint, api::audit::keys,
        api::leases::revoke, api::system::list_keys,
        api::operators::create, api::operators::list, api::operators::revoke,
        api::targets::update, api::targets::delete, api::identities::update, api::identities::delete,
        api::oauth::token, api::oauth::revoke, api::oauth::authorization_server,
        api::tasks::create, api::tasks::list, api::tasks::show, api::tasks::complete, api::tasks::fail,
        api::approvals::list, api::approvals::reviews, api::approvals::approve, api::approvals::deny,
        api::approvals::close_review, api::approvals::collect,
    ),
    components(schemas(
        crate::error::Problem,
        mayfly_core::model::Identity, mayfly_core::model::Target, mayfly_core::model::Grant, mayfly_core::model::Lease,
        mayfly_core::audit::AuditEvent, mayfly_core::audit::VerifyReport, mayfly_core::audit::ChainBreak, mayfly_core::audit::CheckpointCovered, mayfly_core::checkpoint::Checkpoint,
        mayfly_core::store::RevokeOutcome, mayfly_core::policy::Decision,
        mayfly_core::model::Task, mayfly_core::model::TaskState,
        mayfly_core::model::ApprovalRecord, mayfly_core::model::ApprovalState, mayfly_core::model::ApprovalVote,
    )),
    tags((name = "public", description = "Health, metrics and discovery: no authentication")),
    modifiers(&Conventions),
)]
struct ApiDoc;

/// Operations tagged with this need no authentication.
const PUBLIC: &str = "public";
const PROBLEM: &str = "application/problem+json";

struct Conventions;

impl utoipa::Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let public = operation
                    .tags
                    .as_ref()
                    .is_some_and(|tags| tags.iter().any(|t| t == PUBLIC));
                if !public {
                    operation.security = Some(vec![SecurityRequirement::new(
                        "bearer",
                        Vec::<String>::new(),
                    )]);
                    add_problem(operation, 401, "missing, malformed or rejected credentials");
                    add_problem(
                        operation,
                        429,
                        "too many failed authentications from this source",
                    );
                }
                let has_params = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if let Some(body) = &operation.request_body {
                    let json = body.content.contains_key("application/json");
                    let required = matches!(body.required, Some(Required::True));
                    add_problem(operation, 400, "invalid request; `field` names the culprit");
                    add_problem(operation, 408, "the request body did not arrive in time");
                    add_problem(operation, 413, "request body too large");
                    if json && required {
                        add_problem(operation, 415, "expected Content-Type: application/json");
                    }
                } else if has_params {
                    add_problem(operation, 400, "invalid parameter");
                }
                add_problem(operation, 500, "internal error; see the server log");
                add_problem(operation, 503, "the store is unavailable");
            }
        }
    }
}

/// Declares a problem answer for `status` unless the handler already declared one.
fn add_problem(operation: &mut Operation, status: u16, description: &str) {
    let responses = &mut operation.responses.responses;
    let key = status.to_string();
    if responses.contains_key(&key) {
        return;
    }
    let response: Response = ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM,
            Content::new(Some(RefOr::Ref(Ref::from_schema_name("Problem")))),
        )
        .build();
    responses.insert(key, RefOr::T(response));
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
