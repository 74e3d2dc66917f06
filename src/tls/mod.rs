//! TLS for gatehouse: the sans-IO ClientHello reader for passthrough routing, certificate
//! and key files, the rustls server configuration for offload, and the `gatehouse cert`
//! commands.
//!
//! Owns everything about certificates, keys, ticket keys and rustls configuration. It does
//! not touch sockets or sessions: the engine feeds bytes to [`client_hello::read`] and
//! drives the `rustls::ServerConnection`s built from [`server::ServerTls`].

pub mod certs;
pub mod cli;
pub mod client_hello;
pub mod rotation;
pub mod server;
pub mod ticket_keys;
pub mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider every TLS object of gatehouse uses (ring: see the provider
/// measurements in BENCHMARKS.md). One place to switch providers; passed explicitly, never
/// installed process-wide, so nothing depends on an install order.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
pub(crate) mod test_pki;
