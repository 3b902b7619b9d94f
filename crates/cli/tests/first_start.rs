//! State that cannot lock a newcomer out (issue 14's state traps): one rule for where data
//! lives, printed at start; a start that fails on configuration writes nothing; the first
//! operator token is stored only once it has been shown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mayfly");

/// `mayfly serve` with `args`, from `cwd`, with a clean environment for its settings.
fn serve(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .current_dir(cwd)
        .env_remove("MAYFLY_MASTER_KEY")
        .env_remove("MAYFLY_CONFIG")
        .env_remove("MAYFLY_DATA_DIR")
        .env_remove("MAYFLY_STORE")
        .env("MAYFLY_LOG", "warn");
    cmd
}

/// Runs a serve that must fail at start-up, with a bound on how long that may take.
fn failing(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("mayfly serve was expected to fail at start-up but kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Starts a serve that must come up; returns it and its stderr up to "listening on".
fn started(mut cmd: Command) -> (Child, Vec<String>) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.starts_with("mayfly: listening on ");
        lines.push(line);
        if done {
            return (child, lines);
        }
    }
    stop(child);
    panic!("mayfly serve did not start:\n{}", lines.join("\n"));
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn token_line(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| {
        l.trim()
            .strip_prefix("export MAYFLY_TOKEN=")
            .map(str::to_string)
    })
}

#[test]
fn a_start_that_fails_on_configuration_writes_nothing_and_the_next_one_shows_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("mayfly.toml");
    std::fs::write(&config, "[policy]\ndir = \"/nonexistent/policies\"\n").unwrap();
    let out = failing(serve(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/policies"), "{stderr}");
    assert!(
        !data.exists(),
        "nothing may be written before the configuration is known good: {:?}",
        std::fs::read_dir(&data).map(|d| d.count())
    );

    // Fixed configuration: a first start, with a token shown.
    std::fs::write(&config, "").unwrap();
    let (child, lines) = started(serve(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    ));
    stop(child);
    assert!(token_line(&lines).is_some(), "{lines:?}");
    assert!(data.join("master.key").exists() && data.join("mayfly.db").exists());
}

#[test]
fn relative_paths_in_the_file_are_the_files_and_the_data_dir_is_printed_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let elsewhere = dir.path().join("work");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let config = etc.join("mayfly.toml");
    std::fs::write(&config, "data_dir = \"state\"\n").unwrap();

    let (child, lines) = started(serve(&elsewhere, &["--config", config.to_str().unwrap()]));
    stop(child);
    let expected = format!("mayfly: data dir {}", etc.join("state").display());
    assert!(lines.contains(&expected), "{lines:?}");
    assert!(etc.join("state").join("mayfly.db").exists());
    assert!(
        !elsewhere.join("state").exists(),
        "nothing where it was started from"
    );

    // Started again from another directory: the same state (no new first-start token).
    let (child, lines) = started(serve(dir.path(), &["--config", config.to_str().unwrap()]));
    stop(child);
    assert!(lines.contains(&expected), "{lines:?}");
    assert!(
        token_line(&lines).is_none(),
        "same broker, no new token: {lines:?}"
    );
}
