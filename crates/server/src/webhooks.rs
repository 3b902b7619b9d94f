//! Outgoing webhooks (`[[webhooks]]`): approval needed, approved, denied, expired,
//! break-glass used and revocation failing, sent to a URL as a generic JSON body or a
//! Slack incoming-webhook body, signed, retried, never lost.
//!
//! This module owns the webhook configuration, the delivery worker, the payloads and the
//! signature. It writes nothing of its own to the audit chain and keeps no outbox of its
//! own: **the audit chain is the outbox**. Every state change is committed with its audit
//! entries, so a worker that reads the chain after a durable per-webhook cursor
//! ([`mayfly_core::store::WebhookCursor`]) and moves the cursor only after the receiver
//! answered 2xx can never miss an event, whatever crashes when:
//!
//! - **At least once.** A crash between the receiver's 2xx and the cursor's move sends that
//!   event again after the restart, with the same `Mayfly-Event-Id` (the audit entry's
//!   hash), so receivers deduplicate on it.
//! - **In chain order, per webhook.** An event is sent only after every earlier event for
//!   that webhook was accepted; a failing receiver holds back the ones after it (give
//!   break-glass its own webhook if nothing may delay it).
//! - **One replica at a time.** Replicas sharing a PostgreSQL store claim each webhook's
//!   cursor for [`CLAIM_FOR`]; only the holder may move it, and a replica that dies leaves
//!   it to another once the claim lapses.
//! - **Retries** back off exponentially from 1 s to 5 min with jitter; the attempt count,
//!   the error and when failing began are stored with the cursor, so a restart keeps them.
//!   After `alert_after` of failing, the exact error is logged at ERROR level.
//!
//! **Signature.** `Mayfly-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`: the timestamp is the attempt's, so receivers can refuse stale or
//! replayed deliveries; [`verify_signature`] is the receiver's check. Bodies carry what
//! the audit entry carries (which never holds a secret) minus any credential-named field
//! ([`scrub`], belt and braces); secrets and URLs, which can themselves be secrets (Slack),
//! appear in no log line and no `Debug`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::audit::{AuditEvent, AuditKind};
use mayfly_core::duration::Ttl;
use mayfly_core::secret::SecretString;
use mayfly_core::store::{AuditFilter, WebhookCursor};
use mayfly_core::OffsetDateTime;
use serde::Deserialize;

use crate::state::AppState;
use crate::StartError;

/// How long a replica's claim on a webhook runs without being renewed. A broker killed
/// while holding one delays that webhook at most this long after it restarts.
pub const CLAIM_FOR: Duration = Duration::from_secs(15);
/// How often an idle worker looks for new audit entries (break-glass is sent within it).
const POLL: Duration = Duration::from_secs(1);
/// Audit entries read per page.
const PAGE: u32 = 500;
/// First and longest retry delay.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Most characters of a receiver's error response kept in the error.
const ERROR_BODY_CHARS: usize = 200;

/// An event a webhook can receive: its name in `events` and what selects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// `approval.requested`: a grant waits for approval.
    ApprovalNeeded,
    /// `approval.granted`: the approval that completed the request (`detail.complete`).
    Approved,
    /// `approval.granted.partial`: an approval that still leaves some needed.
    ApprovalProgress,
    /// `approval.denied`.
    Denied,
    /// `approval.expired`: nobody approved in time.
    Expired,
    /// `grant.break_glass`: emergency access issued without approval.
    BreakGlass,
    /// `lease.revoke_failed`: a revocation attempt on a target failed (one per attempt).
    RevokeFailed,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::ApprovalNeeded,
        Event::Approved,
        Event::ApprovalProgress,
        Event::Denied,
        Event::Expired,
        Event::BreakGlass,
        Event::RevokeFailed,
    ];

    /// The name in `events` and in the JSON body's `event`.
    pub fn name(self) -> &'static str {
        match self {
            Event::ApprovalNeeded => "approval.requested",
            Event::Approved => "approval.granted",
            Event::ApprovalProgress => "approval.granted.partial",
            Event::Denied => "approval.denied",
            Event::Expired => "approval.expired",
            Event::BreakGlass => "grant.break_glass",
            Event::RevokeFailed => "lease.revoke_failed",
        }
    }

    /// What `events` is when not given: all but the intermediate approvals.
    pub fn defaults() -> Vec<String> {
        Event::ALL
            .iter()
            .filter(|e| **e != Event::ApprovalProgress)
            .map(|e| e.name().to_string())
            .collect()
    }

    /// The event an audit entry is, if it is one a webhook can receive.
    pub fn of(entry: &AuditEvent) -> Option<Event> {
        Some(match entry.kind {
            AuditKind::ApprovalRequested => Event::ApprovalNeeded,
            AuditKind::ApprovalGranted => {
                if entry.detail.get("complete").and_then(|c| c.as_bool()) == Some(true) {
                    Event::Approved
                } else {
                    Event::ApprovalProgress
                }
            }
            AuditKind::ApprovalDenied => Event::Denied,
            AuditKind::ApprovalExpired => Event::Expired,
            AuditKind::GrantBreakGlass => Event::BreakGlass,
            AuditKind::LeaseRevokeFailed => Event::RevokeFailed,
            _ => return None,
        })
    }

    fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// The body's shape (`format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The generic JSON event (see the README).
    #[default]
    Json,
    /// A Slack incoming-webhook message, `{"text": …}`.
    Slack,
}

/// One `[[webhooks]]` entry of `mayfly.toml`. Secrets come from the environment or a
/// file, never from the configuration itself. `Debug` leaves out the URL (a Slack URL is
/// a secret).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique name: the cursor's key (renaming starts afresh from the chain head) and the
    /// `webhook` label of the metrics. `[a-z0-9_-]`, 1–64 characters.
    pub name: String,
    /// Where to POST. For URLs that are secrets themselves (Slack), use `url_env`.
    pub url: Option<String>,
    /// Environment variable holding the URL.
    pub url_env: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// Environment variable holding the signing secret.
    pub secret_env: Option<String>,
    /// File holding the signing secret (one trailing newline is ignored); relative to the
    /// configuration file's directory.
    pub secret_file: Option<PathBuf>,
    /// Events to send, by name; default all but `approval.granted.partial`.
    #[serde(default = "Event::defaults")]
    pub events: Vec<String>,
    /// Longest wait for one delivery (connect, send, answer).
    #[serde(default = "default_timeout")]
    pub timeout: Ttl,
    /// How long a webhook may fail before the broker logs an error.
    #[serde(default = "default_alert_after")]
    pub alert_after: Ttl,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_ref().map(|_| "[redacted]"))
            .field("url_env", &self.url_env)
            .field("format", &self.format)
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("alert_after", &self.alert_after)
            .finish()
    }
}

fn default_timeout() -> Ttl {
    Ttl::from_secs(10)
}

fn default_alert_after() -> Ttl {
    Ttl::from_secs(300)
}

/// A configured webhook, its secrets loaded.
pub struct Webhook {
    pub name: String,
    url: SecretString,
    /// Scheme, host and port of the URL: what logs may say about it.
    origin: String,
    pub format: Format,
    secret: Option<SecretString>,
    events: BTreeSet<Event>,
    timeout: Duration,
    alert_after: time::Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("format", &self.format)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Checks one entry and loads its URL and secret. `config_dir` anchors a relative
    /// `secret_file`.
    pub fn load(config: &WebhookConfig, config_dir: Option<&Path>) -> Result<Webhook, StartError> {
        let bad =
            |reason: String| StartError::Config(format!("webhook {:?}: {reason}", config.name));
        let valid_name = (1..=64).contains(&config.name.len())
            && config
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid_name {
            return Err(bad("name must be 1-64 characters of [a-z0-9_-]".into()));
        }
        let url = match (&config.url, &config.url_env) {
            (Some(url), None) => SecretString::new(url.clone()),
            (None, Some(var)) => SecretString::new(
                std::env::var(var).map_err(|_| bad(format!("url_env {var} is not set")))?,
            ),
            _ => return Err(bad("set exactly one of url and url_env".into())),
        };
        // The parse error is not shown: it could quote the URL.
        let parsed =
            reqwest::Url::parse(url.expose()).map_err(|_| bad("url is not a valid URL".into()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("url must be http or https".into()));
        }
        let origin = match parsed.port() {
            Some(port) => format!(
                "{}://{}:{port}",
                parsed.scheme(),
                parsed.host_str().unwrap_or("")
            ),
            None => format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or("")),
        };
        let secret = match (&config.secret_env, &config.secret_file) {
            (Some(var), None) => Some(SecretString::new(
                std::env::var(var).map_err(|_| bad(format!("secret_env {var} is not set")))?,
            )),
            (None, Some(file)) => {
                let path = match config_dir {
                    Some(dir) if file.is_relative() => dir.join(file),
                    _ => file.clone(),
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| bad(format!("secret_file {}: {e}", path.display())))?;
                let text = text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text);
                Some(SecretString::new(text.to_string()))
            }
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(bad("set at most one of secret_env and secret_file".into()))
            }
        };
        match &secret {
            Some(s) if s.expose().is_empty() => return Err(bad("the secret is empty".into())),
            // Slack verifies nothing; every other receiver must be able to.
            None if config.format != Format::Slack => {
                return Err(bad(
                    "a signing secret is required: set secret_env or secret_file".into(),
                ))
            }
            _ => {}
        }
        let mut events = BTreeSet::new();
        for name in &config.events {
            let event = Event::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
                bad(format!(
                    "unknown event {name:?}; known: {}",
                    known.join(", ")
                ))
            })?;
            events.insert(event);
        }
        if events.is_empty() {
            return Err(bad("events is empty".into()));
        }
        Ok(Webhook {
            name: config.name.clone(),
            url,
            origin,
            format: config.format,
            secret,
            events,
            timeout: Duration::from_secs(config.timeout.as_secs().max(1)),
            alert_after: config.alert_after.as_time(),
        })
    }

    /// Whether this webhook receives `entry`.
    pub fn wants(&self, entry: &AuditEvent) -> bool {
        Event::of(entry).is_some_and(|e| self.events.contains(&e))
    }
}

/// Every configured webhook and this process's name as a cursor holder.
pub struct Webhooks {
    hooks: Vec<Arc<Webhook>>,
    holder: String,
}

impl Webhooks {
    /// Loads `[[webhooks]]`; names must be unique. `config_file` is the configuration
    /// file, if any, whose directory anchors relative secret files.
    pub fn load(
        configs: &[WebhookConfig],
        config_file: Option<&Path>,
    ) -> Result<Webhooks, StartError> {
        let dir = config_file.map(|f| f.parent().unwrap_or(Path::new("")));
        let mut hooks: Vec<Arc<Webhook>> = Vec::new();
        for config in configs {
            if hooks.iter().any(|h| h.name == config.name) {
                return Err(StartError::Config(format!(
                    "webhook {:?} is configured twice",
                    config.name
                )));
            }
            hooks.push(Arc::new(Webhook::load(config, dir)?));
        }
        let holder = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        Ok(Webhooks { hooks, holder })
    }

    pub fn is_empty(&self) -> bool {
        self.hooks.is_empty()
    }

    /// Starts one delivery worker per webhook.
    pub fn spawn(&self, state: &AppState) -> Vec<tokio::task::JoinHandle<()>> {
        if self.hooks.is_empty() {
            return Vec::new();
        }
        let client = match reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A receiver's redirect could point anywhere; deliveries go where configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mayfly-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook HTTP client; no webhooks are sent");
                return Vec::new();
            }
        };
        self.hooks
            .iter()
            .map(|hook| {
                let worker = Worker {
                    state: state.clone(),
                    hook: hook.clone(),
                    client: client.clone(),
                    holder: self.holder.clone(),
                };
                tokio::spawn(worker.run())
            })
            .collect()
    }

    /// Gives up this process's claims (clean shutdown), so the next start or another
    /// replica continues at once.
    pub async fn release(&self, state: &AppState) {
        for hook in &self.hooks {
            if let Err(e) = state.store.release_webhook(&hook.name, &self.holder).await {
                tracing::warn!(webhook = %hook.name, error = %e, "cannot release the webhook's claim; it lapses by itself");
            }
        }
    }
}

/// One webhook's delivery loop.
struct Worker {
    state: AppState,
    hook: Arc<Webhook>,
    client: reqwest::Client,
    holder: String,
}

/// What one pass of the worker found to do next.
enum Next {
    /// Look again after this long.
    Sleep(Duration),
    /// The claim is gone: claim again before anything else.
    Reclaim(Duration),
}

impl Worker {
    async fn run(self) {
        let name = self.hook.name.clone();
        tracing::info!(webhook = %name, url = %self.hook.origin, "webhook delivery started");
        let mut cursor: Option<WebhookCursor> = None;
        let mut alerted = false;
        loop {
            let now = mayfly_core::now();
            let renew_at = cursor
                .as_ref()
                .and_then(|c| c.claimed_until)
                .map(|until| until - claim_for() / 2);
            if renew_at.is_none_or(|at| at <= now) {
                match self
                    .state
                    .store
                    .claim_webhook(&name, &self.holder, now, now + claim_for())
                    .await
                {
                    Ok(Some(c)) => cursor = Some(c),
                    Ok(None) => {
                        // Another replica delivers it; look again when its claim may lapse.
                        cursor = None;
                        tokio::time::sleep(CLAIM_FOR / 3).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(webhook = %name, error = %e, "cannot claim the webhook's cursor; retrying");
                        cursor = None;
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                }
            }
            let Some(c) = cursor.as_mut() else { continue };
            let next = self.pass(c, &mut alerted).await;
            let sleep = match next {
                Next::Sleep(d) => d,
                Next::Reclaim(d) => {
                    cursor = None;
                    d
                }
            };
            if !sleep.is_zero() {
                tokio::time::sleep(sleep).await;
            }
        }
    }

    /// Delivers what is due after the cursor, keeping `c` as the store has it.
    async fn pass(&self, c: &mut WebhookCursor, alerted: &mut bool) -> Next {
        let name = &self.hook.name;
        let store = &self.state.store;
        let now = mayfly_core::now();
        if let Some(due) = c.next_attempt_at {
            if due > now {
                return Next::Sleep(until(due, now).min(CLAIM_FOR / 3));
            }
        }
        let page = match store
            .list_audit(&AuditFilter {
                after_seq: Some(c.delivered_seq),
                limit: Some(PAGE),
                ..Default::default()
            })
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(webhook = %name, error = %e, "cannot read the audit chain; retrying");
                return Next::Sleep(POLL);
            }
        };
        let next = self.work(c, &page, alerted).await;
        self.set_lag(c, &page).await;
        next
    }

    /// Goes through one page of the chain: delivers what this webhook receives, in
    /// order, and moves the cursor over the rest.
    async fn work(&self, c: &mut WebhookCursor, page: &[AuditEvent], alerted: &mut bool) -> Next {
        let name = &self.hook.name;
        let Some(last) = page.last().map(|e| e.seq) else {
            return Next::Sleep(POLL);
        };
        // Entries this webhook does not receive are passed over; the cursor moves over
        // them with the next delivery, or at the end of the page.
        let mut passed = c.delivered_seq;
        for entry in page {
            if !self.hook.wants(entry) {
                passed = entry.seq;
                continue;
            }
            let attempt = c.attempts + 1;
            match self.deliver(entry).await {
                Ok(()) => {
                    tracing::debug!(webhook = %name, seq = entry.seq, event = entry.kind.as_str(), attempt, "webhook delivered");
                    if c.attempts > 0 {
                        tracing::info!(webhook = %name, seq = entry.seq, attempt, "webhook delivered after failing");
                    }
                    *alerted = false;
                    if !self.advance(c, entry.seq).await {
                        return Next::Reclaim(Duration::ZERO);
                    }
                    passed = entry.seq;
                }
                Err(error) => {
                    if passed > c.delivered_seq && !self.advance(c, passed).await {
                        return Next::Reclaim(Duration::ZERO);
                    }
                    return self.failed(c, entry, attempt, &error, alerted).await;
                }
            }
        }
        if last > c.delivered_seq && !self.advance(c, last).await {
            return Next::Reclaim(Duration::ZERO);
        }
        if page.len() as u32 == PAGE {
            Next::Sleep(Duration::ZERO)
        } else {
            Next::Sleep(POLL)
        }
    }

    /// Moves the cursor to `seq`; `false` when the claim was lost.
    async fn advance(&self, c: &mut WebhookCursor, seq: u64) -> bool {
        let now = mayfly_core::now();
        let until = now + claim_for();
        match self
            .state
            .store
            .advance_webhook(&self.hook.name, &self.holder, seq, now, until)
            .await
        {
            Ok(true) => {
                c.delivered_seq = seq;
                c.attempts = 0;
                c.next_attempt_at = None;
                c.last_error = None;
                c.failing_since = None;
                c.claimed_until = Some(until);
                true
            }
            Ok(false) => {
                tracing::info!(webhook = %self.hook.name, "webhook claim lost to another replica");
                false
            }
            Err(e) => {
                // Delivered but not recorded: it is sent again (same event id) after a
                // fresh claim.
                tracing::warn!(webhook = %self.hook.name, error = %e, "cannot move the webhook's cursor");
                false
            }
        }
    }

    /// Records a failed attempt and schedules the next.
    async fn failed(
        &self,
        c: &mut WebhookCursor,
        entry: &AuditEvent,
        attempt: u32,
        error: &str,
        alerted: &mut bool,
    ) -> Next {
        let name = &self.hook.name;
        self.state.metrics.webhook_failure(name);
        let now = mayfly_core::now();
        let delay = backoff(attempt, jitter());
        let next_attempt = now + time::Duration::seconds_f64(delay.as_secs_f64());
        let until = now + claim_for();
        let failing_since = c.failing_since.unwrap_or(now);
        tracing::warn!(
            webhook = %name,
            url = %self.hook.origin,
            seq = entry.seq,
            event = entry.kind.as_str(),
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            %error,
            "webhook delivery failed"
        );
        if !*alerted && now - failing_since >= self.hook.alert_after {
            *alerted = true;
            tracing::error!(
                webhook = %name,
                url = %self.hook.origin,
                seq = entry.seq,
                event = entry.kind.as_str(),
                attempts = attempt,
                failing_for_s = (now - failing_since).whole_seconds(),
                %error,
                "webhook has been failing; events after it are held back until it succeeds"
            );
        }
        match self
            .state
            .store
            .webhook_failed(name, &self.holder, error, next_attempt, now, until)
            .await
        {
            Ok(true) => {
                c.attempts = attempt;
                c.last_error = Some(error.to_string());
                c.next_attempt_at = Some(next_attempt);
                c.failing_since = Some(failing_since);
                c.claimed_until = Some(until);
                Next::Sleep(delay.min(CLAIM_FOR / 3))
            }
            Ok(false) => Next::Reclaim(delay),
            Err(e) => {
                tracing::warn!(webhook = %name, error = %e, "cannot record the failed delivery");
                Next::Reclaim(delay)
            }
        }
    }

    /// `mayfly_webhook_lag_events`: audit entries after the cursor once a page was gone
    /// through, exact from the page when it is not full, else from the chain head.
    async fn set_lag(&self, c: &WebhookCursor, page: &[AuditEvent]) {
        let lag = if (page.len() as u32) < PAGE {
            page.iter().filter(|e| e.seq > c.delivered_seq).count() as u64
        } else {
            match self.state.store.stats().await {
                Ok(stats) => stats.audit_entries.saturating_sub(c.delivered_seq),
                Err(_) => return,
            }
        };
        self.state.metrics.webhook_lag(&self.hook.name, lag);
    }

    /// One attempt: POSTs the signed body; the error says what went wrong, holding no
    /// secret (no URL path or query, no body, no signature).
    async fn deliver(&self, entry: &AuditEvent) -> Result<(), String> {
        let body = body(self.hook.format, entry);
        let mut request = self
            .client
            .post(self.hook.url.expose())
            .timeout(self.hook.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Mayfly-Event-Id", &entry.hash)
            .header("Mayfly-Event", Event::of(entry).map_or("", Event::name));
        if let Some(secret) = &self.hook.secret {
            let t = mayfly_core::now().unix_timestamp();
            request = request.header("Mayfly-Signature", signature_header(secret, t, &body));
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Only the start of what the receiver says: it may answer with anything, at any
        // length.
        let mut start = Vec::new();
        let mut response = response;
        while start.len() < ERROR_BODY_CHARS * 4 {
            match response.chunk().await {
                Ok(Some(chunk)) => start.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let text: String = String::from_utf8_lossy(&start)
            .chars()
            .filter(|c| !c.is_control())
            .take(ERROR_BODY_CHARS)
            .collect();
        Err(if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        })
    }
}

fn claim_for() -> time::Duration {
    time::Duration::seconds(CLAIM_FOR.as_secs() as i64)
}

fn until(at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::from_secs_f64((at - now).as_seconds_f64().max(0.0))
}

/// An error with its causes, as one line (reqwest's own text is only the outermost).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// The delay before attempt `attempt + 1` after `attempt` failures: doubling from
/// [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], of which a random part (`jitter` in [0, 1))
/// is taken off, down to half, so many webhooks failing together do not retry together.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let doubled = BACKOFF_MIN.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1).min(30) as i32);
    let capped = doubled.min(BACKOFF_MAX.as_secs_f64());
    Duration::from_secs_f64(capped * (1.0 - jitter.clamp(0.0, 1.0) / 2.0))
}

fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature_header(secret: &SecretString, t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes());
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut hex = String::with_capacity(64);
    for b in tag.as_ref() {
        let _ = write!(hex, "{b:02x}");
    }
    format!("t={t},v1={hex}")
}

/// Why a delivery's signature is not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Mayfly-Signature header is malformed")]
    Malformed,
    #[error("the signature is too old or from the future")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// The receiver's check of `Mayfly-Signature` (for Rust receivers and for the tests): the
/// timestamp within `tolerance_s` of `now`, and a `v1` that is the HMAC, compared in
/// constant time.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1.push(value),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > tolerance_s {
        return Err(SignatureError::Stale);
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    for candidate in v1 {
        let Some(tag) = from_hex(candidate) else {
            continue;
        };
        if ring::hmac::verify(&key, &signed, &tag).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Field names never sent, at any depth, whatever an audit entry holds.
const CREDENTIAL_FIELDS: &[&str] = &[
    "password",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "credential",
    "credentials",
    "private_key",
    "dsn",
    "connection_string",
    "api_key",
];

/// `detail` without any credential-named field. Audit entries never hold a secret; this
/// keeps a webhook from carrying one even if a writer of the chain got that wrong.
pub fn scrub(detail: &serde_json::Value) -> serde_json::Value {
    match detail {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .filter(|(k, _)| !CREDENTIAL_FIELDS.contains(&k.to_ascii_lowercase().as_str()))
                .map(|(k, v)| (k.clone(), scrub(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(scrub).collect())
        }
        other => other.clone(),
    }
}

/// The request body for `entry` in `format`.
pub fn body(format: Format, entry: &AuditEvent) -> Vec<u8> {
    let value = match format {
        Format::Json => json_body(entry),
        Format::Slack => serde_json::json!({ "text": slack_text(entry) }),
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// The generic body: the event's name, the audit entry's fields, and a one-line summary.
fn json_body(entry: &AuditEvent) -> serde_json::Value {
    let at = entry
        .at
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "id": entry.hash,
        "event": Event::of(entry).map(Event::name),
        "audit_kind": entry.kind.as_str(),
        "seq": entry.seq,
        "at": at,
        "actor": entry.actor,
        "identity": entry.identity,
        "owner": entry.owner,
        "target": entry.target,
        "task": entry.task,
        "grant_id": entry.grant_id,
        "lease_id": entry.lease_id,
        "detail": scrub(&entry.detail),
        "summary": summary(entry),
    })
}

/// One line saying what happened, for people.
pub fn summary(entry: &AuditEvent) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let identity = or_dash(&entry.identity);
    let target = or_dash(&entry.target);
    let grant = entry
        .grant_id
        .map_or_else(|| "-".to_string(), |g| g.to_string());
    let text_of = |key: &str| {
        entry
            .detail
            .get(key)
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(300).collect::<String>())
    };
    let mut line = match Event::of(entry) {
        Some(Event::ApprovalNeeded) => {
            format!("Approval needed: {identity} requests access to {target} (grant {grant})")
        }
        Some(Event::Approved) => format!(
            "Approved: {identity} on {target} (grant {grant}), last approval by {}",
            entry.actor
        ),
        Some(Event::ApprovalProgress) => format!(
            "Approval by {}: {identity} on {target} (grant {grant}), more still needed",
            entry.actor
        ),
        Some(Event::Denied) => format!(
            "Denied by {}: {identity} on {target} (grant {grant})",
            entry.actor
        ),
        Some(Event::Expired) => format!(
            "Approval expired: {identity} on {target} (grant {grant}), nobody approved in time"
        ),
        Some(Event::BreakGlass) => format!(
            "BREAK-GLASS used: {identity} on {target} (grant {grant}), issued without approval; review required"
        ),
        Some(Event::RevokeFailed) => format!(
            "Revocation failing: lease {} of {identity} on {target}",
            entry.lease_id.map_or_else(|| "-".to_string(), |l| l.to_string())
        ),
        None => format!("{}: {identity} on {target}", entry.kind.as_str()),
    };
    for (label, key) in [
        ("purpose", "purpose"),
        ("comment", "comment"),
        ("reason", "reason"),
        ("error", "error"),
    ] {
        if let Some(text) = text_of(key) {
            let _ = write!(line, "; {label}: {text}");
        }
    }
    if let Some(n) = entry.detail.get("attempt").and_then(|v| v.as_u64()) {
        let _ = write!(line, "; attempt {n}");
    }
    line
}

/// The Slack message: the summary, escaped as Slack requires (`&`, `<`, `>`), so no
/// name in it can become a mention or a link.
pub fn slack_text(entry: &AuditEvent) -> String {
    let icon = match Event::of(entry) {
        Some(Event::BreakGlass) => ":rotating_light:",
        Some(Event::RevokeFailed) => ":warning:",
        Some(Event::ApprovalNeeded) | Some(Event::ApprovalProgress) => ":hourglass:",
        Some(Event::Approved) => ":white_check_mark:",
        Some(Event::Denied) | Some(Event::Expired) => ":no_entry:",
        None => ":information_source:",
    };
    let escaped = summary(entry)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("{icon} Mayfly: {escaped}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use mayfly_core::audit::AuditDraft;
    use serde_json::json;

    fn entry(kind: AuditKind, detail: serde_json::Value) -> AuditEvent {
        let mut draft = AuditDraft::new(kind, "human:alice").detail(detail);
        draft.identity = Some("ci-deployer".into());
        draft.target = Some("prod-db".into());
        draft.grant_id = Some(uuid::Uuid::nil());
        draft.seal(7, mayfly_core::now(), mayfly_core::audit::GENESIS_HASH)
    }

    fn config(toml_text: &str) -> WebhookConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body_and_verifies() {
        let secret = SecretString::new("s3cr3t".into());
        let header = signature_header(&secret, 1_700_000_000, b"{\"a\":1}");
        // Independently computed: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cr3t
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cr3t");
        let tag = ring::hmac::sign(&key, b"1700000000.{\"a\":1}");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(header, format!("t=1700000000,v1={hex}"));
        let ok = verify_signature(b"s3cr3t", &header, b"{\"a\":1}", 1_700_000_010, 300);
        assert_eq!(ok, Ok(()));
        assert_eq!(
            verify_signature(b"other", &header, b"{\"a\":1}", 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"s3cr3t", &header, b"{\"a\":2}", 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"s3cr3t", &header, b"{\"a\":1}", 1_700_001_000, 300),
            Err(SignatureError::Stale)
        );
        for bad in ["", "v1=ab", "t=1700000000", "t=x,v1=00"] {
            assert_eq!(
                verify_signature(b"s3cr3t", bad, b"", 1_700_000_000, 300),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify_signature(b"s3cr3t", "t=1700000000,v1=zz", b"", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter() {
        assert_eq!(backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(5, 0.0), Duration::from_secs(16));
        assert_eq!(backoff(9, 0.0), Duration::from_secs(256));
        assert_eq!(backoff(10, 0.0), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX, 0.0), Duration::from_secs(300));
        // Jitter takes off up to half, never more.
        assert_eq!(
            backoff(10, 0.999_999),
            Duration::from_secs_f64(300.0 * (1.0 - 0.4999995))
        );
        assert_eq!(backoff(1, 1.0), Duration::from_millis(500));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn events_select_entries_and_complete_approvals() {
        let hook = |events: &str| {
            Webhook::load(
                &config(&format!(
                    "name = \"a\"\nurl = \"http://127.0.0.1:1/h\"\nsecret_env = \"PATH\"\n{events}"
                )),
                None,
            )
            .unwrap()
        };
        let defaults = hook("");
        let last = entry(AuditKind::ApprovalGranted, json!({"complete": true}));
        let partial = entry(AuditKind::ApprovalGranted, json!({"complete": false}));
        assert!(defaults.wants(&last));
        assert!(
            !defaults.wants(&partial),
            "intermediate approvals only when asked"
        );
        for kind in [
            AuditKind::ApprovalRequested,
            AuditKind::ApprovalDenied,
            AuditKind::ApprovalExpired,
            AuditKind::GrantBreakGlass,
            AuditKind::LeaseRevokeFailed,
        ] {
            assert!(defaults.wants(&entry(kind, json!({}))), "{kind:?}");
        }
        for kind in [
            AuditKind::LeaseIssued,
            AuditKind::ReviewClosed,
            AuditKind::AuthFailed,
        ] {
            assert!(!defaults.wants(&entry(kind, json!({}))), "{kind:?}");
        }
        let partial_too = hook("events = [\"approval.granted\", \"approval.granted.partial\"]");
        assert!(partial_too.wants(&partial) && partial_too.wants(&last));
        assert!(!partial_too.wants(&entry(AuditKind::GrantBreakGlass, json!({}))));
    }

    #[test]
    fn configuration_mistakes_are_refused() {
        // Any variable that is set stands for a secret here.
        let cases = [
            ("name = \"A b\"\nurl = \"http://h/\"\nsecret_env = \"PATH\"", "name"),
            ("name = \"a\"\nsecret_env = \"PATH\"", "url"),
            ("name = \"a\"\nurl = \"ftp://h/\"\nsecret_env = \"PATH\"", "http"),
            ("name = \"a\"\nurl = \"not a url\"\nsecret_env = \"PATH\"", "valid URL"),
            ("name = \"a\"\nurl = \"http://h/\"", "secret is required"),
            ("name = \"a\"\nurl = \"http://h/\"\nsecret_env = \"MAYFLY_TEST_WEBHOOK_UNSET\"", "not set"),
            ("name = \"a\"\nurl = \"http://h/\"\nsecret_env = \"PATH\"\nevents = [\"grant.issued\"]", "unknown event"),
            ("name = \"a\"\nurl = \"http://h/\"\nsecret_env = \"PATH\"\nevents = []", "empty"),
        ];
        for (text, expected) in cases {
            let err = Webhook::load(&config(text), None).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}: {err}");
        }
        // A literal secret in the file is not even a key.
        assert!(toml::from_str::<WebhookConfig>(
            "name = \"a\"\nurl = \"http://h/\"\nsecret = \"literal\""
        )
        .is_err());
        // Slack needs no secret; names are unique.
        let slack =
            config("name = \"a\"\nurl = \"https://hooks.example/T/B/X\"\nformat = \"slack\"");
        assert!(Webhook::load(&slack, None).is_ok());
        let err = Webhooks::load(&[slack.clone(), slack], None).err().unwrap();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn secret_file_is_read_relative_to_the_config_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hook.secret"), "file-secret-value\n").unwrap();
        let hook = Webhook::load(
            &config("name = \"a\"\nurl = \"https://h.example/p/SECRETPATH?k=v\"\nsecret_file = \"hook.secret\""),
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(hook.secret.as_ref().unwrap().expose(), "file-secret-value");
        let shown = format!("{hook:?}");
        let config_shown = format!(
            "{:?}",
            config("name = \"a\"\nurl = \"https://h.example/p/SECRETPATH\"")
        );
        assert!(!config_shown.contains("SECRETPATH"), "{config_shown}");
        assert!(
            !shown.contains("file-secret-value") && !shown.contains("SECRETPATH"),
            "{shown}"
        );
        assert!(shown.contains("https://h.example"), "{shown}");
    }

    #[test]
    fn json_body_carries_the_entry_without_credentials() {
        let e = entry(
            AuditKind::GrantBreakGlass,
            json!({"purpose": "INC-4312: primary down", "token": "eyJ.secret", "nested": [{"password": "p", "ttl": 60}]}),
        );
        let body: serde_json::Value = serde_json::from_slice(&body(Format::Json, &e)).unwrap();
        assert_eq!(body["id"], json!(e.hash));
        assert_eq!(body["event"], json!("grant.break_glass"));
        assert_eq!(body["seq"], json!(7));
        assert_eq!(body["identity"], json!("ci-deployer"));
        assert_eq!(body["target"], json!("prod-db"));
        assert_eq!(
            body["detail"],
            json!({"purpose": "INC-4312: primary down", "nested": [{"ttl": 60}]})
        );
        let text = body.to_string();
        assert!(
            !text.contains("eyJ.secret") && !text.contains("\"p\""),
            "{text}"
        );
        assert!(body["summary"].as_str().unwrap().contains("BREAK-GLASS"));
    }

    #[test]
    fn slack_body_is_text_only_and_escaped() {
        let mut e = entry(
            AuditKind::LeaseRevokeFailed,
            json!({"error": "connection refused <!channel> & co", "attempt": 3}),
        );
        e.lease_id = Some(uuid::Uuid::nil());
        let body: serde_json::Value = serde_json::from_slice(&body(Format::Slack, &e)).unwrap();
        let obj = body.as_object().unwrap();
        assert_eq!(obj.len(), 1, "only text: {body}");
        let text = obj["text"].as_str().unwrap();
        assert!(
            text.starts_with(":warning: Mayfly: Revocation failing"),
            "{text}"
        );
        assert!(text.contains("&lt;!channel&gt; &amp; co"), "{text}");
        assert!(text.contains("attempt 3"), "{text}");
    }

    /// A local receiver answering 200 to every request; records (headers, body).
    async fn receiver() -> (String, Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head, length) = loop {
                    let n = conn.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "request cut short");
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        buf.drain(..i + 4);
                        break (head, length);
                    }
                };
                while buf.len() < length {
                    let n = conn.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                record.lock().unwrap().push((head, buf));
                let _ = conn
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        (url, seen)
    }

    /// Two replicas' workers on one store deliver every wanted event exactly once, in
    /// chain order, signed; unwanted entries and intermediate approvals are passed over,
    /// and the shared cursor ends past all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_deliver_each_event_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (url, seen) = receiver().await;
        let hook = config(&format!(
            "name = \"ops\"\nurl = \"{url}\"\nsecret_env = \"PATH\""
        ));
        let config = crate::Config {
            data_dir: dir.path().to_path_buf(),
            store: Some("sqlite::memory:".into()),
            webhooks: vec![hook.clone()],
            ..crate::Config::default()
        };
        let (server, _) = crate::Server::prepare(config, None).await.unwrap();
        let state = server.state();
        let replicas = [
            Webhooks::load(std::slice::from_ref(&hook), None).unwrap(),
            Webhooks::load(std::slice::from_ref(&hook), None).unwrap(),
        ];
        let workers: Vec<_> = replicas.iter().flat_map(|w| w.spawn(&state)).collect();
        tokio::time::sleep(Duration::from_millis(300)).await;

        let draft = |kind: AuditKind, detail: serde_json::Value| {
            let mut d = AuditDraft::new(kind, "human:alice").detail(detail);
            d.identity = Some("ci".into());
            d.target = Some("prod".into());
            d
        };
        state
            .store
            .append_audit(vec![
                draft(AuditKind::ApprovalRequested, json!({"approvals_needed": 2})),
                draft(AuditKind::LeaseIssued, json!({})),
                draft(AuditKind::ApprovalGranted, json!({"complete": false})),
                draft(AuditKind::ApprovalGranted, json!({"complete": true})),
                draft(
                    AuditKind::GrantBreakGlass,
                    json!({"purpose": "INC-4312: primary down"}),
                ),
                draft(AuditKind::AuthFailed, json!({})),
            ])
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while seen.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Time for a wrong second delivery to show.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let seen = seen.lock().unwrap().clone();
        let events: Vec<String> = seen
            .iter()
            .map(|(_, body)| {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                v["event"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(
            events,
            vec![
                "approval.requested",
                "approval.granted",
                "grant.break_glass"
            ],
            "each once, in order"
        );
        let secret = std::env::var("PATH").unwrap();
        for (head, body) in &seen {
            let signature = head
                .lines()
                .find_map(|l| l.strip_prefix("mayfly-signature:"))
                .unwrap()
                .trim();
            let now = mayfly_core::now().unix_timestamp();
            assert_eq!(
                verify_signature(secret.as_bytes(), signature, body, now, 60),
                Ok(())
            );
        }
        for w in &workers {
            w.abort();
        }
        for r in &replicas {
            r.release(&state).await;
        }
        // Released: a claim succeeds at once, and shows the cursor past the last entry.
        let now = mayfly_core::now();
        let cursor = state
            .store
            .claim_webhook("ops", "check", now, now + claim_for())
            .await
            .unwrap()
            .expect("both replicas released their claims");
        let head = state.store.stats().await.unwrap().audit_entries;
        assert_eq!(cursor.delivered_seq, head);
    }
}
