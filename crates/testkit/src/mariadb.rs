//! The local MariaDB (127.0.0.1:3306, `root` with an empty password): its superuser
//! connection.

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
