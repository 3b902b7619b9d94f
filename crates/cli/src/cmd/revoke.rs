//! `mayfly revoke`: one grant, or everything of a task, identity or owner.

use anyhow::bail;
use mayfly_server::api::grants::{BulkRevokeRequest, RevokeRequest, RevokeResponse};

use super::{api_enum, ClientArgs};
use crate::client::Answer;
use crate::output::Format;

#[derive(clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
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

pub async fn run(args: RevokeArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let reason = args
        .reason
        .as_deref()
        .map(|r| api_enum("--reason", r))
        .transpose()?;
    let answer: Answer<RevokeResponse> = match (args.grant, args.task, args.identity, args.owner) {
        (Some(g), None, None, None) => {
            client
                .post(&format!("/v1/grants/{g}/revoke"), &RevokeRequest { reason })
                .await?
        }
        (None, task, identity, owner)
            if task.is_some() || identity.is_some() || owner.is_some() =>
        {
            let body = BulkRevokeRequest {
                task,
                identity,
                owner,
                reason,
            };
            client.post("/v1/revoke", &body).await?
        }
        _ => bail!("name a grant id, or one of --task, --identity, --owner"),
    };
    match out {
        Format::Json => println!("{}", answer.raw),
        Format::Table => println!("revoked {} lease(s)", answer.typed.total),
    }
    Ok(())
}
