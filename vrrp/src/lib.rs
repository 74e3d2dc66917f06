//! VRRP (RFC 5798 / RFC 9568 v3, RFC 3768 v2) for the gatehouse HALB role.
//!
//! A sans-IO core — [`packet`] (wire format), [`instance`] (state machine), [`config`]
//! (validation), [`arp`] (gratuitous ARP frames) — and a thin Linux shell in `linux` that owns
//! the raw socket, netlink and the control thread. Everything that decides is in the core and is
//! tested from byte vectors and synthetic time.

#![warn(missing_docs)]

pub mod arp;
pub mod config;
pub mod instance;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod packet;

pub use config::{validate_set, ConfigError, InstanceConfig, Vip};
pub use instance::{Action, Event, Instance, State};
pub use packet::{Advert, ChecksumAccept, ChecksumMode, DecodeError, Family, Version};
