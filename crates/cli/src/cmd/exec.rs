//! `mayfly exec`: one command run as one task. It authenticates with the workload's ambient
//! identity, opens a task, gets a credential for each `--target` inside it (presenting the
//! task token), hands them to the command in its environment only, renews them while the
//! command runs, and ends the task when the command ends: complete on exit 0, failed
//! otherwise, timed out on `--timeout` or a signal. Ending the task revokes every
//! credential in it, so nothing outlives the command; if `mayfly exec` itself dies, the
//! credentials are no longer renewed and die at their (short) TTL, and the task at its
//! deadline.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use mayfly_core::duration::Ttl;
use mayfly_core::model::{GrantState, Lease, Task};
use mayfly_server::api::grants::{GrantRequest, GrantResponse};
use mayfly_server::api::leases::RenewRequest;
use mayfly_server::api::tasks::{CreateTaskRequest, EndTaskRequest, TaskResponse};
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use super::grant::{credential_fields, env_names, field_text, shell_quote};
use crate::client::Client;
use crate::failure::{usage, Failure};

/// The deadline of a task opened without `--deadline` or `--timeout`.
const DEFAULT_DEADLINE: Ttl = Ttl::from_secs(3600);
/// Where a Kubernetes pod is conventionally given a projected service-account token for
/// Mayfly (audience `mayfly`).
const KUBERNETES_TOKEN: &str = "/var/run/secrets/tokens/mayfly";
/// How long `mayfly exec` waits, at its end, for targets to confirm revocation.
const REVOCATION_WAIT: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
#[command(after_help = AMBIENT_HELP)]
pub struct ExecArgs {
    /// Broker address.
    #[arg(long, env = "MAYFLY_ADDR", default_value = "http://127.0.0.1:8740")]
    addr: String,
    /// The workload's credential for the broker (an OIDC JWT or a JWT-SVID). Without it
    /// the ambient identity is discovered (see below).
    #[arg(long, env = "MAYFLY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the workload's identity token (OIDC ID token, Kubernetes projected
    /// service-account token, JWT-SVID). Read again at every renewal, so a rotated token
    /// is used.
    #[arg(long, env = "MAYFLY_IDENTITY_TOKEN_FILE")]
    identity_token_file: Option<PathBuf>,
    /// The workload's X.509-SVID (PEM certificate chain) for mutual TLS with the broker,
    /// with --svid-key; read again at every renewal. The broker's CA is MAYFLY_CA_FILE.
    #[arg(long, env = "MAYFLY_SVID_CERT", requires = "svid_key")]
    svid_cert: Option<PathBuf>,
    /// The X.509-SVID's private key (PEM).
    #[arg(long, env = "MAYFLY_SVID_KEY", requires = "svid_cert")]
    svid_key: Option<PathBuf>,
    /// The identity to run as, for an operator token (a workload runs as itself).
    #[arg(long, add = super::completions::identities())]
    identity: Option<String>,
    /// The audience to ask a CI system's token service for (GitHub Actions).
    #[arg(long, default_value = "mayfly")]
    audience: String,
    /// A target to get a credential for, as NAME or NAME:ACTION; repeat it for several
    /// (all in the one task).
    #[arg(long = "target", required = true, value_name = "NAME[:ACTION]", add = super::completions::targets())]
    targets: Vec<String>,
    /// The action for targets named without one (needed when a target has several).
    #[arg(long)]
    action: Option<String>,
    /// Why the command runs; audited, and seen by policy.
    #[arg(long)]
    purpose: String,
    /// Lifetime of each credential [default: the target's default TTL]. Keep it short:
    /// credentials are renewed at a third of it while the command runs, so those of a
    /// crashed `mayfly exec` die soon.
    #[arg(long)]
    ttl: Option<Ttl>,
    /// The task's deadline from now; nothing in the task outlives it [default: --timeout
    /// plus --grace plus a minute, else 1h; at most 24h].
    #[arg(long)]
    deadline: Option<Ttl>,
    /// Stop the command after this long (SIGTERM, then SIGKILL after --grace); the task
    /// ends timed out.
    #[arg(long)]
    timeout: Option<Ttl>,
    /// How long the command has to exit after SIGTERM before it is killed.
    #[arg(long, default_value = "10s")]
    grace: Ttl,
    /// How long to wait for approval when policy requires one (0s: do not wait).
    #[arg(long, default_value = "0s")]
    wait: Ttl,
    /// The open task (of the same identity) this one is a step of; it ends with it.
    #[arg(long)]
    parent: Option<String>,
    /// Also set NAME from a credential field: NAME=FIELD, or NAME=TARGET.FIELD with
    /// several targets (fields: username, password, host, port, database, dsn,
    /// access_token, …). Repeatable.
    #[arg(long = "env", value_name = "NAME=FIELD")]
    env: Vec<String>,
    /// Also write the variables to this new file (mode 0600, NAME='value' lines), named to
    /// the command in MAYFLY_CREDENTIALS_FILE and deleted when it ends. Renewed access
    /// tokens are written to it.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Say on stderr what is done: task opened, credentials issued and renewed.
    #[arg(long, short)]
    verbose: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

const AMBIENT_HELP: &str = "\
Identity: --token (MAYFLY_TOKEN) if given; else --identity-token-file
(MAYFLY_IDENTITY_TOKEN_FILE); else an X.509-SVID (--svid-cert/--svid-key) for mutual TLS;
else GitHub Actions' OIDC token service
(ACTIONS_ID_TOKEN_REQUEST_URL, asked for --audience); else a Kubernetes projected token
at /var/run/secrets/tokens/mayfly. The SPIFFE Workload API socket is not read yet: have
spiffe-helper write the SVID to files and pass them.

The command gets each credential in its environment only (PGHOST, PGUSER, PGPASSWORD,
… for PostgreSQL; MYSQL_HOST, MYSQL_USER, MYSQL_PWD, … for MariaDB (mysql -u \"$MYSQL_USER\"); MAYFLY_ACCESS_TOKEN for
tokens; DATABASE_URL), plus MAYFLY_TASK (the task id) and MAYFLY_TXN_TOKEN (its task
token). A second target of the same kind gets MAYFLY_<TARGET>_<FIELD> names.
mayfly exec exits with the command's status (128+N when a signal N ended it).";

/// Where the workload's credential for the broker comes from.
enum Ambient {
    Given(String),
    File(PathBuf),
    X509Svid { cert: PathBuf, key: PathBuf },
    GithubActions { url: String, bearer: String },
}

impl Ambient {
    fn discover(args: &ExecArgs) -> anyhow::Result<Ambient> {
        if let Some(t) = &args.token {
            return Ok(Ambient::Given(t.clone()));
        }
        if let Some(f) = &args.identity_token_file {
            return Ok(Ambient::File(f.clone()));
        }
        if let (Some(cert), Some(key)) = (&args.svid_cert, &args.svid_key) {
            return Ok(Ambient::X509Svid {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        if let (Ok(url), Ok(bearer)) = (
            std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"),
            std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
        ) {
            return Ok(Ambient::GithubActions { url, bearer });
        }
        if Path::new(KUBERNETES_TOKEN).is_file() {
            return Ok(Ambient::File(KUBERNETES_TOKEN.into()));
        }
        let spiffe = if std::env::var_os("SPIFFE_ENDPOINT_SOCKET").is_some() {
            " SPIFFE_ENDPOINT_SOCKET is set, but the Workload API is not read yet: have \
             spiffe-helper write the SVID to files and pass --svid-cert/--svid-key or \
             --identity-token-file."
        } else {
            ""
        };
        Err(Failure::Api {
            status: 401,
            message: format!(
                "no workload identity found: set MAYFLY_TOKEN, or --identity-token-file, or run \
                 where GitHub Actions or a Kubernetes projected token ({KUBERNETES_TOKEN}) \
                 provides one.{spiffe}"
            ),
        }
        .into())
    }

    /// A client presenting the identity as it is now: files and token services are read
    /// each time, so a rotated token or SVID is used from the next renewal on.
    async fn client(&self, args: &ExecArgs) -> anyhow::Result<Client> {
        if let Ambient::X509Svid { cert, key } = self {
            let mut pem = read_file(cert, "X.509-SVID").await?;
            pem.push(b'\n');
            pem.extend(read_file(key, "X.509-SVID key").await?);
            let client = Client::with_identity(&args.addr, None, Some(&pem));
            pem.fill(0);
            return client;
        }
        Client::new(&args.addr, Some(self.token(&args.audience).await?))
    }

    async fn token(&self, audience: &str) -> anyhow::Result<String> {
        match self {
            Ambient::Given(t) => Ok(t.clone()),
            Ambient::X509Svid { .. } => anyhow::bail!("an X.509-SVID is presented in TLS"),
            Ambient::File(path) => {
                let text = tokio::fs::read_to_string(path).await.with_context(|| {
                    format!("cannot read the identity token {}", path.display())
                })?;
                let token = text.trim();
                if token.is_empty() {
                    anyhow::bail!("the identity token file {} is empty", path.display());
                }
                Ok(token.to_string())
            }
            Ambient::GithubActions { url, bearer } => {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?;
                let answer: Value = http
                    .get(url)
                    .query(&[("audience", audience)])
                    .bearer_auth(bearer)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .context("cannot get an ID token from GitHub Actions")?
                    .json()
                    .await
                    .context("GitHub Actions answered without an ID token")?;
                answer
                    .get("value")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .context("GitHub Actions answered without an ID token")
            }
        }
    }
}

async fn read_file(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// One `--target`: its name, action, and the kind of credential it issues.
struct Wanted {
    name: String,
    action: Option<String>,
    kind: String,
}

/// One variable of the command's environment: which target's credential, which field.
#[derive(Debug, PartialEq, Eq)]
struct EnvVar {
    name: String,
    target: usize,
    field: String,
}

/// The variables for `wanted` credentials: each kind's standard names for its first
/// target, MAYFLY_<TARGET>_<FIELD> for later ones of the same kind, then the `--env`
/// mappings (which win over a default of the same name). Fields are checked here, before
/// anything is issued, for kinds whose fields are known.
fn plan_env(wanted: &[Wanted], extra: &[String]) -> anyhow::Result<Vec<EnvVar>> {
    let mut vars: Vec<EnvVar> = Vec::new();
    let mut kinds_seen: Vec<&str> = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let first_of_kind = !kinds_seen.contains(&w.kind.as_str());
        kinds_seen.push(&w.kind);
        match (env_names(&w.kind), first_of_kind) {
            (Some(names), true) => vars.extend(names.iter().map(|(var, field)| EnvVar {
                name: (*var).to_string(),
                target: i,
                field: (*field).to_string(),
            })),
            _ => {
                for field in credential_fields(&w.kind).unwrap_or_default() {
                    vars.push(EnvVar {
                        name: prefixed(&w.name, field),
                        target: i,
                        field: (*field).to_string(),
                    });
                }
            }
        }
    }
    for item in extra {
        let Some((name, source)) = item.split_once('=') else {
            return Err(usage(format!("--env {item:?}: expected NAME=FIELD")));
        };
        if name.is_empty()
            || name.starts_with(|c: char| c.is_ascii_digit())
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(usage(format!(
                "--env {item:?}: {name:?} is not a variable name (letters, digits, _)"
            )));
        }
        let (target, field) = match source.split_once('.') {
            Some((t, f)) => match wanted.iter().position(|w| w.name == t) {
                Some(i) => (i, f),
                None => {
                    return Err(usage(format!(
                        "--env {item:?}: {t:?} is not one of the --target names"
                    )))
                }
            },
            None if wanted.len() == 1 => (0, source),
            None => {
                return Err(usage(format!(
                    "--env {item:?}: with several targets, name one: {name}=TARGET.{source}"
                )))
            }
        };
        if let Some(fields) = credential_fields(&wanted[target].kind) {
            if !fields.contains(&field) {
                return Err(usage(format!(
                    "--env {item:?}: a {} credential has no field {field:?}; it has: {}",
                    wanted[target].kind,
                    fields.join(", ")
                )));
            }
        }
        vars.retain(|v| v.name != name);
        vars.push(EnvVar {
            name: name.to_string(),
            target,
            field: field.to_string(),
        });
    }
    Ok(vars)
}

/// `MAYFLY_<TARGET>_<FIELD>`, the target's name upper-cased with `-` and `.` as `_`.
fn prefixed(target: &str, field: &str) -> String {
    let target: String = target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("MAYFLY_{target}_{}", field.to_ascii_uppercase())
}

/// A credential the task holds.
struct Held {
    target: usize,
    lease: Lease,
    credential: serde_json::Map<String, Value>,
    /// When to renew next.
    renew_at: Instant,
    /// The lifetime asked for at each renewal.
    ttl: Ttl,
}

/// What renewing needs: the identity to read again, and the task token to present.
struct Renewal {
    ambient: Ambient,
    task_token: String,
}

/// How the credentials reach the command: its variables, and `--file`.
struct Delivery {
    plan: Vec<EnvVar>,
    wanted: Vec<Wanted>,
    /// The names `--env` asked for: a field they name must be in the credential.
    explicit: Vec<String>,
    /// Variables that are not credentials (the task's id and token).
    fixed: Vec<(String, String)>,
    file: Option<PathBuf>,
}

impl Delivery {
    /// The command's variables from the credentials held now.
    fn vars(&self, held: &[Held]) -> anyhow::Result<Vec<(String, String)>> {
        let mut vars = Vec::new();
        for v in &self.plan {
            let Some(h) = held.iter().find(|h| h.target == v.target) else {
                continue;
            };
            match field_text(&h.credential, &v.field) {
                Some(value) => vars.push((v.name.clone(), value)),
                None if self.explicit.contains(&v.name) => {
                    return Err(usage(format!(
                        "--env {}: the {} credential has no field {:?}",
                        v.name, self.wanted[v.target].name, v.field
                    )))
                }
                // A default name for a field this credential lacks (PGDATABASE without
                // a database) is simply not set.
                None => {}
            }
        }
        // A kind this client knows no fields of: every field, as MAYFLY_<TARGET>_<FIELD>.
        for h in held {
            let w = &self.wanted[h.target];
            if credential_fields(&w.kind).is_none() {
                for field in h.credential.keys() {
                    if let Some(value) = field_text(&h.credential, field) {
                        vars.push((prefixed(&w.name, field), value));
                    }
                }
            }
        }
        vars.extend(self.fixed.iter().cloned());
        Ok(vars)
    }

    /// Writes renewed credentials to `--file`, replacing it whole (a reader never sees
    /// half a file).
    fn rewrite(&self, held: &[Held]) -> anyhow::Result<()> {
        match &self.file {
            Some(path) => write_private(path, &self.vars(held)?, true),
            None => Ok(()),
        }
    }
}

/// How the command came to an end.
enum Ending {
    Exited(std::process::ExitStatus),
    /// `--timeout` ran out, or a signal arrived: the command was stopped.
    Stopped(std::process::ExitStatus, String),
}

pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let Some(program) = args.command.first() else {
        return Err(usage("no command to run; put it after --"));
    };
    if program.is_empty() {
        return Err(usage("the command is empty; put it after --"));
    }
    let wanted_names = args
        .targets
        .iter()
        .map(|t| match t.split_once(':') {
            Some((name, action)) => (name.to_string(), Some(action.to_string())),
            None => (t.clone(), args.action.clone()),
        })
        .collect::<Vec<_>>();
    if let Some(file) = &args.file {
        if file.exists() {
            return Err(usage(format!(
                "--file {}: already exists; name a new file (it is deleted at the end)",
                file.display()
            )));
        }
    }
    let deadline = match (args.deadline, args.timeout) {
        (Some(d), _) => d,
        (None, Some(t)) => Ttl::from_secs(t.as_secs() + args.grace.as_secs() + 60),
        (None, None) => DEFAULT_DEADLINE,
    };
    let ambient = Ambient::discover(&args)?;
    let mut client = ambient.client(&args).await?;

    // What each target issues, before anything is issued: an unknown target or a wrong
    // --env is an error with nothing to undo.
    let mut wanted = Vec::new();
    for (name, action) in wanted_names {
        let seen: Value = client
            .get(&format!("/v1/targets/{name}"), &[])
            .await
            .with_context(|| format!("--target {name}"))?;
        let kind = seen
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        wanted.push(Wanted { name, action, kind });
    }
    let plan = plan_env(&wanted, &args.env)?;

    let parent = match &args.parent {
        Some(p) => Some(super::uuid("parent task", p)?),
        None => None,
    };
    let opened: TaskResponse = client
        .post(
            "/v1/tasks",
            &CreateTaskRequest {
                identity: args.identity.clone(),
                purpose: args.purpose.clone(),
                deadline,
                parent,
            },
        )
        .await
        .context("cannot open the task")?;
    let task = opened.task;
    let task_token = opened
        .task_token
        .context("the broker opened the task without a task token")?;
    client = client.with_task_token(task_token.clone());
    let renewal = Renewal {
        ambient,
        task_token: task_token.clone(),
    };
    say(
        args.verbose,
        &format!("task {} opened (deadline {})", task.id, task.deadline),
    );

    // From here on a failure ends the task, which revokes whatever it got so far.
    let held = match issue_all(&client, &args, &task, &wanted).await {
        Ok(held) => held,
        Err(e) => {
            end_task(&client, &task, false, None, false).await;
            return Err(e);
        }
    };
    let delivery = Delivery {
        plan,
        wanted,
        explicit: args
            .env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(n, _)| n.to_string()))
            .collect(),
        fixed: vec![
            ("MAYFLY_TASK".into(), task.id.to_string()),
            ("MAYFLY_TXN_TOKEN".into(), task_token),
        ],
        file: args.file.clone(),
    };
    let mut vars = match delivery.vars(&held) {
        Ok(vars) => vars,
        Err(e) => {
            end_task(&client, &task, false, None, false).await;
            return Err(e);
        }
    };
    if let Some(path) = &delivery.file {
        if let Err(e) = write_private(path, &vars, false) {
            end_task(&client, &task, false, None, false).await;
            return Err(e);
        }
        vars.push(("MAYFLY_CREDENTIALS_FILE".into(), path.display().to_string()));
    }
    let file = delivery.file.as_deref();

    let mut command = tokio::process::Command::new(program);
    command
        .args(&args.command[1..])
        .envs(vars.iter().map(|(k, v)| (k, v)));
    let child = command.spawn();
    drop(vars);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            remove(file);
            end_task(&client, &task, false, Some(127), false).await;
            eprintln!("error: cannot run {}: {e}", program.to_string_lossy());
            return Ok(ExitCode::from(
                if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                },
            ));
        }
    };

    let ending = supervise(&mut child, &mut client, &renewal, &args, held, &delivery).await;
    remove(file);
    let (status, timed_out) = match &ending {
        Ok(Ending::Exited(s)) => (*s, false),
        Ok(Ending::Stopped(s, why)) => {
            say(true, &format!("{why}; the task ends timed out"));
            (*s, true)
        }
        Err(e) => {
            // The command may still run; it is not left without its wrapper's end.
            let _ = child.start_kill();
            let _ = child.wait().await;
            end_task(&client, &task, false, None, false).await;
            return Err(anyhow::anyhow!("{e:#}"));
        }
    };
    let code = exit_code(status);
    end_task(
        &client,
        &task,
        code == 0 && !timed_out,
        Some(i32::from(code)),
        timed_out,
    )
    .await;
    Ok(ExitCode::from(code))
}

/// Gets a credential for each wanted target in the task, waiting for approvals up to
/// `--wait`.
async fn issue_all(
    client: &Client,
    args: &ExecArgs,
    task: &Task,
    wanted: &[Wanted],
) -> anyhow::Result<Vec<Held>> {
    let mut held = Vec::new();
    for (i, w) in wanted.iter().enumerate() {
        let request = GrantRequest {
            identity: args.identity.clone(),
            target: w.name.clone(),
            action: w.action.clone(),
            purpose: args.purpose.clone(),
            task: task.id.to_string(),
            ttl: args.ttl,
            context: Default::default(),
        };
        let answer: GrantResponse = client
            .post("/v1/grants", &request)
            .await
            .with_context(|| format!("--target {}", w.name))?;
        let (lease, credential) = match (answer.lease, answer.credential) {
            (Some(lease), Some(Value::Object(c))) => (lease, c),
            _ if answer.grant.state == GrantState::PendingApproval => {
                wait_for_approval(client, args, &w.name, answer.grant.id).await?
            }
            _ => anyhow::bail!(
                "--target {}: no credential was issued (grant {} is {})",
                w.name,
                answer.grant.id,
                answer.grant.state
            ),
        };
        let ttl = Ttl::from_secs(
            u64::try_from((lease.expires_at - lease.issued_at).whole_seconds())
                .unwrap_or(0)
                .max(1),
        );
        say(
            args.verbose,
            &format!("{}: lease {} until {}", w.name, lease.id, lease.expires_at),
        );
        held.push(Held {
            target: i,
            renew_at: Instant::now() + Duration::from_secs(ttl.as_secs()) / 3,
            ttl,
            lease,
            credential,
        });
    }
    Ok(held)
}

/// Waits for a grant's approval (up to `--wait`, saying who must approve), then
/// collects its credential.
async fn wait_for_approval(
    client: &Client,
    args: &ExecArgs,
    target: &str,
    grant: mayfly_core::Uuid,
) -> anyhow::Result<(Lease, serde_json::Map<String, Value>)> {
    if args.wait.as_secs() == 0 {
        return Err(Failure::PendingApproval(format!(
            "--target {target}: grant {grant} waits for approval; the task is ended (run again \
             with --wait to wait for the approvers)"
        ))
        .into());
    }
    let collected = super::grant::wait_and_collect(client, grant, args.wait, &|line| {
        eprintln!("mayfly exec: {line}")
    })
    .await
    .with_context(|| format!("--target {target}"))?;
    match (collected.typed.lease, collected.typed.credential) {
        (Some(lease), Some(Value::Object(credential))) => Ok((lease, credential)),
        _ => anyhow::bail!("--target {target}: grant {grant} was collected without a credential"),
    }
}

/// Runs the command to its end: renews the credentials on time, stops the command at
/// `--timeout`, and passes SIGINT, SIGTERM and SIGHUP on to it.
async fn supervise(
    child: &mut tokio::process::Child,
    client: &mut Client,
    renewal: &Renewal,
    args: &ExecArgs,
    mut held: Vec<Held>,
    delivery: &Delivery,
) -> anyhow::Result<Ending> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let timeout_at = args
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(t.as_secs()));
    // Access tokens cannot be swapped in a running command's environment: renewing one
    // is useful only when --file delivers the replacement.
    let mut renewing: Vec<usize> = (0..held.len())
        .filter(|&i| held[i].credential.get("access_token").is_none() || delivery.file.is_some())
        .collect();
    loop {
        let next_renewal = renewing.iter().map(|&i| held[i].renew_at).min();
        let stop = tokio::select! {
            status = child.wait() => return Ok(Ending::Exited(status?)),
            _ = sleep_until(timeout_at) => {
                let t = args.timeout.map(|t| t.to_string()).unwrap_or_default();
                (rustix::process::Signal::TERM, format!("the command ran past --timeout {t}"))
            }
            _ = terminate.recv() => (rustix::process::Signal::TERM, "SIGTERM received".to_string()),
            _ = interrupt.recv() => (rustix::process::Signal::INT, "SIGINT received".to_string()),
            _ = hangup.recv() => (rustix::process::Signal::HUP, "SIGHUP received".to_string()),
            _ = sleep_until(next_renewal) => {
                renew_due(client, renewal, args, &mut held, &mut renewing).await;
                if let Err(e) = delivery.rewrite(&held) {
                    eprintln!("mayfly exec: {e:#}");
                }
                continue;
            }
        };
        let (sig, why) = stop;
        forward(child, sig);
        let grace = Duration::from_secs(args.grace.as_secs());
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                child.start_kill()?;
                child.wait().await?
            }
        };
        return Ok(Ending::Stopped(status, why));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn forward(child: &tokio::process::Child, sig: rustix::process::Signal) {
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        // The child may have exited a moment ago: nothing to do then.
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Renews each credential that is due. A failed renewal is said once on stderr and tried
/// again at the next third of the TTL; the command keeps running (it may finish in time).
async fn renew_due(
    client: &mut Client,
    renewal: &Renewal,
    args: &ExecArgs,
    held: &mut [Held],
    renewing: &mut Vec<usize>,
) {
    match renewal.ambient.client(args).await {
        Ok(fresh) => *client = fresh.with_task_token(renewal.task_token.clone()),
        Err(e) => eprintln!("mayfly exec: {e:#}; renewing with the identity read before"),
    }
    let now = Instant::now();
    let mut ended = Vec::new();
    for &i in renewing.iter() {
        let h = &mut held[i];
        if h.renew_at > now {
            continue;
        }
        let path = format!("/v1/leases/{}/renew", h.lease.id);
        let body = RenewRequest { ttl: Some(h.ttl) };
        match client.post::<_, Value>(&path, &body).await {
            Ok(renewed) => {
                if let Some(Ok(lease)) = renewed
                    .get("lease")
                    .cloned()
                    .map(serde_json::from_value::<Lease>)
                {
                    h.lease = lease;
                }
                if let Some(Value::Object(c)) = renewed.get("credential") {
                    h.credential = c.clone();
                }
                say(
                    args.verbose,
                    &format!("lease {} renewed until {}", h.lease.id, h.lease.expires_at),
                );
                h.renew_at = now + Duration::from_secs(h.ttl.as_secs()) / 3;
            }
            Err(e) => {
                let status = e.downcast_ref::<Failure>().map(Failure::code);
                eprintln!(
                    "mayfly exec: cannot renew lease {}: {}",
                    h.lease.id,
                    crate::failure::one_line(&e)
                );
                if matches!(
                    status,
                    Some(crate::failure::CONFLICT | crate::failure::NOT_FOUND)
                ) {
                    // Revoked, or at its cap: it will not renew again.
                    ended.push(i);
                } else {
                    h.renew_at = now + Duration::from_secs(h.ttl.as_secs().max(3)) / 3;
                }
            }
        }
    }
    renewing.retain(|i| !ended.contains(i));
}

/// Ends the task: complete, failed or timed out, with the command's exit status. A
/// failure to reach the broker is said; the credentials then die at their TTL and the
/// task at its deadline.
async fn end_task(
    client: &Client,
    task: &Task,
    complete: bool,
    exit_status: Option<i32>,
    timed_out: bool,
) {
    let (verb, body) = if complete {
        (
            "complete",
            EndTaskRequest {
                exit_status,
                timed_out: false,
            },
        )
    } else {
        (
            "fail",
            EndTaskRequest {
                exit_status,
                timed_out,
            },
        )
    };
    let path = format!("/v1/tasks/{}/{verb}", task.id);
    match client.post::<_, Value>(&path, &body).await {
        Ok(ended) if ended.pointer("/revoked/revoking").and_then(Value::as_u64) > Some(0) => {
            confirm_revoked(client, task).await;
        }
        Ok(_) => {}
        Err(e) => eprintln!(
            "mayfly exec: could not end task {} ({}); its credentials end at their TTL, the task at {}",
            task.id,
            crate::failure::one_line(&e),
            task.deadline
        ),
    }
}

/// Waits (a bounded while) until the targets have confirmed every credential gone, so that
/// when `mayfly exec` returns, the credentials no longer work. A target that cannot be
/// reached keeps its lease `revoking`; the broker retries it until it is gone.
async fn confirm_revoked(client: &Client, task: &Task) {
    let until = Instant::now() + REVOCATION_WAIT;
    loop {
        let pending: Vec<String> = match client
            .get::<TaskResponse>(&format!("/v1/tasks/{}", task.id), &[])
            .await
        {
            Ok(shown) => shown
                .leases
                .iter()
                .filter(|l| l.state == mayfly_core::model::LeaseState::Revoking)
                .map(|l| format!("{} on {}", l.id, l.target))
                .collect(),
            Err(_) => return,
        };
        if pending.is_empty() {
            return;
        }
        if Instant::now() >= until {
            eprintln!(
                "mayfly exec: still revoking {} (target unreachable?); the broker retries until it is gone",
                pending.join(", ")
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status `mayfly exec` exits with: the command's, or 128+N when signal N ended it
/// (as shells report it).
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + (sig & 0x7f)).unwrap_or(1),
        (None, None) => 1,
    }
}

/// Writes `vars` as `NAME='value'` lines to a new file only its owner can read; with
/// `replace`, to a new file beside it that then takes its place.
fn write_private(path: &Path, vars: &[(String, String)], replace: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut staged = path.as_os_str().to_owned();
    staged.push(".new");
    let target = if replace { Path::new(&staged) } else { path };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .with_context(|| format!("--file {}: cannot create it", target.display()))?;
    let mut text = String::new();
    for (k, v) in vars {
        text.push_str(&format!("{k}={}\n", shell_quote(v)));
    }
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            if replace {
                std::fs::rename(target, path)
            } else {
                Ok(())
            }
        })
        .with_context(|| format!("--file {}: cannot write it", path.display()))
}

fn remove(file: Option<&Path>) {
    if let Some(path) = file {
        if let Err(e) = std::fs::remove_file(path) {
            eprintln!("mayfly exec: cannot delete {}: {e}", path.display());
        }
    }
}

fn say(verbose: bool, message: &str) {
    if verbose {
        eprintln!("mayfly exec: {message}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn wanted(items: &[(&str, &str)]) -> Vec<Wanted> {
        items
            .iter()
            .map(|(name, kind)| Wanted {
                name: (*name).into(),
                action: None,
                kind: (*kind).into(),
            })
            .collect()
    }

    fn names(vars: &[EnvVar]) -> Vec<&str> {
        vars.iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn standard_names_go_to_the_first_target_of_each_kind() {
        let w = wanted(&[
            ("pg-main", "postgres"),
            ("pg-report", "postgres"),
            ("api", "token"),
        ]);
        let vars = plan_env(&w, &[]).unwrap();
        let n = names(&vars);
        assert!(n.contains(&"PGPASSWORD") && n.contains(&"MAYFLY_ACCESS_TOKEN"));
        assert!(n.contains(&"MAYFLY_PG_REPORT_PASSWORD"), "{n:?}");
        let pg = vars.iter().find(|v| v.name == "PGPASSWORD").unwrap();
        assert_eq!((pg.target, pg.field.as_str()), (0, "password"));
    }

    #[test]
    fn env_mappings_are_checked_before_anything_is_issued() {
        let one = wanted(&[("pg-main", "postgres")]);
        let vars = plan_env(&one, &["DB_PASS=password".into(), "PGUSER=dsn".into()]).unwrap();
        assert!(vars
            .iter()
            .any(|v| v.name == "DB_PASS" && v.field == "password"));
        let pguser: Vec<_> = vars.iter().filter(|v| v.name == "PGUSER").collect();
        assert_eq!(
            pguser.len(),
            1,
            "a mapping replaces the default of its name"
        );
        assert_eq!(pguser[0].field, "dsn");

        for (bad, says) in [
            ("DB_PASS", "expected NAME=FIELD"),
            ("DB_PASS=passwd", "has no field \"passwd\""),
            ("1X=password", "not a variable name"),
            ("A-B=password", "not a variable name"),
            ("X=other.password", "not one of the --target names"),
        ] {
            let e = plan_env(&one, &[bad.into()]).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
            assert_eq!(crate::failure::exit_code(&e), crate::failure::USAGE);
        }
        let two = wanted(&[("pg-main", "postgres"), ("db2", "mariadb")]);
        let e = plan_env(&two, &["P=password".into()]).unwrap_err();
        assert!(e.to_string().contains("name one"), "{e}");
        let vars = plan_env(&two, &["P=db2.password".into()]).unwrap();
        assert!(vars.iter().any(|v| v.name == "P" && v.target == 1));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
