//! A listener's TLS settings made ready for the workers: certificates loaded (PEM pairs,
//! all-in-one PEMs, PKCS#12), the first-start self-signed certificate, the shared ticket
//! keys, and the rustls server configuration built from them; plus the certificate checks
//! `gatehouse check` reports and the server-name patterns of passthrough routes.
//!
//! Owns the file reading that turning config into TLS state needs. It builds, it does not
//! drive connections (the session does) nor parse the config (`config` does).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::config::{BackendTlsConfig, ListenerConfig, NodeConfig};
use crate::health::TlsVerify;
use crate::tls::certs::{self, CertError, CertProblem, SelfSignedOutcome};
use crate::tls::rotation;
use crate::tls::server::{CertEntry, ServerTls, ServerTlsSettings, Tickets, TlsSetupError};
use crate::tls::ticket_keys::KeyFileRole;
use crate::tls::verify::CertificateRule;

/// Entries of the TLS 1.2 session-id / TLS 1.3 stateful resumption cache per listener.
pub const SESSION_CACHE_SIZE: usize = 4096;

/// Where in a listener's config a certificate comes from (for error locations).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertOrigin {
    /// `certificates[i]`.
    Listed(usize),
    /// `pem`.
    Pem,
    /// `pfx`.
    Pfx,
}

/// Loads every certificate a listener names; each with where it comes from. Empty when the
/// listener names none (then [`build`] generates a self-signed one). The default one is the
/// listed certificate with `default = true`, else the first of them all; none with
/// `strict_sni`.
pub fn configured_certificates(l: &ListenerConfig) -> Vec<(CertOrigin, Result<CertEntry, CertError>)> {
    let mut out = Vec::new();
    for (i, c) in l.certificates.iter().enumerate() {
        let bundle = match &c.key {
            Some(key) => certs::load_pem_pair(&c.cert, key),
            None => certs::load_pem_bundle(&c.cert),
        };
        out.push((
            CertOrigin::Listed(i),
            bundle.map(|bundle| CertEntry {
                bundle,
                names: c.names.clone(),
                default: c.default,
            }),
        ));
    }
    if let Some(pem) = &l.pem {
        out.push((
            CertOrigin::Pem,
            certs::load_pem_bundle(pem).map(|bundle| CertEntry {
                bundle,
                names: Vec::new(),
                default: false,
            }),
        ));
    }
    if let Some(pfx) = &l.pfx {
        let password = match &l.pfx_password_env {
            None => Ok(String::new()),
            Some(var) => std::env::var(var).map_err(|_| CertError::PasswordUnset {
                path: pfx.clone(),
                var: var.clone(),
            }),
        };
        out.push((
            CertOrigin::Pfx,
            password.and_then(|password| {
                certs::load_pkcs12(pfx, &password).map(|bundle| CertEntry {
                    bundle,
                    names: Vec::new(),
                    default: false,
                })
            }),
        ));
    }
    let explicit = l.certificates.iter().any(|c| c.default);
    if !explicit && !l.strict_sni {
        if let Some((_, Ok(first))) = out.first_mut() {
            first.default = true;
        }
    }
    out
}

/// The problems that make a certificate unusable on a listener: expired or not yet valid,
/// a CA as leaf, a configured name the certificate does not cover, certificates in the file
/// that belong to no chain from the leaf. (An incomplete chain is the clients' business.)
pub fn certificate_problems(entry: &CertEntry, now: SystemTime) -> Vec<String> {
    match entry.bundle.problems(now, &entry.names) {
        Err(e) => vec![e.to_string()],
        Ok(problems) => problems
            .into_iter()
            .filter(|p| {
                p.is_fatal()
                    || matches!(
                        p,
                        CertProblem::NameNotCovered { .. } | CertProblem::Unrelated { .. }
                    )
            })
            .map(|p| p.to_string())
            .collect(),
    }
}

/// Builds the server configuration of a terminating listener. Without configured
/// certificates, reuses or generates `<state_dir>/<listener>.crt` and `.key` for the node's
/// name and `localhost`. Called at start and at each reload (a new configuration; sessions
/// keep the one they started with).
pub fn build(
    l: &ListenerConfig,
    node: &NodeConfig,
    node_name: &str,
    now: SystemTime,
) -> Result<ServerTls, String> {
    let mut certificates = Vec::new();
    for (origin, entry) in configured_certificates(l) {
        let entry = entry.map_err(|e| format!("{}: {e}", origin_name(origin)))?;
        if let Some(p) = certificate_problems(&entry, now).first() {
            return Err(format!("{}: {p}", origin_name(origin)));
        }
        certificates.push(entry);
    }
    if certificates.is_empty() {
        let (cert_path, key_path) = self_signed_paths(&node.state_dir, &l.name);
        std::fs::create_dir_all(&node.state_dir)
            .map_err(|e| format!("node.state_dir {}: {e}", node.state_dir.display()))?;
        let mut names = vec![node_name.to_string()];
        if node_name != "localhost" {
            names.push("localhost".to_string());
        }
        let (bundle, outcome) = certs::ensure_self_signed(&cert_path, &key_path, &names, now)
            .map_err(|e| format!("self-signed certificate: {e}"))?;
        match outcome {
            SelfSignedOutcome::Reused => {
                tracing::info!(listener = %l.name, cert = %cert_path.display(), "reusing the self-signed certificate")
            }
            SelfSignedOutcome::Generated { why } => tracing::warn!(
                listener = %l.name,
                cert = %cert_path.display(),
                "generated a self-signed certificate ({why}); configure a CA-issued one"
            ),
        }
        certificates.push(CertEntry {
            bundle,
            names: Vec::new(),
            default: true,
        });
    }
    // ticket rotation (issue 3): the listener's role and schedule come from `rotation`.
    if l.ticket_key_rotation.is_some() && l.ticket_keys.is_none() {
        return Err("ticket_key_rotation needs ticket_keys (the file to rotate)".into());
    }
    if let Some(r) = l.ticket_key_rotation.filter(|r| r.get() < rotation::MIN_ROTATION) {
        return Err(format!(
            "ticket_key_rotation {:?} is shorter than {:?}",
            r.get(),
            rotation::MIN_ROTATION
        ));
    }
    let tickets = match rotation::key_file(l) {
        None => Tickets::Local,
        Some(file) => Tickets::Shared(file.open(now).map_err(|e| match file.role {
            KeyFileRole::Follow => format!(
                "ticket_keys: {e} (this node only reads the file: set ticket_key_rotation on the node that writes it, or run `gatehouse cert ticket-keys`)"
            ),
            KeyFileRole::Rotate => format!("ticket_keys: {e}"),
        })?),
    };
    let settings = ServerTlsSettings {
        certificates,
        min_version: l.min_tls.parse()?,
        cipher_suites: l.ciphers.clone(),
        kx_groups: l.kx_groups.clone(),
        alpn: l.alpn.clone(),
        session_cache_size: SESSION_CACHE_SIZE,
        tickets,
    };
    ServerTls::build(&settings).map_err(|e| e.to_string())
}

/// The TLS client side of a re-encrypting pool.
#[derive(Debug)]
pub struct BackendTls {
    /// What each session's `ClientConnection` is made from.
    pub config: Arc<ClientConfig>,
    /// The name sent and verified; `None`: the backend's IP address.
    pub server_name: Option<ServerName<'static>>,
}

impl BackendTls {
    /// The name to verify for a backend at `ip`.
    pub fn name_for(&self, ip: std::net::IpAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }
}

/// Builds a pool's TLS client configuration: CA bundle, pinned certificate, or (insecure)
/// no verification. Called by validation (to report a bad CA file or pin at its key) and by
/// the runtime at start and reload.
pub fn build_backend(t: &BackendTlsConfig) -> Result<BackendTls, String> {
    let server_name = match &t.server_name {
        Some(n) => {
            Some(ServerName::try_from(n.clone()).map_err(|e| format!("invalid server_name {n:?}: {e}"))?)
        }
        None => None,
    };
    let config = if let Some(pin) = &t.pin_sha256 {
        CertificateRule::Pinned(parse_pin(pin)?).client_config()?
    } else if let Some(ca) = &t.ca_file {
        TlsVerify::CaFile(ca.clone()).client_config()?
    } else if t.insecure_skip_verify {
        TlsVerify::InsecureSkipVerify.client_config()?
    } else {
        return Err("no way to verify backends".into());
    };
    Ok(BackendTls { config, server_name })
}

/// Parses a SHA-256 fingerprint: 64 hex digits, colons allowed.
pub fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || format!("pin_sha256 {text:?} is not 32 bytes of hex");
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Checks a listener's cipher suites, key-exchange groups, ALPN and minimum version the way
/// [`build`] uses them; on error, the key at fault and why.
pub fn check_tls_parameters(l: &ListenerConfig) -> Result<(), (&'static str, String)> {
    let min_version = l.min_tls.parse().map_err(|e| ("min_tls", e))?;
    if let Some(p) = l.alpn.iter().find(|p| p.is_empty() || p.len() > 255) {
        return Err(("alpn", format!("ALPN protocol {p:?} must be 1 to 255 bytes")));
    }
    let bundle = certs::generate_self_signed(
        &["localhost".to_string()],
        SystemTime::now(),
        Duration::from_secs(3600),
    )
    .map_err(|e| ("tls", e.to_string()))?;
    let settings = ServerTlsSettings {
        certificates: vec![CertEntry {
            bundle,
            names: Vec::new(),
            default: true,
        }],
        min_version,
        cipher_suites: l.ciphers.clone(),
        kx_groups: l.kx_groups.clone(),
        alpn: l.alpn.clone(),
        session_cache_size: 0,
        tickets: Tickets::Off,
    };
    ServerTls::build(&settings).map(|_| ()).map_err(|e| {
        let key = match e {
            TlsSetupError::UnknownKxGroup(_) => "kx_groups",
            TlsSetupError::UnknownCipherSuite(_) => "ciphers",
            // rustls refuses suite lists that fit no allowed version (TLS 1.2 suites only
            // with min_tls = "1.3").
            TlsSetupError::Rustls(_) if !l.ciphers.is_empty() => "ciphers",
            _ => "tls",
        };
        (key, e.to_string())
    })
}

/// Files of a listener's generated self-signed certificate.
pub fn self_signed_paths(state_dir: &Path, listener: &str) -> (PathBuf, PathBuf) {
    let safe: String = listener
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (
        state_dir.join(format!("{safe}.crt")),
        state_dir.join(format!("{safe}.key")),
    )
}

/// Whether a route pattern (`a.example`, `*.b.example`) matches a server name (both compared
/// case-insensitively; a wildcard stands for exactly one label, RFC 6125 §6.4.3).
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

fn origin_name(origin: CertOrigin) -> String {
    match origin {
        CertOrigin::Listed(i) => format!("certificates[{i}]"),
        CertOrigin::Pem => "pem".into(),
        CertOrigin::Pfx => "pfx".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_routes_match_one_label() {
        assert!(name_matches("a.example", "A.Example"));
        assert!(!name_matches("a.example", "b.example"));
        assert!(name_matches("*.b.example", "x.b.example"));
        assert!(!name_matches("*.b.example", "b.example"));
        assert!(!name_matches("*.b.example", "y.x.b.example"));
        assert!(!name_matches("*.b.example", ".b.example"));
    }

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_pin(&hex).unwrap(), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn self_signed_paths_stay_in_the_state_dir() {
        let (c, k) = self_signed_paths(Path::new("/s"), "../evil/x");
        assert_eq!(c, Path::new("/s/___evil_x.crt"));
        assert_eq!(k, Path::new("/s/___evil_x.key"));
    }
}
