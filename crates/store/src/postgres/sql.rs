//! The SQL of every request path of the PostgreSQL backend, as constants.
//!
//! Multi-row writes bind one array per column and `UNNEST` them: one statement and a fixed
//! number of parameters however many rows. Every state transition names the state it
//! expects in its `WHERE` clause, so a row another replica moved meanwhile is not touched
//! twice; work queues (`expire_due`, `claim_revocations`) pick their rows with
//! `FOR UPDATE SKIP LOCKED`, so concurrent replicas take disjoint batches.

/// Lease columns, read by name by [`crate::rows::lease_from_row`].
macro_rules! lease_cols {
    () => {
        "id, grant_id, kind, identity, owner, target, task, issued_at, expires_at, \
         max_expires_at, state, revocation_reason, external, provider_state, \
         revoke_attempts, last_error"
    };
}

macro_rules! grant_cols {
    () => {
        "id, identity, owner, target, action, purpose, task, requested_ttl_s, granted_ttl_s, \
         context, state, revocation_reason, decision, created_at, updated_at"
    };
}

macro_rules! identity_cols {
    () => {
        "id, kind, owner, purpose, expires_at, labels, enabled, created_at"
    };
}

/// Ends every live lease a selector matches in one set-based statement (`$1` the
/// selector's key, `$2` the reason, `$3` now): self-contained leases become `revoked`,
/// external ones `revoking` and due for the revocation worker. The live-state condition is
/// what makes each lease revoked exactly once, also when replicas race: PostgreSQL
/// re-checks it on a row another transaction changed before updating it.
macro_rules! revoke_sql {
    ($selector:literal) => {
        concat!(
            "UPDATE leases SET ",
            "state = CASE WHEN external THEN 'revoking' ELSE 'revoked' END, ",
            "revocation_reason = $2, ",
            "next_attempt_at = CASE WHEN external THEN $3::bigint END ",
            "WHERE ",
            $selector,
            " AND state IN ('active', 'creating') ",
            "RETURNING id, grant_id, identity, owner, target, task, external"
        )
    };
}

pub(crate) const GRANT_COLS: &str = grant_cols!();
pub(crate) const LEASE_COLS: &str = lease_cols!();

pub(crate) const INSERT_IDENTITY: &str = "INSERT INTO identities \
     (id, kind, owner, purpose, expires_at, labels, enabled, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(crate) const GET_IDENTITY: &str = concat!(
    "SELECT ",
    identity_cols!(),
    " FROM identities WHERE id = $1"
);
pub(crate) const LIST_IDENTITIES: &str =
    concat!("SELECT ", identity_cols!(), " FROM identities ORDER BY id");
pub(crate) const ENABLE_IDENTITY: &str = concat!(
    "UPDATE identities SET enabled = TRUE WHERE id = $1 RETURNING ",
    identity_cols!()
);
pub(crate) const DISABLE_IDENTITY: &str =
    "UPDATE identities SET enabled = FALSE WHERE id = $1 RETURNING owner";
/// Which of the identities in `$1` are disabled.
pub(crate) const DISABLED_AMONG: &str =
    "SELECT id FROM identities WHERE NOT enabled AND id = ANY($1::text[])";

pub(crate) const INSERT_TARGET: &str = "INSERT INTO targets \
     (name, kind, actions, default_ttl_s, max_ttl_s, allow, settings, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(crate) const GET_TARGET: &str = "SELECT name, kind, actions, default_ttl_s, max_ttl_s, \
     allow, settings, created_at FROM targets WHERE name = $1";
pub(crate) const LIST_TARGETS: &str = "SELECT name, kind, actions, default_ttl_s, max_ttl_s, \
     allow, settings, created_at FROM targets ORDER BY name";
pub(crate) const TARGET_EXISTS: &str = "SELECT 1::bigint FROM targets WHERE name = $1";
pub(crate) const PUT_TARGET_SECRET: &str =
    "INSERT INTO target_secrets (target, sealed, updated_at) VALUES ($1, $2, $3) \
     ON CONFLICT (target) DO UPDATE SET sealed = EXCLUDED.sealed, updated_at = EXCLUDED.updated_at";
pub(crate) const GET_TARGET_SECRET: &str = "SELECT sealed FROM target_secrets WHERE target = $1";

/// Root rotation: the next admin secret is recorded before the target changes; it is
/// recorded at most once per target (a second rotation waits for the first to resolve).
pub(crate) const BEGIN_ROOT_ROTATION: &str =
    "INSERT INTO target_rotations (target, sealed, started_at) VALUES ($1, $2, $3) \
     ON CONFLICT (target) DO NOTHING";
/// Ends the rotation that recorded exactly this secret, so one resolved elsewhere (and
/// any later one) is left alone.
pub(crate) const END_ROOT_ROTATION: &str =
    "DELETE FROM target_rotations WHERE target = $1 AND sealed = $2";
pub(crate) const LIST_ROOT_ROTATIONS: &str =
    "SELECT target, sealed, started_at FROM target_rotations ORDER BY target";

pub(crate) const GET_GRANT: &str = concat!("SELECT ", grant_cols!(), " FROM grants WHERE id = $1");
/// Inserts grants, one array per column.
pub(crate) const INSERT_GRANTS_UNNEST: &str = "INSERT INTO grants \
     (id, identity, owner, target, action, purpose, task, requested_ttl_s, granted_ttl_s, \
      context, state, revocation_reason, decision, created_at, updated_at) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
       $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], \
       $12::text[], $13::text[], $14::bigint[], $15::bigint[])";

/// Inserts leases, one array per column.
pub(crate) const INSERT_LEASES_UNNEST: &str = "INSERT INTO leases \
     (id, grant_id, kind, identity, owner, target, task, issued_at, expires_at, \
      max_expires_at, state, revocation_reason, external, provider_state, revoke_attempts, \
      last_error, next_attempt_at) \
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
       $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], \
       $12::text[], $13::boolean[], $14::text[], $15::bigint[], $16::text[], $17::bigint[])";
pub(crate) const GET_LEASE: &str = concat!("SELECT ", lease_cols!(), " FROM leases WHERE id = $1");
pub(crate) const GET_LEASE_FOR_UPDATE: &str = concat!(
    "SELECT ",
    lease_cols!(),
    " FROM leases WHERE id = $1 FOR UPDATE"
);
pub(crate) const RENEW_LEASE: &str =
    "UPDATE leases SET expires_at = $2 WHERE id = $1 AND state = 'active'";

pub(crate) const REVOKE_BY_LEASE: &str = revoke_sql!("id = $1");
pub(crate) const REVOKE_BY_GRANT: &str = revoke_sql!("grant_id = $1");
pub(crate) const REVOKE_BY_TASK: &str = revoke_sql!("task = $1");
pub(crate) const REVOKE_BY_IDENTITY: &str = revoke_sql!("identity = $1");
/// Follows the identity's *current* owner, not the owner recorded on the grant.
pub(crate) const REVOKE_BY_OWNER: &str =
    revoke_sql!("identity IN (SELECT id FROM identities WHERE owner = $1)");
pub(crate) const REVOKE_BY_TARGET: &str = revoke_sql!("target = $1");
/// `left(…)`, not a range or `LIKE`: the database's collation need not order names
/// bytewise, and a prefix may hold `_`. The live-state condition keeps it to live leases.
pub(crate) const REVOKE_BY_TARGET_PREFIX: &str = revoke_sql!("left(target, length($1)) = $1");
/// `$1` is the JSON array `[identity, task]`: one key, like every other selector's.
pub(crate) const REVOKE_BY_IDENTITY_TASK: &str =
    revoke_sql!("identity = ($1::jsonb ->> 0) AND task = ($1::jsonb ->> 1)");

/// Ends the `$2` earliest-expiring active leases due at `$1`. Rows another transaction
/// holds are skipped rather than waited for, and the outer `state = 'active'` re-check
/// means a lease is expired at most once whoever else is expiring.
pub(crate) const EXPIRE_DUE: &str = concat!(
    "WITH due AS (SELECT id FROM leases WHERE state = 'active' AND expires_at <= $1 ",
    "ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED) ",
    "UPDATE leases SET ",
    "state = CASE WHEN external THEN 'revoking' ELSE 'expired' END, ",
    "revocation_reason = 'ttl', ",
    "next_attempt_at = CASE WHEN external THEN $1::bigint END ",
    "WHERE id IN (SELECT id FROM due) AND state = 'active' RETURNING ",
    lease_cols!()
);
pub(crate) const NEXT_EXPIRY: &str = "SELECT MIN(expires_at) FROM leases WHERE state = 'active'";

/// The grant updates that follow lease revocation/expiry; `$3` the grant ids. Only
/// `issued` grants move, the only state the grant machine lets become revoked/expired.
pub(crate) const REVOKE_GRANTS: &str = "UPDATE grants SET state = 'revoked', \
     revocation_reason = $1, updated_at = $2 WHERE id = ANY($3::text[]) AND state = 'issued'";
pub(crate) const EXPIRE_GRANTS: &str = "UPDATE grants SET state = 'expired', \
     revocation_reason = $1, updated_at = $2 WHERE id = ANY($3::text[]) AND state = 'issued'";

/// Appends sealed entries, one array per column.
pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit \
     (seq, at_ms, kind, identity, task, grant_id, body, hash) \
     SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
       $6::text[], $7::text[], $8::text[])";
pub(crate) const AUDIT_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
/// The serialisation point of every audited write, across all replicas.
pub(crate) const LOCK_AUDIT_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE";
pub(crate) const SET_AUDIT_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";
/// Only what the verifier needs, in chain order: the columns copied out of the body come
/// along so that it can hold them to the body.
pub(crate) const VERIFY_ROWS: &str = "SELECT seq, body, hash, at_ms, kind, identity, task, \
     grant_id FROM audit ORDER BY seq";

pub(crate) const RETIRE_ACTIVE_KEY: &str = "UPDATE signing_keys SET retired_at = $1, \
     publish_until = $2 WHERE retired_at IS NULL";
pub(crate) const INSERT_SIGNING_KEY: &str = "INSERT INTO signing_keys \
     (kid, alg, public_jwk, private_sealed, created_at, retired_at, publish_until) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub(crate) const INSERT_AUDIT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints \
     (seq, kid, hash, at_ms, jws) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq, kid) DO NOTHING";
pub(crate) const LATEST_AUDIT_CHECKPOINT: &str = "SELECT seq, kid, hash, at_ms, jws \
     FROM audit_checkpoints ORDER BY seq DESC, at_ms DESC LIMIT 1";
pub(crate) const LIST_SIGNING_KEYS: &str = "SELECT kid, alg, public_jwk, private_sealed, \
     created_at, retired_at, publish_until FROM signing_keys ORDER BY created_at, kid";

macro_rules! operator_token_cols {
    () => {
        "name, token_sha256, created_at, expires_at, created_by, revoked_at, revoked_by"
    };
}

pub(crate) const INSERT_OPERATOR_TOKEN: &str = "INSERT INTO operator_tokens \
     (name, token_sha256, created_at, expires_at, created_by, revoked_at, revoked_by) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub(crate) const FIND_OPERATOR_TOKEN: &str = concat!(
    "SELECT ",
    operator_token_cols!(),
    " FROM operator_tokens WHERE token_sha256 = $1"
);
pub(crate) const COUNT_OPERATOR_TOKENS: &str = "SELECT COUNT(*) FROM operator_tokens";

pub(crate) const COUNT_ACTIVE: &str = "SELECT COUNT(*) FROM leases WHERE state = 'active'";
pub(crate) const COUNT_REVOKING: &str = "SELECT COUNT(*) FROM leases WHERE state = 'revoking'";

/// `creating` → `active` once the credential exists on the target.
pub(crate) const ACTIVATE_LEASE: &str = concat!(
    "UPDATE leases SET state = 'active', provider_state = $2 ",
    "WHERE id = $1 AND state = 'creating' RETURNING ",
    lease_cols!()
);
pub(crate) const ISSUE_GRANT: &str =
    "UPDATE grants SET state = 'issued', updated_at = $2 WHERE id = $1 AND state = 'approved'";

/// `creating` → `revoked` (nothing left on the target, `$2` true) or `revoking`.
pub(crate) const ABANDON_LEASE: &str = concat!(
    "UPDATE leases SET ",
    "state = CASE WHEN $2::boolean THEN 'revoked' ELSE 'revoking' END, ",
    "revocation_reason = 'task_failed', last_error = $3, ",
    "next_attempt_at = CASE WHEN $2::boolean THEN NULL ELSE $4::bigint END ",
    "WHERE id = $1 AND state = 'creating' RETURNING ",
    lease_cols!()
);
pub(crate) const FAIL_GRANT: &str =
    "UPDATE grants SET state = 'failed', updated_at = $2 WHERE id = $1 AND state = 'approved'";

/// Claims due revocations by pushing their next attempt to `$2`: a lease on the work item,
/// so a replica that dies leaves them to come due again. `SKIP LOCKED` gives concurrent
/// claimers disjoint sets without waiting on each other.
pub(crate) const CLAIM_REVOCATIONS: &str = concat!(
    "WITH due AS (SELECT id FROM leases WHERE state = 'revoking' AND next_attempt_at <= $1 ",
    "ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) ",
    "UPDATE leases SET next_attempt_at = $2 ",
    "WHERE id IN (SELECT id FROM due) AND state = 'revoking' RETURNING ",
    lease_cols!()
);
pub(crate) const COMPLETE_REVOCATION: &str = concat!(
    "UPDATE leases SET ",
    "state = CASE WHEN revocation_reason = 'ttl' THEN 'expired' ELSE 'revoked' END, ",
    "last_error = NULL, next_attempt_at = NULL ",
    "WHERE id = $1 AND state = 'revoking' RETURNING ",
    lease_cols!()
);
pub(crate) const REVOCATION_FAILED: &str = concat!(
    "UPDATE leases SET revoke_attempts = revoke_attempts + 1, last_error = $2, ",
    "next_attempt_at = $3 WHERE id = $1 AND state = 'revoking' RETURNING ",
    lease_cols!()
);
pub(crate) const LIVE_PROVIDER_STATES: &str = "SELECT provider_state FROM leases \
     WHERE target = $1 AND state IN ('creating', 'active', 'revoking')";
/// Reconciliation: which of the names in `$2` leases of target `$1` recorded, and whether
/// one of those leases is live. Walks the target's leases (its history included): run by
/// reconciliation only, never on a request path.
pub(crate) const RECORDED_NAMES: &str = "SELECT provider_state::jsonb ->> $3, \
     bool_or(state IN ('creating', 'active', 'revoking')) \
     FROM leases WHERE target = $1 AND provider_state::jsonb ->> $3 = ANY($2) \
     GROUP BY 1";

// --- operator token lifecycle; changing and deleting identities and targets --------------

pub(crate) const LIST_OPERATOR_TOKENS: &str = concat!(
    "SELECT ",
    operator_token_cols!(),
    " FROM operator_tokens ORDER BY created_at, name"
);
/// The one unrevoked token of a name (the partial unique index allows no second).
pub(crate) const UNREVOKED_OPERATOR_TOKEN: &str = concat!(
    "SELECT ",
    operator_token_cols!(),
    " FROM operator_tokens WHERE name = $1 AND revoked_at IS NULL"
);
pub(crate) const REVOKE_OPERATOR_TOKEN: &str = "UPDATE operator_tokens \
     SET revoked_at = $2, revoked_by = $3 WHERE name = $1 AND revoked_at IS NULL";
/// Tokens that still authenticate at `$1`.
pub(crate) const COUNT_LIVE_OPERATOR_TOKENS: &str = "SELECT COUNT(*) FROM operator_tokens \
     WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)";

pub(crate) const UPDATE_IDENTITY: &str = concat!(
    "UPDATE identities SET kind = $2, owner = $3, purpose = $4, expires_at = $5, labels = $6 ",
    "WHERE id = $1 RETURNING ",
    identity_cols!()
);
pub(crate) const DELETE_IDENTITY: &str = "DELETE FROM identities WHERE id = $1";
pub(crate) const UPDATE_TARGET: &str = "UPDATE targets SET actions = $2, default_ttl_s = $3, \
     max_ttl_s = $4, allow = $5, settings = $6 WHERE name = $1 \
     RETURNING name, kind, actions, default_ttl_s, max_ttl_s, allow, settings, created_at";
pub(crate) const DELETE_TARGET_SECRET: &str = "DELETE FROM target_secrets WHERE target = $1";
pub(crate) const DELETE_TARGET: &str = "DELETE FROM targets WHERE name = $1";
pub(crate) const ROOT_ROTATION_PENDING: &str =
    "SELECT 1::bigint FROM target_rotations WHERE target = $1";
pub(crate) const COUNT_LIVE_LEASES_OF_IDENTITY: &str = "SELECT COUNT(*) FROM leases \
     WHERE identity = $1 AND state IN ('creating', 'active', 'revoking')";
pub(crate) const COUNT_LIVE_LEASES_OF_TARGET: &str = "SELECT COUNT(*) FROM leases \
     WHERE target = $1 AND state IN ('creating', 'active', 'revoking')";

/// Filterable lists are built from fixed fragments; values are always bound, never
/// formatted into the text. Binds are the filter values in order, then the limit.
#[derive(Clone, Debug)]
pub(crate) struct ListQuery {
    pub(crate) sql: String,
    pub(crate) binds: Vec<String>,
}

impl ListQuery {
    fn new(select: String, filters: &[(&str, Option<&str>)]) -> ListQuery {
        let mut q = ListQuery {
            sql: select,
            binds: Vec::new(),
        };
        let mut conds = Vec::new();
        for (col, val) in filters {
            if let Some(v) = val {
                q.binds.push(v.to_string());
                conds.push(format!("{col} = ${}", q.binds.len()));
            }
        }
        if !conds.is_empty() {
            q.sql.push_str(" WHERE ");
            q.sql.push_str(&conds.join(" AND "));
        }
        q
    }

    /// The placeholder number of the next bind.
    fn next(&self) -> usize {
        self.binds.len() + 1
    }
}

pub(crate) fn list_grants(
    identity: Option<&str>,
    task: Option<&str>,
    state: Option<&str>,
) -> ListQuery {
    let mut q = ListQuery::new(
        format!("SELECT {GRANT_COLS} FROM grants"),
        &[("identity", identity), ("task", task), ("state", state)],
    );
    let n = q.next();
    q.sql
        .push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${n}"));
    q
}

#[cfg(test)]
pub(crate) fn list_leases(
    identity: Option<&str>,
    task: Option<&str>,
    grant_id: Option<&str>,
    state: Option<&str>,
) -> ListQuery {
    list_leases_of(identity, task, grant_id, state, None)
}

/// Leases, newest first, by any of the filters.
pub(crate) fn list_leases_of(
    identity: Option<&str>,
    task: Option<&str>,
    grant_id: Option<&str>,
    state: Option<&str>,
    target: Option<&str>,
) -> ListQuery {
    let mut q = ListQuery::new(
        format!("SELECT {LEASE_COLS} FROM leases"),
        &[
            ("identity", identity),
            ("task", task),
            ("grant_id", grant_id),
            ("state", state),
            ("target", target),
        ],
    );
    let n = q.next();
    q.sql
        .push_str(&format!(" ORDER BY issued_at DESC, id DESC LIMIT ${n}"));
    q
}

/// Audit listing: binds are the filters in order, then `after_seq`, then the limit.
pub(crate) fn list_audit(
    identity: Option<&str>,
    task: Option<&str>,
    grant_id: Option<&str>,
) -> ListQuery {
    let mut q = ListQuery::new(
        "SELECT seq, body, hash FROM audit".to_string(),
        &[
            ("identity", identity),
            ("task", task),
            ("grant_id", grant_id),
        ],
    );
    let n = q.next();
    q.sql.push_str(if q.binds.is_empty() {
        " WHERE "
    } else {
        " AND "
    });
    q.sql
        .push_str(&format!("seq > ${n} ORDER BY seq LIMIT ${}", n + 1));
    q
}

// --- tasks ------------------------------------------------------------------------------

macro_rules! task_cols {
    () => {
        "id, identity, owner, purpose, parent, state, deadline, created_at, ended_at"
    };
}
pub(crate) const TASK_COLS: &str = task_cols!();
pub(crate) const INSERT_TASK: &str = concat!(
    "INSERT INTO tasks (",
    task_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);
pub(crate) const GET_TASK: &str = concat!("SELECT ", task_cols!(), " FROM tasks WHERE id = $1");
/// Locks the row so that concurrent ends of one task serialise.
pub(crate) const GET_TASK_FOR_UPDATE: &str = concat!(
    "SELECT ",
    task_cols!(),
    " FROM tasks WHERE id = $1 FOR UPDATE"
);
/// Ends the task `$1` and every open task below it; the ids it ended.
pub(crate) const END_TASK_TREE: &str = "WITH RECURSIVE tree(id) AS ( \
       SELECT id FROM tasks WHERE id = $1 \
       UNION SELECT t.id FROM tasks t JOIN tree ON t.parent = tree.id) \
     UPDATE tasks SET state = $2, ended_at = $3 \
     WHERE state = 'open' AND id IN (SELECT id FROM tree) RETURNING id";
/// `SKIP LOCKED`: replicas sweeping at once take different tasks.
pub(crate) const DUE_TASKS: &str = "SELECT id FROM tasks \
     WHERE state = 'open' AND deadline <= $1 ORDER BY deadline LIMIT $2 FOR UPDATE SKIP LOCKED";
pub(crate) const NEXT_TASK_DEADLINE: &str = "SELECT MIN(deadline) FROM tasks WHERE state = 'open'";

/// Tasks, newest first, by identity and/or state.
pub(crate) fn list_tasks(identity: Option<&str>, state: Option<&str>) -> ListQuery {
    let mut q = ListQuery::new(
        format!("SELECT {TASK_COLS} FROM tasks"),
        &[("identity", identity), ("state", state)],
    );
    let n = q.next();
    q.sql
        .push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${n}"));
    q
}

// --- approvals ------------------------------------------------------------------------

pub(crate) const INSERT_APPROVAL: &str = "INSERT INTO approvals (grant_id, state, expires_at, created_at, body) VALUES ($1, $2, $3, $4, $5)";
pub(crate) const GET_APPROVAL: &str = "SELECT body FROM approvals WHERE grant_id = $1";
/// Locks the row so that concurrent votes on one request serialise across replicas.
pub(crate) const GET_APPROVAL_FOR_UPDATE: &str =
    "SELECT body FROM approvals WHERE grant_id = $1 FOR UPDATE";
pub(crate) const UPDATE_APPROVAL: &str =
    "UPDATE approvals SET state = $2, expires_at = $3, body = $4 WHERE grant_id = $1";
/// Oldest first; `$1` a state or NULL for all.
pub(crate) const LIST_APPROVALS: &str = "SELECT body FROM approvals WHERE ($1::text IS NULL OR state = $1) ORDER BY created_at, grant_id LIMIT $2";
/// `SKIP LOCKED`: replicas sweeping at once take disjoint requests.
pub(crate) const DUE_APPROVALS: &str = "SELECT grant_id FROM approvals WHERE state IN ('pending', 'approved') AND expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED";
pub(crate) const SET_GRANT_STATE: &str =
    "UPDATE grants SET state = $3, updated_at = $4 WHERE id = $1 AND state = $2";
// --- webhook cursors ----------------------------------------------------------------------

macro_rules! webhook_cursor_cols {
    () => {
        "name, delivered_seq, attempts, next_attempt_at, last_error, failing_since, \
         claimed_by, claimed_until"
    };
}
pub(crate) const INSERT_WEBHOOK_CURSOR: &str = "INSERT INTO webhook_cursors \
     (name, delivered_seq, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";
/// Free (never claimed or released), lapsed at `$3`, or the holder's own. Every replica's
/// batch holds the chain head lock, so two claims of one cursor never interleave; the
/// condition is what makes the second one see the first.
pub(crate) const CLAIM_WEBHOOK: &str = concat!(
    "UPDATE webhook_cursors SET claimed_by = $2, claimed_until = $4 WHERE name = $1 ",
    "AND (claimed_by = $2 OR claimed_until IS NULL OR claimed_until <= $3) RETURNING ",
    webhook_cursor_cols!()
);
/// Only for a holder whose claim still runs at `$4`, and never backwards.
pub(crate) const ADVANCE_WEBHOOK: &str = "UPDATE webhook_cursors SET delivered_seq = $3, \
     attempts = 0, next_attempt_at = NULL, last_error = NULL, failing_since = NULL, \
     claimed_until = $5 \
     WHERE name = $1 AND claimed_by = $2 AND claimed_until > $4 AND delivered_seq <= $3";
pub(crate) const WEBHOOK_FAILED: &str = "UPDATE webhook_cursors SET attempts = attempts + 1, \
     last_error = $3, next_attempt_at = $4, failing_since = COALESCE(failing_since, $5), \
     claimed_until = $6 WHERE name = $1 AND claimed_by = $2 AND claimed_until > $5";
pub(crate) const RELEASE_WEBHOOK: &str = "UPDATE webhook_cursors \
     SET claimed_by = NULL, claimed_until = NULL WHERE name = $1 AND claimed_by = $2";

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn list_placeholders_are_numbered_in_bind_order() {
        let q = list_audit(Some("a"), None, Some("g"));
        assert_eq!(
            q.sql,
            "SELECT seq, body, hash FROM audit WHERE identity = $1 AND grant_id = $2 \
             AND seq > $3 ORDER BY seq LIMIT $4"
        );
        assert_eq!(q.binds, vec!["a", "g"]);
        let q = list_audit(None, None, None);
        assert!(
            q.sql.ends_with("WHERE seq > $1 ORDER BY seq LIMIT $2"),
            "{}",
            q.sql
        );
        let q = list_leases(None, Some("t"), None, Some("active"));
        assert!(
            q.sql.ends_with(
                "WHERE task = $1 AND state = $2 ORDER BY issued_at DESC, id DESC LIMIT $3"
            ),
            "{}",
            q.sql
        );
    }
}
