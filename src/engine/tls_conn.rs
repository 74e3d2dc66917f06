//! The TLS connections of a session, holding memory only while bytes wait in them.
//!
//! rustls' buffered `ServerConnection` keeps a 4 KiB receive buffer and two queues for the
//! connection's whole life, idle or not: about half of what an idle TLS tunnel cost
//! (BENCHMARKS.md, "idle TLS tunnel"). The client side of a session (offload, the gateway
//! front) therefore runs rustls' unbuffered server inside [`LeanServer`]: the TLS bytes read,
//! the records to send and the decrypted bytes not yet taken wait in buffers on loan from
//! the worker thread's pool ([`Waiting`]), given back as soon as they are empty. The backend
//! side of re-encryption keeps rustls' buffered client.
//! [`TlsConn`] gives both the same small surface, shaped like the buffered API the tunnel
//! and the front were written against.
//!
//! A TLS 1.3 server sends its session tickets once the client's Finished arrives, a flight of
//! their own: one more segment, and one more wakeup of a client that is waiting for its first
//! answer. [`LeanServer::hold_tickets`] keeps them back so that they leave with the first
//! application bytes for the client (or close_notify), in the same write, and at the latest
//! at a deadline the session's timer enforces ([`LeanServer::held_until`]).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, WriteTraffic};
use rustls::{ClientConnection, ServerConfig};

use super::waiting::Waiting;

/// Largest TLS record on the wire: a 5-byte header and 2^14 + 256 bytes (RFC 8446 §5.2).
const MAX_RECORD: usize = 5 + 16_384 + 256;
/// Most TLS bytes held before rustls consumes them: a handshake message may span records up
/// to 64 KiB (the bound rustls' buffered connection applies too), plus one record.
const MAX_INCOMING: usize = 0x1_0000 + MAX_RECORD;
/// Room for one record's header, content type, padding and tag (TLS 1.2 GCM needs 29).
const RECORD_OVERHEAD: usize = 64;
/// Longest that TLS 1.3 session tickets wait for application bytes to travel with. A backend
/// answers a client's first request well within it (an RDP Connection Confirm, an HTTP
/// response); a client gains nothing from a ticket before it has an answer, and a silent
/// backend delays the tickets by this much, not forever.
pub const TICKET_HOLD: Duration = Duration::from_millis(20);

/// A TLS server connection with rustls' unbuffered API and buffers that exist only while
/// they hold bytes.
pub struct LeanServer {
    conn: UnbufferedServerConnection,
    /// TLS bytes read from the peer that rustls has not consumed yet.
    incoming: Waiting,
    /// TLS bytes for the peer, not yet written.
    outgoing: Waiting,
    /// Decrypted bytes not yet taken.
    plaintext: Waiting,
    /// The last read filled all the room it had: the socket likely holds more and is read
    /// again at once, so a partial record left over stays where it is.
    more_coming: bool,
    /// The socket ended (a read returned 0).
    eof: bool,
    /// The peer sent close_notify.
    peer_closed: bool,
    /// The connection failed; every later call says so (boxed: rare, and every TLS session
    /// carries the field).
    failed: Option<Box<rustls::Error>>,
    /// Until when the records in `outgoing` (TLS 1.3 session tickets) are held back.
    held_until: Option<Instant>,
}

impl LeanServer {
    /// A server connection that starts from `first`, TLS bytes already read (the ClientHello
    /// the listener sniffed).
    pub fn new(config: Arc<ServerConfig>, first: &[u8]) -> Result<LeanServer, rustls::Error> {
        let mut incoming = Waiting::default();
        incoming.extend(first);
        Ok(LeanServer {
            conn: UnbufferedServerConnection::new(config)?,
            incoming,
            outgoing: Waiting::default(),
            plaintext: Waiting::default(),
            more_coming: false,
            eof: false,
            peer_closed: false,
            failed: None,
            held_until: None,
        })
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether TLS bytes wait to be written (held tickets do not count).
    pub fn wants_write(&self) -> bool {
        self.held_until.is_none() && !self.outgoing.is_empty()
    }

    /// Called when the handshake has just completed: holds back what it left to send (TLS
    /// 1.3 session tickets) until application bytes or close_notify follow, or `now` +
    /// [`TICKET_HOLD`]. A TLS 1.2 handshake ends with the server's own Finished, which never
    /// waits. Returns whether anything is held.
    pub fn hold_tickets(&mut self, now: Instant) -> bool {
        let tls13 = self.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        if tls13 && !self.is_handshaking() && !self.outgoing.is_empty() {
            self.held_until = Some(now + TICKET_HOLD);
            // Held for up to TICKET_HOLD: a few hundred bytes in a buffer of their own, not
            // a pooled one (a handshake storm holds many at once).
            self.outgoing.settle();
        }
        self.held_until.is_some()
    }

    /// When held tickets must go at the latest (`None`: nothing is held).
    pub fn held_until(&self) -> Option<Instant> {
        self.held_until
    }

    /// Lets held tickets go with the next `write_tls`.
    pub fn release_held(&mut self) {
        self.held_until = None;
    }

    /// Whether more TLS bytes should be read: nothing decrypted is waiting and the peer's
    /// stream goes on.
    pub fn wants_read(&self) -> bool {
        self.plaintext.is_empty() && !self.peer_closed && !self.eof && self.failed.is_none()
    }

    /// Bytes held in buffers now (0 for an idle connection).
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity() + self.plaintext.capacity()
    }

    /// Writes waiting TLS bytes to `w` (one write call).
    pub fn write_tls(&mut self, w: &mut dyn Write) -> io::Result<usize> {
        let n = w.write(self.outgoing.bytes())?;
        self.outgoing.consume(n);
        Ok(n)
    }

    /// Reads TLS bytes from `r` (one read call, at most one record's worth); 0 is the end of
    /// the peer's stream. Refuses when a message would pass `MAX_INCOMING` unprocessed.
    pub fn read_tls(&mut self, r: &mut dyn Read) -> io::Result<usize> {
        let len = self.incoming.len();
        if len >= MAX_INCOMING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message larger than 64 KiB",
            ));
        }
        let room = MAX_RECORD.min(MAX_INCOMING - len);
        // Read straight into the pooled buffer, where process_new_packets decrypts them; a
        // read that brought nothing settles it (gives it back, or moves the start of a
        // record out of it).
        let got = r.read(&mut self.incoming.room(room)[..room]);
        self.more_coming = matches!(got, Ok(n) if n == room);
        match got {
            Ok(n) if n > 0 => self.incoming.commit(n),
            Ok(_) => {
                self.eof = true;
                self.incoming.settle();
            }
            Err(_) => self.incoming.settle(),
        }
        got
    }

    /// Processes the TLS bytes read: handshake messages (answers queue for `write_tls`),
    /// application data (for `read_plaintext`), alerts. An error is final; the alert rustls
    /// queued for it is left for `write_tls`.
    pub fn process_new_packets(&mut self) -> Result<(), rustls::Error> {
        if let Some(e) = &self.failed {
            return Err((**e).clone());
        }
        let outcome = loop {
            let status = self.conn.process_tls_records(self.incoming.bytes_mut());
            let discard = status.discard;
            let outcome = match status.state {
                Ok(state) => absorb(
                    state,
                    &mut self.plaintext,
                    &mut self.outgoing,
                    &mut self.peer_closed,
                ),
                Err(e) => Step::Fail(e),
            };
            self.incoming.consume(discard);
            match outcome {
                Step::More => {}
                Step::Wait | Step::CanWrite => break Ok(()),
                Step::Fail(e) => {
                    self.fail(e.clone());
                    break Err(e);
                }
            }
        };
        // What is left is the start of a record whose rest has not arrived: unless it is
        // being read right now, it waits in a buffer of its own size.
        if !self.more_coming {
            self.incoming.settle();
        }
        outcome
    }

    /// Decrypted bytes where they wait, to be taken with [`LeanServer::consume_plaintext`].
    /// `Ok` of nothing: the peer sent close_notify; `UnexpectedEof`: its stream ended without
    /// one; `WouldBlock`: nothing yet.
    pub fn plaintext(&self) -> io::Result<&[u8]> {
        if !self.plaintext.is_empty() {
            return Ok(self.plaintext.bytes());
        }
        if self.peer_closed {
            return Ok(&[]);
        }
        if self.eof {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    /// Takes the first `n` bytes of [`LeanServer::plaintext`].
    pub fn consume_plaintext(&mut self, n: usize) {
        self.plaintext.consume(n);
    }

    /// Copies decrypted bytes into `buf` (as [`LeanServer::plaintext`] says, `Ok(0)` being
    /// close_notify).
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let waiting = self.plaintext()?;
        let n = waiting.len().min(buf.len());
        buf[..n].copy_from_slice(&waiting[..n]);
        self.consume_plaintext(n);
        Ok(n)
    }

    /// Encrypts `data` into records for `write_tls` (the handshake must be complete).
    pub fn write_plaintext(&mut self, data: &[u8]) -> io::Result<()> {
        let room = data.len() + RECORD_OVERHEAD * (data.len() / 16_384 + 1);
        // Held tickets go first, in the same write as these bytes.
        self.held_until = None;
        self.with_write_traffic(|wt, out| {
            append(out, room, |b| wt.encrypt(data, b), encrypt_need)
                .map_err(|e| io::Error::other(format!("TLS encrypt: {e}")))
        })
    }

    /// Queues close_notify (best effort: a connection that cannot send any more just ends).
    pub fn send_close_notify(&mut self) {
        self.held_until = None;
        let _ = self.with_write_traffic(|wt, out| {
            append(out, RECORD_OVERHEAD, |b| wt.queue_close_notify(b), encrypt_need)
                .map_err(|e| io::Error::other(format!("TLS close_notify: {e}")))
        });
    }

    /// Runs `f` in the write-traffic state, first handling whatever rustls has pending.
    fn with_write_traffic(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Waiting) -> io::Result<()>,
    ) -> io::Result<()> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other((**e).clone()));
        }
        let mut f = Some(f);
        loop {
            let status = self.conn.process_tls_records(self.incoming.bytes_mut());
            let discard = status.discard;
            let outcome = match status.state {
                Ok(ConnectionState::WriteTraffic(mut wt)) => {
                    let f = f.take().expect("called once: the loop returns after it");
                    Err(f(&mut wt, &mut self.outgoing))
                }
                Ok(ConnectionState::BlockedHandshake) => {
                    Err(Err(io::Error::other("TLS handshake not complete")))
                }
                Ok(ConnectionState::Closed) => Err(Err(io::Error::other("TLS connection closed"))),
                Ok(state) => Ok(absorb(
                    state,
                    &mut self.plaintext,
                    &mut self.outgoing,
                    &mut self.peer_closed,
                )),
                Err(e) => Ok(Step::Fail(e)),
            };
            self.incoming.consume(discard);
            match outcome {
                Err(result) => return result,
                Ok(Step::Fail(e)) => {
                    self.fail(e.clone());
                    return Err(io::Error::other(e));
                }
                Ok(_) => {}
            }
        }
    }

    /// Records a failure and collects the alert rustls queued for it.
    fn fail(&mut self, e: rustls::Error) {
        self.failed = Some(Box::new(e));
        self.held_until = None;
        // A few rounds at most: decrypted data before the alert is skipped.
        for _ in 0..4 {
            let status = self.conn.process_tls_records(self.incoming.bytes_mut());
            let discard = status.discard;
            let done = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    let _ = append(&mut self.outgoing, 64, |b| enc.encode(b), encode_need);
                    true
                }
                Ok(ConnectionState::ReadTraffic(mut rt)) => {
                    while let Some(Ok(_)) = rt.next_record() {}
                    false
                }
                _ => true,
            };
            self.incoming.consume(discard);
            if done {
                break;
            }
        }
        self.incoming.settle();
    }
}

/// Handles one state rustls reported into the connection's buffers (a free function: the
/// state borrows the rustls connection and `incoming`).
fn absorb(
    state: ConnectionState<'_, '_, ServerConnectionData>,
    plaintext: &mut Waiting,
    outgoing: &mut Waiting,
    peer_closed: &mut bool,
) -> Step {
    match state {
        ConnectionState::ReadTraffic(mut rt) => {
            while let Some(record) = rt.next_record() {
                match record {
                    Ok(r) => plaintext.extend(r.payload),
                    Err(e) => return Step::Fail(e),
                }
            }
            Step::More
        }
        ConnectionState::EncodeTlsData(mut enc) => {
            match append(outgoing, 4096, |b| enc.encode(b), encode_need) {
                Ok(()) => Step::More,
                Err(e) => Step::Fail(rustls::Error::General(format!("TLS encode: {e}"))),
            }
        }
        ConnectionState::TransmitTlsData(t) => {
            // The records are in `outgoing`; write_tls sends them in order before anything
            // encoded later.
            t.done();
            Step::More
        }
        ConnectionState::PeerClosed => {
            *peer_closed = true;
            Step::More
        }
        ConnectionState::Closed => {
            *peer_closed = true;
            Step::Wait
        }
        ConnectionState::BlockedHandshake => Step::Wait,
        ConnectionState::WriteTraffic(_) => Step::CanWrite,
        // Early data is never enabled on gatehouse's server configs.
        ConnectionState::ReadEarlyData(_) => {
            Step::Fail(rustls::Error::General("unexpected early data".into()))
        }
        _ => Step::Fail(rustls::Error::General("unknown TLS connection state".into())),
    }
}

/// What `process_new_packets` does after one state.
enum Step {
    /// Ask rustls again.
    More,
    /// Nothing more without new bytes from the peer.
    Wait,
    /// Handshake done and nothing pending: application data may be sent.
    CanWrite,
    /// The connection failed.
    Fail(rustls::Error),
}

/// Appends what `encode` writes to `out`, growing the room to what the encoder asks for
/// (records are encrypted straight into the pooled buffer).
fn append<E>(
    out: &mut Waiting,
    mut room: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
    need: fn(&E) -> Option<usize>,
) -> Result<(), E> {
    loop {
        match encode(out.room(room)) {
            Ok(n) => {
                out.commit(n);
                return Ok(());
            }
            Err(e) => match need(&e) {
                Some(required) if required > room => room = required,
                _ => {
                    out.settle();
                    return Err(e);
                }
            },
        }
    }
}

fn encode_need(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_need(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

/// A session's TLS connection: with the client (a [`LeanServer`]) or with a backend
/// (rustls' buffered client, for re-encryption).
pub enum TlsConn {
    /// TLS with the client.
    Server(LeanServer),
    /// TLS with a backend.
    Client(ClientConnection),
}

impl TlsConn {
    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        match self {
            TlsConn::Server(s) => s.is_handshaking(),
            TlsConn::Client(c) => c.is_handshaking(),
        }
    }

    /// Whether TLS bytes wait to be written.
    pub fn wants_write(&self) -> bool {
        match self {
            TlsConn::Server(s) => s.wants_write(),
            TlsConn::Client(c) => c.wants_write(),
        }
    }

    /// Holds back the records a just-completed handshake left (see
    /// [`LeanServer::hold_tickets`]); the backend side's client never holds.
    pub fn hold_tickets(&mut self, now: Instant) -> bool {
        match self {
            TlsConn::Server(s) => s.hold_tickets(now),
            TlsConn::Client(_) => false,
        }
    }

    /// When held records must go at the latest.
    pub fn held_until(&self) -> Option<Instant> {
        match self {
            TlsConn::Server(s) => s.held_until(),
            TlsConn::Client(_) => None,
        }
    }

    /// Lets held records go with the next write.
    pub fn release_held(&mut self) {
        if let TlsConn::Server(s) = self {
            s.release_held();
        }
    }

    /// Whether more TLS bytes should be read.
    pub fn wants_read(&self) -> bool {
        match self {
            TlsConn::Server(s) => s.wants_read(),
            TlsConn::Client(c) => c.wants_read(),
        }
    }

    /// Writes waiting TLS bytes.
    pub fn write_tls(&mut self, w: &mut dyn Write) -> io::Result<usize> {
        match self {
            TlsConn::Server(s) => s.write_tls(w),
            TlsConn::Client(c) => c.write_tls(w),
        }
    }

    /// Reads TLS bytes (0: the end of the peer's stream).
    pub fn read_tls(&mut self, r: &mut dyn Read) -> io::Result<usize> {
        match self {
            TlsConn::Server(s) => s.read_tls(r),
            TlsConn::Client(c) => c.read_tls(r),
        }
    }

    /// Processes the TLS bytes read.
    pub fn process_new_packets(&mut self) -> Result<(), rustls::Error> {
        match self {
            TlsConn::Server(s) => s.process_new_packets(),
            TlsConn::Client(c) => c.process_new_packets().map(|_| ()),
        }
    }

    /// Copies decrypted bytes into `buf` (`Ok(0)`: close_notify; `UnexpectedEof`: ended
    /// without one; `WouldBlock`: nothing yet).
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TlsConn::Server(s) => s.read_plaintext(buf),
            TlsConn::Client(c) => c.reader().read(buf),
        }
    }

    /// Decrypted bytes where they wait (the same answers as `read_plaintext`, `Ok` of nothing
    /// being close_notify), to be taken with `consume_plaintext`: a tunnel writes them on
    /// without copying them first.
    pub fn plaintext(&mut self) -> io::Result<&[u8]> {
        match self {
            TlsConn::Server(s) => s.plaintext(),
            TlsConn::Client(c) => c.reader().into_first_chunk(),
        }
    }

    /// Takes the first `n` bytes of `plaintext`.
    pub fn consume_plaintext(&mut self, n: usize) {
        match self {
            TlsConn::Server(s) => s.consume_plaintext(n),
            TlsConn::Client(c) => io::BufRead::consume(&mut c.reader(), n),
        }
    }

    /// Encrypts all of `data` for `write_tls` (the buffered client holds it while its
    /// handshake runs; its buffer limit is lifted where it is made).
    pub fn write_plaintext(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            TlsConn::Server(s) => s.write_plaintext(data),
            TlsConn::Client(c) => c.writer().write_all(data),
        }
    }

    /// Queues close_notify.
    pub fn send_close_notify(&mut self) {
        match self {
            TlsConn::Server(s) => s.send_close_notify(),
            TlsConn::Client(c) => c.send_close_notify(),
        }
    }
}

#[cfg(test)]
#[path = "tls_conn_tests.rs"]
mod tests;
