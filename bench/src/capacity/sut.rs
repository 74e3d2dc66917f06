//! The systems under test that `capacity` starts itself, for the TLS modes.
//!
//! - `halb-passthrough`: RDP stand-ins terminating TLS (a throw-away certificate made here
//!   with rcgen), and `gatehouse run` as a HALB whose one listener has `tls = "passthrough"`
//!   over a least-connections pool of them. TLS runs end to end, client to stand-in.
//! - `gateway-ssl`: the farm of `launch` (farm directory, broker-1, stand-in host agents,
//!   gw-1 with its `tls = "auto"` front listener and the farm's certificate), with plain RDP
//!   stand-ins as the session hosts, and one TLS stand-in for the direct baseline. Clients
//!   log in once (one user per API thread); tickets are launched before each run.
//!
//! In both, the process under test (the HALB or gw-1) runs one worker and is pinned to
//! `target_cpu`; everything else stays where this process runs. Owns the start, the ticket
//! launches and the teardown (drop order); reuses the farm plumbing of `login_launch` and
//! `launch` read-only, and measures nothing.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConfig;

use super::{Mode, PathSpec, SystemUnderTest};
use crate::launch::client::{ClientError, HttpConn};
use crate::launch::rig::{self, GatewayAddrs};
use crate::login_launch::farm::{
    self, free_loopback_addr, BrokerProcess, FarmDir, HostLoad, Layout, NodeProcess,
};
use crate::login_launch::load::Agents;
use crate::net::SourcePool;
use crate::scenario::rdp_profile::TunnelTicket;
use crate::standin::{Kind, StandIn, StandInHandle};
use crate::tls::{TlsClient, TlsVersion, Verify};
use crate::BenchError;

/// The name in the stand-ins' certificate (and the clients' SNI).
pub const STANDIN_NAME: &str = "standin.bench";
/// SNI sent to the gateway.
pub const GATEWAY_NAME: &str = "gateway.bench";
/// Tickets live this long in the generated farm: long enough for the launches of a large
/// step and its stagger (the default 30 s is not).
pub const TICKET_LIFETIME: &str = "10m";

/// How to build the system under test.
#[derive(Clone, Debug)]
pub struct SutParams {
    /// `HalbPassthrough` or `GatewaySsl`.
    pub mode: Mode,
    /// The gatehouse binary.
    pub gatehouse: PathBuf,
    /// Stand-in session hosts behind the target.
    pub hosts: usize,
    /// Pin the process under test to this CPU.
    pub target_cpu: Option<usize>,
    /// Threads (and users, and API connections) that launch tickets.
    pub api_threads: usize,
    /// Keep the farm here instead of a temporary directory.
    pub dir: Option<PathBuf>,
}

/// A running system under test; stopped on drop (the process under test first).
pub struct Sut {
    /// Where sessions go.
    pub target: SocketAddr,
    /// The TLS stand-in of the direct baseline.
    pub direct: SocketAddr,
    /// The process under test.
    pub pid: u32,
    /// How sessions reach the target.
    pub target_path: PathSpec,
    /// How sessions reach the baseline.
    pub direct_path: PathSpec,
    kind: SutKind,
    hosts: Vec<StandInHandle>,
    _baseline: Option<StandInHandle>,
    dir: FarmDir,
}

enum SutKind {
    Halb { node: NodeProcess },
    Gateway(Box<GatewayParts>),
}

/// The gateway farm, dropped in field order: gw-1 first.
struct GatewayParts {
    gateway: NodeProcess,
    api: Vec<ApiClient>,
    _agents: Agents,
    broker: BrokerProcess,
    sources: SourcePool,
    tls: TlsClient,
}

/// One logged-in API connection of the ticket launcher.
struct ApiClient {
    token: String,
    conn: Option<HttpConn>,
}

impl Sut {
    /// Builds and starts the system of `p.mode`; `progress` gets a line per stage.
    pub fn start(p: &SutParams, progress: &mut dyn FnMut(&str)) -> Result<Sut, BenchError> {
        let dir = FarmDir::with_prefix(p.dir.as_deref(), &p.gatehouse, "gatehouse-capacity.")?;
        let tls_config = standin_tls(&dir)?;
        let direct_path = PathSpec::Tls {
            ca_file: Some(dir.file("standin.pem")),
            server_name: STANDIN_NAME.into(),
        };
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        match p.mode {
            Mode::L4 => Err(BenchError::Usage(
                "capacity: l4 measures a target started by the caller (--target)".into(),
            )),
            Mode::HalbPassthrough => {
                let hosts = (0..p.hosts.max(1))
                    .map(|_| {
                        StandIn::bind(Kind::Rdp, loopback)
                            .map_err(|e| BenchError::Usage(format!("rdp stand-in: {e}")))?
                            .with_tls(tls_config.clone())
                            .map(StandIn::spawn)
                            .map_err(BenchError::Usage)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let addrs: Vec<SocketAddr> = hosts.iter().map(StandInHandle::local_addr).collect();
                let listen = free_loopback_addr()?;
                let text = halb_config(listen, &addrs, &dir.file_text("halb-state"));
                let node = dir.start_node("halb-1", &text, listen)?;
                let pid = node.pid();
                pin(pid, p.target_cpu)?;
                progress(&format!(
                    "HALB (pid {pid}) passthrough on {listen} over {} TLS rdp stand-ins; farm dir {}",
                    addrs.len(),
                    dir.path().display()
                ));
                Ok(Sut {
                    target: listen,
                    direct: addrs[0],
                    pid,
                    target_path: direct_path.clone(),
                    direct_path,
                    kind: SutKind::Halb { node },
                    hosts,
                    _baseline: None,
                    dir,
                })
            }
            Mode::GatewaySsl => start_gateway(p, dir, tls_config, direct_path, progress),
        }
    }

    /// What was started, for the report's parameters.
    pub fn describe(&self) -> serde_json::Value {
        let (what, config) = match &self.kind {
            SutKind::Halb { .. } => (
                "gatehouse HALB, one listener tls = \"passthrough\"",
                "halb-1.toml",
            ),
            SutKind::Gateway(_) => (
                "gatehouse gateway gw-1 (front listener tls = \"auto\"), broker-1, stand-in host agents",
                "gw-1.toml",
            ),
        };
        serde_json::json!({
            "what": what,
            "pid": self.pid,
            "hosts": self.hosts.iter().map(|h| h.local_addr().to_string()).collect::<Vec<_>>(),
            "config": std::fs::read_to_string(self.dir.file(config)).unwrap_or_default(),
        })
    }
}

impl SystemUnderTest for Sut {
    fn tickets(&mut self, n: usize, progress: &mut dyn FnMut(&str)) -> Result<Vec<TunnelTicket>, BenchError> {
        let SutKind::Gateway(parts) = &mut self.kind else {
            return Ok(Vec::new());
        };
        let GatewayParts {
            api, sources, tls, ..
        } = &mut **parts;
        let (front, t) = (self.target, Instant::now());
        let threads = api.len().max(1);
        let per_thread: Vec<Result<Vec<TunnelTicket>, BenchError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = api
                .iter_mut()
                .enumerate()
                .map(|(k, client)| {
                    let count = (k..n).step_by(threads).count();
                    let (sources, tls) = (&*sources, &*tls);
                    scope.spawn(move || client.launch_many(count, front, tls, sources))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(BenchError::Usage("a launch thread panicked".into())))
                })
                .collect()
        });
        let mut lists = Vec::new();
        for r in per_thread {
            lists.push(r?.into_iter());
        }
        // Session i's ticket comes from thread i % threads.
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let next = lists[i % threads].next();
            out.push(next.ok_or_else(|| BenchError::Usage("a launch thread lost a ticket".into()))?);
        }
        progress(&format!(
            "capacity: launched {n} tunnel tickets in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        Ok(out)
    }

    fn host_connections(&self) -> u64 {
        self.hosts.iter().map(StandInHandle::connections).sum()
    }

    fn dead_process(&mut self) -> Option<String> {
        match &mut self.kind {
            SutKind::Halb { node } => {
                (!node.alive()).then(|| format!("the HALB exited: {}", node.log_tail()))
            }
            SutKind::Gateway(parts) => {
                let GatewayParts { gateway, broker, .. } = &mut **parts;
                if !gateway.alive() {
                    Some(format!("gw-1 exited: {}", gateway.log_tail()))
                } else if !broker.alive() {
                    Some(format!("the broker exited: {}", broker.log_tail()))
                } else {
                    None
                }
            }
        }
    }
}

impl ApiClient {
    /// `count` launches of the bench desktop on a kept-alive connection, reopened when the
    /// gateway closed it (it closes idle API connections between steps, without a word).
    fn launch_many(
        &mut self,
        count: usize,
        front: SocketAddr,
        tls: &TlsClient,
        sources: &SourcePool,
    ) -> Result<Vec<TunnelTicket>, BenchError> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let reused = matches!(&self.conn, Some(c) if !c.is_closed());
            let conn = match &mut self.conn {
                Some(c) if reused => c,
                _ => self
                    .conn
                    .insert(HttpConn::connect(front, Some(tls), sources).map_err(|e| {
                        BenchError::TargetDead {
                            target: front,
                            reason: format!("API connection: {e}"),
                        }
                    })?),
            };
            match conn.launch(&self.token, rig::RESOURCE) {
                Ok(ticket) => out.push(TunnelTicket {
                    token: self.token.clone(),
                    ticket,
                }),
                // A kept-alive connection the gateway dropped: once more on a new one.
                Err(ClientError::Io(_)) if reused => self.conn = None,
                Err(e) => {
                    return Err(BenchError::NoProgress {
                        target: front,
                        detail: format!("launch {} of {count}: {e}", out.len() + 1),
                    })
                }
            }
        }
        Ok(out)
    }
}

fn start_gateway(
    p: &SutParams,
    dir: FarmDir,
    tls_config: Arc<ServerConfig>,
    direct_path: PathSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<Sut, BenchError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let hosts = (0..p.hosts.max(1))
        .map(|_| {
            StandIn::bind(Kind::Rdp, loopback)
                .map(StandIn::spawn)
                .map_err(|e| BenchError::Usage(format!("rdp stand-in: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let baseline = StandIn::bind(Kind::Rdp, loopback)
        .map_err(|e| BenchError::Usage(format!("rdp stand-in: {e}")))?
        .with_tls(tls_config)
        .map_err(BenchError::Usage)?
        .spawn();
    let host_addrs: Vec<SocketAddr> = hosts.iter().map(StandInHandle::local_addr).collect();
    dir.init_ca()?;
    dir.issue(farm::BROKER_NODE, "broker")?;
    dir.issue(rig::GATEWAY, "gateway")?;
    for h in 0..hosts.len() {
        dir.issue(&rig::host_name(h), "host-agent")?;
    }
    let mut farm_text = rig::farm_text(&host_addrs);
    let _ = write!(farm_text, "\n[launch]\nticket_lifetime = \"{TICKET_LIFETIME}\"\n");
    dir.write_farm(&farm_text)?;
    let users = p.api_threads.max(1);
    // One hash shared by every user: each has user 0's password (farm::password(0)).
    let (hashes, _) = farm::make_hashes(users, 1, 1)?;
    dir.write_users(users, &hashes)?;
    let mut broker = dir.start_broker(1)?;
    let loads = (0..hosts.len())
        .map(|h| HostLoad {
            host: rig::host_name(h),
            cpu_percent: 10,
            mem_percent: 30,
            sessions: Vec::new(),
        })
        .collect();
    let agents = Agents::start(broker.agent_addr, dir.path(), &dir.ca_file(), loads)
        .map_err(|e| BenchError::Usage(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while agents.reporting() < hosts.len() {
        if Instant::now() >= deadline || !broker.alive() {
            return Err(BenchError::NoProgress {
                target: broker.agent_addr,
                detail: format!(
                    "{} of {} hosts reporting: {} {}",
                    agents.reporting(),
                    hosts.len(),
                    agents.first_error.take(),
                    broker.log_tail()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let addrs = GatewayAddrs {
        front: free_loopback_addr()?,
        from_forwarder: free_loopback_addr()?,
    };
    // The node-wide connection cap (default 9,000) would stop the ramp before the open-files
    // limit does; the capacity ramp is bounded by the latter.
    let text = rig::gateway_config(addrs, broker.gateway_addr, 1, dir.path()).replacen(
        "[node]\n",
        "[node]\nmax_connections = 1000000\n",
        1,
    );
    let mut gateway = dir.start_node(rig::GATEWAY, &text, addrs.front)?;
    let pid = gateway.pid();
    pin(pid, p.target_cpu)?;
    let sources = SourcePool::new(addrs.front, 8);
    let tls = TlsClient::new(&Verify::Insecure, GATEWAY_NAME, TlsVersion::Tls13, false)?;
    crate::launch::rig::wait_healthy(addrs.front, Some(&tls)).map_err(|detail| BenchError::NoProgress {
        target: addrs.front,
        detail: format!("gw-1: {detail}: {}", gateway.log_tail()),
    })?;
    let mut api = Vec::with_capacity(users);
    for u in 0..users {
        let mut conn =
            HttpConn::connect(addrs.front, Some(&tls), &sources).map_err(|e| BenchError::TargetDead {
                target: addrs.front,
                reason: format!("API connection: {e}"),
            })?;
        let token = conn
            .login(&Layout::user(u), &farm::password(0))
            .map_err(|e| BenchError::NoProgress {
                target: addrs.front,
                detail: format!("login of {}: {e}: {}", Layout::user(u), gateway.log_tail()),
            })?;
        api.push(ApiClient {
            token,
            conn: Some(conn),
        });
    }
    if !gateway.alive() {
        return Err(BenchError::TargetDead {
            target: addrs.front,
            reason: format!("gw-1 exited: {}", gateway.log_tail()),
        });
    }
    progress(&format!(
        "gw-1 (pid {pid}) on {} in front of {} rdp stand-in hosts; {users} users logged in; farm dir {}",
        addrs.front,
        hosts.len(),
        dir.path().display()
    ));
    Ok(Sut {
        target: addrs.front,
        direct: baseline.local_addr(),
        pid,
        target_path: PathSpec::Tunnel {
            server_name: GATEWAY_NAME.into(),
        },
        direct_path,
        kind: SutKind::Gateway(Box::new(GatewayParts {
            gateway,
            api,
            _agents: agents,
            broker,
            sources,
            tls,
        })),
        hosts,
        _baseline: Some(baseline),
        dir,
    })
}

/// The passthrough HALB's config: one worker, one listener, the stand-ins as a pool.
pub fn halb_config(listen: SocketAddr, hosts: &[SocketAddr], state_dir: &str) -> String {
    let mut t = format!(
        "[node]\nname = \"halb-1\"\nworkers = 1\nlog_level = \"warn\"\nmax_connections = 1000000\n\
         state_dir = \"{state_dir}\"\n\n[halb]\n\
         [[halb.listener]]\nname = \"rdp-tls\"\nbind = \"{listen}\"\npool = \"hosts\"\ntls = \"passthrough\"\n\
         idle_timeout = \"8h\"\n\n\
         [[halb.pool]]\nname = \"hosts\"\nalgorithm = \"least-connections\"\nbackends = [\n"
    );
    for (i, h) in hosts.iter().enumerate() {
        let _ = writeln!(t, "  {{ name = \"host-{}\", address = \"{h}\" }},", i + 1);
    }
    t.push_str("]\n");
    t
}

/// A self-signed certificate for [`STANDIN_NAME`] (written to `standin.pem` for the
/// clients to trust) and the stand-ins' TLS config.
fn standin_tls(dir: &FarmDir) -> Result<Arc<ServerConfig>, BenchError> {
    let (config, pem) = crate::tls::self_signed_server(STANDIN_NAME)?;
    dir.write("standin.pem", &pem)?;
    Ok(config)
}

/// Pins every thread of `pid` to `cpu` (threads it starts later inherit the mask).
fn pin(pid: u32, cpu: Option<usize>) -> Result<(), BenchError> {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| BenchError::Process(format!("pid {pid}: threads: {e}")))?;
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(BenchError::Usage(format!("--target-cpu {cpu}: out of range")));
        }
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it (cpu was
        // checked against its size) and sched_setaffinity reads it.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            return Err(BenchError::Process(format!(
                "pinning pid {pid} thread {tid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halb_config_lists_every_stand_in_behind_a_passthrough_listener() {
        let hosts: Vec<SocketAddr> = vec![
            "127.0.0.1:4001".parse().unwrap(),
            "127.0.0.1:4002".parse().unwrap(),
        ];
        let t = halb_config("127.0.0.1:3389".parse().unwrap(), &hosts, "/s");
        assert!(t.contains("tls = \"passthrough\""), "{t}");
        assert!(t.contains("bind = \"127.0.0.1:3389\""), "{t}");
        assert!(
            t.contains("{ name = \"host-2\", address = \"127.0.0.1:4002\" }"),
            "{t}"
        );
        assert!(t.contains("workers = 1\n"), "{t}");
    }

    #[test]
    fn pinning_this_process_to_a_cpu_it_may_use_works() {
        // CPU 0 exists on every machine; restore the mask afterwards.
        // SAFETY: valid cpu_set_t buffers for sched_getaffinity / sched_setaffinity.
        let mut before: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut before) }, 0);
        if !unsafe { libc::CPU_ISSET(0, &before) } {
            return;
        }
        let child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let mut child = child;
        pin(child.id(), Some(0)).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let allowed = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list"))
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .to_string();
        assert_eq!(allowed, "0");
        assert!(pin(1, None).is_ok(), "no CPU asked: nothing done");
    }
}
