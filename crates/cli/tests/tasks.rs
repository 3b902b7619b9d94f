//! Task records: a workload opens a task, its grants name it, and ending the task (complete,
//! fail, or its deadline) revokes every lease in it and in its child tasks; a grant naming
//! another identity's or an ended task is refused. Black-box, against the real broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::issuer::Issuer;
use common::{eventually, Broker, Options, BIN};
use reqwest::Method;
use serde_json::{json, Value};

const DEPLOYER: &str = "repo:acme/billing:ref:refs/heads/main";
const CI: &str = "repo:acme/billing:ref:refs/heads/dev";

async fn broker(issuer: &Issuer) -> Broker {
    let dir = common::scratch_dir();
    let jwks_path = dir.join("ci-jwks.json");
    std::fs::write(&jwks_path, issuer.jwks().to_string()).unwrap();
    let config = format!(
        r#"
[[auth.oidc]]
issuer = "{}"
audiences = ["mayfly"]
jwks_file = "{}"
algorithms = ["EdDSA"]

[[auth.oidc.rules]]
identity = "billing-deployer"
claims = {{ sub = "{DEPLOYER}" }}

[[auth.oidc.rules]]
identity = "billing-ci"
claims = {{ sub = "{CI}" }}
"#,
        issuer.url,
        jwks_path.display()
    );
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            config: Some(config),
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
    broker
}

async fn call(
    broker: &Broker,
    method: Method,
    path: &str,
    who: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, body, _) = broker.call(method, path, Some(who), body).await;
    (status, body)
}

async fn open(broker: &Broker, who: &str, body: Value) -> Value {
    let (status, opened) = call(broker, Method::POST, "/v1/tasks", who, Some(body)).await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["task"]["state"], "open");
    opened["task"].clone()
}

async fn grant_in(broker: &Broker, who: &str, task: &str) -> (u16, Value) {
    let body = json!({"target": "billing-api", "action": "read", "purpose": "export", "task": task, "ttl": "5m"});
    call(broker, Method::POST, "/v1/grants", who, Some(body)).await
}

async fn lease_of(broker: &Broker, id: &str) -> Value {
    broker.get(&format!("/v1/leases/{id}")).await
}

#[tokio::test]
async fn ending_a_task_revokes_its_leases_and_its_children() {
    let issuer = Issuer::new();
    let broker = broker(&issuer).await;
    let me = issuer.token(DEPLOYER);
    let other = issuer.token(CI);

    let parent = open(
        &broker,
        &me,
        json!({"purpose": "nightly export", "deadline": "30m"}),
    )
    .await;
    let parent_id = parent["id"].as_str().unwrap().to_string();
    assert_eq!(parent["identity"], "billing-deployer");
    let child = open(
        &broker,
        &me,
        json!({"purpose": "one step", "deadline": "10m", "parent": parent_id}),
    )
    .await;
    let child_id = child["id"].as_str().unwrap().to_string();

    let (status, in_parent) = grant_in(&broker, &me, &parent_id).await;
    assert_eq!(status, 201, "{in_parent}");
    let (status, in_child) = grant_in(&broker, &me, &child_id).await;
    assert_eq!(status, 201, "{in_child}");
    // The free task text of a grant without a record keeps working.
    let (status, free) = grant_in(&broker, &me, "run-7").await;
    assert_eq!(status, 201, "{free}");

    // Another identity can neither use the task nor see it.
    let (status, refused) = grant_in(&broker, &other, &parent_id).await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("another identity"),
        "{refused}"
    );
    let (status, _) = call(
        &broker,
        Method::GET,
        &format!("/v1/tasks/{parent_id}"),
        &other,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = call(
        &broker,
        Method::POST,
        &format!("/v1/tasks/{parent_id}/complete"),
        &other,
        None,
    )
    .await;
    assert_eq!(status, 404);

    let (status, shown) = call(
        &broker,
        Method::GET,
        &format!("/v1/tasks/{parent_id}"),
        &me,
        None,
    )
    .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["leases"].as_array().unwrap().len(), 1, "{shown}");
    let (status, listed) = call(&broker, Method::GET, "/v1/tasks", &me, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    let (status, ended) = call(
        &broker,
        Method::POST,
        &format!("/v1/tasks/{parent_id}/complete"),
        &me,
        None,
    )
    .await;
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["task"]["state"], "completed");
    assert_eq!(ended["revoked"]["revoked"], 2, "{ended}");
    for issued in [&in_parent, &in_child] {
        let lease = lease_of(&broker, issued["lease"]["id"].as_str().unwrap()).await;
        assert_eq!(
            (lease["state"].as_str(), lease["revocation_reason"].as_str()),
            (Some("revoked"), Some("task_complete")),
            "{lease}"
        );
    }
    let lease = lease_of(&broker, free["lease"]["id"].as_str().unwrap()).await;
    assert_eq!(lease["state"], "active");
    let (_, child_now) = call(
        &broker,
        Method::GET,
        &format!("/v1/tasks/{child_id}"),
        &me,
        None,
    )
    .await;
    assert_eq!(child_now["task"]["state"], "completed");

    // An ended task takes no grants and does not end twice.
    let (status, refused) = grant_in(&broker, &me, &child_id).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["code"], "task_ended", "{refused}");
    let (status, again) = call(
        &broker,
        Method::POST,
        &format!("/v1/tasks/{parent_id}/fail"),
        &me,
        None,
    )
    .await;
    assert_eq!(status, 409, "{again}");

    // Failing a task revokes with task_failed.
    let failing = open(
        &broker,
        &me,
        json!({"purpose": "will fail", "deadline": "5m"}),
    )
    .await;
    let failing_id = failing["id"].as_str().unwrap();
    let (_, in_failing) = grant_in(&broker, &me, failing_id).await;
    let (status, _) = call(
        &broker,
        Method::POST,
        &format!("/v1/tasks/{failing_id}/fail"),
        &me,
        None,
    )
    .await;
    assert_eq!(status, 200);
    let lease = lease_of(&broker, in_failing["lease"]["id"].as_str().unwrap()).await;
    assert_eq!(lease["revocation_reason"], "task_failed", "{lease}");

    // The audit chain tells the story.
    let events = broker.audit(&format!("task={parent_id}")).await;
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"task.opened") && kinds.contains(&"task.ended"),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn a_task_deadline_revokes_without_any_client() {
    let issuer = Issuer::new();
    let broker = broker(&issuer).await;
    let me = issuer.token(DEPLOYER);
    let task = open(&broker, &me, json!({"purpose": "short", "deadline": "2s"})).await;
    let task_id = task["id"].as_str().unwrap().to_string();
    let (status, issued) = grant_in(&broker, &me, &task_id).await;
    assert_eq!(status, 201, "{issued}");
    let path = format!("/v1/leases/{}", issued["lease"]["id"].as_str().unwrap());
    let lease = eventually(Duration::from_secs(10), || async {
        let lease = broker.get(&path).await;
        if lease["state"] == "revoked" {
            Ok(lease)
        } else {
            Err(lease)
        }
    })
    .await
    .unwrap_or_else(|last| panic!("never revoked: {last}"));
    assert_eq!(lease["revocation_reason"], "task_timeout");
    let shown = broker.get(&format!("/v1/tasks/{task_id}")).await;
    assert_eq!(shown["task"]["state"], "timed_out");
}

#[tokio::test]
async fn bad_task_requests_are_refused() {
    let issuer = Issuer::new();
    let broker = broker(&issuer).await;
    let me = issuer.token(DEPLOYER);
    for (body, field) in [
        (json!({"purpose": "x", "deadline": "25h"}), "deadline"),
        (json!({"purpose": "x"}), "deadline"),
        (
            json!({"purpose": "x", "deadline": "5m", "parent": "00000000-0000-4000-8000-000000000000"}),
            "parent",
        ),
    ] {
        let (status, problem, ctype) = broker
            .call(Method::POST, "/v1/tasks", Some(&me), Some(body.clone()))
            .await;
        assert!(status == 400 || status == 404, "{body}: {status} {problem}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    // An operator names the identity a task is for; a workload may not name another.
    for (body, status_wanted, field) in [
        (json!({"purpose": "x", "deadline": "5m"}), 400, "identity"),
        (
            json!({"identity": "nobody", "purpose": "x", "deadline": "5m"}),
            404,
            "identity",
        ),
    ] {
        let (status, problem) = broker.post("/v1/tasks", body).await;
        assert_eq!(status, status_wanted, "{problem}");
        assert_eq!(problem["field"], field, "{problem}");
    }
    let (status, opened) = broker
        .post(
            "/v1/tasks",
            json!({"identity": "billing-ci", "purpose": "x", "deadline": "5m"}),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["task"]["identity"], "billing-ci");
    let (status, problem) = call(
        &broker,
        Method::POST,
        "/v1/tasks",
        &me,
        Some(json!({"identity": "billing-ci", "purpose": "x", "deadline": "5m"})),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("not_your_identity")),
        "{problem}"
    );
}

#[tokio::test]
async fn mayfly_tasks_lists_shows_and_ends() {
    let issuer = Issuer::new();
    let broker = broker(&issuer).await;
    let me = issuer.token(DEPLOYER);
    let task = open(&broker, &me, json!({"purpose": "cli", "deadline": "10m"})).await;
    let id = task["id"].as_str().unwrap().to_string();
    let (status, issued) = grant_in(&broker, &me, &id).await;
    assert_eq!(status, 201, "{issued}");

    let out = broker.cli(&["tasks", "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // JSON lines: one task a line.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let listed: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{stdout}");
    assert_eq!(listed[0]["id"], id.as_str(), "{stdout}");

    let out = broker.cli(&["task", "show", &id, "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["leases"].as_array().unwrap().len(), 1, "{shown}");

    let out = broker.cli(&["task", "complete", &id, "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ended: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ended["task"]["state"], "completed", "{ended}");
    assert_eq!(ended["revoked"]["revoked"], 1, "{ended}");

    // Ending it again, or a malformed id: one line on stderr, non-zero exit.
    for args in [
        vec!["task", "fail", id.as_str()],
        vec!["task", "show", "nope"],
    ] {
        let out = broker.cli(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}

/// A JWT's header and claims, unverified (the broker's signature is checked by the broker).
fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = token.split('.');
    let mut next = || -> Value {
        serde_json::from_slice(&b64.decode(parts.next().unwrap()).unwrap()).unwrap()
    };
    (next(), next())
}

/// `POST /v1/grants` by `who` with the task token in the `Txn-Token` header.
async fn grant_with_task_token(
    broker: &Broker,
    who: &str,
    task_token: &str,
    body: Value,
) -> (u16, Value) {
    let resp = broker
        .http
        .post(broker.url("/v1/grants"))
        .bearer_auth(who)
        .header("Txn-Token", task_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The task token opening a task returns: a Transaction-Token-shaped JWT (`txn`, `sub`,
/// `purp`, `azd`) that binds a grant to its task; the token issued in it carries `txn`;
/// the task's deadline cuts the TTL. Another identity's, a forged one, an access token in
/// its place or one naming a different task than `task` are refused, and nothing is issued.
#[tokio::test]
async fn task_tokens_bind_grants_to_their_task() {
    let issuer = Issuer::new();
    let broker = broker(&issuer).await;
    let me = issuer.token(DEPLOYER);
    let other = issuer.token(CI);
    let (status, opened) = call(
        &broker,
        Method::POST,
        "/v1/tasks",
        &me,
        Some(json!({"purpose": "nightly export", "deadline": "2m"})),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    let task_id = opened["task"]["id"].as_str().unwrap().to_string();
    let task_token = opened["task_token"].as_str().unwrap().to_string();
    let (header, claims) = jwt_parts(&task_token);
    assert_eq!(header["typ"], "txntoken+jwt", "{header}");
    assert_eq!(claims["txn"], task_id.as_str());
    assert_eq!(claims["sub"], "billing-deployer");
    assert_eq!(claims["purp"], "nightly export");
    assert_eq!(claims["azd"]["owner"], "team-billing");
    let deadline = time::OffsetDateTime::parse(
        opened["task"]["deadline"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(claims["exp"], deadline.unix_timestamp());
    // Shown once, at opening.
    let shown = broker.get(&format!("/v1/tasks/{task_id}")).await;
    assert!(shown.get("task_token").is_none(), "{shown}");

    let body =
        json!({"target": "billing-api", "action": "read", "purpose": "export", "ttl": "10m"});
    let (status, issued) = grant_with_task_token(&broker, &me, &task_token, body.clone()).await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["grant"]["task"], task_id.as_str());
    let granted = issued["grant"]["granted_ttl"].as_str().unwrap();
    assert!(
        granted.ends_with('s') || granted == "2m",
        "cut at the deadline: {granted}"
    );
    let reasons = issued["grant"]["decision"]["reasons"].to_string();
    assert!(
        reasons.contains(&format!("task {task_id} ends at")),
        "{reasons}"
    );
    let access_token = issued["credential"]["access_token"].as_str().unwrap();
    let (_, access) = jwt_parts(access_token);
    assert_eq!(access["txn"], task_id.as_str(), "{access}");
    assert_eq!(
        broker.introspect(access_token).await["txn"],
        task_id.as_str()
    );

    let refusals = [
        (
            &other,
            task_token.clone(),
            body.clone(),
            403,
            "not_your_task",
        ),
        (
            &me,
            format!("{}x", &task_token[..task_token.len() - 2]),
            body.clone(),
            400,
            "Txn-Token",
        ),
        (
            &me,
            access_token.to_string(),
            body.clone(),
            400,
            "Txn-Token",
        ),
        (
            &me,
            task_token.clone(),
            json!({"target": "billing-api", "action": "read", "purpose": "export", "task": "another"}),
            400,
            "task",
        ),
    ];
    let leases_before = broker.get("/v1/leases").await.as_array().unwrap().len();
    for (who, token, body, want, says) in refusals {
        let (status, problem) = grant_with_task_token(&broker, who, &token, body).await;
        assert_eq!(status, want, "{problem}");
        let named = format!(
            "{} {} {}",
            problem["code"], problem["field"], problem["detail"]
        );
        assert!(named.contains(says), "{says}: {problem}");
    }
    let leases_after = broker.get("/v1/leases").await.as_array().unwrap().len();
    assert_eq!(
        leases_before, leases_after,
        "a refused request issued something"
    );

    // The introspection of the task's token is its use, in the task's story.
    let story = broker.audit(&format!("task={task_id}")).await;
    let kinds: Vec<&str> = story.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"token.introspected"), "{kinds:?}");
}
