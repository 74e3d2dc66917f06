//! The control plane of `gatehouse demo`: a throw-away farm directory (CA, ticket key,
//! certificates, farm file, one user), a broker, and a host agent per stand-in host.
//!
//! Owns only the demo's composition; the broker and agents are the real ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gatehouse_control::broker::UserDb;

use super::farm_pki::{farm_init, farm_issue, MemberRole, MemberTls, CA_CERT_FILE, FARM_KEYS_FILE};
use super::{BrokerSection, BrokerServer, HostAgent, HostAgentSection};
use crate::config::HumanDuration;
use crate::runtime::Endpoint;

/// The demo user and password, printed in the demo's summary.
pub const DEMO_USER: (&str, &str) = ("demo", "demo");

/// The demo's gateways (farm members of site `demo`).
pub const DEMO_GATEWAYS: [&str; 2] = ["demo-gw-1", "demo-gw-2"];

/// The broker's addresses in the demo: the protocol's ports on loopback, or kernel-chosen.
pub fn demo_broker_ports(ephemeral: bool) -> (SocketAddr, SocketAddr) {
    let port = |p| SocketAddr::from(([127, 0, 0, 1], if ephemeral { 0 } else { p }));
    (port(20002), port(20003))
}

/// The demo's running broker and agents.
pub struct DemoControlPlane {
    broker: BrokerServer,
    agents: Vec<HostAgent>,
    dir: PathBuf,
}

impl DemoControlPlane {
    /// Builds the farm in `dir` (created; removed on stop) for `hosts` (name, RDP address),
    /// starts a broker on `broker_ports` (gateways, agents) and one agent per host.
    pub fn start(
        dir: &Path,
        hosts: &[(String, SocketAddr)],
        broker_ports: (SocketAddr, SocketAddr),
    ) -> Result<DemoControlPlane, String> {
        let _ = std::fs::remove_dir_all(dir);
        farm_init(dir).map_err(|e| e.to_string())?;
        let member = |name: &str, role| -> Result<MemberTls, String> {
            let f = farm_issue(dir, name, role).map_err(|e| e.to_string())?;
            Ok(MemberTls {
                cert_file: f.cert,
                key_file: f.key,
                ca_file: dir.join(CA_CERT_FILE),
            })
        };
        let broker_tls = member("demo-broker", MemberRole::Broker)?;
        let mut farm = String::from(
            "# gatehouse demo farm\n[[site]]\nname = \"demo\"\ndefault_pool = \"demo-hosts\"\n\n",
        );
        for gw in DEMO_GATEWAYS {
            member(gw, MemberRole::Gateway)?;
            farm.push_str(&format!("[[gateway]]\nname = \"{gw}\"\nsite = \"demo\"\n\n"));
        }
        for (name, addr) in hosts {
            farm.push_str(&format!(
                "[[host]]\nname = \"{name}\"\naddress = \"{}\"\nport = {}\nsite = \"demo\"\nsession_limit = 50\n\n",
                addr.ip(),
                addr.port()
            ));
        }
        let names: Vec<String> = hosts.iter().map(|(n, _)| format!("{n:?}")).collect();
        farm.push_str(&format!(
            "[[pool]]\nname = \"demo-hosts\"\nsite = \"demo\"\nhosts = [{}]\n\n[[group]]\nname = \"staff\"\n\n\
             [[resource]]\nid = \"desktop\"\nname = \"Demo desktop\"\nkind = \"desktop\"\npool = \"demo-hosts\"\ngroups = [\"staff\"]\n",
            names.join(", ")
        ));
        let farm_file = dir.join("farm.toml");
        std::fs::write(&farm_file, farm).map_err(|e| format!("{}: {e}", farm_file.display()))?;
        let users_file = dir.join("users.toml");
        let mut users = UserDb::default();
        users
            .add(
                DEMO_USER.0,
                DEMO_USER.1,
                vec!["staff".into()],
                &mut rand::rngs::OsRng,
            )
            .and_then(|()| users.save(&users_file))
            .map_err(|e| e.to_string())?;
        let section = BrokerSection {
            gateway_listen: broker_ports.0,
            agent_listen: broker_ports.1,
            farm_file,
            users_file,
            audit_file: dir.join("audit.log"),
            farm_key_file: dir.join(FARM_KEYS_FILE),
            cert_file: broker_tls.cert_file,
            key_file: broker_tls.key_file,
            ca_file: broker_tls.ca_file,
            hash_threads: 1,
            ping_interval: HumanDuration::secs(1),
            ping_timeout: HumanDuration::secs(3),
        };
        let broker = BrokerServer::start(&section, "demo-broker")?;
        let mut agents = Vec::new();
        for (name, addr) in hosts {
            let tls = member(name, MemberRole::HostAgent)?;
            let agent = HostAgentSection {
                brokers: vec![broker.agent_addr],
                report_interval: HumanDuration::secs(2),
                rdp_address: *addr,
                sessions: Vec::new(),
                sessions_file: None,
                cpu_percent: None,
                mem_percent: None,
                cert_file: tls.cert_file,
                key_file: tls.key_file,
                ca_file: tls.ca_file,
            };
            agents.push(HostAgent::start(&agent, name)?);
        }
        Ok(DemoControlPlane {
            broker,
            agents,
            dir: dir.to_path_buf(),
        })
    }

    /// The broker's two listeners.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        vec![
            Endpoint {
                role: "broker".into(),
                name: "gateways".into(),
                address: self.broker.gateway_addr,
            },
            Endpoint {
                role: "broker".into(),
                name: "agents".into(),
                address: self.broker.agent_addr,
            },
        ]
    }

    /// The farm directory (certificates for trying a gateway client by hand).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops agents and broker and removes the farm directory.
    pub fn stop(self) {
        for a in self.agents {
            a.stop();
        }
        self.broker.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
