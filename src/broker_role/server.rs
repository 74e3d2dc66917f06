//! The broker's shell: listeners for gateways (20002) and host agents (20003), a thread per
//! connection, a small pool that checks passwords off the connection threads, a thread per
//! LDAP directory check (bounded by `[ldap] max_pending`), a ticker that expires state and
//! reloads the users file when it changes, and the SIGHUP reload of the farm file
//! ([`BrokerServer::reload`], called by the node's reload through `ControlRoles::reload`).
//!
//! Threads with blocking sockets rather than mio: a broker serves a few gateways and a few
//! hundred host agents, each sending a handful of frames a second, and the expensive work
//! (argon2id) runs on the pool anyway; a thread per connection keeps the TLS, hello and
//! keepalive handling straight-line. Every decision is `gatehouse_control::broker::Broker`'s.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use rustls::ServerConfig;

use gatehouse_control::broker::{
    AuthOutcome, Broker, BrokerSetup, CheckRoute, Credentials, Farm, JsonLinesAudit, LdapDirectory, Now,
    PeerInfo, PendingLogin, UserDb,
};
use gatehouse_control::frame::{KeepaliveConfig, Role};
use gatehouse_control::message::{self, Event, Inbound, Reply, Request};

use super::hash_queue::FairQueue;
use super::link::{self, our_hello, Link};
use super::{BrokerSection, ControlRoles};
use crate::config::Config;

/// The longest a connection thread waits for bytes before it looks at its flags again. A
/// backstop only: finished logins, a drain, a stop and a farm reload wake it through its
/// wake socket at once.
const POLL_PERIOD: Duration = Duration::from_millis(200);
/// How long a stop waits for connection threads to tell their gateways that it drains.
const DRAIN_NOTICE: Duration = Duration::from_millis(50);
/// Password checks queued at most; beyond, logins are refused `internal` at once rather
/// than queued for longer than any gateway waits.
const MAX_QUEUED_HASHES: usize = 1024;
/// Password checks one gateway may have queued at once: a quarter of the places, so that a
/// gateway in a logon storm (or a faulty one) leaves room for the others, whose checks the
/// pool then takes in turn ([`FairQueue`]).
const PEER_QUEUED_HASHES: usize = MAX_QUEUED_HASHES / 4;
/// Connections held at once on each port (gateways, host agents); beyond, new ones are closed
/// at accept: a flood of half-open TLS handshakes must not cost a thread each without bound,
/// and one on the host agents' port must not keep gateways out.
const MAX_CONNECTIONS: usize = 4096;
/// Connections from one address in their TLS handshake and hello at once, per port; beyond,
/// new ones from it are closed at accept. A farm member opens one link per broker, so this is
/// room for reconnects, not for a peer that holds sockets open without finishing them.
const MAX_HANDSHAKES_PER_SOURCE: usize = 32;
/// At most one log line per this period for connections refused at accept, with the count.
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(1);

/// A password check queued for the pool.
type HashJob = Box<dyn FnOnce() + Send>;

/// A running broker.
pub struct BrokerServer {
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    broker: Arc<Mutex<Broker>>,
    shared: Arc<Shared>,
    /// The section the broker started with (what a reload cannot change is compared to it).
    started: BrokerSection,
    /// The address gateways connect to.
    pub gateway_addr: SocketAddr,
    /// The address host agents connect to.
    pub agent_addr: SocketAddr,
}

struct Shared {
    broker: Arc<Mutex<Broker>>,
    /// The local users and the directory that checks run against (replaced on reload).
    credentials: Mutex<Credentials>,
    /// The users file the ticker watches (a reload may name another).
    users_file: Mutex<PathBuf>,
    /// Bumped by every farm reload, so connections re-read their gateway's site.
    farm_generation: AtomicU64,
    /// Directory checks in flight.
    directory_checks: AtomicUsize,
    hash_jobs: Arc<FairQueue<HashJob>>,
    /// Logins refused because the queue was full, for the log.
    hash_refusals: Mutex<RefusalLog>,
    tls: Arc<ServerConfig>,
    node: String,
    keepalive: KeepaliveConfig,
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    /// The wake sockets of the connection threads, to tell them at once of a drain, a stop
    /// or a reloaded farm.
    wakes: Mutex<Vec<std::sync::Weak<std::os::unix::net::UnixStream>>>,
    /// What the broker counted (the node's /metrics renders it).
    metrics: Arc<BrokerMetrics>,
}

impl Shared {
    /// Wakes every connection thread (and forgets those that ended).
    fn wake_all(&self) {
        self.wakes.lock().retain(|w| match w.upgrade() {
            Some(wake) => {
                let _ = std::io::Write::write(&mut &*wake, &[1]);
                true
            }
            None => false,
        });
    }
}

/// The broker's counters: replies by type and refusal reason, farm peers connected by role.
#[derive(Default)]
pub struct BrokerMetrics {
    replies: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
    gateways: AtomicUsize,
    agents: AtomicUsize,
}

impl BrokerMetrics {
    fn count(&self, reply: &Reply) {
        let reason = match reply {
            Reply::Refused(r) => r.reason.as_str(),
            _ => "",
        };
        *self.replies.lock().entry((reply.name(), reason)).or_insert(0) += 1;
    }

    fn peers(&self, role: Role) -> &AtomicUsize {
        if role == Role::Gateway {
            &self.gateways
        } else {
            &self.agents
        }
    }

    /// Appends the Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP gatehouse_broker_replies_total Broker replies by type and refusal reason."
        );
        let _ = writeln!(out, "# TYPE gatehouse_broker_replies_total counter");
        for ((reply, reason), n) in self.replies.lock().iter() {
            let _ = writeln!(
                out,
                "gatehouse_broker_replies_total{{reply=\"{reply}\",reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP gatehouse_broker_peers Farm peers connected, by role."
        );
        let _ = writeln!(out, "# TYPE gatehouse_broker_peers gauge");
        let _ = writeln!(
            out,
            "gatehouse_broker_peers{{role=\"gateway\"}} {}",
            self.gateways.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "gatehouse_broker_peers{{role=\"host-agent\"}} {}",
            self.agents.load(Ordering::Relaxed)
        );
    }
}

/// The farm's LDAP directory, if it names one; a clear-text one is logged as such.
fn directory_of(farm: &Farm) -> Option<Arc<LdapDirectory>> {
    let settings = farm.ldap()?;
    if !settings.transport.is_tls() {
        tracing::warn!(
            url = %settings.url,
            "LDAP directory in clear text: user passwords cross the network readable \
             (use ldaps:// or starttls = true)"
        );
    }
    Some(Arc::new(LdapDirectory::new(settings.clone())))
}

impl BrokerServer {
    /// Loads the farm, users and keys, binds both listeners and starts every thread.
    pub fn start(section: &BrokerSection, node: &str) -> Result<BrokerServer, String> {
        let farm = Arc::new(Farm::load(&section.farm_file).map_err(|e| e.to_string())?);
        let users = UserDb::load_or_new(&section.users_file).map_err(|e| e.to_string())?;
        let pool_users = Arc::new(UserDb::load_or_new(&section.users_file).map_err(|e| e.to_string())?);
        let directory = directory_of(&farm);
        let keys = super::farm_pki::load_key_ring(&section.farm_key_file).map_err(|e| e.to_string())?;
        let audit = JsonLinesAudit::open(&section.audit_file)
            .map_err(|e| format!("audit file {}: {e}", section.audit_file.display()))?;
        let tls = section.tls().server_config().map_err(|e| e.to_string())?;
        our_hello(Role::Broker, node)?;
        let broker = Arc::new(Mutex::new(Broker::new(BrokerSetup {
            node: node.to_string(),
            farm,
            users,
            keys,
            audit: Box::new(audit),
            rng: Box::new(rand::rngs::OsRng),
        })));
        let gw = TcpListener::bind(section.gateway_listen)
            .map_err(|e| format!("broker gateway listener {}: {e}", section.gateway_listen))?;
        let ag = TcpListener::bind(section.agent_listen)
            .map_err(|e| format!("broker host-agent listener {}: {e}", section.agent_listen))?;
        let gateway_addr = gw.local_addr().map_err(|e| e.to_string())?;
        let agent_addr = ag.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let draining = Arc::new(AtomicBool::new(false));
        let hash_jobs = Arc::new(FairQueue::new(MAX_QUEUED_HASHES, PEER_QUEUED_HASHES));
        let shared = Arc::new(Shared {
            broker: broker.clone(),
            credentials: Mutex::new(Credentials::new(pool_users, directory)),
            users_file: Mutex::new(section.users_file.clone()),
            farm_generation: AtomicU64::new(0),
            directory_checks: AtomicUsize::new(0),
            hash_jobs: hash_jobs.clone(),
            hash_refusals: Mutex::new(RefusalLog::default()),
            tls,
            node: node.to_string(),
            keepalive: KeepaliveConfig {
                interval: section.ping_interval.get(),
                timeout: section.ping_timeout.get(),
            },
            stop: stop.clone(),
            draining: draining.clone(),
            wakes: Mutex::new(Vec::new()),
            metrics: Arc::new(BrokerMetrics::default()),
        });
        let mut threads = Vec::new();
        for i in 0..section.hash_threads.max(1) {
            let jobs = hash_jobs.clone();
            threads.push(spawn(&format!("broker-hash-{i}"), move || {
                while let Some(job) = jobs.pop() {
                    job();
                }
            })?);
        }
        for (listener, role) in [(gw, Role::Gateway), (ag, Role::HostAgent)] {
            let shared = shared.clone();
            threads.push(spawn(&format!("broker-accept-{}", role.as_str()), move || {
                accept_loop(listener, role, shared)
            })?);
        }
        let ticker_shared = shared.clone();
        threads.push(spawn("broker-ticker", move || ticker(ticker_shared))?);
        tracing::info!(%gateway_addr, %agent_addr, node, "broker listening");
        Ok(BrokerServer {
            stop,
            draining,
            threads,
            broker,
            shared,
            started: section.clone(),
            gateway_addr,
            agent_addr,
        })
    }

    /// SIGHUP: re-reads the farm file (sites, gateways, hosts, pools, groups, resources,
    /// policy, `[ldap]`) and the users file named by `section`. A file that does not load is
    /// refused with its `file:line` errors and the running farm keeps serving. What stays
    /// valid survives ([`Broker::replace_farm`]): login sessions, host reports, throttle
    /// counts, spent nonces; checks in flight finish against the old settings. Returns a
    /// note on settings that change only at the next restart.
    pub fn reload(&self, section: &BrokerSection) -> Result<Option<String>, String> {
        let farm = Farm::load(&section.farm_file).map_err(|e| e.to_string())?;
        let users = UserDb::load_or_new(&section.users_file).map_err(|e| e.to_string())?;
        let pool_users = Arc::new(UserDb::load_or_new(&section.users_file).map_err(|e| e.to_string())?);
        let directory = directory_of(&farm);
        let ldap = farm.ldap().map_or_else(|| "none".to_string(), |l| l.url.clone());
        let (sites, hosts, resources) = (farm.sites().len(), farm.hosts().len(), farm.resources().len());
        let ended = {
            let mut broker = self.shared.broker.lock();
            let ended = broker.replace_farm(Arc::new(farm));
            broker.replace_users(users);
            ended
        };
        *self.shared.credentials.lock() = Credentials::new(pool_users, directory);
        *self.shared.users_file.lock() = section.users_file.clone();
        self.shared.farm_generation.fetch_add(1, Ordering::SeqCst);
        self.shared.wake_all();
        tracing::info!(
            sites,
            hosts,
            resources,
            ldap,
            sessions_ended = ended,
            "farm file reloaded"
        );
        let s = &self.started;
        let mut fixed = Vec::new();
        for (key, changed) in [
            (
                "gateway_listen",
                s.gateway_listen != section.gateway_listen && section.gateway_listen.port() != 0,
            ),
            (
                "agent_listen",
                s.agent_listen != section.agent_listen && section.agent_listen.port() != 0,
            ),
            ("audit_file", s.audit_file != section.audit_file),
            ("farm_key_file", s.farm_key_file != section.farm_key_file),
            ("cert_file/key_file/ca_file", s.tls() != section.tls()),
            ("hash_threads", s.hash_threads != section.hash_threads),
            (
                "ping_interval/ping_timeout",
                s.ping_interval != section.ping_interval || s.ping_timeout != section.ping_timeout,
            ),
        ] {
            if changed {
                fixed.push(key);
            }
        }
        Ok((!fixed.is_empty()).then(|| format!("broker {} change at the next restart", fixed.join(", "))))
    }

    /// The broker's counters (the node renders them on /metrics).
    pub fn metrics(&self) -> Arc<BrokerMetrics> {
        self.shared.metrics.clone()
    }

    /// The broker core (admin API, metrics, tests).
    pub fn broker(&self) -> Arc<Mutex<Broker>> {
        self.broker.clone()
    }

    /// Tells every gateway to move on (`draining` event), refuses new gateway requests, and
    /// stops all threads.
    pub fn stop(mut self) {
        self.broker.lock().start_draining();
        self.draining.store(true, Ordering::SeqCst);
        self.shared.wake_all();
        // Give connection threads a moment to send the event.
        std::thread::sleep(DRAIN_NOTICE);
        self.stop.store(true, Ordering::SeqCst);
        self.shared.wake_all();
        // The listeners and the ticker first, then the hash pool (a check under way
        // finishes; queued ones are dropped with their connections).
        let (pool, others): (Vec<_>, Vec<_>) = self
            .threads
            .drain(..)
            .partition(|t| t.thread().name().is_some_and(|n| n.starts_with("broker-hash")));
        for t in others {
            let _ = t.join();
        }
        self.shared.hash_jobs.close();
        for t in pool {
            let _ = t.join();
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

/// Waits until `listener` has a connection to accept, or [`POLL_PERIOD`] passes (so the
/// stop flag is seen), instead of waking a hundred times a second.
fn wait_for_connection(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call, on a descriptor `listener` owns.
    unsafe { libc::poll(&mut fd, 1, POLL_PERIOD.as_millis() as libc::c_int) };
}

/// What one listener admits: connections held, and handshakes in progress per source.
#[derive(Default)]
struct Admission {
    held: AtomicUsize,
    handshaking: Mutex<HashMap<IpAddr, usize>>,
}

impl Admission {
    /// A place for a connection from `ip`, or why there is none.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, String> {
        let mut handshaking = self.handshaking.lock();
        let from_ip = handshaking.get(&ip).copied().unwrap_or(0);
        if from_ip >= MAX_HANDSHAKES_PER_SOURCE {
            return Err(format!(
                "{from_ip} connections from {ip} still in their handshake"
            ));
        }
        if self.held.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            self.held.fetch_sub(1, Ordering::SeqCst);
            return Err(format!("{MAX_CONNECTIONS} connections held"));
        }
        handshaking.insert(ip, from_ip + 1);
        Ok(Admitted {
            admission: self.clone(),
            ip,
            handshaking: true,
        })
    }
}

/// A connection's place; given back when dropped.
struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
    handshaking: bool,
}

impl Admitted {
    /// The peer finished its handshake and hello: it no longer counts against its address.
    fn handshake_done(&mut self) {
        if !std::mem::take(&mut self.handshaking) {
            return;
        }
        let mut handshaking = self.admission.handshaking.lock();
        if let Some(n) = handshaking.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                handshaking.remove(&self.ip);
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.handshake_done();
        self.admission.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Refusals logged at most once per [`REFUSAL_LOG_PERIOD`], each line with the count of those
/// since the last one: a flood (of connections, of logins) must not become a flood of lines.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    /// `Some(refusals not logged since the last line)` when this one may be logged.
    fn admit_line(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_PERIOD)
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

fn accept_loop(listener: TcpListener, role: Role, shared: Arc<Shared>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!("broker listener: {e}");
        return;
    }
    let admission = Arc::new(Admission::default());
    let mut refusals = RefusalLog::default();
    // Out of descriptors, accept(2) fails at once on every call: one warning per streak.
    let mut failing = false;
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, addr)) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("broker accepting again");
                }
                let admitted = match admission.admit(addr.ip()) {
                    Ok(a) => a,
                    Err(why) => {
                        if let Some(also) = refusals.admit_line() {
                            tracing::warn!(peer = %addr, port_role = %role, refused_since_last_line = also, "connection refused: {why}");
                        }
                        continue;
                    }
                };
                let conn_shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("broker-conn-{addr}"))
                    .spawn(move || connection(sock, addr, role, admitted, &conn_shared));
                if let Err(e) = spawned {
                    tracing::warn!(%addr, "cannot start a connection thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_for_connection(&listener),
            Err(e) => {
                if !failing {
                    tracing::warn!("broker accept: {e}; retrying every 50 ms");
                    failing = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn connection(sock: TcpStream, addr: SocketAddr, role: Role, mut admitted: Admitted, shared: &Arc<Shared>) {
    if sock.set_nonblocking(false).is_err() {
        return;
    }
    let tls = match rustls::ServerConnection::new(shared.tls.clone()) {
        Ok(c) => rustls::Connection::Server(c),
        Err(e) => {
            tracing::error!(%addr, "TLS: {e}");
            return;
        }
    };
    let hello = match our_hello(Role::Broker, &shared.node) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let mut link = match link::establish(sock, tls, &hello, role, shared.keepalive) {
        Ok(link) => link,
        Err(super::link::LinkError::Closed) => {
            tracing::debug!(peer = %addr, "connection closed before the TLS handshake");
            return;
        }
        Err(e) => {
            tracing::warn!(peer = %addr, port_role = %role, reason = e.reason(), "refused farm peer: {e}");
            return;
        }
    };
    admitted.handshake_done();
    let mut generation = shared.farm_generation.load(Ordering::SeqCst);
    let mut peer = PeerInfo {
        role,
        node: link.peer_name().to_string(),
        site: shared
            .broker
            .lock()
            .farm()
            .gateway(link.peer_name())
            .map(|g| g.site.clone()),
        addr,
    };
    tracing::info!(peer = %addr, node = %peer.node, role = %role, "farm peer connected");
    shared.metrics.peers(role).fetch_add(1, Ordering::Relaxed);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(u64, Reply)>();
    // Password and directory checks answer on other threads: they write a byte here so the
    // reply goes out at once rather than at the next poll period.
    let Ok((wake_tx, wake_rx)) = Link::wake_pair() else {
        tracing::error!(peer = %addr, "cannot make a wake socket");
        return;
    };
    let done_tx = Done {
        tx: done_tx,
        wake: Arc::new(wake_tx),
    };
    {
        // Forget the wake sockets of connections that ended, or the list would grow by one
        // per connection ever made until a reload or a drain walks it.
        let mut wakes = shared.wakes.lock();
        wakes.retain(|w| w.strong_count() > 0);
        wakes.push(Arc::downgrade(&done_tx.wake));
    }
    let mut told_draining = false;
    let end = loop {
        if shared.stop.load(Ordering::Relaxed) {
            break None;
        }
        let now_generation = shared.farm_generation.load(Ordering::SeqCst);
        if now_generation != generation {
            // A reloaded farm may move this gateway to another site, or drop it.
            generation = now_generation;
            peer.site = shared
                .broker
                .lock()
                .farm()
                .gateway(&peer.node)
                .map(|g| g.site.clone());
        }
        if role == Role::Gateway && !told_draining && shared.draining.load(Ordering::Relaxed) {
            told_draining = true;
            let mut out = Vec::new();
            if message::encode_event(&Event::Draining, link.max_frame_bytes(), &mut out).is_ok() {
                if let Err(e) = link.send(&out) {
                    break Some(e);
                }
            }
        }
        let frames = match link.wait_readable(&wake_rx, POLL_PERIOD) {
            Ok(true) => match link.poll(Duration::from_millis(1)) {
                Ok(f) => f,
                Err(e) => break Some(e),
            },
            Ok(false) => Vec::new(),
            Err(e) => break Some(e),
        };
        let mut failed = None;
        for frame in frames {
            let answer = match message::decode(&frame) {
                Ok(Inbound::Request { id, request }) => handle(shared, id, request, &peer, &done_tx),
                Ok(other) => {
                    tracing::debug!(node = %peer.node, "ignored frame from a requester: {other:?}");
                    None
                }
                Err(e) if e.kind() == gatehouse_control::frame::FrameKind::Request => {
                    tracing::info!(node = %peer.node, reason = e.reason(), "bad request: {e}");
                    Some((e.request_id(), e.refusal()))
                }
                Err(e) => {
                    tracing::info!(node = %peer.node, reason = e.reason(), "bad frame ignored: {e}");
                    None
                }
            };
            if let Some((id, reply)) = answer {
                shared.metrics.count(&reply);
                if let Err(e) = send_reply(&mut link, id, &reply) {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            while let Ok((id, reply)) = done_rx.try_recv() {
                shared.metrics.count(&reply);
                if let Err(e) = send_reply(&mut link, id, &reply) {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            break Some(e);
        }
    };
    shared.metrics.peers(role).fetch_sub(1, Ordering::Relaxed);
    match end {
        Some(e) => {
            tracing::info!(node = %peer.node, peer = %addr, reason = e.reason(), "farm peer gone: {e}")
        }
        None => link.close(),
    }
}

fn send_reply(link: &mut Link, id: u64, reply: &Reply) -> Result<(), super::link::LinkError> {
    let mut out = Vec::new();
    if let Err(e) = message::encode_reply(id, reply, link.max_frame_bytes(), &mut out) {
        tracing::error!("cannot encode a reply: {e}");
        return Ok(());
    }
    link.send(&out)
}

/// Where a check that finishes on another thread sends its reply: the connection's queue,
/// and the socket that wakes the connection thread.
#[derive(Clone)]
struct Done {
    tx: Sender<(u64, Reply)>,
    wake: Arc<std::os::unix::net::UnixStream>,
}

impl Done {
    fn send(&self, answer: (u64, Reply)) {
        if self.tx.send(answer).is_ok() {
            let _ = std::io::Write::write(&mut &*self.wake, &[1]);
        }
    }
}

/// Answers a request now, or queues a login's password check on the pool (answered later
/// through `done`).
fn handle(
    shared: &Arc<Shared>,
    id: u64,
    request: Request,
    peer: &PeerInfo,
    done: &Done,
) -> Option<(u64, Reply)> {
    let Request::Login(login) = request else {
        let reply = shared.broker.lock().handle(request, peer, Now::read());
        return Some((id, reply));
    };
    if peer.role != Role::Gateway {
        // Let the core produce its refusal for a login from the wrong role.
        let reply = shared
            .broker
            .lock()
            .handle(Request::Login(login), peer, Now::read());
        return Some((id, reply));
    }
    let pending = match shared.broker.lock().begin_login(&login, peer, Now::read()) {
        Ok(p) => p,
        Err(reply) => return Some((id, reply)),
    };
    let credentials = shared.credentials.lock().clone();
    if credentials.route(&login.user) == CheckRoute::Directory {
        return directory_check(shared, credentials, id, login, pending, peer, done);
    }
    let peer_name = peer.node.clone();
    let broker = shared.broker.clone();
    let peer = peer.clone();
    let done = done.clone();
    // Past this the gateway has answered its client (504): a check started later is work
    // for nobody, and in a logon storm it would push every later login past its own.
    let give_up = login
        .wait_ms
        .map(|ms| Instant::now() + Duration::from_millis(u64::from(ms)));
    let job: HashJob = Box::new(move || {
        if give_up.is_some_and(|at| Instant::now() >= at) {
            tracing::info!(node = %peer.node, user = %login.user, "login not checked: the gateway stopped waiting while it was queued");
            let detail = "the gateway stopped waiting before the password check began";
            let reply = broker.lock().abandon_login(pending, detail, &peer, Now::read());
            done.send((id, reply));
            return;
        }
        let outcome = credentials.check(&login.user, login.password.expose());
        let reply = broker.lock().finish_login(pending, outcome, &peer, Now::read());
        done.send((id, reply));
    });
    if let Err((_, why)) = shared.hash_jobs.push(&peer_name, job) {
        let detail = why.detail();
        if let Some(also) = shared.hash_refusals.lock().admit_line() {
            tracing::warn!(node = %peer_name, queued = shared.hash_jobs.len(), refused_since_last_line = also, "login refused: {detail}");
        }
        return Some((
            id,
            Reply::Refused(gatehouse_control::message::Refused::with_detail(
                gatehouse_control::message::RefusalReason::Internal,
                detail,
            )),
        ));
    }
    None
}

/// Checks a directory user's password on a thread of its own, so that a slow or unreachable
/// directory holds neither the hash pool (local users) nor the connection thread; at most
/// `[ldap] max_pending` at once, beyond which the login is refused `directory_unavailable`
/// at once. The answer comes back through `done`.
fn directory_check(
    shared: &Arc<Shared>,
    credentials: Credentials,
    id: u64,
    login: gatehouse_control::message::Login,
    pending: PendingLogin,
    peer: &PeerInfo,
    done: &Done,
) -> Option<(u64, Reply)> {
    let max = credentials.directory().map_or(1, |d| d.settings().max_pending);
    let user = login.user.clone();
    let refuse_now = |pending: PendingLogin, why: String| {
        tracing::warn!(node = %peer.node, user = %user, "directory check not started: {why}");
        let reply =
            shared
                .broker
                .lock()
                .finish_login(pending, AuthOutcome::Unavailable(why), peer, Now::read());
        Some((id, reply))
    };
    if shared.directory_checks.fetch_add(1, Ordering::SeqCst) >= max {
        shared.directory_checks.fetch_sub(1, Ordering::SeqCst);
        return refuse_now(pending, format!("{max} directory checks already in flight"));
    }
    let job_shared = shared.clone();
    let job_peer = peer.clone();
    let job_done = done.clone();
    // The pending login moves into the thread; keep a copy to answer if it cannot start.
    let fallback = pending.clone();
    let spawned = std::thread::Builder::new()
        .name("broker-ldap".into())
        .spawn(move || {
            let outcome = credentials.check(&login.user, login.password.expose());
            if let AuthOutcome::Unavailable(why) = &outcome {
                tracing::warn!(node = %job_peer.node, user = %login.user, "directory unavailable: {why}");
            }
            let reply = job_shared
                .broker
                .lock()
                .finish_login(pending, outcome, &job_peer, Now::read());
            job_shared.directory_checks.fetch_sub(1, Ordering::SeqCst);
            job_done.send((id, reply));
        });
    match spawned {
        Ok(_) => None,
        Err(e) => {
            shared.directory_checks.fetch_sub(1, Ordering::SeqCst);
            refuse_now(fallback, format!("cannot start a directory check thread: {e}"))
        }
    }
}

impl ControlRoles {
    /// Adds the broker's counters to the node's /metrics.
    pub fn register_metrics(&self, node: &crate::shared::Shared) {
        if let Some(server) = &self.broker {
            let metrics = server.metrics();
            node.add_metrics_source(Box::new(move |out: &mut String| metrics.render(out)));
        }
    }

    /// SIGHUP (the node's reload, after the new config validated): reloads the broker's farm
    /// file, users file and LDAP settings. `Err` refuses the whole reload and the previous
    /// farm keeps serving; `Ok` may carry a note on what changes only at the next restart.
    pub fn reload(&self, config: &Config) -> Result<Option<String>, String> {
        match (&self.broker, &config.broker) {
            (Some(server), Some(section)) => server.reload(section),
            (None, Some(_)) => Ok(Some("the broker starts at the next restart".into())),
            (Some(_), None) => Ok(Some("the broker stops at the next restart".into())),
            (None, None) => Ok(None),
        }
    }
}

/// Every second: expiry work in the core, and a reload of the users file when it changed.
fn ticker(shared: Arc<Shared>) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut users_file = shared.users_file.lock().clone();
    let mut seen: Option<SystemTime> = mtime(&users_file);
    let mut next = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + Duration::from_secs(1);
        shared.broker.lock().tick(Now::read());
        let current = shared.users_file.lock().clone();
        if current != users_file {
            // A farm reload switched files and loaded the new one already.
            users_file = current;
            seen = mtime(&users_file);
        }
        let now_mtime = mtime(&users_file);
        if now_mtime != seen {
            seen = now_mtime;
            match (UserDb::load_or_new(&users_file), UserDb::load_or_new(&users_file)) {
                (Ok(a), Ok(b)) => {
                    let n = a.len();
                    shared.broker.lock().replace_users(a);
                    let mut credentials = shared.credentials.lock();
                    *credentials = credentials.with_local(Arc::new(b));
                    tracing::info!(users = n, "users file reloaded");
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!("users file not reloaded, the previous users stay: {e}")
                }
            }
        }
    }
}
