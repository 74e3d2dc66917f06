//! Source ports for backend connects: a narrow window of the ephemeral range per connect.
//!
//! A connect(2) on an unbound socket makes the kernel search the whole ephemeral range for a
//! free port, and on a busy proxy that range is full of TIME_WAIT sockets (the proxy sends
//! the backend's FIN first when the client closes, so TIME_WAIT lands on its side): the
//! search checked them one by one and took about a quarter of the CPU of a short proxied
//! connection (BENCHMARKS.md, "Where the CPU of a short connection goes"). Here each worker
//! keeps a cursor per backend that walks the worker's slice of the ephemeral range a window
//! of [`WINDOW`] ports at a time, and hands connect(2) only that window
//! (`IP_LOCAL_PORT_RANGE`, Linux 6.3): the kernel checks a few ports, which were last used
//! for this backend a whole slice ago, long after their TIME_WAIT ended.
//!
//! The kernel still does the choosing inside the window, with all its usual rules (reserved
//! ports, ports bound by other programs, TIME_WAIT reuse), and the ports it hands out stay
//! shareable with other programs' connects, unlike ports taken with an explicit bind(2),
//! which the kernel's own search then skips for as long as their TIME_WAIT lasts (an
//! explicit-bind allocator tried first starved HAProxy's connects on the same machine).
//! A window with no usable port moves the cursor on; after a few, or on a kernel without
//! the option, connect(2) searches the whole range as before.
//!
//! [`PortPlan`] is the pure part (the range, the worker's slice, the windows);
//! [`SourcePorts`] owns the cursors and does the socket calls.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Ports in one window handed to connect(2).
pub const WINDOW: u16 = 8;

/// Windows tried for one connect before connect(2) searches the whole range.
const ATTEMPTS: u32 = 4;

/// `IP_LOCAL_PORT_RANGE` from `<linux/in.h>` (not in the libc crate yet): the low 16 bits
/// are the first port, the high 16 bits the last.
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;

/// The windows one worker hands out: its contiguous slice of the system's ephemeral range
/// (slice `slot` of `of`), cut into windows of [`WINDOW`] ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    first: u16,
    last: u16,
}

impl PortPlan {
    /// Slice `slot` of `of` of the range `lo..=hi`; empty when the slice is narrower than a
    /// window.
    pub fn new(lo: u16, hi: u16, slot: usize, of: usize) -> Self {
        let of = of.max(1) as u32;
        let slot = (slot as u32) % of;
        let span = u32::from(hi).saturating_sub(u32::from(lo)) + 1;
        let share = span / of;
        if hi < lo || share < u32::from(WINDOW) {
            return PortPlan { first: 1, last: 0 };
        }
        let first = u32::from(lo) + slot * share;
        PortPlan {
            first: first as u16,
            last: (first + share - 1) as u16,
        }
    }

    /// Slice `slot` of `of` of the kernel's `net.ipv4.ip_local_port_range` (which applies
    /// to IPv6 too), or of the kernel's default range when it cannot be read.
    pub fn from_system(slot: usize, of: usize) -> Self {
        let (lo, hi) = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| parse_port_range(&s))
            .unwrap_or((32768, 60999));
        PortPlan::new(lo, hi, slot, of)
    }

    /// How many windows the slice holds.
    pub fn windows(&self) -> u32 {
        if self.last < self.first {
            return 0;
        }
        (u32::from(self.last) - u32::from(self.first) + 1) / u32::from(WINDOW)
    }

    /// The `k`-th window (modulo their number) as first and last port, `None` when the
    /// slice is empty.
    pub fn window(&self, k: u32) -> Option<(u16, u16)> {
        let n = self.windows();
        if n == 0 {
            return None;
        }
        let start = u32::from(self.first) + (k % n) * u32::from(WINDOW);
        Some((start as u16, (start + u32::from(WINDOW) - 1) as u16))
    }
}

/// One worker's source-port state: its plan, a cursor per backend address, and whether the
/// engine narrows the choice at all (`[node] source_ports`).
pub struct SourcePorts {
    plan: PortPlan,
    enabled: bool,
    cursors: HashMap<SocketAddr, u32>,
    /// Connects for which no window had a usable port (connect(2) searched the range),
    /// since [`SourcePorts::take_fallbacks`].
    fallbacks: u64,
}

impl SourcePorts {
    /// A worker's state over `plan`; `enabled` false leaves every choice to connect(2).
    pub fn new(plan: PortPlan, enabled: bool) -> Self {
        SourcePorts {
            enabled: enabled && plan.windows() > 0,
            plan,
            cursors: HashMap::new(),
            fallbacks: 0,
        }
    }

    /// Turns the narrowing on or off (a reloaded configuration).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled && self.plan.windows() > 0;
    }

    /// How many connects fell back to the whole range since the last call (the worker adds
    /// them to the node's metrics).
    pub fn take_fallbacks(&mut self) -> u64 {
        std::mem::take(&mut self.fallbacks)
    }

    /// Drops the cursors of backends no longer configured.
    pub fn retain(&mut self, keep: impl Fn(&SocketAddr) -> bool) {
        self.cursors.retain(|addr, _| keep(addr));
    }

    /// Starts a non-blocking connect to `backend` from a port of the backend's next window;
    /// what connect(2) says about the backend itself (refused, unreachable) is the
    /// caller's.
    pub fn connect(&mut self, backend: SocketAddr) -> io::Result<TcpStream> {
        if self.enabled {
            match self.connect_in_window(backend)? {
                Windowed::Connecting(sock) => return Ok(sock),
                Windowed::Full => self.fallbacks += 1,
                Windowed::Unsupported(e) => {
                    // A kernel older than 6.3 (or one that refuses the option for this
                    // family): search the whole range from now on.
                    tracing::warn!("IP_LOCAL_PORT_RANGE refused ({e}); connect(2) chooses source ports");
                    self.enabled = false;
                }
            }
        }
        TcpStream::connect(backend)
    }

    /// A connect from the backend's next window with a usable port, trying [`ATTEMPTS`]
    /// windows.
    fn connect_in_window(&mut self, backend: SocketAddr) -> io::Result<Windowed> {
        let windows = self.plan.windows();
        let cursor = self
            .cursors
            .entry(backend)
            .or_insert_with(|| start_window(backend, windows));
        for _ in 0..ATTEMPTS {
            let Some((first, last)) = self.plan.window(*cursor) else {
                return Ok(Windowed::Full);
            };
            *cursor = (*cursor + 1) % windows;
            let sock = Socket::new(
                Domain::for_address(backend),
                Type::STREAM.nonblocking().cloexec(),
                Some(Protocol::TCP),
            )?;
            if let Err(e) = set_local_port_range(&sock, first, last) {
                return Ok(Windowed::Unsupported(e));
            }
            match sock.connect(&backend.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                // Every port of the window is taken for this four-tuple: the next window.
                Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => continue,
                Err(e) => return Err(e),
            }
            return Ok(Windowed::Connecting(TcpStream::from_std(sock.into())));
        }
        Ok(Windowed::Full)
    }
}

/// How a connect from a window went.
enum Windowed {
    /// Connecting (or connected) from a port of a window.
    Connecting(TcpStream),
    /// No port of the windows tried could be used for this backend.
    Full,
    /// The kernel refused to narrow the range.
    Unsupported(io::Error),
}

/// Narrows the ports connect(2) may choose for `sock` to `first..=last`.
fn set_local_port_range(sock: &Socket, first: u16, last: u16) -> io::Result<()> {
    let range: u32 = u32::from(first) | (u32::from(last) << 16);
    // SAFETY: a valid descriptor, a pointer to a u32 that lives across the call, its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_LOCAL_PORT_RANGE,
            (&range as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where a backend's cursor starts: a different window per backend and per process start,
/// away from the TIME_WAIT sockets a previous run left.
fn start_window(backend: SocketAddr, windows: u32) -> u32 {
    use std::hash::BuildHasher;
    if windows == 0 {
        return 0;
    }
    // RandomState is seeded per process.
    let hash = std::collections::hash_map::RandomState::new().hash_one(backend);
    (hash % u64::from(windows)) as u32
}

/// `"32768\t60999"` -> `(32768, 60999)`.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>());
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo >= 1 && lo <= hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn kernel_range_parses() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("100 50"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn workers_get_disjoint_slices_cut_into_windows() {
        let a = PortPlan::new(1000, 1099, 0, 3);
        let b = PortPlan::new(1000, 1099, 1, 3);
        let c = PortPlan::new(1000, 1099, 2, 3);
        // 100 ports / 3 = 33 each, 4 windows of 8.
        assert_eq!(a.windows(), 4);
        assert_eq!(a.window(0), Some((1000, 1007)));
        assert_eq!(a.window(3), Some((1024, 1031)));
        assert_eq!(a.window(4), a.window(0));
        assert_eq!(b.window(0), Some((1033, 1040)));
        assert_eq!(c.window(3), Some((1090, 1097)));
        // Too narrow for a window per worker: nothing to hand out.
        assert_eq!(PortPlan::new(1000, 1010, 0, 2).window(0), None);
        assert_eq!(PortPlan::new(65528, 65535, 0, 1).window(0), Some((65528, 65535)));
    }

    /// A window of the system's range none of whose ports is bound here, and the listeners
    /// holding it when `hold` (bound without SO_REUSEADDR, so the kernel will not use them).
    fn free_window(hold: bool) -> ((u16, u16), Vec<TcpListener>) {
        let plan = PortPlan::from_system(0, 1);
        for k in (0..plan.windows()).step_by(37) {
            let (first, last) = plan.window(k).unwrap();
            let held: Vec<_> = (first..=last)
                .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
                .collect();
            if held.len() == usize::from(WINDOW) {
                return ((first, last), if hold { held } else { Vec::new() });
            }
        }
        panic!("no free window in the ephemeral range");
    }

    #[test]
    fn connects_come_from_consecutive_windows() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = server.local_addr().unwrap();
        let plan = PortPlan::from_system(0, 1);
        let mut ports = SourcePorts::new(plan.clone(), true);
        let mut held = Vec::new();
        let mut windows = Vec::new();
        for _ in 0..3 {
            let sock = ports.connect(backend).unwrap();
            let (accepted, peer) = server.accept().unwrap();
            let k = (0..plan.windows())
                .find(|&k| {
                    let (a, b) = plan.window(k).unwrap();
                    (a..=b).contains(&peer.port())
                })
                .unwrap_or_else(|| panic!("port {} outside every window", peer.port()));
            windows.push(k);
            held.push((sock, accepted));
        }
        // Each connect moved the cursor one window on (a window in use by another program
        // would be skipped, which the kernel's defaults make unlikely here).
        assert_eq!(windows[1], (windows[0] + 1) % plan.windows(), "{windows:?}");
        assert_eq!(windows[2], (windows[1] + 1) % plan.windows(), "{windows:?}");
        assert_eq!(ports.take_fallbacks(), 0);
    }

    #[test]
    fn a_window_without_a_usable_port_falls_back_to_the_whole_range() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = server.local_addr().unwrap();
        let ((first, last), _held) = free_window(true);
        // A plan of exactly that window: every attempt finds it full.
        let mut ports = SourcePorts::new(PortPlan::new(first, last, 0, 1), true);
        let _sock = ports.connect(backend).unwrap();
        let port = server.accept().unwrap().1.port();
        assert!(
            !(first..=last).contains(&port),
            "port {port} is held by a listener"
        );
        assert_eq!(ports.take_fallbacks(), 1);
    }

    #[test]
    fn the_window_is_what_connect_chooses_from() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = server.local_addr().unwrap();
        let ((first, last), _) = free_window(false);
        let mut ports = SourcePorts::new(PortPlan::new(first, last, 0, 1), true);
        let _sock = ports.connect(backend).unwrap();
        let port = server.accept().unwrap().1.port();
        assert!(
            (first..=last).contains(&port),
            "port {port} outside {first}-{last}"
        );
    }

    #[test]
    fn disabled_leaves_the_choice_to_the_kernel() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = server.local_addr().unwrap();
        let ((first, last), _) = free_window(false);
        let mut ports = SourcePorts::new(PortPlan::new(first, last, 0, 1), false);
        // The kernel's search lands in an 8-port window of ~28,000 by chance, not 3 times.
        let mut held = Vec::new();
        let mut outside = 0;
        for _ in 0..3 {
            held.push(ports.connect(backend).unwrap());
            let port = server.accept().unwrap().1.port();
            outside += usize::from(!(first..=last).contains(&port));
        }
        assert!(outside > 0);
        assert_eq!(ports.take_fallbacks(), 0);
    }

    #[test]
    fn ipv6_backends_get_windows_too() {
        let server = match TcpListener::bind("[::1]:0") {
            Ok(s) => s,
            // Under CI=true a missing prerequisite fails instead of skipping.
            Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("no IPv6 loopback: {e}"),
            Err(e) => {
                eprintln!("\n## SKIPPED ipv6_backends_get_windows_too: no IPv6 loopback here ({e})\n");
                return;
            }
        };
        let backend = server.local_addr().unwrap();
        let ((first, last), _) = free_window(false);
        let mut ports = SourcePorts::new(PortPlan::new(first, last, 0, 1), true);
        let _sock = ports.connect(backend).unwrap();
        let (_, peer) = server.accept().unwrap();
        assert!(peer.is_ipv6());
        assert!(
            (first..=last).contains(&peer.port()),
            "port {} outside {first}-{last}",
            peer.port()
        );
        assert!(ports.enabled);
    }
}
