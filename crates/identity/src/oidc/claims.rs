//! Claim lookup, glob patterns and binding-rule evaluation.

use serde_json::{Map, Value};

use super::config::OidcRule;

/// Looks up a claim by its configured name: a top-level claim, or a JSON pointer (leading
/// `/` implied) when the name contains `/` or `~`. Null counts as absent.
pub(crate) fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let found = if name.contains(['/', '~']) {
        let mut parts = name.split('/').map(unescape_pointer_token);
        let first = parts.next()?;
        let mut current = claims.get(first.as_str())?;
        for part in parts {
            current = match current {
                Value::Object(map) => map.get(part.as_str())?,
                Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        current
    } else {
        claims.get(name)?
    };
    (!found.is_null()).then_some(found)
}

/// RFC 6901 escaping: `~1` is `/`, `~0` is `~` (in that order).
fn unescape_pointer_token(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Whether a claim value matches a rule pattern (see [`OidcRule::claims`]).
pub(crate) fn value_matches(value: &Value, pattern: &str) -> bool {
    match value {
        Value::String(s) => glob_match(pattern, s),
        Value::Number(n) => glob_match(pattern, &n.to_string()),
        Value::Bool(b) => glob_match(pattern, if *b { "true" } else { "false" }),
        // e.g. `groups = ["a", "b"]`: a rule `groups = "a"` matches.
        Value::Array(items) => items
            .iter()
            .any(|v| !matches!(v, Value::Array(_)) && value_matches(v, pattern)),
        Value::Object(_) | Value::Null => false,
    }
}

/// `*` matches any run of characters, everything else matches itself.
///
/// Greedy with single-star backtracking: O(pattern × text) worst case, no recursion, so a
/// hostile claim cannot make matching explode.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Position of the last `*` seen and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star swallow one more character and retry after it.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether every claim condition of `rule` holds.
pub(crate) fn rule_matches(rule: &OidcRule, claims: &Map<String, Value>) -> bool {
    rule.claims.iter().all(|(name, pattern)| {
        lookup(claims, name).is_some_and(|value| value_matches(value, pattern))
    })
}

/// A NumericDate claim as whole seconds. Fractions are truncated (a token is not
/// accepted for a fraction of a second longer because of it: `exp` truncates down).
pub(crate) enum Numeric {
    Absent,
    Invalid,
    Secs(i64),
}

pub(crate) fn numeric_date(claims: &Map<String, Value>, name: &str) -> Numeric {
    match claims.get(name) {
        None | Some(Value::Null) => Numeric::Absent,
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Numeric::Secs(i)
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                // Saturating float-to-int conversion; absurd values then fail the range
                // checks as expired or not yet valid.
                Numeric::Secs(f.floor() as i64)
            } else {
                Numeric::Invalid
            }
        }
        Some(_) => Numeric::Invalid,
    }
}
