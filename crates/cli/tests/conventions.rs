//! The CLI as a Vault/OpenBao user expects it (issue 14): revoke by grant or lease id and by
//! task, target or prefix; `show` subcommands; signing keys listed; credentials printed for
//! `eval`; documented exit codes; times in RFC 3339; errors as one sentence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Output};

use common::issuer::Issuer;
use common::pg::{superuser_or_skip, PgFixture};
use common::{Broker, BIN};
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    o
}

/// The one JSON document a command printed.
fn json(o: Output) -> Value {
    serde_json::from_str(stdout(&ok(o)).trim()).unwrap()
}

/// JSON lines a listing printed.
fn lines(o: Output) -> Vec<Value> {
    stdout(&ok(o))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts `o` failed with `code` and one line on stderr, and returns that line.
fn failed(o: &Output, code: i32) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

/// `mayfly` against `broker` with `token` as the bearer.
fn cli_as(broker: &Broker, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MAYFLY_ADDR", &broker.addr)
        .env("MAYFLY_TOKEN", token)
        .env_remove("MAYFLY_OUTPUT")
        .output()
        .unwrap()
}

async fn lease_of(broker: &Broker, target: &str, task: &str) -> (String, String) {
    let issued = broker.grant("svc", target, task, "10m").await;
    (
        issued["grant"]["id"].as_str().unwrap().to_string(),
        issued["lease"]["id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn revoke_by_id_of_either_kind_and_by_target_or_prefix() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    for target in ["billing-api", "billing-db", "ops-api"] {
        broker.add_token_target(target, &["svc"]).await;
    }
    let (g1, l1) = lease_of(&broker, "billing-api", "t1").await;
    let (_, l2) = lease_of(&broker, "billing-db", "t2").await;
    let (_, l3) = lease_of(&broker, "ops-api", "t3").await;
    lease_of(&broker, "ops-api", "t4").await;

    let ops = lines(broker.cli(&["leases", "--target", "ops-api", "-o", "json"]));
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(ops.iter().all(|l| l["target"] == "ops-api"), "{ops:?}");

    // A lease id, as `mayfly leases` shows it; then its grant's id: already ended.
    let by_lease = json(broker.cli(&["revoke", &l1, "-o", "json"]));
    assert_eq!(
        by_lease,
        serde_json::json!({"revoked": 1, "revoking": 0, "lease": l1})
    );
    let by_grant = json(broker.cli(&["revoke", &g1, "-o", "json"]));
    assert_eq!(
        by_grant,
        serde_json::json!({"revoked": 0, "revoking": 0, "grant": g1})
    );

    let by_prefix = json(broker.cli(&["revoke", "--prefix", "billing-", "-o", "json"]));
    assert_eq!(by_prefix["revoked"], 1, "{by_prefix}");
    assert_eq!(by_prefix["prefix"], "billing-");
    assert_eq!(
        broker.get(&format!("/v1/leases/{l2}")).await["state"],
        "revoked"
    );
    assert_eq!(
        broker.get(&format!("/v1/leases/{l3}")).await["state"],
        "active"
    );
    let by_target = stdout(&ok(broker.cli(&["revoke", "--target", "ops-api"])));
    assert_eq!(by_target.trim(), "revoked 2 lease(s)");

    // `show` for one grant or lease, in a table or as the API's JSON.
    let grant = json(broker.cli(&["grants", "show", &g1, "-o", "json"]));
    assert_eq!(
        (grant["id"].as_str(), grant["state"].as_str()),
        (Some(g1.as_str()), Some("revoked"))
    );
    let lease = stdout(&ok(broker.cli(&["leases", "show", &l1])));
    assert!(
        lease
            .lines()
            .any(|l| l.starts_with("state") && l.ends_with("revoked")),
        "{lease}"
    );

    // Ids of nothing, and ids of the wrong shape.
    let nothing = broker.cli(&["revoke", "7c9e6679-7425-40de-944b-e07fc1f90ae7"]);
    assert!(
        failed(&nothing, 5).contains("no grant or lease"),
        "{}",
        stderr(&nothing)
    );
    let typo = broker.cli(&["revoke", "not-an-id"]);
    assert!(failed(&typo, 2).contains("is not a grant or lease id"));
    failed(&broker.cli(&["leases", "show", "not-an-id"]), 2);
    // Nothing named, or two things: clap's usage errors.
    assert_eq!(broker.cli(&["revoke"]).status.code(), Some(2));
    assert_eq!(
        broker
            .cli(&["revoke", "--task", "t3", "--target", "ops-api"])
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test]
async fn signing_keys_are_listed_with_their_publication() {
    let broker = Broker::start(BIN);
    let keys = lines(broker.cli(&["keys", "list", "-o", "json"]));
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0]["alg"], "EdDSA");
    assert!(keys[0]["retired_at"].is_null(), "{keys:?}");
    let first = keys[0]["kid"].as_str().unwrap().to_string();
    ok(broker.cli(&["keys", "rotate"]));
    let table = stdout(&ok(broker.cli(&["keys", "list"])));
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("KID") && rows[0].contains("PUBLISHED UNTIL"),
        "{table}"
    );
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[1].contains("active"), "{table}");
    assert!(
        rows[2].starts_with(&first) && rows[2].contains("published"),
        "{table}"
    );
    // Operators only.
    let (status, _, _) = broker
        .call(reqwest::Method::GET, "/v1/keys", None, None)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn exit_codes_tell_failures_apart() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    broker.add_token_target("closed", &[]).await;

    let unreachable = Command::new(BIN)
        .args(["leases"])
        .env("MAYFLY_ADDR", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(failed(&unreachable, 3).starts_with("error: cannot reach mayfly"));
    failed(&cli_as(&broker, "not-a-token", &["leases"]), 4);
    let denied = broker.cli(&[
        "request",
        "--identity",
        "svc",
        "--target",
        "closed",
        "--action",
        "read",
        "--purpose",
        "p",
        "--task",
        "t",
    ]);
    assert!(failed(&denied, 4).contains("denied"), "{}", stderr(&denied));
    failed(&broker.cli(&["identity", "show", "nobody"]), 5);
    let again = broker.cli(&[
        "identity",
        "add",
        "svc",
        "--kind",
        "service",
        "--owner",
        "team",
        "--purpose",
        "p",
    ]);
    assert!(
        failed(&again, 6).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // A wrong enum value names the right ones, as a sentence.
    let kind = broker.cli(&[
        "identity",
        "add",
        "x",
        "--kind",
        "robot",
        "--owner",
        "team",
        "--purpose",
        "p",
    ]);
    assert_eq!(
        failed(&kind, 2).trim(),
        "error: --kind \"robot\": expected one of service, pipeline, agent, other"
    );
    let state = broker.cli(&["leases", "--state", "bogus"]);
    assert_eq!(state.status.code(), Some(2));
    assert!(stderr(&state).contains("revoking"), "{}", stderr(&state));

    // The codes are documented where a user looks.
    let help = stdout(&ok(Command::new(BIN).arg("--help").output().unwrap()));
    for line in [
        "3  the broker cannot be reached",
        "4  denied",
        "7  the grant waits for approval",
    ] {
        assert!(help.contains(line), "{help}");
    }
}

#[tokio::test]
async fn a_grant_waiting_for_approval_exits_7() {
    let dir = common::scratch_dir();
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("approve.cedar"),
        "@id(\"everything-needs-approval\")\n@approval(\"1\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    let config = format!("[policy]\ndir = \"{}\"\n", policies.display());
    let broker = Broker::start_with_config(BIN, &dir, config);
    broker.add_identity("svc", "team").await;
    broker.add_token_target("api", &["svc"]).await;
    let args = [
        "request",
        "--identity",
        "svc",
        "--target",
        "api",
        "--action",
        "read",
        "--purpose",
        "p",
        "--task",
        "t",
    ];
    let pending = broker.cli(&args);
    assert!(
        failed(&pending, 7).contains("waits for approval"),
        "{}",
        stderr(&pending)
    );
    assert!(
        stdout(&pending).contains("pending_approval"),
        "{}",
        stdout(&pending)
    );
    let token_only = broker.cli(&[&args[..], &["--token-only"]].concat());
    failed(&token_only, 7);
    assert!(stdout(&token_only).is_empty());
}

#[tokio::test]
async fn credentials_print_for_eval_and_times_read_as_rfc3339() {
    let broker = Broker::start(BIN);
    broker.add_identity("svc", "team").await;
    broker.add_token_target("api", &["svc"]).await;
    let request = [
        "request",
        "--identity",
        "svc",
        "--target",
        "api",
        "--action",
        "read",
        "--purpose",
        "p",
        "--task",
        "env",
    ];

    let exports = stdout(&ok(broker.cli(&[&request[..], &["--env-format"]].concat())));
    assert!(
        exports.starts_with("export MAYFLY_ACCESS_TOKEN='"),
        "{exports}"
    );
    assert_eq!(exports.lines().count(), 1, "{exports}");
    // What `eval "$(mayfly request … --env-format)"` leaves in a shell.
    let shell = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "eval \"$('{BIN}' request --identity svc --target api --action read --purpose p --task env2 --env-format)\" && printf %s \"$MAYFLY_ACCESS_TOKEN\""
        ))
        .env("MAYFLY_ADDR", &broker.addr)
        .env("MAYFLY_TOKEN", &broker.token)
        .output()
        .unwrap();
    let token = stdout(&ok(shell));
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert!(
        broker
            .cli(&[&request[..], &["--env-format", "--token-only"]].concat())
            .status
            .code()
            == Some(2)
    );

    // Introspection shows the JWT's epoch claims as RFC 3339 in a table.
    let introspected = stdout(&ok(broker.cli(&["introspect", &token])));
    let exp = introspected
        .lines()
        .find(|l| l.starts_with("exp "))
        .unwrap_or_else(|| panic!("{introspected}"));
    assert!(exp.trim_end().ends_with('Z') && exp.contains('T'), "{exp}");

    // A renewal is a table; a token's replacement follows it.
    let lease = broker.get("/v1/leases?task=env").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let renewed = stdout(&ok(broker.cli(&["renew", &lease, "--ttl", "20m"])));
    let rows: Vec<&str> = renewed.lines().collect();
    assert!(
        rows[0].starts_with("LEASE") && rows[0].contains("MAX EXPIRES"),
        "{renewed}"
    );
    assert!(
        rows[1].starts_with(&lease) && rows[1].contains("active"),
        "{renewed}"
    );
    assert!(
        rows.iter().any(|r| r.starts_with("access_token")),
        "{renewed}"
    );

    // The audit listing names the target of each entry.
    let audit = stdout(&ok(broker.cli(&["audit", "list", "--task", "env"])));
    let header = audit.lines().next().unwrap();
    assert!(header.contains("TARGET"), "{audit}");
    assert!(
        audit.lines().skip(1).any(|l| l.contains(" api ")),
        "{audit}"
    );
}

#[tokio::test]
async fn a_workload_revokes_its_own_task_and_nothing_wider() {
    let issuer = Issuer::new();
    let dir = common::scratch_dir();
    let config = issuer.config(&dir.join("jwks.json"), &[("ci", "repo:acme/ci")]);
    let broker = Broker::start_with_config(BIN, &dir, config);
    broker.add_identity("ci", "team").await;
    broker.add_identity("svc", "team").await;
    broker.add_token_target("api", &["ci", "svc"]).await;
    let mine = broker.grant("ci", "api", "job-1", "10m").await;
    let theirs = broker.grant("svc", "api", "job-1", "10m").await;
    let jwt = issuer.token("repo:acme/ci");

    let revoked = json(cli_as(
        &broker,
        &jwt,
        &["revoke", "--task", "job-1", "-o", "json"],
    ));
    assert_eq!(revoked["revoked"], 1, "{revoked}");
    let state = |g: &Value| format!("/v1/leases/{}", g["lease"]["id"].as_str().unwrap());
    assert_eq!(broker.get(&state(&mine)).await["state"], "revoked");
    assert_eq!(broker.get(&state(&theirs)).await["state"], "active");
    for wider in [
        ["--target", "api"],
        ["--prefix", "a"],
        ["--identity", "svc"],
    ] {
        let refused = cli_as(&broker, &jwt, &[&["revoke"][..], &wider].concat());
        failed(&refused, 4);
    }
    assert_eq!(broker.get(&state(&theirs)).await["state"], "active");
    // Its own lease, by the lease's id; someone else's is not found.
    let own = broker.grant("ci", "api", "job-2", "10m").await;
    let own_lease = own["lease"]["id"].as_str().unwrap();
    assert_eq!(
        json(cli_as(&broker, &jwt, &["revoke", own_lease, "-o", "json"]))["revoked"],
        1
    );
    failed(
        &cli_as(
            &broker,
            &jwt,
            &["revoke", theirs["lease"]["id"].as_str().unwrap()],
        ),
        5,
    );

    // How the broker sees the workload, with its credential's expiry in RFC 3339.
    let me = json(cli_as(&broker, &jwt, &["identity", "whoami", "-o", "json"]));
    let expires = me["expires_at"].as_str().unwrap_or_else(|| panic!("{me}"));
    assert!(
        time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
            .is_ok()
    );
}

#[tokio::test]
async fn database_credentials_are_refused_as_a_token_and_exported_whole() {
    let Some(mut su) = superuser_or_skip("mayfly request on a postgres target").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "conv").await;
    let (broker, _) = common::pg::broker_with_target(&f, "etl", "team").await;
    let request = [
        "request",
        "--identity",
        "etl",
        "--target",
        "pg",
        "--action",
        "read",
        "--purpose",
        "p",
        "--task",
        "load",
    ];

    // A password alone is useless: refused with the way out, and nothing is issued.
    let refused = broker.cli(&[&request[..], &["--token-only"]].concat());
    let err = failed(&refused, 2);
    assert!(
        err.contains("postgres target") && err.contains("--env-format"),
        "{err}"
    );
    broker.assert_no_grants_or_leases().await;

    let exports = stdout(&ok(broker.cli(&[&request[..], &["--env-format"]].concat())));
    let vars: Vec<&str> = exports
        .lines()
        .map(|l| {
            l.strip_prefix("export ")
                .unwrap()
                .split('=')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        vars,
        [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGPASSWORD",
            "PGDATABASE",
            "DATABASE_URL"
        ],
        "{exports}"
    );
    // The exported values log in, as libpq would read them.
    let script = format!(
        "{exports}\nprintf '%s\\n' \"postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PGPORT/$PGDATABASE\""
    );
    let url = stdout(&ok(Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap()));
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url.trim())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM app.items")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);

    // Nothing stray on the target: reconciliation says so in words.
    let reconciled = stdout(&ok(broker.cli(&["target", "reconcile", "pg"])));
    assert_eq!(reconciled.trim(), "pg: nothing to drop");
    f.drop_all(&mut su).await;
}

/// An error whose cause repeats its message is said once.
#[test]
fn a_busy_port_is_reported_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .env_remove("MAYFLY_MASTER_KEY")
        .env_remove("MAYFLY_CONFIG")
        .env("MAYFLY_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains(&format!("cannot listen on {addr}")), "{line}");
    let text = line.to_lowercase();
    assert_eq!(text.matches("in use").count(), 1, "{line}");
}

/// A reader that stops early (`mayfly … | head`) ends the command quietly, not with a panic.
#[test]
fn a_closed_stdout_is_no_panic() {
    let mut child = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        matches!(out.status.code(), Some(0 | 141)),
        "{:?}",
        out.status
    );
}
