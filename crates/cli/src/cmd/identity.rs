//! `mayfly identity`: the inventory of non-human identities, and the kill switch.

use clap::Subcommand;
use mayfly_core::duration::Ttl;
use mayfly_core::model::Identity;
use mayfly_server::api::identities::{CreateIdentity, DisableResponse};
use serde_json::Value;

use super::{api_enum, key_values, Group};
use crate::client::Answer;
use crate::output::{self, Column, Format};

#[derive(Subcommand)]
pub enum IdentityCmd {
    /// Register an identity.
    Add {
        /// The identity's name: lowercase letters, digits, '.', '_', '-'.
        id: String,
        /// service, pipeline, agent or other
        #[arg(long)]
        kind: String,
        /// Accountable person or team.
        #[arg(long)]
        owner: String,
        /// What it is for.
        #[arg(long)]
        purpose: String,
        /// Lifetime of the identity itself.
        #[arg(long, default_value = "90d")]
        expires: Ttl,
        /// key=value (repeatable)
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// List identities.
    List,
    /// One identity.
    Show {
        /// The identity's name.
        #[arg(add = super::completions::identities())]
        id: String,
    },
    /// Kill switch: disable and revoke everything it holds.
    Disable {
        /// The identity's name.
        #[arg(add = super::completions::identities())]
        id: String,
    },
    /// Let a disabled identity ask for access again.
    Enable {
        /// The identity's name.
        #[arg(add = super::completions::identities())]
        id: String,
    },
    /// How the broker sees the presented credential.
    Whoami,
}

const COLUMNS: &[Column<Identity>] = &[
    ("ID", |i| i.id.clone()),
    ("KIND", |i| output::field(&i.kind)),
    ("OWNER", |i| i.owner.clone()),
    ("ENABLED", |i| i.enabled.to_string()),
    ("EXPIRES", |i| i.expires_at.map_or("-".into(), output::time)),
    ("PURPOSE", |i| i.purpose.clone()),
];

pub async fn run(group: Group<IdentityCmd>) -> anyhow::Result<()> {
    let (client, out) = group.client.connect()?;
    match group.cmd {
        IdentityCmd::Add {
            id,
            kind,
            owner,
            purpose,
            expires,
            labels,
        } => {
            let body = CreateIdentity {
                id,
                kind: api_enum("--kind", &kind)?,
                owner,
                purpose,
                expires_at: mayfly_core::now() + expires.as_time(),
                labels: key_values("label", &labels)?.into_iter().collect(),
            };
            let v: Value = client.post("/v1/identities", &body).await?;
            output::object(out, &v);
        }
        IdentityCmd::List => {
            let items: Vec<Answer<Identity>> = client.get("/v1/identities", &[]).await?;
            output::list(out, &items, COLUMNS);
        }
        IdentityCmd::Show { id } => output::object(
            out,
            &client
                .get::<Value>(&format!("/v1/identities/{id}"), &[])
                .await?,
        ),
        IdentityCmd::Disable { id } => {
            let answer: Answer<DisableResponse> = client
                .post_empty(&format!("/v1/identities/{id}/disable"))
                .await?;
            match out {
                Format::Json => println!("{}", answer.raw),
                Format::Table => println!(
                    "identity {id} disabled; {} lease(s) revoked",
                    answer.typed.revoked.total()
                ),
            }
        }
        IdentityCmd::Enable { id } => output::object(
            out,
            &client
                .post_empty::<Value>(&format!("/v1/identities/{id}/enable"))
                .await?,
        ),
        IdentityCmd::Whoami => output::object(out, &client.get::<Value>("/v1/whoami", &[]).await?),
    }
    Ok(())
}
