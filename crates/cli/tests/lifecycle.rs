//! The whole life of a token grant over HTTP against the real binary: issue, verify the JWT
//! from the JWKS with an independent library, introspect, renew, revoke, audit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{eventually, Broker, Options, BIN};
use jsonwebtoken::{decode, decode_header, jwk::JwkSet, Algorithm, DecodingKey, Validation};
use reqwest::Method;
use serde_json::{json, Value};

async fn verify_with_jwks(broker: &Broker, token: &str, audience: &str) -> Value {
    let jwks: JwkSet = serde_json::from_value(broker.get("/.well-known/jwks.json").await).unwrap();
    let kid = decode_header(token).unwrap().kid.expect("kid in header");
    let jwk = jwks.find(&kid).expect("signing key published");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[broker.addr.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "nbf", "iss", "sub", "aud"]);
    decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
        .expect("token verifies from the JWKS alone")
        .claims
}

#[tokio::test]
async fn token_grant_lifecycle() {
    let broker = Broker::start(BIN);
    let discovery = broker.get("/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], broker.addr);
    assert!(discovery["jwks_uri"]
        .as_str()
        .unwrap()
        .ends_with("/.well-known/jwks.json"));

    broker
        .add_identity("billing-deployer", "team-billing")
        .await;
    broker
        .add_token_target("billing-api", &["billing-deployer"])
        .await;

    let issued = broker
        .grant("billing-deployer", "billing-api", "deploy-42", "10m")
        .await;
    assert_eq!(issued["grant"]["state"], "issued");
    assert_eq!(issued["lease"]["state"], "active");
    let token = issued["credential"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let lease_id = issued["lease"]["id"].as_str().unwrap().to_string();
    let grant_id = issued["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(issued["credential"]["token_type"], "Bearer");

    // RFC 9068 claims, verified by an independent JWT library from the JWKS alone.
    let claims = verify_with_jwks(&broker, &token, "billing-api").await;
    for claim in [
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "scope",
        "client_id",
        "grant_id",
        "task",
        "purpose",
    ] {
        assert!(
            claims.get(claim).is_some(),
            "claim {claim} missing: {claims}"
        );
    }
    assert_eq!(claims["sub"], "billing-deployer");
    assert_eq!(claims["jti"], lease_id);
    assert_eq!(claims["grant_id"], grant_id);
    assert_eq!(claims["task"], "deploy-42");
    assert_eq!(claims["scope"], "read");
    let exp = claims["exp"].as_i64().unwrap();
    assert!((590..=600).contains(&(exp - claims["iat"].as_i64().unwrap())));
    let header = decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));

    assert_eq!(broker.introspect(&token).await["active"], true);

    // Renewal extends, but never beyond the cap (the target's 1h maximum).
    let (status, renewed) = broker
        .post(
            &format!("/v1/leases/{lease_id}/renew"),
            json!({"ttl": "30m"}),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    let new_token = renewed["credential"]["access_token"].as_str().unwrap();
    let new_claims = verify_with_jwks(&broker, new_token, "billing-api").await;
    assert!(new_claims["exp"].as_i64().unwrap() > exp);
    assert_eq!(new_claims["jti"], lease_id);
    let (status, capped) = broker
        .post(
            &format!("/v1/leases/{lease_id}/renew"),
            json!({"ttl": "20h"}),
        )
        .await;
    assert_eq!(status, 200, "{capped}");
    assert_eq!(
        capped["lease"]["expires_at"],
        capped["lease"]["max_expires_at"]
    );

    // Revoke: the lease ends, introspection says inactive, a second revoke ends nothing.
    let (status, revoked) = broker
        .post(
            &format!("/v1/grants/{grant_id}/revoke"),
            json!({"reason": "task_complete"}),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["total"], 1);
    assert_eq!(broker.introspect(&token).await["active"], false);
    assert_eq!(broker.introspect(new_token).await["active"], false);
    let lease = broker.get(&format!("/v1/leases/{lease_id}")).await;
    assert_eq!(lease["state"], "revoked");
    assert_eq!(lease["revocation_reason"], "task_complete");
    assert_eq!(
        broker.get(&format!("/v1/grants/{grant_id}")).await["state"],
        "revoked"
    );
    let (_, again) = broker
        .post(&format!("/v1/grants/{grant_id}/revoke"), json!({}))
        .await;
    assert_eq!(again["total"], 0);
    let (status, _) = broker
        .post(&format!("/v1/leases/{lease_id}/renew"), json!({}))
        .await;
    assert_eq!(status, 409, "a revoked lease cannot be renewed");

    // The task's whole story, in order, and an intact chain.
    let kinds: Vec<String> = broker
        .audit("task=deploy-42")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "grant.requested",
            "grant.decided",
            "lease.issued",
            "token.introspected", // the introspection above: a use
            "lease.renewed",
            "lease.renewed",
            "lease.revoked"
        ],
    );
    let report = broker.get("/v1/audit/verify").await;
    assert_eq!(report["first_break"], Value::Null, "{report}");

    // Secrets never reach the audit log.
    let everything = serde_json::to_string(&broker.audit("limit=10000").await).unwrap();
    assert!(!everything.contains(&token));
    assert!(!everything.contains(&broker.token));
}

#[tokio::test]
async fn policy_default_denies_and_records_the_decision() {
    let broker = Broker::start(BIN);
    broker.add_identity("intruder", "nobody").await;
    broker.add_token_target("vault", &[]).await;
    let (status, body) = broker
        .post("/v1/grants", json!({"identity": "intruder", "target": "vault", "action": "read", "purpose": "x", "task": "t1"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "denied");
    assert!(body["detail"].as_str().unwrap().contains("does not allow"));
    let grant = broker
        .get(&format!(
            "/v1/grants/{}",
            body["grant_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(grant["state"], "denied");
    assert!(broker
        .get("/v1/leases")
        .await
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn bulk_revocation_and_kill_switch_report_counts() {
    let broker = Broker::start(BIN);
    broker.add_identity("etl", "team-data").await;
    broker.add_identity("etl-2", "team-data").await;
    broker.add_identity("web", "team-web").await;
    broker.add_token_target("warehouse", &["*"]).await;
    for i in 0..3 {
        broker.grant("etl", "warehouse", "nightly", "10m").await;
        broker
            .grant("etl-2", "warehouse", &format!("job-{i}"), "10m")
            .await;
    }
    let web = broker.grant("web", "warehouse", "nightly", "10m").await;

    let (status, by_task) = broker.post("/v1/revoke", json!({"task": "nightly"})).await;
    assert_eq!(status, 200, "{by_task}");
    assert_eq!(by_task["total"], 4);
    let (_, by_owner) = broker
        .post(
            "/v1/revoke",
            json!({"owner": "team-data", "reason": "admin"}),
        )
        .await;
    assert_eq!(by_owner["total"], 3);
    let (_, none_left) = broker
        .post("/v1/revoke", json!({"owner": "team-data"}))
        .await;
    assert_eq!(none_left["total"], 0);
    let (status, bad) = broker
        .post("/v1/revoke", json!({"task": "a", "owner": "b"}))
        .await;
    assert_eq!(status, 400, "{bad}");
    let (status, bad) = broker
        .post("/v1/revoke", json!({"task": "a", "reason": "ttl"}))
        .await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("reason")));

    // Kill switch: disable revokes everything the identity holds, and it can no longer get more.
    let more = broker.grant("web", "warehouse", "again", "10m").await;
    let (status, disabled) = broker.post("/v1/identities/web/disable", json!({})).await;
    assert_eq!(status, 200, "{disabled}");
    assert_eq!(disabled["revoked"]["revoked"], 1);
    assert_eq!(disabled["identity"]["enabled"], false);
    let lease = broker
        .get(&format!(
            "/v1/leases/{}",
            more["lease"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (lease["state"].as_str(), lease["revocation_reason"].as_str()),
        (Some("revoked"), Some("identity_disabled"))
    );
    let old = broker
        .get(&format!(
            "/v1/leases/{}",
            web["lease"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        old["revocation_reason"], "admin",
        "already-ended leases keep their first reason"
    );
    let (status, body) = broker
        .post("/v1/grants", json!({"identity": "web", "target": "warehouse", "action": "read", "purpose": "x", "task": "t"}))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_verifiable() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    broker.add_token_target("api", &["svc"]).await;
    let before = broker.grant("svc", "api", "t1", "10m").await;
    let old_token = before["credential"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, rotated) = broker.post("/v1/keys/rotate", json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let jwks = broker.get("/.well-known/jwks.json").await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    let after = broker.grant("svc", "api", "t2", "10m").await;
    let new_token = after["credential"]["access_token"].as_str().unwrap();
    assert_eq!(
        decode_header(new_token).unwrap().kid.as_deref(),
        rotated["kid"].as_str()
    );
    verify_with_jwks(&broker, &old_token, "api").await;
    verify_with_jwks(&broker, new_token, "api").await;
    assert_eq!(broker.introspect(&old_token).await["active"], true);
}

#[tokio::test]
async fn expiry_is_on_time_and_caught_up_after_restart() {
    let broker = Broker::start(BIN);
    broker.add_identity("job", "team").await;
    broker.add_token_target("api", &["job"]).await;

    // While running: the scheduler ends the lease within a second of its expiry.
    let live = broker.grant("job", "api", "short", "1s").await;
    let live_id = live["lease"]["id"].as_str().unwrap().to_string();
    let ended = eventually(Duration::from_secs(5), || async {
        broker.get(&format!("/v1/leases/{live_id}")).await["state"] == "expired"
    })
    .await;
    assert!(ended, "lease not expired");
    let expired_event = broker
        .audit("task=short")
        .await
        .into_iter()
        .find(|e| e["kind"] == "lease.expired")
        .unwrap();
    let lag_ms = expired_event["detail"]["lag_ms"].as_i64().unwrap();
    assert!((0..1000).contains(&lag_ms), "expiry lag {lag_ms} ms");

    // Across a crash: expiry passes while the broker is down; it is caught up at start.
    let down = broker.grant("job", "api", "while-down", "2s").await;
    let down_id = down["lease"]["id"].as_str().unwrap().to_string();
    let (dir, token) = broker.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token),
            ..Options::default()
        },
    );
    let caught_up = eventually(Duration::from_secs(3), || async {
        broker.get(&format!("/v1/leases/{down_id}")).await["state"] == "expired"
    })
    .await;
    assert!(
        caught_up,
        "lease that expired while down was not ended after restart"
    );
    assert_eq!(
        broker
            .get(&format!(
                "/v1/grants/{}",
                down["grant"]["id"].as_str().unwrap()
            ))
            .await["state"],
        "expired"
    );
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let broker = Broker::start(BIN);
    let (status, health, _) = broker.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    broker.add_identity("m", "team").await;
    broker.add_token_target("api", &["m"]).await;
    broker.grant("m", "api", "t", "5m").await;
    let metrics = broker
        .http
        .get(broker.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mayfly_grants_total{target=\"api\",outcome=\"issued\"} 1"),
        "{metrics}"
    );
    // Requests by route template (never the raw path) and status, and their latency.
    assert!(
        metrics.contains(
            "mayfly_http_requests_total{method=\"POST\",route=\"/v1/grants\",status=\"201\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "mayfly_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/grants\"} 1"
        ),
        "{metrics}"
    );
    let (status, problem, _) = broker
        .call(Method::GET, "/no/such/route/123", None, None)
        .await;
    assert_eq!(status, 404);
    // Said in the caller's terms, not the router's.
    assert_eq!(
        problem["detail"],
        "no endpoint serves GET /no/such/route/123; the API is described at /openapi.json"
    );
    let metrics = broker
        .http
        .get(broker.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "mayfly_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("mayfly_active_leases 1"), "{metrics}");
    assert!(metrics.contains("mayfly_expiry_lag_seconds"), "{metrics}");
    let (status, doc, _) = broker.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/grants",
        "/v1/leases/{id}/renew",
        "/v1/audit/verify",
        "/v1/identities/{id}/disable",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }
}
