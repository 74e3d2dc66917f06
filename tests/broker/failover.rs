//! Two brokers: the gateway control client fails over when the primary is SIGKILLed (within
//! a second, measured) and when it is SIGSTOPped (keepalive timeout, a few seconds); every
//! request gets an answer or a failure with a reason, and a host choice in flight on the hung
//! broker is answered by the next one.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use gatehouse::broker_role::{ClientFailure, ControlClient};
use gatehouse_control::message::{ChooseHost, Request};

use super::common::{wait_for, Farm};

fn probe() -> Request {
    Request::ChooseHost(ChooseHost {
        routing_token: None,
        resource: None,
        site: "site-a".into(),
        user_hint: None,
    })
}

/// Sends probes back to back from `from` on and returns how long after `from` the first
/// answer from `broker` came, with every failure seen meanwhile.
fn time_until_answered_by(
    client: &ControlClient,
    broker: &str,
    from: Instant,
    limit: Duration,
) -> (Option<Duration>, Vec<ClientFailure>) {
    let mut failures = Vec::new();
    while from.elapsed() < limit {
        match client.call(probe()) {
            Ok(a) if a.broker == broker => return (Some(from.elapsed()), failures),
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(f) => failures.push(f),
        }
    }
    (None, failures)
}

fn two_brokers_and_a_client(farm: &Farm) -> (super::common::Broker, super::common::Broker, ControlClient) {
    let b1 = farm.start_broker("broker-1");
    let b2 = farm.start_broker("broker-2");
    let client = farm.client(&[b1.gw, b2.gw]);
    // Both links up; the primary answers.
    assert!(wait_for(Duration::from_secs(10), || {
        b1.proc.log_text().contains("role=gateway") && b2.proc.log_text().contains("role=gateway")
    }));
    let a = client.call(probe()).expect("primary answers");
    assert_eq!(a.broker, "broker-1");
    (b1, b2, client)
}

#[test]
fn failover_on_sigkill_within_a_second() {
    let farm = Farm::new();
    let (b1, _b2, client) = two_brokers_and_a_client(&farm);
    let killed = Instant::now();
    b1.proc.signal(Signal::SIGKILL);
    let (after, failures) = time_until_answered_by(&client, "broker-2", killed, Duration::from_secs(5));
    let after = after.expect("no answer from broker-2 within 5 s");
    eprintln!(
        "SIGKILL failover: first answer from broker-2 {} ms after the kill; failures meanwhile: {failures:?}",
        after.as_millis()
    );
    assert!(after < Duration::from_secs(1), "failover took {after:?}");
    for f in &failures {
        assert!(
            matches!(f, ClientFailure::BrokerLost { .. }),
            "unexpected failure {f:?}"
        );
    }
}

#[test]
fn failover_on_sigstop_after_keepalive_timeout() {
    let farm = Farm::new();
    let (b1, _b2, client) = two_brokers_and_a_client(&farm);
    let stopped = Instant::now();
    b1.proc.signal(Signal::SIGSTOP);
    let (after, failures) = time_until_answered_by(&client, "broker-2", stopped, Duration::from_secs(10));
    let after = after.expect("no answer from broker-2 within 10 s");
    eprintln!(
        "SIGSTOP failover: first answer from broker-2 {} ms after the stop; failures meanwhile: {failures:?}",
        after.as_millis()
    );
    // Keepalive: 1 s interval, 3 s timeout: the hung broker is detected within 4 s, plus polling.
    assert!(
        after >= Duration::from_secs(2),
        "failed over before the keepalive timeout: {after:?}"
    );
    assert!(after < Duration::from_millis(5500), "failover took {after:?}");
    // The host choice in flight when the broker hung was asked again of broker-2 once the
    // link was declared dead (any broker can answer it): not failed, not lost. (A login in
    // flight fails with `BrokerLost` instead: the client's unit tests.)
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        wait_for(Duration::from_secs(2), || client.connected_brokers()
            == ["broker-2"]),
        "{:?}",
        client.connected_brokers()
    );
    b1.proc.signal(Signal::SIGCONT);
}

#[test]
fn sigterm_drains_the_primary_and_the_client_moves_on() {
    let farm = Farm::new();
    let (mut b1, _b2, client) = two_brokers_and_a_client(&farm);
    let stopped = Instant::now();
    b1.proc.signal(Signal::SIGTERM);
    let (after, failures) = time_until_answered_by(&client, "broker-2", stopped, Duration::from_secs(5));
    let after = after.expect("no answer from broker-2 within 5 s");
    eprintln!(
        "SIGTERM: first answer from broker-2 {} ms after; failures meanwhile: {failures:?}",
        after.as_millis()
    );
    assert!(after < Duration::from_secs(1), "took {after:?}");
    assert!(super::common::wait_for(Duration::from_secs(5), || matches!(
        b1.proc.child.try_wait(),
        Ok(Some(_))
    )));
}
