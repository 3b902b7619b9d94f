//! Workloads authenticate with an OIDC JWT from a trusted issuer (no static keys), get
//! grants only for themselves, and lose access when disabled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::issuer::Issuer;
use common::{Broker, Options, BIN};
use reqwest::Method;
use serde_json::json;

fn config(issuer: &Issuer, jwks_path: &std::path::Path) -> String {
    format!(
        r#"
[[auth.oidc]]
issuer = "{}"
audiences = ["mayfly"]
jwks_file = "{}"
algorithms = ["EdDSA"]
attributes = ["repository"]

[[auth.oidc.rules]]
identity = "billing-deployer"
claims = {{ sub = "repo:acme/billing:ref:refs/heads/main" }}

[[auth.oidc.rules]]
identity = "billing-ci"
claims = {{ sub = "repo:acme/billing:*" }}
"#,
        issuer.url,
        jwks_path.display()
    )
}

#[tokio::test]
async fn workload_with_oidc_jwt_gets_its_own_grant() {
    let issuer = Issuer::new();
    let dir = common::scratch_dir();
    let jwks_path = dir.join("ci-jwks.json");
    std::fs::write(&jwks_path, issuer.jwks().to_string()).unwrap();
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            config: Some(config(&issuer, &jwks_path)),
            ..Options::default()
        },
    );
    broker
        .add_identity("billing-deployer", "team-billing")
        .await;
    broker.add_identity("billing-ci", "team-billing").await;
    broker
        .add_token_target("billing-api", &["owner:team-billing"])
        .await;

    let main = issuer.token("repo:acme/billing:ref:refs/heads/main");
    let (status, me, _) = broker
        .call(Method::GET, "/v1/whoami", Some(&main), None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["type"].as_str(), me["identity"].as_str()),
        (Some("workload"), Some("billing-deployer"))
    );
    assert_eq!(me["attributes"]["repository"], "acme/billing");
    assert_eq!(me["owner"], "team-billing");

    let body = json!({"target": "billing-api", "action": "write", "purpose": "deploy", "task": "run-7", "ttl": "5m"});
    let (status, issued, _) = broker
        .call(Method::POST, "/v1/grants", Some(&main), Some(body.clone()))
        .await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["grant"]["identity"], "billing-deployer");

    // A workload cannot ask on behalf of another identity, nor administer.
    let mut other = body.clone();
    other["identity"] = json!("billing-ci");
    let (status, problem, _) = broker
        .call(Method::POST, "/v1/grants", Some(&main), Some(other))
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("not_your_identity"))
    );
    let (status, _, _) = broker
        .call(Method::GET, "/v1/identities", Some(&main), None)
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = broker
        .call(Method::GET, "/v1/audit", Some(&main), None)
        .await;
    assert_eq!(status, 403);

    // It sees only its own grants and may end them itself.
    let branch = issuer.token("repo:acme/billing:ref:refs/heads/feature");
    let (status, theirs, _) = broker
        .call(Method::GET, "/v1/grants", Some(&branch), None)
        .await;
    assert_eq!(status, 200);
    assert!(theirs.as_array().unwrap().is_empty());
    let grant_id = issued["grant"]["id"].as_str().unwrap();
    let (status, _, _) = broker
        .call(
            Method::POST,
            &format!("/v1/grants/{grant_id}/revoke"),
            Some(&branch),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404, "another workload's grant is invisible");
    let (status, _, _) = broker
        .call(
            Method::POST,
            &format!("/v1/grants/{grant_id}/revoke"),
            Some(&main),
            Some(json!({"reason": "admin"})),
        )
        .await;
    assert_eq!(status, 400, "workloads cannot claim the admin reason");
    let (status, done, _) = broker
        .call(
            Method::POST,
            &format!("/v1/grants/{grant_id}/revoke"),
            Some(&main),
            Some(json!({})),
        )
        .await;
    assert_eq!((status, done["total"].as_u64()), (200, Some(1)));

    // Unbound subject, and a disabled identity, are refused with specific codes.
    let stranger = issuer.token("repo:evil/fork:ref:refs/heads/main");
    let (status, problem, _) = broker
        .call(Method::GET, "/v1/whoami", Some(&stranger), None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("no_rule_matched"))
    );
    broker
        .post("/v1/identities/billing-deployer/disable", json!({}))
        .await;
    let (status, problem, _) = broker
        .call(Method::GET, "/v1/whoami", Some(&main), None)
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("identity_disabled"))
    );
    let audit = broker.audit("limit=10000").await;
    assert!(audit
        .iter()
        .any(|e| e["kind"] == "auth.failed" && e["detail"]["code"] == "identity_disabled"));
    assert!(
        !serde_json::to_string(&audit).unwrap().contains(&main),
        "a workload token reached the audit log"
    );
}

#[tokio::test]
async fn workload_with_jwt_svid_is_bound_by_spiffe_id() {
    let domain_key = Issuer::new();
    let dir = common::scratch_dir();
    let bundle = dir.join("prod-acme.jwks");
    std::fs::write(&bundle, domain_key.jwks().to_string()).unwrap();
    let config = format!(
        r#"
[[auth.spiffe]]
trust_domain = "prod.acme"
jwt_bundle_file = "{}"
audiences = ["mayfly"]

[[auth.spiffe.rules]]
identity = "payments-api"
spiffe_id_pattern = "spiffe://prod.acme/ns/payments/sa/*"
"#,
        bundle.display()
    );
    let broker = Broker::start_with_config(BIN, &dir, config);
    broker.add_identity("payments-api", "team-payments").await;
    broker.add_token_target("ledger", &["payments-api"]).await;

    let svid = |sub: &str| {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "ci-1"});
        let claims = json!({"sub": sub, "aud": ["mayfly"], "exp": now + 300, "iat": now});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = domain_key.pair.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.as_ref()))
    };
    let token = svid("spiffe://prod.acme/ns/payments/sa/api");
    let (status, me, _) = broker
        .call(Method::GET, "/v1/whoami", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["method"].as_str(), me["identity"].as_str()),
        (Some("jwt-svid"), Some("payments-api"))
    );
    assert_eq!(
        me["attributes"]["spiffe_id"],
        "spiffe://prod.acme/ns/payments/sa/api"
    );
    let body = json!({"target": "ledger", "action": "read", "purpose": "settle", "task": "batch-9", "ttl": "5m"});
    let (status, issued, _) = broker
        .call(Method::POST, "/v1/grants", Some(&token), Some(body))
        .await;
    assert_eq!(status, 201, "{issued}");

    // Another namespace, or another trust domain, is refused with a specific code.
    let (status, problem, _) = broker
        .call(
            Method::GET,
            "/v1/whoami",
            Some(&svid("spiffe://prod.acme/ns/web/sa/api")),
            None,
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("no_rule_matched"))
    );
    let (status, problem, _) = broker
        .call(
            Method::GET,
            "/v1/whoami",
            Some(&svid("spiffe://evil.example/ns/payments/sa/api")),
            None,
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("untrusted_issuer")),
        "{problem}"
    );
}
