//! The client end of one farm-peer connection (control/PROTOCOL.md §1-§5): mutual TLS with
//! a farm member certificate, the hello exchange, length-prefixed frames, and answers to the
//! broker's keepalive pings, on a blocking socket with short read timeouts.
//!
//! The link itself is gatehouse-control's ([`gatehouse_control::link`]), the one gatehouse's
//! gateways and host agents run; this module loads a member's certificate and key and
//! encodes requests. It makes no broker decision and keeps no request state: the load code
//! above it matches responses to requests.

use std::fmt;
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore};

use gatehouse_control::frame::{Frame, KeepaliveConfig, Role};
use gatehouse_control::link as control_link;
use gatehouse_control::message::{self, Request};

/// Why a link could not start or ended.
#[derive(Debug)]
pub enum LinkError {
    /// The certificate files could not be read or used, or a request could not be encoded.
    Setup(String),
    /// TCP connect to the broker failed.
    Connect(String),
    /// The link to this broker failed (TLS, hello, frames, keepalive, socket).
    Link(SocketAddr, control_link::LinkError),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(m) => write!(f, "link setup: {m}"),
            Self::Connect(m) => write!(f, "connect: {m}"),
            Self::Link(addr, e) => write!(f, "link to {addr}: {e}"),
        }
    }
}

impl std::error::Error for LinkError {}

/// A farm member's client-side TLS identity: presents its certificate, trusts the farm CA.
#[derive(Clone, Debug)]
pub struct MemberIdentity {
    /// The member's node name (its certificate's CN and its hello name).
    pub node: String,
    /// The role of its certificate (gateway or host agent).
    pub role: Role,
    config: Arc<ClientConfig>,
}

impl MemberIdentity {
    /// Reads `NODE.pem` and `NODE.key` of `farm_dir` (as `gatehouse farm issue` writes them)
    /// and the farm CA `ca_file`.
    pub fn load(
        farm_dir: &Path,
        ca_file: &Path,
        node: &str,
        role: Role,
    ) -> Result<MemberIdentity, LinkError> {
        let setup = |what: &Path, e: String| LinkError::Setup(format!("{}: {e}", what.display()));
        let mut roots = RootCertStore::empty();
        for cert in read_pem_certs(ca_file)? {
            roots.add(cert).map_err(|e| setup(ca_file, e.to_string()))?;
        }
        let cert_file = farm_dir.join(format!("{node}.pem"));
        let key_file = farm_dir.join(format!("{node}.key"));
        let chain = read_pem_certs(&cert_file)?;
        let key_pem = std::fs::read(&key_file).map_err(|e| setup(&key_file, e.to_string()))?;
        let key = rustls_pemfile::private_key(&mut BufReader::new(&key_pem[..]))
            .map_err(|e| setup(&key_file, e.to_string()))?
            .ok_or_else(|| setup(&key_file, "no private key".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| LinkError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| setup(&cert_file, e.to_string()))?;
        Ok(MemberIdentity {
            node: node.to_string(),
            role,
            config: Arc::new(config),
        })
    }
}

/// An established link to a broker: TLS up, hellos exchanged (gatehouse-control's link, as
/// gatehouse's own gateways and host agents run it).
pub struct Link(control_link::Link);

impl Link {
    /// Connects to `addr` as `me`; the broker must present a farm certificate for
    /// `broker_node` (its DNS name, checked by TLS against the farm CA) and a broker hello.
    pub fn connect(addr: SocketAddr, broker_node: &str, me: &MemberIdentity) -> Result<Link, LinkError> {
        let fail = |e: String| LinkError::Connect(format!("{addr}: {e}"));
        let sock =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| fail(e.to_string()))?;
        let name = ServerName::try_from(broker_node.to_string()).map_err(|e| fail(e.to_string()))?;
        let tls = ClientConnection::new(me.config.clone(), name).map_err(|e| fail(e.to_string()))?;
        let ours = control_link::our_hello(me.role, &me.node).map_err(LinkError::Setup)?;
        // TLS verified the broker's name against the farm CA: nothing more to check.
        let trust_tls = |_: &[CertificateDer<'_>], _: &str, _: Role| Ok(());
        control_link::Link::establish(
            sock,
            Connection::Client(tls),
            &ours,
            Role::Broker,
            KeepaliveConfig::default(),
            &trust_tls,
        )
        .map(Link)
        .map_err(|e| LinkError::Link(addr, e))
    }

    /// Sends request `id`.
    pub fn send_request(&mut self, id: u64, request: &Request) -> Result<(), LinkError> {
        let mut out = Vec::new();
        message::encode_request(id, request, self.0.max_frame_bytes(), &mut out)
            .map_err(|e| LinkError::Setup(format!("request {id}: {e}")))?;
        let peer = self.0.peer_addr();
        self.0.send(&out).map_err(|e| LinkError::Link(peer, e))
    }

    /// Waits up to `wait` for bytes; answers pings, sends ours, and returns the other frames.
    pub fn poll(&mut self, wait: Duration) -> Result<Vec<Frame>, LinkError> {
        let peer = self.0.peer_addr();
        self.0.poll(wait).map_err(|e| LinkError::Link(peer, e))
    }

    /// Closes with a TLS close_notify (best effort).
    pub fn close(self) {
        self.0.close();
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, LinkError> {
    let bad = |e: String| LinkError::Setup(format!("{}: {e}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(&pem[..]))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate".into()));
    }
    Ok(certs)
}
