//! Conversion between domain records and PostgreSQL rows.
//!
//! Column for column the same as the SQLite backend's (`sqlite/rows.rs`) except flags,
//! which are BOOLEAN here. Anything that cannot be read back (bad UUID, unknown enum text,
//! malformed JSON) is `StoreError::Corrupt`: the store wrote it, so a mismatch means the
//! data or the schema changed underneath us.

use std::str::FromStr;

use mayfly_core::duration::Ttl;
use mayfly_core::model::{Grant, Identity, Lease, Target};
use mayfly_core::store::{OperatorTokenRecord, SigningKeyRecord, StoreError};
use mayfly_core::{from_unix_ms, OffsetDateTime, Uuid};
use sqlx::postgres::PgRow;
use sqlx::{Decode, Postgres, Row, Type};

use super::error::{corrupt, map_sqlx};

fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T, StoreError>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(col).map_err(map_sqlx)
}

fn text(row: &PgRow, col: &str) -> Result<String, StoreError> {
    get::<String>(row, col)
}

fn uuid(row: &PgRow, col: &str) -> Result<Uuid, StoreError> {
    let s: &str = get(row, col)?;
    Uuid::parse_str(s).map_err(|e| corrupt(col, e))
}

fn ts(row: &PgRow, col: &str) -> Result<OffsetDateTime, StoreError> {
    Ok(from_unix_ms(get::<i64>(row, col)?))
}

fn opt_ts(row: &PgRow, col: &str) -> Result<Option<OffsetDateTime>, StoreError> {
    Ok(get::<Option<i64>>(row, col)?.map(from_unix_ms))
}

fn json<T: serde::de::DeserializeOwned>(row: &PgRow, col: &str) -> Result<T, StoreError> {
    let s: &str = get(row, col)?;
    serde_json::from_str(s).map_err(|e| corrupt(col, e))
}

fn parsed<T>(row: &PgRow, col: &str) -> Result<T, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let s: &str = get(row, col)?;
    s.parse().map_err(|e| corrupt(col, e))
}

fn opt_parsed<T>(row: &PgRow, col: &str) -> Result<Option<T>, StoreError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match get::<Option<&str>>(row, col)? {
        Some(s) => s.parse().map(Some).map_err(|e| corrupt(col, e)),
        None => Ok(None),
    }
}

fn ttl(row: &PgRow, col: &str) -> Result<Ttl, StoreError> {
    let secs = get::<i64>(row, col)?;
    u64::try_from(secs)
        .map(Ttl::from_secs)
        .map_err(|_| corrupt(col, "negative duration"))
}

fn flag(row: &PgRow, col: &str) -> Result<bool, StoreError> {
    get::<bool>(row, col)
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

pub(crate) fn identity_from_row(row: &PgRow) -> Result<Identity, StoreError> {
    // IdentityKind has no FromStr; it round-trips through its serde name.
    let kind_text: &str = get(row, "kind")?;
    let kind = serde_json::from_value(serde_json::Value::String(kind_text.to_string()))
        .map_err(|e| corrupt("kind", e))?;
    Ok(Identity {
        id: text(row, "id")?,
        kind,
        owner: text(row, "owner")?,
        purpose: text(row, "purpose")?,
        expires_at: opt_ts(row, "expires_at")?,
        labels: json(row, "labels")?,
        enabled: flag(row, "enabled")?,
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

pub(crate) fn target_from_row(row: &PgRow) -> Result<Target, StoreError> {
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

pub(crate) fn grant_from_row(row: &PgRow) -> Result<Grant, StoreError> {
    Ok(Grant {
        id: uuid(row, "id")?,
        identity: text(row, "identity")?,
        owner: text(row, "owner")?,
        target: text(row, "target")?,
        action: text(row, "action")?,
        purpose: text(row, "purpose")?,
        task: text(row, "task")?,
        requested_ttl: ttl(row, "requested_ttl_s")?,
        granted_ttl: match get::<Option<i64>>(row, "granted_ttl_s")? {
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

/// A lease with the owner copied from its grant, which audit events carry.
pub(crate) struct LeaseRow {
    pub(crate) lease: Lease,
    pub(crate) owner: String,
}

pub(crate) fn lease_from_row(row: &PgRow) -> Result<LeaseRow, StoreError> {
    let attempts = get::<i64>(row, "revoke_attempts")?;
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
            external: flag(row, "external")?,
            provider_state: json(row, "provider_state")?,
            revoke_attempts: u32::try_from(attempts)
                .map_err(|_| corrupt("revoke_attempts", "out of range"))?,
            last_error: get(row, "last_error")?,
        },
    })
}

pub(crate) fn signing_key_from_row(row: &PgRow) -> Result<SigningKeyRecord, StoreError> {
    Ok(SigningKeyRecord {
        kid: text(row, "kid")?,
        alg: text(row, "alg")?,
        public_jwk: json(row, "public_jwk")?,
        private_sealed: get(row, "private_sealed")?,
        created_at: ts(row, "created_at")?,
        retired_at: opt_ts(row, "retired_at")?,
        publish_until: opt_ts(row, "publish_until")?,
    })
}

pub(crate) fn operator_token_from_row(row: &PgRow) -> Result<OperatorTokenRecord, StoreError> {
    Ok(OperatorTokenRecord {
        name: text(row, "name")?,
        token_sha256: get(row, "token_sha256")?,
        created_at: ts(row, "created_at")?,
    })
}
