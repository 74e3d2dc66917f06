//! A real RDP client (xfreerdp) logging in to a real RDP server (xrdp) through gatehouse
//! gateways: plain RDP on the gateway's port (RDP load balancing), and `gatehouse connect`
//! in Gateway SSL mode, directly and through a forwarding gateway. Success is judged by
//! xrdp's own log (`login successful for user`), never by the client's exit code.

use std::net::SocketAddr;

use crate::farm::GatewayFarm;
use crate::rdp_harness::{self, TEST_PASSWORD, TEST_USER};

#[test]
fn real_login_through_rdp_load_balancing_on_the_gateway_port() {
    let Some(xrdp) = rdp_harness::require("real_login_through_rdp_load_balancing_on_the_gateway_port") else {
        return;
    };
    let farm = GatewayFarm::start_real(xrdp.addr, TEST_USER, TEST_PASSWORD);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    let target: SocketAddr = gw.listen;
    let outcome = rdp_harness::xfreerdp_login(target, TEST_USER, TEST_PASSWORD);
    println!("{outcome}");
    outcome.assert_success("xfreerdp -> gateway RDP balancing -> xrdp");
    let m = gw.metrics();
    assert!(
        m.contains("gatehouse_gateway_rdp_total{outcome=\"routed\"}"),
        "{m}"
    );
}
