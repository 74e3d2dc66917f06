//! gatehouse-bench: the load-test harness and the stand-in session hosts.
//!
//! - [`standin`]: echo, sink/source and RDP-like hosts on one mio thread each (the demo and
//!   the tests of gatehouse use them);
//! - [`scenario`]: the load scenarios (`throughput`, `connect-rate`, `rr-latency`, `idle`,
//!   `rdp-profile`), each returning a [`report::Report`];
//! - [`wire`]: the byte formats the scenarios and stand-ins share (no I/O);
//! - [`procstat`]: CPU and memory of the process under test from /proc;
//! - [`capacity`]: the capacity ramp over `rdp-profile`, with multi-process load;
//! - [`login_launch`]: the broker benchmark (a generated farm, `gatehouse run` as broker,
//!   stand-in host agents, gateway links doing login + launch);
//! - [`launch`]: the gateway benchmark (tunnel open rate and added latency through
//!   `gatehouse run` as gateway and forwarding gateway, against a direct connection);
//! - [`plot`]: latency-against-load plots as SVG.
//!
//! This crate must not depend on gatehouse: gatehouse depends on it.

use std::fmt;
use std::net::SocketAddr;

pub mod capacity;
pub mod launch;
pub mod login_launch;
pub mod net;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod standin;
pub mod tls;
pub mod wire;

/// Why a scenario produced no report.
#[derive(Debug)]
pub enum BenchError {
    /// The target refused or did not answer the first connection.
    TargetDead {
        /// The target.
        target: SocketAddr,
        /// The socket error.
        reason: String,
    },
    /// Connections opened but no operation completed (for example a proxy with no live
    /// backend accepts and closes): reporting zeros would mislead.
    NoProgress {
        /// The target.
        target: SocketAddr,
        /// What went wrong first.
        detail: String,
    },
    /// A `--pid` process could not be read.
    Process(String),
    /// Bad parameters.
    Usage(String),
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::TargetDead { target, reason } => {
                write!(f, "target {target} is not accepting connections: {reason}")
            }
            BenchError::NoProgress { target, detail } => {
                write!(f, "target {target} completed no operation: {detail}")
            }
            BenchError::Process(m) => write!(f, "process under test: {m}"),
            BenchError::Usage(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for BenchError {}
