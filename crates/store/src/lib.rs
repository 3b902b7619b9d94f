//! Mayfly's storage backends.
//!
//! This crate owns persistence: the SQLite backend (the embedded default), the PostgreSQL
//! backend (many replicas on one database), their schema migrations, copying a deployment
//! from one backend to another ([`migrate`]), and the backend-neutral conformance suite
//! every [`Store`] implementation must pass. The contract itself — what each operation
//! means, which errors it returns — lives in [`mayfly_core::store`]; nothing here adds
//! behaviour the trait does not promise.
//!
//! Use [`open`] to get a store from a configuration URL.

use std::sync::Arc;

use mayfly_core::store::{Store, StoreError};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod engine;
mod errors;
mod events;
pub mod migrate;
mod postgres;
mod rows;
mod sqlite;

pub use engine::{EngineStore, Reads};
pub use migrate::{copy_store, CopyReport};
pub use postgres::{PgStore, DEFAULT_POOL_SIZE};
pub use sqlite::{Durability, SqliteReads, SqliteStore, UnknownDurability};

/// The backend a store URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Which backend `url` names: `postgres://` / `postgresql://` for PostgreSQL; `sqlite://…`,
/// `sqlite:…`, `sqlite::memory:` or a bare file path for SQLite. The error names only the
/// scheme: the rest of a URL may carry a password.
pub fn backend_of(url: &str) -> Result<Backend, StoreError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Ok(Backend::Postgres),
        None | Some("sqlite") => Ok(Backend::Sqlite),
        Some(other) => Err(StoreError::Backend(format!(
            "unsupported store URL scheme {other:?}; use sqlite:// or postgres://"
        ))),
    }
}

/// Opens the store a URL names (see [`backend_of`]).
///
/// `durability` applies to SQLite only: PostgreSQL acknowledges a commit once the server
/// has made it durable by its own configuration (`synchronous_commit`), so there is
/// nothing to choose on the Mayfly side.
pub async fn open(url: &str, durability: Durability) -> Result<Arc<dyn Store>, StoreError> {
    match backend_of(url)? {
        Backend::Postgres => Ok(Arc::new(PgStore::open(url).await?)),
        Backend::Sqlite => Ok(Arc::new(SqliteStore::open(url, durability).await?)),
    }
}
