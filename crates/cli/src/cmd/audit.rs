//! `mayfly audit`: verify the chain (on the broker, or offline on a store), optionally
//! against a signed checkpoint kept outside the database; print a checkpoint to keep; and
//! list a credential's story.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use mayfly_core::audit::{AuditEvent, ChainBreak, VerifyReport};
use mayfly_core::checkpoint::{Checkpoint, AUDIT_KEY_USE};
use mayfly_core::store::AuditFilter;
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
        /// Also check the chain against this signed checkpoint (the JSON of
        /// `mayfly audit checkpoint`, kept outside the database): a chain rewritten and
        /// rehashed since it was taken no longer has the entry it signed.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<std::path::PathBuf>,
    },
    /// Print a signed checkpoint of the chain head (JSON), to keep outside the database.
    Checkpoint {
        /// Take a fresh one now instead of the latest the broker took.
        #[arg(long)]
        new: bool,
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
        AuditCmd::Verify {
            store: Some(url),
            checkpoint,
        } => {
            // Read before anything else: a bad file is the operator's to fix first.
            let checkpoint = checkpoint.as_deref().map(read_checkpoint).transpose()?;
            let store = mayfly_store::open(&url, mayfly_store::Durability::Fsync)
                .await
                .context("cannot open store")?;
            let mut report = store.verify_audit().await.context("verification failed")?;
            if let Some(checkpoint) = checkpoint {
                // The store holds the audit keys' public halves; a key planted there
                // cannot stand in for the real one, since a `kid` is its key's thumbprint.
                let keys = store
                    .list_signing_keys()
                    .await
                    .context("cannot read the audit keys")?
                    .into_iter()
                    .map(|k| k.public_jwk)
                    .filter(|jwk| jwk.get("use").and_then(Value::as_str) == Some(AUDIT_KEY_USE))
                    .collect::<Vec<_>>();
                checkpoint
                    .verify(&serde_json::json!({ "keys": keys }))
                    .context("checkpoint rejected")?;
                let entry = store
                    .list_audit(&AuditFilter {
                        after_seq: Some(checkpoint.seq.saturating_sub(1)),
                        limit: Some(1),
                        ..AuditFilter::default()
                    })
                    .await
                    .context("cannot read the checkpoint's entry")?;
                report = checkpoint.check(report, entry_hash(&entry, checkpoint.seq));
            }
            Ok(print_verify(out, &serde_json::to_value(&report)?, &report))
        }
        AuditCmd::Verify {
            store: None,
            checkpoint,
        } => {
            let checkpoint = checkpoint.as_deref().map(read_checkpoint).transpose()?;
            let (client, out) = group.client.connect()?;
            let answer: Answer<VerifyReport> = client.get("/v1/audit/verify", &[]).await?;
            let Some(checkpoint) = checkpoint else {
                return Ok(print_verify(out, &answer.raw, &answer.typed));
            };
            let keys: Value = client.get("/v1/audit/keys", &[]).await?;
            checkpoint.verify(&keys).context("checkpoint rejected")?;
            let q = [
                ("after", checkpoint.seq.saturating_sub(1).to_string()),
                ("limit", "1".to_string()),
            ];
            let entry: Vec<AuditEvent> = client.get("/v1/audit", &q).await?;
            let report = checkpoint.check(answer.typed, entry_hash(&entry, checkpoint.seq));
            Ok(print_verify(out, &serde_json::to_value(&report)?, &report))
        }
        AuditCmd::Checkpoint { new } => {
            let (client, _) = group.client.connect()?;
            let checkpoint: Value = if new {
                client.post_empty("/v1/audit/checkpoint").await?
            } else {
                client.get("/v1/audit/checkpoint", &[]).await?
            };
            // Always JSON: it is a document to keep, and `--checkpoint` reads it back.
            println!("{checkpoint}");
            Ok(ExitCode::SUCCESS)
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

/// Reads a kept checkpoint; nothing in it is trusted until its signature is checked.
fn read_checkpoint(path: &std::path::Path) -> anyhow::Result<Checkpoint> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    Checkpoint::parse(&text).with_context(|| format!("checkpoint {}", path.display()))
}

/// The stored hash of entry `seq` among `entries` (a listing that starts there).
fn entry_hash(entries: &[AuditEvent], seq: u64) -> Option<&str> {
    entries
        .first()
        .filter(|e| e.seq == seq)
        .map(|e| e.hash.as_str())
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
                    | ChainBreak::Unreadable { seq }
                    | ChainBreak::CheckpointMismatch { seq } => (*seq, None),
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
    if let (Format::Table, Some(c)) = (out, &report.checkpoint) {
        let at = output::time(c.at);
        match report.first_break {
            Some(ChainBreak::CheckpointMismatch { seq }) => println!(
                "checkpoint of entry {seq} (signed {at}, key {}) NOT matched: the chain at or before entry {seq} was rewritten",
                c.kid
            ),
            _ if c.covered => println!(
                "checkpoint of entry {} (signed {at}, key {}) covered: entries 1..{} are as signed",
                c.seq, c.kid, c.seq
            ),
            _ => println!(
                "checkpoint of entry {} (signed {at}, key {}) not covered",
                c.seq, c.kid
            ),
        }
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
