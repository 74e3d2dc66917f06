//! Interop with keepalived 2.2.7 (Debian): gatehouse in namespace a, keepalived in namespace b,
//! same VRID, VRRPv3 with keepalived's checksum form, 0.1 s adverts. Either side can be master
//! and failover works both ways.
//!
//! Needs root, iproute2 and keepalived; skips loudly without them (fails under `CI=true`).
//! keepalived runs in the foreground with its own pid files in a temporary directory and is
//! stopped (and its VRRP child killed) on drop, also when an assertion fails.

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_vrrp::linux::Runner;
use gatehouse_vrrp::{ChecksumAccept, ChecksumMode, InstanceConfig, State, Vip};

use common::{in_netns, ready_or_skip, wait_for, Topology, VIP};

const VRID: u8 = 61;

/// A keepalived process in a namespace, stopped on drop.
struct Keepalived {
    child: Child,
    dir: PathBuf,
}

impl Keepalived {
    fn start(ns: &str, ifname: &str, priority: u8) -> Keepalived {
        let dir = std::env::temp_dir().join(format!("ghv{}-keepalived", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("keepalived.conf");
        fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id ghv_b\n  vrrp_version 3\n}}\n\
                 vrrp_instance VI_GHV {{\n  state BACKUP\n  interface {ifname}\n  \
                 virtual_router_id {VRID}\n  priority {priority}\n  advert_int 0.1\n  \
                 virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n"
            ),
        )
        .expect("write keepalived.conf");
        let log = fs::File::create(dir.join("log")).expect("log file");
        let child = Command::new("ip")
            // -R: a crashed VRRP child stays dead. keepalived's parent otherwise respawns
            // it, and the new child (priority 100, a shorter master-down interval than
            // gatehouse's 50) can win the race for master before gatehouse's timer fires.
            .args([
                "netns",
                "exec",
                ns,
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-R",
                "-f",
            ])
            .arg(&conf)
            .arg("-p")
            .arg(dir.join("keepalived.pid"))
            .arg("-r")
            .arg(dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start keepalived");
        Keepalived { child, dir }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn vrrp_pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("vrrp.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL the VRRP child only, as a crash would.
    fn crash(&mut self) {
        let pid = self.vrrp_pid().expect("keepalived wrote its VRRP pid file");
        // SAFETY: kill(2) on a pid read from keepalived's own pid file.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    /// SIGTERM keepalived and wait up to `limit`; SIGKILL what is left.
    fn stop(&mut self, limit: Duration) {
        let pid = self.child.id() as i32;
        let vrrp = self.vrrp_pid();
        // SAFETY: kill(2) on our own child (ip netns exec execs keepalived in place).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(v) = vrrp {
            // The VRRP child may outlive a killed parent; it is ours, kill it by its pid.
            // SAFETY: kill(2) on keepalived's VRRP child pid.
            unsafe { libc::kill(v, libc::SIGKILL) };
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn gatehouse(topo: &Topology, priority: u8, checksum: ChecksumMode) -> Runner {
    let mut c = InstanceConfig::new(
        "vi-gh",
        &topo.ifname[0],
        VRID,
        priority,
        vec![Vip {
            addr: VIP.parse().expect("constant"),
            prefix_len: 24,
        }],
    );
    c.advert_interval = Duration::from_millis(100);
    c.checksum_mode = checksum;
    c.checksum_accept = ChecksumAccept::Either;
    let (tx, _rx) = crossbeam_channel::unbounded();
    in_netns(&topo.ns[0], move || {
        Runner::spawn(vec![c], Arc::new(|_: &str| 0), tx)
    })
    .expect("Runner::spawn")
}

fn state(r: &Runner) -> State {
    r.states()[0].state
}

#[test]
fn keepalived_and_gatehouse_fail_over_both_ways() {
    if !ready_or_skip("keepalived_and_gatehouse_fail_over_both_ways", &["keepalived"]) {
        return;
    }
    let topo = Topology::create('k').expect("create namespaces");

    // keepalived first, alone: it becomes master.
    let mut ka = Keepalived::start(&topo.ns[1], &topo.ifname[1], 100);
    wait_for(Duration::from_secs(5), "keepalived holds the VIP", || {
        topo.holds_vip(1)
    });

    // gatehouse with a higher priority joins and preempts keepalived.
    let t = Instant::now();
    let gh = gatehouse(&topo, 200, ChecksumMode::PseudoHeader);
    wait_for(Duration::from_secs(3), "gatehouse preempts keepalived", || {
        state(&gh) == State::Master && topo.holds_vip(0) && !topo.holds_vip(1)
    });
    println!("gatehouse preempted keepalived in {:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        topo.holds_vip(0) && !topo.holds_vip(1),
        "one VIP holder: gatehouse"
    );
    let log = ka.log();
    assert!(
        !log.contains("Invalid VRRPv3 checksum"),
        "keepalived rejected us:\n{log}"
    );
    let heard = gh.counters().adverts_received();
    assert!(heard >= 1, "gatehouse decoded {heard} keepalived adverts");

    // gatehouse stops gracefully: keepalived takes over from the priority-0 advert.
    let t = Instant::now();
    gh.shutdown().expect("shutdown");
    wait_for(Duration::from_secs(2), "keepalived takes over", || {
        topo.holds_vip(1)
    });
    println!("graceful handover gatehouse -> keepalived: {:?}", t.elapsed());
    assert!(!topo.holds_vip(0));

    // Control: with the RFC 9568 message-only form keepalived rejects us and stays master.
    let gh = gatehouse(&topo, 200, ChecksumMode::MessageOnly);
    wait_for(Duration::from_secs(2), "keepalived logs our bad checksum", || {
        ka.log().contains("Invalid VRRPv3 checksum")
    });
    assert!(
        topo.holds_vip(1),
        "keepalived must not yield to adverts it rejects"
    );
    gh.shutdown().expect("shutdown");

    // gatehouse comes back with a lower priority: it stays backup behind keepalived.
    let gh = gatehouse(&topo, 50, ChecksumMode::PseudoHeader);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(state(&gh), State::Backup);
    assert!(
        gh.counters().adverts_received() >= 5,
        "gatehouse hears keepalived"
    );
    assert!(topo.holds_vip(1) && !topo.holds_vip(0));
    let bad = gh
        .counters()
        .dropped()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect::<Vec<_>>();
    assert!(bad.is_empty(), "gatehouse dropped keepalived adverts: {bad:?}");

    // keepalived's VRRP process crashes: gatehouse takes over within its master-down interval.
    let t = Instant::now();
    ka.crash();
    wait_for(
        Duration::from_secs(2),
        "gatehouse takes over from crashed keepalived",
        || state(&gh) == State::Master && topo.holds_vip(0),
    );
    let took = t.elapsed();
    println!("crash takeover keepalived -> gatehouse: {took:?}");
    assert!(took <= Duration::from_millis(700), "{took:?}");
    gh.shutdown().expect("shutdown");
    ka.stop(Duration::from_secs(2));
}
