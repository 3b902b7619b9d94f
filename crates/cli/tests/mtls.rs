//! Mutual TLS: a workload proves itself with an X.509-SVID client certificate, no bearer
//! token; certificates from other CAs never complete the handshake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::x509::{ca, leaf, tls_broker_config, Ca};
use common::{Broker, BIN};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};

fn svid(ca: &Ca, id: &str) -> reqwest::Identity {
    let (cert, key) = leaf(
        ca,
        vec![SanType::URI(Ia5String::try_from(id).unwrap())],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap()
}

#[tokio::test]
async fn workload_authenticates_with_an_x509_svid_over_mutual_tls() {
    let dir = common::scratch_dir();
    let authority = ca();
    let ca_pem = authority.cert.pem();
    let config = tls_broker_config(
        &dir,
        &authority,
        "prod.acme",
        &[("payments-api", "spiffe://prod.acme/ns/payments/sa/api")],
    ) + "\n[auth.failures]\naudit_interval = \"1s\"\n";
    let mut broker = Broker::start_with_config(BIN, &dir, config);
    assert!(broker.addr.starts_with("https://"), "{}", broker.addr);
    let root = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let client = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(root.clone());
        if let Some(i) = identity {
            b = b.identity(i);
        }
        b.build().unwrap()
    };
    broker.http = client(None);
    broker.add_identity("payments-api", "team-payments").await;
    broker.add_token_target("ledger", &["payments-api"]).await;
    assert!(
        broker.get("/.well-known/openid-configuration").await["issuer"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );

    // The SVID alone authenticates the workload and gets it a grant.
    let workload = client(Some(svid(
        &authority,
        "spiffe://prod.acme/ns/payments/sa/api",
    )));
    let me: Value = workload
        .get(broker.url("/v1/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (me["method"].as_str(), me["identity"].as_str()),
        (Some("spiffe-x509"), Some("payments-api")),
        "{me}"
    );
    let resp = workload
        .post(broker.url("/v1/grants"))
        .json(&json!({"target": "ledger", "action": "read", "purpose": "settle", "task": "batch-1", "ttl": "5m"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // No certificate and no token: 401. A valid SVID no rule binds: 401 no_rule_matched.
    let anonymous: Value = client(None)
        .get(broker.url("/v1/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anonymous["code"], "missing_credential");
    let stranger = client(Some(svid(&authority, "spiffe://prod.acme/ns/web/sa/api")));
    let refused: Value = stranger
        .get(broker.url("/v1/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refused["code"], "no_rule_matched");

    // Bad certificates: the client still proves it holds the key during the handshake,
    // then the request is refused with the specific reason, and audited.
    let id = "spiffe://prod.acme/ns/payments/sa/api";
    let uri = |u: &str| SanType::URI(Ia5String::try_from(u).unwrap());
    let pem_identity = |(cert, key): (String, String)| {
        reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap()
    };
    let ca_as_leaf = {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.subject_alt_names = vec![uri(id)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let cert = params
            .signed_by(&key, &authority.cert, &authority.key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let expired = {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![uri(id)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        let cert = params
            .signed_by(&key, &authority.cert, &authority.key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let cases: Vec<(&str, reqwest::Identity, &str)> = vec![
        ("chain to another CA", svid(&ca(), id), "bad_signature"),
        (
            "two URI SANs",
            pem_identity(leaf(
                &authority,
                vec![uri(id), uri("spiffe://prod.acme/x")],
                ExtendedKeyUsagePurpose::ClientAuth,
            )),
            "malformed_credential",
        ),
        (
            "no URI SAN",
            pem_identity(leaf(
                &authority,
                vec![],
                ExtendedKeyUsagePurpose::ClientAuth,
            )),
            "malformed_credential",
        ),
        (
            "CA certificate as leaf",
            pem_identity(ca_as_leaf),
            "malformed_credential",
        ),
        ("expired", pem_identity(expired), "expired"),
    ];
    let before = broker.audited_auth_failures().await;
    for (case, identity, code) in &cases {
        let resp = client(Some(identity.clone()))
            .get(broker.url("/v1/whoami"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{case}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["code"], *code, "{case}: {problem}");
    }
    // Repeats of one reason are counted into one entry when their interval ends.
    let expected = before + cases.len() as u64;
    let after = broker.wait_for_auth_failures(expected).await;
    assert_eq!(after, expected, "each refusal is audited once");
}

/// RFC 8705: a token exchanged over mutual TLS by the workload its X.509-SVID proves is
/// bound to that certificate (`cnf.x5t#S256`); without the certificate it is not, and a
/// target that requires proof of possession then issues nothing.
#[tokio::test]
async fn an_exchange_over_mutual_tls_binds_the_token_to_the_certificate() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let dir = common::scratch_dir();
    let authority = ca();
    let ca_pem = authority.cert.pem();
    let config = tls_broker_config(
        &dir,
        &authority,
        "prod.acme",
        &[("payments-api", "spiffe://prod.acme/ns/payments/sa/api")],
    );
    let mut broker = Broker::start_with_config(BIN, &dir, config);
    let root = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let client = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(root.clone());
        if let Some(i) = identity {
            b = b.identity(i);
        }
        b.build().unwrap()
    };
    broker.http = client(None);
    broker.add_identity("payments-api", "team-payments").await;
    broker.add_token_target("ledger", &["payments-api"]).await;
    let iss = broker.get("/.well-known/oauth-authorization-server").await["issuer"]
        .as_str()
        .unwrap()
        .to_string();
    for (name, settings) in [
        ("broker", json!({"audience": iss})),
        ("strict-ledger", json!({"proof_of_possession": true})),
    ] {
        let (status, body) = broker
            .post(
                "/v1/targets",
                json!({"name": name, "kind": "token", "actions": ["read"], "default_ttl": "5m", "max_ttl": "1h", "allow": ["payments-api"], "settings": settings}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (cert, key) = leaf(
        &authority,
        vec![SanType::URI(
            Ia5String::try_from("spiffe://prod.acme/ns/payments/sa/api").unwrap(),
        )],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            cert.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let thumbprint = b64.encode(ring::digest::digest(&ring::digest::SHA256, &der));
    let workload = client(Some(
        reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap(),
    ));

    // A token for the broker, got over mutual TLS, is the subject token.
    let resp = workload
        .post(broker.url("/v1/grants"))
        .json(&json!({"target": "broker", "purpose": "exchange", "task": "x-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let granted: Value = resp.json().await.unwrap();
    let subject = granted["credential"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let exchange = |http: reqwest::Client, audience: &'static str| {
        let form = [
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", subject.as_str()),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", audience),
            ("purpose", "settle"),
            ("task", "x-1"),
        ];
        let req = http.post(broker.url("/oauth2/token")).form(&form);
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let claims = |token: &Value| -> Value {
        let payload = token
            .as_str()
            .unwrap()
            .split('.')
            .nth(1)
            .unwrap()
            .to_string();
        serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap()
    };

    let (status, body) = exchange(workload.clone(), "ledger").await;
    assert_eq!(status, 200, "{body}");
    let bound = claims(&body["access_token"]);
    assert_eq!(bound["cnf"], json!({"x5t#S256": thumbprint}));
    let introspected = broker
        .introspect(body["access_token"].as_str().unwrap())
        .await;
    assert_eq!(introspected["cnf"], json!({"x5t#S256": thumbprint}));

    // Without the certificate: an unbound token, and none from a target that requires one.
    let (status, body) = exchange(client(None), "ledger").await;
    assert_eq!(status, 200, "{body}");
    assert!(claims(&body["access_token"]).get("cnf").is_none());
    let (status, body) = exchange(client(None), "strict-ledger").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (status, body) = exchange(workload.clone(), "strict-ledger").await;
    assert_eq!(status, 200, "{body}");
}
