//! Issue+revoke pairs per second through the Redis and RabbitMQ providers, each beside the
//! raw cost of the same commands on the same server in the same run:
//!
//! - Redis: the provider's `plan` + `issue` + `revoke`, against `ACL SETUSER … ; ACL
//!   DELUSER …` over one open connection;
//! - RabbitMQ: the provider's, against `PUT /api/users/{u}`, `PUT /api/permissions/{v}/{u}`
//!   and `DELETE /api/users/{u}` over one keep-alive HTTP client.
//!
//! `cargo bench -p mayfly-providers --bench broker_pairs` (`BROKER_PAIRS_ROUNDS`, default
//! 30 rounds of 10 pairs each; rounds alternate between provider and raw, so drift hits
//! both alike). Prints pairs/s and the ratio (target >= 0.8). A server that is down is
//! skipped with a line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mayfly_core::model::{Grant, GrantState, Identity, IdentityKind, Lease, LeaseState, Target};
use mayfly_core::provider::{IssueRequest, Provider, TargetAccess};
use mayfly_core::secret::SecretString;
use mayfly_providers::redis::{Client, Endpoint, Reply};
use mayfly_providers::{RabbitMqProvider, RedisProvider};
use time::OffsetDateTime;

const MANAGEMENT: &str = "http://127.0.0.1:15672";

fn target(kind: &str, name: &str, settings: serde_json::Value) -> Target {
    Target {
        name: name.into(),
        kind: kind.into(),
        actions: vec!["read".into()],
        default_ttl: "1h".parse().unwrap(),
        max_ttl: "1h".parse().unwrap(),
        allow: vec![],
        settings,
        created_at: OffsetDateTime::now_utc(),
    }
}

fn identity() -> Identity {
    Identity {
        id: "bench".into(),
        kind: IdentityKind::Service,
        owner: "o".into(),
        purpose: "p".into(),
        expires_at: None,
        labels: BTreeMap::new(),
        enabled: true,
        created_at: OffsetDateTime::now_utc(),
    }
}

fn grant(target: &Target) -> Grant {
    let now = OffsetDateTime::now_utc();
    Grant {
        id: uuid::Uuid::new_v4(),
        identity: "bench".into(),
        owner: "o".into(),
        target: target.name.clone(),
        action: "read".into(),
        purpose: "p".into(),
        task: "t".into(),
        requested_ttl: "1h".parse().unwrap(),
        granted_ttl: Some("1h".parse().unwrap()),
        context: serde_json::Value::Null,
        state: GrantState::Issued,
        revocation_reason: None,
        decision: serde_json::Value::Null,
        created_at: now,
        updated_at: now,
    }
}

/// plan + issue + revoke, as the server does them.
async fn provider_pair(p: &dyn Provider, target: &Target, admin: &SecretString) {
    let access = TargetAccess {
        target,
        admin: Some(admin),
    };
    let (identity, grant) = (identity(), grant(target));
    let issued_at = OffsetDateTime::now_utc();
    let expires_at = issued_at + time::Duration::hours(1);
    let lease_id = uuid::Uuid::new_v4();
    let null = serde_json::Value::Null;
    let request = |plan| IssueRequest {
        grant: &grant,
        identity: &identity,
        target: access,
        lease_id,
        issued_at,
        expires_at,
        plan,
    };
    let plan = p.plan(&request(&null)).unwrap();
    let cred = p.issue(request(&plan)).await.unwrap();
    let lease = Lease {
        id: lease_id,
        grant_id: grant.id,
        kind: target.kind.clone(),
        identity: "bench".into(),
        target: target.name.clone(),
        task: "t".into(),
        issued_at,
        expires_at,
        max_expires_at: expires_at,
        state: LeaseState::Revoking,
        revocation_reason: None,
        external: true,
        provider_state: cred.provider_state,
        revoke_attempts: 0,
        last_error: None,
    };
    p.revoke(&lease, access).await.unwrap();
}

async fn up(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Alternates `rounds` rounds of 10 provider pairs and 10 raw pairs; prints the rates.
async fn compare<P, R>(name: &str, rounds: u32, mut provider: P, mut raw: R)
where
    P: AsyncFnMut(),
    R: AsyncFnMut(),
{
    let per_round = 10;
    let (mut provider_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            provider().await;
        }
        provider_time += t.elapsed();
        let t = Instant::now();
        for _ in 0..per_round {
            raw().await;
        }
        raw_time += t.elapsed();
    }
    let n = f64::from(rounds * per_round);
    let provider_rate = n / provider_time.as_secs_f64();
    let raw_rate = n / raw_time.as_secs_f64();
    println!(
        "{name}: provider {provider_rate:.1} pairs/s, raw {raw_rate:.1} pairs/s, ratio {:.2} (target >= 0.80), {} pairs each",
        provider_rate / raw_rate,
        rounds * per_round
    );
}

async fn redis(rounds: u32) {
    if !up("127.0.0.1:6379").await {
        eprintln!("SKIPPED: broker_pairs redis — 127.0.0.1:6379 unreachable");
        return;
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let prefix = format!("rfb{suffix}_");
    let admin_user = format!("{prefix}admin");
    let password = format!("Adm{}", uuid::Uuid::new_v4().simple());
    let mut su = Client::connect(&Endpoint::parse("redis://127.0.0.1:6379").unwrap())
        .await
        .unwrap()
        .unwrap();
    let pw = format!(">{password}");
    let setup = [
        "ACL",
        "SETUSER",
        &admin_user,
        "on",
        &pw,
        "-@all",
        "+acl",
        "+client|kill",
        "+ping",
    ];
    assert_eq!(su.cmd(&setup).await.unwrap(), Reply::Status("OK".into()));
    let admin = SecretString::new(format!("redis://{admin_user}:{password}@127.0.0.1:6379"));
    let t = target(
        "redis",
        &format!("bench-{suffix}"),
        serde_json::json!({
            "username_template": format!("{prefix}{{{{identity}}}}_{{{{rand}}}}"),
            "grants": {"read": "~app:* +get +mget"},
        }),
    );
    let p = RedisProvider::new();
    let hash = mayfly_providers::verifier::redis_sha256(&SecretString::new(
        "Abcdefghijklmnopqrstuvwxyz012345".into(),
    ));
    let mut raw = Client::connect(&Endpoint::parse(admin.expose()).unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut counter = 0u64;
    compare(
        "redis_pairs",
        rounds,
        async || provider_pair(&p, &t, &admin).await,
        async || {
            counter += 1;
            let name = format!("{prefix}raw_{counter}");
            let create = [
                "ACL",
                "SETUSER",
                &name,
                "on",
                hash.expose(),
                "resetkeys",
                "resetchannels",
                "-@all",
                "~app:*",
                "+get",
                "+mget",
            ];
            assert_eq!(raw.cmd(&create).await.unwrap(), Reply::Status("OK".into()));
            assert_eq!(
                raw.cmd(&["ACL", "DELUSER", &name]).await.unwrap(),
                Reply::Int(1)
            );
        },
    )
    .await;
    if let Reply::Array(Some(users)) = su.cmd(&["ACL", "USERS"]).await.unwrap() {
        for u in users.iter().filter_map(Reply::text) {
            if u.starts_with(&prefix) {
                su.cmd(&["ACL", "DELUSER", &u]).await.unwrap();
            }
        }
    }
}

async fn rabbitmq(rounds: u32) {
    if !up("127.0.0.1:15672").await {
        eprintln!("SKIPPED: broker_pairs rabbitmq — management API on 127.0.0.1:15672 unreachable");
        return;
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let prefix = format!("qfb{suffix}_");
    let admin_user = format!("{prefix}admin");
    let password = format!("Adm{}", uuid::Uuid::new_v4().simple());
    let http = reqwest::Client::new();
    let api = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let mut req = http
            .request(method, format!("{MANAGEMENT}/api/{path}"))
            .basic_auth("guest", Some("guest"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let status = req.send().await.unwrap().status();
            assert!(status.is_success(), "{status}");
        }
    };
    api(
        reqwest::Method::PUT,
        format!("users/{admin_user}"),
        Some(serde_json::json!({"password": password, "tags": "administrator"})),
    )
    .await;
    let admin = SecretString::new(format!("http://{admin_user}:{password}@127.0.0.1:15672"));
    let perms = serde_json::json!({"configure": "", "write": "", "read": "^jobs$"});
    let t = target(
        "rabbitmq",
        &format!("bench-{suffix}"),
        serde_json::json!({
            "username_template": format!("{prefix}{{{{identity}}}}_{{{{rand}}}}"),
            "grants": {"read": {"permissions": {"/": perms}}},
        }),
    );
    let p = RabbitMqProvider::new();
    let hash = mayfly_providers::verifier::rabbitmq_sha256(&SecretString::new(
        "Abcdefghijklmnopqrstuvwxyz012345".into(),
    ))
    .unwrap();
    let mut counter = 0u64;
    compare(
        "rabbitmq_pairs",
        rounds,
        async || provider_pair(&p, &t, &admin).await,
        async || {
            counter += 1;
            let name = format!("{prefix}raw_{counter}");
            api(
                reqwest::Method::PUT,
                format!("users/{name}"),
                Some(serde_json::json!({"password_hash": hash.expose(),
                    "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""})),
            )
            .await;
            api(
                reqwest::Method::PUT,
                format!("permissions/%2F/{name}"),
                Some(perms.clone()),
            )
            .await;
            api(reqwest::Method::DELETE, format!("users/{name}"), None).await;
        },
    )
    .await;
    api(reqwest::Method::DELETE, format!("users/{admin_user}"), None).await;
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    let rounds = std::env::var("BROKER_PAIRS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        redis(rounds).await;
        rabbitmq(rounds).await;
    });
}
