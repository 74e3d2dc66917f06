//! Carries one local RDP client's bytes to the gateway tunnel (or, in the direct modes, to
//! the session host) and back, until both sides have closed.
//!
//! Owns one blocking thread's loop over two non-blocking sockets and `poll(2)`; in the SSL
//! modes it also drives the rustls connection. A half-close is carried each way: the local
//! client's end of stream becomes a TLS `close_notify` (SSL modes) and a TCP `FIN` toward the
//! gateway, and the gateway's end of stream becomes a `FIN` toward the local client, while
//! the other direction keeps flowing. Buffers are bounded (`BUFFER_CAP` each way).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;

use rustls::ClientConnection;

/// Bytes read per call.
const CHUNK: usize = 16 * 1024;

/// Most bytes held for a side that is not reading.
const BUFFER_CAP: usize = 64 * 1024;

/// What a finished relay carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayTotals {
    /// Bytes from the local client toward the session host.
    pub to_remote: u64,
    /// Bytes from the session host to the local client (including the early bytes).
    pub to_local: u64,
}

/// Relays between `local` and `remote` until both directions are closed. `tls` is the
/// client TLS connection over `remote` in the SSL modes; `early` are bytes the remote side
/// already sent (after the `101` head), delivered to `local` first.
pub fn relay(
    local: TcpStream,
    remote: TcpStream,
    mut tls: Option<ClientConnection>,
    early: Vec<u8>,
) -> io::Result<RelayTotals> {
    local.set_nonblocking(true)?;
    remote.set_nonblocking(true)?;
    let mut to_local = early;
    let mut to_remote: Vec<u8> = Vec::new();
    let mut local_eof = false;
    let mut remote_eof = false;
    let mut local_shut = false;
    let mut remote_shut = false;
    let mut close_notify_sent = false;
    let mut chunk = vec![0u8; CHUNK];
    let mut totals = RelayTotals::default();
    loop {
        let mut progress = false;

        // Gateway -> buffer.
        if !remote_eof && to_local.len() < BUFFER_CAP {
            progress |= match &mut tls {
                None => read_plain(&remote, &mut to_local, &mut remote_eof, &mut chunk)?,
                Some(conn) => read_tls(conn, &remote, &mut to_local, &mut remote_eof, &mut chunk)?,
            };
        }
        // Buffer -> local client.
        if !to_local.is_empty() {
            match (&local).write(&to_local) {
                Ok(n) => {
                    to_local.drain(..n);
                    totals.to_local += n as u64;
                    progress = true;
                }
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if remote_eof && to_local.is_empty() && !local_shut {
            let _ = local.shutdown(Shutdown::Write);
            local_shut = true;
            progress = true;
        }

        // Local client -> gateway, only when what was read before has gone out.
        let remote_drained = match &tls {
            None => to_remote.is_empty(),
            Some(conn) => !conn.wants_write(),
        };
        if !local_eof && remote_drained {
            match (&local).read(&mut chunk) {
                Ok(0) => {
                    local_eof = true;
                    progress = true;
                }
                Ok(n) => {
                    match &mut tls {
                        None => to_remote.extend_from_slice(&chunk[..n]),
                        Some(conn) => conn.writer().write_all(&chunk[..n])?,
                    }
                    totals.to_remote += n as u64;
                    progress = true;
                }
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e),
            }
        }
        match &mut tls {
            None => {
                if !to_remote.is_empty() {
                    match (&remote).write(&to_remote) {
                        Ok(n) => {
                            to_remote.drain(..n);
                            progress = true;
                        }
                        Err(e) if transient(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Some(conn) => {
                while conn.wants_write() {
                    match conn.write_tls(&mut &remote) {
                        Ok(_) => progress = true,
                        Err(e) if transient(&e) => break,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let remote_drained = match &tls {
            None => to_remote.is_empty(),
            Some(conn) => !conn.wants_write(),
        };
        if local_eof && remote_drained && !remote_shut {
            match &mut tls {
                Some(conn) if !close_notify_sent => conn.send_close_notify(),
                _ => {
                    let _ = remote.shutdown(Shutdown::Write);
                    remote_shut = true;
                }
            }
            close_notify_sent = true;
            progress = true;
        }

        if local_shut && remote_shut {
            return Ok(totals);
        }
        if progress {
            continue;
        }
        let local_events = interest(!local_eof && remote_drained, !to_local.is_empty());
        let remote_wants_read = match &tls {
            None => true,
            Some(conn) => conn.wants_read(),
        };
        let remote_events = interest(
            !remote_eof && to_local.len() < BUFFER_CAP && remote_wants_read,
            !remote_drained,
        );
        if local_events == 0 && remote_events == 0 {
            // Nothing can move any more (a TLS peer that wants nothing): done.
            return Ok(totals);
        }
        wait(&local, local_events, &remote, remote_events)?;
    }
}

fn read_plain(
    remote: &TcpStream,
    to_local: &mut Vec<u8>,
    eof: &mut bool,
    chunk: &mut [u8],
) -> io::Result<bool> {
    let mut reader = remote;
    match reader.read(chunk) {
        Ok(0) => {
            *eof = true;
            Ok(true)
        }
        Ok(n) => {
            to_local.extend_from_slice(&chunk[..n]);
            Ok(true)
        }
        Err(e) if transient(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes decrypted bytes first (some may be there from the `101` exchange), then reads
/// records from the socket.
fn read_tls(
    conn: &mut ClientConnection,
    remote: &TcpStream,
    to_local: &mut Vec<u8>,
    eof: &mut bool,
    chunk: &mut [u8],
) -> io::Result<bool> {
    let mut progress = false;
    while to_local.len() < BUFFER_CAP {
        match conn.reader().read(chunk) {
            // The gateway's close_notify.
            Ok(0) => {
                *eof = true;
                return Ok(true);
            }
            Ok(n) => {
                to_local.extend_from_slice(&chunk[..n]);
                progress = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // TCP closed without close_notify: the end, as far as RDP can tell.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                *eof = true;
                return Ok(true);
            }
            Err(e) => return Err(e),
        }
    }
    if to_local.len() >= BUFFER_CAP || !conn.wants_read() {
        return Ok(progress);
    }
    match conn.read_tls(&mut &*remote) {
        Ok(_) => {
            // Ok(0) is the end of TCP: process_new_packets records it and the next
            // reader().read says so.
            if let Err(e) = conn.process_new_packets() {
                // Tell the gateway why (the alert is queued by rustls), then give up.
                let _ = conn.write_tls(&mut &*remote);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            Ok(true)
        }
        Err(e) if transient(&e) => Ok(progress),
        Err(e) => Err(e),
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

fn interest(read: bool, write: bool) -> i16 {
    (if read { libc::POLLIN } else { 0 }) | (if write { libc::POLLOUT } else { 0 })
}

/// Blocks until one of the sockets is ready for what is asked of it. A socket asked for
/// nothing is left out, so that a reset it already reported cannot wake the loop forever.
fn wait(local: &TcpStream, local_events: i16, remote: &TcpStream, remote_events: i16) -> io::Result<()> {
    let fd = |s: &TcpStream, events: i16| if events == 0 { -1 } else { s.as_raw_fd() };
    let mut fds = [
        libc::pollfd {
            fd: fd(local, local_events),
            events: local_events,
            revents: 0,
        },
        libc::pollfd {
            fd: fd(remote, remote_events),
            events: remote_events,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call, and
        // the descriptors belong to sockets borrowed for at least as long.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A connected pair of loopback sockets.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn plain_relay_carries_early_bytes_and_half_close_each_way() {
        let (client, local) = pair();
        let (remote, host) = pair();
        let relay = thread::spawn(move || relay(local, remote, None, b"EARLY".to_vec()));

        // The host sends a banner, then reads until the client half-closes, answers, closes.
        let host_side = thread::spawn(move || {
            let mut host = host;
            host.write_all(b"-banner").unwrap();
            let mut got = Vec::new();
            host.read_to_end(&mut got).unwrap();
            host.write_all(b"-after-your-eof").unwrap();
            host.shutdown(Shutdown::Write).unwrap();
            got
        });
        let mut client = client;
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        client.write_all(&payload).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"EARLY-banner-after-your-eof");
        assert_eq!(host_side.join().unwrap(), payload);
        let totals = relay.join().unwrap().unwrap();
        assert_eq!(totals.to_remote, payload.len() as u64);
        assert_eq!(totals.to_local, back.len() as u64);
    }
}
