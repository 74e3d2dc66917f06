//! Listening sockets: one per worker per listener, with SO_REUSEPORT.
//!
//! Owns socket options of listeners. The kernel spreads new connections over the workers'
//! sockets, so no worker hands connections to another. SO_REUSEPORT would also let a second
//! process bind the same address and quietly take a share of the connections (another
//! gatehouse started by mistake, an old one that did not stop), so a group first checks that
//! nobody listens there yet.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// How a silent or vanished peer is noticed on a proxied connection's sockets: TCP
/// keepalive for an idle connection, TCP_USER_TIMEOUT for one with bytes in flight (a cut
/// link, a peer that crashed without a reset). Set on the listener, where Linux copies it
/// to every accepted socket, and on every backend socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadPeer {
    /// Silence before the first keepalive probe.
    pub idle: Duration,
    /// Between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub probes: u32,
    /// Sent bytes unacknowledged this long drop the connection (zero: the kernel's limit).
    pub user_timeout: Duration,
}

impl Default for DeadPeer {
    /// A listener's defaults: a silent peer is dropped 60 s + 6 x 10 s after its last word,
    /// unacknowledged bytes after 60 s.
    fn default() -> DeadPeer {
        DeadPeer {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            probes: 6,
            user_timeout: Duration::from_secs(60),
        }
    }
}

impl DeadPeer {
    /// The settings of a listener (`tcp_keepalive*`, `tcp_user_timeout`).
    pub fn of(config: &crate::config::ListenerConfig) -> DeadPeer {
        DeadPeer {
            idle: config.tcp_keepalive.get(),
            interval: config.tcp_keepalive_interval.get(),
            probes: config.tcp_keepalive_probes,
            user_timeout: config.tcp_user_timeout.get(),
        }
    }

    /// Sets them on `socket` (five system calls; four without a user timeout).
    pub fn apply(&self, socket: socket2::SockRef<'_>) -> io::Result<()> {
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.probes);
        socket.set_tcp_keepalive(&keepalive)?;
        if !self.user_timeout.is_zero() {
            socket.set_tcp_user_timeout(Some(self.user_timeout))?;
        }
        Ok(())
    }
}

/// What makes a listener's sockets: two listener configs (of the same name) with the same
/// key share them across a reload. Only the address: the backlog and the dead-peer settings
/// change on the sockets in place ([`BindSpec::update`]), and IP_FREEBIND matters only to a
/// bind that is done already. A new socket would cost the connections queued in the old
/// one's backlog: Linux resets them when it closes.
pub type ListenerKey = SocketAddr;

/// The key of `config`'s sockets.
pub fn listener_key(config: &crate::config::ListenerConfig) -> ListenerKey {
    config.bind
}

/// Sockets a reload bound for each worker before it published the new configuration:
/// (listener name, worker id) -> (key, socket). A worker takes its own when it applies the
/// reload, so a reload that cannot bind every worker's socket is refused as a whole instead
/// of leaving a listener on some workers only.
pub type Staged = std::collections::HashMap<(String, usize), (ListenerKey, TcpListener)>;

/// What a listening socket needs.
#[derive(Clone, Copy, Debug)]
pub struct BindSpec {
    /// Address and port (port 0: the kernel picks, see [`bind_group`]).
    pub address: SocketAddr,
    /// Listen backlog.
    pub backlog: u32,
    /// IP_FREEBIND: bind an address that is not local yet (a VIP).
    pub freebind: bool,
    /// Keepalive and user timeout. Set on the listener together with TCP_NODELAY: Linux
    /// copies them to every accepted socket, which saves system calls per connection.
    pub dead_peer: DeadPeer,
}

impl BindSpec {
    /// The sockets `config` asks for.
    pub fn of(config: &crate::config::ListenerConfig) -> BindSpec {
        BindSpec {
            address: config.bind,
            backlog: config.backlog,
            freebind: config.freebind,
            dead_peer: DeadPeer::of(config),
        }
    }

    /// Moves `socket`, bound and listening as `self` asks, to `new`'s backlog and dead-peer
    /// settings (same address). Returns whether anything changed. Connections whose handshake
    /// completes from then on get the new settings; those queued or accepted before keep
    /// theirs (Linux copies the listener's when the handshake completes).
    pub fn update(&self, new: &BindSpec, socket: &impl std::os::fd::AsFd) -> io::Result<bool> {
        let mut changed = false;
        if new.dead_peer != self.dead_peer {
            new.dead_peer.apply(socket2::SockRef::from(socket))?;
            if new.dead_peer.user_timeout.is_zero() {
                // `apply` leaves a fresh socket's default alone; this one had a timeout.
                socket2::SockRef::from(socket).set_tcp_user_timeout(None)?;
            }
            changed = true;
        }
        if new.backlog != self.backlog {
            // listen(2) again on a listening socket only resizes its queue.
            socket2::SockRef::from(socket).listen(new.backlog.min(i32::MAX as u32) as i32)?;
            changed = true;
        }
        Ok(changed)
    }
}

/// A socket for `spec.address` with the options a listener and its probe share: address
/// reuse (TIME_WAIT leftovers do not block a bind), IPv6 only for an IPv6 address, and
/// IP_FREEBIND when asked.
fn address_socket(spec: &BindSpec) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(spec.address),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if spec.address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if spec.freebind {
        if spec.address.is_ipv6() {
            socket.set_freebind_ipv6(true)?;
        } else {
            socket.set_freebind(true)?;
        }
    }
    Ok(socket)
}

/// Binds one listening socket with SO_REUSEPORT.
pub fn bind(spec: &BindSpec) -> io::Result<TcpListener> {
    let socket = address_socket(spec)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    spec.dead_peer.apply(socket2::SockRef::from(&socket))?;
    socket
        .bind(&spec.address.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {}: {e}", spec.address)))?;
    socket.listen(spec.backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Binds a socket without SO_REUSEPORT to `spec.address` and lets it go: that fails while
/// any socket listens there, with or without SO_REUSEPORT (TIME_WAIT leftovers do not count,
/// as for the listener itself). Port 0 (the kernel picks a free one) needs no check.
pub fn nobody_listens(spec: &BindSpec) -> io::Result<()> {
    if spec.address.port() == 0 {
        return Ok(());
    }
    let probe = address_socket(spec)?;
    match probe.bind(&spec.address.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot bind {}: another socket listens there (another gatehouse still running?)",
                spec.address
            ),
        )),
        // Anything else (a non-local address without freebind...) is for the real bind to
        // report in its words.
        Err(_) => Ok(()),
    }
}

/// Binds `count` sockets on the same address (one per worker). With port 0 the first one
/// picks the port and the others reuse it. Refuses an address some other socket listens on.
pub fn bind_group(spec: &BindSpec, count: usize) -> io::Result<Vec<TcpListener>> {
    nobody_listens(spec)?;
    let first = bind(spec)?;
    let mut spec = *spec;
    spec.address = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind(&spec)?);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;

    fn spec(address: SocketAddr) -> BindSpec {
        BindSpec {
            address,
            backlog: 16,
            freebind: false,
            dead_peer: DeadPeer::default(),
        }
    }

    #[test]
    fn a_listeners_dead_peer_defaults_are_the_documented_ones() {
        let text = "[[halb.listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n\n\
                    [[halb.pool]]\nname = \"p\"\nbackends = [{ address = \"127.0.0.1:2\" }]\n";
        let config = crate::config::load_str(text, "t.toml", Default::default()).expect("config");
        let listener = config.listeners().next().expect("one listener");
        assert_eq!(DeadPeer::of(listener), DeadPeer::default());
    }

    #[test]
    fn dead_peer_settings_reach_the_socket() {
        let listener = bind(&spec("127.0.0.1:0".parse().unwrap())).unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = DeadPeer {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(3),
            probes: 4,
            user_timeout: Duration::from_millis(9_500),
        };
        peer.apply(socket2::SockRef::from(&client)).unwrap();
        let s = socket2::SockRef::from(&client);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_millis(9_500)));
        // Accepted sockets inherit the listener's (the defaults here).
        let (accepted, _) = listener.accept().unwrap();
        let a = socket2::SockRef::from(&accepted);
        assert_eq!(a.keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(a.keepalive_retries().unwrap(), 6);
        assert_eq!(a.tcp_user_timeout().unwrap(), Some(Duration::from_secs(60)));
    }

    #[test]
    fn new_settings_reach_a_listening_socket_in_place_and_its_queue_survives() {
        let old = spec("127.0.0.1:0".parse().unwrap());
        let listener = bind(&old).unwrap();
        // A client the node has not accepted yet: a new socket would have cost it a reset.
        let queued = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let new = BindSpec {
            backlog: old.backlog * 2,
            dead_peer: DeadPeer {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(5),
                probes: 3,
                user_timeout: Duration::ZERO,
            },
            ..old
        };
        assert!(old.update(&new, &listener).unwrap());
        assert!(!new.update(&new, &listener).unwrap(), "nothing to change");
        // The queued client is still there, with the settings of its time (Linux copies the
        // listener's when the handshake completes).
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer, queued.local_addr().unwrap());
        // A client from now on gets the new ones; the socket still accepts.
        let later = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, later.local_addr().unwrap());
        let a = socket2::SockRef::from(&accepted);
        assert!(a.keepalive().unwrap());
        assert_eq!(a.keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(a.keepalive_interval().unwrap(), Duration::from_secs(5));
        assert_eq!(a.keepalive_retries().unwrap(), 3);
        assert_eq!(a.tcp_user_timeout().unwrap(), None, "back to the kernel's limit");
    }

    #[test]
    fn an_address_someone_listens_on_is_refused() {
        let first = bind_group(&spec("127.0.0.1:0".parse().unwrap()), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        assert_eq!(first[1].local_addr().unwrap(), addr);
        // A second group (another gatehouse) would share the connections: refused.
        let err = bind_group(&spec(addr), 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("another socket listens there"), "{err}");
        // So is an address a plain listener holds.
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(bind_group(&spec(plain.local_addr().unwrap()), 1).is_err());
        drop(first);
        assert!(
            bind_group(&spec(addr), 2).is_ok(),
            "free again once the first group is gone"
        );
    }

    #[test]
    fn time_wait_leftovers_do_not_block_a_restart() {
        let group = bind_group(&spec("127.0.0.1:0".parse().unwrap()), 1).unwrap();
        let addr = group[0].local_addr().unwrap();
        group[0].set_nonblocking(false).unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (served, _) = group[0].accept().unwrap();
        // The listener's side closes first: its end of the connection stays in TIME_WAIT.
        drop(served);
        let _ = client.read(&mut [0u8; 1]);
        drop(client);
        drop(group);
        assert!(bind_group(&spec(addr), 1).is_ok());
    }
}
