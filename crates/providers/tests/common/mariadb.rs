//! MariaDB for the shared suite: 127.0.0.1:3306, `root` with an empty password.

use std::sync::Arc;

use mayfly_core::provider::Provider;
use mayfly_core::secret::SecretString;
use mayfly_providers::MariaDbProvider;
use mayfly_testkit::mariadb::superuser;
use sqlx::mysql::MySqlConnection;
use sqlx::{Connection, Executor};
use time::OffsetDateTime;

use mayfly_providers::conformance::{target, Engine, Fixture, Session};

pub struct Maria;

struct MariaSession(MySqlConnection);

#[async_trait::async_trait]
impl Session for MariaSession {
    async fn select(&mut self) -> Result<i64, String> {
        sqlx::query_scalar("SELECT count(*) FROM items")
            .fetch_one(&mut self.0)
            .await
            .map_err(|e| e.to_string())
    }
    async fn insert(&mut self) -> Result<(), String> {
        sqlx::query("INSERT INTO items (id, name) VALUES (FLOOR(RAND() * 1000000000), 'x')")
            .execute(&mut self.0)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl Engine for Maria {
    const NAME: &'static str = "mariadb";
    const ADDR: &'static str = mayfly_testkit::mariadb::ADDR;
    const HAS_EXPIRY: bool = false;

    fn provider() -> Arc<dyn Provider> {
        Arc::new(MariaDbProvider::new())
    }

    async fn setup(suffix: &str) -> Fixture {
        let prefix = format!("mft{suffix}_");
        let admin_user = format!("{prefix}admin");
        let admin_password = format!("Adm{}", uuid::Uuid::new_v4().simple());
        let database = format!("mayfly_test_{suffix}");
        let mut su = superuser().await;
        for stmt in [
            format!("CREATE DATABASE `{database}`"),
            format!("CREATE TABLE `{database}`.items (id BIGINT PRIMARY KEY, name VARCHAR(50))"),
            format!("INSERT INTO `{database}`.items VALUES (0, 'seed')"),
            format!("CREATE USER '{admin_user}'@'%' IDENTIFIED BY '{admin_password}'"),
            // The minimum the provider needs (see the mariadb module docs).
            format!("GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '{admin_user}'@'%'"),
            format!("GRANT SELECT ON mysql.user TO '{admin_user}'@'%'"),
            format!("GRANT ALL ON `{database}`.* TO '{admin_user}'@'%' WITH GRANT OPTION"),
        ] {
            su.execute(stmt.as_str()).await.unwrap();
        }
        let settings = serde_json::json!({
            "username_template": format!("{prefix}{{{{identity}}}}_{{{{rand}}}}"),
            "grants": {
                "read": [format!("GRANT SELECT ON `{database}`.* TO '{{{{name}}}}'@'%'")],
                "write": [format!("GRANT SELECT, INSERT ON `{database}`.* TO '{{{{name}}}}'@'%'")]
            },
            "timeout_seconds": 20
        });
        Fixture {
            suffix: suffix.into(),
            admin: SecretString::new(format!(
                "mysql://{admin_user}:{admin_password}@127.0.0.1:3306/{database}"
            )),
            database,
            admin_user,
            admin_password,
            prefix,
            target: target("mariadb", &format!("maria-{suffix}"), settings),
        }
    }

    async fn cleanup(fx: &Fixture) {
        let mut su = superuser().await;
        let _ = su
            .execute(format!("DROP DATABASE IF EXISTS `{}`", fx.database).as_str())
            .await;
        let accounts: Vec<(String, String)> = sqlx::query_as(
            "SELECT CONVERT(User USING utf8mb4), CONVERT(Host USING utf8mb4) FROM mysql.user \
             WHERE LEFT(User, CHAR_LENGTH(?)) = ?",
        )
        .bind(&fx.prefix)
        .bind(&fx.prefix)
        .fetch_all(&mut su)
        .await
        .unwrap_or_default();
        for (u, h) in accounts {
            if let Err(e) = su
                .execute(format!("DROP USER IF EXISTS '{u}'@'{h}'").as_str())
                .await
            {
                eprintln!("cleanup: cannot drop user {u}@{h}: {e}");
            }
        }
    }

    async fn connect(dsn: &str) -> Result<Box<dyn Session>, String> {
        MySqlConnection::connect(dsn)
            .await
            .map(|c| Box::new(MariaSession(c)) as Box<dyn Session>)
            .map_err(|e| e.to_string())
    }

    async fn user_exists(_fx: &Fixture, name: &str) -> bool {
        let mut su = superuser().await;
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM mysql.user WHERE User = ?")
            .bind(name)
            .fetch_one(&mut su)
            .await
            .unwrap()
            > 0
    }

    async fn valid_until(_fx: &Fixture, _name: &str) -> Option<OffsetDateTime> {
        None
    }

    async fn password_works(fx: &Fixture, user: &str, password: &str) -> bool {
        MySqlConnection::connect(&format!(
            "mysql://{user}:{password}@127.0.0.1:3306/{}",
            fx.database
        ))
        .await
        .is_ok()
    }

    fn rejected_admin_url(fx: &Fixture, password: &str) -> String {
        format!(
            "mysql://{}:{password}@127.0.0.1:3306/{}",
            fx.admin_user, fx.database
        )
    }

    fn down_admin_url(fx: &Fixture, password: &str) -> String {
        format!(
            "mysql://{}:{password}@127.0.0.1:1/{}",
            fx.admin_user, fx.database
        )
    }

    fn creation_echoing_password() -> Option<&'static str> {
        // `{{password}}` is the hash; a second `PASSWORD` clause is a syntax error, and
        // MariaDB answers `... near 'PASSWORD '<hash>''`.
        Some("CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}' PASSWORD '{{password}}'")
    }

    // MariaDB 10.11 has no per-user comment: the store's record is the only proof.
    const HAS_MARKER: bool = false;

    async fn create_by_hand(_fx: &Fixture, name: &str, admin: bool) {
        let mut su = superuser().await;
        su.execute(format!("CREATE USER '{name}'@'%' IDENTIFIED BY 'handmade'").as_str())
            .await
            .unwrap();
        if admin {
            su.execute(format!("GRANT CREATE USER ON *.* TO '{name}'@'%'").as_str())
                .await
                .unwrap();
        }
    }

    async fn server_hashes_alike(password: &str) -> bool {
        let server: String = sqlx::query_scalar("SELECT CAST(PASSWORD(?) AS CHAR)")
            .bind(password)
            .fetch_one(&mut superuser().await)
            .await
            .unwrap();
        let ours = mayfly_providers::verifier::mysql_native(&SecretString::new(password.into()));
        ours.expose() == server
    }
}
