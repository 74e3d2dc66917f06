//! The load scenarios. Each takes the [`Common`] options and its own parameters, runs against
//! a target (a stand-in, directly or through a proxy) and returns a [`Report`].

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::report::{Report, Window};
use crate::BenchError;

pub mod connect_rate;
pub mod idle;
pub mod rdp_profile;
pub mod rr_latency;
pub mod throughput;
pub mod tls_handshake;

/// Options every scenario takes.
#[derive(Clone, Debug)]
pub struct Common {
    /// Where the load goes.
    pub target: SocketAddr,
    /// Length of the measured window (a cap for byte- or count-driven scenarios).
    pub duration: Duration,
    /// Load before the measured window whose samples are dropped (time-driven scenarios).
    pub warmup: Duration,
    /// Local source addresses (127.0.0.1..=N) when the target is on loopback.
    pub sources: usize,
    /// Processes whose CPU time and RSS are reported.
    pub pids: Vec<u32>,
}

impl Common {
    /// The common parameters as JSON, to which a scenario adds its own.
    pub fn parameters(&self, extra: Value) -> Value {
        let mut m = Map::new();
        m.insert("duration_s".into(), json!(self.duration.as_secs_f64()));
        m.insert("warmup_s".into(), json!(self.warmup.as_secs_f64()));
        m.insert("sources".into(), json!(self.sources));
        m.insert("pids".into(), json!(self.pids));
        if let Value::Object(e) = extra {
            m.extend(e);
        }
        Value::Object(m)
    }

    /// Opens the CPU/RSS window over `pids`.
    pub fn open_window(&self) -> Result<Window, BenchError> {
        Window::open(&self.pids).map_err(|e| BenchError::Process(e.to_string()))
    }

    /// Closes the window into process reports.
    pub fn close_window(&self, w: &Window) -> Result<Vec<crate::report::ProcessReport>, BenchError> {
        w.close().map_err(|e| BenchError::Process(e.to_string()))
    }
}

/// Sleeps until `end`; on a terminal, shows a progress line for windows longer than 3 s.
pub fn wait_with_progress(scenario: &str, start: Instant, end: Instant) {
    use std::io::{IsTerminal, Write};
    let total = end.saturating_duration_since(start);
    let show = total > Duration::from_secs(3) && std::io::stderr().is_terminal();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if show {
            let done = now.saturating_duration_since(start).as_secs_f64();
            let frac = (done / total.as_secs_f64()).clamp(0.0, 1.0);
            let bar = "#".repeat((frac * 30.0) as usize);
            eprint!("\r{scenario} [{bar:<30}] {done:.0}/{:.0} s", total.as_secs_f64());
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep((end - now).min(Duration::from_millis(500)));
    }
    if show {
        eprintln!();
    }
}

/// Remembers the first error message seen by any worker (for a clear NoProgress error).
#[derive(Debug, Default)]
pub struct FirstError(Mutex<Option<String>>);

impl FirstError {
    /// Records `msg` unless an earlier one is held.
    pub fn note(&self, msg: impl FnOnce() -> String) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(msg());
        }
    }

    /// The first error, if any.
    pub fn first(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first error, or what nothing failing and nothing done means.
    pub fn take(&self) -> String {
        let g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.clone().unwrap_or_else(|| {
            "no answer in the window and no error (a target that accepts and stays silent?)".into()
        })
    }
}

/// Names the first error on stderr when a run that measured something also had errors (the
/// report counts them).
pub(crate) fn name_first_error(errors: u64, first: Option<String>) {
    if errors > 0 {
        if let Some(e) = first {
            eprintln!("gatehouse-bench: first error: {e}");
        }
    }
}

/// What an I/O error of an exchange with the target means, in words: a read timeout is no
/// answer within `timeout`, an early end is the target closing.
pub(crate) fn exchange_error(what: &str, e: &std::io::Error, timeout: Duration) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!("{what}: no answer within {timeout:?}")
        }
        std::io::ErrorKind::UnexpectedEof => format!("{what}: the target closed the connection"),
        _ => format!("{what}: {e}"),
    }
}

/// What one worker of a connection scenario (connect-rate, tls-handshake) counted in the
/// measured window.
pub struct ConnTally {
    /// Connections that did their exchange.
    pub ok: u64,
    /// Of those, handshakes that resumed a session (tls-handshake).
    pub resumed: u64,
    /// Connections that failed.
    pub errors: u64,
    /// Latency of the successful ones, in nanoseconds.
    pub hist: hdrhistogram::Histogram<u64>,
}

impl ConnTally {
    /// An empty tally for a worker's measured window.
    pub fn new() -> ConnTally {
        ConnTally {
            ok: 0,
            resumed: 0,
            errors: 0,
            hist: crate::report::new_histogram(),
        }
    }

    /// A success whose latency counts from `since` (the intended start, for open loop).
    pub fn done(&mut self, since: Instant) {
        self.ok += 1;
        let _ = self.hist.record(since.elapsed().as_nanos() as u64);
    }

    /// A failure; `first` keeps the first error's text.
    pub fn failed(&mut self, first: &FirstError, e: String) {
        self.errors += 1;
        first.note(|| e);
    }
}

impl Default for ConnTally {
    fn default() -> Self {
        Self::new()
    }
}

/// Opens the measured window (the workers are past the barrier), joins the workers and
/// closes it: the merged tally, the window's length in seconds and the processes' figures.
/// Fails with NoProgress when no connection succeeded.
pub fn gather(
    common: &Common,
    workers: Vec<std::thread::JoinHandle<ConnTally>>,
    first: &FirstError,
) -> Result<(ConnTally, f64, Vec<crate::report::ProcessReport>), BenchError> {
    let window = common.open_window()?;
    let tallies: Vec<ConnTally> = workers
        .into_iter()
        .map(|w| w.join().expect("connection workers do not panic"))
        .collect();
    let elapsed_s = window.elapsed_s();
    let processes = common.close_window(&window)?;
    let mut all = ConnTally::new();
    for t in &tallies {
        all.ok += t.ok;
        all.resumed += t.resumed;
        all.errors += t.errors;
        all.hist.add(&t.hist).expect("histograms share bounds");
    }
    require_progress(common.target, all.ok, first)?;
    name_first_error(all.errors, first.first());
    Ok((all, elapsed_s, processes))
}

/// Fails with NoProgress when nothing completed.
pub fn require_progress(target: SocketAddr, operations: u64, first: &FirstError) -> Result<(), BenchError> {
    if operations == 0 {
        return Err(BenchError::NoProgress {
            target,
            detail: first.take(),
        });
    }
    Ok(())
}

/// Shorthand used by every scenario to finish.
pub(crate) fn finish(
    scenario: &'static str,
    common: &Common,
    extra: Value,
    results: crate::report::Results,
    processes: Vec<crate::report::ProcessReport>,
    rss_per_connection: bool,
) -> Report {
    Report::new(
        scenario,
        common.target.to_string(),
        common.parameters(extra),
        results,
        processes,
        rss_per_connection,
    )
}
