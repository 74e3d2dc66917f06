//! `launch`: the gateway benchmark of the gateway issue (issue 5), the `launch` scenario of
//! the bench issue (issue 7). Tunnel open rate once logged in (launch + tunnel + first
//! echo), and the latency a tunnel adds through one gateway and through a forwarding chain,
//! against a direct connection, all in one run on one rig.
//!
//! Steps:
//! 1. the rig ([`rig`]): farm directory, `gatehouse run` as broker, echo stand-in hosts and
//!    their stand-in agents, gw-1 (front listener `tls = "auto"` with its self-signed
//!    certificate; a second listener trusting PROXY v2 from 127.0.0.1) and fw-1 in front
//!    of that second listener;
//! 2. each client thread logs in once (`POST /api/v1/login` on gw-1, plain);
//! 3. phase A, per path (direct baseline, gateway, gateway-ssl, forwarder-ssl): the client
//!    threads loop launch + tunnel + one echo + close for the window ([`load::run_opens`]);
//! 4. phase B, per path: one tunnel held open, 64-byte ping-pong closed loop, then open loop
//!    at a fixed rate ([`load::ping_round`]);
//!
//! Both phases run in `rounds`: each round visits every path for its share of the window,
//! so a path is not favoured by when the shared machine happened to be quiet.
//! 5. figures against the direct path of the same run: ratios and added latency;
//! 6. phase C, the logon storm ([`storm`]): distinct users arrive open loop at the HALB
//!    (TLS passthrough to gw-1 and gw-2, health-checked), each logs in, lists resources,
//!    launches, opens its tunnel and holds an RDP-like session against RDP-like stand-ins,
//!    while direct sessions measure the baseline; time to desktop from the intended
//!    arrival, the per-step times, the HALB's spread, CPU per logon of each process
//!    ([`storm_report`]).
//!
//! Owns the scenario; the rig is [`rig`]'s, the API client [`client`]'s, the load [`load`]'s,
//! the report and its table [`report`]'s.

pub mod client;
pub mod load;
pub mod report;
pub mod rig;
pub mod storm;
pub mod storm_report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use self::client::HttpConn;
use self::load::{OpenPhase, OpenTally, PathKind, PingParams, PingTally, Route};
use self::report::{add_open_ratios, latency_reports};
pub use self::report::{Added, LatencyPathReport, LaunchReport, OpenPathReport};
use self::rig::{Rig, RigParams, StormRigParams};
use self::storm::{StormPlan, StormTargets};
pub use self::storm_report::StormReport;
use self::storm_report::{PasswordBound, StormCpu};
use crate::login_launch::farm::{self, Layout};
use crate::login_launch::{loadavg, Machine};
use crate::net::SourcePool;
use crate::procstat;
use crate::report::Percentiles;
use crate::tls::{TlsClient, TlsVersion, Verify};
use crate::BenchError;

/// Schema identifier of the report.
pub const SCHEMA: &str = "gatehouse-bench/launch-1";

/// Parameters of `launch`.
#[derive(Clone, Debug)]
pub struct Params {
    /// Echo stand-in hosts behind the gateway.
    pub hosts: usize,
    /// Client threads of phase A (each logs in once as its own user).
    pub clients: usize,
    /// Load before each measured window.
    pub warmup: Duration,
    /// Phase A's window per path.
    pub duration: Duration,
    /// Phase B's window per path and loop.
    pub latency_duration: Duration,
    /// Phase B's open-loop rate in messages per second (0: closed loop only).
    pub rate: f64,
    /// Phase B's message size.
    pub message: usize,
    /// Bytes echoed through each tunnel of phase A.
    pub payload: usize,
    /// Rounds over the paths (each gets `duration / rounds` per round).
    pub rounds: usize,
    /// TLS clients resume their sessions (each tunnel connection then skips the full
    /// handshake).
    pub tls_resume: bool,
    /// Client source addresses 127.0.0.1..=N.
    pub sources: usize,
    /// Worker threads of gw-1 and of fw-1.
    pub gateway_workers: usize,
    /// The gatehouse binary.
    pub gatehouse: PathBuf,
    /// Keep the farm in this directory instead of a temporary one.
    pub dir: Option<PathBuf>,
    /// Phase C: users of the logon storm (0: no storm, and no HALB or gw-2 in the rig).
    pub storm_users: usize,
    /// Phase C: arrivals per second (0: all at once).
    pub storm_rate: f64,
    /// Phase C: each session's hold after its desktop appeared.
    pub storm_hold: Duration,
    /// Phase C: input events per second per session.
    pub storm_event_rate: f64,
    /// Phase C: bytes per input event.
    pub storm_input: u32,
    /// Phase C: bytes of the update answering each event.
    pub storm_update: u32,
    /// Phase C: the HALB pool's algorithm (`least-connections` or `source-hash`).
    pub storm_algorithm: String,
    /// Phase C: source addresses 127.0.0.1..=N, one per user in rotation.
    pub storm_sources: usize,
    /// Phase C: direct sessions measuring the baseline during the storm.
    pub storm_baseline: usize,
    /// Phase C: RDP-like stand-in hosts.
    pub rdp_hosts: usize,
    /// Phase C: worker threads of the HALB.
    pub halb_workers: usize,
    /// Run phase C alone (phases A and B skipped).
    pub storm_only: bool,
}

impl Params {
    /// The run of the benchmark.
    pub fn full(gatehouse: PathBuf) -> Params {
        Params {
            hosts: 4,
            clients: 16,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            latency_duration: Duration::from_secs(10),
            rate: 2000.0,
            message: 64,
            payload: 64,
            rounds: 2,
            tls_resume: false,
            sources: 8,
            gateway_workers: 1,
            gatehouse,
            dir: None,
            storm_users: 400,
            storm_rate: 50.0,
            storm_hold: Duration::from_secs(10),
            storm_event_rate: 10.0,
            storm_input: 80,
            storm_update: 1200,
            storm_algorithm: "least-connections".into(),
            storm_sources: 254,
            storm_baseline: 4,
            rdp_hosts: 4,
            halb_workers: 1,
            storm_only: false,
        }
    }

    /// A run of a few seconds for the test suite.
    pub fn quick(gatehouse: PathBuf) -> Params {
        Params {
            hosts: 2,
            clients: 2,
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(1),
            latency_duration: Duration::from_millis(500),
            rate: 1000.0,
            rounds: 1,
            storm_users: 12,
            storm_rate: 40.0,
            storm_hold: Duration::from_secs(1),
            storm_baseline: 1,
            rdp_hosts: 2,
            ..Params::full(gatehouse)
        }
    }

    fn check(&self) -> Result<(), BenchError> {
        if !(1..=64).contains(&self.hosts)
            || !(1..=256).contains(&self.clients)
            || !(1..=100).contains(&self.rounds)
        {
            return Err(BenchError::Usage(
                "--hosts must be 1..=64, --clients 1..=256, --rounds 1..=100".into(),
            ));
        }
        if self.message < crate::scenario::rr_latency::MIN_MESSAGE || self.message > 65_536 {
            return Err(BenchError::Usage("--message must be 16..=65536 bytes".into()));
        }
        if self.payload == 0 || self.payload > 65_536 {
            return Err(BenchError::Usage("--payload must be 1..=65536 bytes".into()));
        }
        if !(self.rate.is_finite() && self.rate >= 0.0)
            || self.gateway_workers == 0
            || self.duration.is_zero()
        {
            return Err(BenchError::Usage(
                "--rate must be >= 0, --gateway-workers >= 1, --duration > 0".into(),
            ));
        }
        if self.storm_users > 4000
            || !(self.storm_rate.is_finite() && self.storm_rate >= 0.0)
            || !(self.storm_event_rate.is_finite()
                && self.storm_event_rate > 0.0
                && self.storm_event_rate <= 1000.0)
            || !(24..=4096).contains(&self.storm_input)
            || !(16..=1 << 20).contains(&self.storm_update)
            || !["least-connections", "source-hash"].contains(&self.storm_algorithm.as_str())
            || !(1..=64).contains(&self.rdp_hosts)
            || self.halb_workers == 0
            || self.storm_baseline > 64
        {
            return Err(BenchError::Usage(
                "--storm-users must be 0..=4000, --storm-rate >= 0, --storm-event-rate 0..=1000 (not 0), \
                 --storm-input 24..=4096, --storm-update 16..=1048576, --storm-balance least-connections or source-hash, \
                 --rdp-hosts 1..=64, --halb-workers >= 1, --storm-baseline <= 64"
                    .into(),
            ));
        }
        if self.storm_only && self.storm_users == 0 {
            return Err(BenchError::Usage("--storm-only needs --storm-users > 0".into()));
        }
        Ok(())
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "hosts": self.hosts,
            "clients": self.clients,
            "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.duration.as_secs_f64(),
            "latency_duration_s": self.latency_duration.as_secs_f64(),
            "rate": self.rate,
            "message": self.message,
            "payload": self.payload,
            "rounds": self.rounds,
            "tls_resume": self.tls_resume,
            "sources": self.sources,
            "gateway_workers": self.gateway_workers,
            "gatehouse": self.gatehouse.display().to_string(),
            "storm_users": self.storm_users,
            "storm_rate": self.storm_rate,
            "storm_hold_s": self.storm_hold.as_secs_f64(),
            "storm_event_rate": self.storm_event_rate,
            "storm_input": self.storm_input,
            "storm_update": self.storm_update,
            "storm_algorithm": self.storm_algorithm,
            "storm_sources": self.storm_sources,
            "storm_baseline": self.storm_baseline,
            "rdp_hosts": self.rdp_hosts,
            "halb_workers": self.halb_workers,
            "storm_only": self.storm_only,
        })
    }
}

/// Runs the scenario; `progress` gets a line per step.
pub fn run(p: &Params, progress: &mut dyn FnMut(&str)) -> Result<LaunchReport, BenchError> {
    p.check()?;
    let loadavg_start = loadavg();
    let storm_rig = (p.storm_users > 0).then(|| StormRigParams {
        rdp_hosts: p.rdp_hosts,
        users: p.storm_users,
        algorithm: p.storm_algorithm.clone(),
        halb_workers: p.halb_workers,
    });
    let mut rig = Rig::start_with_storm(
        &RigParams {
            hosts: p.hosts,
            users: p.clients,
            gateway_workers: p.gateway_workers,
            gatehouse: p.gatehouse.clone(),
            dir: p.dir.clone(),
        },
        storm_rig.as_ref(),
        progress,
    )?;
    let (open_rate, latency) = if p.storm_only {
        (Vec::new(), Vec::new())
    } else {
        phases_a_b(p, &mut rig, progress)?
    };
    let storm = if p.storm_users > 0 {
        Some(phase_c(p, &mut rig, progress)?)
    } else {
        None
    };
    let setup = rig.setup.clone();
    drop(rig);
    Ok(LaunchReport {
        schema: SCHEMA,
        scenario: "launch",
        parameters: p.to_json(),
        setup,
        open_rate,
        latency,
        storm,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            loadavg_start,
            loadavg_end: loadavg(),
        },
    })
}

/// Phases A and B: their reports, ratios against `direct` filled in.
fn phases_a_b(
    p: &Params,
    rig: &mut Rig,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<OpenPathReport>, Vec<LatencyPathReport>), BenchError> {
    let front = rig.gateway_addrs.front;
    let sources = SourcePool::new(front, p.sources);
    let tokens = login_all(front, p.clients, &sources)?;
    progress(&format!("{} clients logged in", tokens.len()));

    let tls = TlsClient::new(
        &Verify::Insecure,
        "gateway.bench",
        TlsVersion::Tls13,
        p.tls_resume,
    )?;
    let routes = [
        Route {
            kind: PathKind::Direct,
            addr: rig.hosts[0].local_addr(),
            tls: None,
        },
        Route {
            kind: PathKind::Gateway,
            addr: front,
            tls: None,
        },
        Route {
            kind: PathKind::GatewaySsl,
            addr: front,
            tls: Some(tls.clone()),
        },
        Route {
            kind: PathKind::ForwarderSsl,
            addr: rig.forwarder_addr,
            tls: Some(tls),
        },
    ];
    let pids = [
        (farm::BROKER_NODE.to_string(), rig.broker.pid()),
        (rig.gateway.name().to_string(), rig.gateway.pid()),
        (rig.forwarder.name().to_string(), rig.forwarder.pid()),
    ];

    let share = |d: Duration| d / p.rounds as u32;
    let mut open_tallies: Vec<(OpenTally, Vec<f64>)> = routes
        .iter()
        .map(|_| (OpenTally::new(), vec![0.0; pids.len()]))
        .collect();
    for round in 0..p.rounds {
        for (route, (total, cpu_total)) in routes.iter().zip(open_tallies.iter_mut()) {
            let phase = OpenPhase {
                route,
                tokens: &tokens,
                resource: rig::RESOURCE,
                warmup: p.warmup,
                duration: share(p.duration),
                payload: p.payload,
                sources: &sources,
            };
            let mut cpu = vec![(0.0, 0.0); pids.len()];
            let tally = load::run_opens(&phase, &mut |opening| {
                for (i, (_, pid)) in pids.iter().enumerate() {
                    let s = procstat::sample(*pid).map_or(0.0, |s| s.cpu_s);
                    if opening {
                        cpu[i].0 = s;
                    } else {
                        cpu[i].1 = s;
                    }
                }
            });
            if let Some(dead) = rig.dead_process() {
                return Err(BenchError::TargetDead {
                    target: route.addr,
                    reason: dead,
                });
            }
            if tally.opens == 0 {
                return Err(BenchError::NoProgress {
                    target: route.addr,
                    detail: format!(
                        "{}: no tunnel opened; errors {:?}; first: {}",
                        route.kind.name(),
                        tally.errors,
                        tally.first_error.as_deref().unwrap_or("none")
                    ),
                });
            }
            progress(&format!(
                "round {}/{} open rate {}: {:.1}/s, p50 {:.0} us, {} errors",
                round + 1,
                p.rounds,
                route.kind.name(),
                tally.opens as f64 / share(p.duration).as_secs_f64(),
                tally.total_ns.value_at_quantile(0.5) as f64 / 1e3,
                tally.error_count()
            ));
            for (c, (a, b)) in cpu_total.iter_mut().zip(cpu) {
                *c += (b - a).max(0.0);
            }
            total.merge(tally);
        }
    }
    let mut open_rate: Vec<OpenPathReport> = routes
        .iter()
        .zip(&open_tallies)
        .map(|(route, (tally, cpu))| {
            let cpu_s: Vec<(String, f64)> = pids.iter().zip(cpu).map(|((n, _), c)| (n.clone(), *c)).collect();
            open_report(route, tally, share(p.duration) * p.rounds as u32, &cpu_s)
        })
        .collect();

    let ping = PingParams {
        message: p.message,
        warmup: p.warmup.min(Duration::from_millis(500)),
        duration: share(p.latency_duration),
        rate: p.rate,
    };
    let mut tunnels = Vec::new();
    for route in &routes {
        tunnels.push(hold_tunnel(route, &tokens[0], &sources)?);
    }
    let mut tallies: Vec<(PathKind, PingTally)> = routes
        .iter()
        .map(|r| (r.kind, PingTally::new(p.rate > 0.0)))
        .collect();
    for round in 0..p.rounds {
        for ((route, tunnel), (_, tally)) in routes.iter().zip(tunnels.iter_mut()).zip(tallies.iter_mut()) {
            load::ping_round(tunnel, &ping, tally).map_err(|e| BenchError::NoProgress {
                target: route.addr,
                detail: format!("{}: ping-pong: {e}", route.kind.name()),
            })?;
            progress(&format!(
                "round {}/{} latency {} (rounds so far): closed-loop p50 {:.1} us{}",
                round + 1,
                p.rounds,
                route.kind.name(),
                tally.closed_ns.value_at_quantile(0.5) as f64 / 1e3,
                tally.open_ns.as_ref().map_or(String::new(), |h| format!(
                    ", open-loop p50 {:.1} us",
                    h.value_at_quantile(0.5) as f64 / 1e3
                ))
            ));
        }
    }
    for t in tunnels {
        t.close();
    }
    if let Some(dead) = rig.dead_process() {
        return Err(BenchError::TargetDead {
            target: front,
            reason: dead,
        });
    }
    add_open_ratios(&mut open_rate);
    Ok((open_rate, latency_reports(&tallies)))
}

/// Each gateway's answers by `endpoint_status`, and the HALB's connections per gateway.
type Counters = (Vec<BTreeMap<String, u64>>, BTreeMap<String, u64>);

/// Phase C, the logon storm through the HALB ([`storm`]).
fn phase_c(p: &Params, rig: &mut Rig, progress: &mut dyn FnMut(&str)) -> Result<StormReport, BenchError> {
    let nodes = rig
        .storm
        .as_ref()
        .ok_or_else(|| BenchError::Usage("the rig was built without the storm's nodes".into()))?;
    let halb = nodes.halb_addr;
    let gateway_names: Vec<String> = nodes.gateway_admins.iter().map(|(n, _)| n.clone()).collect();
    let read_counters = |nodes: &rig::StormNodes| -> Result<Counters, BenchError> {
        let answers = nodes
            .gateway_admins
            .iter()
            .map(|(name, admin)| {
                rig::gateway_answers(*admin).map_err(|e| BenchError::NoProgress {
                    target: *admin,
                    detail: format!("{name} metrics: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let halb_conns = rig::halb_backends(nodes.halb_admin)
            .map_err(|e| BenchError::NoProgress {
                target: nodes.halb_admin,
                detail: format!("{} backends: {e}", rig::HALB),
            })?
            .into_iter()
            .map(|b| (b.name, b.total))
            .collect();
        Ok((answers, halb_conns))
    };
    let (answers_before, halb_before) = read_counters(nodes)?;
    let pids = [
        (rig::HALB.to_string(), nodes.halb.pid()),
        (rig::GATEWAY.to_string(), rig.gateway.pid()),
        (rig::GATEWAY_2.to_string(), nodes.gateway_2.pid()),
        (farm::BROKER_NODE.to_string(), rig.broker.pid()),
    ];
    let me = std::process::id();
    let plan = StormPlan {
        users: p.storm_users,
        arrival_rate: p.storm_rate,
        hold: p.storm_hold,
        event_rate: p.storm_event_rate,
        input_bytes: p.storm_input,
        update_bytes: p.storm_update,
        sources: p.storm_sources,
        baseline_sessions: p.storm_baseline,
    };
    let tls = TlsClient::new(&Verify::Insecure, "gateway.bench", TlsVersion::Tls13, false)?;
    let password = farm::password(0);
    let credentials = |u: usize| (Layout::user(u), password.clone());
    let targets = StormTargets {
        halb,
        tls: &tls,
        resource: rig::STORM_RESOURCE,
        direct: nodes.hosts[0].local_addr(),
        credentials: &credentials,
    };
    progress(&format!(
        "storm: {} users at {} through {} ({})",
        plan.users,
        if plan.arrival_rate > 0.0 {
            format!("{}/s", plan.arrival_rate)
        } else {
            "once".into()
        },
        rig::HALB,
        p.storm_algorithm
    ));
    let cpu_now = || -> Vec<f64> {
        pids.iter()
            .map(|(_, pid)| *pid)
            .chain([me])
            .map(|pid| procstat::sample(pid).map_or(0.0, |s| s.cpu_s))
            .collect()
    };
    let mut cpu_marks: Vec<Vec<f64>> = Vec::new();
    let tally = storm::run(&plan, &targets, &mut |_| cpu_marks.push(cpu_now()), progress);
    let one_hash_ms = nodes.one_hash_ms;
    if let Some(dead) = rig.dead_process() {
        return Err(BenchError::TargetDead {
            target: halb,
            reason: dead,
        });
    }
    let nodes = rig
        .storm
        .as_ref()
        .ok_or_else(|| BenchError::Usage("the rig lost the storm's nodes".into()))?;
    let (answers_after, halb_after) = read_counters(nodes)?;
    if tally.logged_on == 0 || tally.desktops == 0 {
        return Err(BenchError::NoProgress {
            target: halb,
            detail: format!(
                "storm: {} of {} users logged on, {} desktops; failures {:?}; first: {}",
                tally.logged_on,
                plan.users,
                tally.desktops,
                tally.failures,
                tally.first_failure.as_deref().unwrap_or("none")
            ),
        });
    }
    let mut cpu = StormCpu::default();
    if let [start, end] = cpu_marks.as_slice() {
        let used: Vec<f64> = start.iter().zip(end).map(|(a, b)| (b - a).max(0.0)).collect();
        cpu.processes = pids
            .iter()
            .zip(&used)
            .map(|((n, _), c)| (n.clone(), *c))
            .collect();
        cpu.client_s = used.last().copied();
    }
    let per_gateway = storm_report::spread(
        &gateway_names,
        &answers_before,
        &answers_after,
        &halb_before,
        &halb_after,
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = storm_report::storm_report(
        &plan,
        &p.storm_algorithm,
        &tally,
        per_gateway,
        &cpu,
        PasswordBound::new(one_hash_ms, rig::HASH_THREADS, cpus),
    );
    progress(&format!(
        "storm: {} of {} users at their desktop, time to desktop p50 {:.0} ms, {} failed",
        report.desktops,
        report.users,
        report.time_to_desktop_us.map_or(0.0, |t| t.p50 / 1e3),
        report.failed
    ));
    Ok(report)
}

/// One login per client thread, as user 1..=clients (all with user 1's password: one hash).
fn login_all(
    front: std::net::SocketAddr,
    clients: usize,
    sources: &SourcePool,
) -> Result<Vec<String>, BenchError> {
    let password = farm::password(0);
    let mut conn = HttpConn::connect(front, None, sources).map_err(|e| BenchError::TargetDead {
        target: front,
        reason: e.to_string(),
    })?;
    (0..clients)
        .map(|c| {
            conn.login(&Layout::user(c), &password)
                .map_err(|e| BenchError::NoProgress {
                    target: front,
                    detail: format!("login of {}: {e}", Layout::user(c)),
                })
        })
        .collect()
}

/// Phase B's tunnel on `route` (a plain connection to the stand-in for `direct`).
fn hold_tunnel(route: &Route, token: &str, sources: &SourcePool) -> Result<client::Tunnel, BenchError> {
    let failed = |e: String| BenchError::NoProgress {
        target: route.addr,
        detail: format!("{}: holding a tunnel: {e}", route.kind.name()),
    };
    if route.kind == PathKind::Direct {
        let s =
            client::ClientStream::connect(route.addr, None, sources).map_err(|e| failed(e.to_string()))?;
        return Ok(client::Tunnel::direct(s));
    }
    let mut api =
        HttpConn::connect(route.addr, route.tls.as_ref(), sources).map_err(|e| failed(e.to_string()))?;
    let ticket = api
        .launch(token, rig::RESOURCE)
        .map_err(|e| failed(e.to_string()))?;
    client::tunnel(route.addr, route.tls.as_ref(), sources, token, &ticket).map_err(|e| failed(e.to_string()))
}

fn open_report(route: &Route, t: &OpenTally, window: Duration, cpu_s: &[(String, f64)]) -> OpenPathReport {
    let elapsed_s = window.as_secs_f64();
    OpenPathReport {
        path: route.kind,
        target: route.addr.to_string(),
        elapsed_s,
        opens: t.opens,
        opens_per_s: t.opens as f64 / elapsed_s,
        errors: t.error_count(),
        error_reasons: t.errors.clone(),
        first_error: t.first_error.clone(),
        latency_us: Percentiles::from_histogram(&t.total_ns),
        launch_latency_us: Percentiles::from_histogram(&t.launch_ns),
        tunnel_latency_us: Percentiles::from_histogram(&t.tunnel_ns),
        cpu_us_per_open: cpu_s
            .iter()
            .filter(|_| t.opens > 0)
            .map(|(name, s)| (name.clone(), s * 1e6 / t.opens as f64))
            .collect(),
        rate_vs_direct: None,
        p50_vs_direct: None,
        p99_vs_direct: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_ratios_divide_by_the_direct_path() {
        let route = |kind| Route {
            kind,
            addr: "127.0.0.1:1".parse().unwrap(),
            tls: None,
        };
        let mut direct = OpenTally::new();
        for _ in 0..100 {
            direct.total_ns.record(100_000).unwrap();
        }
        direct.opens = 100;
        let mut gw = OpenTally::new();
        for _ in 0..25 {
            gw.total_ns.record(400_000).unwrap();
        }
        gw.opens = 25;
        let cpu = [("gw-1".to_string(), 0.5)];
        let mut rs = vec![
            open_report(&route(PathKind::Direct), &direct, Duration::from_secs(1), &cpu),
            open_report(&route(PathKind::Gateway), &gw, Duration::from_secs(1), &cpu),
        ];
        add_open_ratios(&mut rs);
        assert_eq!(rs[0].rate_vs_direct, Some(1.0));
        assert_eq!(rs[1].rate_vs_direct, Some(0.25));
        assert!((rs[1].p50_vs_direct.unwrap() - 4.0).abs() < 0.01);
        assert_eq!(rs[1].cpu_us_per_open["gw-1"], 20_000.0);
        let json = serde_json::to_value(&rs[1]).unwrap();
        assert_eq!(json["path"], "gateway");
    }

    #[test]
    fn bad_parameters_are_refused_before_anything_starts() {
        let base = Params::quick(PathBuf::from("/nonexistent/gatehouse"));
        for bad in [
            Params {
                clients: 0,
                ..base.clone()
            },
            Params {
                message: 8,
                ..base.clone()
            },
            Params {
                rate: f64::NAN,
                ..base.clone()
            },
            Params {
                gateway_workers: 0,
                ..base.clone()
            },
            Params {
                storm_algorithm: "random".into(),
                ..base.clone()
            },
            Params {
                storm_input: 8,
                ..base.clone()
            },
            Params {
                storm_users: 0,
                storm_only: true,
                ..base.clone()
            },
        ] {
            assert!(
                matches!(run(&bad, &mut |_| {}), Err(BenchError::Usage(_))),
                "{bad:?}"
            );
        }
        // Good parameters but no binary: a usage error naming the path.
        let e = run(&base, &mut |_| {}).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/gatehouse"), "{e}");
    }
}
