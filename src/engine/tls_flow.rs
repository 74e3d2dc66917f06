//! One direction of a tunnel where a side speaks TLS: offload (TLS with the client, a
//! [`TlsConn::Server`]), re-encryption (TLS with the backend, a [`TlsConn::Client`]), or both.
//!
//! Owns the plaintext in flight and the half-close bookkeeping: a close_notify (or a bare
//! FIN) from the source becomes a FIN, or a close_notify then a FIN, at the destination.
//! Plaintext decrypted from a TLS source goes on from where rustls left it (written to a
//! plain destination, or encrypted for a TLS one) and waits there while a plain
//! destination is slower; plaintext read from a plain source is encrypted at once, and the
//! pooled buffer it was read into goes straight back; records wait inside the TLS
//! connection only while a TLS destination is slower (the source is not read meanwhile).
//! A pooled buffer otherwise carries only early bytes (a PROXY header, bytes read before
//! routing) to a destination that is not ready. So an idle tunnel holds no pooled buffer
//! (and the client side's TLS connection none of its own). It never touches timers or the
//! poller.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use super::tls_conn::TlsConn;

use super::buffers::Buf;
use super::flow::{read_error, write_error, End, FlowError, Pools};

/// How a TLS tunnel failed.
#[derive(Debug)]
pub enum TlsFlowError {
    /// A socket failed (`Source`/`Destination` as seen from the direction that failed).
    Io(FlowError),
    /// The source's TLS peer broke the protocol (a bad record, a failed MAC, an alert, a
    /// backend certificate that does not verify).
    SourceTls(rustls::Error),
}

impl std::fmt::Display for TlsFlowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsFlowError::Io(e) => e.fmt(f),
            TlsFlowError::SourceTls(e) => write!(f, "TLS: {e}"),
        }
    }
}

/// One socket of a TLS tunnel: plain, or carrying TLS through a rustls connection.
pub struct Side<'a> {
    /// The socket and its readiness.
    pub end: End<'a>,
    /// The TLS connection over it (`None`: plain bytes).
    pub tls: Option<&'a mut TlsConn>,
}

/// One direction of a tunnel where at least one side speaks TLS: plaintext from the source
/// (read, or decrypted) to the destination (written, or encrypted).
#[derive(Default)]
pub struct TlsDirection {
    /// Plaintext not yet delivered to a plain destination.
    buf: Option<Buf>,
    start: usize,
    end: usize,
    /// The source's stream ended (FIN, close_notify, or a FIN without close_notify).
    pub eof: bool,
    /// The source's TLS stream ended with a FIN but no close_notify (logged, carried).
    pub truncated: bool,
    /// close_notify was queued for a TLS destination.
    close_notify_sent: bool,
    /// The destination's write side was shut down (this direction is finished).
    pub shut: bool,
    /// Plaintext bytes delivered.
    pub bytes: u64,
}

impl TlsDirection {
    /// A direction that first delivers `early` raw (client bytes to a plain backend, or a
    /// PROXY header that must precede a backend's TLS).
    pub fn with_early(early: &[u8], pools: &mut Pools<'_>) -> TlsDirection {
        let mut d = TlsDirection::default();
        if !early.is_empty() {
            d.buf = Some(super::flow::early_buffer(early, pools));
            d.end = early.len();
        }
        d
    }

    /// Whether pooled buffers are held (false for an idle tunnel).
    pub fn holds_resources(&self) -> bool {
        self.buf.is_some()
    }

    /// Moves as much as readiness allows; returns whether anything moved.
    ///
    /// `closing` says the other direction is finished, so once this one is too the session
    /// closes both sockets: the FIN then comes from close(2) and shutdown(2) is skipped (both
    /// sockets have been read to their EOF, so close(2) sends a FIN, not a reset).
    pub fn pump(
        &mut self,
        src: Side<'_>,
        dst: Side<'_>,
        closing: bool,
        pools: &mut Pools<'_>,
    ) -> Result<bool, TlsFlowError> {
        let Side {
            end: src_end,
            tls: mut src_tls,
        } = src;
        let Side {
            end: dst_end,
            tls: mut dst_tls,
        } = dst;
        let mut progress = false;
        loop {
            // 1. What waits for the destination goes first: bytes in our buffer (plaintext for
            //    a plain destination, or a PROXY header that precedes a backend's TLS).
            if self.end > self.start {
                if !dst_end.ready.writable {
                    return Ok(progress);
                }
                let buf = self.buf.as_ref().expect("end > start implies a buffer");
                match (&*dst_end.sock).write(&buf[self.start..self.end]) {
                    Ok(0) => return Err(TlsFlowError::Io(FlowError::DestinationReset)),
                    Ok(n) => {
                        self.start += n;
                        self.bytes += n as u64;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        dst_end.ready.writable = false;
                        return Ok(progress);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(TlsFlowError::Io(write_error(e))),
                }
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                    if let Some(b) = self.buf.take() {
                        pools.bufs.give(b);
                    }
                }
                continue;
            }
            // Then records inside rustls (whatever produced them: data, handshake, alerts).
            if let Some(conn) = dst_tls.as_deref_mut() {
                if conn.wants_write() {
                    if !dst_end.ready.writable {
                        return Ok(progress);
                    }
                    // close_notify with nothing after it but our FIN: held back (MSG_MORE)
                    // so that the FIN rides in the same segment, one wake-up for the peer.
                    let fin_follows = self.eof && self.close_notify_sent && !self.shut;
                    let written = if fin_follows {
                        conn.write_tls(&mut WriteBeforeFin(dst_end.sock))
                    } else {
                        conn.write_tls(&mut WriteTo(dst_end.sock))
                    };
                    match written {
                        Ok(0) => return Err(TlsFlowError::Io(FlowError::DestinationReset)),
                        Ok(_) => progress = true,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            dst_end.ready.writable = false;
                            return Ok(progress);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(TlsFlowError::Io(write_error(e))),
                    }
                    continue;
                }
            }
            // 2. The source ended and everything was delivered: close_notify (TLS), then FIN.
            //    A TLS source that ended without close_notify ends the same way towards a TLS
            //    destination: a close_notify would vouch for a stream that may be cut short.
            if self.eof {
                if let Some(conn) = dst_tls.as_deref_mut() {
                    if !self.close_notify_sent && !self.truncated {
                        conn.send_close_notify();
                        self.close_notify_sent = true;
                        progress = true;
                        continue;
                    }
                }
                if !self.shut {
                    if !closing {
                        let _ = dst_end.sock.shutdown(Shutdown::Write);
                    }
                    self.shut = true;
                    progress = true;
                }
                return Ok(progress);
            }
            // A TLS destination takes plaintext only once its handshake is done (rustls
            // would buffer it without bound before).
            if dst_tls.as_deref().is_some_and(|c| c.is_handshaking()) {
                return Ok(progress);
            }
            // 3. More plaintext. A TLS source's is taken where rustls decrypted it: written to a
            //    plain destination (what it does not take waits there, and the source is not
            //    read meanwhile) or encrypted for a TLS one, with no copy in between.
            if let Some(conn) = src_tls.as_deref_mut() {
                let handshaking = conn.is_handshaking();
                match conn.plaintext() {
                    // RFC 8446 §6.1: close_notify, the clean end of the peer's stream.
                    Ok([]) => self.eof = true,
                    Ok(bytes) => {
                        let taken = match dst_tls.as_deref_mut() {
                            Some(dst) => {
                                // The connection takes all of it (the client side's buffer
                                // limit is lifted); it is sent before anything more is read.
                                dst.write_plaintext(bytes)
                                    .map_err(|e| TlsFlowError::Io(FlowError::Destination(e)))?;
                                bytes.len()
                            }
                            None => {
                                if !dst_end.ready.writable {
                                    return Ok(progress);
                                }
                                match (&*dst_end.sock).write(bytes) {
                                    Ok(0) => return Err(TlsFlowError::Io(FlowError::DestinationReset)),
                                    Ok(n) => n,
                                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                        dst_end.ready.writable = false;
                                        return Ok(progress);
                                    }
                                    Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                                    Err(e) => return Err(TlsFlowError::Io(write_error(e))),
                                }
                            }
                        };
                        conn.consume_plaintext(taken);
                        self.bytes += taken as u64;
                    }
                    // A FIN before the handshake finished (a backend that is not TLS, refused
                    // our hello or crashed): nothing was carried yet, and a clean end towards
                    // the other side would hide the failure.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && handshaking => {
                        return Err(TlsFlowError::SourceTls(rustls::Error::General(
                            "connection closed during the TLS handshake".into(),
                        )));
                    }
                    // A FIN without close_notify: many peers end so; carried as a FIN (to a
                    // TLS destination without close_notify either: see step 2).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.eof = true;
                        self.truncated = true;
                    }
                    // Nothing decrypted yet.
                    Err(_) => {
                        if !read_records(conn, src_end.sock, src_end.ready)? {
                            return Ok(progress);
                        }
                    }
                }
                progress = true;
                continue;
            }
            // A plain source's bytes go through a pooled buffer.
            let mut buf = self.buf.take().unwrap_or_else(|| pools.bufs.take());
            match read_plain(src_end.sock, src_end.ready, &mut buf[..]) {
                Ok(Got::Bytes(n)) => {
                    progress = true;
                    match dst_tls.as_deref_mut() {
                        Some(conn) => {
                            // As above: the connection takes all of it.
                            let written = conn.write_plaintext(&buf[..n]);
                            pools.bufs.give(buf);
                            written.map_err(|e| TlsFlowError::Io(FlowError::Destination(e)))?;
                            self.bytes += n as u64;
                        }
                        None => {
                            self.buf = Some(buf);
                            self.start = 0;
                            self.end = n;
                        }
                    }
                }
                Ok(Got::End { truncated }) => {
                    pools.bufs.give(buf);
                    self.eof = true;
                    self.truncated = truncated;
                    progress = true;
                }
                Ok(Got::Nothing { moved }) => {
                    pools.bufs.give(buf);
                    progress |= moved;
                    if !moved {
                        return Ok(progress);
                    }
                }
                Err(e) => {
                    pools.bufs.give(buf);
                    return Err(e);
                }
            }
        }
    }

    /// Returns pooled resources (the session is closing).
    pub fn release(&mut self, pools: &mut Pools<'_>) {
        if let Some(b) = self.buf.take() {
            pools.bufs.give(b);
        }
        self.start = 0;
        self.end = 0;
    }
}

/// What one attempt to get plaintext from a source gave.
pub(super) enum Got {
    /// Plaintext bytes in the buffer.
    Bytes(usize),
    /// The stream ended.
    End {
        /// TLS ended by a FIN without close_notify.
        truncated: bool,
    },
    /// No plaintext now; `moved` says records were read (try again), else wait for readiness.
    Nothing {
        /// Records were read and processed.
        moved: bool,
    },
}

/// Reads plain bytes from a socket as readiness allows.
pub(super) fn read_plain(
    sock: &mio::net::TcpStream,
    ready: &mut super::flow::Ready,
    buf: &mut [u8],
) -> Result<Got, TlsFlowError> {
    if !ready.readable {
        return Ok(Got::Nothing { moved: false });
    }
    match (&*sock).read(buf) {
        Ok(0) => Ok(Got::End { truncated: false }),
        Ok(n) => {
            if n < buf.len() && !ready.read_closed {
                ready.readable = false;
            }
            Ok(Got::Bytes(n))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            ready.readable = false;
            Ok(Got::Nothing { moved: false })
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Got::Nothing { moved: true }),
        Err(e) => Err(TlsFlowError::Io(read_error(e))),
    }
}

/// Reads plaintext from a TLS connection, reading and processing records as needed.
pub(super) fn read_plaintext(
    conn: &mut TlsConn,
    sock: &mio::net::TcpStream,
    ready: &mut super::flow::Ready,
    buf: &mut [u8],
) -> Result<Got, TlsFlowError> {
    match conn.read_plaintext(buf) {
        // RFC 8446 §6.1: close_notify, the clean end of the peer's stream.
        Ok(0) => return Ok(Got::End { truncated: false }),
        Ok(n) => return Ok(Got::Bytes(n)),
        // A FIN without close_notify: many peers end so; carried as a FIN.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Got::End { truncated: true }),
        Err(_) => {} // WouldBlock: nothing decrypted yet.
    }
    Ok(Got::Nothing {
        moved: read_records(conn, sock, ready)?,
    })
}

/// With no plaintext waiting, reads TLS bytes as readiness allows and processes the records.
/// Returns whether anything was read (else wait for readiness).
fn read_records(
    conn: &mut TlsConn,
    sock: &mio::net::TcpStream,
    ready: &mut super::flow::Ready,
) -> Result<bool, TlsFlowError> {
    // rustls refuses records while plaintext is pending.
    if !ready.readable || !conn.wants_read() {
        return Ok(false);
    }
    let mut from = ReadFrom::new(sock);
    match conn.read_tls(&mut from) {
        // EOF: the next look at the plaintext sees close_notify or the truncation.
        Ok(0) => ready.readable = false,
        Ok(_) => from.settle(ready),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            ready.readable = false;
            return Ok(false);
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(true),
        Err(e) => return Err(TlsFlowError::Io(read_error(e))),
    }
    conn.process_new_packets().map_err(TlsFlowError::SourceTls)?;
    Ok(true)
}

/// Reads a socket through a shared reference (mio implements `Read` for `&TcpStream`) and
/// notes whether a read came back short.
pub struct ReadFrom<'a> {
    sock: &'a mio::net::TcpStream,
    short: bool,
}

impl<'a> ReadFrom<'a> {
    /// A reader of `sock`.
    pub fn new(sock: &'a mio::net::TcpStream) -> Self {
        ReadFrom { sock, short: false }
    }

    /// After a read: a short one means the socket's queue was empty at that moment, and with
    /// edge-triggered polling any later arrival raises a new edge, so readiness is cleared
    /// and the EAGAIN read is skipped (unless the peer's FIN was reported, which raises no
    /// further edge: then reads go on to the EOF).
    pub fn settle(&self, ready: &mut super::flow::Ready) {
        if self.short && !ready.read_closed {
            ready.readable = false;
        }
    }
}

impl Read for ReadFrom<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&*self.sock).read(buf)?;
        self.short = n > 0 && n < buf.len();
        Ok(n)
    }
}

/// Writes a socket through a shared reference.
pub struct WriteTo<'a>(pub &'a mio::net::TcpStream);

impl Write for WriteTo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the last bytes before the FIN that follows at once (shutdown(2) or close(2)):
/// with MSG_MORE, so that the kernel keeps them until the FIN and sends both in one
/// segment (`tcp_send_fin` sets FIN on a segment not yet sent).
pub struct WriteBeforeFin<'a>(pub &'a mio::net::TcpStream);

impl Write for WriteBeforeFin<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(self.0).send_with_flags(buf, libc::MSG_MORE | libc::MSG_NOSIGNAL)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::super::flow::Ready;
    use super::ReadFrom;

    /// A connected pair: a mio stream (read by `ReadFrom`) and the std stream feeding it.
    fn pair() -> (mio::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let feeder = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        (mio::net::TcpStream::from_std(accepted), feeder)
    }

    fn ready() -> Ready {
        Ready {
            readable: true,
            ..Ready::default()
        }
    }

    /// Reads until bytes come (the feeder's write crosses loopback asynchronously).
    fn read_some(from: &mut ReadFrom<'_>, buf: &mut [u8]) -> usize {
        for _ in 0..1000 {
            match from.read(buf) {
                Ok(n) => return n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no bytes arrived");
    }

    #[test]
    fn a_short_read_clears_readiness_unless_a_fin_was_reported() {
        let (sock, mut feeder) = pair();
        feeder.write_all(&[7; 10]).unwrap();
        let mut from = ReadFrom::new(&sock);
        assert_eq!(read_some(&mut from, &mut [0; 100]), 10);
        let mut r = ready();
        from.settle(&mut r);
        assert!(!r.readable, "10 of 100: the queue was empty");
        // With the peer's FIN reported there is no further edge: reads go on.
        let mut r = Ready {
            read_closed: true,
            ..ready()
        };
        from.settle(&mut r);
        assert!(r.readable);
    }

    #[test]
    fn a_full_read_keeps_readiness() {
        let (sock, mut feeder) = pair();
        feeder.write_all(&[7; 64]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut from = ReadFrom::new(&sock);
        assert_eq!(read_some(&mut from, &mut [0; 32]), 32);
        let mut r = ready();
        from.settle(&mut r);
        assert!(r.readable, "32 of 32: more may wait");
        // A read of nothing (EOF) is not a short read either.
        drop(feeder);
        let mut rest = [0; 64];
        assert_eq!(read_some(&mut from, &mut rest), 32);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(read_some(&mut from, &mut rest), 0);
        let mut r = ready();
        from.settle(&mut r);
        assert!(r.readable);
    }
}
