//! What the database providers share: the target settings schema, statement templates,
//! username generation and password generation.
//!
//! Nothing here talks to a database; [`crate::conn`] owns connections and error mapping.
//!
//! # Target settings (`target.settings`, non-secret)
//!
//! | key | type | default |
//! | --- | --- | --- |
//! | `creation_statements` | list of SQL templates | engine default (see each provider) |
//! | `grants` | map action -> list of SQL templates | required: one entry per target action |
//! | `revocation_statements` | list of SQL templates | engine default (drop the user) |
//! | `username_template` | template | `mayfly_{{identity}}_{{rand}}` |
//! | `password_length` | integer 16..=128 | 32 |
//! | `host`, `port`, `database` | string, integer, string | taken from the admin URL |
//! | `timeout_seconds` | integer 1..=600 | 30 (connect plus the whole operation) |
//!
//! Unknown keys are rejected, so a typo (`grant` for `grants`) fails when the target is
//! stored rather than when the first credential is issued.
//!
//! # Placeholders
//!
//! `{{name}}` (the generated username), `{{password}}`, `{{expiration}}` (lease expiry,
//! RFC 3339 UTC), `{{identity}}` and `{{action}}` (reduced to `[a-z0-9_]`), `{{rand}}`
//! (random `[a-z0-9]`, usernames only) and `{{host}}` (MariaDB revocation: the account's
//! host part). Templates are trusted operator configuration; only generated or validated
//! values are substituted, so a placeholder can never inject SQL.
//!
//! `{{password}}` is replaced by the engine's *verifier* of the issued password
//! ([`crate::verifier`]), never by the password itself, so the plaintext never reaches the
//! database server's statement log. PostgreSQL stores a verifier given as the password of
//! `CREATE ROLE … PASSWORD '{{password}}'` as it is; MariaDB needs it placed as a hash,
//! `IDENTIFIED BY PASSWORD '{{password}}'` (checked when the target is stored).

use std::collections::BTreeMap;
use std::time::Duration;

use mayfly_core::model::Target;
use mayfly_core::provider::{Ledger, ProviderError, ReconcileReport, Recorded};
use mayfly_core::secret::{random_bytes, SecretString};
use serde::Deserialize;
use time::OffsetDateTime;

/// Random characters in a username's `{{rand}}`: 36^10 ≈ 2^51, so two leases of the same
/// identity never collide in practice (a collision fails `CREATE`, it never shares a user).
pub const RAND_LEN: usize = 10;
pub const DEFAULT_USERNAME_TEMPLATE: &str = "mayfly_{{identity}}_{{rand}}";
pub const DEFAULT_PASSWORD_LENGTH: usize = 32;
pub const MIN_PASSWORD_LENGTH: usize = 16;
pub const MAX_PASSWORD_LENGTH: usize = 128;
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 30;
pub const MAX_TIMEOUT_SECONDS: u64 = 600;

/// What differs between engines in the shared settings.
#[derive(Debug)]
pub struct EngineSpec {
    pub kind: &'static str,
    /// Longest username the engine accepts, in bytes (names are ASCII).
    pub max_username: usize,
    pub default_creation: &'static [&'static str],
    pub default_revocation: &'static [&'static str],
    /// Placeholders revocation statements may use.
    pub revocation_vars: &'static [Var],
    pub default_port: u16,
    /// URL schemes accepted for the admin secret.
    pub schemes: &'static [&'static str],
    /// Username prefixes the engine reserves (`pg_` on PostgreSQL).
    pub reserved_prefixes: &'static [&'static str],
    /// Keywords one of which must come right before `'{{password}}'` for the engine to
    /// take the verifier as a hash (MariaDB: `PASSWORD`, `USING`); empty where any
    /// password literal accepts a verifier (PostgreSQL).
    pub verifier_after: &'static [&'static str],
}

/// The settings as written in the target definition.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbSettings {
    #[serde(default)]
    pub creation_statements: Option<Vec<String>>,
    #[serde(default)]
    pub grants: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub revocation_statements: Option<Vec<String>>,
    #[serde(default)]
    pub username_template: Option<String>,
    #[serde(default)]
    pub password_length: Option<usize>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub database: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    // Read by runtime policy (Cedar maps them onto the target entity), not by the
    // provider; listed so they are not rejected as unknown keys.
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub sensitivity: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
}

/// Settings after validation, templates parsed.
#[derive(Debug)]
pub struct Config {
    pub creation: Vec<Template>,
    pub grants: BTreeMap<String, Vec<Template>>,
    pub revocation: Vec<Template>,
    pub username: UsernameTemplate,
    pub password_length: usize,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub timeout: Duration,
}

fn bad(msg: impl Into<String>) -> ProviderError {
    ProviderError::BadSettings(msg.into())
}

impl Config {
    /// Parses and checks `target.settings` for `spec`'s engine, including that every
    /// action of the target has a `grants` entry and that no entry names an unknown action.
    pub fn from_target(spec: &EngineSpec, target: &Target) -> Result<Config, ProviderError> {
        if target.kind != spec.kind {
            return Err(bad(format!(
                "target kind is {:?}, this provider issues {:?}",
                target.kind, spec.kind
            )));
        }
        let settings: DbSettings = match &target.settings {
            serde_json::Value::Null => DbSettings::default(),
            v => serde_json::from_value(v.clone()).map_err(|e| bad(e.to_string()))?,
        };

        const STATEMENT_VARS: &[Var] = &[
            Var::Name,
            Var::Password,
            Var::Expiration,
            Var::Identity,
            Var::Action,
        ];
        let parse_list = |what: &str, list: &[String], vars: &[Var]| {
            list.iter()
                .enumerate()
                .map(|(i, s)| {
                    if s.trim().is_empty() {
                        return Err(bad(format!("{what}[{i}] is empty")));
                    }
                    Template::parse(s, vars).map_err(|e| bad(format!("{what}[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()
        };

        let creation = match &settings.creation_statements {
            Some(list) if list.is_empty() => {
                return Err(bad("creation_statements must not be empty"))
            }
            Some(list) => parse_list("creation_statements", list, STATEMENT_VARS)?,
            None => parse_list(
                "creation_statements",
                &to_owned(spec.default_creation),
                STATEMENT_VARS,
            )?,
        };
        if !creation.iter().any(|t| t.uses(Var::Name)) {
            return Err(bad("creation_statements must use {{name}}"));
        }
        if !creation.iter().any(|t| t.uses(Var::Password)) {
            return Err(bad(
                "creation_statements must use {{password}} (the issued password would not work)",
            ));
        }

        let revocation = match &settings.revocation_statements {
            Some(list) if list.is_empty() => {
                return Err(bad("revocation_statements must not be empty"))
            }
            Some(list) => parse_list("revocation_statements", list, spec.revocation_vars)?,
            None => parse_list(
                "revocation_statements",
                &to_owned(spec.default_revocation),
                spec.revocation_vars,
            )?,
        };

        let mut grants = BTreeMap::new();
        for (action, list) in &settings.grants {
            if !target.actions.iter().any(|a| a == action) {
                return Err(bad(format!(
                    "grants names action {action:?}, which the target does not offer"
                )));
            }
            grants.insert(
                action.clone(),
                parse_list(&format!("grants.{action}"), list, STATEMENT_VARS)?,
            );
        }
        if !spec.verifier_after.is_empty()
            && creation
                .iter()
                .chain(grants.values().flatten())
                .any(|t| !t.password_after(spec.verifier_after))
        {
            return Err(bad(format!(
                "{{{{password}}}} stands for the password's hash on {}: write it as {} '{{{{password}}}}'",
                spec.kind,
                spec.verifier_after.join(" '{{password}}' or ")
            )));
        }
        for action in &target.actions {
            if !grants.contains_key(action) {
                return Err(bad(format!(
                    "grants has no entry for action {action:?} (use an empty list for none)"
                )));
            }
        }

        let username = UsernameTemplate::parse(
            settings
                .username_template
                .as_deref()
                .unwrap_or(DEFAULT_USERNAME_TEMPLATE),
            spec,
        )?;
        let password_length = settings.password_length.unwrap_or(DEFAULT_PASSWORD_LENGTH);
        if !(MIN_PASSWORD_LENGTH..=MAX_PASSWORD_LENGTH).contains(&password_length) {
            return Err(bad(format!(
                "password_length must be between {MIN_PASSWORD_LENGTH} and {MAX_PASSWORD_LENGTH}"
            )));
        }
        let timeout_seconds = settings.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
            return Err(bad(format!(
                "timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}"
            )));
        }
        // The overrides end up in a URL handed to the requester; keep them plain.
        if let Some(h) = &settings.host {
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            {
                return Err(bad("host must be a hostname or IP address"));
            }
        }
        if settings.port == Some(0) {
            return Err(bad("port must not be 0"));
        }
        if let Some(d) = &settings.database {
            if d.is_empty() || d.chars().any(|c| c.is_control()) {
                return Err(bad("database must be a non-empty name"));
            }
        }
        Ok(Config {
            creation,
            grants,
            revocation,
            username,
            password_length,
            host: settings.host,
            port: settings.port,
            database: settings.database,
            timeout: Duration::from_secs(timeout_seconds),
        })
    }

    /// The grant statements for `action`.
    pub fn grants_for(&self, action: &str) -> Result<&[Template], ProviderError> {
        self.grants
            .get(action)
            .map(Vec::as_slice)
            .ok_or_else(|| bad(format!("grants has no entry for action {action:?}")))
    }
}

fn to_owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A placeholder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    Name,
    Password,
    Expiration,
    Identity,
    Action,
    Rand,
    Host,
}

impl Var {
    fn parse(s: &str) -> Option<Var> {
        Some(match s {
            "name" => Var::Name,
            "password" => Var::Password,
            "expiration" => Var::Expiration,
            "identity" => Var::Identity,
            "action" => Var::Action,
            "rand" => Var::Rand,
            "host" => Var::Host,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Var::Name => "name",
            Var::Password => "password",
            Var::Expiration => "expiration",
            Var::Identity => "identity",
            Var::Action => "action",
            Var::Rand => "rand",
            Var::Host => "host",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var(Var),
}

/// A text with `{{placeholder}}`s, parsed once so rendering cannot fail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// Values substituted into a template; each must already be validated by its producer.
#[derive(Default)]
pub struct Values<'a> {
    pub name: &'a str,
    pub password: Option<&'a SecretString>,
    pub expiration: &'a str,
    pub identity: &'a str,
    pub action: &'a str,
    pub rand: &'a str,
    pub host: &'a str,
}

impl Template {
    pub fn parse(text: &str, allowed: &[Var]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                pieces.push(Piece::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| "unclosed {{ placeholder".to_string())?;
            let name = after[..end].trim();
            let var =
                Var::parse(name).ok_or_else(|| format!("unknown placeholder {{{{{name}}}}}"))?;
            if !allowed.contains(&var) {
                return Err(format!(
                    "placeholder {{{{{name}}}}} is not available here (allowed: {})",
                    allowed
                        .iter()
                        .map(|v| format!("{{{{{}}}}}", v.as_str()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            pieces.push(Piece::Var(var));
            rest = &after[end + 2..];
        }
        if rest.contains("}}") {
            return Err("stray }} without {{".into());
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(rest.to_string()));
        }
        Ok(Template { pieces })
    }

    pub fn uses(&self, var: Var) -> bool {
        self.pieces.contains(&Piece::Var(var))
    }

    /// Whether every `{{password}}` is a quoted literal right after one of `keywords`
    /// (case-insensitive, any whitespace in between): `PASSWORD '{{password}}'`.
    pub fn password_after(&self, keywords: &[&str]) -> bool {
        self.pieces.iter().enumerate().all(|(i, p)| {
            if *p != Piece::Var(Var::Password) {
                return true;
            }
            let before = match i.checked_sub(1).and_then(|j| self.pieces.get(j)) {
                Some(Piece::Lit(s)) => s.as_str(),
                _ => return false,
            };
            let after_quoted =
                matches!(self.pieces.get(i + 1), Some(Piece::Lit(s)) if s.starts_with('\''));
            let Some(head) = before.strip_suffix('\'') else {
                return false;
            };
            let head = head.trim_end().to_ascii_uppercase();
            after_quoted
                && keywords.iter().any(|k| {
                    head.strip_suffix(&k.to_ascii_uppercase())
                        .is_some_and(|rest| rest.is_empty() || rest.ends_with(char::is_whitespace))
                })
        })
    }

    /// Renders into a [`SecretString`]: a statement may carry the password, so it is
    /// zeroized on drop like any other secret and never printed.
    pub fn render(&self, v: &Values<'_>) -> SecretString {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(Var::Name) => out.push_str(v.name),
                Piece::Var(Var::Password) => {
                    if let Some(p) = v.password {
                        out.push_str(p.expose())
                    }
                }
                Piece::Var(Var::Expiration) => out.push_str(v.expiration),
                Piece::Var(Var::Identity) => out.push_str(v.identity),
                Piece::Var(Var::Action) => out.push_str(v.action),
                Piece::Var(Var::Rand) => out.push_str(v.rand),
                Piece::Var(Var::Host) => out.push_str(v.host),
            }
        }
        SecretString::new(out)
    }
}

/// The username template: literals restricted to `[a-z0-9_]`, `{{rand}}` required (it is
/// what makes names unique), and a non-empty literal prefix that reconciliation uses to
/// recognise Mayfly's users.
#[derive(Clone, Debug)]
pub struct UsernameTemplate {
    template: Template,
    prefix: String,
    max_len: usize,
}

impl UsernameTemplate {
    pub fn parse(text: &str, spec: &EngineSpec) -> Result<UsernameTemplate, ProviderError> {
        let template = Template::parse(text, &[Var::Identity, Var::Action, Var::Rand])
            .map_err(|e| bad(format!("username_template: {e}")))?;
        if !template.uses(Var::Rand) {
            return Err(bad(
                "username_template must contain {{rand}} so concurrent leases get distinct users",
            ));
        }
        let mut fixed = 0;
        for p in &template.pieces {
            match p {
                Piece::Lit(s) => {
                    if !s.chars().all(is_name_char) {
                        return Err(bad(
                            "username_template may only contain a-z, 0-9 and _ outside placeholders",
                        ));
                    }
                    fixed += s.len();
                }
                Piece::Var(Var::Rand) => fixed += RAND_LEN,
                Piece::Var(_) => {}
            }
        }
        let prefix = match template.pieces.first() {
            Some(Piece::Lit(s)) => s.clone(),
            _ => String::new(),
        };
        if prefix.is_empty() {
            return Err(bad(
                "username_template must start with a fixed prefix (e.g. mayfly_) so leftover users can be recognised",
            ));
        }
        if let Some(r) = spec
            .reserved_prefixes
            .iter()
            .find(|r| prefix.starts_with(*r))
        {
            return Err(bad(format!(
                "username_template must not start with {r:?} (reserved by {})",
                spec.kind
            )));
        }
        if fixed > spec.max_username {
            return Err(bad(format!(
                "username_template's fixed part is {fixed} characters; {} allows {}",
                spec.kind, spec.max_username
            )));
        }
        Ok(UsernameTemplate {
            template,
            prefix,
            max_len: spec.max_username,
        })
    }

    /// The fixed text every generated name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A fresh name: identity and action reduced to `[a-z0-9_]` and shortened (identity
    /// first) until the name fits the engine's limit; `{{rand}}` is never shortened.
    pub fn generate(&self, identity: &str, action: &str) -> Result<String, ProviderError> {
        let rand = random_chars(RAND_LEN, LOWER_ALNUM)?;
        Ok(self.render_with(identity, action, &rand))
    }

    fn render_with(&self, identity: &str, action: &str, rand: &str) -> String {
        let mut identity = sanitize(identity);
        let mut action = sanitize(action);
        let count = |v: Var| {
            self.template
                .pieces
                .iter()
                .filter(|p| **p == Piece::Var(v))
                .count()
        };
        let (ni, na) = (count(Var::Identity), count(Var::Action));
        let fixed: usize = self
            .template
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => s.len(),
                Piece::Var(Var::Rand) => RAND_LEN,
                Piece::Var(_) => 0,
            })
            .sum();
        let budget = self.max_len.saturating_sub(fixed);
        while ni * identity.len() + na * action.len() > budget {
            if ni > 0 && !identity.is_empty() {
                identity.pop();
            } else if na > 0 && !action.is_empty() {
                action.pop();
            } else {
                break;
            }
        }
        self.template
            .render(&Values {
                identity: &identity,
                action: &action,
                rand,
                ..Values::default()
            })
            .expose()
            .to_string()
    }

    /// Whether `name` could have come from this template: right prefix, charset, length.
    /// Checked on every name read back from lease state before it reaches SQL.
    pub fn accepts(&self, name: &str) -> bool {
        name.starts_with(&self.prefix) && valid_username(name, self.max_len)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// `[a-z0-9_]+`, at most `max` bytes.
pub fn valid_username(name: &str, max: usize) -> bool {
    !name.is_empty() && name.len() <= max && name.chars().all(is_name_char)
}

/// Reduces free text (an identity id such as `billing-deployer.v2`) to `[a-z0-9_]`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if is_name_char(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `len` characters drawn uniformly from `alphabet` with the OS CSPRNG. Bytes at or above
/// the largest multiple of the alphabet size are rejected, so there is no modulo bias.
fn random_chars(len: usize, alphabet: &[u8]) -> Result<String, ProviderError> {
    let n = alphabet.len();
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(len);
    while out.len() < len {
        let buf = random_bytes::<64>()
            .map_err(|_| ProviderError::Failed("the system random generator failed".into()))?;
        for b in buf {
            if (b as usize) < limit {
                out.push(char::from(alphabet[b as usize % n]));
                if out.len() == len {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// A new password: letters and digits only, so it needs no quoting in SQL or URLs
/// (32 characters carry about 190 bits).
pub fn generate_password(len: usize) -> Result<SecretString, ProviderError> {
    random_chars(len, ALNUM).map(SecretString::new)
}

/// The expiry as placed in `{{expiration}}` and `VALID UNTIL`: RFC 3339 in UTC, whole seconds.
pub fn format_expiration(t: OffsetDateTime) -> Result<String, ProviderError> {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .map_err(|e| ProviderError::Failed(format!("expiry: {e}")))?;
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| ProviderError::Failed(format!("expiry: {e}")))
}

/// The write-ahead plan shared by the database providers: the username the credential
/// will have, chosen before anything exists on the target.
pub fn plan_username(
    spec: &EngineSpec,
    request: &mayfly_core::provider::IssueRequest<'_>,
) -> Result<serde_json::Value, ProviderError> {
    let config = Config::from_target(spec, request.target.target)?;
    let name = config
        .username
        .generate(&request.identity.id, &request.grant.action)?;
    Ok(serde_json::json!({ "username": name }))
}

/// The username recorded by `plan` (and so in the lease's provider state).
///
/// `Fresh` (issuing) also requires the current template's prefix. `Existing` (renew,
/// revoke) only requires Mayfly's username shape: the template may have changed since the
/// lease was issued, and a revocation that can never succeed would keep a user alive.
/// The shape check is what keeps the name safe in SQL either way.
pub fn username_from_state(
    state: &serde_json::Value,
    template: &UsernameTemplate,
    when: StateUse,
) -> Result<String, ProviderError> {
    let name = state
        .get("username")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ProviderError::Failed("lease state names no username".into()))?;
    let ok = match when {
        StateUse::Fresh => template.accepts(name),
        StateUse::Existing => valid_username(name, template.max_len),
    };
    if !ok {
        return Err(ProviderError::Failed(format!(
            "lease state username {name:?} is not a username this target's template makes"
        )));
    }
    Ok(name.to_string())
}

/// See [`username_from_state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateUse {
    Fresh,
    Existing,
}

/// A prefixed account found on a target by reconciliation.
#[derive(Debug)]
pub struct Candidate {
    pub name: String,
    /// Whether the target itself marks the account as Mayfly's for this target
    /// (PostgreSQL: the role comment). `true` on engines with no place for a marker, where
    /// the store's record is the only proof.
    pub marked: bool,
}

/// The candidates reconciliation removes: recorded by this target's leases, every such
/// lease ended, and marked. Each candidate is counted in `report.found`; those Mayfly
/// cannot prove it made for this target are listed in `report.unknown` and left alone.
pub async fn removable(
    ledger: &dyn Ledger,
    candidates: Vec<Candidate>,
    report: &mut ReconcileReport,
) -> Result<Vec<String>, ProviderError> {
    let names: Vec<String> = candidates.iter().map(|c| c.name.clone()).collect();
    let recorded = if names.is_empty() {
        BTreeMap::new()
    } else {
        ledger.recorded(&names).await?
    };
    let mut remove = Vec::new();
    for c in candidates {
        report.found += 1;
        match recorded.get(&c.name) {
            Some(Recorded::Live) => {}
            Some(Recorded::Ended) if c.marked => remove.push(c.name),
            _ => report.unknown.push(c.name),
        }
    }
    Ok(remove)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const SPEC: EngineSpec = EngineSpec {
        kind: "postgres",
        max_username: 30,
        default_creation: &["CREATE ROLE \"{{name}}\" PASSWORD '{{password}}'"],
        default_revocation: &["DROP ROLE \"{{name}}\""],
        revocation_vars: &[Var::Name],
        default_port: 5432,
        schemes: &["postgres"],
        reserved_prefixes: &["pg_"],
        verifier_after: &[],
    };

    fn target(settings: serde_json::Value) -> Target {
        Target {
            name: "db".into(),
            kind: "postgres".into(),
            actions: vec!["read".into(), "write".into()],
            default_ttl: "1h".parse().unwrap(),
            max_ttl: "1h".parse().unwrap(),
            allow: vec![],
            settings,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn templates_parse_and_render() {
        let t =
            Template::parse("A {{ name }} B {{password}}", &[Var::Name, Var::Password]).unwrap();
        let pw = SecretString::new("pw".into());
        let out = t.render(&Values {
            name: "u",
            password: Some(&pw),
            ..Values::default()
        });
        assert_eq!(out.expose(), "A u B pw");
        assert!(Template::parse("{{nope}}", &[Var::Name]).is_err());
        assert!(Template::parse("{{name", &[Var::Name]).is_err());
        assert!(Template::parse("x }}", &[Var::Name]).is_err());
        assert!(Template::parse("{{password}}", &[Var::Name]).is_err());
    }

    #[test]
    fn settings_validation() {
        let ok = json(r#"{"grants": {"read": ["GRANT x TO \"{{name}}\""], "write": []}}"#);
        let c = Config::from_target(&SPEC, &target(ok)).unwrap();
        assert_eq!(c.password_length, 32);
        assert_eq!(c.username.prefix(), "mayfly_");
        for bad in [
            r#"{"grants": {"read": []}}"#,
            r#"{"grants": {"read": [], "write": [], "admin": []}}"#,
            r#"{"grants": {"read": [], "write": []}, "grant": {}}"#,
            r#"{"grants": {"read": [], "write": []}, "password_length": 8}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "{{identity}}_{{rand}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "mayfly_{{identity}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "Mayfly_{{rand}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "pg_{{rand}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "username_template": "a_very_long_prefix_indeed_{{rand}}"}"#,
            r#"{"grants": {"read": [], "write": []}, "creation_statements": ["CREATE ROLE x"]}"#,
            r#"{"grants": {"read": [], "write": []}, "creation_statements": []}"#,
            r#"{"grants": {"read": ["{{rand}}"], "write": []}}"#,
            r#"{"grants": {"read": [], "write": []}, "host": "a/b"}"#,
            r#"{"grants": {"read": [], "write": []}, "timeout_seconds": 0}"#,
        ] {
            assert!(
                Config::from_target(&SPEC, &target(json(bad))).is_err(),
                "{bad}"
            );
        }
        let mut t = target(json(r#"{"grants": {"read": [], "write": []}}"#));
        t.kind = "mariadb".into();
        assert!(Config::from_target(&SPEC, &t).is_err());
    }

    #[test]
    fn mariadb_needs_the_password_placed_as_a_hash() {
        let maria = crate::mariadb::SPEC;
        let with = |creation: &str, grant: &str| {
            let mut t = target(serde_json::json!({
                "creation_statements": [creation],
                "grants": {"read": [grant], "write": []}
            }));
            t.kind = "mariadb".into();
            Config::from_target(&maria, &t)
        };
        let g = "GRANT SELECT ON db.* TO '{{name}}'@'%'";
        for ok in [
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'",
            "CREATE USER '{{name}}'@'%' identified by password   '{{password}}' ACCOUNT LOCK",
            "CREATE USER '{{name}}'@'%' IDENTIFIED VIA mysql_native_password USING '{{password}}'",
        ] {
            assert!(with(ok, g).is_ok(), "{ok}");
        }
        for bad in [
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY '{{password}}'",
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD {{password}}",
            "CREATE USER '{{name}}'@'%' IDENTIFIED BY NOPASSWORD '{{password}}'",
        ] {
            let e = with(bad, g).unwrap_err().to_string();
            assert!(e.contains("PASSWORD '{{password}}'"), "{bad}: {e}");
        }
        let ok = "CREATE USER '{{name}}'@'%' IDENTIFIED BY PASSWORD '{{password}}'";
        assert!(with(
            ok,
            "GRANT SELECT ON db.* TO '{{name}}'@'%' IDENTIFIED BY '{{password}}'"
        )
        .is_err());
        assert!(with(crate::mariadb::SPEC.default_creation[0], g).is_ok());
    }

    #[test]
    fn usernames_fit_and_are_recognised() {
        let u = UsernameTemplate::parse(DEFAULT_USERNAME_TEMPLATE, &SPEC).unwrap();
        let name = u.render_with(
            "Billing-Deployer.v2-with-a-very-long-name",
            "read",
            "abcdefghij",
        );
        assert_eq!(name.len(), 30);
        assert_eq!(name, "mayfly_billing_depl_abcdefghij");
        assert!(u.accepts(&name));
        let g = u.generate("svc", "read").unwrap();
        assert!(
            u.accepts(&g) && g.len() == "mayfly_svc_".len() + RAND_LEN,
            "{g}"
        );
        assert_ne!(g, u.generate("svc", "read").unwrap());
        assert!(!u.accepts("other_x"));
        assert!(!u.accepts("mayfly_x\"; drop"));
        let state = |n: &str| serde_json::json!({ "username": n });
        assert!(username_from_state(&state("other_abc"), &u, StateUse::Fresh).is_err());
        assert!(username_from_state(&state("other_abc"), &u, StateUse::Existing).is_ok());
        assert!(username_from_state(&state("x\"y"), &u, StateUse::Existing).is_err());
        assert!(username_from_state(&serde_json::Value::Null, &u, StateUse::Existing).is_err());
        let a = UsernameTemplate::parse("mf_{{action}}_{{identity}}_{{rand}}", &SPEC).unwrap();
        let n = a.render_with("identity-that-is-long", "read", "0123456789");
        assert_eq!(n.len(), 30);
        assert!(n.starts_with("mf_read_identi"), "{n}");
    }

    #[test]
    fn passwords_are_alphanumeric_and_distinct() {
        let a = generate_password(32).unwrap();
        let b = generate_password(32).unwrap();
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose(), b.expose());
        // every character class shows up over enough draws (no truncated alphabet)
        let many = generate_password(128).unwrap();
        assert!(many.expose().chars().any(|c| c.is_ascii_uppercase()));
        assert!(many.expose().chars().any(|c| c.is_ascii_digit()));
    }

    struct FixedLedger(BTreeMap<String, Recorded>);

    #[async_trait::async_trait]
    impl Ledger for FixedLedger {
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

    #[tokio::test]
    async fn only_recorded_ended_and_marked_accounts_are_removable() {
        let ledger = FixedLedger(BTreeMap::from([
            ("mf_live".to_string(), Recorded::Live),
            ("mf_ended".to_string(), Recorded::Ended),
            ("mf_ended_unmarked".to_string(), Recorded::Ended),
        ]));
        let c = |name: &str, marked| Candidate {
            name: name.into(),
            marked,
        };
        let mut report = ReconcileReport::default();
        let remove = removable(
            &ledger,
            vec![
                c("mf_live", true),
                c("mf_ended", true),
                c("mf_ended_unmarked", false),
                c("mf_by_hand", true),
                c("mf_other_target", false),
            ],
            &mut report,
        )
        .await
        .unwrap();
        assert_eq!(remove, ["mf_ended"]);
        assert_eq!(report.found, 5);
        assert_eq!(
            report.unknown,
            ["mf_ended_unmarked", "mf_by_hand", "mf_other_target"]
        );
    }

    #[test]
    fn expiration_format() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
            + time::Duration::milliseconds(500);
        assert_eq!(format_expiration(t).unwrap(), "2023-11-14T22:13:20Z");
    }

    fn json(s: &str) -> serde_json::Value {
        serde_json::from_str(s).unwrap()
    }
}
