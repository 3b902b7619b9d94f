//! The broker fixture: the real `mayfly` binary started on an ephemeral port with its own
//! data directory (black-box tests), and an HTTP client for it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::poll::eventually_every;

pub struct Broker {
    /// The `mayfly` binary this broker runs, also what [`Broker::cli`] runs.
    pub bin: PathBuf,
    pub child: Child,
    pub addr: String,
    pub token: String,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    /// Lines the server wrote to stderr after start-up.
    pub log: mpsc::Receiver<String>,
}

pub struct Options {
    pub config: Option<String>,
    pub durability: &'static str,
    pub token: Option<String>,
    /// Extra environment for the broker process (e.g. `MAYFLY_CRASH_AT`).
    pub env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: None,
            durability: "crash-safe",
            token: None,
            env: Vec::new(),
        }
    }
}

impl Broker {
    /// Starts `bin` (the `mayfly` binary; a crate's integration tests have it as
    /// `env!("CARGO_BIN_EXE_mayfly")`) as a fresh broker in a new temporary data dir.
    pub fn start(bin: impl AsRef<Path>) -> Broker {
        let dir = crate::scratch_dir();
        Broker::start_in(bin, &dir, Options::default())
    }

    /// Starts `bin` as a broker on `dir` with `config` as its `mayfly.toml`.
    pub fn start_with_config(bin: impl AsRef<Path>, dir: &Path, config: String) -> Broker {
        Broker::start_in(
            bin,
            dir,
            Options {
                config: Some(config),
                ..Options::default()
            },
        )
    }

    /// Starts (or restarts) `bin` as a broker on an existing data dir.
    pub fn start_in(bin: impl AsRef<Path>, dir: &Path, opts: Options) -> Broker {
        let bin = bin.as_ref().to_path_buf();
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir)
            .arg("--durability")
            .arg(opts.durability)
            .env_remove("MAYFLY_MASTER_KEY")
            .env_remove("MAYFLY_CONFIG")
            .env("MAYFLY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(config) = &opts.config {
            let path = dir.join("mayfly.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn().expect("spawn mayfly serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut token = opts.token;
        let mut addr = None;
        let mut seen = Vec::new();
        while addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!(
                    "mayfly serve did not start; stderr so far:\n{}",
                    seen.join("\n")
                ),
            };
            if let Some(t) = line.trim().strip_prefix("export MAYFLY_TOKEN=") {
                token = Some(t.to_string());
            }
            if let Some(a) = line.strip_prefix("mayfly: listening on ") {
                addr = Some(a.trim().to_string());
            }
            seen.push(line);
        }
        Broker {
            bin,
            child,
            addr: addr.unwrap(),
            token: token.expect("no operator token: pass the one from the first start"),
            dir: dir.to_path_buf(),
            http: reqwest::Client::new(),
            log: rx,
        }
    }

    /// Stops the process abruptly (as a crash would) and returns what is needed to restart.
    pub fn kill(mut self) -> (PathBuf, String) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.dir.clone(), self.token.clone())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, String) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, ctype)
    }

    /// Operator GET expecting 200.
    pub async fn get(&self, path: &str) -> Value {
        let (status, body, _) = self
            .call(reqwest::Method::GET, path, Some(&self.token), None)
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Operator POST; returns status and body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, body, _) = self
            .call(reqwest::Method::POST, path, Some(&self.token), Some(body))
            .await;
        (status, body)
    }

    pub async fn add_identity(&self, id: &str, owner: &str) -> Value {
        let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let (status, body) = self
            .post("/v1/identities", json!({"id": id, "kind": "pipeline", "owner": owner, "purpose": "tests", "expires_at": expires}))
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn add_token_target(&self, name: &str, allow: &[&str]) -> Value {
        let (status, body) = self
            .post("/v1/targets", json!({"name": name, "kind": "token", "actions": ["read", "write"], "default_ttl": "5m", "max_ttl": "1h", "allow": allow}))
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn grant(&self, identity: &str, target: &str, task: &str, ttl: &str) -> Value {
        let (status, body) = self
            .post("/v1/grants", json!({"identity": identity, "target": target, "action": "read", "purpose": "test", "task": task, "ttl": ttl}))
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// Runs the CLI against this broker.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bin)
            .args(args)
            .env("MAYFLY_ADDR", &self.addr)
            .env("MAYFLY_TOKEN", &self.token)
            .env_remove("MAYFLY_OUTPUT")
            .output()
            .unwrap()
    }

    pub async fn audit(&self, query: &str) -> Vec<Value> {
        self.get(&format!("/v1/audit?{query}"))
            .await
            .as_array()
            .unwrap()
            .clone()
    }

    /// RFC 7662 introspection of `token`, asked by `bearer`; expects 200.
    pub async fn introspect_as(&self, bearer: &str, token: &str) -> Value {
        let resp = self
            .http
            .post(self.url("/oauth2/introspect"))
            .bearer_auth(bearer)
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// Introspection as the operator.
    pub async fn introspect(&self, token: &str) -> Value {
        self.introspect_as(&self.token, token).await
    }

    /// A refused request left nothing behind: no grant and no lease.
    pub async fn assert_no_grants_or_leases(&self) {
        for listing in ["/v1/grants", "/v1/leases"] {
            let items = self.get(listing).await;
            assert_eq!(items, json!([]), "{listing} after refused requests");
        }
    }

    /// Failed authentications the audit chain accounts for: repeated failures of one
    /// source and reason are one entry with a `count`.
    pub async fn audited_auth_failures(&self) -> u64 {
        self.audit("limit=10000")
            .await
            .iter()
            .filter(|e| e["kind"] == "auth.failed")
            .map(|e| e["detail"]["count"].as_u64().unwrap_or(1))
            .sum()
    }

    /// Waits until the audit accounts for `expected` failed authentications (counted
    /// ones are written when their interval ends) and returns what it last saw.
    pub async fn wait_for_auth_failures(&self, expected: u64) -> u64 {
        let seen = eventually_every(
            Duration::from_secs(15),
            Duration::from_millis(100),
            || async {
                let seen = self.audited_auth_failures().await;
                if seen >= expected {
                    Ok(seen)
                } else {
                    Err(seen)
                }
            },
        )
        .await;
        seen.unwrap_or_else(|last| last)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A replica: a broker with a data directory of its own on the shared store `url`, with
/// the master key all replicas share (one [`master_key`] per test, not per replica).
/// `token` is the operator token the first one printed.
pub fn start_replica(bin: impl AsRef<Path>, url: &str, key: &str, token: Option<String>) -> Broker {
    let dir = crate::scratch_dir();
    Broker::start_in(
        bin,
        &dir,
        Options {
            env: vec![
                ("MAYFLY_STORE", url.to_string()),
                ("MAYFLY_MASTER_KEY", key.to_string()),
            ],
            token,
            ..Options::default()
        },
    )
}

pub fn store_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("mayfly.db").display())
}

/// A fresh random master key (base64), for replicas that must share one.
pub fn master_key() -> String {
    use base64::Engine;
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).unwrap();
    base64::engine::general_purpose::STANDARD.encode(key)
}
