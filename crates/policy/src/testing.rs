//! Table-driven policy tests: operators describe requests and the decision they expect in a
//! TOML file and run them against a policy set before deploying it.
//!
//! ```toml
//! [[case]]
//! name = "deploy pipeline writes staging DB in business hours"
//! principal = { id = "deployer", kind = "pipeline", owner = "payments", labels = { role = "deploy" } }
//! action = "write"
//! resource = { name = "pg-staging", kind = "postgres", settings = { environment = "staging" } }
//! context = { source_ip = "10.0.0.7" }   # the request's context object (optional)
//! purpose = "migrate schema"
//! task = "DEPLOY-42"
//! ttl = "30m"                            # requested TTL (default 15m)
//! now = "2025-03-04T10:00:00Z"           # RFC 3339; default: the current time
//! expect = "allow"                       # allow | deny | approval | error
//! expect_max_ttl = "30m"                 # optional; "none" for no cap
//! expect_approvals = 1                   # optional, with expect = "approval"
//! expect_determined_by = ["staging-db-deploy"]  # optional, exact (sorted) list
//! expect_error_field = "context.source_ip"      # with expect = "error" (a BadRequest)
//! ```
//!
//! `principal` also takes `attributes` (verified claims), `method`, `issuer`, `subject`,
//! and `operator = "name"` to make the request on the identity's behalf as an operator.
//! `resource` takes `actions` (default: just the case's action).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mayfly_core::auth::{Principal, WorkloadClaims};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{Identity, IdentityKind, Target};
use mayfly_core::policy::{Decision, Outcome, PolicyEngine, PolicyError, PolicyRequest};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::engine::{ttl_text, CedarEngine};

/// The result of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    /// What was decided, and for a failure what differed from the expectation.
    pub message: String,
    pub decision: Option<Decision>,
}

/// The result of a test file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestReport {
    pub file: PathBuf,
    /// The file itself could not be read or parsed; no case ran.
    pub error: Option<String>,
    pub cases: Vec<CaseResult>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.cases.iter().filter(|c| c.passed).count()
    }
    pub fn failed(&self) -> usize {
        self.cases.len() - self.passed()
    }
    /// True when the file parsed, had at least one case, and every case passed.
    pub fn is_success(&self) -> bool {
        self.error.is_none() && !self.cases.is_empty() && self.failed() == 0
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = &self.error {
            return write!(f, "{}: {e}", self.file.display());
        }
        for c in &self.cases {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            writeln!(f, "{mark} {}: {}", c.name, c.message)?;
        }
        write!(
            f,
            "{}: {} passed, {} failed",
            self.file.display(),
            self.passed(),
            self.failed()
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    case: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    principal: CasePrincipal,
    action: String,
    resource: CaseResource,
    #[serde(default)]
    context: toml::Table,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    task: String,
    ttl: Option<String>,
    now: Option<String>,
    expect: Expect,
    expect_max_ttl: Option<String>,
    expect_approvals: Option<u32>,
    expect_determined_by: Option<Vec<String>>,
    expect_error_field: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CasePrincipal {
    id: String,
    kind: IdentityKind,
    owner: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    attributes: toml::Table,
    method: Option<String>,
    issuer: Option<String>,
    subject: Option<String>,
    operator: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseResource {
    name: String,
    kind: String,
    #[serde(default)]
    settings: toml::Table,
    actions: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Expect {
    Allow,
    Deny,
    Approval,
    Error,
}

/// Runs every `[[case]]` of `cases_toml` against `engine`.
pub fn run_test_file(cases_toml: &Path, engine: &CedarEngine) -> TestReport {
    let mut report = TestReport {
        file: cases_toml.to_path_buf(),
        error: None,
        cases: Vec::new(),
    };
    let text = match std::fs::read_to_string(cases_toml) {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(format!("cannot read: {e}"));
            return report;
        }
    };
    let file: CaseFile = match toml::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            report.error = Some(format!("invalid test file: {e}"));
            return report;
        }
    };
    report.cases = file.case.into_iter().map(|c| run_case(c, engine)).collect();
    report
}

fn run_case(case: Case, engine: &CedarEngine) -> CaseResult {
    let name = case.name.clone();
    match evaluate(&case, engine) {
        Err(setup) => CaseResult {
            name,
            passed: false,
            message: format!("invalid case: {setup}"),
            decision: None,
        },
        Ok(result) => {
            let (passed, message) = judge(&case, &result);
            CaseResult {
                name,
                passed,
                message,
                decision: result.ok(),
            }
        }
    }
}

fn evaluate(case: &Case, engine: &CedarEngine) -> Result<Result<Decision, PolicyError>, String> {
    let now = match &case.now {
        Some(t) => OffsetDateTime::parse(t, &Rfc3339)
            .map_err(|e| format!("now {t:?} is not RFC 3339: {e}"))?,
        None => mayfly_core::now(),
    };
    let ttl: Ttl = case
        .ttl
        .as_deref()
        .unwrap_or("15m")
        .parse()
        .map_err(|e| format!("ttl: {e}"))?;
    let p = &case.principal;
    let identity = Identity {
        id: p.id.clone(),
        kind: p.kind,
        owner: p.owner.clone(),
        purpose: String::new(),
        expires_at: None,
        labels: p.labels.clone(),
        enabled: true,
        created_at: now,
    };
    let principal = match &p.operator {
        Some(name) => Principal::Operator { name: name.clone() },
        None => {
            let attributes = p
                .attributes
                .iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<BTreeMap<_, _>, String>>()?;
            Principal::workload(
                WorkloadClaims {
                    identity: p.id.clone(),
                    method: p.method.clone().unwrap_or_else(|| "oidc".into()),
                    issuer: p
                        .issuer
                        .clone()
                        .unwrap_or_else(|| "https://issuer.test".into()),
                    subject: p.subject.clone().unwrap_or_else(|| p.id.clone()),
                    attributes,
                    expires_at: None,
                },
                &identity,
            )
        }
    };
    let r = &case.resource;
    let target = Target {
        name: r.name.clone(),
        kind: r.kind.clone(),
        actions: r
            .actions
            .clone()
            .unwrap_or_else(|| vec![case.action.clone()]),
        default_ttl: Ttl::from_secs(900),
        max_ttl: Ttl::from_secs(86_400),
        allow: Vec::new(),
        settings: to_json(&toml::Value::Table(r.settings.clone()))?,
        created_at: now,
    };
    let context = to_json(&toml::Value::Table(case.context.clone()))?;
    Ok(engine.decide(&PolicyRequest {
        principal: &principal,
        identity: &identity,
        target: &target,
        action: &case.action,
        purpose: &case.purpose,
        task: &case.task,
        requested_ttl: ttl,
        context: &context,
        now,
    }))
}

/// Whether the result meets the case's expectations, and a one-line account of it.
fn judge(case: &Case, result: &Result<Decision, PolicyError>) -> (bool, String) {
    let decision = match (case.expect, result) {
        (Expect::Error, Err(PolicyError::BadRequest { field, reason })) => {
            return match &case.expect_error_field {
                Some(want) if want != field => (
                    false,
                    format!("expected a bad request on {want}, got one on {field}: {reason}"),
                ),
                _ => (true, format!("bad request on {field}: {reason}")),
            };
        }
        (_, Err(e)) => return (false, format!("expected {:?}, got error: {e}", case.expect)),
        (Expect::Error, Ok(d)) => {
            return (
                false,
                format!("expected an error, got decision {}", describe(d)),
            )
        }
        (_, Ok(d)) => d,
    };
    let mut problems = Vec::new();
    let outcome_ok = matches!(
        (case.expect, decision.outcome),
        (Expect::Allow, Outcome::Allow)
            | (Expect::Deny, Outcome::Deny)
            | (Expect::Approval, Outcome::RequireApproval { .. })
    );
    if !outcome_ok {
        problems.push(format!("expected {:?}", case.expect));
    }
    if let Some(want) = case.expect_approvals {
        let got = match decision.outcome {
            Outcome::RequireApproval { approvals } => approvals,
            _ => 0,
        };
        if got != want {
            problems.push(format!("expected {want} approvals, got {got}"));
        }
    }
    if let Some(want) = &case.expect_max_ttl {
        let want_ttl = if want == "none" {
            Ok(None)
        } else {
            want.parse::<Ttl>().map(Some)
        };
        match want_ttl {
            Ok(w) if w == decision.max_ttl => {}
            Ok(w) => problems.push(format!(
                "expected max_ttl {}, got {}",
                ttl_text(w),
                ttl_text(decision.max_ttl)
            )),
            Err(e) => problems.push(format!("expect_max_ttl: {e}")),
        }
    }
    if let Some(want) = &case.expect_determined_by {
        if *want != decision.determined_by {
            problems.push(format!(
                "expected determined_by {want:?}, got {:?}",
                decision.determined_by
            ));
        }
    }
    if problems.is_empty() {
        (true, describe(decision))
    } else {
        (
            false,
            format!(
                "{}; decision was {}",
                problems.join("; "),
                describe(decision)
            ),
        )
    }
}

fn describe(d: &Decision) -> String {
    let outcome = match d.outcome {
        Outcome::Allow => "allow".to_string(),
        Outcome::Deny => "deny".to_string(),
        Outcome::RequireApproval { approvals } => format!("approval ({approvals})"),
    };
    let mut s = format!(
        "{outcome}, max_ttl {}, by {:?}",
        ttl_text(d.max_ttl),
        d.determined_by
    );
    if !d.reasons.is_empty() {
        s.push_str(&format!(", reasons {:?}", d.reasons));
    }
    s
}

fn to_json(v: &toml::Value) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot convert TOML value: {e}"))
}
