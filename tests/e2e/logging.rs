//! What a node logs: one line per closed connection (quiet for TCP checks), as text or as
//! JSON for log shippers.

use std::time::Duration;

use crate::common::*;

#[test]
fn tcp_checks_of_this_node_are_counted_not_logged() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(&simple_config(admin, listen, "", "", &[("b", echo.addr)]), admin);
    // A TCP health check (an upstream balancer's, a port scan): connect, say nothing, close.
    for _ in 0..3 {
        drop(connect_from(listen, None).unwrap());
    }
    assert!(echo_once(listen));
    assert!(
        wait_until(Duration::from_secs(3), || g.closed("done") >= 4.0),
        "closes counted: {}",
        g.closed("done")
    );
    let log = g.log();
    let closes: Vec<&str> = log.lines().filter(|l| l.contains("closed:")).collect();
    println!("health: close lines at info: {closes:#?}");
    assert_eq!(closes.len(), 1, "only the echo's close is logged: {closes:#?}");
    g.assert_nothing_held();
}

#[test]
fn json_log_lines_carry_the_close_fields() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let config = config_full(
        admin,
        listen,
        1,
        "log_format = \"json\"",
        "",
        "",
        &[("b", echo.addr, "")],
    );
    let g = Gatehouse::start(&config, admin);
    assert!(echo_once(listen));
    let mut close = None;
    assert!(
        wait_until(Duration::from_secs(3), || {
            close = g
                .log()
                .lines()
                .find(|l| l.contains("closed:"))
                .map(str::to_string);
            close.is_some()
        }),
        "no close line: {}",
        g.log()
    );
    for line in g.log().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{line}");
    }
    let close = close.unwrap();
    println!("logging: {close}");
    let v: serde_json::Value = serde_json::from_str(&close).unwrap();
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["message"], "closed: both sides closed");
    assert_eq!(v["reason"], "done");
    assert_eq!(v["backend"], "b");
    assert_eq!(v["bytes_up"], 23);
    assert!(
        v["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{close}"
    );
}
