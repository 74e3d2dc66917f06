//! The rustls server configuration of an offloading listener: certificates chosen by SNI
//! with a default, the minimum version, cipher suites and key-exchange groups by name,
//! ALPN, and session resumption by ticket (local or shared key file) and by session id.
//!
//! Owns turning a listener's TLS settings into an immutable `Arc<ServerConfig>` that the
//! workers share (a reload builds a new one). It does not read config files or drive
//! connections: the engine makes one `rustls::ServerConnection` per session from
//! [`ServerTls::config`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache,
    StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SupportedProtocolVersion};

use super::certs::{CertBundle, CertError};
use super::ticket_keys::SharedTicketer;

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3 (the default, as the guide's clients include older Windows).
    #[default]
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl std::str::FromStr for MinVersion {
    type Err = String;

    /// Parses `"1.2"` or `"1.3"` (as in the config's `min_version`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1.2" => Ok(MinVersion::Tls12),
            "1.3" => Ok(MinVersion::Tls13),
            other => Err(format!(
                "unknown TLS version {other:?} (expected \"1.2\" or \"1.3\")"
            )),
        }
    }
}

/// One certificate of a listener.
#[derive(Debug, Clone)]
pub struct CertEntry {
    /// The chain and key.
    pub bundle: CertBundle,
    /// Server names it answers; empty means the DNS names of its subjectAltName
    /// (`*.example.com` wildcards included).
    pub names: Vec<String>,
    /// Served when the client sends no SNI or a name no certificate has.
    pub default: bool,
}

/// How sessions resume by ticket.
#[derive(Debug, Clone, Default)]
pub enum Tickets {
    /// No tickets (TLS 1.3 still resumes from the session cache when it is on).
    Off,
    /// Keys of this process only, rotated by rustls every 6 hours.
    #[default]
    Local,
    /// Keys from a shared key file (see `super::ticket_keys`).
    Shared(Arc<SharedTicketer>),
}

/// The TLS settings of one offloading listener.
#[derive(Debug, Clone, Default)]
pub struct ServerTlsSettings {
    /// Certificates; at most one is the default.
    pub certificates: Vec<CertEntry>,
    /// Lowest version accepted.
    pub min_version: MinVersion,
    /// Cipher suites by IANA name (`TLS_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`, ...), in order of preference; empty for
    /// the provider's defaults.
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups by name (`X25519`, `secp256r1` or `P-256`, `secp384r1` or
    /// `P-384`), in order of preference; empty for the provider's defaults.
    pub kx_groups: Vec<String>,
    /// ALPN protocols in order of preference (`h2`, `http/1.1`); empty: no ALPN.
    pub alpn: Vec<String>,
    /// Entries of the session-id cache (TLS 1.2 ids, TLS 1.3 stateful tickets); 0 turns it
    /// off.
    pub session_cache_size: usize,
    /// Ticket resumption.
    pub tickets: Tickets,
}

/// A built server configuration and its certificate chooser.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// What each session's `ServerConnection` is made from (see [`ServerTls::for_hello`]).
    pub config: Arc<ServerConfig>,
    /// The same with ChaCha20-Poly1305 suites first, for clients that lead with them.
    chacha_first: Option<Arc<ServerConfig>>,
    /// The chooser inside `config`, for the engine to ask before handshaking (reasons).
    pub resolver: Arc<SniResolver>,
    // ticket rotation (issue 3): the timer in `super::rotation` refreshes these keys.
    /// The shared ticket keys inside `config` (a `ticket_keys` file), for the key timer.
    pub shared_tickets: Option<Arc<SharedTicketer>>,
}

/// Why a listener's TLS settings cannot be used.
#[derive(Debug)]
pub enum TlsSetupError {
    /// No certificate at all.
    NoCertificate,
    /// More than one certificate marked default.
    SeveralDefaults,
    /// Two certificates claim the same server name.
    DuplicateName(String),
    /// A certificate could not be used.
    Cert(CertError),
    /// A cipher suite name the provider does not know.
    UnknownCipherSuite(String),
    /// A key-exchange group name the provider does not know.
    UnknownKxGroup(String),
    /// rustls refused the combination (for instance TLS 1.3 only with TLS 1.2 suites).
    Rustls(String),
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::NoCertificate => write!(f, "no certificate"),
            TlsSetupError::SeveralDefaults => write!(f, "more than one certificate has default = true"),
            TlsSetupError::DuplicateName(n) => write!(
                f,
                "two certificates answer the server name {n} (give one of them `names = [...]` without it)"
            ),
            TlsSetupError::Cert(e) => write!(f, "{e}"),
            TlsSetupError::UnknownCipherSuite(s) => {
                write!(
                    f,
                    "unknown cipher suite {s:?} (known: {})",
                    known_suites().join(", ")
                )
            }
            TlsSetupError::UnknownKxGroup(g) => {
                write!(
                    f,
                    "unknown key-exchange group {g:?} (known: {})",
                    known_groups().join(", ")
                )
            }
            TlsSetupError::Rustls(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for TlsSetupError {}

impl ServerTls {
    /// Builds the configuration. Called at start and at each reload; the result is shared
    /// read-only by every worker.
    pub fn build(settings: &ServerTlsSettings) -> Result<ServerTls, TlsSetupError> {
        let resolver = Arc::new(SniResolver::new(&settings.certificates)?);
        let mut provider = (*super::provider()).clone();
        if !settings.cipher_suites.is_empty() {
            provider.cipher_suites = settings
                .cipher_suites
                .iter()
                .map(|name| {
                    provider
                        .cipher_suites
                        .iter()
                        .find(|s| suite_name_matches(&format!("{:?}", s.suite()), name))
                        .copied()
                        .ok_or_else(|| TlsSetupError::UnknownCipherSuite(name.clone()))
                })
                .collect::<Result<_, _>>()?;
        }
        if !settings.kx_groups.is_empty() {
            provider.kx_groups = settings
                .kx_groups
                .iter()
                .map(|name| {
                    provider
                        .kx_groups
                        .iter()
                        .find(|g| group_name_matches(&format!("{:?}", g.name()), name))
                        .copied()
                        .ok_or_else(|| TlsSetupError::UnknownKxGroup(name.clone()))
                })
                .collect::<Result<_, _>>()?;
        }
        let versions: &[&'static SupportedProtocolVersion] = match settings.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        // Both configurations below share the session cache and the ticket keys (a client
        // sends the same suites again, so its next hello picks the same configuration, and
        // rustls resumes a session only with the suite it was made with).
        let storage: Arc<dyn StoresServerSessions> = if settings.session_cache_size == 0 {
            Arc::new(NoServerSessionStorage {})
        } else {
            ServerSessionMemoryCache::new(settings.session_cache_size)
        };
        let ticketer: Arc<dyn ProducesTickets> = match &settings.tickets {
            Tickets::Off => Arc::new(NeverTickets),
            // aws-lc-rs's ticketer draws its nonces from aws-lc's user-space generator; ring's
            // made a getrandom(2) call per ticket (two per TLS 1.3 handshake).
            Tickets::Local => rustls::crypto::aws_lc_rs::Ticketer::new()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?,
            Tickets::Shared(t) => t.clone(),
        };
        let make = |provider: CryptoProvider| -> Result<Arc<ServerConfig>, TlsSetupError> {
            let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(versions)
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            // The server's order decides (as HAProxy's default), see `super::suite_rank`.
            config.ignore_client_order = true;
            config.alpn_protocols = settings.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            config.session_storage = storage.clone();
            config.ticketer = ticketer.clone();
            if matches!(settings.tickets, Tickets::Off) && settings.session_cache_size == 0 {
                config.send_tls13_tickets = 0;
            }
            Ok(Arc::new(config))
        };
        let chacha_first = chacha_first(&provider).map(&make).transpose()?;
        Ok(ServerTls {
            config: make(provider)?,
            chacha_first,
            resolver,
            shared_tickets: match &settings.tickets {
                Tickets::Shared(t) => Some(t.clone()),
                Tickets::Off | Tickets::Local => None,
            },
        })
    }

    /// The configuration for a client whose hello leads with a ChaCha20-Poly1305 suite
    /// (`prefers_chacha20`): the server's order with ChaCha20 moved first, as OpenSSL's
    /// PRIORITIZE_CHACHA does, because such a client has no AES instructions and AES-GCM
    /// would be slow for it; for everyone else, the server's order.
    pub fn for_hello(&self, prefers_chacha20: bool) -> &Arc<ServerConfig> {
        match (&self.chacha_first, prefers_chacha20) {
            (Some(config), true) => config,
            _ => &self.config,
        }
    }
}

/// `provider` with its ChaCha20-Poly1305 suites moved to the front of each version's
/// suites (TLS 1.3 still before 1.2); `None` when it has none or they lead already.
fn chacha_first(provider: &CryptoProvider) -> Option<CryptoProvider> {
    let is_chacha = |s: &rustls::SupportedCipherSuite| format!("{:?}", s.suite()).contains("CHACHA20");
    let first = provider.cipher_suites.first()?;
    if is_chacha(first) || !provider.cipher_suites.iter().any(is_chacha) {
        return None;
    }
    let mut reordered = provider.clone();
    reordered
        .cipher_suites
        .sort_by_key(|s| (s.version() != &rustls::version::TLS13, !is_chacha(s)));
    Some(reordered)
}

/// Why no certificate was chosen for a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoCertificate {
    /// The client asked for a name no certificate has, and there is no default.
    UnknownServerName(String),
    /// The client sent no SNI and there is no default.
    NoServerNameNoDefault,
}

impl NoCertificate {
    /// A stable identifier for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            NoCertificate::UnknownServerName(_) => "unknown_sni",
            NoCertificate::NoServerNameNoDefault => "no_sni_no_default",
        }
    }
}

/// Chooses a listener's certificate from the client's server name: an exact name first,
/// then a wildcard for the name's parent domain, then the default.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// Indexes the certificates by name; checks each key matches its certificate.
    pub fn new(entries: &[CertEntry]) -> Result<SniResolver, TlsSetupError> {
        if entries.is_empty() {
            return Err(TlsSetupError::NoCertificate);
        }
        let mut resolver = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        };
        for entry in entries {
            let key = entry.bundle.certified_key().map_err(TlsSetupError::Cert)?;
            if entry.default {
                if resolver.default.is_some() {
                    return Err(TlsSetupError::SeveralDefaults);
                }
                resolver.default = Some(key.clone());
            }
            let names = if entry.names.is_empty() {
                let leaf = entry.bundle.leaf().map_err(TlsSetupError::Cert)?;
                leaf.sans
                    .iter()
                    .filter_map(|s| s.strip_prefix("DNS:"))
                    .map(str::to_string)
                    .collect()
            } else {
                entry.names.clone()
            };
            for name in names {
                let name = name.to_ascii_lowercase();
                let (map, key_name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut resolver.wildcard, parent.to_string()),
                    None => (&mut resolver.exact, name.clone()),
                };
                if map.insert(key_name, key.clone()).is_some() {
                    return Err(TlsSetupError::DuplicateName(name));
                }
            }
        }
        Ok(resolver)
    }

    /// The certificate for `server_name` (already lower-case or not), or why there is none.
    /// rustls calls it through [`ResolvesServerCert`]; the engine may call it first with the
    /// name from `super::client_hello` to log and count a specific reason.
    pub fn choose(&self, server_name: Option<&str>) -> Result<Arc<CertifiedKey>, NoCertificate> {
        let Some(name) = server_name else {
            return self.default.clone().ok_or(NoCertificate::NoServerNameNoDefault);
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Ok(key.clone());
        }
        // RFC 6125 §6.4.3: a wildcard stands for exactly one left-most label.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Ok(key.clone());
            }
        }
        self.default.clone().ok_or(NoCertificate::UnknownServerName(name))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name()).ok()
    }
}

/// Tickets off: rustls then issues none (its own default type is not public).
#[derive(Debug)]
struct NeverTickets;

impl rustls::server::ProducesTickets for NeverTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Names of the provider's cipher suites, IANA style.
pub fn known_suites() -> Vec<String> {
    super::provider()
        .cipher_suites
        .iter()
        .map(|s| format!("{:?}", s.suite()).replacen("TLS13_", "TLS_", 1))
        .collect()
}

/// Names of the provider's key-exchange groups.
pub fn known_groups() -> Vec<String> {
    super::provider()
        .kx_groups
        .iter()
        .map(|g| format!("{:?}", g.name()))
        .collect()
}

/// rustls names TLS 1.3 suites `TLS13_*`; IANA and OpenSSL call them `TLS_*`.
fn suite_name_matches(rustls_name: &str, wanted: &str) -> bool {
    rustls_name.eq_ignore_ascii_case(wanted)
        || rustls_name
            .replacen("TLS13_", "TLS_", 1)
            .eq_ignore_ascii_case(wanted)
}

fn group_name_matches(rustls_name: &str, wanted: &str) -> bool {
    let wanted = match wanted.to_ascii_lowercase().as_str() {
        "p-256" | "prime256v1" => "secp256r1".to_string(),
        "p-384" => "secp384r1".to_string(),
        other => other.to_string(),
    };
    rustls_name.eq_ignore_ascii_case(&wanted)
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
