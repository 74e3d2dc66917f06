//! `idle`: N connections opened, each checked live with one echo, then held idle (with
//! `tls`, TLS connections to a terminating proxy: the memory per idle TLS tunnel).
//!
//! With `--pid`, the RSS of each process is read before the first connection and at the end
//! of the hold (the connections idle by then); the growth divided by the connections held is
//! the memory per idle tunnel. After the hold every connection echoes once more
//! (`alive_after_hold`), so a proxy that dropped idle tunnels is caught.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::{finish, require_progress, Common, FirstError};
use crate::net::{probe, SourcePool};
use crate::report::{Report, Results};
use crate::tls::TlsClient;
use crate::BenchError;

/// Parameters of `idle`.
#[derive(Clone, Debug)]
pub struct Params {
    /// Connections to open and hold.
    pub connections: usize,
    /// How long to hold them idle.
    pub hold: Duration,
    /// Workers opening connections at once.
    pub concurrency: usize,
    /// Open TLS connections with this client (full handshakes) instead of plain ones.
    pub tls: Option<TlsClient>,
}

/// A held connection, plain or TLS.
trait Held: Read + Write + Send {
    /// Bounds the next reads.
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()>;
}

impl Held for std::net::TcpStream {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, Some(d))
    }
}

impl Held for crate::tls::TlsStream {
    fn set_read_timeout(&self, d: Duration) -> std::io::Result<()> {
        self.sock.set_read_timeout(Some(d))
    }
}

const PING: &[u8] = b"gatehouse-idle!!";
/// How long an echo may take.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the scenario.
pub fn run(common: &Common, p: &Params) -> Result<Report, BenchError> {
    probe(common.target)?;
    let limit = crate::net::raise_nofile_limit();
    if p.connections as u64 + 64 > limit {
        return Err(BenchError::Usage(format!(
            "{} connections need more than the open-files limit {limit}: run several processes",
            p.connections
        )));
    }
    let sources = Arc::new(SourcePool::new(common.target, common.sources));
    let first = Arc::new(FirstError::default());
    let held = Arc::new(Mutex::new(Vec::with_capacity(p.connections)));
    let window = common.open_window()?;
    let workers = p.concurrency.clamp(1, p.connections.max(1));
    // A target that fails every connection of the first round (one per worker) will fail
    // the rest the same way: stop there rather than wait out every echo timeout.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (sources, first, held) = (sources.clone(), first.clone(), held.clone());
            let (ok, failed) = (ok.clone(), failed.clone());
            let target = common.target;
            let tls = p.tls.clone();
            let count = p.connections / workers + usize::from(w < p.connections % workers);
            std::thread::spawn(move || {
                let mut mine = Vec::with_capacity(count);
                let mut errors = 0u64;
                for _ in 0..count {
                    if ok.load(Ordering::Relaxed) == 0 && failed.load(Ordering::Relaxed) >= workers as u64 {
                        break;
                    }
                    match sources
                        .connect(target, Duration::from_secs(5))
                        .map_err(|e| format!("connect: {e}"))
                        .and_then(|c| -> Result<Box<dyn Held>, String> {
                            c.set_read_timeout(Some(ECHO_TIMEOUT))
                                .map_err(|e| e.to_string())?;
                            match &tls {
                                None => Ok(Box::new(c)),
                                Some(t) => {
                                    c.set_nodelay(true).map_err(|e| e.to_string())?;
                                    Ok(Box::new(t.wrap(c)?))
                                }
                            }
                        })
                        .and_then(|mut c| ping(&mut *c).map(|()| c))
                    {
                        Ok(c) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            mine.push(c);
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors += 1;
                            first.note(|| e);
                        }
                    }
                }
                held.lock().unwrap_or_else(|p| p.into_inner()).extend(mine);
                errors
            })
        })
        .collect();
    let errors: u64 = threads
        .into_iter()
        .map(|t| t.join().expect("idle workers do not panic"))
        .sum();
    let mut conns = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    let held_from = std::time::Instant::now();
    super::wait_with_progress("idle", held_from, held_from + p.hold);
    let elapsed_s = window.elapsed_s();
    let processes = common.close_window(&window)?;
    let opened = conns.len() as u64;
    require_progress(common.target, opened, &first)?;
    super::name_first_error(errors, first.first());
    // Every connection echoes once more, all within one ECHO_TIMEOUT: the pings go out
    // first, then each read waits only for what is left of it.
    let sent: Vec<bool> = conns.iter_mut().map(|c| c.write_all(PING).is_ok()).collect();
    let by = std::time::Instant::now() + ECHO_TIMEOUT;
    let mut alive = 0u64;
    for (c, sent) in conns.iter_mut().zip(sent) {
        let left = by.saturating_duration_since(std::time::Instant::now());
        if sent && c.set_read_timeout(left.max(Duration::from_millis(1))).is_ok() && echoed(&mut **c).is_ok()
        {
            alive += 1;
        }
    }
    drop(conns);
    let results = Results {
        elapsed_s,
        connections: opened,
        operations: opened,
        errors,
        bytes_up: opened * PING.len() as u64,
        bytes_down: opened * PING.len() as u64,
        alive_after_hold: Some(alive),
        ..Results::default()
    };
    let extra = json!({
        "connections": p.connections,
        "hold_s": p.hold.as_secs_f64(),
        "concurrency": p.concurrency,
        "tls": p.tls.is_some(),
    });
    Ok(finish("idle", common, extra, results, processes, true))
}

fn ping(c: &mut dyn Held) -> Result<(), String> {
    c.write_all(PING).map_err(|e| format!("write: {e}"))?;
    echoed(c)
}

/// Reads the echo of one [`PING`].
fn echoed(c: &mut dyn Held) -> Result<(), String> {
    let mut back = [0u8; PING.len()];
    c.read_exact(&mut back).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("no echo within {ECHO_TIMEOUT:?}")
        }
        std::io::ErrorKind::UnexpectedEof => "closed before echoing".to_string(),
        _ => format!("no echo: {e}"),
    })?;
    if back != PING {
        return Err("echo differs".into());
    }
    Ok(())
}
