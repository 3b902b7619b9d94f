//! What each command's `--help` offers: `serve` lists only server options; the client
//! options (`--addr`, `--token`, `--output`) belong to the commands that talk to a broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn mayfly(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mayfly"))
        .args(args)
        .env_remove("MAYFLY_TOKEN")
        .output()
        .unwrap()
}

fn help(args: &[&str]) -> String {
    let out = mayfly(args);
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

// `--token ` with its space: `--token-max-ttl` is a server option.
const CLIENT_FLAGS: &[&str] = &[
    "--addr",
    "--token ",
    "--output",
    "MAYFLY_ADDR",
    "MAYFLY_OUTPUT",
];

#[test]
fn serve_help_lists_only_server_options() {
    let text = help(&["serve", "--help"]);
    for flag in CLIENT_FLAGS {
        assert!(!text.contains(flag), "serve --help lists {flag}:\n{text}");
    }
    for flag in [
        "--listen",
        "--config",
        "--durability",
        "--provider-timeout",
        "--http-header-timeout",
        "--log-format",
        "MAYFLY_PROVIDER_TIMEOUT",
        "crash-safe",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }
    // Not accepted either, so a client flag given to `serve` is not silently ignored.
    let out = mayfly(&["serve", "--token", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
}

#[test]
fn client_commands_list_the_client_options() {
    for args in [
        &["leases", "--help"][..],
        &["identity", "list", "--help"],
        &["policy", "explain", "--help"],
        &["audit", "verify", "--help"],
    ] {
        let text = help(args);
        for flag in CLIENT_FLAGS {
            assert!(text.contains(flag), "{args:?} lacks {flag}:\n{text}");
        }
    }
    // Offline commands print, but talk to no broker.
    let text = help(&["policy", "validate", "--help"]);
    assert!(text.contains("--output"), "{text}");
    assert!(!text.contains("--token "), "{text}");
}
