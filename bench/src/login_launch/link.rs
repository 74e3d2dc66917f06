//! The client end of one farm-peer connection (control/PROTOCOL.md §1-§5): mutual TLS with
//! a farm member certificate, the hello exchange, length-prefixed frames, and answers to the
//! broker's keepalive pings, on a blocking socket with short read timeouts.
//!
//! The harness cannot use gatehouse's own link (gatehouse depends on this crate, not the
//! other way round), so it speaks the protocol from the sans-IO types of
//! `gatehouse_control::frame` and `gatehouse_control::message`, as any third-party gateway
//! or host agent would. It makes no broker decision and keeps no request state: the load
//! code above it matches responses to requests.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use gatehouse_control::frame::{
    self, Frame, FrameDecoder, FrameKind, Hello, HelloDecoder, HelloProgress, Keepalive, KeepaliveAction,
    KeepaliveConfig, NodeName, Role, DEFAULT_MAX_FRAME_BYTES, HELLO_TIMEOUT,
};
use gatehouse_control::message::{self, Request};

/// A write that takes longer than this means the broker stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a link could not start or ended.
#[derive(Debug)]
pub enum LinkError {
    /// The certificate files could not be read or used.
    Setup(String),
    /// TCP connect, TLS handshake or hello failed.
    Handshake(String),
    /// A socket error or the broker closed the connection.
    Io(String),
    /// A frame the protocol does not allow (the stream cannot be re-synchronised).
    Frame(String),
    /// The broker answered no ping for the keepalive timeout.
    PeerDead,
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(m) => write!(f, "link setup: {m}"),
            Self::Handshake(m) => write!(f, "handshake: {m}"),
            Self::Io(m) => write!(f, "socket: {m}"),
            Self::Frame(m) => write!(f, "frame: {m}"),
            Self::PeerDead => f.write_str("broker answered no ping in time"),
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

/// An established link to a broker: TLS up, hellos exchanged.
pub struct Link {
    sock: TcpStream,
    tls: ClientConnection,
    decoder: FrameDecoder,
    keepalive: Keepalive,
    buf: Box<[u8; 16 * 1024]>,
}

impl Link {
    /// Connects to `addr` as `me`; the broker must present a farm certificate for
    /// `broker_node` (its DNS name) and a broker hello.
    pub fn connect(addr: SocketAddr, broker_node: &str, me: &MemberIdentity) -> Result<Link, LinkError> {
        let hs = |e: String| LinkError::Handshake(format!("{addr}: {e}"));
        let deadline = Instant::now() + HELLO_TIMEOUT;
        let sock =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| hs(e.to_string()))?;
        let _ = sock.set_nodelay(true);
        sock.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|e| hs(e.to_string()))?;
        let name = ServerName::try_from(broker_node.to_string()).map_err(|e| hs(e.to_string()))?;
        let tls = ClientConnection::new(me.config.clone(), name).map_err(|e| hs(e.to_string()))?;
        let mut link = Link {
            sock,
            tls,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
            keepalive: Keepalive::new(KeepaliveConfig::default(), Instant::now()),
            buf: Box::new([0u8; 16 * 1024]),
        };
        while link.tls.is_handshaking() {
            link.read_timeout_until(deadline)?;
            link.tls
                .complete_io(&mut link.sock)
                .map_err(|e| hs(format!("TLS: {e}")))?;
        }
        let node = NodeName::new(me.node.clone()).map_err(|e| LinkError::Setup(e.to_string()))?;
        let ours = Hello::new(me.role, node);
        let mut hello_bytes = Vec::new();
        ours.encode(&mut hello_bytes);
        link.write_plain(&hello_bytes)?;
        let mut hello = HelloDecoder::new();
        let peer = 'outer: loop {
            loop {
                let n = match link.tls.reader().read(&mut link.buf[..]) {
                    Ok(0) => return Err(hs("closed during the hello".into())),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(hs(e.to_string())),
                };
                match hello.feed(&link.buf[..n]) {
                    Ok(HelloProgress::NeedMore) => {}
                    Ok(HelloProgress::Done { hello, consumed }) => {
                        link.decoder.feed(&link.buf[consumed..n]);
                        break 'outer hello;
                    }
                    Err(e) => return Err(hs(format!("hello: {}: {e}", e.reason()))),
                }
            }
            link.read_timeout_until(deadline)?;
            if !link.read_tls_once()? && Instant::now() >= deadline {
                return Err(hs("no hello in time".into()));
            }
        };
        ours.negotiate(&peer, Role::Broker)
            .map_err(|e| hs(format!("hello: {}: {e}", e.reason())))?;
        link.keepalive = Keepalive::new(KeepaliveConfig::default(), Instant::now());
        Ok(link)
    }

    /// Sends request `id`.
    pub fn send_request(&mut self, id: u64, request: &Request) -> Result<(), LinkError> {
        let mut out = Vec::new();
        message::encode_request(id, request, DEFAULT_MAX_FRAME_BYTES, &mut out)
            .map_err(|e| LinkError::Frame(e.to_string()))?;
        self.write_plain(&out)
    }

    /// Waits up to `wait` for bytes; answers pings, sends ours, and returns the other frames.
    pub fn poll(&mut self, wait: Duration) -> Result<Vec<Frame>, LinkError> {
        self.run_keepalive()?;
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| LinkError::Io(e.to_string()))?;
        self.read_tls_once()?;
        loop {
            match self.tls.reader().read(&mut self.buf[..]) {
                Ok(0) => return Err(LinkError::Io("closed by the broker".into())),
                Ok(n) => self.decoder.feed(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(LinkError::Io(e.to_string())),
            }
        }
        let mut frames = Vec::new();
        while let Some(f) = self
            .decoder
            .next_frame()
            .map_err(|e| LinkError::Frame(format!("{}: {e}", e.reason())))?
        {
            match f.kind {
                FrameKind::Ping => {
                    let mut out = Vec::new();
                    frame::encode_frame(&Frame::pong(f.request_id), DEFAULT_MAX_FRAME_BYTES, &mut out)
                        .map_err(|e| LinkError::Frame(e.to_string()))?;
                    self.write_plain(&out)?;
                }
                FrameKind::Pong => {
                    self.keepalive.on_pong(f.request_id, Instant::now());
                }
                _ => frames.push(f),
            }
        }
        Ok(frames)
    }

    /// Closes with a TLS close_notify (best effort).
    pub fn close(mut self) {
        self.tls.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }

    fn run_keepalive(&mut self) -> Result<(), LinkError> {
        loop {
            match self.keepalive.poll(Instant::now()) {
                KeepaliveAction::SendPing { seq } => {
                    let mut out = Vec::new();
                    frame::encode_frame(&Frame::ping(seq), DEFAULT_MAX_FRAME_BYTES, &mut out)
                        .map_err(|e| LinkError::Frame(e.to_string()))?;
                    self.write_plain(&out)?;
                }
                KeepaliveAction::Wait { .. } => return Ok(()),
                KeepaliveAction::PeerDead { .. } => return Err(LinkError::PeerDead),
            }
        }
    }

    fn read_timeout_until(&self, deadline: Instant) -> Result<(), LinkError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LinkError::Handshake(
                "TLS handshake and hello not done in time".into(),
            ));
        }
        self.sock
            .set_read_timeout(Some(left))
            .map_err(|e| LinkError::Io(e.to_string()))
    }

    /// One read from the socket into rustls; `false` on a read timeout.
    fn read_tls_once(&mut self) -> Result<bool, LinkError> {
        match self.tls.read_tls(&mut self.sock) {
            Ok(0) => return Err(LinkError::Io("closed by the broker".into())),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(LinkError::Io(e.to_string())),
        }
        if let Err(e) = self.tls.process_new_packets() {
            let _ = self.flush();
            return Err(LinkError::Io(format!("TLS: {e}")));
        }
        self.flush()?;
        Ok(true)
    }

    fn write_plain(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.tls
            .writer()
            .write_all(bytes)
            .map_err(|e| LinkError::Io(e.to_string()))?;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LinkError::Io(e.to_string())),
            }
        }
        Ok(())
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
