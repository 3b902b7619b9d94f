//! Domain records: identities (NHIs), targets, grants and leases, and their state machines.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::duration::Ttl;
use crate::CoreError;

/// What sort of non-human identity this is; policy can treat kinds differently
/// (e.g. agents must always name a task).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    Service,
    Pipeline,
    Agent,
    Other,
}

/// A non-human identity: a service, CI pipeline, batch job or AI agent.
///
/// Every NHI has an accountable owner, a stated purpose and an expiry date, so nothing
/// lives on unowned and forgotten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Identity {
    /// Stable name, e.g. `billing-deployer`.
    pub id: String,
    pub kind: IdentityKind,
    /// The person or team accountable for it.
    pub owner: String,
    pub purpose: String,
    /// After this instant the identity can no longer authenticate or be granted anything.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
    pub labels: BTreeMap<String, String>,
    pub enabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

impl Identity {
    /// Whether the identity may act at `now`: enabled and not past its expiry date.
    pub fn is_usable_at(&self, now: OffsetDateTime) -> Result<(), &'static str> {
        if !self.enabled {
            return Err("identity is disabled");
        }
        if self.expires_at.is_some_and(|e| e <= now) {
            return Err("identity is past its expiry date");
        }
        Ok(())
    }
}

/// A thing access is granted to (`pg-main`, `billing-api`) and how credentials for it are made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Target {
    /// Stable name, e.g. `billing-api`.
    pub name: String,
    /// Credential kind, naming the provider that issues for this target (`token`, …).
    pub kind: String,
    /// Actions (scopes) a grant may ask for, e.g. `["read", "write"]`.
    pub actions: Vec<String>,
    /// TTL used when a request names none.
    pub default_ttl: Ttl,
    /// No grant for this target lives longer, whatever policy allows.
    pub max_ttl: Ttl,
    /// Identities allowed to request it until Cedar policy takes over; `*` allows every
    /// identity. Empty means nobody: default deny.
    pub allow: Vec<String>,
    /// Non-secret provider settings (e.g. the token audience).
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = CoreError;
            fn from_str(s: &str) -> Result<Self, CoreError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(CoreError::invalid(
                        stringify!($name),
                        format!("unknown value {s:?}; expected one of: {}",
                            [$($text),+].join(", ")),
                    )),
                }
            }
        }
    };
}

string_enum! {
    /// Where a grant is in its life.
    GrantState {
        Requested = "requested",
        Denied = "denied",
        PendingApproval = "pending_approval",
        Approved = "approved",
        Issued = "issued",
        /// Approved but the credential could not be created; nothing is outstanding.
        Failed = "failed",
        Revoked = "revoked",
        Expired = "expired",
    }
}

impl GrantState {
    /// The grant state machine. Anything not listed is an illegal transition.
    pub fn can_become(self, to: GrantState) -> bool {
        use GrantState::*;
        matches!(
            (self, to),
            (Requested, Denied)
                | (Requested, PendingApproval)
                | (Requested, Approved)
                | (PendingApproval, Approved)
                | (PendingApproval, Denied)
                // an approval that nobody gave in time
                | (PendingApproval, Expired)
                | (Approved, Issued)
                | (Approved, Failed)
                // approved, but nobody collected the credential in time
                | (Approved, Expired)
                | (Issued, Revoked)
                | (Issued, Expired)
        )
    }

    pub fn transition(self, to: GrantState) -> Result<GrantState, CoreError> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(CoreError::IllegalGrantTransition { from: self, to })
        }
    }

    pub fn is_terminal(self) -> bool {
        !GrantState::ALL.iter().any(|&to| self.can_become(to))
    }
}

string_enum! {
    /// Why a credential ended before or at its TTL.
    RevocationReason {
        TaskComplete = "task_complete",
        TaskFailed = "task_failed",
        /// The task record's deadline passed.
        TaskTimeout = "task_timeout",
        Timeout = "timeout",
        Ttl = "ttl",
        Admin = "admin",
        IdentityDisabled = "identity_disabled",
        /// The holder ended its own token (OAuth 2.0 revocation, RFC 7009).
        HolderRevoked = "holder_revoked",
    }
}

string_enum! {
    /// Where an issued credential is in its life.
    LeaseState {
        /// Write-ahead: recorded before the credential is created on the target, so a crash
        /// between the two is found and cleaned up at start.
        Creating = "creating",
        Active = "active",
        /// Revocation decided; the target still has to confirm (retried until it does).
        Revoking = "revoking",
        Revoked = "revoked",
        Expired = "expired",
    }
}

impl LeaseState {
    pub fn can_become(self, to: LeaseState) -> bool {
        use LeaseState::*;
        matches!(
            (self, to),
            (Creating, Active)
                | (Creating, Revoking)
                | (Creating, Revoked)
                | (Active, Revoking)
                | (Active, Revoked)
                | (Active, Expired)
                | (Revoking, Revoked)
                | (Revoking, Expired)
        )
    }

    pub fn transition(self, to: LeaseState) -> Result<LeaseState, CoreError> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(CoreError::IllegalLeaseTransition { from: self, to })
        }
    }

    pub fn is_terminal(self) -> bool {
        !LeaseState::ALL.iter().any(|&to| self.can_become(to))
    }
}

string_enum! {
    /// Where a task record is in its life. Only `open` tasks take grants; the others are
    /// final and their leases are revoked.
    TaskState {
        Open = "open",
        Completed = "completed",
        Failed = "failed",
        /// The deadline passed before the task ended.
        TimedOut = "timed_out",
    }
}

impl TaskState {
    /// The reason the leases of a task ending in this state are revoked with.
    pub fn revocation_reason(self) -> Option<RevocationReason> {
        match self {
            TaskState::Open => None,
            TaskState::Completed => Some(RevocationReason::TaskComplete),
            TaskState::Failed => Some(RevocationReason::TaskFailed),
            TaskState::TimedOut => Some(RevocationReason::TaskTimeout),
        }
    }
}

/// A unit of work of one identity: every grant naming it (its `task` is the task's id)
/// ends when the task ends, fails or reaches its deadline, and so do its child tasks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub identity: String,
    /// Owner of the identity when the task was opened.
    pub owner: String,
    pub purpose: String,
    /// The task this one is a step of; it ends when its parent ends.
    pub parent: Option<Uuid>,
    pub state: TaskState,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub deadline: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<OffsetDateTime>,
}

string_enum! {
    /// Where a request for approval is.
    ApprovalState {
        /// Waiting for approvers.
        Pending = "pending",
        /// Enough approvers approved; the requester may collect the credential.
        Approved = "approved",
        /// An approver refused it.
        Denied = "denied",
        /// Nobody approved (or collected) it in time (`approval_timeout`).
        Expired = "expired",
        /// The credential was issued; a request is collected once.
        Collected = "collected",
        /// Break-glass access, issued without approval: an approver must review it.
        Review = "review",
        /// An approver reviewed the break-glass access (with a comment).
        Reviewed = "reviewed",
    }
}

/// An approver's answer to a request, with the comment that justifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalVote {
    /// Who: `human:<name>` or `operator:<name>`.
    pub approver: String,
    pub approve: bool,
    pub comment: String,
    /// The approver's groups when they answered (what made them eligible).
    pub groups: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
}

/// A grant waiting for (or past) approval: what it needs, who answered, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalRecord {
    pub grant_id: Uuid,
    pub state: ApprovalState,
    /// What is asked for (as in the grant), so approvers see the request in one place.
    pub identity: String,
    pub target: String,
    pub action: String,
    pub purpose: String,
    pub task: String,
    /// The lifetime that will be granted, from collection on.
    pub ttl: Ttl,
    /// Distinct approvals needed.
    pub needed: u32,
    /// Groups an approver must belong to (any one of them); empty: any approver.
    pub groups: Vec<String>,
    /// Who asked (`identity:<id>` or `operator:<name>`): never an approver of it.
    pub requested_by: String,
    /// The identity's owner: never an approver of it either.
    pub owner: String,
    pub votes: Vec<ApprovalVote>,
    /// SHA-256 (hex) of the request as approved (identity, target, action, purpose, task,
    /// TTL): carried into the credential so a resource server sees what was approved.
    pub request_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub approved_at: Option<OffsetDateTime>,
}

impl ApprovalRecord {
    /// The approvers who approved, in order.
    pub fn approvers(&self) -> Vec<String> {
        self.votes
            .iter()
            .filter(|v| v.approve)
            .map(|v| v.approver.clone())
            .collect()
    }
}

/// A request for access and its outcome: who, to what, why, for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Grant {
    pub id: Uuid,
    pub identity: String,
    /// Owner of the identity when the grant was made.
    pub owner: String,
    pub target: String,
    pub action: String,
    pub purpose: String,
    pub task: String,
    pub requested_ttl: Ttl,
    /// What was granted after policy and target caps; absent when denied.
    pub granted_ttl: Option<Ttl>,
    #[schema(value_type = Object)]
    pub context: serde_json::Value,
    pub state: GrantState,
    pub revocation_reason: Option<RevocationReason>,
    /// Why the decision went the way it did (policies, reasons).
    #[schema(value_type = Object)]
    pub decision: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: OffsetDateTime,
}

/// One issued credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// Also the `jti` of a signed token.
    pub id: Uuid,
    pub grant_id: Uuid,
    /// Credential kind (provider name).
    pub kind: String,
    pub identity: String,
    pub target: String,
    pub task: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// Renewal never extends beyond this.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub max_expires_at: OffsetDateTime,
    pub state: LeaseState,
    pub revocation_reason: Option<RevocationReason>,
    /// True when the credential exists outside Mayfly (a database user) and revocation must
    /// reach the target; false for self-contained tokens, which end when the lease does.
    pub external: bool,
    /// Non-secret data the provider needs to revoke (e.g. the username it created).
    #[schema(value_type = Object)]
    pub provider_state: serde_json::Value,
    pub revoke_attempts: u32,
    pub last_error: Option<String>,
}

/// Selects leases for (bulk) revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseSelector {
    Lease(Uuid),
    Grant(Uuid),
    Task(String),
    Identity(String),
    Owner(String),
    /// Every lease of one target.
    Target(String),
    /// Every lease of the targets whose names start with this text (Vault's `-prefix`).
    TargetPrefix(String),
    /// One identity's leases in one task: what a workload may end by task.
    IdentityTask {
        identity: String,
        task: String,
    },
}

impl fmt::Display for LeaseSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseSelector::Lease(id) => write!(f, "lease {id}"),
            LeaseSelector::Grant(id) => write!(f, "grant {id}"),
            LeaseSelector::Task(t) => write!(f, "task {t}"),
            LeaseSelector::Identity(i) => write!(f, "identity {i}"),
            LeaseSelector::Owner(o) => write!(f, "owner {o}"),
            LeaseSelector::Target(t) => write!(f, "target {t}"),
            LeaseSelector::TargetPrefix(p) => write!(f, "target prefix {p}"),
            LeaseSelector::IdentityTask { identity, task } => {
                write!(f, "identity {identity} task {task}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (from, to) pair is checked against the documented machine, so adding a state
    /// forces a decision about each of its transitions.
    #[test]
    fn grant_transitions_exhaustive() {
        use GrantState::*;
        let legal = [
            (Requested, Denied),
            (Requested, PendingApproval),
            (Requested, Approved),
            (PendingApproval, Approved),
            (PendingApproval, Denied),
            (PendingApproval, Expired),
            (Approved, Issued),
            (Approved, Failed),
            (Approved, Expired),
            (Issued, Revoked),
            (Issued, Expired),
        ];
        let mut checked = 0;
        for &from in GrantState::ALL {
            for &to in GrantState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                match from.transition(to) {
                    Ok(s) => {
                        assert!(expected);
                        assert_eq!(s, to);
                    }
                    Err(e) => {
                        assert!(!expected);
                        assert_eq!(e, CoreError::IllegalGrantTransition { from, to });
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 64);
        let terminal: Vec<_> = GrantState::ALL.iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [&Denied, &Failed, &Revoked, &Expired]);
    }

    #[test]
    fn lease_transitions_exhaustive() {
        use LeaseState::*;
        let legal = [
            (Creating, Active),
            (Creating, Revoking),
            (Creating, Revoked),
            (Active, Revoking),
            (Active, Revoked),
            (Active, Expired),
            (Revoking, Revoked),
            (Revoking, Expired),
        ];
        for &from in LeaseState::ALL {
            for &to in LeaseState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                assert_eq!(from.transition(to).is_ok(), expected, "{from} -> {to}");
            }
        }
        let terminal: Vec<_> = LeaseState::ALL.iter().filter(|s| s.is_terminal()).collect();
        assert_eq!(terminal, [&Revoked, &Expired]);
    }

    #[test]
    fn enums_round_trip_through_text() {
        for s in GrantState::ALL {
            assert_eq!(s.as_str().parse::<GrantState>(), Ok(*s));
            assert_eq!(
                serde_json::to_value(s).ok(),
                Some(serde_json::json!(s.as_str()))
            );
        }
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>(), Ok(*r));
        }
        for s in LeaseState::ALL {
            assert_eq!(s.as_str().parse::<LeaseState>(), Ok(*s));
        }
        assert!("nope".parse::<RevocationReason>().is_err());
    }

    #[test]
    fn identity_usability() {
        let now = crate::now();
        let mut id = Identity {
            id: "a".into(),
            kind: IdentityKind::Service,
            owner: "team".into(),
            purpose: "p".into(),
            expires_at: None,
            labels: BTreeMap::new(),
            enabled: true,
            created_at: now,
        };
        assert!(id.is_usable_at(now).is_ok());
        id.expires_at = Some(now);
        assert!(id.is_usable_at(now).is_err());
        id.expires_at = Some(now + time::Duration::hours(1));
        id.enabled = false;
        assert!(id.is_usable_at(now).is_err());
    }
}
