//! One direction of a tunnel: bytes from a source socket to a destination socket.
//!
//! Owns the in-flight bytes of that direction (a pooled buffer or a pooled pipe) and the
//! half-close bookkeeping: when the source says EOF and everything read has been written,
//! the destination's write side is shut down, so a FIN crosses the proxy while the other
//! direction keeps flowing. Buffers and pipes go back to the pools as soon as they drain.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};

use mio::net::TcpStream;

use super::buffers::{BufferPool, Pipe, PipePool, BUF_SIZE, PIPE_SIZE};

/// Readiness of one socket as last reported by the (edge-triggered) poller.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ready {
    /// Reading would not block (or would report EOF / an error).
    pub readable: bool,
    /// Writing would not block (or would report an error).
    pub writable: bool,
    /// The peer's FIN (or an error) was reported: reads must go on until they return 0.
    pub read_closed: bool,
    /// The poller reported an error (a reset): the session asks the socket which one, even
    /// when no read or write is pending on it (a RST after a half-close).
    pub error: bool,
}

/// One socket of a flow with its readiness.
pub struct End<'a> {
    /// The socket.
    pub sock: &'a TcpStream,
    /// Its readiness, updated as calls would block.
    pub ready: &'a mut Ready,
}

/// How a direction failed.
#[derive(Debug)]
pub enum FlowError {
    /// The source reset the connection.
    SourceReset,
    /// The destination reset the connection (or closed it while we still had bytes for it).
    DestinationReset,
    /// Another error reading the source.
    Source(io::Error),
    /// Another error writing the destination.
    Destination(io::Error),
}

impl std::fmt::Display for FlowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlowError::SourceReset => f.write_str("the sender reset the connection"),
            FlowError::DestinationReset => f.write_str("the receiver reset the connection"),
            FlowError::Source(e) => write!(f, "read: {e}"),
            FlowError::Destination(e) => write!(f, "write: {e}"),
        }
    }
}

/// Pools a flow borrows from.
pub struct Pools<'a> {
    /// Copy buffers.
    pub bufs: &'a mut BufferPool,
    /// Splice pipes.
    pub pipes: &'a mut PipePool,
}

/// One direction of a tunnel.
#[derive(Default)]
pub struct Flow {
    buf: Option<super::buffers::Buf>,
    start: usize,
    end: usize,
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// The source said EOF.
    pub eof: bool,
    /// The destination's write side was shut down (this direction is finished).
    pub shut: bool,
    /// Bytes written to the destination.
    pub bytes: u64,
    /// Of those, bytes moved with splice.
    pub spliced: u64,
    /// The last read filled a whole buffer: the stream is bulky and splice pays off.
    bulk: bool,
}

impl Flow {
    /// A flow that first delivers `early` (bytes already read, or a PROXY header).
    pub fn with_early(early: &[u8], pools: &mut Pools<'_>) -> Flow {
        let mut flow = Flow::default();
        if !early.is_empty() {
            flow.buf = Some(early_buffer(early, pools));
            flow.end = early.len();
        }
        flow
    }

    /// Whether this flow holds pool resources (for tests of idle memory).
    pub fn holds_resources(&self) -> bool {
        self.buf.is_some() || self.pipe.is_some()
    }

    /// Moves as many bytes as readiness allows. Returns whether anything changed.
    ///
    /// `closing` says the other direction is finished, so once this one is too the session
    /// closes both sockets: the FIN then comes from close(2) and shutdown(2) is skipped.
    ///
    /// A short read(2) means the socket's queue was empty at that moment; with edge-triggered
    /// polling any later arrival raises a new edge, so the EAGAIN read after it is skipped
    /// (unless the peer's FIN was reported, which raises no further edge).
    pub fn pump(
        &mut self,
        src: End<'_>,
        dst: End<'_>,
        splice: bool,
        closing: bool,
        pools: &mut Pools<'_>,
    ) -> Result<bool, FlowError> {
        let End {
            sock: src,
            ready: src_ready,
        } = src;
        let End {
            sock: dst,
            ready: dst_ready,
        } = dst;
        let mut progress = false;
        loop {
            // 1. Bytes waiting in the copy buffer go first.
            if self.end > self.start {
                if !dst_ready.writable {
                    return Ok(progress);
                }
                let buf = self.buf.as_ref().expect("end > start implies a buffer");
                match (&*dst).write(&buf[self.start..self.end]) {
                    Ok(0) => return Err(FlowError::DestinationReset),
                    Ok(n) => {
                        self.start += n;
                        self.bytes += n as u64;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        dst_ready.writable = false;
                        return Ok(progress);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(write_error(e)),
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
            // 2. Bytes waiting in the pipe.
            if self.in_pipe > 0 {
                if !dst_ready.writable {
                    return Ok(progress);
                }
                let pipe = self.pipe.as_ref().expect("in_pipe > 0 implies a pipe");
                match splice_fds(pipe.read.as_raw_fd(), dst.as_raw_fd(), self.in_pipe) {
                    Ok(0) => return Err(FlowError::DestinationReset),
                    Ok(n) => {
                        self.in_pipe -= n;
                        self.bytes += n as u64;
                        self.spliced += n as u64;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        dst_ready.writable = false;
                        return Ok(progress);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(write_error(e)),
                }
                if self.in_pipe == 0 {
                    if let Some(p) = self.pipe.take() {
                        pools.pipes.give(p);
                    }
                }
                continue;
            }
            // 3. Nothing in flight: carry EOF, or read more.
            if self.eof {
                if !self.shut {
                    if !closing {
                        // The peer may be gone already; the session notices on its own side.
                        let _ = dst.shutdown(Shutdown::Write);
                    }
                    self.shut = true;
                    progress = true;
                }
                return Ok(progress);
            }
            if !src_ready.readable {
                return Ok(progress);
            }
            // Small messages (RDP input, a request) go through read(2)/write(2), which needs
            // fewer calls than splice's two hops plus the pipe; once a read fills a whole
            // buffer the stream is bulky and moves with splice (HAProxy's splice-auto idea).
            if splice && self.bulk {
                if self.pipe.is_none() {
                    self.pipe = pools.pipes.take();
                }
                if let Some(pipe) = &self.pipe {
                    // The pipe is empty here, so EAGAIN can only mean the socket has no data.
                    match splice_fds(src.as_raw_fd(), pipe.write.as_raw_fd(), PIPE_SIZE) {
                        Ok(0) => {
                            self.eof = true;
                            if let Some(p) = self.pipe.take() {
                                pools.pipes.give(p);
                            }
                        }
                        // No short-read shortcut here: a splice can stop early when the pipe's
                        // slots fill with small segments while the socket still holds data.
                        Ok(n) => {
                            self.in_pipe = n;
                            if n < BUF_SIZE / 4 {
                                self.bulk = false;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            src_ready.readable = false;
                            if let Some(p) = self.pipe.take() {
                                pools.pipes.give(p);
                            }
                            return Ok(progress);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(read_error(e)),
                    }
                    progress = true;
                    continue;
                }
                // No pipe to be had: copy this time.
            }
            let mut buf = match self.buf.take() {
                Some(b) => b,
                None => pools.bufs.take(),
            };
            match (&*src).read(&mut buf[..]) {
                Ok(0) => {
                    pools.bufs.give(buf);
                    self.eof = true;
                }
                Ok(n) => {
                    self.bulk = n == buf.len();
                    if n < buf.len() && !src_ready.read_closed {
                        src_ready.readable = false;
                    }
                    self.buf = Some(buf);
                    self.start = 0;
                    self.end = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pools.bufs.give(buf);
                    src_ready.readable = false;
                    return Ok(progress);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    pools.bufs.give(buf);
                }
                Err(e) => {
                    pools.bufs.give(buf);
                    return Err(read_error(e));
                }
            }
            progress = true;
        }
    }

    /// Returns pooled resources (the session is closing).
    pub fn release(&mut self, pools: &mut Pools<'_>) {
        if let Some(b) = self.buf.take() {
            pools.bufs.give(b);
        }
        if let Some(p) = self.pipe.take() {
            if self.in_pipe == 0 {
                pools.pipes.give(p);
            } else {
                pools.pipes.discard(p);
            }
        }
        self.start = 0;
        self.end = 0;
        self.in_pipe = 0;
    }
}

/// A pooled buffer holding `early`; a larger one (a ClientHello of up to 16 KiB after a
/// PROXY header) replaces the pooled one, so no early byte is ever cut off.
pub fn early_buffer(early: &[u8], pools: &mut Pools<'_>) -> super::buffers::Buf {
    let mut buf = pools.bufs.take();
    if early.len() > buf.len() {
        buf = early.to_vec().into_boxed_slice();
    } else {
        buf[..early.len()].copy_from_slice(early);
    }
    buf
}

/// A peer's reset (or our write after it): not a fault of this host.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
    )
}

/// The flow error for a failed read from the source.
pub(super) fn read_error(e: io::Error) -> FlowError {
    if is_reset(&e) {
        FlowError::SourceReset
    } else {
        FlowError::Source(e)
    }
}

/// The flow error for a failed write to the destination.
pub(super) fn write_error(e: io::Error) -> FlowError {
    if is_reset(&e) {
        FlowError::DestinationReset
    } else {
        FlowError::Destination(e)
    }
}

/// splice(2) between two descriptors, one of which is a pipe; never blocks.
fn splice_fds(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (borrowed from live
    // sockets and pipes), offsets are null (streams), and splice does not touch our memory.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_bytes_larger_than_a_buffer_are_kept_whole() {
        let mut bufs = BufferPool::new(4);
        let mut pipes = PipePool::new(1, 1);
        let mut pools = Pools {
            bufs: &mut bufs,
            pipes: &mut pipes,
        };
        let early: Vec<u8> = (0..BUF_SIZE + 100).map(|i| i as u8).collect();
        let flow = Flow::with_early(&early, &mut pools);
        assert_eq!(flow.end, early.len());
        assert_eq!(&flow.buf.as_ref().unwrap()[..flow.end], &early[..]);
        let small = Flow::with_early(b"hello", &mut pools);
        assert_eq!(&small.buf.as_ref().unwrap()[..small.end], b"hello");
        assert_eq!(pools.bufs.in_use, 2);
    }
}
