//! `mayfly`: runs the broker (`serve`) and drives it over its HTTP API (everything else).
//! Only `serve` and offline maintenance (`audit verify --store`) open the store directly.

mod client;
mod output;
mod serve;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use mayfly_core::duration::Ttl;
use serde_json::{json, Value};

use client::Client;
use output::Format;

#[derive(Parser)]
#[command(
    name = "mayfly",
    version,
    about = "Just-in-time access broker for non-human identities"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a command prints. Each command that prints declares it (not `mayfly` itself), so
/// `serve --help` lists only server options.
#[derive(clap::Args)]
struct Output {
    /// Output format for listings and records.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value = "table",
        env = "MAYFLY_OUTPUT"
    )]
    output: Format,
}

/// How a client command reaches the broker, and prints what it answers.
#[derive(clap::Args)]
struct ClientArgs {
    /// Broker address.
    #[arg(
        long,
        global = true,
        env = "MAYFLY_ADDR",
        default_value = "http://127.0.0.1:8740"
    )]
    addr: String,
    /// Bearer token: an operator token, or a workload's OIDC JWT.
    #[arg(long, global = true, env = "MAYFLY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    output: Output,
}

/// A group of client subcommands; the client options are accepted before or after the
/// subcommand's name.
#[derive(clap::Args)]
struct Group<C: Subcommand> {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    cmd: C,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (zero config: SQLite in the user data dir, 127.0.0.1:8740).
    Serve(Box<mayfly_server::Config>),
    /// Manage non-human identities.
    Identity(Group<IdentityCmd>),
    /// Manage targets (things access is granted to).
    Target(Group<TargetCmd>),
    /// Request access: policy decides now; a credential is issued for the TTL.
    Request(RequestArgs),
    /// List grants.
    Grants {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List leases (issued credentials).
    Leases {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        grant: Option<String>,
        /// active, revoking, revoked, expired, creating
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Extend a lease (never beyond its cap).
    Renew {
        #[command(flatten)]
        client: ClientArgs,
        lease: String,
        #[arg(long)]
        ttl: Option<Ttl>,
    },
    /// Revoke a grant, or everything of a task, identity or owner.
    Revoke(RevokeArgs),
    /// The audit chain.
    Audit(Group<AuditCmd>),
    /// Signing keys.
    Keys(Group<KeysCmd>),
    /// Offline store maintenance (opens the stores directly; stop the broker first).
    #[command(subcommand)]
    Store(StoreCmd),
    /// Cedar policies: validate and test offline, explain a decision on the live broker.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Ask the broker whether a token it issued is still active (RFC 7662).
    Introspect {
        #[command(flatten)]
        client: ClientArgs,
        /// The access token to check.
        #[arg(value_name = "TOKEN")]
        access_token: String,
    },
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand)]
enum IdentityCmd {
    /// Register an identity.
    Add {
        id: String,
        /// service, pipeline, agent or other
        #[arg(long)]
        kind: String,
        /// Accountable person or team.
        #[arg(long)]
        owner: String,
        #[arg(long)]
        purpose: String,
        /// Lifetime of the identity itself.
        #[arg(long, default_value = "90d")]
        expires: Ttl,
        /// key=value (repeatable)
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    List,
    Show {
        id: String,
    },
    /// Kill switch: disable and revoke everything it holds.
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    /// How the broker sees the presented credential.
    Whoami,
}

// Parsed once per process; boxing the large variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum TargetCmd {
    Add {
        name: String,
        #[arg(long, default_value = "token")]
        kind: String,
        /// Allowed action (repeatable).
        #[arg(long = "action", required = true)]
        actions: Vec<String>,
        #[arg(long, default_value = "15m")]
        default_ttl: Ttl,
        #[arg(long, default_value = "1h")]
        max_ttl: Ttl,
        /// Identity, `owner:<team>` or `*` allowed to request (repeatable). Default: nobody.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Token audience (token targets); default the target name.
        #[arg(long)]
        audience: Option<String>,
        /// Provider settings as a JSON object (e.g. the grant statements of a database target).
        #[arg(long, conflicts_with = "settings_file")]
        settings: Option<String>,
        /// Provider settings from a JSON file.
        #[arg(long)]
        settings_file: Option<std::path::PathBuf>,
        /// Read the admin connection URL (with its password) from this environment variable.
        /// Secrets are never taken as flag values: those show up in `ps`.
        #[arg(long, conflicts_with = "admin_url_file")]
        admin_url_env: Option<String>,
        /// Read the admin connection URL from this file.
        #[arg(long)]
        admin_url_file: Option<std::path::PathBuf>,
    },
    List,
    Show {
        name: String,
    },
    /// Drop users on the target that carry Mayfly's prefix but belong to no live lease.
    Reconcile {
        name: String,
    },
    /// Replace the target's admin password with a random one only Mayfly knows.
    RotateRoot {
        name: String,
    },
}

#[derive(clap::Args)]
struct RequestArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Identity to grant to (operators; workloads default to themselves).
    #[arg(long)]
    identity: Option<String>,
    #[arg(long)]
    target: String,
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    purpose: String,
    #[arg(long)]
    task: String,
    #[arg(long)]
    ttl: Option<Ttl>,
    /// key=value for policy (repeatable).
    #[arg(long = "context")]
    context: Vec<String>,
    /// Print only the secret (e.g. the access token), for `TOKEN=$(mayfly request …)`.
    #[arg(long)]
    token_only: bool,
}

#[derive(clap::Args)]
struct RevokeArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Grant id.
    grant: Option<String>,
    #[arg(long, conflicts_with_all = ["grant", "identity", "owner"])]
    task: Option<String>,
    #[arg(long, conflicts_with_all = ["grant", "task", "owner"])]
    identity: Option<String>,
    #[arg(long, conflicts_with_all = ["grant", "task", "identity"])]
    owner: Option<String>,
    /// task_complete, task_failed, timeout, admin
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Walk the chain; exit non-zero at the first edited, deleted, inserted or reordered entry.
    Verify {
        /// Verify a store offline instead of asking the broker (e.g. sqlite:///path/mayfly.db).
        #[arg(long)]
        store: Option<String>,
    },
    /// A credential's whole story, in order.
    List {
        #[arg(long)]
        task: Option<String>,
        #[arg(long)]
        identity: Option<String>,
        #[arg(long)]
        grant: Option<String>,
        /// Only entries after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy every record, and the audit chain entry for entry, into an empty store, then
    /// verify the chain there (e.g. embedded SQLite to PostgreSQL for several replicas).
    Migrate {
        /// Source store URL, e.g. sqlite:///var/lib/mayfly/mayfly.db
        #[arg(long)]
        from: String,
        /// Target store URL (must be empty), e.g. postgres://mayfly@db/mayfly
        #[arg(long)]
        to: String,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Check a policy directory against the schema; errors name file, line and column.
    Validate {
        /// Policy directory.
        dir: std::path::PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Run table-driven policy tests (a cases.toml) against a policy directory.
    Test {
        cases: std::path::PathBuf,
        /// Policy directory [default: the directory holding the cases file].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// UTC offset for business-hours rules, e.g. +01:00.
        #[arg(long, default_value = "+00:00")]
        utc_offset: String,
        #[command(flatten)]
        output: Output,
    },
    /// Ask the broker how it would decide a request, and why; nothing is recorded.
    Explain(RequestArgs),
}

#[derive(Subcommand)]
enum KeysCmd {
    /// New signing key; old ones stay in the JWKS until their tokens expire.
    Rotate,
}

fn main() -> ExitCode {
    // Kept beside the parsed command: `serve` layers its configuration by where each value
    // came from (default, environment or flag), which only the matches record.
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &matches)) {
        Ok(code) => code,
        Err(e) => {
            // One plain line: the chain of causes joined.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                line.push_str(": ");
                line.push_str(&cause.to_string());
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn key_values(field: &str, items: &[String]) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut map = serde_json::Map::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .with_context(|| format!("{field} {item:?}: expected key=value"))?;
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(map)
}

/// Context values that read as JSON scalars (`true`, `3`) are sent typed, so
/// `--context break_glass=true` is a boolean; anything else stays a string.
fn typed(map: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| {
            let typed = match &v {
                Value::String(s) => match serde_json::from_str::<Value>(s) {
                    Ok(scalar @ (Value::Bool(_) | Value::Number(_))) => scalar,
                    _ => v,
                },
                _ => v,
            };
            (k, typed)
        })
        .collect()
}

fn query(pairs: &[(&'static str, Option<String>)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect()
}

const GRANT_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("IDENTITY", "/identity"),
    ("TARGET", "/target"),
    ("ACTION", "/action"),
    ("TASK", "/task"),
    ("STATE", "/state"),
    ("TTL", "/granted_ttl"),
    ("CREATED", "/created_at"),
];
const LEASE_COLUMNS: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("IDENTITY", "/identity"),
    ("TARGET", "/target"),
    ("TASK", "/task"),
    ("STATE", "/state"),
    ("EXPIRES", "/expires_at"),
    ("REASON", "/revocation_reason"),
    ("ERROR", "/last_error"),
];

impl Command {
    /// How this command reaches the broker, for the commands that talk to it.
    fn client_args(&self) -> Option<&ClientArgs> {
        match self {
            Command::Identity(Group { client, .. })
            | Command::Target(Group { client, .. })
            | Command::Request(RequestArgs { client, .. })
            | Command::Grants { client, .. }
            | Command::Leases { client, .. }
            | Command::Renew { client, .. }
            | Command::Revoke(RevokeArgs { client, .. })
            | Command::Audit(Group { client, .. })
            | Command::Keys(Group { client, .. })
            | Command::Policy(PolicyCmd::Explain(RequestArgs { client, .. }))
            | Command::Introspect { client, .. } => Some(client),
            Command::Serve(_)
            | Command::Store(_)
            | Command::Policy(PolicyCmd::Validate { .. } | PolicyCmd::Test { .. })
            | Command::Completions { .. } => None,
        }
    }
}

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    if let Command::Serve(_) = cli.command {
        let args = matches
            .subcommand_matches("serve")
            .context("serve was parsed without its arguments")?;
        return serve::run(args).await.map(|()| ExitCode::SUCCESS);
    }
    if let Command::Policy(cmd @ (PolicyCmd::Validate { .. } | PolicyCmd::Test { .. })) =
        cli.command
    {
        return policy_offline(cmd);
    }
    if let Command::Store(StoreCmd::Migrate { from, to, output }) = &cli.command {
        let out = output.output;
        eprintln!(
            "mayfly: copying {} into {} …",
            redact_url(from),
            redact_url(to)
        );
        let report = mayfly_store::copy_store(from, to)
            .await
            .context("migration failed")?;
        let intact = report
            .verified
            .as_ref()
            .is_some_and(|v| v.first_break.is_none());
        match out {
            Format::Json => println!("{}", serde_json::to_value(&report)?),
            Format::Table => {
                println!(
                    "copied {} identities, {} targets, {} grants, {} leases, {} signing keys, {} audit entries",
                    report.identities, report.targets, report.grants, report.leases, report.signing_keys, report.audit_entries
                );
                println!(
                    "audit chain on the target: {}",
                    if intact { "intact" } else { "BROKEN" }
                );
            }
        }
        return Ok(if intact {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "mayfly", &mut std::io::stdout());
        return Ok(ExitCode::SUCCESS);
    }
    let Some(out) = cli.command.client_args().map(|c| c.output.output) else {
        // Every command without client options was answered above.
        return Ok(ExitCode::SUCCESS);
    };
    if let Command::Audit(Group {
        cmd: AuditCmd::Verify { store: Some(url) },
        ..
    }) = &cli.command
    {
        let store = mayfly_store::open(url, mayfly_store::Durability::Fsync)
            .await
            .context("cannot open store")?;
        let report = store.verify_audit().await.context("verification failed")?;
        return Ok(print_verify(out, &serde_json::to_value(&report)?));
    }
    let client = match cli.command.client_args() {
        Some(c) => Client::new(&c.addr, c.token.clone())?,
        None => return Ok(ExitCode::SUCCESS),
    };
    match cli.command {
        // Answered above, before a client exists.
        Command::Serve(_)
        | Command::Completions { .. }
        | Command::Audit(Group {
            cmd: AuditCmd::Verify { store: Some(_) },
            ..
        })
        | Command::Store(_)
        | Command::Policy(PolicyCmd::Validate { .. } | PolicyCmd::Test { .. }) => {}
        Command::Policy(PolicyCmd::Explain(args)) => {
            let v: Value = client
                .post("/v1/policy/explain", request_body(&args)?)
                .await?;
            match out {
                Format::Json => println!("{v}"),
                Format::Table => {
                    let d = &v["decision"];
                    println!("outcome:       {}", output::cell(d.get("outcome")));
                    if let Some(n) = d.get("approvals") {
                        println!("approvals:     {n}");
                    }
                    println!("granted ttl:   {}", output::cell(v.get("granted_ttl")));
                    println!("determined by: {}", output::cell(d.get("determined_by")));
                    for reason in d["reasons"].as_array().into_iter().flatten() {
                        println!("reason:        {}", output::cell(Some(reason)));
                    }
                }
            }
        }
        Command::Identity(group) => identity(&client, out, group.cmd).await?,
        Command::Target(group) => target(&client, out, group.cmd).await?,
        Command::Request(args) => request(&client, out, args).await?,
        Command::Grants {
            identity,
            task,
            state,
            limit,
            ..
        } => {
            let q = query(&[
                ("identity", identity),
                ("task", task),
                ("state", state),
                ("limit", Some(limit.to_string())),
            ]);
            let items: Vec<Value> = client.get("/v1/grants", &q).await?;
            output::list(out, &items, GRANT_COLUMNS);
        }
        Command::Leases {
            identity,
            task,
            grant,
            state,
            limit,
            ..
        } => {
            let q = query(&[
                ("identity", identity),
                ("task", task),
                ("grant", grant),
                ("state", state),
                ("limit", Some(limit.to_string())),
            ]);
            let items: Vec<Value> = client.get("/v1/leases", &q).await?;
            output::list(out, &items, LEASE_COLUMNS);
        }
        Command::Renew { lease, ttl, .. } => {
            let body = match ttl {
                Some(t) => json!({"ttl": t}),
                None => json!({}),
            };
            let v: Value = client
                .post(&format!("/v1/leases/{lease}/renew"), body)
                .await?;
            output::object(out, &v);
        }
        Command::Revoke(args) => {
            let v: Value = match (&args.grant, &args.task, &args.identity, &args.owner) {
                (Some(g), None, None, None) => {
                    let body = args
                        .reason
                        .as_ref()
                        .map(|r| json!({"reason": r}))
                        .unwrap_or(json!({}));
                    client.post(&format!("/v1/grants/{g}/revoke"), body).await?
                }
                (None, task, identity, owner)
                    if task.is_some() || identity.is_some() || owner.is_some() =>
                {
                    let mut body = json!({"task": task, "identity": identity, "owner": owner});
                    if let Some(r) = &args.reason {
                        body["reason"] = json!(r);
                    }
                    client.post("/v1/revoke", body).await?
                }
                _ => bail!("name a grant id, or one of --task, --identity, --owner"),
            };
            match out {
                Format::Json => println!("{v}"),
                Format::Table => println!(
                    "revoked {} lease(s)",
                    v.get("total").and_then(Value::as_u64).unwrap_or(0)
                ),
            }
        }
        Command::Audit(Group {
            cmd: AuditCmd::Verify { store: None },
            ..
        }) => {
            let v: Value = client.get("/v1/audit/verify", &[]).await?;
            return Ok(print_verify(out, &v));
        }
        Command::Audit(Group {
            cmd:
                AuditCmd::List {
                    task,
                    identity,
                    grant,
                    after,
                    limit,
                },
            ..
        }) => audit_list(&client, out, task, identity, grant, after, limit).await?,
        Command::Keys(Group {
            cmd: KeysCmd::Rotate,
            ..
        }) => {
            let v: Value = client.post("/v1/keys/rotate", json!({})).await?;
            output::object(out, &v);
        }
        Command::Introspect { access_token, .. } => {
            let v: Value = client
                .post_form("/oauth2/introspect", &[("token", access_token.as_str())])
                .await?;
            output::object(out, &v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_verify(out: Format, report: &Value) -> ExitCode {
    let broken = report.get("first_break").is_some_and(|b| !b.is_null());
    match out {
        Format::Json => println!("{report}"),
        Format::Table => {
            let entries = report.get("entries").and_then(Value::as_u64).unwrap_or(0);
            if broken {
                let b = &report["first_break"];
                let seq = b
                    .get("seq")
                    .or_else(|| b.get("head_seq"))
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                // A re-filed entry names the column that no longer matches its body.
                let column = b
                    .get("column")
                    .and_then(Value::as_str)
                    .map(|c| format!(" (column {c})"))
                    .unwrap_or_default();
                println!(
                    "audit chain BROKEN at entry {seq}: {}{column} ({entries} entries read)",
                    b.get("problem").and_then(Value::as_str).unwrap_or("?")
                );
            } else {
                println!(
                    "audit chain intact: {entries} entries, head {}",
                    output::cell(report.get("last_hash"))
                );
            }
        }
    }
    if broken {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

async fn audit_list(
    client: &Client,
    out: Format,
    task: Option<String>,
    identity: Option<String>,
    grant: Option<String>,
    mut after: Option<u64>,
    limit: u32,
) -> anyhow::Result<()> {
    // Page through the chain so long stories stream instead of loading at once.
    let mut printed = 0u32;
    let mut rows = Vec::new();
    while printed < limit {
        let page = (limit - printed).min(1000);
        let q = query(&[
            ("task", task.clone()),
            ("identity", identity.clone()),
            ("grant", grant.clone()),
            ("after", after.map(|a| a.to_string())),
            ("limit", Some(page.to_string())),
        ]);
        let items: Vec<Value> = client.get("/v1/audit", &q).await?;
        let n = items.len() as u32;
        for item in items {
            after = item.get("seq").and_then(Value::as_u64);
            match out {
                Format::Json => println!("{item}"),
                Format::Table => rows.push(vec![
                    output::cell(item.get("seq")),
                    output::cell(item.get("at")),
                    output::cell(item.get("kind")),
                    output::cell(item.get("actor")),
                    output::cell(item.get("identity")),
                    output::cell(item.get("task")),
                    output::cell(item.get("lease_id")),
                    summary(item.get("detail")),
                ]),
            }
        }
        printed += n;
        if n < page {
            break;
        }
    }
    if out == Format::Table {
        let headers = [
            "SEQ", "AT", "KIND", "ACTOR", "IDENTITY", "TASK", "LEASE", "DETAIL",
        ]
        .map(String::from);
        output::print_table(&headers, &rows);
    }
    Ok(())
}

fn summary(detail: Option<&Value>) -> String {
    let Some(Value::Object(map)) = detail else {
        return "-".into();
    };
    for key in ["reason", "code"] {
        if let Some(v) = map.get(key) {
            return format!("{key}={}", output::cell(Some(v)));
        }
    }
    if let Some(outcome) = map.get("decision").and_then(|d| d.get("outcome")) {
        return format!("outcome={}", output::cell(Some(outcome)));
    }
    "-".into()
}

async fn identity(client: &Client, out: Format, cmd: IdentityCmd) -> anyhow::Result<()> {
    const COLUMNS: &[(&str, &str)] = &[
        ("ID", "/id"),
        ("KIND", "/kind"),
        ("OWNER", "/owner"),
        ("ENABLED", "/enabled"),
        ("EXPIRES", "/expires_at"),
        ("PURPOSE", "/purpose"),
    ];
    match cmd {
        IdentityCmd::Add {
            id,
            kind,
            owner,
            purpose,
            expires,
            labels,
        } => {
            let expires_at = (mayfly_core::now() + expires.as_time())
                .format(&time::format_description::well_known::Rfc3339)
                .context("cannot format expiry")?;
            let body = json!({"id": id, "kind": kind, "owner": owner, "purpose": purpose, "expires_at": expires_at, "labels": key_values("label", &labels)?});
            let v: Value = client.post("/v1/identities", body).await?;
            output::object(out, &v);
        }
        IdentityCmd::List => {
            let items: Vec<Value> = client.get("/v1/identities", &[]).await?;
            output::list(out, &items, COLUMNS);
        }
        IdentityCmd::Show { id } => output::object(
            out,
            &client
                .get::<Value>(&format!("/v1/identities/{id}"), &[])
                .await?,
        ),
        IdentityCmd::Disable { id } => {
            let v: Value = client
                .post(&format!("/v1/identities/{id}/disable"), json!({}))
                .await?;
            match out {
                Format::Json => println!("{v}"),
                Format::Table => {
                    let revoked = &v["revoked"];
                    let total = revoked["revoked"].as_u64().unwrap_or(0)
                        + revoked["revoking"].as_u64().unwrap_or(0);
                    println!("identity {id} disabled; {total} lease(s) revoked");
                }
            }
        }
        IdentityCmd::Enable { id } => output::object(
            out,
            &client
                .post::<Value>(&format!("/v1/identities/{id}/enable"), json!({}))
                .await?,
        ),
        IdentityCmd::Whoami => output::object(out, &client.get::<Value>("/v1/whoami", &[]).await?),
    }
    Ok(())
}

async fn target(client: &Client, out: Format, cmd: TargetCmd) -> anyhow::Result<()> {
    match cmd {
        TargetCmd::Add {
            name,
            kind,
            actions,
            default_ttl,
            max_ttl,
            allow,
            audience,
            settings,
            settings_file,
            admin_url_env,
            admin_url_file,
        } => {
            let text = match (settings, settings_file) {
                (Some(s), _) => Some(s),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                (None, None) => None,
            };
            let mut settings = match text {
                Some(t) => match serde_json::from_str::<Value>(&t)
                    .context("settings must be a JSON object")?
                {
                    Value::Object(m) => m,
                    _ => bail!("settings must be a JSON object"),
                },
                None => serde_json::Map::new(),
            };
            if let Some(a) = audience {
                settings.insert("audience".into(), Value::String(a));
            }
            let mut body = json!({"name": name, "kind": kind, "actions": actions, "default_ttl": default_ttl, "max_ttl": max_ttl, "allow": allow, "settings": settings});
            let admin = match (admin_url_env, admin_url_file) {
                (Some(var), _) => Some(
                    std::env::var(&var)
                        .with_context(|| format!("environment variable {var} is not set"))?,
                ),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                (None, None) => None,
            };
            if let Some(a) = admin {
                body["admin"] = json!(a);
            }
            output::object(out, &client.post::<Value>("/v1/targets", body).await?);
        }
        TargetCmd::List => {
            let items: Vec<Value> = client.get("/v1/targets", &[]).await?;
            let columns = [
                ("NAME", "/name"),
                ("KIND", "/kind"),
                ("ACTIONS", "/actions"),
                ("DEFAULT TTL", "/default_ttl"),
                ("MAX TTL", "/max_ttl"),
                ("ALLOW", "/allow"),
            ];
            output::list(out, &items, &columns);
        }
        TargetCmd::Show { name } => output::object(
            out,
            &client
                .get::<Value>(&format!("/v1/targets/{name}"), &[])
                .await?,
        ),
        TargetCmd::Reconcile { name } => output::object(
            out,
            &client
                .post::<Value>(&format!("/v1/targets/{name}/reconcile"), json!({}))
                .await?,
        ),
        TargetCmd::RotateRoot { name } => output::object(
            out,
            &client
                .post::<Value>(&format!("/v1/targets/{name}/rotate-root"), json!({}))
                .await?,
        ),
    }
    Ok(())
}

/// A store URL for messages: the password, if any, replaced.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:[redacted]{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn policy_offline(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Validate { dir, output } => {
            let out = output.output;
            match mayfly_policy::load_dir(&dir, mayfly_policy::LoadOptions::default()) {
                Ok(engine) => {
                    match out {
                        Format::Json => println!(
                            "{}",
                            json!({"valid": true, "policies": engine.policy_count()})
                        ),
                        Format::Table => println!(
                            "{}: {} policies valid",
                            dir.display(),
                            engine.policy_count()
                        ),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    for d in &e.diagnostics {
                        match out {
                            Format::Json => println!(
                                "{}",
                                json!({"file": d.file, "line": d.line, "column": d.column, "policy": d.policy_id, "message": d.message})
                            ),
                            Format::Table => eprintln!("error: {d}"),
                        }
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PolicyCmd::Test {
            cases,
            dir,
            utc_offset,
            output,
        } => {
            let out = output.output;
            let dir = match dir {
                Some(d) => d,
                None => cases
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default(),
            };
            let options = mayfly_policy::LoadOptions {
                utc_offset: mayfly_server::parse_utc_offset(&utc_offset)
                    .map_err(anyhow::Error::msg)?,
                ..Default::default()
            };
            let engine = match mayfly_policy::load_dir(&dir, options) {
                Ok(e) => e,
                Err(e) => {
                    let first = e
                        .diagnostics
                        .first()
                        .map(|d| d.to_string())
                        .unwrap_or_default();
                    bail!("policies in {} do not load: {first}", dir.display());
                }
            };
            let report = mayfly_policy::run_test_file(&cases, &engine);
            if let Some(err) = &report.error {
                bail!("{}: {err}", cases.display());
            }
            for case in &report.cases {
                match out {
                    Format::Json => println!(
                        "{}",
                        json!({"case": case.name, "passed": case.passed, "message": case.message})
                    ),
                    Format::Table => println!(
                        "{} {}: {}",
                        if case.passed { "ok  " } else { "FAIL" },
                        case.name,
                        case.message
                    ),
                }
            }
            if out == Format::Table {
                println!("{} passed, {} failed", report.passed(), report.failed());
            }
            Ok(if report.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        // Answered over the API in `run`.
        PolicyCmd::Explain(_) => Ok(ExitCode::SUCCESS),
    }
}

fn request_body(args: &RequestArgs) -> anyhow::Result<Value> {
    let mut body = json!({
        "target": args.target, "purpose": args.purpose, "task": args.task,
        "context": typed(key_values("context", &args.context)?),
    });
    if let Some(i) = &args.identity {
        body["identity"] = json!(i);
    }
    if let Some(a) = &args.action {
        body["action"] = json!(a);
    }
    if let Some(t) = args.ttl {
        body["ttl"] = json!(t);
    }
    Ok(body)
}

async fn request(client: &Client, out: Format, args: RequestArgs) -> anyhow::Result<()> {
    let v: Value = client.post("/v1/grants", request_body(&args)?).await?;
    if args.token_only {
        let secret = v["credential"]["access_token"]
            .as_str()
            .or_else(|| v["credential"]["password"].as_str());
        match secret {
            Some(s) => println!("{s}"),
            None => bail!(
                "the grant was recorded but no credential was issued (state {})",
                output::cell(v.pointer("/grant/state"))
            ),
        }
        return Ok(());
    }
    match out {
        Format::Json => println!("{v}"),
        Format::Table => {
            let mut summary = serde_json::Map::new();
            summary.insert("grant".into(), v["grant"]["id"].clone());
            summary.insert("state".into(), v["grant"]["state"].clone());
            summary.insert("lease".into(), v["lease"]["id"].clone());
            summary.insert("expires_at".into(), v["lease"]["expires_at"].clone());
            if let Value::Object(c) = &v["credential"] {
                for (k, val) in c {
                    summary.insert(k.clone(), val.clone());
                }
            }
            output::object(out, &Value::Object(summary));
            if std::io::stdout().is_terminal() {
                eprintln!("(the credential is shown once; it is not stored)");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks a command tree (duplicate names, flags shadowing a subcommand's) only
    /// where it is used; this checks every command at once.
    #[test]
    fn the_command_tree_is_consistent() {
        Cli::command().debug_assert();
    }
}
