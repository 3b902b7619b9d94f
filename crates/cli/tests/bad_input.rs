//! Every bad input gets a clear 4xx problem+json naming the field, and nothing is stored
//! but the audit event of the rejected request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Broker, BIN};
use reqwest::Method;
use serde_json::{json, Value};

fn grant_body(overrides: Value) -> Value {
    let mut body = json!({"identity": "svc", "target": "api", "action": "read", "purpose": "deploy", "task": "t-1", "ttl": "5m"});
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body
}

#[tokio::test]
async fn bad_grant_requests_are_rejected_precisely_and_store_nothing() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    broker.add_token_target("api", &["svc"]).await;
    let audit_before = broker.audit("limit=10000").await.len();

    // (case, body, status, field)
    let cases: Vec<(&str, Value, u16, Option<&str>)> = vec![
        (
            "unknown field",
            grant_body(json!({"colour": "red"})),
            400,
            Some("colour"),
        ),
        (
            "ttl zero",
            grant_body(json!({"ttl": "0s"})),
            400,
            Some("ttl"),
        ),
        (
            "ttl zero integer",
            grant_body(json!({"ttl": 0})),
            400,
            Some("ttl"),
        ),
        (
            "ttl negative",
            grant_body(json!({"ttl": "-5m"})),
            400,
            Some("ttl"),
        ),
        (
            "ttl negative integer",
            grant_body(json!({"ttl": -300})),
            400,
            Some("ttl"),
        ),
        (
            "ttl garbage",
            grant_body(json!({"ttl": "soon"})),
            400,
            Some("ttl"),
        ),
        (
            "unknown identity",
            grant_body(json!({"identity": "ghost"})),
            404,
            Some("identity"),
        ),
        (
            "unknown target",
            grant_body(json!({"target": "nowhere"})),
            404,
            Some("target"),
        ),
        (
            "unknown action",
            grant_body(json!({"action": "admin"})),
            400,
            Some("action"),
        ),
        (
            "missing purpose",
            grant_body(json!({"purpose": null})),
            400,
            Some("purpose"),
        ),
        (
            "empty purpose",
            grant_body(json!({"purpose": ""})),
            400,
            Some("purpose"),
        ),
        (
            "purpose over 1 KiB",
            grant_body(json!({"purpose": "x".repeat(1025)})),
            400,
            Some("purpose"),
        ),
        (
            "missing task",
            grant_body(json!({"task": null})),
            400,
            Some("task"),
        ),
        (
            "task with control chars",
            grant_body(json!({"task": "a\nb"})),
            400,
            Some("task"),
        ),
        (
            "bad identity name",
            grant_body(json!({"identity": "Bad Name"})),
            400,
            Some("identity"),
        ),
        (
            "wrong type",
            grant_body(json!({"target": 5})),
            400,
            Some("target"),
        ),
    ];
    for (case, body, status, field) in &cases {
        let (got, problem, ctype) = broker
            .call(
                Method::POST,
                "/v1/grants",
                Some(&broker.token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(got, *status, "{case}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{case}");
        assert_eq!(problem["status"], *status, "{case}");
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{case}: {problem}"
        );
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:mayfly:problem:"),
            "{case}"
        );
        assert_eq!(problem["field"].as_str(), *field, "{case}: {problem}");
    }

    // Malformed JSON, wrong content type, oversized body.
    let raw = |body: Vec<u8>, ctype: &'static str| {
        broker
            .http
            .post(broker.url("/v1/grants"))
            .bearer_auth(&broker.token)
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let resp = raw(b"{\"identity\": ".to_vec(), "application/json")
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert!(resp.text().await.unwrap().contains("malformed JSON"));
    let resp = raw(b"{}".to_vec(), "text/plain").await.unwrap();
    assert_eq!(resp.status(), 415);
    let huge = serde_json::to_vec(&grant_body(
        json!({"context": {"blob": "x".repeat(100_000)}}),
    ))
    .unwrap();
    let resp = raw(huge, "application/json").await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");

    // Nothing stored: no grant, no lease; each rejected grant request left one audit event.
    broker.assert_no_grants_or_leases().await;
    let after = broker.audit("limit=10000").await;
    let new_events = &after[audit_before..];
    let rejected = new_events
        .iter()
        .filter(|e| e["kind"] == "grant.rejected")
        .count();
    assert_eq!(
        rejected,
        cases.len() + 3,
        "one audit event per rejected request (table + 3 raw)"
    );
    assert!(
        new_events.iter().all(|e| e["kind"] == "grant.rejected"),
        "{new_events:?}"
    );
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
}

#[tokio::test]
async fn other_endpoints_reject_bad_input_with_problems() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    let future = "2999-01-01T00:00:00Z";
    // (method, path, body, status, field)
    type Case<'a> = (Method, &'a str, Option<Value>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/identities",
            Some(
                json!({"id": "svc", "kind": "service", "owner": "o", "purpose": "p", "expires_at": future}),
            ),
            409,
            None,
        ),
        (
            Method::POST,
            "/v1/identities",
            Some(
                json!({"id": "x", "kind": "robot", "owner": "o", "purpose": "p", "expires_at": future}),
            ),
            400,
            Some("kind"),
        ),
        (
            Method::POST,
            "/v1/identities",
            Some(
                json!({"id": "x", "kind": "service", "owner": "o", "purpose": "p", "expires_at": "2001-01-01T00:00:00Z"}),
            ),
            400,
            Some("expires_at"),
        ),
        (
            Method::POST,
            "/v1/identities",
            Some(json!({"id": "x", "kind": "service", "owner": "o", "purpose": "p"})),
            400,
            Some("expires_at"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "t", "kind": "carrier-pigeon", "actions": ["read"]})),
            400,
            Some("kind"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "t", "kind": "token", "actions": []})),
            400,
            Some("actions"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "t", "kind": "token", "actions": ["read"], "max_ttl": "0s"})),
            400,
            Some("max_ttl"),
        ),
        (
            Method::POST,
            "/v1/targets",
            Some(json!({"name": "t", "kind": "token", "actions": ["read"], "max_ttl": "30d"})),
            400,
            Some("max_ttl"),
        ),
        (Method::GET, "/v1/grants/not-a-uuid", None, 400, Some("id")),
        (
            Method::GET,
            "/v1/grants/0191f2a0-0000-7000-8000-000000000000",
            None,
            404,
            None,
        ),
        (
            Method::POST,
            "/v1/leases/0191f2a0-0000-7000-8000-000000000000/renew",
            Some(json!({})),
            404,
            None,
        ),
        (
            Method::POST,
            "/v1/leases/0191f2a0-0000-7000-8000-000000000000/renew",
            Some(json!({"ttl": "-1s"})),
            400,
            Some("ttl"),
        ),
        (
            Method::POST,
            "/v1/identities/ghost/disable",
            Some(json!({})),
            404,
            None,
        ),
        (Method::GET, "/v1/grants?state=bogus", None, 400, None),
        (Method::GET, "/v1/nowhere", None, 404, None),
    ];
    for (method, path, body, status, field) in cases {
        let (got, problem, ctype) = broker
            .call(method.clone(), path, Some(&broker.token), body)
            .await;
        assert_eq!(got, status, "{method} {path}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{method} {path}");
        assert_eq!(
            problem["field"].as_str(),
            field,
            "{method} {path}: {problem}"
        );
    }
    assert_eq!(
        broker.get("/v1/identities").await.as_array().unwrap().len(),
        1
    );
    assert!(broker
        .get("/v1/targets")
        .await
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn authentication_failures_are_401_problems_and_audited() {
    let broker = Broker::start_in(
        BIN,
        &common::scratch_dir(),
        common::Options {
            config: Some("[auth.failures]\naudit_interval = \"1s\"\n".into()),
            ..common::Options::default()
        },
    );
    let cases: Vec<(Option<&str>, &str)> = vec![
        (None, "missing_credential"),
        (Some("mfy_op_not-the-real-one"), "bad_operator_token"),
        (Some("something-else"), "malformed_credential"),
        (Some("a.b.c"), "malformed_credential"),
    ];
    for (token, code) in &cases {
        let (status, problem, ctype) = broker.call(Method::GET, "/v1/grants", *token, None).await;
        assert_eq!(status, 401, "{token:?}: {problem}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(problem["code"], *code, "{token:?}: {problem}");
        if let Some(t) = token {
            assert!(
                !problem.to_string().contains(t),
                "the credential is echoed back"
            );
        }
    }
    let failures = broker.wait_for_auth_failures(cases.len() as u64).await;
    assert_eq!(failures, cases.len() as u64);
    let everything = serde_json::to_string(&broker.audit("limit=10000").await).unwrap();
    assert!(!everything.contains("mfy_op_not-the-real-one"));
}
