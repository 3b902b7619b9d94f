//! The `rabbitmq` credential kind: a RabbitMQ user per lease, made through the management
//! HTTP API (the `rabbitmq_management` plugin; tested on RabbitMQ 3.10).
//!
//! Issue creates the user (`PUT /api/users/{name}`) with the action's tags and then its
//! permissions on each of the action's vhosts (`PUT /api/permissions/{vhost}/{name}`); a
//! failure after the user exists deletes it again. The password travels only as a
//! `rabbit_password_hashing_sha256` hash ([`crate::verifier::rabbitmq_sha256`]) with
//! `hashing_algorithm` set, which is also all RabbitMQ keeps of it.
//!
//! Revoke deletes the user (no new logins; RabbitMQ 3.10 also closes its connections) and
//! then closes whatever connections of the user are still listed
//! (`GET /api/connections/username/{name}`, `DELETE /api/connections/{name}`).
//! Reconciliation lists `GET /api/users` by the template's prefix; RabbitMQ users carry no
//! marker we could set, so the store's record is the only proof, and users tagged
//! `administrator` are never candidates. Root rotation sets a new password hash on the
//! admin user, keeping its tags.
//!
//! # Target settings
//!
//! | key | type | default |
//! | --- | --- | --- |
//! | `grants` | map action -> `{"tags": [..], "permissions": {vhost: {"configure", "write", "read"}}}` | required: one entry per target action |
//! | `username_template` | template | `mayfly_{{identity}}_{{rand}}` |
//! | `password_length` | integer 16..=128 | 32 |
//! | `host`, `port`, `tls` | the AMQP endpoint handed to the requester | admin URL's host, 5672 (5671 with `tls`) |
//! | `timeout_seconds` | integer 1..=600 | 30 |
//!
//! Permissions are RabbitMQ's regular expressions (`""` grants nothing). The tag
//! `administrator` is refused: a lease holder could create users that outlive the lease.
//! [`RabbitMqProvider::check_target`] checks the rest live: that the admin has the
//! `administrator` tag, every vhost exists, and RabbitMQ accepts every expression (set on
//! a throwaway user without a password, deleted again).
//!
//! # Admin URL
//!
//! The management API's base URL with the admin's credentials,
//! `http://mayfly_admin:PASSWORD@host:15672` (or `https://`). The admin user needs the
//! `administrator` tag (managing users, permissions and other users' connections).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use mayfly_core::model::{Grant, Lease, Target};
use mayfly_core::provider::{
    IssueRequest, IssuedCredential, Ledger, Provider, ProviderError, ReconcileReport, TargetAccess,
};
use mayfly_core::secret::SecretString;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::conn::{user_dsn, within, Admin};
use crate::plan::{
    check_grant_actions, generate_password, lease_username, removable, username_from_state, Basics,
    Candidate, NameRules, StateUse,
};
use crate::verifier;

pub const KIND: &str = "rabbitmq";
pub const AMQP_PORT: u16 = 5672;
pub const AMQPS_PORT: u16 = 5671;
const SCHEMES: &[&str] = &["http", "https"];
/// RabbitMQ accepts long user names; this keeps them readable in the management UI.
const NAMES: NameRules = NameRules {
    kind: KIND,
    max_len: 64,
    reserved_prefixes: &[],
};
/// The tag that lets a user manage users: never handed to a lease.
const ADMIN_TAG: &str = "administrator";

fn bad(msg: impl Into<String>) -> ProviderError {
    ProviderError::BadSettings(msg.into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RabbitSettings {
    #[serde(default)]
    grants: BTreeMap<String, GrantSpec>,
    username_template: Option<String>,
    password_length: Option<usize>,
    host: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    tls: bool,
    timeout_seconds: Option<u64>,
    // Read by runtime policy, not by the provider (as for the SQL kinds).
    environment: Option<String>,
    sensitivity: Option<String>,
    owner: Option<String>,
    groups: Option<Vec<String>>,
}

/// What one action's user gets.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    #[serde(default)]
    pub tags: Vec<String>,
    /// vhost -> permissions on it.
    pub permissions: BTreeMap<String, Permissions>,
}

/// RabbitMQ's three permission expressions on one vhost.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// Settings after validation.
#[derive(Debug)]
pub struct Config {
    pub grants: BTreeMap<String, GrantSpec>,
    pub basics: Basics,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: bool,
}

impl Config {
    pub fn from_target(target: &Target) -> Result<Config, ProviderError> {
        if target.kind != KIND {
            return Err(bad(format!(
                "target kind is {:?}, this provider issues {KIND:?}",
                target.kind
            )));
        }
        let s: RabbitSettings = match &target.settings {
            serde_json::Value::Null => RabbitSettings::default(),
            v => serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?,
        };
        let _ = (&s.environment, &s.sensitivity, &s.owner, &s.groups);
        check_grant_actions(target, s.grants.keys())?;
        for (action, g) in &s.grants {
            for tag in &g.tags {
                if tag.is_empty()
                    || !tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(bad(format!(
                        "grants.{action}.tags: {tag:?} is not a tag (letters, digits, _ and -)"
                    )));
                }
                if tag == ADMIN_TAG {
                    return Err(bad(format!(
                        "grants.{action}.tags: {ADMIN_TAG} is refused: a lease holder could create users that outlive the lease"
                    )));
                }
            }
            if g.permissions.is_empty() {
                return Err(bad(format!(
                    "grants.{action}.permissions names no vhost; the user could not connect anywhere"
                )));
            }
            for (vhost, p) in &g.permissions {
                if vhost.is_empty() || vhost.chars().any(|c| c.is_control()) {
                    return Err(bad(format!(
                        "grants.{action}.permissions: {vhost:?} is not a vhost name"
                    )));
                }
                for (which, re) in [
                    ("configure", &p.configure),
                    ("write", &p.write),
                    ("read", &p.read),
                ] {
                    if re.chars().any(|c| c.is_control()) {
                        return Err(bad(format!(
                            "grants.{action}.permissions.{vhost}.{which} contains a control character"
                        )));
                    }
                }
            }
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
            grants: s.grants,
            basics,
            host: s.host,
            port: s.port,
            tls: s.tls,
        })
    }

    fn grant(&self, action: &str) -> Result<&GrantSpec, ProviderError> {
        self.grants
            .get(action)
            .ok_or_else(|| bad(format!("grants has no entry for action {action:?}")))
    }
}

/// An answer of the management API.
enum Answer {
    Ok(serde_json::Value),
    /// 204 to a `PUT`: the object existed and was changed.
    Updated,
    NotFound,
}

/// Issues temporary RabbitMQ users.
#[derive(Default)]
pub struct RabbitMqProvider {
    http: OnceLock<reqwest::Client>,
}

impl RabbitMqProvider {
    pub fn new() -> Self {
        RabbitMqProvider::default()
    }

    fn http(&self) -> Result<&reqwest::Client, ProviderError> {
        if let Some(c) = self.http.get() {
            return Ok(c);
        }
        // No redirects: the admin's credentials go to the URL the operator gave, nowhere else.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::Failed(format!("HTTP client: {e}")))?;
        Ok(self.http.get_or_init(|| client))
    }
}

/// The text of RabbitMQ's `reason`, which is sometimes an Erlang term rendered as nested
/// lists of character codes.
fn reason_text(body: &serde_json::Value) -> String {
    fn render(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) => {
                let chars: Option<String> = items
                    .iter()
                    .map(|i| {
                        i.as_u64()
                            .and_then(|n| u32::try_from(n).ok())
                            .and_then(char::from_u32)
                            .filter(|c| !c.is_control())
                    })
                    .collect();
                match chars {
                    Some(s) if !items.is_empty() => s,
                    _ => items.iter().map(render).collect::<Vec<_>>().join(" "),
                }
            }
            other => other.to_string(),
        }
    }
    body.get("reason")
        .map(render)
        .unwrap_or_else(|| body.to_string())
}

struct Ctx<'a> {
    target: &'a Target,
    config: Config,
    admin: Admin,
    http: &'a reqwest::Client,
}

impl<'a> Ctx<'a> {
    fn new(p: &'a RabbitMqProvider, access: TargetAccess<'a>) -> Result<Ctx<'a>, ProviderError> {
        let config = Config::from_target(access.target)?;
        let admin = Admin::parse_url(
            KIND,
            SCHEMES,
            "http://mayfly_admin:PASSWORD@host:15672",
            true,
            access.admin,
        )?;
        Ok(Ctx {
            target: access.target,
            config,
            admin,
            http: p.http()?,
        })
    }

    fn name(&self) -> &str {
        &self.target.name
    }

    /// `segments` under `/api/` of `admin`'s base URL (a path prefix, for a proxy, is
    /// kept), each segment percent-encoded (the vhost `/` is `%2F`).
    fn url(admin: &Admin, segments: &[&str]) -> Result<url::Url, ProviderError> {
        let mut u = admin.url().clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_query(None);
        u.set_fragment(None);
        {
            let mut path = u
                .path_segments_mut()
                .map_err(|_| bad("the admin URL cannot carry a path"))?;
            path.pop_if_empty().push("api").extend(segments);
        }
        Ok(u)
    }

    /// One management API call as `admin`: `NotFound` for 404, errors mapped so that a
    /// target that is down or refuses the admin is `Unavailable` and a refused request is
    /// `Failed` with RabbitMQ's reason.
    async fn call_as(
        &self,
        admin: &Admin,
        method: Method,
        segments: &[&str],
        body: Option<&serde_json::Value>,
        what: &str,
        extra: &[&SecretString],
    ) -> Result<Answer, ProviderError> {
        let url = Ctx::url(admin, segments)?;
        let method_is_put = method == Method::PUT;
        let mut req = self.http.request(method, url).basic_auth(
            admin.username(),
            admin.password().map(|p| p.expose().to_string()),
        );
        // Shown to the client whose connection is closed (`connection.close` reply text).
        if segments.first() == Some(&"connections") {
            req = req.header("x-reason", "credential revoked by mayfly");
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let name = self.name();
        let resp = req.send().await.map_err(|e| {
            ProviderError::Unavailable(format!(
                "{what} on target {name}: {}",
                self.admin.scrub(e.without_url().to_string(), extra)
            ))
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| {
            ProviderError::Unavailable(format!(
                "{what} on target {name}: reading the answer: {}",
                self.admin.scrub(e.without_url().to_string(), extra)
            ))
        })?;
        let json: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        if status == StatusCode::NO_CONTENT && method_is_put {
            return Ok(Answer::Updated);
        }
        if status.is_success() {
            return Ok(Answer::Ok(json));
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(Answer::NotFound);
        }
        let reason = self.admin.scrub(reason_text(&json), extra);
        let msg = match status {
            StatusCode::UNAUTHORIZED => format!(
                "{what} on target {name}: RabbitMQ refused the admin user {} ({reason}); it needs a valid password and the {ADMIN_TAG} tag",
                admin.username()
            ),
            _ => format!("{what} on target {name}: HTTP {} ({reason})", status.as_u16()),
        };
        if status == StatusCode::UNAUTHORIZED
            || status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
        {
            Err(ProviderError::Unavailable(msg))
        } else {
            Err(ProviderError::Failed(msg))
        }
    }

    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&serde_json::Value>,
        what: &str,
        extra: &[&SecretString],
    ) -> Result<Answer, ProviderError> {
        self.call_as(&self.admin, method, segments, body, what, extra)
            .await
    }

    /// The admin user's name and tags.
    async fn whoami(&self, admin: &Admin) -> Result<(String, Vec<String>), ProviderError> {
        match self
            .call_as(admin, Method::GET, &["whoami"], None, "checking the admin user", &[])
            .await?
        {
            Answer::Ok(v) => Ok((
                v.get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default()
                    .to_string(),
                tags_of(&v),
            )),
            Answer::NotFound | Answer::Updated => Err(ProviderError::Unavailable(format!(
                "target {}: the admin URL does not lead to the management API (/api/whoami not found)",
                self.name()
            ))),
        }
    }

    /// Deletes the user, then closes its connections; whether the user existed.
    async fn drop_user(&self, name: &str) -> Result<bool, ProviderError> {
        let existed = matches!(
            self.call(
                Method::DELETE,
                &["users", name],
                None,
                "deleting the user",
                &[]
            )
            .await?,
            Answer::Ok(_)
        );
        // After the deletion nobody can log in as the user. RabbitMQ 3.10 also closes the
        // user's connections itself (`CONNECTION_FORCED - user … is deleted`); closing
        // what is still listed covers releases that do not, and closes in flight.
        self.close_connections(name).await?;
        Ok(existed)
    }

    /// Closes every open connection of `name`.
    async fn close_connections(&self, name: &str) -> Result<(), ProviderError> {
        let conns = match self
            .call(
                Method::GET,
                &["connections", "username", name],
                None,
                "listing the user's connections",
                &[],
            )
            .await?
        {
            Answer::Ok(serde_json::Value::Array(items)) => items,
            // Releases without the per-user listing: all connections, filtered here.
            Answer::NotFound => match self
                .call(
                    Method::GET,
                    &["connections"],
                    None,
                    "listing connections",
                    &[],
                )
                .await?
            {
                Answer::Ok(serde_json::Value::Array(items)) => items
                    .into_iter()
                    .filter(|c| c.get("user").and_then(|u| u.as_str()) == Some(name))
                    .collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        for c in &conns {
            if let Some(conn) = c.get("name").and_then(|n| n.as_str()) {
                self.call(
                    Method::DELETE,
                    &["connections", conn],
                    None,
                    "closing a connection of the user",
                    &[],
                )
                .await?;
            }
        }
        if !conns.is_empty() {
            tracing::info!(
                target = self.name(),
                user = name,
                connections = conns.len(),
                "closed connections"
            );
        }
        Ok(())
    }
}

/// A user's tags, as a list (3.9+) or a comma-separated string (older).
fn tags_of(user: &serde_json::Value) -> Vec<String> {
    match user.get("tags") {
        Some(serde_json::Value::Array(t)) => t
            .iter()
            .filter_map(|x| x.as_str())
            .map(str::to_string)
            .collect(),
        Some(serde_json::Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

impl RabbitMqProvider {
    async fn issue_inner(
        &self,
        ctx: &Ctx<'_>,
        r: &IssueRequest<'_>,
    ) -> Result<IssuedCredential, ProviderError> {
        let name = username_from_state(r.plan, &ctx.config.basics.username, StateUse::Fresh)?;
        let grant = ctx.config.grant(&r.grant.action)?;
        let password = generate_password(ctx.config.basics.password_length)?;
        let hash = verifier::rabbitmq_sha256(&password)?;
        // `PUT /api/users` updates a user that exists instead of failing, and there is
        // no create-only form. The planned name carries 51 random bits from the OS
        // generator, chosen before anything exists, so a look-up first would guard
        // against nothing that happens; the answer still tells (201 made, 204 changed).
        let body = serde_json::json!({
            "password_hash": hash.expose(),
            "hashing_algorithm": verifier::RABBITMQ_HASHING,
            "tags": grant.tags.join(","),
        });
        let made = ctx
            .call(
                Method::PUT,
                &["users", &name],
                Some(&body),
                "creating the user",
                &[&password, &hash],
            )
            .await?;
        if let Answer::Updated = made {
            // Someone else's user now has our password and tags; deleting it is not ours
            // to decide. The failed issue leaves the name on record for an operator.
            return Err(ProviderError::Failed(format!(
                "user {name} already existed on target {} and was changed; check it by hand",
                ctx.name()
            )));
        }
        for (vhost, perms) in &grant.permissions {
            let body =
                serde_json::to_value(perms).map_err(|e| ProviderError::Failed(e.to_string()))?;
            if let Err(e) = ctx
                .call(
                    Method::PUT,
                    &["permissions", vhost, &name],
                    Some(&body),
                    &format!("setting permissions on vhost {vhost:?}"),
                    &[],
                )
                .await
            {
                if let Err(cleanup) = ctx.drop_user(&name).await {
                    tracing::warn!(target = ctx.name(), user = %name, error = %cleanup, "could not delete a half-created user; reconciliation will");
                }
                return Err(e);
            }
        }
        tracing::info!(target = ctx.name(), user = %name, action = %r.grant.action, "created user");

        let host = ctx.config.host.clone().unwrap_or_else(|| ctx.admin.host());
        let port = ctx.config.port.unwrap_or(if ctx.config.tls {
            AMQPS_PORT
        } else {
            AMQP_PORT
        });
        let scheme = if ctx.config.tls { "amqps" } else { "amqp" };
        let vhosts: Vec<String> = grant.permissions.keys().cloned().collect();
        let first = vhosts.first().map(String::as_str);
        let dsn = user_dsn(scheme, &name, &password, &host, port, first);
        let mut secrets = BTreeMap::new();
        secrets.insert("password".to_string(), password);
        secrets.insert("dsn".to_string(), dsn);
        let mut public = serde_json::Map::new();
        public.insert("username".into(), name.clone().into());
        public.insert("host".into(), host.into());
        public.insert("port".into(), port.into());
        public.insert("tls".into(), ctx.config.tls.into());
        public.insert("vhost".into(), first.into());
        public.insert("vhosts".into(), vhosts.clone().into());
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
        let (me, _) = ctx.whoami(&ctx.admin).await?;
        let users = match ctx
            .call(Method::GET, &["users"], None, "listing users", &[])
            .await?
        {
            Answer::Ok(serde_json::Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let template = &ctx.config.basics.username;
        let candidates = users
            .iter()
            .filter(|u| !tags_of(u).iter().any(|t| t == ADMIN_TAG))
            .filter_map(|u| u.get("name").and_then(|n| n.as_str()))
            .filter(|n| *n != me && template.accepts(n))
            // No marker exists on RabbitMQ users: the store's record decides.
            .map(|n| Candidate {
                name: n.to_string(),
                marked: true,
            })
            .collect();
        let mut report = ReconcileReport::default();
        for name in removable(ledger, candidates, &mut report).await? {
            match ctx.drop_user(&name).await {
                Ok(_) => report.dropped.push(name),
                Err(e @ ProviderError::Unavailable(_)) => return Err(e),
                Err(e) => report.failed.push((name, e.to_string())),
            }
        }
        Ok(report)
    }

    /// The live half of checking a target, for when it is created (the trait's
    /// `validate_target` is synchronous and checks the settings alone): the admin URL
    /// reaches the management API as a user with the `administrator` tag, every vhost the
    /// grants name exists, and RabbitMQ accepts every permission expression (set on a
    /// throwaway user without a password, deleted again). Errors are `BadSettings` with
    /// the reason, or `Unavailable`.
    pub async fn check_live(&self, access: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(self, access)?;
        within(ctx.config.basics.timeout, ctx.name(), async {
            let (me, tags) = ctx.whoami(&ctx.admin).await?;
            if !tags.iter().any(|t| t == ADMIN_TAG) {
                return Err(bad(format!(
                    "the admin user {me} lacks the {ADMIN_TAG} tag, which managing users and their connections needs"
                )));
            }
            for (action, g) in &ctx.config.grants {
                for vhost in g.permissions.keys() {
                    if let Answer::NotFound = ctx
                        .call(Method::GET, &["vhosts", vhost], None, "looking up a vhost", &[])
                        .await?
                    {
                        return Err(bad(format!(
                            "grants.{action}.permissions: vhost {vhost:?} does not exist on the server"
                        )));
                    }
                }
            }
            let probe = ctx.config.basics.username.generate("probe", "check")?;
            // An empty hash: a user nobody can log in as with a password.
            let body = serde_json::json!({"password_hash": "", "tags": ""});
            ctx.call(Method::PUT, &["users", &probe], Some(&body), "creating a probe user", &[])
                .await?;
            let mut verdict = Ok(());
            'all: for (action, g) in &ctx.config.grants {
                for (vhost, perms) in &g.permissions {
                    let body = serde_json::to_value(perms).map_err(|e| ProviderError::Failed(e.to_string()))?;
                    if let Err(e) = ctx
                        .call(Method::PUT, &["permissions", vhost, &probe], Some(&body), "setting permissions", &[])
                        .await
                    {
                        verdict = Err(match e {
                            ProviderError::Failed(m) => bad(format!(
                                "grants.{action}.permissions.{vhost}: RabbitMQ refused them: {m}"
                            )),
                            other => other,
                        });
                        break 'all;
                    }
                }
            }
            ctx.call(Method::DELETE, &["users", &probe], None, "deleting the probe user", &[])
                .await?;
            verdict
        })
        .await
    }

    async fn check(&self, ctx: &Ctx<'_>, admin: &Admin) -> Result<(), ProviderError> {
        within(ctx.config.basics.timeout, ctx.name(), async {
            ctx.whoami(admin).await.map(|_| ())
        })
        .await
    }

    async fn set_password(
        &self,
        ctx: &Ctx<'_>,
        me: &str,
        tags: &[String],
        password: &SecretString,
        what: &str,
    ) -> Result<(), ProviderError> {
        let hash = verifier::rabbitmq_sha256(password)?;
        let body = serde_json::json!({
            "password_hash": hash.expose(),
            "hashing_algorithm": verifier::RABBITMQ_HASHING,
            "tags": tags.join(","),
        });
        ctx.call(
            Method::PUT,
            &["users", me],
            Some(&body),
            what,
            &[password, &hash],
        )
        .await
        .map(|_| ())
    }

    async fn rotate_inner(&self, ctx: &Ctx<'_>, next: &SecretString) -> Result<(), ProviderError> {
        let next_admin = Admin::parse_url(KIND, SCHEMES, "", true, Some(next))?;
        let new = ctx.admin.next_password(&next_admin)?;
        let (me, tags) = within(
            ctx.config.basics.timeout,
            ctx.name(),
            ctx.whoami(&ctx.admin),
        )
        .await?;
        // No client-side timeout from here on: a cancelled change could still apply. The
        // caller recorded `next` before this, so a change that applies is never lost.
        self.set_password(ctx, &me, &tags, &new, "changing the admin password")
            .await?;
        match self.check(ctx, &next_admin).await {
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
                let restored = self
                    .set_password(ctx, &me, &tags, &old, "restoring the admin password")
                    .await;
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
impl Provider for RabbitMqProvider {
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
        Ctx::new(self, TargetAccess { target, admin }).map(|_| ())
    }

    fn plan(&self, request: &IssueRequest<'_>) -> Result<serde_json::Value, ProviderError> {
        let config = Config::from_target(request.target.target)?;
        crate::plan::plan_username(&config.basics.username, request)
    }

    async fn issue(&self, request: IssueRequest<'_>) -> Result<IssuedCredential, ProviderError> {
        let ctx = Ctx::new(self, request.target)?;
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
        // RabbitMQ users have no expiry; the lease's new expiry is all there is.
        Ctx::new(self, target)?;
        Ok(None)
    }

    async fn revoke(&self, lease: &Lease, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(self, target)?;
        let name = lease_username(lease, &ctx.config.basics.username)?;
        within(ctx.config.basics.timeout, ctx.name(), async {
            let existed = ctx.drop_user(&name).await?;
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
        let ctx = Ctx::new(self, target)?;
        let name = lease_username(lease, &ctx.config.basics.username)?;
        within(ctx.config.basics.timeout, ctx.name(), async {
            let found = ctx
                .call(
                    Method::GET,
                    &["users", &name],
                    None,
                    "checking the user is gone",
                    &[],
                )
                .await?;
            Ok(matches!(found, Answer::NotFound))
        })
        .await
    }

    async fn reconcile(
        &self,
        target: TargetAccess<'_>,
        ledger: &dyn Ledger,
    ) -> Result<ReconcileReport, ProviderError> {
        let ctx = Ctx::new(self, target)?;
        within(
            ctx.config.basics.timeout,
            ctx.name(),
            self.reconcile_inner(&ctx, ledger),
        )
        .await
    }

    fn plan_root_rotation(&self, target: TargetAccess<'_>) -> Result<SecretString, ProviderError> {
        let ctx = Ctx::new(self, target)?;
        let new = generate_password(ctx.config.basics.password_length.max(32))?;
        ctx.admin.with_password(&new)
    }

    async fn rotate_root(
        &self,
        target: TargetAccess<'_>,
        next: &SecretString,
    ) -> Result<(), ProviderError> {
        let ctx = Ctx::new(self, target)?;
        self.rotate_inner(&ctx, next).await
    }

    async fn check_target(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        self.check_live(target).await
    }

    async fn check_admin(&self, target: TargetAccess<'_>) -> Result<(), ProviderError> {
        let ctx = Ctx::new(self, target)?;
        self.check(&ctx, &ctx.admin).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn target(settings: serde_json::Value) -> Target {
        Target {
            name: "mq".into(),
            kind: KIND.into(),
            actions: vec!["consume".into()],
            default_ttl: "1h".parse().unwrap(),
            max_ttl: "1h".parse().unwrap(),
            allow: vec![],
            settings,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn settings() {
        let ok = serde_json::json!({"grants": {"consume": {"tags": ["monitoring"],
            "permissions": {"/": {"configure": "", "write": "", "read": "^jobs$"}}}}});
        let c = Config::from_target(&target(ok)).unwrap();
        assert_eq!(c.grants["consume"].permissions["/"].read, "^jobs$");
        for (bad, why) in [
            (serde_json::json!({"grants": {}}), "no entry for action"),
            (
                serde_json::json!({"grants": {"consume": {"permissions": {}}}}),
                "names no vhost",
            ),
            (
                serde_json::json!({"grants": {"consume": {"tags": ["administrator"], "permissions": {"/": {"configure": "", "write": "", "read": ""}}}}}),
                "refused",
            ),
            (
                serde_json::json!({"grants": {"consume": {"tags": ["a,b"], "permissions": {"/": {"configure": "", "write": "", "read": ""}}}}}),
                "not a tag",
            ),
            (
                serde_json::json!({"grants": {"consume": {"permissions": {"/": {"configure": "", "write": ""}}}}}),
                "read",
            ),
            (
                serde_json::json!({"grants": {"consume": {"permissions": {"/": {"configure": "", "write": "", "read": ""}}}}, "vhost": "/"}),
                "unknown field",
            ),
        ] {
            let e = Config::from_target(&target(bad.clone())).err().unwrap();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    /// The README's example settings (section "Redis and RabbitMQ") are valid.
    #[test]
    fn readme_example() {
        let mut t = target(serde_json::json!({"grants": {
          "consume": {"permissions": {"/": {"configure": "", "write": "", "read": "^jobs$"}}},
          "publish": {"tags": ["monitoring"],
                      "permissions": {"/": {"configure": "", "write": "^amq\\.default$", "read": ""}}}}}));
        t.actions = vec!["consume".into(), "publish".into()];
        let admin = SecretString::new("http://mayfly_admin:change-me@127.0.0.1:15672".into());
        RabbitMqProvider::new()
            .validate_target(&t, Some(&admin))
            .unwrap();
        let c = Config::from_target(&t).unwrap();
        assert_eq!(
            c.grants["publish"].permissions["/"].write,
            "^amq\\.default$"
        );
    }

    #[test]
    fn urls_and_reasons() {
        let secret = SecretString::new("http://adm:s3cr3t@mq.example:15672/proxy/".into());
        let admin = Admin::parse_url(KIND, SCHEMES, "", true, Some(&secret)).unwrap();
        let u = Ctx::url(&admin, &["permissions", "/", "u"]).unwrap();
        assert_eq!(
            u.as_str(),
            "http://mq.example:15672/proxy/api/permissions/%2F/u"
        );
        let reason = serde_json::json!({"error": "bad_request", "reason": ["invalid_regexp", [40], [[109, 105, 115, 115], 1]]});
        assert_eq!(reason_text(&reason), "invalid_regexp ( miss 1");
        assert_eq!(
            tags_of(&serde_json::json!({"tags": "a, b"})),
            vec!["a", "b"]
        );
        assert_eq!(tags_of(&serde_json::json!({"tags": ["a"]})), vec!["a"]);
    }
}
