//! One worker thread: its own poller, listeners, sessions, timers and pools.
//!
//! Owns the event loop. It accepts on its SO_REUSEPORT sockets, hands readiness and time to
//! sessions, fires timers, picks up new snapshots (listeners added or removed by a reload)
//! and follows the node's lifecycle (drain, stop). It shares nothing mutable with other
//! workers except atomics (connection counts) and the snapshot pointer.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener as StdListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use super::buffers::{BufferPool, PipePool};
use super::flow::Pools;
use super::listener::{bind, listener_key, BindSpec, DeadPeer};
use super::session::{self, is_out_of_files, Ctx, Session, SessionSettings, Step};
use super::source_ports::{PortPlan, SourcePorts};
use super::timer::{TimerEntry, TimerWheel};
use crate::broker_role::{Answer, AnswerSink};
use crate::config::SourcePortChoice;
use crate::metrics::{CloseReason, PauseReason};
use crate::shared::{Lifecycle, Shared, Snapshot};

const WAKER: Token = Token(usize::MAX);
const LISTENER_BASE: usize = 1 << 48;
/// Timer key reserved for the accept back-off.
const ACCEPT_TIMER: usize = usize::MAX;
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a worker paused at `node.max_connections` looks for a free slot.
const LIMIT_RETRY: Duration = Duration::from_millis(20);
/// At most one accept-pause warning per worker in this long.
const PAUSE_WARN_EVERY: Duration = Duration::from_secs(1);

/// A listener as one worker holds it.
struct WorkerListener {
    name: String,
    /// The settings the socket has now.
    spec: BindSpec,
    socket: TcpListener,
    plan_index: usize,
}

/// Handle to a running worker thread.
pub struct WorkerHandle {
    /// Its thread.
    pub thread: std::thread::JoinHandle<()>,
}

/// Starts a worker with pre-bound listeners (name -> socket), so binding happens before any
/// privilege drop and errors surface at start-up. It accepts nothing until a message on `go`
/// says the node has started (clients already waiting in a listener's backlog must not take
/// the descriptors the rest of the node still has to open); if the sender goes away instead,
/// the node failed to start and the worker ends, closing its listeners.
pub fn spawn(
    id: usize,
    workers: usize,
    shared: Arc<Shared>,
    listeners: Vec<(String, StdListener)>,
    go: crossbeam_channel::Receiver<()>,
) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    shared.add_waker(waker.clone());
    let thread = std::thread::Builder::new()
        .name(format!("worker-{id}"))
        .spawn(move || {
            if go.recv().is_err() {
                return;
            }
            let mut worker = Worker::new(id, workers, poll, waker, shared);
            for (name, socket) in listeners {
                worker.adopt_listener(name, socket);
            }
            worker.run();
        })?;
    Ok(WorkerHandle { thread })
}

/// The resources a session step borrows from the worker. A macro rather than a method so
/// that a session (borrowed from the slab) and the pools (other fields) can be borrowed at
/// the same time.
macro_rules! worker_ctx {
    ($worker:ident, $now:expr) => {
        Ctx {
            registry: $worker.poll.registry(),
            pools: Pools {
                bufs: &mut $worker.bufs,
                pipes: &mut $worker.pipes,
            },
            shared: &$worker.shared,
            now: $now,
            candidates: &mut $worker.candidates,
            answers: &$worker.answers,
            ports: &mut $worker.ports,
        }
    };
}

struct Worker {
    id: usize,
    poll: Poll,
    shared: Arc<Shared>,
    snapshot: Arc<Snapshot>,
    /// What sessions of each listener plan of `snapshot` need (same indices).
    settings: Vec<Arc<SessionSettings>>,
    listeners: HashMap<usize, WorkerListener>,
    next_listener: usize,
    sessions: Slab<Session>,
    serial: u64,
    timers: TimerWheel,
    bufs: BufferPool,
    pipes: PipePool,
    candidates: Vec<crate::balance::Candidate>,
    /// Source ports of backend connects.
    ports: SourcePorts,
    /// Broker answers for gateway sessions (the control client sends them, then wakes us).
    answers: AnswerSink,
    answers_rx: crossbeam_channel::Receiver<Answer>,
    accept_paused: bool,
    pause_streak: Option<PauseReason>,
    /// When a pause was last logged: at a sustained fd limit every refused client starts a
    /// streak, and one warning a second says it.
    pause_warned: Option<Instant>,
    backoff: Duration,
    draining: bool,
}

/// The settings of every listener plan of `snapshot`, in its order.
fn session_settings(snapshot: &Snapshot) -> Vec<Arc<SessionSettings>> {
    snapshot
        .listeners
        .iter()
        .map(|plan| {
            let cfg = &plan.config;
            Arc::new(SessionSettings {
                listener: Arc::from(cfg.name.as_str()),
                handshake_timeout: cfg.handshake_timeout.get(),
                connect_timeout: cfg.connect_timeout.get(),
                idle_timeout: cfg.idle_timeout.get(),
                dead_peer: DeadPeer::of(cfg),
                splice: cfg.splice,
                max_per_source: cfg.max_per_source,
                tls: cfg.tls,
                server_tls: plan.tls.clone(),
                sni_routes: plan
                    .sni_routes
                    .iter()
                    .map(|(name, pool)| (name.clone(), snapshot.pools[*pool].clone()))
                    .collect(),
                role: plan.role.clone(),
                allow: plan.allow.clone(),
                deny: plan.deny.clone(),
                trusted_proxies: plan.trusted_proxies.clone(),
            })
        })
        .collect()
}

impl Worker {
    fn new(id: usize, workers: usize, poll: Poll, waker: Arc<Waker>, shared: Arc<Shared>) -> Self {
        let snapshot = shared.snapshot();
        let ports = SourcePorts::new(
            PortPlan::from_system(id, workers),
            snapshot.config.node.source_ports == SourcePortChoice::Engine,
        );
        let (answers_tx, answers_rx) = crossbeam_channel::unbounded();
        Worker {
            id,
            poll,
            shared,
            settings: session_settings(&snapshot),
            snapshot,
            listeners: HashMap::new(),
            next_listener: 0,
            sessions: Slab::new(),
            serial: 0,
            timers: TimerWheel::new(Instant::now()),
            bufs: BufferPool::new(256),
            pipes: PipePool::new(4096, 256),
            candidates: Vec::new(),
            ports,
            answers: AnswerSink::new(answers_tx, Some(waker)),
            answers_rx,
            accept_paused: false,
            pause_streak: None,
            pause_warned: None,
            backoff: MIN_BACKOFF,
            draining: false,
        }
    }

    fn adopt_listener(&mut self, name: String, socket: StdListener) {
        let Some(plan_index) = self.snapshot.listeners.iter().position(|l| l.config.name == name) else {
            return;
        };
        let spec = BindSpec::of(&self.snapshot.listeners[plan_index].config);
        let mut socket = TcpListener::from_std(socket);
        let idx = self.next_listener;
        self.next_listener += 1;
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut socket, Token(LISTENER_BASE + idx), Interest::READABLE)
        {
            tracing::error!(listener = %name, "cannot register listener: {e}");
            return;
        }
        self.listeners.insert(
            idx,
            WorkerListener {
                name,
                spec,
                socket,
                plan_index,
            },
        );
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut due: Vec<TimerEntry> = Vec::new();
        let mut ready: Vec<usize> = Vec::new();
        loop {
            let now = Instant::now();
            let timeout = self.timers.timeout(now);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(worker = self.id, "poll failed: {e}");
                    return;
                }
            }
            let now = Instant::now();
            if self.shared.generation() != self.snapshot.generation {
                self.reload();
            }
            match self.shared.lifecycle() {
                Lifecycle::Running => {}
                Lifecycle::Draining => self.start_drain(),
                Lifecycle::Stopping => {
                    self.close_all(now);
                    return;
                }
            }
            let mut accept_from = Vec::new();
            for event in events.iter() {
                let token = event.token();
                if token == WAKER {
                    continue;
                }
                if token.0 >= LISTENER_BASE {
                    accept_from.push(token.0 - LISTENER_BASE);
                    continue;
                }
                let key = token.0 / 2;
                let backend_side = token.0 % 2 == 1;
                if let Some(s) = self.sessions.get_mut(key) {
                    let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                    let writable = event.is_writable() || event.is_write_closed() || event.is_error();
                    s.on_ready(
                        backend_side,
                        readable,
                        writable,
                        event.is_read_closed() || event.is_error(),
                        event.is_error(),
                    );
                    ready.push(key);
                }
            }
            ready.sort_unstable();
            ready.dedup();
            for key in ready.drain(..) {
                self.drive(key, now);
            }
            self.deliver_answers(now);
            for idx in accept_from {
                self.accept(idx, now);
            }
            let fallbacks = self.ports.take_fallbacks();
            if fallbacks > 0 {
                self.shared
                    .metrics
                    .source_port_fallbacks
                    .fetch_add(fallbacks, Ordering::Relaxed);
            }
            self.timers.advance(now, &mut due);
            for entry in due.drain(..) {
                self.fire(entry, now);
            }
            if self.draining && self.sessions.is_empty() {
                tracing::debug!(worker = self.id, "drained");
                return;
            }
        }
    }

    /// Hands broker answers to the gateway sessions that wait for them; an answer for a
    /// session that has ended (its slot empty or reused) is dropped.
    fn deliver_answers(&mut self, now: Instant) {
        while let Ok(answer) = self.answers_rx.try_recv() {
            let (key, serial_bits) = session::split_tag(answer.tag);
            let Some(s) = self.sessions.get_mut(key) else {
                continue;
            };
            if s.serial & 0xFFFF_FFFF != serial_bits {
                continue;
            }
            let mut ctx = worker_ctx!(self, now);
            let step = s.on_answer(answer, &mut ctx);
            self.after_step(key, step, now);
        }
    }

    fn drive(&mut self, key: usize, now: Instant) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        let mut ctx = worker_ctx!(self, now);
        let step = session.drive(&mut ctx);
        self.after_step(key, step, now);
    }

    fn after_step(&mut self, key: usize, step: Step, now: Instant) {
        match step {
            Step::Continue => self.arm(key),
            Step::Close(reason, detail) => self.close(key, reason, &detail, now),
        }
    }

    /// Makes sure a timer entry exists at or before the session's next deadline.
    fn arm(&mut self, key: usize) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(deadline) = s.deadline() else { return };
        let tick = self.timers.tick_of(deadline);
        if s.armed_tick.is_some_and(|t| t <= tick) {
            return;
        }
        let tick = self.timers.insert(deadline, key, s.serial);
        s.armed_tick = Some(tick);
    }

    fn fire(&mut self, entry: TimerEntry, now: Instant) {
        if entry.key == ACCEPT_TIMER {
            if self.accept_paused {
                self.resume_accept(now);
            }
            return;
        }
        let Some(s) = self.sessions.get_mut(entry.key) else {
            return;
        };
        if s.serial != entry.serial || s.armed_tick != Some(entry.tick) {
            return;
        }
        s.armed_tick = None;
        let mut ctx = worker_ctx!(self, now);
        let step = s.on_timer(&mut ctx);
        let step = match step {
            // A timer may have moved the session on (a retry): let it make progress.
            Step::Continue => s.drive(&mut ctx),
            close => close,
        };
        self.after_step(entry.key, step, now);
    }

    fn pause_accept(&mut self, reason: PauseReason, detail: &str, now: Instant) {
        // Count and log a pause once per streak, not at every retry.
        if self.pause_streak != Some(reason) {
            self.pause_streak = Some(reason);
            self.shared.metrics.count_pause(reason);
            if self
                .pause_warned
                .is_none_or(|t| now.saturating_duration_since(t) >= PAUSE_WARN_EVERY)
            {
                self.pause_warned = Some(now);
                tracing::warn!(
                    worker = self.id,
                    reason = reason.label(),
                    "accept paused: {detail}; retrying"
                );
            }
        }
        self.accept_paused = true;
        match reason {
            // Out of descriptors: back off exponentially, the kernel will not free any soon.
            PauseReason::OutOfFiles => {
                self.timers.insert(now + self.backoff, ACCEPT_TIMER, 0);
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
            // At the node's limit: a slot freed on another worker does not wake this one, so
            // look again soon (cheap: one atomic load).
            PauseReason::ConnectionLimit => {
                self.timers.insert(now + LIMIT_RETRY, ACCEPT_TIMER, 0);
            }
        }
    }

    fn accept(&mut self, idx: usize, now: Instant) {
        if self.draining {
            return;
        }
        let max = self.snapshot.config.node.max_connections;
        loop {
            if self.accept_paused {
                return;
            }
            let Some(listener) = self.listeners.get(&idx) else {
                return;
            };
            if self.shared.connections.load(Ordering::Relaxed) >= max {
                self.pause_accept(
                    PauseReason::ConnectionLimit,
                    &format!("{max} connections held (node.max_connections)"),
                    now,
                );
                return;
            }
            let plan_index = listener.plan_index;
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    self.shared.metrics.accepted.fetch_add(1, Ordering::Relaxed);
                    let held = self.shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
                    if held > max {
                        // Another worker took the last slot between our check and accept.
                        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
                        self.shared.metrics.count_close(CloseReason::GlobalLimit);
                        tracing::info!(client = %peer, "refused: node.max_connections ({max}) reached");
                        drop(stream);
                        continue;
                    }
                    self.start_session(stream, peer, plan_index, now);
                    if !self.accept_paused {
                        // The session did not run out of descriptors: the pause streak is over.
                        self.backoff = MIN_BACKOFF;
                        self.pause_streak = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_files(&e) => {
                    self.pause_accept(PauseReason::OutOfFiles, &e.to_string(), now);
                    return;
                }
                Err(e) => {
                    tracing::debug!(worker = self.id, "accept error: {e}");
                }
            }
        }
    }

    fn start_session(
        &mut self,
        stream: mio::net::TcpStream,
        peer: std::net::SocketAddr,
        plan_index: usize,
        now: Instant,
    ) {
        let plan = &self.snapshot.listeners[plan_index];
        let pool = self.snapshot.pools[plan.pool].clone();
        let settings = self.settings[plan_index].clone();
        self.serial += 1;
        let serial = self.serial;
        let entry = self.sessions.vacant_entry();
        let key = entry.key();
        let mut ctx = worker_ctx!(self, now);
        match Session::accept(key, serial, stream, peer, settings, pool, &mut ctx) {
            Ok((session, step)) => {
                entry.insert(session);
                let step = match step {
                    Step::Continue => {
                        let s = self.sessions.get_mut(key).expect("just inserted");
                        let mut ctx = worker_ctx!(self, now);
                        s.drive(&mut ctx)
                    }
                    close => close,
                };
                self.after_step(key, step, now);
            }
            Err(e) => {
                self.shared.connections.fetch_sub(1, Ordering::AcqRel);
                self.shared.metrics.count_close(CloseReason::ClientError);
                tracing::warn!(client = %peer, "cannot set up session: {e}");
            }
        }
    }

    fn close(&mut self, key: usize, reason: CloseReason, detail: &str, now: Instant) {
        if !self.sessions.contains(key) {
            return;
        }
        let mut s = self.sessions.remove(key);
        let mut ctx = worker_ctx!(self, now);
        if matches!(
            reason,
            CloseReason::ProxyHeaderInvalid | CloseReason::ProxyHeaderUntrusted
        ) {
            s.reset_client();
        }
        if reason == CloseReason::Shutdown {
            s.reset_both();
        }
        s.teardown(&mut ctx);
        self.shared.connections.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.count_close(reason);
        let duration = now.saturating_duration_since(s.started);
        let (backend, address) = match &s.backend_label {
            Some((n, a)) => (&**n, a.to_string()),
            None => ("-", "-".to_string()),
        };
        let (bytes_up, bytes_down) = s.carried();
        macro_rules! close_line {
            ($level:ident) => {
                tracing::$level!(
                    client = %s.client_addr,
                    listener = %s.settings.listener,
                    backend,
                    backend_address = %address,
                    bytes_up,
                    bytes_down,
                    duration_ms = duration.as_millis() as u64,
                    reason = reason.label(),
                    "closed: {detail}"
                )
            };
        }
        // A clean close of a tunnel that carried nothing either way is a TCP check too.
        let null_tunnel = s.backend_label.is_some() && (bytes_up, bytes_down) == (0, 0);
        if reason == CloseReason::Done && (s.routine || null_tunnel) {
            close_line!(debug);
        } else {
            close_line!(info);
        }
        if self.draining {
            return;
        }
        if reason == CloseReason::OutOfFiles {
            // A backend or broker socket found no descriptor: neither would the next client.
            // Leave new clients in the backlog (they are served once descriptors free up)
            // rather than accept each only to close it at once.
            if !self.accept_paused {
                self.pause_accept(PauseReason::OutOfFiles, detail, now);
            }
            return;
        }
        if self.accept_paused {
            // A slot and descriptors freed: whatever the pause was for, try again now.
            self.resume_accept(now);
        }
    }

    /// Ends an accept pause and accepts on every listener (their edges may have passed).
    fn resume_accept(&mut self, now: Instant) {
        self.accept_paused = false;
        let all: Vec<usize> = self.listeners.keys().copied().collect();
        for idx in all {
            self.accept(idx, now);
        }
    }

    fn close_all(&mut self, now: Instant) {
        let keys: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(
                key,
                CloseReason::Shutdown,
                "node stopping after the drain deadline",
                now,
            );
        }
    }

    fn start_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        for (_, mut l) in self.listeners.drain() {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        tracing::debug!(worker = self.id, sessions = self.sessions.len(), "draining");
    }

    /// Picks up a new snapshot: listeners added, removed or re-pointed; sessions untouched.
    fn reload(&mut self) {
        self.snapshot = self.shared.snapshot();
        self.settings = session_settings(&self.snapshot);
        session::retain_balancers(&self.snapshot.pools);
        self.ports
            .set_enabled(self.snapshot.config.node.source_ports == SourcePortChoice::Engine);
        let pools = &self.snapshot.pools;
        self.ports.retain(|addr| {
            pools
                .iter()
                .any(|p| p.backends.iter().any(|b| b.address == *addr))
        });
        if self.draining {
            return;
        }
        let snapshot = self.snapshot.clone();
        // 1. Listeners on the same address keep their sockets (and the clients queued in
        //    them), follow their plan's new index and take its backlog and dead-peer
        //    settings in place.
        let mut kept = std::collections::HashSet::new();
        for l in self.listeners.values_mut() {
            let same = snapshot
                .listeners
                .iter()
                .position(|p| p.config.name == l.name && listener_key(&p.config) == l.spec.address);
            if let Some(pi) = same {
                l.plan_index = pi;
                kept.insert(l.name.clone());
                let new = BindSpec::of(&snapshot.listeners[pi].config);
                match l.spec.update(&new, &l.socket) {
                    Ok(true) => {
                        tracing::info!(worker = self.id, listener = %l.name, "listener settings changed in place");
                        l.spec = new;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        worker = self.id,
                        listener = %l.name,
                        "reload cannot change the listener's settings: {e}; the next reload tries again"
                    ),
                }
            }
        }
        // 2. Take the sockets the reload bound for new and changed listeners (or bind them
        //    here if it did not) before closing anything, so a failed bind leaves the old
        //    socket serving.
        let mut bound = Vec::new();
        let mut failed = std::collections::HashSet::new();
        for plan in snapshot
            .listeners
            .iter()
            .filter(|p| !kept.contains(&p.config.name))
        {
            let spec = BindSpec::of(&plan.config);
            let staged =
                self.shared
                    .take_staged_listener(&plan.config.name, self.id, listener_key(&plan.config));
            match staged.map_or_else(|| bind(&spec), Ok) {
                Ok(socket) => bound.push((plan.config.name.clone(), socket)),
                Err(e) => {
                    tracing::error!(worker = self.id, listener = %plan.config.name, "reload cannot bind: {e}");
                    failed.insert(plan.config.name.clone());
                }
            }
        }
        // 3. Close listeners that are gone or replaced; keep an old one whose replacement
        //    could not be bound (it serves on with its old settings).
        let ids: Vec<usize> = self.listeners.keys().copied().collect();
        for idx in ids {
            let name = self.listeners[&idx].name.clone();
            if kept.contains(&name) {
                continue;
            }
            if failed.contains(&name) {
                if let Some(pi) = snapshot.listeners.iter().position(|p| p.config.name == name) {
                    if let Some(l) = self.listeners.get_mut(&idx) {
                        l.plan_index = pi;
                    }
                    tracing::warn!(worker = self.id, listener = %name, "keeping the old socket");
                    continue;
                }
            }
            if let Some(mut l) = self.listeners.remove(&idx) {
                let _ = self.poll.registry().deregister(&mut l.socket);
                tracing::info!(worker = self.id, listener = %l.name, "listener closed by reload");
            }
        }
        for (name, socket) in bound {
            tracing::info!(worker = self.id, listener = %name, "listener bound by reload");
            self.adopt_listener(name, socket);
        }
    }
}
