//! Client-side socket helpers: many local source addresses, connect with a timeout, the
//! open-files limit, and duration parsing for the command line.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::BenchError;

/// A TCP socket for `target` (TCP_NODELAY), bound to `source` when one is given, with the
/// port left to connect() so that each (source, destination) pair gets its own ports
/// (IP_BIND_ADDRESS_NO_PORT, Linux 4.2) instead of bind() reserving one per source address.
pub fn socket_from(target: SocketAddr, source: Option<IpAddr>) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None)?;
    socket.set_nodelay(true)?;
    if let Some(src) = source {
        let one: libc::c_int = 1;
        // SAFETY: valid fd, option value is a c_int of the given size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    Ok(socket)
}

/// Local source addresses handed out round-robin: 127.0.0.1 ..= 127.0.0.N for a loopback
/// target, so many connections do not run out of ephemeral ports on one address.
#[derive(Debug)]
pub struct SourcePool {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourcePool {
    /// `count` addresses for `target`. For a non-loopback or IPv6 target the kernel picks
    /// the source (one entry, unspecified).
    pub fn new(target: SocketAddr, count: usize) -> SourcePool {
        let addrs = match target.ip() {
            IpAddr::V4(v4) if v4.is_loopback() && count > 1 => (0..count.min(254))
                .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
                .collect(),
            _ => Vec::new(),
        };
        SourcePool {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    /// How many explicit source addresses are used (0: the kernel's choice).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when the kernel picks the source address.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The next source address, if any.
    pub fn next(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        Some(self.addrs[i])
    }

    /// A blocking TCP connection to `target` (TCP_NODELAY) from the next source address.
    pub fn connect(&self, target: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        let socket = self.socket(target)?;
        socket.connect_timeout(&target.into(), timeout)?;
        Ok(socket.into())
    }

    /// A non-blocking socket whose connect to `target` is under way (EINPROGRESS).
    pub fn connect_nonblocking(&self, target: SocketAddr) -> io::Result<std::net::TcpStream> {
        let socket = self.socket(target)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(socket.into())
    }

    fn socket(&self, target: SocketAddr) -> io::Result<Socket> {
        socket_from(target, self.next())
    }
}

/// Checks that `target` accepts a connection, so a dead target is a clear error, not zeros.
pub fn probe(target: SocketAddr) -> Result<(), BenchError> {
    match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(_) => Ok(()),
        Err(e) => Err(BenchError::TargetDead {
            target,
            reason: e.to_string(),
        }),
    }
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit to fill / read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// Parses `"30s"`, `"500ms"`, `"2m"`, `"1h"`, `"250us"` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (use e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?} (us, ms, s, m, h)")),
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte size: `"2GiB"`, `"512MiB"`, `"2G"` (10^9), `"64k"`, or a bare number.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (use e.g. 2GiB, 512MiB, 2G)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("bad size unit in {s:?} (k, M, G, KiB, MiB, GiB)")),
    };
    let bytes = value * mult;
    if !(0.0..=1.8e19).contains(&bytes) {
        return Err(format!("size {s:?} out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2G"), Ok(2_000_000_000));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn sources_rotate_on_loopback_only() {
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let pool = SourcePool::new(lo, 3);
        let got: Vec<_> = (0..4).map(|_| pool.next().unwrap().to_string()).collect();
        assert_eq!(got, ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.1"]);
        assert!(SourcePool::new("[::1]:80".parse().unwrap(), 3).is_empty());
        assert!(SourcePool::new(lo, 1).is_empty());
    }
}
