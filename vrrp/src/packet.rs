//! VRRP advertisement wire format: encode and decode VRRPv3 (RFC 5798 / RFC 9568) and VRRPv2
//! (RFC 3768) messages, the IPv4 header around them, and their checksums.
//!
//! Owns bytes only: no sockets, no clocks, no instance state. Checks that need the local
//! configuration (VRID, configured version, v2 interval match) belong to
//! [`crate::instance`]; they still report through [`DecodeError`] so every dropped packet is
//! counted under one list of reasons.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP (RFC 5798 §5.1.1.4).
pub const IPPROTO_VRRP: u8 = 112;
/// IPv4 multicast group adverts go to (RFC 5798 §5.1.1.2).
pub const VRRP_MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group adverts go to (RFC 5798 §5.1.2.2).
pub const VRRP_MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// The only TTL / hop limit a valid advert may carry (RFC 5798 §5.1.1.3).
pub const VRRP_TTL: u8 = 255;
/// Largest IPv4 datagram this crate will parse; a raw socket read buffer of this size is enough.
/// 20..60 bytes of IP header + 8 + 255 * 16 bytes of addresses + 8 bytes of v2 auth data.
pub const MAX_DATAGRAM_LEN: usize = 60 + 8 + 255 * 16 + 8;

/// Fixed part of a VRRP message before the address list (RFC 5798 §5.1, RFC 3768 §5.1).
const HEADER_LEN: usize = 8;
/// VRRPv2 trailing authentication data, always zero with auth type 0 (RFC 3768 §5.3.10).
const V2_AUTH_LEN: usize = 8;
/// The only packet type defined (RFC 5798 §5.2.2).
const TYPE_ADVERTISEMENT: u8 = 1;

/// VRRP protocol version of a message or an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// RFC 3768: IPv4 only, interval in whole seconds, checksum over the message only.
    V2,
    /// RFC 5798 / RFC 9568: interval in centiseconds, IPv4 and IPv6.
    V3,
}

impl Version {
    /// The number in the high nibble of the first byte.
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// Address family of a VRRP instance; every address in one advert has this family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 adverts, 4-byte addresses.
    Ipv4,
    /// IPv6 adverts, 16-byte addresses (v3 only).
    Ipv6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// Bytes per address in the advert's address list.
    pub fn address_len(self) -> usize {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 16,
        }
    }
}

/// Which checksum form a VRRPv3 message over IPv4 uses. VRRPv2 always sums the message only
/// and VRRPv3 over IPv6 always includes the IPv6 pseudo-header; this only matters for v3/IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChecksumMode {
    /// Include the IPv4 pseudo-header (RFC 5798 §5.2.8 as keepalived and FRR read it; they reject
    /// the other form). The default, so keepalived peers accept us.
    #[default]
    PseudoHeader,
    /// Sum the VRRP message only (RFC 9568 §5.2.8 for IPv4, some vendors).
    MessageOnly,
}

/// Which v3/IPv4 checksum forms a receiver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChecksumAccept {
    /// Only the IPv4 pseudo-header form (keepalived's behaviour; the default).
    #[default]
    PseudoHeader,
    /// Only the message-only form.
    MessageOnly,
    /// Either form; for mixed fleets during a migration.
    Either,
}

impl ChecksumAccept {
    /// Accept exactly the form this node transmits.
    pub fn same_as(mode: ChecksumMode) -> ChecksumAccept {
        match mode {
            ChecksumMode::PseudoHeader => ChecksumAccept::PseudoHeader,
            ChecksumMode::MessageOnly => ChecksumAccept::MessageOnly,
        }
    }
}

/// One VRRP advertisement, version-independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Message version.
    pub version: Version,
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Sender priority; 0 means "the master is leaving", 255 "address owner".
    pub priority: u8,
    /// Advertisement interval in centiseconds. v3: the 12-bit field (1..=4095). v2: the
    /// seconds field times 100, so it is always a multiple of 100.
    pub interval_cs: u16,
    /// Virtual addresses, all of one family.
    pub addresses: Vec<IpAddr>,
}

/// Why a received packet was dropped. Every variant has a stable metric label from
/// [`DecodeError::reason`]; the instance-level checks (VRID, version, v2 interval, own packet,
/// unknown unicast peer) are here too so one counter set covers every drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Fewer bytes than the headers or the address list need.
    Truncated,
    /// Not an IPv4 header (version nibble) or IHL below 5.
    BadIpHeader,
    /// IP protocol is not 112.
    NotVrrp,
    /// TTL / hop limit is not 255 (RFC 5798 §7.1): the packet crossed a router.
    BadTtl,
    /// Version nibble is neither 2 nor 3, or v2 over IPv6.
    BadVersion,
    /// Type nibble is not 1 (advertisement).
    BadType,
    /// Checksum does not verify in any accepted form.
    BadChecksum,
    /// Advertisement interval of 0.
    ZeroInterval,
    /// Count of addresses is 0.
    NoAddresses,
    /// Count of addresses disagrees with the message length.
    AddressCountMismatch,
    /// VRRPv2 authentication type other than 0 (RFC 3768 §5.3.6 leaves only 0 in use).
    BadAuthType,
    /// No local instance has this VRID on the interface.
    WrongVrid,
    /// Message version differs from the instance's configured version.
    VersionMismatch,
    /// VRRPv2 advert with another interval than ours (RFC 3768 §7.1 requires a drop).
    IntervalMismatch,
    /// Our own advert looped back.
    OwnAdvert,
    /// Unicast mode: the sender is not a configured peer.
    UnknownPeer,
    /// The advert's address family differs from the instance's.
    WrongFamily,
}

impl DecodeError {
    /// Every reason, in a fixed order; counters index by position in this list.
    pub const ALL: [DecodeError; 17] = [
        DecodeError::Truncated,
        DecodeError::BadIpHeader,
        DecodeError::NotVrrp,
        DecodeError::BadTtl,
        DecodeError::BadVersion,
        DecodeError::BadType,
        DecodeError::BadChecksum,
        DecodeError::ZeroInterval,
        DecodeError::NoAddresses,
        DecodeError::AddressCountMismatch,
        DecodeError::BadAuthType,
        DecodeError::WrongVrid,
        DecodeError::VersionMismatch,
        DecodeError::IntervalMismatch,
        DecodeError::OwnAdvert,
        DecodeError::UnknownPeer,
        DecodeError::WrongFamily,
    ];

    /// Stable metric label, e.g. `vrrp_dropped_total{reason="bad_ttl"}`. Never rename one.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::BadIpHeader => "bad_ip_header",
            DecodeError::NotVrrp => "not_vrrp",
            DecodeError::BadTtl => "bad_ttl",
            DecodeError::BadVersion => "bad_version",
            DecodeError::BadType => "bad_type",
            DecodeError::BadChecksum => "bad_checksum",
            DecodeError::ZeroInterval => "zero_interval",
            DecodeError::NoAddresses => "no_addresses",
            DecodeError::AddressCountMismatch => "address_count_mismatch",
            DecodeError::BadAuthType => "bad_auth_type",
            DecodeError::WrongVrid => "wrong_vrid",
            DecodeError::VersionMismatch => "version_mismatch",
            DecodeError::IntervalMismatch => "interval_mismatch",
            DecodeError::OwnAdvert => "own_advert",
            DecodeError::UnknownPeer => "unknown_peer",
            DecodeError::WrongFamily => "wrong_family",
        }
    }

    /// Position in [`DecodeError::ALL`].
    pub fn index(&self) -> usize {
        // Invariant: ALL lists every variant, so the search always succeeds.
        DecodeError::ALL
            .iter()
            .position(|e| e == self)
            .expect("DecodeError::ALL lists every variant")
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for DecodeError {}

/// Why an [`Advert`] cannot be encoded. These are local bugs or config mistakes, never input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// Zero or more than 255 addresses.
    AddressCount,
    /// An address, the source or the destination is of another family than the first address.
    MixedFamilies,
    /// Interval 0, above 4095 cs (v3), or not whole seconds in 1..=255 (v2).
    Interval,
    /// VRRPv2 over IPv6 does not exist.
    V2OverIpv6,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EncodeError::AddressCount => "advert needs 1..=255 addresses",
            EncodeError::MixedFamilies => "advert mixes IPv4 and IPv6 addresses",
            EncodeError::Interval => "advert interval out of range for the version",
            EncodeError::V2OverIpv6 => "VRRPv2 carries IPv4 only",
        })
    }
}

impl std::error::Error for EncodeError {}

/// The endpoints of a message, needed for pseudo-header checksums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// IP source address (the sender's primary address).
    pub src: IpAddr,
    /// IP destination (the multicast group, or a unicast peer).
    pub dst: IpAddr,
}

impl Advert {
    /// The address family, taken from the first address (IPv4 when empty).
    pub fn family(&self) -> Family {
        self.addresses.first().map(Family::of).unwrap_or(Family::Ipv4)
    }

    /// Serialize to a VRRP message (no IP header). `mode` picks the v3/IPv4 checksum form and
    /// is ignored otherwise.
    pub fn encode(&self, ends: Endpoints, mode: ChecksumMode) -> Result<Vec<u8>, EncodeError> {
        let family = self.family();
        if self.addresses.is_empty() || self.addresses.len() > 255 {
            return Err(EncodeError::AddressCount);
        }
        if self.addresses.iter().any(|a| Family::of(a) != family)
            || Family::of(&ends.src) != family
            || Family::of(&ends.dst) != family
        {
            return Err(EncodeError::MixedFamilies);
        }
        let mut out =
            Vec::with_capacity(HEADER_LEN + self.addresses.len() * family.address_len() + V2_AUTH_LEN);
        out.push((self.version.number() << 4) | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(self.addresses.len() as u8);
        match self.version {
            Version::V3 => {
                // RFC 5798 §5.2.7: 4 reserved bits, 12-bit max advert interval in cs.
                if self.interval_cs == 0 || self.interval_cs > 0x0fff {
                    return Err(EncodeError::Interval);
                }
                out.extend_from_slice(&self.interval_cs.to_be_bytes());
            }
            Version::V2 => {
                if family == Family::Ipv6 {
                    return Err(EncodeError::V2OverIpv6);
                }
                // RFC 3768 §5.3.6-5.3.7: auth type 0, interval in whole seconds.
                let secs = self.interval_cs / 100;
                if !self.interval_cs.is_multiple_of(100) || secs == 0 || secs > 255 {
                    return Err(EncodeError::Interval);
                }
                out.push(0);
                out.push(secs as u8);
            }
        }
        out.extend_from_slice(&[0, 0]);
        for addr in &self.addresses {
            match addr {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
        if self.version == Version::V2 {
            out.extend_from_slice(&[0; V2_AUTH_LEN]);
        }
        let sum = message_checksum(&out, self.version, ends, mode);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    /// Parse and verify a VRRP message (the IP payload). `ends` are the IP addresses the
    /// message arrived with; `accept` says which v3/IPv4 checksum forms are valid.
    pub fn decode(msg: &[u8], ends: Endpoints, accept: ChecksumAccept) -> Result<Advert, DecodeError> {
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::Truncated);
        }
        let family = Family::of(&ends.src);
        let version = match msg[0] >> 4 {
            2 if family == Family::Ipv4 => Version::V2,
            3 => Version::V3,
            _ => return Err(DecodeError::BadVersion),
        };
        if msg[0] & 0x0f != TYPE_ADVERTISEMENT {
            return Err(DecodeError::BadType);
        }
        let vrid = msg[1];
        let priority = msg[2];
        let count = msg[3] as usize;
        let trailer = match version {
            Version::V2 => V2_AUTH_LEN,
            Version::V3 => 0,
        };
        let needed = HEADER_LEN + count * family.address_len() + trailer;
        if msg.len() < needed {
            return Err(DecodeError::Truncated);
        }
        if msg.len() != needed {
            // RFC 5798 §7.1: the length must match the count of addresses.
            return Err(DecodeError::AddressCountMismatch);
        }
        if !checksum_ok(msg, version, ends, accept) {
            return Err(DecodeError::BadChecksum);
        }
        let interval_cs = match version {
            Version::V3 => u16::from_be_bytes([msg[4], msg[5]]) & 0x0fff,
            Version::V2 => {
                if msg[4] != 0 {
                    return Err(DecodeError::BadAuthType);
                }
                u16::from(msg[5]) * 100
            }
        };
        if interval_cs == 0 {
            return Err(DecodeError::ZeroInterval);
        }
        if count == 0 {
            return Err(DecodeError::NoAddresses);
        }
        let addresses = msg[HEADER_LEN..HEADER_LEN + count * family.address_len()]
            .chunks_exact(family.address_len())
            .map(|c| match family {
                Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3])),
                Family::Ipv6 => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(c);
                    IpAddr::V6(Ipv6Addr::from(b))
                }
            })
            .collect();
        Ok(Advert {
            version,
            vrid,
            priority,
            interval_cs,
            addresses,
        })
    }
}

/// An IPv4 datagram carrying VRRP, as read from a raw socket (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Datagram<'a> {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Time to live as received.
    pub ttl: u8,
    /// The VRRP message, cut to the header's total length.
    pub payload: &'a [u8],
}

/// Parse an IPv4 header read from a raw socket: honour IHL (options allowed), cut the payload to
/// the total length, require protocol 112 and TTL 255 (RFC 5798 §7.1). The header checksum is
/// left to the kernel, which already verified it.
pub fn parse_ipv4(buf: &[u8]) -> Result<Ipv4Datagram<'_>, DecodeError> {
    if buf.len() < 20 {
        return Err(DecodeError::Truncated);
    }
    if buf[0] >> 4 != 4 {
        return Err(DecodeError::BadIpHeader);
    }
    let ihl = usize::from(buf[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(DecodeError::BadIpHeader);
    }
    let total = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if total < ihl {
        return Err(DecodeError::BadIpHeader);
    }
    if buf.len() < total {
        return Err(DecodeError::Truncated);
    }
    if buf[9] != IPPROTO_VRRP {
        return Err(DecodeError::NotVrrp);
    }
    let ttl = buf[8];
    if ttl != VRRP_TTL {
        return Err(DecodeError::BadTtl);
    }
    Ok(Ipv4Datagram {
        src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
        dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
        ttl,
        payload: &buf[ihl..total],
    })
}

/// A decoded advert with the addresses it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// IP source (the sender's primary address; the tie-break key).
    pub from: IpAddr,
    /// IP destination (multicast group or our unicast address).
    pub to: IpAddr,
    /// The advert.
    pub advert: Advert,
}

/// Parse a whole IPv4 datagram from a raw socket: IP header checks, then the VRRP message.
pub fn decode_ipv4_datagram(buf: &[u8], accept: ChecksumAccept) -> Result<Received, DecodeError> {
    let dgram = parse_ipv4(buf)?;
    let ends = Endpoints {
        src: IpAddr::V4(dgram.src),
        dst: IpAddr::V4(dgram.dst),
    };
    let advert = Advert::decode(dgram.payload, ends, accept)?;
    Ok(Received {
        from: ends.src,
        to: ends.dst,
        advert,
    })
}

/// Ones' complement sum folded to 16 bits, over `data` padded with a zero byte if odd.
fn sum_words(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Internet checksum (RFC 1071) of `msg` with the field at 6..8 treated as zero, optionally
/// preceded by the IPv4 or IPv6 pseudo-header.
fn checksum_with(msg: &[u8], pseudo: Option<Endpoints>) -> u16 {
    let mut acc = 0u32;
    if let Some(ends) = pseudo {
        acc = match (ends.src, ends.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                // RFC 768-style pseudo-header: src, dst, zero, protocol, length.
                let acc = sum_words(acc, &s.octets());
                let acc = sum_words(acc, &d.octets());
                acc + u32::from(IPPROTO_VRRP) + msg.len() as u32
            }
            (s, d) => {
                // RFC 8200 §8.1: src, dst, 32-bit length, 3 zero bytes, next header.
                let acc = sum_words(acc, &ip_octets(s));
                let acc = sum_words(acc, &ip_octets(d));
                let len = msg.len() as u32;
                acc + (len >> 16) + (len & 0xffff) + u32::from(IPPROTO_VRRP)
            }
        };
    }
    acc = sum_words(acc, &msg[..6]);
    acc = sum_words(acc, &msg[8..]);
    !fold(acc)
}

fn ip_octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The checksum a sender puts in the message (RFC 3768 §5.3.8, RFC 5798 §5.2.8, RFC 9568 §5.2.8).
fn message_checksum(msg: &[u8], version: Version, ends: Endpoints, mode: ChecksumMode) -> u16 {
    match (version, Family::of(&ends.src), mode) {
        (Version::V2, _, _) => checksum_with(msg, None),
        (Version::V3, Family::Ipv6, _) => checksum_with(msg, Some(ends)),
        (Version::V3, Family::Ipv4, ChecksumMode::PseudoHeader) => checksum_with(msg, Some(ends)),
        (Version::V3, Family::Ipv4, ChecksumMode::MessageOnly) => checksum_with(msg, None),
    }
}

fn checksum_ok(msg: &[u8], version: Version, ends: Endpoints, accept: ChecksumAccept) -> bool {
    let got = u16::from_be_bytes([msg[6], msg[7]]);
    let pseudo = || checksum_with(msg, Some(ends)) == got;
    let plain = || checksum_with(msg, None) == got;
    match (version, Family::of(&ends.src), accept) {
        (Version::V2, _, _) => plain(),
        (Version::V3, Family::Ipv6, _) => pseudo(),
        (Version::V3, Family::Ipv4, ChecksumAccept::PseudoHeader) => pseudo(),
        (Version::V3, Family::Ipv4, ChecksumAccept::MessageOnly) => plain(),
        (Version::V3, Family::Ipv4, ChecksumAccept::Either) => pseudo() || plain(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Captured from keepalived 2.2.7 (wire-notes.md, VRRP section).
    const KEEPALIVED_V3: [u8; 12] = [
        0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x42, 0xad, 0x0a, 0x63, 0x00, 0x64,
    ];
    const KEEPALIVED_V2: [u8; 20] = [
        0x21, 0x33, 0x96, 0x01, 0x00, 0x01, 0x3e, 0x03, 0x0a, 0x63, 0x00, 0x64, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn mcast_from(src: IpAddr) -> Endpoints {
        Endpoints {
            src,
            dst: IpAddr::V4(VRRP_MULTICAST_V4),
        }
    }

    #[test]
    fn keepalived_v2_capture_decodes_and_verifies() {
        // v2 sums the message only, so the source does not matter.
        let ends = mcast_from(v4(10, 99, 0, 7));
        let adv = Advert::decode(&KEEPALIVED_V2, ends, ChecksumAccept::PseudoHeader).unwrap();
        assert_eq!(adv.version, Version::V2);
        assert_eq!(adv.vrid, 51);
        assert_eq!(adv.priority, 150);
        assert_eq!(adv.interval_cs, 100);
        assert_eq!(adv.addresses, vec![v4(10, 99, 0, 100)]);
        assert_eq!(
            adv.encode(ends, ChecksumMode::PseudoHeader).unwrap(),
            KEEPALIVED_V2
        );
    }

    #[test]
    fn keepalived_v3_capture_uses_pseudo_header_checksum() {
        // The capture does not record the sender. Exactly one source in the capture's /24
        // verifies with the pseudo-header form: that is the sender (10.99.0.1).
        let matching: Vec<IpAddr> = (0..=255u8)
            .map(|h| v4(10, 99, 0, h))
            .filter(|&src| {
                Advert::decode(&KEEPALIVED_V3, mcast_from(src), ChecksumAccept::PseudoHeader).is_ok()
            })
            .collect();
        assert_eq!(matching, vec![v4(10, 99, 0, 1)]);
        let ends = mcast_from(v4(10, 99, 0, 1));
        // keepalived's form is not the message-only form.
        assert_eq!(
            Advert::decode(&KEEPALIVED_V3, ends, ChecksumAccept::MessageOnly),
            Err(DecodeError::BadChecksum)
        );
        let adv = Advert::decode(&KEEPALIVED_V3, ends, ChecksumAccept::Either).unwrap();
        assert_eq!(adv.version, Version::V3);
        assert_eq!((adv.vrid, adv.priority, adv.interval_cs), (51, 150, 100));
        assert_eq!(adv.addresses, vec![v4(10, 99, 0, 100)]);
        assert_eq!(
            adv.encode(ends, ChecksumMode::PseudoHeader).unwrap(),
            KEEPALIVED_V3
        );
        let plain = adv.encode(ends, ChecksumMode::MessageOnly).unwrap();
        assert_ne!(plain, KEEPALIVED_V3);
        assert!(Advert::decode(&plain, ends, ChecksumAccept::MessageOnly).is_ok());
        assert_eq!(
            Advert::decode(&plain, ends, ChecksumAccept::PseudoHeader),
            Err(DecodeError::BadChecksum)
        );
    }

    fn ip_header(ttl: u8, proto: u8, payload: &[u8], options: usize) -> Vec<u8> {
        let ihl = 20 + options;
        let total = (ihl + payload.len()) as u16;
        let mut h = vec![0x40 | (ihl / 4) as u8, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0, ttl, proto, 0, 0]);
        h.extend_from_slice(&[10, 99, 0, 1, 224, 0, 0, 18]);
        h.extend(std::iter::repeat_n(1u8, options)); // NOP options
        h.extend_from_slice(payload);
        h
    }

    #[test]
    fn ipv4_header_checks() {
        let ok = ip_header(255, 112, &KEEPALIVED_V3, 0);
        let rx = decode_ipv4_datagram(&ok, ChecksumAccept::PseudoHeader).unwrap();
        assert_eq!(rx.from, v4(10, 99, 0, 1));
        assert_eq!(rx.to, IpAddr::V4(VRRP_MULTICAST_V4));
        // IHL with options is honoured.
        let opts = ip_header(255, 112, &KEEPALIVED_V3, 4);
        assert_eq!(
            decode_ipv4_datagram(&opts, ChecksumAccept::PseudoHeader).unwrap(),
            rx
        );
        // Trailing bytes past the total length (ethernet padding) are ignored.
        let mut padded = ok.clone();
        padded.extend_from_slice(&[0; 6]);
        assert!(decode_ipv4_datagram(&padded, ChecksumAccept::PseudoHeader).is_ok());
        let bad = |b: Vec<u8>| decode_ipv4_datagram(&b, ChecksumAccept::PseudoHeader).unwrap_err();
        assert_eq!(bad(ip_header(254, 112, &KEEPALIVED_V3, 0)), DecodeError::BadTtl);
        assert_eq!(bad(ip_header(1, 112, &KEEPALIVED_V3, 0)), DecodeError::BadTtl);
        assert_eq!(bad(ip_header(255, 17, &KEEPALIVED_V3, 0)), DecodeError::NotVrrp);
        assert_eq!(bad(ok[..30].to_vec()), DecodeError::Truncated);
        assert_eq!(bad(ok[..10].to_vec()), DecodeError::Truncated);
        let mut ihl_small = ok.clone();
        ihl_small[0] = 0x44;
        assert_eq!(bad(ihl_small), DecodeError::BadIpHeader);
        let mut v6 = ok.clone();
        v6[0] = 0x65;
        assert_eq!(bad(v6), DecodeError::BadIpHeader);
    }

    #[test]
    fn message_errors_by_reason() {
        let ends = mcast_from(v4(10, 99, 0, 1));
        let base = Advert {
            version: Version::V3,
            vrid: 7,
            priority: 100,
            interval_cs: 10,
            addresses: vec![v4(10, 213, 0, 100), v4(10, 213, 0, 101)],
        };
        let good = base.encode(ends, ChecksumMode::PseudoHeader).unwrap();
        let dec = |b: &[u8]| Advert::decode(b, ends, ChecksumAccept::PseudoHeader);
        assert_eq!(dec(&good).unwrap(), base);
        // Re-checksum a mutated message so the intended check is the one that fires.
        let resum = |mut b: Vec<u8>| {
            let s = checksum_with(&b, Some(ends));
            b[6..8].copy_from_slice(&s.to_be_bytes());
            b
        };
        let mut m = good.clone();
        m[0] = 0x41;
        assert_eq!(dec(&resum(m)), Err(DecodeError::BadVersion));
        let mut m = good.clone();
        m[0] = 0x32;
        assert_eq!(dec(&resum(m)), Err(DecodeError::BadType));
        let mut m = good.clone();
        m[4] = 0xf0;
        m[5] = 0;
        assert_eq!(dec(&resum(m)), Err(DecodeError::ZeroInterval));
        let mut m = good.clone();
        m[3] = 3;
        assert_eq!(dec(&resum(m)), Err(DecodeError::Truncated));
        let mut m = good.clone();
        m[3] = 1;
        assert_eq!(dec(&resum(m)), Err(DecodeError::AddressCountMismatch));
        let mut m = good[..8].to_vec();
        m[3] = 0;
        assert_eq!(dec(&resum(m)), Err(DecodeError::NoAddresses));
        let mut m = good.clone();
        m[9] ^= 1;
        assert_eq!(dec(&m), Err(DecodeError::BadChecksum));
        assert_eq!(dec(&good[..5]), Err(DecodeError::Truncated));
        // v2: auth type must be 0.
        let mut v2 = KEEPALIVED_V2.to_vec();
        v2[4] = 1;
        let s = checksum_with(&v2, None);
        v2[6..8].copy_from_slice(&s.to_be_bytes());
        assert_eq!(dec(&v2), Err(DecodeError::BadAuthType));
        // Reserved bits in the v3 interval field are ignored (RFC 5798 §5.2.7).
        let mut m = good.clone();
        m[4] |= 0xf0;
        assert_eq!(dec(&resum(m)).unwrap(), base);
    }

    #[test]
    fn reasons_are_unique_and_indexed() {
        let mut labels: Vec<&str> = DecodeError::ALL.iter().map(|e| e.reason()).collect();
        for (i, e) in DecodeError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), DecodeError::ALL.len());
    }

    #[test]
    fn encode_refuses_bad_adverts() {
        let ends = mcast_from(v4(10, 0, 0, 1));
        let mut a = Advert {
            version: Version::V2,
            vrid: 1,
            priority: 100,
            interval_cs: 150,
            addresses: vec![v4(10, 0, 0, 9)],
        };
        assert_eq!(
            a.encode(ends, ChecksumMode::PseudoHeader),
            Err(EncodeError::Interval)
        );
        a.version = Version::V3;
        a.interval_cs = 4096;
        assert_eq!(
            a.encode(ends, ChecksumMode::PseudoHeader),
            Err(EncodeError::Interval)
        );
        a.interval_cs = 100;
        a.addresses.push("fe80::1".parse().unwrap());
        assert_eq!(
            a.encode(ends, ChecksumMode::PseudoHeader),
            Err(EncodeError::MixedFamilies)
        );
        a.addresses.clear();
        assert_eq!(
            a.encode(ends, ChecksumMode::PseudoHeader),
            Err(EncodeError::AddressCount)
        );
    }

    #[test]
    fn ipv6_round_trip_uses_pseudo_header() {
        let ends = Endpoints {
            src: "fe80::1".parse().unwrap(),
            dst: IpAddr::V6(VRRP_MULTICAST_V6),
        };
        let a = Advert {
            version: Version::V3,
            vrid: 9,
            priority: 200,
            interval_cs: 100,
            addresses: vec!["fe80::9".parse().unwrap(), "2001:db8::9".parse().unwrap()],
        };
        let bytes = a.encode(ends, ChecksumMode::MessageOnly).unwrap();
        assert_eq!(bytes.len(), 8 + 32);
        assert_eq!(
            Advert::decode(&bytes, ends, ChecksumAccept::MessageOnly).unwrap(),
            a
        );
        let other = Endpoints {
            src: "fe80::2".parse().unwrap(),
            ..ends
        };
        assert_eq!(
            Advert::decode(&bytes, other, ChecksumAccept::Either),
            Err(DecodeError::BadChecksum)
        );
    }

    fn arb_advert() -> impl Strategy<Value = (Advert, Endpoints, ChecksumMode)> {
        (
            any::<bool>(),
            any::<u8>(),
            any::<u8>(),
            1u16..=4095,
            1u16..=255,
            proptest::collection::vec(any::<[u8; 4]>(), 1..20),
            any::<[u8; 4]>(),
            any::<bool>(),
        )
            .prop_map(|(v3, vrid, priority, cs, secs, addrs, src, plain)| {
                let version = if v3 { Version::V3 } else { Version::V2 };
                let interval_cs = if v3 { cs } else { secs * 100 };
                let advert = Advert {
                    version,
                    vrid,
                    priority,
                    interval_cs,
                    addresses: addrs.into_iter().map(|o| IpAddr::V4(o.into())).collect(),
                };
                let mode = if plain {
                    ChecksumMode::MessageOnly
                } else {
                    ChecksumMode::PseudoHeader
                };
                (advert, mcast_from(IpAddr::V4(src.into())), mode)
            })
    }

    proptest! {
        #[test]
        fn decode_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_ipv4_datagram(&buf, ChecksumAccept::Either);
            let _ = Advert::decode(&buf, mcast_from(v4(1, 2, 3, 4)), ChecksumAccept::Either);
            let v6 = Endpoints { src: "fe80::1".parse().unwrap(), dst: IpAddr::V6(VRRP_MULTICAST_V6) };
            let _ = Advert::decode(&buf, v6, ChecksumAccept::Either);
        }

        #[test]
        fn decode_never_panics_near_valid(
            (a, ends, mode) in arb_advert(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = a.encode(ends, mode).unwrap();
            for (pos, val) in flips {
                let n = bytes.len();
                bytes[pos % n] = val;
            }
            let cut = cut % (bytes.len() + 1);
            let _ = Advert::decode(&bytes[..cut], ends, ChecksumAccept::Either);
            let _ = Advert::decode(&bytes, ends, ChecksumAccept::Either);
        }

        #[test]
        fn encode_decode_round_trip((a, ends, mode) in arb_advert()) {
            let bytes = a.encode(ends, mode).unwrap();
            let back = Advert::decode(&bytes, ends, ChecksumAccept::same_as(mode)).unwrap();
            prop_assert_eq!(back, a);
        }
    }
}
