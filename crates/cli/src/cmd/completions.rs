//! Shell completion: the static scripts of `mayfly completions SHELL`, and the dynamic
//! completion of names the broker knows (targets, identities).
//!
//! Dynamic completion is clap's: a shell that sourced `COMPLETE=bash mayfly` calls
//! `mayfly` itself with `COMPLETE` set on every TAB, and the completers below ask the broker
//! named by `MAYFLY_ADDR` with `MAYFLY_TOKEN`, as any client command would. A broker that
//! is not reachable within [`LOOKUP_TIMEOUT`] completes nothing, never an error or a hang
//! in the user's shell.

use std::ffi::OsStr;
use std::time::Duration;

use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use serde_json::Value;

/// The longest a TAB may wait for the broker.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(800);

/// Writes `shell`'s completions for `command` (the whole `mayfly` tree) to stdout.
pub fn run(shell: clap_complete::Shell, mut command: clap::Command) {
    clap_complete::generate(shell, &mut command, "mayfly", &mut std::io::stdout());
}

/// Completes a target name.
pub fn targets() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| names("/v1/targets", "name", current))
}

/// Completes an identity id.
pub fn identities() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| names("/v1/identities", "id", current))
}

/// The `field` of each item the broker lists at `path` that starts with `current`.
fn names(path: &str, field: &str, current: &OsStr) -> Vec<CompletionCandidate> {
    let prefix = current.to_string_lossy();
    let mut found: Vec<String> = fetch(path)
        .unwrap_or_default()
        .iter()
        .filter_map(|item| item.get(field).and_then(Value::as_str))
        .filter(|name| name.starts_with(prefix.as_ref()))
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found.into_iter().map(CompletionCandidate::new).collect()
}

fn fetch(path: &str) -> Option<Vec<Value>> {
    let addr = std::env::var("MAYFLY_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8740".into());
    let token = std::env::var("MAYFLY_TOKEN").ok();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(LOOKUP_TIMEOUT)
            .connect_timeout(LOOKUP_TIMEOUT)
            .build()
            .ok()?;
        let mut request = http.get(format!("{}{path}", addr.trim_end_matches('/')));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Vec<Value>>().await.ok()
    })
}
