//! A small cache of recently verified tokens, so a workload presenting the same token on
//! every request costs one hash instead of a signature verification.
//!
//! Safety rules (the cache must never accept what full verification would refuse):
//! - keyed by the SHA-256 of the *whole* token text, so any changed byte misses;
//! - an entry is used only while the token is unexpired by the same rule as full
//!   verification (`now < exp + clock_skew`), and dropped after;
//! - an entry is used only while the issuer's current key set is fresh and still holds
//!   the key that verified it, so a key removed by the issuer stops its tokens as soon
//!   as Mayfly has noticed the removal;
//! - bounded: when full, expired entries are purged and, if it is still full, new
//!   entries are simply not cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use mayfly_core::auth::Proven;

pub(crate) const DEFAULT_CAPACITY: usize = 10_000;

#[derive(Clone)]
pub(crate) struct Verified {
    /// Index of the issuer in the authenticator's list.
    pub issuer: usize,
    pub kid: Option<String>,
    /// A workload or a person, as full verification proved it.
    pub claims: Proven,
    /// Unix seconds after which the token is expired (exp + clock skew).
    pub valid_until: i64,
}

pub(crate) struct VerifiedCache {
    capacity: usize,
    entries: Mutex<HashMap<[u8; 32], Verified>>,
}

impl VerifiedCache {
    pub(crate) fn new(capacity: usize) -> Self {
        VerifiedCache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn key(token: &str) -> [u8; 32] {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }

    /// The entry for `key` if it is still within its validity at `now`.
    pub(crate) fn get(&self, key: &[u8; 32], now: i64) -> Option<Verified> {
        // A poisoned lock only means another thread panicked mid-operation on a plain
        // map; the map is still structurally sound, so keep using it.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(key) {
            Some(v) if now < v.valid_until => Some(v.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn insert(&self, key: [u8; 32], entry: Verified, now: i64) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.retain(|_, v| now < v.valid_until);
        }
        if entries.len() < self.capacity {
            entries.insert(key, entry);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
