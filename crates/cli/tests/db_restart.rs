//! The database restarts under load: two replicas on a private PostgreSQL cluster keep
//! every acknowledged grant, fail closed while it is down (503, nothing acknowledged), and
//! recover by themselves when it is back. A private cluster, because restarting the
//! machine's shared PostgreSQL would break the tests running beside this one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::{Connection, Executor};

/// A PostgreSQL cluster of this test's own, run as the `postgres` user, stopped on drop.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find(|d| d.join("pg_ctl").exists())
}

/// Runs a PostgreSQL server tool as the `postgres` user (initdb refuses to run as root;
/// the machine's `postgres` user owns the cluster). A tool that cannot be started is a
/// sentence naming it, not an `Os { code: 2 }`.
fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> Result<std::process::Output, String> {
    let tool = bin.join(tool);
    let mut cmd = if nix_is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(&tool);
        cmd
    } else {
        Command::new(&tool)
    };
    cmd.args(args).output().map_err(|e| {
        let runner = if nix_is_root() {
            "runuser (util-linux), to run it as the postgres user"
        } else {
            "it"
        };
        format!("cannot start {} via {runner}: {e}", tool.display())
    })
}

fn tool_on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let Some(bin) = pg_bin() else {
            common::services::unavailable(
                "database restart under load",
                "PostgreSQL server binaries (/usr/lib/postgresql/*/bin)",
                "none installed",
            );
            return None;
        };
        if nix_is_root() && !tool_on_path("runuser") {
            common::services::unavailable(
                "database restart under load",
                "`runuser` (util-linux), to run initdb as the postgres user",
                "not on PATH",
            );
            return None;
        }
        let root = common::scratch_dir();
        if nix_is_root() {
            assert!(Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&root)
                .status()
                .unwrap()
                .success());
        }
        let data = root.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let init = as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let cluster = Cluster { bin, data, port };
        cluster.ctl(&["start"]);
        Some(cluster)
    }

    fn ctl(&self, action: &[&str]) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.data.parent().unwrap().display()
        );
        let log = self.data.parent().unwrap().join("server.log");
        let mut args = vec![
            "-D",
            self.data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "-m",
            "fast",
        ];
        args.extend_from_slice(action);
        let out = as_postgres(&self.bin, "pg_ctl", &args).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "pg_ctl {action:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-w",
                "-m",
                "immediate",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(self.data.parent().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_a_database_restart_without_losing_acknowledged_grants() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    admin.execute("CREATE DATABASE mayfly").await.unwrap();
    admin.close().await.unwrap();
    let store = cluster.url("mayfly");
    let key = common::master_key();
    let start = |token: Option<String>| common::start_replica(&store, &key, token);
    let first = start(None);
    let second = start(Some(first.token.clone()));
    first.add_identity("loader", "team").await;
    first.add_token_target("api", &["*"]).await;

    let endpoints: Vec<(String, String)> = [&first, &second]
        .iter()
        .map(|b| (b.addr.clone(), b.token.clone()))
        .collect();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(Mutex::new(0usize));
    let stop_at = Instant::now() + Duration::from_secs(8);
    let mut workers = Vec::new();
    for w in 0..4 {
        let (addr, token) = endpoints[w % 2].clone();
        let (acked, refused) = (acked.clone(), refused.clone());
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            let mut i = 0;
            while Instant::now() < stop_at {
                i += 1;
                let body = json!({"identity": "loader", "target": "api", "action": "read", "purpose": "load", "task": format!("w{w}-{i}"), "ttl": "10m"});
                match http.post(format!("{addr}/v1/grants")).bearer_auth(&token).json(&body).send().await {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = r.json().await.unwrap();
                        acked.lock().unwrap().push(v["grant"]["id"].as_str().unwrap().to_string());
                    }
                    Ok(r) => {
                        // While the database is away the broker fails closed: nothing acknowledged.
                        assert!(r.status() == 503 || r.status() == 401, "unexpected {}", r.status());
                        *refused.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_restart = acked.lock().unwrap().len();
    assert!(
        before_restart > 0,
        "no grant was acknowledged before the restart"
    );
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.ctl(&["restart"]);
        cluster
    })
    .await
    .unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > before_restart,
        "no grant was acknowledged after the restart"
    );

    // Both replicas came back by themselves and agree on everything acknowledged.
    for broker in [&first, &second] {
        let healthy = common::eventually(Duration::from_secs(15), || async {
            broker
                .http
                .get(broker.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(healthy, "a replica did not recover");
    }
    for id in &acked {
        let grant = second.get(&format!("/v1/grants/{id}")).await;
        assert_eq!(
            grant["state"], "issued",
            "acknowledged grant {id} is missing or changed"
        );
    }
    first.grant("loader", "api", "after-restart-1", "5m").await;
    second.grant("loader", "api", "after-restart-2", "5m").await;
    for broker in [&first, &second] {
        let report = broker.get("/v1/audit/verify").await;
        assert_eq!(report["first_break"], Value::Null, "{report}");
    }
    eprintln!(
        "database restart: {} grants acknowledged ({before_restart} before the restart), {} refused while it was down",
        acked.len(),
        refused.lock().unwrap()
    );
    drop(first);
    drop(second);
    drop(cluster);
}
