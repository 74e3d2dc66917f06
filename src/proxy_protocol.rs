//! PROXY protocol version 2 (haproxy `doc/proxy-protocol.txt` §2.2): a sans-IO parser and
//! writer for the binary header a proxy puts in front of a stream to carry the real client
//! address.
//!
//! Owns the byte format only. The shell decides who may send a header (trusted sources, see
//! `crate::cidr`), feeds [`parse`] whatever it has read so far, and on
//! [`Parsed::Complete`] drops `consumed` bytes and pipes the rest. Nothing here does I/O,
//! logs, or allocates before a header is complete.
//!
//! Validation is incremental: every byte is checked as soon as it is in the buffer, so a
//! wrong signature byte, version, command, family or length is an error with a partial
//! buffer, and a valid prefix is always [`Parsed::Incomplete`], never an error.
//! Version 1 (the text form) is recognised only to refuse it with its own reason.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The 12-byte signature that opens every version 2 header (§2.2).
pub const SIGNATURE: [u8; 12] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
];

/// Length of the fixed part: signature, version/command, family/transport, length (§2.2).
pub const FIXED_LEN: usize = 16;

/// Default bound on a whole header, fixed part included. 536 bytes is the smallest IPv4 TCP
/// MSS, so a header within it arrives in one segment; it leaves 484 bytes for TLVs after an
/// IPv6 address block.
pub const DEFAULT_MAX_HEADER_LEN: usize = 536;

/// The largest bound [`parse_with_limit`] accepts; larger requests are clamped to it. Big
/// enough for SSL TLVs with a client certificate subject; small enough to buffer per
/// connection.
pub const MAX_HEADER_LEN_LIMIT: usize = 4096;

/// Length of one AF_UNIX address in the address block (§2.2: `sun_path`-sized).
pub const UNIX_ADDR_LEN: usize = 108;

/// TLV types registered in §2.2 (the list after the address block).
pub mod tlv_kind {
    /// Application-Layer Protocol Negotiation name (opaque bytes).
    pub const ALPN: u8 = 0x01;
    /// Host name the client asked for (SNI), UTF-8.
    pub const AUTHORITY: u8 = 0x02;
    /// CRC32c of the whole header; kept as opaque bytes here, not verified.
    pub const CRC32C: u8 = 0x03;
    /// Padding; receivers ignore its value.
    pub const NOOP: u8 = 0x04;
    /// Opaque connection identifier, at most 128 bytes.
    pub const UNIQUE_ID: u8 = 0x05;
    /// TLS information, with sub-TLVs (kept opaque).
    pub const SSL: u8 = 0x20;
    /// Network namespace name.
    pub const NETNS: u8 = 0x30;
    /// First type of the range reserved for application-specific data. gatehouse plans to
    /// carry the gateway path in 0xE0.
    pub const CUSTOM_MIN: u8 = 0xE0;
    /// Last type of the application-specific range.
    pub const CUSTOM_MAX: u8 = 0xEF;
    /// First type of the experimental range.
    pub const EXPERIMENT_MIN: u8 = 0xF0;
    /// Last type of the experimental range.
    pub const EXPERIMENT_MAX: u8 = 0xF7;
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Every byte so far is consistent; read more. `needed_at_least` is the *total* buffer
    /// length (from the start of the header) the parser needs before it can say more; it is
    /// always greater than the length passed in.
    Incomplete {
        /// Minimum total buffer length for the next call to make progress.
        needed_at_least: usize,
    },
    /// A whole header; the first `consumed` bytes of the buffer belong to it, the rest is
    /// the proxied stream.
    Complete {
        /// The decoded header.
        header: ProxyHeader,
        /// Bytes taken by the header, fixed part included.
        consumed: usize,
    },
}

/// The `ver_cmd` low nibble (§2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// The connection was made by the proxy itself (health check): the receiver must use
    /// the real connection endpoints and ignore any address block.
    Local,
    /// The connection is relayed for a client; the address block says who.
    Proxy,
}

/// The transport half of the family byte (§2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Unknown; only with [`ProxyAddresses::None`].
    Unspec,
    /// SOCK_STREAM (TCP, or a stream AF_UNIX socket).
    Stream,
    /// SOCK_DGRAM (UDP, or a datagram AF_UNIX socket).
    Dgram,
}

/// The address block: original source and destination of the relayed connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProxyAddresses {
    /// AF_UNSPEC: no addresses (family byte 0x00).
    None,
    /// AF_INET, 12 bytes.
    V4 {
        /// The client.
        src: SocketAddrV4,
        /// The address the client connected to.
        dst: SocketAddrV4,
    },
    /// AF_INET6, 36 bytes. Flow info and scope id are not carried (always 0).
    V6 {
        /// The client.
        src: SocketAddrV6,
        /// The address the client connected to.
        dst: SocketAddrV6,
    },
    /// AF_UNIX, 216 bytes: two raw `sun_path` buffers, NUL padded, kept as bytes.
    Unix {
        /// The client socket path.
        src: Box<[u8; UNIX_ADDR_LEN]>,
        /// The listening socket path.
        dst: Box<[u8; UNIX_ADDR_LEN]>,
    },
}

/// One type-length-value record after the address block (§2.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlv {
    /// The type byte; see [`tlv_kind`].
    pub kind: u8,
    /// The value, at most 65535 bytes.
    pub value: Vec<u8>,
}

/// A decoded (or to-be-encoded) version 2 header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyHeader {
    /// LOCAL or PROXY.
    pub command: Command,
    /// Stream or datagram; [`Transport::Unspec`] exactly when `addresses` is `None`.
    pub transport: Transport,
    /// The address block. Parsed for LOCAL too (round trips), but [`ProxyHeader::source`]
    /// ignores it then, as §2.2 requires.
    pub addresses: ProxyAddresses,
    /// TLVs in wire order, duplicates kept.
    pub tlvs: Vec<Tlv>,
}

/// Why a header was refused. The connection must be closed: §2.2 leaves no recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The stream starts with `PROXY ` (version 1, text); only version 2 is accepted.
    Version1,
    /// A byte of the 12-byte signature is wrong: the peer does not speak PROXY v2.
    BadSignature {
        /// Offset of the first wrong byte.
        offset: usize,
    },
    /// The version nibble is not 2.
    BadVersion(u8),
    /// The command nibble is neither LOCAL (0) nor PROXY (1).
    BadCommand(u8),
    /// The family/transport byte is not one of the seven §2.2 defines.
    BadFamily(u8),
    /// The declared length exceeds the configured bound.
    TooLong {
        /// Total header length (fixed part included) the length bytes announce, or a lower
        /// bound of it when only the first length byte has arrived.
        total_len_at_least: usize,
        /// The bound in force.
        max: usize,
    },
    /// The declared length cannot hold the address block of the declared family.
    AddressBlockTooShort {
        /// The declared length after the fixed part.
        declared: u16,
        /// The address block length of the family.
        needed: u16,
    },
    /// Fewer than 3 bytes remain in the header where a TLV must start.
    TlvTruncated {
        /// Offset of the partial TLV from the start of the header.
        offset: usize,
    },
    /// A TLV's length runs past the end of the header.
    TlvOverrun {
        /// The TLV's type byte.
        kind: u8,
        /// Offset of the TLV from the start of the header.
        offset: usize,
    },
}

impl ProxyError {
    /// A stable, label-safe name for metrics (`refused_total{reason="..."}`). Never changes
    /// for a given variant.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::Version1 => "proxy_v1_unsupported",
            ProxyError::BadSignature { .. } => "proxy_bad_signature",
            ProxyError::BadVersion(_) => "proxy_bad_version",
            ProxyError::BadCommand(_) => "proxy_bad_command",
            ProxyError::BadFamily(_) => "proxy_bad_family",
            ProxyError::TooLong { .. } => "proxy_too_long",
            ProxyError::AddressBlockTooShort { .. } => "proxy_short_address_block",
            ProxyError::TlvTruncated { .. } => "proxy_tlv_truncated",
            ProxyError::TlvOverrun { .. } => "proxy_tlv_overrun",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Version1 => {
                f.write_str("PROXY protocol version 1 (text) header; only version 2 is accepted")
            }
            ProxyError::BadSignature { offset } => {
                write!(f, "not a PROXY v2 header: signature byte {offset} is wrong")
            }
            ProxyError::BadVersion(v) => write!(f, "PROXY header version {v}, expected 2"),
            ProxyError::BadCommand(c) => write!(f, "PROXY v2 command {c:#x} is neither LOCAL nor PROXY"),
            ProxyError::BadFamily(b) => write!(f, "PROXY v2 family/transport byte {b:#04x} is not defined"),
            ProxyError::TooLong {
                total_len_at_least,
                max,
            } => write!(
                f,
                "PROXY v2 header of at least {total_len_at_least} bytes exceeds the {max}-byte limit"
            ),
            ProxyError::AddressBlockTooShort { declared, needed } => write!(
                f,
                "PROXY v2 length {declared} cannot hold the {needed}-byte address block"
            ),
            ProxyError::TlvTruncated { offset } => {
                write!(
                    f,
                    "PROXY v2 TLV at offset {offset} is cut short by the header end"
                )
            }
            ProxyError::TlvOverrun { kind, offset } => write!(
                f,
                "PROXY v2 TLV type {kind:#04x} at offset {offset} runs past the header end"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Why [`ProxyHeader::encode`] refused to write a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// Addresses are present but the transport is [`Transport::Unspec`]: §2.2 has no byte
    /// for that combination.
    UnspecTransportWithAddresses,
    /// The address block and TLVs exceed the 16-bit length field (or one TLV value does).
    TooLong {
        /// The length after the fixed part that would have been needed.
        len: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::UnspecTransportWithAddresses => {
                f.write_str("PROXY v2 header with addresses needs a stream or datagram transport")
            }
            EncodeError::TooLong { len } => {
                write!(f, "PROXY v2 header body of {len} bytes exceeds 65535")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// Parses a header at the start of `buf` with the [`DEFAULT_MAX_HEADER_LEN`] bound.
/// Called by the shell after each read until it returns `Complete` or an error.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    parse_with_limit(buf, DEFAULT_MAX_HEADER_LEN)
}

/// Parses a header at the start of `buf`, refusing any header whose total length (fixed
/// part included) exceeds `max_header_len`, itself clamped to
/// `FIXED_LEN..=MAX_HEADER_LEN_LIMIT`.
pub fn parse_with_limit(buf: &[u8], max_header_len: usize) -> Result<Parsed, ProxyError> {
    let max = max_header_len.clamp(FIXED_LEN, MAX_HEADER_LEN_LIMIT);
    let need_fixed = Ok(Parsed::Incomplete {
        needed_at_least: FIXED_LEN,
    });

    // §2.2: the signature. Check only the bytes that are there.
    for (offset, (&got, &want)) in buf.iter().zip(SIGNATURE.iter()).enumerate() {
        if got != want {
            let v1 = b"PROXY ";
            let seen = &buf[..buf.len().min(v1.len())];
            return Err(if v1.starts_with(seen) {
                ProxyError::Version1
            } else {
                ProxyError::BadSignature { offset }
            });
        }
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return need_fixed;
    };
    // §2.2: the high nibble is the version (2), the low nibble the command.
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadVersion(ver_cmd >> 4));
    }
    let command = match ver_cmd & 0x0f {
        0x0 => Command::Local,
        0x1 => Command::Proxy,
        other => return Err(ProxyError::BadCommand(other)),
    };
    let Some(&fam) = buf.get(13) else {
        return need_fixed;
    };
    // §2.2: only these seven values are defined; receivers must reject the others. LOCAL
    // headers must carry a defined byte too (strict: a sender emitting garbage here is
    // broken or hostile).
    let (family, transport) = match fam {
        0x00 => (Family::Unspec, Transport::Unspec),
        0x11 => (Family::Inet, Transport::Stream),
        0x12 => (Family::Inet, Transport::Dgram),
        0x21 => (Family::Inet6, Transport::Stream),
        0x22 => (Family::Inet6, Transport::Dgram),
        0x31 => (Family::Unix, Transport::Stream),
        0x32 => (Family::Unix, Transport::Dgram),
        other => return Err(ProxyError::BadFamily(other)),
    };
    let Some(&len_hi) = buf.get(14) else {
        return need_fixed;
    };
    // The high length byte alone may already break the bound.
    let at_least = FIXED_LEN + (usize::from(len_hi) << 8);
    if at_least > max {
        return Err(ProxyError::TooLong {
            total_len_at_least: at_least,
            max,
        });
    }
    let Some(&len_lo) = buf.get(15) else {
        return need_fixed;
    };
    let declared = u16::from_be_bytes([len_hi, len_lo]);
    let total = FIXED_LEN + usize::from(declared);
    if total > max {
        return Err(ProxyError::TooLong {
            total_len_at_least: total,
            max,
        });
    }
    let addr_len = family.address_len();
    if declared < addr_len {
        return Err(ProxyError::AddressBlockTooShort {
            declared,
            needed: addr_len,
        });
    }

    // TLVs (§2.2): walk their headers as far as the buffer goes, so a bad length is caught
    // before the rest arrives. Collect values only once the whole header is here.
    let complete = buf.len() >= total;
    let mut tlvs = Vec::new();
    let mut pos = FIXED_LEN + usize::from(addr_len);
    while pos < total {
        if pos + 3 > total {
            return Err(ProxyError::TlvTruncated { offset: pos });
        }
        let Some(tlv_header) = buf.get(pos..pos + 3) else {
            return Ok(Parsed::Incomplete {
                needed_at_least: total,
            });
        };
        let kind = tlv_header[0];
        let value_len = usize::from(u16::from_be_bytes([tlv_header[1], tlv_header[2]]));
        let end = pos + 3 + value_len;
        if end > total {
            return Err(ProxyError::TlvOverrun { kind, offset: pos });
        }
        if complete {
            tlvs.push(Tlv {
                kind,
                value: buf[pos + 3..end].to_vec(),
            });
        }
        pos = end;
    }
    if !complete {
        return Ok(Parsed::Incomplete {
            needed_at_least: total,
        });
    }

    let block = &buf[FIXED_LEN..FIXED_LEN + usize::from(addr_len)];
    let addresses = match family {
        Family::Unspec => ProxyAddresses::None,
        Family::Inet => ProxyAddresses::V4 {
            src: SocketAddrV4::new(ipv4_at(block, 0), port_at(block, 8)),
            dst: SocketAddrV4::new(ipv4_at(block, 4), port_at(block, 10)),
        },
        Family::Inet6 => ProxyAddresses::V6 {
            src: SocketAddrV6::new(ipv6_at(block, 0), port_at(block, 32), 0, 0),
            dst: SocketAddrV6::new(ipv6_at(block, 16), port_at(block, 34), 0, 0),
        },
        Family::Unix => ProxyAddresses::Unix {
            src: Box::new(array_at(block, 0)),
            dst: Box::new(array_at(block, UNIX_ADDR_LEN)),
        },
    };
    Ok(Parsed::Complete {
        header: ProxyHeader {
            command,
            transport,
            addresses,
            tlvs,
        },
        consumed: total,
    })
}

impl ProxyHeader {
    /// A PROXY/STREAM header for a TCP client `src` that connected to `dst`; what a pool
    /// configured to send PROXY v2 writes before the first client byte. When one address is
    /// IPv4 and the other IPv6, the IPv4 one is written IPv4-mapped (§2.2 needs one family).
    pub fn proxy(src: SocketAddr, dst: SocketAddr) -> ProxyHeader {
        let addresses = match (src, dst) {
            (SocketAddr::V4(src), SocketAddr::V4(dst)) => ProxyAddresses::V4 { src, dst },
            (src, dst) => ProxyAddresses::V6 {
                src: as_v6(src),
                dst: as_v6(dst),
            },
        };
        ProxyHeader {
            command: Command::Proxy,
            transport: Transport::Stream,
            addresses,
            tlvs: Vec::new(),
        }
    }

    /// A LOCAL header with no addresses, as a proxy sends on its own health checks.
    pub fn local() -> ProxyHeader {
        ProxyHeader {
            command: Command::Local,
            transport: Transport::Unspec,
            addresses: ProxyAddresses::None,
            tlvs: Vec::new(),
        }
    }

    /// Appends a TLV (builder style).
    pub fn with_tlv(mut self, kind: u8, value: Vec<u8>) -> ProxyHeader {
        self.tlvs.push(Tlv { kind, value });
        self
    }

    /// The real client address: `None` for LOCAL (§2.2: use the connection's own
    /// endpoints), for AF_UNSPEC and for AF_UNIX.
    pub fn source(&self) -> Option<SocketAddr> {
        self.ip_pair().map(|(src, _)| src)
    }

    /// The address the client connected to, with the same rules as [`ProxyHeader::source`].
    pub fn destination(&self) -> Option<SocketAddr> {
        self.ip_pair().map(|(_, dst)| dst)
    }

    /// The value of the first TLV of type `kind`, if any.
    pub fn tlv(&self, kind: u8) -> Option<&[u8]> {
        self.tlvs
            .iter()
            .find(|t| t.kind == kind)
            .map(|t| t.value.as_slice())
    }

    /// The number of bytes [`ProxyHeader::encode`] writes (when it succeeds).
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.body_len()
    }

    /// Appends the wire form to `out` and returns the bytes written; on error `out` is left
    /// untouched. An AF_UNSPEC header is always written with family byte 0x00.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
        let body_len = self.body_len();
        let declared = u16::try_from(body_len).map_err(|_| EncodeError::TooLong { len: body_len })?;
        if let Some(t) = self.tlvs.iter().find(|t| t.value.len() > usize::from(u16::MAX)) {
            return Err(EncodeError::TooLong { len: t.value.len() });
        }
        let transport_nibble = match self.transport {
            Transport::Unspec => 0x0,
            Transport::Stream => 0x1,
            Transport::Dgram => 0x2,
        };
        let fam = match (&self.addresses, transport_nibble) {
            (ProxyAddresses::None, _) => 0x00,
            (_, 0x0) => return Err(EncodeError::UnspecTransportWithAddresses),
            (ProxyAddresses::V4 { .. }, t) => 0x10 | t,
            (ProxyAddresses::V6 { .. }, t) => 0x20 | t,
            (ProxyAddresses::Unix { .. }, t) => 0x30 | t,
        };
        let ver_cmd = match self.command {
            Command::Local => 0x20,
            Command::Proxy => 0x21,
        };

        out.reserve(FIXED_LEN + body_len);
        out.extend_from_slice(&SIGNATURE);
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&declared.to_be_bytes());
        match &self.addresses {
            ProxyAddresses::None => {}
            ProxyAddresses::V4 { src, dst } => {
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
            }
            ProxyAddresses::V6 { src, dst } => {
                out.extend_from_slice(&src.ip().octets());
                out.extend_from_slice(&dst.ip().octets());
                out.extend_from_slice(&src.port().to_be_bytes());
                out.extend_from_slice(&dst.port().to_be_bytes());
            }
            ProxyAddresses::Unix { src, dst } => {
                out.extend_from_slice(&src[..]);
                out.extend_from_slice(&dst[..]);
            }
        }
        for tlv in &self.tlvs {
            out.push(tlv.kind);
            // Checked above: every value fits in u16.
            out.extend_from_slice(&(tlv.value.len() as u16).to_be_bytes());
            out.extend_from_slice(&tlv.value);
        }
        Ok(FIXED_LEN + body_len)
    }

    fn body_len(&self) -> usize {
        let addr_len = match self.addresses {
            ProxyAddresses::None => Family::Unspec,
            ProxyAddresses::V4 { .. } => Family::Inet,
            ProxyAddresses::V6 { .. } => Family::Inet6,
            ProxyAddresses::Unix { .. } => Family::Unix,
        }
        .address_len();
        usize::from(addr_len) + self.tlvs.iter().map(|t| 3 + t.value.len()).sum::<usize>()
    }

    fn ip_pair(&self) -> Option<(SocketAddr, SocketAddr)> {
        if self.command == Command::Local {
            return None;
        }
        match &self.addresses {
            ProxyAddresses::V4 { src, dst } => Some((SocketAddr::V4(*src), SocketAddr::V4(*dst))),
            ProxyAddresses::V6 { src, dst } => Some((SocketAddr::V6(*src), SocketAddr::V6(*dst))),
            ProxyAddresses::None | ProxyAddresses::Unix { .. } => None,
        }
    }
}

/// The address family nibble (§2.2), internal: the public view is [`ProxyAddresses`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

impl Family {
    /// Address block length (§2.2).
    fn address_len(self) -> u16 {
        match self {
            Family::Unspec => 0,
            Family::Inet => 12,
            Family::Inet6 => 36,
            Family::Unix => 216,
        }
    }
}

fn as_v6(addr: SocketAddr) -> SocketAddrV6 {
    match addr {
        SocketAddr::V4(a) => SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0),
        SocketAddr::V6(a) => SocketAddrV6::new(*a.ip(), a.port(), 0, 0),
    }
}

// The helpers below read from an address block whose length was checked against its
// family before they are called.

fn array_at<const N: usize>(block: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&block[at..at + N]);
    out
}

fn ipv4_at(block: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::from(array_at::<4>(block, at))
}

fn ipv6_at(block: &[u8], at: usize) -> Ipv6Addr {
    Ipv6Addr::from(array_at::<16>(block, at))
}

fn port_at(block: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(array_at::<2>(block, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// Builds a header by hand from the §2.2 layout, independent of `encode`.
    fn raw(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.push(ver_cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, consumed }) => (header, consumed),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    const V4_BODY: [u8; 12] = [
        192, 0, 2, 10, // src 192.0.2.10
        198, 51, 100, 1, // dst 198.51.100.1
        0xd4, 0x31, // src port 54321
        0x0d, 0x3d, // dst port 3389
    ];

    #[test]
    fn proxy_tcp4() {
        let mut buf = raw(0x21, 0x11, &V4_BODY);
        buf.extend_from_slice(b"\x03\x00\x00rdp-payload");
        let (h, consumed) = complete(&buf);
        assert_eq!(consumed, 28);
        assert_eq!(&buf[consumed..consumed + 3], b"\x03\x00\x00");
        assert_eq!(h.command, Command::Proxy);
        assert_eq!(h.transport, Transport::Stream);
        assert_eq!(h.source(), Some("192.0.2.10:54321".parse().unwrap()));
        assert_eq!(h.destination(), Some("198.51.100.1:3389".parse().unwrap()));
        assert!(h.tlvs.is_empty());
    }

    #[test]
    fn haproxy_capture_tcp4() {
        // A header HAProxy sent (`send-proxy-v2`), as shown in a hexdump in a public README:
        // 172.19.0.1:42578 -> 172.19.0.3:80.
        let buf = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c,
            0xac, 0x13, 0x00, 0x01, 0xac, 0x13, 0x00, 0x03, 0xa6, 0x52, 0x00, 0x50, b'G', b'E', b'T',
        ];
        let (h, consumed) = complete(&buf);
        assert_eq!(consumed, 28);
        assert_eq!(h.source(), Some("172.19.0.1:42578".parse().unwrap()));
        assert_eq!(h.destination(), Some("172.19.0.3:80".parse().unwrap()));
    }

    #[test]
    fn proxy_udp6_with_tlvs() {
        let mut body = Vec::new();
        body.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        body.extend_from_slice(&[0x01, 0xbb, 0x0d, 0x3d]);
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // ALPN "h2"
        body.extend_from_slice(&[0x03, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]); // CRC32C, opaque
        body.extend_from_slice(&[0xe0, 0x00, 0x00]); // custom, empty value
        body.extend_from_slice(&[0x01, 0x00, 0x01, b'x']); // duplicate kind kept
        let buf = raw(0x21, 0x22, &body);
        let (h, consumed) = complete(&buf);
        assert_eq!(consumed, buf.len());
        assert_eq!(h.transport, Transport::Dgram);
        assert_eq!(h.source(), Some("[2001:db8::1]:443".parse().unwrap()));
        assert_eq!(h.destination(), Some("[2001:db8::2]:3389".parse().unwrap()));
        assert_eq!(h.tlvs.len(), 4);
        assert_eq!(h.tlv(tlv_kind::ALPN), Some(&b"h2"[..]));
        assert_eq!(h.tlv(tlv_kind::CRC32C), Some(&[0xde, 0xad, 0xbe, 0xef][..]));
        assert_eq!(h.tlv(tlv_kind::CUSTOM_MIN), Some(&[][..]));
        assert_eq!(h.tlv(tlv_kind::SSL), None);
        assert_eq!(h.tlvs[3].value, b"x");
    }

    #[test]
    fn local_unspec_and_local_with_addresses() {
        let (h, consumed) = complete(&raw(0x20, 0x00, &[]));
        assert_eq!(consumed, 16);
        assert_eq!(h, ProxyHeader::local());
        assert_eq!(h.source(), None);

        // LOCAL may carry a family and addresses; they are kept but not reported (§2.2).
        let mut body = V4_BODY.to_vec();
        body.extend_from_slice(&[0x04, 0x00, 0x02, 0, 0]); // NOOP
        let (h, _) = complete(&raw(0x20, 0x11, &body));
        assert_eq!(h.command, Command::Local);
        assert!(matches!(h.addresses, ProxyAddresses::V4 { .. }));
        assert_eq!(h.source(), None);
        assert_eq!(h.tlv(tlv_kind::NOOP), Some(&[0, 0][..]));
    }

    #[test]
    fn unspec_with_tlvs_and_unix() {
        let (h, _) = complete(&raw(0x21, 0x00, &[0x05, 0x00, 0x03, 1, 2, 3]));
        assert_eq!(h.addresses, ProxyAddresses::None);
        assert_eq!(h.source(), None);
        assert_eq!(h.tlv(tlv_kind::UNIQUE_ID), Some(&[1, 2, 3][..]));

        let mut body = vec![0u8; 216];
        body[..9].copy_from_slice(b"/run/a.sk");
        body[108..117].copy_from_slice(b"/run/b.sk");
        let (h, consumed) = complete(&raw(0x21, 0x31, &body));
        assert_eq!(consumed, 232);
        match &h.addresses {
            ProxyAddresses::Unix { src, dst } => {
                assert_eq!(&src[..9], b"/run/a.sk");
                assert_eq!(&dst[..9], b"/run/b.sk");
                assert!(src[9..].iter().all(|&b| b == 0));
            }
            other => panic!("expected unix addresses, got {other:?}"),
        }
        assert_eq!(h.source(), None);
    }

    #[test]
    fn address_block_may_be_followed_by_nothing_else_or_tlvs_only() {
        // Body exactly the address block plus one zero-length TLV at the very end.
        let mut body = V4_BODY.to_vec();
        body.extend_from_slice(&[0xee, 0x00, 0x00]);
        let (h, consumed) = complete(&raw(0x21, 0x11, &body));
        assert_eq!(consumed, 31);
        assert_eq!(h.tlv(0xee), Some(&[][..]));
    }

    #[test]
    fn incomplete_reports_what_it_needs() {
        let buf = raw(0x21, 0x11, &V4_BODY);
        assert_eq!(parse(&[]), Ok(Parsed::Incomplete { needed_at_least: 16 }));
        assert_eq!(parse(&buf[..5]), Ok(Parsed::Incomplete { needed_at_least: 16 }));
        assert_eq!(parse(&buf[..15]), Ok(Parsed::Incomplete { needed_at_least: 16 }));
        assert_eq!(parse(&buf[..16]), Ok(Parsed::Incomplete { needed_at_least: 28 }));
        assert_eq!(parse(&buf[..27]), Ok(Parsed::Incomplete { needed_at_least: 28 }));
    }

    #[test]
    fn signature_errors_are_immediate() {
        assert_eq!(parse(&[0x0d, 0x0b]), Err(ProxyError::BadSignature { offset: 1 }));
        assert_eq!(
            parse(b"\x16\x03\x01"),
            Err(ProxyError::BadSignature { offset: 0 })
        );
        // An RDP client talking straight to a PROXY-expecting listener (TPKT header).
        assert_eq!(parse(&[0x03, 0x00]), Err(ProxyError::BadSignature { offset: 0 }));
        let mut buf = raw(0x21, 0x11, &V4_BODY);
        buf[11] = b'X';
        assert_eq!(parse(&buf[..12]), Err(ProxyError::BadSignature { offset: 11 }));
        assert_eq!(parse(&buf), Err(ProxyError::BadSignature { offset: 11 }));
    }

    #[test]
    fn version_1_is_named() {
        assert_eq!(parse(b"P"), Err(ProxyError::Version1));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(ProxyError::Version1)
        );
        assert_eq!(parse(b"PRX"), Err(ProxyError::BadSignature { offset: 0 }));
        assert_eq!(
            parse(b"POST / HTTP/1.1"),
            Err(ProxyError::BadSignature { offset: 0 })
        );
    }

    #[test]
    fn bad_version_command_family() {
        let mut buf = SIGNATURE.to_vec();
        buf.push(0x11);
        assert_eq!(parse(&buf), Err(ProxyError::BadVersion(1)));
        buf[12] = 0x31;
        assert_eq!(parse(&buf), Err(ProxyError::BadVersion(3)));
        buf[12] = 0x22;
        assert_eq!(parse(&buf), Err(ProxyError::BadCommand(2)));
        buf[12] = 0x2f;
        assert_eq!(parse(&buf), Err(ProxyError::BadCommand(0xf)));
        buf[12] = 0x21;
        for fam in [0x01, 0x10, 0x13, 0x20, 0x23, 0x30, 0x40, 0x41, 0xff] {
            let mut b = buf.clone();
            b.push(fam);
            assert_eq!(parse(&b), Err(ProxyError::BadFamily(fam)), "fam {fam:#x}");
        }
        // Strict for LOCAL too.
        assert_eq!(parse(&raw(0x20, 0x13, &[])), Err(ProxyError::BadFamily(0x13)));
    }

    #[test]
    fn length_bounds() {
        // High length byte alone is enough to refuse: 16 + 0x0300 > 536.
        let mut buf = SIGNATURE.to_vec();
        buf.extend_from_slice(&[0x21, 0x11, 0x03]);
        assert_eq!(
            parse(&buf),
            Err(ProxyError::TooLong {
                total_len_at_least: 16 + 0x300,
                max: 536
            })
        );
        // 16 + 0x0209 = 537: refused only once the low byte arrives.
        buf[14] = 0x02;
        assert!(matches!(parse(&buf), Ok(Parsed::Incomplete { .. })));
        buf.push(0x09);
        assert_eq!(
            parse(&buf),
            Err(ProxyError::TooLong {
                total_len_at_least: 537,
                max: 536
            })
        );
        // Exactly at the bound is fine.
        let body = vec![0u8; 520];
        let mut tlv_body = vec![0x04, 0x02, 0x05];
        tlv_body.extend_from_slice(&body[..517]);
        let at_bound = raw(0x21, 0x00, &tlv_body);
        assert_eq!(at_bound.len(), 536);
        assert!(matches!(
            parse(&at_bound),
            Ok(Parsed::Complete { consumed: 536, .. })
        ));
        // The limit is configurable and clamped; 16 + 0x0200 already breaks a 100-byte one.
        assert_eq!(
            parse_with_limit(&at_bound, 100),
            Err(ProxyError::TooLong {
                total_len_at_least: 528,
                max: 100
            })
        );
        assert!(matches!(
            parse_with_limit(&at_bound, 4096),
            Ok(Parsed::Complete { .. })
        ));
        let huge = raw(0x21, 0x00, &[0u8; 0]);
        let mut huge = huge[..14].to_vec();
        huge.extend_from_slice(&[0xff, 0xff]);
        assert_eq!(
            parse_with_limit(&huge, usize::MAX),
            Err(ProxyError::TooLong {
                total_len_at_least: 16 + 0xff00,
                max: MAX_HEADER_LEN_LIMIT
            })
        );
    }

    #[test]
    fn address_block_too_short() {
        assert_eq!(
            parse(&raw(0x21, 0x11, &V4_BODY[..11])),
            Err(ProxyError::AddressBlockTooShort {
                declared: 11,
                needed: 12
            })
        );
        // Detected from the length field, before any address byte arrives.
        let buf = raw(0x21, 0x21, &[0u8; 35]);
        assert_eq!(
            parse(&buf[..16]),
            Err(ProxyError::AddressBlockTooShort {
                declared: 35,
                needed: 36
            })
        );
        assert_eq!(
            parse(&raw(0x21, 0x31, &[0u8; 215])),
            Err(ProxyError::AddressBlockTooShort {
                declared: 215,
                needed: 216
            })
        );
    }

    #[test]
    fn tlv_errors() {
        let mut body = V4_BODY.to_vec();
        body.extend_from_slice(&[0x01, 0x00]); // two bytes: no room for a TLV header
        assert_eq!(
            parse(&raw(0x21, 0x11, &body)),
            Err(ProxyError::TlvTruncated { offset: 28 })
        );

        let mut body = V4_BODY.to_vec();
        body.extend_from_slice(&[0x02, 0x00, 0x05, b'a', b'b']); // claims 5, has 2
        let buf = raw(0x21, 0x11, &body);
        assert_eq!(
            parse(&buf),
            Err(ProxyError::TlvOverrun {
                kind: 0x02,
                offset: 28
            })
        );
        // Caught as soon as the TLV length is in, before the (never coming) value.
        assert_eq!(
            parse(&buf[..31]),
            Err(ProxyError::TlvOverrun {
                kind: 0x02,
                offset: 28
            })
        );

        // Second TLV overruns after a good one.
        let mut body = vec![0x03, 0x00, 0x04, 1, 2, 3, 4, 0x20, 0x00, 0x10, 0];
        body.push(0);
        assert_eq!(
            parse(&raw(0x21, 0x00, &body)),
            Err(ProxyError::TlvOverrun {
                kind: 0x20,
                offset: 23
            })
        );
    }

    #[test]
    fn reasons_are_distinct_and_display_is_useful() {
        let all = [
            ProxyError::Version1,
            ProxyError::BadSignature { offset: 3 },
            ProxyError::BadVersion(1),
            ProxyError::BadCommand(2),
            ProxyError::BadFamily(0x13),
            ProxyError::TooLong {
                total_len_at_least: 600,
                max: 536,
            },
            ProxyError::AddressBlockTooShort {
                declared: 4,
                needed: 12,
            },
            ProxyError::TlvTruncated { offset: 30 },
            ProxyError::TlvOverrun { kind: 1, offset: 30 },
        ];
        let mut reasons: Vec<_> = all.iter().map(ProxyError::reason).collect();
        assert!(reasons.iter().all(|r| r
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())));
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), all.len());
        assert!(all[5].to_string().contains("600"));
        assert!(all[4].to_string().contains("0x13"));
    }

    #[test]
    fn encode_matches_hand_built_bytes() {
        let h = ProxyHeader::proxy(
            "192.0.2.10:54321".parse().unwrap(),
            "198.51.100.1:3389".parse().unwrap(),
        );
        let mut out = b"prefix".to_vec();
        assert_eq!(h.encode(&mut out), Ok(28));
        assert_eq!(&out[6..], raw(0x21, 0x11, &V4_BODY).as_slice());
        assert_eq!(h.encoded_len(), 28);

        let mut out = Vec::new();
        ProxyHeader::local().encode(&mut out).unwrap();
        assert_eq!(out, raw(0x20, 0x00, &[]));

        let h = ProxyHeader::local().with_tlv(tlv_kind::CUSTOM_MIN, b"/gw".to_vec());
        let mut out = Vec::new();
        h.encode(&mut out).unwrap();
        assert_eq!(out, raw(0x20, 0x00, &[0xe0, 0, 3, b'/', b'g', b'w']));
    }

    #[test]
    fn proxy_maps_mixed_families_to_v6() {
        let h = ProxyHeader::proxy(
            "192.0.2.10:5000".parse().unwrap(),
            "[2001:db8::2]:3389".parse().unwrap(),
        );
        assert_eq!(h.source(), Some("[::ffff:192.0.2.10]:5000".parse().unwrap()));
        assert_eq!(h.destination(), Some("[2001:db8::2]:3389".parse().unwrap()));
        let h = ProxyHeader::proxy(
            "[2001:db8::1]:5000".parse().unwrap(),
            "10.0.0.1:3389".parse().unwrap(),
        );
        assert_eq!(h.destination(), Some("[::ffff:10.0.0.1]:3389".parse().unwrap()));
        let mut out = Vec::new();
        h.encode(&mut out).unwrap();
        assert_eq!(out[13], 0x21);
        assert_eq!(out.len(), 52);
    }

    #[test]
    fn encode_errors_leave_output_untouched() {
        let mut h = ProxyHeader::proxy(
            "192.0.2.10:5000".parse().unwrap(),
            "192.0.2.11:3389".parse().unwrap(),
        );
        h.transport = Transport::Unspec;
        let mut out = vec![7];
        assert_eq!(h.encode(&mut out), Err(EncodeError::UnspecTransportWithAddresses));
        assert_eq!(out, vec![7]);

        let h = ProxyHeader::local().with_tlv(0xe1, vec![0; 65_536]);
        assert!(matches!(h.encode(&mut out), Err(EncodeError::TooLong { .. })));
        let h = ProxyHeader::local()
            .with_tlv(0xe1, vec![0; 40_000])
            .with_tlv(0xe2, vec![0; 40_000]);
        assert_eq!(h.encode(&mut out), Err(EncodeError::TooLong { len: 80_006 }));
        assert_eq!(out, vec![7]);
    }

    fn arb_addresses() -> impl Strategy<Value = (Transport, ProxyAddresses)> {
        let transport = prop_oneof![Just(Transport::Stream), Just(Transport::Dgram)];
        prop_oneof![
            Just((Transport::Unspec, ProxyAddresses::None)),
            (transport.clone(), any::<[u8; 12]>()).prop_map(|(t, b)| (
                t,
                ProxyAddresses::V4 {
                    src: SocketAddrV4::new(ipv4_at(&b, 0), port_at(&b, 8)),
                    dst: SocketAddrV4::new(ipv4_at(&b, 4), port_at(&b, 10)),
                }
            )),
            (
                transport.clone(),
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<(u16, u16)>()
            )
                .prop_map(|(t, s, d, (sp, dp))| (
                    t,
                    ProxyAddresses::V6 {
                        src: SocketAddrV6::new(Ipv6Addr::from(s), sp, 0, 0),
                        dst: SocketAddrV6::new(Ipv6Addr::from(d), dp, 0, 0),
                    }
                )),
            (transport, proptest::collection::vec(any::<u8>(), 216)).prop_map(|(t, b)| (
                t,
                ProxyAddresses::Unix {
                    src: Box::new(array_at(&b, 0)),
                    dst: Box::new(array_at(&b, 108)),
                }
            )),
        ]
    }

    fn arb_header() -> impl Strategy<Value = ProxyHeader> {
        (
            prop_oneof![Just(Command::Local), Just(Command::Proxy)],
            arb_addresses(),
            proptest::collection::vec(
                (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..200))
                    .prop_map(|(kind, value)| Tlv { kind, value }),
                0..8,
            ),
        )
            .prop_map(|(command, (transport, addresses), tlvs)| ProxyHeader {
                command,
                transport,
                addresses,
                tlvs,
            })
            .prop_filter("fits the largest accepted bound", |h| {
                h.encoded_len() <= MAX_HEADER_LEN_LIMIT
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_random_bytes(buf in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse(&buf);
            let _ = parse_with_limit(&buf, MAX_HEADER_LEN_LIMIT);
        }

        #[test]
        fn parse_never_panics_after_a_valid_signature(
            tail in proptest::collection::vec(any::<u8>(), 0..700),
            ver_cmd in prop_oneof![Just(0x20u8), Just(0x21u8), any::<u8>()],
            fam in prop_oneof![Just(0x00u8), Just(0x11), Just(0x21), Just(0x31), any::<u8>()],
        ) {
            let mut buf = SIGNATURE.to_vec();
            buf.push(ver_cmd);
            buf.push(fam);
            buf.extend_from_slice(&tail);
            match parse_with_limit(&buf, MAX_HEADER_LEN_LIMIT) {
                Ok(Parsed::Complete { consumed, .. }) => prop_assert!(consumed <= buf.len()),
                Ok(Parsed::Incomplete { needed_at_least }) => prop_assert!(needed_at_least > buf.len()),
                Err(_) => {}
            }
        }

        #[test]
        fn encode_then_parse_round_trips(h in arb_header(), trailing in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = Vec::new();
            let written = h.encode(&mut buf).unwrap();
            prop_assert_eq!(written, buf.len());
            prop_assert_eq!(written, h.encoded_len());
            buf.extend_from_slice(&trailing);
            let parsed = parse_with_limit(&buf, MAX_HEADER_LEN_LIMIT).unwrap();
            prop_assert_eq!(parsed, Parsed::Complete { header: h, consumed: written });
        }

        #[test]
        fn every_prefix_of_a_valid_header_is_incomplete(h in arb_header()) {
            let mut buf = Vec::new();
            h.encode(&mut buf).unwrap();
            for cut in 0..buf.len() {
                match parse_with_limit(&buf[..cut], MAX_HEADER_LEN_LIMIT) {
                    Ok(Parsed::Incomplete { needed_at_least }) => {
                        prop_assert!(needed_at_least > cut && needed_at_least <= buf.len());
                    }
                    other => prop_assert!(false, "prefix {} of {}: {:?}", cut, buf.len(), other),
                }
            }
        }

        #[test]
        fn a_corrupted_signature_byte_is_caught_in_any_prefix(pos in 0usize..12, byte in any::<u8>(), extra in 0usize..20) {
            prop_assume!(byte != SIGNATURE[pos]);
            let mut buf = raw(0x21, 0x11, &V4_BODY);
            buf[pos] = byte;
            let cut = (pos + 1 + extra).min(buf.len());
            match parse(&buf[..cut]) {
                Err(ProxyError::BadSignature { offset }) => prop_assert_eq!(offset, pos),
                Err(ProxyError::Version1) => prop_assert!(pos == 0 && byte == b'P'),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
