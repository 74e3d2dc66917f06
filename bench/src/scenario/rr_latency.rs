//! `rr-latency`: request/response ping-pong of small messages at a fixed open-loop rate,
//! against an Echo stand-in.
//!
//! Each connection has a sender that writes message k at its intended time
//! `start + k / rate` whether or not earlier replies came back (open loop), and a receiver
//! that timestamps each echo. Latency counts from the intended send time, so a stalled
//! proxy shows up in the percentiles instead of slowing the load (no coordinated omission).
//! Message: seq u64 BE | intended time (ns since start) u64 BE | filler.
//!
//! With a `direct` address (the stand-in behind the proxy), the same load also goes straight
//! there, in the same window, each message half an interval after the proxied one: the
//! baseline lives through the same moments of a shared machine as the measurement, so the
//! difference of their percentiles is what the proxy adds, not what the machine did between
//! two runs.

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;

use super::{finish, require_progress, Common, FirstError};
use crate::net::{probe, SourcePool};
use crate::report::{new_histogram, Percentiles, Report, Results};
use crate::BenchError;

/// Smallest message: seq and timestamp.
pub const MIN_MESSAGE: usize = 16;

/// Parameters of `rr-latency`.
#[derive(Clone, Debug)]
pub struct Params {
    /// Messages per second over all connections.
    pub rate: f64,
    /// Connections sharing the rate.
    pub connections: usize,
    /// Message size in bytes (>= 16).
    pub message: usize,
    /// The same load, interleaved, straight to this address (the baseline).
    pub direct: Option<SocketAddr>,
}

struct ConnTally {
    hist: Histogram<u64>,
    /// Messages whose intended time fell in the window, sent or not (a broken connection
    /// sends no more, and those it did not send are lost, not never asked for).
    due_in_window: u64,
    /// Of those, the ones written.
    sent_in_window: u64,
    received_in_window: u64,
}

/// Runs the scenario.
pub fn run(common: &Common, p: &Params) -> Result<Report, BenchError> {
    if !(p.rate.is_finite() && p.rate > 0.0) {
        return Err(BenchError::Usage(format!(
            "--rate must be more than 0 (it is {})",
            p.rate
        )));
    }
    if p.connections == 0 {
        return Err(BenchError::Usage("--connections must be at least 1".into()));
    }
    if p.message < MIN_MESSAGE {
        return Err(BenchError::Usage(format!(
            "--message must be at least {MIN_MESSAGE} bytes (a sequence number and a timestamp); it is {}",
            p.message
        )));
    }
    probe(common.target)?;
    if let Some(direct) = p.direct {
        probe(direct)?;
    }
    let connect_all = |target: SocketAddr| -> Result<Vec<std::net::TcpStream>, BenchError> {
        let sources = SourcePool::new(target, common.sources);
        (0..p.connections)
            .map(|_| {
                sources
                    .connect(target, Duration::from_secs(5))
                    .map_err(|e| BenchError::TargetDead {
                        target,
                        reason: e.to_string(),
                    })
            })
            .collect()
    };
    let conns = connect_all(common.target)?;
    let direct_conns = match p.direct {
        Some(d) => connect_all(d)?,
        None => Vec::new(),
    };
    let interval = Duration::from_secs_f64(p.connections as f64 / p.rate);
    let base = Instant::now() + Duration::from_millis(20);
    let window_start = base + common.warmup;
    let end = window_start + common.duration;
    // Connections spread evenly over one interval; the direct ones half a slot later.
    let slot = interval.mul_f64(1.0 / p.connections as f64);
    let spawn = |conns: Vec<std::net::TcpStream>, shift: Duration, first: Arc<FirstError>| {
        conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let offset = slot.mul_f64(i as f64) + shift;
                let first = first.clone();
                let message = p.message;
                std::thread::spawn(move || {
                    run_connection(conn, base, offset, interval, window_start, end, message, first)
                })
            })
            .collect::<Vec<_>>()
    };
    let first = Arc::new(FirstError::default());
    let direct_first = Arc::new(FirstError::default());
    let workers = spawn(conns, Duration::ZERO, first.clone());
    let direct_workers = spawn(direct_conns, slot / 2, direct_first.clone());
    std::thread::sleep(window_start.saturating_duration_since(Instant::now()));
    let window = common.open_window()?;
    super::wait_with_progress("rr-latency", window_start, end);
    let elapsed_s = window.elapsed_s();
    let processes = common.close_window(&window)?;
    let join = |workers: Vec<std::thread::JoinHandle<ConnTally>>| -> Vec<ConnTally> {
        workers
            .into_iter()
            .map(|w| w.join().expect("latency workers do not panic"))
            .collect()
    };
    let tallies = join(workers);
    let direct_tallies = join(direct_workers);
    let mut hist = new_histogram();
    for t in &tallies {
        hist.add(&t.hist).expect("histograms share bounds");
    }
    let received: u64 = tallies.iter().map(|t| t.received_in_window).sum();
    let due: u64 = tallies.iter().map(|t| t.due_in_window).sum();
    let sent: u64 = tallies.iter().map(|t| t.sent_in_window).sum();
    require_progress(common.target, received, &first)?;
    // Messages of the baseline that never came back count as errors too.
    let direct_lost: u64 = direct_tallies
        .iter()
        .map(|t| t.due_in_window.saturating_sub(t.received_in_window))
        .sum();
    let direct_latency_us = match p.direct {
        Some(d) => {
            let received: u64 = direct_tallies.iter().map(|t| t.received_in_window).sum();
            require_progress(d, received, &direct_first)?;
            let mut hist = new_histogram();
            for t in &direct_tallies {
                hist.add(&t.hist).expect("histograms share bounds");
            }
            Percentiles::from_histogram(&hist)
        }
        None => None,
    };
    let errors = due.saturating_sub(received) + direct_lost;
    super::name_first_error(errors, first.first().or_else(|| direct_first.first()));
    let results = Results {
        elapsed_s,
        connections: p.connections as u64,
        operations: received,
        errors,
        bytes_up: sent * p.message as u64,
        bytes_down: received * p.message as u64,
        latency_us: Percentiles::from_histogram(&hist),
        direct_latency_us,
        ..Results::default()
    };
    let extra = json!({
        "rate": p.rate,
        "connections": p.connections,
        "message": p.message,
        "direct": p.direct.map(|d| d.to_string()),
    });
    Ok(finish("rr-latency", common, extra, results, processes, false))
}

#[allow(clippy::too_many_arguments)]
fn run_connection(
    conn: std::net::TcpStream,
    base: Instant,
    offset: Duration,
    interval: Duration,
    window_start: Instant,
    end: Instant,
    message: usize,
    first: Arc<FirstError>,
) -> ConnTally {
    let sent_total = Arc::new(AtomicU64::new(u64::MAX));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(e) => {
            first.note(|| e.to_string());
            return ConnTally {
                hist: new_histogram(),
                due_in_window: 0,
                sent_in_window: 0,
                received_in_window: 0,
            };
        }
    };
    let sent_flag = sent_total.clone();
    let sender_first = first.clone();
    // Returns the messages due in the window and, of those, the ones sent.
    let sender = std::thread::spawn(move || {
        set_fine_timer_slack();
        let mut msg = vec![0u8; message];
        let mut k = 0u64;
        let mut sent = 0u64;
        let mut broken = false;
        let mut due_in_window = 0u64;
        let mut sent_in_window = 0u64;
        loop {
            let intended = base + offset + interval.mul_f64(k as f64);
            if intended >= end {
                break;
            }
            if !broken {
                let now = Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                msg[..8].copy_from_slice(&k.to_be_bytes());
                let t = (intended - base).as_nanos() as u64;
                msg[8..16].copy_from_slice(&t.to_be_bytes());
                match writer.write_all(&msg) {
                    Ok(()) => {
                        sent += 1;
                        sent_in_window += u64::from(intended >= window_start);
                    }
                    Err(e) => {
                        sender_first.note(|| format!("sending message {k}: {e}"));
                        broken = true;
                    }
                }
            }
            if intended >= window_start {
                due_in_window += 1;
            }
            k += 1;
        }
        // The receiver waits only for what went out.
        sent_flag.store(sent, Ordering::Release);
        (due_in_window, sent_in_window)
    });
    let mut conn = conn;
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut hist = new_histogram();
    let mut buf = vec![0u8; message];
    let mut filled = 0usize;
    let mut received = 0u64;
    let mut received_in_window = 0u64;
    let give_up = end + Duration::from_secs(2);
    loop {
        let total = sent_total.load(Ordering::Acquire);
        if received >= total || Instant::now() > give_up {
            break;
        }
        match conn.read(&mut buf[filled..]) {
            Ok(0) => {
                first.note(|| format!("connection closed after {received} replies"));
                break;
            }
            Ok(n) => {
                filled += n;
                if filled < message {
                    continue;
                }
                filled = 0;
                let now = Instant::now();
                let mut t = [0u8; 8];
                t.copy_from_slice(&buf[8..16]);
                let intended = base + Duration::from_nanos(u64::from_be_bytes(t));
                received += 1;
                if intended >= window_start && intended < end {
                    received_in_window += 1;
                    let _ = hist.record(now.saturating_duration_since(intended).as_nanos() as u64);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                first.note(|| format!("reading replies: {e}"));
                break;
            }
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let (due_in_window, sent_in_window) = sender.join().unwrap_or((0, 0));
    ConnTally {
        hist,
        due_in_window,
        sent_in_window,
        received_in_window,
    }
}

/// Sleeps end within microseconds of their deadline (default timer slack is 50 us).
pub(crate) fn set_fine_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and affects this thread only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}
