//! Three `mayfly serve` replicas on one PostgreSQL database, one of them killed with
//! SIGKILL mid-load: every acknowledged grant is stored, every lease expires exactly once,
//! the audit chain stays one verifiable chain, and the survivors take over the dead
//! replica's expiry work.
//!
//! Needs PostgreSQL at 127.0.0.1:5432 (trust auth, user `postgres`); skipped when it is
//! unreachable unless `MAYFLY_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually_every, Broker};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::Mutex;

/// A fresh database for the replicas, dropped (connections and all) at the end.
struct Database {
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await: clean up from a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut c) =
                    sqlx::PgConnection::connect("postgres://postgres@127.0.0.1:5432/postgres").await
                {
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

/// Every audit entry, paged.
async fn all_audit(broker: &Broker) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page = broker.audit(&format!("after={after}&limit=10000")).await;
        let Some(last) = page.last() else { break };
        after = last["seq"].as_u64().unwrap();
        out.extend(page);
    }
    out
}

/// A grant acknowledged (201) by replica `by`.
#[derive(Clone, Debug)]
struct Acked {
    by: usize,
    grant: String,
    lease: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_truth_through_a_crash() {
    let Some(mut admin) = common::pg::superuser_or_skip("replicas").await else {
        return;
    };
    let db = Database {
        name: format!("mayfly_r_{}", common::suffix()),
    };
    sqlx::query(&format!("CREATE DATABASE {}", db.name))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{}", db.name);
    // All replicas must share the master key: the signing key in the database is sealed
    // under it.
    let key = common::master_key();
    let start = |token: Option<String>| common::start_replica(&url, &key, token);
    // One after another: only the first start creates the operator token and the signing
    // key; the others find them in the database.
    let first = start(None);
    let token = first.token.clone();
    let second = start(Some(token.clone()));
    let third = start(Some(token.clone()));
    first.add_identity("loader", "team").await;
    first.add_token_target("api", &["*"]).await;

    let replicas = [first, second, third];
    // Brokers hold a log receiver (not Sync); workers need only address and token.
    let endpoints: Arc<Vec<(String, String)>> = Arc::new(
        replicas
            .iter()
            .map(|r| (r.url("/v1/grants"), r.token.clone()))
            .collect(),
    );
    let http = reqwest::Client::new();
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    const WORKERS: usize = 6;
    const PER_WORKER: usize = 40;
    let load_started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let endpoints = endpoints.clone();
            let http = http.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                let mut failed = 0;
                for i in 0..PER_WORKER {
                    let by = (w + i) % 3;
                    let (grants_url, token) = &endpoints[by];
                    let resp = http
                        .post(grants_url)
                        .bearer_auth(token)
                        .json(
                            &json!({"identity": "loader", "target": "api", "action": "read",
                            "purpose": "replica test", "task": format!("w{w}-{i}"), "ttl": "2s"}),
                        )
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    // A refused connection (the killed replica) is simply not acknowledged.
                    let Ok(resp) = resp else {
                        failed += 1;
                        continue;
                    };
                    if resp.status() != StatusCode::CREATED {
                        failed += 1;
                        continue;
                    }
                    let Ok(body) = resp.json::<Value>().await else {
                        failed += 1;
                        continue;
                    };
                    acked.lock().await.push(Acked {
                        by,
                        grant: body["grant"]["id"].as_str().unwrap().to_string(),
                        lease: body["lease"]["id"].as_str().unwrap().to_string(),
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                failed
            })
        })
        .collect();

    // Mid-load, SIGKILL the third replica (the grants it acknowledged still have to
    // expire, and only the survivors are left to do it).
    assert!(
        eventually_every(
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async { acked.lock().await.iter().filter(|a| a.by == 2).count() >= 15 }
        )
        .await,
        "load did not reach the third replica"
    );
    let killed_at = time::OffsetDateTime::now_utc();
    let pid = replicas[2].child.id();
    // SIGKILL: no shutdown hooks, in-flight requests are cut.
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let mut refused = 0;
    for w in workers {
        refused += w.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    eprintln!(
        "{} grants acknowledged ({} by the killed replica), {refused} not, in {:?}",
        acked.len(),
        acked.iter().filter(|a| a.by == 2).count(),
        load_started.elapsed()
    );
    assert!(
        refused > 0,
        "the killed replica should have refused some grants"
    );

    let survivor = &replicas[0];
    // Every acknowledged grant is in the store, seen from either survivor.
    for (i, a) in acked.iter().enumerate() {
        let r = &replicas[i % 2];
        let grant = r.get(&format!("/v1/grants/{}", a.grant)).await;
        assert_eq!(grant["id"], a.grant.as_str());
    }

    // Every lease expires (2 s TTL), each exactly once, whoever acknowledged it.
    let expected: HashSet<&str> = acked.iter().map(|a| a.lease.as_str()).collect();
    let expired = eventually_every(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let mut expired: HashMap<String, Vec<Value>> = HashMap::new();
            for e in all_audit(survivor).await {
                if e["kind"] == "lease.expired" {
                    let id = e["lease_id"].as_str().unwrap().to_string();
                    expired.entry(id).or_default().push(e);
                }
            }
            if expected.iter().all(|id| expired.contains_key(*id)) {
                Ok(expired)
            } else {
                Err(expired)
            }
        },
    )
    .await
    .unwrap_or_else(|expired| panic!("{} of {} leases expired", expired.len(), expected.len()));
    // Quiet for a while longer: no lease may be expired a second time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for e in all_audit(survivor).await {
        if e["kind"] == "lease.expired" {
            *counts
                .entry(e["lease_id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    for id in &expected {
        assert_eq!(
            counts.get(*id),
            Some(&1),
            "lease {id} expired {:?} times",
            counts.get(*id)
        );
    }

    // The survivors did the dead replica's expiry work: leases it acknowledged expired
    // after it was gone.
    let parse = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let taken_over = acked
        .iter()
        .filter(|a| a.by == 2)
        .filter(|a| parse(expired[&a.lease][0]["at"].as_str().unwrap()) > killed_at)
        .count();
    eprintln!("{taken_over} leases of the killed replica were expired by the survivors");
    assert!(taken_over > 0);

    // One chain, intact, seen the same from both survivors.
    let a = replicas[0].get("/v1/audit/verify").await;
    let b = replicas[1].get("/v1/audit/verify").await;
    assert!(a["first_break"].is_null(), "{a}");
    assert_eq!(a["entries"], a["last_seq"]);
    assert!(b["first_break"].is_null(), "{b}");
    assert!(b["entries"].as_u64() >= a["entries"].as_u64());
    let active = survivor.get("/v1/leases?state=active").await;
    assert_eq!(active.as_array().map(Vec::len), Some(0), "{active}");
}
