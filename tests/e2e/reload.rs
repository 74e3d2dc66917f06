//! Reload under traffic: SIGHUP with an established tunnel pumping bytes, a new listener,
//! and a bad config refused while the old one serves on.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

use crate::common::*;

fn second_listener(name: &str, bind: SocketAddr, extra: &str) -> String {
    format!("\n[[halb.listener]]\nname = \"{name}\"\nbind = \"{bind}\"\npool = \"p\"\n{extra}")
}

#[test]
fn sighup_under_traffic_adds_a_listener_and_refuses_a_bad_file() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let base = simple_config(admin, listen, "", "", &[("echo", echo.addr)]);
    let g = Gatehouse::start(&base, admin);

    // A tunnel pumping bytes continuously.
    let stream = connect_from(listen, None).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let stop_w = stop.clone();
    let sender = std::thread::spawn(move || {
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let mut hash = Sha256::new();
        let mut chunk = vec![0u8; 16 * 1024];
        let mut sent = 0u64;
        while !stop_w.load(Ordering::Acquire) {
            rng.fill_bytes(&mut chunk);
            hash.update(&chunk);
            writer.write_all(&chunk).expect("tunnel write");
            sent += chunk.len() as u64;
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.shutdown(Shutdown::Write).unwrap();
        (sent, hash.finalize().to_vec())
    });
    let received_r = received.clone();
    let mut reader = stream;
    let receiver = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hash.update(&buf[..n]);
                    received_r.fetch_add(n as u64, Ordering::AcqRel);
                }
                Err(e) => panic!("tunnel read: {e}"),
            }
        }
        hash.finalize().to_vec()
    });
    let flowing = |what: &str| {
        let before = received.load(Ordering::Acquire);
        let ok = wait_until(Duration::from_secs(3), || {
            received.load(Ordering::Acquire) > before + 64 * 1024
        });
        println!(
            "reload: tunnel {what}: {} bytes echoed so far",
            received.load(Ordering::Acquire)
        );
        assert!(ok, "tunnel stopped flowing {what}");
    };
    flowing("before the reload");

    // A good reload: a second listener.
    let listen2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let good = format!("{base}{}", second_listener("second", listen2, ""));
    g.rewrite_config(&good);
    let start = Instant::now();
    g.signal(Signal::SIGHUP);
    let ok = g.wait_metric(
        "gatehouse_reloads_total{result=\"ok\"}",
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(ok, 1.0, "reload counted ok; log:\n{}", g.log());
    assert!(
        wait_until(Duration::from_secs(5), || echo_once(listen2)),
        "the new listener serves"
    );
    println!("reload: new listener serving {:?} after SIGHUP", start.elapsed());
    flowing("after the good reload");
    assert!(echo_once(listen), "the old listener still serves");

    // A bad reload: an unknown key, at a known line.
    let bad_tail = second_listener(
        "third",
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        "bogus_key = 1\n",
    );
    let bad = format!("{good}{bad_tail}");
    let bad_line = bad.lines().position(|l| l.starts_with("bogus_key")).unwrap() + 1;
    g.rewrite_config(&bad);
    g.signal(Signal::SIGHUP);
    let refused = g.wait_metric(
        "gatehouse_reloads_total{result=\"refused\"}",
        1.0,
        Duration::from_secs(5),
    );
    assert_eq!(refused, 1.0, "bad reload counted refused");
    let want = format!("{}:{bad_line}", g.config_path.display());
    assert!(
        wait_until(Duration::from_secs(2), || g.log().contains(&want)),
        "log names {want}; log:\n{}",
        g.log()
    );
    let line = g
        .log()
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_default()
        .to_string();
    println!("reload: refused with: {line}");
    assert!(line.contains("bogus_key"), "the log line names the key");
    assert!(
        echo_once(listen),
        "the first listener serves on after a refused reload"
    );
    assert!(
        echo_once(listen2),
        "the second listener serves on after a refused reload"
    );
    assert_eq!(g.metric("gatehouse_reloads_total{result=\"ok\"}"), 1.0);
    flowing("after the refused reload");

    // The same through the admin API.
    let (status, body) = http(admin, "POST", "/api/v1/reload", "").expect("admin reload");
    println!(
        "reload: POST /api/v1/reload with a bad file -> {status} {}",
        body.trim()
    );
    assert_eq!(status, 422);
    assert!(body.contains("bogus_key"), "the answer names the key: {body}");
    g.rewrite_config(&good);
    let (status, body) = http(admin, "POST", "/api/v1/reload", "").expect("admin reload");
    assert_eq!(status, 200, "{body}");
    flowing("after the API reload");
    // A known resource with another method is 405 naming the method; an unknown one is 404.
    let (status, body) = http(admin, "GET", "/api/v1/reload", "").expect("admin answers");
    assert_eq!((status, body.trim()), (405, "method not allowed (use POST)"));
    let (status, body) = http(admin, "GET", "/api/v1/nothing", "").expect("admin answers");
    assert_eq!(status, 404, "{body}");

    stop.store(true, Ordering::Release);
    let (sent, sent_sha) = sender.join().expect("sender");
    let received_sha = receiver.join().expect("receiver");
    println!(
        "reload: tunnel carried {sent} bytes across three reloads; echoed {}",
        received.load(Ordering::Acquire)
    );
    assert_eq!(received.load(Ordering::Acquire), sent, "every byte echoed");
    assert_eq!(sent_sha, received_sha, "bytes intact");
}

#[test]
fn reload_removing_a_listener_keeps_its_tunnels() {
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let base = simple_config(admin, listen, "", "", &[("echo", echo.addr)]);
    let listen2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let g = Gatehouse::start(
        &format!("{base}{}", second_listener("second", listen2, "")),
        admin,
    );
    let mut tunnel = connect_from(listen2, None).unwrap();
    assert!(echo_round_trip(&mut tunnel, b"before"));
    g.rewrite_config(&base);
    g.signal(Signal::SIGHUP);
    assert_eq!(
        g.wait_metric(
            "gatehouse_reloads_total{result=\"ok\"}",
            1.0,
            Duration::from_secs(5)
        ),
        1.0
    );
    let gone = wait_until(Duration::from_secs(3), || connect_from(listen2, None).is_err());
    println!("reload: removed listener refuses connections: {gone}");
    assert!(gone, "the removed listener still accepts");
    assert!(
        echo_round_trip(&mut tunnel, b"after the listener left"),
        "a tunnel through the removed listener keeps working"
    );
    assert!(echo_once(listen), "the remaining listener serves");
}

/// (inode, keepalive ticks left) of the IPv4 sockets of /proc/net/tcp whose local port is
/// `local` and, when given, whose remote port is `remote`; `ticks` is `tm->when` (1/100 s)
/// when the keepalive timer (`tr` 2) runs, else `None`. Listening sockets have remote port 0.
fn tcp_sockets(local: u16, remote: Option<u16>) -> Vec<(u64, Option<u64>)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || port(f[1]) != Some(local) || remote.is_some_and(|r| port(f[2]) != Some(r)) {
                return None;
            }
            let (tr, when) = f[5].split_once(':')?;
            let ticks = (tr == "02").then(|| u64::from_str_radix(when, 16).ok()).flatten();
            Some((f[9].parse().ok()?, ticks))
        })
        .collect()
}

#[test]
fn a_reload_changes_keepalive_on_the_listening_sockets_in_place() {
    // A new socket per changed setting used to replace the listener, and Linux resets the
    // clients still queued in the old one's backlog when it closes.
    let echo = EchoServer::start(None);
    let (admin, listen) = addrs();
    let base = simple_config(admin, listen, "", "", &[("echo", echo.addr)]);
    let g = Gatehouse::start(&base, admin);
    let listening = || {
        let mut v: Vec<u64> = tcp_sockets(listen.port(), Some(0)).iter().map(|s| s.0).collect();
        v.sort();
        v
    };
    let before = listening();
    assert_eq!(before.len(), 2, "one socket per worker");
    let keepalive_of = |client: &std::net::TcpStream| {
        let port = client.local_addr().unwrap().port();
        tcp_sockets(listen.port(), Some(port)).first().and_then(|s| s.1)
    };
    let mut old = connect_from(listen, None).unwrap();
    assert!(echo_round_trip(&mut old, b"before"));
    let old_ticks = keepalive_of(&old).expect("keepalive runs on the accepted socket");

    g.rewrite_config(&simple_config(
        admin,
        listen,
        "",
        "tcp_keepalive = \"20s\"\ntcp_user_timeout = \"0s\"\nbacklog = 2048",
        &[("echo", echo.addr)],
    ));
    g.signal(Signal::SIGHUP);
    let changed = |g: &Gatehouse| g.log().matches("listener settings changed in place").count() == 2;
    assert!(
        wait_until(Duration::from_secs(3), || changed(&g)),
        "log:\n{}",
        g.log()
    );
    assert_eq!(
        listening(),
        before,
        "the same listening sockets; log:\n{}",
        g.log()
    );
    assert!(!g.log().contains("listener bound by reload"), "log:\n{}", g.log());

    let mut new = connect_from(listen, None).unwrap();
    assert!(echo_round_trip(&mut new, b"after"));
    let new_ticks = keepalive_of(&new).expect("keepalive runs on the accepted socket");
    println!("reload: keepalive timer {old_ticks} ticks before the reload, {new_ticks} after");
    assert!(old_ticks > 3_000, "60 s by default: {old_ticks}");
    assert!(new_ticks <= 2_000, "20 s after the reload: {new_ticks}");
    assert!(echo_round_trip(&mut old, b"still"), "the older tunnel carries on");
}

#[test]
fn a_reload_applies_edited_states_and_drops_verdicts_of_a_removed_check() {
    let (s1, a1) = standin("echo");
    let (s2, a2) = standin("echo");
    let (_s3, a3) = standin("echo");
    let (admin, listen) = addrs();
    let checks =
        "health = { check = \"tcp\", interval = \"200ms\", timeout = \"200ms\", rise = 2, fall = 2 }";
    let backends = [("h1", a1, ""), ("h2", a2, ""), ("h3", a3, "")];
    let g = Gatehouse::start(&config_full(admin, listen, 1, "", checks, "", &backends), admin);
    assert!(wait_until(Duration::from_secs(3), || g.health("p", "h2") == "up"));
    drop(s2);
    assert!(
        wait_until(Duration::from_secs(5), || g.health("p", "h2") == "down"),
        "the killed backend is marked down"
    );
    // The API drains h1; the file then loses its health check and puts h3 in maintenance.
    g.set_state("p", "h1", "drain");
    let _s2 = standin_at("echo", a2);
    let edited = [
        ("h1", a1, ""),
        ("h2", a2, ""),
        ("h3", a3, "state = \"maintenance\""),
    ];
    g.rewrite_config(&config_full(admin, listen, 1, "", "", "", &edited));
    g.signal(Signal::SIGHUP);
    let ok = "gatehouse_reloads_total{result=\"ok\"}";
    assert_eq!(g.wait_metric(ok, 1.0, Duration::from_secs(5)), 1.0);
    // No checker will judge h2 again: the old verdict must not keep it out for good.
    assert_eq!(g.health("p", "h2"), "up", "{}", g.backend("p", "h2"));
    // The edited state applies; the API's drain of h1, which the file did not touch, stays.
    assert_eq!(g.backend("p", "h3")["admin_state"], "maintenance");
    assert_eq!(g.backend("p", "h1")["admin_state"], "drain");
    let totals = || ["h1", "h2", "h3"].map(|b| g.backend_total("p", b));
    let before = totals();
    for _ in 0..6 {
        assert!(echo_once(listen));
    }
    let after = totals();
    println!("reload: new clients per backend {before:?} -> {after:?}");
    assert_eq!(
        (after[0], after[1], after[2]),
        (before[0], before[1] + 6.0, before[2]),
        "the six new clients all go to h2, the one backend up and in rotation"
    );
    let _ = s1;
}

#[test]
fn a_backend_removed_by_a_reload_is_listed_until_its_tunnels_end() {
    let echo = EchoServer::start(None);
    let other = EchoServer::start(None);
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &simple_config(admin, listen, "", "", &[("old", echo.addr)]),
        admin,
    );
    let mut tunnel = connect_from(listen, None).unwrap();
    assert!(echo_round_trip(&mut tunnel, b"before"));
    g.rewrite_config(&simple_config(admin, listen, "", "", &[("new", other.addr)]));
    g.signal(Signal::SIGHUP);
    g.wait_metric(
        "gatehouse_reloads_total{result=\"ok\"}",
        1.0,
        Duration::from_secs(5),
    );
    let removed = || {
        let (_, body) = http(admin, "GET", "/api/v1/backends", "").expect("admin answers");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["removed"].clone()
    };
    assert_eq!(
        removed(),
        serde_json::json!([{"pool": "p", "backend": "old", "active": 1}])
    );
    let (_, metrics) = http(admin, "GET", "/metrics", "").unwrap();
    assert!(
        metrics.contains("gatehouse_backend_connections_active{pool=\"p\",backend=\"old\"} 1"),
        "{metrics}"
    );
    assert!(echo_round_trip(&mut tunnel, b"the tunnel still works"));
    drop(tunnel);
    assert!(
        wait_until(Duration::from_secs(3), || removed() == serde_json::json!([])),
        "still listed: {}",
        removed()
    );
}
