//! rustls client configuration for TLS and HTTPS checks.
//!
//! Owns loading the CA file and the skip-verification verifier. Uses the ring provider
//! explicitly so it never depends on a process-wide default provider being installed.

use std::fs::File;
use std::io::BufReader;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::spec::TlsVerify;

impl TlsVerify {
    /// Builds the client configuration for this verification choice: reads and parses the CA
    /// file for [`TlsVerify::CaFile`]. Config validation calls it to report an unusable CA file
    /// early; the checker calls it once per target and again while it keeps failing.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("tls protocol versions: {e}"))?;
        let config = match self {
            TlsVerify::CaFile(path) => {
                let file =
                    File::open(path).map_err(|e| format!("cannot open CA file {}: {e}", path.display()))?;
                let mut roots = RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
                    let cert = cert.map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("no PEM certificate in CA file {}", path.display()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            TlsVerify::InsecureSkipVerify => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                    algorithms: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// The name the TLS client verifies: the configured server name, or the backend's IP.
pub(crate) fn server_name(name: Option<&str>, ip: IpAddr) -> Result<ServerName<'static>, String> {
    match name {
        Some(n) => {
            ServerName::try_from(n.to_string()).map_err(|e| format!("invalid tls server name {n:?}: {e}"))
        }
        None => Ok(ServerName::IpAddress(ip.into())),
    }
}

/// Accepts any server certificate but still checks that the server signed the handshake with
/// the key of the certificate it sent, so a probe sees a real TLS peer.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn missing_or_empty_ca_file_is_an_error() {
        let missing = TlsVerify::CaFile(PathBuf::from("/nonexistent/gatehouse-ca.pem"));
        let err = missing.client_config().expect_err("missing file must fail");
        assert!(err.contains("cannot open CA file"), "{err}");

        let empty = std::env::temp_dir().join(format!("gh-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, b"not a pem\n").expect("temp dir is writable");
        let err = TlsVerify::CaFile(empty.clone())
            .client_config()
            .expect_err("no certificate must fail");
        let _ = std::fs::remove_file(&empty);
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn server_name_defaults_to_ip() {
        let ip: IpAddr = "127.0.0.1".parse().expect("literal");
        assert_eq!(server_name(None, ip), Ok(ServerName::IpAddress(ip.into())));
        assert!(server_name(Some("host.example"), ip).is_ok());
        assert!(server_name(Some("bad name!"), ip).is_err());
    }
}
