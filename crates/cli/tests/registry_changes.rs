//! Targets and identities change and go, against the real binary: PATCH what may change,
//! DELETE refused with 409 while leases are live, `revoke_leases=true` ending them first,
//! history (leases, audit chain) intact afterwards, every change audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Broker, BIN};
use reqwest::Method;
use serde_json::{json, Value};

async fn patch(broker: &Broker, path: &str, body: Value) -> (u16, Value) {
    let (status, body, _) = broker
        .call(Method::PATCH, path, Some(&broker.token), Some(body))
        .await;
    (status, body)
}

async fn delete(broker: &Broker, path: &str) -> (u16, Value, String) {
    broker
        .call(Method::DELETE, path, Some(&broker.token), None)
        .await
}

#[tokio::test]
async fn targets_update_and_delete() {
    let broker = Broker::start(BIN);
    broker.add_identity("deployer", "team-a").await;
    broker.add_token_target("api", &["deployer"]).await;

    // PATCH changes what is given, keeps the rest, and says what changed in the audit.
    let (status, updated) = patch(
        &broker,
        "/v1/targets/api",
        json!({"max_ttl": "30m", "default_ttl": "10m", "allow": ["deployer", "owner:team-b"]}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["max_ttl"], "30m");
    assert_eq!(updated["allow"], json!(["deployer", "owner:team-b"]));
    assert_eq!(updated["actions"], json!(["read", "write"]));
    assert_eq!(updated["kind"], "token");
    assert_eq!(broker.get("/v1/targets/api").await, updated);
    let audit = broker.audit("limit=1000").await;
    let change = audit
        .iter()
        .find(|e| e["kind"] == "target.updated")
        .unwrap();
    assert_eq!(change["target"], "api");
    assert_eq!(
        change["detail"]["changed"]["max_ttl"],
        json!({"from": "1h", "to": "30m"})
    );
    assert!(
        change["detail"]["changed"].get("actions").is_none(),
        "{change}"
    );
    // A grant now gets the new cap.
    let (status, body) = broker
        .post("/v1/grants", json!({"identity": "deployer", "target": "api", "action": "read", "purpose": "t", "task": "t1", "ttl": "2h"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["grant"]["granted_ttl"], "30m");
    let lease_id = body["lease"]["id"].as_str().unwrap().to_string();

    // Bad changes are refused, naming the field; nothing to change is an error too.
    for (body, field) in [
        (json!({"default_ttl": "2h"}), Some("default_ttl")),
        (json!({"actions": []}), Some("actions")),
        (json!({"settings": [1]}), Some("settings")),
        (json!({"kind": "postgres"}), None),
        (json!({}), None),
    ] {
        let (status, problem) = patch(&broker, "/v1/targets/api", body.clone()).await;
        assert_eq!(status, 400, "{body}: {problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{body}: {problem}");
        }
    }
    assert_eq!(
        patch(&broker, "/v1/targets/nope", json!({"max_ttl": "5m"}))
            .await
            .0,
        404
    );

    // DELETE with a live lease: 409 problem+json, and nothing changed.
    let (status, problem, ctype) = delete(&broker, "/v1/targets/api").await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(problem["code"], "conflict");
    assert!(
        problem["detail"].as_str().unwrap().contains("1 live lease"),
        "{problem}"
    );
    assert_eq!(
        broker.get(&format!("/v1/leases/{lease_id}")).await["state"],
        "active"
    );

    // With revoke_leases: revoked through the ordinary path, then deleted.
    let (status, done, _) = delete(&broker, "/v1/targets/api?revoke_leases=true").await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["deleted"], "api");
    assert_eq!(done["revoked"]["revoked"], 1);
    let (status, _, _) = broker
        .call(Method::GET, "/v1/targets/api", Some(&broker.token), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(delete(&broker, "/v1/targets/api").await.0, 404);

    // History stays: the ended lease, its grant, the chain.
    let lease = broker.get(&format!("/v1/leases/{lease_id}")).await;
    assert_eq!(lease["state"], "revoked");
    assert_eq!(lease["target"], "api");
    let audit = broker.audit("limit=1000").await;
    let kinds: Vec<&str> = audit.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let revoked_at = kinds.iter().position(|k| *k == "lease.revoked").unwrap();
    let deleted_at = kinds.iter().position(|k| *k == "target.deleted").unwrap();
    assert!(revoked_at < deleted_at, "{kinds:?}");
    assert_eq!(audit[deleted_at]["target"], "api");
    assert_eq!(audit[deleted_at]["detail"]["revoked_leases"], 1);
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );

    // The name is free again; the CLI does the same.
    broker.add_token_target("api", &["deployer"]).await;
    let out = broker.cli(&[
        "target",
        "update",
        "api",
        "--max-ttl",
        "20m",
        "--audience",
        "aud-2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = broker.get("/v1/targets/api").await;
    assert_eq!(now["max_ttl"], "20m");
    assert_eq!(now["settings"]["audience"], "aud-2");
    broker.grant("deployer", "api", "t2", "5m").await;
    let out = broker.cli(&["target", "delete", "api"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("409") && err.contains("live lease"), "{err}");
    let out = broker.cli(&["target", "delete", "api", "--revoke-leases"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 lease(s) revoked first"));
}

#[tokio::test]
async fn identities_update_and_delete() {
    let broker = Broker::start(BIN);
    broker.add_identity("agent", "team-a").await;
    broker.add_token_target("api", &["agent"]).await;

    let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(7))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, updated) = patch(
        &broker,
        "/v1/identities/agent",
        json!({"owner": "team-b", "purpose": "nightly reports", "expires_at": expires, "labels": {"tier": "1"}}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["owner"], "team-b");
    assert_eq!(updated["purpose"], "nightly reports");
    assert_eq!(updated["labels"], json!({"tier": "1"}));
    assert_eq!(updated["kind"], "pipeline");
    assert_eq!(updated["enabled"], true);
    assert_eq!(broker.get("/v1/identities/agent").await, updated);
    let audit = broker.audit("identity=agent").await;
    let change = audit
        .iter()
        .find(|e| e["kind"] == "identity.updated")
        .unwrap();
    assert_eq!(
        change["detail"]["changed"]["owner"],
        json!({"from": "team-a", "to": "team-b"})
    );
    assert_eq!(change["owner"], "team-b");
    for (body, status_want) in [
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), 400),
        (json!({"owner": ""}), 400),
        (json!({"enabled": false}), 400),
        (json!({}), 400),
    ] {
        let (status, problem) = patch(&broker, "/v1/identities/agent", body.clone()).await;
        assert_eq!(status, status_want, "{body}: {problem}");
    }

    // A live lease keeps it; revoke_leases disables it (kill switch) and then deletes.
    let lease = broker.grant("agent", "api", "job", "5m").await["lease"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, problem, ctype) = delete(&broker, "/v1/identities/agent").await;
    assert_eq!(
        (status, ctype.as_str()),
        (409, "application/problem+json"),
        "{problem}"
    );
    assert!(
        problem["detail"].as_str().unwrap().contains("1 live lease"),
        "{problem}"
    );
    let (status, done, _) = delete(&broker, "/v1/identities/agent?revoke_leases=true").await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["revoked"]["revoked"], 1);
    let (status, _, _) = broker
        .call(
            Method::GET,
            "/v1/identities/agent",
            Some(&broker.token),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        broker.get(&format!("/v1/leases/{lease}")).await["state"],
        "revoked"
    );
    let trail: Vec<String> = broker
        .audit("identity=agent")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(
        trail.ends_with(&[
            "identity.disabled".into(),
            "lease.revoked".into(),
            "identity.deleted".into()
        ]),
        "{trail:?}"
    );
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
    // A deleted identity cannot be granted anything.
    let (status, _) = broker
        .post("/v1/grants", json!({"identity": "agent", "target": "api", "action": "read", "purpose": "t", "task": "t", "ttl": "5m"}))
        .await;
    assert!(status >= 400, "{status}");

    // The CLI: update, then delete with no leases.
    broker.add_identity("svc", "team-a").await;
    let out = broker.cli(&[
        "identity", "update", "svc", "--owner", "team-c", "--label", "a=b",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = broker.get("/v1/identities/svc").await;
    assert_eq!(
        (svc["owner"].as_str(), &svc["labels"]),
        (Some("team-c"), &json!({"a": "b"}))
    );
    let out = broker.cli(&["identity", "delete", "svc", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["deleted"], "svc");
}

/// The routes added for changing and removing records, and for operator tokens, are in the
/// OpenAPI document (schemathesis tests the live broker against it).
#[tokio::test]
async fn the_new_routes_are_documented() {
    let broker = Broker::start(BIN);
    let (status, doc, _) = broker.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    for (path, method) in [
        ("/v1/targets/{name}", "patch"),
        ("/v1/targets/{name}", "delete"),
        ("/v1/identities/{id}", "patch"),
        ("/v1/identities/{id}", "delete"),
        ("/v1/operator/tokens", "post"),
        ("/v1/operator/tokens", "get"),
        ("/v1/operator/tokens/{name}/revoke", "post"),
    ] {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing");
        if method == "delete" {
            assert!(op["responses"]["409"].is_object(), "{method} {path}: 409");
            let params = op["parameters"].as_array().unwrap();
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == "revoke_leases" && p["in"] == "query"),
                "{method} {path}: {params:?}"
            );
        }
    }
}

/// A database target is deleted only once its users are confirmed dropped: while the
/// server refuses the revocation the target stays (409), and once it accepts, a delete
/// with `revoke_leases` waits for the revocation worker and then removes the target.
#[tokio::test]
async fn a_database_target_outlives_its_pending_revocations() {
    use common::pg::{superuser_or_skip, PgFixture};
    use sqlx::Executor;

    let Some(mut su) = superuser_or_skip("deleting a database target").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "del").await;
    let (broker, _) = common::pg::broker_with_target(&f, "etl", "team-data").await;
    let grant = |task: &'static str| {
        let broker = &broker;
        async move {
            let (status, body) = broker
                .post("/v1/grants", json!({"identity": "etl", "target": "pg", "action": "read", "purpose": "load", "task": task, "ttl": "10m"}))
                .await;
            assert_eq!(status, 201, "{body}");
            body
        }
    };

    // The server refuses to drop the user: the revocation stays pending, so does the target.
    let first = grant("load-1").await;
    let first_lease = first["lease"]["id"].as_str().unwrap().to_string();
    su.execute(format!("ALTER ROLE {} NOLOGIN", f.admin).as_str())
        .await
        .unwrap();
    // Also end the broker's pooled admin sessions, so the target truly refuses it.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&f.admin)
        .execute(&mut su)
        .await
        .unwrap();
    let (status, problem, _) = delete(&broker, "/v1/targets/pg?revoke_leases=true").await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("still being revoked"),
        "{problem}"
    );
    assert_eq!(broker.get("/v1/targets/pg").await["name"], "pg");
    assert_eq!(
        broker.get(&format!("/v1/leases/{first_lease}")).await["state"],
        "revoking"
    );

    // The server accepts again: the worker finishes; a new lease is revoked and the target
    // deleted in one call.
    su.execute(format!("ALTER ROLE {} LOGIN", f.admin).as_str())
        .await
        .unwrap();
    let done = common::eventually(std::time::Duration::from_secs(15), || async {
        let lease = broker.get(&format!("/v1/leases/{first_lease}")).await;
        if lease["state"] == "revoked" {
            Ok(lease)
        } else {
            Err(lease)
        }
    })
    .await;
    assert!(done.is_ok(), "{done:?}");
    let second = grant("load-2").await;
    let user = second["credential"]["username"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(f.users(&mut su).await.contains(&user));
    let (status, done, _) = delete(&broker, "/v1/targets/pg?revoke_leases=true").await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["revoked"]["revoking"], 1);
    assert!(
        !f.users(&mut su).await.contains(&user),
        "the user was dropped first"
    );
    let (status, _, _) = broker
        .call(Method::GET, "/v1/targets/pg", Some(&broker.token), None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
    drop(broker);
    f.drop_all(&mut su).await;
}
