//! Health checks: a killed backend, a hung one (SIGSTOP), and a drained one.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::*;

const CHECKS: &str = "interval = \"200ms\", timeout = \"200ms\", rise = 2, fall = 2";
/// fall x (interval + timeout) = 800 ms, plus a generous margin for a loaded machine.
const DOWN_BOUND: Duration = Duration::from_secs(3);

/// Waits until the admin API reports `want` for a backend; returns how long it took.
fn time_until_health(g: &Gatehouse, pool: &str, name: &str, want: &str) -> Option<Duration> {
    let start = Instant::now();
    wait_until(Duration::from_secs(10), || g.health(pool, name) == want).then(|| start.elapsed())
}

#[test]
fn killed_backend_goes_down_and_comes_back() {
    let (s1, a1) = standin("echo");
    let (s2, a2) = standin("echo");
    let (_s3, a3) = standin("echo");
    let (admin, listen) = addrs();
    let pool_extra = format!("health = {{ check = \"tcp\", {CHECKS} }}");
    let g = Gatehouse::start(
        &simple_config(
            admin,
            listen,
            &pool_extra,
            "",
            &[("h1", a1), ("h2", a2), ("h3", a3)],
        ),
        admin,
    );
    assert!(
        wait_until(Duration::from_secs(3), || ["h1", "h2", "h3"]
            .iter()
            .all(|b| g.health("p", b) == "up")),
        "all up at start"
    );
    let _ = s1;
    drop(s2); // SIGKILL and reap
    let took = time_until_health(&g, "p", "h2", "down");
    println!("health: killed backend marked down after {took:?} (bound {DOWN_BOUND:?})");
    let took = took.expect("killed backend never marked down");
    assert!(took < DOWN_BOUND, "marked down after {took:?}");
    let before = g.backend_total("p", "h2");
    let mut ok = 0;
    for _ in 0..30 {
        if echo_once(listen) {
            ok += 1;
        }
    }
    let after = g.backend_total("p", "h2");
    println!(
        "health: {ok}/30 served; totals h1 {} h2 {before}->{after} h3 {}",
        g.backend_total("p", "h1"),
        g.backend_total("p", "h3")
    );
    assert_eq!(ok, 30, "every new connection served by the survivors");
    assert_eq!(after, before, "no new connection went to the killed backend");

    let _s2 = standin_at("echo", a2);
    let took = time_until_health(&g, "p", "h2", "up");
    println!("health: restarted backend up again after {took:?}");
    let took = took.expect("restarted backend never came back");
    assert!(took < DOWN_BOUND, "up after {took:?}");
    assert!(
        g.metric("gatehouse_health_transitions_total") >= 2.0,
        "transitions counted"
    );
    // The checks themselves, per backend: h2's refused connects while it was dead.
    let h2 = |name: &str, label: &str| g.metric(&format!("{name}{{pool=\"p\",backend=\"h2\"{label}}}"));
    assert!(h2("gatehouse_health_checks_total", ",result=\"failed\"") >= 2.0);
    assert!(h2("gatehouse_health_checks_total", ",result=\"ok\"") >= 2.0);
    assert!(h2("gatehouse_health_check_failures_total", ",reason=\"refused\"") >= 2.0);
    assert!(h2("gatehouse_health_check_seconds", "") > 0.0);
}

/// `python3 -m http.server` on a free port, answering GET / with 200.
fn http_server(dir: &std::path::Path) -> (Proc, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is needed for the hung-backend test");
    let p = Proc { child };
    assert!(
        wait_until(Duration::from_secs(10), || http_get_ok(addr)),
        "python http.server on {addr} did not start"
    );
    (p, addr)
}

fn http_get_ok(addr: SocketAddr) -> bool {
    matches!(http(addr, "GET", "/", ""), Some((200, _)))
}

#[test]
fn hung_backend_goes_down_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "ok\n").unwrap();
    let (w1, a1) = http_server(dir.path());
    let (_w2, a2) = http_server(dir.path());
    let (admin, listen) = addrs();
    let pool_extra = format!("health = {{ check = \"http\", path = \"/\", {CHECKS} }}");
    let g = Gatehouse::start(
        &simple_config(admin, listen, &pool_extra, "", &[("w1", a1), ("w2", a2)]),
        admin,
    );
    assert!(
        wait_until(Duration::from_secs(3), || g.health("p", "w1") == "up"
            && g.health("p", "w2") == "up"),
        "both up at start"
    );
    w1.signal(Signal::SIGSTOP);
    let took = time_until_health(&g, "p", "w1", "down");
    println!("health: hung (SIGSTOP) backend marked down after {took:?} (bound {DOWN_BOUND:?})");
    let took = took.expect("hung backend never marked down");
    assert!(took < DOWN_BOUND, "marked down after {took:?}");
    let before = g.backend_total("p", "w1");
    let mut ok = 0;
    for _ in 0..10 {
        let Ok(mut s) = connect_from(listen, None) else {
            continue;
        };
        let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.0 200") {
            ok += 1;
        }
    }
    println!("health: {ok}/10 GETs served while w1 hung");
    assert_eq!(ok, 10, "every new connection served by the survivor");
    assert_eq!(
        g.backend_total("p", "w1"),
        before,
        "no new connection to the hung backend"
    );
    w1.signal(Signal::SIGCONT);
    let took = time_until_health(&g, "p", "w1", "up");
    println!("health: resumed backend up again after {took:?}");
    let took = took.expect("resumed backend never came back");
    assert!(took < DOWN_BOUND, "up after {took:?}");
}

#[test]
fn drained_backend_keeps_its_tunnels_and_takes_no_new_ones() {
    let servers: Vec<EchoServer> = ["d1", "d2", "d3"]
        .iter()
        .map(|n| EchoServer::start(Some(n)))
        .collect();
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &simple_config(
            admin,
            listen,
            "",
            "",
            &[
                ("d1", servers[0].addr),
                ("d2", servers[1].addr),
                ("d3", servers[2].addr),
            ],
        ),
        admin,
    );
    let (name, mut held) = who_answers(listen, None).expect("first connection served");
    g.set_state("p", &name, "drain");
    assert_eq!(g.backend("p", &name)["admin_state"], "drain");
    assert!(
        echo_round_trip(&mut held, b"still here after drain\n"),
        "the established tunnel to the drained backend keeps working"
    );
    let before = g.backend_total("p", &name);
    let mut seen = Vec::new();
    for _ in 0..20 {
        let (n, _s) = who_answers(listen, None).expect("new connection served");
        seen.push(n);
    }
    println!("drain: {name} drained; 20 new connections went to {seen:?}");
    assert!(
        !seen.contains(&name),
        "a new connection went to the drained backend"
    );
    assert_eq!(g.backend_total("p", &name), before);
    assert!(echo_round_trip(&mut held, b"and after new traffic\n"));
    g.set_state("p", &name, "up");
    let back = (0..6).any(|_| who_answers(listen, None).is_some_and(|(n, _)| n == name));
    assert!(back, "the backend takes connections again once up");
}

#[test]
fn failed_connects_take_a_backend_out_again_after_it_came_back() {
    // Slow active checks (3 s) and passive marking after 3 failed connects in a row: a
    // backend that dies, comes back, and dies again is taken out by its failed connects
    // both times, not only the first.
    let (_s1, a1) = standin("echo");
    let (s2, a2) = standin("echo");
    let (admin, listen) = addrs();
    let pool_extra = "passive_fall = 3\nhealth = { check = \"tcp\", interval = \"3s\", timeout = \"500ms\", rise = 1, fall = 3 }";
    let g = Gatehouse::start(
        &simple_config(admin, listen, pool_extra, "", &[("h1", a1), ("h2", a2)]),
        admin,
    );
    assert!(wait_until(Duration::from_secs(5), || g.health("p", "h2") == "up"));
    let passive_lines = |g: &Gatehouse| g.log().matches("connects in a row failed").count();
    let mut s2 = Some(s2);
    for round in 1..=2 {
        drop(s2.take()); // SIGKILL: connects are refused at once
        let t = Instant::now();
        let mut clients = 0;
        while g.health("p", "h2") != "down" && clients < 20 {
            assert!(echo_once(listen), "a client failed: retries go to h1");
            clients += 1;
        }
        println!(
            "passive, round {round}: h2 down after {clients} clients, {:?}",
            t.elapsed()
        );
        assert_eq!(g.health("p", "h2"), "down", "round {round}");
        assert!(
            wait_until(Duration::from_secs(2), || passive_lines(&g) == round),
            "round {round}: marked down by its failed connects, not the 3 s check:\n{}",
            g.log()
        );
        s2 = Some(standin_at("echo", a2));
        assert!(
            wait_until(Duration::from_secs(8), || g.health("p", "h2") == "up"),
            "round {round}: back up"
        );
    }
}
