//! gatehouse: the data plane of a remote-desktop farm.
//!
//! An L4 load balancer (the HALB role) and, in later parts, the secure client gateway. The
//! crate is laid out as in `DESIGN.md`: sans-IO cores (`balance`, `proxy_protocol`, `cidr`,
//! `health`'s verdicts, `config`), the per-core engine (`engine`), the control side
//! (`runtime`, `admin`), and the command line (`cli`, `demo`).

pub mod admin;
pub mod balance;
// broker (issue 4): broker, host agent and gateway control client shells.
pub mod broker_role;
pub mod cidr;
pub mod cli;
pub mod config;
// connect (issue 5): the `gatehouse connect` client.
pub mod connect;
pub mod demo;
pub mod engine;
pub mod gateway;
pub mod gateway_role;
pub mod halb_vrrp;
pub mod health;
pub mod metrics;
pub mod privdrop;
pub mod proxy_protocol;
pub mod runtime;
pub mod sd_notify;
pub mod shared;
pub mod tls;
