//! What a test process owes its user when it ends: the suites it skipped, said after the
//! harness's own `test result:` line (where a reader looks, and visible without
//! `--nocapture`), and its scratch directories (brokers' data dirs hold master keys) gone.
//!
//! Both hang off one `atexit` hook: libtest has no end-of-run callback, and a test binary
//! exits through `exit()` once every test has run, passed or failed.

use std::path::PathBuf;
use std::sync::{Mutex, Once};

struct Ledger {
    /// (suite, service, why), in the order first seen; one entry per distinct triple.
    skipped: Vec<(String, String, String)>,
    /// How many tests skipped, per entry of `skipped`.
    counts: Vec<usize>,
    scratch: Vec<PathBuf>,
}

static LEDGER: Mutex<Ledger> = Mutex::new(Ledger {
    skipped: Vec::new(),
    counts: Vec::new(),
    scratch: Vec::new(),
});
static HOOK: Once = Once::new();

fn hook() {
    HOOK.call_once(|| {
        // SAFETY: `on_exit` is a plain `extern "C" fn()` that never unwinds (it catches
        // a poisoned lock and ignores I/O errors).
        unsafe {
            libc::atexit(on_exit);
        }
    });
}

pub(crate) fn record_skip(suite: &str, service: &str, why: &str) {
    hook();
    let mut ledger = LEDGER.lock().unwrap_or_else(|p| p.into_inner());
    let key = (suite.to_string(), service.to_string(), why.to_string());
    match ledger.skipped.iter().position(|k| *k == key) {
        Some(i) => ledger.counts[i] += 1,
        None => {
            ledger.skipped.push(key);
            ledger.counts.push(1);
        }
    }
}

/// A new directory for one test's files (a broker's data dir, a config), removed when the
/// test process ends. Unlike a `TempDir` it outlives the value that named it, so a broker
/// can be killed and restarted on it; unlike `TempDir::keep` it does not stay in /tmp.
pub fn scratch_dir() -> PathBuf {
    hook();
    let dir = tempfile::Builder::new()
        .prefix("mayfly-test-")
        .tempdir()
        .expect("create a scratch directory")
        .keep();
    LEDGER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .scratch
        .push(dir.clone());
    dir
}

extern "C" fn on_exit() {
    let ledger = match LEDGER.lock() {
        Ok(l) => l,
        Err(p) => p.into_inner(),
    };
    for dir in &ledger.scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    if ledger.skipped.is_empty() {
        return;
    }
    let total: usize = ledger.counts.iter().sum();
    let mut text = format!(
        "\nSKIPPED in {}: {total} test(s) did not run, for want of a service:\n",
        suite_binary()
    );
    for ((suite, service, why), n) in ledger.skipped.iter().zip(&ledger.counts) {
        text.push_str(&format!(
            "  {suite} ({n}): needs {service}, unavailable ({why})\n"
        ));
    }
    text.push_str(&format!(
        "  (set {}=1 to make this a failure, as CI does)\n\n",
        crate::services::REQUIRE_VAR
    ));
    write_stderr(text.as_bytes());
}

/// The test binary's name without cargo's hash suffix (`pg_dynamic`, not
/// `pg_dynamic-3f2a…`).
fn suite_binary() -> String {
    let exe = std::env::args().next().unwrap_or_default();
    let name = std::path::Path::new(&exe)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or(exe);
    match name.rsplit_once('-') {
        Some((base, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            base.to_string()
        }
        _ => name,
    }
}

/// Straight to file descriptor 2: at exit, std's stderr handle may be mid-teardown, and the
/// harness's output capture must not swallow this.
fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: writes from a live slice to fd 2, which the process holds open.
        let n = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}
