//! X.509-SVIDs presented as TLS client certificates (SPIFFE X.509-SVID specification),
//! verified against the trust domain's CA bundle file. Configuration: see the
//! [module docs](super).
//!
//! [`X509SvidVerifier`] is used twice per connection by the server:
//!
//! 1. during the handshake, through [`X509SvidVerifier::client_cert_verifier`]: client
//!    certificates are *requested but optional* (operators and bearer-token workloads
//!    connect without one); a presented certificate must be a valid X.509-SVID chaining
//!    to its trust domain's bundle, or the handshake fails;
//! 2. per request, [`X509SvidVerifier::authenticate_chain`] on the peer certificates
//!    rustls kept, which repeats the checks (bundles may have rotated since the
//!    handshake) and applies the binding rules.
//!
//! # Wiring it into a server
//!
//! ```text
//! let verifier = Arc::new(X509SvidVerifier::new(config.auth.spiffe.clone())?);
//! let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
//!         rustls::crypto::ring::default_provider()))
//!     .with_safe_default_protocol_versions()?
//!     .with_client_cert_verifier(verifier.client_cert_verifier())
//!     .with_single_cert(server_chain, server_key)?;
//! // After the handshake (tokio-rustls: `stream.get_ref().1.peer_certificates()`), keep
//! // the chain with the connection, and per request without a bearer token:
//! let claims = verifier.authenticate_chain(&peer_chain, UnixTime::now())?;
//! // then the same identity exists / enabled / unexpired check as for bearer tokens.
//! ```
//!
//! # Checks, in order
//!
//! 1. The leaf is DER X.509 with exactly one URI SAN, a valid workload SPIFFE ID (zero,
//!    several or an invalid one: `Malformed`).
//! 2. The leaf is not a CA (`basicConstraints` CA=false) and has a `keyUsage` with
//!    `digitalSignature` and without `keyCertSign`/`cRLSign` (`Malformed`).
//! 3. Validity window (`NotYetValid` / `Expired`), no skew: TLS peers are expected to have
//!    synchronised clocks, and SVIDs are rotated well before they expire.
//! 4. The SPIFFE ID's trust domain has an `x509_bundle_file` (`UntrustedIssuer`), whose
//!    bundle has loaded (`KeysUnavailable`).
//! 5. The chain (leaf plus presented intermediates) verifies to a CA of *that* trust
//!    domain's bundle with webpki (`UntrustedIssuer` when it leads elsewhere), for TLS
//!    client authentication (an `extendedKeyUsage`, if present, must allow clientAuth).
//! 6. Rules, first match wins (`NoRuleMatched`) -> claims with method `spiffe-x509`,
//!    issuer = the trust domain, subject = the SPIFFE ID, attributes `spiffe_id` and
//!    `trust_domain`, `expires_at` = the leaf's notAfter.
//!
//! No rejection message contains certificate bytes: only fixed text, counts and, for an
//! untrusted trust domain, its (length-limited) name.

use std::sync::Arc;
use std::time::Duration;

use mayfly_core::auth::{AuthRejection, WorkloadClaims};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::extensions::GeneralName;

use super::bundle::{FileBundle, CHECK_INTERVAL};
use super::jwt_svid::attributes;
use super::SpiffeTrustDomainConfig;
use super::{parse_spiffe_id, validate_all, DomainSettings, SpiffeConfigError};
use crate::oidc::echo;

/// A trust domain's X.509 authorities.
struct CaBundle {
    anchors: Vec<TrustAnchor<'static>>,
}

fn parse_bundle(bytes: &[u8]) -> Result<CaBundle, String> {
    let mut anchors = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(bytes).enumerate() {
        let cert = cert.map_err(|e| format!("certificate {} is not valid PEM: {e}", i + 1))?;
        let anchor = webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| format!("certificate {} is not a usable CA: {e}", i + 1))?;
        anchors.push(anchor.to_owned());
    }
    if anchors.is_empty() {
        return Err("no PEM CERTIFICATE found".into());
    }
    Ok(CaBundle { anchors })
}

struct X509Domain {
    settings: DomainSettings,
    bundle: FileBundle<CaBundle>,
}

/// Verifies X.509-SVID client certificates. See the module docs for its behaviour.
/// Clones share bundles and settings (the rustls verifier holds one too).
#[derive(Clone, Debug)]
pub struct X509SvidVerifier(Arc<Shared>);

struct Shared {
    domains: Vec<X509Domain>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509SvidVerifier")
            .field(
                "trust_domains",
                &self
                    .domains
                    .iter()
                    .map(|d| &d.settings.trust_domain)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What the chain checks established (before rules).
struct Svid<'a> {
    settings: &'a DomainSettings,
    spiffe_id: String,
    not_after: i64,
}

impl X509SvidVerifier {
    /// Checks every `[[auth.spiffe]]` entry; those with an `x509_bundle_file` serve
    /// X.509-SVIDs. Fails when no entry has one. Bundles load on first use, or call
    /// [`X509SvidVerifier::load_bundles`] at start-up.
    pub fn new(
        configs: impl IntoIterator<Item = SpiffeTrustDomainConfig>,
    ) -> Result<Self, SpiffeConfigError> {
        Self::with_check_interval(configs, CHECK_INTERVAL)
    }

    /// [`X509SvidVerifier::new`] with another bundle-file check interval (tests).
    pub(crate) fn with_check_interval(
        configs: impl IntoIterator<Item = SpiffeTrustDomainConfig>,
        interval: Duration,
    ) -> Result<Self, SpiffeConfigError> {
        let domains: Vec<X509Domain> = validate_all(configs)?
            .into_iter()
            .filter_map(|settings| {
                let path = settings.x509_bundle_file.clone()?;
                Some(X509Domain {
                    bundle: FileBundle::new(path, parse_bundle).with_check_interval(interval),
                    settings,
                })
            })
            .collect();
        if domains.is_empty() {
            return Err(SpiffeConfigError {
                trust_domain: String::new(),
                reason: "no [[auth.spiffe]] entry has an x509_bundle_file".into(),
            });
        }
        Ok(X509SvidVerifier(Arc::new(Shared {
            domains,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })))
    }

    /// The trust domains served, in order.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.0
            .domains
            .iter()
            .map(|d| d.settings.trust_domain.as_str())
    }

    /// Loads every bundle now: per trust domain, the number of CA certificates or why
    /// none could be loaded. Not fatal: loading is retried on use.
    pub fn load_bundles(&self) -> Vec<(String, Result<usize, String>)> {
        self.0
            .domains
            .iter()
            .map(|d| {
                (
                    d.settings.trust_domain.clone(),
                    d.bundle.get().map(|b| b.anchors.len()),
                )
            })
            .collect()
    }

    /// The rustls verifier for the server's listener: requests a client certificate,
    /// accepts connections without one, and fails the handshake for a certificate that
    /// is not a valid X.509-SVID of a configured trust domain (rules are not applied
    /// here; [`X509SvidVerifier::authenticate_chain`] does that per request).
    pub fn client_cert_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(TlsVerifier(self.0.clone()))
    }

    /// The workload a TLS peer's certificate chain (leaf first, as rustls'
    /// `peer_certificates()` returns it) proves, at `now`.
    pub fn authenticate_chain(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<WorkloadClaims, AuthRejection> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(AuthRejection::Missing);
        };
        let svid = self.0.verify_svid(leaf, intermediates, now)?;
        let domain = svid.settings;
        let id = parse_spiffe_id(&svid.spiffe_id)
            .map_err(|r| AuthRejection::Malformed(format!("URI SAN: {r}")))?;
        let Some(identity) = domain.identity_for(&id) else {
            tracing::debug!(spiffe_id = %id.id, "no SPIFFE binding rule matched");
            return Err(AuthRejection::NoRuleMatched);
        };
        Ok(WorkloadClaims {
            identity: identity.to_owned(),
            method: "spiffe-x509".into(),
            issuer: domain.trust_domain.clone(),
            subject: id.id.to_owned(),
            attributes: attributes(id.id, id.trust_domain),
            expires_at: Some(svid.not_after),
        })
    }
}

impl Shared {
    /// Steps 1–5 of the module docs.
    fn verify_svid(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Svid<'_>, AuthRejection> {
        let malformed = |reason: &str| AuthRejection::Malformed(reason.to_owned());
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|_| malformed("client certificate is not a valid X.509 certificate"))?;

        // 1. Exactly one URI SAN, a SPIFFE ID.
        let san = cert
            .subject_alternative_name()
            .map_err(|_| malformed("client certificate has an invalid subjectAltName"))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        let uri = match uris.as_slice() {
            [uri] => *uri,
            [] => return Err(malformed("client certificate has no URI SAN; an X.509-SVID has exactly one, its spiffe:// ID")),
            more => {
                return Err(AuthRejection::Malformed(format!(
                    "client certificate has {} URI SANs; an X.509-SVID has exactly one, its spiffe:// ID",
                    more.len()
                )))
            }
        };
        let id = parse_spiffe_id(uri).map_err(|r| {
            AuthRejection::Malformed(format!(
                "client certificate URI SAN is not a valid SPIFFE ID: {r}"
            ))
        })?;

        // 2. A leaf, for signatures only.
        let is_ca = cert
            .basic_constraints()
            .map_err(|_| malformed("client certificate has an invalid basicConstraints"))?
            .is_some_and(|bc| bc.value.ca);
        if is_ca {
            return Err(malformed(
                "client certificate is a CA certificate (basicConstraints CA=true); an X.509-SVID leaf must not be",
            ));
        }
        let usage = cert
            .key_usage()
            .map_err(|_| malformed("client certificate has an invalid keyUsage"))?;
        match usage {
            Some(ku) if ku.value.digital_signature() => {
                if ku.value.key_cert_sign() || ku.value.crl_sign() {
                    return Err(malformed(
                        "client certificate keyUsage allows certificate or CRL signing; an X.509-SVID leaf must not",
                    ));
                }
            }
            _ => {
                return Err(malformed(
                    "client certificate keyUsage lacks digitalSignature, which an X.509-SVID leaf requires",
                ))
            }
        }

        // 3. Validity window, with its own error codes (webpki checks it again below).
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        let validity = cert.validity();
        if now_secs < validity.not_before.timestamp() {
            return Err(AuthRejection::NotYetValid);
        }
        let not_after = validity.not_after.timestamp();
        if now_secs > not_after {
            return Err(AuthRejection::Expired);
        }

        // 4. The trust domain and its bundle.
        let Some(domain) = self
            .domains
            .iter()
            .find(|d| d.settings.trust_domain == id.trust_domain)
        else {
            return Err(AuthRejection::UntrustedIssuer(echo(id.trust_domain)));
        };
        let bundle = domain.bundle.get().map_err(|reason| {
            tracing::warn!(trust_domain = %domain.settings.trust_domain, %reason, "no X.509 bundle to verify an X.509-SVID");
            AuthRejection::KeysUnavailable(format!(
                "the X.509 bundle of trust domain {} could not be loaded",
                domain.settings.trust_domain
            ))
        })?;

        // 5. The chain, to this trust domain's CAs only.
        let end_entity = webpki::EndEntityCert::try_from(leaf)
            .map_err(|_| malformed("client certificate is not a valid X.509 certificate"))?;
        end_entity
            .verify_for_usage(
                self.algorithms.all,
                &bundle.anchors,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| chain_rejection(&e, id.trust_domain))?;
        Ok(Svid {
            settings: &domain.settings,
            spiffe_id: id.id.to_owned(),
            not_after,
        })
    }
}

/// webpki's verdict as a rejection; detail goes to the debug log, not the caller.
fn chain_rejection(error: &webpki::Error, trust_domain: &str) -> AuthRejection {
    tracing::debug!(%error, trust_domain, "X.509-SVID chain rejected");
    match error {
        webpki::Error::CertExpired { .. } => AuthRejection::Expired,
        webpki::Error::CertNotValidYet { .. } => AuthRejection::NotYetValid,
        webpki::Error::InvalidSignatureForPublicKey => AuthRejection::BadSignature,
        webpki::Error::UnknownIssuer => AuthRejection::UntrustedIssuer(format!(
            "{} (the certificate chain does not lead to a CA of its bundle)",
            echo(trust_domain)
        )),
        webpki::Error::CaUsedAsEndEntity => AuthRejection::Malformed(
            "client certificate is a CA certificate; an X.509-SVID leaf must not be".into(),
        ),
        webpki::Error::RequiredEkuNotFoundContext(_) => AuthRejection::Malformed(
            "client certificate extendedKeyUsage does not allow TLS client authentication".into(),
        ),
        _ => AuthRejection::UntrustedIssuer(format!(
            "{} (the certificate chain is not valid)",
            echo(trust_domain)
        )),
    }
}

/// The rustls face of [`X509SvidVerifier`].
#[derive(Debug)]
struct TlsVerifier(Arc<Shared>);

impl ClientCertVerifier for TlsVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Optional: the same listener serves operators and bearer-token workloads.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: clients hold one SVID and present it whichever CAs we would name, and
    /// the bundles can change while this list would be fixed.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.verify_svid(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(rejection) => {
                tracing::debug!(code = rejection.code(), %rejection, "TLS client certificate refused");
                Err(rustls::Error::InvalidCertificate(match rejection {
                    AuthRejection::Expired => CertificateError::Expired,
                    AuthRejection::NotYetValid => CertificateError::NotValidYet,
                    AuthRejection::BadSignature => CertificateError::BadSignature,
                    AuthRejection::UntrustedIssuer(_) => CertificateError::UnknownIssuer,
                    AuthRejection::Malformed(_) => CertificateError::BadEncoding,
                    _ => CertificateError::ApplicationVerificationFailure,
                }))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}
