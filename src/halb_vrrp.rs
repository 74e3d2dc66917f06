//! The HALB's VRRP role: the `[[halb.vrrp]]` config sections, their validation, and the glue
//! that runs them on the `gatehouse-vrrp` [`Runner`] thread.
//!
//! Owns: turning a section into an [`InstanceConfig`] (with key paths for every refusal), the
//! priority tracking rule (pool health from the shared snapshot, tracked interfaces), the
//! VRRP metrics text, and the graceful handover on stop. It must not touch listeners or
//! workers: listeners bound to a VIP use `freebind` and exist on every node; which node gets
//! the traffic is decided by who holds the VIP, i.e. by the runner alone.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use gatehouse_vrrp::linux::{net, netlink::Netlink, Counters, PrioritySource, Runner, VrrpEvent};
use gatehouse_vrrp::{
    validate_set, ChecksumAccept, ChecksumMode, ConfigError as VrrpConfigError, InstanceConfig, State,
    Version, Vip,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::config::{AdminState, HalbConfig, HumanDuration, KeyPath};
use crate::health::Health;
use crate::metrics::label;
use crate::shared::{Shared, Snapshot};

/// One `[[halb.vrrp]]` section: a virtual router whose VIPs the HALB listeners serve.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VrrpSection {
    /// Instance name in logs, metrics and the notify hook; unique.
    pub name: String,
    /// Interface the adverts go out on and the VIPs are added to.
    pub interface: String,
    /// Virtual router id, 1..=255; the same on every node of the pair.
    pub vrid: u32,
    /// Priority, 1..=255 (255 only on the node that owns the VIPs as real addresses).
    pub priority: u32,
    /// VRRP version, 2 or 3.
    #[serde(default = "default_version")]
    pub version: u8,
    /// Time between adverts (v3: whole centiseconds, v2: whole seconds).
    #[serde(default = "default_advert_interval")]
    pub advert_interval: HumanDuration,
    /// Virtual addresses with prefix (`"10.0.0.100/24"`; no prefix means /32).
    pub vips: Vec<String>,
    /// Take over from a lower-priority master.
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// After start-up, wait this long before preempting.
    #[serde(default)]
    pub preempt_delay: HumanDuration,
    /// v3/IPv4 checksum form sent: `keepalived` (with the IPv4 pseudo-header) or `rfc9568`.
    #[serde(default = "default_checksum")]
    pub checksum: String,
    /// Forms accepted: `keepalived`, `rfc9568` or `either` (default: the form sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_checksum: Option<String>,
    /// Send adverts to these peers by unicast instead of to 224.0.0.18.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unicast_peers: Vec<IpAddr>,
    /// Source address of adverts (default: the interface's first address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_address: Option<IpAddr>,
    /// Gratuitous ARPs per VIP on becoming master.
    #[serde(default = "default_garp_repeat")]
    pub garp_repeat: u32,
    /// Time between those gratuitous ARPs.
    #[serde(default = "default_garp_interval")]
    pub garp_interval: HumanDuration,
    /// Run as `COMMAND INSTANCE STATE PRIORITY` on every state change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<PathBuf>,
    /// A pool whose health lowers the priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_pool: Option<String>,
    /// Fewer healthy backends than this in `track_pool` lowers the priority by `track_weight`;
    /// none at all is a fault (nothing can be served).
    #[serde(default = "default_min_healthy")]
    pub track_min_healthy: u32,
    /// How much the priority drops while `track_pool` is short.
    #[serde(default = "default_track_weight")]
    pub track_weight: u32,
    /// Interfaces that must be up; one down is a fault (as keepalived's `track_interface`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track_interfaces: Vec<String>,
}

fn default_version() -> u8 {
    3
}
fn default_advert_interval() -> HumanDuration {
    HumanDuration::secs(1)
}
fn default_true() -> bool {
    true
}
fn default_checksum() -> String {
    "keepalived".into()
}
fn default_garp_repeat() -> u32 {
    3
}
fn default_garp_interval() -> HumanDuration {
    HumanDuration::millis(100)
}
fn default_min_healthy() -> u32 {
    1
}
fn default_track_weight() -> u32 {
    50
}

/// Priority adjustment that the runner turns into the Fault state (effective priority <= 0).
pub const FAULT_ADJUSTMENT: i32 = -1000;

impl VrrpSection {
    /// The runner's view of this section, or the problems as (key, message) pairs.
    pub fn instance_config(&self) -> Result<InstanceConfig, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let vrid = match u8::try_from(self.vrid) {
            Ok(v) if v > 0 => v,
            _ => {
                problems.push(("vrid", format!("VRID {} is out of range 1..=255", self.vrid)));
                1
            }
        };
        let priority = match u8::try_from(self.priority) {
            Ok(p) if p > 0 => p,
            _ => {
                problems.push((
                    "priority",
                    format!("priority {} is out of range 1..=255", self.priority),
                ));
                1
            }
        };
        let version = match self.version {
            2 => Version::V2,
            3 => Version::V3,
            v => {
                problems.push(("version", format!("version {v}: VRRP version must be 2 or 3")));
                Version::V3
            }
        };
        let mut vips = Vec::with_capacity(self.vips.len());
        for v in &self.vips {
            match parse_vip(v) {
                Ok(vip) => vips.push(vip),
                Err(e) => problems.push(("vips", e)),
            }
        }
        let checksum_mode = match parse_checksum(&self.checksum) {
            Some(m) => m,
            None => {
                problems.push((
                    "checksum",
                    format!(
                        "unknown checksum form {:?} (expected keepalived or rfc9568)",
                        self.checksum
                    ),
                ));
                ChecksumMode::PseudoHeader
            }
        };
        let checksum_accept = match self.accept_checksum.as_deref() {
            None => ChecksumAccept::same_as(checksum_mode),
            Some("either") => ChecksumAccept::Either,
            Some(s) => match parse_checksum(s) {
                Some(m) => ChecksumAccept::same_as(m),
                None => {
                    problems.push((
                        "accept_checksum",
                        format!("unknown checksum form {s:?} (expected keepalived, rfc9568 or either)"),
                    ));
                    ChecksumAccept::Either
                }
            },
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut c = InstanceConfig::new(&self.name, &self.interface, vrid, priority, vips);
        c.version = version;
        c.advert_interval = self.advert_interval.get();
        c.preempt = self.preempt;
        c.preempt_delay = self.preempt_delay.get();
        c.checksum_mode = checksum_mode;
        c.checksum_accept = checksum_accept;
        c.unicast_peers = self.unicast_peers.clone();
        c.local_address = self.local_address;
        c.garp_repeat = self.garp_repeat;
        c.garp_interval = self.garp_interval.get();
        c.notify = self.notify.clone();
        Ok(c)
    }
}

fn parse_checksum(s: &str) -> Option<ChecksumMode> {
    match s {
        "keepalived" => Some(ChecksumMode::PseudoHeader),
        "rfc9568" => Some(ChecksumMode::MessageOnly),
        _ => None,
    }
}

fn parse_vip(s: &str) -> Result<Vip, String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address with prefix (\"10.0.0.100/24\")"))?;
    let prefix_len = match prefix {
        None if addr.is_ipv4() => 32,
        None => 128,
        Some(p) => p
            .trim()
            .parse::<u8>()
            .map_err(|_| format!("{s:?}: prefix length must be a number"))?,
    };
    Ok(Vip { addr, prefix_len })
}

/// What validation may ask of the host: the addresses of an interface, `None` if it is absent.
pub trait HostView {
    /// Addresses on `interface`, or `None` when no such interface exists here.
    fn addresses_of(&self, interface: &str) -> Option<Vec<IpAddr>>;
}

/// The host this process runs on (its network namespace), read once through rtnetlink.
pub struct ThisHost {
    addrs: Vec<gatehouse_vrrp::linux::netlink::IfAddr>,
}

impl ThisHost {
    /// Reads every address of the namespace; an unreadable table reads as empty.
    pub fn read() -> ThisHost {
        let addrs = Netlink::open()
            .and_then(|mut n| n.addresses())
            .unwrap_or_default();
        ThisHost { addrs }
    }
}

impl HostView for ThisHost {
    fn addresses_of(&self, interface: &str) -> Option<Vec<IpAddr>> {
        let idx = net::ifindex(interface).ok()?;
        Some(
            self.addrs
                .iter()
                .filter(|a| a.ifindex == idx)
                .map(|a| a.addr)
                .collect(),
        )
    }
}

/// Checks every `[[halb.vrrp]]` section against the rest of `halb` and this host; pushes each
/// problem with its key path under `at` (`halb`). Called by `config::validate`.
pub fn validate(halb: &HalbConfig, at: &KeyPath, problems: &mut Vec<(KeyPath, String)>) {
    if halb.vrrp.is_empty() {
        return;
    }
    validate_with_host(halb, at, &ThisHost::read(), problems);
}

/// [`validate`] with the host view passed in (unit tests pass a fake one).
pub fn validate_with_host(
    halb: &HalbConfig,
    at: &KeyPath,
    host: &dyn HostView,
    problems: &mut Vec<(KeyPath, String)>,
) {
    let pools: HashSet<&str> = halb.pool.iter().map(|p| p.name.as_str()).collect();
    let mut configs = Vec::new();
    let mut all_ok = true;
    for (i, s) in halb.vrrp.iter().enumerate() {
        let here = at.key("vrrp").index(i);
        if let Some(pool) = &s.track_pool {
            if !pools.contains(pool.as_str()) {
                problems.push((here.key("track_pool"), format!("no pool named {pool:?}")));
            }
        }
        if s.track_min_healthy == 0 && s.track_pool.is_some() {
            problems.push((here.key("track_min_healthy"), "must be at least 1".into()));
        }
        if s.track_weight > 254 {
            // A backup's priority is at most 254: a larger drop is a fault, say so instead.
            problems.push((
                here.key("track_weight"),
                "must be 0..=254 (a pool with no healthy backend already makes a fault)".into(),
            ));
        }
        if let Some(script) = &s.notify {
            use std::os::unix::fs::PermissionsExt;
            match std::fs::metadata(script) {
                Err(e) => problems.push((here.key("notify"), format!("{}: {e}", script.display()))),
                Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => problems.push((
                    here.key("notify"),
                    format!("{} is not an executable file", script.display()),
                )),
                Ok(_) => {}
            }
        }
        for (j, iface) in s.track_interfaces.iter().enumerate() {
            if host.addresses_of(iface).is_none() {
                problems.push((
                    here.key("track_interfaces").index(j),
                    format!("interface {iface} does not exist on this host"),
                ));
            }
        }
        match s.instance_config() {
            Ok(c) => {
                let checked = c
                    .validate()
                    .and_then(|_| c.validate_on_host(|i| host.addresses_of(i)));
                if let Err(e) = checked {
                    problems.push((here.key(key_of(&e)), e.to_string()));
                    all_ok = false;
                } else if let (Some(addr), Some(own)) = (s.local_address, host.addresses_of(&s.interface)) {
                    // Adverts from an address the interface does not have are dropped by
                    // peers that check the source, and replies never come back.
                    if !own.contains(&addr) {
                        problems.push((
                            here.key("local_address"),
                            format!("{addr} is not an address of interface {}", s.interface),
                        ));
                    }
                }
                configs.push(c);
            }
            Err(list) => {
                all_ok = false;
                for (key, msg) in list {
                    problems.push((here.key(key), msg));
                }
            }
        }
    }
    // Duplicate names and one VRID twice on one interface: only meaningful once each is valid.
    if all_ok {
        if let Err(e) = validate_set(&configs) {
            let name = instance_of(&e);
            // The error names the second instance of the pair.
            let i = halb
                .vrrp
                .iter()
                .rposition(|s| Some(s.name.as_str()) == name)
                .unwrap_or(0);
            problems.push((at.key("vrrp").index(i).key(key_of(&e)), e.to_string()));
        }
    }
    // A listener on a VIP must bind on the backup too, where the VIP is not (yet) local.
    let vips: Vec<(IpAddr, &str)> = configs
        .iter()
        .flat_map(|c| c.vips.iter().map(move |v| (v.addr, c.name.as_str())))
        .collect();
    for (i, l) in halb.listener.iter().enumerate() {
        if let Some((_, name)) = vips.iter().find(|(a, _)| *a == l.bind.ip()) {
            if !l.freebind {
                problems.push((
                    at.key("listener").index(i).key("freebind"),
                    format!(
                        "listener {:?} binds {}, a VIP of vrrp instance {name:?}: set freebind = true so it also binds on the backup",
                        l.name,
                        l.bind.ip()
                    ),
                ));
            }
        }
    }
}

/// The key of a section a vrrp crate error is about.
fn key_of(e: &VrrpConfigError) -> &'static str {
    match e {
        VrrpConfigError::EmptyName | VrrpConfigError::DuplicateName(_) => "name",
        VrrpConfigError::BadInterfaceName(..) | VrrpConfigError::NoSuchInterface(..) => "interface",
        VrrpConfigError::VridOutOfRange(..) | VrrpConfigError::DuplicateVrid(..) => "vrid",
        VrrpConfigError::PriorityOutOfRange(..) | VrrpConfigError::NotAddressOwner(..) => "priority",
        VrrpConfigError::IntervalOutOfRange(..) => "advert_interval",
        VrrpConfigError::GarpRepeatZero(_) => "garp_repeat",
        VrrpConfigError::PeerFamily(_, key, _) => key,
        VrrpConfigError::NoVips(_)
        | VrrpConfigError::TooManyVips(_)
        | VrrpConfigError::DuplicateVip(_)
        | VrrpConfigError::MixedFamilies(_)
        | VrrpConfigError::BadPrefixLen(..)
        | VrrpConfigError::V2IsIpv4Only(_)
        | VrrpConfigError::Ipv6NotSupported(_)
        | VrrpConfigError::VirtualMacUnsupported(_) => "vips",
    }
}

fn instance_of(e: &VrrpConfigError) -> Option<&str> {
    match e {
        VrrpConfigError::EmptyName => None,
        VrrpConfigError::BadInterfaceName(n, _)
        | VrrpConfigError::VridOutOfRange(n, _)
        | VrrpConfigError::PriorityOutOfRange(n, _)
        | VrrpConfigError::IntervalOutOfRange(n, ..)
        | VrrpConfigError::NoVips(n)
        | VrrpConfigError::TooManyVips(n)
        | VrrpConfigError::DuplicateVip(n)
        | VrrpConfigError::MixedFamilies(n)
        | VrrpConfigError::PeerFamily(n, ..)
        | VrrpConfigError::BadPrefixLen(n, _)
        | VrrpConfigError::V2IsIpv4Only(n)
        | VrrpConfigError::Ipv6NotSupported(n)
        | VrrpConfigError::GarpRepeatZero(n)
        | VrrpConfigError::VirtualMacUnsupported(n)
        | VrrpConfigError::NoSuchInterface(n, _)
        | VrrpConfigError::NotAddressOwner(n, _)
        | VrrpConfigError::DuplicateName(n)
        | VrrpConfigError::DuplicateVrid(n, ..) => Some(n),
    }
}

/// The priority adjustment of one instance from the current snapshot and link states: 0 when
/// all is well, `-track_weight` while the tracked pool has fewer than `track_min_healthy`
/// healthy backends, [`FAULT_ADJUSTMENT`] when it has none or a tracked interface is down.
/// Pure; the runner thread calls it through the [`PrioritySource`] every `TRACK_PERIOD`.
pub fn priority_adjustment(
    section: &VrrpSection,
    snapshot: &Snapshot,
    link_up: &dyn Fn(&str) -> bool,
) -> i32 {
    if section.track_interfaces.iter().any(|i| !link_up(i)) {
        return FAULT_ADJUSTMENT;
    }
    let Some(pool) = &section.track_pool else {
        return 0;
    };
    let Some(plan) = snapshot.pools.iter().find(|p| &p.name == pool) else {
        // A reload removed the pool: nothing to track any more.
        return 0;
    };
    let healthy = plan
        .backends
        .iter()
        .filter(|b| b.admin == AdminState::Up && b.health == Health::Up)
        .count();
    if healthy == 0 {
        FAULT_ADJUSTMENT
    } else if (healthy as u64) < u64::from(section.track_min_healthy) {
        -(section.track_weight.min(1000) as i32)
    } else {
        0
    }
}

/// The running VRRP role of a node: the runner thread, an event thread that logs and counts
/// transitions, and the metrics source. Started last by `Node::start`, just before the
/// workers start accepting; stopped first on shutdown so the VIP moves before the listeners
/// close.
pub struct VrrpRole {
    runner: Arc<Mutex<Option<Runner>>>,
    events: Option<JoinHandle<()>>,
}

impl VrrpRole {
    /// Starts the `[[halb.vrrp]]` instances of the node's config (none: `Ok(None)`), with
    /// tracking reading `shared`'s snapshot, and registers the metrics source.
    pub fn start(shared: &Arc<Shared>) -> Result<Option<VrrpRole>, String> {
        let config = shared.config();
        let Some(halb) = &config.halb else {
            return Ok(None);
        };
        if halb.vrrp.is_empty() {
            return Ok(None);
        }
        let sections: Arc<Vec<VrrpSection>> = Arc::new(halb.vrrp.clone());
        let mut configs = Vec::new();
        for s in sections.iter() {
            let c = s.instance_config().map_err(|p| {
                let list: Vec<String> = p.into_iter().map(|(k, m)| format!("{k}: {m}")).collect();
                format!("vrrp instance {:?}: {}", s.name, list.join("; "))
            })?;
            configs.push(c);
        }
        let tracker = Arc::new(Tracker::new(sections.clone(), shared)?);
        let for_runner = tracker.clone();
        let source: PrioritySource = Arc::new(move |name: &str| for_runner.adjustment(name));
        let (tx, rx) = crossbeam_channel::bounded(256);
        let runner = Runner::spawn(configs, source, tx).map_err(|e| format!("vrrp: {e}"))?;
        let counters = runner.counters();
        let transitions: Arc<Vec<(String, AtomicU64)>> = Arc::new(
            sections
                .iter()
                .map(|s| (s.name.clone(), AtomicU64::new(0)))
                .collect(),
        );
        let vips_of: Vec<(String, Vec<String>)> = sections
            .iter()
            .map(|s| (s.name.clone(), s.vips.clone()))
            .collect();
        let counted = transitions.clone();
        let events = std::thread::Builder::new()
            .name("vrrp-events".into())
            .spawn(move || {
                // Ends when the runner thread ends and drops its sender.
                for ev in rx {
                    on_event(ev, &counted, &vips_of);
                }
            })
            .map_err(|e| format!("vrrp: {e}"))?;
        let runner = Arc::new(Mutex::new(Some(runner)));
        let view = runner.clone();
        shared.add_metrics_source(Box::new(move |out: &mut String| {
            let mut states = view.lock().as_ref().map(|r| r.states()).unwrap_or_default();
            // The runner records the priority at state changes; report the one in force now.
            for st in &mut states {
                if let Some(p) = tracker.effective_priority(&st.name) {
                    st.priority = p;
                }
            }
            render_metrics(out, &states, &counters, &transitions);
        }));
        tracing::info!(instances = sections.len(), "VRRP started");
        Ok(Some(VrrpRole {
            runner,
            events: Some(events),
        }))
    }

    /// Hands the VIPs over: masters send a priority-0 advert and remove their VIPs (RFC 5798
    /// §6.4.3), then the thread ends. Called before draining, so a client's next connection
    /// already reaches the new master while sessions here finish.
    pub fn shutdown(mut self) {
        let runner = self.runner.lock().take();
        if let Some(r) = runner {
            match r.shutdown() {
                Ok(()) => tracing::info!("VRRP stopped: VIPs handed over"),
                Err(e) => tracing::error!(error = %e, "VRRP stop failed"),
            }
        }
        if let Some(t) = self.events.take() {
            let _ = t.join();
        }
    }
}

/// The tracking rule bound to a node: sections, the shared snapshot, and a socket for link
/// ioctls. Called from the runner thread (every `TRACK_PERIOD`) and the metrics exporter.
struct Tracker {
    sections: Arc<Vec<VrrpSection>>,
    // Weak: the metrics source that holds this lives inside `Shared`.
    shared: Weak<Shared>,
    probe: socket2::Socket,
}

impl Tracker {
    fn new(sections: Arc<Vec<VrrpSection>>, shared: &Arc<Shared>) -> Result<Tracker, String> {
        let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
            .map_err(|e| format!("vrrp: link probe socket: {e}"))?;
        Ok(Tracker {
            sections,
            shared: Arc::downgrade(shared),
            probe,
        })
    }

    fn adjustment(&self, name: &str) -> i32 {
        let (Some(section), Some(shared)) = (
            self.sections.iter().find(|s| s.name == name),
            self.shared.upgrade(),
        ) else {
            return 0;
        };
        let fd = self.probe.as_raw_fd();
        let link_up = |i: &str| net::link_info(fd, i).map(|l| l.running).unwrap_or(false);
        priority_adjustment(section, &shared.snapshot(), &link_up)
    }

    /// The priority the runner uses now (0 while tracking holds the instance in fault), by the
    /// runner's rule: configured + adjustment, clamped to 1..=254, the owner's 255 fixed.
    fn effective_priority(&self, name: &str) -> Option<u8> {
        let section = self.sections.iter().find(|s| s.name == name)?;
        let configured = u8::try_from(section.priority).ok()?;
        if configured == 255 {
            return Some(255);
        }
        let p = i32::from(configured).saturating_add(self.adjustment(name));
        Some(if p <= 0 { 0 } else { p.clamp(1, 254) as u8 })
    }
}

fn on_event(ev: VrrpEvent, transitions: &[(String, AtomicU64)], vips_of: &[(String, Vec<String>)]) {
    match ev {
        VrrpEvent::StateChanged {
            instance,
            from,
            to,
            priority,
        } => {
            if let Some((_, n)) = transitions.iter().find(|(name, _)| *name == instance) {
                n.fetch_add(1, Ordering::Relaxed);
            }
            let vips = vips_of
                .iter()
                .find(|(n, _)| *n == instance)
                .map(|(_, v)| v.join(", "))
                .unwrap_or_default();
            match to {
                State::Master => {
                    tracing::info!(%instance, priority, vips = %vips, "HALB is now master: serving the VIPs")
                }
                _ if from == State::Master => tracing::warn!(
                    %instance, priority, to = to.name(), vips = %vips,
                    "HALB released the VIPs"
                ),
                _ => {}
            }
        }
        // The runner has logged it already; a failed VIP change is worth a second, HALB-level line.
        VrrpEvent::Error { instance, message } => {
            tracing::error!(%instance, %message, "VRRP: VIPs may not follow the state")
        }
    }
}

const STATES: [State; 4] = [State::Initialize, State::Backup, State::Master, State::Fault];

/// Appends the VRRP metrics in Prometheus text format.
fn render_metrics(
    out: &mut String,
    states: &[gatehouse_vrrp::linux::InstanceStatus],
    counters: &Counters,
    transitions: &[(String, AtomicU64)],
) {
    out.push_str("# HELP gatehouse_vrrp_state VRRP state of an instance (1 for the current one).\n");
    out.push_str("# TYPE gatehouse_vrrp_state gauge\n");
    for s in states {
        for st in STATES {
            let _ = writeln!(
                out,
                "gatehouse_vrrp_state{{instance=\"{}\",state=\"{}\"}} {}",
                label(&s.name),
                st.name(),
                u8::from(s.state == st)
            );
        }
    }
    out.push_str("# HELP gatehouse_vrrp_priority Effective VRRP priority of an instance.\n");
    out.push_str("# TYPE gatehouse_vrrp_priority gauge\n");
    for s in states {
        let _ = writeln!(
            out,
            "gatehouse_vrrp_priority{{instance=\"{}\"}} {}",
            label(&s.name),
            s.priority
        );
    }
    out.push_str("# HELP gatehouse_vrrp_transitions_total VRRP state changes of an instance.\n");
    out.push_str("# TYPE gatehouse_vrrp_transitions_total counter\n");
    for (name, n) in transitions {
        let _ = writeln!(
            out,
            "gatehouse_vrrp_transitions_total{{instance=\"{}\"}} {}",
            label(name),
            n.load(Ordering::Relaxed)
        );
    }
    for (metric, help, value) in [
        (
            "adverts_sent_total",
            "VRRP adverts sent.",
            counters.adverts_sent(),
        ),
        (
            "adverts_received_total",
            "VRRP adverts received and accepted by the decoder.",
            counters.adverts_received(),
        ),
        (
            "garps_sent_total",
            "Gratuitous ARPs sent (one per VIP).",
            counters.garps_sent(),
        ),
        (
            "send_errors_total",
            "Failed sends of adverts or ARPs.",
            counters.send_errors(),
        ),
    ] {
        let _ = writeln!(out, "# HELP gatehouse_vrrp_{metric} {help}");
        let _ = writeln!(out, "# TYPE gatehouse_vrrp_{metric} counter");
        let _ = writeln!(out, "gatehouse_vrrp_{metric} {value}");
    }
    out.push_str("# HELP gatehouse_vrrp_dropped_total VRRP packets dropped, by reason.\n");
    out.push_str("# TYPE gatehouse_vrrp_dropped_total counter\n");
    for (reason, n) in counters.dropped() {
        let _ = writeln!(out, "gatehouse_vrrp_dropped_total{{reason=\"{reason}\"}} {n}");
    }
}

/// How long the state machine waits for a silent master before taking over, for logs and tests:
/// `3 * interval + skew` (RFC 5798 §6.1).
pub fn master_down_interval(section: &VrrpSection) -> Option<Duration> {
    let c = section.instance_config().ok()?;
    Some(gatehouse_vrrp::instance::master_down_interval(
        c.version,
        c.priority,
        c.advert_interval,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::{load_str, ValidateOptions};

    struct FakeHost(HashMap<&'static str, Vec<IpAddr>>);

    impl HostView for FakeHost {
        fn addresses_of(&self, interface: &str) -> Option<Vec<IpAddr>> {
            self.0.get(interface).cloned()
        }
    }

    fn host() -> FakeHost {
        let mut m = HashMap::new();
        m.insert("eth0", vec!["10.213.9.1".parse().unwrap()]);
        m.insert("eth1", vec!["10.213.8.100".parse().unwrap()]);
        FakeHost(m)
    }

    const BASE: &str = r#"
[[halb.listener]]
name = "rdp"
bind = "10.213.9.100:3389"
pool = "gw"
freebind = true

[[halb.pool]]
name = "gw"
algorithm = "source-hash"
backends = [{ address = "10.213.9.11:443" }, { address = "10.213.9.12:443" }]
"#;

    fn parse(extra: &str) -> HalbConfig {
        let text = format!("{BASE}\n{extra}");
        let cfg: crate::config::Config = toml::from_str(&text).expect("test config parses");
        cfg.halb.expect("has halb")
    }

    fn problems(extra: &str) -> Vec<(String, String)> {
        let halb = parse(extra);
        let mut out = Vec::new();
        validate_with_host(&halb, &KeyPath::root().key("halb"), &host(), &mut out);
        out.into_iter().map(|(k, m)| (k.to_string(), m)).collect()
    }

    const GOOD: &str = r#"
[[halb.vrrp]]
name = "vi1"
interface = "eth0"
vrid = 51
priority = 150
advert_interval = "100ms"
vips = ["10.213.9.100/24"]
track_pool = "gw"
track_min_healthy = 2
track_weight = 60
"#;

    #[test]
    fn a_good_section_converts_with_defaults() {
        assert_eq!(problems(GOOD), vec![]);
        let halb = parse(GOOD);
        let c = halb.vrrp[0].instance_config().expect("valid");
        assert_eq!(c.vrid, 51);
        assert_eq!(c.version, Version::V3);
        assert_eq!(c.advert_interval_cs(), 10);
        assert!(c.preempt);
        assert_eq!(c.checksum_mode, ChecksumMode::PseudoHeader);
        assert_eq!(c.checksum_accept, ChecksumAccept::PseudoHeader);
        assert_eq!(c.garp_repeat, 3);
        assert_eq!(c.vips[0].prefix_len, 24);
        // 3 * 100 ms + (256 - 150) * 100 ms / 256
        let md = master_down_interval(&halb.vrrp[0]).expect("valid");
        assert!(
            md > Duration::from_millis(340) && md < Duration::from_millis(345),
            "{md:?}"
        );
    }

    #[test]
    fn range_and_form_errors_name_their_keys() {
        let bad = GOOD
            .replace("vrid = 51", "vrid = 256")
            .replace("priority = 150", "priority = 0")
            .replace("\"10.213.9.100/24\"", "\"10.213.9.300/24\"")
            .replace(
                "name = \"vi1\"",
                "name = \"vi1\"\nchecksum = \"crc\"\nversion = 4",
            );
        let p = problems(&bad);
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["vrid", "priority", "vips", "checksum", "version"] {
            assert!(
                keys.contains(&format!("halb.vrrp[0].{k}").as_str()),
                "{k} missing in {p:?}"
            );
        }
        assert!(
            p.iter().any(|(_, m)| m.contains("VRID 256 is out of range")),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_pool_missing_interface_and_interval_are_refused() {
        let bad = GOOD
            .replace(
                "track_pool = \"gw\"",
                "track_pool = \"nope\"\ntrack_interfaces = [\"eth9\"]",
            )
            .replace("interface = \"eth0\"", "interface = \"eth7\"");
        let p = problems(&bad);
        assert!(
            p.contains(&("halb.vrrp[0].track_pool".into(), "no pool named \"nope\"".into())),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|(k, m)| k == "halb.vrrp[0].interface" && m.contains("eth7 does not exist")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|(k, _)| k == "halb.vrrp[0].track_interfaces[0]"),
            "{p:?}"
        );
        let p = problems(&GOOD.replace("\"100ms\"", "\"105ms\""));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "halb.vrrp[0].advert_interval");
    }

    #[test]
    fn peers_local_address_notify_and_weight_are_checked_at_their_keys() {
        let p = problems(&GOOD.replace("vrid = 51", "vrid = 51\nunicast_peers = [\"fe80::2\"]"));
        assert_eq!(
            p,
            [(
                "halb.vrrp[0].unicast_peers".to_string(),
                "instance vi1: unicast_peers fe80::2 is not of the VIPs' address family".to_string()
            )]
        );
        let p = problems(&GOOD.replace("vrid = 51", "vrid = 51\nlocal_address = \"fe80::1\""));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "halb.vrrp[0].local_address");
        // eth0 has 10.213.9.1, not .2.
        let p = problems(&GOOD.replace("vrid = 51", "vrid = 51\nlocal_address = \"10.213.9.2\""));
        assert_eq!(
            p,
            [(
                "halb.vrrp[0].local_address".to_string(),
                "10.213.9.2 is not an address of interface eth0".to_string()
            )]
        );
        assert_eq!(
            problems(&GOOD.replace("vrid = 51", "vrid = 51\nlocal_address = \"10.213.9.1\"")),
            vec![]
        );
        let p = problems(&GOOD.replace("track_weight = 60", "track_weight = 500"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "halb.vrrp[0].track_weight");
        let p = problems(&GOOD.replace("vrid = 51", "vrid = 51\nnotify = \"/nonexistent/notify.sh\""));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "halb.vrrp[0].notify");
        assert!(p[0].1.starts_with("/nonexistent/notify.sh: "), "{p:?}");
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("notify.sh");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        let with_script = GOOD.replace(
            "vrid = 51",
            &format!("vrid = 51\nnotify = \"{}\"", script.display()),
        );
        let p = problems(&with_script);
        assert!(
            p.len() == 1 && p[0].1.ends_with("is not an executable file"),
            "{p:?}"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(problems(&with_script), vec![]);
    }

    #[test]
    fn one_vrid_twice_on_an_interface_is_refused_on_the_second() {
        let two = format!(
            "{GOOD}\n{}",
            GOOD.replace("vi1", "vi2").replace("10.213.9.100", "10.213.9.101")
        );
        let p = problems(&two);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "halb.vrrp[1].vrid");
        assert!(p[0].1.contains("already used"), "{p:?}");
        let other_vrid = two.replacen("vrid = 51", "vrid = 52", 1);
        assert_eq!(problems(&other_vrid), vec![]);
    }

    #[test]
    fn priority_255_needs_the_address() {
        let p = problems(&GOOD.replace("priority = 150", "priority = 255"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "halb.vrrp[0].priority");
        assert!(p[0].1.contains("address owner"));
        // eth1 really has 10.213.8.100.
        let owner = GOOD
            .replace("priority = 150", "priority = 255")
            .replace("interface = \"eth0\"", "interface = \"eth1\"")
            .replace("10.213.9.100/24", "10.213.8.100/24");
        assert_eq!(problems(&owner), vec![]);
    }

    #[test]
    fn a_listener_on_a_vip_needs_freebind() {
        let text = GOOD.to_string();
        let mut halb = parse(&text);
        halb.listener[0].freebind = false;
        let mut out = Vec::new();
        validate_with_host(&halb, &KeyPath::root().key("halb"), &host(), &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0.to_string(), "halb.listener[0].freebind");
    }

    #[test]
    fn the_whole_loader_reports_line_and_key() {
        // Through config::load_str (validate.rs calls into this module); eth0 rarely exists in
        // a test namespace, so only check that the vrrp problem is reported with its key.
        let text = format!("{BASE}\n{}", GOOD.replace("vrid = 51", "vrid = 0"));
        let err = load_str(&text, "t.toml", ValidateOptions::default()).expect_err("vrid 0");
        let e = err
            .0
            .iter()
            .find(|e| e.key == "halb.vrrp[0].vrid")
            .expect("vrid error");
        assert!(e.line > 0 && e.message.contains("out of range"), "{e}");
    }

    fn snapshot_with(health: &[Health]) -> Arc<Snapshot> {
        let mut cfg: crate::config::Config =
            toml::from_str(&format!("{BASE}\n{GOOD}")).expect("test config parses");
        let halb = cfg.halb.as_mut().expect("halb");
        let first = halb.pool[0].backends[0].clone();
        halb.pool[0].backends.clear();
        for (i, _) in health.iter().enumerate() {
            let mut b = first.clone();
            b.name = format!("b{i}");
            b.address.set_port(1000 + i as u16);
            halb.pool[0].backends.push(b);
        }
        let (shared, _rx) = Shared::new(cfg);
        for (i, h) in health.iter().enumerate() {
            shared.set_health("gw", &format!("b{i}"), *h);
        }
        shared.snapshot()
    }

    #[test]
    fn tracking_lowers_priority_then_faults() {
        let s = parse(GOOD).vrrp[0].clone();
        let up = |_: &str| true;
        assert_eq!(
            priority_adjustment(&s, &snapshot_with(&[Health::Up, Health::Up]), &up),
            0
        );
        assert_eq!(
            priority_adjustment(&s, &snapshot_with(&[Health::Up, Health::Down]), &up),
            -60
        );
        assert_eq!(
            priority_adjustment(&s, &snapshot_with(&[Health::Down, Health::Down]), &up),
            FAULT_ADJUSTMENT
        );
        let mut t = s.clone();
        t.track_interfaces = vec!["eth1".into()];
        let down = |i: &str| i != "eth1";
        assert_eq!(
            priority_adjustment(&t, &snapshot_with(&[Health::Up, Health::Up]), &down),
            FAULT_ADJUSTMENT
        );
        let mut untracked = s;
        untracked.track_pool = None;
        assert_eq!(
            priority_adjustment(&untracked, &snapshot_with(&[Health::Down]), &up),
            0
        );
    }

    #[test]
    fn metrics_list_every_state_and_reason() {
        let counters = Counters::default();
        counters.drop_packet(gatehouse_vrrp::DecodeError::BadTtl);
        counters.drop_packet(gatehouse_vrrp::DecodeError::BadTtl);
        let states = vec![gatehouse_vrrp::linux::InstanceStatus {
            name: "vi\"1".into(),
            state: State::Master,
            priority: 90,
        }];
        let transitions = vec![("vi\"1".to_string(), AtomicU64::new(3))];
        let mut out = String::new();
        render_metrics(&mut out, &states, &counters, &transitions);
        assert!(
            out.contains("gatehouse_vrrp_state{instance=\"vi\\\"1\",state=\"master\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("gatehouse_vrrp_state{instance=\"vi\\\"1\",state=\"backup\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("gatehouse_vrrp_priority{instance=\"vi\\\"1\"} 90\n"),
            "{out}"
        );
        assert!(
            out.contains("gatehouse_vrrp_transitions_total{instance=\"vi\\\"1\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("gatehouse_vrrp_dropped_total{reason=\"bad_ttl\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("gatehouse_vrrp_dropped_total{reason=\"truncated\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("gatehouse_vrrp_adverts_sent_total 0\n"), "{out}");
    }
}
