//! `tls-handshake`: TLS connections (connect, handshake, one echo of `payload` bytes,
//! close_notify, close) from `concurrency` workers against an Echo stand-in behind a
//! TLS-terminating proxy; full handshakes, or resumed ones (each worker keeps a session
//! cache: one full handshake in the warm-up, then every handshake resumes).
//!
//! Closed loop by default (each worker starts the next connection when the last ended);
//! with `rate`, open loop: each worker starts connections at its share of the rate and the
//! latency counts from the intended start (no coordinated omission). With `--pid`, the CPU
//! per connection is the proxy's CPU per handshake.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rustls::HandshakeKind;
use serde_json::json;

use super::{finish, gather, Common, ConnTally, FirstError};
use crate::net::{probe, SourcePool};
use crate::report::{Percentiles, Report, Results};
use crate::tls::{TlsClient, TlsVersion, Verify};
use crate::BenchError;

/// Full or resumed handshakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// No session cache: every handshake is full.
    Full,
    /// Every handshake after the first of each worker resumes.
    Resumed,
}

/// Parameters of `tls-handshake`.
#[derive(Clone, Debug)]
pub struct Params {
    /// Handshakes in the measured window.
    pub connections: u64,
    /// Workers connecting at once.
    pub concurrency: usize,
    /// Bytes echoed on each connection.
    pub payload: usize,
    /// Full or resumed.
    pub mode: Mode,
    /// TLS version offered.
    pub version: TlsVersion,
    /// Certificate check.
    pub verify: Verify,
    /// SNI and verified name.
    pub server_name: String,
    /// Open loop at this many handshakes per second (all workers together).
    pub rate: Option<f64>,
}

/// Runs the scenario.
pub fn run(common: &Common, p: &Params) -> Result<Report, BenchError> {
    if p.concurrency == 0 || p.payload == 0 {
        return Err(BenchError::Usage(
            "--concurrency and --payload must be at least 1".into(),
        ));
    }
    if p.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(BenchError::Usage("--rate must be a positive number".into()));
    }
    probe(common.target)?;
    // One client per worker: a worker's session cache resumes only its own sessions.
    let clients: Vec<TlsClient> = (0..p.concurrency)
        .map(|_| TlsClient::new(&p.verify, &p.server_name, p.version, p.mode == Mode::Resumed))
        .collect::<Result<_, _>>()?;
    let sources = Arc::new(SourcePool::new(common.target, common.sources));
    let tickets = Arc::new(AtomicU64::new(0));
    let warm_end = Instant::now() + common.warmup;
    let barrier = Arc::new(Barrier::new(p.concurrency + 1));
    let first = Arc::new(FirstError::default());
    let interval = p.rate.map(|r| Duration::from_secs_f64(p.concurrency as f64 / r));
    let concurrency = p.concurrency;
    let workers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(w, client)| {
            let (sources, tickets, barrier, first) =
                (sources.clone(), tickets.clone(), barrier.clone(), first.clone());
            let (target, total, payload, duration) =
                (common.target, p.connections, p.payload, common.duration);
            std::thread::spawn(move || {
                let msg = vec![0x42u8; payload];
                let mut back = vec![0u8; payload];
                // At least one connection each, so that resumed mode has a session.
                loop {
                    let r = one(&client, &sources, target, &msg, &mut back);
                    if let Err(e) = &r {
                        first.note(|| e.clone());
                    }
                    if Instant::now() >= warm_end {
                        break;
                    }
                }
                barrier.wait();
                let start = Instant::now();
                let cap = start + duration.max(Duration::from_secs(1));
                let mut tally = ConnTally::new();
                // With a rate, the workers' schedules are spread evenly over one interval
                // (all starting together would send `concurrency` handshakes at once).
                let mut next =
                    start + interval.map_or(Duration::ZERO, |i| i.mul_f64(w as f64 / concurrency as f64));
                while tickets.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < cap {
                    let intended = match interval {
                        Some(_) if next >= cap => break,
                        Some(i) => {
                            let now = Instant::now();
                            if next > now {
                                std::thread::sleep(next - now);
                            }
                            let t = next;
                            next += i;
                            t
                        }
                        None => Instant::now(),
                    };
                    match one(&client, &sources, target, &msg, &mut back) {
                        Ok(kind) => {
                            tally.done(intended);
                            tally.resumed += u64::from(kind == Some(HandshakeKind::Resumed));
                        }
                        Err(e) => tally.failed(&first, e),
                    }
                }
                tally
            })
        })
        .collect();
    barrier.wait();
    let (tally, elapsed_s, processes) = gather(common, workers, &first)?;
    let (ok, resumed) = (tally.ok, tally.resumed);
    if p.mode == Mode::Resumed && resumed * 10 < ok * 9 {
        return Err(BenchError::NoProgress {
            target: common.target,
            detail: format!("only {resumed} of {ok} handshakes resumed: the target does not resume sessions"),
        });
    }
    let results = Results {
        elapsed_s,
        connections: ok,
        operations: ok,
        errors: tally.errors,
        bytes_up: ok * p.payload as u64,
        bytes_down: ok * p.payload as u64,
        latency_us: Percentiles::from_histogram(&tally.hist),
        ..Results::default()
    };
    let extra = json!({
        "connections": p.connections,
        "concurrency": p.concurrency,
        "payload": p.payload,
        "mode": p.mode,
        "tls_version": p.version,
        "server_name": p.server_name,
        "verify": matches!(p.verify, Verify::CaFile(_)),
        "rate": p.rate,
        "resumed": resumed,
        "handshakes_per_s": ok as f64 / elapsed_s.max(1e-9),
    });
    Ok(finish("tls-handshake", common, extra, results, processes, false))
}

/// One connection; returns how its handshake went.
fn one(
    client: &TlsClient,
    sources: &SourcePool,
    target: SocketAddr,
    msg: &[u8],
    back: &mut [u8],
) -> Result<Option<HandshakeKind>, String> {
    let sock = sources
        .connect(target, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    // The client's last flight and the request go out at once, not held by Nagle.
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut s = client.wrap(sock)?;
    crate::tls::complete_handshake(&mut s)
        .map_err(|e| super::exchange_error("TLS handshake", &e, Duration::from_secs(5)))?;
    let kind = s.conn.handshake_kind();
    s.write_all(msg).map_err(|e| format!("write: {e}"))?;
    s.read_exact(back)
        .map_err(|e| super::exchange_error("no echo", &e, Duration::from_secs(5)))?;
    if back != msg {
        return Err("echo differs from what was sent".into());
    }
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
    Ok(kind)
}
