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

/// `--log-format json`: every line on stderr is a JSON object (the start-up notes and a
/// failed start included), and the first operator token is not among them: it goes to the
/// terminal, or without one (as here, under the test harness) to a file only the broker's
/// user can read. The token there works.
#[test]
fn json_logs_are_json_on_every_line_and_the_first_token_stays_out_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut cmd = serve(
        dir.path(),
        &["--log-format", "json", "--data-dir", data.to_str().unwrap()],
    );
    cmd.env("MAYFLY_LOG", "info");
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut events = Vec::new();
    let mut url = None;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        assert!(!line.contains("mfy_op_"), "the token is in the log: {line}");
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let fields = &event["fields"];
        if fields["message"] == "listening" {
            url = fields["url"].as_str().map(str::to_string);
        }
        events.push(event);
        if url.is_some() {
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("no `listening` event in {events:?}"));
    let on_terminal = events.iter().any(|e| {
        e["fields"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("shown on the terminal")
    });
    if !on_terminal {
        let file = data.join("first-operator-token");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
        let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
        assert!(token.starts_with("mfy_op_"));
        let whoami = Command::new(BIN)
            .args(["identity", "whoami", "--addr", &url])
            .env("MAYFLY_TOKEN", &token)
            .output()
            .unwrap();
        assert!(
            whoami.status.success(),
            "the token from the file is refused: {}",
            String::from_utf8_lossy(&whoami.stderr)
        );
    }
    stop(child);

    // A start that fails is a JSON line too, and a non-zero exit.
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[policy]\ndir = \"/nonexistent\"\n").unwrap();
    let out = failing(serve(
        dir.path(),
        &[
            "--log-format",
            "json",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            dir.path().join("other").to_str().unwrap(),
        ],
    ));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.trim().is_empty());
    for line in stderr.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert_eq!(event["level"], "ERROR", "{line}");
        assert!(
            event["fields"]["error"]
                .as_str()
                .unwrap()
                .contains("/nonexistent"),
            "{line}"
        );
    }
}
