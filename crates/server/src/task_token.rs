//! Task tokens: the signed proof of a task that a workload presents, in the `Txn-Token`
//! header, beside its own credential on every grant of the task.
//!
//! The shape follows OAuth Transaction Tokens (draft-ietf-oauth-transaction-tokens): `txn`
//! is the task id, `sub` the identity, `purp` the purpose, `azd` the authorization context
//! (owner, parent task, deadline) and `rctx` where the request came from. Its `typ` is
//! `txntoken+jwt`, so it is never mistaken for an access token signed by the same key, and
//! its `exp` is the task's deadline. The token proves what the task is; whether it is still
//! open is read from the task record on every use, so ending a task ends its token too.

use mayfly_core::model::Task;
use mayfly_core::{OffsetDateTime, Uuid};
use serde::{Deserialize, Serialize};

use crate::keys::{Keyring, TokenCheckError};

/// The HTTP header a task token travels in (the draft's name).
pub const HEADER: &str = "txn-token";

/// The JOSE `typ` of a task token.
pub const TYPE: &str = "txntoken+jwt";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTokenClaims {
    pub iss: String,
    /// The trust domain the token is good in: the broker itself.
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// The task id.
    pub txn: Uuid,
    /// The identity the task belongs to.
    pub sub: String,
    /// The task's purpose.
    pub purp: String,
    pub azd: AuthorizationContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rctx: Option<RequesterContext>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationContext {
    /// Owner of the identity when the task was opened.
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequesterContext {
    /// The address the task was opened from.
    pub req_ip: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TaskTokenError {
    #[error("is not a task token of this broker ({0})")]
    Invalid(TokenCheckError),
    #[error("was issued by {0:?}, not this broker")]
    WrongIssuer(String),
    #[error("expired at {0} (the task's deadline)")]
    Expired(i64),
}

/// Signs the token of a task just opened.
pub fn issue(
    keys: &Keyring,
    issuer: &str,
    task: &Task,
    peer: Option<std::net::IpAddr>,
) -> Result<String, serde_json::Error> {
    let claims = TaskTokenClaims {
        iss: issuer.to_string(),
        aud: issuer.to_string(),
        iat: task.created_at.unix_timestamp(),
        exp: task.deadline.unix_timestamp(),
        txn: task.id,
        sub: task.identity.clone(),
        purp: task.purpose.clone(),
        azd: AuthorizationContext {
            owner: task.owner.clone(),
            parent: task.parent,
        },
        rctx: peer.map(|ip| RequesterContext {
            req_ip: ip.to_string(),
        }),
    };
    keys.sign_typed(TYPE, &claims)
}

/// The claims of a task token this broker signed, not past its `exp`. That the task is
/// still open and the caller's is the grant's check, against the record.
pub fn check(
    keys: &Keyring,
    issuer: &str,
    token: &str,
    now: OffsetDateTime,
) -> Result<TaskTokenClaims, TaskTokenError> {
    let claims: TaskTokenClaims = keys
        .verify_typed(TYPE, token)
        .map_err(TaskTokenError::Invalid)?;
    if claims.iss != issuer || claims.aud != issuer {
        return Err(TaskTokenError::WrongIssuer(claims.iss));
    }
    if claims.exp <= now.unix_timestamp() {
        return Err(TaskTokenError::Expired(claims.exp));
    }
    Ok(claims)
}
