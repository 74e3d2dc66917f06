//! `login-launch`: the broker benchmark of the broker issue (issue 4). Login + launch
//! through a broker from gateway links, with a generated farm of N users and M hosts,
//! measured next to the cost of one password check.
//!
//! Steps, all in one run so that every figure shares the machine's state:
//! 1. a farm directory: `gatehouse farm init`, certificates for the broker, one gateway per
//!    site and one agent per host; the farm file; the users file (argon2id at the default
//!    cost of `gatehouse user add`);
//! 2. the password check alone: [`UserDb::verify`] of one user, single-threaded, in this
//!    process, before the broker runs (the floor of a login, and with the broker's
//!    `hash_threads` the bound on logins per second);
//! 3. `gatehouse run` as the broker, and stand-in host agents reporting varied loads until
//!    every host is up;
//! 4. phase `login_launch`: closed-loop clients log in as random users and launch a resource
//!    of their gateway's site in gateway mode (a ticket), over one link per gateway;
//! 5. phase `launch_only`: the same clients, each logged in beforehand as a few users,
//!    only launch: the broker's cost without the hash.
//!
//! Owns the scenario and its report; the farm files are [`farm`]'s, the protocol client
//! [`link`]'s, the load [`load`]'s.

pub mod farm;
pub mod link;
pub mod load;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use gatehouse_control::broker::{AuthOutcome, UserDb};
use gatehouse_control::frame::Role;

use self::farm::{FarmDir, Hashing, Layout};
use self::link::MemberIdentity;
use self::load::{Agents, Mode, Phase, Tally};
use crate::procstat;
use crate::report::Percentiles;
use crate::BenchError;

/// Schema identifier of the report.
pub const SCHEMA: &str = "gatehouse-bench/login-launch-1";

/// Parameters of `login-launch`.
#[derive(Clone, Debug)]
pub struct Params {
    /// The farm's size.
    pub layout: Layout,
    /// The broker's `hash_threads`.
    pub hash_threads: usize,
    /// Clients in flight at once (spread over one gateway link per site).
    pub concurrency: usize,
    /// Load before each measured window.
    pub warmup: Duration,
    /// Each phase's measured window.
    pub duration: Duration,
    /// Launch-only phase: users each client logs in as beforehand.
    pub tokens_per_client: usize,
    /// Give every user their own hash (computed in parallel) instead of one shared hash.
    pub distinct_hashes: bool,
    /// Password checks timed alone.
    pub check_samples: usize,
    /// Seed of loads, users and resources.
    pub seed: u64,
    /// The gatehouse binary.
    pub gatehouse: PathBuf,
    /// Keep the farm in this directory instead of a temporary one.
    pub dir: Option<PathBuf>,
}

impl Params {
    /// The run of the benchmark: 10,000 users, 100 hosts in two sites, the broker's
    /// default two hash threads.
    pub fn full(gatehouse: PathBuf) -> Params {
        Params {
            layout: Layout {
                hosts: 100,
                sites: 2,
                users: 10_000,
            },
            hash_threads: 2,
            concurrency: 8,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            tokens_per_client: 16,
            distinct_hashes: false,
            check_samples: 20,
            seed: 1,
            gatehouse,
            dir: None,
        }
    }

    /// A run of a few seconds for the test suite: a small farm, short windows.
    pub fn quick(gatehouse: PathBuf) -> Params {
        Params {
            layout: Layout {
                hosts: 6,
                sites: 2,
                users: 200,
            },
            concurrency: 4,
            warmup: Duration::from_millis(300),
            duration: Duration::from_secs(1),
            tokens_per_client: 2,
            check_samples: 3,
            ..Params::full(gatehouse)
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "users": self.layout.users,
            "hosts": self.layout.hosts,
            "sites": self.layout.sites,
            "hash_threads": self.hash_threads,
            "concurrency": self.concurrency,
            "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.duration.as_secs_f64(),
            "tokens_per_client": self.tokens_per_client,
            "distinct_hashes": self.distinct_hashes,
            "check_samples": self.check_samples,
            "seed": self.seed,
            "gatehouse": self.gatehouse.display().to_string(),
        })
    }
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct LoginLaunchReport {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// Always `login-launch`.
    pub scenario: &'static str,
    /// Every parameter of the run.
    pub parameters: serde_json::Value,
    /// How long building the farm took.
    pub setup: Setup,
    /// One password check, alone.
    pub password_check: PasswordCheck,
    /// Login then launch.
    pub login_launch: PhaseReport,
    /// Launches with tokens from earlier logins.
    pub launch_only: PhaseReport,
    /// The figures against the baselines of the same run.
    pub ratios: Ratios,
    /// The machine's load around the run.
    pub machine: Machine,
}

/// Building the farm.
#[derive(Clone, Debug, Serialize)]
pub struct Setup {
    /// `farm init` and every `farm issue`.
    pub pki_s: f64,
    /// The users' hashes.
    pub hashing: Hashing,
    /// Starting the broker until its gateway port accepts.
    pub broker_start_s: f64,
    /// Starting the agents until the broker accepted a report of every host.
    pub hosts_up_s: f64,
}

/// One argon2id check timed alone (the broker's hash and parameters, in this process).
#[derive(Clone, Debug, Serialize)]
pub struct PasswordCheck {
    /// The PHC parameters of the checked hash (`m=...,t=...,p=...`).
    pub argon2_params: String,
    /// Checks timed: half before the broker starts, half after both phases.
    pub samples: usize,
    /// Median wall time, in ms.
    pub p50_ms: f64,
    /// Fastest, in ms.
    pub min_ms: f64,
    /// Slowest, in ms.
    pub max_ms: f64,
    /// Median CPU time of the checking thread, in ms: unlike the wall time, it does not
    /// grow when other processes take the CPU.
    pub cpu_p50_ms: f64,
    /// CPUs of this machine.
    pub cpus: usize,
    /// `min(hash_threads, cpus) / cpu_p50`: logins per second if the broker did nothing
    /// but check passwords on CPUs of its own.
    pub bound_logins_per_s: f64,
}

/// How busy the machine was (a shared, noisy machine makes every figure move).
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPUs.
    pub cpus: usize,
    /// 1-minute load average at the start.
    pub loadavg_start: Option<f64>,
    /// 1-minute load average at the end.
    pub loadavg_end: Option<f64>,
}

/// One phase's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    /// The measured window, in seconds.
    pub elapsed_s: f64,
    /// Logins answered `login_ok` in the window.
    pub logins: u64,
    /// Launches answered `launched` with a ticket in the window.
    pub launches: u64,
    /// `launches / elapsed_s`.
    pub launches_per_s: f64,
    /// Refusals and failures in the window.
    pub errors: u64,
    /// Those by reason (`wrong_password`, `no_host_available`, `timeout`, ...).
    pub error_reasons: BTreeMap<String, u64>,
    /// Logins before the window (the launch-only tokens).
    pub setup_logins: u64,
    /// Login latency in microseconds.
    pub login_latency_us: Option<Percentiles>,
    /// Launch latency in microseconds.
    pub launch_latency_us: Option<Percentiles>,
    /// From sending a login to receiving its launch's answer, in microseconds.
    pub login_launch_latency_us: Option<Percentiles>,
    /// The broker's CPU seconds over the window.
    pub broker_cpu_s: f64,
    /// Broker CPU milliseconds per launch.
    pub broker_cpu_ms_per_launch: Option<f64>,
    /// `broker_cpu_s / elapsed_s`: CPUs the broker kept busy.
    pub broker_cpus_busy: f64,
}

/// Ratios against the baselines measured in the same run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ratios {
    /// login+launch per second / the password-check bound.
    pub login_launch_vs_check_bound: Option<f64>,
    /// login+launch per second / launch-only per second.
    pub login_launch_vs_launch_only: Option<f64>,
    /// Login p50 / one check alone (wall times).
    pub login_p50_vs_check: Option<f64>,
    /// Broker CPU per login+launch / CPU of one check alone: the share of a login+launch
    /// that is not the hash is what lies above 1.
    pub broker_cpu_per_login_launch_vs_check: Option<f64>,
}

/// Runs the scenario; `progress` gets a line per step.
pub fn run(p: &Params, progress: &mut dyn FnMut(&str)) -> Result<LoginLaunchReport, BenchError> {
    p.layout.check()?;
    let loadavg_start = loadavg();
    if p.concurrency == 0 || p.hash_threads == 0 || p.hash_threads > 64 || p.tokens_per_client == 0 {
        return Err(BenchError::Usage(
            "--concurrency and --tokens-per-client must be at least 1, --hash-threads 1..=64".into(),
        ));
    }
    let dir = FarmDir::new(p.dir.as_deref(), &p.gatehouse)?;
    progress(&format!("farm in {}", dir.path().display()));

    let t = Instant::now();
    dir.make_pki(&p.layout)?;
    let pki_s = t.elapsed().as_secs_f64();
    progress(&format!(
        "certificates for 1 broker, {} gateways, {} hosts: {pki_s:.1} s",
        p.layout.sites, p.layout.hosts
    ));

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let distinct = if p.distinct_hashes { p.layout.users } else { 1 };
    let (hashes, hashing) = farm::make_hashes(p.layout.users, distinct, cpus)?;
    progress(&format!(
        "{} argon2id hash(es) on {} thread(s): {:.1} s (one: {:.1} ms; {} distinct would take ~{:.0} s)",
        hashing.distinct,
        hashing.threads,
        hashing.elapsed_s,
        hashing.one_hash_ms,
        p.layout.users,
        hashing.projected_all_distinct_s
    ));
    dir.write_files(&p.layout, &hashes)?;

    let db = UserDb::load(&dir.file("users.toml")).map_err(|e| BenchError::Usage(e.to_string()))?;
    let mut checks = time_checks(&db, p.check_samples.div_ceil(2))?;
    progress(&format!(
        "one password check: p50 {:.2} ms wall, {:.2} ms CPU",
        median(&mut checks.iter().map(|c| c.0).collect::<Vec<_>>()),
        median(&mut checks.iter().map(|c| c.1).collect::<Vec<_>>()),
    ));

    let t = Instant::now();
    let mut broker = dir.start_broker(p.hash_threads)?;
    let broker_start_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let agents = Agents::start(
        broker.agent_addr,
        dir.path(),
        &dir.ca_file(),
        p.layout.host_loads(p.seed),
    )
    .map_err(|e| BenchError::Usage(e.to_string()))?;
    let up_deadline = t + Duration::from_secs(30);
    while agents.reporting() < p.layout.hosts {
        if Instant::now() >= up_deadline || !broker.alive() {
            return Err(BenchError::NoProgress {
                target: broker.agent_addr,
                detail: format!(
                    "{} of {} hosts reporting after {:.0} s: {} {}",
                    agents.reporting(),
                    p.layout.hosts,
                    t.elapsed().as_secs_f64(),
                    agents.first_error.take(),
                    broker.log_tail()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let hosts_up_s = t.elapsed().as_secs_f64();
    progress(&format!(
        "broker up in {broker_start_s:.2} s; {} hosts reporting after {hosts_up_s:.2} s",
        p.layout.hosts
    ));

    let gateways: Vec<MemberIdentity> = (0..p.layout.sites)
        .map(|s| MemberIdentity::load(dir.path(), &dir.ca_file(), &Layout::gateway(s), Role::Gateway))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Usage(e.to_string()))?;
    let mut phase = Phase {
        broker: broker.gateway_addr,
        layout: p.layout.clone(),
        distinct_hashes: distinct,
        mode: Mode::LoginLaunch,
        concurrency: p.concurrency,
        warmup: p.warmup,
        duration: p.duration,
        seed: p.seed,
    };
    let pid = broker.pid();
    let run_phase = |phase: &Phase, broker: &mut farm::BrokerProcess| -> Result<PhaseReport, BenchError> {
        let mut cpu = (0.0, 0.0);
        let tally = load::run_phase(phase, &gateways, &mut |opening| {
            let s = procstat::sample(pid).map_or(0.0, |s| s.cpu_s);
            if opening {
                cpu.0 = s;
            } else {
                cpu.1 = s;
            }
        })
        .map_err(|e| BenchError::NoProgress {
            target: phase.broker,
            detail: format!("{e} {}", broker.log_tail()),
        })?;
        if !broker.alive() {
            return Err(BenchError::TargetDead {
                target: phase.broker,
                reason: format!("the broker exited: {}", broker.log_tail()),
            });
        }
        if tally.launches == 0 {
            return Err(BenchError::NoProgress {
                target: phase.broker,
                detail: format!("no launch completed; errors {:?}", tally.errors),
            });
        }
        Ok(phase_report(&tally, (cpu.1 - cpu.0).max(0.0)))
    };
    let login_launch = run_phase(&phase, &mut broker)?;
    progress(&format!(
        "login+launch: {:.1} launches/s, {} errors",
        login_launch.launches_per_s, login_launch.errors
    ));
    phase.mode = Mode::LaunchOnly {
        tokens: p.tokens_per_client,
    };
    let launch_only = run_phase(&phase, &mut broker)?;
    progress(&format!(
        "launch only: {:.1} launches/s, {} errors",
        launch_only.launches_per_s, launch_only.errors
    ));
    drop(agents);
    drop(broker);
    checks.extend(time_checks(&db, p.check_samples / 2)?);
    let password_check = summarize_checks(&db, &checks, p.hash_threads, cpus);
    progress(&format!(
        "one password check ({}): p50 {:.2} ms wall, {:.2} ms CPU; bound {:.1} logins/s",
        password_check.argon2_params,
        password_check.p50_ms,
        password_check.cpu_p50_ms,
        password_check.bound_logins_per_s
    ));

    let ratios = ratios(&password_check, &login_launch, &launch_only);
    Ok(LoginLaunchReport {
        schema: SCHEMA,
        scenario: "login-launch",
        parameters: p.to_json(),
        setup: Setup {
            pki_s,
            hashing,
            broker_start_s,
            hosts_up_s,
        },
        password_check,
        login_launch,
        launch_only,
        ratios,
        machine: Machine {
            cpus,
            loadavg_start,
            loadavg_end: loadavg(),
        },
    })
}

/// Times `samples` checks of user 0's right password against the users file as the broker
/// loads it: (wall ms, thread CPU ms) each.
fn time_checks(db: &UserDb, samples: usize) -> Result<Vec<(f64, f64)>, BenchError> {
    let user = Layout::user(0);
    let password = farm::password(0);
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples.max(1) {
        let (wall, cpu) = (Instant::now(), thread_cpu_s());
        let outcome = db.verify(&user, &password);
        out.push((wall.elapsed().as_secs_f64() * 1e3, (thread_cpu_s() - cpu) * 1e3));
        if !matches!(outcome, AuthOutcome::Accepted { .. }) {
            return Err(BenchError::Usage(format!(
                "the generated users file refuses {user}: {outcome:?}"
            )));
        }
    }
    Ok(out)
}

fn summarize_checks(db: &UserDb, checks: &[(f64, f64)], hash_threads: usize, cpus: usize) -> PasswordCheck {
    let hash = db
        .user(&Layout::user(0))
        .map(|u| u.hash().to_string())
        .unwrap_or_default();
    let mut wall: Vec<f64> = checks.iter().map(|c| c.0).collect();
    let mut cpu: Vec<f64> = checks.iter().map(|c| c.1).collect();
    let p50_ms = median(&mut wall);
    let cpu_p50_ms = median(&mut cpu);
    PasswordCheck {
        argon2_params: hash.split('$').nth(3).unwrap_or("?").to_string(),
        samples: wall.len(),
        p50_ms,
        min_ms: wall.first().copied().unwrap_or(0.0),
        max_ms: wall.last().copied().unwrap_or(0.0),
        cpu_p50_ms,
        cpus,
        bound_logins_per_s: if cpu_p50_ms > 0.0 {
            hash_threads.min(cpus) as f64 * 1e3 / cpu_p50_ms
        } else {
            0.0
        },
    }
}

/// Sorts `v` and returns its median (0 when empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// CPU seconds of the calling thread (CLOCK_THREAD_CPUTIME_ID, POSIX).
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The 1-minute load average from /proc/loadavg.
pub(crate) fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn phase_report(t: &Tally, broker_cpu_s: f64) -> PhaseReport {
    let launches_per_s = if t.elapsed_s > 0.0 {
        t.launches as f64 / t.elapsed_s
    } else {
        0.0
    };
    PhaseReport {
        elapsed_s: t.elapsed_s,
        logins: t.logins,
        launches: t.launches,
        launches_per_s,
        errors: t.error_count(),
        error_reasons: t.errors.clone(),
        setup_logins: t.setup_logins,
        login_latency_us: Percentiles::from_histogram(&t.login_ns),
        launch_latency_us: Percentiles::from_histogram(&t.launch_ns),
        login_launch_latency_us: Percentiles::from_histogram(&t.pair_ns),
        broker_cpu_s,
        broker_cpu_ms_per_launch: (t.launches > 0).then(|| broker_cpu_s * 1e3 / t.launches as f64),
        broker_cpus_busy: if t.elapsed_s > 0.0 {
            broker_cpu_s / t.elapsed_s
        } else {
            0.0
        },
    }
}

/// The ratios; `None` where a denominator is zero.
pub fn ratios(check: &PasswordCheck, ll: &PhaseReport, lo: &PhaseReport) -> Ratios {
    let div = |a: f64, b: f64| (b > 0.0 && a.is_finite()).then(|| a / b);
    Ratios {
        login_launch_vs_check_bound: div(ll.launches_per_s, check.bound_logins_per_s),
        login_launch_vs_launch_only: div(ll.launches_per_s, lo.launches_per_s),
        login_p50_vs_check: ll.login_latency_us.and_then(|l| div(l.p50 / 1e3, check.p50_ms)),
        broker_cpu_per_login_launch_vs_check: ll
            .broker_cpu_ms_per_launch
            .and_then(|c| div(c, check.cpu_p50_ms)),
    }
}

impl LoginLaunchReport {
    /// Every refusal and failure of both phases.
    pub fn errors(&self) -> u64 {
        self.login_launch.errors + self.launch_only.errors
    }

    /// The human table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let p = &self.parameters;
        let _ = writeln!(
            s,
            "scenario   login-launch  ({} users, {} hosts, {} sites; broker hash_threads {}, {} clients)",
            p["users"], p["hosts"], p["sites"], p["hash_threads"], p["concurrency"]
        );
        let h = &self.setup.hashing;
        let _ = writeln!(
            s,
            "setup      certificates {:.1} s   hashes {} in {:.1} s on {} threads (one {:.1} ms; all {} distinct ~{:.0} s)   broker {:.2} s   hosts up {:.2} s",
            self.setup.pki_s,
            h.distinct,
            h.elapsed_s,
            h.threads,
            h.one_hash_ms,
            p["users"],
            h.projected_all_distinct_s,
            self.setup.broker_start_s,
            self.setup.hosts_up_s
        );
        let c = &self.password_check;
        let _ = writeln!(
            s,
            "check      argon2id {}: p50 {:.2} ms wall (min {:.2}, max {:.2}, {} alone), {:.2} ms CPU   bound min({}, {} cpus) / CPU = {:.1} logins/s",
            c.argon2_params,
            c.p50_ms,
            c.min_ms,
            c.max_ms,
            c.samples,
            c.cpu_p50_ms,
            p["hash_threads"],
            c.cpus,
            c.bound_logins_per_s
        );
        for (name, ph) in [
            ("login+launch", &self.login_launch),
            ("launch only", &self.launch_only),
        ] {
            let _ = writeln!(
                s,
                "{name:<12} {:.1} s: {} launches ({:.1}/s), {} logins, errors {}{}   broker CPU {:.2} s ({:.2} CPUs busy, {} ms/launch)",
                ph.elapsed_s,
                ph.launches,
                ph.launches_per_s,
                ph.logins,
                ph.errors,
                if ph.error_reasons.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", ph.error_reasons)
                },
                ph.broker_cpu_s,
                ph.broker_cpus_busy,
                ph.broker_cpu_ms_per_launch.map_or("-".into(), |v| format!("{v:.3}"))
            );
        }
        let _ = writeln!(
            s,
            "{:<22} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (us)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        let rows = [
            ("login", self.login_launch.login_latency_us),
            ("launch", self.login_launch.launch_latency_us),
            ("login+launch", self.login_launch.login_launch_latency_us),
            ("launch (launch only)", self.launch_only.launch_latency_us),
        ];
        for (name, l) in rows {
            if let Some(l) = l {
                let _ = writeln!(
                    s,
                    "{name:<22} {:>8} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
                    l.count, l.p50, l.p90, l.p99, l.p99_9, l.max
                );
            }
        }
        let r = &self.ratios;
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            s,
            "ratios     login+launch/check bound {}   login+launch/launch-only {}   login p50/check {}   broker CPU per login+launch/check {}",
            f(r.login_launch_vs_check_bound),
            f(r.login_launch_vs_launch_only),
            f(r.login_p50_vs_check),
            f(r.broker_cpu_per_login_launch_vs_check)
        );
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

    fn phase(launches_per_s: f64, login_p50_us: Option<f64>, cpu_ms: Option<f64>) -> PhaseReport {
        PhaseReport {
            elapsed_s: 1.0,
            logins: 0,
            launches: launches_per_s as u64,
            launches_per_s,
            errors: 0,
            error_reasons: BTreeMap::new(),
            setup_logins: 0,
            login_latency_us: login_p50_us.map(|p50| Percentiles {
                count: 1,
                p50,
                ..Percentiles::default()
            }),
            launch_latency_us: None,
            login_launch_latency_us: None,
            broker_cpu_s: 0.0,
            broker_cpu_ms_per_launch: cpu_ms,
            broker_cpus_busy: 0.0,
        }
    }

    #[test]
    fn ratios_against_the_check_and_launch_only() {
        let check = PasswordCheck {
            argon2_params: "m=19456,t=2,p=1".into(),
            samples: 3,
            p50_ms: 20.0,
            min_ms: 19.0,
            max_ms: 25.0,
            cpu_p50_ms: 20.0,
            cpus: 2,
            bound_logins_per_s: 100.0,
        };
        let r = ratios(
            &check,
            &phase(80.0, Some(30_000.0), Some(25.0)),
            &phase(1600.0, None, None),
        );
        assert_eq!(r.login_launch_vs_check_bound, Some(0.8));
        assert_eq!(r.login_launch_vs_launch_only, Some(0.05));
        assert_eq!(r.login_p50_vs_check, Some(1.5));
        assert_eq!(r.broker_cpu_per_login_launch_vs_check, Some(1.25));
        let none = ratios(&check, &phase(80.0, None, None), &phase(0.0, None, None));
        assert_eq!(none.login_launch_vs_launch_only, None);
        assert_eq!(none.login_p50_vs_check, None);
    }

    #[test]
    fn thread_cpu_time_counts_work_not_sleep() {
        let t = thread_cpu_s();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_s() - t;
        assert!(slept < 0.02, "sleeping cost {slept} s of CPU");
        let t = thread_cpu_s();
        let end = Instant::now() + Duration::from_millis(30);
        let mut x = 0u64;
        while Instant::now() < end {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0 && thread_cpu_s() - t > 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}
