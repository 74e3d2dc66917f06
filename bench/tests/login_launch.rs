//! `gatehouse-bench login-launch --quick` end to end: a generated farm, the real gatehouse
//! binary as broker, stand-in host agents, gateway links logging in and launching. Checks
//! that both phases launched, without a refusal or failure, and that the figures hang
//! together.

#[path = "support/quick.rs"]
mod quick;

#[test]
fn quick_run_launches_in_both_phases_without_errors() {
    let v = quick::quick_run("login-launch");
    assert_eq!(v["schema"], "gatehouse-bench/login-launch-1");
    assert_eq!(v["parameters"]["users"], 200);

    let check = &v["password_check"];
    assert!(
        check["argon2_params"]
            .as_str()
            .unwrap()
            .starts_with("m=19456,t=2,p=1"),
        "{check}"
    );
    let check_ms = check["cpu_p50_ms"].as_f64().unwrap();
    assert!(
        check_ms > 0.5,
        "an argon2id check at m=19 MiB takes more than 0.5 ms of CPU: {check_ms}"
    );
    assert!(
        check["p50_ms"].as_f64().unwrap() >= check_ms * 0.9,
        "wall time below CPU time: {check}"
    );

    let ll = &v["login_launch"];
    assert_eq!(ll["errors"], 0, "{ll}");
    assert!(ll["launches"].as_u64().unwrap() > 0, "{ll}");
    // Each launch follows a login; at most one per client logged in before the window.
    assert!(ll["logins"].as_u64().unwrap() >= ll["launches"].as_u64().unwrap().saturating_sub(4));
    // Every login waits for one whole check (one lane, one thread).
    let login_p50_ms = ll["login_latency_us"]["p50"].as_f64().unwrap() / 1e3;
    assert!(
        login_p50_ms >= check_ms * 0.8,
        "login p50 {login_p50_ms} ms vs check {check_ms} ms CPU"
    );

    let lo = &v["launch_only"];
    assert_eq!(lo["errors"], 0, "{lo}");
    assert_eq!(lo["logins"], 0, "{lo}");
    assert_eq!(lo["setup_logins"], 4 * 2, "4 clients x 2 tokens: {lo}");
    assert!(lo["launches"].as_u64().unwrap() > 0, "{lo}");
    // Without the hash, launches are faster than logins + launches.
    assert!(
        lo["launches_per_s"].as_f64().unwrap() > ll["launches_per_s"].as_f64().unwrap(),
        "{lo} vs {ll}"
    );
    assert!(v["ratios"]["login_launch_vs_check_bound"].as_f64().unwrap() > 0.0);
}
