//! One module per command group. This module owns what the client commands share: how
//! they reach the broker ([`ClientArgs`]), how they print ([`Output`]), and the parsing of
//! repeated `key=value` flags.

pub mod approval;
pub mod audit;
pub mod completions;
pub mod exec;
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
pub mod task;

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
/// A wrong value is a usage error that lists the right ones.
pub fn api_enum<T: serde::de::DeserializeOwned>(flag: &str, text: &str) -> anyhow::Result<T> {
    serde_json::from_value(Value::String(text.to_string())).map_err(|_| {
        crate::failure::usage(format!(
            "{flag} {text:?}: expected one of {}",
            variants::<T>().join(", ")
        ))
    })
}

/// The names serde reads for the enum `T` (its variants as renamed), read from the derive
/// itself so no list is written twice. Empty when `T` is not an enum.
pub fn variants<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};

    /// Answers `deserialize_enum` by recording the variant names, and fails.
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not an enum"))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = variants;
            Err(Self::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            struct identifier ignored_any
        }
    }

    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut found));
    found
}

/// A clap value parser for one of the API's enums: `--help` lists its values, and a wrong
/// one is clap's usage error naming them.
#[derive(Clone)]
pub struct ApiEnum<T>(std::marker::PhantomData<fn() -> T>);

impl<T> ApiEnum<T> {
    pub fn new() -> Self {
        ApiEnum(std::marker::PhantomData)
    }
}

impl<T> Default for ApiEnum<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> clap::builder::TypedValueParser for ApiEnum<T>
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let text = clap::builder::PossibleValuesParser::new(variants::<T>().iter().copied())
            .parse_ref(cmd, arg, value)?;
        serde_json::from_value(Value::String(text))
            .map_err(|_| clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            variants::<T>()
                .iter()
                .map(|v| clap::builder::PossibleValue::new(*v)),
        ))
    }
}

/// An id the broker gave (a grant's, a lease's), checked before it is sent: a mistyped one
/// is a usage error here, not a broker's complaint about a path.
pub fn uuid(what: &str, text: &str) -> anyhow::Result<mayfly_core::Uuid> {
    text.trim().parse().map_err(|_| {
        crate::failure::usage(format!(
            "{text:?} is not a {what} id (an id looks like 7c9e6679-7425-40de-944b-e07fc1f90ae7)"
        ))
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mayfly_core::model::{IdentityKind, LeaseState, RevocationReason};

    #[test]
    fn enum_values_come_from_the_api_types() {
        assert_eq!(
            variants::<IdentityKind>(),
            ["service", "pipeline", "agent", "other"]
        );
        assert!(variants::<LeaseState>().contains(&"revoking"));
        assert!(variants::<RevocationReason>().contains(&"task_complete"));
        assert!(variants::<String>().is_empty());
        let e = api_enum::<IdentityKind>("--kind", "robot").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--kind \"robot\": expected one of service, pipeline, agent, other"
        );
        assert_eq!(crate::failure::exit_code(&e), crate::failure::USAGE);
    }
}
