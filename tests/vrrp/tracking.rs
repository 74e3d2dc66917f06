//! Pool tracking: the VRRP thread reads pool health from the node's shared snapshot. When the
//! master's tracked pool falls short (its only backend stops answering health checks), its
//! priority drops by `track_weight` below the backup's and the backup preempts; when the pool
//! recovers, the master takes the VIP back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{listen_in, ms, ready, wait_until, Gatehouse, HalbSpec, Lab, VipWatch};

#[test]
fn a_short_tracked_pool_lowers_priority_and_moves_the_vip() {
    if !ready("a_short_tracked_pool_lowers_priority_and_moves_the_vip", &[]) {
        return;
    }
    let lab = Lab::create('t', &[("a", &["10.213.0.1/24"]), ("b", &["10.213.0.2/24"])]);
    let ns_a = lab.ns("a");
    let (wa, wb) = (VipWatch::start(&ns_a), VipWatch::start(&lab.ns("b")));
    // A pool only a can reach: two stand-ins on a's own loopback.
    let addrs: [SocketAddr; 2] = ["127.0.0.1:3391", "127.0.0.1:3392"].map(|a| a.parse().expect("constant"));
    let first = listen_in(&ns_a, addrs[0]);
    let second = listen_in(&ns_a, addrs[1]);
    let mut spec = HalbSpec::new(150);
    spec.vrrp_extra = "track_pool = \"local\"\ntrack_min_healthy = 2\ntrack_weight = 60\n".into();
    spec.extra = format!(
        "\n[[halb.pool]]\nname = \"local\"\nbackends = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
         [halb.pool.health]\ncheck = \"tcp\"\ninterval = \"50ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1\n",
        addrs[0], addrs[1]
    );
    let a = Gatehouse::start(&lab, "a", &spec);
    let b = Gatehouse::start(&lab, "b", &HalbSpec::new(100));
    wait_until(Duration::from_secs(3), || wa.holds() && b.state() == "backup").expect("a master");
    assert_priority(&a, 150.0);

    // One of two backends down: 150 - 60 = 90 < 100, b preempts.
    let t = Instant::now();
    drop(second);
    wb.wait(true, Duration::from_secs(3))
        .expect("b preempted a short master");
    println!(
        "pool short: b holds the VIP after {}",
        ms(wb.gained_after(t).expect("logged") - t)
    );
    wa.wait(false, Duration::from_secs(1))
        .expect("a released the VIP");
    assert_priority(&a, 90.0);
    wait_until(Duration::from_secs(2), || a.state() == "backup").expect("a is backup");

    // Both down: nothing can be served, a goes to fault.
    drop(first);
    wait_until(Duration::from_secs(2), || a.state() == "fault").expect("a in fault with an empty pool");

    // Both back: a's priority is 150 again and it preempts.
    let _back = addrs.map(|a| listen_in(&ns_a, a));
    wait_until(Duration::from_secs(3), || wa.holds() && !wb.holds()).expect("a took the VIP back");
    assert_priority(&a, 150.0);
}

/// `a`'s priority reaches `want` within 2 s (the tracker's verdicts take a few checks).
fn assert_priority(a: &Gatehouse, want: f64) {
    assert_eq!(
        a.metric_reaches(
            "gatehouse_vrrp_priority{instance=\"vi1\"}",
            want,
            Duration::from_secs(2)
        ),
        want
    );
}
