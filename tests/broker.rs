//! End-to-end tests of the control plane (issue 4): the real `gatehouse` binary as broker and
//! host agents over mutual TLS on loopback, driven through the gateway control client
//! library. One binary, one module per area.

#[path = "broker/common.rs"]
mod common;
#[path = "broker/demo.rs"]
mod demo;
#[path = "broker/failover.rs"]
mod failover;
#[path = "broker/farm.rs"]
mod farm;
#[path = "broker/ldap.rs"]
mod ldap;
#[path = "broker/least_loaded.rs"]
mod least_loaded;
#[path = "broker/reload.rs"]
mod reload;
#[path = "broker/tickets.rs"]
mod tickets;
#[path = "broker/users.rs"]
mod users;
