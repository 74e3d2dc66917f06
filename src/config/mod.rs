//! The configuration file: its types, how it is loaded, and how it is checked.
//!
//! Owns the TOML schema of every role and the rules that make a file valid. `gatehouse check`
//! and `gatehouse run` (and a SIGHUP reload) go through [`load_file`], so they accept and refuse
//! exactly the same files. Turning a valid config into running state is `runtime`'s job.

mod duration;
mod locate;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use duration::HumanDuration;
pub use locate::{KeyPath, SourceMap};
pub use validate::ValidateOptions;

/// A whole configuration file. Each optional table declares a role that `gatehouse run` starts.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings of the process as a whole.
    #[serde(default)]
    pub node: NodeConfig,
    /// The admin listener (metrics and the admin API). Absent: no admin listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// The HALB role: L4 listeners balancing over backend pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halb: Option<HalbConfig>,
    // broker (issue 4): the broker and host-agent roles, owned by crate::broker_role.
    /// The broker role (publishing agent) on 20002/20003.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<crate::broker_role::BrokerSection>,
    /// The host-agent role: reports this host's load to the brokers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_agent: Option<crate::broker_role::HostAgentSection>,
    // gateway (issue 5): the Secure Client Gateway, owned by crate::gateway.
    /// The gateway role: the one-port client front (API, tunnels, RDP balancing) and
    /// forwarding listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<crate::gateway_role::GatewaySection>,
}

impl Config {
    /// Every data-plane listener: the HALB's, then the gateway's (names are unique across both).
    pub fn listeners(&self) -> impl Iterator<Item = &ListenerConfig> {
        let halb = self.halb.iter().flat_map(|h| h.listener.iter());
        halb.chain(self.gateway.iter().flat_map(|g| g.listener.iter()))
    }

    /// Every backend pool: the HALB's, then the gateway's (names are unique across both).
    pub fn pools(&self) -> impl Iterator<Item = &PoolConfig> {
        let halb = self.halb.iter().flat_map(|h| h.pool.iter());
        halb.chain(self.gateway.iter().flat_map(|g| g.pool.iter()))
    }
}

/// Process-wide settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name in logs and metrics (default: the host name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Connections held at once by the whole node; accepting pauses at the limit.
    pub max_connections: usize,
    /// How long SIGTERM waits for sessions to finish before closing them.
    pub drain_timeout: HumanDuration,
    /// Log filter: `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub log_level: String,
    /// How log lines look on stderr.
    pub log_format: LogFormat,
    /// Drop to this user after binding (when started as root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Drop to this group after binding (default: the user's primary group).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where the node keeps what it generates (the self-signed certificate of an offloading
    /// listener without one).
    pub state_dir: PathBuf,
    /// Who chooses the source port of a backend connect.
    pub source_ports: SourcePortChoice,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            workers: 0,
            max_connections: 9_000,
            drain_timeout: HumanDuration::secs(30),
            log_level: "info".to_string(),
            log_format: LogFormat::Text,
            user: None,
            group: None,
            state_dir: PathBuf::from("/var/lib/gatehouse"),
            source_ports: SourcePortChoice::Engine,
        }
    }
}

/// The admin listener: Prometheus metrics and a small JSON API. Loopback by default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin HTTP listener.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9900)),
        }
    }
}

/// The HALB role: listeners and the pools they balance over.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HalbConfig {
    /// Listeners (`[[halb.listener]]`).
    #[serde(default)]
    pub listener: Vec<ListenerConfig>,
    /// Backend pools (`[[halb.pool]]`).
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    /// VRRP instances whose VIPs the listeners serve (`[[halb.vrrp]]`, issue 6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vrrp: Vec<crate::halb_vrrp::VrrpSection>,
}

/// One TCP listener that balances over a pool.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name in logs and metrics; unique.
    pub name: String,
    /// Address and port to listen on (`"0.0.0.0:443"`, `"[::]:443"`).
    pub bind: SocketAddr,
    /// The pool connections go to (required on a HALB listener; on a gateway listener it
    /// makes a forwarding listener: every connection goes to the next gateway of this pool).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    /// Client addresses (CIDR) allowed to connect; empty: everyone. Checked against the real
    /// client (the PROXY header's source behind a trusted forwarder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Client addresses (CIDR) refused, checked before `allow`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// Gateway listeners: the published resource (a desktop pool) whose hosts plain RDP
    /// clients on this port are balanced over (RDP load balancing); absent: RDP clients are
    /// refused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdp_resource: Option<String>,
    /// Gateway listeners: HTTP requests that are not for the client API go to this web
    /// server (the whole connection becomes a tunnel to it); absent: `404`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_http: Option<SocketAddr>,
    /// Listen backlog.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Bind even if the address is not (yet) local (a VIP held by the other HALB).
    #[serde(default)]
    pub freebind: bool,
    /// Move bytes with splice(2) between two plain sockets (copy otherwise).
    #[serde(default = "default_true")]
    pub splice: bool,
    /// Sources (CIDR) that must send a PROXY v2 header first; a header from anyone else is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_proxy_from: Vec<String>,
    /// Connections held at once per client IP address; 0: no limit.
    #[serde(default)]
    pub max_per_source: u32,
    /// Time allowed for the first bytes a listener must read (PROXY header) before routing.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Time allowed for a backend to accept a connection, per attempt.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// A tunnel with no bytes either way for this long is closed. RDP sessions sit idle for
    /// long (a user reading), so the default is a working day.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// TCP keepalive idle time on both sockets, so a peer that vanished is noticed.
    #[serde(default = "default_keepalive")]
    pub tcp_keepalive: HumanDuration,
    /// Time between keepalive probes once they start.
    #[serde(default = "default_keepalive_interval")]
    pub tcp_keepalive_interval: HumanDuration,
    /// Unanswered keepalive probes after which a connection is dropped, when
    /// `tcp_user_timeout` is `"0s"`: a silent peer is then noticed `tcp_keepalive +
    /// tcp_keepalive_interval x tcp_keepalive_probes` after its last word. With a user
    /// timeout (the default) Linux does not count probes: see `tcp_user_timeout`.
    #[serde(default = "default_keepalive_probes")]
    pub tcp_keepalive_probes: u32,
    /// Data sent and not acknowledged for this long drops the connection (TCP_USER_TIMEOUT;
    /// a cut link while bytes are in flight, which keepalive does not cover). `"0s"`: the
    /// kernel's retransmission limit, about 15 minutes. It also replaces the probe count of
    /// keepalive: a silent peer is dropped at the first keepalive probe due once this long
    /// has passed since its last word with a probe unanswered (with the defaults, 60 s of
    /// silence, a probe, and the drop at the next one, about 70 s; measured).
    #[serde(default = "default_user_timeout")]
    pub tcp_user_timeout: HumanDuration,
    /// TLS on this listener: `off`, `offload`, `passthrough` or `auto`.
    #[serde(default)]
    pub tls: TlsMode,
    /// Certificates of an offloading listener, chosen by SNI (absent with `pem` and `pfx`:
    /// a self-signed one is generated into `node.state_dir`). The default certificate, for
    /// clients whose server name none has, is the one with `default = true`, else the first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateConfig>,
    /// No default certificate: a client must send a server name one of the certificates
    /// has (HAProxy's `strict-sni`); others are refused (`unknown_sni`, `no_sni_no_default`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict_sni: bool,
    /// One all-in-one PEM (key, certificate, intermediates in any order); the default
    /// certificate when `certificates` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pem: Option<PathBuf>,
    /// A PKCS#12/PFX file; the default certificate when there is no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pfx: Option<PathBuf>,
    /// Environment variable holding the PFX password (absent: an empty password; named
    /// but not set: an error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pfx_password_env: Option<String>,
    /// Lowest TLS version offered: `"1.2"` or `"1.3"`.
    #[serde(default = "default_min_tls")]
    pub min_tls: String,
    /// ALPN protocols in order of preference (empty: no ALPN).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// Cipher suites by IANA name, in the server's order of preference (empty: the
    /// defaults, `tls::suite_rank`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ciphers: Vec<String>,
    /// Key-exchange groups (`X25519`, `P-256`, `P-384`), in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kx_groups: Vec<String>,
    /// Shared session-ticket key file (nodes behind one HALB resume each other's sessions);
    /// absent: keys of this process only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_keys: Option<PathBuf>,
    // ticket rotation (issue 3): src/tls/rotation.rs reads this.
    /// How often this node rotates the `ticket_keys` file (`"6h"`); absent: the node only
    /// re-reads the file that another node (or `gatehouse cert ticket-keys`) rotates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_key_rotation: Option<HumanDuration>,
    /// Passthrough routing by server name; `pool` takes the rest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sni_routes: Vec<SniRoute>,
}

/// How log lines look (`[node] log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `TIME LEVEL message key=value ...`, coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message` and the event's fields at
    /// the top level), for log shippers.
    Json,
}

/// Who chooses the source port of a backend connect (`[node] source_ports`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourcePortChoice {
    /// Each worker walks its share of the ephemeral range per backend, so connect(2) does
    /// not search among TIME_WAIT sockets (`engine::source_ports`).
    #[default]
    Engine,
    /// connect(2) picks, as for any client socket.
    Kernel,
}

/// What a listener does with TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Bytes are carried as they come.
    #[default]
    Off,
    /// TLS is terminated here; the backend gets plain bytes.
    Offload,
    /// The ClientHello is read (for `sni_routes`), the bytes go to the backend unchanged.
    Passthrough,
    /// A TLS record as first byte is offloaded, anything else is carried plain.
    Auto,
}

impl TlsMode {
    /// Whether the listener terminates TLS (needs certificates).
    pub fn terminates(self) -> bool {
        matches!(self, TlsMode::Offload | TlsMode::Auto)
    }
}

/// One certificate of an offloading listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate chain; with no `key`, an all-in-one PEM holding the key too.
    pub cert: PathBuf,
    /// PEM private key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Server names it answers (empty: the DNS names of its subjectAltName).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Served to clients whose server name no certificate has (or who send none); without
    /// one, the first certificate is.
    #[serde(default)]
    pub default: bool,
}

/// A passthrough route: ClientHellos for these names go to this pool.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// Server names; `*.example.com` matches one label under example.com.
    pub names: Vec<String>,
    /// The pool.
    pub pool: String,
}

/// How a pool picks a backend.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Name in logs, metrics and the admin API; unique.
    pub name: String,
    /// `round-robin` (weighted), `least-connections`, `source-hash`, `first`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Send a PROXY v2 header with the client's address to the backends.
    #[serde(default)]
    pub send_proxy: bool,
    /// Other backends tried after a refused or timed-out connect.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Consecutive failed connects from real traffic that mark a backend down; 0: off.
    #[serde(default = "default_passive_fall")]
    pub passive_fall: u32,
    /// Active health checks; absent: backends are trusted to be up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthConfig>,
    /// Re-encryption: TLS towards the backends (absent: plain bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTlsConfig>,
    /// The backends (`backends = [...]` or `[[halb.pool.backend]]`).
    #[serde(default, alias = "backend")]
    pub backends: Vec<BackendConfig>,
}

/// TLS towards a pool's backends (re-encryption), verified against a CA bundle or a
/// pinned certificate.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsConfig {
    /// CA bundle (PEM) that verifies the backends' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name sent (SNI) and verified (default: the backend's IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// SHA-256 of the backend's certificate (DER), hex with or without colons, as
    /// `openssl x509 -noout -fingerprint -sha256` prints it; replaces CA verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_sha256: Option<String>,
    /// Accept any backend certificate. Only for labs: anyone in the path can impersonate.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One backend server of a pool.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Name in logs and the admin API (default: the address); unique within the pool.
    #[serde(default)]
    pub name: String,
    /// Address and port.
    pub address: SocketAddr,
    /// Relative share of new connections (1..=1000).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Connections held at once to this backend; 0: no limit.
    #[serde(default)]
    pub max_connections: u32,
    /// Administrative state at start: `up`, `drain` or `maintenance`.
    #[serde(default)]
    pub state: AdminState,
}

/// A backend's administrative state, set in the config or through the admin API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new connections when healthy.
    #[default]
    Up,
    /// Takes no new connections; established ones continue.
    Drain,
    /// Takes no new connections and is not health-checked into service.
    Maintenance,
}

impl AdminState {
    /// The lowercase name used in config, API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Up => "up",
            AdminState::Drain => "drain",
            AdminState::Maintenance => "maintenance",
        }
    }
}

impl std::str::FromStr for AdminState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(AdminState::Up),
            "drain" => Ok(AdminState::Drain),
            "maintenance" | "maint" => Ok(AdminState::Maintenance),
            other => Err(format!(
                "unknown state {other:?} (expected up, drain or maintenance)"
            )),
        }
    }
}

/// Active health checks of a pool's backends.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `tcp` (connect), `tls` (handshake), `http` or `https` (GET, expects a status).
    pub check: String,
    /// Time between the starts of two checks.
    #[serde(default = "default_check_interval")]
    pub interval: HumanDuration,
    /// Time one check may take in all (connect, handshake, answer).
    #[serde(default = "default_check_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successes that bring a down backend up.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// HTTP path of the GET.
    #[serde(default = "default_path")]
    pub path: String,
    /// HTTP Host header (default: the backend's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Statuses that count as healthy: `"200-399"`, `"200"`, `"200,204"`.
    #[serde(default = "default_expect")]
    pub expect: String,
    /// TLS server name sent and verified (default: none, the IP is verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// CA bundle (PEM) that verifies the backends' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Accept any backend certificate. Only for labs: anyone in the path can impersonate.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_true() -> bool {
    true
}
fn default_backlog() -> u32 {
    1024
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_min_tls() -> String {
    "1.2".to_string()
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration::secs(3)
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration::secs(8 * 3600)
}
fn default_keepalive() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_keepalive_interval() -> HumanDuration {
    HumanDuration::secs(10)
}
fn default_keepalive_probes() -> u32 {
    6
}
fn default_user_timeout() -> HumanDuration {
    HumanDuration::secs(60)
}
fn default_algorithm() -> String {
    "round-robin".to_string()
}
fn default_retries() -> u32 {
    2
}
fn default_passive_fall() -> u32 {
    3
}
fn default_weight() -> u32 {
    1
}
fn default_check_interval() -> HumanDuration {
    HumanDuration::secs(2)
}
fn default_check_timeout() -> HumanDuration {
    HumanDuration::secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_path() -> String {
    "/".to_string()
}
fn default_expect() -> String {
    "200-399".to_string()
}

/// One problem found in a configuration file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded>` for the demo's built-in config).
    pub file: String,
    /// 1-based line, 0 when unknown.
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The key the problem is about (`halb.listener[0].bind`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one file (validation does not stop at the first).
#[derive(Clone, Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates a configuration file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: name.clone(),
            line: 0,
            column: 0,
            key: "(file)".to_string(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    load_str(&text, &name, ValidateOptions::default())
}

/// Parses and validates configuration text; `file` names it in errors.
pub fn load_str(text: &str, file: &str, options: ValidateOptions) -> Result<Config, ConfigErrors> {
    let map = SourceMap::new(text);
    let config: Config = toml::from_str(text).map_err(|e| {
        let (line, column, key) = match e.span() {
            Some(span) => {
                let (line, column) = map.line_col(span.start);
                let key = map
                    .path_at(span.start)
                    .map_or_else(|| "(syntax)".to_string(), |p| p.to_string());
                (line, column, key)
            }
            None => (0, 0, "(syntax)".to_string()),
        };
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line,
            column,
            key,
            message: e.message().trim().to_string(),
        }])
    })?;
    let mut config = config;
    let problems = validate::validate(&mut config, options);
    if problems.is_empty() {
        return Ok(config);
    }
    Err(ConfigErrors(
        problems
            .into_iter()
            .map(|(path, message)| {
                let (line, column) = map.span_of(&path).map_or((0, 0), |span| map.line_col(span.start));
                ConfigError {
                    file: file.to_string(),
                    line,
                    column,
                    key: path.to_string(),
                    message,
                }
            })
            .collect(),
    ))
}

impl Config {
    /// The effective configuration (defaults filled in) as TOML, for `gatehouse check`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// The node's name: configured, else the host name.
    pub fn node_name(&self) -> String {
        self.node.name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "gatehouse".to_string())
        })
    }

    /// Worker threads to start: configured, else one per core.
    pub fn worker_count(&self) -> usize {
        if self.node.workers > 0 {
            self.node.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
