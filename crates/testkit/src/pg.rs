//! The local PostgreSQL (127.0.0.1:5432, superuser `postgres` over trust auth): its
//! superuser connection, a target of a test's own on it (a database, schema `app` with one
//! table, and a dedicated admin role that owns them, all dropped at the end), and the
//! check of a stored SCRAM verifier.

use std::path::Path;

use base64::Engine as _;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

use crate::broker::{Broker, Options};
use crate::services::connect_or_skip;

pub const ADDR: &str = "127.0.0.1:5432";
pub const SUPERUSER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A superuser connection for `suite`, or `None` after the `SKIPPED:` line when PostgreSQL
/// is unreachable (a failure under `MAYFLY_REQUIRE_SERVICES=1`).
pub async fn superuser_or_skip(suite: &str) -> Option<PgConnection> {
    connect_or_skip(
        suite,
        "PostgreSQL at 127.0.0.1:5432",
        PgConnection::connect(SUPERUSER_URL),
    )
    .await
}

/// A superuser connection, for suites that checked the server is there.
pub async fn superuser() -> PgConnection {
    PgConnection::connect(SUPERUSER_URL)
        .await
        .expect("connect to PostgreSQL as postgres")
}

pub struct PgFixture {
    pub db: String,
    pub admin: String,
    pub password: String,
    /// Every user Mayfly creates here starts with this (the username template's prefix).
    pub prefix: String,
}

impl PgFixture {
    /// Creates the database, schema, table and admin role; `tag` keeps names readable
    /// per suite (`dyn`, `rot`, …).
    pub async fn create(su: &mut PgConnection, tag: &str) -> PgFixture {
        let s = crate::suffix();
        let f = PgFixture {
            db: format!("mayfly_{tag}_{s}"),
            admin: format!("mayfly_admin_{tag}_{s}"),
            password: format!("pw_{s}"),
            prefix: format!("{}{s}_", &tag[..1]),
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

    pub fn admin_url(&self) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:5432/{}",
            self.admin, self.password, self.db
        )
    }

    /// A `postgres` target named `name` with `read` (SELECT) and `write` (SELECT, INSERT)
    /// actions on schema `app`, open to every identity.
    pub fn target(&self, name: &str) -> Value {
        json!({
            "name": name, "kind": "postgres", "actions": ["read", "write"], "default_ttl": "10m", "max_ttl": "1h", "allow": ["*"],
            "admin": self.admin_url(),
            "settings": {
                "username_template": format!("{}{{{{identity}}}}_{{{{rand}}}}", self.prefix),
                "grants": {
                    "read": ["GRANT USAGE ON SCHEMA app TO \"{{name}}\"", "GRANT SELECT ON ALL TABLES IN SCHEMA app TO \"{{name}}\""],
                    "write": ["GRANT USAGE ON SCHEMA app TO \"{{name}}\"", "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA app TO \"{{name}}\""]
                },
                "environment": "test"
            }
        })
    }

    /// Roles on the server with this fixture's prefix.
    pub async fn users(&self, su: &mut PgConnection) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT rolname::text FROM pg_roles WHERE left(rolname, length($1)) = $1 ORDER BY 1",
        )
        .bind(&self.prefix)
        .fetch_all(&mut *su)
        .await
        .unwrap()
    }

    /// Whether `password` is the admin role's password. Loopback is `trust` on the test
    /// server, so a login proves nothing: the stored SCRAM verifier is checked instead.
    pub async fn admin_password_is(&self, su: &mut PgConnection, password: &str) -> bool {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                .bind(&self.admin)
                .fetch_one(&mut *su)
                .await
                .unwrap();
        stored.is_some_and(|s| scram_matches(&s, password))
    }

    pub async fn drop_all(&self, su: &mut PgConnection) {
        su.execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db).as_str())
            .await
            .unwrap();
        for user in self.users(su).await {
            su.execute(format!("DROP ROLE IF EXISTS \"{user}\"").as_str())
                .await
                .unwrap();
        }
        su.execute(format!("DROP ROLE IF EXISTS {}", self.admin).as_str())
            .await
            .unwrap();
    }
}

/// A fresh broker of `bin` with identity `identity` (owned by `owner`) and the fixture's
/// target `pg` ([`PgFixture::target`]); also the target as the broker answered its creation.
pub async fn broker_with_target(
    bin: impl AsRef<Path>,
    f: &PgFixture,
    identity: &str,
    owner: &str,
) -> (Broker, Value) {
    let broker = Broker::start(bin);
    broker.add_identity(identity, owner).await;
    let (status, target) = broker.post("/v1/targets", f.target("pg")).await;
    assert_eq!(status, 201, "{target}");
    (broker, target)
}

/// A broker with identity `etl` and this fixture's target `pg`, stopped and started again
/// on the same data directory to abort (`MAYFLY_CRASH_AT`) at `point`: the set-up of
/// every crash test. Returns the crashing broker (its `dir` is the data directory) and the
/// operator token.
pub async fn broker_crashing_at(
    bin: impl AsRef<Path>,
    f: &PgFixture,
    point: &str,
) -> (Broker, String) {
    let bin = bin.as_ref();
    let broker = Broker::start(bin);
    broker.add_identity("etl", "team-data").await;
    assert_eq!(broker.post("/v1/targets", f.target("pg")).await.0, 201);
    let (dir, token) = broker.kill();
    let crashing = Broker::start_in(
        bin,
        &dir,
        Options {
            token: Some(token.clone()),
            env: vec![("MAYFLY_CRASH_AT", point.to_string())],
            ..Options::default()
        },
    );
    (crashing, token)
}

/// Whether `password` matches a PostgreSQL `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`
/// verifier (loopback is `trust` on the test server, so a login proves nothing).
pub fn scram_matches(stored: &str, password: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(rest) = stored.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((iter_salt, keys)) = rest.split_once('$') else {
        return false;
    };
    let (iter, salt) = iter_salt.split_once(':').unwrap();
    let (stored_key, _server_key) = keys.split_once(':').unwrap();
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
