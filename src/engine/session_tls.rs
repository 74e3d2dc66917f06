//! The TLS phases of a session: `Hello` (the ClientHello read without terminating, for
//! passthrough routing, certificate choice and `auto`), `Handshake` (rustls with the client)
//! and `TlsTunnel` (offload, re-encryption, or both), as methods of [`Session`].
//!
//! Owns the refusals before a tunnel (each counted by reason in
//! `gatehouse_tls_refused_total`) and the TLS tunnel's error mapping. Bytes move in
//! `tls_flow`; sockets, slots and timers stay with `session.rs`.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use rustls::ClientConnection;
use socket2::SockRef;

use super::{pending_error, Connecting, Ctx, Handshake, Hello, Phase, Session, Step, TlsTunnel};
use crate::config::TlsMode;
use crate::engine::flow::{End, Pools};
use crate::engine::tls_conn::{LeanServer, TlsConn};
use crate::engine::tls_flow::{ReadFrom, Side, TlsDirection, TlsFlowError, WriteTo};
use crate::engine::tls_setup::name_matches;
use crate::metrics::CloseReason;

use crate::shared::ListenerRole;
use crate::tls::client_hello::{self, HelloError};

impl TlsTunnel {
    /// Whether the TLS handshake with the backend is still under way.
    pub(super) fn backend_handshaking(&self) -> bool {
        self.backend_tls.as_deref().is_some_and(|c| c.is_handshaking())
    }

    /// When the client's held session tickets must go at the latest (`None`: none held).
    pub(super) fn tickets_held_until(&self) -> Option<Instant> {
        self.client_tls.as_deref().and_then(|c| c.held_until())
    }

    /// Lets held session tickets go with the next write to the client.
    pub(super) fn release_tickets(&mut self) {
        if let Some(c) = self.client_tls.as_deref_mut() {
            c.release_held();
        }
    }
}

impl Session {
    /// Refuses a TLS client before any tunnel: counted by reason and closed.
    pub(super) fn refuse(
        &self,
        reason: &'static str,
        detail: impl std::fmt::Display,
        ctx: &mut Ctx<'_>,
    ) -> (Phase, Step, bool) {
        ctx.shared.metrics.count_tls_refused(reason);
        (
            Phase::Closed,
            Step::Close(CloseReason::TlsRefused, format!("{reason}: {detail}")),
            false,
        )
    }

    /// Reads the ClientHello (bounded by `client_hello::MAX_BUFFERED` and the handshake
    /// deadline), then routes it, hands it to rustls, or (auto) serves plain bytes.
    pub(super) fn drive_hello(&mut self, mut h: Hello, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        let eof = match self.read_client_into(&mut h.buf, client_hello::MAX_BUFFERED) {
            Ok(eof) => eof,
            Err(step) => return (Phase::Closed, step, false),
        };
        if h.buf.is_empty() {
            if eof {
                self.routine = true;
                let step = Step::Close(CloseReason::Done, "client closed before sending anything".into());
                return (Phase::Closed, step, false);
            }
            return (Phase::Hello(h), Step::Continue, false);
        }
        match client_hello::read(&h.buf) {
            Err(HelloError::NotTls { .. })
                if self.settings.tls == TlsMode::Auto
                    && matches!(self.settings.role, ListenerRole::Front { .. }) =>
            {
                // A gateway's one port: plain HTTP or RDP, sniffed by the front.
                self.start_front(None, h.buf, ctx)
            }
            Err(HelloError::NotTls { .. }) if self.settings.tls == TlsMode::Auto => {
                // auto: anything but a TLS record is served plain.
                let step = self.start_connect(Vec::new(), h.buf, ctx);
                let phase = std::mem::replace(&mut self.phase, Phase::Closed);
                (phase, step, true)
            }
            Err(e) => self.refuse(e.reason(), e, ctx),
            Ok(client_hello::Read::Incomplete { .. }) => {
                if eof {
                    let detail = format!("client closed after {} bytes of a ClientHello", h.buf.len());
                    return self.refuse("truncated_hello", detail, ctx);
                }
                if h.buf.len() >= client_hello::MAX_BUFFERED {
                    return self.refuse("hello_too_large", "ClientHello larger than the limit", ctx);
                }
                (Phase::Hello(h), Step::Continue, false)
            }
            Ok(client_hello::Read::Hello(hello)) => {
                if self.settings.tls.terminates() {
                    return self.start_handshake(h, &hello, ctx);
                }
                // Passthrough: the bytes go on unchanged, to the pool the name routes to.
                if let Some(name) = hello.server_name.as_deref() {
                    if let Some((_, pool)) = self
                        .settings
                        .sni_routes
                        .iter()
                        .find(|(p, _)| name_matches(p, name))
                    {
                        self.pool = pool.clone();
                    }
                }
                let step = self.start_connect(Vec::new(), h.buf, ctx);
                let phase = std::mem::replace(&mut self.phase, Phase::Closed);
                (phase, step, true)
            }
        }
    }

    /// Hands the buffered ClientHello to a new server connection and moves to `Handshake`.
    pub(super) fn start_handshake(
        &mut self,
        h: Hello,
        hello: &client_hello::ClientHello,
        ctx: &mut Ctx<'_>,
    ) -> (Phase, Step, bool) {
        let Some(tls) = self.settings.server_tls.clone() else {
            return self.refuse("no_certificate", "the listener has no TLS configuration", ctx);
        };
        // Asked first so the refusal names its reason; rustls then fails the same way and
        // queues the alert the client gets.
        let refusal = tls.resolver.choose(hello.server_name.as_deref()).err();
        let config = tls.for_hello(hello.prefers_chacha20).clone();
        let mut conn = match LeanServer::new(config, &h.buf) {
            Ok(c) => Box::new(TlsConn::Server(c)),
            Err(e) => return self.refuse("tls_setup", e, ctx),
        };
        if let Err(e) = conn.process_new_packets() {
            // Best effort: the alert fits in the socket buffer of a fresh connection.
            let _ = conn.write_tls(&mut WriteTo(&self.client));
            let reason = refusal
                .as_ref()
                .map_or_else(|| handshake_reason(&e), |r| r.reason());
            return self.refuse(reason, e, ctx);
        }
        let hs = Handshake {
            conn,
            deadline: h.deadline,
        };
        (Phase::Handshake(hs), Step::Continue, true)
    }

    /// Drives the handshake with the client; when done, connects to a backend.
    pub(super) fn drive_handshake(&mut self, mut hs: Handshake, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        loop {
            while hs.conn.wants_write() && self.client_ready.writable {
                match hs.conn.write_tls(&mut WriteTo(&self.client)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.client_ready.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return self.refuse("handshake_io", e, ctx),
                }
            }
            if !hs.conn.is_handshaking() {
                break;
            }
            if !self.client_ready.readable {
                return (Phase::Handshake(hs), Step::Continue, false);
            }
            let mut from = ReadFrom::new(&self.client);
            match hs.conn.read_tls(&mut from) {
                Ok(0) => return self.refuse("handshake_eof", "client closed during the handshake", ctx),
                Ok(_) => from.settle(&mut self.client_ready),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.client_ready.readable = false;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.refuse("handshake_io", e, ctx),
            }
            if let Err(e) = hs.conn.process_new_packets() {
                let _ = hs.conn.write_tls(&mut WriteTo(&self.client));
                return self.refuse(handshake_reason(&e), e, ctx);
            }
            if !hs.conn.is_handshaking() {
                // The tickets wait for the first answer to the client (see `tls_conn`).
                hs.conn.hold_tickets(ctx.now);
            }
        }
        if matches!(self.settings.role, ListenerRole::Front { .. }) {
            // A gateway: read again inside TLS (the client API or a tunnel request).
            return self.start_front(Some(hs.conn), Vec::new(), ctx);
        }
        self.handshaken = Some(hs.conn);
        let step = self.start_connect(Vec::new(), Vec::new(), ctx);
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        (phase, step, true)
    }

    /// The backend accepted and a side speaks TLS: the client's handshaken connection, a new
    /// client connection towards a re-encrypting pool's backend.
    pub(super) fn start_tls_tunnel(&mut self, c: Connecting, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        let client_tls = self.handshaken.take();
        let mut backend_tls = None;
        let mut raw = &c.early[..];
        // Client bytes handed to the backend's TLS connection before the tunnel: carried.
        let mut handed = 0;
        if let Some(bt) = &self.pool.tls {
            let mut conn = match ClientConnection::new(bt.config.clone(), bt.name_for(c.backend.address.ip()))
            {
                Ok(conn) => conn,
                Err(e) => {
                    let tunnel = self.tls_tunnel_of(c, client_tls, None, &mut ctx.pools);
                    let step = Step::Close(CloseReason::BackendTlsError, format!("TLS client setup: {e}"));
                    return (Phase::TlsTunnel(tunnel), step, false);
                }
            };
            conn.set_buffer_limit(None);
            // A PROXY header goes raw before the ClientHello; client bytes read before the
            // connect (plain listeners) are encrypted once the handshake is done.
            let header_len = (self.proxy_header as usize).min(c.early.len());
            let (header, rest) = c.early.split_at(header_len);
            if !rest.is_empty() {
                // With the limit lifted rustls keeps all of it (at most one ClientHello's
                // worth of bytes) until the handshake ends.
                let _ = conn.writer().write_all(rest);
                handed = rest.len() as u64;
            }
            raw = header;
            backend_tls = Some(Box::new(TlsConn::Client(conn)));
        }
        let raw = raw.to_vec();
        let reencrypting = backend_tls.is_some();
        let mut tunnel = self.tls_tunnel_of(c, client_tls, backend_tls, &mut ctx.pools);
        if reencrypting {
            // Only the PROXY header goes raw; the rest was handed to the backend's TLS.
            tunnel.up = TlsDirection::with_early(&raw, &mut ctx.pools);
            tunnel.up.bytes = handed;
        }
        (Phase::TlsTunnel(tunnel), Step::Continue, true)
    }

    /// A TLS tunnel over the connected backend socket.
    pub(super) fn tls_tunnel_of(
        &self,
        c: Connecting,
        client_tls: Option<Box<TlsConn>>,
        backend_tls: Option<Box<TlsConn>>,
        pools: &mut Pools<'_>,
    ) -> TlsTunnel {
        let up = if backend_tls.is_none() {
            TlsDirection::with_early(&c.early, pools)
        } else {
            TlsDirection::default()
        };
        TlsTunnel {
            backend_sock: c.sock,
            backend_ready: c.ready,
            backend: c.backend,
            client_tls,
            backend_tls,
            up,
            down: TlsDirection::default(),
        }
    }

    /// Moves bytes both ways until neither direction can progress.
    pub(super) fn drive_tls_tunnel(&mut self, mut t: TlsTunnel, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        // As for plain tunnels: bytes before a reset are carried first.
        let errors = (
            std::mem::take(&mut self.client_ready.error),
            std::mem::take(&mut t.backend_ready.error),
        );
        loop {
            let up = t.up.pump(
                Side {
                    end: End {
                        sock: &self.client,
                        ready: &mut self.client_ready,
                    },
                    tls: t.client_tls.as_deref_mut(),
                },
                Side {
                    end: End {
                        sock: &t.backend_sock,
                        ready: &mut t.backend_ready,
                    },
                    tls: t.backend_tls.as_deref_mut(),
                },
                t.down.shut,
                &mut ctx.pools,
            );
            let up = match up {
                Ok(p) => p,
                Err(e) => return self.tls_tunnel_error(t, e, true, ctx),
            };
            let down = t.down.pump(
                Side {
                    end: End {
                        sock: &t.backend_sock,
                        ready: &mut t.backend_ready,
                    },
                    tls: t.backend_tls.as_deref_mut(),
                },
                Side {
                    end: End {
                        sock: &self.client,
                        ready: &mut self.client_ready,
                    },
                    tls: t.client_tls.as_deref_mut(),
                },
                t.up.shut,
                &mut ctx.pools,
            );
            let down = match down {
                Ok(p) => p,
                Err(e) => return self.tls_tunnel_error(t, e, false, ctx),
            };
            if up || down {
                self.last_activity = ctx.now;
            }
            if t.up.shut && t.down.shut {
                self.record_counts(t.up.bytes, t.down.bytes, 0, ctx);
                let detail = if t.up.truncated || t.down.truncated {
                    "both sides closed (one without close_notify)"
                } else {
                    "both sides closed"
                };
                return (
                    Phase::TlsTunnel(t),
                    Step::Close(CloseReason::Done, detail.into()),
                    false,
                );
            }
            if !up && !down {
                break;
            }
        }
        match pending_error(errors, &self.client, &t.backend_sock) {
            Some((e, upstream)) => self.tls_tunnel_error(t, TlsFlowError::Io(e), upstream, ctx),
            None => (Phase::TlsTunnel(t), Step::Continue, false),
        }
    }

    /// Ends a TLS tunnel that failed: names the reason, sends a queued alert, carries a
    /// reset to the other side.
    pub(super) fn tls_tunnel_error(
        &mut self,
        mut t: TlsTunnel,
        e: TlsFlowError,
        upstream: bool,
        ctx: &mut Ctx<'_>,
    ) -> (Phase, Step, bool) {
        self.record_counts(t.up.bytes, t.down.bytes, 0, ctx);
        let (reason, detail) = match e {
            TlsFlowError::Io(e) => self.carry_error(&t.backend_sock, e, upstream),
            TlsFlowError::SourceTls(e) if upstream => {
                // rustls queued an alert: send it if the socket takes it, then reset the
                // backend (the stream it got is cut short).
                if let Some(conn) = t.client_tls.as_deref_mut() {
                    let _ = conn.write_tls(&mut WriteTo(&self.client));
                }
                let _ = SockRef::from(&t.backend_sock).set_linger(Some(Duration::ZERO));
                (CloseReason::TlsError, format!("TLS error from the client: {e}"))
            }
            TlsFlowError::SourceTls(e) => {
                if let Some(conn) = t.backend_tls.as_deref_mut() {
                    let _ = conn.write_tls(&mut WriteTo(&t.backend_sock));
                }
                let _ = SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
                (
                    CloseReason::BackendTlsError,
                    format!("TLS with backend {} ({}): {e}", t.backend.name, t.backend.address),
                )
            }
        };
        (Phase::TlsTunnel(t), Step::Close(reason, detail), false)
    }
}

/// A stable reason for a failed handshake, for logs and `gatehouse_tls_refused_total`.
fn handshake_reason(e: &rustls::Error) -> &'static str {
    match e {
        rustls::Error::PeerIncompatible(_) => "incompatible_client",
        rustls::Error::AlertReceived(_) => "client_alert",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. } => {
            "bad_handshake_message"
        }
        _ => "handshake_failed",
    }
}
