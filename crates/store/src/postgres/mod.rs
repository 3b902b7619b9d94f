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
mod sql;
mod writer;

use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt;
use mayfly_core::audit::{AuditEvent, ChainVerifier, StoredColumns, VerifyReport};
use mayfly_core::model::{ApprovalRecord, Grant, Identity, Lease, Target, Task};
use mayfly_core::store::{
    ApprovalFilter, AuditFilter, GrantFilter, LeaseFilter, OperatorTokenRecord,
    PendingRootRotation, SigningKeyRecord, StoreError, StoreStats, TaskFilter,
};
use mayfly_core::{from_unix_ms, OffsetDateTime, Uuid};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool, Row};

use self::error::{corrupt, map_sqlx, migrate_error, redact};
use self::writer::PgWriter;
use crate::engine::{self, EngineStore, Placement, Reads};
use crate::rows::{
    approval_from_json, grant_from_row, identity_from_row, lease_from_row, operator_token_from_row,
    root_rotation_from_row, signing_key_from_row, target_from_row, task_from_row,
};

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

/// The PostgreSQL implementation of [`Store`](mayfly_core::store::Store): the engine's writer over a PostgreSQL
/// [`Backend`](crate::engine::Backend) plus [`PgReads`].
pub type PgStore = EngineStore<PgReads>;

/// The read side of the PostgreSQL backend: the replica's connection pool.
pub struct PgReads {
    pool: PgPool,
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

impl EngineStore<PgReads> {
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
        let writer = engine::spawn(PgWriter::new(pool.clone()), WRITE_QUEUE, Placement::Task)?;
        Ok(EngineStore {
            writer,
            reads: PgReads { pool },
        })
    }

    /// The pool, for [`crate::migrate`].
    pub(crate) fn pool(&self) -> &PgPool {
        &self.reads.pool
    }
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
impl Reads for PgReads {
    async fn get_task(&self, id: Uuid) -> Result<Option<Task>, StoreError> {
        sqlx::query(sql::GET_TASK)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .as_ref()
            .map(task_from_row)
            .transpose()
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>, StoreError> {
        let q = sql::list_tasks(filter.identity.as_deref(), filter.state.map(|s| s.as_str()));
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
            .map(task_from_row)
            .collect()
    }

    async fn get_approval(&self, grant: Uuid) -> Result<Option<ApprovalRecord>, StoreError> {
        let body: Option<String> = sqlx::query_scalar(sql::GET_APPROVAL)
            .bind(grant.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        body.map(|b| approval_from_json(&b)).transpose()
    }

    async fn list_approvals(
        &self,
        filter: &ApprovalFilter,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let bodies: Vec<String> = sqlx::query_scalar(sql::LIST_APPROVALS)
            .bind(filter.state.map(|s| s.as_str()))
            .bind(limit(filter.limit))
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        bodies.iter().map(|b| approval_from_json(b)).collect()
    }

    async fn next_task_deadline(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let ms: Option<i64> = sqlx::query_scalar(sql::NEXT_TASK_DEADLINE)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(ms.map(from_unix_ms))
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
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

    async fn get_target_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar(sql::GET_TARGET_SECRET)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)
    }

    async fn pending_root_rotations(&self) -> Result<Vec<PendingRootRotation>, StoreError> {
        sqlx::query(sql::LIST_ROOT_ROTATIONS)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(root_rotation_from_row)
            .collect()
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
        let q = sql::list_leases_of(
            filter.identity.as_deref(),
            filter.task.as_deref(),
            grant_id.as_deref(),
            filter.state.map(|s| s.as_str()),
            filter.target.as_deref(),
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

    async fn next_expiry(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let ms: Option<i64> = sqlx::query_scalar(sql::NEXT_EXPIRY)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(ms.map(from_unix_ms))
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

    async fn recorded_names(
        &self,
        target: &str,
        key: &str,
        names: &[String],
    ) -> Result<std::collections::BTreeMap<String, bool>, StoreError> {
        let rows: Vec<(String, bool)> = sqlx::query_as(sql::RECORDED_NAMES)
            .bind(target)
            .bind(names)
            .bind(key)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(rows.into_iter().collect())
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

    async fn latest_audit_checkpoint(
        &self,
    ) -> Result<Option<mayfly_core::checkpoint::Checkpoint>, StoreError> {
        sqlx::query(sql::LATEST_AUDIT_CHECKPOINT)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .as_ref()
            .map(crate::rows::audit_checkpoint_from_row)
            .transpose()
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

    async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenRecord>, StoreError> {
        sqlx::query(sql::LIST_OPERATOR_TOKENS)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(operator_token_from_row)
            .collect()
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
