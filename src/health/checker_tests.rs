//! End-to-end checker tests on loopback, with short intervals and generous margins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};

use super::*;
use crate::health::outcome::Stage;
use crate::health::spec::{CheckKind, StatusMatch};
use crate::health::test_support::{answer_http, any_port, closed_port, say_nothing, Server};

fn spec(kind: CheckKind, interval_ms: u64, timeout_ms: u64, rise: u32, fall: u32) -> Arc<CheckSpec> {
    Arc::new(CheckSpec {
        kind,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
        send_proxy: false,
    })
}

fn target(addr: SocketAddr, spec: Arc<CheckSpec>, initial: Health) -> Target {
    Target {
        id: 7,
        name: "rdsh-1".into(),
        addr,
        spec,
        initial,
    }
}

/// Starts a checker whose events land in a channel with their arrival time.
fn start(targets: Vec<Target>) -> (HealthChecker, Receiver<(Instant, HealthEvent)>) {
    let (tx, rx) = unbounded();
    let checker = HealthChecker::spawn(
        targets,
        Arc::new(move |event| {
            let _ = tx.send((Instant::now(), event));
        }),
    );
    (checker, rx)
}

fn next_event(rx: &Receiver<(Instant, HealthEvent)>) -> (Instant, HealthEvent) {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("a health event within 5 s")
}

#[test]
fn dead_backend_goes_down_then_comes_back_up() {
    let (interval, timeout, rise, fall) = (50, 100, 2, 3);
    let server = Server::start(any_port(), |_| {});
    let addr = server.addr;
    let (checker, rx) = start(vec![target(
        addr,
        spec(CheckKind::Tcp, interval, timeout, rise, fall),
        Health::Up,
    )]);

    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.try_recv().is_err(), "a healthy backend stays up");

    let killed = Instant::now();
    server.stop();
    let (at, down) = next_event(&rx);
    let took = at - killed;
    println!("down after {took:?}: {}", down.transition.reason);
    assert_eq!((down.id, down.addr), (7, addr));
    assert_eq!(down.transition.to, Health::Down);
    assert_eq!(down.outcome, ProbeOutcome::Failed(ProbeFailure::Refused));
    // Refusals are instant: the third failure lands between 2 and 3 intervals later.
    let expected = Duration::from_millis(fall as u64 * interval + timeout);
    assert!(
        took >= Duration::from_millis((fall as u64 - 1) * interval - 10),
        "{took:?}"
    );
    assert!(
        took < expected + Duration::from_millis(700),
        "{took:?} vs ~{expected:?}"
    );
    assert_eq!(checker.statuses()[0].health(), Health::Down);

    let revived = Instant::now();
    let _server = Server::start(addr, |_| {});
    let (at, up) = next_event(&rx);
    let took = at - revived;
    println!("up after {took:?}: {}", up.transition.reason);
    assert_eq!(up.transition.to, Health::Up);
    assert!(
        took < Duration::from_millis(rise as u64 * interval + 700),
        "{took:?}"
    );

    let status = &checker.statuses()[0];
    let refused = status
        .failures_by_reason()
        .into_iter()
        .find(|(r, _)| *r == "refused")
        .map(|(_, n)| n);
    println!(
        "checks run {}, failed {}, refused {refused:?}, last {:?}",
        status.checks_run(),
        status.checks_failed(),
        status.last_check()
    );
    assert!(refused >= Some(fall as u64));
    assert_eq!(status.transitions(), 2);
    assert_eq!(status.health(), Health::Up);
    checker.stop();
}

#[test]
fn hung_backend_goes_down_through_timeouts() {
    let (interval, timeout, rise, fall) = (100, 80, 2, 3);
    let hung = Arc::new(AtomicBool::new(false));
    let hung_in_server = hung.clone();
    let server = Server::start(any_port(), move |mut s| {
        if hung_in_server.load(Ordering::SeqCst) {
            say_nothing(s);
        } else {
            answer_http(&mut s, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let kind = CheckKind::Http {
        path: "/health".into(),
        host: None,
        expect: StatusMatch::default(),
        tls: None,
    };
    let (checker, rx) = start(vec![target(
        server.addr,
        spec(kind, interval, timeout, rise, fall),
        Health::Down,
    )]);

    let (_, up) = next_event(&rx);
    assert_eq!(up.transition.to, Health::Up);

    let hung_at = Instant::now();
    hung.store(true, Ordering::SeqCst);
    let (at, down) = next_event(&rx);
    let took = at - hung_at;
    println!("hung backend down after {took:?}: {}", down.transition.reason);
    assert_eq!(down.transition.to, Health::Down);
    assert_eq!(
        down.outcome,
        ProbeOutcome::Failed(ProbeFailure::Timeout(Stage::Read))
    );
    let expected = Duration::from_millis(fall as u64 * interval + timeout);
    assert!(
        took >= Duration::from_millis((fall as u64 - 1) * interval + timeout - 10),
        "{took:?}"
    );
    assert!(
        took < expected + Duration::from_millis(700),
        "{took:?} vs ~{expected:?}"
    );
    checker.stop();
}

#[test]
fn stop_is_prompt_even_with_a_long_interval() {
    let server = Server::start(any_port(), |_| {});
    let (checker, _rx) = start(vec![
        target(server.addr, spec(CheckKind::Tcp, 10_000, 1_000, 2, 3), Health::Up),
        target(
            closed_port(),
            spec(CheckKind::Tcp, 10_000, 1_000, 2, 3),
            Health::Up,
        ),
    ]);
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    checker.stop();
    let took = started.elapsed();
    println!("stop took {took:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[test]
fn stop_is_prompt_when_every_probe_takes_longer_than_the_interval() {
    // A backend that accepts and never answers, checked every 100 ms with a 300 ms timeout:
    // each probe ends past the next one's start, so the next is always due at once.
    let server = Server::start(any_port(), say_nothing);
    let kind = CheckKind::Http {
        path: "/health".into(),
        host: None,
        expect: StatusMatch::default(),
        tls: None,
    };
    let (checker, rx) = start(vec![target(server.addr, spec(kind, 100, 300, 2, 2), Health::Up)]);
    let (_, down) = next_event(&rx);
    assert_eq!(down.transition.to, Health::Down);
    let started = Instant::now();
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        checker.stop();
        let _ = done_tx.send(());
    });
    // At most the probe in flight (its 300 ms timeout); before, stop never returned.
    let stopped = done_rx.recv_timeout(Duration::from_secs(5));
    let took = started.elapsed();
    println!("stop with a probe hanging took {took:?}");
    assert!(stopped.is_ok(), "stop did not return within 5 s");
    assert!(took < Duration::from_millis(800), "{took:?}");
}

#[test]
fn passive_failures_mark_down_with_their_reason() {
    // Nothing listens: active probes fail too, but with fall=3 and a 10 s interval at most
    // one runs during the test, and failed probes never reset the passive count.
    let addr = closed_port();
    let (checker, rx) = start(vec![target(
        addr,
        spec(CheckKind::Tcp, 10_000, 500, 2, 3),
        Health::Up,
    )]);
    let reporter = checker.passive_reporter();
    reporter.connect_failed(7, ProbeFailure::Refused);
    reporter.connect_succeeded(7);
    reporter.connect_failed(7, ProbeFailure::Refused);
    reporter.connect_failed(7, ProbeFailure::Timeout(Stage::Connect));
    reporter.connect_failed(99, ProbeFailure::Refused); // unknown id: ignored
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "a success in between restarts the count"
    );
    reporter.connect_failed(7, ProbeFailure::Refused);
    let (_, down) = next_event(&rx);
    assert_eq!(down.transition.to, Health::Down);
    assert_eq!(down.transition.reason, "passive: 3 consecutive connect failures");
    assert_eq!(down.outcome, ProbeOutcome::Failed(ProbeFailure::Refused));
    assert_eq!(checker.statuses()[0].passive_failures(), 4);
    checker.stop();
}

#[test]
fn jitter_stays_within_the_interval() {
    let seed = std::collections::hash_map::RandomState::new();
    let s = spec(CheckKind::Tcp, 1_000, 100, 1, 1);
    let mut distinct = std::collections::HashSet::new();
    for id in 0..50 {
        let mut t = target(closed_port(), s.clone(), Health::Up);
        t.id = id;
        let j = super::jitter(&seed, &t);
        assert!(j < s.interval, "{j:?}");
        distinct.insert(j);
    }
    assert!(distinct.len() > 40, "jitter spreads targets");
}

#[test]
fn passive_down_from_the_caller_then_probes_bring_it_back() {
    let server = Server::start(any_port(), |_| {});
    let (checker, rx) = start(vec![target(
        server.addr,
        spec(CheckKind::Tcp, 50, 100, 2, 3),
        Health::Up,
    )]);
    let reporter = checker.passive_reporter();
    let sent = Instant::now();
    reporter.passive_down(7, 5, ProbeFailure::Timeout(Stage::Connect));
    let (_, down) = next_event(&rx);
    assert_eq!(down.transition.to, Health::Down);
    assert_eq!(down.transition.reason, "passive: 5 consecutive connect failures");
    // The backend is actually fine: two good probes bring it back.
    let (at, up) = next_event(&rx);
    println!("up again {:?} after the passive down", at - sent);
    assert_eq!(up.transition.to, Health::Up);
    assert!(at - sent < Duration::from_millis(2 * 50 + 700));
    checker.stop();
}
