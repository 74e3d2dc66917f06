//! gatehouse control plane: the protocol spoken on 20002 (gateway <-> broker) and 20003
//! (host agent -> broker), and the launch tickets the broker signs.
//!
//! This crate's foundation is sans-IO: the protocol types take bytes, time and randomness as
//! arguments and return values or decisions. Two blocking shells live here too, because
//! more than one program needs them: [`link`] (one member connection) and the broker's LDAP
//! client. Threads and listeners belong to the broker, host agent and gateway client shells
//! in gatehouse.
//!
//! - [`frame`]: the hello exchange, length-prefixed frames, the incremental decoder and the
//!   keepalive timer.
//! - [`message`]: the typed JSON bodies carried in frames and the refusal reasons.
//! - [`link`]: one control connection on a blocking socket: mutual TLS, the hellos, frames
//!   and keepalive, with the caller's rule for who the peer may be (gatehouse and the load
//!   generator share it).
//! - [`ticket`]: launch tickets (HMAC-SHA256 under a rotating farm key) and the nonce ledger
//!   that makes each ticket single use.
//! - [`broker`]: the broker's sans-IO core: farm model, local users, login throttling,
//!   session directory and least-loaded choice, audit records, and the request handler.
//!
//! The wire format is written down in `control/PROTOCOL.md`; keep the two in step.

#![warn(missing_docs)]

pub mod broker;
pub mod frame;
pub mod link;
pub mod message;
pub mod ticket;
