//! The OpenBao peer comparison (`mayfly-load peer …`, driven by `scripts/bench-peer`).
//!
//! The same load engine, latency histograms and JSON reports as the Mayfly scenarios, so
//! the two systems are measured by one tool at one concurrency. Secrets (the peer's unseal
//! key and root token) only ever go to a 0600 file in the caller's temp directory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::{
    cpu_seconds, human, percentiles, post_ok, report, round1, round3, rss_kib, run_load, Common,
    Endpoints, ExtractFn, LoadOpts, MakeFn, Spec, OWNER,
};

#[derive(Subcommand)]
pub(crate) enum PeerCmd {
    /// Start `bao server` (raft storage), init on first start, unseal, wait for
    /// /v1/sys/health 200; report time-to-ready and RSS; leaves it running.
    BaoStart(BaoStartArgs),
    /// OpenBao token issuance: POST /v1/<path> (closed loop, or open loop with --rate).
    BaoTokens(BaoTokensArgs),
    /// Register a `postgres` target on a Mayfly broker for `pg-pairs`.
    MayflyPgTarget(PgTargetArgs),
    /// Dynamic PostgreSQL credentials: issue + revoke pairs, closed loop, either system.
    PgPairs(PgPairsArgs),
    /// OpenBao expiry lag: short-TTL tokens come due at a fixed rate; poll their leases.
    BaoExpiry(BaoExpiryArgs),
}

#[derive(Args)]
pub(crate) struct BaoStartArgs {
    /// The real `bao` server binary (not the Python shim).
    #[arg(long)]
    bin: PathBuf,
    #[arg(long)]
    config: PathBuf,
    /// Where the server's output goes.
    #[arg(long)]
    log: PathBuf,
    /// Listener address as configured, e.g. http://127.0.0.1:8200.
    #[arg(long)]
    addr: String,
    /// Unseal key and root token: written here (0600) at first start, read on restarts.
    #[arg(long)]
    keys: PathBuf,
    /// Also wait for the expiration manager's "lease restore complete" log line.
    #[arg(long)]
    wait_restore: bool,
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
}

#[derive(Args)]
pub(crate) struct BaoTokensArgs {
    #[arg(long)]
    addr: String,
    #[arg(long, env = "BAO_TOKEN", hide_env_values = true)]
    token: String,
    /// Token-creating endpoint under /v1.
    #[arg(long, default_value = "auth/token/create-orphan")]
    path: String,
    #[arg(long, default_value = "15m")]
    ttl: String,
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    load: LoadOpts,
}

#[derive(Args)]
pub(crate) struct PgTargetArgs {
    #[command(flatten)]
    c: Common,
    #[arg(long, default_value = "peer-pg")]
    target: String,
    /// Environment variable holding the admin connection URL (kept off the command line).
    #[arg(long, default_value = "PEER_PG_ADMIN_URL")]
    admin_url_env: String,
    /// Literal prefix of the usernames Mayfly creates.
    #[arg(long, default_value = "mfpeer_")]
    prefix: String,
    /// The statements granted per user, the same for both systems (JSON array of strings,
    /// with {{name}}).
    #[arg(long)]
    grants_json: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum System {
    Mayfly,
    Openbao,
}

#[derive(Args)]
pub(crate) struct PgPairsArgs {
    #[arg(long, value_enum)]
    system: System,
    #[arg(long)]
    addr: String,
    /// Mayfly operator token or OpenBao token.
    #[arg(long, env = "PEER_TOKEN", hide_env_values = true)]
    token: String,
    /// Mayfly target or OpenBao database role.
    #[arg(long, default_value = "peer-pg")]
    role: String,
    /// Mayfly: the identity the operator requests for.
    #[arg(long, default_value = "wl-0000")]
    identity: String,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long)]
    server_pid: Option<u32>,
}

#[derive(Args)]
pub(crate) struct BaoExpiryArgs {
    #[arg(long)]
    addr: String,
    #[arg(long, env = "BAO_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long, default_value_t = 200.0)]
    due_rate: f64,
    #[arg(long, default_value_t = 5.0)]
    due_seconds: f64,
    #[arg(long, default_value_t = 10)]
    ttl_s: u64,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How often the remaining leases are listed: the resolution of the lag.
    #[arg(long, default_value_t = 25)]
    poll_ms: u64,
    #[arg(long, default_value = "")]
    label: String,
}

pub(crate) async fn run(cmd: PeerCmd) -> Result<()> {
    match cmd {
        PeerCmd::BaoStart(a) => bao_start(a).await,
        PeerCmd::BaoTokens(a) => bao_tokens(a).await,
        PeerCmd::MayflyPgTarget(a) => mayfly_pg_target(a).await,
        PeerCmd::PgPairs(a) => pg_pairs(a).await,
        PeerCmd::BaoExpiry(a) => bao_expiry(a).await,
    }
}

fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?)
}

// ---------------------------------------------------------------------------------------
// Starting OpenBao

async fn health(http: &reqwest::Client, addr: &str) -> Option<u16> {
    let r = http
        .get(format!("{addr}/v1/sys/health"))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

fn write_private(path: &PathBuf, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

async fn bao_start(a: BaoStartArgs) -> Result<()> {
    let log = std::fs::File::create(&a.log)?;
    let http = client()?;
    let t0 = Instant::now();
    let mut child = std::process::Command::new(&a.bin)
        .arg("server")
        .arg(format!("-config={}", a.config.display()))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", a.bin.display()))?;
    let pid = child.id();
    let deadline = t0 + Duration::from_secs(a.timeout_s);
    let check = |child: &mut std::process::Child, what: &str| -> Result<()> {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            bail!("bao server exited with {status} while {what}:\n{text}");
        }
        if Instant::now() > deadline {
            bail!("bao server: {what} took over {}s", a.timeout_s);
        }
        Ok(())
    };
    // 501: not initialised, 503: sealed, 429: standby, 200: active and unsealed.
    let first = loop {
        check(&mut child, "waiting for the listener")?;
        if let Some(s) = health(&http, &a.addr).await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let listening_ms = t0.elapsed().as_secs_f64() * 1e3;
    if first == 501 {
        let r = http
            .put(format!("{}/v1/sys/init", a.addr))
            .json(&json!({"secret_shares": 1, "secret_threshold": 1}))
            .send()
            .await?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        let (Some(key), Some(root)) = (v["keys_base64"][0].as_str(), v["root_token"].as_str())
        else {
            bail!("sys/init: status {status}, no key or root token in the answer");
        };
        write_private(
            &a.keys,
            &json!({"unseal_key": key, "root_token": root}).to_string(),
        )?;
    }
    let keys: Value = serde_json::from_str(
        &std::fs::read_to_string(&a.keys).with_context(|| format!("read {}", a.keys.display()))?,
    )?;
    let key = keys["unseal_key"]
        .as_str()
        .ok_or_else(|| anyhow!("{}: no unseal_key", a.keys.display()))?;
    let r = http
        .put(format!("{}/v1/sys/unseal", a.addr))
        .json(&json!({"key": key}))
        .send()
        .await?;
    if r.status().as_u16() != 200 {
        bail!("sys/unseal: {}", r.status());
    }
    loop {
        check(&mut child, "waiting for /v1/sys/health 200 after unseal")?;
        if health(&http, &a.addr).await == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_ms = t0.elapsed().as_secs_f64() * 1e3;
    let rss_ready = rss_kib(pid);
    // Vault-lineage servers restore leases in the background after unseal: requests are
    // served meanwhile, so "ready" and "all leases loaded" are reported separately.
    let mut restore_ms = None;
    if a.wait_restore {
        loop {
            check(&mut child, "waiting for 'lease restore complete'")?;
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            if text.contains("lease restore complete") {
                restore_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let out = json!({"pid": pid, "addr": a.addr, "initialised_now": first == 501,
        "listening_ms": round3(listening_ms), "ready_ms": round3(ready_ms),
        "restore_ms": restore_ms.map(round3), "rss_kib": rss_ready, "rss_kib_restored": rss_kib(pid)});
    println!("{out}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Token issuance

async fn bao_tokens(a: BaoTokensArgs) -> Result<()> {
    let spec = Spec::from(&a.load);
    let url = format!("{}/v1/{}", a.addr, a.path);
    let token = a.token.clone();
    let body = json!({"ttl": a.ttl, "policies": ["default"], "no_parent": true});
    let make: Arc<MakeFn> = Arc::new(move |client: &reqwest::Client, _base: &str, _i: u64| {
        client
            .post(&url)
            .header("X-Vault-Token", &token)
            .json(&body)
    });
    let endpoints = Endpoints {
        addrs: std::slice::from_ref(&a.addr),
        server_pids: a.server_pid.as_slice(),
        db_pid: None,
    };
    let out = run_load::<()>(spec, &endpoints, make, Arc::new(|_, _, _| None)).await?;
    let mut v = out.summary(&spec);
    v["path"] = json!(a.path);
    v["ttl"] = json!(a.ttl);
    let scenario = if spec.rate.is_some() {
        "bao-tokens-open"
    } else {
        "bao-tokens"
    };
    report(scenario, &a.label, v.clone(), &human(&v));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Dynamic PostgreSQL credentials

async fn mayfly_pg_target(a: PgTargetArgs) -> Result<()> {
    let admin = std::env::var(&a.admin_url_env)
        .with_context(|| format!("{} is not set", a.admin_url_env))?;
    let grants: Value = serde_json::from_str(&a.grants_json).context("--grants-json")?;
    let http = client()?;
    post_ok(
        &http,
        &a.c,
        "/v1/targets",
        json!({"name": a.target, "kind": "postgres", "actions": ["read"], "default_ttl": "10m",
            "max_ttl": "1h", "allow": [format!("owner:{OWNER}")], "admin": admin,
            "settings": {"username_template": format!("{}{{{{rand}}}}", a.prefix),
                "grants": {"read": grants},
                "environment": "prod", "owner": OWNER, "groups": ["bench"], "sensitivity": "low"}}),
    )
    .await?;
    eprintln!("mayfly-load peer: postgres target {} registered", a.target);
    Ok(())
}

struct PairOut {
    pair: Histogram<u64>,
    issue: Histogram<u64>,
    revoke: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    error_sample: Option<String>,
    pairs: u64,
}

impl PairOut {
    fn new() -> Result<PairOut> {
        Ok(PairOut {
            pair: hist()?,
            issue: hist()?,
            revoke: hist()?,
            statuses: BTreeMap::new(),
            error_sample: None,
            pairs: 0,
        })
    }
}

fn hist() -> Result<Histogram<u64>> {
    Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

fn hist_ms(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| round3(h.value_at_quantile(q) as f64 / 1000.0);
    json!({"p50": ms(0.5), "p99": ms(0.99), "max": round3(h.max() as f64 / 1000.0)})
}

/// One request of a pair: the status, and the body when it was a success.
async fn send(rb: reqwest::RequestBuilder, what: &str, out: &mut PairOut) -> Option<Value> {
    let (key, sample) = match rb.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            match r.bytes().await {
                Ok(b) if (200..300).contains(&status) => {
                    *out.statuses.entry(format!("{what} {status}")).or_default() += 1;
                    return Some(serde_json::from_slice(&b).unwrap_or(Value::Null));
                }
                Ok(b) => (
                    format!("{what} {status}"),
                    String::from_utf8_lossy(&b).chars().take(400).collect(),
                ),
                Err(e) => (format!("{what} body_error"), e.to_string()),
            }
        }
        Err(e) => (format!("{what} transport_error"), e.to_string()),
    };
    *out.statuses.entry(key).or_default() += 1;
    out.error_sample.get_or_insert(sample);
    None
}

/// Issue then revoke, one pair after another on each connection. Mayfly acknowledges a
/// revocation once it is durably queued and drops the user right after, while OpenBao's
/// `sys/leases/revoke` waits for the DROP: so for Mayfly the run also waits until no lease
/// is `creating` or `revoking`, and `pairs_per_s_done` counts that time too.
async fn pg_pairs(a: PgPairsArgs) -> Result<()> {
    let deadline_d = Duration::from_secs_f64(a.duration);
    let health_path = match a.system {
        System::Mayfly => "/healthz",
        System::Openbao => "/v1/sys/health",
    };
    let mut clients = Vec::new();
    for _ in 0..a.connections.max(1) {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()?;
        c.get(format!("{}{health_path}", a.addr))
            .send()
            .await?
            .bytes()
            .await?;
        clients.push(c);
    }
    let seq = Arc::new(AtomicU64::new(0));
    let server0 = cpu_seconds(a.server_pid);
    let start = Instant::now();
    let mut handles = Vec::new();
    for client in clients {
        let (addr, token, role, identity, system) = (
            a.addr.clone(),
            a.token.clone(),
            a.role.clone(),
            a.identity.clone(),
            a.system,
        );
        let seq = seq.clone();
        handles.push(tokio::spawn(async move {
            let mut out = PairOut::new()?;
            while start.elapsed() < deadline_d {
                let i = seq.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                let issue = match system {
                    System::Mayfly => client
                        .post(format!("{addr}/v1/grants"))
                        .bearer_auth(&token)
                        .json(&json!({"identity": identity, "target": role, "action": "read",
                            "purpose": "peer comparison", "task": format!("pg-pair-{i}"), "ttl": "10m"})),
                    System::Openbao => client
                        .get(format!("{addr}/v1/database/creds/{role}"))
                        .header("X-Vault-Token", &token),
                };
                let Some(v) = send(issue, "issue", &mut out).await else {
                    continue;
                };
                let t1 = Instant::now();
                let revoke = match system {
                    System::Mayfly => {
                        let Some(id) = v["grant"]["id"].as_str() else {
                            bail!("grant answer without grant.id");
                        };
                        client
                            .post(format!("{addr}/v1/grants/{id}/revoke"))
                            .bearer_auth(&token)
                    }
                    System::Openbao => {
                        let Some(id) = v["lease_id"].as_str() else {
                            bail!("creds answer without lease_id");
                        };
                        client
                            .put(format!("{addr}/v1/sys/leases/revoke"))
                            .header("X-Vault-Token", &token)
                            .json(&json!({"lease_id": id}))
                    }
                };
                if send(revoke, "revoke", &mut out).await.is_none() {
                    continue;
                }
                let t2 = Instant::now();
                out.issue
                    .saturating_record(((t1 - t0).as_micros() as u64).max(1));
                out.revoke
                    .saturating_record(((t2 - t1).as_micros() as u64).max(1));
                out.pair
                    .saturating_record(((t2 - t0).as_micros() as u64).max(1));
                out.pairs += 1;
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut all = PairOut::new()?;
    for h in handles {
        let w = h.await??;
        for (dst, src) in [
            (&mut all.pair, &w.pair),
            (&mut all.issue, &w.issue),
            (&mut all.revoke, &w.revoke),
        ] {
            dst.add(src).map_err(|e| anyhow!("histogram: {e}"))?;
        }
        for (k, v) in w.statuses {
            *all.statuses.entry(k).or_default() += v;
        }
        if all.error_sample.is_none() {
            all.error_sample = w.error_sample;
        }
        all.pairs += w.pairs;
    }
    let load_s = start.elapsed().as_secs_f64();
    let mut pending_after = 0usize;
    if a.system == System::Mayfly {
        let http = client()?;
        let drain_deadline = Instant::now() + Duration::from_secs(120);
        loop {
            pending_after = 0;
            for state in ["creating", "revoking"] {
                let r = http
                    .get(format!("{}/v1/leases", a.addr))
                    .bearer_auth(&a.token)
                    .query(&[("state", state), ("limit", "1000")])
                    .send()
                    .await?;
                if r.status().as_u16() != 200 {
                    bail!("GET /v1/leases?state={state}: {}", r.status());
                }
                pending_after += r.json::<Vec<Value>>().await?.len();
            }
            if pending_after == 0 || Instant::now() > drain_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let done_s = start.elapsed().as_secs_f64();
    let server_cpu = match (server0, cpu_seconds(a.server_pid)) {
        (Some(x), Some(y)) => Some(round1(100.0 * (y - x) / done_s)),
        _ => None,
    };
    let v = json!({
        "system": match a.system { System::Mayfly => "mayfly", System::Openbao => "openbao" },
        "connections": a.connections,
        "pairs": all.pairs,
        "load_s": round3(load_s),
        "done_s": round3(done_s),
        "pairs_per_s": round1(all.pairs as f64 / load_s),
        "pairs_per_s_done": round1(all.pairs as f64 / done_s),
        "still_pending": pending_after,
        "pair_ms": hist_ms(&all.pair),
        "issue_ms": hist_ms(&all.issue),
        "revoke_ms": hist_ms(&all.revoke),
        "statuses": all.statuses,
        "error_sample": all.error_sample,
        "server_cpu_pct": server_cpu,
    });
    let h = format!(
        "{} pairs in {:.1}s (+{:.2}s until dropped) = {} pairs/s done; pair ms p50 {} p99 {}; statuses {}",
        all.pairs,
        load_s,
        done_s - load_s,
        v["pairs_per_s_done"],
        v["pair_ms"]["p50"],
        v["pair_ms"]["p99"],
        v["statuses"]
    );
    report("pg-pairs", &a.label, v, &h);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Expiry lag

/// Token leases made through `auth/token/create` (the long-lived population uses
/// `create-orphan`, so this prefix holds only this scenario's tokens).
const SHORT_PATH: &str = "auth/token/create";

async fn remaining(http: &reqwest::Client, a: &BaoExpiryArgs) -> Result<usize> {
    let r = http
        .get(format!("{}/v1/sys/leases/lookup/{SHORT_PATH}/", a.addr))
        .header("X-Vault-Token", &a.token)
        .query(&[("list", "true")])
        .send()
        .await?;
    match r.status().as_u16() {
        404 => Ok(0),
        200 => {
            let v: Value = r.json().await?;
            Ok(v["data"]["keys"].as_array().map_or(0, Vec::len))
        }
        s => bail!("LIST sys/leases/lookup/{SHORT_PATH}: {s}"),
    }
}

/// OpenBao answers token lookups as invalid from the expiry instant on, whether or not the
/// lease is gone, so lookups cannot show revocation lag. The lease listing can: the k-th
/// lease to disappear is matched with the k-th expiry (one TTL, issued in order). `lag_ms`
/// is a lower bound (send time of the last listing that still had it, minus its expiry),
/// `lag_ms_upper_bound` the matching upper bound. The expiry is taken as response time +
/// TTL, at or after the server's own: both understate rather than overstate OpenBao's lag.
async fn bao_expiry(a: BaoExpiryArgs) -> Result<()> {
    if (a.ttl_s as f64) <= a.due_seconds {
        bail!("--ttl-s must exceed --due-seconds");
    }
    let http = client()?;
    let baseline = remaining(&http, &a).await?;
    let count = (a.due_rate * a.due_seconds) as u64;
    let spec = Spec {
        connections: a.connections,
        duration: None,
        count: Some(count),
        rate: Some(a.due_rate),
    };
    let url = format!("{}/v1/{SHORT_PATH}", a.addr);
    let token = a.token.clone();
    let body = json!({"ttl": format!("{}s", a.ttl_s), "policies": ["default"], "no_parent": true,
        "renewable": false});
    let make: Arc<MakeFn> = Arc::new(move |client: &reqwest::Client, _base: &str, _i: u64| {
        client
            .post(&url)
            .header("X-Vault-Token", &token)
            .json(&body)
    });
    let extract: Arc<ExtractFn<time::OffsetDateTime>> = Arc::new(|_, status, body| {
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_slice(body).ok()?;
        let ttl = v["auth"]["lease_duration"].as_i64()?;
        Some(time::OffsetDateTime::now_utc() + time::Duration::seconds(ttl))
    });
    let issue_started = Instant::now();
    let endpoints = Endpoints {
        addrs: std::slice::from_ref(&a.addr),
        server_pids: &[],
        db_pid: None,
    };
    let issuing = run_load(spec, &endpoints, make, extract).await?;
    let issue_v = issuing.summary(&spec);
    eprintln!(
        "mayfly-load peer bao-expiry: issued short tokens: {}",
        human(&issue_v)
    );
    let mut due = issuing.extracted.clone();
    due.sort();
    let n = due.len();
    if n == 0 {
        bail!("no short token was issued: {issue_v}");
    }

    let first_due = issue_started + Duration::from_secs(a.ttl_s);
    tokio::time::sleep_until((first_due - Duration::from_millis(300)).into()).await;
    let give_up = Instant::now() + Duration::from_secs_f64(a.due_seconds + 60.0);
    // For each lease that disappeared: (send time of the last listing that still had it,
    // answer time of the first that did not). The first is a lower bound of its end.
    let mut gone_between: Vec<(time::OffsetDateTime, time::OffsetDateTime)> = Vec::with_capacity(n);
    let mut polls = 0u64;
    let mut left = n;
    let mut prev_sent = time::OffsetDateTime::now_utc();
    while gone_between.len() < n && Instant::now() < give_up {
        let sent = time::OffsetDateTime::now_utc();
        left = remaining(&http, &a).await?.saturating_sub(baseline);
        let answered = time::OffsetDateTime::now_utc();
        polls += 1;
        let gone = n.saturating_sub(left);
        while gone_between.len() < gone {
            gone_between.push((prev_sent, answered));
        }
        prev_sent = sent;
        tokio::time::sleep(Duration::from_millis(a.poll_ms)).await;
    }
    let ms = |x: time::Duration| x.as_seconds_f64() * 1e3;
    let lag = percentiles(
        gone_between
            .iter()
            .zip(&due)
            .map(|((lo, _), d)| ms(*lo - *d))
            .collect(),
    );
    let lag_upper = percentiles(
        gone_between
            .iter()
            .zip(&due)
            .map(|((_, hi), d)| ms(*hi - *d))
            .collect(),
    );
    let v = json!({
        "leases_due": n,
        "due_rate_target": a.due_rate,
        "due_rate_achieved": round1(issuing.ok() as f64 / issuing.elapsed.as_secs_f64().max(1e-9)),
        "not_expired": left,
        "lag_ms": lag,
        "lag_ms_upper_bound": lag_upper,
        "poll_ms": a.poll_ms,
        "polls": polls,
        "issue": issue_v,
    });
    let h = format!(
        "{n} tokens due at {}/s, lag ms (lower bound) p50 {} p99 {} max {}, upper bound p99 {} (poll every {} ms; {left} not expired)",
        v["due_rate_achieved"], lag["p50"], lag["p99"], lag["max"], lag_upper["p99"], a.poll_ms
    );
    report("bao-expiry", &a.label, v, &h);
    Ok(())
}
