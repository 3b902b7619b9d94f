//! Mayfly's domain, free of I/O.
//!
//! This crate owns what the broker *means*: non-human identities, targets, grants and
//! their state machine, leases, the hash-chained audit log, envelope sealing of secrets at
//! rest, and the small traits every adapter implements ([`store::Store`],
//! [`auth::Authenticator`], [`policy::PolicyEngine`], [`provider::Provider`]).
//! Adapters (storage backends, authenticators, the HTTP server) depend on this crate;
//! it depends on none of them.

pub mod audit;
pub mod auth;
pub mod checkpoint;
pub mod duration;
pub mod error;
pub mod model;
pub mod policy;
pub mod provider;
pub mod seal;
pub mod secret;
pub mod store;
pub mod validate;

pub use error::CoreError;
pub use time::OffsetDateTime;
pub use uuid::Uuid;

/// Current wall-clock time truncated to milliseconds, the precision the stores keep.
///
/// Truncating at the source means a value read back from any store compares equal to the
/// value that was written, which the audit chain and the tests rely on.
pub fn now() -> OffsetDateTime {
    truncate_ms(OffsetDateTime::now_utc())
}

/// Truncates a timestamp to whole milliseconds.
pub fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000_000).unwrap_or(t)
}

/// Milliseconds since the Unix epoch, the stores' on-disk time representation.
pub fn to_unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Inverse of [`to_unix_ms`]; out-of-range values clamp to the epoch rather than panic.
pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
