//! `mayfly exec`, black-box: the real binary wraps real child processes, against a real
//! broker and the real PostgreSQL and MariaDB on loopback. The credentials reach the child's
//! environment only (never an argv, never the wrapper's own environment), and die with
//! the task: at exit 0, exit 1, `--timeout`, a forwarded SIGTERM, or, when the wrapper is
//! killed, at their own short TTL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::issuer::Issuer;
use common::pg::PgFixture;
use common::{eventually, eventually_blocking, Broker, BIN};
use serde_json::Value;
use sqlx::PgConnection;

const SUB: &str = "system:serviceaccount:data:nightly-export";

/// A broker trusting a test issuer, the identity `etl` bound to [`SUB`], a PostgreSQL
/// target `pg`, and the workload's identity token in a file (as Kubernetes projects it).
struct Setup {
    broker: Broker,
    f: PgFixture,
    su: PgConnection,
    token_file: PathBuf,
    dir: PathBuf,
}

async fn setup() -> Option<Setup> {
    let mut su = common::pg::superuser_or_skip("exec").await?;
    let f = PgFixture::create(&mut su, "exe").await;
    let issuer = Issuer::new();
    let dir = common::scratch_dir();
    let config = issuer.config(&dir.join("jwks.json"), &[("etl", SUB)]);
    let broker = Broker::start_with_config(BIN, &common::scratch_dir(), config);
    broker.add_identity("etl", "team-data").await;
    let (status, body) = broker.post("/v1/targets", f.target("pg")).await;
    assert_eq!(status, 201, "{body}");
    let token_file = dir.join("identity-token");
    std::fs::write(&token_file, issuer.token(SUB)).unwrap();
    Some(Setup {
        broker,
        f,
        su,
        token_file,
        dir,
    })
}

impl Setup {
    /// `mayfly exec ARGS -- sh -c SCRIPT`, its stderr piped, with the workload's ambient
    /// identity (the token file) and no operator token anywhere in its environment.
    fn exec(&self, args: &[&str], script: &str) -> Child {
        Command::new(BIN)
            .arg("exec")
            .args(args)
            .args(["--", "sh", "-c", script])
            .env("MAYFLY_ADDR", &self.broker.addr)
            .env("MAYFLY_IDENTITY_TOKEN_FILE", &self.token_file)
            .env("OUT", &self.dir)
            .env_remove("MAYFLY_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The one task of `etl` (each test opens one).
    async fn only_task(&self) -> Value {
        let tasks = self.broker.get("/v1/tasks?identity=etl").await;
        let tasks = tasks.as_array().unwrap();
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        self.broker
            .get(&format!("/v1/tasks/{}", tasks[0]["id"].as_str().unwrap()))
            .await
    }

    /// Whether `user` can log in to the fixture's database (the server is `trust` on
    /// loopback, so this is whether the role exists and may log in).
    fn logs_in(&self, user: &str) -> bool {
        Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                user,
                "-d",
                &self.f.db,
                "-tAc",
                "select 1",
            ])
            .env_remove("PGPASSWORD")
            .output()
            .unwrap()
            .status
            .success()
    }
}

/// Waits for `path` to hold `lines` lines, and returns them.
fn wait_lines(path: &Path, lines: usize) -> Vec<String> {
    eventually_blocking(Duration::from_secs(20), || {
        let text = std::fs::read_to_string(path).ok()?;
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        (got.len() >= lines && text.ends_with('\n')).then_some(got)
    })
    .unwrap_or_else(|| panic!("{} never held {lines} lines", path.display()))
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

/// Every process's argv (`/proc/*/cmdline`), and the environment of `pid`.
fn argvs() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            out.push(String::from_utf8_lossy(&raw).replace('\0', " "));
        }
    }
    out
}

fn environ(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).to_string()
}

fn lease_reasons(task: &Value) -> Vec<String> {
    task["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["revocation_reason"]
                .as_str()
                .unwrap_or("none")
                .to_string()
        })
        .collect()
}

/// The child logs in with what it was given and reads the table; meanwhile its
/// credential is in no argv and not in the wrapper's environment; the role carries the
/// task; exit 0 completes the task, revokes the lease, drops the role, and the task's
/// audit story reads in order.
#[tokio::test]
async fn credentials_live_in_the_child_only_and_die_with_its_success() {
    let Some(mut s) = setup().await else { return };
    let script = r#"printf '%s\n%s\n%s\n' "$PGUSER" "$PGPASSWORD" "$MAYFLY_TASK" > "$OUT/creds"
        while [ ! -e "$OUT/go" ]; do sleep 0.05; done
        psql -tAc 'select count(*) from app.items' > "$OUT/psql" 2>&1"#;
    let exec = s.exec(
        &[
            "--target",
            "pg",
            "--action",
            "read",
            "--purpose",
            "nightly export",
            "--ttl",
            "1m",
        ],
        script,
    );
    let creds = wait_lines(&s.file("creds"), 3);
    let (user, password, task_id) = (&creds[0], &creds[1], &creds[2]);
    assert!(user.starts_with(&s.f.prefix), "{user}");
    assert!(password.len() >= 20, "a generated password");
    for argv in argvs() {
        assert!(
            !argv.contains(password.as_str()),
            "a password in an argv: {argv}"
        );
    }
    assert!(
        !environ(exec.id()).contains(password.as_str()),
        "the wrapper's own environment holds no credential"
    );
    assert!(std::env::vars().all(|(_, v)| !v.contains(password.as_str())));
    let comment: Option<String> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
    )
    .bind(user)
    .fetch_one(&mut s.su)
    .await
    .unwrap();
    assert!(
        comment
            .as_deref()
            .unwrap_or_default()
            .ends_with(&format!(" txn={task_id}")),
        "the role names its task: {comment:?}"
    );

    std::fs::write(s.file("go"), "").unwrap();
    let (code, stderr) = finish(exec);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::read_to_string(s.file("psql")).unwrap().trim(), "1");
    let task = s.only_task().await;
    assert_eq!(task["task"]["state"], "completed", "{task}");
    assert_eq!(lease_reasons(&task), ["task_complete"]);
    assert!(
        !s.f.users(&mut s.su).await.contains(user),
        "the role is dropped"
    );
    assert!(!s.logs_in(user), "the revoked user still logs in");

    let story: Vec<Value> = s.broker.audit(&format!("task={task_id}")).await;
    let kinds: Vec<&str> = story.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let position = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(position("task.opened") < position("grant.requested"));
    assert!(position("grant.requested") < position("grant.decided"));
    assert!(position("grant.decided") < position("lease.issued"));
    assert!(position("lease.issued") < position("task.ended"));
    let ended = &story[position("task.ended")];
    assert_eq!(ended["detail"]["exit_status"], 0, "{ended}");
    assert_eq!(
        story[position("task.opened")]["detail"]["purpose"],
        "nightly export"
    );
    assert!(
        kinds.contains(&"lease.revoked") || kinds.contains(&"lease.revoking"),
        "{kinds:?}"
    );
    s.f.drop_all(&mut s.su).await;
}

/// A non-zero exit fails the task (reason `task_failed`, the status audited) and is
/// `mayfly exec`'s own exit status.
#[tokio::test]
async fn a_failing_command_fails_its_task() {
    let Some(mut s) = setup().await else { return };
    let exec = s.exec(
        &[
            "--target",
            "pg:read",
            "--purpose",
            "nightly export",
            "--ttl",
            "1m",
        ],
        r#"printf '%s\n' "$PGUSER" > "$OUT/user"; exit 3"#,
    );
    let (code, stderr) = finish(exec);
    assert_eq!(code, 3, "{stderr}");
    let user = std::fs::read_to_string(s.file("user")).unwrap();
    let task = s.only_task().await;
    assert_eq!(task["task"]["state"], "failed", "{task}");
    assert_eq!(lease_reasons(&task), ["task_failed"]);
    assert!(!s.logs_in(user.trim()));
    let story = s
        .broker
        .audit(&format!("task={}", task["task"]["id"].as_str().unwrap()))
        .await;
    let ended = story.iter().find(|e| e["kind"] == "task.ended").unwrap();
    assert_eq!(ended["detail"]["exit_status"], 3, "{ended}");
    s.f.drop_all(&mut s.su).await;
}

/// `--timeout` stops the command (SIGTERM; SIGKILL after the grace period), the task
/// times out, and the exit status is the signal's.
#[tokio::test]
async fn timeout_stops_the_command_and_times_out_the_task() {
    let Some(mut s) = setup().await else { return };
    let started = std::time::Instant::now();
    let exec = s.exec(
        &[
            "--target",
            "pg:read",
            "--purpose",
            "export",
            "--timeout",
            "2s",
            "--grace",
            "1s",
        ],
        "exec sleep 60",
    );
    let (code, stderr) = finish(exec);
    assert_eq!(code, 128 + 15, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr.contains("--timeout"), "{stderr}");
    let task = s.only_task().await;
    assert_eq!(task["task"]["state"], "timed_out", "{task}");
    assert_eq!(lease_reasons(&task), ["task_timeout"]);
    s.f.drop_all(&mut s.su).await;
}

/// SIGTERM to the wrapper reaches the command, which may exit cleanly; the task ends
/// timed out, and the wrapper exits with the command's status.
#[tokio::test]
async fn sigterm_is_forwarded_to_the_command() {
    let Some(mut s) = setup().await else { return };
    let script = r#"trap 'echo term > "$OUT/term"; exit 0' TERM
        echo ready > "$OUT/ready"
        while :; do sleep 0.1; done"#;
    let exec = s.exec(&["--target", "pg:read", "--purpose", "export"], script);
    wait_lines(&s.file("ready"), 1);
    let killed = Command::new("kill")
        .args(["-TERM", &exec.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (code, stderr) = finish(exec);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(s.file("term")).unwrap().trim(),
        "term"
    );
    let task = s.only_task().await;
    assert_eq!(task["task"]["state"], "timed_out", "{task}");
    assert_eq!(lease_reasons(&task), ["task_timeout"]);
    s.f.drop_all(&mut s.su).await;
}

/// A wrapper that is itself `kill -9`'d renews nothing more: its credential dies at its
/// short TTL, with no client left to ask.
#[tokio::test]
async fn a_killed_wrapper_leaves_credentials_that_die_at_their_ttl() {
    let Some(mut s) = setup().await else { return };
    let script = r#"printf '%s\n%s\n' "$PGUSER" "$$" > "$OUT/creds"; while :; do sleep 0.1; done"#;
    let mut exec = s.exec(
        &["--target", "pg:read", "--purpose", "export", "--ttl", "3s"],
        script,
    );
    let creds = wait_lines(&s.file("creds"), 2);
    let user = creds[0].clone();
    assert!(s.logs_in(&user));
    exec.kill().unwrap(); // SIGKILL
    exec.wait().unwrap();
    let _ = Command::new("kill").args(["-KILL", &creds[1]]).status();
    let gone = eventually(Duration::from_secs(20), async || {
        !s.f.users(&mut s.su).await.contains(&user)
    })
    .await;
    assert!(gone, "the role outlived its TTL");
    assert!(!s.logs_in(&user));
    let task = s.only_task().await;
    assert_eq!(task["leases"][0]["state"], "expired", "{task}");
    s.f.drop_all(&mut s.su).await;
}

/// MariaDB: the mysql client reads MYSQL_HOST, MYSQL_TCP_PORT and MYSQL_PWD (the user
/// name, not a secret, is MYSQL_USER, passed with `-u`); the
/// account is gone once the command ends. Two targets, one task.
#[tokio::test]
async fn mariadb_and_postgres_credentials_in_one_task() {
    let Some(mut s) = setup().await else { return };
    let Some(mut msu) = common::maria::superuser_or_skip("exec").await else {
        return;
    };
    let m = common::maria::MariaFixture::create(&mut msu, "exe").await;
    let (status, body) = s.broker.post("/v1/targets", m.target("maria")).await;
    assert_eq!(status, 201, "{body}");
    let script = format!(
        r#"mysql --protocol=TCP -u "$MYSQL_USER" -D {} -N -e 'select count(*) from items' > "$OUT/mysql" 2>&1 || exit 9
        psql -tAc 'select 1' > "$OUT/psql" 2>&1 || exit 8
        printf '%s\n%s\n' "$MYSQL_USER" "$PGUSER" > "$OUT/users""#,
        m.db
    );
    let exec = s.exec(
        &[
            "--target",
            "maria:read",
            "--target",
            "pg:read",
            "--purpose",
            "export",
        ],
        &script,
    );
    let (code, stderr) = finish(exec);
    let mysql = std::fs::read_to_string(s.file("mysql")).unwrap_or_default();
    assert_eq!(code, 0, "{stderr}\nmysql: {mysql}");
    assert_eq!(mysql.trim(), "1");
    let users = wait_lines(&s.file("users"), 2);
    assert!(users[0].starts_with(&m.prefix), "{users:?}");
    let task = s.only_task().await;
    assert_eq!(lease_reasons(&task), ["task_complete", "task_complete"]);
    let left = eventually(Duration::from_secs(20), async || {
        let left: Vec<String> = m
            .users(&mut msu)
            .await
            .into_iter()
            .filter(|u| *u == users[0])
            .collect();
        left.is_empty().then_some(()).ok_or(left)
    })
    .await;
    assert!(
        left.is_ok(),
        "the MariaDB account outlived its task: {left:?}"
    );
    m.drop_all(&mut msu).await;
    s.f.drop_all(&mut s.su).await;
}

/// Refusals before anything is issued: an unknown target, an `--env` naming no field, a
/// deadline over the cap, no identity at all: one line, a non-zero exit, no task.
#[tokio::test]
async fn bad_input_is_one_line_and_issues_nothing() {
    let Some(mut s) = setup().await else { return };
    let cases: [(&[&str], i32, &str); 3] = [
        (&["--target", "nope", "--purpose", "x"], 5, "nope"),
        (
            &[
                "--target",
                "pg:read",
                "--purpose",
                "x",
                "--env",
                "DB=passwd",
            ],
            2,
            "no field \"passwd\"",
        ),
        (
            &["--target", "pg:read", "--purpose", "x", "--deadline", "25h"],
            1,
            "deadline",
        ),
    ];
    for (args, want, says) in cases {
        let (code, stderr) = finish(s.exec(args, "true"));
        assert_eq!(code, want, "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let no_identity = Command::new(BIN)
        .args(["exec", "--target", "pg", "--purpose", "x", "--", "true"])
        .env("MAYFLY_ADDR", &s.broker.addr)
        .env_remove("MAYFLY_TOKEN")
        .env_remove("MAYFLY_IDENTITY_TOKEN_FILE")
        .env_remove("ACTIONS_ID_TOKEN_REQUEST_URL")
        .output()
        .unwrap();
    assert_eq!(no_identity.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&no_identity.stderr).contains("no workload identity"));
    let empty = Command::new(BIN)
        .args(["exec", "--target", "pg", "--purpose", "x", "--"])
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(2));
    assert_eq!(s.broker.get("/v1/tasks").await, serde_json::json!([]));
    s.broker.assert_no_grants_or_leases().await;
    s.f.drop_all(&mut s.su).await;
}

/// `--file` writes the variables to a new 0600 file named in MAYFLY_CREDENTIALS_FILE, and
/// deletes it when the command ends; while the command runs longer than a third of the
/// TTL, its credential is renewed, so it outlives its first expiry.
#[tokio::test]
async fn file_delivery_and_renewal_while_the_command_runs() {
    let Some(mut s) = setup().await else { return };
    let file = s.file("creds.env");
    let script = r#"stat -c '%a' "$MAYFLY_CREDENTIALS_FILE" > "$OUT/mode"
        grep -c '^PGPASSWORD=' "$MAYFLY_CREDENTIALS_FILE" >> "$OUT/mode"
        sleep 5
        psql -tAc 'select 1' > "$OUT/late" 2>&1"#;
    let exec = s.exec(
        &[
            "--target",
            "pg:read",
            "--purpose",
            "export",
            "--ttl",
            "3s",
            "--file",
            file.to_str().unwrap(),
            "--verbose",
        ],
        script,
    );
    let mode = wait_lines(&s.file("mode"), 2);
    assert_eq!(mode, ["600", "1"]);
    let (code, stderr) = finish(exec);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        std::fs::read_to_string(s.file("late")).unwrap().trim(),
        "1",
        "the credential was renewed past its first 3 s: {stderr}"
    );
    assert!(stderr.contains("renewed until"), "{stderr}");
    assert!(!file.exists(), "--file is deleted at the end");
    let task = s.only_task().await;
    let task_id = task["task"]["id"].as_str().unwrap();
    let story = s.broker.audit(&format!("task={task_id}")).await;
    assert!(
        story.iter().any(|e| e["kind"] == "lease.renewed"),
        "{story:?}"
    );
    s.f.drop_all(&mut s.su).await;
}

/// In GitHub Actions the identity token comes from the runner's token service, asked for
/// the broker's audience with the runner's request token (a stand-in service here: the
/// real one exists only on GitHub's runners).
#[tokio::test]
async fn github_actions_identity_is_found_without_flags() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(mut s) = setup().await else { return };
    let identity_token = std::fs::read_to_string(&s.token_file).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/token?api-version=2.0",
        listener.local_addr().unwrap()
    );
    let service = tokio::spawn(async move {
        // The token is asked for once: this short command outlives no renewal.
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(15), listener.accept())
            .await
            .expect("mayfly exec asked the token service")
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).await.unwrap();
        let body = serde_json::json!({ "value": identity_token }).to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(reply.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    let out = tokio::task::spawn_blocking({
        let addr = s.broker.addr.clone();
        let url = url.clone();
        move || {
            Command::new(BIN)
                .args([
                    "exec",
                    "--target",
                    "pg:read",
                    "--purpose",
                    "ci",
                    "--",
                    "sh",
                    "-c",
                ])
                .arg(r#"test -n "$PGPASSWORD""#)
                .env("MAYFLY_ADDR", addr)
                .env("ACTIONS_ID_TOKEN_REQUEST_URL", url)
                .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "runner-request-token")
                .env_remove("MAYFLY_TOKEN")
                .env_remove("MAYFLY_IDENTITY_TOKEN_FILE")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let request = service.await.unwrap();
    assert!(request.contains("audience=mayfly"), "{request}");
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer runner-request-token"),
        "{request}"
    );
    assert_eq!(s.only_task().await["task"]["state"], "completed");
    s.f.drop_all(&mut s.su).await;
}

/// A workload holding an X.509-SVID (files, as spiffe-helper writes them) authenticates
/// to a TLS broker by mutual TLS; no bearer token anywhere.
#[tokio::test]
async fn x509_svid_identity_over_mutual_tls() {
    use common::x509::{ca, leaf, tls_broker_config};
    use rcgen::{ExtendedKeyUsagePurpose, Ia5String, SanType};
    let Some(mut su) = common::pg::superuser_or_skip("exec").await else {
        return;
    };
    let f = PgFixture::create(&mut su, "exm").await;
    let dir = common::scratch_dir();
    let authority = ca();
    let spiffe_id = "spiffe://prod.acme/ns/data/sa/export";
    let config = tls_broker_config(&dir, &authority, "prod.acme", &[("etl", spiffe_id)]);
    let mut broker = Broker::start_with_config(BIN, &dir, config);
    broker.http = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(authority.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    broker.add_identity("etl", "team-data").await;
    let (status, body) = broker.post("/v1/targets", f.target("pg")).await;
    assert_eq!(status, 201, "{body}");
    let (cert, key) = leaf(
        &authority,
        vec![SanType::URI(Ia5String::try_from(spiffe_id).unwrap())],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    std::fs::write(dir.join("svid.pem"), cert).unwrap();
    std::fs::write(dir.join("svid.key"), key).unwrap();
    let out = Command::new(BIN)
        .args(["exec", "--target", "pg:read", "--purpose", "export", "--"])
        .args(["psql", "-tAc", "select count(*) from app.items"])
        .env("MAYFLY_ADDR", &broker.addr)
        .env("MAYFLY_CA_FILE", dir.join("ca.pem"))
        .env("MAYFLY_SVID_CERT", dir.join("svid.pem"))
        .env("MAYFLY_SVID_KEY", dir.join("svid.key"))
        .env_remove("MAYFLY_TOKEN")
        .env_remove("MAYFLY_IDENTITY_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let tasks = broker.get("/v1/tasks?identity=etl").await;
    assert_eq!(tasks[0]["state"], "completed", "{tasks}");
    f.drop_all(&mut su).await;
}
