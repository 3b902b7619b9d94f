//! Hot reload of a policy directory: the engine in force is swapped only for a set that
//! loaded and validated completely, so a bad edit never opens or closes access by accident.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use mayfly_core::policy::{Decision, PolicyEngine, PolicyError, PolicyRequest};

use crate::engine::CedarEngine;
use crate::load::{read_dir_sources, LoadOptions, PolicyLoadError};

/// What [`ReloadingEngine::reload_if_changed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The directory's policy and schema files are as last seen (including a change that
    /// was already rejected: it is reported once, not on every poll).
    Unchanged,
    /// A new set is in force.
    Reloaded { policies: usize },
    /// The directory changed but the new set is invalid; the previous set stays in force.
    Rejected { error: PolicyLoadError },
}

/// A [`PolicyEngine`] over a directory that can be reloaded while serving.
///
/// Decisions take a read lock only long enough to clone an `Arc`, so a reload never
/// blocks behind a decision nor the reverse for more than that.
pub struct ReloadingEngine {
    dir: PathBuf,
    options: LoadOptions,
    current: RwLock<Arc<CedarEngine>>,
    /// Fingerprint of the directory as last examined (loaded or rejected).
    seen: Mutex<u64>,
}

impl std::fmt::Debug for ReloadingEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingEngine")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ReloadingEngine {
    /// Loads `dir`; fails if the initial set is invalid (there is nothing to fall back to).
    pub fn new(dir: &Path, options: LoadOptions) -> Result<Self, PolicyLoadError> {
        let sources = read_dir_sources(dir)?;
        let fingerprint = fingerprint(&sources);
        let engine = CedarEngine::from_sources(sources, options.clone())?;
        Ok(ReloadingEngine {
            dir: dir.to_path_buf(),
            options,
            current: RwLock::new(Arc::new(engine)),
            seen: Mutex::new(fingerprint),
        })
    }

    /// The engine in force.
    pub fn current(&self) -> Arc<CedarEngine> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory and swaps in the new set if its files changed and it is valid.
    /// Call it periodically (e.g. every few seconds) or on a signal.
    ///
    /// Change detection hashes file names and contents, not mtimes: editors and
    /// deployment tools can keep mtimes or write twice within a second.
    pub fn reload_if_changed(&self) -> ReloadOutcome {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let sources = match read_dir_sources(&self.dir) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "policy directory unreadable; previous policies stay in force");
                return ReloadOutcome::Rejected { error };
            }
        };
        let fp = fingerprint(&sources);
        if fp == *seen {
            return ReloadOutcome::Unchanged;
        }
        *seen = fp;
        match CedarEngine::from_sources(sources, self.options.clone()) {
            Ok(engine) => {
                let policies = engine.policy_count();
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(engine);
                tracing::info!(dir = %self.dir.display(), policies, "policies reloaded");
                ReloadOutcome::Reloaded { policies }
            }
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "policy change rejected; previous policies stay in force");
                ReloadOutcome::Rejected { error }
            }
        }
    }
}

impl PolicyEngine for ReloadingEngine {
    fn decide(&self, request: &PolicyRequest<'_>) -> Result<Decision, PolicyError> {
        self.current().decide(request)
    }

    fn decide_approved(
        &self,
        request: &PolicyRequest<'_>,
        approvers: &[String],
    ) -> Result<Decision, PolicyError> {
        self.current().decide_approved(request, approvers)
    }

    fn decide_delegation(
        &self,
        request: &mayfly_core::policy::DelegationRequest<'_>,
    ) -> Result<Decision, PolicyError> {
        self.current().decide_delegation(request)
    }
}

fn fingerprint(sources: &[(String, String)]) -> u64 {
    let mut h = DefaultHasher::new();
    sources.hash(&mut h);
    h.finish()
}
