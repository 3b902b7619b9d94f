//! Dynamic shell completion: a TAB on a target or identity argument asks the broker for
//! its names; a broker that cannot be reached completes nothing and says nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{Broker, BIN};

/// What bash would offer at the end of `words` (the command line after `mayfly`, the
/// last word being the one completed), with `MAYFLY_ADDR` set to `addr`.
fn complete(addr: &str, token: &str, words: &[&str]) -> Vec<String> {
    let out = Command::new(BIN)
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", words.len().to_string())
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .env("_CLAP_IFS", "\n")
        .env("MAYFLY_ADDR", addr)
        .env("MAYFLY_TOKEN", token)
        .arg("--")
        .arg("mayfly")
        .args(words)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "completion failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn target_and_identity_names_complete_from_the_broker() {
    let broker = Broker::start(BIN);
    broker.add_identity("alpha-loader", "team").await;
    broker.add_identity("beta-loader", "team").await;
    broker.add_token_target("alpha-api", &["*"]).await;
    broker.add_token_target("beta-api", &["*"]).await;

    let addr = broker.url("");
    assert_eq!(
        complete(&addr, &broker.token, &["target", "show", "al"]),
        ["alpha-api"]
    );
    assert_eq!(
        complete(&addr, &broker.token, &["request", "--target", "be"]),
        ["beta-api"]
    );
    // An empty word offers the names (and, as clap does, the flags).
    let offered = complete(&addr, &broker.token, &["identity", "show", ""]);
    let names: Vec<&String> = offered.iter().filter(|w| !w.starts_with('-')).collect();
    assert_eq!(names, ["alpha-loader", "beta-loader"]);
    // Without a broker to ask: nothing offered, nothing printed, no wait beyond the bound.
    let started = std::time::Instant::now();
    assert!(complete(
        "http://127.0.0.1:1",
        &broker.token,
        &["target", "show", "al"]
    )
    .is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}
