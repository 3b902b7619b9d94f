//! Test support shared by Mayfly's suites (a dev-dependency only):
//!
//! - [`broker`]: the real `mayfly` binary started on an ephemeral port with a data
//!   directory of its own, and an HTTP client for it;
//! - `pg`, `mariadb` (features `postgres`, `mariadb`): the local database servers'
//!   superuser connections, a PostgreSQL target fixture and its SCRAM check;
//! - [`amqp`]: a minimal AMQP 0-9-1 client (login, passive declare, confirmed publish)
//!   for the RabbitMQ provider's tests;
//! - [`issuer`]: a test OIDC issuer whose JWTs the broker can be told to trust;
//! - [`services`]: skip a suite when a service it needs is down, or fail it when
//!   `MAYFLY_REQUIRE_SERVICES=1` (CI);
//! - [`eventually`]: poll until a condition holds;
//! - [`scratch_dir`]: a directory for one test's files, removed when the process ends (with
//!   the summary of skipped suites, printed after the harness's result line).
//!
//! It depends on no Mayfly crate, so every crate's tests (the store's too) can use it.

// Test support: a failed set-up is a failed test, so panicking is the right answer here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod amqp;
#[allow(unsafe_code)]
mod at_exit;
pub mod broker;
pub mod issuer;
#[cfg(feature = "mariadb")]
pub mod mariadb;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod poll;
pub mod services;

pub use at_exit::scratch_dir;
pub use poll::{eventually, eventually_blocking, eventually_every, Settled};

/// A short random lowercase suffix for per-test names (databases, roles, prefixes), so
/// tests run in parallel without seeing each other's objects.
pub fn suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}
