//! `mayfly revoke`: one grant or lease, or everything of a task, identity, owner, target or
//! target-name prefix.

use mayfly_core::model::RevocationReason;
use mayfly_core::Uuid;
use mayfly_server::api::grants::{BulkRevokeRequest, RevokeRequest, RevokeResponse};
use serde_json::json;

use super::{api_enum, uuid, ClientArgs};
use crate::client::{Answer, Client};
use crate::failure::{is_not_found, Failure};
use crate::output::Format;

// `mayfly revoke`; its help is the doc comment on `Command::Revoke`.
#[derive(clap::Args)]
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .args(["id", "task", "identity", "owner", "target", "prefix"])
))]
pub struct RevokeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// A grant id or a lease id (as `mayfly grants` and `mayfly leases` list them).
    #[arg(value_name = "ID")]
    id: Option<String>,
    /// Every lease held for this task (a workload ends only its own leases in it).
    #[arg(long)]
    task: Option<String>,
    /// Every lease this identity holds (operators).
    #[arg(long, add = super::completions::identities())]
    identity: Option<String>,
    /// Every lease of the identities this person or team owns now (operators).
    #[arg(long)]
    owner: Option<String>,
    /// Every lease of this target (operators).
    #[arg(long, add = super::completions::targets())]
    target: Option<String>,
    /// Every lease of the targets whose names start with this text, like Vault's
    /// `lease revoke -prefix` (operators).
    #[arg(long)]
    prefix: Option<String>,
    /// Why, for the audit chain [default: task_complete for workloads, admin for operators].
    // The reasons a caller may give; the broker sets `ttl` and `identity_disabled` itself.
    #[arg(long, value_parser = ["task_complete", "task_failed", "timeout", "admin"])]
    reason: Option<String>,
}

pub async fn run(args: RevokeArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let reason: Option<RevocationReason> = args
        .reason
        .as_deref()
        .map(|r| api_enum("--reason", r))
        .transpose()?;
    let (selected, answer) = match args.id {
        Some(id) => revoke_id(&client, uuid("grant or lease", &id)?, reason).await?,
        None => {
            let body = BulkRevokeRequest {
                task: args.task,
                identity: args.identity,
                owner: args.owner,
                target: args.target,
                prefix: args.prefix,
                reason,
            };
            let selected = selected(&body);
            (selected, client.post("/v1/revoke", &body).await?)
        }
    };
    let outcome = answer.typed;
    match out {
        // Flat, for scripts: how many leases ended, how many of them the target has still
        // to confirm, and what was selected.
        Format::Json => {
            let mut flat = json!({
                "revoked": outcome.total,
                "revoking": outcome.revoked.revoking,
            });
            flat[selected.0] = json!(selected.1);
            println!("{flat}");
        }
        Format::Table => {
            let pending = match outcome.revoked.revoking {
                0 => String::new(),
                n => format!("; {n} still being removed from the target"),
            };
            println!("revoked {} lease(s){pending}", outcome.total);
        }
    }
    Ok(())
}

/// What a bulk request selects, as `(field, value)`: for the printed answer.
fn selected(body: &BulkRevokeRequest) -> (&'static str, String) {
    let fields = [
        ("task", &body.task),
        ("identity", &body.identity),
        ("owner", &body.owner),
        ("target", &body.target),
        ("prefix", &body.prefix),
    ];
    fields
        .into_iter()
        .find_map(|(name, value)| value.clone().map(|v| (name, v)))
        .unwrap_or(("task", String::new()))
}

/// Grants and leases both have ids that look alike; the broker knows which this is. A
/// grant is tried first (it has at most one lease), then a lease.
async fn revoke_id(
    client: &Client,
    id: Uuid,
    reason: Option<RevocationReason>,
) -> anyhow::Result<((&'static str, String), Answer<RevokeResponse>)> {
    let body = RevokeRequest { reason };
    match client.post(&format!("/v1/grants/{id}/revoke"), &body).await {
        Ok(answer) => return Ok((("grant", id.to_string()), answer)),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(e),
    }
    match client.post(&format!("/v1/leases/{id}/revoke"), &body).await {
        Ok(answer) => Ok((("lease", id.to_string()), answer)),
        Err(e) if is_not_found(&e) => Err(Failure::Api {
            status: 404,
            message: format!("no grant or lease {id} (see `mayfly grants` and `mayfly leases`)"),
        }
        .into()),
        Err(e) => Err(e),
    }
}
