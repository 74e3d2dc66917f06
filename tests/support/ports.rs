//! Loopback ports for the servers a test starts in child processes.
//!
//! A port found by binding port 0 comes from the kernel's ephemeral range, and between the
//! moment the test lets it go and the moment the child binds it, any outgoing connection of
//! any test may be given it as its source port (seen once in CI as "Address already in use").
//! So the ports handed out here come from below that range (`ip_local_port_range` starts at
//! 32768 by default), where the kernel never picks source ports: the only other takers are
//! tests of this same process, which a shared counter keeps apart, and servers that are
//! already listening, which the bind check skips.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Ports handed out when the ephemeral range is the default 32768-60999.
const DEFAULT_SPAN: (u32, u32) = (20_000, 32_768);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The ports `[low, high)` outside the kernel's ephemeral range: below it when there is room
/// (at least 4,000 ports above 1023), else above it.
fn span() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|w| w.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(first), Some(_)) if first >= 5_024 => (first.saturating_sub(12_768).max(1_024), first),
        (Some(_), Some(last)) if last <= 61_535 => (last + 1, 65_536),
        _ => DEFAULT_SPAN,
    }
}

/// A loopback port outside the ephemeral range that was free a moment ago and that no other
/// call in this process has returned.
pub fn free_port() -> u16 {
    let (low, high) = span();
    let width = high - low;
    // Test binaries of one `cargo test` run one after another, but start each at its own
    // place so that two runs side by side (CI and a developer) rarely meet.
    let first = (u64::from(std::process::id()) * 7_919 % u64::from(width)) as u32;
    let _ = NEXT.compare_exchange(0, 1 + first, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..width {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + n % width) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}
