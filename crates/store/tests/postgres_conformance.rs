//! Runs the backend-neutral conformance suite against PostgreSQL at 127.0.0.1:5432 (trust
//! auth, user `postgres`), plus checks specific to many replicas sharing one database.
//!
//! Every test gets its own freshly created database (`mayfly_t_<random>`), dropped by a
//! guard afterwards. When PostgreSQL is unreachable the tests print the testkit's SKIPPED
//! line and pass, unless `MAYFLY_REQUIRE_SERVICES=1` (as in CI), where they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{
    Grant, GrantState, Identity, IdentityKind, Lease, LeaseSelector, LeaseState, RevocationReason,
    Target,
};
use mayfly_core::store::{
    AuditFilter, GrantFilter, LeaseFilter, OperatorTokenRecord, SigningKeyRecord, Store, StoreError,
};
use mayfly_store::conformance::{self, AuditTamper};
use mayfly_store::{copy_store, Durability, PgStore, SqliteStore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use time::Duration;
use uuid::Uuid;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn admin() -> Option<PgConnection> {
    let opts: PgConnectOptions = ADMIN_URL.parse().unwrap();
    let opts = opts.log_statements(tracing::log::LevelFilter::Off);
    match tokio::time::timeout(StdDuration::from_secs(5), opts.connect()).await {
        Ok(Ok(c)) => Some(c),
        _ => None,
    }
}

/// An admin connection, or `None` after the testkit's `SKIPPED:` line (a failure under
/// `MAYFLY_REQUIRE_SERVICES=1`).
async fn admin_or_skip() -> Option<PgConnection> {
    let opts: PgConnectOptions = ADMIN_URL.parse().unwrap();
    let opts = opts.log_statements(tracing::log::LevelFilter::Off);
    mayfly_testkit::services::connect_or_skip(
        "postgres store conformance",
        "PostgreSQL at 127.0.0.1:5432",
        opts.connect(),
    )
    .await
}

/// A fresh database, dropped (with any connections still open) when this goes away.
struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// `None` (after printing the SKIPPED line) when PostgreSQL is unreachable and
    /// services are not required.
    async fn create() -> Option<TestDb> {
        let mut c = admin_or_skip().await?;
        let name = format!("mayfly_t_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        Some(TestDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        })
    }

    async fn open(&self) -> PgStore {
        PgStore::open(&self.url).await.unwrap()
    }

    async fn raw(&self) -> PgConnection {
        let opts: PgConnectOptions = self.url.parse().unwrap();
        opts.log_statements(tracing::log::LevelFilter::Off)
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a thread with its own runtime does the cleanup, also when
        // the test panicked inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Some(mut c) = admin().await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

/// Changes rows behind the store's back, as an attacker with database access would.
struct PgTamper(String);

impl PgTamper {
    async fn conn(&self) -> PgConnection {
        let opts: PgConnectOptions = self.0.parse().unwrap();
        opts.connect().await.unwrap()
    }
}

#[async_trait::async_trait]
impl AuditTamper for PgTamper {
    async fn edit_body(&self, seq: u64, body: &str) {
        let mut c = self.conn().await;
        let n = sqlx::query("UPDATE audit SET body = $1 WHERE seq = $2")
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
        let mut c = self.conn().await;
        let n = sqlx::query("DELETE FROM audit WHERE seq = $1")
            .bind(seq as i64)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 1);
        c.close().await.unwrap();
    }

    async fn truncate_after(&self, seq: u64) {
        let mut c = self.conn().await;
        let n = sqlx::query("DELETE FROM audit WHERE seq > $1")
            .bind(seq as i64)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
        assert!(n > 0);
        c.close().await.unwrap();
    }

    async fn execute(&self, statement: &str) {
        let mut c = self.conn().await;
        let n = sqlx::query(statement)
            .execute(&mut c)
            .await
            .unwrap()
            .rows_affected();
        assert_eq!(n, 1, "{statement}");
        c.close().await.unwrap();
    }
}

/// A store on its own fresh database (dropped with the harness).
struct PgHarness {
    store: Arc<dyn Store>,
    db: TestDb,
}

#[async_trait::async_trait]
impl conformance::Harness for PgHarness {
    async fn fresh() -> Option<Self> {
        let db = TestDb::create().await?;
        Some(PgHarness {
            store: Arc::new(db.open().await),
            db,
        })
    }

    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }
}

#[async_trait::async_trait]
impl conformance::StorageAccess for PgHarness {
    fn tamper(&self) -> Box<dyn AuditTamper> {
        Box::new(PgTamper(self.db.url.clone()))
    }

    async fn reopen(&self) -> Arc<dyn Store> {
        Arc::new(PgStore::open(&self.db.url).await.unwrap())
    }
}

/// One test per suite function, each on its own database.
mod suite {
    mayfly_store::conformance_suite!(super::PgHarness);
}

// --- fixtures for the replica tests ---------------------------------------------------------

fn identity(id: &str) -> Identity {
    Identity {
        id: id.into(),
        kind: IdentityKind::Agent,
        owner: "team".into(),
        purpose: "replicas".into(),
        expires_at: None,
        labels: Default::default(),
        enabled: true,
        created_at: mayfly_core::now(),
    }
}

fn issued(
    who: &str,
    task: &str,
    at: time::OffsetDateTime,
    ttl: Duration,
    external: bool,
) -> (Grant, Lease) {
    let g = Grant {
        id: Uuid::new_v4(),
        identity: who.into(),
        owner: "team".into(),
        target: "billing-api".into(),
        action: "read".into(),
        purpose: "replicas".into(),
        task: task.into(),
        requested_ttl: Ttl::from_secs(600),
        granted_ttl: Some(Ttl::from_secs(600)),
        context: serde_json::json!({}),
        state: GrantState::Issued,
        revocation_reason: None,
        decision: serde_json::json!({"allowed": true}),
        created_at: at,
        updated_at: at,
    };
    let l = Lease {
        id: Uuid::new_v4(),
        grant_id: g.id,
        kind: if external { "postgres" } else { "token" }.into(),
        identity: who.into(),
        target: g.target.clone(),
        task: task.into(),
        issued_at: at,
        expires_at: at + ttl,
        max_expires_at: at + ttl * 4,
        state: LeaseState::Active,
        revocation_reason: None,
        external,
        provider_state: if external {
            serde_json::json!({"username": format!("mayfly_{task}")})
        } else {
            serde_json::json!({})
        },
        revoke_attempts: 0,
        last_error: None,
    };
    (g, l)
}

fn events(g: &Grant, l: &Lease) -> Vec<AuditDraft> {
    let mut issued = AuditDraft::new(AuditKind::LeaseIssued, "test").for_lease(l);
    issued.owner = Some(g.owner.clone());
    vec![
        AuditDraft::new(AuditKind::GrantDecided, "test").for_grant(g),
        issued,
    ]
}

/// Every audit event of the store, in order.
async fn all_audit(store: &dyn Store) -> Vec<mayfly_core::audit::AuditEvent> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_audit(&AuditFilter {
                after_seq: after,
                limit: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        out.extend(page);
    }
    out
}

/// Seeds `n` issued grants with active leases for identity `bulk` directly in SQL (every
/// tenth external), expiring `expires_in_ms` after now.
async fn seed(db: &TestDb, n: i64, expires_in_ms: i64) {
    // Creates the schema.
    db.open().await.close().await;
    let mut c = db.raw().await;
    let now = mayfly_core::to_unix_ms(mayfly_core::now());
    let mut tx = c.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO identities (id, kind, owner, purpose, expires_at, labels, enabled, created_at) \
         VALUES ('bulk', 'agent', 'team', 'bulk', NULL, '{}', TRUE, $1)",
    )
    .bind(now)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO grants (id, identity, owner, target, action, purpose, task, \
           requested_ttl_s, granted_ttl_s, context, state, revocation_reason, decision, \
           created_at, updated_at) \
         SELECT lpad(to_hex(i), 8, '0') || '-0000-4000-8000-000000000000', 'bulk', 'team', \
           'billing-api', 'read', 'bulk', 'task-' || (i % 100), 600, 600, '{}', 'issued', NULL, \
           '{}', $1, $1 \
         FROM generate_series(1, $2) AS i",
    )
    .bind(now)
    .bind(n)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO leases (id, grant_id, kind, identity, owner, target, task, issued_at, \
           expires_at, max_expires_at, state, revocation_reason, external, provider_state, \
           revoke_attempts, last_error, next_attempt_at) \
         SELECT lpad(to_hex(i), 8, '0') || '-1111-4000-8000-000000000000', \
           lpad(to_hex(i), 8, '0') || '-0000-4000-8000-000000000000', 'token', 'bulk', 'team', \
           'billing-api', 'task-' || (i % 100), $1, $1 + $3 + i, $1 + 3600000, 'active', NULL, \
           i % 10 = 0, '{}', 0, NULL, NULL \
         FROM generate_series(1, $2) AS i",
    )
    .bind(now)
    .bind(n)
    .bind(expires_in_ms)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    c.close().await.unwrap();
}

// --- replicas ------------------------------------------------------------------------------

/// Three replicas starting at once on an empty database: the migrator's advisory lock
/// lets exactly one create the schema and the others find it done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let (a, b, c) = tokio::join!(
        PgStore::open(&db.url),
        PgStore::open(&db.url),
        PgStore::open(&db.url)
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    for s in [&a, &b, &c] {
        s.ping().await.unwrap();
        assert_eq!(s.stats().await.unwrap(), Default::default());
    }
    let mut raw = db.raw().await;
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut raw)
        .await
        .unwrap();
    // Each migration once: as many applied as there are migration files.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count();
    assert_eq!(migrations, 7);
    assert_eq!(applied, migrations as i64);
}

/// Two replicas appending concurrently keep one gap-free, verifiable chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_keep_one_chain() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    a.create_identity(
        &identity("swarm"),
        AuditDraft::new(AuditKind::IdentityCreated, "op"),
    )
    .await
    .unwrap();
    const WORKERS: usize = 20;
    const PER: usize = 25;
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for i in 0..PER {
                    if i % 5 == 0 {
                        store
                            .append_audit(vec![AuditDraft::new(AuditKind::AuthFailed, "anonymous")
                                .detail(serde_json::json!({"w": w, "i": i}))])
                            .await
                            .unwrap();
                    } else {
                        let (g, l) = issued(
                            "swarm",
                            &format!("w{w}-{i}"),
                            mayfly_core::now(),
                            Duration::minutes(5),
                            false,
                        );
                        store
                            .record_grant(&g, Some(&l), events(&g, &l))
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let grants = WORKERS * PER * 4 / 5;
    let expected = 1 + grants as u64 * 2 + (WORKERS * PER / 5) as u64;
    for s in [&a, &b] {
        let report = s.verify_audit().await.unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.entries, expected);
        assert_eq!(s.stats().await.unwrap().audit_entries, expected);
        assert_eq!(s.stats().await.unwrap().active_leases, grants as u64);
    }
    let seqs: Vec<u64> = all_audit(&*a).await.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=expected).collect::<Vec<_>>());
}

/// Two replicas expiring the same 2,000 due leases concurrently: each lease is expired
/// exactly once (one `lease.expired` event each), and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_expiry_is_exactly_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    const N: i64 = 2_000;
    seed(&db, N, -60_000).await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    let run = |store: Arc<dyn Store>| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store.expire_due(mayfly_core::now(), 64).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                mine.extend(batch.into_iter().map(|l| l.id));
            }
            mine
        })
    };
    let (ra, rb, ra2, rb2) = (
        run(a.clone()),
        run(b.clone()),
        run(a.clone()),
        run(b.clone()),
    );
    let mut all: Vec<Uuid> = Vec::new();
    let mut per_replica = [0usize; 2];
    for (i, r) in [ra, rb, ra2, rb2].into_iter().enumerate() {
        let got = r.await.unwrap();
        per_replica[i % 2] += got.len();
        all.extend(got);
    }
    eprintln!(
        "replica a expired {}, replica b {}",
        per_replica[0], per_replica[1]
    );
    assert_eq!(all.len(), N as usize, "every due lease returned once");
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), N as usize);

    let mut expired_events: HashMap<Uuid, usize> = HashMap::new();
    for e in all_audit(&*a).await {
        if e.kind == AuditKind::LeaseExpired {
            *expired_events.entry(e.lease_id.unwrap()).or_default() += 1;
        }
    }
    assert_eq!(expired_events.len(), N as usize);
    assert!(expired_events.values().all(|&n| n == 1));
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.active_leases, 0);
    assert_eq!(stats.revoking_leases, N as u64 / 10);
    assert!(a.verify_audit().await.unwrap().ok());
    let expired_grants = a
        .list_grants(&GrantFilter {
            state: Some(GrantState::Expired),
            limit: Some(10_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(expired_grants.len(), (N - N / 10) as usize);
}

/// Concurrent claims on the revocation queue from several replicas return disjoint sets
/// that together cover the queue; a claim is a lease on the work item that comes due
/// again after `claim_for`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_are_disjoint() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    const N: i64 = 1_000;
    seed(&db, N, 600_000).await;
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    // Revoke all: N/10 external leases enter the queue.
    let outcome = a
        .revoke(
            &LeaseSelector::Identity("bulk".into()),
            RevocationReason::Admin,
            "operator",
            mayfly_core::now(),
        )
        .await
        .unwrap();
    assert_eq!(outcome.revoking, N as u64 / 10);
    let claim = |store: Arc<dyn Store>| {
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store
                    .claim_revocations(mayfly_core::now(), 7, Duration::minutes(5))
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|l| l.id));
            }
            mine
        })
    };
    let tasks = [
        claim(a.clone()),
        claim(b.clone()),
        claim(a.clone()),
        claim(b.clone()),
    ];
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), N as usize / 10);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), N as usize / 10);
    // Nothing is due now; after the claim lapses (a dead replica) everything is again.
    assert!(b
        .claim_revocations(mayfly_core::now(), 1000, Duration::minutes(5))
        .await
        .unwrap()
        .is_empty());
    let later = mayfly_core::now() + Duration::minutes(6);
    let again = b
        .claim_revocations(later, 1000, Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(again.len(), N as usize / 10);
    // Completing on one replica while the other also completes: audited once.
    let id = again[0].id;
    let (x, y) = tokio::join!(
        a.complete_revocation(id, "worker-a", mayfly_core::now()),
        b.complete_revocation(id, "worker-b", mayfly_core::now())
    );
    assert_eq!(
        [x.unwrap().is_some(), y.unwrap().is_some()]
            .iter()
            .filter(|d| **d)
            .count(),
        1
    );
    let revoked = a
        .list_audit(&AuditFilter {
            grant_id: Some(again[0].grant_id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == AuditKind::LeaseRevoked)
        .count();
    assert_eq!(revoked, 1);
}

/// The kill switch on one replica and grants recorded on another: no live lease of the
/// disabled identity survives, whatever the interleaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_races_grants_on_another_replica() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let a: Arc<dyn Store> = Arc::new(db.open().await);
    let b: Arc<dyn Store> = Arc::new(db.open().await);
    a.create_identity(
        &identity("rogue"),
        AuditDraft::new(AuditKind::IdentityCreated, "op"),
    )
    .await
    .unwrap();
    let granting = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..200 {
                let (g, l) = issued(
                    "rogue",
                    &format!("t{i}"),
                    mayfly_core::now(),
                    Duration::minutes(5),
                    false,
                );
                if b.record_grant(&g, Some(&l), events(&g, &l)).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        })
    };
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    a.disable_identity("rogue", "operator", mayfly_core::now())
        .await
        .unwrap();
    let ok = granting.await.unwrap();
    let live = a
        .list_leases(&LeaseFilter {
            identity: Some("rogue".into()),
            state: Some(LeaseState::Active),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        live.is_empty(),
        "{} live leases after the kill switch ({ok} grants)",
        live.len()
    );
    assert!(a.verify_audit().await.unwrap().ok());
}

/// Bulk revocation is one set-based statement: 100,000 leases of one identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_revoke_100k() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    const N: i64 = 100_000;
    seed(&db, N, 600_000).await;
    let store = db.open().await;
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
    eprintln!("postgres: revoked {N} leases in {elapsed:?}");
    assert_eq!(outcome.total(), N as u64);
    assert_eq!(outcome.revoking, N as u64 / 10);
    let budget = if cfg!(debug_assertions) { 60.0 } else { 15.0 };
    assert!(
        elapsed.as_secs_f64() < budget,
        "bulk revoke took {elapsed:?}"
    );
    let started = Instant::now();
    let report = store.verify_audit().await.unwrap();
    eprintln!(
        "postgres: verified {} audit entries in {:?}",
        report.entries,
        started.elapsed()
    );
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.entries, N as u64);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.active_leases, 0);
    assert_eq!(stats.revoking_leases, N as u64 / 10);
}

/// A SQLite deployment populated through the Store trait, copied into a fresh PostgreSQL
/// database: same listings, same chain (seq, body, hash, head), and it keeps growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_sqlite_to_postgres() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("m.db").display());
    let src = SqliteStore::open(&sqlite_url, Durability::CrashSafe)
        .await
        .unwrap();
    let now = mayfly_core::now();
    for who in ["alpha", "beta"] {
        src.create_identity(
            &identity(who),
            AuditDraft::new(AuditKind::IdentityCreated, "op"),
        )
        .await
        .unwrap();
    }
    let target = Target {
        name: "billing-api".into(),
        kind: "postgres".into(),
        actions: vec!["read".into()],
        default_ttl: Ttl::from_secs(600),
        max_ttl: Ttl::from_secs(3600),
        allow: vec!["*".into()],
        settings: serde_json::json!({"host": "db"}),
        created_at: now,
    };
    src.create_target(
        &target,
        Some(b"sealed-admin-secret"),
        AuditDraft::new(AuditKind::TargetCreated, "op"),
    )
    .await
    .unwrap();
    let mut lease_ids = Vec::new();
    for i in 0..1_200 {
        let who = if i % 2 == 0 { "alpha" } else { "beta" };
        let (g, l) = issued(
            who,
            &format!("t{i}"),
            now + Duration::milliseconds(i),
            Duration::minutes(5),
            i % 7 == 0,
        );
        src.record_grant(&g, Some(&l), events(&g, &l))
            .await
            .unwrap();
        lease_ids.push(l.id);
    }
    src.revoke(
        &LeaseSelector::Identity("beta".into()),
        RevocationReason::Admin,
        "op",
        now,
    )
    .await
    .unwrap();
    src.add_signing_key(
        &SigningKeyRecord {
            kid: "k1".into(),
            alg: "EdDSA".into(),
            public_jwk: serde_json::json!({"kid": "k1"}),
            private_sealed: vec![9, 8, 7],
            created_at: now,
            retired_at: None,
            publish_until: None,
        },
        None,
        AuditDraft::new(AuditKind::KeyCreated, "system"),
    )
    .await
    .unwrap();
    src.add_operator_token(&OperatorTokenRecord::new(
        "admin",
        vec![1; 32],
        now,
        Some(now + time::Duration::days(90)),
        "operator:admin",
    ))
    .await
    .unwrap();
    // A webhook's delivery position moves with the deployment.
    let claimed = src
        .claim_webhook("ops", "r1", now, now + time::Duration::seconds(30))
        .await
        .unwrap()
        .unwrap();
    assert!(src
        .webhook_failed(
            "ops",
            "r1",
            "HTTP 500",
            now + time::Duration::seconds(1),
            now,
            now + time::Duration::seconds(30)
        )
        .await
        .unwrap());
    let src_report = src.verify_audit().await.unwrap();
    let src_audit = all_audit(&src).await;
    src.close().await;

    let report = copy_store(&sqlite_url, &db.url).await.unwrap();
    eprintln!("copy: {report:?}");
    assert_eq!(report.identities, 2);
    assert_eq!(report.targets, 1);
    assert_eq!(report.target_secrets, 1);
    assert_eq!(report.grants, 1_200);
    assert_eq!(report.leases, 1_200);
    assert_eq!(report.signing_keys, 1);
    assert_eq!(report.operator_tokens, 1);
    assert_eq!(report.webhook_cursors, 1);
    assert_eq!(report.audit_entries, src_report.entries);
    assert_eq!(report.verified.as_ref(), Some(&src_report));

    let src = SqliteStore::open(&sqlite_url, Durability::CrashSafe)
        .await
        .unwrap();
    let dst = db.open().await;
    assert_eq!(dst.verify_audit().await.unwrap(), src_report);
    assert_eq!(all_audit(&dst).await, src_audit);
    assert_eq!(
        dst.list_identities().await.unwrap(),
        src.list_identities().await.unwrap()
    );
    assert_eq!(
        dst.list_targets().await.unwrap(),
        src.list_targets().await.unwrap()
    );
    assert_eq!(
        dst.get_target_secret("billing-api")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"sealed-admin-secret"[..])
    );
    assert_eq!(
        dst.list_signing_keys().await.unwrap(),
        src.list_signing_keys().await.unwrap()
    );
    assert_eq!(
        dst.list_operator_tokens().await.unwrap(),
        src.list_operator_tokens().await.unwrap()
    );
    assert!(dst.find_operator_token(&[1; 32]).await.unwrap().is_some());
    let copied = dst
        .claim_webhook("ops", "r1", now, now + time::Duration::seconds(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            copied.delivered_seq,
            copied.attempts,
            copied.last_error.as_deref()
        ),
        (claimed.delivered_seq, 1, Some("HTTP 500"))
    );
    for id in &lease_ids {
        assert_eq!(
            dst.get_lease(*id).await.unwrap(),
            src.get_lease(*id).await.unwrap()
        );
    }
    for filter in [
        GrantFilter {
            limit: Some(10_000),
            ..Default::default()
        },
        GrantFilter {
            identity: Some("beta".into()),
            limit: Some(10_000),
            ..Default::default()
        },
        GrantFilter {
            state: Some(GrantState::Revoked),
            limit: Some(10_000),
            ..Default::default()
        },
    ] {
        assert_eq!(
            dst.list_grants(&filter).await.unwrap(),
            src.list_grants(&filter).await.unwrap()
        );
    }
    assert_eq!(dst.stats().await.unwrap(), src.stats().await.unwrap());

    // The chain continues on the target.
    let (g, l) = issued(
        "alpha",
        "after-copy",
        mayfly_core::now(),
        Duration::minutes(5),
        false,
    );
    dst.record_grant(&g, Some(&l), events(&g, &l))
        .await
        .unwrap();
    let after = dst.verify_audit().await.unwrap();
    assert!(after.ok(), "{after:?}");
    assert_eq!(after.entries, src_report.entries + 2);

    // A non-empty target is refused, and left as it was.
    let err = copy_store(&sqlite_url, &db.url).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert_eq!(dst.verify_audit().await.unwrap(), after);
}

/// A TCP relay in front of PostgreSQL that can be cut and restored, to see the store
/// report `Unavailable` while the database is unreachable and recover by itself after.
struct Relay {
    port: u16,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let mut stopped = rx.clone();
                let (mut inbound, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = stopped.changed() => return,
                };
                let mut stopped = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        Relay { port, stop, task }
    }

    async fn cut(self) -> u16 {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.port
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_is_unavailable_and_recovers() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let relay = Relay::start(0).await;
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/{}",
        relay.port, db.name
    );
    let store = PgStore::open(&url).await.unwrap();
    store.ping().await.unwrap();
    store
        .create_identity(
            &identity("a"),
            AuditDraft::new(AuditKind::IdentityCreated, "op"),
        )
        .await
        .unwrap();

    let port = relay.cut().await;
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!err.to_string().contains("hunter2"));
    let err = store
        .create_identity(
            &identity("b"),
            AuditDraft::new(AuditKind::IdentityCreated, "op"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(matches!(
        store.get_identity("a").await,
        Err(StoreError::Unavailable(_))
    ));

    let relay = Relay::start(port).await;
    let deadline = Instant::now() + StdDuration::from_secs(20);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the pool did not recover");
        tokio::time::sleep(StdDuration::from_millis(200)).await;
    }
    store
        .create_identity(
            &identity("b"),
            AuditDraft::new(AuditKind::IdentityCreated, "op"),
        )
        .await
        .unwrap();
    assert_eq!(store.list_identities().await.unwrap().len(), 2);
    assert!(store.verify_audit().await.unwrap().ok());
    store.close().await;
    relay.cut().await;
}

#[tokio::test]
async fn open_dispatches_postgres_urls() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = mayfly_store::open(&db.url, Durability::Fsync)
        .await
        .unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.stats().await.unwrap(), Default::default());
}
