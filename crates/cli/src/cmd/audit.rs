//! `mayfly audit`: verify the chain (on the broker, or offline on a store) and list a
//! credential's story.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use mayfly_core::audit::{AuditEvent, ChainBreak, VerifyReport};
use serde_json::Value;

use super::{query, Group};
use crate::client::{Answer, Client};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Walk the chain; exit non-zero at the first edited, deleted, inserted or reordered entry.
    Verify {
        /// Verify a store offline instead of asking the broker (e.g. sqlite:///path/mayfly.db).
        #[arg(long)]
        store: Option<String>,
    },
    /// A credential's whole story, in order.
    List {
        /// Only entries of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only entries about this identity.
        #[arg(long, add = super::completions::identities())]
        identity: Option<String>,
        /// Only entries of this grant (and its lease).
        #[arg(long)]
        grant: Option<String>,
        /// Only entries after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many entries, oldest first.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

pub async fn run(group: Group<AuditCmd>) -> anyhow::Result<ExitCode> {
    let out = group.client.output.output;
    match group.cmd {
        AuditCmd::Verify { store: Some(url) } => {
            let store = mayfly_store::open(&url, mayfly_store::Durability::Fsync)
                .await
                .context("cannot open store")?;
            let report = store.verify_audit().await.context("verification failed")?;
            Ok(print_verify(out, &serde_json::to_value(&report)?, &report))
        }
        AuditCmd::Verify { store: None } => {
            let (client, out) = group.client.connect()?;
            let answer: Answer<VerifyReport> = client.get("/v1/audit/verify", &[]).await?;
            Ok(print_verify(out, &answer.raw, &answer.typed))
        }
        AuditCmd::List {
            task,
            identity,
            grant,
            after,
            limit,
        } => {
            let (client, out) = group.client.connect()?;
            list(&client, out, task, identity, grant, after, limit).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a verification (`raw` is `report` as JSON) and says how to exit: the check's own
/// code when broken.
fn print_verify(out: Format, raw: &Value, report: &VerifyReport) -> ExitCode {
    match out {
        Format::Json => println!("{raw}"),
        Format::Table => match &report.first_break {
            Some(b) => {
                let (seq, column) = match b {
                    ChainBreak::Edited { seq }
                    | ChainBreak::Deleted { seq, .. }
                    | ChainBreak::InsertedOrReordered { seq }
                    | ChainBreak::Unreadable { seq } => (*seq, None),
                    ChainBreak::Truncated { head_seq, .. } => (*head_seq, None),
                    ChainBreak::ColumnEdited { seq, column } => (*seq, Some(column)),
                };
                // A re-filed entry names the column that no longer matches its body.
                let column = column.map(|c| format!(" (column {c})")).unwrap_or_default();
                // The problem's name as the API spells it (the serde tag).
                let problem = output::json(b);
                println!(
                    "audit chain BROKEN at entry {seq}: {}{column} ({} entries read)",
                    problem
                        .get("problem")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    report.entries
                );
            }
            None => println!(
                "audit chain intact: {} entries, head {}",
                report.entries,
                report.last_hash.as_deref().unwrap_or("-")
            ),
        },
    }
    if report.first_break.is_some() {
        ExitCode::from(crate::failure::CHECK_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

async fn list(
    client: &Client,
    out: Format,
    task: Option<String>,
    identity: Option<String>,
    grant: Option<String>,
    mut after: Option<u64>,
    limit: u32,
) -> anyhow::Result<()> {
    // Page through the chain so long stories stream instead of loading at once.
    let mut printed = 0u32;
    let mut rows = Vec::new();
    while printed < limit {
        let page = (limit - printed).min(1000);
        let q = query(&[
            ("task", task.clone()),
            ("identity", identity.clone()),
            ("grant", grant.clone()),
            ("after", after.map(|a| a.to_string())),
            ("limit", Some(page.to_string())),
        ]);
        let items: Vec<Answer<AuditEvent>> = client.get("/v1/audit", &q).await?;
        let n = items.len() as u32;
        for Answer { raw, typed: e } in items {
            after = Some(e.seq);
            match out {
                Format::Json => println!("{raw}"),
                Format::Table => rows.push(vec![
                    e.seq.to_string(),
                    output::time(e.at),
                    output::field(&e.kind),
                    e.actor,
                    output::field(&e.identity),
                    output::field(&e.target),
                    output::field(&e.task),
                    output::field(&e.lease_id),
                    summary(&e.detail),
                ]),
            }
        }
        printed += n;
        if n < page {
            break;
        }
    }
    if out == Format::Table {
        let headers = [
            "SEQ", "AT", "KIND", "ACTOR", "IDENTITY", "TARGET", "TASK", "LEASE", "DETAIL",
        ]
        .map(String::from);
        output::print_table(&headers, &rows);
    }
    Ok(())
}

fn summary(detail: &Value) -> String {
    let Value::Object(map) = detail else {
        return "-".into();
    };
    // A task's end says how its command ended, and why its leases went.
    let shown: Vec<String> = ["reason", "exit_status", "code", "purpose"]
        .iter()
        .filter_map(|key| {
            map.get(*key)
                .map(|v| format!("{key}={}", output::cell(Some(v))))
        })
        .take(2)
        .collect();
    if !shown.is_empty() {
        return shown.join(" ");
    }
    if let Some(outcome) = map.get("decision").and_then(|d| d.get("outcome")) {
        return format!("outcome={}", output::cell(Some(outcome)));
    }
    "-".into()
}
