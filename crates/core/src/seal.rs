//! Envelope encryption of secrets at rest.
//!
//! Each secret gets its own random data key (AES-256-GCM); the data key is wrapped under
//! the key-encryption key (the master key, kept outside the store). A copy of the database
//! alone therefore reveals nothing. The caller's `context` (e.g. `signing-key:<kid>`) is
//! bound as associated data, so a sealed blob cannot be moved to another row undetected.
//!
//! Layout: `MFS1 | kek_id[8] | nonce[12] | wrapped_dek[48] | nonce[12] | ciphertext+tag`.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use crate::secret::{random_bytes, SecretBytes};

const MAGIC: &[u8; 4] = b"MFS1";
const KEK_ID_LEN: usize = 8;
const WRAPPED_DEK_LEN: usize = 32 + 16;
const HEADER_LEN: usize = 4 + KEK_ID_LEN + NONCE_LEN + WRAPPED_DEK_LEN + NONCE_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The blob was sealed under a different master key than the one configured.
    #[error("secret was sealed with another master key (key id {found}, configured {configured})")]
    WrongKey { found: String, configured: String },
    /// The blob is damaged, truncated or was moved to another context.
    #[error("sealed secret is corrupt or bound to another context")]
    Corrupt,
    /// The operating system's random generator failed.
    #[error("the OS random generator failed")]
    Random,
    /// A master key must be exactly 32 bytes.
    #[error("master key must be 32 bytes (base64), got {0} bytes")]
    BadKeyLength(usize),
}

/// The key-encryption key. Zeroized on drop, never printed.
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
    id: [u8; KEK_ID_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey(id={}, [redacted])", self.id_hex())
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SealError::BadKeyLength(bytes.len()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &key);
        let mut id = [0u8; KEK_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEK_ID_LEN]);
        Ok(MasterKey {
            key: Zeroizing::new(key),
            id,
        })
    }

    /// Parses the base64 text form used in key files and `MAYFLY_MASTER_KEY`.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        use base64::Engine;
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| SealError::BadKeyLength(0))?,
        );
        Self::from_bytes(&bytes)
    }

    pub fn generate() -> Result<Self, SealError> {
        let bytes = Zeroizing::new(random_bytes::<32>()?);
        Self::from_bytes(bytes.as_ref())
    }

    /// Base64 text form, for writing the key file once.
    pub fn to_base64(&self) -> Zeroizing<String> {
        use base64::Engine;
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(self.key.as_ref()))
    }

    /// Public fingerprint of the key, safe to log.
    pub fn id_hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>, SealError> {
        let dek = Zeroizing::new(random_bytes::<32>()?);
        let mut wrapped = dek.to_vec();
        let nonce_k = random_bytes::<NONCE_LEN>()?;
        aead(self.key.as_ref())?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_k),
                Aad::from(dek_aad(context)),
                &mut wrapped,
            )
            .map_err(|_| SealError::Corrupt)?;

        let nonce_d = random_bytes::<NONCE_LEN>()?;
        let mut body = plaintext.to_vec();
        aead(dek.as_ref())?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_d),
                Aad::from(context.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Corrupt)?;

        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce_k);
        out.extend_from_slice(&wrapped);
        out.extend_from_slice(&nonce_d);
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<SecretBytes, SealError> {
        if sealed.len() < HEADER_LEN + 16 || &sealed[..4] != MAGIC {
            return Err(SealError::Corrupt);
        }
        let (kek_id, rest) = sealed[4..].split_at(KEK_ID_LEN);
        if kek_id != self.id {
            return Err(SealError::WrongKey {
                found: kek_id.iter().map(|b| format!("{b:02x}")).collect(),
                configured: self.id_hex(),
            });
        }
        let (nonce_k, rest) = rest.split_at(NONCE_LEN);
        let (wrapped, rest) = rest.split_at(WRAPPED_DEK_LEN);
        let (nonce_d, body) = rest.split_at(NONCE_LEN);

        let mut dek = Zeroizing::new(wrapped.to_vec());
        let dek_plain = aead(self.key.as_ref())?
            .open_in_place(nonce(nonce_k)?, Aad::from(dek_aad(context)), &mut dek)
            .map_err(|_| SealError::Corrupt)?;
        let dek_key = aead(dek_plain)?;
        let mut plain = Zeroizing::new(body.to_vec());
        let opened = dek_key
            .open_in_place(nonce(nonce_d)?, Aad::from(context.as_bytes()), &mut plain)
            .map_err(|_| SealError::Corrupt)?;
        Ok(SecretBytes::new(opened.to_vec()))
    }
}

fn dek_aad(context: &str) -> Vec<u8> {
    [b"mayfly-dek:".as_slice(), context.as_bytes()].concat()
}

fn aead(key: &[u8]) -> Result<LessSafeKey, SealError> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::Corrupt)?,
    ))
}

fn nonce(bytes: &[u8]) -> Result<Nonce, SealError> {
    Nonce::try_assume_unique_for_key(bytes).map_err(|_| SealError::Corrupt)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_no_plaintext_in_blob() {
        let k = MasterKey::generate().unwrap();
        let secret = b"-----BEGIN PRIVATE KEY----- very secret";
        let blob = k.seal(secret, "signing-key:k1").unwrap();
        assert!(!blob.windows(11).any(|w| w == b"very secret"));
        assert_eq!(k.open(&blob, "signing-key:k1").unwrap().expose(), secret);
        // Two seals of the same secret differ (fresh data key and nonces).
        assert_ne!(blob, k.seal(secret, "signing-key:k1").unwrap());
    }

    #[test]
    fn wrong_key_context_or_tampering_fail_cleanly() {
        let k = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let blob = k.seal(b"s", "ctx").unwrap();
        assert!(matches!(
            other.open(&blob, "ctx"),
            Err(SealError::WrongKey { .. })
        ));
        assert_eq!(k.open(&blob, "other-ctx").err(), Some(SealError::Corrupt));
        for i in [5, 20, HEADER_LEN, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert!(k.open(&bad, "ctx").is_err(), "flip at {i}");
        }
        assert_eq!(k.open(&blob[..10], "ctx").err(), Some(SealError::Corrupt));
        assert_eq!(k.open(&[], "ctx").err(), Some(SealError::Corrupt));
    }

    #[test]
    fn key_text_form_round_trips_and_rejects_bad_lengths() {
        let k = MasterKey::generate().unwrap();
        let again = MasterKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(k.id_hex(), again.id_hex());
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
        assert!(!format!("{k:?}").contains(k.to_base64().as_str()));
    }
}
