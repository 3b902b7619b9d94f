//! Unit tests: decision rules, request rejections, load errors, hot reload, the examples
//! and the per-target index. Most are tables: one row per rule or rejection reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mayfly_core::auth::{Principal, WorkloadClaims};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Identity, IdentityKind, Target};
use mayfly_core::policy::{Decision, Outcome, PolicyEngine, PolicyError, PolicyRequest};
use serde_json::json;
use time::macros::{datetime, offset};
use time::OffsetDateTime;

use crate::*;

fn engine(sources: &[(&str, &str)]) -> CedarEngine {
    CedarEngine::from_sources(sources.iter().copied(), LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn load_err(sources: &[(&str, &str)]) -> PolicyLoadError {
    match CedarEngine::from_sources(sources.iter().copied(), LoadOptions::default()) {
        Ok(_) => panic!("expected a load error"),
        Err(e) => e,
    }
}

/// A request with sensible defaults; tests change what they exercise.
#[derive(Clone)]
struct Req {
    id: &'static str,
    kind: IdentityKind,
    owner: &'static str,
    labels: Vec<(&'static str, &'static str)>,
    claims: serde_json::Value,
    operator: bool,
    action: &'static str,
    target: &'static str,
    target_actions: Vec<&'static str>,
    settings: serde_json::Value,
    context: serde_json::Value,
    purpose: String,
    task: String,
    ttl: u64,
    now: OffsetDateTime,
}

impl Default for Req {
    fn default() -> Self {
        Req {
            id: "billing-api",
            kind: IdentityKind::Service,
            owner: "payments",
            labels: vec![],
            claims: json!({}),
            operator: false,
            action: "write",
            target: "pg-prod",
            target_actions: vec!["connect", "read", "write", "admin"],
            settings: json!({"environment": "production", "owner": "payments", "groups": ["databases"]}),
            context: json!({}),
            purpose: "fix invoices".into(),
            task: "INC-1".into(),
            ttl: 3600,
            // Tuesday
            now: datetime!(2025-03-04 10:00 UTC),
        }
    }
}

impl Req {
    fn decide_with(&self, e: &dyn PolicyEngine) -> Result<Decision, PolicyError> {
        let identity = Identity {
            id: self.id.into(),
            kind: self.kind,
            owner: self.owner.into(),
            purpose: "test".into(),
            expires_at: None,
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            enabled: true,
            created_at: self.now,
        };
        let principal = if self.operator {
            Principal::Operator {
                name: "alice".into(),
            }
        } else {
            let attributes: BTreeMap<String, serde_json::Value> =
                serde_json::from_value(self.claims.clone()).unwrap();
            Principal::workload(
                WorkloadClaims {
                    identity: self.id.into(),
                    method: "oidc".into(),
                    issuer: "https://issuer.test".into(),
                    subject: "sub".into(),
                    attributes,
                    expires_at: None,
                },
                &identity,
            )
        };
        let target = Target {
            name: self.target.into(),
            kind: "postgres".into(),
            actions: self.target_actions.iter().map(|a| a.to_string()).collect(),
            default_ttl: Ttl::from_secs(900),
            max_ttl: Ttl::from_secs(86_400),
            allow: vec![],
            settings: self.settings.clone(),
            created_at: self.now,
        };
        e.decide(&PolicyRequest {
            principal: &principal,
            identity: &identity,
            target: &target,
            action: self.action,
            purpose: &self.purpose,
            task: &self.task,
            requested_ttl: Ttl::from_secs(self.ttl),
            context: &self.context,
            now: self.now,
        })
    }

    fn decide(&self, e: &CedarEngine) -> Decision {
        self.decide_with(e).unwrap_or_else(|err| panic!("{err}"))
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/policies")
}

#[test]
fn examples_load_and_their_tests_pass() {
    let dir = examples_dir();
    let engine = load_dir(&dir, LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(engine.policy_count() >= 8);
    let report = run_test_file(&dir.join("tests.toml"), &engine);
    println!("{report}");
    assert!(report.is_success(), "{report}");
    assert!(report.cases.len() >= 15);
}

#[test]
fn test_runner_reports_failures_with_the_reason() {
    let engine = engine(&[(
        "p.cedar",
        r#"@id("r") permit(principal, action == Action::"read", resource);"#,
    )]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.toml");
    std::fs::write(
        &file,
        r#"
[[case]]
name = "wrong expectation"
principal = { id = "a", kind = "service", owner = "o" }
action = "read"
resource = { name = "t", kind = "token" }
expect = "deny"

[[case]]
name = "right expectation"
principal = { id = "a", kind = "service", owner = "o" }
action = "read"
resource = { name = "t", kind = "token" }
expect = "allow"
expect_determined_by = ["r"]
expect_max_ttl = "none"
"#,
    )
    .unwrap();
    let report = run_test_file(&file, &engine);
    assert_eq!((report.passed(), report.failed()), (1, 1), "{report}");
    assert!(
        report.cases[0].message.contains("expected Deny"),
        "{report}"
    );
    assert!(!report.is_success());

    std::fs::write(&file, "[[case]]\nname = 1\n").unwrap();
    let report = run_test_file(&file, &engine);
    assert!(report.error.is_some() && !report.is_success());
}

const RULES: &str = r#"
@id("owner-read")
permit(principal, action == Action::"read", resource) when { principal.owner == resource.owner };

@id("write-a")
@approval("1")
@max_ttl("30m")
permit(principal, action == Action::"write", resource in TargetGroup::"databases");

@id("write-b")
@approval("2")
@max_ttl("1h")
permit(principal, action == Action::"write", resource == Target::"pg-prod")
when { resource.environment == "production" };

@id("write-c")
permit(principal, action == Action::"write", resource == Target::"pg-prod");

@id("connect-hours")
@max_ttl("20m")
permit(principal, action == Action::"connect", resource)
when { ["mon","tue","wed","thu","fri"].contains(context.now.weekday) && context.now.hour >= 9 && context.now.hour < 18 };

@id("no-blocked")
@reason("identity is blocked by security")
forbid(principal, action, resource) when { principal.labels.contains("blocked=true") };

forbid(principal, action == Action::"admin", resource);

@id("claims")
permit(principal, action == Action::"admin", resource == Target::"claims-only")
when { principal.attributes.contains("repository=acme/app") && principal.attributes.contains("team=b") };

@id("ops")
permit(principal, action == Action::"read", resource == Target::"ops-only") when { principal.method == "operator" };

@id("net")
permit(principal, action == Action::"read", resource == Target::"net-only")
when { context has source_ip && context.source_ip == "10.0.0.1" && context.environment == "prod" };

@id("glass")
permit(principal, action == Action::"read", resource == Target::"glass-only")
when { context.break_glass && context.requested_ttl_seconds <= 600 && context.task_id != "" };
"#;

#[test]
fn decision_rules() {
    let e = engine(&[("rules.cedar", RULES)]);
    struct Row {
        name: &'static str,
        req: Req,
        outcome: Outcome,
        max_ttl: Option<u64>,
        by: &'static [&'static str],
        reason: &'static str,
    }
    let base = Req::default();
    let rows = vec![
        Row {
            name: "permit without annotations allows without cap",
            req: Req {
                action: "read",
                ..base.clone()
            },
            outcome: Outcome::Allow,
            max_ttl: None,
            by: &["owner-read"],
            reason: "",
        },
        Row {
            name: "default deny names principal, action and target",
            req: Req {
                action: "read",
                owner: "search",
                ..base.clone()
            },
            outcome: Outcome::Deny,
            max_ttl: None,
            by: &["default-deny"],
            reason: r#"no permit policy matched Workload::"billing-api" doing Action::"read" on Target::"pg-prod""#,
        },
        Row {
            name: "strictest wins: max approvals, min TTL over all matching permits",
            req: base.clone(),
            outcome: Outcome::RequireApproval { approvals: 2 },
            max_ttl: Some(1800),
            by: &["write-a", "write-b", "write-c"],
            reason: "requires 2 approvals",
        },
        Row {
            name: "a permit that does not match does not contribute",
            req: Req {
                settings: json!({"environment": "staging", "groups": ["databases"]}),
                ..base.clone()
            },
            outcome: Outcome::RequireApproval { approvals: 1 },
            max_ttl: Some(1800),
            by: &["write-a", "write-c"],
            reason: "",
        },
        Row {
            name: "group membership comes from settings.groups",
            req: Req {
                target: "pg-other",
                ..base.clone()
            },
            outcome: Outcome::RequireApproval { approvals: 1 },
            max_ttl: Some(1800),
            by: &["write-a"],
            reason: "",
        },
        Row {
            name: "forbid beats permit and carries its @reason",
            req: Req {
                labels: vec![("blocked", "true")],
                ..base.clone()
            },
            outcome: Outcome::Deny,
            max_ttl: None,
            by: &["no-blocked"],
            reason: r#"forbidden by policy "no-blocked": identity is blocked by security"#,
        },
        Row {
            name: "forbid without @id is named file:index",
            req: Req {
                action: "admin",
                target: "claims-only",
                claims: json!({"repository": "acme/app", "team": ["a", "b"]}),
                ..base.clone()
            },
            outcome: Outcome::Deny,
            max_ttl: None,
            by: &["rules.cedar:6"],
            reason: r#"forbidden by policy "rules.cedar:6""#,
        },
        Row {
            name: "business hours: Tuesday 10:00 allowed",
            req: Req {
                action: "connect",
                ..base.clone()
            },
            outcome: Outcome::Allow,
            max_ttl: Some(1200),
            by: &["connect-hours"],
            reason: "",
        },
        Row {
            name: "business hours: Tuesday 18:00 denied",
            req: Req {
                action: "connect",
                now: datetime!(2025-03-04 18:00 UTC),
                ..base.clone()
            },
            outcome: Outcome::Deny,
            max_ttl: None,
            by: &["default-deny"],
            reason: "",
        },
        Row {
            name: "business hours: Saturday denied",
            req: Req {
                action: "connect",
                now: datetime!(2025-03-08 10:00 UTC),
                ..base.clone()
            },
            outcome: Outcome::Deny,
            max_ttl: None,
            by: &["default-deny"],
            reason: "",
        },
        Row {
            name: "operator acting for an identity is visible as method operator",
            req: Req {
                action: "read",
                target: "ops-only",
                owner: "x",
                operator: true,
                ..base.clone()
            },
            outcome: Outcome::Allow,
            max_ttl: None,
            by: &["ops"],
            reason: "",
        },
        Row {
            name: "source_ip and environment from the request context",
            req: Req {
                action: "read",
                target: "net-only",
                owner: "x",
                context: json!({"source_ip": "10.0.0.1", "environment": "prod"}),
                ..base.clone()
            },
            outcome: Outcome::Allow,
            max_ttl: None,
            by: &["net"],
            reason: "",
        },
        Row {
            name: "absent source_ip does not match (and does not error)",
            req: Req {
                action: "read",
                target: "net-only",
                owner: "x",
                context: json!({"environment": "prod"}),
                ..base.clone()
            },
            outcome: Outcome::Deny,
            max_ttl: None,
            by: &["default-deny"],
            reason: "",
        },
        Row {
            name: "break_glass, task and requested TTL reach the context",
            req: Req {
                action: "read",
                target: "glass-only",
                owner: "x",
                ttl: 600,
                context: json!({"break_glass": true}),
                ..base.clone()
            },
            outcome: Outcome::Allow,
            max_ttl: None,
            by: &["glass"],
            reason: "",
        },
        Row {
            name: "break_glass false does not match",
            req: Req {
                action: "read",
                target: "glass-only",
                owner: "x",
                ttl: 600,
                context: json!({"break_glass": false}),
                ..base.clone()
            },
            outcome: Outcome::Deny,
            max_ttl: None,
            by: &["default-deny"],
            reason: "",
        },
    ];
    for row in rows {
        let d = row.req.decide(&e);
        assert_eq!(d.outcome, row.outcome, "{}: {d:?}", row.name);
        assert_eq!(
            d.max_ttl,
            row.max_ttl.map(Ttl::from_secs),
            "{}: {d:?}",
            row.name
        );
        assert_eq!(d.determined_by, row.by, "{}: {d:?}", row.name);
        assert_eq!(d.engine, "cedar");
        if !row.reason.is_empty() {
            assert!(
                d.reasons.iter().any(|r| r.contains(row.reason)),
                "{}: reasons {:?}",
                row.name,
                d.reasons
            );
        }
    }
}

#[test]
fn claims_become_key_value_tags() {
    let e = engine(&[("rules.cedar", RULES)]);
    // `forbid admin` wins anyway; check the claims permit via determined_by of a variant
    // without the forbid.
    let e2 = engine(&[(
        "c.cedar",
        r#"@id("claims") permit(principal, action == Action::"admin", resource)
           when { principal.attributes.contains("repository=acme/app") && principal.attributes.contains("team=b")
                  && principal.attributes.contains("run=42") && principal.environment == "prod" };"#,
    )]);
    let req = Req {
        action: "admin",
        labels: vec![("env", "prod")],
        claims: json!({"repository": "acme/app", "team": ["a", "b"], "run": 42, "none": null}),
        ..Req::default()
    };
    assert_eq!(req.decide(&e2).outcome, Outcome::Allow);
    assert_eq!(
        Req {
            claims: json!({"repository": "acme/other", "team": ["b"], "run": 42}),
            ..req.clone()
        }
        .decide(&e2)
        .outcome,
        Outcome::Deny
    );
    assert_eq!(req.decide(&e).outcome, Outcome::Deny);
}

#[test]
fn approvals_given_satisfy_the_requirement() {
    let e = engine(&[("rules.cedar", RULES)]);
    let identity_req = Req::default();
    let one = GivenApprovals {
        approvers: vec!["carol".into()],
    };
    let two = GivenApprovals {
        approvers: vec!["carol".into(), "dave".into()],
    };
    let decide = |a: &GivenApprovals| {
        let r = &identity_req;
        let identity = Identity {
            id: r.id.into(),
            kind: r.kind,
            owner: r.owner.into(),
            purpose: "p".into(),
            expires_at: None,
            labels: BTreeMap::new(),
            enabled: true,
            created_at: r.now,
        };
        let principal = Principal::Operator { name: "op".into() };
        let target = Target {
            name: r.target.into(),
            kind: "postgres".into(),
            actions: vec!["write".into()],
            default_ttl: Ttl::from_secs(60),
            max_ttl: Ttl::from_secs(3600),
            allow: vec![],
            settings: r.settings.clone(),
            created_at: r.now,
        };
        e.decide_with_approvals(
            &PolicyRequest {
                principal: &principal,
                identity: &identity,
                target: &target,
                action: "write",
                purpose: "p",
                task: "t",
                requested_ttl: Ttl::from_secs(60),
                context: &json!({}),
                now: r.now,
            },
            a,
        )
        .unwrap()
        .outcome
    };
    assert_eq!(decide(&one), Outcome::RequireApproval { approvals: 2 });
    assert_eq!(decide(&two), Outcome::Allow);
}

#[test]
fn utc_offset_sets_local_business_hours() {
    let src = [(
        "h.cedar",
        r#"permit(principal, action, resource) when { context.now.hour >= 9 && context.now.hour < 18 && context.now.weekday == "tue" };"#,
    )];
    let utc = engine(&src);
    let plus2 = CedarEngine::from_sources(
        src,
        LoadOptions {
            utc_offset: offset!(+2),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    // 16:30 UTC is 18:30 at +02:00.
    let req = Req {
        now: datetime!(2025-03-04 16:30 UTC),
        ..Req::default()
    };
    assert_eq!(req.decide(&utc).outcome, Outcome::Allow);
    assert_eq!(req.decide(&plus2).outcome, Outcome::Deny);
    // 23:30 UTC Monday is 01:30 Tuesday at +02:00: weekday follows the offset too.
    let req = Req {
        now: datetime!(2025-03-03 23:30 UTC),
        ..Req::default()
    };
    assert_eq!(req.decide(&plus2).outcome, Outcome::Deny);
    let req = Req {
        now: datetime!(2025-03-04 07:30 UTC),
        ..Req::default()
    };
    assert_eq!(req.decide(&utc).outcome, Outcome::Deny);
    assert_eq!(req.decide(&plus2).outcome, Outcome::Allow);
}

#[test]
fn requests_that_cannot_be_evaluated_are_rejected_with_the_field() {
    let e = engine(&[("rules.cedar", RULES)]);
    let base = Req::default();
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    let rows: Vec<(&str, Req, &str, &str)> = vec![
        (
            "action the target does not offer",
            Req {
                target_actions: vec!["read"],
                ..base.clone()
            },
            "action",
            "does not offer action",
        ),
        (
            "action not declared in the schema",
            Req {
                action: "billing:read",
                target_actions: vec!["billing:read"],
                ..base.clone()
            },
            "action",
            "not declared in the policy schema",
        ),
        (
            "unknown context key",
            Req {
                context: json!({"breakglass": true}),
                ..base.clone()
            },
            "context.breakglass",
            "unknown context key",
        ),
        (
            "break_glass of the wrong type",
            Req {
                context: json!({"break_glass": "yes"}),
                ..base.clone()
            },
            "context.break_glass",
            "must be a boolean",
        ),
        (
            "environment of the wrong type",
            Req {
                context: json!({"environment": 3}),
                ..base.clone()
            },
            "context.environment",
            "must be a string",
        ),
        (
            "source_ip of the wrong type",
            Req {
                context: json!({"source_ip": [1]}),
                ..base.clone()
            },
            "context.source_ip",
            "must be a string",
        ),
        (
            "source_ip not an address",
            Req {
                context: json!({"source_ip": "nope"}),
                ..base.clone()
            },
            "context.source_ip",
            "not an IPv4 or IPv6",
        ),
        (
            "approvals cannot be claimed by the caller",
            Req {
                context: json!({"approvals": {"count": 5}}),
                ..base.clone()
            },
            "context.approvals",
            "unknown context key",
        ),
        (
            "context not an object",
            Req {
                context: json!([1, 2]),
                ..base.clone()
            },
            "context",
            "must be a JSON object",
        ),
        (
            "purpose over 1 KiB",
            Req {
                purpose: long.clone(),
                ..base.clone()
            },
            "purpose",
            "at most 1024",
        ),
        (
            "task over 1 KiB",
            Req {
                task: long.clone(),
                ..base.clone()
            },
            "task",
            "at most 1024",
        ),
    ];
    for (name, req, field, reason) in rows {
        match req.decide_with(&e) {
            Err(PolicyError::BadRequest {
                field: f,
                reason: r,
            }) => {
                assert_eq!(f, field, "{name}");
                assert!(r.contains(reason), "{name}: {r}");
            }
            other => panic!("{name}: expected BadRequest, got {other:?}"),
        }
    }
    // A purpose of exactly 1 KiB is fine; a null context is an empty one.
    let ok = Req {
        purpose: "p".repeat(MAX_TEXT_BYTES),
        context: serde_json::Value::Null,
        ..base.clone()
    };
    assert!(ok.decide_with(&e).is_ok());
    // Misconfigured targets fail closed as internal errors, not as the caller's fault.
    let bad_target = Req {
        settings: json!({"groups": "databases"}),
        ..base.clone()
    };
    assert!(matches!(
        bad_target.decide_with(&e),
        Err(PolicyError::Internal(_))
    ));
    let bad_target = Req {
        settings: json!({"sensitivity": 3}),
        ..base
    };
    assert!(matches!(
        bad_target.decide_with(&e),
        Err(PolicyError::Internal(_))
    ));
}

#[test]
fn extra_actions_make_token_scopes_usable() {
    let src = [(
        "s.cedar",
        r#"@id("scope") @max_ttl("5m") permit(principal, action == Action::"billing:read", resource);"#,
    )];
    // Without the declaration the policy itself is rejected: the validator catches it.
    let err = load_err(&src);
    assert!(err.to_string().contains("billing:read"), "{err}");
    let e = CedarEngine::from_sources(
        src,
        LoadOptions {
            extra_actions: vec!["billing:read".into(), "read".into()],
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let req = Req {
        action: "billing:read",
        target_actions: vec!["billing:read"],
        ..Req::default()
    };
    let d = req.decide(&e);
    assert_eq!(
        (d.outcome, d.max_ttl),
        (Outcome::Allow, Some(Ttl::from_secs(300)))
    );
    assert!(e.actions().any(|a| a == "billing:read"));
    // Unusable names are load errors, not schema syntax surprises.
    let bad = CedarEngine::from_sources(
        src,
        LoadOptions {
            extra_actions: vec!["a\"b".into()],
            ..LoadOptions::default()
        },
    );
    assert!(bad.is_err());
}

#[test]
fn load_errors_carry_file_line_and_message() {
    struct Row {
        name: &'static str,
        text: &'static str,
        line: Option<usize>,
        message: &'static str,
    }
    let rows = [
        Row {
            name: "undeclared attribute",
            text: "// header\n\npermit(principal, action, resource)\nwhen { principal.team == \"x\" };\n",
            line: Some(4),
            message: "team",
        },
        Row {
            name: "syntax error",
            text: "permit(principal, action, resource);\n\npermit(principal action, resource);\n",
            line: Some(3),
            message: "",
        },
        Row {
            name: "unknown entity type",
            text: "permit(principal == User::\"a\", action, resource);\n",
            line: Some(1),
            message: "User",
        },
        Row {
            name: "unknown action",
            text: "\npermit(principal, action == Action::\"delete\", resource);\n",
            line: Some(2),
            message: "delete",
        },
        Row {
            name: "type error",
            text: "permit(principal, action, resource) when { context.break_glass == 1 };\n",
            line: Some(1),
            message: "",
        },
        Row {
            name: "optional attribute without has",
            text: "permit(principal, action, resource) when { context.source_ip == \"1.2.3.4\" };\n",
            line: Some(1),
            message: "source_ip",
        },
        Row {
            name: "approval not a number",
            text: "permit(principal, action, resource);\n@approval(\"two\")\npermit(principal, action, resource);\n",
            line: Some(2),
            message: "@approval(\"two\")",
        },
        Row {
            name: "approval too large",
            text: "@approval(\"11\") permit(principal, action, resource);\n",
            line: Some(1),
            message: "from 0 to 10",
        },
        Row {
            name: "max_ttl not a duration",
            text: "@max_ttl(\"15x\") permit(principal, action, resource);\n",
            line: Some(1),
            message: "@max_ttl(\"15x\") is not a duration",
        },
        Row {
            name: "max_ttl zero",
            text: "@max_ttl(\"0s\") permit(principal, action, resource);\n",
            line: Some(1),
            message: "longer than zero",
        },
        Row {
            name: "limits on a forbid",
            text: "@max_ttl(\"15m\") forbid(principal, action, resource);\n",
            line: Some(1),
            message: "only apply to permit",
        },
        Row {
            name: "misspelt annotation",
            text: "@approvals(\"1\") permit(principal, action, resource);\n",
            line: Some(1),
            message: "did you mean @approval",
        },
        Row {
            name: "duplicate id",
            text: "@id(\"a\") permit(principal, action, resource);\n@id(\"a\") permit(principal, action, resource);\n",
            line: Some(1),
            message: "duplicate policy id",
        },
        Row {
            name: "template",
            text: "permit(principal == ?principal, action, resource);\n",
            line: Some(1),
            message: "templates",
        },
    ];
    for row in rows {
        let err = load_err(&[
            (
                "ok.cedar",
                "permit(principal, action == Action::\"read\", resource);",
            ),
            ("bad.cedar", row.text),
        ]);
        let d = err
            .diagnostics
            .iter()
            .find(|d| d.file == "bad.cedar")
            .unwrap_or_else(|| panic!("{}: {err}", row.name));
        if row.name != "duplicate id" {
            assert_eq!(d.line, row.line, "{}: {err}", row.name);
            assert!(d.column.is_some(), "{}: {err}", row.name);
        }
        assert!(d.message.contains(row.message), "{}: {err}", row.name);
        assert!(
            err.to_string().contains("bad.cedar:"),
            "{}: {err}",
            row.name
        );
    }
}

#[test]
fn load_dir_reads_policies_and_fragments_and_locates_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
    std::fs::write(
        dir.path().join("scopes.cedarschema"),
        "action \"x:read\" appliesTo { principal: [Workload], resource: [Target], context: RequestContext };",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("a.cedar"),
        "permit(principal, action == Action::\"x:read\", resource);",
    )
    .unwrap();
    let e = load_dir(dir.path(), LoadOptions::default()).unwrap();
    assert_eq!(e.policy_count(), 1);

    std::fs::write(dir.path().join("b.cedarschema"), "entity Broken {").unwrap();
    let err = load_dir(dir.path(), LoadOptions::default()).unwrap_err();
    assert_eq!(err.diagnostics[0].file, "b.cedarschema", "{err}");

    let err = load_dir(&dir.path().join("missing"), LoadOptions::default()).unwrap_err();
    assert!(err.to_string().contains("cannot read directory"), "{err}");
}

#[test]
fn hot_reload_accepts_valid_changes_and_keeps_the_old_set_on_invalid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.cedar");
    std::fs::write(
        &file,
        "@id(\"read\") permit(principal, action == Action::\"read\", resource);",
    )
    .unwrap();
    let engine = ReloadingEngine::new(dir.path(), LoadOptions::default()).unwrap();
    let write_req = Req::default();
    let outcome = |e: &ReloadingEngine| write_req.decide_with(e).unwrap().outcome;
    assert_eq!(outcome(&engine), Outcome::Deny);
    assert_eq!(engine.reload_if_changed(), ReloadOutcome::Unchanged);

    std::fs::write(&file, "@id(\"write\") permit(principal, action == Action::\"write\", resource);\n@id(\"read\") permit(principal, action == Action::\"read\", resource);").unwrap();
    assert_eq!(
        engine.reload_if_changed(),
        ReloadOutcome::Reloaded { policies: 2 }
    );
    assert_eq!(outcome(&engine), Outcome::Allow);

    // Same length, same second: still detected (content hash, not mtime).
    std::fs::write(&file, "@id(\"write\") permit(principal, action == Action::\"write\", resource) when { principal.nope };").unwrap();
    match engine.reload_if_changed() {
        ReloadOutcome::Rejected { error } => {
            assert_eq!(error.diagnostics[0].file, "p.cedar");
            assert_eq!(error.diagnostics[0].line, Some(1));
        }
        other => panic!("expected rejection, got {other:?}"),
    }
    assert_eq!(
        outcome(&engine),
        Outcome::Allow,
        "previous set stays in force"
    );
    assert_eq!(engine.current().policy_count(), 2);
    // The rejected content is reported once, not on every poll.
    assert_eq!(engine.reload_if_changed(), ReloadOutcome::Unchanged);

    // A new file is a change too; fixing the broken one reloads.
    std::fs::write(
        &file,
        "@id(\"read\") permit(principal, action == Action::\"read\", resource);",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("q.cedar"),
        "forbid(principal, action, resource) when { context.break_glass };",
    )
    .unwrap();
    assert_eq!(
        engine.reload_if_changed(),
        ReloadOutcome::Reloaded { policies: 2 }
    );
    assert_eq!(outcome(&engine), Outcome::Deny);

    // The initial load must be valid: there is nothing to fall back to.
    std::fs::write(&file, "permit(").unwrap();
    assert!(ReloadingEngine::new(dir.path(), LoadOptions::default()).is_err());
}

#[test]
fn engines_are_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CedarEngine>();
    assert_send_sync::<ReloadingEngine>();
}

#[test]
fn index_keeps_a_decision_to_the_policies_that_can_apply() {
    let sources = bench_support::synthetic_policies(1000);
    let e = CedarEngine::from_sources(sources, LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.policy_count(), 1000);
    let f = bench_support::fixture();
    let n = e.policies_for(&f.target, "read").unwrap();
    assert!(
        (5..=12).contains(&n),
        "{n} policies for the benchmarked request"
    );

    let decide = |action: &str, context: serde_json::Value, target: &Target| {
        e.decide(&PolicyRequest {
            principal: &f.principal,
            identity: &f.identity,
            target,
            action,
            purpose: "nightly report",
            task: "JOB-1",
            requested_ttl: Ttl::from_secs(900),
            context: &context,
            now: f.now,
        })
        .unwrap()
    };
    // Target-scoped and group-scoped permits both apply.
    let d = decide("read", f.context.clone(), &f.target);
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(
        d.determined_by,
        [
            "group-07-read-140",
            "svc-007-read-107",
            "svc-007-read-507",
            "svc-007-read-907"
        ],
        "{d:?}"
    );
    assert_eq!(d.max_ttl, Some(Ttl::from_secs(3600)));
    // Global policies apply to every target.
    let d = decide("read", json!({"source_ip": "192.168.1.1"}), &f.target);
    assert_eq!(d.determined_by, ["global-blocked-network"], "{d:?}");
    let d = decide("write", f.context.clone(), &f.target);
    assert_eq!(
        d.outcome,
        Outcome::RequireApproval { approvals: 1 },
        "{d:?}"
    );
    // Another target's policies do not leak in.
    let mut other = f.target.clone();
    other.name = "svc-008".into();
    let d = decide("read", f.context.clone(), &other);
    assert_eq!(d.determined_by, ["group-07-read-140"], "{d:?}");
}

#[test]
fn slicing_never_changes_a_decision() {
    let mut sources = bench_support::synthetic_policies(400);
    sources.push((
        "groups.cedarschema".into(),
        "action \"readonly\";\naction \"x:read\" in [\"readonly\"] appliesTo { principal: [Workload], resource: [Target], context: RequestContext };".into(),
    ));
    sources.push((
        "groups.cedar".into(),
        r#"@id("ro") @max_ttl("5m") permit(principal, action in [Action::"write", Action::"readonly"], resource in TargetGroup::"group-03");
           @id("ro-any") forbid(principal, action in Action::"readonly", resource) when { principal.kind == "agent" };"#.into(),
    ));
    let sliced = CedarEngine::from_sources(sources.clone(), LoadOptions::default()).unwrap();
    let mut full = CedarEngine::from_sources(sources, LoadOptions::default()).unwrap();
    full.slicing = false;
    let f = bench_support::fixture();
    let mut compared = 0;
    for t in [3usize, 7, 53, 99, 150] {
        for group in [None, Some(t % bench_support::GROUPS), Some(3)] {
            for action in ["connect", "read", "write", "admin", "x:read"] {
                for kind in [IdentityKind::Service, IdentityKind::Agent] {
                    for context in [
                        json!({}),
                        json!({"break_glass": true}),
                        json!({"source_ip": "192.168.0.1"}),
                    ] {
                        let mut target = f.target.clone();
                        target.name = format!("svc-{t:03}");
                        target.actions.push("x:read".into());
                        target.settings["groups"] = match group {
                            Some(g) => json!([format!("group-{g:02}")]),
                            None => json!([]),
                        };
                        let mut identity = f.identity.clone();
                        identity.kind = kind;
                        identity.owner = format!("team-{:02}", t % 30);
                        identity.labels.insert("oncall".into(), "true".into());
                        let req = PolicyRequest {
                            principal: &f.principal,
                            identity: &identity,
                            target: &target,
                            action,
                            purpose: "p",
                            task: "",
                            requested_ttl: Ttl::from_secs(600),
                            context: &context,
                            now: f.now,
                        };
                        let a = sliced.decide(&req).unwrap();
                        let b = full.decide(&req).unwrap();
                        assert_eq!(a, b, "{} {action} {kind:?} {context}", target.name);
                        compared += 1;
                    }
                }
            }
        }
    }
    assert_eq!(compared, 5 * 3 * 5 * 2 * 3);
    // The action group policy is reached through its group.
    let mut target = f.target.clone();
    target.name = "svc-203".into();
    target.actions = vec!["x:read".into()];
    target.settings["groups"] = json!(["group-03"]);
    let d = sliced
        .decide(&PolicyRequest {
            principal: &f.principal,
            identity: &f.identity,
            target: &target,
            action: "x:read",
            purpose: "p",
            task: "t",
            requested_ttl: Ttl::from_secs(600),
            context: &json!({}),
            now: f.now,
        })
        .unwrap();
    assert_eq!(d.determined_by, ["ro"], "{d:?}");
}

/// Delegation (`act_for`): default deny, a permit naming `act_for` allows, a policy for
/// every action does not, a forbid wins, and the context carries subject and actors.
#[test]
fn delegation_needs_a_permit_naming_act_for() {
    let workload = |id: &str, kind: IdentityKind| {
        let identity = Identity {
            id: id.into(),
            kind,
            owner: "payments".into(),
            purpose: "test".into(),
            expires_at: None,
            labels: Default::default(),
            enabled: true,
            created_at: datetime!(2025-03-04 10:00 UTC),
        };
        let principal = Principal::workload(
            WorkloadClaims {
                identity: id.into(),
                method: "oidc".into(),
                issuer: "https://issuer.test".into(),
                subject: id.into(),
                attributes: BTreeMap::new(),
                expires_at: None,
            },
            &identity,
        );
        (principal, identity)
    };
    let (svc, svc_identity) = workload("billing-svc", IdentityKind::Service);
    let (agent, agent_identity) = workload("triage-agent", IdentityKind::Agent);
    let target = Target {
        name: "billing-api".into(),
        kind: "token".into(),
        actions: vec!["read".into(), "write".into()],
        default_ttl: Ttl::from_secs(300),
        max_ttl: Ttl::from_secs(3600),
        allow: vec![],
        settings: json!({}),
        created_at: datetime!(2025-03-04 10:00 UTC),
    };
    let context = json!({"actors": ["triage-agent"]});
    let grant = PolicyRequest {
        principal: &svc,
        identity: &svc_identity,
        target: &target,
        action: "read",
        purpose: "triage",
        task: "INC-7",
        requested_ttl: Ttl::from_secs(300),
        context: &context,
        now: datetime!(2025-03-04 10:00 UTC),
    };
    let request = mayfly_core::policy::DelegationRequest {
        grant: &grant,
        actor: &agent,
        actor_identity: &agent_identity,
    };
    let permit_act_for = r#"@id("agent-for-svc") permit (principal == Workload::"triage-agent", action == Action::"act_for", resource == Target::"billing-api")
        when { context.subject == Workload::"billing-svc" && context.subject.kind == "service" && context.actors.contains("triage-agent") };"#;
    let other_subject = permit_act_for.replace("Workload::\"billing-svc\"", "Workload::\"other\"");
    let cases: &[(&str, Vec<&str>, Outcome)] = &[
        ("no policies: default deny", vec![], Outcome::Deny),
        (
            "a permit naming act_for",
            vec![permit_act_for],
            Outcome::Allow,
        ),
        (
            "a permit for every action does not delegate",
            vec![r#"@id("all") permit (principal, action, resource);"#],
            Outcome::Deny,
        ),
        (
            "a permit for another subject",
            vec![&other_subject],
            Outcome::Deny,
        ),
        (
            "a forbid wins",
            vec![
                permit_act_for,
                r#"@id("no-agents") forbid (principal, action, resource) when { principal.kind == "agent" };"#,
            ],
            Outcome::Deny,
        ),
    ];
    for (name, policies, expected) in cases {
        let sources: Vec<(String, String)> = policies
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("p{i}.cedar"), p.to_string()))
            .collect();
        let e = CedarEngine::from_sources(sources, LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let decision = e.decide_delegation(&request).unwrap();
        assert_eq!(decision.outcome, *expected, "{name}: {decision:?}");
        // The grant itself sees the actors too.
        e.decide(&grant).unwrap();
    }
    // The allow-list engine (no policy directory) never delegates.
    let decision = mayfly_core::policy::TargetAllowList
        .decide_delegation(&request)
        .unwrap();
    assert_eq!(decision.outcome, Outcome::Deny);
    // A subject cannot act for itself.
    let e = engine(&[("p.cedar", permit_act_for)]);
    let own = mayfly_core::policy::DelegationRequest {
        grant: &grant,
        actor: &svc,
        actor_identity: &svc_identity,
    };
    assert!(matches!(
        e.decide_delegation(&own),
        Err(PolicyError::BadRequest { .. })
    ));
}

/// `@approvers` names the groups that may approve; the decision carries them (the
/// strictest permits' groups, together), and decided again with enough approvers given
/// the same request is allowed. Misuse is a load error.
#[test]
fn approvers_name_the_groups_that_may_approve() {
    let src = r#"
@id("prod-writes")
@approval("2")
@approvers("db-owners, sre")
permit (principal, action == Action::"write", resource);
"#;
    let e = engine(&[("a.cedar", src)]);
    let d = Req::default().decide(&e);
    assert_eq!(d.outcome, Outcome::RequireApproval { approvals: 2 });
    assert_eq!(d.approvers, ["db-owners", "sre"]);
    assert!(
        d.reasons[0].contains("from db-owners or sre"),
        "{:?}",
        d.reasons
    );

    for (text, says) in [
        (
            "@approvers(\"sre\")\npermit (principal, action, resource);",
            "needs @approval",
        ),
        (
            "@approval(\"1\")\n@approvers(\" , \")\npermit (principal, action, resource);",
            "names no group",
        ),
        (
            "@approver(\"sre\")\npermit (principal, action, resource);",
            "did you mean @approvers",
        ),
    ] {
        let err = load_err(&[("bad.cedar", text)]);
        assert!(err.to_string().contains(says), "{text}: {err}");
    }
}
