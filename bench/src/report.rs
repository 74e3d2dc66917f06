//! The result of a scenario: one JSON schema for every scenario, and the human table.
//!
//! Owns the schema. Every key is always present (absent figures are `null`), so scripts can
//! read any scenario's output the same way; `SCHEMA` changes when a key does.

use std::fmt::Write as _;
use std::io;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::procstat::{self, ProcSample};

/// Schema identifier written in every report.
pub const SCHEMA: &str = "gatehouse-bench/2";

/// A whole report: `{"schema", "scenario", "target", "parameters", "results", "processes",
/// "derived"}`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// Scenario name as on the command line (`throughput`, `rr-latency`, ...).
    pub scenario: &'static str,
    /// The address the load went to.
    pub target: String,
    /// Every parameter of the run, scenario-specific keys included (a JSON object).
    pub parameters: serde_json::Value,
    /// What was measured.
    pub results: Results,
    /// CPU and memory of each `--pid` over the measured window.
    pub processes: Vec<ProcessReport>,
    /// Figures derived from results and processes.
    pub derived: Derived,
}

/// Measured figures; the same keys for every scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    /// Length of the measured window in seconds.
    pub elapsed_s: f64,
    /// Connections opened successfully in the window.
    pub connections: u64,
    /// Completed operations: streams, echoes, messages or input events.
    pub operations: u64,
    /// `operations / elapsed_s`.
    pub operations_per_s: f64,
    /// Failed operations or connections.
    pub errors: u64,
    /// Payload bytes sent by the harness.
    pub bytes_up: u64,
    /// Payload bytes received by the harness.
    pub bytes_down: u64,
    /// `(bytes_up + bytes_down) * 8 / elapsed_s / 1e9`.
    pub gbit_per_s: f64,
    /// Latency of the operations in microseconds.
    pub latency_us: Option<Percentiles>,
    /// rr-latency with `--direct`: latency of the same load sent straight to the stand-in,
    /// interleaved with it in the same window (the baseline of the added latency).
    pub direct_latency_us: Option<Percentiles>,
    /// rdp-profile: latency of bursts in microseconds.
    pub burst_latency_us: Option<Percentiles>,
    /// throughput: whether every byte count matched what was sent.
    pub bytes_match: Option<bool>,
    /// idle: connections still answering an echo after the hold.
    pub alive_after_hold: Option<u64>,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest sample.
    pub max: f64,
}

/// One process under test (`--pid`).
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    /// Its pid.
    pub pid: u32,
    /// utime + stime used during the window.
    pub cpu_s: f64,
    /// VmRSS at the start of the window.
    pub rss_before_bytes: u64,
    /// VmRSS at the end of the window.
    pub rss_after_bytes: u64,
}

/// Derived figures over all `--pid` processes (null without `--pid`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Derived {
    /// CPU seconds of all processes during the window.
    pub cpu_s: Option<f64>,
    /// CPU seconds per 1e9 payload bytes moved (up + down).
    pub cpu_s_per_gb: Option<f64>,
    /// CPU microseconds per connection opened.
    pub cpu_us_per_connection: Option<f64>,
    /// CPU microseconds per operation.
    pub cpu_us_per_operation: Option<f64>,
    /// RSS growth in bytes per connection held (idle scenario).
    pub rss_bytes_per_connection: Option<f64>,
}

/// Latency histogram in nanoseconds, 1 ns to 100 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("bounds are valid constants")
}

impl Percentiles {
    /// Percentiles of a nanosecond histogram, in microseconds; `None` when empty.
    pub fn from_histogram(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1e3;
        Some(Percentiles {
            count: h.len(),
            mean: h.mean() / 1e3,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// CPU and memory samples of the `--pid` processes around a measured window.
#[derive(Debug)]
pub struct Window {
    started: Instant,
    before: Vec<ProcSample>,
}

impl Window {
    /// Samples every pid now; fails (naming the pid) if one is gone.
    pub fn open(pids: &[u32]) -> io::Result<Window> {
        let before = pids
            .iter()
            .map(|&p| procstat::sample(p))
            .collect::<io::Result<_>>()?;
        Ok(Window {
            started: Instant::now(),
            before,
        })
    }

    /// Seconds since the window opened.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Samples again and returns the per-process differences.
    pub fn close(&self) -> io::Result<Vec<ProcessReport>> {
        self.before
            .iter()
            .map(|b| {
                let a = procstat::sample(b.pid)?;
                Ok(ProcessReport {
                    pid: b.pid,
                    cpu_s: (a.cpu_s - b.cpu_s).max(0.0),
                    rss_before_bytes: b.rss_bytes,
                    rss_after_bytes: a.rss_bytes,
                })
            })
            .collect()
    }
}

impl Report {
    /// Builds a report, filling the derived rates and figures.
    pub fn new(
        scenario: &'static str,
        target: String,
        parameters: serde_json::Value,
        mut results: Results,
        processes: Vec<ProcessReport>,
        rss_per_connection: bool,
    ) -> Report {
        if results.elapsed_s > 0.0 {
            results.operations_per_s = results.operations as f64 / results.elapsed_s;
            results.gbit_per_s =
                (results.bytes_up + results.bytes_down) as f64 * 8.0 / results.elapsed_s / 1e9;
        }
        let mut derived = Derived::default();
        if !processes.is_empty() {
            let cpu: f64 = processes.iter().map(|p| p.cpu_s).sum();
            derived.cpu_s = Some(cpu);
            let bytes = results.bytes_up + results.bytes_down;
            derived.cpu_s_per_gb = (bytes > 0).then(|| cpu / (bytes as f64 / 1e9));
            derived.cpu_us_per_connection =
                (results.connections > 0).then(|| cpu * 1e6 / results.connections as f64);
            derived.cpu_us_per_operation =
                (results.operations > 0).then(|| cpu * 1e6 / results.operations as f64);
            if rss_per_connection && results.connections > 0 {
                let growth: f64 = processes
                    .iter()
                    .map(|p| p.rss_after_bytes as f64 - p.rss_before_bytes as f64)
                    .sum();
                derived.rss_bytes_per_connection = Some(growth / results.connections as f64);
            }
        }
        Report {
            schema: SCHEMA,
            scenario,
            target,
            parameters,
            results,
            processes,
            derived,
        }
    }

    /// The human table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let r = &self.results;
        let _ = writeln!(s, "scenario   {}  (target {})", self.scenario, self.target);
        let _ = writeln!(s, "parameters {}", self.parameters);
        let _ = writeln!(
            s,
            "window     {:.2} s   connections {}   operations {} ({:.1}/s)   errors {}",
            r.elapsed_s, r.connections, r.operations, r.operations_per_s, r.errors
        );
        let _ = writeln!(
            s,
            "bytes      up {}   down {}   {:.3} Gbit/s",
            r.bytes_up, r.bytes_down, r.gbit_per_s
        );
        if let Some(m) = r.bytes_match {
            let _ = writeln!(s, "byte check {}", if m { "ok" } else { "MISMATCH" });
        }
        if let Some(a) = r.alive_after_hold {
            let _ = writeln!(s, "alive      {a} after hold");
        }
        let lat = [
            ("latency", &r.latency_us),
            ("direct", &r.direct_latency_us),
            ("burst", &r.burst_latency_us),
        ];
        if lat.iter().any(|(_, p)| p.is_some()) {
            let _ = writeln!(
                s,
                "{:<10} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                "(us)", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
            );
            for (name, p) in lat {
                if let Some(p) = p {
                    let _ = writeln!(
                        s,
                        "{:<10} {:>9} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                        name, p.count, p.mean, p.p50, p.p90, p.p99, p.p99_9, p.max
                    );
                }
            }
        }
        for p in &self.processes {
            let _ = writeln!(
                s,
                "pid {:<6}  cpu {:.3} s   rss {} -> {} bytes",
                p.pid, p.cpu_s, p.rss_before_bytes, p.rss_after_bytes
            );
        }
        let d = &self.derived;
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        if d.cpu_s.is_some() {
            let _ = writeln!(
                s,
                "derived    CPU-s/GB {}   CPU-us/conn {}   CPU-us/op {}   RSS B/conn {}",
                opt(d.cpu_s_per_gb),
                opt(d.cpu_us_per_connection),
                opt(d.cpu_us_per_operation),
                opt(d.rss_bytes_per_connection)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::from_histogram(&h).unwrap();
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
        assert!(Percentiles::from_histogram(&new_histogram()).is_none());
    }

    #[test]
    fn derived_figures() {
        let results = Results {
            elapsed_s: 2.0,
            connections: 1000,
            operations: 1000,
            bytes_up: 1_000_000_000,
            bytes_down: 1_000_000_000,
            ..Results::default()
        };
        let procs = vec![ProcessReport {
            pid: 1,
            cpu_s: 0.5,
            rss_before_bytes: 1_000_000,
            rss_after_bytes: 4_000_000,
        }];
        let r = Report::new("x", "t".into(), serde_json::json!({}), results, procs, true);
        assert_eq!(r.derived.cpu_s_per_gb, Some(0.25));
        assert_eq!(r.derived.cpu_us_per_connection, Some(500.0));
        assert_eq!(r.derived.rss_bytes_per_connection, Some(3000.0));
        assert_eq!(r.results.gbit_per_s, 8.0);
        assert!(r.to_table().contains("CPU-s/GB 0.250"));
    }
}
