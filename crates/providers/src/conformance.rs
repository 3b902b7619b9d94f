//! The provider conformance suite: what every account-per-lease provider must do against
//! its real target, written once. A provider's tests implement [`Engine`] for it (set up
//! an isolated target and admin account, connect as an issued user, inspect the target as
//! its superuser) and run everything with one call, [`provider_suite!`](crate::provider_suite):
//! issue, the credential works with exactly its action's rights, renew, revoke ends open
//! sessions and the credential stops working, revoke twice, concurrent issues,
//! reconciliation drops only proven strays, root rotation (also interrupted), a target
//! that is down, and no secret in any error.
//!
//! Isolation: every test makes its own database and admin user with a random suffix, and
//! its own username prefix, so tests run in parallel and reconciliation in one test never
//! sees another test's users. A [`Guard`] drops all of it at the end, also on failure.
//! A target system that is not running skips the suite (or fails it under
//! `MAYFLY_REQUIRE_SERVICES=1`).
//!
//! Enable with the `conformance` feature from a provider's tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::model::{Grant, GrantState, Identity, IdentityKind, Lease, LeaseState, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Ledger, Provider, ProviderError, Recorded, TargetAccess,
};
use mayfly_core::secret::SecretString;
use mayfly_testkit::{eventually_every, services};
use time::OffsetDateTime;

/// An isolated playground on one engine.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub suffix: String,
    pub database: String,
    pub admin_user: String,
    pub admin_password: String,
    /// Fixed part of the username template; the admin's name starts with it too, so
    /// every reconciliation also checks the admin is never a candidate.
    pub prefix: String,
    pub target: Target,
    pub admin: SecretString,
}

impl Fixture {
    pub fn access(&self) -> TargetAccess<'_> {
        TargetAccess {
            target: &self.target,
            admin: Some(&self.admin),
        }
    }
}

/// Every scenario as a test over one [`Engine`]: `provider_suite!(my_tests::Redis);`.
#[macro_export]
macro_rules! provider_suite {
    ($engine:ty) => {
        $crate::provider_suite!(@tests $engine;
            lifecycle,
            concurrent,
            reconcile,
            passwords_travel_hashed,
            rotate_root,
            interrupted_rotation,
            target_down,
            secrets_not_in_errors,
            contained_credentials_are_unusable,
        );
    };
    (@tests $engine:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$name::<$engine>().await
            }
        )*
    };
}

/// A session opened with issued credentials.
#[async_trait::async_trait]
pub trait Session: Send {
    async fn select(&mut self) -> Result<i64, String>;
    async fn insert(&mut self) -> Result<(), String>;
}

#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Suite name in skip lines.
    const NAME: &'static str;
    const ADDR: &'static str;
    /// Whether the engine keeps an expiry on the user (PostgreSQL `VALID UNTIL`).
    const HAS_EXPIRY: bool;

    fn provider() -> Arc<dyn Provider>;
    /// Creates database, schema/table and admin user; returns the fixture.
    async fn setup(suffix: &str) -> Fixture;
    /// Drops everything `setup` and the tests made (run from [`Guard`]).
    async fn cleanup(fx: &Fixture);
    /// Opens a session with a DSN handed out by the provider.
    async fn connect(dsn: &str) -> Result<Box<dyn Session>, String>;
    async fn user_exists(fx: &Fixture, name: &str) -> bool;
    /// The user's server-side expiry, where the engine has one.
    async fn valid_until(fx: &Fixture, name: &str) -> Option<OffsetDateTime>;
    /// Whether `password` is the user's current password (by login where the server
    /// checks passwords, by the stored verifier where loopback is trusted).
    async fn password_works(fx: &Fixture, user: &str, password: &str) -> bool;
    /// An admin URL that reaches the server but fails authentication with `password`.
    fn rejected_admin_url(fx: &Fixture, password: &str) -> String;
    /// An admin URL pointing at a port where nothing listens, with `password`.
    fn down_admin_url(fx: &Fixture, password: &str) -> String;
    /// A creation statement that breaks with `{{password}}` right in the server's error;
    /// `None` for kinds whose settings hold no text sent alongside the password (Redis,
    /// RabbitMQ: rules and permissions are checked before they are sent).
    fn creation_echoing_password() -> Option<&'static str>;
    /// The key of the issued credential's public part that names [`Fixture::database`]
    /// (`vhost` on RabbitMQ), or `None` where the kind has no such thing (Redis).
    const DATABASE_KEY: Option<&'static str> = Some("database");
    /// Whether the provider marks its users on the target itself (PostgreSQL's role
    /// comment), a second proof next to the store's record.
    const HAS_MARKER: bool;
    /// Creates a user by hand, as a DBA would: a login, or (`admin`) one that can create
    /// users.
    async fn create_by_hand(fx: &Fixture, name: &str, admin: bool);
    /// Whether the engine's own hash of `password` is what the provider sends for it
    /// (PostgreSQL: a SCRAM verifier it makes, recomputed with its salt; MariaDB: `PASSWORD()`).
    async fn server_hashes_alike(password: &str) -> bool;
}

/// The store's record of one target, as the tests set it.
pub struct MapLedger(pub BTreeMap<String, Recorded>);

#[async_trait::async_trait]
impl Ledger for MapLedger {
    async fn recorded(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Recorded>, ProviderError> {
        Ok(self
            .0
            .iter()
            .filter(|(n, _)| names.contains(n))
            .map(|(n, r)| (n.clone(), *r))
            .collect())
    }
}

/// Sets up a fixture, or says why not: skipped (a `SKIPPED:` line) when the service is
/// down, failed when `MAYFLY_REQUIRE_SERVICES=1`.
pub async fn fixture<E: Engine>() -> Option<Guard<E>> {
    services::connect_or_skip(
        &format!("{} provider suite", E::NAME),
        &format!("the {} server at {}", E::NAME, E::ADDR),
        tokio::net::TcpStream::connect(E::ADDR),
    )
    .await?;
    let fx = E::setup(&mayfly_testkit::suffix()).await;
    Some(Guard {
        fx,
        _engine: std::marker::PhantomData,
    })
}

/// Drops the fixture's database and users when the test ends, however it ends.
pub struct Guard<E: Engine> {
    pub fx: Fixture,
    _engine: std::marker::PhantomData<E>,
}

impl<E: Engine> Drop for Guard<E> {
    fn drop(&mut self) {
        let fx = self.fx.clone();
        // Drop cannot await; clean up on a runtime of its own.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(E::cleanup(&fx));
        })
        .join();
        if done.is_err() {
            eprintln!("cleanup of {} fixture {} failed", E::NAME, self.fx.suffix);
        }
    }
}

pub fn target(kind: &str, name: &str, settings: serde_json::Value) -> Target {
    Target {
        name: name.into(),
        kind: kind.into(),
        actions: vec!["read".into(), "write".into()],
        default_ttl: "1h".parse().unwrap(),
        max_ttl: "8h".parse().unwrap(),
        allow: vec!["*".into()],
        settings,
        created_at: OffsetDateTime::now_utc(),
    }
}

pub fn identity() -> Identity {
    Identity {
        id: "billing-deployer".into(),
        kind: IdentityKind::Service,
        owner: "team-billing".into(),
        purpose: "deploys billing".into(),
        expires_at: None,
        labels: BTreeMap::new(),
        enabled: true,
        created_at: OffsetDateTime::now_utc(),
    }
}

pub fn grant(target: &Target, action: &str) -> Grant {
    let now = OffsetDateTime::now_utc();
    Grant {
        id: uuid::Uuid::new_v4(),
        identity: "billing-deployer".into(),
        owner: "team-billing".into(),
        target: target.name.clone(),
        action: action.into(),
        purpose: "test".into(),
        task: "t-1".into(),
        requested_ttl: "1h".parse().unwrap(),
        granted_ttl: Some("1h".parse().unwrap()),
        context: serde_json::Value::Null,
        state: GrantState::Issued,
        revocation_reason: None,
        decision: serde_json::Value::Null,
        created_at: now,
        updated_at: now,
    }
}

/// An issued credential with the lease the server would have stored for it.
pub struct Issued {
    pub credential: IssuedCredential,
    pub lease: Lease,
    pub grant: Grant,
    pub username: String,
}

impl Issued {
    pub fn dsn(&self) -> &str {
        self.credential.secrets["dsn"].expose()
    }
}

/// plan + issue, as the server does (plan first, committed, then issue).
pub async fn issue(p: &dyn Provider, fx: &Fixture, action: &str) -> Result<Issued, ProviderError> {
    let identity = identity();
    let grant = grant(&fx.target, action);
    let issued_at = OffsetDateTime::now_utc();
    let expires_at = issued_at + time::Duration::hours(1);
    let lease_id = uuid::Uuid::new_v4();
    let null = serde_json::Value::Null;
    let plan = p.plan(&IssueRequest {
        grant: &grant,
        identity: &identity,
        target: fx.access(),
        lease_id,
        issued_at,
        expires_at,
        plan: &null,
    })?;
    let credential = p
        .issue(IssueRequest {
            grant: &grant,
            identity: &identity,
            target: fx.access(),
            lease_id,
            issued_at,
            expires_at,
            plan: &plan,
        })
        .await?;
    assert_eq!(
        credential.provider_state, plan,
        "provider state must equal the plan"
    );
    let username = plan["username"].as_str().unwrap().to_string();
    let lease = Lease {
        id: lease_id,
        grant_id: grant.id,
        kind: fx.target.kind.clone(),
        identity: identity.id.clone(),
        target: fx.target.name.clone(),
        task: grant.task.clone(),
        issued_at,
        expires_at,
        max_expires_at: issued_at + time::Duration::hours(8),
        state: LeaseState::Active,
        revocation_reason: None,
        external: true,
        provider_state: plan,
        revoke_attempts: 0,
        last_error: None,
    };
    Ok(Issued {
        credential,
        lease,
        grant,
        username,
    })
}

/// A lease naming `username`, for revoking something the provider did not just issue.
pub fn lease_for(fx: &Fixture, username: &str) -> Lease {
    let now = OffsetDateTime::now_utc();
    Lease {
        id: uuid::Uuid::new_v4(),
        grant_id: uuid::Uuid::new_v4(),
        kind: fx.target.kind.clone(),
        identity: "billing-deployer".into(),
        target: fx.target.name.clone(),
        task: "t".into(),
        issued_at: now,
        expires_at: now + time::Duration::hours(1),
        max_expires_at: now + time::Duration::hours(1),
        state: LeaseState::Revoking,
        revocation_reason: None,
        external: true,
        provider_state: serde_json::json!({ "username": username }),
        revoke_attempts: 0,
        last_error: None,
    }
}

/// Waits until a session's next query fails (a killed connection notices on its next use;
/// MariaDB may take a moment to act on `KILL`).
async fn session_ends(s: &mut Box<dyn Session>) -> bool {
    eventually_every(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || s.select().await.is_err(),
    )
    .await
}

fn whole_seconds(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// Issue, use, renew, revoke with an open session, revoke again.
pub async fn lifecycle<E: Engine>() {
    let Some(guard) = fixture::<E>().await else {
        return;
    };
    let fx = &guard.fx;
    let p = E::provider();
    p.validate_target(&fx.target, Some(&fx.admin)).unwrap();

    // read: can SELECT, cannot INSERT
    let read = issue(p.as_ref(), fx, "read").await.unwrap();
    let c = &read.credential;
    assert_eq!(c.public["username"], read.username.as_str());
    assert!(read.username.starts_with(&fx.prefix), "{}", read.username);
    assert!(
        read.username.contains("billing_deployer"),
        "{}",
        read.username
    );
    let password = c.secrets["password"].expose();
    assert_eq!(password.len(), 32);
    assert!(password.chars().all(|ch| ch.is_ascii_alphanumeric()));
    assert!(read.dsn().contains(password));
    assert_eq!(c.public["host"], "127.0.0.1");
    if let Some(key) = E::DATABASE_KEY {
        assert_eq!(c.public[key], fx.database.as_str());
    }
    assert!(!format!("{:?}", c.public).contains(password));
    assert!(E::user_exists(fx, &read.username).await);
    let mut rs = E::connect(read.dsn()).await.unwrap();
    assert_eq!(rs.select().await.unwrap(), 1);
    assert!(rs.insert().await.is_err(), "a read grant must not INSERT");

    // write: can INSERT
    let write = issue(p.as_ref(), fx, "write").await.unwrap();
    assert_ne!(write.username, read.username);
    let mut ws = E::connect(write.dsn()).await.unwrap();
    ws.insert().await.unwrap();
    assert_eq!(ws.select().await.unwrap(), 2);

    // server-side expiry and renewal
    if E::HAS_EXPIRY {
        let until = E::valid_until(fx, &read.username).await.unwrap();
        assert_eq!(whole_seconds(until), whole_seconds(read.lease.expires_at));
    }
    let new_expiry = read.lease.expires_at + time::Duration::hours(2);
    let renewed = p
        .renew(&read.lease, &read.grant, fx.access(), new_expiry)
        .await
        .unwrap();
    assert!(renewed.is_none(), "database users are extended in place");
    if E::HAS_EXPIRY {
        let until = E::valid_until(fx, &read.username).await.unwrap();
        assert_eq!(whole_seconds(until), whole_seconds(new_expiry));
    }

    // revoke: user gone (and the provider's own check says so), new logins fail, the
    // open session is ended
    assert!(
        !p.verify_revoked(&read.lease, fx.access()).await.unwrap(),
        "a live user must not verify as revoked"
    );
    p.revoke(&read.lease, fx.access()).await.unwrap();
    assert!(!E::user_exists(fx, &read.username).await);
    assert!(p.verify_revoked(&read.lease, fx.access()).await.unwrap());
    assert!(
        E::connect(read.dsn()).await.is_err(),
        "revoked credentials must not connect"
    );
    assert!(
        session_ends(&mut rs).await,
        "an open session must be terminated by revoke"
    );
    // idempotent
    p.revoke(&read.lease, fx.access()).await.unwrap();

    // the other credential is untouched until its own revocation
    assert_eq!(ws.select().await.unwrap(), 2);
    p.revoke(&write.lease, fx.access()).await.unwrap();
    assert!(session_ends(&mut ws).await);
    assert!(!E::user_exists(fx, &write.username).await);
}

/// Many credentials on one target at once, as under load: each issue runs the same
/// `GRANT`s on the same schema and tables, which PostgreSQL does not queue (the loser of
/// two concurrent grants on one object fails). Every issue and every revoke must succeed.
pub async fn concurrent<E: Engine>() {
    let Some(guard) = fixture::<E>().await else {
        return;
    };
    let fx = &guard.fx;
    let p = E::provider();
    let issues = (0..12).map(|i| {
        let p = Arc::clone(&p);
        let action = if i % 2 == 0 { "read" } else { "write" };
        async move { issue(p.as_ref(), fx, action).await }
    });
    let issued: Vec<Issued> = futures::future::join_all(issues)
        .await
        .into_iter()
        .map(|r| r.expect("every concurrent issue succeeds"))
        .collect();
    for i in &issued {
        assert!(E::user_exists(fx, &i.username).await, "{}", i.username);
    }
    let revokes = issued.iter().map(|i| p.revoke(&i.lease, fx.access()));
    for r in futures::future::join_all(revokes).await {
        r.expect("every concurrent revoke succeeds");
    }
    for i in &issued {
        assert!(!E::user_exists(fx, &i.username).await, "{}", i.username);
    }
}

/// Reconciliation removes only what Mayfly recorded creating for this target, with every
/// lease ended. The scenario of the security review: on one server, a hand-made role with
/// the prefix, another target's live user with the same prefix, and an admin role with the
/// prefix all survive; this target's user whose lease ended but who still exists goes.
pub async fn reconcile<E: Engine>() {
    let Some(guard) = fixture::<E>().await else {
        return;
    };
    let fx = &guard.fx;
    let p = E::provider();
    let live = issue(p.as_ref(), fx, "read").await.unwrap();
    // Mayfly's user whose lease has ended, though the user is still there (a revocation
    // that reported success without removing it, a store restored from a backup).
    let ended = issue(p.as_ref(), fx, "write").await.unwrap();
    let mut ended_session = E::connect(ended.dsn()).await.unwrap();
    // Another target on the same server with the same username prefix, and a live user.
    let mut other_fx = fx.clone();
    other_fx.target.name = format!("{}-other", fx.target.name);
    let other = issue(p.as_ref(), &other_fx, "read").await.unwrap();
    let mut other_session = E::connect(other.dsn()).await.unwrap();
    let by_hand = format!("{}reporting", fx.prefix);
    E::create_by_hand(fx, &by_hand, false).await;
    let other_admin = format!("{}dba", fx.prefix);
    E::create_by_hand(fx, &other_admin, true).await;
    // Recorded as this target's and ended, but made by hand without Mayfly's marker:
    // where the engine has a marker, that second proof is missing and the user stays.
    let unmarked = format!("{}unmarked", fx.prefix);
    E::create_by_hand(fx, &unmarked, false).await;

    let ledger = MapLedger(BTreeMap::from([
        (live.username.clone(), Recorded::Live),
        (ended.username.clone(), Recorded::Ended),
        (unmarked.clone(), Recorded::Ended),
    ]));
    let report = p.reconcile(fx.access(), &ledger).await.unwrap();
    let mut dropped = vec![ended.username.clone()];
    if !E::HAS_MARKER {
        dropped.push(unmarked.clone());
    }
    dropped.sort();
    assert_eq!(report.dropped, dropped, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    for kept in [&by_hand, &other.username] {
        assert!(
            report.unknown.contains(kept),
            "{kept} not reported: {report:?}"
        );
    }
    assert!(!report.unknown.contains(&live.username), "{report:?}");
    assert!(!E::user_exists(fx, &ended.username).await);
    assert!(session_ends(&mut ended_session).await);

    for survivor in [
        &live.username,
        &by_hand,
        &other.username,
        &other_admin,
        &fx.admin_user,
    ] {
        assert!(E::user_exists(fx, survivor).await, "{survivor} was dropped");
    }
    assert_eq!(E::user_exists(fx, &unmarked).await, E::HAS_MARKER);
    // The other target's user still works: its open session and a new login.
    assert_eq!(other_session.select().await.unwrap(), 1);
    let mut again = E::connect(other.dsn()).await.unwrap();
    assert_eq!(again.select().await.unwrap(), 1);
    assert!(
        E::password_works(
            fx,
            &other.username,
            other.credential.secrets["password"].expose()
        )
        .await
    );

    // Nothing recorded at all (an empty store): nothing is touched.
    let report = p
        .reconcile(fx.access(), &MapLedger(BTreeMap::new()))
        .await
        .unwrap();
    assert!(
        report.dropped.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert!(E::user_exists(fx, &live.username).await);
    assert!(report.unknown.contains(&live.username), "{report:?}");

    // The other target, reconciled with its own record, keeps its user and leaves ours.
    let theirs = MapLedger(BTreeMap::from([(other.username.clone(), Recorded::Live)]));
    let report = p.reconcile(other_fx.access(), &theirs).await.unwrap();
    assert!(report.dropped.is_empty(), "{report:?}");
    assert!(report.unknown.contains(&live.username), "{report:?}");
    p.revoke(&live.lease, fx.access()).await.unwrap();
    p.revoke(&other.lease, other_fx.access()).await.unwrap();
}

/// Issued passwords reach the server only as the engine's hash, and that hash is the one
/// the server itself makes: the issued password logs in, a wrong one does not, and the
/// server stores no plaintext.
pub async fn passwords_travel_hashed<E: Engine>() {
    let Some(guard) = fixture::<E>().await else {
        return;
    };
    let fx = &guard.fx;
    assert!(E::server_hashes_alike("pencil").await);
    assert!(E::server_hashes_alike("Xy7pQ2mN9vB4cD8fG1hJ3kL5zW6tR0sA").await);
    let p = E::provider();
    let issued = issue(p.as_ref(), fx, "read").await.unwrap();
    let password = issued.credential.secrets["password"].expose().to_string();
    assert!(E::password_works(fx, &issued.username, &password).await);
    assert!(!E::password_works(fx, &issued.username, "Wr0ngWr0ngWr0ngWr0ngWr0ngWr0ng12").await);
    let mut session = E::connect(issued.dsn()).await.unwrap();
    assert_eq!(session.select().await.unwrap(), 1);
    p.revoke(&issued.lease, fx.access()).await.unwrap();
    assert!(!E::password_works(fx, &issued.username, &password).await);
    assert!(E::connect(issued.dsn()).await.is_err());
}

/// The admin password changes, the new URL works, the old one does not.
pub async fn rotate_root<E: Engine>() {
    let Some(mut guard) = fixture::<E>().await else {
        return;
    };
    let p = E::provider();
    // a cached admin connection exists before the rotation
    let before = issue(p.as_ref(), &guard.fx, "read").await.unwrap();

    // Planning touches nothing: the caller records the plan before the change.
    let new = p.plan_root_rotation(guard.fx.access()).unwrap();
    let planned = url::Url::parse(new.expose()).unwrap();
    assert!(E::password_works(&guard.fx, &guard.fx.admin_user, &guard.fx.admin_password).await);
    assert!(!E::password_works(&guard.fx, &guard.fx.admin_user, planned.password().unwrap()).await);
    p.rotate_root(guard.fx.access(), &new).await.unwrap();
    assert_ne!(new.expose(), guard.fx.admin.expose());
    let new_url = url::Url::parse(new.expose()).unwrap();
    let new_password = new_url.password().unwrap().to_string();
    assert!(new_password.len() >= 32);
    assert_eq!(new_url.username(), guard.fx.admin_user);
    assert!(E::password_works(&guard.fx, &guard.fx.admin_user, &new_password).await);
    let old_password = guard.fx.admin_password.clone();
    assert!(
        !E::password_works(&guard.fx, &guard.fx.admin_user, &old_password).await,
        "the old admin password must stop working"
    );

    // the provider carries on with the new secret (and drops connections of the old one)
    guard.fx.admin = new;
    guard.fx.admin_password = new_password;
    let fx = &guard.fx;
    let after = issue(p.as_ref(), fx, "write").await.unwrap();
    p.revoke(&before.lease, fx.access()).await.unwrap();
    p.revoke(&after.lease, fx.access()).await.unwrap();
    assert!(!E::user_exists(fx, &before.username).await);
}

/// What start-up resolution relies on after a crash mid-rotation, with both secrets on
/// record. Crash before the change: the old secret still works and running the change again
/// completes it. Crash after the change: the new secret works, the old one is refused (or,
/// on a server that does not check passwords, changing again to the same one is harmless),
/// and a planned secret for another account is refused before anything changes.
pub async fn interrupted_rotation<E: Engine>() {
    let Some(mut guard) = fixture::<E>().await else {
        return;
    };
    let p = E::provider();
    let old = guard.fx.clone();
    let password_of = |s: &SecretString| {
        url::Url::parse(s.expose())
            .unwrap()
            .password()
            .unwrap()
            .to_string()
    };
    let with_admin = |admin: &SecretString| {
        let mut fx = old.clone();
        fx.admin = admin.clone();
        fx
    };

    // Crashed after recording: nothing changed; the old secret connects, the change runs.
    let next = p.plan_root_rotation(old.access()).unwrap();
    p.check_admin(old.access()).await.unwrap();
    p.rotate_root(old.access(), &next).await.unwrap();
    assert!(E::password_works(&old, &old.admin_user, &password_of(&next)).await);
    assert!(!E::password_works(&old, &old.admin_user, &old.admin_password).await);

    // Crashed after the change: the next secret connects; completing again from the old
    // one either cannot connect or sets the same password, which keeps working.
    let current = with_admin(&next);
    p.check_admin(current.access()).await.unwrap();
    match p.rotate_root(old.access(), &next).await {
        Ok(()) => {}
        Err(e) => {
            assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
            assert_no_secret(&e, &old.admin_password);
            assert_no_secret(&e, &password_of(&next));
            let refused = p.check_admin(old.access()).await.err().unwrap();
            assert!(
                matches!(refused, ProviderError::Unavailable(_)),
                "{refused:?}"
            );
        }
    }
    assert!(E::password_works(&old, &old.admin_user, &password_of(&next)).await);
    let after = issue(p.as_ref(), &current, "read").await.unwrap();
    p.revoke(&after.lease, current.access()).await.unwrap();

    // A plan naming another account is refused, and changes nothing.
    let mut elsewhere = url::Url::parse(next.expose()).unwrap();
    elsewhere.set_username("someone_else").unwrap();
    let e = p
        .rotate_root(current.access(), &SecretString::new(elsewhere.to_string()))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ProviderError::BadSettings(_)), "{e:?}");
    assert!(E::password_works(&old, &old.admin_user, &password_of(&next)).await);

    // A target that is down: the rotation cannot start, and both checks say so.
    let mut down = old.clone();
    down.admin = SecretString::new(E::down_admin_url(&old, "Sup3rS3cretDownPw"));
    let e = p.check_admin(down.access()).await.err().unwrap();
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");

    guard.fx.admin = next.clone();
    guard.fx.admin_password = password_of(&next);
}

/// Containment (when a target refuses the removal): the user still exists but can no
/// longer be used, open sessions included; the revocation after it still removes it.
/// Kinds that cannot contain say so (`false`) and are left as they were.
pub async fn contained_credentials_are_unusable<E: Engine>() {
    let Some(guard) = fixture::<E>().await else {
        return;
    };
    let fx = &guard.fx;
    let p = E::provider();
    let issued = issue(p.as_ref(), fx, "read").await.unwrap();
    let mut open = E::connect(issued.dsn()).await.unwrap();
    if !p.contain(&issued.lease, fx.access()).await.unwrap() {
        assert!(
            E::connect(issued.dsn()).await.is_ok(),
            "not contained, not changed"
        );
        p.revoke(&issued.lease, fx.access()).await.unwrap();
        return;
    }
    assert!(
        E::user_exists(fx, &issued.username).await,
        "contained, not removed"
    );
    assert!(
        E::connect(issued.dsn()).await.is_err(),
        "a contained credential still connects"
    );
    assert!(
        session_ends(&mut open).await,
        "a contained credential's session survived"
    );
    // Idempotent, and the removal still works afterwards.
    assert!(p.contain(&issued.lease, fx.access()).await.unwrap());
    p.revoke(&issued.lease, fx.access()).await.unwrap();
    assert!(!E::user_exists(fx, &issued.username).await);
}

/// An unreachable target is `Unavailable` (retried by the server), never `Failed`.
pub async fn target_down<E: Engine>() {
    let Some(guard) = fixture::<E>().await else {
        return;
    };
    let mut fx = guard.fx.clone();
    let secret_text = "Sup3rS3cretDownPw";
    fx.admin = SecretString::new(E::down_admin_url(&fx, secret_text));
    let p = E::provider();
    let e = issue(p.as_ref(), &fx, "read").await.err().unwrap();
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
    assert_no_secret(&e, secret_text);
    let e = p
        .revoke(
            &lease_for(&fx, &format!("{}x_0123456789", fx.prefix)),
            fx.access(),
        )
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
    assert_no_secret(&e, secret_text);
    let e = p
        .reconcile(fx.access(), &MapLedger(BTreeMap::new()))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
    let next = p.plan_root_rotation(fx.access()).unwrap();
    let e = p.rotate_root(fx.access(), &next).await.err().unwrap();
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
    assert_no_secret(&e, secret_text);
}

/// Neither the admin password nor a generated password shows up in an error.
pub async fn secrets_not_in_errors<E: Engine>() {
    let Some(guard) = fixture::<E>().await else {
        return;
    };
    let p = E::provider();

    // a rejected admin login
    let mut fx = guard.fx.clone();
    let secret_text = "Wr0ngPassw0rdXyz";
    fx.admin = SecretString::new(E::rejected_admin_url(&fx, secret_text));
    p.validate_target(&fx.target, Some(&fx.admin)).unwrap();
    let e = issue(p.as_ref(), &fx, "read").await.err().unwrap();
    assert!(matches!(e, ProviderError::Unavailable(_)), "{e:?}");
    assert_no_secret(&e, secret_text);
    let next = p.plan_root_rotation(fx.access()).unwrap();
    let e = p.rotate_root(fx.access(), &next).await.err().unwrap();
    assert_no_secret(&e, secret_text);

    // a broken template that makes the server quote the generated password back
    if let Some(statement) = E::creation_echoing_password() {
        let mut fx = guard.fx.clone();
        fx.target.settings["creation_statements"] = serde_json::json!([statement]);
        p.validate_target(&fx.target, Some(&fx.admin)).unwrap();
        let e = issue(p.as_ref(), &fx, "read").await.err().unwrap();
        let text = format!("{e} {e:?}");
        assert!(matches!(e, ProviderError::Failed(_)), "{e:?}");
        assert!(
            text.contains("[redacted]"),
            "the server echoed nothing? {text}"
        );
        assert!(!has_password_like_run(&text), "{text}");
        assert!(!text.contains(&guard.fx.admin_password));
    }

    // settings errors name the problem and nothing secret
    let mut fx = guard.fx.clone();
    fx.target.settings["grants"]
        .as_object_mut()
        .unwrap()
        .remove("write");
    let e = p
        .validate_target(&fx.target, Some(&fx.admin))
        .err()
        .unwrap();
    assert!(matches!(e, ProviderError::BadSettings(_)), "{e:?}");
    assert!(e.to_string().contains("write"), "{e}");
    assert_no_secret(&e, &guard.fx.admin_password);
}

fn assert_no_secret(e: &ProviderError, secret: &str) {
    let text = format!("{e} {e:?}");
    assert!(!text.contains(secret), "secret leaked into error: {text}");
}

/// A run of 32 letters/digits: what a generated password looks like.
fn has_password_like_run(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            run += 1;
            if run >= 32 {
                return true;
            }
        } else {
            run = 0;
        }
    }
    false
}
