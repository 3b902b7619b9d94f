//! Cedar policy deciding grants in the running broker: allow with a TTL cap, approval,
//! forbid, default deny, explain, and hot reload that keeps the old set on a bad change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{eventually_every, Broker, BIN};
use reqwest::Method;
use serde_json::{json, Value};

const POLICIES: &str = r#"
@id("billing-read")
@max_ttl("10m")
permit (principal, action == Action::"read", resource == Target::"billing-api")
when { principal.owner == "team-billing" };

@id("billing-write-needs-approval")
@approval("1")
permit (principal, action == Action::"write", resource == Target::"billing-api")
when { principal.owner == "team-billing" };

@id("no-break-glass-for-pipelines")
@reason("break-glass is for on-call humans' tools, not pipelines")
forbid (principal, action, resource)
when { context.break_glass && principal.kind == "pipeline" };
"#;

fn request(identity: &str, action: &str, ttl: &str, context: Value) -> Value {
    json!({"identity": identity, "target": "billing-api", "action": action, "purpose": "deploy", "task": "t-1", "ttl": ttl, "context": context})
}

async fn wait_for_audit(broker: &Broker, kind: &str) -> Value {
    eventually_every(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            broker
                .audit("limit=10000")
                .await
                .into_iter()
                .rev()
                .find(|e| e["kind"] == kind)
        },
    )
    .await
    .unwrap_or_else(|| panic!("no {kind} event"))
}

#[tokio::test]
async fn cedar_decides_grants_and_hot_reloads() {
    let dir = common::scratch_dir();
    let policies = dir.join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("billing.cedar"), POLICIES).unwrap();
    let config = format!(
        "[policy]\ndir = \"{}\"\nreload_interval = \"1s\"\n",
        policies.display()
    );
    let broker = Broker::start_with_config(BIN, &dir, config);
    broker.add_identity("billing-ci", "team-billing").await;
    broker.add_identity("web-ci", "team-web").await;
    // The allow list is not consulted once Cedar decides: it is empty here.
    broker.add_token_target("billing-api", &[]).await;

    // Allowed, capped by @max_ttl.
    let (status, issued) = broker
        .post(
            "/v1/grants",
            request("billing-ci", "read", "30m", json!({})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["grant"]["granted_ttl"], "10m");
    assert_eq!(
        issued["grant"]["decision"]["determined_by"],
        json!(["billing-read"])
    );

    // Needs approval: recorded as pending, no credential.
    let (status, pending) = broker
        .post(
            "/v1/grants",
            request("billing-ci", "write", "5m", json!({})),
        )
        .await;
    assert_eq!(status, 202, "{pending}");
    assert_eq!(pending["grant"]["state"], "pending_approval");
    assert!(pending["credential"].is_null());

    // Default deny names what did not match; forbid names the policy and its reason.
    let (status, denied) = broker
        .post("/v1/grants", request("web-ci", "read", "5m", json!({})))
        .await;
    assert_eq!(status, 403, "{denied}");
    assert_eq!(denied["decision"]["determined_by"], json!(["default-deny"]));
    let (status, forbidden) = broker
        .post(
            "/v1/grants",
            request("billing-ci", "read", "5m", json!({"break_glass": true})),
        )
        .await;
    assert_eq!(status, 403, "{forbidden}");
    assert_eq!(
        forbidden["decision"]["determined_by"],
        json!(["no-break-glass-for-pipelines"])
    );
    assert!(
        forbidden["detail"]
            .as_str()
            .unwrap()
            .contains("break-glass is for on-call"),
        "{forbidden}"
    );

    // Bad context is a 400 naming the field, never a silent allow.
    for (context, field) in [
        (json!({"break_glass": "yes"}), "context.break_glass"),
        (json!({"colour": "red"}), "context.colour"),
        (json!({"source_ip": "10.0.0.1"}), "context.source_ip"),
    ] {
        let (status, problem) = broker
            .post(
                "/v1/grants",
                request("billing-ci", "read", "5m", context.clone()),
            )
            .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (400, Some(field)),
            "{context}: {problem}"
        );
    }
    // Actions a target offers must be declared in the policy schema.
    let (status, problem) = broker
        .post(
            "/v1/targets",
            json!({"name": "other", "kind": "token", "actions": ["deploy"]}),
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("actions")),
        "{problem}"
    );

    // Explain: the same evaluation, nothing recorded.
    let grants_before = broker.get("/v1/grants").await.as_array().unwrap().len();
    let (status, explained) = broker
        .post(
            "/v1/policy/explain",
            request("billing-ci", "read", "30m", json!({})),
        )
        .await;
    assert_eq!(status, 200, "{explained}");
    assert_eq!(explained["decision"]["outcome"], "allow");
    assert_eq!(explained["granted_ttl"], "10m");
    assert_eq!(
        broker.get("/v1/grants").await.as_array().unwrap().len(),
        grants_before
    );
    let cli = broker.cli(&[
        "policy",
        "explain",
        "--identity",
        "web-ci",
        "--target",
        "billing-api",
        "--action",
        "read",
        "--purpose",
        "p",
        "--task",
        "t",
    ]);
    assert!(cli.status.success());
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(
        text.contains("outcome:       deny") && text.contains("default-deny"),
        "{text}"
    );

    // An invalid change is rejected and audited; the previous policies stay in force.
    std::fs::write(
        policies.join("broken.cedar"),
        "permit (principal, action, resource) when { principal.nope };",
    )
    .unwrap();
    let rejected = wait_for_audit(&broker, "policy.rejected").await;
    assert!(
        rejected["detail"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("broken.cedar"),
        "{rejected}"
    );
    let (status, _) = broker
        .post(
            "/v1/grants",
            request("billing-ci", "read", "30m", json!({})),
        )
        .await;
    assert_eq!(status, 201);
    let validate = broker.cli(&["policy", "validate", policies.to_str().unwrap()]);
    assert!(!validate.status.success());
    let err = String::from_utf8_lossy(&validate.stderr);
    assert!(err.starts_with("error: broken.cedar:1:"), "{err}");

    // A valid change takes effect.
    std::fs::remove_file(policies.join("broken.cedar")).unwrap();
    std::fs::write(
        policies.join("billing.cedar"),
        POLICIES.replace("@max_ttl(\"10m\")", "@max_ttl(\"5m\")"),
    )
    .unwrap();
    wait_for_audit(&broker, "policy.reloaded").await;
    let (status, issued) = broker
        .post(
            "/v1/grants",
            request("billing-ci", "read", "30m", json!({})),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["grant"]["granted_ttl"], "5m");
    let (status, _, _) = broker
        .call(Method::GET, "/v1/audit/verify", Some(&broker.token), None)
        .await;
    assert_eq!(status, 200);
}

#[test]
fn shipped_example_policies_validate_and_pass_their_tests() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies");
    let validate = std::process::Command::new(common::BIN)
        .args(["policy", "validate", examples])
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    let tests = std::process::Command::new(common::BIN)
        .args(["policy", "test", &format!("{examples}/tests.toml")])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&tests.stdout);
    assert!(tests.status.success(), "{out}");
    assert!(out.trim_end().ends_with(" 0 failed"), "{out}");
}
