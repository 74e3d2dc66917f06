//! Idle timeout, no backend available, connect retries with passive marking, and IPv6.

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn idle_tunnel_is_closed_after_idle_timeout() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &simple_config(
            admin,
            listen,
            "",
            "idle_timeout = \"300ms\"",
            &[("echo", echo.addr)],
        ),
        admin,
    );
    let mut c = connect_from(listen, None).unwrap();
    assert!(echo_round_trip(&mut c, b"one round trip, then silence"));
    let start = Instant::now();
    let seen = read_outcome(&mut c, Duration::from_secs(5));
    let took = start.elapsed();
    println!("timeouts: idle_timeout 300ms, client saw {seen:?} after {took:?}");
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "saw {seen:?}");
    assert!(took >= Duration::from_millis(250), "closed too early: {took:?}");
    assert!(took < Duration::from_secs(2), "closed too late: {took:?}");
    assert_eq!(
        g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"idle_timeout\"}",
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );
}

#[test]
fn no_backend_closes_the_client_at_once() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &config_full(
            admin,
            listen,
            2,
            "",
            "",
            "",
            &[
                ("m1", echo.addr, "state = \"maintenance\""),
                ("m2", echo.addr, "state = \"maintenance\""),
            ],
        ),
        admin,
    );
    let mut c = connect_from(listen, None).unwrap();
    let start = Instant::now();
    let seen = read_outcome(&mut c, Duration::from_secs(5));
    let took = start.elapsed();
    println!("timeouts: every backend in maintenance, client saw {seen:?} after {took:?}");
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "saw {seen:?}");
    assert!(took < Duration::from_secs(1), "not closed at once: {took:?}");
    assert_eq!(
        g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"no_backend\"}",
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );
}

#[test]
fn refused_connect_retries_the_next_backend_and_marks_it_down() {
    let echo = EchoServer::start(None);
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (admin, listen) = addrs();
    // Active checks slow enough (and fall high enough) that only passive marking can take
    // the dead backend down within the test.
    let pool = "retries = 2\npassive_fall = 3\nhealth = { check = \"tcp\", interval = \"30s\", timeout = \"1s\", rise = 1, fall = 10 }";
    let g = Gatehouse::start(
        &config_full(
            admin,
            listen,
            1,
            "",
            pool,
            "",
            &[("dead", dead, ""), ("echo", echo.addr, "")],
        ),
        admin,
    );
    let ok = (0..20).filter(|_| echo_once(listen)).count();
    let failures = g.metric("gatehouse_backend_connect_failures_total{pool=\"p\",backend=\"dead\"}");
    println!("timeouts: {ok}/20 served with a dead first backend; its connect failures {failures}");
    assert_eq!(ok, 20, "every connection succeeds through the retry");
    assert!(
        wait_until(Duration::from_secs(3), || g.health("p", "dead") == "down"),
        "dead backend marked down after passive_fall failed connects: {}",
        g.backend("p", "dead")
    );
    // One worker: the third failure takes the backend out of rotation at once, without
    // waiting for the checker's verdict to come back in a snapshot (under load that took
    // seven more failed connects).
    assert_eq!(failures, 3.0, "connect failures");
    assert_eq!(g.closed("connect_failed"), 0.0, "no client saw a failed connect");
    g.assert_nothing_held();
}

#[test]
fn ipv6_listener_and_backend() {
    if TcpListener::bind("[::1]:0").is_err() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("::1 is not available on this CI machine");
        }
        eprintln!("\n!!! SKIPPED ipv6_listener_and_backend: ::1 is not available here !!!\n");
        return;
    }
    let echo = EchoServer::start_on("[::1]:0".parse().unwrap(), None);
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let port = TcpListener::bind("[::1]:0").unwrap().local_addr().unwrap().port();
    let listen: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let g = Gatehouse::start(&simple_config(admin, listen, "", "", &[("v6", echo.addr)]), admin);
    let mut c = connect_from(listen, None).expect("connect to [::1]");
    assert!(echo_round_trip(&mut c, b"over IPv6 both sides"));
    println!(
        "timeouts: IPv6 {} -> {listen} -> {} echoed",
        c.local_addr().unwrap(),
        echo.addr
    );
    assert_eq!(g.backend_total("p", "v6"), 1.0);
}

fn traffic_keeps_the_tunnel_open(splice: bool) {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let extra = format!("idle_timeout = \"300ms\"\nsplice = {splice}");
    let g = Gatehouse::start(
        &simple_config(admin, listen, "", &extra, &[("echo", echo.addr)]),
        admin,
    );
    let mut c = connect_from(listen, None).unwrap();
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_millis(1200) {
        assert!(
            echo_round_trip(&mut c, b"still typing"),
            "splice={splice}: a tunnel with traffic every 100 ms was closed after {:?} (idle_timeout 300ms)",
            start.elapsed()
        );
        rounds += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("timeouts: splice={splice}, {rounds} round trips over 1.2 s kept a 300ms-idle tunnel open");
    assert_eq!(g.closed("idle_timeout"), 0.0);
}

#[test]
fn traffic_keeps_the_tunnel_open_splice() {
    traffic_keeps_the_tunnel_open(true);
}

#[test]
fn traffic_keeps_the_tunnel_open_copy() {
    traffic_keeps_the_tunnel_open(false);
}

#[test]
fn per_backend_connection_limit_sends_overflow_elsewhere() {
    let (s1, s2) = (NameServer::start("b1"), NameServer::start("b2"));
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &config_full(
            admin,
            listen,
            1,
            "",
            "algorithm = \"first\"",
            "",
            &[("b1", s1.addr, "max_connections = 1"), ("b2", s2.addr, "")],
        ),
        admin,
    );
    let (first, held) = who_answers(listen, None).expect("served");
    let (second, _held2) = who_answers(listen, None).expect("served");
    println!("timeouts: b1 max_connections 1 with algorithm first: {first}, then {second}");
    assert_eq!((first.as_str(), second.as_str()), ("b1", "b2"));
    drop(held);
    assert!(wait_until(Duration::from_secs(3), || g.backend("p", "b1")
        ["active"]
        == 0));
    let (third, _h) = who_answers(listen, None).expect("served");
    assert_eq!(third, "b1", "b1 takes connections again below its limit");
    // b1 full again (the third client holds it) and b2 drained: no backend can take a
    // client, and the refusal says b1 is full, not down.
    g.set_state("p", "b2", "drain");
    let refused = connect_from(listen, None).map(|mut c| {
        let mut buf = [0u8; 1];
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        matches!(c.read(&mut buf), Ok(0) | Err(_))
    });
    assert!(
        refused.unwrap_or(true),
        "a client got through with every backend full"
    );
    assert!(
        wait_until(Duration::from_secs(3), || g
            .log()
            .contains("1 up but at their max_connections")),
        "{}",
        g.log()
    );
}

#[test]
fn silent_trusted_forwarder_hits_the_handshake_timeout() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &simple_config(
            admin,
            listen,
            "",
            "accept_proxy_from = [\"127.0.0.1/32\"]\nhandshake_timeout = \"300ms\"",
            &[("echo", echo.addr)],
        ),
        admin,
    );
    let mut c = connect_from(listen, None).unwrap();
    let start = Instant::now();
    let seen = read_outcome(&mut c, Duration::from_secs(5));
    let took = start.elapsed();
    println!("timeouts: silent trusted forwarder, handshake_timeout 300ms: {seen:?} after {took:?}");
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "saw {seen:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "after {took:?}"
    );
    assert_eq!(
        g.wait_metric(
            "gatehouse_connections_closed_total{reason=\"handshake_timeout\"}",
            1.0,
            Duration::from_secs(2)
        ),
        1.0
    );
}
