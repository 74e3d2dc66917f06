//! The harness measures right: known delays show, bytes are counted, the JSON schema is
//! stable, and dead targets fail loudly. Everything runs on loopback in a few seconds.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use gatehouse_bench::report::Report;
use gatehouse_bench::scenario::{
    connect_rate, idle, rdp_profile, rr_latency, throughput, tls_handshake, Common,
};
use gatehouse_bench::standin::{Kind, StandIn, StandInHandle};
use gatehouse_bench::tls::{TlsVersion, Verify};
use gatehouse_bench::BenchError;

fn standin(kind: Kind) -> StandInHandle {
    StandIn::bind(kind, "127.0.0.1:0".parse().unwrap())
        .unwrap()
        .spawn()
}

fn common(target: SocketAddr) -> Common {
    Common {
        target,
        duration: Duration::from_millis(800),
        warmup: Duration::from_millis(200),
        sources: 2,
        pids: vec![std::process::id()],
    }
}

/// A thread-per-connection relay that sleeps `delay` before forwarding each chunk the client
/// sends: a stand-in proxy with a known added latency.
fn delay_relay(backend: SocketAddr, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(backend) else {
                continue;
            };
            let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = c_read.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    std::thread::sleep(delay);
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
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

/// Accepts and closes at once, like a proxy with no live backend.
fn closing_proxy() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    addr
}

fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn rr(target: SocketAddr, rate: f64) -> Report {
    rr_latency::run(
        &common(target),
        &rr_latency::Params {
            rate,
            connections: 2,
            message: 32,
            direct: None,
        },
    )
    .unwrap()
}

#[test]
fn known_delay_shows_in_latency_percentiles() {
    let echo = standin(Kind::Echo);
    let direct = rr(echo.local_addr(), 200.0);
    let relay = delay_relay(echo.local_addr(), Duration::from_millis(2));
    let delayed = rr(relay, 200.0);
    let (d, r) = (
        direct.results.latency_us.unwrap(),
        delayed.results.latency_us.unwrap(),
    );
    assert!(d.count >= 100, "direct {d:?}");
    assert!(r.count >= 100, "delayed {r:?}");
    assert!(r.p50 >= 2000.0, "a 2 ms relay must show p50 >= 2 ms: {r:?}");
    assert!(d.p50 < 2000.0, "direct must be faster than the 2 ms relay: {d:?}");
    assert_eq!(delayed.results.errors, 0);
}

#[test]
fn an_interleaved_direct_baseline_is_measured_in_the_same_window() {
    let echo = standin(Kind::Echo);
    let relay = delay_relay(echo.local_addr(), Duration::from_millis(2));
    let p = rr_latency::Params {
        rate: 200.0,
        connections: 2,
        message: 32,
        direct: Some(echo.local_addr()),
    };
    let report = rr_latency::run(&common(relay), &p).unwrap();
    let (r, d) = (
        report.results.latency_us.unwrap(),
        report.results.direct_latency_us.unwrap(),
    );
    // 200/s to each over 0.8 s: about 160 samples each.
    assert!((140..=170).contains(&r.count), "through the relay {r:?}");
    assert!((140..=170).contains(&d.count), "direct {d:?}");
    assert!(r.p50 >= 2000.0, "the 2 ms relay shows: {r:?}");
    assert!(
        d.p50 < 2000.0,
        "the baseline does not go through the relay: {d:?}"
    );
    assert_eq!(report.parameters["direct"], echo.local_addr().to_string());
    // A dead baseline is an error, not an empty figure.
    let dead = dead_address();
    let p = rr_latency::Params {
        direct: Some(dead),
        ..p
    };
    let err = rr_latency::run(&common(echo.local_addr()), &p).unwrap_err();
    assert!(err.to_string().contains(&dead.to_string()), "{err}");
}

#[test]
fn throughput_counts_every_byte_both_ways_through_a_relay() {
    let sink = standin(Kind::Sink);
    let relay = delay_relay(sink.local_addr(), Duration::ZERO);
    let report = throughput::run(
        &common(relay),
        &throughput::Params {
            streams: 3,
            direction: throughput::Direction::Both,
            bytes_per_stream: 5_000_000,
            tls: None,
        },
    )
    .unwrap();
    let r = &report.results;
    assert_eq!(r.bytes_match, Some(true));
    assert_eq!(r.bytes_up, 15_000_000);
    assert_eq!(r.bytes_down, 15_000_000);
    assert_eq!(r.errors, 0);
    assert!(report.derived.cpu_s_per_gb.is_some());
    assert!(sink.bytes_received() >= 15_000_000);
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn json_schema_is_stable_for_every_scenario() {
    let echo = standin(Kind::Echo);
    let sink = standin(Kind::Sink);
    let rdp = standin(Kind::Rdp);
    let mut reports = vec![
        rr(echo.local_addr(), 100.0),
        throughput::run(
            &common(sink.local_addr()),
            &throughput::Params {
                streams: 1,
                direction: throughput::Direction::Down,
                bytes_per_stream: 1_000_000,
                tls: None,
            },
        )
        .unwrap(),
        connect_rate::run(
            &common(echo.local_addr()),
            &connect_rate::Params {
                connections: 200,
                concurrency: 4,
                payload: 64,
            },
        )
        .unwrap(),
        idle::run(
            &common(echo.local_addr()),
            &idle::Params {
                connections: 300,
                hold: Duration::from_millis(200),
                concurrency: 4,
                tls: None,
            },
        )
        .unwrap(),
    ];
    let mut office = rdp_profile::Params::office(20);
    office.burst_interval = Duration::from_millis(500);
    office.stagger = Duration::from_millis(100);
    reports
        .push(rdp_profile::run(&common(rdp.local_addr()), &office, &rdp_profile::Transport::Plain).unwrap());

    let top = set(&[
        "schema",
        "scenario",
        "target",
        "parameters",
        "results",
        "processes",
        "derived",
    ]);
    let results = set(&[
        "elapsed_s",
        "connections",
        "operations",
        "operations_per_s",
        "errors",
        "bytes_up",
        "bytes_down",
        "gbit_per_s",
        "latency_us",
        "direct_latency_us",
        "burst_latency_us",
        "bytes_match",
        "alive_after_hold",
    ]);
    let derived = set(&[
        "cpu_s",
        "cpu_s_per_gb",
        "cpu_us_per_connection",
        "cpu_us_per_operation",
        "rss_bytes_per_connection",
    ]);
    let process = set(&["pid", "cpu_s", "rss_before_bytes", "rss_after_bytes"]);
    let percentiles = set(&["count", "mean", "p50", "p90", "p99", "p99_9", "max"]);
    let common_params = set(&["duration_s", "warmup_s", "sources", "pids"]);
    let scenario_params: &[(&str, &[&str])] = &[
        ("rr-latency", &["rate", "connections", "message", "direct"]),
        ("throughput", &["streams", "direction", "bytes_per_stream", "tls"]),
        ("connect-rate", &["connections", "concurrency", "payload"]),
        ("idle", &["connections", "hold_s", "concurrency", "tls"]),
        (
            "rdp-profile",
            &[
                "sessions",
                "input_rate",
                "input_bytes",
                "update_mean",
                "update_min",
                "update_max",
                "burst_bytes",
                "burst_interval_s",
                "stagger_s",
                "threads",
                "seed",
                "tls",
            ],
        ),
    ];
    for (report, (name, params)) in reports.iter().zip(scenario_params) {
        let v = serde_json::to_value(report).unwrap();
        assert_eq!(v["schema"], "gatehouse-bench/2");
        assert_eq!(v["scenario"], *name);
        assert_eq!(keys(&v), top, "{name}");
        assert_eq!(keys(&v["results"]), results, "{name}");
        assert_eq!(keys(&v["derived"]), derived, "{name}");
        assert_eq!(keys(&v["processes"][0]), process, "{name}");
        let mut want = common_params.clone();
        want.extend(params.iter().map(|s| s.to_string()));
        assert_eq!(keys(&v["parameters"]), want, "{name}");
        if !v["results"]["latency_us"].is_null() {
            assert_eq!(keys(&v["results"]["latency_us"]), percentiles, "{name}");
        }
        assert!(v["results"]["operations"].as_u64().unwrap() > 0, "{name}");
        assert_eq!(v["results"]["errors"], 0, "{name}: {v}");
    }
    // Scenario-specific figures are filled where they apply.
    assert_eq!(reports[1].results.bytes_match, Some(true));
    assert_eq!(reports[2].results.connections, 200);
    assert_eq!(reports[3].results.alive_after_hold, Some(300));
    assert!(reports[3].derived.rss_bytes_per_connection.is_some());
    let rdp_report = &reports[4].results;
    assert_eq!(rdp_report.connections, 20);
    assert!(rdp_report.latency_us.is_some() && rdp_report.burst_latency_us.is_some());
}

#[test]
fn dead_target_is_a_clear_error_in_every_scenario() {
    let dead = dead_address();
    let c = common(dead);
    let errors: Vec<BenchError> = vec![
        rr_latency::run(
            &c,
            &rr_latency::Params {
                rate: 100.0,
                connections: 1,
                message: 32,
                direct: None,
            },
        )
        .unwrap_err(),
        throughput::run(
            &c,
            &throughput::Params {
                streams: 1,
                direction: throughput::Direction::Up,
                bytes_per_stream: 10,
                tls: None,
            },
        )
        .unwrap_err(),
        connect_rate::run(
            &c,
            &connect_rate::Params {
                connections: 10,
                concurrency: 1,
                payload: 64,
            },
        )
        .unwrap_err(),
        idle::run(
            &c,
            &idle::Params {
                connections: 10,
                hold: Duration::ZERO,
                concurrency: 1,
                tls: None,
            },
        )
        .unwrap_err(),
        rdp_profile::run(
            &c,
            &rdp_profile::Params {
                stagger: Duration::from_millis(100),
                ..rdp_profile::Params::office(2)
            },
            &rdp_profile::Transport::Plain,
        )
        .unwrap_err(),
        tls_handshake::run(&c, &tls_params(tls_handshake::Mode::Full)).unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, BenchError::TargetDead { .. }), "{e:?}");
        assert!(e.to_string().contains(&dead.to_string()), "{e}");
    }
}

#[test]
fn proxy_without_backend_is_no_progress_not_zeros() {
    let target = closing_proxy();
    let e = connect_rate::run(
        &common(target),
        &connect_rate::Params {
            connections: 20,
            concurrency: 2,
            payload: 64,
        },
    )
    .unwrap_err();
    assert!(matches!(e, BenchError::NoProgress { .. }), "{e:?}");
    assert!(e.to_string().contains(&target.to_string()), "{e}");
}

#[test]
fn binary_exits_non_zero_naming_a_dead_target() {
    let dead = dead_address();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"))
        .args(["rr-latency", "--target", &dead.to_string(), "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&dead.to_string()), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn binary_json_output_parses() {
    let echo = standin(Kind::Echo);
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"))
        .args([
            "connect-rate",
            "--target",
            &echo.local_addr().to_string(),
            "--connections",
            "50",
            "--warmup",
            "0s",
            "--json",
            "--pid",
            &std::process::id().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"]["connections"], 50);
    assert!(v["derived"]["cpu_us_per_connection"].is_number());
}

fn tls_params(mode: tls_handshake::Mode) -> tls_handshake::Params {
    tls_handshake::Params {
        connections: 10,
        concurrency: 1,
        payload: 64,
        mode,
        version: TlsVersion::Tls13,
        verify: Verify::Insecure,
        server_name: "localhost".into(),
        rate: None,
    }
}

#[test]
fn tls_handshakes_against_a_plain_echo_are_no_progress_with_the_tls_error() {
    let echo = StandIn::bind(Kind::Echo, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = echo.local_addr();
    let _h = echo.spawn();
    let mut c = common(addr);
    c.warmup = Duration::ZERO;
    c.duration = Duration::from_secs(1);
    let e = tls_handshake::run(&c, &tls_params(tls_handshake::Mode::Full)).unwrap_err();
    assert!(matches!(e, BenchError::NoProgress { .. }), "{e:?}");
    assert!(e.to_string().contains("TLS"), "{e}");
}

/// Echoes `messages` messages of `size` bytes on each connection, then closes it: a target
/// that dies in the middle of a run.
fn echo_then_close(messages: usize, size: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; size];
                for _ in 0..messages {
                    if c.read_exact(&mut buf).is_err() || c.write_all(&buf).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Accepts and holds connections without a byte: a hung target.
fn silent_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    addr
}

#[test]
fn rr_latency_counts_the_messages_a_dying_target_never_answered() {
    // 200/s on one connection: 40 messages in the warmup, 160 due in the window; the
    // target answers 100 and closes. The 100 due after that are errors, sent or not.
    let target = echo_then_close(100, 32);
    let r = rr_latency::run(
        &common(target),
        &rr_latency::Params {
            rate: 200.0,
            connections: 1,
            message: 32,
            direct: None,
        },
    )
    .unwrap();
    println!("operations {} errors {}", r.results.operations, r.results.errors);
    assert!(
        (55..=65).contains(&r.results.operations),
        "{}",
        r.results.operations
    );
    assert!(
        r.results.errors >= 90,
        "lost messages not counted: {}",
        r.results.errors
    );
    // Bytes up are the messages written: about 60 in the window, not the 160 due.
    assert!(
        r.results.bytes_up <= 70 * 32,
        "unsent messages counted as sent: {} B",
        r.results.bytes_up
    );
}

#[test]
fn throughput_stops_at_the_duration_cap_with_the_bytes_that_moved() {
    let sink = standin(Kind::Sink);
    let start = std::time::Instant::now();
    let r = throughput::run(
        &Common {
            duration: Duration::from_secs(1),
            ..common(sink.local_addr())
        },
        &throughput::Params {
            streams: 2,
            direction: throughput::Direction::Both,
            bytes_per_stream: 1 << 34,
            tls: None,
        },
    )
    .unwrap();
    let took = start.elapsed();
    println!(
        "capped after {took:?}: {} B up, {} B down",
        r.results.bytes_up, r.results.bytes_down
    );
    assert!(took < Duration::from_secs(4), "ran {took:?} past a 1 s cap");
    assert!(r.results.bytes_up > 0 && r.results.bytes_down > 0);
    // Cut streams' bytes cannot all be checked: neither a match nor a mismatch.
    assert_eq!(r.results.bytes_match, None);
    assert_eq!((r.results.operations, r.results.errors), (2, 0));
}

#[test]
fn idle_gives_up_on_a_target_that_never_echoes() {
    let target = silent_target();
    let start = std::time::Instant::now();
    let e = idle::run(
        &common(target),
        &idle::Params {
            connections: 40,
            hold: Duration::ZERO,
            concurrency: 2,
            tls: None,
        },
    )
    .unwrap_err();
    let took = start.elapsed();
    println!("gave up after {took:?}: {e}");
    assert!(matches!(e, BenchError::NoProgress { .. }), "{e:?}");
    assert!(e.to_string().contains("no echo within 5s"), "{e}");
    // A round or two of echo timeouts (5-10 s), not one per connection (40 x 5 s / 2 workers).
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn rdp_profile_refuses_sizes_and_starts_it_cannot_honour() {
    let rdp = standin(Kind::Rdp);
    let run = |p: rdp_profile::Params| {
        rdp_profile::run(&common(rdp.local_addr()), &p, &rdp_profile::Transport::Plain)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let office = || rdp_profile::Params {
        stagger: Duration::from_millis(100),
        ..rdp_profile::Params::office(2)
    };
    let e = run(rdp_profile::Params {
        update_min: 5000,
        update_max: 100,
        ..office()
    });
    assert!(
        e.contains("--update-min (5000) is above --update-max (100)"),
        "{e}"
    );
    let e = run(rdp_profile::Params {
        update_mean: 9000,
        ..office()
    });
    assert!(e.contains("--update-mean") && e.contains("2100"), "{e}");
    // Sessions starting over 1 s with a warmup of 200 ms.
    let e = run(rdp_profile::Params {
        stagger: Duration::from_secs(1),
        ..office()
    });
    assert!(e.contains("--stagger") && e.contains("--warmup"), "{e}");
}

#[test]
fn capacity_that_holds_nothing_exits_non_zero() {
    let target = closing_proxy();
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"))
        .args(["capacity", "--target", &target.to_string()])
        .args([
            "--steps",
            "4",
            "--refine",
            "0",
            "--warmup",
            "200ms",
            "--duration",
            "300ms",
        ])
        .args(["--stagger", "100ms"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no step held the SLO; stopped by errors"),
        "{stderr}"
    );
}

#[test]
fn options_that_would_be_ignored_are_refused_before_the_run() {
    let echo = standin(Kind::Echo);
    let target = echo.local_addr().to_string();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} ran");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["rr-latency", "--target", &target, "--plot", "/tmp/latency.png"]);
    assert!(e.contains("plots are SVG"), "{e}");
    let e = run(&["throughput", "--target", &target, "--ca", "/tmp/ca.pem"]);
    assert!(e.contains("add --tls"), "{e}");
    let e = run(&["rr-latency", "--target", &target, "--rate", "5", "--rates", "1,2"]);
    assert!(e.contains("cannot be used with"), "{e}");
    let e = run(&["connect-rate", "--target", &target, "--duration", "0s"]);
    assert!(e.contains("--duration must be more than 0"), "{e}");
}
