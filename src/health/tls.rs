//! rustls client configuration for TLS and HTTPS checks.
//!
//! Owns loading the CA file; skipping verification uses the crate's one custom verifier
//! (`tls::verify`). Uses the crate's provider explicitly, never a process-wide default.

use std::fs::File;
use std::io::BufReader;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};

use super::spec::TlsVerify;
use crate::tls::verify::CertificateRule;

impl TlsVerify {
    /// Builds the client configuration for this verification choice: reads and parses the CA
    /// file for [`TlsVerify::CaFile`]. Config validation calls it to report an unusable CA file
    /// early; the checker calls it once per target and again while it keeps failing.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, String> {
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
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
            TlsVerify::InsecureSkipVerify => return CertificateRule::AnyInsecure.client_config(),
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
