//! Throughput of `Store::record_grant` (grant + lease + two audit events each) from many
//! concurrent callers, through the `Store` trait: embedded SQLite in both durability modes,
//! then one and two PostgreSQL stores sharing a fresh database (two stores = two replicas'
//! write paths, each batching its own callers, both serialised on the audit chain head).
//!
//! `cargo bench -p mayfly-store --bench record_grant`. PostgreSQL comes from
//! `MAYFLY_BENCH_PG` (default `postgres://postgres@127.0.0.1:5432`, a role that may create
//! databases); when it is unreachable that part is skipped with a message, as the
//! conformance tests do. Results and method are in BENCHMARKS.md ("Store level").

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mayfly_core::store::Store;
use mayfly_store::conformance::issued_grant;
use mayfly_store::{Durability, PgStore, SqliteStore};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Concurrent callers: enough to fill every batch the writers can form.
const WORKERS: usize = 256;
/// Grants per caller on SQLite (32,000 in all) and on PostgreSQL (10,240, as it is
/// slower here and each run needs a fresh database).
const PER_WORKER_SQLITE: usize = 125;
const PER_WORKER_PG: usize = 40;

fn main() -> Res<()> {
    // Two workers, like the broker on the 2-core machine these figures are quoted for.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        for durability in [Durability::Fsync, Durability::CrashSafe] {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("mayfly.db").display());
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&url, durability).await?);
            let rate = throughput(&[store], PER_WORKER_SQLITE).await?;
            println!("sqlite, {durability}: {rate:.0} record_grant/s");
        }
        let base = std::env::var("MAYFLY_BENCH_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string());
        for replicas in [1, 2] {
            let Some(db) = PgDatabase::create(&base).await? else {
                println!("postgres: SKIPPED, the server in MAYFLY_BENCH_PG (or the default) is unreachable");
                break;
            };
            let result = pg_throughput(&db.url, replicas).await;
            db.drop_database().await;
            println!("postgres, {replicas} replica(s): {:.0} record_grant/s", result?);
        }
        Ok(())
    })
}

async fn pg_throughput(url: &str, replicas: usize) -> Res<f64> {
    let mut stores: Vec<Arc<dyn Store>> = Vec::new();
    for _ in 0..replicas {
        stores.push(Arc::new(PgStore::open(url).await?));
    }
    throughput(&stores, PER_WORKER_PG).await
}

/// Grants per second with `WORKERS` callers spread round-robin over `stores` (which share
/// one database), after checking that every grant is stored and the chain verifies.
async fn throughput(stores: &[Arc<dyn Store>], per_worker: usize) -> Res<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let store = stores[w % stores.len()].clone();
            tokio::spawn(async move {
                for i in 0..per_worker {
                    let (g, l, events) =
                        issued_grant(&format!("svc-{w}"), &format!("task-{w}-{i}"));
                    store.record_grant(&g, Some(&l), events).await?;
                }
                Ok::<_, mayfly_core::store::StoreError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let n = WORKERS * per_worker;
    let stored = stores[0].stats().await?.active_leases;
    if stored != n as u64 {
        return Err(format!("{n} grants recorded but {stored} active leases stored").into());
    }
    if !stores[0].verify_audit().await?.ok() {
        return Err("the audit chain does not verify after the run".into());
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// A fresh database on the server at `base`, for one measurement.
struct PgDatabase {
    admin: PgConnection,
    name: String,
    url: String,
}

impl PgDatabase {
    /// `None` when the server cannot be reached; an error when it can but refuses.
    async fn create(base: &str) -> Res<Option<PgDatabase>> {
        let opts: PgConnectOptions = format!("{base}/postgres").parse()?;
        let opts = opts.log_statements(tracing::log::LevelFilter::Off);
        let Ok(Ok(mut admin)) = tokio::time::timeout(Duration::from_secs(5), opts.connect()).await
        else {
            return Ok(None);
        };
        let name = format!("mayfly_bench_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|e| format!("CREATE DATABASE: {e}"))?;
        Ok(Some(PgDatabase {
            admin,
            url: format!("{base}/{name}"),
            name,
        }))
    }

    /// Drops the database even if a store still holds connections to it.
    async fn drop_database(mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = sqlx::query(&sql).execute(&mut self.admin).await {
            eprintln!("postgres: could not drop {}: {e}", self.name);
        }
        let _ = self.admin.close().await;
    }
}
