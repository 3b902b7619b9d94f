//! Conversion between domain records and database rows, for every backend.
//!
//! Both schemas store the same columns with the same encodings (text UUIDs and enum
//! names, JSON text, Unix milliseconds); only flags differ in SQL type (INTEGER 0/1 in
//! SQLite, BOOLEAN in PostgreSQL), which sqlx decodes to `bool` either way. Anything that
//! cannot be read back (bad UUID, unknown enum text, malformed JSON) is
//! `StoreError::Corrupt`: the store wrote it, so a mismatch means the data or the schema
//! changed underneath us.

use std::str::FromStr;

use mayfly_core::duration::Ttl;
use mayfly_core::model::{ApprovalRecord, Grant, Identity, Lease, Target, Task};
use mayfly_core::store::{
    OperatorTokenRecord, PendingRootRotation, SigningKeyRecord, StoreError, WebhookCursor,
};
use mayfly_core::{from_unix_ms, OffsetDateTime, Uuid};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::engine::LeaseRow;
use crate::errors::corrupt;

/// The column reads record conversion needs, for a row of any backend.
pub(crate) trait Columns {
    fn opt_str(&self, col: &str) -> Result<Option<&str>, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, col: &str) -> Result<bool, StoreError>;
    fn blob(&self, col: &str) -> Result<Vec<u8>, StoreError>;
}

/// Reads a column through sqlx; a value that does not decode as written is corrupt.
fn sqlx_column<'r, R, T>(row: &'r R, col: &str) -> Result<T, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(col).map_err(|e| corrupt(col, e))
}

/// The sqlx rows of both backends (flags decode to `bool` from SQLite's INTEGER too).
macro_rules! sqlx_columns {
    ($($row:ty),*) => {$(
        impl Columns for $row {
            fn opt_str(&self, col: &str) -> Result<Option<&str>, StoreError> {
                sqlx_column(self, col)
            }

            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                sqlx_column(self, col)
            }

            fn flag(&self, col: &str) -> Result<bool, StoreError> {
                sqlx_column(self, col)
            }

            fn blob(&self, col: &str) -> Result<Vec<u8>, StoreError> {
                sqlx_column(self, col)
            }
        }
    )*};
}

sqlx_columns!(sqlx::sqlite::SqliteRow, sqlx::postgres::PgRow);

/// The SQLite writer's rows.
impl Columns for rusqlite::Row<'_> {
    fn opt_str(&self, col: &str) -> Result<Option<&str>, StoreError> {
        self.get_ref(col)
            .and_then(|v| v.as_str_or_null().map_err(rusqlite::Error::from))
            .map_err(|e| corrupt(col, e))
    }

    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.get(col).map_err(|e| corrupt(col, e))
    }

    fn flag(&self, col: &str) -> Result<bool, StoreError> {
        self.get(col).map_err(|e| corrupt(col, e))
    }

    fn blob(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        self.get(col).map_err(|e| corrupt(col, e))
    }
}

fn str<'r>(row: &'r impl Columns, col: &str) -> Result<&'r str, StoreError> {
    row.opt_str(col)?
        .ok_or_else(|| corrupt(col, "unexpected NULL"))
}

fn int(row: &impl Columns, col: &str) -> Result<i64, StoreError> {
    row.opt_int(col)?
        .ok_or_else(|| corrupt(col, "unexpected NULL"))
}

fn text(row: &impl Columns, col: &str) -> Result<String, StoreError> {
    str(row, col).map(str::to_string)
}

fn uuid(row: &impl Columns, col: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(str(row, col)?).map_err(|e| corrupt(col, e))
}

fn ts(row: &impl Columns, col: &str) -> Result<OffsetDateTime, StoreError> {
    Ok(from_unix_ms(int(row, col)?))
}

fn opt_ts(row: &impl Columns, col: &str) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(row.opt_int(col)?.map(from_unix_ms))
}

fn json<T: serde::de::DeserializeOwned>(row: &impl Columns, col: &str) -> Result<T, StoreError> {
    serde_json::from_str(str(row, col)?).map_err(|e| corrupt(col, e))
}

fn parsed<T>(row: &impl Columns, col: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    str(row, col)?.parse().map_err(|e| corrupt(col, e))
}

fn opt_parsed<T>(row: &impl Columns, col: &str) -> Result<Option<T>, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match row.opt_str(col)? {
        Some(s) => s.parse().map(Some).map_err(|e| corrupt(col, e)),
        None => Ok(None),
    }
}

fn ttl(row: &impl Columns, col: &str) -> Result<Ttl, StoreError> {
    u64::try_from(int(row, col)?)
        .map(Ttl::from_secs)
        .map_err(|_| corrupt(col, "negative duration"))
}

/// Serialises a JSON column. Domain values always serialise; the error path exists only
/// because the signature of `serde_json::to_string` has one.
pub(crate) fn to_json<T: serde::Serialize>(what: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))
}

pub(crate) fn ttl_secs(t: Ttl) -> i64 {
    // Ttl is capped at 10 years, far inside i64.
    i64::try_from(t.as_secs()).unwrap_or(i64::MAX)
}

pub(crate) fn identity_from_row(row: &impl Columns) -> Result<Identity, StoreError> {
    // IdentityKind has no FromStr; it round-trips through its serde name.
    let kind_text = str(row, "kind")?;
    let kind = serde_json::from_value(serde_json::Value::String(kind_text.to_string()))
        .map_err(|e| corrupt("kind", e))?;
    Ok(Identity {
        id: text(row, "id")?,
        kind,
        owner: text(row, "owner")?,
        purpose: text(row, "purpose")?,
        expires_at: opt_ts(row, "expires_at")?,
        labels: json(row, "labels")?,
        enabled: row.flag("enabled")?,
        created_at: ts(row, "created_at")?,
    })
}

/// The serde name of an identity kind (`service`, `agent`, …).
pub(crate) fn identity_kind_text(identity: &Identity) -> Result<String, StoreError> {
    match serde_json::to_value(identity.kind) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        _ => Err(StoreError::Backend(
            "identity kind did not serialise to a string".into(),
        )),
    }
}

pub(crate) fn target_from_row(row: &impl Columns) -> Result<Target, StoreError> {
    Ok(Target {
        name: text(row, "name")?,
        kind: text(row, "kind")?,
        actions: json(row, "actions")?,
        default_ttl: ttl(row, "default_ttl_s")?,
        max_ttl: ttl(row, "max_ttl_s")?,
        allow: json(row, "allow")?,
        settings: json(row, "settings")?,
        created_at: ts(row, "created_at")?,
    })
}

pub(crate) fn grant_from_row(row: &impl Columns) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: uuid(row, "id")?,
        identity: text(row, "identity")?,
        owner: text(row, "owner")?,
        target: text(row, "target")?,
        action: text(row, "action")?,
        purpose: text(row, "purpose")?,
        task: text(row, "task")?,
        requested_ttl: ttl(row, "requested_ttl_s")?,
        granted_ttl: match row.opt_int("granted_ttl_s")? {
            Some(_) => Some(ttl(row, "granted_ttl_s")?),
            None => None,
        },
        context: json(row, "context")?,
        state: parsed(row, "state")?,
        revocation_reason: opt_parsed(row, "revocation_reason")?,
        decision: json(row, "decision")?,
        created_at: ts(row, "created_at")?,
        updated_at: ts(row, "updated_at")?,
    })
}

pub(crate) fn lease_from_row(row: &impl Columns) -> Result<LeaseRow, StoreError> {
    let attempts = int(row, "revoke_attempts")?;
    Ok(LeaseRow {
        owner: text(row, "owner")?,
        lease: Lease {
            id: uuid(row, "id")?,
            grant_id: uuid(row, "grant_id")?,
            kind: text(row, "kind")?,
            identity: text(row, "identity")?,
            target: text(row, "target")?,
            task: text(row, "task")?,
            issued_at: ts(row, "issued_at")?,
            expires_at: ts(row, "expires_at")?,
            max_expires_at: ts(row, "max_expires_at")?,
            state: parsed(row, "state")?,
            revocation_reason: opt_parsed(row, "revocation_reason")?,
            external: row.flag("external")?,
            provider_state: json(row, "provider_state")?,
            revoke_attempts: u32::try_from(attempts)
                .map_err(|_| corrupt("revoke_attempts", "out of range"))?,
            last_error: row.opt_str("last_error")?.map(str::to_string),
        },
    })
}

/// An `audit_checkpoints` row.
pub(crate) fn audit_checkpoint_from_row(
    row: &impl Columns,
) -> Result<mayfly_core::checkpoint::Checkpoint, StoreError> {
    Ok(mayfly_core::checkpoint::Checkpoint {
        seq: u64::try_from(int(row, "seq")?)
            .map_err(|_| StoreError::Corrupt("audit_checkpoints has a negative seq".into()))?,
        hash: text(row, "hash")?,
        at: ts(row, "at_ms")?,
        kid: text(row, "kid")?,
        jws: text(row, "jws")?,
    })
}

pub(crate) fn signing_key_from_row(row: &impl Columns) -> Result<SigningKeyRecord, StoreError> {
    Ok(SigningKeyRecord {
        kid: text(row, "kid")?,
        alg: text(row, "alg")?,
        public_jwk: json(row, "public_jwk")?,
        private_sealed: row.blob("private_sealed")?,
        created_at: ts(row, "created_at")?,
        retired_at: opt_ts(row, "retired_at")?,
        publish_until: opt_ts(row, "publish_until")?,
    })
}

pub(crate) fn operator_token_from_row(
    row: &impl Columns,
) -> Result<OperatorTokenRecord, StoreError> {
    Ok(OperatorTokenRecord {
        name: text(row, "name")?,
        token_sha256: row.blob("token_sha256")?,
        created_at: ts(row, "created_at")?,
        expires_at: opt_ts(row, "expires_at")?,
        created_by: text(row, "created_by")?,
        revoked_at: opt_ts(row, "revoked_at")?,
        revoked_by: row.opt_str("revoked_by")?.map(str::to_string),
    })
}

pub(crate) fn root_rotation_from_row(
    row: &impl Columns,
) -> Result<PendingRootRotation, StoreError> {
    Ok(PendingRootRotation {
        target: text(row, "target")?,
        sealed: row.blob("sealed")?,
        started_at: ts(row, "started_at")?,
    })
}

pub(crate) fn task_from_row(row: &impl Columns) -> Result<Task, StoreError> {
    Ok(Task {
        id: uuid(row, "id")?,
        identity: text(row, "identity")?,
        owner: text(row, "owner")?,
        purpose: text(row, "purpose")?,
        parent: match row.opt_str("parent")? {
            Some(p) => Some(Uuid::parse_str(p).map_err(|e| corrupt("parent", e))?),
            None => None,
        },
        state: parsed(row, "state")?,
        deadline: ts(row, "deadline")?,
        created_at: ts(row, "created_at")?,
        ended_at: opt_ts(row, "ended_at")?,
    })
}

/// An approval request from its stored JSON document.
pub(crate) fn approval_from_json(body: &str) -> Result<ApprovalRecord, StoreError> {
    serde_json::from_str(body).map_err(|e| corrupt("approval request", e))
}

/// A `webhook_cursors` row (columns as in the backends' `WEBHOOK_CURSOR_COLS`).
pub(crate) fn webhook_cursor_from_row(row: &impl Columns) -> Result<WebhookCursor, StoreError> {
    Ok(WebhookCursor {
        name: text(row, "name")?,
        delivered_seq: u64::try_from(int(row, "delivered_seq")?)
            .map_err(|e| corrupt("delivered_seq", e))?,
        attempts: u32::try_from(int(row, "attempts")?).map_err(|e| corrupt("attempts", e))?,
        next_attempt_at: opt_ts(row, "next_attempt_at")?,
        last_error: row.opt_str("last_error")?.map(str::to_string),
        failing_since: opt_ts(row, "failing_since")?,
        claimed_by: row.opt_str("claimed_by")?.map(str::to_string),
        claimed_until: opt_ts(row, "claimed_until")?,
    })
}
