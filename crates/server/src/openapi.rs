//! The OpenAPI document served at `/openapi.json`, generated from the handlers.

use utoipa::OpenApi;

use crate::api;

#[derive(OpenApi)]
#[openapi(
    info(title = "Mayfly", description = "Just-in-time access broker for non-human identities"),
    paths(
        api::system::healthz, api::system::metrics, api::system::jwks, api::system::openid_configuration,
        api::system::whoami, api::system::rotate_keys, api::system::introspect,
        api::identities::create, api::identities::list, api::identities::show, api::identities::disable, api::identities::enable,
        api::targets::create, api::targets::list, api::targets::show, api::targets::reconcile, api::targets::rotate_root,
        api::grants::request, api::grants::list, api::grants::show, api::grants::revoke, api::grants::bulk_revoke, api::grants::explain,
        api::leases::list, api::leases::show, api::leases::renew,
        api::audit::list, api::audit::verify,
    ),
    components(schemas(
        crate::error::Problem,
        mayfly_core::model::Identity, mayfly_core::model::Target, mayfly_core::model::Grant, mayfly_core::model::Lease,
        mayfly_core::audit::AuditEvent, mayfly_core::audit::VerifyReport, mayfly_core::audit::ChainBreak,
        mayfly_core::store::RevokeOutcome, mayfly_core::policy::Decision,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
