//! Configuration of VRRP instances and its validation.
//!
//! Owns the plain description of an instance and the checks that can be made without the
//! host (`validate`, `validate_set`) and with a view of the host's interfaces passed in
//! (`validate_on_host`). Reads nothing from the system itself.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::packet::{ChecksumAccept, ChecksumMode, Family, Version};

/// A virtual address with the prefix length it gets on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vip {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length, 0..=32 for IPv4 and 0..=128 for IPv6.
    pub prefix_len: u8,
}

/// One VRRP instance (keepalived's `vrrp_instance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Name used in logs, metrics and the notify hook.
    pub name: String,
    /// Interface the adverts go out on and the VIPs are added to.
    pub interface: String,
    /// Virtual router id, 1..=255.
    pub vrid: u8,
    /// Configured priority, 1..=255; 255 only for the owner of the addresses.
    pub priority: u8,
    /// Protocol version (v3 by default).
    pub version: Version,
    /// Advertisement interval: v3 10 ms..40.95 s in whole centiseconds, v2 1..255 whole seconds.
    pub advert_interval: Duration,
    /// Virtual addresses, all of one family; the first one is the primary VIP.
    pub vips: Vec<Vip>,
    /// Take over from a lower-priority master (RFC 5798 §6.1 Preempt_Mode).
    pub preempt: bool,
    /// After start-up, wait this long before preempting a lower-priority master.
    pub preempt_delay: Duration,
    /// v3/IPv4 checksum form on transmit.
    pub checksum_mode: ChecksumMode,
    /// v3/IPv4 checksum forms accepted on receive.
    pub checksum_accept: ChecksumAccept,
    /// Send adverts to these peers by unicast instead of to the multicast group; when set,
    /// adverts from other sources are dropped.
    pub unicast_peers: Vec<IpAddr>,
    /// Source address of adverts; the interface's first address when `None`.
    pub local_address: Option<IpAddr>,
    /// Gratuitous ARPs sent per VIP on becoming master (at least 1).
    pub garp_repeat: u32,
    /// Time between those gratuitous ARPs.
    pub garp_interval: Duration,
    /// Use the virtual MAC 00-00-5E-00-01-VRID through a macvlan (not implemented yet: refused).
    pub virtual_mac: bool,
    /// Run as `COMMAND INSTANCE STATE PRIORITY` on every state change.
    pub notify: Option<PathBuf>,
}

impl InstanceConfig {
    /// A v3 instance with 1 s adverts (what keepalived peers expect), preemption on, the
    /// keepalived checksum form, 3 gratuitous ARPs 100 ms apart.
    pub fn new(name: &str, interface: &str, vrid: u8, priority: u8, vips: Vec<Vip>) -> Self {
        InstanceConfig {
            name: name.to_string(),
            interface: interface.to_string(),
            vrid,
            priority,
            version: Version::V3,
            advert_interval: Duration::from_secs(1),
            vips,
            preempt: true,
            preempt_delay: Duration::ZERO,
            checksum_mode: ChecksumMode::PseudoHeader,
            checksum_accept: ChecksumAccept::PseudoHeader,
            unicast_peers: Vec::new(),
            local_address: None,
            garp_repeat: 3,
            garp_interval: Duration::from_millis(100),
            virtual_mac: false,
            notify: None,
        }
    }

    /// The address family of the instance (of its first VIP; IPv4 when there is none).
    pub fn family(&self) -> Family {
        self.vips
            .first()
            .map(|v| Family::of(&v.addr))
            .unwrap_or(Family::Ipv4)
    }

    /// The advert interval as the wire's centiseconds. Only meaningful after `validate`.
    pub fn advert_interval_cs(&self) -> u16 {
        (self.advert_interval.as_millis() / 10).min(u128::from(u16::MAX)) as u16
    }

    /// Whether this node is the address owner (priority 255, RFC 5798 §6.1).
    pub fn is_owner(&self) -> bool {
        self.priority == 255
    }

    /// Check everything that needs no view of the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = || self.name.clone();
        if self.name.is_empty() {
            return Err(ConfigError::EmptyName);
        }
        if self.interface.is_empty() || self.interface.len() > 15 {
            return Err(ConfigError::BadInterfaceName(name(), self.interface.clone()));
        }
        if self.vrid == 0 {
            return Err(ConfigError::VridOutOfRange(name(), self.vrid));
        }
        if self.priority == 0 {
            return Err(ConfigError::PriorityOutOfRange(name(), self.priority));
        }
        self.validate_interval()?;
        if self.vips.is_empty() {
            return Err(ConfigError::NoVips(name()));
        }
        let family = self.family();
        for vip in &self.vips {
            if Family::of(&vip.addr) != family {
                return Err(ConfigError::MixedFamilies(name()));
            }
            let max = match family {
                Family::Ipv4 => 32,
                Family::Ipv6 => 128,
            };
            if vip.prefix_len > max {
                return Err(ConfigError::BadPrefixLen(name(), *vip));
            }
        }
        if self.vips.len() > 255 {
            return Err(ConfigError::TooManyVips(name()));
        }
        let distinct: HashSet<IpAddr> = self.vips.iter().map(|v| v.addr).collect();
        if distinct.len() != self.vips.len() {
            return Err(ConfigError::DuplicateVip(name()));
        }
        if family == Family::Ipv6 {
            // IPv6 transport is a later issue; the packet layer is ready, the Linux side is not.
            return Err(ConfigError::Ipv6NotSupported(name()));
        }
        if self.version == Version::V2 && family != Family::Ipv4 {
            return Err(ConfigError::V2IsIpv4Only(name()));
        }
        let peers = self.unicast_peers.iter().map(|a| ("unicast_peers", a));
        for (key, addr) in peers.chain(self.local_address.iter().map(|a| ("local_address", a))) {
            if Family::of(addr) != family {
                return Err(ConfigError::PeerFamily(name(), key, *addr));
            }
        }
        if self.garp_repeat == 0 {
            return Err(ConfigError::GarpRepeatZero(name()));
        }
        if self.virtual_mac {
            return Err(ConfigError::VirtualMacUnsupported(name()));
        }
        Ok(())
    }

    /// Check against the host: the interface exists, and a priority-255 node really owns every
    /// VIP. `addresses_of(interface)` returns the interface's addresses, `None` if it does not
    /// exist.
    pub fn validate_on_host(
        &self,
        addresses_of: impl Fn(&str) -> Option<Vec<IpAddr>>,
    ) -> Result<(), ConfigError> {
        let Some(addrs) = addresses_of(&self.interface) else {
            return Err(ConfigError::NoSuchInterface(
                self.name.clone(),
                self.interface.clone(),
            ));
        };
        if self.is_owner() {
            if let Some(vip) = self.vips.iter().find(|v| !addrs.contains(&v.addr)) {
                return Err(ConfigError::NotAddressOwner(self.name.clone(), vip.addr));
            }
        }
        Ok(())
    }

    fn validate_interval(&self) -> Result<(), ConfigError> {
        let bad = || ConfigError::IntervalOutOfRange(self.name.clone(), self.version, self.advert_interval);
        let d = self.advert_interval;
        match self.version {
            // RFC 5798 §5.2.7: 12 bits of centiseconds.
            Version::V3 => {
                if !d.as_nanos().is_multiple_of(10_000_000)
                    || d < Duration::from_millis(10)
                    || d > Duration::from_millis(40_950)
                {
                    return Err(bad());
                }
            }
            // RFC 3768 §5.3.7: 8 bits of seconds.
            Version::V2 => {
                if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > 255 {
                    return Err(bad());
                }
            }
        }
        Ok(())
    }
}

/// Validate each instance, then the set: names unique, one VRID per interface and family.
pub fn validate_set(configs: &[InstanceConfig]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    let mut vrids = HashSet::new();
    for c in configs {
        c.validate()?;
        if !names.insert(c.name.as_str()) {
            return Err(ConfigError::DuplicateName(c.name.clone()));
        }
        if !vrids.insert((c.interface.as_str(), c.vrid, c.family())) {
            return Err(ConfigError::DuplicateVrid(
                c.name.clone(),
                c.interface.clone(),
                c.vrid,
            ));
        }
    }
    Ok(())
}

/// A refused configuration. Each variant names the instance it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// An instance without a name.
    EmptyName,
    /// Interface name empty or longer than IFNAMSIZ - 1.
    BadInterfaceName(String, String),
    /// VRID outside 1..=255.
    VridOutOfRange(String, u8),
    /// Priority outside 1..=255.
    PriorityOutOfRange(String, u8),
    /// Advert interval outside the version's range or resolution.
    IntervalOutOfRange(String, Version, Duration),
    /// No virtual addresses.
    NoVips(String),
    /// More than 255 virtual addresses.
    TooManyVips(String),
    /// One address listed twice.
    DuplicateVip(String),
    /// IPv4 and IPv6 mixed among the VIPs.
    MixedFamilies(String),
    /// A unicast peer or the local address (the key) of the other family than the VIPs.
    PeerFamily(String, &'static str, IpAddr),
    /// Prefix length longer than the address.
    BadPrefixLen(String, Vip),
    /// VRRPv2 with IPv6 addresses.
    V2IsIpv4Only(String),
    /// IPv6 instances are not supported by the Linux side yet.
    Ipv6NotSupported(String),
    /// Gratuitous ARP repeat count of 0.
    GarpRepeatZero(String),
    /// Virtual MAC requested; not implemented.
    VirtualMacUnsupported(String),
    /// The interface does not exist.
    NoSuchInterface(String, String),
    /// Priority 255 on a node whose interface lacks this VIP as a real address.
    NotAddressOwner(String, IpAddr),
    /// Two instances with one name.
    DuplicateName(String),
    /// Two instances with one VRID on one interface.
    DuplicateVrid(String, String, u8),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::EmptyName => write!(f, "a VRRP instance has no name"),
            ConfigError::BadInterfaceName(n, i) => {
                write!(f, "instance {n}: interface name {i:?} must have 1..=15 bytes")
            }
            ConfigError::VridOutOfRange(n, v) => {
                write!(f, "instance {n}: VRID {v} is out of range 1..=255")
            }
            ConfigError::PriorityOutOfRange(n, p) => {
                write!(f, "instance {n}: priority {p} is out of range 1..=255")
            }
            ConfigError::IntervalOutOfRange(n, Version::V3, d) => write!(
                f,
                "instance {n}: VRRPv3 advert interval {d:?} must be whole centiseconds in 10 ms..=40.95 s"
            ),
            ConfigError::IntervalOutOfRange(n, Version::V2, d) => write!(
                f,
                "instance {n}: VRRPv2 advert interval {d:?} must be whole seconds in 1..=255"
            ),
            ConfigError::NoVips(n) => write!(f, "instance {n}: no virtual addresses"),
            ConfigError::TooManyVips(n) => write!(f, "instance {n}: more than 255 virtual addresses"),
            ConfigError::DuplicateVip(n) => write!(f, "instance {n}: a virtual address is listed twice"),
            ConfigError::MixedFamilies(n) => {
                write!(f, "instance {n}: IPv4 and IPv6 addresses are mixed")
            }
            ConfigError::PeerFamily(n, key, a) => {
                write!(f, "instance {n}: {key} {a} is not of the VIPs' address family")
            }
            ConfigError::BadPrefixLen(n, v) => {
                write!(f, "instance {n}: prefix length /{} is too long for {}", v.prefix_len, v.addr)
            }
            ConfigError::V2IsIpv4Only(n) => write!(f, "instance {n}: VRRPv2 carries IPv4 only"),
            ConfigError::Ipv6NotSupported(n) => {
                write!(f, "instance {n}: IPv6 VRRP instances are not supported yet")
            }
            ConfigError::GarpRepeatZero(n) => {
                write!(f, "instance {n}: gratuitous ARP repeat count must be at least 1")
            }
            ConfigError::VirtualMacUnsupported(n) => {
                write!(f, "instance {n}: virtual MAC (macvlan) is not implemented")
            }
            ConfigError::NoSuchInterface(n, i) => {
                write!(f, "instance {n}: interface {i} does not exist")
            }
            ConfigError::NotAddressOwner(n, a) => write!(
                f,
                "instance {n}: priority 255 is for the address owner, but {a} is not an address of the interface"
            ),
            ConfigError::DuplicateName(n) => write!(f, "two VRRP instances are named {n}"),
            ConfigError::DuplicateVrid(n, i, v) => write!(
                f,
                "instance {n}: VRID {v} is already used by another instance on {i}"
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(s: &str) -> Vip {
        Vip {
            addr: s.parse().unwrap(),
            prefix_len: 24,
        }
    }

    fn base() -> InstanceConfig {
        InstanceConfig::new("vi1", "eth0", 51, 100, vec![vip("10.213.0.100")])
    }

    #[test]
    fn default_is_valid_v3_one_second() {
        let c = base();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.advert_interval_cs(), 100);
        assert_eq!(c.version, Version::V3);
    }

    #[test]
    fn ranges_are_refused_with_names() {
        let mut c = base();
        c.vrid = 0;
        assert_eq!(c.validate(), Err(ConfigError::VridOutOfRange("vi1".into(), 0)));
        let mut c = base();
        c.priority = 0;
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("priority 0 is out of range"), "{e}");
        let mut c = base();
        c.vips.clear();
        assert_eq!(c.validate(), Err(ConfigError::NoVips("vi1".into())));
        let mut c = base();
        c.garp_repeat = 0;
        assert!(matches!(c.validate(), Err(ConfigError::GarpRepeatZero(_))));
        let mut c = base();
        c.vips.push(vip("10.213.0.100"));
        assert!(matches!(c.validate(), Err(ConfigError::DuplicateVip(_))));
        let mut c = base();
        c.vips[0].prefix_len = 33;
        assert!(matches!(c.validate(), Err(ConfigError::BadPrefixLen(..))));
        let mut c = base();
        c.unicast_peers.push("fe80::1".parse().unwrap());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PeerFamily(_, "unicast_peers", _))
        ));
        let mut c = base();
        c.local_address = Some("fe80::1".parse().unwrap());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::PeerFamily(_, "local_address", _))
        ));
    }

    #[test]
    fn intervals_per_version() {
        let check = |v: Version, ms: u64| {
            let mut c = base();
            c.version = v;
            c.advert_interval = Duration::from_millis(ms);
            c.validate().is_ok()
        };
        assert!(!check(Version::V3, 0));
        assert!(check(Version::V3, 10));
        assert!(check(Version::V3, 100));
        assert!(!check(Version::V3, 105));
        assert!(check(Version::V3, 40_950));
        assert!(!check(Version::V3, 40_960));
        assert!(!check(Version::V2, 0));
        assert!(!check(Version::V2, 100));
        assert!(!check(Version::V2, 1500));
        assert!(check(Version::V2, 1000));
        assert!(check(Version::V2, 255_000));
        assert!(!check(Version::V2, 256_000));
    }

    #[test]
    fn owner_must_hold_the_addresses() {
        let mut c = base();
        c.priority = 255;
        assert_eq!(c.validate(), Ok(()));
        let without = |_: &str| Some(vec!["10.213.0.1".parse().unwrap()]);
        let with = |_: &str| Some(vec!["10.213.0.100".parse().unwrap()]);
        let e = c.validate_on_host(without).unwrap_err();
        assert_eq!(
            e,
            ConfigError::NotAddressOwner("vi1".into(), "10.213.0.100".parse().unwrap())
        );
        assert!(e.to_string().contains("address owner"));
        assert_eq!(c.validate_on_host(with), Ok(()));
        assert!(matches!(
            c.validate_on_host(|_| None),
            Err(ConfigError::NoSuchInterface(..))
        ));
        c.priority = 254;
        assert_eq!(c.validate_on_host(without), Ok(()));
    }

    #[test]
    fn set_refuses_one_vrid_twice_on_an_interface() {
        let a = base();
        let mut b = base();
        b.name = "vi2".into();
        assert_eq!(
            validate_set(&[a.clone(), b.clone()]),
            Err(ConfigError::DuplicateVrid("vi2".into(), "eth0".into(), 51))
        );
        b.interface = "eth1".into();
        assert_eq!(validate_set(&[a.clone(), b.clone()]), Ok(()));
        b.interface = "eth0".into();
        b.vrid = 52;
        assert_eq!(validate_set(&[a.clone(), b.clone()]), Ok(()));
        b.name = "vi1".into();
        assert_eq!(
            validate_set(&[a, b]),
            Err(ConfigError::DuplicateName("vi1".into()))
        );
    }
}
