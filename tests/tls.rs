//! End-to-end tests of the TLS side of the `gatehouse` binary with real OpenSSL: the
//! `gatehouse cert` commands against files OpenSSL makes and checks.

#[path = "tls/cert_cli.rs"]
mod cert_cli;
#[path = "tls/common.rs"]
mod common;
