//! Errors of the domain layer.

use crate::model::{GrantState, LeaseState};

/// A rule of the domain was broken. Every variant is the caller's fault (bad input or an
/// illegal transition), never an internal failure.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    /// A field failed validation; `field` names it as the API spells it.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// A grant cannot move from `from` to `to`.
    #[error("grant cannot go from {from} to {to}")]
    IllegalGrantTransition { from: GrantState, to: GrantState },
    /// A lease cannot move from `from` to `to`.
    #[error("lease cannot go from {from} to {to}")]
    IllegalLeaseTransition { from: LeaseState, to: LeaseState },
}

impl CoreError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CoreError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
