//! Redis and RabbitMQ targets through the broker, black-box: rules Redis refuses and a
//! vhost RabbitMQ lacks are refused when the target is created; a Redis credential from
//! `mayfly exec` works in its command (redis-cli reads REDISCLI_AUTH) and is gone after.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::{Broker, BIN};
use serde_json::json;

/// Whether the local Redis answers; under `MAYFLY_REQUIRE_SERVICES=1` it must.
fn redis_or_skip() -> bool {
    let up = std::net::TcpStream::connect("127.0.0.1:6379").is_ok();
    if !up {
        common::services::unavailable("brokers", "Redis at 127.0.0.1:6379", "connection refused");
    }
    up
}

#[tokio::test]
async fn redis_targets_are_checked_live_and_credentials_die_with_the_task() {
    if !redis_or_skip() {
        return;
    }
    let broker = Broker::start(BIN);
    broker.add_identity("etl", "team-data").await;
    let target = |name: &str, rules: &str| {
        json!({"name": name, "kind": "redis", "actions": ["read"], "default_ttl": "5m", "max_ttl": "1h",
               "allow": ["*"], "admin": "redis://127.0.0.1:6379",
               "settings": {"grants": {"read": rules}, "username_template": format!("mfx{}_{{{{identity}}}}_{{{{rand}}}}", &name[..3])}})
    };
    // `+nosuchcommand` parses offline but Redis refuses it.
    let (status, problem) = broker
        .post("/v1/targets", target("bad-cache", "~app:* +nosuchcommand"))
        .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["field"], "settings", "{problem}");
    let (status, body) = broker
        .post("/v1/targets", target("cache", "~app:* +get +ping"))
        .await;
    assert_eq!(status, 201, "{body}");

    let out = Command::new(BIN)
        .args(["exec", "--identity", "etl", "--target", "cache", "--purpose", "warm", "--"])
        .args(["sh", "-c", r#"redis-cli --no-auth-warning --user "$REDIS_USERNAME" ping && echo "$REDIS_USERNAME""#])
        .env("MAYFLY_ADDR", &broker.addr)
        .env("MAYFLY_TOKEN", &broker.token)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("PONG"), "{stdout}");
    let user = lines.next().unwrap().to_string();
    let users = Command::new("redis-cli")
        .args(["ACL", "USERS"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&users.stdout)
            .lines()
            .any(|u| u == user),
        "the Redis user {user} outlived its task"
    );
}
