//! Operator tokens with a lifecycle, against the real binary: create (shown once), list
//! (never the token), revoke, expired and revoked tokens refused with their reason, the
//! last live token kept unless forced, every step audited; and offline recovery of a
//! stopped broker whose tokens are gone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Broker, Options, BIN};
use reqwest::Method;
use serde_json::{json, Value};

/// `GET /v1/whoami` with `token`: status and body.
async fn whoami(broker: &Broker, token: &str) -> (u16, Value) {
    let (status, body, _) = broker
        .call(Method::GET, "/v1/whoami", Some(token), None)
        .await;
    (status, body)
}

async fn create(broker: &Broker, body: Value) -> (u16, Value) {
    broker.post("/v1/operator/tokens", body).await
}

#[tokio::test]
async fn create_list_revoke_and_refusals() {
    let broker = Broker::start(BIN);

    // Create: 201 with the token once, a default expiry of 90 days, the creator named.
    let (status, made) = create(&broker, json!({"name": "ci"})).await;
    assert_eq!(status, 201, "{made}");
    let ci = made["token"].as_str().unwrap().to_string();
    assert!(ci.starts_with("mfy_op_"), "{made}");
    assert_eq!(made["name"], "ci");
    assert_eq!(made["state"], "active");
    assert_eq!(made["created_by"], "operator:bootstrap");
    let expires = time::OffsetDateTime::parse(
        made["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let days = (expires - time::OffsetDateTime::now_utc()).whole_days();
    assert!((89..=90).contains(&days), "default expiry: {made}");
    let (status, me) = whoami(&broker, &ci).await;
    assert_eq!(status, 200, "{me}");

    // A live token's name is taken; a past expiry and a bad name are refused precisely.
    let (status, problem) = create(&broker, json!({"name": "ci"})).await;
    assert_eq!(status, 409, "{problem}");
    let (status, problem) = create(
        &broker,
        json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("expires_at")),
        "{problem}"
    );
    let (status, problem) = create(&broker, json!({"name": "Not A Name"})).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("name")),
        "{problem}"
    );
    // Workloads and strangers cannot make tokens.
    let (status, _, _) = broker
        .call(
            Method::POST,
            "/v1/operator/tokens",
            None,
            Some(json!({"name": "y"})),
        )
        .await;
    assert_eq!(status, 401);

    // Listing: names and dates, never the token or its hash.
    let listed = broker.get("/v1/operator/tokens").await;
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bootstrap", "ci"], "{listed}");
    assert_eq!(
        listed[0]["expires_at"],
        Value::Null,
        "the first start's token never expires"
    );
    assert_eq!(listed[0]["created_by"], "system:first-start");
    let text = listed.to_string();
    assert!(
        !text.contains(&ci) && !text.contains("sha256") && !text.contains("token\""),
        "{text}"
    );

    // An expired token is refused at authentication, saying so and when.
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, made) = create(&broker, json!({"name": "short", "expires_at": soon})).await;
    assert_eq!(status, 201, "{made}");
    let short = made["token"].as_str().unwrap().to_string();
    assert_eq!(whoami(&broker, &short).await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let (status, problem, ctype) = broker
        .call(Method::GET, "/v1/whoami", Some(&short), None)
        .await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(ctype, "application/problem+json");
    assert_eq!(problem["code"], "operator_token_expired");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("\"short\" expired at 20"), "{detail}");
    assert!(!detail.contains(&short), "{detail}");
    let listed = broker.get("/v1/operator/tokens").await;
    assert_eq!(listed[2]["state"], "expired", "{listed}");
    // Its name can be given again; the expired one is retired, not forgotten.
    let (status, made) = create(&broker, json!({"name": "short"})).await;
    assert_eq!(status, 201, "{made}");

    // Revoked: refused at once, with the reason.
    let (status, revoked) = broker
        .post("/v1/operator/tokens/ci/revoke", json!({}))
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revoked_by"], "operator:bootstrap");
    let (status, problem) = whoami(&broker, &ci).await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(problem["code"], "operator_token_revoked");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("was revoked at 20"),
        "{problem}"
    );
    let (status, problem) = broker
        .post("/v1/operator/tokens/ci/revoke", json!({}))
        .await;
    assert_eq!(status, 404, "revoked twice: {problem}");
    let listed = broker.get("/v1/operator/tokens").await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["state"] != "revoked"),
        "{listed}"
    );
    let all = broker.get("/v1/operator/tokens?include_revoked=true").await;
    assert_eq!(all.as_array().unwrap().len(), 4, "{all}");

    // The last live token is kept unless forced. Live now: bootstrap and the new `short`.
    let (status, _) = broker
        .post("/v1/operator/tokens/short/revoke", json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, problem) = broker
        .post("/v1/operator/tokens/bootstrap/revoke", json!({}))
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("last live operator token"),
        "{problem}"
    );
    assert_eq!(whoami(&broker, &broker.token).await.0, 200);

    // Every create and revoke is in the chain, with who did it and never a token.
    let audit = broker.audit("limit=1000").await;
    let of = |kind: &str| -> Vec<&Value> { audit.iter().filter(|e| e["kind"] == kind).collect() };
    assert_eq!(of("operator.token_created").len(), 3, "{audit:?}");
    assert_eq!(of("operator.token_revoked").len(), 2, "{audit:?}");
    for e in of("operator.token_created")
        .iter()
        .chain(of("operator.token_revoked").iter())
    {
        assert_eq!(e["actor"], "operator:bootstrap", "{e}");
    }
    assert_eq!(of("operator.token_created")[0]["detail"]["name"], "ci");
    let chain = serde_json::to_string(&audit).unwrap();
    assert!(
        !chain.contains(&ci) && !chain.contains(&short),
        "a token in the audit chain"
    );
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );

    // Forced: the broker then has no live operator token at all.
    let (status, _) = broker
        .post(
            "/v1/operator/tokens/bootstrap/revoke",
            json!({"force": true}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, problem) = whoami(&broker, &broker.token).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("operator_token_revoked"))
    );
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes() {
    let broker = Broker::start(BIN);
    let out = broker.cli(&[
        "operator",
        "token",
        "create",
        "--name",
        "alice",
        "--expires-in",
        "30d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token alone on stdout (for `TOKEN=$(…)`), the notice on stderr.
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        token.starts_with("mfy_op_") && !token.contains(' '),
        "{token}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("shown only this once"));
    assert_eq!(whoami(&broker, &token).await.0, 200);

    let out = broker.cli(&["operator", "token", "list", "--output", "json"]);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1]["name"], "alice");
    let out = broker.cli(&["operator", "token", "list"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("never"), "the first start's token: {table}");
    assert!(!table.contains(&token));

    let out = broker.cli(&[
        "operator",
        "token",
        "create",
        "--name",
        "bob",
        "--expires-at",
        "yesterday",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");

    let out = broker.cli(&["operator", "token", "revoke", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(whoami(&broker, &token).await.0, 401);
    let out = broker.cli(&["operator", "token", "revoke", "bootstrap"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("last live operator token") && err.contains("409"),
        "{err}"
    );
}

/// A broker whose every token is revoked, stopped: `store recover-operator` on its data
/// directory mints one that works after restart, audited; without the master key it
/// refuses, and so with another deployment's key.
#[tokio::test]
async fn recover_operator_on_a_stopped_broker() {
    let broker = Broker::start(BIN);
    let (status, _) = broker
        .post(
            "/v1/operator/tokens/bootstrap/revoke",
            json!({"force": true}),
        )
        .await;
    assert_eq!(status, 200);
    let old = broker.token.clone();
    let (dir, _) = broker.kill();
    let recover = |extra: &[&str]| {
        let mut args = vec![
            "store",
            "recover-operator",
            "--name",
            "rescue",
            "--data-dir",
        ];
        let dir = dir.to_str().unwrap();
        args.push(dir);
        args.extend_from_slice(extra);
        std::process::Command::new(BIN)
            .args(&args)
            .env_remove("MAYFLY_MASTER_KEY")
            .env_remove("MAYFLY_STORE")
            .env_remove("MAYFLY_MASTER_KEY_FILE")
            .env_remove("MAYFLY_DATA_DIR")
            .output()
            .unwrap()
    };

    // Without the master key: refused, with a sentence saying what is missing.
    let key = dir.join("master.key");
    let aside = dir.join("master.key.aside");
    std::fs::rename(&key, &aside).unwrap();
    let out = recover(&[]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: cannot recover without the master key"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Another deployment's key does not open this store's signing keys.
    let other = dir.join("other.key");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&other)
            .unwrap();
        f.write_all(common::master_key().as_bytes()).unwrap();
    }
    let out = recover(&["--master-key-file", other.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not this deployment's key"), "{err}");
    std::fs::rename(&aside, &key).unwrap();

    let out = recover(&["--expires-in", "2h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("mfy_op_"), "{token}");

    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token.clone()),
            ..Options::default()
        },
    );
    let (status, me) = whoami(&broker, &token).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(whoami(&broker, &old).await.0, 401);
    let audit = broker.audit("limit=1000").await;
    let recovered: Vec<&Value> = audit
        .iter()
        .filter(|e| e["kind"] == "operator.recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{audit:?}");
    assert_eq!(recovered[0]["actor"], "system:recovery");
    assert_eq!(recovered[0]["detail"]["name"], "rescue");
    assert!(!serde_json::to_string(&audit).unwrap().contains(&token));
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
    let listed = broker.get("/v1/operator/tokens").await;
    assert_eq!(listed[0]["name"], "rescue", "{listed}");
    assert_eq!(listed[0]["created_by"], "system:recovery");
}
