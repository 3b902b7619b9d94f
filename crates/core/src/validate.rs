//! Input rules shared by the API, the CLI and the stores.

use crate::CoreError;

/// Longest purpose text; longer is almost always a pasted document, not a reason.
pub const MAX_PURPOSE_BYTES: usize = 1024;
pub const MAX_NAME_LEN: usize = 64;
pub const MAX_TASK_LEN: usize = 256;

/// Names of identities, targets and actions: `[a-z0-9][a-z0-9._-]*`, at most 64 bytes.
/// Kept narrow so names are safe in usernames, URLs, logs and Cedar entity ids.
pub fn name(field: &str, value: &str) -> Result<(), CoreError> {
    if value.is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_LEN {
        return Err(CoreError::invalid(
            field,
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    let mut chars = value.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok
        || !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
    {
        return Err(CoreError::invalid(
            field,
            "must start with a lowercase letter or digit and contain only a-z, 0-9, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// Free text with a byte limit, no control characters (they corrupt logs and terminals)
/// and no invisible or direction-changing characters (they make a printed value read
/// differently from what is stored: a task of one zero-width space looks empty, U+202E
/// reverses what follows it). A required value must have visible content.
pub fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), CoreError> {
    if required && !has_visible_content(value) {
        return Err(CoreError::invalid(field, "is required (visible text)"));
    }
    if value.len() > max {
        return Err(CoreError::invalid(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    check_characters(field, value)
}

/// Rejects control, line-separator, bidirectional-override and zero-width characters,
/// naming the first one as `U+XXXX` so the caller can find it.
pub fn check_characters(field: &str, value: &str) -> Result<(), CoreError> {
    match value.chars().find(|&c| is_hidden(c)) {
        None => Ok(()),
        Some(c) => Err(CoreError::invalid(
            field,
            format!(
                "must not contain control, invisible or direction-changing characters (found U+{:04X})",
                u32::from(c)
            ),
        )),
    }
}

/// Whether some character would show when printed.
pub fn has_visible_content(value: &str) -> bool {
    value.chars().any(|c| !c.is_whitespace() && !is_hidden(c))
}

/// Characters that do not print as themselves: C0/C1 controls, the Unicode line and
/// paragraph separators, bidirectional marks, embeddings, overrides and isolates,
/// zero-width and joiner characters, invisible operators, variation selectors, the BOM,
/// Hangul fillers and tag characters.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

/// Largest grant `context`, as compact JSON: policy facts, not documents.
pub const MAX_CONTEXT_BYTES: usize = 4096;
/// Deepest nesting of a grant `context`.
pub const MAX_CONTEXT_DEPTH: usize = 8;

/// A grant's `context`: bounded in size and depth, and every key and string value held to
/// the same character rules as other free text. The field named in an error is the path
/// to the offending value (`context.ticket`).
pub fn context(value: &serde_json::Map<String, serde_json::Value>) -> Result<(), CoreError> {
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_CONTEXT_BYTES {
        return Err(CoreError::invalid(
            "context",
            format!("must be at most {MAX_CONTEXT_BYTES} bytes as JSON, got {size}"),
        ));
    }
    for (key, v) in value {
        context_value(&format!("context.{}", printable_key(key)), key, v, 1)?;
    }
    Ok(())
}

fn context_value(
    path: &str,
    key: &str,
    value: &serde_json::Value,
    depth: usize,
) -> Result<(), CoreError> {
    use serde_json::Value;
    if depth > MAX_CONTEXT_DEPTH {
        return Err(CoreError::invalid(
            path,
            format!("nests deeper than {MAX_CONTEXT_DEPTH} levels"),
        ));
    }
    if !has_visible_content(key) {
        return Err(CoreError::invalid(path, "key must have visible text"));
    }
    check_characters(path, key)?;
    match value {
        Value::String(s) => check_characters(path, s),
        Value::Array(items) => items
            .iter()
            .try_for_each(|item| context_value(path, key, item, depth + 1)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            context_value(&format!("{path}.{}", printable_key(k)), k, v, depth + 1)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// A key as it may appear in an error message: hidden characters escaped, length bounded.
fn printable_key(key: &str) -> String {
    escape_hidden(&key.chars().take(64).collect::<String>())
}

/// Escapes hidden characters as `\u{XXXX}`, for printing stored text that predates the
/// character rules (or comes from elsewhere) without letting it act on a terminal.
pub fn escape_hidden(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if is_hidden(c) {
            out.push_str(&format!("\\u{{{:04X}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

pub fn purpose(value: &str) -> Result<(), CoreError> {
    text("purpose", value, MAX_PURPOSE_BYTES, true)
}

pub fn task(value: &str) -> Result<(), CoreError> {
    text("task", value, MAX_TASK_LEN, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is the point
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "billing-deployer", "pg.main_2", "0x"] {
            assert!(name("n", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", "ä", &"a".repeat(65)] {
            assert!(name("n", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn texts() {
        assert!(purpose("deploy v1.2").is_ok());
        assert!(purpose("").is_err());
        assert!(purpose(&"x".repeat(1025)).is_err());
        assert!(purpose(&"x".repeat(1024)).is_ok());
        assert!(task("t\n1").is_err());
    }

    /// The characters the security review used, and their relatives: each is refused in
    /// purpose, task and context, and a value of only hidden characters is not "present".
    #[test]
    fn hidden_characters_are_refused() {
        for c in [
            '\u{202E}',
            '\u{202A}',
            '\u{2066}',
            '\u{200E}',
            '\u{2028}',
            '\u{2029}',
            '\u{200B}',
            '\u{200D}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{0000}',
            '\u{001B}',
            '\u{007F}',
            '\u{0085}',
            '\u{E0041}',
        ] {
            let value = format!("deploy{c}1.2");
            assert!(purpose(&value).is_err(), "purpose U+{:04X}", u32::from(c));
            assert!(task(&value).is_err(), "task U+{:04X}", u32::from(c));
            let mut ctx = serde_json::Map::new();
            ctx.insert("ticket".into(), serde_json::Value::String(value.clone()));
            let err = context(&ctx).unwrap_err();
            assert!(err.to_string().starts_with("context.ticket:"), "{err}");
            let mut ctx = serde_json::Map::new();
            ctx.insert(value, serde_json::Value::Bool(true));
            assert!(context(&ctx).is_err(), "context key U+{:04X}", u32::from(c));
        }
        assert!(task("\u{200B}").is_err());
        assert!(task(" \u{200B}\u{FEFF} ").is_err());
        assert!(purpose("\u{2060}").is_err());
        // Visible text in any script is fine.
        assert!(task("release-1.2 (März) 发布 إصدار").is_ok());
        assert!(purpose("deploy 🚀").is_ok());
    }

    #[test]
    fn context_is_bounded() {
        let mut ctx = serde_json::Map::new();
        ctx.insert("blob".into(), serde_json::Value::String("x".repeat(5000)));
        assert!(context(&ctx)
            .unwrap_err()
            .to_string()
            .contains("at most 4096 bytes"));
        let mut deep = serde_json::json!(1);
        for _ in 0..10 {
            deep = serde_json::json!({ "a": deep });
        }
        let serde_json::Value::Object(deep) = deep else {
            unreachable!()
        };
        assert!(context(&deep).unwrap_err().to_string().contains("deeper"));
        let ok = serde_json::json!({"ticket": "CHG-1", "tags": ["a", "b"], "n": 3, "nested": {"x": null}});
        let serde_json::Value::Object(ok) = ok else {
            unreachable!()
        };
        assert!(context(&ok).is_ok());
    }

    #[test]
    fn hidden_characters_are_escaped_for_printing() {
        assert_eq!(escape_hidden("a\u{202E}b\u{1b}c"), "a\\u{202E}b\\u{001B}c");
    }
}
