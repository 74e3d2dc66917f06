//! Two gatehouse HALBs on a bridge: election, SIGKILL / SIGTERM failover, preemption (on and
//! off), SIGSTOP / SIGCONT. Times are measured from the signal to the VIP appearing on the
//! other node (rtnetlink polled every millisecond) and printed.

use std::time::{Duration, Instant};

use gatehouse_vrrp::instance::{master_down_interval, skew_time};
use gatehouse_vrrp::Version;

use crate::common::{longest_overlap, ms, ready, Gatehouse, HalbSpec, Lab, VipWatch};

const ADVERT: Duration = Duration::from_millis(100);
/// Scheduling slack on a loaded 2-core machine, added to protocol times in assertions.
const SLACK: Duration = Duration::from_millis(150);

fn pair(tag: char) -> Lab {
    Lab::create(tag, &[("a", &["10.213.0.1/24"]), ("b", &["10.213.0.2/24"])])
}

#[test]
fn two_halbs_elect_fail_over_and_preempt() {
    if !ready("two_halbs_elect_fail_over_and_preempt", &[]) {
        return;
    }
    let lab = pair('e');
    let (wa, wb) = (VipWatch::start(&lab.ns("a")), VipWatch::start(&lab.ns("b")));
    let b = Gatehouse::start(&lab, "b", &HalbSpec::new(100));
    let a = Gatehouse::start(&lab, "a", &HalbSpec::new(150));

    // (1) The higher priority holds the VIP; the other holds nothing and sends nothing.
    wa.wait(true, Duration::from_secs(3))
        .expect("a (150) took the VIP");
    crate::common::wait_until(Duration::from_secs(2), || !wb.holds() && b.state() == "backup")
        .expect("b (100) settled as backup without the VIP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(wa.holds() && !wb.holds());
    assert_eq!(a.state(), "master");
    assert_eq!(b.state(), "backup");
    // A backup sends no adverts.
    let sent_by_b = b.metric("gatehouse_vrrp_adverts_sent_total");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.metric("gatehouse_vrrp_adverts_sent_total"), sent_by_b);
    assert!(b.metric("gatehouse_vrrp_adverts_received_total") > 0.0);
    assert!(a.metric("gatehouse_vrrp_adverts_sent_total") > 0.0);

    // (2a) SIGKILL the master: the backup takes over within its master-down interval.
    let md_b = master_down_interval(Version::V3, 100, ADVERT);
    let mut a = a;
    let t = Instant::now();
    a.signal(libc::SIGKILL);
    wb.wait(true, Duration::from_secs(2))
        .expect("b took over after SIGKILL");
    let took = wb.gained_after(t).expect("logged") - t;
    println!(
        "SIGKILL: b took the VIP after {} (master-down interval {})",
        ms(took),
        ms(md_b)
    );
    assert!(
        took <= md_b + SLACK,
        "takeover {took:?} > master-down {md_b:?} + slack"
    );
    a.wait_exit(Duration::from_secs(2)).expect("a died");
    // A killed process cannot remove its VIP (keepalived leaves it too).
    assert!(wa.holds(), "a SIGKILLed master keeps the VIP on its interface");
    drop(a);

    // The old master returns: removes its stale VIP at start and preempts.
    let t = Instant::now();
    let a = Gatehouse::start(&lab, "a", &HalbSpec::new(150));
    crate::common::wait_until(Duration::from_secs(3), || wa.holds() && !wb.holds()).expect("a preempted b");
    let back = wa.changes().iter().rev().find(|c| c.1).expect("gained").0 - t;
    println!(
        "restart + preempt: a holds the VIP again {} after start",
        ms(back)
    );
    assert!(
        wa.changes().iter().any(|c| c.0 > t && !c.1),
        "stale VIP removed at start"
    );

    // (2b) SIGTERM on the master hands over within about the skew time, then it drains.
    let skew_b = skew_time(Version::V3, 100, ADVERT);
    let mut a = a;
    let t = Instant::now();
    a.signal(libc::SIGTERM);
    wb.wait(true, Duration::from_secs(2))
        .expect("b took over after SIGTERM");
    let took = wb.gained_after(t).expect("logged") - t;
    println!("SIGTERM: b took the VIP after {} (skew {})", ms(took), ms(skew_b));
    assert!(
        took <= skew_b + SLACK,
        "handover {took:?} > skew {skew_b:?} + slack"
    );
    let status = a
        .wait_exit(Duration::from_secs(3))
        .expect("a exited after SIGTERM");
    assert!(status.success(), "{status}: {}", a.log_text());
    assert!(!wa.holds(), "a gave its VIP away");
    let log = a.log_text();
    let handover = log.find("VIPs handed over").expect("handover logged");
    let drained = log.find("draining").expect("drain logged");
    assert!(handover < drained, "handover before drain:\n{log}");
    drop(a);

    // With preemption off the returning higher priority stays backup.
    let mut spec = HalbSpec::new(150);
    spec.preempt = false;
    let a = Gatehouse::start(&lab, "a", &spec);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(wb.holds() && !wa.holds(), "preempt = false: b keeps the VIP");
    assert_eq!(a.state(), "backup");
    assert_eq!(b.state(), "master");
}

#[test]
fn sigstop_and_sigcont_end_with_one_master() {
    if !ready("sigstop_and_sigcont_end_with_one_master", &[]) {
        return;
    }
    let lab = pair('s');
    let (wa, wb) = (VipWatch::start(&lab.ns("a")), VipWatch::start(&lab.ns("b")));
    let a = Gatehouse::start(&lab, "a", &HalbSpec::new(150));
    let b = Gatehouse::start(&lab, "b", &HalbSpec::new(100));
    crate::common::wait_until(Duration::from_secs(3), || wa.holds() && b.state() == "backup")
        .expect("a master, b backup");

    let md_b = master_down_interval(Version::V3, 100, ADVERT);
    let t = Instant::now();
    a.signal(libc::SIGSTOP);
    wb.wait(true, Duration::from_secs(2))
        .expect("b took over from a stopped master");
    let took = wb.gained_after(t).expect("logged") - t;
    println!("SIGSTOP: b took the VIP after {}", ms(took));
    assert!(took <= md_b + SLACK, "{took:?}");
    std::thread::sleep(Duration::from_millis(200));

    a.signal(libc::SIGCONT);
    let settled = crate::common::wait_until(Duration::from_secs(2), || wa.holds() != wb.holds())
        .expect("one master again after SIGCONT");
    println!("SIGCONT: one VIP holder again after {}", ms(settled));
    assert!(settled <= 2 * ADVERT + SLACK, "two masters for {settled:?}");
    let calm = Instant::now();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        longest_overlap(&wa, &wb, calm, Instant::now()),
        Duration::ZERO,
        "two VIP holders again after settling"
    );
    assert!(wa.holds() && !wb.holds(), "the higher priority keeps the VIP");
    assert_eq!(a.state(), "master");
    assert_eq!(b.state(), "backup");
}
