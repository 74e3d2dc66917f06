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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::login_launch::farm::{self, free_loopback_addr, BrokerProcess, FarmDir, HostLoad, NodeProcess};
use crate::login_launch::load::Agents;
use crate::net::SourcePool;
use crate::standin::{Kind, StandIn, StandInHandle};
use crate::tls::TlsClient;
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

/// The logon storm's second gateway (same site and broker as gw-1).
pub const GATEWAY_2: &str = "gw-2";
/// The logon storm's balancer in front of gw-1 and gw-2 (TLS passthrough).
pub const HALB: &str = "halb-1";
/// The resource the storm's users launch: the pool of RDP-like stand-ins.
pub const STORM_RESOURCE: &str = "desktop-storm";
/// The broker's password-check threads (`hash_threads`).
pub const HASH_THREADS: usize = 2;

/// Name of RDP-like stand-in host `h` (the storm's session hosts).
pub fn rdp_host_name(h: usize) -> String {
    format!("rdp-{:02}", h + 1)
}

/// The farm file: one site with gw-1, the echo hosts at their loopback addresses in one
/// desktop pool open to `staff`. Launches count as sessions for 2 s only
/// (`launch_hold`), so thousands of launches a second spread over the hosts instead of
/// filling them.
pub fn farm_text(hosts: &[SocketAddr]) -> String {
    farm_text_with(hosts, None)
}

/// [`farm_text`] for a rig with the logon storm: gw-2 in the same site, and the RDP-like
/// stand-ins `rdp` in a second pool published as [`STORM_RESOURCE`].
pub fn storm_farm_text(hosts: &[SocketAddr], rdp: &[SocketAddr]) -> String {
    farm_text_with(hosts, Some(rdp))
}

fn farm_text_with(hosts: &[SocketAddr], rdp: Option<&[SocketAddr]>) -> String {
    let mut t = format!(
        "# gatehouse-bench launch: generated farm\n\n[[site]]\nname = \"{SITE}\"\ndefault_pool = \"desktops\"\n\n\
         [[gateway]]\nname = \"{GATEWAY}\"\nsite = \"{SITE}\"\n\n"
    );
    if rdp.is_some() {
        let _ = write!(t, "[[gateway]]\nname = \"{GATEWAY_2}\"\nsite = \"{SITE}\"\n\n");
    }
    let named: Vec<(String, SocketAddr)> = hosts
        .iter()
        .enumerate()
        .map(|(h, a)| (host_name(h), *a))
        .chain(
            rdp.unwrap_or(&[])
                .iter()
                .enumerate()
                .map(|(h, a)| (rdp_host_name(h), *a)),
        )
        .collect();
    for (name, addr) in &named {
        let _ = write!(
            t,
            "[[host]]\nname = \"{name}\"\naddress = \"{}\"\nport = {}\nsite = \"{SITE}\"\nsession_limit = {SESSION_LIMIT}\n\n",
            addr.ip(),
            addr.port()
        );
    }
    let list = |names: Vec<String>| {
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        t,
        "[[pool]]\nname = \"desktops\"\nsite = \"{SITE}\"\nhosts = [{}]\n\n",
        list((0..hosts.len()).map(host_name).collect())
    );
    if let Some(rdp) = rdp {
        let _ = write!(
            t,
            "[[pool]]\nname = \"rdp-desktops\"\nsite = \"{SITE}\"\nhosts = [{}]\n\n",
            list((0..rdp.len()).map(rdp_host_name).collect())
        );
    }
    let _ = write!(
        t,
        "[[group]]\nname = \"{}\"\n\n\
         [[resource]]\nid = \"{RESOURCE}\"\nname = \"Bench desktop\"\nkind = \"desktop\"\npool = \"desktops\"\ngroups = [\"{}\"]\n\n",
        farm::STAFF_GROUP,
        farm::STAFF_GROUP
    );
    if rdp.is_some() {
        let _ = write!(
            t,
            "[[resource]]\nid = \"{STORM_RESOURCE}\"\nname = \"Storm desktop\"\nkind = \"desktop\"\npool = \"rdp-desktops\"\ngroups = [\"{}\"]\n\n",
            farm::STAFF_GROUP
        );
    }
    t.push_str("[balancing]\nlaunch_hold = \"2s\"\n");
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

/// A gateway of the logon storm (gw-2; gw-1 is [`gateway_config`] with [`admin_section`]):
/// one front listener (`tls = "auto"`, self-signed certificate) and an admin listener
/// whose `/metrics` count the API answers (the HALB's spread).
pub fn storm_gateway_config(
    name: &str,
    front: SocketAddr,
    admin: SocketAddr,
    broker: SocketAddr,
    workers: usize,
    dir: &Path,
) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    format!(
        "[node]\nname = \"{name}\"\nworkers = {workers}\nlog_level = \"warn\"\nstate_dir = \"{}\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [gateway]\nid = \"{name}\"\nsite = \"{SITE}\"\nbrokers = [\"{broker}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         ca_file = \"{}\"\nfarm_key_file = \"{}\"\n\n\
         [[gateway.listener]]\nname = \"front\"\nbind = \"{front}\"\ntls = \"auto\"\n",
        p(&format!("{name}-state")),
        p(&format!("{name}.pem")),
        p(&format!("{name}.key")),
        p("farm-ca.pem"),
        p("farm-keys.toml"),
    )
}

/// An `[admin]` table to append to a node config (after its last table).
pub fn admin_section(admin: SocketAddr) -> String {
    format!("\n[admin]\nlisten = \"{admin}\"\n")
}

/// The HALB's config, as the demo's "farm" listener (src/demo/demo.toml): TLS passed
/// through to `gateways` picked by `algorithm`, each checked with `GET /health` in plain
/// HTTP (the gateways' fronts take plain and TLS on one port).
pub fn halb_config(
    listen: SocketAddr,
    admin: SocketAddr,
    gateways: &[(&str, SocketAddr)],
    algorithm: &str,
    workers: usize,
    dir: &Path,
) -> String {
    let backends: Vec<String> = gateways
        .iter()
        .map(|(n, a)| format!("{{ name = \"{n}\", address = \"{a}\" }}"))
        .collect();
    format!(
        "[node]\nname = \"{HALB}\"\nworkers = {workers}\nlog_level = \"warn\"\nstate_dir = \"{}\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\n[halb]\n\
         [[halb.listener]]\nname = \"farm\"\nbind = \"{listen}\"\npool = \"gateways\"\ntls = \"passthrough\"\nidle_timeout = \"8h\"\n\n\
         [[halb.pool]]\nname = \"gateways\"\nalgorithm = \"{algorithm}\"\n\
         health = {{ check = \"http\", path = \"/health\", interval = \"500ms\", timeout = \"500ms\", rise = 1, fall = 2 }}\n\
         backends = [{}]\n",
        dir.join(format!("{HALB}-state")).display(),
        backends.join(", ")
    )
}

/// How to build the logon storm's part of the rig.
#[derive(Clone, Debug)]
pub struct StormRigParams {
    /// RDP-like stand-in hosts (pool of [`STORM_RESOURCE`]).
    pub rdp_hosts: usize,
    /// Users in the users file (users 1..=N, one shared password hash).
    pub users: usize,
    /// The HALB pool's algorithm (`least-connections` or `source-hash`).
    pub algorithm: String,
    /// Worker threads of the HALB.
    pub halb_workers: usize,
}

/// The logon storm's processes: gw-2, the HALB, the RDP-like stand-ins. Part of [`Rig`].
pub struct StormNodes {
    /// The balancer.
    pub halb: NodeProcess,
    /// The second gateway.
    pub gateway_2: NodeProcess,
    /// The RDP-like stand-in hosts.
    pub hosts: Vec<StandInHandle>,
    /// The HALB's listener (TLS passthrough).
    pub halb_addr: SocketAddr,
    /// The HALB's admin listener (`/api/v1/backends`).
    pub halb_admin: SocketAddr,
    /// Each gateway's name and admin listener (`/metrics`), gw-1 first.
    pub gateway_admins: Vec<(String, SocketAddr)>,
    /// One password hash at the users file's cost, timed in this process, in ms.
    pub one_hash_ms: f64,
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
    /// The logon storm's processes, when built (stopped first).
    pub storm: Option<StormNodes>,
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
        Rig::start_with_storm(p, None, progress)
    }

    /// [`Rig::start`], with the logon storm's processes when `storm` is given (gw-2 and
    /// the RDP-like hosts in the farm, the HALB in front of gw-1 and gw-2, admin listeners
    /// on both gateways).
    pub fn start_with_storm(
        p: &RigParams,
        storm: Option<&StormRigParams>,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Rig, BenchError> {
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
        let rdp_hosts: Vec<StandInHandle> = (0..storm.map_or(0, |s| s.rdp_hosts))
            .map(|_| {
                StandIn::bind(Kind::Rdp, SocketAddr::from(([127, 0, 0, 1], 0)))
                    .map(StandIn::spawn)
                    .map_err(|e| BenchError::Usage(format!("rdp stand-in: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let rdp_addrs: Vec<SocketAddr> = rdp_hosts.iter().map(StandInHandle::local_addr).collect();

        let t = Instant::now();
        dir.init_ca()?;
        dir.issue(farm::BROKER_NODE, "broker")?;
        dir.issue(GATEWAY, "gateway")?;
        for h in 0..p.hosts {
            dir.issue(&host_name(h), "host-agent")?;
        }
        if storm.is_some() {
            dir.issue(GATEWAY_2, "gateway")?;
            for h in 0..rdp_addrs.len() {
                dir.issue(&rdp_host_name(h), "host-agent")?;
            }
        }
        let pki_s = t.elapsed().as_secs_f64();
        let users = p.users.max(storm.map_or(0, |s| s.users));
        match storm {
            None => dir.write_farm(&farm_text(&host_addrs))?,
            Some(_) => dir.write_farm(&storm_farm_text(&host_addrs, &rdp_addrs))?,
        }
        let (hashes, hashing) = farm::make_hashes(users, 1, 1)?;
        dir.write_users(users, &hashes)?;
        progress(&format!(
            "certificates for broker-1, {GATEWAY}, {} hosts: {pki_s:.1} s",
            p.hosts
        ));

        let t = Instant::now();
        let mut broker = dir.start_broker(HASH_THREADS)?;
        let broker_start_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let loads = (0..p.hosts)
            .map(host_name)
            .chain((0..rdp_addrs.len()).map(rdp_host_name))
            .map(|host| HostLoad {
                host,
                cpu_percent: 10,
                mem_percent: 30,
                sessions: Vec::new(),
            })
            .collect();
        let agents = Agents::start(broker.agent_addr, dir.path(), &dir.ca_file(), loads)
            .map_err(|e| BenchError::Usage(e.to_string()))?;
        let deadline = t + Duration::from_secs(30);
        let all_hosts = p.hosts + rdp_addrs.len();
        while agents.reporting() < all_hosts {
            if Instant::now() >= deadline || !broker.alive() {
                return Err(BenchError::NoProgress {
                    target: broker.agent_addr,
                    detail: format!(
                        "{} of {} hosts reporting: {} {}",
                        agents.reporting(),
                        all_hosts,
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
        let mut text = gateway_config(gateway_addrs, broker.gateway_addr, p.gateway_workers, dir.path());
        let gateway_1_admin = free_loopback_addr()?;
        if storm.is_some() {
            text.push_str(&admin_section(gateway_1_admin));
        }
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
            wait_healthy(addr, None).map_err(|detail| BenchError::NoProgress {
                target: addr,
                detail: format!("{name}: {detail}: {}", node.log_tail()),
            })?;
        }
        let storm = match storm {
            None => None,
            Some(s) => Some(start_storm_nodes(
                &dir,
                s,
                &broker,
                (gateway_addrs.front, gateway_1_admin),
                p.gateway_workers,
                rdp_hosts,
                hashing.one_hash_ms,
            )?),
        };
        let gateways_up_s = t.elapsed().as_secs_f64();
        progress(&format!(
            "broker up in {broker_start_s:.2} s, {} hosts reporting after {hosts_up_s:.2} s, gateways healthy after {gateways_up_s:.2} s",
            p.hosts
        ));
        Ok(Rig {
            storm,
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
        if let Some(s) = &mut self.storm {
            for node in [&mut s.gateway_2, &mut s.halb] {
                if !node.alive() {
                    return Some(format!("{} exited: {}", node.name(), node.log_tail()));
                }
            }
        }
        None
    }
}

/// Starts gw-2 and the HALB, and waits until gw-2 answers `GET /health` and the HALB
/// sees both gateways up.
fn start_storm_nodes(
    dir: &FarmDir,
    s: &StormRigParams,
    broker: &BrokerProcess,
    gateway_1: (SocketAddr, SocketAddr),
    workers: usize,
    hosts: Vec<StandInHandle>,
    one_hash_ms: f64,
) -> Result<StormNodes, BenchError> {
    let front_2 = free_loopback_addr()?;
    let admin_2 = free_loopback_addr()?;
    let text = storm_gateway_config(
        GATEWAY_2,
        front_2,
        admin_2,
        broker.gateway_addr,
        workers,
        dir.path(),
    );
    let gateway_2 = dir.start_node(GATEWAY_2, &text, front_2)?;
    wait_healthy(front_2, None).map_err(|detail| BenchError::NoProgress {
        target: front_2,
        detail: format!("{GATEWAY_2}: {detail}: {}", gateway_2.log_tail()),
    })?;
    let halb_addr = free_loopback_addr()?;
    let halb_admin = free_loopback_addr()?;
    let text = halb_config(
        halb_addr,
        halb_admin,
        &[(GATEWAY, gateway_1.0), (GATEWAY_2, front_2)],
        &s.algorithm,
        s.halb_workers,
        dir.path(),
    );
    let halb = dir.start_node(HALB, &text, halb_addr)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let up = halb_backends(halb_admin).map(|b| b.iter().filter(|b| b.up).count());
        if up.as_ref().is_ok_and(|&n| n == 2) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(BenchError::NoProgress {
                target: halb_admin,
                detail: format!(
                    "{HALB}: gateways not both up after 15 s ({up:?}): {}",
                    halb.log_tail()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(StormNodes {
        halb,
        gateway_2,
        hosts,
        halb_addr,
        halb_admin,
        gateway_admins: vec![
            (GATEWAY.to_string(), gateway_1.1),
            (GATEWAY_2.to_string(), admin_2),
        ],
        one_hash_ms,
    })
}

/// One backend as the HALB's admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HalbBackend {
    /// Its name.
    pub name: String,
    /// Health `up`.
    pub up: bool,
    /// Connections the HALB sent it since it started.
    pub total: u64,
}

/// The backends of every pool from the HALB's `GET /api/v1/backends`.
pub fn halb_backends(admin: SocketAddr) -> Result<Vec<HalbBackend>, String> {
    let body = admin_get(admin, "/api/v1/backends")?;
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("backends JSON: {e}"))?;
    Ok(parse_backends(&v))
}

/// [`halb_backends`]'s parser (backends without a name are skipped).
pub fn parse_backends(v: &serde_json::Value) -> Vec<HalbBackend> {
    let pools = v["pools"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    pools
        .iter()
        .flat_map(|p| p["backends"].as_array().map(Vec::as_slice).unwrap_or(&[]))
        .filter_map(|b| {
            Some(HalbBackend {
                name: b["name"].as_str()?.to_string(),
                up: b["health"] == "up",
                total: b["total"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// A gateway's client-API answers by `endpoint_status` (`tunnel_101`, `login_200`, ...),
/// from its admin `GET /metrics`.
pub fn gateway_answers(admin: SocketAddr) -> Result<BTreeMap<String, u64>, String> {
    let body = admin_get(admin, "/metrics")?;
    Ok(parse_answers(&String::from_utf8_lossy(&body)))
}

/// [`gateway_answers`]'s parser: the `gatehouse_gateway_answers_total` lines of a
/// Prometheus text exposition; other and malformed lines are skipped.
pub fn parse_answers(text: &str) -> BTreeMap<String, u64> {
    const METRIC: &str = "gatehouse_gateway_answers_total{";
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        let (Some(endpoint), Some(status), Ok(n)) =
            (label("endpoint"), label("status"), value.trim().parse::<u64>())
        else {
            continue;
        };
        out.insert(format!("{endpoint}_{status}"), n);
    }
    out
}

/// The body of a `GET` to an admin listener (it answers once, then closes).
fn admin_get(admin: SocketAddr, path: &str) -> Result<Vec<u8>, String> {
    let sources = SourcePool::new(admin, 1);
    let mut c = HttpConn::connect(admin, None, &sources).map_err(|e| e.to_string())?;
    let a = c
        .call("GET", path, None, None, "")
        .and_then(|a| a.expect(200))
        .map_err(|e| format!("GET {path}: {e}"))?;
    Ok(a.body)
}

/// Waits up to 15 s until `GET /health` at `addr` (over TLS with `tls`) answers 200: the
/// gateway's broker link is up.
pub(crate) fn wait_healthy(addr: SocketAddr, tls: Option<&TlsClient>) -> Result<(), String> {
    let sources = SourcePool::new(addr, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match HttpConn::connect(addr, tls, &sources) {
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

    #[test]
    fn storm_farm_adds_gw_2_and_the_rdp_pool_and_keeps_the_rest() {
        let echo: Vec<SocketAddr> = vec!["127.0.0.1:40001".parse().unwrap()];
        let rdp: Vec<SocketAddr> = vec![
            "127.0.0.1:40011".parse().unwrap(),
            "127.0.0.1:40012".parse().unwrap(),
        ];
        let text = storm_farm_text(&echo, &rdp);
        let farm = gatehouse_control::broker::Farm::parse(&text).unwrap();
        assert_eq!(farm.hosts().len(), 3);
        assert!(farm.gateway(GATEWAY_2).is_some_and(|g| g.site == SITE));
        assert_eq!(farm.resources().len(), 2);
        assert_eq!(farm.pools().len(), 2);
        assert!(text.contains("hosts = [\"rdp-01\", \"rdp-02\"]"), "{text}");
        // Without the storm, the farm is the one of phases A and B.
        assert!(!farm_text(&echo).contains(GATEWAY_2));
        assert!(!farm_text(&echo).contains(STORM_RESOURCE));
    }

    #[test]
    fn halb_config_passes_tls_through_to_health_checked_gateways() {
        let c = halb_config(
            "127.0.0.1:4440".parse().unwrap(),
            "127.0.0.1:4441".parse().unwrap(),
            &[
                (GATEWAY, "127.0.0.1:4431".parse().unwrap()),
                (GATEWAY_2, "127.0.0.1:4432".parse().unwrap()),
            ],
            "least-connections",
            1,
            Path::new("/f"),
        );
        assert!(c.contains("tls = \"passthrough\""), "{c}");
        assert!(c.contains("check = \"http\", path = \"/health\""), "{c}");
        assert!(
            c.contains("{ name = \"gw-2\", address = \"127.0.0.1:4432\" }"),
            "{c}"
        );
        let gw = storm_gateway_config(
            GATEWAY_2,
            "127.0.0.1:4432".parse().unwrap(),
            "127.0.0.1:4433".parse().unwrap(),
            "127.0.0.1:20002".parse().unwrap(),
            1,
            Path::new("/f"),
        );
        assert!(gw.contains("[admin]\nlisten = \"127.0.0.1:4433\""), "{gw}");
        assert!(gw.contains("id = \"gw-2\"\nsite = \"site-1\""), "{gw}");
    }

    #[test]
    fn counters_are_read_from_metrics_and_backends() {
        let text = "# HELP gatehouse_gateway_answers_total x\n\
                    gatehouse_gateway_answers_total{endpoint=\"tunnel\",status=\"101\"} 7\n\
                    gatehouse_gateway_answers_total{endpoint=\"login\",status=\"200\"} 3\n\
                    gatehouse_gateway_answers_total{endpoint=\"login\"} 9\n\
                    gatehouse_gateway_answers_total{endpoint=\"launch\",status=\"200\"} x\n\
                    gatehouse_connections_total 40\n";
        let a = parse_answers(text);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!((a["tunnel_101"], a["login_200"]), (7, 3));
        let v = serde_json::json!({"generation": 1, "pools": [{"pool": "gateways", "backends": [
            {"name": "gw-1", "health": "up", "total": 5},
            {"name": "gw-2", "health": "down", "total": 0},
            {"health": "up"},
        ]}]});
        let b = parse_backends(&v);
        assert_eq!(b.len(), 2);
        assert!(b[0].up && !b[1].up && b[0].total == 5);
        assert!(parse_backends(&serde_json::json!("nonsense")).is_empty());
    }
}
