//! Forwarding gateways (DMZ): a chain passes the client on with PROXY v2 and the gateway
//! path; failover along the chain; loops and untrusted PROXY headers refused.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::client::{self, Stream};
use crate::common::free_port;
use crate::farm::{Gateway, GatewayFarm};

pub fn addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// A forwarding-only gateway `id` at `listen` whose chain is `next` (in order).
pub fn forwarder(
    farm: &GatewayFarm,
    id: &str,
    listen: SocketAddr,
    next: &[SocketAddr],
    trusted: bool,
) -> Gateway {
    let admin = addr();
    let backends: Vec<String> = next
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ name = \"next-{i}\", address = \"{a}\" }}"))
        .collect();
    let trust = if trusted {
        "accept_proxy_from = [\"127.0.0.1/32\"]\n"
    } else {
        ""
    };
    let text = format!(
        "[node]\nname = \"{id}\"\nworkers = 1\n\n[admin]\nlisten = \"{admin}\"\n\n[gateway]\nid = \"{id}\"\n\n\
         [[gateway.listener]]\nname = \"dmz\"\nbind = \"{listen}\"\npool = \"chain\"\nconnect_timeout = \"1s\"\n{trust}\n\
         [[gateway.pool]]\nname = \"chain\"\nalgorithm = \"first\"\nsend_proxy = true\nretries = {}\nbackends = [{}]\n",
        next.len().saturating_sub(1),
        backends.join(", ")
    );
    farm.start_gateway_config(id, &text, listen, admin)
}

#[test]
fn a_forwarding_chain_carries_the_client_with_failover() {
    let farm = GatewayFarm::start(1);
    // gw-a trusts PROXY headers from loopback (the forwarders) on its front listener.
    let gw = farm.start_gateway("gw-a", "site-a", "accept_proxy_from = [\"127.0.0.1/32\"]\n");
    // The chain's first hop is dead: the forwarder fails over to gw-a.
    let dead = addr();
    let fw = forwarder(&farm, "fw-1", addr(), &[dead, gw.listen], false);
    // Everything through the forwarder, in TLS (passed through unchanged).
    let ticket = client::ticket_for(fw.listen, true, "bob", "other");
    let (mut s, r) = client::tunnel(fw.listen, true, &ticket);
    assert_eq!(r.status, 101, "{r:?}");
    s.write_all(b"hello through the DMZ").unwrap();
    let mut back = [0u8; 21];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello through the DMZ");
    // gw-a saw the client's address from the PROXY header, and no direct client gets in
    // without one (loopback must send PROXY on this listener).
    let mut direct = TcpStream::connect(gw.listen).unwrap();
    direct.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    direct
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = direct.read_to_end(&mut out);
    assert!(
        !String::from_utf8_lossy(&out).contains("200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn a_forwarding_loop_is_refused() {
    let farm = GatewayFarm::start(1);
    let listen = addr();
    // fw-loop forwards to itself and trusts itself: the second arrival finds its own id.
    let fw = forwarder(&farm, "fw-loop", listen, &[listen], true);
    let mut s = TcpStream::connect(fw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // fw-loop expects a PROXY header from loopback, so the test is a forwarder too: a
    // PROXY v2 header with no path.
    let header = gatehouse::proxy_protocol::ProxyHeader::proxy("192.0.2.7:5000".parse().unwrap(), listen);
    let mut bytes = Vec::new();
    header.encode(&mut bytes).unwrap();
    bytes.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
    // The loop is refused on the second arrival, which may close this connection early.
    let _ = s.write_all(&bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let log = fw.proc.log_text();
    assert!(
        fw.proc
            .wait_log("gateway path refused", 1, Duration::from_secs(5)),
        "{log}"
    );
    let log = fw.proc.log_text();
    assert!(log.contains("fw-loop"), "{log}");
    // The line names the forwarder that sent the looping path (here fw-loop itself, from
    // loopback), not only the client its PROXY header carried.
    assert!(log.contains("from forwarder 127.0.0.1:"), "{log}");
}

#[test]
fn proxy_headers_from_untrusted_addresses_are_refused() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "accept_proxy_from = [\"10.9.0.0/16\"]\n");
    gw.wait_healthy();
    let mut s = Stream::connect(gw.listen, false).unwrap();
    let header = gatehouse::proxy_protocol::ProxyHeader::proxy("192.0.2.7:5000".parse().unwrap(), gw.listen);
    let mut bytes = Vec::new();
    header.encode(&mut bytes).unwrap();
    bytes.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    // One write: the gateway resets the connection as soon as it has read the header, so a
    // second write could fail with EPIPE before the read below sees the refusal.
    let _ = s.write_all(&bytes);
    let r = client::read_response(&mut s);
    assert!(r.is_err() || r.as_ref().unwrap().status != 200, "{r:?}");
    assert!(
        gw.proc
            .wait_log("not in accept_proxy_from", 1, Duration::from_secs(5)),
        "{}",
        gw.proc.log_text()
    );
}

#[test]
fn allow_and_deny_lists_apply_to_the_real_client_address() {
    let farm = GatewayFarm::start(1);
    // Direct clients from loopback are denied outright.
    let denied = farm.start_gateway("gw-a", "site-a", "deny = [\"127.0.0.0/8\"]\n");
    let mut s = TcpStream::connect(denied.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    assert!(
        denied
            .proc
            .wait_log("is not allowed on this listener", 1, Duration::from_secs(5)),
        "{}",
        denied.proc.log_text()
    );
    // Behind a trusted forwarder the PROXY header's source is what the lists see.
    let gw = farm.start_gateway(
        "gw-b",
        "site-a",
        "accept_proxy_from = [\"127.0.0.1/32\"]\nallow = [\"192.0.2.0/24\"]\ndeny = [\"192.0.2.66/32\"]\n",
    );
    let ask = |client: &str| -> Vec<u8> {
        let mut s = TcpStream::connect(gw.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let header = gatehouse::proxy_protocol::ProxyHeader::proxy(client.parse().unwrap(), gw.listen);
        let mut bytes = Vec::new();
        header.encode(&mut bytes).unwrap();
        bytes.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
        // A refused address may be closed right after its header: one write, errors allowed.
        let _ = s.write_all(&bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    };
    gw.wait_healthy_via(|| String::from_utf8_lossy(&ask("192.0.2.7:4000")).contains(" 200 "));
    assert!(
        ask("192.0.2.66:4000").is_empty(),
        "a denied address got an answer"
    );
    assert!(
        ask("198.51.100.1:4000").is_empty(),
        "an address outside allow got an answer"
    );
    let log = gw.proc.log_text();
    assert!(log.contains("192.0.2.66 (via 127.0.0.1:"), "{log}");
}

#[test]
fn a_forwarder_can_offload_tls_and_re_encrypt_to_the_next_gateway() {
    let farm = GatewayFarm::start(1);
    let dmz = addr();
    let extra = format!(
        "\n[[gateway.listener]]\nname = \"from-dmz\"\nbind = \"{dmz}\"\ntls = \"offload\"\n\
         accept_proxy_from = [\"127.0.0.1/32\"]\n"
    );
    let gw = farm.start_gateway("gw-a", "site-a", &extra);
    gw.wait_healthy();
    // fw-2 terminates the client's TLS (its own self-signed certificate) and speaks TLS
    // again to gw-a, after the PROXY header.
    let listen = addr();
    let admin = addr();
    let state = farm.path("fw-2-state");
    let text = format!(
        "[node]\nname = \"fw-2\"\nworkers = 1\nstate_dir = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\n\n\
         [gateway]\nid = \"fw-2\"\n\n[[gateway.listener]]\nname = \"dmz\"\nbind = \"{listen}\"\npool = \"chain\"\n\
         tls = \"offload\"\n\n[[gateway.pool]]\nname = \"chain\"\nsend_proxy = true\n\
         tls = {{ insecure_skip_verify = true }}\nbackends = [{{ name = \"gw-a\", address = \"{dmz}\" }}]\n",
        state.display()
    );
    let fw = farm.start_gateway_config("fw-2", &text, listen, admin);
    let ticket = client::ticket_for(fw.listen, true, "bob", "other");
    let (mut s, r) = client::tunnel(fw.listen, true, &ticket);
    assert_eq!(r.status, 101, "{r:?}");
    s.write_all(b"re-encrypted all the way").unwrap();
    s.flush().unwrap();
    let mut back = [0u8; 24];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"re-encrypted all the way");
    // gw-a redeemed the ticket that came through both TLS legs.
    assert!(gw
        .proc
        .wait_log("tunnel ticket redeemed", 1, Duration::from_secs(5)));
}

#[test]
fn a_retry_after_a_refused_hop_sends_one_header_even_with_a_long_path() {
    // A path of eight 64-byte ids makes a PROXY header of 552 bytes: longer than the 536 a
    // default parse takes. A retry must still replace the header, not send a second one.
    use gatehouse::gateway::path::{GatewayPath, PP2_TYPE_GATEWAY_PATH};
    use gatehouse::proxy_protocol::{parse_with_limit, Parsed, ProxyHeader};
    let farm = GatewayFarm::start(1);
    let capture = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let next = capture.local_addr().unwrap();
    let own_id = "z".repeat(64);
    let fw = forwarder(&farm, &own_id, addr(), &[addr(), next], true);
    let mut path = GatewayPath::empty();
    for i in 0..7 {
        path = path.enter(&i.to_string().repeat(64), 8).unwrap();
    }
    let claimed: SocketAddr = "203.0.113.9:4000".parse().unwrap();
    let mut sent = Vec::new();
    ProxyHeader::proxy(claimed, fw.listen)
        .with_tlv(PP2_TYPE_GATEWAY_PATH, path.encode())
        .encode(&mut sent)
        .unwrap();
    sent.extend_from_slice(b"hello after the header");
    let mut c = TcpStream::connect(fw.listen).unwrap();
    c.write_all(&sent).unwrap();
    capture
        .set_nonblocking(false)
        .and_then(|_| c.set_read_timeout(Some(Duration::from_secs(5))))
        .unwrap();
    let (mut hop, _) = capture.accept().unwrap();
    hop.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 2048];
    let (header, consumed) = loop {
        let n = hop.read(&mut chunk).unwrap();
        assert!(n > 0, "the next hop got {} bytes and EOF", got.len());
        got.extend_from_slice(&chunk[..n]);
        match parse_with_limit(&got, 4096).unwrap() {
            Parsed::Incomplete { .. } => continue,
            Parsed::Complete { header, consumed } => break (header, consumed),
        }
    };
    while got.len() < consumed + 22 {
        let n = hop.read(&mut chunk).unwrap();
        assert!(n > 0, "EOF after {} bytes", got.len());
        got.extend_from_slice(&chunk[..n]);
    }
    println!(
        "forwarding: header of {consumed} bytes, then {} bytes",
        got.len() - consumed
    );
    assert!(consumed > 536, "{consumed}");
    assert_eq!(header.source(), Some(claimed));
    let ids = GatewayPath::decode(header.tlv(PP2_TYPE_GATEWAY_PATH).unwrap()).unwrap();
    assert_eq!(ids.ids().len(), 8);
    assert_eq!(ids.ids()[7], own_id);
    assert_eq!(
        String::from_utf8_lossy(&got[consumed..]),
        "hello after the header"
    );
}
