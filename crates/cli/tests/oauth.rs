//! OAuth 2.0 token exchange (RFC 8693), delegation, revocation (RFC 7009) and metadata
//! (RFC 8414) against the real broker: the happy paths, a delegation chain, and every
//! refusal, each answered with its RFC 6749 error, issuing nothing and audited once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::issuer::Issuer;
use common::{Broker, BIN};
use serde_json::{json, Value};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// billing-svc reads billing-api; agents act for it; a write is permitted only to a chain
/// (which the chain must therefore not get: it never exceeds the subject alone).
const POLICIES: &str = r#"
@id("svc-reads")
permit (principal == Workload::"billing-svc", action == Action::"read", resource);

@id("svc-writes-only-via-agents")
permit (principal == Workload::"billing-svc", action == Action::"write", resource == Target::"billing-api")
when { context.actors.contains("triage-agent") };

@id("agents-act-for-svc")
permit (principal, action == Action::"act_for", resource)
when { principal.kind == "agent" && context.subject == Workload::"billing-svc" };

@id("everyone-everything-but-delegation")
permit (principal == Workload::"rogue", action, resource);
"#;

struct Fixture {
    broker: Broker,
    issuer: Issuer,
    /// The broker's `iss`, from its metadata.
    iss: String,
}

async fn fixture() -> Fixture {
    let issuer = Issuer::new();
    let dir = common::scratch_dir();
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("oauth.cedar"), POLICIES).unwrap();
    let mut config = issuer.config(
        &dir.join("ci-jwks.json"),
        &[
            ("billing-svc", "svc"),
            ("triage-agent", "agent-1"),
            ("second-agent", "agent-2"),
            ("rogue", "rogue"),
        ],
    );
    config.push_str(&format!("\n[policy]\ndir = \"{}\"\n", policies.display()));
    let broker = Broker::start_with_config(BIN, &dir, config);
    for (id, kind) in [
        ("billing-svc", "service"),
        ("triage-agent", "agent"),
        ("second-agent", "agent"),
        ("rogue", "service"),
    ] {
        let expires = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let (status, body) = broker
            .post(
                "/v1/identities",
                json!({"id": id, "kind": kind, "owner": "team-billing", "purpose": "tests", "expires_at": expires}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    broker.add_token_target("billing-api", &[]).await;
    let metadata = broker.get("/.well-known/oauth-authorization-server").await;
    let iss = metadata["issuer"].as_str().unwrap().to_string();
    // A target whose tokens are for the broker itself: they can be exchanged again.
    let (status, body) = broker
        .post(
            "/v1/targets",
            json!({"name": "exchange", "kind": "token", "actions": ["read"], "default_ttl": "10m", "max_ttl": "1h", "settings": {"audience": iss}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    Fixture {
        broker,
        issuer,
        iss,
    }
}

impl Fixture {
    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .broker
            .http
            .post(self.broker.url(path))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if path == "/oauth2/token" {
            assert_eq!(
                resp.headers().get("cache-control").unwrap(),
                "no-store",
                "token answers are never cached"
            );
        }
        (status, resp.json().await.unwrap())
    }

    async fn exchange(&self, extra: &[(&str, &str)]) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", EXCHANGE),
            ("subject_token_type", JWT),
            ("purpose", "triage"),
        ];
        form.extend_from_slice(extra);
        self.post_form("/oauth2/token", &form).await
    }

    async fn audit_len(&self) -> usize {
        self.broker.audit("limit=10000").await.len()
    }
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

/// A token request's fields.
type Form = Vec<(String, String)>;

/// A JWT signed by the test issuer's key with the given claims.
fn signed(issuer: &Issuer, claims: Value) -> String {
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": "ci-1"});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = issuer.pair.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.as_ref()))
}

#[tokio::test]
async fn exchange_delegation_chain_and_revocation() {
    let f = fixture().await;
    let svc = f.issuer.token("svc");
    let agent = f.issuer.token("agent-1");

    // Discovery: both documents name the same endpoints.
    let oauth = f
        .broker
        .get("/.well-known/oauth-authorization-server")
        .await;
    let oidc = f.broker.get("/.well-known/openid-configuration").await;
    for key in [
        "token_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
        "jwks_uri",
    ] {
        assert_eq!(oauth[key], oidc[key], "{key}");
        assert!(oauth[key].as_str().unwrap().starts_with(&f.iss), "{key}");
    }
    assert_eq!(oauth["grant_types_supported"], json!([EXCHANGE]));

    // The subject alone: both scopes asked, policy allows read.
    let (status, body) = f
        .exchange(&[
            ("subject_token", &svc),
            ("audience", "billing-api"),
            ("scope", "read write"),
            ("task", "T-1"),
            ("ttl", "2m"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "read");
    assert_eq!(body["expires_in"], 120);
    let token = body["access_token"].as_str().unwrap().to_string();
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "billing-svc");
    assert_eq!(claims["aud"], "billing-api");
    assert_eq!(claims["scope"], "read");
    assert!(claims.get("act").is_none());
    let lease = f
        .broker
        .get(&format!("/v1/leases/{}", claims["jti"].as_str().unwrap()))
        .await;
    assert_eq!(lease["task"], "T-1");
    assert_eq!(f.broker.introspect(&token).await["active"], true);

    // With an agent acting: `act` names it; write, permitted only to a chain, is not
    // granted (a chain never exceeds the subject alone).
    let (status, body) = f
        .exchange(&[
            ("subject_token", &svc),
            ("actor_token", &agent),
            ("actor_token_type", JWT),
            ("resource", "billing-api"),
            ("scope", "read write"),
            ("task", "T-2"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "read");
    let delegated = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(delegated["sub"], "billing-svc");
    assert_eq!(delegated["act"], json!({"sub": "triage-agent"}));
    let introspected = f
        .broker
        .introspect(body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(introspected["act"], json!({"sub": "triage-agent"}));
    // The audit chain records subject and actor, and the CLI shows it by task.
    let events = f.broker.audit("task=T-2").await;
    let requested = events
        .iter()
        .find(|e| e["kind"] == "grant.requested")
        .unwrap();
    assert_eq!(requested["identity"], "billing-svc");
    assert_eq!(
        requested["detail"]["context"]["actors"],
        json!(["triage-agent"])
    );
    assert_eq!(
        requested["detail"]["context"]["act"],
        json!({"sub": "triage-agent"})
    );
    assert_eq!(
        requested["actor"],
        "identity:triage-agent for identity:billing-svc"
    );
    let out = f.broker.cli(&["audit", "list", "--task", "T-2"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("identity:triage-agent for identity:billing-svc"),
        "{table}"
    );

    // A chain: a token issued for the broker is exchanged again with a second agent; the
    // act claim nests and the new token does not outlive the one exchanged.
    let (status, body) = f
        .exchange(&[
            ("subject_token", &svc),
            ("actor_token", &agent),
            ("actor_token_type", JWT),
            ("audience", &f.iss),
            ("task", "T-3"),
            ("ttl", "90s"),
        ])
        .await;
    assert_eq!(status, 200, "{body}");
    let hop = body["access_token"].as_str().unwrap().to_string();
    let second = f.issuer.token("agent-2");
    let (status, body) = f
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &hop),
                ("subject_token_type", ACCESS_TOKEN),
                ("actor_token", &second),
                ("actor_token_type", JWT),
                ("audience", "billing-api"),
                ("purpose", "triage"),
                ("task", "T-3"),
                ("ttl", "1h"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let chained = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(
        chained["act"],
        json!({"sub": "second-agent", "act": {"sub": "triage-agent"}})
    );
    assert!(chained["exp"].as_i64() <= claims_of(&hop)["exp"].as_i64());
    assert!(body["expires_in"].as_i64().unwrap() <= 90);

    // RFC 7009: the holder revokes; it introspects inactive at once.
    let (status, body) = f.post_form("/oauth2/revoke", &[("token", &token)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(f.broker.introspect(&token).await["active"], false);
    let lease = f
        .broker
        .get(&format!("/v1/leases/{}", claims["jti"].as_str().unwrap()))
        .await;
    assert_eq!(lease["state"], "revoked");
    assert_eq!(lease["revocation_reason"], "holder_revoked");
    // Revoking again, or revoking garbage, is answered 200 and changes nothing.
    for t in [token.as_str(), "not-a-token"] {
        let (status, _) = f.post_form("/oauth2/revoke", &[("token", t)]).await;
        assert_eq!(status, 200);
    }
    // A revoked broker-audience token can no longer be exchanged.
    let (status, _) = f.post_form("/oauth2/revoke", &[("token", &hop)]).await;
    assert_eq!(status, 200);
    let (status, body) = f
        .post_form(
            "/oauth2/token",
            &[
                ("grant_type", EXCHANGE),
                ("subject_token", &hop),
                ("subject_token_type", ACCESS_TOKEN),
                ("audience", "billing-api"),
                ("purpose", "triage"),
                ("task", "T-4"),
            ],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
}

#[tokio::test]
async fn every_refusal_is_its_rfc_6749_error_issues_nothing_and_is_audited_once() {
    let f = fixture().await;
    let svc = f.issuer.token("svc");
    let rogue = f.issuer.token("rogue");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = signed(
        &f.issuer,
        json!({"iss": f.issuer.url, "sub": "svc", "aud": "mayfly", "iat": now - 600, "nbf": now - 600, "exp": now - 300}),
    );
    let foreign = Issuer::new().token("svc");
    // A token issued for a resource server (aud billing-api) cannot be exchanged by it.
    let (_, body) = f
        .exchange(&[
            ("subject_token", &svc),
            ("audience", "billing-api"),
            ("task", "T-rs"),
        ])
        .await;
    let for_resource_server = body["access_token"].as_str().unwrap().to_string();
    let big = "x".repeat(70 * 1024);

    let base = |extra: &[(&'static str, &str)]| {
        let mut form: Vec<(String, String)> = vec![
            ("grant_type".into(), EXCHANGE.into()),
            ("subject_token_type".into(), JWT.into()),
            ("purpose".into(), "p".into()),
            ("task".into(), "T-bad".into()),
            ("audience".into(), "billing-api".into()),
        ];
        for (k, v) in extra {
            form.retain(|(key, _)| key != k);
            form.push((k.to_string(), v.to_string()));
        }
        form
    };
    let with_subject = |token: &str, extra: &[(&'static str, &str)]| {
        let mut form = base(extra);
        form.push(("subject_token".into(), token.to_string()));
        form
    };
    let cases: Vec<(&str, Form, &str)> = vec![
        (
            "no grant_type",
            with_subject(&svc, &[("grant_type", "")]),
            "invalid_request",
        ),
        (
            "client_credentials",
            with_subject(&svc, &[("grant_type", "client_credentials")]),
            "unsupported_grant_type",
        ),
        (
            "password",
            with_subject(&svc, &[("grant_type", "password")]),
            "unsupported_grant_type",
        ),
        ("no subject_token", base(&[]), "invalid_request"),
        (
            "unknown subject_token_type",
            with_subject(&svc, &[("subject_token_type", "urn:x")]),
            "invalid_request",
        ),
        (
            "malformed subject token",
            with_subject("abc.def", &[]),
            "invalid_grant",
        ),
        (
            "expired subject token",
            with_subject(&expired, &[]),
            "invalid_grant",
        ),
        (
            "foreign subject token",
            with_subject(&foreign, &[]),
            "invalid_grant",
        ),
        (
            "a resource server's token",
            with_subject(
                &for_resource_server,
                &[("subject_token_type", ACCESS_TOKEN)],
            ),
            "invalid_grant",
        ),
        (
            "unknown audience",
            with_subject(&svc, &[("audience", "nope")]),
            "invalid_target",
        ),
        (
            "no audience",
            with_subject(&svc, &[("audience", "")]),
            "invalid_request",
        ),
        (
            "scope outside the target's",
            with_subject(&svc, &[("scope", "read delete")]),
            "invalid_scope",
        ),
        (
            "no purpose",
            with_subject(&svc, &[("purpose", "")]),
            "invalid_request",
        ),
        (
            "bad ttl",
            with_subject(&svc, &[("ttl", "soon")]),
            "invalid_request",
        ),
        (
            "actor_token without type",
            with_subject(&svc, &[("actor_token", &rogue)]),
            "invalid_request",
        ),
        (
            "actor not allowed to act for the subject",
            with_subject(&svc, &[("actor_token", &rogue), ("actor_token_type", JWT)]),
            "unauthorized_client",
        ),
        (
            "subject acting for itself",
            with_subject(&svc, &[("actor_token", &svc), ("actor_token_type", JWT)]),
            "invalid_request",
        ),
        (
            "requested_token_type refresh",
            with_subject(
                &svc,
                &[(
                    "requested_token_type",
                    "urn:ietf:params:oauth:token-type:refresh_token",
                )],
            ),
            "invalid_request",
        ),
    ];
    for (name, form, error) in cases {
        let before = f.audit_len().await;
        let resp = f
            .broker
            .http
            .post(f.broker.url("/oauth2/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(error)),
            "{name}: {body}"
        );
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{name}"
        );
        assert!(body.get("access_token").is_none(), "{name}");
        assert_eq!(f.audit_len().await, before + 1, "{name}: one audit entry");
    }

    // Raw bodies: a repeated parameter, a JSON body, a body over 64 KiB.
    let raw = |content_type: &'static str, body: String| {
        f.broker
            .http
            .post(f.broker.url("/oauth2/token"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let form = "application/x-www-form-urlencoded";
    let repeated = format!(
        "grant_type={}&subject_token={svc}&subject_token_type={}&audience=billing-api&audience=exchange&purpose=p&task=T-dup",
        EXCHANGE.replace(':', "%3A"),
        JWT.replace(':', "%3A")
    );
    for (name, ctype, body, status) in [
        ("repeated parameter", form, repeated, 400),
        (
            "JSON body",
            "application/json",
            json!({"grant_type": EXCHANGE}).to_string(),
            400,
        ),
        (
            "body over 64 KiB",
            form,
            format!("grant_type=x&pad={big}"),
            413,
        ),
    ] {
        let before = f.audit_len().await;
        let resp = raw(ctype, body).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{name}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{name}: {body}");
        assert_eq!(f.audit_len().await, before + 1, "{name}: one audit entry");
    }

    // A policy denial is a decision, recorded as a denied grant: request and decision.
    let before = f.audit_len().await;
    let (status, body) = f
        .exchange(&[
            ("subject_token", &svc),
            ("audience", "billing-api"),
            ("scope", "write"),
            ("task", "T-deny"),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope")),
        "{body}"
    );
    assert_eq!(f.audit_len().await, before + 2);

    // Nothing was issued by any refusal, and no entry holds a presented token.
    let grants = f.broker.get("/v1/grants?task=T-bad").await;
    assert_eq!(
        grants
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["state"] == "issued")
            .count(),
        0
    );
    let audit = f.broker.audit("limit=10000").await;
    let text = serde_json::to_string(&audit).unwrap();
    for secret in [&svc, &rogue, &expired, &foreign, &for_resource_server] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!text.contains(signature), "a token reached the audit chain");
    }
}

/// A DPoP client key (P-256) and the proofs it signs.
struct DpopKey(ring::signature::EcdsaKeyPair);

impl DpopKey {
    fn new() -> DpopKey {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as ALG};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
        DpopKey(EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap())
    }

    fn jwk(&self) -> Value {
        use ring::signature::KeyPair;
        let p = self.0.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
    }

    /// RFC 7638 thumbprint.
    fn jkt(&self) -> String {
        let jwk = self.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ))
    }

    fn proof(&self, htm: &str, htu: &str, extra: Value) -> String {
        let mut claims = json!({
            "jti": uuid_like(), "htm": htm, "htu": htu,
            "iat": time::OffsetDateTime::now_utc().unix_timestamp(),
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .0
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
}

fn uuid_like() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    B64.encode(bytes)
}

fn ath(token: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

#[tokio::test]
async fn dpop_binds_the_token_to_the_key_and_a_target_can_require_it() {
    let f = fixture().await;
    let (status, body) = f
        .broker
        .post(
            "/v1/targets",
            json!({"name": "bound-api", "kind": "token", "actions": ["read"], "default_ttl": "5m", "max_ttl": "1h",
                   "settings": {"proof_of_possession": true, "dpop_nonce": true}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let metadata = f
        .broker
        .get("/.well-known/oauth-authorization-server")
        .await;
    assert!(metadata["dpop_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("ES256")));
    let endpoint = metadata["token_endpoint"].as_str().unwrap().to_string();
    let key = DpopKey::new();
    let form = |task: &'static str| {
        vec![
            ("grant_type", EXCHANGE.to_string()),
            ("subject_token", f.issuer.token("svc")),
            ("subject_token_type", JWT.to_string()),
            ("audience", "bound-api".to_string()),
            ("purpose", "p".to_string()),
            ("task", task.to_string()),
        ]
    };
    let send = |form: Vec<(&'static str, String)>, proof: Option<String>| {
        let mut req = f.broker.http.post(&endpoint).form(&form);
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        req.send()
    };

    // The target issues only bound tokens.
    let resp = send(form("D-1"), None).await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    // Its proofs need a server nonce: the first answer gives one.
    let resp = send(form("D-1"), Some(key.proof("POST", &endpoint, json!({}))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let nonce = resp.headers()["dpop-nonce"].to_str().unwrap().to_string();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "use_dpop_nonce", "{body}");
    let proof = key.proof("POST", &endpoint, json!({"nonce": nonce}));
    let resp = send(form("D-1"), Some(proof.clone())).await.unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "DPoP", "{body}");
    let token = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(claims_of(&token)["cnf"], json!({"jkt": key.jkt()}));

    // Refused proofs: replayed, another URL, another method; nothing is issued.
    for (name, proof) in [
        ("replayed", proof),
        (
            "wrong htu",
            key.proof("POST", &f.broker.url("/v1/grants"), json!({"nonce": nonce})),
        ),
        (
            "wrong htm",
            key.proof("GET", &endpoint, json!({"nonce": nonce})),
        ),
    ] {
        let resp = send(form("D-2"), Some(proof)).await.unwrap();
        assert_eq!(resp.status(), 400, "{name}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_dpop_proof", "{name}: {body}");
    }
    let grants = f.broker.get("/v1/grants?task=D-2").await;
    assert_eq!(grants, json!([]));

    // Introspection returns cnf, and checks a proof a resource server forwards.
    let rs_url = "https://billing.example.test/invoices";
    let introspect = |proof: Option<String>| {
        let mut form = vec![("token", token.clone())];
        if let Some(p) = proof {
            form.extend([
                ("dpop_proof", p),
                ("htm", "GET".into()),
                ("htu", rs_url.into()),
            ]);
        }
        let req = f
            .broker
            .http
            .post(f.broker.url("/oauth2/introspect"))
            .bearer_auth(&f.broker.token)
            .form(&form);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let plain = introspect(None).await;
    assert_eq!(
        (plain["active"].clone(), plain["token_type"].clone()),
        (json!(true), json!("DPoP"))
    );
    assert_eq!(plain["cnf"], json!({"jkt": key.jkt()}));
    let good = key.proof("GET", rs_url, json!({"ath": ath(&token)}));
    assert_eq!(introspect(Some(good.clone())).await["active"], true);
    for (name, proof) in [
        ("replayed", good),
        (
            "another key",
            DpopKey::new().proof("GET", rs_url, json!({"ath": ath(&token)})),
        ),
        (
            "wrong htu",
            key.proof(
                "GET",
                "https://elsewhere.test/",
                json!({"ath": ath(&token)}),
            ),
        ),
        (
            "another token's hash",
            key.proof("GET", rs_url, json!({"ath": ath("other")})),
        ),
    ] {
        assert_eq!(introspect(Some(proof)).await["active"], false, "{name}");
    }

    // Revoking a bound token takes a proof of its key: without one, or with another
    // key's, it stays active; with the holder's it ends.
    let revoke_url = f.broker.url("/oauth2/revoke");
    let revoke = |proof: Option<String>| {
        let mut req = f
            .broker
            .http
            .post(&revoke_url)
            .form(&[("token", token.as_str())]);
        if let Some(p) = proof {
            req = req.header("DPoP", p);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let revoke_htu = format!("{}/oauth2/revoke", f.iss.trim_end_matches('/'));
    let other_key = DpopKey::new().proof("POST", &revoke_htu, json!({"ath": ath(&token)}));
    for (name, proof) in [("no proof", None), ("another key", Some(other_key))] {
        let (status, body) = revoke(proof).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_dpop_proof")),
            "{name}: {body}"
        );
        assert_eq!(introspect(None).await["active"], true, "{name}");
    }
    let proof = key.proof("POST", &revoke_htu, json!({"ath": ath(&token)}));
    let (status, body) = revoke(Some(proof)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(introspect(None).await["active"], false);
}
