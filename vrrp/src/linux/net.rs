//! Sockets of the VRRP thread: the raw IP protocol 112 socket of one interface, the AF_PACKET
//! socket that sends gratuitous ARPs, and interface look-ups (index, MAC, link flags).
//!
//! Every socket lives in the network namespace of the thread that opens it. Nothing here
//! decides anything: bytes in, bytes out.

use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use crate::arp;
use crate::packet::{IPPROTO_VRRP, MAX_DATAGRAM_LEN, VRRP_MULTICAST_V4, VRRP_TTL};

/// The index of an interface by name, in the calling thread's namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `c` is a valid NUL-terminated string alive for the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(idx)
}

/// Link state and hardware address of an interface, read through ioctls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInfo {
    /// IFF_UP and IFF_RUNNING are both set.
    pub running: bool,
    /// Hardware (MAC) address.
    pub mac: [u8; 6],
}

/// Read [`LinkInfo`] for `name` using `fd` (any AF_INET or AF_PACKET socket) for the ioctls.
pub fn link_info(fd: RawFd, name: &str) -> io::Result<LinkInfo> {
    let mut req = ifreq(name)?;
    // SAFETY: SIOCGIFFLAGS reads into the ifreq union, which `req` provides in full.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled ifru_flags for SIOCGIFFLAGS.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    let running = flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0;
    let mut req = ifreq(name)?;
    // SAFETY: as above, for SIOCGIFHWADDR.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled ifru_hwaddr for SIOCGIFHWADDR.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(LinkInfo { running, mac })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: an all-zero ifreq is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

/// The raw VRRP socket of one interface: receives every protocol-112 datagram on it with the IP
/// header, sends adverts with TTL 255 from a chosen source address.
#[derive(Debug)]
pub struct VrrpSocket {
    sock: Socket,
    ifindex: u32,
}

impl VrrpSocket {
    /// Open the socket, bind it to `interface`, turn IP_MULTICAST_ALL and loopback off, set
    /// TTL 255 for unicast and multicast, and join 224.0.0.18 unless `multicast` is false.
    pub fn open(interface: &str, ifindex: u32, multicast: bool) -> io::Result<VrrpSocket> {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW.cloexec(),
            Some(Protocol::from(i32::from(IPPROTO_VRRP))),
        )?;
        sock.bind_device(Some(interface.as_bytes()))?;
        // Without this a raw socket sees groups joined by any socket on the host.
        sock.set_multicast_all_v4(false)?;
        sock.set_multicast_loop_v4(false)?;
        sock.set_multicast_ttl_v4(u32::from(VRRP_TTL))?;
        sock.set_ttl(u32::from(VRRP_TTL))?;
        if multicast {
            sock.join_multicast_v4_n(&VRRP_MULTICAST_V4, &InterfaceIndexOrAddress::Index(ifindex))?;
        }
        sock.set_nonblocking(true)?;
        Ok(VrrpSocket { sock, ifindex })
    }

    /// The descriptor, for poll(2).
    pub fn raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Read one datagram (IP header included) into `buf`; `Ok(None)` when nothing is queued.
    /// A datagram longer than `buf` is returned cut, and the parser reports it truncated.
    pub fn recv<'b>(&self, buf: &'b mut [u8; MAX_DATAGRAM_LEN]) -> io::Result<Option<&'b [u8]>> {
        // SAFETY: u8 and MaybeUninit<u8> have one layout; recv only writes into the buffer.
        let uninit = unsafe { &mut *(buf.as_mut_slice() as *mut [u8] as *mut [MaybeUninit<u8>]) };
        match self.sock.recv(uninit) {
            Ok(n) => Ok(Some(&buf[..n.min(MAX_DATAGRAM_LEN)])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Send a VRRP message to `dst` from `src` (through IP_PKTINFO, so the source matches the
    /// address the checksum was computed with).
    pub fn send(&self, msg: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> io::Result<()> {
        let dst_sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: self.ifindex as libc::c_int,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(src.octets()),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        // Aligned control buffer, large enough for one in_pktinfo cmsg.
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut libc::c_void,
            iov_len: msg.len(),
        };
        // SAFETY: every pointer in msghdr refers to locals alive for the sendmsg call; the
        // control buffer is 64 bytes, more than CMSG_SPACE(sizeof(in_pktinfo)) = 32, and
        // CMSG_FIRSTHDR is non-null because msg_controllen is at least one header.
        let rc = unsafe {
            let space = libc::CMSG_SPACE(std::mem::size_of::<libc::in_pktinfo>() as u32) as usize;
            let mut mh: libc::msghdr = std::mem::zeroed();
            mh.msg_name = &dst_sa as *const libc::sockaddr_in as *mut libc::c_void;
            mh.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            mh.msg_iov = &mut iov;
            mh.msg_iovlen = 1;
            mh.msg_control = control.as_mut_ptr().cast();
            mh.msg_controllen = space as _;
            let cm = libc::CMSG_FIRSTHDR(&mh);
            (*cm).cmsg_level = libc::IPPROTO_IP;
            (*cm).cmsg_type = libc::IP_PKTINFO;
            (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::in_pktinfo>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<libc::in_pktinfo>(), info);
            libc::sendmsg(self.sock.as_raw_fd(), &mh, 0)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A send-only AF_PACKET socket for gratuitous ARPs (protocol 0: it receives nothing).
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
}

impl ArpSocket {
    /// Open the socket in the calling thread's namespace.
    pub fn open() -> io::Result<ArpSocket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        Ok(ArpSocket {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    /// The descriptor, also usable for interface ioctls.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Broadcast one gratuitous ARP request for `vip` on interface `ifindex` from `mac`.
    pub fn send_gratuitous(&self, ifindex: u32, mac: [u8; 6], vip: Ipv4Addr) -> io::Result<()> {
        let body = arp::gratuitous_request(mac, vip);
        // SAFETY: an all-zero sockaddr_ll is valid; we fill the fields a send needs.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = arp::ETH_P_ARP.to_be();
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&arp::BROADCAST_MAC);
        // SAFETY: pointers and lengths describe `body` and `sa`, alive for the call.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                body.as_ptr().cast(),
                body.len(),
                0,
                &sa as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
