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
//! 5. figures against the direct path of the same run: ratios and added latency.
//!
//! Owns the scenario; the rig is [`rig`]'s, the API client [`client`]'s, the load [`load`]'s,
//! the report and its table [`report`]'s.

pub mod client;
pub mod load;
pub mod report;
pub mod rig;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use self::client::HttpConn;
use self::load::{OpenPhase, OpenTally, PathKind, PingParams, PingTally, Route};
use self::report::{add_open_ratios, latency_reports};
pub use self::report::{Added, LatencyPathReport, LaunchReport, OpenPathReport};
use self::rig::{Rig, RigParams};
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
        })
    }
}

/// Runs the scenario; `progress` gets a line per step.
pub fn run(p: &Params, progress: &mut dyn FnMut(&str)) -> Result<LaunchReport, BenchError> {
    p.check()?;
    let loadavg_start = loadavg();
    let mut rig = Rig::start(
        &RigParams {
            hosts: p.hosts,
            users: p.clients,
            gateway_workers: p.gateway_workers,
            gatehouse: p.gatehouse.clone(),
            dir: p.dir.clone(),
        },
        progress,
    )?;
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
    let setup = rig.setup.clone();
    drop(rig);
    add_open_ratios(&mut open_rate);
    let latency = latency_reports(&tallies);
    Ok(LaunchReport {
        schema: SCHEMA,
        scenario: "launch",
        parameters: p.to_json(),
        setup,
        open_rate,
        latency,
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            loadavg_start,
            loadavg_end: loadavg(),
        },
    })
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
