//! The `redis` credential kind: a Redis ACL user per lease (Redis 7; `ACL DRYRUN`, used
//! by the live target check, is 7.0+).
//!
//! Issue runs one `ACL SETUSER <name> on #<sha256> resetkeys resetchannels -@all <rules>`,
//! with the action's rules from the target settings. Redis 7 applies `ACL SETUSER`
//! atomically (all rules or none), so a failed issue leaves nothing behind. The password
//! travels only as its SHA-256 (`#<hex>`, [`crate::verifier::redis_sha256`]), which is all
//! Redis keeps of it anyway.
//!
//! Revoke runs `ACL DELUSER` (which ends the user's connections on Redis 7) and then
//! `CLIENT KILL USER`, so connections end on servers that do not do it on deletion too,
//! and `ACL SAVE`, pipelined in one round trip.
//! Where Redis has an ACL file, revoke and root rotation save it, so a restart
//! can neither bring a deleted user back nor revert the admin password (without one,
//! users made at run time are gone after a restart anyway, and so is a rotated password
//! of a user defined in `redis.conf`: give the admin user an ACL file).
//! Reconciliation lists `ACL USERS` by the template's prefix; Redis has no place for a
//! marker on a user, so the store's record is the only proof (as on MariaDB). Root
//! rotation replaces the admin user's passwords (`resetpass #<new>`).
//!
//! The client is a small RESP2 implementation over TCP or TLS ([`Client`]): the provider
//! sends a handful of commands and needs no pub/sub or cluster support. A few idle admin
//! connections are kept per target.
//!
//! # Target settings
//!
//! | key | type | default |
//! | --- | --- | --- |
//! | `grants` | map action -> ACL rules (one string, as after `ACL SETUSER name`) | required: one entry per target action |
//! | `username_template` | template | `mayfly_{{identity}}_{{rand}}` |
//! | `password_length` | integer 16..=128 | 32 |
//! | `host`, `port` | handed to the requester | from the admin URL |
//! | `timeout_seconds` | integer 1..=600 | 30 |
//!
//! Rules are key patterns (`~app:*`, `%R~app:*`, `allkeys`), channel patterns (`&news.*`),
//! commands and categories (`+get`, `-@dangerous`, `+config|get`) and selectors
//! (`(~tmp:* +set)`). Rules that set state or passwords (`on`, `off`, `>…`, `#…`,
//! `nopass`, `reset`…) are refused: the provider sets those. [`RedisProvider::check_target`]
//! tries the rules on a disabled throwaway user, so rules Redis refuses (an unknown
//! command) are refused with Redis's reason, and refuses rules that would let the user run
//! `ACL SETUSER` (a lease holder could make a user that outlives the lease).
//!
//! # Admin URL
//!
//! `redis://[user:password@]host[:port]` or `rediss://…` (TLS, server checked against the
//! system's roots). Without a user the `default` user is the admin. The admin needs
//! `+acl +client|kill +ping` (checked by the live target check).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mayfly_core::model::{Grant, Lease, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Ledger, Provider, ProviderError, ReconcileReport, TargetAccess,
};
use mayfly_core::secret::SecretString;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::conn::{within, Admin};
use crate::plan::{
    check_grant_actions, generate_password, lease_username, removable, username_from_state, Basics,
    Candidate, NameRules, StateUse,
};
use crate::verifier;

pub const KIND: &str = "redis";
pub const DEFAULT_PORT: u16 = 6379;
const SCHEMES: &[&str] = &["redis", "rediss"];
/// Redis puts no limit on user names; this keeps them readable in `ACL LIST`.
const NAMES: NameRules = NameRules {
    kind: KIND,
    max_len: 64,
    reserved_prefixes: &[],
};
/// The ACL categories of Redis 7 (`ACL CAT`), so a typo is refused without a round trip.
const CATEGORIES: &[&str] = &[
    "all",
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

fn bad(msg: impl Into<String>) -> ProviderError {
    ProviderError::BadSettings(msg.into())
}

/// The settings as written in the target definition.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSettings {
    #[serde(default)]
    grants: BTreeMap<String, String>,
    username_template: Option<String>,
    password_length: Option<usize>,
    host: Option<String>,
    port: Option<u16>,
    timeout_seconds: Option<u64>,
    // Read by runtime policy, not by the provider (as for the SQL kinds).
    environment: Option<String>,
    sensitivity: Option<String>,
    owner: Option<String>,
    groups: Option<Vec<String>>,
}

/// Settings after validation: each action's rules split into `ACL SETUSER` arguments.
#[derive(Debug)]
pub struct Config {
    pub grants: BTreeMap<String, Vec<String>>,
    pub basics: Basics,
    pub host: Option<String>,
    pub port: Option<u16>,
}

impl Config {
    pub fn from_target(target: &Target) -> Result<Config, ProviderError> {
        if target.kind != KIND {
            return Err(bad(format!(
                "target kind is {:?}, this provider issues {KIND:?}",
                target.kind
            )));
        }
        let s: RedisSettings = match &target.settings {
            serde_json::Value::Null => RedisSettings::default(),
            v => serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?,
        };
        let _ = (&s.environment, &s.sensitivity, &s.owner, &s.groups);
        check_grant_actions(target, s.grants.keys())?;
        let mut grants = BTreeMap::new();
        for (action, text) in &s.grants {
            let rules = split_rules(text).map_err(|e| bad(format!("grants.{action}: {e}")))?;
            grants.insert(action.clone(), rules);
        }
        let basics = Basics::check(
            &NAMES,
            s.username_template.as_deref(),
            s.password_length,
            s.timeout_seconds,
            s.host.as_deref(),
            s.port,
        )?;
        Ok(Config {
            grants,
            basics,
            host: s.host,
            port: s.port,
        })
    }

    fn rules(&self, action: &str) -> Result<&[String], ProviderError> {
        self.grants
            .get(action)
            .map(Vec::as_slice)
            .ok_or_else(|| bad(format!("grants has no entry for action {action:?}")))
    }
}

/// Splits an action's rules into `ACL SETUSER` arguments (whitespace-separated; a selector
/// `( … )` is one argument) and checks each.
pub fn split_rules(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut selector: Option<String> = None;
    for word in text.split_whitespace() {
        if let Some(mut sel) = selector.take() {
            sel.push(' ');
            sel.push_str(word);
            if word.ends_with(')') {
                out.push(sel);
            } else {
                selector = Some(sel);
            }
        } else if word.starts_with('(') && !(word.len() > 1 && word.ends_with(')')) {
            selector = Some(word.to_string());
        } else {
            out.push(word.to_string());
        }
    }
    if selector.is_some() {
        return Err("a selector \"(\" is not closed".into());
    }
    for rule in &out {
        check_rule(rule, true)?;
    }
    Ok(out)
}

/// One ACL rule: what Redis accepts for keys, channels and commands, and nothing that sets
/// the user's state or passwords.
fn check_rule(rule: &str, top_level: bool) -> Result<(), String> {
    if rule.chars().any(|c| c.is_control()) {
        return Err(format!("rule {rule:?} contains a control character"));
    }
    match rule.to_ascii_lowercase().as_str() {
        "allkeys" | "resetkeys" | "allchannels" | "resetchannels" | "allcommands"
        | "nocommands" => return Ok(()),
        "on" | "off" | "nopass" | "resetpass" | "reset" | "clearselectors" => {
            return Err(format!(
                "rule {rule:?} is not allowed: Mayfly sets the user's state and password itself"
            ))
        }
        _ => {}
    }
    if let Some(inner) = rule.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        if !top_level {
            return Err(format!("selectors do not nest: {rule:?}"));
        }
        if inner.trim().is_empty() {
            return Err("a selector \"()\" is empty".into());
        }
        return inner
            .split_whitespace()
            .try_for_each(|r| check_rule(r, false));
    }
    let mut chars = rule.chars();
    let first = chars.next().unwrap_or(' ');
    let rest = chars.as_str();
    let nonempty = |what: &str, p: &str| {
        if p.is_empty() {
            Err(format!("rule {rule:?} has an empty {what} pattern"))
        } else {
            Ok(())
        }
    };
    match first {
        '>' | '<' | '#' | '!' => Err(format!(
            "rule {:?}… sets a password; Mayfly sets the user's password itself",
            first
        )),
        '~' => nonempty("key", rest),
        '&' => nonempty("channel", rest),
        '%' => {
            let (perm, pattern) = rest
                .split_once('~')
                .ok_or_else(|| format!("rule {rule:?}: expected %R~, %W~ or %RW~"))?;
            if perm.is_empty() || !perm.chars().all(|c| matches!(c, 'R' | 'W' | 'r' | 'w')) {
                return Err(format!("rule {rule:?}: expected %R~, %W~ or %RW~"));
            }
            nonempty("key", pattern)
        }
        '+' | '-' => {
            if let Some(cat) = rest.strip_prefix('@') {
                if CATEGORIES.contains(&cat.to_ascii_lowercase().as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "rule {rule:?}: unknown category; Redis 7 has {}",
                        CATEGORIES.join(", ")
                    ))
                }
            } else if !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "|_-.:".contains(c))
            {
                Ok(())
            } else {
                Err(format!(
                    "rule {rule:?}: expected a command name after {first}"
                ))
            }
        }
        _ => Err(format!(
            "rule {rule:?} is not an ACL rule (keys ~…, channels &…, commands +…/-…, selectors (…))"
        )),
    }
}

// ---------------------------------------------------------------------------------------
// RESP2 client

/// A RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or bulk string reply.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Status(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Why talking to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The connection (TCP, TLS) failed or broke; the message carries no secret.
    #[error("{0}")]
    Io(String),
    /// The server sent something that is not RESP.
    #[error("protocol error: {0}")]
    Protocol(String),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Where to connect and as whom (parsed from a `redis://` or `rediss://` URL).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `None`: authenticate as nobody (`default` with no password) or, with a password
    /// only, as `default`.
    pub user: Option<String>,
    pub password: Option<SecretString>,
}

impl Endpoint {
    /// Parses a `redis://` / `rediss://` URL. Errors never quote the URL.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let u = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let tls = match u.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => return Err("scheme must be redis or rediss".into()),
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL names no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let user = Some(crate::conn::percent_decode(u.username())).filter(|s| !s.is_empty());
        let password = u
            .password()
            .map(|p| SecretString::new(crate::conn::percent_decode(p)));
        Ok(Endpoint {
            tls,
            host,
            port: u.port().unwrap_or(DEFAULT_PORT),
            user,
            password,
        })
    }
}

/// Appends one command as a RESP array of bulk strings.
fn encode<'a>(out: &mut Vec<u8>, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// A RESP2 connection.
pub struct Client {
    io: BufReader<Box<dyn Io>>,
}

/// Bulk strings and arrays larger than this are refused (the provider reads user lists and
/// short replies; anything this large is not a Redis we talk to).
const MAX_BULK: usize = 64 << 20;
/// Longest status, error or length line accepted.
const MAX_LINE: u64 = 64 << 10;

fn tls_config() -> Result<Arc<rustls::ClientConfig>, RespError> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(c) = CONFIG.get() {
        return Ok(Arc::clone(c));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RespError::Io(format!("TLS set-up: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::clone(CONFIG.get_or_init(|| Arc::new(config))))
}

impl Client {
    /// Connects and authenticates (`AUTH [user] password` when the endpoint has a
    /// password). A refused `AUTH` is `Ok(Err(message))`.
    pub async fn connect(ep: &Endpoint) -> Result<Result<Client, String>, RespError> {
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| RespError::Io(format!("connecting to {}:{}: {e}", ep.host, ep.port)))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if ep.tls {
            let name = rustls::pki_types::ServerName::try_from(ep.host.clone())
                .map_err(|e| RespError::Io(format!("TLS server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(name, tcp)
                .await
                .map_err(|e| RespError::Io(format!("TLS handshake with {}: {e}", ep.host)))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let mut client = Client {
            io: BufReader::new(io),
        };
        if let Some(pw) = &ep.password {
            let user = ep.user.as_deref().unwrap_or("default");
            if let Reply::Error(e) = client
                .call(&[b"AUTH", user.as_bytes(), pw.expose().as_bytes()])
                .await?
            {
                return Ok(Err(e));
            }
        }
        Ok(Ok(client))
    }

    /// Sends one command and reads its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RespError> {
        let mut out = Vec::with_capacity(64);
        encode(&mut out, args.iter().copied());
        self.send(out).await?;
        self.read_reply().await
    }

    /// Sends several commands at once and reads their replies, in order: one round trip.
    pub async fn pipeline(&mut self, commands: &[&[&str]]) -> Result<Vec<Reply>, RespError> {
        let mut out = Vec::with_capacity(128);
        for args in commands {
            encode(&mut out, args.iter().map(|a| a.as_bytes()));
        }
        self.send(out).await?;
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    /// Writes and flushes `out`, then wipes it (it may hold a password hash).
    async fn send(&mut self, mut out: Vec<u8>) -> Result<(), RespError> {
        let written = self.io.get_mut().write_all(&out).await;
        out.fill(0);
        written.map_err(|e| RespError::Io(format!("sending: {e}")))?;
        self.io
            .get_mut()
            .flush()
            .await
            .map_err(|e| RespError::Io(format!("sending: {e}")))
    }

    /// [`Client::call`] with text arguments.
    pub async fn cmd(&mut self, args: &[&str]) -> Result<Reply, RespError> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call(&args).await
    }

    async fn line(&mut self) -> Result<String, RespError> {
        let mut line = Vec::new();
        // Bounded, so a server that never ends a line cannot grow this without limit.
        let n = (&mut self.io)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| RespError::Io(format!("reading: {e}")))?;
        if n == 0 {
            return Err(RespError::Io("the server closed the connection".into()));
        }
        if !line.ends_with(b"\r\n") {
            return Err(RespError::Protocol("a line without CRLF".into()));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| RespError::Protocol("a line that is not UTF-8".into()))
    }

    fn read_reply(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Reply, RespError>> + Send + '_>> {
        Box::pin(async move {
            let line = self.line().await?;
            let (Some(kind), Some(rest)) = (line.get(..1), line.get(1..)) else {
                return Err(RespError::Protocol(
                    "an empty or non-ASCII reply line".into(),
                ));
            };
            let len = |s: &str| -> Result<i64, RespError> {
                s.parse::<i64>()
                    .map_err(|_| RespError::Protocol(format!("bad length {s:?}")))
            };
            match kind {
                "+" => Ok(Reply::Status(rest.to_string())),
                "-" => Ok(Reply::Error(rest.to_string())),
                ":" => Ok(Reply::Int(len(rest)?)),
                "$" => {
                    let n = len(rest)?;
                    if n < 0 {
                        return Ok(Reply::Bulk(None));
                    }
                    let n = usize::try_from(n)
                        .ok()
                        .filter(|n| *n <= MAX_BULK)
                        .ok_or_else(|| RespError::Protocol("bulk string too large".into()))?;
                    let mut buf = vec![0u8; n + 2];
                    self.io
                        .read_exact(&mut buf)
                        .await
                        .map_err(|e| RespError::Io(format!("reading: {e}")))?;
                    buf.truncate(n);
                    Ok(Reply::Bulk(Some(buf)))
                }
                "*" => {
                    let n = len(rest)?;
                    if n < 0 {
                        return Ok(Reply::Array(None));
                    }
                    let n = usize::try_from(n)
                        .ok()
                        .filter(|n| *n <= MAX_BULK / 16)
                        .ok_or_else(|| RespError::Protocol("array too large".into()))?;
                    let mut items = Vec::with_capacity(n.min(1024));
                    for _ in 0..n {
                        items.push(self.read_reply().await?);
                    }
                    Ok(Reply::Array(Some(items)))
                }
                _ => Err(RespError::Protocol("unknown reply type".into())),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------
// The provider

/// Issues temporary Redis ACL users.
/// Issues temporary Redis ACL users. Keeps a few idle admin connections per target.
#[derive(Default)]
pub struct RedisProvider {
    idle: Idle,
}

impl RedisProvider {
    pub fn new() -> Self {
        RedisProvider::default()
    }

    /// An admin connection: an idle one of this target made with the same admin secret
    /// (pinged first when it has been idle a while), or a new one.
    async fn acquire(&self, ctx: &Ctx<'_>) -> Result<Client, ProviderError> {
        while let Some((mut c, since)) = self.idle.take(ctx.name(), ctx.secret) {
            if since.elapsed() < PING_AFTER
                || matches!(c.cmd(&["PING"]).await, Ok(Reply::Status(_)))
            {
                return Ok(c);
            }
        }
        ctx.connect().await
    }

    /// Returns a connection after an operation that succeeded (one that failed may be
    /// broken, and is dropped instead).
    fn release(&self, ctx: &Ctx<'_>, c: Client) {
        self.idle.put(ctx.name(), ctx.secret, c);
    }
}

/// Idle connections kept per target.
const MAX_IDLE: usize = 4;
/// An idle connection older than this is pinged before use (a restarted server, or a
/// `timeout` in redis.conf, ends idle connections).
const PING_AFTER: Duration = Duration::from_secs(30);

/// Target -> its idle connections, each with the secret it logged in with and since when.
type IdleMap = HashMap<String, Vec<(Client, SecretString, Instant)>>;

/// Idle admin connections by target, each with the admin secret it logged in with, so a
/// changed or rotated secret never reuses a session of the old one.
#[derive(Default)]
struct Idle {
    map: Mutex<IdleMap>,
}

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        // A panic elsewhere while holding the lock leaves a map that is still valid.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, target: &str, secret: &SecretString) -> Option<(Client, Instant)> {
        let mut map = self.lock();
        let list = map.get_mut(target)?;
        let i = list
            .iter()
            .rposition(|(_, s, _)| s.ct_eq(secret.expose()))?;
        let (c, _, since) = list.swap_remove(i);
        Some((c, since))
    }

    fn put(&self, target: &str, secret: &SecretString, c: Client) {
        let mut map = self.lock();
        let list = map.entry(target.to_string()).or_default();
        list.retain(|(_, s, _)| s.ct_eq(secret.expose()));
        if list.len() < MAX_IDLE {
            list.push((c, secret.clone(), Instant::now()));
        }
    }

    fn forget(&self, target: &str) {
        self.lock().remove(target);
    }
}

struct Ctx<'a> {
    target: &'a Target,
    config: Config,
    admin: Admin,
    secret: &'a SecretString,
    endpoint: Endpoint,
}

/// Server errors that mean "try again later" rather than "this command is wrong".
fn transient(reply: &str) -> bool {
    [
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "READONLY",
    ]
    .iter()
    .any(|p| reply.starts_with(p))
}

impl<'a> Ctx<'a> {
    fn new(access: TargetAccess<'a>) -> Result<Ctx<'a>, ProviderError> {
        let config = Config::from_target(access.target)?;
        let admin = Admin::parse_url(
            KIND,
            SCHEMES,
            "redis://mayfly_admin:PASSWORD@host:6379",
            false,
            access.admin,
        )?;
        let endpoint =
            Endpoint::parse(admin.url().as_str()).map_err(|e| bad(format!("admin URL: {e}")))?;
        let secret = access.admin.ok_or_else(|| bad("missing admin secret"))?;
        Ok(Ctx {
            target: access.target,
            config,
            admin,
            secret,
            endpoint,
        })
    }

    fn name(&self) -> &str {
        &self.target.name
    }

    /// The admin user's name (`default` when the URL names none).
    fn me(&self) -> String {
        self.endpoint
            .user
            .clone()
            .unwrap_or_else(|| "default".into())
    }

    fn io_err(&self, e: RespError) -> ProviderError {
        ProviderError::Unavailable(format!(
            "target {}: {}",
            self.name(),
            self.admin.scrub(e.to_string(), &[])
        ))
    }

    /// An error reply to `what`, scrubbed of the admin secret and `extra`.
    fn reply_err(&self, what: &str, reply: &str, extra: &[&SecretString]) -> ProviderError {
        let text = self.admin.scrub(reply.to_string(), extra);
        let msg = if reply.starts_with("NOPERM") {
            format!(
                "{what} on target {}: the admin user {} lacks the permission ({text})",
                self.name(),
                self.me()
            )
        } else {
            format!("{what} on target {}: {text}", self.name())
        };
        if transient(reply) {
            ProviderError::Unavailable(msg)
        } else {
            ProviderError::Failed(msg)
        }
    }

    async fn connect_as(&self, ep: &Endpoint) -> Result<Client, ProviderError> {
        match Client::connect(ep).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(refused)) => Err(ProviderError::Unavailable(format!(
                "target {} refused the admin credential: {}",
                self.name(),
                self.admin.scrub(refused, &[])
            ))),
            Err(e) => Err(self.io_err(e)),
        }
    }

    async fn connect(&self) -> Result<Client, ProviderError> {
        self.connect_as(&self.endpoint).await
    }

    /// Runs a command that must not fail; returns its reply.
    async fn run(
        &self,
        c: &mut Client,
        what: &str,
        args: &[&str],
        extra: &[&SecretString],
    ) -> Result<Reply, ProviderError> {
        match c.cmd(args).await.map_err(|e| self.io_err(e))? {
            Reply::Error(e) => Err(self.reply_err(what, &e, extra)),
            r => Ok(r),
        }
    }

    /// Whether ACL user `name` exists (`ACL GETUSER` answers nil for one that does not).
    async fn user_exists(&self, c: &mut Client, name: &str) -> Result<bool, ProviderError> {
        let found = self
            .run(c, "looking up the user", &["ACL", "GETUSER", name], &[])
            .await?;
        Ok(!matches!(found, Reply::Bulk(None) | Reply::Array(None)))
    }

    /// `ACL DELUSER` and `CLIENT KILL USER`; whether the user existed.
    async fn drop_user(&self, c: &mut Client, name: &str) -> Result<bool, ProviderError> {
        // One round trip: the three replies come back in order.
        let replies = c
            .pipeline(&[
                &["ACL", "DELUSER", name],
                // Redis 7 ends the user's connections on deletion; killing by user as well
                // keeps that true on servers that do not. Once the user is gone Redis
                // answers "No such user": nobody is left to kill.
                &["CLIENT", "KILL", "USER", name],
                // Also when the user was already gone: an earlier attempt may have deleted
                // it and failed to save.
                &["ACL", "SAVE"],
            ])
            .await
            .map_err(|e| self.io_err(e))?;
        let [deleted, killed, saved] = <[Reply; 3]>::try_from(replies).map_err(|_| {
            ProviderError::Failed("Redis answered a pipeline of 3 with another count".into())
        })?;
        if let Reply::Error(e) = &deleted {
            return Err(self.reply_err("deleting the user", e, &[]));
        }
        match killed {
            Reply::Error(e) if e.contains("No such user") => {}
            Reply::Error(e) => {
                return Err(self.reply_err("ending the user's connections", &e, &[]))
            }
            _ => {}
        }
        self.saved(saved)?;
        Ok(deleted == Reply::Int(1))
    }

    /// What `ACL SAVE` answered: `Ok(false)` where Redis has no ACL file.
    fn saved(&self, reply: Reply) -> Result<bool, ProviderError> {
        match reply {
            Reply::Error(e) if e.contains("not configured to use an ACL file") => Ok(false),
            Reply::Error(e) => Err(self.reply_err("saving the ACL file", &e, &[])),
            _ => Ok(true),
        }
    }

    /// Writes the users to Redis's ACL file (`ACL SAVE`) where it has one, so that a
    /// restart neither brings back a deleted user nor reverts a rotated admin password.
    /// Without an ACL file (users from `redis.conf` or made at run time only) there is
    /// nothing to write: `Ok(false)`.
    async fn persist(&self, c: &mut Client) -> Result<bool, ProviderError> {
        let reply = c.cmd(&["ACL", "SAVE"]).await.map_err(|e| self.io_err(e))?;
        self.saved(reply)
    }

    /// The `ACL SETUSER` arguments that create `name` with `rules`: the password only as
    /// its hash.
    fn setuser<'b>(
        name: &'b str,
        state: &'b str,
        hash: &'b str,
        rules: &'b [String],
    ) -> Vec<&'b str> {
        let mut args = vec!["ACL", "SETUSER", name, state];
        if !hash.is_empty() {
            args.push(hash);
        }
        args.extend(["resetkeys", "resetchannels", "-@all"]);
        args.extend(rules.iter().map(String::as_str));
        args
    }
}

impl RedisProvider {
    async fn issue_inner(
        &self,
        ctx: &Ctx<'_>,
        r: &IssueRequest<'_>,
    ) -> Result<IssuedCredential, ProviderError> {
        let name = username_from_state(r.plan, &ctx.config.basics.username, StateUse::Fresh)?;
        let rules = ctx.config.rules(&r.grant.action)?;
        let password = generate_password(ctx.config.basics.password_length)?;
        let hash = verifier::redis_sha256(&password);
        let mut c = self.acquire(ctx).await?;
        // `ACL SETUSER` would change a user that already exists rather than fail like
        // `CREATE ROLE`. There is no create-only form and no atomic check, and the planned
        // name carries 51 random bits from the OS generator, chosen before anything
        // exists: a look-up first would cost a third of an issue+revoke pair and guard
        // against nothing that happens.
        let args = Ctx::setuser(&name, "on", hash.expose(), rules);
        ctx.run(&mut c, "creating the user", &args, &[&password, &hash])
            .await?;
        self.release(ctx, c);
        tracing::info!(target = ctx.name(), user = %name, action = %r.grant.action, "created user");

        let host = ctx.config.host.clone().unwrap_or_else(|| ctx.admin.host());
        let port = ctx
            .config
            .port
            .unwrap_or_else(|| ctx.admin.port_or(DEFAULT_PORT));
        let scheme = if ctx.endpoint.tls { "rediss" } else { "redis" };
        let dsn = crate::conn::user_dsn(scheme, &name, &password, &host, port, None);
        // `user_dsn` ends with the database path; Redis URLs have none here.
        let dsn = SecretString::new(dsn.expose().trim_end_matches('/').to_string());
        let mut secrets = BTreeMap::new();
        secrets.insert("password".to_string(), password);
        secrets.insert("dsn".to_string(), dsn);
        let mut public = serde_json::Map::new();
        public.insert("username".into(), name.clone().into());
        public.insert("host".into(), host.into());
        public.insert("port".into(), port.into());
        public.insert("tls".into(), ctx.endpoint.tls.into());
        Ok(IssuedCredential {
            secrets,
            public,
            provider_state: serde_json::json!({ crate::plan::LIVE_KEY: name }),
        })
    }

    async fn reconcile_inner(
        &self,
        ctx: &Ctx<'_>,
        ledger: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        let mut c = self.acquire(ctx).await?;
        let me = match ctx
            .run(&mut c, "reading the admin user", &["ACL", "WHOAMI"], &[])
            .await?
            .text()
        {
            Some(me) => me,
            None => ctx.me(),
        };
        let users = match ctx
            .run(&mut c, "listing users", &["ACL", "USERS"], &[])
            .await?
        {
            Reply::Array(Some(items)) => items.iter().filter_map(Reply::text).collect(),
            _ => Vec::new(),
        };
        let template = &ctx.config.basics.username;
        let mut candidates = Vec::new();
        for name in users {
            if name == me || !name.starts_with(template.prefix()) || !template.accepts(&name) {
                continue;
            }
            // Users that can manage users are administrators, never candidates (even
            // when their names carry the prefix), as on MariaDB.
            // DRYRUN answers OK, or why not (as a bulk string, or an error on some versions).
            let admin = c
                .cmd(&["ACL", "DRYRUN", &name, "ACL", "SETUSER", "x"])
                .await
                .map_err(|e| ctx.io_err(e))?;
            if admin == Reply::Status("OK".into()) {
                continue;
            }
            // No marker exists on Redis users: the store's record decides.
            candidates.push(Candidate { name, marked: true });
        }
        let mut report = ReconcileReport::default();
        for name in removable(ledger, candidates, &mut report).await? {
            match ctx.drop_user(&mut c, &name).await {
                Ok(_) => report.dropped.push(name),
                Err(e @ ProviderError::Unavailable(_)) => return Err(e),
                Err(e) => report.failed.push((name, e.to_string())),
            }
        }
        self.release(ctx, c);
        Ok(report)
    }

    /// The live half of checking a target, for when it is created (the trait's
    /// `validate_target` is synchronous and checks the settings alone): the admin URL
    /// connects, the admin may manage users and end connections, and each action's rules
    /// are accepted by Redis on a disabled throwaway user (deleted again) and do not let
    /// the user manage users. Errors are `BadSettings` with Redis's reason, or
    /// `Unavailable`.
    pub async fn check_live(&self, access: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(access)?;
        within(ctx.config.basics.timeout, ctx.name(), async {
            let mut c = ctx.connect().await?;
            let me = ctx.me();
            for (what, cmd) in [
                ("create and delete users", &["ACL", "SETUSER", "x"][..]),
                ("end connections", &["CLIENT", "KILL", "USER", "x"][..]),
            ] {
                let mut args = vec!["ACL", "DRYRUN", me.as_str()];
                args.extend_from_slice(cmd);
                match c.cmd(&args).await.map_err(|e| ctx.io_err(e))? {
                    Reply::Status(s) if s == "OK" => {}
                    Reply::Error(e) if e.starts_with("NOPERM") => {
                        return Err(bad(format!(
                            "the admin user {me} may not {what}: {}",
                            ctx.admin.scrub(e, &[])
                        )))
                    }
                    Reply::Error(e) => return Err(ctx.reply_err("checking the admin's rights", &e, &[])),
                    other => {
                        return Err(bad(format!(
                            "the admin user {me} may not {what}: {}",
                            other.text().unwrap_or_default()
                        )))
                    }
                }
            }
            let probe = ctx
                .config
                .basics
                .username
                .generate("probe", "check")?;
            for (action, rules) in &ctx.config.grants {
                let args = Ctx::setuser(&probe, "off", "", rules);
                let made = c.cmd(&args).await.map_err(|e| ctx.io_err(e))?;
                let escalates = c
                    .cmd(&["ACL", "DRYRUN", &probe, "ACL", "SETUSER", "x"])
                    .await
                    .map_err(|e| ctx.io_err(e))?;
                ctx.run(&mut c, "deleting the probe user", &["ACL", "DELUSER", &probe], &[])
                    .await?;
                if let Reply::Error(e) = made {
                    return Err(bad(format!("grants.{action}: Redis refused the rules: {e}")));
                }
                if escalates == Reply::Status("OK".into()) {
                    return Err(bad(format!(
                        "grants.{action}: the rules allow ACL SETUSER, so a lease holder could create users that outlive the lease"
                    )));
                }
            }
            Ok(())
        })
        .await
    }

    async fn check(&self, ctx: &Ctx<'_>, ep: &Endpoint) -> Result<(), ProviderError> {
        within(ctx.config.basics.timeout, ctx.name(), async {
            let mut c = ctx.connect_as(ep).await?;
            ctx.run(&mut c, "checking the admin credential", &["PING"], &[])
                .await
                .map(|_| ())
        })
        .await
    }

    async fn rotate_inner(&self, ctx: &Ctx<'_>, next: &SecretString) -> Result<(), ProviderError> {
        let next_admin = Admin::parse_url(KIND, SCHEMES, "", false, Some(next))?;
        let new = ctx.admin.next_password(&next_admin)?;
        let next_ep = Endpoint::parse(next_admin.url().as_str())
            .map_err(|e| bad(format!("admin URL: {e}")))?;
        let me = ctx.me();
        // Sessions of the old secret stay usable until the change, then are of no use.
        self.idle.forget(ctx.name());
        let mut c = within(ctx.config.basics.timeout, ctx.name(), ctx.connect()).await?;
        // No client-side timeout from here on: a cancelled change could still apply. The
        // caller recorded `next` before this, so a change that applies is never lost.
        let set = |pw: &SecretString| verifier::redis_sha256(pw);
        let hash = set(&new);
        ctx.run(
            &mut c,
            "changing the admin password",
            &["ACL", "SETUSER", &me, "resetpass", hash.expose()],
            &[&new, &hash],
        )
        .await?;
        let verified = match self.check(ctx, &next_ep).await {
            // Saved only once it works; a save that fails undoes the change below, since
            // a restart would bring the old password back behind Mayfly's back.
            Ok(()) => ctx.persist(&mut c).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match verified {
            Ok(()) => {
                tracing::info!(target = ctx.name(), "rotated the admin password");
                Ok(())
            }
            Err(e) => {
                let reason = ctx.admin.scrub(e.to_string(), &[&new, next]);
                let old = ctx
                    .admin
                    .password()
                    .unwrap_or_else(|| SecretString::new(String::new()));
                let old_hash = set(&old);
                let restored = ctx
                    .run(
                        &mut c,
                        "restoring the admin password",
                        &["ACL", "SETUSER", &me, "resetpass", old_hash.expose()],
                        &[&old, &old_hash, &new],
                    )
                    .await;
                let restored = match restored {
                    Ok(_) => ctx.persist(&mut c).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                Err(ProviderError::Failed(match restored {
                    Ok(()) => format!(
                        "the new admin password did not work or could not be saved ({reason}); the old one was restored"
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
impl Provider for RedisProvider {
    fn kind(&self) -> &'static str {
        KIND
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
        let config = Config::from_target(request.target.target)?;
        crate::plan::plan_username(&config.basics.username, request)
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let ctx = Ctx::new(request.target)?;
        within(
            ctx.config.basics.timeout,
            ctx.name(),
            self.issue_inner(&ctx, &request),
        )
        .await
    }

    async fn renew(
        &self,
        _lease: &Lease,
        _grant: &Grant,
        target: TargetAccess<'_>,
        _new_expiry: OffsetDateTime,
    ) -> Result<Option<IssuedCredential>, ProviderError> {
        // Redis users have no expiry; the lease's new expiry is all there is.
        Ctx::new(target)?;
        Ok(None)
    }

    async fn revoke(&self, lease: &Lease, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(target)?;
        let name = lease_username(lease, &ctx.config.basics.username)?;
        within(ctx.config.basics.timeout, ctx.name(), async {
            let mut c = self.acquire(&ctx).await?;
            let existed = ctx.drop_user(&mut c, &name).await?;
            self.release(&ctx, c);
            tracing::info!(target = ctx.name(), user = %name, existed, "revoked user");
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
        let name = lease_username(lease, &ctx.config.basics.username)?;
        within(ctx.config.basics.timeout, ctx.name(), async {
            let mut c = self.acquire(&ctx).await?;
            // `ACL SETUSER` would create a user that is gone: nothing to contain then.
            if !ctx.user_exists(&mut c, &name).await? {
                self.release(&ctx, c);
                return Ok(true);
            }
            // Disabled (no new connections), then its open connections ended.
            ctx.run(
                &mut c,
                "disabling the user",
                &["ACL", "SETUSER", &name, "off"],
                &[],
            )
            .await?;
            if let Err(e) = ctx
                .run(
                    &mut c,
                    "ending the user's connections",
                    &["CLIENT", "KILL", "USER", &name],
                    &[],
                )
                .await
            {
                if !e.to_string().contains("No such user") {
                    return Err(e);
                }
            }
            self.release(&ctx, c);
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
        let name = lease_username(lease, &ctx.config.basics.username)?;
        within(ctx.config.basics.timeout, ctx.name(), async {
            let mut c = self.acquire(&ctx).await?;
            let exists = ctx.user_exists(&mut c, &name).await?;
            self.release(&ctx, c);
            Ok(!exists)
        })
        .await
    }

    async fn reconcile(
        &self,
        target: TargetAccess<'_>,
        ledger: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        let ctx = Ctx::new(target)?;
        within(
            ctx.config.basics.timeout,
            ctx.name(),
            self.reconcile_inner(&ctx, ledger),
        )
        .await
    }

    fn plan_root_rotation(&self, target: TargetAccess<'_>) -> Result<SecretString, ProviderError> {
        let ctx = Ctx::new(target)?;
        if ctx.endpoint.password.is_none() {
            return Err(bad(
                "the admin URL has no password, so there is none to rotate (give the admin user a password first)",
            ));
        }
        let new = generate_password(ctx.config.basics.password_length.max(32))?;
        ctx.admin.with_password(&new)
    }

    async fn rotate_root(
        &self,
        target: TargetAccess<'_>,
        next: &SecretString,
    ) -> Result<(), ProviderError> {
        let ctx = Ctx::new(target)?;
        self.rotate_inner(&ctx, next).await
    }

    async fn check_target(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        self.check_live(target).await
    }

    async fn check_admin(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(target)?;
        self.check(&ctx, &ctx.endpoint).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn rules_split_and_check() {
        assert_eq!(
            split_rules("~app:* +get  +mget (~tmp:* +set) %R~ro:* &news.* -@dangerous +config|get")
                .unwrap(),
            vec![
                "~app:*",
                "+get",
                "+mget",
                "(~tmp:* +set)",
                "%R~ro:*",
                "&news.*",
                "-@dangerous",
                "+config|get"
            ]
        );
        assert_eq!(split_rules("(~a +get)").unwrap(), vec!["(~a +get)"]);
        for (bad, why) in [
            ("~app:* +get on", "state"),
            (">secret", "password"),
            ("#abc", "password"),
            ("nopass", "password"),
            ("+@nosuchcat", "unknown category"),
            ("~", "empty key"),
            ("%X~a", "%R~"),
            ("get", "not an ACL rule"),
            ("(~a +get", "not closed"),
            ("(~a (+get))", "nest"),
            ("+", "command name"),
        ] {
            let e = split_rules(bad).err().unwrap();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// The README's example settings (section "Redis and RabbitMQ") are valid.
    #[test]
    fn readme_example() {
        let target = Target {
            name: "cache".into(),
            kind: KIND.into(),
            actions: vec!["read".into(), "write".into()],
            default_ttl: "1h".parse().unwrap(),
            max_ttl: "1h".parse().unwrap(),
            allow: vec![],
            settings: serde_json::json!({"grants": {"read":  "~app:* +get +mget +scan",
                "write": "~app:* +@read +@write -@dangerous"}}),
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        let c = Config::from_target(&target).unwrap();
        assert_eq!(
            c.rules("read").unwrap(),
            ["~app:*", "+get", "+mget", "+scan"]
        );
        let admin = SecretString::new("redis://mayfly_admin:change-me@127.0.0.1:6379".into());
        RedisProvider::new()
            .validate_target(&target, Some(&admin))
            .unwrap();
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("rediss://adm:p%40ss@cache.example:6380").unwrap();
        assert!(e.tls);
        assert_eq!(e.host, "cache.example");
        assert_eq!(e.port, 6380);
        assert_eq!(e.user.as_deref(), Some("adm"));
        assert_eq!(e.password.unwrap().expose(), "p@ss");
        let e = Endpoint::parse("redis://127.0.0.1").unwrap();
        assert!(!e.tls && e.user.is_none() && e.password.is_none() && e.port == 6379);
        let e = Endpoint::parse("redis://:only@[::1]:7000").unwrap();
        assert_eq!(e.host, "::1");
        assert!(e.user.is_none());
        let err = Endpoint::parse("http://u:s3cr3t@h").err().unwrap();
        assert!(!err.contains("s3cr3t"));
    }

    #[test]
    fn setuser_carries_the_hash_only() {
        let pw = generate_password(32).unwrap();
        let hash = verifier::redis_sha256(&pw);
        let rules = split_rules("~app:* +get").unwrap();
        let args = Ctx::setuser("mayfly_x_0123456789", "on", hash.expose(), &rules);
        let text: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            text,
            vec![
                "ACL",
                "SETUSER",
                "mayfly_x_0123456789",
                "on",
                hash.expose(),
                "resetkeys",
                "resetchannels",
                "-@all",
                "~app:*",
                "+get"
            ]
        );
        assert!(!text.iter().any(|a| a.contains(pw.expose())));
    }
}
