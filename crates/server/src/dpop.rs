//! DPoP (RFC 9449): checking a proof that the client holds a private key, so the token
//! issued to it is bound to that key (`cnf.jkt`) and useless to anyone who only copied it.
//!
//! A proof is a JWT the client signs for one request: header `typ: dpop+jwt`, an
//! asymmetric `alg` and the public `jwk`; claims `jti` (unique), `htm` and `htu` (this
//! request's method and URL, without query and fragment), `iat` (now, within
//! [`IAT_WINDOW_SECS`]), `ath` (the access token's hash, when one is presented) and
//! `nonce` (when the server asks for one). Checking costs one signature verification.
//!
//! Replays are refused by remembering each `jti` until its `iat` window has passed, in a
//! cache bounded to [`REPLAY_CACHE_LIMIT`] entries: when full, the entries closest to
//! expiry go first (a proof old enough to be evicted early is nearly out of its window).
//!
//! Server nonces (RFC 9449 §8) are stateless: `<unix seconds>.<HMAC-SHA256 of them>`
//! under a key made at start, valid for [`NONCE_LIFETIME_SECS`]; any replica that does
//! not share the key asks again (`use_dpop_nonce`).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{self, UnparsedPublicKey};

/// How far a proof's `iat` may be from the broker's clock.
pub const IAT_WINDOW_SECS: i64 = 60;
/// Remembered `jti`s at most.
pub const REPLAY_CACHE_LIMIT: usize = 100_000;
/// How long a server nonce is accepted.
pub const NONCE_LIFETIME_SECS: i64 = 300;
/// Signature algorithms accepted in proofs (metadata `dpop_signing_alg_values_supported`).
pub const ALGORITHMS: [&str; 3] = ["ES256", "EdDSA", "RS256"];

/// Why a proof was refused. The message is safe to return: it never holds the proof.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("DPoP proof is malformed: {0}")]
    Malformed(String),
    #[error("DPoP proof algorithm {0:?} is not accepted (use ES256, EdDSA or RS256)")]
    Algorithm(String),
    #[error("DPoP proof signature does not verify with its jwk")]
    BadSignature,
    #[error("DPoP proof is for {claim} {got:?}, not {expected:?}")]
    WrongRequest {
        claim: &'static str,
        got: String,
        expected: String,
    },
    #[error("DPoP proof iat is outside the accepted window of {IAT_WINDOW_SECS} s")]
    Stale,
    #[error("DPoP proof has been used before (jti replay)")]
    Replayed,
    #[error("DPoP proof ath does not match the access token")]
    WrongAccessToken,
    #[error("DPoP proof is signed by a key other than the one the token is bound to")]
    WrongKey,
    /// The server wants a (fresh) nonce: answer `use_dpop_nonce` with a `DPoP-Nonce`.
    #[error("a fresh DPoP nonce is required; use the DPoP-Nonce header's value")]
    UseNonce,
}

impl DpopError {
    /// The RFC 9449 error code.
    pub fn code(&self) -> &'static str {
        match self {
            DpopError::UseNonce => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }
}

/// A verified proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint of the proof's key (base64url SHA-256): `cnf.jkt`.
    pub jkt: String,
}

/// What the proof must match.
pub struct Expect<'a> {
    pub htm: &'a str,
    pub htu: &'a str,
    /// The access token presented with the proof (its hash must be `ath`).
    pub access_token: Option<&'a str>,
    /// Refuse a proof without a valid server nonce.
    pub require_nonce: bool,
}

pub struct DpopVerifier {
    replay: Mutex<ReplayCache>,
    nonce_key: ring::hmac::Key,
}

#[derive(Default)]
struct ReplayCache {
    /// jti → when it may be forgotten.
    seen: HashMap<String, i64>,
    /// (forget at, jti), for eviction in expiry order.
    order: BTreeSet<(i64, String)>,
}

impl ReplayCache {
    /// Records `jti` until `until`; false when it was already there.
    fn insert(&mut self, jti: &str, until: i64, now: i64) -> bool {
        while let Some((at, _)) = self.order.first() {
            if *at > now && self.seen.len() < REPLAY_CACHE_LIMIT {
                break;
            }
            if let Some((_, old)) = self.order.pop_first() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(jti) {
            return false;
        }
        self.seen.insert(jti.to_string(), until);
        self.order.insert((until, jti.to_string()));
        true
    }
}

impl Default for DpopVerifier {
    fn default() -> Self {
        DpopVerifier::new()
    }
}

impl DpopVerifier {
    pub fn new() -> Self {
        let rng = ring::rand::SystemRandom::new();
        // A key nobody else knows; if the system RNG failed, no nonce would verify, which
        // fails closed.
        let nonce_key = ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0u8; 32]));
        DpopVerifier {
            replay: Mutex::new(ReplayCache::default()),
            nonce_key,
        }
    }

    /// A fresh server nonce (for the `DPoP-Nonce` header).
    pub fn nonce(&self, now: i64) -> String {
        let ts = now.to_string();
        let tag = ring::hmac::sign(&self.nonce_key, ts.as_bytes());
        format!("{ts}.{}", B64.encode(tag.as_ref()))
    }

    fn nonce_valid(&self, nonce: &str, now: i64) -> bool {
        let Some((ts, tag)) = nonce.split_once('.') else {
            return false;
        };
        let (Ok(at), Ok(tag)) = (ts.parse::<i64>(), B64.decode(tag)) else {
            return false;
        };
        ring::hmac::verify(&self.nonce_key, ts.as_bytes(), &tag).is_ok()
            && at <= now + 1
            && now - at <= NONCE_LIFETIME_SECS
    }

    /// Checks a proof for one request (RFC 9449 §4.3) and remembers its `jti`.
    pub fn verify(&self, proof: &str, expect: &Expect<'_>, now: i64) -> Result<Proof, DpopError> {
        let bad = |why: &str| DpopError::Malformed(why.to_string());
        let mut parts = proof.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a compact JWS"));
        };
        let header: serde_json::Value = decode_json(h).ok_or_else(|| bad("header"))?;
        let claims: serde_json::Value = decode_json(c).ok_or_else(|| bad("claims"))?;
        let signature = B64.decode(s).map_err(|_| bad("signature encoding"))?;
        if header.get("typ").and_then(|t| t.as_str()) != Some("dpop+jwt") {
            return Err(bad("typ must be dpop+jwt"));
        }
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        if !ALGORITHMS.contains(&alg) {
            return Err(DpopError::Algorithm(alg.to_string()));
        }
        let jwk = header
            .get("jwk")
            .and_then(|j| j.as_object())
            .ok_or_else(|| bad("header jwk is missing"))?;
        if jwk.contains_key("d") {
            return Err(bad("jwk holds a private key"));
        }
        let signed = &proof.as_bytes()[..h.len() + 1 + c.len()];
        let jkt = verify_with_jwk(alg, jwk, signed, &signature)?;

        let text = |name: &str| claims.get(name).and_then(|v| v.as_str());
        let jti = text("jti").filter(|j| !j.is_empty() && j.len() <= 256);
        let jti = jti.ok_or_else(|| bad("jti is missing or too long"))?;
        let htm = text("htm").ok_or_else(|| bad("htm is missing"))?;
        if htm != expect.htm {
            return Err(DpopError::WrongRequest {
                claim: "htm",
                got: htm.to_string(),
                expected: expect.htm.to_string(),
            });
        }
        let htu = text("htu").ok_or_else(|| bad("htu is missing"))?;
        if normalise_htu(htu) != normalise_htu(expect.htu) {
            return Err(DpopError::WrongRequest {
                claim: "htu",
                got: htu.chars().take(200).collect(),
                expected: expect.htu.to_string(),
            });
        }
        let iat = claims
            .get("iat")
            .and_then(|v| v.as_i64())
            .ok_or_else(|| bad("iat is missing"))?;
        if (iat - now).abs() > IAT_WINDOW_SECS {
            return Err(DpopError::Stale);
        }
        if let Some(token) = expect.access_token {
            let want = B64.encode(ring::digest::digest(
                &ring::digest::SHA256,
                token.as_bytes(),
            ));
            if text("ath") != Some(want.as_str()) {
                return Err(DpopError::WrongAccessToken);
            }
        }
        match text("nonce") {
            Some(n) if !self.nonce_valid(n, now) => return Err(DpopError::UseNonce),
            None if expect.require_nonce => return Err(DpopError::UseNonce),
            _ => {}
        }
        // Last: only a proof that passed every other check uses up its jti.
        let mut cache = self.replay.lock().unwrap_or_else(|e| e.into_inner());
        if !cache.insert(jti, iat + IAT_WINDOW_SECS, now) {
            return Err(DpopError::Replayed);
        }
        Ok(Proof { jkt })
    }
}

fn decode_json(part: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

/// `htu` compared without query and fragment (RFC 9449 §4.3), scheme and host in lower
/// case.
fn normalise_htu(htu: &str) -> String {
    let base = htu.split(['?', '#']).next().unwrap_or("");
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            format!(
                "{}://{}{}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase(),
                if path.is_empty() { "/" } else { path }
            )
        }
        None => base.to_string(),
    }
}

/// Verifies `signature` over `signed` with the JWK and returns its RFC 7638 thumbprint.
fn verify_with_jwk(
    alg: &str,
    jwk: &serde_json::Map<String, serde_json::Value>,
    signed: &[u8],
    sig: &[u8],
) -> Result<String, DpopError> {
    let member = |name: &str| -> Result<&str, DpopError> {
        jwk.get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| DpopError::Malformed(format!("jwk member {name} is missing")))
    };
    let bytes = |name: &str| -> Result<Vec<u8>, DpopError> {
        B64.decode(member(name)?)
            .map_err(|_| DpopError::Malformed(format!("jwk member {name} is not base64url")))
    };
    let kty = member("kty")?;
    // RFC 7638: the required members, in lexicographic order, no whitespace.
    let canonical = match (alg, kty) {
        ("ES256", "EC") => {
            if member("crv")? != "P-256" {
                return Err(DpopError::Malformed("ES256 needs crv P-256".into()));
            }
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(DpopError::Malformed(
                    "P-256 coordinates are 32 bytes".into(),
                ));
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
                .verify(signed, sig)
                .map_err(|_| DpopError::BadSignature)?;
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                member("x")?,
                member("y")?
            )
        }
        ("EdDSA", "OKP") => {
            if member("crv")? != "Ed25519" {
                return Err(DpopError::Malformed("EdDSA needs crv Ed25519".into()));
            }
            UnparsedPublicKey::new(&signature::ED25519, &bytes("x")?)
                .verify(signed, sig)
                .map_err(|_| DpopError::BadSignature)?;
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, member("x")?)
        }
        ("RS256", "RSA") => {
            let key = signature::RsaPublicKeyComponents {
                n: bytes("n")?,
                e: bytes("e")?,
            };
            key.verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, sig)
                .map_err(|_| DpopError::BadSignature)?;
            format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                member("e")?,
                member("n")?
            )
        }
        _ => {
            return Err(DpopError::Malformed(format!(
                "key type {kty:?} does not fit alg {alg:?}"
            )))
        }
    };
    Ok(B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    )))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    use super::*;

    struct Client {
        pair: EcdsaKeyPair,
    }

    impl Client {
        fn new() -> Client {
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            Client {
                pair: EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .unwrap(),
            }
        }
        fn jwk(&self) -> serde_json::Value {
            let point = self.pair.public_key().as_ref();
            serde_json::json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])})
        }
        fn proof(&self, claims: serde_json::Value) -> String {
            let header = serde_json::json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
            let input = format!(
                "{}.{}",
                B64.encode(header.to_string()),
                B64.encode(claims.to_string())
            );
            let sig = self
                .pair
                .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
                .unwrap();
            format!("{input}.{}", B64.encode(sig.as_ref()))
        }
    }

    const HTU: &str = "http://127.0.0.1:8740/oauth2/token";

    fn expect() -> Expect<'static> {
        Expect {
            htm: "POST",
            htu: HTU,
            access_token: None,
            require_nonce: false,
        }
    }

    #[test]
    fn proofs_are_checked_claim_by_claim() {
        let v = DpopVerifier::new();
        let c = Client::new();
        let now = 1_700_000_000;
        let ok = |jti: &str| serde_json::json!({"jti": jti, "htm": "POST", "htu": HTU, "iat": now});
        let first = v.verify(&c.proof(ok("a")), &expect(), now).unwrap();
        // The thumbprint is the key's, whatever the proof.
        assert_eq!(first, v.verify(&c.proof(ok("b")), &expect(), now).unwrap());
        assert_ne!(
            first,
            v.verify(&Client::new().proof(ok("c")), &expect(), now)
                .unwrap()
        );
        let cases: Vec<(&str, String, DpopError)> = vec![
            ("replay", c.proof(ok("a")), DpopError::Replayed),
            (
                "wrong htm",
                c.proof(serde_json::json!({"jti": "d", "htm": "GET", "htu": HTU, "iat": now})),
                DpopError::WrongRequest { claim: "htm", got: "GET".into(), expected: "POST".into() },
            ),
            (
                "wrong htu",
                c.proof(serde_json::json!({"jti": "e", "htm": "POST", "htu": "http://evil/oauth2/token", "iat": now})),
                DpopError::WrongRequest { claim: "htu", got: "http://evil/oauth2/token".into(), expected: HTU.into() },
            ),
            (
                "stale",
                c.proof(serde_json::json!({"jti": "f", "htm": "POST", "htu": HTU, "iat": now - 120})),
                DpopError::Stale,
            ),
            ("not a JWT", "x.y".into(), DpopError::Malformed("not a compact JWS".into())),
        ];
        for (name, proof, want) in cases {
            assert_eq!(v.verify(&proof, &expect(), now), Err(want), "{name}");
        }
        // A tampered signature.
        let mut tampered = c.proof(ok("g"));
        tampered.replace_range(tampered.len() - 4.., "AAAA");
        assert_eq!(
            v.verify(&tampered, &expect(), now),
            Err(DpopError::BadSignature)
        );
        // Query and fragment do not count in htu.
        let with_query = c.proof(
            serde_json::json!({"jti": "h", "htm": "POST", "htu": format!("{HTU}?x=1"), "iat": now}),
        );
        assert!(v.verify(&with_query, &expect(), now).is_ok());
    }

    #[test]
    fn ath_and_nonces() {
        let v = DpopVerifier::new();
        let c = Client::new();
        let now = 1_700_000_000;
        let ath = B64.encode(ring::digest::digest(&ring::digest::SHA256, b"tok"));
        let with_token = Expect {
            access_token: Some("tok"),
            ..expect()
        };
        let proof = c.proof(
            serde_json::json!({"jti": "1", "htm": "POST", "htu": HTU, "iat": now, "ath": ath}),
        );
        assert!(v.verify(&proof, &with_token, now).is_ok());
        let proof = c.proof(
            serde_json::json!({"jti": "2", "htm": "POST", "htu": HTU, "iat": now, "ath": "other"}),
        );
        assert_eq!(
            v.verify(&proof, &with_token, now),
            Err(DpopError::WrongAccessToken)
        );

        let nonce_needed = Expect {
            require_nonce: true,
            ..expect()
        };
        let proof = c.proof(serde_json::json!({"jti": "3", "htm": "POST", "htu": HTU, "iat": now}));
        assert_eq!(
            v.verify(&proof, &nonce_needed, now),
            Err(DpopError::UseNonce)
        );
        let nonce = v.nonce(now);
        let proof = c.proof(
            serde_json::json!({"jti": "4", "htm": "POST", "htu": HTU, "iat": now, "nonce": nonce}),
        );
        assert!(v.verify(&proof, &nonce_needed, now).is_ok());
        let old = v.nonce(now - NONCE_LIFETIME_SECS - 1);
        let proof = c.proof(
            serde_json::json!({"jti": "5", "htm": "POST", "htu": HTU, "iat": now, "nonce": old}),
        );
        assert_eq!(
            v.verify(&proof, &nonce_needed, now),
            Err(DpopError::UseNonce)
        );
        let forged = format!("{now}.AAAA");
        let proof = c.proof(
            serde_json::json!({"jti": "6", "htm": "POST", "htu": HTU, "iat": now, "nonce": forged}),
        );
        assert_eq!(v.verify(&proof, &expect(), now), Err(DpopError::UseNonce));
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_expired_entries() {
        let mut cache = ReplayCache::default();
        assert!(cache.insert("a", 100, 0));
        assert!(!cache.insert("a", 100, 50));
        // Past its window it is forgotten.
        assert!(cache.insert("a", 300, 150));
        for i in 0..REPLAY_CACHE_LIMIT + 10 {
            cache.insert(&i.to_string(), 1_000 + i as i64, 200);
        }
        assert!(cache.seen.len() <= REPLAY_CACHE_LIMIT);
        assert_eq!(cache.seen.len(), cache.order.len());
    }
}
