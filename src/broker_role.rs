//! The control-plane roles of a node (issue 4): the broker (publishing agent) on 20002 and
//! 20003, the host agent, the gateway's control client, and the admin commands that go
//! with them (`gatehouse farm`, `gatehouse user`, `gatehouse host-agent`).
//!
//! Owns the `[broker]` and `[host_agent]` config sections and the shells (sockets, mutual
//! TLS, threads) around the sans-IO core of the `gatehouse-control` crate. It must not make
//! broker decisions itself (that is `gatehouse_control::broker::Broker`) nor touch the data
//! plane's workers.

pub mod agent;
pub mod cli;
pub mod client;
pub mod demo;
pub mod farm_pki;
pub mod hash_queue;
pub mod link;
pub mod resolver;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Config, HumanDuration, KeyPath};
use crate::runtime::Endpoint;

pub use agent::HostAgent;
pub use client::{Answer, AnswerSink, BrokerReply, ClientFailure, ClientSetup, ControlClient};
pub use farm_pki::{MemberRole, MemberTls};
pub use server::BrokerServer;

/// `[broker]`: this node runs a broker.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSection {
    /// Where gateways connect (PROTOCOL.md §1).
    #[serde(default = "default_gateway_listen")]
    pub gateway_listen: SocketAddr,
    /// Where host agents connect.
    #[serde(default = "default_agent_listen")]
    pub agent_listen: SocketAddr,
    /// The farm file (control/FARM.md), the same on every broker.
    pub farm_file: PathBuf,
    /// The local users file (`gatehouse user ...` edits it; reloaded when it changes).
    pub users_file: PathBuf,
    /// The audit log (JSON lines, mode 0600).
    pub audit_file: PathBuf,
    /// The farm ticket key file (`gatehouse farm init`).
    pub farm_key_file: PathBuf,
    /// This broker's farm certificate (`gatehouse farm issue NAME --role broker`).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The farm CA certificate.
    pub ca_file: PathBuf,
    /// Threads that check passwords (argon2id), off the connection threads.
    #[serde(default = "default_hash_threads")]
    pub hash_threads: usize,
    /// Keepalive ping interval (PROTOCOL.md §5).
    #[serde(default = "default_ping_interval")]
    pub ping_interval: HumanDuration,
    /// A peer whose oldest ping is unanswered this long is dropped.
    #[serde(default = "default_ping_timeout")]
    pub ping_timeout: HumanDuration,
}

/// `[host_agent]`: this node reports for an RD Session Host whose name is the node's name.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostAgentSection {
    /// Brokers' host-agent addresses (20003); the agent reports to every one.
    pub brokers: Vec<SocketAddr>,
    /// Time between two reports.
    #[serde(default = "default_report_interval")]
    pub report_interval: HumanDuration,
    /// The host's RDP port, probed before each report.
    #[serde(default = "default_rdp_address")]
    pub rdp_address: SocketAddr,
    /// Users with a session, for a stand-in host (added to `sessions_file`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<String>,
    /// A file with one user name per line, re-read before each report (stand-in hosts;
    /// a real agent asks the session manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_file: Option<PathBuf>,
    /// Report this CPU percentage instead of the load average (stand-ins, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u8>,
    /// Report this memory percentage instead of /proc/meminfo (stand-ins, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_percent: Option<u8>,
    /// This agent's farm certificate (role host-agent).
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The farm CA certificate.
    pub ca_file: PathBuf,
}

impl BrokerSection {
    /// The TLS files of this section.
    pub fn tls(&self) -> MemberTls {
        MemberTls {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

impl HostAgentSection {
    /// The TLS files of this section.
    pub fn tls(&self) -> MemberTls {
        MemberTls {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

fn default_gateway_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 20002))
}
fn default_agent_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 20003))
}
fn default_hash_threads() -> usize {
    2
}
fn default_ping_interval() -> HumanDuration {
    HumanDuration::secs(1)
}
fn default_ping_timeout() -> HumanDuration {
    HumanDuration::secs(3)
}
fn default_report_interval() -> HumanDuration {
    HumanDuration::secs(2)
}
fn default_rdp_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 3389))
}

/// Checks `[broker]` and `[host_agent]`; called from `config::validate`.
pub fn validate(config: &Config, problems: &mut Vec<(KeyPath, String)>) {
    let root = KeyPath::root();
    if let Some(b) = &config.broker {
        let at = root.key("broker");
        if b.hash_threads == 0 || b.hash_threads > 64 {
            problems.push((at.key("hash_threads"), "must be 1..=64".into()));
        }
        if b.ping_timeout.get() <= b.ping_interval.get() {
            problems.push((at.key("ping_timeout"), "must be longer than ping_interval".into()));
        }
        // The files themselves, so that `gatehouse check` reports a broken farm file, users
        // file, key file or certificate at its key rather than at start.
        if let Err(e) = gatehouse_control::broker::Farm::load(&b.farm_file) {
            problems.push((at.key("farm_file"), e.to_string()));
        }
        if let Err(e) = gatehouse_control::broker::UserDb::load_or_new(&b.users_file) {
            problems.push((at.key("users_file"), e.to_string()));
        }
        let audit_dir = b.audit_file.parent().filter(|d| !d.as_os_str().is_empty());
        if b.audit_file.is_dir() {
            problems.push((
                at.key("audit_file"),
                format!("{} is a directory; name a file in it", b.audit_file.display()),
            ));
        } else if let Some(dir) = audit_dir.filter(|d| !d.is_dir()) {
            problems.push((
                at.key("audit_file"),
                format!(
                    "cannot create {}: {} is not a directory",
                    b.audit_file.display(),
                    dir.display()
                ),
            ));
        }
        if let Err(e) = farm_pki::load_key_ring(&b.farm_key_file) {
            problems.push((at.key("farm_key_file"), e.to_string()));
        }
        validate_member_tls(&b.tls(), &at, true, problems);
    }
    if let Some(h) = &config.host_agent {
        let at = root.key("host_agent");
        if h.brokers.is_empty() {
            problems.push((at.key("brokers"), "needs at least one broker".into()));
        }
        if h.report_interval.get().is_zero() {
            problems.push((at.key("report_interval"), "must be positive".into()));
        }
        for (key, v) in [("cpu_percent", h.cpu_percent), ("mem_percent", h.mem_percent)] {
            if v.is_some_and(|v| v > 100) {
                problems.push((at.key(key), "must be 0..=100".into()));
            }
        }
        validate_member_tls(&h.tls(), &at, false, problems);
    }
}

/// A farm member's certificate, key and CA files under the section `at`: each file that cannot
/// be read at its own key, then the TLS configuration built from them (as a server for a
/// broker, as a client otherwise) at `cert_file`.
pub fn validate_member_tls(
    tls: &MemberTls,
    at: &KeyPath,
    server: bool,
    problems: &mut Vec<(KeyPath, String)>,
) {
    let mut readable = true;
    for (key, file) in [
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
        ("ca_file", &tls.ca_file),
    ] {
        if let Err(e) = std::fs::File::open(file) {
            problems.push((at.key(key), format!("cannot read {}: {e}", file.display())));
            readable = false;
        }
    }
    if readable {
        let built = if server {
            tls.server_config().map(drop)
        } else {
            tls.client_config().map(drop)
        };
        if let Err(e) = built {
            problems.push((at.key("cert_file"), e.to_string()));
        }
    }
}

/// The control-plane roles a node runs; started by `runtime::Node::start`, stopped first by
/// its drain.
pub struct ControlRoles {
    broker: Option<BrokerServer>,
    agent: Option<HostAgent>,
}

impl ControlRoles {
    /// Starts the broker and the host agent the config declares; bound addresses are
    /// written back into `config` and added to `endpoints`.
    pub fn start(config: &mut Config, endpoints: &mut Vec<Endpoint>) -> Result<ControlRoles, String> {
        let node = config.node_name();
        let broker = match &mut config.broker {
            Some(section) => {
                let server = BrokerServer::start(section, &node).map_err(|e| format!("broker: {e}"))?;
                section.gateway_listen = server.gateway_addr;
                section.agent_listen = server.agent_addr;
                endpoints.push(Endpoint {
                    role: "broker".into(),
                    name: "gateways".into(),
                    address: server.gateway_addr,
                });
                endpoints.push(Endpoint {
                    role: "broker".into(),
                    name: "host-agents".into(),
                    address: server.agent_addr,
                });
                Some(server)
            }
            None => None,
        };
        let agent = match &config.host_agent {
            Some(section) => Some(HostAgent::start(section, &node).map_err(|e| format!("host agent: {e}"))?),
            None => None,
        };
        Ok(ControlRoles { broker, agent })
    }

    /// Sends `draining` to gateways and stops every thread.
    pub fn stop(self) {
        if let Some(a) = self.agent {
            a.stop();
        }
        if let Some(b) = self.broker {
            b.stop();
        }
    }
}
