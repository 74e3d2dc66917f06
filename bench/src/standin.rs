//! Stand-in session hosts: echo, sink (and source) and an RDP-like responder.
//!
//! Owns the listener and the connections of one stand-in, served by a single mio event loop
//! thread with no per-connection buffer while a connection is idle (a shared 64 KiB read
//! buffer; a connection allocates only for bytes it could not write yet), so one stand-in holds
//! thousands of connections cheaply. The protocol cores live in `standin/sink.rs`,
//! `standin/rdp_host.rs` and `wire/`; this file only moves bytes.
//!
//! # What each kind speaks
//!
//! **Echo** writes back every byte it reads, in order; on the client's EOF it finishes
//! writing and closes.
//!
//! **Sink** reads and discards, counting bytes ([`StandInHandle::bytes_received`]). If the
//! connection's first 24 bytes are a *source request* it also streams bytes back:
//!
//! ```text
//! source request (client -> sink), 24 bytes, big endian:
//!   "GHSRC\0\0\x01" (8) | down_bytes u64 | flags u64 (bit 0: report the upstream count)
//! the sink then writes down_bytes filler bytes at once, counts what the client sends after
//! the header, and on the client's EOF (after the down bytes) writes the count as a u64
//! (big endian, 8 bytes) if asked, then closes.
//! ```
//!
//! Any other first bytes make a plain sink. The `throughput` scenario uses this to check that
//! what arrived equals what was sent, in both directions, through the proxy under test.
//!
//! **Rdp** starts like a real RDP host: it reads a TPKT/X.224 Connection Request (at most
//! 1,024 bytes; bad TPKT version, length, code or class closes the connection) and answers a
//! Connection Confirm carrying an RDP_NEG_RSP that selects `PROTOCOL_RDP` (0), or a bare
//! confirm when the request had no RDP_NEG_REQ (MS-RDPBCGR 2.2.1.1-2.2.1.2). Then frames:
//!
//! ```text
//! input event (client -> host), `len` bytes, big endian:
//!   "GHIE" | len u32 (24..=4096, header included) | seq u64 | reply_len u32 | flags u32
//!   | len-24 filler bytes
//! screen update (host -> client), reply_len bytes:
//!   "GHSU" | len u32 (= reply_len, 16..=1 MiB) | seq u64 | len-16 filler bytes
//! ```
//!
//! Every event with `reply_len > 0` is answered by one update carrying its `seq`, in the order
//! the events arrived; `reply_len == 0` asks for nothing. A burst (a window switch, 60 KB in
//! the office profile) is an event with a large `reply_len` and flag bit 0 set; the host
//! treats it like any event, so the client can time it too. The client measures latency from
//! the intended send time of an event to the last byte of its update. A malformed frame
//! closes the connection.
//!
//! An Rdp stand-in may terminate TLS ([`StandIn::with_tls`]): the same bytes then travel
//! inside TLS, as an RDP host with TLS security would carry them behind a passthrough
//! balancer. rustls only frames and encrypts here; the conversation is unchanged.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::{ServerConfig, ServerConnection};
use socket2::{Domain, Socket, Type};

mod rdp_host;
mod sink;

pub use rdp_host::{Outgoing, RdpHost};
pub use sink::{SinkConn, WriteWork};

/// Which behaviour a stand-in has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Writes back what it reads.
    Echo,
    /// Reads and discards; streams bytes back after a source request.
    Sink,
    /// Answers an X.224 Connection Request, then input events with screen updates.
    Rdp,
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "echo" => Ok(Kind::Echo),
            "sink" => Ok(Kind::Sink),
            "rdp" => Ok(Kind::Rdp),
            other => Err(format!(
                "unknown stand-in kind {other:?} (expected echo, sink or rdp)"
            )),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Echo => "echo",
            Kind::Sink => "sink",
            Kind::Rdp => "rdp",
        })
    }
}

/// A bound stand-in that is not serving yet.
pub struct StandIn {
    kind: Kind,
    listener: TcpListener,
    addr: SocketAddr,
    stats: Arc<Stats>,
    tls: Option<Arc<ServerConfig>>,
}

/// A stand-in serving on its own thread. Dropping it stops the thread without waiting;
/// [`StandInHandle::stop`] waits for it.
pub struct StandInHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    bytes_received: AtomicU64,
}

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SCRATCH_LEN: usize = 64 * 1024;
/// Updates queued per Rdp connection before the host stops reading (backpressure).
const MAX_QUEUED_UPDATES: usize = 4096;
/// Filler written for updates and source streams.
static PATTERN: [u8; SCRATCH_LEN] = [0xA5; SCRATCH_LEN];

impl StandIn {
    /// Binds now (so the caller knows the port), serves on its own thread(s) after `spawn`.
    pub fn bind(kind: Kind, addr: SocketAddr) -> io::Result<StandIn> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let std_listener: std::net::TcpListener = socket.into();
        let addr = std_listener.local_addr()?;
        Ok(StandIn {
            kind,
            listener: TcpListener::from_std(std_listener),
            addr,
            stats: Arc::new(Stats::default()),
            tls: None,
        })
    }

    /// Terminates TLS with `config` on every connection (Rdp stand-ins only: the other kinds
    /// count raw bytes, which TLS would change).
    pub fn with_tls(mut self, config: Arc<ServerConfig>) -> Result<StandIn, String> {
        if self.kind != Kind::Rdp {
            return Err(format!(
                "a {} stand-in cannot terminate TLS (rdp only)",
                self.kind
            ));
        }
        self.tls = Some(config);
        Ok(self)
    }

    /// The address it listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves in the background on one event-loop thread.
    pub fn spawn(self) -> StandInHandle {
        let poll = Poll::new().expect("epoll_create1 fails only when out of fds or memory");
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).expect("eventfd fails only when out of fds"));
        let stop = Arc::new(AtomicBool::new(false));
        let addr = self.addr;
        let stats = Arc::clone(&self.stats);
        let thread_stop = Arc::clone(&stop);
        let kind = self.kind;
        let thread = std::thread::Builder::new()
            .name(format!("standin-{kind}"))
            .spawn(move || {
                if let Err(e) = self.serve(poll, &thread_stop) {
                    eprintln!("stand-in {kind} on {addr}: {e}");
                }
            })
            .expect("spawning a thread fails only when out of memory");
        StandInHandle {
            addr,
            stats,
            stop,
            waker,
            thread: Some(thread),
        }
    }

    /// Serves on the current thread until the process is killed.
    pub fn run(self) -> io::Result<()> {
        let poll = Poll::new()?;
        self.serve(poll, &AtomicBool::new(false))
    }

    fn serve(mut self, mut poll: Poll, stop: &AtomicBool) -> io::Result<()> {
        poll.registry()
            .register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let mut server = Server {
            kind: self.kind,
            tls: self.tls.take(),
            conns: Vec::new(),
            free: Vec::new(),
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
            stats: self.stats,
        };
        let mut events = Events::with_capacity(1024);
        let mut accept_paused = false;
        while !stop.load(Ordering::Relaxed) {
            // While accepting is paused (out of fds) retry every 100 ms instead of spinning.
            let timeout = accept_paused.then(|| Duration::from_millis(100));
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if accept_paused || events.iter().any(|e| e.token() == LISTENER) {
                accept_paused = server.accept_all(&self.listener, &poll)?;
            }
            for event in events.iter() {
                let token = event.token();
                if token == LISTENER || token == WAKER {
                    continue;
                }
                server.drive(token.0, &poll);
            }
        }
        Ok(())
    }
}

impl StandInHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// Payload bytes received so far (Sink: counted, headers excluded; Echo: echoed; Rdp: 0).
    pub fn bytes_received(&self) -> u64 {
        self.stats.bytes_received.load(Ordering::Relaxed)
    }

    /// Stops serving and waits for the thread; open connections are closed.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.waker.wake();
    }
}

impl Drop for StandInHandle {
    fn drop(&mut self) {
        self.signal_stop();
    }
}

struct Server {
    kind: Kind,
    tls: Option<Arc<ServerConfig>>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    scratch: Box<[u8]>,
    stats: Arc<Stats>,
}

struct Conn {
    stream: TcpStream,
    session: Session,
}

/// Per-kind connection state.
enum Session {
    Echo(Echo),
    Sink(SinkConn),
    Rdp {
        host: RdpHost,
        out: VecDeque<Outgoing>,
        read_closed: bool,
    },
    /// Rdp inside TLS (boxed: a rustls connection is large).
    RdpTls {
        host: RdpHost,
        out: VecDeque<Outgoing>,
        read_closed: bool,
        tls: Box<ServerConnection>,
    },
}

/// Echo state: bytes read but not yet written back (empty while idle).
struct Echo {
    pending: Vec<u8>,
    read_closed: bool,
}

/// What `drive` decided.
enum Step {
    Wait,
    Close,
}

impl Server {
    /// Accepts until WouldBlock; returns true when accepting must pause (out of fds).
    fn accept_all(&mut self, listener: &TcpListener, poll: &Poll) -> io::Result<bool> {
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let idx = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    poll.registry().register(
                        &mut stream,
                        Token(idx),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let session = match self.kind {
                        Kind::Echo => Session::Echo(Echo {
                            pending: Vec::new(),
                            read_closed: false,
                        }),
                        Kind::Sink => Session::Sink(SinkConn::default()),
                        Kind::Rdp => match &self.tls {
                            None => Session::Rdp {
                                host: RdpHost::default(),
                                out: VecDeque::new(),
                                read_closed: false,
                            },
                            Some(config) => match ServerConnection::new(config.clone()) {
                                Ok(tls) => Session::RdpTls {
                                    host: RdpHost::default(),
                                    out: VecDeque::new(),
                                    read_closed: false,
                                    tls: Box::new(tls),
                                },
                                Err(e) => {
                                    eprintln!("stand-in: TLS session: {e}");
                                    let _ = poll.registry().deregister(&mut stream);
                                    self.free.push(idx);
                                    continue;
                                }
                            },
                        },
                    };
                    self.conns[idx] = Some(Conn { stream, session });
                    self.stats.connections.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    eprintln!("stand-in: out of file descriptors, accepting paused: {e}");
                    return Ok(true);
                }
                // ECONNABORTED and the like concern one connection only.
                Err(_) => {}
            }
        }
    }

    fn drive(&mut self, idx: usize, poll: &Poll) {
        let Some(Some(conn)) = self.conns.get_mut(idx) else {
            return;
        };
        let step = match &mut conn.session {
            Session::Echo(echo) => drive_echo(&mut conn.stream, echo, &mut self.scratch, &self.stats),
            Session::Sink(sink) => drive_sink(&mut conn.stream, sink, &mut self.scratch, &self.stats),
            Session::Rdp {
                host,
                out,
                read_closed,
            } => drive_rdp(&mut conn.stream, host, out, read_closed, &mut self.scratch),
            Session::RdpTls {
                host,
                out,
                read_closed,
                tls,
            } => drive_rdp_tls(&mut conn.stream, tls, host, out, read_closed, &mut self.scratch),
        };
        if let Step::Close = step {
            if let Some(mut conn) = self.conns[idx].take() {
                let _ = poll.registry().deregister(&mut conn.stream);
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
            self.free.push(idx);
        }
    }
}

/// Result of one non-blocking read.
enum ReadOutcome {
    Data(usize),
    Eof,
    Blocked,
    Failed,
}

fn read_once(stream: &mut TcpStream, buf: &mut [u8]) -> ReadOutcome {
    loop {
        return match stream.read(buf) {
            Ok(0) => ReadOutcome::Eof,
            Ok(n) => ReadOutcome::Data(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => ReadOutcome::Blocked,
            Err(_) => ReadOutcome::Failed,
        };
    }
}

/// Writes as much of `buf` as the socket takes; `Err` on a dead socket.
fn write_some(stream: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        return match stream.write(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        };
    }
}

fn drive_echo(stream: &mut TcpStream, echo: &mut Echo, scratch: &mut [u8], stats: &Stats) -> Step {
    loop {
        if !echo.pending.is_empty() {
            let Ok(n) = write_some(stream, &echo.pending) else {
                return Step::Close;
            };
            echo.pending.drain(..n);
            if !echo.pending.is_empty() {
                return Step::Wait;
            }
            // Give the memory back: an idle echo connection holds no buffer.
            echo.pending = Vec::new();
        }
        if echo.read_closed {
            return Step::Close;
        }
        match read_once(stream, scratch) {
            ReadOutcome::Data(n) => {
                stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                let Ok(w) = write_some(stream, &scratch[..n]) else {
                    return Step::Close;
                };
                if w < n {
                    echo.pending.extend_from_slice(&scratch[w..n]);
                }
            }
            ReadOutcome::Eof => echo.read_closed = true,
            ReadOutcome::Blocked => return Step::Wait,
            ReadOutcome::Failed => return Step::Close,
        }
    }
}

fn drive_sink(stream: &mut TcpStream, sink: &mut SinkConn, scratch: &mut [u8], stats: &Stats) -> Step {
    loop {
        let mut progressed = false;
        let written = match sink.next_write() {
            WriteWork::Pattern(left) => {
                let n = left.min(PATTERN.len() as u64) as usize;
                write_some(stream, &PATTERN[..n])
            }
            WriteWork::Literal(bytes) => write_some(stream, bytes),
            WriteWork::Idle => Ok(0),
            WriteWork::Finished => return Step::Close,
        };
        match written {
            Ok(0) => {}
            Ok(n) => {
                sink.wrote(n);
                progressed = true;
            }
            Err(_) => return Step::Close,
        }
        if !sink.read_closed() {
            match read_once(stream, scratch) {
                ReadOutcome::Data(n) => {
                    let counted = sink.on_bytes(&scratch[..n]);
                    stats.bytes_received.fetch_add(counted, Ordering::Relaxed);
                    progressed = true;
                }
                ReadOutcome::Eof => {
                    if sink.on_eof() {
                        return Step::Close;
                    }
                    progressed = true;
                }
                ReadOutcome::Blocked => {}
                ReadOutcome::Failed => return Step::Close,
            }
        }
        if !progressed {
            return Step::Wait;
        }
    }
}

fn drive_rdp(
    stream: &mut TcpStream,
    host: &mut RdpHost,
    out: &mut VecDeque<Outgoing>,
    read_closed: &mut bool,
    scratch: &mut [u8],
) -> Step {
    loop {
        match flush_outgoing(&mut |b| write_some(stream, b), out) {
            Ok(true) => {}
            Ok(false) => return Step::Wait,
            Err(_) => return Step::Close,
        }
        if *read_closed {
            return Step::Close;
        }
        if out.len() >= MAX_QUEUED_UPDATES {
            return Step::Wait;
        }
        match read_once(stream, scratch) {
            ReadOutcome::Data(n) => {
                if host.on_bytes(&scratch[..n], out).is_err() {
                    return Step::Close;
                }
            }
            ReadOutcome::Eof => *read_closed = true,
            ReadOutcome::Blocked => return Step::Wait,
            ReadOutcome::Failed => return Step::Close,
        }
    }
}

/// An Rdp connection inside TLS: as [`drive_rdp`], with rustls between the socket and the
/// host core. Plaintext goes into rustls only as far as its buffer limit takes it, and the
/// host stops reading while records wait for the socket (the same backpressure as plain).
fn drive_rdp_tls(
    stream: &mut TcpStream,
    tls: &mut ServerConnection,
    host: &mut RdpHost,
    out: &mut VecDeque<Outgoing>,
    read_closed: &mut bool,
    scratch: &mut [u8],
) -> Step {
    loop {
        // Encrypt queued frames (once the handshake is done), then send the records.
        let mut queue_empty = out.is_empty();
        if !tls.is_handshaking() {
            match flush_outgoing(&mut |b| tls.writer().write(b), out) {
                Ok(empty) => queue_empty = empty,
                Err(_) => return Step::Close,
            }
        }
        while tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Wait,
                Err(_) => return Step::Close,
            }
        }
        if *read_closed && queue_empty {
            return Step::Close;
        }
        if !queue_empty && !tls.is_handshaking() {
            // rustls took part of the queue and the socket took every record: go on filling.
            continue;
        }
        if out.len() >= MAX_QUEUED_UPDATES || *read_closed {
            return Step::Wait;
        }
        match tls.read_tls(stream) {
            Ok(0) => *read_closed = true,
            Ok(_) => {
                if tls.process_new_packets().is_err() {
                    // Send the alert rustls queued, best effort.
                    let _ = tls.write_tls(stream);
                    return Step::Close;
                }
                loop {
                    match tls.reader().read(scratch) {
                        Ok(0) => {
                            *read_closed = true;
                            break;
                        }
                        Ok(n) => {
                            if host.on_bytes(&scratch[..n], out).is_err() {
                                return Step::Close;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => return Step::Close,
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if tls.wants_write() || (!out.is_empty() && !tls.is_handshaking()) {
                    continue;
                }
                return Step::Wait;
            }
            Err(_) => return Step::Close,
        }
    }
}

/// Writes queued frames through `write` (the socket, or rustls's plaintext writer);
/// `Ok(true)` when the queue is empty, `Ok(false)` when `write` took nothing more.
fn flush_outgoing(
    write: &mut dyn FnMut(&[u8]) -> io::Result<usize>,
    out: &mut VecDeque<Outgoing>,
) -> io::Result<bool> {
    while let Some(front) = out.front_mut() {
        let done = match front {
            Outgoing::Bytes { buf, sent } => {
                let n = write(&buf[*sent..])?;
                *sent += n;
                if n == 0 {
                    return Ok(false);
                }
                *sent == buf.len()
            }
            Outgoing::Update {
                header,
                sent,
                payload_left,
            } => {
                let n = if *sent < header.len() {
                    let n = write(&header[*sent..])?;
                    *sent += n;
                    n
                } else {
                    let chunk = (*payload_left as usize).min(PATTERN.len());
                    let n = write(&PATTERN[..chunk])?;
                    *payload_left -= n as u32;
                    n
                };
                if n == 0 {
                    return Ok(false);
                }
                *sent == header.len() && *payload_left == 0
            }
        };
        if done {
            out.pop_front();
        }
    }
    if out.capacity() > 16 {
        out.shrink_to_fit();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;
    use crate::wire::rdp::{
        connection_request, parse_connection_confirm, InputEvent, UpdateHeader, UPDATE_HEADER_LEN,
    };
    use crate::wire::source::SourceRequest;

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().expect("literal address")
    }

    #[test]
    fn kind_parses_and_prints() {
        for k in [Kind::Echo, Kind::Sink, Kind::Rdp] {
            assert_eq!(k.to_string().parse::<Kind>(), Ok(k));
        }
        assert!("ftp".parse::<Kind>().is_err());
    }

    #[test]
    fn echo_round_trip_and_counts() {
        let h = StandIn::bind(Kind::Echo, loopback()).unwrap().spawn();
        let mut c = TcpStream::connect(h.local_addr()).unwrap();
        let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut writer = c.try_clone().unwrap();
        let sent = msg.clone();
        let t = std::thread::spawn(move || {
            writer.write_all(&sent).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        t.join().unwrap();
        assert_eq!(back, msg);
        assert_eq!(h.connections(), 1);
        h.stop();
    }

    #[test]
    fn sink_source_reports_both_directions() {
        let h = StandIn::bind(Kind::Sink, loopback()).unwrap().spawn();
        let mut c = TcpStream::connect(h.local_addr()).unwrap();
        let req = SourceRequest {
            down_bytes: 300_000,
            report_up: true,
        };
        c.write_all(&req.encode()).unwrap();
        c.write_all(&[1u8; 12_345]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 300_008);
        assert_eq!(back[300_000..], 12_345u64.to_be_bytes());
        h.stop();
    }

    /// Sends a Connection Request (asking for `protocols`) and checks
    /// the Confirm, then sends an input event per (seq, reply length) and checks that every
    /// non-empty reply comes back in order, whole, with the stand-in's filler bytes.
    fn exchange(c: &mut (impl Read + Write), protocols: u32, events: &[(u64, u32)]) {
        c.write_all(&connection_request("bench", protocols)).unwrap();
        let mut cc = [0u8; 19];
        c.read_exact(&mut cc).unwrap();
        assert_eq!(parse_connection_confirm(&cc), Ok(Some((19, Some(0)))));
        let mut frames = Vec::new();
        for &(seq, reply_len) in events {
            InputEvent {
                len: 80,
                seq,
                reply_len,
                flags: 0,
            }
            .encode(&mut frames);
        }
        c.write_all(&frames).unwrap();
        for &(seq, len) in events.iter().filter(|(_, len)| *len > 0) {
            let mut hdr = [0u8; UPDATE_HEADER_LEN];
            c.read_exact(&mut hdr).unwrap();
            assert_eq!(UpdateHeader::parse(&hdr), Ok(UpdateHeader { len, seq }));
            let mut body = vec![0u8; len as usize - UPDATE_HEADER_LEN];
            c.read_exact(&mut body).unwrap();
            assert!(body.iter().all(|&b| b == 0xA5));
        }
    }

    #[test]
    fn rdp_confirms_and_answers_in_order() {
        let h = StandIn::bind(Kind::Rdp, loopback()).unwrap().spawn();
        let mut c = TcpStream::connect(h.local_addr()).unwrap();
        exchange(&mut c, 3, &[(1, 200), (2, 0), (3, 61_440)]);
        // A malformed frame closes the connection.
        c.write_all(b"garbage-garbage-garbage-").unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        assert!(rest.is_empty());
        h.stop();
    }

    fn tls_pair() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let (server, pem) = crate::tls::self_signed_server("standin.test").unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let client =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        (server, Arc::new(client))
    }

    #[test]
    fn rdp_over_tls_confirms_and_answers_bursts_in_order() {
        let (server, client) = tls_pair();
        assert!(StandIn::bind(Kind::Echo, loopback())
            .unwrap()
            .with_tls(server.clone())
            .is_err());
        let h = StandIn::bind(Kind::Rdp, loopback())
            .unwrap()
            .with_tls(server)
            .unwrap()
            .spawn();
        let sock = TcpStream::connect(h.local_addr()).unwrap();
        let name = rustls::pki_types::ServerName::try_from("standin.test").unwrap();
        let conn = rustls::ClientConnection::new(client, name).unwrap();
        let mut c = rustls::StreamOwned::new(conn, sock);
        // Two bursts larger than rustls's 64 KiB send buffer, then a small update.
        exchange(&mut c, 0, &[(1, 200_000), (2, 150_000), (3, 300)]);
        assert_eq!(h.connections(), 1);
        // Plain bytes on a TLS stand-in are no handshake: the connection closes.
        let mut plain = TcpStream::connect(h.local_addr()).unwrap();
        plain.write_all(&connection_request("bench", 0)).unwrap();
        let mut rest = Vec::new();
        let _ = plain.read_to_end(&mut rest);
        assert!(parse_connection_confirm(&rest).map_or(true, |c| c.is_none()));
        h.stop();
    }

    #[test]
    fn holds_many_idle_connections() {
        let h = StandIn::bind(Kind::Echo, loopback()).unwrap().spawn();
        let mut conns: Vec<TcpStream> = (0..500)
            .map(|_| TcpStream::connect(h.local_addr()).unwrap())
            .collect();
        for c in conns.iter_mut() {
            c.write_all(b"ping").unwrap();
        }
        for c in conns.iter_mut() {
            let mut b = [0u8; 4];
            c.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"ping");
        }
        assert_eq!(h.connections(), 500);
        h.stop();
    }
}
