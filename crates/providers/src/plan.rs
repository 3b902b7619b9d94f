//! The engine-neutral half of an account-per-lease provider: the write-ahead plan (a
//! username chosen before anything exists on the target), username templates, passwords,
//! and which prefixed accounts reconciliation may remove. Nothing here knows SQL; the
//! database providers' settings and statements are in [`crate::common`].

use std::collections::BTreeMap;

use mayfly_core::provider::{Ledger, ProviderError, ReconcileReport, Recorded};
use mayfly_core::secret::{random_bytes, SecretString};

use crate::template::{Piece, Template, Values, Var};

/// The key of the plan (and of the lease's provider state) that names the account.
pub const LIVE_KEY: &str = "username";

/// Random characters in a username's `{{rand}}`: 36^10 ≈ 2^51, so two leases of the same
/// identity never collide in practice (a collision fails `CREATE`, it never shares a user).
pub const RAND_LEN: usize = 10;
pub const DEFAULT_USERNAME_TEMPLATE: &str = "mayfly_{{identity}}_{{rand}}";
pub const DEFAULT_PASSWORD_LENGTH: usize = 32;
pub const MIN_PASSWORD_LENGTH: usize = 16;
pub const MAX_PASSWORD_LENGTH: usize = 128;

/// What a target system allows in account names.
#[derive(Clone, Copy, Debug)]
pub struct NameRules {
    /// The credential kind, for messages.
    pub kind: &'static str,
    /// Longest name the system accepts, in bytes (names are ASCII).
    pub max_len: usize,
    /// Name prefixes the system reserves (`pg_` on PostgreSQL).
    pub reserved_prefixes: &'static [&'static str],
}

fn bad(msg: impl Into<String>) -> ProviderError {
    ProviderError::BadSettings(msg.into())
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
    pub fn parse(text: &str, rules: &NameRules) -> Result<UsernameTemplate, ProviderError> {
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
        if let Some(r) = rules
            .reserved_prefixes
            .iter()
            .find(|r| prefix.starts_with(*r))
        {
            return Err(bad(format!(
                "username_template must not start with {r:?} (reserved by {})",
                rules.kind
            )));
        }
        if fixed > rules.max_len {
            return Err(bad(format!(
                "username_template's fixed part is {fixed} characters; {} allows {}",
                rules.kind, rules.max_len
            )));
        }
        Ok(UsernameTemplate {
            template,
            prefix,
            max_len: rules.max_len,
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

    pub(crate) fn render_with(&self, identity: &str, action: &str, rand: &str) -> String {
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

/// The write-ahead plan of a provider that creates one account per lease: the username
/// the credential will have, chosen before anything exists on the target, recorded under
/// [`LIVE_KEY`] (the providers' `live_key`).
pub fn plan_username(
    template: &UsernameTemplate,
    request: &mayfly_core::provider::IssueRequest<'_>,
) -> Result<serde_json::Value, ProviderError> {
    let name = template.generate(&request.identity.id, &request.grant.action)?;
    Ok(serde_json::json!({ LIVE_KEY: name }))
}

/// The account name a lease recorded ([`username_from_state`] for an existing one): what
/// revoke, containment and the check after revocation act on.
pub fn lease_username(
    lease: &mayfly_core::model::Lease,
    template: &UsernameTemplate,
) -> Result<String, ProviderError> {
    username_from_state(&lease.provider_state, template, StateUse::Existing)
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
        .get(LIVE_KEY)
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

/// The settings every account-per-lease kind shares (the SQL kinds' [`crate::common::Config`],
/// Redis, RabbitMQ), checked in one place.
#[derive(Debug)]
pub struct Basics {
    pub username: UsernameTemplate,
    pub password_length: usize,
    pub timeout: std::time::Duration,
}

impl Basics {
    /// Checks the shared keys: username template, password length, timeout, and the
    /// `host`/`port` overrides handed to the requester.
    pub fn check(
        rules: &NameRules,
        username_template: Option<&str>,
        password_length: Option<usize>,
        timeout_seconds: Option<u64>,
        host: Option<&str>,
        port: Option<u16>,
    ) -> Result<Basics, ProviderError> {
        use crate::common::{DEFAULT_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS};
        let username = UsernameTemplate::parse(
            username_template.unwrap_or(DEFAULT_USERNAME_TEMPLATE),
            rules,
        )?;
        let password_length = password_length.unwrap_or(DEFAULT_PASSWORD_LENGTH);
        if !(MIN_PASSWORD_LENGTH..=MAX_PASSWORD_LENGTH).contains(&password_length) {
            return Err(bad(format!(
                "password_length must be between {MIN_PASSWORD_LENGTH} and {MAX_PASSWORD_LENGTH}"
            )));
        }
        let timeout_seconds = timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
            return Err(bad(format!(
                "timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}"
            )));
        }
        // The overrides end up in a URL handed to the requester; keep them plain.
        if let Some(h) = host {
            if h.is_empty()
                || !h
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            {
                return Err(bad("host must be a hostname or IP address"));
            }
        }
        if port == Some(0) {
            return Err(bad("port must not be 0"));
        }
        Ok(Basics {
            username,
            password_length,
            timeout: std::time::Duration::from_secs(timeout_seconds),
        })
    }
}

/// Checks that `grants` (the keys of a target's per-action settings) covers exactly the
/// target's actions.
pub fn check_grant_actions<'a>(
    target: &mayfly_core::model::Target,
    grants: impl Iterator<Item = &'a String> + Clone,
) -> Result<(), ProviderError> {
    for action in grants.clone() {
        if !target.actions.iter().any(|a| a == action) {
            return Err(bad(format!(
                "grants names action {action:?}, which the target does not offer"
            )));
        }
    }
    for action in &target.actions {
        if !grants.clone().any(|g| g == action) {
            return Err(bad(format!("grants has no entry for action {action:?}")));
        }
    }
    Ok(())
}
