//! The capacity ramp stops where a stand-in proxy with a known, load-dependent delay passes
//! the SLO, spreads sessions over worker processes, and writes the fields scripts read.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_bench::standin::{Kind, StandIn};

/// A thread-per-connection relay that holds each chunk from the client for
/// `per_connection` times the number of connections open through it: a proxy whose added
/// latency grows with load, known in advance.
fn loaded_relay(backend: SocketAddr, per_connection: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(backend) else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            let open = open.clone();
            open.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let k = open.load(Ordering::SeqCst) as u32;
                    std::thread::sleep(per_connection * k);
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
                let _ = s_write.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn ramp_stops_at_the_slo_of_a_relay_with_a_known_delay() {
    let rdp = StandIn::bind(Kind::Rdp, "127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn();
    // 10 ms per open session: 1 -> 10 ms, 2 -> 20, 4 -> 40, 6 -> 60, 8 -> 80 ms added.
    let relay = loaded_relay(rdp.local_addr(), Duration::from_millis(10));
    let plot = std::env::temp_dir().join(format!("capacity-test-{}.svg", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"))
        .args(["capacity", "--target", &relay.to_string()])
        .args(["--direct", &rdp.local_addr().to_string()])
        .args(["--pid", &std::process::id().to_string()])
        .args([
            "--steps",
            "1,2,4,8",
            "--refine",
            "1",
            "--confirm",
            "1",
            "--slo",
            "50ms",
        ])
        .args(["--warmup", "300ms", "--duration", "800ms", "--stagger", "100ms"])
        .args(["--sessions-per-process", "3", "--sources", "2"])
        .args(["--node-cpus", "2", "--node-mem", "2GiB", "--json"])
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(v["schema"], "gatehouse-bench/capacity-1");
    assert_eq!(
        keys(&v),
        set(&[
            "schema",
            "scenario",
            "target",
            "direct",
            "parameters",
            "steps",
            "held_sessions",
            "stop_reason",
            "stop_detail",
            "at_slo",
            "extrapolation",
        ])
    );
    // 4 sessions add ~40 ms (< 50), 8 add ~80 ms; the bisection tries 6 (~60 ms); each
    // failure is re-run once to confirm it.
    assert_eq!(v["stop_reason"], "slo", "{v}");
    assert_eq!(v["held_sessions"], 4, "{v}");
    let steps = v["steps"].as_array().unwrap();
    let tried: Vec<u64> = steps.iter().map(|s| s["sessions"].as_u64().unwrap()).collect();
    assert_eq!(tried, [1, 2, 4, 8, 8, 6, 6]);
    let step_keys = set(&[
        "sessions",
        "client_processes",
        "latency_us",
        "burst_latency_us",
        "direct_latency_us",
        "added_p50_us",
        "added_p99_us",
        "connected",
        "operations",
        "errors",
        "first_error",
        "elapsed_s",
        "cpu_s",
        "cpu_us_per_session_s",
        "rss_bytes",
        "rss_bytes_per_session",
        "passed",
    ]);
    for s in steps {
        assert_eq!(keys(s), step_keys);
        assert_eq!(s["errors"], 0, "{s}");
        assert_eq!(s["connected"], s["sessions"], "{s}");
    }
    // More sessions than one process may hold: several client processes, merged.
    let by_n = |n: u64| steps.iter().find(|s| s["sessions"] == n).unwrap();
    assert_eq!(by_n(1)["client_processes"], 1);
    assert_eq!(by_n(4)["client_processes"], 2);
    assert_eq!(by_n(8)["client_processes"], 3);
    let added4 = by_n(4)["added_p50_us"].as_f64().unwrap();
    assert!(
        (38_000.0..60_000.0).contains(&added4),
        "4 sessions add ~40 ms: {added4}"
    );
    let added8 = by_n(8)["added_p99_us"].as_f64().unwrap();
    assert!(added8 > 50_000.0, "8 sessions add ~80 ms: {added8}");
    let ops4 = by_n(4)["operations"].as_u64().unwrap();
    assert!(ops4 >= 20, "4 sessions at 10 events/s for 0.8 s: {ops4}");

    let at = &v["at_slo"];
    assert_eq!(at["sessions"], 4);
    assert!(at["cpu_us_per_session_s"].is_number());
    assert!(at["rss_bytes_per_session"].is_number());
    let x = &v["extrapolation"];
    assert_eq!(x["node"]["cpus"], 2.0);
    assert_eq!(x["node"]["mem_bytes"], 2u64 << 30);
    assert!(x["assumptions"].as_array().unwrap().len() >= 4);

    let svg = std::fs::read_to_string(&plot).unwrap();
    let _ = std::fs::remove_file(&plot);
    assert!(svg.starts_with("<svg") && svg.contains("SLO 50 ms"));
    assert_eq!(
        svg.matches("<polyline").count(),
        4,
        "p50, p99, direct p99, added p99"
    );
}

#[test]
fn capacity_against_a_dead_target_names_it() {
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"))
        .args(["capacity", "--target", &dead.to_string(), "--steps", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&dead.to_string()), "{stderr}");
}

#[test]
fn rr_latency_sweep_reports_every_rate_and_plots_them() {
    let echo = StandIn::bind(Kind::Echo, "127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn();
    let plot = std::env::temp_dir().join(format!("rr-sweep-test-{}.svg", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"))
        .args(["rr-latency", "--target", &echo.local_addr().to_string()])
        .args([
            "--rates",
            "100,300",
            "--warmup",
            "100ms",
            "--duration",
            "400ms",
            "--json",
        ])
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scenario"], "rr-latency-sweep");
    let steps = v["steps"].as_array().unwrap();
    let rates: Vec<f64> = steps
        .iter()
        .map(|s| s["parameters"]["rate"].as_f64().unwrap())
        .collect();
    assert_eq!(rates, [100.0, 300.0]);
    // 300/s for 0.4 s is about 120 answers; 100/s about 40.
    let ops: Vec<u64> = steps
        .iter()
        .map(|s| s["results"]["operations"].as_u64().unwrap())
        .collect();
    assert!(ops[1] > ops[0] && ops[0] >= 30, "{ops:?}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    let _ = std::fs::remove_file(&plot);
    assert_eq!(svg.matches("<polyline").count(), 2, "p50 and p99");
    assert_eq!(svg.matches("<circle").count(), 4);
}
