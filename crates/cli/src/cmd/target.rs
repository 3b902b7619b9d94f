//! `mayfly target`: the things access is granted to, their reconciliation and root rotation.

use anyhow::{bail, Context};
use clap::Subcommand;
use mayfly_core::duration::Ttl;
use mayfly_core::model::Target;
use mayfly_core::secret::SecretString;
use mayfly_server::api::targets::{CreateTarget, TargetSummary, TargetView, UpdateTarget};
use mayfly_server::api::DeleteResponse;
use serde_json::Value;

use super::Group;
use crate::client::Answer;
use crate::output::{self, Column, Format};

// Parsed once per process; boxing the large variant would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum TargetCmd {
    /// Register a target and who may ask for it (default deny).
    Add {
        /// The target's name: what `request --target` names.
        name: String,
        /// The credential kind: what a grant on this target issues.
        #[arg(long, default_value = "token",
            value_parser = clap::builder::PossibleValuesParser::new(mayfly_server::credential_kinds()))]
        kind: String,
        /// Allowed action (repeatable).
        #[arg(long = "action", required = true)]
        actions: Vec<String>,
        /// TTL of a request that names none.
        #[arg(long, default_value = "15m")]
        default_ttl: Ttl,
        /// Longest TTL a grant (and its renewals) may have; longer requests are clamped.
        #[arg(long, default_value = "1h")]
        max_ttl: Ttl,
        /// Identity, `owner:<team>` or `*` allowed to request (repeatable). Default: nobody.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Token audience (token targets); default the target name.
        #[arg(long)]
        audience: Option<String>,
        /// Provider settings as a JSON object (e.g. the grant statements of a database target).
        #[arg(long, conflicts_with = "settings_file")]
        settings: Option<String>,
        /// Provider settings from a JSON file.
        #[arg(long)]
        settings_file: Option<std::path::PathBuf>,
        /// Read the admin connection URL (with its password) from this environment variable.
        /// Secrets are never taken as flag values: those show up in `ps`.
        #[arg(long, conflicts_with = "admin_url_file")]
        admin_url_env: Option<String>,
        /// Read the admin connection URL from this file.
        #[arg(long)]
        admin_url_file: Option<std::path::PathBuf>,
    },
    /// List targets (a workload sees those policy could allow it).
    List,
    /// One target.
    Show {
        /// The target's name.
        #[arg(add = super::completions::targets())]
        name: String,
    },
    /// Drop users on the target that carry Mayfly's prefix but belong to no live lease.
    Reconcile {
        /// The target's name.
        #[arg(add = super::completions::targets())]
        name: String,
    },
    /// Replace the target's admin password with a random one only Mayfly knows.
    RotateRoot {
        /// The target's name.
        #[arg(add = super::completions::targets())]
        name: String,
    },
    /// Change a target's actions, TTLs, allow list or settings (only what is given
    /// changes). The kind and the admin secret do not change here (rotate-root).
    Update {
        /// The target's name.
        #[arg(add = super::completions::targets())]
        name: String,
        /// Allowed action (repeatable); replaces the list.
        #[arg(long = "action")]
        actions: Vec<String>,
        /// TTL of a grant that names none.
        #[arg(long)]
        default_ttl: Option<Ttl>,
        /// For grants from now on; live leases keep their cap.
        #[arg(long)]
        max_ttl: Option<Ttl>,
        /// Identity, `owner:<team>` or `*` allowed to request (repeatable); replaces the list.
        #[arg(long = "allow", conflicts_with = "clear_allow")]
        allow: Vec<String>,
        /// Empty the allow list (nobody may request until policy or a new list says so).
        #[arg(long)]
        clear_allow: bool,
        /// Token audience (token targets); kept with the other settings.
        #[arg(long)]
        audience: Option<String>,
        /// Provider settings as a JSON object; replaces them whole.
        #[arg(long, conflicts_with = "settings_file")]
        settings: Option<String>,
        /// Provider settings from a JSON file; replaces them whole.
        #[arg(long)]
        settings_file: Option<std::path::PathBuf>,
    },
    /// Delete a target. Refused while any of its leases is live, unless --revoke-leases:
    /// those are revoked first, and the target goes once every credential is confirmed
    /// gone. Its grants, leases and audit entries stay.
    Delete {
        /// The target's name.
        #[arg(add = super::completions::targets())]
        name: String,
        /// Revoke its live leases first.
        #[arg(long)]
        revoke_leases: bool,
    },
}

/// Settings text from `--settings` or `--settings-file`, as a JSON object.
fn settings_from(
    settings: Option<String>,
    settings_file: Option<std::path::PathBuf>,
) -> anyhow::Result<Option<serde_json::Map<String, Value>>> {
    let text = match (settings, settings_file) {
        (Some(s), _) => s,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, None) => return Ok(None),
    };
    match serde_json::from_str::<Value>(&text).context("settings must be a JSON object")? {
        Value::Object(m) => Ok(Some(m)),
        _ => bail!("settings must be a JSON object"),
    }
}

/// A listed target: operators see whole targets, workloads summaries (no allow list).
struct Listed {
    summary: TargetSummary,
    allow: Option<Vec<String>>,
}

impl From<TargetView> for Listed {
    fn from(view: TargetView) -> Self {
        match view {
            TargetView::Full(t) => Listed {
                allow: Some(t.allow.clone()),
                summary: t.into(),
            },
            TargetView::Summary(summary) => Listed {
                summary,
                allow: None,
            },
        }
    }
}

const COLUMNS: &[Column<Listed>] = &[
    ("NAME", |t| t.summary.name.clone()),
    ("KIND", |t| t.summary.kind.clone()),
    ("ACTIONS", |t| output::field(&t.summary.actions)),
    ("DEFAULT TTL", |t| t.summary.default_ttl.to_string()),
    ("MAX TTL", |t| t.summary.max_ttl.to_string()),
    ("ALLOW", |t| output::field(&t.allow)),
];

pub async fn run(group: Group<TargetCmd>) -> anyhow::Result<()> {
    let (client, out) = group.client.connect()?;
    match group.cmd {
        TargetCmd::Add {
            name,
            kind,
            actions,
            default_ttl,
            max_ttl,
            allow,
            audience,
            settings,
            settings_file,
            admin_url_env,
            admin_url_file,
        } => {
            let text = match (settings, settings_file) {
                (Some(s), _) => Some(s),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                (None, None) => None,
            };
            let mut settings = match text {
                Some(t) => match serde_json::from_str::<Value>(&t)
                    .context("settings must be a JSON object")?
                {
                    Value::Object(m) => m,
                    _ => bail!("settings must be a JSON object"),
                },
                None => serde_json::Map::new(),
            };
            if let Some(a) = audience {
                settings.insert("audience".into(), Value::String(a));
            }
            let admin = match (admin_url_env, admin_url_file) {
                (Some(var), _) => Some(
                    std::env::var(&var)
                        .with_context(|| format!("environment variable {var} is not set"))?,
                ),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                (None, None) => None,
            };
            let body = CreateTarget {
                name,
                kind,
                actions,
                default_ttl,
                max_ttl,
                allow,
                settings: Value::Object(settings),
                admin: admin.map(SecretString::new),
            };
            output::object(out, &client.post::<_, Value>("/v1/targets", &body).await?);
        }
        TargetCmd::List => {
            let items: Vec<Answer<TargetView>> = client.get("/v1/targets", &[]).await?;
            let items: Vec<Answer<Listed>> = items.into_iter().map(Answer::map).collect();
            output::list(out, &items, COLUMNS);
        }
        TargetCmd::Show { name } => output::object(
            out,
            &client
                .get::<Value>(&format!("/v1/targets/{name}"), &[])
                .await?,
        ),
        TargetCmd::Reconcile { name } => {
            let report: Value = client
                .post_empty(&format!("/v1/targets/{name}/reconcile"))
                .await?;
            print_reconciled(out, &name, &report);
        }
        TargetCmd::RotateRoot { name } => output::object(
            out,
            &client
                .post_empty::<Value>(&format!("/v1/targets/{name}/rotate-root"))
                .await?,
        ),
        TargetCmd::Update {
            name,
            actions,
            default_ttl,
            max_ttl,
            allow,
            clear_allow,
            audience,
            settings,
            settings_file,
        } => {
            let mut settings = settings_from(settings, settings_file)?;
            if let Some(audience) = audience {
                // The audience joins the settings given, or else the target's current ones.
                let mut merged = match settings {
                    Some(s) => s,
                    None => {
                        let current: Target =
                            client.get(&format!("/v1/targets/{name}"), &[]).await?;
                        match current.settings {
                            Value::Object(m) => m,
                            _ => serde_json::Map::new(),
                        }
                    }
                };
                merged.insert("audience".into(), Value::String(audience));
                settings = Some(merged);
            }
            let body = UpdateTarget {
                actions: (!actions.is_empty()).then_some(actions),
                default_ttl,
                max_ttl,
                allow: if clear_allow {
                    Some(Vec::new())
                } else {
                    (!allow.is_empty()).then_some(allow)
                },
                settings: settings.map(Value::Object),
            };
            output::object(
                out,
                &client
                    .patch::<_, Value>(&format!("/v1/targets/{name}"), &body)
                    .await?,
            );
        }
        TargetCmd::Delete {
            name,
            revoke_leases,
        } => {
            let answer: Answer<DeleteResponse> = client
                .delete(
                    &format!("/v1/targets/{name}"),
                    &[("revoke_leases", revoke_leases.to_string())],
                )
                .await?;
            match out {
                Format::Json => println!("{}", answer.raw),
                Format::Table => println!(
                    "target {name} deleted; {} lease(s) revoked first",
                    answer.typed.revoked.total()
                ),
            }
        }
    }
    Ok(())
}

/// A reconciliation as sentences: what was dropped, what failed, what was left alone, or
/// that there was nothing to drop.
fn print_reconciled(out: Format, name: &str, report: &Value) {
    if out == Format::Json {
        println!("{report}");
        return;
    }
    let list = |key: &str| {
        report
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (dropped, failed, unknown) = (list("dropped"), list("failed"), list("unknown"));
    if dropped.is_empty() && failed.is_empty() {
        println!("{name}: nothing to drop");
    }
    if !dropped.is_empty() {
        println!(
            "{name}: dropped {}",
            output::cell(Some(&Value::Array(dropped)))
        );
    }
    for f in &failed {
        // `[user, reason]`
        println!(
            "{name}: could not drop {}: {}",
            output::cell(f.get(0)),
            output::cell(f.get(1))
        );
    }
    if !unknown.is_empty() {
        println!(
            "{name}: left alone (not provably Mayfly's for this target): {}",
            output::cell(Some(&Value::Array(unknown)))
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A workload is answered summaries: listed with no allow list, as `-`.
    #[test]
    fn a_summary_lists_without_an_allow_list() {
        let view: TargetView = serde_json::from_value(serde_json::json!({
            "name": "api", "kind": "token", "actions": ["read", "write"],
            "default_ttl": "15m", "max_ttl": "1h"
        }))
        .unwrap();
        let row = Listed::from(view);
        let cells: Vec<String> = COLUMNS.iter().map(|(_, cell)| cell(&row)).collect();
        assert_eq!(cells, ["api", "token", "read,write", "15m", "1h", "-"]);
    }
}
