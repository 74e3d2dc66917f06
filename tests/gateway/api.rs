//! The client API through a gateway: login, launch, tunnels in Gateway and Gateway SSL
//! modes, direct mode, refusals, and open-proxy attempts.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::client::{self, Stream};
use crate::common::wait_for;
use crate::farm::GatewayFarm;

/// Sends `len` checksummed bytes through `s` (echoed by the stand-in) and checks them.
fn echo_through(s: &mut Stream, len: usize, seed: u8, early: &[u8]) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let mut got = early.to_vec();
    let mut sent = 0;
    let mut buf = vec![0u8; 65536];
    while sent < len {
        let n = (len - sent).min(16384);
        s.write_all(&data[sent..sent + n]).unwrap();
        s.flush().unwrap();
        sent += n;
        while got.len() < sent {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "tunnel closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data, "bytes differ");
}

#[test]
fn gateway_and_gateway_ssl_tunnels_carry_bytes_under_concurrency() {
    let farm = GatewayFarm::start(3);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    let addr = gw.listen;
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let tls = i % 2 == 1;
                let ticket = client::ticket_for(addr, tls, "bob", "other");
                let (mut s, r) = client::tunnel(addr, tls, &ticket);
                assert_eq!(r.status, 101, "tunnel: {r:?}");
                echo_through(&mut s, 256 * 1024 + i * 1000, i as u8, &r.rest);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    println!(
        "8 tunnels (4 plain, 4 TLS) of ~256 KiB each in {:?}",
        started.elapsed()
    );
    let total: usize = farm.hosts.iter().map(|h| h.accepted()).sum();
    assert!(total >= 8, "hosts accepted {total}");
    let m = gw.metrics();
    assert!(
        m.contains("gatehouse_gateway_answers_total{endpoint=\"login\",status=\"200\"} 8"),
        "{m}"
    );
    // Bytes carried are the client's and the host's: not the API exchanges, and not the
    // `101` head the gateway writes itself (plain or TLS tunnel alike).
    let carried: usize = (0..8).map(|i| 256 * 1024 + i * 1000).sum();
    let (up, down) = (
        "gatehouse_bytes_total{direction=\"up\"}",
        "gatehouse_bytes_total{direction=\"down\"}",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut m = gw.metrics();
    while series(&m, up) < carried as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        m = gw.metrics();
    }
    assert_eq!(
        (series(&m, up), series(&m, down)),
        (carried as f64, carried as f64)
    );
}

#[test]
fn wrong_password_gets_no_tunnel_and_the_host_sees_nothing() {
    let farm = GatewayFarm::start(2);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    let before: usize = farm.hosts.iter().map(|h| h.accepted()).sum();
    let mut s = Stream::connect(gw.listen, true).unwrap();
    let r = client::login(&mut s, "alice", "wrong");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "wrong_password");
    // A tunnel with something that is not a ticket, and one with no session at all.
    let junk = client::Launched {
        session: "broker-1~nosuchsession".into(),
        ticket: "not-a-ticket".into(),
    };
    let (_s, r) = client::tunnel(gw.listen, false, &junk);
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error_code(), "ticket_malformed");
    let mut s = Stream::connect(gw.listen, false).unwrap();
    let upgrade = "Connection: Upgrade\r\nUpgrade: gatehouse-tunnel\r\n";
    let r = client::send(&mut s, "GET", "/api/v1/tunnel", Some("x"), None, upgrade).unwrap();
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "missing_token"),
        "{r:?}"
    );
    // A token that names no broker of the farm (a password pasted by mistake): a client
    // error, and what it named is repeated neither in the answer nor in the log.
    let mut s = Stream::connect(gw.listen, false).unwrap();
    let r = client::launch(&mut s, "MyS3cretPassw0rd!~x", "desktop", "gateway");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (401, "session_invalid"),
        "{r:?}"
    );
    let answer = format!("{}{}", r.head, String::from_utf8_lossy(&r.body));
    assert!(!answer.contains("MyS3cret"), "{answer}");
    std::thread::sleep(Duration::from_millis(300));
    let after: usize = farm.hosts.iter().map(|h| h.accepted()).sum();
    assert_eq!(before, after, "a host saw a connection");
    // Every token or ticket refusal has its close line, with the same label, whether the
    // gateway saw it unreadable or checked and turned it down; the pasted text is in none.
    // (A close line comes when its session ends: the clients above still hold theirs, so
    // up to the lingering close's deadline.)
    for code in [
        "ticket_malformed",
        "missing_token",
        "session_invalid",
        "wrong_password",
    ] {
        let close_line = || {
            gw.proc
                .log_text()
                .lines()
                .find(|l| l.contains("closed:") && l.contains(code))
                .map(str::to_owned)
        };
        wait_for(Duration::from_secs(3), || close_line().is_some());
        let line =
            close_line().unwrap_or_else(|| panic!("no close line for {code}:\n{}", gw.proc.log_text()));
        assert!(
            line.contains("reason=refused") || line.contains("reason=\"refused\""),
            "{line}"
        );
    }
    assert!(!gw.proc.log_text().contains("MyS3cret"), "{}", gw.proc.log_text());
}

/// The value of one metric series in `metrics` (0 when absent).
fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn health_checks_and_empty_connections_are_counted_not_logged() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    // What a HALB's checks do: /health over plain and TLS, and TCP connects that say nothing.
    for tls in [false, true] {
        let r = client::request(gw.listen, "GET", "/health", None, None).unwrap();
        assert_eq!(r.status, 200);
        let mut s = Stream::connect(gw.listen, tls).unwrap();
        let r = client::send(&mut s, "GET", "/health", None, None, "").unwrap();
        assert_eq!(r.status, 200);
        // The answer ends the connection: over TLS with close_notify before the FIN (rustls
        // reports a FIN without one as UnexpectedEof, a possible truncation).
        let mut rest = Vec::new();
        let end = s.read_to_end(&mut rest);
        assert!(end.is_ok(), "tls {tls}: {end:?}");
    }
    for _ in 0..3 {
        drop(std::net::TcpStream::connect(gw.listen).unwrap());
    }
    // Something worth a line.
    let mut s = Stream::connect(gw.listen, true).unwrap();
    assert_eq!(client::login(&mut s, "alice", "wrong").status, 401);
    drop(s);
    let counted = |m: &str| {
        (
            series(
                m,
                "gatehouse_gateway_answers_total{endpoint=\"health\",status=\"200\"}",
            ),
            series(m, "gatehouse_connections_closed_total{reason=\"done\"}"),
        )
    };
    let ok = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let (health, done) = counted(&gw.metrics());
        health >= 5.0 && done >= 8.0
    });
    let log = gw.proc.log_text();
    assert!(ok, "not counted: {:?}\n{log}", counted(&gw.metrics()));
    let closes: Vec<&str> = log.lines().filter(|l| l.contains("closed:")).collect();
    println!("gateway close lines at info: {closes:#?}");
    assert!(
        closes.iter().any(|l| l.contains("wrong_password")),
        "the refused login is logged: {log}"
    );
    assert!(
        !closes
            .iter()
            .any(|l| l.contains("/health: 200") || l.contains("before sending anything")),
        "healthy answers and empty connections logged at info (a 503 may be): {closes:#?}"
    );
}

#[test]
fn tickets_work_once_and_only_where_issued() {
    let farm = GatewayFarm::start(2);
    let gw_a = farm.start_gateway("gw-a", "site-a", "");
    let gw_b = farm.start_gateway("gw-b", "site-a", "");
    let gw_x = farm.start_gateway("gw-x", "site-b", "");
    for g in [&gw_a, &gw_b, &gw_x] {
        g.wait_healthy();
    }
    // Issued through gw-a, spent through gw-b (same site): works once, farm-wide.
    let ticket = client::ticket_for(gw_a.listen, false, "bob", "other");
    let (mut s, r) = client::tunnel(gw_b.listen, false, &ticket);
    assert_eq!(r.status, 101, "{r:?}");
    echo_through(&mut s, 1000, 7, &r.rest);
    drop(s);
    let (_s, r) = client::tunnel(gw_a.listen, false, &ticket);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "ticket_replayed"),
        "{r:?}"
    );
    // A site-b gateway refuses a site-a ticket before asking anyone.
    let ticket = client::ticket_for(gw_a.listen, false, "bob", "other");
    let (_s, r) = client::tunnel(gw_x.listen, false, &ticket);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "ticket_binding_mismatch"),
        "{r:?}"
    );
    // Forged: one character of the signature changed.
    let mut forged = ticket.ticket.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = client::Launched {
        session: ticket.session.clone(),
        ticket: String::from_utf8(forged).unwrap(),
    };
    let (_s, r) = client::tunnel(gw_a.listen, false, &forged);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "ticket_forged"),
        "{r:?}"
    );
    // Another user's ticket, presented with alice's session: refused before the nonce is
    // spent, so bob can still use it.
    let alice = client::ticket_for(gw_a.listen, false, "alice", "right");
    let stolen = client::Launched {
        session: alice.session.clone(),
        ticket: ticket.ticket.clone(),
    };
    let (_s, r) = client::tunnel(gw_a.listen, false, &stolen);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "ticket_binding_mismatch"),
        "{r:?}"
    );
    // The unspent original still works after all that.
    let (mut s, r) = client::tunnel(gw_a.listen, false, &ticket);
    assert_eq!(r.status, 101, "{r:?}");
    echo_through(&mut s, 100, 9, &r.rest);
}

#[test]
fn direct_mode_names_the_host_the_broker_chose() {
    let farm = GatewayFarm::start(3);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    let mut s = Stream::connect(gw.listen, true).unwrap();
    let r = client::login(&mut s, "alice", "right");
    assert_eq!(r.status, 200, "{r:?}");
    let token = r.json()["session_token"].as_str().unwrap().to_string();
    let r = client::launch(&mut s, &token, "desktop-a", "direct");
    assert_eq!(r.status, 200, "{r:?}");
    let j = r.json();
    assert_eq!(j["mode"], "direct");
    assert!(j.get("ticket").is_none(), "{j}");
    // alice has a session on host 0 (the busiest): affinity sends her back there.
    let host0 = farm.hosts[0].addr;
    assert_eq!(j["host"], host0.ip().to_string(), "{j}");
    assert_eq!(j["port"], host0.port(), "{j}");
    // Resources on the same connection.
    let r = client::send(&mut s, "GET", "/api/v1/resources", Some(&token), None, "").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["resources"][0]["id"], "desktop-a");
}

#[test]
fn bad_first_bytes_and_non_api_requests_get_a_specific_answer() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    // A tunnel in progress must not be disturbed by the bad clients below.
    let ticket = client::ticket_for(gw.listen, false, "bob", "other");
    let (mut tunnel, r) = client::tunnel(gw.listen, false, &ticket);
    assert_eq!(r.status, 101);
    // Garbage first bytes: closed.
    let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"\x00\x01\x02\x03garbage").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    // A PROXY v2 header (a LOCAL command) to a listener that trusts no sender: closed, and
    // logged as what it is (its signature starts with what would read as empty lines).
    let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    // A PROXY v1 line, then a request: 400 (the line is no HTTP), not 505.
    let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let answer = String::from_utf8_lossy(&buf);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // A web request with no forward target: 404.
    let r = client::request(gw.listen, "GET", "/index.html", None, None).unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    // Empty lines before a request line are skipped (RFC 9112 §2.2), before the first
    // request (plain and inside TLS) and between kept-alive ones, even a CRLF split in two.
    for tls in [false, true] {
        let mut s = Stream::connect(gw.listen, tls).unwrap();
        s.write_all(b"\r\n\r").unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"\n").unwrap();
        let r = client::login(&mut s, "bob", "other");
        assert_eq!(r.status, 200, "tls {tls}: {r:?}");
        let token = r.json()["session_token"].as_str().unwrap().to_string();
        s.write_all(b"\r\n").unwrap();
        let r = client::launch(&mut s, &token, "desktop-a", "gateway");
        assert_eq!(r.status, 200, "tls {tls}, the kept-alive request: {r:?}");
    }
    // A lower-case method is another method (RFC 9110 §9.1), answered as one, not dropped.
    let mut s = Stream::connect(gw.listen, false).unwrap();
    s.write_all(b"get /api/v1/login HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = client::read_response(&mut s).unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (405, "method_not_allowed"));
    // An oversized head: 431.
    let mut s = Stream::connect(gw.listen, false).unwrap();
    let big = format!("X-Pad: {}\r\n", "a".repeat(9000));
    let r = client::send(&mut s, "GET", "/api/v1/resources", None, None, &big).unwrap();
    assert_eq!(r.status, 431);
    // Wrong method, bad JSON.
    let r = client::request(gw.listen, "GET", "/api/v1/login", None, None).unwrap();
    assert_eq!(r.status, 405);
    let mut s = Stream::connect(gw.listen, false).unwrap();
    s.write_all(b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{oops")
        .unwrap();
    let r = client::read_response(&mut s).unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    // Slow clients: the handshake timeout (2 s here) ends them, with a 408 for part of a
    // request (plain and inside TLS) and without a word for a connection that said nothing.
    let mut slow = std::net::TcpStream::connect(gw.listen).unwrap();
    slow.write_all(b"POST /api/v1/lo").unwrap();
    let mut slow_tls = Stream::connect(gw.listen, true).unwrap();
    slow_tls
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow_tls.flush().unwrap();
    let mut silent = std::net::TcpStream::connect(gw.listen).unwrap();
    let t = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    println!("slow request closed after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(6));
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        answer.starts_with("HTTP/1.1 408 ") && answer.contains("request_timeout"),
        "{answer}"
    );
    let r = client::read_response(&mut slow_tls).unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (408, "request_timeout"));
    silent.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    echo_through(&mut tunnel, 50_000, 3, &r.rest[..0]);
    let log = gw.proc.log_text();
    assert!(log.contains("first bytes are not TLS, RDP or HTTP"), "{log}");
    // The silent one tried neither TLS nor plain: not logged as a TLS handshake that failed.
    assert!(
        log.contains("nothing received after 2s: no ClientHello or plain request"),
        "{log}"
    );
    assert!(!log.contains("no complete ClientHello"), "{log}");
    assert!(
        log.contains("a PROXY v2 header from 127.0.0.1") && log.contains("has no accept_proxy_from"),
        "{log}"
    );
}

#[test]
fn pipelined_requests_then_a_half_close_are_all_answered() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    // Two logins in one write, then the client's FIN (as `printf ... | nc -q` sends them):
    // both run at the broker, so both answers are due, in order, before the close.
    let body = r#"{"user":"bob","password":"other"}"#;
    let login = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("{login}{login}").as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(text.matches("session_token").count(), 2, "{text}");
    // Over TLS, a client that ends after a kept-alive answer gets close_notify back.
    let mut s = Stream::connect(gw.listen, true).unwrap();
    let r = client::login(&mut s, "bob", "other");
    assert_eq!(r.status, 200);
    let Stream::Tls(tls) = &mut s else { unreachable!() };
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let end = s.read_to_end(&mut rest);
    assert!(end.is_ok(), "{end:?}");
}

#[test]
fn head_and_expect_continue_are_answered_as_http_says() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    // HEAD /health (some load balancers check with it): the GET's head, no body.
    let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "a body after a HEAD answer: {text}");
    assert!(text.contains("\r\nDate: "), "{text}");
    // Expect: 100-continue: the client sends the body only after 100 Continue.
    let body = r#"{"user":"bob","password":"other"}"#;
    let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).expect("100 Continue before the body");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("session_token"),
        "{text}"
    );
}

#[test]
fn chunked_bodies_and_later_http_1_versions_are_read_as_http_says() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    let answer = |writes: &[&[u8]]| {
        let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for w in writes {
            s.write_all(w).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    // A chunked login (RFC 9112 §7.1), in pieces that cut chunk lines and data.
    let head = "POST /api/v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let text = answer(&[
        head.as_bytes(),
        b"8\r\n{\"user\":",
        b"\r\n19;note=split\r",
        b"\n\"bob\",\"password\":\"other\"}\r\n0\r\n",
        b"\r\n",
    ]);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("session_token"),
        "{text}"
    );
    // HTTP/1.2 is read as 1.1 (RFC 9110 §2.5).
    let body = r#"{"user":"bob","password":"other"}"#;
    let login = format!(
        "POST /api/v1/login HTTP/1.2\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let text = answer(&[login.as_bytes()]);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("session_token"),
        "{text}"
    );
    // A coding we do not implement: 501; chunk framing past its bound: 413.
    let gzip = head.replace("chunked", "gzip, chunked");
    let text = answer(&[gzip.as_bytes(), b"0\r\n\r\n"]);
    assert!(text.starts_with("HTTP/1.1 501 Not Implemented\r\n"), "{text}");
    assert!(text.contains("not_implemented"), "{text}");
    let tiny = "1;pad=xxxxxxxxxxxxxxx\r\n \r\n".repeat(2000);
    let text = answer(&[head.as_bytes(), tiny.as_bytes()]);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    // The close lines come at the end of each lingering close.
    for line in [
        "bad HTTP request: only the chunked transfer coding",
        "bad HTTP request body: chunked request body with its framing over",
    ] {
        assert!(
            wait_for(Duration::from_secs(3), || gw.proc.log_text().contains(line)),
            "{line}: {}",
            gw.proc.log_text()
        );
    }
}

#[test]
fn a_hung_broker_is_reported_without_the_farm_s_names() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    // The broker hangs (SIGSTOP): the login waits for the link's keepalive or the request
    // timeout (3 s here), then the client gets a 5xx that says what to do, not the broker's
    // node name or why its link ended; the gateway's log says both.
    farm.broker.signal(nix::sys::signal::Signal::SIGSTOP);
    let t = Instant::now();
    let mut s = Stream::connect(gw.listen, false).unwrap();
    let r = client::login(&mut s, "bob", "other");
    let took = t.elapsed();
    farm.broker.signal(nix::sys::signal::Signal::SIGCONT);
    println!("login with the broker stopped: {} after {took:?}", r.status);
    assert!(matches!(r.status, 503 | 504), "{r:?}");
    let answer = format!("{}{}", r.head, String::from_utf8_lossy(&r.body));
    assert!(!answer.contains("broker-1"), "{answer}");
    // The close line of that login names the broker (the answer did not).
    assert!(
        wait_for(Duration::from_secs(3), || gw
            .proc
            .log_text()
            .lines()
            .any(|l| l.contains("closed: login: 50") && l.contains("broker-1"))),
        "{}",
        gw.proc.log_text()
    );
}

#[test]
fn an_expired_ticket_opens_nothing() {
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    gw.wait_healthy();
    // The test farm's tickets live 3 s.
    let ticket = client::ticket_for(gw.listen, false, "bob", "other");
    std::thread::sleep(Duration::from_millis(3300));
    let before = farm.hosts[0].accepted();
    let (_s, r) = client::tunnel(gw.listen, false, &ticket);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (403, "ticket_expired"),
        "{r:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(farm.hosts[0].accepted(), before);
}

#[test]
fn other_http_requests_go_to_the_configured_web_server_unchanged() {
    let farm = GatewayFarm::start(1);
    let web = crate::farm::StandIn::start("web");
    let gw = farm.start_gateway("gw-a", "site-a", &format!("forward_http = \"{}\"\n", web.addr));
    gw.wait_healthy();
    for tls in [false, true] {
        let mut s = Stream::connect(gw.listen, tls).unwrap();
        let request = b"GET /index.html HTTP/1.1\r\nHost: portal\r\nX-Test: 1\r\n\r\n";
        s.write_all(request).unwrap();
        s.flush().unwrap();
        // The stand-in echoes: the request comes back as the web server received it.
        let mut back = vec![0u8; request.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, request);
        let got = web.received.lock().unwrap().last().cloned().unwrap();
        assert_eq!(got, request, "the web server got other bytes (tls: {tls})");
    }
    let m = gw.metrics();
    assert!(m.contains("endpoint=\"forward_http\""), "{m}");
}

#[test]
fn a_refused_body_still_being_sent_does_not_turn_the_answer_into_a_reset() {
    // A client sends a body the gateway refuses (413) and keeps sending. close(2) with its
    // bytes unread would answer with a RST, which can take the 413 with it: the close
    // lingers instead, so the client reads the answer and then a clean end.
    let farm = GatewayFarm::start(1);
    let gw = farm.start_gateway("gw-a", "site-a", "");
    for round in 0..10 {
        let mut s = std::net::TcpStream::connect(gw.listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /api/v1/login HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000000\r\n\r\n")
            .unwrap();
        let mut sender = s.try_clone().unwrap();
        let blaster = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let until = Instant::now() + Duration::from_millis(300);
            while Instant::now() < until && sender.write_all(&chunk).is_ok() {}
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        blaster.join().unwrap();
        let head = String::from_utf8_lossy(&got[..got.len().min(40)]).into_owned();
        println!("round {round}: client read {head:?}..., then {end:?}");
        assert!(head.starts_with("HTTP/1.1 413"), "{head:?}");
        assert!(end.is_ok(), "a reset after the answer: {end:?}");
    }
    assert!(
        !gw.proc.log_text().contains("the answer was not taken"),
        "{}",
        gw.proc.log_text()
    );
}
