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

#[test]
fn connect_in_direct_ssl_mode_carries_the_session_to_the_host_itself() {
    let farm = GatewayFarm::start(3);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    let mut o = Options::new(gw.listen.to_string(), "alice", Password::new("right"));
    o.mode = Mode::DirectSsl;
    o.trust = Trust::Insecure;
    o.resource = Some("desktop-a".into());
    let running = connect::start(o).unwrap();
    // alice's session is on host 0: the broker names it, and the client goes there itself.
    let host0 = farm.hosts[0].addr;
    let before = farm.hosts[0].accepted();
    exchange(running.local_addr(), b"direct bytes");
    assert_eq!(farm.hosts[0].accepted(), before + 1);
    assert_eq!(
        farm.hosts[0].received.lock().unwrap().last().cloned().unwrap(),
        b"direct bytes"
    );
    let m = gw.metrics();
    assert!(
        !m.contains("endpoint=\"tunnel\""),
        "direct mode opened a tunnel: {m}"
    );
    println!("direct-ssl: session to {host0} without the gateway in the path");
    running.stop();
}

#[test]
fn the_demo_farm_serves_its_printed_connect_line() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let child = std::process::Command::new(crate::common::bin())
        .args(["demo", "--ephemeral", "--ready-file", ready.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("demo.log")).unwrap())
        .spawn()
        .unwrap();
    let demo = crate::common::Proc {
        child,
        log: dir.path().join("demo.log"),
    };
    assert!(
        crate::common::wait_for(Duration::from_secs(20), || ready.exists()),
        "{}",
        demo.log_text()
    );
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let find = |role: &str| -> std::net::SocketAddr {
        doc["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["role"] == role)
            .and_then(|e| e["address"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no {role} endpoint"))
    };
    let (halb, fw) = (find("halb"), find("forwarder"));
    let pin = doc["gateway_pin_sha256"].as_str().unwrap();
    let mut pinned = [0u8; 32];
    for (i, b) in pinned.iter_mut().enumerate() {
        *b = u8::from_str_radix(&pin[2 * i..2 * i + 2], 16).unwrap();
    }
    // Wait for the HALB to see a gateway up (health checks on /health once agents reported).
    assert!(crate::common::wait_for(Duration::from_secs(15), || {
        crate::client::request(halb, "GET", "/health", None, None).is_ok_and(|r| r.status == 200)
    }));
    for (path, primary) in [("halb", halb), ("forwarder", fw)] {
        let mut o = Options::new(primary.to_string(), "demo", Password::new("demo"));
        o.mode = Mode::GatewaySsl;
        o.trust = Trust::Pinned(pinned);
        let running = connect::start(o).unwrap_or_else(|e| panic!("connect via the demo {path}: {e}"));
        // The stand-ins answer an X.224 Connection Request with a Connection Confirm.
        let cr = crate::gateway::rdp::connection_request("Cookie: mstshash=demo");
        let mut s = TcpStream::connect(running.local_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&cr).unwrap();
        let mut head = [0u8; 6];
        s.read_exact(&mut head)
            .unwrap_or_else(|e| panic!("via {path}: {e}: {}", demo.log_text()));
        assert_eq!(
            (head[0], head[5]),
            (0x03, 0xD0),
            "via {path}: not a Connection Confirm"
        );
        running.stop();
    }
    demo.signal(Signal::SIGINT);
}
