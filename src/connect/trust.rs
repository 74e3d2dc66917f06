//! Which gateway certificates `gatehouse connect` trusts in the SSL modes, the way a browser
//! decides: a CA bundle (`--ca-file`, else the system bundle when the machine has one), a
//! pinned leaf fingerprint (`--pin-sha256`), or, only when the user says so, any certificate
//! (`--insecure`).
//!
//! Owns the rustls client configuration of the client. The pinned and insecure rules reuse
//! [`crate::tls::verify::CertificateRule`]; the CA rule is rustls' WebPKI verifier over the
//! given roots. No socket is touched here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};

use crate::tls::verify::CertificateRule;

use super::ConnectError;

/// Where the system's CA bundle lives on Debian-like systems: the default trust when no
/// `--ca-file`, `--pin-sha256` or `--insecure` is given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The rule a gateway's certificate must pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// A chain to one of the CA certificates in this PEM file, for the gateway's name.
    CaFile(PathBuf),
    /// Exactly the leaf certificate with this SHA-256 (name and dates not checked).
    Pinned([u8; 32]),
    /// Any certificate: anyone in the path can read and change the session.
    Insecure,
}

impl Trust {
    /// The default rule: the system CA bundle.
    pub fn system() -> Trust {
        Trust::CaFile(PathBuf::from(SYSTEM_CA_BUNDLE))
    }

    /// A TLS client configuration (the crate's provider, safe protocol versions) that checks
    /// gateway certificates by this rule. Reads the CA file, so call it once.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, ConnectError> {
        match self {
            Trust::Pinned(sha256) => CertificateRule::Pinned(*sha256)
                .client_config()
                .map_err(ConnectError::Local),
            Trust::Insecure => CertificateRule::AnyInsecure
                .client_config()
                .map_err(ConnectError::Local),
            Trust::CaFile(path) => ca_config(path),
        }
    }

    /// Words for messages: what the certificate was checked against.
    pub fn describe(&self) -> String {
        match self {
            Trust::CaFile(path) => format!("the CA certificates in {}", path.display()),
            Trust::Pinned(sha256) => format!("--pin-sha256 {}", hex(sha256)),
            Trust::Insecure => "nothing (--insecure)".to_string(),
        }
    }
}

fn ca_config(path: &Path) -> Result<Arc<ClientConfig>, ConnectError> {
    let certs = crate::tls::certs::read_pem_certs(path).map_err(|e| {
        ConnectError::Local(format!(
            "cannot read CA certificates from {}: {e} (give --ca-file, or --pin-sha256 with the gateway's fingerprint)",
            path.display()
        ))
    })?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ConnectError::Local(format!(
            "{}: no usable CA certificate",
            path.display()
        )));
    }
    let provider = crate::tls::provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ConnectError::Local(format!("certificate verifier: {e}")))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Local(format!("tls protocol versions: {e}")))?
        .with_webpki_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The SHA-256 of a DER certificate, as lowercase hex (what `--pin-sha256` takes).
pub fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// Parses a SHA-256 fingerprint: 64 hex digits, optionally separated by `:` as
/// `openssl x509 -fingerprint -sha256` prints them.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let digits: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return Err(format!(
            "--pin-sha256 wants 64 hex digits (colons allowed), got {} digits",
            digits.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let hi = hex_value(pair[0]);
        let lo = hex_value(pair[1]);
        match (hi, lo) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            _ => return Err("--pin-sha256: not a hex digit".to_string()),
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_and_without_colons() {
        let plain = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let pin = parse_pin(plain).unwrap();
        assert_eq!(pin[0], 0x00);
        assert_eq!(pin[15], 0xff);
        assert_eq!(pin[31], 0xff);
        let colons: String = plain
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_pin(&colons).unwrap(), pin);
        assert_eq!(hex(&pin), plain.to_ascii_lowercase());
        assert!(parse_pin("abc").is_err());
        assert!(parse_pin(&"g".repeat(64)).is_err());
    }

    #[test]
    fn missing_ca_file_is_a_local_error() {
        let err = Trust::CaFile(PathBuf::from("/nonexistent/ca.pem"))
            .client_config()
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::Local(ref m) if m.contains("/nonexistent/ca.pem")),
            "{err}"
        );
    }
}
