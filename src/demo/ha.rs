//! `gatehouse demo --ha`: a HALB pair with VRRP in network namespaces, beside the loopback farm.
//!
//! Owns the two `gatehouse run` children (HALB A, priority 150, and B, 100, each in its own
//! namespace and process group), their configs and logs, and through [`Segment`] the network
//! they share with the host. Both listen on the VIP and balance over the demo gateways'
//! `from-ha` listeners, which bind the host's address of the segment (the namespaces cannot
//! reach the host's 127.0.0.1). It must not touch anything outside that segment: stopping the
//! pair stops its children first, then removes the namespaces and the host's veth.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::netns::{Segment, SegmentNames, HOST_ADDR, NODE_ADDRS, NODE_IFACE, SEGMENT, VIP};
use crate::runtime::Endpoint;

/// The template of each HALB's config in the pair.
pub const HALB_HA_TEMPLATE: &str = include_str!("halb-ha.toml");
/// Appended to each demo gateway's config with `--ha`: a listener on the segment.
pub const GATEWAY_HA_TEMPLATE: &str = include_str!("gateway-ha.toml");
/// The port the pair serves on the VIP (the namespaces are private, so it never collides).
pub const VIP_PORT: u16 = 3389;
/// The port of each HALB's admin listener, on its own address of the segment.
pub const ADMIN_PORT: u16 = 19900;

/// Label and VRRP priority of each node (A wins, and preempts when it comes back).
const NODES: [(&str, u8); 2] = [("a", 150), ("b", 100)];
/// How long a node gets to hand the VIP over and drain on SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(4);
/// Bound on an admin answer read while polling the VRRP state.
const METRICS_LIMIT: u64 = 4 << 20;

/// The VRRP state of a node's instance, as its admin metrics report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VrrpState {
    /// Starting, before the first timer.
    Initialize,
    /// Listening to a master's adverts.
    Backup,
    /// Holding the VIP.
    Master,
    /// Cannot serve (its tracked pool has no healthy gateway).
    Fault,
}

impl VrrpState {
    /// The name the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Initialize => "initialize",
            VrrpState::Backup => "backup",
            VrrpState::Master => "master",
            VrrpState::Fault => "fault",
        }
    }
}

/// The state of instance `vi1` in Prometheus text (the series set to 1), if present.
pub fn vrrp_state(metrics: &str) -> Option<VrrpState> {
    [
        VrrpState::Initialize,
        VrrpState::Backup,
        VrrpState::Master,
        VrrpState::Fault,
    ]
    .into_iter()
    .find(|st| {
        let series = format!(
            "gatehouse_vrrp_state{{instance=\"vi1\",state=\"{}\"}}",
            st.as_str()
        );
        metrics
            .lines()
            .filter_map(|l| l.strip_prefix(&series))
            .any(|v| v.trim() == "1")
    })
}

/// The config of node `index` (0 = A, 1 = B) over the gateways' `from-ha` addresses, VRRP on
/// `iface` (the namespace's interface; unit tests pass `lo`).
pub fn halb_config(index: usize, iface: &str, gateways: [SocketAddr; 2]) -> String {
    let (label, priority) = NODES[index];
    HALB_HA_TEMPLATE
        .replace("{name}", &format!("demo-halb-{label}"))
        .replace("{address}", &NODE_ADDRS[index].to_string())
        .replace("{vip}", &VIP.to_string())
        .replace("{iface}", iface)
        .replace("{priority}", &priority.to_string())
        .replace("{gw1}", &gateways[0].to_string())
        .replace("{gw2}", &gateways[1].to_string())
}

/// One HALB child: `ip netns exec NS gatehouse run -c FILE` (the exec keeps the pid).
struct HalbProcess {
    name: String,
    ns: String,
    address: Ipv4Addr,
    priority: u8,
    child: Child,
    log: PathBuf,
}

impl HalbProcess {
    fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.address, ADMIN_PORT))
    }

    fn state(&self) -> Option<VrrpState> {
        fetch_metrics(self.admin()).as_deref().and_then(vrrp_state)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The end of its log, for error messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// The HALB pair and its network; dropping it stops the children and removes the network.
pub struct HalbPair {
    nodes: Vec<HalbProcess>,
    interrupted: Arc<AtomicBool>,
    signal_ids: Vec<signal_hook::SigId>,
    // Dropped after `Drop::drop` has stopped the children.
    segment: Segment,
}

impl HalbPair {
    /// Checks root and `ip netns`, and builds the segment. From here until the HALB node's own
    /// loop takes over, SIGINT/SIGTERM only set a flag (see [`HalbPair::interrupted`]), so an
    /// interrupted start still removes what it made.
    pub fn prepare() -> Result<HalbPair, String> {
        super::netns::preflight()?;
        let interrupted = Arc::new(AtomicBool::new(false));
        let mut signal_ids = Vec::new();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            let id =
                signal_hook::flag::register(sig, interrupted.clone()).map_err(|e| format!("signals: {e}"))?;
            signal_ids.push(id);
        }
        match Segment::create(SegmentNames::for_run(std::process::id())) {
            Ok(segment) => Ok(HalbPair {
                nodes: Vec::new(),
                interrupted,
                signal_ids,
                segment,
            }),
            Err(e) => {
                for id in signal_ids {
                    signal_hook::low_level::unregister(id);
                }
                Err(e)
            }
        }
    }

    /// Where demo gateway `index` binds its `from-ha` listener.
    pub fn gateway_bind(&self, ephemeral: bool, index: usize) -> SocketAddr {
        let port = if ephemeral { 0 } else { 18461 + index as u16 };
        SocketAddr::from((HOST_ADDR, port))
    }

    /// Whether SIGINT or SIGTERM arrived since [`HalbPair::prepare`].
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// The VIP endpoint clients use.
    pub fn vip(&self) -> SocketAddr {
        SocketAddr::from((VIP, VIP_PORT))
    }

    /// Writes both configs into `dir` and starts both HALBs over `gateways`.
    pub fn start_nodes(&mut self, gateways: [SocketAddr; 2], dir: &Path) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("the path of this binary: {e}"))?;
        for (index, (label, priority)) in NODES.into_iter().enumerate() {
            let name = format!("halb-{label}");
            let ns = self.segment.names().node_ns[index].clone();
            let config = dir.join(format!("{name}.toml"));
            std::fs::write(&config, halb_config(index, NODE_IFACE, gateways))
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let log = dir.join(format!("{name}.log"));
            let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let err = out.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
            let child = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(&exe)
                .arg("run")
                .arg("-c")
                .arg(&config)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                // Its own group: a terminal's Ctrl-C reaches the demo, which stops it in order.
                .process_group(0)
                .spawn()
                .map_err(|e| format!("starting {name} in {ns}: {e}"))?;
            self.nodes.push(HalbProcess {
                name,
                ns,
                address: NODE_ADDRS[index],
                priority,
                child,
                log,
            });
        }
        Ok(())
    }

    /// Waits until A is master and B backup (health checks have to pass first: the pool is
    /// tracked). Fails early when a child exits or the demo is interrupted.
    pub fn wait_for_master(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if self.interrupted() {
                return Err("interrupted while the HALB pair was starting".into());
            }
            for n in &mut self.nodes {
                if let Ok(Some(status)) = n.child.try_wait() {
                    return Err(format!(
                        "{} in {} exited with {status} at start; the end of {}:\n{}",
                        n.name,
                        n.ns,
                        n.log.display(),
                        n.log_tail()
                    ));
                }
            }
            let states: Vec<Option<VrrpState>> = self.nodes.iter().map(HalbProcess::state).collect();
            if states == [Some(VrrpState::Master), Some(VrrpState::Backup)] {
                tracing::info!(after = ?start.elapsed(), "HA pair up: halb-a master, halb-b backup");
                return Ok(());
            }
            if start.elapsed() > limit {
                let logs: Vec<String> = self.nodes.iter().map(|n| n.log.display().to_string()).collect();
                return Err(format!(
                    "the HALB pair did not settle within {limit:?} (states {:?}; logs {})",
                    states
                        .iter()
                        .map(|s| s.map(VrrpState::as_str))
                        .collect::<Vec<_>>(),
                    logs.join(", ")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The VIP and each HALB's admin listener, for the demo's endpoint list.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut v = vec![Endpoint {
            role: "ha-vip".into(),
            name: "vip".into(),
            address: self.vip(),
        }];
        v.extend(self.nodes.iter().map(|n| Endpoint {
            role: "ha-admin".into(),
            name: n.name.clone(),
            address: n.admin(),
        }));
        v
    }

    /// The `ha` object of the ready file: the VIP, the namespaces, the master, each node.
    pub fn ready_json(&self) -> serde_json::Value {
        let names = self.segment.names();
        let states: Vec<Option<VrrpState>> = self.nodes.iter().map(HalbProcess::state).collect();
        let master = self
            .nodes
            .iter()
            .zip(&states)
            .find(|(_, s)| **s == Some(VrrpState::Master))
            .map(|(n, _)| n.name.clone());
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .zip(&states)
            .map(|(n, s)| {
                serde_json::json!({
                    "name": n.name,
                    "namespace": n.ns,
                    "pid": n.pid(),
                    "address": n.address.to_string(),
                    "admin": n.admin().to_string(),
                    "priority": n.priority,
                    "state": s.map(VrrpState::as_str),
                    "log": n.log.display().to_string(),
                })
            })
            .collect();
        serde_json::json!({
            "vip": self.vip().to_string(),
            "segment": format!("{}/{}", SEGMENT.0, SEGMENT.1),
            "host_address": HOST_ADDR.to_string(),
            "host_interface": names.host_iface,
            "bridge_namespace": names.bridge_ns,
            "namespaces": names.namespaces(),
            "master": master,
            "nodes": nodes,
        })
    }

    /// The summary's HA block: what runs where, and how to watch a failover.
    pub fn summary(&self, pin: &str) -> String {
        let names = self.segment.names();
        let vip = self.vip();
        let mut s = format!(
            "\nHA pair (VRRP vrid 51, 0.1 s adverts) in network namespaces on {}/{}; the bridge is in \
             namespace {}, this host is {HOST_ADDR} on {}:\n",
            SEGMENT.0, SEGMENT.1, names.bridge_ns, names.host_iface
        );
        for n in &self.nodes {
            let state = n.state().map(VrrpState::as_str).unwrap_or("unknown");
            s.push_str(&format!(
                "  {:<7} pid {:<8} {:<18} {:<12} priority {:<4} {:<7} admin http://{}\n          log {}\n",
                n.name,
                n.pid(),
                n.ns,
                n.address.to_string(),
                n.priority,
                state,
                n.admin(),
                n.log.display()
            ));
        }
        s.push_str(&format!(
            "  VIP {vip} -> the gateways' `from-ha` listeners on {HOST_ADDR}: the namespaces cannot \
             reach this host's\n  127.0.0.1, so each gateway also serves its front on the segment.\n"
        ));
        let (user, password) = crate::broker_role::demo::DEMO_USER;
        let a = self.nodes.first().map(|n| (n.pid(), n.ns.as_str(), n.admin()));
        s.push_str(&format!(
            "\nTry a failover:\n  \
             while sleep 0.2; do curl -s -m 1 http://{vip}/health; echo; done   # in a second terminal\n  \
             GATEHOUSE_PASSWORD={password} gatehouse connect --gateway {vip} --user {user} \\\n      \
             --mode gateway-ssl --pin-sha256 {pin} --listen 127.0.0.1:13395\n"
        ));
        if let Some((pid, ns, admin)) = a {
            s.push_str(&format!(
                "  kill -STOP {pid}    # freeze the master (halb-a): halb-b takes the VIP within about 0.4 s\n  \
                 kill -CONT {pid}    # halb-a comes back and takes the VIP again (priority 150, preempt)\n  \
                 kill -KILL {pid}    # or crash it (the demo does not restart it)\n  \
                 ip netns exec {ns} ip -br addr show dev {NODE_IFACE}    # {VIP} is there while it is master\n  \
                 curl -s http://{admin}/metrics | grep 'gatehouse_vrrp_state.* 1'\n"
            ));
        }
        s.push_str("Ctrl-C stops the pair and removes its namespaces and the host's veth.\n");
        s
    }

    /// Stops the children: SIGCONT (a stopped node cannot exit) and SIGTERM, which hands the
    /// VIP over with a priority-0 advert; SIGKILL after [`STOP_TIMEOUT`].
    fn stop_nodes(&mut self) {
        for n in &mut self.nodes {
            if matches!(n.child.try_wait(), Ok(None)) {
                let pid = Pid::from_raw(n.pid() as i32);
                let _ = kill(pid, Signal::SIGCONT);
                let _ = kill(pid, Signal::SIGTERM);
            }
        }
        let start = Instant::now();
        while start.elapsed() < STOP_TIMEOUT
            && self
                .nodes
                .iter_mut()
                .any(|n| matches!(n.child.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        for n in &mut self.nodes {
            if matches!(n.child.try_wait(), Ok(None)) {
                tracing::warn!(node = %n.name, "did not stop within {STOP_TIMEOUT:?}; killing it");
                let _ = n.child.kill();
                let _ = n.child.wait();
            }
        }
        self.nodes.clear();
    }
}

impl Drop for HalbPair {
    fn drop(&mut self) {
        self.stop_nodes();
        for id in self.signal_ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// `GET /metrics` from an admin listener; `None` when it does not answer in time.
fn fetch_metrics(admin: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = Vec::new();
    s.take(METRICS_LIMIT).read_to_end(&mut body).ok()?;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.starts_with("HTTP/1.1 200").then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, ValidateOptions};

    #[test]
    fn node_configs_are_valid() {
        let gws: [SocketAddr; 2] = ["10.213.77.1:18461", "10.213.77.1:18462"].map(|a| a.parse().unwrap());
        for (index, (_, priority)) in NODES.into_iter().enumerate() {
            // `lo` exists on every host, so validation (which looks the interface up) passes.
            let text = halb_config(index, "lo", gws);
            for hole in [
                "{name}",
                "{address}",
                "{vip}",
                "{iface}",
                "{priority}",
                "{gw1}",
                "{gw2}",
            ] {
                assert!(!text.contains(hole), "{hole} unfilled:\n{text}");
            }
            let c = config::load_str(
                &text,
                "<halb-ha>",
                ValidateOptions {
                    allow_ephemeral_ports: false,
                },
            )
            .unwrap_or_else(|e| panic!("node {index}: {e}\n{text}"));
            let halb = c.halb.expect("a halb role");
            assert_eq!(halb.vrrp.len(), 1);
            assert_eq!(halb.vrrp[0].priority, u32::from(priority));
            assert!(halb.listener[0].freebind);
            assert_eq!(halb.listener[0].bind, SocketAddr::from((VIP, VIP_PORT)));
            assert_eq!(halb.pool[0].backends[1].address, gws[1]);
        }
    }

    #[test]
    fn state_from_metrics() {
        let m = "# TYPE gatehouse_vrrp_state gauge\n\
                 gatehouse_vrrp_state{instance=\"vi1\",state=\"initialize\"} 0\n\
                 gatehouse_vrrp_state{instance=\"vi1\",state=\"backup\"} 0\n\
                 gatehouse_vrrp_state{instance=\"vi1\",state=\"master\"} 1\n";
        assert_eq!(vrrp_state(m), Some(VrrpState::Master));
        assert_eq!(vrrp_state(&m.replace("} 1", "} 0")), None);
        assert_eq!(vrrp_state(""), None);
        // Another instance's series does not count.
        assert_eq!(vrrp_state(&m.replace("vi1", "vi2")), None);
    }
}
