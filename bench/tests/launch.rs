//! `gatehouse-bench launch --quick` end to end: the real gatehouse binary as broker, as
//! gateway gw-1 and as forwarding gateway fw-1, echo stand-in hosts, clients that log in once
//! and then open tunnels, then the logon storm through a HALB in front of gw-1 and gw-2.
//! Checks that every path opened tunnels and answered ping-pongs without a failure, that
//! the storm reached both gateways with every user at a desktop, and that the figures hang
//! together with the servers' own counters.

#[path = "support/quick.rs"]
mod quick;

#[test]
fn quick_run_opens_tunnels_on_every_path_without_errors() {
    let v = quick::quick_run("launch");
    assert_eq!(v["schema"], "gatehouse-bench/launch-1");
    assert_eq!(v["scenario"], "launch");
    let paths = ["direct", "gateway", "gateway-ssl", "forwarder-ssl"];

    let open = v["open_rate"].as_array().unwrap();
    let names: Vec<&str> = open.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(names, paths);
    let direct_p50 = open[0]["latency_us"]["p50"].as_f64().unwrap();
    for r in open {
        assert_eq!(r["errors"], 0, "{r}");
        let opens = r["opens"].as_u64().unwrap();
        assert!(opens > 0, "{r}");
        assert!(r["opens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["latency_us"]["count"].as_u64().unwrap(), opens, "{r}");
        if r["path"] != "direct" {
            // A launch, a tunnel (redeemed at the broker) and an echo cost more than a
            // TCP connect and an echo, and each part was timed.
            assert!(r["latency_us"]["p50"].as_f64().unwrap() > direct_p50, "{r}");
            assert!(r["launch_latency_us"]["count"].as_u64().unwrap() == opens, "{r}");
            assert!(r["tunnel_latency_us"]["p50"].as_f64().unwrap() > 0.0, "{r}");
            // CPU comes in clock ticks: a 1 s window may show none, but every process is there.
            for p in ["broker-1", "gw-1", "fw-1"] {
                assert!(r["cpu_us_per_open"][p].as_f64().is_some(), "{r}");
            }
            assert!(r["rate_vs_direct"].as_f64().unwrap() > 0.0, "{r}");
        }
    }

    let lat = v["latency"].as_array().unwrap();
    let names: Vec<&str> = lat.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(names, paths);
    for r in lat {
        assert!(r["closed_loop_us"]["count"].as_u64().unwrap() > 0, "{r}");
        let sent = r["open_loop_sent"].as_u64().unwrap();
        assert!(sent > 0, "{r}");
        assert_eq!(r["open_loop_received"].as_u64().unwrap(), sent, "{r}");
        assert!(r["open_loop_added_us"]["p50"].is_number(), "{r}");
        assert!(r["closed_loop_vs_direct"]["p99"].is_number(), "{r}");
    }
    assert_eq!(lat[0]["open_loop_added_us"]["p50"].as_f64(), Some(0.0));

    // Phase C: the logon storm went through the HALB to both gateways, every user reached
    // a desktop and held it, and the servers' counters match what the clients did.
    let s = &v["storm"];
    let users = v["parameters"]["storm_users"].as_u64().unwrap();
    assert!(users >= 4, "{s}");
    assert_eq!(s["users"].as_u64(), Some(users), "{s}");
    for field in ["arrived", "logged_on", "tunnels", "desktops", "completed"] {
        assert_eq!(s[field].as_u64(), Some(users), "{field}: {s}");
    }
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["time_to_desktop_us"]["count"].as_u64(), Some(users), "{s}");
    // A desktop comes after a login (an argon2id check), a launch and a tunnel.
    let desktop = &s["time_to_desktop_us"];
    let login = s["arrival_to_login_us"]["p50"].as_f64().unwrap();
    assert!(desktop["p50"].as_f64().unwrap() > login, "{s}");
    for step in ["login_us", "resources_us", "launch_us", "connect_101_us"] {
        assert_eq!(s[step]["count"].as_u64(), Some(users), "{step}: {s}");
    }
    let spread = s["per_gateway"].as_array().unwrap();
    let names: Vec<&str> = spread.iter().map(|g| g["gateway"].as_str().unwrap()).collect();
    assert_eq!(names, ["gw-1", "gw-2"]);
    let sum = |k: &str| spread.iter().map(|g| g[k].as_u64().unwrap()).sum::<u64>();
    for g in spread {
        assert!(
            g["tunnels"].as_u64().unwrap() > 0,
            "the HALB sent no session to {g}"
        );
        assert!(g["halb_connections"].as_u64().unwrap() > 0, "{g}");
    }
    // Each user: one API connection and one tunnel connection, both through the HALB.
    assert_eq!(sum("tunnels"), users, "{s}");
    assert_eq!(sum("logins"), users, "{s}");
    assert_eq!(sum("halb_connections"), 2 * users, "{s}");
    // Every event got its update, in the tunnels and on the direct baseline.
    let sent = s["events_sent"].as_u64().unwrap();
    assert!(sent >= users, "{s}");
    assert_eq!(s["events_received"].as_u64(), Some(sent), "{s}");
    assert_eq!(s["event_us"]["count"].as_u64(), Some(sent), "{s}");
    assert!(s["baseline_sent"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["baseline_received"], s["baseline_sent"], "{s}");
    assert!(s["event_added_us"]["p50"].is_number(), "{s}");
    for p in ["halb-1", "gw-1", "gw-2", "broker-1"] {
        assert!(s["cpu_ms_per_logon"][p].as_f64().is_some(), "{p}: {s}");
    }
    assert!(s["password_check"]["logins_per_s"].as_f64().unwrap() > 0.0, "{s}");
}
