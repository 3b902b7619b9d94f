//! `mayfly request` (ask for access: policy decides now, a credential is issued for the
//! TTL) and `mayfly grants` (list them). [`RequestArgs`] is also what `policy explain`
//! sends.

use std::io::IsTerminal;

use anyhow::bail;
use mayfly_core::duration::Ttl;
use mayfly_core::model::Grant;
use mayfly_server::api::grants::{GrantRequest, GrantResponse};
use serde_json::Value;

use super::{key_values, query, ClientArgs};
use crate::client::Answer;
use crate::output::{self, Column, Format};

#[derive(clap::Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub client: ClientArgs,
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

// `mayfly grants`; its help is the doc comment on `Command::Grants`.
#[derive(clap::Args)]
pub struct GrantsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[arg(long)]
    identity: Option<String>,
    #[arg(long)]
    task: Option<String>,
    #[arg(long)]
    state: Option<String>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
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
            context: key_values("context", &self.context)?
                .into_iter()
                .map(|(k, v)| (k, typed(v)))
                .collect(),
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
    let answer: Answer<GrantResponse> = client.post("/v1/grants", &args.body()?).await?;
    let GrantResponse {
        grant,
        lease,
        credential,
    } = answer.typed;
    if args.token_only {
        let secret = credential.as_ref().and_then(|c| {
            c.get("access_token")
                .and_then(Value::as_str)
                .or_else(|| c.get("password").and_then(Value::as_str))
        });
        match secret {
            Some(s) => println!("{s}"),
            None => bail!(
                "the grant was recorded but no credential was issued (state {})",
                output::cell(Some(&output::json(&grant.state)))
            ),
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
            if std::io::stdout().is_terminal() {
                eprintln!("(the credential is shown once; it is not stored)");
            }
        }
    }
    Ok(())
}

pub async fn list(args: GrantsArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let q = query(&[
        ("identity", args.identity),
        ("task", args.task),
        ("state", args.state),
        ("limit", Some(args.limit.to_string())),
    ]);
    let items: Vec<Answer<Grant>> = client.get("/v1/grants", &q).await?;
    output::list(out, &items, COLUMNS);
    Ok(())
}
