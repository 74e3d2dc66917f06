//! `connect-rate`: short connections (connect, one echo of `payload` bytes, close) from
//! `concurrency` workers until `connections` are done, against an Echo stand-in.
//!
//! Workers first run for `warmup` (not counted), then the measured window covers exactly
//! `connections` attempts (capped by `duration`). Latency is connect start to echo received.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{finish, gather, Common, ConnTally, FirstError};
use crate::net::{probe, SourcePool};
use crate::report::{Percentiles, Report, Results};
use crate::BenchError;

/// Parameters of `connect-rate`.
#[derive(Clone, Debug)]
pub struct Params {
    /// Connections in the measured window.
    pub connections: u64,
    /// Workers connecting at once.
    pub concurrency: usize,
    /// Bytes echoed on each connection.
    pub payload: usize,
}

/// Runs the scenario.
pub fn run(common: &Common, p: &Params) -> Result<Report, BenchError> {
    if p.concurrency == 0 || p.payload == 0 {
        return Err(BenchError::Usage(
            "--concurrency and --payload must be at least 1".into(),
        ));
    }
    probe(common.target)?;
    let sources = Arc::new(SourcePool::new(common.target, common.sources));
    let tickets = Arc::new(AtomicU64::new(0));
    let warm_end = Instant::now() + common.warmup;
    let barrier = Arc::new(Barrier::new(p.concurrency + 1));
    let first = Arc::new(FirstError::default());
    let cap = warm_end + common.duration.max(Duration::from_secs(1));
    let workers: Vec<_> = (0..p.concurrency)
        .map(|_| {
            let (sources, tickets, barrier, first) =
                (sources.clone(), tickets.clone(), barrier.clone(), first.clone());
            let (target, total, payload) = (common.target, p.connections, p.payload);
            std::thread::spawn(move || {
                let msg = vec![0x42u8; payload];
                let mut back = vec![0u8; payload];
                while Instant::now() < warm_end {
                    let _ = one(&sources, target, &msg, &mut back);
                }
                barrier.wait();
                let mut tally = ConnTally::new();
                while tickets.fetch_add(1, Ordering::Relaxed) < total && Instant::now() < cap {
                    let start = Instant::now();
                    match one(&sources, target, &msg, &mut back) {
                        Ok(()) => tally.done(start),
                        Err(e) => tally.failed(&first, e),
                    }
                }
                tally
            })
        })
        .collect();
    barrier.wait();
    let (tally, elapsed_s, processes) = gather(common, workers, &first)?;
    let ok = tally.ok;
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
    });
    Ok(finish("connect-rate", common, extra, results, processes, false))
}

fn one(
    sources: &SourcePool,
    target: std::net::SocketAddr,
    msg: &[u8],
    back: &mut [u8],
) -> Result<(), String> {
    let mut c = sources
        .connect(target, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    c.write_all(msg).map_err(|e| format!("write: {e}"))?;
    c.read_exact(back)
        .map_err(|e| super::exchange_error("no echo", &e, Duration::from_secs(5)))?;
    if back != msg {
        return Err("echo differs from what was sent".into());
    }
    Ok(())
}
