//! Operator tokens: the credential for administering Mayfly (creating identities and
//! targets, revoking, reading the audit log). They are never accepted as a workload
//! credential; [`OperatorTokenAuthenticator`] only ever proves [`Proven::Operator`].
//!
//! A token is `mfy_op_` followed by the unpadded base64url encoding of 32 bytes from the
//! operating system's CSPRNG (256 bits, so guessing is hopeless). The broker keeps only
//! the token's SHA-256: a leaked database does not yield usable tokens, and because the
//! token has full entropy a plain (unsalted, fast) hash is sufficient — there is nothing
//! to brute-force.

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mayfly_core::auth::{AuthOutcome, AuthRejection, Authenticator, Presented, Proven};
use mayfly_core::secret::{random_bytes, ring_ct_eq, SecretBytes, SecretString};
use mayfly_core::store::Store;

/// Every operator token starts with this, so it is recognisable in logs and by secret
/// scanners, and so the authenticator chain can route it without a database lookup.
pub const OPERATOR_TOKEN_PREFIX: &str = "mfy_op_";

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Length of the base64url (no padding) encoding of [`TOKEN_BYTES`].
const TOKEN_B64_LEN: usize = 43;

#[derive(Debug, thiserror::Error)]
pub enum OperatorTokenError {
    /// The OS CSPRNG failed; no token can be minted safely.
    #[error("the operating system's random number generator failed")]
    Random,
}

/// Mints a new operator token. Returns the token (show it to the operator once, never
/// store it) and its SHA-256 (store this, e.g. in an
/// [`OperatorTokenRecord`](mayfly_core::store::OperatorTokenRecord)).
pub fn generate_operator_token() -> Result<(SecretString, Vec<u8>), OperatorTokenError> {
    // Held as SecretBytes so the heap copy is wiped on drop.
    let bytes = SecretBytes::new(
        random_bytes::<TOKEN_BYTES>()
            .map_err(|_| OperatorTokenError::Random)?
            .to_vec(),
    );
    let token = SecretString::new(format!(
        "{OPERATOR_TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(bytes.expose())
    ));
    let hash = hash_operator_token(token.expose());
    Ok((token, hash))
}

/// The SHA-256 of an operator token's full text (prefix included), as stored.
pub fn hash_operator_token(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// Whether `token` has the exact shape of an operator token (prefix plus 43 base64url
/// characters). Used to refuse garbage without touching the store.
pub fn is_well_formed_operator_token(token: &str) -> bool {
    token
        .strip_prefix(OPERATOR_TOKEN_PREFIX)
        .is_some_and(|rest| {
            rest.len() == TOKEN_B64_LEN
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Accepts bearer tokens starting with [`OPERATOR_TOKEN_PREFIX`] whose SHA-256 is in the
/// store.
///
/// Outcomes:
/// - no bearer, or a bearer without the prefix: `NotMine` (another authenticator's);
/// - prefix but wrong shape, or hash not in the store: `Rejected(BadOperatorToken)`;
/// - the store fails: `Rejected(Unavailable("operator token store unavailable"))`.
///   The server answers that with 503, not 401: a store outage is not the caller's fault.
pub struct OperatorTokenAuthenticator {
    store: Arc<dyn Store>,
}

impl OperatorTokenAuthenticator {
    pub fn new(store: Arc<dyn Store>) -> Self {
        OperatorTokenAuthenticator { store }
    }
}

#[async_trait]
impl Authenticator for OperatorTokenAuthenticator {
    fn name(&self) -> &'static str {
        "operator-token"
    }

    async fn authenticate(&self, presented: &Presented<'_>) -> AuthOutcome {
        let Some(token) = presented.bearer else {
            return AuthOutcome::NotMine;
        };
        if !token.starts_with(OPERATOR_TOKEN_PREFIX) {
            return AuthOutcome::NotMine;
        }
        if !is_well_formed_operator_token(token) {
            return AuthOutcome::Rejected(AuthRejection::BadOperatorToken);
        }
        // The lookup is by hash, so its timing depends only on the hash, which an attacker
        // cannot steer towards a stored one; the second comparison below is constant-time
        // so that a store whose index lookup is lenient (prefix match, case folding) can
        // never turn a near-miss into an acceptance.
        let hash = hash_operator_token(token);
        match self.store.find_operator_token(&hash).await {
            Ok(Some(record)) if ring_ct_eq(&record.token_sha256, &hash) => {
                // Whoever presents the token held it once: telling them why it no longer
                // works (rather than "not valid") saves a hunt for a typo.
                if let Some(at) = record.revoked_at {
                    return AuthOutcome::Rejected(AuthRejection::OperatorTokenRevoked {
                        name: record.name,
                        at: rfc3339(at),
                    });
                }
                match record.expires_at {
                    Some(at) if at <= mayfly_core::now() => {
                        AuthOutcome::Rejected(AuthRejection::OperatorTokenExpired {
                            name: record.name,
                            at: rfc3339(at),
                        })
                    }
                    _ => AuthOutcome::Accepted(Proven::Operator { name: record.name }),
                }
            }
            Ok(_) => AuthOutcome::Rejected(AuthRejection::BadOperatorToken),
            Err(e) => {
                // The store error never contains the token (only its hash was sent).
                tracing::warn!(error = %e, "operator token lookup failed");
                AuthOutcome::Rejected(AuthRejection::Unavailable(
                    "operator token store unavailable".into(),
                ))
            }
        }
    }
}

fn rfc3339(t: mayfly_core::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::Ordering;

    use mayfly_core::store::OperatorTokenRecord;

    use super::*;
    use crate::test_store::TokenStore;

    async fn store_with(name: &str) -> (Arc<TokenStore>, SecretString) {
        let store = Arc::new(TokenStore::default());
        let (token, hash) = generate_operator_token().unwrap();
        store
            .add_operator_token(&OperatorTokenRecord::new(
                name,
                hash,
                mayfly_core::now(),
                None,
                "test",
            ))
            .await
            .unwrap();
        (store, token)
    }

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let (token, hash) = generate_operator_token().unwrap();
            let text = token.expose();
            assert!(text.starts_with("mfy_op_"));
            assert_eq!(text.len(), OPERATOR_TOKEN_PREFIX.len() + TOKEN_B64_LEN);
            assert!(is_well_formed_operator_token(text));
            assert_eq!(URL_SAFE_NO_PAD.decode(&text[7..]).unwrap().len(), 32);
            assert_eq!(hash.len(), 32);
            assert_eq!(hash, hash_operator_token(text));
            assert!(seen.insert(text.to_string()), "tokens must not repeat");
            // The secret never prints.
            assert_eq!(format!("{token:?}"), "[redacted]");
        }
    }

    #[tokio::test]
    async fn outcomes() {
        let (store, token) = store_with("alice").await;
        let auth = OperatorTokenAuthenticator::new(store.clone());
        let (unknown, _) = generate_operator_token().unwrap();
        let mut flipped = token.expose().to_string();
        let last = flipped.pop().unwrap();
        flipped.push(if last == 'A' { 'B' } else { 'A' });

        enum Want {
            Operator(&'static str),
            Rejected(&'static str),
            NotMine,
        }
        let cases: Vec<(&str, Option<String>, Want)> = vec![
            (
                "valid",
                Some(token.expose().into()),
                Want::Operator("alice"),
            ),
            (
                "unknown token",
                Some(unknown.expose().into()),
                Want::Rejected("bad_operator_token"),
            ),
            (
                "one character changed",
                Some(flipped),
                Want::Rejected("bad_operator_token"),
            ),
            (
                "prefix only",
                Some("mfy_op_".into()),
                Want::Rejected("bad_operator_token"),
            ),
            (
                "truncated",
                Some(token.expose()[..30].into()),
                Want::Rejected("bad_operator_token"),
            ),
            (
                "extra characters",
                Some(format!("{}x", token.expose())),
                Want::Rejected("bad_operator_token"),
            ),
            (
                "bad alphabet",
                Some(format!("mfy_op_{}", "+".repeat(43))),
                Want::Rejected("bad_operator_token"),
            ),
            (
                "a JWT",
                Some("eyJhbGciOiJFZERTQSJ9.e30.c2ln".into()),
                Want::NotMine,
            ),
            ("other prefix", Some("mfy_xx_abc".into()), Want::NotMine),
            ("no bearer", None, Want::NotMine),
        ];
        for (name, bearer, want) in cases {
            let outcome = auth
                .authenticate(&Presented {
                    bearer: bearer.as_deref(),
                })
                .await;
            match (outcome, want) {
                (AuthOutcome::Accepted(Proven::Operator { name: got }), Want::Operator(n)) => {
                    assert_eq!(got, n, "{name}")
                }
                (AuthOutcome::Rejected(r), Want::Rejected(code)) => {
                    assert_eq!(r.code(), code, "{name}");
                    let bearer = bearer.unwrap();
                    assert!(!r.to_string().contains(bearer.as_str()), "{name} leaks");
                }
                (AuthOutcome::NotMine, Want::NotMine) => {}
                (other, _) => panic!("{name}: unexpected {other:?}"),
            }
        }
        // Malformed tokens are refused without a store round-trip.
        assert_eq!(store.lookups.load(Ordering::SeqCst), 3);
    }

    /// A known token past its expiry or revoked is refused with that reason, and the
    /// reason names the token and when, never its text.
    #[tokio::test]
    async fn expired_and_revoked_tokens_are_refused_with_their_reason() {
        let store = Arc::new(TokenStore::default());
        let now = mayfly_core::now();
        let (expired, hash) = generate_operator_token().unwrap();
        let mut record = OperatorTokenRecord::new(
            "ci",
            hash,
            now - time::Duration::days(2),
            Some(now - time::Duration::days(1)),
            "test",
        );
        store.add_operator_token(&record).await.unwrap();
        let (revoked, hash) = generate_operator_token().unwrap();
        record = OperatorTokenRecord::new("old", hash, now, None, "test");
        record.revoked_at = Some(now);
        store.add_operator_token(&record).await.unwrap();
        let (fresh, hash) = generate_operator_token().unwrap();
        record = OperatorTokenRecord::new(
            "fresh",
            hash,
            now,
            Some(now + time::Duration::days(1)),
            "test",
        );
        store.add_operator_token(&record).await.unwrap();
        let auth = OperatorTokenAuthenticator::new(store);
        for (token, want) in [
            (&expired, "operator_token_expired"),
            (&revoked, "operator_token_revoked"),
        ] {
            match auth
                .authenticate(&Presented {
                    bearer: Some(token.expose()),
                })
                .await
            {
                AuthOutcome::Rejected(r) => {
                    assert_eq!(r.code(), want);
                    let text = r.to_string();
                    assert!(text.contains(" at 20"), "{text}");
                    assert!(!text.contains(token.expose()), "{text}");
                }
                other => panic!("{want}: unexpected {other:?}"),
            }
        }
        assert!(matches!(
            auth.authenticate(&Presented {
                bearer: Some(fresh.expose())
            })
            .await,
            AuthOutcome::Accepted(Proven::Operator { .. })
        ));
    }

    #[tokio::test]
    async fn store_failure_is_unavailable_not_a_bad_token() {
        let (store, token) = store_with("alice").await;
        store.down.store(true, Ordering::SeqCst);
        let auth = OperatorTokenAuthenticator::new(store);
        match auth
            .authenticate(&Presented {
                bearer: Some(token.expose()),
            })
            .await
        {
            AuthOutcome::Rejected(r) => {
                assert_eq!(r.code(), "unavailable");
                assert!(!r.to_string().contains(token.expose()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
