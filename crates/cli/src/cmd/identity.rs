//! `mayfly identity`: the inventory of non-human identities, and the kill switch.

use clap::Subcommand;
use mayfly_core::duration::Ttl;
use mayfly_core::model::Identity;
use mayfly_server::api::identities::{CreateIdentity, DisableResponse, UpdateIdentity};
use mayfly_server::api::DeleteResponse;
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
    /// Change an identity's owner, purpose, expiry or labels (only what is given changes).
    Update {
        /// The identity's name.
        #[arg(add = super::completions::identities())]
        id: String,
        /// New accountable person or team.
        #[arg(long)]
        owner: Option<String>,
        /// New purpose.
        #[arg(long)]
        purpose: Option<String>,
        /// New lifetime, counted from now (e.g. 90d); live leases keep their expiry.
        #[arg(long, conflicts_with = "expires_at")]
        expires: Option<Ttl>,
        /// New expiry instant, RFC 3339.
        #[arg(long)]
        expires_at: Option<String>,
        /// key=value (repeatable); replaces the labels.
        #[arg(long = "label", conflicts_with = "clear_labels")]
        labels: Vec<String>,
        /// Remove every label.
        #[arg(long)]
        clear_labels: bool,
    },
    /// Delete an identity. Refused while it holds a live lease, unless --revoke-leases:
    /// it is then disabled (every lease revoked) and deleted once every credential is
    /// confirmed gone. Its grants, leases and audit entries stay.
    Delete {
        /// The identity's name.
        #[arg(add = super::completions::identities())]
        id: String,
        /// Disable it and revoke its live leases first.
        #[arg(long)]
        revoke_leases: bool,
    },
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
        IdentityCmd::Update {
            id,
            owner,
            purpose,
            expires,
            expires_at,
            labels,
            clear_labels,
        } => {
            let expires_at = super::expiry(expires, expires_at)?;
            let body = UpdateIdentity {
                owner,
                purpose,
                expires_at,
                labels: if clear_labels {
                    Some(Default::default())
                } else if labels.is_empty() {
                    None
                } else {
                    Some(key_values("label", &labels)?.into_iter().collect())
                },
            };
            output::object(
                out,
                &client
                    .patch::<_, Value>(&format!("/v1/identities/{id}"), &body)
                    .await?,
            );
        }
        IdentityCmd::Delete { id, revoke_leases } => {
            let answer: Answer<DeleteResponse> = client
                .delete(
                    &format!("/v1/identities/{id}"),
                    &[("revoke_leases", revoke_leases.to_string())],
                )
                .await?;
            match out {
                Format::Json => println!("{}", answer.raw),
                Format::Table => println!(
                    "identity {id} deleted; {} lease(s) revoked first",
                    answer.typed.revoked.total()
                ),
            }
        }
    }
    Ok(())
}
