//! Query-plan and connection-setting checks that need the backend's internals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

async fn open_temp(durability: Durability) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.db");
    let store = SqliteStore::open(path.to_str().unwrap(), durability)
        .await
        .unwrap();
    (dir, store)
}

/// The `detail` lines of `EXPLAIN QUERY PLAN` for `sql`, with NULL for every parameter.
async fn plan(store: &SqliteStore, sql: &str, params: usize) -> Vec<String> {
    let text = format!("EXPLAIN QUERY PLAN {sql}");
    let mut q = sqlx::query(&text);
    for _ in 0..params {
        q = q.bind(None::<String>);
    }
    q.fetch_all(&store.reads.read)
        .await
        .unwrap_or_else(|e| panic!("explaining {sql}: {e}"))
        .iter()
        .map(|r| r.get::<String, _>("detail"))
        .collect()
}

const BIG_TABLES: [&str; 3] = ["leases", "audit", "grants"];

fn assert_indexed(name: &str, lines: &[String]) {
    assert!(!lines.is_empty(), "{name}: no plan");
    for line in lines {
        for table in BIG_TABLES {
            assert!(
                !line.starts_with(&format!("SCAN {table}")),
                "{name}: full scan of {table}: {lines:#?}"
            );
        }
    }
    // Every access to a big table must go through a key or an index.
    assert!(
        lines.iter().any(|l| l.starts_with("SEARCH ")),
        "{name}: no index search: {lines:#?}"
    );
}

#[tokio::test]
async fn request_paths_use_indexes() {
    let (_dir, store) = open_temp(Durability::CrashSafe).await;
    let audit_by_task = sql::list_audit(None, Some("t"), None);
    let audit_by_identity = sql::list_audit(Some("i"), None, None);
    let audit_by_grant = sql::list_audit(None, None, Some("g"));
    let audit_all = sql::list_audit(None, None, None);
    let grants_by_identity = sql::list_grants(Some("i"), None, None);
    let grants_by_task = sql::list_grants(None, Some("t"), None);
    let grants_by_state = sql::list_grants(None, None, Some("issued"));
    let leases_by_task = sql::list_leases(None, Some("t"), None, None);
    let leases_by_grant = sql::list_leases(None, None, Some("g"), None);
    let leases_by_identity = sql::list_leases(Some("i"), None, None, Some("active"));
    let leases_by_state = sql::list_leases(None, None, None, Some("revoking"));
    let leases_by_task_state = sql::list_leases(None, Some("t"), None, Some("active"));
    let leases_by_grant_state = sql::list_leases(None, None, Some("g"), Some("active"));
    let grants_by_identity_state = sql::list_grants(Some("i"), None, Some("issued"));
    let grants_by_task_state = sql::list_grants(None, Some("t"), Some("issued"));
    let revoke_grants = sql::REVOKE_GRANTS;
    let expire_grants = sql::EXPIRE_GRANTS;
    let cases: Vec<(&str, &str, usize)> = vec![
        ("get_lease", sql::GET_LEASE, 1),
        ("activate lease", sql::ACTIVATE_LEASE, 2),
        ("abandon lease", sql::ABANDON_LEASE, 4),
        ("claim revocations", sql::CLAIM_REVOCATIONS, 3),
        ("complete revocation", sql::COMPLETE_REVOCATION, 1),
        ("revocation failed", sql::REVOCATION_FAILED, 3),
        ("live provider states", sql::LIVE_PROVIDER_STATES, 1),
        ("recorded names", sql::RECORDED_NAMES, 3),
        ("issue grant", sql::ISSUE_GRANT, 2),
        ("fail grant", sql::FAIL_GRANT, 2),
        ("target secret", sql::GET_TARGET_SECRET, 1),
        ("get_grant", sql::GET_GRANT, 1),
        ("renew_lease", sql::RENEW_LEASE, 2),
        ("select by lease", sql::REVOKE_BY_LEASE.select, 1),
        ("select by grant", sql::REVOKE_BY_GRANT.select, 1),
        ("select by task", sql::REVOKE_BY_TASK.select, 1),
        ("select by identity", sql::REVOKE_BY_IDENTITY.select, 1),
        ("select by owner", sql::REVOKE_BY_OWNER.select, 1),
        ("revoke by lease", sql::REVOKE_BY_LEASE.update, 3),
        ("revoke by grant", sql::REVOKE_BY_GRANT.update, 3),
        ("revoke by task", sql::REVOKE_BY_TASK.update, 3),
        ("revoke by identity", sql::REVOKE_BY_IDENTITY.update, 3),
        ("revoke by owner", sql::REVOKE_BY_OWNER.update, 3),
        (
            "live leases of identity",
            sql::COUNT_LIVE_LEASES_OF_IDENTITY,
            1,
        ),
        ("live leases of target", sql::COUNT_LIVE_LEASES_OF_TARGET, 1),
        ("revoke grants", revoke_grants, 3),
        ("expire grants", expire_grants, 3),
        ("expire_due", sql::EXPIRE_DUE, 2),
        ("next_expiry", sql::NEXT_EXPIRY, 0),
        ("list_audit by task", &audit_by_task.sql, 3),
        ("list_audit by identity", &audit_by_identity.sql, 3),
        ("list_audit by grant", &audit_by_grant.sql, 3),
        ("list_audit all", &audit_all.sql, 2),
        ("list_grants by identity", &grants_by_identity.sql, 2),
        ("list_grants by task", &grants_by_task.sql, 2),
        ("list_grants by state", &grants_by_state.sql, 2),
        ("list_leases by task", &leases_by_task.sql, 2),
        ("list_leases by grant", &leases_by_grant.sql, 2),
        ("list_leases by identity", &leases_by_identity.sql, 3),
        ("list_leases by state", &leases_by_state.sql, 2),
    ];
    for (name, text, params) in cases {
        let lines = plan(&store, text, params).await;
        eprintln!("{name}:\n  {}", lines.join("\n  "));
        assert_indexed(name, &lines);
    }

    // Counting reads only the matching index entries (never the table).
    for count in [sql::COUNT_ACTIVE, sql::COUNT_REVOKING] {
        let p = plan(&store, count, 0).await.join("\n");
        assert!(p.contains("COVERING INDEX"), "{count}: {p}");
    }

    // The hot paths must use the specific index they were built for; a SEARCH on a
    // low-selectivity index (all active leases, all issued grants) would be a scan too.
    for (name, text, params, index) in [
        (
            "get_lease",
            sql::GET_LEASE,
            1,
            "sqlite_autoindex_leases_1 (id=?)",
        ),
        (
            "select by identity",
            sql::REVOKE_BY_IDENTITY.select,
            1,
            "leases_identity_state (identity=? AND state=?)",
        ),
        (
            "revoke by identity",
            sql::REVOKE_BY_IDENTITY.update,
            3,
            "leases_identity_state (identity=? AND state=?)",
        ),
        (
            "revoke by grant",
            sql::REVOKE_BY_GRANT.update,
            3,
            "leases_grant (grant_id=?)",
        ),
        (
            "revoke by lease",
            sql::REVOKE_BY_LEASE.update,
            3,
            "sqlite_autoindex_leases_1 (id=?)",
        ),
        (
            "revoke grants",
            revoke_grants,
            3,
            "sqlite_autoindex_grants_1 (id=?)",
        ),
        (
            "expire grants",
            expire_grants,
            3,
            "sqlite_autoindex_grants_1 (id=?)",
        ),
        (
            "expire_due",
            sql::EXPIRE_DUE,
            2,
            "INTEGER PRIMARY KEY (rowid=?)",
        ),
        (
            "list_audit all",
            audit_all.sql.as_str(),
            2,
            "INTEGER PRIMARY KEY (rowid>?)",
        ),
        (
            "list_leases by identity+state",
            leases_by_identity.sql.as_str(),
            3,
            "leases_identity_state (identity=? AND state=?)",
        ),
        (
            "list_leases by task+state",
            leases_by_task_state.sql.as_str(),
            3,
            "leases_task (task=?)",
        ),
        (
            "list_leases by grant+state",
            leases_by_grant_state.sql.as_str(),
            3,
            "leases_grant (grant_id=?)",
        ),
        (
            "list_grants by identity+state",
            grants_by_identity_state.sql.as_str(),
            3,
            "grants_identity (identity=?)",
        ),
        (
            "list_grants by task+state",
            grants_by_task_state.sql.as_str(),
            3,
            "grants_task (task=?)",
        ),
    ] {
        let p = plan(&store, text, params).await.join("\n");
        assert!(p.contains(index), "{name} does not use {index}: {p}");
    }
    let expiry = plan(&store, sql::EXPIRE_DUE, 2).await.join("\n");
    assert!(expiry.contains("leases_active_expiry"), "{expiry}");
    let next = plan(&store, sql::NEXT_EXPIRY, 0).await.join("\n");
    assert!(next.contains("leases_active_expiry"), "{next}");
    for (statement, params) in [
        (sql::REVOKE_BY_TASK.select, 1),
        (sql::REVOKE_BY_TASK.update, 3),
    ] {
        let task = plan(&store, statement, params).await.join("\n");
        assert!(task.contains("leases_task"), "{task}");
    }
    for (statement, params) in [
        (sql::REVOKE_BY_OWNER.select, 1),
        (sql::REVOKE_BY_OWNER.update, 3),
    ] {
        let owner = plan(&store, statement, params).await.join("\n");
        assert!(owner.contains("identities_owner"), "{owner}");
        assert!(owner.contains("leases_identity_state"), "{owner}");
    }
    let by_task = plan(&store, &audit_by_task.sql, 3).await.join("\n");
    assert!(by_task.contains("audit_task"), "{by_task}");
    // Newest-first lists read the index in order instead of sorting every match.
    for (name, q) in [
        ("list_grants", sql::list_grants(None, None, None)),
        ("list_grants by identity", grants_by_identity),
        ("list_leases", sql::list_leases(None, None, None, None)),
        ("list_leases by task", leases_by_task),
        ("list_leases by identity+state", leases_by_identity.clone()),
        ("list_audit by task", audit_by_task),
    ] {
        let p = plan(&store, &q.sql, q.binds.len() + 2).await.join("\n");
        assert!(!p.contains("TEMP B-TREE"), "{name} sorts: {p}");
    }
    store.close().await;
}

#[tokio::test]
async fn durability_sets_synchronous_and_wal() {
    for (durability, expected) in [(Durability::Fsync, 2i64), (Durability::CrashSafe, 1)] {
        let (_dir, store) = open_temp(durability).await;
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.reads.read)
            .await
            .unwrap();
        assert_eq!(sync, expected, "{durability}");
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.reads.read)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(&store.reads.read)
            .await
            .unwrap();
        assert_eq!(fk, 1);
        // Reads cannot write, so nothing can bypass the writer's chain head.
        let err = sqlx::query("DELETE FROM audit")
            .execute(&store.reads.read)
            .await;
        assert!(err.is_err());
        assert_eq!(store.durability(), durability);
        store.close().await;
    }
}

/// The selectors and the listing filter added for `mayfly revoke --target/--prefix`,
/// a workload's `revoke --task` and `mayfly leases --target` read through an index.
#[tokio::test]
async fn target_and_identity_task_paths_use_indexes() {
    let (_dir, store) = open_temp(Durability::CrashSafe).await;
    let by_target = sql::list_leases_of(None, None, None, None, Some("t"));
    let by_target_state = sql::list_leases_of(None, None, None, Some("active"), Some("t"));
    for (name, text, params, index) in [
        (
            "select by target",
            sql::REVOKE_BY_TARGET.select,
            1,
            "leases_target_live",
        ),
        (
            "revoke by target",
            sql::REVOKE_BY_TARGET.update,
            3,
            "leases_target_live",
        ),
        (
            "select by target prefix",
            sql::REVOKE_BY_TARGET_PREFIX.select,
            1,
            "leases_target_live",
        ),
        (
            "revoke by target prefix",
            sql::REVOKE_BY_TARGET_PREFIX.update,
            3,
            "leases_target_live",
        ),
        (
            "select by identity+task",
            sql::REVOKE_BY_IDENTITY_TASK.select,
            1,
            "leases_",
        ),
        (
            "revoke by identity+task",
            sql::REVOKE_BY_IDENTITY_TASK.update,
            3,
            "leases_",
        ),
        (
            "list_leases by target",
            by_target.sql.as_str(),
            2,
            "leases_target_live",
        ),
        (
            "list_leases by target+state",
            by_target_state.sql.as_str(),
            3,
            "leases_target_live",
        ),
    ] {
        let lines = plan(&store, text, params).await;
        eprintln!("{name}:\n  {}", lines.join("\n  "));
        assert_indexed(name, &lines);
        let p = lines.join("\n");
        assert!(p.contains(index), "{name} does not use {index}: {p}");
    }
    store.close().await;
}
