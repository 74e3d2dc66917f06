//! End-to-end tests of the gateway role (issue 5): a broker, host agents, stand-in session
//! hosts and gateways as child processes of the real binary, on loopback.

#[path = "broker/common.rs"]
mod common;

mod gateway {
    pub mod api;
    pub mod connect;
    pub mod forwarding;
    pub mod rdp;
    pub mod real_rdp;
}

#[path = "rdp/harness.rs"]
mod rdp_harness;

#[path = "gateway/client.rs"]
mod client;
#[path = "gateway/farm.rs"]
mod farm;
