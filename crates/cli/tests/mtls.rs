//! Mutual TLS: a workload proves itself with an X.509-SVID client certificate, no bearer
//! token; certificates from other CAs never complete the handshake.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Broker, Options, BIN};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{json, Value};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf signed by `ca`, as (certificate PEM, key PEM).
fn leaf(ca: &Ca, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

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
    let (server_cert, server_key) = leaf(
        &authority,
        vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.join("server.key"), server_key).unwrap();
    let config = format!(
        r#"
[tls]
cert_file = "{d}/server.pem"
key_file = "{d}/server.key"

[[auth.spiffe]]
trust_domain = "prod.acme"
x509_bundle_file = "{d}/ca.pem"

[[auth.spiffe.rules]]
identity = "payments-api"
spiffe_id = "spiffe://prod.acme/ns/payments/sa/api"

[auth.failures]
audit_interval = "1s"
"#,
        d = dir.display()
    );
    let mut broker = Broker::start_in(
        BIN,
        &dir,
        Options {
            config: Some(config),
            ..Options::default()
        },
    );
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
