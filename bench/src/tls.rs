//! The TLS client side of the harness: a rustls client (aws-lc-rs provider) that verifies the
//! target against a CA file, or (with `--insecure`) does not verify at all.
//!
//! aws-lc-rs rather than ring because the load generator, not the proxy, was the limit of
//! the handshake benchmark: on the one CPU it shares with the stand-ins, the ring client
//! (its X25519 about half aws-lc's speed here, and a getrandom(2) per random draw) kept that
//! CPU 99.7% busy while gatehouse was 57% busy (BENCHMARKS.md, "The handshake client").
//!
//! Owns how scenarios open TLS connections (and the throw-away certificate of a TLS stand-in,
//! [`self_signed_server`]); it does not decide what they send.

use std::io::{self, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    StreamOwned,
};

use crate::BenchError;

/// A TLS server configuration with a fresh self-signed certificate for `name` (ECDSA P-256,
/// ring), and that certificate in PEM for the clients to trust: what TLS stand-ins and the
/// harness's own TLS servers use.
pub fn self_signed_server(name: &str) -> Result<(Arc<ServerConfig>, String), BenchError> {
    let bad = |e: String| BenchError::Usage(format!("self-signed certificate for {name}: {e}"));
    let key = rcgen::KeyPair::generate().map_err(|e| bad(e.to_string()))?;
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .and_then(|params| params.self_signed(&key))
        .map_err(|e| bad(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| bad(e.to_string()))?;
    Ok((Arc::new(config), cert.pem()))
}

/// How the client checks the target's certificate.
#[derive(Clone, Debug)]
pub enum Verify {
    /// Against the CA certificates of this PEM file.
    CaFile(PathBuf),
    /// Not at all (a benchmark against a throw-away certificate).
    Insecure,
}

/// Which TLS version the client offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TlsVersion {
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    Tls13,
    /// TLS 1.2 only.
    #[value(name = "1.2")]
    Tls12,
}

/// What a TLS scenario needs to open connections.
#[derive(Clone, Debug)]
pub struct TlsClient {
    /// The configuration (one per client: its session cache is what resumes).
    pub config: Arc<ClientConfig>,
    /// The name sent in SNI and verified.
    pub server_name: ServerName<'static>,
}

/// A TLS stream over a blocking socket.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

impl TlsClient {
    /// A client for `server_name`, offering `version`; `resume` keeps a session cache so
    /// that the second and later connections resume (tickets in TLS 1.3, tickets or ids in
    /// TLS 1.2); without it every handshake is a full one.
    pub fn new(
        verify: &Verify,
        server_name: &str,
        version: TlsVersion,
        resume: bool,
    ) -> Result<TlsClient, BenchError> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        // X25519 first, as the benchmarks specify and as browsers and OpenSSL send it (the
        // provider's default would lead with the post-quantum hybrid).
        provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
        let provider = Arc::new(provider);
        let versions: &[&'static rustls::SupportedProtocolVersion] = match version {
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
            TlsVersion::Tls12 => &[&rustls::version::TLS12],
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| BenchError::Usage(format!("TLS: {e}")))?;
        let mut config = match verify {
            Verify::CaFile(path) => builder.with_root_certificates(roots(path)?).with_no_client_auth(),
            Verify::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
        };
        config.resumption = if resume {
            Resumption::in_memory_sessions(64)
        } else {
            Resumption::disabled()
        };
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| BenchError::Usage(format!("--server-name {server_name:?}: {e}")))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// Starts TLS over a connected socket (the handshake runs on the first read or write).
    pub fn wrap(&self, sock: TcpStream) -> Result<TlsStream, String> {
        let conn = ClientConnection::new(self.config.clone(), self.server_name.clone())
            .map_err(|e| format!("TLS client: {e}"))?;
        Ok(StreamOwned::new(conn, sock))
    }
}

/// Drives the handshake of `s` to its end.
pub fn complete_handshake(s: &mut TlsStream) -> io::Result<()> {
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(())
}

fn roots(path: &Path) -> Result<RootCertStore, BenchError> {
    let bad = |e: String| BenchError::Usage(format!("--ca {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut store = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        store
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(store)
}

/// Accepts any certificate but still checks the handshake signatures (so the server's
/// private-key operation is done and verified as with a real client).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
