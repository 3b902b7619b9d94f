//! The head of the audit chain inside a write batch, and sealing events onto it.
//!
//! A batch reads the committed head when it begins (under the backend's write lock), seals
//! every event its operations append in commit order, and writes the rows and the new head
//! before it commits. Each operation's rows can be taken back (savepoint rollback) by
//! restoring the [`Mark`] taken before it.

use mayfly_core::audit::{hash_entry, AuditDraft, AuditEvent};
use mayfly_core::store::StoreError;
use mayfly_core::{to_unix_ms, OffsetDateTime};
use tokio::sync::mpsc;

use super::Backend;

/// From this many events on, sealing runs on a blocking thread alongside database work:
/// below it a thread hand-off costs more than it saves.
const OFFLOAD_MIN: usize = 512;

/// The last committed (or, inside a batch, sealed) entry of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

/// An audit row sealed in memory, not yet inserted; columns as the `audit` table has them.
#[derive(Debug)]
pub(crate) struct SealedRow {
    pub(crate) seq: i64,
    pub(crate) at_ms: i64,
    pub(crate) kind: &'static str,
    pub(crate) identity: Option<String>,
    pub(crate) task: Option<String>,
    pub(crate) grant_id: Option<String>,
    pub(crate) body: String,
    pub(crate) hash: String,
}

/// Places `draft` after `head` and advances `head`.
///
/// Equivalent to [`AuditDraft::seal`] (a test holds them equal), but keeps the canonical
/// body it hashes: `seal` would compute it for the hash and we would compute it again to
/// store it, and serialising is most of the cost of a bulk revocation.
pub(crate) fn seal_next(head: &mut Head, draft: AuditDraft, at: OffsetDateTime) -> SealedRow {
    let draft = draft.bounded();
    let seq = head.seq + 1;
    let event = AuditEvent {
        seq,
        at,
        kind: draft.kind,
        actor: draft.actor,
        identity: draft.identity,
        owner: draft.owner,
        target: draft.target,
        task: draft.task,
        grant_id: draft.grant_id,
        lease_id: draft.lease_id,
        detail: draft.detail,
        prev_hash: std::mem::take(&mut head.hash),
        hash: String::new(),
    };
    let body = event.canonical_body();
    let hash = hash_entry(&body);
    head.seq = seq;
    head.hash = hash.clone();
    SealedRow {
        seq: i64::try_from(seq).unwrap_or(i64::MAX),
        at_ms: to_unix_ms(at),
        kind: event.kind.as_str(),
        identity: event.identity,
        task: event.task,
        grant_id: event.grant_id.map(|g| g.to_string()),
        body,
        hash,
    }
}

/// The chain head plus the rows sealed in the current batch but not yet inserted.
pub(crate) struct Chain {
    pub(crate) head: Head,
    pending: Vec<SealedRow>,
}

/// Where the chain stood before an operation, to undo its events with its savepoint.
pub(crate) struct Mark {
    head: Head,
    pending: usize,
}

/// Events being sealed on a blocking thread while the operation updates the database;
/// [`Chain::finish`] inserts them. Dropping it abandons them (the sealer stops).
pub(crate) enum Sealing<R> {
    Inline,
    Offloaded {
        rows: mpsc::UnboundedReceiver<Result<R, StoreError>>,
        sealer: tokio::task::JoinHandle<Head>,
    },
}

impl Chain {
    pub(crate) fn new(head: Head) -> Chain {
        Chain {
            head,
            pending: Vec::new(),
        }
    }

    pub(crate) fn append(&mut self, draft: AuditDraft, at: OffsetDateTime) {
        let row = seal_next(&mut self.head, draft, at);
        self.pending.push(row);
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            head: self.head.clone(),
            pending: self.pending.len(),
        }
    }

    pub(crate) fn reset(&mut self, mark: Mark) {
        self.head = mark.head;
        self.pending.truncate(mark.pending);
    }

    /// Starts sealing many events. Large sets are sealed on a blocking thread, overlapping
    /// the CPU-bound hashing with the database work the caller does before [`Chain::finish`];
    /// each chunk is encoded for the backend's insert there too. Small sets are sealed now.
    pub(crate) fn start<B: Backend>(
        &mut self,
        drafts: Vec<AuditDraft>,
        at: OffsetDateTime,
    ) -> Sealing<B::AuditRows> {
        if drafts.len() < OFFLOAD_MIN {
            for d in drafts {
                self.append(d, at);
            }
            return Sealing::Inline;
        }
        // Unbounded: the sealer must never wait for the inserter, which is busy with the
        // caller's updates until they finish. The drafts are in memory already; the queued
        // rows are the same data in their final form.
        let (tx, rows) = mpsc::unbounded_channel();
        let mut head = self.head.clone();
        let sealer = tokio::task::spawn_blocking(move || {
            let mut chunk = Vec::with_capacity(B::AUDIT_CHUNK);
            let mut drafts = drafts.into_iter().peekable();
            while let Some(d) = drafts.next() {
                chunk.push(seal_next(&mut head, d, at));
                if chunk.len() == B::AUDIT_CHUNK || drafts.peek().is_none() {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(B::AUDIT_CHUNK));
                    let encoded = B::encode_audit(full);
                    // The receiver is gone only if the operation already failed.
                    if tx.send(encoded).is_err() {
                        break;
                    }
                }
            }
            head
        });
        Sealing::Offloaded { rows, sealer }
    }

    /// Inserts what [`Chain::start`] sealed off-thread and moves the head past it. Only now
    /// does the head move: on an error before this, it stays where the savepoint rollback
    /// puts the rows back to.
    pub(crate) async fn finish<B: Backend>(
        &mut self,
        backend: &mut B,
        sealing: Sealing<B::AuditRows>,
    ) -> Result<(), StoreError> {
        let Sealing::Offloaded { mut rows, sealer } = sealing else {
            return Ok(());
        };
        while let Some(encoded) = rows.recv().await {
            backend.insert_audit(encoded?).await?;
        }
        self.head = sealer
            .await
            .map_err(|e| StoreError::Backend(format!("the audit sealing task failed: {e}")))?;
        Ok(())
    }

    /// Inserts the batch's remaining sealed rows and records the new head, inside the
    /// batch's transaction. Bulk operations inserted their own rows already; the head still
    /// needs writing for them, hence the comparison rather than a check of `pending`.
    pub(crate) async fn flush<B: Backend>(
        &mut self,
        backend: &mut B,
        batch_head: &Head,
    ) -> Result<(), StoreError> {
        let mut pending = std::mem::take(&mut self.pending);
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(B::AUDIT_CHUNK));
            backend.insert_audit(B::encode_audit(pending)?).await?;
            pending = rest;
        }
        if self.head != *batch_head {
            backend.set_audit_head(&self.head).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use mayfly_core::audit::AuditKind;
    use mayfly_core::Uuid;

    use super::*;

    /// `seal_next` must produce exactly what core's `AuditDraft::seal` does, or the chain
    /// the store writes would not verify.
    #[test]
    fn seal_next_matches_core_seal() {
        let at = mayfly_core::now();
        let mut head = Head {
            seq: 41,
            hash: "ab".repeat(32),
        };
        let mut draft = AuditDraft::new(AuditKind::LeaseRevoked, "operator")
            .detail(serde_json::json!({"reason": "admin", "z": [1, {"b": 2, "a": 1}]}));
        draft.identity = Some("agent".into());
        draft.task = Some("t".into());
        draft.grant_id = Some(Uuid::new_v4());
        draft.lease_id = Some(Uuid::new_v4());
        let expected = draft.clone().seal(42, at, &head.hash);
        let row = seal_next(&mut head, draft, at);
        assert_eq!(row.seq, 42);
        assert_eq!(row.hash, expected.hash);
        assert_eq!(row.body, expected.canonical_body());
        assert_eq!(row.kind, "lease.revoked");
        assert_eq!(row.grant_id, expected.grant_id.map(|g| g.to_string()));
        assert_eq!(
            head,
            Head {
                seq: 42,
                hash: expected.hash
            }
        );
    }

    #[test]
    fn reset_takes_back_an_operations_events() {
        let mut chain = Chain::new(Head {
            seq: 7,
            hash: "cd".repeat(32),
        });
        chain.append(
            AuditDraft::new(AuditKind::AuthFailed, "a"),
            mayfly_core::now(),
        );
        let mark = chain.mark();
        chain.append(
            AuditDraft::new(AuditKind::AuthFailed, "b"),
            mayfly_core::now(),
        );
        chain.append(
            AuditDraft::new(AuditKind::AuthFailed, "c"),
            mayfly_core::now(),
        );
        assert_eq!(chain.head.seq, 10);
        chain.reset(mark);
        assert_eq!(chain.head.seq, 8);
        assert_eq!(chain.pending.len(), 1);
    }
}
