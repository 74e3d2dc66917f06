//! The blocking probes: TCP connect, TLS handshake, HTTP(S) GET, each bounded by one deadline.
//!
//! Owns the socket I/O of a check. Every blocking call gets the time left until the deadline
//! as its own timeout, so a backend that accepts and then says nothing, or whose listen queue
//! is full (a stopped process), fails with `Timeout(stage)` within the probe's budget.
//! Addresses are already resolved: no DNS here.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use socket2::{Domain, Protocol, Socket, Type};

use super::http::{self, StatusRead, MAX_RESPONSE_HEAD};
use super::outcome::{ProbeFailure, ProbeOutcome, Stage};
use super::spec::{CheckKind, TlsVerify};

/// Runs one probe of `kind` against `addr`, taking at most about `timeout` in total.
///
/// Builds the TLS client configuration (reading the CA file) on every call; the checker keeps
/// one per target instead. Never panics on what the backend sends.
pub fn probe(addr: SocketAddr, kind: &CheckKind, timeout: Duration) -> ProbeOutcome {
    let tls = match tls_verify(kind).map(TlsVerify::client_config) {
        None => None,
        Some(Ok(config)) => Some(config),
        Some(Err(msg)) => return ProbeOutcome::Failed(ProbeFailure::Tls(msg)),
    };
    probe_with(addr, kind, tls.as_ref(), timeout, false)
}

/// The verification settings a kind needs, if it speaks TLS.
pub(crate) fn tls_verify(kind: &CheckKind) -> Option<&TlsVerify> {
    match kind {
        CheckKind::Tcp | CheckKind::Http { tls: None, .. } => None,
        CheckKind::Tls { verify, .. }
        | CheckKind::Http {
            tls: Some((_, verify)),
            ..
        } => Some(verify),
    }
}

/// [`probe`] with a prepared TLS configuration (required when `kind` speaks TLS); with
/// `send_proxy`, a PROXY v2 LOCAL header goes first, as to a pool whose backends expect one
/// on every connection (HAProxy's `check-send-proxy`).
pub(crate) fn probe_with(
    addr: SocketAddr,
    kind: &CheckKind,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
    send_proxy: bool,
) -> ProbeOutcome {
    let deadline = Deadline(Instant::now() + timeout);
    let dial = Dial { addr, send_proxy };
    let result = match kind {
        CheckKind::Tcp => probe_tcp(dial, &deadline),
        CheckKind::Tls { server_name, .. } => probe_tls(dial, server_name.as_deref(), tls, &deadline),
        CheckKind::Http {
            path,
            host,
            expect,
            tls: tls_settings,
        } => {
            if let Err(msg) = kind.validate() {
                return ProbeOutcome::Failed(ProbeFailure::Io(format!("invalid check: {msg}")));
            }
            let sni = tls_settings.as_ref().and_then(|(sni, _)| sni.as_deref());
            let host = match (host, sni) {
                (Some(h), _) => h.clone(),
                (None, Some(name)) => name.to_string(),
                (None, None) => addr.to_string(),
            };
            probe_http(dial, path, &host, sni, tls_settings.as_ref().and(tls), &deadline).and_then(|code| {
                if expect.matches(code) {
                    Ok(())
                } else {
                    Err(ProbeFailure::HttpStatus(code))
                }
            })
        }
    };
    match result {
        Ok(()) => ProbeOutcome::Ok,
        Err(failure) => ProbeOutcome::Failed(failure),
    }
}

/// The instant a probe must be over by.
struct Deadline(Instant);

/// Where a probe connects, and how its connection starts.
#[derive(Clone, Copy)]
struct Dial {
    addr: SocketAddr,
    /// Send a PROXY v2 LOCAL header right after connecting.
    send_proxy: bool,
}

impl Deadline {
    /// Time left, or a timeout failure for `stage` when none is.
    fn remaining(&self, stage: Stage) -> Result<Duration, ProbeFailure> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(ProbeFailure::Timeout(stage))
        } else {
            Ok(left)
        }
    }

    /// Sets both socket timeouts to the time left, so the next blocking call ends in time.
    fn arm(&self, socket: &TcpStream, stage: Stage) -> Result<(), ProbeFailure> {
        let left = self.remaining(stage)?;
        socket
            .set_read_timeout(Some(left))
            .and_then(|()| socket.set_write_timeout(Some(left)))
            .map_err(|e| ProbeFailure::from_io(&e, stage))
    }
}

fn probe_tcp(dial: Dial, deadline: &Deadline) -> Result<(), ProbeFailure> {
    let stream = connect(dial, deadline)?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

fn probe_tls(
    dial: Dial,
    server_name: Option<&str>,
    tls: Option<&Arc<ClientConfig>>,
    deadline: &Deadline,
) -> Result<(), ProbeFailure> {
    let mut stream = connect(dial, deadline)?;
    let mut conn = tls_client(dial.addr, server_name, tls)?;
    handshake(&mut stream, &mut conn, deadline)?;
    // Polite close: close_notify (RFC 8446 §6.1), best effort within what is left.
    conn.send_close_notify();
    if deadline.arm(&stream, Stage::Tls).is_ok() {
        let _ = conn.write_tls(&mut stream);
    }
    Ok(())
}

/// Sends the request and returns the status code of the answer.
fn probe_http(
    dial: Dial,
    path: &str,
    host: &str,
    sni: Option<&str>,
    tls: Option<&Arc<ClientConfig>>,
    deadline: &Deadline,
) -> Result<u16, ProbeFailure> {
    let mut stream = connect(dial, deadline)?;
    let mut conn = match tls {
        None => Conn::Plain(stream),
        Some(_) => {
            let mut client = tls_client(dial.addr, sni, tls)?;
            handshake(&mut stream, &mut client, deadline)?;
            Conn::Tls(Box::new(StreamOwned::new(client, stream)))
        }
    };
    conn.write_all(&http::request(path, host), deadline)?;

    let mut buf = vec![0u8; MAX_RESPONSE_HEAD];
    let mut len = 0;
    loop {
        match http::read_status(&buf[..len]) {
            StatusRead::Status(code) => return Ok(code),
            StatusRead::Malformed(msg) => return Err(ProbeFailure::HttpMalformed(msg)),
            StatusRead::Incomplete if len == buf.len() => {
                // read_status reports Malformed at the bound; kept so the read below can
                // never be handed an empty buffer.
                return Err(ProbeFailure::HttpMalformed("response head too long".into()));
            }
            StatusRead::Incomplete => {}
        }
        let n = conn.read(&mut buf[len..], deadline)?;
        if n == 0 {
            return Err(if len == 0 {
                ProbeFailure::Closed
            } else {
                ProbeFailure::HttpMalformed("connection closed inside the status line".into())
            });
        }
        len += n;
    }
}

/// Opens a TCP connection within the deadline (and sends the PROXY header it starts with).
fn connect(dial: Dial, deadline: &Deadline) -> Result<TcpStream, ProbeFailure> {
    let addr = dial.addr;
    let io_err = |e: io::Error| ProbeFailure::from_io(&e, Stage::Connect);
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(io_err)?;
    // Best effort: a lost option only costs latency.
    let _ = socket.set_nodelay(true);
    socket
        .connect_timeout(&addr.into(), deadline.remaining(Stage::Connect)?)
        .map_err(io_err)?;
    let mut stream: TcpStream = socket.into();
    if dial.send_proxy {
        let mut header = Vec::new();
        crate::proxy_protocol::ProxyHeader::local()
            .encode(&mut header)
            .map_err(|e| ProbeFailure::Io(format!("PROXY header: {e}")))?;
        deadline.arm(&stream, Stage::Connect)?;
        stream.write_all(&header).map_err(io_err)?;
    }
    Ok(stream)
}

fn tls_client(
    addr: SocketAddr,
    server_name: Option<&str>,
    tls: Option<&Arc<ClientConfig>>,
) -> Result<ClientConnection, ProbeFailure> {
    let config = tls.ok_or_else(|| ProbeFailure::Tls("no tls configuration".into()))?;
    let name = super::tls::server_name(server_name, addr.ip()).map_err(ProbeFailure::Tls)?;
    ClientConnection::new(config.clone(), name).map_err(|e| ProbeFailure::Tls(e.to_string()))
}

/// Drives the client handshake to completion on the blocking socket.
fn handshake(
    stream: &mut TcpStream,
    conn: &mut ClientConnection,
    deadline: &Deadline,
) -> Result<(), ProbeFailure> {
    let io_err = |e: io::Error| ProbeFailure::from_io(&e, Stage::Tls);
    while conn.is_handshaking() {
        flush_tls(stream, conn, deadline)?;
        if !conn.is_handshaking() {
            break;
        }
        if !conn.wants_read() {
            return Err(ProbeFailure::Tls("handshake stalled".into()));
        }
        deadline.arm(stream, Stage::Tls)?;
        match conn.read_tls(stream) {
            Ok(0) => return Err(ProbeFailure::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
        if let Err(e) = conn.process_new_packets() {
            // Let the server see our alert, best effort.
            let _ = conn.write_tls(stream);
            return Err(ProbeFailure::Tls(e.to_string()));
        }
    }
    // TLS 1.3: the client Finished is still queued when is_handshaking turns false.
    flush_tls(stream, conn, deadline)
}

fn flush_tls(
    stream: &mut TcpStream,
    conn: &mut ClientConnection,
    deadline: &Deadline,
) -> Result<(), ProbeFailure> {
    while conn.wants_write() {
        deadline.arm(stream, Stage::Tls)?;
        match conn.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProbeFailure::from_io(&e, Stage::Tls)),
        }
    }
    Ok(())
}

/// The HTTP check's connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => &t.sock,
        }
    }

    fn write_all(&mut self, mut buf: &[u8], deadline: &Deadline) -> Result<(), ProbeFailure> {
        while !buf.is_empty() {
            deadline.arm(self.socket(), Stage::Write)?;
            let written = match self {
                Conn::Plain(s) => s.write(buf),
                Conn::Tls(t) => t.write(buf),
            };
            match written {
                Ok(0) => return Err(ProbeFailure::Closed),
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_failure(&e, Stage::Write)),
            }
        }
        if let Conn::Tls(t) = self {
            // rustls buffers plaintext; flushing pushes the records onto the socket.
            deadline.arm(&t.sock, Stage::Write)?;
            t.flush().map_err(|e| stream_failure(&e, Stage::Write))?;
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], deadline: &Deadline) -> Result<usize, ProbeFailure> {
        loop {
            deadline.arm(self.socket(), Stage::Read)?;
            let read = match self {
                Conn::Plain(s) => s.read(buf),
                Conn::Tls(t) => t.read(buf),
            };
            match read {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(stream_failure(&e, Stage::Read)),
            }
        }
    }
}

/// Like [`ProbeFailure::from_io`], but recognises rustls errors carried inside `io::Error`.
fn stream_failure(err: &io::Error, stage: Stage) -> ProbeFailure {
    match err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => ProbeFailure::Tls(tls.to_string()),
        None => ProbeFailure::from_io(err, stage),
    }
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
