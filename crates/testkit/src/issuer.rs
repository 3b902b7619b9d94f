//! A test OIDC issuer: an Ed25519 key whose JWKS the broker is configured to trust, and
//! the workload JWTs it signs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

pub struct Issuer {
    pub pair: Ed25519KeyPair,
    pub url: String,
}

impl Default for Issuer {
    fn default() -> Self {
        Issuer::new()
    }
}

impl Issuer {
    pub fn new() -> Issuer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        Issuer {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
            url: "https://ci.example.test".into(),
        }
    }

    pub fn jwks(&self) -> Value {
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "ci-1", "alg": "EdDSA", "x": B64.encode(self.pair.public_key().as_ref())}]})
    }

    pub fn token(&self, sub: &str) -> String {
        self.token_with(sub, json!({"repository": "acme/billing"}))
    }

    /// A token for `sub` with `extra` claims (a person's `email` and `groups`, say).
    pub fn token_with(&self, sub: &str, extra: Value) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "ci-1"});
        let mut claims = json!({"iss": self.url, "sub": sub, "aud": "mayfly", "iat": now, "nbf": now, "exp": now + 300});
        if let (Value::Object(c), Value::Object(extra)) = (&mut claims, extra) {
            c.extend(extra);
        }
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self.pair.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(sig.as_ref()))
    }

    /// `[[auth.oidc]]` configuration trusting this issuer (its JWKS written to
    /// `jwks_path`), binding each subject `sub` to identity `id`.
    pub fn config(&self, jwks_path: &std::path::Path, rules: &[(&str, &str)]) -> String {
        std::fs::write(jwks_path, self.jwks().to_string()).unwrap();
        let mut out = format!(
            "[[auth.oidc]]\nissuer = \"{}\"\naudiences = [\"mayfly\"]\njwks_file = \"{}\"\nalgorithms = [\"EdDSA\"]\n",
            self.url,
            jwks_path.display()
        );
        for (id, sub) in rules {
            out.push_str(&format!(
                "\n[[auth.oidc.rules]]\nidentity = \"{id}\"\nclaims = {{ sub = \"{sub}\" }}\n"
            ));
        }
        out
    }
}
