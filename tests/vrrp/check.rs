//! `gatehouse check` refuses bad `[[halb.vrrp]]` sections with the key path of each problem.
//! Needs no root: it looks at this host's interfaces (`lo` exists everywhere).

use std::process::Command;

const BASE: &str = r#"
[[halb.listener]]
name = "rdp"
bind = "10.213.0.100:3389"
pool = "gw"
freebind = true

[[halb.pool]]
name = "gw"
algorithm = "source-hash"
backends = [{ address = "10.213.0.11:3390" }]
"#;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("g.toml");
    std::fs::write(&file, text).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "-q", "-c"])
        .arg(&file)
        .output()
        .expect("run gatehouse check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn section(name: &str, iface: &str, vrid: u32, priority: u32, extra: &str) -> String {
    format!(
        "\n[[halb.vrrp]]\nname = \"{name}\"\ninterface = \"{iface}\"\nvrid = {vrid}\npriority = {priority}\n\
         advert_interval = \"100ms\"\nvips = [\"10.213.0.100/24\"]\n{extra}\n"
    )
}

#[test]
fn check_refuses_bad_vrrp_sections_with_key_paths() {
    let (ok, err) = check(&(BASE.to_string() + &section("vi1", "lo", 51, 100, "")));
    assert!(ok, "a good section is refused: {err}");

    let cases = [
        (
            section("vi1", "lo", 300, 100, ""),
            "halb.vrrp[0].vrid",
            "out of range",
        ),
        (
            section("vi1", "lo", 51, 0, ""),
            "halb.vrrp[0].priority",
            "out of range",
        ),
        (
            section("vi1", "lo", 51, 100, "track_pool = \"nope\""),
            "halb.vrrp[0].track_pool",
            "no pool named",
        ),
        (
            section("vi1", "ghnope0", 51, 100, ""),
            "halb.vrrp[0].interface",
            "does not exist",
        ),
        (
            section("vi1", "lo", 51, 255, ""),
            "halb.vrrp[0].priority",
            "address owner",
        ),
        (
            format!(
                "{}{}",
                section("vi1", "lo", 51, 100, ""),
                section("vi2", "lo", 51, 90, "")
            ),
            "halb.vrrp[1].vrid",
            "already used",
        ),
        (
            BASE.replace("freebind = true", "freebind = false") + &section("vi1", "lo", 51, 100, ""),
            "halb.listener[0].freebind",
            "freebind = true",
        ),
    ];
    for (extra, key, words) in cases {
        let text = if extra.contains("[[halb.listener]]") {
            extra
        } else {
            format!("{BASE}{extra}")
        };
        let (ok, err) = check(&text);
        assert!(!ok, "accepted, expected {key}: {text}");
        let line = err
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no error for {key} in:\n{err}"));
        assert!(line.contains(words), "{key}: {line}");
    }
}
