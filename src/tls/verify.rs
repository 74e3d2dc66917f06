//! Server-certificate rules that are not "a CA bundle": a pinned certificate, or (for labs
//! only) any certificate.
//!
//! Owns the one custom rustls verifier of the crate, shared by re-encryption to backends and
//! by TLS health checks. Under either rule the server must still sign the handshake with the
//! key of the certificate it sent, so the peer is a real TLS server holding that key.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Which certificate a server may present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateRule {
    /// Exactly the certificate with this SHA-256 (as `openssl x509 -fingerprint -sha256`).
    Pinned([u8; 32]),
    /// Any certificate: anyone in the path can impersonate the server.
    AnyInsecure,
}

impl CertificateRule {
    /// A TLS client configuration (the crate's provider, safe protocol versions) that checks
    /// server certificates by this rule.
    pub fn client_config(self) -> Result<Arc<ClientConfig>, String> {
        let provider = crate::tls::provider();
        let verifier = RuleVerifier {
            rule: self,
            algorithms: provider.signature_verification_algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls protocol versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

#[derive(Debug)]
struct RuleVerifier {
    rule: CertificateRule,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for RuleVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.rule {
            CertificateRule::AnyInsecure => Ok(ServerCertVerified::assertion()),
            CertificateRule::Pinned(sha256) if Sha256::digest(end_entity.as_ref()).as_slice() == sha256 => {
                Ok(ServerCertVerified::assertion())
            }
            CertificateRule::Pinned(_) => Err(rustls::Error::General(
                "the backend's certificate does not match pin_sha256".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
