//! The Connecting phase of a session: picks a backend with the pool's balancer (whose
//! per-worker state lives here), opens the socket through the worker's source ports, and
//! waits for the connect. A failed attempt counts against its backend (passive health) and
//! the next backend is tried within the pool's retry budget; a connected backend starts the
//! tunnel (plain, or TLS when either side speaks it). Bytes do not move here.

use crate::engine::listener::DeadPeer;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::Interest;
use socket2::SockRef;

use super::{backend_token, is_out_of_files, BackendRef, Connecting, Ctx, Phase, Session, Step, Tunnel};
use crate::balance::Balancer;
use crate::engine::flow::{Flow, Ready};
use crate::gateway::path::PP2_TYPE_GATEWAY_PATH;
use crate::metrics::CloseReason;
use crate::proxy_protocol::ProxyHeader;
use crate::shared::{BackendRuntime, ControlEvent, PoolPlan};

impl Session {
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
                    // Up but full is not down: say which, for the operator who reads it.
                    let full = self.pool.backends.iter().filter(|b| b.at_limit()).count();
                    let detail = match full {
                        0 => format!("no backend of pool {:?} is up", self.pool.name),
                        n => format!(
                            "no backend of pool {:?} can take a connection: {n} up but at their max_connections",
                            self.pool.name
                        ),
                    };
                    Step::Close(CloseReason::NoBackend, detail)
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
            self.set_proxy_header(payload.len() as u64);
            payload.extend_from_slice(&early);
            match ctx.ports.connect(backend.address) {
                Ok(mut sock) => {
                    tune_backend_socket(&sock, &self.settings.dead_peer);
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
                    // Out of local ports (EADDRNOTAVAIL) is this host's shortage, not the
                    // backend's failure: try the next one without counting against this one.
                    if !crate::health::is_local_shortage(&e) {
                        note_failure(&self.pool, &backend, &e.to_string(), ctx);
                    }
                    tried.push(index);
                    if tried.len() > self.pool.retries as usize {
                        self.phase = Phase::Closed;
                        return Step::Close(CloseReason::ConnectFailed, format!("{}: {e}", backend.address));
                    }
                }
            }
        }
    }

    pub(super) fn drive_connecting(&mut self, c: Connecting, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
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
            self.set_greeting(greeting.len() as u64);
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
    pub(super) fn connect_failed(&mut self, c: Connecting, detail: String, ctx: &mut Ctx<'_>) -> Step {
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
        // Strip the PROXY header we prepended (its length is known: a parse would stop at
        // the default bound, shorter than a header with a long gateway path); start_connect
        // builds a fresh one.
        let early = early
            .get(self.proxy_header as usize..)
            .unwrap_or_default()
            .to_vec();
        self.start_connect(tried, early, ctx)
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
    // At or past the bound (a run that went on while a verdict was pending, or one that
    // started before the last verdict), once per time it is taken out.
    if pool.passive_fall > 0
        && pool.health_checked
        && in_row >= pool.passive_fall
        && !backend.runtime.passive_down.swap(true, Ordering::Relaxed)
    {
        let _ = ctx.shared.events.send(ControlEvent::PassiveDown {
            pool: pool.name.clone(),
            backend: backend.name.to_string(),
            reason: detail.to_string(),
        });
    }
}

/// TCP_NODELAY (RDP sends small input events), keepalive and the user timeout (a backend
/// that vanished, or a cut link, is noticed) on a backend socket: six calls.
pub(super) fn tune_backend_socket(sock: &TcpStream, dead_peer: &DeadPeer) {
    let _ = sock.set_nodelay(true);
    let _ = dead_peer.apply(SockRef::from(sock));
}
