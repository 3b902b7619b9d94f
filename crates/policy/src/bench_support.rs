//! A synthetic but realistic policy set and request, shared by the `decide` benchmark and
//! the unit test that checks the per-target index keeps decisions small.
//!
//! Not part of the stable API.

use std::collections::BTreeMap;

use mayfly_core::auth::{Principal, WorkloadClaims};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Identity, IdentityKind, Target};
use time::OffsetDateTime;

/// Targets the synthetic policies are spread over (`svc-000` …).
pub const TARGETS: usize = 100;
/// Target groups (`group-00` …); target `svc-NNN` is in `group-(NNN % GROUPS)`.
pub const GROUPS: usize = 50;
/// Policies with an unconstrained resource scope (apply to every target).
pub const GLOBAL: usize = 3;

/// `n` policies as (file name, text), ten policies per file. Most name one target, about
/// one in twenty a target group, and [`GLOBAL`] apply everywhere, so a decision on one
/// target sees roughly `GLOBAL + n/TARGETS + n/20/GROUPS` of them.
pub fn synthetic_policies(n: usize) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut text = String::new();
    let actions = ["connect", "read", "write", "admin"];
    for i in 0..n {
        let policy = if i < GLOBAL {
            match i {
                0 => "@id(\"global-agents-need-task\")\n@reason(\"agents must name a task\")\n\
                      forbid(principal, action, resource)\n\
                      when { principal.kind == \"agent\" && context.task_id == \"\" };\n"
                    .to_string(),
                1 => "@id(\"global-break-glass\")\n@max_ttl(\"30m\")\n\
                      permit(principal, action, resource)\n\
                      when { context.break_glass && principal.labels.contains(\"oncall=true\") };\n"
                    .to_string(),
                _ => "@id(\"global-blocked-network\")\n@reason(\"requests from the guest network are refused\")\n\
                      forbid(principal, action, resource)\n\
                      when { context has source_ip && context.source_ip like \"192.168.*\" };\n"
                    .to_string(),
            }
        } else if i % 20 == 0 {
            let g = (i / 20) % GROUPS;
            format!(
                "@id(\"group-{g:02}-read-{i}\")\n@max_ttl(\"1h\")\n\
                 permit(principal, action == Action::\"read\", resource in TargetGroup::\"group-{g:02}\")\n\
                 when {{ principal.owner == resource.owner && principal.environment == resource.environment }};\n"
            )
        } else {
            let t = i % TARGETS;
            let action = actions[(i / TARGETS) % actions.len()];
            let approval = if action == "admin" {
                "@approval(\"2\")\n"
            } else if action == "write" {
                "@approval(\"1\")\n"
            } else {
                ""
            };
            format!(
                "@id(\"svc-{t:03}-{action}-{i}\")\n{approval}@max_ttl(\"{}m\")\n\
                 permit(principal, action == Action::\"{action}\", resource == Target::\"svc-{t:03}\")\n\
                 when {{\n  principal.owner == \"team-{:02}\" &&\n  principal.labels.contains(\"env=prod\") &&\n  \
                 [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"].contains(context.now.weekday) &&\n  \
                 context.now.hour >= 8 && context.now.hour < 20 &&\n  context.purpose != \"\" &&\n  \
                 context.requested_ttl_seconds <= 3600\n}};\n",
                15 + (i % 4) * 15,
                t % 30
            )
        };
        text.push_str(&policy);
        text.push('\n');
        if (i + 1) % 10 == 0 || i + 1 == n {
            files.push((
                format!("p{:04}.cedar", files.len()),
                std::mem::take(&mut text),
            ));
        }
    }
    files
}

/// Everything a decision needs, owned, for the benchmarked target `svc-007`.
pub struct Fixture {
    pub principal: Principal,
    pub identity: Identity,
    pub target: Target,
    pub context: serde_json::Value,
    pub now: OffsetDateTime,
}

/// A workload of team 07 asking to read `svc-007` on a Tuesday at 10:00 UTC.
pub fn fixture() -> Fixture {
    let now =
        OffsetDateTime::from_unix_timestamp(1_741_082_400).unwrap_or(OffsetDateTime::UNIX_EPOCH); // 2025-03-04T10:00:00Z, a Tuesday
    let identity = Identity {
        id: "svc-007-reader".into(),
        kind: IdentityKind::Service,
        owner: "team-07".into(),
        purpose: "reads svc-007".into(),
        expires_at: None,
        labels: BTreeMap::from([
            ("env".to_string(), "prod".to_string()),
            ("tier".to_string(), "backend".to_string()),
        ]),
        enabled: true,
        created_at: now,
    };
    let claims = WorkloadClaims {
        identity: identity.id.clone(),
        method: "oidc".into(),
        issuer: "https://token.actions.example".into(),
        subject: "repo:acme/svc-007:ref:refs/heads/main".into(),
        attributes: BTreeMap::from([
            ("repository".to_string(), serde_json::json!("acme/svc-007")),
            ("ref".to_string(), serde_json::json!("refs/heads/main")),
        ]),
        expires_at: None,
    };
    let principal = Principal::workload(claims, &identity);
    let target = Target {
        name: "svc-007".into(),
        kind: "postgres".into(),
        actions: vec![
            "connect".into(),
            "read".into(),
            "write".into(),
            "admin".into(),
        ],
        default_ttl: Ttl::from_secs(900),
        max_ttl: Ttl::from_secs(3600),
        allow: Vec::new(),
        settings: serde_json::json!({
            "environment": "prod",
            "sensitivity": "high",
            "owner": "team-07",
            "groups": [format!("group-{:02}", 7 % GROUPS)],
        }),
        created_at: now,
    };
    Fixture {
        principal,
        identity,
        target,
        context: serde_json::json!({ "source_ip": "10.1.2.3" }),
        now,
    }
}
