//! `mayfly leases` (issued credentials) and `mayfly renew`.

use mayfly_core::duration::Ttl;
use mayfly_core::model::Lease;
use mayfly_server::api::leases::RenewRequest;
use serde_json::Value;

use super::{query, ClientArgs};
use crate::client::Answer;
use crate::output::{self, Column};

// `mayfly leases`; its help is the doc comment on `Command::Leases`.
#[derive(clap::Args)]
pub struct LeasesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
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
}

// `mayfly renew`; its help is the doc comment on `Command::Renew`.
#[derive(clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    lease: String,
    #[arg(long)]
    ttl: Option<Ttl>,
}

const COLUMNS: &[Column<Lease>] = &[
    ("ID", |l| output::field(&l.id)),
    ("IDENTITY", |l| l.identity.clone()),
    ("TARGET", |l| l.target.clone()),
    ("TASK", |l| l.task.clone()),
    ("STATE", |l| output::field(&l.state)),
    ("EXPIRES", |l| output::time(l.expires_at)),
    ("REASON", |l| output::field(&l.revocation_reason)),
    ("ERROR", |l| output::field(&l.last_error)),
];

pub async fn list(args: LeasesArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let q = query(&[
        ("identity", args.identity),
        ("task", args.task),
        ("grant", args.grant),
        ("state", args.state),
        ("limit", Some(args.limit.to_string())),
    ]);
    let items: Vec<Answer<Lease>> = client.get("/v1/leases", &q).await?;
    output::list(out, &items, COLUMNS);
    Ok(())
}

pub async fn renew(args: RenewArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let v: Value = client
        .post(
            &format!("/v1/leases/{}/renew", args.lease),
            &RenewRequest { ttl: args.ttl },
        )
        .await?;
    output::object(out, &v);
    Ok(())
}
