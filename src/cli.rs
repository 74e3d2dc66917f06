//! The command line: `gatehouse run | check | demo | standin | cert`.
//!
//! Owns argument parsing, logging set-up and exit codes; every command delegates to the
//! module that does the work.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, LogFormat};

/// gatehouse: L4 load balancer and secure gateway for remote-desktop farms.
#[derive(Parser, Debug)]
#[command(name = "gatehouse", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start every role the config file declares (halb, gateway, broker, host agent). SIGHUP reloads, SIGTERM drains.
    Run {
        /// The config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file and print the effective config (defaults filled in).
    /// Exits 1 with `file:line:col: key: problem` lines when it is invalid.
    Check {
        /// The config file (TOML).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Only validate; print nothing when valid.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Run the whole farm on loopback with an embedded default config (with --ha, as root, also
    /// a HALB pair with VRRP in network namespaces).
    Demo {
        /// Write `{"endpoints": [...]}` here once everything accepts connections.
        #[arg(long, value_name = "FILE")]
        ready_file: Option<PathBuf>,
        /// Let the kernel pick every port instead of the fixed demo ports.
        #[arg(long)]
        ephemeral: bool,
        /// Print the embedded config and exit.
        #[arg(long)]
        print_config: bool,
        /// Also run a HALB pair with VRRP on a VIP in network namespaces (root, iproute2).
        #[arg(long)]
        ha: bool,
    },
    /// Run a stand-in session host (echo, sink or rdp) in the foreground, for trying things out.
    Standin {
        /// What it does with the bytes it gets.
        #[arg(long, default_value = "echo")]
        kind: String,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3389")]
        listen: std::net::SocketAddr,
    },
    // tls (issue 3): certificate commands, implemented in crate::tls::cli.
    /// Certificates: self-signed, CSR, import (PEM or PFX), show, shared ticket keys.
    Cert(crate::tls::cli::CertArgs),
    // broker (issue 4): farm PKI, local users and the host-agent shortcut (crate::broker_role::cli).
    /// The farm's trust: `farm init --dir D` (CA and ticket key), `farm issue NAME --dir D --role R`.
    Farm(crate::broker_role::cli::FarmArgs),
    /// The broker's local users: `user add|del|passwd|list -c BROKER_CONFIG`.
    User(crate::broker_role::cli::UserArgs),
    /// Run only a host agent reporting to the given brokers.
    HostAgent(crate::broker_role::cli::HostAgentArgs),
    // connect (issue 5): the client, implemented in crate::connect::cli.
    /// Log in through a gateway and expose a remote desktop on a local port for any RDP client.
    Connect(crate::connect::cli::ConnectArgs),
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { config } => {
            let cfg = match config::load_file(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(1);
                }
            };
            init_logging_as(&cfg.node.log_level, cfg.node.log_format);
            raise_open_files_limit();
            let options = crate::runtime::NodeOptions {
                config_path: Some(config),
                ..Default::default()
            };
            match crate::runtime::Node::start(cfg, options).and_then(|n| n.run_until_stopped()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Check { config, quiet } => match config::load_file(&config) {
            Ok(cfg) => {
                if !quiet {
                    println!("# {}: valid\n{}", config.display(), cfg.to_toml());
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        Cmd::Demo {
            ready_file,
            ephemeral,
            print_config,
            ha,
        } => {
            if print_config {
                print!("{}", crate::demo::all_configs(ha));
                return ExitCode::SUCCESS;
            }
            init_logging("info");
            raise_open_files_limit();
            match crate::demo::run(crate::demo::DemoOptions {
                ready_file,
                ephemeral,
                ha,
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        // tls (issue 3)
        Cmd::Cert(args) => crate::tls::cli::run(args),
        // broker (issue 4)
        Cmd::Farm(args) => crate::broker_role::cli::run_farm(args),
        Cmd::User(args) => crate::broker_role::cli::run_user(args),
        Cmd::HostAgent(args) => {
            init_logging("info");
            crate::broker_role::cli::run_host_agent(args)
        }
        // connect (issue 5)
        Cmd::Connect(args) => {
            init_logging("info");
            crate::connect::cli::run(args)
        }
        Cmd::Standin { kind, listen } => {
            let kind = match kind.parse::<gatehouse_bench::standin::Kind>() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("error: --kind: {e}");
                    return ExitCode::from(2);
                }
            };
            match gatehouse_bench::standin::StandIn::bind(kind, listen) {
                Ok(s) => {
                    println!("stand-in {kind} listening on {}", s.local_addr());
                    match s.run() {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("error: {e}");
                            ExitCode::from(1)
                        }
                    }
                }
                Err(e) => {
                    eprintln!("error: cannot listen on {listen}: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Raises the soft open-files limit to the hard one: every proxied connection holds two
/// descriptors, and the usual soft limit of 1024 would cap a node at about 500 sessions.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-files limit"),
                Err(e) => tracing::warn!("cannot raise the open-files limit from {soft}: {e}"),
            }
        }
    }
}

/// Logs text to stderr; `RUST_LOG` overrides the configured level.
pub fn init_logging(level: &str) {
    init_logging_as(level, LogFormat::Text);
}

/// Logs to stderr in `format`; `RUST_LOG` overrides the configured level. Colours only
/// when stderr is a terminal (not in journald or a log file) and `NO_COLOR` is unset.
pub fn init_logging_as(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}
