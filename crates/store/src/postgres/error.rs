//! Mapping of sqlx/PostgreSQL failures onto the store's error contract.
//!
//! PostgreSQL's messages name tables, columns and constraints; the store never formats a
//! bound value or the connection URL into an error. Connection-level failures (refused,
//! reset, server shutting down, pool exhausted) are `Unavailable`: the pool reconnects on
//! its own once the server is back, so callers only need to retry.

pub(crate) use crate::errors::corrupt;
use mayfly_core::store::StoreError;

/// Maps an error with no better context. Call sites that know which record a unique
/// violation is about use [`conflict_or`].
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
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let msg = db.message().to_string();
            classify(&code, msg)
        }
        E::PoolClosed => StoreError::Unavailable("the store is closed".into()),
        E::PoolTimedOut => StoreError::Unavailable(
            "timed out waiting for a PostgreSQL connection (is the server reachable?)".into(),
        ),
        E::WorkerCrashed => StoreError::Unavailable("a database worker stopped".into()),
        E::Io(e) => StoreError::Unavailable(format!("PostgreSQL I/O error: {e}")),
        E::Tls(e) => StoreError::Unavailable(format!("PostgreSQL TLS error: {e}")),
        E::Protocol(m) => StoreError::Unavailable(format!("PostgreSQL protocol error: {m}")),
        e @ (E::ColumnDecode { .. }
        | E::Decode(_)
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::TypeNotFound { .. }) => StoreError::Corrupt(e.to_string()),
        E::Migrate(e) => migrate_error(*e),
        // Configuration errors come from parsing the URL; their text never holds it, and
        // `open` redacts the password from every message anyway.
        other => StoreError::Backend(other.to_string()),
    }
}

/// SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57P0x the server
/// is shutting down or starting, 40001/40P01 serialisation failure or deadlock (the
/// transaction was rolled back and may simply be retried), 25006 a read-only standby.
fn classify(code: &str, msg: String) -> StoreError {
    match code {
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") => {
            StoreError::Unavailable(msg)
        }
        "40001" | "40P01" | "25006" | "55P03" => StoreError::Unavailable(msg),
        c if c.starts_with("XX") => StoreError::Corrupt(msg),
        _ => StoreError::Backend(msg),
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

/// Maps a unique violation to `Conflict { what, id }` and anything else as usual.
pub(crate) fn conflict_or(err: sqlx::Error, what: &'static str, id: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
            what,
            id: id.to_string(),
        },
        _ => map_sqlx(err),
    }
}

/// Removes `secret` from an error's text (used with the URL's password while opening).
pub(crate) fn redact(err: StoreError, secret: Option<&str>) -> StoreError {
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return err;
    };
    let clean = |m: String| m.replace(secret, "***");
    match err {
        StoreError::Unavailable(m) => StoreError::Unavailable(clean(m)),
        StoreError::Corrupt(m) => StoreError::Corrupt(clean(m)),
        StoreError::Backend(m) => StoreError::Backend(clean(m)),
        StoreError::Conflict { what, id } => StoreError::Conflict {
            what,
            id: clean(id),
        },
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_classify() {
        assert!(matches!(
            classify("08006", "x".into()),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify("57P01", "x".into()),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify("40P01", "x".into()),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify("XX001", "x".into()),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            classify("42P01", "x".into()),
            StoreError::Backend(_)
        ));
    }

    #[test]
    fn redact_removes_the_password() {
        let e = redact(
            StoreError::Backend("bad url postgres://u:hunter2@h/db".into()),
            Some("hunter2"),
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
