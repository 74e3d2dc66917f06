//! What the bench's end-to-end tests share: the gatehouse binary beside gatehouse-bench, and a
//! scenario's `--quick --json` run parsed.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The gatehouse binary of the same target directory and profile as this test's binary.
/// `cargo test --workspace` builds it (gatehouse's own tests need it).
pub fn gatehouse() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_gatehouse-bench")).with_file_name("gatehouse");
    assert!(
        path.is_file(),
        "{} is missing: build it first (`cargo build -p gatehouse`, or run `cargo test --workspace`)",
        path.display()
    );
    path
}

/// Runs `gatehouse-bench SCENARIO --quick --json --gatehouse BIN`, requires success and
/// returns the report (stderr, the progress lines, is printed for the test log).
pub fn quick_run(scenario: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"))
        .args([scenario, "--quick", "--json", "--gatehouse"])
        .arg(gatehouse())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{scenario} failed: {stderr}");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("{stderr}");
    v
}
