//! Waiting for something that happens in the background (a scheduler expiring a lease, a
//! reload, a revocation worker): one polling loop instead of one per test.

use std::time::{Duration, Instant};

/// How often [`eventually`] checks.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// An answer that says whether the wait is over: `true`, `Some(_)` or `Ok(_)`.
pub trait Settled {
    fn settled(&self) -> bool;
}

impl Settled for bool {
    fn settled(&self) -> bool {
        *self
    }
}

impl<T> Settled for Option<T> {
    fn settled(&self) -> bool {
        self.is_some()
    }
}

/// `Err` carries what was seen instead, for the failure message.
impl<T, E> Settled for Result<T, E> {
    fn settled(&self) -> bool {
        self.is_ok()
    }
}

/// Runs `check` every [`INTERVAL`] until its answer is settled or `timeout` has passed,
/// and returns the last answer. `check` runs at least once, and once more after the
/// timeout is noticed, so a slow check is not cut short; a test asserts on the answer:
///
/// ```text
/// let lease = eventually(Duration::from_secs(10), || async {
///     let lease = broker.get(&path).await;
///     if lease["state"] == "revoked" { Ok(lease) } else { Err(lease) }
/// })
/// .await
/// .unwrap_or_else(|last| panic!("never revoked: {last}"));
/// ```
///
/// `check` may be `|| async { … }` or an async closure, `async || { … }`; the latter may
/// borrow mutably what it captures (a session it queries).
pub async fn eventually<T: Settled>(timeout: Duration, check: impl AsyncFnMut() -> T) -> T {
    eventually_every(timeout, INTERVAL, check).await
}

/// [`eventually`], checking every `interval` (for checks that are expensive themselves).
pub async fn eventually_every<T: Settled>(
    timeout: Duration,
    interval: Duration,
    mut check: impl AsyncFnMut() -> T,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = check().await;
        if answer.settled() || Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(interval).await;
    }
}

/// [`eventually`] for synchronous tests: blocks the thread between checks.
pub fn eventually_blocking<T: Settled>(timeout: Duration, mut check: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = check();
        if answer.settled() || Instant::now() >= deadline {
            return answer;
        }
        std::thread::sleep(INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_settled_answer() {
        let mut n = 0;
        let got = eventually(Duration::from_secs(5), || {
            n += 1;
            let seen = n;
            async move { (seen >= 3).then_some(seen) }
        })
        .await;
        assert_eq!(got, Some(3));
    }

    #[tokio::test]
    async fn returns_the_last_answer_when_time_is_up() {
        let got: Result<(), &str> = eventually(Duration::from_millis(120), || async {
            Err("still waiting")
        })
        .await;
        assert_eq!(got, Err("still waiting"));
    }

    #[test]
    fn blocking_checks_at_least_once() {
        let mut checks = 0;
        let done = eventually_blocking(Duration::ZERO, || {
            checks += 1;
            false
        });
        assert!(!done);
        assert_eq!(checks, 1);
    }
}
