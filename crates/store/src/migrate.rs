//! Copying a whole deployment from one backend to another (`mayfly store migrate`).
//!
//! This module owns [`copy_store`]: every row of every table — identities, targets, sealed
//! target secrets, grants, leases, signing keys, operator tokens and the audit chain with
//! its head — moves verbatim, so the copied chain has the same sequence numbers, bodies and
//! hashes and verifies on the target. Secrets stay sealed: the master key is not needed
//! and nothing is decrypted.
//!
//! Rows are streamed in keyset-paginated batches (constant memory whatever the size) and
//! written in one target transaction: a copy that fails leaves the target empty, ready for
//! another attempt. The source should be quiescent (brokers stopped); it is read inside one
//! transaction, so even a busy source yields a consistent snapshot.

use std::path::PathBuf;

use mayfly_core::audit::VerifyReport;
use mayfly_core::store::{Store, StoreError};
use mayfly_core::CoreError;
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Postgres, Row, SqliteConnection};

use crate::{backend_of, Backend, Durability, PgStore, SqliteStore};

/// Rows read and written per statement. 500 rows × 17 columns stays well inside both
/// engines' bound-parameter limits.
const BATCH: i64 = 500;

/// What [`copy_store`] moved, per table, and the verification of the copied chain.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyReport {
    pub identities: u64,
    pub targets: u64,
    pub target_secrets: u64,
    /// Root rotations not yet resolved: both candidates must survive the copy.
    pub target_rotations: u64,
    pub tasks: u64,
    pub grants: u64,
    pub leases: u64,
    pub signing_keys: u64,
    pub operator_tokens: u64,
    /// Outgoing webhooks' delivery positions, so none redelivers or skips after the move.
    pub webhook_cursors: u64,
    /// Signed checkpoints of the audit chain (still valid: the entries are copied as they are).
    pub audit_checkpoints: u64,
    pub audit_entries: u64,
    /// The chain head copied (sequence number and hash of the last entry).
    pub audit_head_seq: u64,
    pub audit_head_hash: String,
    /// `verify_audit` run on the target after the copy.
    pub verified: Option<VerifyReport>,
}

/// How a column is stored: flags are 0/1 INTEGER in SQLite and BOOLEAN in PostgreSQL;
/// everything else has the same representation in both schemas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    Int,
    Text,
    Bytes,
    Bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

struct Table {
    name: &'static str,
    /// Columns in order; the first is the unique key batches are paged by.
    cols: &'static [(&'static str, Col)],
}

use Col::{Bool, Bytes, Int, Text};

/// In foreign-key order: targets before their secrets, grants before their leases.
const TABLES: &[Table] = &[
    Table {
        name: "identities",
        cols: &[
            ("id", Text),
            ("kind", Text),
            ("owner", Text),
            ("purpose", Text),
            ("expires_at", Int),
            ("labels", Text),
            ("enabled", Bool),
            ("created_at", Int),
        ],
    },
    Table {
        name: "targets",
        cols: &[
            ("name", Text),
            ("kind", Text),
            ("actions", Text),
            ("default_ttl_s", Int),
            ("max_ttl_s", Int),
            ("allow", Text),
            ("settings", Text),
            ("created_at", Int),
        ],
    },
    Table {
        name: "target_secrets",
        cols: &[("target", Text), ("sealed", Bytes), ("updated_at", Int)],
    },
    Table {
        name: "target_rotations",
        cols: &[("target", Text), ("sealed", Bytes), ("started_at", Int)],
    },
    Table {
        name: "tasks",
        cols: &[
            ("id", Text),
            ("identity", Text),
            ("owner", Text),
            ("purpose", Text),
            ("parent", Text),
            ("state", Text),
            ("deadline", Int),
            ("created_at", Int),
            ("ended_at", Int),
        ],
    },
    Table {
        name: "grants",
        cols: &[
            ("id", Text),
            ("identity", Text),
            ("owner", Text),
            ("target", Text),
            ("action", Text),
            ("purpose", Text),
            ("task", Text),
            ("requested_ttl_s", Int),
            ("granted_ttl_s", Int),
            ("context", Text),
            ("state", Text),
            ("revocation_reason", Text),
            ("decision", Text),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        name: "leases",
        cols: &[
            ("id", Text),
            ("grant_id", Text),
            ("kind", Text),
            ("identity", Text),
            ("owner", Text),
            ("target", Text),
            ("task", Text),
            ("issued_at", Int),
            ("expires_at", Int),
            ("max_expires_at", Int),
            ("state", Text),
            ("revocation_reason", Text),
            ("external", Bool),
            ("provider_state", Text),
            ("revoke_attempts", Int),
            ("last_error", Text),
            ("next_attempt_at", Int),
        ],
    },
    Table {
        name: "signing_keys",
        cols: &[
            ("kid", Text),
            ("alg", Text),
            ("public_jwk", Text),
            ("private_sealed", Bytes),
            ("created_at", Int),
            ("retired_at", Int),
            ("publish_until", Int),
        ],
    },
    Table {
        name: "operator_tokens",
        // The hash first: the copy pages by the first column, which must be unique, and
        // a name is unique only among unrevoked tokens.
        cols: &[
            ("token_sha256", Bytes),
            ("name", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("created_by", Text),
            ("revoked_at", Int),
            ("revoked_by", Text),
        ],
    },
    Table {
        name: "audit_checkpoints",
        // Copied in order of `jws`, the one column that is unique on its own (the first
        // column is the copy's paging key).
        cols: &[
            ("jws", Text),
            ("seq", Int),
            ("kid", Text),
            ("hash", Text),
            ("at_ms", Int),
        ],
    },
    Table {
        name: "webhook_cursors",
        cols: &[
            ("name", Text),
            ("delivered_seq", Int),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("last_error", Text),
            ("failing_since", Int),
            ("claimed_by", Text),
            ("claimed_until", Int),
            ("created_at", Int),
        ],
    },
    Table {
        name: "audit",
        cols: &[
            ("seq", Int),
            ("at_ms", Int),
            ("kind", Text),
            ("identity", Text),
            ("task", Text),
            ("grant_id", Text),
            ("body", Text),
            ("hash", Text),
        ],
    },
];

/// A raw connection to either engine; the copy speaks plain SQL to both.
enum Raw {
    Sqlite(SqliteConnection),
    Pg(PoolConnection<Postgres>),
}

impl Raw {
    fn placeholder(&self, n: usize) -> String {
        match self {
            Raw::Sqlite(_) => format!("?{n}"),
            Raw::Pg(_) => format!("${n}"),
        }
    }

    async fn exec(&mut self, statement: &str) -> Result<(), StoreError> {
        match self {
            Raw::Sqlite(c) => sqlx::query(statement).execute(&mut *c).await.map(|_| ()),
            Raw::Pg(c) => sqlx::query(statement).execute(&mut **c).await.map(|_| ()),
        }
        .map_err(backend)
    }

    /// Up to [`BATCH`] rows of `table` with a key greater than `after`, in key order.
    async fn read_batch(
        &mut self,
        table: &Table,
        after: Option<&Val>,
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        let cols: Vec<&str> = table.cols.iter().map(|(c, _)| *c).collect();
        let key = cols[0];
        let filter = match after {
            Some(_) => format!(" WHERE {key} > {}", self.placeholder(1)),
            None => String::new(),
        };
        let statement = format!(
            "SELECT {} FROM {}{filter} ORDER BY {key} LIMIT {BATCH}",
            cols.join(", "),
            table.name
        );
        match self {
            Raw::Sqlite(c) => {
                let mut q = sqlx::query(&statement);
                if let Some(v) = after {
                    q = bind_sqlite(q, v, table.cols[0].1);
                }
                let rows = q.fetch_all(&mut *c).await.map_err(backend)?;
                rows.iter()
                    .map(|r| {
                        table
                            .cols
                            .iter()
                            .enumerate()
                            .map(|(i, (_, t))| get_sqlite(r, i, *t))
                            .collect()
                    })
                    .collect()
            }
            Raw::Pg(c) => {
                let mut q = sqlx::query(&statement);
                if let Some(v) = after {
                    q = bind_pg(q, v, table.cols[0].1);
                }
                let rows = q.fetch_all(&mut **c).await.map_err(backend)?;
                rows.iter()
                    .map(|r| {
                        table
                            .cols
                            .iter()
                            .enumerate()
                            .map(|(i, (_, t))| get_pg(r, i, *t))
                            .collect()
                    })
                    .collect()
            }
        }
    }

    async fn insert_batch(&mut self, table: &Table, rows: &[Vec<Val>]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let width = table.cols.len();
        let tuples: Vec<String> = (0..rows.len())
            .map(|r| {
                let ps: Vec<String> = (1..=width)
                    .map(|c| self.placeholder(r * width + c))
                    .collect();
                format!("({})", ps.join(", "))
            })
            .collect();
        let cols: Vec<&str> = table.cols.iter().map(|(c, _)| *c).collect();
        let statement = format!(
            "INSERT INTO {} ({}) VALUES {}",
            table.name,
            cols.join(", "),
            tuples.join(", ")
        );
        match self {
            Raw::Sqlite(c) => {
                let mut q = sqlx::query(&statement);
                for row in rows {
                    for (v, (_, t)) in row.iter().zip(table.cols) {
                        q = bind_sqlite(q, v, *t);
                    }
                }
                q.execute(&mut *c).await.map(|_| ()).map_err(backend)
            }
            Raw::Pg(c) => {
                let mut q = sqlx::query(&statement);
                for row in rows {
                    for (v, (_, t)) in row.iter().zip(table.cols) {
                        q = bind_pg(q, v, *t);
                    }
                }
                q.execute(&mut **c).await.map(|_| ()).map_err(backend)
            }
        }
    }

    async fn scalar_i64(&mut self, statement: &str) -> Result<i64, StoreError> {
        match self {
            Raw::Sqlite(c) => sqlx::query_scalar(statement).fetch_one(&mut *c).await,
            Raw::Pg(c) => sqlx::query_scalar(statement).fetch_one(&mut **c).await,
        }
        .map_err(backend)
    }

    async fn head(&mut self) -> Result<(i64, String), StoreError> {
        let statement = "SELECT seq, hash FROM audit_head WHERE id = 1";
        match self {
            Raw::Sqlite(c) => sqlx::query_as(statement).fetch_one(&mut *c).await,
            Raw::Pg(c) => sqlx::query_as(statement).fetch_one(&mut **c).await,
        }
        .map_err(backend)
    }

    async fn set_head(&mut self, seq: i64, hash: &str) -> Result<(), StoreError> {
        let statement = format!(
            "UPDATE audit_head SET seq = {}, hash = {} WHERE id = 1",
            self.placeholder(1),
            self.placeholder(2)
        );
        match self {
            Raw::Sqlite(c) => sqlx::query(&statement)
                .bind(seq)
                .bind(hash)
                .execute(&mut *c)
                .await
                .map(|_| ()),
            Raw::Pg(c) => sqlx::query(&statement)
                .bind(seq)
                .bind(hash)
                .execute(&mut **c)
                .await
                .map(|_| ()),
        }
        .map_err(backend)
    }

    async fn close(self) {
        match self {
            Raw::Sqlite(c) => {
                let _ = c.close().await;
            }
            // Returned to its pool, which the caller closes.
            Raw::Pg(c) => drop(c),
        }
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

fn bind_sqlite<'q>(q: SqliteQuery<'q>, v: &Val, t: Col) -> SqliteQuery<'q> {
    match (v, t) {
        (Val::Null, Col::Bytes) => q.bind(None::<Vec<u8>>),
        (Val::Null, Col::Text) => q.bind(None::<String>),
        (Val::Null, _) => q.bind(None::<i64>),
        (Val::Int(i), _) => q.bind(*i),
        (Val::Bool(b), _) => q.bind(i64::from(*b)),
        (Val::Text(s), _) => q.bind(s.clone()),
        (Val::Bytes(b), _) => q.bind(b.clone()),
    }
}

fn bind_pg<'q>(q: PgQuery<'q>, v: &Val, t: Col) -> PgQuery<'q> {
    match (v, t) {
        (Val::Null, Col::Bytes) => q.bind(None::<Vec<u8>>),
        (Val::Null, Col::Text) => q.bind(None::<String>),
        (Val::Null, Col::Bool) => q.bind(None::<bool>),
        (Val::Null, Col::Int) => q.bind(None::<i64>),
        (Val::Int(i), _) => q.bind(*i),
        (Val::Bool(b), _) => q.bind(*b),
        (Val::Text(s), _) => q.bind(s.clone()),
        (Val::Bytes(b), _) => q.bind(b.clone()),
    }
}

fn get_sqlite(r: &sqlx::sqlite::SqliteRow, i: usize, t: Col) -> Result<Val, StoreError> {
    let v = match t {
        Col::Int => r.try_get::<Option<i64>, _>(i).map(|v| v.map(Val::Int)),
        Col::Bool => r
            .try_get::<Option<i64>, _>(i)
            .map(|v| v.map(|b| Val::Bool(b != 0))),
        Col::Text => r.try_get::<Option<String>, _>(i).map(|v| v.map(Val::Text)),
        Col::Bytes => r
            .try_get::<Option<Vec<u8>>, _>(i)
            .map(|v| v.map(Val::Bytes)),
    };
    v.map(|v| v.unwrap_or(Val::Null)).map_err(backend)
}

fn get_pg(r: &sqlx::postgres::PgRow, i: usize, t: Col) -> Result<Val, StoreError> {
    let v = match t {
        Col::Int => r.try_get::<Option<i64>, _>(i).map(|v| v.map(Val::Int)),
        Col::Bool => r.try_get::<Option<bool>, _>(i).map(|v| v.map(Val::Bool)),
        Col::Text => r.try_get::<Option<String>, _>(i).map(|v| v.map(Val::Text)),
        Col::Bytes => r
            .try_get::<Option<Vec<u8>>, _>(i)
            .map(|v| v.map(Val::Bytes)),
    };
    v.map(|v| v.unwrap_or(Val::Null)).map_err(backend)
}

/// Errors carry SQL engine messages only (they never hold a URL or a bound value).
fn backend(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(e) => StoreError::Unavailable(e.to_string()),
        sqlx::Error::PoolTimedOut => StoreError::Unavailable("timed out connecting".into()),
        other => StoreError::Backend(format!("copying the store: {other}")),
    }
}

/// An opened end of the copy: the store (for migrations and verification) and a raw
/// connection for row access.
struct End {
    raw: Raw,
    store: Opened,
}

enum Opened {
    Sqlite(PathBuf),
    Pg(PgStore),
}

fn sqlite_path(url: &str) -> Result<PathBuf, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if rest.is_empty() || rest == ":memory:" || rest.contains('?') {
        return Err(StoreError::Rejected(CoreError::invalid(
            "store",
            "copying needs a SQLite database file path (no :memory:, no query parameters)",
        )));
    }
    Ok(PathBuf::from(rest))
}

/// Opens one end, applying migrations with the backend's own `open` (so both ends have the
/// current schema), then takes a raw connection.
async fn open_end(url: &str, must_exist: bool) -> Result<End, StoreError> {
    match backend_of(url)? {
        Backend::Sqlite => {
            let path = sqlite_path(url)?;
            if must_exist && !path.is_file() {
                return Err(StoreError::NotFound {
                    what: "SQLite database",
                    id: path.display().to_string(),
                });
            }
            let store = SqliteStore::open(url, Durability::Fsync).await?;
            store.close().await;
            let conn = SqliteConnectOptions::new()
                .filename(&path)
                .foreign_keys(true)
                .log_statements(tracing::log::LevelFilter::Off)
                .connect()
                .await
                .map_err(backend)?;
            Ok(End {
                raw: Raw::Sqlite(conn),
                store: Opened::Sqlite(path),
            })
        }
        Backend::Postgres => {
            let store = PgStore::open(url).await?;
            let conn = store.pool().acquire().await.map_err(backend)?;
            Ok(End {
                raw: Raw::Pg(conn),
                store: Opened::Pg(store),
            })
        }
    }
}

/// Copies every row of the store at `from` into the empty store at `to` (either may be
/// SQLite or PostgreSQL), then verifies the copied audit chain on the target.
///
/// Refuses (`Rejected`) a target that already holds any row or audit entry. Neither URL
/// appears in errors.
pub async fn copy_store(from: &str, to: &str) -> Result<CopyReport, StoreError> {
    let mut src = open_end(from, true).await?;
    let mut dst = open_end(to, false).await?;
    let result = copy_rows(&mut src.raw, &mut dst.raw).await;
    src.raw.close().await;
    dst.raw.close().await;
    let mut report = result?;
    let verified = match &dst.store {
        Opened::Pg(store) => store.verify_audit().await?,
        Opened::Sqlite(path) => {
            let store = SqliteStore::open(&path.display().to_string(), Durability::Fsync).await?;
            let v = store.verify_audit().await;
            store.close().await;
            v?
        }
    };
    if let Opened::Pg(store) = &src.store {
        store.close().await;
    }
    if let Opened::Pg(store) = &dst.store {
        store.close().await;
    }
    if !verified.ok() || verified.last_seq.unwrap_or(0) != report.audit_head_seq {
        return Err(StoreError::Corrupt(format!(
            "the copied audit chain does not verify: {verified:?}"
        )));
    }
    report.verified = Some(verified);
    Ok(report)
}

async fn copy_rows(src: &mut Raw, dst: &mut Raw) -> Result<CopyReport, StoreError> {
    // One snapshot of the source for the whole copy.
    match src {
        Raw::Sqlite(_) => src.exec("BEGIN").await?,
        Raw::Pg(_) => {
            src.exec("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await?
        }
    }
    dst.exec("BEGIN").await?;
    let result = copy_in_transaction(src, dst).await;
    let _ = src.exec("ROLLBACK").await;
    match result {
        Ok(report) => {
            dst.exec("COMMIT").await?;
            Ok(report)
        }
        Err(e) => {
            let _ = dst.exec("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn copy_in_transaction(src: &mut Raw, dst: &mut Raw) -> Result<CopyReport, StoreError> {
    for table in TABLES {
        let n = dst
            .scalar_i64(&format!("SELECT COUNT(*) FROM {}", table.name))
            .await?;
        if n > 0 {
            return Err(StoreError::Rejected(CoreError::invalid(
                "to",
                format!(
                    "the target store is not empty (table {} has {n} rows); copy only into a fresh database",
                    table.name
                ),
            )));
        }
    }
    let (dst_seq, _) = dst.head().await?;
    if dst_seq != 0 {
        return Err(StoreError::Rejected(CoreError::invalid(
            "to",
            "the target store's audit chain is not empty; copy only into a fresh database",
        )));
    }

    let mut report = CopyReport::default();
    for table in TABLES {
        let mut after: Option<Val> = None;
        let mut copied = 0u64;
        loop {
            let rows = src.read_batch(table, after.as_ref()).await?;
            let Some(last) = rows.last() else { break };
            after = last.first().cloned();
            dst.insert_batch(table, &rows).await?;
            copied += rows.len() as u64;
            if (rows.len() as i64) < BATCH {
                break;
            }
        }
        tracing::info!(table = table.name, rows = copied, "copied");
        let slot = match table.name {
            "identities" => &mut report.identities,
            "targets" => &mut report.targets,
            "target_secrets" => &mut report.target_secrets,
            "target_rotations" => &mut report.target_rotations,
            "tasks" => &mut report.tasks,
            "grants" => &mut report.grants,
            "leases" => &mut report.leases,
            "signing_keys" => &mut report.signing_keys,
            "operator_tokens" => &mut report.operator_tokens,
            "webhook_cursors" => &mut report.webhook_cursors,
            "audit_checkpoints" => &mut report.audit_checkpoints,
            _ => &mut report.audit_entries,
        };
        *slot = copied;
    }
    let (seq, hash) = src.head().await?;
    dst.set_head(seq, &hash).await?;
    report.audit_head_seq = u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt("audit_head has a negative sequence".into()))?;
    report.audit_head_hash = hash;
    Ok(report)
}
