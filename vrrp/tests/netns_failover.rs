//! End to end over real sockets: two `Runner`s in two network namespaces joined by a veth pair.
//!
//! Needs root and `ip` (iproute2). Without them the test prints a loud SKIPPED message and
//! passes, except under `CI=true`, where a missing prerequisite fails it. Everything it creates
//! is named `ghv<pid>*` and removed on drop, also when an assertion fails; addresses are from
//! 10.213.0.0/24 and exist only inside the namespaces.

#![cfg(target_os = "linux")]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_vrrp::linux::{PrioritySource, Runner, VrrpEvent};
use gatehouse_vrrp::packet::{Advert, ChecksumMode, Endpoints, Version, VRRP_MULTICAST_V4};
use gatehouse_vrrp::{DecodeError, InstanceConfig, State, Vip};

use common::{in_netns, ip, ready_or_skip, wait_for, Topology, VIP};

const VRID: u8 = 51;

fn config(topo: &Topology, k: usize, priority: u8) -> InstanceConfig {
    let mut c = InstanceConfig::new(
        &format!("vi-{}", ["a", "b"][k]),
        &topo.ifname[k],
        VRID,
        priority,
        vec![Vip {
            addr: VIP.parse().expect("constant"),
            prefix_len: 24,
        }],
    );
    c.advert_interval = Duration::from_millis(100);
    c.garp_repeat = 2;
    c
}

fn spawn(topo: &Topology, k: usize, priority: u8) -> (Runner, crossbeam_channel::Receiver<VrrpEvent>) {
    spawn_with(topo, config(topo, k, priority), Arc::new(|_: &str| 0))
}

fn spawn_with(
    topo: &Topology,
    cfg: InstanceConfig,
    priority_source: PrioritySource,
) -> (Runner, crossbeam_channel::Receiver<VrrpEvent>) {
    let k = if cfg.interface == topo.ifname[0] { 0 } else { 1 };
    let (tx, rx) = crossbeam_channel::unbounded();
    let runner = in_netns(&topo.ns[k], move || Runner::spawn(vec![cfg], priority_source, tx))
        .expect("Runner::spawn in namespace");
    (runner, rx)
}

fn state(r: &Runner) -> State {
    r.states()[0].state
}

/// From namespace a, send bad VRRP packets to the group: TTL 64, bad checksum, other VRID,
/// truncated. Each must be dropped and counted by b.
fn inject_bad_packets(topo: &Topology) {
    let ifname = topo.ifname[0].clone();
    in_netns(&topo.ns[0], move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(112)),
        )
        .expect("raw socket");
        s.bind_device(Some(ifname.as_bytes())).expect("bind device");
        let src = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 1));
        let ends = Endpoints {
            src,
            dst: IpAddr::V4(VRRP_MULTICAST_V4),
        };
        let advert = |vrid| Advert {
            version: Version::V3,
            vrid,
            priority: 250,
            interval_cs: 10,
            addresses: vec![VIP.parse().expect("constant")],
        };
        let good = advert(VRID)
            .encode(ends, ChecksumMode::PseudoHeader)
            .expect("valid advert");
        let dst: std::net::SocketAddr = (VRRP_MULTICAST_V4, 0).into();
        let send = |ttl: u32, bytes: &[u8]| {
            s.set_multicast_ttl_v4(ttl).expect("ttl");
            s.send_to(bytes, &dst.into()).expect("send");
        };
        send(64, &good);
        let mut bad_sum = good.clone();
        bad_sum[6] ^= 0xff;
        send(255, &bad_sum);
        let other = advert(99)
            .encode(ends, ChecksumMode::PseudoHeader)
            .expect("valid advert");
        send(255, &other);
        send(255, &good[..6]);
    });
}

#[test]
fn two_runners_elect_fail_over_and_hand_back() {
    if !ready_or_skip("two_runners_elect_fail_over_and_hand_back", &[]) {
        return;
    }
    let topo = Topology::create('f').expect("create namespaces");
    // A VIP left behind by a killed process on b (with another prefix than configured): must be
    // removed at start.
    ip(&[
        "-n",
        &topo.ns[1],
        "addr",
        "add",
        &format!("{VIP}/32"),
        "dev",
        &topo.ifname[1],
    ])
    .expect("stale VIP");
    assert!(topo.holds_vip(1));

    let t = Instant::now();
    let (a, _a_events) = spawn(&topo, 0, 200);
    let notify = NotifyLog::new();
    let mut b_cfg = config(&topo, 1, 100);
    b_cfg.notify = Some(notify.script.clone());
    let b_adjust = Arc::new(AtomicI32::new(0));
    let adj = b_adjust.clone();
    let (b, b_events) = spawn_with(&topo, b_cfg, Arc::new(move |_: &str| adj.load(Ordering::Relaxed)));
    assert!(!topo.holds_vip(1), "stale VIP not removed at start");
    wait_for(Duration::from_secs(3), "a becomes master", || {
        state(&a) == State::Master && topo.holds_vip(0)
    });
    println!("election: a master {:?} after start", t.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&b), State::Backup);
    assert!(topo.holds_vip(0) && !topo.holds_vip(1), "VIP must be on a only");
    let rx_before = b.counters().adverts_received();
    assert!(rx_before >= 2, "b heard {rx_before} adverts");

    inject_bad_packets(&topo);
    let bc = b.counters();
    wait_for(Duration::from_secs(1), "bad packets counted", || {
        bc.dropped_for(DecodeError::Truncated) == 1
    });
    for reason in [
        DecodeError::BadTtl,
        DecodeError::BadChecksum,
        DecodeError::WrongVrid,
    ] {
        assert_eq!(bc.dropped_for(reason), 1, "{}", reason.reason());
    }
    assert_eq!(
        state(&b),
        State::Backup,
        "a priority-250 advert with TTL 64 must not count"
    );
    println!(
        "b dropped: {:?}",
        bc.dropped().iter().filter(|(_, n)| *n > 0).collect::<Vec<_>>()
    );

    // Crash a: no handover, VIP left behind, as after SIGKILL.
    let t = Instant::now();
    a.abandon().expect("abandon a");
    wait_for(Duration::from_secs(2), "b takes over after a crash", || {
        state(&b) == State::Master
    });
    let took = t.elapsed();
    println!("crash takeover: {took:?} (master-down interval 360.9 ms, adverts 100 ms)");
    assert!(
        took >= Duration::from_millis(200) && took <= Duration::from_millis(700),
        "{took:?}"
    );
    wait_for(Duration::from_secs(1), "b holds the VIP", || topo.holds_vip(1));
    assert!(
        topo.holds_vip(0),
        "a crashed runner leaves its VIP (like keepalived)"
    );
    let mut saw = false;
    while let Ok(ev) = b_events.try_recv() {
        if let VrrpEvent::StateChanged {
            from: State::Backup,
            to: State::Master,
            priority: 100,
            ..
        } = ev
        {
            saw = true;
        }
    }
    assert!(saw, "b reported backup -> master");

    // a returns: removes its stale VIP, then preempts b.
    let (a, _a_events) = spawn(&topo, 0, 200);
    let took = wait_for(Duration::from_secs(3), "a preempts b", || {
        state(&a) == State::Master && state(&b) == State::Backup
    });
    println!("preemption by returning a: {took:?}");
    wait_for(Duration::from_secs(1), "VIP back on a only", || {
        topo.holds_vip(0) && !topo.holds_vip(1)
    });

    // Tracking raises b to 250: b preempts a; back to 100: a preempts b again.
    let t = Instant::now();
    b_adjust.store(150, Ordering::Relaxed);
    wait_for(Duration::from_secs(2), "b preempts at priority 250", || {
        state(&b) == State::Master && state(&a) == State::Backup && b.states()[0].priority == 250
    });
    println!("tracking +150 on b: b master after {:?}", t.elapsed());
    let t = Instant::now();
    b_adjust.store(0, Ordering::Relaxed);
    wait_for(Duration::from_secs(2), "a preempts b back at 100", || {
        state(&a) == State::Master && state(&b) == State::Backup
    });
    println!("tracking back to 0: a master after {:?}", t.elapsed());
    wait_for(Duration::from_secs(1), "VIP on a only again", || {
        topo.holds_vip(0) && !topo.holds_vip(1)
    });

    // Graceful stop of a: priority-0 advert, b takes over within its skew time (60.9 ms).
    let t = Instant::now();
    a.shutdown().expect("shutdown a");
    wait_for(
        Duration::from_secs(2),
        "b takes over after a graceful stop",
        || state(&b) == State::Master,
    );
    let took = t.elapsed();
    println!("graceful handover: {took:?}");
    assert!(took <= Duration::from_millis(250), "{took:?}");
    wait_for(Duration::from_secs(1), "VIP on b only", || {
        topo.holds_vip(1) && !topo.holds_vip(0)
    });
    assert!(b.counters().garps_sent() >= 2);

    b.shutdown().expect("shutdown b");
    assert!(!topo.holds_vip(1), "shutdown removes the VIP");
    let lines = notify.wait_lines(7);
    let expect = [
        "vi-b backup 100",
        "vi-b master 100",
        "vi-b backup 100",
        "vi-b master 250",
        "vi-b backup 100",
        "vi-b master 100",
        "vi-b initialize 100",
    ];
    assert_eq!(lines, expect, "notify hook calls");
}

/// A notify script that appends its arguments to a log, in a temp dir removed on drop.
struct NotifyLog {
    dir: std::path::PathBuf,
    script: std::path::PathBuf,
}

impl NotifyLog {
    fn new() -> NotifyLog {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ghv{}-notify", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = dir.join("notify.sh");
        let log = dir.join("log");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$1 $2 $3\" >> {}\n", log.display()),
        )
        .expect("write notify script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        NotifyLog { dir, script }
    }

    /// The logged lines once there are `n` of them (the hook runs asynchronously).
    fn wait_lines(&self, n: usize) -> Vec<String> {
        let read = || {
            std::fs::read_to_string(self.dir.join("log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let start = Instant::now();
        while read().len() < n && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        read()
    }
}

impl Drop for NotifyLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn unicast_peers_elect_and_hand_over() {
    if !ready_or_skip("unicast_peers_elect_and_hand_over", &[]) {
        return;
    }
    let topo = Topology::create('u').expect("create namespaces");
    let addr = |k: u8| IpAddr::V4(Ipv4Addr::new(10, 213, 0, k));
    let mut ca = config(&topo, 0, 200);
    ca.unicast_peers = vec![addr(2)];
    let mut cb = config(&topo, 1, 100);
    cb.unicast_peers = vec![addr(1)];
    let (a, _ae) = spawn_with(&topo, ca, Arc::new(|_: &str| 0));
    let (b, _be) = spawn_with(&topo, cb, Arc::new(|_: &str| 0));
    wait_for(Duration::from_secs(3), "a becomes master by unicast", || {
        state(&a) == State::Master && topo.holds_vip(0)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&b), State::Backup);
    assert!(!topo.holds_vip(1));
    assert!(b.counters().adverts_received() >= 2);

    // An advert from a source that is not a configured peer is dropped and counted.
    ip(&[
        "-n",
        &topo.ns[0],
        "addr",
        "add",
        "10.213.0.3/24",
        "dev",
        &topo.ifname[0],
    ])
    .expect("extra address");
    let ifname = topo.ifname[0].clone();
    in_netns(&topo.ns[0], move || {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(112)),
        )
        .expect("raw socket");
        s.bind_device(Some(ifname.as_bytes())).expect("bind device");
        s.set_ttl(255).expect("ttl");
        let src = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 3));
        let dst = IpAddr::V4(Ipv4Addr::new(10, 213, 0, 2));
        s.bind(&std::net::SocketAddr::new(src, 0).into())
            .expect("bind source");
        let msg = Advert {
            version: Version::V3,
            vrid: VRID,
            priority: 250,
            interval_cs: 10,
            addresses: vec![VIP.parse().expect("constant")],
        }
        .encode(Endpoints { src, dst }, ChecksumMode::PseudoHeader)
        .expect("valid advert");
        s.send_to(&msg, &std::net::SocketAddr::new(dst, 0).into())
            .expect("send");
    });
    let bc = b.counters();
    wait_for(Duration::from_secs(1), "unknown peer counted", || {
        bc.dropped_for(DecodeError::UnknownPeer) == 1
    });
    assert_eq!(state(&b), State::Backup);

    let t = Instant::now();
    a.shutdown().expect("shutdown a");
    wait_for(Duration::from_secs(2), "b takes over by unicast", || {
        state(&b) == State::Master && topo.holds_vip(1)
    });
    println!("unicast graceful handover: {:?}", t.elapsed());
    assert!(t.elapsed() <= Duration::from_millis(300));
    b.shutdown().expect("shutdown b");
}
