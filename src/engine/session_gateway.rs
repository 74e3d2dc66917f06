//! The gateway front of a session (issue 5): on a gateway's one port, after the PROXY header
//! and TLS (when the first byte is a TLS record), the `Front` phase reads the first bytes and
//! routes them: a TPKT header is a plain RDP client (balanced over the listener's desktop
//! pool through the broker), HTTP is the client API (login, resources, launch, the tunnel
//! upgrade, `/health`) or, for other requests, the listener's web server.
//!
//! Owns the phase's reading and writing (plain or through the client's rustls connection),
//! the broker requests a session waits on (answered through the worker's channel, matched by
//! tag); what an answer leads to (the client's answer, or a tunnel towards the one host the
//! broker chose) is in `session_gateway_answers.rs`. Decoding is in `crate::gateway`
//! (sans-IO); sockets, slots and timers stay with `session.rs`.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use gatehouse_control::message::{ChooseHost, LaunchMode, Login, Request, Secret};

use super::{Ctx, Phase, Session, Step};
use crate::engine::tls_conn::TlsConn;
use crate::engine::tls_flow::{read_plain, read_plaintext, Got, WriteTo};
use crate::gateway::api::{self, ApiCall, ApiError};
use crate::gateway::http::{self, BodyRead, HeadParse, CHUNK_FRAMING, MAX_BODY, MAX_HEAD};
use crate::gateway::sniff::{self, FirstBytes};
use crate::gateway::x224::{self, Cookie, X224Parse};
use crate::metrics::CloseReason;
use crate::proxy_protocol::SIGNATURE;
use crate::shared::ListenerRole;

#[path = "session_gateway_answers.rs"]
mod answers;

/// Most bytes the front holds from a client before a request is complete (a head and a body).
const MAX_INPUT: usize = MAX_HEAD + MAX_BODY + CHUNK_FRAMING;
/// How long a lingering close waits for the client's FIN after the last answer.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Most bytes a lingering close reads and drops before it closes anyway.
const LINGER_BYTES: usize = 1 << 20;

/// State of the gateway front.
pub struct Front {
    /// The client's TLS connection (Gateway SSL, Direct SSL), or none (plain modes, RDP).
    tls: Option<Box<TlsConn>>,
    /// Client bytes (plaintext) read and not yet consumed.
    input: Vec<u8>,
    /// Answer bytes not yet written (plain clients; TLS answers go into rustls at once).
    output: Vec<u8>,
    /// Whether no request has been handled yet (the first bytes are sniffed).
    first: bool,
    /// The client ended its stream.
    eof: bool,
    /// The broker request the session waits for.
    waiting: Option<Waiting>,
    /// Close once the output is written.
    close_after: Option<(CloseReason, String)>,
    /// Closing: the answer is written and our side shut; client bytes dropped so far.
    lingering: Option<usize>,
    /// close_notify queued after the last answer (TLS fronts, RFC 8446 §6.1).
    close_notified: bool,
    /// The request being answered is a HEAD: answers go without their body.
    head_request: bool,
    /// `100 Continue` was sent for the request whose body is being read.
    continued: bool,
    /// Deadline of the current step (reading a request, or a broker answer).
    deadline: Instant,
}

impl Front {
    /// Moves the deadline earlier to `at` if it is later.
    pub(super) fn cap_deadline(&mut self, at: Instant) {
        self.deadline = self.deadline.min(at);
    }

    /// `answer` as the request's method takes it: the head alone for a HEAD.
    fn for_method(&self, answer: Vec<u8>) -> Vec<u8> {
        match self.head_request {
            true => http::head_only(answer),
            false => answer,
        }
    }
}

/// A broker request in flight.
struct Waiting {
    tag: u64,
    what: Pending,
    keep_alive: bool,
    /// The API endpoint (for metrics and logs).
    endpoint: &'static str,
}

/// What the answer is for.
enum Pending {
    Login,
    Resources,
    Launch(LaunchMode),
    /// A tunnel: the ticket's host and port, as this gateway verified them.
    Redeem {
        host: String,
        port: u16,
        user: String,
    },
    /// A plain RDP client: the Connection Request is forwarded unchanged.
    Rdp {
        user: Option<String>,
    },
}

/// Where a gateway session connects once the broker chose (no balancer, no retry).
pub struct FixedTarget {
    /// What the client gets when the host accepts (`101` for a tunnel; nothing for RDP).
    greeting: Vec<u8>,
    /// What the client gets when it does not.
    on_failure: Vec<u8>,
}

impl Front {
    /// Whether TLS is on between the client and the gateway.
    fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The tag of a broker request: the slab key and the low bits of the serial, so an answer
/// for a session that ended (and whose slot was reused) is recognised and dropped.
pub fn answer_tag(key: usize, serial: u64) -> u64 {
    ((serial & 0xFFFF_FFFF) << 32) | (key as u64 & 0xFFFF_FFFF)
}

/// The slab key and serial bits of a tag.
pub fn split_tag(tag: u64) -> (usize, u64) {
    ((tag & 0xFFFF_FFFF) as usize, tag >> 32)
}

impl Session {
    /// Starts the front on a gateway listener: after the PROXY header (plain, `early` holds
    /// the bytes read so far) or after the TLS handshake.
    pub(super) fn start_front(
        &mut self,
        tls: Option<Box<TlsConn>>,
        early: Vec<u8>,
        ctx: &mut Ctx<'_>,
    ) -> (Phase, Step, bool) {
        let front = Front {
            tls,
            input: early,
            output: Vec::new(),
            first: true,
            eof: false,
            waiting: None,
            close_after: None,
            lingering: None,
            close_notified: false,
            head_request: false,
            continued: false,
            deadline: ctx.now + self.settings.handshake_timeout,
        };
        (Phase::Front(front), Step::Continue, true)
    }

    /// The deadline of the front.
    pub(super) fn front_deadline(f: &Front) -> Instant {
        f.deadline
    }

    /// The front's deadline passed: a slow request or a broker that did not answer in time.
    pub(super) fn front_timeout(&mut self, mut f: Front, ctx: &mut Ctx<'_>) -> Step {
        if let Some(w) = f.waiting.take() {
            // The control client answers every request within its timeout; this is the
            // backstop if it did not.
            let err = ApiError::new(504, "broker_timeout", "the broker did not answer in time");
            self.fail_waiting(&mut f, w, err, None, ctx);
            let (phase, step, _) = self.drive_front(f, ctx);
            self.phase = phase;
            return step;
        }
        if let Some((reason, detail)) = f.close_after.take() {
            if f.lingering.is_some() {
                // The answer went out; the client neither closed nor stopped sending.
                return Step::Close(reason, detail);
            }
            // An answer (a 408 too) the client did not take within another deadline.
            return Step::Close(reason, format!("{detail}; the answer was not taken"));
        }
        if f.input.is_empty() {
            // Nothing asked (a pre-connect, or a kept-alive client gone quiet): just close.
            let detail = match f.first {
                true => format!("no request within {:?}", self.settings.handshake_timeout),
                false => format!("no further request within {:?}", self.settings.handshake_timeout),
            };
            return Step::Close(CloseReason::HandshakeTimeout, detail);
        }
        let detail = format!(
            "request incomplete after {:?} ({} bytes)",
            self.settings.handshake_timeout,
            f.input.len()
        );
        if sniff::classify(&f.input) != Some(FirstBytes::Http) {
            return Step::Close(CloseReason::HandshakeTimeout, detail);
        }
        // Part of an HTTP request: say so (408, as HTTP servers do), then close. The answer
        // gets one more deadline to be written.
        ctx.shared.metrics.count_gateway_answer("invalid", 408);
        let err = ApiError::new(408, "request_timeout", &detail);
        self.answer_close(&mut f, err.response(), CloseReason::HandshakeTimeout, &detail);
        f.deadline = ctx.now + self.settings.handshake_timeout;
        let (phase, step, _) = self.drive_front(f, ctx);
        self.phase = phase;
        step
    }

    /// Writes answers, reads requests and handles them as far as readiness allows.
    pub(super) fn drive_front(&mut self, mut f: Front, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        loop {
            if let Err(e) = self.flush_front(&mut f) {
                return (Phase::Closed, Step::Close(CloseReason::ClientError, e), false);
            }
            let flushed = f.output.is_empty() && !f.tls.as_deref().is_some_and(|c| c.wants_write());
            if !flushed {
                return (Phase::Front(f), Step::Continue, false);
            }
            if f.close_after.is_some() {
                // A TLS client learns that the answer is whole from close_notify before our
                // FIN (RFC 8446 §6.1); without it a strict client reports a truncation.
                if let Some(conn) = f.tls.as_deref_mut().filter(|_| !f.close_notified) {
                    conn.send_close_notify();
                    f.close_notified = true;
                    continue;
                }
                return self.linger_front(f, ctx);
            }
            if f.waiting.is_some() {
                return (Phase::Front(f), Step::Continue, false);
            }
            // Handle what is buffered before reading more (pipelined requests).
            match self.handle_input(&mut f, ctx) {
                Handled::Wait => {}
                Handled::Again => continue,
                Handled::Connect => {
                    let phase = std::mem::replace(&mut self.phase, Phase::Closed);
                    return (phase, Step::Continue, true);
                }
                Handled::Close(reason, detail) => return (Phase::Closed, Step::Close(reason, detail), false),
            }
            if f.waiting.is_some() {
                // A request went to the broker: its answer is due even if the client has
                // already half-closed after sending it (RFC 9112 §9.3.2).
                return (Phase::Front(f), Step::Continue, false);
            }
            if f.eof {
                let detail = if f.input.is_empty() {
                    "client closed".to_string()
                } else {
                    format!(
                        "client closed with {} bytes of an incomplete request",
                        f.input.len()
                    )
                };
                let reason = if f.input.is_empty() {
                    CloseReason::Done
                } else {
                    CloseReason::BadRequest
                };
                if f.tls.is_some() {
                    // Our side ends with close_notify too (the close path above sends it).
                    f.close_after = Some((reason, detail));
                    continue;
                }
                return (Phase::Closed, Step::Close(reason, detail), false);
            }
            match self.read_front(&mut f) {
                Ok(true) => continue,
                Ok(false) => return (Phase::Front(f), Step::Continue, false),
                Err(e) => return (Phase::Closed, Step::Close(CloseReason::ClientError, e), false),
            }
        }
    }

    /// The last answer is written and the session ends. A client still sending (the body of
    /// a refused request) would make close(2) answer with a RST, and a RST can take the
    /// answer with it (Windows drops what it received; a slow link drops what was still in
    /// flight). So, as HTTP servers do, the close lingers: our side is shut (the client reads
    /// the answer and then EOF), and what the client still sends is read and dropped until
    /// its FIN, [`LINGER`] or [`LINGER_BYTES`].
    fn linger_front(&mut self, mut f: Front, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        let close = |f: &mut Front| {
            let (reason, detail) = f.close_after.take().expect("lingering implies close_after");
            (Phase::Closed, Step::Close(reason, detail), false)
        };
        if f.eof {
            // Read to its end already: close(2) sends a FIN.
            return close(&mut f);
        }
        let mut dropped = match f.lingering {
            Some(n) => n,
            None => {
                let _ = self.client.shutdown(std::net::Shutdown::Write);
                f.deadline = ctx.now + LINGER;
                0
            }
        };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if !self.client_ready.readable {
                f.lingering = Some(dropped);
                return (Phase::Front(f), Step::Continue, false);
            }
            match (&self.client).read(&mut chunk) {
                // The client's FIN, or its reset: nothing more to spare it from.
                Ok(0) => return close(&mut f),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.client_ready.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return close(&mut f),
                Ok(n) => {
                    dropped += n;
                    if dropped > LINGER_BYTES {
                        return close(&mut f);
                    }
                    if n < chunk.len() && !self.client_ready.read_closed {
                        self.client_ready.readable = false;
                    }
                }
            }
        }
    }

    /// Reads client bytes into `input` (bounded); returns whether anything happened.
    fn read_front(&mut self, f: &mut Front) -> Result<bool, String> {
        if f.input.len() >= MAX_INPUT {
            return Ok(false);
        }
        let mut chunk = [0u8; 4096];
        let want = (MAX_INPUT - f.input.len()).min(chunk.len());
        let got = match f.tls.as_deref_mut() {
            Some(conn) => read_plaintext(conn, &self.client, &mut self.client_ready, &mut chunk[..want]),
            None => read_plain(&self.client, &mut self.client_ready, &mut chunk[..want]),
        };
        match got {
            Ok(Got::Bytes(n)) => {
                f.input.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Ok(Got::End { .. }) => {
                f.eof = true;
                Ok(true)
            }
            Ok(Got::Nothing { moved }) => Ok(moved),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Writes pending answer bytes (plain) or records (TLS) as readiness allows.
    fn flush_front(&mut self, f: &mut Front) -> Result<(), String> {
        if let Some(conn) = f.tls.as_deref_mut() {
            if !f.output.is_empty() {
                conn.write_plaintext(&f.output).map_err(|e| e.to_string())?;
                f.output.clear();
            }
            while conn.wants_write() && self.client_ready.writable {
                match conn.write_tls(&mut WriteTo(&self.client)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.client_ready.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            return Ok(());
        }
        while !f.output.is_empty() && self.client_ready.writable {
            match (&self.client).write(&f.output) {
                Ok(0) => return Err("client closed while we wrote".into()),
                Ok(n) => {
                    f.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.client_ready.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Decides what the buffered bytes are and acts on a complete request.
    fn handle_input(&mut self, f: &mut Front, ctx: &mut Ctx<'_>) -> Handled {
        // A PROXY v2 header starts with what would otherwise read as empty lines: tell it
        // apart before they are skipped (a listener that trusts senders reads it earlier).
        if f.first && !f.is_tls() {
            let n = f.input.len().min(SIGNATURE.len());
            if f.input[..n] == SIGNATURE[..n] {
                if n == SIGNATURE.len() {
                    let detail = format!(
                        "a PROXY v2 header from {}, but this listener has no accept_proxy_from",
                        self.peer
                    );
                    return self.answer_close(f, Vec::new(), CloseReason::ProxyHeaderUntrusted, &detail);
                }
                if !f.eof {
                    return Handled::Wait;
                }
            }
        }
        // RFC 9112 §2.2: empty lines before a request line are skipped (some clients send
        // one after a POST body); a lone CR waits for its LF.
        let empty = http::leading_empty_lines(&f.input);
        f.input.drain(..empty);
        if f.input.is_empty() || (f.input == b"\r" && !f.eof) {
            return Handled::Wait;
        }
        if f.first {
            let Some(kind) = sniff::classify(&f.input) else {
                return if f.eof {
                    self.answer_close(
                        f,
                        Vec::new(),
                        CloseReason::BadRequest,
                        "client closed after a few bytes",
                    )
                } else {
                    Handled::Wait
                };
            };
            match kind {
                FirstBytes::Http => {}
                FirstBytes::Rdp if !f.is_tls() => return self.handle_rdp(f, ctx),
                FirstBytes::Rdp => {
                    let detail = "an RDP Connection Request inside TLS (RDP negotiates TLS itself)";
                    return self.answer_close(f, Vec::new(), CloseReason::BadRequest, detail);
                }
                FirstBytes::Tls => {
                    let detail = "a TLS ClientHello, but this listener has tls = \"off\"";
                    return self.answer_close(f, Vec::new(), CloseReason::BadRequest, detail);
                }
                FirstBytes::Unknown => {
                    let shown: String = f.input.iter().take(8).map(|b| format!("{b:02x}")).collect();
                    let detail = format!("first bytes are not TLS, RDP or HTTP ({shown})");
                    return self.answer_close(f, Vec::new(), CloseReason::BadRequest, &detail);
                }
            }
        }
        f.head_request = false;
        let head = match http::parse_head(&f.input) {
            HeadParse::Incomplete => return Handled::Wait,
            HeadParse::Invalid(e) => {
                let err = ApiError::from(&e);
                ctx.shared.metrics.count_gateway_answer("invalid", err.status);
                let detail = format!("bad HTTP request: {e}");
                return self.answer_close(f, err.response(), CloseReason::BadRequest, &detail);
            }
            HeadParse::Complete(head) => head,
        };
        f.head_request = head.method == "HEAD";
        if !api::is_api_path(&head.path) {
            return self.handle_other_http(f, &head.method, &head.path, ctx);
        }
        let (body, taken) = match http::read_body(&head, &f.input[head.head_len..]) {
            BodyRead::Complete { body, taken } => (body, taken),
            BodyRead::Invalid(e) => {
                let err = ApiError::from(&e);
                ctx.shared.metrics.count_gateway_answer("invalid", err.status);
                let detail = format!("bad HTTP request body: {e}");
                return self.answer_close(f, err.response(), CloseReason::BadRequest, &detail);
            }
            BodyRead::Incomplete if f.eof => {
                let detail = "client closed before the whole request body";
                return self.answer_close(f, Vec::new(), CloseReason::BadRequest, detail);
            }
            BodyRead::Incomplete if head.expect_continue && !f.continued => {
                // RFC 9110 §10.1.1: the client waits for this before it sends the body.
                f.output.extend_from_slice(http::CONTINUE);
                f.continued = true;
                return Handled::Again;
            }
            BodyRead::Incomplete => return Handled::Wait,
        };
        f.continued = false;
        f.first = false;
        f.input.drain(..head.head_len + taken);
        f.deadline = ctx.now + self.settings.handshake_timeout;
        let call = match api::route(&head, &body) {
            Ok(call) => call,
            Err(err) => {
                ctx.shared.metrics.count_gateway_answer("invalid", err.status);
                let detail = format!(
                    "{} {}: {} {}",
                    head.method,
                    for_log(&head.path),
                    err.status,
                    err.code
                );
                // A missing or unreadable token or ticket is refused like one the broker
                // or the ticket check turns down (same answer, same label); the rest is a
                // malformed request.
                let reason = match err.status {
                    401 | 403 => CloseReason::Refused,
                    _ => CloseReason::BadRequest,
                };
                return self.answer_close(f, err.response(), reason, &detail);
            }
        };
        self.handle_call(f, call, head.keep_alive, ctx)
    }

    /// An HTTP request outside the API: the web server when the listener has one, else 404.
    fn handle_other_http(&mut self, f: &mut Front, method: &str, path: &str, ctx: &mut Ctx<'_>) -> Handled {
        if !f.first || self.pool.backends.is_empty() {
            ctx.shared.metrics.count_gateway_answer("other", 404);
            let err = ApiError::new(404, "not_found", "no such endpoint on this gateway");
            let detail = format!(
                "{method} {}: not an API request and no forward_http web server",
                for_log(path)
            );
            let reason = CloseReason::BadRequest;
            return self.answer_close(f, err.response(), reason, &detail);
        }
        // The whole connection becomes a tunnel to the web server, request bytes first.
        ctx.shared.metrics.count_gateway_answer("forward_http", 0);
        let early = std::mem::take(&mut f.input);
        self.handshaken = f.tls.take();
        match self.start_connect(Vec::new(), early, ctx) {
            Step::Continue => Handled::Connect,
            Step::Close(reason, detail) => Handled::Close(reason, detail),
        }
    }

    /// Acts on one decoded API call: answers it, or sends it to a broker and waits.
    fn handle_call(&mut self, f: &mut Front, call: ApiCall, keep_alive: bool, ctx: &mut Ctx<'_>) -> Handled {
        let gateway = ctx.shared.gateway().cloned();
        let Some(gateway) = gateway else {
            let err = ApiError::new(
                503,
                "no_broker",
                "this gateway has no broker connection configured",
            );
            return self.answer_close(
                f,
                err.response(),
                CloseReason::BrokerUnavailable,
                "no [gateway] runtime",
            );
        };
        if let ApiCall::Health = call {
            let brokers = gateway.connected_brokers();
            let status = if brokers.is_empty() { 503 } else { 200 };
            ctx.shared.metrics.count_gateway_answer("health", status);
            let answer = f.for_method(api::health(&brokers));
            f.output.extend_from_slice(&answer);
            // A /health answer ends the connection (`Connection: close`), as health checkers
            // expect, whatever the request asked.
            let method = if f.head_request { "HEAD" } else { "GET" };
            f.close_after = Some((CloseReason::Done, format!("{method} /health: {status}")));
            self.routine = status == 200;
            return Handled::Again;
        }
        let Some(front) = gateway.front.as_ref() else {
            let err = ApiError::new(503, "no_broker", "this gateway forwards only; it has no broker");
            return self.answer_close(
                f,
                err.response(),
                CloseReason::BrokerUnavailable,
                "no broker configured",
            );
        };
        let client_addr = self.client_addr;
        let tag = answer_tag(self.key, self.serial);
        let (request, target, what, endpoint) = match call {
            ApiCall::Health | ApiCall::NotApi => {
                // Health is answered above and other paths never get here (is_api_path).
                let err = ApiError::new(404, "not_found", "no such endpoint on this gateway");
                return self.answer_close(f, err.response(), CloseReason::BadRequest, "not an API call");
            }
            ApiCall::Login {
                user,
                password,
                second_factor,
            } => (
                Request::Login(Login {
                    user,
                    password,
                    second_factor,
                    client_addr,
                    wait_ms: Some(gateway.request_timeout.as_millis().min(u128::from(u32::MAX)) as u32),
                }),
                None,
                Pending::Login,
                "login",
            ),
            ApiCall::Resources { token } => (
                Request::ListResources(gatehouse_control::message::ListResources {
                    session_token: Secret::new(token.token),
                }),
                Some(token.broker),
                Pending::Resources,
                "resources",
            ),
            ApiCall::Launch {
                token,
                resource,
                mode,
            } => (
                Request::Launch(gatehouse_control::message::Launch {
                    session_token: Secret::new(token.token),
                    resource,
                    mode,
                    client_addr,
                }),
                Some(token.broker),
                Pending::Launch(mode),
                "launch",
            ),
            ApiCall::Tunnel { ticket, session } => {
                // Signature, expiry and site here; the issuer spends the nonce.
                let verified = match front.check_ticket(&ticket, &gateway.site) {
                    Ok(v) => v,
                    Err(e) => {
                        let reason = gatehouse_control::message::RefusalReason::from(&e);
                        let err = api::refusal_error(&gatehouse_control::message::Refused::with_detail(
                            reason,
                            e.to_string(),
                        ));
                        ctx.shared.metrics.count_gateway_answer("tunnel", err.status);
                        let detail = format!("tunnel refused: {}: {e}", err.code);
                        return self.answer_close(f, err.response(), CloseReason::Refused, &detail);
                    }
                };
                let c = verified.claims;
                if session.broker != c.issuer {
                    // Launches go to the session's broker, which issues the ticket.
                    let err = ApiError::new(
                        403,
                        "ticket_binding_mismatch",
                        "the ticket is not of this session",
                    );
                    ctx.shared.metrics.count_gateway_answer("tunnel", err.status);
                    let detail = "tunnel refused: ticket issued by another broker than the session's";
                    return self.answer_close(f, err.response(), CloseReason::Refused, detail);
                }
                (
                    Request::RedeemTicket(gatehouse_control::message::RedeemTicket {
                        ticket: Secret::new(ticket),
                        session_token: Some(Secret::new(session.token)),
                    }),
                    Some(c.issuer),
                    Pending::Redeem {
                        host: c.host,
                        port: c.port,
                        user: c.user,
                    },
                    "tunnel",
                )
            }
        };
        match target {
            Some(broker) => front.control.submit_to(&broker, tag, request, ctx.answers),
            None => front.control.submit(tag, request, ctx.answers),
        }
        f.waiting = Some(Waiting {
            tag,
            what,
            keep_alive,
            endpoint,
        });
        // The control client answers within its own timeout; a second more is the backstop.
        f.deadline = ctx.now + gateway.request_timeout + std::time::Duration::from_secs(1);
        Handled::Wait
    }

    /// A plain RDP client on a gateway port: read its Connection Request, ask the broker for
    /// the host (the cookie is a hint for affinity, never an address), forward it unchanged.
    fn handle_rdp(&mut self, f: &mut Front, ctx: &mut Ctx<'_>) -> Handled {
        let ListenerRole::Front { rdp_resource } = &self.settings.role else {
            return Handled::Close(CloseReason::BadRequest, "not a gateway listener".into());
        };
        let Some(resource) = rdp_resource.clone() else {
            ctx.shared.metrics.count_gateway_rdp("not_enabled");
            let answer = x224::negotiation_failure(x224::failure_code::CANNOT_ROUTE);
            let detail = "an RDP client, but this listener has no rdp_resource (RDP balancing is off)";
            return self.answer_close(f, answer, CloseReason::BadRequest, detail);
        };
        let request = match x224::parse_connection_request(&f.input) {
            X224Parse::Incomplete if f.eof => {
                ctx.shared.metrics.count_gateway_rdp("bad_request");
                let detail = format!("client closed after {} bytes of an X.224 request", f.input.len());
                return self.answer_close(f, Vec::new(), CloseReason::BadRequest, &detail);
            }
            X224Parse::Incomplete => return Handled::Wait,
            X224Parse::Invalid(e) => {
                ctx.shared.metrics.count_gateway_rdp("bad_request");
                let answer = x224::negotiation_failure(x224::failure_code::CANNOT_ROUTE);
                let detail = format!("bad X.224 Connection Request: {e}");
                return self.answer_close(f, answer, CloseReason::BadRequest, &detail);
            }
            X224Parse::Complete(r) => r,
        };
        f.first = false;
        let gateway = ctx.shared.gateway().cloned();
        let Some(front) = gateway.as_ref().and_then(|g| g.front.as_ref()) else {
            let answer = x224::negotiation_failure(x224::failure_code::CANNOT_ROUTE);
            return self.answer_close(f, answer, CloseReason::BrokerUnavailable, "no broker configured");
        };
        let gateway = gateway.as_ref().expect("front implies gateway");
        let (user_hint, routing_token) = match &request.cookie {
            Some(Cookie::User(u)) => (Some(u.clone()), None),
            Some(Cookie::RoutingToken { addr, port }) => (None, Some(SocketAddr::from((*addr, *port)))),
            _ => (None, None),
        };
        let tag = answer_tag(self.key, self.serial);
        let choose = Request::ChooseHost(ChooseHost {
            resource: Some(resource),
            site: gateway.site.clone(),
            user_hint: user_hint.clone(),
            routing_token,
        });
        front.control.submit(tag, choose, ctx.answers);
        f.waiting = Some(Waiting {
            tag,
            what: Pending::Rdp { user: user_hint },
            keep_alive: false,
            endpoint: "rdp",
        });
        f.deadline = ctx.now + gateway.request_timeout + std::time::Duration::from_secs(1);
        Handled::Wait
    }

    /// Queues `answer` and closes once it is written.
    fn answer_close(&mut self, f: &mut Front, answer: Vec<u8>, reason: CloseReason, detail: &str) -> Handled {
        let answer = f.for_method(answer);
        f.output.extend_from_slice(&answer);
        f.close_after = Some((reason, detail.to_string()));
        f.input.clear();
        Handled::Again
    }

    /// Answers a failed broker request with `err` (and closes, as every error does); `why`
    /// is for the log when it says more than the client is told.
    fn fail_waiting(
        &mut self,
        f: &mut Front,
        w: Waiting,
        err: ApiError,
        why: Option<String>,
        ctx: &mut Ctx<'_>,
    ) {
        let rdp = matches!(w.what, Pending::Rdp { .. });
        let why = why.unwrap_or_else(|| err.message.clone());
        self.fail_because(f, w.endpoint, rdp, err, &why, ctx);
    }

    /// Answers `err` to the client of `endpoint` (an RDP client gets a negotiation failure)
    /// and closes.
    fn fail(&mut self, f: &mut Front, endpoint: &'static str, rdp: bool, err: ApiError, ctx: &mut Ctx<'_>) {
        let why = err.message.clone();
        self.fail_because(f, endpoint, rdp, err, &why, ctx);
    }

    /// [`Session::fail`], with `why` in the log line instead of the client's message.
    fn fail_because(
        &mut self,
        f: &mut Front,
        endpoint: &'static str,
        rdp: bool,
        err: ApiError,
        why: &str,
        ctx: &mut Ctx<'_>,
    ) {
        ctx.shared.metrics.count_gateway_answer(endpoint, err.status);
        let detail = format!("{endpoint}: {} {}: {why}", err.status, err.code);
        let (answer, reason) = match rdp {
            true => {
                ctx.shared.metrics.count_gateway_rdp(err.code);
                let reason = match err.status {
                    500.. => CloseReason::BrokerUnavailable,
                    _ => CloseReason::Refused,
                };
                (
                    x224::negotiation_failure(x224::failure_code::CANNOT_ROUTE),
                    reason,
                )
            }
            _ if err.status >= 500 => (err.response(), CloseReason::BrokerUnavailable),
            _ => (err.response(), CloseReason::Refused),
        };
        self.answer_close(f, answer, reason, &detail);
    }
}

/// A client's request path for a log line: control and format characters (a line
/// separator, a right-to-left override) escaped, and at most 200 characters.
fn for_log(path: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = path.chars().take(MAX).flat_map(char::escape_debug).collect();
    if path.chars().nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}

/// What handling the buffered input led to.
enum Handled {
    /// Nothing more to do until more bytes or an answer arrive.
    Wait,
    /// Output was queued or state changed: drive again.
    Again,
    /// `self.phase` was set to `Connecting`.
    Connect,
    /// Close now.
    Close(CloseReason, String),
}

#[cfg(test)]
mod tests {
    use super::for_log;

    #[test]
    fn request_paths_are_logged_escaped_and_bounded() {
        assert_eq!(for_log("/api/v1/login"), "/api/v1/login");
        let hostile = "/a\u{202e}b\u{2028}c\td";
        let logged = for_log(hostile);
        assert!(!logged.contains('\u{202e}') && !logged.contains('\u{2028}') && !logged.contains('\t'));
        assert_eq!(logged, "/a\\u{202e}b\\u{2028}c\\td");
        let long = "/".repeat(1000);
        assert_eq!(for_log(&long), format!("{}...", "/".repeat(200)));
    }
}
