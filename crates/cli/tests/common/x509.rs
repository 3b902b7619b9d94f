//! A test certificate authority for the mutual-TLS suites: X.509-SVIDs and server
//! certificates signed by a CA made on the spot.

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

pub fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf signed by `ca`, as (certificate PEM, key PEM).
pub fn leaf(ca: &Ca, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes a CA bundle and a server certificate for 127.0.0.1 into `dir` (`ca.pem`,
/// `server.pem`, `server.key`) and returns the broker configuration serving TLS with them
/// and trusting X.509-SVIDs of `trust_domain` signed by the CA, each `(identity,
/// spiffe_id)` of `rules` bound to its identity.
pub fn tls_broker_config(
    dir: &std::path::Path,
    authority: &Ca,
    trust_domain: &str,
    rules: &[(&str, &str)],
) -> String {
    let (server_cert, server_key) = leaf(
        authority,
        vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    std::fs::write(dir.join("ca.pem"), authority.cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.join("server.key"), server_key).unwrap();
    let mut config = format!(
        "[tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\n\n[[auth.spiffe]]\ntrust_domain = \"{trust_domain}\"\nx509_bundle_file = \"{d}/ca.pem\"\n",
        d = dir.display()
    );
    for (identity, spiffe_id) in rules {
        config.push_str(&format!(
            "\n[[auth.spiffe.rules]]\nidentity = \"{identity}\"\nspiffe_id = \"{spiffe_id}\"\n"
        ));
    }
    config
}
