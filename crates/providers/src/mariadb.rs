//! The `mariadb` credential kind: a real, temporary MariaDB user per lease.
//!
//! MariaDB commits `CREATE USER` and `GRANT` implicitly, so issue cannot be one
//! transaction: when a statement after the creation fails, the half-made user is dropped
//! before the error is returned. MariaDB has no per-user expiry time, so renew has nothing
//! to do and the broker's revocation is the only end of a user (reconciliation catches
//! anything a crash left behind).
//!
//! Revoke locks every account of the user name (`ACCOUNT LOCK`, MariaDB 10.4+), kills its
//! connections and then runs the revocation statements once per account host.
//!
//! Passwords travel only as `mysql_native_password` hashes ([`crate::verifier`]):
//! `{{password}}` is the hash, so templates place it as `IDENTIFIED BY PASSWORD
//! '{{password}}'` (checked when the target is stored), and root rotation sends the hash
//! too. The plaintext is in no statement the server could log.
//!
//! Reconciliation removes a user only when the store records it for one of this target's
//! leases, all of them ended. MariaDB 10.11 has no per-user comment or attribute to carry
//! a marker (MySQL's `CREATE USER … COMMENT` does not exist here), so that record is the
//! only proof; prefixed users without it are reported and left alone.
//!
//! Defaults:
//! - `creation_statements`: `CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'`
//! - `revocation_statements` (per account, `{{host}}` available):
//!   `DROP USER IF EXISTS '{{name}}'@'{{host}}'`
//! - usernames: at most 80 characters, the limit of every MariaDB release that has
//!   `ACCOUNT LOCK` (MySQL's 32 does not apply; this kind targets MariaDB).
//!
//! Admin user, minimum (checked by the integration suite on 10.11):
//! `GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.*` (create/alter/drop users, see
//! and kill their connections), `GRANT SELECT ON mysql.user` (find accounts and leftovers),
//! and the privileges the grants hand out `WITH GRANT OPTION` (e.g.
//! `GRANT ALL ON appdb.* ... WITH GRANT OPTION`). No `SUPER`, no `RELOAD`: account
//! statements take effect without `FLUSH PRIVILEGES`.

use std::collections::{BTreeMap, BTreeSet};

use mayfly_core::model::{Grant, Lease, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Ledger, Provider, ProviderError, ReconcileReport, TargetAccess,
};
use mayfly_core::secret::SecretString;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError};
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
    kind: "mariadb",
    max_username: 80,
    default_creation: &["CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'"],
    default_revocation: &["DROP USER IF EXISTS '{{name}}'@'{{host}}'"],
    revocation_vars: &[Var::Name, Var::Host],
    default_port: 3306,
    schemes: &["mysql", "mariadb"],
    reserved_prefixes: &[],
    // `IDENTIFIED BY '…'` would make the hash itself the password.
    verifier_after: &["PASSWORD", "USING"],
};

/// ER_CANNOT_USER: the account does not exist (for `ALTER USER`).
const ER_CANNOT_USER: u16 = 1396;
/// ER_NO_SUCH_THREAD: the connection ended before `KILL` reached it.
const ER_NO_SUCH_THREAD: u16 = 1094;

/// Issues temporary MariaDB users. Keeps a few idle admin connections per target.
#[derive(Default)]
pub struct MariaDbProvider {
    cache: ConnCache<MySqlConnection>,
}

impl MariaDbProvider {
    pub fn new() -> Self {
        MariaDbProvider::default()
    }
}

struct Ctx<'a> {
    target: &'a Target,
    config: Config,
    admin: Admin,
    secret: &'a SecretString,
    options: MySqlConnectOptions,
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

fn admin_options(admin: &Admin, url: &url::Url) -> Result<MySqlConnectOptions, ProviderError> {
    let options = MySqlConnectOptions::from_url(url).map_err(|e| admin.connect_error("", e))?;
    // sqlx logs statements (and slow ones at WARN with their text); ours carry passwords.
    Ok(options.disable_statement_logging())
}

/// The issue statements, each with what it is for the error message: the creation
/// statements with `{{password}}` as the `mysql_native_password` hash of `password` (never
/// the password), then `grants`. Also returns the hash (to scrub from errors).
fn creation_statements(
    config: &Config,
    grants: &[Template],
    values: Values<'_>,
    password: &SecretString,
) -> (Vec<(String, SecretString)>, SecretString) {
    let hash = verifier::mysql_native(password);
    let values = Values {
        password: Some(&hash),
        ..values
    };
    let statements = config
        .creation
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("creation statement {}", i + 1), t.render(&values)))
        .chain(
            grants
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("grant statement {}", i + 1), t.render(&values))),
        )
        .collect();
    (statements, hash)
}

/// Runs SQL text with the simple query protocol. (Going through `Executor::execute`
/// rather than `RawSql::execute` keeps the future `Send` for `async_trait`.)
async fn exec(conn: &mut MySqlConnection, sql: &str) -> Result<(), sqlx::Error> {
    conn.execute(sqlx::raw_sql(sql)).await.map(|_| ())
}

/// `ALTER USER <account> IDENTIFIED BY PASSWORD '<hash>'` (`account` already quoted),
/// with the hash it carries. The account keeps (or gets) `mysql_native_password`.
fn set_password(account: &str, password: &SecretString) -> (SecretString, SecretString) {
    let hash = verifier::mysql_native(password);
    // `*` and hex digits: safe inside the literal in every sql_mode.
    let stmt = SecretString::new(format!(
        "ALTER USER {account} IDENTIFIED BY PASSWORD '{}'",
        hash.expose()
    ));
    (stmt, hash)
}

/// The account this session authenticated as, `(user, host)`.
async fn current_account(conn: &mut MySqlConnection) -> Result<(String, String), sqlx::Error> {
    let account: String = sqlx::query_scalar("SELECT CAST(CURRENT_USER() AS CHAR)")
        .fetch_one(&mut *conn)
        .await?;
    // `user@host`; the host never contains `@`, the user might.
    Ok(match account.rsplit_once('@') {
        Some((u, h)) => (u.to_string(), h.to_string()),
        None => (account, String::new()),
    })
}

fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// Account hosts come from `mysql.user`; they are substituted into SQL only when they
/// look like a host pattern (`%`, `10.0.%`, `app.example`, `::1`, `10.0.0.0/255.0.0.0`).
fn safe_host(host: &str) -> bool {
    host.chars()
        .all(|c| c.is_ascii_alphanumeric() || "._%:-/".contains(c))
}

/// `'name'@'host'`; both parts are pre-validated, quoting is the second line of defence.
fn account(name: &str, host: &str) -> String {
    format!(
        "'{}'@'{}'",
        literal_body(name, false),
        literal_body(host, false)
    )
}

/// The inside of a `'…'` string literal. With `NO_BACKSLASH_ESCAPES` a backslash is an
/// ordinary character; otherwise it escapes and must be doubled. Quotes are doubled in
/// both modes.
fn literal_body(s: &str, no_backslash_escapes: bool) -> String {
    let s = if no_backslash_escapes {
        s.to_string()
    } else {
        s.replace('\\', "\\\\")
    };
    s.replace('\'', "''")
}

impl MariaDbProvider {
    async fn connect(&self, ctx: &Ctx<'_>) -> Result<MySqlConnection, ProviderError> {
        self.cache
            .acquire(ctx.name(), ctx.secret, &ctx.options)
            .await
            .map_err(|e| ctx.admin.connect_error(ctx.name(), e))
    }

    fn release(&self, ctx: &Ctx<'_>, conn: MySqlConnection) {
        self.cache.put(ctx.name(), ctx.secret, conn);
    }

    /// Removes every account named `name`: locked, connections killed, then the revocation
    /// statements per host. Returns whether any account existed.
    async fn drop_user(
        &self,
        ctx: &Ctx<'_>,
        conn: &mut MySqlConnection,
        name: &str,
    ) -> Result<bool, ProviderError> {
        // `mysql.user` columns use a binary collation, which sqlx would hand back as bytes.
        let hosts: Vec<String> =
            sqlx::query_scalar("SELECT CONVERT(Host USING utf8mb4) FROM mysql.user WHERE User = ?")
                .bind(name)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| ctx.stmt_err("looking up the user", e, &[]))?;
        if hosts.is_empty() {
            return Ok(false);
        }
        if let Some(h) = hosts.iter().find(|h| !safe_host(h)) {
            return Err(ProviderError::Failed(format!(
                "user {name} has an account with an unexpected host {h:?}; drop it by hand"
            )));
        }
        // Without PROCESS the process list shows only the admin's own connections, so the
        // user's sessions would silently survive: refuse instead of pretending.
        let has_process: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES \
             WHERE PRIVILEGE_TYPE = 'PROCESS'",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| ctx.stmt_err("checking the PROCESS privilege", e, &[]))?;
        if has_process == 0 {
            return Err(ProviderError::Failed(format!(
                "the admin account of target {} lacks the PROCESS privilege (granted directly), \
                 so the sessions of {name} cannot be found and killed",
                ctx.name()
            )));
        }
        // Locked first, so nobody logs in between the kill and the drop.
        for h in &hosts {
            match exec(
                conn,
                &format!("ALTER USER {} ACCOUNT LOCK", account(name, h)),
            )
            .await
            {
                Ok(_) => {}
                Err(e) if error_number(&e) == Some(ER_CANNOT_USER) => {}
                Err(e) => return Err(ctx.stmt_err("locking the account", e, &[])),
            }
        }
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE USER = ? AND ID <> CONNECTION_ID()",
        )
        .bind(name)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| ctx.stmt_err("listing connections", e, &[]))?;
        for id in &ids {
            match exec(conn, &format!("KILL CONNECTION {id}")).await {
                Ok(_) => {}
                Err(e) if error_number(&e) == Some(ER_NO_SUCH_THREAD) => {}
                Err(e) => return Err(ctx.stmt_err("killing a connection", e, &[])),
            }
        }
        if !ids.is_empty() {
            tracing::info!(
                target = ctx.name(),
                user = name,
                sessions = ids.len(),
                "killed connections"
            );
        }
        for h in &hosts {
            let values = Values {
                name,
                host: h,
                ..Values::default()
            };
            for (i, t) in ctx.config.revocation.iter().enumerate() {
                let stmt = t.render(&values);
                exec(conn, stmt.expose()).await.map_err(|e| {
                    ctx.stmt_err(&format!("revocation statement {}", i + 1), e, &[])
                })?;
            }
        }
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
        let (statements, hash) = creation_statements(&ctx.config, grants, values, &password);
        let mut conn = self.connect(ctx).await?;
        for (index, (what, stmt)) in statements.iter().enumerate() {
            if let Err(e) = exec(&mut conn, stmt.expose()).await {
                let err = ctx.stmt_err(what, e, &[&password, &hash]);
                // The first statement creates the user; once it succeeded, a later failure
                // leaves a half-made user that must go (DDL here is not transactional).
                // A failed first statement created nothing of ours, and dropping could hit
                // a same-named user we did not make.
                if index > 0 {
                    if let Err(cleanup) = self.drop_user(ctx, &mut conn, &name).await {
                        tracing::warn!(target = ctx.name(), user = %name, error = %cleanup, "could not drop a half-created user; reconciliation will");
                    }
                }
                return Err(err);
            }
        }
        self.release(ctx, conn);
        tracing::info!(target = ctx.name(), user = %name, action = %r.grant.action, "created user");

        let host = ctx.config.host.clone().unwrap_or_else(|| ctx.admin.host());
        let port = ctx.config.port.unwrap_or_else(|| ctx.admin.port(&SPEC));
        let database = ctx.config.database.clone().or_else(|| ctx.admin.database());
        let dsn = user_dsn("mysql", &name, &password, &host, port, database.as_deref());
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
        let prefix = ctx.config.username.prefix();
        // The admin itself and administrative accounts are never candidates, even when
        // their names start with the prefix (`mayfly_admin` starts with `mayfly_`).
        let (me, _) = current_account(&mut conn)
            .await
            .map_err(|e| ctx.stmt_err("reading the admin account", e, &[]))?;
        // Filtered here rather than in SQL: the privilege columns and the connection's
        // literals have different collations, which MariaDB refuses to compare.
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT CONVERT(User USING utf8mb4), CONVERT(Super_priv USING utf8mb4), \
                    CONVERT(Create_user_priv USING utf8mb4) \
             FROM mysql.user WHERE LEFT(User, CHAR_LENGTH(?)) = ? ORDER BY 1",
        )
        .bind(prefix)
        .bind(prefix)
        .fetch_all(&mut conn)
        .await
        .map_err(|e| ctx.stmt_err("listing users", e, &[]))?;
        let admins: BTreeSet<&str> = rows
            .iter()
            .filter(|(_, sup, cu)| sup == "Y" || cu == "Y")
            .map(|(u, _, _)| u.as_str())
            .collect();
        let mut names: Vec<String> = rows
            .iter()
            .filter(|(u, _, _)| *u != me && !admins.contains(u.as_str()))
            .map(|(u, _, _)| u.clone())
            .collect();
        names.dedup();
        // No marker exists on MariaDB (see the module docs): the store's record decides.
        let candidates = names
            .into_iter()
            .filter(|n| ctx.config.username.accepts(n))
            .map(|name| Candidate { name, marked: true })
            .collect();
        let mut report = ReconcileReport::default();
        let remove = removable(ledger, candidates, &mut report).await?;
        for name in remove {
            match self.drop_user(ctx, &mut conn, &name).await {
                Ok(_) => report.dropped.push(name),
                Err(e @ ProviderError::Unavailable(_)) => return Err(e),
                Err(e) => report.failed.push((name, e.to_string())),
            }
        }
        self.release(ctx, conn);
        Ok(report)
    }

    /// Connects with `options` and runs `SELECT 1`, within the target's timeout.
    async fn check(
        &self,
        ctx: &Ctx<'_>,
        options: &MySqlConnectOptions,
    ) -> Result<(), ProviderError> {
        with_timeout(&ctx.config, ctx.name(), async {
            let mut check = MySqlConnection::connect_with(options)
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
            MySqlConnection::connect_with(&ctx.options)
                .await
                .map_err(|e| ctx.admin.connect_error(ctx.name(), e))
        })
        .await?;
        // No client-side timeout from here on: a cancelled change could still apply. The
        // server bounds the statements instead; the caller recorded `next` before this,
        // so a change that applies is never lost.
        exec(
            &mut conn,
            &format!(
                "SET SESSION max_statement_time = {}",
                ctx.config.timeout.as_secs()
            ),
        )
        .await
        .map_err(|e| ctx.stmt_err("setting a statement timeout", e, &[]))?;
        let sql_mode: String = sqlx::query_scalar("SELECT CAST(@@SESSION.sql_mode AS CHAR)")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| ctx.stmt_err("reading sql_mode", e, &[]))?;
        let no_backslash_escapes = sql_mode.contains("NO_BACKSLASH_ESCAPES");

        // `ALTER USER CURRENT_USER()` is accepted but changes nothing on MariaDB 10.11, so
        // the account is named explicitly.
        let (user, host) = current_account(&mut conn)
            .await
            .map_err(|e| ctx.stmt_err("reading the admin account", e, &[]))?;
        if !safe_host(&host) {
            return Err(ProviderError::Failed(format!(
                "admin account host {host:?} has unexpected characters"
            )));
        }
        let me = format!(
            "'{}'@'{}'",
            literal_body(&user, no_backslash_escapes),
            literal_body(&host, no_backslash_escapes)
        );
        let (stmt, hash) = set_password(&me, &new);
        exec(&mut conn, stmt.expose())
            .await
            .map_err(|e| ctx.stmt_err("changing the admin password", e, &[&new, &hash]))?;
        self.cache.forget(ctx.name());
        let verified = self.check(ctx, &next_options).await;
        match verified {
            Ok(()) => {
                let _ = conn.close().await;
                tracing::info!(target = ctx.name(), "rotated the admin password");
                Ok(())
            }
            Err(e) => {
                let reason = ctx.admin.scrub(e.to_string(), &[&new, next]);
                let old = ctx
                    .admin
                    .password()
                    .unwrap_or_else(|| SecretString::new(String::new()));
                // As a hash, like every password here: any old password can be restored.
                let restored = {
                    let (stmt, hash) = set_password(&me, &old);
                    exec(&mut conn, stmt.expose())
                        .await
                        .map(|_| ())
                        .map_err(|e| {
                            ctx.stmt_err("restoring the admin password", e, &[&old, &new, &hash])
                        })
                };
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
}

#[async_trait::async_trait]
impl Provider for MariaDbProvider {
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
        _lease: &Lease,
        _grant: &Grant,
        target: TargetAccess<'_>,
        _new_expiry: OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError> {
        // No per-user expiry exists on MariaDB; the lease's new expiry is all there is.
        Ctx::new(target)?;
        Ok(None)
    }

    async fn revoke(&self, lease: &Lease, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(target)?;
        let name = lease_username(lease, &ctx.config.username)?;
        with_timeout(&ctx.config, ctx.name(), async {
            let mut conn = self.connect(&ctx).await?;
            let existed = self.drop_user(&ctx, &mut conn, &name).await?;
            self.release(&ctx, conn);
            tracing::info!(target = ctx.name(), user = %name, existed, "revoked user");
            Ok(())
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
            let accounts: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM mysql.user WHERE User = ?")
                    .bind(&name)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|e| ctx.stmt_err("checking the user is gone", e, &[]))?;
            self.release(&ctx, conn);
            Ok(accounts == 0)
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

    #[test]
    fn statements_carry_a_hash_never_the_password() {
        let target = Target {
            name: "maria".into(),
            kind: "mariadb".into(),
            actions: vec!["read".into()],
            default_ttl: "1h".parse().unwrap(),
            max_ttl: "1h".parse().unwrap(),
            allow: vec![],
            settings: serde_json::json!({"grants": {"read": ["GRANT SELECT ON db.* TO '{{name}}'@'%'"]}}),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        let config = Config::from_target(&SPEC, &target).unwrap();
        let password = generate_password(32).unwrap();
        let values = Values {
            name: "mayfly_svc_0123456789",
            ..Values::default()
        };
        let (statements, hash) = creation_statements(
            &config,
            config.grants_for("read").unwrap(),
            values,
            &password,
        );
        assert_eq!(hash.expose(), verifier::mysql_native(&password).expose());
        assert_eq!(
            statements[0].1.expose(),
            format!(
                "CREATE USER 'mayfly_svc_0123456789'@'%' IDENTIFIED BY PASSWORD '{}'",
                hash.expose()
            )
        );
        assert_eq!(statements.len(), 2);
        for (_, s) in &statements {
            assert!(!s.expose().contains(password.expose()));
        }
        let (rotate, hash) = set_password("'a'@'%'", &password);
        assert!(!rotate.expose().contains(password.expose()));
        assert!(rotate
            .expose()
            .ends_with(&format!("PASSWORD '{}'", hash.expose())));
    }

    #[test]
    fn quoting() {
        assert_eq!(literal_body("a'b\\c", false), "a''b\\\\c");
        assert_eq!(literal_body("a'b\\c", true), "a''b\\c");
        assert_eq!(account("u", "%"), "'u'@'%'");
        assert!(safe_host("10.0.%") && safe_host("::1") && safe_host("%"));
        assert!(!safe_host("x'y") && !safe_host("a b"));
    }
}
