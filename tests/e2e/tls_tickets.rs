//! Session tickets shared by two gatehouse processes through one key file: a TLS 1.3
//! session made on node A resumes on node B (`openssl s_client -sess_out` / `-sess_in`),
//! and after A rotates the file on a short schedule, old tickets still resume on both
//! while their key is kept, and new tickets carry the new key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::tls_offload::{have_tool, s_client};

/// A node whose offloading listener uses `keys`; `rotation` makes it the rotating node.
fn node(
    dir: &Path,
    echo: SocketAddr,
    cert: &(PathBuf, PathBuf),
    keys: &Path,
    rotation: Option<&str>,
) -> (Gatehouse, SocketAddr) {
    let (admin, listen) = addrs();
    let rotation = rotation.map_or(String::new(), |r| format!("ticket_key_rotation = \"{r}\"\n"));
    let listener = format!(
        "tls = \"offload\"\nhandshake_timeout = \"2s\"\ncertificates = [ {{ cert = \"{}\", key = \"{}\", default = true }} ]\nticket_keys = \"{}\"\n{rotation}",
        cert.0.display(),
        cert.1.display(),
        keys.display()
    );
    let node_extra = format!("state_dir = \"{}\"", dir.display());
    let config = config_full(admin, listen, 2, &node_extra, "", &listener, &[("be", echo, "")]);
    (Gatehouse::start(&config, admin), listen)
}

/// (active-from, key id) of every key in the file.
fn keys_in(path: &Path) -> Vec<(i64, [u8; 8])> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "key").then_some(())?;
            let from = f.next()?.parse().ok()?;
            let hex = f.next()?;
            let secret: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<_>>()?;
            let mut id = [0u8; 8];
            id.copy_from_slice(&Sha256::digest(&secret)[..8]);
            Some((from, id))
        })
        .collect()
}

/// The first 8 bytes of the ticket in a saved session (the key id in gatehouse tickets).
fn ticket_key_id(session: &Path) -> Option<[u8; 8]> {
    let out = Command::new("openssl")
        .args(["sess_id", "-noout", "-text", "-in"])
        .arg(session)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().skip_while(|l| l.trim() != "TLS session ticket:");
    lines.next()?;
    let first = lines.next()?;
    let hex = first.split(" - ").nth(1)?.get(..23)?;
    let bytes: Vec<u8> = hex
        .split([' ', '-'])
        .filter(|s| !s.is_empty())
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs s_client with TLS 1.3 against `addr`, saving and/or resuming a session; returns
/// (resumed, stdout). Asserts the echo came back.
fn session(
    addr: SocketAddr,
    ca: &Path,
    sess_in: Option<&Path>,
    sess_out: Option<&Path>,
    marker: &str,
) -> (bool, String) {
    let ca = ca.display().to_string();
    let mut args: Vec<String> = [
        "-tls1_3",
        "-servername",
        "a.test",
        "-CAfile",
        &ca,
        "-verify_return_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = sess_in {
        args.extend(["-sess_in".to_string(), p.display().to_string()]);
    }
    if let Some(p) = sess_out {
        args.extend(["-sess_out".to_string(), p.display().to_string()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let line = format!("{marker}\n");
    let out = s_client(addr, &argv, Some(line.as_bytes()));
    assert!(
        out.success,
        "s_client to {addr} failed\n{}\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout.contains(marker),
        "{marker} not echoed through {addr}:\n{}",
        out.stdout
    );
    (out.stdout.contains("Reused, TLSv1.3"), out.stdout)
}

#[test]
fn tls13_sessions_resume_across_nodes_and_across_a_rotation() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Tickets Test CA");
    let cert = ca.leaf("a.test");
    let echo = EchoServer::start(None);
    let keys = dir.path().join("ticket.keys");
    let (a, a_addr) = node(dir.path(), echo.addr, &cert, &keys, Some("5s"));
    let (b, b_addr) = node(dir.path(), echo.addr, &cert, &keys, None);
    let first_keys = keys_in(&keys);
    assert_eq!(
        first_keys.len(),
        1,
        "the rotating node created the file with one key"
    );

    let s1 = dir.path().join("s1.pem");
    let (resumed, out) = session(a_addr, &ca.ca_file, None, Some(&s1), "full-on-a");
    assert!(
        !resumed && out.contains("New, TLSv1.3"),
        "first session is a full handshake:\n{out}"
    );
    assert_eq!(
        ticket_key_id(&s1),
        Some(first_keys[0].1),
        "A sealed the ticket with the file's key"
    );
    let (resumed, out) = session(b_addr, &ca.ca_file, Some(&s1), None, "resume-on-b");
    assert!(resumed, "A's ticket resumes on B:\n{out}");

    // Wait for A to rotate: a second key that has become current.
    let rotated = wait_until(Duration::from_secs(15), || {
        let k = keys_in(&keys);
        k.len() >= 2
            && k.iter()
                .any(|(from, _)| *from > first_keys[0].0 && *from <= now_unix())
    });
    assert!(
        rotated,
        "no rotation within 15 s: {:?}\nA log:\n{}",
        keys_in(&keys),
        a.log()
    );
    let after = keys_in(&keys);
    assert!(
        after.iter().any(|(_, id)| *id == first_keys[0].1),
        "the old key is kept"
    );
    assert!(a.log().contains("ticket keys rotated"), "A log:\n{}", a.log());
    assert!(
        wait_until(Duration::from_secs(5), || b.log().contains("ticket keys re-read")),
        "B did not re-read the file:\n{}",
        b.log()
    );

    // Old tickets still resume on both nodes.
    let (resumed, out) = session(a_addr, &ca.ca_file, Some(&s1), None, "old-on-a");
    assert!(resumed, "the old ticket resumes on A after the rotation:\n{out}");
    let (resumed, out) = session(b_addr, &ca.ca_file, Some(&s1), None, "old-on-b");
    assert!(resumed, "the old ticket resumes on B after the rotation:\n{out}");

    // New tickets from B carry the new current key and resume on A.
    let s2 = dir.path().join("s2.pem");
    let (_, _) = session(b_addr, &ca.ca_file, None, Some(&s2), "new-on-b");
    let current = keys_in(&keys)
        .into_iter()
        .filter(|(from, _)| *from <= now_unix())
        .max_by_key(|(from, _)| *from)
        .map(|(_, id)| id);
    let id2 = ticket_key_id(&s2);
    assert_ne!(id2, Some(first_keys[0].1), "B seals with the new key");
    assert_eq!(id2, current, "B seals with the current key");
    let (resumed, out) = session(a_addr, &ca.ca_file, Some(&s2), None, "new-on-a");
    assert!(resumed, "B's new ticket resumes on A:\n{out}");
}
