//! Dropping root after binding: a privileged port is bound as root, then the node serves as
//! `nobody`.

use std::net::{SocketAddr, TcpListener};

use crate::common::*;

fn privileged_free_port() -> Option<u16> {
    (600..1000u16).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
}

#[test]
fn binds_privileged_port_then_serves_as_nobody() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "privilege drop test needs root under CI=true"
        );
        eprintln!("\n######## SKIPPED binds_privileged_port_then_serves_as_nobody: needs root ########\n");
        return;
    }
    let echo = EchoServer::start(None);
    let port = privileged_free_port().expect("a free port below 1024");
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = config_full(
        admin,
        listen,
        1,
        "user = \"nobody\"",
        "",
        "",
        &[("b", echo.addr, "")],
    );
    let g = Gatehouse::start(&cfg, admin);
    let status = std::fs::read_to_string(format!("/proc/{}/status", g.proc.pid())).unwrap();
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    let gid_line = status
        .lines()
        .find(|l| l.starts_with("Gid:"))
        .unwrap()
        .to_string();
    println!("bound {listen} as root; now {uid_line} / {gid_line}");
    let uids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
    assert!(
        uids.iter().all(|u| *u == "65534"),
        "real, effective, saved and fs uid are nobody: {uid_line}"
    );
    assert!(
        !gid_line.split_whitespace().skip(1).any(|g| g == "0"),
        "no root group left: {gid_line}"
    );
    assert!(echo_once(listen), "serves on the privileged port after the drop");
    assert!(g.log().contains("dropped privileges"), "{}", g.log());
}
