//! A real RDP client (xfreerdp) logging in to a real RDP server (xrdp) through gatehouse
//! gateways: plain RDP on the gateway's port (RDP load balancing), and `gatehouse connect`
//! in Gateway SSL mode, directly and through a forwarding gateway. Success is judged by
//! xrdp's own log (`login successful for user`), never by the client's exit code.

use std::net::SocketAddr;

use gatehouse::connect::{self, Mode, Options, Password, Trust};

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

#[test]
fn real_login_through_gatehouse_connect_in_gateway_ssl_mode_direct_and_via_a_forwarder() {
    let Some(xrdp) = rdp_harness::require("real_login_through_gatehouse_connect_in_gateway_ssl_mode") else {
        return;
    };
    let farm = GatewayFarm::start_real(xrdp.addr, TEST_USER, TEST_PASSWORD);
    // gw-a has its front listener and a second one that trusts the forwarder's PROXY header.
    let dmz = crate::gateway::forwarding::addr();
    let extra = format!(
        "\n[[gateway.listener]]\nname = \"from-dmz\"\nbind = \"{dmz}\"\ntls = \"auto\"\n\
         accept_proxy_from = [\"127.0.0.1/32\"]\n"
    );
    let gw = farm.start_gateway("gw-a", "site-a", &extra);
    gw.wait_healthy();
    let fw = crate::gateway::forwarding::forwarder(
        &farm,
        "fw-1",
        crate::gateway::forwarding::addr(),
        &[dmz],
        false,
    );
    for (path, gateway) in [("gateway", gw.listen), ("forwarder -> gateway", fw.listen)] {
        let mut o = Options::new(gateway.to_string(), TEST_USER, Password::new(TEST_PASSWORD));
        o.mode = Mode::GatewaySsl;
        o.trust = Trust::Insecure;
        o.resource = Some("desktop-a".into());
        let running = connect::start(o).unwrap_or_else(|e| panic!("connect via {path}: {e}"));
        let outcome = rdp_harness::xfreerdp_login(running.local_addr(), TEST_USER, TEST_PASSWORD);
        println!("via {path}: {outcome}");
        outcome.assert_success(&format!(
            "xfreerdp -> gatehouse connect (gateway-ssl) -> {path} -> xrdp"
        ));
        running.stop();
    }
    // The forwarder carried the client's address and path: gw-a logged the tunnel.
    let log = gw.proc.log_text();
    assert!(log.matches("tunnel ticket redeemed").count() >= 2, "{log}");
}
