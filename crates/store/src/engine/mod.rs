//! The store engine: every audited write of every backend, written once.
//!
//! This module owns the write protocol. All mutations of a store go through one writer
//! task ([`writer::Writer`]) that commits in groups: whatever queued while the previous
//! commit was flushing joins the next one, so one commit (one fsync) acknowledges many
//! calls. The engine dispatches each operation ([`ops::Op`]), runs it inside its own
//! savepoint, seals the audit events it appends onto the chain head in commit order
//! ([`chain`]), and inserts the rows and the new head before the commit.
//!
//! A backend supplies only what differs between databases, through [`Backend`]: how a
//! batch begins (SQLite `BEGIN IMMEDIATE`; PostgreSQL a transaction that locks the chain
//! head row, which serialises every replica's audited writes), its SQL text, its type
//! encodings and its connection I/O. Each method is one statement or one short exchange
//! and holds no policy: checks such as "a renewal never passes the cap" live here.
//!
//! **When one operation fails.** An operation's own error (`NotFound`, `Conflict`,
//! `Rejected`, `Corrupt`, `Backend`) rolls back only its savepoint; the rest of its group
//! commits, so one bad call cannot fail its neighbours. `Unavailable` is different: it
//! means the connection itself can no longer be trusted, so the whole batch is rolled
//! back and every caller in it is told `Unavailable` (nothing was written; retry).

mod chain;
pub(crate) mod ops;
mod store;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;
mod writer;

use mayfly_core::model::{
    ApprovalRecord, Grant, GrantState, Identity, Lease, LeaseSelector, LeaseState,
    RevocationReason, Target, Task, TaskState,
};
use mayfly_core::store::{OperatorTokenRecord, SigningKeyRecord, StoreError, WebhookCursor};
use mayfly_core::{OffsetDateTime, Uuid};

#[cfg(test)]
pub(crate) use chain::seal_next;
pub(crate) use chain::{Head, SealedRow};
pub use store::{EngineStore, Reads};
pub(crate) use writer::{spawn, Placement, WriterWatch};

/// A lease row as the engine reads it back: the lease, plus the owner denormalised onto it
/// (audit events name the owner; the domain `Lease` does not carry it).
#[derive(Debug)]
pub(crate) struct LeaseRow {
    pub(crate) lease: Lease,
    pub(crate) owner: String,
}

/// What audit events of a revocation need from each lease it ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) id: Uuid,
    pub(crate) grant_id: Uuid,
    pub(crate) identity: String,
    pub(crate) owner: String,
    pub(crate) target: String,
    pub(crate) task: String,
    /// `Revoking` for an external credential, `Revoked` for a self-contained one.
    pub(crate) state: LeaseState,
}

/// The end state issued grants move to when their leases end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrantEnd {
    Revoked,
    Expired,
}

/// A single grant's move out of `pending` once its write-ahead lease is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrantMove {
    Issued,
    Failed,
}

/// A name whose identity or target record a committed batch changed (for caches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Changed {
    Identity(String),
    Target(String),
}

/// One database's side of the write protocol. Methods run inside the batch transaction
/// [`Backend::begin`] opened; they map database errors to [`StoreError`] (unique
/// violations to `Conflict` naming the record, lost connections to `Unavailable`).
#[async_trait::async_trait]
pub(crate) trait Backend: Send + 'static {
    /// Audit rows encoded for one insert statement. Built on the sealing thread, so bulk
    /// revocations encode while the database works.
    type AuditRows: Send + 'static;
    /// Most audit rows per insert statement.
    const AUDIT_CHUNK: usize;

    /// Opens the batch transaction, taking whatever serialises audited writes, and returns
    /// the chain head as committed.
    async fn begin(&mut self) -> Result<Head, StoreError>;
    async fn commit(&mut self) -> Result<(), StoreError>;
    /// Best effort: after a failed commit the transaction may already be gone.
    async fn rollback(&mut self);
    async fn savepoint(&mut self) -> Result<(), StoreError>;
    async fn release_savepoint(&mut self) -> Result<(), StoreError>;
    async fn rollback_to_savepoint(&mut self) -> Result<(), StoreError>;
    /// Called after a commit, before any caller hears back.
    fn committed(&mut self, _changed: &[Changed]) {}

    // --- identities and targets ------------------------------------------------------
    async fn insert_identity(&mut self, identity: &Identity) -> Result<(), StoreError>;
    /// Enables the identity; `None` if there is none.
    async fn enable_identity(&mut self, id: &str) -> Result<Option<Identity>, StoreError>;
    /// Disables the identity and returns its owner; `None` if there is none.
    async fn disable_identity(&mut self, id: &str) -> Result<Option<String>, StoreError>;
    /// Which of `ids` are disabled.
    async fn disabled_among(&mut self, ids: &[&str]) -> Result<Vec<String>, StoreError>;
    async fn insert_target(&mut self, target: &Target) -> Result<(), StoreError>;
    async fn target_exists(&mut self, name: &str) -> Result<bool, StoreError>;
    async fn put_target_secret(
        &mut self,
        name: &str,
        sealed: &[u8],
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Records the rotation unless one of the target is recorded; whether it was recorded.
    async fn begin_root_rotation(
        &mut self,
        name: &str,
        sealed: &[u8],
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Removes the rotation of `name` that recorded `sealed`; whether there was one.
    async fn end_root_rotation(&mut self, name: &str, sealed: &[u8]) -> Result<bool, StoreError>;

    // --- grants and leases ------------------------------------------------------------
    /// Inserts the grants and their leases (the lease's owner is its grant's; a `revoking`
    /// lease is due for its first attempt at `now`). One call may insert many: the engine
    /// groups consecutive `record_grant` calls.
    async fn insert_grants(
        &mut self,
        items: &[(&Grant, Option<&Lease>)],
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// The lease, locked against concurrent change until the batch ends where the
    /// database needs that to be said.
    async fn lease_for_update(&mut self, id: Uuid) -> Result<Option<LeaseRow>, StoreError>;
    async fn set_lease_expiry(&mut self, id: Uuid, to: OffsetDateTime) -> Result<(), StoreError>;
    /// `creating` → `active` with the final provider state; `None` if not `creating`.
    async fn activate_lease(
        &mut self,
        id: Uuid,
        provider_state: &serde_json::Value,
    ) -> Result<Option<LeaseRow>, StoreError>;
    /// `creating` → `revoked` (`cleaned`) or `revoking`; `None` if not `creating`.
    async fn abandon_lease(
        &mut self,
        id: Uuid,
        cleaned: bool,
        error: &str,
        now: OffsetDateTime,
    ) -> Result<Option<LeaseRow>, StoreError>;
    async fn move_grant(
        &mut self,
        id: Uuid,
        to: GrantMove,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Moves the `issued` grants among `ids` to `to`.
    async fn end_grants(
        &mut self,
        ids: &[Uuid],
        to: GrantEnd,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Ends every live lease the selector matches: self-contained ones `revoked`, external
    /// ones `revoking` (due now). Set-based: 100,000 leases are one or two statements.
    async fn end_leases(
        &mut self,
        selector: &LeaseSelector,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Ended>, StoreError>;
    /// Ends up to `limit` active leases due at `now` (the TTL), in any order.
    async fn expire_due(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<LeaseRow>, StoreError>;
    async fn claim_revocations(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
        until: OffsetDateTime,
    ) -> Result<Vec<Lease>, StoreError>;
    /// `revoking` → `revoked`/`expired`; `None` if not `revoking`.
    async fn complete_revocation(&mut self, id: Uuid) -> Result<Option<LeaseRow>, StoreError>;
    /// Counts a failed attempt and schedules the next; `None` if not `revoking`.
    async fn revocation_failed(
        &mut self,
        id: Uuid,
        error: &str,
        next_attempt: OffsetDateTime,
    ) -> Result<Option<LeaseRow>, StoreError>;

    // --- tasks ------------------------------------------------------------------------
    /// `Conflict` naming the task when the id is taken.
    async fn insert_task(&mut self, task: &Task) -> Result<(), StoreError>;
    /// The task, locked against concurrent change until the batch ends where the database
    /// needs that to be said.
    async fn task_for_update(&mut self, id: Uuid) -> Result<Option<Task>, StoreError>;
    /// Moves the open task `id` and every open task below it to `to`; the ids it moved.
    async fn end_task_tree(
        &mut self,
        id: Uuid,
        to: TaskState,
        now: OffsetDateTime,
    ) -> Result<Vec<Uuid>, StoreError>;
    /// Up to `limit` open tasks whose deadline is at or before `now`, earliest first.
    async fn due_tasks(&mut self, now: OffsetDateTime, limit: u32)
        -> Result<Vec<Uuid>, StoreError>;

    // --- approvals ----------------------------------------------------------------------
    /// `Conflict` naming the grant when it already has a request.
    async fn insert_approval(&mut self, approval: &ApprovalRecord) -> Result<(), StoreError>;
    /// The request, locked against concurrent change until the batch ends where the
    /// database needs that to be said.
    async fn approval_for_update(
        &mut self,
        grant: Uuid,
    ) -> Result<Option<ApprovalRecord>, StoreError>;
    async fn update_approval(&mut self, approval: &ApprovalRecord) -> Result<(), StoreError>;
    /// Up to `limit` pending or approved requests past their expiry at `now`.
    async fn due_approvals(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError>;
    /// Moves grant `id` from `from` to `to`; whether it was in `from`.
    async fn set_grant_state(
        &mut self,
        id: Uuid,
        from: GrantState,
        to: GrantState,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// A lease for a grant recorded earlier (an approved grant's credential); `owner` is
    /// the grant's.
    async fn insert_lease(
        &mut self,
        owner: &str,
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    // --- keys and operator tokens -------------------------------------------------------
    async fn retire_active_key(
        &mut self,
        retired_at: OffsetDateTime,
        publish_until: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// `Conflict` naming the active key when another one is active.
    async fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<(), StoreError>;
    /// Keeps a checkpoint; one already kept for its entry and key is left as it is.
    async fn insert_audit_checkpoint(
        &mut self,
        checkpoint: &mayfly_core::checkpoint::Checkpoint,
    ) -> Result<(), StoreError>;
    async fn insert_operator_token(
        &mut self,
        token: &OperatorTokenRecord,
    ) -> Result<(), StoreError>;

    // --- audit --------------------------------------------------------------------------
    fn encode_audit(rows: Vec<SealedRow>) -> Result<Self::AuditRows, StoreError>;
    async fn insert_audit(&mut self, rows: Self::AuditRows) -> Result<(), StoreError>;
    async fn set_audit_head(&mut self, head: &Head) -> Result<(), StoreError>;

    // --- operator token lifecycle -------------------------------------------------------
    /// The unrevoked token called `name`, if any (at most one: a partial unique index).
    async fn unrevoked_operator_token(
        &mut self,
        name: &str,
    ) -> Result<Option<OperatorTokenRecord>, StoreError>;
    /// Marks the unrevoked token called `name` revoked; whether there was one.
    async fn revoke_operator_token(
        &mut self,
        name: &str,
        at: OffsetDateTime,
        by: &str,
    ) -> Result<bool, StoreError>;
    /// Tokens neither revoked nor expired at `now`.
    async fn count_live_operator_tokens(&mut self, now: OffsetDateTime) -> Result<u64, StoreError>;

    // --- changing and deleting identities and targets -------------------------------------
    /// Replaces the mutable fields; `None` if there is no such identity.
    async fn update_identity(
        &mut self,
        identity: &Identity,
    ) -> Result<Option<Identity>, StoreError>;
    /// Whether there was one to delete.
    async fn delete_identity(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Replaces the mutable fields; `None` if there is no such target.
    async fn update_target(&mut self, target: &Target) -> Result<Option<Target>, StoreError>;
    /// Deletes the target and its sealed secret; whether there was one.
    async fn delete_target(&mut self, name: &str) -> Result<bool, StoreError>;
    async fn root_rotation_pending(&mut self, name: &str) -> Result<bool, StoreError>;
    /// Creating, active and revoking leases of an identity or a target.
    async fn count_live_leases(&mut self, of: LiveOf<'_>) -> Result<u64, StoreError>;

    // --- webhook cursors ------------------------------------------------------------------
    /// Creates the cursor of `name` at `seq` unless it exists (then nothing changes).
    async fn insert_webhook_cursor(
        &mut self,
        name: &str,
        seq: u64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Claims the cursor for `holder` until `until` when it is free, lapsed at `now`, or
    /// `holder`'s already; the cursor as claimed, `None` when another holder keeps it.
    async fn claim_webhook(
        &mut self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<WebhookCursor>, StoreError>;
    /// Moves the cursor to `seq`, clearing failures and extending the claim, while
    /// `holder`'s claim runs at `now` and the cursor is not past `seq`; whether it moved.
    async fn advance_webhook(
        &mut self,
        name: &str,
        holder: &str,
        seq: u64,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Counts a failed attempt, under the same condition; whether it was counted.
    async fn webhook_failed(
        &mut self,
        name: &str,
        holder: &str,
        error: &str,
        next_attempt: OffsetDateTime,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Clears `holder`'s claim, if it holds one.
    async fn release_webhook(&mut self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// Whose live leases [`Backend::count_live_leases`] counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LiveOf<'a> {
    Identity(&'a str),
    Target(&'a str),
}
