//! Suites that need a real service (PostgreSQL, MariaDB, a server binary on disk) skip
//! when it is missing on a developer's machine, and fail when `MAYFLY_REQUIRE_SERVICES=1`
//! (CI), so a broken service cannot turn a CI run green by skipping.

use std::fmt::Display;
use std::future::Future;
use std::io::Write;
use std::time::Duration;

/// The variable that turns a skip into a failure.
pub const REQUIRE_VAR: &str = "MAYFLY_REQUIRE_SERVICES";

/// How long a connection attempt may take before the service counts as unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the real services must be there (`MAYFLY_REQUIRE_SERVICES=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// Reports that `suite` cannot run because `service` is unavailable (`why`): panics when
/// services are required, else prints one `SKIPPED:` line naming the suite, the service
/// and the reason. The caller then returns without running the test.
pub fn unavailable(suite: &str, service: &str, why: &str) {
    if required() {
        panic!("{suite}: needs {service}, which is unavailable ({why}); {REQUIRE_VAR}=1 forbids skipping");
    }
    crate::at_exit::record_skip(suite, service, why);
    // Written to the process's stderr directly, not with `eprintln!`: the test harness
    // captures the macros' output of passing tests, and a skip must be seen. The summary
    // after the suite's result line repeats it where a reader looks.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {suite}: needs {service}, which is unavailable ({why}); set {REQUIRE_VAR}=1 to fail instead"
    );
}

/// Connects to `service` with `connect` (within [`CONNECT_TIMEOUT`]), or reports it
/// [`unavailable`] for `suite` and returns `None`:
///
/// ```text
/// let Some(mut su) = connect_or_skip("store migrate", "PostgreSQL at 127.0.0.1:5432",
///     PgConnection::connect(URL)).await else { return };
/// ```
pub async fn connect_or_skip<T, E: Display>(
    suite: &str,
    service: &str,
    connect: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    let why = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(connection)) => return Some(connection),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
    };
    unavailable(suite, service, &why);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on port 1: a skip (`None`, with the line) normally, a failure
    /// when services are required. Either way the answer is decided, never a hang.
    #[tokio::test]
    async fn an_unavailable_service_skips_or_fails_as_required() {
        let attempt = tokio::spawn(connect_or_skip(
            "testkit self-test",
            "a server at 127.0.0.1:1",
            tokio::net::TcpStream::connect("127.0.0.1:1"),
        ))
        .await;
        if required() {
            assert!(attempt.is_err_and(|e| e.is_panic()));
        } else {
            assert!(attempt.unwrap().is_none());
        }
    }
}
