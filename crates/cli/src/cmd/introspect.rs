//! `mayfly introspect`: whether a token the broker issued is still active (RFC 7662).

use serde_json::Value;

use super::ClientArgs;
use crate::output;

// `mayfly introspect`; its help is the doc comment on `Command::Introspect`.
#[derive(clap::Args)]
pub struct IntrospectArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The access token to check.
    #[arg(value_name = "TOKEN")]
    access_token: String,
}

pub async fn run(args: IntrospectArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    // RFC 7662 asks for a form, not JSON.
    let v: Value = client
        .post_form(
            "/oauth2/introspect",
            &[("token", args.access_token.as_str())],
        )
        .await?;
    output::object(out, &v);
    Ok(())
}
