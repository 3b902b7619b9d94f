//! Mayfly's storage backends.
//!
//! This crate owns persistence: the SQLite backend (the embedded default), its schema
//! migrations, and the backend-neutral conformance suite every [`Store`] implementation
//! must pass. The contract itself — what each operation means, which errors it returns —
//! lives in [`mayfly_core::store`]; nothing here adds behaviour the trait does not promise.
//!
//! Use [`open`] to get a store from a configuration URL.

use std::sync::Arc;

use mayfly_core::store::{Store, StoreError};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod sqlite;

pub use sqlite::{Durability, SqliteStore, UnknownDurability};

/// Opens the store a URL names: `sqlite://…`, `sqlite:…`, `sqlite::memory:` or a bare
/// file path for SQLite; `postgres://` is reserved for the PostgreSQL backend.
pub async fn open(url: &str, durability: Durability) -> Result<Arc<dyn Store>, StoreError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres" | "postgresql") => Err(StoreError::Backend(
            "PostgreSQL backend not built yet; use a sqlite:// URL".into(),
        )),
        None | Some("sqlite") => Ok(Arc::new(SqliteStore::open(url, durability).await?)),
        // Only the scheme is echoed: the rest of a URL may carry a password.
        Some(other) => Err(StoreError::Backend(format!(
            "unsupported store URL scheme {other:?}; use sqlite:// (or postgres:// later)"
        ))),
    }
}
