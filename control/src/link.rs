//! One control-protocol connection over mutual TLS on a blocking socket: handshake, hello
//! exchange, frames and keepalive (PROTOCOL.md §1-§5).
//!
//! The broker, the host agent and the gateway client each run a thread per link, so a link
//! is driven by short blocking reads with a timeout ([`Link::poll`]): that bounds the delay of
//! outgoing frames queued by other threads to the poll period, which is fine for a control
//! plane of a few dozen connections. The protocol decisions stay in the sans-IO types of
//! [`crate::frame`]. Who may be on the other end is the caller's rule ([`PeerCheck`]):
//! gatehouse checks the farm certificate's name and role; a load generator that verified the
//! broker's name through TLS needs nothing more.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use rustls::Connection;

use crate::frame::{
    self, Frame, FrameDecoder, FrameKind, Hello, HelloDecoder, HelloProgress, Keepalive, KeepaliveAction,
    KeepaliveConfig, NodeName, Role, DEFAULT_MAX_FRAME_BYTES, HELLO_TIMEOUT,
};

/// Decides whether the peer's certificates (leaf first) belong to the node its hello named
/// (second argument) in the role this connection needs (third); the error says why not.
pub type PeerCheck<'a> = &'a dyn Fn(&[CertificateDer<'_>], &str, Role) -> Result<(), String>;

/// A write that takes longer than this means the peer stopped reading: the link is dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a link ended or could not start.
#[derive(Debug)]
pub enum LinkError {
    /// The TLS handshake failed (no or a foreign certificate, protocol error).
    Tls(String),
    /// The hello was refused (`hello_*` reason of PROTOCOL.md §2).
    Hello(String),
    /// The certificate does not name the node of the hello.
    Identity(String),
    /// A frame error (PROTOCOL.md §3); the stream cannot be re-synchronised.
    Frame(String),
    /// No pong for the keepalive timeout (PROTOCOL.md §5).
    PeerDead(Duration),
    /// The peer closed the connection.
    Closed,
    /// A socket error.
    Io(io::Error),
    /// Handshake or hello not done within `HELLO_TIMEOUT`.
    Timeout,
    /// A write waited `WRITE_TIMEOUT`: the peer stopped reading (hung, or its link is cut).
    Stalled,
}

impl LinkError {
    /// A short stable reason for logs and failure answers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Tls(_) => "tls_handshake_failed",
            Self::Hello(_) => "hello_refused",
            Self::Identity(_) => "certificate_name_mismatch",
            Self::Frame(_) => "frame_error",
            Self::PeerDead(_) => "keepalive_timeout",
            Self::Closed => "connection_closed",
            Self::Io(_) => "io_error",
            Self::Timeout => "hello_timeout",
            Self::Stalled => "write_timeout",
        }
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            Self::Hello(e) => write!(f, "hello refused: {e}"),
            Self::Identity(e) => write!(f, "peer identity: {e}"),
            Self::Frame(e) => write!(f, "frame error: {e}"),
            Self::PeerDead(d) => write!(f, "no pong for {} ms: peer dead", d.as_millis()),
            Self::Closed => f.write_str("connection closed by the peer"),
            Self::Io(e) => write!(f, "socket error: {e}"),
            Self::Timeout => f.write_str("TLS handshake and hello not done in time"),
            Self::Stalled => write!(
                f,
                "peer stopped reading: a write waited {} s",
                WRITE_TIMEOUT.as_secs()
            ),
        }
    }
}

/// An established link: TLS up, hellos exchanged and checked against the certificate.
pub struct Link {
    sock: TcpStream,
    tls: Connection,
    decoder: FrameDecoder,
    keepalive: Keepalive,
    max_frame_bytes: u32,
    peer_name: String,
    peer_addr: SocketAddr,
    /// Bytes that came with the peer's hello wait in the decoder: the next
    /// [`Link::wait_readable`] returns at once instead of waiting for the socket.
    unread: bool,
}

impl Link {
    /// Runs the TLS handshake and the hello exchange on a connected socket. `expected` is the
    /// role the peer must have; `check` then decides whether its certificate may speak for
    /// the node its hello named in that role.
    pub fn establish(
        sock: TcpStream,
        tls: Connection,
        ours: &Hello,
        expected: Role,
        keepalive: KeepaliveConfig,
        check: PeerCheck<'_>,
    ) -> Result<Link, LinkError> {
        let deadline = Instant::now() + HELLO_TIMEOUT;
        let peer_addr = sock.peer_addr().map_err(LinkError::Io)?;
        let _ = sock.set_nodelay(true);
        sock.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(LinkError::Io)?;
        let mut link = Link {
            sock,
            tls,
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
            keepalive: Keepalive::new(keepalive, Instant::now()),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            peer_name: String::new(),
            peer_addr,
            unread: false,
        };
        // One read at a time, each bounded by what is left of the deadline (rustls's
        // complete_io reads until the handshake ends, so a peer that trickles a byte now and
        // then would hold the connection, and a thread, for as long as it likes).
        link.flush()?;
        while link.tls.is_handshaking() {
            link.set_read_timeout(deadline)?;
            link.read_tls_once()?;
        }
        let mut hello_bytes = Vec::new();
        ours.encode(&mut hello_bytes);
        link.write_plain(&hello_bytes)?;
        let mut hello = HelloDecoder::new();
        let mut buf = [0u8; 4096];
        let peer_hello = 'outer: loop {
            // Plaintext may already sit in rustls from the handshake's last flight.
            loop {
                let n = match link.tls.reader().read(&mut buf) {
                    Ok(0) => return Err(LinkError::Closed),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(LinkError::Io(e)),
                };
                match hello.feed(&buf[..n]) {
                    Ok(HelloProgress::NeedMore) => {}
                    Ok(HelloProgress::Done { hello, consumed }) => {
                        // A peer may send its first request with its hello (in one read, or
                        // in plaintext rustls still holds): keep it all for the first poll.
                        link.decoder.feed(&buf[consumed..n]);
                        link.unread = consumed < n;
                        loop {
                            match link.tls.reader().read(&mut buf) {
                                Ok(0) => break,
                                Ok(more) => {
                                    link.decoder.feed(&buf[..more]);
                                    link.unread = true;
                                }
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(LinkError::Io(e)),
                            }
                        }
                        break 'outer hello;
                    }
                    Err(e) => return Err(LinkError::Hello(format!("{}: {e}", e.reason()))),
                }
            }
            link.set_read_timeout(deadline)?;
            link.read_tls_once()?;
        };
        let negotiated = ours
            .negotiate(&peer_hello, expected)
            .map_err(|e| LinkError::Hello(format!("{}: {e}", e.reason())))?;
        let name = negotiated.peer_name.as_str();
        check(link.tls.peer_certificates().unwrap_or_default(), name, expected)
            .map_err(LinkError::Identity)?;
        link.peer_name = name.to_string();
        link.keepalive = Keepalive::new(keepalive, Instant::now());
        Ok(link)
    }

    /// The peer's node name (hello and certificate agree).
    pub fn peer_name(&self) -> &str {
        &self.peer_name
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Sends one frame (already encoded, length prefix included).
    pub fn send(&mut self, wire: &[u8]) -> Result<(), LinkError> {
        self.write_plain(wire)
    }

    /// The bound used when encoding frames for this link.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Waits up to `wait` for bytes, answers pings, tracks pongs and sends our pings; returns
    /// the requests, responses and events that arrived. Called in a loop by the link's thread.
    pub fn poll(&mut self, wait: Duration) -> Result<Vec<Frame>, LinkError> {
        self.run_keepalive()?;
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(LinkError::Io)?;
        self.read_tls_once()?;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.tls.reader().read(&mut buf) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
        let mut frames = Vec::new();
        while let Some(frame) = self
            .decoder
            .next_frame()
            .map_err(|e| LinkError::Frame(format!("{}: {e}", e.reason())))?
        {
            match frame.kind {
                FrameKind::Ping => {
                    let mut out = Vec::new();
                    frame::encode_frame(&Frame::pong(frame.request_id), self.max_frame_bytes, &mut out)
                        .map_err(|e| LinkError::Frame(e.to_string()))?;
                    self.write_plain(&out)?;
                }
                FrameKind::Pong => {
                    // One for no outstanding ping is ignored (PROTOCOL.md §5).
                    self.keepalive.on_pong(frame.request_id, Instant::now());
                }
                _ => frames.push(frame),
            }
        }
        self.run_keepalive()?;
        Ok(frames)
    }

    /// A connected pair of non-blocking sockets for [`Link::wait_readable`]'s `wake`: other
    /// threads write a byte to the first to wake the thread that waits on the second.
    pub fn wake_pair() -> io::Result<(std::os::unix::net::UnixStream, std::os::unix::net::UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        a.set_nonblocking(true)?;
        b.set_nonblocking(true)?;
        Ok((a, b))
    }

    /// Waits until the socket has bytes (`true`), `wake` has bytes (`false`, drained), or
    /// `max` passes (`false`), whichever comes first; keepalive runs either way. With
    /// `poll(2)` on both, a request queued for this link goes out at once instead of after a
    /// read timeout (which the kernel rounds up to scheduler ticks: 5 ms became 12 ms here).
    pub fn wait_readable(
        &mut self,
        wake: &std::os::unix::net::UnixStream,
        max: Duration,
    ) -> Result<bool, LinkError> {
        use std::os::fd::AsRawFd;
        self.run_keepalive()?;
        if std::mem::take(&mut self.unread) {
            return Ok(true);
        }
        let mut fds = [
            libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ms = libc::c_int::try_from(max.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call, and both
        // descriptors are open (owned by `self.sock` and `wake`).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(LinkError::Io(e));
            }
        }
        let ready = |f: &libc::pollfd| f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
        let (sock_ready, woken) = (ready(&fds[0]), ready(&fds[1]));
        if woken {
            let mut drain = [0u8; 64];
            while matches!((&*wake).read(&mut drain), Ok(n) if n > 0) {}
        }
        self.run_keepalive()?;
        Ok(sock_ready)
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
                    frame::encode_frame(&Frame::ping(seq), self.max_frame_bytes, &mut out)
                        .map_err(|e| LinkError::Frame(e.to_string()))?;
                    self.write_plain(&out)?;
                }
                KeepaliveAction::Wait { .. } => return Ok(()),
                KeepaliveAction::PeerDead { unanswered_for } => {
                    return Err(LinkError::PeerDead(unanswered_for))
                }
            }
        }
    }

    fn set_read_timeout(&self, deadline: Instant) -> Result<(), LinkError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LinkError::Timeout);
        }
        self.sock.set_read_timeout(Some(left)).map_err(LinkError::Io)
    }

    /// One read from the socket into rustls (a timeout is not an error).
    fn read_tls_once(&mut self) -> Result<(), LinkError> {
        match self.tls.read_tls(&mut self.sock) {
            Ok(0) => return Err(LinkError::Closed),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(LinkError::Io(e)),
        }
        if let Err(e) = self.tls.process_new_packets() {
            let _ = self.flush();
            return Err(LinkError::Tls(e.to_string()));
        }
        // A key update or similar may need an answer.
        self.flush()
    }

    fn write_plain(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.tls.writer().write_all(bytes).map_err(LinkError::Io)?;
        self.flush()
    }

    fn flush(&mut self) -> Result<(), LinkError> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(LinkError::Stalled),
                Err(e) => return Err(LinkError::Io(e)),
            }
        }
        Ok(())
    }
}

/// Our hello for role `role` under node name `name`.
pub fn our_hello(role: Role, name: &str) -> Result<Hello, String> {
    NodeName::new(name)
        .map(|n| Hello::new(role, n))
        .map_err(|e| format!("node name {name:?}: {e}"))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}
