//! How a command fails, and the exit code each way of failing gets. The codes are part of
//! the CLI's interface (a script branches on "denied" versus "broker down"): they are
//! listed in `mayfly --help` ([`EXIT_CODES`]) and in the README.

use std::fmt;

/// Anything not named below.
pub const OTHER: u8 = 1;
/// The command line is wrong (clap uses 2 for its own errors too).
pub const USAGE: u8 = 2;
/// The broker cannot be reached, or did not answer in time.
pub const UNREACHABLE: u8 = 3;
/// Not authenticated, or not allowed (HTTP 401, 403; a grant denied by policy).
pub const DENIED: u8 = 4;
/// No such identity, target, grant or lease (HTTP 404).
pub const NOT_FOUND: u8 = 5;
/// The request conflicts with the current state (HTTP 409).
pub const CONFLICT: u8 = 6;
/// The grant waits for approval: no credential yet.
pub const PENDING_APPROVAL: u8 = 7;
/// A check found a problem: the audit chain is broken.
pub const CHECK_FAILED: u8 = 8;

/// The after-text of `mayfly --help`, from the constants above.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other failure (a failed policy test or validation, a target that failed)
  2  usage: the command line is wrong
  3  the broker cannot be reached, or did not answer in time
  4  denied: not authenticated, or not allowed (HTTP 401, 403)
  5  not found (HTTP 404)
  6  conflict with the current state (HTTP 409)
  7  the grant waits for approval: no credential yet
  8  a check failed: the audit chain is broken";

/// A failure a script may want to tell apart; anything else exits [`OTHER`].
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Unreachable(String),
    /// The broker answered with an error status; `message` is its problem as one line.
    Api {
        status: u16,
        message: String,
    },
    PendingApproval(String),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => USAGE,
            Failure::Unreachable(_) => UNREACHABLE,
            Failure::Api {
                status: 401 | 403, ..
            } => DENIED,
            Failure::Api { status: 404, .. } => NOT_FOUND,
            Failure::Api { status: 409, .. } => CONFLICT,
            Failure::Api { .. } => OTHER,
            Failure::PendingApproval(_) => PENDING_APPROVAL,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m)
            | Failure::Unreachable(m)
            | Failure::Api { message: m, .. }
            | Failure::PendingApproval(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

/// A wrong command line that clap could not see (two flags that only make sense apart, an
/// id of the wrong shape).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Failure::Usage(message.into()).into()
}

/// Whether `e` is the broker answering 404.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(failure_of(e), Some(Failure::Api { status: 404, .. }))
}

fn failure_of(e: &anyhow::Error) -> Option<&Failure> {
    e.chain().find_map(|cause| cause.downcast_ref::<Failure>())
}

/// The exit code for an error a command returned.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    failure_of(e).map_or(OTHER, Failure::code)
}

/// An error as the one plain line `mayfly` prints: its causes joined with `: `, except a
/// cause that repeats what is already said (`cannot bind 127.0.0.1:8740: Address already
/// in use` over an `Address already in use` cause), and with line breaks folded.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() && text.contains(&line) {
            // The cause restates everything so far and adds to it.
            line = text;
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// A message from serde (the broker's or our own) as a sentence: no `at line 1 column 25`,
/// no backticks; `unknown variant `x`, expected one of `a`, `b`` reads `"x": expected one
/// of a, b`.
pub fn humanize(message: &str) -> String {
    let mut text = strip_location(message).to_string();
    if let Some(start) = text.find("unknown variant `") {
        let rest = &text[start + "unknown variant `".len()..];
        if let Some((value, tail)) = rest.split_once('`') {
            let expected = tail
                .trim_start_matches(',')
                .trim()
                .trim_start_matches("expected ")
                .replace('`', "");
            text = format!("{}{value:?}: expected {expected}", &text[..start]);
        }
    }
    text.replace('`', "\"")
}

/// `…, expected one of a, b at line 1 column 25` without its position (meaningless to
/// someone who typed a flag, not a JSON document).
fn strip_location(message: &str) -> &str {
    if let Some(at) = message.rfind(" at line ") {
        let tail = &message[at + " at line ".len()..];
        let mut parts = tail.split(" column ");
        let line_ok = parts
            .next()
            .is_some_and(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()));
        let column_ok = parts
            .next()
            .is_some_and(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_digit()));
        if line_ok && column_ok && parts.next().is_none() {
            return &message[..at];
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_cause_is_said_once() {
        let e = anyhow::anyhow!("Address already in use (os error 98)")
            .context("cannot bind 127.0.0.1:8740: Address already in use (os error 98)");
        assert_eq!(
            one_line(&e),
            "cannot bind 127.0.0.1:8740: Address already in use (os error 98)"
        );
        let e = anyhow::anyhow!("permission denied").context("cannot read config a.toml");
        assert_eq!(one_line(&e), "cannot read config a.toml: permission denied");
        let e = anyhow::anyhow!("two\n  lines").context("first");
        assert_eq!(one_line(&e), "first: two lines");
    }

    #[test]
    fn serde_messages_read_as_sentences() {
        assert_eq!(
            humanize(
                "reason: unknown variant `later`, expected one of `task_complete`, `admin` at line 1 column 25"
            ),
            "reason: \"later\": expected one of task_complete, admin"
        );
        assert_eq!(
            humanize("unknown field `colour`, expected `ttl` at line 1 column 9"),
            "unknown field \"colour\", expected \"ttl\""
        );
        assert_eq!(humanize("ttl: must be positive"), "ttl: must be positive");
        assert_eq!(humanize("meet at line 5"), "meet at line 5");
    }

    #[test]
    fn failures_map_to_their_codes() {
        let api = |status| Failure::Api {
            status,
            message: String::new(),
        };
        let codes: Vec<u8> = [api(401), api(403), api(404), api(409), api(400), api(502)]
            .iter()
            .map(Failure::code)
            .collect();
        assert_eq!(codes, [DENIED, DENIED, NOT_FOUND, CONFLICT, OTHER, OTHER]);
        let e = anyhow::Error::from(api(404)).context("revoking");
        assert_eq!(exit_code(&e), NOT_FOUND);
        assert!(is_not_found(&e));
        assert_eq!(exit_code(&anyhow::anyhow!("x")), OTHER);
        assert_eq!(exit_code(&usage("x")), USAGE);
    }
}
