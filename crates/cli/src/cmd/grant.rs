//! `mayfly request` (ask for access: policy decides now, a credential is issued for the
//! TTL) and `mayfly grants` (list them, or show one). [`RequestArgs`] is also what `policy explain`
//! sends.

use std::io::IsTerminal;

use clap::Subcommand;
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Grant, GrantState, RevocationReason};
use mayfly_server::api::grants::{GrantRequest, GrantResponse, RevokeRequest};
use serde_json::Value;

use super::{key_values, query, uuid, ApiEnum, ClientArgs};
use crate::client::{Answer, Client};
use crate::failure::{usage, Failure};
use crate::output::{self, Column, Format};

#[derive(clap::Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Identity to grant to (operators; workloads default to themselves).
    #[arg(long, add = super::completions::identities())]
    identity: Option<String>,
    /// The target to access (`mayfly target list`).
    #[arg(long, add = super::completions::targets())]
    target: String,
    /// One of the target's actions (needed when it has more than one).
    #[arg(long)]
    action: Option<String>,
    /// Why access is needed; recorded, and seen by policy.
    #[arg(long)]
    purpose: String,
    /// The task the access is for; `mayfly revoke --task` ends it.
    #[arg(long)]
    task: String,
    /// How long the credential should live [default: the target's default TTL].
    #[arg(long)]
    ttl: Option<Ttl>,
    /// key=value for policy (repeatable).
    #[arg(long = "context")]
    context: Vec<String>,
    /// Print only the access token of a token target, for `TOKEN=$(mayfly request …)`.
    #[arg(long, conflicts_with = "env_format")]
    token_only: bool,
    /// Print the credential as shell `export` lines (PGHOST…, MYSQL_HOST…,
    /// MAYFLY_ACCESS_TOKEN), for `eval "$(mayfly request … --env-format)"`.
    #[arg(long)]
    env_format: bool,
    /// If policy requires approval, wait this long for it (a status line on stderr says
    /// who must approve), then collect the credential.
    #[arg(long)]
    wait: Option<Ttl>,
    /// Emergency access where policy allows `context.break_glass`: issued without
    /// approval, at most 1h, audited loudly and reviewed afterwards. The purpose must say
    /// what is on fire (at least 10 characters).
    #[arg(long)]
    break_glass: bool,
}

// `mayfly grants`; its help is the doc comment on `Command::Grants`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct GrantsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    show: Option<GrantsCmd>,
    /// Only this identity's grants (operators; a workload sees its own).
    #[arg(long, add = super::completions::identities())]
    identity: Option<String>,
    /// Only the grants of this task.
    #[arg(long)]
    task: Option<String>,
    /// Only grants in this state.
    #[arg(long, value_parser = ApiEnum::<GrantState>::new())]
    state: Option<GrantState>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Subcommand)]
pub enum GrantsCmd {
    /// One grant, by id, with the decision that made it (and its approvals).
    Show {
        /// The grant's id (`mayfly grants` lists them).
        id: String,
    },
    /// Collect the credential of an approved grant (once; its TTL starts now).
    Collect {
        /// The approved grant's id.
        id: String,
    },
}

const COLUMNS: &[Column<Grant>] = &[
    ("ID", |g| output::field(&g.id)),
    ("IDENTITY", |g| g.identity.clone()),
    ("TARGET", |g| g.target.clone()),
    ("ACTION", |g| g.action.clone()),
    ("TASK", |g| g.task.clone()),
    ("STATE", |g| output::field(&g.state)),
    ("TTL", |g| output::field(&g.granted_ttl)),
    ("CREATED", |g| output::time(g.created_at)),
];

impl RequestArgs {
    /// The request these flags describe.
    pub fn body(&self) -> anyhow::Result<GrantRequest> {
        Ok(GrantRequest {
            identity: self.identity.clone(),
            target: self.target.clone(),
            action: self.action.clone(),
            purpose: self.purpose.clone(),
            task: self.task.clone(),
            ttl: self.ttl,
            context: {
                let mut context: serde_json::Map<String, Value> =
                    key_values("context", &self.context)?
                        .into_iter()
                        .map(|(k, v)| (k, typed(v)))
                        .collect();
                if self.break_glass {
                    context.insert("break_glass".into(), Value::Bool(true));
                }
                context
            },
        })
    }
}

/// Context values that read as JSON scalars (`true`, `3`) are sent typed, so
/// `--context break_glass=true` is a boolean; anything else stays a string.
fn typed(text: String) -> Value {
    match serde_json::from_str::<Value>(&text) {
        Ok(scalar @ (Value::Bool(_) | Value::Number(_))) => scalar,
        _ => Value::String(text),
    }
}

pub async fn request(args: RequestArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    if args.token_only {
        refuse_token_only_unless_token(&client, &args.target).await?;
    }
    let mut answer: Answer<GrantResponse> = client.post("/v1/grants", &args.body()?).await?;
    if let (GrantState::PendingApproval, Some(wait)) = (answer.typed.grant.state, args.wait) {
        answer = wait_and_collect(&client, answer.typed.grant.id, wait, &|line| {
            eprintln!("{line}")
        })
        .await?;
    }
    let GrantResponse {
        grant,
        lease,
        credential,
    } = answer.typed;
    let pending = || {
        Failure::PendingApproval(format!(
            "grant {} waits for approval; no credential yet (`mayfly grants show {}` follows it)",
            grant.id, grant.id
        ))
    };
    if args.token_only || args.env_format {
        let (Some(Value::Object(credential)), Some(lease)) = (credential, lease) else {
            return Err(match grant.state {
                GrantState::PendingApproval => pending().into(),
                _ => anyhow::anyhow!(
                    "the grant was recorded but no credential was issued (state {})",
                    grant.state
                ),
            });
        };
        if args.token_only {
            let token = credential.get("access_token").and_then(Value::as_str);
            match token {
                Some(t) => println!("{t}"),
                None => {
                    // Issued all the same (the target's kind was not visible before):
                    // a credential nobody will use is ended at once.
                    let _ = client
                        .post::<_, Value>(
                            &format!("/v1/grants/{}/revoke", grant.id),
                            &RevokeRequest {
                                reason: Some(RevocationReason::TaskFailed),
                            },
                        )
                        .await;
                    return Err(not_a_token(&args.target, &lease.kind));
                }
            }
        } else {
            for line in env_lines(&lease.kind, &credential)? {
                println!("{line}");
            }
        }
        return Ok(());
    }
    match out {
        Format::Json => println!("{}", answer.raw),
        Format::Table => {
            let mut summary = serde_json::Map::new();
            summary.insert("grant".into(), output::json(&grant.id));
            summary.insert("state".into(), output::json(&grant.state));
            summary.insert(
                "lease".into(),
                lease.as_ref().map_or(Value::Null, |l| output::json(&l.id)),
            );
            summary.insert(
                "expires_at".into(),
                match &lease {
                    Some(l) => Value::String(output::time(l.expires_at)),
                    None => Value::Null,
                },
            );
            if let Some(Value::Object(c)) = credential {
                summary.extend(c);
            }
            output::object(out, &Value::Object(summary));
            if std::io::stdout().is_terminal() && grant.state == GrantState::Issued {
                eprintln!("(the credential is shown once; it is not stored)");
            }
        }
    }
    if grant.state == GrantState::PendingApproval {
        return Err(pending().into());
    }
    Ok(())
}

/// `--token-only` on a database target would print a password without its username: a
/// credential nobody can use. Refused before anything is issued, when the target says
/// its kind (a workload that may not see the target learns the kind from the answer).
async fn refuse_token_only_unless_token(client: &Client, target: &str) -> anyhow::Result<()> {
    let Ok(seen) = client
        .get::<Value>(&format!("/v1/targets/{target}"), &[])
        .await
    else {
        return Ok(());
    };
    match seen.get("kind").and_then(Value::as_str) {
        Some(kind) if kind != mayfly_server::token::KIND => Err(not_a_token(target, kind)),
        _ => Ok(()),
    }
}

fn not_a_token(target: &str, kind: &str) -> anyhow::Error {
    usage(format!(
        "--token-only prints an access token, but {target} is a {kind} target: its credential \
         is a username and a password. Use --env-format (eval \"$(mayfly request … --env-format)\") \
         or --output json"
    ))
}

/// The environment variables a credential of `kind` is given in, with the credential
/// field each holds: named as each kind's own clients read them (libpq's PG*, the mysql
/// client's MYSQL_*), plus DATABASE_URL, which most frameworks read. `None` for a
/// kind without a standard mapping.
pub(crate) fn env_names(kind: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match kind {
        // Not MAYFLY_TOKEN: that is the caller's own credential for the broker, which an
        // `eval` would replace, and the next `mayfly` command would then present the
        // target's token to the broker.
        "token" => &[("MAYFLY_ACCESS_TOKEN", "access_token")],
        "postgres" => &[
            ("PGHOST", "host"),
            ("PGPORT", "port"),
            ("PGUSER", "username"),
            ("PGPASSWORD", "password"),
            ("PGDATABASE", "database"),
            ("DATABASE_URL", "dsn"),
        ],
        "mariadb" => &[
            ("MYSQL_HOST", "host"),
            ("MYSQL_TCP_PORT", "port"),
            // The mysql client reads no user name from the environment on Unix (`USER`
            // is Windows-only, and setting it would change who the command thinks it
            // is): MYSQL_USER is the name applications and images use, for `-u`.
            ("MYSQL_USER", "username"),
            ("MYSQL_PWD", "password"),
            ("MYSQL_DATABASE", "database"),
            ("DATABASE_URL", "dsn"),
        ],
        // redis-cli reads its password from REDISCLI_AUTH (`redis-cli --user
        // "$REDIS_USERNAME"`); clients take REDIS_URL.
        "redis" => &[
            ("REDIS_HOST", "host"),
            ("REDIS_PORT", "port"),
            ("REDIS_USERNAME", "username"),
            ("REDISCLI_AUTH", "password"),
            ("REDIS_URL", "dsn"),
        ],
        "rabbitmq" => &[
            ("RABBITMQ_HOST", "host"),
            ("RABBITMQ_PORT", "port"),
            ("RABBITMQ_USERNAME", "username"),
            ("RABBITMQ_PASSWORD", "password"),
            ("RABBITMQ_VHOST", "vhost"),
            ("AMQP_URL", "dsn"),
        ],
        _ => return None,
    })
}

/// The fields a credential of `kind` has (what `--env NAME=FIELD` may name); `None` for a
/// kind this client does not know, whose fields are seen only once it is issued.
pub(crate) fn credential_fields(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "token" => &[
            "access_token",
            "token_type",
            "expires_in",
            "scope",
            "audience",
        ],
        "postgres" | "mariadb" => &["username", "password", "host", "port", "database", "dsn"],
        "redis" => &["username", "password", "host", "port", "tls", "dsn"],
        "rabbitmq" => &[
            "username", "password", "host", "port", "tls", "vhost", "vhosts", "dsn",
        ],
        _ => return None,
    })
}

/// A credential field as the text an environment variable holds; `None` when absent.
pub(crate) fn field_text(
    credential: &serde_json::Map<String, Value>,
    field: &str,
) -> Option<String> {
    match credential.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// The credential as `export NAME='value'` lines ([`env_names`]).
fn env_lines(
    kind: &str,
    credential: &serde_json::Map<String, Value>,
) -> anyhow::Result<Vec<String>> {
    let Some(names) = env_names(kind) else {
        return Err(usage(format!(
            "--env-format knows token, postgres, mariadb, redis and rabbitmq credentials, not {kind}; use --output json"
        )));
    };
    Ok(names
        .iter()
        .filter_map(|(var, field)| {
            let value = field_text(credential, field)?;
            Some(format!("export {var}={}", shell_quote(&value)))
        })
        .collect())
}

/// `value` as one single-quoted shell word: nothing inside is expanded.
pub(crate) fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Follows a grant waiting for approval, saying who must still approve (through `say`)
/// every few seconds, until it is approved (then collects it), refused or expired, or
/// `wait` runs out.
pub(crate) async fn wait_and_collect(
    client: &Client,
    grant: mayfly_core::Uuid,
    wait: Ttl,
    say: &(dyn Fn(&str) + Sync),
) -> anyhow::Result<Answer<GrantResponse>> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(wait.as_secs());
    loop {
        let seen: Value = client.get(&format!("/v1/grants/{grant}"), &[]).await?;
        let approval = seen.get("approval").cloned().unwrap_or(Value::Null);
        let state = approval.get("state").and_then(Value::as_str).unwrap_or("");
        match state {
            "approved" => {
                return client
                    .post_empty(&format!("/v1/grants/{grant}/collect"))
                    .await
            }
            "pending" => {}
            "" => anyhow::bail!("grant {grant} has no approval request to wait for"),
            other => {
                return Err(Failure::Api {
                    status: 403,
                    message: format!("grant {grant} was not approved: its request is {other}"),
                }
                .into())
            }
        }
        let given = approval
            .get("votes")
            .and_then(Value::as_array)
            .map_or(0, |v| v.len());
        let needed = approval.get("needed").and_then(Value::as_u64).unwrap_or(0);
        let groups: Vec<&str> = approval
            .get("groups")
            .and_then(Value::as_array)
            .map(|g| g.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let who = if groups.is_empty() {
            "any approver".to_string()
        } else {
            format!("a member of {}", groups.join(" or "))
        };
        let left = until.saturating_duration_since(std::time::Instant::now());
        say(&format!(
            "waiting for approval of grant {grant}: {given} of {needed}, from {who} (`mayfly approve {grant} --comment …`); {}s left",
            left.as_secs()
        ));
        if left.is_zero() {
            return Err(Failure::PendingApproval(format!(
                "grant {grant} is still waiting for approval after {wait}; `mayfly grants collect {grant}` once it is approved"
            ))
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_secs(2).min(left)).await;
    }
}

pub async fn grants(args: GrantsArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    match args.show {
        Some(GrantsCmd::Show { id }) => {
            let id = uuid("grant", &id)?;
            let grant: Value = client.get(&format!("/v1/grants/{id}"), &[]).await?;
            output::object(out, &grant);
            return Ok(());
        }
        Some(GrantsCmd::Collect { id }) => {
            let id = uuid("grant", &id)?;
            let issued: Value = client
                .post_empty(&format!("/v1/grants/{id}/collect"))
                .await?;
            output::object(out, &issued);
            return Ok(());
        }
        None => {}
    }
    let q = query(&[
        ("identity", args.identity),
        ("task", args.task),
        ("state", args.state.map(|s| s.as_str().to_string())),
        ("limit", Some(args.limit.to_string())),
    ]);
    let items: Vec<Answer<Grant>> = client.get("/v1/grants", &q).await?;
    output::list(out, &items, COLUMNS);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_are_quoted_shell_exports() {
        let credential = serde_json::json!({
            "username": "mayfly_ci_x", "password": "p'w$(rm -rf /)", "host": "db",
            "port": 5432, "database": null, "dsn": "postgres://…"
        });
        let lines = env_lines("postgres", credential.as_object().unwrap()).unwrap();
        assert_eq!(
            lines,
            [
                "export PGHOST='db'",
                "export PGPORT='5432'",
                "export PGUSER='mayfly_ci_x'",
                r"export PGPASSWORD='p'\''w$(rm -rf /)'",
                "export DATABASE_URL='postgres://…'",
            ]
        );
        let token = serde_json::json!({"access_token": "a.b.c", "token_type": "Bearer"});
        assert_eq!(
            env_lines("token", token.as_object().unwrap()).unwrap(),
            ["export MAYFLY_ACCESS_TOKEN='a.b.c'"]
        );
        let e = env_lines("nats", token.as_object().unwrap()).unwrap_err();
        assert_eq!(crate::failure::exit_code(&e), crate::failure::USAGE);
    }
}
