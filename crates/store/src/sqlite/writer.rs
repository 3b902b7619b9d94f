//! SQLite's side of the engine's write protocol (see [`crate::engine`]).
//!
//! SQLite allows one writer at a time anyway; the engine's single writer turns lock
//! contention into a queue and lets one `COMMIT` (one fsync under `Durability::Fsync`)
//! acknowledge everything that queued while the previous commit was flushing. A batch is
//! `BEGIN IMMEDIATE`: the write lock is taken up front, so no statement inside can hit
//! `SQLITE_BUSY` halfway through and leave the batch partly applied.
//!
//! The writer owns a synchronous connection (rusqlite, on the same SQLite library sqlx
//! links) on its own thread, with every statement prepared once and cached. A group
//! commit is one hand-off (the batch arrives through the writer's queue) and then runs
//! start to finish on this thread; through an async driver every statement was a round
//! trip to the driver's thread, about ten per group commit, and those hand-offs rather
//! than SQL set the commit rate (see BENCHMARKS.md). Blocking here blocks nobody: the
//! thread does nothing else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::model::{
    ApprovalRecord, Grant, GrantState, Identity, Lease, LeaseSelector, LeaseState,
    RevocationReason, Target, Task, TaskState,
};
use mayfly_core::store::{OperatorTokenRecord, SigningKeyRecord, StoreError, WebhookCursor};
use mayfly_core::{to_unix_ms, OffsetDateTime, Uuid};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Params};

use super::error::{conflict_or_rusqlite, map_rusqlite};
use super::registry::Registry;
use super::{checkpoint, sql, Durability};
use crate::engine::{
    Backend, Changed, Ended, GrantEnd, GrantMove, Head, LeaseRow, LiveOf, SealedRow,
};
use crate::errors::corrupt;
use crate::rows::{
    approval_from_json, identity_from_row, identity_kind_text, lease_from_row,
    operator_token_from_row, target_from_row, task_from_row, to_json, ttl_secs,
    webhook_cursor_from_row,
};

pub(crate) struct SqliteWriter {
    conn: Connection,
    registry: Arc<Registry>,
}

impl SqliteWriter {
    /// Opens the write connection to an existing, migrated database.
    pub(crate) fn open(
        path: &Path,
        durability: Durability,
        busy_timeout: Duration,
        registry: Arc<Registry>,
    ) -> Result<SqliteWriter, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map_rusqlite)?;
        conn.busy_timeout(busy_timeout).map_err(map_rusqlite)?;
        // An 8 MiB page cache: SQLite walks the whole page-cache hash at the end of every
        // transaction, so a cache sized for bulk revocations (64 MiB) cost grants ~20 %
        // (BENCHMARKS.md, "Grants"); the 2 MiB default spills mid-transaction in a bulk
        // revocation. In-memory temp tables for the `IN (json_each …)` lookups. Never
        // synchronous=OFF: an acknowledged grant or revocation must survive at least a
        // crash.
        let pragmas = format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -8192; PRAGMA temp_store = MEMORY; \
             PRAGMA wal_autocheckpoint = {};",
            durability.pragma(),
            checkpoint::WRITER_BACKSTOP_PAGES
        );
        conn.execute_batch(&pragmas).map_err(map_rusqlite)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteWriter { conn, registry })
    }

    /// Runs a statement (prepared once, then from the cache); how many rows it changed.
    fn run(&self, statement: &str, params: impl Params) -> Result<usize, StoreError> {
        self.conn
            .prepare_cached(statement)
            .and_then(|mut s| s.execute(params))
            .map_err(map_rusqlite)
    }

    /// The lease row a statement returns, if any.
    fn lease_row(
        &self,
        statement: &str,
        params: impl Params,
    ) -> Result<Option<LeaseRow>, StoreError> {
        self.conn
            .prepare_cached(statement)
            .and_then(|mut s| {
                s.query_row(params, |row| Ok(lease_from_row(row)))
                    .optional()
            })
            .map_err(map_rusqlite)?
            .transpose()
    }

    /// Every lease row a statement returns.
    fn lease_rows(
        &self,
        statement: &str,
        params: impl Params,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(statement).map_err(map_rusqlite)?;
        let rows = stmt
            .query_map(params, |row| Ok(lease_from_row(row)))
            .map_err(map_rusqlite)?;
        let mut leases = Vec::new();
        for row in rows {
            leases.push(row.map_err(map_rusqlite)??);
        }
        Ok(leases)
    }

    /// The single `COUNT(*)` a statement returns.
    fn count(&self, statement: &str, params: impl Params) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(statement)
            .and_then(|mut s| s.query_row(params, |row| row.get(0)))
            .map_err(map_rusqlite)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    fn text(&self, statement: &str, params: impl Params) -> Result<Option<String>, StoreError> {
        self.conn
            .prepare_cached(statement)
            .and_then(|mut s| s.query_row(params, |row| row.get(0)).optional())
            .map_err(map_rusqlite)
    }
}

/// The statements of a revocation by `selector`, and the selector's key (`?1`).
fn revoke_sql(selector: &LeaseSelector) -> (sql::RevokeSql, String) {
    match selector {
        LeaseSelector::Lease(id) => (sql::REVOKE_BY_LEASE, id.to_string()),
        LeaseSelector::Grant(id) => (sql::REVOKE_BY_GRANT, id.to_string()),
        LeaseSelector::Task(t) => (sql::REVOKE_BY_TASK, t.clone()),
        LeaseSelector::Identity(i) => (sql::REVOKE_BY_IDENTITY, i.clone()),
        LeaseSelector::Owner(o) => (sql::REVOKE_BY_OWNER, o.clone()),
        LeaseSelector::Target(t) => (sql::REVOKE_BY_TARGET, t.clone()),
        LeaseSelector::TargetPrefix(p) => (sql::REVOKE_BY_TARGET_PREFIX, p.clone()),
        LeaseSelector::IdentityTask { identity, task } => (
            sql::REVOKE_BY_IDENTITY_TASK,
            serde_json::json!([identity, task]).to_string(),
        ),
    }
}

#[async_trait::async_trait]
impl Backend for SqliteWriter {
    /// The rows as one JSON array of `[seq, at_ms, kind, identity, task, grant_id, body,
    /// hash]`: one statement and one parameter however many rows, parsed by SQLite's C
    /// JSON reader.
    type AuditRows = String;
    const AUDIT_CHUNK: usize = 1024;

    async fn begin(&mut self) -> Result<Head, StoreError> {
        self.run("BEGIN IMMEDIATE", [])?;
        let (seq, hash): (i64, String) = self
            .conn
            .prepare_cached(sql::AUDIT_HEAD)
            .and_then(|mut s| s.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
            .optional()
            .map_err(map_rusqlite)?
            .ok_or_else(|| StoreError::Corrupt("the audit_head row is missing".into()))?;
        Ok(Head {
            seq: u64::try_from(seq)
                .map_err(|_| StoreError::Corrupt("audit_head has a negative sequence".into()))?,
            hash,
        })
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        self.run("COMMIT", []).map(drop)
    }

    async fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.run("ROLLBACK", []);
        }
    }

    async fn savepoint(&mut self) -> Result<(), StoreError> {
        self.run("SAVEPOINT op", []).map(drop)
    }

    async fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.run("RELEASE op", []).map(drop)
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.run("ROLLBACK TO op", []).map(drop)
    }

    fn committed(&mut self, changed: &[Changed]) {
        self.registry.invalidate(changed);
    }

    async fn insert_identity(&mut self, i: &Identity) -> Result<(), StoreError> {
        let (kind, labels) = (identity_kind_text(i)?, to_json("labels", &i.labels)?);
        self.conn
            .prepare_cached(sql::INSERT_IDENTITY)
            .and_then(|mut s| {
                s.execute(params![
                    i.id,
                    kind,
                    i.owner,
                    i.purpose,
                    i.expires_at.map(to_unix_ms),
                    labels,
                    i.enabled,
                    to_unix_ms(i.created_at),
                ])
            })
            .map(drop)
            .map_err(|e| conflict_or_rusqlite(e, "identity", &i.id))
    }

    async fn enable_identity(&mut self, id: &str) -> Result<Option<Identity>, StoreError> {
        self.conn
            .prepare_cached(sql::ENABLE_IDENTITY)
            .and_then(|mut s| {
                s.query_row([id], |row| Ok(identity_from_row(row)))
                    .optional()
            })
            .map_err(map_rusqlite)?
            .transpose()
    }

    async fn disable_identity(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        self.text(sql::DISABLE_IDENTITY, [id])
    }

    async fn disabled_among(&mut self, ids: &[&str]) -> Result<Vec<String>, StoreError> {
        let json = self
            .text(sql::DISABLED_AMONG, [to_json("identities", &ids)?])?
            .unwrap_or_else(|| "[]".into());
        serde_json::from_str(&json).map_err(|e| corrupt("disabled identities", e))
    }

    async fn insert_target(&mut self, t: &Target) -> Result<(), StoreError> {
        let (actions, allow, settings) = (
            to_json("actions", &t.actions)?,
            to_json("allow", &t.allow)?,
            to_json("settings", &t.settings)?,
        );
        self.conn
            .prepare_cached(sql::INSERT_TARGET)
            .and_then(|mut s| {
                s.execute(params![
                    t.name,
                    t.kind,
                    actions,
                    ttl_secs(t.default_ttl),
                    ttl_secs(t.max_ttl),
                    allow,
                    settings,
                    to_unix_ms(t.created_at),
                ])
            })
            .map(drop)
            .map_err(|e| conflict_or_rusqlite(e, "target", &t.name))
    }

    async fn target_exists(&mut self, name: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(sql::TARGET_EXISTS)
            .and_then(|mut s| s.exists([name]))
            .map_err(map_rusqlite)
    }

    async fn put_target_secret(
        &mut self,
        name: &str,
        sealed: &[u8],
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.run(
            sql::PUT_TARGET_SECRET,
            params![name, sealed, to_unix_ms(at)],
        )
        .map(drop)
    }

    async fn begin_root_rotation(
        &mut self,
        name: &str,
        sealed: &[u8],
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.run(
            sql::BEGIN_ROOT_ROTATION,
            params![name, sealed, to_unix_ms(at)],
        )
        .map(|n| n > 0)
    }

    async fn end_root_rotation(&mut self, name: &str, sealed: &[u8]) -> Result<bool, StoreError> {
        self.run(sql::END_ROOT_ROTATION, params![name, sealed])
            .map(|n| n > 0)
    }

    async fn insert_grants(
        &mut self,
        items: &[(&Grant, Option<&Lease>)],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let now_ms = to_unix_ms(now);
        for (g, l) in items {
            let (context, decision) = (
                to_json("context", &g.context)?,
                to_json("decision", &g.decision)?,
            );
            self.conn
                .prepare_cached(sql::INSERT_GRANT)
                .and_then(|mut s| {
                    s.execute(params![
                        g.id.to_string(),
                        g.identity,
                        g.owner,
                        g.target,
                        g.action,
                        g.purpose,
                        g.task,
                        ttl_secs(g.requested_ttl),
                        g.granted_ttl.map(ttl_secs),
                        context,
                        g.state.as_str(),
                        g.revocation_reason.map(|r| r.as_str()),
                        decision,
                        to_unix_ms(g.created_at),
                        to_unix_ms(g.updated_at),
                    ])
                })
                .map_err(|e| conflict_or_rusqlite(e, "grant", &g.id.to_string()))?;
            if let Some(l) = l {
                self.insert_lease_row(&g.owner, l, now_ms)?;
            }
        }
        Ok(())
    }

    async fn lease_for_update(&mut self, id: Uuid) -> Result<Option<LeaseRow>, StoreError> {
        // The batch holds SQLite's write lock: nothing else can change the row meanwhile.
        self.lease_row(sql::GET_LEASE, [id.to_string()])
    }

    async fn set_lease_expiry(&mut self, id: Uuid, to: OffsetDateTime) -> Result<(), StoreError> {
        self.run(sql::RENEW_LEASE, params![id.to_string(), to_unix_ms(to)])
            .map(drop)
    }

    async fn activate_lease(
        &mut self,
        id: Uuid,
        provider_state: &serde_json::Value,
    ) -> Result<Option<LeaseRow>, StoreError> {
        let state = to_json("provider_state", provider_state)?;
        self.lease_row(sql::ACTIVATE_LEASE, params![id.to_string(), state])
    }

    async fn abandon_lease(
        &mut self,
        id: Uuid,
        cleaned: bool,
        error: &str,
        now: OffsetDateTime,
    ) -> Result<Option<LeaseRow>, StoreError> {
        self.lease_row(
            sql::ABANDON_LEASE,
            params![id.to_string(), cleaned, error, to_unix_ms(now)],
        )
    }

    async fn move_grant(
        &mut self,
        id: Uuid,
        to: GrantMove,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let statement = match to {
            GrantMove::Issued => sql::ISSUE_GRANT,
            GrantMove::Failed => sql::FAIL_GRANT,
        };
        self.run(statement, params![id.to_string(), to_unix_ms(now)])
            .map(drop)
    }

    async fn end_grants(
        &mut self,
        ids: &[Uuid],
        to: GrantEnd,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let statement = match to {
            GrantEnd::Revoked => sql::REVOKE_GRANTS,
            GrantEnd::Expired => sql::EXPIRE_GRANTS,
        };
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        self.run(
            statement,
            params![
                reason.as_str(),
                to_unix_ms(now),
                to_json("grant ids", &ids)?
            ],
        )
        .map(drop)
    }

    async fn end_leases(
        &mut self,
        selector: &LeaseSelector,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Ended>, StoreError> {
        let (statements, key) = revoke_sql(selector);
        let json = self
            .text(statements.select, [&key])?
            .unwrap_or_else(|| "[]".into());
        let live: Vec<(String, String, String, String, String, String, i64)> =
            serde_json::from_str(&json).map_err(|e| corrupt("live leases", e))?;
        let ended = live
            .into_iter()
            .map(|(id, grant_id, identity, owner, target, task, external)| {
                Ok(Ended {
                    id: Uuid::parse_str(&id).map_err(|e| corrupt("leases.id", e))?,
                    grant_id: Uuid::parse_str(&grant_id)
                        .map_err(|e| corrupt("leases.grant_id", e))?,
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
        if ended.is_empty() {
            return Ok(ended);
        }
        let changed = self.run(
            statements.update,
            params![key, reason.as_str(), to_unix_ms(now)],
        )?;
        // Same condition, same transaction, one writer: anything else is a bug, and
        // auditing leases that were not changed would make the log lie.
        if changed != ended.len() {
            return Err(StoreError::Backend(format!(
                "revocation selected {} leases but changed {changed}",
                ended.len()
            )));
        }
        Ok(ended)
    }

    async fn expire_due(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        self.lease_rows(sql::EXPIRE_DUE, params![to_unix_ms(now), i64::from(limit)])
    }

    async fn claim_revocations(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
        until: OffsetDateTime,
    ) -> Result<Vec<Lease>, StoreError> {
        let rows = self.lease_rows(
            sql::CLAIM_REVOCATIONS,
            params![to_unix_ms(now), to_unix_ms(until), i64::from(limit)],
        )?;
        Ok(rows.into_iter().map(|r| r.lease).collect())
    }

    async fn complete_revocation(&mut self, id: Uuid) -> Result<Option<LeaseRow>, StoreError> {
        self.lease_row(sql::COMPLETE_REVOCATION, [id.to_string()])
    }

    async fn revocation_failed(
        &mut self,
        id: Uuid,
        error: &str,
        next_attempt: OffsetDateTime,
    ) -> Result<Option<LeaseRow>, StoreError> {
        self.lease_row(
            sql::REVOCATION_FAILED,
            params![id.to_string(), error, to_unix_ms(next_attempt)],
        )
    }

    async fn retire_active_key(
        &mut self,
        retired_at: OffsetDateTime,
        publish_until: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.run(
            sql::RETIRE_ACTIVE_KEY,
            params![to_unix_ms(retired_at), to_unix_ms(publish_until)],
        )
        .map(drop)
    }

    async fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        let jwk = to_json("public_jwk", &key.public_jwk)?;
        let result = self
            .conn
            .prepare_cached(sql::INSERT_SIGNING_KEY)
            .and_then(|mut s| {
                s.execute(params![
                    key.kid,
                    key.alg,
                    jwk,
                    key.private_sealed,
                    to_unix_ms(key.created_at),
                    key.retired_at.map(to_unix_ms),
                    key.publish_until.map(to_unix_ms),
                ])
            });
        match result {
            Ok(_) => Ok(()),
            // The partial unique index allows one active key; adding a second without
            // retiring the first is a conflict with that key, not with this kid.
            Err(rusqlite::Error::SqliteFailure(_, Some(msg)))
                if msg.contains("signing_keys_one_active") =>
            {
                Err(StoreError::Conflict {
                    what: "active signing key (retire it first)",
                    id: key.kid.clone(),
                })
            }
            Err(e) => Err(conflict_or_rusqlite(e, "signing key", &key.kid)),
        }
    }

    async fn insert_audit_checkpoint(
        &mut self,
        checkpoint: &mayfly_core::checkpoint::Checkpoint,
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(checkpoint.seq)
            .map_err(|_| StoreError::Corrupt("checkpoint seq out of range".into()))?;
        self.conn
            .prepare_cached(sql::INSERT_AUDIT_CHECKPOINT)
            .and_then(|mut s| {
                s.execute(params![
                    seq,
                    checkpoint.kid,
                    checkpoint.hash,
                    to_unix_ms(checkpoint.at),
                    checkpoint.jws,
                ])
            })
            .map(|_| ())
            .map_err(map_rusqlite)
    }

    async fn insert_operator_token(
        &mut self,
        token: &OperatorTokenRecord,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(sql::INSERT_OPERATOR_TOKEN)
            .and_then(|mut s| {
                s.execute(params![
                    token.name,
                    token.token_sha256,
                    to_unix_ms(token.created_at),
                    token.expires_at.map(to_unix_ms),
                    token.created_by,
                    token.revoked_at.map(to_unix_ms),
                    token.revoked_by,
                ])
            })
            .map(drop)
            // Named by the token's name only: the hash identifies a secret.
            .map_err(|e| conflict_or_rusqlite(e, "operator token", &token.name))
    }

    fn encode_audit(rows: Vec<SealedRow>) -> Result<String, StoreError> {
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

    async fn insert_audit(&mut self, rows: String) -> Result<(), StoreError> {
        self.run(sql::INSERT_AUDIT, [rows]).map(drop)
    }

    async fn set_audit_head(&mut self, head: &Head) -> Result<(), StoreError> {
        self.run(
            sql::SET_AUDIT_HEAD,
            params![i64::try_from(head.seq).unwrap_or(i64::MAX), head.hash],
        )
        .map(drop)
    }

    async fn unrevoked_operator_token(
        &mut self,
        name: &str,
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        self.conn
            .prepare_cached(sql::UNREVOKED_OPERATOR_TOKEN)
            .and_then(|mut s| {
                s.query_row([name], |row| Ok(operator_token_from_row(row)))
                    .optional()
            })
            .map_err(map_rusqlite)?
            .transpose()
    }

    async fn insert_task(&mut self, t: &Task) -> Result<(), StoreError> {
        let id = t.id.to_string();
        self.conn
            .prepare_cached(sql::INSERT_TASK)
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    t.identity,
                    t.owner,
                    t.purpose,
                    t.parent.map(|p| p.to_string()),
                    t.state.as_str(),
                    to_unix_ms(t.deadline),
                    to_unix_ms(t.created_at),
                    t.ended_at.map(to_unix_ms),
                ])
            })
            .map(drop)
            .map_err(|e| conflict_or_rusqlite(e, "task", &id))
    }

    async fn task_for_update(&mut self, id: Uuid) -> Result<Option<Task>, StoreError> {
        // The batch holds SQLite's write lock: nothing else can change the row meanwhile.
        self.conn
            .prepare_cached(sql::GET_TASK)
            .and_then(|mut s| {
                s.query_row([id.to_string()], |row| Ok(task_from_row(row)))
                    .optional()
            })
            .map_err(map_rusqlite)?
            .transpose()
    }

    async fn revoke_operator_token(
        &mut self,
        name: &str,
        at: OffsetDateTime,
        by: &str,
    ) -> Result<bool, StoreError> {
        self.run(
            sql::REVOKE_OPERATOR_TOKEN,
            params![name, to_unix_ms(at), by],
        )
        .map(|n| n > 0)
    }

    async fn count_live_operator_tokens(&mut self, now: OffsetDateTime) -> Result<u64, StoreError> {
        self.count(sql::COUNT_LIVE_OPERATOR_TOKENS, params![to_unix_ms(now)])
    }

    async fn update_identity(&mut self, i: &Identity) -> Result<Option<Identity>, StoreError> {
        let (kind, labels) = (identity_kind_text(i)?, to_json("labels", &i.labels)?);
        self.conn
            .prepare_cached(sql::UPDATE_IDENTITY)
            .and_then(|mut s| {
                s.query_row(
                    params![
                        i.id,
                        kind,
                        i.owner,
                        i.purpose,
                        i.expires_at.map(to_unix_ms),
                        labels
                    ],
                    |row| Ok(identity_from_row(row)),
                )
                .optional()
            })
            .map_err(map_rusqlite)?
            .transpose()
    }

    async fn delete_identity(&mut self, id: &str) -> Result<bool, StoreError> {
        self.run(sql::DELETE_IDENTITY, [id]).map(|n| n > 0)
    }

    async fn update_target(&mut self, t: &Target) -> Result<Option<Target>, StoreError> {
        let (actions, allow, settings) = (
            to_json("actions", &t.actions)?,
            to_json("allow", &t.allow)?,
            to_json("settings", &t.settings)?,
        );
        self.conn
            .prepare_cached(sql::UPDATE_TARGET)
            .and_then(|mut s| {
                s.query_row(
                    params![
                        t.name,
                        actions,
                        ttl_secs(t.default_ttl),
                        ttl_secs(t.max_ttl),
                        allow,
                        settings
                    ],
                    |row| Ok(target_from_row(row)),
                )
                .optional()
            })
            .map_err(map_rusqlite)?
            .transpose()
    }

    async fn delete_target(&mut self, name: &str) -> Result<bool, StoreError> {
        self.run(sql::DELETE_TARGET_SECRET, [name])?;
        self.run(sql::DELETE_TARGET, [name]).map(|n| n > 0)
    }

    async fn root_rotation_pending(&mut self, name: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(sql::ROOT_ROTATION_PENDING)
            .and_then(|mut s| s.exists([name]))
            .map_err(map_rusqlite)
    }

    async fn count_live_leases(&mut self, of: LiveOf<'_>) -> Result<u64, StoreError> {
        match of {
            LiveOf::Identity(id) => self.count(sql::COUNT_LIVE_LEASES_OF_IDENTITY, [id]),
            LiveOf::Target(name) => self.count(sql::COUNT_LIVE_LEASES_OF_TARGET, [name]),
        }
    }

    async fn insert_webhook_cursor(
        &mut self,
        name: &str,
        seq: u64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.run(
            sql::INSERT_WEBHOOK_CURSOR,
            params![name, seq, to_unix_ms(now)],
        )
        .map(drop)
    }

    async fn claim_webhook(
        &mut self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<WebhookCursor>, StoreError> {
        self.conn
            .prepare_cached(sql::CLAIM_WEBHOOK)
            .and_then(|mut s| {
                s.query_row(
                    params![name, holder, to_unix_ms(now), to_unix_ms(until)],
                    |row| Ok(webhook_cursor_from_row(row)),
                )
                .optional()
            })
            .map_err(map_rusqlite)?
            .transpose()
    }

    async fn advance_webhook(
        &mut self,
        name: &str,
        holder: &str,
        seq: u64,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let seq = i64::try_from(seq).map_err(|e| StoreError::Backend(e.to_string()))?;
        self.run(
            sql::ADVANCE_WEBHOOK,
            params![name, holder, seq, to_unix_ms(now), to_unix_ms(until)],
        )
        .map(|n| n == 1)
    }

    async fn webhook_failed(
        &mut self,
        name: &str,
        holder: &str,
        error: &str,
        next_attempt: OffsetDateTime,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.run(
            sql::WEBHOOK_FAILED,
            params![
                name,
                holder,
                error,
                to_unix_ms(next_attempt),
                to_unix_ms(now),
                to_unix_ms(until)
            ],
        )
        .map(|n| n == 1)
    }

    async fn release_webhook(&mut self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.run(sql::RELEASE_WEBHOOK, params![name, holder])
            .map(drop)
    }

    async fn end_task_tree(
        &mut self,
        id: Uuid,
        to: TaskState,
        now: OffsetDateTime,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.ids(
            sql::END_TASK_TREE,
            params![id.to_string(), to.as_str(), to_unix_ms(now)],
        )
    }

    async fn due_tasks(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.ids(sql::DUE_TASKS, params![to_unix_ms(now), limit])
    }

    async fn insert_approval(&mut self, a: &ApprovalRecord) -> Result<(), StoreError> {
        let id = a.grant_id.to_string();
        let body = to_json("approval", a)?;
        self.conn
            .prepare_cached(sql::INSERT_APPROVAL)
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    a.state.as_str(),
                    to_unix_ms(a.expires_at),
                    to_unix_ms(a.created_at),
                    body,
                ])
            })
            .map(drop)
            .map_err(|e| conflict_or_rusqlite(e, "approval request", &id))
    }

    async fn approval_for_update(
        &mut self,
        grant: Uuid,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        // The batch holds SQLite's write lock: nothing else can change the row meanwhile.
        let body: Option<String> = self
            .conn
            .prepare_cached(sql::GET_APPROVAL)
            .and_then(|mut s| {
                s.query_row([grant.to_string()], |row| row.get(0))
                    .optional()
            })
            .map_err(map_rusqlite)?;
        body.map(|b| approval_from_json(&b)).transpose()
    }

    async fn update_approval(&mut self, a: &ApprovalRecord) -> Result<(), StoreError> {
        let body = to_json("approval", a)?;
        self.run(
            sql::UPDATE_APPROVAL,
            params![
                a.grant_id.to_string(),
                a.state.as_str(),
                to_unix_ms(a.expires_at),
                body
            ],
        )
        .map(drop)
    }

    async fn due_approvals(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        self.ids(sql::DUE_APPROVALS, params![to_unix_ms(now), limit])
    }

    async fn set_grant_state(
        &mut self,
        id: Uuid,
        from: GrantState,
        to: GrantState,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        self.run(
            sql::SET_GRANT_STATE,
            params![id.to_string(), from.as_str(), to.as_str(), to_unix_ms(now)],
        )
        .map(|n| n > 0)
    }

    async fn insert_lease(
        &mut self,
        owner: &str,
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.insert_lease_row(owner, lease, to_unix_ms(now))
    }
}

impl SqliteWriter {
    /// One lease row (its owner is its grant's); a `revoking` lease is due at `now_ms`.
    fn insert_lease_row(&self, owner: &str, l: &Lease, now_ms: i64) -> Result<(), StoreError> {
        let state = to_json("provider_state", &l.provider_state)?;
        self.conn
            .prepare_cached(sql::INSERT_LEASE)
            .and_then(|mut s| {
                s.execute(params![
                    l.id.to_string(),
                    l.grant_id.to_string(),
                    l.kind,
                    l.identity,
                    owner,
                    l.target,
                    l.task,
                    to_unix_ms(l.issued_at),
                    to_unix_ms(l.expires_at),
                    to_unix_ms(l.max_expires_at),
                    l.state.as_str(),
                    l.revocation_reason.map(|r| r.as_str()),
                    l.external,
                    state,
                    i64::from(l.revoke_attempts),
                    l.last_error,
                    (l.state == LeaseState::Revoking).then_some(now_ms),
                ])
            })
            .map_err(|e| conflict_or_rusqlite(e, "lease", &l.id.to_string()))?;
        Ok(())
    }

    /// The ids (first column) of every row a statement returns.
    fn ids(&self, statement: &str, params: impl Params) -> Result<Vec<Uuid>, StoreError> {
        let mut stmt = self.conn.prepare_cached(statement).map_err(map_rusqlite)?;
        let rows = stmt
            .query_map(params, |row| row.get::<_, String>(0))
            .map_err(map_rusqlite)?;
        let mut ids = Vec::new();
        for row in rows {
            let text = row.map_err(map_rusqlite)?;
            ids.push(Uuid::parse_str(&text).map_err(|e| corrupt("task id", e))?);
        }
        Ok(ids)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use mayfly_core::audit::{AuditDraft, AuditKind};

    use super::*;

    #[test]
    fn audit_rows_serialise_as_positional_arrays() {
        let mut head = Head {
            seq: 0,
            hash: mayfly_core::audit::GENESIS_HASH.into(),
        };
        let row = crate::engine::seal_next(
            &mut head,
            AuditDraft::new(AuditKind::AuthFailed, "anonymous"),
            mayfly_core::from_unix_ms(1_000),
        );
        let json: serde_json::Value =
            serde_json::from_str(&SqliteWriter::encode_audit(vec![row]).unwrap()).unwrap();
        let first = &json[0];
        assert_eq!(first[0], 1);
        assert_eq!(first[1], 1_000);
        assert_eq!(first[2], "auth.failed");
        assert!(first[3].is_null() && first[4].is_null() && first[5].is_null());
        assert!(first[6].as_str().unwrap().starts_with('{'));
        assert_eq!(first[7].as_str().unwrap().len(), 64);
    }
}
