//! The Cedar-backed [`PolicyEngine`]: maps a Mayfly request onto Cedar entities and
//! context, evaluates the policies that can apply to the target, and turns Cedar's answer
//! plus the policies' annotations into a [`Decision`].
//!
//! # Mapping
//!
//! | Cedar | From |
//! |---|---|
//! | principal `Workload::"<identity.id>"` | `id`, `kind` (`service`/`pipeline`/`agent`/`other`), `owner` from the identity; `environment` = label `env` or `""`; `labels` = identity labels as `"key=value"`; `method`, `issuer`, `subject` and `attributes` (verified claims as `"key=value"`, arrays one tag per element, other scalars as JSON text, nulls dropped) from the workload credential, or `method = "operator"`, `subject` = operator name, no attributes when an operator asks on the identity's behalf |
//! | action `Action::"<action>"` | the requested action; must be one of the target's `actions` and declared in the schema, else `BadRequest { field: "action" }` |
//! | resource `Target::"<target.name>"` | `name`, `kind`, `actions`; `environment`, `sensitivity`, `owner` from the target settings of those names (strings, `""` when absent); parents `TargetGroup::"<g>"` for each name in settings `groups` (malformed settings are `Internal`: an operator error, failing closed) |
//! | `context.purpose`, `context.task_id` | request purpose and task (each at most [`MAX_TEXT_BYTES`], else `BadRequest` on `purpose`/`task`) |
//! | `context.requested_ttl_seconds` | requested TTL |
//! | `context.now` | `{timestamp, weekday: "mon".."sun", hour: 0..23}` of the request time in [`LoadOptions::utc_offset`] |
//! | `context.break_glass`, `context.environment`, `context.source_ip` | the request's JSON `context` object (`false` / `""` / absent by default). Any other key, a wrong type or an unparsable IP is `BadRequest { field: "context.<key>" }`; `source_ip` is normalised to canonical text |
//! | `context.actors` | the identities acting for the principal (OAuth token exchange with an `actor_token`, RFC 8693), nearest first; `[]` for a direct request. The broker sets it; the grant is decided for the subject with it, and again without it, and must be allowed both ways (a chain only narrows) |
//! | `Action::"act_for"` | asked once per actor: principal = the actor's `Workload`, resource = the target, context = the request's context plus `subject` (the subject's `Workload`). Allowed only when a permit naming `act_for` itself determines it; default deny |
//! | `context.approvals` | `{count, approvers}` from [`CedarEngine::decide_with_approvals`]; empty for [`PolicyEngine::decide`]. Callers cannot supply it |

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Effect, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicySet, Request, RestrictedExpression, Schema,
};
use mayfly_core::auth::Principal;
use mayfly_core::duration::Ttl;
use mayfly_core::model::{IdentityKind, Target};
use mayfly_core::policy::{
    Decision, DelegationRequest, Outcome, PolicyEngine, PolicyError, PolicyRequest,
};
use time::{UtcOffset, Weekday};

use crate::load::{load_sources, Index, LoadOptions, PolicyLoadError, PolicyMeta};

/// The `engine` name recorded in every [`Decision`].
pub const ENGINE_NAME: &str = "cedar";

/// Longest accepted `purpose` and `task`, in bytes. Policies read them; unbounded free text
/// would make evaluation cost and audit records caller-controlled.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Keys the request's `context` object may carry. Anything else is rejected, so a typo
/// (`breakglass`) is an error rather than a silently ignored flag.
pub const CONTEXT_KEYS: [&str; 4] = ["break_glass", "environment", "source_ip", "actors"];

/// The delegation action: may the principal act for `context.subject`?
pub const ACT_FOR: &str = "act_for";

/// Per-target slices kept; past this the cache is cleared (targets are few in practice,
/// the bound only stops unbounded growth from many distinct group combinations).
const SLICE_CACHE_LIMIT: usize = 4096;

/// Approvals already given, for re-evaluating a grant after approvers acted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GivenApprovals {
    pub approvers: Vec<String>,
}

/// A validated, indexed Cedar policy set. Immutable once loaded except for its slice cache;
/// share it behind an `Arc`.
pub struct CedarEngine {
    schema: Schema,
    actions: HashSet<String>,
    meta: HashMap<cedar_policy::PolicyId, PolicyMeta>,
    index: Index,
    policy_count: usize,
    utc_offset: UtcOffset,
    /// Action groups declared by schema fragments: a policy scoped `action in [group]` may
    /// match any action, so the slice keeps it.
    action_groups: HashSet<String>,
    /// Action entities from the schema (carry action-group membership, if a fragment
    /// declares groups), keyed by action name.
    action_entities: HashMap<String, Entity>,
    slices: RwLock<HashMap<String, Arc<PolicySet>>>,
    /// Off only in tests that check slicing against evaluating every policy.
    pub(crate) slicing: bool,
    authorizer: Authorizer,
    types: TypeNames,
}

impl std::fmt::Debug for CedarEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CedarEngine")
            .field("policies", &self.policy_count)
            .field("utc_offset", &self.utc_offset)
            .finish_non_exhaustive()
    }
}

impl CedarEngine {
    /// Builds an engine from in-memory sources: `(file name, text)` pairs; names ending in
    /// `.cedarschema` are schema fragments, the rest are policies. [`crate::load_dir`] reads
    /// a directory and calls this.
    pub fn from_sources<N, T>(
        sources: impl IntoIterator<Item = (N, T)>,
        options: LoadOptions,
    ) -> Result<CedarEngine, PolicyLoadError>
    where
        N: Into<String>,
        T: Into<String>,
    {
        let sources = sources
            .into_iter()
            .map(|(n, t)| (n.into(), t.into()))
            .collect();
        let loaded = load_sources(sources, &options)?;
        let mut action_entities = HashMap::new();
        if let Ok(entities) = loaded.schema.action_entities() {
            for e in entities.iter() {
                action_entities.insert(e.uid().id().unescaped().to_string(), e.clone());
            }
        }
        let action_groups = loaded
            .schema
            .action_groups()
            .map(|a| a.id().unescaped().to_string())
            .collect();
        Ok(CedarEngine {
            action_groups,
            schema: loaded.schema,
            actions: loaded.actions,
            meta: loaded.meta,
            index: loaded.index,
            policy_count: loaded.policy_count,
            utc_offset: options.utc_offset,
            action_entities,
            slices: RwLock::new(HashMap::new()),
            slicing: true,
            authorizer: Authorizer::new(),
            types: TypeNames::new()?,
        })
    }

    /// How many policies are in force.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// The action names the schema declares (built-in plus extensions).
    pub fn actions(&self) -> impl Iterator<Item = &str> {
        self.actions.iter().map(String::as_str)
    }

    /// How many policies a decision on this target would evaluate (for diagnostics and the
    /// benchmark's sanity check).
    pub fn policies_for(&self, target: &Target, action: &str) -> Result<usize, PolicyError> {
        let groups = target_groups(target)?;
        Ok(self
            .slice(&target.name, &groups, action)?
            .policies()
            .count())
    }

    /// [`PolicyEngine::decide`] with approvals already given (count and names are exposed
    /// to policies as `context.approvals`).
    pub fn decide_with_approvals(
        &self,
        r: &PolicyRequest<'_>,
        approvals: &GivenApprovals,
    ) -> Result<Decision, PolicyError> {
        check_text("purpose", r.purpose)?;
        check_text("task", r.task)?;
        if !r.target.actions.iter().any(|a| a == r.action) {
            return Err(PolicyError::BadRequest {
                field: "action".into(),
                reason: format!(
                    "target {:?} (kind {:?}) does not offer action {:?}; it offers: {}",
                    r.target.name,
                    r.target.kind,
                    r.action,
                    r.target.actions.join(", ")
                ),
            });
        }
        if !self.actions.contains(r.action) {
            return Err(PolicyError::BadRequest {
                field: "action".into(),
                reason: format!(
                    "action {:?} is not declared in the policy schema; declare it in a \
                     .cedarschema file in the policy directory or in the engine's extra actions",
                    r.action
                ),
            });
        }
        let extra = RequestContextFields::parse(r.context)?;
        let groups = target_groups(r.target)?;
        let slice = self.slice(&r.target.name, &groups, r.action)?;

        let t = &self.types;
        let principal_uid = uid(&t.workload, &r.identity.id);
        let action_uid = uid(&t.action, r.action);
        let resource_uid = uid(&t.target, &r.target.name);

        let mut entities = Vec::with_capacity(3 + groups.len());
        entities.push(self.workload_entity(principal_uid.clone(), r.principal, r.identity)?);
        let group_uids: HashSet<EntityUid> = groups.iter().map(|g| uid(&t.group, g)).collect();
        entities.push(target_entity(
            resource_uid.clone(),
            r.target,
            group_uids.clone(),
        )?);
        for g in group_uids {
            entities.push(Entity::new_no_attrs(g, HashSet::new()));
        }
        // Only needed for action-group membership; without groups an absent action entity
        // behaves the same and saves a clone per request.
        if !self.action_groups.is_empty() {
            if let Some(a) = self.action_entities.get(r.action) {
                entities.push(a.clone());
            }
        }
        // Entities are built by us to the schema's shape; re-checking them against the
        // schema on every request would cost more than the evaluation itself. Debug builds
        // (and so every test) do check.
        let entities =
            Entities::from_entities(entities, cfg!(debug_assertions).then_some(&self.schema))
                .map_err(internal)?;
        let context = self.context(r, &extra, approvals)?;
        // The request is built by us to the schema's shape (the action was checked above);
        // re-validating it costs about as much as evaluating the policies, so only debug
        // builds (and so every test) check that the shape has not drifted from the schema.
        let request = Request::new(
            principal_uid.clone(),
            action_uid.clone(),
            resource_uid.clone(),
            context,
            cfg!(debug_assertions).then_some(&self.schema),
        )
        .map_err(internal)?;

        let response = self.authorizer.is_authorized(&request, &slice, &entities);
        Ok(self.conclude(
            &response,
            &principal_uid,
            &action_uid,
            &resource_uid,
            r.requested_ttl,
            approvals,
        ))
    }

    /// Whether `d.actor` may act for the subject of `d.grant` on its target: Cedar's
    /// answer to `principal = actor, action = act_for, resource = target` with the subject
    /// in `context.subject`, allowed only if a determining permit names `act_for` itself
    /// (a policy for every action never makes a delegate).
    pub fn decide_delegation(&self, d: &DelegationRequest<'_>) -> Result<Decision, PolicyError> {
        let r = d.grant;
        check_text("purpose", r.purpose)?;
        check_text("task", r.task)?;
        if d.actor_identity.id == r.identity.id {
            return Err(PolicyError::BadRequest {
                field: "actor_token".into(),
                reason: format!("names the subject {:?} itself", r.identity.id),
            });
        }
        let extra = RequestContextFields::parse(r.context)?;
        let groups = target_groups(r.target)?;
        let slice = self.slice(&r.target.name, &groups, ACT_FOR)?;
        let t = &self.types;
        let actor_uid = uid(&t.workload, &d.actor_identity.id);
        let subject_uid = uid(&t.workload, &r.identity.id);
        let action_uid = uid(&t.action, ACT_FOR);
        let resource_uid = uid(&t.target, &r.target.name);
        let group_uids: HashSet<EntityUid> = groups.iter().map(|g| uid(&t.group, g)).collect();
        let mut entities = vec![
            self.workload_entity(actor_uid.clone(), d.actor, d.actor_identity)?,
            self.workload_entity(subject_uid.clone(), r.principal, r.identity)?,
            target_entity(resource_uid.clone(), r.target, group_uids.clone())?,
        ];
        for g in group_uids {
            entities.push(Entity::new_no_attrs(g, HashSet::new()));
        }
        if !self.action_groups.is_empty() {
            if let Some(a) = self.action_entities.get(ACT_FOR) {
                entities.push(a.clone());
            }
        }
        let entities =
            Entities::from_entities(entities, cfg!(debug_assertions).then_some(&self.schema))
                .map_err(internal)?;
        let mut pairs = self.context_pairs(r, &extra, &GivenApprovals::default())?;
        pairs.push((
            "subject".to_string(),
            RestrictedExpression::new_entity_uid(subject_uid.clone()),
        ));
        let context = Context::from_pairs(pairs).map_err(internal)?;
        let request = Request::new(
            actor_uid.clone(),
            action_uid.clone(),
            resource_uid.clone(),
            context,
            cfg!(debug_assertions).then_some(&self.schema),
        )
        .map_err(internal)?;
        let response = self.authorizer.is_authorized(&request, &slice, &entities);
        let mut decision = self.conclude(
            &response,
            &actor_uid,
            &action_uid,
            &resource_uid,
            r.requested_ttl,
            &GivenApprovals::default(),
        );
        if decision.outcome != Outcome::Deny {
            let explicit = response.diagnostics().reason().any(|id| {
                slice
                    .policy(id)
                    .is_some_and(|p| match p.action_constraint() {
                        ActionConstraint::Eq(a) => a == action_uid,
                        ActionConstraint::In(list) => list.contains(&action_uid),
                        ActionConstraint::Any => false,
                    })
            });
            if !explicit {
                decision = Decision::deny(
                    ENGINE_NAME,
                    "default-deny",
                    format!(
                        "no policy naming Action::\"act_for\" permits {actor_uid} to act for {subject_uid} on {resource_uid} (policies for every action do not count: {})",
                        decision.determined_by.join(", ")
                    ),
                );
            }
        }
        Ok(decision)
    }

    /// Turns Cedar's answer into a [`Decision`]: forbids that could not be evaluated deny
    /// (fail closed); an allow carries the strictest approvals and cap of its permits.
    fn conclude(
        &self,
        response: &cedar_policy::Response,
        principal_uid: &EntityUid,
        action_uid: &EntityUid,
        resource_uid: &EntityUid,
        requested_ttl: Ttl,
        approvals: &GivenApprovals,
    ) -> Decision {
        let mut errored: Vec<(cedar_policy::PolicyId, String)> = response
            .diagnostics()
            .errors()
            .map(|e| match e {
                cedar_policy::AuthorizationError::PolicyEvaluationError(pe) => {
                    (pe.policy_id().clone(), pe.inner().to_string())
                }
            })
            .collect();
        errored.sort();

        // Fail closed: a forbid that could not be evaluated might have denied.
        let failed_forbids: Vec<_> = errored
            .iter()
            .filter(|(id, _)| self.meta.get(id).map(|m| m.effect) == Some(Effect::Forbid))
            .collect();
        if !failed_forbids.is_empty() {
            return Decision {
                outcome: Outcome::Deny,
                max_ttl: None,
                determined_by: failed_forbids.iter().map(|(id, _)| id.to_string()).collect(),
                reasons: failed_forbids
                    .iter()
                    .map(|(id, msg)| {
                        format!("forbid policy {:?} could not be evaluated ({msg}); denied to fail closed", id.to_string())
                    })
                    .collect(),
                engine: ENGINE_NAME.into(),
                approvers: Vec::new(),
            };
        }

        let mut determining: Vec<(&cedar_policy::PolicyId, Option<&PolicyMeta>)> = response
            .diagnostics()
            .reason()
            .map(|id| (id, self.meta.get(id)))
            .collect();
        determining.sort_by(|a, b| a.0.cmp(b.0));
        let determined_by: Vec<String> = determining.iter().map(|(id, _)| id.to_string()).collect();

        match response.decision() {
            cedar_policy::Decision::Allow => {
                // Strictest wins: most approvals, shortest cap.
                let approvals_needed = determining
                    .iter()
                    .filter_map(|(_, m)| m.map(|m| m.approvals))
                    .max()
                    .unwrap_or(0);
                let max_ttl = determining
                    .iter()
                    .filter_map(|(_, m)| m.and_then(|m| m.max_ttl))
                    .min();
                let given = approvals.approvers.len() as u32;
                let mut reasons = Vec::new();
                let mut approvers = Vec::new();
                let outcome = if approvals_needed > 0 {
                    let by: Vec<String> = determining
                        .iter()
                        .filter(|(_, m)| m.map(|m| m.approvals) == Some(approvals_needed))
                        .map(|(id, _)| format!("{:?}", id.to_string()))
                        .collect();
                    approvers = determining
                        .iter()
                        .filter_map(|(_, m)| *m)
                        .filter(|m| m.approvals == approvals_needed)
                        .flat_map(|m| m.approvers.iter().cloned())
                        .collect();
                    approvers.sort();
                    approvers.dedup();
                    let from = if approvers.is_empty() {
                        String::new()
                    } else {
                        format!(" from {}", approvers.join(" or "))
                    };
                    reasons.push(format!(
                        "policy {} requires {approvals_needed} approval{}{from}",
                        by.join(", "),
                        if approvals_needed == 1 { "" } else { "s" }
                    ));
                    if given >= approvals_needed {
                        Outcome::Allow
                    } else {
                        Outcome::RequireApproval {
                            approvals: approvals_needed,
                        }
                    }
                } else {
                    Outcome::Allow
                };
                if let Some(cap) = max_ttl {
                    if requested_ttl > cap {
                        reasons.push(format!(
                            "requested TTL {requested_ttl} is capped at {cap} by policy"
                        ));
                    }
                }
                Decision {
                    outcome,
                    max_ttl,
                    determined_by,
                    reasons,
                    engine: ENGINE_NAME.into(),
                    approvers,
                }
            }
            cedar_policy::Decision::Deny => {
                let mut reasons: Vec<String> = if determining.is_empty() {
                    vec![format!(
                        "no permit policy matched {principal_uid} doing {action_uid} on {resource_uid}"
                    )]
                } else {
                    determining
                        .iter()
                        .map(|(id, m)| match m.and_then(|m| m.reason.as_deref()) {
                            Some(why) => format!("forbidden by policy {:?}: {why}", id.to_string()),
                            None => format!("forbidden by policy {:?}", id.to_string()),
                        })
                        .collect()
                };
                // A permit that errored may be why nothing matched; say so.
                for (id, msg) in &errored {
                    reasons.push(format!(
                        "policy {:?} could not be evaluated: {msg}",
                        id.to_string()
                    ));
                }
                Decision {
                    outcome: Outcome::Deny,
                    max_ttl: None,
                    determined_by: if determined_by.is_empty() {
                        vec!["default-deny".into()]
                    } else {
                        determined_by
                    },
                    reasons,
                    engine: ENGINE_NAME.into(),
                    approvers: Vec::new(),
                }
            }
        }
    }

    /// The policies that can apply to an action on a target: those whose resource scope is
    /// unconstrained, names the target or one of its groups, and whose action scope can
    /// include the action. Cached per (action, target, groups).
    ///
    /// Cedar evaluates every policy it is given (cloning each condition to do so), so what
    /// is left out here is the main saving; the scope checks are conservative, never
    /// leaving out a policy that could match.
    fn slice(
        &self,
        target: &str,
        groups: &[String],
        action: &str,
    ) -> Result<Arc<PolicySet>, PolicyError> {
        let mut key = String::with_capacity(action.len() + target.len() + 16);
        key.push_str(action);
        key.push('\u{0}');
        key.push_str(target);
        for g in groups {
            key.push('\u{0}');
            key.push_str(g);
        }
        {
            let cache = self.slices.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = cache.get(&key) {
                return Ok(Arc::clone(s));
            }
        }
        let mut policies: Vec<cedar_policy::Policy> = self.index.global.clone();
        if let Some(p) = self.index.by_target.get(target) {
            policies.extend(p.iter().cloned());
        }
        let mut seen_groups = HashSet::new();
        for g in groups {
            if seen_groups.insert(g) {
                if let Some(p) = self.index.by_group.get(g) {
                    policies.extend(p.iter().cloned());
                }
            }
        }
        if self.slicing {
            policies.retain(|p| self.action_can_match(p, action));
        } else {
            policies = self
                .index
                .global
                .iter()
                .chain(self.index.by_target.values().flatten())
                .chain(self.index.by_group.values().flatten())
                .cloned()
                .collect();
        }
        let set = Arc::new(PolicySet::from_policies(policies).map_err(internal)?);
        let mut cache = self.slices.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= SLICE_CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&set));
        Ok(set)
    }

    fn action_can_match(&self, policy: &cedar_policy::Policy, action: &str) -> bool {
        let can = |uid: &EntityUid| {
            // Anything unexpected (another entity type, an action group) is kept.
            uid.type_name() != &self.types.action
                || uid.id().unescaped() == action
                || self.action_groups.contains(uid.id().unescaped())
        };
        match policy.action_constraint() {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(uid) => can(&uid),
            ActionConstraint::In(uids) => uids.iter().any(can),
        }
    }

    fn workload_entity(
        &self,
        id: EntityUid,
        principal: &Principal,
        identity: &mayfly_core::model::Identity,
    ) -> Result<Entity, PolicyError> {
        let (method, issuer, subject, claims) = match principal {
            Principal::Workload { claims, .. } => (
                claims.method.as_str(),
                claims.issuer.as_str(),
                claims.subject.as_str(),
                Some(&claims.attributes),
            ),
            Principal::Operator { name } => ("operator", "", name.as_str(), None),
            // People never request access (the server refuses them before policy); if one
            // ever reached here it would carry no workload claims.
            Principal::Human(h) => ("human", h.issuer.as_str(), h.name.as_str(), None),
        };
        let mut attributes = Vec::new();
        if let Some(claims) = claims {
            for (k, v) in claims {
                claim_tags(k, v, &mut attributes);
            }
        }
        let labels = identity.labels.iter().map(|(k, v)| format!("{k}={v}"));
        let attrs = HashMap::from([
            ("id".to_string(), string(&identity.id)),
            ("kind".to_string(), string(kind_str(identity.kind))),
            ("owner".to_string(), string(&identity.owner)),
            (
                "environment".to_string(),
                string(identity.labels.get("env").map(String::as_str).unwrap_or("")),
            ),
            ("method".to_string(), string(method)),
            ("issuer".to_string(), string(issuer)),
            ("subject".to_string(), string(subject)),
            ("labels".to_string(), string_set(labels)),
            ("attributes".to_string(), string_set(attributes)),
        ]);
        Entity::new(id, attrs, HashSet::new()).map_err(internal)
    }

    fn context(
        &self,
        r: &PolicyRequest<'_>,
        extra: &RequestContextFields,
        approvals: &GivenApprovals,
    ) -> Result<Context, PolicyError> {
        Context::from_pairs(self.context_pairs(r, extra, approvals)?).map_err(internal)
    }

    /// The `RequestContext` record's fields (`act_for` adds `subject`).
    fn context_pairs(
        &self,
        r: &PolicyRequest<'_>,
        extra: &RequestContextFields,
        approvals: &GivenApprovals,
    ) -> Result<Vec<(String, RestrictedExpression)>, PolicyError> {
        let local = r.now.to_offset(self.utc_offset);
        let clock = RestrictedExpression::new_record([
            ("timestamp".to_string(), long(r.now.unix_timestamp())),
            ("weekday".to_string(), string(weekday(local.weekday()))),
            ("hour".to_string(), long(i64::from(local.hour()))),
        ])
        .map_err(internal)?;
        let approvals = RestrictedExpression::new_record([
            ("count".to_string(), long(approvals.approvers.len() as i64)),
            (
                "approvers".to_string(),
                string_set(approvals.approvers.iter().cloned()),
            ),
        ])
        .map_err(internal)?;
        let ttl = i64::try_from(r.requested_ttl.as_secs()).unwrap_or(i64::MAX);
        let mut pairs = vec![
            ("purpose".to_string(), string(r.purpose)),
            ("task_id".to_string(), string(r.task)),
            ("requested_ttl_seconds".to_string(), long(ttl)),
            ("now".to_string(), clock),
            (
                "break_glass".to_string(),
                RestrictedExpression::new_bool(extra.break_glass),
            ),
            ("approvals".to_string(), approvals),
            ("environment".to_string(), string(&extra.environment)),
            (
                "actors".to_string(),
                string_set(extra.actors.iter().cloned()),
            ),
        ];
        if let Some(ip) = &extra.source_ip {
            pairs.push(("source_ip".to_string(), string(ip)));
        }
        Ok(pairs)
    }
}

impl PolicyEngine for CedarEngine {
    fn decide(&self, request: &PolicyRequest<'_>) -> Result<Decision, PolicyError> {
        self.decide_with_approvals(request, &GivenApprovals::default())
    }

    fn decide_approved(
        &self,
        request: &PolicyRequest<'_>,
        approvers: &[String],
    ) -> Result<Decision, PolicyError> {
        self.decide_with_approvals(
            request,
            &GivenApprovals {
                approvers: approvers.to_vec(),
            },
        )
    }

    fn decide_delegation(&self, request: &DelegationRequest<'_>) -> Result<Decision, PolicyError> {
        CedarEngine::decide_delegation(self, request)
    }
}

/// The caller-supplied part of the context, checked.
#[derive(Debug, Default)]
struct RequestContextFields {
    break_glass: bool,
    environment: String,
    source_ip: Option<String>,
    actors: Vec<String>,
}

impl RequestContextFields {
    fn parse(value: &serde_json::Value) -> Result<Self, PolicyError> {
        let bad = |field: &str, reason: String| PolicyError::BadRequest {
            field: field.to_string(),
            reason,
        };
        let mut out = RequestContextFields::default();
        let object = match value {
            serde_json::Value::Null => return Ok(out),
            serde_json::Value::Object(o) => o,
            other => {
                return Err(bad(
                    "context",
                    format!("must be a JSON object, got {}", json_type(other)),
                ))
            }
        };
        for (key, v) in object {
            let field = format!("context.{key}");
            match key.as_str() {
                "break_glass" => {
                    out.break_glass = v.as_bool().ok_or_else(|| {
                        bad(&field, format!("must be a boolean, got {}", json_type(v)))
                    })?
                }
                "environment" => {
                    let s = v.as_str().ok_or_else(|| {
                        bad(&field, format!("must be a string, got {}", json_type(v)))
                    })?;
                    check_text(&field, s)?;
                    out.environment = s.to_string();
                }
                "source_ip" => {
                    let s = v.as_str().ok_or_else(|| {
                        bad(&field, format!("must be a string, got {}", json_type(v)))
                    })?;
                    let ip = IpAddr::from_str(s).map_err(|_| {
                        bad(&field, format!("{s:?} is not an IPv4 or IPv6 address"))
                    })?;
                    // Canonical text, so policies compare one spelling per address.
                    out.source_ip = Some(ip.to_string());
                }
                "actors" => {
                    let items = v.as_array().ok_or_else(|| {
                        bad(&field, format!("must be an array, got {}", json_type(v)))
                    })?;
                    for item in items {
                        let s = item.as_str().ok_or_else(|| {
                            bad(&field, "must be an array of identity names".to_string())
                        })?;
                        check_text(&field, s)?;
                        out.actors.push(s.to_string());
                    }
                }
                _ => {
                    return Err(bad(
                        &field,
                        format!(
                            "unknown context key; accepted keys: {}",
                            CONTEXT_KEYS.join(", ")
                        ),
                    ))
                }
            }
        }
        Ok(out)
    }
}

fn check_text(field: &str, value: &str) -> Result<(), PolicyError> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(PolicyError::BadRequest {
            field: field.to_string(),
            reason: format!(
                "is {} bytes; at most {MAX_TEXT_BYTES} are accepted",
                value.len()
            ),
        });
    }
    Ok(())
}

fn target_entity(
    id: EntityUid,
    target: &Target,
    parents: HashSet<EntityUid>,
) -> Result<Entity, PolicyError> {
    let setting = |key: &str| -> Result<&str, PolicyError> {
        match target.settings.get(key) {
            None | Some(serde_json::Value::Null) => Ok(""),
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(other) => Err(PolicyError::Internal(format!(
                "target {:?}: setting {key:?} must be a string, got {}",
                target.name,
                json_type(other)
            ))),
        }
    };
    let attrs = HashMap::from([
        ("name".to_string(), string(&target.name)),
        ("kind".to_string(), string(&target.kind)),
        ("environment".to_string(), string(setting("environment")?)),
        ("sensitivity".to_string(), string(setting("sensitivity")?)),
        ("owner".to_string(), string(setting("owner")?)),
        (
            "actions".to_string(),
            string_set(target.actions.iter().cloned()),
        ),
    ]);
    Entity::new(id, attrs, parents).map_err(internal)
}

/// The target's groups from `settings.groups` (an array of names).
fn target_groups(target: &Target) -> Result<Vec<String>, PolicyError> {
    let bad = || {
        PolicyError::Internal(format!(
            "target {:?}: setting \"groups\" must be an array of group names",
            target.name
        ))
    };
    match target.settings.get("groups") {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Claims become "key=value" tags: strings as they are, other scalars as JSON text, one
/// tag per element for arrays, nested objects as compact JSON; nulls are dropped.
fn claim_tags(key: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Null => {}
        serde_json::Value::String(s) => out.push(format!("{key}={s}")),
        serde_json::Value::Array(items) => {
            for item in items {
                if !item.is_array() {
                    claim_tags(key, item, out);
                }
            }
        }
        other => out.push(format!("{key}={other}")),
    }
}

fn uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
}

/// The entity type names, parsed once at load rather than on every request.
struct TypeNames {
    workload: EntityTypeName,
    target: EntityTypeName,
    group: EntityTypeName,
    action: EntityTypeName,
}

impl TypeNames {
    fn new() -> Result<Self, PolicyLoadError> {
        let parse = |name: &str| {
            EntityTypeName::from_str(name).map_err(|e| PolicyLoadError {
                diagnostics: vec![crate::load::LoadDiagnostic {
                    file: "<internal>".into(),
                    line: None,
                    column: None,
                    policy_id: None,
                    message: format!("entity type {name}: {e}"),
                }],
            })
        };
        Ok(TypeNames {
            workload: parse("Workload")?,
            target: parse("Target")?,
            group: parse("TargetGroup")?,
            action: parse("Action")?,
        })
    }
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

fn long(n: i64) -> RestrictedExpression {
    RestrictedExpression::new_long(n)
}

fn string_set(items: impl IntoIterator<Item = String>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.into_iter().map(RestrictedExpression::new_string))
}

fn kind_str(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Service => "service",
        IdentityKind::Pipeline => "pipeline",
        IdentityKind::Agent => "agent",
        IdentityKind::Other => "other",
    }
}

fn weekday(d: Weekday) -> &'static str {
    match d {
        Weekday::Monday => "mon",
        Weekday::Tuesday => "tue",
        Weekday::Wednesday => "wed",
        Weekday::Thursday => "thu",
        Weekday::Friday => "fri",
        Weekday::Saturday => "sat",
        Weekday::Sunday => "sun",
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn internal(e: impl std::fmt::Display) -> PolicyError {
    PolicyError::Internal(e.to_string())
}

/// Ttl helper used by the test runner to print caps.
pub(crate) fn ttl_text(t: Option<Ttl>) -> String {
    t.map(|t| t.to_string()).unwrap_or_else(|| "none".into())
}
