//! `gatehouse-bench`: runs a stand-in session host or a load scenario and reports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use gatehouse_bench::capacity::{self, NodeSize, Ramp};
use gatehouse_bench::launch;
use gatehouse_bench::login_launch;
use gatehouse_bench::net::{parse_duration, parse_size, raise_nofile_limit};
use gatehouse_bench::plot::{LatencyPlot, Series};
use gatehouse_bench::report::Report;
use gatehouse_bench::scenario::{
    connect_rate, idle, rdp_profile, rr_latency, throughput, tls_handshake, Common,
};
use gatehouse_bench::standin::{Kind, StandIn};
use gatehouse_bench::tls::{TlsClient, TlsVersion, Verify};
use gatehouse_bench::BenchError;

/// Load-test harness and stand-in session hosts for gatehouse.
///
/// Point a scenario at a stand-in directly (the baseline) or through a proxy. With --pid the
/// CPU time (utime+stime from /proc/PID/stat) and RSS of the processes under test are reported
/// for the measured window, with CPU-s per GB and CPU-us per connection.
#[derive(Parser, Debug)]
#[command(name = "gatehouse-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a stand-in session host in the foreground (prints its address).
    Standin {
        /// echo, sink (also a source after a request header) or rdp.
        #[arg(long, default_value = "echo")]
        kind: Kind,
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Bulk bytes over N streams through a sink stand-in; checks every byte count.
    Throughput {
        #[command(flatten)]
        common: CommonArgs,
        /// Concurrent streams.
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// up, down or both.
        #[arg(long, default_value = "down")]
        direction: throughput::Direction,
        /// Bytes per stream in each active direction.
        #[arg(long, default_value_t = 1 << 30)]
        bytes_per_stream: u64,
        /// TLS to the target (a terminating proxy); with `both`, even streams go up, odd down.
        #[arg(long)]
        tls: bool,
        #[command(flatten)]
        tls_args: TlsArgs,
    },
    /// Short connections: connect, echo PAYLOAD bytes, close (echo stand-in).
    ConnectRate {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections in the measured window.
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        /// Connections in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Bytes echoed per connection.
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
    /// Open-loop ping-pong of small messages at a fixed rate (echo stand-in).
    RrLatency {
        #[command(flatten)]
        common: CommonArgs,
        /// Messages per second (all connections together).
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
        /// Connections sharing the rate.
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Message size in bytes (>= 16).
        #[arg(long, default_value_t = 32)]
        message: usize,
        /// Also send the same load straight to this address (the stand-in behind the
        /// target), interleaved in the same window: the baseline for the added latency.
        #[arg(long)]
        direct: Option<SocketAddr>,
        /// A sweep: run once per rate of this list (comma-separated) instead of --rate.
        #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
        rates: Vec<f64>,
        /// Write an SVG plot of p50/p99 against the rate.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Hold N idle connections (each checked with one echo); RSS per connection with --pid.
    Idle {
        #[command(flatten)]
        common: CommonArgs,
        /// Connections to hold.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// How long to hold them.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        hold: Duration,
        /// Workers opening connections.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Hold TLS connections (the target terminates TLS): memory per idle TLS tunnel.
        #[arg(long)]
        tls: bool,
        #[command(flatten)]
        tls_args: TlsArgs,
    },
    /// TLS handshakes (full or resumed), each followed by one echo, against a TLS-terminating
    /// proxy in front of an echo stand-in; with --pid, the proxy's CPU per handshake.
    TlsHandshake {
        #[command(flatten)]
        common: CommonArgs,
        /// Handshakes in the measured window.
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        /// Connections in flight at once (closed loop).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Bytes echoed after each handshake.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// full (no session cache) or resumed (each worker resumes its session).
        #[arg(long, default_value = "full")]
        mode: tls_handshake::Mode,
        /// Open loop at this many handshakes per second instead of a closed loop.
        #[arg(long)]
        rate: Option<f64>,
        #[command(flatten)]
        tls_args: TlsArgs,
    },
    /// RDP-like sessions (default: the "office" profile) against an rdp stand-in.
    RdpProfile {
        #[command(flatten)]
        common: CommonArgs,
        /// Concurrent sessions.
        #[arg(long, default_value_t = 100)]
        sessions: usize,
        #[command(flatten)]
        profile: ProfileArgs,
        /// TLS to the target (a terminating proxy in front of a plain stand-in).
        #[arg(long)]
        tls: bool,
        #[command(flatten)]
        tls_args: TlsArgs,
    },
    /// Ramps rdp-profile sessions until the added p99 passes an SLO or a machine limit;
    /// reports sessions held, CPU per session-second, memory per session and the capacity of
    /// a node of a given size.
    Capacity {
        /// What to measure: `l4` a proxy started by the caller (--target, --pid) with plain
        /// sessions; `halb-passthrough` and `gateway-ssl` start their own system under test
        /// (TLS stand-ins, `gatehouse run` from --gatehouse) and drive TLS sessions.
        #[arg(long, value_enum, default_value_t = capacity::Mode::L4)]
        mode: capacity::Mode,
        /// The proxy under test (l4 mode, required there).
        #[arg(long)]
        target: Option<SocketAddr>,
        /// The stand-in behind the target: each step also runs directly against it and the
        /// SLO applies to target minus direct (without it, to the latency through the target).
        #[arg(long)]
        direct: Option<SocketAddr>,
        /// Process(es) under test; the first one's open-files limit caps the ramp.
        #[arg(long = "pid", value_delimiter = ',')]
        pids: Vec<u32>,
        /// Largest added p99 latency a step may show.
        #[arg(long, default_value = "10ms", value_parser = parse_duration)]
        slo: Duration,
        /// Explicit session counts (comma-separated) instead of the geometric ramp.
        #[arg(long, value_delimiter = ',')]
        steps: Vec<usize>,
        /// First session count of the geometric ramp.
        #[arg(long, default_value_t = 250)]
        start: usize,
        /// Factor between steps of the geometric ramp.
        #[arg(long, default_value_t = 2.0)]
        growth: f64,
        /// Largest session count tried.
        #[arg(long, default_value_t = 100_000)]
        max_sessions: usize,
        /// Bisection steps between the last passing and the first failing count.
        #[arg(long, default_value_t = 2)]
        refine: u32,
        /// Re-runs of a step that failed on the SLO alone before it counts as failing; a re-run
        /// is judged on its count's lowest p99 through the target minus its lowest direct p99.
        #[arg(long, default_value_t = 1)]
        confirm: u32,
        /// Load before each measured window (>= --stagger).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: Duration,
        /// Measured window of each run.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        /// Local source addresses 127.0.0.1..=N.
        #[arg(long, default_value_t = 8)]
        sources: usize,
        /// Sockets the target holds per session (2 for a proxy).
        #[arg(long, default_value_t = 2)]
        target_fds_per_session: u64,
        /// Most sessions per client process (default: what its open-files limit allows);
        /// more sessions are spread over copies of this binary.
        #[arg(long)]
        sessions_per_process: Option<usize>,
        /// CPUs of the node to extrapolate to (with --node-mem).
        #[arg(long)]
        node_cpus: Option<f64>,
        /// Memory of the node to extrapolate to, e.g. 2GiB (with --node-cpus).
        #[arg(long, value_parser = parse_size)]
        node_mem: Option<u64>,
        /// Share of the node's CPUs the proxy may keep busy.
        #[arg(long, default_value_t = 0.8)]
        cpu_budget: f64,
        /// Share of the node's memory the proxy may use.
        #[arg(long, default_value_t = 0.8)]
        mem_budget: f64,
        #[command(flatten)]
        profile: ProfileArgs,
        /// Write an SVG plot of latency against sessions.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// TLS modes: the gatehouse binary (default: next to this one).
        #[arg(long)]
        gatehouse: Option<PathBuf>,
        /// TLS modes: stand-in session hosts behind the target.
        #[arg(long, default_value_t = 2)]
        hosts: usize,
        /// TLS modes: pin the process under test to this CPU.
        #[arg(long)]
        target_cpu: Option<usize>,
        /// gateway-ssl: users (one login each) and threads launching tickets.
        #[arg(long, default_value_t = 4)]
        api_threads: usize,
        /// Sessions opened per second at most: a step's stagger (and warmup) grows to
        /// sessions / rate when that is longer than --stagger [TLS modes default: 1000].
        #[arg(long)]
        open_rate: Option<f64>,
        /// TLS modes: build the farm in this directory and keep it.
        #[arg(long)]
        farm_dir: Option<PathBuf>,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The broker benchmark: generates a farm (users, hosts, certificates), starts
    /// `gatehouse run` as its broker and stand-in host agents, then gateway links log in and
    /// launch; reports launches/s and latencies next to the cost of one password check and
    /// a launch-only run.
    LoginLaunch {
        /// A run of a few seconds with a small farm (defaults below become 200 users,
        /// 6 hosts, 4 clients, 1 s windows); explicit options still apply.
        #[arg(long)]
        quick: bool,
        /// Users in the users file [default: 10000].
        #[arg(long)]
        users: Option<usize>,
        /// Session hosts [default: 100].
        #[arg(long)]
        hosts: Option<usize>,
        /// Sites, each with a gateway, a desktop pool and an application pool [default: 2].
        #[arg(long)]
        sites: Option<usize>,
        /// The broker's password-check threads [default: 2, the broker's default].
        #[arg(long)]
        hash_threads: Option<usize>,
        /// Clients in flight at once, over one link per site's gateway [default: 8].
        #[arg(long)]
        concurrency: Option<usize>,
        /// Load before each measured window [default: 2s].
        #[arg(long, value_parser = parse_duration)]
        warmup: Option<Duration>,
        /// Each phase's measured window [default: 10s].
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Launch-only phase: users each client logs in as beforehand [default: 16].
        #[arg(long)]
        tokens_per_client: Option<usize>,
        /// Hash every user's password (in parallel on every CPU) instead of sharing one
        /// hash; a check costs the same either way.
        #[arg(long)]
        distinct_hashes: bool,
        /// Password checks timed alone [default: 20].
        #[arg(long)]
        check_samples: Option<usize>,
        /// Seed of host loads, users and resources.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The gatehouse binary [default: `gatehouse` beside this binary].
        #[arg(long)]
        gatehouse: Option<PathBuf>,
        /// Build the farm in this directory and keep it (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The gateway benchmark: a farm with `gatehouse run` as broker, gateway gw-1 and
    /// forwarding gateway fw-1 in front of echo stand-in hosts; clients logged in once then
    /// open tunnels (launch + tunnel + one echo) on each path, and ping-pong through one held
    /// tunnel per path; reports opens/s and the latency added against a direct connection.
    /// Then the logon storm: users arriving at a HALB in front of gw-1 and gw-2 log in,
    /// launch, open a tunnel and hold an RDP-like session; reports time to desktop.
    Launch {
        /// A run of a few seconds (defaults below become 2 hosts, 2 clients, 1 round of 1 s
        /// windows, 0.5 s latency loops at 1000/s); explicit options still apply.
        #[arg(long)]
        quick: bool,
        /// Echo stand-in hosts [default: 4].
        #[arg(long)]
        hosts: Option<usize>,
        /// Client threads opening tunnels, each logged in once as its own user [default: 16].
        #[arg(long)]
        clients: Option<usize>,
        /// Load before each measured window [default: 2s].
        #[arg(long, value_parser = parse_duration)]
        warmup: Option<Duration>,
        /// Open-rate window per path [default: 10s].
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Latency window per path and loop [default: 10s].
        #[arg(long, value_parser = parse_duration)]
        latency_duration: Option<Duration>,
        /// Open-loop ping-pongs per second (0: closed loop only) [default: 2000].
        #[arg(long)]
        rate: Option<f64>,
        /// Ping-pong message size in bytes [default: 64].
        #[arg(long)]
        message: Option<usize>,
        /// Bytes echoed through each opened tunnel [default: 64].
        #[arg(long)]
        payload: Option<usize>,
        /// Rounds over the paths, each path taking its share of every window in turn
        /// [default: 2].
        #[arg(long)]
        rounds: Option<usize>,
        /// TLS clients resume sessions (tunnel connections skip the full handshake).
        #[arg(long)]
        tls_resume: bool,
        /// Local source addresses 127.0.0.1..=N [default: 8].
        #[arg(long)]
        sources: Option<usize>,
        /// Worker threads of gw-1 and of fw-1 [default: 1].
        #[arg(long)]
        gateway_workers: Option<usize>,
        /// Phase C, the logon storm through a HALB to gw-1 and gw-2: users arriving
        /// (0: no storm) [default: 400; quick: 12].
        #[arg(long)]
        storm_users: Option<usize>,
        /// Storm arrivals per second (0: all at once) [default: 50; quick: 40].
        #[arg(long)]
        storm_rate: Option<f64>,
        /// Each storm session's hold after its desktop appeared [default: 10s; quick: 1s].
        #[arg(long, value_parser = parse_duration)]
        storm_hold: Option<Duration>,
        /// Input events per second per storm session [default: 10].
        #[arg(long)]
        storm_event_rate: Option<f64>,
        /// Bytes per input event [default: 80].
        #[arg(long)]
        storm_input: Option<u32>,
        /// Bytes of the update answering each event [default: 1200].
        #[arg(long)]
        storm_update: Option<u32>,
        /// The HALB's algorithm: least-connections or source-hash [default: least-connections].
        #[arg(long)]
        storm_balance: Option<String>,
        /// Storm source addresses 127.0.0.1..=N, one per user in rotation [default: 254].
        #[arg(long)]
        storm_sources: Option<usize>,
        /// Direct sessions measuring the in-session baseline during the storm [default: 4].
        #[arg(long)]
        storm_baseline: Option<usize>,
        /// RDP-like stand-in hosts of the storm [default: 4; quick: 2].
        #[arg(long)]
        rdp_hosts: Option<usize>,
        /// Worker threads of the HALB [default: 1].
        #[arg(long)]
        halb_workers: Option<usize>,
        /// Run the logon storm alone (skip phases A and B).
        #[arg(long)]
        storm_only: bool,
        /// The gatehouse binary [default: `gatehouse` beside this binary].
        #[arg(long)]
        gatehouse: Option<PathBuf>,
        /// Build the farm in this directory and keep it (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the JSON report instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// One client process of a multi-process capacity step (started by `capacity`).
    #[command(hide = true)]
    CapacityWorker {
        /// The worker spec as JSON, or `-` to read it from stdin.
        #[arg(long)]
        spec: String,
    },
}

/// The rdp-profile session behaviour (defaults: the office profile).
#[derive(Args, Debug)]
struct ProfileArgs {
    /// Input events per second per session.
    #[arg(long, default_value_t = 10.0)]
    input_rate: f64,
    /// Bytes per input event.
    #[arg(long, default_value_t = 80)]
    input_bytes: u32,
    /// Mean screen update in bytes.
    #[arg(long, default_value_t = 1200)]
    update_mean: u32,
    /// Smallest update.
    #[arg(long, default_value_t = 200)]
    update_min: u32,
    /// Largest update.
    #[arg(long, default_value_t = 4000)]
    update_max: u32,
    /// Burst size in bytes (0: no bursts).
    #[arg(long, default_value_t = 61_440)]
    burst_bytes: u32,
    /// Time between bursts of a session.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    burst_interval: Duration,
    /// Sessions start evenly over this span.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    stagger: Duration,
    /// Event-loop threads per client process.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed of sizes and burst phases.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

impl ProfileArgs {
    fn params(&self, sessions: usize) -> rdp_profile::Params {
        rdp_profile::Params {
            sessions,
            input_rate: self.input_rate,
            input_bytes: self.input_bytes,
            update_mean: self.update_mean,
            update_min: self.update_min,
            update_max: self.update_max,
            burst_bytes: self.burst_bytes,
            burst_interval: self.burst_interval,
            stagger: self.stagger,
            threads: self.threads,
            seed: self.seed,
        }
    }
}

/// How TLS scenarios reach the target.
#[derive(Args, Debug)]
struct TlsArgs {
    /// CA certificate file (PEM) that verifies the target's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Do not verify the target's certificate (handshake signatures are still checked).
    #[arg(long)]
    insecure: bool,
    /// Name sent in SNI and verified.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// TLS version offered: 1.3 or 1.2.
    #[arg(long, default_value = "1.3")]
    tls_version: TlsVersion,
}

impl TlsArgs {
    fn verify(&self) -> Result<Verify, BenchError> {
        match (&self.ca, self.insecure) {
            (Some(ca), false) => Ok(Verify::CaFile(ca.clone())),
            (None, true) => Ok(Verify::Insecure),
            _ => Err(BenchError::Usage(
                "TLS needs exactly one of --ca FILE and --insecure".into(),
            )),
        }
    }

    /// A client without session cache when `tls` is on.
    fn client(&self, tls: bool) -> Result<Option<TlsClient>, BenchError> {
        if !tls {
            if self.ca.is_some() || self.insecure {
                return Err(BenchError::Usage(
                    "--ca and --insecure are for TLS: add --tls (without it the load is plain TCP)".into(),
                ));
            }
            return Ok(None);
        }
        TlsClient::new(&self.verify()?, &self.server_name, self.tls_version, false).map(Some)
    }
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// Address to load (a stand-in, or a proxy in front of one).
    #[arg(long)]
    target: SocketAddr,
    /// Measured window: its length for rr-latency and rdp-profile; a cap for runs driven by
    /// a count (throughput's bytes, connect-rate's and tls-handshake's connections); idle
    /// holds for --hold instead.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the window whose samples are dropped (rr-latency, rdp-profile,
    /// connect-rate, tls-handshake; throughput and idle measure from the first byte).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Local source addresses 127.0.0.1..=N (loopback targets).
    #[arg(long, default_value_t = 1)]
    sources: usize,
    /// Process(es) under test: CPU and RSS over the window (repeat or comma list).
    #[arg(long = "pid", value_delimiter = ',')]
    pids: Vec<u32>,
    /// Print the JSON report instead of the table.
    #[arg(long)]
    json: bool,
}

impl CommonArgs {
    /// The options every scenario shares, checked.
    fn common(&self) -> Result<Common, BenchError> {
        if self.duration.is_zero() {
            return Err(BenchError::Usage("--duration must be more than 0".into()));
        }
        if self.sources == 0 {
            return Err(BenchError::Usage("--sources must be at least 1".into()));
        }
        Ok(Common {
            target: self.target,
            duration: self.duration,
            warmup: self.warmup,
            sources: self.sources,
            pids: self.pids.clone(),
        })
    }
}

/// What a command prints.
enum Output {
    /// One scenario report.
    Report(Box<Report>, bool),
    /// An rr-latency sweep.
    Sweep(Vec<Report>, bool),
    /// A capacity ramp.
    Capacity(Box<capacity::CapacityReport>, bool),
    /// A worker's outcome (JSON, always).
    Worker(capacity::WorkerOutcome),
    /// The broker benchmark.
    LoginLaunch(Box<login_launch::LoginLaunchReport>, bool),
    /// The gateway benchmark.
    Launch(Box<launch::LaunchReport>, bool),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile_limit();
    let output = match run(cli.command) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (text, reports): (Result<String, serde_json::Error>, Vec<Report>) = match output {
        Output::Report(r, true) => (serde_json::to_string_pretty(&r), vec![*r]),
        Output::Report(r, false) => (Ok(r.to_table()), vec![*r]),
        Output::Sweep(rs, json) => {
            let text = if json {
                serde_json::to_string_pretty(&serde_json::json!({
                    "schema": "gatehouse-bench/sweep-1",
                    "scenario": "rr-latency-sweep",
                    "steps": rs,
                }))
            } else {
                Ok(rs.iter().map(Report::to_table).collect::<Vec<_>>().join("\n"))
            };
            (text, rs)
        }
        Output::Capacity(c, json) => {
            let text = if json {
                serde_json::to_string_pretty(&c)
            } else {
                Ok(c.to_table())
            };
            if c.held_sessions == 0 {
                // Nothing held is a failed measurement, not a capacity of zero.
                match text {
                    Ok(t) => println!("{}", t.trim_end()),
                    Err(e) => eprintln!("gatehouse-bench: {e}"),
                }
                eprintln!(
                    "gatehouse-bench: capacity: no step held the SLO; stopped by {}: {}",
                    c.stop_reason.describe(),
                    c.stop_detail
                );
                return ExitCode::FAILURE;
            }
            (text, Vec::new())
        }
        Output::Worker(w) => (serde_json::to_string(&w), Vec::new()),
        Output::Launch(r, json) => {
            if r.errors() > 0 {
                eprintln!("gatehouse-bench: {} launches or tunnels failed", r.errors());
            }
            let text = if json {
                serde_json::to_string_pretty(&r)
            } else {
                Ok(r.to_table())
            };
            (text, Vec::new())
        }
        Output::LoginLaunch(r, json) => {
            if r.errors() > 0 {
                eprintln!(
                    "gatehouse-bench: {} logins or launches refused or failed",
                    r.errors()
                );
            }
            let text = if json {
                serde_json::to_string_pretty(&r)
            } else {
                Ok(r.to_table())
            };
            (text, Vec::new())
        }
    };
    match text {
        Ok(t) if t.ends_with('\n') => print!("{t}"),
        Ok(t) => println!("{t}"),
        Err(e) => {
            eprintln!("gatehouse-bench: {e}");
            return ExitCode::FAILURE;
        }
    }
    for report in &reports {
        if report.results.bytes_match == Some(false) {
            eprintln!(
                "gatehouse-bench: byte counts through {} did not match what was sent",
                report.target
            );
            return ExitCode::FAILURE;
        }
        if report.results.errors > 0 {
            eprintln!(
                "gatehouse-bench: {} operations failed against {}",
                report.results.errors, report.target
            );
        }
    }
    ExitCode::SUCCESS
}

/// `gatehouse` beside this binary (both are built into the same target directory).
fn default_gatehouse() -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Usage(format!("cannot find this binary's directory: {e}")))?;
    Ok(exe.with_file_name("gatehouse"))
}

/// A plot is SVG: a path that says otherwise is refused before the run, not after it.
fn check_plot_path(path: &Option<PathBuf>) -> Result<(), BenchError> {
    let Some(path) = path else { return Ok(()) };
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(BenchError::Usage(format!(
            "--plot {}: plots are SVG; name the file *.svg",
            path.display()
        )));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir.filter(|d| !d.is_dir()) {
        return Err(BenchError::Usage(format!(
            "--plot {}: no directory {}",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

fn write_plot(path: &PathBuf, plot: &LatencyPlot) -> Result<(), BenchError> {
    std::fs::write(path, plot.to_svg())
        .map_err(|e| BenchError::Usage(format!("writing the plot {}: {e}", path.display())))?;
    eprintln!("gatehouse-bench: wrote {}", path.display());
    Ok(())
}

fn rr_plot(target: SocketAddr, reports: &[Report]) -> LatencyPlot {
    let mut pts: Vec<(f64, f64, f64)> = reports
        .iter()
        .filter_map(|r| {
            let rate = r.parameters["rate"].as_f64()?;
            let l = r.results.latency_us?;
            Some((rate, l.p50, l.p99))
        })
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    LatencyPlot {
        title: format!("rr-latency through {target}"),
        x_label: "ping-pongs per second".into(),
        series: vec![
            Series {
                name: "p50".into(),
                points: pts.iter().map(|p| (p.0, p.1)).collect(),
            },
            Series {
                name: "p99".into(),
                points: pts.iter().map(|p| (p.0, p.2)).collect(),
            },
        ],
        limit_us: None,
    }
}

fn capacity_plot(c: &capacity::CapacityReport, slo: Duration) -> LatencyPlot {
    let mut steps: Vec<&capacity::Step> = c.steps.iter().collect();
    steps.sort_by_key(|s| s.sessions);
    let series = |name: &str, f: &dyn Fn(&capacity::Step) -> Option<f64>| Series {
        name: name.into(),
        points: steps
            .iter()
            .filter_map(|s| Some((s.sessions as f64, f(s)?)))
            .collect(),
    };
    let mut all = vec![
        series("p50 through target", &|s| s.latency_us.map(|l| l.p50)),
        series("p99 through target", &|s| s.latency_us.map(|l| l.p99)),
    ];
    if c.direct.is_some() {
        all.push(series("p99 direct", &|s| s.direct_latency_us.map(|l| l.p99)));
        all.push(series("added p99", &|s| s.added_p99_us));
    }
    LatencyPlot {
        title: format!("capacity ramp through {} (held {})", c.target, c.held_sessions),
        x_label: "concurrent sessions (office profile)".into(),
        series: all,
        limit_us: Some(slo.as_secs_f64() * 1e6),
    }
}

fn run(command: Command) -> Result<Option<Output>, Box<dyn std::error::Error>> {
    let output = match command {
        Command::Standin { kind, listen } => {
            let standin = StandIn::bind(kind, listen)
                .map_err(|e| BenchError::Usage(format!("cannot listen on {listen}: {e}")))?;
            println!("{kind} stand-in listening on {}", standin.local_addr());
            standin.run()?;
            return Ok(None);
        }
        Command::Throughput {
            common,
            streams,
            direction,
            bytes_per_stream,
            tls,
            tls_args,
        } => {
            let p = throughput::Params {
                streams,
                direction,
                bytes_per_stream,
                tls: tls_args.client(tls)?,
            };
            Output::Report(Box::new(throughput::run(&common.common()?, &p)?), common.json)
        }
        Command::ConnectRate {
            common,
            connections,
            concurrency,
            payload,
        } => {
            let p = connect_rate::Params {
                connections,
                concurrency,
                payload,
            };
            Output::Report(Box::new(connect_rate::run(&common.common()?, &p)?), common.json)
        }
        Command::RrLatency {
            common,
            rate,
            connections,
            message,
            direct,
            rates,
            plot,
        } => {
            check_plot_path(&plot)?;
            let sweep = !rates.is_empty();
            let rates = if sweep { rates } else { vec![rate] };
            let mut reports = Vec::new();
            for rate in rates {
                let p = rr_latency::Params {
                    rate,
                    connections,
                    message,
                    direct,
                };
                let r = rr_latency::run(&common.common()?, &p)?;
                if sweep {
                    if let Some(l) = r.results.latency_us {
                        eprintln!("rr-latency: {rate}/s p50 {:.0} us p99 {:.0} us", l.p50, l.p99);
                    }
                }
                reports.push(r);
            }
            if let Some(path) = &plot {
                write_plot(path, &rr_plot(common.target, &reports))?;
            }
            if sweep {
                Output::Sweep(reports, common.json)
            } else {
                let r = reports.pop().expect("one rate gives one report");
                Output::Report(Box::new(r), common.json)
            }
        }
        Command::Idle {
            common,
            connections,
            hold,
            concurrency,
            tls,
            tls_args,
        } => {
            let p = idle::Params {
                connections,
                hold,
                concurrency,
                tls: tls_args.client(tls)?,
            };
            Output::Report(Box::new(idle::run(&common.common()?, &p)?), common.json)
        }
        Command::TlsHandshake {
            common,
            connections,
            concurrency,
            payload,
            mode,
            rate,
            tls_args,
        } => {
            let p = tls_handshake::Params {
                connections,
                concurrency,
                payload,
                mode,
                version: tls_args.tls_version,
                verify: tls_args.verify()?,
                server_name: tls_args.server_name.clone(),
                rate,
            };
            Output::Report(Box::new(tls_handshake::run(&common.common()?, &p)?), common.json)
        }
        Command::RdpProfile {
            common,
            sessions,
            profile,
            tls,
            tls_args,
        } => {
            let p = profile.params(sessions);
            let transport = match tls_args.client(tls)? {
                Some(client) => rdp_profile::Transport::Tls(client),
                None => rdp_profile::Transport::Plain,
            };
            Output::Report(
                Box::new(rdp_profile::run(&common.common()?, &p, &transport)?),
                common.json,
            )
        }
        Command::Capacity {
            mode,
            target,
            direct,
            pids,
            slo,
            steps,
            start,
            growth,
            max_sessions,
            refine,
            confirm,
            warmup,
            duration,
            sources,
            target_fds_per_session,
            sessions_per_process,
            node_cpus,
            node_mem,
            cpu_budget,
            mem_budget,
            profile,
            plot,
            json,
            gatehouse,
            hosts,
            target_cpu,
            api_threads,
            open_rate,
            farm_dir,
        } => {
            check_plot_path(&plot)?;
            let node = match (node_cpus, node_mem) {
                (Some(cpus), Some(mem_bytes)) => Some(NodeSize {
                    cpus,
                    mem_bytes,
                    cpu_budget,
                    mem_budget,
                }),
                (None, None) => None,
                _ => return Err(BenchError::Usage("--node-cpus and --node-mem go together".into()).into()),
            };
            if !(growth > 1.0 && growth.is_finite()) {
                return Err(BenchError::Usage("--growth must be > 1".into()).into());
            }
            let ramp = if steps.is_empty() {
                Ramp::Geometric {
                    start,
                    growth,
                    max: max_sessions,
                }
            } else {
                Ramp::List(steps)
            };
            let tls_mode = mode != capacity::Mode::L4;
            if !tls_mode && target.is_none() {
                // clap's required_if_eq does not fire on a defaulted --mode.
                return Err(BenchError::Usage(
                    "--mode l4 (the default) measures a proxy you started: give --target ADDR (and --pid PID); --mode halb-passthrough or gateway-ssl start their own".into(),
                )
                .into());
            }
            let p = capacity::Params {
                // TLS modes: replaced by the system under test's own addresses.
                target: target.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                direct,
                pids,
                profile: profile.params(1),
                ramp,
                refine,
                confirm,
                slo,
                warmup,
                duration,
                sources: sources.max(1),
                target_fds_per_session,
                sessions_per_process,
                worker_exe: None,
                node,
                mode,
                target_path: capacity::PathSpec::Plain,
                direct_path: capacity::PathSpec::Plain,
                always_workers: false,
                open_rate: open_rate.or(tls_mode.then_some(1000.0)),
            };
            let report = if tls_mode {
                let sp = capacity::sut::SutParams {
                    mode,
                    gatehouse: match gatehouse {
                        Some(g) => g,
                        None => default_gatehouse()?,
                    },
                    hosts,
                    target_cpu,
                    api_threads,
                    dir: farm_dir,
                };
                capacity::run_mode(&p, &sp, &mut |line| eprintln!("{line}"))?
            } else {
                capacity::run(&p, &mut |line| eprintln!("{line}"))?
            };
            if let Some(path) = &plot {
                write_plot(path, &capacity_plot(&report, slo))?;
            }
            Output::Capacity(Box::new(report), json)
        }
        Command::LoginLaunch {
            quick,
            users,
            hosts,
            sites,
            hash_threads,
            concurrency,
            warmup,
            duration,
            tokens_per_client,
            distinct_hashes,
            check_samples,
            seed,
            gatehouse,
            dir,
            json,
        } => {
            let gatehouse = match gatehouse {
                Some(g) => g,
                None => default_gatehouse()?,
            };
            let base = if quick {
                login_launch::Params::quick(gatehouse)
            } else {
                login_launch::Params::full(gatehouse)
            };
            let p = login_launch::Params {
                layout: login_launch::farm::Layout {
                    users: users.unwrap_or(base.layout.users),
                    hosts: hosts.unwrap_or(base.layout.hosts),
                    sites: sites.unwrap_or(base.layout.sites),
                },
                hash_threads: hash_threads.unwrap_or(base.hash_threads),
                concurrency: concurrency.unwrap_or(base.concurrency),
                warmup: warmup.unwrap_or(base.warmup),
                duration: duration.unwrap_or(base.duration),
                tokens_per_client: tokens_per_client.unwrap_or(base.tokens_per_client),
                distinct_hashes,
                check_samples: check_samples.unwrap_or(base.check_samples),
                seed,
                dir,
                ..base
            };
            let report = login_launch::run(&p, &mut |line| eprintln!("login-launch: {line}"))?;
            Output::LoginLaunch(Box::new(report), json)
        }
        Command::Launch {
            quick,
            hosts,
            clients,
            warmup,
            duration,
            latency_duration,
            rate,
            message,
            payload,
            rounds,
            tls_resume,
            sources,
            gateway_workers,
            storm_users,
            storm_rate,
            storm_hold,
            storm_event_rate,
            storm_input,
            storm_update,
            storm_balance,
            storm_sources,
            storm_baseline,
            rdp_hosts,
            halb_workers,
            storm_only,
            gatehouse,
            dir,
            json,
        } => {
            let gatehouse = match gatehouse {
                Some(g) => g,
                None => default_gatehouse()?,
            };
            let base = if quick {
                launch::Params::quick(gatehouse)
            } else {
                launch::Params::full(gatehouse)
            };
            let p = launch::Params {
                hosts: hosts.unwrap_or(base.hosts),
                clients: clients.unwrap_or(base.clients),
                warmup: warmup.unwrap_or(base.warmup),
                duration: duration.unwrap_or(base.duration),
                latency_duration: latency_duration.unwrap_or(base.latency_duration),
                rate: rate.unwrap_or(base.rate),
                message: message.unwrap_or(base.message),
                payload: payload.unwrap_or(base.payload),
                rounds: rounds.unwrap_or(base.rounds),
                tls_resume,
                sources: sources.unwrap_or(base.sources).max(1),
                gateway_workers: gateway_workers.unwrap_or(base.gateway_workers),
                storm_users: storm_users.unwrap_or(base.storm_users),
                storm_rate: storm_rate.unwrap_or(base.storm_rate),
                storm_hold: storm_hold.unwrap_or(base.storm_hold),
                storm_event_rate: storm_event_rate.unwrap_or(base.storm_event_rate),
                storm_input: storm_input.unwrap_or(base.storm_input),
                storm_update: storm_update.unwrap_or(base.storm_update),
                storm_algorithm: storm_balance.unwrap_or_else(|| base.storm_algorithm.clone()),
                storm_sources: storm_sources.unwrap_or(base.storm_sources).max(1),
                storm_baseline: storm_baseline.unwrap_or(base.storm_baseline),
                rdp_hosts: rdp_hosts.unwrap_or(base.rdp_hosts),
                halb_workers: halb_workers.unwrap_or(base.halb_workers),
                storm_only,
                dir,
                ..base
            };
            let report = launch::run(&p, &mut |line| eprintln!("launch: {line}"))?;
            Output::Launch(Box::new(report), json)
        }
        Command::CapacityWorker { spec } => {
            let spec = if spec == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| BenchError::Usage(format!("worker spec on stdin: {e}")))?;
                text
            } else {
                spec
            };
            let spec: capacity::WorkerSpec =
                serde_json::from_str(&spec).map_err(|e| BenchError::Usage(format!("worker spec: {e}")))?;
            Output::Worker(capacity::run_worker(&spec)?)
        }
    };
    Ok(Some(output))
}
