//! Root rotation cannot lose the admin password: the broker is killed (`MAYFLY_CRASH_AT`)
//! after it recorded the next password and before it changed the target, and again after
//! the change and before the commit. Each time the restarted broker settles the rotation on
//! its own, issues a working credential on the target, and the admin role's password on the
//! real PostgreSQL is the one Mayfly holds. If the target refuses both passwords at
//! restart, both stay on record and a later sweep settles the rotation once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::pg::{broker_crashing_at, superuser_or_skip, PgFixture};
use common::{eventually, Broker, Options, BIN};
use mayfly_core::store::Store;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

/// The admin password Mayfly holds for target `pg` (read with the broker stopped), and how
/// many rotations are still recorded as pending.
async fn held_admin_password(dir: &std::path::Path) -> (String, usize) {
    let key = std::fs::read_to_string(dir.join("master.key")).unwrap();
    let key = mayfly_core::seal::MasterKey::from_base64(key.trim()).unwrap();
    let store = mayfly_store::SqliteStore::open(
        dir.join("mayfly.db").to_str().unwrap(),
        mayfly_store::Durability::Fsync,
    )
    .await
    .unwrap();
    let sealed = store.get_target_secret("pg").await.unwrap().unwrap();
    let pending = store.pending_root_rotations().await.unwrap().len();
    let plain = key.open(&sealed, "target-secret:pg").unwrap();
    let url = url_password(std::str::from_utf8(plain.expose()).unwrap());
    (url, pending)
}

fn url_password(url: &str) -> String {
    // postgres://user:password@host:port/db; generated passwords are alphanumeric.
    let creds = url.split("://").nth(1).unwrap().split('@').next().unwrap();
    creds.split_once(':').unwrap().1.to_string()
}

async fn crash_during_rotation(point: &str) {
    let Some(mut su) = superuser_or_skip("root rotation crash safety").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "rot").await;
    let (crashing, token) = broker_crashing_at(&f, point).await;
    let result = crashing
        .http
        .post(crashing.url("/v1/targets/pg/rotate-root"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await;
    assert!(
        result.is_err(),
        "the broker answered instead of crashing at {point}"
    );
    let (dir, token) = crashing.kill();
    let changed = !f.admin_password_is(&mut su, &f.password).await;
    assert_eq!(
        changed,
        point == "rotate-after-change",
        "the target is changed only after the next password is recorded"
    );
    let (held, pending) = held_admin_password(&dir).await;
    assert_eq!(held, f.password, "the crash left the old secret in use");
    assert_eq!(pending, 1, "the next secret was recorded before the change");

    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token.clone()),
            ..Options::default()
        },
    );
    // Settled in the background right after start-up.
    assert!(
        eventually(Duration::from_secs(20), || async {
            broker
                .audit("limit=1000")
                .await
                .iter()
                .any(|e| e["kind"] == "target.root_rotated")
        })
        .await,
        "the interrupted rotation was not resolved after restart"
    );
    let resolved: Vec<Value> = broker
        .audit("limit=1000")
        .await
        .into_iter()
        .filter(|e| e["kind"] == "target.root_rotated")
        .collect();
    assert_eq!(resolved.len(), 1, "{resolved:?}");
    assert_eq!(resolved[0]["actor"], "system:reconcile");

    let (status, grant) = broker
        .post("/v1/grants", json!({"identity": "etl", "target": "pg", "action": "read", "purpose": "after crash", "task": "rot", "ttl": "10m"}))
        .await;
    assert_eq!(status, 201, "{grant}");
    let mut user = PgConnection::connect(grant["credential"]["dsn"].as_str().unwrap())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM app.items")
        .fetch_one(&mut user)
        .await
        .unwrap();
    assert_eq!(n, 1);
    user.close().await.unwrap();
    let (dir, token) = broker.kill();

    let (held, pending) = held_admin_password(&dir).await;
    assert_eq!(
        pending, 0,
        "the rotation stays recorded after it was resolved"
    );
    assert_ne!(held, f.password, "the rotation was completed, not dropped");
    assert!(
        f.admin_password_is(&mut su, &held).await,
        "the admin role's password is not the one Mayfly holds"
    );

    // Nothing is left to block the next rotation.
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token),
            ..Options::default()
        },
    );
    let (status, body) = broker.post("/v1/targets/pg/rotate-root", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
    let (dir, _) = broker.kill();
    let (held, pending) = held_admin_password(&dir).await;
    assert_eq!(pending, 0);
    assert!(f.admin_password_is(&mut su, &held).await);
    f.drop_all(&mut su).await;
}

#[tokio::test]
async fn crash_after_recording_the_next_password_loses_nothing() {
    crash_during_rotation("rotate-after-record").await;
}

#[tokio::test]
async fn crash_after_changing_the_password_loses_nothing() {
    crash_during_rotation("rotate-after-change").await;
}

/// The target refuses the admin role when the broker restarts after a crash past the
/// change: nothing can be settled, so both passwords stay on record (no decision is
/// audited); once the role may log in again a later sweep completes the rotation.
#[tokio::test]
async fn rotation_interrupted_while_the_target_refuses_is_settled_later() {
    let Some(mut su) = superuser_or_skip("root rotation with the target down").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "rot").await;
    let (crashing, token) = broker_crashing_at(&f, "rotate-after-change").await;
    let result = crashing
        .http
        .post(crashing.url("/v1/targets/pg/rotate-root"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await;
    assert!(result.is_err(), "the broker answered instead of crashing");
    let (dir, token) = crashing.kill();

    su.execute(format!("ALTER ROLE {} NOLOGIN", f.admin).as_str())
        .await
        .unwrap();
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token),
            config: Some("reconcile_interval = \"10s\"\n".into()),
            ..Options::default()
        },
    );
    let rotated = || async {
        broker
            .audit("limit=1000")
            .await
            .iter()
            .any(|e| e["kind"] == "target.root_rotated")
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!rotated().await, "settled while the target refused both");
    // A new rotation would hide the recorded candidate: refused until this one settles.
    let (status, body) = broker.post("/v1/targets/pg/rotate-root", json!({})).await;
    assert_eq!(status, 409, "{body}");
    su.execute(format!("ALTER ROLE {} LOGIN", f.admin).as_str())
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), rotated).await,
        "the sweep did not settle the rotation once the target was back"
    );
    let (status, grant) = broker
        .post("/v1/grants", json!({"identity": "etl", "target": "pg", "action": "read", "purpose": "after outage", "task": "rot", "ttl": "10m"}))
        .await;
    assert_eq!(status, 201, "{grant}");
    let (dir, _) = broker.kill();
    let (held, pending) = held_admin_password(&dir).await;
    assert_eq!(pending, 0);
    assert_ne!(held, f.password);
    assert!(f.admin_password_is(&mut su, &held).await);
    f.drop_all(&mut su).await;
}
