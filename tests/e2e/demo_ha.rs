//! `gatehouse demo --ha --ephemeral --ready-file F` (root): the VIP answers through the master
//! HALB, keeps answering after the master is SIGKILLed, and SIGTERM removes the namespaces.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::*;

#[test]
fn demo_ha_fails_over_and_cleans_up() {
    if !ready("demo_ha_fails_over_and_cleans_up") {
        return;
    }
    // Declared before the demo, so dropped after it: if an assertion fails, the demo is killed
    // first and then whatever it made is removed.
    let mut leftovers = Leftovers::default();
    let dir = tempfile::tempdir().unwrap();
    let ready_file = dir.path().join("ready.json");
    let log = dir.path().join("demo.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin())
        .args(["demo", "--ha", "--ephemeral", "--ready-file"])
        .arg(&ready_file)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut demo = Proc { child };
    let start = Instant::now();
    let up = wait_until(Duration::from_secs(40), || {
        ready_file.exists() || matches!(demo.child.try_wait(), Ok(Some(_)))
    });
    assert!(
        up && ready_file.exists(),
        "no ready file after {:?}; demo log:\n{}",
        start.elapsed(),
        read(&log)
    );
    println!("demo --ha: ready file after {:?}", start.elapsed());
    let doc: serde_json::Value = serde_json::from_str(&read(&ready_file)).unwrap();
    let ha = &doc["ha"];
    leftovers.namespaces = ha["namespaces"]
        .as_array()
        .expect("ha.namespaces")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    leftovers.host_iface = ha["host_interface"].as_str().map(str::to_string);
    assert_eq!(leftovers.namespaces.len(), 3, "a, b and the bridge: {ha}");
    let vip: SocketAddr = ha["vip"].as_str().expect("ha.vip").parse().unwrap();
    let nodes = ha["nodes"].as_array().expect("ha.nodes");
    assert_eq!(nodes.len(), 2);
    let master = ha["master"].as_str().expect("a master named in the ready file");
    let node = |name: &str| nodes.iter().find(|n| n["name"] == name).expect("node listed");
    let (m, other) = (node(master), nodes.iter().find(|n| n["name"] != master).unwrap());
    println!(
        "demo --ha: VIP {vip}, master {master} (pid {}), ready file ha = {ha}",
        m["pid"]
    );
    assert_eq!(master, "halb-a", "A has priority 150");
    for n in nodes {
        let ns = n["namespace"].as_str().unwrap();
        assert!(
            namespaces().iter().any(|x| x == ns),
            "namespace {ns} exists while the demo runs"
        );
    }

    // The gateway's /health through the VIP, from the host.
    let (status, body) = health(vip).unwrap_or_else(|| panic!("no answer on {vip}; log:\n{}", read(&log)));
    println!("demo --ha: GET /health via {vip} -> {status} {}", body.trim());
    assert_eq!(status, 200, "{body}");

    // Crash the master; the backup must take the VIP and serve it.
    let pid = m["pid"].as_i64().expect("master pid") as i32;
    let killed = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let back = wait_until(Duration::from_secs(15), || {
        health(vip).is_some_and(|(s, _)| s == 200)
    });
    let took = killed.elapsed();
    assert!(
        back,
        "the VIP did not answer within {took:?} after SIGKILL of the master"
    );
    println!(
        "demo --ha: SIGKILL of {master} -> VIP answers again after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    let admin: SocketAddr = other["admin"].as_str().unwrap().parse().unwrap();
    let state = http(admin, "GET", "/metrics", "")
        .map(|(_, b)| b)
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("gatehouse_vrrp_state{instance=\"vi1\",state=\"master\"} 1"));
    assert!(state, "{} reports master after the failover", other["name"]);

    // SIGTERM: the demo stops and removes its namespaces and the host's veth.
    demo.signal(Signal::SIGTERM);
    let status = demo.wait_exit(Duration::from_secs(20));
    println!("demo --ha: SIGTERM -> {status:?}");
    assert!(
        status.expect("demo did not stop on SIGTERM").success(),
        "log:\n{}",
        read(&log)
    );
    let now = namespaces();
    for ns in &leftovers.namespaces {
        assert!(!now.contains(ns), "namespace {ns} left behind: {now:?}");
    }
    let iface = leftovers.host_iface.clone().expect("ha.host_interface");
    assert!(!link_exists(&iface), "host interface {iface} left behind");
    let backup_pid = other["pid"].as_i64().expect("backup pid") as i32;
    assert!(
        !PathBuf::from(format!("/proc/{backup_pid}")).exists() || pid_is_zombie(backup_pid),
        "{} (pid {backup_pid}) still running after the demo stopped",
        other["name"]
    );
    println!(
        "demo --ha: namespaces {:?} and {iface} removed",
        leftovers.namespaces
    );
}

/// What to delete if the test fails half-way (the demo is SIGKILLed by `Proc` first).
#[derive(Default)]
struct Leftovers {
    namespaces: Vec<String>,
    host_iface: Option<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            if namespaces().contains(ns) {
                // The HALBs of a killed demo are still running in there.
                if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                        }
                    }
                }
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
        if let Some(i) = &self.host_iface {
            if link_exists(i) {
                let _ = Command::new("ip").args(["link", "del", i]).output();
            }
        }
    }
}

/// Root and `ip`; `false` after a loud message means skip. Under `CI=true` a missing
/// prerequisite fails the test instead (as the VRRP tests' `ready`).
fn ready(test: &str) -> bool {
    let why = if !nix::unistd::geteuid().is_root() {
        Some("not root")
    } else if Command::new("ip").args(["netns", "list"]).output().is_err() {
        Some("`ip` (iproute2) not installed")
    } else {
        None
    };
    let Some(why) = why else { return true };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: prerequisite missing under CI=true: {why}");
    }
    let bar = "#".repeat(70);
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{bar}\n## SKIPPED {test}: {why} (needs root and iproute2; CI=true fails instead)\n{bar}\n"
    );
    false
}

/// `GET /health` with short timeouts, so a lost SYN during the failover costs little.
fn health(addr: SocketAddr) -> Option<(u16, String)> {
    http_within(
        addr,
        "GET",
        "/health",
        "",
        Duration::from_millis(300),
        Duration::from_secs(2),
    )
}

fn namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn link_exists(iface: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", iface])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A killed child of the (now exited) demo is reaped by init; until then it is a zombie.
fn pid_is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'))
        .unwrap_or(true)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
