//! Runs the backend-neutral conformance suite against SQLite, in both durability modes
//! (and the in-memory mode where it applies), plus SQLite-specific checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mayfly_core::model::{LeaseSelector, LeaseState, RevocationReason};
use mayfly_core::store::{Store, StoreError};
use mayfly_store::conformance::{self, AuditTamper};
use mayfly_store::{Durability, SqliteStore};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};

/// A store on a fresh file in its own temporary directory (kept alive with it).
struct Fresh {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: Arc<dyn Store>,
}

async fn fresh(durability: Durability) -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    // A nested path also proves the parent directory is created.
    let path = dir.path().join("nested").join("mayfly.db");
    let url = format!("sqlite://{}", path.display());
    let store = Arc::new(SqliteStore::open(&url, durability).await.unwrap());
    Fresh {
        _dir: dir,
        path,
        store,
    }
}

async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap()
}

/// Changes rows behind the store's back, as an attacker with file access would.
struct SqliteTamper(PathBuf);

#[async_trait::async_trait]
impl AuditTamper for SqliteTamper {
    async fn edit_body(&self, seq: u64, body: &str) {
        let mut c = raw(&self.0).await;
        let n = sqlx::query("UPDATE audit SET body = ?1 WHERE seq = ?2")
            .bind(body)
            .bind(seq as i64)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 1);
        c.close().await.unwrap();
    }

    async fn delete_entry(&self, seq: u64) {
        let mut c = raw(&self.0).await;
        let n = sqlx::query("DELETE FROM audit WHERE seq = ?1")
            .bind(seq as i64)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 1);
        c.close().await.unwrap();
    }

    async fn truncate_after(&self, seq: u64) {
        let mut c = raw(&self.0).await;
        let n = sqlx::query("DELETE FROM audit WHERE seq > ?1")
            .bind(seq as i64)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
        assert!(n > 0);
        c.close().await.unwrap();
    }

    async fn execute(&self, statement: &str) {
        let mut c = raw(&self.0).await;
        let n = sqlx::query(statement)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 1, "{statement}");
        c.close().await.unwrap();
    }
}

/// A store on a fresh file in durability mode `CRASH_SAFE` (or fsync).
struct FileHarness<const CRASH_SAFE: bool> {
    fresh: Fresh,
}

impl<const CRASH_SAFE: bool> FileHarness<CRASH_SAFE> {
    fn durability() -> Durability {
        if CRASH_SAFE {
            Durability::CrashSafe
        } else {
            Durability::Fsync
        }
    }
}

#[async_trait::async_trait]
impl<const CRASH_SAFE: bool> conformance::Harness for FileHarness<CRASH_SAFE> {
    async fn fresh() -> Option<Self> {
        Some(FileHarness {
            fresh: fresh(Self::durability()).await,
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        self.fresh.store.clone()
    }
}

#[async_trait::async_trait]
impl<const CRASH_SAFE: bool> conformance::StorageAccess for FileHarness<CRASH_SAFE> {
    fn tamper(&self) -> Box<dyn AuditTamper> {
        Box::new(SqliteTamper(self.fresh.path.clone()))
    }

    async fn reopen(&self) -> Arc<dyn Store> {
        let url = format!("sqlite:{}", self.fresh.path.display());
        Arc::new(SqliteStore::open(&url, Self::durability()).await.unwrap())
    }
}

/// `sqlite::memory:`: the database lives and dies with its store.
struct MemoryHarness(Arc<dyn Store>);

#[async_trait::async_trait]
impl conformance::Harness for MemoryHarness {
    async fn fresh() -> Option<Self> {
        let store = SqliteStore::open("sqlite::memory:", Durability::Fsync)
            .await
            .unwrap();
        Some(MemoryHarness(Arc::new(store)))
    }

    fn store(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
}

/// One test per (suite function, mode), so a failure names both.
mod fsync {
    mayfly_store::conformance_suite!(super::FileHarness<false>);
}

mod crash_safe {
    mayfly_store::conformance_suite!(super::FileHarness<true>);
}

mod memory {
    mayfly_store::conformance_suite!(super::MemoryHarness, without_storage_access);
}

// --- SQLite-specific ---------------------------------------------------------------------------

/// Editing the stored hash to match an edited body moves the break to the next entry,
/// and a forged row in the middle is caught by its link, through the real store.
#[tokio::test]
async fn rehashed_edit_is_still_caught() {
    use mayfly_core::audit::{hash_entry, AuditDraft, AuditKind, ChainBreak};
    let f = fresh(Durability::CrashSafe).await;
    let drafts = (0..4)
        .map(|i| {
            AuditDraft::new(AuditKind::AuthFailed, "anonymous").detail(serde_json::json!({"i": i}))
        })
        .collect();
    f.store.append_audit(drafts).await.unwrap();
    let events = f.store.list_audit(&Default::default()).await.unwrap();
    let body = events[1].canonical_body().replace("anonymous", "operator");
    let mut c = raw(&f.path).await;
    sqlx::query("UPDATE audit SET body = ?1, hash = ?2 WHERE seq = 2")
        .bind(&body)
        .bind(hash_entry(&body))
        .execute(&mut c)
        .await
        .unwrap();
    let report = f.store.verify_audit().await.unwrap();
    assert_eq!(
        report.first_break,
        Some(ChainBreak::InsertedOrReordered { seq: 3 })
    );
}

/// Bulk revocation must stay fast: 100,000 leases of one identity in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_revoke_100k() {
    const N: i64 = 100_000;
    let f = fresh(Durability::Fsync).await;
    conformance_seed(&f.path, N).await;
    let store = f.store.clone();
    let started = Instant::now();
    let outcome = store
        .revoke(
            &LeaseSelector::Identity("bulk".into()),
            RevocationReason::Admin,
            "operator",
            mayfly_core::now(),
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!("revoked {N} leases in {elapsed:?}");
    assert_eq!(outcome.total(), N as u64);
    assert_eq!(outcome.revoking, N as u64 / 10);
    // A regression guard, not the target: the target (well under 2 s in release) is
    // measured on a quiet machine; CI runs debug builds on shared cores, several times
    // slower. A per-lease round trip or a scan would blow both budgets by far.
    let budget = if cfg!(debug_assertions) { 20.0 } else { 5.0 };
    assert!(
        elapsed.as_secs_f64() < budget,
        "bulk revoke took {elapsed:?}"
    );

    let started = Instant::now();
    let report = store.verify_audit().await.unwrap();
    eprintln!(
        "verified {} audit entries in {:?}",
        report.entries,
        started.elapsed()
    );
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.entries, N as u64);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.active_leases, 0);
    assert_eq!(stats.revoking_leases, N as u64 / 10);
    let again = store
        .revoke(
            &LeaseSelector::Identity("bulk".into()),
            RevocationReason::Admin,
            "operator",
            mayfly_core::now(),
        )
        .await
        .unwrap();
    assert_eq!(again.total(), 0);
}

/// Inserts `n` issued grants with active leases for identity `bulk` directly (every
/// tenth external), far faster than going through the API.
async fn conformance_seed(path: &Path, n: i64) {
    let mut c = raw(path).await;
    let now = mayfly_core::to_unix_ms(mayfly_core::now());
    let mut tx = c.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO identities (id, kind, owner, purpose, expires_at, labels, enabled, created_at) \
         VALUES ('bulk', 'agent', 'team', 'bulk', NULL, '{}', 1, ?1)",
    )
    .bind(now)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
         INSERT INTO grants (id, identity, owner, target, action, purpose, task, \
           requested_ttl_s, granted_ttl_s, context, state, revocation_reason, decision, \
           created_at, updated_at) \
         SELECT printf('%08x-0000-4000-8000-000000000000', i), 'bulk', 'team', 'billing-api', \
           'read', 'bulk', 'task-' || (i % 100), 600, 600, '{}', 'issued', NULL, '{}', ?1, ?1 \
         FROM n",
    )
    .bind(now)
    .bind(n)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2) \
         INSERT INTO leases (id, grant_id, kind, identity, owner, target, task, issued_at, \
           expires_at, max_expires_at, state, revocation_reason, external, provider_state, \
           revoke_attempts, last_error, next_attempt_at) \
         SELECT printf('%08x-1111-4000-8000-000000000000', i), \
           printf('%08x-0000-4000-8000-000000000000', i), 'token', 'bulk', 'team', \
           'billing-api', 'task-' || (i % 100), ?1, ?1 + 600000, ?1 + 3600000, 'active', NULL, \
           CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END, '{}', 0, NULL, NULL \
         FROM n",
    )
    .bind(now)
    .bind(n)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // A long-running database is checkpointed regularly; start from that state rather
    // than with the whole seed still in the WAL.
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
}

#[tokio::test]
async fn closed_store_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = SqliteStore::open(path.to_str().unwrap(), Durability::Fsync)
        .await
        .unwrap();
    store.ping().await.unwrap();
    store.close().await;
    let err = store
        .append_audit(vec![mayfly_core::audit::AuditDraft::new(
            mayfly_core::audit::AuditKind::AuthFailed,
            "x",
        )])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.get_identity("x").await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
async fn open_dispatches_on_scheme() {
    // postgres:// goes to the PostgreSQL backend (nothing listens on port 1), and its
    // error does not echo the password.
    let err = mayfly_store::open("postgres://u:hunter2@127.0.0.1:1/mayfly", Durability::Fsync)
        .await
        .err()
        .unwrap();
    assert!(matches!(&err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = mayfly_store::open("mysql://u:hunter2@db/mayfly", Durability::Fsync)
        .await
        .err()
        .unwrap();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let store = mayfly_store::open("sqlite::memory:", Durability::CrashSafe)
        .await
        .unwrap();
    store.ping().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("x.db").display());
    let store = mayfly_store::open(&url, Durability::Fsync).await.unwrap();
    assert_eq!(store.stats().await.unwrap(), Default::default());
}

/// A database written by a newer Mayfly (an unknown migration applied) is refused.
#[tokio::test]
async fn newer_schema_is_refused() {
    let f = fresh(Durability::Fsync).await;
    drop(f.store);
    let mut c = raw(&f.path).await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'future', 1, x'00', 0)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    let err = SqliteStore::open(f.path.to_str().unwrap(), Durability::Fsync)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn lease_states_read_back_after_bulk_seed() {
    let f = fresh(Durability::CrashSafe).await;
    conformance_seed(&f.path, 20).await;
    let leases = f
        .store
        .list_leases(&mayfly_core::store::LeaseFilter {
            identity: Some("bulk".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(leases.len(), 20);
    assert!(leases.iter().all(|l| l.state == LeaseState::Active));
    assert_eq!(leases.iter().filter(|l| l.external).count(), 2);
}

/// A broker made before operator tokens had a lifecycle keeps its first-start token
/// through the migration: no expiry, unrevoked, and it still counts as the bootstrap.
#[tokio::test]
async fn first_start_token_survives_the_lifecycle_migration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    // The schema as it was before: only the migrations that existed then.
    let old = dir.path().join("migrations");
    std::fs::create_dir(&old).unwrap();
    let all = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for name in [
        "0001_init.sql",
        "0002_write_ahead.sql",
        "0003_root_rotation.sql",
    ] {
        std::fs::copy(all.join(name), old.join(name)).unwrap();
    }
    let mut c = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run_direct(&mut c)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO operator_tokens (name, token_sha256, created_at) VALUES ('bootstrap', ?1, 1000)",
    )
    .bind(vec![7u8; 32])
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    // As the store keeps its own files: owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let store = SqliteStore::open(path.to_str().unwrap(), Durability::Fsync)
        .await
        .unwrap();
    let token = store.find_operator_token(&[7; 32]).await.unwrap().unwrap();
    assert_eq!(token.name, "bootstrap");
    assert_eq!(token.expires_at, None);
    assert_eq!(token.revoked_at, None);
    assert_eq!(token.created_by, "system:first-start");
    assert!(token.is_live_at(mayfly_core::now()));
    assert_eq!(store.count_operator_tokens().await.unwrap(), 1);
    assert_eq!(store.list_operator_tokens().await.unwrap(), vec![token]);
}
