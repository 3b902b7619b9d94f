//! Dynamic PostgreSQL credentials through the running broker, against the real server:
//! issued logins connect and can do exactly what the grant allows, die at revocation and
//! at TTL, revocation is retried while the target refuses, stray users are reconciled, and
//! a crash between write-ahead and creation, or between creation and commit, leaves no
//! orphan after restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::pg::{broker_crashing_at, superuser_or_skip, PgFixture};
use common::{eventually, eventually_every, Broker, Options, BIN};
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

async fn wait_state(broker: &Broker, lease: &str, state: &str) -> Value {
    wait_lease(broker, lease, &format!("became {state}"), |l| {
        l["state"] == state
    })
    .await
}

/// The lease once `holds` is true of it (within 10 s), else a failure saying `what`.
async fn wait_lease(
    broker: &Broker,
    lease: &str,
    what: &str,
    holds: impl Fn(&Value) -> bool,
) -> Value {
    eventually(Duration::from_secs(10), || async {
        let last = broker.get(&format!("/v1/leases/{lease}")).await;
        if holds(&last) {
            Ok(last)
        } else {
            Err(last)
        }
    })
    .await
    .unwrap_or_else(|last| panic!("lease {lease} never {what}: {last}"))
}

/// Points target `pg` back at the fixture's own settings (undoing a test's breakage).
async fn restore_settings(broker: &Broker, f: &PgFixture) {
    let (status, body, _) = broker
        .call(
            reqwest::Method::PATCH,
            "/v1/targets/pg",
            Some(&broker.token),
            Some(json!({"settings": f.target("pg")["settings"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn request(broker: &Broker, action: &str, ttl: &str, task: &str) -> Value {
    let (status, body) = broker
        .post("/v1/grants", json!({"identity": "etl", "target": "pg", "action": action, "purpose": "nightly load", "task": task, "ttl": ttl}))
        .await;
    assert_eq!(status, 201, "{body}");
    body
}

#[tokio::test]
async fn postgres_credentials_live_and_die_with_their_lease() {
    let Some(mut su) = superuser_or_skip("dynamic postgres credentials").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "dyn").await;
    let (broker, target) = common::pg::broker_with_target(&f, "etl", "team-data").await;
    assert!(
        !target.to_string().contains("pw_"),
        "the admin secret came back: {target}"
    );

    // A read grant connects, can SELECT, cannot INSERT.
    let read = request(&broker, "read", "10m", "load-1").await;
    let dsn = read["credential"]["dsn"].as_str().unwrap().to_string();
    let username = read["credential"]["username"].as_str().unwrap().to_string();
    assert!(username.starts_with(&f.prefix), "{username}");
    assert_eq!(read["lease"]["state"], "active");
    let mut session = PgConnection::connect(&dsn).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM app.items")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(
        session
            .execute("INSERT INTO app.items VALUES (2)")
            .await
            .is_err(),
        "read grant could write"
    );
    let until: Option<String> =
        sqlx::query_scalar("SELECT rolvaliduntil::text FROM pg_roles WHERE rolname = $1")
            .bind(&username)
            .fetch_one(&mut su)
            .await
            .unwrap();
    assert!(until.is_some(), "VALID UNTIL is the second safety net");

    // A write grant can INSERT.
    let write = request(&broker, "write", "10m", "load-2").await;
    let mut writer = PgConnection::connect(write["credential"]["dsn"].as_str().unwrap())
        .await
        .unwrap();
    writer
        .execute("INSERT INTO app.items VALUES (3)")
        .await
        .unwrap();
    writer.close().await.unwrap();

    // Revoke: the open session is terminated, new logins fail, the user is gone.
    let (status, _) = broker
        .post(
            &format!(
                "/v1/grants/{}/revoke",
                read["grant"]["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    wait_state(&broker, read["lease"]["id"].as_str().unwrap(), "revoked").await;
    assert!(
        sqlx::query("SELECT 1").execute(&mut session).await.is_err(),
        "an open session survived revocation"
    );
    assert!(
        PgConnection::connect(&dsn).await.is_err(),
        "a revoked login still connects"
    );
    assert!(!f.users(&mut su).await.contains(&username));

    // TTL: the expiry scheduler hands the lease to the revocation worker, which drops it.
    let short = request(&broker, "read", "2s", "load-3").await;
    let short_dsn = short["credential"]["dsn"].as_str().unwrap().to_string();
    PgConnection::connect(&short_dsn)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    wait_state(&broker, short["lease"]["id"].as_str().unwrap(), "expired").await;
    assert!(
        PgConnection::connect(&short_dsn).await.is_err(),
        "an expired login still connects"
    );

    // Target refuses (admin cannot log in): revocation is retried, visible, then completes.
    let doomed = request(&broker, "read", "10m", "load-4").await;
    su.execute(format!("ALTER ROLE {} NOLOGIN", f.admin).as_str())
        .await
        .unwrap();
    // Also end the broker's pooled admin sessions, so the target truly refuses it.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
        .bind(&f.admin)
        .execute(&mut su)
        .await
        .unwrap();
    broker
        .post(
            &format!(
                "/v1/grants/{}/revoke",
                doomed["grant"]["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    let doomed_id = doomed["lease"]["id"].as_str().unwrap().to_string();
    // Checked below whether or not the wait succeeded: the assertions say what was wrong.
    let pending = eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let pending = broker.get(&format!("/v1/leases/{doomed_id}")).await;
            if pending["revoke_attempts"].as_u64() >= Some(1) {
                Ok(pending)
            } else {
                Err(pending)
            }
        },
    )
    .await
    .unwrap_or_else(|pending| pending);
    assert_eq!(pending["state"], "revoking", "{pending}");
    assert!(
        pending["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty() && !e.contains("pw_")),
        "{pending}"
    );
    let listed = broker.get("/v1/leases?state=revoking").await;
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["id"] == doomed_id.as_str()));
    su.execute(format!("ALTER ROLE {} LOGIN", f.admin).as_str())
        .await
        .unwrap();
    wait_state(&broker, &doomed_id, "revoked").await;
    assert!(!f.users(&mut su).await.contains(
        &doomed["credential"]["username"]
            .as_str()
            .unwrap()
            .to_string()
    ));
    let story = broker.audit("task=load-4").await;
    assert!(
        story.iter().any(|e| e["kind"] == "lease.revoke_failed"),
        "each failed attempt is audited"
    );

    // Reconcile: a stray user with Mayfly's prefix that Mayfly did not create is reported
    // and left alone (it may be a DBA's); live ones stay.
    let live = request(&broker, "read", "10m", "load-5").await;
    let live_user = live["credential"]["username"].as_str().unwrap().to_string();
    let stray = format!("{}stray", f.prefix);
    su.execute(format!("CREATE ROLE {stray} LOGIN").as_str())
        .await
        .unwrap();
    let (status, report) = broker.post("/v1/targets/pg/reconcile", json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["dropped"], json!([]));
    assert_eq!(report["unknown"], json!([stray]));
    let mut expected = vec![
        live_user.clone(),
        stray.clone(),
        write["credential"]["username"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    expected.sort();
    assert_eq!(f.users(&mut su).await, expected, "live leases' users stay");

    // Root rotation: Mayfly keeps working with a password only it knows.
    let (status, rotated) = broker.post("/v1/targets/pg/rotate-root", json!({})).await;
    assert_eq!(status, 200, "{rotated}");
    let after = request(&broker, "read", "10m", "load-6").await;
    PgConnection::connect(after["credential"]["dsn"].as_str().unwrap())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();

    // Secrets stay out of the audit chain, which verifies.
    let everything = serde_json::to_string(&broker.audit("limit=10000").await).unwrap();
    assert!(
        !everything.contains("pw_")
            && !everything.contains(after["credential"]["password"].as_str().unwrap())
    );
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
    drop(broker);
    f.drop_all(&mut su).await;
}

/// The security review's scenario through the running broker: on one PostgreSQL server,
/// two targets share a username prefix. Reconciling one of them removes only its own user
/// whose lease ended; a hand-made role, an admin role and the other target's live user
/// (which keeps logging in, its lease active) are reported and kept.
#[tokio::test]
async fn reconcile_removes_only_what_mayfly_made_for_the_target() {
    let Some(mut su) = superuser_or_skip("dynamic postgres reconciliation").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "dyn").await;
    let (broker, created) = common::pg::broker_with_target(&f, "etl", "team-data").await;
    assert!(created.get("warnings").is_none(), "{created}");
    let (status, created) = broker.post("/v1/targets", f.target("pg-b")).await;
    assert_eq!(status, 201, "{created}");
    let warning = created["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("\"pg\"") && warning.contains(&f.prefix),
        "a shared prefix on one server is warned about: {created}"
    );

    let ended = request(&broker, "read", "10m", "rec-1").await;
    let ended_user = ended["credential"]["username"]
        .as_str()
        .unwrap()
        .to_string();
    let marker: Option<String> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
    )
    .bind(&ended_user)
    .fetch_one(&mut su)
    .await
    .unwrap();
    let marker = marker.unwrap();
    assert_eq!(
        marker,
        format!(
            "mayfly target=pg lease={}",
            ended["lease"]["id"].as_str().unwrap()
        )
    );
    let (status, _) = broker
        .post(
            &format!(
                "/v1/grants/{}/revoke",
                ended["grant"]["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    wait_state(&broker, ended["lease"]["id"].as_str().unwrap(), "revoked").await;
    // The server restored from a backup brings the role back after its lease ended: a
    // Mayfly user of this target that outlived its lease.
    assert!(!f.users(&mut su).await.contains(&ended_user));
    su.execute(
        format!(
            "CREATE ROLE \"{ended_user}\" LOGIN; COMMENT ON ROLE \"{ended_user}\" IS '{marker}'"
        )
        .as_str(),
    )
    .await
    .unwrap();

    let (status, other) = broker
        .post("/v1/grants", json!({"identity": "etl", "target": "pg-b", "action": "read", "purpose": "nightly load", "task": "rec-2", "ttl": "10m"}))
        .await;
    assert_eq!(status, 201, "{other}");
    let other_user = other["credential"]["username"]
        .as_str()
        .unwrap()
        .to_string();
    let other_dsn = other["credential"]["dsn"].as_str().unwrap().to_string();
    let mut other_session = PgConnection::connect(&other_dsn).await.unwrap();
    let by_hand = format!("{}reporting", f.prefix);
    let dba = format!("{}dba", f.prefix);
    su.execute(format!("CREATE ROLE {by_hand} LOGIN").as_str())
        .await
        .unwrap();
    su.execute(format!("CREATE ROLE {dba} LOGIN CREATEROLE").as_str())
        .await
        .unwrap();

    let (status, report) = broker.post("/v1/targets/pg/reconcile", json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["dropped"], json!([ended_user]), "{report}");
    let mut unknown = vec![by_hand.clone(), dba.clone(), other_user.clone()];
    unknown.sort();
    assert_eq!(report["unknown"], json!(unknown), "{report}");
    let mut left = unknown.clone();
    left.sort();
    assert_eq!(f.users(&mut su).await, left);
    let can_login: bool = sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(&other_user)
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert!(can_login, "the other target's live user was blocked");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM app.items")
        .fetch_one(&mut other_session)
        .await
        .unwrap();
    assert_eq!(n, 1, "the other target's open session was ended");
    PgConnection::connect(&other_dsn)
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    assert_eq!(
        broker
            .get(&format!(
                "/v1/leases/{}",
                other["lease"]["id"].as_str().unwrap()
            ))
            .await["state"],
        "active"
    );
    // The other target's own pass keeps its user too, and leaves this target's alone.
    let (status, report) = broker.post("/v1/targets/pg-b/reconcile", json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["dropped"], json!([]), "{report}");
    assert_eq!(f.users(&mut su).await, left);
    other_session.close().await.unwrap();
    drop(broker);
    f.drop_all(&mut su).await;
}

/// Kills the broker at `point` during a grant, restarts it, and checks nothing is left.
async fn crash_leaves_no_orphan(point: &str) {
    let Some(mut su) = superuser_or_skip("dynamic postgres crash safety").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "dyn").await;
    let (crashing, token) = broker_crashing_at(&f, point).await;
    let result = crashing
        .http
        .post(crashing.url("/v1/grants"))
        .bearer_auth(&token)
        .json(&json!({"identity": "etl", "target": "pg", "action": "read", "purpose": "p", "task": "crash", "ttl": "10m"}))
        .send()
        .await;
    assert!(
        result.is_err(),
        "the broker answered instead of crashing at {point}"
    );
    let (dir, token) = crashing.kill();
    let created_before_restart = f.users(&mut su).await;
    if point == "after-create" {
        assert_eq!(
            created_before_restart.len(),
            1,
            "the crash point is after the user was created"
        );
    } else {
        assert!(
            created_before_restart.is_empty(),
            "nothing is created before the write-ahead commit returns"
        );
    }

    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token),
            ..Options::default()
        },
    );
    // Closed in the background right after start-up, so the broker serves meanwhile.
    eventually(Duration::from_secs(10), || async {
        broker.get("/v1/leases?task=crash").await[0]["state"] == "revoked"
    })
    .await;
    let leases = broker.get("/v1/leases?task=crash").await;
    let lease = &leases.as_array().unwrap()[0];
    assert_eq!(
        lease["state"], "revoked",
        "the interrupted lease is closed after start: {lease}"
    );
    assert!(
        f.users(&mut su).await.is_empty(),
        "an orphan user survived the restart"
    );
    let grant = broker
        .get(&format!(
            "/v1/grants/{}",
            lease["grant_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(grant["state"], "failed");
    assert_eq!(
        broker.get("/v1/audit/verify").await["first_break"],
        Value::Null
    );
    drop(broker);
    f.drop_all(&mut su).await;
}

#[tokio::test]
async fn crash_between_write_ahead_and_creation_leaves_no_orphan() {
    crash_leaves_no_orphan("after-write-ahead").await;
}

#[tokio::test]
async fn crash_between_creation_and_commit_leaves_no_orphan() {
    crash_leaves_no_orphan("after-create").await;
}

/// A revocation that reports success while the role still exists (a revocation statement
/// that drops nothing) is caught by the broker's check afterwards: the lease stays
/// `revoking` with the reason, and is revoked once the target is fixed.
#[tokio::test]
async fn a_revocation_that_leaves_the_user_is_not_reported_revoked() {
    let Some(mut su) = superuser_or_skip("verify after revoke").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "ver").await;
    let broker = Broker::start(BIN);
    broker.add_identity("etl", "team-data").await;
    let mut target = f.target("pg");
    target["settings"]["revocation_statements"] = json!(["COMMENT ON ROLE \"{{name}}\" IS 'kept'"]);
    let (status, body) = broker.post("/v1/targets", target).await;
    assert_eq!(status, 201, "{body}");
    let issued = request(&broker, "read", "10m", "verify-1").await;
    let lease = issued["lease"]["id"].as_str().unwrap().to_string();
    let user = issued["credential"]["username"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = broker
        .post(&format!("/v1/leases/{lease}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200);
    let stuck = wait_lease(&broker, &lease, "caught the false success", |l| {
        l["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("still exists"))
    })
    .await;
    assert_eq!(stuck["state"], "revoking", "{stuck}");
    assert!(f.users(&mut su).await.contains(&user));

    // Fixed: the default statements drop the role at the next attempt.
    restore_settings(&broker, &f).await;
    wait_state(&broker, &lease, "revoked").await;
    assert!(!f.users(&mut su).await.contains(&user));
    f.drop_all(&mut su).await;
}

/// A target that refuses the removal itself (not one that is down) gets the credential
/// contained: no logins, sessions ended, reported as `contained` in the lease's error and
/// audited once; removal keeps being retried and finishes once the target is fixed.
#[tokio::test]
async fn a_refused_removal_is_contained_and_retried() {
    let Some(mut su) = superuser_or_skip("containment").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "con").await;
    let broker = Broker::start(BIN);
    broker.add_identity("etl", "team-data").await;
    let mut target = f.target("pg");
    target["settings"]["revocation_statements"] =
        json!(["SELECT mayfly_no_such_function(\"{{name}}\")"]);
    let (status, body) = broker.post("/v1/targets", target).await;
    assert_eq!(status, 201, "{body}");
    let issued = request(&broker, "read", "10m", "contain-1").await;
    let lease = issued["lease"]["id"].as_str().unwrap().to_string();
    let dsn = issued["credential"]["dsn"].as_str().unwrap().to_string();
    let mut session = PgConnection::connect(&dsn).await.unwrap();
    let (status, _) = broker
        .post(&format!("/v1/leases/{lease}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200);
    let contained = wait_lease(&broker, &lease, "was contained", |l| {
        l["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("contained: "))
    })
    .await;
    assert_eq!(contained["state"], "revoking");
    assert!(
        PgConnection::connect(&dsn).await.is_err(),
        "a contained user logs in"
    );
    assert!(
        session.execute("SELECT 1").await.is_err(),
        "a contained user's session survived"
    );
    let story = broker.audit("task=contain-1").await;
    let containments = story
        .iter()
        .filter(|e| e["kind"] == "lease.contained")
        .count();
    assert_eq!(containments, 1, "audited once: {story:?}");

    restore_settings(&broker, &f).await;
    wait_state(&broker, &lease, "revoked").await;
    f.drop_all(&mut su).await;
}

/// Copies a stopped broker's data directory (store, WAL, master key) as a backup would.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()));
        } else {
            std::fs::copy(&path, to.join(entry.file_name())).unwrap();
        }
    }
}

/// A store restored from a backup taken before some grants: the users issued after the
/// backup are unknown to it, so reconciliation reports them and drops none of them (they
/// are live credentials of somebody's task), while the credentials it does know are
/// still managed (revoked at their end). The restore scenario the README documents.
#[tokio::test]
async fn a_restored_store_drops_no_user_issued_after_its_backup() {
    let Some(mut su) = superuser_or_skip("restored store").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "rst").await;
    let (broker, _) = common::pg::broker_with_target(&f, "etl", "team-data").await;
    let before = request(&broker, "read", "30m", "before-backup").await;
    let known = before["credential"]["username"]
        .as_str()
        .unwrap()
        .to_string();
    let (dir, token) = broker.kill();
    let backup = common::scratch_dir();
    copy_dir(&dir, &backup);
    let broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            token: Some(token.clone()),
            ..Options::default()
        },
    );
    let after = request(&broker, "read", "30m", "after-backup").await;
    let newer = after["credential"]["username"]
        .as_str()
        .unwrap()
        .to_string();
    drop(broker.kill());

    let restored = Broker::start_in(
        BIN,
        &backup,
        Options {
            token: Some(token),
            ..Options::default()
        },
    );
    let (status, report) = restored.post("/v1/targets/pg/reconcile", json!({})).await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["unknown"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == newer.as_str()),
        "the user issued after the backup is reported: {report}"
    );
    assert_eq!(report["dropped"], json!([]), "{report}");
    let users = f.users(&mut su).await;
    assert!(
        users.contains(&newer) && users.contains(&known),
        "{users:?}"
    );
    // What the restored store knows, it still ends.
    let lease = before["lease"]["id"].as_str().unwrap();
    let (status, _) = restored
        .post(&format!("/v1/leases/{lease}/revoke"), json!({}))
        .await;
    assert_eq!(status, 200);
    wait_state(&restored, lease, "revoked").await;
    assert!(!f.users(&mut su).await.contains(&known));
    f.drop_all(&mut su).await;
}
