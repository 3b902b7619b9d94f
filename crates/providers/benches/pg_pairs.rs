//! Issue+revoke pairs per second through the PostgreSQL provider, against raw
//! `CREATE ROLE …; DROP ROLE …` pairs over one connection, in the same run.
//!
//! `cargo bench -p mayfly-providers --bench pg_pairs`
//!
//! Criterion measures both; a closing interleaved comparison (rounds alternate between
//! the two so drift hits both alike) prints pairs/s and the ratio (target >= 0.8).
//! Skips cleanly when PostgreSQL is not on 127.0.0.1:5432.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use mayfly_core::model::{Grant, GrantState, Identity, IdentityKind, Lease, LeaseState, Target};
use mayfly_core::provider::{IssueRequest, Provider, TargetAccess};
use mayfly_core::secret::SecretString;
use mayfly_providers::PostgresProvider;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use time::OffsetDateTime;

const SUPER_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

struct Bench {
    rt: tokio::runtime::Runtime,
    provider: PostgresProvider,
    target: Target,
    admin: SecretString,
    identity: Identity,
    grant: Grant,
    raw: Option<PgConnection>,
    suffix: String,
    counter: u64,
}

impl Bench {
    fn setup() -> Option<Bench> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let up = rt.block_on(async {
            matches!(
                tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio::net::TcpStream::connect("127.0.0.1:5432")
                )
                .await,
                Ok(Ok(_))
            )
        });
        if !up {
            eprintln!("SKIPPED: pg_pairs bench — 127.0.0.1:5432 unreachable");
            return None;
        }
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let admin_user = format!("mfb{suffix}_admin");
        let password = format!("Adm{}", uuid::Uuid::new_v4().simple());
        let db = format!("mayfly_bench_{suffix}");
        let admin_url = format!("postgres://{admin_user}:{password}@127.0.0.1:5432/{db}");
        let raw = rt.block_on(async {
            let mut su = PgConnection::connect(SUPER_URL).await.unwrap();
            su.execute(
                format!("CREATE ROLE \"{admin_user}\" LOGIN CREATEROLE PASSWORD '{password}'")
                    .as_str(),
            )
            .await
            .unwrap();
            su.execute(format!("CREATE DATABASE \"{db}\" OWNER \"{admin_user}\"").as_str())
                .await
                .unwrap();
            let mut admin = PgConnection::connect(&admin_url).await.unwrap();
            admin
                .execute("CREATE SCHEMA app; CREATE TABLE app.items (id int PRIMARY KEY)")
                .await
                .unwrap();
            admin
        });
        let now = OffsetDateTime::now_utc();
        let target = Target {
            name: format!("bench-{suffix}"),
            kind: "postgres".into(),
            actions: vec!["read".into()],
            default_ttl: "1h".parse().unwrap(),
            max_ttl: "1h".parse().unwrap(),
            allow: vec![],
            settings: serde_json::json!({
                "username_template": format!("mfb{suffix}_{{{{identity}}}}_{{{{rand}}}}"),
                "grants": {"read": [
                    "GRANT USAGE ON SCHEMA app TO \"{{name}}\"",
                    "GRANT SELECT ON ALL TABLES IN SCHEMA app TO \"{{name}}\""
                ]}
            }),
            created_at: now,
        };
        let identity = Identity {
            id: "bench".into(),
            kind: IdentityKind::Service,
            owner: "o".into(),
            purpose: "p".into(),
            expires_at: None,
            labels: BTreeMap::new(),
            enabled: true,
            created_at: now,
        };
        let grant = Grant {
            id: uuid::Uuid::new_v4(),
            identity: "bench".into(),
            owner: "o".into(),
            target: target.name.clone(),
            action: "read".into(),
            purpose: "p".into(),
            task: "t".into(),
            requested_ttl: "1h".parse().unwrap(),
            granted_ttl: Some("1h".parse().unwrap()),
            context: serde_json::Value::Null,
            state: GrantState::Issued,
            revocation_reason: None,
            decision: serde_json::Value::Null,
            created_at: now,
            updated_at: now,
        };
        Some(Bench {
            rt,
            provider: PostgresProvider::new(),
            target,
            admin: SecretString::new(admin_url),
            identity,
            grant,
            raw: Some(raw),
            suffix,
            counter: 0,
        })
    }

    /// plan + issue + revoke, as the server does them.
    fn provider_pair(&mut self) {
        let access = TargetAccess {
            target: &self.target,
            admin: Some(&self.admin),
        };
        let issued_at = OffsetDateTime::now_utc();
        let expires_at = issued_at + time::Duration::hours(1);
        let lease_id = uuid::Uuid::new_v4();
        let null = serde_json::Value::Null;
        let p = &self.provider;
        let (identity, grant) = (&self.identity, &self.grant);
        self.rt.block_on(async {
            let request = |plan| IssueRequest {
                grant,
                identity,
                target: access,
                lease_id,
                issued_at,
                expires_at,
                plan,
            };
            let plan = p.plan(&request(&null)).unwrap();
            let cred = p.issue(request(&plan)).await.unwrap();
            let lease = Lease {
                id: lease_id,
                grant_id: grant.id,
                kind: "postgres".into(),
                identity: "bench".into(),
                target: access.target.name.clone(),
                task: "t".into(),
                issued_at,
                expires_at,
                max_expires_at: expires_at,
                state: LeaseState::Revoking,
                revocation_reason: None,
                external: true,
                provider_state: cred.provider_state,
                revoke_attempts: 0,
                last_error: None,
            };
            p.revoke(&lease, access).await.unwrap();
        });
    }

    /// The floor: create and drop a role over one open connection, nothing else.
    fn raw_pair(&mut self) {
        self.counter += 1;
        let name = format!("mfb{}_raw_{}", self.suffix, self.counter);
        let raw = self.raw.as_mut().unwrap();
        self.rt.block_on(async {
            raw.execute(
                format!("CREATE ROLE \"{name}\" LOGIN PASSWORD 'Abcdefghijklmnopqrstuvwxyz012345'")
                    .as_str(),
            )
            .await
            .unwrap();
            raw.execute(format!("DROP ROLE \"{name}\"").as_str())
                .await
                .unwrap();
        });
    }

    fn cleanup(&mut self) {
        let suffix = self.suffix.clone();
        let raw = self.raw.take();
        self.rt.block_on(async move {
            if let Some(raw) = raw {
                let _ = raw.close().await;
            }
            let mut su = PgConnection::connect(SUPER_URL).await.unwrap();
            let _ = su
                .execute(
                    format!("DROP DATABASE IF EXISTS \"mayfly_bench_{suffix}\" WITH (FORCE)")
                        .as_str(),
                )
                .await;
            let roles: Vec<String> = sqlx::query_scalar(
                "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)",
            )
            .bind(format!("mfb{suffix}_"))
            .fetch_all(&mut su)
            .await
            .unwrap_or_default();
            for r in roles {
                let _ = su
                    .execute(format!("DROP ROLE IF EXISTS \"{r}\"").as_str())
                    .await;
            }
        });
    }
}

fn pairs(c: &mut Criterion) {
    let Some(mut b) = Bench::setup() else { return };
    let mut group = c.benchmark_group("pg_pairs");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("provider_issue_revoke", |bench| {
        bench.iter(|| b.provider_pair())
    });
    group.bench_function("raw_create_drop", |bench| bench.iter(|| b.raw_pair()));
    group.finish();

    // Same-run comparison, interleaved.
    let rounds = 50;
    let per_round = 10;
    let (mut provider_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            b.provider_pair();
        }
        provider_time += t.elapsed();
        let t = Instant::now();
        for _ in 0..per_round {
            b.raw_pair();
        }
        raw_time += t.elapsed();
    }
    let n = f64::from(rounds * per_round);
    let provider_rate = n / provider_time.as_secs_f64();
    let raw_rate = n / raw_time.as_secs_f64();
    println!(
        "pg_pairs: provider {provider_rate:.1} pairs/s, raw {raw_rate:.1} pairs/s, ratio {:.2} (target >= 0.80), {} pairs each",
        provider_rate / raw_rate,
        rounds * per_round
    );
    b.cleanup();
}

criterion_group!(benches, pairs);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
