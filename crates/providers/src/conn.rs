//! Admin connections for the database providers: parsing the admin secret, keeping a few
//! idle connections per target, and turning driver errors into [`ProviderError`]s that
//! never carry a secret.
//!
//! The admin secret is a URL with a password. It is only ever parsed (into [`url::Url`]
//! and the driver's connect options), never formatted into a message, and every driver
//! error passes through [`Admin::scrub`] before it becomes text, because a driver is free
//! to echo its input (a URL, or a statement containing a generated password).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mayfly_core::provider::ProviderError;
use mayfly_core::secret::SecretString;
use sqlx::Connection;

use crate::common::{Config, EngineSpec};

/// The admin secret, parsed.
pub struct Admin {
    url: url::Url,
    /// Text that must never appear in a message: the whole secret and its password in
    /// both encoded and decoded form.
    redact: Vec<SecretString>,
}

impl Admin {
    pub fn parse(spec: &EngineSpec, secret: Option<&SecretString>) -> Result<Admin, ProviderError> {
        let example = format!(
            "{}://mayfly_admin:PASSWORD@host:{}/db",
            spec.schemes.first().copied().unwrap_or_default(),
            spec.default_port
        );
        Admin::parse_url(spec.kind, spec.schemes, &example, true, secret)
    }

    /// [`Admin::parse`] for kinds outside the SQL engines (Redis, RabbitMQ): `example` is
    /// shown when the secret is missing, and `user_required: false` accepts a URL without
    /// a user (Redis's `default` user).
    pub fn parse_url(
        kind: &str,
        schemes: &[&str],
        example: &str,
        user_required: bool,
        secret: Option<&SecretString>,
    ) -> Result<Admin, ProviderError> {
        let secret = secret.ok_or_else(|| {
            ProviderError::BadSettings(format!(
                "{kind} targets need an admin secret: a URL such as {example}"
            ))
        })?;
        let mut redact = vec![secret.clone()];
        // `url::ParseError`'s text never contains the input.
        let url = url::Url::parse(secret.expose())
            .map_err(|e| ProviderError::BadSettings(format!("admin secret is not a URL: {e}")))?;
        if !schemes.contains(&url.scheme()) {
            return Err(ProviderError::BadSettings(format!(
                "admin URL scheme must be one of {schemes:?}"
            )));
        }
        if user_required && url.username().is_empty() {
            return Err(ProviderError::BadSettings("admin URL names no user".into()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ProviderError::BadSettings("admin URL names no host".into()));
        }
        if let Some(pw) = url.password() {
            redact.push(SecretString::new(pw.to_string()));
            let decoded = percent_decode(pw);
            if decoded != pw {
                redact.push(SecretString::new(decoded));
            }
        }
        Ok(Admin { url, redact })
    }

    pub fn url(&self) -> &url::Url {
        &self.url
    }

    pub fn username(&self) -> String {
        percent_decode(self.url.username())
    }

    pub fn password(&self) -> Option<SecretString> {
        self.url
            .password()
            .map(|p| SecretString::new(percent_decode(p)))
    }

    /// Host as written in the URL (IPv6 in brackets), port, database.
    pub fn host(&self) -> String {
        self.url.host_str().unwrap_or_default().to_string()
    }

    pub fn port(&self, spec: &EngineSpec) -> u16 {
        self.port_or(spec.default_port)
    }

    /// The URL's port, or `default` where it names none.
    pub fn port_or(&self, default: u16) -> u16 {
        self.url.port().unwrap_or(default)
    }

    pub fn database(&self) -> Option<String> {
        let p = self.url.path().trim_start_matches('/');
        (!p.is_empty()).then(|| percent_decode(p))
    }

    /// The same URL with `password` in place of the admin's.
    pub fn with_password(&self, password: &SecretString) -> Result<SecretString, ProviderError> {
        let mut url = self.url.clone();
        url.set_password(Some(password.expose())).map_err(|_| {
            ProviderError::Failed("cannot place the new password in the admin URL".into())
        })?;
        Ok(SecretString::new(url.to_string()))
    }

    /// The password of `next`, a planned admin secret, after checking it is this secret
    /// with only the password changed: root rotation changes who Mayfly knows the admin
    /// as by password only, never which account or server it talks to.
    pub fn next_password(&self, next: &Admin) -> Result<SecretString, ProviderError> {
        let mut same = next.url.clone();
        let _ = same.set_password(self.url.password());
        if same != self.url {
            return Err(ProviderError::BadSettings(
                "the planned admin secret names another account or server than the current one"
                    .into(),
            ));
        }
        next.password()
            .filter(|p| !p.expose().is_empty())
            .ok_or_else(|| {
                ProviderError::BadSettings("the planned admin secret has no password".into())
            })
    }

    /// `message` with every admin secret and each of `extra` replaced by `[redacted]`.
    pub fn scrub(&self, message: String, extra: &[&SecretString]) -> String {
        let mut out = message;
        let all = self.redact.iter().chain(extra.iter().copied());
        // Longest first, so the whole URL goes before the password inside it.
        let mut all: Vec<&SecretString> = all.collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        for s in all {
            // Very short passwords would mangle ordinary words; they are too weak to matter
            // more than a readable message, and the URL itself is still removed.
            if s.expose().len() >= 3 && out.contains(s.expose()) {
                out = out.replace(s.expose(), "[redacted]");
            }
        }
        out
    }

    /// Why a connection attempt failed, as an error the server retries (a target that
    /// refuses the admin is as unusable as one that is down).
    pub fn connect_error(&self, target: &str, e: sqlx::Error) -> ProviderError {
        match e {
            sqlx::Error::Configuration(m) => {
                ProviderError::BadSettings(format!("admin URL: {}", self.scrub(m.to_string(), &[])))
            }
            e => ProviderError::Unavailable(format!(
                "cannot connect to target {target}: {}",
                self.scrub(e.to_string(), &[])
            )),
        }
    }

    /// A statement failed: `Unavailable` when the connection or server is the problem
    /// (worth retrying), `Failed` when the statement is.
    pub fn statement_error(
        &self,
        target: &str,
        what: &str,
        e: sqlx::Error,
        extra: &[&SecretString],
    ) -> ProviderError {
        let text = self.scrub(e.to_string(), extra);
        let transient = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                // PostgreSQL SQLSTATE classes: 08 connection, 53 resources, 57 operator
                // intervention (shutdown), 40 rollback (deadlock, serialization).
                // MariaDB reports most errors as HY000, so also match its numbers.
                let mysql_no = db
                    .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                    .map(|m| m.number());
                ["08", "53", "57", "40"].iter().any(|c| code.starts_with(c))
                    || matches!(mysql_no, Some(1040 | 1053 | 1205 | 1213 | 2006 | 2013))
            }
            _ => false,
        };
        let msg = format!("{what} on target {target}: {text}");
        if transient {
            ProviderError::Unavailable(msg)
        } else {
            ProviderError::Failed(msg)
        }
    }
}

/// Decodes `%XX` escapes (the URL's user, password and path); invalid escapes stay as is.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Idle admin connections kept per target, so issuing and revoking do not pay for a new
/// backend and an authentication handshake every time.
///
/// An entry remembers the admin secret it was opened with; a call with a different secret
/// (after a root rotation or a target update) discards the entry. A connection is returned
/// only after an operation succeeded, so one in an unknown state is never reused.
pub struct ConnCache<C> {
    entries: Mutex<HashMap<String, Entry<C>>>,
}

struct Entry<C> {
    admin: SecretString,
    idle: Vec<(C, Instant)>,
}

/// More idle connections than this per target are closed: the server's schedulers work a
/// target a few operations at a time.
const MAX_IDLE: usize = 4;
/// Idle connections younger than this are used without a ping.
const PING_AFTER: Duration = Duration::from_secs(1);
/// Idle connections older than this are dropped rather than pinged back to life.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);

impl<C> Default for ConnCache<C> {
    fn default() -> Self {
        ConnCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<C: Connection> ConnCache<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<C>>> {
        // A panic while holding the lock cannot leave the map inconsistent (each operation
        // is a single insert or pop), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, key: &str, admin: &SecretString) -> Option<(C, Instant)> {
        let mut map = self.lock();
        let entry = map.get_mut(key)?;
        if !entry.admin.ct_eq(admin.expose()) {
            map.remove(key);
            return None;
        }
        while let Some((c, since)) = entry.idle.pop() {
            if since.elapsed() < MAX_IDLE_AGE {
                return Some((c, since));
            }
        }
        None
    }

    /// Returns a connection after a successful operation.
    pub fn put(&self, key: &str, admin: &SecretString, conn: C) {
        let mut map = self.lock();
        let entry = map.entry(key.to_string()).or_insert_with(|| Entry {
            admin: admin.clone(),
            idle: Vec::new(),
        });
        if !entry.admin.ct_eq(admin.expose()) {
            *entry = Entry {
                admin: admin.clone(),
                idle: Vec::new(),
            };
        }
        entry
            .idle
            .retain(|(_, since)| since.elapsed() < MAX_IDLE_AGE);
        if entry.idle.len() < MAX_IDLE {
            entry.idle.push((conn, Instant::now()));
        }
    }

    /// Forgets every idle connection of a target (after its admin password changed).
    pub fn forget(&self, key: &str) {
        self.lock().remove(key);
    }

    /// An idle connection, or a new one. A connection idle for more than a second is
    /// pinged first (the server may have restarted or cut it); one used just now is not,
    /// which saves a round trip per operation under load. Should it have died anyway, the
    /// operation fails as `Unavailable`, the connection is discarded and the retry opens a
    /// fresh one.
    pub async fn acquire(
        &self,
        key: &str,
        admin: &SecretString,
        options: &C::Options,
    ) -> Result<C, sqlx::Error> {
        while let Some((mut c, since)) = self.take(key, admin) {
            if since.elapsed() < PING_AFTER || c.ping().await.is_ok() {
                return Ok(c);
            }
        }
        C::connect_with(options).await
    }
}

/// Runs one provider operation under the target's timeout, so a target that accepts TCP
/// but never answers cannot hold a scheduler forever.
pub async fn with_timeout<T>(
    config: &Config,
    target: &str,
    op: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    within(config.timeout, target, op).await
}

/// [`with_timeout`] for providers without a SQL [`Config`].
pub async fn within<T>(
    timeout: Duration,
    target: &str,
    op: impl std::future::Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    match tokio::time::timeout(timeout, op).await {
        Ok(r) => r,
        Err(_) => Err(ProviderError::Unavailable(format!(
            "target {target} did not answer within {} s",
            timeout.as_secs()
        ))),
    }
}

/// Builds the connection URL handed to the requester.
pub fn user_dsn(
    scheme: &str,
    username: &str,
    password: &SecretString,
    host: &str,
    port: u16,
    database: Option<&str>,
) -> SecretString {
    // Username and password are `[a-z0-9_]` / alphanumeric: nothing to escape. The database
    // name is operator-chosen, so escape everything outside the URL-safe set.
    let db = database.map(encode_path).unwrap_or_default();
    SecretString::new(format!(
        "{scheme}://{username}:{}@{host}:{port}/{db}",
        password.expose()
    ))
}

fn encode_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::template::Var;

    const SPEC: EngineSpec = EngineSpec {
        kind: "postgres",
        max_username: 63,
        default_creation: &[],
        default_revocation: &[],
        revocation_vars: &[Var::Name],
        default_port: 5432,
        schemes: &["postgres", "postgresql"],
        reserved_prefixes: &[],
        verifier_after: &[],
    };

    #[test]
    fn parses_and_redacts() {
        let s = SecretString::new("postgres://adm:p%40ss%2Fw0rd@db.example:6543/app%20db".into());
        let a = Admin::parse(&SPEC, Some(&s)).unwrap();
        assert_eq!(a.username(), "adm");
        assert_eq!(a.password().unwrap().expose(), "p@ss/w0rd");
        assert_eq!(a.host(), "db.example");
        assert_eq!(a.port(&SPEC), 6543);
        assert_eq!(a.database().as_deref(), Some("app db"));
        let msg = a.scrub(
            format!("bad {} and p@ss/w0rd and p%40ss%2Fw0rd", s.expose()),
            &[],
        );
        assert!(!msg.contains("w0rd"), "{msg}");
        let new = a.with_password(&SecretString::new("N3w".into())).unwrap();
        assert_eq!(new.expose(), "postgres://adm:N3w@db.example:6543/app%20db");
    }

    #[test]
    fn rejects_bad_secrets_without_echoing_them() {
        for bad in [
            "not a url s3cr3t",
            "mysql://u:s3cr3t@h/db",
            "postgres://:s3cr3t@h/db",
            "postgres://u:s3cr3t@:5/db",
        ] {
            let e = Admin::parse(&SPEC, Some(&SecretString::new(bad.into())))
                .err()
                .unwrap();
            assert!(!format!("{e} {e:?}").contains("s3cr3t"), "{bad}: {e}");
        }
        assert!(Admin::parse(&SPEC, None).is_err());
    }

    #[test]
    fn dsn_and_decoding() {
        let pw = SecretString::new("abc".into());
        let d = user_dsn("postgres", "u", &pw, "h", 1, Some("a b/c"));
        assert_eq!(d.expose(), "postgres://u:abc@h:1/a%20b%2Fc");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }
}
