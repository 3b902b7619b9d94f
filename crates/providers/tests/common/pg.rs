//! PostgreSQL for the shared suite: 127.0.0.1:5432, superuser `postgres` over trust auth.

use std::sync::Arc;

use base64::Engine as _;
use mayfly_core::provider::Provider;
use mayfly_core::secret::SecretString;
use mayfly_providers::PostgresProvider;
use mayfly_testkit::pg::{scram_matches, superuser};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};
use time::OffsetDateTime;

use mayfly_providers::conformance::{target, Engine, Fixture, Session};

pub struct Pg;

struct PgSession(PgConnection);

#[async_trait::async_trait]
impl Session for PgSession {
    async fn select(&mut self) -> Result<i64, String> {
        sqlx::query_scalar("SELECT count(*) FROM app.items")
            .fetch_one(&mut self.0)
            .await
            .map_err(|e| e.to_string())
    }
    async fn insert(&mut self) -> Result<(), String> {
        sqlx::query("INSERT INTO app.items (id, name) VALUES ((random() * 1000000000)::int, 'x')")
            .execute(&mut self.0)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Engine for Pg {
    const NAME: &'static str = "postgres";
    const ADDR: &'static str = mayfly_testkit::pg::ADDR;
    const HAS_EXPIRY: bool = true;

    fn provider() -> Arc<dyn Provider> {
        Arc::new(PostgresProvider::new())
    }

    async fn setup(suffix: &str) -> Fixture {
        let prefix = format!("mft{suffix}_");
        let admin_user = format!("{prefix}admin");
        let admin_password = format!("Adm{}", uuid::Uuid::new_v4().simple());
        let database = format!("mayfly_test_{suffix}");
        let mut su = superuser().await;
        // Least privilege: LOGIN CREATEROLE, owner of its database; no superuser.
        su.execute(
            format!("CREATE ROLE \"{admin_user}\" LOGIN CREATEROLE PASSWORD '{admin_password}'")
                .as_str(),
        )
        .await
        .unwrap();
        su.execute(format!("CREATE DATABASE \"{database}\" OWNER \"{admin_user}\"").as_str())
            .await
            .unwrap();
        let admin_url =
            format!("postgres://{admin_user}:{admin_password}@127.0.0.1:5432/{database}");
        let mut admin = PgConnection::connect(&admin_url).await.unwrap();
        admin
            .execute(
                "CREATE SCHEMA app; \
                 CREATE TABLE app.items (id int PRIMARY KEY, name text); \
                 INSERT INTO app.items VALUES (0, 'seed');",
            )
            .await
            .unwrap();
        admin.close().await.unwrap();
        let settings = serde_json::json!({
            "username_template": format!("{prefix}{{{{identity}}}}_{{{{rand}}}}"),
            "grants": {
                "read": [
                    "GRANT USAGE ON SCHEMA app TO \"{{name}}\"",
                    "GRANT SELECT ON ALL TABLES IN SCHEMA app TO \"{{name}}\""
                ],
                "write": [
                    "GRANT USAGE ON SCHEMA app TO \"{{name}}\"",
                    "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA app TO \"{{name}}\""
                ]
            },
            "timeout_seconds": 20
        });
        Fixture {
            suffix: suffix.into(),
            database,
            admin_user,
            admin_password,
            prefix,
            target: target("postgres", &format!("pg-{suffix}"), settings),
            admin: SecretString::new(admin_url),
        }
    }

    async fn cleanup(fx: &Fixture) {
        let mut su = superuser().await;
        let _ = su
            .execute(format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", fx.database).as_str())
            .await;
        let roles: Vec<String> =
            sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)")
                .bind(&fx.prefix)
                .fetch_all(&mut su)
                .await
                .unwrap_or_default();
        for r in roles {
            let _ = su
                .execute(
                    format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{r}'"
                    )
                    .as_str(),
                )
                .await;
            if let Err(e) = su
                .execute(format!("DROP ROLE IF EXISTS \"{r}\"").as_str())
                .await
            {
                eprintln!("cleanup: cannot drop role {r}: {e}");
            }
        }
    }

    async fn connect(dsn: &str) -> Result<Box<dyn Session>, String> {
        PgConnection::connect(dsn)
            .await
            .map(|c| Box::new(PgSession(c)) as Box<dyn Session>)
            .map_err(|e| e.to_string())
    }

    async fn user_exists(_fx: &Fixture, name: &str) -> bool {
        let mut su = superuser().await;
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(name)
            .fetch_one(&mut su)
            .await
            .unwrap()
    }

    async fn valid_until(_fx: &Fixture, name: &str) -> Option<OffsetDateTime> {
        let mut su = superuser().await;
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT extract(epoch FROM rolvaliduntil)::int8 FROM pg_roles WHERE rolname = $1",
        )
        .bind(name)
        .fetch_one(&mut su)
        .await
        .unwrap()
        .map(|s| OffsetDateTime::from_unix_timestamp(s).unwrap())
    }

    async fn password_works(_fx: &Fixture, user: &str, password: &str) -> bool {
        // Loopback is `trust` on the test server, so a login proves nothing: check the
        // password against the stored SCRAM-SHA-256 verifier instead.
        let mut su = superuser().await;
        let row = sqlx::query("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
            .bind(user)
            .fetch_optional(&mut su)
            .await
            .unwrap();
        // A role that no longer exists has no password that works.
        let Some(row) = row else { return false };
        let stored: Option<String> = row.get(0);
        let Some(stored) = stored else { return false };
        scram_matches(&stored, password)
    }

    fn rejected_admin_url(_fx: &Fixture, password: &str) -> String {
        // Trust auth accepts any password for an existing role; a role that does not exist
        // is rejected whatever the method.
        format!("postgres://mayfly_no_such_role:{password}@127.0.0.1:5432/postgres")
    }

    fn down_admin_url(fx: &Fixture, password: &str) -> String {
        format!(
            "postgres://{}:{password}@127.0.0.1:1/{}",
            fx.admin_user, fx.database
        )
    }

    fn creation_echoing_password() -> Option<&'static str> {
        // `{{password}}` is the SCRAM verifier; as a timestamp PostgreSQL answers
        // `invalid input syntax for type timestamp with time zone: "<verifier>"`.
        Some("CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{password}}'")
    }

    const HAS_MARKER: bool = true;

    async fn create_by_hand(_fx: &Fixture, name: &str, admin: bool) {
        let extra = if admin { " CREATEROLE" } else { "" };
        superuser()
            .await
            .execute(format!("CREATE ROLE \"{name}\" LOGIN{extra} PASSWORD 'handmade'").as_str())
            .await
            .unwrap();
    }

    async fn server_hashes_alike(password: &str) -> bool {
        let mut su = superuser().await;
        let role = format!(
            "mft_hash_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        su.execute("SET password_encryption = 'scram-sha-256'")
            .await
            .unwrap();
        // The role's own password goes through PostgreSQL's SCRAM code; test-only text.
        su.execute(format!("CREATE ROLE {role} PASSWORD '{password}'").as_str())
            .await
            .unwrap();
        let stored: String =
            sqlx::query_scalar("SELECT rolpassword FROM pg_authid WHERE rolname = $1")
                .bind(&role)
                .fetch_one(&mut su)
                .await
                .unwrap();
        su.execute(format!("DROP ROLE {role}").as_str())
            .await
            .unwrap();
        let (iterations, salt) = stored
            .strip_prefix("SCRAM-SHA-256$")
            .and_then(|r| r.split('$').next())
            .and_then(|r| r.split_once(':'))
            .unwrap();
        let salt = base64::engine::general_purpose::STANDARD
            .decode(salt)
            .unwrap();
        let ours = mayfly_providers::verifier::scram_sha256_with(
            &SecretString::new(password.into()),
            &salt,
            iterations.parse().unwrap(),
        );
        ours.expose() == stored
    }
}
