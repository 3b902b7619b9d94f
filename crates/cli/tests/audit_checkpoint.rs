//! Signed checkpoints against the database's own administrator: a chain rewritten and
//! rehashed in the SQLite file (every later hash and the head row recomputed exactly as the
//! store computes them) still verifies as a chain, and fails against a checkpoint taken
//! before the rewrite. A malformed or forged checkpoint is refused in one line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{store_url, Broker, BIN};
use mayfly_core::audit::{hash_entry, AuditEvent};
use serde_json::Value;
use sqlx::Connection;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn verify_offline(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["audit", "verify", "--store", &store_url(dir)])
        .args(extra)
        .output()
        .unwrap()
}

/// Rewrites entry `seq` (its detail says something else now) and relinks and rehashes it,
/// every entry after it and the head row, as the store itself would have written them.
async fn rewrite_and_rehash(dir: &std::path::Path, seq: u64) {
    let mut conn = sqlx::SqliteConnection::connect(&store_url(dir))
        .await
        .unwrap();
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT seq, body, hash FROM audit WHERE seq >= ?1 ORDER BY seq")
            .bind(seq as i64)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert!(rows.len() > 1, "entries after the rewritten one");
    let mut prev: Option<String> = None;
    for (row_seq, body, hash) in rows {
        let mut event = AuditEvent::from_stored(&body, &hash).unwrap();
        if row_seq as u64 == seq {
            event.detail["rewritten"] = Value::String("nothing to see here".into());
        }
        if let Some(prev) = &prev {
            event.prev_hash = prev.clone();
        }
        let body = event.canonical_body();
        let hash = hash_entry(&body);
        sqlx::query("UPDATE audit SET body = ?1, hash = ?2 WHERE seq = ?3")
            .bind(&body)
            .bind(&hash)
            .bind(row_seq)
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")
            .bind(row_seq)
            .bind(&hash)
            .execute(&mut conn)
            .await
            .unwrap();
        prev = Some(hash);
    }
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_rehashed_rewrite_fails_against_an_earlier_checkpoint() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    broker.add_token_target("api", &["svc"]).await;
    for i in 0..3 {
        broker.grant("svc", "api", &format!("t{i}"), "10m").await;
    }
    // Taken now, kept outside the database.
    let out = broker.cli(&["audit", "checkpoint", "--new"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let checkpoint: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let seq = checkpoint["seq"].as_u64().unwrap();
    assert!(seq > 4, "{checkpoint}");
    assert_eq!(checkpoint["jws"].as_str().unwrap().split('.').count(), 3);
    let kept = broker.dir.join("checkpoint.json");
    std::fs::write(&kept, stdout(&out)).unwrap();
    let kept = kept.to_str().unwrap().to_string();

    // GET gives the latest taken; its key is the audit key, not a token key.
    let latest = broker.get("/v1/audit/checkpoint").await;
    assert_eq!(latest["seq"], checkpoint["seq"]);
    let audit_keys = broker.get("/v1/audit/keys").await;
    assert_eq!(audit_keys["keys"][0]["use"], "audit");
    assert_eq!(audit_keys["keys"][0]["kid"], checkpoint["kid"]);
    let jwks = broker.get("/.well-known/jwks.json").await;
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kid"] != checkpoint["kid"] && k["use"] == "sig"),
        "the audit key signs no token: {jwks}"
    );

    // The chain goes on after the checkpoint.
    for i in 3..5 {
        broker.grant("svc", "api", &format!("t{i}"), "10m").await;
    }
    let out = broker.cli(&["audit", "verify", "--checkpoint", &kept, "-o", "json"]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["checkpoint"]["seq"], seq);
    assert_eq!(report["checkpoint"]["covered"], true);
    assert!(report["entries"].as_u64().unwrap() > seq);

    let (dir, _) = broker.kill();
    let out = verify_offline(&dir, &["--checkpoint", &kept]);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("covered"), "{}", stdout(&out));

    // The attack: rewrite an entry the checkpoint covers, rehash everything after it.
    rewrite_and_rehash(&dir, seq - 2).await;

    // The chain alone cannot tell: it links up and matches its head.
    let out = verify_offline(&dir, &["-o", "json"]);
    assert!(out.status.success(), "plain verify: {}", stdout(&out));
    let plain: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(plain["first_break"], Value::Null);
    assert!(
        plain.get("checkpoint").is_none(),
        "shape unchanged: {plain}"
    );

    // The checkpoint can.
    let out = verify_offline(&dir, &["--checkpoint", &kept, "-o", "json"]);
    assert_eq!(out.status.code(), Some(8), "{}", stdout(&out));
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["first_break"]["problem"], "checkpoint_mismatch");
    assert_eq!(report["first_break"]["seq"], seq);
    assert_eq!(report["checkpoint"]["covered"], false);
    let out = verify_offline(&dir, &["--checkpoint", &kept]);
    assert_eq!(out.status.code(), Some(8));
    let text = stdout(&out);
    assert!(
        text.starts_with(&format!(
            "audit chain BROKEN at entry {seq}: checkpoint_mismatch"
        )),
        "{text}"
    );
    assert!(text.contains("was rewritten"), "{text}");
}

#[tokio::test]
async fn a_malformed_or_forged_checkpoint_is_refused_in_one_line() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    let out = broker.cli(&["audit", "checkpoint"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let good: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let (dir, _) = broker.kill();

    let jws = good["jws"].as_str().unwrap().to_string();
    let mut parts: Vec<String> = jws.split('.').map(String::from).collect();
    // Flip the signature's first character to another base64url one.
    let flipped = if parts[2].starts_with('A') { "B" } else { "A" };
    parts[2].replace_range(0..1, flipped);
    let bad_signature = {
        let mut c = good.clone();
        c["jws"] = Value::String(parts.join("."));
        c
    };
    let moved_seq = {
        let mut c = good.clone();
        c["seq"] = Value::from(good["seq"].as_u64().unwrap() + 1);
        c
    };
    let cases: [(&str, String, &str); 5] = [
        ("garbage", "not json at all".into(), "not a Mayfly audit checkpoint"),
        ("missing field", r#"{"seq": 1}"#.into(), "not a Mayfly audit checkpoint"),
        (
            "not a jws",
            serde_json::json!({"seq": 1, "hash": "00", "at": "2026-01-01T00:00:00Z", "kid": "k", "jws": "x"}).to_string(),
            "not a compact JWS",
        ),
        ("bad signature", bad_signature.to_string(), "forged or altered"),
        ("fields altered", moved_seq.to_string(), "altered"),
    ];
    for (name, text, expected) in cases {
        let file = dir.join(format!("{}.json", name.replace(' ', "-")));
        std::fs::write(&file, text).unwrap();
        let out = verify_offline(&dir, &["--checkpoint", file.to_str().unwrap()]);
        assert!(!out.status.success(), "{name}: accepted");
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        assert!(err.contains(expected), "{name}: {err}");
    }
    // A file that is not there is an error too, before the store is opened.
    let out = verify_offline(&dir, &["--checkpoint", "/nonexistent/checkpoint.json"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read checkpoint"),
        "{}",
        stderr(&out)
    );
}
