//! Failed authentication: a per-source rate limit, and audit entries aggregated per source
//! and reason, so unauthenticated traffic cannot grow the audit chain without bound.
//!
//! Each source (client IP) has a token bucket that only failures drain. While it is empty
//! the source is answered 429 with `Retry-After` before any credential is looked at.
//! The first failure of a (source, reason) pair in an interval is audited at once, so a
//! single mistake is visible immediately; the rest of that interval's failures are counted
//! and written as one entry with the count when the interval ends ([`AuthFailures::flush`]).
//!
//! Memory is bounded: at most [`MAX_SOURCES`] sources are tracked. When the table is full,
//! sources whose bucket has refilled and whose interval has ended are forgotten first;
//! beyond that, new sources share one overflow entry (rate-limited and counted together).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::duration::Ttl;
use serde::Deserialize;

/// Most sources tracked at once.
pub const MAX_SOURCES: usize = 10_000;
/// Longest path kept in an `auth.failed` entry.
const PATH_CHARS: usize = 256;

/// `[auth]` settings for failed authentication.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailureLimits {
    /// Failures a source may make in a burst before it is answered 429.
    pub burst: u32,
    /// Failures a source regains per minute after a burst.
    pub per_minute: u32,
    /// Repeated failures of one source and reason are audited once per interval, with a
    /// count.
    pub audit_interval: Ttl,
}

impl Default for FailureLimits {
    fn default() -> Self {
        FailureLimits {
            burst: 30,
            per_minute: 30,
            audit_interval: Ttl::from_secs(60),
        }
    }
}

/// Where a failed request came from; `None` (served without connection info, or the
/// overflow bucket) is one shared source.
type Source = Option<IpAddr>;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Failures of one (source, reason) in the current interval after the first.
struct Pending {
    opened: Instant,
    first_at: time::OffsetDateTime,
    last_at: time::OffsetDateTime,
    /// Failures not yet audited.
    count: u64,
    reason: String,
    path: String,
}

#[derive(Default)]
struct Table {
    buckets: HashMap<Source, Bucket>,
    pending: HashMap<(Source, &'static str), Pending>,
    /// When a full table was last swept for idle sources. A sweep is a pass over the
    /// whole table, so it is made at most once a second: a flood of new sources must
    /// not cost a pass per request.
    last_sweep: Option<Instant>,
}

pub struct AuthFailures {
    limits: FailureLimits,
    table: Mutex<Table>,
}

/// The source must wait this long before trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl AuthFailures {
    pub fn new(limits: FailureLimits) -> Self {
        AuthFailures {
            limits,
            table: Mutex::new(Table::default()),
        }
    }

    /// How long failures of one source and reason are counted before they are audited.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.limits.audit_interval.as_secs().max(1))
    }

    fn refill_per_sec(&self) -> f64 {
        f64::from(self.limits.per_minute) / 60.0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table holds counters only; one left half-updated by a panic is still usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` while `source` has used up its failures; checked before authenticating.
    pub fn check(&self, source: Source, now: Instant) -> Result<(), RetryAfter> {
        let mut table = self.lock();
        let source = table.tracked(source);
        let Some(bucket) = table.buckets.get_mut(&source) else {
            return Ok(());
        };
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        let rate = self.refill_per_sec();
        let wait = if rate > 0.0 {
            ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64
        } else {
            self.interval().as_secs()
        };
        Err(RetryAfter(wait))
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens =
            (bucket.tokens + elapsed * self.refill_per_sec()).min(f64::from(self.limits.burst));
        bucket.updated = now;
    }

    /// Counts a failure. Returns the entry to audit now when it is the first of its source
    /// and reason in the interval; later ones wait for [`AuthFailures::flush`].
    pub fn record(
        &self,
        source: Source,
        code: &'static str,
        reason: &str,
        path: &str,
        now: Instant,
        at: time::OffsetDateTime,
    ) -> Option<AuditDraft> {
        let mut table = self.lock();
        let sweep_due = table
            .last_sweep
            .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1));
        if sweep_due && !table.buckets.contains_key(&source) && table.buckets.len() >= MAX_SOURCES {
            table.forget_idle(self, now);
            table.last_sweep = Some(now);
        }
        let source = table.tracked(source);
        let burst = f64::from(self.limits.burst);
        let bucket = table.buckets.entry(source).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);

        let path = mayfly_core::audit::bounds::cap(path.to_string(), PATH_CHARS);
        let reason = mayfly_core::audit::bounds::cap(reason.to_string(), PATH_CHARS);
        let interval = self.interval();
        match table.pending.get_mut(&(source, code)) {
            Some(p) if now.saturating_duration_since(p.opened) < interval => {
                p.count += 1;
                p.last_at = at;
                p.reason = reason;
                p.path = path;
                None
            }
            _ => {
                table.pending.insert(
                    (source, code),
                    Pending {
                        opened: now,
                        first_at: at,
                        last_at: at,
                        count: 0,
                        reason: reason.clone(),
                        path: path.clone(),
                    },
                );
                Some(entry(source, code, &reason, &path, 1, None))
            }
        }
    }

    /// Entries for the failures counted in intervals that have ended (or all of them, at
    /// shutdown), one per source and reason, and forgets those intervals.
    pub fn flush(&self, now: Instant, everything: bool) -> Vec<AuditDraft> {
        let interval = self.interval();
        let mut table = self.lock();
        let mut out = Vec::new();
        table.pending.retain(|(source, code), p| {
            let ended = everything || now.saturating_duration_since(p.opened) >= interval;
            if ended && p.count > 0 {
                out.push(entry(
                    *source,
                    code,
                    &p.reason,
                    &p.path,
                    p.count,
                    Some((p.first_at, p.last_at, interval)),
                ));
            }
            !ended
        });
        out
    }

    /// Sources currently tracked (for tests and metrics).
    pub fn tracked_sources(&self) -> usize {
        self.lock().buckets.len()
    }
}

impl Table {
    /// The source as tracked: itself, or the shared overflow entry when the table is full.
    fn tracked(&self, source: Source) -> Source {
        if self.buckets.contains_key(&source) || self.buckets.len() < MAX_SOURCES {
            source
        } else {
            None
        }
    }

    /// Forgets sources with a full bucket and no open interval: they are
    /// indistinguishable from sources never seen.
    fn forget_idle(&mut self, limits: &AuthFailures, now: Instant) {
        let burst = f64::from(limits.limits.burst);
        let rate = limits.refill_per_sec();
        let open: std::collections::HashSet<Source> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.opened) < limits.interval())
            .map(|((s, _), _)| *s)
            .collect();
        self.buckets.retain(|source, b| {
            let tokens = b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate;
            tokens < burst || open.contains(source)
        });
    }
}

fn entry(
    source: Source,
    code: &str,
    reason: &str,
    path: &str,
    count: u64,
    span: Option<(time::OffsetDateTime, time::OffsetDateTime, Duration)>,
) -> AuditDraft {
    let mut detail = serde_json::json!({
        "code": code,
        "reason": reason,
        "path": path,
        "source_ip": source.map(|ip| ip.to_string()),
        "count": count,
    });
    if let (Some((first, last, interval)), serde_json::Value::Object(map)) = (span, &mut detail) {
        let fmt = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        };
        map.insert("first_at".into(), fmt(first).into());
        map.insert("last_at".into(), fmt(last).into());
        map.insert("interval_seconds".into(), interval.as_secs().into());
    }
    AuditDraft::new(AuditKind::AuthFailed, "anonymous").detail(detail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits(burst: u32, per_minute: u32) -> FailureLimits {
        FailureLimits {
            burst,
            per_minute,
            audit_interval: Ttl::from_secs(60),
        }
    }

    fn ip(n: u32) -> Source {
        Some(IpAddr::from(std::net::Ipv4Addr::from(n)))
    }

    #[test]
    fn a_flood_is_one_entry_now_and_one_with_the_count_later() {
        let f = AuthFailures::new(limits(1_000_000, 60));
        let t0 = Instant::now();
        let at = mayfly_core::now();
        let mut now_entries = 0;
        for i in 0..2000 {
            let path = format!("/v1/{}", "x".repeat(i % 70_000));
            if f.record(ip(1), "missing_credential", "no credential", &path, t0, at)
                .is_some()
            {
                now_entries += 1;
            }
        }
        assert_eq!(now_entries, 1);
        assert!(f.flush(t0 + Duration::from_secs(59), false).is_empty());
        let later = f.flush(t0 + Duration::from_secs(60), false);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].detail["count"], 1999);
        assert_eq!(later[0].detail["source_ip"], "0.0.0.1");
        assert!(later[0].detail["path"].as_str().unwrap().len() < 400);
        // The next interval starts afresh, with an immediate entry.
        let t1 = t0 + Duration::from_secs(61);
        assert!(f
            .record(ip(1), "missing_credential", "r", "/", t1, at)
            .is_some());
    }

    #[test]
    fn sources_and_reasons_are_counted_apart() {
        let f = AuthFailures::new(limits(100, 60));
        let t0 = Instant::now();
        let at = mayfly_core::now();
        assert!(f.record(ip(1), "a", "r", "/", t0, at).is_some());
        assert!(f.record(ip(1), "b", "r", "/", t0, at).is_some());
        assert!(f.record(ip(2), "a", "r", "/", t0, at).is_some());
        assert!(f.record(ip(1), "a", "r", "/", t0, at).is_none());
        let flushed = f.flush(t0, true);
        assert_eq!(flushed.len(), 1, "only (1, a) had failures after its first");
    }

    #[test]
    fn a_source_past_its_burst_waits_then_recovers() {
        let f = AuthFailures::new(limits(3, 60));
        let t0 = Instant::now();
        let at = mayfly_core::now();
        for _ in 0..3 {
            assert_eq!(f.check(ip(7), t0), Ok(()));
            f.record(ip(7), "bad", "r", "/", t0, at);
        }
        assert_eq!(f.check(ip(7), t0), Err(RetryAfter(1)));
        // Other sources are not affected.
        assert_eq!(f.check(ip(8), t0), Ok(()));
        // One failure per second comes back.
        assert_eq!(f.check(ip(7), t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn memory_is_bounded_under_many_sources() {
        let f = AuthFailures::new(limits(2, 60));
        let t0 = Instant::now();
        let at = mayfly_core::now();
        for n in 0..(MAX_SOURCES as u32 + 5_000) {
            f.record(ip(n), "bad", "r", "/", t0, at);
        }
        // The table, plus the one overflow entry the sources beyond it share.
        assert!(f.tracked_sources() <= MAX_SOURCES + 1);
        // The overflow source is limited too.
        for _ in 0..3 {
            f.record(ip(u32::MAX), "bad", "r", "/", t0, at);
        }
        assert!(f.check(ip(u32::MAX - 1), t0).is_err());
        // Once buckets have refilled and intervals ended, idle sources make room.
        let later = t0 + Duration::from_secs(120);
        f.flush(later, false);
        assert!(f
            .record(ip(u32::MAX - 2), "bad", "r", "/", later, at)
            .is_some());
        assert!(f.check(ip(u32::MAX - 3), later).is_ok());
    }
}
