//! The TLS side of a directory connection (`ldaps://`, StartTLS): the rustls client
//! configuration that verifies the directory's certificate, from `ca_file` or the system's
//! trust store. Built when the directory is set up (start, reload), checked by the farm
//! loader so that a bad `ca_file` is a configuration error with its line.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use super::settings::LdapSettings;

/// The client configuration for `settings`: `None` for a clear-text directory. The error
/// says which file (or the trust store) and what is wrong with it.
pub fn client_config(settings: &LdapSettings) -> Result<Option<Arc<ClientConfig>>, String> {
    if !settings.transport.is_tls() {
        return Ok(None);
    }
    let roots = match &settings.ca_file {
        Some(path) => roots_from_file(path)?,
        None => system_roots()?,
    };
    // ring: a directory login is one handshake now and then; its key exchange order
    // (X25519 first) is what directories expect.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        let cert = cert.map_err(|e| format!("{shown}: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{shown}: a certificate rustls cannot use: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{shown}: no PEM certificate in it"));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "it is empty".to_string(), |e| e.to_string());
        return Err(format!(
            "no CA certificate in the system's trust store ({why}): set ca_file"
        ));
    }
    Ok(roots)
}
