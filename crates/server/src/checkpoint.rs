//! Signed checkpoints of the audit chain (see `mayfly_core::checkpoint`): taken at
//! `[audit] checkpoint_interval` and on demand (`POST /v1/audit/checkpoint`), and kept in
//! the store's `audit_checkpoints`.
//!
//! A checkpoint is signed only after the chain has been walked and found intact, so the
//! broker never vouches for a head it cannot itself verify: a checkpoint taken after a
//! rewrite would otherwise launder it. Walking costs about a second per million entries,
//! which an interval of minutes affords.

use std::sync::Arc;

use mayfly_core::checkpoint::Checkpoint;
use mayfly_core::store::{Store, StoreError};

use crate::keys::AuditKey;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The chain does not verify: nothing is signed (the break is in the report).
    #[error("the audit chain is broken ({0}); no checkpoint is signed over it")]
    Broken(String),
    /// The chain has no entry yet.
    #[error("the audit chain is empty")]
    Empty,
    #[error("cannot encode checkpoint: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Takes checkpoints and keeps them in the store (the signature, not the store, is what
/// an operator trusts: a kept checkpoint cannot be altered without the audit key).
pub struct Checkpoints {
    store: Arc<dyn Store>,
    key: AuditKey,
}

impl Checkpoints {
    pub fn new(store: Arc<dyn Store>, key: AuditKey) -> Checkpoints {
        Checkpoints { store, key }
    }

    /// The public audit keys, as a JWKS (`use: audit`).
    pub fn jwks(&self) -> serde_json::Value {
        self.key.jwks()
    }

    /// Verifies the chain and signs its head.
    pub async fn take(&self) -> Result<Checkpoint, CheckpointError> {
        let report = self.store.verify_audit().await?;
        if let Some(b) = report.first_break {
            return Err(CheckpointError::Broken(b.to_string()));
        }
        let (Some(seq), Some(hash)) = (report.last_seq, report.last_hash) else {
            return Err(CheckpointError::Empty);
        };
        let checkpoint = self.key.sign_checkpoint(seq, &hash, mayfly_core::now())?;
        self.store.add_audit_checkpoint(&checkpoint).await?;
        Ok(checkpoint)
    }

    /// The latest kept checkpoint (any replica's), or a fresh one when none is kept yet.
    pub async fn latest(&self) -> Result<Checkpoint, CheckpointError> {
        match self.store.latest_audit_checkpoint().await? {
            Some(c) => Ok(c),
            None => self.take().await,
        }
    }
}

/// Takes a checkpoint every `every`; a failure is logged and retried at the next tick.
pub async fn run(checkpoints: Arc<Checkpoints>, every: std::time::Duration) {
    loop {
        tokio::time::sleep(every).await;
        match checkpoints.take().await {
            Ok(c) => tracing::debug!(seq = c.seq, kid = %c.kid, "audit checkpoint signed"),
            Err(CheckpointError::Empty) => {}
            Err(e) => tracing::warn!(error = %e, "cannot take audit checkpoint"),
        }
    }
}
