//! The logon storm's part of the `launch` report (phase C): its JSON fields and its table.
//! No I/O: built from the storm's tally, the servers' counters and CPU samples.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::report::Added;
use super::storm::{StormPlan, StormTally};
use crate::report::Percentiles;

/// Phase C: the logon storm through the HALB.
#[derive(Clone, Debug, Serialize)]
pub struct StormReport {
    /// Users that were to arrive.
    pub users: u64,
    /// Arrivals per second (0: all at once).
    pub arrival_rate: f64,
    /// The HALB pool's algorithm.
    pub algorithm: String,
    /// Each session's hold after its desktop appeared, in seconds.
    pub hold_s: f64,
    /// Input events per second per session.
    pub event_rate: f64,
    /// Bytes per input event.
    pub input_bytes: u32,
    /// Bytes per update.
    pub update_bytes: u32,
    /// Users whose arrival happened.
    pub arrived: u64,
    /// Users logged on.
    pub logged_on: u64,
    /// Users whose tunnel was answered `101`.
    pub tunnels: u64,
    /// Users who saw their first update (their desktop).
    pub desktops: u64,
    /// Users whose hold completed with every update back.
    pub completed: u64,
    /// Users that failed at some step.
    pub failed: u64,
    /// Those by `step_reason`.
    pub failure_reasons: BTreeMap<String, u64>,
    /// The first failure's text.
    pub first_failure: Option<String>,
    /// First intended arrival -> the last session closed, in seconds.
    pub elapsed_s: f64,
    /// First intended arrival -> the last login answered, in seconds.
    pub login_span_s: f64,
    /// `logged_on / login_span_s`.
    pub logons_per_s: f64,
    /// Intended arrival -> first update through the tunnel, in microseconds.
    pub time_to_desktop_us: Option<Percentiles>,
    /// Intended arrival -> the client thread starting (the harness's own lateness).
    pub start_lag_us: Option<Percentiles>,
    /// Intended arrival -> login answered (connect, TLS, broker queue and check).
    pub arrival_to_login_us: Option<Percentiles>,
    /// The login call on a connected API connection.
    pub login_us: Option<Percentiles>,
    /// The resources call.
    pub resources_us: Option<Percentiles>,
    /// The launch call.
    pub launch_us: Option<Percentiles>,
    /// Tunnel connection (TCP, TLS through the HALB, upgrade) to the `101`.
    pub connect_101_us: Option<Percentiles>,
    /// What each gateway served in the storm, gw-1 first (the HALB's spread).
    pub per_gateway: Vec<GatewaySpread>,
    /// CPU seconds of each process under test (HALB, gateways, broker) during the storm.
    pub cpu_s: BTreeMap<String, f64>,
    /// Those per user logged on, in milliseconds.
    pub cpu_ms_per_logon: BTreeMap<String, f64>,
    /// The harness's own CPU per user logged on (clients, TLS, baseline), in milliseconds.
    pub client_cpu_ms_per_logon: Option<f64>,
    /// Events sent in the users' sessions.
    pub events_sent: u64,
    /// Updates received of those.
    pub events_received: u64,
    /// Event -> last byte of its update in the users' sessions, from the intended send.
    pub event_us: Option<Percentiles>,
    /// The same on the direct baseline sessions, during the storm.
    pub baseline_event_us: Option<Percentiles>,
    /// `event_us - baseline_event_us` per percentile.
    pub event_added_us: Option<Added>,
    /// Direct baseline sessions.
    pub baseline_sessions: usize,
    /// Events sent by the baseline sessions.
    pub baseline_sent: u64,
    /// Updates they received.
    pub baseline_received: u64,
    /// The first baseline failure, if any.
    pub baseline_failure: Option<String>,
    /// The broker's password checks: what bounds logins per second.
    pub password_check: PasswordBound,
    /// What a reader must know to read the figures (the broker bound passed, ...).
    pub notes: Vec<String>,
}

/// One gateway's share of the storm, from its own counters and the HALB's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GatewaySpread {
    /// The gateway.
    pub gateway: String,
    /// Logins it answered `200`.
    pub logins: u64,
    /// Tunnels it answered `101` (sessions).
    pub tunnels: u64,
    /// Connections the HALB sent it.
    pub halb_connections: u64,
}

/// The broker's password-check bound.
#[derive(Clone, Debug, Serialize)]
pub struct PasswordBound {
    /// One argon2id check at the users file's cost, timed in the harness, in ms.
    pub one_hash_ms: f64,
    /// The broker's hash threads.
    pub hash_threads: usize,
    /// CPUs of the machine.
    pub cpus: usize,
    /// The broker's CPU per logon in the storm (the password check dominates it), in ms.
    pub broker_cpu_ms_per_logon: Option<f64>,
    /// `min(hash_threads, cpus) * 1000 / broker_cpu_ms_per_logon` (`one_hash_ms` when the
    /// broker's CPU was not read): logins per second with the CPUs to itself.
    pub logins_per_s: f64,
}

impl PasswordBound {
    /// The bound for `hash_threads` threads on `cpus` CPUs.
    pub fn new(one_hash_ms: f64, hash_threads: usize, cpus: usize) -> PasswordBound {
        let lanes = hash_threads.min(cpus).max(1) as f64;
        PasswordBound {
            one_hash_ms,
            hash_threads,
            cpus,
            broker_cpu_ms_per_logon: None,
            logins_per_s: if one_hash_ms > 0.0 {
                lanes * 1e3 / one_hash_ms
            } else {
                f64::INFINITY
            },
        }
    }

    /// The bound from the broker's measured CPU per logon (steadier than a wall-clock
    /// hash timed on a shared machine).
    pub fn with_broker_cpu(mut self, ms_per_logon: Option<f64>) -> PasswordBound {
        if let Some(ms) = ms_per_logon.filter(|ms| *ms > 0.0) {
            self.broker_cpu_ms_per_logon = Some(ms);
            self.logins_per_s = self.hash_threads.min(self.cpus).max(1) as f64 * 1e3 / ms;
        }
        self
    }
}

/// CPU seconds of the processes under test and of the harness during the storm.
#[derive(Clone, Debug, Default)]
pub struct StormCpu {
    /// Per process under test.
    pub processes: BTreeMap<String, f64>,
    /// The harness itself.
    pub client_s: Option<f64>,
}

/// Builds the report from the storm's tally.
pub fn storm_report(
    plan: &StormPlan,
    algorithm: &str,
    tally: &StormTally,
    per_gateway: Vec<GatewaySpread>,
    cpu: &StormCpu,
    bound: PasswordBound,
) -> StormReport {
    let pct = Percentiles::from_histogram;
    let event = pct(&tally.event_ns);
    let baseline = pct(&tally.baseline_event_ns);
    let per_logon = |s: f64| (tally.logged_on > 0).then(|| s * 1e3 / tally.logged_on as f64);
    let logons_per_s = if tally.login_span_s > 0.0 {
        tally.logged_on as f64 / tally.login_span_s
    } else {
        0.0
    };
    let bound = bound.with_broker_cpu(
        cpu.processes
            .get(crate::login_launch::farm::BROKER_NODE)
            .and_then(|s| per_logon(*s)),
    );
    let mut notes = Vec::new();
    if plan.arrival_rate == 0.0 || plan.arrival_rate > bound.logins_per_s {
        notes.push(format!(
            "arrivals ({}) exceed the broker's password checks (argon2id, {:.1} ms of broker CPU per logon on {} hash threads, {} CPUs: about {:.0} logins/s): logins queue at the broker and time to desktop grows with the queue; that is what a logon storm is, not a failure of the path",
            if plan.arrival_rate == 0.0 {
                "all at once".to_string()
            } else {
                format!("{:.0}/s", plan.arrival_rate)
            },
            bound.broker_cpu_ms_per_logon.unwrap_or(bound.one_hash_ms),
            bound.hash_threads,
            bound.cpus,
            bound.logins_per_s
        ));
    }
    if tally.baseline_failure.is_some() || baseline.is_none() {
        notes.push("the direct baseline is missing or short: see baseline_failure".into());
    }
    StormReport {
        users: plan.users as u64,
        arrival_rate: plan.arrival_rate,
        algorithm: algorithm.to_string(),
        hold_s: plan.hold.as_secs_f64(),
        event_rate: plan.event_rate,
        input_bytes: plan.input_bytes,
        update_bytes: plan.update_bytes,
        arrived: tally.arrived,
        logged_on: tally.logged_on,
        tunnels: tally.tunnels,
        desktops: tally.desktops,
        completed: tally.completed,
        failed: tally.failed(),
        failure_reasons: tally.failures.clone(),
        first_failure: tally.first_failure.clone(),
        elapsed_s: tally.elapsed_s,
        login_span_s: tally.login_span_s,
        logons_per_s,
        time_to_desktop_us: pct(&tally.to_desktop_ns),
        start_lag_us: pct(&tally.start_lag_ns),
        arrival_to_login_us: pct(&tally.to_login_ns),
        login_us: pct(&tally.login_ns),
        resources_us: pct(&tally.resources_ns),
        launch_us: pct(&tally.launch_ns),
        connect_101_us: pct(&tally.connect_101_ns),
        per_gateway,
        cpu_s: cpu.processes.clone(),
        cpu_ms_per_logon: cpu
            .processes
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), per_logon(*s)?)))
            .collect(),
        client_cpu_ms_per_logon: cpu.client_s.and_then(per_logon),
        events_sent: tally.events_sent,
        events_received: tally.events_received,
        event_us: event,
        baseline_event_us: baseline,
        event_added_us: event.zip(baseline).map(|(e, b)| Added::minus(&e, &b)),
        baseline_sessions: plan.baseline_sessions,
        baseline_sent: tally.baseline_sent,
        baseline_received: tally.baseline_received,
        baseline_failure: tally.baseline_failure.clone(),
        password_check: bound,
        notes,
    }
}

/// The spread from the gateways' answer counters and the HALB's connection counters,
/// each read before and after the storm (`endpoint_status` keys as
/// [`super::rig::parse_answers`] makes them).
pub fn spread(
    gateways: &[String],
    answers_before: &[BTreeMap<String, u64>],
    answers_after: &[BTreeMap<String, u64>],
    halb_before: &BTreeMap<String, u64>,
    halb_after: &BTreeMap<String, u64>,
) -> Vec<GatewaySpread> {
    let diff = |a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>, k: &str| {
        b.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(a.get(k).copied().unwrap_or(0))
    };
    let empty = BTreeMap::new();
    gateways
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let before = answers_before.get(i).unwrap_or(&empty);
            let after = answers_after.get(i).unwrap_or(&empty);
            GatewaySpread {
                gateway: g.clone(),
                logins: diff(before, after, "login_200"),
                tunnels: diff(before, after, "tunnel_101"),
                halb_connections: diff(halb_before, halb_after, g),
            }
        })
        .collect()
}

impl StormReport {
    /// The table's lines for phase C.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let rate = if self.arrival_rate > 0.0 {
            format!("{:.0} users/s", self.arrival_rate)
        } else {
            "all at once".into()
        };
        let _ = writeln!(
            s,
            "logon storm  {} users arriving {rate} at the HALB ({}, TLS passthrough) -> gw-1 | gw-2: login, resources, launch, tunnel; then {:.0} s of {:.0} events/s ({} B up, {} B update down)",
            self.users, self.algorithm, self.hold_s, self.event_rate, self.input_bytes, self.update_bytes
        );
        let _ = writeln!(
            s,
            "  users      arrived {}  logged on {}  tunnels {}  desktops {}  completed {}  failed {}   logons {:.1}/s over {:.1} s",
            self.arrived,
            self.logged_on,
            self.tunnels,
            self.desktops,
            self.completed,
            self.failed,
            self.logons_per_s,
            self.login_span_s
        );
        if !self.failure_reasons.is_empty() {
            let _ = writeln!(s, "  failures   {:?}", self.failure_reasons);
            if let Some(f) = &self.first_failure {
                let _ = writeln!(s, "  first      {f}");
            }
        }
        let _ = writeln!(
            s,
            "  {:<30} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "ms (from the intended arrival)", "count", "p50", "p90", "p99", "max"
        );
        let rows: [(&str, Option<Percentiles>); 7] = [
            ("time to desktop", self.time_to_desktop_us),
            ("  arrival -> login answered", self.arrival_to_login_us),
            ("  login call", self.login_us),
            ("  resources call", self.resources_us),
            ("  launch call", self.launch_us),
            ("  connect -> 101", self.connect_101_us),
            ("  harness start lag", self.start_lag_us),
        ];
        for (name, p) in rows {
            let Some(p) = p else {
                let _ = writeln!(s, "  {name:<30} {:>8}", 0);
                continue;
            };
            let _ = writeln!(
                s,
                "  {name:<30} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                p.count,
                p.p50 / 1e3,
                p.p90 / 1e3,
                p.p99 / 1e3,
                p.max / 1e3
            );
        }
        let spread: Vec<String> = self
            .per_gateway
            .iter()
            .map(|g| {
                format!(
                    "{} {} logins, {} sessions, {} HALB conns",
                    g.gateway, g.logins, g.tunnels, g.halb_connections
                )
            })
            .collect();
        let _ = writeln!(s, "  spread     {}", spread.join(" | "));
        let cpu: Vec<String> = self
            .cpu_ms_per_logon
            .iter()
            .map(|(n, v)| format!("{n} {v:.2}"))
            .collect();
        let _ = writeln!(
            s,
            "  CPU ms per logon  {}{}",
            cpu.join(", "),
            self.client_cpu_ms_per_logon
                .map_or(String::new(), |c| format!("   (harness {c:.2})"))
        );
        let us = |p: Option<Percentiles>| {
            p.map_or("-".to_string(), |p| {
                format!("p50 {:.0} us, p99 {:.0} us ({} events)", p.p50, p.p99, p.count)
            })
        };
        let _ = writeln!(
            s,
            "  in-session event -> update   tunnel {}   direct {}   added {}",
            us(self.event_us),
            us(self.baseline_event_us),
            self.event_added_us.map_or("-".to_string(), |a| format!(
                "p50 {:.0} us, p99 {:.0} us",
                a.p50, a.p99
            ))
        );
        let _ = writeln!(
            s,
            "  password checks  {:.1} ms broker CPU per logon ({:.1} ms wall for one hash in the harness), {} threads on {} CPUs: bound ~{:.0} logins/s",
            self.password_check.broker_cpu_ms_per_logon.unwrap_or(f64::NAN),
            self.password_check.one_hash_ms,
            self.password_check.hash_threads,
            self.password_check.cpus,
            self.password_check.logins_per_s
        );
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, u64)]) -> BTreeMap<String, u64> {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn spread_is_the_difference_of_the_counters() {
        let gws = vec!["gw-1".to_string(), "gw-2".to_string()];
        let before = [map(&[("tunnel_101", 5), ("login_200", 2)]), map(&[])];
        let after = [
            map(&[("tunnel_101", 9), ("login_200", 6)]),
            map(&[("tunnel_101", 3), ("login_200", 1), ("tunnel_403", 7)]),
        ];
        let s = spread(
            &gws,
            &before,
            &after,
            &map(&[("gw-1", 10)]),
            &map(&[("gw-1", 18), ("gw-2", 4)]),
        );
        assert_eq!(
            s[0],
            GatewaySpread {
                gateway: "gw-1".into(),
                logins: 4,
                tunnels: 4,
                halb_connections: 8
            }
        );
        assert_eq!((s[1].logins, s[1].tunnels, s[1].halb_connections), (1, 3, 4));
    }

    #[test]
    fn the_password_bound_counts_threads_and_cpus() {
        let b = PasswordBound::new(28.0, 2, 2);
        assert!((b.logins_per_s - 71.4).abs() < 0.1, "{b:?}");
        assert!((PasswordBound::new(28.0, 2, 1).logins_per_s - 35.7).abs() < 0.1);
        let m = PasswordBound::new(50.0, 2, 2).with_broker_cpu(Some(20.0));
        assert!((m.logins_per_s - 100.0).abs() < 0.1, "{m:?}");
        assert_eq!(
            PasswordBound::new(50.0, 2, 2)
                .with_broker_cpu(Some(0.0))
                .logins_per_s,
            40.0
        );
    }
}
