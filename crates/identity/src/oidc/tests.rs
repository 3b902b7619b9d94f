//! OIDC authenticator tests with real crypto: keys are generated per test (Ed25519,
//! ECDSA P-256/P-384 via ring), JWKS documents are built by hand and served by a real
//! HTTP server on 127.0.0.1 that counts its requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use mayfly_core::auth::{AuthOutcome, Authenticator, Presented, Proven};
use mayfly_core::duration::Ttl;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::jwks::{max_age, Timing};
use super::*;

// --- keys and tokens -------------------------------------------------------------------

struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The raw public key, for the key-confusion test.
    public: Vec<u8>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ed25519(kid: &str) -> TestKey {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_ref().to_vec();
    TestKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&public), "kid": kid,
                    "use": "sig", "alg": "EdDSA"}),
        public,
    }
}

fn ecdsa(kid: &str, p384: bool) -> TestKey {
    let rng = SystemRandom::new();
    let (signing, crv, alg, size) = if p384 {
        (
            &ECDSA_P384_SHA384_FIXED_SIGNING,
            "P-384",
            Algorithm::ES384,
            48,
        )
    } else {
        (
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            "P-256",
            Algorithm::ES256,
            32,
        )
    };
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
    // Uncompressed point: 0x04 || x || y.
    let public = pair.public_key().as_ref().to_vec();
    TestKey {
        kid: kid.into(),
        alg,
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": crv, "x": b64(&public[1..1 + size]),
                    "y": b64(&public[1 + size..]), "kid": kid, "use": "sig"}),
        public,
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// Signs any header/claims pair, so tests can forge headers jsonwebtoken would not build.
fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn sign(key: &TestKey, claims: &Value) -> String {
    let header = json!({"alg": alg_name(key.alg), "kid": key.kid, "typ": "JWT"});
    sign_raw(&header, claims, &key.encoding, key.alg)
}

fn alg_name(alg: Algorithm) -> &'static str {
    jwks::alg_name(alg)
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Claims of a GitHub-Actions-like token for the main branch of acme/billing.
fn claims(issuer: &str) -> Value {
    let now = now();
    json!({
        "iss": issuer,
        "aud": "mayfly",
        "sub": "repo:acme/billing:ref:refs/heads/main",
        "repository": "acme/billing",
        "ref": "refs/heads/main",
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600,
    })
}

fn with(mut claims: Value, edit: impl FnOnce(&mut Value)) -> Value {
    edit(&mut claims);
    claims
}

fn without(claims: Value, name: &str) -> Value {
    with(claims, |c| {
        c.as_object_mut().unwrap().remove(name);
    })
}

// --- a JWKS server ---------------------------------------------------------------------

#[derive(Clone)]
struct ServerState {
    jwks: Arc<Mutex<String>>,
    cache_control: Arc<Mutex<String>>,
    delay: Arc<Mutex<Duration>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
    base: String,
}

struct TestServer {
    state: ServerState,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    async fn start(jwks: String) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = ServerState {
            jwks: Arc::new(Mutex::new(jwks)),
            cache_control: Arc::new(Mutex::new("public, max-age=300".into())),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            jwks_hits: Arc::new(AtomicUsize::new(0)),
            discovery_hits: Arc::new(AtomicUsize::new(0)),
            base,
        };
        let serving = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, serving.clone()));
            }
        });
        TestServer { state, task }
    }

    fn issuer(&self) -> &str {
        &self.state.base
    }

    fn hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }

    fn set_jwks(&self, jwks: String) {
        *self.state.jwks.lock().unwrap() = jwks;
    }

    /// Stops accepting connections: the listener is dropped, so connects are refused.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn serve(mut stream: tokio::net::TcpStream, state: ServerState) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let (status, body, cache_control) = match path.as_str() {
        "/jwks" => {
            state.jwks_hits.fetch_add(1, Ordering::SeqCst);
            let delay = *state.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            let body = state.jwks.lock().unwrap().clone();
            let cc = state.cache_control.lock().unwrap().clone();
            ("200 OK", body, cc)
        }
        "/.well-known/openid-configuration" => {
            state.discovery_hits.fetch_add(1, Ordering::SeqCst);
            let doc = json!({"issuer": state.base, "jwks_uri": format!("{}/jwks", state.base)});
            ("200 OK", doc.to_string(), "max-age=60".into())
        }
        _ => ("404 Not Found", "{}".into(), "no-store".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nCache-Control: {cache_control}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

// --- configuration ---------------------------------------------------------------------

fn rule(identity: &str, claims: &[(&str, &str)], attributes: &[&str]) -> OidcRule {
    OidcRule {
        identity: identity.into(),
        claims: claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        attributes: attributes.iter().map(|s| s.to_string()).collect(),
    }
}

fn issuer_config(issuer: &str) -> OidcIssuerConfig {
    OidcIssuerConfig {
        issuer: issuer.into(),
        audiences: vec!["mayfly".into(), "mayfly-staging".into()],
        jwks_url: Some(format!("{issuer}/jwks")),
        discovery: false,
        jwks_file: None,
        algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
        clock_skew: Ttl::from_secs(60),
        required_claims: vec!["repository".into()],
        attributes: vec!["repository".into()],
        humans: None,
        rules: vec![
            rule(
                "billing-deployer",
                &[("sub", "repo:acme/billing:ref:refs/heads/main")],
                &["ref"],
            ),
            rule("billing-ci", &[("sub", "repo:acme/billing:*")], &[]),
            rule(
                "batch-runner",
                &[
                    ("kubernetes.io/namespace", "batch-*"),
                    ("kubernetes.io/serviceaccount/name", "runner"),
                ],
                &["kubernetes.io/namespace"],
            ),
            rule("admins-group", &[("groups", "admins")], &[]),
        ],
    }
}

fn authenticator(configs: Vec<OidcIssuerConfig>, timing: Option<Timing>) -> OidcAuthenticator {
    let mut auth = OidcAuthenticator::new(configs).unwrap();
    if let Some(timing) = timing {
        for issuer in &mut auth.issuers {
            issuer.jwks.timing = timing;
        }
    }
    auth
}

fn fast_timing(refetch: Duration) -> Timing {
    Timing {
        default_max_age: Duration::from_secs(300),
        min_max_age: Duration::ZERO,
        max_max_age: Duration::from_secs(24 * 3600),
        min_refetch_interval: refetch,
        retry_without_keys: refetch,
    }
}

async fn run(auth: &OidcAuthenticator, token: &str) -> AuthOutcome {
    auth.authenticate(&Presented {
        bearer: Some(token),
    })
    .await
}

/// `Ok(identity)` or `Err(rejection code)`; NotMine is `Err("not_mine")`.
async fn outcome(auth: &OidcAuthenticator, token: &str) -> Result<WorkloadClaims, String> {
    match run(auth, token).await {
        AuthOutcome::Accepted(Proven::Workload(claims)) => Ok(claims),
        AuthOutcome::Accepted(other) => panic!("unexpected {other:?}"),
        AuthOutcome::Rejected(r) => {
            let message = r.to_string();
            // No rejection may echo the credential or any of its parts.
            for part in token.split('.').filter(|p| p.len() > 8) {
                assert!(
                    !message.contains(part),
                    "rejection {message:?} leaks the token"
                );
            }
            Err(r.code().to_string())
        }
        AuthOutcome::NotMine => Err("not_mine".into()),
    }
}

// --- the table -------------------------------------------------------------------------

#[tokio::test]
async fn verification_table() {
    let ed = ed25519("ed-1");
    let ec = ecdsa("ec-1", false);
    let ec384 = ecdsa("ec384-1", true);
    let server = TestServer::start(jwks(&[&ed, &ec, &ec384])).await;
    let iss = server.issuer().to_string();
    let auth = authenticator(vec![issuer_config(&iss)], None);
    let base = || claims(&iss);
    let t = now();

    let impostor = ed25519("ed-1"); // same kid, different key
    let stranger = ed25519("ed-unknown");
    let untrusted = "https://evil.example";

    // The payload of a validly signed token swapped for another one.
    let tampered = {
        let good = sign(&ed, &base());
        let other = sign(
            &ed,
            &with(base(), |c| {
                c["sub"] = json!("repo:acme/billing:ref:refs/heads/evil")
            }),
        );
        let g: Vec<&str> = good.split('.').collect();
        let o: Vec<&str> = other.split('.').collect();
        format!("{}.{}.{}", g[0], o[1], g[2])
    };
    let alg_none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "ed-1"}).to_string().as_bytes()),
        b64(base().to_string().as_bytes())
    );
    let alg_none_upper = format!(
        "{}.{}.",
        b64(json!({"alg": "NONE"}).to_string().as_bytes()),
        b64(base().to_string().as_bytes())
    );
    // Key confusion: HMAC with the public key (raw, and as the JWK text) as the secret.
    let hs256_raw = sign_raw(
        &json!({"alg": "HS256", "kid": "ed-1"}),
        &base(),
        &EncodingKey::from_secret(&ed.public),
        Algorithm::HS256,
    );
    let hs256_jwk = sign_raw(
        &json!({"alg": "HS256", "kid": "ec-1"}),
        &base(),
        &EncodingKey::from_secret(ec.jwk.to_string().as_bytes()),
        Algorithm::HS256,
    );
    let hs512 = sign_raw(
        &json!({"alg": "HS512", "kid": "ec-1"}),
        &base(),
        &EncodingKey::from_secret(&ec.public),
        Algorithm::HS512,
    );
    // An ES256 signature presented under an Ed25519 key's kid.
    let ec_under_ed_kid = sign_raw(
        &json!({"alg": "ES256", "kid": "ed-1"}),
        &base(),
        &ec.encoding,
        Algorithm::ES256,
    );
    let with_crit = sign_raw(
        &json!({"alg": "EdDSA", "kid": "ed-1", "crit": ["exp"], "exp": 1}),
        &base(),
        &ed.encoding,
        Algorithm::EdDSA,
    );
    // An embedded key in the header must be ignored, not trusted.
    let embedded_jwk = sign_raw(
        &json!({"alg": "EdDSA", "kid": "ed-1", "jwk": impostor.jwk}),
        &base(),
        &impostor.encoding,
        Algorithm::EdDSA,
    );

    type Want = Result<&'static str, &'static str>;
    let cases: Vec<(&str, String, Want)> = vec![
        ("valid EdDSA", sign(&ed, &base()), Ok("billing-deployer")),
        ("valid ES256", sign(&ec, &base()), Ok("billing-deployer")),
        (
            "glob rule",
            sign(
                &ec,
                &with(base(), |c| {
                    c["sub"] = json!("repo:acme/billing:pull_request")
                }),
            ),
            Ok("billing-ci"),
        ),
        (
            "nested claims (JSON pointer) rule",
            sign(
                &ed,
                &with(base(), |c| {
                    c["sub"] = json!("system:serviceaccount:batch-7:runner");
                    c["kubernetes.io"] =
                        json!({"namespace": "batch-7", "serviceaccount": {"name": "runner"}});
                }),
            ),
            Ok("batch-runner"),
        ),
        (
            "nested claim mismatch",
            sign(
                &ed,
                &with(base(), |c| {
                    c["sub"] = json!("system:serviceaccount:batch-7:other");
                    c["kubernetes.io"] =
                        json!({"namespace": "batch-7", "serviceaccount": {"name": "other"}});
                }),
            ),
            Err("no_rule_matched"),
        ),
        (
            "array claim matches any element",
            sign(
                &ed,
                &with(base(), |c| {
                    c["sub"] = json!("user:x");
                    c["groups"] = json!(["dev", "admins"]);
                }),
            ),
            Ok("admins-group"),
        ),
        (
            "audience in array",
            sign(
                &ed,
                &with(base(), |c| c["aud"] = json!(["other", "mayfly-staging"])),
            ),
            Ok("billing-deployer"),
        ),
        (
            "expired",
            sign(&ed, &with(base(), |c| c["exp"] = json!(t - 120))),
            Err("expired"),
        ),
        (
            "expired within skew",
            sign(&ed, &with(base(), |c| c["exp"] = json!(t - 30))),
            Ok("billing-deployer"),
        ),
        (
            "fractional exp",
            sign(&ed, &with(base(), |c| c["exp"] = json!(t as f64 + 100.5))),
            Ok("billing-deployer"),
        ),
        (
            "not yet valid",
            sign(&ed, &with(base(), |c| c["nbf"] = json!(t + 120))),
            Err("not_yet_valid"),
        ),
        (
            "nbf within skew",
            sign(&ed, &with(base(), |c| c["nbf"] = json!(t + 30))),
            Ok("billing-deployer"),
        ),
        (
            "issued in the future",
            sign(&ed, &with(base(), |c| c["iat"] = json!(t + 120))),
            Err("not_yet_valid"),
        ),
        (
            "exp not a number",
            sign(&ed, &with(base(), |c| c["exp"] = json!("tomorrow"))),
            Err("malformed_credential"),
        ),
        (
            "missing exp",
            sign(&ed, &without(base(), "exp")),
            Err("missing_claim"),
        ),
        (
            "wrong audience",
            sign(&ed, &with(base(), |c| c["aud"] = json!("someone-else"))),
            Err("wrong_audience"),
        ),
        (
            "missing audience",
            sign(&ed, &without(base(), "aud")),
            Err("wrong_audience"),
        ),
        (
            "missing sub",
            sign(&ed, &without(base(), "sub")),
            Err("missing_claim"),
        ),
        (
            "missing required claim",
            sign(&ed, &without(base(), "repository")),
            Err("missing_claim"),
        ),
        (
            "null required claim",
            sign(&ed, &with(base(), |c| c["repository"] = Value::Null)),
            Err("missing_claim"),
        ),
        (
            "no rule matched",
            sign(
                &ed,
                &with(base(), |c| {
                    c["sub"] = json!("repo:evil/billing:ref:refs/heads/main")
                }),
            ),
            Err("no_rule_matched"),
        ),
        (
            "glob does not match prefix",
            sign(
                &ed,
                &with(base(), |c| c["sub"] = json!("xrepo:acme/billing:ref")),
            ),
            Err("no_rule_matched"),
        ),
        (
            "untrusted issuer",
            sign(&ed, &with(base(), |c| c["iss"] = json!(untrusted))),
            Err("untrusted_issuer"),
        ),
        (
            "no issuer",
            sign(&ed, &without(base(), "iss")),
            Err("missing_claim"),
        ),
        ("unknown kid", sign(&stranger, &base()), Err("unknown_kid")),
        (
            "bad signature (other key, same kid)",
            sign(&impostor, &base()),
            Err("bad_signature"),
        ),
        ("tampered payload", tampered, Err("bad_signature")),
        (
            "embedded jwk header ignored",
            embedded_jwk,
            Err("bad_signature"),
        ),
        ("alg none", alg_none, Err("algorithm_not_allowed")),
        ("alg NONE", alg_none_upper, Err("algorithm_not_allowed")),
        (
            "HS256 with public key as secret",
            hs256_raw,
            Err("algorithm_not_allowed"),
        ),
        (
            "HS256 with JWK as secret",
            hs256_jwk,
            Err("algorithm_not_allowed"),
        ),
        ("HS512", hs512, Err("algorithm_not_allowed")),
        (
            "alg not in allowed list (ES384)",
            sign(&ec384, &base()),
            Err("algorithm_not_allowed"),
        ),
        (
            "alg does not fit the key",
            ec_under_ed_kid,
            Err("algorithm_not_allowed"),
        ),
        ("crit header", with_crit, Err("malformed_credential")),
        (
            "header not JSON",
            format!(
                "{}.{}.{}",
                b64(b"nope"),
                b64(base().to_string().as_bytes()),
                b64(b"sig")
            ),
            Err("malformed_credential"),
        ),
        (
            "too large",
            format!(
                "{}.{}.{}",
                b64(b"{}"),
                "A".repeat(MAX_TOKEN_BYTES),
                b64(b"sig")
            ),
            Err("malformed_credential"),
        ),
        ("not a JWT", "mfy_op_abcdef".into(), Err("not_mine")),
        ("two parts", "abc.def".into(), Err("not_mine")),
        ("not base64url", "a+b.c/d.e".into(), Err("not_mine")),
    ];

    let mut failures = Vec::new();
    for (name, token, want) in &cases {
        let got = outcome(&auth, token).await;
        let ok = match (&got, want) {
            (Ok(claims), Ok(identity)) => claims.identity == *identity,
            (Err(code), Err(want_code)) => code == want_code,
            _ => false,
        };
        if !ok {
            failures.push(format!("{name}: want {want:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    // One fetch served the whole table: no request-driven refetching for unknown kids.
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn accepted_claims_carry_identity_and_attributes() {
    let ed = ed25519("k1");
    let server = TestServer::start(jwks(&[&ed])).await;
    let iss = server.issuer().to_string();
    let auth = authenticator(vec![issuer_config(&iss)], None);

    let exp = now() + 300;
    let token = sign(&ed, &with(claims(&iss), |c| c["exp"] = json!(exp)));
    let got = outcome(&auth, &token).await.unwrap();
    let mut attributes = BTreeMap::new();
    attributes.insert("repository".to_string(), json!("acme/billing"));
    attributes.insert("ref".to_string(), json!("refs/heads/main"));
    assert_eq!(
        got,
        WorkloadClaims {
            identity: "billing-deployer".into(),
            method: "oidc".into(),
            issuer: iss.clone(),
            subject: "repo:acme/billing:ref:refs/heads/main".into(),
            attributes,
            expires_at: Some(exp),
        }
    );

    // The nested-claim rule copies the pointer-named attribute under its configured name.
    let token = sign(
        &ed,
        &with(claims(&iss), |c| {
            c["sub"] = json!("system:serviceaccount:batch-1:runner");
            c["kubernetes.io"] =
                json!({"namespace": "batch-1", "serviceaccount": {"name": "runner"}});
        }),
    );
    let got = outcome(&auth, &token).await.unwrap();
    assert_eq!(got.identity, "batch-runner");
    assert_eq!(got.attributes["kubernetes.io/namespace"], json!("batch-1"));
    assert_eq!(got.attributes["repository"], json!("acme/billing"));
    assert!(!got.attributes.contains_key("ref"));
}

// --- key cache behaviour -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_concurrent_requests_share_one_fetch() {
    let ed = ed25519("k1");
    let server = TestServer::start(jwks(&[&ed])).await;
    *server.state.delay.lock().unwrap() = Duration::from_millis(200);
    let iss = server.issuer().to_string();
    let auth = Arc::new(authenticator(vec![issuer_config(&iss)], None));
    let token = sign(&ed, &claims(&iss));

    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (auth, token) = (auth.clone(), token.clone());
            tokio::spawn(async move { outcome(&auth, &token).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().identity, "billing-deployer");
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refresh_is_rate_limited_and_shared() {
    let ed = ed25519("k1");
    let server = TestServer::start(jwks(&[&ed])).await;
    let iss = server.issuer().to_string();

    // Production timing: the load itself counts as the last attempt, so 20 concurrent
    // unknown kids right after it cause no fetch at all.
    let auth = Arc::new(authenticator(vec![issuer_config(&iss)], None));
    assert!(outcome(&auth, &sign(&ed, &claims(&iss))).await.is_ok());
    assert_eq!(server.hits(), 1);
    let burst = |auth: Arc<OidcAuthenticator>, iss: String| async move {
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (auth, iss) = (auth.clone(), iss.clone());
                tokio::spawn(async move {
                    let key = ed25519(&format!("made-up-{i}"));
                    outcome(&auth, &sign(&key, &claims(&iss))).await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap_err(), "unknown_kid");
        }
    };
    burst(auth.clone(), iss.clone()).await;
    assert_eq!(server.hits(), 1, "no refetch within 30 s of the last fetch");

    // Once the interval has passed, a burst of unknown kids (served slowly, so they all
    // arrive while the fetch runs) still causes exactly one fetch.
    let auth = Arc::new(authenticator(
        vec![issuer_config(&iss)],
        Some(fast_timing(Duration::from_millis(500))),
    ));
    assert!(outcome(&auth, &sign(&ed, &claims(&iss))).await.is_ok());
    assert_eq!(server.hits(), 2);
    tokio::time::sleep(Duration::from_millis(600)).await;
    *server.state.delay.lock().unwrap() = Duration::from_millis(150);
    burst(auth.clone(), iss.clone()).await;
    assert_eq!(server.hits(), 3, "one shared refresh for the whole burst");
}

#[tokio::test]
async fn rotated_key_is_picked_up_after_the_refresh_interval() {
    let old = ed25519("old");
    let new = ecdsa("new", false);
    let server = TestServer::start(jwks(&[&old])).await;
    let iss = server.issuer().to_string();
    let auth = authenticator(
        vec![issuer_config(&iss)],
        Some(fast_timing(Duration::from_millis(300))),
    );
    assert!(outcome(&auth, &sign(&old, &claims(&iss))).await.is_ok());

    server.set_jwks(jwks(&[&new]));
    // Within the interval the new kid is unknown and nothing is fetched.
    assert_eq!(
        outcome(&auth, &sign(&new, &claims(&iss)))
            .await
            .unwrap_err(),
        "unknown_kid"
    );
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(outcome(&auth, &sign(&new, &claims(&iss))).await.is_ok());
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn previous_keys_keep_working_while_the_issuer_is_down() {
    let ed = ed25519("k1");
    let server = TestServer::start(jwks(&[&ed])).await;
    // Keys go stale immediately, so every request wants to revalidate.
    *server.state.cache_control.lock().unwrap() = "no-store".into();
    let iss = server.issuer().to_string();
    let auth = authenticator(vec![issuer_config(&iss)], Some(fast_timing(Duration::ZERO)));
    let token = sign(&ed, &claims(&iss));
    assert!(outcome(&auth, &token).await.is_ok());
    let fetches = || auth.issuers[0].jwks.fetches.load(Ordering::SeqCst);
    assert_eq!(fetches(), 1);

    server.stop().await;
    // A different token each time, so the verification cache is not what answers.
    for i in 0..3 {
        let token = sign(&ed, &with(claims(&iss), |c| c["jti"] = json!(i)));
        assert_eq!(
            outcome(&auth, &token).await.unwrap().identity,
            "billing-deployer"
        );
    }
    assert!(fetches() >= 2, "revalidation was attempted and failed");
    // Unknown kids are still just unknown, not "keys unavailable".
    let stranger = ed25519("k2");
    assert_eq!(
        outcome(&auth, &sign(&stranger, &claims(&iss)))
            .await
            .unwrap_err(),
        "unknown_kid"
    );
}

#[tokio::test]
async fn no_keys_ever_loaded_is_keys_unavailable() {
    let ed = ed25519("k1");
    let server = TestServer::start(jwks(&[&ed])).await;
    let iss = server.issuer().to_string();
    server.stop().await;
    let auth = authenticator(vec![issuer_config(&iss)], None);
    let token = sign(&ed, &claims(&iss));
    assert_eq!(
        outcome(&auth, &token).await.unwrap_err(),
        "keys_unavailable"
    );
    // Within the retry interval, the failure is answered without another attempt.
    assert_eq!(
        outcome(&auth, &token).await.unwrap_err(),
        "keys_unavailable"
    );
    assert_eq!(auth.issuers[0].jwks.fetches.load(Ordering::SeqCst), 1);
    let report = auth.prefetch().await;
    assert!(report[0].1.is_err());
}

#[tokio::test]
async fn unusable_jwks_does_not_replace_good_keys() {
    let ed = ed25519("k1");
    let server = TestServer::start(jwks(&[&ed])).await;
    let iss = server.issuer().to_string();
    let auth = authenticator(vec![issuer_config(&iss)], Some(fast_timing(Duration::ZERO)));
    assert!(outcome(&auth, &sign(&ed, &claims(&iss))).await.is_ok());
    // Only a symmetric key and garbage: nothing usable, so the old keys stay.
    server.set_jwks(
        json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}, {"kty": "EC"}]}).to_string(),
    );
    let stranger = ed25519("k2");
    assert_eq!(
        outcome(&auth, &sign(&stranger, &claims(&iss)))
            .await
            .unwrap_err(),
        "unknown_kid"
    );
    assert!(server.hits() >= 2);
    let token = sign(&ed, &with(claims(&iss), |c| c["jti"] = json!("x")));
    assert!(outcome(&auth, &token).await.is_ok());
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let ec = ecdsa("k1", false);
    let server = TestServer::start(jwks(&[&ec])).await;
    let iss = server.issuer().to_string();
    let mut config = issuer_config(&iss);
    config.jwks_url = None;
    config.discovery = true;
    let auth = authenticator(vec![config], None);
    let report = auth.prefetch().await;
    assert_eq!(report, vec![(iss.clone(), Ok(1))]);
    assert!(outcome(&auth, &sign(&ec, &claims(&iss))).await.is_ok());
    assert_eq!(server.state.discovery_hits.load(Ordering::SeqCst), 1);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn jwks_file_source_and_rotation() {
    let old = ed25519("old");
    let new = ed25519("new");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&[&old])).unwrap();
    let iss = "https://issuer.internal";
    let mut config = issuer_config(iss);
    config.jwks_url = None;
    config.jwks_file = Some(path.clone());

    let auth = authenticator(
        vec![config.clone()],
        Some(fast_timing(Duration::from_millis(200))),
    );
    assert!(outcome(&auth, &sign(&old, &claims(iss))).await.is_ok());
    std::fs::write(&path, jwks(&[&old, &new])).unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(outcome(&auth, &sign(&new, &claims(iss))).await.is_ok());

    // A missing file at start is keys_unavailable, not a crash.
    config.jwks_file = Some(dir.path().join("missing.json"));
    let auth = authenticator(vec![config], None);
    assert_eq!(
        outcome(&auth, &sign(&old, &claims(iss))).await.unwrap_err(),
        "keys_unavailable"
    );
}

// --- verification cache ------------------------------------------------------------------

#[tokio::test]
async fn verification_cache_never_extends_validity() {
    let ed = ed25519("k1");
    let server = TestServer::start(jwks(&[&ed])).await;
    let iss = server.issuer().to_string();
    let mut config = issuer_config(&iss);
    config.clock_skew = Ttl::from_secs(0);
    let auth = authenticator(vec![config], None);

    let token = sign(&ed, &with(claims(&iss), |c| c["exp"] = json!(now() + 2)));
    assert!(outcome(&auth, &token).await.is_ok());
    assert_eq!(auth.verified.len(), 1);
    assert!(
        outcome(&auth, &token).await.is_ok(),
        "served from the cache"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(outcome(&auth, &token).await.unwrap_err(), "expired");
    assert_eq!(auth.verified.len(), 0);
}

#[tokio::test]
async fn verification_cache_drops_tokens_of_removed_keys() {
    let ed = ed25519("k1");
    let other = ed25519("k2");
    let server = TestServer::start(jwks(&[&ed])).await;
    *server.state.cache_control.lock().unwrap() = "max-age=0".into();
    let iss = server.issuer().to_string();
    let auth = authenticator(vec![issuer_config(&iss)], Some(fast_timing(Duration::ZERO)));
    let token = sign(&ed, &claims(&iss));
    assert!(outcome(&auth, &token).await.is_ok());
    server.set_jwks(jwks(&[&other]));
    assert_eq!(outcome(&auth, &token).await.unwrap_err(), "unknown_kid");
}

// --- routing ------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_issuers_can_be_passed_on() {
    let ed = ed25519("k1");
    let auth = authenticator(vec![issuer_config("https://issuer.example")], None)
        .pass_unknown_issuers(true);
    let token = sign(&ed, &claims("https://other.example"));
    assert!(matches!(run(&auth, &token).await, AuthOutcome::NotMine));
    assert!(matches!(
        auth.authenticate(&Presented { bearer: None }).await,
        AuthOutcome::NotMine
    ));
}

#[tokio::test]
async fn issuer_match_is_exact() {
    let ed = ed25519("k1");
    let auth = authenticator(vec![issuer_config("https://issuer.example")], None);
    let token = sign(&ed, &claims("https://issuer.example/"));
    match run(&auth, &token).await {
        AuthOutcome::Rejected(r) => {
            assert_eq!(r.code(), "untrusted_issuer");
            assert!(r.to_string().contains("https://issuer.example/"));
        }
        other => panic!("{other:?}"),
    }
}

// --- units ----------------------------------------------------------------------------------

#[test]
fn cache_control_max_age_is_clamped() {
    let timing = Timing::default();
    let cases: &[(Option<&str>, u64)] = &[
        (None, 300),
        (Some("public, max-age=3600"), 3600),
        (Some("max-age=5"), 30),
        (Some("max-age=999999"), 86_400),
        (Some("no-cache"), 30),
        (Some("private, no-store"), 30),
        (Some("max-age=abc"), 300),
        (Some("Max-Age=120, must-revalidate"), 120),
    ];
    for (header, want) in cases {
        assert_eq!(max_age(*header, &timing).as_secs(), *want, "{header:?}");
    }
}

#[test]
fn glob_patterns() {
    let cases = [
        (
            "repo:acme/billing:*",
            "repo:acme/billing:ref:refs/heads/main",
            true,
        ),
        ("repo:acme/billing:*", "repo:acme/billing:", true),
        ("repo:acme/billing:*", "repo:acme/billingx:ref", false),
        (
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/api:ref:refs/heads/main",
            true,
        ),
        (
            "repo:acme/*:ref:refs/heads/main",
            "repo:acme/api:ref:refs/heads/dev",
            false,
        ),
        ("*main", "refs/heads/main", true),
        ("*a*b*c", "xxaxxbxxc", true),
        ("*a*b*c", "xxaxxbxxcx", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
        ("", "", true),
        ("", "x", false),
        ("**", "", true),
        ("a*a*a*a*a*a*b", &"a".repeat(2000), false),
    ];
    for (pattern, text, want) in cases {
        assert_eq!(
            claims::glob_match(pattern, text),
            want,
            "{pattern:?} vs {text:?}"
        );
    }
}

#[test]
fn claim_lookup_paths() {
    let claims_json = json!({
        "sub": "s",
        "kubernetes.io": {"namespace": "ns", "pod": {"name": "p"}},
        "https://example.com/roles": ["a"],
        "list": [{"x": 1}],
        "nothing": null,
    });
    let map = claims_json.as_object().unwrap();
    let cases: &[(&str, Option<Value>)] = &[
        ("sub", Some(json!("s"))),
        ("kubernetes.io/namespace", Some(json!("ns"))),
        ("kubernetes.io/pod/name", Some(json!("p"))),
        ("kubernetes.io/missing", None),
        ("https:~1~1example.com~1roles", Some(json!(["a"]))),
        ("list/0/x", Some(json!(1))),
        ("nothing", None),
        ("sub/deeper", None),
    ];
    for (name, want) in cases {
        assert_eq!(claims::lookup(map, name).cloned(), *want, "{name}");
    }
    assert!(claims::value_matches(&json!(42), "4*"));
    assert!(claims::value_matches(&json!(true), "true"));
    assert!(!claims::value_matches(&json!({"a": "b"}), "*"));
}

// --- configuration ------------------------------------------------------------------------

#[test]
fn config_deserializes_with_defaults_and_rejects_unknown_fields() {
    let config: OidcIssuerConfig = serde_json::from_value(json!({
        "issuer": "https://token.actions.githubusercontent.com",
        "audiences": ["mayfly"],
        "discovery": true,
        "rules": [{"identity": "billing-deployer",
                   "claims": {"sub": "repo:acme/billing:ref:refs/heads/main"}}],
    }))
    .unwrap();
    assert_eq!(config.algorithms, vec!["RS256", "ES256", "EdDSA"]);
    assert_eq!(config.clock_skew, Ttl::from_secs(60));
    assert!(config.required_claims.is_empty());
    assert!(OidcAuthenticator::new(vec![config]).is_ok());

    let with_skew: OidcIssuerConfig = serde_json::from_value(json!({
        "issuer": "https://i", "audiences": ["a"], "jwks_url": "https://i/jwks",
        "clock_skew": "90s", "rules": [{"identity": "x", "claims": {"sub": "y"}}],
    }))
    .unwrap();
    assert_eq!(with_skew.clock_skew, Ttl::from_secs(90));

    for bad in [
        json!({"issuer": "https://i", "audiences": ["a"], "discovery": true, "rules": [], "audience": "typo"}),
        json!({"issuer": "https://i", "audiences": ["a"], "discovery": true,
               "rules": [{"identity": "x", "claims": {"sub": "y"}, "claim": {}}]}),
    ] {
        assert!(serde_json::from_value::<OidcIssuerConfig>(bad).is_err());
    }
}

#[test]
fn config_validation_refuses_dangerous_or_ambiguous_settings() {
    let good = issuer_config("https://issuer.example");
    assert!(OidcAuthenticator::new(vec![good.clone()]).is_ok());
    type Edit = Box<dyn Fn(&mut OidcIssuerConfig)>;
    let variants: Vec<(&str, Edit)> = vec![
        (
            "HS256 allowed",
            Box::new(|c| c.algorithms = vec!["HS256".into()]),
        ),
        (
            "none allowed",
            Box::new(|c| c.algorithms = vec!["none".into()]),
        ),
        (
            "unknown alg",
            Box::new(|c| c.algorithms = vec!["XS256".into()]),
        ),
        ("no algorithms", Box::new(|c| c.algorithms.clear())),
        ("no audiences", Box::new(|c| c.audiences.clear())),
        (
            "empty audience",
            Box::new(|c| c.audiences = vec![String::new()]),
        ),
        ("two key sources", Box::new(|c| c.discovery = true)),
        ("no key source", Box::new(|c| c.jwks_url = None)),
        (
            "plain http jwks",
            Box::new(|c| c.jwks_url = Some("http://issuer.example/jwks".into())),
        ),
        (
            "skew too large",
            Box::new(|c| c.clock_skew = Ttl::from_secs(3600)),
        ),
        ("no rules", Box::new(|c| c.rules.clear())),
        (
            "unconstrained rule",
            Box::new(|c| c.rules[0].claims.clear()),
        ),
        (
            "star-only rule",
            Box::new(|c| c.rules[0].claims = [("sub".to_string(), "**".to_string())].into()),
        ),
        (
            "bad identity name",
            Box::new(|c| c.rules[0].identity = "Billing Deployer".into()),
        ),
        (
            "bad claim name",
            Box::new(|c| c.required_claims = vec!["/sub".into()]),
        ),
        ("empty issuer", Box::new(|c| c.issuer = String::new())),
    ];
    for (name, edit) in variants {
        let mut config = good.clone();
        edit(&mut config);
        assert!(
            OidcAuthenticator::new(vec![config]).is_err(),
            "{name} was accepted"
        );
    }
    let duplicate = OidcAuthenticator::new(vec![good.clone(), good.clone()]).unwrap_err();
    assert!(duplicate.to_string().contains("more than once"));
    // Loopback may use plain http (development).
    let mut local = good;
    local.jwks_url = Some("http://127.0.0.1:8080/jwks".into());
    assert!(OidcAuthenticator::new(vec![local]).is_ok());
}
