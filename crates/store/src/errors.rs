//! Error helpers shared by every backend (nothing here depends on the database).

use mayfly_core::store::StoreError;
use mayfly_core::CoreError;

pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}

/// A copy of an error for every operation of a failed batch (`StoreError` is not `Clone`).
pub(crate) fn replicate(err: &StoreError) -> StoreError {
    match err {
        StoreError::NotFound { what, id } => StoreError::NotFound {
            what,
            id: id.clone(),
        },
        StoreError::Conflict { what, id } => StoreError::Conflict {
            what,
            id: id.clone(),
        },
        StoreError::Rejected(c) => StoreError::Rejected(match c {
            CoreError::Invalid { field, reason } => CoreError::Invalid {
                field: field.clone(),
                reason: reason.clone(),
            },
            CoreError::IllegalGrantTransition { from, to } => CoreError::IllegalGrantTransition {
                from: *from,
                to: *to,
            },
            CoreError::IllegalLeaseTransition { from, to } => CoreError::IllegalLeaseTransition {
                from: *from,
                to: *to,
            },
        }),
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        StoreError::Backend(m) => StoreError::Backend(m.clone()),
    }
}
