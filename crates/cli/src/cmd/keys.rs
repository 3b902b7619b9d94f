//! `mayfly keys`: the broker's token signing keys.

use clap::Subcommand;
use mayfly_server::api::system::KeyInfo;
use serde_json::Value;

use super::Group;
use crate::client::Answer;
use crate::output::{self, Column};

#[derive(Subcommand)]
pub enum KeysCmd {
    /// New signing key; old ones stay in the JWKS until their tokens expire.
    Rotate,
    /// The signing keys, newest first: which one signs, and until when retired ones are
    /// published (operators).
    List,
}

const COLUMNS: &[Column<KeyInfo>] = &[
    ("KID", |k| k.kid.clone()),
    ("ALG", |k| k.alg.clone()),
    ("STATE", |k| state(k).into()),
    ("CREATED", |k| output::time(k.created_at)),
    ("RETIRED", |k| k.retired_at.map_or("-".into(), output::time)),
    ("PUBLISHED UNTIL", |k| {
        k.published_until.map_or("-".into(), output::time)
    }),
];

/// `active` signs; `published` is retired but still in the JWKS for the tokens it signed;
/// `expired` is in neither.
fn state(k: &KeyInfo) -> &'static str {
    match (k.retired_at, k.published_until) {
        (None, _) => "active",
        (Some(_), Some(until)) if until > mayfly_core::now() => "published",
        (Some(_), _) => "expired",
    }
}

pub async fn run(group: Group<KeysCmd>) -> anyhow::Result<()> {
    let (client, out) = group.client.connect()?;
    match group.cmd {
        KeysCmd::Rotate => {
            let v: Value = client.post_empty("/v1/keys/rotate").await?;
            output::object(out, &v);
        }
        KeysCmd::List => {
            let keys: Vec<Answer<KeyInfo>> = client.get("/v1/keys", &[]).await?;
            output::list(out, &keys, COLUMNS);
        }
    }
    Ok(())
}
