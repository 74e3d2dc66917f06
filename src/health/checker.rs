//! The checker: one thread per target, probing on a fixed start-to-start schedule.
//!
//! Owns the probe threads, the per-target [`HealthTracker`]s and their counters. Reports each
//! change of verdict through the `on_change` callback (called on the target's thread) and logs
//! it. Takes failed real connects from the data plane through [`PassiveReporter`]. Does not
//! touch pools or workers: whoever receives the events publishes the new snapshot.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use rustls::ClientConfig;

use super::outcome::{ProbeFailure, ProbeOutcome};
use super::probe::{probe_with, tls_verify};
use super::spec::CheckSpec;
use super::tracker::{Health, HealthTracker, Transition};

/// One backend to check.
#[derive(Debug, Clone)]
pub struct Target {
    /// The caller's handle for this backend, returned in events (opaque to the checker).
    pub id: usize,
    /// Name for logs.
    pub name: String,
    /// Where to probe (already resolved).
    pub addr: SocketAddr,
    /// How to probe; usually shared by every backend of a pool.
    pub spec: Arc<CheckSpec>,
    /// Verdict before the first probe (e.g. the verdict of the previous checker on reload).
    pub initial: Health,
}

/// A change of verdict for one target, passed to `on_change`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// [`Target::id`].
    pub id: usize,
    /// [`Target::name`].
    pub name: String,
    /// [`Target::addr`].
    pub addr: SocketAddr,
    /// From, to and why.
    pub transition: Transition,
    /// The outcome that tipped the verdict: the last probe's, or for a passive transition
    /// the failure the data plane reported.
    pub outcome: ProbeOutcome,
}

/// Counters and last result of one target, readable at any time (for the metrics page).
#[derive(Debug)]
pub struct TargetStatus {
    /// [`Target::id`].
    pub id: usize,
    /// [`Target::name`].
    pub name: String,
    /// [`Target::addr`].
    pub addr: SocketAddr,
    health: AtomicU8,
    checks_run: AtomicU64,
    checks_failed: AtomicU64,
    failures_by_reason: [AtomicU64; ProbeFailure::REASONS.len()],
    passive_failures: AtomicU64,
    transitions: AtomicU64,
    last: Mutex<Option<(ProbeOutcome, Duration)>>,
}

impl TargetStatus {
    /// The current verdict.
    pub fn health(&self) -> Health {
        if self.health.load(Ordering::Relaxed) == HEALTH_UP {
            Health::Up
        } else {
            Health::Down
        }
    }

    /// Active probes completed.
    pub fn checks_run(&self) -> u64 {
        self.checks_run.load(Ordering::Relaxed)
    }

    /// Active probes that failed.
    pub fn checks_failed(&self) -> u64 {
        self.checks_failed.load(Ordering::Relaxed)
    }

    /// Failed active probes per [`ProbeFailure::reason`], every reason listed (zeros too).
    pub fn failures_by_reason(&self) -> Vec<(&'static str, u64)> {
        ProbeFailure::REASONS
            .iter()
            .zip(&self.failures_by_reason)
            .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Failed real connects reported by the data plane.
    pub fn passive_failures(&self) -> u64 {
        self.passive_failures.load(Ordering::Relaxed)
    }

    /// Changes of verdict so far.
    pub fn transitions(&self) -> u64 {
        self.transitions.load(Ordering::Relaxed)
    }

    /// The last active probe's outcome and how long it took, once one has run.
    pub fn last_check(&self) -> Option<(ProbeOutcome, Duration)> {
        self.last.lock().clone()
    }

    fn new(target: &Target) -> TargetStatus {
        let status = TargetStatus {
            id: target.id,
            name: target.name.clone(),
            addr: target.addr,
            health: AtomicU8::new(HEALTH_DOWN),
            checks_run: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            failures_by_reason: std::array::from_fn(|_| AtomicU64::new(0)),
            passive_failures: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            last: Mutex::new(None),
        };
        status.set_health(target.initial);
        status
    }

    fn set_health(&self, health: Health) {
        let v = match health {
            Health::Up => HEALTH_UP,
            Health::Down => HEALTH_DOWN,
        };
        self.health.store(v, Ordering::Relaxed);
    }

    fn record_check(&self, outcome: &ProbeOutcome, latency: Duration) {
        self.checks_run.fetch_add(1, Ordering::Relaxed);
        if let ProbeOutcome::Failed(failure) = outcome {
            self.checks_failed.fetch_add(1, Ordering::Relaxed);
            self.failures_by_reason[failure.reason_index()].fetch_add(1, Ordering::Relaxed);
        }
        *self.last.lock() = Some((outcome.clone(), latency));
    }
}

/// Lets the data plane report real connects to a target's tracker (passive checks).
///
/// Cheap to clone and to call from workers: a failure is one bounded channel send; a success
/// costs one relaxed atomic load unless failures are pending.
#[derive(Debug, Clone)]
pub struct PassiveReporter {
    lines: Arc<HashMap<usize, PassiveLine>>,
}

impl PassiveReporter {
    /// A real connect to target `id` failed with `failure` (see [`ProbeFailure::from_io`]).
    /// Unknown ids are ignored. Dropped, not blocked on, if the target's queue is full.
    pub fn connect_failed(&self, id: usize, failure: ProbeFailure) {
        if let Some(line) = self.lines.get(&id) {
            line.failing.store(true, Ordering::Relaxed);
            if let Err(TrySendError::Full(_)) = line.tx.try_send(Passive::Failed(failure)) {
                tracing::debug!(target_id = id, "passive health queue full, report dropped");
            }
        }
    }

    /// The data plane counted `consecutive` failed real connects to target `id` against its
    /// own threshold: mark it down now (if up), with `last` as the event's outcome. The
    /// tracker then needs `rise` good probes to bring it back, so route every passive
    /// verdict through here rather than flipping the backend's state elsewhere. False when
    /// the report could not be queued (unknown id, queue full): no verdict will follow.
    pub fn passive_down(&self, id: usize, consecutive: u32, last: ProbeFailure) -> bool {
        let Some(line) = self.lines.get(&id) else {
            return false;
        };
        if line.tx.try_send(Passive::Down(consecutive, last)).is_err() {
            tracing::warn!(target_id = id, "passive health queue full, down report dropped");
            return false;
        }
        true
    }

    /// A real connect to target `id` succeeded: restarts its passive failure count.
    pub fn connect_succeeded(&self, id: usize) {
        if let Some(line) = self.lines.get(&id) {
            if line.failing.load(Ordering::Relaxed) && line.failing.swap(false, Ordering::Relaxed) {
                let _ = line.tx.try_send(Passive::Succeeded);
            }
        }
    }
}

/// Running health checks for a set of targets.
pub struct HealthChecker {
    /// Dropping it disconnects every target thread's stop receiver.
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    statuses: Vec<Arc<TargetStatus>>,
    reporter: PassiveReporter,
}

impl HealthChecker {
    /// Starts one thread per target. Each probes first after a random jitter within its
    /// interval (so a pool's backends are not probed in lockstep), then every interval
    /// measured start to start; a probe that overruns the interval (timeout > interval) is
    /// followed by the next one at once. `on_change` runs on the target's thread for every
    /// change of verdict, after the change is logged.
    pub fn spawn(targets: Vec<Target>, on_change: Arc<dyn Fn(HealthEvent) + Send + Sync>) -> HealthChecker {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let seed = RandomState::new();
        let mut threads = Vec::with_capacity(targets.len());
        let mut statuses = Vec::with_capacity(targets.len());
        let mut lines = HashMap::with_capacity(targets.len());
        for target in targets {
            let status = Arc::new(TargetStatus::new(&target));
            let (passive_tx, passive_rx) = bounded(PASSIVE_QUEUE);
            let jitter = jitter(&seed, &target);
            let runner = TargetRunner {
                tracker: HealthTracker::new(target.spec.rise, target.spec.fall, target.initial),
                tls: None,
                status: status.clone(),
                on_change: on_change.clone(),
                target,
            };
            let id = runner.target.id;
            let stop_rx = stop_rx.clone();
            let spawned = thread::Builder::new()
                .name(format!("health-{id}"))
                .spawn(move || runner.run(jitter, stop_rx, passive_rx));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => tracing::error!(
                    backend = %status.name,
                    error = %e,
                    "cannot start health check thread; backend keeps its initial state"
                ),
            }
            lines.insert(
                id,
                PassiveLine {
                    tx: passive_tx,
                    failing: AtomicBool::new(false),
                },
            );
            statuses.push(status);
        }
        HealthChecker {
            stop: Some(stop_tx),
            threads,
            statuses,
            reporter: PassiveReporter {
                lines: Arc::new(lines),
            },
        }
    }

    /// Counters and last result per target, in the order the targets were given.
    pub fn statuses(&self) -> &[Arc<TargetStatus>] {
        &self.statuses
    }

    /// A handle for the data plane to report real connects.
    pub fn passive_reporter(&self) -> PassiveReporter {
        self.reporter.clone()
    }

    /// Stops every target thread and waits for them. Sleeping threads wake at once; a probe
    /// in flight finishes first (bounded by its timeout). No event is sent after this returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop = None;
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("targets", &self.statuses.len())
            .finish_non_exhaustive()
    }
}

/// Writes the Prometheus text of active health checks: one `(pool, backend, status)` per
/// checked backend. Counted since the checkers last started (a reload restarts them, and
/// Prometheus' rate() takes the reset in its stride).
pub fn render_metrics(out: &mut String, rows: &[(String, String, Arc<TargetStatus>)]) {
    use crate::metrics::{header, label};
    use std::fmt::Write as _;
    if rows.is_empty() {
        return;
    }
    let who = |pool: &str, backend: &str| format!("pool=\"{}\",backend=\"{}\"", label(pool), label(backend));
    header(
        out,
        "gatehouse_health_checks_total",
        "counter",
        "Active health checks made, by result.",
    );
    for (pool, backend, st) in rows {
        let (run, failed) = (st.checks_run(), st.checks_failed());
        let who = who(pool, backend);
        let _ = writeln!(
            out,
            "gatehouse_health_checks_total{{{who},result=\"ok\"}} {}",
            run - failed.min(run)
        );
        let _ = writeln!(
            out,
            "gatehouse_health_checks_total{{{who},result=\"failed\"}} {failed}"
        );
    }
    header(
        out,
        "gatehouse_health_check_failures_total",
        "counter",
        "Failed active health checks, by reason (reasons seen so far).",
    );
    for (pool, backend, st) in rows {
        let who = who(pool, backend);
        for (reason, n) in st.failures_by_reason().into_iter().filter(|(_, n)| *n > 0) {
            let _ = writeln!(
                out,
                "gatehouse_health_check_failures_total{{{who},reason=\"{reason}\"}} {n}"
            );
        }
    }
    header(
        out,
        "gatehouse_health_passive_failures_total",
        "counter",
        "Failed real connects the data plane reported to the health checker.",
    );
    for (pool, backend, st) in rows {
        let _ = writeln!(
            out,
            "gatehouse_health_passive_failures_total{{{}}} {}",
            who(pool, backend),
            st.passive_failures()
        );
    }
    header(
        out,
        "gatehouse_health_check_seconds",
        "gauge",
        "How long the last active health check took (to its verdict or its timeout).",
    );
    for (pool, backend, st) in rows {
        if let Some((_, took)) = st.last_check() {
            let _ = writeln!(
                out,
                "gatehouse_health_check_seconds{{{}}} {:.6}",
                who(pool, backend),
                took.as_secs_f64()
            );
        }
    }
}

const HEALTH_DOWN: u8 = 0;
const HEALTH_UP: u8 = 1;

/// Passive reports queued per target before new ones are dropped.
const PASSIVE_QUEUE: usize = 1024;

#[derive(Debug)]
struct PassiveLine {
    tx: Sender<Passive>,
    /// Set by a failure, cleared by the next success: successes only cost a message when
    /// they end a run of failures.
    failing: AtomicBool,
}

#[derive(Debug)]
enum Passive {
    Failed(ProbeFailure),
    Down(u32, ProbeFailure),
    Succeeded,
}

/// Everything one target's thread owns.
struct TargetRunner {
    target: Target,
    tracker: HealthTracker,
    /// Built on first use and rebuilt while it fails (e.g. a CA file not there yet).
    tls: Option<Arc<ClientConfig>>,
    status: Arc<TargetStatus>,
    on_change: Arc<dyn Fn(HealthEvent) + Send + Sync>,
}

impl TargetRunner {
    fn run(mut self, jitter: Duration, stop: Receiver<()>, passive: Receiver<Passive>) {
        let interval = self.target.spec.interval;
        let mut next = Instant::now() + jitter;
        loop {
            // Sleep until the next probe, serving passive reports meanwhile. Stop and the
            // passive queue are looked at before every probe, even one already due (a probe
            // that took its whole timeout, longer than the interval): otherwise a backend
            // that hangs every check would keep this thread probing and never stopping.
            loop {
                let left = next.saturating_duration_since(Instant::now());
                select! {
                    // A message or a disconnect: either way, stop.
                    recv(stop) -> _ => return,
                    recv(passive) -> msg => match msg {
                        Ok(report) => self.on_passive(report),
                        Err(_) => return,
                    },
                    default(left) => {}
                }
                if Instant::now() >= next {
                    break;
                }
            }
            let started = Instant::now();
            let outcome = self.probe_once();
            let latency = started.elapsed();
            self.status.record_check(&outcome, latency);
            if let ProbeOutcome::Failed(ProbeFailure::Local(msg)) = &outcome {
                tracing::warn!(
                    backend = %self.target.name,
                    addr = %self.target.addr,
                    health = %self.tracker.health(),
                    "health check not made, the verdict stands: {msg}"
                );
            } else if let ProbeOutcome::Failed(failure) = &outcome {
                tracing::debug!(
                    backend = %self.target.name,
                    addr = %self.target.addr,
                    reason = failure.reason(),
                    latency_ms = latency.as_millis() as u64,
                    "health check failed: {failure}"
                );
            }
            if let Some(transition) = self.tracker.record(&outcome) {
                self.emit(transition, outcome);
            }
            // Start to start; never schedule in the past, never skip ahead to catch up.
            next = (next + interval).max(Instant::now());
        }
    }

    fn probe_once(&mut self) -> ProbeOutcome {
        let spec = self.target.spec.clone();
        if let Some(verify) = tls_verify(&spec.kind) {
            if self.tls.is_none() {
                match verify.client_config() {
                    Ok(config) => self.tls = Some(config),
                    Err(msg) => return ProbeOutcome::Failed(ProbeFailure::Tls(msg)),
                }
            }
        }
        probe_with(
            self.target.addr,
            &spec.kind,
            self.tls.as_ref(),
            spec.timeout,
            spec.send_proxy,
        )
    }

    fn on_passive(&mut self, report: Passive) {
        match report {
            Passive::Succeeded => self.tracker.passive_success(),
            // A connect this host could not make says nothing about the backend.
            Passive::Failed(ProbeFailure::Local(_)) => {}
            Passive::Failed(failure) => {
                self.status.passive_failures.fetch_add(1, Ordering::Relaxed);
                if let Some(transition) = self.tracker.passive_failure() {
                    self.emit(transition, ProbeOutcome::Failed(failure));
                }
            }
            Passive::Down(consecutive, last) => {
                if let Some(transition) = self.tracker.passive_down(consecutive) {
                    self.emit(transition, ProbeOutcome::Failed(last));
                }
            }
        }
    }

    fn emit(&self, transition: Transition, outcome: ProbeOutcome) {
        let t = &self.target;
        match transition.to {
            Health::Down => tracing::warn!(
                backend = %t.name, addr = %t.addr, from = %transition.from, to = %transition.to,
                "backend is down: {}", transition.reason
            ),
            Health::Up => tracing::info!(
                backend = %t.name, addr = %t.addr, from = %transition.from, to = %transition.to,
                "backend is up: {}", transition.reason
            ),
        }
        self.status.set_health(transition.to);
        self.status.transitions.fetch_add(1, Ordering::Relaxed);
        (self.on_change)(HealthEvent {
            id: t.id,
            name: t.name.clone(),
            addr: t.addr,
            transition,
            outcome,
        });
    }
}

/// A random delay in `[0, interval)`, different per target and per process.
fn jitter(seed: &RandomState, target: &Target) -> Duration {
    let mut h = seed.build_hasher();
    target.id.hash(&mut h);
    target.addr.hash(&mut h);
    // 53 random bits as a fraction in [0, 1).
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    target.spec.interval.mul_f64(fraction)
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
