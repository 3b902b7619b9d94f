//! Error helpers shared by every backend (nothing here depends on the database).

use mayfly_core::store::StoreError;

pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}
