//! HTTPS with optional mutual TLS: workloads may present an X.509-SVID as their client
//! certificate instead of a bearer token.
//!
//! This module owns the rustls configuration; [`crate::conn`] accepts the connections,
//! handshakes them and attaches each connection's verified certificate chain (if any) to
//! every request on it as [`PeerCertificates`].

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::StartError;

/// `[tls]`: serve HTTPS with this certificate and key (PEM).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The verified client certificate chain of the connection a request arrived on.
#[derive(Clone, Debug)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// Builds the rustls server configuration; with a verifier, client certificates are
/// requested (not required: operators and token-bearing workloads connect without one).
pub fn server_config(
    tls: &TlsConfig,
    verifier: Option<&mayfly_identity::X509SvidVerifier>,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let bad = |what: &str, path: &PathBuf, e: String| {
        StartError::Config(format!("tls.{what} {}: {e}", path.display()))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .map_err(|e| bad("cert_file", &tls.cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cert_file", &tls.cert_file, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "cert_file",
            &tls.cert_file,
            "no certificate found".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| bad("key_file", &tls.key_file, e.to_string()))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Config(format!("tls: {e}")))?;
    let builder = match verifier {
        Some(v) => builder
            .with_client_cert_verifier(Arc::new(DeferChainToRequest(v.client_cert_verifier()))),
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        StartError::Config(format!(
            "tls: certificate and key do not match or are unusable: {e}"
        ))
    })?;
    Ok(Arc::new(config))
}

/// Requests a client certificate and checks, during the handshake, that the client holds
/// its private key (the handshake signatures), but defers judging the certificate itself
/// (chain to the trust domain's bundle, one SPIFFE URI SAN, not a CA, validity) to the
/// request. There [`mayfly_identity::X509SvidVerifier::authenticate_chain`] rejects it with
/// a specific reason, as a 401 problem and an audit event, instead of an opaque handshake
/// failure the operator cannot see. Every authenticated request path goes through that
/// check; endpoints that need no authentication ignore the certificate.
#[derive(Debug)]
struct DeferChainToRequest(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for DeferChainToRequest {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
