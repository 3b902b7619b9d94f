//! The `postgres` credential kind: a real, temporary PostgreSQL role per lease.
//!
//! Issue creates the role and runs the action's grants in one transaction (the statements
//! are sent as one message, which PostgreSQL runs as one implicit transaction, so
//! templates must not contain `BEGIN`/`COMMIT`), with
//! `VALID UNTIL` set to the lease expiry so the role stops working even if the broker is
//! down when the lease ends. Renew moves `VALID UNTIL`. Revoke blocks new logins,
//! terminates the role's sessions and then drops it.
//!
//! Passwords travel only as SCRAM-SHA-256 verifiers ([`crate::verifier`]): `{{password}}`
//! in a template, and root rotation, send the verifier, so the plaintext is in no
//! statement the server could log.
//!
//! Every role gets the comment `mayfly target=<target> lease=<lease id>` in the same
//! transaction that creates it. Reconciliation removes a role only when the comment names
//! this target *and* the store records the role for one of this target's leases, all of
//! them ended; hand-made roles and other targets' roles that share the prefix are
//! reported and left alone.
//!
//! Defaults:
//! - `creation_statements`: `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`
//! - `revocation_statements` (run after logins are blocked and sessions terminated):
//!   `REASSIGN OWNED BY "{{name}}" TO CURRENT_USER`, `DROP OWNED BY "{{name}}"`,
//!   `DROP ROLE IF EXISTS "{{name}}"`. `REASSIGN`/`DROP OWNED` act on the admin URL's
//!   database only; a role given privileges in other databases needs statements there.
//! - usernames: at most 63 bytes (`NAMEDATALEN - 1`), never starting with `pg_`.
//!
//! Admin role, minimum: `LOGIN CREATEROLE`, owner (or holder `WITH GRANT OPTION`) of what
//! the grants hand out. No superuser: to terminate a temporary role's sessions and reassign
//! its objects the admin makes itself a member of that role just before dropping it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use mayfly_core::model::{Grant, Lease, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Ledger, Provider, ProviderError, ReconcileReport, TargetAccess,
};
use mayfly_core::secret::SecretString;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor};
use time::OffsetDateTime;

use crate::common::{format_expiration, Config, EngineSpec};
use crate::conn::{user_dsn, with_timeout, Admin, ConnCache};
use crate::plan::{
    generate_password, lease_username, removable, sanitize, username_from_state, Candidate,
    StateUse,
};
use crate::template::{Template, Values, Var};
use crate::verifier;

pub const SPEC: EngineSpec = EngineSpec {
    kind: "postgres",
    max_username: 63,
    default_creation: &[
        "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
    ],
    default_revocation: &[
        "REASSIGN OWNED BY \"{{name}}\" TO CURRENT_USER",
        "DROP OWNED BY \"{{name}}\"",
        "DROP ROLE IF EXISTS \"{{name}}\"",
    ],
    revocation_vars: &[Var::Name],
    default_port: 5432,
    schemes: &["postgres", "postgresql"],
    reserved_prefixes: &["pg_"],
    // A SCRAM verifier is accepted wherever a password literal is.
    verifier_after: &[],
};

/// SQLSTATE `undefined_object`: the role does not exist.
const UNDEFINED_OBJECT: &str = "42704";

/// Issues temporary PostgreSQL roles. Keeps a few idle admin connections per target.
#[derive(Default)]
pub struct PostgresProvider {
    cache: ConnCache<PgConnection>,
    /// One lock per target, held while a batch changes privileges on it: PostgreSQL fails
    /// (rather than queues) the second of two concurrent `GRANT`s or `REVOKE`s on one
    /// object, so within a broker they take turns; between replicas the retry in
    /// [`exec_retrying`] resolves what is left.
    privilege_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PostgresProvider {
    fn privilege_lock(&self, target: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .privilege_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(target.to_string()).or_default())
    }

    /// Takes the target's privilege lock if its statements change privileges at all;
    /// bare logins need no turn-taking.
    async fn privilege_turn(
        &self,
        ctx: &Ctx<'_>,
        changes_privileges: bool,
    ) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if changes_privileges {
            Some(self.privilege_lock(ctx.name()).lock_owned().await)
        } else {
            None
        }
    }
}

impl PostgresProvider {
    pub fn new() -> Self {
        PostgresProvider::default()
    }
}

/// Everything one call needs about its target.
struct Ctx<'a> {
    target: &'a Target,
    config: Config,
    admin: Admin,
    secret: &'a SecretString,
    options: PgConnectOptions,
}

impl<'a> Ctx<'a> {
    fn new(access: TargetAccess<'a>) -> Result<Ctx<'a>, ProviderError> {
        let config = Config::from_target(&SPEC, access.target)?;
        let admin = Admin::parse(&SPEC, access.admin)?;
        let options = admin_options(&admin, admin.url())?;
        let secret = access
            .admin
            .ok_or_else(|| ProviderError::BadSettings("missing admin secret".into()))?;
        Ok(Ctx {
            target: access.target,
            config,
            admin,
            secret,
            options,
        })
    }

    fn name(&self) -> &str {
        &self.target.name
    }

    fn stmt_err(&self, what: &str, e: sqlx::Error, extra: &[&SecretString]) -> ProviderError {
        self.admin.statement_error(self.name(), what, e, extra)
    }
}

fn admin_options(admin: &Admin, url: &url::Url) -> Result<PgConnectOptions, ProviderError> {
    let options = PgConnectOptions::from_url(url).map_err(|e| admin.connect_error("", e))?;
    // sqlx logs statements (and slow ones at WARN with their text); ours carry passwords.
    Ok(options
        .application_name("mayfly")
        .disable_statement_logging())
}

/// `"name"` with embedded quotes doubled. Names are `[a-z0-9_]` already; this is the second
/// line of defence.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Renders statements into one simple-protocol message. PostgreSQL runs the statements of
/// one message as a single implicit transaction (all or nothing), and one message is one
/// round trip instead of one per statement plus `BEGIN`/`COMMIT`. Templates therefore must
/// not contain `BEGIN`/`COMMIT` themselves.
fn batch<'t>(templates: impl Iterator<Item = &'t Template>, values: &Values<'_>) -> SecretString {
    let mut out = String::new();
    for t in templates {
        let stmt = t.render(values);
        let stmt = stmt.expose().trim().trim_end_matches(';');
        if !out.is_empty() {
            out.push_str(";\n");
        }
        out.push_str(stmt);
    }
    SecretString::new(out)
}

/// The role comment that marks a role as made by Mayfly for `target` (a second proof,
/// next to the store's record, before reconciliation may drop it), naming the task record
/// the grant belongs to (`txn`) when it has one, so a DBA sees which task a role serves.
fn marker(target: &str, lease: uuid::Uuid, txn: Option<uuid::Uuid>) -> String {
    match txn {
        Some(txn) => format!("{}{lease} txn={txn}", marker_prefix(target)),
        None => format!("{}{lease}", marker_prefix(target)),
    }
}

/// The task record a grant belongs to, as the broker recorded it in the grant's context.
fn grant_txn(grant: &mayfly_core::model::Grant) -> Option<uuid::Uuid> {
    grant.context.get("txn")?.as_str()?.parse().ok()
}

/// What a role's comment starts with when Mayfly made it for `target`.
fn marker_prefix(target: &str) -> String {
    format!("mayfly target={target} lease=")
}

/// The issue batch for role `values.name`: the creation statements with `{{password}}`
/// as the SCRAM verifier of `password` (never the password), the role's marker comment,
/// then `grants`. Returns the text and the verifier (to scrub from errors).
fn creation_batch(
    config: &Config,
    grants: &[Template],
    values: Values<'_>,
    password: &SecretString,
    marker: &str,
) -> Result<(SecretString, SecretString), ProviderError> {
    let verifier = verifier::scram_sha256(password)?;
    let values = Values {
        password: Some(&verifier),
        ..values
    };
    // Target names are `[a-z0-9._-]`; doubling quotes is the second line of defence.
    let comment = format!(
        "COMMENT ON ROLE {} IS '{}'",
        quote_ident(values.name),
        marker.replace('\'', "''")
    );
    let create = batch(config.creation.iter(), &values);
    let grant = batch(grants.iter(), &values);
    let mut text = format!("{};\n{comment}", create.expose());
    if !grant.expose().is_empty() {
        text.push_str(";\n");
        text.push_str(grant.expose());
    }
    Ok((SecretString::new(text), verifier))
}

/// `ALTER ROLE CURRENT_USER PASSWORD '<verifier>'`, with the verifier it carries.
fn set_own_password(
    password: &SecretString,
) -> Result<(SecretString, SecretString), ProviderError> {
    let verifier = verifier::scram_sha256(password)?;
    // The verifier is base64 and `$:`: safe inside the literal.
    let stmt = SecretString::new(format!(
        "ALTER ROLE CURRENT_USER PASSWORD '{}'",
        verifier.expose()
    ));
    Ok((stmt, verifier))
}

/// Runs SQL text with the simple query protocol. (Going through `Executor::execute`
/// rather than `RawSql::execute` keeps the future `Send` for `async_trait`.)
async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    conn.execute(sqlx::raw_sql(sql)).await.map(|_| ())
}

/// Attempts at a statement batch that lost a race with a concurrent one (below).
const CONCURRENT_ATTEMPTS: u32 = 6;

/// Whether `e` means another transaction changed the same catalog row (two `GRANT`s on
/// one schema or table at once: PostgreSQL's "tuple concurrently updated", an internal
/// error without a more specific code), or a serialization failure or deadlock. Each
/// batch is one transaction, so nothing of it is left behind and running it again is safe.
fn lost_concurrent_race(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    match db.code().as_deref() {
        Some("40001" | "40P01") => true,
        Some("XX000") => db.message().contains("concurrently"),
        _ => false,
    }
}

/// [`exec`], run again after a short random pause when it lost a race with another
/// batch of this or another broker replica on the same catalog rows. PostgreSQL does not
/// queue concurrent `GRANT`s on one object: the second fails instead of waiting.
async fn exec_retrying(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    let mut attempt = 1;
    loop {
        match exec(conn, sql).await {
            Err(e) if attempt < CONCURRENT_ATTEMPTS && lost_concurrent_race(&e) => {
                let jitter = mayfly_core::secret::random_bytes::<1>().map_or(128, |b| b[0]);
                let pause = std::time::Duration::from_micros(
                    (1_000 << attempt.min(5)) + u64::from(jitter) * 40,
                );
                tracing::debug!(
                    attempt,
                    pause_us = pause.as_micros() as u64,
                    "retrying after a concurrent catalog update"
                );
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn is_undefined_object(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(UNDEFINED_OBJECT))
}

impl PostgresProvider {
    async fn connect(&self, ctx: &Ctx<'_>) -> Result<PgConnection, ProviderError> {
        self.cache
            .acquire(ctx.name(), ctx.secret, &ctx.options)
            .await
            .map_err(|e| ctx.admin.connect_error(ctx.name(), e))
    }

    fn release(&self, ctx: &Ctx<'_>, conn: PgConnection) {
        self.cache.put(ctx.name(), ctx.secret, conn);
    }

    /// Removes role `name`: no new logins, sessions terminated, then the revocation
    /// statements. Returns whether the role existed.
    async fn drop_user(
        &self,
        ctx: &Ctx<'_>,
        conn: &mut PgConnection,
        name: &str,
    ) -> Result<bool, ProviderError> {
        let q = quote_ident(name);
        // Step 1, committed before sessions are terminated: otherwise a login in between
        // would survive the drop. Membership lets a CREATEROLE (non-superuser) admin signal
        // the role's backends and REASSIGN/DROP OWNED; it disappears with the role.
        // One simple-protocol message runs as one implicit transaction (one round trip).
        // Asynchronous commit is safe here: the final DROP commits synchronously, and WAL
        // is flushed in order, so this commit is durable whenever the drop is.
        let step1 = format!(
            "SET LOCAL synchronous_commit = off; ALTER ROLE {q} NOLOGIN; GRANT {q} TO CURRENT_USER"
        );
        match exec(conn, &step1).await {
            Ok(()) => {}
            // Already gone (an earlier attempt, which terminated the sessions before it
            // dropped the role): nothing left to do.
            Err(e) if is_undefined_object(&e) => return Ok(false),
            Err(e) => return Err(ctx.stmt_err("blocking logins", e, &[])),
        }
        // Step 2, one message (one implicit transaction): end open sessions, then the
        // revocation statements. Logins are already blocked, so no session can appear in
        // between. PostgreSQL 14+ waits for each backend to exit, so "revoked" means no
        // session of the role is left. `name` is `[a-z0-9_]`, safe inside the literal.
        let wait = if conn.server_version_num().is_some_and(|v| v >= 140000) {
            ", 5000"
        } else {
            ""
        };
        let terminate = format!(
            "SELECT pg_terminate_backend(pid{wait}) FROM pg_stat_activity \
             WHERE usename = '{name}' AND pid <> pg_backend_pid()"
        );
        let values = Values {
            name,
            ..Values::default()
        };
        let drop = batch(ctx.config.revocation.iter(), &values);
        let stmt = SecretString::new(format!("{terminate};\n{}", drop.expose()));
        // A user that may hold privileges loses them here (`DROP OWNED`, `REVOKE`).
        let granted = ctx.config.grants.values().any(|g| !g.is_empty());
        let _turn = self.privilege_turn(ctx, granted).await;
        exec_retrying(conn, stmt.expose())
            .await
            .map_err(|e| ctx.stmt_err("terminating sessions and revocation statements", e, &[]))?;
        Ok(true)
    }

    async fn issue_inner(
        &self,
        ctx: &Ctx<'_>,
        r: &IssueRequest<'_>,
    ) -> Result<IssuedCredential, ProviderError> {
        let name = username_from_state(r.plan, &ctx.config.username, StateUse::Fresh)?;
        let grants = ctx.config.grants_for(&r.grant.action)?;
        let password = generate_password(ctx.config.password_length)?;
        let expiration = format_expiration(r.expires_at)?;
        let identity = sanitize(&r.identity.id);
        let action = sanitize(&r.grant.action);
        let values = Values {
            name: &name,
            expiration: &expiration,
            identity: &identity,
            action: &action,
            ..Values::default()
        };
        // One transaction: either the role exists, marked, with all its grants, or nothing
        // does.
        let (stmt, verifier) = creation_batch(
            &ctx.config,
            grants,
            values,
            &password,
            &marker(ctx.name(), r.lease_id, grant_txn(r.grant)),
        )?;
        let mut conn = self.connect(ctx).await?;
        let turn = self.privilege_turn(ctx, !grants.is_empty()).await;
        let created = exec_retrying(&mut conn, stmt.expose()).await;
        drop(turn);
        created.map_err(|e| {
            ctx.stmt_err("creation and grant statements", e, &[&password, &verifier])
        })?;
        self.release(ctx, conn);
        tracing::info!(target = ctx.name(), role = %name, action = %r.grant.action, "created role");

        let host = ctx.config.host.clone().unwrap_or_else(|| ctx.admin.host());
        let port = ctx.config.port.unwrap_or_else(|| ctx.admin.port(&SPEC));
        let database = ctx.config.database.clone().or_else(|| ctx.admin.database());
        let dsn = user_dsn(
            "postgres",
            &name,
            &password,
            &host,
            port,
            database.as_deref(),
        );
        let mut secrets = BTreeMap::new();
        secrets.insert("password".to_string(), password);
        secrets.insert("dsn".to_string(), dsn);
        let mut public = serde_json::Map::new();
        public.insert("username".into(), name.clone().into());
        public.insert("host".into(), host.into());
        public.insert("port".into(), port.into());
        public.insert("database".into(), database.into());
        Ok(IssuedCredential {
            secrets,
            public,
            provider_state: serde_json::json!({ "username": name }),
        })
    }

    async fn reconcile_inner(
        &self,
        ctx: &Ctx<'_>,
        ledger: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        let mut conn = self.connect(ctx).await?;
        // The admin itself and superusers are never candidates, even if their names happen
        // to start with the prefix (`mayfly_admin` does start with `mayfly_`).
        let roles: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT rolname::text, shobj_description(oid, 'pg_authid') FROM pg_roles \
             WHERE left(rolname, length($1)) = $1 AND rolname <> current_user AND NOT rolsuper \
             ORDER BY 1",
        )
        .bind(ctx.config.username.prefix())
        .fetch_all(&mut conn)
        .await
        .map_err(|e| ctx.stmt_err("listing roles", e, &[]))?;
        let mine = marker_prefix(ctx.name());
        let candidates = roles
            .into_iter()
            .filter(|(n, _)| ctx.config.username.accepts(n))
            .map(|(name, comment)| Candidate {
                name,
                marked: comment.is_some_and(|c| c.starts_with(&mine)),
            })
            .collect();
        let mut report = ReconcileReport::default();
        let remove = removable(ledger, candidates, &mut report).await?;
        for name in remove {
            match self.drop_user(ctx, &mut conn, &name).await {
                Ok(_) => report.dropped.push(name),
                // The target went away mid-pass: the whole pass is retried later.
                Err(e @ ProviderError::Unavailable(_)) => return Err(e),
                Err(e) => report.failed.push((name, e.to_string())),
            }
        }
        self.release(ctx, conn);
        Ok(report)
    }

    /// Connects with `admin` and runs `SELECT 1`, within the target's timeout.
    async fn check(&self, ctx: &Ctx<'_>, options: &PgConnectOptions) -> Result<(), ProviderError> {
        with_timeout(&ctx.config, ctx.name(), async {
            let mut check = PgConnection::connect_with(options)
                .await
                .map_err(|e| ctx.admin.connect_error(ctx.name(), e))?;
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&mut check)
                .await
                .map_err(|e| ctx.stmt_err("checking the admin credential", e, &[]))?;
            let _ = check.close().await;
            Ok(())
        })
        .await
    }

    async fn rotate_inner(&self, ctx: &Ctx<'_>, next: &SecretString) -> Result<(), ProviderError> {
        let next_admin = Admin::parse(&SPEC, Some(next))?;
        let new = ctx.admin.next_password(&next_admin)?;
        let next_options = admin_options(&next_admin, next_admin.url())?;
        // A connection of its own: it must outlive the password change to be able to put
        // the old one back.
        let mut conn = with_timeout(&ctx.config, ctx.name(), async {
            PgConnection::connect_with(&ctx.options)
                .await
                .map_err(|e| ctx.admin.connect_error(ctx.name(), e))
        })
        .await?;
        // No client-side timeout from here on: a cancelled change could still apply. The
        // server bounds the statements instead, so each one either happens or fails; the
        // caller recorded `next` before this, so a change that applies is never lost.
        exec(
            &mut conn,
            &format!("SET statement_timeout = {}", ctx.config.timeout.as_millis()),
        )
        .await
        .map_err(|e| ctx.stmt_err("setting a statement timeout", e, &[]))?;
        let (stmt, verifier) = set_own_password(&new)?;
        exec(&mut conn, stmt.expose())
            .await
            .map_err(|e| ctx.stmt_err("changing the admin password", e, &[&new, &verifier]))?;
        self.cache.forget(ctx.name());

        match self.check(ctx, &next_options).await {
            Ok(()) => {
                let _ = conn.close().await;
                tracing::info!(target = ctx.name(), "rotated the admin password");
                Ok(())
            }
            Err(e) => {
                let reason = ctx.admin.scrub(e.to_string(), &[&new, next]);
                let restored = self.restore_password(ctx, &mut conn).await;
                let _ = conn.close().await;
                Err(ProviderError::Failed(match restored {
                    Ok(()) => format!(
                        "the new admin password did not work ({reason}); the old one was restored"
                    ),
                    Err(r) => format!(
                        "the new admin password did not work ({reason}) and restoring the old one failed ({r}); both stay on record until one connects"
                    ),
                }))
            }
        }
    }

    async fn restore_password(
        &self,
        ctx: &Ctx<'_>,
        conn: &mut PgConnection,
    ) -> Result<(), ProviderError> {
        let old = ctx.admin.password();
        let Some(old) = old else {
            exec(conn, "ALTER ROLE CURRENT_USER PASSWORD NULL")
                .await
                .map_err(|e| ctx.stmt_err("restoring the admin password", e, &[]))?;
            return Ok(());
        };
        // As a verifier where one can be computed (printable ASCII, as generated passwords
        // are); any other old password is quoted by the server, which then sees it once.
        if let Ok((stmt, verifier)) = set_own_password(&old) {
            exec(conn, stmt.expose())
                .await
                .map_err(|e| ctx.stmt_err("restoring the admin password", e, &[&old, &verifier]))?;
            return Ok(());
        }
        let stmt: String =
            sqlx::query_scalar("SELECT format('ALTER ROLE CURRENT_USER PASSWORD %L', $1::text)")
                .bind(old.expose())
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| ctx.stmt_err("restoring the admin password", e, &[&old]))?;
        let stmt = SecretString::new(stmt);
        exec(conn, stmt.expose())
            .await
            .map_err(|e| ctx.stmt_err("restoring the admin password", e, &[&old]))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Provider for PostgresProvider {
    fn kind(&self) -> &'static str {
        SPEC.kind
    }

    fn external(&self) -> bool {
        true
    }

    fn live_key(&self) -> Option<&'static str> {
        Some(crate::plan::LIVE_KEY)
    }

    fn validate_target(
        &self,
        target: &Target,
        admin: Option<&SecretString>,
    ) -> Result<(), ProviderError> {
        Ctx::new(TargetAccess { target, admin }).map(|_| ())
    }

    fn plan(&self, request: &IssueRequest<'_>) -> Result<serde_json::Value, ProviderError> {
        crate::common::plan_for(&SPEC, request)
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let ctx = Ctx::new(request.target)?;
        with_timeout(&ctx.config, ctx.name(), self.issue_inner(&ctx, &request)).await
    }

    async fn renew(
        &self,
        lease: &Lease,
        _grant: &Grant,
        target: TargetAccess<'_>,
        new_expiry: OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError> {
        let ctx = Ctx::new(target)?;
        let name = lease_username(lease, &ctx.config.username)?;
        let expiration = format_expiration(new_expiry)?;
        with_timeout(&ctx.config, ctx.name(), async {
            let mut conn = self.connect(&ctx).await?;
            exec(
                &mut conn,
                &format!(
                    "ALTER ROLE {} VALID UNTIL '{expiration}'",
                    quote_ident(&name)
                ),
            )
            .await
            .map_err(|e| {
                if is_undefined_object(&e) {
                    ProviderError::Failed(format!(
                        "role {name} no longer exists on target {}",
                        ctx.name()
                    ))
                } else {
                    ctx.stmt_err("extending VALID UNTIL", e, &[])
                }
            })?;
            self.release(&ctx, conn);
            Ok(None)
        })
        .await
    }

    async fn revoke(&self, lease: &Lease, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(target)?;
        let name = lease_username(lease, &ctx.config.username)?;
        with_timeout(&ctx.config, ctx.name(), async {
            let mut conn = self.connect(&ctx).await?;
            let existed = self.drop_user(&ctx, &mut conn, &name).await?;
            self.release(&ctx, conn);
            tracing::info!(target = ctx.name(), role = %name, existed, "revoked role");
            Ok(())
        })
        .await
    }

    async fn contain(
        &self,
        lease: &Lease,
        target: TargetAccess<'_>,
    ) -> Result<bool, ProviderError> {
        let ctx = Ctx::new(target)?;
        let name = lease_username(lease, &ctx.config.username)?;
        let q = quote_ident(&name);
        // No logins from now on (committed first, so no login slips in between), with the
        // membership that lets a CREATEROLE admin signal the role's backends; then every
        // open session ended. `name` is `[a-z0-9_]`, safe inside the literal.
        let block = format!("ALTER ROLE {q} NOLOGIN; GRANT {q} TO CURRENT_USER");
        let terminate = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = '{name}' AND pid <> pg_backend_pid()"
        );
        with_timeout(&ctx.config, ctx.name(), async {
            let mut conn = self.connect(&ctx).await?;
            match exec(&mut conn, &block).await {
                Ok(()) => {}
                // Gone already: nothing left to contain.
                Err(e) if is_undefined_object(&e) => return Ok(true),
                Err(e) => return Err(ctx.stmt_err("blocking the role's logins", e, &[])),
            }
            exec(&mut conn, &terminate)
                .await
                .map_err(|e| ctx.stmt_err("ending the role's sessions", e, &[]))?;
            self.release(&ctx, conn);
            Ok(true)
        })
        .await
    }

    async fn verify_revoked(
        &self,
        lease: &Lease,
        target: TargetAccess<'_>,
    ) -> Result<bool, ProviderError> {
        let ctx = Ctx::new(target)?;
        let name = lease_username(lease, &ctx.config.username)?;
        with_timeout(&ctx.config, ctx.name(), async {
            let mut conn = self.connect(&ctx).await?;
            let found: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
                    .bind(&name)
                    .fetch_optional(&mut conn)
                    .await
                    .map_err(|e| ctx.stmt_err("checking the role is gone", e, &[]))?;
            self.release(&ctx, conn);
            Ok(found.is_none())
        })
        .await
    }

    async fn reconcile(
        &self,
        target: TargetAccess<'_>,
        ledger: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        let ctx = Ctx::new(target)?;
        with_timeout(&ctx.config, ctx.name(), self.reconcile_inner(&ctx, ledger)).await
    }

    fn plan_root_rotation(&self, target: TargetAccess<'_>) -> Result<SecretString, ProviderError> {
        let ctx = Ctx::new(target)?;
        let new = generate_password(ctx.config.password_length.max(32))?;
        ctx.admin.with_password(&new)
    }

    async fn rotate_root(
        &self,
        target: TargetAccess<'_>,
        next: &SecretString,
    ) -> Result<(), ProviderError> {
        let ctx = Ctx::new(target)?;
        // Timeouts are applied inside: the password change itself must not be cancelled.
        self.rotate_inner(&ctx, next).await
    }

    async fn check_admin(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(target)?;
        self.check(&ctx, &ctx.options).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn config() -> Config {
        let target = Target {
            name: "pg-main".into(),
            kind: "postgres".into(),
            actions: vec!["read".into()],
            default_ttl: "1h".parse().unwrap(),
            max_ttl: "1h".parse().unwrap(),
            allow: vec![],
            settings: serde_json::json!({"grants": {"read": ["GRANT SELECT ON t TO \"{{name}}\""]}}),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        Config::from_target(&SPEC, &target).unwrap()
    }

    #[test]
    fn statements_carry_a_verifier_never_the_password() {
        let config = config();
        let password = generate_password(32).unwrap();
        let lease = uuid::Uuid::new_v4();
        let values = Values {
            name: "mayfly_svc_0123456789",
            expiration: "2030-01-01T00:00:00Z",
            ..Values::default()
        };
        let (text, verifier) = creation_batch(
            &config,
            config.grants_for("read").unwrap(),
            values,
            &password,
            &marker("pg-main", lease, None),
        )
        .unwrap();
        let text = text.expose();
        assert!(!text.contains(password.expose()), "{text}");
        assert!(verifier.expose().starts_with("SCRAM-SHA-256$4096:"));
        assert!(
            text.starts_with(&format!(
                "CREATE ROLE \"mayfly_svc_0123456789\" WITH LOGIN PASSWORD '{}' VALID UNTIL",
                verifier.expose()
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            ";\nCOMMENT ON ROLE \"mayfly_svc_0123456789\" IS 'mayfly target=pg-main lease={lease}';\nGRANT SELECT"
        )), "{text}");

        let (rotate, verifier) = set_own_password(&password).unwrap();
        assert!(!rotate.expose().contains(password.expose()));
        assert_eq!(
            rotate.expose(),
            format!("ALTER ROLE CURRENT_USER PASSWORD '{}'", verifier.expose())
        );
    }

    #[test]
    fn only_this_targets_marker_counts() {
        let lease = uuid::Uuid::new_v4();
        for txn in [None, Some(uuid::Uuid::new_v4())] {
            assert!(marker("pg-main", lease, txn).starts_with(&marker_prefix("pg-main")));
            assert!(!marker("pg-main-2", lease, txn).starts_with(&marker_prefix("pg-main")));
            assert!(!marker("pg-mai", lease, txn).starts_with(&marker_prefix("pg-main")));
        }
        let txn = uuid::Uuid::new_v4();
        assert!(marker("pg-main", lease, Some(txn)).ends_with(&format!(" txn={txn}")));
    }
}
