//! The storage contract. Backends (SQLite embedded, PostgreSQL for scale-out) implement
//! [`Store`] and all run the same conformance suite.
//!
//! Every write that changes access state also appends its audit events in the same
//! transaction: an acknowledged grant, renewal or revocation always has its audit entry,
//! and an audit entry never describes something that did not happen.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{AuditDraft, AuditEvent, VerifyReport};
use crate::model::{
    ApprovalRecord, ApprovalState, ApprovalVote, Grant, GrantState, Identity, Lease, LeaseSelector,
    LeaseState, RevocationReason, Target, Task, TaskState,
};
use crate::CoreError;

/// A root rotation recorded before the target was changed (state `rotating`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRootRotation {
    pub target: String,
    /// The next admin secret, sealed under the master key like the current one.
    pub sealed: Vec<u8>,
    pub started_at: OffsetDateTime,
}

/// `Clone`, so a batch that fails as a whole can answer every operation in it.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist.
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// A record with that key already exists.
    #[error("{what} {id:?} already exists")]
    Conflict { what: &'static str, id: String },
    /// The operation is not allowed in the record's current state.
    #[error("{0}")]
    Rejected(#[from] CoreError),
    /// The database cannot be reached or is shutting down; retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Stored data cannot be read back (corruption, wrong master key, newer schema).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Any other database failure.
    #[error("store error: {0}")]
    Backend(String),
}

/// Filter for listing grants. Empty fields match everything.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GrantFilter {
    pub identity: Option<String>,
    pub task: Option<String>,
    pub state: Option<GrantState>,
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LeaseFilter {
    pub identity: Option<String>,
    pub task: Option<String>,
    pub grant_id: Option<Uuid>,
    pub state: Option<LeaseState>,
    pub limit: Option<u32>,
    /// Leases of this target only.
    pub target: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    pub identity: Option<String>,
    pub task: Option<String>,
    pub grant_id: Option<Uuid>,
    /// Only entries with a larger sequence number (for paging and following).
    pub after_seq: Option<u64>,
    pub limit: Option<u32>,
}

/// Filter for listing tasks, newest first. Empty fields match everything.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TaskFilter {
    pub identity: Option<String>,
    pub state: Option<TaskState>,
    pub limit: Option<u32>,
}

/// Filter for listing approval requests, oldest first. Empty fields match everything.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApprovalFilter {
    pub state: Option<ApprovalState>,
    pub limit: Option<u32>,
}

/// How many leases a revocation ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RevokeOutcome {
    /// Ended now (self-contained credentials such as tokens).
    pub revoked: u64,
    /// Marked for revocation on their target; the revocation worker completes them.
    pub revoking: u64,
}

impl RevokeOutcome {
    pub fn total(&self) -> u64 {
        self.revoked + self.revoking
    }
}

/// A signing key as stored: private half sealed under the master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub alg: String,
    /// The public JWK, published in the JWKS.
    pub public_jwk: serde_json::Value,
    /// PKCS#8, sealed with context `signing-key:<kid>`.
    pub private_sealed: Vec<u8>,
    pub created_at: OffsetDateTime,
    /// When it stopped signing; `None` for the active key.
    pub retired_at: Option<OffsetDateTime>,
    /// Published until then, so tokens it signed still verify.
    pub publish_until: Option<OffsetDateTime>,
}

/// An operator token, kept only as its SHA-256.
///
/// A token is *live* while it is neither revoked nor past its expiry; a name is unique
/// among live tokens (an expired or revoked token keeps its row, so who had it stays
/// readable). Revoked and expired tokens are refused at authentication with their reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorTokenRecord {
    pub name: String,
    pub token_sha256: Vec<u8>,
    pub created_at: OffsetDateTime,
    /// `None`: never expires (the token of the first start, and tokens made before
    /// expiry existed).
    pub expires_at: Option<OffsetDateTime>,
    /// Who made it: the operator's actor text, `system:first-start` or `system:recovery`.
    pub created_by: String,
    pub revoked_at: Option<OffsetDateTime>,
    pub revoked_by: Option<String>,
}

impl OperatorTokenRecord {
    /// A new, unrevoked token record.
    pub fn new(
        name: impl Into<String>,
        token_sha256: Vec<u8>,
        created_at: OffsetDateTime,
        expires_at: Option<OffsetDateTime>,
        created_by: impl Into<String>,
    ) -> Self {
        OperatorTokenRecord {
            name: name.into(),
            token_sha256,
            created_at,
            expires_at,
            created_by: created_by.into(),
            revoked_at: None,
            revoked_by: None,
        }
    }

    /// Neither revoked nor past its expiry at `now`.
    pub fn is_live_at(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// Counts for metrics and health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub active_leases: u64,
    pub revoking_leases: u64,
    pub audit_entries: u64,
}

/// Where one outgoing webhook stands in the audit chain (its delivery cursor). The chain
/// is the webhook's outbox: every event was committed with the change it describes, so a
/// worker that moves this cursor only after a delivery succeeded never misses one.
///
/// Replicas sharing a store deliver each webhook from one replica at a time: the cursor
/// is *claimed* (`claimed_by` until `claimed_until`), and it moves only for its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookCursor {
    /// The webhook's configured name.
    pub name: String,
    /// Sequence number of the last audit entry done with (delivered, or not for this
    /// webhook). A new cursor starts at the chain head: a webhook receives what happens
    /// after it was first configured.
    pub delivered_seq: u64,
    /// Failed attempts at the entry after `delivered_seq`.
    pub attempts: u32,
    /// When the next attempt is due after a failure; `None` when none failed.
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The last failure's error (never a secret: no body, no signature).
    pub last_error: Option<String>,
    /// When the current run of failures began.
    pub failing_since: Option<OffsetDateTime>,
    /// The replica delivering this webhook, until `claimed_until`.
    pub claimed_by: Option<String>,
    pub claimed_until: Option<OffsetDateTime>,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Cheap reachability check for `/healthz`.
    async fn ping(&self) -> Result<(), StoreError>;

    // --- identities -------------------------------------------------------------------
    /// Creates an identity; `Conflict` if the id is taken.
    async fn create_identity(
        &self,
        identity: &Identity,
        event: AuditDraft,
    ) -> Result<(), StoreError>;
    async fn get_identity(&self, id: &str) -> Result<Option<Identity>, StoreError>;
    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError>;
    /// Re-enables an identity. (Disabling is [`Store::disable_identity`]: it also revokes.)
    async fn enable_identity(&self, id: &str, event: AuditDraft) -> Result<Identity, StoreError>;
    /// Kill switch: disables the identity and revokes every lease it holds, atomically.
    async fn disable_identity(
        &self,
        id: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError>;

    // --- targets ----------------------------------------------------------------------
    /// Creates a target, with its admin secret sealed under the master key (context
    /// `target-secret:<name>`) for external kinds; `Conflict` if the name is taken. Both
    /// are written in one transaction.
    async fn create_target(
        &self,
        target: &Target,
        admin_sealed: Option<&[u8]>,
        event: AuditDraft,
    ) -> Result<(), StoreError>;
    /// The sealed admin secret of a target, if it has one.
    async fn get_target_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Replaces a target's sealed admin secret (root rotation); `NotFound` if no target.
    async fn set_target_secret(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError>;
    /// Records `sealed` (sealed like the admin secret) as the target's next admin secret,
    /// in state `rotating`, before the target is changed: from here on a crash cannot lose
    /// it. `NotFound` if no target; `Conflict` if a rotation of it is already recorded.
    async fn begin_root_rotation(&self, name: &str, sealed: &[u8]) -> Result<(), StoreError>;
    /// The target now has `sealed`: makes it the admin secret and clears the rotation that
    /// recorded it (if still recorded), with `event`, in one transaction. `NotFound` if no
    /// target.
    async fn commit_root_rotation(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError>;
    /// The target kept its admin secret: clears the rotation that recorded `sealed`, with
    /// `event`. `NotFound` if no such rotation is recorded (another process resolved it).
    async fn abandon_root_rotation(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError>;
    /// Every recorded rotation not yet committed or abandoned, by target name.
    async fn pending_root_rotations(&self) -> Result<Vec<PendingRootRotation>, StoreError>;
    async fn get_target(&self, name: &str) -> Result<Option<Target>, StoreError>;
    async fn list_targets(&self) -> Result<Vec<Target>, StoreError>;

    // --- grants and leases --------------------------------------------------------------
    /// Records a decided grant, its lease if one was issued, and their audit events, in
    /// one transaction. Nothing is acknowledged before this returns `Ok`.
    async fn record_grant(
        &self,
        grant: &Grant,
        lease: Option<&Lease>,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError>;
    /// [`Store::record_grant`] for break-glass access: also opens its review (an approval
    /// record in state `review`), in the same transaction.
    async fn record_break_glass(
        &self,
        grant: &Grant,
        lease: &Lease,
        review: &ApprovalRecord,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError>;
    async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError>;
    async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError>;
    async fn get_lease(&self, id: Uuid) -> Result<Option<Lease>, StoreError>;
    async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError>;

    /// Extends an active lease to `min(requested, max_expires_at)`. Fails with `Rejected`
    /// when the lease is not active or already past its expiry.
    async fn renew_lease(
        &self,
        id: Uuid,
        requested_expiry: OffsetDateTime,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Lease, StoreError>;

    /// Revokes every live lease the selector matches (each exactly once) and marks their
    /// grants revoked. Self-contained leases end now; external ones become `revoking`.
    async fn revoke(
        &self,
        selector: &LeaseSelector,
        reason: RevocationReason,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError>;

    /// Ends up to `limit` active leases whose expiry is at or before `now`, oldest first.
    /// Returns the leases it changed (external ones are now `revoking`).
    async fn expire_due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Lease>, StoreError>;

    /// The earliest expiry among active leases, from the index (no scan).
    async fn next_expiry(&self) -> Result<Option<OffsetDateTime>, StoreError>;

    // --- write-ahead issuance and the revocation queue -----------------------------------
    /// The external credential of a `creating` lease now exists: the lease becomes
    /// `active` with the provider's final state and its grant `issued`, with `event`.
    /// `Rejected` when the lease is no longer `creating` (e.g. revoked meanwhile).
    async fn activate_lease(
        &self,
        id: Uuid,
        provider_state: &serde_json::Value,
        event: AuditDraft,
    ) -> Result<Lease, StoreError>;

    /// Issuance of a `creating` lease failed. With `cleaned` (the provider confirmed
    /// nothing is left on the target) the lease is closed as `revoked`; otherwise it goes to
    /// `revoking` for the revocation worker. Its grant becomes `failed`. Audits the failure
    /// (`error` must hold no secret).
    async fn abandon_lease(
        &self,
        id: Uuid,
        cleaned: bool,
        error: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Lease, StoreError>;

    /// Claims up to `limit` `revoking` leases whose next attempt is due, pushing their next
    /// attempt `claim_for` into the future so no other worker (or replica) takes them
    /// meanwhile; a crashed worker's claims come due again after that.
    async fn claim_revocations(
        &self,
        now: OffsetDateTime,
        limit: u32,
        claim_for: time::Duration,
    ) -> Result<Vec<Lease>, StoreError>;

    /// The target confirmed the credential is gone: `revoking` becomes `revoked` (or
    /// `expired` when the reason was the TTL), audited once. `Ok(None)` when the lease was
    /// no longer `revoking` (someone else finished it).
    async fn complete_revocation(
        &self,
        id: Uuid,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Lease>, StoreError>;

    /// A revocation attempt failed: count it, keep the error (no secrets), schedule the
    /// next attempt, and audit the attempt. The lease stays `revoking`: never dropped.
    async fn revocation_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt: OffsetDateTime,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// `provider_state` of every lease of `target` not yet ended (creating, active,
    /// revoking): what reconciliation must keep.
    async fn live_provider_states(
        &self,
        target: &str,
    ) -> Result<Vec<serde_json::Value>, StoreError>;

    /// Which of `names` the leases of `target` recorded under `key` in their provider state
    /// (the write-ahead plan's `{key: name}`; `key` is the provider's live key, e.g.
    /// `username`, and must be `[a-z_]`, 1–32 characters), each mapped to whether one of
    /// those leases is still live (creating, active, revoking). Names no lease of `target`
    /// recorded are absent: reconciliation must never touch them. Reads the target's lease
    /// history, so it is for reconciliation, not for request paths.
    async fn recorded_names(
        &self,
        target: &str,
        key: &str,
        names: &[String],
    ) -> Result<std::collections::BTreeMap<String, bool>, StoreError>;

    // --- tasks --------------------------------------------------------------------------
    /// Opens a task, with `event`. `Conflict` if the id is taken; with a parent, `NotFound`
    /// if there is none and `Rejected` unless it is open and of the same identity.
    async fn create_task(&self, task: &Task, event: AuditDraft) -> Result<(), StoreError>;
    async fn get_task(&self, id: Uuid) -> Result<Option<Task>, StoreError>;
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError>;
    /// Ends an open task and every open task below it in `to` (not `open`), and revokes
    /// every live lease of each with `to`'s reason, audited, in one transaction. Returns the
    /// task as ended and what the revocation did. `NotFound` if there is no such task;
    /// `Rejected` if it has already ended. `exit_status` is what the ending side reports
    /// (a wrapped command's exit status); it is audited with the end.
    async fn end_task(
        &self,
        id: Uuid,
        to: TaskState,
        exit_status: Option<i32>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(Task, RevokeOutcome), StoreError>;
    /// Times out up to `limit` open tasks whose deadline is at or before `now` (with their
    /// children and leases, as [`Store::end_task`]); returns the ids it ended.
    async fn expire_due_tasks(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError>;
    /// The earliest deadline among open tasks, from the index (no scan).
    async fn next_task_deadline(&self) -> Result<Option<OffsetDateTime>, StoreError>;

    // --- approvals --------------------------------------------------------------------
    /// Records a grant waiting for approval (`pending_approval`), its approval request and
    /// their audit events, in one transaction.
    async fn request_approval(
        &self,
        grant: &Grant,
        approval: &ApprovalRecord,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError>;
    async fn get_approval(&self, grant: Uuid) -> Result<Option<ApprovalRecord>, StoreError>;
    async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// Adds an approver's answer, atomically: the request must be pending and unexpired
    /// at `now` and the approver must not have answered (`Rejected` otherwise). A refusal
    /// denies the grant; the approval that makes `needed` moves it to `approved`. `event`
    /// is audited with `approvals`, `needed` and `complete` added to its detail. Returns
    /// the request as it now is. Concurrent answers are serialised: exactly one of them
    /// completes a request.
    async fn vote(
        &self,
        grant: Uuid,
        vote: &ApprovalVote,
        event: AuditDraft,
        now: OffsetDateTime,
    ) -> Result<ApprovalRecord, StoreError>;
    /// Collects an approved request, once: marks it `collected` and records the
    /// write-ahead lease of its credential (state `creating`) with `events`. `Rejected`
    /// unless the request is approved and unexpired at `now`.
    async fn collect_approval(
        &self,
        grant: Uuid,
        lease: &Lease,
        events: Vec<AuditDraft>,
        now: OffsetDateTime,
    ) -> Result<ApprovalRecord, StoreError>;
    /// Ends up to `limit` requests past their expiry at `now`: pending ones are denied
    /// (`approval_timeout`), approved but uncollected ones expire. Returns their grant ids.
    async fn expire_approvals(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError>;

    // --- audit --------------------------------------------------------------------------
    /// Appends events that accompany no state change (rejected requests, failed logins).
    async fn append_audit(&self, events: Vec<AuditDraft>) -> Result<(), StoreError>;
    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;
    /// Walks the whole chain in order, in constant memory.
    async fn verify_audit(&self) -> Result<VerifyReport, StoreError>;
    /// Keeps a signed checkpoint of the chain head, unaudited (a checkpoint is a statement
    /// about the chain, not an event in it). One per entry and key: keeping the same again
    /// is `Ok` and changes nothing.
    async fn add_audit_checkpoint(
        &self,
        checkpoint: &crate::checkpoint::Checkpoint,
    ) -> Result<(), StoreError>;
    /// The kept checkpoint of the highest entry, if any.
    async fn latest_audit_checkpoint(
        &self,
    ) -> Result<Option<crate::checkpoint::Checkpoint>, StoreError>;

    // --- keys and operator tokens -----------------------------------------------------------
    /// Adds a signing key. When `retire_active` is set, the current active key is retired
    /// at the new key's creation time and published until that instant — in the same
    /// transaction, so there is always exactly one active key.
    async fn add_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire_active: Option<OffsetDateTime>,
        event: AuditDraft,
    ) -> Result<(), StoreError>;
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Records the first start's token, unaudited (the chain may not exist yet for a
    /// caller to name). `Conflict` if the name or hash is taken.
    async fn add_operator_token(&self, token: &OperatorTokenRecord) -> Result<(), StoreError>;
    /// The token with this hash, whatever its state (the authenticator tells expired and
    /// revoked ones apart).
    async fn find_operator_token(
        &self,
        sha256: &[u8],
    ) -> Result<Option<OperatorTokenRecord>, StoreError>;
    /// Every token ever recorded, revoked and expired ones included: non-zero means the
    /// broker was bootstrapped, and a start never mints another first token (a broker
    /// whose tokens are all revoked is recovered offline, deliberately).
    async fn count_operator_tokens(&self) -> Result<u64, StoreError>;

    async fn stats(&self) -> Result<StoreStats, StoreError>;

    // --- operator token lifecycle (added after the original contract) ----------------------
    /// Records a new token with `event`. `Conflict` if a live token (at the record's
    /// `created_at`) has the name; a token of that name that has expired but was never
    /// revoked is marked revoked by the new record's creator in the same transaction, so
    /// the name can be reused without losing who held it before.
    async fn create_operator_token(
        &self,
        token: &OperatorTokenRecord,
        event: AuditDraft,
    ) -> Result<(), StoreError>;
    /// Every token, oldest first, revoked ones included.
    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError>;
    /// Revokes the unrevoked token called `name` at `now`, with `event` (its actor is
    /// recorded as `revoked_by`). `NotFound` if no unrevoked token has the name;
    /// `Rejected` if it is the broker's last live token and `force` is not set (an
    /// operator would otherwise lock everyone out; recovery is offline).
    async fn revoke_operator_token(
        &self,
        name: &str,
        force: bool,
        now: OffsetDateTime,
        event: AuditDraft,
    ) -> Result<OperatorTokenRecord, StoreError>;

    // --- changing and removing identities and targets -----------------------------------
    /// Replaces the identity's mutable fields (kind, owner, purpose, expiry, labels) with
    /// `identity`'s; `enabled` and `created_at` are kept. `NotFound` if there is none.
    async fn update_identity(
        &self,
        identity: &Identity,
        event: AuditDraft,
    ) -> Result<Identity, StoreError>;
    /// Deletes an identity that holds no live lease (creating, active or revoking):
    /// `Rejected` naming how many it holds. Its grants, leases and audit entries stay.
    async fn delete_identity(&self, id: &str, event: AuditDraft) -> Result<(), StoreError>;
    /// Replaces the target's mutable fields (actions, TTLs, allow list, settings); `kind`,
    /// the admin secret and `created_at` are kept. `NotFound` if there is none.
    async fn update_target(&self, target: &Target, event: AuditDraft)
        -> Result<Target, StoreError>;
    /// Deletes a target, with its sealed admin secret, once none of its leases is live
    /// (creating, active or revoking: a revocation still pending needs the target to
    /// finish): `Rejected` naming how many are. `Conflict` while a root rotation of it is
    /// being settled. Its grants, leases and audit entries stay.
    async fn delete_target(&self, name: &str, event: AuditDraft) -> Result<(), StoreError>;

    // --- outgoing webhooks (added after the original contract) ----------------------------
    /// Claims the delivery cursor of webhook `name` for `holder` until `until`, creating it
    /// at the current chain head if there is none. `Ok(None)` while another holder's claim
    /// runs (`claimed_until` after `now`); renewing one's own claim always succeeds.
    async fn claim_webhook(
        &self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<WebhookCursor>, StoreError>;
    /// Moves the cursor to `seq` (done with every entry up to it), clears its failures and
    /// extends the claim to `until`, only while `holder` still holds a running claim and
    /// the cursor is not already past `seq`. Whether it moved: `false` means the claim was
    /// lost (another replica delivers now) and the caller must stop.
    async fn advance_webhook(
        &self,
        name: &str,
        holder: &str,
        seq: u64,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Records a failed delivery attempt (`error` holds no secret): counts it, keeps the
    /// error, sets when the next attempt is due and when failing began, and extends the
    /// claim, under the same condition as [`Store::advance_webhook`]. Whether it did.
    async fn webhook_failed(
        &self,
        name: &str,
        holder: &str,
        error: &str,
        next_attempt: OffsetDateTime,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Gives up `holder`'s claim (a clean shutdown), so another replica or the next start
    /// takes over at once. Nothing happens if `holder` does not hold it.
    async fn release_webhook(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}
