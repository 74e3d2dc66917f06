//! One proxied connection, from accept to close.
//!
//! Owns the session's sockets and its pipeline state machine:
//! `Reading` (a PROXY v2 header from a trusted forwarder, or a check that an untrusted client
//! does not send one) -> on TLS listeners `Hello` (the ClientHello, read without
//! terminating) and, when offloading, `Handshake` (rustls) -> `Connecting` (to a backend
//! picked by the pool's balancer, retrying the next one within the budget) -> `Tunnel` (two
//! [`Flow`]s, splice-capable) or `TlsTunnel` (two `TlsDirection`s, when the client or the
//! backend speaks TLS). Each state holds only what it needs; a transition consumes the old
//! one. The phases before the tunnel live beside this file: `session_reading.rs` (Reading),
//! `session_tls.rs` (Hello, Handshake), `session_gateway.rs` (a gateway's front door) and
//! `session_connect.rs` (Connecting); the tunnels and the session's life are here. The worker
//! owns the event loop and calls in here with readiness and time; this module decides and
//! moves bytes, nothing else.

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
use crate::balance::Candidate;
use crate::broker_role::AnswerSink;
use crate::cidr::Cidr;
use crate::config::TlsMode;
use crate::metrics::CloseReason;
use crate::shared::{admits, BackendRuntime, ListenerRole, PoolPlan, Shared};
use crate::tls::server::ServerTls;

#[path = "session_tls.rs"]
mod tls_phases;

#[path = "session_gateway.rs"]
mod gateway_front;

#[path = "session_reading.rs"]
mod reading_phase;

#[path = "session_connect.rs"]
mod connect_phase;

pub use crate::health::is_out_of_files;
pub use connect_phase::retain_balancers;
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
    /// Keepalive and user timeout of the backend socket (the client's come from the
    /// listener).
    pub dead_peer: super::listener::DeadPeer,
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
    /// Bytes client -> backend, backend -> client, as far as counted (the PROXY header this
    /// node sends is in the first, a gateway's `101` head in the second; see
    /// [`Session::carried`]).
    pub bytes: (u64, u64),
    /// Length of the PROXY header sent ahead of the client's bytes (0: none).
    proxy_header: u64,
    /// Length of the `101` head a plain gateway tunnel sends the client ahead of the
    /// host's bytes (0: none; a TLS tunnel's goes into rustls, outside the counts).
    greeting: u64,
    /// Name and address of the backend, once chosen (for the close log line).
    pub backend_label: Option<(Arc<str>, SocketAddr)>,
    /// The client's TLS connection between the end of its handshake and the tunnel: held
    /// only while `Connecting` (which retries backends without knowing about TLS).
    handshaken: Option<Box<TlsConn>>,
    /// A gateway session's one destination (a host the broker chose): no balancer, no retry.
    fixed: Option<FixedTarget>,
    /// The gateway path to send to the next hop (forwarding listeners), encoded.
    gateway_path: Option<Vec<u8>>,
    /// Closes without anything worth an info line: the client sent nothing (a TCP health
    /// check, a port scan) or asked `/health` and heard 200. Logged at debug, counted as
    /// usual (HAProxy's `dontlognull`, and its unlogged `monitor-uri`); so is a clean close
    /// of a tunnel that carried no byte.
    pub routine: bool,
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
            proxy_header: 0,
            greeting: 0,
            backend_label: None,
            handshaken: None,
            fixed: None,
            gateway_path: None,
            routine: false,
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
                        Step::Continue => {
                            let step = self.begin(r.buf, None, ctx);
                            // The handshake timeout is one budget from the accept: a client
                            // that said nothing through it gets no second one for its
                            // ClientHello or request (it was held twice as long before).
                            match &mut self.phase {
                                Phase::Hello(h) => h.deadline = h.deadline.min(r.deadline),
                                Phase::Front(f) => f.cap_deadline(r.deadline),
                                _ => {}
                            }
                            step
                        }
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
            Phase::Hello(h)
                if now >= h.deadline && h.buf.is_empty() && self.settings.tls == TlsMode::Auto =>
            {
                // Neither TLS nor plain was tried: not a refused handshake.
                Step::Close(
                    CloseReason::HandshakeTimeout,
                    format!(
                        "nothing received after {:?}: no ClientHello or plain request",
                        self.settings.handshake_timeout
                    ),
                )
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

    fn drive_tunnel(&mut self, mut t: Tunnel, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        let splice = self.settings.splice;
        // A reported error (a RST) is handled after the pumps: bytes the peer sent before
        // its reset are still queued, read(2) returns them before the error, and they are
        // carried first, as a direct connection would deliver them.
        let errors = (
            std::mem::take(&mut self.client_ready.error),
            std::mem::take(&mut t.backend_ready.error),
        );
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
                break;
            }
        }
        // An error neither flow met (a RST on a socket whose direction had already finished)
        // still ends the tunnel: carry it to the other side now.
        match pending_error(errors, &self.client, &t.backend_sock) {
            Some((e, upstream)) => self.tunnel_error(t, e, upstream, ctx),
            None => (Phase::Tunnel(t), Step::Continue, false),
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
                (CloseReason::ClientError, format!("client: {}", side_error(&e)))
            }
            (FlowError::Source(e), false) | (FlowError::Destination(e), true) => {
                let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
                (CloseReason::BackendError, format!("backend: {}", side_error(&e)))
            }
        }
    }

    fn record_bytes(&mut self, t: &Tunnel, ctx: &mut Ctx<'_>) {
        self.record_counts(t.up.bytes, t.down.bytes, t.up.spliced + t.down.spliced, ctx);
    }

    /// The client's bytes carried to the backend and the backend's to the client: the
    /// PROXY header and the `101` head this node wrote are neither's.
    pub fn carried(&self) -> (u64, u64) {
        (
            self.bytes.0.saturating_sub(self.proxy_header),
            self.bytes.1.saturating_sub(self.greeting),
        )
    }

    /// Counts `header` bytes of PROXY header ahead of the client's bytes upstream: taken as
    /// already counted, so neither the node's counters nor the close line include them.
    pub(super) fn set_proxy_header(&mut self, header: u64) {
        self.proxy_header = header;
        self.bytes.0 = header;
    }

    /// Counts `greeting` bytes (a gateway's `101` head) ahead of the backend's bytes
    /// downstream as already counted, as [`Session::set_proxy_header`] does upstream.
    pub(super) fn set_greeting(&mut self, greeting: u64) {
        self.greeting = greeting;
        self.bytes.1 = greeting;
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

    /// Reads client bytes into `buf` until it holds `limit` or the socket is drained (the
    /// phases before a tunnel: a PROXY header, a ClientHello). Returns whether the client's
    /// FIN arrived: readiness stays set, so a tunnel reads that EOF again and carries the
    /// half-close. A read error ends the session.
    pub(super) fn read_client_into(&mut self, buf: &mut Vec<u8>, limit: usize) -> Result<bool, Step> {
        while self.client_ready.readable && buf.len() < limit {
            let mut chunk = [0u8; 4096];
            let want = (limit - buf.len()).min(chunk.len());
            match (&self.client).read(&mut chunk[..want]) {
                Ok(0) => {
                    self.client_ready.read_closed = true;
                    return Ok(true);
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if n < want && !self.client_ready.read_closed {
                        // A short read drained the socket; the next bytes raise a new edge
                        // (a FIN already reported raises none: then read on to the EOF).
                        self.client_ready.readable = false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.client_ready.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Step::Close(CloseReason::ClientError, e.to_string())),
            }
        }
        Ok(false)
    }

    /// Makes the client see a reset when the session is dropped (used for refusals of
    /// protocol errors, where a FIN would look like a normal end).
    pub fn reset_client(&self) {
        let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
    }

    /// Makes both ends see a reset when the session is dropped: a tunnel cut short (the
    /// drain deadline) must not end like one that finished.
    pub fn reset_both(&self) {
        self.reset_client();
        let backend = match &self.phase {
            Phase::Tunnel(t) => Some(&t.backend_sock),
            Phase::TlsTunnel(t) => Some(&t.backend_sock),
            _ => None,
        };
        if let Some(sock) = backend {
            let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
        }
    }
}

/// The error of a socket whose poll event reported one (`flagged`: client, backend), as the
/// flow error to carry and whether it came from the client.
pub(super) fn pending_error(
    flagged: (bool, bool),
    client: &TcpStream,
    backend: &TcpStream,
) -> Option<(FlowError, bool)> {
    if flagged.0 {
        if let Some(e) = socket_error(client) {
            return Some((source_error(e), true));
        }
    }
    if flagged.1 {
        if let Some(e) = socket_error(backend) {
            return Some((source_error(e), false));
        }
    }
    None
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

/// A socket error of one side of a tunnel, said plainly: a timeout there is keepalive or
/// the user timeout giving up on a peer that went silent (a cut link, a crashed host).
fn side_error(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ETIMEDOUT) {
        "no answer to keepalive probes or to data sent (a cut link or a crashed host)".into()
    } else {
        e.to_string()
    }
}
