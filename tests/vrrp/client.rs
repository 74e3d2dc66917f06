//! A client in its own namespace keeps opening connections to VIP:port while the VIP moves
//! (SIGTERM handover, preemption by the returning node, SIGKILL). Reports failed connects and
//! the longest gap between two answered connections per phase, and checks that the client's
//! source reaches the same gateway through either HALB (`source-hash` over the same list).

use std::time::{Duration, Instant};

use crate::common::{
    gap_stats, gateways_seen, ms, ready, wait_until, Gatehouse, Gateways, HalbSpec, Lab, Prober, VipWatch,
    CLIENT,
};

#[test]
fn client_reaches_the_same_gateway_across_failovers() {
    if !ready("client_reaches_the_same_gateway_across_failovers", &[]) {
        return;
    }
    let client = format!("{CLIENT}/24");
    let lab = Lab::create(
        'c',
        &[
            ("a", &["10.213.0.1/24"]),
            ("b", &["10.213.0.2/24"]),
            ("c", &[client.as_str()]),
            ("g", &["10.213.0.11/24", "10.213.0.12/24", "10.213.0.13/24"]),
        ],
    );
    let _gateways = Gateways::start(&lab.ns("g"));
    let (wa, wb) = (VipWatch::start(&lab.ns("a")), VipWatch::start(&lab.ns("b")));
    let a = Gatehouse::start(&lab, "a", &HalbSpec::new(150));
    let b = Gatehouse::start(&lab, "b", &HalbSpec::new(100));
    wait_until(Duration::from_secs(3), || wa.holds() && b.state() == "backup").expect("a master");

    let prober = Prober::start(&lab.ns("c"), Duration::from_millis(30));
    let start = Instant::now();
    prober
        .wait_successes(start, 5, Duration::from_secs(3))
        .expect("client reaches the VIP through a");
    let settle = Duration::from_millis(400);
    let mut phases = Vec::new();

    // SIGTERM: handover first, then drain.
    let mut a = a;
    let t1 = Instant::now();
    a.signal(libc::SIGTERM);
    wb.wait(true, Duration::from_secs(2)).expect("b took over");
    std::thread::sleep(settle);
    prober
        .wait_successes(t1, 5, Duration::from_secs(2))
        .expect("client served by b");
    a.wait_exit(Duration::from_secs(3)).expect("a stopped");
    drop(a);
    phases.push(("SIGTERM on master", t1, Instant::now()));

    // The old master returns and preempts.
    let t2 = Instant::now();
    let a = Gatehouse::start(&lab, "a", &HalbSpec::new(150));
    wait_until(Duration::from_secs(3), || wa.holds() && !wb.holds()).expect("a preempted");
    std::thread::sleep(settle);
    prober
        .wait_successes(t2, 5, Duration::from_secs(2))
        .expect("client served by a again");
    phases.push(("preemption by returning master", t2, Instant::now()));

    // SIGKILL: a crash.
    let t3 = Instant::now();
    a.signal(libc::SIGKILL);
    wb.wait(true, Duration::from_secs(2))
        .expect("b took over after the crash");
    std::thread::sleep(settle);
    prober
        .wait_successes(t3, 5, Duration::from_secs(2))
        .expect("client served by b after the crash");
    phases.push(("SIGKILL on master", t3, Instant::now()));

    let probes = prober.stop();
    println!("client {CLIENT} -> VIP during failovers (0.1 s adverts, 30 ms connect timeout):");
    println!("{:<32} {:>8} {:>12}", "phase", "failed", "longest gap");
    let mut gaps = Vec::new();
    for (name, from, to) in &phases {
        let (failed, gap) = gap_stats(&probes, *from, *to);
        println!("{name:<32} {failed:>8} {:>12}", ms(gap));
        gaps.push(gap);
    }
    let seen = gateways_seen(&probes, start, Instant::now());
    println!("gateways seen by the client: {seen:?}");
    assert_eq!(
        seen.len(),
        1,
        "the same source must reach the same gateway: {seen:?}"
    );
    // Generous bounds: the numbers are the report; the bench script tracks them.
    assert!(gaps[0] < Duration::from_millis(500), "SIGTERM gap {:?}", gaps[0]);
    assert!(gaps[2] < Duration::from_millis(1000), "SIGKILL gap {:?}", gaps[2]);
    let answered = probes.iter().filter(|p| p.outcome.is_ok()).count();
    assert!(answered > 50, "only {answered} answered connections");
}
