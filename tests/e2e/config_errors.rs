//! `gatehouse check`: each kind of config error names the file, the line and the key.

use std::process::Command;

use crate::common::*;

const VALID: &str = r#"[node]
workers = 1

[admin]
listen = "127.0.0.1:19901"

[halb]
[[halb.listener]]
name = "front"
bind = "127.0.0.1:15001"
pool = "p"

[[halb.pool]]
name = "p"
backends = [
  { name = "a", address = "127.0.0.1:15002" },
]
"#;

/// Replaces 1-based line `line` of the valid file with `text` (which may hold several lines).
fn with_line(line: usize, text: &str) -> String {
    let mut lines: Vec<String> = VALID.lines().map(str::to_string).collect();
    lines[line - 1] = text.to_string();
    lines.join("\n") + "\n"
}

fn check(text: &str) -> (i32, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("run gatehouse check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[test]
fn each_error_names_file_line_and_key() {
    let cases: Vec<(&str, String, usize, &str)> = vec![
        ("unknown key", with_line(12, "colour = \"red\""), 12, "colour"),
        ("wrong type", with_line(2, "workers = \"two\""), 2, "workers"),
        (
            "unknown source-port choice",
            with_line(2, "workers = 1\nsource_ports = \"random\""),
            3,
            "source_ports",
        ),
        (
            "unknown log format",
            with_line(2, "workers = 1\nlog_format = \"xml\""),
            3,
            "log_format",
        ),
        (
            "keepalive probes out of the kernel's range",
            with_line(11, "pool = \"p\"\ntcp_keepalive_probes = 0"),
            12,
            "tcp_keepalive_probes",
        ),
        ("port 0", with_line(10, "bind = \"127.0.0.1:0\""), 10, "bind"),
        (
            "empty pool",
            VALID.replace(
                "backends = [\n  { name = \"a\", address = \"127.0.0.1:15002\" },\n]",
                "backends = []",
            ),
            15,
            "backends",
        ),
        (
            "duplicate listener bind",
            format!(
                "{VALID}\n[[halb.listener]]\nname = \"second\"\nbind = \"127.0.0.1:15001\"\npool = \"p\"\n"
            ),
            21,
            "halb.listener[1].bind",
        ),
        ("missing pool", with_line(11, "pool = \"nope\""), 11, "pool"),
    ];
    let mut failures = Vec::new();
    for (what, text, line, key) in &cases {
        let (code, _out, err, path) = check(text);
        let want = format!("{path}:{line}:");
        println!("config {what}: exit {code}, stderr: {}", err.trim());
        if code != 1 {
            failures.push(format!("{what}: exit code {code}, want 1"));
        }
        let named = err.lines().any(|l| l.contains(&want) && l.contains(key));
        if !named {
            failures.push(format!(
                "{what}: no stderr line with {want} and key {key:?}: {}",
                err.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_valid_file_prints_the_effective_config() {
    let (code, out, err, _) = check(VALID);
    assert_eq!(code, 0, "stderr: {err}");
    println!(
        "config valid: exit 0, {} lines of effective config",
        out.lines().count()
    );
    for key in [
        "idle_timeout",
        "connect_timeout",
        "algorithm",
        "max_connections",
        "127.0.0.1:15002",
    ] {
        assert!(out.contains(key), "effective config lacks {key}:\n{out}");
    }
}
