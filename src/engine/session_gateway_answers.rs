//! A broker answer reaches a gateway session (issue 5): the API's answer is written to the
//! client, or, for a redeemed tunnel ticket or a balanced RDP client, the session connects to
//! the one host the broker chose (no balancer, no retry) and the client learns the outcome
//! (`101`, or `502` / an RDP negotiation failure) once the connect succeeds or fails.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use gatehouse_control::message::Reply;
use mio::net::TcpStream;
use mio::Interest;

use super::super::{backend_token, is_out_of_files, BackendRef, Connecting, Ctx, Phase, Session, Step};
use super::{FixedTarget, Front, Handled, Pending, Waiting};
use crate::broker_role::{Answer, BrokerReply, ClientFailure};
use crate::engine::flow::Ready;
use crate::gateway::api::{self, ApiError};
use crate::gateway::http;
use crate::gateway::x224;
use crate::metrics::CloseReason;
use crate::shared::BackendRuntime;

impl Session {
    /// A broker answer for this session arrived (the worker matched the tag).
    pub fn on_answer(&mut self, answer: Answer, ctx: &mut Ctx<'_>) -> Step {
        let phase = std::mem::replace(&mut self.phase, Phase::Closed);
        let Phase::Front(mut f) = phase else {
            self.phase = phase;
            return Step::Continue;
        };
        let Some(w) = f.waiting.take_if(|w| w.tag == answer.tag) else {
            self.phase = Phase::Front(f);
            return Step::Continue;
        };
        let handled = match answer.result {
            Ok(reply) => self.on_reply(&mut f, w, reply, ctx),
            Err(failure) => {
                // The client is told what it can act on; the log names the broker and why.
                let err = failure_error(&failure);
                self.fail_waiting(&mut f, w, err, Some(failure.to_string()), ctx);
                Handled::Again
            }
        };
        match handled {
            Handled::Connect => {
                // `start_fixed_connect` set the phase.
                self.drive(ctx)
            }
            Handled::Close(reason, detail) => Step::Close(reason, detail),
            Handled::Wait | Handled::Again => {
                self.phase = Phase::Front(f);
                self.drive(ctx)
            }
        }
    }

    fn on_reply(&mut self, f: &mut Front, w: Waiting, answer: BrokerReply, ctx: &mut Ctx<'_>) -> Handled {
        let BrokerReply {
            broker,
            reply,
            host_address,
        } = answer;
        if let Reply::Refused(refused) = &reply {
            let err = api::refusal_error(refused);
            self.fail_waiting(f, w, err, None, ctx);
            return Handled::Again;
        }
        let keep = w.keep_alive;
        match (w.what, reply) {
            (Pending::Login, Reply::LoginOk(ok)) => {
                ctx.shared.metrics.count_gateway_answer("login", 200);
                f.output.extend_from_slice(&api::login_ok(&broker, &ok, keep));
            }
            (Pending::Resources, Reply::Resources(r)) => {
                ctx.shared.metrics.count_gateway_answer("resources", 200);
                f.output.extend_from_slice(&api::resources_ok(&r, keep));
            }
            (Pending::Launch(mode), Reply::Launched(l)) => {
                ctx.shared.metrics.count_gateway_answer("launch", 200);
                f.output.extend_from_slice(&api::launched_ok(mode, &l, keep));
            }
            (Pending::Redeem { host, port, user }, Reply::Redeemed(r)) => {
                // The issuer's view of the ticket must be the one this gateway checked.
                if r.host != host || r.port != port || r.user != user {
                    let err = ApiError::new(403, "ticket_binding_mismatch", "the ticket's binding changed");
                    self.fail(f, "tunnel", false, err, ctx);
                    return Handled::Again;
                }
                let Some(address) = host_address else {
                    let err = ApiError::new(502, "host_unreachable", format!("cannot resolve host {host:?}"));
                    self.fail(f, "tunnel", false, err, ctx);
                    return Handled::Again;
                };
                let early = std::mem::take(&mut f.input);
                let failure = ApiError::new(
                    502,
                    "host_unreachable",
                    "the session host did not accept the tunnel",
                );
                let target = FixedTarget {
                    greeting: http::switching_protocols(),
                    on_failure: failure.response(),
                };
                tracing::info!(
                    client = %self.client_addr,
                    listener = %self.settings.listener,
                    %user,
                    host = %address,
                    broker = %broker,
                    "tunnel ticket redeemed"
                );
                return self.start_fixed_connect(f, address, &host, early, target, "tunnel", ctx);
            }
            (Pending::Rdp { user }, Reply::HostChosen(h)) => {
                let Some(address) = host_address else {
                    ctx.shared.metrics.count_gateway_rdp("no_host");
                    let answer = x224::negotiation_failure(x224::failure_code::CANNOT_ROUTE);
                    let detail = format!("cannot resolve host {:?}", h.host);
                    return self.answer_close(f, answer, CloseReason::NoBackend, &detail);
                };
                ctx.shared.metrics.count_gateway_rdp("routed");
                tracing::info!(
                    client = %self.client_addr,
                    listener = %self.settings.listener,
                    user_hint = user.as_deref().unwrap_or("-"),
                    host = %address,
                    broker = %broker,
                    "RDP client balanced"
                );
                let early = std::mem::take(&mut f.input);
                let target = FixedTarget {
                    greeting: Vec::new(),
                    on_failure: x224::negotiation_failure(x224::failure_code::CANNOT_ROUTE),
                };
                return self.start_fixed_connect(f, address, &h.host, early, target, "rdp", ctx);
            }
            (what, _) => {
                // The control client checks that an answer fits its request; a backstop.
                let err = ApiError::new(
                    502,
                    "bad_broker_answer",
                    "the broker answered something unexpected",
                );
                self.fail(f, w.endpoint, matches!(what, Pending::Rdp { .. }), err, ctx);
                return Handled::Again;
            }
        }
        if !keep {
            f.close_after = Some((CloseReason::Done, format!("{} answered", w.endpoint)));
        }
        f.deadline = ctx.now + self.settings.handshake_timeout;
        Handled::Again
    }

    /// Connects to the one host the broker chose; sets `self.phase` to `Connecting`.
    #[allow(clippy::too_many_arguments)]
    fn start_fixed_connect(
        &mut self,
        f: &mut Front,
        address: SocketAddr,
        name: &str,
        early: Vec<u8>,
        target: FixedTarget,
        what: &'static str,
        ctx: &mut Ctx<'_>,
    ) -> Handled {
        let runtime = Arc::new(BackendRuntime::default());
        runtime.active.fetch_add(1, Ordering::Relaxed);
        runtime.total.fetch_add(1, Ordering::Relaxed);
        let backend = BackendRef {
            index: usize::MAX,
            name: Arc::from(name),
            address,
            runtime,
        };
        self.backend_label = Some((backend.name.clone(), address));
        let mut sock = match TcpStream::connect(address) {
            Ok(s) => s,
            Err(e) => {
                let reason = if is_out_of_files(&e) {
                    CloseReason::OutOfFiles
                } else {
                    CloseReason::ConnectFailed
                };
                let detail = format!("{what}: connect to {address}: {e}");
                return self.answer_close(f, target.on_failure, reason, &detail);
            }
        };
        super::super::connect_phase::tune_backend_socket(&sock, &self.settings.dead_peer);
        if let Err(e) = ctx.registry.register(
            &mut sock,
            backend_token(self.key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return Handled::Close(CloseReason::BackendError, format!("register: {e}"));
        }
        self.handshaken = f.tls.take();
        self.fixed = Some(target);
        self.phase = Phase::Connecting(Connecting {
            sock,
            ready: Ready::default(),
            backend,
            tried: Vec::new(),
            early,
            deadline: ctx.now + self.settings.connect_timeout,
        });
        Handled::Connect
    }

    /// The chosen host did not accept: answer the client (502 or an RDP failure) and close.
    pub(in crate::engine::session) fn fixed_connect_failed(
        &mut self,
        target: FixedTarget,
        detail: String,
        ctx: &mut Ctx<'_>,
    ) -> Step {
        let tls = self.handshaken.take();
        let f = Front {
            tls,
            input: Vec::new(),
            output: target.on_failure,
            first: false,
            eof: false,
            waiting: None,
            close_after: Some((CloseReason::ConnectFailed, detail)),
            lingering: None,
            close_notified: false,
            head_request: false,
            continued: false,
            deadline: ctx.now + self.settings.handshake_timeout,
        };
        let (phase, step, _) = self.drive_front(f, ctx);
        self.phase = phase;
        step
    }

    /// The greeting a fixed target sends the client once the host accepted (`101`).
    pub(in crate::engine::session) fn take_greeting(&mut self) -> Vec<u8> {
        self.fixed.take().map(|t| t.greeting).unwrap_or_default()
    }
}

/// The HTTP error for a request the control client could not get answered. It tells the
/// client what it can act on, not the farm's node names or why a link ended (those go to
/// the log line, from the failure itself).
fn failure_error(failure: &ClientFailure) -> ApiError {
    match failure {
        ClientFailure::NoBroker => ApiError::new(503, "no_broker", "no broker is reachable; try again later"),
        ClientFailure::BrokerUnavailable { .. } => ApiError::new(
            503,
            "no_broker",
            "the broker that holds this session or ticket is not connected; log in or launch again",
        ),
        // Like any other token the gateway cannot use; what it named is not repeated.
        ClientFailure::UnknownBroker => {
            ApiError::new(401, "session_invalid", "the session token is not valid")
        }
        ClientFailure::BrokerLost { .. } => ApiError::new(
            503,
            "no_broker",
            "the broker was lost while handling the request; try again",
        ),
        ClientFailure::Timeout { .. } => {
            ApiError::new(504, "broker_timeout", "the broker did not answer in time")
        }
        ClientFailure::BadResponse { .. } => ApiError::new(
            502,
            "bad_broker_answer",
            "the broker answered something unexpected",
        ),
        ClientFailure::Stopped => ApiError::new(503, "no_broker", "the gateway is shutting down"),
    }
}
