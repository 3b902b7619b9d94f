//! `mayfly store`: offline store maintenance; opens the stores directly (stop the broker
//! first).

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::Output;
use crate::output::Format;

#[derive(Subcommand)]
pub enum StoreCmd {
    /// Copy every record, and the audit chain entry for entry, into an empty store, then
    /// verify the chain there (e.g. embedded SQLite to PostgreSQL for several replicas).
    Migrate {
        /// Source store URL, e.g. sqlite:///var/lib/mayfly/mayfly.db
        #[arg(long)]
        from: String,
        /// Target store URL (must be empty), e.g. postgres://mayfly@db/mayfly
        #[arg(long)]
        to: String,
        #[command(flatten)]
        output: Output,
    },
}

pub async fn run(cmd: StoreCmd) -> anyhow::Result<ExitCode> {
    let StoreCmd::Migrate { from, to, output } = cmd;
    let out = output.output;
    eprintln!(
        "mayfly: copying {} into {} …",
        redact_url(&from),
        redact_url(&to)
    );
    let report = mayfly_store::copy_store(&from, &to)
        .await
        .context("migration failed")?;
    let intact = report
        .verified
        .as_ref()
        .is_some_and(|v| v.first_break.is_none());
    match out {
        Format::Json => println!("{}", serde_json::to_value(&report)?),
        Format::Table => {
            println!(
                "copied {} identities, {} targets, {} grants, {} leases, {} signing keys, {} audit entries",
                report.identities, report.targets, report.grants, report.leases, report.signing_keys, report.audit_entries
            );
            println!(
                "audit chain on the target: {}",
                if intact { "intact" } else { "BROKEN" }
            );
        }
    }
    Ok(if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::failure::CHECK_FAILED)
    })
}

/// A store URL for messages: the password, if any, replaced.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:[redacted]{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
