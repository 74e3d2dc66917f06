//! The network of `gatehouse demo --ha`: three network namespaces and one veth into the host.
//!
//! Owns exactly what it names after the demo's pid: namespaces `gh-demo-<pid>-a` and `-b` (the
//! HALBs), `gh-demo-<pid>-br` (a bridge `br0` that joins them), and the host interface
//! `ghd<pid>h`, the host's end of a veth whose other end is a port of that bridge, with
//! [`HOST_ADDR`]. The bridge lives in its own namespace so that the host's firewall (with
//! `br_netfilter`, Docker's `FORWARD` policy `DROP` would drop the VRRP adverts between the
//! two HALBs) never sees the bridged frames. It must not touch any other interface, address or
//! route: the only host change is that one veth and its connected /24 route.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The segment's network, a private range that the demo refuses to use when it overlaps an
/// address already on the host.
pub const SEGMENT: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 213, 77, 0), 24);
/// The host's address on the segment: the gateways' `from-ha` listeners bind here.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 77, 1);
/// The HALBs' own addresses (A, B).
pub const NODE_ADDRS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 213, 77, 2), Ipv4Addr::new(10, 213, 77, 3)];
/// The virtual IP that VRRP moves between A and B.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 213, 77, 10);
/// The interface name inside each HALB namespace.
pub const NODE_IFACE: &str = "ghd0";

/// How long a new veth may take to report its carrier (linkwatch runs up to a second late).
const CARRIER_TIMEOUT: Duration = Duration::from_secs(3);

/// The names of one run's namespaces and host interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentNames {
    /// The pid of the demo that made them.
    pub tag: u32,
    /// The namespaces of HALB A and B.
    pub node_ns: [String; 2],
    /// The namespace holding the bridge.
    pub bridge_ns: String,
    /// The host's end of the veth into the bridge.
    pub host_iface: String,
}

impl SegmentNames {
    /// The names of the run whose demo has pid `tag` (15 characters at most, the kernel's
    /// limit for interface names, since a pid has at most 7 digits).
    pub fn for_run(tag: u32) -> SegmentNames {
        SegmentNames {
            tag,
            node_ns: [format!("gh-demo-{tag}-a"), format!("gh-demo-{tag}-b")],
            bridge_ns: format!("gh-demo-{tag}-br"),
            host_iface: format!("ghd{tag}h"),
        }
    }

    /// All three namespaces.
    pub fn namespaces(&self) -> [&str; 3] {
        [&self.node_ns[0], &self.node_ns[1], &self.bridge_ns]
    }
}

/// The segment, built; removed on drop (children in its namespaces must be stopped first).
pub struct Segment {
    names: SegmentNames,
}

impl Segment {
    /// Checks the prerequisites, removes leftovers of an earlier run with the same names (or of
    /// a run whose demo is dead and that holds the segment's range), and builds the segment.
    /// On an error, whatever was made is removed again.
    pub fn create(names: SegmentNames) -> Result<Segment, String> {
        preflight()?;
        remove(&names);
        free_the_range(&names)?;
        // From here on Drop removes whatever was made.
        let segment = Segment { names };
        segment.build()?;
        Ok(segment)
    }

    /// The names of what this segment made.
    pub fn names(&self) -> &SegmentNames {
        &self.names
    }

    fn build(&self) -> Result<(), String> {
        let n = &self.names;
        let br = n.bridge_ns.as_str();
        ip(&["netns", "add", br])?;
        ip(&["-n", br, "link", "set", "lo", "up"])?;
        // No multicast snooping: the adverts to 224.0.0.18 reach every port at once.
        ip(&[
            "-n",
            br,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", br, "link", "set", "br0", "up"])?;
        let prefix = SEGMENT.1;
        for (i, ns) in n.node_ns.iter().enumerate() {
            let port = format!("p{i}");
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", br, "link", "add", &port, "type", "veth", "peer", "name", NODE_IFACE, "netns", ns,
            ])?;
            ip(&["-n", br, "link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/{prefix}", NODE_ADDRS[i]);
            ip(&["-n", ns, "addr", "add", &addr, "dev", NODE_IFACE])?;
            ip(&["-n", ns, "link", "set", NODE_IFACE, "up"])?;
        }
        let host = n.host_iface.as_str();
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", "ph", "netns", br,
        ])?;
        ip(&["-n", br, "link", "set", "ph", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{HOST_ADDR}/{prefix}"), "dev", host])?;
        ip(&["link", "set", host, "up"])?;
        let links: [(Option<&str>, &str); 3] = [
            (Some(&n.node_ns[0]), NODE_IFACE),
            (Some(&n.node_ns[1]), NODE_IFACE),
            (None, host),
        ];
        for (ns, dev) in links {
            let start = Instant::now();
            while !link_up(ns, dev) {
                if start.elapsed() > CARRIER_TIMEOUT {
                    return Err(format!(
                        "the carrier of {dev}{} did not come up within {CARRIER_TIMEOUT:?}",
                        ns.map(|ns| format!(" in {ns}")).unwrap_or_default()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        remove(&self.names);
        tracing::info!(
            namespaces = ?self.names.namespaces(),
            host_interface = %self.names.host_iface,
            "removed the HA segment"
        );
    }
}

/// Why `--ha` cannot run here, if it cannot: not root, no `ip`, or `ip netns` not working.
pub fn preflight() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "`gatehouse demo --ha` needs root: it creates network namespaces, veth pairs \
                    and a bridge (run it with sudo, or without --ha)"
                .into(),
        );
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err("`gatehouse demo --ha` needs the `ip` command (iproute2), which is not in PATH".into())
        }
        Err(e) => Err(format!("cannot run `ip netns list`: {e}")),
        Ok(out) if !out.status.success() => Err(format!(
            "`ip netns list` does not work here ({}); `demo --ha` needs network namespaces",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => Ok(()),
    }
}

/// Whether `iface` (in namespace `ns`, or the host) reports its carrier.
pub fn link_up(ns: Option<&str>, iface: &str) -> bool {
    let mut args = Vec::new();
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-br", "link", "show", "dev", iface]);
    Command::new("ip")
        .args(&args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1) == Some("UP"))
        .unwrap_or(false)
}

/// The namespaces that exist now (`ip netns list`), empty when it cannot be read.
pub fn namespaces_now() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| parse_netns_list(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default()
}

/// Whether host interface `iface` exists.
pub fn host_link_exists(iface: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", iface])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes every namespace and the host interface of `names` that exists; deleting a
/// namespace destroys the veths in it, and with them their peers. Processes still in those
/// namespaces (the HALBs of a demo that was SIGKILLed) are killed first: they would keep a
/// deleted namespace alive.
fn remove(names: &SegmentNames) {
    let existing = namespaces_now();
    for ns in names.namespaces() {
        if existing.iter().any(|e| e == ns) {
            for pid in pids_in(ns) {
                tracing::info!(pid, namespace = ns, "killing a leftover process");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!("{e}");
            }
        }
    }
    if host_link_exists(&names.host_iface) {
        if let Err(e) = ip(&["link", "del", &names.host_iface]) {
            tracing::warn!("{e}");
        }
    }
}

/// The processes in namespace `ns` (`ip netns pids`), empty when it cannot be read.
fn pids_in(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .filter(|p| *p > 1)
                .collect()
        })
        .unwrap_or_default()
}

/// Refuses when the segment's range overlaps an address on the host, unless that address is
/// on the host interface of a demo run that is dead (then that run's leftovers are removed).
fn free_the_range(names: &SegmentNames) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map_err(|e| format!("cannot run `ip -o -4 addr show`: {e}"))?;
    for (iface, addr, len) in parse_addr_list(&String::from_utf8_lossy(&out.stdout)) {
        if !overlaps((addr, len), SEGMENT) {
            continue;
        }
        match leftover_tag(&iface) {
            Some(tag) if tag != names.tag && !std::path::Path::new(&format!("/proc/{tag}")).exists() => {
                tracing::info!(%iface, "removing the leftovers of a demo run (pid {tag}) that is gone");
                remove(&SegmentNames::for_run(tag));
            }
            _ => {
                return Err(format!(
                    "the demo's segment {}/{} overlaps {addr}/{len} on {iface}; is another \
                     `gatehouse demo --ha` running? (one at a time per host)",
                    SEGMENT.0, SEGMENT.1
                ))
            }
        }
    }
    Ok(())
}

/// Runs `ip ARGS`; the error carries the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Namespace names from `ip netns list` (`NAME` or `NAME (id: N)` per line).
fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// `(interface, address, prefix length)` of each line of `ip -o -4 addr show`
/// (`2: eth0    inet 192.0.2.2/24 brd ... scope global eth0\ ...`); other lines are skipped.
fn parse_addr_list(text: &str) -> Vec<(String, Ipv4Addr, u8)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let iface = f.nth(1)?;
            if f.next()? != "inet" {
                return None;
            }
            let (addr, len) = f.next()?.split_once('/')?;
            let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
            let iface = iface.split('@').next().unwrap_or(iface);
            Some((iface.to_string(), addr.parse().ok()?, len))
        })
        .collect()
}

/// Whether two IPv4 prefixes share an address.
fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1).min(32);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// The pid in a demo host interface's name (`ghd<pid>h`), if it is one.
fn leftover_tag(iface: &str) -> Option<u32> {
    let digits = iface.strip_prefix("ghd")?.strip_suffix('h')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_interface_limit() {
        let n = SegmentNames::for_run(4_194_304);
        assert!(n.host_iface.len() <= 15, "{}", n.host_iface);
        assert_eq!(n.node_ns[0], "gh-demo-4194304-a");
        assert_eq!(n.bridge_ns, "gh-demo-4194304-br");
        assert_eq!(leftover_tag(&n.host_iface), Some(4_194_304));
    }

    #[test]
    fn leftover_tags_only_from_demo_names() {
        assert_eq!(leftover_tag("ghd12h"), Some(12));
        assert_eq!(leftover_tag("ghdh"), None);
        assert_eq!(leftover_tag("ghd12"), None);
        assert_eq!(leftover_tag("ghd1x2h"), None);
        assert_eq!(leftover_tag("eth0"), None);
    }

    #[test]
    fn addr_list_parses_ip_output() {
        let text = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n\
                    3: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever\n\
                    9: ghd77h@if8    inet 10.213.77.1/24 scope global ghd77h\\       valid_lft forever\n\
                    garbage\n4: x    inet6 ::1/128 scope host\n5: y    inet 1.2.3.4/99 scope global y\n";
        let got = parse_addr_list(text);
        assert_eq!(
            got,
            vec![
                ("lo".to_string(), Ipv4Addr::new(127, 0, 0, 1), 8),
                ("eth0".to_string(), Ipv4Addr::new(192, 0, 2, 2), 24),
                ("ghd77h".to_string(), Ipv4Addr::new(10, 213, 77, 1), 24),
            ]
        );
    }

    #[test]
    fn overlap_of_prefixes() {
        assert!(overlaps((Ipv4Addr::new(10, 213, 77, 1), 24), SEGMENT));
        assert!(overlaps((Ipv4Addr::new(10, 9, 9, 9), 8), SEGMENT));
        assert!(overlaps((Ipv4Addr::new(1, 1, 1, 1), 0), SEGMENT));
        assert!(!overlaps((Ipv4Addr::new(10, 213, 78, 1), 24), SEGMENT));
        assert!(!overlaps((Ipv4Addr::new(192, 0, 2, 2), 24), SEGMENT));
        assert!(!overlaps((Ipv4Addr::new(127, 0, 0, 1), 8), SEGMENT));
    }

    #[test]
    fn netns_list_names() {
        assert_eq!(
            parse_netns_list("gh-demo-1-a (id: 3)\ngh-demo-1-b\n\n"),
            vec!["gh-demo-1-a".to_string(), "gh-demo-1-b".to_string()]
        );
    }

    #[test]
    fn segment_addresses_are_in_the_segment() {
        for a in NODE_ADDRS.iter().chain([&HOST_ADDR, &VIP]) {
            assert!(overlaps((*a, 32), SEGMENT), "{a}");
        }
    }
}
