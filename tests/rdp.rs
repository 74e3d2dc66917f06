//! End-to-end tests against a real RDP server and client: Debian's xrdp 0.9.21 (with
//! xrdp-sesman and xorgxrdp) and FreeRDP 2.11's `xfreerdp` under `xvfb-run` (issue 5, Tests).
//! Needs root and those packages; skips loudly without them (fails under `CI=true`).
//! The harness (`rdp_harness`) is meant to be reused by the gateway's RDP tests.

#[path = "e2e/common.rs"]
mod common;
#[path = "rdp/harness.rs"]
mod rdp_harness;

#[path = "rdp/direct.rs"]
mod direct;
#[path = "rdp/halb.rs"]
mod halb;
