//! The rules that make a parsed configuration valid.
//!
//! Owns semantic checks (ranges, references between sections, duplicates) and fills in
//! defaults that depend on other keys. Reports every problem with the key path it is about;
//! `locate.rs` turns paths into lines.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use super::locate::KeyPath;
use super::{Config, HealthConfig, ListenerConfig, PoolConfig, TlsMode};
use crate::balance::Algorithm;
use crate::cidr::Cidr;
use crate::engine::tls_setup::{self, CertOrigin};
use crate::health::StatusMatch;

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
    if tracing_subscriber::EnvFilter::try_new(&config.node.log_level).is_err() {
        problems.push((
            node.key("log_level"),
            format!(
                "invalid log level {:?} (use error, warn, info, debug, trace)",
                config.node.log_level
            ),
        ));
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
    problems
}

/// Names and binds already taken, across every section.
#[derive(Default)]
struct Seen {
    listeners: HashSet<String>,
    binds: HashMap<std::net::SocketAddr, String>,
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
    } else if l.bind.port() != 0 {
        if let Some(other) = seen.binds.insert(l.bind, l.name.clone()) {
            problems.push((
                at.key("bind"),
                format!(
                    "duplicate listener: {} is already bound by listener {other:?}",
                    l.bind
                ),
            ));
        }
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
        if has_certs {
            problems.push((
                at.key("tls"),
                format!(
                    "certificates are set but tls = {:?} does not terminate TLS (use \"offload\" or \"auto\")",
                    l.tls
                ),
            ));
        }
        return;
    }
    if l.certificates.iter().filter(|c| c.default).count() > 1 {
        problems.push((
            at.key("certificates"),
            "more than one certificate has default = true".into(),
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
    for (origin, entry) in tls_setup::configured_certificates(l) {
        let key = match origin {
            CertOrigin::Listed(i) => at.key("certificates").index(i).key("cert"),
            CertOrigin::Pem => at.key("pem"),
            CertOrigin::Pfx => at.key("pfx"),
        };
        match entry {
            Err(e) => problems.push((key, e.to_string())),
            Ok(entry) => {
                for p in tls_setup::certificate_problems(&entry, now) {
                    problems.push((key.clone(), p));
                }
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
