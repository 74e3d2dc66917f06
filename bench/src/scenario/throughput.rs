//! `throughput`: bulk bytes over N streams, up, down or both, through a Sink stand-in.
//!
//! Each stream sends a source request (see `standin.rs`), writes `bytes_per_stream` up and/or
//! reads as many down, then half-closes; the sink reports the upstream count, so both
//! directions are checked: what arrived equals what was sent. The measured window is the
//! whole transfer (warmup does not apply); `duration` is a cap.
//!
//! With `tls` (a TLS-terminating proxy in front of the sink), each stream moves bytes one way
//! (rustls drives one connection from one thread): with `both`, even streams go up and odd
//! ones down; a stream ends its upstream with close_notify, which the proxy passes on as a
//! half-close.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{finish, require_progress, Common, FirstError};
use crate::net::{probe, SourcePool};
use crate::report::{Report, Results};
use crate::tls::TlsClient;
use crate::wire::source::{SourceRequest, REPORT_LEN};
use crate::BenchError;

/// Which way the bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to host.
    Up,
    /// Host to client.
    Down,
    /// Both at once.
    Both,
}

impl FromStr for Direction {
    type Err = String;
    fn from_str(s: &str) -> Result<Direction, String> {
        match s {
            "up" => Ok(Direction::Up),
            "down" => Ok(Direction::Down),
            "both" => Ok(Direction::Both),
            o => Err(format!("unknown direction {o:?} (up, down, both)")),
        }
    }
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Both => "both",
        }
    }
}

/// Parameters of `throughput`.
#[derive(Clone, Debug)]
pub struct Params {
    /// Concurrent streams.
    pub streams: usize,
    /// Direction of the bulk bytes.
    pub direction: Direction,
    /// Bytes each stream moves in each active direction.
    pub bytes_per_stream: u64,
    /// TLS to the target (one direction per stream, see the module comment).
    pub tls: Option<TlsClient>,
}

struct StreamOutcome {
    up_sent: u64,
    down_received: u64,
    matched: bool,
    /// Cut by the `duration` cap before all its bytes moved.
    capped: bool,
}

/// How long after the cap a stream that stopped sending waits for the sink's report.
const REPORT_GRACE: Duration = Duration::from_secs(5);
/// How often a blocked read looks at the cap.
const READ_TICK: Duration = Duration::from_millis(200);

/// Runs the scenario.
pub fn run(common: &Common, p: &Params) -> Result<Report, BenchError> {
    if p.streams == 0 {
        return Err(BenchError::Usage("--streams must be at least 1".into()));
    }
    probe(common.target)?;
    let sources = Arc::new(SourcePool::new(common.target, common.sources));
    let up = matches!(p.direction, Direction::Up | Direction::Both);
    let down = matches!(p.direction, Direction::Down | Direction::Both);
    let up_bytes = if up { p.bytes_per_stream } else { 0 };
    let down_bytes = if down { p.bytes_per_stream } else { 0 };
    let barrier = Arc::new(Barrier::new(p.streams + 1));
    let first = Arc::new(FirstError::default());
    let deadline = Instant::now() + common.duration.max(Duration::from_secs(1));
    let threads: Vec<_> = (0..p.streams)
        .map(|i| {
            let (sources, barrier, first) = (sources.clone(), barrier.clone(), first.clone());
            let target = common.target;
            let tls = p.tls.clone();
            let (up_bytes, down_bytes) = match (&tls, p.direction) {
                (Some(_), Direction::Both) if i % 2 == 0 => (up_bytes, 0),
                (Some(_), Direction::Both) => (0, down_bytes),
                _ => (up_bytes, down_bytes),
            };
            std::thread::spawn(move || {
                let conn = sources.connect(target, Duration::from_secs(5));
                barrier.wait();
                let outcome = conn.map_err(|e| e.to_string()).and_then(|c| match &tls {
                    None => one_stream(c, up_bytes, down_bytes, deadline),
                    Some(t) => one_tls_stream(t, c, up_bytes, down_bytes, deadline),
                });
                outcome.unwrap_or_else(|e| {
                    first.note(|| e);
                    StreamOutcome {
                        up_sent: 0,
                        down_received: 0,
                        matched: false,
                        capped: false,
                    }
                })
            })
        })
        .collect();
    let window = common.open_window()?;
    barrier.wait();
    let outcomes: Vec<StreamOutcome> = threads
        .into_iter()
        .map(|t| t.join().expect("stream threads do not panic"))
        .collect();
    let elapsed_s = window.elapsed_s();
    let processes = common.close_window(&window)?;
    let ok = outcomes.iter().filter(|o| o.matched).count() as u64;
    let capped = outcomes.iter().filter(|o| o.capped).count() as u64;
    require_progress(common.target, ok + capped, &first)?;
    super::name_first_error(p.streams as u64 - ok - capped, first.first());
    if capped > 0 {
        eprintln!(
            "gatehouse-bench: the --duration cap ({:?}) cut {capped} of {} streams before all their bytes moved: \
             the figures are for the bytes that did, the byte check covers the {ok} that finished",
            common.duration.max(Duration::from_secs(1)),
            p.streams
        );
    }
    let results = Results {
        elapsed_s,
        connections: ok + capped,
        operations: ok + capped,
        errors: p.streams as u64 - ok - capped,
        bytes_up: outcomes.iter().map(|o| o.up_sent).sum(),
        bytes_down: outcomes.iter().map(|o| o.down_received).sum(),
        // Unknown when a cut stream's bytes could not all be checked, false on a mismatch.
        bytes_match: match (ok + capped == p.streams as u64, capped) {
            (false, _) => Some(false),
            (true, 0) => Some(true),
            (true, _) => None,
        },
        ..Results::default()
    };
    let extra = json!({
        "streams": p.streams,
        "direction": p.direction.name(),
        "bytes_per_stream": p.bytes_per_stream,
        "tls": p.tls.is_some(),
    });
    Ok(finish("throughput", common, extra, results, processes, false))
}

fn one_stream(
    mut conn: std::net::TcpStream,
    up_bytes: u64,
    down_bytes: u64,
    deadline: Instant,
) -> Result<StreamOutcome, String> {
    conn.set_read_timeout(Some(READ_TICK))
        .map_err(|e| e.to_string())?;
    let header = SourceRequest {
        down_bytes,
        report_up: true,
    }
    .encode();
    conn.write_all(&header).map_err(|e| e.to_string())?;
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    // A write blocked by a stalled path still returns by the cap (the write timeout).
    let _ = writer.set_write_timeout(Some(READ_TICK));
    // Set by the reader when it cuts the connection at the cap: the sender's write errors
    // after that are the cut, not a failure.
    let cut = Arc::new(AtomicBool::new(false));
    let cut_seen = cut.clone();
    let sender = std::thread::spawn(move || -> Result<(u64, bool), String> {
        let chunk = vec![0x3Cu8; 64 * 1024];
        let mut sent = 0u64;
        let mut capped = false;
        let was_cut = || cut_seen.load(Ordering::SeqCst);
        while sent < up_bytes {
            if Instant::now() >= deadline {
                capped = true;
                break;
            }
            let n = (up_bytes - sent).min(chunk.len() as u64) as usize;
            match writer.write(&chunk[..n]) {
                Ok(0) if was_cut() => return Ok((sent, true)),
                Ok(0) => return Err(format!("writing after {sent} bytes: connection closed")),
                Ok(n) => sent += n as u64,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) if was_cut() => return Ok((sent, true)),
                Err(e) => return Err(format!("writing after {sent} bytes: {e}")),
            }
        }
        match writer.shutdown(Shutdown::Write) {
            Err(_) if was_cut() => Ok((sent, true)),
            Err(e) => Err(format!("half-close: {e}")),
            Ok(()) => Ok((sent, capped)),
        }
    });
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    let mut tail = Vec::with_capacity(REPORT_LEN);
    loop {
        let now = Instant::now();
        if now >= deadline && received < down_bytes {
            // The cap: what was still to come down is not waited for.
            cut.store(true, Ordering::SeqCst);
            let _ = conn.shutdown(Shutdown::Both);
            break;
        }
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // The first down_bytes are payload, the next 8 the sink's report.
                let payload = (down_bytes.saturating_sub(received)).min(n as u64) as usize;
                received += payload as u64;
                tail.extend_from_slice(&buf[payload..n]);
                if tail.len() > REPORT_LEN {
                    return Err(format!("{} bytes more than expected", tail.len() - REPORT_LEN));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if now >= deadline + REPORT_GRACE {
                    let _ = conn.shutdown(Shutdown::Both);
                    return Err(format!(
                        "no byte for {REPORT_GRACE:?} after the cap (after {received} bytes down)"
                    ));
                }
            }
            Err(e) => return Err(format!("reading after {received} bytes: {e}")),
        }
    }
    let (up_sent, up_capped) = sender.join().map_err(|_| "sender panicked".to_string())??;
    if cut.load(Ordering::SeqCst) || up_capped {
        return Ok(StreamOutcome {
            up_sent,
            down_received: received,
            matched: false,
            capped: true,
        });
    }
    let reported = (tail.len() == REPORT_LEN).then(|| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&tail);
        u64::from_be_bytes(b)
    });
    let matched = received == down_bytes && reported == Some(up_sent);
    if !matched {
        return Err(format!(
            "byte count mismatch: down {received} of {down_bytes} bytes; the sink counted {} of {up_sent} bytes up",
            reported.map_or_else(|| "no report".to_string(), |r| r.to_string())
        ));
    }
    Ok(StreamOutcome {
        up_sent,
        down_received: received,
        matched,
        capped: false,
    })
}

/// One stream over TLS: header, `up_bytes` up, close_notify, then everything down until the
/// proxy closes (the sink's report last). The cap is looked at between records sent and
/// between reads.
fn one_tls_stream(
    client: &TlsClient,
    conn: std::net::TcpStream,
    up_bytes: u64,
    down_bytes: u64,
    deadline: Instant,
) -> Result<StreamOutcome, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    conn.set_read_timeout(Some(left.max(Duration::from_millis(100))))
        .map_err(|e| e.to_string())?;
    let mut s = client.wrap(conn)?;
    let header = SourceRequest {
        down_bytes,
        report_up: true,
    }
    .encode();
    // (The handshake runs here, under the timeout of what is left before the cap.)
    s.write_all(&header).map_err(|e| format!("TLS: {e}"))?;
    s.sock
        .set_read_timeout(Some(READ_TICK))
        .map_err(|e| e.to_string())?;
    // One full TLS record per write.
    let chunk = vec![0x3Cu8; 16 * 1024];
    let mut up_sent = 0u64;
    let mut capped = false;
    while up_sent < up_bytes {
        if Instant::now() >= deadline {
            capped = true;
            break;
        }
        let n = (up_bytes - up_sent).min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).map_err(|e| format!("writing: {e}"))?;
        up_sent += n as u64;
    }
    s.conn.send_close_notify();
    s.flush().map_err(|e| format!("close_notify: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    let mut tail = Vec::with_capacity(REPORT_LEN);
    loop {
        let now = Instant::now();
        if now >= deadline && received < down_bytes {
            let _ = s.sock.shutdown(Shutdown::Both);
            capped = true;
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let payload = (down_bytes.saturating_sub(received)).min(n as u64) as usize;
                received += payload as u64;
                tail.extend_from_slice(&buf[payload..n]);
                if tail.len() > REPORT_LEN {
                    return Err(format!("{} bytes more than expected", tail.len() - REPORT_LEN));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if now >= deadline + REPORT_GRACE {
                    return Err(format!(
                        "no byte for {REPORT_GRACE:?} after the cap (after {received} bytes down)"
                    ));
                }
            }
            // A proxy that closes without close_notify after the whole report: complete.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && tail.len() == REPORT_LEN => break,
            Err(e) => return Err(format!("reading after {received} bytes: {e}")),
        }
    }
    if capped {
        return Ok(StreamOutcome {
            up_sent,
            down_received: received,
            matched: false,
            capped: true,
        });
    }
    let reported = (tail.len() == REPORT_LEN).then(|| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&tail);
        u64::from_be_bytes(b)
    });
    let matched = received == down_bytes && reported == Some(up_sent);
    if !matched {
        return Err(format!(
            "byte count mismatch over TLS: down {received} of {down_bytes} bytes; the sink counted {} of {up_sent} bytes up",
            reported.map_or_else(|| "no report".to_string(), |r| r.to_string())
        ));
    }
    Ok(StreamOutcome {
        up_sent,
        down_received: received,
        matched,
        capped: false,
    })
}
