//! Password verifiers: what the providers send to a database instead of a password, so
//! that the plaintext never appears in SQL text, and so never in the server's statement
//! log (PostgreSQL logs a failing statement in full, and every DDL statement where
//! `log_statement = 'ddl'`).
//!
//! - PostgreSQL: a SCRAM-SHA-256 verifier (RFC 5802, RFC 7677) in the form PostgreSQL
//!   keeps in `pg_authid.rolpassword`,
//!   `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (standard base64). A
//!   password literal already in this form is stored as it is, whatever
//!   `password_encryption` says.
//! - MariaDB: the `mysql_native_password` hash `*<UPPERHEX(SHA1(SHA1(password)))>`, for
//!   `IDENTIFIED BY PASSWORD '…'`.
//!
//! - Redis: `#` and the lower-case hex SHA-256 of the password, which `ACL SETUSER`
//!   takes in place of `>password` (Redis keeps only that hash anyway).
//! - RabbitMQ: `rabbit_password_hashing_sha256`, base64 of a 4-byte random salt followed
//!   by SHA-256(salt ‖ password), for the management API's `password_hash`.
//!
//! Verifiers are [`SecretString`]s too: they are not the password, but they allow an
//! offline guessing attack and (MariaDB) a replay given one captured handshake.

use std::num::NonZeroU32;

use base64::Engine as _;
use mayfly_core::provider::ProviderError;
use mayfly_core::secret::{random_bytes, SecretString};
use ring::{digest, hmac, pbkdf2};

/// PostgreSQL's own default (`scram_iterations`), which its clients expect.
pub const SCRAM_ITERATIONS: NonZeroU32 = match NonZeroU32::new(4096) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};
/// PostgreSQL's salt length (`SCRAM_DEFAULT_SALT_LEN`).
const SCRAM_SALT_LEN: usize = 16;

/// A SCRAM-SHA-256 verifier of `password` with a fresh random salt.
///
/// Only for passwords of printable ASCII: SASLprep (which PostgreSQL and its clients apply
/// before hashing) leaves those unchanged, so the verifier matches what a client proves.
/// Anything else is refused rather than hashed into a verifier no login would match.
pub fn scram_sha256(password: &SecretString) -> Result<SecretString, ProviderError> {
    if !password
        .expose()
        .chars()
        .all(|c| c == ' ' || c.is_ascii_graphic())
    {
        return Err(ProviderError::Failed(
            "a SCRAM verifier is only computed for printable ASCII passwords".into(),
        ));
    }
    let salt = random_bytes::<SCRAM_SALT_LEN>()
        .map_err(|_| ProviderError::Failed("the system random generator failed".into()))?;
    Ok(scram_sha256_with(password, &salt, SCRAM_ITERATIONS))
}

/// The verifier for a given salt and iteration count (the tests compare it with
/// PostgreSQL's own).
pub fn scram_sha256_with(
    password: &SecretString,
    salt: &[u8],
    iterations: NonZeroU32,
) -> SecretString {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.expose().as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    // The salted password is as good as the password for logging in: wipe the copy.
    salted.fill(0);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    SecretString::new(format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key.as_ref()),
        b64.encode(server_key.as_ref())
    ))
}

/// The `mysql_native_password` hash of `password`: `*` and 40 upper-case hex digits.
pub fn mysql_native(password: &SecretString) -> SecretString {
    let once = digest::digest(
        &digest::SHA1_FOR_LEGACY_USE_ONLY,
        password.expose().as_bytes(),
    );
    let twice = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, once.as_ref());
    let mut out = String::with_capacity(41);
    out.push('*');
    for b in twice.as_ref() {
        out.push_str(&format!("{b:02X}"));
    }
    SecretString::new(out)
}

/// The `ACL SETUSER` rule that sets `password` by its hash: `#<sha256 hex>`.
pub fn redis_sha256(password: &SecretString) -> SecretString {
    let hash = digest::digest(&digest::SHA256, password.expose().as_bytes());
    let mut out = String::with_capacity(65);
    out.push('#');
    for b in hash.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    SecretString::new(out)
}

/// RabbitMQ's name for the hash [`rabbitmq_sha256`] makes (`hashing_algorithm`).
pub const RABBITMQ_HASHING: &str = "rabbit_password_hashing_sha256";

/// A `rabbit_password_hashing_sha256` hash of `password` with a fresh random salt.
pub fn rabbitmq_sha256(password: &SecretString) -> Result<SecretString, ProviderError> {
    let salt = random_bytes::<4>()
        .map_err(|_| ProviderError::Failed("the system random generator failed".into()))?;
    Ok(rabbitmq_sha256_with(password, salt))
}

/// The hash for a given salt (the tests compare it with RabbitMQ's own).
pub fn rabbitmq_sha256_with(password: &SecretString, salt: [u8; 4]) -> SecretString {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&salt);
    ctx.update(password.expose().as_bytes());
    let hash = ctx.finish();
    let mut blob = Vec::with_capacity(36);
    blob.extend_from_slice(&salt);
    blob.extend_from_slice(hash.as_ref());
    SecretString::new(base64::engine::general_purpose::STANDARD.encode(blob))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::new(v.into())
    }

    #[test]
    fn scram_matches_a_verifier_postgresql_made() {
        // From PostgreSQL 15: SET password_encryption = 'scram-sha-256';
        // CREATE ROLE v PASSWORD 'pencil'; SELECT rolpassword FROM pg_authid WHERE rolname = 'v';
        let pg = "SCRAM-SHA-256$4096:SvXgg+gRbYAnwmsQoUiJMA==$uss8ceeUslwB08TP4UgYWQgwVoYcV1HvRw1KL+ogmOI=:a4vOkJydQNea445tXkPPWCeQU6eqpQ52rcgiQV3WScU=";
        let salt = base64::engine::general_purpose::STANDARD
            .decode("SvXgg+gRbYAnwmsQoUiJMA==")
            .unwrap();
        assert_eq!(
            scram_sha256_with(&s("pencil"), &salt, SCRAM_ITERATIONS).expose(),
            pg
        );
    }

    #[test]
    fn scram_salts_are_fresh_and_the_password_is_not_inside() {
        let pw = s("Xy7pQ2mN9vB4cD8fG1hJ3kL5zW6tR0sA");
        let a = scram_sha256(&pw).unwrap();
        let b = scram_sha256(&pw).unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("SCRAM-SHA-256$4096:"));
        assert!(!a.expose().contains(pw.expose()));
        // No quote or backslash: safe inside a SQL string literal as it is.
        assert!(!a.expose().contains(['\'', '\\']));
        assert!(scram_sha256(&s("pässword")).is_err());
        assert!(scram_sha256(&s("a\nb")).is_err());
    }

    #[test]
    fn redis_and_rabbitmq_hashes() {
        // `ACL SETUSER u >pencil` then `ACL GETUSER u` on Redis 7.0.
        assert_eq!(
            redis_sha256(&s("pencil")).expose(),
            "#13809668fb436386706f67dcb052ed584a04ba16a8c02a17d66d34c30fceda21"
        );
        let pw = s("Xy7pQ2mN9vB4cD8fG1hJ3kL5zW6tR0sA");
        let a = rabbitmq_sha256(&pw).unwrap();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(a.expose())
            .unwrap();
        assert_eq!(blob.len(), 36);
        let salt: [u8; 4] = blob[..4].try_into().unwrap();
        assert_eq!(rabbitmq_sha256_with(&pw, salt).expose(), a.expose());
        assert_ne!(rabbitmq_sha256(&pw).unwrap().expose(), a.expose());
    }

    #[test]
    fn mysql_native_matches_the_server_function() {
        // SELECT PASSWORD('password') on MariaDB 10.11.
        assert_eq!(
            mysql_native(&s("password")).expose(),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }
}
