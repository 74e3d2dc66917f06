//! The broker's shell: listeners for gateways (20002) and host agents (20003), a thread per
//! connection, a small pool that checks passwords off the connection threads, and a ticker
//! that expires state and reloads the users file when it changes.
//!
//! Threads with blocking sockets rather than mio: a broker serves a few gateways and a few
//! hundred host agents, each sending a handful of frames a second, and the expensive work
//! (argon2id) runs on the pool anyway; a thread per connection keeps the TLS, hello and
//! keepalive handling straight-line. Every decision is `gatehouse_control::broker::Broker`'s.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use rustls::ServerConfig;

use gatehouse_control::broker::{Broker, BrokerSetup, Farm, JsonLinesAudit, Now, PeerInfo, UserDb};
use gatehouse_control::frame::{KeepaliveConfig, Role};
use gatehouse_control::message::{self, Event, Inbound, Reply, Request};

use super::link::{our_hello, Link};
use super::BrokerSection;

/// How long a gateway's connection thread waits for bytes before looking at its queue of
/// finished logins: the most a login answer waits after its hash is done.
const POLL_PERIOD: Duration = Duration::from_millis(10);
/// The same for host agents, which have nothing queued: only the stop flag waits on it.
const AGENT_POLL_PERIOD: Duration = Duration::from_millis(200);
/// Password checks queued at most; beyond, logins are refused `internal` at once rather
/// than queued for longer than any gateway waits.
const MAX_QUEUED_HASHES: usize = 1024;
/// Connections held at once; beyond, new ones are closed at accept (a flood of half-open
/// TLS handshakes must not cost a thread each without bound).
const MAX_CONNECTIONS: usize = 4096;

/// A password check queued for the pool.
type HashJob = Box<dyn FnOnce() + Send>;

/// A running broker.
pub struct BrokerServer {
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    broker: Arc<Mutex<Broker>>,
    /// The address gateways connect to.
    pub gateway_addr: SocketAddr,
    /// The address host agents connect to.
    pub agent_addr: SocketAddr,
}

struct Shared {
    broker: Arc<Mutex<Broker>>,
    /// The users the pool checks passwords against (replaced on reload).
    users: Mutex<Arc<UserDb>>,
    hash_jobs: Sender<HashJob>,
    tls: Arc<ServerConfig>,
    node: String,
    keepalive: KeepaliveConfig,
    stop: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    /// Connection threads running.
    connections: AtomicUsize,
}

impl BrokerServer {
    /// Loads the farm, users and keys, binds both listeners and starts every thread.
    pub fn start(section: &BrokerSection, node: &str) -> Result<BrokerServer, String> {
        let farm = Arc::new(Farm::load(&section.farm_file).map_err(|e| e.to_string())?);
        let users = UserDb::load_or_new(&section.users_file).map_err(|e| e.to_string())?;
        let pool_users = Arc::new(UserDb::load_or_new(&section.users_file).map_err(|e| e.to_string())?);
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
        let (job_tx, job_rx) = crossbeam_channel::bounded::<HashJob>(MAX_QUEUED_HASHES);
        let shared = Arc::new(Shared {
            broker: broker.clone(),
            users: Mutex::new(pool_users),
            hash_jobs: job_tx,
            tls,
            node: node.to_string(),
            keepalive: KeepaliveConfig {
                interval: section.ping_interval.get(),
                timeout: section.ping_timeout.get(),
            },
            stop: stop.clone(),
            draining: draining.clone(),
            connections: AtomicUsize::new(0),
        });
        let mut threads = Vec::new();
        for i in 0..section.hash_threads.max(1) {
            let rx = job_rx.clone();
            threads.push(spawn(&format!("broker-hash-{i}"), move || {
                for job in rx {
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
        let users_file = section.users_file.clone();
        let ticker_shared = shared.clone();
        threads.push(spawn("broker-ticker", move || ticker(ticker_shared, users_file))?);
        tracing::info!(%gateway_addr, %agent_addr, node, "broker listening");
        Ok(BrokerServer {
            stop,
            draining,
            threads,
            broker,
            gateway_addr,
            agent_addr,
        })
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
        // Give connection threads a few poll periods to send the event.
        std::thread::sleep(POLL_PERIOD * 5);
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            // The hash pool ends when every sender is gone, i.e. after the other threads.
            if t.thread().name().is_some_and(|n| n.starts_with("broker-hash")) {
                continue;
            }
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

fn accept_loop(listener: TcpListener, role: Role, shared: Arc<Shared>) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!("broker listener: {e}");
        return;
    }
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((sock, addr)) => {
                if shared.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    shared.connections.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(%addr, "connection refused: {MAX_CONNECTIONS} connections held");
                    continue;
                }
                let conn_shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("broker-conn-{addr}"))
                    .spawn(move || {
                        connection(sock, addr, role, &conn_shared);
                        conn_shared.connections.fetch_sub(1, Ordering::SeqCst);
                    });
                if let Err(e) = spawned {
                    shared.connections.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!(%addr, "cannot start a connection thread: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                tracing::warn!("broker accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn connection(sock: TcpStream, addr: SocketAddr, role: Role, shared: &Arc<Shared>) {
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
    let mut link = match Link::establish(sock, tls, &hello, role, shared.keepalive) {
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
    let peer = PeerInfo {
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
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(u64, Reply)>();
    let mut told_draining = false;
    let end = loop {
        if shared.stop.load(Ordering::Relaxed) {
            break None;
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
        let period = if role == Role::Gateway {
            POLL_PERIOD
        } else {
            AGENT_POLL_PERIOD
        };
        let frames = match link.poll(period) {
            Ok(f) => f,
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
                if let Err(e) = send_reply(&mut link, id, &reply) {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            while let Ok((id, reply)) = done_rx.try_recv() {
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

/// Answers a request now, or queues a login's password check on the pool (answered later
/// through `done`).
fn handle(
    shared: &Arc<Shared>,
    id: u64,
    request: Request,
    peer: &PeerInfo,
    done: &Sender<(u64, Reply)>,
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
    let users = shared.users.lock().clone();
    let peer_name = peer.node.clone();
    let broker = shared.broker.clone();
    let peer = peer.clone();
    let done = done.clone();
    let job: HashJob = Box::new(move || {
        let outcome = users.verify(&login.user, login.password.expose());
        let reply = broker.lock().finish_login(pending, outcome, &peer, Now::read());
        let _ = done.send((id, reply));
    });
    if let Err(e) = shared.hash_jobs.try_send(job) {
        let detail = match e {
            crossbeam_channel::TrySendError::Full(_) => "too many password checks queued",
            crossbeam_channel::TrySendError::Disconnected(_) => "password checker stopped",
        };
        tracing::warn!(node = %peer_name, "login refused: {detail}");
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

/// Every second: expiry work in the core, and a reload of the users file when it changed.
fn ticker(shared: Arc<Shared>, users_file: PathBuf) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = mtime(&users_file);
    let mut next = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + Duration::from_secs(1);
        shared.broker.lock().tick(Now::read());
        let now_mtime = mtime(&users_file);
        if now_mtime != seen {
            seen = now_mtime;
            match (UserDb::load_or_new(&users_file), UserDb::load_or_new(&users_file)) {
                (Ok(a), Ok(b)) => {
                    let n = a.len();
                    shared.broker.lock().replace_users(a);
                    *shared.users.lock() = Arc::new(b);
                    tracing::info!(users = n, "users file reloaded");
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!("users file not reloaded, the previous users stay: {e}")
                }
            }
        }
    }
}
