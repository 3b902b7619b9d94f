//! The local MariaDB (127.0.0.1:3306, `root` with an empty password): its superuser
//! connection, and a fixture for a `mariadb` target.

use sqlx::mysql::MySqlConnection;
use sqlx::Connection;

use crate::services::connect_or_skip;

pub const ADDR: &str = "127.0.0.1:3306";
pub const SUPERUSER_URL: &str = "mysql://root@127.0.0.1:3306/";

/// A `root` connection for `suite`, or `None` after the `SKIPPED:` line when MariaDB is
/// unreachable (a failure under `MAYFLY_REQUIRE_SERVICES=1`).
pub async fn superuser_or_skip(suite: &str) -> Option<MySqlConnection> {
    connect_or_skip(
        suite,
        "MariaDB at 127.0.0.1:3306",
        MySqlConnection::connect(SUPERUSER_URL),
    )
    .await
}

/// A `root` connection, for suites that checked the server is there.
pub async fn superuser() -> MySqlConnection {
    MySqlConnection::connect(SUPERUSER_URL)
        .await
        .expect("connect to MariaDB as root")
}

/// A database, table and admin account for one suite's `mariadb` target.
pub struct MariaFixture {
    pub db: String,
    pub admin: String,
    pub password: String,
    /// Every user Mayfly creates here starts with this (the username template's prefix).
    pub prefix: String,
}

impl MariaFixture {
    /// Creates database `mayfly_<tag>_<suffix>` with table `items` (one row) and an admin
    /// account holding the least the provider needs.
    pub async fn create(su: &mut MySqlConnection, tag: &str) -> MariaFixture {
        use sqlx::Executor;
        let s = crate::suffix();
        let f = MariaFixture {
            db: format!("mayfly_{tag}_{s}"),
            admin: format!("m{s}_admin"),
            password: format!("Pw{s}"),
            prefix: format!("m{s}_"),
        };
        for stmt in [
            format!("CREATE DATABASE `{}`", f.db),
            format!("CREATE TABLE `{}`.items (id BIGINT PRIMARY KEY)", f.db),
            format!("INSERT INTO `{}`.items VALUES (1)", f.db),
            format!(
                "CREATE USER '{}'@'%' IDENTIFIED BY '{}'",
                f.admin, f.password
            ),
            format!(
                "GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '{}'@'%'",
                f.admin
            ),
            format!("GRANT SELECT ON mysql.user TO '{}'@'%'", f.admin),
            format!(
                "GRANT ALL ON `{}`.* TO '{}'@'%' WITH GRANT OPTION",
                f.db, f.admin
            ),
        ] {
            su.execute(stmt.as_str()).await.unwrap();
        }
        f
    }

    /// A `mariadb` target named `name` with a `read` action (SELECT on the database), open
    /// to every identity.
    pub fn target(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "kind": "mariadb", "actions": ["read"], "default_ttl": "10m", "max_ttl": "1h", "allow": ["*"],
            "admin": format!("mysql://{}:{}@127.0.0.1:3306/{}", self.admin, self.password, self.db),
            "settings": {
                "username_template": format!("{}{{{{identity}}}}_{{{{rand}}}}", self.prefix),
                "grants": { "read": [format!("GRANT SELECT ON `{}`.* TO '{{{{name}}}}'@'%'", self.db)] }
            }
        })
    }

    /// Accounts on the server with this fixture's prefix, the admin's included.
    pub async fn users(&self, su: &mut MySqlConnection) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT CONVERT(User USING utf8mb4) FROM mysql.user WHERE LEFT(User, CHAR_LENGTH(?)) = ? ORDER BY 1",
        )
        .bind(&self.prefix)
        .bind(&self.prefix)
        .fetch_all(&mut *su)
        .await
        .unwrap()
    }

    pub async fn drop_all(&self, su: &mut MySqlConnection) {
        use sqlx::Executor;
        let _ = su
            .execute(format!("DROP DATABASE IF EXISTS `{}`", self.db).as_str())
            .await;
        for user in self.users(su).await {
            let _ = su
                .execute(format!("DROP USER IF EXISTS '{user}'@'%'").as_str())
                .await;
        }
    }
}
