//! Real PostgreSQL and MariaDB: the provider conformance suite, one call per engine.
//!
//! Needs PostgreSQL on 127.0.0.1:5432 (user `postgres`, trust) and MariaDB on
//! 127.0.0.1:3306 (`root`, empty password). A service that is down is skipped with a
//! `SKIPPED:` line on stderr, or fails the run when `MAYFLY_REQUIRE_SERVICES=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod postgres {
    mayfly_providers::provider_suite!(crate::common::pg::Pg);
}

mod mariadb {
    mayfly_providers::provider_suite!(crate::common::mariadb::Maria);
}
