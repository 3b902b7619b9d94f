//! The write path of the PostgreSQL backend: group commit within a replica, one
//! serialisation point across replicas.
//!
//! Every audited mutation of this replica goes through one task that batches whatever
//! queued while the previous batch was committing into one transaction, as the SQLite
//! writer does. Each batch begins by taking the chain head row
//! (`SELECT … FROM audit_head WHERE id = 1 FOR UPDATE`). That row lock is what makes many
//! replicas one truth:
//!
//! - audited writes of all replicas commit one batch at a time, in head-lock order, so the
//!   sequence numbers and `prev_hash` links the batch computes from the head it read are
//!   exactly those of the committed chain;
//! - under READ COMMITTED every statement after the lock sees everything committed before
//!   it, so checks such as "is the identity still enabled" in `record_grant` cannot race
//!   the kill switch on another replica;
//! - nothing is cached between batches: the head is re-read under the lock every time.
//!
//! Taking the head first (rather than just before the audit insert) also rules out
//! deadlocks between batches: every batch waits on the same row before touching any other.
//! The work-queue statements (`expire_due`, `claim_revocations`) additionally pick rows
//! with `FOR UPDATE SKIP LOCKED`, and every transition re-checks the expected state, so
//! they stay exactly-once even without the head lock (`claim_revocations` runs without it:
//! it appends no audit). Each operation runs in its own savepoint, so one failing call
//! (a conflict, a rejected renewal) is rolled back alone while the rest of its group
//! commits.

use std::time::Instant;

use mayfly_core::audit::{hash_entry, AuditDraft, AuditEvent, AuditKind};
use mayfly_core::model::{
    Grant, Identity, Lease, LeaseSelector, LeaseState, RevocationReason, Target,
};
use mayfly_core::store::{OperatorTokenRecord, RevokeOutcome, SigningKeyRecord, StoreError};
use mayfly_core::{now as core_now, to_unix_ms, CoreError, OffsetDateTime, Uuid};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::error::{conflict_or, corrupt, map_sqlx};
use super::rows::{
    identity_from_row, identity_kind_text, lease_from_row, to_json, ttl_secs, LeaseRow,
};
use super::sql;
use crate::events;

/// Most operations committed together: bounds one commit's latency and how long a batch
/// holds the chain head that every replica waits on.
const MAX_BATCH: usize = 256;
/// From this many events on, sealing runs on a blocking thread.
const SEAL_OFFLOAD_MIN: usize = 512;
/// Audit rows per INSERT: bounds the size of one statement's bound arrays.
const AUDIT_CHUNK: usize = 5_000;

/// A mutation, with everything it needs to run inside a batch.
pub(crate) enum Op {
    CreateIdentity(Box<Identity>, AuditDraft),
    EnableIdentity(String, AuditDraft),
    DisableIdentity {
        id: String,
        actor: String,
        now: OffsetDateTime,
    },
    CreateTarget(Box<Target>, Option<Vec<u8>>, AuditDraft),
    SetTargetSecret {
        name: String,
        sealed: Vec<u8>,
        event: AuditDraft,
    },
    BeginRootRotation {
        name: String,
        sealed: Vec<u8>,
    },
    CommitRootRotation {
        name: String,
        sealed: Vec<u8>,
        event: AuditDraft,
    },
    AbandonRootRotation {
        name: String,
        sealed: Vec<u8>,
        event: AuditDraft,
    },
    ActivateLease {
        id: Uuid,
        provider_state: serde_json::Value,
        event: AuditDraft,
    },
    AbandonLease {
        id: Uuid,
        cleaned: bool,
        error: String,
        actor: String,
        now: OffsetDateTime,
    },
    CompleteRevocation {
        id: Uuid,
        actor: String,
        now: OffsetDateTime,
    },
    RevocationFailed {
        id: Uuid,
        error: String,
        next_attempt: OffsetDateTime,
        actor: String,
        now: OffsetDateTime,
    },
    RecordGrant(Box<Grant>, Option<Box<Lease>>, Vec<AuditDraft>),
    RenewLease {
        id: Uuid,
        requested: OffsetDateTime,
        actor: String,
        now: OffsetDateTime,
    },
    Revoke {
        selector: LeaseSelector,
        reason: RevocationReason,
        actor: String,
        now: OffsetDateTime,
    },
    ExpireDue {
        now: OffsetDateTime,
        limit: u32,
    },
    AppendAudit(Vec<AuditDraft>),
    AddSigningKey(Box<SigningKeyRecord>, Option<OffsetDateTime>, AuditDraft),
}

/// What an operation produced; the caller knows which variant its op yields.
pub(crate) enum Output {
    Unit,
    Identity(Identity),
    Outcome(RevokeOutcome),
    Lease(Lease),
    MaybeLease(Option<Lease>),
    Leases(Vec<Lease>),
}

pub(crate) type Reply = oneshot::Sender<Result<Output, StoreError>>;

pub(crate) enum Msg {
    Job(Box<Op>, Reply),
    /// Finish what is queued before this, then stop.
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

/// An audit row sealed in memory, not yet inserted.
struct SealedRow {
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
/// body it hashes instead of computing it twice.
fn seal_next(head: &mut Head, draft: AuditDraft, at: OffsetDateTime) -> SealedRow {
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

/// The chain head read under the lock, plus the rows sealed in this batch.
struct Chain {
    head: Head,
    pending: Vec<SealedRow>,
}

impl Chain {
    fn append(&mut self, draft: AuditDraft, at: OffsetDateTime) {
        let row = seal_next(&mut self.head, draft, at);
        self.pending.push(row);
    }

    /// Appends many events; large sets are sealed on a blocking thread (hashing 100,000
    /// canonical bodies would otherwise stall a runtime worker for a long while).
    async fn append_all(
        &mut self,
        drafts: Vec<AuditDraft>,
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if drafts.len() < SEAL_OFFLOAD_MIN {
            for d in drafts {
                self.append(d, at);
            }
            return Ok(());
        }
        let mut head = self.head.clone();
        let (rows, head) = tokio::task::spawn_blocking(move || {
            let rows: Vec<SealedRow> = drafts
                .into_iter()
                .map(|d| seal_next(&mut head, d, at))
                .collect();
            (rows, head)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("the audit sealing task failed: {e}")))?;
        self.pending.extend(rows);
        self.head = head;
        Ok(())
    }
}

async fn load_head(conn: &mut PgConnection, statement: &str) -> Result<Head, StoreError> {
    let row = sqlx::query(statement)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?
        .ok_or_else(|| StoreError::Corrupt("the audit_head row is missing".into()))?;
    let seq: i64 = row.try_get(0).map_err(map_sqlx)?;
    let hash: String = row.try_get(1).map_err(map_sqlx)?;
    let seq = u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt("audit_head has a negative sequence".into()))?;
    Ok(Head { seq, hash })
}

/// The current head without locking it (for readers).
pub(crate) async fn read_head(conn: &mut PgConnection) -> Result<Head, StoreError> {
    load_head(conn, sql::AUDIT_HEAD).await
}

async fn exec(conn: &mut PgConnection, statement: &str) -> Result<(), StoreError> {
    sqlx::query(statement)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(map_sqlx)
}

pub(crate) struct Writer {
    pool: PgPool,
}

impl Writer {
    pub(crate) fn new(pool: PgPool) -> Writer {
        Writer { pool }
    }

    pub(crate) async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = Vec::new();
            let mut shutdown = None;
            match first {
                Msg::Job(op, reply) => jobs.push((*op, reply)),
                Msg::Shutdown(ack) => shutdown = Some(ack),
            }
            // Everything that queued while the last batch was committing joins this one.
            while shutdown.is_none() && jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Job(op, reply)) => jobs.push((*op, reply)),
                    Ok(Msg::Shutdown(ack)) => shutdown = Some(ack),
                    Err(_) => break,
                }
            }
            if !jobs.is_empty() {
                self.run_batch(jobs).await;
            }
            if let Some(ack) = shutdown {
                let _ = ack.send(());
                return;
            }
        }
    }

    async fn run_batch(&self, jobs: Vec<(Op, Reply)>) {
        let started = Instant::now();
        let count = jobs.len();
        let mut tx = match self.pool.begin().await {
            Ok(tx) => tx,
            Err(e) => return fail_all(jobs, &map_sqlx(e)),
        };
        let head = match load_head(&mut tx, sql::LOCK_AUDIT_HEAD).await {
            Ok(h) => h,
            Err(e) => return fail_all(jobs, &e),
        };
        let waited = started.elapsed();
        let batch_head = head.clone();
        let mut chain = Chain {
            head,
            pending: Vec::new(),
        };

        let mut results: Vec<(Reply, Result<Output, StoreError>)> = Vec::with_capacity(count);
        let mut fatal: Option<StoreError> = None;
        let mut jobs = jobs.into_iter().peekable();
        let is_grant = |job: &(Op, Reply)| matches!(job.0, Op::RecordGrant(..));
        while fatal.is_none() {
            let Some((op, reply)) = jobs.next() else {
                break;
            };
            if matches!(op, Op::RecordGrant(..)) && jobs.peek().is_some_and(is_grant) {
                let mut run = vec![(op, reply)];
                while let Some(job) = jobs.next_if(is_grant) {
                    run.push(job);
                }
                match record_grant_run(&mut tx, &mut chain, &run).await {
                    Ok(Some(outcomes)) => {
                        for ((_, reply), outcome) in run.into_iter().zip(outcomes) {
                            results.push((reply, outcome));
                        }
                    }
                    // A key conflict in the multi-row insert: redo the run call by call so
                    // only the conflicting calls fail.
                    Ok(None) => {
                        for (op, reply) in run {
                            if let Some(e) = &fatal {
                                results.push((reply, Err(e.clone())));
                                continue;
                            }
                            match run_single(&mut tx, &mut chain, op).await {
                                Ok(outcome) => results.push((reply, outcome)),
                                Err(e) => {
                                    results.push((reply, Err(e.clone())));
                                    fatal = Some(e);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        for (_, reply) in run {
                            results.push((reply, Err(e.clone())));
                        }
                        fatal = Some(e);
                    }
                }
                continue;
            }
            match run_single(&mut tx, &mut chain, op).await {
                Ok(outcome) => results.push((reply, outcome)),
                Err(e) => {
                    results.push((reply, Err(e.clone())));
                    fatal = Some(e);
                }
            }
        }

        if fatal.is_none() {
            if let Err(e) = flush_audit(&mut tx, &mut chain, &batch_head).await {
                fatal = Some(e);
            }
        }
        if fatal.is_none() {
            if let Err(e) = tx.commit().await {
                fatal = Some(map_sqlx(e));
            }
        } else {
            // Best effort: a broken connection has rolled back already, and sqlx discards
            // a connection whose rollback fails rather than reusing it.
            let _ = tx.rollback().await;
        }

        if let Some(err) = fatal {
            tracing::error!(error = %err, ops = count, "write batch failed; rolled back");
            for (reply, result) in results {
                // An op that failed on its own keeps its own, more precise error.
                let _ = reply.send(match result {
                    Ok(_) => Err(err.clone()),
                    Err(own) => Err(own),
                });
            }
            for (_, reply) in jobs {
                let _ = reply.send(Err(err.clone()));
            }
            return;
        }
        tracing::trace!(
            ops = count,
            head_wait_us = waited.as_micros() as u64,
            elapsed_us = started.elapsed().as_micros() as u64,
            "write batch committed"
        );
        for (reply, result) in results {
            // A caller that stopped waiting still had its write committed; nothing to undo.
            let _ = reply.send(result);
        }
    }
}

fn fail_all(jobs: Vec<(Op, Reply)>, err: &StoreError) {
    for (_, reply) in jobs {
        let _ = reply.send(Err(err.clone()));
    }
}

/// Runs one operation inside its own savepoint. The inner result is the operation's; the
/// outer error means the savepoint itself failed and the whole batch must be abandoned.
async fn run_single(
    conn: &mut PgConnection,
    chain: &mut Chain,
    op: Op,
) -> Result<Result<Output, StoreError>, StoreError> {
    let head_before = chain.head.clone();
    let pending_before = chain.pending.len();
    exec(conn, "SAVEPOINT op").await?;
    let outcome = run_op(conn, chain, op).await;
    match &outcome {
        Ok(_) => exec(conn, "RELEASE SAVEPOINT op").await?,
        Err(e) => {
            // A lost connection is not the operation's fault: fail the batch with it.
            if matches!(e, StoreError::Unavailable(_)) {
                return Err(e.clone());
            }
            chain.head = head_before;
            chain.pending.truncate(pending_before);
            exec(conn, "ROLLBACK TO SAVEPOINT op").await?;
            exec(conn, "RELEASE SAVEPOINT op").await?;
        }
    }
    Ok(outcome)
}

/// Records a run of consecutive `record_grant` calls with one multi-row insert per table.
/// Calls that fail their own checks are answered individually; a key conflict anywhere
/// undoes the run and returns `None` so the caller can redo it call by call.
async fn record_grant_run(
    conn: &mut PgConnection,
    chain: &mut Chain,
    run: &[(Op, Reply)],
) -> Result<Option<Vec<Result<Output, StoreError>>>, StoreError> {
    let head_before = chain.head.clone();
    let pending_before = chain.pending.len();
    exec(conn, "SAVEPOINT run").await?;
    match insert_grant_run(conn, chain, run).await {
        Ok(outcomes) => {
            exec(conn, "RELEASE SAVEPOINT run").await?;
            Ok(Some(outcomes))
        }
        Err(e @ StoreError::Unavailable(_)) => Err(e),
        Err(e) => {
            tracing::debug!(error = %e, calls = run.len(), "grouped grant insert failed; retrying one by one");
            chain.head = head_before;
            chain.pending.truncate(pending_before);
            exec(conn, "ROLLBACK TO SAVEPOINT run").await?;
            exec(conn, "RELEASE SAVEPOINT run").await?;
            Ok(None)
        }
    }
}

/// Column arrays for [`sql::INSERT_GRANTS_UNNEST`].
#[derive(Default)]
struct GrantColumns {
    id: Vec<String>,
    identity: Vec<String>,
    owner: Vec<String>,
    target: Vec<String>,
    action: Vec<String>,
    purpose: Vec<String>,
    task: Vec<String>,
    requested_ttl_s: Vec<i64>,
    granted_ttl_s: Vec<Option<i64>>,
    context: Vec<String>,
    state: Vec<String>,
    revocation_reason: Vec<Option<String>>,
    decision: Vec<String>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
}

impl GrantColumns {
    fn push(&mut self, g: &Grant) -> Result<(), StoreError> {
        self.id.push(g.id.to_string());
        self.identity.push(g.identity.clone());
        self.owner.push(g.owner.clone());
        self.target.push(g.target.clone());
        self.action.push(g.action.clone());
        self.purpose.push(g.purpose.clone());
        self.task.push(g.task.clone());
        self.requested_ttl_s.push(ttl_secs(g.requested_ttl));
        self.granted_ttl_s.push(g.granted_ttl.map(ttl_secs));
        self.context.push(to_json("context", &g.context)?);
        self.state.push(g.state.as_str().to_string());
        self.revocation_reason
            .push(g.revocation_reason.map(|r| r.as_str().to_string()));
        self.decision.push(to_json("decision", &g.decision)?);
        self.created_at.push(to_unix_ms(g.created_at));
        self.updated_at.push(to_unix_ms(g.updated_at));
        Ok(())
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_GRANTS_UNNEST)
            .bind(self.id)
            .bind(self.identity)
            .bind(self.owner)
            .bind(self.target)
            .bind(self.action)
            .bind(self.purpose)
            .bind(self.task)
            .bind(self.requested_ttl_s)
            .bind(self.granted_ttl_s)
            .bind(self.context)
            .bind(self.state)
            .bind(self.revocation_reason)
            .bind(self.decision)
            .bind(self.created_at)
            .bind(self.updated_at)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }
}

/// Column arrays for [`sql::INSERT_LEASES_UNNEST`].
#[derive(Default)]
struct LeaseColumns {
    id: Vec<String>,
    grant_id: Vec<String>,
    kind: Vec<String>,
    identity: Vec<String>,
    owner: Vec<String>,
    target: Vec<String>,
    task: Vec<String>,
    issued_at: Vec<i64>,
    expires_at: Vec<i64>,
    max_expires_at: Vec<i64>,
    state: Vec<String>,
    revocation_reason: Vec<Option<String>>,
    external: Vec<bool>,
    provider_state: Vec<String>,
    revoke_attempts: Vec<i64>,
    last_error: Vec<Option<String>>,
    next_attempt_at: Vec<Option<i64>>,
}

impl LeaseColumns {
    fn push(&mut self, owner: &str, l: &Lease, now_ms: i64) -> Result<(), StoreError> {
        self.id.push(l.id.to_string());
        self.grant_id.push(l.grant_id.to_string());
        self.kind.push(l.kind.clone());
        self.identity.push(l.identity.clone());
        self.owner.push(owner.to_string());
        self.target.push(l.target.clone());
        self.task.push(l.task.clone());
        self.issued_at.push(to_unix_ms(l.issued_at));
        self.expires_at.push(to_unix_ms(l.expires_at));
        self.max_expires_at.push(to_unix_ms(l.max_expires_at));
        self.state.push(l.state.as_str().to_string());
        self.revocation_reason
            .push(l.revocation_reason.map(|r| r.as_str().to_string()));
        self.external.push(l.external);
        self.provider_state
            .push(to_json("provider_state", &l.provider_state)?);
        self.revoke_attempts.push(i64::from(l.revoke_attempts));
        self.last_error.push(l.last_error.clone());
        self.next_attempt_at
            .push((l.state == LeaseState::Revoking).then_some(now_ms));
        Ok(())
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_LEASES_UNNEST)
            .bind(self.id)
            .bind(self.grant_id)
            .bind(self.kind)
            .bind(self.identity)
            .bind(self.owner)
            .bind(self.target)
            .bind(self.task)
            .bind(self.issued_at)
            .bind(self.expires_at)
            .bind(self.max_expires_at)
            .bind(self.state)
            .bind(self.revocation_reason)
            .bind(self.external)
            .bind(self.provider_state)
            .bind(self.revoke_attempts)
            .bind(self.last_error)
            .bind(self.next_attempt_at)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }
}

async fn insert_grant_run(
    conn: &mut PgConnection,
    chain: &mut Chain,
    run: &[(Op, Reply)],
) -> Result<Vec<Result<Output, StoreError>>, StoreError> {
    let items: Vec<(&Grant, Option<&Lease>, &[AuditDraft])> = run
        .iter()
        .filter_map(|(op, _)| match op {
            Op::RecordGrant(g, l, e) => Some((&**g, l.as_deref(), e.as_slice())),
            _ => None,
        })
        .collect();
    if items.len() != run.len() {
        return Err(StoreError::Backend(
            "a grant run holds another operation".into(),
        ));
    }
    let mut outcomes: Vec<Result<Output, StoreError>> = items
        .iter()
        .map(|(g, l, _)| match l {
            Some(l) => lease_matches_grant(g, l).map(|()| Output::Unit),
            None => Ok(Output::Unit),
        })
        .collect();

    let live: Vec<String> = items
        .iter()
        .zip(&outcomes)
        .filter_map(|((_, l, _), ok)| match (l, ok) {
            (Some(l), Ok(_)) if is_live(l) => Some(l.identity.clone()),
            _ => None,
        })
        .collect();
    if !live.is_empty() {
        // Under the head lock: a kill switch on any replica committed before this, or
        // commits after it and revokes what this inserts.
        let disabled: Vec<String> = sqlx::query_scalar(sql::DISABLED_AMONG)
            .bind(live)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        if !disabled.is_empty() {
            for ((_, l, _), outcome) in items.iter().zip(outcomes.iter_mut()) {
                if let (Some(l), Ok(_)) = (l, &outcome) {
                    if is_live(l) && disabled.contains(&l.identity) {
                        *outcome = Err(identity_disabled(&l.identity));
                    }
                }
            }
        }
    }

    let now_ms = to_unix_ms(core_now());
    let mut grants = GrantColumns::default();
    let mut leases = LeaseColumns::default();
    for ((g, l, _), outcome) in items.iter().zip(&outcomes) {
        if outcome.is_err() {
            continue;
        }
        grants.push(g)?;
        if let Some(l) = l {
            leases.push(&g.owner, l, now_ms)?;
        }
    }
    if !grants.id.is_empty() {
        grants.insert(conn).await?;
    }
    if !leases.id.is_empty() {
        leases.insert(conn).await?;
    }
    let at = core_now();
    for ((_, _, events), outcome) in items.iter().zip(&outcomes) {
        if outcome.is_ok() {
            for e in events.iter() {
                chain.append(e.clone(), at);
            }
        }
    }
    Ok(outcomes)
}

fn is_live(l: &Lease) -> bool {
    matches!(l.state, LeaseState::Active | LeaseState::Creating)
}

fn lease_matches_grant(g: &Grant, l: &Lease) -> Result<(), StoreError> {
    if l.grant_id == g.id {
        Ok(())
    } else {
        Err(StoreError::Rejected(CoreError::invalid(
            "lease.grant_id",
            format!("lease {} names grant {}, not {}", l.id, l.grant_id, g.id),
        )))
    }
}

fn identity_disabled(identity: &str) -> StoreError {
    StoreError::Rejected(CoreError::invalid(
        "identity",
        format!("identity {identity:?} is disabled; no lease can be issued to it"),
    ))
}

/// Inserts the batch's sealed rows and records the new head, inside the batch's
/// transaction (so the head never points past what committed).
async fn flush_audit(
    conn: &mut PgConnection,
    chain: &mut Chain,
    batch_head: &Head,
) -> Result<(), StoreError> {
    for chunk in chain.pending.chunks(AUDIT_CHUNK) {
        insert_audit_rows(conn, chunk).await?;
    }
    chain.pending.clear();
    if chain.head == *batch_head {
        return Ok(());
    }
    sqlx::query(sql::SET_AUDIT_HEAD)
        .bind(i64::try_from(chain.head.seq).unwrap_or(i64::MAX))
        .bind(chain.head.hash.as_str())
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

/// Inserts sealed rows with one `UNNEST` statement.
async fn insert_audit_rows(conn: &mut PgConnection, rows: &[SealedRow]) -> Result<(), StoreError> {
    let mut seq = Vec::with_capacity(rows.len());
    let mut at = Vec::with_capacity(rows.len());
    let mut kind = Vec::with_capacity(rows.len());
    let mut identity = Vec::with_capacity(rows.len());
    let mut task = Vec::with_capacity(rows.len());
    let mut grant = Vec::with_capacity(rows.len());
    let mut body = Vec::with_capacity(rows.len());
    let mut hash = Vec::with_capacity(rows.len());
    for r in rows {
        seq.push(r.seq);
        at.push(r.at_ms);
        kind.push(r.kind);
        identity.push(r.identity.as_deref());
        task.push(r.task.as_deref());
        grant.push(r.grant_id.as_deref());
        body.push(r.body.as_str());
        hash.push(r.hash.as_str());
    }
    sqlx::query(sql::INSERT_AUDIT)
        .bind(seq)
        .bind(at)
        .bind(kind)
        .bind(identity)
        .bind(task)
        .bind(grant)
        .bind(body)
        .bind(hash)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(map_sqlx)
}

async fn run_op(conn: &mut PgConnection, chain: &mut Chain, op: Op) -> Result<Output, StoreError> {
    match op {
        Op::CreateIdentity(identity, event) => {
            create_identity(conn, &identity).await?;
            chain.append(event, core_now());
            Ok(Output::Unit)
        }
        Op::EnableIdentity(id, event) => {
            let row = sqlx::query(sql::ENABLE_IDENTITY)
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?
                .ok_or(StoreError::NotFound {
                    what: "identity",
                    id,
                })?;
            let identity = identity_from_row(&row)?;
            chain.append(event, core_now());
            Ok(Output::Identity(identity))
        }
        Op::DisableIdentity { id, actor, now } => {
            let owner: String = sqlx::query_scalar(sql::DISABLE_IDENTITY)
                .bind(&id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?
                .ok_or_else(|| StoreError::NotFound {
                    what: "identity",
                    id: id.clone(),
                })?;
            let reason = RevocationReason::IdentityDisabled;
            let selector = LeaseSelector::Identity(id.clone());
            let ended = end_leases(conn, &selector, reason, now).await?;
            let outcome = count(&ended);
            chain.append(events::identity_disabled(id, owner, outcome, &actor), now);
            finish_revocation(conn, chain, &ended, reason, &selector, &actor, now).await?;
            Ok(Output::Outcome(outcome))
        }
        Op::CreateTarget(target, sealed, event) => {
            create_target(conn, &target).await?;
            if let Some(sealed) = sealed {
                put_target_secret(conn, &target.name, &sealed).await?;
            }
            chain.append(event, core_now());
            Ok(Output::Unit)
        }
        Op::SetTargetSecret {
            name,
            sealed,
            event,
        } => {
            let exists: Option<i64> = sqlx::query_scalar(sql::TARGET_EXISTS)
                .bind(&name)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            if exists.is_none() {
                return Err(StoreError::NotFound {
                    what: "target",
                    id: name,
                });
            }
            put_target_secret(conn, &name, &sealed).await?;
            chain.append(event, core_now());
            Ok(Output::Unit)
        }
        Op::BeginRootRotation { name, sealed } => {
            require_target(conn, &name).await?;
            let recorded = sqlx::query(sql::BEGIN_ROOT_ROTATION)
                .bind(&name)
                .bind(&sealed)
                .bind(to_unix_ms(core_now()))
                .execute(&mut *conn)
                .await
                .map_err(map_sqlx)?
                .rows_affected();
            if recorded == 0 {
                return Err(StoreError::Conflict {
                    what: "root rotation of target",
                    id: name,
                });
            }
            Ok(Output::Unit)
        }
        Op::CommitRootRotation {
            name,
            sealed,
            event,
        } => {
            require_target(conn, &name).await?;
            put_target_secret(conn, &name, &sealed).await?;
            end_root_rotation(conn, &name, &sealed).await?;
            chain.append(event, core_now());
            Ok(Output::Unit)
        }
        Op::AbandonRootRotation {
            name,
            sealed,
            event,
        } => {
            if end_root_rotation(conn, &name, &sealed).await? == 0 {
                return Err(StoreError::NotFound {
                    what: "root rotation of target",
                    id: name,
                });
            }
            chain.append(event, core_now());
            Ok(Output::Unit)
        }
        Op::ActivateLease {
            id,
            provider_state,
            event,
        } => {
            let row = sqlx::query(sql::ACTIVATE_LEASE)
                .bind(id.to_string())
                .bind(to_json("provider_state", &provider_state)?)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?
                .ok_or_else(|| not_in_state(id, "creating"))?;
            let LeaseRow { lease, owner } = lease_from_row(&row)?;
            set_grant(conn, sql::ISSUE_GRANT, lease.grant_id).await?;
            let mut event = event.for_lease(&lease);
            event.owner = Some(owner);
            chain.append(event, core_now());
            Ok(Output::Lease(lease))
        }
        Op::AbandonLease {
            id,
            cleaned,
            error,
            actor,
            now,
        } => {
            let row = sqlx::query(sql::ABANDON_LEASE)
                .bind(id.to_string())
                .bind(cleaned)
                .bind(&error)
                .bind(to_unix_ms(now))
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?
                .ok_or_else(|| not_in_state(id, "creating"))?;
            let LeaseRow { lease, owner } = lease_from_row(&row)?;
            set_grant(conn, sql::FAIL_GRANT, lease.grant_id).await?;
            for event in events::issuance_abandoned(&lease, &owner, &error, cleaned, &actor) {
                chain.append(event, now);
            }
            Ok(Output::Lease(lease))
        }
        Op::CompleteRevocation { id, actor, now } => {
            let Some(row) = sqlx::query(sql::COMPLETE_REVOCATION)
                .bind(id.to_string())
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?
            else {
                return Ok(Output::MaybeLease(None));
            };
            let LeaseRow { lease, owner } = lease_from_row(&row)?;
            let reason = lease.revocation_reason.unwrap_or(RevocationReason::Admin);
            let statement = if lease.state == LeaseState::Expired {
                sql::EXPIRE_GRANTS
            } else {
                sql::REVOKE_GRANTS
            };
            update_grants(
                conn,
                statement,
                reason,
                now,
                vec![lease.grant_id.to_string()],
            )
            .await?;
            chain.append(
                events::revocation_completed(&lease, owner, reason, &actor),
                now,
            );
            Ok(Output::MaybeLease(Some(lease)))
        }
        Op::RevocationFailed {
            id,
            error,
            next_attempt,
            actor,
            now,
        } => {
            let row = sqlx::query(sql::REVOCATION_FAILED)
                .bind(id.to_string())
                .bind(&error)
                .bind(to_unix_ms(next_attempt))
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?
                .ok_or_else(|| not_in_state(id, "revoking"))?;
            let LeaseRow { lease, owner } = lease_from_row(&row)?;
            chain.append(
                events::revocation_failed(&lease, owner, &error, next_attempt, &actor),
                now,
            );
            Ok(Output::Unit)
        }
        Op::RecordGrant(grant, lease, events) => {
            record_grant(conn, &grant, lease.as_deref()).await?;
            let at = core_now();
            for event in events {
                chain.append(event, at);
            }
            Ok(Output::Unit)
        }
        Op::RenewLease {
            id,
            requested,
            actor,
            now,
        } => renew_lease(conn, chain, id, requested, &actor, now)
            .await
            .map(Output::Lease),
        Op::Revoke {
            selector,
            reason,
            actor,
            now,
        } => {
            let started = Instant::now();
            let ended = end_leases(conn, &selector, reason, now).await?;
            finish_revocation(conn, chain, &ended, reason, &selector, &actor, now).await?;
            tracing::debug!(
                selector = %selector,
                leases = ended.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "revoked"
            );
            Ok(Output::Outcome(count(&ended)))
        }
        Op::ExpireDue { now, limit } => expire_due(conn, chain, now, limit)
            .await
            .map(Output::Leases),
        Op::AppendAudit(events) => {
            chain.append_all(events, core_now()).await?;
            Ok(Output::Unit)
        }
        Op::AddSigningKey(key, retire_active, event) => {
            add_signing_key(conn, &key, retire_active).await?;
            chain.append(event, core_now());
            Ok(Output::Unit)
        }
    }
}

async fn create_identity(conn: &mut PgConnection, i: &Identity) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_IDENTITY)
        .bind(&i.id)
        .bind(identity_kind_text(i)?)
        .bind(&i.owner)
        .bind(&i.purpose)
        .bind(i.expires_at.map(to_unix_ms))
        .bind(to_json("labels", &i.labels)?)
        .bind(i.enabled)
        .bind(to_unix_ms(i.created_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_or(e, "identity", &i.id))?;
    Ok(())
}

async fn create_target(conn: &mut PgConnection, t: &Target) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_TARGET)
        .bind(&t.name)
        .bind(&t.kind)
        .bind(to_json("actions", &t.actions)?)
        .bind(ttl_secs(t.default_ttl))
        .bind(ttl_secs(t.max_ttl))
        .bind(to_json("allow", &t.allow)?)
        .bind(to_json("settings", &t.settings)?)
        .bind(to_unix_ms(t.created_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_or(e, "target", &t.name))?;
    Ok(())
}

async fn record_grant(
    conn: &mut PgConnection,
    g: &Grant,
    lease: Option<&Lease>,
) -> Result<(), StoreError> {
    if let Some(l) = lease {
        lease_matches_grant(g, l)?;
        // Under the head lock, so the kill switch on any replica is either visible here
        // or commits after this and revokes what this inserts.
        if is_live(l) {
            let enabled: Option<bool> = sqlx::query_scalar(sql::IDENTITY_ENABLED)
                .bind(&l.identity)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            if enabled == Some(false) {
                return Err(identity_disabled(&l.identity));
            }
        }
    }
    sqlx::query(sql::INSERT_GRANT)
        .bind(g.id.to_string())
        .bind(&g.identity)
        .bind(&g.owner)
        .bind(&g.target)
        .bind(&g.action)
        .bind(&g.purpose)
        .bind(&g.task)
        .bind(ttl_secs(g.requested_ttl))
        .bind(g.granted_ttl.map(ttl_secs))
        .bind(to_json("context", &g.context)?)
        .bind(g.state.as_str())
        .bind(g.revocation_reason.map(|r| r.as_str()))
        .bind(to_json("decision", &g.decision)?)
        .bind(to_unix_ms(g.created_at))
        .bind(to_unix_ms(g.updated_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_or(e, "grant", &g.id.to_string()))?;
    if let Some(l) = lease {
        let next_attempt = (l.state == LeaseState::Revoking).then(|| to_unix_ms(core_now()));
        sqlx::query(sql::INSERT_LEASE)
            .bind(l.id.to_string())
            .bind(l.grant_id.to_string())
            .bind(&l.kind)
            .bind(&l.identity)
            .bind(&g.owner)
            .bind(&l.target)
            .bind(&l.task)
            .bind(to_unix_ms(l.issued_at))
            .bind(to_unix_ms(l.expires_at))
            .bind(to_unix_ms(l.max_expires_at))
            .bind(l.state.as_str())
            .bind(l.revocation_reason.map(|r| r.as_str()))
            .bind(l.external)
            .bind(to_json("provider_state", &l.provider_state)?)
            .bind(i64::from(l.revoke_attempts))
            .bind(l.last_error.as_deref())
            .bind(next_attempt)
            .execute(&mut *conn)
            .await
            .map_err(|e| conflict_or(e, "lease", &l.id.to_string()))?;
    }
    Ok(())
}

async fn renew_lease(
    conn: &mut PgConnection,
    chain: &mut Chain,
    id: Uuid,
    requested: OffsetDateTime,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Lease, StoreError> {
    // Locked, so the expiry read here is the one the update replaces.
    let row = sqlx::query(sql::GET_LEASE_FOR_UPDATE)
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?
        .ok_or_else(|| StoreError::NotFound {
            what: "lease",
            id: id.to_string(),
        })?;
    let LeaseRow { mut lease, owner } = lease_from_row(&row)?;
    if lease.state != LeaseState::Active {
        return Err(StoreError::Rejected(CoreError::invalid(
            "lease",
            format!(
                "lease is {}; only an active lease can be renewed",
                lease.state
            ),
        )));
    }
    if lease.expires_at <= now {
        return Err(StoreError::Rejected(CoreError::invalid(
            "lease",
            format!(
                "lease expired at {}; an expired lease cannot be renewed, request a new grant",
                rfc3339(lease.expires_at)
            ),
        )));
    }
    let from = lease.expires_at;
    let capped = requested > lease.max_expires_at;
    // Never beyond the cap fixed at issue time, never shorter than what was granted.
    let to = requested.min(lease.max_expires_at).max(from);
    let changed = sqlx::query(sql::RENEW_LEASE)
        .bind(id.to_string())
        .bind(to_unix_ms(to))
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?
        .rows_affected();
    if changed != 1 {
        return Err(not_in_state(id, "active"));
    }
    lease.expires_at = to;
    let mut event = AuditDraft::new(AuditKind::LeaseRenewed, actor)
        .for_lease(&lease)
        .detail(serde_json::json!({
            "from": rfc3339(from),
            "to": rfc3339(to),
            "capped": capped,
        }));
    event.owner = Some(owner);
    chain.append(event, now);
    Ok(lease)
}

/// What audit events of a revocation need from each lease it ended.
struct Ended {
    id: Uuid,
    grant_id: Uuid,
    identity: String,
    owner: String,
    target: String,
    task: String,
    state: LeaseState,
}

fn revoke_sql(selector: &LeaseSelector) -> (&'static str, String) {
    match selector {
        LeaseSelector::Lease(id) => (sql::REVOKE_BY_LEASE, id.to_string()),
        LeaseSelector::Grant(id) => (sql::REVOKE_BY_GRANT, id.to_string()),
        LeaseSelector::Task(t) => (sql::REVOKE_BY_TASK, t.clone()),
        LeaseSelector::Identity(i) => (sql::REVOKE_BY_IDENTITY, i.clone()),
        LeaseSelector::Owner(o) => (sql::REVOKE_BY_OWNER, o.clone()),
    }
}

/// Ends every live lease the selector matches with one `UPDATE … RETURNING` and returns
/// what their audit events need. Set-based: 100,000 leases are one statement.
async fn end_leases(
    conn: &mut PgConnection,
    selector: &LeaseSelector,
    reason: RevocationReason,
    now: OffsetDateTime,
) -> Result<Vec<Ended>, StoreError> {
    let (statement, key) = revoke_sql(selector);
    let rows = sqlx::query(statement)
        .bind(&key)
        .bind(reason.as_str())
        .bind(to_unix_ms(now))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let uuid = |row: &sqlx::postgres::PgRow, col: &str| -> Result<Uuid, StoreError> {
        let s: &str = row.try_get(col).map_err(map_sqlx)?;
        Uuid::parse_str(s).map_err(|e| corrupt(col, e))
    };
    rows.iter()
        .map(|row| {
            let external: bool = row.try_get("external").map_err(map_sqlx)?;
            Ok(Ended {
                id: uuid(row, "id")?,
                grant_id: uuid(row, "grant_id")?,
                identity: row.try_get("identity").map_err(map_sqlx)?,
                owner: row.try_get("owner").map_err(map_sqlx)?,
                target: row.try_get("target").map_err(map_sqlx)?,
                task: row.try_get("task").map_err(map_sqlx)?,
                state: if external {
                    LeaseState::Revoking
                } else {
                    LeaseState::Revoked
                },
            })
        })
        .collect()
}

/// Moves the ended leases' issued grants to revoked and audits one event per lease.
async fn finish_revocation(
    conn: &mut PgConnection,
    chain: &mut Chain,
    ended: &[Ended],
    reason: RevocationReason,
    selector: &LeaseSelector,
    actor: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    if ended.is_empty() {
        return Ok(());
    }
    let selector = to_json_value(selector)?;
    let drafts = ended
        .iter()
        .map(|l| {
            let kind = if l.state == LeaseState::Revoking {
                AuditKind::LeaseRevoking
            } else {
                AuditKind::LeaseRevoked
            };
            let mut event = AuditDraft::new(kind, actor).detail(serde_json::json!({
                "reason": reason.as_str(),
                "selector": selector.clone(),
            }));
            event.identity = Some(l.identity.clone());
            event.owner = Some(l.owner.clone());
            event.target = Some(l.target.clone());
            event.task = Some(l.task.clone());
            event.grant_id = Some(l.grant_id);
            event.lease_id = Some(l.id);
            event
        })
        .collect();
    let grants: Vec<String> = ended.iter().map(|l| l.grant_id.to_string()).collect();
    update_grants(conn, sql::REVOKE_GRANTS, reason, now, grants).await?;
    chain.append_all(drafts, now).await
}

async fn require_target(conn: &mut PgConnection, name: &str) -> Result<(), StoreError> {
    let exists: Option<i64> = sqlx::query_scalar(sql::TARGET_EXISTS)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    match exists {
        Some(_) => Ok(()),
        None => Err(StoreError::NotFound {
            what: "target",
            id: name.to_string(),
        }),
    }
}

/// Removes the rotation of `name` that recorded `sealed`; how many rows went (0 or 1).
async fn end_root_rotation(
    conn: &mut PgConnection,
    name: &str,
    sealed: &[u8],
) -> Result<u64, StoreError> {
    sqlx::query(sql::END_ROOT_ROTATION)
        .bind(name)
        .bind(sealed)
        .execute(&mut *conn)
        .await
        .map(|r| r.rows_affected())
        .map_err(map_sqlx)
}

async fn put_target_secret(
    conn: &mut PgConnection,
    name: &str,
    sealed: &[u8],
) -> Result<(), StoreError> {
    sqlx::query(sql::PUT_TARGET_SECRET)
        .bind(name)
        .bind(sealed)
        .bind(to_unix_ms(core_now()))
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(map_sqlx)
}

/// Moves one grant with a single-grant statement (`$1` id, `$2` now).
async fn set_grant(
    conn: &mut PgConnection,
    statement: &str,
    grant_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(statement)
        .bind(grant_id.to_string())
        .bind(to_unix_ms(core_now()))
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(map_sqlx)
}

fn not_in_state(id: Uuid, state: &str) -> StoreError {
    StoreError::Rejected(CoreError::invalid(
        "lease",
        format!("lease {id} is not {state}"),
    ))
}

async fn update_grants(
    conn: &mut PgConnection,
    statement: &str,
    reason: RevocationReason,
    now: OffsetDateTime,
    grant_ids: Vec<String>,
) -> Result<(), StoreError> {
    if grant_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(statement)
        .bind(reason.as_str())
        .bind(to_unix_ms(now))
        .bind(grant_ids)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(map_sqlx)
}

fn count(ended: &[Ended]) -> RevokeOutcome {
    let revoking = ended
        .iter()
        .filter(|l| l.state == LeaseState::Revoking)
        .count() as u64;
    RevokeOutcome {
        revoked: ended.len() as u64 - revoking,
        revoking,
    }
}

async fn expire_due(
    conn: &mut PgConnection,
    chain: &mut Chain,
    now: OffsetDateTime,
    limit: u32,
) -> Result<Vec<Lease>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sql::EXPIRE_DUE)
        .bind(to_unix_ms(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let mut leases = rows
        .iter()
        .map(lease_from_row)
        .collect::<Result<Vec<LeaseRow>, StoreError>>()?;
    // RETURNING yields rows in no promised order; the contract is oldest expiry first.
    leases.sort_by_key(|l| (l.lease.expires_at, l.lease.id));
    // External leases stay covered by their grant until the target confirms removal.
    let ended: Vec<String> = leases
        .iter()
        .filter(|l| !l.lease.external)
        .map(|l| l.lease.grant_id.to_string())
        .collect();
    let now_ms = to_unix_ms(now);
    let drafts = leases
        .iter()
        .map(|LeaseRow { lease, owner }| {
            let mut event = AuditDraft::new(AuditKind::LeaseExpired, "system:expiry")
                .for_lease(lease)
                .detail(serde_json::json!({
                    "reason": RevocationReason::Ttl.as_str(),
                    "expires_at": rfc3339(lease.expires_at),
                    "lag_ms": now_ms - to_unix_ms(lease.expires_at),
                    "state": lease.state.as_str(),
                }));
            event.owner = Some(owner.clone());
            event
        })
        .collect();
    update_grants(conn, sql::EXPIRE_GRANTS, RevocationReason::Ttl, now, ended).await?;
    chain.append_all(drafts, now).await?;
    Ok(leases.into_iter().map(|l| l.lease).collect())
}

async fn add_signing_key(
    conn: &mut PgConnection,
    key: &SigningKeyRecord,
    retire_active: Option<OffsetDateTime>,
) -> Result<(), StoreError> {
    if let Some(publish_until) = retire_active {
        sqlx::query(sql::RETIRE_ACTIVE_KEY)
            .bind(to_unix_ms(key.created_at))
            .bind(to_unix_ms(publish_until))
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
    }
    let result = sqlx::query(sql::INSERT_SIGNING_KEY)
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(to_json("public_jwk", &key.public_jwk)?)
        .bind(&key.private_sealed)
        .bind(to_unix_ms(key.created_at))
        .bind(key.retired_at.map(to_unix_ms))
        .bind(key.publish_until.map(to_unix_ms))
        .execute(&mut *conn)
        .await;
    match result {
        Ok(_) => Ok(()),
        // The partial unique index allows one active key; adding a second without
        // retiring the first is a conflict with that key, not with this kid.
        Err(sqlx::Error::Database(db))
            if db.is_unique_violation() && db.constraint() == Some("signing_keys_one_active") =>
        {
            Err(StoreError::Conflict {
                what: "active signing key (retire it first)",
                id: key.kid.clone(),
            })
        }
        Err(e) => Err(conflict_or(e, "signing key", &key.kid)),
    }
}

/// Inserts an operator token (no audit event, so outside the batches).
pub(crate) async fn add_operator_token(
    pool: &PgPool,
    token: &OperatorTokenRecord,
) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_OPERATOR_TOKEN)
        .bind(&token.name)
        .bind(&token.token_sha256)
        .bind(to_unix_ms(token.created_at))
        .execute(pool)
        .await
        // Named by the token's name only: the hash identifies a secret.
        .map_err(|e| conflict_or(e, "operator token", &token.name))?;
    Ok(())
}

fn to_json_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Backend(format!("encoding audit detail: {e}")))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| to_unix_ms(t).to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
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
        let mut draft = AuditDraft::new(AuditKind::LeaseExpired, "system:expiry")
            .detail(serde_json::json!({"reason": "ttl", "z": [1, {"b": 2, "a": 1}]}));
        draft.identity = Some("agent".into());
        draft.owner = Some("team".into());
        draft.task = Some("t".into());
        draft.grant_id = Some(Uuid::new_v4());
        draft.lease_id = Some(Uuid::new_v4());
        let expected = draft.clone().seal(42, at, &head.hash);
        let row = seal_next(&mut head, draft, at);
        assert_eq!(row.seq, 42);
        assert_eq!(row.hash, expected.hash);
        assert_eq!(row.body, expected.canonical_body());
        assert_eq!(row.kind, "lease.expired");
        assert_eq!(row.at_ms, to_unix_ms(at));
        assert_eq!(row.grant_id, expected.grant_id.map(|g| g.to_string()));
        assert_eq!(
            head,
            Head {
                seq: 42,
                hash: expected.hash
            }
        );
    }
}
