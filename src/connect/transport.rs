//! One connection to one gateway: TCP connect within the timeout, the TLS handshake in the
//! SSL modes, and HTTP request/answer exchanges whose answers must arrive within the timeout
//! (a gateway that accepts but never answers is noticed here).
//!
//! Owns blocking sockets with deadlines. It does not choose between gateways (that is
//! `gateways`) and does not relay tunnel bytes (that is `relay`); after a `101` it hands the
//! socket, the TLS state and any bytes already read over to the relay.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::api::{self, AnswerHead};
use super::trust::{self, Trust};
use super::ConnectError;

/// Why one attempt at one gateway failed.
#[derive(Debug)]
pub enum AttemptError {
    /// The gateway is unreachable, slow or broken: worth trying the other gateway.
    Transport(String),
    /// Trying elsewhere would not help (an untrusted certificate, a local problem).
    Final(ConnectError),
}

/// What a connection needs to reach gateways: TLS settings and the time limit.
pub struct Dialer {
    tls: Option<TlsSettings>,
    timeout: Duration,
}

struct TlsSettings {
    config: Arc<ClientConfig>,
    trust: Trust,
    server_name: Option<String>,
}

/// A connection to a gateway, in plain TCP or inside TLS.
pub enum Stream {
    /// Gateway and Direct modes.
    Plain(TcpStream),
    /// Gateway SSL and Direct SSL modes (handshake done).
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// A connection that speaks HTTP/1.1 to one gateway.
pub struct HttpConn {
    stream: Stream,
    gateway: String,
    timeout: Duration,
    /// Bytes read past the last answer.
    buf: Vec<u8>,
    reusable: bool,
}

/// A tunnel after `101 Switching Protocols`: everything the relay needs.
pub struct Tunnel {
    /// The socket to the gateway.
    pub socket: TcpStream,
    /// The TLS state in the SSL modes (may hold decrypted bytes not yet read).
    pub tls: Option<ClientConnection>,
    /// Bytes the gateway sent after the `101` head, for the local client first.
    pub early: Vec<u8>,
    /// Which gateway (`HOST:PORT`) carries it.
    pub gateway: String,
}

impl Dialer {
    /// A dialer for plain connections, or for TLS under `trust` when it is given.
    /// `server_name` overrides the name checked in certificates (default: the gateway's host).
    pub fn new(
        trust: Option<&Trust>,
        server_name: Option<String>,
        timeout: Duration,
    ) -> Result<Dialer, ConnectError> {
        let tls = match trust {
            Some(t) => Some(TlsSettings {
                config: t.client_config()?,
                trust: t.clone(),
                server_name,
            }),
            None => None,
        };
        Ok(Dialer { tls, timeout })
    }

    /// The time limit for connecting, the handshake and each answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connects to `gateway` (`HOST:PORT`), with the TLS handshake in the SSL modes.
    pub fn dial(&self, gateway: &str) -> Result<HttpConn, AttemptError> {
        let socket = connect_tcp(gateway, self.timeout).map_err(AttemptError::Transport)?;
        let stream = match &self.tls {
            None => Stream::Plain(socket),
            Some(tls) => Stream::Tls(Box::new(self.handshake(tls, gateway, socket)?)),
        };
        Ok(HttpConn {
            stream,
            gateway: gateway.to_string(),
            timeout: self.timeout,
            buf: Vec::new(),
            reusable: true,
        })
    }

    fn handshake(
        &self,
        tls: &TlsSettings,
        gateway: &str,
        mut socket: TcpStream,
    ) -> Result<StreamOwned<ClientConnection, TcpStream>, AttemptError> {
        let name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| host_of(gateway).to_string());
        let server_name = ServerName::try_from(name.clone()).map_err(|_| {
            AttemptError::Final(ConnectError::Usage(format!(
                "{name:?} is not a valid TLS server name (use --server-name)"
            )))
        })?;
        let mut conn = ClientConnection::new(tls.config.clone(), server_name)
            .map_err(|e| AttemptError::Transport(format!("tls: {e}")))?;
        let deadline = Instant::now() + self.timeout;
        while conn.is_handshaking() {
            set_deadline(&socket, deadline).map_err(|e| AttemptError::Transport(e.to_string()))?;
            if let Err(e) = conn.complete_io(&mut socket) {
                return Err(self.handshake_error(tls, gateway, &name, e));
            }
        }
        Ok(StreamOwned::new(conn, socket))
    }

    /// Sorts a failed handshake into "try elsewhere" and "the certificate is not trusted".
    fn handshake_error(&self, tls: &TlsSettings, gateway: &str, name: &str, e: io::Error) -> AttemptError {
        let tls_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls_error {
            // verify.rs reports a pin mismatch as `General`; webpki as `InvalidCertificate`.
            Some(rustls::Error::InvalidCertificate(_)) | Some(rustls::Error::General(_)) => {
                let why = tls_error.map(|t| t.to_string()).unwrap_or_default();
                AttemptError::Final(ConnectError::Untrusted {
                    gateway: gateway.to_string(),
                    reason: format!(
                        "{why} (checked against {} for name {name:?})",
                        tls.trust.describe()
                    ),
                    fingerprint: self.probe_fingerprint(gateway),
                })
            }
            Some(other) => AttemptError::Transport(format!("tls handshake: {other}")),
            None => AttemptError::Transport(io_words(&e, self.timeout, "the TLS handshake")),
        }
    }

    /// The SHA-256 of the leaf certificate `gateway` presents, fetched over a second
    /// connection that trusts anything and sends nothing: so that the error message can say
    /// what to pin. Best effort.
    fn probe_fingerprint(&self, gateway: &str) -> Option<String> {
        let config = crate::tls::verify::CertificateRule::AnyInsecure
            .client_config()
            .ok()?;
        let mut socket = connect_tcp(gateway, self.timeout).ok()?;
        let name = ServerName::try_from(host_of(gateway).to_string())
            .unwrap_or_else(|_| ServerName::try_from("gateway").expect("\"gateway\" is a valid DNS name"));
        let mut conn = ClientConnection::new(config, name).ok()?;
        let deadline = Instant::now() + self.timeout;
        while conn.is_handshaking() {
            set_deadline(&socket, deadline).ok()?;
            conn.complete_io(&mut socket).ok()?;
        }
        let leaf = conn.peer_certificates()?.first()?;
        let print = trust::fingerprint(leaf.as_ref());
        let _ = socket.shutdown(Shutdown::Both);
        Some(print)
    }
}

impl HttpConn {
    /// The gateway this connection reaches (`HOST:PORT` as given).
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The gateway let this connection carry another request.
    pub fn reusable(&self) -> bool {
        self.reusable
    }

    /// Sends one request and reads its answer: the head and, except for `101`, the body.
    pub fn exchange(&mut self, request: &[u8]) -> Result<(AnswerHead, Vec<u8>), AttemptError> {
        let deadline = Instant::now() + self.timeout;
        self.write_all(request, deadline)?;
        let head = loop {
            match api::parse_answer_head(&self.buf) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err(e) => {
                    self.reusable = false;
                    return Err(AttemptError::Transport(e.to_string()));
                }
            }
            if self.fill(deadline)? == 0 {
                self.reusable = false;
                return Err(AttemptError::Transport(if self.buf.is_empty() {
                    "the gateway closed the connection without answering".to_string()
                } else {
                    "the gateway closed the connection in the middle of an answer".to_string()
                }));
            }
        };
        self.buf.drain(..head.len);
        if head.closes {
            self.reusable = false;
        }
        if head.status == 101 {
            self.reusable = false;
            return Ok((head, Vec::new()));
        }
        let body = match head.content_length {
            Some(n) => {
                while self.buf.len() < n {
                    if self.fill(deadline)? == 0 {
                        self.reusable = false;
                        return Err(AttemptError::Transport("answer body cut short".to_string()));
                    }
                }
                self.buf.drain(..n).collect()
            }
            // CLIENT-API.md: answers always carry Content-Length; without it the body runs
            // to the end of the connection.
            None if head.closes => {
                while self.fill(deadline)? > 0 {
                    if self.buf.len() > api::MAX_ANSWER_BODY {
                        return Err(AttemptError::Transport("answer body too large".to_string()));
                    }
                }
                std::mem::take(&mut self.buf)
            }
            None => Vec::new(),
        };
        Ok((head, body))
    }

    /// After a `101`: the socket, the TLS state and the bytes already read, for the relay.
    pub fn into_tunnel(self) -> Tunnel {
        let (socket, tls) = match self.stream {
            Stream::Plain(s) => (s, None),
            Stream::Tls(s) => {
                let owned = *s;
                (owned.sock, Some(owned.conn))
            }
        };
        Tunnel {
            socket,
            tls,
            early: self.buf,
            gateway: self.gateway,
        }
    }

    fn socket(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    fn write_all(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), AttemptError> {
        while !bytes.is_empty() {
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let socket = self.socket();
            let set = socket
                .set_write_timeout(Some(remaining))
                .and_then(|()| socket.set_read_timeout(Some(remaining)));
            set.map_err(|e| AttemptError::Transport(e.to_string()))?;
            let written = match &mut self.stream {
                Stream::Plain(s) => s.write(bytes),
                Stream::Tls(s) => s.write(bytes).and_then(|n| s.flush().map(|()| n)),
            };
            match written {
                Ok(0) => {
                    return Err(AttemptError::Transport(
                        "the gateway closed the connection".into(),
                    ))
                }
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.reusable = false;
                    return Err(AttemptError::Transport(io_words(&e, self.timeout, "sending")));
                }
            }
        }
        Ok(())
    }

    /// Reads more of the answer before `deadline`; `Ok(0)` at the end of the stream.
    fn fill(&mut self, deadline: Instant) -> Result<usize, AttemptError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                self.reusable = false;
                return Err(AttemptError::Transport(format!(
                    "no answer within {}",
                    humantime(self.timeout)
                )));
            }
            self.socket()
                .set_read_timeout(Some(remaining))
                .map_err(|e| AttemptError::Transport(e.to_string()))?;
            let read = match &mut self.stream {
                Stream::Plain(s) => s.read(&mut chunk),
                Stream::Tls(s) => s.read(&mut chunk),
            };
            match read {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A TLS peer that closes without close_notify: the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => {
                    self.reusable = false;
                    return Err(AttemptError::Transport(io_words(&e, self.timeout, "the answer")));
                }
            }
        }
    }
}

/// Connects to the first address of `target` (`HOST:PORT`) that accepts within `timeout`.
pub fn connect_tcp(target: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<_> = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut last = format!("{target} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                // A cut link to the gateway is noticed in about two minutes, as the gateway
                // notices it, rather than at the kernel's pace (12 to 15).
                let _ = crate::engine::listener::DeadPeer::default().apply(socket2::SockRef::from(&s));
                return Ok(s);
            }
            Err(e) => last = io_words(&e, timeout, "connecting"),
        }
    }
    Err(last)
}

/// The host part of `HOST:PORT` (brackets of an IPv6 address removed).
pub fn host_of(target: &str) -> &str {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn set_deadline(socket: &TcpStream, deadline: Instant) -> io::Result<()> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
    }
    socket.set_read_timeout(Some(remaining))?;
    socket.set_write_timeout(Some(remaining))
}

/// An I/O error in words, with timeouts said as such.
fn io_words(e: &io::Error, timeout: Duration, during: &str) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer within {} ({during})", humantime(timeout))
        }
        _ => format!("{during}: {e}"),
    }
}

/// `1.5s`, `250ms`.
pub fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_targets() {
        assert_eq!(host_of("gw.example:443"), "gw.example");
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(humantime(Duration::from_secs(5)), "5s");
        assert_eq!(humantime(Duration::from_millis(250)), "250ms");
    }
}
