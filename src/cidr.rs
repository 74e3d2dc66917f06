//! IP prefixes (`10.0.0.0/8`, `2001:db8::/32`) and lists of them, for trust and
//! allow/deny rules.
//!
//! Owns parsing, display and membership tests only; what a match *means* (trust a PROXY
//! header, refuse a client) is the caller's policy. No I/O.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack listener reports for an
//! IPv4 client, RFC 4291 §2.5.5.2) are treated as the IPv4 client they are: they match IPv4
//! rules. A plain IPv4 client likewise matches an IPv6 rule written inside `::ffff:0:0/96`
//! (prefix length 96 or more). `::/0` matches every IPv6 client but no IPv4 client.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One IP prefix: a network address and a prefix length. Host bits are always zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a prefix could not be built or parsed; the `Display` names the offending input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` (or the whole input) is not an IPv4 or IPv6 address.
    InvalidAddress {
        /// The address text as given.
        input: String,
    },
    /// The part after `/` is not a decimal number.
    InvalidPrefixLength {
        /// The prefix text as given.
        input: String,
    },
    /// The prefix length exceeds the address width (32 for IPv4, 128 for IPv6).
    PrefixTooLong {
        /// The prefix length given.
        prefix_len: u32,
        /// The address width.
        max: u8,
    },
    /// The address has bits set beyond the prefix (`10.1.2.3/8`); usually a typo, so it is
    /// refused rather than silently masked.
    HostBitsSet {
        /// The input as given.
        input: String,
        /// The network the input probably meant, for the error message.
        network: String,
    },
}

impl Cidr {
    /// Builds a prefix; fails if `prefix_len` is wider than the address or host bits are set.
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<Cidr, CidrError> {
        let max = width(address);
        if prefix_len > max {
            return Err(CidrError::PrefixTooLong {
                prefix_len: u32::from(prefix_len),
                max,
            });
        }
        let network = mask(address, prefix_len);
        if network != address {
            return Err(CidrError::HostBitsSet {
                input: format!("{address}/{prefix_len}"),
                network: format!("{network}/{prefix_len}"),
            });
        }
        Ok(Cidr { network, prefix_len })
    }

    /// A prefix holding exactly one address (`/32` or `/128`).
    pub fn host(address: IpAddr) -> Cidr {
        Cidr {
            network: address,
            prefix_len: width(address),
        }
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `address` lies inside this prefix, with IPv4-mapped IPv6 treated as IPv4
    /// (see the module docs).
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => mask_v4(u32::from(a), self.prefix_len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(a)) => mask_v6(u128::from(a), self.prefix_len) == u128::from(net),
            // A rule inside ::ffff:0:0/96 speaks about IPv4 clients; wider rules do not.
            (IpAddr::V6(net), IpAddr::V4(a)) if self.prefix_len >= 96 => {
                let mapped = u128::from(a.to_ipv6_mapped());
                mask_v6(mapped, self.prefix_len) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `ADDRESS/LEN` or a bare `ADDRESS` (a host route). No whitespace, no zone ids.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let address: IpAddr = addr_text.parse().map_err(|_| CidrError::InvalidAddress {
            input: addr_text.to_string(),
        })?;
        let Some(len_text) = len_text else {
            return Ok(Cidr::host(address));
        };
        // u32::from_str accepts a leading '+'; a prefix length is plain digits only, and at
        // most three of them so the value cannot overflow.
        if len_text.is_empty() || len_text.len() > 3 || !len_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::InvalidPrefixLength {
                input: len_text.to_string(),
            });
        }
        let prefix_len: u32 = len_text.parse().map_err(|_| CidrError::InvalidPrefixLength {
            input: len_text.to_string(),
        })?;
        let max = width(address);
        if prefix_len > u32::from(max) {
            return Err(CidrError::PrefixTooLong { prefix_len, max });
        }
        // Checked above: prefix_len <= 128.
        let prefix_len = prefix_len as u8;
        Cidr::new(address, prefix_len).map_err(|e| match e {
            CidrError::HostBitsSet { network, .. } => CidrError::HostBitsSet {
                input: s.to_string(),
                network,
            },
            other => other,
        })
    }
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CidrError::InvalidAddress { input } => {
                write!(f, "`{input}` is not an IPv4 or IPv6 address")
            }
            CidrError::InvalidPrefixLength { input } => {
                write!(f, "prefix length `{input}` is not a decimal number")
            }
            CidrError::PrefixTooLong { prefix_len, max } => {
                write!(
                    f,
                    "prefix length /{prefix_len} is longer than the address (max /{max})"
                )
            }
            CidrError::HostBitsSet { input, network } => {
                write!(f, "`{input}` has host bits set; did you mean `{network}`?")
            }
        }
    }
}

impl std::error::Error for CidrError {}

/// An ordered list of prefixes; an address matches the list when any prefix contains it.
///
/// Used for "trusted PROXY sources", allow lists and deny lists. An empty list matches
/// nothing; whether an empty allow list means "allow all" is the caller's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList {
    prefixes: Vec<Cidr>,
}

impl CidrList {
    /// A list of the given prefixes, kept in the given order (for display).
    pub fn new(prefixes: Vec<Cidr>) -> CidrList {
        CidrList { prefixes }
    }

    /// Parses every item with [`Cidr::from_str`]; the error carries the first bad item's index.
    pub fn parse_all<'a, I>(items: I) -> Result<CidrList, (usize, CidrError)>
    where
        I: IntoIterator<Item = &'a str>,
    {
        items
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.parse::<Cidr>().map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()
            .map(CidrList::new)
    }

    /// Whether any prefix in the list contains `address` (checked at accept time).
    pub fn matches(&self, address: IpAddr) -> bool {
        self.prefixes.iter().any(|c| c.contains(address))
    }

    /// The first prefix that contains `address`, for log lines that say which rule fired.
    pub fn first_match(&self, address: IpAddr) -> Option<&Cidr> {
        self.prefixes.iter().find(|c| c.contains(address))
    }

    /// The prefixes in configured order.
    pub fn prefixes(&self) -> &[Cidr] {
        &self.prefixes
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    /// Whether the list has no prefixes (then it matches nothing).
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }
}

impl FromIterator<Cidr> for CidrList {
    fn from_iter<T: IntoIterator<Item = Cidr>>(iter: T) -> Self {
        CidrList::new(iter.into_iter().collect())
    }
}

impl fmt::Display for CidrList {
    /// Comma-separated prefixes, e.g. `10.0.0.0/8, ::1/128`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.prefixes.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

fn width(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(address: IpAddr, prefix_len: u8) -> IpAddr {
    match address {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask_v4(u32::from(a), prefix_len))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask_v6(u128::from(a), prefix_len))),
    }
}

fn mask_v4(bits: u32, prefix_len: u8) -> u32 {
    // checked_shl fails for a shift of 32 (prefix 0): nothing is kept.
    bits & u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0)
}

fn mask_v6(bits: u128, prefix_len: u8) -> u128 {
    bits & u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address literal is valid")
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().expect("test prefix literal is valid")
    }

    #[test]
    fn parses_and_displays() {
        for (input, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("192.0.2.7", "192.0.2.7/32"),
            ("192.0.2.7/32", "192.0.2.7/32"),
            ("::1/128", "::1/128"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("10.0.0.0/08", "10.0.0.0/8"),
        ] {
            assert_eq!(cidr(input).to_string(), shown, "input {input}");
        }
        assert_eq!(cidr("10.0.0.0/8").prefix_len(), 8);
        assert_eq!(cidr("10.0.0.0/8").network(), ip("10.0.0.0"));
    }

    #[test]
    fn parse_errors_are_specific() {
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::InvalidAddress { input }) if input == "10.0.0"
        ));
        assert!(matches!(
            "".parse::<Cidr>(),
            Err(CidrError::InvalidAddress { .. })
        ));
        assert!(matches!(
            "fe80::1%eth0".parse::<Cidr>(),
            Err(CidrError::InvalidAddress { .. })
        ));
        assert!(matches!(
            " 10.0.0.0/8".parse::<Cidr>(),
            Err(CidrError::InvalidAddress { .. })
        ));
        for bad_len in [
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8 ",
            "10.0.0.0/1000",
            "::/x",
        ] {
            assert!(
                matches!(
                    bad_len.parse::<Cidr>(),
                    Err(CidrError::InvalidPrefixLength { .. })
                ),
                "{bad_len}"
            );
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong {
                prefix_len: 33,
                max: 32
            })
        );
        assert_eq!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong {
                prefix_len: 129,
                max: 128
            })
        );
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err,
            CidrError::HostBitsSet {
                input: "10.1.2.3/8".into(),
                network: "10.0.0.0/8".into()
            }
        );
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
        assert!(matches!(
            "2001:db8::1/32".parse::<Cidr>(),
            Err(CidrError::HostBitsSet { .. })
        ));
    }

    #[test]
    fn contains_v4_and_v6() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("9.255.255.255")));
        assert!(
            !net.contains(ip("::a00:1")),
            "IPv4-compatible (not mapped) is IPv6"
        );

        let odd = cidr("192.168.4.0/22");
        assert!(odd.contains(ip("192.168.7.255")));
        assert!(!odd.contains(ip("192.168.8.0")));

        let host = cidr("::1");
        assert!(host.contains(ip("::1")));
        assert!(!host.contains(ip("::2")));
        assert!(!host.contains(ip("127.0.0.1")));

        let doc = cidr("2001:db8::/32");
        assert!(doc.contains(ip("2001:db8:ffff::1")));
        assert!(!doc.contains(ip("2001:db9::")));

        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn mapped_clients_match_v4_rules_and_not_wide_v6_rules() {
        let mapped = ip("::ffff:10.1.2.3");
        assert!(cidr("10.0.0.0/8").contains(mapped));
        assert!(cidr("10.1.2.3").contains(mapped));
        assert!(!cidr("11.0.0.0/8").contains(mapped));
        assert!(cidr("0.0.0.0/0").contains(mapped));
        // ::/0 is "every IPv6 client"; a mapped client is an IPv4 client.
        assert!(!cidr("::/0").contains(mapped));
        assert!(!cidr("::/0").contains(ip("10.1.2.3")));
        // A v6 rule written in the mapped range covers the IPv4 client both ways.
        let mapped_rule = cidr("::ffff:10.0.0.0/104");
        assert!(mapped_rule.contains(ip("10.9.9.9")));
        assert!(mapped_rule.contains(ip("::ffff:10.9.9.9")));
        assert!(!mapped_rule.contains(ip("11.9.9.9")));
    }

    #[test]
    fn new_and_host() {
        assert_eq!(
            Cidr::new(ip("10.0.0.0"), 33),
            Err(CidrError::PrefixTooLong {
                prefix_len: 33,
                max: 32
            })
        );
        assert!(Cidr::new(ip("10.0.0.1"), 24).is_err());
        assert_eq!(Cidr::new(ip("10.0.0.0"), 24), Ok(cidr("10.0.0.0/24")));
        assert_eq!(Cidr::host(ip("2001:db8::5")).prefix_len(), 128);
    }

    #[test]
    fn list_matching() {
        let list = CidrList::parse_all(["10.0.0.0/8", "192.168.1.5", "2001:db8::/32"]).unwrap();
        assert_eq!(list.len(), 3);
        assert!(list.matches(ip("10.3.3.3")));
        assert!(list.matches(ip("::ffff:192.168.1.5")));
        assert!(!list.matches(ip("192.168.1.6")));
        assert!(list.matches(ip("2001:db8::9")));
        assert!(!list.matches(ip("2001:db9::9")));
        assert_eq!(list.first_match(ip("192.168.1.5")), Some(&cidr("192.168.1.5/32")));
        assert_eq!(list.to_string(), "10.0.0.0/8, 192.168.1.5/32, 2001:db8::/32");

        let empty = CidrList::default();
        assert!(empty.is_empty());
        assert!(!empty.matches(ip("127.0.0.1")));

        let err = CidrList::parse_all(["10.0.0.0/8", "nope"]).unwrap_err();
        assert_eq!(err.0, 1);
    }

    proptest! {
        #[test]
        fn display_round_trips_and_contains_agrees_with_masking(
            bits in any::<u32>(), len in 0u8..=32, probe in any::<u32>()
        ) {
            let net = Cidr::new(IpAddr::V4(Ipv4Addr::from(mask_v4(bits, len))), len).unwrap();
            prop_assert_eq!(net.to_string().parse::<Cidr>().unwrap(), net);
            // Reference: compare the top `len` bits with a shift, independent of mask_v4.
            let expect = len == 0 || (probe >> (32 - u32::from(len))) == (bits >> (32 - u32::from(len)));
            prop_assert_eq!(net.contains(IpAddr::V4(Ipv4Addr::from(probe))), expect);
            let mapped = IpAddr::V6(Ipv4Addr::from(probe).to_ipv6_mapped());
            prop_assert_eq!(net.contains(mapped), expect);
        }

        #[test]
        fn v6_contains_agrees_with_shift(bits in any::<u128>(), len in 0u8..=128, probe in any::<u128>()) {
            let net = Cidr::new(IpAddr::V6(Ipv6Addr::from(mask_v6(bits, len))), len).unwrap();
            prop_assert_eq!(net.to_string().parse::<Cidr>().unwrap(), net);
            let probe_ip = Ipv6Addr::from(probe);
            prop_assume!(probe_ip.to_ipv4_mapped().is_none());
            let expect = len == 0 || (probe >> (128 - u32::from(len))) == (bits >> (128 - u32::from(len)));
            prop_assert_eq!(net.contains(IpAddr::V6(probe_ip)), expect);
        }

        #[test]
        fn parse_never_panics(s in ".{0,60}") {
            let _ = s.parse::<Cidr>();
        }
    }
}
