//! Backend health: active probes (TCP, TLS, HTTP(S)), rise/fall verdicts, passive marking.
//!
//! Owns deciding whether a backend is up. It reports each change of verdict through a
//! callback and exposes per-target counters for metrics; it does not touch pools, workers or
//! the admin listener, which consume its events.
//!
//! - `tracker`: sans-IO rise/fall state machine ([`HealthTracker`]).
//! - `outcome`: the result vocabulary ([`ProbeOutcome`], [`ProbeFailure`], [`Stage`]).
//! - `spec`: what to check ([`CheckSpec`], [`CheckKind`], [`StatusMatch`], [`TlsVerify`]).
//! - `http`: sans-IO request writer and status-line reader.
//! - `tls`: rustls client configuration.
//! - `probe`: the blocking probes, each bounded by one deadline ([`probe`]).
//! - `checker`: one thread per target running probes on schedule ([`HealthChecker`]).

mod checker;
mod http;
mod outcome;
mod probe;
mod spec;
mod tls;
mod tracker;

pub use checker::{render_metrics, HealthChecker, HealthEvent, PassiveReporter, Target, TargetStatus};
pub use outcome::{is_local_shortage, is_out_of_files, ProbeFailure, ProbeOutcome, Stage};
pub use probe::probe;
pub use spec::{CheckKind, CheckSpec, StatusMatch, TlsVerify};
pub use tracker::{Health, HealthTracker, Transition};

#[cfg(test)]
mod test_support;
