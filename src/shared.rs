//! State shared between the workers and the control side of a node.
//!
//! Owns the immutable [`Snapshot`] (config, pools, backend states) that workers pick up by
//! generation number, the per-backend runtime counters (atomics that survive reloads), the
//! per-source connection table, and the node's lifecycle flag. Workers only read snapshots;
//! the control side (health checks, admin API, reload) builds a new one and publishes it.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::balance::{backend_key, Algorithm, Candidate};
use crate::cidr::Cidr;
use crate::config::{AdminState, Config, ListenerConfig, PoolConfig};
use crate::engine::tls_setup::BackendTls;
use crate::health::Health;
use crate::metrics::{label, Metrics};
use crate::tls::server::ServerTls;

/// TLS state built from files by the runtime (certificates, CA bundles) and put into every
/// snapshot by name.
#[derive(Default)]
pub struct TlsState {
    /// Server configurations of terminating listeners, by listener name.
    pub listeners: HashMap<String, Arc<ServerTls>>,
    /// Client configurations of re-encrypting pools, by pool name.
    pub pools: HashMap<String, Arc<BackendTls>>,
}

/// One immutable view of what the node serves. Workers hold an `Arc` and compare generations.
pub struct Snapshot {
    /// Increases with every publish.
    pub generation: u64,
    /// The configuration this snapshot was built from.
    pub config: Arc<Config>,
    /// HALB listeners.
    pub listeners: Vec<ListenerPlan>,
    /// Backend pools, referenced by index from listeners.
    pub pools: Vec<Arc<PoolPlan>>,
    /// Backends a reload removed while connections to them were open: (pool, backend,
    /// counters). Listed by the admin API and the active-connections gauge until their last
    /// connection ends, so that an operator can watch them drain.
    pub removed: Vec<(String, String, std::sync::Weak<BackendRuntime>)>,
}

/// A listener as workers use it.
pub struct ListenerPlan {
    /// Its configuration.
    pub config: ListenerConfig,
    /// Index into `Snapshot::pools`.
    pub pool: usize,
    /// Sources that must (and alone may) send a PROXY v2 header.
    pub trusted_proxies: Vec<Cidr>,
    /// The server configuration of a terminating (`offload`, `auto`) listener.
    pub tls: Option<Arc<ServerTls>>,
    /// Passthrough routes: (server-name pattern, index into `Snapshot::pools`), in order.
    pub sni_routes: Vec<(String, usize)>,
    /// What the listener does with a connection.
    pub role: ListenerRole,
    /// Client addresses allowed (empty: all).
    pub allow: Vec<Cidr>,
    /// Client addresses refused (checked first).
    pub deny: Vec<Cidr>,
}

/// What a listener does with its connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerRole {
    /// A HALB listener: balance over its pool.
    Balance,
    /// A gateway forwarding listener: pass every connection to the next gateway of its pool,
    /// with the gateway path in the PROXY v2 header.
    Forward,
    /// A gateway front listener: sniff, then the client API, tunnels, RDP balancing, or the
    /// web server (its pool, possibly empty).
    Front {
        /// The resource plain RDP clients are balanced over (none: RDP refused).
        rdp_resource: Option<String>,
    },
}

/// Whether a listener's allow and deny lists admit a client address.
pub fn admits(allow: &[Cidr], deny: &[Cidr], ip: IpAddr) -> bool {
    !deny.iter().any(|c| c.contains(ip)) && (allow.is_empty() || allow.iter().any(|c| c.contains(ip)))
}

/// A pool as workers use it.
pub struct PoolPlan {
    /// Pool name.
    pub name: String,
    /// Selection algorithm.
    pub algorithm: Algorithm,
    /// Send a PROXY v2 header to backends.
    pub send_proxy: bool,
    /// Extra backends tried after a failed connect.
    pub retries: u32,
    /// Consecutive failed connects that mark a backend down (0: off).
    pub passive_fall: u32,
    /// Whether the pool has active health checks (passive marking needs them to recover).
    pub health_checked: bool,
    /// TLS towards the backends (re-encryption).
    pub tls: Option<Arc<BackendTls>>,
    /// Backends in configured order.
    pub backends: Vec<BackendPlan>,
}

impl PoolPlan {
    /// Fills `out` with the balancer's view of every backend.
    pub fn candidates(&self, out: &mut Vec<Candidate>) {
        out.clear();
        out.extend(self.backends.iter().map(|b| Candidate {
            key: b.key,
            weight: b.weight,
            eligible: b.eligible(),
            active: b.runtime.active.load(Ordering::Relaxed),
        }));
    }
}

/// A backend as workers use it.
pub struct BackendPlan {
    /// Backend name (unique within the pool; shared with the sessions that use it).
    pub name: Arc<str>,
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative share.
    pub weight: u32,
    /// Stable hashing identity (same on every node with the same config).
    pub key: u64,
    /// Connection limit (0: none).
    pub max_connections: u32,
    /// Administrative state.
    pub admin: AdminState,
    /// Health verdict.
    pub health: Health,
    /// Counters shared by all workers; survive reloads.
    pub runtime: Arc<BackendRuntime>,
}

impl BackendPlan {
    /// Whether a new connection may go to this backend now.
    pub fn eligible(&self) -> bool {
        self.admin == AdminState::Up
            && self.health == Health::Up
            && !self.runtime.passive_down.load(Ordering::Relaxed)
            && (self.max_connections == 0
                || self.runtime.active.load(Ordering::Relaxed) < self.max_connections)
    }

    /// In rotation and up, but holding its `max_connections`.
    pub fn at_limit(&self) -> bool {
        self.admin == AdminState::Up
            && self.health == Health::Up
            && !self.runtime.passive_down.load(Ordering::Relaxed)
            && self.max_connections > 0
            && self.runtime.active.load(Ordering::Relaxed) >= self.max_connections
    }
}

/// Per-backend counters bumped by workers.
#[derive(Default)]
pub struct BackendRuntime {
    /// Connections held now.
    pub active: AtomicU32,
    /// Connections ever sent.
    pub total: AtomicU64,
    /// Failed connects in a row (reset by a success).
    pub failures_in_row: AtomicU32,
    /// A worker counted `passive_fall` failed connects in a row: out of rotation at once,
    /// not only once the health checker's verdict (which it was sent) reaches a snapshot.
    /// Cleared when a verdict for this backend is applied, or when none can follow
    /// (`Shared::clear_passive_down`).
    pub passive_down: AtomicBool,
    /// Failed connects ever.
    pub connect_failures: AtomicU64,
}

impl BackendRuntime {
    /// Back in rotation as far as passive health goes, with a fresh count: it takes another
    /// `passive_fall` failed connects in a row to take it out again.
    pub fn clear_passive(&self) {
        self.failures_in_row.store(0, Ordering::Relaxed);
        self.passive_down.store(false, Ordering::Relaxed);
    }
}

/// The node's lifecycle, read by workers every loop turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Accepting and serving.
    Running = 0,
    /// Not accepting; sessions finish on their own.
    Draining = 1,
    /// Close everything now.
    Stopping = 2,
}

/// A message from a worker to the control side.
#[derive(Debug)]
pub enum ControlEvent {
    /// `passive_fall` connects in a row failed on this backend.
    PassiveDown {
        /// Pool name.
        pool: String,
        /// Backend name.
        backend: String,
        /// Last connect error.
        reason: String,
    },
}

/// Live connections per client address, shared by all workers (sharded to spread locking).
pub struct SourceTable {
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl Default for SourceTable {
    fn default() -> Self {
        SourceTable {
            shards: (0..32).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl SourceTable {
    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ip.hash(&mut h);
        &self.shards[(h.finish() as usize) % self.shards.len()]
    }

    /// Takes a slot for `ip` if it holds fewer than `limit`; false when at the limit.
    pub fn try_acquire(&self, ip: IpAddr, limit: u32) -> bool {
        let mut map = self.shard(ip).lock();
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives a slot back.
    pub fn release(&self, ip: IpAddr) {
        let mut map = self.shard(ip).lock();
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// Backend states kept by the control side across snapshots and reloads.
#[derive(Clone, Copy, Debug)]
struct BackendStatus {
    admin: AdminState,
    /// The `state` the config gave it: a reload that changes it applies the new one; one
    /// that leaves it keeps what the admin API set since.
    configured: AdminState,
    health: Health,
    address: SocketAddr,
}

struct ControlState {
    config: Arc<Config>,
    status: HashMap<(String, String), BackendStatus>,
    runtimes: HashMap<(String, String), Arc<BackendRuntime>>,
    /// TLS configurations (built by the runtime, which reads the files).
    tls: TlsState,
}

/// Appends Prometheus text for a role's own counters.
pub type MetricSource = Box<dyn Fn(&mut String) + Send + Sync>;

/// Everything a node's threads share.
pub struct Shared {
    current: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
    lifecycle: AtomicU8,
    control: Mutex<ControlState>,
    wakers: Mutex<Vec<Arc<mio::Waker>>>,
    /// Listener sockets a reload bound for the workers to take.
    staged: Mutex<crate::engine::listener::Staged>,
    metric_sources: Mutex<Vec<MetricSource>>,
    /// The health checkers' per-backend status, (pool, backend, status), for /metrics.
    health_statuses: Mutex<Vec<(String, String, Arc<crate::health::TargetStatus>)>>,
    /// Counters.
    pub metrics: Metrics,
    /// Connections held by all workers.
    pub connections: AtomicUsize,
    /// Connections per client address.
    pub sources: SourceTable,
    /// Worker -> control notifications.
    pub events: crossbeam_channel::Sender<ControlEvent>,
    /// The gateway role's node-wide state (issue 5), set once at start.
    gateway: std::sync::OnceLock<Arc<crate::gateway_role::GatewayRuntime>>,
}

impl Shared {
    /// Builds the shared state for a validated config; returns the receiving end of worker events.
    pub fn new(config: Config) -> (Arc<Shared>, crossbeam_channel::Receiver<ControlEvent>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut control = ControlState {
            config: Arc::new(config),
            status: HashMap::new(),
            runtimes: HashMap::new(),
            tls: TlsState::default(),
        };
        let snapshot = build_snapshot(&mut control, 1);
        let shared = Shared {
            current: RwLock::new(Arc::new(snapshot)),
            generation: AtomicU64::new(1),
            lifecycle: AtomicU8::new(Lifecycle::Running as u8),
            control: Mutex::new(control),
            wakers: Mutex::new(Vec::new()),
            staged: Mutex::new(Default::default()),
            metric_sources: Mutex::new(Vec::new()),
            health_statuses: Mutex::new(Vec::new()),
            metrics: Metrics::default(),
            connections: AtomicUsize::new(0),
            sources: SourceTable::default(),
            events: tx,
            gateway: std::sync::OnceLock::new(),
        };
        (Arc::new(shared), rx)
    }

    /// Installs the gateway role's state (once, before the workers start).
    pub fn set_gateway(&self, gateway: Arc<crate::gateway_role::GatewayRuntime>) {
        let _ = self.gateway.set(gateway);
    }

    /// The gateway role's state, when this node is a gateway.
    pub fn gateway(&self) -> Option<&Arc<crate::gateway_role::GatewayRuntime>> {
        self.gateway.get()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().clone()
    }

    /// The generation of the current snapshot (cheap; workers poll it).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The lifecycle flag.
    pub fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle.load(Ordering::Acquire) {
            0 => Lifecycle::Running,
            1 => Lifecycle::Draining,
            _ => Lifecycle::Stopping,
        }
    }

    /// Moves the lifecycle forward and wakes every worker.
    pub fn set_lifecycle(&self, to: Lifecycle) {
        self.lifecycle.fetch_max(to as u8, Ordering::AcqRel);
        self.wake_all();
    }

    /// Adds a producer of extra Prometheus text (a role with counters of its own, e.g. VRRP).
    pub fn add_metrics_source(&self, source: MetricSource) {
        self.metric_sources.lock().push(source);
    }

    /// Publishes the running health checkers' statuses (none: no pool is checked).
    pub fn set_health_statuses(&self, rows: Vec<(String, String, Arc<crate::health::TargetStatus>)>) {
        *self.health_statuses.lock() = rows;
    }

    /// The Prometheus text of every counter, the snapshot's backends and the extra sources.
    pub fn render_metrics(&self) -> String {
        let mut extra = String::new();
        crate::health::render_metrics(&mut extra, &self.health_statuses.lock());
        for source in self.metric_sources.lock().iter() {
            source(&mut extra);
        }
        let snapshot = self.snapshot();
        self.metrics
            .render(&snapshot, self.connections.load(Ordering::Relaxed), &extra)
    }

    /// Registers a worker's waker so publishes reach it promptly.
    /// Leaves sockets bound by a reload for the workers (replacing any a previous reload
    /// left untaken).
    pub fn stage_listeners(&self, staged: crate::engine::listener::Staged) {
        *self.staged.lock() = staged;
    }

    /// Worker `worker`'s socket for listener `name`, if a reload bound one with `key`.
    pub fn take_staged_listener(
        &self,
        name: &str,
        worker: usize,
        key: crate::engine::listener::ListenerKey,
    ) -> Option<std::net::TcpListener> {
        let mut staged = self.staged.lock();
        match staged.remove(&(name.to_string(), worker)) {
            Some((k, socket)) if k == key => Some(socket),
            _ => None,
        }
    }

    pub fn add_waker(&self, waker: Arc<mio::Waker>) {
        self.wakers.lock().push(waker);
    }

    fn wake_all(&self) {
        for w in self.wakers.lock().iter() {
            let _ = w.wake();
        }
    }

    /// Replaces the configuration (a validated reload): backends that stay keep their state.
    pub fn replace_config(&self, config: Config) {
        let mut control = self.control.lock();
        forget_unchecked_verdicts(&mut control, &config);
        control.config = Arc::new(config);
        self.publish(&mut control);
    }

    /// Replaces the configuration and the listeners' TLS configurations in one publish (a
    /// reload: certificates are re-read with the config; sessions keep what they started with).
    pub fn replace_config_and_tls(&self, config: Config, tls: TlsState) {
        let mut control = self.control.lock();
        forget_unchecked_verdicts(&mut control, &config);
        control.config = Arc::new(config);
        control.tls = tls;
        self.publish(&mut control);
    }

    /// Sets the TLS configurations (at start, before the workers run).
    pub fn set_tls(&self, tls: TlsState) {
        let mut control = self.control.lock();
        control.tls = tls;
        self.publish(&mut control);
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.control.lock().config.clone()
    }

    /// Puts a backend a worker took out of rotation (passive health) back, when no verdict
    /// will come for it.
    pub fn clear_passive_down(&self, pool: &str, backend: &str) {
        let control = self.control.lock();
        if let Some(runtime) = control.runtimes.get(&(pool.to_string(), backend.to_string())) {
            runtime.clear_passive();
        }
    }

    /// The same for every backend (the health checkers restart on a reload).
    pub fn clear_all_passive_down(&self) {
        for runtime in self.control.lock().runtimes.values() {
            runtime.clear_passive();
        }
    }

    /// Sets a backend's health verdict; returns false for an unknown backend.
    pub fn set_health(&self, pool: &str, backend: &str, health: Health) -> bool {
        let mut control = self.control.lock();
        let key = (pool.to_string(), backend.to_string());
        if let Some(runtime) = control.runtimes.get(&key) {
            // The verdict rules from now on (down, or up again after `rise` good checks);
            // a new run of `passive_fall` failed connects is needed to take it out again (a
            // worker still on the last snapshot may try it once more meanwhile).
            runtime.clear_passive();
        }
        match control.status.get_mut(&key) {
            Some(s) if s.health != health => {
                s.health = health;
                self.publish(&mut control);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Sets a backend's administrative state; returns false for an unknown backend.
    pub fn set_admin_state(&self, pool: &str, backend: &str, state: AdminState) -> bool {
        let mut control = self.control.lock();
        match control.status.get_mut(&(pool.to_string(), backend.to_string())) {
            Some(s) => {
                s.admin = state;
                self.publish(&mut control);
                true
            }
            None => false,
        }
    }

    fn publish(&self, control: &mut ControlState) {
        let generation = self.generation.load(Ordering::Acquire) + 1;
        let snapshot = build_snapshot(control, generation);
        *self.current.write() = Arc::new(snapshot);
        self.generation.store(generation, Ordering::Release);
        self.wake_all();
    }
}

/// A reload to `config`: a pool without health checks gets no verdict from any checker
/// again (its `health` may just have been removed), so an old one must not keep its
/// backends out for good.
fn forget_unchecked_verdicts(control: &mut ControlState, config: &Config) {
    for p in config.pools().filter(|p| p.health.is_none()) {
        for b in &p.backends {
            if let Some(status) = control.status.get_mut(&(p.name.clone(), b.name.clone())) {
                status.health = Health::Up;
            }
        }
    }
}

fn build_snapshot(control: &mut ControlState, generation: u64) -> Snapshot {
    let config = control.config.clone();
    let mut seen = std::collections::HashSet::new();
    // Configured pools first, in config order (health checks pair them by position), then
    // one pool per gateway front listener: its web server, or none.
    let mut pool_configs: Vec<PoolConfig> = config.pools().cloned().collect();
    let configured = pool_configs.len();
    for l in config.gateway.iter().flat_map(|g| g.listener.iter()) {
        if l.pool.is_empty() {
            pool_configs.push(web_pool(l));
        }
    }
    let mut pools = Vec::new();
    for p in &pool_configs {
        let mut backends = Vec::new();
        for b in &p.backends {
            let id = (p.name.clone(), b.name.clone());
            seen.insert(id.clone());
            let fresh = BackendStatus {
                admin: b.state,
                configured: b.state,
                health: Health::Up,
                address: b.address,
            };
            let status = control.status.entry(id.clone()).or_insert(fresh);
            if status.address != b.address {
                // Same name, new address: a new server as far as health goes.
                *status = fresh;
            }
            if status.configured != b.state {
                // The operator edited `state` in the file: that is the new state.
                status.admin = b.state;
                status.configured = b.state;
            }
            let runtime = control.runtimes.entry(id).or_default().clone();
            backends.push(BackendPlan {
                name: Arc::from(b.name.as_str()),
                address: b.address,
                weight: b.weight,
                key: backend_key(&b.name),
                max_connections: b.max_connections,
                admin: status.admin,
                health: status.health,
                runtime,
            });
        }
        pools.push(Arc::new(PoolPlan {
            name: p.name.clone(),
            algorithm: Algorithm::from_str(&p.algorithm).unwrap_or(Algorithm::RoundRobin),
            send_proxy: p.send_proxy,
            retries: p.retries,
            passive_fall: p.passive_fall,
            health_checked: p.health.is_some(),
            tls: control.tls.pools.get(&p.name).cloned(),
            backends,
        }));
    }
    let pool_index = |name: &str| pool_configs.iter().position(|p| p.name == name);
    let mut listeners = Vec::new();
    let halb = config
        .halb
        .iter()
        .flat_map(|h| h.listener.iter().map(|l| (l, false)));
    let gateway = config
        .gateway
        .iter()
        .flat_map(|g| g.listener.iter().map(|l| (l, true)));
    let mut web = configured;
    for (l, is_gateway) in halb.chain(gateway) {
        let (pool, role) = if is_gateway && l.pool.is_empty() {
            web += 1;
            let role = ListenerRole::Front {
                rdp_resource: l.rdp_resource.clone(),
            };
            (web - 1, role)
        } else if is_gateway {
            (pool_index(&l.pool).unwrap_or(0), ListenerRole::Forward)
        } else {
            (pool_index(&l.pool).unwrap_or(0), ListenerRole::Balance)
        };
        let sni_routes = l
            .sni_routes
            .iter()
            .flat_map(|r| {
                let pool = pool_index(&r.pool).unwrap_or(pool);
                r.names.iter().map(move |n| (n.clone(), pool))
            })
            .collect();
        let cidrs = |list: &[String]| list.iter().filter_map(|c| Cidr::from_str(c).ok()).collect();
        listeners.push(ListenerPlan {
            tls: control.tls.listeners.get(&l.name).cloned(),
            sni_routes,
            config: l.clone(),
            pool,
            trusted_proxies: cidrs(&l.accept_proxy_from),
            role,
            allow: cidrs(&l.allow),
            deny: cidrs(&l.deny),
        });
    }
    control.status.retain(|k, _| seen.contains(k));
    // The runtime of a removed backend stays in the registry while something else holds it
    // (its sessions, a worker's previous snapshot): re-added by a later reload, the backend
    // finds its live connections still counted against its max_connections.
    control
        .runtimes
        .retain(|k, runtime| seen.contains(k) || Arc::strong_count(runtime) > 1);
    let mut removed: Vec<_> = control
        .runtimes
        .iter()
        .filter(|(k, _)| !seen.contains(*k))
        .map(|((pool, backend), runtime)| (pool.clone(), backend.clone(), Arc::downgrade(runtime)))
        .collect();
    removed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Snapshot {
        generation,
        config,
        listeners,
        pools,
        removed,
    }
}

/// The pool behind a gateway front listener: its `forward_http` web server, or empty.
fn web_pool(l: &ListenerConfig) -> PoolConfig {
    let backends = l
        .forward_http
        .map(|address| crate::config::BackendConfig {
            name: "web".into(),
            address,
            weight: 1,
            max_connections: 0,
            state: AdminState::Up,
        })
        .into_iter()
        .collect();
    PoolConfig {
        name: format!("{}/web", l.name),
        algorithm: "first".into(),
        send_proxy: false,
        retries: 0,
        passive_fall: 0,
        health: None,
        tls: None,
        backends,
    }
}

impl Snapshot {
    /// Appends per-backend metrics.
    pub fn render_metrics(&self, out: &mut String) {
        crate::metrics::header(
            out,
            "gatehouse_backend_up",
            "gauge",
            "1 when the backend takes new connections (healthy and admin up).",
        );
        for p in &self.pools {
            for b in &p.backends {
                let _ = writeln!(
                    out,
                    "gatehouse_backend_up{{pool=\"{}\",backend=\"{}\"}} {}",
                    label(&p.name),
                    label(&b.name),
                    u8::from(b.admin == AdminState::Up && b.health == Health::Up)
                );
            }
        }
        crate::metrics::header(
            out,
            "gatehouse_backend_healthy",
            "gauge",
            "1 when health checks pass.",
        );
        for p in &self.pools {
            for b in &p.backends {
                let _ = writeln!(
                    out,
                    "gatehouse_backend_healthy{{pool=\"{}\",backend=\"{}\"}} {}",
                    label(&p.name),
                    label(&b.name),
                    u8::from(b.health == Health::Up)
                );
            }
        }
        crate::metrics::header(
            out,
            "gatehouse_backend_admin_state",
            "gauge",
            "Administrative state (1 for the current one).",
        );
        for p in &self.pools {
            for b in &p.backends {
                for s in [AdminState::Up, AdminState::Drain, AdminState::Maintenance] {
                    let _ = writeln!(
                        out,
                        "gatehouse_backend_admin_state{{pool=\"{}\",backend=\"{}\",state=\"{}\"}} {}",
                        label(&p.name),
                        label(&b.name),
                        s.as_str(),
                        u8::from(b.admin == s)
                    );
                }
            }
        }
        crate::metrics::header(
            out,
            "gatehouse_backend_connections_active",
            "gauge",
            "Connections held to the backend.",
        );
        for p in &self.pools {
            for b in &p.backends {
                let _ = writeln!(
                    out,
                    "gatehouse_backend_connections_active{{pool=\"{}\",backend=\"{}\"}} {}",
                    label(&p.name),
                    label(&b.name),
                    b.runtime.active.load(Ordering::Relaxed)
                );
            }
        }
        for (pool, backend, active) in self.removed_draining() {
            let _ = writeln!(
                out,
                "gatehouse_backend_connections_active{{pool=\"{}\",backend=\"{}\"}} {active}",
                label(pool),
                label(backend)
            );
        }
        crate::metrics::header(
            out,
            "gatehouse_backend_connections_total",
            "counter",
            "Connections sent to the backend.",
        );
        for p in &self.pools {
            for b in &p.backends {
                let _ = writeln!(
                    out,
                    "gatehouse_backend_connections_total{{pool=\"{}\",backend=\"{}\"}} {}",
                    label(&p.name),
                    label(&b.name),
                    b.runtime.total.load(Ordering::Relaxed)
                );
            }
        }
        crate::metrics::header(
            out,
            "gatehouse_backend_connect_failures_total",
            "counter",
            "Failed connects to the backend.",
        );
        for p in &self.pools {
            for b in &p.backends {
                let _ = writeln!(
                    out,
                    "gatehouse_backend_connect_failures_total{{pool=\"{}\",backend=\"{}\"}} {}",
                    label(&p.name),
                    label(&b.name),
                    b.runtime.connect_failures.load(Ordering::Relaxed)
                );
            }
        }
    }

    /// The backends as JSON for the admin API.
    pub fn backends_json(&self) -> serde_json::Value {
        let pools: Vec<_> = self
            .pools
            .iter()
            .map(|p| {
                let backends: Vec<_> = p
                    .backends
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "name": &*b.name,
                            "address": b.address.to_string(),
                            "weight": b.weight,
                            "admin_state": b.admin.as_str(),
                            "health": if b.health == Health::Up { "up" } else { "down" },
                            "eligible": b.eligible(),
                            "active": b.runtime.active.load(Ordering::Relaxed),
                            "total": b.runtime.total.load(Ordering::Relaxed),
                            "connect_failures": b.runtime.connect_failures.load(Ordering::Relaxed),
                        })
                    })
                    .collect();
                serde_json::json!({"pool": p.name, "algorithm": p.algorithm.to_string(), "backends": backends})
            })
            .collect();
        let removed: Vec<_> = self
            .removed_draining()
            .map(|(pool, backend, active)| serde_json::json!({"pool": pool, "backend": backend, "active": active}))
            .collect();
        serde_json::json!({ "generation": self.generation, "pools": pools, "removed": removed })
    }

    /// Backends a reload removed that still hold connections: (pool, backend, active).
    fn removed_draining(&self) -> impl Iterator<Item = (&str, &str, u32)> {
        self.removed.iter().filter_map(|(pool, backend, runtime)| {
            let active = runtime.upgrade()?.active.load(Ordering::Relaxed);
            (active > 0).then_some((pool.as_str(), backend.as_str(), active))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, ValidateOptions};

    const CONFIG: &str = "[halb]\n[[halb.listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n\n\
        [[halb.pool]]\nname = \"p\"\nhealth = { check = \"tcp\" }\nbackends = [\n\
        { name = \"a\", address = \"127.0.0.1:2\" },\n{ name = \"b\", address = \"127.0.0.1:3\" },\n]\n";

    fn eligible(shared: &Shared) -> Vec<bool> {
        shared.snapshot().pools[0]
            .backends
            .iter()
            .map(|b| b.eligible())
            .collect()
    }

    #[test]
    fn a_passive_down_leaves_rotation_at_once_and_the_verdict_then_rules() {
        let config = load_str(CONFIG, "t.toml", ValidateOptions::default()).expect("config");
        let (shared, _events) = Shared::new(config);
        assert_eq!(eligible(&shared), [true, true]);
        // A worker counted passive_fall failures on "a": out before any verdict is published.
        let a = shared.snapshot().pools[0].backends[0].runtime.clone();
        a.passive_down.store(true, Ordering::Relaxed);
        assert_eq!(eligible(&shared), [false, true]);
        // The checker's verdict: down; the flag has done its job.
        assert!(shared.set_health("p", "a", Health::Down));
        assert!(!a.passive_down.load(Ordering::Relaxed));
        assert_eq!(eligible(&shared), [false, true]);
        // `rise` good checks later: back in rotation.
        assert!(shared.set_health("p", "a", Health::Up));
        assert_eq!(eligible(&shared), [true, true]);
        // A report no checker will judge (queue full, checks gone): back at once.
        a.passive_down.store(true, Ordering::Relaxed);
        shared.clear_passive_down("p", "a");
        assert_eq!(eligible(&shared), [true, true]);
        // A reload restarts the checkers: every such flag goes.
        let b = shared.snapshot().pools[0].backends[1].runtime.clone();
        a.passive_down.store(true, Ordering::Relaxed);
        b.passive_down.store(true, Ordering::Relaxed);
        shared.clear_all_passive_down();
        assert_eq!(eligible(&shared), [true, true]);
    }

    #[test]
    fn a_backend_removed_and_added_back_keeps_counting_its_live_connections() {
        let config = load_str(CONFIG, "t.toml", ValidateOptions::default()).expect("config");
        let (shared, _events) = Shared::new(config);
        // A session holds a connection to "b" (its clone of the runtime).
        let held = shared.snapshot().pools[0].backends[1].runtime.clone();
        held.active.fetch_add(1, Ordering::Relaxed);
        let without_b = CONFIG.replace("{ name = \"b\", address = \"127.0.0.1:3\" },\n", "");
        shared.replace_config(load_str(&without_b, "t.toml", ValidateOptions::default()).unwrap());
        assert_eq!(shared.snapshot().pools[0].backends.len(), 1);
        shared.replace_config(load_str(CONFIG, "t.toml", ValidateOptions::default()).unwrap());
        let b = shared.snapshot().pools[0].backends[1].runtime.clone();
        assert!(Arc::ptr_eq(&b, &held), "b came back with fresh counters");
        assert_eq!(b.active.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_removed_backend_stays_visible_while_its_connections_drain() {
        let config = load_str(CONFIG, "t.toml", ValidateOptions::default()).expect("config");
        let (shared, _events) = Shared::new(config);
        let held = shared.snapshot().pools[0].backends[1].runtime.clone();
        held.active.fetch_add(2, Ordering::Relaxed);
        let without_b = CONFIG.replace("{ name = \"b\", address = \"127.0.0.1:3\" },\n", "");
        shared.replace_config(load_str(&without_b, "t.toml", ValidateOptions::default()).unwrap());
        let json = shared.snapshot().backends_json();
        assert_eq!(
            json["removed"],
            serde_json::json!([{"pool": "p", "backend": "b", "active": 2}])
        );
        let metrics = shared.render_metrics();
        assert!(
            metrics.contains("gatehouse_backend_connections_active{pool=\"p\",backend=\"b\"} 2"),
            "{metrics}"
        );
        // Its last connection ends: no longer listed, now or after the next publish.
        held.active.store(0, Ordering::Relaxed);
        assert_eq!(
            shared.snapshot().backends_json()["removed"],
            serde_json::json!([])
        );
        drop(held);
        assert!(shared.set_health("p", "a", Health::Down));
        assert!(shared.snapshot().removed.is_empty());
    }
}
