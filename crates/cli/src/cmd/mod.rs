//! One module per command group. This module owns what the client commands share: how
//! they reach the broker ([`ClientArgs`]), how they print ([`Output`]), and the parsing of
//! repeated `key=value` flags.

pub mod audit;
pub mod completions;
pub mod grant;
pub mod identity;
pub mod introspect;
pub mod keys;
pub mod lease;
pub mod operator;
pub mod policy;
pub mod revoke;
pub mod serve;
pub mod store;
pub mod target;

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use crate::client::Client;
use crate::output::Format;

/// How a command prints. Each command that prints declares it (not `mayfly` itself), so
/// `serve --help` lists only server options.
#[derive(clap::Args)]
pub struct Output {
    /// Output format for listings and records.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value = "table",
        env = "MAYFLY_OUTPUT"
    )]
    pub output: Format,
}

/// How a client command reaches the broker, and prints what it answers.
#[derive(clap::Args)]
pub struct ClientArgs {
    /// Broker address.
    #[arg(
        long,
        global = true,
        env = "MAYFLY_ADDR",
        default_value = "http://127.0.0.1:8740"
    )]
    pub addr: String,
    /// Bearer token: an operator token, or a workload's OIDC JWT.
    #[arg(long, global = true, env = "MAYFLY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub output: Output,
}

impl ClientArgs {
    /// The client for the broker these options name, and the format to print in.
    pub fn connect(&self) -> anyhow::Result<(Client, Format)> {
        Ok((
            Client::new(&self.addr, self.token.clone())?,
            self.output.output,
        ))
    }
}

/// A group of client subcommands; the client options are accepted before or after the
/// subcommand's name.
#[derive(clap::Args)]
pub struct Group<C: Subcommand> {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub cmd: C,
}

/// Repeated `key=value` flags, in the order given; `field` names the flag in the error.
pub fn key_values(field: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{field} {item:?}: expected key=value"))
        })
        .collect()
}

/// The query string of a listing: only the filters that were given.
pub fn query(pairs: &[(&'static str, Option<String>)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
        .collect()
}

/// A flag's text read as one of the API's enums (identity kind, revocation reason), by the
/// same serde names the broker accepts, so the CLI refuses exactly what the broker would.
pub fn api_enum<T: serde::de::DeserializeOwned>(flag: &str, text: &str) -> anyhow::Result<T> {
    serde_json::from_value(Value::String(text.to_string()))
        .with_context(|| format!("{flag} {text:?}"))
}

/// An expiry given as a lifetime from now (`--expires-in 30d`) or an instant
/// (`--expires-at`, RFC 3339); `None` when neither was given.
pub fn expiry(
    lifetime: Option<mayfly_core::duration::Ttl>,
    at: Option<String>,
) -> anyhow::Result<Option<time::OffsetDateTime>> {
    match (lifetime, at) {
        (Some(ttl), _) => Ok(Some(mayfly_core::now() + ttl.as_time())),
        (None, Some(text)) => {
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .map(Some)
                .with_context(|| {
                    format!("--expires-at {text:?}: expected RFC 3339, e.g. 2027-01-31T00:00:00Z")
                })
        }
        (None, None) => Ok(None),
    }
}
