//! Signing keys: generation, sealed persistence, rotation, JWKS, JWT signing and checking.
//!
//! Ed25519 via ring. The private key lives in the store sealed under the master key; the
//! active key signs, retired keys stay published until every token they signed has
//! expired (rotation time + the longest token TTL). Every replica reloads the key set from
//! the store, so a rotation on one is seen by all.

use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use mayfly_core::audit::{AuditDraft, AuditKind};
use mayfly_core::checkpoint::{
    jwk_thumbprint, Checkpoint, CheckpointClaims, AUDIT_KEY_USE, CHECKPOINT_TYPE,
};
use mayfly_core::duration::Ttl;
use mayfly_core::seal::MasterKey;
use mayfly_core::store::{SigningKeyRecord, Store, StoreError};
use mayfly_core::OffsetDateTime;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot unseal signing key {kid}: {source}")]
    Unseal {
        kid: String,
        source: mayfly_core::seal::SealError,
    },
    #[error("signing key {0} is not a valid Ed25519 key")]
    BadKey(String),
    #[error("key generation failed")]
    Generate,
    #[error("no active signing key")]
    NoActiveKey,
}

struct ActiveKey {
    kid: String,
    pair: Ed25519KeyPair,
}

struct KeySet {
    active: ActiveKey,
    /// (kid, public key bytes) of every published key, active first.
    published: Vec<(String, Vec<u8>)>,
    jwks: serde_json::Value,
}

pub struct Keyring {
    store: Arc<dyn Store>,
    master: Arc<MasterKey>,
    /// Retired keys stay published for this long: the longest a token may live.
    token_max_ttl: Ttl,
    set: RwLock<Arc<KeySet>>,
}

/// Why a presented token was not accepted by [`Keyring::verify`].
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenCheckError {
    #[error("not a JWT")]
    Malformed,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    /// Signed by the broker, but a different kind of token (its `typ`): an access token is
    /// not a task token, nor the other way round.
    #[error("not a token of this kind")]
    WrongType,
}

/// The `typ` of an access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";

impl Keyring {
    /// Loads the key set, creating the first key on first start.
    pub async fn load_or_create(
        store: Arc<dyn Store>,
        master: Arc<MasterKey>,
        token_max_ttl: Ttl,
    ) -> Result<Keyring, KeyError> {
        let mut records = token_keys(store.list_signing_keys().await?);
        if !records.iter().any(|r| r.retired_at.is_none()) {
            let record = new_key_record(&master, mayfly_core::now())?;
            let event = AuditDraft::new(AuditKind::KeyCreated, "system:bootstrap")
                .detail(serde_json::json!({"kid": record.kid, "alg": "EdDSA"}));
            // Another replica may have created one at the same moment; either key works,
            // and the reload below picks whichever is active.
            match store.add_signing_key(&record, None, event).await {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            records = token_keys(store.list_signing_keys().await?);
        }
        let set = build_set(&master, &records, mayfly_core::now())?;
        Ok(Keyring {
            store,
            master,
            token_max_ttl,
            set: RwLock::new(Arc::new(set)),
        })
    }

    fn current(&self) -> Arc<KeySet> {
        match self.set.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads keys from the store (rotation by another replica; expiry of retired keys).
    pub async fn reload(&self) -> Result<(), KeyError> {
        let records = token_keys(self.store.list_signing_keys().await?);
        let set = build_set(&self.master, &records, mayfly_core::now())?;
        match self.set.write() {
            Ok(mut guard) => *guard = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        Ok(())
    }

    /// Makes a new active key; the old one is published until its last token expires.
    pub async fn rotate(&self, actor: &str) -> Result<String, KeyError> {
        let now = mayfly_core::now();
        let record = new_key_record(&self.master, now)?;
        let publish_until = now + self.token_max_ttl.as_time();
        let old = self.active_kid();
        let event = AuditDraft::new(AuditKind::KeyRotated, actor).detail(serde_json::json!({
            "kid": record.kid,
            "previous_kid": old,
            "previous_published_until": publish_until.format(&time::format_description::well_known::Rfc3339).ok(),
        }));
        self.store
            .add_signing_key(&record, Some(publish_until), event)
            .await?;
        self.reload().await?;
        Ok(record.kid)
    }

    pub fn active_kid(&self) -> String {
        self.current().active.kid.clone()
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.current().jwks.clone()
    }

    /// Signs claims as a compact JWS with `typ: at+jwt` (RFC 9068).
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, serde_json::Error> {
        self.sign_typed(ACCESS_TOKEN_TYPE, claims)
    }

    /// Signs claims as a compact JWS with the given `typ`, which [`Keyring::verify_typed`]
    /// requires: one key signs several kinds of token, and the type keeps them apart.
    pub fn sign_typed<T: serde::Serialize>(
        &self,
        typ: &str,
        claims: &T,
    ) -> Result<String, serde_json::Error> {
        let set = self.current();
        let header = serde_json::json!({"alg": "EdDSA", "typ": typ, "kid": set.active.kid});
        let mut token = B64.encode(serde_json::to_vec(&header)?);
        token.push('.');
        token.push_str(&B64.encode(serde_json::to_vec(claims)?));
        let signature = set.active.pair.sign(token.as_bytes());
        token.push('.');
        token.push_str(&B64.encode(signature.as_ref()));
        Ok(token)
    }

    /// Checks an access token's signature against the published keys and returns its
    /// claims. Expiry and revocation are the caller's to check.
    pub fn verify<T: DeserializeOwned>(&self, token: &str) -> Result<T, TokenCheckError> {
        self.verify_typed(ACCESS_TOKEN_TYPE, token)
    }

    /// [`Keyring::verify`] for a token of type `typ` (the header's `typ`).
    pub fn verify_typed<T: DeserializeOwned>(
        &self,
        typ: &str,
        token: &str,
    ) -> Result<T, TokenCheckError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenCheckError::Malformed);
        };
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(h).map_err(|_| TokenCheckError::Malformed)?)
                .map_err(|_| TokenCheckError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA") {
            return Err(TokenCheckError::BadSignature);
        }
        let kid = header
            .get("kid")
            .and_then(|k| k.as_str())
            .ok_or(TokenCheckError::UnknownKey)?;
        let set = self.current();
        let (_, public) = set
            .published
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or(TokenCheckError::UnknownKey)?;
        let signature = B64.decode(s).map_err(|_| TokenCheckError::Malformed)?;
        let signed_len = h.len() + 1 + c.len();
        UnparsedPublicKey::new(&ED25519, public)
            .verify(&token.as_bytes()[..signed_len], &signature)
            .map_err(|_| TokenCheckError::BadSignature)?;
        // Checked after the signature, so only the broker's own tokens learn their type.
        if header.get("typ").and_then(|t| t.as_str()) != Some(typ) {
            return Err(TokenCheckError::WrongType);
        }
        serde_json::from_slice(&B64.decode(c).map_err(|_| TokenCheckError::Malformed)?)
            .map_err(|_| TokenCheckError::Malformed)
    }
}

/// The token signing keys among the stored keys: never the audit checkpoint key.
fn token_keys(mut records: Vec<SigningKeyRecord>) -> Vec<SigningKeyRecord> {
    records.retain(|r| !is_audit_key(r));
    records
}

/// Whether a stored key is the audit checkpoint key (see [`AuditKey`]).
pub fn is_audit_key(record: &SigningKeyRecord) -> bool {
    record.public_jwk.get("use").and_then(|u| u.as_str()) == Some(AUDIT_KEY_USE)
}

/// The audit checkpoint key: an Ed25519 key of its own that signs only checkpoints of the
/// audit chain (see `mayfly_core::checkpoint`), never a token.
///
/// It is stored with the signing keys (same table, sealed under the master key the same
/// way, bound to its `kid`) and told apart by its public JWK's `use: audit`. It is stored
/// already `retired` as a token key: the table allows one active token key, and this one
/// must never be it. That flag means nothing for the audit key, which stays the newest
/// audit key and stays published, because checkpoints are kept for years and must remain
/// verifiable.
pub struct AuditKey {
    kid: String,
    pair: Ed25519KeyPair,
    /// Every audit key ever made, newest first, as a JWKS.
    jwks: serde_json::Value,
}

impl AuditKey {
    /// Loads the newest audit key, creating it on first start.
    pub async fn load_or_create(
        store: &Arc<dyn Store>,
        master: &MasterKey,
    ) -> Result<AuditKey, KeyError> {
        let mut records = audit_keys(store.list_signing_keys().await?);
        if records.is_empty() {
            let now = mayfly_core::now();
            let mut record = new_record(master, now, AUDIT_KEY_USE)?;
            record.retired_at = Some(now);
            let event = AuditDraft::new(AuditKind::KeyCreated, "system:bootstrap").detail(
                serde_json::json!({"kid": record.kid, "alg": "EdDSA", "use": AUDIT_KEY_USE}),
            );
            // Another replica may have made one at the same moment: the newest wins.
            match store.add_signing_key(&record, None, event).await {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            records = audit_keys(store.list_signing_keys().await?);
        }
        let newest = records.first().ok_or(KeyError::NoActiveKey)?;
        let pkcs8 = master
            .open(
                &newest.private_sealed,
                &format!("signing-key:{}", newest.kid),
            )
            .map_err(|source| KeyError::Unseal {
                kid: newest.kid.clone(),
                source,
            })?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.expose())
            .map_err(|_| KeyError::BadKey(newest.kid.clone()))?;
        let jwks = serde_json::json!({
            "keys": records.iter().map(|r| r.public_jwk.clone()).collect::<Vec<_>>()
        });
        Ok(AuditKey {
            kid: newest.kid.clone(),
            pair,
            jwks,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public audit keys (`use: audit`), for verifying checkpoints.
    pub fn jwks(&self) -> serde_json::Value {
        self.jwks.clone()
    }

    /// Signs a checkpoint of the entry `seq` with hash `hash`.
    pub fn sign_checkpoint(
        &self,
        seq: u64,
        hash: &str,
        at: OffsetDateTime,
    ) -> Result<Checkpoint, serde_json::Error> {
        let claims = CheckpointClaims {
            seq,
            hash: hash.to_string(),
            at,
            kid: self.kid.clone(),
        };
        let header = serde_json::json!({"alg": "EdDSA", "typ": CHECKPOINT_TYPE, "kid": self.kid});
        let mut jws = B64.encode(serde_json::to_vec(&header)?);
        jws.push('.');
        jws.push_str(&B64.encode(serde_json::to_vec(&claims)?));
        let signature = self.pair.sign(jws.as_bytes());
        jws.push('.');
        jws.push_str(&B64.encode(signature.as_ref()));
        Ok(Checkpoint {
            seq,
            hash: claims.hash,
            at,
            kid: claims.kid,
            jws,
        })
    }
}

/// The audit keys among the stored keys, newest first.
fn audit_keys(mut records: Vec<SigningKeyRecord>) -> Vec<SigningKeyRecord> {
    records.retain(is_audit_key);
    records.sort_by(|a, b| (b.created_at, &b.kid).cmp(&(a.created_at, &a.kid)));
    records
}

fn new_key_record(master: &MasterKey, now: OffsetDateTime) -> Result<SigningKeyRecord, KeyError> {
    new_record(master, now, "sig")
}

fn new_record(
    master: &MasterKey,
    now: OffsetDateTime,
    key_use: &str,
) -> Result<SigningKeyRecord, KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
    let x = B64.encode(pair.public_key().as_ref());
    let kid = jwk_thumbprint(&x);
    let sealed = master
        .seal(pkcs8.as_ref(), &format!("signing-key:{kid}"))
        .map_err(|source| KeyError::Unseal {
            kid: kid.clone(),
            source,
        })?;
    Ok(SigningKeyRecord {
        public_jwk: public_jwk(&kid, &x, key_use),
        kid,
        alg: "EdDSA".into(),
        private_sealed: sealed,
        created_at: now,
        retired_at: None,
        publish_until: None,
    })
}

fn public_jwk(kid: &str, x: &str, key_use: &str) -> serde_json::Value {
    serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": key_use})
}

fn build_set(
    master: &MasterKey,
    records: &[SigningKeyRecord],
    now: OffsetDateTime,
) -> Result<KeySet, KeyError> {
    let active = records
        .iter()
        .filter(|r| r.retired_at.is_none())
        .max_by_key(|r| r.created_at)
        .ok_or(KeyError::NoActiveKey)?;
    let pkcs8 = master
        .open(
            &active.private_sealed,
            &format!("signing-key:{}", active.kid),
        )
        .map_err(|source| KeyError::Unseal {
            kid: active.kid.clone(),
            source,
        })?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.expose())
        .map_err(|_| KeyError::BadKey(active.kid.clone()))?;

    let mut published = vec![(active.kid.clone(), pair.public_key().as_ref().to_vec())];
    let mut jwks = vec![active.public_jwk.clone()];
    for r in records {
        let still_published =
            r.retired_at.is_some() && r.publish_until.is_some_and(|until| until > now);
        if r.kid != active.kid && still_published {
            let x = r
                .public_jwk
                .get("x")
                .and_then(|x| x.as_str())
                .unwrap_or_default();
            let bytes = B64.decode(x).map_err(|_| KeyError::BadKey(r.kid.clone()))?;
            published.push((r.kid.clone(), bytes));
            jwks.push(r.public_jwk.clone());
        }
    }
    Ok(KeySet {
        active: ActiveKey {
            kid: active.kid.clone(),
            pair,
        },
        published,
        jwks: serde_json::json!({ "keys": jwks }),
    })
}
