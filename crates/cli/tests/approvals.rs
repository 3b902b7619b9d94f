//! Approval paths and break-glass, black-box against the real broker: a workload's request
//! that policy says needs two approvals from `db-owners` waits; people (ID tokens from an
//! issuer configured for humans) answer it with separation of duties; the requester
//! collects the credential, which carries the approval; break-glass is issued at once,
//! audited loudly and reviewed afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::issuer::Issuer;
use common::webhook::{verify, Receiver};
use common::{eventually, Broker, Options, BIN};
use reqwest::Method;
use serde_json::{json, Value};

const WORKLOAD: &str = "repo:acme/data:ref:refs/heads/main";

const POLICY: &str = r#"
@id("reads-need-two-db-owners")
@approval("2")
@approvers("db-owners")
permit (principal, action == Action::"read", resource);

@id("break-glass-writes")
@max_ttl("8h")
permit (principal, action == Action::"write", resource)
when { context.break_glass };
"#;

struct Setup {
    broker: Broker,
    workload: String,
    people: Issuer,
}

async fn setup() -> Setup {
    setup_with("", Vec::new()).await
}

/// The broker configuration of [`setup`] plus `extra`, and its environment.
fn config(dir: &std::path::Path, ci: &Issuer, people: &Issuer, extra: &str) -> String {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("approvals.cedar"), POLICY).unwrap();
    let mut config = ci.config(&dir.join("ci-jwks.json"), &[("etl", WORKLOAD)]);
    std::fs::write(dir.join("idp-jwks.json"), people.jwks().to_string()).unwrap();
    config.push_str(&format!(
        "\n[[auth.oidc]]\nissuer = \"{}\"\naudiences = [\"mayfly\"]\njwks_file = \"{}\"\nalgorithms = [\"EdDSA\"]\n\n[auth.oidc.humans]\nname_claim = \"email\"\ngroups_claim = \"groups\"\n\n[policy]\ndir = \"{}\"\n{extra}",
        people.url,
        dir.join("idp-jwks.json").display(),
        policies.display()
    ));
    config
}

async fn setup_with(extra: &str, env: Vec<(&'static str, String)>) -> Setup {
    let dir = common::scratch_dir();
    let ci = Issuer::new();
    let mut people = Issuer::new();
    people.url = "https://idp.example.test".into();
    let config = config(&dir, &ci, &people, extra);
    let broker = Broker::start_in(
        BIN,
        &common::scratch_dir(),
        Options {
            config: Some(config),
            env,
            ..Options::default()
        },
    );
    broker.add_identity("etl", "team-data").await;
    let (status, body) = broker
        .post(
            "/v1/targets",
            json!({"name": "ledger", "kind": "token", "actions": ["read", "write"], "default_ttl": "10m", "max_ttl": "8h", "allow": []}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    Setup {
        broker,
        workload: ci.token(WORKLOAD),
        people,
    }
}

impl Setup {
    fn person(&self, email: &str, groups: &[&str]) -> String {
        self.people
            .token_with(email, json!({"email": email, "groups": groups}))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        who: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, body, _) = self.broker.call(method, path, Some(who), body).await;
        (status, body)
    }

    async fn request(
        &self,
        action: &str,
        purpose: &str,
        task: &str,
        context: Value,
    ) -> (u16, Value) {
        let body = json!({"target": "ledger", "action": action, "purpose": purpose, "task": task, "ttl": "2h", "context": context});
        self.call(Method::POST, "/v1/grants", &self.workload, Some(body))
            .await
    }

    async fn answer(&self, who: &str, grant: &str, verb: &str, comment: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/v1/grants/{grant}/{verb}"),
            who,
            Some(json!({"comment": comment})),
        )
        .await
    }
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn two_distinct_approvers_with_separation_of_duties() {
    let s = setup().await;
    let alice = s.person("alice@acme.test", &["db-owners"]);
    let dave = s.person("dave@acme.test", &["db-owners", "sre"]);
    let owner = s.person("olga@acme.test", &["db-owners", "team-data"]);
    let outsider = s.person("carol@acme.test", &["web"]);

    let (status, pending) = s
        .request("read", "month-end close", "close-11", json!({}))
        .await;
    assert_eq!(status, 202, "{pending}");
    let grant = pending["grant"]["id"].as_str().unwrap().to_string();
    let (_, shown) = s
        .call(
            Method::GET,
            &format!("/v1/grants/{grant}"),
            &s.workload,
            None,
        )
        .await;
    assert_eq!(shown["approval"]["needed"], 2, "{shown}");
    assert_eq!(shown["approval"]["groups"], json!(["db-owners"]));

    // What alice may answer; the outsider sees nothing to answer.
    let (status, listed) = s.call(Method::GET, "/v1/approvals", &alice, None).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed[0]["grant_id"], grant.as_str(), "{listed}");
    let (_, none) = s.call(Method::GET, "/v1/approvals", &outsider, None).await;
    assert_eq!(none, json!([]));

    // Who cannot count, each a 4xx that changes nothing.
    for (who, code) in [
        (&owner, "owner_approval"),
        (&outsider, "not_an_approver"),
        (&s.workload, "approver_only"),
    ] {
        let (status, problem) = s.answer(who, &grant, "approve", "looks fine").await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some(code)),
            "{problem}"
        );
    }
    let (status, problem) = s.answer(&alice, &grant, "approve", "  ").await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("comment")),
        "{problem}"
    );
    let long = "x".repeat(4097);
    let (status, _) = s.answer(&alice, &grant, "approve", &long).await;
    assert_eq!(status, 400);
    // People approve; they do not administer or request.
    let (status, problem) = s.call(Method::GET, "/v1/leases", &alice, None).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("not_for_humans"))
    );

    // Collecting before the approvals is a conflict.
    let collect = format!("/v1/grants/{grant}/collect");
    let (status, problem) = s.call(Method::POST, &collect, &s.workload, None).await;
    assert_eq!(status, 409, "{problem}");

    let (status, first) = s
        .answer(&alice, &grant, "approve", "ticket CHG-1 checked")
        .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["state"], "pending");
    let (status, problem) = s.answer(&alice, &grant, "approve", "again").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("already_answered"))
    );
    let (status, second) = s.answer(&dave, &grant, "approve", "agreed").await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["state"], "approved");

    // The requester collects it once; the token carries who approved what, and when.
    let (status, issued) = s.call(Method::POST, &collect, &s.workload, None).await;
    assert_eq!(status, 201, "{issued}");
    let token = issued["credential"]["access_token"].as_str().unwrap();
    let details = &jwt_claims(token)["authorization_details"][0];
    assert_eq!(details["type"], "mayfly_approval", "{details}");
    assert_eq!(
        details["approvers"],
        json!(["human:alice@acme.test", "human:dave@acme.test"])
    );
    assert_eq!(details["request_hash"], second["request_hash"]);
    assert_eq!(details["grant_id"], grant.as_str());
    assert_eq!(
        s.broker.introspect(token).await["authorization_details"][0]["approvers"][1],
        "human:dave@acme.test"
    );
    let (status, _) = s.call(Method::POST, &collect, &s.workload, None).await;
    assert_eq!(status, 409, "collected twice");
    // A renewal's replacement token carries the approval too.
    let lease = issued["lease"]["id"].as_str().unwrap();
    let (status, renewed) = s
        .call(
            Method::POST,
            &format!("/v1/leases/{lease}/renew"),
            &s.workload,
            Some(json!({"ttl": "20m"})),
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    let again = renewed["credential"]["access_token"].as_str().unwrap();
    assert_eq!(jwt_claims(again)["authorization_details"][0], *details);

    // The task's story: request, decision, approvals, issuance, in order.
    let story = s.broker.audit("task=close-11").await;
    let kinds: Vec<&str> = story.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k}: {kinds:?}"))
    };
    assert!(at("grant.requested") < at("approval.requested"));
    assert!(at("approval.requested") < at("approval.granted"));
    assert!(at("approval.granted") < at("lease.issued"));
    assert_eq!(
        kinds.iter().filter(|k| **k == "approval.granted").count(),
        2
    );
    let issued_entry = &story[at("lease.issued")];
    assert_eq!(
        issued_entry["detail"]["approval"]["approvers"][0],
        "human:alice@acme.test"
    );

    // A refusal ends a request; the requester cannot collect it.
    let (_, refused) = s
        .request("read", "month-end close", "close-12", json!({}))
        .await;
    let refused = refused["grant"]["id"].as_str().unwrap().to_string();
    let (status, denied) = s
        .answer(&dave, &refused, "deny", "not during the freeze")
        .await;
    assert_eq!(
        (status, denied["state"].as_str()),
        (200, Some("denied")),
        "{denied}"
    );
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/v1/grants/{refused}/collect"),
            &s.workload,
            None,
        )
        .await;
    assert_eq!(status, 409);

    // The CLI, as an approver: the listing in JSON lines.
    let out = std::process::Command::new(BIN)
        .args(["approvals", "-o", "json"])
        .env("MAYFLY_ADDR", &s.broker.addr)
        .env("MAYFLY_TOKEN", &alice)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "nothing left to answer"
    );
}

/// The operator who asked for an identity cannot approve the request itself.
#[tokio::test]
async fn an_operator_cannot_approve_its_own_request() {
    let s = setup().await;
    let (status, pending) = s
        .broker
        .post(
            "/v1/grants",
            json!({"identity": "etl", "target": "ledger", "action": "read", "purpose": "p", "task": "t", "ttl": "5m"}),
        )
        .await;
    assert_eq!(status, 202, "{pending}");
    let grant = pending["grant"]["id"].as_str().unwrap();
    let token = s.broker.token.clone();
    let (status, problem) = s.answer(&token, grant, "approve", "mine").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("self_approval")),
        "{problem}"
    );
}

/// Break-glass: allowed by policy only with `context.break_glass`, issued at once with a
/// short TTL, a purpose that says what is on fire, a high-severity audit entry, and a
/// review that an approver closes with a comment.
#[tokio::test]
async fn break_glass_is_fast_loud_and_reviewed() {
    let s = setup().await;
    let alice = s.person("alice@acme.test", &["db-owners"]);
    let (status, problem) = s
        .request("write", "fix it", "inc-1", json!({"break_glass": true}))
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("purpose")),
        "{problem}"
    );
    let (status, refused) = s
        .request("write", "INC-4312: primary down", "inc-1", json!({}))
        .await;
    assert_eq!(
        status, 403,
        "without break_glass policy denies writes: {refused}"
    );

    let (status, issued) = s
        .request(
            "write",
            "INC-4312: primary down",
            "inc-4312",
            json!({"break_glass": true}),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["grant"]["granted_ttl"], "1h", "capped: {issued}");
    let grant = issued["grant"]["id"].as_str().unwrap().to_string();
    let story = s.broker.audit("task=inc-4312").await;
    let loud = story
        .iter()
        .find(|e| e["kind"] == "grant.break_glass")
        .unwrap();
    assert_eq!(loud["detail"]["severity"], "high");

    let (status, open) = s.call(Method::GET, "/v1/reviews", &alice, None).await;
    assert_eq!(status, 200, "{open}");
    assert_eq!(open[0]["grant_id"], grant.as_str(), "{open}");
    let (status, overdue) = s
        .call(Method::GET, "/v1/reviews?overdue=true", &alice, None)
        .await;
    assert_eq!((status, overdue), (200, json!([])));
    let (status, problem) = s
        .call(
            Method::POST,
            &format!("/v1/reviews/{grant}/close"),
            &alice,
            Some(json!({"comment": ""})),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    let (status, closed) = s
        .call(
            Method::POST,
            &format!("/v1/reviews/{grant}/close"),
            &alice,
            Some(json!({"comment": "primary was down; access used for the failover only"})),
        )
        .await;
    assert_eq!(
        (status, closed["state"].as_str()),
        (200, Some("reviewed")),
        "{closed}"
    );
    let (_, open) = s.call(Method::GET, "/v1/reviews", &alice, None).await;
    assert_eq!(open, json!([]));
    let story = s.broker.audit("task=inc-4312").await;
    assert!(story.iter().any(|e| e["kind"] == "review.closed"));
    let metrics = s
        .broker
        .http
        .get(s.broker.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("mayfly_break_glass_unreviewed_overdue 0"),
        "the overdue gauge is exported"
    );
}

const SECRET: &str = "whsec-approvals-test";

/// Approval and break-glass notifications reach a signed webhook, and a broker killed
/// before it could deliver them delivers them after its restart: the approval needed,
/// the approval that completed it, and the break-glass use, each signed.
#[tokio::test]
async fn approval_and_break_glass_notifications_survive_a_restart() {
    let receiver = Receiver::start("/hook", true).await;
    let extra = format!(
        "\n[[webhooks]]\nname = \"security\"\nurl = \"{}\"\nsecret_env = \"MAYFLY_TEST_WEBHOOK_SECRET\"\n",
        receiver.url
    );
    let env = vec![("MAYFLY_TEST_WEBHOOK_SECRET", SECRET.to_string())];
    let s = setup_with(&extra, env.clone()).await;
    let alice = s.person("alice@acme.test", &["db-owners"]);
    let dave = s.person("dave@acme.test", &["db-owners"]);
    let (_, pending) = s
        .request("read", "month-end close", "close-13", json!({}))
        .await;
    let grant = pending["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(s.answer(&alice, &grant, "approve", "ok").await.0, 200);
    assert_eq!(s.answer(&dave, &grant, "approve", "ok").await.0, 200);
    let (status, _) = s
        .request(
            "write",
            "INC-77: disk full on primary",
            "inc-77",
            json!({"break_glass": true}),
        )
        .await;
    assert_eq!(status, 201);

    // Everything so far was refused by the receiver; the broker dies with it undelivered.
    let config_path = s.broker.dir.join("mayfly.toml");
    let config = std::fs::read_to_string(&config_path).ok();
    let (dir, token) = s.broker.kill();
    receiver.fail(false);
    let restarted = Broker::start_in(
        BIN,
        &dir,
        Options {
            config,
            token: Some(token),
            env,
            ..Options::default()
        },
    );
    let wanted = [
        "approval.requested",
        "approval.granted",
        "grant.break_glass",
    ];
    let delivered = eventually(std::time::Duration::from_secs(30), async || {
        let events: Vec<String> = receiver
            .accepted()
            .iter()
            .map(|d| d.json()["event"].as_str().unwrap_or_default().to_string())
            .collect();
        wanted
            .iter()
            .all(|w| events.iter().any(|e| e == w))
            .then_some(())
            .ok_or(events)
    })
    .await;
    assert!(
        delivered.is_ok(),
        "not all delivered after the restart: {delivered:?}"
    );
    for d in receiver.accepted() {
        verify(SECRET, &d).unwrap_or_else(|e| panic!("{e}: {}", d.json()));
        assert!(!String::from_utf8_lossy(&d.body).contains("access_token"));
    }
    let completed = receiver
        .accepted()
        .into_iter()
        .find(|d| d.json()["event"] == "approval.granted")
        .unwrap();
    assert_eq!(
        completed.json()["detail"]["complete"],
        true,
        "{}",
        completed.json()
    );
    drop(restarted);
}

/// `mayfly exec --wait` waits for the approvers (saying who is needed), collects the
/// credential once they have approved, and runs the command with it.
#[tokio::test]
async fn exec_waits_for_approval_then_runs_the_command() {
    let s = setup().await;
    let alice = s.person("alice@acme.test", &["db-owners"]);
    let dave = s.person("dave@acme.test", &["db-owners"]);
    let token_file = common::scratch_dir().join("identity-token");
    std::fs::write(&token_file, &s.workload).unwrap();
    let exec = std::process::Command::new(BIN)
        .args([
            "exec",
            "--target",
            "ledger:read",
            "--purpose",
            "month-end close",
        ])
        .args([
            "--wait",
            "60s",
            "--",
            "sh",
            "-c",
            r#"test -n "$MAYFLY_ACCESS_TOKEN""#,
        ])
        .env("MAYFLY_ADDR", &s.broker.addr)
        .env("MAYFLY_IDENTITY_TOKEN_FILE", &token_file)
        .env_remove("MAYFLY_TOKEN")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The request appears for the approvers; both answer it.
    let grant = eventually(std::time::Duration::from_secs(20), async || {
        let (_, listed) = s.call(Method::GET, "/v1/approvals", &alice, None).await;
        listed[0]["grant_id"].as_str().map(str::to_string)
    })
    .await
    .expect("the request never reached the approvers");
    assert_eq!(s.answer(&alice, &grant, "approve", "ok").await.0, 200);
    assert_eq!(s.answer(&dave, &grant, "approve", "ok").await.0, 200);
    let out = exec.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("waiting for approval"),
        "a status line names who must approve: {stderr}"
    );
    assert!(stderr.contains("db-owners"), "{stderr}");
    let (_, shown) = s
        .call(
            Method::GET,
            &format!("/v1/grants/{grant}"),
            &s.workload,
            None,
        )
        .await;
    assert_eq!(shown["approval"]["state"], "collected", "{shown}");
}
