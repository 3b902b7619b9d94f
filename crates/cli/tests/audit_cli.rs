//! The CLI as users run it, and the audit chain's tamper evidence on the real database.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{store_url, Broker, Options, BIN};
use serde_json::Value;
use sqlx::Connection;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn cli_walkthrough_and_json_output() {
    let broker = Broker::start(BIN);
    let ok = |o: std::process::Output| {
        assert!(
            o.status.success(),
            "stdout: {}\nstderr: {}",
            stdout(&o),
            stderr(&o)
        );
        o
    };
    ok(broker.cli(&[
        "identity",
        "add",
        "billing-deployer",
        "--kind",
        "pipeline",
        "--owner",
        "team-billing",
        "--purpose",
        "deploys billing",
        "--label",
        "env=prod",
    ]));
    ok(broker.cli(&[
        "target",
        "add",
        "billing-api",
        "--kind",
        "token",
        "--action",
        "deploy",
        "--max-ttl",
        "1h",
        "--allow",
        "billing-deployer",
    ]));
    let token = stdout(&ok(broker.cli(&[
        "request",
        "--identity",
        "billing-deployer",
        "--target",
        "billing-api",
        "--purpose",
        "release 1.2",
        "--task",
        "rel-1.2",
        "--ttl",
        "15m",
        "--token-only",
    ])));
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");

    let listed = stdout(&ok(broker.cli(&["identity", "list", "--output", "json"])));
    let first: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "billing-deployer");
    assert_eq!(first["labels"]["env"], "prod");
    let table = stdout(&ok(broker.cli(&["leases"])));
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("rel-1.2") && table.contains("active"),
        "{table}"
    );
    let grants: Vec<Value> = stdout(&ok(broker.cli(&["grants", "-o", "json"])))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(grants.len(), 1);
    let introspected = stdout(&ok(broker.cli(&["introspect", token.trim(), "-o", "json"])));
    assert!(introspected.contains("\"active\":true"), "{introspected}");

    let revoked = stdout(&ok(broker.cli(&[
        "revoke",
        "--task",
        "rel-1.2",
        "--reason",
        "task_complete",
    ])));
    assert_eq!(revoked.trim(), "revoked 1 lease(s)");
    let story: Vec<Value> = stdout(&ok(
        broker.cli(&["audit", "list", "--task", "rel-1.2", "-o", "json"])
    ))
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let kinds: Vec<&str> = story.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "grant.requested",
            "grant.decided",
            "lease.issued",
            // The introspection above: a use of the token.
            "token.introspected",
            "lease.revoked"
        ]
    );
    let verified = stdout(&ok(broker.cli(&["audit", "verify"])));
    assert!(verified.starts_with("audit chain intact"), "{verified}");
    let completions = stdout(&ok(broker.cli(&["completions", "bash"])));
    assert!(completions.contains("mayfly"));

    // Errors: one plain line and a non-zero exit.
    let bad = broker.cli(&[
        "request",
        "--identity",
        "billing-deployer",
        "--target",
        "billing-api",
        "--purpose",
        "x",
        "--task",
        "t",
        "--action",
        "drop-tables",
    ]);
    assert!(!bad.status.success());
    let err = stderr(&bad);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: action: \"drop-tables\" is not an action"),
        "{err}"
    );
    let bad_ttl = broker.cli(&[
        "request",
        "--target",
        "x",
        "--purpose",
        "x",
        "--task",
        "t",
        "--ttl",
        "-5m",
    ]);
    assert!(!bad_ttl.status.success());
    let unreachable = std::process::Command::new(BIN)
        .args(["grants"])
        .env("MAYFLY_ADDR", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(
        stderr(&unreachable).starts_with("error: cannot reach mayfly at http://127.0.0.1:9"),
        "{}",
        stderr(&unreachable)
    );
    let no_token = std::process::Command::new(BIN)
        .args(["grants"])
        .env("MAYFLY_ADDR", &broker.addr)
        .env_remove("MAYFLY_TOKEN")
        .output()
        .unwrap();
    assert!(!no_token.status.success());
    assert!(stderr(&no_token).contains("401"), "{}", stderr(&no_token));
}

async fn tamper(dir: &std::path::Path, sql: &str) {
    let mut conn = sqlx::SqliteConnection::connect(&store_url(dir))
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// Puts the backup back; the killed broker's WAL belongs to the tampered file, so it goes.
fn restore(backup: &std::path::Path, dir: &std::path::Path) {
    let _ = std::fs::remove_file(dir.join("mayfly.db-wal"));
    let _ = std::fs::remove_file(dir.join("mayfly.db-shm"));
    std::fs::copy(backup, dir.join("mayfly.db")).unwrap();
}

fn verify_offline(dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify", "--store", &store_url(dir), "-o", "json"])
        .output()
        .unwrap();
    (out.status.success(), stdout(&out))
}

#[tokio::test]
async fn tampering_with_the_audit_chain_is_detected() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    broker.add_token_target("api", &["svc"]).await;
    for i in 0..5 {
        broker.grant("svc", "api", &format!("t{i}"), "10m").await;
    }
    let (dir, token) = broker.kill();
    // Fold the WAL into the main file so a plain file copy is a complete backup.
    tamper(&dir, "PRAGMA wal_checkpoint(TRUNCATE)").await;
    let (ok, report) = verify_offline(&dir);
    assert!(ok, "{report}");
    let total: Value = serde_json::from_str(&report).unwrap();
    let last = total["last_seq"].as_u64().unwrap();
    assert!(last > 10);

    // Edit one entry's content: named as edited.
    let backup = dir.join("backup.db");
    std::fs::copy(dir.join("mayfly.db"), &backup).unwrap();
    tamper(&dir, "UPDATE audit SET body = replace(body, '\"t2\"', '\"t9\"') WHERE seq = (SELECT min(seq) FROM audit WHERE task = 't2')").await;
    let (ok, report) = verify_offline(&dir);
    assert!(!ok, "edit not detected");
    let v: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["first_break"]["problem"], "edited", "{report}");

    // The running broker reports it too, and the CLI exits non-zero with the entry named.
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token.clone()),
            ..Options::default()
        },
    );
    let out = broker.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(8), "exit code 8: a check failed");
    assert!(
        stdout(&out).starts_with("audit chain BROKEN at entry"),
        "{}",
        stdout(&out)
    );
    let (dir, _) = broker.kill();

    // Delete an entry in the middle.
    restore(&backup, &dir);
    tamper(&dir, "DELETE FROM audit WHERE seq = 4").await;
    let (ok, report) = verify_offline(&dir);
    assert!(!ok);
    let v: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        (
            v["first_break"]["problem"].as_str(),
            v["first_break"]["seq"].as_u64()
        ),
        (Some("deleted"), Some(5)),
        "{report}"
    );

    // Cut entries off the end: the recorded head gives it away.
    restore(&backup, &dir);
    tamper(&dir, &format!("DELETE FROM audit WHERE seq > {}", last - 2)).await;
    let (ok, report) = verify_offline(&dir);
    assert!(!ok);
    let v: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["first_break"]["problem"], "truncated", "{report}");

    // File an entry under another task: the hashed body is untouched, but the entry drops
    // out of `audit list --task t2`. Verification names the entry and the column.
    restore(&backup, &dir);
    let mut conn = sqlx::SqliteConnection::connect(&store_url(&dir))
        .await
        .unwrap();
    let refiled: i64 = sqlx::query_scalar("SELECT min(seq) FROM audit WHERE task = 't2'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    tamper(
        &dir,
        &format!("UPDATE audit SET task = 't3' WHERE seq = {refiled}"),
    )
    .await;
    let (ok, report) = verify_offline(&dir);
    assert!(!ok, "re-filing not detected: {report}");
    let v: Value = serde_json::from_str(&report).unwrap();
    let b = &v["first_break"];
    assert_eq!(
        (
            b["problem"].as_str(),
            b["seq"].as_i64(),
            b["column"].as_str()
        ),
        (Some("column_edited"), Some(refiled), Some("task")),
        "{report}"
    );
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token.clone()),
            ..Options::default()
        },
    );
    let listed = broker.audit("task=t2").await;
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|e| e["seq"].as_i64() != Some(refiled)),
        "{listed:?}"
    );
    let out = broker.cli(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(8), "{}", stdout(&out));
    assert!(
        stdout(&out).starts_with(&format!(
            "audit chain BROKEN at entry {refiled}: column_edited (column task)"
        )),
        "{}",
        stdout(&out)
    );
    broker.kill();
}

#[tokio::test]
async fn the_database_alone_does_not_unlock_stored_secrets() {
    let broker = Broker::start(BIN);
    let (dir, _) = broker.kill();
    let key_file = std::fs::read_to_string(dir.join("master.key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "master key must be private to its owner"
        );
    }
    // The store holds the signing key only sealed: with another master key it cannot be
    // opened, and the broker refuses to start rather than mint a new identity silently.
    let other = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    assert_ne!(key_file.trim(), other);
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("MAYFLY_MASTER_KEY", other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("another master key"), "{err}");
    assert!(
        !err.contains(other) && !err.contains(key_file.trim()),
        "a key was printed: {err}"
    );
    let db = std::fs::read(dir.join("mayfly.db")).unwrap();
    assert!(!db
        .windows(key_file.trim().len())
        .any(|w| w == key_file.trim().as_bytes()));
}
