//! `gatehouse connect` against real gateways: primary and secondary, a killed primary and a
//! hung one (SIGSTOP: only the client's timeout notices), and the demo's connect line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use gatehouse::connect::{self, Mode, Options, Password, Trust};
use nix::sys::signal::Signal;

use crate::farm::GatewayFarm;

/// Options for bob through `gateways` in Gateway SSL mode (the gateways' certificates are
/// self-signed, so trust is insecure here; the connect unit tests cover CA files and pins).
fn options(gateways: &[std::net::SocketAddr]) -> Options {
    let mut o = Options::new(gateways[0].to_string(), "bob", Password::new("other"));
    o.gateways = gateways.iter().map(|g| g.to_string()).collect();
    o.mode = Mode::GatewaySsl;
    o.trust = Trust::Insecure;
    o.connect_timeout = Duration::from_millis(1500);
    o.resource = Some("desktop-a".into());
    o
}

/// One RDP-client-like exchange through the local port: bytes out, the stand-in echoes.
fn exchange(local: std::net::SocketAddr, msg: &[u8]) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
    t.elapsed()
}

#[test]
fn connect_fails_over_to_the_secondary_when_the_primary_is_killed_or_hung() {
    let farm = GatewayFarm::start(1);
    let gw_a = farm.start_gateway("gw-a", "site-a", "");
    let gw_b = farm.start_gateway("gw-b", "site-a", "");
    gw_a.wait_healthy();
    gw_b.wait_healthy();
    let running = connect::start(options(&[gw_a.listen, gw_b.listen])).expect("connect starts");
    assert_eq!(running.login_gateway().1, "primary");
    let local = running.local_addr();
    println!("through the primary: {:?}", exchange(local, b"one"));
    // Hung primary: it accepts nothing and answers nothing; the client's timeout notices.
    gw_a.proc.signal(Signal::SIGSTOP);
    let took = exchange(local, b"two");
    println!("primary SIGSTOPped: session through the secondary after {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    gw_a.proc.signal(Signal::SIGCONT);
    running.stop();

    // Killed primary (resets at once) before the client even starts.
    let running = connect::start(options(&[gw_a.listen, gw_b.listen])).unwrap();
    let mut gw_a = gw_a;
    let _ = gw_a.proc.child.kill();
    let _ = gw_a.proc.child.wait();
    let took = exchange(running.local_addr(), b"three");
    println!("primary killed: session through the secondary after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    running.stop();
    let m = gw_b.metrics();
    assert!(m.contains("endpoint=\"tunnel\""), "{m}");
}
