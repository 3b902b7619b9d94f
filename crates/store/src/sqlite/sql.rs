//! The SQL of every request path, as constants, so the query-plan test checks exactly the
//! text the store runs.

/// Lease columns, in the order [`crate::rows::lease_from_row`] reads them by name.
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

/// The two statements of a revocation: the live leases a selector matches (as one JSON
/// array, see [`RevokeSql`]) and the update that ends them. `?1` is the selector's key.
macro_rules! revoke_sql {
    ($selector:literal) => {
        revoke_sql!(table "leases", $selector)
    };
    // `$table` may name the index to use: `leases INDEXED BY …`.
    (table $table:literal, $selector:literal) => {
        RevokeSql {
            select: concat!(
                "SELECT json_group_array(json_array(",
                "id, grant_id, identity, owner, target, task, external)) ",
                "FROM ",
                $table,
                " WHERE ",
                $selector,
                " AND state IN ('active', 'creating')"
            ),
            update: concat!(
                "UPDATE ",
                $table,
                " SET ",
                "state = CASE WHEN external = 1 THEN 'revoking' ELSE 'revoked' END, ",
                "revocation_reason = ?2, ",
                "next_attempt_at = CASE WHEN external = 1 THEN ?3 END ",
                "WHERE ",
                $selector,
                " AND state IN ('active', 'creating')"
            ),
        }
    };
}

/// Revocation runs as a SELECT of the matching live leases followed by an UPDATE with the
/// same condition, inside the writer's transaction (so both see the same set).
///
/// The SELECT aggregates into a single JSON value because handing rows one at a time
/// from SQLite to async Rust costs several microseconds each, which at 100,000 leases was
/// most of a bulk revocation; `UPDATE … RETURNING` has the same per-row cost. The live
/// state condition is what makes each lease revoked exactly once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RevokeSql {
    pub(crate) select: &'static str,
    pub(crate) update: &'static str,
}

pub(crate) const GRANT_COLS: &str = grant_cols!();
pub(crate) const LEASE_COLS: &str = lease_cols!();

pub(crate) const INSERT_IDENTITY: &str = "INSERT INTO identities \
     (id, kind, owner, purpose, expires_at, labels, enabled, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
pub(crate) const GET_IDENTITY: &str = concat!(
    "SELECT ",
    identity_cols!(),
    " FROM identities WHERE id = ?1"
);
pub(crate) const LIST_IDENTITIES: &str =
    concat!("SELECT ", identity_cols!(), " FROM identities ORDER BY id");
pub(crate) const ENABLE_IDENTITY: &str = concat!(
    "UPDATE identities SET enabled = 1 WHERE id = ?1 RETURNING ",
    identity_cols!()
);
pub(crate) const DISABLE_IDENTITY: &str =
    "UPDATE identities SET enabled = 0 WHERE id = ?1 RETURNING owner";

pub(crate) const INSERT_TARGET: &str = "INSERT INTO targets \
     (name, kind, actions, default_ttl_s, max_ttl_s, allow, settings, created_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
pub(crate) const GET_TARGET: &str = "SELECT name, kind, actions, default_ttl_s, max_ttl_s, \
     allow, settings, created_at FROM targets WHERE name = ?1";
pub(crate) const LIST_TARGETS: &str = "SELECT name, kind, actions, default_ttl_s, max_ttl_s, \
     allow, settings, created_at FROM targets ORDER BY name";

pub(crate) const GET_GRANT: &str = concat!("SELECT ", grant_cols!(), " FROM grants WHERE id = ?1");

/// One grant, one lease: the writer binds each row of a run to these prepared statements
/// (on its own connection a statement costs no hand-off, and a single-row insert needs no
/// statement journal or JSON encoding).
pub(crate) const INSERT_GRANT: &str = "INSERT INTO grants \
     (id, identity, owner, target, action, purpose, task, requested_ttl_s, granted_ttl_s, \
      context, state, revocation_reason, decision, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";
pub(crate) const INSERT_LEASE: &str = "INSERT INTO leases \
     (id, grant_id, kind, identity, owner, target, task, issued_at, expires_at, \
      max_expires_at, state, revocation_reason, external, provider_state, revoke_attempts, \
      last_error, next_attempt_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";
/// Which of the identities in the JSON array `?1` are disabled.
pub(crate) const DISABLED_AMONG: &str = "SELECT json_group_array(id) FROM identities \
     WHERE enabled = 0 AND id IN (SELECT value FROM json_each(?1))";
pub(crate) const GET_LEASE: &str = concat!("SELECT ", lease_cols!(), " FROM leases WHERE id = ?1");
pub(crate) const RENEW_LEASE: &str =
    "UPDATE leases SET expires_at = ?2 WHERE id = ?1 AND state = 'active'";

pub(crate) const REVOKE_BY_LEASE: RevokeSql = revoke_sql!("id = ?1");
pub(crate) const REVOKE_BY_GRANT: RevokeSql = revoke_sql!("grant_id = ?1");
pub(crate) const REVOKE_BY_TASK: RevokeSql = revoke_sql!("task = ?1");
pub(crate) const REVOKE_BY_IDENTITY: RevokeSql = revoke_sql!("identity = ?1");
/// Follows the identity's *current* owner, not the owner recorded on the grant, so that
/// "revoke everything team X is accountable for" means what an operator expects today.
pub(crate) const REVOKE_BY_OWNER: RevokeSql =
    revoke_sql!("identity IN (SELECT id FROM identities WHERE owner = ?1)");
pub(crate) const REVOKE_BY_TARGET: RevokeSql = revoke_sql!("target = ?1");
/// The range finds the prefix in `leases_target_live`: target names are `[a-z0-9._-]`
/// (`validate::name`), all below `~`. The `substr` keeps the match exact whatever the name.
/// The index is forced: without statistics SQLite prefers the equality on `leases_state`,
/// which would visit every live lease of every target.
pub(crate) const REVOKE_BY_TARGET_PREFIX: RevokeSql = revoke_sql!(
    table "leases INDEXED BY leases_target_live",
    "target >= ?1 AND target < (?1 || '~') AND substr(target, 1, length(?1)) = ?1"
);
/// `?1` is the JSON array `[identity, task]`: one key, like every other selector's.
pub(crate) const REVOKE_BY_IDENTITY_TASK: RevokeSql =
    revoke_sql!("identity = json_extract(?1, '$[0]') AND task = json_extract(?1, '$[1]')");

/// Ends the `?2` earliest-expiring active leases due at `?1`. The inner query walks the
/// partial expiry index (forced: without statistics SQLite prefers the equality match on
/// `leases_state`, which would visit every active lease); the outer one updates by rowid.
pub(crate) const EXPIRE_DUE: &str = concat!(
    "UPDATE leases SET ",
    "state = CASE WHEN external = 1 THEN 'revoking' ELSE 'expired' END, ",
    "revocation_reason = 'ttl', ",
    "next_attempt_at = CASE WHEN external = 1 THEN ?1 END ",
    "WHERE rowid IN (",
    "SELECT rowid FROM leases INDEXED BY leases_active_expiry ",
    "WHERE state = 'active' AND expires_at <= ?1 ",
    "ORDER BY expires_at LIMIT ?2) RETURNING ",
    lease_cols!()
);

pub(crate) const NEXT_EXPIRY: &str =
    "SELECT MIN(expires_at) FROM leases INDEXED BY leases_active_expiry WHERE state = 'active'";

/// The grant updates that follow lease revocation/expiry; `?3` is a JSON array of grant
/// ids. Only `issued` grants move, the only state the grant machine lets become
/// revoked/expired from here. The unary `+` keeps SQLite from choosing `grants_state`
/// (every issued grant) over the key lookups.
pub(crate) const REVOKE_GRANTS: &str = "UPDATE grants SET state = 'revoked', \
     revocation_reason = ?1, updated_at = ?2 \
     WHERE +state = 'issued' AND id IN (SELECT value FROM json_each(?3))";
pub(crate) const EXPIRE_GRANTS: &str = "UPDATE grants SET state = 'expired', \
     revocation_reason = ?1, updated_at = ?2 \
     WHERE +state = 'issued' AND id IN (SELECT value FROM json_each(?3))";

/// Appends sealed entries passed as one JSON array of
/// `[seq, at_ms, kind, identity, task, grant_id, body, hash]` rows: one statement and one
/// parameter however many entries, parsed by SQLite's C JSON reader.
pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit \
     (seq, at_ms, kind, identity, task, grant_id, body, hash) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
            value ->> 6, value ->> 7 \
     FROM json_each(?1)";
pub(crate) const AUDIT_HEAD: &str = "SELECT seq, hash FROM audit_head WHERE id = 1";
pub(crate) const SET_AUDIT_HEAD: &str = "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1";
/// One page of the chain for the verifier: row count, last seq, and the rows packed into
/// one blob as `seq,at_ms,` then the byte lengths of hash, kind, identity, task, grant_id
/// and body each followed by a comma (-1 for NULL), then those six values. Lengths, not
/// separators, so any content, even a tampered one, splits exactly. One value per page
/// instead of a row hand-off per entry is what lets a walk of millions of entries run at
/// hashing speed. `?1` is the last seq of the previous page, `?2` the page size.
///
/// The columns copied out of the body come along so that the verifier can hold them to
/// it: a rewritten `task` would otherwise hide an entry from filtered listings. The body
/// goes last because each `||` copies what it has so far; `octet_length` measures without
/// the copy `length(CAST(… AS BLOB))` makes. `CAST(at_ms AS INTEGER)` turns whatever a
/// tamperer stored there into a number that cannot match, not a page that cannot be read.
///
/// The rows are concatenated in the order the subquery yields them (seq order: a rowid
/// range scan); `group_concat(… ORDER BY seq)` would say so explicitly but makes SQLite
/// sort every page again. Were the order ever different, verification would report a
/// break, never pass a broken chain.
pub(crate) const VERIFY_PAGE: &str = "SELECT count(*), max(seq), CAST(group_concat(\
     seq || ',' || CAST(at_ms AS INTEGER) || ',' || octet_length(hash) || ',' \
     || octet_length(kind) || ',' || ifnull(octet_length(identity), -1) || ',' \
     || ifnull(octet_length(task), -1) || ',' || ifnull(octet_length(grant_id), -1) || ',' \
     || octet_length(body) || ',' \
     || hash || kind || ifnull(identity, '') || ifnull(task, '') || ifnull(grant_id, '') \
     || body, '') AS BLOB) \
     FROM (SELECT seq, at_ms, kind, identity, task, grant_id, hash, body FROM audit \
     WHERE seq > ?1 ORDER BY seq LIMIT ?2)";

/// Memory-mapped reads for a verification walk (1 GiB of the file at most), and back.
pub(crate) const MMAP_FOR_VERIFY: &str = "PRAGMA mmap_size = 1073741824";
pub(crate) const MMAP_OFF: &str = "PRAGMA mmap_size = 0";

pub(crate) const RETIRE_ACTIVE_KEY: &str = "UPDATE signing_keys SET retired_at = ?1, \
     publish_until = ?2 WHERE retired_at IS NULL";
pub(crate) const INSERT_SIGNING_KEY: &str = "INSERT INTO signing_keys \
     (kid, alg, public_jwk, private_sealed, created_at, retired_at, publish_until) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
pub(crate) const INSERT_AUDIT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints \
     (seq, kid, hash, at_ms, jws) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (seq, kid) DO NOTHING";
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
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
pub(crate) const FIND_OPERATOR_TOKEN: &str = concat!(
    "SELECT ",
    operator_token_cols!(),
    " FROM operator_tokens WHERE token_sha256 = ?1"
);
pub(crate) const COUNT_OPERATOR_TOKENS: &str = "SELECT COUNT(*) FROM operator_tokens";

/// The partial expiry index holds exactly the active leases: the smallest index to count.
pub(crate) const COUNT_ACTIVE: &str =
    "SELECT COUNT(*) FROM leases INDEXED BY leases_active_expiry WHERE state = 'active'";
pub(crate) const COUNT_REVOKING: &str = "SELECT COUNT(*) FROM leases WHERE state = 'revoking'";

/// Filterable lists are built from fixed fragments; values are always bound, never
/// formatted into the text.
#[derive(Clone, Debug)]
pub(crate) struct ListQuery {
    pub(crate) sql: String,
    pub(crate) binds: Vec<String>,
}

pub(crate) fn list_grants(
    identity: Option<&str>,
    task: Option<&str>,
    state: Option<&str>,
) -> ListQuery {
    let mut q = ListQuery {
        sql: format!("SELECT {GRANT_COLS} FROM grants"),
        binds: Vec::new(),
    };
    let mut conds = Vec::new();
    // With a narrower filter present, `+state` keeps the planner off `grants_state`,
    // whose ordered walk over every grant in that state it would otherwise prefer.
    let state_col = if identity.is_some() || task.is_some() {
        "+state"
    } else {
        "state"
    };
    for (col, val) in [("identity", identity), ("task", task), (state_col, state)] {
        if let Some(v) = val {
            conds.push(format!("{col} = ?"));
            q.binds.push(v.to_string());
        }
    }
    push_where(&mut q.sql, &conds);
    q.sql
        .push_str(" ORDER BY created_at DESC, rowid DESC LIMIT ?");
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

/// Leases, newest first, by any of the filters (`leases_target_live` serves target and state).
pub(crate) fn list_leases_of(
    identity: Option<&str>,
    task: Option<&str>,
    grant_id: Option<&str>,
    state: Option<&str>,
    target: Option<&str>,
) -> ListQuery {
    let mut q = ListQuery {
        sql: format!("SELECT {LEASE_COLS} FROM leases"),
        binds: Vec::new(),
    };
    let mut conds = Vec::new();
    // As for grants: keep `leases_state` out when a narrower filter exists, except with
    // `identity`, whose index (identity, state, issued_at) serves both columns in order.
    let state_col =
        if identity.is_none() && (task.is_some() || grant_id.is_some() || target.is_some()) {
            "+state"
        } else {
            "state"
        };
    for (col, val) in [
        ("identity", identity),
        ("task", task),
        ("grant_id", grant_id),
        (state_col, state),
        ("target", target),
    ] {
        if let Some(v) = val {
            conds.push(format!("{col} = ?"));
            q.binds.push(v.to_string());
        }
    }
    push_where(&mut q.sql, &conds);
    q.sql
        .push_str(" ORDER BY issued_at DESC, rowid DESC LIMIT ?");
    q
}

/// Audit listing: binds are the filters in order, then `after_seq`, then the limit.
pub(crate) fn list_audit(
    identity: Option<&str>,
    task: Option<&str>,
    grant_id: Option<&str>,
) -> ListQuery {
    let mut q = ListQuery {
        sql: "SELECT seq, body, hash FROM audit".to_string(),
        binds: Vec::new(),
    };
    let mut conds = Vec::new();
    for (col, val) in [
        ("identity", identity),
        ("task", task),
        ("grant_id", grant_id),
    ] {
        if let Some(v) = val {
            conds.push(format!("{col} = ?"));
            q.binds.push(v.to_string());
        }
    }
    conds.push("seq > ?".to_string());
    push_where(&mut q.sql, &conds);
    q.sql.push_str(" ORDER BY seq LIMIT ?");
    q
}

fn push_where(sql: &mut String, conds: &[String]) {
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
}

// --- external credentials: target secrets, write-ahead leases, the revocation queue ------

pub(crate) const TARGET_EXISTS: &str = "SELECT 1 FROM targets WHERE name = ?1";
pub(crate) const PUT_TARGET_SECRET: &str =
    "INSERT INTO target_secrets (target, sealed, updated_at) \
     VALUES (?1, ?2, ?3) \
     ON CONFLICT (target) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at";
pub(crate) const GET_TARGET_SECRET: &str = "SELECT sealed FROM target_secrets WHERE target = ?1";

/// Root rotation: the next admin secret is recorded before the target changes; it is
/// recorded at most once per target (a second rotation waits for the first to resolve).
pub(crate) const BEGIN_ROOT_ROTATION: &str =
    "INSERT INTO target_rotations (target, sealed, started_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (target) DO NOTHING";
/// Ends the rotation that recorded exactly this secret, so one resolved elsewhere (and
/// any later one) is left alone.
pub(crate) const END_ROOT_ROTATION: &str =
    "DELETE FROM target_rotations WHERE target = ?1 AND sealed = ?2";
pub(crate) const LIST_ROOT_ROTATIONS: &str =
    "SELECT target, sealed, started_at FROM target_rotations ORDER BY target";

/// `creating` → `active` once the credential exists on the target.
pub(crate) const ACTIVATE_LEASE: &str = concat!(
    "UPDATE leases SET state = 'active', provider_state = ?2 ",
    "WHERE id = ?1 AND state = 'creating' RETURNING ",
    lease_cols!()
);
pub(crate) const ISSUE_GRANT: &str =
    "UPDATE grants SET state = 'issued', updated_at = ?2 WHERE id = ?1 AND state = 'approved'";

/// `creating` → `revoked` (nothing left on the target, `?2` = 1) or `revoking` (the worker
/// must still make sure), after issuance failed.
pub(crate) const ABANDON_LEASE: &str = concat!(
    "UPDATE leases SET ",
    "state = CASE WHEN ?2 = 1 THEN 'revoked' ELSE 'revoking' END, ",
    "revocation_reason = 'task_failed', last_error = ?3, ",
    "next_attempt_at = CASE WHEN ?2 = 1 THEN NULL ELSE ?4 END ",
    "WHERE id = ?1 AND state = 'creating' RETURNING ",
    lease_cols!()
);
pub(crate) const FAIL_GRANT: &str =
    "UPDATE grants SET state = 'failed', updated_at = ?2 WHERE id = ?1 AND state = 'approved'";

/// Claims due revocations by pushing their next attempt to `?2` (a lease on the work
/// item: a worker that dies leaves them to come due again).
pub(crate) const CLAIM_REVOCATIONS: &str = concat!(
    "UPDATE leases SET next_attempt_at = ?2 WHERE rowid IN (",
    "SELECT rowid FROM leases INDEXED BY leases_revoking_due ",
    "WHERE state = 'revoking' AND next_attempt_at <= ?1 ",
    "ORDER BY next_attempt_at LIMIT ?3) RETURNING ",
    lease_cols!()
);
pub(crate) const COMPLETE_REVOCATION: &str = concat!(
    "UPDATE leases SET ",
    "state = CASE WHEN revocation_reason = 'ttl' THEN 'expired' ELSE 'revoked' END, ",
    "last_error = NULL, next_attempt_at = NULL ",
    "WHERE id = ?1 AND state = 'revoking' RETURNING ",
    lease_cols!()
);
pub(crate) const REVOCATION_FAILED: &str = concat!(
    "UPDATE leases SET revoke_attempts = revoke_attempts + 1, last_error = ?2, ",
    "next_attempt_at = ?3 WHERE id = ?1 AND state = 'revoking' RETURNING ",
    lease_cols!()
);
pub(crate) const LIVE_PROVIDER_STATES: &str = "SELECT provider_state FROM leases \
     INDEXED BY leases_target_live \
     WHERE target = ?1 AND state IN ('creating', 'active', 'revoking')";
/// Reconciliation: which of the names in the JSON array `?2` leases of target `?1`
/// recorded, and whether one of those leases is live. Walks the target's leases (its
/// history included): run by reconciliation only, never on a request path.
pub(crate) const RECORDED_NAMES: &str = "SELECT json_extract(provider_state, ?3), \
     MAX(state IN ('creating', 'active', 'revoking')) \
     FROM leases INDEXED BY leases_target_live \
     WHERE target = ?1 AND json_extract(provider_state, ?3) IN (SELECT value FROM json_each(?2)) \
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
    " FROM operator_tokens WHERE name = ?1 AND revoked_at IS NULL"
);
pub(crate) const REVOKE_OPERATOR_TOKEN: &str = "UPDATE operator_tokens \
     SET revoked_at = ?2, revoked_by = ?3 WHERE name = ?1 AND revoked_at IS NULL";
/// Tokens that still authenticate at `?1`.
pub(crate) const COUNT_LIVE_OPERATOR_TOKENS: &str = "SELECT COUNT(*) FROM operator_tokens \
     WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)";

pub(crate) const UPDATE_IDENTITY: &str = concat!(
    "UPDATE identities SET kind = ?2, owner = ?3, purpose = ?4, expires_at = ?5, labels = ?6 ",
    "WHERE id = ?1 RETURNING ",
    identity_cols!()
);
pub(crate) const DELETE_IDENTITY: &str = "DELETE FROM identities WHERE id = ?1";
pub(crate) const UPDATE_TARGET: &str = "UPDATE targets SET actions = ?2, default_ttl_s = ?3, \
     max_ttl_s = ?4, allow = ?5, settings = ?6 WHERE name = ?1 \
     RETURNING name, kind, actions, default_ttl_s, max_ttl_s, allow, settings, created_at";
pub(crate) const DELETE_TARGET_SECRET: &str = "DELETE FROM target_secrets WHERE target = ?1";
pub(crate) const DELETE_TARGET: &str = "DELETE FROM targets WHERE name = ?1";
pub(crate) const ROOT_ROTATION_PENDING: &str = "SELECT 1 FROM target_rotations WHERE target = ?1";
/// Live leases (creating, active, revoking) of an identity: its index's leading columns.
pub(crate) const COUNT_LIVE_LEASES_OF_IDENTITY: &str = "SELECT COUNT(*) FROM leases \
     WHERE identity = ?1 AND state IN ('creating', 'active', 'revoking')";
/// Live leases of a target, from the reconciliation index.
pub(crate) const COUNT_LIVE_LEASES_OF_TARGET: &str = "SELECT COUNT(*) FROM leases \
     INDEXED BY leases_target_live \
     WHERE target = ?1 AND state IN ('creating', 'active', 'revoking')";
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
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
);
pub(crate) const GET_TASK: &str = concat!("SELECT ", task_cols!(), " FROM tasks WHERE id = ?1");
/// Ends the task `?1` and every open task below it; the ids it ended.
pub(crate) const END_TASK_TREE: &str = "WITH RECURSIVE tree(id) AS ( \
       SELECT id FROM tasks WHERE id = ?1 \
       UNION SELECT t.id FROM tasks t JOIN tree ON t.parent = tree.id) \
     UPDATE tasks SET state = ?2, ended_at = ?3 \
     WHERE state = 'open' AND id IN (SELECT id FROM tree) RETURNING id";
pub(crate) const DUE_TASKS: &str = "SELECT id FROM tasks INDEXED BY tasks_open_deadline \
     WHERE state = 'open' AND deadline <= ?1 ORDER BY deadline LIMIT ?2";
pub(crate) const NEXT_TASK_DEADLINE: &str =
    "SELECT MIN(deadline) FROM tasks INDEXED BY tasks_open_deadline WHERE state = 'open'";

/// Tasks, newest first, by identity and/or state.
pub(crate) fn list_tasks(identity: Option<&str>, state: Option<&str>) -> ListQuery {
    let mut q = ListQuery {
        sql: format!("SELECT {TASK_COLS} FROM tasks"),
        binds: Vec::new(),
    };
    let mut conds = Vec::new();
    for (col, val) in [("identity", identity), ("state", state)] {
        if let Some(v) = val {
            conds.push(format!("{col} = ?"));
            q.binds.push(v.to_string());
        }
    }
    push_where(&mut q.sql, &conds);
    q.sql
        .push_str(" ORDER BY created_at DESC, rowid DESC LIMIT ?");
    q
}

// --- approvals ------------------------------------------------------------------------

pub(crate) const INSERT_APPROVAL: &str = "INSERT INTO approvals (grant_id, state, expires_at, created_at, body) VALUES (?1, ?2, ?3, ?4, ?5)";
pub(crate) const GET_APPROVAL: &str = "SELECT body FROM approvals WHERE grant_id = ?1";
pub(crate) const UPDATE_APPROVAL: &str =
    "UPDATE approvals SET state = ?2, expires_at = ?3, body = ?4 WHERE grant_id = ?1";
/// Oldest first; `?1` a state or NULL for all.
pub(crate) const LIST_APPROVALS: &str = "SELECT body FROM approvals WHERE (?1 IS NULL OR state = ?1) ORDER BY created_at, grant_id LIMIT ?2";
pub(crate) const DUE_APPROVALS: &str = "SELECT grant_id FROM approvals WHERE state IN ('pending', 'approved') AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2";
pub(crate) const SET_GRANT_STATE: &str =
    "UPDATE grants SET state = ?3, updated_at = ?4 WHERE id = ?1 AND state = ?2";
// --- webhook cursors ----------------------------------------------------------------------

macro_rules! webhook_cursor_cols {
    () => {
        "name, delivered_seq, attempts, next_attempt_at, last_error, failing_since, \
         claimed_by, claimed_until"
    };
}
pub(crate) const INSERT_WEBHOOK_CURSOR: &str = "INSERT INTO webhook_cursors \
     (name, delivered_seq, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING";
/// Free (never claimed or released), lapsed at `?3`, or the holder's own.
pub(crate) const CLAIM_WEBHOOK: &str = concat!(
    "UPDATE webhook_cursors SET claimed_by = ?2, claimed_until = ?4 WHERE name = ?1 ",
    "AND (claimed_by = ?2 OR claimed_until IS NULL OR claimed_until <= ?3) RETURNING ",
    webhook_cursor_cols!()
);
/// Only for a holder whose claim still runs at `?4`, and never backwards.
pub(crate) const ADVANCE_WEBHOOK: &str = "UPDATE webhook_cursors SET delivered_seq = ?3, \
     attempts = 0, next_attempt_at = NULL, last_error = NULL, failing_since = NULL, \
     claimed_until = ?5 \
     WHERE name = ?1 AND claimed_by = ?2 AND claimed_until > ?4 AND delivered_seq <= ?3";
pub(crate) const WEBHOOK_FAILED: &str = "UPDATE webhook_cursors SET attempts = attempts + 1, \
     last_error = ?3, next_attempt_at = ?4, failing_since = COALESCE(failing_since, ?5), \
     claimed_until = ?6 WHERE name = ?1 AND claimed_by = ?2 AND claimed_until > ?5";
pub(crate) const RELEASE_WEBHOOK: &str = "UPDATE webhook_cursors \
     SET claimed_by = NULL, claimed_until = NULL WHERE name = ?1 AND claimed_by = ?2";
