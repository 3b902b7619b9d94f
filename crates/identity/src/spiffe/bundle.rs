//! A parsed file that is re-read when it changes: the trust bundles, which the SPIFFE
//! agent rewrites on CA rotation.
//!
//! The file's modification time and size are checked at most every `check_interval`
//! (5 s); when either changed it is read and parsed again. A file modified less than
//! 2 s before it was read is read again at the next check whatever its stamp says:
//! filesystems with coarse timestamps could otherwise hide a second same-size write
//! (a rotated CA of the same key type) made within one timestamp tick. A failed read or parse keeps
//! the previous value (and is logged once per change of the file, not per request).
//!
//! Synchronous on purpose: the X.509 verifier runs inside rustls' synchronous callbacks,
//! and a stat every few seconds (plus a read of a small local file on change) is cheaper
//! than handing work to another thread. The lock is held during that I/O so concurrent
//! requests do not all re-read the file.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// Bundles are a few KiB; refuse to read anything much larger.
const MAX_BUNDLE_BYTES: u64 = 1024 * 1024;

/// How old a file's modification time must be before its stamp is trusted.
const SETTLE_TIME: Duration = Duration::from_secs(2);

pub(crate) const CHECK_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) struct FileBundle<T> {
    path: PathBuf,
    parse: fn(&[u8]) -> Result<T, String>,
    check_interval: Duration,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Option<Arc<T>>,
    /// Modification time and size of the file last read.
    stamp: Option<(Option<SystemTime>, u64)>,
    last_check: Option<Instant>,
    last_error: Option<String>,
}

impl<T> FileBundle<T> {
    pub(crate) fn new(path: PathBuf, parse: fn(&[u8]) -> Result<T, String>) -> Self {
        FileBundle {
            path,
            parse,
            check_interval: CHECK_INTERVAL,
            state: Mutex::new(State {
                value: None,
                stamp: None,
                last_check: None,
                last_error: None,
            }),
        }
    }

    pub(crate) fn with_check_interval(mut self, interval: Duration) -> Self {
        self.check_interval = interval;
        self
    }

    /// The current value, re-reading the file if it is due for a check and has changed.
    /// `Err` only when nothing was ever loaded; the message is for logs (it names the
    /// file).
    pub(crate) fn get(&self) -> Result<Arc<T>, String> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; the
        // state is still usable.
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let due = s
            .last_check
            .is_none_or(|t| t.elapsed() >= self.check_interval);
        if due {
            s.last_check = Some(Instant::now());
            self.refresh(&mut s);
        }
        match &s.value {
            Some(value) => Ok(value.clone()),
            None => Err(s
                .last_error
                .clone()
                .unwrap_or_else(|| "bundle not loaded".into())),
        }
    }

    fn refresh(&self, s: &mut State<T>) {
        let shown = self.path.display();
        let meta = match std::fs::metadata(&self.path) {
            Ok(meta) => meta,
            Err(e) => {
                let error = format!("reading {shown}: {e}");
                if s.last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(%error, keeping_previous = s.value.is_some(), "cannot read SPIFFE bundle");
                }
                s.last_error = Some(error);
                return;
            }
        };
        let stamp = (meta.modified().ok(), meta.len());
        if s.stamp == Some(stamp) {
            return;
        }
        // Recorded before parsing so that a broken file is reported once, not on every
        // check, and re-read as soon as it is replaced. Not recorded for a file still
        // being written to (see the module docs).
        let settled = stamp.0.is_some_and(|modified| {
            SystemTime::now()
                .duration_since(modified)
                .is_ok_and(|age| age >= SETTLE_TIME)
        });
        s.stamp = settled.then_some(stamp);
        let result = if meta.len() > MAX_BUNDLE_BYTES {
            Err(format!("{shown} is too large for a bundle"))
        } else {
            std::fs::read(&self.path)
                .map_err(|e| format!("reading {shown}: {e}"))
                .and_then(|bytes| (self.parse)(&bytes).map_err(|e| format!("{shown}: {e}")))
        };
        match result {
            Ok(value) => {
                tracing::info!(path = %shown, "loaded SPIFFE bundle");
                s.value = Some(Arc::new(value));
                s.last_error = None;
            }
            Err(error) => {
                tracing::warn!(%error, keeping_previous = s.value.is_some(), "cannot load SPIFFE bundle");
                s.last_error = Some(error);
            }
        }
    }
}
