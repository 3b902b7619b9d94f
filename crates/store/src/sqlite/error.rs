//! Mapping of sqlx/SQLite failures onto the store's error contract.
//!
//! SQLite's messages name tables, columns and constraints but never bound values, so
//! passing them on cannot leak a secret; values are never formatted into errors here.

pub(crate) use crate::errors::corrupt;
use mayfly_core::store::StoreError;

// Primary SQLite result codes (the low byte of an extended code).
const SQLITE_IOERR: i64 = 10;
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;
const SQLITE_NOTADB: i64 = 26;
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_READONLY: i64 = 8;

/// Maps an error with no better context. Call sites that know which record a unique
/// violation is about use [`conflict_or_rusqlite`] instead, so the caller learns what clashed.
pub(crate) fn map_sqlx(err: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match err {
        E::Database(db) => {
            if db.is_unique_violation() {
                return StoreError::Conflict {
                    what: "record",
                    id: db.message().to_string(),
                };
            }
            let primary = db
                .code()
                .and_then(|c| c.parse::<i64>().ok())
                .map(|c| c & 0xff);
            let msg = db.message().to_string();
            match primary {
                Some(
                    SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN,
                ) => StoreError::Unavailable(msg),
                Some(SQLITE_READONLY) => StoreError::Unavailable(msg),
                Some(SQLITE_CORRUPT | SQLITE_NOTADB) => StoreError::Corrupt(msg),
                _ => StoreError::Backend(msg),
            }
        }
        E::PoolClosed => StoreError::Unavailable("the store is closed".into()),
        E::PoolTimedOut => {
            StoreError::Unavailable("timed out waiting for a database connection".into())
        }
        E::WorkerCrashed => StoreError::Unavailable("the SQLite worker thread stopped".into()),
        E::Io(e) => StoreError::Unavailable(format!("I/O error: {e}")),
        e @ (E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. }) => StoreError::Corrupt(e.to_string()),
        E::Migrate(e) => migrate_error(*e),
        other => StoreError::Backend(other.to_string()),
    }
}

pub(crate) fn migrate_error(err: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError as M;
    match err {
        // The database was migrated by a newer Mayfly: refuse rather than misread it.
        M::VersionMissing(v) => StoreError::Corrupt(format!(
            "the database has schema migration {v}, which this version of Mayfly does not know; \
             upgrade Mayfly or use another database"
        )),
        M::VersionMismatch(v) => StoreError::Corrupt(format!(
            "schema migration {v} differs from the one this version of Mayfly applied"
        )),
        M::Dirty(v) => StoreError::Corrupt(format!(
            "schema migration {v} was interrupted and left the database partly migrated"
        )),
        M::Execute(e) => map_sqlx(e),
        other => StoreError::Backend(format!("schema migration failed: {other}")),
    }
}

/// [`map_sqlx`] for the writer's own (rusqlite) connection: the same classification.
pub(crate) fn map_rusqlite(err: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match err {
        rusqlite::Error::SqliteFailure(e, msg) => {
            let msg = msg.unwrap_or_else(|| e.to_string());
            match e.code {
                C::ConstraintViolation if is_unique(&e) => StoreError::Conflict {
                    what: "record",
                    id: msg,
                },
                C::DatabaseBusy
                | C::DatabaseLocked
                | C::SystemIoFailure
                | C::DiskFull
                | C::CannotOpen
                | C::ReadOnly => StoreError::Unavailable(msg),
                C::DatabaseCorrupt | C::NotADatabase => StoreError::Corrupt(msg),
                _ => StoreError::Backend(msg),
            }
        }
        e @ (rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::InvalidColumnName(_)
        | rusqlite::Error::IntegralValueOutOfRange(..)) => StoreError::Corrupt(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

fn is_unique(e: &rusqlite::ffi::Error) -> bool {
    matches!(
        e.extended_code,
        rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// Maps a unique violation to `Conflict { what, id }` and anything else as usual.
pub(crate) fn conflict_or_rusqlite(
    err: rusqlite::Error,
    what: &'static str,
    id: &str,
) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(e, _) if is_unique(e) => StoreError::Conflict {
            what,
            id: id.to_string(),
        },
        _ => map_rusqlite(err),
    }
}
