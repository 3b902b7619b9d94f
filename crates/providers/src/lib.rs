//! Credential providers for external systems: real, temporary database users.
//!
//! - [`postgres`]: the `postgres` kind, one PostgreSQL role per lease.
//! - [`mariadb`]: the `mariadb` kind, one MariaDB user per lease.
//!
//! What the two share (target settings, statement templates, usernames, passwords) lives
//! in [`common`]; admin connections and secret-free error mapping in [`conn`]; the
//! password verifiers sent in place of passwords in [`verifier`].
//! The server registers [`builtin`].

use std::sync::Arc;

use mayfly_core::provider::Provider;

pub mod common;
pub mod conn;
pub mod mariadb;
pub mod postgres;
pub mod verifier;

pub use mariadb::MariaDbProvider;
pub use postgres::PostgresProvider;

/// The database providers, ready to register with the server.
pub fn builtin() -> Vec<Arc<dyn Provider>> {
    vec![
        Arc::new(PostgresProvider::new()),
        Arc::new(MariaDbProvider::new()),
    ]
}
