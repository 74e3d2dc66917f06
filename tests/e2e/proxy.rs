//! PROXY protocol v2: a pool sends the client's address to its backends; a listener accepts
//! a header only from trusted sources.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use gatehouse::proxy_protocol::{self, Parsed, ProxyHeader, SIGNATURE};

use crate::common::*;

/// An in-test backend that parses the PROXY v2 header and answers with the source it
/// carries (`IP:PORT\n`, `local\n` or `error: ...\n`), then sinks the rest.
fn proxy_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                let answer = loop {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    match proxy_protocol::parse(&buf) {
                        Ok(Parsed::Incomplete { .. }) => continue,
                        Ok(Parsed::Complete { header, .. }) => {
                            break header.source().map_or("local".to_string(), |a| a.to_string())
                        }
                        Err(e) => break format!("error: {e}"),
                    }
                };
                let _ = s.write_all(format!("{answer}\n").as_bytes());
                while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

fn read_line(s: &mut std::net::TcpStream) -> Seen {
    let mut line = Vec::new();
    loop {
        match read_outcome_byte(s) {
            Some(b'\n') => return Seen::Data(line),
            Some(b) => line.push(b),
            None if line.is_empty() => return read_outcome(s, Duration::from_millis(10)),
            None => return Seen::Data(line),
        }
    }
}

fn read_outcome_byte(s: &mut std::net::TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    match s.read(&mut b) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

struct Setup {
    g: Gatehouse,
    plain: SocketAddr,
    trusting: SocketAddr,
}

fn setup() -> Setup {
    let backend = proxy_backend();
    let (admin, plain) = addrs();
    let trusting: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "{}\n[[halb.listener]]\nname = \"trusting\"\nbind = \"{trusting}\"\npool = \"p\"\naccept_proxy_from = [\"127.0.0.1/32\"]\nhandshake_timeout = \"2s\"\n",
        simple_config(admin, plain, "send_proxy = true", "", &[("b", backend)])
    );
    Setup {
        g: Gatehouse::start(&config, admin),
        plain,
        trusting,
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[test]
fn backend_sees_the_client_address() {
    let s = setup();
    let mut c = connect_from(s.plain, Some(ip(5))).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"hello").unwrap();
    let seen = read_line(&mut c);
    println!("proxy: client {me} -> backend saw {seen:?}");
    assert_eq!(seen, Seen::Data(me.to_string().into_bytes()));
    drop(c);
    s.g.assert_nothing_held();
    // The header is this node's, not the client's: not in its byte counts.
    let answer = me.to_string().len() + 1;
    let line = format!("client={me} ");
    assert!(
        wait_until(Duration::from_secs(3), || s.g.log().contains(&line)),
        "no close line; log:\n{}",
        s.g.log()
    );
    let log = s.g.log();
    let close = log.lines().find(|l| l.contains(&line)).unwrap();
    println!("proxy: {close}");
    assert!(
        close.contains(&format!("bytes_up=5 bytes_down={answer} ")),
        "{close}"
    );
    assert_eq!(s.g.metric("gatehouse_bytes_total{direction=\"up\"}"), 5.0);
}

#[test]
fn a_check_through_a_proxy_sending_pool_is_not_logged() {
    // A TCP check of a forwarding gateway (connect, close) becomes a tunnel that carried only
    // the PROXY header: a null connection, at debug like any other.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in sink.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || while matches!(s.read(&mut [0u8; 512]), Ok(n) if n > 0) {});
        }
    });
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &simple_config(admin, listen, "send_proxy = true", "", &[("b", backend)]),
        admin,
    );
    for _ in 0..3 {
        drop(connect_from(listen, Some(ip(6))).unwrap());
    }
    assert!(wait_until(Duration::from_secs(3), || g.closed("done") == 3.0));
    g.assert_nothing_held();
    let log = g.log();
    assert!(!log.contains("client=127.0.0.6:"), "log:\n{log}");
    assert_eq!(g.metric("gatehouse_bytes_total{direction=\"up\"}"), 0.0);
}

#[test]
fn trusted_forwarder_header_is_passed_on() {
    let s = setup();
    let mut c = connect_from(s.trusting, Some(ip(1))).unwrap();
    let claimed: SocketAddr = "203.0.113.7:5555".parse().unwrap();
    let mut hdr = Vec::new();
    ProxyHeader::proxy(claimed, s.trusting).encode(&mut hdr).unwrap();
    hdr.extend_from_slice(b"hello");
    c.write_all(&hdr).unwrap();
    let seen = read_line(&mut c);
    println!("proxy: trusted header claiming {claimed} -> backend saw {seen:?}");
    assert_eq!(seen, Seen::Data(b"203.0.113.7:5555".to_vec()));
}

#[test]
fn malformed_header_from_trusted_source_is_closed() {
    let s = setup();
    let mut c = connect_from(s.trusting, Some(ip(1))).unwrap();
    let mut bad = SIGNATURE.to_vec();
    bad.extend_from_slice(&[0x31, 0x11, 0x00, 0x0c]); // version 3: not PROXY v2
    bad.extend_from_slice(&[0u8; 12]);
    c.write_all(&bad).unwrap();
    let seen = read_line(&mut c);
    println!("proxy: malformed header from a trusted source -> {seen:?}");
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "closed, saw {seen:?}");
    assert_eq!(
        s.g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"proxy_header_invalid\"}",
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );
}

#[test]
fn header_from_untrusted_source_is_closed_plain_bytes_served() {
    let s = setup();
    let mut c = connect_from(s.trusting, Some(ip(9))).unwrap();
    let mut hdr = Vec::new();
    ProxyHeader::proxy("203.0.113.7:5555".parse().unwrap(), s.trusting)
        .encode(&mut hdr)
        .unwrap();
    c.write_all(&hdr).unwrap();
    let seen = read_line(&mut c);
    println!("proxy: header from untrusted 127.0.0.9 -> {seen:?}");
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "closed, saw {seen:?}");
    assert_eq!(
        s.g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"proxy_header_untrusted\"}",
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );
    let mut c = connect_from(s.trusting, Some(ip(9))).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"plain bytes, no header").unwrap();
    let seen = read_line(&mut c);
    println!("proxy: plain bytes from untrusted {me} -> backend saw {seen:?}");
    assert_eq!(seen, Seen::Data(me.to_string().into_bytes()));
    drop(c);
    s.g.assert_nothing_held();
}

#[test]
fn per_source_limit_counts_the_address_in_the_header() {
    let backend = proxy_backend();
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &simple_config(
            admin,
            listen,
            "send_proxy = true",
            "accept_proxy_from = [\"127.0.0.1/32\"]\nmax_per_source = 1",
            &[("b", backend)],
        ),
        admin,
    );
    let via_forwarder = |claimed: &str| {
        let mut c = connect_from(listen, Some(ip(1))).unwrap();
        let mut hdr = Vec::new();
        ProxyHeader::proxy(claimed.parse().unwrap(), listen)
            .encode(&mut hdr)
            .unwrap();
        hdr.extend_from_slice(b"hi");
        c.write_all(&hdr).unwrap();
        let seen = read_line(&mut c);
        (seen, c)
    };
    let (a, _ca) = via_forwarder("203.0.113.7:1000");
    let (b, _cb) = via_forwarder("203.0.113.8:1000");
    let (c, _cc) = via_forwarder("203.0.113.7:2000");
    println!("proxy: max_per_source 1 behind a forwarder: .7 -> {a:?}, .8 -> {b:?}, .7 again -> {c:?}");
    assert_eq!(a, Seen::Data(b"203.0.113.7:1000".to_vec()));
    assert_eq!(
        b,
        Seen::Data(b"203.0.113.8:1000".to_vec()),
        "another client behind the same forwarder"
    );
    assert!(
        matches!(c, Seen::Eof | Seen::Reset),
        "2nd from 203.0.113.7 closed, saw {c:?}"
    );
    assert_eq!(g.closed("source_limit"), 1.0);
}
