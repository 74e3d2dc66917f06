//! The VRRP state machine of one virtual router (RFC 5798 §6.4, RFC 9568 §6.4, RFC 3768 §6.4).
//!
//! Sans-IO: it takes events and the current `Instant`, and returns [`Action`]s for the shell to
//! carry out (send an advert, add or remove VIPs, send gratuitous ARPs, report a state change).
//! It never touches a socket, a clock or an interface. Timers are deadlines the shell waits for
//! through [`Instance::next_deadline`] and hands back through [`Instance::poll`].

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::config::InstanceConfig;
use crate::packet::{Advert, DecodeError, Family, Version};

/// The externally visible state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started, or shut down.
    Initialize,
    /// Listening to a master; holds no VIP.
    Backup,
    /// Holds the VIPs and advertises.
    Master,
    /// Cannot serve (interface down or tracking failed); holds no VIP, sends nothing.
    Fault,
}

impl State {
    /// Lower-case name, for logs, metrics and the notify hook.
    pub fn name(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
}

/// Inputs to the state machine besides the passage of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The instance starts (RFC 5798 §6.4.1 Startup).
    Startup,
    /// The instance stops; a master hands over with a priority-0 advert.
    Shutdown,
    /// A decoded advert arrived from `from` (the IP source: the peer's primary address).
    AdvertReceived {
        /// IP source of the advert.
        from: IpAddr,
        /// The decoded advert.
        advert: Advert,
    },
    /// Tracking changed the effective priority (clamped to 1..=254; ignored by the owner).
    PriorityChanged(u8),
    /// Tracking says nothing can be served (`true`) or can again (`false`).
    TrackingFault(bool),
    /// The interface lost its link.
    InterfaceDown,
    /// The interface has its link again.
    InterfaceUp,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advert with this priority; build it with [`Instance::advert`].
    SendAdvert {
        /// Priority to advertise (0 on handover).
        priority: u8,
    },
    /// Add the VIPs to the interface.
    AddVips,
    /// Remove the VIPs from the interface.
    RemoveVips,
    /// Send one gratuitous ARP per VIP (one round of the configured repeats).
    SendGratuitousArp,
    /// The state changed.
    StateChanged {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
    },
    /// A received advert was dropped; count it under this reason.
    Discard(DecodeError),
}

/// The state machine of one instance.
#[derive(Debug)]
pub struct Instance {
    vrid: u8,
    version: Version,
    family: Family,
    owner: bool,
    priority: u8,
    advert_interval: Duration,
    preempt: bool,
    preempt_delay: Duration,
    local_address: IpAddr,
    vips: Vec<IpAddr>,
    unicast_peers: Vec<IpAddr>,
    garp_repeat: u32,
    garp_interval: Duration,
    started_at: Option<Instant>,
    interface_down: bool,
    tracking_fault: bool,
    phase: Phase,
}

/// Per-state data: each state holds only what it needs.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Initialize,
    Backup(Backup),
    Master(Master),
    Fault,
}

#[derive(Debug, Clone, Copy)]
struct Backup {
    /// RFC 5798 §6.1 Master_Adver_Interval, learned from the master's adverts (v3).
    master_adver_interval: Duration,
    /// Master_Down_Timer deadline.
    master_down_at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Master {
    /// Adver_Timer deadline.
    advert_at: Instant,
    /// Remaining gratuitous ARP rounds and when the next one is due.
    garp: Option<(u32, Instant)>,
    /// When we last answered a lesser master's advert (at most once per [`RECLAIM_EVERY`]).
    reclaimed_at: Option<Instant>,
}

/// The least time between two answers to a lesser master's adverts: one that does not step
/// down (a node configured apart from us) gets our gratuitous ARPs once a second, not at
/// its advert rate.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);

impl Instance {
    /// Build the state machine for a validated config; `local_address` is the primary address
    /// adverts are sent from (tie-break key, RFC 5798 §6.4.3).
    pub fn new(config: &InstanceConfig, local_address: IpAddr) -> Instance {
        Instance {
            vrid: config.vrid,
            version: config.version,
            family: config.family(),
            owner: config.is_owner(),
            priority: config.priority,
            advert_interval: config.advert_interval,
            preempt: config.preempt,
            preempt_delay: config.preempt_delay,
            local_address,
            vips: config.vips.iter().map(|v| v.addr).collect(),
            unicast_peers: config.unicast_peers.clone(),
            garp_repeat: config.garp_repeat.max(1),
            garp_interval: config.garp_interval,
            started_at: None,
            interface_down: false,
            tracking_fault: false,
            phase: Phase::Initialize,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Initialize => State::Initialize,
            Phase::Backup(_) => State::Backup,
            Phase::Master(_) => State::Master,
            Phase::Fault => State::Fault,
        }
    }

    /// Current effective priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// VRID of this instance.
    pub fn vrid(&self) -> u8 {
        self.vrid
    }

    /// Build the advert for an [`Action::SendAdvert`].
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            version: self.version,
            vrid: self.vrid,
            priority,
            // v3 carries 12 bits of centiseconds (the config allows at most 40.95 s); v2
            // whole seconds up to 255, which as centiseconds need all 16 bits.
            interval_cs: match self.version {
                Version::V3 => (self.advert_interval.as_millis() / 10).min(0x0fff) as u16,
                Version::V2 => (self.advert_interval.as_millis() / 10).min(25_500) as u16,
            },
            addresses: self.vips.clone(),
        }
    }

    /// Master_Adver_Interval now: learned from the master in Backup (v3), ours otherwise.
    pub fn master_adver_interval(&self) -> Duration {
        match self.phase {
            Phase::Backup(b) => b.master_adver_interval,
            _ => self.advert_interval,
        }
    }

    /// Skew_Time for our priority (RFC 5798 §6.1; RFC 3768 §6.1 for v2).
    pub fn skew_time(&self) -> Duration {
        skew_time(self.version, self.priority, self.master_adver_interval())
    }

    /// Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.version, self.priority, self.master_adver_interval())
    }

    /// The earliest deadline the shell must call [`Instance::poll`] at, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Backup(b) => Some(b.master_down_at),
            Phase::Master(m) => Some(match m.garp {
                Some((_, at)) => at.min(m.advert_at),
                None => m.advert_at,
            }),
            Phase::Initialize | Phase::Fault => None,
        }
    }

    /// Fire every timer due at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match self.phase {
            Phase::Backup(b) if now >= b.master_down_at => {
                // RFC 5798 §6.4.2: Master_Down_Timer fires.
                self.become_master(now, &mut out);
            }
            Phase::Master(mut m) => {
                if let Some((left, at)) = m.garp {
                    if now >= at {
                        out.push(Action::SendGratuitousArp);
                        m.garp = (left > 1).then(|| (left - 1, now + self.garp_interval));
                    }
                }
                // Silent for three intervals (stopped, starved): a backup has likely taken
                // over and announced the addresses at its MAC. Take them back at once.
                let stalled = now >= m.advert_at + self.advert_interval * 2;
                let reclaimed = stalled && self.reclaim(&mut m, now, &mut out);
                if !reclaimed && now >= m.advert_at {
                    // RFC 5798 §6.4.3: Adver_Timer fires. Re-arm from now, not from the old
                    // deadline, so a stalled process does not burst adverts.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    m.advert_at = now + self.advert_interval;
                }
                self.phase = Phase::Master(m);
            }
            _ => {}
        }
        out
    }

    /// Handle one event at `now`.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Startup => {
                if matches!(self.phase, Phase::Initialize) {
                    self.started_at = Some(now);
                    self.start(now, &mut out);
                }
            }
            Event::Shutdown => {
                let from = self.state();
                if from == State::Master {
                    // RFC 5798 §6.4.3: send an advert with priority 0, then remove the VIPs.
                    out.push(Action::SendAdvert { priority: 0 });
                    out.push(Action::RemoveVips);
                }
                self.started_at = None;
                self.transition(Phase::Initialize, &mut out);
            }
            Event::AdvertReceived { from, advert } => self.on_advert(now, from, &advert, &mut out),
            Event::PriorityChanged(p) => {
                if !self.owner {
                    let p = p.clamp(1, 254);
                    if p != self.priority {
                        self.priority = p;
                        if let Phase::Master(mut m) = self.phase {
                            // Tell the backups at once so a preempting one need not wait.
                            out.push(Action::SendAdvert { priority: p });
                            m.advert_at = now + self.advert_interval;
                            self.phase = Phase::Master(m);
                        }
                    }
                }
            }
            Event::TrackingFault(fault) => {
                self.tracking_fault = fault;
                self.reassess_fault(now, true, &mut out);
            }
            Event::InterfaceDown => {
                self.interface_down = true;
                self.reassess_fault(now, false, &mut out);
            }
            Event::InterfaceUp => {
                self.interface_down = false;
                self.reassess_fault(now, false, &mut out);
            }
        }
        out
    }

    fn start(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.interface_down || self.tracking_fault {
            self.transition(Phase::Fault, out);
        } else if self.owner {
            // RFC 5798 §6.4.1: the address owner becomes master at once.
            self.become_master(now, out);
        } else {
            self.become_backup(now, self.advert_interval, out);
        }
    }

    fn reassess_fault(&mut self, now: Instant, can_send: bool, out: &mut Vec<Action>) {
        let faulty = self.interface_down || self.tracking_fault;
        match (self.phase, faulty) {
            (Phase::Master(_), true) => {
                if can_send {
                    out.push(Action::SendAdvert { priority: 0 });
                }
                out.push(Action::RemoveVips);
                self.transition(Phase::Fault, out);
            }
            (Phase::Backup(_), true) => self.transition(Phase::Fault, out),
            (Phase::Fault, false) => self.start(now, out),
            _ => {}
        }
    }

    fn preempt_now(&self, now: Instant) -> bool {
        if self.owner {
            return true;
        }
        let delay_over = self
            .started_at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.preempt_delay);
        self.preempt && delay_over
    }

    fn screen(&self, from: IpAddr, advert: &Advert) -> Result<(), DecodeError> {
        if advert.vrid != self.vrid {
            return Err(DecodeError::WrongVrid);
        }
        if advert.version != self.version {
            return Err(DecodeError::VersionMismatch);
        }
        if Family::of(&from) != self.family || advert.family() != self.family {
            return Err(DecodeError::WrongFamily);
        }
        if from == self.local_address {
            return Err(DecodeError::OwnAdvert);
        }
        if !self.unicast_peers.is_empty() && !self.unicast_peers.contains(&from) {
            return Err(DecodeError::UnknownPeer);
        }
        // RFC 3768 §7.1: a v2 advert must carry our interval.
        let ours = (self.advert_interval.as_millis() / 10) as u16;
        if self.version == Version::V2 && advert.interval_cs != ours {
            return Err(DecodeError::IntervalMismatch);
        }
        Ok(())
    }

    fn on_advert(&mut self, now: Instant, from: IpAddr, advert: &Advert, out: &mut Vec<Action>) {
        if let Err(e) = self.screen(from, advert) {
            out.push(Action::Discard(e));
            return;
        }
        let learned = match self.version {
            Version::V3 => Duration::from_millis(u64::from(advert.interval_cs) * 10),
            Version::V2 => self.advert_interval,
        };
        match self.phase {
            Phase::Backup(mut b) => {
                if advert.priority == 0 {
                    // RFC 5798 §6.4.2: the master is leaving; take over after Skew_Time.
                    b.master_down_at = now + skew_time(self.version, self.priority, b.master_adver_interval);
                    self.phase = Phase::Backup(b);
                } else if !self.preempt_now(now) || advert.priority >= self.priority {
                    b.master_adver_interval = learned;
                    b.master_down_at = now + master_down_interval(self.version, self.priority, learned);
                    self.phase = Phase::Backup(b);
                }
                // Otherwise a lower-priority master while we preempt: ignore it and let the
                // Master_Down_Timer run out.
            }
            Phase::Master(mut m) => {
                if advert.priority == 0 {
                    // RFC 5798 §6.4.3: another master left; advertise at once.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    m.advert_at = now + self.advert_interval;
                    self.phase = Phase::Master(m);
                } else if advert.priority > self.priority
                    || (advert.priority == self.priority && ip_greater(from, self.local_address))
                {
                    // RFC 5798 §6.4.3: a better master exists; step down. One last advert
                    // first: if we took over while cut off from it, the segment was told the
                    // addresses are at our MAC, and the better master (which answers from
                    // its own MAC, not a virtual one) must say otherwise. It may never hear
                    // from us if its advert reached us first; this advert is a lesser
                    // master's to it, which it answers with its gratuitous ARPs.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    out.push(Action::RemoveVips);
                    self.become_backup(now, learned, out);
                } else if m.garp.is_none() {
                    // A lesser master: one that took over while we were stopped or cut off
                    // (or the last advert of one stepping down). RFC 5798 §6.4.3 discards
                    // its advert, counting on the virtual MAC. While our own gratuitous ARP
                    // rounds are still going out (we just took over), they say it already.
                    let _ = self.reclaim(&mut m, now, out);
                    self.phase = Phase::Master(m);
                }
            }
            Phase::Initialize | Phase::Fault => {}
        }
    }

    /// Another node may have been master meanwhile and told the segment (gratuitous ARP)
    /// that the addresses are at its MAC. We answer from our own MAC, not the virtual one, so
    /// we say so again, as keepalived does: an advert now (a lesser master steps down) and
    /// our gratuitous ARP rounds. At most once per [`RECLAIM_EVERY`].
    /// Returns false (and does nothing) when the last one was too recent.
    fn reclaim(&self, m: &mut Master, now: Instant, out: &mut Vec<Action>) -> bool {
        if m.reclaimed_at.is_some_and(|at| now < at + RECLAIM_EVERY) {
            return false;
        }
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        m.advert_at = now + self.advert_interval;
        out.push(Action::SendGratuitousArp);
        m.garp = (self.garp_repeat > 1).then(|| (self.garp_repeat - 1, now + self.garp_interval));
        m.reclaimed_at = Some(now);
        true
    }

    fn become_master(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::AddVips);
        out.push(Action::SendGratuitousArp);
        let garp = (self.garp_repeat > 1).then(|| (self.garp_repeat - 1, now + self.garp_interval));
        self.transition(
            Phase::Master(Master {
                advert_at: now + self.advert_interval,
                garp,
                reclaimed_at: None,
            }),
            out,
        );
    }

    fn become_backup(&mut self, now: Instant, master_adver_interval: Duration, out: &mut Vec<Action>) {
        let master_down_at = now + master_down_interval(self.version, self.priority, master_adver_interval);
        self.transition(
            Phase::Backup(Backup {
                master_adver_interval,
                master_down_at,
            }),
            out,
        );
    }

    fn transition(&mut self, to: Phase, out: &mut Vec<Action>) {
        let from = self.state();
        self.phase = to;
        let to = self.state();
        if from != to {
            out.push(Action::StateChanged { from, to });
        }
    }
}

/// Skew_Time: v3 `(256 - priority) * master_adver_interval / 256` (RFC 5798 §6.1), v2
/// `(256 - priority) / 256` seconds (RFC 3768 §6.1). Kept exact rather than cut to centiseconds
/// so priorities close to 255 still differ.
pub fn skew_time(version: Version, priority: u8, master_adver_interval: Duration) -> Duration {
    let weight = 256 - u32::from(priority);
    match version {
        Version::V3 => master_adver_interval * weight / 256,
        Version::V2 => Duration::from_secs(1) * weight / 256,
    }
}

/// Master_Down_Interval: `3 * master_adver_interval + skew_time` (RFC 5798 §6.1).
pub fn master_down_interval(version: Version, priority: u8, master_adver_interval: Duration) -> Duration {
    master_adver_interval * 3 + skew_time(version, priority, master_adver_interval)
}

/// RFC 5798 §6.4.3: primary addresses compare as unsigned integers in network byte order.
fn ip_greater(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets() > b.octets(),
        (IpAddr::V6(a), IpAddr::V6(b)) => a.octets() > b.octets(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Vip;

    const MS: Duration = Duration::from_millis(1);

    fn config(name: &str, priority: u8) -> InstanceConfig {
        let mut c = InstanceConfig::new(
            name,
            "eth0",
            7,
            priority,
            vec![Vip {
                addr: "10.213.0.100".parse().unwrap(),
                prefix_len: 24,
            }],
        );
        c.advert_interval = Duration::from_millis(100);
        c.garp_repeat = 1;
        c
    }

    fn addr(last: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, 213, 0, last))
    }

    /// A simulated segment: every SendAdvert reaches every running node instantly.
    struct Sim {
        t0: Instant,
        now: Instant,
        nodes: Vec<Node>,
        /// Current and longest run of two live masters at once.
        dual: Duration,
        longest_dual: Duration,
    }

    struct Node {
        inst: Instance,
        addr: IpAddr,
        frozen: bool,
        /// Cut off the segment: its timers run, its adverts reach no one and no one's
        /// reach it (a cut link that keeps its carrier).
        cut: bool,
        vips_held: bool,
        garps: u32,
        sent: Vec<(Duration, u8)>,
    }

    impl Sim {
        fn new(cfgs: Vec<(InstanceConfig, u8)>) -> Sim {
            let t0 = Instant::now();
            let nodes = cfgs
                .into_iter()
                .map(|(c, last)| Node {
                    inst: Instance::new(&c, addr(last)),
                    addr: addr(last),
                    frozen: false,
                    cut: false,
                    vips_held: false,
                    garps: 0,
                    sent: Vec::new(),
                })
                .collect();
            Sim {
                t0,
                now: t0,
                nodes,
                dual: Duration::ZERO,
                longest_dual: Duration::ZERO,
            }
        }

        fn event(&mut self, i: usize, ev: Event) {
            let acts = self.nodes[i].inst.handle(self.now, ev);
            self.apply(i, acts);
        }

        fn apply(&mut self, i: usize, acts: Vec<Action>) {
            for a in acts {
                match a {
                    Action::SendAdvert { priority } => {
                        let advert = self.nodes[i].inst.advert(priority);
                        let from = self.nodes[i].addr;
                        let at = self.now - self.t0;
                        self.nodes[i].sent.push((at, priority));
                        for j in 0..self.nodes.len() {
                            let cut = self.nodes[i].cut || self.nodes[j].cut;
                            if j != i && !self.nodes[j].frozen && !cut {
                                let ev = Event::AdvertReceived {
                                    from,
                                    advert: advert.clone(),
                                };
                                let acts = self.nodes[j].inst.handle(self.now, ev);
                                self.apply(j, acts);
                            }
                        }
                    }
                    Action::AddVips => self.nodes[i].vips_held = true,
                    Action::RemoveVips => self.nodes[i].vips_held = false,
                    Action::SendGratuitousArp => self.nodes[i].garps += 1,
                    Action::StateChanged { .. } | Action::Discard(_) => {}
                }
            }
        }

        /// Advance in 1 ms steps, firing due timers; returns nothing, check states after.
        fn run(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                self.now += MS;
                for i in 0..self.nodes.len() {
                    if self.nodes[i].frozen {
                        continue;
                    }
                    if self.nodes[i].inst.next_deadline().is_some_and(|t| t <= self.now) {
                        let acts = self.nodes[i].inst.poll(self.now);
                        self.apply(i, acts);
                    }
                }
                let live_masters = self
                    .nodes
                    .iter()
                    .filter(|n| !n.frozen && n.inst.state() == State::Master)
                    .count();
                if live_masters > 1 {
                    self.dual += MS;
                    self.longest_dual = self.longest_dual.max(self.dual);
                } else {
                    self.dual = Duration::ZERO;
                }
            }
        }

        /// Run until `pred` holds, returning the time it took; panics after `limit`.
        fn run_until(&mut self, limit: Duration, pred: impl Fn(&Sim) -> bool) -> Duration {
            let start = self.now;
            while !pred(self) {
                assert!(self.now - start < limit, "condition not reached within {limit:?}");
                self.run(MS);
            }
            self.now - start
        }

        fn state(&self, i: usize) -> State {
            self.nodes[i].inst.state()
        }

        fn masters(&self) -> Vec<usize> {
            (0..self.nodes.len())
                .filter(|&i| self.state(i) == State::Master)
                .collect()
        }
    }

    #[test]
    fn timer_formulas() {
        let i100 = Duration::from_millis(100);
        // v3 prio 100, 1 s: skew = 156/256 s = 609.375 ms, down = 3.609375 s.
        assert_eq!(
            skew_time(Version::V3, 100, Duration::from_secs(1)),
            Duration::from_micros(609_375)
        );
        assert_eq!(
            master_down_interval(Version::V3, 100, Duration::from_secs(1)),
            Duration::from_micros(3_609_375)
        );
        assert_eq!(
            master_down_interval(Version::V3, 200, i100),
            Duration::from_micros(321_875)
        );
        // v2 skew does not scale with the interval.
        assert_eq!(
            skew_time(Version::V2, 100, Duration::from_secs(3)),
            Duration::from_micros(609_375)
        );
        assert_eq!(
            skew_time(Version::V3, 255, i100),
            Duration::from_micros(390_625) / 1000
        );
    }

    #[test]
    fn higher_priority_is_elected_and_lower_holds_nothing() {
        let mut sim = Sim::new(vec![(config("a", 200), 1), (config("b", 100), 2)]);
        sim.event(0, Event::Startup);
        sim.event(1, Event::Startup);
        // a's master-down interval with 0.1 s adverts: 300 ms + 21.875 ms.
        let took = sim.run_until(Duration::from_secs(1), |s| s.state(0) == State::Master);
        assert!(
            took >= Duration::from_millis(321) && took <= Duration::from_millis(323),
            "{took:?}"
        );
        sim.run(Duration::from_secs(2));
        assert_eq!(sim.masters(), vec![0]);
        assert_eq!(sim.state(1), State::Backup);
        assert!(sim.nodes[0].vips_held && !sim.nodes[1].vips_held);
        assert_eq!(sim.longest_dual, Duration::ZERO);
        // About 10 adverts per second.
        let n = sim.nodes[0].sent.len();
        assert!((20..=22).contains(&n), "{n} adverts");
    }

    #[test]
    fn takeover_after_master_down_interval() {
        let mut sim = Sim::new(vec![(config("a", 200), 1), (config("b", 100), 2)]);
        sim.event(0, Event::Startup);
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        assert_eq!(sim.masters(), vec![0]);
        // Crash: a stops without a word.
        let last_advert = sim.nodes[0].sent.last().unwrap().0;
        sim.nodes[0].frozen = true;
        sim.run_until(Duration::from_secs(1), |s| s.state(1) == State::Master);
        let gap = (sim.now - sim.t0) - last_advert;
        // b's down interval: 300 ms + 156/256 * 100 ms = 360.9 ms after the last advert.
        assert!(
            gap >= Duration::from_millis(360) && gap <= Duration::from_millis(362),
            "{gap:?}"
        );
        assert!(sim.nodes[1].vips_held);
        assert_eq!(sim.nodes[1].garps, 1);
    }

    #[test]
    fn shutdown_hands_over_within_skew() {
        let mut sim = Sim::new(vec![(config("a", 200), 1), (config("b", 100), 2)]);
        sim.event(0, Event::Startup);
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        sim.event(0, Event::Shutdown);
        assert_eq!(sim.nodes[0].sent.last().unwrap().1, 0);
        assert_eq!(sim.state(0), State::Initialize);
        assert!(!sim.nodes[0].vips_held);
        let took = sim.run_until(Duration::from_secs(1), |s| s.state(1) == State::Master);
        // Skew for priority 100 at 0.1 s: 60.9 ms (not the 360 ms of a crash).
        assert!(
            took >= Duration::from_millis(60) && took <= Duration::from_millis(62),
            "{took:?}"
        );
    }

    #[test]
    fn preemption_on_and_off() {
        for preempt in [true, false] {
            let mut hi = config("a", 200);
            hi.preempt = preempt;
            let mut sim = Sim::new(vec![(hi, 1), (config("b", 100), 2)]);
            sim.event(1, Event::Startup);
            sim.run(Duration::from_secs(1));
            assert_eq!(sim.masters(), vec![1]);
            sim.event(0, Event::Startup);
            sim.run(Duration::from_secs(2));
            let expect = if preempt { vec![0] } else { vec![1] };
            assert_eq!(sim.masters(), expect, "preempt={preempt}");
            assert_eq!(sim.nodes[0].vips_held, preempt);
            assert_eq!(sim.nodes[1].vips_held, !preempt);
            assert_eq!(sim.longest_dual, Duration::ZERO);
        }
    }

    #[test]
    fn preempt_delay_postpones_takeover() {
        let mut hi = config("a", 200);
        hi.preempt_delay = Duration::from_secs(2);
        let mut sim = Sim::new(vec![(hi, 1), (config("b", 100), 2)]);
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        sim.event(0, Event::Startup);
        let took = sim.run_until(Duration::from_secs(5), |s| s.state(0) == State::Master);
        // Delay, then one master-down interval of discarded adverts.
        assert!(
            took >= Duration::from_secs(2) && took <= Duration::from_millis(2400),
            "{took:?}"
        );
        sim.run(Duration::from_millis(100));
        assert_eq!(sim.masters(), vec![0]);
    }

    #[test]
    fn equal_priority_higher_address_wins() {
        let mut sim = Sim::new(vec![(config("a", 100), 1), (config("b", 100), 2)]);
        sim.event(0, Event::Startup);
        sim.run(Duration::from_secs(1));
        assert_eq!(sim.masters(), vec![0]);
        // b does not preempt an equal master as a backup...
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        assert_eq!(sim.masters(), vec![0]);
        // ...but if both are master, the lower address steps down.
        sim.nodes[0].frozen = true;
        sim.run_until(Duration::from_secs(1), |s| s.state(1) == State::Master);
        sim.nodes[0].frozen = false;
        sim.run(Duration::from_millis(150));
        assert_eq!(sim.masters(), vec![1]);
    }

    #[test]
    fn owner_starts_as_master_and_ignores_priority_changes() {
        let mut sim = Sim::new(vec![(config("own", 255), 1), (config("b", 254), 2)]);
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        sim.event(0, Event::Startup);
        assert_eq!(sim.state(0), State::Master);
        sim.event(0, Event::PriorityChanged(10));
        assert_eq!(sim.nodes[0].inst.priority(), 255);
        sim.run(Duration::from_millis(50));
        assert_eq!(sim.masters(), vec![0]);
    }

    #[test]
    fn sigstop_then_return_leaves_one_master() {
        for (pa, pb) in [(200, 100), (100, 200)] {
            let mut sim = Sim::new(vec![(config("a", pa), 1), (config("b", pb), 2)]);
            sim.event(0, Event::Startup);
            sim.run(Duration::from_secs(1));
            sim.event(1, Event::Startup);
            sim.run(Duration::from_secs(1));
            let first = sim.masters();
            assert_eq!(first.len(), 1);
            let m = first[0];
            let other = 1 - m;
            sim.nodes[m].frozen = true;
            sim.run_until(Duration::from_secs(1), |s| s.state(other) == State::Master);
            sim.run(Duration::from_secs(3));
            // SIGCONT: the stopped node still believes it is master.
            sim.nodes[m].frozen = false;
            let garps = sim.nodes[m].garps;
            assert_eq!(sim.masters().len(), 2);
            let took = sim.run_until(Duration::from_secs(1), |s| s.masters().len() == 1);
            // Within one advert interval of the right node.
            assert!(took <= Duration::from_millis(101), "two masters for {took:?}");
            let winner = if pa > pb { 0 } else { 1 };
            assert_eq!(
                winner, m,
                "the node that was master first has the higher priority"
            );
            // The other told the segment the addresses were at its MAC: the winner says
            // so again at once, not when clients' ARP entries run out.
            assert!(sim.nodes[m].garps > garps, "no gratuitous ARP after the return");
            sim.run(Duration::from_secs(2));
            assert_eq!(sim.masters(), vec![winner], "prio a={pa} b={pb}");
            assert!(sim.nodes[winner].vips_held && !sim.nodes[1 - winner].vips_held);
        }
    }

    #[test]
    fn after_a_cut_link_the_better_master_announces_whichever_advert_comes_first() {
        // b takes over while cut off, and tells its clients the addresses are at its MAC.
        // When the link is back, b may hear a's advert before a hears b's: b steps down at
        // once and a, the master all along, must still learn that it has to announce.
        let mut sim = Sim::new(vec![(config("a", 200), 1), (config("b", 100), 2)]);
        sim.event(0, Event::Startup);
        sim.run(Duration::from_secs(1));
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        assert_eq!(sim.masters(), vec![0]);
        sim.nodes[1].cut = true;
        sim.run_until(Duration::from_secs(1), |s| s.state(1) == State::Master);
        sim.run(Duration::from_secs(1));
        // Heal just after b's advert: a's comes first.
        let sent = sim.nodes[1].sent.len();
        sim.run_until(Duration::from_secs(1), |s| s.nodes[1].sent.len() > sent);
        sim.nodes[1].cut = false;
        let garps = sim.nodes[0].garps;
        let took = sim.run_until(Duration::from_secs(1), |s| s.masters().len() == 1);
        assert_eq!(sim.masters(), vec![0]);
        assert!(took <= Duration::from_millis(101), "two masters for {took:?}");
        assert!(
            sim.nodes[0].garps > garps,
            "a never announced the addresses again after the link came back"
        );
        assert!(sim.nodes[0].vips_held && !sim.nodes[1].vips_held);
    }

    #[test]
    fn a_preempting_master_announces_once_not_again_for_the_last_advert() {
        // b's last advert as it steps down reaches a while a's own rounds are going out:
        // those say it already, so a sends no extra round.
        let mut ca = config("a", 200);
        ca.garp_repeat = 3;
        ca.garp_interval = Duration::from_millis(30);
        let mut sim = Sim::new(vec![(ca, 1), (config("b", 100), 2)]);
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        sim.event(0, Event::Startup);
        sim.run(Duration::from_secs(2));
        assert_eq!(sim.masters(), vec![0]);
        assert_eq!(sim.nodes[0].garps, 3, "a's rounds and no more");
    }

    #[test]
    fn a_master_that_took_over_while_cut_off_announces_when_the_cut_heals_at_once() {
        // a starts cut off while b is master, takes over (its gratuitous ARP reaches no one
        // on b's side) and the link heals within the second: b's last advert must still
        // make a announce.
        let mut sim = Sim::new(vec![(config("a", 200), 1), (config("b", 100), 2)]);
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        sim.nodes[0].cut = true;
        sim.event(0, Event::Startup);
        sim.run_until(Duration::from_secs(1), |s| s.state(0) == State::Master);
        let garps = sim.nodes[0].garps;
        let sent = sim.nodes[1].sent.len();
        sim.run_until(Duration::from_secs(1), |s| s.nodes[1].sent.len() > sent);
        sim.nodes[0].cut = false;
        sim.run_until(Duration::from_secs(1), |s| s.masters().len() == 1);
        assert_eq!(sim.masters(), vec![0]);
        assert!(sim.nodes[0].garps > garps, "a did not announce after the heal");
    }

    #[test]
    fn a_lesser_master_that_stays_gets_an_answer_once_a_second() {
        let mut inst = Instance::new(&config("a", 200), addr(1));
        let t0 = Instant::now();
        let mut now = t0;
        inst.handle(now, Event::Startup);
        let lesser = Event::AdvertReceived {
            from: addr(2),
            advert: inst.advert(100),
        };
        let (mut adverts, mut garps) = (0, 0);
        while now < t0 + Duration::from_millis(3_050) {
            now += Duration::from_millis(100);
            let mut acts = inst.poll(now);
            acts.extend(inst.handle(now, lesser.clone()));
            for a in acts {
                match a {
                    Action::SendAdvert { .. } => adverts += 1,
                    Action::SendGratuitousArp => garps += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(inst.state(), State::Master);
        // Master after the Master_Down_Interval (one round), then the lesser master's
        // adverts answered with a round at most once a second: 3 over the 2.7 s left.
        assert_eq!(garps, 4, "gratuitous ARP rounds");
        // Our adverts at our own rate (about 28 as master), and one more per answer.
        assert!((27..=31).contains(&adverts), "{adverts} adverts");
    }

    #[test]
    fn v2_adverts_of_41_to_255_seconds_encode() {
        for secs in [1u64, 40, 41, 255] {
            let mut c = config("a", 200);
            c.version = Version::V2;
            c.advert_interval = Duration::from_secs(secs);
            let inst = Instance::new(&c, addr(1));
            let advert = inst.advert(200);
            assert_eq!(u64::from(advert.interval_cs), secs * 100);
            let ends = crate::packet::Endpoints {
                src: addr(1),
                dst: "224.0.0.18".parse().unwrap(),
            };
            advert
                .encode(ends, crate::packet::ChecksumMode::default())
                .unwrap_or_else(|e| panic!("{secs} s: {e:?}"));
        }
    }

    #[test]
    fn v3_backup_learns_master_interval() {
        let mut slow = config("a", 200);
        slow.advert_interval = Duration::from_secs(1);
        let mut sim = Sim::new(vec![(slow, 1), (config("b", 100), 2)]);
        sim.event(0, Event::Startup);
        sim.run(Duration::from_secs(4));
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(3));
        // b (0.1 s configured) did not take over between a's 1 s adverts.
        assert_eq!(sim.masters(), vec![0]);
        assert_eq!(sim.nodes[1].inst.master_adver_interval(), Duration::from_secs(1));
        assert_eq!(
            sim.nodes[1].inst.master_down_interval(),
            Duration::from_micros(3_609_375)
        );
    }

    #[test]
    fn screening_discards_by_reason() {
        let now = Instant::now();
        let mut c = config("b", 100);
        c.unicast_peers = vec![addr(1)];
        let mut b = Instance::new(&c, addr(2));
        b.handle(now, Event::Startup);
        let good = Advert {
            version: Version::V3,
            vrid: 7,
            priority: 200,
            interval_cs: 10,
            addresses: vec![addr(100)],
        };
        let rx = |b: &mut Instance, from: IpAddr, advert: Advert| {
            b.handle(now, Event::AdvertReceived { from, advert })
        };
        let wrong_vrid = Advert {
            vrid: 8,
            ..good.clone()
        };
        assert_eq!(
            rx(&mut b, addr(1), wrong_vrid),
            vec![Action::Discard(DecodeError::WrongVrid)]
        );
        let v2 = Advert {
            version: Version::V2,
            ..good.clone()
        };
        assert_eq!(
            rx(&mut b, addr(1), v2),
            vec![Action::Discard(DecodeError::VersionMismatch)]
        );
        assert_eq!(
            rx(&mut b, addr(2), good.clone()),
            vec![Action::Discard(DecodeError::OwnAdvert)]
        );
        assert_eq!(
            rx(&mut b, addr(3), good.clone()),
            vec![Action::Discard(DecodeError::UnknownPeer)]
        );
        assert_eq!(rx(&mut b, addr(1), good), vec![]);

        let mut c2 = config("v2", 100);
        c2.version = Version::V2;
        c2.advert_interval = Duration::from_secs(1);
        let mut i2 = Instance::new(&c2, addr(2));
        i2.handle(now, Event::Startup);
        let adv = Advert {
            version: Version::V2,
            vrid: 7,
            priority: 200,
            interval_cs: 200,
            addresses: vec![addr(100)],
        };
        assert_eq!(
            rx(&mut i2, addr(1), adv),
            vec![Action::Discard(DecodeError::IntervalMismatch)]
        );
    }

    #[test]
    fn faults_release_and_recover() {
        let now = Instant::now();
        let mut a = Instance::new(&config("a", 255), addr(1));
        assert_eq!(
            a.handle(now, Event::Startup),
            vec![
                Action::SendAdvert { priority: 255 },
                Action::AddVips,
                Action::SendGratuitousArp,
                Action::StateChanged {
                    from: State::Initialize,
                    to: State::Master
                }
            ]
        );
        assert_eq!(
            a.handle(now, Event::InterfaceDown),
            vec![
                Action::RemoveVips,
                Action::StateChanged {
                    from: State::Master,
                    to: State::Fault
                }
            ]
        );
        assert_eq!(a.next_deadline(), None);
        a.handle(now, Event::TrackingFault(true));
        assert!(a.handle(now, Event::InterfaceUp).is_empty());
        assert_eq!(a.state(), State::Fault);
        let acts = a.handle(now, Event::TrackingFault(false));
        assert_eq!(a.state(), State::Master);
        assert!(acts.contains(&Action::AddVips));
        // A tracking fault on a master hands over with priority 0 first.
        let acts = a.handle(now, Event::TrackingFault(true));
        assert_eq!(acts[0], Action::SendAdvert { priority: 0 });
    }

    #[test]
    fn garp_repeats_then_stops() {
        let t = Instant::now();
        let mut c = config("a", 255);
        c.garp_repeat = 3;
        c.garp_interval = Duration::from_millis(30);
        let mut a = Instance::new(&c, addr(1));
        let mut garps = a
            .handle(t, Event::Startup)
            .iter()
            .filter(|x| **x == Action::SendGratuitousArp)
            .count();
        let mut now = t;
        while now < t + Duration::from_secs(1) {
            now += MS;
            if a.next_deadline().is_some_and(|d| d <= now) {
                garps += a
                    .poll(now)
                    .iter()
                    .filter(|x| **x == Action::SendGratuitousArp)
                    .count();
            }
        }
        assert_eq!(garps, 3);
    }

    #[test]
    fn lowered_master_priority_lets_preempting_backup_take_over() {
        let mut sim = Sim::new(vec![(config("a", 200), 1), (config("b", 150), 2)]);
        sim.event(0, Event::Startup);
        sim.event(1, Event::Startup);
        sim.run(Duration::from_secs(1));
        assert_eq!(sim.masters(), vec![0]);
        sim.event(0, Event::PriorityChanged(100));
        let took = sim.run_until(Duration::from_secs(1), |s| s.state(1) == State::Master);
        assert!(took <= Duration::from_millis(400), "{took:?}");
        sim.run(Duration::from_millis(300));
        assert_eq!(sim.masters(), vec![1]);
    }
}
