//! `mayfly store migrate`: an embedded SQLite deployment moves to PostgreSQL with every
//! record and the audit chain entry for entry, and the broker serves from it afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::pg::superuser_or_skip;
use common::{store_url, suffix, Broker, Options, BIN};
use serde_json::Value;
use sqlx::Executor;

#[tokio::test]
async fn sqlite_deployment_moves_to_postgres_intact() {
    let Some(mut su) = superuser_or_skip("store migrate").await else {
        return;
    };
    let db = format!("mayfly_mig_{}", suffix());
    su.execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .unwrap();
    let pg_url = format!("postgres://postgres@127.0.0.1:5432/{db}");

    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    broker.add_token_target("api", &["svc"]).await;
    let issued = broker.grant("svc", "api", "before-move", "30m").await;
    let token = issued["credential"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let (dir, operator) = broker.kill();

    let out = std::process::Command::new(BIN)
        .args([
            "store",
            "migrate",
            "--from",
            &store_url(&dir),
            "--to",
            &pg_url,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("audit chain on the target: intact"),
        "{stdout}"
    );
    // A second run refuses: the target is no longer empty.
    let again = std::process::Command::new(BIN)
        .args([
            "store",
            "migrate",
            "--from",
            &store_url(&dir),
            "--to",
            &pg_url,
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());

    // The broker now runs on PostgreSQL with the same master key (same data dir): the
    // grant, its lease, the signing key and the whole chain came along.
    let config = format!("store = \"{pg_url}\"\n");
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            config: Some(config),
            token: Some(operator),
            ..Options::default()
        },
    );
    let grant = broker
        .get(&format!(
            "/v1/grants/{}",
            issued["grant"]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(grant["state"], "issued");
    let introspected = broker.introspect(&token).await;
    assert_eq!(
        introspected["active"], true,
        "a token signed before the move still verifies"
    );
    broker.grant("svc", "api", "after-move", "5m").await;
    let report = broker.get("/v1/audit/verify").await;
    assert_eq!(report["first_break"], Value::Null, "{report}");
    drop(broker);
    su.execute(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)").as_str())
        .await
        .unwrap();
}
