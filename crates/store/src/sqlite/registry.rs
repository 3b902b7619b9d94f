//! Identities and targets held in memory, so a grant needs no read of the database.
//!
//! Every grant reads its identity (to authenticate the workload and check it is enabled)
//! and its target. Both are small, change rarely, and change only through the writer,
//! which is what makes a cache here exact rather than "eventually" right:
//!
//! * the writer invalidates an entry *after* its batch commits and *before* it answers
//!   the caller, so once `disable_identity` returns no reader is served the enabled copy;
//! * a reader that misses reads the database and may store what it read only if no
//!   invalidation happened since it started (the generation check), so a copy read just
//!   before a commit cannot be put back after the writer removed it.
//!
//! Only lookups that found something are kept; a miss reads the database every time,
//! which keeps unknown names (typos, probing) from filling memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use mayfly_core::model::{Identity, Target};

/// Entries per map before it is emptied and refilled by use. Deployments with more
/// identities than this still work; they read the database for some grants.
const CAPACITY: usize = 65_536;

/// What a reader saw of the cache before it went to the database.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Generation(u64);

#[derive(Debug, Default)]
pub(crate) struct Registry {
    generation: AtomicU64,
    identities: RwLock<HashMap<String, Identity>>,
    targets: RwLock<HashMap<String, Target>>,
}

pub(crate) use crate::engine::Changed;

impl Registry {
    pub(crate) fn identity(&self, id: &str) -> Result<Identity, Generation> {
        lookup(&self.identities, id).ok_or_else(|| self.generation())
    }

    pub(crate) fn target(&self, name: &str) -> Result<Target, Generation> {
        lookup(&self.targets, name).ok_or_else(|| self.generation())
    }

    pub(crate) fn keep_identity(&self, seen: Generation, identity: &Identity) {
        self.keep(&self.identities, seen, &identity.id, identity);
    }

    pub(crate) fn keep_target(&self, seen: Generation, target: &Target) {
        self.keep(&self.targets, seen, &target.name, target);
    }

    /// Called by the writer once a batch that changed these records has committed (or
    /// rolled back: dropping a correct entry only costs one read).
    pub(crate) fn invalidate(&self, changed: &[Changed]) {
        if changed.is_empty() {
            return;
        }
        // Held across the bump, so a reader's keep() sees either the old generation with
        // the entry already gone, or the new one.
        let mut identities = write(&self.identities);
        let mut targets = write(&self.targets);
        self.generation.fetch_add(1, Ordering::SeqCst);
        for c in changed {
            match c {
                Changed::Identity(id) => {
                    identities.remove(id);
                }
                Changed::Target(name) => {
                    targets.remove(name);
                }
            }
        }
    }

    fn generation(&self) -> Generation {
        Generation(self.generation.load(Ordering::SeqCst))
    }

    fn keep<V: Clone>(
        &self,
        map: &RwLock<HashMap<String, V>>,
        seen: Generation,
        key: &str,
        value: &V,
    ) {
        let mut map = write(map);
        if self.generation.load(Ordering::SeqCst) != seen.0 {
            return;
        }
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(key.to_string(), value.clone());
    }
}

fn lookup<V: Clone>(map: &RwLock<HashMap<String, V>>, key: &str) -> Option<V> {
    // A poisoned lock only means another thread panicked mid-insert of a complete value.
    map.read()
        .unwrap_or_else(|p| p.into_inner())
        .get(key)
        .cloned()
}

fn write<V>(
    map: &RwLock<HashMap<String, V>>,
) -> std::sync::RwLockWriteGuard<'_, HashMap<String, V>> {
    map.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use mayfly_core::model::IdentityKind;

    fn identity(id: &str, enabled: bool) -> Identity {
        Identity {
            id: id.into(),
            kind: IdentityKind::Service,
            owner: "team".into(),
            purpose: "test".into(),
            expires_at: None,
            labels: Default::default(),
            enabled,
            created_at: mayfly_core::now(),
        }
    }

    #[test]
    fn a_miss_then_keep_serves_the_copy() {
        let r = Registry::default();
        let seen = r.identity("a").unwrap_err();
        r.keep_identity(seen, &identity("a", true));
        assert!(r.identity("a").unwrap().enabled);
    }

    #[test]
    fn a_copy_read_before_an_invalidation_is_not_kept() {
        let r = Registry::default();
        let seen = r.identity("a").unwrap_err();
        // The writer commits a change to "a" while the reader is at the database.
        r.invalidate(&[Changed::Identity("a".into())]);
        r.keep_identity(seen, &identity("a", true));
        assert!(r.identity("a").is_err(), "the stale copy must not be kept");
    }

    #[test]
    fn invalidation_removes_only_what_changed() {
        let r = Registry::default();
        let seen = r.identity("a").unwrap_err();
        r.keep_identity(seen, &identity("a", true));
        r.keep_identity(seen, &identity("b", true));
        r.invalidate(&[Changed::Identity("a".into())]);
        assert!(r.identity("a").is_err());
        assert!(r.identity("b").is_ok());
    }

    #[test]
    fn a_full_map_starts_over_rather_than_growing() {
        let r = Registry::default();
        let seen = r.generation();
        for i in 0..=CAPACITY {
            r.keep_identity(seen, &identity(&format!("id-{i}"), true));
        }
        assert!(r.identities.read().unwrap().len() <= CAPACITY);
        assert!(r.identity(&format!("id-{CAPACITY}")).is_ok());
    }
}
