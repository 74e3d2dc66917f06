//! The report of `launch`: its JSON schema ([`super::SCHEMA`]), the figures against the
//! direct path (added latency, ratios) and the human table. No I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::load::{PathKind, PingTally};
use super::rig::SetupTimes;
use super::storm_report::StormReport;
use crate::login_launch::Machine;
use crate::report::Percentiles;

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct LaunchReport {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// Always `launch`.
    pub scenario: &'static str,
    /// Every parameter of the run.
    pub parameters: serde_json::Value,
    /// How long building the rig took.
    pub setup: SetupTimes,
    /// Phase A, one entry per path, `direct` first.
    pub open_rate: Vec<OpenPathReport>,
    /// Phase B, one entry per path, `direct` first.
    pub latency: Vec<LatencyPathReport>,
    /// Phase C, the logon storm through the HALB (null when not run).
    pub storm: Option<StormReport>,
    /// The machine's load around the run.
    pub machine: Machine,
}

/// Phase A on one path.
#[derive(Clone, Debug, Serialize)]
pub struct OpenPathReport {
    /// The path.
    pub path: PathKind,
    /// Its first hop.
    pub target: String,
    /// The measured window, in seconds.
    pub elapsed_s: f64,
    /// Iterations completed in the window (tunnels opened and echoed; connections for
    /// `direct`).
    pub opens: u64,
    /// `opens / elapsed_s`.
    pub opens_per_s: f64,
    /// Failures in the window.
    pub errors: u64,
    /// Those by reason (`launch_refused_503_no_host_available`, `tunnel_io`, ...).
    pub error_reasons: BTreeMap<String, u64>,
    /// The first failure of the path's run, warmup included.
    pub first_error: Option<String>,
    /// Launch + tunnel + first echo (direct: connect + echo), in microseconds.
    pub latency_us: Option<Percentiles>,
    /// The launch call alone, in microseconds.
    pub launch_latency_us: Option<Percentiles>,
    /// Tunnel connect (and TLS handshake) to the `101`, in microseconds.
    pub tunnel_latency_us: Option<Percentiles>,
    /// CPU microseconds per open of each process under test over the window.
    pub cpu_us_per_open: BTreeMap<String, f64>,
    /// `opens_per_s` / that of `direct`.
    pub rate_vs_direct: Option<f64>,
    /// p50 latency / that of `direct`.
    pub p50_vs_direct: Option<f64>,
    /// p99 latency / that of `direct`.
    pub p99_vs_direct: Option<f64>,
}

/// Phase B on one path.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyPathReport {
    /// The path.
    pub path: PathKind,
    /// Closed loop (one message in flight), in microseconds.
    pub closed_loop_us: Option<Percentiles>,
    /// Closed loop minus `direct`, per percentile.
    pub closed_loop_added_us: Option<Added>,
    /// Closed loop / `direct`, per percentile.
    pub closed_loop_vs_direct: Option<Added>,
    /// Open loop at `rate`, from the intended send time, in microseconds.
    pub open_loop_us: Option<Percentiles>,
    /// Open loop minus `direct`, per percentile.
    pub open_loop_added_us: Option<Added>,
    /// Open loop / `direct`, per percentile.
    pub open_loop_vs_direct: Option<Added>,
    /// Open loop: messages sent in the window.
    pub open_loop_sent: u64,
    /// Open loop: echoes of those received.
    pub open_loop_received: u64,
}

/// A difference or a ratio at three percentiles.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Added {
    /// At p50.
    pub p50: f64,
    /// At p99.
    pub p99: f64,
    /// At p99.9.
    pub p99_9: f64,
}

impl Added {
    /// `path - direct` per percentile.
    pub fn minus(path: &Percentiles, direct: &Percentiles) -> Added {
        Added {
            p50: path.p50 - direct.p50,
            p99: path.p99 - direct.p99,
            p99_9: path.p99_9 - direct.p99_9,
        }
    }

    /// `path / direct` per percentile; `None` if a direct percentile is 0.
    pub fn ratio(path: &Percentiles, direct: &Percentiles) -> Option<Added> {
        (direct.p50 > 0.0 && direct.p99 > 0.0 && direct.p99_9 > 0.0).then(|| Added {
            p50: path.p50 / direct.p50,
            p99: path.p99 / direct.p99,
            p99_9: path.p99_9 / direct.p99_9,
        })
    }
}

/// Fills the `*_vs_direct` ratios of every path from the `direct` entry.
pub fn add_open_ratios(reports: &mut [OpenPathReport]) {
    let Some(direct) = reports.iter().find(|r| r.path == PathKind::Direct).cloned() else {
        return;
    };
    let div = |a: f64, b: f64| (b > 0.0 && a.is_finite()).then(|| a / b);
    for r in reports.iter_mut() {
        r.rate_vs_direct = div(r.opens_per_s, direct.opens_per_s);
        if let (Some(l), Some(d)) = (r.latency_us, direct.latency_us) {
            r.p50_vs_direct = div(l.p50, d.p50);
            r.p99_vs_direct = div(l.p99, d.p99);
        }
    }
}

/// Phase B's entries, with added latency and ratios against `direct`.
pub fn latency_reports(tallies: &[(PathKind, PingTally)]) -> Vec<LatencyPathReport> {
    let pct = |t: &PingTally| {
        (
            Percentiles::from_histogram(&t.closed_ns),
            t.open_ns.as_ref().and_then(Percentiles::from_histogram),
        )
    };
    let direct = tallies
        .iter()
        .find(|(k, _)| *k == PathKind::Direct)
        .map(|(_, t)| pct(t));
    tallies
        .iter()
        .map(|(kind, t)| {
            let (closed, open) = pct(t);
            let (d_closed, d_open) = direct.unwrap_or((None, None));
            let both = |a: Option<Percentiles>, b: Option<Percentiles>| a.zip(b);
            LatencyPathReport {
                path: *kind,
                closed_loop_us: closed,
                closed_loop_added_us: both(closed, d_closed).map(|(a, b)| Added::minus(&a, &b)),
                closed_loop_vs_direct: both(closed, d_closed).and_then(|(a, b)| Added::ratio(&a, &b)),
                open_loop_us: open,
                open_loop_added_us: both(open, d_open).map(|(a, b)| Added::minus(&a, &b)),
                open_loop_vs_direct: both(open, d_open).and_then(|(a, b)| Added::ratio(&a, &b)),
                open_loop_sent: t.open_sent,
                open_loop_received: t.open_received,
            }
        })
        .collect()
}

/// One loop's percentiles, added latency and ratios of a path (for the table).
type LoopFigures = fn(&LatencyPathReport) -> (Option<Percentiles>, Option<Added>, Option<Added>);

impl LaunchReport {
    /// Failures of phase A (phase B stops at the first one) and users failed in phase C.
    pub fn errors(&self) -> u64 {
        self.open_rate.iter().map(|r| r.errors).sum::<u64>() + self.storm.as_ref().map_or(0, |s| s.failed)
    }

    /// The human table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let p = &self.parameters;
        let _ = writeln!(
            s,
            "scenario   launch  ({} echo hosts, {} clients, gw-1 and fw-1 with {} worker(s); {}-byte echo per tunnel; TLS 1.3 {})",
            p["hosts"],
            p["clients"],
            p["gateway_workers"],
            p["payload"],
            if p["tls_resume"] == true { "resumed" } else { "full handshakes" }
        );
        let st = &self.setup;
        let _ = writeln!(
            s,
            "setup      certificates {:.1} s   broker {:.2} s   hosts up {:.2} s   gateways healthy {:.2} s",
            st.pki_s, st.broker_start_s, st.hosts_up_s, st.gateways_up_s
        );
        if self.open_rate.is_empty() {
            let _ = writeln!(s, "open rate  not run (--storm-only)");
        } else {
            let _ = writeln!(
                s,
                "open rate  launch + tunnel (101) + first echo + close, {} s per path (direct: TCP connect + echo + close)",
                p["duration_s"]
            );
        }
        if !self.open_rate.is_empty() {
            let _ = writeln!(
            s,
            "{:<14} {:>8} {:>9} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>7} {:>7}  CPU us/open",
            "path",
            "opens",
            "per s",
            "errors",
            "p50 us",
            "p90",
            "p99",
            "max",
            "launch p50",
            "101 p50",
            "rate x",
            "p50 x",
            "p99 x"
        );
        }
        let f = |v: Option<f64>| match v {
            None => "-".to_string(),
            Some(v) if v.abs() < 0.1 => format!("{v:.4}"),
            Some(v) => format!("{v:.2}"),
        };
        let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        for r in &self.open_rate {
            let l = r.latency_us;
            let cpu: Vec<String> = r
                .cpu_us_per_open
                .iter()
                .map(|(n, v)| format!("{n} {v:.0}"))
                .collect();
            let _ = writeln!(
                s,
                "{:<14} {:>8} {:>9.1} {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>7} {:>7}  {}",
                r.path.name(),
                r.opens,
                r.opens_per_s,
                r.errors,
                us(l.map(|l| l.p50)),
                us(l.map(|l| l.p90)),
                us(l.map(|l| l.p99)),
                us(l.map(|l| l.max)),
                us(r.launch_latency_us.map(|l| l.p50)),
                us(r.tunnel_latency_us.map(|l| l.p50)),
                f(r.rate_vs_direct),
                f(r.p50_vs_direct),
                f(r.p99_vs_direct),
                cpu.join(", ")
            );
            if !r.error_reasons.is_empty() {
                let _ = writeln!(s, "{:<14} errors {:?}", "", r.error_reasons);
            }
        }
        if !self.latency.is_empty() {
            let _ = writeln!(
                s,
                "latency    {}-byte ping-pong through one held tunnel, {} s per loop; added = path - direct, x = path / direct",
                p["message"], p["latency_duration_s"]
            );
        }
        let loops: [(&str, LoopFigures); 2] = [
            ("closed loop", |r| {
                (r.closed_loop_us, r.closed_loop_added_us, r.closed_loop_vs_direct)
            }),
            ("open loop", |r| {
                (r.open_loop_us, r.open_loop_added_us, r.open_loop_vs_direct)
            }),
        ];
        for (name, get) in loops {
            if self.latency.iter().all(|r| get(r).0.is_none()) {
                continue;
            }
            let title = if name == "open loop" {
                format!("{name} {}/s", p["rate"])
            } else {
                name.to_string()
            };
            let _ = writeln!(
                s,
                "{:<22} {:>8} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8}   {:>6} {:>6} {:>6}",
                title,
                "count",
                "p50 us",
                "p99",
                "p99.9",
                "+p50",
                "+p99",
                "+p99.9",
                "x p50",
                "x p99",
                "x p99.9"
            );
            for r in &self.latency {
                let (l, add, x) = get(r);
                let Some(l) = l else { continue };
                let a = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
                let _ = writeln!(
                    s,
                    "  {:<20} {:>8} {:>8.1} {:>8.1} {:>8.1}   {:>8} {:>8} {:>8}   {:>6} {:>6} {:>6}",
                    r.path.name(),
                    l.count,
                    l.p50,
                    l.p99,
                    l.p99_9,
                    a(add.map(|v| v.p50)),
                    a(add.map(|v| v.p99)),
                    a(add.map(|v| v.p99_9)),
                    f(x.map(|v| v.p50)),
                    f(x.map(|v| v.p99)),
                    f(x.map(|v| v.p99_9))
                );
            }
        }
        if let Some(storm) = &self.storm {
            s.push_str(&storm.to_table());
        }
        let m = &self.machine;
        let la = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "machine    {} cpus, 1-min load average {} at start, {} at end",
            m.cpus,
            la(m.loadavg_start),
            la(m.loadavg_end)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::new_histogram;

    fn tally(closed_us: &[u64], open_us: Option<&[u64]>) -> PingTally {
        let hist = |v: &[u64]| {
            let mut h = new_histogram();
            for us in v {
                h.record(us * 1000).unwrap();
            }
            h
        };
        PingTally {
            closed_ns: hist(closed_us),
            open_ns: open_us.map(hist),
            open_sent: open_us.map_or(0, |v| v.len() as u64),
            open_received: open_us.map_or(0, |v| v.len() as u64),
        }
    }

    #[test]
    fn added_latency_and_ratios_are_against_direct() {
        let reports = latency_reports(&[
            (PathKind::Direct, tally(&[10, 10, 10], Some(&[20, 20]))),
            (PathKind::Gateway, tally(&[40, 40, 40], Some(&[50, 50]))),
            (PathKind::GatewaySsl, tally(&[60], None)),
        ]);
        assert_eq!(reports.len(), 3);
        let d = &reports[0];
        assert_eq!(d.closed_loop_added_us.unwrap().p50, 0.0);
        let g = &reports[1];
        let add = g.closed_loop_added_us.unwrap();
        assert!((add.p50 - 30.0).abs() < 0.1, "{add:?}");
        assert!((g.closed_loop_vs_direct.unwrap().p99 - 4.0).abs() < 0.01);
        assert!((g.open_loop_added_us.unwrap().p50 - 30.0).abs() < 0.1);
        assert!((g.open_loop_vs_direct.unwrap().p50 - 2.5).abs() < 0.01);
        let ssl = &reports[2];
        assert!(ssl.open_loop_us.is_none() && ssl.open_loop_added_us.is_none());
        // Without a direct entry there is nothing to subtract.
        let alone = latency_reports(&[(PathKind::Gateway, tally(&[40], None))]);
        assert!(alone[0].closed_loop_added_us.is_none());
    }
}
