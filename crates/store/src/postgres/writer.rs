//! PostgreSQL's side of the engine's write protocol (see [`crate::engine`]): group commit
//! within a replica, one serialisation point across replicas.
//!
//! Each batch begins by taking the chain head row
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
//! they stay exactly-once whatever runs beside them. Many-row statements bind one array
//! per column (`UNNEST`), so a run of grants or a bulk revocation is one round trip.

use mayfly_core::model::{
    ApprovalRecord, Grant, GrantState, Identity, Lease, LeaseSelector, LeaseState,
    RevocationReason, Target, Task, TaskState,
};
use mayfly_core::store::{OperatorTokenRecord, SigningKeyRecord, StoreError, WebhookCursor};
use mayfly_core::{to_unix_ms, OffsetDateTime, Uuid};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use super::error::{conflict_or, corrupt, map_sqlx};
use super::sql;
use crate::engine::{Backend, Ended, GrantEnd, GrantMove, Head, LeaseRow, LiveOf, SealedRow};
use crate::rows::{
    approval_from_json, identity_from_row, identity_kind_text, lease_from_row,
    operator_token_from_row, target_from_row, task_from_row, to_json, ttl_secs,
    webhook_cursor_from_row,
};

/// Reads the head row with `statement` (locking or not).
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

pub(crate) struct PgWriter {
    pool: PgPool,
    batch: Option<Transaction<'static, Postgres>>,
}

impl PgWriter {
    pub(crate) fn new(pool: PgPool) -> PgWriter {
        PgWriter { pool, batch: None }
    }

    fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        self.batch
            .as_deref_mut()
            .ok_or_else(|| StoreError::Backend("a write ran outside a batch".into()))
    }

    async fn exec(&mut self, statement: &str) -> Result<(), StoreError> {
        sqlx::query(statement)
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn lease_row<'q>(
        &mut self,
        query: sqlx::query::Query<'q, Postgres, PgArguments>,
    ) -> Result<Option<LeaseRow>, StoreError> {
        query
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .map(|row| lease_from_row(&row))
            .transpose()
    }
}

/// The revocation statement for `selector`, and the selector's key (`$1`).
fn revoke_sql(selector: &LeaseSelector) -> (&'static str, String) {
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

fn ended_from_row(row: &PgRow) -> Result<Ended, StoreError> {
    let uuid = |col: &str| -> Result<Uuid, StoreError> {
        let s: &str = row.try_get(col).map_err(map_sqlx)?;
        Uuid::parse_str(s).map_err(|e| corrupt(col, e))
    };
    let external: bool = row.try_get("external").map_err(map_sqlx)?;
    Ok(Ended {
        id: uuid("id")?,
        grant_id: uuid("grant_id")?,
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
}

/// The id a unique violation of a multi-row insert is reported under.
fn conflict_id(ids: &[String]) -> String {
    match ids {
        [one] => one.clone(),
        _ => format!("one of {}", ids.len()),
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

    async fn insert(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
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

    async fn insert(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
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
    }
}

/// Audit rows as one array per column of [`sql::INSERT_AUDIT`].
pub(crate) struct AuditColumns {
    seq: Vec<i64>,
    at_ms: Vec<i64>,
    kind: Vec<&'static str>,
    identity: Vec<Option<String>>,
    task: Vec<Option<String>>,
    grant_id: Vec<Option<String>>,
    body: Vec<String>,
    hash: Vec<String>,
}

#[async_trait::async_trait]
impl Backend for PgWriter {
    type AuditRows = AuditColumns;
    /// Bounds the size of one statement's bound arrays.
    const AUDIT_CHUNK: usize = 5_000;

    async fn begin(&mut self) -> Result<Head, StoreError> {
        self.batch = Some(self.pool.begin().await.map_err(map_sqlx)?);
        load_head(self.conn()?, sql::LOCK_AUDIT_HEAD).await
    }

    async fn commit(&mut self) -> Result<(), StoreError> {
        match self.batch.take() {
            Some(tx) => tx.commit().await.map_err(map_sqlx),
            None => Err(StoreError::Backend("commit outside a batch".into())),
        }
    }

    async fn rollback(&mut self) {
        // Best effort: a broken connection has rolled back already, and sqlx discards a
        // connection whose rollback fails rather than reusing it.
        if let Some(tx) = self.batch.take() {
            let _ = tx.rollback().await;
        }
    }

    async fn savepoint(&mut self) -> Result<(), StoreError> {
        self.exec("SAVEPOINT op").await
    }

    async fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.exec("RELEASE SAVEPOINT op").await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.exec("ROLLBACK TO SAVEPOINT op").await
    }

    async fn insert_identity(&mut self, i: &Identity) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_IDENTITY)
            .bind(&i.id)
            .bind(identity_kind_text(i)?)
            .bind(&i.owner)
            .bind(&i.purpose)
            .bind(i.expires_at.map(to_unix_ms))
            .bind(to_json("labels", &i.labels)?)
            .bind(i.enabled)
            .bind(to_unix_ms(i.created_at))
            .execute(self.conn()?)
            .await
            .map_err(|e| conflict_or(e, "identity", &i.id))?;
        Ok(())
    }

    async fn enable_identity(&mut self, id: &str) -> Result<Option<Identity>, StoreError> {
        sqlx::query(sql::ENABLE_IDENTITY)
            .bind(id)
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .map(|row| identity_from_row(&row))
            .transpose()
    }

    async fn disable_identity(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(sql::DISABLE_IDENTITY)
            .bind(id)
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)
    }

    async fn disabled_among(&mut self, ids: &[&str]) -> Result<Vec<String>, StoreError> {
        // Under the head lock: a kill switch on any replica committed before this, or
        // commits after it and revokes what this batch inserts.
        sqlx::query_scalar(sql::DISABLED_AMONG)
            .bind(ids)
            .fetch_all(self.conn()?)
            .await
            .map_err(map_sqlx)
    }

    async fn insert_target(&mut self, t: &Target) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_TARGET)
            .bind(&t.name)
            .bind(&t.kind)
            .bind(to_json("actions", &t.actions)?)
            .bind(ttl_secs(t.default_ttl))
            .bind(ttl_secs(t.max_ttl))
            .bind(to_json("allow", &t.allow)?)
            .bind(to_json("settings", &t.settings)?)
            .bind(to_unix_ms(t.created_at))
            .execute(self.conn()?)
            .await
            .map_err(|e| conflict_or(e, "target", &t.name))?;
        Ok(())
    }

    async fn target_exists(&mut self, name: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(sql::TARGET_EXISTS)
            .bind(name)
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        Ok(found.is_some())
    }

    async fn put_target_secret(
        &mut self,
        name: &str,
        sealed: &[u8],
        at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(sql::PUT_TARGET_SECRET)
            .bind(name)
            .bind(sealed)
            .bind(to_unix_ms(at))
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn begin_root_rotation(
        &mut self,
        name: &str,
        sealed: &[u8],
        at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let recorded = sqlx::query(sql::BEGIN_ROOT_ROTATION)
            .bind(name)
            .bind(sealed)
            .bind(to_unix_ms(at))
            .execute(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        Ok(recorded > 0)
    }

    async fn end_root_rotation(&mut self, name: &str, sealed: &[u8]) -> Result<bool, StoreError> {
        let ended = sqlx::query(sql::END_ROOT_ROTATION)
            .bind(name)
            .bind(sealed)
            .execute(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        Ok(ended > 0)
    }

    async fn insert_grants(
        &mut self,
        items: &[(&Grant, Option<&Lease>)],
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let now_ms = to_unix_ms(now);
        let mut grants = GrantColumns::default();
        let mut leases = LeaseColumns::default();
        for (g, l) in items {
            grants.push(g)?;
            if let Some(l) = l {
                leases.push(&g.owner, l, now_ms)?;
            }
        }
        let grant_ids = conflict_id(&grants.id);
        let lease_ids = conflict_id(&leases.id);
        let has_leases = !leases.id.is_empty();
        grants
            .insert(self.conn()?)
            .await
            .map_err(|e| conflict_or(e, "grant", &grant_ids))?;
        if has_leases {
            leases
                .insert(self.conn()?)
                .await
                .map_err(|e| conflict_or(e, "lease", &lease_ids))?;
        }
        Ok(())
    }

    async fn lease_for_update(&mut self, id: Uuid) -> Result<Option<LeaseRow>, StoreError> {
        // Locked, so the expiry read here is the one the update replaces.
        self.lease_row(sqlx::query(sql::GET_LEASE_FOR_UPDATE).bind(id.to_string()))
            .await
    }

    async fn set_lease_expiry(&mut self, id: Uuid, to: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(sql::RENEW_LEASE)
            .bind(id.to_string())
            .bind(to_unix_ms(to))
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn activate_lease(
        &mut self,
        id: Uuid,
        provider_state: &serde_json::Value,
    ) -> Result<Option<LeaseRow>, StoreError> {
        let state = to_json("provider_state", provider_state)?;
        self.lease_row(
            sqlx::query(sql::ACTIVATE_LEASE)
                .bind(id.to_string())
                .bind(state),
        )
        .await
    }

    async fn abandon_lease(
        &mut self,
        id: Uuid,
        cleaned: bool,
        error: &str,
        now: OffsetDateTime,
    ) -> Result<Option<LeaseRow>, StoreError> {
        self.lease_row(
            sqlx::query(sql::ABANDON_LEASE)
                .bind(id.to_string())
                .bind(cleaned)
                .bind(error.to_string())
                .bind(to_unix_ms(now)),
        )
        .await
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
        sqlx::query(statement)
            .bind(id.to_string())
            .bind(to_unix_ms(now))
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
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
        sqlx::query(statement)
            .bind(reason.as_str())
            .bind(to_unix_ms(now))
            .bind(ids)
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn end_leases(
        &mut self,
        selector: &LeaseSelector,
        reason: RevocationReason,
        now: OffsetDateTime,
    ) -> Result<Vec<Ended>, StoreError> {
        // One `UPDATE … RETURNING`: 100,000 leases are one statement.
        let (statement, key) = revoke_sql(selector);
        sqlx::query(statement)
            .bind(&key)
            .bind(reason.as_str())
            .bind(to_unix_ms(now))
            .fetch_all(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(ended_from_row)
            .collect()
    }

    async fn expire_due(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<LeaseRow>, StoreError> {
        sqlx::query(sql::EXPIRE_DUE)
            .bind(to_unix_ms(now))
            .bind(i64::from(limit))
            .fetch_all(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(lease_from_row)
            .collect()
    }

    async fn claim_revocations(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
        until: OffsetDateTime,
    ) -> Result<Vec<Lease>, StoreError> {
        sqlx::query(sql::CLAIM_REVOCATIONS)
            .bind(to_unix_ms(now))
            .bind(to_unix_ms(until))
            .bind(i64::from(limit))
            .fetch_all(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .iter()
            .map(|r| lease_from_row(r).map(|l| l.lease))
            .collect()
    }

    async fn complete_revocation(&mut self, id: Uuid) -> Result<Option<LeaseRow>, StoreError> {
        self.lease_row(sqlx::query(sql::COMPLETE_REVOCATION).bind(id.to_string()))
            .await
    }

    async fn revocation_failed(
        &mut self,
        id: Uuid,
        error: &str,
        next_attempt: OffsetDateTime,
    ) -> Result<Option<LeaseRow>, StoreError> {
        self.lease_row(
            sqlx::query(sql::REVOCATION_FAILED)
                .bind(id.to_string())
                .bind(error.to_string())
                .bind(to_unix_ms(next_attempt)),
        )
        .await
    }

    async fn retire_active_key(
        &mut self,
        retired_at: OffsetDateTime,
        publish_until: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(sql::RETIRE_ACTIVE_KEY)
            .bind(to_unix_ms(retired_at))
            .bind(to_unix_ms(publish_until))
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<(), StoreError> {
        let result = sqlx::query(sql::INSERT_SIGNING_KEY)
            .bind(&key.kid)
            .bind(&key.alg)
            .bind(to_json("public_jwk", &key.public_jwk)?)
            .bind(&key.private_sealed)
            .bind(to_unix_ms(key.created_at))
            .bind(key.retired_at.map(to_unix_ms))
            .bind(key.publish_until.map(to_unix_ms))
            .execute(self.conn()?)
            .await;
        match result {
            Ok(_) => Ok(()),
            // The partial unique index allows one active key; adding a second without
            // retiring the first is a conflict with that key, not with this kid.
            Err(sqlx::Error::Database(db))
                if db.is_unique_violation()
                    && db.constraint() == Some("signing_keys_one_active") =>
            {
                Err(StoreError::Conflict {
                    what: "active signing key (retire it first)",
                    id: key.kid.clone(),
                })
            }
            Err(e) => Err(conflict_or(e, "signing key", &key.kid)),
        }
    }

    async fn insert_audit_checkpoint(
        &mut self,
        checkpoint: &mayfly_core::checkpoint::Checkpoint,
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(checkpoint.seq)
            .map_err(|_| StoreError::Corrupt("checkpoint seq out of range".into()))?;
        sqlx::query(sql::INSERT_AUDIT_CHECKPOINT)
            .bind(seq)
            .bind(&checkpoint.kid)
            .bind(&checkpoint.hash)
            .bind(to_unix_ms(checkpoint.at))
            .bind(&checkpoint.jws)
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn insert_operator_token(
        &mut self,
        token: &OperatorTokenRecord,
    ) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_OPERATOR_TOKEN)
            .bind(&token.name)
            .bind(&token.token_sha256)
            .bind(to_unix_ms(token.created_at))
            .bind(token.expires_at.map(to_unix_ms))
            .bind(&token.created_by)
            .bind(token.revoked_at.map(to_unix_ms))
            .bind(&token.revoked_by)
            .execute(self.conn()?)
            .await
            // Named by the token's name only: the hash identifies a secret.
            .map_err(|e| conflict_or(e, "operator token", &token.name))?;
        Ok(())
    }

    fn encode_audit(rows: Vec<SealedRow>) -> Result<AuditColumns, StoreError> {
        let mut columns = AuditColumns {
            seq: Vec::with_capacity(rows.len()),
            at_ms: Vec::with_capacity(rows.len()),
            kind: Vec::with_capacity(rows.len()),
            identity: Vec::with_capacity(rows.len()),
            task: Vec::with_capacity(rows.len()),
            grant_id: Vec::with_capacity(rows.len()),
            body: Vec::with_capacity(rows.len()),
            hash: Vec::with_capacity(rows.len()),
        };
        for r in rows {
            columns.seq.push(r.seq);
            columns.at_ms.push(r.at_ms);
            columns.kind.push(r.kind);
            columns.identity.push(r.identity);
            columns.task.push(r.task);
            columns.grant_id.push(r.grant_id);
            columns.body.push(r.body);
            columns.hash.push(r.hash);
        }
        Ok(columns)
    }

    async fn insert_audit(&mut self, rows: AuditColumns) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_AUDIT)
            .bind(rows.seq)
            .bind(rows.at_ms)
            .bind(rows.kind)
            .bind(rows.identity)
            .bind(rows.task)
            .bind(rows.grant_id)
            .bind(rows.body)
            .bind(rows.hash)
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn set_audit_head(&mut self, head: &Head) -> Result<(), StoreError> {
        sqlx::query(sql::SET_AUDIT_HEAD)
            .bind(i64::try_from(head.seq).unwrap_or(i64::MAX))
            .bind(head.hash.as_str())
            .execute(self.conn()?)
            .await
            .map(|_| ())
            .map_err(map_sqlx)
    }

    async fn unrevoked_operator_token(
        &mut self,
        name: &str,
    ) -> Result<Option<OperatorTokenRecord>, StoreError> {
        sqlx::query(sql::UNREVOKED_OPERATOR_TOKEN)
            .bind(name)
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .map(|row| operator_token_from_row(&row))
            .transpose()
    }

    async fn revoke_operator_token(
        &mut self,
        name: &str,
        at: OffsetDateTime,
        by: &str,
    ) -> Result<bool, StoreError> {
        let changed = sqlx::query(sql::REVOKE_OPERATOR_TOKEN)
            .bind(name)
            .bind(to_unix_ms(at))
            .bind(by)
            .execute(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn count_live_operator_tokens(&mut self, now: OffsetDateTime) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(sql::COUNT_LIVE_OPERATOR_TOKENS)
            .bind(to_unix_ms(now))
            .fetch_one(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn update_identity(&mut self, i: &Identity) -> Result<Option<Identity>, StoreError> {
        sqlx::query(sql::UPDATE_IDENTITY)
            .bind(&i.id)
            .bind(identity_kind_text(i)?)
            .bind(&i.owner)
            .bind(&i.purpose)
            .bind(i.expires_at.map(to_unix_ms))
            .bind(to_json("labels", &i.labels)?)
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .map(|row| identity_from_row(&row))
            .transpose()
    }

    async fn delete_identity(&mut self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query(sql::DELETE_IDENTITY)
            .bind(id)
            .execute(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn update_target(&mut self, t: &Target) -> Result<Option<Target>, StoreError> {
        sqlx::query(sql::UPDATE_TARGET)
            .bind(&t.name)
            .bind(to_json("actions", &t.actions)?)
            .bind(ttl_secs(t.default_ttl))
            .bind(ttl_secs(t.max_ttl))
            .bind(to_json("allow", &t.allow)?)
            .bind(to_json("settings", &t.settings)?)
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .map(|row| target_from_row(&row))
            .transpose()
    }

    async fn delete_target(&mut self, name: &str) -> Result<bool, StoreError> {
        sqlx::query(sql::DELETE_TARGET_SECRET)
            .bind(name)
            .execute(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        let deleted = sqlx::query(sql::DELETE_TARGET)
            .bind(name)
            .execute(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn root_rotation_pending(&mut self, name: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(sql::ROOT_ROTATION_PENDING)
            .bind(name)
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        Ok(found.is_some())
    }

    async fn count_live_leases(&mut self, of: LiveOf<'_>) -> Result<u64, StoreError> {
        let (statement, key) = match of {
            LiveOf::Identity(id) => (sql::COUNT_LIVE_LEASES_OF_IDENTITY, id),
            LiveOf::Target(name) => (sql::COUNT_LIVE_LEASES_OF_TARGET, name),
        };
        let n: i64 = sqlx::query_scalar(statement)
            .bind(key)
            .fetch_one(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
    async fn insert_task(&mut self, t: &Task) -> Result<(), StoreError> {
        let id = t.id.to_string();
        sqlx::query(sql::INSERT_TASK)
            .bind(&id)
            .bind(&t.identity)
            .bind(&t.owner)
            .bind(&t.purpose)
            .bind(t.parent.map(|p| p.to_string()))
            .bind(t.state.as_str())
            .bind(to_unix_ms(t.deadline))
            .bind(to_unix_ms(t.created_at))
            .bind(t.ended_at.map(to_unix_ms))
            .execute(self.conn()?)
            .await
            .map_err(|e| conflict_or(e, "task", &id))?;
        Ok(())
    }

    async fn task_for_update(&mut self, id: Uuid) -> Result<Option<Task>, StoreError> {
        sqlx::query(sql::GET_TASK_FOR_UPDATE)
            .bind(id.to_string())
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .as_ref()
            .map(task_from_row)
            .transpose()
    }

    async fn insert_webhook_cursor(
        &mut self,
        name: &str,
        seq: u64,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).map_err(|e| StoreError::Backend(e.to_string()))?;
        sqlx::query(sql::INSERT_WEBHOOK_CURSOR)
            .bind(name)
            .bind(seq)
            .bind(to_unix_ms(now))
            .execute(self.conn()?)
            .await
            .map(drop)
            .map_err(map_sqlx)
    }

    async fn claim_webhook(
        &mut self,
        name: &str,
        holder: &str,
        now: OffsetDateTime,
        until: OffsetDateTime,
    ) -> Result<Option<WebhookCursor>, StoreError> {
        sqlx::query(sql::CLAIM_WEBHOOK)
            .bind(name)
            .bind(holder)
            .bind(to_unix_ms(now))
            .bind(to_unix_ms(until))
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?
            .map(|row| webhook_cursor_from_row(&row))
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
        sqlx::query(sql::ADVANCE_WEBHOOK)
            .bind(name)
            .bind(holder)
            .bind(seq)
            .bind(to_unix_ms(now))
            .bind(to_unix_ms(until))
            .execute(self.conn()?)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(map_sqlx)
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
        sqlx::query(sql::WEBHOOK_FAILED)
            .bind(name)
            .bind(holder)
            .bind(error)
            .bind(to_unix_ms(next_attempt))
            .bind(to_unix_ms(now))
            .bind(to_unix_ms(until))
            .execute(self.conn()?)
            .await
            .map(|r| r.rows_affected() == 1)
            .map_err(map_sqlx)
    }

    async fn release_webhook(&mut self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(sql::RELEASE_WEBHOOK)
            .bind(name)
            .bind(holder)
            .execute(self.conn()?)
            .await
            .map(drop)
            .map_err(map_sqlx)
    }

    async fn end_task_tree(
        &mut self,
        id: Uuid,
        to: TaskState,
        now: OffsetDateTime,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(sql::END_TASK_TREE)
            .bind(id.to_string())
            .bind(to.as_str())
            .bind(to_unix_ms(now))
            .fetch_all(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        parse_ids(ids)
    }

    async fn due_tasks(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(sql::DUE_TASKS)
            .bind(to_unix_ms(now))
            .bind(i64::from(limit))
            .fetch_all(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        parse_ids(ids)
    }

    async fn insert_approval(&mut self, a: &ApprovalRecord) -> Result<(), StoreError> {
        let id = a.grant_id.to_string();
        sqlx::query(sql::INSERT_APPROVAL)
            .bind(&id)
            .bind(a.state.as_str())
            .bind(to_unix_ms(a.expires_at))
            .bind(to_unix_ms(a.created_at))
            .bind(to_json("approval", a)?)
            .execute(self.conn()?)
            .await
            .map_err(|e| conflict_or(e, "approval request", &id))?;
        Ok(())
    }

    async fn approval_for_update(
        &mut self,
        grant: Uuid,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        let body: Option<String> = sqlx::query_scalar(sql::GET_APPROVAL_FOR_UPDATE)
            .bind(grant.to_string())
            .fetch_optional(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        body.map(|b| approval_from_json(&b)).transpose()
    }

    async fn update_approval(&mut self, a: &ApprovalRecord) -> Result<(), StoreError> {
        sqlx::query(sql::UPDATE_APPROVAL)
            .bind(a.grant_id.to_string())
            .bind(a.state.as_str())
            .bind(to_unix_ms(a.expires_at))
            .bind(to_json("approval", a)?)
            .execute(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        Ok(())
    }

    async fn due_approvals(
        &mut self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Uuid>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(sql::DUE_APPROVALS)
            .bind(to_unix_ms(now))
            .bind(i64::from(limit))
            .fetch_all(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        parse_ids(ids)
    }

    async fn set_grant_state(
        &mut self,
        id: Uuid,
        from: GrantState,
        to: GrantState,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(sql::SET_GRANT_STATE)
            .bind(id.to_string())
            .bind(from.as_str())
            .bind(to.as_str())
            .bind(to_unix_ms(now))
            .execute(self.conn()?)
            .await
            .map_err(map_sqlx)?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_lease(
        &mut self,
        owner: &str,
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut leases = LeaseColumns::default();
        leases.push(owner, lease, to_unix_ms(now))?;
        let id = lease.id.to_string();
        leases
            .insert(self.conn()?)
            .await
            .map_err(|e| conflict_or(e, "lease", &id))
    }
}

fn parse_ids(ids: Vec<String>) -> Result<Vec<Uuid>, StoreError> {
    ids.iter()
        .map(|t| Uuid::parse_str(t).map_err(|e| corrupt("task id", e)))
        .collect()
}
