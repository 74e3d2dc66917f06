//! End-to-end tests of the HALB's VRRP role (issue 6): the real `gatehouse` binary in network
//! namespaces on a bridge, against itself and against keepalived 2.2.7, with a client probing
//! the VIP; and, in the same lab, a HALB's tunnels over a cut link. Needs root; skips loudly
//! without it (fails under `CI=true`).

#[path = "vrrp/common.rs"]
mod common;

#[path = "vrrp/bench.rs"]
mod bench;
#[path = "vrrp/check.rs"]
mod check;
#[path = "vrrp/client.rs"]
mod client;
#[path = "vrrp/dead_peer.rs"]
mod dead_peer;
#[path = "vrrp/failover.rs"]
mod failover;
#[path = "vrrp/keepalived.rs"]
mod keepalived;
#[path = "vrrp/link.rs"]
mod link;
#[path = "vrrp/tracking.rs"]
mod tracking;
