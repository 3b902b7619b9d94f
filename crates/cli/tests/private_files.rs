//! The embedded store's files are the owner's alone: a fresh start creates them so, and a
//! start refuses a master key or database that group or others can access.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{eventually_blocking, Broker, Options, BIN};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `mayfly serve` on `dir`, which must refuse to start; returns what it printed.
fn refused_start(dir: &Path) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("MAYFLY_MASTER_KEY")
        .env_remove("MAYFLY_CONFIG")
        .env_remove("MAYFLY_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = eventually_blocking(Duration::from_secs(30), || child.try_wait().unwrap())
    else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "mayfly serve started on {}, which it must refuse",
            dir.display()
        );
    };
    assert!(!status.success());
    let mut printed = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut printed)
        .unwrap();
    printed
}

#[test]
fn data_files_are_private_and_exposed_ones_are_refused() {
    let parent = tempfile::tempdir().unwrap();
    // Not there yet: the broker creates it.
    let dir = parent.path().join("data");
    let broker = Broker::start_in(BIN, &dir, Options::default());
    assert_eq!(mode(&dir), 0o700, "data directory");
    for file in ["mayfly.db", "mayfly.db-wal", "mayfly.db-shm", "master.key"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    let (dir, token) = broker.kill();

    for (file, exposed) in [
        ("master.key", 0o644),
        ("master.key", 0o620),
        ("mayfly.db", 0o644),
        ("mayfly.db-wal", 0o604),
        ("mayfly.db-shm", 0o640),
    ] {
        let path = dir.join(file);
        chmod(&path, exposed);
        let printed = refused_start(&dir);
        let fix = format!("run `chmod 600 {}`", path.display());
        let line = printed
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{file} {exposed:o}: no error line in {printed:?}"));
        assert!(
            line.contains(&format!(
                "{}: group or others can access it",
                path.display()
            )) && line.contains(&format!("(mode {exposed:04o})"))
                && line.ends_with(&fix),
            "{file} {exposed:o}: {printed}"
        );
        chmod(&path, 0o600);
    }

    // Put right, it starts again on the same files.
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token),
            ..Options::default()
        },
    );
    assert_eq!(mode(&dir.join("mayfly.db")), 0o600);
    broker.kill();
}
