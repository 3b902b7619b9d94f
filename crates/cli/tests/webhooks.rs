//! Outgoing webhooks through the running broker: a local listener receives signed
//! deliveries and verifies them as a receiver would (HMAC-SHA256 over `"<t>.<body>"`), a
//! receiver answering 500 gets retries and then the event, a broker killed while events
//! are undelivered delivers them after its restart (none lost, nothing to do by hand), the
//! Slack body is `{"text": …}` only, and no secret reaches the broker's log.
//!
//! The events are `lease.revoke_failed`, which the broker writes whenever a PostgreSQL
//! target refuses a revocation: the admin role is made NOLOGIN, as in `dynamic_db.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::pg::{superuser_or_skip, PgFixture};
use common::webhook::{verify, Delivery, Receiver};
use common::{eventually_every, Broker, Options, BIN};
use serde_json::json;
use sqlx::Executor;

const SECRET: &str = "whsec-test-3f9a1c0e-never-logged";
/// A Slack incoming-webhook URL is itself a secret: its path must not be logged either.
const SLACK_PATH: &str = "/services/T000/B000/slack-url-secret-5e2d";

fn config(json_url: &str) -> String {
    format!(
        r#"
[[webhooks]]
name = "ops"
url = "{json_url}"
secret_env = "MAYFLY_TEST_WEBHOOK_SECRET"
events = ["lease.revoke_failed", "grant.break_glass"]
alert_after = "0s"

[[webhooks]]
name = "chat"
url_env = "MAYFLY_TEST_SLACK_URL"
format = "slack"
"#
    )
}

fn options(config: &str, slack_url: &str, token: Option<String>) -> Options {
    Options {
        config: Some(config.to_string()),
        token,
        env: vec![
            ("MAYFLY_TEST_WEBHOOK_SECRET", SECRET.to_string()),
            ("MAYFLY_TEST_SLACK_URL", slack_url.to_string()),
        ],
        ..Options::default()
    }
}

async fn metrics_of(broker: &Broker) -> String {
    let response = broker
        .http
        .get(broker.url("/metrics"))
        .send()
        .await
        .unwrap();
    response.text().await.unwrap()
}

/// Every line the broker logged so far.
fn drain_log(broker: &Broker, into: &mut Vec<String>) {
    while let Ok(line) = broker.log.try_recv() {
        into.push(line);
    }
}

/// Hashes of the `lease.revoke_failed` entries of the audit chain, by sequence number.
async fn revoke_failed_entries(broker: &Broker) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut after = 0u64;
    loop {
        let page = broker
            .get(&format!("/v1/audit?after={after}&limit=500"))
            .await;
        let page = page.as_array().cloned().unwrap_or_default();
        let Some(last) = page.last() else { break };
        after = last["seq"].as_u64().unwrap();
        for e in &page {
            if e["kind"] == "lease.revoke_failed" {
                out.insert(
                    e["seq"].as_u64().unwrap(),
                    e["hash"].as_str().unwrap().to_string(),
                );
            }
        }
        if page.len() < 500 {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_and_survive_a_broker_kill() {
    let Some(mut su) = superuser_or_skip("outgoing webhooks").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "whk").await;
    // The JSON receiver refuses the first deliveries; the Slack one takes everything.
    let ops = Receiver::start("/hooks/mayfly", true).await;
    let chat = Receiver::start(SLACK_PATH, false).await;
    let config = config(&ops.url);
    let dir = common::scratch_dir();
    let broker = Broker::start_in(BIN, &dir, options(&config, &chat.url, None));
    let mut log = Vec::new();
    broker.add_identity("etl", "team-data").await;
    let (status, target) = broker.post("/v1/targets", f.target("pg")).await;
    assert_eq!(status, 201, "{target}");
    // Three leases refusing revocation make the failures (each retried with backoff)
    // frequent enough for every phase below.
    let mut grants = Vec::new();
    for task in ["wh-1", "wh-2", "wh-3"] {
        let (status, grant) = broker
            .post("/v1/grants", json!({"identity": "etl", "target": "pg", "action": "read", "purpose": "nightly load", "task": task, "ttl": "10m"}))
            .await;
        assert_eq!(status, 201, "{grant}");
        grants.push(grant);
    }
    let passwords: Vec<String> = grants
        .iter()
        .filter_map(|g| g["credential"]["password"].as_str().map(str::to_string))
        .collect();

    // The target refuses the revocation: each failed attempt is a `lease.revoke_failed`.
    su.execute(format!("ALTER ROLE {} NOLOGIN", f.admin).as_str())
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&f.admin)
        .execute(&mut su)
        .await
        .unwrap();
    let grant_ids: Vec<String> = grants
        .iter()
        .map(|g| g["grant"]["id"].as_str().unwrap().to_string())
        .collect();
    for id in &grant_ids {
        broker
            .post(&format!("/v1/grants/{id}/revoke"), json!({}))
            .await;
    }

    // Retries: the same event (same id) until the receiver takes it, then the next ones.
    let refused = eventually_every(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            let all = ops.all();
            if all.len() >= 2 {
                Ok(all)
            } else {
                Err(all)
            }
        },
    )
    .await
    .unwrap_or_else(|seen| panic!("no retries reached the receiver: {seen:?}"));
    assert!(refused.iter().all(|d| d.status == 500));
    assert_eq!(
        refused[0].event_id(),
        refused[1].event_id(),
        "a retry carries the same event id"
    );
    ops.fail(false);
    let first = eventually_every(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { ops.accepted().first().cloned().ok_or(()) },
    )
    .await
    .unwrap_or_else(|()| panic!("the event never arrived after the receiver recovered"));
    assert_eq!(
        first.event_id(),
        refused[0].event_id(),
        "delivered in chain order"
    );
    assert_eq!(first.path, "/hooks/mayfly");
    verify(SECRET, &first).unwrap();
    for d in ops.all() {
        verify(SECRET, &d).unwrap();
    }
    assert_eq!(
        first.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        first.headers.get("mayfly-event").map(String::as_str),
        Some("lease.revoke_failed")
    );
    let body = first.json();
    assert_eq!(body["event"], "lease.revoke_failed");
    assert_eq!(body["id"], first.event_id().as_str());
    assert_eq!(body["identity"], "etl");
    assert_eq!(body["target"], "pg");
    assert!(
        grant_ids.iter().any(|g| body["grant_id"] == g.as_str()),
        "{body}"
    );
    assert!(
        body["summary"]
            .as_str()
            .unwrap()
            .contains("Revocation failing"),
        "{body}"
    );
    assert!(body["detail"]["error"].is_string(), "{body}");
    let entries = revoke_failed_entries(&broker).await;
    let seq = body["seq"].as_u64().unwrap();
    assert_eq!(
        entries.get(&seq),
        Some(&first.event_id()),
        "the id is the audit entry's hash"
    );
    for d in ops.all().iter().chain(chat.all().iter()) {
        let text = String::from_utf8_lossy(&d.body);
        assert!(
            !text.contains(&f.password),
            "the target's admin password was sent"
        );
        for password in &passwords {
            assert!(!text.contains(password.as_str()), "a credential was sent");
        }
    }

    // Slack: only `text`, unsigned (no secret configured), escaped summary.
    let slack = eventually_every(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async { chat.accepted().first().cloned().ok_or(()) },
    )
    .await
    .unwrap_or_else(|()| panic!("the Slack webhook received nothing"));
    assert_eq!(slack.path, SLACK_PATH);
    let slack_body = slack.json();
    let keys: Vec<&String> = slack_body.as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["text"], "{slack_body}");
    let text = slack_body["text"].as_str().unwrap();
    assert!(
        text.contains("Revocation failing") && text.contains("etl") && text.contains("pg"),
        "{text}"
    );
    assert!(!slack.headers.contains_key("mayfly-signature"));

    // Kill the broker while an event is refused and undelivered, then start it again: the
    // undelivered events arrive by themselves.
    ops.fail(true);
    let before = ops.all().len();
    let stuck = eventually_every(
        Duration::from_secs(90),
        Duration::from_millis(100),
        || async {
            let all = ops.all();
            all[before..]
                .iter()
                .find(|d| d.status == 500)
                .cloned()
                .ok_or(all.len())
        },
    )
    .await
    .unwrap_or_else(|n| panic!("no refused delivery to kill the broker on ({n} seen)"));
    let metrics = metrics_of(&broker).await;
    assert!(
        metrics.contains("mayfly_webhook_failures_total{webhook=\"ops\"}"),
        "{metrics}"
    );
    drain_log(&broker, &mut log);
    let (dir, token) = broker.kill();
    ops.fail(false);
    let broker = Broker::start_in(BIN, &dir, options(&config, &chat.url, Some(token)));
    let redelivered = eventually_every(
        Duration::from_secs(45),
        Duration::from_millis(200),
        || async {
            ops.accepted()
                .into_iter()
                .find(|d| d.event_id() == stuck.event_id())
                .ok_or(())
        },
    )
    .await
    .unwrap_or_else(|()| {
        panic!("the event refused before the kill never arrived after the restart")
    });
    verify(SECRET, &redelivered).unwrap();

    // Let the target recover; then every `lease.revoke_failed` up to the last accepted one
    // was accepted (none lost), in chain order.
    su.execute(format!("ALTER ROLE {} LOGIN", f.admin).as_str())
        .await
        .unwrap();
    let entries = revoke_failed_entries(&broker).await;
    let last = *entries.keys().last().unwrap();
    let all_in = eventually_every(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let got: BTreeSet<String> = ops.accepted().iter().map(Delivery::event_id).collect();
            let missing: Vec<u64> = entries
                .iter()
                .filter(|(_, hash)| !got.contains(*hash))
                .map(|(seq, _)| *seq)
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(missing)
            }
        },
    )
    .await;
    assert_eq!(all_in, Ok(()), "events lost (by seq), up to seq {last}");
    let accepted_seqs: Vec<u64> = ops
        .accepted()
        .iter()
        .map(|d| d.json()["seq"].as_u64().unwrap())
        .collect();
    let mut first_seen = Vec::new();
    for s in accepted_seqs {
        if !first_seen.contains(&s) {
            first_seen.push(s);
        }
    }
    assert!(
        first_seen.windows(2).all(|w| w[0] < w[1]),
        "out of order: {first_seen:?}"
    );

    // The metric counts the refusals; the log has the error, never a secret or the URL path.
    let metrics = metrics_of(&broker).await;
    assert!(
        metrics.contains("mayfly_webhook_lag_events{webhook=\"ops\"}"),
        "{metrics}"
    );
    drain_log(&broker, &mut log);
    let log_text = log.join("\n");
    assert!(
        log_text.contains("webhook has been failing")
            && log_text.contains("ERROR")
            && log_text.contains("HTTP 500 Internal Server Error: receiver is down"),
        "the alert carries the exact error:\n{log_text}"
    );
    assert!(
        log_text.contains("webhook delivery failed") && log_text.contains("HTTP 500"),
        "the failure and its error are logged:\n{log_text}"
    );
    for secret in [SECRET, SLACK_PATH, "slack-url-secret", "/hooks/mayfly"] {
        assert!(
            !log_text.contains(secret),
            "{secret:?} in the log:\n{log_text}"
        );
    }
    drop(broker);
    f.drop_all(&mut su).await;
}
