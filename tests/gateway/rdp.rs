//! RDP load balancing on a gateway port: the X.224 cookie steers affinity (exact or
//! truncated user names, routing tokens inside the pool), never the address; the request
//! bytes reach the host unchanged.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::common::wait_for;
use crate::farm::{GatewayFarm, StandIn};

/// A TPKT + X.224 Connection Request with `cookie` (a whole line without CRLF) and an
/// RDP_NEG_REQ asking for TLS and CredSSP (MS-RDPBCGR 2.2.1.1).
pub fn connection_request(cookie: &str) -> Vec<u8> {
    let mut x224 = vec![0xE0, 0, 0, 0, 0, 0];
    if !cookie.is_empty() {
        x224.extend_from_slice(cookie.as_bytes());
        x224.extend_from_slice(b"\r\n");
    }
    x224.extend_from_slice(&[0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00]);
    let mut out = vec![0x03, 0x00];
    let total = 4 + 1 + x224.len();
    out.extend_from_slice(&(total as u16).to_be_bytes());
    out.push(x224.len() as u8);
    out.extend_from_slice(&x224);
    out
}

/// Connects as a plain RDP client with `cookie`; returns the host that got the request
/// (checked byte for byte) by its index.
fn route(listen: SocketAddr, hosts: &[StandIn], cookie: &str) -> usize {
    let before: Vec<usize> = hosts.iter().map(|h| h.accepted()).collect();
    let request = connection_request(cookie);
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&request).unwrap();
    // The stand-in echoes: the client reads its own request back through the gateway.
    let mut back = vec![0u8; request.len()];
    s.read_exact(&mut back)
        .unwrap_or_else(|e| panic!("cookie {cookie:?}: {e}"));
    assert_eq!(back, request);
    let mut which = None;
    assert!(wait_for(Duration::from_secs(2), || {
        which = hosts.iter().zip(&before).position(|(h, b)| h.accepted() > *b);
        which.is_some()
    }));
    let i = which.unwrap();
    let got = hosts[i]
        .received
        .lock()
        .unwrap()
        .last()
        .cloned()
        .unwrap_or_default();
    assert_eq!(got, request, "host {i} did not get the request byte for byte");
    i
}

/// The msts routing token of MS-RDPBCGR 2.2.1.1 for an IPv4 address and port.
fn routing_token(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        panic!("ipv4 only")
    };
    let ip = u32::from_le_bytes(v4.ip().octets());
    let port = v4.port().swap_bytes();
    format!("Cookie: msts={ip}.{port}.0000")
}

#[test]
fn mstshash_affinity_truncation_and_routing_tokens() {
    let farm = GatewayFarm::start(3);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    let hosts = &farm.hosts;
    // alice has a session on host 0 (the busiest host): affinity wins over load.
    assert_eq!(route(gw.listen, hosts, "Cookie: mstshash=alice"), 0);
    // A client that truncated the name: a unique prefix still finds her.
    assert_eq!(route(gw.listen, hosts, "Cookie: mstshash=alic"), 0);
    // bob has no session: the least-loaded host (host 1 reports the least CPU).
    let bob = route(gw.listen, hosts, "Cookie: mstshash=bob");
    assert_ne!(bob, 0);
    // No cookie at all: least loaded too.
    assert_ne!(route(gw.listen, hosts, ""), 0);
    // A routing token naming a host of the pool is honoured.
    assert_eq!(route(gw.listen, hosts, &routing_token(hosts[2].addr)), 2);
    // One naming an address outside the pool is only a hint: never connected to.
    let outsider = StandIn::start("outsider");
    let i = route(gw.listen, hosts, &routing_token(outsider.addr));
    assert_ne!(i, 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        outsider.accepted(),
        0,
        "the gateway connected to an address from a cookie"
    );
    let m = gw.metrics();
    assert!(
        m.contains("gatehouse_gateway_rdp_total{outcome=\"routed\"} 6"),
        "{m}"
    );
}

#[test]
fn a_host_the_farm_names_by_dns_name_is_reached() {
    // The broker answers `localhost`; the gateway looks it up on a resolver thread.
    let farm = GatewayFarm::start_named_host();
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    assert_eq!(route(gw.listen, &farm.hosts, "Cookie: mstshash=alice"), 0);
    assert_eq!(route(gw.listen, &farm.hosts, "Cookie: mstshash=bob"), 0);
    assert_eq!(route(gw.listen, &farm.hosts, ""), 0);
}

#[test]
fn malformed_slow_and_oversized_rdp_requests_are_refused() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    let before = farm.hosts[0].accepted();
    // A TPKT announcing more than the bound.
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x03, 0x00, 0x10, 0x00, 0x0b, 0xE0, 0, 0, 0, 0, 0])
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    // An X.224 Connection Confirm with RDP_NEG_FAILURE: TPKT, then type 3 at byte 11.
    assert!(
        answer.len() >= 19 && answer[0] == 3 && answer[5] == 0xD0 && answer[11] == 0x03,
        "{answer:?}"
    );
    // Not a Connection Request.
    let mut bad = connection_request("Cookie: mstshash=x");
    bad[5] = 0xF0;
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&bad).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.len() >= 19 && answer[11] == 0x03, "{answer:?}");
    // A slow one: half a request, then nothing; the handshake timeout (2 s) ends it.
    let req = connection_request("Cookie: mstshash=slow");
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&req[..10]).unwrap();
    let t = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    println!("slow X.224 request closed after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(6));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(farm.hosts[0].accepted(), before, "a bad request reached the host");
    let log = gw.proc.log_text();
    assert!(log.contains("bad X.224 Connection Request"), "{log}");
}
