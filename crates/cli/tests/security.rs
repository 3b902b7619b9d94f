//! Regressions from the adversarial review: each test reproduces an attack that used to
//! work against the real broker (as an outsider, or as a workload) and checks it no
//! longer does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::issuer::Issuer;
use common::{eventually, Broker, Options, BIN};
use reqwest::Method;
use serde_json::{json, Value};

/// A broker trusting one OIDC issuer, with workloads `ci` (bound to subject `ci`),
/// `api-svc` and `stranger`, all owned by `team`; `extra` is appended to the config.
async fn broker_with_workloads(extra: &str) -> (Broker, Issuer) {
    let issuer = Issuer::new();
    let dir = common::scratch_dir();
    let rules = [
        ("ci", "ci"),
        ("api-svc", "api-svc"),
        ("stranger", "stranger"),
    ];
    let config = format!("{}\n{extra}", issuer.config(&dir.join("jwks.json"), &rules));
    let broker = Broker::start_with_config(BIN, &dir, config);
    for (id, _) in rules {
        broker.add_identity(id, "team").await;
    }
    (broker, issuer)
}

fn rfc3339_in(d: time::Duration) -> String {
    (time::OffsetDateTime::now_utc() + d)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn entry_size(e: &Value) -> usize {
    e.to_string().len()
}

#[tokio::test]
async fn refusals_are_filed_under_the_caller_not_the_identity_named() {
    let (broker, issuer) = broker_with_workloads("").await;
    broker.add_token_target("api", &["ci", "stranger"]).await;
    let stranger = issuer.token("stranger");
    let (status, problem, _) = broker
        .call(
            Method::POST,
            "/v1/grants",
            Some(&stranger),
            Some(json!({"identity": "ci", "target": "api", "action": "read", "purpose": "x", "task": "ci-release-7", "ttl": "5m"})),
        )
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("not_your_identity"))
    );

    // Nothing appears in the named identity's or task's history...
    assert!(broker
        .audit("identity=ci")
        .await
        .iter()
        .all(|e| e["kind"] != "grant.rejected"));
    assert!(broker.audit("task=ci-release-7").await.is_empty());
    // ...the refusal is the caller's, and says what it named.
    let own = broker.audit("identity=stranger").await;
    let refused = own
        .iter()
        .find(|e| e["kind"] == "grant.rejected")
        .expect("filed under the caller");
    assert_eq!(refused["detail"]["requested_identity"], "ci");
    assert_eq!(refused["detail"]["requested_task"], "ci-release-7");
    assert_eq!(refused["task"], Value::Null);
}

#[tokio::test]
async fn huge_inputs_make_small_audit_entries() {
    let (broker, issuer) = broker_with_workloads("").await;
    // Unauthenticated, with a 65,000-character path: refused with the request head,
    // before authentication, so it never reaches the audit.
    let path = format!("/v1/grants/{}", "a".repeat(65_000));
    let (status, _, ctype) = broker.call(Method::GET, &path, None, None).await;
    assert_eq!((status, ctype.as_str()), (431, "application/problem+json"));
    // One that fits the head limit fails authentication and is audited, cut short.
    let path = format!("/v1/grants/{}", "a".repeat(30_000));
    let (status, _, _) = broker.call(Method::GET, &path, None, None).await;
    assert_eq!(status, 401);
    // A workload naming a 63,000-character identity and task.
    let ci = issuer.token("ci");
    let huge = "x".repeat(63_000);
    let (status, _, _) = broker
        .call(
            Method::POST,
            "/v1/grants",
            Some(&ci),
            Some(json!({"identity": huge, "target": "api", "purpose": "p", "task": "t"})),
        )
        .await;
    assert_eq!(status, 403);
    let entries = broker.audit("limit=10000").await;
    let failed = entries.iter().find(|e| e["kind"] == "auth.failed").unwrap();
    assert!(
        entry_size(failed) < 2_000,
        "auth.failed is {} bytes",
        entry_size(failed)
    );
    let rejected = entries
        .iter()
        .find(|e| e["kind"] == "grant.rejected")
        .unwrap();
    assert!(
        entry_size(rejected) < 8_000,
        "grant.rejected is {} bytes",
        entry_size(rejected)
    );
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
}

#[tokio::test]
async fn repeated_authentication_failures_are_one_entry_with_a_count() {
    let broker = Broker::start_in(
        BIN,
        &common::scratch_dir(),
        Options {
            config: Some("[auth.failures]\nburst = 10000\naudit_interval = \"1s\"\n".into()),
            ..Options::default()
        },
    );
    for _ in 0..200 {
        let (status, _, _) = broker
            .call(Method::GET, "/v1/grants", Some("mfy_op_wrong"), None)
            .await;
        assert_eq!(status, 401);
    }
    let counted = || async {
        let entries: Vec<Value> = broker
            .audit("limit=10000")
            .await
            .into_iter()
            .filter(|e| e["kind"] == "auth.failed")
            .collect();
        let total: u64 = entries
            .iter()
            .map(|e| e["detail"]["count"].as_u64().unwrap())
            .sum();
        (entries.len(), total)
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            counted().await.1 == 200
        })
        .await,
        "every failure is counted: {:?}",
        counted().await
    );
    let (entries, _) = counted().await;
    assert!(entries <= 3, "200 failures made {entries} entries");
    let entries = broker.audit("limit=10000").await;
    let aggregate = entries
        .iter()
        .find(|e| e["kind"] == "auth.failed" && e["detail"]["count"].as_u64() > Some(1))
        .unwrap();
    assert_eq!(aggregate["detail"]["code"], "bad_operator_token");
    assert_eq!(aggregate["detail"]["source_ip"], "127.0.0.1");
    assert!(aggregate["detail"]["first_at"].is_string());
}

#[tokio::test]
async fn a_source_that_keeps_failing_is_told_to_wait() {
    let broker = Broker::start_in(
        BIN,
        &common::scratch_dir(),
        Options {
            config: Some("[auth.failures]\nburst = 3\nper_minute = 60\n".into()),
            ..Options::default()
        },
    );
    for _ in 0..3 {
        let (status, _, _) = broker
            .call(Method::GET, "/v1/grants", Some("mfy_op_wrong"), None)
            .await;
        assert_eq!(status, 401);
    }
    let resp = broker
        .http
        .get(broker.url("/v1/grants"))
        .bearer_auth("mfy_op_wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_failures");
    // Public endpoints stay reachable, and the source recovers once it has waited.
    let (status, _, _) = broker.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, _, _) = broker
        .call(Method::GET, "/v1/grants", Some(&broker.token), None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_lease_never_outlives_its_identity() {
    let broker = Broker::start(BIN);
    let (status, body) = broker
        .post("/v1/identities", json!({"id": "short-lived", "kind": "service", "owner": "team", "purpose": "p", "expires_at": rfc3339_in(time::Duration::seconds(4))}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = broker
        .post("/v1/targets", json!({"name": "api", "kind": "token", "actions": ["read"], "max_ttl": "24h", "allow": ["short-lived"]}))
        .await;
    assert_eq!(status, 201, "{body}");
    let issued = broker.grant("short-lived", "api", "t1", "12h").await;
    let expires = time::OffsetDateTime::parse(
        issued["lease"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        expires <= time::OffsetDateTime::now_utc() + time::Duration::seconds(5),
        "lease runs to {expires}"
    );
    assert!(
        issued["grant"]["decision"]["reasons"]
            .to_string()
            .contains("expires at"),
        "the decision says why: {}",
        issued["grant"]["decision"]
    );
    // Renewal does not reach past it either.
    let lease_id = issued["lease"]["id"].as_str().unwrap().to_string();
    let (status, renewed) = broker
        .post(
            &format!("/v1/leases/{lease_id}/renew"),
            json!({"ttl": "1h"}),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    let renewed_to = time::OffsetDateTime::parse(
        renewed["lease"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        renewed_to <= expires + time::Duration::seconds(1),
        "renewed to {renewed_to}"
    );
    // When the identity expires, so does the token.
    let token = issued["credential"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let inactive = eventually(Duration::from_secs(15), || async {
        broker.introspect(&token).await["active"] == false
    })
    .await;
    assert!(
        inactive,
        "the token is still active after its identity expired"
    );
    let expired = eventually(Duration::from_secs(5), || async {
        broker.get(&format!("/v1/leases/{lease_id}")).await["state"] == "expired"
    })
    .await;
    assert!(expired, "the lease outlived its identity");
}

#[tokio::test]
async fn only_holders_operators_and_resource_servers_may_introspect() {
    let (broker, issuer) = broker_with_workloads("").await;
    let (status, body) = broker
        .post("/v1/targets", json!({"name": "api", "kind": "token", "actions": ["read"], "allow": ["ci"], "settings": {"resource_servers": ["api-svc"]}}))
        .await;
    assert_eq!(status, 201, "{body}");
    let ci = issuer.token("ci");
    let (status, issued, _) = broker
        .call(
            Method::POST,
            "/v1/grants",
            Some(&ci),
            Some(json!({"target": "api", "purpose": "p", "task": "secret-task", "ttl": "5m"})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["credential"]["access_token"].as_str().unwrap();

    for (who, bearer) in [
        ("holder", ci.clone()),
        ("resource server", issuer.token("api-svc")),
        ("operator", broker.token.clone()),
    ] {
        let seen = broker.introspect_as(&bearer, token).await;
        assert_eq!(seen["active"], true, "{who}: {seen}");
        assert_eq!(seen["task"], "secret-task", "{who}");
    }
    let seen = broker.introspect_as(&issuer.token("stranger"), token).await;
    assert_eq!(seen, json!({"active": false}), "a stranger learns nothing");

    // resource_servers must name identities.
    let (status, problem) = broker
        .post("/v1/targets", json!({"name": "bad", "kind": "token", "actions": ["read"], "settings": {"resource_servers": "api-svc"}}))
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("settings")),
        "{problem}"
    );
}

#[tokio::test]
async fn workloads_see_only_summaries_of_targets_they_could_request() {
    let (broker, issuer) = broker_with_workloads("").await;
    broker.add_token_target("mine", &["ci"]).await;
    broker.add_token_target("theirs", &["api-svc"]).await;
    let ci = issuer.token("ci");
    let (status, listed, _) = broker
        .call(Method::GET, "/v1/targets", Some(&ci), None)
        .await;
    assert_eq!(status, 200);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "mine");
    for hidden in ["allow", "settings", "created_at"] {
        assert!(
            listed[0].get(hidden).is_none(),
            "{hidden} shown to a workload: {}",
            listed[0]
        );
    }
    assert_eq!(listed[0]["actions"], json!(["read", "write"]));
    let (status, _, _) = broker
        .call(Method::GET, "/v1/targets/theirs", Some(&ci), None)
        .await;
    assert_eq!(
        status, 404,
        "a target it may not request is not there for it"
    );
    let (status, shown, _) = broker
        .call(Method::GET, "/v1/targets/mine", Some(&ci), None)
        .await;
    assert_eq!(status, 200);
    assert!(shown.get("allow").is_none());
    // Operators see everything.
    let all = broker.get("/v1/targets").await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(all[0]["allow"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn invisible_and_direction_changing_characters_are_refused() {
    let broker = Broker::start(BIN);
    broker.add_identity("ci", "team").await;
    broker.add_token_target("api", &["ci"]).await;
    let base = json!({"identity": "ci", "target": "api", "action": "read", "purpose": "deploy", "task": "t-1", "ttl": "5m"});
    let cases: Vec<(&str, Value, &str)> = vec![
        ("purpose", json!("deploy \u{202E}1.2"), "purpose"),
        ("purpose", json!("line\u{2028}break"), "purpose"),
        ("task", json!("\u{200B}"), "task"),
        ("task", json!("t\u{FEFF}"), "task"),
        ("context", json!({"ticket": "a\u{0000}b"}), "context.ticket"),
        (
            "context",
            json!({"ticket": "\u{001B}[31mred"}),
            "context.ticket",
        ),
        (
            "context",
            json!({"ti\u{200D}cket": "x"}),
            "context.ti\\u{200D}cket",
        ),
    ];
    for (key, value, field) in cases {
        let mut body = base.clone();
        body[key] = value.clone();
        let (status, problem) = broker.post("/v1/grants", body).await;
        assert_eq!(status, 400, "{key}={value}: {problem}");
        assert_eq!(problem["field"], field, "{key}={value}: {problem}");
    }
    broker.assert_no_grants_or_leases().await;
}

/// A target whose database does not exist: the workload is told the target failed, with
/// a stable code; the database's name (admin-side detail) reaches operators only.
#[tokio::test]
async fn target_failures_are_502_without_admin_detail_for_workloads() {
    if common::pg::superuser_or_skip("security: target failures")
        .await
        .is_none()
    {
        return;
    }
    let (broker, issuer) = broker_with_workloads("").await;
    let missing_db = format!("mayfly_missing_{}", common::suffix());
    let (status, body) = broker
        .post(
            "/v1/targets",
            json!({"name": "pg", "kind": "postgres", "actions": ["read"], "allow": ["ci"],
                   "settings": {"grants": {"read": ["SELECT 1"]}},
                   "admin": format!("postgres://postgres@127.0.0.1:5432/{missing_db}")}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let request = json!({"target": "pg", "purpose": "p", "task": "t", "ttl": "5m"});
    let (status, problem, ctype) = broker
        .call(
            Method::POST,
            "/v1/grants",
            Some(&issuer.token("ci")),
            Some(request.clone()),
        )
        .await;
    assert_eq!(status, 502, "{problem}");
    assert_eq!(ctype, "application/problem+json");
    assert!(
        matches!(
            problem["code"].as_str(),
            Some("target_unavailable" | "target_failed")
        ),
        "{problem}"
    );
    assert!(
        !problem.to_string().contains(&missing_db),
        "admin detail leaked: {problem}"
    );

    let mut operator_request = request;
    operator_request["identity"] = json!("ci");
    let (status, problem) = broker.post("/v1/grants", operator_request).await;
    assert_eq!(status, 502, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains(&missing_db),
        "{problem}"
    );
}
