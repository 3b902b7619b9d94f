//! The backend-neutral conformance suite.
//!
//! Every [`Store`] implementation runs these unchanged, so the backends agree on the
//! contract written in [`mayfly_core::store`] rather than on one implementation's habits.
//! Each function takes a *fresh, empty* store and panics (via `assert!`) on a violation.
//! The few checks that need backend access (reopening the same database, tampering with
//! stored rows) take a small hook the backend's test supplies.
//!
//! A backend runs the whole suite with one call, [`conformance_suite!`](crate::conformance_suite)
//! over its [`Harness`]: one test per suite function, so a failure names it, and a suite
//! function added here runs on every backend without further edits. Enable with the
//! `conformance` feature from another crate's tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mayfly_core::audit::{
    AuditColumn, AuditDraft, AuditEvent, AuditKind, ChainBreak, VerifyReport,
};
use mayfly_core::duration::Ttl;
use mayfly_core::model::{
    ApprovalRecord, ApprovalState, ApprovalVote, Grant, GrantState, Identity, IdentityKind, Lease,
    LeaseSelector, LeaseState, RevocationReason, Target, Task, TaskState,
};
use mayfly_core::store::{
    ApprovalFilter, AuditFilter, GrantFilter, LeaseFilter, OperatorTokenRecord, RevokeOutcome,
    SigningKeyRecord, Store, StoreError, TaskFilter, WebhookCursor,
};
use mayfly_core::{now, CoreError, OffsetDateTime, Uuid};
use serde_json::json;
use time::Duration;

/// Reopens the database behind a store after that store is dropped, as a restarted
/// server would.
pub type Reopen =
    Box<dyn FnOnce(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>> + Send>;

/// Raw access to a backend's audit rows, to prove tampering is detected. Implementations
/// change the stored data directly, bypassing the store (and its chain head).
#[async_trait::async_trait]
pub trait AuditTamper: Send + Sync {
    /// Replaces the stored body of entry `seq`, leaving its stored hash as it was.
    async fn edit_body(&self, seq: u64, body: &str);
    /// Deletes entry `seq`.
    async fn delete_entry(&self, seq: u64);
    /// Deletes every entry after `seq`, leaving the recorded chain head untouched.
    async fn truncate_after(&self, seq: u64);
    /// Runs one statement written in the SQL both backends speak, expecting it to change
    /// exactly one row.
    async fn execute(&self, statement: &str);
}

/// How a backend's tests give the suite a fresh store.
#[async_trait::async_trait]
pub trait Harness: Send + Sync + Sized + 'static {
    /// A store on new, empty storage, or `None` when the backend's service is unreachable
    /// and services are not required (the harness has printed which suite it skipped).
    async fn fresh() -> Option<Self>;
    /// The store on that storage.
    fn store(&self) -> Arc<dyn Store>;
}

/// A harness whose storage outlives its store: it can be reopened and edited directly.
#[async_trait::async_trait]
pub trait StorageAccess: Harness {
    /// Opens the same storage again (the previous store has been dropped).
    async fn reopen(&self) -> Arc<dyn Store>;
    /// Direct access to the stored audit rows.
    fn tamper(&self) -> Box<dyn AuditTamper>;
}

/// The checks that need [`StorageAccess`], run on a fresh harness each.
pub async fn with_storage_access<H: StorageAccess>(check: StorageCheck) {
    let Some(harness) = H::fresh().await else {
        return;
    };
    let store = harness.store();
    match check {
        StorageCheck::Tampering => audit_tampering_detected(store, &*harness.tamper()).await,
        StorageCheck::Refiling => audit_refiling_detected(store, &*harness.tamper()).await,
        StorageCheck::Reopen => {
            // The storage must outlive the reopened store too, so the check holds a copy.
            let harness = Arc::new(harness);
            let opener = Arc::clone(&harness);
            let again: Reopen = Box::new(move |old| {
                Box::pin(async move {
                    drop(old);
                    opener.reopen().await
                })
            });
            reopen_keeps_everything(store, again).await;
            drop(harness);
        }
    }
}

/// See [`with_storage_access`].
#[derive(Clone, Copy, Debug)]
pub enum StorageCheck {
    Tampering,
    Refiling,
    Reopen,
}

/// Runs one suite function on a fresh store of `H`.
pub async fn with_fresh<H, F, Fut>(check: F)
where
    H: Harness,
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(harness) = H::fresh().await {
        check(harness.store()).await;
    }
}

/// The whole conformance suite as tests over a [`Harness`]: `conformance_suite!(MyHarness)`
/// for a backend with [`StorageAccess`], `conformance_suite!(MyHarness, without_storage_access)`
/// for one whose storage lives only as long as its store (in-memory SQLite).
#[macro_export]
macro_rules! conformance_suite {
    ($harness:ty) => {
        $crate::conformance_suite!($harness, without_storage_access);
        $crate::conformance_suite!(@access $harness;
            audit_tampering_detected => Tampering,
            audit_refiling_detected => Refiling,
            reopen_keeps_everything => Reopen,
        );
    };
    ($harness:ty, without_storage_access) => {
        $crate::conformance_suite!(@fresh $harness;
            target_secrets,
            root_rotations,
            write_ahead_leases,
            recorded_usernames_per_target,
            revocation_queue,
            identity_crud_and_conflict,
            target_crud_and_conflict,
            record_grant_is_atomic,
            no_live_lease_for_disabled_identity,
            list_filters_and_order,
            revoke_each_selector_exactly_once,
            revoke_external_and_creating,
            revoke_many,
            kill_switch,
            renew_caps_and_rejects,
            expiry_order_limit_and_next,
            append_audit_and_read_back,
            concurrent_writers,
            signing_key_rotation,
            operator_tokens,
            stats_count,
            one_failing_call_leaves_its_batch,
            revoke_by_target_prefix_and_identity_task,
            operator_token_lifecycle,
            update_and_delete_identity,
            update_and_delete_target,
            tasks_end_with_their_leases_and_children,
    approvals_are_counted_and_collected_once, webhook_cursors, audit_checkpoints,
        );
    };
    (@fresh $harness:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::with_fresh::<$harness, _, _>($crate::conformance::$name).await;
            }
        )*
    };
    (@access $harness:ty; $($name:ident => $check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::with_storage_access::<$harness>(
                    $crate::conformance::StorageCheck::$check,
                )
                .await;
            }
        )*
    };
}

// --- fixtures ----------------------------------------------------------------------------

fn identity(id: &str, owner: &str) -> Identity {
    Identity {
        id: id.to_string(),
        kind: IdentityKind::Agent,
        owner: owner.to_string(),
        purpose: format!("conformance {id}"),
        expires_at: Some(now() + Duration::days(30)),
        labels: BTreeMap::from([("env".to_string(), "test".to_string())]),
        enabled: true,
        created_at: now(),
    }
}

fn target(name: &str) -> Target {
    Target {
        name: name.to_string(),
        kind: "token".to_string(),
        actions: vec!["read".to_string(), "write".to_string()],
        default_ttl: Ttl::from_secs(900),
        max_ttl: Ttl::from_secs(3600),
        allow: vec!["*".to_string()],
        settings: json!({"audience": name}),
        created_at: now(),
    }
}

fn grant(identity: &str, owner: &str, task: &str, at: OffsetDateTime) -> Grant {
    Grant {
        id: Uuid::new_v4(),
        identity: identity.to_string(),
        owner: owner.to_string(),
        target: "billing-api".to_string(),
        action: "read".to_string(),
        purpose: "conformance".to_string(),
        task: task.to_string(),
        requested_ttl: Ttl::from_secs(600),
        granted_ttl: Some(Ttl::from_secs(600)),
        context: json!({"ticket": "T-1"}),
        state: GrantState::Issued,
        revocation_reason: None,
        decision: json!({"allowed": true, "policy": "allow-list"}),
        created_at: at,
        updated_at: at,
    }
}

fn lease_for(
    g: &Grant,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    max_expires_at: OffsetDateTime,
    external: bool,
) -> Lease {
    Lease {
        id: Uuid::new_v4(),
        grant_id: g.id,
        kind: if external { "postgres" } else { "token" }.to_string(),
        identity: g.identity.clone(),
        target: g.target.clone(),
        task: g.task.clone(),
        issued_at,
        expires_at,
        max_expires_at,
        state: LeaseState::Active,
        revocation_reason: None,
        external,
        provider_state: if external {
            json!({"username": "mayfly_x"})
        } else {
            json!({})
        },
        revoke_attempts: 0,
        last_error: None,
    }
}

fn grant_events(g: &Grant, l: Option<&Lease>) -> Vec<AuditDraft> {
    let actor = format!("identity:{}", g.identity);
    let mut events = vec![AuditDraft::new(AuditKind::GrantDecided, actor.as_str())
        .for_grant(g)
        .detail(json!({"allowed": true}))];
    if let Some(l) = l {
        let mut e = AuditDraft::new(AuditKind::LeaseIssued, actor.as_str()).for_lease(l);
        e.owner = Some(g.owner.clone());
        events.push(e);
    }
    events
}

/// A grant issued now with its active token lease and the audit events `record_grant`
/// takes with them: the suite's fixture, for benchmarks that drive a store directly.
pub fn issued_grant(identity: &str, task: &str) -> (Grant, Lease, Vec<AuditDraft>) {
    let at = now();
    let g = grant(identity, "team", task, at);
    let l = lease_for(
        &g,
        at,
        at + Duration::minutes(10),
        at + Duration::hours(1),
        false,
    );
    let events = grant_events(&g, Some(&l));
    (g, l, events)
}

#[derive(Clone, Debug)]
struct Issued {
    grant: Grant,
    lease: Lease,
}

/// Records an issued grant with an active lease that expires `ttl` after `at`.
async fn issue(
    store: &dyn Store,
    who: &str,
    owner: &str,
    task: &str,
    at: OffsetDateTime,
    ttl: Duration,
    external: bool,
) -> Issued {
    let g = grant(who, owner, task, at);
    let l = lease_for(&g, at, at + ttl, at + ttl * 4, external);
    store
        .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
        .await
        .unwrap_or_else(|e| panic!("record_grant for {who}/{task}: {e}"));
    Issued { grant: g, lease: l }
}

async fn create_identity(store: &dyn Store, id: &str, owner: &str) -> Identity {
    let i = identity(id, owner);
    store
        .create_identity(
            &i,
            AuditDraft::new(AuditKind::IdentityCreated, "operator").detail(json!({"id": id})),
        )
        .await
        .unwrap_or_else(|e| panic!("create_identity {id}: {e}"));
    i
}

/// The chain verifies and its length matches what the store counts.
async fn assert_chain_intact(store: &dyn Store) -> VerifyReport {
    let report = store.verify_audit().await.unwrap();
    assert!(report.ok(), "audit chain broken: {report:?}");
    let stats = store.stats().await.unwrap();
    assert_eq!(
        report.entries, stats.audit_entries,
        "{report:?} vs {stats:?}"
    );
    assert_eq!(report.last_seq.unwrap_or(0), report.entries);
    report
}

async fn all_audit(store: &dyn Store, filter: AuditFilter) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    let mut after = filter.after_seq;
    loop {
        let page = store
            .list_audit(&AuditFilter {
                after_seq: after,
                limit: Some(10_000),
                ..filter.clone()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        out.extend(page);
    }
    out
}

async fn lease(store: &dyn Store, id: Uuid) -> Lease {
    store
        .get_lease(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("lease {id} missing"))
}

async fn grant_of(store: &dyn Store, id: Uuid) -> Grant {
    store
        .get_grant(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("grant {id} missing"))
}

fn is_rejected_lease(err: &StoreError) -> bool {
    matches!(err, StoreError::Rejected(CoreError::Invalid { field, .. }) if field == "lease")
}

// --- identities and targets ----------------------------------------------------------------

/// Create, read, list, conflict; each creation is audited.
pub async fn identity_crud_and_conflict(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(store.get_identity("nobody").await.unwrap(), None);
    assert!(store.list_identities().await.unwrap().is_empty());

    let b = create_identity(store, "b-deployer", "team-b").await;
    let a = create_identity(store, "a-agent", "team-a").await;
    assert_eq!(
        store.get_identity("a-agent").await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(store.list_identities().await.unwrap(), vec![a.clone(), b]);

    let mut dup = identity("a-agent", "someone-else");
    dup.purpose = "different".into();
    let err = store
        .create_identity(
            &dup,
            AuditDraft::new(AuditKind::IdentityCreated, "operator"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "identity", id } if id == "a-agent"),
        "{err:?}"
    );
    // The failed create changed nothing and left no audit entry.
    assert_eq!(store.get_identity("a-agent").await.unwrap(), Some(a));
    let created = all_audit(store, AuditFilter::default()).await;
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|e| e.kind == AuditKind::IdentityCreated));
    assert_chain_intact(store).await;
}

pub async fn target_crud_and_conflict(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(store.get_target("billing-api").await.unwrap(), None);
    let t = target("billing-api");
    store
        .create_target(
            &t,
            None,
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap();
    let u = target("analytics");
    store
        .create_target(
            &u,
            None,
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_target("billing-api").await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(store.list_targets().await.unwrap(), vec![u, t]);
    let err = store
        .create_target(
            &target("billing-api"),
            None,
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { what: "target", id } if id == "billing-api"),
        "{err:?}"
    );
    let report = assert_chain_intact(store).await;
    assert_eq!(report.entries, 2);
}

// --- grants ----------------------------------------------------------------------------------

/// A grant, its lease and its events are recorded together or not at all.
pub async fn record_grant_is_atomic(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "agent", "team").await;
    let at = now();
    let ok = issue(
        store,
        "agent",
        "team",
        "task-1",
        at,
        Duration::minutes(5),
        false,
    )
    .await;
    assert_eq!(grant_of(store, ok.grant.id).await, ok.grant);
    assert_eq!(lease(store, ok.lease.id).await, ok.lease);
    let before = store.stats().await.unwrap().audit_entries;
    assert_eq!(before, 3);

    // A lease id that is taken: the new grant must not be left behind without it.
    let g2 = grant("agent", "team", "task-2", at);
    let mut l2 = lease_for(
        &g2,
        at,
        at + Duration::minutes(5),
        at + Duration::hours(1),
        false,
    );
    l2.id = ok.lease.id;
    let err = store
        .record_grant(&g2, Some(&l2), grant_events(&g2, Some(&l2)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { what: "lease", .. }),
        "{err:?}"
    );
    assert_eq!(store.get_grant(g2.id).await.unwrap(), None);

    // A grant id that is taken.
    let err = store
        .record_grant(&ok.grant, None, grant_events(&ok.grant, None))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { what: "grant", .. }),
        "{err:?}"
    );

    // A lease that names another grant is refused before anything is written.
    let g3 = grant("agent", "team", "task-3", at);
    let l3 = lease_for(
        &ok.grant,
        at,
        at + Duration::minutes(5),
        at + Duration::hours(1),
        false,
    );
    let err = store
        .record_grant(&g3, Some(&l3), vec![])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    assert_eq!(store.get_grant(g3.id).await.unwrap(), None);
    assert_eq!(store.get_lease(l3.id).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().audit_entries, before);

    // A denied grant has no lease.
    let mut denied = grant("agent", "team", "task-4", at);
    denied.state = GrantState::Denied;
    denied.granted_ttl = None;
    store
        .record_grant(&denied, None, grant_events(&denied, None))
        .await
        .unwrap();
    assert_eq!(grant_of(store, denied.id).await, denied);

    // Failures and successes submitted together: only the failure is undone, and the
    // chain stays gap-free across it.
    let g5 = grant("agent", "team", "task-5", at);
    let l5 = lease_for(
        &g5,
        at,
        at + Duration::minutes(5),
        at + Duration::hours(1),
        false,
    );
    let mut bad = grant("agent", "team", "task-6", at);
    bad.id = ok.grant.id;
    let e5 = grant_events(&g5, Some(&l5));
    let eb = grant_events(&bad, None);
    let (good, failed) = tokio::join!(
        store.record_grant(&g5, Some(&l5), e5),
        store.record_grant(&bad, None, eb)
    );
    good.unwrap();
    assert!(matches!(failed, Err(StoreError::Conflict { .. })));
    assert_eq!(lease(store, l5.id).await, l5);
    let report = assert_chain_intact(store).await;
    assert_eq!(report.entries, before + 1 + 2);
}

/// A grant decided before the kill switch cannot slip a live lease in after it.
pub async fn no_live_lease_for_disabled_identity(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "agent", "team").await;
    store
        .disable_identity("agent", "operator", now())
        .await
        .unwrap();
    let at = now();
    let g = grant("agent", "team", "late", at);
    let l = lease_for(
        &g,
        at,
        at + Duration::minutes(5),
        at + Duration::hours(1),
        false,
    );
    let err = store
        .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Rejected(CoreError::Invalid { field, .. }) if field == "identity"),
        "{err:?}"
    );
    assert_eq!(store.get_grant(g.id).await.unwrap(), None);

    // The same checks hold for calls that arrive together (backends may group them):
    // each call gets its own answer and only the acceptable ones are recorded.
    create_identity(store, "fine", "team").await;
    let at = now();
    let ok = grant("fine", "team", "together", at);
    let ok_lease = lease_for(
        &ok,
        at,
        at + Duration::minutes(5),
        at + Duration::hours(1),
        false,
    );
    let blocked = grant("agent", "team", "together", at);
    let blocked_lease = lease_for(
        &blocked,
        at,
        at + Duration::minutes(5),
        at + Duration::hours(1),
        false,
    );
    let mismatched = grant("fine", "team", "together", at);
    let mismatched_lease = lease_for(
        &ok,
        at,
        at + Duration::minutes(5),
        at + Duration::hours(1),
        false,
    );
    let mut denied = grant("agent", "team", "together", at);
    denied.state = GrantState::Denied;
    let ok_events = grant_events(&ok, Some(&ok_lease));
    let blocked_events = grant_events(&blocked, Some(&blocked_lease));
    let denied_events = grant_events(&denied, None);
    let (a, b, c, d) = tokio::join!(
        store.record_grant(&ok, Some(&ok_lease), ok_events),
        store.record_grant(&blocked, Some(&blocked_lease), blocked_events),
        store.record_grant(&mismatched, Some(&mismatched_lease), vec![]),
        store.record_grant(&denied, None, denied_events),
    );
    a.unwrap();
    assert!(
        matches!(&b, Err(StoreError::Rejected(CoreError::Invalid { field, .. })) if field == "identity"),
        "{b:?}"
    );
    assert!(
        matches!(&c, Err(StoreError::Rejected(CoreError::Invalid { field, .. })) if field == "lease.grant_id"),
        "{c:?}"
    );
    // A denied grant carries no credential, so a disabled identity may still have one.
    d.unwrap();
    assert_eq!(lease(store, ok_lease.id).await, ok_lease);
    assert_eq!(grant_of(store, denied.id).await, denied);
    assert_eq!(store.get_grant(blocked.id).await.unwrap(), None);
    assert_eq!(store.get_grant(mismatched.id).await.unwrap(), None);
    let report = assert_chain_intact(store).await;
    // identity created x2, disabled x1, ok grant+lease x2, denied x1
    assert_eq!(report.entries, 6);
}

pub async fn list_filters_and_order(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "a", "team").await;
    create_identity(store, "b", "team").await;
    let t0 = now();
    let mut issued = Vec::new();
    for i in 0..6 {
        let who = if i % 2 == 0 { "a" } else { "b" };
        let task = if i < 3 { "t-low" } else { "t-high" };
        let at = t0 + Duration::seconds(i);
        issued.push(issue(store, who, "team", task, at, Duration::minutes(5), false).await);
    }
    let ids = |gs: &[Grant]| gs.iter().map(|g| g.id).collect::<Vec<_>>();

    let all = store.list_grants(&GrantFilter::default()).await.unwrap();
    let newest_first: Vec<Uuid> = issued.iter().rev().map(|i| i.grant.id).collect();
    assert_eq!(ids(&all), newest_first);

    let a = store
        .list_grants(&GrantFilter {
            identity: Some("a".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(&a),
        vec![issued[4].grant.id, issued[2].grant.id, issued[0].grant.id]
    );

    let limited = store
        .list_grants(&GrantFilter {
            task: Some("t-high".into()),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&limited), vec![issued[5].grant.id, issued[4].grant.id]);

    store
        .revoke(
            &LeaseSelector::Lease(issued[1].lease.id),
            RevocationReason::Admin,
            "operator",
            now(),
        )
        .await
        .unwrap();
    let revoked = store
        .list_grants(&GrantFilter {
            state: Some(GrantState::Revoked),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(&revoked), vec![issued[1].grant.id]);

    let leases = store
        .list_leases(&LeaseFilter {
            identity: Some("b".into()),
            state: Some(LeaseState::Active),
            ..Default::default()
        })
        .await
        .unwrap();
    let lease_ids: Vec<Uuid> = leases.iter().map(|l| l.id).collect();
    assert_eq!(lease_ids, vec![issued[5].lease.id, issued[3].lease.id]);
    let by_grant = store
        .list_leases(&LeaseFilter {
            grant_id: Some(issued[2].grant.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_grant, vec![issued[2].lease.clone()]);
    let by_task = store
        .list_leases(&LeaseFilter {
            task: Some("t-low".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_task.len(), 1);
    assert_eq!(by_task[0].id, issued[2].lease.id);

    // Audit: ascending, filtered, paged with after_seq.
    let for_a = all_audit(
        store,
        AuditFilter {
            identity: Some("a".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(!for_a.is_empty());
    assert!(for_a.iter().all(|e| e.identity.as_deref() == Some("a")));
    assert!(for_a.windows(2).all(|w| w[0].seq < w[1].seq));
    let by_grant = store
        .list_audit(&AuditFilter {
            grant_id: Some(issued[1].grant.id),
            ..Default::default()
        })
        .await
        .unwrap();
    let kinds: Vec<AuditKind> = by_grant.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AuditKind::GrantDecided,
            AuditKind::LeaseIssued,
            AuditKind::LeaseRevoked
        ]
    );
    let first_page = store
        .list_audit(&AuditFilter {
            task: Some("t-high".into()),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first_page.len(), 2);
    let next_page = store
        .list_audit(&AuditFilter {
            task: Some("t-high".into()),
            after_seq: Some(first_page[1].seq),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(next_page.len(), 2);
    assert!(next_page[0].seq > first_page[1].seq);
    assert!(next_page
        .iter()
        .all(|e| e.task.as_deref() == Some("t-high")));
    assert_chain_intact(store).await;
}

// --- revocation ------------------------------------------------------------------------------

/// Each selector revokes exactly the live leases it names, exactly once, and revokes
/// their grants; a second identical revocation ends nothing.
pub async fn revoke_each_selector_exactly_once(store: Arc<dyn Store>) {
    let store = &*store;
    for case in ["lease", "grant", "task", "identity", "owner"] {
        let i1 = format!("{case}-i1");
        let i2 = format!("{case}-i2");
        let (t1, t2) = (format!("{case}-t1"), format!("{case}-t2"));
        create_identity(store, &i1, &format!("{case}-team-a")).await;
        create_identity(store, &i2, &format!("{case}-team-b")).await;
        // Grants record an owner that is no longer current: revoke-by-owner must follow
        // the identity's current owner instead.
        let old_owner = format!("{case}-old-team");
        let at = now();
        let ttl = Duration::minutes(10);
        let l1 = issue(store, &i1, &old_owner, &t1, at, ttl, false).await;
        let l2 = issue(store, &i1, &old_owner, &t2, at, ttl, false).await;
        let l3 = issue(store, &i2, &old_owner, &t1, at, ttl, false).await;
        let l4 = issue(store, &i2, &old_owner, &t2, at, ttl, false).await;
        let all = [&l1, &l2, &l3, &l4];

        let (selector, expected): (LeaseSelector, Vec<&Issued>) = match case {
            "lease" => (LeaseSelector::Lease(l1.lease.id), vec![&l1]),
            "grant" => (LeaseSelector::Grant(l2.grant.id), vec![&l2]),
            "task" => (LeaseSelector::Task(t1.clone()), vec![&l1, &l3]),
            "identity" => (LeaseSelector::Identity(i1.clone()), vec![&l1, &l2]),
            _ => (
                LeaseSelector::Owner(format!("{case}-team-b")),
                vec![&l3, &l4],
            ),
        };
        if case == "owner" {
            let stale = store
                .revoke(
                    &LeaseSelector::Owner(old_owner.clone()),
                    RevocationReason::Admin,
                    "operator",
                    now(),
                )
                .await
                .unwrap();
            assert_eq!(
                stale,
                RevokeOutcome::default(),
                "owner must be the current one"
            );
        }
        let when = now();
        let outcome = store
            .revoke(&selector, RevocationReason::TaskComplete, "operator", when)
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RevokeOutcome {
                revoked: expected.len() as u64,
                revoking: 0
            },
            "{case}"
        );
        let expected_ids: HashSet<Uuid> = expected.iter().map(|i| i.lease.id).collect();
        for i in all {
            let l = lease(store, i.lease.id).await;
            let g = grant_of(store, i.grant.id).await;
            if expected_ids.contains(&i.lease.id) {
                assert_eq!(l.state, LeaseState::Revoked, "{case}");
                assert_eq!(l.revocation_reason, Some(RevocationReason::TaskComplete));
                assert_eq!(g.state, GrantState::Revoked, "{case}");
                assert_eq!(g.revocation_reason, Some(RevocationReason::TaskComplete));
                let events = store
                    .list_audit(&AuditFilter {
                        grant_id: Some(i.grant.id),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                let revoked: Vec<&AuditEvent> = events
                    .iter()
                    .filter(|e| e.kind == AuditKind::LeaseRevoked)
                    .collect();
                assert_eq!(revoked.len(), 1, "{case}: one event per lease");
                let e = revoked[0];
                assert_eq!(e.actor, "operator");
                assert_eq!(e.lease_id, Some(i.lease.id));
                assert_eq!(e.identity.as_deref(), Some(i.lease.identity.as_str()));
                assert_eq!(e.task.as_deref(), Some(i.lease.task.as_str()));
                assert_eq!(e.target.as_deref(), Some(i.lease.target.as_str()));
                assert_eq!(e.at, when);
                assert_eq!(e.detail["reason"], json!("task_complete"));
                assert!(!e.detail["selector"].is_null());
            } else {
                assert_eq!(l, i.lease, "{case}: untouched lease changed");
                assert_eq!(g.state, GrantState::Issued, "{case}");
            }
        }
        let again = store
            .revoke(&selector, RevocationReason::Admin, "operator", now())
            .await
            .unwrap();
        assert_eq!(again, RevokeOutcome::default(), "{case}: revoked twice");
    }
    // Selectors that match nothing are not errors.
    for selector in [
        LeaseSelector::Lease(Uuid::new_v4()),
        LeaseSelector::Grant(Uuid::new_v4()),
        LeaseSelector::Task("no-such-task".into()),
        LeaseSelector::Identity("nobody".into()),
        LeaseSelector::Owner("no-team".into()),
    ] {
        let o = store
            .revoke(&selector, RevocationReason::Admin, "operator", now())
            .await
            .unwrap();
        assert_eq!(o, RevokeOutcome::default());
    }
    assert_chain_intact(store).await;
}

/// External credentials become `revoking` (the target must confirm); self-contained ones
/// end now; leases still being created are revoked too; ended leases are left alone.
pub async fn revoke_external_and_creating(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "agent", "team").await;
    let at = now();
    let ttl = Duration::minutes(10);
    let ext = issue(store, "agent", "team", "job", at, ttl, true).await;
    let tok = issue(store, "agent", "team", "job", at, ttl, false).await;
    let g = grant("agent", "team", "job", at);
    let mut creating = lease_for(&g, at, at + ttl, at + ttl * 2, true);
    creating.state = LeaseState::Creating;
    let mut approved = g.clone();
    approved.state = GrantState::Approved;
    store
        .record_grant(
            &approved,
            Some(&creating),
            grant_events(&approved, Some(&creating)),
        )
        .await
        .unwrap();
    let done = issue(store, "agent", "team", "job", at, ttl, false).await;
    store
        .revoke(
            &LeaseSelector::Lease(done.lease.id),
            RevocationReason::TaskComplete,
            "operator",
            now(),
        )
        .await
        .unwrap();

    let outcome = store
        .revoke(
            &LeaseSelector::Task("job".into()),
            RevocationReason::TaskFailed,
            "identity:agent",
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RevokeOutcome {
            revoked: 1,
            revoking: 2
        }
    );
    assert_eq!(outcome.total(), 3);
    assert_eq!(lease(store, ext.lease.id).await.state, LeaseState::Revoking);
    assert_eq!(lease(store, tok.lease.id).await.state, LeaseState::Revoked);
    assert_eq!(lease(store, creating.id).await.state, LeaseState::Revoking);
    assert_eq!(
        grant_of(store, ext.grant.id).await.state,
        GrantState::Revoked
    );
    // Only issued grants move; an approved grant whose lease was still being created stays.
    assert_eq!(
        grant_of(store, approved.id).await.state,
        GrantState::Approved
    );
    // Ended before: keeps its first reason.
    let d = lease(store, done.lease.id).await;
    assert_eq!(d.state, LeaseState::Revoked);
    assert_eq!(d.revocation_reason, Some(RevocationReason::TaskComplete));

    let stats = store.stats().await.unwrap();
    assert_eq!(stats.active_leases, 0);
    assert_eq!(stats.revoking_leases, 2);
    let revoking = store
        .list_audit(&AuditFilter {
            grant_id: Some(ext.grant.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        revoking.last().map(|e| e.kind),
        Some(AuditKind::LeaseRevoking)
    );
    // Again: revoking leases are no longer live, so nothing is counted twice.
    let again = store
        .revoke(
            &LeaseSelector::Task("job".into()),
            RevocationReason::TaskFailed,
            "identity:agent",
            now(),
        )
        .await
        .unwrap();
    assert_eq!(again, RevokeOutcome::default());
    assert_chain_intact(store).await;
}

/// Many leases of one identity end in one call, each with its own audit entry.
pub async fn revoke_many(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "busy", "team").await;
    let at = now();
    let n = 600;
    let mut ids = Vec::with_capacity(n);
    let mut pending = Vec::new();
    for i in 0..n {
        let g = grant("busy", "team", &format!("t{}", i % 7), at);
        let l = lease_for(
            &g,
            at,
            at + Duration::minutes(5),
            at + Duration::hours(1),
            i % 5 == 0,
        );
        ids.push(l.id);
        pending.push((g, l));
    }
    // Submitted concurrently so the backend sees them together.
    let results = futures::future::join_all(
        pending
            .iter()
            .map(|(g, l)| store.record_grant(g, Some(l), grant_events(g, Some(l)))),
    )
    .await;
    assert!(results.iter().all(|r| r.is_ok()));
    let outcome = store
        .revoke(
            &LeaseSelector::Identity("busy".into()),
            RevocationReason::Admin,
            "operator",
            now(),
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RevokeOutcome {
            revoked: 480,
            revoking: 120
        }
    );
    let revoked_events = all_audit(
        store,
        AuditFilter {
            identity: Some("busy".into()),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .filter(|e| matches!(e.kind, AuditKind::LeaseRevoked | AuditKind::LeaseRevoking))
    .count();
    assert_eq!(revoked_events, n);
    assert_eq!(store.stats().await.unwrap().active_leases, 0);
    assert_chain_intact(store).await;
}

/// The kill switch disables the identity and ends everything it holds, atomically.
pub async fn kill_switch(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "rogue", "team-r").await;
    create_identity(store, "bystander", "team-r").await;
    let at = now();
    let ttl = Duration::minutes(10);
    let r1 = issue(store, "rogue", "team-r", "a", at, ttl, false).await;
    let r2 = issue(store, "rogue", "team-r", "b", at, ttl, false).await;
    let r3 = issue(store, "rogue", "team-r", "c", at, ttl, true).await;
    let by = issue(store, "bystander", "team-r", "a", at, ttl, false).await;

    let when = now();
    let outcome = store
        .disable_identity("rogue", "operator", when)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RevokeOutcome {
            revoked: 2,
            revoking: 1
        }
    );
    let rogue = store.get_identity("rogue").await.unwrap().unwrap();
    assert!(!rogue.enabled);
    for (i, state) in [
        (&r1, LeaseState::Revoked),
        (&r2, LeaseState::Revoked),
        (&r3, LeaseState::Revoking),
    ] {
        let l = lease(store, i.lease.id).await;
        assert_eq!(l.state, state);
        assert_eq!(
            l.revocation_reason,
            Some(RevocationReason::IdentityDisabled)
        );
        assert_eq!(grant_of(store, i.grant.id).await.state, GrantState::Revoked);
    }
    assert_eq!(lease(store, by.lease.id).await, by.lease);
    assert!(
        store
            .get_identity("bystander")
            .await
            .unwrap()
            .unwrap()
            .enabled
    );

    let events = all_audit(
        store,
        AuditFilter {
            identity: Some("rogue".into()),
            ..Default::default()
        },
    )
    .await;
    let disabled: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| e.kind == AuditKind::IdentityDisabled)
        .collect();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0].actor, "operator");
    let lease_events: Vec<&AuditEvent> = events
        .iter()
        .filter(|e| {
            e.at == when && matches!(e.kind, AuditKind::LeaseRevoked | AuditKind::LeaseRevoking)
        })
        .collect();
    assert_eq!(lease_events.len(), 3);
    assert!(lease_events
        .iter()
        .all(|e| e.detail["reason"] == json!("identity_disabled")));

    // Again: still disabled, nothing left to revoke.
    let again = store
        .disable_identity("rogue", "operator", now())
        .await
        .unwrap();
    assert_eq!(again, RevokeOutcome::default());
    let err = store
        .disable_identity("ghost", "operator", now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                what: "identity",
                ..
            }
        ),
        "{err:?}"
    );

    let enabled = store
        .enable_identity(
            "rogue",
            AuditDraft::new(AuditKind::IdentityEnabled, "operator"),
        )
        .await
        .unwrap();
    assert!(enabled.enabled);
    assert_eq!(enabled.id, "rogue");
    assert!(store.get_identity("rogue").await.unwrap().unwrap().enabled);
    // Re-enabling does not bring credentials back.
    assert_eq!(lease(store, r1.lease.id).await.state, LeaseState::Revoked);
    let err = store
        .enable_identity(
            "ghost",
            AuditDraft::new(AuditKind::IdentityEnabled, "operator"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_chain_intact(store).await;
}

// --- renewal and expiry ------------------------------------------------------------------------

pub async fn renew_caps_and_rejects(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "agent", "team").await;
    let t0 = now();
    let g = grant("agent", "team", "renew", t0);
    let l = lease_for(
        &g,
        t0,
        t0 + Duration::minutes(1),
        t0 + Duration::minutes(5),
        false,
    );
    store
        .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
        .await
        .unwrap();

    let at = t0 + Duration::seconds(30);
    let renewed = store
        .renew_lease(l.id, t0 + Duration::minutes(2), "identity:agent", at)
        .await
        .unwrap();
    assert_eq!(renewed.expires_at, t0 + Duration::minutes(2));
    assert_eq!(lease(store, l.id).await, renewed);

    // Beyond the cap: capped at max_expires_at.
    let capped = store
        .renew_lease(l.id, t0 + Duration::hours(2), "identity:agent", at)
        .await
        .unwrap();
    assert_eq!(capped.expires_at, l.max_expires_at);
    // Asking for less than it has never shortens it.
    let same = store
        .renew_lease(l.id, t0 + Duration::seconds(40), "identity:agent", at)
        .await
        .unwrap();
    assert_eq!(same.expires_at, l.max_expires_at);

    let events: Vec<AuditEvent> = store
        .list_audit(&AuditFilter {
            grant_id: Some(g.id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == AuditKind::LeaseRenewed)
        .collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].detail["capped"], json!(false));
    assert_eq!(events[1].detail["capped"], json!(true));
    assert_eq!(events[0].actor, "identity:agent");
    assert_eq!(events[0].lease_id, Some(l.id));
    assert_eq!(events[0].owner.as_deref(), Some("team"));
    assert!(events[0].detail["from"].is_string() && events[0].detail["to"].is_string());

    // Past its expiry (even if the expiry sweep has not run yet): rejected.
    let late = l.max_expires_at + Duration::seconds(1);
    let err = store
        .renew_lease(l.id, late + Duration::minutes(1), "identity:agent", late)
        .await
        .unwrap_err();
    assert!(is_rejected_lease(&err), "{err:?}");
    let at_expiry = store
        .renew_lease(l.id, l.max_expires_at, "identity:agent", l.max_expires_at)
        .await
        .unwrap_err();
    assert!(is_rejected_lease(&at_expiry), "{at_expiry:?}");

    // Not active: rejected, with the state in the reason.
    store
        .revoke(
            &LeaseSelector::Lease(l.id),
            RevocationReason::Admin,
            "operator",
            at,
        )
        .await
        .unwrap();
    let err = store
        .renew_lease(l.id, t0 + Duration::minutes(3), "identity:agent", at)
        .await
        .unwrap_err();
    assert!(is_rejected_lease(&err), "{err:?}");
    assert!(err.to_string().contains("revoked"), "{err}");
    let err = store
        .renew_lease(Uuid::new_v4(), t0, "identity:agent", at)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "lease", .. }),
        "{err:?}"
    );
    // Rejections write nothing.
    let renewed_events = store
        .list_audit(&AuditFilter {
            grant_id: Some(g.id),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == AuditKind::LeaseRenewed)
        .count();
    assert_eq!(renewed_events, 3);
    assert_chain_intact(store).await;
}

/// Oldest first, at most `limit`, only what is due; `next_expiry` follows along.
pub async fn expiry_order_limit_and_next(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "agent", "team").await;
    assert_eq!(store.next_expiry().await.unwrap(), None);
    let base = now();
    let at = base - Duration::minutes(1);
    let mut by_offset = BTreeMap::new();
    // Inserted out of order; offsets in ms after `base`.
    for (offset, external) in [
        (5_000i64, false),
        (1_000, false),
        (3_000, false),
        (2_500, true),
        (2_000, false),
        (4_000, false),
        (3_600_000, false),
    ] {
        let g = grant("agent", "team", "exp", at);
        let exp = base + Duration::milliseconds(offset);
        let l = lease_for(&g, at, exp, exp + Duration::hours(1), external);
        store
            .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
            .await
            .unwrap();
        by_offset.insert(offset, Issued { grant: g, lease: l });
    }
    // A revoked lease is never expired.
    let gone = issue(
        store,
        "agent",
        "team",
        "exp",
        at,
        Duration::seconds(61),
        false,
    )
    .await;
    store
        .revoke(
            &LeaseSelector::Lease(gone.lease.id),
            RevocationReason::Admin,
            "operator",
            at,
        )
        .await
        .unwrap();

    assert_eq!(
        store.next_expiry().await.unwrap(),
        Some(base + Duration::milliseconds(1_000))
    );
    let at3 = base + Duration::seconds(3);
    let first = store.expire_due(at3, 2).await.unwrap();
    let offsets = |ls: &[Lease]| {
        ls.iter()
            .map(|l| (l.expires_at - base).whole_milliseconds() as i64)
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(&first), vec![1_000, 2_000]);
    assert!(first
        .iter()
        .all(|l| l.state == LeaseState::Expired
            && l.revocation_reason == Some(RevocationReason::Ttl)));
    for l in &first {
        assert_eq!(lease(store, l.id).await, *l);
        let g = grant_of(store, l.grant_id).await;
        assert_eq!(g.state, GrantState::Expired);
    }

    let second = store.expire_due(at3, 10).await.unwrap();
    assert_eq!(offsets(&second), vec![2_500, 3_000]);
    assert_eq!(
        second[0].state,
        LeaseState::Revoking,
        "external lease must be revoked on its target"
    );
    assert_eq!(second[1].state, LeaseState::Expired);
    assert_eq!(
        grant_of(store, by_offset[&2_500].grant.id).await.state,
        GrantState::Issued,
        "an external lease's grant stays issued until the target confirms"
    );
    assert!(store.expire_due(at3, 10).await.unwrap().is_empty());
    assert!(store
        .expire_due(base + Duration::hours(2), 0)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.next_expiry().await.unwrap(),
        Some(base + Duration::milliseconds(4_000))
    );

    let later = base + Duration::seconds(10);
    let third = store.expire_due(later, 100).await.unwrap();
    assert_eq!(offsets(&third), vec![4_000, 5_000]);
    assert_eq!(
        store.next_expiry().await.unwrap(),
        Some(base + Duration::milliseconds(3_600_000))
    );
    assert_eq!(lease(store, gone.lease.id).await.state, LeaseState::Revoked);

    let expired: Vec<AuditEvent> = all_audit(
        store,
        AuditFilter {
            task: Some("exp".into()),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .filter(|e| e.kind == AuditKind::LeaseExpired)
    .collect();
    assert_eq!(expired.len(), 6);
    assert!(expired.iter().all(|e| e.actor == "system:expiry"));
    // The first two were swept 2 s and 1 s late.
    assert_eq!(expired[0].detail["lag_ms"], json!(2_000));
    assert_eq!(expired[1].detail["lag_ms"], json!(1_000));
    assert_eq!(expired[0].detail["reason"], json!("ttl"));
    assert!(expired[0].detail["expires_at"].is_string());
    assert_eq!(expired[0].lease_id, Some(by_offset[&1_000].lease.id));
    assert_chain_intact(store).await;
}

// --- audit -------------------------------------------------------------------------------------

pub async fn append_audit_and_read_back(store: Arc<dyn Store>) {
    let store = &*store;
    let report = store.verify_audit().await.unwrap();
    assert!(report.ok());
    assert_eq!(report.entries, 0);
    assert_eq!(report.last_seq, None);
    store.append_audit(vec![]).await.unwrap();
    let g = Uuid::new_v4();
    let mut rejected = AuditDraft::new(AuditKind::GrantRejected, "identity:x")
        .detail(json!({"reason": "target not allowed", "nested": {"b": 1, "a": [1, 2]}}));
    rejected.identity = Some("x".into());
    rejected.task = Some("t".into());
    rejected.grant_id = Some(g);
    let failed =
        AuditDraft::new(AuditKind::AuthFailed, "anonymous").detail(json!({"method": "bearer"}));
    store
        .append_audit(vec![rejected.clone(), failed.clone()])
        .await
        .unwrap();
    let events = store.list_audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].seq, 1);
    assert_eq!(events[1].seq, 2);
    assert_eq!(events[0].kind, AuditKind::GrantRejected);
    assert_eq!(events[0].detail, rejected.detail);
    assert_eq!(events[0].grant_id, Some(g));
    assert_eq!(events[1].prev_hash, events[0].hash);
    assert_eq!(events[0].prev_hash, mayfly_core::audit::GENESIS_HASH);
    let report = assert_chain_intact(store).await;
    assert_eq!(report.last_hash.as_deref(), Some(events[1].hash.as_str()));
}

/// Edits, deletions and truncation of stored entries are each found and named.
pub async fn audit_tampering_detected(store: Arc<dyn Store>, tamper: &dyn AuditTamper) {
    let store = &*store;
    let drafts = (0..10)
        .map(|i| AuditDraft::new(AuditKind::GrantRejected, "operator").detail(json!({"n": i})))
        .collect();
    store.append_audit(drafts).await.unwrap();
    assert_chain_intact(store).await;

    tamper.truncate_after(8).await;
    let report = store.verify_audit().await.unwrap();
    assert_eq!(
        report.first_break,
        Some(ChainBreak::Truncated {
            head_seq: 10,
            last_seq: 8
        })
    );

    tamper.delete_entry(5).await;
    let report = store.verify_audit().await.unwrap();
    assert_eq!(
        report.first_break,
        Some(ChainBreak::Deleted {
            seq: 6,
            missing_from: 5
        })
    );

    let events = store.list_audit(&AuditFilter::default()).await.unwrap();
    let second = &events[1];
    let forged = second.canonical_body().replace("\"n\":1", "\"n\":99");
    assert_ne!(forged, second.canonical_body());
    tamper.edit_body(2, &forged).await;
    let report = store.verify_audit().await.unwrap();
    assert_eq!(report.first_break, Some(ChainBreak::Edited { seq: 2 }));
    assert!(!report.ok());
}

/// Rewriting a column an entry is filed under (the copies beside the hashed body that
/// filtered listings and their indexes read) hides the entry from a filtered listing;
/// verification names the entry and the column, and passes again once it is put back.
pub async fn audit_refiling_detected(store: Arc<dyn Store>, tamper: &dyn AuditTamper) {
    let store = &*store;
    let (g1, g3) = (Uuid::new_v4(), Uuid::new_v4());
    let mut rejected = AuditDraft::new(AuditKind::GrantRejected, "identity:svc")
        .detail(json!({"reason": "outside hours", "task": "decoy"}));
    rejected.identity = Some("svc".into());
    rejected.task = Some("INC-7 \"quoted\"".into());
    rejected.grant_id = Some(g1);
    let failed = AuditDraft::new(AuditKind::AuthFailed, "anonymous");
    let mut issued = AuditDraft::new(AuditKind::LeaseIssued, "identity:svc");
    issued.identity = Some("svc".into());
    issued.task = Some("INC-8".into());
    issued.grant_id = Some(g3);
    store
        .append_audit(vec![rejected, failed, issued])
        .await
        .unwrap();
    assert_chain_intact(store).await;
    let by_task = |task: &str| AuditFilter {
        task: Some(task.into()),
        ..AuditFilter::default()
    };
    let listed = store
        .list_audit(&by_task("INC-7 \"quoted\""))
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);

    // The attack as reported: the entry drops out of `audit list --task`.
    tamper
        .execute("UPDATE audit SET task = 'INC-8' WHERE seq = 1")
        .await;
    let listed = store
        .list_audit(&by_task("INC-7 \"quoted\""))
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    let report = store.verify_audit().await.unwrap();
    assert_eq!(
        report.first_break,
        Some(ChainBreak::ColumnEdited {
            seq: 1,
            column: AuditColumn::Task
        }),
        "{report:?}"
    );
    assert!(!report.ok());
    tamper
        .execute("UPDATE audit SET task = 'INC-7 \"quoted\"' WHERE seq = 1")
        .await;
    assert_chain_intact(store).await;

    let (set_g1, set_g3) = (format!("grant_id = '{g1}'"), format!("grant_id = '{g3}'"));
    let cases = [
        (
            "task = NULL",
            1,
            AuditColumn::Task,
            "task = 'INC-7 \"quoted\"'",
        ),
        ("task = 'INC-7'", 2, AuditColumn::Task, "task = NULL"),
        (
            "identity = 'other'",
            3,
            AuditColumn::Identity,
            "identity = 'svc'",
        ),
        (
            "identity = NULL",
            1,
            AuditColumn::Identity,
            "identity = 'svc'",
        ),
        (&set_g3, 1, AuditColumn::GrantId, &set_g1),
        ("grant_id = NULL", 3, AuditColumn::GrantId, &set_g3),
        (
            "kind = 'lease.revoked'",
            2,
            AuditColumn::Kind,
            "kind = 'auth.failed'",
        ),
        (
            "at_ms = at_ms + 1",
            3,
            AuditColumn::AtMs,
            "at_ms = at_ms - 1",
        ),
    ];
    for (set, seq, column, restore) in cases {
        tamper
            .execute(&format!("UPDATE audit SET {set} WHERE seq = {seq}"))
            .await;
        let report = store.verify_audit().await.unwrap();
        assert_eq!(
            report.first_break,
            Some(ChainBreak::ColumnEdited { seq, column }),
            "SET {set} on entry {seq}: {report:?}"
        );
        tamper
            .execute(&format!("UPDATE audit SET {restore} WHERE seq = {seq}"))
            .await;
        assert_chain_intact(store).await;
    }
}

/// 50 writers at once: every acknowledged grant is present and the chain is whole.
pub async fn concurrent_writers(store: Arc<dyn Store>) {
    create_identity(&*store, "swarm", "team").await;
    let tasks: Vec<_> = (0..50)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut done = Vec::new();
                for i in 0..20 {
                    let at = now();
                    let g = grant("swarm", "team", &format!("w{w}-{i}"), at);
                    let l = lease_for(
                        &g,
                        at,
                        at + Duration::minutes(5),
                        at + Duration::hours(1),
                        false,
                    );
                    store
                        .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
                        .await
                        .unwrap();
                    done.push((g, l));
                }
                done
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    assert_eq!(acknowledged.len(), 1000);
    for (g, l) in &acknowledged {
        assert_eq!(grant_of(&*store, g.id).await, *g);
        assert_eq!(lease(&*store, l.id).await, *l);
    }
    let report = assert_chain_intact(&*store).await;
    assert_eq!(report.entries, 1 + 2 * 1000);
    assert_eq!(store.stats().await.unwrap().active_leases, 1000);
}

/// Calls that fail on their own (a key conflict, a mismatched lease, an unknown lease)
/// while others are committed beside them fail alone: every call gets its own answer, the
/// rest commit, and the chain holds exactly the committed calls' events. (Only
/// `Unavailable` fails a whole group commit; see the engine's module docs.)
pub async fn one_failing_call_leaves_its_batch(store: Arc<dyn Store>) {
    create_identity(&*store, "crowd", "team").await;
    let at = now();
    let taken = grant("crowd", "team", "taken", at);
    store
        .record_grant(&taken, None, grant_events(&taken, None))
        .await
        .unwrap();
    let calls: Vec<_> = (0..120)
        .map(|i| {
            let store = Arc::clone(&store);
            let taken = taken.clone();
            tokio::spawn(async move {
                let at = now();
                match i % 4 {
                    // A grant id that is taken: Conflict.
                    0 => {
                        let mut g = grant("crowd", "team", &format!("dup-{i}"), at);
                        g.id = taken.id;
                        (
                            i,
                            store.record_grant(&g, None, grant_events(&g, None)).await,
                        )
                    }
                    // A lease that names another grant: Rejected.
                    1 => {
                        let g = grant("crowd", "team", &format!("odd-{i}"), at);
                        let mut l = lease_for(
                            &g,
                            at,
                            at + Duration::minutes(5),
                            at + Duration::hours(1),
                            false,
                        );
                        l.grant_id = Uuid::new_v4();
                        (
                            i,
                            store
                                .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
                                .await,
                        )
                    }
                    // An unknown lease: NotFound.
                    2 => {
                        let r = store
                            .renew_lease(Uuid::new_v4(), at + Duration::minutes(1), "crowd", at)
                            .await
                            .map(|_| ());
                        (i, r)
                    }
                    _ => {
                        let g = grant("crowd", "team", &format!("ok-{i}"), at);
                        let l = lease_for(
                            &g,
                            at,
                            at + Duration::minutes(5),
                            at + Duration::hours(1),
                            false,
                        );
                        (
                            i,
                            store
                                .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
                                .await,
                        )
                    }
                }
            })
        })
        .collect();
    let mut committed = 0;
    for call in calls {
        let (i, result) = call.await.unwrap();
        match (i % 4, result) {
            (0, Err(StoreError::Conflict { what: "grant", .. })) => {}
            (1, Err(StoreError::Rejected(_))) => {}
            (2, Err(StoreError::NotFound { what: "lease", .. })) => {}
            (3, Ok(())) => committed += 1,
            (kind, other) => panic!("call {i} (kind {kind}) answered {other:?}"),
        }
    }
    assert_eq!(committed, 30);
    let report = assert_chain_intact(&*store).await;
    // The identity, the taken grant, and two events per committed grant with its lease.
    assert_eq!(report.entries, 1 + 1 + 2 * 30);
    assert_eq!(store.stats().await.unwrap().active_leases, 30);
}

/// Everything survives a restart, and the chain continues where it stopped.
pub async fn reopen_keeps_everything(store: Arc<dyn Store>, reopen: Reopen) {
    let i = create_identity(&*store, "durable", "team").await;
    let t = target("billing-api");
    store
        .create_target(
            &t,
            None,
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap();
    let at = now();
    let kept = issue(
        &*store,
        "durable",
        "team",
        "keep",
        at,
        Duration::minutes(5),
        false,
    )
    .await;
    let gone = issue(
        &*store,
        "durable",
        "team",
        "drop",
        at,
        Duration::minutes(5),
        false,
    )
    .await;
    store
        .revoke(
            &LeaseSelector::Task("drop".into()),
            RevocationReason::Admin,
            "operator",
            at,
        )
        .await
        .unwrap();
    let key = signing_key("k1", at);
    store
        .add_signing_key(&key, None, AuditDraft::new(AuditKind::KeyCreated, "system"))
        .await
        .unwrap();
    let before = assert_chain_intact(&*store).await;

    let store = reopen(store).await;
    assert_eq!(store.get_identity("durable").await.unwrap(), Some(i));
    assert_eq!(store.get_target("billing-api").await.unwrap(), Some(t));
    assert_eq!(lease(&*store, kept.lease.id).await, kept.lease);
    assert_eq!(
        lease(&*store, gone.lease.id).await.state,
        LeaseState::Revoked
    );
    assert_eq!(store.list_signing_keys().await.unwrap(), vec![key]);
    let after_reopen = assert_chain_intact(&*store).await;
    assert_eq!(after_reopen, before);

    let more = issue(
        &*store,
        "durable",
        "team",
        "more",
        now(),
        Duration::minutes(5),
        false,
    )
    .await;
    let report = assert_chain_intact(&*store).await;
    assert_eq!(report.entries, before.entries + 2);
    let events = store
        .list_audit(&AuditFilter {
            grant_id: Some(more.grant.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(events[0].seq, before.entries + 1);
    assert_eq!(Some(events[0].prev_hash.clone()), before.last_hash);
}

// --- keys, tokens, stats -----------------------------------------------------------------------

fn signing_key(kid: &str, at: OffsetDateTime) -> SigningKeyRecord {
    SigningKeyRecord {
        kid: kid.to_string(),
        alg: "EdDSA".to_string(),
        public_jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": kid, "kid": kid}),
        private_sealed: vec![1, 2, 3, kid.len() as u8],
        created_at: at,
        retired_at: None,
        publish_until: None,
    }
}

pub async fn signing_key_rotation(store: Arc<dyn Store>) {
    let store = &*store;
    assert!(store.list_signing_keys().await.unwrap().is_empty());
    let t0 = now();
    let k1 = signing_key("k1", t0);
    store
        .add_signing_key(&k1, None, AuditDraft::new(AuditKind::KeyCreated, "system"))
        .await
        .unwrap();
    let t1 = t0 + Duration::days(1);
    let until = t1 + Duration::hours(2);
    let k2 = signing_key("k2", t1);
    store
        .add_signing_key(
            &k2,
            Some(until),
            AuditDraft::new(AuditKind::KeyRotated, "operator"),
        )
        .await
        .unwrap();
    let keys = store.list_signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].kid, "k1");
    assert_eq!(keys[0].retired_at, Some(t1));
    assert_eq!(keys[0].publish_until, Some(until));
    assert_eq!(keys[1], k2);
    assert_eq!(keys.iter().filter(|k| k.retired_at.is_none()).count(), 1);

    // A second active key, or a kid reuse, is a conflict and changes nothing.
    let err = store
        .add_signing_key(
            &signing_key("k3", t1),
            None,
            AuditDraft::new(AuditKind::KeyCreated, "system"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let err = store
        .add_signing_key(
            &signing_key("k1", t1 + Duration::days(1)),
            Some(t1 + Duration::days(1)),
            AuditDraft::new(AuditKind::KeyRotated, "operator"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(store.list_signing_keys().await.unwrap(), keys);
    let report = assert_chain_intact(store).await;
    assert_eq!(report.entries, 2);
}

pub async fn operator_tokens(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(store.count_operator_tokens().await.unwrap(), 0);
    let hash = vec![0xab; 32];
    let tok = OperatorTokenRecord::new("admin", hash.clone(), now(), None, "system:first-start");
    store.add_operator_token(&tok).await.unwrap();
    assert_eq!(
        store.find_operator_token(&hash).await.unwrap(),
        Some(tok.clone())
    );
    assert_eq!(store.find_operator_token(&[0xcd; 32]).await.unwrap(), None);
    assert_eq!(store.count_operator_tokens().await.unwrap(), 1);

    // The same secret under another name: a conflict that does not echo the secret.
    let dup = OperatorTokenRecord {
        name: "second".into(),
        ..tok.clone()
    };
    let err = store.add_operator_token(&dup).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        !text.to_lowercase().contains("abab"),
        "secret in error: {text}"
    );
    assert_eq!(store.count_operator_tokens().await.unwrap(), 1);
    store.ping().await.unwrap();
}

pub async fn stats_count(store: Arc<dyn Store>) {
    let store = &*store;
    assert_eq!(store.stats().await.unwrap(), Default::default());
    create_identity(store, "agent", "team").await;
    let at = now();
    for i in 0..4 {
        issue(
            store,
            "agent",
            "team",
            "s",
            at,
            Duration::minutes(5),
            i % 2 == 0,
        )
        .await;
    }
    store
        .revoke(
            &LeaseSelector::Task("s".into()),
            RevocationReason::Admin,
            "operator",
            at,
        )
        .await
        .unwrap();
    issue(
        store,
        "agent",
        "team",
        "s2",
        at,
        Duration::minutes(5),
        false,
    )
    .await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.active_leases, 1);
    assert_eq!(stats.revoking_leases, 2);
    assert_eq!(stats.audit_entries, 1 + 5 * 2 + 4);
    assert_chain_intact(store).await;
}

/// Sealed admin secrets are stored with their target, replaced on rotation, and never
/// exist for an unknown target.
pub async fn target_secrets(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let mut pg = target("pg-main");
    pg.kind = "postgres".into();
    store
        .create_target(
            &pg,
            Some(b"sealed-v1"),
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap();
    store
        .create_target(
            &target("api"),
            None,
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_target_secret("pg-main").await.unwrap().as_deref(),
        Some(&b"sealed-v1"[..])
    );
    assert_eq!(store.get_target_secret("api").await.unwrap(), None);
    assert_eq!(store.get_target_secret("nope").await.unwrap(), None);
    store
        .set_target_secret(
            "pg-main",
            b"sealed-v2",
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_target_secret("pg-main").await.unwrap().as_deref(),
        Some(&b"sealed-v2"[..])
    );
    let err = store
        .set_target_secret(
            "nope",
            b"x",
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "target", .. }),
        "{err:?}"
    );
    // A conflicting create stores neither the target nor its secret.
    let err = store
        .create_target(
            &pg,
            Some(b"other"),
            AuditDraft::new(AuditKind::TargetCreated, "operator"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        store.get_target_secret("pg-main").await.unwrap().as_deref(),
        Some(&b"sealed-v2"[..])
    );
    assert_chain_intact(store).await;
}

/// A root rotation is recorded before the target changes, at most one per target; committing
/// it makes it the admin secret, abandoning it keeps the old one; either ends only the
/// rotation that recorded that secret, and the record survives until one of them does.
pub async fn root_rotations(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let rotated = || AuditDraft::new(AuditKind::TargetRootRotated, "operator");
    for name in ["pg-a", "pg-b"] {
        let mut t = target(name);
        t.kind = "postgres".into();
        store
            .create_target(
                &t,
                Some(b"old"),
                AuditDraft::new(AuditKind::TargetCreated, "operator"),
            )
            .await
            .unwrap();
    }
    assert_eq!(store.pending_root_rotations().await.unwrap(), vec![]);
    let before = now();
    store.begin_root_rotation("pg-b", b"next-b").await.unwrap();
    store.begin_root_rotation("pg-a", b"next-a").await.unwrap();
    // One at a time per target: a second rotation would hide the first's candidate.
    let err = store
        .begin_root_rotation("pg-a", b"other")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let err = store.begin_root_rotation("nope", b"x").await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "target", .. }),
        "{err:?}"
    );
    let pending = store.pending_root_rotations().await.unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|p| (p.target.as_str(), p.sealed.as_slice()))
            .collect::<Vec<_>>(),
        vec![("pg-a", &b"next-a"[..]), ("pg-b", &b"next-b"[..])]
    );
    assert!(pending[0].started_at >= before - time::Duration::seconds(1));
    // Recording the candidate does not touch the admin secret in use.
    assert_eq!(
        store.get_target_secret("pg-a").await.unwrap().as_deref(),
        Some(&b"old"[..])
    );

    // Abandoning names the secret: another process's (or a later) rotation stays.
    let err = store
        .abandon_root_rotation("pg-a", b"other", rotated())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(store.pending_root_rotations().await.unwrap().len(), 2);

    store
        .commit_root_rotation("pg-a", b"next-a", rotated())
        .await
        .unwrap();
    assert_eq!(
        store.get_target_secret("pg-a").await.unwrap().as_deref(),
        Some(&b"next-a"[..])
    );
    store
        .abandon_root_rotation("pg-b", b"next-b", rotated())
        .await
        .unwrap();
    assert_eq!(
        store.get_target_secret("pg-b").await.unwrap().as_deref(),
        Some(&b"old"[..])
    );
    assert_eq!(store.pending_root_rotations().await.unwrap(), vec![]);
    // Resolved twice (by two replicas): the commit is idempotent, the abandon says so.
    store
        .commit_root_rotation("pg-a", b"next-a", rotated())
        .await
        .unwrap();
    let err = store
        .abandon_root_rotation("pg-b", b"next-b", rotated())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let err = store
        .commit_root_rotation("nope", b"x", rotated())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { what: "target", .. }),
        "{err:?}"
    );
    // A new rotation may start once the last one is resolved.
    store.begin_root_rotation("pg-a", b"again").await.unwrap();
    let kinds: Vec<AuditKind> = store
        .list_audit(&AuditFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == AuditKind::TargetRootRotated)
            .count(),
        3,
        "each resolution is audited, a refused one is not"
    );
    assert_chain_intact(store).await;
}

/// Records an approved grant with a write-ahead (`creating`) external lease.
async fn write_ahead(store: &dyn Store, who: &str, task: &str, username: &str) -> Issued {
    let at = now();
    let mut g = grant(who, "team-a", task, at);
    g.state = GrantState::Approved;
    let mut l = lease_for(
        &g,
        at,
        at + Duration::minutes(10),
        at + Duration::hours(1),
        true,
    );
    l.state = LeaseState::Creating;
    l.provider_state = json!({"username": username});
    store
        .record_grant(&g, Some(&l), grant_events(&g, None))
        .await
        .unwrap_or_else(|e| panic!("write-ahead record for {task}: {e}"));
    Issued { grant: g, lease: l }
}

/// Write-ahead issuance: a `creating` lease becomes `active` (grant `issued`) once the
/// credential exists, or is closed (grant `failed`) when issuance failed.
pub async fn write_ahead_leases(store: Arc<dyn Store>) {
    let store = store.as_ref();
    create_identity(store, "svc", "team-a").await;
    let ok = write_ahead(store, "svc", "t-ok", "mayfly_svc_a").await;
    let cleaned = write_ahead(store, "svc", "t-cleaned", "mayfly_svc_b").await;
    let unsure = write_ahead(store, "svc", "t-unsure", "mayfly_svc_c").await;
    let live = store.live_provider_states("billing-api").await.unwrap();
    assert_eq!(live.len(), 3, "creating leases are live: {live:?}");

    let issued = AuditDraft::new(AuditKind::LeaseIssued, "identity:svc");
    let active = store
        .activate_lease(
            ok.lease.id,
            &json!({"username": "mayfly_svc_a", "host": "db"}),
            issued,
        )
        .await
        .unwrap();
    assert_eq!(active.state, LeaseState::Active);
    assert_eq!(active.provider_state["host"], "db");
    assert_eq!(lease(store, ok.lease.id).await.state, LeaseState::Active);
    assert_eq!(grant_of(store, ok.grant.id).await.state, GrantState::Issued);
    let again = store
        .activate_lease(
            ok.lease.id,
            &json!({}),
            AuditDraft::new(AuditKind::LeaseIssued, "x"),
        )
        .await
        .unwrap_err();
    assert!(is_rejected_lease(&again), "{again:?}");

    let closed = store
        .abandon_lease(
            cleaned.lease.id,
            true,
            "target refused",
            "identity:svc",
            now(),
        )
        .await
        .unwrap();
    assert_eq!(closed.state, LeaseState::Revoked);
    assert_eq!(closed.revocation_reason, Some(RevocationReason::TaskFailed));
    assert_eq!(closed.last_error.as_deref(), Some("target refused"));
    assert_eq!(
        grant_of(store, cleaned.grant.id).await.state,
        GrantState::Failed
    );

    let pending = store
        .abandon_lease(unsure.lease.id, false, "timeout", "identity:svc", now())
        .await
        .unwrap();
    assert_eq!(pending.state, LeaseState::Revoking);
    assert_eq!(
        grant_of(store, unsure.grant.id).await.state,
        GrantState::Failed
    );
    let err = store
        .abandon_lease(unsure.lease.id, true, "again", "x", now())
        .await
        .unwrap_err();
    assert!(is_rejected_lease(&err), "{err:?}");

    let mut live: Vec<String> = store
        .live_provider_states("billing-api")
        .await
        .unwrap()
        .iter()
        .map(|s| s["username"].as_str().unwrap().to_string())
        .collect();
    live.sort();
    assert_eq!(live, ["mayfly_svc_a", "mayfly_svc_c"]);
    let kinds: Vec<AuditKind> = all_audit(
        store,
        AuditFilter {
            task: Some("t-cleaned".into()),
            ..Default::default()
        },
    )
    .await
    .iter()
    .map(|e| e.kind)
    .collect();
    assert_eq!(
        kinds,
        [
            AuditKind::GrantDecided,
            AuditKind::GrantFailed,
            AuditKind::LeaseRevoked
        ]
    );
    assert_chain_intact(store).await;
}

/// Reconciliation's question: which account names did leases *of this target* record,
/// and is one of those leases live. Another target's leases (even naming the same user)
/// and names nobody recorded never count.
pub async fn recorded_usernames_per_target(store: Arc<dyn Store>) {
    let store = store.as_ref();
    create_identity(store, "svc", "team-a").await;
    let live = write_ahead(store, "svc", "t-live", "mf_live").await;
    let ended = write_ahead(store, "svc", "t-ended", "mf_ended").await;
    store
        .abandon_lease(
            ended.lease.id,
            true,
            "target refused",
            "identity:svc",
            now(),
        )
        .await
        .unwrap();
    // The same name issued twice (a reused template): one live lease keeps it live.
    let twice = write_ahead(store, "svc", "t-twice-1", "mf_twice").await;
    store
        .abandon_lease(twice.lease.id, true, "x", "identity:svc", now())
        .await
        .unwrap();
    write_ahead(store, "svc", "t-twice-2", "mf_twice").await;
    // Another target on the same server: a live lease naming `mf_ended` and its own user.
    for (task, username) in [("t-other-1", "mf_ended"), ("t-other-2", "mf_other")] {
        let at = now();
        let mut g = grant("svc", "team-a", task, at);
        g.target = "other-db".into();
        g.state = GrantState::Approved;
        let mut l = lease_for(
            &g,
            at,
            at + Duration::minutes(10),
            at + Duration::hours(1),
            true,
        );
        l.state = LeaseState::Creating;
        l.provider_state = json!({ "username": username });
        store
            .record_grant(&g, Some(&l), grant_events(&g, None))
            .await
            .unwrap();
    }
    // A token lease of the same target has no username at all.
    let at = now();
    let g = grant("svc", "team-a", "t-token", at);
    let token = lease_for(
        &g,
        at,
        at + Duration::minutes(10),
        at + Duration::hours(1),
        false,
    );
    store
        .record_grant(&g, Some(&token), grant_events(&g, Some(&token)))
        .await
        .unwrap();

    let ask: Vec<String> = [
        "mf_live",
        "mf_ended",
        "mf_twice",
        "mf_other",
        "mf_by_hand",
        "x'); DROP TABLE leases; --",
    ]
    .map(String::from)
    .to_vec();
    let here = store
        .recorded_names("billing-api", "username", &ask)
        .await
        .unwrap();
    assert_eq!(
        here.into_iter().collect::<Vec<_>>(),
        [
            ("mf_ended".to_string(), false),
            ("mf_live".to_string(), true),
            ("mf_twice".to_string(), true),
        ]
    );
    let other = store
        .recorded_names("other-db", "username", &ask)
        .await
        .unwrap();
    assert_eq!(
        other.into_iter().collect::<Vec<_>>(),
        [
            ("mf_ended".to_string(), true),
            ("mf_other".to_string(), true)
        ]
    );
    assert!(store
        .recorded_names("billing-api", "username", &[])
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .recorded_names("no-such-target", "username", &ask)
        .await
        .unwrap()
        .is_empty());
    // Ending the last live lease makes the name ended.
    store
        .abandon_lease(live.lease.id, true, "x", "identity:svc", now())
        .await
        .unwrap();
    let here = store
        .recorded_names("billing-api", "username", &["mf_live".to_string()])
        .await
        .unwrap();
    assert_eq!(here.get("mf_live"), Some(&false));

    // The key is the provider's: another key finds nothing recorded under it, and a key
    // that is not a plain name is refused rather than spliced into a JSON path.
    let by_other_key = store
        .recorded_names("billing-api", "user", &["mf_live".to_string()])
        .await
        .unwrap();
    assert!(by_other_key.is_empty(), "{by_other_key:?}");
    for bad in ["", "user.name", "a'b", "$", "Username"] {
        let err = store
            .recorded_names("billing-api", bad, &["mf_live".to_string()])
            .await;
        assert!(
            matches!(err, Err(StoreError::Backend(_))),
            "{bad:?}: {err:?}"
        );
    }
}

/// The revocation queue: claimed work is invisible to other workers until its claim runs
/// out, failures are counted and retried (never dropped), completion happens once.
pub async fn revocation_queue(store: Arc<dyn Store>) {
    let store = store.as_ref();
    create_identity(store, "svc", "team-a").await;
    let t0 = now();
    let a = issue(
        store,
        "svc",
        "team-a",
        "t-a",
        t0,
        Duration::minutes(10),
        true,
    )
    .await;
    let b = issue(
        store,
        "svc",
        "team-a",
        "t-b",
        t0,
        Duration::minutes(10),
        true,
    )
    .await;
    let ttl = issue(
        store,
        "svc",
        "team-a",
        "t-ttl",
        t0 - Duration::minutes(20),
        Duration::minutes(10),
        true,
    )
    .await;
    store
        .revoke(
            &LeaseSelector::Task("t-a".into()),
            RevocationReason::Admin,
            "operator",
            t0,
        )
        .await
        .unwrap();
    store
        .revoke(
            &LeaseSelector::Task("t-b".into()),
            RevocationReason::TaskComplete,
            "operator",
            t0,
        )
        .await
        .unwrap();
    let expired = store.expire_due(t0, 10).await.unwrap();
    assert_eq!(
        expired.iter().map(|l| l.id).collect::<Vec<_>>(),
        [ttl.lease.id]
    );
    assert_eq!(expired[0].state, LeaseState::Revoking);

    let claimed = store
        .claim_revocations(t0, 10, Duration::seconds(30))
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = claimed.iter().map(|l| l.id).collect();
    ids.sort();
    let mut expected = vec![a.lease.id, b.lease.id, ttl.lease.id];
    expected.sort();
    assert_eq!(ids, expected);
    assert!(
        store
            .claim_revocations(t0, 10, Duration::seconds(30))
            .await
            .unwrap()
            .is_empty(),
        "claimed work is hidden"
    );
    // A claim that runs out (a dead worker) makes the work due again.
    let later = store
        .claim_revocations(t0 + Duration::seconds(31), 10, Duration::seconds(30))
        .await
        .unwrap();
    assert_eq!(later.len(), 3);

    // Failure: counted, kept, retried at the given time.
    let retry_at = t0 + Duration::seconds(40);
    store
        .revocation_failed(
            a.lease.id,
            "connection refused",
            retry_at,
            "system:revoker",
            t0,
        )
        .await
        .unwrap();
    let failed = lease(store, a.lease.id).await;
    assert_eq!(
        (failed.state, failed.revoke_attempts),
        (LeaseState::Revoking, 1)
    );
    assert_eq!(failed.last_error.as_deref(), Some("connection refused"));
    assert!(store
        .claim_revocations(t0 + Duration::seconds(39), 10, Duration::seconds(30))
        .await
        .unwrap()
        .iter()
        .all(|l| l.id != a.lease.id));
    let due = store
        .claim_revocations(retry_at, 10, Duration::seconds(30))
        .await
        .unwrap();
    assert!(due.iter().any(|l| l.id == a.lease.id));
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.revoking_leases, 3);

    // Completion: once, to revoked (or expired for the TTL), with its grant.
    let done = store
        .complete_revocation(a.lease.id, "system:revoker", t0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state, done.last_error.clone()),
        (LeaseState::Revoked, None)
    );
    assert_eq!(
        store
            .complete_revocation(a.lease.id, "system:revoker", t0)
            .await
            .unwrap(),
        None
    );
    let err = store
        .revocation_failed(a.lease.id, "late", t0, "system:revoker", t0)
        .await
        .unwrap_err();
    assert!(is_rejected_lease(&err), "{err:?}");
    let done = store
        .complete_revocation(ttl.lease.id, "system:revoker", t0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.state, LeaseState::Expired);
    assert_eq!(
        grant_of(store, ttl.grant.id).await.state,
        GrantState::Expired
    );
    store
        .complete_revocation(b.lease.id, "system:revoker", t0)
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .claim_revocations(t0 + Duration::hours(1), 10, Duration::seconds(30))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.stats().await.unwrap().revoking_leases, 0);

    let story: Vec<AuditKind> = all_audit(
        store,
        AuditFilter {
            task: Some("t-a".into()),
            ..Default::default()
        },
    )
    .await
    .iter()
    .map(|e| e.kind)
    .collect();
    assert_eq!(
        story,
        [
            AuditKind::GrantDecided,
            AuditKind::LeaseIssued,
            AuditKind::LeaseRevoking,
            AuditKind::LeaseRevokeFailed,
            AuditKind::LeaseRevoked
        ]
    );
    assert_chain_intact(store).await;
}

// --- operator token lifecycle; changing and deleting identities and targets -----------------

fn token_record(
    name: &str,
    byte: u8,
    at: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
) -> OperatorTokenRecord {
    OperatorTokenRecord::new(name, vec![byte; 32], at, expires_at, "operator:admin")
}

fn token_event(kind: AuditKind, name: &str) -> AuditDraft {
    AuditDraft::new(kind, "operator:admin").detail(json!({ "name": name }))
}

pub async fn operator_token_lifecycle(store: Arc<dyn Store>) {
    let store = &*store;
    let at = now();
    let day = Duration::days(1);
    store
        .add_operator_token(&OperatorTokenRecord::new(
            "bootstrap",
            vec![1; 32],
            at - day,
            None,
            "system:first-start",
        ))
        .await
        .unwrap();
    let ci = token_record("ci", 2, at, Some(at + day * 90));
    store
        .create_operator_token(&ci, token_event(AuditKind::OperatorTokenCreated, "ci"))
        .await
        .unwrap();
    assert_eq!(
        store.find_operator_token(&[2; 32]).await.unwrap(),
        Some(ci.clone())
    );

    // A live token's name is taken; the refusal names it, never the hash.
    let err = store
        .create_operator_token(
            &token_record("ci", 3, at, None),
            token_event(AuditKind::OperatorTokenCreated, "ci"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { id, .. } if id == "ci"),
        "{err:?}"
    );
    assert!(!format!("{err:?}").contains("0303"), "{err:?}");

    // An expired, never revoked token gives its name up to a new one and is kept, revoked
    // by the new one's creator.
    let old = token_record("deploy", 4, at - day * 10, Some(at - day));
    store.add_operator_token(&old).await.unwrap();
    let new = token_record("deploy", 5, at, Some(at + day));
    store
        .create_operator_token(&new, token_event(AuditKind::OperatorTokenCreated, "deploy"))
        .await
        .unwrap();
    let old_now = store.find_operator_token(&[4; 32]).await.unwrap().unwrap();
    assert_eq!(old_now.revoked_at, Some(at));
    assert_eq!(old_now.revoked_by.as_deref(), Some("operator:admin"));
    assert!(store
        .find_operator_token(&[5; 32])
        .await
        .unwrap()
        .unwrap()
        .is_live_at(at));

    // Listing: every token, oldest first, with what was recorded.
    let listed = store.list_operator_tokens().await.unwrap();
    let names: Vec<(&str, bool)> = listed
        .iter()
        .map(|t| (t.name.as_str(), t.revoked_at.is_some()))
        .collect();
    assert_eq!(
        names,
        [
            ("deploy", true),
            ("bootstrap", false),
            ("ci", false),
            ("deploy", false)
        ]
    );
    assert_eq!(listed[2], ci);

    // Revocation: unknown names are NotFound; a revoked token is kept, with who and when.
    let err = store
        .revoke_operator_token(
            "nobody",
            false,
            at,
            token_event(AuditKind::OperatorTokenRevoked, "nobody"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    let revoked = store
        .revoke_operator_token(
            "ci",
            false,
            at,
            token_event(AuditKind::OperatorTokenRevoked, "ci"),
        )
        .await
        .unwrap();
    assert_eq!(revoked.revoked_at, Some(at));
    assert_eq!(revoked.revoked_by.as_deref(), Some("operator:admin"));
    assert_eq!(
        store.find_operator_token(&[2; 32]).await.unwrap(),
        Some(revoked)
    );
    let err = store
        .revoke_operator_token(
            "ci",
            false,
            at,
            token_event(AuditKind::OperatorTokenRevoked, "ci"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { .. }),
        "revoked twice: {err:?}"
    );
    // The name is free again.
    store
        .create_operator_token(
            &token_record("ci", 6, at, Some(at + day)),
            token_event(AuditKind::OperatorTokenCreated, "ci"),
        )
        .await
        .unwrap();

    // The last live token is kept unless forced. Live now: bootstrap, deploy(5), ci(6).
    for name in ["bootstrap", "deploy"] {
        store
            .revoke_operator_token(
                name,
                false,
                at,
                token_event(AuditKind::OperatorTokenRevoked, name),
            )
            .await
            .unwrap();
    }
    let err = store
        .revoke_operator_token(
            "ci",
            false,
            at,
            token_event(AuditKind::OperatorTokenRevoked, "ci"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Rejected(CoreError::Invalid { reason, .. }) if reason.contains("last live operator token")),
        "{err:?}"
    );
    assert!(store
        .find_operator_token(&[6; 32])
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_none());
    store
        .revoke_operator_token(
            "ci",
            true,
            at,
            token_event(AuditKind::OperatorTokenRevoked, "ci"),
        )
        .await
        .unwrap();
    // Every token ever recorded still counts: a start never bootstraps this broker again.
    assert_eq!(store.count_operator_tokens().await.unwrap(), 5);

    let kinds: Vec<AuditKind> = all_audit(store, AuditFilter::default())
        .await
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == AuditKind::OperatorTokenCreated)
            .count(),
        3
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == AuditKind::OperatorTokenRevoked)
            .count(),
        4
    );
    assert_chain_intact(store).await;
}

pub async fn update_and_delete_identity(store: Arc<dyn Store>) {
    let store = &*store;
    let at = now();
    let before = create_identity(store, "agent", "team-a").await;
    let mut changed = before.clone();
    changed.owner = "team-b".into();
    changed.purpose = "new purpose".into();
    changed.expires_at = Some(at + Duration::days(7));
    changed.labels = BTreeMap::from([("tier".to_string(), "1".to_string())]);
    // What update must not touch, even if the caller's copy says otherwise.
    changed.enabled = false;
    changed.created_at = at + Duration::days(1);
    let updated = store
        .update_identity(
            &changed,
            AuditDraft::new(AuditKind::IdentityUpdated, "operator"),
        )
        .await
        .unwrap();
    assert_eq!(updated.owner, "team-b");
    assert_eq!(updated.purpose, "new purpose");
    assert_eq!(updated.expires_at, changed.expires_at);
    assert_eq!(updated.labels, changed.labels);
    assert!(updated.enabled);
    assert_eq!(updated.created_at, before.created_at);
    // Readers see the change at once (no stale cached copy).
    assert_eq!(
        store.get_identity("agent").await.unwrap(),
        Some(updated.clone())
    );
    let err = store
        .update_identity(
            &identity("ghost", "t"),
            AuditDraft::new(AuditKind::IdentityUpdated, "operator"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    // Live leases (here an active token and an external one still being revoked) block the
    // deletion; ended ones do not.
    let ttl = Duration::minutes(10);
    let token = issue(store, "agent", "team-b", "job-1", at, ttl, false).await;
    let external = issue(store, "agent", "team-b", "job-2", at, ttl, true).await;
    let delete = || AuditDraft::new(AuditKind::IdentityDeleted, "operator");
    let err = store.delete_identity("agent", delete()).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Rejected(CoreError::Invalid { reason, .. }) if reason.contains("2 live lease")),
        "{err:?}"
    );
    store
        .revoke(
            &LeaseSelector::Identity("agent".into()),
            RevocationReason::Admin,
            "operator",
            at,
        )
        .await
        .unwrap();
    let err = store.delete_identity("agent", delete()).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Rejected(CoreError::Invalid { reason, .. }) if reason.contains("1 live lease")),
        "a revocation still pending blocks: {err:?}"
    );
    store
        .complete_revocation(external.lease.id, "system:revoker", at)
        .await
        .unwrap();
    store.delete_identity("agent", delete()).await.unwrap();
    assert_eq!(store.get_identity("agent").await.unwrap(), None);
    assert!(store.list_identities().await.unwrap().is_empty());
    let err = store.delete_identity("agent", delete()).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    // History stays readable: its grants, leases and audit entries.
    assert_eq!(
        lease(store, token.lease.id).await.state,
        LeaseState::Revoked
    );
    assert_eq!(grant_of(store, token.grant.id).await.identity, "agent");
    let trail = all_audit(
        store,
        AuditFilter {
            identity: Some("agent".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(trail.iter().any(|e| e.kind == AuditKind::LeaseIssued));
    // The id can be registered again.
    create_identity(store, "agent", "team-c").await;
    assert_chain_intact(store).await;
}

pub async fn update_and_delete_target(store: Arc<dyn Store>) {
    let store = &*store;
    let at = now();
    let created = AuditDraft::new(AuditKind::TargetCreated, "operator");
    let before = target("billing-api");
    store
        .create_target(&before, Some(b"sealed-admin"), created.clone())
        .await
        .unwrap();
    let mut changed = before.clone();
    changed.actions = vec!["read".into()];
    changed.default_ttl = Ttl::from_secs(60);
    changed.max_ttl = Ttl::from_secs(120);
    changed.allow = vec!["agent".into()];
    changed.settings = json!({"audience": "new"});
    // Not changed by an update.
    changed.kind = "postgres".into();
    changed.created_at = at + Duration::days(1);
    let updated = store
        .update_target(
            &changed,
            AuditDraft::new(AuditKind::TargetUpdated, "operator"),
        )
        .await
        .unwrap();
    assert_eq!(updated.actions, changed.actions);
    assert_eq!(updated.default_ttl, changed.default_ttl);
    assert_eq!(updated.max_ttl, changed.max_ttl);
    assert_eq!(updated.allow, changed.allow);
    assert_eq!(updated.settings, changed.settings);
    assert_eq!(updated.kind, "token");
    assert_eq!(updated.created_at, before.created_at);
    assert_eq!(
        store.get_target("billing-api").await.unwrap(),
        Some(updated)
    );
    assert_eq!(
        store
            .get_target_secret("billing-api")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"sealed-admin"[..]),
        "an update keeps the admin secret"
    );
    let err = store
        .update_target(
            &target("ghost"),
            AuditDraft::new(AuditKind::TargetUpdated, "operator"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");

    // The grant fixture's target is billing-api. Live leases block; a pending revocation
    // too (the revocation worker needs the target to finish it).
    let ttl = Duration::minutes(10);
    let token = issue(store, "agent", "team", "job-1", at, ttl, false).await;
    let external = issue(store, "agent", "team", "job-2", at, ttl, true).await;
    let other = {
        let mut g = grant("agent", "team", "job-3", at);
        g.target = "analytics".into();
        let l = lease_for(&g, at, at + ttl, at + ttl * 2, false);
        store
            .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
            .await
            .unwrap();
        l
    };
    let delete = || AuditDraft::new(AuditKind::TargetDeleted, "operator");
    let err = store
        .delete_target("billing-api", delete())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Rejected(CoreError::Invalid { reason, .. }) if reason.contains("2 live lease")),
        "{err:?}"
    );
    let outcome = store
        .revoke(
            &LeaseSelector::Target("billing-api".into()),
            RevocationReason::Admin,
            "operator",
            at,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome,
        RevokeOutcome {
            revoked: 1,
            revoking: 1
        }
    );
    assert_eq!(
        lease(store, other.id).await.state,
        LeaseState::Active,
        "other targets untouched"
    );
    let err = store
        .delete_target("billing-api", delete())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Rejected(CoreError::Invalid { reason, .. }) if reason.contains("1 live lease")),
        "{err:?}"
    );
    store
        .complete_revocation(external.lease.id, "system:revoker", at)
        .await
        .unwrap();

    // A root rotation still being settled blocks too: it holds a secret the target may have.
    store
        .begin_root_rotation("billing-api", b"next")
        .await
        .unwrap();
    let err = store
        .delete_target("billing-api", delete())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    store
        .abandon_root_rotation(
            "billing-api",
            b"next",
            AuditDraft::new(AuditKind::TargetRootRotated, "operator"),
        )
        .await
        .unwrap();

    store.delete_target("billing-api", delete()).await.unwrap();
    assert_eq!(store.get_target("billing-api").await.unwrap(), None);
    assert_eq!(store.get_target_secret("billing-api").await.unwrap(), None);
    let err = store
        .delete_target("billing-api", delete())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    // History stays; the name can be used again, without the old secret.
    assert_eq!(
        lease(store, token.lease.id).await.state,
        LeaseState::Revoked
    );
    assert_eq!(
        lease(store, external.lease.id).await.state,
        LeaseState::Revoked
    );
    store
        .create_target(&target("billing-api"), None, created)
        .await
        .unwrap();
    assert_eq!(store.get_target_secret("billing-api").await.unwrap(), None);
    assert_chain_intact(store).await;
}

/// A token lease of `who` for `task` on `target`, issued now.
async fn issue_on(store: &dyn Store, target: &str, who: &str, task: &str) -> Issued {
    let at = now();
    let mut g = grant(who, "team", task, at);
    g.target = target.to_string();
    let l = lease_for(
        &g,
        at,
        at + Duration::minutes(10),
        at + Duration::hours(1),
        false,
    );
    store
        .record_grant(&g, Some(&l), grant_events(&g, Some(&l)))
        .await
        .unwrap_or_else(|e| panic!("record_grant for {who}/{target}: {e}"));
    Issued { grant: g, lease: l }
}

/// Leases listed by target; revoked by target, by target-name prefix (literal: `_` is no
/// wildcard, and the prefix must start the name), and by one identity's task, each
/// exactly once and audited once.
pub async fn revoke_by_target_prefix_and_identity_task(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "w1", "team").await;
    create_identity(store, "w2", "team").await;
    let a = issue_on(store, "billing-api", "w1", "t1").await;
    let b = issue_on(store, "billing-db", "w2", "t2").await;
    let c = issue_on(store, "billing", "w1", "t2").await;
    let d = issue_on(store, "ops-billing-api", "w1", "t1").await;
    let e = issue_on(store, "bxa", "w2", "t1").await;
    let f = issue_on(store, "ops-api", "w2", "t1").await;
    let g = issue_on(store, "ops-api", "w2", "t2").await;
    let all = [&a, &b, &c, &d, &e, &f, &g];

    let listed: HashSet<Uuid> = store
        .list_leases(&LeaseFilter {
            target: Some("ops-api".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(listed, HashSet::from([f.lease.id, g.lease.id]));
    let listed_active = store
        .list_leases(&LeaseFilter {
            target: Some("billing".into()),
            state: Some(LeaseState::Active),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed_active, vec![c.lease.clone()]);

    let steps: Vec<(LeaseSelector, Vec<&Issued>)> = vec![
        (LeaseSelector::TargetPrefix("b_".into()), vec![]),
        (LeaseSelector::TargetPrefix("billing-".into()), vec![&a, &b]),
        (
            LeaseSelector::IdentityTask {
                identity: "w2".into(),
                task: "t1".into(),
            },
            vec![&e, &f],
        ),
        (LeaseSelector::Target("ops-api".into()), vec![&g]),
        (LeaseSelector::Target("no-such-target".into()), vec![]),
    ];
    let mut ended = HashSet::new();
    for (selector, expected) in steps {
        let outcome = store
            .revoke(&selector, RevocationReason::Admin, "operator", now())
            .await
            .unwrap();
        assert_eq!(
            outcome,
            RevokeOutcome {
                revoked: expected.len() as u64,
                revoking: 0
            },
            "{selector}"
        );
        ended.extend(expected.iter().map(|i| i.lease.id));
        for i in all {
            let l = lease(store, i.lease.id).await;
            let want = if ended.contains(&i.lease.id) {
                LeaseState::Revoked
            } else {
                LeaseState::Active
            };
            assert_eq!(l.state, want, "after {selector}: lease on {}", l.target);
        }
        let again = store
            .revoke(&selector, RevocationReason::Admin, "operator", now())
            .await
            .unwrap();
        assert_eq!(again, RevokeOutcome::default(), "{selector}: twice");
    }
    for i in all {
        let events = store
            .list_audit(&AuditFilter {
                grant_id: Some(i.grant.id),
                ..Default::default()
            })
            .await
            .unwrap();
        let revoked = events
            .iter()
            .filter(|e| e.kind == AuditKind::LeaseRevoked)
            .count();
        let want = usize::from(ended.contains(&i.lease.id));
        assert_eq!(revoked, want, "lease on {}", i.lease.target);
    }
    assert_chain_intact(store).await;
}

fn task(identity: &str, parent: Option<Uuid>, at: OffsetDateTime, deadline: Duration) -> Task {
    Task {
        id: Uuid::new_v4(),
        identity: identity.into(),
        owner: "team".into(),
        purpose: "nightly export".into(),
        parent,
        state: TaskState::Open,
        // Whole milliseconds, as stored.
        deadline: mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(at + deadline)),
        created_at: mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(at)),
        ended_at: None,
    }
}

async fn open_task(store: &dyn Store, t: &Task) -> Result<(), StoreError> {
    let mut event = AuditDraft::new(AuditKind::TaskOpened, format!("identity:{}", t.identity))
        .detail(json!({"purpose": t.purpose}));
    event.identity = Some(t.identity.clone());
    event.task = Some(t.id.to_string());
    store.create_task(t, event).await
}

/// Tasks: created, read and listed; a child only under an open parent of the same
/// identity; ending a task ends its open children and revokes every live lease of each
/// with the end state's reason, audited; an ended task cannot end again; the deadline
/// sweep times out only due tasks and reports the next deadline.
pub async fn tasks_end_with_their_leases_and_children(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "w1", "team").await;
    create_identity(store, "w2", "team").await;
    let at = now();

    let parent = task("w1", None, at, Duration::minutes(30));
    open_task(store, &parent).await.unwrap();
    assert_eq!(
        store.get_task(parent.id).await.unwrap(),
        Some(parent.clone())
    );
    assert!(matches!(
        open_task(store, &parent).await,
        Err(StoreError::Conflict { .. })
    ));
    let child = task("w1", Some(parent.id), at, Duration::minutes(20));
    open_task(store, &child).await.unwrap();
    let foreign_child = task("w2", Some(parent.id), at, Duration::minutes(20));
    assert!(matches!(
        open_task(store, &foreign_child).await,
        Err(StoreError::Rejected(_))
    ));
    let orphan = task("w1", Some(Uuid::new_v4()), at, Duration::minutes(20));
    assert!(matches!(
        open_task(store, &orphan).await,
        Err(StoreError::NotFound { .. })
    ));
    let other = task("w2", None, at, Duration::minutes(5));
    open_task(store, &other).await.unwrap();

    let listed = store
        .list_tasks(&TaskFilter {
            identity: Some("w1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|t| t.id).collect::<HashSet<_>>(),
        HashSet::from([parent.id, child.id])
    );
    assert_eq!(
        store.next_task_deadline().await.unwrap(),
        Some(other.deadline)
    );

    let in_parent = issue(
        store,
        "w1",
        "team",
        &parent.id.to_string(),
        at,
        Duration::minutes(10),
        false,
    )
    .await;
    let in_child = issue(
        store,
        "w1",
        "team",
        &child.id.to_string(),
        at,
        Duration::minutes(10),
        true,
    )
    .await;
    let in_other = issue(
        store,
        "w2",
        "team",
        &other.id.to_string(),
        at,
        Duration::minutes(10),
        false,
    )
    .await;

    let end = at + Duration::seconds(1);
    let (ended, outcome) = store
        .end_task(parent.id, TaskState::Completed, Some(0), "identity:w1", end)
        .await
        .unwrap();
    assert_eq!(ended.state, TaskState::Completed);
    assert_eq!(
        outcome,
        RevokeOutcome {
            revoked: 1,
            revoking: 1
        }
    );
    let child_now = store.get_task(child.id).await.unwrap().unwrap();
    assert_eq!(child_now.state, TaskState::Completed);
    assert!(child_now.ended_at.is_some());
    let l = lease(store, in_parent.lease.id).await;
    assert_eq!(
        (l.state, l.revocation_reason),
        (LeaseState::Revoked, Some(RevocationReason::TaskComplete))
    );
    let l = lease(store, in_child.lease.id).await;
    assert_eq!(
        (l.state, l.revocation_reason),
        (LeaseState::Revoking, Some(RevocationReason::TaskComplete))
    );
    assert_eq!(
        lease(store, in_other.lease.id).await.state,
        LeaseState::Active
    );
    assert!(matches!(
        store
            .end_task(parent.id, TaskState::Failed, None, "identity:w1", end)
            .await,
        Err(StoreError::Rejected(_))
    ));
    assert!(matches!(
        store
            .end_task(Uuid::new_v4(), TaskState::Failed, None, "identity:w1", end)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    // A child cannot open under an ended parent.
    let late = task("w1", Some(parent.id), at, Duration::minutes(1));
    assert!(matches!(
        open_task(store, &late).await,
        Err(StoreError::Rejected(_))
    ));

    let ended_events: Vec<AuditEvent> = all_audit(store, AuditFilter::default())
        .await
        .into_iter()
        .filter(|e| e.kind == AuditKind::TaskEnded)
        .collect();
    assert_eq!(ended_events.len(), 2, "the task and its child each audited");
    let exit_statuses: Vec<Option<i64>> = ended_events
        .iter()
        .map(|e| e.detail.get("exit_status").and_then(|s| s.as_i64()))
        .collect();
    assert!(
        exit_statuses.contains(&Some(0)) && exit_statuses.contains(&None),
        "the exit status is reported on the ended task, not its child: {exit_statuses:?}"
    );

    // The sweep: nothing due before the deadline, then exactly the due task.
    assert!(store.expire_due_tasks(at, 10).await.unwrap().is_empty());
    let swept = store
        .expire_due_tasks(at + Duration::minutes(6), 10)
        .await
        .unwrap();
    assert_eq!(swept, vec![other.id]);
    assert_eq!(
        store.get_task(other.id).await.unwrap().unwrap().state,
        TaskState::TimedOut
    );
    let l = lease(store, in_other.lease.id).await;
    assert_eq!(
        (l.state, l.revocation_reason),
        (LeaseState::Revoked, Some(RevocationReason::TaskTimeout))
    );
    assert_eq!(store.next_task_deadline().await.unwrap(), None);
    assert_chain_intact(store).await;
}

fn approval_for(g: &Grant, needed: u32, at: OffsetDateTime, lasts: Duration) -> ApprovalRecord {
    ApprovalRecord {
        grant_id: g.id,
        state: ApprovalState::Pending,
        identity: g.identity.clone(),
        target: g.target.clone(),
        action: g.action.clone(),
        purpose: g.purpose.clone(),
        task: g.task.clone(),
        ttl: g.requested_ttl,
        needed,
        groups: vec!["db-owners".into()],
        requested_by: format!("identity:{}", g.identity),
        owner: g.owner.clone(),
        votes: Vec::new(),
        request_hash: "0".repeat(64),
        // Whole milliseconds, as stored.
        expires_at: mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(at + lasts)),
        created_at: mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(at)),
        approved_at: None,
    }
}

async fn request(store: &dyn Store, needed: u32, at: OffsetDateTime, lasts: Duration) -> Grant {
    let mut g = grant("w1", "team", "t-approval", at);
    g.state = GrantState::PendingApproval;
    g.granted_ttl = None;
    let approval = approval_for(&g, needed, at, lasts);
    let event = AuditDraft::new(AuditKind::ApprovalRequested, "identity:w1")
        .for_grant(&g)
        .detail(json!({"needed": needed}));
    store
        .request_approval(&g, &approval, vec![event])
        .await
        .unwrap();
    g
}

fn vote(approver: &str, approve: bool, at: OffsetDateTime) -> ApprovalVote {
    ApprovalVote {
        approver: approver.into(),
        approve,
        comment: "checked the change ticket".into(),
        groups: vec!["db-owners".into()],
        at: mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(at)),
    }
}

fn vote_event(approver: &str, g: &Grant) -> AuditDraft {
    AuditDraft::new(AuditKind::ApprovalGranted, approver)
        .for_grant(g)
        .detail(json!({"comment": "checked"}))
}

/// Approval requests: recorded with their grant; distinct approvers counted once, and of
/// many approvers racing only as many as needed count, exactly one completing it; a
/// refusal denies; an approved request is collected exactly once, even by racing
/// collectors; past its expiry a pending request is denied (`approval_timeout`) and an
/// approved, uncollected one expires.
pub async fn approvals_are_counted_and_collected_once(store: Arc<dyn Store>) {
    let store = &*store;
    create_identity(store, "w1", "team").await;
    let at = now();
    let g = request(store, 2, at, Duration::hours(1)).await;
    let recorded = store.get_approval(g.id).await.unwrap().unwrap();
    assert_eq!(recorded, approval_for(&g, 2, at, Duration::hours(1)));
    assert_eq!(
        store.get_grant(g.id).await.unwrap().unwrap().state,
        GrantState::PendingApproval
    );
    let pending = store
        .list_approvals(&ApprovalFilter {
            state: Some(ApprovalState::Pending),
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(
        pending.iter().map(|a| a.grant_id).collect::<Vec<_>>(),
        [g.id]
    );

    let when = at + Duration::seconds(1);
    let g = &g;
    let racing = (0..6).map(|i| {
        let who = format!("human:a{i}");
        async move {
            store
                .vote(g.id, &vote(&who, true, when), vote_event(&who, g), when)
                .await
        }
    });
    let results = futures::future::join_all(racing).await;
    let counted: Vec<&ApprovalRecord> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(counted.len(), 2, "{results:?}");
    assert_eq!(
        counted
            .iter()
            .filter(|a| a.state == ApprovalState::Approved)
            .count(),
        1,
        "exactly one approval completes the request"
    );
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, StoreError::Rejected(_))));
    assert_eq!(
        store.get_grant(g.id).await.unwrap().unwrap().state,
        GrantState::Approved
    );
    let approved = store.get_approval(g.id).await.unwrap().unwrap();
    assert_eq!(approved.approvers().len(), 2);
    assert!(approved.approved_at.is_some());

    // Collected once, however many collectors race.
    let lease = lease_for(
        g,
        when,
        when + Duration::minutes(10),
        when + Duration::hours(1),
        false,
    );
    let collectors = (0..3).map(|_| {
        let lease = Lease {
            id: Uuid::new_v4(),
            ..lease.clone()
        };
        async move { store.collect_approval(g.id, &lease, Vec::new(), when).await }
    });
    let collected = futures::future::join_all(collectors).await;
    assert_eq!(
        collected.iter().filter(|r| r.is_ok()).count(),
        1,
        "{collected:?}"
    );
    assert_eq!(
        store.get_approval(g.id).await.unwrap().unwrap().state,
        ApprovalState::Collected
    );

    // A refusal ends a request.
    let refused = request(store, 1, at, Duration::hours(1)).await;
    let answer = store
        .vote(
            refused.id,
            &vote("human:b", false, when),
            vote_event("human:b", &refused),
            when,
        )
        .await
        .unwrap();
    assert_eq!(answer.state, ApprovalState::Denied);
    assert_eq!(
        store.get_grant(refused.id).await.unwrap().unwrap().state,
        GrantState::Denied
    );
    assert!(matches!(
        store
            .vote(
                refused.id,
                &vote("human:c", true, when),
                vote_event("human:c", &refused),
                when
            )
            .await,
        Err(StoreError::Rejected(_))
    ));

    // Expiry: a pending request is denied, an approved one nobody collected expires; a
    // late vote is refused.
    let unanswered = request(store, 1, at, Duration::minutes(1)).await;
    let uncollected = request(store, 1, at, Duration::minutes(1)).await;
    store
        .vote(
            uncollected.id,
            &vote("human:d", true, when),
            vote_event("human:d", &uncollected),
            when,
        )
        .await
        .unwrap();
    let late = at + Duration::minutes(2);
    assert!(matches!(
        store
            .vote(
                unanswered.id,
                &vote("human:e", true, late),
                vote_event("human:e", &unanswered),
                late
            )
            .await,
        Err(StoreError::Rejected(_))
    ));
    let mut swept = store.expire_approvals(late, 10).await.unwrap();
    swept.sort();
    let mut want = vec![unanswered.id, uncollected.id];
    want.sort();
    assert_eq!(swept, want);
    assert_eq!(
        store.get_grant(unanswered.id).await.unwrap().unwrap().state,
        GrantState::Denied
    );
    assert_eq!(
        store
            .get_grant(uncollected.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        GrantState::Expired
    );
    assert!(store.expire_approvals(late, 10).await.unwrap().is_empty());
    let expired_events = all_audit(store, AuditFilter::default())
        .await
        .into_iter()
        .filter(|e| e.kind == AuditKind::ApprovalExpired)
        .count();
    assert_eq!(expired_events, 2);
    assert_chain_intact(store).await;
}
/// Webhook delivery cursors: a new cursor starts at the chain head; one holder at a time
/// (a claim lapses, a release frees it at once); only a running claim moves it, never
/// backwards; failures are counted, keep their first time and clear on success.
pub async fn webhook_cursors(store: Arc<dyn Store>) {
    let store = &*store;
    let ms = |t: OffsetDateTime| mayfly_core::from_unix_ms(mayfly_core::to_unix_ms(t));
    store
        .append_audit(vec![
            AuditDraft::new(AuditKind::AuthFailed, "anonymous"),
            AuditDraft::new(AuditKind::AuthFailed, "anonymous"),
        ])
        .await
        .unwrap();
    let t0 = ms(now());
    let claim_for = Duration::seconds(30);

    // Created at the head (seq 2), claimed by `a`.
    let c = store
        .claim_webhook("ops", "a", t0, t0 + claim_for)
        .await
        .unwrap()
        .expect("a new cursor is free");
    assert_eq!(
        c,
        WebhookCursor {
            name: "ops".into(),
            delivered_seq: 2,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            failing_since: None,
            claimed_by: Some("a".into()),
            claimed_until: Some(t0 + claim_for),
        }
    );
    // Another holder cannot take it while the claim runs, nor move it.
    assert_eq!(
        store
            .claim_webhook("ops", "b", t0, t0 + claim_for)
            .await
            .unwrap(),
        None
    );
    assert!(!store
        .advance_webhook("ops", "b", 3, t0, t0 + claim_for)
        .await
        .unwrap());
    assert!(!store
        .webhook_failed("ops", "b", "boom", t0, t0, t0 + claim_for)
        .await
        .unwrap());

    // The holder's failures: counted, the first failure's time kept.
    let t1 = t0 + Duration::seconds(1);
    assert!(store
        .webhook_failed(
            "ops",
            "a",
            "HTTP 500",
            t1 + Duration::seconds(2),
            t1,
            t1 + claim_for
        )
        .await
        .unwrap());
    let t2 = t0 + Duration::seconds(3);
    assert!(store
        .webhook_failed(
            "ops",
            "a",
            "timed out",
            t2 + Duration::seconds(4),
            t2,
            t2 + claim_for
        )
        .await
        .unwrap());
    // Renewing one's own claim reads the cursor back.
    let c = store
        .claim_webhook("ops", "a", t2, t2 + claim_for)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            c.attempts,
            c.last_error.as_deref(),
            c.failing_since,
            c.next_attempt_at
        ),
        (
            2,
            Some("timed out"),
            Some(t1),
            Some(t2 + Duration::seconds(4))
        )
    );
    assert_eq!(c.delivered_seq, 2);

    // Success moves it and clears the failures; it never moves backwards.
    assert!(store
        .advance_webhook("ops", "a", 5, t2, t2 + claim_for)
        .await
        .unwrap());
    assert!(!store
        .advance_webhook("ops", "a", 4, t2, t2 + claim_for)
        .await
        .unwrap());
    let c = store
        .claim_webhook("ops", "a", t2, t2 + claim_for)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            c.delivered_seq,
            c.attempts,
            c.last_error,
            c.failing_since,
            c.next_attempt_at
        ),
        (5, 0, None, None, None)
    );

    // A lapsed claim moves nothing, and another holder takes it over where it stood.
    let lapsed = t2 + claim_for + Duration::seconds(1);
    assert!(!store
        .advance_webhook("ops", "a", 6, lapsed, lapsed + claim_for)
        .await
        .unwrap());
    let c = store
        .claim_webhook("ops", "b", lapsed, lapsed + claim_for)
        .await
        .unwrap()
        .expect("a lapsed claim is free");
    assert_eq!((c.delivered_seq, c.claimed_by.as_deref()), (5, Some("b")));

    // Released, it is free at once; releasing what one does not hold changes nothing.
    store.release_webhook("ops", "a").await.unwrap();
    assert_eq!(
        store
            .claim_webhook("ops", "a", lapsed, lapsed + claim_for)
            .await
            .unwrap(),
        None
    );
    store.release_webhook("ops", "b").await.unwrap();
    let c = store
        .claim_webhook("ops", "a", lapsed, lapsed + claim_for)
        .await
        .unwrap()
        .expect("released");
    assert_eq!(c.delivered_seq, 5, "a claim never moves the cursor");

    // Cursors are per webhook; a later one starts at the head as it is then.
    store
        .append_audit(vec![AuditDraft::new(AuditKind::AuthFailed, "anonymous")])
        .await
        .unwrap();
    let other = store
        .claim_webhook("slack", "a", t0, t0 + claim_for)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.delivered_seq, 3);

    // Racing replicas: exactly one claim of a free cursor wins.
    let claims = racing_claims(store, "race", t0, t0 + claim_for).await;
    assert_eq!(claims, 1, "exactly one of the racing claims wins");
    assert_chain_intact(store).await;
}

async fn racing_claims(
    store: &dyn Store,
    name: &str,
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> usize {
    let holders: Vec<String> = (0..8).map(|i| format!("replica-{i}")).collect();
    let claims = holders
        .iter()
        .map(|h| store.claim_webhook(name, h, now, until));
    let mut won = 0;
    for result in futures::future::join_all(claims).await {
        if result.unwrap().is_some() {
            won += 1;
        }
    }
    won
}

/// Signed checkpoints: kept as given, the highest entry's is the latest, and keeping one
/// again (a tick with no new entry) changes nothing.
pub async fn audit_checkpoints(store: Arc<dyn Store>) {
    use mayfly_core::checkpoint::Checkpoint;
    let store = &*store;
    assert_eq!(store.latest_audit_checkpoint().await.unwrap(), None);
    let at = now();
    let checkpoint = |seq: u64, kid: &str| Checkpoint {
        seq,
        hash: format!("{seq:064x}"),
        at,
        kid: kid.into(),
        jws: format!("h.{seq}.{kid}"),
    };
    store
        .add_audit_checkpoint(&checkpoint(5, "k1"))
        .await
        .unwrap();
    store
        .add_audit_checkpoint(&checkpoint(9, "k1"))
        .await
        .unwrap();
    store
        .add_audit_checkpoint(&checkpoint(7, "k1"))
        .await
        .unwrap();
    assert_eq!(
        store.latest_audit_checkpoint().await.unwrap(),
        Some(checkpoint(9, "k1"))
    );
    let mut again = checkpoint(9, "k1");
    again.jws = "h.9.other".into();
    store.add_audit_checkpoint(&again).await.unwrap();
    assert_eq!(
        store.latest_audit_checkpoint().await.unwrap(),
        Some(checkpoint(9, "k1"))
    );
    // Unaudited: a checkpoint is about the chain, not an event in it.
    assert_eq!(store.verify_audit().await.unwrap().entries, 0);
}
