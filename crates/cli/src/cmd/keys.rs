//! `mayfly keys`: the broker's token signing keys.

use clap::Subcommand;
use serde_json::Value;

use super::Group;
use crate::output;

#[derive(Subcommand)]
pub enum KeysCmd {
    /// New signing key; old ones stay in the JWKS until their tokens expire.
    Rotate,
}

pub async fn run(group: Group<KeysCmd>) -> anyhow::Result<()> {
    let (client, out) = group.client.connect()?;
    match group.cmd {
        KeysCmd::Rotate => {
            let v: Value = client.post_empty("/v1/keys/rotate").await?;
            output::object(out, &v);
        }
    }
    Ok(())
}
