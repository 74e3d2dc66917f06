//! `gatehouse demo --ephemeral --ready-file F`: endpoints listed, RDP through the balancer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::common::*;

/// An X.224 Connection Request as FreeRDP sends it (wire-notes.md).
const X224_CR: &[u8] = b"\x03\x00\x00\x2d\x28\xe0\x00\x00\x00\x00\x00Cookie: mstshash=rdptest\r\n\x01\x00\x08\x00\x03\x00\x00\x00";

#[test]
fn demo_writes_endpoints_and_answers_rdp() {
    assert_eq!(X224_CR.len(), 45);
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let child = Command::new(bin())
        .args(["demo", "--ephemeral", "--ready-file"])
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc { child };
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || ready.exists()),
        "no ready file"
    );
    println!("demo: ready file after {:?}", start.elapsed());
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let endpoints = doc["endpoints"].as_array().expect("endpoints array");
    let find = |role: &str| -> Vec<SocketAddr> {
        endpoints
            .iter()
            .filter(|e| e["role"] == role)
            .filter_map(|e| e["address"].as_str()?.parse().ok())
            .collect()
    };
    let (halb, admin, hosts) = (find("halb"), find("admin"), find("session-host"));
    println!("demo: halb {halb:?}, admin {admin:?}, session hosts {hosts:?}");
    assert_eq!(halb.len(), 1, "one halb endpoint");
    assert_eq!(admin.len(), 1, "one admin endpoint");
    assert!(!hosts.is_empty(), "session hosts listed");
    for e in endpoints {
        assert!(
            e["name"].as_str().is_some_and(|n| !n.is_empty()),
            "endpoint without a name: {e}"
        );
    }
    let mut s = TcpStream::connect_timeout(&halb[0], Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(X224_CR).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).expect("a Connection Confirm");
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut rest = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut rest).expect("the whole TPKT");
    println!("demo: X.224 CR through halb -> {:02x?}{:02x?}", head, rest);
    assert_eq!(&head[..2], &[0x03, 0x00], "TPKT version 3");
    assert_eq!(rest.get(1), Some(&0xd0), "X.224 Connection Confirm code");
    drop(s);
    p.signal(Signal::SIGINT);
    let status = p.wait_exit(Duration::from_secs(10));
    println!("demo: SIGINT -> {status:?}");
    assert!(status.expect("demo did not stop on SIGINT").success());
}

#[test]
fn the_printed_connect_command_works_as_printed() {
    // What a new user copies from the demo's summary, run by a shell exactly as printed.
    let child = Command::new(bin())
        .args(["demo", "--ephemeral"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc { child };
    let stdout = p.child.stdout.take().unwrap();
    let summary = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut text = String::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
            if line.contains("Ctrl-C stops the demo") {
                break;
            }
        }
        text
    })
    .join()
    .unwrap();
    let joined = summary.replace("\\\n", " ");
    let command = joined
        .lines()
        .map(str::trim)
        .find(|c| c.starts_with("GATEHOUSE_PASSWORD="))
        .unwrap_or_else(|| panic!("no connect line in:\n{summary}"))
        .to_string();
    let local: SocketAddr = command
        .split_once("--listen ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no --listen in {command}"));
    println!("demo: running {command}");
    // In a process group of its own, so the shell and what it started stop together.
    let connect = std::os::unix::process::CommandExt::process_group(
        Command::new("sh")
            .args(["-c", &command])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        0,
    )
    .spawn()
    .unwrap();
    let mut c = Proc { child: connect };
    let up = wait_until(Duration::from_secs(10), || TcpStream::connect(local).is_ok());
    assert!(up, "connect did not listen on {local}: {:?}", c.child.try_wait());
    let mut s = TcpStream::connect(local).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(X224_CR).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head)
        .expect("a Connection Confirm through the tunnel");
    assert_eq!(&head[..2], &[0x03, 0x00], "TPKT version 3");
    drop(s);
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(c.pid()), Signal::SIGTERM);
    assert!(c.wait_exit(Duration::from_secs(10)).is_some());
    p.signal(Signal::SIGINT);
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
}
