//! The Linux shell around the sans-IO core: raw VRRP sockets, rtnetlink for VIPs, AF_PACKET for
//! gratuitous ARP, and the control thread ([`Runner`]) that ties them to the state machines.
//!
//! Virtual MAC (macvlan) is not implemented; configs asking for it are refused.

pub mod net;
pub mod netlink;
mod runner;

pub use runner::{Counters, InstanceStatus, PrioritySource, Runner, VrrpEvent, TRACK_PERIOD};
