//! `mayfly-load`: drives a running Mayfly broker over HTTP and reports throughput and
//! latency (one JSON line on stdout, a human summary on stderr). Used by `scripts/bench`.
//!
//! Workloads authenticate with OIDC JWTs this tool mints itself with an Ed25519 key whose
//! JWKS file the broker trusts (`init` writes key, JWKS, broker config and policies). Tokens
//! are minted once before a run, so client-side signing is not measured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde_json::{json, Value};

mod peer;

const ISSUER: &str = "https://bench-issuer.mayfly.test";
const KID: &str = "bench-1";
const OWNER: &str = "team-bench";
/// Requests slower than this are listed by send time (to find periodic stalls).
const SLOW_US: u64 = 100_000;

#[derive(Parser)]
#[command(
    name = "mayfly-load",
    about = "Load generator for a running Mayfly broker"
)]
struct Cli {
    /// Tokio worker threads for the load generator (it shares the machine with the broker).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write the issuer key, its JWKS, the broker config and (optionally) a policy directory.
    Init(InitArgs),
    /// Start a broker, wait for /healthz, report time-to-ready and RSS; leaves it running.
    Start(StartArgs),
    /// Create the workload identities and token targets (operator token).
    Setup(SetupArgs),
    /// POST /v1/grants as workloads (closed loop, or open loop with --rate).
    Grants(GrantsArgs),
    /// POST /oauth2/token (RFC 8693 token exchange) as workloads: the grants load and
    /// fixture, each request exchanging the workload's JWT for a `read` token.
    Exchange(GrantsArgs),
    /// Leases coming due at a fixed rate while grants continue; lag to `lease.expired`.
    Expiry(ExpiryArgs),
    /// One identity holds K leases; time the kill switch and check nothing stays active.
    KillSwitch(KillArgs),
    /// Crypto floor: Ed25519 verify of a workload JWT + sign of an access token, per second.
    Floor(FloorArgs),
    /// Disk floor: fsync'd (fdatasync) small appends per second in a directory.
    Fsync(FsyncArgs),
    /// The OpenBao peer comparison (see scripts/bench-peer).
    #[command(subcommand)]
    Peer(peer::PeerCmd),
}

#[derive(Args, Clone)]
struct Common {
    /// Broker base URL. Several (comma-separated or repeated), for replicas sharing one
    /// store: the load's connections are spread over them round-robin, and single requests
    /// (setup, audit reads, the kill switch itself) go to the first.
    #[arg(
        long = "addr",
        env = "MAYFLY_ADDR",
        default_value = "http://127.0.0.1:8740",
        value_delimiter = ','
    )]
    addrs: Vec<String>,
    /// Operator token.
    #[arg(long, env = "MAYFLY_TOKEN", default_value = "")]
    token: String,
    /// Bench directory written by `init` (holds the issuer key).
    #[arg(long)]
    dir: PathBuf,
    /// Workload identities (wl-0000 …).
    #[arg(long, default_value_t = 100)]
    workloads: usize,
    /// Token targets (bench-00 …); one per ~workloads/targets workloads.
    #[arg(long, default_value_t = 10)]
    targets: usize,
    /// Label copied into the JSON result (e.g. the durability mode).
    #[arg(long, default_value = "")]
    label: String,
    /// Broker PIDs (comma-separated or repeated), to report their summed CPU use during
    /// the run.
    #[arg(long = "server-pid", value_delimiter = ',')]
    server_pids: Vec<u32>,
    /// PostgreSQL postmaster PID: reports the CPU of it and its children (backends, WAL
    /// writer, checkpointer) during the run, i.e. the database's share of the machine.
    #[arg(long)]
    db_pid: Option<u32>,
}

impl Common {
    /// The broker that single requests go to.
    fn addr(&self) -> &str {
        // clap's default guarantees at least one.
        self.addrs.first().map_or("", String::as_str)
    }

    fn endpoints(&self) -> Endpoints<'_> {
        Endpoints {
            addrs: &self.addrs,
            server_pids: &self.server_pids,
            db_pid: self.db_pid,
        }
    }
}

#[derive(Args)]
struct InitArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 100)]
    workloads: usize,
    #[arg(long, default_value_t = 10)]
    targets: usize,
    /// Cedar policies to generate (0: no policy directory, targets' allow lists decide).
    #[arg(long, default_value_t = 1000)]
    policies: usize,
}

#[derive(Args)]
struct StartArgs {
    /// The `mayfly` binary.
    #[arg(long)]
    bin: PathBuf,
    /// Where the broker's stderr goes.
    #[arg(long)]
    log: PathBuf,
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Arguments after `--` are passed to the binary (e.g. `serve --listen 127.0.0.1:0 …`).
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Args)]
struct SetupArgs {
    #[command(flatten)]
    c: Common,
}

#[derive(Args, Clone)]
struct LoadOpts {
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Run for this many seconds (ignored with --count).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Send exactly this many requests instead.
    #[arg(long)]
    count: Option<u64>,
    /// Open loop: send at this many requests/s; latency counts from the scheduled time.
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Args)]
struct GrantsArgs {
    #[command(flatten)]
    c: Common,
    #[command(flatten)]
    load: LoadOpts,
    #[arg(long, default_value = "5m")]
    ttl: String,
}

#[derive(Args)]
struct ExpiryArgs {
    #[command(flatten)]
    c: Common,
    /// Leases that come due per second.
    #[arg(long, default_value_t = 2000.0)]
    due_rate: f64,
    /// For how many seconds leases come due.
    #[arg(long, default_value_t = 10.0)]
    due_seconds: f64,
    /// TTL of the short leases, in seconds (must exceed --due-seconds so that issuing and
    /// expiring do not overlap).
    #[arg(long, default_value_t = 15)]
    ttl_s: u64,
    /// Grants per second running while the leases come due (e.g. 50 % of peak).
    #[arg(long, default_value_t = 1000.0)]
    grant_rate: f64,
    #[arg(long, default_value_t = 64)]
    connections: usize,
}

#[derive(Args)]
struct KillArgs {
    #[command(flatten)]
    c: Common,
    /// Active token leases the identity holds before the kill switch.
    #[arg(long, default_value_t = 100_000)]
    leases: u64,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Tokens checked by introspection afterwards.
    #[arg(long, default_value_t = 200)]
    sample: u64,
}

#[derive(Args)]
struct FloorArgs {
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args)]
struct FsyncArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Init(a) => init(a),
            Cmd::Start(a) => start(a).await,
            Cmd::Setup(a) => setup(&a.c).await,
            Cmd::Grants(a) => grants(a).await,
            Cmd::Exchange(a) => exchange(a).await,
            Cmd::Expiry(a) => expiry(a).await,
            Cmd::KillSwitch(a) => kill_switch(a).await,
            Cmd::Floor(a) => floor(a),
            Cmd::Fsync(a) => fsync(a),
            Cmd::Peer(p) => peer::run(p).await,
        }
    })
}

// ---------------------------------------------------------------------------------------
// Issuer, config and policies

fn load_issuer(dir: &Path) -> Result<Ed25519KeyPair> {
    let path = dir.join("issuer.pk8");
    let pkcs8 = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| anyhow!("bad issuer key: {e}"))
}

fn mint(pair: &Ed25519KeyPair, sub: &str, lifetime_s: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": KID});
    let claims = json!({"iss": ISSUER, "sub": sub, "aud": "mayfly", "iat": now, "nbf": now - 5,
        "exp": now + lifetime_s, "repository": "acme/bench"});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = pair.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

fn workload(i: usize) -> String {
    format!("wl-{i:04}")
}

fn target(i: usize) -> String {
    format!("bench-{i:02}")
}

fn init(a: InitArgs) -> Result<()> {
    std::fs::create_dir_all(&a.dir)?;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| anyhow!("keygen: {e}"))?;
    std::fs::write(a.dir.join("issuer.pk8"), pkcs8.as_ref())?;
    let pair = load_issuer(&a.dir)?;
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": KID, "alg": "EdDSA",
        "x": B64.encode(pair.public_key().as_ref())}]});
    let jwks_path = a.dir.join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string())?;
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let mut toml = format!(
        "[[auth.oidc]]\nissuer = \"{ISSUER}\"\naudiences = [\"mayfly\"]\njwks_file = \"{}\"\n\
         algorithms = [\"EdDSA\"]\nattributes = [\"repository\"]\n",
        abs(&jwks_path).display()
    );
    for i in 0..a.workloads {
        let w = workload(i);
        toml.push_str(&format!(
            "\n[[auth.oidc.rules]]\nidentity = \"{w}\"\nclaims = {{ sub = \"{w}\" }}\n"
        ));
    }
    if a.policies > 0 {
        let pdir = a.dir.join("policies");
        std::fs::create_dir_all(&pdir)?;
        let files = policies(a.policies, a.targets);
        for (name, text) in &files {
            std::fs::write(pdir.join(name), text)?;
        }
        toml = format!("[policy]\ndir = \"{}\"\n\n{toml}", abs(&pdir).display());
    }
    std::fs::write(a.dir.join("mayfly.toml"), toml)?;
    eprintln!(
        "mayfly-load: wrote issuer key, JWKS, mayfly.toml ({} workload rules, {} policies) to {}",
        a.workloads,
        a.policies,
        a.dir.display()
    );
    Ok(())
}

/// `n` Cedar policies, ten per file. Each benchmarked target `bench-NN` has 7 policies of
/// its own, the `bench` group 1, and 3 apply to every target, so about 11 can apply to a
/// benchmarked request; the rest name 99 filler targets (`svc-NNN`) and never apply. No
/// rule depends on the time of day, so results do not depend on when the bench runs.
fn policies(n: usize, targets: usize) -> Vec<(String, String)> {
    let mut all: Vec<String> = vec![
        "@id(\"global-agents-need-task\")\nforbid(principal, action, resource)\n\
         when { principal.kind == \"agent\" && context.task_id == \"\" };\n"
            .into(),
        "@id(\"global-break-glass\")\n@max_ttl(\"30m\")\npermit(principal, action, resource)\n\
         when { context.break_glass && principal.labels.contains(\"oncall=true\") };\n"
            .into(),
        "@id(\"global-blocked-network\")\nforbid(principal, action, resource)\n\
         when { context has source_ip && context.source_ip like \"192.168.*\" };\n"
            .into(),
        "@id(\"group-bench-read\")\n@max_ttl(\"1h\")\n\
         permit(principal, action == Action::\"read\", resource in TargetGroup::\"bench\")\n\
         when { principal.owner == resource.owner && principal.environment == resource.environment };\n"
            .into(),
    ];
    let per_target = |t: &str, owner: &str, k: usize| -> String {
        match k {
            0 => format!("@id(\"{t}-read\")\n@max_ttl(\"1h\")\npermit(principal, action == Action::\"read\", resource == Target::\"{t}\")\n\
                 when {{ principal.owner == \"{owner}\" && principal.labels.contains(\"env=prod\") && context.purpose != \"\" && context.requested_ttl_seconds <= 3600 }};\n"),
            1 => format!("@id(\"{t}-write\")\n@approval(\"1\")\n@max_ttl(\"15m\")\npermit(principal, action == Action::\"write\", resource == Target::\"{t}\")\n\
                 when {{ principal.owner == \"{owner}\" && principal.kind == \"pipeline\" }};\n"),
            2 => format!("@id(\"{t}-quarantine\")\nforbid(principal, action, resource == Target::\"{t}\")\n\
                 when {{ principal.labels.contains(\"quarantine=true\") }};\n"),
            3 => format!("@id(\"{t}-agent-read\")\n@max_ttl(\"10m\")\npermit(principal, action == Action::\"read\", resource == Target::\"{t}\")\n\
                 when {{ principal.kind == \"agent\" && context.task_id != \"\" && context.requested_ttl_seconds <= 600 }};\n"),
            4 => format!("@id(\"{t}-long-ttl\")\nforbid(principal, action, resource == Target::\"{t}\")\n\
                 when {{ context.requested_ttl_seconds > 86400 }};\n"),
            5 => format!("@id(\"{t}-ci-read\")\n@max_ttl(\"30m\")\npermit(principal, action == Action::\"read\", resource == Target::\"{t}\")\n\
                 when {{ principal.attributes.contains(\"repository=acme/ci\") }};\n"),
            _ => format!("@id(\"{t}-write-staging-{k}\")\n@max_ttl(\"20m\")\npermit(principal, action == Action::\"write\", resource == Target::\"{t}\")\n\
                 when {{ principal.environment == \"staging\" && context.purpose like \"deploy*\" }};\n"),
        }
    };
    for t in 0..targets {
        for k in 0..7 {
            all.push(per_target(&target(t), OWNER, k));
        }
    }
    let mut i = 0usize;
    while all.len() < n {
        let t = format!("svc-{:03}", i % 99);
        all.push(per_target(&t, &format!("team-{:02}", i % 30), 10 + i));
        i += 1;
    }
    all.truncate(n);
    all.chunks(10)
        .enumerate()
        .map(|(f, chunk)| (format!("p{f:04}.cedar"), chunk.join("\n")))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Starting a broker

async fn start(a: StartArgs) -> Result<()> {
    let log = std::fs::File::create(&a.log)?;
    let t0 = Instant::now();
    let mut child = std::process::Command::new(&a.bin)
        .args(&a.args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", a.bin.display()))?;
    let pid = child.id();
    let deadline = t0 + Duration::from_secs(a.timeout_s);
    let mut addr = None;
    let mut token = None;
    while addr.is_none() {
        if Instant::now() > deadline {
            bail!("broker did not print its address within {}s", a.timeout_s);
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&a.log).unwrap_or_default();
            bail!("broker exited with {status}:\n{text}");
        }
        let text = std::fs::read_to_string(&a.log).unwrap_or_default();
        // Only whole lines: the broker may be between the writes of one line (stderr is
        // unbuffered), and half an address ("http:/") sent the health check to a host
        // named "healthz".
        for line in text
            .split_inclusive('\n')
            .filter_map(|l| l.strip_suffix('\n'))
        {
            if let Some(t) = line.trim().strip_prefix("export MAYFLY_TOKEN=") {
                token = Some(t.to_string());
            }
            if let Some(rest) = line.strip_prefix("mayfly: listening on ") {
                addr = Some(rest.trim().to_string());
            }
        }
        if addr.is_none() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let listening_ms = t0.elapsed().as_secs_f64() * 1e3;
    let addr = addr.unwrap_or_default();
    // Each probe is bounded, so the deadline above is always checked again.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    loop {
        if Instant::now() > deadline {
            bail!("/healthz not 200 within {}s", a.timeout_s);
        }
        if let Ok(r) = http.get(format!("{addr}/healthz")).send().await {
            if r.status().as_u16() == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ready_ms = t0.elapsed().as_secs_f64() * 1e3;
    let out = json!({"pid": pid, "addr": addr, "token": token, "listening_ms": listening_ms,
        "ready_ms": ready_ms, "rss_kib": rss_kib(pid)});
    println!("{out}");
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces), so
/// field 3 of proc(5) (`state`) is index 0.
fn proc_stat_fields(pid: Option<u32>) -> Option<Vec<String>> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// CPU seconds (user + system) a process has used, from /proc (USER_HZ = 100).
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let fields = proc_stat_fields(pid)?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Summed CPU seconds of several processes; `None` unless every one can be read, so a
/// replica that died mid-run does not silently shrink the figure.
fn cpu_seconds_sum(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_seconds(Some(p))).sum()
}

/// CPU seconds so far of `root` and each of its direct children, by PID. PostgreSQL forks
/// one backend per connection from the postmaster, so this is the whole server.
fn cpu_of_tree(root: u32) -> BTreeMap<u32, f64> {
    let parent = |pid: u32| -> Option<u32> { proc_stat_fields(Some(pid))?.get(1)?.parse().ok() };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid == root || parent(pid) == Some(root))
        .filter_map(|pid| Some((pid, cpu_seconds(Some(pid))?)))
        .collect()
}

/// CPU seconds a process tree used between two [`cpu_of_tree`] readings. A backend forked
/// during the run counts from zero; one that exited during it is missed (the pools keep
/// their connections open for the whole run, so that is rare).
fn cpu_tree_delta(before: &BTreeMap<u32, f64>, after: &BTreeMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, s)| s - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

// ---------------------------------------------------------------------------------------
// Setup

fn now_plus_days(days: i64) -> Result<String> {
    Ok(
        (time::OffsetDateTime::now_utc() + time::Duration::days(days))
            .format(&time::format_description::well_known::Rfc3339)?,
    )
}

async fn post_ok(http: &reqwest::Client, c: &Common, path: &str, body: Value) -> Result<Value> {
    let r = http
        .post(format!("{}{path}", c.addr()))
        .bearer_auth(&c.token)
        .json(&body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    if !(200..300).contains(&status) && status != 409 {
        bail!("POST {path}: {status} {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn add_identity(http: &reqwest::Client, c: &Common, id: &str) -> Result<()> {
    post_ok(
        http,
        c,
        "/v1/identities",
        json!({"id": id, "kind": "pipeline", "owner": OWNER, "purpose": "load test",
            "expires_at": now_plus_days(30)?, "labels": {"env": "prod"}}),
    )
    .await?;
    Ok(())
}

async fn setup(c: &Common) -> Result<()> {
    let http = reqwest::Client::new();
    for i in 0..c.workloads {
        add_identity(&http, c, &workload(i)).await?;
    }
    for t in 0..c.targets {
        post_ok(
            &http,
            c,
            "/v1/targets",
            json!({"name": target(t), "kind": "token", "actions": ["read", "write"],
                "default_ttl": "5m", "max_ttl": "1h", "allow": [format!("owner:{OWNER}")],
                "settings": {"environment": "prod", "owner": OWNER, "groups": ["bench"], "sensitivity": "low"}}),
        )
        .await?;
    }
    eprintln!(
        "mayfly-load: setup: {} identities, {} token targets",
        c.workloads, c.targets
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The load engine

#[derive(Clone, Copy)]
struct Spec {
    connections: usize,
    duration: Option<Duration>,
    count: Option<u64>,
    rate: Option<f64>,
}

impl From<&LoadOpts> for Spec {
    fn from(l: &LoadOpts) -> Spec {
        Spec {
            connections: l.connections.max(1),
            duration: match l.count {
                Some(_) => None,
                None => Some(Duration::from_secs_f64(l.duration)),
            },
            count: l.count,
            rate: l.rate,
        }
    }
}

struct Outcome<T> {
    hist: Histogram<u64>,
    slow: Vec<f64>,
    statuses: BTreeMap<String, u64>,
    error_sample: Option<String>,
    elapsed: Duration,
    extracted: Vec<T>,
    client_cpu_s: f64,
    /// Summed over the brokers.
    server_cpu_s: Option<f64>,
    db_cpu_s: Option<f64>,
    brokers: usize,
}

impl<T> Outcome<T> {
    fn ok(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(k, _)| k.starts_with('2'))
            .map(|(_, v)| v)
            .sum()
    }
    fn total(&self) -> u64 {
        self.statuses.values().sum()
    }
    fn summary(&self, spec: &Spec) -> Value {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        json!({
            "connections": spec.connections,
            "brokers": self.brokers,
            "target_rate": spec.rate,
            "elapsed_s": round3(secs),
            "requests": self.total(),
            "ok": self.ok(),
            "rps": round1(self.ok() as f64 / secs),
            "latency_ms": {"p50": round3(ms(0.5)), "p90": round3(ms(0.9)), "p99": round3(ms(0.99)),
                "max": round3(self.hist.max() as f64 / 1000.0), "mean": round3(self.hist.mean() / 1000.0)},
            "statuses": self.statuses,
            "error_sample": self.error_sample,
            "slow_over_100ms": self.slow.len(),
            "slow_stall_starts_s": stall_starts(&self.slow),
            "client_cpu_pct": round1(100.0 * self.client_cpu_s / secs),
            "server_cpu_pct": self.server_cpu_s.map(|s| round1(100.0 * s / secs)),
            "db_cpu_pct": self.db_cpu_s.map(|s| round1(100.0 * s / secs)),
        })
    }
}

/// Send times (s from start) at which runs of >100 ms requests begin: one entry per stall.
fn stall_starts(slow: &[f64]) -> Vec<f64> {
    let mut starts: Vec<f64> = Vec::new();
    let mut last = f64::NEG_INFINITY;
    for &t in slow {
        if t - last > 0.2 {
            starts.push(round3(t));
        }
        last = t;
    }
    starts.truncate(50);
    starts
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Builds request `i` for a connection to the broker at `base` (its URL without a path).
type MakeFn = dyn Fn(&reqwest::Client, &str, u64) -> reqwest::RequestBuilder + Send + Sync;
type ExtractFn<T> = dyn Fn(u64, u16, &[u8]) -> Option<T> + Send + Sync;

struct WorkerOut<T> {
    hist: Histogram<u64>,
    slow: Vec<f64>,
    statuses: BTreeMap<String, u64>,
    error_sample: Option<String>,
    extracted: Vec<T>,
}

/// Where a load goes, and whose CPU its report includes.
pub(crate) struct Endpoints<'a> {
    /// Base URLs; connection `k` talks to `addrs[k % len]`.
    pub(crate) addrs: &'a [String],
    /// Server processes whose CPU is summed.
    pub(crate) server_pids: &'a [u32],
    /// A PostgreSQL postmaster: it and its children are reported as the database's CPU.
    pub(crate) db_pid: Option<u32>,
}

/// Runs the load over `e.addrs` round-robin by connection, so with replicas each gets an
/// equal share of a closed loop (and of an open loop's rate).
async fn run_load<T: Send + 'static>(
    spec: Spec,
    e: &Endpoints<'_>,
    make: Arc<MakeFn>,
    extract: Arc<ExtractFn<T>>,
) -> Result<Outcome<T>> {
    if e.addrs.is_empty() {
        bail!("no server address (--addr)");
    }
    let next = Arc::new(AtomicU64::new(0));
    // Open every connection before the clock starts (GET /healthz on each), so connection
    // set-up is not counted as request latency.
    let mut clients = Vec::new();
    for k in 0..spec.connections {
        // One client per worker: exactly `connections` keep-alive connections.
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()?;
        let base: Arc<str> = e.addrs[k % e.addrs.len()].trim_end_matches('/').into();
        clients.push((client, base));
    }
    let warm: Vec<_> = clients
        .iter()
        .map(|(client, base)| client.get(format!("{base}/healthz")).send())
        .collect();
    for w in warm {
        w.await?.bytes().await?;
    }
    let cpu0 = cpu_seconds(None).unwrap_or(0.0);
    let server0 = cpu_seconds_sum(e.server_pids);
    let db0 = e.db_pid.map(cpu_of_tree);
    let start = Instant::now();
    let mut handles = Vec::new();
    for (client, base) in clients {
        let next = next.clone();
        let make = make.clone();
        let extract = extract.clone();
        handles.push(tokio::spawn(async move {
            let mut out = WorkerOut {
                hist: Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
                    .map_err(|e| anyhow!("histogram: {e}"))?,
                statuses: BTreeMap::new(),
                error_sample: None,
                extracted: Vec::new(),
                slow: Vec::new(),
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if spec.count.is_some_and(|c| i >= c) {
                    break;
                }
                let scheduled = match spec.rate {
                    Some(r) => start + Duration::from_secs_f64(i as f64 / r),
                    None => Instant::now(),
                };
                if spec.duration.is_some_and(|d| scheduled >= start + d) {
                    break;
                }
                if spec.rate.is_some() {
                    tokio::time::sleep_until(scheduled.into()).await;
                }
                let result = make(&client, &base, i).send().await;
                match result {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.bytes().await;
                        let us = scheduled.elapsed().as_micros() as u64;
                        out.hist.saturating_record(us.max(1));
                        if us > SLOW_US && out.slow.len() < 1000 {
                            out.slow.push((scheduled - start).as_secs_f64());
                        }
                        match body {
                            Ok(b) => {
                                if !(200..300).contains(&status) && out.error_sample.is_none() {
                                    out.error_sample = Some(
                                        String::from_utf8_lossy(&b).chars().take(400).collect(),
                                    );
                                }
                                if let Some(t) = extract(i, status, &b) {
                                    out.extracted.push(t);
                                }
                                *out.statuses.entry(status.to_string()).or_default() += 1;
                            }
                            Err(e) => {
                                *out.statuses.entry("body_error".into()).or_default() += 1;
                                out.error_sample.get_or_insert_with(|| e.to_string());
                            }
                        }
                    }
                    Err(e) => {
                        let kind = if e.is_timeout() {
                            "timeout"
                        } else if e.is_connect() {
                            "connect_error"
                        } else {
                            "transport_error"
                        };
                        *out.statuses.entry(kind.into()).or_default() += 1;
                        out.error_sample.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
        .map_err(|e| anyhow!("histogram: {e}"))?;
    let mut statuses = BTreeMap::new();
    let mut error_sample = None;
    let mut extracted = Vec::new();
    let mut slow = Vec::new();
    for h in handles {
        let w = h.await??;
        hist.add(&w.hist).map_err(|e| anyhow!("histogram: {e}"))?;
        for (k, v) in w.statuses {
            *statuses.entry(k).or_default() += v;
        }
        if error_sample.is_none() {
            error_sample = w.error_sample;
        }
        extracted.extend(w.extracted);
        slow.extend(w.slow);
    }
    slow.sort_by(|a, b| a.total_cmp(b));
    let elapsed = start.elapsed();
    Ok(Outcome {
        hist,
        slow,
        statuses,
        error_sample,
        elapsed,
        extracted,
        client_cpu_s: cpu_seconds(None).unwrap_or(0.0) - cpu0,
        server_cpu_s: match (server0, cpu_seconds_sum(e.server_pids)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        },
        db_cpu_s: match (&db0, e.db_pid) {
            (Some(before), Some(root)) => Some(cpu_tree_delta(before, &cpu_of_tree(root))),
            _ => None,
        },
        brokers: e.addrs.len(),
    })
}

fn report(scenario: &str, label: &str, mut v: Value, human: &str) {
    if let Value::Object(m) = &mut v {
        m.insert("scenario".into(), scenario.into());
        m.insert("label".into(), label.into());
        m.insert(
            "at".into(),
            time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
                .into(),
        );
    }
    println!("{v}");
    eprintln!("mayfly-load {scenario} [{label}]: {human}");
}

fn human(o: &Value) -> String {
    let l = &o["latency_ms"];
    format!(
        "{} ok of {} in {}s = {} req/s over {} broker(s); latency ms p50 {} p90 {} p99 {} max {}; statuses {}; cpu client {}% server {}% db {}%",
        o["ok"], o["requests"], o["elapsed_s"], o["rps"], o["brokers"], l["p50"], l["p90"], l["p99"], l["max"],
        o["statuses"], o["client_cpu_pct"], o["server_cpu_pct"], o["db_cpu_pct"]
    )
}

// ---------------------------------------------------------------------------------------
// Scenarios

fn workload_tokens(c: &Common, lifetime_s: i64) -> Result<Arc<Vec<String>>> {
    let pair = load_issuer(&c.dir)?;
    Ok(Arc::new(
        (0..c.workloads.max(1))
            .map(|i| mint(&pair, &workload(i), lifetime_s))
            .collect(),
    ))
}

fn grant_maker(c: &Common, tokens: Arc<Vec<String>>, ttl: String, tag: &str) -> Arc<MakeFn> {
    let targets = c.targets.max(1);
    let tag = tag.to_string();
    Arc::new(move |client: &reqwest::Client, base: &str, i: u64| {
        let w = (i as usize) % tokens.len();
        let body = json!({"target": target(w % targets), "action": "read",
            "purpose": "load test", "task": format!("{tag}-{i}"), "ttl": ttl});
        client
            .post(format!("{base}/v1/grants"))
            .bearer_auth(&tokens[w])
            .json(&body)
    })
}

async fn grants(a: GrantsArgs) -> Result<()> {
    let spec = Spec::from(&a.load);
    let lifetime = (a.load.duration as i64).max(60) + 3600;
    let tokens = workload_tokens(&a.c, lifetime)?;
    let tag = format!("load-{}", std::process::id());
    let make = grant_maker(&a.c, tokens, a.ttl.clone(), &tag);
    let out = run_load::<()>(spec, &a.c.endpoints(), make, Arc::new(|_, _, _| None)).await?;
    let v = out.summary(&spec);
    let mode = if spec.rate.is_some() {
        "grants-open"
    } else {
        "grants"
    };
    report(mode, &a.c.label, v.clone(), &human(&v));
    Ok(())
}

/// A token-exchange request per iteration: the same workloads, targets and scope as
/// [`grant_maker`], form-encoded to the OAuth token endpoint.
fn exchange_maker(c: &Common, tokens: Arc<Vec<String>>, ttl: String, tag: &str) -> Arc<MakeFn> {
    let targets = c.targets.max(1);
    let tag = tag.to_string();
    Arc::new(move |client: &reqwest::Client, base: &str, i: u64| {
        let w = (i as usize) % tokens.len();
        let task = format!("{tag}-{i}");
        let audience = target(w % targets);
        let form: [(&str, &str); 8] = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", tokens[w].as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("audience", &audience),
            ("scope", "read"),
            ("purpose", "load test"),
            ("task", &task),
            ("ttl", ttl.as_str()),
        ];
        client.post(format!("{base}/oauth2/token")).form(&form)
    })
}

async fn exchange(a: GrantsArgs) -> Result<()> {
    let spec = Spec::from(&a.load);
    let lifetime = (a.load.duration as i64).max(60) + 3600;
    let tokens = workload_tokens(&a.c, lifetime)?;
    let tag = format!("exchange-{}", std::process::id());
    let make = exchange_maker(&a.c, tokens, a.ttl.clone(), &tag);
    let out = run_load::<()>(spec, &a.c.endpoints(), make, Arc::new(|_, _, _| None)).await?;
    let v = out.summary(&spec);
    report("token-exchange", &a.c.label, v.clone(), &human(&v));
    Ok(())
}

fn parse_time(v: &Value) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339).ok()
}

/// Operator grants on behalf of `identity`, returning (lease id, expires_at, access token).
fn operator_grant_maker(c: &Common, identity: String, ttl: String, tag: String) -> Arc<MakeFn> {
    let token = c.token.clone();
    let target0 = target(0);
    Arc::new(move |client: &reqwest::Client, base: &str, i: u64| {
        let body = json!({"identity": identity, "target": target0, "action": "read",
            "purpose": "load test", "task": format!("{tag}-{i}"), "ttl": ttl});
        client
            .post(format!("{base}/v1/grants"))
            .bearer_auth(&token)
            .json(&body)
    })
}

struct Issued {
    lease: String,
    expires_at: Option<time::OffsetDateTime>,
    token: Option<String>,
}

fn extract_issued(
    keep_token: impl Fn(u64) -> bool + Send + Sync + 'static,
) -> Arc<ExtractFn<Issued>> {
    Arc::new(move |i, status, body| {
        if status != 201 {
            return None;
        }
        let v: Value = serde_json::from_slice(body).ok()?;
        Some(Issued {
            lease: v["lease"]["id"].as_str()?.to_string(),
            expires_at: parse_time(&v["lease"]["expires_at"]),
            token: keep_token(i)
                .then(|| v["credential"]["access_token"].as_str().map(str::to_string))
                .flatten(),
        })
    })
}

fn percentiles(mut xs: Vec<f64>) -> Value {
    if xs.is_empty() {
        return Value::Null;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let i = ((xs.len() as f64 * p).ceil() as usize).clamp(1, xs.len()) - 1;
        round3(xs[i])
    };
    json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0), "n": xs.len()})
}

async fn expiry(a: ExpiryArgs) -> Result<()> {
    let c = &a.c;
    if (a.ttl_s as f64) <= a.due_seconds {
        bail!("--ttl-s must exceed --due-seconds");
    }
    let http = reqwest::Client::new();
    let identity = format!("exp-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    add_identity(&http, c, &identity).await?;

    // Phase A: issue the short leases at the due rate; they come due ttl_s later at the
    // same rate.
    let count = (a.due_rate * a.due_seconds) as u64;
    let spec_a = Spec {
        connections: a.connections,
        duration: None,
        count: Some(count),
        rate: Some(a.due_rate),
    };
    let issue_started = Instant::now();
    let make = operator_grant_maker(
        c,
        identity.clone(),
        format!("{}s", a.ttl_s),
        identity.clone(),
    );
    let issuing = run_load(spec_a, &c.endpoints(), make, extract_issued(|_| false)).await?;
    let issue_v = issuing.summary(&spec_a);
    eprintln!(
        "mayfly-load expiry: issued short leases: {}",
        human(&issue_v)
    );

    // Phase B: grants at --grant-rate from just before the first lease is due until after
    // the last one is.
    let first_due = issue_started + Duration::from_secs(a.ttl_s);
    tokio::time::sleep_until((first_due - Duration::from_millis(500)).into()).await;
    let spec_b = Spec {
        connections: a.connections,
        duration: Some(Duration::from_secs_f64(a.due_seconds + 1.5)),
        count: None,
        rate: Some(a.grant_rate),
    };
    let tokens = workload_tokens(c, 7200)?;
    let tag = format!("exp-bg-{}", std::process::id());
    let make_b = grant_maker(c, tokens, "5m".into(), &tag);
    let background =
        run_load::<()>(spec_b, &c.endpoints(), make_b, Arc::new(|_, _, _| None)).await?;
    let bg_v = background.summary(&spec_b);
    eprintln!("mayfly-load expiry: grants while due: {}", human(&bg_v));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Read the audit for this identity and match lease.expired events.
    let mut expired: BTreeMap<String, time::OffsetDateTime> = BTreeMap::new();
    let mut after = 0u64;
    loop {
        let r = http
            .get(format!("{}/v1/audit", c.addr()))
            .bearer_auth(&c.token)
            .query(&[
                ("identity", identity.as_str()),
                ("after", &after.to_string()),
                ("limit", "10000"),
            ])
            .send()
            .await?;
        if r.status().as_u16() != 200 {
            bail!("GET /v1/audit: {}", r.status());
        }
        let page: Vec<Value> = r.json().await?;
        let Some(last) = page.last() else { break };
        after = last["seq"]
            .as_u64()
            .ok_or_else(|| anyhow!("audit entry without seq"))?;
        for e in &page {
            if e["kind"] == "lease.expired" {
                if let (Some(id), Some(at)) = (e["lease_id"].as_str(), parse_time(&e["at"])) {
                    expired.insert(id.to_string(), at);
                }
            }
        }
    }
    let mut lags = Vec::new();
    let mut missing = 0u64;
    for l in &issuing.extracted {
        match (expired.get(&l.lease), l.expires_at) {
            (Some(at), Some(exp)) => lags.push((*at - exp).as_seconds_f64() * 1e3),
            _ => missing += 1,
        }
    }
    let lag = percentiles(lags);
    let v = json!({
        "identity": identity,
        "leases_due": issuing.extracted.len(),
        "due_rate_target": a.due_rate,
        "due_rate_achieved": round1(issuing.ok() as f64 / issuing.elapsed.as_secs_f64().max(1e-9)),
        "expired_seen": expired.len(),
        "not_expired": missing,
        "lag_ms": lag,
        "issue": issue_v,
        "grants_during": bg_v,
    });
    let h = format!(
        "{} leases due at {}/s, expiry lag ms p50 {} p99 {} max {} ({} not expired); grants meanwhile {} req/s p99 {} ms",
        v["leases_due"], v["due_rate_achieved"], lag["p50"], lag["p99"], lag["max"], missing,
        bg_v["rps"], bg_v["latency_ms"]["p99"]
    );
    report("expiry", &c.label, v, &h);
    Ok(())
}

async fn kill_switch(a: KillArgs) -> Result<()> {
    let c = &a.c;
    let http = reqwest::Client::new();
    let identity = format!("ks-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    add_identity(&http, c, &identity).await?;
    let spec = Spec {
        connections: a.connections,
        duration: None,
        count: Some(a.leases),
        rate: None,
    };
    let every = (a.leases / a.sample.max(1)).max(1);
    let make = operator_grant_maker(c, identity.clone(), "1h".into(), identity.clone());
    let issuing = run_load(
        spec,
        &c.endpoints(),
        make,
        extract_issued(move |i| i % every == 0),
    )
    .await?;
    let issue_v = issuing.summary(&spec);
    eprintln!("mayfly-load kill-switch: issued: {}", human(&issue_v));

    let t = Instant::now();
    let r = http
        .post(format!("{}/v1/identities/{identity}/disable", c.addr()))
        .bearer_auth(&c.token)
        .send()
        .await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let disable_ms = t.elapsed().as_secs_f64() * 1e3;
    if status != 200 {
        bail!("disable: {status} {body}");
    }

    let r = http
        .get(format!("{}/v1/leases", c.addr()))
        .bearer_auth(&c.token)
        .query(&[
            ("identity", identity.as_str()),
            ("state", "active"),
            ("limit", "1000"),
        ])
        .send()
        .await?;
    let still_active = r.json::<Vec<Value>>().await?.len();
    let mut introspected = 0u64;
    let mut active_tokens = 0u64;
    for tok in issuing.extracted.iter().filter_map(|l| l.token.as_ref()) {
        let v: Value = http
            .post(format!("{}/oauth2/introspect", c.addr()))
            .bearer_auth(&c.token)
            .form(&[("token", tok.as_str())])
            .send()
            .await?
            .json()
            .await?;
        introspected += 1;
        if v["active"] != Value::Bool(false) {
            active_tokens += 1;
        }
    }
    let v = json!({
        "identity": identity,
        "leases_held": issuing.ok(),
        "disable_ms": round3(disable_ms),
        "revoked": body["revoked"],
        "revoked_per_s": round1(issuing.ok() as f64 / (disable_ms / 1e3).max(1e-9)),
        "still_active": still_active,
        "introspected": introspected,
        "introspect_active": active_tokens,
        "issue": issue_v,
    });
    let h = format!(
        "{} leases held; disable took {:.1} ms; {} still active; {} of {} sampled tokens introspect active",
        issuing.ok(), disable_ms, still_active, active_tokens, introspected
    );
    report("kill-switch", &c.label, v, &h);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Floors

/// One unit of the broker's unavoidable crypto per grant: verify the workload's EdDSA JWT
/// (split, decode, parse claims, verify) and sign an EdDSA access token.
fn crypto_op(
    jwt: &str,
    issuer_pub: &UnparsedPublicKey<Vec<u8>>,
    signer: &Ed25519KeyPair,
    i: u64,
) -> Result<usize> {
    let (input, sig) = jwt.rsplit_once('.').ok_or_else(|| anyhow!("jwt"))?;
    let sig = B64.decode(sig)?;
    issuer_pub
        .verify(input.as_bytes(), &sig)
        .map_err(|_| anyhow!("verify"))?;
    let (_, claims) = input.split_once('.').ok_or_else(|| anyhow!("jwt"))?;
    let claims: Value = serde_json::from_slice(&B64.decode(claims)?)?;
    let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"});
    let at = json!({"iss": "http://127.0.0.1:8740", "sub": claims["sub"], "aud": "bench-00",
        "exp": 2_000_000_000u64, "iat": 1_700_000_000u64, "nbf": 1_700_000_000u64,
        "jti": format!("0192f0c2-0000-7000-8000-{i:012x}"), "scope": "read", "client_id": claims["sub"],
        "grant_id": "0192f0c2-0000-7000-8000-000000000000", "task": "load-1", "purpose": "load test"});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(at.to_string())
    );
    let sig = signer.sign(input.as_bytes());
    Ok(input.len() + B64.encode(sig.as_ref()).len())
}

fn floor(a: FloorArgs) -> Result<()> {
    let rng = ring::rand::SystemRandom::new();
    let issuer = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| anyhow!("{e}"))?
            .as_ref(),
    )
    .map_err(|e| anyhow!("{e}"))?;
    let jwt = mint(&issuer, "wl-0000", 3600);
    let public = issuer.public_key().as_ref().to_vec();
    let secs = a.seconds;
    let run = |threads: usize| -> Result<f64> {
        let start = Instant::now();
        let results: Vec<Result<u64>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|_| {
                    let jwt = jwt.clone();
                    let public = public.clone();
                    s.spawn(move || -> Result<u64> {
                        let rng = ring::rand::SystemRandom::new();
                        let signer = Ed25519KeyPair::from_pkcs8(
                            Ed25519KeyPair::generate_pkcs8(&rng)
                                .map_err(|e| anyhow!("{e}"))?
                                .as_ref(),
                        )
                        .map_err(|e| anyhow!("{e}"))?;
                        let pk = UnparsedPublicKey::new(&ED25519, public);
                        let mut n = 0u64;
                        let mut sink = 0usize;
                        while start.elapsed().as_secs_f64() < secs {
                            for _ in 0..64 {
                                sink = sink.wrapping_add(crypto_op(&jwt, &pk, &signer, n)?);
                                n += 1;
                            }
                        }
                        std::hint::black_box(sink);
                        Ok(n)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("thread failed"))))
                .collect()
        });
        let mut total = 0u64;
        for r in results {
            total += r?;
        }
        Ok(total as f64 / start.elapsed().as_secs_f64())
    };
    let one = run(1)?;
    let two = run(2)?;
    let v = json!({"ops_per_s_1core": round1(one), "ops_per_s_2cores": round1(two),
        "op": "Ed25519 verify of a workload JWT (with decode+parse) + Ed25519 sign of an access token"});
    let h = format!("{one:.0} verify+sign/s on 1 core, {two:.0}/s on 2");
    report("floor-crypto", &a.label, v, &h);
    Ok(())
}

fn fsync(a: FsyncArgs) -> Result<()> {
    use std::io::Write;
    let path = a.dir.join("mayfly-load-fsync.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let page = vec![0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("{e}"))?;
    while start.elapsed().as_secs_f64() < a.seconds && n < 1_000_000 {
        let t = Instant::now();
        f.write_all(&page)?;
        f.sync_data()?;
        hist.saturating_record(t.elapsed().as_micros() as u64);
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    let v = json!({"fsyncs_per_s": round1(n as f64 / secs), "p50_ms": round3(hist.value_at_quantile(0.5) as f64 / 1000.0),
        "p99_ms": round3(hist.value_at_quantile(0.99) as f64 / 1000.0), "dir": a.dir.display().to_string()});
    let h = format!("{:.0} 4 KiB append+fdatasync/s", n as f64 / secs);
    report("floor-fsync", "", v, &h);
    Ok(())
}
