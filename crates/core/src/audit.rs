//! The audit chain: one append-only, hash-chained log of everything that happens to access.
//!
//! Each entry is canonical JSON (keys sorted, no insignificant whitespace) holding its
//! sequence number and the SHA-256 of the previous entry; its own hash covers all of it.
//! Editing, deleting, inserting or reordering any entry breaks the chain at that entry,
//! and [`ChainVerifier`] names the first place it breaks. The copies of body fields that a
//! store keeps in columns of their own, for filtered listings, are held to the body as
//! well ([`AuditColumn`]). Entries never carry secrets.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened. Stable strings: consumers filter on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum AuditKind {
    #[serde(rename = "grant.requested")]
    GrantRequested,
    #[serde(rename = "grant.decided")]
    GrantDecided,
    #[serde(rename = "grant.rejected")]
    GrantRejected,
    #[serde(rename = "grant.failed")]
    GrantFailed,
    #[serde(rename = "lease.issued")]
    LeaseIssued,
    #[serde(rename = "lease.renewed")]
    LeaseRenewed,
    #[serde(rename = "lease.renewal_rejected")]
    LeaseRenewalRejected,
    #[serde(rename = "lease.revoking")]
    LeaseRevoking,
    #[serde(rename = "lease.revoke_failed")]
    LeaseRevokeFailed,
    #[serde(rename = "lease.revoked")]
    LeaseRevoked,
    #[serde(rename = "lease.expired")]
    LeaseExpired,
    #[serde(rename = "identity.created")]
    IdentityCreated,
    #[serde(rename = "identity.disabled")]
    IdentityDisabled,
    #[serde(rename = "identity.enabled")]
    IdentityEnabled,
    #[serde(rename = "target.created")]
    TargetCreated,
    #[serde(rename = "auth.failed")]
    AuthFailed,
    #[serde(rename = "key.created")]
    KeyCreated,
    #[serde(rename = "key.rotated")]
    KeyRotated,
    #[serde(rename = "token.introspected")]
    TokenIntrospected,
    #[serde(rename = "policy.reloaded")]
    PolicyReloaded,
    #[serde(rename = "policy.rejected")]
    PolicyRejected,
    #[serde(rename = "target.reconciled")]
    TargetReconciled,
    #[serde(rename = "target.root_rotated")]
    TargetRootRotated,
    #[serde(rename = "operator.token_created")]
    OperatorTokenCreated,
    #[serde(rename = "operator.token_revoked")]
    OperatorTokenRevoked,
    /// A token minted offline (`mayfly store recover-operator`) for a broker whose
    /// operator tokens were lost.
    #[serde(rename = "operator.recovered")]
    OperatorRecovered,
    #[serde(rename = "target.updated")]
    TargetUpdated,
    #[serde(rename = "target.deleted")]
    TargetDeleted,
    #[serde(rename = "identity.updated")]
    IdentityUpdated,
    #[serde(rename = "identity.deleted")]
    IdentityDeleted,
    #[serde(rename = "task.opened")]
    TaskOpened,
    #[serde(rename = "task.ended")]
    TaskEnded,
    /// A grant waits for approval: how many, from whom, until when.
    #[serde(rename = "approval.requested")]
    ApprovalRequested,
    /// One approver approved (with a comment); `detail.complete` on the last one needed.
    #[serde(rename = "approval.granted")]
    ApprovalGranted,
    /// An approver refused the request, which ends it.
    #[serde(rename = "approval.denied")]
    ApprovalDenied,
    /// Nobody approved in time: the request ended `approval_timeout`.
    #[serde(rename = "approval.expired")]
    ApprovalExpired,
    /// Emergency access issued without approval; a review item is opened.
    #[serde(rename = "grant.break_glass")]
    GrantBreakGlass,
    /// An approver closed the review of a break-glass use.
    #[serde(rename = "review.closed")]
    ReviewClosed,
    /// A credential whose removal the target refuses was made unusable (no logins, sessions
    /// ended); its removal keeps being retried.
    #[serde(rename = "lease.contained")]
    LeaseContained,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        // Must agree with the serde renames; a unit test checks every variant.
        match self {
            AuditKind::GrantRequested => "grant.requested",
            AuditKind::GrantDecided => "grant.decided",
            AuditKind::GrantRejected => "grant.rejected",
            AuditKind::GrantFailed => "grant.failed",
            AuditKind::LeaseIssued => "lease.issued",
            AuditKind::LeaseRenewed => "lease.renewed",
            AuditKind::LeaseRenewalRejected => "lease.renewal_rejected",
            AuditKind::LeaseRevoking => "lease.revoking",
            AuditKind::LeaseRevokeFailed => "lease.revoke_failed",
            AuditKind::LeaseRevoked => "lease.revoked",
            AuditKind::LeaseExpired => "lease.expired",
            AuditKind::IdentityCreated => "identity.created",
            AuditKind::IdentityDisabled => "identity.disabled",
            AuditKind::IdentityEnabled => "identity.enabled",
            AuditKind::TargetCreated => "target.created",
            AuditKind::AuthFailed => "auth.failed",
            AuditKind::KeyCreated => "key.created",
            AuditKind::KeyRotated => "key.rotated",
            AuditKind::TokenIntrospected => "token.introspected",
            AuditKind::PolicyReloaded => "policy.reloaded",
            AuditKind::PolicyRejected => "policy.rejected",
            AuditKind::TargetReconciled => "target.reconciled",
            AuditKind::TargetRootRotated => "target.root_rotated",
            AuditKind::OperatorTokenCreated => "operator.token_created",
            AuditKind::OperatorTokenRevoked => "operator.token_revoked",
            AuditKind::OperatorRecovered => "operator.recovered",
            AuditKind::TargetUpdated => "target.updated",
            AuditKind::TargetDeleted => "target.deleted",
            AuditKind::IdentityUpdated => "identity.updated",
            AuditKind::IdentityDeleted => "identity.deleted",
            AuditKind::TaskOpened => "task.opened",
            AuditKind::TaskEnded => "task.ended",
            AuditKind::ApprovalRequested => "approval.requested",
            AuditKind::ApprovalGranted => "approval.granted",
            AuditKind::ApprovalDenied => "approval.denied",
            AuditKind::ApprovalExpired => "approval.expired",
            AuditKind::GrantBreakGlass => "grant.break_glass",
            AuditKind::ReviewClosed => "review.closed",
            AuditKind::LeaseContained => "lease.contained",
        }
    }
}

/// An event before the store places it in the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub kind: AuditKind,
    /// Who caused it: `operator`, `identity:<id>`, `system:expiry`, …
    pub actor: String,
    pub identity: Option<String>,
    pub owner: Option<String>,
    pub target: Option<String>,
    pub task: Option<String>,
    pub grant_id: Option<Uuid>,
    pub lease_id: Option<Uuid>,
    /// Event-specific facts (decision, reason, TTLs). Never a secret.
    pub detail: serde_json::Value,
}

impl AuditDraft {
    pub fn new(kind: AuditKind, actor: impl Into<String>) -> Self {
        AuditDraft {
            kind,
            actor: actor.into(),
            identity: None,
            owner: None,
            target: None,
            task: None,
            grant_id: None,
            lease_id: None,
            detail: serde_json::Value::Null,
        }
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// Fills the who/what/why fields from a grant.
    pub fn for_grant(mut self, g: &crate::model::Grant) -> Self {
        self.identity = Some(g.identity.clone());
        self.owner = Some(g.owner.clone());
        self.target = Some(g.target.clone());
        self.task = Some(g.task.clone());
        self.grant_id = Some(g.id);
        self
    }

    /// Fills the fields from a lease; `owner` is left as set.
    pub fn for_lease(mut self, l: &crate::model::Lease) -> Self {
        self.identity = Some(l.identity.clone());
        self.target = Some(l.target.clone());
        self.task = Some(l.task.clone());
        self.grant_id = Some(l.grant_id);
        self.lease_id = Some(l.id);
        self
    }

    /// The draft with every string held to the chain's limits (see [`bounds`]), so that no
    /// caller, however large its input, can make one entry large. Every way into the
    /// chain applies it; a draft already within bounds is returned as it is.
    pub fn bounded(mut self) -> Self {
        use bounds::*;
        self.actor = cap(self.actor, ACTOR_CHARS);
        self.identity = self.identity.map(|v| cap(v, NAME_CHARS));
        self.owner = self.owner.map(|v| cap(v, NAME_CHARS));
        self.target = self.target.map(|v| cap(v, NAME_CHARS));
        self.task = self.task.map(|v| cap(v, TASK_CHARS));
        if !detail_within(&self.detail) {
            let mut budget = DETAIL_BYTES;
            self.detail = bound_detail(self.detail, 0, &mut budget);
        }
        self
    }

    /// Places the draft in the chain after `prev_hash`, computing its hash.
    pub fn seal(self, seq: u64, at: OffsetDateTime, prev_hash: &str) -> AuditEvent {
        let draft = self.bounded();
        let mut event = AuditEvent {
            seq,
            at,
            kind: draft.kind,
            actor: draft.actor,
            identity: draft.identity,
            owner: draft.owner,
            target: draft.target,
            task: draft.task,
            grant_id: draft.grant_id,
            lease_id: draft.lease_id,
            detail: draft.detail,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        event.hash = hash_entry(&event.canonical_body());
        event
    }
}

/// Size limits of one audit entry. Strings past a limit keep their start and say how much
/// was cut, so an entry stays readable and the chain stays small whatever a caller sends:
/// an unauthenticated 65,000-character path once made a 65 KB entry.
pub mod bounds {
    use serde_json::Value;

    /// `actor` (`identity:<id>`, `operator:<name>`, `system:<job>`).
    pub const ACTOR_CHARS: usize = 160;
    /// `identity`, `owner`, `target`: names are at most 64 characters when valid; a
    /// refused request may name a longer one, kept recognisably.
    pub const NAME_CHARS: usize = 128;
    /// `task`.
    pub const TASK_CHARS: usize = 256;
    /// One string inside `detail`.
    pub const DETAIL_STRING_CHARS: usize = 1024;
    /// One key inside `detail`.
    pub const KEY_CHARS: usize = 128;
    /// Items of one array or members of one object inside `detail`.
    pub const DETAIL_ITEMS: usize = 64;
    /// Nesting inside `detail`.
    pub const DETAIL_DEPTH: usize = 8;
    /// All strings (keys and values) of `detail` together.
    pub const DETAIL_BYTES: usize = 16 * 1024;

    /// `value` cut to `max` characters, marked with how many bytes were dropped.
    pub fn cap(value: String, max: usize) -> String {
        match value.char_indices().nth(max) {
            None => value,
            Some((end, _)) => format!("{}…[+{} bytes]", &value[..end], value.len() - end),
        }
    }

    /// Whether `detail` is already within every limit (the common case: no allocation).
    pub(super) fn detail_within(detail: &Value) -> bool {
        fn spend(budget: &mut usize, n: usize) -> bool {
            let ok = n <= *budget;
            *budget = budget.saturating_sub(n);
            ok
        }
        fn walk(v: &Value, depth: usize, budget: &mut usize) -> bool {
            match v {
                Value::String(s) => s.len() <= DETAIL_STRING_CHARS && spend(budget, s.len()),
                Value::Array(a) => {
                    depth < DETAIL_DEPTH
                        && a.len() <= DETAIL_ITEMS
                        && a.iter().all(|i| walk(i, depth + 1, budget))
                }
                Value::Object(m) => {
                    depth < DETAIL_DEPTH
                        && m.len() <= DETAIL_ITEMS
                        && m.iter().all(|(k, i)| {
                            k.len() <= KEY_CHARS
                                && spend(budget, k.len())
                                && walk(i, depth + 1, budget)
                        })
                }
                _ => true,
            }
        }
        let mut budget = DETAIL_BYTES;
        walk(detail, 0, &mut budget)
    }

    /// `detail` within the limits: long strings cut, long arrays and objects shortened
    /// (with a `"…"` member saying how many were dropped), deep nesting replaced by a
    /// marker, and once the byte budget is spent the remaining strings are emptied.
    pub(super) fn bound_detail(v: Value, depth: usize, budget: &mut usize) -> Value {
        let string = |s: String, budget: &mut usize| {
            let limit = DETAIL_STRING_CHARS.min(*budget);
            let s = cap(s, limit);
            *budget = budget.saturating_sub(s.len());
            s
        };
        match v {
            Value::String(s) => Value::String(string(s, budget)),
            Value::Array(_) | Value::Object(_) if depth >= DETAIL_DEPTH => {
                Value::String("…[nested too deep]".into())
            }
            Value::Array(items) => {
                let total = items.len();
                let mut out: Vec<Value> = items
                    .into_iter()
                    .take(DETAIL_ITEMS)
                    .map(|i| bound_detail(i, depth + 1, budget))
                    .collect();
                if total > DETAIL_ITEMS {
                    out.push(Value::String(format!("…[+{} items]", total - DETAIL_ITEMS)));
                }
                Value::Array(out)
            }
            Value::Object(map) => {
                let total = map.len();
                let mut out = serde_json::Map::new();
                for (k, i) in map.into_iter().take(DETAIL_ITEMS) {
                    // Keys name what a value is; they are cut by length only, never
                    // emptied by the budget.
                    let k = cap(k, KEY_CHARS);
                    *budget = budget.saturating_sub(k.len());
                    out.insert(k, bound_detail(i, depth + 1, budget));
                }
                if total > DETAIL_ITEMS {
                    out.insert(
                        "…".into(),
                        Value::String(format!("+{} members", total - DETAIL_ITEMS)),
                    );
                }
                Value::Object(out)
            }
            other => other,
        }
    }
}

/// An entry of the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    pub kind: AuditKind,
    pub actor: String,
    pub identity: Option<String>,
    pub owner: Option<String>,
    pub target: Option<String>,
    pub task: Option<String>,
    pub grant_id: Option<Uuid>,
    pub lease_id: Option<Uuid>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub prev_hash: String,
    /// SHA-256 (hex) of the canonical body, which includes `prev_hash` but not this field.
    pub hash: String,
}

impl AuditEvent {
    /// The canonical JSON text that is hashed and stored: every field but `hash`.
    pub fn canonical_body(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut value {
            map.remove("hash");
        }
        canonical_json(&value)
    }

    /// Rebuilds an event from its stored canonical body and hash.
    pub fn from_stored(body: &str, hash: &str) -> Result<AuditEvent, serde_json::Error> {
        let mut value: serde_json::Value = serde_json::from_str(body)?;
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("hash".into(), serde_json::Value::String(hash.to_string()));
        }
        serde_json::from_value(value)
    }
}

/// SHA-256 of a canonical body, lowercase hex.
pub fn hash_entry(canonical_body: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical_body.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `stored` is [`hash_entry`] of `canonical_body`, without building the string:
/// the verifier does this once per entry over millions of entries.
fn hash_matches(canonical_body: &[u8], stored: &[u8]) -> bool {
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical_body);
    stored.len() == 64
        && digest
            .as_ref()
            .iter()
            .zip(stored.chunks_exact(2))
            .all(|(b, pair)| {
                pair[0] == HEX[usize::from(b >> 4)] && pair[1] == HEX[usize::from(b & 0xf)]
            })
}

/// The top-level members of a canonical body that follow `detail`, as JSON text (strings
/// with their quotes), read backwards from the body's end.
///
/// Keys are sorted, so `detail` (the only member that can nest objects, and so hold keys
/// of the same names) comes before all of these, and they hold only strings, numbers and
/// `null`. Walking back over them needs no parser: a string opens at the first quote
/// before its closing one that is not escaped (not preceded by an odd number of
/// backslashes). The walk stops at `grant_id` and never reads `detail`. One pass of
/// `memrchr` finds every field the verifier needs; searching the body for each key cost
/// as much as hashing it.
#[derive(Default)]
struct Tail<'a> {
    grant_id: Option<&'a [u8]>,
    identity: Option<&'a [u8]>,
    kind: Option<&'a [u8]>,
    prev_hash: Option<&'a [u8]>,
    seq: Option<&'a [u8]>,
    task: Option<&'a [u8]>,
}

impl<'a> Tail<'a> {
    fn read(body: &'a [u8]) -> Option<Tail<'a>> {
        let mut tail = Tail::default();
        // target, owner and lease_id.
        let mut unused = None;
        // `end` is one past the last byte of the member being read.
        let mut end = body.len().checked_sub(1)?;
        if body[end] != b'}' {
            return None;
        }
        loop {
            let start = value_start(body, end)?;
            let value = &body[start..end];
            let key_end = start.checked_sub(2)?;
            if body.get(key_end..start) != Some(b"\":") {
                return None;
            }
            // Keys are a few letters: a plain loop beats setting up a vector search.
            let key_start = body[..key_end].iter().rposition(|&b| b == b'"')?;
            let slot = match &body[key_start + 1..key_end] {
                b"task" => &mut tail.task,
                b"seq" => &mut tail.seq,
                b"prev_hash" => &mut tail.prev_hash,
                b"kind" => &mut tail.kind,
                b"identity" => &mut tail.identity,
                b"grant_id" => &mut tail.grant_id,
                _ => &mut unused,
            };
            slot.get_or_insert(value);
            if tail.grant_id.is_some() {
                return Some(tail);
            }
            end = key_start.checked_sub(1)?;
            if body[end] != b',' {
                return None;
            }
        }
    }

    /// The entry's own `seq` and the text of the `prev_hash` it links to (not checked to
    /// be a hash: see [`is_hash`]).
    fn link(&self) -> Option<(u64, &'a [u8])> {
        let prev = self.prev_hash?.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        let seq = std::str::from_utf8(self.seq?).ok()?;
        if !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((seq.parse().ok()?, prev))
    }
}

/// Whether `text` reads as a SHA-256 in hex.
fn is_hash(text: &[u8]) -> bool {
    text.len() == 64 && text.iter().all(u8::is_ascii_hexdigit)
}

/// Where the scalar value that ends just before `end` starts.
fn value_start(body: &[u8], end: usize) -> Option<usize> {
    let last = end.checked_sub(1)?;
    if body[last] != b'"' {
        // `null` or a number: no quote, colon or comma inside.
        return memchr::memrchr(b':', &body[..last]).map(|colon| colon + 1);
    }
    let mut before = last;
    loop {
        let quote = memchr::memrchr(b'"', &body[..before])?;
        let backslashes = body[..quote]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            return Some(quote);
        }
        before = quote;
    }
}

/// The top-level `seq` and `prev_hash` of a canonical body, read from its text.
#[cfg(test)]
fn chain_link(body: &[u8]) -> Option<(u64, &[u8])> {
    Tail::read(body)?.link().filter(|(_, prev)| is_hash(prev))
}

/// The first column (in [`AuditColumn`] order) whose stored value is not the body's.
///
/// String columns are compared with the body's JSON text rather than decoded from it: a
/// value without quotes, backslashes or control characters is its own escaped form, so
/// the common case is a plain byte comparison.
fn edited_column(
    body: &[u8],
    tail: &Tail,
    columns: &StoredColumns,
    escaped: &mut Vec<u8>,
) -> Option<AuditColumn> {
    if body_at_ms(body) != Some(columns.at_ms) {
        return Some(AuditColumn::AtMs);
    }
    [
        (AuditColumn::Kind, tail.kind, Some(columns.kind)),
        (AuditColumn::Identity, tail.identity, columns.identity),
        (AuditColumn::Task, tail.task, columns.task),
        (AuditColumn::GrantId, tail.grant_id, columns.grant_id),
    ]
    .into_iter()
    .find(|(_, value, stored)| !value.is_some_and(|v| holds(v, *stored, escaped)))
    .map(|(column, _, _)| column)
}

/// Whether `value`, one JSON value, is `stored`: `null` for none, else the string
/// `stored` escaped.
fn holds(value: &[u8], stored: Option<&[u8]>, escaped: &mut Vec<u8>) -> bool {
    match stored {
        None => value == b"null",
        Some(raw) if raw.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\') => {
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                == Some(raw)
        }
        Some(raw) => {
            escaped.clear();
            let Ok(text) = std::str::from_utf8(raw) else {
                return false;
            };
            serde_json::to_writer(&mut *escaped, text).is_ok() && value == escaped.as_slice()
        }
    }
}

/// The body's `at` in Unix milliseconds. Only `actor`, a string, precedes it, so the first
/// `"at":"` in the body is the member.
fn body_at_ms(body: &[u8]) -> Option<i64> {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    // Built once: constructing a searcher per entry cost more than the search.
    static AT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"at\":\""));
    let text = body.get(AT.find(body)? + AT.needle().len()..)?;
    let text = &text[..memchr::memchr(b'"', text)?];
    utc_ms(text).or_else(|| {
        let at = OffsetDateTime::parse(
            std::str::from_utf8(text).ok()?,
            &time::format_description::well_known::Rfc3339,
        );
        at.ok().map(crate::to_unix_ms)
    })
}

/// [`crate::to_unix_ms`] of `YYYY-MM-DDTHH:MM:SS[.fraction]Z` from 1970 on, the form `at`
/// is written in, without a general RFC 3339 parser (which took longer than the hash).
/// `None` for anything else, which the caller gives to the general parser.
fn utc_ms(text: &[u8]) -> Option<i64> {
    let num = |from: usize, to: usize| -> Option<i64> {
        text.get(from..to)?.iter().try_fold(0i64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| text.get(i) != Some(&c)) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let rest = &text[19..];
    let fraction = match rest.strip_prefix(b".") {
        Some(f) => f.strip_suffix(b"Z")?,
        None if rest == b"Z" => b"",
        None => return None,
    };
    if fraction.len() > 9 || (rest.len() > 1 && fraction.is_empty()) {
        return None;
    }
    if !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let millis = (0..3).fold(0, |n, i| {
        n * 10 + fraction.get(i).map_or(0, |&b| i64::from(b - b'0'))
    });
    // Days since the epoch of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let (era, year_of_era) = (y.div_euclid(400), y.rem_euclid(400));
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Serialises JSON with object keys sorted at every level and no extra whitespace, so the
/// same event always hashes the same, whatever map type produced it.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Where and how the chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", tag = "problem")]
pub enum ChainBreak {
    /// The entry's content no longer matches its hash.
    Edited { seq: u64 },
    /// Entries are missing before this one (sequence jumps ahead).
    Deleted { seq: u64, missing_from: u64 },
    /// An entry appears that the chain did not have here (sequence goes back or repeats,
    /// or the link to the previous entry does not match).
    InsertedOrReordered { seq: u64 },
    /// The stored body cannot be read back.
    Unreadable { seq: u64 },
    /// The last entry does not match the recorded chain head: entries were cut off the end.
    Truncated { head_seq: u64, last_seq: u64 },
    /// A column the store keeps beside the body for filtering no longer holds the body's
    /// value: the entry was re-filed (say, hidden from `audit list --task`) without
    /// touching what the hash covers.
    ColumnEdited { seq: u64, column: AuditColumn },
    /// The entry a signed checkpoint covers no longer has the hash the checkpoint signed
    /// (or is gone): the chain up to it was rewritten, even if it links up again.
    CheckpointMismatch { seq: u64 },
}

/// The columns a store keeps beside an entry's hashed body, copied from it so that
/// filtered listings can use an index. The hash does not cover them, so the verifier
/// compares each with the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuditColumn {
    AtMs,
    Kind,
    Identity,
    Task,
    GrantId,
}

impl AuditColumn {
    /// The column's name in both stores' schemas.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditColumn::AtMs => "at_ms",
            AuditColumn::Kind => "kind",
            AuditColumn::Identity => "identity",
            AuditColumn::Task => "task",
            AuditColumn::GrantId => "grant_id",
        }
    }
}

impl std::fmt::Display for AuditColumn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored row's copies of body fields (see [`AuditColumn`]), as the store read them:
/// bytes, because a tampered column need not be valid text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredColumns<'a> {
    pub at_ms: i64,
    pub kind: &'a [u8],
    pub identity: Option<&'a [u8]>,
    pub task: Option<&'a [u8]>,
    pub grant_id: Option<&'a [u8]>,
}

impl ChainBreak {
    /// The first entry the break puts in doubt: every entry before it is intact.
    pub fn first_bad_seq(&self) -> u64 {
        match self {
            ChainBreak::Edited { seq }
            | ChainBreak::InsertedOrReordered { seq }
            | ChainBreak::Unreadable { seq }
            | ChainBreak::ColumnEdited { seq, .. } => *seq,
            ChainBreak::Deleted { missing_from, .. } => *missing_from,
            ChainBreak::Truncated { last_seq, .. } => last_seq + 1,
            // Some entry up to and including it was rewritten; which one the signed head
            // alone cannot tell.
            ChainBreak::CheckpointMismatch { .. } => 1,
        }
    }
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainBreak::Edited { seq } => write!(f, "entry {seq} was edited (hash mismatch)"),
            ChainBreak::Deleted { seq, missing_from } => {
                write!(f, "entries {missing_from}..{} were deleted (next present is {seq})", seq - 1)
            }
            ChainBreak::InsertedOrReordered { seq } => write!(
                f,
                "entry {seq} was inserted or reordered (it does not link to the entry before it)"
            ),
            ChainBreak::Unreadable { seq } => write!(f, "entry {seq} cannot be parsed"),
            ChainBreak::Truncated { head_seq, last_seq } => write!(
                f,
                "chain ends at {last_seq} but its head records {head_seq}: entries were removed from the end"
            ),
            ChainBreak::ColumnEdited { seq, column } => write!(
                f,
                "entry {seq} was re-filed: its {column} column no longer matches the hashed entry"
            ),
            ChainBreak::CheckpointMismatch { seq } => write!(
                f,
                "entry {seq} does not have the hash the checkpoint signed: the chain up to it was rewritten"
            ),
        }
    }
}

/// Result of walking the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyReport {
    pub entries: u64,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    /// The first break found; `None` means the chain is intact.
    pub first_break: Option<ChainBreak>,
    /// The signed checkpoint the chain was checked against, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointCovered>,
}

/// What a verification against a signed checkpoint found (see [`Checkpoint`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointCovered {
    /// The entry the checkpoint signed.
    pub seq: u64,
    pub hash: String,
    pub kid: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// Whether the chain holds that entry with that hash (and so, by its links, every
    /// entry before it as it was when the checkpoint was signed).
    pub covered: bool,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.first_break.is_none()
    }
}

/// Streaming verifier: feed stored rows in `seq` order, in constant memory.
pub struct ChainVerifier {
    expected_seq: u64,
    prev_hash: Vec<u8>,
    entries: u64,
    first_break: Option<ChainBreak>,
    /// Reused to JSON-escape the rare column value that needs it, so no entry allocates.
    escaped: Vec<u8>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.as_bytes().to_vec(),
            entries: 0,
            first_break: None,
            escaped: Vec::new(),
        }
    }

    /// Whether a break has been found (callers may stop reading).
    pub fn broken(&self) -> bool {
        self.first_break.is_some()
    }

    /// Checks one stored row: its `seq` column, canonical body, stored hash, and the
    /// columns copied from the body.
    pub fn push(&mut self, row_seq: u64, body: &str, stored_hash: &str, columns: &StoredColumns) {
        self.push_bytes(row_seq, body.as_bytes(), stored_hash.as_bytes(), columns);
    }

    /// [`ChainVerifier::push`] for rows read as bytes: no UTF-8 check is needed, since the
    /// hash covers every byte and a stored hash that is not hex text cannot match.
    pub fn push_bytes(
        &mut self,
        row_seq: u64,
        body: &[u8],
        stored_hash: &[u8],
        columns: &StoredColumns,
    ) {
        if self.first_break.is_some() {
            return;
        }
        self.entries += 1;
        let brk = self.check(row_seq, body, stored_hash, columns);
        // Continue from what the row claims, so one break is reported, not a cascade.
        self.expected_seq = row_seq + 1;
        self.prev_hash.clear();
        self.prev_hash.extend_from_slice(stored_hash);
        self.first_break = brk;
    }

    fn check(
        &mut self,
        row_seq: u64,
        body: &[u8],
        stored_hash: &[u8],
        columns: &StoredColumns,
    ) -> Option<ChainBreak> {
        if row_seq > self.expected_seq {
            return Some(ChainBreak::Deleted {
                seq: row_seq,
                missing_from: self.expected_seq,
            });
        }
        if row_seq < self.expected_seq {
            return Some(ChainBreak::InsertedOrReordered { seq: row_seq });
        }
        if !hash_matches(body, stored_hash) {
            return Some(ChainBreak::Edited { seq: row_seq });
        }
        // The hash covers the body, so reading the fields out of the text is as sound as
        // parsing it, and an order of magnitude cheaper over millions of rows.
        let tail = Tail::read(body);
        let Some((body_seq, body_prev)) = tail.as_ref().and_then(Tail::link) else {
            return Some(ChainBreak::Unreadable { seq: row_seq });
        };
        if body_seq != row_seq || body_prev != self.prev_hash {
            // Only on the way out: `self.prev_hash` is a hash the previous entry's own
            // matched, so a `prev_hash` equal to it is one too, and checking every
            // entry's digit by digit cost a branch miss per byte.
            if !is_hash(body_prev) {
                return Some(ChainBreak::Unreadable { seq: row_seq });
            }
            return Some(ChainBreak::InsertedOrReordered { seq: row_seq });
        }
        // Only now, with a body the chain vouches for, are the columns held to it.
        let tail = tail?;
        edited_column(body, &tail, columns, &mut self.escaped).map(|column| {
            ChainBreak::ColumnEdited {
                seq: row_seq,
                column,
            }
        })
    }

    /// Finishes the walk, comparing the last entry with the recorded chain head.
    pub fn finish(self, head: Option<(u64, String)>) -> VerifyReport {
        let last_seq = (self.expected_seq > 1).then(|| self.expected_seq - 1);
        let mut first_break = self.first_break;
        if first_break.is_none() {
            if let Some((head_seq, head_hash)) = head {
                if Some(head_seq) != last_seq || head_hash.as_bytes() != self.prev_hash {
                    first_break = Some(ChainBreak::Truncated {
                        head_seq,
                        last_seq: last_seq.unwrap_or(0),
                    });
                }
            }
        }
        VerifyReport {
            entries: self.entries,
            last_hash: last_seq.map(|_| String::from_utf8_lossy(&self.prev_hash).into_owned()),
            last_seq,
            first_break,
            checkpoint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However large the input, one entry stays small; a small draft is left untouched.
    #[test]
    fn drafts_are_bounded_when_sealed() {
        let huge = "p".repeat(65_000);
        let mut draft = AuditDraft::new(AuditKind::AuthFailed, format!("identity:{huge}"))
            .detail(serde_json::json!({
                "path": huge,
                "list": (0..1000).collect::<Vec<_>>(),
                "deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}},
                "many": (0..500).map(|i| (format!("k{i}"), serde_json::json!("v".repeat(900)))).collect::<serde_json::Map<_, _>>(),
            }));
        draft.identity = Some(huge.clone());
        draft.task = Some(huge.clone());
        draft.target = Some(huge.clone());
        draft.owner = Some(huge.clone());
        let event = draft.seal(1, crate::now(), GENESIS_HASH);
        let body = event.canonical_body();
        assert!(body.len() < 24 * 1024, "entry is {} bytes", body.len());
        assert!(event
            .task
            .as_deref()
            .is_some_and(|t| t.starts_with("ppp") && t.ends_with("bytes]")));
        assert!(event.detail["path"]
            .as_str()
            .is_some_and(|p| p.contains("…[+")));
        assert_eq!(
            event.detail["list"].as_array().map(Vec::len),
            Some(bounds::DETAIL_ITEMS + 1)
        );
        assert_eq!(
            event.detail["deep"]["a"]["b"]["c"]["d"]["e"]["f"]["g"],
            "…[nested too deep]"
        );
        // Still a valid link: verifiable like any other entry.
        let mut v = ChainVerifier::new();
        let grant_id = event.grant_id.map(|g| g.to_string());
        let columns = StoredColumns {
            at_ms: crate::to_unix_ms(event.at),
            kind: event.kind.as_str().as_bytes(),
            identity: event.identity.as_deref().map(str::as_bytes),
            task: event.task.as_deref().map(str::as_bytes),
            grant_id: grant_id.as_deref().map(str::as_bytes),
        };
        v.push(1, &body, &event.hash, &columns);
        assert!(!v.broken());

        let small = AuditDraft::new(AuditKind::GrantRejected, "identity:ci")
            .detail(serde_json::json!({"reason": "ttl: must be greater than zero", "n": [1, 2]}));
        assert_eq!(small.clone().bounded(), small);
        // Multi-byte characters are cut on a character boundary.
        assert_eq!(bounds::cap("äöü".repeat(100), 2), "äö…[+596 bytes]");
    }

    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_string();
        let at = crate::now();
        (1..=n)
            .map(|seq| {
                let e = AuditDraft::new(AuditKind::GrantRequested, "operator")
                    .detail(serde_json::json!({"n": seq, "b": [1, {"z": 1, "a": 2}]}))
                    .seal(seq, at, &prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    /// A stored row: `seq`, body, hash, and the columns a store copies out of the body.
    type Row = (u64, String, String, Columns);

    #[derive(Clone, Debug)]
    struct Columns {
        at_ms: i64,
        kind: String,
        identity: Option<String>,
        task: Option<String>,
        grant_id: Option<String>,
    }

    impl Columns {
        fn of(e: &AuditEvent) -> Columns {
            Columns {
                at_ms: crate::to_unix_ms(e.at),
                kind: e.kind.as_str().into(),
                identity: e.identity.clone(),
                task: e.task.clone(),
                grant_id: e.grant_id.map(|g| g.to_string()),
            }
        }

        fn stored(&self) -> StoredColumns<'_> {
            StoredColumns {
                at_ms: self.at_ms,
                kind: self.kind.as_bytes(),
                identity: self.identity.as_deref().map(str::as_bytes),
                task: self.task.as_deref().map(str::as_bytes),
                grant_id: self.grant_id.as_deref().map(str::as_bytes),
            }
        }
    }

    fn verify(rows: &[Row], head: Option<(u64, String)>) -> VerifyReport {
        let mut v = ChainVerifier::new();
        for (seq, body, hash, columns) in rows {
            v.push(*seq, body, hash, &columns.stored());
        }
        v.finish(head)
    }

    fn rows(events: &[AuditEvent]) -> Vec<Row> {
        events
            .iter()
            .map(|e| (e.seq, e.canonical_body(), e.hash.clone(), Columns::of(e)))
            .collect()
    }

    #[test]
    fn hash_matches_agrees_with_hash_entry() {
        for body in ["", "{}", "{\"a\":1}", &"x".repeat(1000)] {
            let hash = hash_entry(body);
            let (body, hash) = (body.as_bytes(), hash.as_str());
            assert!(hash_matches(body, hash.as_bytes()));
            assert!(
                !hash_matches(body, hash.to_uppercase().as_bytes())
                    || !hash.chars().any(|c| c.is_ascii_alphabetic())
            );
            assert!(!hash_matches(body, &hash.as_bytes()[..63]));
            assert!(!hash_matches(&[body, b" "].concat(), hash.as_bytes()));
            let last = if hash.ends_with('0') { '1' } else { '0' };
            assert!(!hash_matches(
                body,
                format!("{}{last}", &hash[..63]).as_bytes()
            ));
        }
    }

    #[test]
    fn kind_text_matches_serde() {
        use AuditKind::*;
        for k in [
            GrantRequested,
            GrantDecided,
            GrantRejected,
            GrantFailed,
            LeaseIssued,
            LeaseRenewed,
            LeaseRenewalRejected,
            LeaseRevoking,
            LeaseRevokeFailed,
            LeaseRevoked,
            LeaseExpired,
            IdentityCreated,
            IdentityDisabled,
            IdentityEnabled,
            TargetCreated,
            AuthFailed,
            KeyCreated,
            KeyRotated,
            TokenIntrospected,
            PolicyReloaded,
            PolicyRejected,
            TargetReconciled,
            TargetRootRotated,
            OperatorTokenCreated,
            OperatorTokenRevoked,
            OperatorRecovered,
            TargetUpdated,
            TargetDeleted,
            IdentityUpdated,
            IdentityDeleted,
            TaskOpened,
            TaskEnded,
            ApprovalRequested,
            ApprovalGranted,
            ApprovalDenied,
            ApprovalExpired,
            GrantBreakGlass,
            ReviewClosed,
            LeaseContained,
        ] {
            assert_eq!(
                serde_json::to_value(k).ok(),
                Some(serde_json::json!(k.as_str()))
            );
        }
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let v = serde_json::json!({"b": 1, "a": {"d": [3, {"y": 1, "x": 2}], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[3,{"x":2,"y":1}]},"b":1}"#
        );
    }

    #[test]
    fn stored_event_round_trips() {
        let e = &chain(1)[0];
        let back = AuditEvent::from_stored(&e.canonical_body(), &e.hash);
        assert_eq!(back.ok().as_ref(), Some(e));
    }

    #[test]
    fn intact_chain_verifies() {
        let events = chain(5);
        let head = Some((5, events[4].hash.clone()));
        let report = verify(&rows(&events), head);
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.entries, 5);
        assert_eq!(verify(&[], None).first_break, None);
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let events = chain(5);
        let head = Some((5, events[4].hash.clone()));

        let mut edited = rows(&events);
        edited[2].1 = edited[2].1.replace("\"n\":3", "\"n\":4");
        assert_eq!(
            verify(&edited, head.clone()).first_break,
            Some(ChainBreak::Edited { seq: 3 })
        );

        // Rewriting the hash too does not help: the next entry no longer links to it.
        let mut rehashed = edited.clone();
        rehashed[2].2 = hash_entry(&rehashed[2].1);
        assert_eq!(
            verify(&rehashed, head.clone()).first_break,
            Some(ChainBreak::InsertedOrReordered { seq: 4 })
        );

        let mut deleted = rows(&events);
        deleted.remove(1);
        assert_eq!(
            verify(&deleted, head.clone()).first_break,
            Some(ChainBreak::Deleted {
                seq: 3,
                missing_from: 2
            })
        );

        let mut reordered = rows(&events);
        reordered.swap(1, 2);
        assert_eq!(
            verify(&reordered, head.clone()).first_break,
            Some(ChainBreak::Deleted {
                seq: 3,
                missing_from: 2
            })
        );

        // An entry forged with a valid hash and the right seq still fails to link.
        let mut inserted = rows(&events);
        let forged = AuditDraft::new(AuditKind::LeaseRevoked, "attacker").seal(
            3,
            crate::now(),
            GENESIS_HASH,
        );
        let columns = Columns::of(&forged);
        inserted[2] = (3, forged.canonical_body(), forged.hash, columns);
        assert_eq!(
            verify(&inserted, head.clone()).first_break,
            Some(ChainBreak::InsertedOrReordered { seq: 3 })
        );

        let truncated = rows(&events[..4]);
        assert_eq!(
            verify(&truncated, head).first_break,
            Some(ChainBreak::Truncated {
                head_seq: 5,
                last_seq: 4
            })
        );

        let mut garbage = rows(&events);
        garbage[0].1 = "{not json".into();
        assert_eq!(
            verify(&garbage, None).first_break,
            Some(ChainBreak::Edited { seq: 1 })
        );
        // Garbage whose hash was recomputed is unreadable as a chain entry.
        garbage[0].2 = hash_entry(&garbage[0].1);
        assert_eq!(
            verify(&garbage, None).first_break,
            Some(ChainBreak::Unreadable { seq: 1 })
        );
    }

    #[test]
    fn link_fields_are_read_from_the_top_level_only() {
        // Nested keys named like the link fields (user-supplied context) must not fool it.
        let e = AuditDraft::new(AuditKind::GrantRequested, "operator")
            .detail(serde_json::json!({"context": {"prev_hash": "f".repeat(64), "seq": 999}, "purpose": "\"seq\":5"}))
            .seal(1, crate::now(), GENESIS_HASH);
        let body = e.canonical_body();
        assert_eq!(
            chain_link(body.as_bytes()),
            Some((1, GENESIS_HASH.as_bytes()))
        );
        let row = (1, body, e.hash.clone(), Columns::of(&e));
        let report = verify(&[row], Some((1, e.hash.clone())));
        assert!(report.ok(), "{report:?}");

        // A link that is not a hash at all is unreadable, not a reordering.
        let mut odd = e.clone();
        odd.prev_hash = "z".repeat(64);
        let body = odd.canonical_body();
        let row = (1, body.clone(), hash_entry(&body), Columns::of(&odd));
        assert_eq!(
            verify(&[row], None).first_break,
            Some(ChainBreak::Unreadable { seq: 1 })
        );
    }

    /// Entries filed under identities, tasks and grants, some with values that need JSON
    /// escaping, and detail members named like the columns to mislead a text search.
    fn filed_chain() -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_string();
        let at = crate::from_unix_ms(1_700_000_000_123);
        let filings = [
            (Some("svc"), Some("t2"), true),
            (None, None, false),
            (Some("ag\"ent\\1"), Some("line\nbreak \u{1} ✓"), true),
            (Some("svc"), Some("t22"), false),
            (Some("ends\\"), Some("\""), true),
        ];
        filings
            .into_iter()
            .zip(1u64..)
            .map(|((identity, task, grant), seq)| {
                let mut d = AuditDraft::new(AuditKind::GrantRejected, "identity:svc").detail(
                    serde_json::json!({
                        "task": "decoy", "identity": "decoy", "kind": "lease.revoked",
                        "grant_id": null, "at": "2001-01-01T00:00:00Z",
                        "context": {"task": "t9", "\"task\":": "\"t9\""}
                    }),
                );
                d.identity = identity.map(String::from);
                d.task = task.map(String::from);
                d.grant_id = grant.then(Uuid::new_v4);
                let e = d.seal(seq, at + time::Duration::milliseconds(seq as i64), &prev);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    #[test]
    fn columns_equal_to_the_body_verify() {
        let events = filed_chain();
        let head = Some((5, events[4].hash.clone()));
        let report = verify(&rows(&events), head);
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.entries, 5);
    }

    #[test]
    fn each_rewritten_column_is_named_with_its_entry() {
        let events = filed_chain();
        let head = Some((5, events[4].hash.clone()));
        type Edit = fn(&mut Columns);
        let cases: [(usize, AuditColumn, Edit); 16] = [
            (4, AuditColumn::Task, |c| c.task = Some("\\".into())),
            (4, AuditColumn::Identity, |c| {
                c.identity = Some("ends".into())
            }),
            (0, AuditColumn::Task, |c| c.task = Some("t9".into())),
            (0, AuditColumn::Task, |c| c.task = Some("t".into())),
            (0, AuditColumn::Task, |c| c.task = Some("t2 ".into())),
            (0, AuditColumn::Task, |c| c.task = None),
            (1, AuditColumn::Task, |c| c.task = Some("null".into())),
            (3, AuditColumn::Task, |c| c.task = Some("t2".into())),
            (2, AuditColumn::Task, |c| {
                c.task = Some("line\nbreak \u{1} ✗".into())
            }),
            (0, AuditColumn::Identity, |c| {
                c.identity = Some("other".into())
            }),
            (1, AuditColumn::Identity, |c| {
                c.identity = Some("svc".into())
            }),
            (2, AuditColumn::Identity, |c| {
                c.identity = Some("ag\"ent\\2".into())
            }),
            (0, AuditColumn::GrantId, |c| c.grant_id = None),
            (1, AuditColumn::GrantId, |c| {
                c.grant_id = Some(Uuid::nil().to_string())
            }),
            (2, AuditColumn::Kind, |c| c.kind = "lease.revoked".into()),
            (3, AuditColumn::AtMs, |c| c.at_ms += 1),
        ];
        for (i, column, edit) in cases {
            let mut stored = rows(&events);
            edit(&mut stored[i].3);
            assert_eq!(
                verify(&stored, head.clone()).first_break,
                Some(ChainBreak::ColumnEdited {
                    seq: i as u64 + 1,
                    column
                }),
                "{column} of entry {}: {:?}",
                i + 1,
                stored[i].3
            );
        }
        // Not text at all: a mismatch, not an error.
        let mut stored = rows(&events);
        let report = {
            let mut v = ChainVerifier::new();
            for (seq, body, hash, columns) in &mut stored {
                let mut c = columns.stored();
                if *seq == 3 {
                    c.task = Some(b"\xff\xfe\"");
                }
                v.push(*seq, body, hash, &c);
            }
            v.finish(head)
        };
        assert_eq!(
            report.first_break,
            Some(ChainBreak::ColumnEdited {
                seq: 3,
                column: AuditColumn::Task
            })
        );
        assert_eq!(
            report.first_break.map(|b| b.to_string()).as_deref(),
            Some("entry 3 was re-filed: its task column no longer matches the hashed entry")
        );
    }

    #[test]
    fn a_column_break_serialises_with_its_column() {
        let b = ChainBreak::ColumnEdited {
            seq: 7,
            column: AuditColumn::GrantId,
        };
        let v = serde_json::to_value(&b).ok();
        assert_eq!(
            v,
            Some(serde_json::json!({"problem": "column_edited", "seq": 7, "column": "grant_id"}))
        );
        assert_eq!(v.and_then(|v| serde_json::from_value(v).ok()), Some(b));
    }

    #[test]
    fn utc_ms_agrees_with_the_general_parser() {
        use time::format_description::well_known::Rfc3339;
        let instants = [
            0i128,
            1,
            999_999,
            1_000_000,
            951_782_400_123_456_789, // 2000-02-29
            951_868_799_999_999_999,
            1_700_000_000_120_000_000,
            4_102_444_800_000_000_001,   // 2100-01-01
            4_107_542_399_999_000_000,   // 2100-02-28, not a leap year
            253_402_300_799_999_999_999, // 9999-12-31T23:59:59.999999999Z
        ];
        for base in instants {
            for step in [0, 86_399_999_999_999, 1_234_567_891, 31_536_000_000_000_000] {
                let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(base + step) else {
                    continue;
                };
                for at in [at, crate::truncate_ms(at)] {
                    let Ok(text) = at.format(&Rfc3339) else {
                        continue;
                    };
                    let expected = (at.year() < 10_000).then(|| crate::to_unix_ms(at));
                    assert_eq!(utc_ms(text.as_bytes()), expected, "{text}");
                }
            }
        }
        // Not the form `at` is written in: left to the general parser.
        for text in [
            "1969-12-31T23:59:59.999Z",
            "2024-01-01T00:00:00+01:00",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00.1234567890Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01 00:00:00Z",
            "2024-01-01T00:00:00",
        ] {
            assert_eq!(utc_ms(text.as_bytes()), None, "{text}");
        }
        let body = br#"{"actor":"x","at":"2024-01-01T01:00:00+01:00","detail":null}"#;
        assert_eq!(body_at_ms(body), Some(1_704_067_200_000));
    }
}
