//! `mayfly approvals`, `approve`, `deny` and `reviews`: what an approver (a person with
//! an ID token from an issuer configured for humans, or an operator) sees and answers.

use clap::Subcommand;
use mayfly_core::model::{ApprovalRecord, ApprovalState};
use mayfly_server::api::approvals::AnswerRequest;
use serde_json::Value;

use super::{query, uuid, ApiEnum, ClientArgs};
use crate::client::Answer;
use crate::output::{self, Column};

// `mayfly approvals`; its help is the doc comment on `Command::Approvals`.
#[derive(clap::Args)]
pub struct ApprovalsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Requests in this state [default: pending ones you may answer].
    #[arg(long, value_parser = ApiEnum::<ApprovalState>::new())]
    state: Option<ApprovalState>,
    /// At most this many, oldest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

// `mayfly approve` / `mayfly deny`.
#[derive(clap::Args)]
pub struct AnswerArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The grant waiting for approval (`mayfly approvals` lists them).
    id: String,
    /// Why (required, at most 4 KiB); audited with the answer.
    #[arg(long)]
    comment: String,
}

// `mayfly reviews`; its help is the doc comment on `Command::Reviews`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReviewsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    cmd: Option<ReviewsCmd>,
    /// Only reviews open for more than 24 hours.
    #[arg(long)]
    overdue: bool,
}

#[derive(Subcommand)]
pub enum ReviewsCmd {
    /// Close the review of a break-glass use, with your findings.
    Close {
        /// The break-glass grant's id (`mayfly reviews` lists them).
        id: String,
        /// What you found (required, at most 4 KiB); audited.
        #[arg(long)]
        comment: String,
    },
}

const COLUMNS: &[Column<ApprovalRecord>] = &[
    ("GRANT", |a| output::field(&a.grant_id)),
    ("STATE", |a| output::field(&a.state)),
    ("IDENTITY", |a| a.identity.clone()),
    ("TARGET", |a| a.target.clone()),
    ("ACTION", |a| a.action.clone()),
    ("TTL", |a| output::field(&a.ttl)),
    ("APPROVALS", |a| {
        format!("{}/{}", a.approvers().len(), a.needed)
    }),
    ("APPROVERS", |a| {
        if a.groups.is_empty() {
            "any".into()
        } else {
            a.groups.join(",")
        }
    }),
    ("REQUESTED BY", |a| a.requested_by.clone()),
    ("EXPIRES", |a| output::time(a.expires_at)),
    ("PURPOSE", |a| a.purpose.clone()),
];

pub async fn list(args: ApprovalsArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let q = query(&[
        ("state", args.state.map(|s| s.as_str().to_string())),
        ("limit", Some(args.limit.to_string())),
    ]);
    let items: Vec<Answer<ApprovalRecord>> = client.get("/v1/approvals", &q).await?;
    output::list(out, &items, COLUMNS);
    Ok(())
}

/// `approve` (`approve` true) or `deny`.
pub async fn answer(args: AnswerArgs, approve: bool) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let id = uuid("grant", &args.id)?;
    let verb = if approve { "approve" } else { "deny" };
    let answered: Value = client
        .post(
            &format!("/v1/grants/{id}/{verb}"),
            &AnswerRequest {
                comment: args.comment,
            },
        )
        .await?;
    output::object(out, &answered);
    Ok(())
}

pub async fn reviews(args: ReviewsArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    match args.cmd {
        None => {
            let q = query(&[("overdue", args.overdue.then(|| "true".to_string()))]);
            let items: Vec<Answer<ApprovalRecord>> = client.get("/v1/reviews", &q).await?;
            output::list(out, &items, COLUMNS);
        }
        Some(ReviewsCmd::Close { id, comment }) => {
            let id = uuid("grant", &id)?;
            let closed: Value = client
                .post(
                    &format!("/v1/reviews/{id}/close"),
                    &AnswerRequest { comment },
                )
                .await?;
            output::object(out, &closed);
        }
    }
    Ok(())
}
