//! The PostgreSQL backend, for running many Mayfly replicas on one database.
//!
//! This module owns the connection pool, schema migrations (`migrations/postgres/`) and
//! the read paths; [`writer`] owns every audited write. Nothing a replica needs for
//! correctness lives in its memory: the audit chain head is a row that each write batch
//! locks, work queues are claimed with `FOR UPDATE SKIP LOCKED`, and every state
//! transition re-checks the state it expects. Any number of replicas may open the same
//! database.
//!
//! Durability settings do not apply: PostgreSQL acknowledges a commit once it is durable
//! according to the server's own configuration (`synchronous_commit`, replication).

mod error;
mod rows;
mod sql;
mod writer;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt;
use mayfly_core::audit::{AuditDraft, AuditEvent, ChainVerifier, StoredColumns, VerifyReport};
use mayfly_core::model::{Grant, Identity, Lease, LeaseSelector, RevocationReason, Target};
use mayfly_core::store::{
    AuditFilter, GrantFilter, LeaseFilter, OperatorTokenRecord, PendingRootRotation, RevokeOutcome,
    SigningKeyRecord, Store, StoreError, StoreStats,
};
use mayfly_core::{from_unix_ms, to_unix_ms, OffsetDateTime, Uuid};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, Row};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;

use self::error::{corrupt, map_sqlx, migrate_error, redact};
use self::rows::{
    grant_from_row, identity_from_row, lease_from_row, operator_token_from_row,
    signing_key_from_row, target_from_row,
};
use self::writer::{Msg, Op, Output, Writer};

/// Default and maximum page size of the `list_*` calls (as in SQLite).
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;
/// Connections per replica. Writes use one at a time (they serialise on the chain head
/// anyway); the rest serve reads and the revocation queue.
pub const DEFAULT_POOL_SIZE: u32 = 10;
/// How long an operation waits for a connection before reporting `Unavailable`. Short, so
/// a database outage surfaces quickly instead of piling up requests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// Writes queued beyond this wait for room: back-pressure instead of unbounded memory.
const WRITE_QUEUE: usize = 4096;

/// The PostgreSQL implementation of [`Store`].
pub struct PgStore {
    writer_tx: mpsc::Sender<Msg>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    pool: PgPool,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the URL or options: they may carry the password.
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// The password in a `postgres://user:password@host/db` URL, to keep it out of errors.
/// Also `?password=…` in the query string.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    if let Some(query) = rest.split_once('?').map(|(_, q)| q) {
        if let Some(p) = query.split('&').find_map(|kv| kv.strip_prefix("password=")) {
            return Some(p.to_string());
        }
    }
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    Some(password.to_string())
}

impl PgStore {
    /// Connects to `postgres://…` with [`DEFAULT_POOL_SIZE`] connections and applies the
    /// schema migrations. Safe to call from many replicas at once: the migrator holds a
    /// PostgreSQL advisory lock while it works. Errors never contain the URL's password.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        Self::open_with(url, DEFAULT_POOL_SIZE).await
    }

    /// [`PgStore::open`] with a chosen pool size.
    pub async fn open_with(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let password = url_password(url);
        Self::open_inner(url, max_connections.max(2))
            .await
            .map_err(|e| redact(e, password.as_deref()))
    }

    async fn open_inner(url: &str, max_connections: u32) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?
            .application_name("mayfly")
            .log_statements(tracing::log::LevelFilter::Off);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(map_sqlx)?;
        {
            let mut conn = pool.acquire().await.map_err(map_sqlx)?;
            // `run_direct` rather than `run`: the latter's `Acquire` bound makes this future
            // not `Send`. Both take the migrator's advisory lock.
            sqlx::migrate!("migrations/postgres")
                .run_direct(&mut *conn)
                .await
                .map_err(migrate_error)?;
        }
        let (writer_tx, rx) = mpsc::channel(WRITE_QUEUE);
        let task = tokio::spawn(Writer::new(pool.clone()).run(rx));
        Ok(PgStore {
            writer_tx,
            writer_task: Mutex::new(Some(task)),
            pool,
        })
    }

    /// Finishes queued writes, stops the writer and closes every connection. Later calls
    /// fail with `Unavailable`.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.writer_tx.send(Msg::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        if let Some(task) = self.writer_task.lock().await.take() {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the PostgreSQL writer task ended abnormally");
            }
        }
        self.pool.close().await;
    }

    /// The pool, for [`crate::migrate`].
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn submit(&self, op: Op) -> Result<Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer_tx
            .send(Msg::Job(Box::new(op), reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer has stopped".into()))?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("the store's writer stopped before answering".into())
        })?
    }

    async fn submit_unit(&self, op: Op) -> Result<(), StoreError> {
        match self.submit(op).await? {
            Output::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn submit_lease(&self, op: Op) -> Result<Lease, StoreError> {
        match self.submit(op).await? {
            Output::Lease(l) => Ok(l),
            _ => Err(unexpected()),
        }
    }

    async fn submit_outcome(&self, op: Op) -> Result<RevokeOutcome, StoreError> {
        match self.submit(op).await? {
            Output::Outcome(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> StoreError {
    StoreError::Backend("the store's writer returned a reply of the wrong kind".into())
}

fn limit(l: Option<u32>) -> i64 {
    i64::from(l.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT))
}

/// A nullable text column of a verification row, as the verifier takes it.
fn text_column(row: &sqlx::postgres::PgRow, i: usize) -> Result<Option<&[u8]>, StoreError> {
    let text: Option<&str> = row.try_get(i).map_err(map_sqlx)?;
    Ok(text.map(str::as_bytes))
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        if self.writer_tx.is_closed() {
            return Err(StoreError::Unavailable(
                "the store's writer has stopped".into(),
            ));
        }
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn create_identity(
        &self,
        identity: &Identity,
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::CreateIdentity(Box::new(identity.clone()), event))
            .await
    }

    async fn get_identity(&self, id: &str) -> Result<Option<Identity>, StoreError> {
        sqlx::query(sql::GET_IDENTITY)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .as_ref()
            .map(identity_from_row)
            .transpose()
    }

    async fn list_identities(&self) -> Result<Vec<Identity>, StoreError> {
        sqlx::query(sql::LIST_IDENTITIES)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(identity_from_row)
            .collect()
    }

    async fn enable_identity(&self, id: &str, event: AuditDraft) -> Result<Identity, StoreError> {
        match self
            .submit(Op::EnableIdentity(id.to_string(), event))
            .await?
        {
            Output::Identity(i) => Ok(i),
            _ => Err(unexpected()),
        }
    }

    async fn disable_identity(
        &self,
        id: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        self.submit_outcome(Op::DisableIdentity {
            id: id.to_string(),
            actor: actor.to_string(),
            now,
        })
        .await
    }

    async fn create_target(
        &self,
        target: &Target,
        admin_sealed: Option<&[u8]>,
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::CreateTarget(
            Box::new(target.clone()),
            admin_sealed.map(<[u8]>::to_vec),
            event,
        ))
        .await
    }

    async fn get_target_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar(sql::GET_TARGET_SECRET)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)
    }

    async fn set_target_secret(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::SetTargetSecret {
            name: name.to_string(),
            sealed: sealed.to_vec(),
            event,
        })
        .await
    }

    async fn begin_root_rotation(&self, name: &str, sealed: &[u8]) -> Result<(), StoreError> {
        self.submit_unit(Op::BeginRootRotation {
            name: name.to_string(),
            sealed: sealed.to_vec(),
        })
        .await
    }

    async fn commit_root_rotation(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::CommitRootRotation {
            name: name.to_string(),
            sealed: sealed.to_vec(),
            event,
        })
        .await
    }

    async fn abandon_root_rotation(
        &self,
        name: &str,
        sealed: &[u8],
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::AbandonRootRotation {
            name: name.to_string(),
            sealed: sealed.to_vec(),
            event,
        })
        .await
    }

    async fn pending_root_rotations(&self) -> Result<Vec<PendingRootRotation>, StoreError> {
        let rows: Vec<(String, Vec<u8>, i64)> = sqlx::query_as(sql::LIST_ROOT_ROTATIONS)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(rows
            .into_iter()
            .map(|(target, sealed, started_at)| PendingRootRotation {
                target,
                sealed,
                started_at: from_unix_ms(started_at),
            })
            .collect())
    }

    async fn get_target(&self, name: &str) -> Result<Option<Target>, StoreError> {
        sqlx::query(sql::GET_TARGET)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .as_ref()
            .map(target_from_row)
            .transpose()
    }

    async fn list_targets(&self) -> Result<Vec<Target>, StoreError> {
        sqlx::query(sql::LIST_TARGETS)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(target_from_row)
            .collect()
    }

    async fn record_grant(
        &self,
        grant: &Grant,
        lease: Option<&Lease>,
        events: Vec<AuditDraft>,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::RecordGrant(
            Box::new(grant.clone()),
            lease.map(|l| Box::new(l.clone())),
            events,
        ))
        .await
    }

    async fn get_grant(&self, id: Uuid) -> Result<Option<Grant>, StoreError> {
        sqlx::query(sql::GET_GRANT)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .as_ref()
            .map(grant_from_row)
            .transpose()
    }

    async fn list_grants(&self, filter: &GrantFilter) -> Result<Vec<Grant>, StoreError> {
        let q = sql::list_grants(
            filter.identity.as_deref(),
            filter.task.as_deref(),
            filter.state.map(|s| s.as_str()),
        );
        let mut query = sqlx::query(&q.sql);
        for b in &q.binds {
            query = query.bind(b.as_str());
        }
        query
            .bind(limit(filter.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(grant_from_row)
            .collect()
    }

    async fn get_lease(&self, id: Uuid) -> Result<Option<Lease>, StoreError> {
        sqlx::query(sql::GET_LEASE)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .as_ref()
            .map(|r| lease_from_row(r).map(|l| l.lease))
            .transpose()
    }

    async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>, StoreError> {
        let grant_id = filter.grant_id.map(|g| g.to_string());
        let q = sql::list_leases(
            filter.identity.as_deref(),
            filter.task.as_deref(),
            grant_id.as_deref(),
            filter.state.map(|s| s.as_str()),
        );
        let mut query = sqlx::query(&q.sql);
        for b in &q.binds {
            query = query.bind(b.as_str());
        }
        query
            .bind(limit(filter.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(|r| lease_from_row(r).map(|l| l.lease))
            .collect()
    }

    async fn renew_lease(
        &self,
        id: Uuid,
        requested_expiry: OffsetDateTime,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Lease, StoreError> {
        self.submit_lease(Op::RenewLease {
            id,
            requested: requested_expiry,
            actor: actor.to_string(),
            now,
        })
        .await
    }

    async fn revoke(
        &self,
        selector: &LeaseSelector,
        reason: RevocationReason,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<RevokeOutcome, StoreError> {
        self.submit_outcome(Op::Revoke {
            selector: selector.clone(),
            reason,
            actor: actor.to_string(),
            now,
        })
        .await
    }

    async fn expire_due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<Lease>, StoreError> {
        match self.submit(Op::ExpireDue { now, limit }).await? {
            Output::Leases(l) => Ok(l),
            _ => Err(unexpected()),
        }
    }

    async fn next_expiry(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let ms: Option<i64> = sqlx::query_scalar(sql::NEXT_EXPIRY)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(ms.map(from_unix_ms))
    }

    async fn activate_lease(
        &self,
        id: Uuid,
        provider_state: &serde_json::Value,
        event: AuditDraft,
    ) -> Result<Lease, StoreError> {
        self.submit_lease(Op::ActivateLease {
            id,
            provider_state: provider_state.clone(),
            event,
        })
        .await
    }

    async fn abandon_lease(
        &self,
        id: Uuid,
        cleaned: bool,
        error: &str,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Lease, StoreError> {
        self.submit_lease(Op::AbandonLease {
            id,
            cleaned,
            error: error.to_string(),
            actor: actor.to_string(),
            now,
        })
        .await
    }

    async fn claim_revocations(
        &self,
        now: OffsetDateTime,
        limit: u32,
        claim_for: time::Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One autocommit statement, outside the write batches: a claim appends no audit,
        // and SKIP LOCKED lets concurrent claimers (other replicas) take disjoint sets
        // without waiting for each other or for the chain head.
        let rows = sqlx::query(sql::CLAIM_REVOCATIONS)
            .bind(to_unix_ms(now))
            .bind(to_unix_ms(now + claim_for))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        rows.iter()
            .map(|r| lease_from_row(r).map(|l| l.lease))
            .collect()
    }

    async fn complete_revocation(
        &self,
        id: Uuid,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Lease>, StoreError> {
        match self
            .submit(Op::CompleteRevocation {
                id,
                actor: actor.to_string(),
                now,
            })
            .await?
        {
            Output::MaybeLease(l) => Ok(l),
            _ => Err(unexpected()),
        }
    }

    async fn revocation_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt: OffsetDateTime,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::RevocationFailed {
            id,
            error: error.to_string(),
            next_attempt,
            actor: actor.to_string(),
            now,
        })
        .await
    }

    async fn live_provider_states(
        &self,
        target: &str,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(sql::LIVE_PROVIDER_STATES)
            .bind(target)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        rows.iter()
            .map(|r| serde_json::from_str(r).map_err(|e| corrupt("provider_state", e)))
            .collect()
    }

    async fn recorded_usernames(
        &self,
        target: &str,
        usernames: &[String],
    ) -> Result<std::collections::BTreeMap<String, bool>, StoreError> {
        if usernames.is_empty() {
            return Ok(Default::default());
        }
        let rows: Vec<(String, bool)> = sqlx::query_as(sql::RECORDED_USERNAMES)
            .bind(target)
            .bind(usernames)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(rows.into_iter().collect())
    }

    async fn append_audit(&self, events: Vec<AuditDraft>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.submit_unit(Op::AppendAudit(events)).await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let grant_id = filter.grant_id.map(|g| g.to_string());
        let q = sql::list_audit(
            filter.identity.as_deref(),
            filter.task.as_deref(),
            grant_id.as_deref(),
        );
        let mut query = sqlx::query(&q.sql);
        for b in &q.binds {
            query = query.bind(b.as_str());
        }
        let after = i64::try_from(filter.after_seq.unwrap_or(0)).unwrap_or(i64::MAX);
        query
            .bind(after)
            .bind(limit(filter.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(|row| {
                let seq: i64 = row.try_get(0).map_err(map_sqlx)?;
                let body: &str = row.try_get(1).map_err(map_sqlx)?;
                let hash: &str = row.try_get(2).map_err(map_sqlx)?;
                AuditEvent::from_stored(body, hash)
                    .map_err(|e| corrupt(&format!("audit entry {seq}"), e))
            })
            .collect()
    }

    async fn verify_audit(&self) -> Result<VerifyReport, StoreError> {
        // One REPEATABLE READ snapshot: the head and the rows agree, so entries other
        // replicas append during the walk cannot look like truncation.
        let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        let head = writer::read_head(&mut tx).await?;
        let mut verifier = ChainVerifier::new();
        {
            // Streamed: rows are checked as they arrive, in constant memory.
            let mut rows = sqlx::query(sql::VERIFY_ROWS).fetch(&mut *tx);
            while let Some(row) = rows.try_next().await.map_err(map_sqlx)? {
                let seq: i64 = row.try_get(0).map_err(map_sqlx)?;
                let body: &str = row.try_get(1).map_err(map_sqlx)?;
                let hash: &str = row.try_get(2).map_err(map_sqlx)?;
                let columns = StoredColumns {
                    at_ms: row.try_get(3).map_err(map_sqlx)?,
                    kind: text_column(&row, 4)?.unwrap_or_default(),
                    identity: text_column(&row, 5)?,
                    task: text_column(&row, 6)?,
                    grant_id: text_column(&row, 7)?,
                };
                verifier.push(u64::try_from(seq).unwrap_or(0), body, hash, &columns);
                if verifier.broken() {
                    break;
                }
            }
        }
        tx.rollback().await.map_err(map_sqlx)?;
        // Head seq 0 is the empty chain: nothing was ever appended.
        let head = (head.seq > 0).then_some((head.seq, head.hash));
        Ok(verifier.finish(head))
    }

    async fn add_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire_active: Option<OffsetDateTime>,
        event: AuditDraft,
    ) -> Result<(), StoreError> {
        self.submit_unit(Op::AddSigningKey(
            Box::new(key.clone()),
            retire_active,
            event,
        ))
        .await
    }

    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        sqlx::query(sql::LIST_SIGNING_KEYS)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(signing_key_from_row)
            .collect()
    }

    async fn add_operator_token(&self, token: &OperatorTokenRecord) -> Result<(), StoreError> {
        writer::add_operator_token(&self.pool, token).await
    }

    async fn find_operator_token(
        &self,
        sha256: &[u8],
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        sqlx::query(sql::FIND_OPERATOR_TOKEN)
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .as_ref()
            .map(operator_token_from_row)
            .transpose()
    }

    async fn count_operator_tokens(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(sql::COUNT_OPERATOR_TOKENS)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let active: i64 = sqlx::query_scalar(sql::COUNT_ACTIVE)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        let revoking: i64 = sqlx::query_scalar(sql::COUNT_REVOKING)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        // The chain is gap-free from 1, so its head sequence is its length.
        let audit: i64 = sqlx::query_scalar("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(StoreStats {
            active_leases: u64::try_from(active).unwrap_or(0),
            revoking_leases: u64::try_from(revoking).unwrap_or(0),
            audit_entries: u64::try_from(audit).unwrap_or(0),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// Servers open the store inside spawned tasks, which need `Send` futures.
    #[allow(dead_code)]
    fn open_is_send() {
        fn is_send<T: Send>(_: T) {}
        is_send(PgStore::open("postgres://localhost/x"));
    }

    #[test]
    fn password_is_found_for_redaction() {
        assert_eq!(
            url_password("postgres://u:hunter2@db:5432/m").as_deref(),
            Some("hunter2")
        );
        assert_eq!(
            url_password("postgres://u:p@ss@db/m").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_password("postgres://u@db/m"), None);
        assert_eq!(url_password("postgres://db/m?user=x"), None);
        assert_eq!(
            url_password("postgres://db/m?user=x&password=s3").as_deref(),
            Some("s3")
        );
    }

    #[tokio::test]
    async fn open_errors_never_show_the_password() {
        // Nothing listens on port 1; the error must still not echo the password.
        let err = PgStore::open("postgres://u:hunter2@127.0.0.1:1/mayfly")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = PgStore::open("postgres://u:hunter2@127.0.0.1:notaport/mayfly")
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
