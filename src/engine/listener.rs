//! Listening sockets: one per worker per listener, with SO_REUSEPORT.
//!
//! Owns socket options of listeners. The kernel spreads new connections over the workers'
//! sockets, so no worker hands connections to another.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// What a listening socket needs.
#[derive(Clone, Copy, Debug)]
pub struct BindSpec {
    /// Address and port (port 0: the kernel picks, see [`bind_group`]).
    pub address: SocketAddr,
    /// Listen backlog.
    pub backlog: u32,
    /// IP_FREEBIND: bind an address that is not local yet (a VIP).
    pub freebind: bool,
    /// TCP keepalive idle time. Set on the listener together with TCP_NODELAY: Linux copies
    /// both to every accepted socket, which saves two to five system calls per connection.
    pub keepalive: std::time::Duration,
}

/// Binds one listening socket with SO_REUSEPORT.
pub fn bind(spec: &BindSpec) -> io::Result<TcpListener> {
    let domain = Domain::for_address(spec.address);
    let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
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
    socket.set_nodelay(true)?;
    socket.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(spec.keepalive))?;
    socket
        .bind(&spec.address.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {}: {e}", spec.address)))?;
    socket.listen(spec.backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Binds `count` sockets on the same address (one per worker). With port 0 the first one
/// picks the port and the others reuse it.
pub fn bind_group(spec: &BindSpec, count: usize) -> io::Result<Vec<TcpListener>> {
    let first = bind(spec)?;
    let mut spec = *spec;
    spec.address = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind(&spec)?);
    }
    Ok(all)
}
