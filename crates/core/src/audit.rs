//! The audit chain: one append-only, hash-chained log of everything that happens to access.
//!
//! Each entry is canonical JSON (keys sorted, no insignificant whitespace) holding its
//! sequence number and the SHA-256 of the previous entry; its own hash covers all of it.
//! Editing, deleting, inserting or reordering any entry breaks the chain at that entry,
//! and [`ChainVerifier`] names the first place it breaks. Entries never carry secrets.

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

/// The top-level `seq` and `prev_hash` of a canonical body, read from its text.
///
/// Keys are sorted, so the top-level `prev_hash` and `seq` come after `detail` (the only
/// member that can hold nested objects, and so nested keys of the same name) and are
/// followed only by `target` and `task`, which are strings: inside a string a quote is
/// escaped, so the last raw occurrence of each key is the top-level one.
fn chain_link(body: &[u8]) -> Option<(u64, &[u8])> {
    use memchr::memmem::FinderRev;
    use std::sync::LazyLock;
    // Built once: constructing a searcher per entry cost more than the search.
    static PREV: LazyLock<FinderRev<'static>> =
        LazyLock::new(|| FinderRev::new(b"\"prev_hash\":\""));
    static SEQ: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new(b"\"seq\":"));
    let p = PREV.rfind(body)? + PREV.needle().len();
    let prev = body.get(p..p + 64)?;
    if !prev.iter().all(u8::is_ascii_hexdigit) || body.get(p + 64) != Some(&b'"') {
        return None;
    }
    let s = SEQ.rfind(body)? + SEQ.needle().len();
    let digits = body[s..].iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(body.get(s..s + digits)?)
        .ok()?
        .parse()
        .ok()?;
    Some((seq, prev))
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
        }
    }

    /// Whether a break has been found (callers may stop reading).
    pub fn broken(&self) -> bool {
        self.first_break.is_some()
    }

    /// Checks one stored row: its `seq` column, canonical body and stored hash.
    pub fn push(&mut self, row_seq: u64, body: &str, stored_hash: &str) {
        self.push_bytes(row_seq, body.as_bytes(), stored_hash.as_bytes());
    }

    /// [`ChainVerifier::push`] for rows read as bytes: no UTF-8 check is needed, since the
    /// hash covers every byte and a stored hash that is not hex text cannot match.
    pub fn push_bytes(&mut self, row_seq: u64, body: &[u8], stored_hash: &[u8]) {
        if self.first_break.is_some() {
            return;
        }
        self.entries += 1;
        let brk = self.check(row_seq, body, stored_hash);
        // Continue from what the row claims, so one break is reported, not a cascade.
        self.expected_seq = row_seq + 1;
        self.prev_hash.clear();
        self.prev_hash.extend_from_slice(stored_hash);
        self.first_break = brk;
    }

    fn check(&self, row_seq: u64, body: &[u8], stored_hash: &[u8]) -> Option<ChainBreak> {
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
        // The hash covers the body, so reading the two link fields out of the text is as
        // sound as parsing it, and an order of magnitude cheaper over millions of rows.
        let Some((body_seq, body_prev)) = chain_link(body) else {
            return Some(ChainBreak::Unreadable { seq: row_seq });
        };
        if body_seq != row_seq || body_prev != self.prev_hash {
            return Some(ChainBreak::InsertedOrReordered { seq: row_seq });
        }
        None
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
        v.push(1, &body, &event.hash);
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

    fn verify(rows: &[(u64, String, String)], head: Option<(u64, String)>) -> VerifyReport {
        let mut v = ChainVerifier::new();
        for (seq, body, hash) in rows {
            v.push(*seq, body, hash);
        }
        v.finish(head)
    }

    fn rows(events: &[AuditEvent]) -> Vec<(u64, String, String)> {
        events
            .iter()
            .map(|e| (e.seq, e.canonical_body(), e.hash.clone()))
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
        inserted[2] = (3, forged.canonical_body(), forged.hash);
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
        let report = verify(&[(1, body, e.hash.clone())], Some((1, e.hash.clone())));
        assert!(report.ok(), "{report:?}");
    }
}
