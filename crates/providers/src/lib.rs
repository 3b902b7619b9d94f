//! Credential providers for external systems: real, temporary database users.
//!
//! - [`postgres`]: the `postgres` kind, one PostgreSQL role per lease.
//! - [`mariadb`]: the `mariadb` kind, one MariaDB user per lease.
//! - [`redis`]: the `redis` kind, one Redis ACL user per lease.
//! - [`rabbitmq`]: the `rabbitmq` kind, one RabbitMQ user per lease.
//!
//! What any account-per-lease provider needs (the write-ahead plan, usernames, passwords,
//! reconciliation's choice) is in [`plan`], free of SQL; what the two SQL providers share
//! (target settings, statements) in [`common`], with the template syntax in [`template`];
//! admin connections and secret-free error mapping in [`conn`]; the password verifiers
//! sent in place of passwords in [`verifier`].
//! The server registers [`builtin`]. Every provider proves itself with the one-call
//! conformance suite (`conformance` feature, [`provider_suite!`]).

use std::sync::Arc;

use mayfly_core::provider::Provider;

pub mod common;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod conn;
pub mod mariadb;
pub mod plan;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod template;
pub mod verifier;

pub use mariadb::MariaDbProvider;
pub use postgres::PostgresProvider;
pub use rabbitmq::RabbitMqProvider;
pub use redis::RedisProvider;

/// The database and broker providers, ready to register with the server.
pub fn builtin() -> Vec<Arc<dyn Provider>> {
    vec![
        Arc::new(PostgresProvider::new()),
        Arc::new(MariaDbProvider::new()),
        Arc::new(RedisProvider::new()),
        Arc::new(RabbitMqProvider::new()),
    ]
}
