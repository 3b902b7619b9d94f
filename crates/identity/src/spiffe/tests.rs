//! SPIFFE tests with real crypto: JWT signing keys come from ring, CAs and SVIDs from
//! rcgen, all generated per test; nothing is checked in. Malicious tokens and
//! certificates are built here, one per table row.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use mayfly_core::auth::{AuthOutcome, Authenticator, Presented, Proven, WorkloadClaims};
use mayfly_core::duration::Ttl;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};

use super::bundle::FileBundle;
use super::*;

// --- config --------------------------------------------------------------------------

fn config(dir: &Path) -> SpiffeTrustDomainConfig {
    serde_json::from_value(json!({
        "trust_domain": "prod.acme",
        "jwt_bundle_file": dir.join("bundle.jwks"),
        "x509_bundle_file": dir.join("bundle.pem"),
        "audiences": ["mayfly"],
        "clock_skew": "60s",
        "rules": [
            {"identity": "payments-api", "spiffe_id": "spiffe://prod.acme/ns/payments/sa/api"},
            {"identity": "payments-workers", "spiffe_id_pattern": "spiffe://prod.acme/ns/payments/sa/worker-*"},
            {"identity": "payments-any", "spiffe_id_pattern": "spiffe://prod.acme/ns/payments/sa/*"},
        ],
    }))
    .unwrap()
}

#[test]
fn config_deserializes_with_defaults_and_rejects_unknown_fields() {
    let parsed: SpiffeTrustDomainConfig = serde_json::from_value(json!({
        "trust_domain": "prod.acme",
        "x509_bundle_file": "/etc/mayfly/bundle.pem",
        "rules": [{"identity": "a", "spiffe_id": "spiffe://prod.acme/a"}],
    }))
    .unwrap();
    assert_eq!(parsed.clock_skew, Ttl::from_secs(60));
    assert!(parsed.audiences.is_empty());
    assert!(
        parsed.validate().is_ok(),
        "X.509-only entries need no audience"
    );

    let unknown = serde_json::from_value::<SpiffeTrustDomainConfig>(json!({
        "trust_domain": "prod.acme", "x509_bundle_file": "/b", "rules": [], "bundle": "/x",
    }));
    assert!(unknown.is_err());
    let unknown_in_rule = serde_json::from_value::<SpiffeTrustDomainConfig>(json!({
        "trust_domain": "prod.acme", "x509_bundle_file": "/b",
        "rules": [{"identity": "a", "spiffe_id": "spiffe://prod.acme/a", "sub": "x"}],
    }));
    assert!(unknown_in_rule.is_err());
}

#[test]
fn config_validation_refuses_dangerous_or_ambiguous_settings() {
    let dir = tempfile::tempdir().unwrap();
    let base = config(dir.path());
    type Edit = Box<dyn Fn(&mut SpiffeTrustDomainConfig)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "bad trust domain",
            Box::new(|c| c.trust_domain = "Prod.Acme".into()),
            "lowercase",
        ),
        (
            "trust domain with scheme",
            Box::new(|c| c.trust_domain = "spiffe://prod.acme".into()),
            "lowercase",
        ),
        (
            "no bundle",
            Box::new(|c| {
                c.jwt_bundle_file = None;
                c.x509_bundle_file = None;
            }),
            "nothing to verify",
        ),
        (
            "jwt without audiences",
            Box::new(|c| c.audiences.clear()),
            "audiences",
        ),
        (
            "empty audience",
            Box::new(|c| c.audiences = vec![String::new()]),
            "audiences",
        ),
        (
            "huge skew",
            Box::new(|c| c.clock_skew = Ttl::from_secs(3600)),
            "clock_skew",
        ),
        ("no rules", Box::new(|c| c.rules.clear()), "no rules"),
        (
            "both matchers",
            Box::new(|c| c.rules[0].spiffe_id_pattern = Some("spiffe://prod.acme/*".into())),
            "exactly one",
        ),
        (
            "no matcher",
            Box::new(|c| c.rules[0].spiffe_id = None),
            "exactly one",
        ),
        (
            "id in another domain",
            Box::new(|c| c.rules[0].spiffe_id = Some("spiffe://staging.acme/x".into())),
            "trust domain",
        ),
        (
            "invalid id",
            Box::new(|c| c.rules[0].spiffe_id = Some("spiffe://prod.acme/a/../b".into())),
            "spiffe_id",
        ),
        (
            "pattern in another domain",
            Box::new(|c| c.rules[1].spiffe_id_pattern = Some("spiffe://*.acme/x".into())),
            "must start with",
        ),
        (
            "pattern with empty segment",
            Box::new(|c| c.rules[1].spiffe_id_pattern = Some("spiffe://prod.acme/a//*".into())),
            "empty path segment",
        ),
        (
            "pattern bad chars",
            Box::new(|c| c.rules[1].spiffe_id_pattern = Some("spiffe://prod.acme/a?b".into())),
            "may only contain",
        ),
        (
            "bad identity name",
            Box::new(|c| c.rules[0].identity = "not a name!".into()),
            "rule 1",
        ),
    ];
    for (name, edit, expected) in cases {
        let mut c = base.clone();
        edit(&mut c);
        let err = c.validate().expect_err(name);
        assert!(
            err.to_string().contains(expected),
            "{name}: {err} should mention {expected:?}"
        );
    }
    let twice = validate_all([base.clone(), base.clone()]).unwrap_err();
    assert!(twice.reason.contains("more than once"));

    let mut x509_only = base.clone();
    x509_only.jwt_bundle_file = None;
    x509_only.audiences.clear();
    assert!(JwtSvidAuthenticator::new([x509_only]).is_err());
    let mut jwt_only = base;
    jwt_only.x509_bundle_file = None;
    assert!(X509SvidVerifier::new([jwt_only]).is_err());
}

#[test]
fn spiffe_id_parsing_and_patterns() {
    let valid = [
        "spiffe://prod.acme/a",
        "spiffe://prod.acme/ns/x_y/sa/a.b-c",
        "spiffe://a-b_c.1/A",
    ];
    for id in valid {
        assert!(parse_spiffe_id(id).is_ok(), "{id}");
    }
    let invalid = [
        "spiffe://prod.acme",
        "spiffe://prod.acme/",
        "SPIFFE://prod.acme/a",
        "https://prod.acme/a",
        "spiffe:///a",
        "spiffe://Prod.acme/a",
        "spiffe://prod.acme:443/a",
        "spiffe://user@prod.acme/a",
        "spiffe://prod.acme/a/",
        "spiffe://prod.acme/a//b",
        "spiffe://prod.acme/a/./b",
        "spiffe://prod.acme/a/../b",
        "spiffe://prod.acme/a%20b",
        "spiffe://prod.acme/a?x=1",
        "spiffe://prod.acme/a#f",
    ];
    for id in invalid {
        assert!(parse_spiffe_id(id).is_err(), "{id}");
    }
    let long = format!("spiffe://prod.acme/{}", "a".repeat(3000));
    assert!(parse_spiffe_id(&long).is_err());

    let dir = tempfile::tempdir().unwrap();
    let settings = config(dir.path()).validate().unwrap();
    let bind = |id: &str| {
        settings
            .identity_for(&parse_spiffe_id(id).unwrap())
            .map(str::to_owned)
    };
    assert_eq!(
        bind("spiffe://prod.acme/ns/payments/sa/api").as_deref(),
        Some("payments-api")
    );
    assert_eq!(
        bind("spiffe://prod.acme/ns/payments/sa/worker-1").as_deref(),
        Some("payments-workers")
    );
    assert_eq!(
        bind("spiffe://prod.acme/ns/payments/sa/other").as_deref(),
        Some("payments-any")
    );
    // `*` never crosses `/`.
    assert_eq!(bind("spiffe://prod.acme/ns/payments/sa/api/v2"), None);
    assert_eq!(bind("spiffe://prod.acme/ns/payments/sa"), None);
    assert_eq!(bind("spiffe://prod.acme/ns/payments-x/sa/api"), None);
    // Exact rules are exact.
    assert_eq!(
        bind("spiffe://prod.acme/ns/payments/sa/api.x").as_deref(),
        Some("payments-any")
    );
}

// --- JWT-SVID ----------------------------------------------------------------------------

struct JwtKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn es256(kid: &str) -> JwtKey {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    JwtKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&public[1..33]),
                    "y": b64(&public[33..]), "kid": kid, "use": "jwt-svid"}),
        public,
    }
}

fn ed25519(kid: &str) -> JwtKey {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    JwtKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&public), "kid": kid,
                    "use": "jwt-svid"}),
        public,
    }
}

/// A SPIFFE bundle: JWT authorities plus (to be ignored for JWTs) an X.509 authority.
fn spiffe_bundle(keys: &[&JwtKey], x509_decoy: &JwtKey) -> String {
    let mut entries: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
    let mut decoy = x509_decoy.jwk.clone();
    decoy["use"] = json!("x509-svid");
    entries.push(decoy);
    json!({"keys": entries, "spiffe_sequence": 1, "spiffe_refresh_hint": 300}).to_string()
}

fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn sign(key: &JwtKey, claims: &Value) -> String {
    let alg = crate::oidc::jwks::alg_name(key.alg);
    sign_raw(
        &json!({"alg": alg, "kid": key.kid, "typ": "JWT"}),
        claims,
        &key.encoding,
        key.alg,
    )
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn svid_claims(sub: &str) -> Value {
    let now = now();
    json!({"sub": sub, "aud": ["other", "mayfly"], "exp": now + 300, "iat": now})
}

fn with(mut claims: Value, edit: impl FnOnce(&mut Value)) -> Value {
    edit(&mut claims);
    claims
}

const API: &str = "spiffe://prod.acme/ns/payments/sa/api";

fn outcome(auth: &JwtSvidAuthenticator, token: &str) -> Result<WorkloadClaims, String> {
    match auth.verify(token, now()) {
        AuthOutcome::Accepted(Proven::Workload(claims)) => Ok(claims),
        AuthOutcome::Accepted(other) => panic!("unexpected {other:?}"),
        AuthOutcome::Rejected(rejection) => {
            // No rejection may echo the token or any part of it.
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(
                    !rejection.to_string().contains(part),
                    "{rejection} echoes the token"
                );
            }
            Err(rejection.code().to_owned())
        }
        AuthOutcome::NotMine => Err("not_mine".into()),
    }
}

struct JwtFixture {
    _dir: tempfile::TempDir,
    auth: JwtSvidAuthenticator,
    key: JwtKey,
    ed: JwtKey,
    decoy: JwtKey,
}

fn jwt_fixture() -> JwtFixture {
    let dir = tempfile::tempdir().unwrap();
    let (key, ed, decoy) = (es256("k1"), ed25519("k2"), es256("x509-ca"));
    std::fs::write(
        dir.path().join("bundle.jwks"),
        spiffe_bundle(&[&key, &ed], &decoy),
    )
    .unwrap();
    let mut staging = config(dir.path());
    staging.trust_domain = "staging.acme".into();
    staging.jwt_bundle_file = None;
    staging.rules = vec![SpiffeRule {
        identity: "staging".into(),
        spiffe_id: Some("spiffe://staging.acme/a".into()),
        spiffe_id_pattern: None,
    }];
    let auth = JwtSvidAuthenticator::new([config(dir.path()), staging]).unwrap();
    JwtFixture {
        _dir: dir,
        auth,
        key,
        ed,
        decoy,
    }
}

#[tokio::test]
async fn jwt_svid_verification_table() {
    let f = jwt_fixture();
    let now = now();
    let good = svid_claims(API);
    let intruder = es256("k1");
    let unknown = es256("k9");
    let hs_secret = EncodingKey::from_secret(&f.key.public);

    let cases: Vec<(&str, String, Result<&str, &str>)> = vec![
        ("valid ES256", sign(&f.key, &good), Ok("payments-api")),
        ("valid EdDSA", sign(&f.ed, &good), Ok("payments-api")),
        (
            "aud as a string",
            sign(&f.key, &with(good.clone(), |c| c["aud"] = json!("mayfly"))),
            Ok("payments-api"),
        ),
        (
            "pattern rule",
            sign(
                &f.key,
                &svid_claims("spiffe://prod.acme/ns/payments/sa/worker-7"),
            ),
            Ok("payments-workers"),
        ),
        (
            "pattern does not cross /",
            sign(
                &f.key,
                &svid_claims("spiffe://prod.acme/ns/payments/sa/worker-7/x"),
            ),
            Err("no_rule_matched"),
        ),
        (
            "no rule matched",
            sign(&f.key, &svid_claims("spiffe://prod.acme/ns/billing/sa/api")),
            Err("no_rule_matched"),
        ),
        (
            "expired",
            sign(&f.key, &with(good.clone(), |c| c["exp"] = json!(now - 61))),
            Err("expired"),
        ),
        (
            "expired within skew",
            sign(&f.key, &with(good.clone(), |c| c["exp"] = json!(now - 30))),
            Ok("payments-api"),
        ),
        (
            "no exp",
            sign(
                &f.key,
                &with(good.clone(), |c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            ),
            Err("missing_claim"),
        ),
        (
            "not yet valid",
            sign(&f.key, &with(good.clone(), |c| c["nbf"] = json!(now + 120))),
            Err("not_yet_valid"),
        ),
        (
            "nbf within skew",
            sign(&f.key, &with(good.clone(), |c| c["nbf"] = json!(now + 30))),
            Ok("payments-api"),
        ),
        (
            "issued in the future",
            sign(&f.key, &with(good.clone(), |c| c["iat"] = json!(now + 120))),
            Err("not_yet_valid"),
        ),
        (
            "wrong audience",
            sign(&f.key, &with(good.clone(), |c| c["aud"] = json!(["vault"]))),
            Err("wrong_audience"),
        ),
        (
            "no audience",
            sign(
                &f.key,
                &with(good.clone(), |c| {
                    c.as_object_mut().unwrap().remove("aud");
                }),
            ),
            Err("wrong_audience"),
        ),
        (
            "untrusted trust domain",
            sign(
                &f.key,
                &svid_claims("spiffe://evil.example/ns/payments/sa/api"),
            ),
            Err("untrusted_issuer"),
        ),
        (
            "trust domain without JWT bundle",
            sign(&f.key, &svid_claims("spiffe://staging.acme/a")),
            Err("untrusted_issuer"),
        ),
        (
            "invalid SPIFFE ID",
            sign(&f.key, &svid_claims("spiffe://prod.acme/ns/../sa/api")),
            Err("malformed_credential"),
        ),
        ("unknown kid", sign(&unknown, &good), Err("unknown_kid")),
        (
            "X.509 authority is not a JWT key",
            sign(&f.decoy, &good),
            Err("unknown_kid"),
        ),
        (
            "no kid",
            sign_raw(
                &json!({"alg": "ES256"}),
                &good,
                &f.key.encoding,
                Algorithm::ES256,
            ),
            Err("malformed_credential"),
        ),
        (
            "bad signature",
            sign(&intruder, &good),
            Err("bad_signature"),
        ),
        (
            "tampered payload",
            {
                let token = sign(&f.key, &good);
                let mut parts: Vec<&str> = token.split('.').collect();
                let forged = b64(svid_claims("spiffe://prod.acme/ns/payments/sa/worker-1")
                    .to_string()
                    .as_bytes());
                parts[1] = &forged;
                parts.join(".")
            },
            Err("bad_signature"),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": "k1"}).to_string().as_bytes()),
                b64(good.to_string().as_bytes())
            ),
            Err("algorithm_not_allowed"),
        ),
        (
            "HS256 key confusion",
            sign_raw(
                &json!({"alg": "HS256", "kid": "k1"}),
                &good,
                &hs_secret,
                Algorithm::HS256,
            ),
            Err("algorithm_not_allowed"),
        ),
        (
            "key type does not fit alg",
            sign_raw(
                &json!({"alg": "EdDSA", "kid": "k1"}),
                &good,
                &f.ed.encoding,
                Algorithm::EdDSA,
            ),
            Err("algorithm_not_allowed"),
        ),
        (
            "bad typ",
            sign_raw(
                &json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}),
                &good,
                &f.key.encoding,
                Algorithm::ES256,
            ),
            Err("malformed_credential"),
        ),
        (
            "crit",
            sign_raw(
                &json!({"alg": "ES256", "kid": "k1", "crit": ["x"]}),
                &good,
                &f.key.encoding,
                Algorithm::ES256,
            ),
            Err("malformed_credential"),
        ),
        (
            "OIDC token (sub not a SPIFFE ID)",
            sign(
                &f.key,
                &with(good.clone(), |c| {
                    c["sub"] = json!("repo:acme/billing:ref:refs/heads/main")
                }),
            ),
            Err("not_mine"),
        ),
        (
            "no sub",
            sign(
                &f.key,
                &with(good.clone(), |c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            ),
            Err("not_mine"),
        ),
        ("opaque bearer", "mfy_op_abcdef".into(), Err("not_mine")),
    ];
    for (name, token, expected) in cases {
        let got = outcome(&f.auth, &token);
        match (&got, expected) {
            (Ok(claims), Ok(identity)) => assert_eq!(claims.identity, identity, "{name}"),
            (Err(code), Err(want)) => assert_eq!(code, want, "{name}"),
            _ => panic!("{name}: expected {expected:?}, got {got:?}"),
        }
    }
}

#[tokio::test]
async fn jwt_svid_accepted_claims_and_chain_order() {
    let f = jwt_fixture();
    let token = sign(&f.key, &svid_claims(API));
    let AuthOutcome::Accepted(Proven::Workload(claims)) = f
        .auth
        .authenticate(&Presented {
            bearer: Some(&token),
        })
        .await
    else {
        panic!("not accepted");
    };
    assert_eq!(claims.method, "jwt-svid");
    assert_eq!(claims.issuer, "prod.acme");
    assert_eq!(claims.subject, API);
    assert_eq!(claims.attributes["spiffe_id"], json!(API));
    assert_eq!(claims.attributes["trust_domain"], json!("prod.acme"));
    assert!(claims.expires_at.is_some());
    assert!(matches!(
        f.auth.authenticate(&Presented { bearer: None }).await,
        AuthOutcome::NotMine
    ));
    assert_eq!(f.auth.load_bundles(), vec![("prod.acme".to_owned(), Ok(2))]);
    assert_eq!(f.auth.trust_domains().collect::<Vec<_>>(), ["prod.acme"]);
}

#[tokio::test]
async fn jwt_bundle_rotation_and_missing_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.jwks");
    let auth =
        JwtSvidAuthenticator::with_check_interval([config(dir.path())], Duration::ZERO).unwrap();
    let (old, new, decoy) = (es256("old"), es256("new"), es256("d"));
    // Nothing to load yet.
    assert_eq!(
        outcome(&auth, &sign(&old, &svid_claims(API))),
        Err("keys_unavailable".into())
    );
    std::fs::write(&path, spiffe_bundle(&[&old], &decoy)).unwrap();
    assert!(outcome(&auth, &sign(&old, &svid_claims(API))).is_ok());
    std::fs::write(&path, spiffe_bundle(&[&new, &old, &decoy], &decoy)).unwrap();
    assert!(outcome(&auth, &sign(&new, &svid_claims(API))).is_ok());
    // A broken file keeps the previous keys.
    std::fs::write(&path, "{not json").unwrap();
    assert!(outcome(&auth, &sign(&new, &svid_claims(API))).is_ok());
    std::fs::write(&path, spiffe_bundle(&[&new], &decoy)).unwrap();
    assert_eq!(
        outcome(&auth, &sign(&old, &svid_claims(API))),
        Err("unknown_kid".into())
    );
}

#[tokio::test]
async fn jwt_svid_goes_before_oidc_in_the_chain() {
    use crate::{AuthChain, OidcAuthenticator, OidcIssuerConfig};
    let f = jwt_fixture();
    let dir = tempfile::tempdir().unwrap();
    let oidc_key = es256("oidc-1");
    let oidc_jwks = dir.path().join("oidc.json");
    let mut jwk = oidc_key.jwk.clone();
    jwk["use"] = json!("sig");
    std::fs::write(&oidc_jwks, json!({"keys": [jwk]}).to_string()).unwrap();
    let oidc: OidcIssuerConfig = serde_json::from_value(json!({
        "issuer": "https://ci.example",
        "audiences": ["mayfly"],
        "jwks_file": oidc_jwks,
        "algorithms": ["ES256"],
        "rules": [{"identity": "billing-ci", "claims": {"sub": "repo:acme/billing:*"}}],
    }))
    .unwrap();
    let chain = AuthChain::new(vec![
        Arc::new(f.auth),
        Arc::new(OidcAuthenticator::new(vec![oidc]).unwrap()),
    ]);
    let oidc_token = sign(
        &oidc_key,
        &with(svid_claims("repo:acme/billing:ref:refs/heads/main"), |c| {
            c["iss"] = json!("https://ci.example")
        }),
    );
    let svid_token = sign(&f.key, &svid_claims(API));
    let identity = |proven: Proven| match proven {
        Proven::Workload(claims) => (claims.identity, claims.method),
        other => panic!("unexpected {other:?}"),
    };
    let got = chain
        .authenticate(&Presented {
            bearer: Some(&oidc_token),
        })
        .await
        .unwrap();
    assert_eq!(identity(got), ("billing-ci".to_owned(), "oidc".to_owned()));
    let got = chain
        .authenticate(&Presented {
            bearer: Some(&svid_token),
        })
        .await
        .unwrap();
    assert_eq!(
        identity(got),
        ("payments-api".to_owned(), "jwt-svid".to_owned())
    );
    // An oversized JWT is left to the OIDC authenticator, which says why.
    let huge = format!("{}.{}.c2ln", b64(b"{}"), "A".repeat(20 * 1024));
    let rejection = chain
        .authenticate(&Presented {
            bearer: Some(&huge),
        })
        .await
        .unwrap_err();
    assert_eq!(rejection.code(), "malformed_credential");
}

#[test]
fn bundle_changes_are_checked_at_most_every_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("value");
    std::fs::write(&path, "one").unwrap();
    let parse = |b: &[u8]| Ok(String::from_utf8_lossy(b).into_owned());
    let slow = FileBundle::new(path.clone(), parse).with_check_interval(Duration::from_secs(3600));
    assert_eq!(*slow.get().unwrap(), "one");
    std::fs::write(&path, "two!").unwrap();
    assert_eq!(
        *slow.get().unwrap(),
        "one",
        "not re-checked before the interval"
    );
    let fast = FileBundle::new(path.clone(), parse).with_check_interval(Duration::ZERO);
    assert_eq!(*fast.get().unwrap(), "two!");
    // A same-size rewrite right after a read is seen even if the filesystem's timestamp
    // did not move (the stamp of a just-written file is not trusted).
    std::fs::write(&path, "2two").unwrap();
    assert_eq!(*fast.get().unwrap(), "2two");
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        *fast.get().unwrap(),
        "2two",
        "a vanished file keeps the last value"
    );
    let missing = FileBundle::new(path, parse);
    assert!(missing.get().unwrap_err().contains("value"));
}

// --- X.509-SVID --------------------------------------------------------------------------

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

fn intermediate(parent: &Ca, name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &parent.cert, &parent.key).unwrap();
    Ca { cert, key }
}

fn svid_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(Ia5String::try_from(*u).unwrap()))
        .collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(1);
    params
}

fn issue(params: CertificateParams, by: &Ca) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &by.cert, &by.key).unwrap();
    (cert.der().clone(), key)
}

fn leaf(
    uris: &[&str],
    by: &Ca,
    edit: impl FnOnce(&mut CertificateParams),
) -> CertificateDer<'static> {
    let mut params = svid_params(uris);
    edit(&mut params);
    issue(params, by).0
}

struct X509Fixture {
    dir: tempfile::TempDir,
    verifier: X509SvidVerifier,
    ca: Ca,
}

fn x509_fixture() -> X509Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("prod.acme root");
    std::fs::write(dir.path().join("bundle.pem"), ca.cert.pem()).unwrap();
    let verifier = X509SvidVerifier::new([config(dir.path())]).unwrap();
    X509Fixture { dir, verifier, ca }
}

fn x509_outcome(
    verifier: &X509SvidVerifier,
    chain: &[CertificateDer<'static>],
) -> Result<WorkloadClaims, String> {
    verifier
        .authenticate_chain(chain, UnixTime::now())
        .map_err(|rejection| {
            let message = rejection.to_string();
            // Never any certificate bytes, raw or encoded, in a message.
            for cert in chain.iter().filter(|c| c.as_ref().len() >= 40) {
                let der = cert.as_ref();
                let b64 = base64::engine::general_purpose::STANDARD.encode(der);
                assert!(
                    !message.contains(&b64[..40]),
                    "{message} contains base64 DER"
                );
                let hex: String = der[..20].iter().map(|b| format!("{b:02x}")).collect();
                assert!(
                    !message.to_ascii_lowercase().contains(&hex),
                    "{message} contains hex DER"
                );
                assert!(!message.contains("BEGIN CERTIFICATE"));
            }
            assert!(message.len() < 300, "{message}");
            rejection.code().to_owned()
        })
}

#[test]
fn x509_svid_verification_table() {
    let f = x509_fixture();
    let other = ca("evil root");
    let via = intermediate(&f.ca, "prod.acme intermediate");
    let now = time::OffsetDateTime::now_utc();

    type Case = (
        &'static str,
        Vec<CertificateDer<'static>>,
        Result<&'static str, &'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "valid SVID",
            vec![leaf(&[API], &f.ca, |_| {})],
            Ok("payments-api"),
        ),
        (
            "valid via intermediate",
            vec![leaf(&[API], &via, |_| {}), via.cert.der().clone()],
            Ok("payments-api"),
        ),
        (
            "intermediate missing",
            vec![leaf(&[API], &via, |_| {})],
            Err("untrusted_issuer"),
        ),
        (
            "pattern rule",
            vec![leaf(
                &["spiffe://prod.acme/ns/payments/sa/worker-2"],
                &f.ca,
                |_| {},
            )],
            Ok("payments-workers"),
        ),
        (
            "no EKU is fine",
            vec![leaf(&[API], &f.ca, |p| p.extended_key_usages.clear())],
            Ok("payments-api"),
        ),
        (
            "chain to another CA",
            vec![leaf(&[API], &other, |_| {})],
            Err("untrusted_issuer"),
        ),
        (
            "self-signed leaf",
            vec![svid_params(&[API])
                .self_signed(&KeyPair::generate().unwrap())
                .unwrap()
                .der()
                .clone()],
            Err("untrusted_issuer"),
        ),
        (
            "zero URI SANs",
            vec![leaf(&[], &f.ca, |p| {
                p.subject_alt_names = vec![SanType::DnsName("api.prod.acme".try_into().unwrap())]
            })],
            Err("malformed_credential"),
        ),
        (
            "two URI SANs",
            vec![leaf(
                &[API, "spiffe://prod.acme/ns/payments/sa/worker-1"],
                &f.ca,
                |_| {},
            )],
            Err("malformed_credential"),
        ),
        (
            "URI SAN not SPIFFE",
            vec![leaf(&["https://prod.acme/api"], &f.ca, |_| {})],
            Err("malformed_credential"),
        ),
        (
            "CA cert presented as leaf",
            vec![leaf(&[API], &f.ca, |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ];
            })],
            Err("malformed_credential"),
        ),
        (
            "no digitalSignature",
            vec![leaf(&[API], &f.ca, |p| {
                p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
            })],
            Err("malformed_credential"),
        ),
        (
            "no keyUsage",
            vec![leaf(&[API], &f.ca, |p| p.key_usages.clear())],
            Err("malformed_credential"),
        ),
        (
            "server-only EKU",
            vec![leaf(&[API], &f.ca, |p| {
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
            })],
            Err("malformed_credential"),
        ),
        (
            "expired leaf",
            vec![leaf(&[API], &f.ca, |p| {
                p.not_before = now - time::Duration::hours(2);
                p.not_after = now - time::Duration::hours(1);
            })],
            Err("expired"),
        ),
        (
            "not-yet-valid leaf",
            vec![leaf(&[API], &f.ca, |p| {
                p.not_before = now + time::Duration::hours(1);
                p.not_after = now + time::Duration::hours(2);
            })],
            Err("not_yet_valid"),
        ),
        (
            "untrusted trust domain",
            vec![leaf(
                &["spiffe://evil.example/ns/payments/sa/api"],
                &f.ca,
                |_| {},
            )],
            Err("untrusted_issuer"),
        ),
        (
            "no rule matched",
            vec![leaf(
                &["spiffe://prod.acme/ns/billing/sa/api"],
                &f.ca,
                |_| {},
            )],
            Err("no_rule_matched"),
        ),
        (
            "garbage",
            vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])],
            Err("malformed_credential"),
        ),
        ("empty chain", vec![], Err("missing_credential")),
    ];
    for (name, chain, expected) in cases {
        let got = x509_outcome(&f.verifier, &chain);
        match (&got, expected) {
            (Ok(claims), Ok(identity)) => assert_eq!(claims.identity, identity, "{name}"),
            (Err(code), Err(want)) => assert_eq!(code, want, "{name}"),
            _ => panic!("{name}: expected {expected:?}, got {got:?}"),
        }
    }

    let claims = x509_outcome(&f.verifier, &[leaf(&[API], &f.ca, |_| {})]).unwrap();
    assert_eq!(claims.method, "spiffe-x509");
    assert_eq!(claims.issuer, "prod.acme");
    assert_eq!(claims.subject, API);
    assert_eq!(claims.attributes["trust_domain"], json!("prod.acme"));
    let expires = claims.expires_at.unwrap();
    assert!((expires - (now + time::Duration::hours(1)).unix_timestamp()).abs() <= 1);
    assert_eq!(
        f.verifier.load_bundles(),
        vec![("prod.acme".to_owned(), Ok(1))]
    );
}

#[test]
fn x509_bundle_reload_picks_up_a_new_ca() {
    let mut f = x509_fixture();
    let path = f.dir.path().join("bundle.pem");
    f.verifier =
        X509SvidVerifier::with_check_interval([config(f.dir.path())], Duration::ZERO).unwrap();
    let rotated = ca("prod.acme root 2");
    let new_svid = leaf(&[API], &rotated, |_| {});
    let old_svid = leaf(&[API], &f.ca, |_| {});
    assert!(x509_outcome(&f.verifier, std::slice::from_ref(&old_svid)).is_ok());
    assert_eq!(
        x509_outcome(&f.verifier, std::slice::from_ref(&new_svid)).unwrap_err(),
        "untrusted_issuer"
    );
    // Rotation: both CAs during the overlap, then only the new one.
    std::fs::write(&path, format!("{}{}", f.ca.cert.pem(), rotated.cert.pem())).unwrap();
    assert!(x509_outcome(&f.verifier, std::slice::from_ref(&new_svid)).is_ok());
    assert!(x509_outcome(&f.verifier, std::slice::from_ref(&old_svid)).is_ok());
    // A broken file keeps the previous bundle.
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(x509_outcome(&f.verifier, std::slice::from_ref(&new_svid)).is_ok());
    std::fs::write(&path, rotated.cert.pem()).unwrap();
    assert!(x509_outcome(&f.verifier, &[new_svid]).is_ok());
    assert_eq!(
        x509_outcome(&f.verifier, &[old_svid]).unwrap_err(),
        "untrusted_issuer"
    );
}

#[test]
fn x509_missing_bundle_is_keys_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = X509SvidVerifier::new([config(dir.path())]).unwrap();
    let ca = ca("root");
    assert_eq!(
        x509_outcome(&verifier, &[leaf(&[API], &ca, |_| {})]).unwrap_err(),
        "keys_unavailable"
    );
    assert!(verifier.load_bundles()[0].1.is_err());
}

// --- TLS handshake -------------------------------------------------------------------------

mod tls {
    use std::io::{Read, Write};

    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Runs a handshake in memory; returns the server's view of the peer chain.
    fn handshake(
        verifier: &X509SvidVerifier,
        client_cert: Option<(Vec<CertificateDer<'static>>, &KeyPair)>,
    ) -> Result<Option<Vec<CertificateDer<'static>>>, rustls::Error> {
        let server_ca = ca("server ca");
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["mayfly.test".to_owned()])
            .unwrap()
            .signed_by(&server_key, &server_ca.cert, &server_ca.key)
            .unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier.client_cert_verifier())
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(server_ca.cert.der().clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let client = match client_cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, PrivateKeyDer::try_from(key.serialize_der()).unwrap())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let mut client =
            ClientConnection::new(Arc::new(client), "mayfly.test".try_into().unwrap()).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        client.writer().write_all(b"ping").unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            if let Err(e) = client.process_new_packets() {
                // The server's alert arrives after its own error; report the server's.
                let _ = e;
            }
        }
        let mut got = [0u8; 4];
        server.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        Ok(server
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect()))
    }

    #[test]
    fn client_certificates_are_optional_and_verified() {
        let f = x509_fixture();
        let verifier = f.verifier;

        // Bearer-token clients connect without a certificate.
        assert_eq!(handshake(&verifier, None).unwrap(), None);

        // An SVID: the server gets the chain and authenticates it.
        let via = intermediate(&f.ca, "intermediate");
        let (svid, key) = issue(svid_params(&[API]), &via);
        let chain = handshake(&verifier, Some((vec![svid, via.cert.der().clone()], &key)))
            .unwrap()
            .unwrap();
        let claims = verifier
            .authenticate_chain(&chain, UnixTime::now())
            .unwrap();
        assert_eq!(claims.identity, "payments-api");

        // The verifier does not apply rules (authenticate_chain does, with a clear code).
        let (svid, key) = issue(svid_params(&["spiffe://prod.acme/ns/billing/sa/x"]), &f.ca);
        let chain = handshake(&verifier, Some((vec![svid], &key)))
            .unwrap()
            .unwrap();
        assert_eq!(
            verifier
                .authenticate_chain(&chain, UnixTime::now())
                .unwrap_err()
                .code(),
            "no_rule_matched"
        );

        // Certificates that are not SVIDs of a configured trust domain fail the handshake.
        let other = ca("evil");
        let (svid, key) = issue(svid_params(&[API]), &other);
        assert!(matches!(
            handshake(&verifier, Some((vec![svid], &key))),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ));
        let (svid, key) = issue(svid_params(&[]), &f.ca);
        assert!(matches!(
            handshake(&verifier, Some((vec![svid], &key))),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding
            ))
        ));
    }
}
