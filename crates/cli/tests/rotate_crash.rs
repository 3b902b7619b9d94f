//! Root rotation cannot lose the admin password: the broker is killed (`MAYFLY_CRASH_AT`)
//! after it recorded the next password and before it changed the target, and again after
//! the change and before the commit. Each time the restarted broker settles the rotation on
//! its own, issues a working credential on the target, and the admin role's password on the
//! real PostgreSQL is the one Mayfly holds. If the target refuses both passwords at
//! restart, both stay on record and a later sweep settles the rotation once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{postgres_superuser, suffix, Broker, Options};
use mayfly_core::store::Store;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

struct PgFixture {
    db: String,
    admin: String,
    password: String,
    /// Every user Mayfly creates here starts with this.
    prefix: String,
}

impl PgFixture {
    async fn create(su: &mut PgConnection) -> PgFixture {
        let s = suffix();
        let f = PgFixture {
            db: format!("mayfly_rot_{s}"),
            admin: format!("mayfly_admin_rot_{s}"),
            password: format!("pw_{s}"),
            prefix: format!("r{s}_"),
        };
        su.execute(
            format!(
                "CREATE ROLE {} LOGIN CREATEROLE PASSWORD '{}'",
                f.admin, f.password
            )
            .as_str(),
        )
        .await
        .unwrap();
        su.execute(format!("CREATE DATABASE {} OWNER {}", f.db, f.admin).as_str())
            .await
            .unwrap();
        let mut db = PgConnection::connect(&format!("postgres://postgres@127.0.0.1:5432/{}", f.db))
            .await
            .unwrap();
        db.execute(format!("CREATE SCHEMA app AUTHORIZATION {}", f.admin).as_str())
            .await
            .unwrap();
        db.execute("CREATE TABLE app.items (id int)").await.unwrap();
        db.execute(format!("ALTER TABLE app.items OWNER TO {}", f.admin).as_str())
            .await
            .unwrap();
        db.execute("INSERT INTO app.items VALUES (1)")
            .await
            .unwrap();
        db.close().await.unwrap();
        f
    }

    fn target(&self) -> Value {
        json!({
            "name": "pg", "kind": "postgres", "actions": ["read"], "default_ttl": "10m", "max_ttl": "1h", "allow": ["*"],
            "admin": format!("postgres://{}:{}@127.0.0.1:5432/{}", self.admin, self.password, self.db),
            "settings": {
                "username_template": format!("{}{{{{identity}}}}_{{{{rand}}}}", self.prefix),
                "grants": {"read": ["GRANT USAGE ON SCHEMA app TO \"{{name}}\"", "GRANT SELECT ON ALL TABLES IN SCHEMA app TO \"{{name}}\""]}
            }
        })
    }

    /// Whether `password` is the admin role's password. Loopback is `trust` on the test
    /// server, so a login proves nothing: the stored SCRAM verifier is checked instead.
    async fn admin_password_is(&self, su: &mut PgConnection, password: &str) -> bool {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                .bind(&self.admin)
                .fetch_one(&mut *su)
                .await
                .unwrap();
        stored.is_some_and(|s| scram_matches(&s, password))
    }

    async fn drop_all(&self, su: &mut PgConnection) {
        su.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db).as_str())
            .await
            .unwrap();
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT rolname::text FROM pg_roles WHERE left(rolname, length($1)) = $1",
        )
        .bind(&self.prefix)
        .fetch_all(&mut *su)
        .await
        .unwrap();
        for user in users {
            su.execute(format!("DROP ROLE IF EXISTS \"{user}\"").as_str())
                .await
                .unwrap();
        }
        su.execute(format!("DROP ROLE IF EXISTS {}", self.admin).as_str())
            .await
            .unwrap();
    }
}

/// Whether `password` matches a PostgreSQL `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
fn scram_matches(stored: &str, password: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let (iter_salt, keys) = rest.split_once('$').unwrap();
    let (iter, salt) = iter_salt.split_once(':').unwrap();
    let (stored_key, _) = keys.split_once(':').unwrap();
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iter.parse().unwrap()).unwrap(),
        &b64.decode(salt).unwrap(),
        password.as_bytes(),
        &mut salted,
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &salted);
    let client_key = ring::hmac::sign(&key, b"Client Key");
    b64.encode(ring::digest::digest(&ring::digest::SHA256, client_key.as_ref()).as_ref())
        == stored_key
}

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
    let Some(mut su) = postgres_superuser("root rotation crash safety").await else {
        return;
    };
    let f = PgFixture::create(&mut su).await;
    let broker = Broker::start();
    broker.add_identity("etl", "team-data").await;
    assert_eq!(broker.post("/v1/targets", f.target()).await.0, 201);
    let (dir, token) = broker.kill();

    let crashing = Broker::start_in(
        &dir,
        Options {
            token: Some(token.clone()),
            env: vec![("MAYFLY_CRASH_AT", point.to_string())],
            ..Options::default()
        },
    );
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
        &dir,
        Options {
            token: Some(token.clone()),
            ..Options::default()
        },
    );
    // Settled in the background right after start-up.
    assert!(
        broker
            .wait_for(Duration::from_secs(20), || async {
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
    let Some(mut su) = postgres_superuser("root rotation with the target down").await else {
        return;
    };
    let f = PgFixture::create(&mut su).await;
    let broker = Broker::start();
    broker.add_identity("etl", "team-data").await;
    assert_eq!(broker.post("/v1/targets", f.target()).await.0, 201);
    let (dir, token) = broker.kill();
    let crashing = Broker::start_in(
        &dir,
        Options {
            token: Some(token.clone()),
            env: vec![("MAYFLY_CRASH_AT", "rotate-after-change".to_string())],
            ..Options::default()
        },
    );
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
        broker.wait_for(Duration::from_secs(30), rotated).await,
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
