//! The rules that make a parsed configuration valid.
//!
//! Owns semantic checks (ranges, references between sections, duplicates) and fills in
//! defaults that depend on other keys. Reports every problem with the key path it is about;
//! `locate.rs` turns paths into lines.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use super::locate::KeyPath;
use super::{Config, HealthConfig, ListenerConfig, PoolConfig, TlsMode};
use crate::balance::Algorithm;
use crate::cidr::Cidr;
use crate::engine::tls_setup::{self, CertOrigin};
use crate::health::StatusMatch;
use crate::tls::certs::CertError;

/// Relaxations used by callers that build configs themselves.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateOptions {
    /// Allow port 0 in `bind` (the kernel picks a port; the demo and tests use it).
    pub allow_ephemeral_ports: bool,
}

type Problems = Vec<(KeyPath, String)>;

/// Checks `config`, filling in derived defaults; returns every problem found.
pub(super) fn validate(config: &mut Config, options: ValidateOptions) -> Problems {
    let mut problems = Problems::new();
    let root = KeyPath::root();
    let node = root.key("node");
    if config.node.workers > 256 {
        problems.push((node.key("workers"), "at most 256 workers".into()));
    }
    if config.node.max_connections == 0 {
        problems.push((node.key("max_connections"), "must be at least 1".into()));
    }
    if let Err(e) = check_log_level(&config.node.log_level) {
        problems.push((node.key("log_level"), e));
    }
    if let Some(admin) = &config.admin {
        if admin.listen.port() == 0 && !options.allow_ephemeral_ports {
            problems.push((root.key("admin").key("listen"), "port 0 is not allowed".into()));
        }
    }
    // Listener and pool names, binds and pool references are checked across the HALB's and
    // the gateway's sections together: one node runs both on one set of workers.
    let pools: HashSet<String> = config.pools().map(|p| p.name.clone()).collect();
    let tls_pools: HashSet<String> = config
        .pools()
        .filter(|p| p.tls.is_some())
        .map(|p| p.name.clone())
        .collect();
    let mut seen = Seen::default();
    if let Some(halb) = &mut config.halb {
        let halb_path = root.key("halb");
        if halb.listener.is_empty() {
            problems.push((
                halb_path.clone(),
                "the halb role needs at least one [[halb.listener]]".into(),
            ));
        }
        for (i, l) in halb.listener.iter().enumerate() {
            let at = halb_path.key("listener").index(i);
            if !pools.contains(&l.pool) {
                problems.push((at.key("pool"), format!("no pool named {:?}", l.pool)));
            }
            for (key, set) in [
                ("rdp_resource", l.rdp_resource.is_some()),
                ("forward_http", l.forward_http.is_some()),
            ] {
                if set {
                    problems.push((at.key(key), "only a [[gateway.listener]] takes this key".into()));
                }
            }
            validate_listener(l, &at, &pools, &tls_pools, &mut seen, options, &mut problems);
        }
        for (i, p) in halb.pool.iter_mut().enumerate() {
            let at = halb_path.key("pool").index(i);
            seen.pool(&p.name, &at, &mut problems);
            validate_pool(p, &at, &mut problems);
        }
        // [[halb.vrrp]] (issue 6): ranges, pools, interfaces of this host, VIP listeners.
        crate::halb_vrrp::validate(halb, &halb_path, &mut problems);
    }
    // gateway (issue 5): [gateway], its listeners (front or forwarding) and next-hop pools.
    if let Some(gateway) = &mut config.gateway {
        let gw_path = root.key("gateway");
        for (i, l) in gateway.listener.iter().enumerate() {
            let at = gw_path.key("listener").index(i);
            if !l.pool.is_empty() && !pools.contains(&l.pool) {
                problems.push((at.key("pool"), format!("no pool named {:?}", l.pool)));
            }
            validate_listener(l, &at, &pools, &tls_pools, &mut seen, options, &mut problems);
        }
        for (i, p) in gateway.pool.iter_mut().enumerate() {
            let at = gw_path.key("pool").index(i);
            seen.pool(&p.name, &at, &mut problems);
            validate_pool(p, &at, &mut problems);
        }
        crate::gateway_role::validate(gateway, &gw_path, &mut problems);
    }
    // broker (issue 4): [broker] and [host_agent].
    crate::broker_role::validate(config, &mut problems);
    validate_binds(config, &mut problems);
    let roles = [
        config.halb.is_some(),
        config.gateway.is_some(),
        config.broker.is_some(),
        config.host_agent.is_some(),
    ];
    if !roles.contains(&true) {
        problems.push((
            root,
            "no role to run: add a [halb], [gateway], [broker] or [host_agent] section (see `gatehouse demo --print-config`)"
                .into(),
        ));
    }
    problems
}

/// A log filter: a level, or tracing directives (`info,gatehouse::engine=debug`). A bare word
/// that is not a level is a directive for a target of that name, which would silence every
/// other line; it is refused as the typo it almost always is.
fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let hint = "use off, error, warn, info, debug, trace, or directives like info,gatehouse::engine=debug";
    if filter.trim().is_empty() {
        return Err(format!("must not be empty ({hint})"));
    }
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', '{']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return Err(format!("unknown log level {directive:?} ({hint})"));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| format!("invalid log filter {filter:?}: {e} ({hint})"))
}

/// One address the node listens on, with the key that asks for it.
struct Bind {
    address: SocketAddr,
    at: KeyPath,
    what: String,
    /// An IPv6 wildcard that also takes IPv4 (std's sockets: the admin and broker
    /// listeners); data-plane listeners set IPV6_V6ONLY.
    dual_stack: bool,
}

impl Bind {
    /// Whether the kernel would refuse one of the two binds (or, with SO_REUSEPORT between
    /// two listeners, silently give connections to the more specific one).
    fn overlaps(&self, other: &Bind) -> bool {
        let (a, b) = (self.address, other.address);
        if a.port() != b.port() || a.port() == 0 {
            return false;
        }
        if a.is_ipv4() == b.is_ipv4() {
            return a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified();
        }
        let v6 = if a.is_ipv6() { self } else { other };
        v6.dual_stack && v6.address.ip().is_unspecified()
    }
}

/// Every address bound by the data-plane listeners, the admin listener and the broker: one
/// port can be taken once per address, and a wildcard address (`0.0.0.0`, `[::]`) takes it on
/// every address of its family. `run` would refuse these; `check` says which keys clash.
fn validate_binds(config: &Config, problems: &mut Problems) {
    let root = KeyPath::root();
    let mut binds = Vec::new();
    for (section, listeners) in [
        ("halb", config.halb.as_ref().map(|h| &h.listener)),
        ("gateway", config.gateway.as_ref().map(|g| &g.listener)),
    ] {
        for (i, l) in listeners.into_iter().flatten().enumerate() {
            binds.push(Bind {
                address: l.bind,
                at: root.key(section).key("listener").index(i).key("bind"),
                what: format!("listener {:?}", l.name),
                dual_stack: false,
            });
        }
    }
    if let Some(admin) = &config.admin {
        binds.push(Bind {
            address: admin.listen,
            at: root.key("admin").key("listen"),
            what: "the admin listener".into(),
            dual_stack: true,
        });
    }
    if let Some(b) = &config.broker {
        for (key, address) in [
            ("gateway_listen", b.gateway_listen),
            ("agent_listen", b.agent_listen),
        ] {
            binds.push(Bind {
                address,
                at: root.key("broker").key(key),
                what: format!("broker.{key}"),
                dual_stack: true,
            });
        }
    }
    for (j, later) in binds.iter().enumerate() {
        if let Some(earlier) = binds[..j].iter().find(|e| e.overlaps(later)) {
            let how = if earlier.address == later.address {
                String::new()
            } else {
                " (a wildcard address takes the port on every address of its family)".into()
            };
            problems.push((
                later.at.clone(),
                format!(
                    "port {} is already taken: {} binds {}{how}",
                    later.address.port(),
                    earlier.what,
                    earlier.address
                ),
            ));
        }
    }
}

/// Listener and pool names already taken, across every section.
#[derive(Default)]
struct Seen {
    listeners: HashSet<String>,
    pools: HashSet<String>,
}

impl Seen {
    fn pool(&mut self, name: &str, at: &KeyPath, problems: &mut Problems) {
        if name.trim().is_empty() {
            problems.push((at.key("name"), "must not be empty".into()));
        } else if !self.pools.insert(name.to_string()) {
            problems.push((at.key("name"), format!("duplicate pool name {name:?}")));
        }
    }
}

/// The keys every listener has (HALB or gateway): name, bind, backlog, address lists, TLS
/// and timeouts.
fn validate_listener(
    l: &ListenerConfig,
    at: &KeyPath,
    pools: &HashSet<String>,
    tls_pools: &HashSet<String>,
    seen: &mut Seen,
    options: ValidateOptions,
    problems: &mut Problems,
) {
    if l.name.trim().is_empty() {
        problems.push((at.key("name"), "must not be empty".into()));
    } else if !seen.listeners.insert(l.name.clone()) {
        problems.push((at.key("name"), format!("duplicate listener name {:?}", l.name)));
    }
    if l.bind.port() == 0 && !options.allow_ephemeral_ports {
        problems.push((at.key("bind"), "port 0 is not allowed".into()));
    }
    if l.backlog == 0 || l.backlog > 65_535 {
        problems.push((at.key("backlog"), "must be between 1 and 65535".into()));
    }
    for (key, list) in [
        ("accept_proxy_from", &l.accept_proxy_from),
        ("allow", &l.allow),
        ("deny", &l.deny),
    ] {
        for (j, c) in list.iter().enumerate() {
            if let Err(e) = Cidr::from_str(c) {
                problems.push((at.key(key).index(j), e.to_string()));
            }
        }
    }
    let tls_pools: HashSet<&str> = tls_pools.iter().map(String::as_str).collect();
    validate_listener_tls(l, at, pools, &tls_pools, problems);
    for (key, d) in [
        ("handshake_timeout", l.handshake_timeout),
        ("connect_timeout", l.connect_timeout),
        ("idle_timeout", l.idle_timeout),
        ("tcp_keepalive", l.tcp_keepalive),
        ("tcp_keepalive_interval", l.tcp_keepalive_interval),
    ] {
        if d.get() < Duration::from_millis(1) {
            problems.push((at.key(key), "must be at least 1ms".into()));
        }
    }
    // The kernel counts keepalive times in whole seconds up to 32767 (TCP_KEEPIDLE,
    // TCP_KEEPINTVL), probes up to 127 (TCP_KEEPCNT), the user timeout in milliseconds.
    for (key, d) in [
        ("tcp_keepalive", l.tcp_keepalive),
        ("tcp_keepalive_interval", l.tcp_keepalive_interval),
    ] {
        if d.get() > Duration::from_secs(32_767) {
            problems.push((at.key(key), "must be at most 32767s (a kernel limit)".into()));
        }
    }
    if !(1..=127).contains(&l.tcp_keepalive_probes) {
        problems.push((at.key("tcp_keepalive_probes"), "must be 1 to 127".into()));
    }
    if l.tcp_user_timeout.get() > Duration::from_millis(u64::from(u32::MAX)) {
        problems.push((at.key("tcp_user_timeout"), "must be at most 49 days".into()));
    }
}

/// TLS keys of a listener: modes, routes, versions, and the certificates themselves (loaded
/// here, so `gatehouse check` reports an expired or mismatched one at its key).
fn validate_listener_tls(
    l: &ListenerConfig,
    at: &KeyPath,
    pools: &HashSet<String>,
    tls_pools: &HashSet<&str>,
    problems: &mut Problems,
) {
    if let Err(e) = l.min_tls.parse::<crate::tls::server::MinVersion>() {
        problems.push((at.key("min_tls"), e));
    }
    if !l.sni_routes.is_empty() && l.tls != TlsMode::Passthrough {
        problems.push((
            at.key("sni_routes"),
            "sni_routes need tls = \"passthrough\" (an offloading listener picks certificates, not pools)"
                .into(),
        ));
    }
    for (i, r) in l.sni_routes.iter().enumerate() {
        let rat = at.key("sni_routes").index(i);
        if !pools.contains(&r.pool) {
            problems.push((rat.key("pool"), format!("no pool named {:?}", r.pool)));
        }
        if r.names.is_empty() {
            problems.push((rat.key("names"), "a route needs at least one server name".into()));
        }
    }
    if l.tls == TlsMode::Passthrough {
        let reencrypting: Vec<&str> = std::iter::once(&l.pool)
            .chain(l.sni_routes.iter().map(|r| &r.pool))
            .filter(|p| tls_pools.contains(p.as_str()))
            .map(String::as_str)
            .collect();
        if let Some(p) = reencrypting.first() {
            problems.push((
                at.key("tls"),
                format!("pool {p:?} re-encrypts, but a passthrough listener forwards TLS unchanged"),
            ));
        }
    }
    let has_certs = !l.certificates.is_empty() || l.pem.is_some() || l.pfx.is_some();
    if !l.tls.terminates() {
        if has_certs || l.strict_sni {
            problems.push((
                at.key("tls"),
                format!(
                    "certificates or strict_sni are set but tls = {:?} does not terminate TLS (use \"offload\" or \"auto\")",
                    l.tls
                ),
            ));
        }
        return;
    }
    let defaults = l.certificates.iter().filter(|c| c.default).count();
    if defaults > 1 {
        problems.push((
            at.key("certificates"),
            "more than one certificate has default = true".into(),
        ));
    }
    if l.strict_sni && defaults > 0 {
        problems.push((
            at.key("strict_sni"),
            "strict_sni means no default certificate, but one has default = true".into(),
        ));
    }
    if l.strict_sni && !has_certs {
        problems.push((
            at.key("strict_sni"),
            "strict_sni needs certificates with server names (the generated self-signed one is the default)"
                .into(),
        ));
    }
    if !l.ciphers.is_empty() || !l.kx_groups.is_empty() || !l.alpn.is_empty() {
        // Names are checked by building a configuration with a throwaway certificate, so
        // `check` and `run` agree on what rustls accepts.
        if let Err((key, e)) = tls_setup::check_tls_parameters(l) {
            problems.push((at.key(key), e));
        }
    }
    let now = std::time::SystemTime::now();
    let before = problems.len();
    let mut entries = Vec::new();
    for (origin, entry) in tls_setup::configured_certificates(l) {
        let key = match origin {
            CertOrigin::Listed(i) => {
                let c = at.key("certificates").index(i);
                // A key file that cannot be read is reported at `key`, the rest at `cert`.
                let key_file = l.certificates[i].key.as_deref();
                match &entry {
                    Err(CertError::Io { path, .. }) if Some(path.as_path()) == key_file => c.key("key"),
                    _ => c.key("cert"),
                }
            }
            CertOrigin::Pem => at.key("pem"),
            CertOrigin::Pfx => at.key("pfx"),
        };
        match entry {
            Err(e) => problems.push((key, e.to_string())),
            Ok(entry) => {
                for p in tls_setup::certificate_problems(&entry, now) {
                    problems.push((key.clone(), p));
                }
                entries.push(entry);
            }
        }
    }
    // The certificates together, as `run` indexes them by server name.
    if problems.len() == before && !entries.is_empty() {
        if let Err(e) = crate::tls::server::SniResolver::new(&entries) {
            problems.push((at.key("certificates"), e.to_string()));
        }
    }
    validate_ticket_keys(l, at, problems);
}

/// The shared ticket-key file, as `run` would open it (without writing it).
fn validate_ticket_keys(l: &ListenerConfig, at: &KeyPath, problems: &mut Problems) {
    use crate::tls::rotation::{self, MIN_ROTATION};
    use crate::tls::ticket_keys::{KeyFileRole, TicketKeySet};
    if let Some(r) = l.ticket_key_rotation {
        if l.ticket_keys.is_none() {
            problems.push((
                at.key("ticket_key_rotation"),
                "needs ticket_keys (the file to rotate)".into(),
            ));
        } else if r.get() < MIN_ROTATION {
            problems.push((
                at.key("ticket_key_rotation"),
                format!("must be at least {MIN_ROTATION:?}"),
            ));
        }
    }
    let Some(file) = rotation::key_file(l) else {
        return;
    };
    let at = at.key("ticket_keys");
    match (file.role, file.path.exists()) {
        (_, true) => {
            if let Err(e) = TicketKeySet::load(&file.path) {
                problems.push((at, e.to_string()));
            }
        }
        (KeyFileRole::Follow, false) => problems.push((
            at,
            format!(
                "{} does not exist (this node only reads it: set ticket_key_rotation on the node that writes it, or run `gatehouse cert ticket-keys`)",
                file.path.display()
            ),
        )),
        (KeyFileRole::Rotate, false) => {
            let dir = file.path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| !d.is_dir()) {
                problems.push((
                    at,
                    format!(
                        "cannot create {}: {} is not a directory",
                        file.path.display(),
                        dir.display()
                    ),
                ));
            }
        }
    }
}

fn validate_pool(p: &mut PoolConfig, at: &KeyPath, problems: &mut Problems) {
    if let Err(e) = Algorithm::from_str(&p.algorithm) {
        problems.push((at.key("algorithm"), e.to_string()));
    }
    if p.retries > 16 {
        problems.push((at.key("retries"), "at most 16".into()));
    }
    if p.backends.is_empty() {
        problems.push((
            at.key("backends"),
            format!("empty pool {:?}: add at least one backend", p.name),
        ));
    }
    let mut names = HashSet::new();
    for (j, b) in p.backends.iter_mut().enumerate() {
        let bat = at.key("backends").index(j);
        if b.name.is_empty() {
            b.name = b.address.to_string();
        }
        if !names.insert(b.name.clone()) {
            problems.push((
                bat.key("name"),
                format!("duplicate backend {:?} in pool {:?}", b.name, p.name),
            ));
        }
        if b.address.port() == 0 {
            problems.push((bat.key("address"), "port 0 is not allowed".into()));
        }
        if b.weight == 0 || b.weight > 1000 {
            problems.push((
                bat.key("weight"),
                "must be between 1 and 1000 (use state = \"maintenance\" to take a backend out)".into(),
            ));
        }
    }
    if let Some(h) = &p.health {
        validate_health(h, &at.key("health"), problems);
    }
    if let Some(t) = &p.tls {
        let tat = at.key("tls");
        let ways = [
            t.ca_file.is_some(),
            t.pin_sha256.is_some(),
            t.insecure_skip_verify,
        ];
        match ways.iter().filter(|w| **w).count() {
            0 => problems.push((
                tat.clone(),
                "re-encryption needs ca_file or pin_sha256 to verify backends (or insecure_skip_verify = true)"
                    .into(),
            )),
            1 => {}
            _ => problems.push((
                tat.clone(),
                "choose one of ca_file, pin_sha256 and insecure_skip_verify".into(),
            )),
        }
        if let Err(e) = tls_setup::build_backend(t) {
            problems.push((tat, e));
        }
    }
}

fn validate_health(h: &HealthConfig, at: &KeyPath, problems: &mut Problems) {
    match h.check.as_str() {
        "tcp" | "tls" | "http" | "https" => {}
        other => problems.push((
            at.key("check"),
            format!("unknown check {other:?} (expected tcp, tls, http or https)"),
        )),
    }
    if h.interval.get() < Duration::from_millis(10) {
        problems.push((at.key("interval"), "must be at least 10ms".into()));
    }
    if h.timeout.get() < Duration::from_millis(1) {
        problems.push((at.key("timeout"), "must be at least 1ms".into()));
    }
    if h.rise == 0 {
        problems.push((at.key("rise"), "must be at least 1".into()));
    }
    if h.fall == 0 {
        problems.push((at.key("fall"), "must be at least 1".into()));
    }
    if let Err(e) = StatusMatch::from_str(&h.expect) {
        problems.push((at.key("expect"), e.to_string()));
    }
    if !h.path.starts_with('/') {
        problems.push((at.key("path"), "must start with /".into()));
    }
    let tls = matches!(h.check.as_str(), "tls" | "https");
    if tls && h.ca_file.is_none() && !h.insecure_skip_verify {
        problems.push((
            at.key("ca_file"),
            "a TLS check needs ca_file to verify backends (or insecure_skip_verify = true)".into(),
        ));
    }
    if let Some(ca) = &h.ca_file {
        if !ca.exists() {
            problems.push((at.key("ca_file"), format!("{} does not exist", ca.display())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::load_str;
    use super::*;

    fn problems(text: &str) -> String {
        match load_str(text, "b.toml", ValidateOptions::default()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    /// Two HALB listeners on `a` and `b`, and an admin listener on `admin`.
    fn two_listeners(a: &str, b: &str, admin: &str) -> String {
        format!(
            "[admin]\nlisten = \"{admin}\"\n\n[halb]\n\
             [[halb.listener]]\nname = \"one\"\nbind = \"{a}\"\npool = \"p\"\n\
             [[halb.listener]]\nname = \"two\"\nbind = \"{b}\"\npool = \"p\"\n\
             [[halb.pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9000\" }}]\n"
        )
    }

    /// An offloading listener with `keys` (TOML lines) in a directory of its own.
    fn offload(dir: &std::path::Path, keys: &str) -> String {
        format!(
            "[node]\nstate_dir = \"{}\"\n[halb]\n[[halb.listener]]\nname = \"tls\"\nbind = \"127.0.0.1:443\"\n\
             pool = \"p\"\ntls = \"offload\"\n{keys}\n\
             [[halb.pool]]\nname = \"p\"\nbackends = [{{ address = \"127.0.0.1:9000\" }}]\n",
            dir.display()
        )
    }

    #[test]
    fn certificates_are_checked_together_as_run_indexes_them() {
        let pki = crate::tls::test_pki::Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, names: &[&str]| {
            let bundle = pki.bundle(&pki.leaf(names));
            let path = dir.path().join(name);
            std::fs::write(&path, bundle.chain_pem() + &bundle.key_pem()).unwrap();
            path.display().to_string()
        };
        let (a, b, also_a) = (
            write("a.pem", &["a.test"]),
            write("b.pem", &["b.test"]),
            write("a2.pem", &["a.test", "c.test"]),
        );
        let listed = |files: &[&str]| {
            let list: Vec<String> = files.iter().map(|f| format!("{{ cert = \"{f}\" }}")).collect();
            format!("certificates = [{}]", list.join(", "))
        };
        let load = |keys: &str| load_str(&offload(dir.path(), keys), "t.toml", ValidateOptions::default());

        // Without default = true the first certificate is the default; strict_sni: none.
        let defaults = |keys: &str| -> Vec<bool> {
            let config = load(keys).unwrap();
            let l = config.listeners().next().unwrap();
            tls_setup::configured_certificates(l)
                .into_iter()
                .map(|(_, e)| e.unwrap().default)
                .collect()
        };
        assert_eq!(defaults(&listed(&[&a, &b])), [true, false]);
        assert_eq!(
            defaults(&format!("{}\nstrict_sni = true", listed(&[&a, &b]))),
            [false, false]
        );
        let marked = format!("certificates = [{{ cert = \"{a}\" }}, {{ cert = \"{b}\", default = true }}]");
        assert_eq!(defaults(&marked), [false, true]);
        let e = load(&format!("{marked}\nstrict_sni = true"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("strict_sni: strict_sni means no default certificate"),
            "{e}"
        );

        // Two certificates for one name: `run` refuses it, so `check` does.
        let e = load(&listed(&[&a, &b, &also_a])).unwrap_err().to_string();
        assert!(
            e.contains("halb.listener[0].certificates: two certificates answer the server name a.test"),
            "{e}"
        );
        // A key file that is not there is reported at `key`.
        let e = load(&format!(
            "certificates = [{{ cert = \"{a}\", key = \"/nonexistent/k.pem\" }}]"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("halb.listener[0].certificates[0].key: /nonexistent/k.pem"),
            "{e}"
        );
        // A PFX password variable that is not set is said so, not tried as an empty password.
        let e = load("pfx = \"/nonexistent/gw.pfx\"\npfx_password_env = \"GATEHOUSE_TEST_UNSET_VAR\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pfx: /nonexistent/gw.pfx: its password variable GATEHOUSE_TEST_UNSET_VAR is not set"),
            "{e}"
        );
    }

    #[test]
    fn ticket_key_files_are_checked_as_run_opens_them() {
        let dir = tempfile::tempdir().unwrap();
        let load =
            |keys: &str| match load_str(&offload(dir.path(), keys), "t.toml", ValidateOptions::default()) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            };
        let e = load("ticket_keys = \"/nonexistent/dir/tk\"\nticket_key_rotation = \"6h\"");
        assert!(
            e.contains("ticket_keys: cannot create /nonexistent/dir/tk: /nonexistent/dir is not a directory"),
            "{e}"
        );
        let missing = dir.path().join("tk");
        let e = load(&format!("ticket_keys = \"{}\"", missing.display()));
        assert!(e.contains("does not exist (this node only reads it"), "{e}");
        assert_eq!(
            load(&format!(
                "ticket_keys = \"{}\"\nticket_key_rotation = \"6h\"",
                missing.display()
            )),
            ""
        );
        std::fs::write(&missing, "not a key file\n").unwrap();
        assert!(load(&format!("ticket_keys = \"{}\"", missing.display())).contains("ticket_keys:"));
        let e = load("ticket_key_rotation = \"6h\"");
        assert!(e.contains("ticket_key_rotation: needs ticket_keys"), "{e}");
        let e = load(&format!(
            "ticket_keys = \"{}\"\nticket_key_rotation = \"1s\"",
            missing.display()
        ));
        assert!(e.contains("ticket_key_rotation: must be at least 2s"), "{e}");
    }

    #[test]
    fn log_levels_are_levels_or_directives() {
        for good in [
            "info",
            "WARN",
            "off",
            "info,gatehouse::engine=debug",
            "gatehouse=trace",
            "debug, warn",
        ] {
            assert_eq!(check_log_level(good), Ok(()), "{good}");
        }
        for bad in ["verbose", "", " ", "info,chatty", "info=loud"] {
            let e = check_log_level(bad).expect_err(bad);
            assert!(e.contains("use off, error, warn"), "{bad}: {e}");
        }
        assert!(check_log_level("verbose")
            .unwrap_err()
            .starts_with("unknown log level \"verbose\""));
    }

    #[test]
    fn a_port_is_taken_once_per_address_and_a_wildcard_takes_its_whole_family() {
        let clash = [
            ("127.0.0.1:443", "127.0.0.1:443", "127.0.0.1:9900"),
            ("0.0.0.0:443", "127.0.0.1:443", "127.0.0.1:9900"),
            ("127.0.0.2:443", "0.0.0.0:443", "127.0.0.1:9900"),
            ("[::]:443", "[::1]:443", "127.0.0.1:9900"),
        ];
        for (a, b, admin) in clash {
            let e = problems(&two_listeners(a, b, admin));
            assert!(
                e.contains(&format!(
                    "b.toml:11:1: halb.listener[1].bind: port 443 is already taken: listener \"one\" binds {a}"
                )),
                "{a} {b}: {e}"
            );
        }
        // Data-plane listeners are IPv6-only, so [::] and 0.0.0.0 share a port; other
        // addresses and ports do not clash.
        let apart = [
            ("0.0.0.0:443", "[::]:443", "127.0.0.1:9900"),
            ("127.0.0.1:443", "127.0.0.2:443", "127.0.0.1:9900"),
            ("0.0.0.0:443", "0.0.0.0:444", "[::1]:443"),
        ];
        for (a, b, admin) in apart {
            assert_eq!(problems(&two_listeners(a, b, admin)), "", "{a} {b} {admin}");
        }
        // The admin listener is dual-stack on [::]: it takes IPv4's port too.
        let e = problems(&two_listeners("127.0.0.1:9900", "127.0.0.1:443", "[::]:9900"));
        assert!(
            e.contains(
                "b.toml:2:1: admin.listen: port 9900 is already taken: listener \"one\" binds 127.0.0.1:9900"
            ),
            "{e}"
        );
        let e = problems(&two_listeners("0.0.0.0:9900", "127.0.0.1:443", "127.0.0.1:9900"));
        assert!(e.contains("admin.listen: port 9900 is already taken"), "{e}");
        assert!(e.contains("(a wildcard address takes the port"), "{e}");
    }
}
