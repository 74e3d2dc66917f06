//! The VRRP control thread: runs a set of [`Instance`] state machines against real sockets.
//!
//! Owns the raw sockets, the netlink socket, the ARP socket and the thread. It moves bytes and
//! timers and carries out the core's [`Action`]s; it decides nothing itself. All sockets are
//! opened by [`Runner::spawn`] in the calling thread's network namespace, and the worker thread
//! inherits that namespace.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::net::{self, ArpSocket, LinkInfo, VrrpSocket};
use super::netlink::Netlink;
use crate::config::{validate_set, InstanceConfig};
use crate::instance::{Action, Event, Instance, State};
use crate::packet::{parse_ipv4, Advert, DecodeError, Endpoints, MAX_DATAGRAM_LEN, VRRP_MULTICAST_V4};

/// Priority adjustment per instance name (e.g. minus a weight while the gateway pool is short).
/// Effective priority = configured + adjustment, clamped to 1..=254; at or below 0 the instance
/// goes to Fault. Called from the VRRP thread every [`TRACK_PERIOD`]; it must not block.
pub type PrioritySource = Arc<dyn Fn(&str) -> i32 + Send + Sync>;

/// How often the thread re-reads the priority source and the interfaces' link state.
pub const TRACK_PERIOD: Duration = Duration::from_millis(50);

/// Reported to the owner of a [`Runner`] over its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VrrpEvent {
    /// An instance changed state.
    StateChanged {
        /// Instance name.
        instance: String,
        /// Previous state.
        from: State,
        /// New state.
        to: State,
        /// Effective priority at the change.
        priority: u8,
    },
    /// An operation on the host failed (adding a VIP, sending); the instance keeps running.
    Error {
        /// Instance name.
        instance: String,
        /// What failed.
        message: String,
    },
}

/// Current state of one instance, as [`Runner::states`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    /// Instance name.
    pub name: String,
    /// Current state.
    pub state: State,
    /// Effective priority.
    pub priority: u8,
}

/// Packet counters of a runner, shared with the metrics exporter.
#[derive(Debug, Default)]
pub struct Counters {
    dropped: [AtomicU64; DecodeError::ALL.len()],
    adverts_received: AtomicU64,
    adverts_sent: AtomicU64,
    send_errors: AtomicU64,
    garps_sent: AtomicU64,
}

impl Counters {
    /// Count one dropped packet.
    pub fn drop_packet(&self, reason: DecodeError) {
        self.dropped[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Dropped packets per reason label, every reason listed (zeros included), for
    /// `vrrp_dropped_total{reason=...}`.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        DecodeError::ALL
            .iter()
            .map(|e| (e.reason(), self.dropped[e.index()].load(Ordering::Relaxed)))
            .collect()
    }

    /// Dropped packets for one reason.
    pub fn dropped_for(&self, reason: DecodeError) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    /// Adverts accepted by the decoder and handed to an instance.
    pub fn adverts_received(&self) -> u64 {
        self.adverts_received.load(Ordering::Relaxed)
    }

    /// Adverts sent (one per destination).
    pub fn adverts_sent(&self) -> u64 {
        self.adverts_sent.load(Ordering::Relaxed)
    }

    /// Failed sends of adverts or ARPs.
    pub fn send_errors(&self) -> u64 {
        self.send_errors.load(Ordering::Relaxed)
    }

    /// Gratuitous ARPs sent (one per VIP per round).
    pub fn garps_sent(&self) -> u64 {
        self.garps_sent.load(Ordering::Relaxed)
    }
}

/// A running set of VRRP instances on their own thread.
#[derive(Debug)]
pub struct Runner {
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    status: Arc<Mutex<Vec<InstanceStatus>>>,
}

impl Runner {
    /// Validate `configs` against the host, remove stale VIPs left by a killed process, open the
    /// sockets (in the calling thread's network namespace) and start the thread.
    pub fn spawn(
        configs: Vec<InstanceConfig>,
        priority_source: PrioritySource,
        events: Sender<VrrpEvent>,
    ) -> io::Result<Runner> {
        validate_set(&configs).map_err(invalid)?;
        let mut netlink = Netlink::open()?;
        let all_addrs = netlink.addresses()?;
        let arp = ArpSocket::open()?;

        let mut ifaces: Vec<Iface> = Vec::new();
        let mut slots = Vec::with_capacity(configs.len());
        for cfg in configs {
            let ifindex = net::ifindex(&cfg.interface).ok();
            let on_iface = |i: u32| -> Vec<IpAddr> {
                all_addrs
                    .iter()
                    .filter(|a| a.ifindex == i)
                    .map(|a| a.addr)
                    .collect()
            };
            cfg.validate_on_host(|_| ifindex.map(on_iface)).map_err(invalid)?;
            let Some(ifindex) = ifindex else {
                return Err(invalid(format!("interface {} does not exist", cfg.interface)));
            };
            let local = match cfg.local_address {
                Some(IpAddr::V4(a)) => a,
                Some(IpAddr::V6(_)) => return Err(invalid("IPv6 local address")),
                None => primary_v4(&all_addrs, ifindex, &cfg).ok_or_else(|| {
                    invalid(format!(
                        "{} has no IPv4 address to send adverts from",
                        cfg.interface
                    ))
                })?,
            };
            if !cfg.is_owner() {
                // A SIGKILLed master leaves its VIPs behind; drop them before electing.
                for vip in &cfg.vips {
                    let stale = all_addrs
                        .iter()
                        .filter(|a| a.ifindex == ifindex && a.addr == vip.addr);
                    for a in stale {
                        tracing::warn!(instance = %cfg.name, vip = %vip.addr, "removing stale VIP");
                        // The prefix as found, which may differ from the configured one.
                        netlink.del_address(ifindex, a.addr, a.prefix_len)?;
                    }
                }
            }
            let iface = match ifaces.iter().position(|i| i.ifindex == ifindex) {
                Some(i) => i,
                None => {
                    ifaces.push(Iface {
                        name: cfg.interface.clone(),
                        ifindex,
                        sock: None,
                        multicast: false,
                        link: net::link_info(arp.raw_fd(), &cfg.interface)?,
                    });
                    ifaces.len() - 1
                }
            };
            ifaces[iface].multicast |= cfg.unicast_peers.is_empty();
            let dsts = if cfg.unicast_peers.is_empty() {
                vec![VRRP_MULTICAST_V4]
            } else {
                cfg.unicast_peers
                    .iter()
                    .filter_map(|p| match p {
                        IpAddr::V4(a) => Some(*a),
                        IpAddr::V6(_) => None,
                    })
                    .collect()
            };
            let inst = Instance::new(&cfg, IpAddr::V4(local));
            slots.push(Slot {
                cfg,
                inst,
                iface,
                local,
                dsts,
                tracking_fault: false,
            });
        }
        for iface in &mut ifaces {
            iface.sock = Some(VrrpSocket::open(&iface.name, iface.ifindex, iface.multicast)?);
        }
        let counters = Arc::new(Counters::default());
        let status = Arc::new(Mutex::new(
            slots
                .iter()
                .map(|s| InstanceStatus {
                    name: s.cfg.name.clone(),
                    state: State::Initialize,
                    priority: s.cfg.priority,
                })
                .collect(),
        ));
        let (wake, wake_rx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        let worker = Worker {
            ifaces,
            slots,
            netlink,
            arp,
            counters: counters.clone(),
            status: status.clone(),
            events,
            priority_source,
            wake_rx,
        };
        let thread = std::thread::Builder::new()
            .name("vrrp".into())
            .spawn(move || worker.run())?;
        Ok(Runner {
            wake,
            thread: Some(thread),
            counters,
            status,
        })
    }

    /// Stop gracefully: masters send a priority-0 advert and remove their VIPs; then the thread
    /// ends and is joined.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    /// Stop the thread at once without a handover: no priority-0 advert, VIPs left in place, as
    /// a SIGKILL would leave them. For failover tests; production code calls [`Runner::shutdown`].
    pub fn abandon(mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.wake.write_all(&[WAKE_ABANDON]);
        thread
            .join()
            .map_err(|_| io::Error::other("VRRP thread panicked"))
    }

    /// The packet counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Current state and priority of every instance, in configuration order.
    pub fn states(&self) -> Vec<InstanceStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stop(&mut self) -> io::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        // The worker may already be gone (it panicked): then the write fails, join reports it.
        let _ = self.wake.write_all(&[WAKE_SHUTDOWN]);
        thread
            .join()
            .map_err(|_| io::Error::other("VRRP thread panicked"))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(error = %e, "VRRP thread ended badly");
        }
    }
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// The first primary IPv4 address of the interface that is not one of the instance's VIPs.
fn primary_v4(all: &[super::netlink::IfAddr], ifindex: u32, cfg: &InstanceConfig) -> Option<Ipv4Addr> {
    let candidates = all
        .iter()
        .filter(|a| a.ifindex == ifindex && !cfg.vips.iter().any(|v| v.addr == a.addr));
    let mut secondary = None;
    for a in candidates {
        if let IpAddr::V4(v4) = a.addr {
            if !a.secondary {
                return Some(v4);
            }
            secondary.get_or_insert(v4);
        }
    }
    secondary
}

struct Iface {
    name: String,
    ifindex: u32,
    sock: Option<VrrpSocket>,
    multicast: bool,
    link: LinkInfo,
}

struct Slot {
    cfg: InstanceConfig,
    inst: Instance,
    iface: usize,
    local: Ipv4Addr,
    dsts: Vec<Ipv4Addr>,
    tracking_fault: bool,
}

struct Worker {
    ifaces: Vec<Iface>,
    slots: Vec<Slot>,
    netlink: Netlink,
    arp: ArpSocket,
    counters: Arc<Counters>,
    status: Arc<Mutex<Vec<InstanceStatus>>>,
    events: Sender<VrrpEvent>,
    priority_source: PrioritySource,
    wake_rx: UnixStream,
}

/// Wake-up byte asking for a graceful shutdown.
const WAKE_SHUTDOWN: u8 = 1;
/// Wake-up byte asking the thread to end without a handover.
const WAKE_ABANDON: u8 = 2;

/// Datagrams read per socket per wake-up before the timers get a turn.
const RECV_BATCH: usize = 64;

impl Worker {
    fn run(mut self) {
        let start = Instant::now();
        for i in 0..self.slots.len() {
            if !self.ifaces[self.slots[i].iface].link.running {
                self.handle(i, start, Event::InterfaceDown);
            }
        }
        self.track(start);
        for i in 0..self.slots.len() {
            self.handle(i, start, Event::Startup);
        }
        let mut next_track = start + TRACK_PERIOD;
        let mut buf = Box::new([0u8; MAX_DATAGRAM_LEN]);
        loop {
            let now = Instant::now();
            if now >= next_track {
                self.track(now);
                next_track = now + TRACK_PERIOD;
            }
            for i in 0..self.slots.len() {
                if self.slots[i].inst.next_deadline().is_some_and(|d| d <= now) {
                    let acts = self.slots[i].inst.poll(now);
                    self.execute(i, acts);
                }
            }
            let deadline = self
                .slots
                .iter()
                .filter_map(|s| s.inst.next_deadline())
                .fold(next_track, Instant::min);
            let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.ifaces.len() + 1);
            fds.push(pollfd(self.wake_rx.as_raw_fd()));
            for iface in &self.ifaces {
                if let Some(s) = &iface.sock {
                    fds.push(pollfd(s.raw_fd()));
                }
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            // Round up so we do not wake a hair early and spin.
            let timeout_ms = wait.as_micros().div_ceil(1000).min(1000) as libc::c_int;
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "poll failed in the VRRP thread");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if fds[0].revents != 0 {
                let mut b = [0u8; 1];
                // A closed peer (Runner leaked past its Drop) also means shut down.
                match self.wake_rx.read(&mut b) {
                    Ok(1) if b[0] == WAKE_ABANDON => return,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    _ => break,
                }
            }
            for (k, fd) in fds.iter().enumerate().skip(1) {
                if fd.revents & libc::POLLIN != 0 {
                    self.drain(k - 1, &mut buf);
                }
            }
        }
        let now = Instant::now();
        for i in 0..self.slots.len() {
            self.handle(i, now, Event::Shutdown);
        }
    }

    fn drain(&mut self, iface: usize, buf: &mut [u8; MAX_DATAGRAM_LEN]) {
        for _ in 0..RECV_BATCH {
            let Some(sock) = &self.ifaces[iface].sock else {
                return;
            };
            let pkt = match sock.recv(buf) {
                Ok(Some(p)) => p.to_vec(),
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, iface = %self.ifaces[iface].name, "VRRP receive failed");
                    return;
                }
            };
            let now = Instant::now();
            if let Err(reason) = self.on_datagram(iface, &pkt, now) {
                self.counters.drop_packet(reason);
                tracing::debug!(reason = reason.reason(), iface = %self.ifaces[iface].name, "VRRP packet dropped");
            }
        }
    }

    fn on_datagram(&mut self, iface: usize, pkt: &[u8], now: Instant) -> Result<(), DecodeError> {
        let d = parse_ipv4(pkt)?;
        let vrid = *d.payload.get(1).ok_or(DecodeError::Truncated)?;
        let i = self
            .slots
            .iter()
            .position(|s| s.iface == iface && s.cfg.vrid == vrid)
            .ok_or(DecodeError::WrongVrid)?;
        let ends = Endpoints {
            src: IpAddr::V4(d.src),
            dst: IpAddr::V4(d.dst),
        };
        let advert = Advert::decode(d.payload, ends, self.slots[i].cfg.checksum_accept)?;
        self.counters.adverts_received.fetch_add(1, Ordering::Relaxed);
        self.handle(
            i,
            now,
            Event::AdvertReceived {
                from: ends.src,
                advert,
            },
        );
        Ok(())
    }

    /// Re-read tracking and link state, feeding changes to the instances.
    fn track(&mut self, now: Instant) {
        let links: Vec<Option<LinkInfo>> = self
            .ifaces
            .iter()
            .map(|i| net::link_info(self.arp.raw_fd(), &i.name).ok())
            .collect();
        for (k, link) in links.into_iter().enumerate() {
            let was = self.ifaces[k].link.running;
            // An interface that vanished counts as down.
            let info = link.unwrap_or(LinkInfo {
                running: false,
                mac: self.ifaces[k].link.mac,
            });
            self.ifaces[k].link = info;
            if was != info.running {
                let ev = if info.running {
                    Event::InterfaceUp
                } else {
                    Event::InterfaceDown
                };
                for i in 0..self.slots.len() {
                    if self.slots[i].iface == k {
                        self.handle(i, now, ev.clone());
                    }
                }
            }
        }
        for i in 0..self.slots.len() {
            let adj = (self.priority_source)(&self.slots[i].cfg.name);
            let effective = i32::from(self.slots[i].cfg.priority).saturating_add(adj);
            let fault = effective <= 0;
            if fault != self.slots[i].tracking_fault {
                self.slots[i].tracking_fault = fault;
                self.handle(i, now, Event::TrackingFault(fault));
            }
            if !fault {
                let p = effective.clamp(1, 254) as u8;
                if !self.slots[i].cfg.is_owner() && p != self.slots[i].inst.priority() {
                    self.handle(i, now, Event::PriorityChanged(p));
                }
            }
        }
    }

    fn handle(&mut self, i: usize, now: Instant, ev: Event) {
        let acts = self.slots[i].inst.handle(now, ev);
        self.execute(i, acts);
    }

    fn execute(&mut self, i: usize, acts: Vec<Action>) {
        for act in acts {
            match act {
                Action::SendAdvert { priority } => self.send_advert(i, priority),
                Action::AddVips => self.vips(i, true),
                Action::RemoveVips => self.vips(i, false),
                Action::SendGratuitousArp => self.send_garps(i),
                Action::StateChanged { from, to } => self.state_changed(i, from, to),
                Action::Discard(reason) => self.counters.drop_packet(reason),
            }
        }
    }

    fn send_advert(&mut self, i: usize, priority: u8) {
        let slot = &self.slots[i];
        let Some(sock) = &self.ifaces[slot.iface].sock else {
            return;
        };
        let advert = slot.inst.advert(priority);
        for dst in &slot.dsts {
            let ends = Endpoints {
                src: IpAddr::V4(slot.local),
                dst: IpAddr::V4(*dst),
            };
            let sent = advert
                .encode(ends, slot.cfg.checksum_mode)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
                .and_then(|msg| sock.send(&msg, slot.local, *dst));
            match sent {
                Ok(()) => {
                    self.counters.adverts_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(instance = %slot.cfg.name, error = %e, "advert not sent");
                }
            }
        }
    }

    fn vips(&mut self, i: usize, add: bool) {
        let slot = &self.slots[i];
        if slot.cfg.is_owner() {
            // The owner's addresses are permanent on the interface (RFC 5798 §6.1).
            return;
        }
        let ifindex = self.ifaces[slot.iface].ifindex;
        let mut errors = Vec::new();
        for vip in &slot.cfg.vips {
            let r = if add {
                self.netlink.add_address(ifindex, vip.addr, vip.prefix_len)
            } else {
                self.netlink.del_address(ifindex, vip.addr, vip.prefix_len)
            };
            if let Err(e) = r {
                errors.push(format!(
                    "{} {}/{}: {e}",
                    if add { "adding" } else { "removing" },
                    vip.addr,
                    vip.prefix_len
                ));
            }
        }
        let name = slot.cfg.name.clone();
        for message in errors {
            tracing::error!(instance = %name, %message, "VIP change failed");
            let _ = self.events.try_send(VrrpEvent::Error {
                instance: name.clone(),
                message,
            });
        }
    }

    fn send_garps(&mut self, i: usize) {
        let slot = &self.slots[i];
        let iface = &self.ifaces[slot.iface];
        for vip in &slot.cfg.vips {
            if let IpAddr::V4(v4) = vip.addr {
                match self.arp.send_gratuitous(iface.ifindex, iface.link.mac, v4) {
                    Ok(()) => {
                        self.counters.garps_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(instance = %slot.cfg.name, error = %e, "gratuitous ARP not sent");
                    }
                }
            }
        }
    }

    fn state_changed(&mut self, i: usize, from: State, to: State) {
        let slot = &self.slots[i];
        let priority = slot.inst.priority();
        tracing::info!(instance = %slot.cfg.name, from = from.name(), to = to.name(), priority, "VRRP state change");
        {
            let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = st.get_mut(i) {
                s.state = to;
                s.priority = priority;
            }
        }
        if let Some(cmd) = &slot.cfg.notify {
            run_notify(cmd, &slot.cfg.name, to, priority);
        }
        let _ = self.events.try_send(VrrpEvent::StateChanged {
            instance: slot.cfg.name.clone(),
            from,
            to,
            priority,
        });
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Run `cmd INSTANCE STATE PRIORITY` as keepalived's notify does, without waiting for it; a
/// helper thread reaps the child so no zombie is left.
fn run_notify(cmd: &std::path::Path, instance: &str, state: State, priority: u8) {
    let child = Command::new(cmd)
        .arg(instance)
        .arg(state.name())
        .arg(priority.to_string())
        .stdin(Stdio::null())
        .spawn();
    match child {
        Ok(mut child) => {
            let _ = std::thread::Builder::new()
                .name("vrrp-notify".into())
                .spawn(move || {
                    let _ = child.wait();
                });
        }
        Err(e) => {
            tracing::warn!(instance, cmd = %cmd.display(), error = %e, "notify command failed to start")
        }
    }
}
