//! The gateway role (issue 5): the `[gateway]` section and the shell around the gateway's
//! sans-IO cores (`crate::gateway`): its control client to the brokers, the farm key ring
//! that checks launch tickets, and what the workers' sessions need from both.
//!
//! The per-connection steps (sniffing, the client API, tunnels, RDP balancing) run inside
//! the workers (`engine/session_gateway.rs`); this module owns what is node-wide. Forwarding
//! listeners (a `pool` of next gateways) need no broker: they are HALB-like listeners that
//! carry the gateway path in their PROXY v2 header.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use gatehouse_control::ticket::{BindingField, KeyRing, TicketError, UnixMillis, VerifiedTicket};
use serde::{Deserialize, Serialize};

use crate::broker_role::farm_pki::{self, MemberTls};
use crate::broker_role::{ClientSetup, ControlClient};
use crate::config::{Config, HumanDuration, KeyPath, ListenerConfig, PoolConfig};

/// `[gateway]`: this node is a Secure Client Gateway.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// The gateway's id: its farm member name (the broker's `[[gateway]]` entry) and what
    /// forwarding chains write into the gateway path. Default: the node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The site this gateway serves (as the farm file's `[[gateway]]` entry says).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub site: String,
    /// Brokers' gateway addresses (20002), primary first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<SocketAddr>,
    /// This gateway's farm certificate (`gatehouse farm issue NAME --role gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The farm CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The farm ticket key file: tickets are checked here before they are redeemed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub farm_key_file: Option<PathBuf>,
    /// How long a broker request may take before the client gets `504 broker_timeout`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Longest gateway path (forwarding hops) a connection may have passed.
    #[serde(default = "default_max_path")]
    pub max_path: usize,
    /// Listeners: front listeners (no `pool`: API, tunnels, RDP balancing) and forwarding
    /// listeners (`pool` = the next gateways, for failover in order).
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
    /// Pools of next gateways for forwarding listeners.
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
}

fn default_request_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}

fn default_max_path() -> usize {
    8
}

impl GatewaySection {
    /// The gateway's id (its `id`, else the node's name).
    pub fn id_in(&self, config: &Config) -> String {
        self.id
            .clone()
            .or_else(|| config.node.name.clone())
            .unwrap_or_else(|| "gateway".to_string())
    }

    /// Whether a listener needs the brokers (a front listener, as opposed to forwarding).
    pub fn needs_brokers(&self) -> bool {
        self.listener.iter().any(|l| l.pool.is_empty())
    }

    fn member_tls(&self) -> Option<MemberTls> {
        Some(MemberTls {
            cert_file: self.cert_file.clone()?,
            key_file: self.key_file.clone()?,
            ca_file: self.ca_file.clone()?,
        })
    }
}

/// The `[gateway]` settings a reload cannot change (the control client and keys are started
/// once): everything but the listeners and pools.
pub fn control_settings(config: &Config) -> Option<String> {
    let g = config.gateway.as_ref()?;
    let mut g = g.clone();
    g.listener.clear();
    g.pool.clear();
    let id = g.id_in(config);
    Some(format!("{:?}", (g, id)))
}

/// Checks `[gateway]` beyond what the listener and pool checks do.
pub fn validate(g: &GatewaySection, at: &KeyPath, problems: &mut Vec<(KeyPath, String)>) {
    if g.listener.is_empty() {
        problems.push((
            at.clone(),
            "the gateway role needs at least one [[gateway.listener]]".into(),
        ));
    }
    if g.max_path == 0 || g.max_path > MAX_PATH_IDS {
        problems.push((at.key("max_path"), format!("must be 1..={}", MAX_PATH_IDS)));
    }
    if let Some(id) = &g.id {
        if id.is_empty() || id.len() > MAX_ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push((
                at.key("id"),
                format!(
                    "must be 1..={} printable ASCII characters without spaces",
                    MAX_ID_BYTES
                ),
            ));
        }
    }
    for (i, l) in g.listener.iter().enumerate() {
        let lat = at.key("listener").index(i);
        if !l.pool.is_empty() {
            if g.pool.iter().any(|p| p.name == l.pool && !p.send_proxy) {
                problems.push((
                    lat.key("pool"),
                    format!(
                        "pool {:?} must have send_proxy = true: the next gateway learns the client's address and the gateway path from the PROXY header",
                        l.pool
                    ),
                ));
            }
            for (key, set) in [
                ("rdp_resource", l.rdp_resource.is_some()),
                ("forward_http", l.forward_http.is_some()),
            ] {
                if set {
                    problems.push((
                        lat.key(key),
                        "a forwarding listener (with `pool`) passes every connection on; remove this key or `pool`".into(),
                    ));
                }
            }
        }
    }
    if !g.needs_brokers() {
        return;
    }
    if g.site.is_empty() {
        problems.push((
            at.key("site"),
            "a gateway with a front listener needs its site".into(),
        ));
    }
    if g.brokers.is_empty() {
        problems.push((
            at.key("brokers"),
            "a gateway with a front listener needs at least one broker".into(),
        ));
    }
    for (key, file) in [
        ("cert_file", &g.cert_file),
        ("key_file", &g.key_file),
        ("ca_file", &g.ca_file),
        ("farm_key_file", &g.farm_key_file),
    ] {
        if file.is_none() {
            problems.push((at.key(key), "required for a gateway with a front listener".into()));
        }
    }
    if let Some(tls) = g.member_tls() {
        crate::broker_role::validate_member_tls(&tls, at, false, problems);
    }
    if let Some(path) = &g.farm_key_file {
        if let Err(e) = farm_pki::load_key_ring(path) {
            problems.push((at.key("farm_key_file"), e.to_string()));
        }
    }
}

/// What the workers' gateway sessions share: the gateway's identity and, when it has front
/// listeners, the control client and the ticket keys. Started once with the node (a reload
/// keeps it; changes to `[gateway]`'s broker settings apply at the next restart).
pub struct GatewayRuntime {
    /// The gateway's id (member name, path entry).
    pub id: String,
    /// Its site.
    pub site: String,
    /// Longest accepted gateway path.
    pub max_path: usize,
    /// Broker request timeout (the session's deadline while it waits).
    pub request_timeout: std::time::Duration,
    /// The broker side, when a front listener needs it.
    pub front: Option<Front>,
}

/// The broker side of a gateway with front listeners.
pub struct Front {
    /// The control client (its own threads).
    pub control: ControlClient,
    keys: KeyRing,
}

impl GatewayRuntime {
    /// Starts the control client (when needed) and loads the farm keys.
    pub fn start(config: &Config) -> Result<Option<Arc<GatewayRuntime>>, String> {
        let Some(g) = &config.gateway else {
            return Ok(None);
        };
        let id = g.id_in(config);
        let front = if g.needs_brokers() {
            let tls = g
                .member_tls()
                .ok_or("gateway: cert_file, key_file and ca_file are required")?;
            let client_tls = tls.client_config().map_err(|e| format!("gateway: {e}"))?;
            let key_path = g
                .farm_key_file
                .as_ref()
                .ok_or("gateway: farm_key_file is required")?;
            let keys = farm_pki::load_key_ring(key_path).map_err(|e| format!("gateway: {e}"))?;
            let mut setup = ClientSetup::new(&id, g.brokers.clone(), client_tls);
            setup.request_timeout = g.request_timeout.get();
            let control = ControlClient::start(setup).map_err(|e| format!("gateway: {e}"))?;
            Some(Front { control, keys })
        } else {
            None
        };
        Ok(Some(Arc::new(GatewayRuntime {
            id,
            site: g.site.clone(),
            max_path: g.max_path,
            request_timeout: g.request_timeout.get(),
            front,
        })))
    }

    /// Brokers connected now (for `GET /health`).
    pub fn connected_brokers(&self) -> Vec<String> {
        self.front
            .as_ref()
            .map(|f| f.control.connected_brokers())
            .unwrap_or_default()
    }
}

impl Front {
    /// Checks a launch ticket's signature, expiry and site before it is redeemed (the issuer
    /// checks it again and spends its nonce, so a ticket opens one tunnel farm-wide).
    pub fn check_ticket(&self, ticket: &str, site: &str) -> Result<VerifiedTicket, TicketError> {
        let now = UnixMillis::from_system_time(std::time::SystemTime::now());
        let verified = self.keys.verify(ticket, now)?;
        if verified.claims.site != site {
            return Err(TicketError::BindingMismatch(BindingField::Site));
        }
        Ok(verified)
    }
}

/// Most gateway ids a path may hold (`gateway::path` bounds the TLV the same way).
pub const MAX_PATH_IDS: usize = crate::gateway::path::MAX_PATH_ENTRIES;
/// Longest gateway id.
pub const MAX_ID_BYTES: usize = crate::gateway::path::MAX_ID_BYTES;

#[cfg(test)]
mod tests {
    use crate::config::{load_str, ValidateOptions};

    fn problems(text: &str) -> String {
        match load_str(text, "gw.toml", ValidateOptions::default()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_front_listener_needs_brokers_site_and_member_files() {
        let e = problems("[gateway]\n[[gateway.listener]]\nname = \"front\"\nbind = \"127.0.0.1:8443\"\n");
        for key in [
            "gateway.site",
            "gateway.brokers",
            "gateway.cert_file",
            "gateway.farm_key_file",
        ] {
            assert!(e.contains(key), "{key} missing from: {e}");
        }
        assert!(e.contains("gw.toml:1:"), "{e}");
    }

    #[test]
    fn each_missing_member_file_is_reported_at_its_key() {
        let e = problems(
            "[gateway]\nsite = \"a\"\nbrokers = [\"127.0.0.1:20002\"]\ncert_file = \"/nonexistent/gw.pem\"\n\
             key_file = \"/nonexistent/gw.key\"\nca_file = \"/nonexistent/ca.pem\"\n\
             farm_key_file = \"/nonexistent/keys.toml\"\n\
             [[gateway.listener]]\nname = \"front\"\nbind = \"127.0.0.1:8443\"\n",
        );
        for (line, key, file) in [
            (4, "cert_file", "gw.pem"),
            (5, "key_file", "gw.key"),
            (6, "ca_file", "ca.pem"),
        ] {
            let want = format!("gw.toml:{line}:1: gateway.{key}: cannot read /nonexistent/{file}: ");
            assert!(e.contains(&want), "{want} missing from: {e}");
        }
    }

    #[test]
    fn a_forwarding_listener_needs_send_proxy_and_no_front_keys() {
        let text =
            "[gateway]\nid = \"fw\"\n\n[[gateway.listener]]\nname = \"dmz\"\nbind = \"127.0.0.1:8443\"\n\
                    pool = \"chain\"\nrdp_resource = \"desk\"\n\n[[gateway.pool]]\nname = \"chain\"\n\
                    backends = [{ name = \"a\", address = \"127.0.0.1:9000\" }]\n";
        let e = problems(text);
        assert!(
            e.contains("gw.toml:7:1: gateway.listener[0].pool: pool \"chain\" must have send_proxy = true"),
            "{e}"
        );
        assert!(e.contains("gateway.listener[0].rdp_resource"), "{e}");
        let ok = text.replace("rdp_resource = \"desk\"\n", "").replace(
            "[[gateway.pool]]\nname = \"chain\"\n",
            "[[gateway.pool]]\nname = \"chain\"\nsend_proxy = true\n",
        );
        assert_eq!(problems(&ok), "");
    }

    #[test]
    fn gateway_keys_on_a_halb_listener_and_shared_names_are_refused() {
        let text = "[halb]\n[[halb.listener]]\nname = \"a\"\nbind = \"127.0.0.1:8443\"\npool = \"p\"\n\
                    forward_http = \"127.0.0.1:80\"\n\n[[halb.pool]]\nname = \"p\"\n\
                    backends = [{ name = \"b\", address = \"127.0.0.1:9000\" }]\n\n\
                    [gateway]\nid = \"fw\"\n[[gateway.listener]]\nname = \"a\"\nbind = \"127.0.0.1:8443\"\npool = \"p\"\n";
        let e = problems(text);
        assert!(
            e.contains("halb.listener[0].forward_http: only a [[gateway.listener]]"),
            "{e}"
        );
        assert!(e.contains("duplicate listener name \"a\""), "{e}");
        assert!(
            e.contains("port 8443 is already taken: listener \"a\" binds 127.0.0.1:8443"),
            "{e}"
        );
    }
}
