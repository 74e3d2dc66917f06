//! Shared by the namespace tests: a two-namespace veth topology that cleans up after itself,
//! prerequisite checks, and helpers to run code inside a namespace.
//!
//! Everything is named `ghv<pid>*`; addresses are from 10.213.0.0/24 and exist only inside the
//! namespaces.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

/// The VIP every test instance uses.
pub const VIP: &str = "10.213.0.100";

/// Two namespaces and a veth pair between them, deleted on drop.
pub struct Topology {
    pub ns: [String; 2],
    pub ifname: [String; 2],
}

impl Topology {
    /// Build it; `tag` (one letter) keeps tests of one process apart.
    pub fn create(tag: char) -> Result<Topology, String> {
        let pid = std::process::id();
        let topo = Topology {
            ns: [format!("ghv{pid}{tag}a"), format!("ghv{pid}{tag}b")],
            ifname: [format!("ghv{pid}{tag}x"), format!("ghv{pid}{tag}y")],
        };
        // From here on, Drop cleans up whatever was made.
        for ns in &topo.ns {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link",
            "add",
            &topo.ifname[0],
            "netns",
            &topo.ns[0],
            "type",
            "veth",
            "peer",
            "name",
            &topo.ifname[1],
            "netns",
            &topo.ns[1],
        ])?;
        for k in 0..2 {
            let addr = format!("10.213.0.{}/24", k + 1);
            ip(&["-n", &topo.ns[k], "addr", "add", &addr, "dev", &topo.ifname[k]])?;
            ip(&["-n", &topo.ns[k], "link", "set", &topo.ifname[k], "up"])?;
        }
        // The kernel's linkwatch reports the carrier up to a second late; an instance started
        // before that begins in Fault. Start the tests from a settled link.
        let start = Instant::now();
        while !(0..2).all(|k| topo.carrier(k)) {
            if start.elapsed() > Duration::from_secs(3) {
                return Err("veth carrier did not come up within 3 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(topo)
    }

    /// Whether interface `k` reports operstate UP.
    pub fn carrier(&self, k: usize) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns[k], "-br", "link", "show", "dev", &self.ifname[k]])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1) == Some("UP"))
            .unwrap_or(false)
    }

    /// Whether namespace `k` holds the VIP on its veth end.
    pub fn holds_vip(&self, k: usize) -> bool {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.ns[k],
                "-o",
                "-4",
                "addr",
                "show",
                "dev",
                &self.ifname[k],
            ])
            .output()
            .expect("ip ran a moment ago");
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {VIP}/"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in &self.ns {
            // Deleting a namespace deletes its end of the veth and with it the pair.
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

pub fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    ip(&["-V"]).map_err(|e| format!("iproute2 missing: {e}"))?;
    Ok(())
}

/// Run `f` on a fresh thread that first enters namespace `ns`; sockets `f` opens live there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace fd; setns affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread panicked")
}

/// Poll until `pred` holds; the elapsed time, or a panic with `what` after `limit`.
pub fn wait_for(limit: Duration, what: &str, pred: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !pred() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

/// Check prerequisites; `false` (after a loud message) means skip. Under `CI=true` a missing
/// prerequisite panics instead.
pub fn ready_or_skip(test: &str, extra: &[&str]) -> bool {
    let missing = prerequisites().err().or_else(|| {
        extra
            .iter()
            .find(|tool| which(tool).is_none())
            .map(|tool| format!("{tool} not installed"))
    });
    let Some(why) = missing else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run under CI=true: {why}");
    }
    // Written to the stderr handle itself, not through eprintln!, so the test harness does not
    // capture it: a skip must be visible in every run.
    let banner = "!".repeat(66);
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{banner}\n!!! SKIPPED {test}: {why}\n!!! (needs root, iproute2 {extra:?}; \
         set CI=true to make this a failure)\n{banner}\n"
    );
    false
}

/// The full path of a program on PATH.
pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
