//! A real RDP login through a plain gatehouse L4 listener whose pool has xrdp as its only
//! backend.

use std::time::Duration;

use crate::common::*;
use crate::rdp_harness::*;

#[test]
fn real_login_through_a_halb_listener_succeeds() {
    let Some(x) = require("real_login_through_a_halb_listener_succeeds") else {
        return;
    };
    let (admin, listen) = addrs();
    let g = Gatehouse::start(&simple_config(admin, listen, "", "", &[("xrdp", x.addr)]), admin);
    let out = xfreerdp_login(listen, TEST_USER, TEST_PASSWORD);
    eprintln!(
        "login through gatehouse {listen}: {:?} in {:.2?}",
        out.verdict, out.elapsed
    );
    out.assert_success("xfreerdp through a gatehouse listener");
    assert_eq!(out.xrdp_connections, 1, "{out}");
    assert_eq!(
        g.backend_total("p", "xrdp"),
        1.0,
        "the connection went through gatehouse's pool; log:\n{}",
        g.log()
    );
    assert!(out.elapsed < Duration::from_secs(15), "slow login\n{out}");
    g.assert_nothing_held();
}
