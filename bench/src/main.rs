//! `gatehouse-bench`: runs a stand-in session host or a load scenario and reports.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use gatehouse_bench::net::{parse_duration, raise_nofile_limit};
use gatehouse_bench::report::Report;
use gatehouse_bench::scenario::{connect_rate, idle, rdp_profile, rr_latency, throughput, Common};
use gatehouse_bench::standin::{Kind, StandIn};
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
    },
    /// RDP-like sessions (default: the "office" profile) against an rdp stand-in.
    RdpProfile {
        #[command(flatten)]
        common: CommonArgs,
        /// Concurrent sessions.
        #[arg(long, default_value_t = 100)]
        sessions: usize,
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
        /// Event-loop threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Seed of sizes and burst phases.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// Address to load (a stand-in, or a proxy in front of one).
    #[arg(long)]
    target: SocketAddr,
    /// Measured window (a cap for throughput and connect-rate).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before the window whose samples are dropped.
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
    fn common(&self) -> Common {
        Common {
            target: self.target,
            duration: self.duration,
            warmup: self.warmup,
            sources: self.sources.max(1),
            pids: self.pids.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile_limit();
    let (report, json) = match run(cli.command) {
        Ok(Some(r)) => r,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("gatehouse-bench: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", report.to_table());
    }
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
    ExitCode::SUCCESS
}

fn run(command: Command) -> Result<Option<(Report, bool)>, Box<dyn std::error::Error>> {
    let (report, json) = match command {
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
        } => {
            let p = throughput::Params {
                streams,
                direction,
                bytes_per_stream,
            };
            (throughput::run(&common.common(), &p)?, common.json)
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
            (connect_rate::run(&common.common(), &p)?, common.json)
        }
        Command::RrLatency {
            common,
            rate,
            connections,
            message,
        } => {
            let p = rr_latency::Params {
                rate,
                connections,
                message,
            };
            (rr_latency::run(&common.common(), &p)?, common.json)
        }
        Command::Idle {
            common,
            connections,
            hold,
            concurrency,
        } => {
            let p = idle::Params {
                connections,
                hold,
                concurrency,
            };
            (idle::run(&common.common(), &p)?, common.json)
        }
        Command::RdpProfile {
            common,
            sessions,
            input_rate,
            input_bytes,
            update_mean,
            update_min,
            update_max,
            burst_bytes,
            burst_interval,
            stagger,
            threads,
            seed,
        } => {
            let p = rdp_profile::Params {
                sessions,
                input_rate,
                input_bytes,
                update_mean,
                update_min,
                update_max,
                burst_bytes,
                burst_interval,
                stagger,
                threads,
                seed,
            };
            (rdp_profile::run(&common.common(), &p)?, common.json)
        }
    };
    Ok(Some((report, json)))
}
