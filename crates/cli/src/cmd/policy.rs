//! `mayfly policy`: validate and test Cedar policies offline, and ask the live broker to
//! explain a decision.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use mayfly_core::policy::Outcome;
use mayfly_server::api::grants::ExplainResponse;
use serde_json::json;

use super::grant::RequestArgs;
use super::Output;
use crate::client::Answer;
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Check a policy directory against the schema; errors name file, line and column.
    Validate {
        /// Policy directory.
        dir: std::path::PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Run table-driven policy tests (a cases.toml) against a policy directory.
    Test {
        /// The cases file (TOML): requests and the decision each must get.
        cases: std::path::PathBuf,
        /// Policy directory [default: the directory holding the cases file].
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// UTC offset for business-hours rules, e.g. +01:00.
        #[arg(long, default_value = "+00:00")]
        utc_offset: String,
        #[command(flatten)]
        output: Output,
    },
    /// Ask the broker how it would decide a request, and why; nothing is recorded.
    Explain(RequestArgs),
}

pub async fn run(cmd: PolicyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Validate { dir, output } => {
            let out = output.output;
            match mayfly_policy::load_dir(&dir, mayfly_policy::LoadOptions::default()) {
                Ok(engine) => {
                    match out {
                        Format::Json => println!(
                            "{}",
                            json!({"valid": true, "policies": engine.policy_count()})
                        ),
                        Format::Table => println!(
                            "{}: {} policies valid",
                            dir.display(),
                            engine.policy_count()
                        ),
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    for d in &e.diagnostics {
                        match out {
                            Format::Json => println!(
                                "{}",
                                json!({"file": d.file, "line": d.line, "column": d.column, "policy": d.policy_id, "message": d.message})
                            ),
                            Format::Table => eprintln!("error: {d}"),
                        }
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PolicyCmd::Test {
            cases,
            dir,
            utc_offset,
            output,
        } => {
            let out = output.output;
            let dir = match dir {
                Some(d) => d,
                None => cases
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default(),
            };
            let options = mayfly_policy::LoadOptions {
                utc_offset: mayfly_server::parse_utc_offset(&utc_offset)
                    .map_err(anyhow::Error::msg)?,
                ..Default::default()
            };
            let engine = match mayfly_policy::load_dir(&dir, options) {
                Ok(e) => e,
                Err(e) => {
                    let first = e
                        .diagnostics
                        .first()
                        .map(|d| d.to_string())
                        .unwrap_or_default();
                    bail!("policies in {} do not load: {first}", dir.display());
                }
            };
            let report = mayfly_policy::run_test_file(&cases, &engine);
            if let Some(err) = &report.error {
                bail!("{}: {err}", cases.display());
            }
            for case in &report.cases {
                match out {
                    Format::Json => println!(
                        "{}",
                        json!({"case": case.name, "passed": case.passed, "message": case.message})
                    ),
                    Format::Table => println!(
                        "{} {}: {}",
                        if case.passed { "ok  " } else { "FAIL" },
                        case.name,
                        case.message
                    ),
                }
            }
            if out == Format::Table {
                println!("{} passed, {} failed", report.passed(), report.failed());
            }
            Ok(if report.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PolicyCmd::Explain(args) => explain(args).await.map(|()| ExitCode::SUCCESS),
    }
}

/// The decision the broker would make, and why; nothing is recorded.
async fn explain(args: RequestArgs) -> anyhow::Result<()> {
    let (client, out) = args.client.connect()?;
    let answer: Answer<ExplainResponse> = client.post("/v1/policy/explain", &args.body()?).await?;
    match out {
        Format::Json => println!("{}", answer.raw),
        Format::Table => {
            let v = answer.typed;
            let d = &v.decision;
            // The outcome's name as the API spells it (the serde tag).
            let outcome = output::json(&d.outcome);
            println!("outcome:       {}", output::cell(outcome.get("outcome")));
            if let Outcome::RequireApproval { approvals } = d.outcome {
                println!("approvals:     {approvals}");
            }
            println!("granted ttl:   {}", output::field(&v.granted_ttl));
            println!("determined by: {}", output::field(&d.determined_by));
            for reason in &d.reasons {
                println!("reason:        {reason}");
            }
        }
    }
    Ok(())
}
