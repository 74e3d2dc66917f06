//! The system under test of `launch`: a farm directory (CA, ticket keys, member
//! certificates), `gatehouse run` as broker-1, echo stand-ins as session hosts with stand-in
//! host agents reporting them up, gateway gw-1 (a front listener with `tls = "auto"` and its
//! self-signed certificate, and a second listener that trusts PROXY v2 from 127.0.0.1) and
//! forwarding gateway fw-1 whose chain is gw-1's second listener, as in the demo
//! (src/demo/gateway.toml, forwarder.toml).
//!
//! The config and farm texts are pure functions (the broker's parser checks the farm file
//! here; `gatehouse run` checks the node configs when they start); [`Rig`] does the I/O with
//! the farm plumbing of `login-launch` ([`FarmDir`], [`Agents`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::login_launch::farm::{self, free_loopback_addr, BrokerProcess, FarmDir, HostLoad, NodeProcess};
use crate::login_launch::load::Agents;
use crate::net::SourcePool;
use crate::standin::{Kind, StandIn, StandInHandle};
use crate::BenchError;

use super::client::HttpConn;

/// The site of every host and of gw-1.
pub const SITE: &str = "site-1";
/// The gateway under test.
pub const GATEWAY: &str = "gw-1";
/// The forwarding gateway in front of it.
pub const FORWARDER: &str = "fw-1";
/// The resource every client launches (the desktop pool of every host).
pub const RESOURCE: &str = "desktop-1";
/// Sessions a host takes (high: the benchmark launches far more than real sessions).
pub const SESSION_LIMIT: u32 = 1_000_000;

/// Name of stand-in host `h`.
pub fn host_name(h: usize) -> String {
    format!("echo-{:02}", h + 1)
}

/// The farm file: one site with gw-1, the echo hosts at their loopback addresses in one
/// desktop pool open to `staff`. Launches count as sessions for 2 s only
/// (`launch_hold`), so thousands of launches a second spread over the hosts instead of
/// filling them.
pub fn farm_text(hosts: &[SocketAddr]) -> String {
    let mut t = format!(
        "# gatehouse-bench launch: generated farm\n\n[[site]]\nname = \"{SITE}\"\ndefault_pool = \"desktops\"\n\n\
         [[gateway]]\nname = \"{GATEWAY}\"\nsite = \"{SITE}\"\n\n"
    );
    for (h, addr) in hosts.iter().enumerate() {
        let _ = write!(
            t,
            "[[host]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nsite = \"{SITE}\"\nsession_limit = {SESSION_LIMIT}\n\n",
            host_name(h),
            addr.ip(),
            addr.port()
        );
    }
    let names: Vec<String> = (0..hosts.len())
        .map(|h| format!("\"{}\"", host_name(h)))
        .collect();
    let _ = write!(
        t,
        "[[pool]]\nname = \"desktops\"\nsite = \"{SITE}\"\nhosts = [{}]\n\n[[group]]\nname = \"{}\"\n\n\
         [[resource]]\nid = \"{RESOURCE}\"\nname = \"Bench desktop\"\nkind = \"desktop\"\npool = \"desktops\"\ngroups = [\"{}\"]\n\n\
         [balancing]\nlaunch_hold = \"2s\"\n",
        names.join(", "),
        farm::STAFF_GROUP,
        farm::STAFF_GROUP
    );
    t
}

/// Where gw-1 listens.
#[derive(Clone, Copy, Debug)]
pub struct GatewayAddrs {
    /// The front listener (plain and TLS on one port).
    pub front: SocketAddr,
    /// The listener for fw-1 (PROXY v2 required from 127.0.0.1).
    pub from_forwarder: SocketAddr,
}

/// gw-1's config; `path` makes the farm directory's file names.
pub fn gateway_config(addrs: GatewayAddrs, broker: SocketAddr, workers: usize, dir: &Path) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        "[node]\nname = \"{GATEWAY}\"\nworkers = {workers}\nlog_level = \"warn\"\nstate_dir = \"{}\"\n\n\
         [gateway]\nid = \"{GATEWAY}\"\nsite = \"{SITE}\"\nbrokers = [\"{broker}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         ca_file = \"{}\"\nfarm_key_file = \"{}\"\n\n\
         [[gateway.listener]]\nname = \"front\"\nbind = \"{}\"\ntls = \"auto\"\n\n\
         [[gateway.listener]]\nname = \"from-dmz\"\nbind = \"{}\"\ntls = \"auto\"\naccept_proxy_from = [\"127.0.0.1/32\"]\n",
        p(&format!("{GATEWAY}-state")),
        p(&format!("{GATEWAY}.pem")),
        p(&format!("{GATEWAY}.key")),
        p("farm-ca.pem"),
        p("farm-keys.toml"),
        addrs.front,
        addrs.from_forwarder,
    )
}

/// fw-1's config: every connection to `next` with a PROXY v2 header, TLS passed through.
pub fn forwarder_config(listen: SocketAddr, next: SocketAddr, workers: usize, dir: &Path) -> String {
    format!(
        "[node]\nname = \"{FORWARDER}\"\nworkers = {workers}\nlog_level = \"warn\"\nstate_dir = \"{}\"\n\n\
         [gateway]\nid = \"{FORWARDER}\"\n\n\
         [[gateway.listener]]\nname = \"dmz\"\nbind = \"{listen}\"\npool = \"chain\"\n\n\
         [[gateway.pool]]\nname = \"chain\"\nalgorithm = \"first\"\nsend_proxy = true\n\
         backends = [{{ name = \"{GATEWAY}\", address = \"{next}\" }}]\n",
        dir.join(format!("{FORWARDER}-state")).display()
    )
}

/// How to build the rig.
#[derive(Clone, Debug)]
pub struct RigParams {
    /// Echo stand-in hosts.
    pub hosts: usize,
    /// Users (one per client thread).
    pub users: usize,
    /// Worker threads of gw-1 and of fw-1.
    pub gateway_workers: usize,
    /// The gatehouse binary.
    pub gatehouse: std::path::PathBuf,
    /// Keep the farm here instead of a temporary directory.
    pub dir: Option<std::path::PathBuf>,
}

/// How long building the rig took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SetupTimes {
    /// `farm init` and every `farm issue`.
    pub pki_s: f64,
    /// The broker until its gateway port accepts.
    pub broker_start_s: f64,
    /// The agents until the broker accepted a report of every host.
    pub hosts_up_s: f64,
    /// gw-1 and fw-1 until `GET /health` answers 200 through both.
    pub gateways_up_s: f64,
}

/// Everything running; stopped (processes killed, threads joined) on drop, in reverse order.
pub struct Rig {
    /// The forwarding gateway.
    pub forwarder: NodeProcess,
    /// The gateway.
    pub gateway: NodeProcess,
    /// Stand-in host agents.
    pub agents: Agents,
    /// The broker.
    pub broker: BrokerProcess,
    /// The echo hosts.
    pub hosts: Vec<StandInHandle>,
    /// gw-1's listeners.
    pub gateway_addrs: GatewayAddrs,
    /// fw-1's listener.
    pub forwarder_addr: SocketAddr,
    /// How long each step took.
    pub setup: SetupTimes,
    /// The farm directory (dropped last).
    pub dir: FarmDir,
}

impl Rig {
    /// Builds and starts everything; `progress` gets a line per step.
    pub fn start(p: &RigParams, progress: &mut dyn FnMut(&str)) -> Result<Rig, BenchError> {
        let dir = FarmDir::with_prefix(p.dir.as_deref(), &p.gatehouse, "gatehouse-launch.")?;
        progress(&format!("farm in {}", dir.path().display()));
        let hosts: Vec<StandInHandle> = (0..p.hosts)
            .map(|_| {
                StandIn::bind(Kind::Echo, SocketAddr::from(([127, 0, 0, 1], 0)))
                    .map(StandIn::spawn)
                    .map_err(|e| BenchError::Usage(format!("echo stand-in: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let host_addrs: Vec<SocketAddr> = hosts.iter().map(StandInHandle::local_addr).collect();

        let t = Instant::now();
        dir.init_ca()?;
        dir.issue(farm::BROKER_NODE, "broker")?;
        dir.issue(GATEWAY, "gateway")?;
        for h in 0..p.hosts {
            dir.issue(&host_name(h), "host-agent")?;
        }
        let pki_s = t.elapsed().as_secs_f64();
        dir.write_farm(&farm_text(&host_addrs))?;
        let (hashes, _) = farm::make_hashes(p.users, 1, 1)?;
        dir.write_users(p.users, &hashes)?;
        progress(&format!(
            "certificates for broker-1, {GATEWAY}, {} hosts: {pki_s:.1} s",
            p.hosts
        ));

        let t = Instant::now();
        let mut broker = dir.start_broker(2)?;
        let broker_start_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loads = (0..p.hosts)
            .map(|h| HostLoad {
                host: host_name(h),
                cpu_percent: 10,
                mem_percent: 30,
                sessions: Vec::new(),
            })
            .collect();
        let agents = Agents::start(broker.agent_addr, dir.path(), &dir.ca_file(), loads)
            .map_err(|e| BenchError::Usage(e.to_string()))?;
        let deadline = t + Duration::from_secs(30);
        while agents.reporting() < p.hosts {
            if Instant::now() >= deadline || !broker.alive() {
                return Err(BenchError::NoProgress {
                    target: broker.agent_addr,
                    detail: format!(
                        "{} of {} hosts reporting: {} {}",
                        agents.reporting(),
                        p.hosts,
                        agents.first_error.take(),
                        broker.log_tail()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let hosts_up_s = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let gateway_addrs = GatewayAddrs {
            front: free_loopback_addr()?,
            from_forwarder: free_loopback_addr()?,
        };
        let text = gateway_config(gateway_addrs, broker.gateway_addr, p.gateway_workers, dir.path());
        let gateway = dir.start_node(GATEWAY, &text, gateway_addrs.front)?;
        let forwarder_addr = free_loopback_addr()?;
        let text = forwarder_config(
            forwarder_addr,
            gateway_addrs.from_forwarder,
            p.gateway_workers,
            dir.path(),
        );
        let forwarder = dir.start_node(FORWARDER, &text, forwarder_addr)?;
        for (name, addr, node) in [
            (GATEWAY, gateway_addrs.front, &gateway),
            (FORWARDER, forwarder_addr, &forwarder),
        ] {
            wait_healthy(addr).map_err(|detail| BenchError::NoProgress {
                target: addr,
                detail: format!("{name}: {detail}: {}", node.log_tail()),
            })?;
        }
        let gateways_up_s = t.elapsed().as_secs_f64();
        progress(&format!(
            "broker up in {broker_start_s:.2} s, {} hosts reporting after {hosts_up_s:.2} s, gateways healthy after {gateways_up_s:.2} s",
            p.hosts
        ));
        Ok(Rig {
            forwarder,
            gateway,
            agents,
            broker,
            hosts,
            gateway_addrs,
            forwarder_addr,
            setup: SetupTimes {
                pki_s,
                broker_start_s,
                hosts_up_s,
                gateways_up_s,
            },
            dir,
        })
    }

    /// A process of the rig died: its name and last log lines.
    pub fn dead_process(&mut self) -> Option<String> {
        if !self.broker.alive() {
            return Some(format!("the broker exited: {}", self.broker.log_tail()));
        }
        for node in [&mut self.gateway, &mut self.forwarder] {
            if !node.alive() {
                return Some(format!("{} exited: {}", node.name(), node.log_tail()));
            }
        }
        None
    }
}

/// Waits up to 15 s until `GET /health` at `addr` answers 200 (a broker link is up).
fn wait_healthy(addr: SocketAddr) -> Result<(), String> {
    let sources = SourcePool::new(addr, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match HttpConn::connect(addr, None, &sources) {
            Ok(mut c) => {
                if c.healthy() {
                    return Ok(());
                }
                last = "GET /health not 200".into();
            }
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("not healthy after 15 s ({last})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farm_text_parses_with_every_host_at_its_stand_in() {
        let hosts: Vec<SocketAddr> = vec![
            "127.0.0.1:40001".parse().unwrap(),
            "127.0.0.1:40002".parse().unwrap(),
        ];
        let farm = gatehouse_control::broker::Farm::parse(&farm_text(&hosts)).unwrap();
        assert_eq!(farm.hosts().len(), 2);
        assert_eq!(farm.hosts()[1].port, 40002);
        assert_eq!(farm.hosts()[0].address, "127.0.0.1");
        assert_eq!(farm.resources().len(), 1);
        assert!(farm.gateway(GATEWAY).is_some_and(|g| g.site == SITE));
        assert_eq!(farm.policy().balancing.launch_hold, Duration::from_secs(2));
    }

    #[test]
    fn configs_name_the_listeners_and_the_chain() {
        let addrs = GatewayAddrs {
            front: "127.0.0.1:4431".parse().unwrap(),
            from_forwarder: "127.0.0.1:4432".parse().unwrap(),
        };
        let gw = gateway_config(addrs, "127.0.0.1:20002".parse().unwrap(), 2, Path::new("/f"));
        assert!(
            gw.contains("bind = \"127.0.0.1:4431\"\ntls = \"auto\"\n\n"),
            "{gw}"
        );
        assert!(
            gw.contains("bind = \"127.0.0.1:4432\"\ntls = \"auto\"\naccept_proxy_from = [\"127.0.0.1/32\"]"),
            "{gw}"
        );
        assert!(
            gw.contains("brokers = [\"127.0.0.1:20002\"]") && gw.contains("/f/gw-1.key"),
            "{gw}"
        );
        let fw = forwarder_config(
            "127.0.0.1:4433".parse().unwrap(),
            addrs.from_forwarder,
            1,
            Path::new("/f"),
        );
        assert!(
            fw.contains("send_proxy = true") && fw.contains("address = \"127.0.0.1:4432\""),
            "{fw}"
        );
        assert!(!fw.contains("brokers"), "a forwarder needs no broker: {fw}");
    }
}
