//! Signed checkpoints of the audit chain: tamper evidence that does not rest on the store.
//!
//! The chain's links and its head row live in the same database, so whoever can write the
//! database can edit an entry and rehash everything after it. A checkpoint is the broker's
//! signed statement "entry `seq` of the chain has hash `hash`" (in the style of Certificate
//! Transparency's signed tree heads), made with a dedicated audit key whose private half is
//! sealed under the master key, which the database does not hold. Kept outside the
//! database, it pins every entry up to `seq`: each entry's hash covers the previous one's,
//! so a rewrite anywhere at or before `seq` changes the hash of entry `seq`.
//!
//! The signed form is a compact JWS (`alg: EdDSA`, `typ: mayfly-checkpoint+jwt`, `kid`)
//! whose payload is `{"at", "hash", "kid", "seq"}`; the JSON document an operator keeps
//! repeats those fields beside the JWS for reading, and they must equal the signed ones.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::audit::{ChainBreak, CheckpointCovered, VerifyReport};

/// The JWS `typ` of a checkpoint: no other token the broker signs can pass for one.
pub const CHECKPOINT_TYPE: &str = "mayfly-checkpoint+jwt";

/// The JWK `use` of the audit checkpoint key (never `sig`: it signs no token).
pub const AUDIT_KEY_USE: &str = "audit";

/// A signed statement of the chain head, as the broker hands it out and an operator keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The entry the checkpoint covers (and, by the chain's links, all before it).
    pub seq: u64,
    /// That entry's hash.
    pub hash: String,
    /// When the broker signed it.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: OffsetDateTime,
    /// The audit key that signed it (RFC 7638 thumbprint of its public JWK).
    pub kid: String,
    /// The compact JWS over the four fields above; the only part that is trusted.
    pub jws: String,
}

/// The signed payload: the same four fields, and nothing else.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointClaims {
    pub seq: u64,
    pub hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kid: String,
}

/// Why a checkpoint was not accepted. Each is one line for the operator.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a checkpoint document (or the JWS is not well formed).
    #[error("not a Mayfly audit checkpoint: {0}")]
    Malformed(String),
    /// No published audit key has the checkpoint's `kid`.
    #[error("checkpoint signed by unknown audit key {0}")]
    UnknownKey(String),
    /// The signature does not verify with the published key: forged or altered.
    #[error("checkpoint signature does not verify: forged or altered")]
    BadSignature,
    /// Signed, but the readable fields beside the JWS say something else.
    #[error("checkpoint fields do not match what was signed: altered")]
    Altered,
}

impl Checkpoint {
    /// Parses a kept checkpoint: the JSON document `mayfly audit checkpoint` prints.
    /// Nothing is trusted until [`Checkpoint::verify`].
    pub fn parse(text: &str) -> Result<Checkpoint, CheckpointError> {
        serde_json::from_str(text.trim()).map_err(|e| {
            // serde's message names the field or position; enough to find the fault.
            CheckpointError::Malformed(e.to_string())
        })
    }

    /// Checks the signature with the matching key of `keys` (a JWKS: `{"keys": [...]}`) and
    /// that the readable fields equal the signed ones. Only keys published for audit
    /// (`use: audit`) whose `kid` is their own thumbprint are used, so a key planted under
    /// another key's `kid` cannot vouch for anything.
    pub fn verify(&self, keys: &serde_json::Value) -> Result<(), CheckpointError> {
        let malformed = |what: &str| CheckpointError::Malformed(what.to_string());
        let mut parts = self.jws.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("jws is not a compact JWS"));
        };
        let header: serde_json::Value = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("jws header is not JSON"))?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA")
            || header.get("typ").and_then(|t| t.as_str()) != Some(CHECKPOINT_TYPE)
        {
            return Err(malformed("jws is not an EdDSA mayfly-checkpoint+jwt"));
        }
        let kid = header
            .get("kid")
            .and_then(|k| k.as_str())
            .ok_or_else(|| malformed("jws header has no kid"))?;
        let public = audit_key(keys, kid).ok_or_else(|| CheckpointError::UnknownKey(kid.into()))?;
        let signature = B64
            .decode(s)
            .map_err(|_| malformed("jws signature is not base64url"))?;
        UnparsedPublicKey::new(&ED25519, &public)
            .verify(&self.jws.as_bytes()[..h.len() + 1 + c.len()], &signature)
            .map_err(|_| CheckpointError::BadSignature)?;
        let claims: CheckpointClaims = B64
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("signed payload is not a checkpoint"))?;
        if claims.seq != self.seq
            || claims.hash != self.hash
            || claims.at != self.at
            || claims.kid != self.kid
            || claims.kid != kid
        {
            return Err(CheckpointError::Altered);
        }
        Ok(())
    }

    /// Adds this (verified) checkpoint to a chain walk's report. `entry_hash` is the hash
    /// the store holds for entry `seq` (`None`: there is no such entry). One lookup, so
    /// checking a checkpoint costs O(1) on top of the walk.
    pub fn check(&self, mut report: VerifyReport, entry_hash: Option<&str>) -> VerifyReport {
        let matches = entry_hash == Some(self.hash.as_str());
        if report.first_break.is_none() && !matches {
            report.first_break = Some(ChainBreak::CheckpointMismatch { seq: self.seq });
        }
        // A break after the checkpoint's entry leaves what it covers intact.
        let intact_through_seq = report
            .first_break
            .as_ref()
            .is_none_or(|b| b.first_bad_seq() > self.seq);
        report.checkpoint = Some(CheckpointCovered {
            seq: self.seq,
            hash: self.hash.clone(),
            kid: self.kid.clone(),
            at: self.at,
            covered: matches && intact_through_seq,
        });
        report
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key (`x`, base64url): the audit key's `kid`.
pub fn jwk_thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// The raw public key of the audit key `kid` in a JWKS, if it is one.
fn audit_key(keys: &serde_json::Value, kid: &str) -> Option<Vec<u8>> {
    let jwk = keys
        .get("keys")?
        .as_array()?
        .iter()
        .find(|k| k.get("kid").and_then(|v| v.as_str()) == Some(kid))?;
    let field = |name: &str| jwk.get(name).and_then(|v| v.as_str());
    if field("use") != Some(AUDIT_KEY_USE)
        || field("kty") != Some("OKP")
        || field("crv") != Some("Ed25519")
    {
        return None;
    }
    let x = field("x")?;
    if jwk_thumbprint(x) != kid {
        return None;
    }
    B64.decode(x).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> (Ed25519KeyPair, String, serde_json::Value) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = B64.encode(pair.public_key().as_ref());
        let kid = jwk_thumbprint(&x);
        let jwks = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": AUDIT_KEY_USE}
        ]});
        (pair, kid, jwks)
    }

    fn sign(pair: &Ed25519KeyPair, typ: &str, kid: &str, seq: u64, hash: &str) -> Checkpoint {
        let at = crate::now();
        let claims = CheckpointClaims {
            seq,
            hash: hash.into(),
            at,
            kid: kid.into(),
        };
        let header = serde_json::json!({"alg": "EdDSA", "typ": typ, "kid": kid});
        let mut jws = B64.encode(serde_json::to_vec(&header).unwrap());
        jws.push('.');
        jws.push_str(&B64.encode(serde_json::to_vec(&claims).unwrap()));
        let sig = pair.sign(jws.as_bytes());
        jws.push('.');
        jws.push_str(&B64.encode(sig.as_ref()));
        Checkpoint {
            seq,
            hash: hash.into(),
            at,
            kid: kid.into(),
            jws,
        }
    }

    fn report(last_seq: u64, first_break: Option<ChainBreak>) -> VerifyReport {
        VerifyReport {
            entries: last_seq,
            last_seq: Some(last_seq),
            last_hash: Some("h".into()),
            first_break,
            checkpoint: None,
        }
    }

    #[test]
    fn a_checkpoint_round_trips_and_verifies() {
        let (pair, kid, jwks) = key();
        let c = sign(&pair, CHECKPOINT_TYPE, &kid, 7, "abc");
        let text = serde_json::to_string(&c).unwrap();
        let parsed = Checkpoint::parse(&text).unwrap();
        assert_eq!(parsed, c);
        parsed.verify(&jwks).unwrap();
    }

    #[test]
    fn forgeries_are_refused() {
        let (pair, kid, jwks) = key();
        let (other, other_kid, other_jwks) = key();
        let good = sign(&pair, CHECKPOINT_TYPE, &kid, 7, "abc");
        // Another key, even one that is published for audit elsewhere.
        let foreign = sign(&other, CHECKPOINT_TYPE, &other_kid, 7, "abc");
        assert_eq!(
            foreign.verify(&jwks),
            Err(CheckpointError::UnknownKey(other_kid.clone()))
        );
        // Another key claiming the real key's kid.
        let impostor = sign(&other, CHECKPOINT_TYPE, &kid, 7, "abc");
        assert_eq!(impostor.verify(&jwks), Err(CheckpointError::BadSignature));
        // A key planted under a kid that is not its thumbprint vouches for nothing.
        let mut planted = other_jwks.clone();
        planted["keys"][0]["kid"] = serde_json::Value::String(kid.clone());
        assert_eq!(
            impostor.verify(&planted),
            Err(CheckpointError::UnknownKey(kid.clone()))
        );
        // A token key (`use: sig`) cannot sign checkpoints.
        let mut token_use = jwks.clone();
        token_use["keys"][0]["use"] = "sig".into();
        assert!(matches!(
            good.verify(&token_use),
            Err(CheckpointError::UnknownKey(_))
        ));
        // Another type of token signed by the same key.
        let token = sign(&pair, "at+jwt", &kid, 7, "abc");
        assert!(matches!(
            token.verify(&jwks),
            Err(CheckpointError::Malformed(_))
        ));
        // Readable fields that differ from the signed ones.
        let mut moved = good.clone();
        moved.seq = 8;
        assert_eq!(moved.verify(&jwks), Err(CheckpointError::Altered));
        let mut rehashed = good.clone();
        rehashed.hash = "abd".into();
        assert_eq!(rehashed.verify(&jwks), Err(CheckpointError::Altered));
        for text in [
            "",
            "{}",
            "[1]",
            r#"{"seq":1,"hash":"a","at":"x","kid":"k","jws":"j"}"#,
        ] {
            assert!(
                matches!(Checkpoint::parse(text), Err(CheckpointError::Malformed(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn the_entry_at_seq_must_have_the_signed_hash() {
        let (pair, kid, _) = key();
        let c = sign(&pair, CHECKPOINT_TYPE, &kid, 5, "abc");
        let ok = c.check(report(9, None), Some("abc"));
        assert_eq!(ok.first_break, None);
        assert!(ok.checkpoint.as_ref().unwrap().covered);

        let rewritten = c.check(report(9, None), Some("abd"));
        assert_eq!(
            rewritten.first_break,
            Some(ChainBreak::CheckpointMismatch { seq: 5 })
        );
        assert!(!rewritten.checkpoint.as_ref().unwrap().covered);

        let gone = c.check(report(3, None), None);
        assert_eq!(
            gone.first_break,
            Some(ChainBreak::CheckpointMismatch { seq: 5 })
        );

        // A break after the checkpoint's entry is reported; what it covers still holds.
        let later = c.check(report(9, Some(ChainBreak::Edited { seq: 8 })), Some("abc"));
        assert_eq!(later.first_break, Some(ChainBreak::Edited { seq: 8 }));
        assert!(later.checkpoint.as_ref().unwrap().covered);
        let earlier = c.check(report(9, Some(ChainBreak::Edited { seq: 2 })), Some("abc"));
        assert_eq!(earlier.first_break, Some(ChainBreak::Edited { seq: 2 }));
        assert!(!earlier.checkpoint.as_ref().unwrap().covered);
    }
}
