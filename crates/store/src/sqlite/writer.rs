//! The single writer: every mutation goes through one task that owns the one write
//! connection and commits in groups.
//!
//! SQLite allows one writer at a time anyway; funnelling writes through a task turns lock
//! contention into a queue, and lets one `COMMIT` (one fsync under `Durability::Fsync`)
//! acknowledge everything that queued up while the previous commit was flushing. That is
//! what makes thousands of grants per second possible on a single disk.
//!
//! Each operation runs inside its own `SAVEPOINT`, so one failing operation (a conflict, a
//! rejected renewal) is rolled back alone while the rest of its group commits. The writer
//! also owns the head of the audit chain: it assigns sequence numbers and `prev_hash` in
//! commit order, which is only sound because nobody else appends.

use std::sync::Arc;
use std::time::Instant;

use mayfly_core::audit::{hash_entry, AuditDraft, AuditEvent, AuditKind};
use mayfly_core::model::{
    Grant, Identity, Lease, LeaseSelector, LeaseState, RevocationReason, Target,
};
use mayfly_core::store::{OperatorTokenRecord, RevokeOutcome, SigningKeyRecord, StoreError};
use mayfly_core::{now as core_now, to_unix_ms, CoreError, OffsetDateTime, Uuid};
use sqlx::pool::PoolConnection;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::error::{conflict_or, corrupt, map_sqlx};
use super::registry::{Changed, Registry};
use super::rows::{
    identity_from_row, identity_kind_text, lease_from_row, to_json, ttl_secs, LeaseRow,
};
use super::sql;
use crate::events;

/// From this many events on, sealing runs on a blocking thread alongside database work.
const PIPELINE_MIN: usize = 512;
/// Rows handed from the sealing thread to the inserter at a time.
const SEAL_CHUNK: usize = 1024;

/// Most operations committed together. Bounded so one commit's latency stays small and a
/// burst cannot hold the write lock for long.
const MAX_BATCH: usize = 256;

/// A mutation, with everything it needs to run inside the writer.
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
    ClaimRevocations {
        now: OffsetDateTime,
        limit: u32,
        until: OffsetDateTime,
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
    AddOperatorToken(OperatorTokenRecord),
}

impl Op {
    /// The identity or target record this operation changes, if any.
    fn changes(&self) -> Option<Changed> {
        match self {
            Op::CreateIdentity(identity, _) => Some(Changed::Identity(identity.id.clone())),
            Op::EnableIdentity(id, _) | Op::DisableIdentity { id, .. } => {
                Some(Changed::Identity(id.clone()))
            }
            Op::CreateTarget(target, ..) => Some(Changed::Target(target.name.clone())),
            _ => None,
        }
    }
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
    /// Finish what is queued before this, then stop and close the connection.
    Shutdown(oneshot::Sender<()>),
}

/// The write connection: owned for a database file; borrowed per batch from the single
/// shared connection of an in-memory database (which exists only inside that connection).
pub(crate) enum WriterConn {
    Owned(SqliteConnection),
    Shared(SqlitePool),
}

enum ConnGuard<'a> {
    Owned(&'a mut SqliteConnection),
    Pooled(PoolConnection<Sqlite>),
}

impl ConnGuard<'_> {
    fn conn(&mut self) -> &mut SqliteConnection {
        match self {
            ConnGuard::Owned(c) => c,
            ConnGuard::Pooled(c) => c,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}

/// An audit row sealed in memory, not yet inserted.
struct SealedRow {
    seq: i64,
    at_ms: i64,
    kind: &'static str,
    identity: Option<String>,
    task: Option<String>,
    grant_id: Option<String>,
    body: String,
    hash: String,
}

/// The chain head plus the rows sealed in the current batch but not yet inserted.
struct Chain {
    head: Head,
    pending: Vec<SealedRow>,
}

/// Places `draft` after `head` and advances `head`.
///
/// Equivalent to [`AuditDraft::seal`] (a test holds them equal), but keeps the canonical
/// body it hashes: `seal` would compute it for the hash and we would compute it again to
/// store it, and serialising is most of the cost of a bulk revocation.
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

impl Chain {
    fn append(&mut self, draft: AuditDraft, at: OffsetDateTime) {
        let row = seal_next(&mut self.head, draft, at);
        self.pending.push(row);
    }

    /// Appends many events, overlapping the CPU-bound sealing (on a blocking thread) with
    /// `concurrently`'s database work and then inserting rows as they are sealed. Small
    /// sets are sealed inline: a thread hand-off costs more than it saves.
    async fn append_all<F>(
        &mut self,
        conn: &mut SqliteConnection,
        drafts: Vec<AuditDraft>,
        at: OffsetDateTime,
        concurrently: F,
    ) -> Result<(), StoreError>
    where
        F: AsyncFnOnce(&mut SqliteConnection) -> Result<(), StoreError>,
    {
        if drafts.len() < PIPELINE_MIN {
            concurrently(conn).await?;
            for d in drafts {
                self.append(d, at);
            }
            return Ok(());
        }
        // Unbounded: the sealer must never wait for the inserter, which is busy with the
        // updates until they finish. The operation holds its drafts in memory already; the
        // queued rows are the same data in their final form.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let mut head = self.head.clone();
        // Sealing is sequential (each entry hashes the previous one) but needs no database,
        // so it runs on another core while this task drives SQLite.
        let sealer = tokio::task::spawn_blocking(move || -> Result<Head, StoreError> {
            let mut chunk = Vec::with_capacity(SEAL_CHUNK);
            let mut drafts = drafts.into_iter().peekable();
            while let Some(d) = drafts.next() {
                chunk.push(seal_next(&mut head, d, at));
                if chunk.len() == SEAL_CHUNK || drafts.peek().is_none() {
                    let json = rows_json(&chunk)?;
                    chunk.clear();
                    // The receiver is gone only if the operation already failed.
                    if tx.send(json).is_err() {
                        break;
                    }
                }
            }
            Ok(head)
        });
        concurrently(conn).await?;
        while let Some(json) = rx.recv().await {
            insert_audit_json(conn, json).await?;
        }
        // Only now does the chain move: on any error above, the head stays where the
        // savepoint rollback puts the rows back to.
        self.head = sealer
            .await
            .map_err(|e| StoreError::Backend(format!("the audit sealing task failed: {e}")))??;
        Ok(())
    }
}

pub(crate) struct Writer {
    conn: WriterConn,
    chain: Chain,
    registry: Arc<Registry>,
}

async fn load_head(conn: &mut SqliteConnection) -> Result<Head, StoreError> {
    let row = sqlx::query(sql::AUDIT_HEAD)
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

async fn exec(conn: &mut SqliteConnection, statement: &str) -> Result<(), StoreError> {
    // Prepared once and cached by the connection; these run several times per batch.
    sqlx::query(statement)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(map_sqlx)
}

impl Writer {
    pub(crate) async fn new(
        mut conn: WriterConn,
        registry: Arc<Registry>,
    ) -> Result<Writer, StoreError> {
        let head = {
            let mut guard = acquire(&mut conn).await?;
            load_head(guard.conn()).await?
        };
        Ok(Writer {
            conn,
            chain: Chain {
                head,
                pending: Vec::new(),
            },
            registry,
        })
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(first) = rx.recv().await {
            let mut jobs = Vec::new();
            let mut shutdown = None;
            match first {
                Msg::Job(op, reply) => jobs.push((*op, reply)),
                Msg::Shutdown(ack) => shutdown = Some(ack),
            }
            // Everything that queued while the last commit was flushing joins this one.
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
                self.close().await;
                let _ = ack.send(());
                return;
            }
        }
        self.close().await;
    }

    async fn close(self) {
        match self.conn {
            WriterConn::Owned(conn) => {
                use sqlx::Connection;
                if let Err(e) = conn.close().await {
                    tracing::warn!(error = %e, "closing the SQLite write connection failed");
                }
            }
            // The pool is closed by the store, which shares it for reads.
            WriterConn::Shared(_) => {}
        }
    }

    async fn run_batch(&mut self, jobs: Vec<(Op, Reply)>) {
        let started = Instant::now();
        let count = jobs.len();
        let changed: Vec<Changed> = jobs.iter().filter_map(|(op, _)| op.changes()).collect();
        let Writer {
            conn,
            chain,
            registry,
        } = self;

        let mut guard = match acquire(conn).await {
            Ok(g) => g,
            Err(e) => return fail_all(jobs, &e),
        };
        let conn = guard.conn();
        let batch_head = chain.head.clone();

        // IMMEDIATE takes the write lock now, so no statement inside can hit SQLITE_BUSY
        // halfway through and leave the batch partly applied.
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
            return fail_all(jobs, &e);
        }

        let mut results: Vec<(Reply, Result<Output, StoreError>)> = Vec::with_capacity(count);
        let mut fatal: Option<StoreError> = None;
        let mut jobs = jobs.into_iter().peekable();
        while fatal.is_none() {
            let Some((op, reply)) = jobs.next() else {
                break;
            };
            let is_grant = |job: &(Op, Reply)| matches!(job.0, Op::RecordGrant(..));
            if matches!(op, Op::RecordGrant(..)) && jobs.peek().is_some_and(is_grant) {
                let mut run = vec![(op, reply)];
                while let Some(job) = jobs.next_if(is_grant) {
                    run.push(job);
                }
                match record_grant_run(conn, chain, &run).await {
                    Ok(Some(outcomes)) => {
                        for ((_, reply), outcome) in run.into_iter().zip(outcomes) {
                            results.push((reply, outcome));
                        }
                    }
                    // The multi-row insert hit a conflict: redo the run one by one so only
                    // the conflicting calls fail.
                    Ok(None) => {
                        for (op, reply) in run {
                            if let Some(e) = &fatal {
                                results.push((reply, Err(e.clone())));
                                continue;
                            }
                            match run_single(conn, chain, op).await {
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
            match run_single(conn, chain, op).await {
                Ok(outcome) => results.push((reply, outcome)),
                Err(e) => {
                    results.push((reply, Err(e.clone())));
                    fatal = Some(e);
                }
            }
        }

        if fatal.is_none() {
            if let Err(e) = flush_audit(conn, chain, &batch_head).await {
                fatal = Some(e);
            }
        }
        if fatal.is_none() {
            if let Err(e) = exec(conn, "COMMIT").await {
                fatal = Some(e);
            }
        }

        if let Some(err) = fatal {
            tracing::error!(error = %err, ops = count, "write batch failed; rolling back");
            // Best effort: after a failed COMMIT the transaction may already be gone.
            let _ = exec(conn, "ROLLBACK").await;
            chain.pending.clear();
            chain.head = match load_head(conn).await {
                Ok(head) => head,
                Err(e) => {
                    tracing::error!(error = %e, "re-reading the audit head failed");
                    batch_head
                }
            };
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

        chain.pending.clear();
        drop(guard);
        // Before anyone hears back, so nobody who knows of the change is served a copy
        // from before it (see the registry module). A rolled-back batch changed nothing.
        registry.invalidate(&changed);
        tracing::trace!(
            ops = count,
            elapsed_us = started.elapsed().as_micros() as u64,
            "write batch committed"
        );
        for (reply, result) in results {
            // A caller that stopped waiting still had its write committed; nothing to undo.
            let _ = reply.send(result);
        }
    }
}

async fn acquire(conn: &mut WriterConn) -> Result<ConnGuard<'_>, StoreError> {
    match conn {
        WriterConn::Owned(c) => Ok(ConnGuard::Owned(c)),
        WriterConn::Shared(pool) => pool
            .acquire()
            .await
            .map(ConnGuard::Pooled)
            .map_err(map_sqlx),
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
    conn: &mut SqliteConnection,
    chain: &mut Chain,
    op: Op,
) -> Result<Result<Output, StoreError>, StoreError> {
    let head_before = chain.head.clone();
    let pending_before = chain.pending.len();
    exec(conn, "SAVEPOINT op").await?;
    let outcome = run_op(conn, chain, op).await;
    match &outcome {
        Ok(_) => exec(conn, "RELEASE op").await?,
        Err(_) => {
            chain.head = head_before;
            chain.pending.truncate(pending_before);
            exec(conn, "ROLLBACK TO op").await?;
            exec(conn, "RELEASE op").await?;
        }
    }
    Ok(outcome)
}

/// Records a run of consecutive `record_grant` calls with one multi-row insert per table.
///
/// Under load most of a batch is grants, and every statement is a round trip to SQLite's
/// thread, so this turns five statements per grant into five per run. Calls that fail
/// their own checks (mismatched lease, disabled identity) are answered individually here;
/// a key conflict anywhere undoes the run and returns `None` so the caller can redo it
/// call by call and fail only the conflicting one.
async fn record_grant_run(
    conn: &mut SqliteConnection,
    chain: &mut Chain,
    run: &[(Op, Reply)],
) -> Result<Option<Vec<Result<Output, StoreError>>>, StoreError> {
    let head_before = chain.head.clone();
    let pending_before = chain.pending.len();
    exec(conn, "SAVEPOINT run").await?;
    match insert_grant_run(conn, chain, run).await {
        Ok(outcomes) => {
            exec(conn, "RELEASE run").await?;
            Ok(Some(outcomes))
        }
        Err(e) => {
            tracing::debug!(error = %e, calls = run.len(), "grouped grant insert failed; retrying one by one");
            chain.head = head_before;
            chain.pending.truncate(pending_before);
            exec(conn, "ROLLBACK TO run").await?;
            exec(conn, "RELEASE run").await?;
            Ok(None)
        }
    }
}

async fn insert_grant_run(
    conn: &mut SqliteConnection,
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

    let live: Vec<&str> = items
        .iter()
        .zip(&outcomes)
        .filter_map(|((_, l, _), ok)| match (l, ok) {
            (Some(l), Ok(_)) if is_live(l) => Some(l.identity.as_str()),
            _ => None,
        })
        .collect();
    if !live.is_empty() {
        let json: String = sqlx::query_scalar(sql::DISABLED_AMONG)
            .bind(to_json("identities", &live)?)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_sqlx)?;
        let disabled: Vec<String> =
            serde_json::from_str(&json).map_err(|e| corrupt("disabled identities", e))?;
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
    let mut grant_rows = Vec::with_capacity(items.len());
    let mut lease_rows = Vec::with_capacity(items.len());
    for ((g, l, _), outcome) in items.iter().zip(&outcomes) {
        if outcome.is_err() {
            continue;
        }
        grant_rows.push(grant_json(g)?);
        if let Some(l) = l {
            lease_rows.push(lease_json(g, l, now_ms)?);
        }
    }
    if !grant_rows.is_empty() {
        sqlx::query(sql::INSERT_GRANTS_JSON)
            .bind(to_json("grants", &grant_rows)?)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
    }
    if !lease_rows.is_empty() {
        sqlx::query(sql::INSERT_LEASES_JSON)
            .bind(to_json("leases", &lease_rows)?)
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
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

/// A grant as one row of [`sql::INSERT_GRANTS_JSON`], columns in order.
fn grant_json(g: &Grant) -> Result<serde_json::Value, StoreError> {
    Ok(serde_json::json!([
        g.id.to_string(),
        g.identity,
        g.owner,
        g.target,
        g.action,
        g.purpose,
        g.task,
        ttl_secs(g.requested_ttl),
        g.granted_ttl.map(ttl_secs),
        to_json("context", &g.context)?,
        g.state.as_str(),
        g.revocation_reason.map(|r| r.as_str()),
        to_json("decision", &g.decision)?,
        to_unix_ms(g.created_at),
        to_unix_ms(g.updated_at),
    ]))
}

/// A lease as one row of [`sql::INSERT_LEASES_JSON`]; the owner comes from its grant.
fn lease_json(g: &Grant, l: &Lease, now_ms: i64) -> Result<serde_json::Value, StoreError> {
    Ok(serde_json::json!([
        l.id.to_string(),
        l.grant_id.to_string(),
        l.kind,
        l.identity,
        g.owner,
        l.target,
        l.task,
        to_unix_ms(l.issued_at),
        to_unix_ms(l.expires_at),
        to_unix_ms(l.max_expires_at),
        l.state.as_str(),
        l.revocation_reason.map(|r| r.as_str()),
        i64::from(l.external),
        to_json("provider_state", &l.provider_state)?,
        i64::from(l.revoke_attempts),
        l.last_error,
        (l.state == LeaseState::Revoking).then_some(now_ms),
    ]))
}

/// Inserts the batch's remaining sealed rows and records the new head, inside the batch's
/// transaction. Bulk operations have inserted their own rows already; the head still
/// needs writing for them, hence the comparison rather than a check of `pending`.
async fn flush_audit(
    conn: &mut SqliteConnection,
    chain: &mut Chain,
    batch_head: &Head,
) -> Result<(), StoreError> {
    if !chain.pending.is_empty() {
        insert_audit_json(conn, rows_json(&chain.pending)?).await?;
    }
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

/// Sealed rows as the JSON array [`sql::INSERT_AUDIT`] reads.
fn rows_json(rows: &[SealedRow]) -> Result<String, StoreError> {
    let tuples: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.seq,
                r.at_ms,
                r.kind,
                r.identity.as_deref(),
                r.task.as_deref(),
                r.grant_id.as_deref(),
                r.body.as_str(),
                r.hash.as_str(),
            )
        })
        .collect();
    to_json("audit rows", &tuples)
}

async fn insert_audit_json(conn: &mut SqliteConnection, json: String) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_AUDIT)
        .bind(json)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(map_sqlx)
}

async fn run_op(
    conn: &mut SqliteConnection,
    chain: &mut Chain,
    op: Op,
) -> Result<Output, StoreError> {
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
            let ended = select_live(conn, &selector).await?;
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
                .bind(i64::from(cleaned))
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
        Op::ClaimRevocations { now, limit, until } => {
            let rows = sqlx::query(sql::CLAIM_REVOCATIONS)
                .bind(to_unix_ms(now))
                .bind(to_unix_ms(until))
                .bind(i64::from(limit))
                .fetch_all(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            let leases = rows
                .iter()
                .map(|r| lease_from_row(r).map(|l| l.lease))
                .collect::<Result<Vec<Lease>, StoreError>>()?;
            Ok(Output::Leases(leases))
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
            update_grants(conn, statement, reason, now, &[lease.grant_id.to_string()]).await?;
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
            let ended = select_live(conn, &selector).await?;
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
            let at = core_now();
            for event in events {
                chain.append(event, at);
            }
            Ok(Output::Unit)
        }
        Op::AddSigningKey(key, retire_active, event) => {
            add_signing_key(conn, &key, retire_active).await?;
            chain.append(event, core_now());
            Ok(Output::Unit)
        }
        Op::AddOperatorToken(token) => {
            sqlx::query(sql::INSERT_OPERATOR_TOKEN)
                .bind(&token.name)
                .bind(&token.token_sha256)
                .bind(to_unix_ms(token.created_at))
                .execute(&mut *conn)
                .await
                // Named by the token's name only: the hash identifies a secret.
                .map_err(|e| conflict_or(e, "operator token", &token.name))?;
            Ok(Output::Unit)
        }
    }
}

async fn create_identity(conn: &mut SqliteConnection, i: &Identity) -> Result<(), StoreError> {
    sqlx::query(sql::INSERT_IDENTITY)
        .bind(&i.id)
        .bind(identity_kind_text(i)?)
        .bind(&i.owner)
        .bind(&i.purpose)
        .bind(i.expires_at.map(to_unix_ms))
        .bind(to_json("labels", &i.labels)?)
        .bind(i64::from(i.enabled))
        .bind(to_unix_ms(i.created_at))
        .execute(&mut *conn)
        .await
        .map_err(|e| conflict_or(e, "identity", &i.id))?;
    Ok(())
}

async fn create_target(conn: &mut SqliteConnection, t: &Target) -> Result<(), StoreError> {
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
    conn: &mut SqliteConnection,
    g: &Grant,
    lease: Option<&Lease>,
) -> Result<(), StoreError> {
    if let Some(l) = lease {
        lease_matches_grant(g, l)?;
        // The kill switch and this write are serialised by the writer, so checking here
        // closes the race where a grant decided just before `disable_identity` would
        // otherwise record a live lease just after it.
        if is_live(l) {
            let enabled: Option<i64> = sqlx::query_scalar(sql::IDENTITY_ENABLED)
                .bind(&l.identity)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            if enabled == Some(0) {
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
            .bind(i64::from(l.external))
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
    conn: &mut SqliteConnection,
    chain: &mut Chain,
    id: Uuid,
    requested: OffsetDateTime,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Lease, StoreError> {
    let row = sqlx::query(sql::GET_LEASE)
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
    sqlx::query(sql::RENEW_LEASE)
        .bind(id.to_string())
        .bind(to_unix_ms(to))
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
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

fn revoke_sql(selector: &LeaseSelector) -> (sql::RevokeSql, String) {
    match selector {
        LeaseSelector::Lease(id) => (sql::REVOKE_BY_LEASE, id.to_string()),
        LeaseSelector::Grant(id) => (sql::REVOKE_BY_GRANT, id.to_string()),
        LeaseSelector::Task(t) => (sql::REVOKE_BY_TASK, t.clone()),
        LeaseSelector::Identity(i) => (sql::REVOKE_BY_IDENTITY, i.clone()),
        LeaseSelector::Owner(o) => (sql::REVOKE_BY_OWNER, o.clone()),
    }
}

/// The live leases the selector matches, with the state revocation will give each.
async fn select_live(
    conn: &mut SqliteConnection,
    selector: &LeaseSelector,
) -> Result<Vec<Ended>, StoreError> {
    let (statements, key) = revoke_sql(selector);
    let json: String = sqlx::query_scalar(statements.select)
        .bind(&key)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let live: Vec<(String, String, String, String, String, String, i64)> =
        serde_json::from_str(&json).map_err(|e| corrupt("live leases", e))?;
    let ended = live
        .into_iter()
        .map(|(id, grant_id, identity, owner, target, task, external)| {
            Ok(Ended {
                id: Uuid::parse_str(&id).map_err(|e| corrupt("leases.id", e))?,
                grant_id: Uuid::parse_str(&grant_id).map_err(|e| corrupt("leases.grant_id", e))?,
                identity,
                owner,
                target,
                task,
                state: if external != 0 {
                    LeaseState::Revoking
                } else {
                    LeaseState::Revoked
                },
            })
        })
        .collect::<Result<Vec<Ended>, StoreError>>()?;
    Ok(ended)
}

/// Ends the leases [`select_live`] returned for the same selector.
async fn end_leases(
    conn: &mut SqliteConnection,
    selector: &LeaseSelector,
    expected: usize,
    reason: RevocationReason,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    if expected == 0 {
        return Ok(());
    }
    let (statements, key) = revoke_sql(selector);
    let changed = sqlx::query(statements.update)
        .bind(&key)
        .bind(reason.as_str())
        .bind(to_unix_ms(now))
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?
        .rows_affected();
    // Same condition, same transaction, single writer: anything else is a bug, and
    // auditing leases that were not changed would make the log lie.
    if changed != expected as u64 {
        return Err(StoreError::Backend(format!(
            "revocation selected {expected} leases but changed {changed}"
        )));
    }
    Ok(())
}

/// Ends the selected leases, moves their issued grants to revoked and audits one event
/// per lease; the events are sealed while SQLite applies the updates.
async fn finish_revocation(
    conn: &mut SqliteConnection,
    chain: &mut Chain,
    ended: &[Ended],
    reason: RevocationReason,
    selector: &LeaseSelector,
    actor: &str,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let selector_key = selector;
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
    chain
        .append_all(conn, drafts, now, async |conn: &mut SqliteConnection| {
            end_leases(conn, selector_key, ended.len(), reason, now).await?;
            update_grants(conn, sql::REVOKE_GRANTS, reason, now, &grants).await
        })
        .await
}

/// Moves the given grants from issued to the end state `statement` sets.
async fn require_target(conn: &mut SqliteConnection, name: &str) -> Result<(), StoreError> {
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
    conn: &mut SqliteConnection,
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
    conn: &mut SqliteConnection,
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

/// Moves one grant with a single-grant statement (`?1` id, `?2` now).
async fn set_grant(
    conn: &mut SqliteConnection,
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
    conn: &mut SqliteConnection,
    statement: &str,
    reason: RevocationReason,
    now: OffsetDateTime,
    grant_ids: &[String],
) -> Result<(), StoreError> {
    if grant_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(statement)
        .bind(reason.as_str())
        .bind(to_unix_ms(now))
        .bind(to_json("grant ids", &grant_ids)?)
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
    conn: &mut SqliteConnection,
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
    chain
        .append_all(conn, drafts, now, async |conn: &mut SqliteConnection| {
            update_grants(conn, sql::EXPIRE_GRANTS, RevocationReason::Ttl, now, &ended).await
        })
        .await?;
    Ok(leases.into_iter().map(|l| l.lease).collect())
}

async fn add_signing_key(
    conn: &mut SqliteConnection,
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
            if db.is_unique_violation() && db.message().contains("signing_keys_one_active") =>
        {
            Err(StoreError::Conflict {
                what: "active signing key (retire it first)",
                id: key.kid.clone(),
            })
        }
        Err(e) => Err(conflict_or(e, "signing key", &key.kid)),
    }
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
    fn audit_rows_serialise_as_positional_arrays() {
        let mut head = Head {
            seq: 0,
            hash: mayfly_core::audit::GENESIS_HASH.into(),
        };
        let row = seal_next(
            &mut head,
            AuditDraft::new(AuditKind::AuthFailed, "anonymous"),
            mayfly_core::from_unix_ms(1_000),
        );
        let json: serde_json::Value = serde_json::from_str(&rows_json(&[row]).unwrap()).unwrap();
        let first = &json[0];
        assert_eq!(first[0], 1);
        assert_eq!(first[1], 1_000);
        assert_eq!(first[2], "auth.failed");
        assert!(first[3].is_null() && first[4].is_null() && first[5].is_null());
        assert!(first[6].as_str().unwrap().starts_with('{'));
        assert_eq!(first[7].as_str().unwrap().len(), 64);
    }
}
