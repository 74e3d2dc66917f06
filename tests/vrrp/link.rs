//! Cutting the master's link and restoring it: the backup takes over, and afterwards there is
//! one master again which sends gratuitous ARPs again (counted in its metrics).

use std::time::{Duration, Instant};

use crate::common::{ip, link_up, ms, ready, wait_until, Gatehouse, HalbSpec, Lab, VipWatch, IFACE};

#[test]
fn cut_and_restore_the_link_gives_one_master_and_new_garps() {
    if !ready("cut_and_restore_the_link_gives_one_master_and_new_garps", &[]) {
        return;
    }
    let lab = Lab::create('l', &[("a", &["10.213.0.1/24"]), ("b", &["10.213.0.2/24"])]);
    let (ns_a, ns_b) = (lab.ns("a"), lab.ns("b"));
    let (wa, wb) = (VipWatch::start(&ns_a), VipWatch::start(&ns_b));
    let a = Gatehouse::start(&lab, "a", &HalbSpec::new(150));
    let b = Gatehouse::start(&lab, "b", &HalbSpec::new(100));
    wait_until(Duration::from_secs(3), || wa.holds() && b.state() == "backup").expect("a master");
    let garp = "gatehouse_vrrp_garps_sent_total";
    wait_until(Duration::from_secs(1), || a.metric(garp) >= 2.0).expect("a sent its gratuitous ARPs");
    let garps_a = a.metric(garp);

    let t = Instant::now();
    ip(&["-n", &ns_a, "link", "set", IFACE, "down"]);
    wb.wait(true, Duration::from_secs(2))
        .expect("b took over from the cut master");
    wa.wait(false, Duration::from_secs(1))
        .expect("a dropped the VIP on link loss");
    println!(
        "link cut: b holds the VIP after {}",
        ms(wb.gained_after(t).expect("logged") - t)
    );
    assert_eq!(a.state(), "fault");
    wait_until(Duration::from_secs(1), || b.metric(garp) >= 2.0).expect("b sent gratuitous ARPs");

    let t = Instant::now();
    ip(&["-n", &ns_a, "link", "set", IFACE, "up"]);
    wait_until(Duration::from_secs(3), || link_up(&ns_a)).expect("carrier back");
    wait_until(Duration::from_secs(3), || wa.holds() && !wb.holds()).expect("one master (a) again");
    println!(
        "link restored: a is the only VIP holder again after {}",
        ms(wa.gained_after(t).expect("logged") - t)
    );
    wait_until(Duration::from_secs(1), || a.metric(garp) >= garps_a + 2.0)
        .expect("a sent gratuitous ARPs again after the link came back");
    std::thread::sleep(Duration::from_millis(300));
    assert!(wa.holds() && !wb.holds());
    assert_eq!(a.state(), "master");
    assert_eq!(b.state(), "backup");
}
