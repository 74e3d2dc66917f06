//! One proxied connection, from accept to close.
//!
//! Owns the session's sockets and its pipeline state machine:
//! `Reading` (a PROXY v2 header from a trusted forwarder, or a check that an untrusted client
//! does not send one) -> on TLS listeners `Hello` (the ClientHello, read without
//! terminating) and, when offloading, `Handshake` (rustls) -> `Connecting` (to a backend
//! picked by the pool's balancer, retrying the next one within the budget) -> `Tunnel` (two
//! [`Flow`]s, splice-capable) or `TlsTunnel` (two `TlsDirection`s, when the client or the
//! backend speaks TLS). Each state holds only what it needs; a transition consumes the old
//! one. The TLS phases live in `session_tls.rs`. The worker owns the event loop and calls in
//! here with readiness and time; this module decides and moves bytes, nothing else.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use socket2::SockRef;

use super::flow::{End, Flow, FlowError, Pools, Ready};
use super::source_ports::SourcePorts;
use super::tls_conn::TlsConn;
use super::tls_flow::TlsDirection;
use crate::balance::{Balancer, Candidate};
use crate::broker_role::AnswerSink;
use crate::cidr::Cidr;
use crate::config::TlsMode;
use crate::gateway::path::{GatewayPath, PP2_TYPE_GATEWAY_PATH};
use crate::metrics::CloseReason;
use crate::proxy_protocol::{self, Parsed, ProxyHeader, SIGNATURE};
use crate::shared::{admits, BackendRuntime, ControlEvent, ListenerRole, PoolPlan, Shared};
use crate::tls::server::ServerTls;

#[path = "session_tls.rs"]
mod tls_phases;

#[path = "session_gateway.rs"]
mod gateway_front;

pub use gateway_front::{answer_tag, split_tag, FixedTarget, Front};

/// Largest PROXY v2 header accepted (16-byte fixed part plus addresses and TLVs).
pub const MAX_PROXY_HEADER: usize = 4096;

/// What the worker should do after a session step.
#[derive(Debug)]
pub enum Step {
    /// Keep going.
    Continue,
    /// Close the session for this reason (with a detail for the log line).
    Close(CloseReason, String),
}

/// What the session is doing now.
pub enum Phase {
    /// Reading the first client bytes before choosing a backend.
    Reading(Reading),
    /// Waiting for a backend to accept.
    Connecting(Connecting),
    /// Moving bytes both ways.
    Tunnel(Tunnel),
    /// Reading the ClientHello on a TLS listener: to route it (passthrough), to choose a
    /// certificate (offload), or to tell TLS from plain bytes (auto).
    Hello(Hello),
    /// Terminating TLS: the handshake with the client.
    Handshake(Handshake),
    /// Moving bytes both ways, TLS records with the client, plain with the backend.
    TlsTunnel(TlsTunnel),
    /// A gateway's front: sniffing, the client API, waiting for the broker (issue 5).
    Front(Front),
    /// Being torn down (transient, while the worker closes it).
    Closed,
}

/// Why the first bytes are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// A trusted forwarder: a PROXY v2 header must come first.
    ExpectProxy,
    /// Anyone else on a listener that accepts PROXY: a header from them is refused.
    RefuseProxy,
}

/// State while reading first bytes.
pub struct Reading {
    mode: ReadMode,
    buf: Vec<u8>,
    deadline: Instant,
}

/// State while a backend connect is under way.
pub struct Connecting {
    sock: TcpStream,
    ready: Ready,
    backend: BackendRef,
    tried: Vec<usize>,
    early: Vec<u8>,
    deadline: Instant,
}

/// State of an established tunnel.
pub struct Tunnel {
    backend_sock: TcpStream,
    backend_ready: Ready,
    backend: BackendRef,
    up: Flow,
    down: Flow,
}

/// State while the ClientHello arrives.
pub struct Hello {
    buf: Vec<u8>,
    deadline: Instant,
}

/// State while the TLS handshake with the client is under way.
pub struct Handshake {
    conn: Box<TlsConn>,
    deadline: Instant,
}

/// State of an established tunnel where the client (offload), the backend (re-encryption)
/// or both speak TLS.
pub struct TlsTunnel {
    backend_sock: TcpStream,
    backend_ready: Ready,
    backend: BackendRef,
    client_tls: Option<Box<TlsConn>>,
    backend_tls: Option<Box<TlsConn>>,
    up: TlsDirection,
    down: TlsDirection,
}

/// The backend a session holds a slot on.
#[derive(Clone)]
pub struct BackendRef {
    /// Index in the pool (for retries).
    pub index: usize,
    /// Backend name.
    pub name: Arc<str>,
    /// Its address.
    pub address: SocketAddr,
    /// Its shared counters (the session holds one `active` slot).
    pub runtime: Arc<BackendRuntime>,
}

/// Per-listener settings a session needs: built once per listener and snapshot, shared by
/// its sessions, so an accept copies nothing and a reload does not touch sessions.
#[derive(Clone)]
pub struct SessionSettings {
    /// Listener name.
    pub listener: Arc<str>,
    /// Handshake (first bytes) timeout.
    pub handshake_timeout: Duration,
    /// Per-attempt connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout of the tunnel.
    pub idle_timeout: Duration,
    /// TCP keepalive idle time.
    pub keepalive: Duration,
    /// Use splice(2).
    pub splice: bool,
    /// Per-source limit (0: none).
    pub max_per_source: u32,
    /// TLS mode of the listener.
    pub tls: TlsMode,
    /// Server configuration of a terminating listener (from the snapshot at accept).
    pub server_tls: Option<Arc<ServerTls>>,
    /// Passthrough routes: server-name pattern and pool, first match wins.
    pub sni_routes: Vec<(String, Arc<PoolPlan>)>,
    /// What the listener does with connections (balance, forward, gateway front).
    pub role: ListenerRole,
    /// Client addresses allowed (empty: all) and refused.
    pub allow: Vec<Cidr>,
    /// Client addresses refused (checked first).
    pub deny: Vec<Cidr>,
    /// Sources that must (and alone may) send a PROXY v2 header.
    pub trusted_proxies: Vec<Cidr>,
}

/// Worker resources a session step may use.
pub struct Ctx<'a> {
    /// Poll registry.
    pub registry: &'a Registry,
    /// Buffer and pipe pools.
    pub pools: Pools<'a>,
    /// Node-wide state.
    pub shared: &'a Shared,
    /// Loop time.
    pub now: Instant,
    /// Scratch space for balancer candidates.
    pub candidates: &'a mut Vec<Candidate>,
    /// Where broker answers for this worker's sessions go (gateway fronts).
    pub answers: &'a AnswerSink,
    /// Source ports of backend connects.
    pub ports: &'a mut SourcePorts,
}

/// One proxied connection.
pub struct Session {
    /// Distinguishes this session from earlier users of the same slab slot.
    pub serial: u64,
    /// Slab key (tokens are `2*key` for the client and `2*key+1` for the backend).
    pub key: usize,
    client: TcpStream,
    client_ready: Ready,
    /// TCP peer address.
    pub peer: SocketAddr,
    /// The real client (from a PROXY header when a trusted forwarder sent one).
    pub client_addr: SocketAddr,
    /// Settings of the listener that accepted it.
    pub settings: Arc<SessionSettings>,
    pool: Arc<PoolPlan>,
    /// Phase of the pipeline.
    pub phase: Phase,
    /// When accepted.
    pub started: Instant,
    last_activity: Instant,
    /// Address holding a per-source slot, released at close.
    pub source_slot: Option<IpAddr>,
    /// Tick of the earliest timer entry scheduled for this session.
    pub armed_tick: Option<u64>,
    /// Bytes client -> backend, backend -> client (final counts).
    pub bytes: (u64, u64),
    /// Name and address of the backend, once chosen (for the close log line).
    pub backend_label: Option<(Arc<str>, SocketAddr)>,
    /// The client's TLS connection between the end of its handshake and the tunnel: held
    /// only while `Connecting` (which retries backends without knowing about TLS).
    handshaken: Option<Box<TlsConn>>,
    /// A gateway session's one destination (a host the broker chose): no balancer, no retry.
    fixed: Option<FixedTarget>,
    /// The gateway path to send to the next hop (forwarding listeners), encoded.
    gateway_path: Option<Vec<u8>>,
}

/// Token of a session's client socket.
pub fn client_token(key: usize) -> Token {
    Token(key * 2)
}

/// Token of a session's backend socket.
pub fn backend_token(key: usize) -> Token {
    Token(key * 2 + 1)
}

impl Session {
    /// A new session for an accepted client; registers the client socket.
    #[allow(clippy::too_many_arguments)]
    pub fn accept(
        key: usize,
        serial: u64,
        mut client: TcpStream,
        peer: SocketAddr,
        settings: Arc<SessionSettings>,
        pool: Arc<PoolPlan>,
        ctx: &mut Ctx<'_>,
    ) -> io::Result<(Session, Step)> {
        ctx.registry.register(
            &mut client,
            client_token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        // TCP_NODELAY and keepalive are inherited from the listening socket (set once at
        // bind), so an accepted client costs no setsockopt calls.
        let mode = if settings.trusted_proxies.iter().any(|c| c.contains(peer.ip())) {
            Some(ReadMode::ExpectProxy)
        } else if !settings.trusted_proxies.is_empty() {
            Some(ReadMode::RefuseProxy)
        } else {
            None
        };
        let mut session = Session {
            serial,
            key,
            client,
            client_ready: Ready::default(),
            peer,
            client_addr: peer,
            settings,
            pool,
            phase: Phase::Closed,
            started: ctx.now,
            last_activity: ctx.now,
            source_slot: None,
            armed_tick: None,
            bytes: (0, 0),
            backend_label: None,
            handshaken: None,
            fixed: None,
            gateway_path: None,
        };
        if mode != Some(ReadMode::ExpectProxy)
            && !admits(&session.settings.allow, &session.settings.deny, peer.ip())
        {
            let detail = format!("{} is not allowed on this listener (allow/deny)", peer.ip());
            return Ok((session, Step::Close(CloseReason::AddressDenied, detail)));
        }
        let step = match mode {
            Some(mode) => {
                session.phase = Phase::Reading(Reading {
                    mode,
                    buf: Vec::new(),
                    deadline: ctx.now + session.settings.handshake_timeout,
                });
                Step::Continue
            }
            None => match session.take_source_slot(ctx) {
                Step::Continue => session.begin(Vec::new(), None, ctx),
                close => close,
            },
        };
        Ok((session, step))
    }

    /// Records readiness from a poller event on one of the session's sockets.
    pub fn on_ready(
        &mut self,
        backend_side: bool,
        readable: bool,
        writable: bool,
        read_closed: bool,
        error: bool,
    ) {
        let ready = if backend_side {
            match &mut self.phase {
                Phase::Connecting(c) => &mut c.ready,
                Phase::Tunnel(t) => &mut t.backend_ready,
                Phase::TlsTunnel(t) => &mut t.backend_ready,
                _ => return,
            }
        } else {
            &mut self.client_ready
        };
        ready.readable |= readable;
        ready.writable |= writable;
        ready.read_closed |= read_closed;
        ready.error |= error;
    }

    /// Drives the state machine as far as readiness allows.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Step {
        loop {
            let phase = std::mem::replace(&mut self.phase, Phase::Closed);
            let (phase, step, again) = match phase {
                Phase::Reading(r) => self.drive_reading(r, ctx),
                Phase::Connecting(c) => self.drive_connecting(c, ctx),
                Phase::Tunnel(t) => self.drive_tunnel(t, ctx),
                Phase::Hello(h) => self.drive_hello(h, ctx),
                Phase::Handshake(h) => self.drive_handshake(h, ctx),
                Phase::TlsTunnel(t) => self.drive_tls_tunnel(t, ctx),
                Phase::Front(f) => self.drive_front(f, ctx),
                Phase::Closed => (Phase::Closed, Step::Continue, false),
            };
            self.phase = phase;
            if !matches!(step, Step::Continue) || !again {
                return step;
            }
        }
    }

    /// The earliest deadline of the current phase.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Reading(r) => Some(r.deadline),
            Phase::Connecting(c) => Some(c.deadline),
            Phase::Hello(h) => Some(h.deadline),
            Phase::Handshake(h) => Some(h.deadline),
            Phase::Front(f) => Some(Self::front_deadline(f)),
            Phase::TlsTunnel(t) => {
                // A backend's TLS handshake is bounded like its connect.
                let timeout = if t.backend_handshaking() {
                    self.settings.connect_timeout
                } else {
                    self.settings.idle_timeout
                };
                let deadline = self.last_activity + timeout;
                Some(t.tickets_held_until().map_or(deadline, |held| held.min(deadline)))
            }
            Phase::Tunnel(_) => Some(self.last_activity + self.settings.idle_timeout),
            Phase::Closed => None,
        }
    }

    /// Called when a timer entry for this session fires.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>) -> Step {
        let now = ctx.now;
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        match phase {
            Phase::Reading(r) if now >= r.deadline => {
                if r.mode == ReadMode::RefuseProxy {
                    // A client that says nothing is not sending a PROXY header: let the
                    // backend speak first if the protocol wants it.
                    return match self.take_source_slot(ctx) {
                        Step::Continue => self.begin(r.buf, None, ctx),
                        close => close,
                    };
                }
                Step::Close(
                    CloseReason::HandshakeTimeout,
                    format!(
                        "no complete PROXY header after {:?} ({} bytes)",
                        self.settings.handshake_timeout,
                        r.buf.len()
                    ),
                )
            }
            Phase::Front(f) if now >= Self::front_deadline(&f) => self.front_timeout(f, ctx),
            Phase::Connecting(c) if now >= c.deadline => {
                let detail = format!("connect timeout after {:?}", self.settings.connect_timeout);
                self.connect_failed(c, detail, ctx)
            }
            Phase::Hello(h) if now >= h.deadline => {
                ctx.shared.metrics.count_tls_refused("handshake_timeout");
                Step::Close(
                    CloseReason::HandshakeTimeout,
                    format!(
                        "no complete ClientHello after {:?} ({} bytes)",
                        self.settings.handshake_timeout,
                        h.buf.len()
                    ),
                )
            }
            Phase::Handshake(h) if now >= h.deadline => {
                ctx.shared.metrics.count_tls_refused("handshake_timeout");
                Step::Close(
                    CloseReason::HandshakeTimeout,
                    format!(
                        "TLS handshake not finished after {:?}",
                        self.settings.handshake_timeout
                    ),
                )
            }
            Phase::TlsTunnel(mut t) if t.tickets_held_until().is_some_and(|held| now >= held) => {
                // No answer came for the tickets to travel with: they go alone.
                t.release_tickets();
                self.phase = Phase::TlsTunnel(t);
                Step::Continue
            }
            Phase::TlsTunnel(t)
                if t.backend_handshaking() && now >= self.last_activity + self.settings.connect_timeout =>
            {
                let detail = format!(
                    "TLS handshake with backend {} ({}) not finished after {:?}",
                    t.backend.name, t.backend.address, self.settings.connect_timeout
                );
                self.phase = Phase::TlsTunnel(t);
                Step::Close(CloseReason::BackendTlsError, detail)
            }
            Phase::TlsTunnel(t) if now >= self.last_activity + self.settings.idle_timeout => {
                self.phase = Phase::TlsTunnel(t);
                Step::Close(
                    CloseReason::IdleTimeout,
                    format!("no bytes either way for {:?}", self.settings.idle_timeout),
                )
            }
            Phase::Tunnel(t) if now >= self.last_activity + self.settings.idle_timeout => {
                self.phase = Phase::Tunnel(t);
                Step::Close(
                    CloseReason::IdleTimeout,
                    format!("no bytes either way for {:?}", self.settings.idle_timeout),
                )
            }
            other => {
                self.phase = other;
                Step::Continue
            }
        }
    }

    fn take_source_slot(&mut self, ctx: &mut Ctx<'_>) -> Step {
        if self.settings.max_per_source == 0 {
            return Step::Continue;
        }
        let ip = self.client_addr.ip();
        if ctx.shared.sources.try_acquire(ip, self.settings.max_per_source) {
            self.source_slot = Some(ip);
            Step::Continue
        } else {
            Step::Close(
                CloseReason::SourceLimit,
                format!("{ip} already holds {} connections", self.settings.max_per_source),
            )
        }
    }

    fn drive_reading(&mut self, mut r: Reading, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        let limit = match r.mode {
            ReadMode::ExpectProxy => MAX_PROXY_HEADER,
            ReadMode::RefuseProxy => SIGNATURE.len(),
        };
        let mut eof = false;
        while self.client_ready.readable && r.buf.len() < limit {
            let mut chunk = [0u8; 512];
            let want = (limit - r.buf.len()).min(chunk.len());
            match (&self.client).read(&mut chunk[..want]) {
                Ok(0) => {
                    // A request followed by FIN: route what was read; the tunnel reads this
                    // EOF again (readiness stays set) and carries the half-close.
                    eof = true;
                    self.client_ready.read_closed = true;
                    break;
                }
                Ok(n) => r.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.client_ready.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return (
                        Phase::Closed,
                        Step::Close(CloseReason::ClientError, e.to_string()),
                        false,
                    )
                }
            }
        }
        if eof && r.buf.is_empty() {
            let step = Step::Close(CloseReason::Done, "client closed before sending anything".into());
            return (Phase::Closed, step, false);
        }
        match r.mode {
            ReadMode::ExpectProxy => match proxy_protocol::parse_with_limit(&r.buf, MAX_PROXY_HEADER) {
                Ok(Parsed::Incomplete { .. }) => {
                    if eof {
                        let detail = format!("client closed after {} bytes of a PROXY header", r.buf.len());
                        return (
                            Phase::Closed,
                            Step::Close(CloseReason::ProxyHeaderInvalid, detail),
                            false,
                        );
                    }
                    if r.buf.len() >= MAX_PROXY_HEADER {
                        let step =
                            Step::Close(CloseReason::ProxyHeaderInvalid, "PROXY header too long".into());
                        return (Phase::Closed, step, false);
                    }
                    (Phase::Reading(r), Step::Continue, false)
                }
                Ok(Parsed::Complete { header, consumed }) => {
                    if let Some(src) = header.source() {
                        self.client_addr = src;
                    }
                    if !admits(&self.settings.allow, &self.settings.deny, self.client_addr.ip()) {
                        let detail = format!(
                            "{} (via {}) is not allowed on this listener (allow/deny)",
                            self.client_addr.ip(),
                            self.peer
                        );
                        return (
                            Phase::Closed,
                            Step::Close(CloseReason::AddressDenied, detail),
                            false,
                        );
                    }
                    let rest = r.buf[consumed..].to_vec();
                    match self.take_source_slot(ctx) {
                        Step::Continue => {}
                        close => return (Phase::Closed, close, false),
                    }
                    let step = self.begin(rest, header.tlv(PP2_TYPE_GATEWAY_PATH), ctx);
                    let phase = std::mem::replace(&mut self.phase, Phase::Closed);
                    (phase, step, true)
                }
                Err(e) => (
                    Phase::Closed,
                    Step::Close(
                        CloseReason::ProxyHeaderInvalid,
                        format!("bad PROXY v2 header from trusted {}: {e}", self.peer),
                    ),
                    false,
                ),
            },
            ReadMode::RefuseProxy => {
                let n = r.buf.len().min(SIGNATURE.len());
                if r.buf[..n] != SIGNATURE[..n] {
                    // Not a PROXY header: route it.
                } else if n == SIGNATURE.len() {
                    let step = Step::Close(
                        CloseReason::ProxyHeaderUntrusted,
                        format!(
                            "PROXY header from {}, which is not in accept_proxy_from",
                            self.peer
                        ),
                    );
                    return (Phase::Closed, step, false);
                } else if !eof {
                    // Could still become a signature; wait (bounded by the handshake timeout).
                    return (Phase::Reading(r), Step::Continue, false);
                }
                match self.take_source_slot(ctx) {
                    Step::Continue => {}
                    close => return (Phase::Closed, close, false),
                }
                let step = self.begin(r.buf, None, ctx);
                let phase = std::mem::replace(&mut self.phase, Phase::Closed);
                (phase, step, true)
            }
        }
    }

    /// The first bytes a listener must read before routing are in (a PROXY header, or none):
    /// TLS listeners read a ClientHello next, others connect. Sets `self.phase`.
    fn begin(&mut self, early: Vec<u8>, path: Option<&[u8]>, ctx: &mut Ctx<'_>) -> Step {
        if let Err(step) = self.enter_path(path, ctx) {
            return step;
        }
        if self.settings.tls == TlsMode::Off {
            if matches!(self.settings.role, ListenerRole::Front { .. }) {
                let (phase, step, _) = self.start_front(None, early, ctx);
                self.phase = phase;
                return step;
            }
            return self.start_connect(Vec::new(), early, ctx);
        }
        self.phase = Phase::Hello(Hello {
            buf: early,
            deadline: ctx.now + self.settings.handshake_timeout,
        });
        Step::Continue
    }

    /// Gateway listeners: checks the path of gateways a connection passed (from a trusted
    /// forwarder's PROXY header): this gateway must not be in it (a loop) and it must be
    /// shorter than `max_path`. A forwarding listener sends the path with itself appended.
    fn enter_path(&mut self, tlv: Option<&[u8]>, ctx: &mut Ctx<'_>) -> Result<(), Step> {
        if self.settings.role == ListenerRole::Balance {
            return Ok(());
        }
        let Some(gateway) = ctx.shared.gateway() else {
            return Ok(());
        };
        let refuse = |e: crate::gateway::path::PathError| {
            Step::Close(
                CloseReason::PathRefused,
                format!("gateway path refused ({}): {e}", e.reason()),
            )
        };
        let path = match tlv {
            Some(value) => GatewayPath::decode(value).map_err(refuse)?,
            None => GatewayPath::empty(),
        };
        let entered = path.enter(&gateway.id, gateway.max_path).map_err(refuse)?;
        if self.settings.role == ListenerRole::Forward {
            self.gateway_path = Some(entered.encode());
        }
        Ok(())
    }

    /// Picks a backend (skipping `tried`) and starts a connect; sets `self.phase`.
    pub(super) fn start_connect(&mut self, mut tried: Vec<usize>, early: Vec<u8>, ctx: &mut Ctx<'_>) -> Step {
        loop {
            self.pool.candidates(ctx.candidates);
            let picked = BALANCERS.with(|b| {
                let mut map = b.borrow_mut();
                let pool = &self.pool;
                let stale = map
                    .get(pool.name.as_str())
                    .is_none_or(|b| b.algorithm() != pool.algorithm);
                if stale {
                    map.insert(
                        pool.name.clone(),
                        Balancer::new(pool.algorithm, pool.backends.len()),
                    );
                }
                let balancer = map.get_mut(pool.name.as_str()).expect("inserted above");
                balancer.pick(ctx.candidates, self.client_addr.ip(), &tried)
            });
            let Some(index) = picked else {
                self.phase = Phase::Closed;
                return if tried.is_empty() {
                    Step::Close(
                        CloseReason::NoBackend,
                        format!("no backend of pool {:?} is up", self.pool.name),
                    )
                } else {
                    Step::Close(
                        CloseReason::ConnectFailed,
                        format!("all {} attempts failed in pool {:?}", tried.len(), self.pool.name),
                    )
                };
            };
            let plan = &self.pool.backends[index];
            if !reserve(&plan.runtime, plan.max_connections) {
                tried.push(index);
                continue;
            }
            plan.runtime.total.fetch_add(1, Ordering::Relaxed);
            let backend = BackendRef {
                index,
                name: plan.name.clone(),
                address: plan.address,
                runtime: plan.runtime.clone(),
            };
            self.backend_label = Some((backend.name.clone(), backend.address));
            let mut payload = Vec::new();
            if self.pool.send_proxy {
                // Both addresses are concrete, so encoding cannot fail.
                // The local address is only needed here, so it is only asked for here.
                let local = self.client.local_addr().unwrap_or(self.peer);
                let mut header = ProxyHeader::proxy(self.client_addr, local);
                if let Some(path) = &self.gateway_path {
                    header = header.with_tlv(PP2_TYPE_GATEWAY_PATH, path.clone());
                }
                let _ = header.encode(&mut payload);
            }
            payload.extend_from_slice(&early);
            match ctx.ports.connect(backend.address) {
                Ok(mut sock) => {
                    tune_backend_socket(&sock, self.settings.keepalive);
                    if let Err(e) = ctx.registry.register(
                        &mut sock,
                        backend_token(self.key),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        backend.runtime.active.fetch_sub(1, Ordering::Relaxed);
                        self.phase = Phase::Closed;
                        return Step::Close(CloseReason::BackendError, format!("register: {e}"));
                    }
                    self.phase = Phase::Connecting(Connecting {
                        sock,
                        ready: Ready::default(),
                        backend,
                        tried,
                        early,
                        deadline: ctx.now + self.settings.connect_timeout,
                    });
                    // The PROXY header is rebuilt per attempt; keep it with the early bytes.
                    if let Phase::Connecting(c) = &mut self.phase {
                        c.early = payload;
                    }
                    return Step::Continue;
                }
                Err(e) if is_out_of_files(&e) => {
                    backend.runtime.active.fetch_sub(1, Ordering::Relaxed);
                    self.phase = Phase::Closed;
                    return Step::Close(
                        CloseReason::OutOfFiles,
                        format!("cannot open a backend socket: {e}"),
                    );
                }
                Err(e) => {
                    backend.runtime.active.fetch_sub(1, Ordering::Relaxed);
                    note_failure(&self.pool, &backend, &e.to_string(), ctx);
                    tried.push(index);
                    if tried.len() > self.pool.retries as usize {
                        self.phase = Phase::Closed;
                        return Step::Close(CloseReason::ConnectFailed, format!("{}: {e}", backend.address));
                    }
                }
            }
        }
    }

    fn drive_connecting(&mut self, c: Connecting, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        if !c.ready.writable && !c.ready.readable {
            return (Phase::Connecting(c), Step::Continue, false);
        }
        // A plain writable edge means connected: the poller reports EPOLLERR (and HUP) with
        // any pending socket error (tcp_poll), so SO_ERROR is only asked when it did, or
        // when the edge is not the writable one.
        let clean = c.ready.writable && !c.ready.error && !c.ready.read_closed;
        let error = if clean {
            None
        } else {
            match c.sock.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => None,
            }
        };
        if let Some(e) = error {
            let step = self.connect_failed(c, e.to_string(), ctx);
            let phase = std::mem::replace(&mut self.phase, Phase::Closed);
            return (phase, step, false);
        }
        if !c.ready.writable {
            // Readable without writable before the handshake completes: wait for the edge
            // that says connected (writable) or failed (error).
            return (Phase::Connecting(c), Step::Continue, false);
        }
        // Connected. (A spurious edge would only make the first write return EAGAIN, which
        // the flow handles like any full socket.)
        c.backend.runtime.failures_in_row.store(0, Ordering::Relaxed);
        self.last_activity = ctx.now;
        // A gateway tunnel: the client learns that the host accepted (`101`) only now.
        let greeting = self.take_greeting();
        if !greeting.is_empty() {
            ctx.shared.metrics.count_gateway_answer("tunnel", 101);
        }
        if self.handshaken.is_some() || self.pool.tls.is_some() {
            if let Some(conn) = self.handshaken.as_deref_mut() {
                if !greeting.is_empty() {
                    // The limit is lifted after the handshake: rustls keeps all of it and the
                    // tunnel's first pump sends it.
                    let _ = conn.write_plaintext(&greeting);
                }
            }
            return self.start_tls_tunnel(c, ctx);
        }
        let up = Flow::with_early(&c.early, &mut ctx.pools);
        let down = if greeting.is_empty() {
            Flow::default()
        } else {
            Flow::with_early(&greeting, &mut ctx.pools)
        };
        let tunnel = Tunnel {
            backend_sock: c.sock,
            backend_ready: c.ready,
            backend: c.backend,
            up,
            down,
        };
        (Phase::Tunnel(tunnel), Step::Continue, true)
    }

    /// A connect attempt failed: count it and try the next backend within the budget.
    fn connect_failed(&mut self, c: Connecting, detail: String, ctx: &mut Ctx<'_>) -> Step {
        let Connecting {
            sock,
            backend,
            mut tried,
            early,
            ..
        } = c;
        drop(sock);
        backend.runtime.active.fetch_sub(1, Ordering::Relaxed);
        if let Some(target) = self.fixed.take() {
            // The broker chose this one host: there is no other to try.
            let detail = format!("{} ({}): {detail}", backend.name, backend.address);
            return self.fixed_connect_failed(target, detail, ctx);
        }
        note_failure(&self.pool, &backend, &detail, ctx);
        tracing::debug!(client = %self.client_addr, backend = %backend.name, address = %backend.address, "connect failed: {detail}");
        tried.push(backend.index);
        if tried.len() > self.pool.retries as usize {
            self.phase = Phase::Closed;
            return Step::Close(
                CloseReason::ConnectFailed,
                format!(
                    "{} ({}): {detail}; {} attempts",
                    backend.name,
                    backend.address,
                    tried.len()
                ),
            );
        }
        // Strip the PROXY header we prepended; start_connect builds a fresh one.
        let early = if self.pool.send_proxy {
            match proxy_protocol::parse(&early) {
                Ok(Parsed::Complete { consumed, .. }) => early[consumed..].to_vec(),
                _ => early,
            }
        } else {
            early
        };
        self.start_connect(tried, early, ctx)
    }

    fn drive_tunnel(&mut self, mut t: Tunnel, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        let splice = self.settings.splice;
        // A reported error (a RST) ends the tunnel even if neither flow would touch that
        // socket again (its direction already finished): carry it to the other side now.
        if std::mem::take(&mut self.client_ready.error) {
            if let Some(e) = socket_error(&self.client) {
                return self.tunnel_error(t, source_error(e), true, ctx);
            }
        }
        if std::mem::take(&mut t.backend_ready.error) {
            if let Some(e) = socket_error(&t.backend_sock) {
                return self.tunnel_error(t, source_error(e), false, ctx);
            }
        }
        loop {
            let up = t.up.pump(
                End {
                    sock: &self.client,
                    ready: &mut self.client_ready,
                },
                End {
                    sock: &t.backend_sock,
                    ready: &mut t.backend_ready,
                },
                splice,
                t.down.shut,
                &mut ctx.pools,
            );
            let up = match up {
                Ok(p) => p,
                Err(e) => return self.tunnel_error(t, e, true, ctx),
            };
            let down = t.down.pump(
                End {
                    sock: &t.backend_sock,
                    ready: &mut t.backend_ready,
                },
                End {
                    sock: &self.client,
                    ready: &mut self.client_ready,
                },
                splice,
                t.up.shut,
                &mut ctx.pools,
            );
            let down = match down {
                Ok(p) => p,
                Err(e) => return self.tunnel_error(t, e, false, ctx),
            };
            if up || down {
                self.last_activity = ctx.now;
            }
            if t.up.shut && t.down.shut {
                self.record_bytes(&t, ctx);
                return (
                    Phase::Tunnel(t),
                    Step::Close(CloseReason::Done, "both sides closed".into()),
                    false,
                );
            }
            if !up && !down {
                return (Phase::Tunnel(t), Step::Continue, false);
            }
        }
    }

    fn tunnel_error(
        &mut self,
        t: Tunnel,
        e: FlowError,
        upstream: bool,
        ctx: &mut Ctx<'_>,
    ) -> (Phase, Step, bool) {
        self.record_bytes(&t, ctx);
        let (reason, detail) = self.carry_error(&t.backend_sock, e, upstream);
        (Phase::Tunnel(t), Step::Close(reason, detail), false)
    }

    /// Carries a reset through (the other side gets a RST, not a FIN) and names the reason.
    pub(super) fn carry_error(
        &self,
        backend_sock: &TcpStream,
        e: FlowError,
        upstream: bool,
    ) -> (CloseReason, String) {
        match (e, upstream) {
            (FlowError::SourceReset, true) | (FlowError::DestinationReset, false) => {
                let _ = SockRef::from(backend_sock).set_linger(Some(Duration::ZERO));
                (
                    CloseReason::ClientReset,
                    "client reset the connection".to_string(),
                )
            }
            (FlowError::SourceReset, false) | (FlowError::DestinationReset, true) => {
                let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
                (
                    CloseReason::BackendReset,
                    "backend reset the connection".to_string(),
                )
            }
            (FlowError::Source(e), true) | (FlowError::Destination(e), false) => {
                let _ = SockRef::from(backend_sock).set_linger(Some(Duration::ZERO));
                (CloseReason::ClientError, e.to_string())
            }
            (FlowError::Source(e), false) | (FlowError::Destination(e), true) => {
                let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
                (CloseReason::BackendError, e.to_string())
            }
        }
    }

    fn record_bytes(&mut self, t: &Tunnel, ctx: &mut Ctx<'_>) {
        self.record_counts(t.up.bytes, t.down.bytes, t.up.spliced + t.down.spliced, ctx);
    }

    /// Adds the bytes carried since the last call to the node's counters.
    pub(super) fn record_counts(&mut self, up_total: u64, down_total: u64, spliced: u64, ctx: &mut Ctx<'_>) {
        let up = up_total - self.bytes.0.min(up_total);
        let down = down_total - self.bytes.1.min(down_total);
        ctx.shared.metrics.bytes_up.fetch_add(up, Ordering::Relaxed);
        ctx.shared.metrics.bytes_down.fetch_add(down, Ordering::Relaxed);
        ctx.shared
            .metrics
            .spliced_bytes
            .fetch_add(spliced, Ordering::Relaxed);
        self.bytes = (up_total, down_total);
    }

    /// Whether the session holds pooled buffers or pipes (false for an idle tunnel).
    pub fn holds_buffers(&self) -> bool {
        match &self.phase {
            Phase::Tunnel(t) => t.up.holds_resources() || t.down.holds_resources(),
            Phase::TlsTunnel(t) => t.up.holds_resources() || t.down.holds_resources(),
            _ => false,
        }
    }

    /// Tears the session down: returns pooled resources and the backend slot. Sockets are
    /// not deregistered: closing them removes them from epoll (they are never duplicated).
    /// The caller logs and counts.
    pub fn teardown(&mut self, ctx: &mut Ctx<'_>) {
        match std::mem::replace(&mut self.phase, Phase::Closed) {
            Phase::Connecting(c) => {
                c.backend.runtime.active.fetch_sub(1, Ordering::Relaxed);
            }
            Phase::Tunnel(mut t) => {
                if self.bytes != (t.up.bytes, t.down.bytes) {
                    self.record_bytes(&t, ctx);
                }
                t.up.release(&mut ctx.pools);
                t.down.release(&mut ctx.pools);
                t.backend.runtime.active.fetch_sub(1, Ordering::Relaxed);
            }
            Phase::TlsTunnel(mut t) => {
                if self.bytes != (t.up.bytes, t.down.bytes) {
                    self.record_counts(t.up.bytes, t.down.bytes, 0, ctx);
                }
                t.up.release(&mut ctx.pools);
                t.down.release(&mut ctx.pools);
                t.backend.runtime.active.fetch_sub(1, Ordering::Relaxed);
            }
            Phase::Reading(_) | Phase::Hello(_) | Phase::Handshake(_) | Phase::Front(_) | Phase::Closed => {}
        }
        if let Some(ip) = self.source_slot.take() {
            ctx.shared.sources.release(ip);
        }
    }

    /// Makes the client see a reset when the session is dropped (used for refusals of
    /// protocol errors, where a FIN would look like a normal end).
    pub fn reset_client(&self) {
        let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
    }
}

thread_local! {
    /// Balancer state per pool name, per worker thread (round-robin cursors). It survives
    /// snapshot changes (a health or admin state change must not restart the rotation); a
    /// changed algorithm or backend list resets it.
    static BALANCERS: std::cell::RefCell<std::collections::HashMap<String, Balancer>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Forgets balancer state of pools no longer in the snapshot (called on snapshot change).
pub fn retain_balancers(pools: &[Arc<PoolPlan>]) {
    BALANCERS.with(|b| {
        b.borrow_mut()
            .retain(|name, _| pools.iter().any(|p| &p.name == name))
    });
}

/// The pending error of a socket (SO_ERROR), if any.
pub(super) fn socket_error(sock: &TcpStream) -> Option<io::Error> {
    match sock.take_error() {
        Ok(Some(e)) | Err(e) => Some(e),
        Ok(None) => None,
    }
}

/// An error found on a socket, as if reading it had failed.
pub(super) fn source_error(e: io::Error) -> FlowError {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
    ) {
        FlowError::SourceReset
    } else {
        FlowError::Source(e)
    }
}

fn reserve(runtime: &BackendRuntime, max: u32) -> bool {
    if max == 0 {
        runtime.active.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    runtime
        .active
        .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

fn note_failure(pool: &PoolPlan, backend: &BackendRef, detail: &str, ctx: &mut Ctx<'_>) {
    backend.runtime.connect_failures.fetch_add(1, Ordering::Relaxed);
    let in_row = backend.runtime.failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
    if pool.passive_fall > 0 && pool.health_checked && in_row == pool.passive_fall {
        let _ = ctx.shared.events.send(ControlEvent::PassiveDown {
            pool: pool.name.clone(),
            backend: backend.name.to_string(),
            reason: detail.to_string(),
        });
    }
}

/// TCP_NODELAY (RDP sends small input events) and keepalive (a backend that vanished is
/// noticed) on a backend socket: three calls; the kernel's probe interval and count apply.
fn tune_backend_socket(sock: &TcpStream, keepalive: Duration) {
    let _ = sock.set_nodelay(true);
    let _ = SockRef::from(sock).set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(keepalive));
}

/// Whether an error means the process or system ran out of descriptors.
pub fn is_out_of_files(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
