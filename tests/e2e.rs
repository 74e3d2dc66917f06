//! End-to-end tests of the `gatehouse` binary over real sockets: one binary, one module
//! per area, so the suite links once.

#[path = "e2e/balancing.rs"]
mod balancing;
#[path = "e2e/common.rs"]
mod common;
#[path = "e2e/config_errors.rs"]
mod config_errors;
#[path = "e2e/demo.rs"]
mod demo;
#[path = "e2e/demo_ha.rs"]
mod demo_ha;
#[path = "e2e/halfclose.rs"]
mod halfclose;
#[path = "e2e/health.rs"]
mod health;
#[path = "e2e/integrity.rs"]
mod integrity;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/logging.rs"]
mod logging;
#[path = "e2e/proxy.rs"]
mod proxy;
#[path = "e2e/reload.rs"]
mod reload;
#[path = "e2e/review.rs"]
mod review;
#[path = "e2e/source_ports.rs"]
mod source_ports;
#[path = "e2e/timeouts.rs"]
mod timeouts;
#[path = "e2e/tls_offload.rs"]
mod tls_offload;
#[path = "e2e/tls_passthrough.rs"]
mod tls_passthrough;
#[path = "e2e/tls_reencrypt.rs"]
mod tls_reencrypt;
#[path = "e2e/tls_tickets.rs"]
mod tls_tickets;
#[path = "e2e/tls_tunnel.rs"]
mod tls_tunnel;

#[path = "e2e/privdrop.rs"]
mod privdrop;
