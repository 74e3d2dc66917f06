//! Interop with keepalived 2.2.7 (Debian) as the peer: same VRID, VRRPv3 with keepalived's
//! checksum form, 0.1 s adverts. gatehouse master -> keepalived takes over on a crash;
//! keepalived master -> gatehouse takes over on keepalived's graceful stop.

use std::time::{Duration, Instant};

use gatehouse_vrrp::instance::{master_down_interval, skew_time};
use gatehouse_vrrp::Version;

use crate::common::{ms, ready, wait_until, Gatehouse, HalbSpec, Keepalived, Lab, VipWatch};

const ADVERT: Duration = Duration::from_millis(100);
const SLACK: Duration = Duration::from_millis(200);

#[test]
fn keepalived_and_gatehouse_fail_over_both_ways() {
    if !ready("keepalived_and_gatehouse_fail_over_both_ways", &["keepalived"]) {
        return;
    }
    let lab = Lab::create('k', &[("a", &["10.213.0.1/24"]), ("b", &["10.213.0.2/24"])]);
    let (wa, wb) = (VipWatch::start(&lab.ns("a")), VipWatch::start(&lab.ns("b")));
    let mut k = Keepalived::start(&lab, "b", 100, 51);
    let mut a = Gatehouse::start(&lab, "a", &HalbSpec::new(150));

    // gatehouse (150) is master; keepalived accepts its adverts and stays backup.
    wa.wait(true, Duration::from_secs(3))
        .expect("gatehouse became master");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        wa.holds() && !wb.holds(),
        "keepalived must stay backup:\n{}",
        k.log()
    );
    assert!(
        !k.log().contains("Invalid"),
        "keepalived refused our adverts:\n{}",
        k.log()
    );

    // Crash gatehouse: keepalived takes over.
    let t = Instant::now();
    a.signal(libc::SIGKILL);
    wb.wait(true, Duration::from_secs(2))
        .expect("keepalived took over");
    let took = wb.gained_after(t).expect("logged") - t;
    let md = master_down_interval(Version::V3, 100, ADVERT);
    println!("gatehouse SIGKILL -> keepalived master after {}", ms(took));
    assert!(took <= md + SLACK, "{took:?}");
    a.wait_exit(Duration::from_secs(2));
    drop(a);

    // gatehouse returns with a lower priority: removes its stale VIP, follows keepalived.
    let a = Gatehouse::start(&lab, "a", &HalbSpec::new(50));
    wait_until(Duration::from_secs(2), || !wa.holds() && a.state() == "backup").expect("gatehouse backup");
    std::thread::sleep(Duration::from_millis(400));
    assert!(wb.holds() && !wa.holds());
    assert!(
        a.metric("gatehouse_vrrp_adverts_received_total") > 0.0,
        "keepalived's adverts accepted"
    );
    assert_eq!(
        a.metric("gatehouse_vrrp_dropped_total{reason=\"bad_checksum\"}"),
        0.0
    );

    // keepalived stops gracefully (priority 0): gatehouse takes over in about its skew time.
    let t = Instant::now();
    k.stop();
    wa.wait(true, Duration::from_secs(2))
        .expect("gatehouse took over from keepalived");
    let took = wa.gained_after(t).expect("logged") - t;
    println!(
        "keepalived SIGTERM -> gatehouse master after {} (skew {})",
        ms(took),
        ms(skew_time(Version::V3, 50, ADVERT))
    );
    assert!(took <= skew_time(Version::V3, 50, ADVERT) + SLACK, "{took:?}");
    wb.wait(false, Duration::from_secs(1))
        .expect("keepalived removed its VIP");
    assert_eq!(a.state(), "master");
}
