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

/// Free text with a byte limit and no control characters (they corrupt logs and terminals).
pub fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), CoreError> {
    if required && value.trim().is_empty() {
        return Err(CoreError::invalid(field, "is required"));
    }
    if value.len() > max {
        return Err(CoreError::invalid(
            field,
            format!("must be at most {max} bytes, got {}", value.len()),
        ));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(CoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub fn purpose(value: &str) -> Result<(), CoreError> {
    text("purpose", value, MAX_PURPOSE_BYTES, true)
}

pub fn task(value: &str) -> Result<(), CoreError> {
    text("task", value, MAX_TASK_LEN, true)
}

#[cfg(test)]
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
}
