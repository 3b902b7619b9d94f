//! The grant protocol, owned in one place: check a request, decide it by policy, and for
//! an allowed one write the lease ahead, issue through the provider, activate, and undo
//! what was made if any step fails. HTTP handlers, and later approvals and token
//! exchange ([`exchange`]), call [`request_grant`] and [`renew`]; none of them repeats a
//! step.
//!
//! Errors are [`BrokerError`]s; the HTTP edge maps them to problem+json once
//! (`crate::error`), deciding there what a caller may see of a target's failure.

use std::net::IpAddr;

use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::auth::Principal;
use mayfly_core::duration::Ttl;
use mayfly_core::model::{
    ApprovalRecord, ApprovalState, Grant, GrantState, Identity, Lease, LeaseState, Target, Task,
};
use mayfly_core::policy::{Decision, DelegationRequest, Outcome, PolicyError, PolicyRequest};
use mayfly_core::provider::{IssueRequest, IssuedCredential, ProviderError, TargetAccess};
use mayfly_core::store::StoreError;
use mayfly_core::{validate, CoreError, OffsetDateTime, Uuid};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// Why the broker refused or failed a step. `Clone`, so a refusal can be audited and
/// still returned.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BrokerError {
    /// A request field is wrong; `field` names it as the API spells it.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The caller may not do this; `code` is stable.
    #[error("{detail}")]
    Forbidden { code: &'static str, detail: String },
    #[error("{what} {id:?} not found")]
    NotFound {
        what: &'static str,
        id: String,
        field: Option<&'static str>,
    },
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The credential target failed or could not be reached.
    #[error(transparent)]
    Target(#[from] ProviderError),
    /// Conflicts with the state (a request not approved, approved already, collected).
    #[error("{0}")]
    Conflict(String),
    /// A broken invariant (a target kind without a provider, …): not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

impl BrokerError {
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        BrokerError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// A `task` that is the id of a task record binds the grant to that task: it must be the
/// identity's own, open and before its deadline. Any other text is the free task label of
/// a grant without a record.
async fn check_task_record(
    state: &AppState,
    identity: &str,
    task: &str,
    now: OffsetDateTime,
) -> Result<Option<Task>, BrokerError> {
    let Ok(id) = Uuid::parse_str(task) else {
        return Ok(None);
    };
    let Some(record) = state.store.get_task(id).await? else {
        return Ok(None);
    };
    if record.identity != identity {
        return Err(BrokerError::Forbidden {
            code: "not_your_task",
            detail: format!("task {id} is another identity's"),
        });
    }
    if record.state != mayfly_core::model::TaskState::Open || record.deadline <= now {
        let why = if record.state == mayfly_core::model::TaskState::Open {
            "passed its deadline".to_string()
        } else {
            format!("has ended ({})", record.state)
        };
        return Err(BrokerError::Forbidden {
            code: "task_ended",
            detail: format!("task {id} {why}"),
        });
    }
    Ok(Some(record))
}

/// The task record may have ended between the check before issuance and the lease's
/// commit; ending a task revokes only the leases committed before it. So the task is read
/// again after the commit, and a lease that joined an ended task is revoked at once with the
/// task's reason.
async fn still_in_open_task(
    state: &AppState,
    outcome: GrantOutcome,
) -> Result<GrantOutcome, BrokerError> {
    let GrantOutcome::Issued(issued) = &outcome else {
        return Ok(outcome);
    };
    let Ok(id) = Uuid::parse_str(&issued.grant.task) else {
        return Ok(outcome);
    };
    let Some(task) = state.store.get_task(id).await? else {
        return Ok(outcome);
    };
    let Some(reason) = task.state.revocation_reason() else {
        return Ok(outcome);
    };
    let selector = mayfly_core::model::LeaseSelector::Lease(issued.lease.id);
    let revoked = state
        .store
        .revoke(&selector, reason, "system:task", mayfly_core::now())
        .await?;
    if revoked.revoking > 0 {
        state.revoker_wake.notify_one();
    }
    Err(BrokerError::Forbidden {
        code: "task_ended",
        detail: format!("task {id} has ended ({})", task.state),
    })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    /// The identity to grant to. Workloads may omit it (it is their own) and may not name
    /// another; operators must name it.
    pub identity: Option<String>,
    pub target: String,
    /// One of the target's actions; may be omitted when the target has exactly one.
    pub action: Option<String>,
    /// Why access is needed (at most 1 KiB).
    pub purpose: String,
    /// The task this access serves: the id of a task record (`POST /v1/tasks`), which must
    /// be the identity's own and open, or (deprecated) free text naming the task. May be
    /// omitted when the request carries the task's token in the `Txn-Token` header.
    #[serde(default)]
    pub task: String,
    /// Requested lifetime; defaults to the target's `default_ttl`.
    pub ttl: Option<Ttl>,
    /// Extra facts for policy.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub context: serde_json::Map<String, serde_json::Value>,
}

/// Context keys only the broker sets: a request that sends one is refused, so a caller
/// can neither pose as another address nor forge a delegation chain or a key binding
/// (`act` and `cnf` become claims of an issued token).
/// `txn` names the task record the grant belongs to (a claim of its token).
/// `authorization_details` (RFC 9396) names the approvals an approved grant went through.
const BROKER_CONTEXT_KEYS: [&str; 6] = [
    "source_ip",
    "actors",
    "act",
    "cnf",
    "txn",
    "authorization_details",
];

/// What an OAuth 2.0 token exchange (RFC 8693, `crate::api::oauth`) adds to a grant
/// request. The exchange is a grant like any other (the same checks, policy, lease, audit
/// and revocation); everything here only narrows it:
/// - `scopes` (actions of a token target; empty means all of them) are decided one by one
///   and the grant gets those policy allows, space-separated in its `action`;
/// - each of `actors` must be allowed to act for the subject on the target
///   ([`mayfly_core::policy::PolicyEngine::decide_delegation`], default deny), and each
///   scope must be allowed both with the actors in `context.actors` and for the subject
///   alone, so a chain never gets more than its subject could;
/// - `not_after` caps the lifetime (the expiry of a Mayfly token being exchanged again);
/// - `act` (RFC 8693 §4.1, nested for chains) and `cnf` (RFC 9449 / RFC 8705 key binding)
///   are recorded in the grant's context, so audit shows them and the token carries them.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    pub scopes: Vec<String>,
    /// Nearest first.
    pub actors: Vec<Actor>,
    pub act: Option<serde_json::Value>,
    pub cnf: Option<serde_json::Value>,
    pub not_after: Option<OffsetDateTime>,
}

/// A workload acting for the subject of an exchange, as its credential proved it.
#[derive(Clone, Debug)]
pub struct Actor {
    pub principal: Principal,
    pub identity: Identity,
}

/// What became of an allowed, pending or denied request. Refusals before a decision
/// (bad input, unknown target, another identity) are `Err`, and audited.
pub enum GrantOutcome {
    /// Issued: the credential is handed to the requester once, never stored.
    Issued(Box<Issued>),
    /// Recorded as waiting for approval.
    PendingApproval { grant: Grant },
    /// Recorded as denied by policy.
    Denied { grant: Grant, decision: Decision },
}

pub struct Issued {
    pub grant: Grant,
    pub lease: Lease,
    pub credential: IssuedCredential,
}

/// Decides a grant request and carries it out: the whole protocol, audited at each step.
pub async fn request_grant(
    state: &AppState,
    caller: &Caller,
    peer: Option<IpAddr>,
    body: GrantRequest,
) -> Result<GrantOutcome, BrokerError> {
    request_grant_with(state, caller, peer, body, None).await
}

/// A token exchange as a grant: [`request_grant`] with what [`Exchange`] narrows. Only
/// `Issued` or `Denied` come back (nobody waits at a token endpoint for an approval, so a
/// scope that needs one is not granted).
pub async fn exchange(
    state: &AppState,
    caller: &Caller,
    peer: Option<IpAddr>,
    body: GrantRequest,
    exchange: &Exchange,
) -> Result<GrantOutcome, BrokerError> {
    request_grant_with(state, caller, peer, body, Some(exchange)).await
}

async fn request_grant_with(
    state: &AppState,
    caller: &Caller,
    peer: Option<IpAddr>,
    body: GrantRequest,
    exchange: Option<&Exchange>,
) -> Result<GrantOutcome, BrokerError> {
    let now = mayfly_core::now();
    let evaluated = evaluate(state, caller, &body, peer, now, exchange).await;
    let (checked, mut context, mut decision) = match evaluated {
        Ok(v) => v,
        Err(e) => {
            record_rejection(state, caller, Some(&body), &ApiError::from(e.clone())).await;
            return Err(e);
        }
    };
    if let (Some(task), serde_json::Value::Object(map)) = (&checked.task, &mut context) {
        // After the decision (policy knows the task as `task`): the credential carries it.
        map.insert("txn".into(), task.id.to_string().into());
    }
    if let (Some(x), serde_json::Value::Object(map)) = (exchange, &mut context) {
        // After the decision: policy saw the actors, the token gets the chain and binding.
        if let Some(act) = &x.act {
            map.insert("act".into(), act.clone());
        }
        if let Some(cnf) = &x.cnf {
            map.insert("cnf".into(), cnf.clone());
        }
    }
    if decision.outcome != Outcome::Deny {
        decision
            .reasons
            .extend(granted_ttl(&checked, &decision, now).clamped);
    }
    let mut grant = Grant {
        id: Uuid::now_v7(),
        identity: checked.identity.id.clone(),
        owner: checked.identity.owner.clone(),
        target: checked.target.name.clone(),
        action: checked.action.clone(),
        purpose: body.purpose,
        task: body.task,
        requested_ttl: checked.ttl,
        granted_ttl: None,
        context,
        state: GrantState::Requested,
        revocation_reason: None,
        decision: serde_json::to_value(&decision).unwrap_or_default(),
        created_at: now,
        updated_at: now,
    };
    // A delegated exchange is done by its nearest actor for the subject: the audit's
    // `actor` names the whole chain ("identity:agent for identity:service").
    let mut actor = caller.0.actor();
    for a in exchange.iter().flat_map(|x| x.actors.iter()).rev() {
        actor = format!("{} for {actor}", a.principal.actor());
    }
    let requested = AuditDraft::new(AuditKind::GrantRequested, &actor)
        .for_grant(&grant)
        .detail(serde_json::json!({
            "action": grant.action, "purpose": grant.purpose, "requested_ttl": grant.requested_ttl, "context": grant.context,
        }));
    let decided = AuditDraft::new(AuditKind::GrantDecided, &actor)
        .for_grant(&grant)
        .detail(serde_json::json!({ "decision": decision }));

    match decision.outcome {
        Outcome::Deny => {
            grant.state = grant.state.transition(GrantState::Denied)?;
            state
                .store
                .record_grant(&grant, None, vec![requested, decided])
                .await?;
            state.metrics.grant(&grant.target, "denied");
            Ok(GrantOutcome::Denied { grant, decision })
        }
        Outcome::RequireApproval { approvals } => {
            grant.state = grant.state.transition(GrantState::PendingApproval)?;
            let approval = approval_request(&grant, &checked, &decision, approvals, &actor, now);
            let asked = AuditDraft::new(AuditKind::ApprovalRequested, &actor)
                .for_grant(&grant)
                .detail(serde_json::json!({
                    "needed": approval.needed,
                    "approvers": approval.groups,
                    "expires_at": rfc3339(approval.expires_at),
                    "request_hash": approval.request_hash,
                    "ttl": approval.ttl,
                }));
            state
                .store
                .request_approval(&grant, &approval, vec![requested, decided, asked])
                .await?;
            state.metrics.grant(&grant.target, "pending_approval");
            Ok(GrantOutcome::PendingApproval { grant })
        }
        Outcome::Allow => {
            let break_glass = break_glass_review(&grant, &checked, &actor, now)?;
            let mut events = vec![requested, decided];
            if let Some(review) = &break_glass {
                events.push(
                    AuditDraft::new(AuditKind::GrantBreakGlass, &actor)
                        .for_grant(&grant)
                        .detail(serde_json::json!({
                            "severity": "high",
                            "purpose": grant.purpose,
                            "review_groups": review.groups,
                        })),
                );
            }
            let approved = Approved {
                grant,
                checked,
                decision,
                events,
                actor,
                now,
                collect: None,
                review: break_glass,
            };
            let external = state
                .providers
                .get(&approved.checked.target.kind)
                .is_some_and(|p| p.external());
            let outcome = if !external {
                issue(state, approved).await?
            } else {
                // From the write-ahead lease to its activation the issuance runs as a task
                // of its own: a client that disconnects drops the caller, and must not
                // leave a `creating` lease (and maybe a user on the target) for the next
                // start-up to clean up. The task finishes, and records the outcome, either
                // way.
                let spawned = state.clone();
                tokio::spawn(async move { issue(&spawned, approved).await })
                    .await
                    .map_err(|e| {
                        BrokerError::Internal(format!("the issuance task failed: {e}"))
                    })??
            };
            still_in_open_task(state, outcome).await
        }
    }
}

/// Collects the credential of an approved grant, once: by the workload it is for, or an
/// operator. The request is re-decided first, against the policy of now, with its
/// approvers counted (policy may have changed while it waited); the TTL starts now.
pub async fn collect(
    state: &AppState,
    caller: &Caller,
    peer: Option<IpAddr>,
    grant_id: Uuid,
) -> Result<GrantOutcome, BrokerError> {
    let now = mayfly_core::now();
    let missing = || BrokerError::NotFound {
        what: "grant",
        id: grant_id.to_string(),
        field: None,
    };
    let grant = state.store.get_grant(grant_id).await?.ok_or_else(missing)?;
    if caller.0.identity().is_some_and(|own| own != grant.identity) {
        // Another identity's grant is answered as absent, as everywhere.
        return Err(missing());
    }
    let approval = state.store.get_approval(grant_id).await?.ok_or_else(|| {
        BrokerError::Conflict(format!("grant {grant_id} did not wait for approval"))
    })?;
    match approval.state {
        ApprovalState::Approved => {}
        ApprovalState::Pending => {
            let given = approval.approvers().len();
            return Err(BrokerError::Conflict(format!(
                "grant {grant_id} has {given} of {} approvals; waiting for {}",
                approval.needed,
                if approval.groups.is_empty() {
                    "any approver".to_string()
                } else {
                    format!("members of {}", approval.groups.join(" or "))
                }
            )));
        }
        other => {
            return Err(BrokerError::Conflict(format!(
                "grant {grant_id} cannot be collected: its request is {other}"
            )))
        }
    }
    let mut context = match &grant.context {
        serde_json::Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    context.retain(|k, _| !BROKER_CONTEXT_KEYS.contains(&k.as_str()));
    let body = GrantRequest {
        identity: Some(grant.identity.clone()),
        target: grant.target.clone(),
        action: Some(grant.action.clone()),
        purpose: grant.purpose.clone(),
        task: grant.task.clone(),
        ttl: Some(approval.ttl),
        context: context.clone(),
    };
    let checked = check(state, caller, &body, now, None).await?;
    if let Some(ip) = peer {
        context.insert("source_ip".into(), ip.to_string().into());
    }
    let policy_context = serde_json::Value::Object(context);
    let approvers = approval.approvers();
    let decision = state.policy.decide_approved(
        &PolicyRequest {
            principal: &caller.0,
            identity: &checked.identity,
            target: &checked.target,
            action: &checked.action,
            purpose: &grant.purpose,
            task: &grant.task,
            requested_ttl: checked.ttl,
            context: &policy_context,
            now,
        },
        &approvers,
    )?;
    match decision.outcome {
        Outcome::Allow => {}
        Outcome::Deny => {
            return Err(BrokerError::Forbidden {
                code: "denied_now",
                detail: format!(
                    "grant {grant_id} was approved, but policy now denies it: {}",
                    decision.reasons.join("; ")
                ),
            })
        }
        Outcome::RequireApproval { approvals } => {
            return Err(BrokerError::Conflict(format!(
            "grant {grant_id} was approved by {}, but policy now requires {approvals} approvals",
            approvers.len()
        )))
        }
    }
    let details = approval_details(&approval);
    let mut grant = grant;
    if let serde_json::Value::Object(map) = &mut grant.context {
        map.insert(
            "authorization_details".into(),
            serde_json::Value::Array(vec![details.clone()]),
        );
    }
    let actor = caller.0.actor();
    let redecided = AuditDraft::new(AuditKind::GrantDecided, &actor)
        .for_grant(&grant)
        .detail(serde_json::json!({ "decision": decision, "redecided_at_collection": true }));
    let approved = Approved {
        grant,
        checked,
        decision,
        events: vec![redecided],
        actor,
        now,
        collect: Some(details),
        review: None,
    };
    let spawned = state.clone();
    let outcome = tokio::spawn(async move { issue(&spawned, approved).await })
        .await
        .map_err(|e| BrokerError::Internal(format!("the issuance task failed: {e}")))??;
    still_in_open_task(state, outcome).await
}

/// The RFC 9396 authorization detail an approved grant's token carries: who approved,
/// when, and the hash of the request they approved.
fn approval_details(approval: &ApprovalRecord) -> serde_json::Value {
    serde_json::json!({
        "type": "mayfly_approval",
        "approvers": approval.approvers(),
        "approved_at": approval.approved_at.map(rfc3339).unwrap_or_default(),
        "request_hash": approval.request_hash,
        "grant_id": approval.grant_id.to_string(),
    })
}

/// What policy explained, and what an allowed request would be granted.
pub struct Explained {
    pub identity: String,
    pub target: String,
    pub action: String,
    pub decision: Decision,
    pub granted_ttl: Option<Ttl>,
}

/// Evaluates a grant request exactly as [`request_grant`] would, and records nothing.
pub async fn explain(
    state: &AppState,
    caller: &Caller,
    peer: Option<IpAddr>,
    body: &GrantRequest,
) -> Result<Explained, BrokerError> {
    let now = mayfly_core::now();
    let (checked, _, mut decision) = evaluate(state, caller, body, peer, now, None).await?;
    let granted_ttl = matches!(
        decision.outcome,
        Outcome::Allow | Outcome::RequireApproval { .. }
    )
    .then(|| {
        let granted = granted_ttl(&checked, &decision, now);
        decision.reasons.extend(granted.clamped);
        granted.ttl
    });
    Ok(Explained {
        identity: checked.identity.id,
        target: checked.target.name,
        action: checked.action,
        decision,
        granted_ttl,
    })
}

struct Checked {
    identity: Identity,
    target: Target,
    /// One action; for an exchange, the scopes asked for and then those allowed,
    /// space-separated.
    action: String,
    ttl: Ttl,
    /// No credential outlives this (an exchanged token's expiry).
    not_after: Option<OffsetDateTime>,
    /// The task record the grant belongs to: no credential outlives its deadline.
    task: Option<Task>,
    /// `context.break_glass`: emergency access, capped at [`BREAK_GLASS_MAX_TTL`].
    break_glass: bool,
}

async fn check(
    state: &AppState,
    caller: &Caller,
    body: &GrantRequest,
    now: OffsetDateTime,
    exchange: Option<&Exchange>,
) -> Result<Checked, BrokerError> {
    let identity_id = match (caller.0.identity(), &body.identity) {
        (Some(own), None) => own.to_string(),
        (Some(own), Some(named)) if named == own => own.to_string(),
        (Some(own), Some(named)) => {
            return Err(BrokerError::Forbidden {
                code: "not_your_identity",
                detail: format!("identity {own:?} may not request access for {named:?}"),
            })
        }
        (None, Some(named)) => named.clone(),
        (None, None) => {
            return Err(BrokerError::field(
                "identity",
                "is required when an operator requests",
            ))
        }
    };
    validate::name("identity", &identity_id)?;
    validate::name("target", &body.target)?;
    validate::purpose(&body.purpose)?;
    validate::task(&body.task)?;
    validate::context(&body.context)?;

    // A workload's own identity was read moments ago to authenticate it.
    let identity = match &caller.1 {
        Some(own) if own.id == identity_id => own.clone(),
        _ => state
            .store
            .get_identity(&identity_id)
            .await?
            .ok_or(BrokerError::NotFound {
                what: "identity",
                id: identity_id.clone(),
                field: Some("identity"),
            })?,
    };
    if let Err(why) = identity.is_usable_at(now) {
        return Err(BrokerError::Forbidden {
            code: "identity_unusable",
            detail: format!("identity {:?}: {why}", identity.id),
        });
    }
    let task = check_task_record(state, &identity.id, &body.task, now).await?;
    let target = state
        .store
        .get_target(&body.target)
        .await?
        .ok_or(BrokerError::NotFound {
            what: "target",
            id: body.target.clone(),
            field: Some("target"),
        })?;
    let action = match (exchange, &body.action) {
        (Some(x), _) => exchange_scopes(&target, &x.scopes)?,
        (None, Some(a)) if target.actions.contains(a) => a.clone(),
        (None, Some(a)) => {
            return Err(BrokerError::field(
                "action",
                format!(
                    "{a:?} is not an action of target {:?}; it has: {}",
                    target.name,
                    target.actions.join(", ")
                ),
            ))
        }
        (None, None) if target.actions.len() == 1 => target.actions[0].clone(),
        (None, None) => {
            return Err(BrokerError::field(
                "action",
                format!(
                    "is required; target {:?} has: {}",
                    target.name,
                    target.actions.join(", ")
                ),
            ))
        }
    };
    let ttl = body.ttl.unwrap_or(target.default_ttl);
    if ttl.as_secs() == 0 {
        return Err(BrokerError::field("ttl", "must be greater than zero"));
    }
    // Above the target's maximum is not an error: like a policy cap or the identity's
    // expiry, the maximum clamps what is granted, and the decision says so (one rule for
    // request, explain and renew).
    Ok(Checked {
        identity,
        target,
        action,
        ttl,
        not_after: exchange.and_then(|x| x.not_after),
        task,
        break_glass: body.context.get("break_glass") == Some(&serde_json::Value::Bool(true)),
    })
}

/// The scopes an exchange asks for, checked against the target: all its actions when none
/// are named. Only token targets take part: an exchange issues an access token.
fn exchange_scopes(target: &Target, scopes: &[String]) -> Result<String, BrokerError> {
    if target.kind != "token" {
        return Err(BrokerError::field(
            "audience",
            format!(
                "target {:?} issues {} credentials; token exchange issues access tokens only",
                target.name, target.kind
            ),
        ));
    }
    if scopes.is_empty() {
        return Ok(target.actions.join(" "));
    }
    if let Some(unknown) = scopes.iter().find(|s| !target.actions.contains(s)) {
        return Err(BrokerError::field(
            "scope",
            format!(
                "{unknown:?} is not a scope of target {:?}; it has: {}",
                target.name,
                target.actions.join(", ")
            ),
        ));
    }
    Ok(scopes.join(" "))
}

/// Audits a rejected request (nothing else is stored) and passes the error on.
pub async fn record_rejection(
    state: &AppState,
    caller: &Caller,
    body: Option<&GrantRequest>,
    error: &ApiError,
) {
    state
        .metrics
        .grant(crate::metrics::UNLABELLED_TARGET, "rejected");
    // Filed under the caller only: what the request named (another identity, a task) is
    // the caller's claim, kept in the detail, and must not place entries in someone
    // else's history. The chain bounds every string, so a huge name stays a short entry.
    let mut detail = serde_json::json!({
        "status": error.status().as_u16(),
        "code": error.code(),
        "field": error.field_name(),
        "reason": error.to_string(),
    });
    if let (Some(body), serde_json::Value::Object(map)) = (body, &mut detail) {
        map.insert("requested_identity".into(), body.identity.clone().into());
        map.insert("requested_target".into(), body.target.clone().into());
        map.insert("requested_task".into(), body.task.clone().into());
    }
    let mut event = AuditDraft::new(AuditKind::GrantRejected, caller.0.actor()).detail(detail);
    event.identity = caller.0.identity().map(str::to_string);
    if let Some(body) = body {
        // The task column only when the caller may file under it: an operator, or a
        // workload asking for itself.
        let own = caller.0.is_operator()
            || body
                .identity
                .as_deref()
                .is_none_or(|named| Some(named) == caller.0.identity());
        if own && validate::task(&body.task).is_ok() {
            event.task = Some(body.task.clone());
        }
    }
    if let Err(e) = state.store.append_audit(vec![event]).await {
        tracing::warn!(error = %e, "could not audit a rejected grant request");
    }
}

/// Checks a request and asks policy, without recording anything.
async fn evaluate(
    state: &AppState,
    caller: &Caller,
    body: &GrantRequest,
    peer: Option<IpAddr>,
    now: OffsetDateTime,
    exchange: Option<&Exchange>,
) -> Result<(Checked, serde_json::Value, Decision), BrokerError> {
    let checked = check(state, caller, body, now, exchange).await?;
    if let Some(key) = BROKER_CONTEXT_KEYS
        .iter()
        .find(|k| body.context.contains_key(**k))
    {
        return Err(BrokerError::field(
            &format!("context.{key}"),
            "is set by the broker; do not send it",
        ));
    }
    let mut context = body.context.clone();
    if let Some(ip) = peer {
        context.insert(
            "source_ip".into(),
            serde_json::Value::String(ip.to_string()),
        );
    }
    if let Some(x) = exchange {
        return decide_exchange(state, caller, checked, body, context, x, now);
    }
    let context = serde_json::Value::Object(context);
    let decision = state.policy.decide(&PolicyRequest {
        principal: &caller.0,
        identity: &checked.identity,
        target: &checked.target,
        action: &checked.action,
        purpose: &body.purpose,
        task: &body.task,
        requested_ttl: checked.ttl,
        context: &context,
        now,
    })?;
    Ok((checked, context, decision))
}

/// An exchange's decision: each actor may act for the subject (else the request is refused
/// as `delegation_denied`, recording nothing but the refusal), then each scope, with the
/// actors and for the subject alone; the grant gets the scopes allowed every way, under
/// the strictest cap. Approval-bound scopes are not granted here.
fn decide_exchange(
    state: &AppState,
    caller: &Caller,
    mut checked: Checked,
    body: &GrantRequest,
    mut context: serde_json::Map<String, serde_json::Value>,
    x: &Exchange,
    now: OffsetDateTime,
) -> Result<(Checked, serde_json::Value, Decision), BrokerError> {
    let alone = serde_json::Value::Object(context.clone());
    let actor_ids: Vec<serde_json::Value> = x
        .actors
        .iter()
        .map(|a| a.identity.id.clone().into())
        .collect();
    if !x.actors.is_empty() {
        context.insert("actors".into(), serde_json::Value::Array(actor_ids));
    }
    let context = serde_json::Value::Object(context);
    let scopes: Vec<String> = checked.action.split(' ').map(str::to_string).collect();
    fn policy_request<'a>(
        (caller, checked, body, now): (&'a Caller, &'a Checked, &'a GrantRequest, OffsetDateTime),
        action: &'a str,
        context: &'a serde_json::Value,
    ) -> PolicyRequest<'a> {
        PolicyRequest {
            principal: &caller.0,
            identity: &checked.identity,
            target: &checked.target,
            action,
            purpose: &body.purpose,
            task: &body.task,
            requested_ttl: checked.ttl,
            context,
            now,
        }
    }
    let first = scopes.first().map(String::as_str).unwrap_or_default();
    let parts = (caller, &checked, body, now);
    for actor in &x.actors {
        let grant = policy_request(parts, first, &context);
        let delegation = state.policy.decide_delegation(&DelegationRequest {
            grant: &grant,
            actor: &actor.principal,
            actor_identity: &actor.identity,
        })?;
        if delegation.outcome != Outcome::Allow {
            return Err(BrokerError::Forbidden {
                code: "delegation_denied",
                detail: format!(
                    "identity {:?} may not act for {:?} on target {:?}: {}",
                    actor.identity.id,
                    checked.identity.id,
                    checked.target.name,
                    delegation.reasons.join("; ")
                ),
            });
        }
    }
    let mut allowed = Vec::new();
    let mut combined = Decision {
        outcome: Outcome::Deny,
        max_ttl: None,
        determined_by: Vec::new(),
        reasons: Vec::new(),
        engine: String::new(),
        approvers: Vec::new(),
    };
    for scope in &scopes {
        let mut decisions = vec![state
            .policy
            .decide(&policy_request(parts, scope, &context))?];
        if !x.actors.is_empty() {
            decisions.push(state.policy.decide(&policy_request(parts, scope, &alone))?);
        }
        let granted = decisions.iter().all(|d| d.outcome == Outcome::Allow);
        for d in &decisions {
            combined.engine.clone_from(&d.engine);
            for by in &d.determined_by {
                let by = format!("{scope}: {by}");
                if !combined.determined_by.contains(&by) {
                    combined.determined_by.push(by);
                }
            }
            if granted {
                combined.max_ttl = match (combined.max_ttl, d.max_ttl) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            } else {
                let why = match d.outcome {
                    Outcome::RequireApproval { .. } => {
                        "needs an approval; ask through POST /v1/grants".to_string()
                    }
                    _ => d.reasons.join("; "),
                };
                combined
                    .reasons
                    .push(format!("scope {scope} not granted: {why}"));
            }
        }
        if granted {
            allowed.push(scope.clone());
        }
    }
    combined.reasons.dedup();
    if !allowed.is_empty() {
        combined.outcome = Outcome::Allow;
        checked.action = allowed.join(" ");
    }
    Ok((checked, context, combined))
}

/// The TTL a grant gets and the lease's renewal cap: the minimum of the request, the
/// policy cap, the target's maximum and the time left until the identity expires (no
/// credential outlives the identity it was issued to).
struct Granted {
    ttl: Ttl,
    cap: Ttl,
    /// Why less than requested was granted, one sentence per cap that cut it: said in the
    /// grant's decision.
    clamped: Vec<String>,
}

fn granted_ttl(checked: &Checked, decision: &Decision, now: OffsetDateTime) -> Granted {
    let mut clamped = Vec::new();
    let mut ttl = checked.ttl;
    if ttl > checked.target.max_ttl {
        clamped.push(format!(
            "granted TTL {} instead of {ttl}: the maximum of target {:?}",
            checked.target.max_ttl, checked.target.name
        ));
        ttl = checked.target.max_ttl;
    }
    let mut cap = checked.target.max_ttl;
    if let Some(policy_cap) = decision.max_ttl {
        if policy_cap < ttl {
            clamped.push(format!(
                "granted TTL {policy_cap} instead of {ttl}: the policy's @max_ttl"
            ));
        }
        ttl = ttl.min(policy_cap);
        cap = cap.min(policy_cap);
    }
    if checked.break_glass {
        if BREAK_GLASS_MAX_TTL < ttl {
            clamped.push(format!(
                "granted TTL {BREAK_GLASS_MAX_TTL} instead of {ttl}: the break-glass maximum"
            ));
        }
        ttl = ttl.min(BREAK_GLASS_MAX_TTL);
        cap = cap.min(BREAK_GLASS_MAX_TTL);
    }
    // Each end point that comes before the TTL runs out cuts it, and the renewal cap, and
    // says so. `check` refused an identity past its expiry and a task past its deadline;
    // an end point at most a second away still grants 1 s. The cut is rounded down to
    // whole seconds, except at a task's deadline: there the task's own timeout revokes
    // its leases (`task_timeout`), so the lease may end the fraction of a second after it.
    let deadlines = [
        checked.identity.expires_at.map(|at| {
            let why = format!("identity {:?} expires at", checked.identity.id);
            (at, why, false)
        }),
        checked
            .task
            .as_ref()
            .map(|t| (t.deadline, format!("task {} ends at", t.id), true)),
        checked
            .not_after
            .map(|at| (at, "the exchanged token expires at".to_string(), false)),
    ];
    for (until, why, round_up) in deadlines.into_iter().flatten() {
        let left = until - now;
        let whole = left.whole_seconds() + i64::from(round_up && left.subsec_nanoseconds() > 0);
        let left = Ttl::from_secs(u64::try_from(whole).unwrap_or(0).max(1));
        if left < ttl {
            clamped.push(format!(
                "granted TTL {left} instead of {ttl}: {why} {}",
                rfc3339(until).unwrap_or_default()
            ));
        }
        ttl = ttl.min(left);
        cap = cap.min(left);
    }
    Granted { ttl, cap, clamped }
}

/// An allowed grant on its way to issuance, with the audit events that record its
/// request and decision (committed with the grant).
struct Approved {
    grant: Grant,
    checked: Checked,
    decision: Decision,
    events: Vec<AuditDraft>,
    actor: String,
    now: OffsetDateTime,
    /// Collecting an approved request: the grant is recorded already, and what approved
    /// it goes into the lease's audit entry (and a token's `authorization_details`).
    collect: Option<serde_json::Value>,
    /// Break-glass access: the review it opens, recorded with the grant.
    review: Option<ApprovalRecord>,
}

/// How long a request waits for its approvals, and then for its requester to collect it.
pub const APPROVAL_WINDOW: Ttl = Ttl::from_secs(3600);
/// The longest break-glass access: emergencies are fixed in minutes, reviewed after.
pub const BREAK_GLASS_MAX_TTL: Ttl = Ttl::from_secs(3600);
/// A break-glass purpose says what is on fire (an incident reference and a few words).
pub const BREAK_GLASS_MIN_PURPOSE: usize = 10;

/// SHA-256 (hex) of what is approved: a credential carrying it shows a resource server
/// that this exact request (and no other) was approved.
fn request_hash(grant: &Grant, ttl: Ttl) -> String {
    let canonical = mayfly_core::audit::canonical_json(&serde_json::json!({
        "grant": grant.id.to_string(), "identity": grant.identity, "target": grant.target,
        "action": grant.action, "purpose": grant.purpose, "task": grant.task, "ttl": ttl,
    }));
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The groups that may approve a grant of `target`: the policy's `@approvers`, else the
/// target's `approvers` setting; empty means any approver.
fn approver_groups(decision: &Decision, target: &Target) -> Vec<String> {
    if !decision.approvers.is_empty() {
        return decision.approvers.clone();
    }
    target
        .settings
        .get("approvers")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn approval_request(
    grant: &Grant,
    checked: &Checked,
    decision: &Decision,
    needed: u32,
    actor: &str,
    now: OffsetDateTime,
) -> ApprovalRecord {
    let ttl = granted_ttl(checked, decision, now).ttl;
    let at = |t: OffsetDateTime| mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(t));
    ApprovalRecord {
        grant_id: grant.id,
        state: ApprovalState::Pending,
        identity: grant.identity.clone(),
        target: grant.target.clone(),
        action: grant.action.clone(),
        purpose: grant.purpose.clone(),
        task: grant.task.clone(),
        ttl,
        needed,
        groups: approver_groups(decision, &checked.target),
        requested_by: actor.to_string(),
        owner: grant.owner.clone(),
        votes: Vec::new(),
        request_hash: request_hash(grant, ttl),
        expires_at: at(now + APPROVAL_WINDOW.as_time()),
        created_at: at(now),
        approved_at: None,
    }
}

/// A break-glass request (`context.break_glass`, which policy allowed): its purpose must
/// say what is on fire, and it opens a review for the target's approvers.
fn break_glass_review(
    grant: &Grant,
    checked: &Checked,
    actor: &str,
    now: OffsetDateTime,
) -> Result<Option<ApprovalRecord>, BrokerError> {
    let is_break_glass = grant
        .context
        .get("break_glass")
        .is_some_and(|v| v == &serde_json::Value::Bool(true));
    if !is_break_glass {
        return Ok(None);
    }
    if grant.purpose.trim().chars().count() < BREAK_GLASS_MIN_PURPOSE {
        return Err(BrokerError::field(
            "purpose",
            format!(
                "break-glass access needs a purpose of at least {BREAK_GLASS_MIN_PURPOSE} characters saying what is on fire (e.g. \"INC-4312: primary down\")"
            ),
        ));
    }
    let no_decision = Decision {
        outcome: Outcome::Allow,
        max_ttl: None,
        determined_by: Vec::new(),
        reasons: Vec::new(),
        engine: String::new(),
        approvers: Vec::new(),
    };
    let mut review = approval_request(grant, checked, &no_decision, 1, actor, now);
    review.state = ApprovalState::Review;
    review.needed = 1;
    Ok(Some(review))
}

async fn issue(state: &AppState, approved: Approved) -> Result<GrantOutcome, BrokerError> {
    let Approved {
        mut grant,
        checked,
        decision,
        events,
        actor,
        now,
        collect,
        review,
    } = approved;
    let (checked, decision, actor) = (&checked, &decision, actor.as_str());
    let target = &checked.target;
    let provider = provider_for(state, &target.kind)?;
    let Granted { ttl, cap, .. } = granted_ttl(checked, decision, now);
    grant.granted_ttl = Some(ttl);
    if grant.state != GrantState::Approved {
        grant.state = grant.state.transition(GrantState::Approved)?;
    }
    // Where the grant and its lease are first recorded: with the grant (the usual case),
    // with its break-glass review, or, for an approved request, as its collection.
    let collecting = collect.is_some();
    let record = |grant: Grant, lease: Lease, events: Vec<AuditDraft>| {
        let review = review.clone();
        async move {
            let stored = match (collecting, &review) {
                (true, _) => state
                    .store
                    .collect_approval(grant.id, &lease, events, now)
                    .await
                    .map(drop),
                (false, Some(review)) => {
                    state
                        .store
                        .record_break_glass(&grant, &lease, review, events)
                        .await
                }
                (false, None) => state.store.record_grant(&grant, Some(&lease), events).await,
            };
            stored.map_err(BrokerError::from)
        }
    };
    let mut lease = Lease {
        id: Uuid::now_v7(),
        grant_id: grant.id,
        kind: target.kind.clone(),
        identity: grant.identity.clone(),
        target: grant.target.clone(),
        task: grant.task.clone(),
        issued_at: now,
        expires_at: now + ttl.as_time(),
        max_expires_at: now + cap.as_time(),
        state: LeaseState::Active,
        revocation_reason: None,
        external: provider.external(),
        provider_state: serde_json::Value::Null,
        revoke_attempts: 0,
        last_error: None,
    };
    let admin = if provider.external() {
        Some(admin_secret(state, &target.name).await?.ok_or_else(|| {
            BrokerError::Internal(format!("target {:?} has no admin secret", target.name))
        })?)
    } else {
        None
    };
    let access = TargetAccess {
        target,
        admin: admin.as_ref(),
    };
    let identity = &checked.identity;
    let owner = grant.owner.clone();
    let issued_event = |lease: &Lease| {
        let mut detail = serde_json::json!({
            "kind": lease.kind, "granted_ttl": ttl, "expires_at": rfc3339(lease.expires_at), "max_expires_at": rfc3339(lease.max_expires_at),
        });
        if let Some(approval) = &collect {
            detail["approval"] = approval.clone();
        }
        let event = AuditDraft::new(AuditKind::LeaseIssued, actor)
            .for_lease(lease)
            .detail(detail);
        AuditDraft {
            owner: Some(owner.clone()),
            ..event
        }
    };

    if !provider.external() {
        // Self-contained: made in memory, so grant, lease and audit commit together and
        // nothing is acknowledged before they have.
        let credential = provider
            .issue(issue_request(
                &grant,
                identity,
                access,
                &lease,
                &serde_json::Value::Null,
            ))
            .await?;
        lease.provider_state = credential.provider_state.clone();
        let mut grant = grant;
        grant.state = grant.state.transition(GrantState::Issued)?;
        let issued_entry = issued_event(&lease);
        let mut events = events;
        events.push(issued_entry);
        record(grant.clone(), lease.clone(), events).await?;
        return Ok(issued(state, grant, lease, credential));
    }

    // Write-ahead: the lease naming what will be created is committed before the target
    // is touched, so a crash at any later point leaves a `creating` lease that start-up
    // reconciliation cleans up. Nothing exists on the target that Mayfly does not know of.
    let plan = provider.plan(&issue_request(
        &grant,
        identity,
        access,
        &lease,
        &serde_json::Value::Null,
    ))?;
    lease.state = LeaseState::Creating;
    lease.provider_state = plan.clone();
    record(grant.clone(), lease.clone(), events).await?;
    crate::crash_point("after-write-ahead");
    let outcome = provider
        .issue(issue_request(&grant, identity, access, &lease, &plan))
        .await;
    let credential = match outcome {
        Ok(c) => c,
        Err(e) => {
            fail_issuance(
                state,
                provider.as_ref(),
                &lease,
                access,
                &e.to_string(),
                actor,
            )
            .await;
            return Err(e.into());
        }
    };
    crate::crash_point("after-create");
    match state
        .store
        .activate_lease(lease.id, &credential.provider_state, issued_event(&lease))
        .await
    {
        Ok(active) => {
            let mut grant = grant;
            grant.state = grant.state.transition(GrantState::Issued)?;
            Ok(issued(state, grant, active, credential))
        }
        Err(e) => {
            // Not acknowledged, so the credential must not outlive this request.
            fail_issuance(
                state,
                provider.as_ref(),
                &lease,
                access,
                "could not record the issued credential",
                actor,
            )
            .await;
            Err(e.into())
        }
    }
}

fn issue_request<'a>(
    grant: &'a Grant,
    identity: &'a Identity,
    target: TargetAccess<'a>,
    lease: &Lease,
    plan: &'a serde_json::Value,
) -> IssueRequest<'a> {
    IssueRequest {
        grant,
        identity,
        target,
        lease_id: lease.id,
        issued_at: lease.issued_at,
        expires_at: lease.expires_at,
        plan,
    }
}

/// Undoes a failed external issuance: removes whatever may exist on the target and closes
/// the write-ahead lease; if the target cannot confirm, the revocation worker retries.
async fn fail_issuance(
    state: &AppState,
    provider: &dyn mayfly_core::provider::Provider,
    lease: &Lease,
    access: TargetAccess<'_>,
    error: &str,
    actor: &str,
) {
    state.metrics.grant(&lease.target, "failed");
    let cleaned = provider.revoke(lease, access).await.is_ok();
    if let Err(e) = state
        .store
        .abandon_lease(lease.id, cleaned, error, actor, mayfly_core::now())
        .await
    {
        tracing::warn!(lease = %lease.id, error = %e, "cannot close a failed issuance; start-up reconciliation will");
    }
    if !cleaned {
        state.revoker_wake.notify_one();
    }
}

/// A grant the caller may see: a workload sees only its own; others' are reported absent,
/// not forbidden, so ids cannot be probed.
pub async fn visible_grant(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Grant, BrokerError> {
    let grant = state.store.get_grant(id).await?;
    visible(caller, "grant", id, grant, |g| &g.identity)
}

/// A lease the caller may see, by the same rule as [`visible_grant`].
pub async fn visible_lease(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Lease, BrokerError> {
    let lease = state.store.get_lease(id).await?;
    visible(caller, "lease", id, lease, |l| &l.identity)
}

fn visible<T>(
    caller: &Caller,
    what: &'static str,
    id: Uuid,
    record: Option<T>,
    holder: impl Fn(&T) -> &String,
) -> Result<T, BrokerError> {
    match record {
        Some(r)
            if caller
                .0
                .identity()
                .is_none_or(|own| own == holder(&r).as_str()) =>
        {
            Ok(r)
        }
        _ => Err(BrokerError::NotFound {
            what,
            id: id.to_string(),
            field: None,
        }),
    }
}

/// Extends a lease by `ttl` (default: its grant's TTL), never past the lease's cap or its
/// identity's expiry, then asks the provider to follow. The lease is extended first: if
/// the target then fails to follow (PostgreSQL's VALID UNTIL), the credential only ends
/// earlier than recorded, never later. Returns a replacement credential for kinds that
/// cannot be extended in place (tokens).
/// A renewal's result: the lease as it now is, a replacement credential for kinds that
/// cannot be extended in place, and why the expiry is what it is when that is not simply
/// now + the TTL asked for (capped, or unchanged).
pub struct Renewal {
    pub lease: Lease,
    pub credential: Option<IssuedCredential>,
    pub reasons: Vec<String>,
}

pub async fn renew(
    state: &AppState,
    caller: &Caller,
    lease_id: Uuid,
    ttl: Option<Ttl>,
) -> Result<Renewal, BrokerError> {
    let lease = visible_lease(state, caller, lease_id).await?;
    let grant = visible_grant(state, caller, lease.grant_id).await?;
    let ttl = ttl.or(grant.granted_ttl).unwrap_or(Ttl::from_secs(0));
    if ttl.as_secs() == 0 {
        return Err(BrokerError::field("ttl", "must be greater than zero"));
    }
    let now = mayfly_core::now();
    // Never past the identity's own expiry, even for a lease granted before it was set.
    let identity = match &caller.1 {
        Some(own) => Some(own.clone()),
        None => state.store.get_identity(&lease.identity).await?,
    };
    let asked = now + ttl.as_time();
    let mut until = asked;
    let mut reasons = Vec::new();
    if let Some(identity) = identity {
        if let Some(expires) = identity.expires_at.filter(|e| *e < until) {
            reasons.push(format!(
                "capped at {}: identity {:?} expires then",
                rfc3339(expires).unwrap_or_default(),
                identity.id
            ));
            until = expires;
        }
    }
    let renewed = state
        .store
        .renew_lease(lease_id, until, &caller.0.actor(), now)
        .await?;
    if until > renewed.max_expires_at {
        reasons.push(format!(
            "capped at {}: the lease's maximum, fixed when it was issued (target maximum or policy cap)",
            rfc3339(renewed.max_expires_at).unwrap_or_default()
        ));
    }
    // Less than a second more is no renewal a person would notice: the TTL counts from
    // now, and the lease already ran that long (a renewal never shortens a lease).
    let gained = renewed.expires_at - lease.expires_at;
    if gained < time::Duration::seconds(1) {
        reasons.push(format!(
            "expiry practically unchanged at {} (+{} ms): the lease already ran {ttl} from now; ask for a longer ttl",
            rfc3339(renewed.expires_at).unwrap_or_default(),
            gained.whole_milliseconds()
        ));
    }
    let target = state
        .store
        .get_target(&lease.target)
        .await?
        .ok_or_else(|| {
            BrokerError::Internal(format!(
                "lease {lease_id} names missing target {:?}",
                lease.target
            ))
        })?;
    let provider = provider_for(state, &lease.kind)?;
    let admin = admin_secret(state, &target.name).await?;
    // A renewed token of an approved grant carries its approval as the first one did.
    let mut grant = grant;
    if let Some(approval) = state.store.get_approval(grant.id).await? {
        if approval.state == ApprovalState::Collected {
            if let serde_json::Value::Object(map) = &mut grant.context {
                map.insert(
                    "authorization_details".into(),
                    serde_json::json!([approval_details(&approval)]),
                );
            }
        }
    }
    let credential = provider
        .renew(
            &renewed,
            &grant,
            TargetAccess {
                target: &target,
                admin: admin.as_ref(),
            },
            renewed.expires_at,
        )
        .await?;
    Ok(Renewal {
        lease: renewed,
        credential,
        reasons,
    })
}

/// The (guarded) provider of a credential kind. A stored target or lease whose kind has
/// no provider is a broken invariant, not a caller's mistake.
pub fn provider_for(
    state: &AppState,
    kind: &str,
) -> Result<std::sync::Arc<dyn mayfly_core::provider::Provider>, BrokerError> {
    state
        .providers
        .get(kind)
        .cloned()
        .ok_or_else(|| BrokerError::Internal(format!("no provider for kind {kind:?}")))
}

/// Removes one lease's credential from its target (`Ok` when it is already gone): what
/// the revocation worker and start-up cleanup of interrupted issuances call.
pub async fn revoke_on_target(state: &AppState, lease: &Lease) -> Result<(), BrokerError> {
    let provider = provider_for(state, &lease.kind)?;
    let target = state
        .store
        .get_target(&lease.target)
        .await?
        .ok_or_else(|| {
            BrokerError::Internal(format!("target {:?} no longer exists", lease.target))
        })?;
    let admin = admin_secret(state, &lease.target).await?;
    let access = TargetAccess {
        target: &target,
        admin: admin.as_ref(),
    };
    provider.revoke(lease, access).await?;
    // Trust, then verify: a revocation that reports success while the user still exists
    // (a custom revocation statement that does nothing, a replica lagging) is a failed
    // attempt, retried, never a silent "revoked".
    if !provider.verify_revoked(lease, access).await? {
        return Err(BrokerError::Target(ProviderError::Failed(format!(
            "target {:?} reported the credential of lease {} removed, but it still exists",
            lease.target, lease.id
        ))));
    }
    Ok(())
}

/// Makes a lease's credential unusable while its removal keeps failing (see
/// [`mayfly_core::provider::Provider::contain`]); whether the kind could.
pub async fn contain_on_target(state: &AppState, lease: &Lease) -> Result<bool, BrokerError> {
    let provider = provider_for(state, &lease.kind)?;
    let Some(target) = state.store.get_target(&lease.target).await? else {
        return Ok(false);
    };
    let admin = admin_secret(state, &lease.target).await?;
    let access = TargetAccess {
        target: &target,
        admin: admin.as_ref(),
    };
    Ok(provider.contain(lease, access).await?)
}

/// A target's admin secret, unsealed for one call to its provider (the seal is bound to
/// the target's name, so a secret copied to another row does not open).
pub async fn admin_secret(
    state: &AppState,
    target: &str,
) -> Result<Option<mayfly_core::secret::SecretString>, BrokerError> {
    let Some(sealed) = state.store.get_target_secret(target).await? else {
        return Ok(None);
    };
    open_admin_secret(state, target, &sealed).map(Some)
}

/// Opens a sealed admin secret of `target` (current or a recorded rotation's next one).
pub fn open_admin_secret(
    state: &AppState,
    target: &str,
    sealed: &[u8],
) -> Result<mayfly_core::secret::SecretString, BrokerError> {
    let plain = state
        .master
        .open(sealed, &crate::providers::secret_context(target))
        .map_err(|e| BrokerError::Internal(format!("target {target:?} admin secret: {e}")))?;
    let text = String::from_utf8(plain.expose().to_vec()).map_err(|_| {
        BrokerError::Internal(format!("target {target:?} admin secret is not text"))
    })?;
    Ok(mayfly_core::secret::SecretString::new(text))
}

fn issued(
    state: &AppState,
    grant: Grant,
    lease: Lease,
    credential: IssuedCredential,
) -> GrantOutcome {
    state.metrics.grant(&grant.target, "issued");
    state.lease_expires_at(lease.expires_at);
    GrantOutcome::Issued(Box::new(Issued {
        grant,
        lease,
        credential,
    }))
}

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}
