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
/// - the store fails: `Rejected(KeysUnavailable("operator token store unavailable"))`.
///   There is no dedicated "backend unavailable" rejection in core; `keys_unavailable`
///   is the code that already means "could not check the credential right now, retry",
///   and the server maps it to 503 rather than 401, which is what a store outage is.
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
                AuthOutcome::Accepted(Proven::Operator { name: record.name })
            }
            Ok(_) => AuthOutcome::Rejected(AuthRejection::BadOperatorToken),
            Err(e) => {
                // The store error never contains the token (only its hash was sent).
                tracing::warn!(error = %e, "operator token lookup failed");
                AuthOutcome::Rejected(AuthRejection::KeysUnavailable(
                    "operator token store unavailable".into(),
                ))
            }
        }
    }
}
