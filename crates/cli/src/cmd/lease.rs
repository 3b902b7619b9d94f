//! `mayfly leases` (issued credentials: list, or show one) and `mayfly renew`.

use clap::Subcommand;
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Lease, LeaseState};
use mayfly_server::api::leases::{RenewRequest, RenewResponse};
use serde_json::Value;

use super::{query, uuid, ApiEnum, ClientArgs};
use crate::client::Answer;
use crate::output::{self, Column, Format};

// `mayfly leases`; its help is the doc comment on `Command::Leases`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LeasesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    show: Option<LeasesCmd>,
    /// Only this identity's leases (operators; a workload sees its own).
    #[arg(long, add = super::completions::identities())]
    identity: Option<String>,
    /// Only the leases of this task.
    #[arg(long)]
    task: Option<String>,
    /// Only the lease of this grant.
    #[arg(long)]
    grant: Option<String>,
    /// Only leases of this target.
    #[arg(long, add = super::completions::targets())]
    target: Option<String>,
    /// Only leases in this state.
    #[arg(long, value_parser = ApiEnum::<LeaseState>::new())]
    state: Option<LeaseState>,
    /// At most this many, newest first.
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

#[derive(Subcommand)]
pub enum LeasesCmd {
    /// One lease, by id.
    Show {
        /// The lease's id (`mayfly leases` lists them).
        id: String,
    },
}

// `mayfly renew`; its help is the doc comment on `Command::Renew`.
#[derive(clap::Args)]
pub struct RenewArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The lease's id (`mayfly leases` lists them).
    lease: String,
    /// New lifetime, counted from now [default: the grant's TTL]; never past the lease's cap.
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

pub async fn leases(args: LeasesArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    if let Some(LeasesCmd::Show { id }) = args.show {
        let id = uuid("lease", &id)?;
        let lease: Value = client.get(&format!("/v1/leases/{id}"), &[]).await?;
        output::object(out, &lease);
        return Ok(());
    }
    let q = query(&[
        ("identity", args.identity),
        ("task", args.task),
        ("grant", args.grant),
        ("state", args.state.map(|s| s.as_str().to_string())),
        ("limit", Some(args.limit.to_string())),
        ("target", args.target),
    ]);
    let items: Vec<Answer<Lease>> = client.get("/v1/leases", &q).await?;
    output::list(out, &items, COLUMNS);
    Ok(())
}

pub async fn renew(args: RenewArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let id = uuid("lease", &args.lease)?;
    let answer: Answer<RenewResponse> = client
        .post(
            &format!("/v1/leases/{id}/renew"),
            &RenewRequest { ttl: args.ttl },
        )
        .await?;
    if out == Format::Json {
        println!("{}", answer.raw);
        return Ok(());
    }
    let RenewResponse {
        lease,
        credential,
        reasons,
    } = answer.typed;
    let headers = ["LEASE", "STATE", "EXPIRES", "MAX EXPIRES"].map(String::from);
    let row = vec![
        output::field(&lease.id),
        output::field(&lease.state),
        output::time(lease.expires_at),
        output::time(lease.max_expires_at),
    ];
    output::print_table(&headers, &[row]);
    for reason in &reasons {
        println!("note: {reason}");
    }
    // A kind that cannot be extended in place (tokens) answers with a replacement.
    if let Some(Value::Object(credential)) = credential {
        println!();
        output::object(out, &Value::Object(credential));
    }
    Ok(())
}
