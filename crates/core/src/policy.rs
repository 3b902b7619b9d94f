//! Runtime authorisation: the decision made for each grant at request time.
//!
//! [`PolicyEngine`] is the extension point (Cedar implements it); [`TargetAllowList`] is
//! the built-in default-deny engine used until policies are configured.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::duration::Ttl;
use crate::model::{Identity, Target};

/// Everything a decision may look at.
#[derive(Debug)]
pub struct PolicyRequest<'a> {
    pub principal: &'a Principal,
    pub identity: &'a Identity,
    pub target: &'a Target,
    pub action: &'a str,
    pub purpose: &'a str,
    pub task: &'a str,
    pub requested_ttl: Ttl,
    pub context: &'a serde_json::Value,
    pub now: OffsetDateTime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    Allow,
    Deny,
    RequireApproval { approvals: u32 },
}

/// The outcome plus the limits and the explanation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Decision {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Policy cap on the TTL; the granted TTL is the minimum of request, this and the
    /// target's maximum.
    pub max_ttl: Option<Ttl>,
    /// Which policies (or rules) determined the outcome.
    pub determined_by: Vec<String>,
    /// Human-readable reasons, especially for a denial.
    pub reasons: Vec<String>,
    pub engine: String,
    /// With `require_approval`: the groups whose members may approve (any one of them,
    /// from the policies' `@approvers`); empty when policy names none (the target's
    /// `approvers` setting then applies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
}

impl Decision {
    pub fn deny(engine: &str, rule: &str, reason: impl Into<String>) -> Decision {
        Decision {
            outcome: Outcome::Deny,
            max_ttl: None,
            determined_by: vec![rule.to_string()],
            reasons: vec![reason.into()],
            engine: engine.to_string(),
            approvers: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The request cannot be evaluated as given (e.g. context of the wrong type).
    #[error("{field}: {reason}")]
    BadRequest { field: String, reason: String },
    /// The engine failed; the request is denied (fail closed).
    #[error("policy evaluation failed: {0}")]
    Internal(String),
}

/// May `actor` act for the subject of `grant` (OAuth 2.0 token exchange with an
/// `actor_token`, RFC 8693)? Asked once per actor in the chain, besides the grant's own
/// decision, which is made for the subject with every actor in `context.actors`.
#[derive(Debug)]
pub struct DelegationRequest<'a> {
    /// The subject's request, exactly as decided for the grant (principal = the subject).
    pub grant: &'a PolicyRequest<'a>,
    /// The acting workload, as its own credential proved it.
    pub actor: &'a Principal,
    pub actor_identity: &'a Identity,
}

/// Decides grants. Must be cheap: it runs on every request.
pub trait PolicyEngine: Send + Sync {
    fn decide(&self, request: &PolicyRequest<'_>) -> Result<Decision, PolicyError>;

    /// [`PolicyEngine::decide`] again for a request `approvers` have approved (by their
    /// audit names): an engine that requires approvals counts them (Cedar sees them as
    /// `context.approvals`). An engine that never asks for approval decides as before.
    fn decide_approved(
        &self,
        request: &PolicyRequest<'_>,
        approvers: &[String],
    ) -> Result<Decision, PolicyError> {
        let _ = approvers;
        self.decide(request)
    }

    /// Whether an actor may act for a subject. Default deny: only an engine that can
    /// express who may act for whom (Cedar's `Action::"act_for"`) ever allows it.
    fn decide_delegation(&self, request: &DelegationRequest<'_>) -> Result<Decision, PolicyError> {
        Ok(Decision::deny(
            "default",
            "default-deny",
            format!(
                "identity {:?} may not act for {:?}: delegation needs a Cedar policy permitting Action::\"act_for\"",
                request.actor_identity.id, request.grant.identity.id
            ),
        ))
    }
}

/// Default-deny allow-list on the target: `allow = ["billing-deployer", "owner:payments", "*"]`.
#[derive(Debug, Default)]
pub struct TargetAllowList;

// Delegation keeps the trait's default: an allow list names who may ask, not for whom.
impl PolicyEngine for TargetAllowList {
    fn decide(&self, r: &PolicyRequest<'_>) -> Result<Decision, PolicyError> {
        const ENGINE: &str = "target-allow-list";
        let owner_entry = format!("owner:{}", r.identity.owner);
        let matched = r
            .target
            .allow
            .iter()
            .find(|e| *e == "*" || **e == r.identity.id || **e == owner_entry);
        Ok(match matched {
            Some(entry) => Decision {
                outcome: Outcome::Allow,
                max_ttl: None,
                determined_by: vec![format!("target {} allow {entry:?}", r.target.name)],
                reasons: vec![],
                engine: ENGINE.into(),
                approvers: Vec::new(),
            },
            None => Decision::deny(
                ENGINE,
                "default-deny",
                format!(
                    "target {:?} does not allow identity {:?} (nor its owner {:?})",
                    r.target.name, r.identity.id, r.identity.owner
                ),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IdentityKind;

    #[test]
    fn allow_list_is_default_deny() {
        let now = crate::now();
        let identity = Identity {
            id: "ci".into(),
            kind: IdentityKind::Pipeline,
            owner: "payments".into(),
            purpose: "p".into(),
            expires_at: None,
            labels: Default::default(),
            enabled: true,
            created_at: now,
        };
        let mut target = Target {
            name: "api".into(),
            kind: "token".into(),
            actions: vec!["read".into()],
            default_ttl: Ttl::from_secs(60),
            max_ttl: Ttl::from_secs(600),
            allow: vec![],
            settings: serde_json::Value::Null,
            created_at: now,
        };
        let principal = Principal::Operator { name: "op".into() };
        let ctx = serde_json::Value::Null;
        let decide = |t: &Target| {
            TargetAllowList
                .decide(&PolicyRequest {
                    principal: &principal,
                    identity: &identity,
                    target: t,
                    action: "read",
                    purpose: "x",
                    task: "t",
                    requested_ttl: Ttl::from_secs(60),
                    context: &ctx,
                    now,
                })
                .map(|d| d.outcome)
        };
        assert_eq!(decide(&target), Ok(Outcome::Deny));
        for entry in ["*", "ci", "owner:payments"] {
            target.allow = vec![entry.into()];
            assert_eq!(decide(&target), Ok(Outcome::Allow), "{entry}");
        }
        target.allow = vec!["other".into(), "owner:other".into()];
        assert_eq!(decide(&target), Ok(Outcome::Deny));
    }
}
