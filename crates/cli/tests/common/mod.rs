//! The cli suites' link to the shared test support (`mayfly-testkit`): the binary under
//! test, which only a crate's own integration tests know, and the fixtures that start it.
#![allow(dead_code, unused_imports)]

pub use mayfly_testkit::broker::{master_key, store_url, Broker, Options};
pub use mayfly_testkit::{eventually, eventually_blocking, eventually_every, issuer, services};
pub use mayfly_testkit::{scratch_dir, suffix};

/// The `mayfly` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_mayfly");

/// A replica of [`BIN`] on the shared store `url` (see [`mayfly_testkit::broker::start_replica`]).
pub fn start_replica(url: &str, key: &str, token: Option<String>) -> Broker {
    mayfly_testkit::broker::start_replica(BIN, url, key, token)
}

pub mod pg {
    pub use mayfly_testkit::pg::{scram_matches, superuser_or_skip, PgFixture};

    /// [`mayfly_testkit::pg::broker_with_target`] for [`super::BIN`].
    pub async fn broker_with_target(
        f: &PgFixture,
        identity: &str,
        owner: &str,
    ) -> (super::Broker, serde_json::Value) {
        mayfly_testkit::pg::broker_with_target(super::BIN, f, identity, owner).await
    }

    /// [`mayfly_testkit::pg::broker_crashing_at`] for [`super::BIN`].
    pub async fn broker_crashing_at(f: &PgFixture, point: &str) -> (super::Broker, String) {
        mayfly_testkit::pg::broker_crashing_at(super::BIN, f, point).await
    }
}

pub mod maria {
    pub use mayfly_testkit::mariadb::{superuser, superuser_or_skip, MariaFixture};
}

pub mod webhook;
pub mod x509;
