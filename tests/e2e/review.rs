//! Review of the engine under faults: each test here reproduces one suspected bug and fails
//! while the bug is present. Names say what a user would see go wrong.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gatehouse::engine::timer::{TimerWheel, TICK};
use gatehouse::proxy_protocol::ProxyHeader;

use crate::common::*;

/// Reads everything until EOF (or an error / the timeout); returns the bytes and how it ended.
fn read_all(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, String) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, "eof".into()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, format!("error: {e}")),
        }
    }
}

/// A request and its FIN sent in one go on a listener with `accept_proxy_from` from a client
/// that is NOT trusted (RefuseProxy read): the backend must still get the request and the
/// client its answer (half-close carried through).
#[test]
fn review_untrusted_client_request_then_fin_is_answered() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let cfg = simple_config(
        admin,
        listen,
        "",
        "accept_proxy_from = [\"10.0.0.0/8\"]",
        &[("b", echo.addr)],
    );
    let g = Gatehouse::start(&cfg, admin);
    // Stopped while the client connects, so request and FIN are both queued at accept.
    g.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut c = connect_from(listen, None).unwrap();
    c.write_all(b"hi").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    g.signal(nix::sys::signal::Signal::SIGCONT);
    let (got, end) = read_all(&mut c, Duration::from_secs(3));
    assert_eq!(
        String::from_utf8_lossy(&got),
        "hi",
        "client got {got:?} then {end}; log:\n{}",
        g.log()
    );
}

/// The same through a trusted forwarder: PROXY v2 header + request + FIN in one go.
#[test]
fn review_trusted_proxy_request_then_fin_is_answered() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let cfg = simple_config(
        admin,
        listen,
        "",
        "accept_proxy_from = [\"127.0.0.0/8\"]",
        &[("b", echo.addr)],
    );
    let g = Gatehouse::start(&cfg, admin);
    g.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut c = connect_from(listen, None).unwrap();
    let mut msg = Vec::new();
    ProxyHeader::proxy("192.0.2.7:4000".parse().unwrap(), listen)
        .encode(&mut msg)
        .unwrap();
    msg.extend_from_slice(b"hello");
    c.write_all(&msg).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    g.signal(nix::sys::signal::Signal::SIGCONT);
    let (got, end) = read_all(&mut c, Duration::from_secs(3));
    assert_eq!(
        String::from_utf8_lossy(&got),
        "hello",
        "client got {got:?} then {end}; log:\n{}",
        g.log()
    );
}

/// A backend whose connect(2) fails at once (EINVAL: link-local address without a scope;
/// no packet leaves the host) must not keep a connection slot counted after the retry.
#[test]
fn review_synchronous_connect_error_releases_backend_slot() {
    let echo = EchoServer::start(None);
    let bad: SocketAddr = "[fe80::1]:9".parse().unwrap();
    let (admin, listen) = addrs();
    let cfg = simple_config(
        admin,
        listen,
        "algorithm = \"first\"",
        "",
        &[("bad", bad), ("good", echo.addr)],
    );
    let g = Gatehouse::start(&cfg, admin);
    for _ in 0..3 {
        assert!(echo_once(listen), "retry onto the good backend works");
    }
    let failures = g.backend("p", "bad")["connect_failures"].clone();
    assert_eq!(failures, 3, "every connect to bad failed at once");
    g.assert_nothing_held();
}

/// A client that half-closes and then resets: the reset must reach the backend and the session
/// must end (not linger until the 8 h idle timeout).
#[test]
fn review_reset_after_half_close_is_carried_through() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_end(&mut req);
        tx.send(req).unwrap();
        // Hold the connection (like a server still working on the answer) and report
        // whether the proxy ever reset or closed it.
        std::thread::sleep(Duration::from_secs(2));
        let err = s.take_error().ok().flatten().map(|e| e.to_string());
        let write = s.write_all(b"late answer").and_then(|_| {
            std::thread::sleep(Duration::from_millis(200));
            s.write_all(b"more")
        });
        let _ = tx.send(format!("so_error={err:?} write={write:?}").into_bytes());
    });
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &simple_config(admin, listen, "", "", &[("b", backend_addr)]),
        admin,
    );
    let c = connect_from(listen, None).unwrap();
    (&c).write_all(b"request").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let req = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(req, b"request");
    // Abort: SO_LINGER 0 then close sends a RST.
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let gone = wait_until(Duration::from_millis(1500), || {
        g.metric("gatehouse_connections_active") == 0.0
    });
    let active = g.metric("gatehouse_connections_active");
    // The backend checks SO_ERROR at 2 s (None: no RST reached it), then writes: only that
    // write makes the proxy notice the dead client.
    let seen = String::from_utf8(rx.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
    assert!(
        gone,
        "session still held 1.5 s after the client's RST (active = {active}); backend at 2 s saw: {seen}"
    );
}

/// Accepted client sockets must have TCP_NODELAY (issue 2, "Accept: TCP_NODELAY") and the
/// configured keepalive. Reads the options of gatehouse's own sockets via pidfd_getfd(2);
/// the backend socket (which gatehouse tunes explicitly) is the control.
#[test]
fn review_client_socket_has_nodelay_and_keepalive() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(&simple_config(admin, listen, "", "", &[("b", echo.addr)]), admin);
    let mut c = connect_from(listen, None).unwrap();
    assert!(echo_round_trip(&mut c, b"x"));
    let client_local = c.local_addr().unwrap();
    let opts = |local: Option<SocketAddr>, peer: SocketAddr| socket_options(g.proc.pid(), local, peer);
    let backend_side = opts(None, echo.addr).expect("found gatehouse's backend socket");
    assert_eq!(
        backend_side,
        (true, true),
        "control: backend socket nodelay/keepalive"
    );
    let client_side = opts(Some(listen), client_local).expect("found gatehouse's client socket");
    assert_eq!(
        client_side,
        (true, true),
        "client socket (nodelay, keepalive) as accepted by gatehouse"
    );
}

/// (TCP_NODELAY, SO_KEEPALIVE) of the socket in process `pid` connected to `peer`.
fn socket_options(pid: i32, local: Option<SocketAddr>, peer: SocketAddr) -> Option<(bool, bool)> {
    // SAFETY: plain syscalls; returned descriptors are owned by the Socket built below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
    let mut found = None;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.to_string_lossy().starts_with("socket:") {
            continue;
        }
        let Ok(num) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, num, 0) } as i32;
        if fd < 0 {
            continue;
        }
        let sock = unsafe { socket2::Socket::from_raw_fd(fd) };
        let peer_ok = sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(peer);
        let local_ok = local.is_none_or(|l| sock.local_addr().ok().and_then(|a| a.as_socket()) == Some(l));
        if peer_ok && local_ok {
            found = Some((sock.nodelay().ok()?, sock.keepalive().ok()?));
            break;
        }
    }
    unsafe { libc::close(pidfd) };
    found
}

/// An entry far in the future (an 8 h idle timer, here 1 h) must not make the loop spin when
/// the wheel passes its slot on an earlier revolution: `timeout` should point at the entry
/// (or a bounded wake-up), not return zero for a whole tick on every revolution.
#[test]
fn review_timer_wheel_does_not_busy_wait_on_far_entries() {
    let t0 = Instant::now();
    let mut w = TimerWheel::new(t0);
    let deadline = t0 + Duration::from_secs(3600);
    w.insert(deadline, 1, 1);
    let slot = w.tick_of(deadline) % 1024;
    // Midway through the tick that lands on that slot in the first revolution.
    let now = t0 + TICK * slot as u32 + TICK / 2;
    let mut due = Vec::new();
    w.advance(now, &mut due);
    assert!(due.is_empty(), "nothing is due for an hour");
    // Count how many zero-timeout polls the event loop would make in the next tick.
    let mut spins = 0;
    let mut t = now;
    while t < now + TICK && spins < 1000 {
        let wait = w.timeout(t).unwrap();
        if wait > Duration::ZERO {
            break;
        }
        spins += 1;
        t += Duration::from_micros(100);
        w.advance(t, &mut due);
    }
    assert_eq!(
        spins, 0,
        "event loop would poll with a zero timeout {spins} times in a row (busy wait)"
    );
}

/// A duration past the config's bound is refused with a clear error, and the largest one
/// it accepts must not panic a worker when a connection arrives.
#[test]
fn review_huge_connect_timeout_does_not_kill_workers() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let huge = simple_config(
        admin,
        listen,
        "",
        "connect_timeout = \"18446744073709551615s\"",
        &[("b", echo.addr)],
    );
    let errors = gatehouse::config::load_str(&huge, "t.toml", Default::default())
        .expect_err("a duration of 584 billion years is refused");
    assert!(errors.to_string().contains("connect_timeout"), "{errors}");
    let cfg = simple_config(
        admin,
        listen,
        "",
        "connect_timeout = \"3650d\"\nidle_timeout = \"3650d\"\nhandshake_timeout = \"3650d\"",
        &[("b", echo.addr)],
    );
    // `gatehouse check` and `run` share validation: the file is accepted.
    assert!(gatehouse::config::load_str(&cfg, "t.toml", Default::default()).is_ok());
    let g = Gatehouse::start(&cfg, admin);
    let ok = echo_once(listen);
    let log = g.log();
    assert!(ok && !log.contains("panicked"), "echo ok = {ok}; log:\n{log}");
}

/// A backend in `maintenance` at start, later set `up` through the admin API, must be
/// health-checked like the others (it is dead here, so it must go down).
#[test]
fn review_backend_back_from_maintenance_is_health_checked() {
    let echo = EchoServer::start(None);
    let dead_b: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let dead_c: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (admin, listen) = addrs();
    let cfg = config_full(
        admin,
        listen,
        1,
        "",
        "health = { check = \"tcp\", interval = \"100ms\", timeout = \"100ms\", rise = 1, fall = 2 }",
        "",
        &[
            ("a", echo.addr, ""),
            ("b", dead_b, "state = \"maintenance\""),
            ("c", dead_c, ""),
        ],
    );
    let g = Gatehouse::start(&cfg, admin);
    g.set_state("p", "b", "up");
    let c_down = wait_until(Duration::from_secs(3), || g.health("p", "c") == "down");
    assert!(c_down, "control: a dead backend is marked down by the checks");
    let b_down = wait_until(Duration::from_secs(2), || g.health("p", "b") == "down");
    assert!(
        b_down,
        "dead backend b, back in service, still reported {}: {}",
        g.health("p", "b"),
        g.backend("p", "b")
    );
}

/// A reload whose new listener address cannot be bound must not report success while the
/// node silently stops serving the listener.
#[test]
fn review_reload_with_unbindable_listener_keeps_serving() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(&simple_config(admin, listen, "", "", &[("b", echo.addr)]), admin);
    assert!(echo_once(listen));
    // Someone else holds the new port (no SO_REUSEPORT).
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    g.rewrite_config(&simple_config(admin, taken, "", "", &[("b", echo.addr)]));
    let (status, body) = http(admin, "POST", "/api/v1/reload", "").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let old_serves = echo_once(listen);
    assert!(
        status != 200 && old_serves,
        "reload answered {status} {body:?}; old listener still serving: {old_serves}; log:\n{}",
        g.log()
    );
}

/// Errors in `[[halb.pool.backend]]` tables (the documented alias of `backends`) must point
/// at the offending line.
#[test]
fn review_backend_alias_error_points_at_the_key() {
    let text = "[halb]\n\
                [[halb.listener]]\n\
                name = \"front\"\n\
                bind = \"127.0.0.1:8000\"\n\
                pool = \"p\"\n\
                \n\
                [[halb.pool]]\n\
                name = \"p\"\n\
                \n\
                [[halb.pool.backend]]\n\
                name = \"a\"\n\
                address = \"127.0.0.1:9000\"\n\
                weight = 0\n";
    let errors = gatehouse::config::load_str(text, "t.toml", Default::default()).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].line, 13, "{errors}");
}
