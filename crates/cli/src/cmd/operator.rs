//! `mayfly operator token`: operator tokens with a lifecycle (make, list, revoke).
//!
//! A lost set of tokens is recovered offline with `mayfly store recover-operator`.

use clap::Subcommand;
use mayfly_core::duration::Ttl;
use mayfly_server::api::operators::{
    CreateOperatorToken, CreatedOperatorToken, OperatorToken, RevokeOperatorToken,
};

use super::Group;
use crate::client::Answer;
use crate::output::{self, Column, Format};

#[derive(Subcommand)]
pub enum OperatorCmd {
    /// Operator tokens: each shown once, stored only as a hash, with an expiry.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a token. It is printed once, on stdout, and never again (the broker keeps
    /// only its hash). Expires after 90 days unless --expires-in or --expires-at says
    /// otherwise. The name must not be held by another live token.
    Create {
        /// The token's name, e.g. `alice` or `ci-deployer`.
        #[arg(long)]
        name: String,
        /// Lifetime from now, e.g. 30d or 12h [default: 90d].
        #[arg(long, conflicts_with = "expires_at")]
        expires_in: Option<Ttl>,
        /// Expiry instant, RFC 3339 (e.g. 2027-01-31T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List tokens: name, state, when made and by whom, expiry. Never a token or its hash.
    List {
        /// Also list revoked tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke a token now; its next use is refused. The broker's last live token is kept
    /// unless --force (then only `mayfly store recover-operator`, run offline, gets anyone
    /// back in).
    Revoke {
        /// The token's name (see `mayfly operator token list`).
        name: String,
        /// Revoke it even if it is the last live token.
        #[arg(long)]
        force: bool,
    },
}

const COLUMNS: &[Column<OperatorToken>] = &[
    ("NAME", |t| t.name.clone()),
    ("STATE", |t| output::field(&t.state)),
    ("CREATED", |t| output::time(t.created_at)),
    ("CREATED BY", |t| t.created_by.clone()),
    ("EXPIRES", |t| {
        t.expires_at.map_or("never".into(), output::time)
    }),
    ("REVOKED", |t| t.revoked_at.map_or("-".into(), output::time)),
];

pub async fn run(group: Group<OperatorCmd>) -> anyhow::Result<()> {
    let (client, out) = group.client.connect()?;
    let OperatorCmd::Token(cmd) = group.cmd;
    match cmd {
        TokenCmd::Create {
            name,
            expires_in,
            expires_at,
        } => {
            let expires_at = super::expiry(expires_in, expires_at)?;
            let body = CreateOperatorToken { name, expires_at };
            let answer: Answer<CreatedOperatorToken> =
                client.post("/v1/operator/tokens", &body).await?;
            match out {
                Format::Json => println!("{}", answer.raw),
                Format::Table => {
                    let info = &answer.typed.info;
                    eprintln!(
                        "mayfly: operator token {:?} created, expires {}. It is shown only this once:",
                        info.name,
                        info.expires_at.map_or("never".into(), output::time)
                    );
                    println!("{}", answer.typed.token);
                }
            }
        }
        TokenCmd::List { all } => {
            let query = if all {
                vec![("include_revoked", "true".to_string())]
            } else {
                Vec::new()
            };
            let items: Vec<Answer<OperatorToken>> =
                client.get("/v1/operator/tokens", &query).await?;
            output::list(out, &items, COLUMNS);
        }
        TokenCmd::Revoke { name, force } => {
            let answer: Answer<OperatorToken> = client
                .post(
                    &format!("/v1/operator/tokens/{name}/revoke"),
                    &RevokeOperatorToken { force },
                )
                .await?;
            match out {
                Format::Json => println!("{}", answer.raw),
                Format::Table => println!("operator token {name:?} revoked"),
            }
        }
    }
    Ok(())
}
