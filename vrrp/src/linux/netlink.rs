//! A minimal rtnetlink client: list, add and delete interface addresses (RTM_GETADDR,
//! RTM_NEWADDR, RTM_DELADDR; rtnetlink(7)).
//!
//! Hand-rolled on libc because the VRRP thread needs three requests and no async runtime. Owns
//! one NETLINK_ROUTE socket in the network namespace of the thread that created it. Every reply
//! is parsed with explicit bounds; a malformed reply is an `io::Error`, never a panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDR_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
/// Replies larger than this are refused rather than read in pieces.
const RECV_BUF_LEN: usize = 64 * 1024;

/// An address found on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface index.
    pub ifindex: u32,
    /// The local address (IFA_LOCAL, or IFA_ADDRESS when absent).
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// Whether the kernel marks it secondary (IFA_F_SECONDARY).
    pub secondary: bool,
}

/// One rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Open and bind a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; we fill the family and pass its exact size.
        let rc = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// Every address of every interface (one RTM_GETADDR dump).
    pub fn addresses(&mut self) -> io::Result<Vec<IfAddr>> {
        let mut body = vec![0u8; IFADDRMSG_LEN];
        body[0] = libc::AF_UNSPEC as u8;
        let seq = self.send(
            libc::RTM_GETADDR,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            &body,
        )?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; RECV_BUF_LEN];
        loop {
            let n = self.recv(&mut buf)?;
            for msg in Messages::new(&buf[..n]) {
                let (kind, mseq, payload) = msg?;
                if mseq != seq {
                    continue;
                }
                match kind {
                    k if k == libc::NLMSG_DONE as u16 => return Ok(out),
                    k if k == libc::NLMSG_ERROR as u16 => check_ack(payload)?,
                    k if k == libc::RTM_NEWADDR => {
                        if let Some(a) = parse_ifaddr(payload) {
                            out.push(a);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Addresses of one interface.
    pub fn addresses_of(&mut self, ifindex: u32) -> io::Result<Vec<IfAddr>> {
        Ok(self
            .addresses()?
            .into_iter()
            .filter(|a| a.ifindex == ifindex)
            .collect())
    }

    /// Add `addr/prefix_len` to the interface; an address already there is success.
    pub fn add_address(&mut self, ifindex: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
        match self.address_request(libc::RTM_NEWADDR, flags as u16, ifindex, addr, prefix_len) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Remove `addr/prefix_len` from the interface; an address already gone is success.
    pub fn del_address(&mut self, ifindex: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
        match self.address_request(libc::RTM_DELADDR, flags as u16, ifindex, addr, prefix_len) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r,
        }
    }

    fn address_request(
        &mut self,
        kind: u16,
        flags: u16,
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> io::Result<()> {
        let (family, octets) = match addr {
            IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
        };
        let mut body = Vec::with_capacity(IFADDRMSG_LEN + 2 * (4 + 16));
        body.push(family);
        body.push(prefix_len);
        body.push(0); // flags
        body.push(libc::RT_SCOPE_UNIVERSE);
        body.extend_from_slice(&ifindex.to_ne_bytes());
        push_attr(&mut body, libc::IFA_LOCAL, &octets);
        push_attr(&mut body, libc::IFA_ADDRESS, &octets);
        let seq = self.send(kind, flags, &body)?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf)?;
            for msg in Messages::new(&buf[..n]) {
                let (k, mseq, payload) = msg?;
                if mseq == seq && k == libc::NLMSG_ERROR as u16 {
                    return check_ack(payload);
                }
            }
        }
    }

    fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDR_LEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: the pointer and length describe `msg`, alive for the call. The kernel is the
        // default destination of an unconnected netlink socket.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: the pointer and length describe `buf`, alive for the call.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = rc as usize;
            if n > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "netlink reply truncated",
                ));
            }
            return Ok(n);
        }
    }
}

fn push_attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An NLMSG_ERROR payload: errno 0 is an ACK.
fn check_ack(payload: &[u8]) -> io::Result<()> {
    let Some(b) = payload.get(0..4) else {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink error"));
    };
    let errno = i32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    if errno == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-errno))
    }
}

fn parse_ifaddr(payload: &[u8]) -> Option<IfAddr> {
    let hdr = payload.get(..IFADDRMSG_LEN)?;
    let family = i32::from(hdr[0]);
    let prefix_len = hdr[1];
    let mut flags = u32::from(hdr[2]);
    let ifindex = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let mut local = None;
    let mut address = None;
    let mut rest = &payload[IFADDRMSG_LEN..];
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]);
        if len < 4 || len > rest.len() {
            break;
        }
        let data = &rest[4..len];
        let ip = match (family, data.len()) {
            (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]))),
            (libc::AF_INET6, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            }
            _ => None,
        };
        match kind {
            libc::IFA_LOCAL => local = ip,
            libc::IFA_ADDRESS => address = ip,
            libc::IFA_FLAGS if data.len() == 4 => {
                flags = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]);
            }
            _ => {}
        }
        let step = (len + 3) & !3;
        rest = rest.get(step..).unwrap_or(&[]);
    }
    Some(IfAddr {
        ifindex,
        addr: local.or(address)?,
        prefix_len,
        secondary: flags & libc::IFA_F_SECONDARY != 0,
    })
}

/// Iterator over the netlink messages in one datagram: (type, seq, payload).
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Messages { rest: buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<(u16, u32, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < NLMSG_HDR_LEN {
            return None;
        }
        let r = self.rest;
        let len = u32::from_ne_bytes([r[0], r[1], r[2], r[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > r.len() {
            self.rest = &[];
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed netlink message",
            )));
        }
        let kind = u16::from_ne_bytes([r[4], r[5]]);
        let seq = u32::from_ne_bytes([r[8], r[9], r[10], r[11]]);
        let payload = &r[NLMSG_HDR_LEN..len];
        let step = (len + 3) & !3;
        self.rest = r.get(step..).unwrap_or(&[]);
        Some(Ok((kind, seq, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_an_rtm_newaddr_payload() {
        let mut p = vec![libc::AF_INET as u8, 24, libc::IFA_F_SECONDARY as u8, 0];
        p.extend_from_slice(&7u32.to_ne_bytes());
        push_attr(&mut p, libc::IFA_ADDRESS, &[10, 213, 0, 9]);
        push_attr(&mut p, libc::IFA_LOCAL, &[10, 213, 0, 1]);
        push_attr(&mut p, libc::IFA_LABEL, b"eth0\0");
        let a = parse_ifaddr(&p).unwrap();
        assert_eq!(a.ifindex, 7);
        assert_eq!(a.addr, IpAddr::V4(Ipv4Addr::new(10, 213, 0, 1)));
        assert_eq!(a.prefix_len, 24);
        assert!(a.secondary);
        // Truncated attributes end the walk without a panic.
        for cut in 0..p.len() {
            let _ = parse_ifaddr(&p[..cut]);
        }
    }

    #[test]
    fn message_walk_is_bounded() {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&9u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        let v: Vec<_> = Messages::new(&m).collect();
        assert_eq!(v.len(), 1);
        let (k, seq, payload) = v[0].as_ref().unwrap();
        assert_eq!((*k, *seq), (libc::NLMSG_ERROR as u16, 9));
        assert_eq!(check_ack(payload).unwrap_err().raw_os_error(), Some(libc::EEXIST));
        let mut bad = m.clone();
        bad[0] = 200;
        assert!(Messages::new(&bad).next().unwrap().is_err());
    }
}
