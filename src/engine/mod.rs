//! The data plane: per-core workers that accept, balance and pipe TCP connections.
//!
//! Owns everything on the hot path. Workers read shared state only through snapshots and
//! atomics (see `shared.rs`); the control side never touches a worker's sessions.

pub mod buffers;
pub mod flow;
pub mod listener;
pub mod session;
pub mod source_ports;
pub mod timer;
pub mod tls_conn;
pub mod tls_flow;
pub mod tls_setup;
pub mod waiting;
pub mod worker;
