//! The harness against xrdp itself: a real login succeeds, a wrong password fails, and a
//! client with no server behind its target leaves xrdp untouched.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::rdp_harness::*;

#[test]
fn real_login_directly_to_xrdp_succeeds() {
    let Some(x) = require("real_login_directly_to_xrdp_succeeds") else {
        return;
    };
    let before = xrdp_connections();
    let out = xfreerdp_login(x.addr, TEST_USER, TEST_PASSWORD);
    eprintln!("direct login: {:?} in {:.2?}", out.verdict, out.elapsed);
    out.assert_success("xfreerdp straight to xrdp");
    assert_eq!(out.xrdp_connections, 1, "one TCP connection for one login\n{out}");
    assert!(xrdp_connections() > before);
    assert!(out.elapsed < Duration::from_secs(15), "slow login\n{out}");
}

#[test]
fn wrong_password_is_seen_as_failed() {
    let Some(x) = require("wrong_password_is_seen_as_failed") else {
        return;
    };
    let out = xfreerdp_login(x.addr, TEST_USER, "not-the-password");
    eprintln!("wrong password: {:?} in {:.2?}", out.verdict, out.elapsed);
    assert_eq!(out.verdict, Verdict::Failed, "{out}");
    assert_eq!(out.xrdp_connections, 1, "{out}");
}

#[test]
fn no_server_behind_the_target_means_no_verdict_and_no_xrdp_connection() {
    let Some(_) = require("no_server_behind_the_target_means_no_verdict_and_no_xrdp_connection") else {
        return;
    };
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let out = xfreerdp_login(target, TEST_USER, TEST_PASSWORD);
    eprintln!("no server: {:?} in {:.2?}", out.verdict, out.elapsed);
    assert!(
        matches!(out.verdict, Verdict::ClientExited(_)),
        "the client should give up on its own\n{out}"
    );
    assert_eq!(out.xrdp_connections, 0, "{out}");
    assert!(out.elapsed < Duration::from_secs(10), "{out}");
}
