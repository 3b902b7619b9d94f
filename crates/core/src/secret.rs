//! Secret values: zeroized on drop, printed as `[redacted]`, compared in constant time.
//!
//! There is deliberately no `Serialize`, `Display` of the content or `Deref`: a secret
//! leaves this type only through [`SecretString::expose`], which is easy to grep for.

use std::fmt;

use zeroize::Zeroizing;

/// A secret text (token, password, DSN with a password).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: String) -> Self {
        SecretString(Zeroizing::new(value))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Constant-time equality, for checking presented secrets.
    pub fn ct_eq(&self, other: &str) -> bool {
        ring_ct_eq(self.0.as_bytes(), other.as_bytes())
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        SecretString::new(value)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Secrets arrive in requests (a target's admin URL), so they can be read from JSON; there
/// is deliberately no `Serialize`, so they cannot be written back out by accident.
impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretString::new)
    }
}

/// Writes a request's secret field as its text: the one way a secret goes out in JSON,
/// for the request types a client sends (the CLI sending a target's admin URL). A field
/// opts in with `#[serde(serialize_with = "mayfly_core::secret::expose_in_request")]`;
/// there is still no `Serialize`, so a response or a log cannot carry one by accident.
pub fn expose_in_request<S: serde::Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => s.serialize_some(secret.expose()),
        None => s.serialize_none(),
    }
}

/// Secret bytes (key material).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(value: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(value))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Constant-time byte comparison (length is not secret).
pub fn ring_ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // `black_box` keeps the optimiser from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

/// Fills a buffer from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], crate::seal::SealError> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| crate::seal::SealError::Random)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_content() {
        let s = SecretString::new("hunter2".into());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(format!("{:?}", SecretBytes::new(vec![1, 2])), "[redacted]");
        assert!(s.ct_eq("hunter2"));
        assert!(!s.ct_eq("hunter3"));
        assert!(!s.ct_eq("hunter22"));
    }
}
