//! The client's view of its gateways: the primary, then the secondary (the guide's
//! primary/secondary connection settings). Each request goes to the gateway that answered
//! last, and to the other one when that fails to connect, times out, breaks, or says it cannot
//! serve now (`503`, `504`).
//!
//! Owns the choice of gateway, the kept-alive API connection, and the reading of answers
//! into results. Login, resources and launch may share one kept-alive connection; every
//! tunnel has a new connection of its own.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::api::{self, AnswerHead, ErrorAnswer, LaunchAnswer, LoginAnswer, Resource, ResourcesAnswer};
use super::transport::{AttemptError, Dialer, HttpConn, Tunnel};
use super::ConnectError;

/// The gateways of one site, in order of preference, and how to reach them.
pub struct GatewaySet {
    gateways: Vec<String>,
    dialer: Dialer,
    /// Index of the gateway that answered last.
    preferred: AtomicUsize,
    /// An API connection the gateway kept open, for the next request.
    kept: Mutex<Option<HttpConn>>,
}

/// Which statuses mean "this gateway cannot serve now, ask another one".
#[derive(Clone, Copy)]
enum Failover {
    /// API calls: no broker, broker busy or slow.
    Api,
    /// Tunnels: as for API calls; `502` (the session host refused) is final.
    Tunnel,
}

impl Failover {
    fn covers(self, status: u16) -> bool {
        match self {
            Failover::Api => matches!(status, 502..=504),
            Failover::Tunnel => matches!(status, 503 | 504),
        }
    }
}

impl GatewaySet {
    /// `gateways` is primary first, then the secondary; at least one.
    pub fn new(gateways: Vec<String>, dialer: Dialer) -> GatewaySet {
        GatewaySet {
            gateways,
            dialer,
            preferred: AtomicUsize::new(0),
            kept: Mutex::new(None),
        }
    }

    /// The gateway that answered last (`HOST:PORT`) and its role (`primary`, `secondary`).
    pub fn current(&self) -> (&str, &'static str) {
        let i = self.preferred.load(Ordering::Relaxed);
        (&self.gateways[i], role(i))
    }

    /// `POST /api/v1/login`.
    pub fn login(&self, user: &str, password: &str) -> Result<LoginAnswer, ConnectError> {
        let body = serde_json::to_vec(&api::LoginRequest { user, password })
            .map_err(|e| ConnectError::Local(format!("login body: {e}")))?;
        let answer = self.call(|host| api::post_json(host, "/api/v1/login", None, &body))?;
        parse_json(&answer, "login")
    }

    /// `GET /api/v1/resources`.
    pub fn resources(&self, token: &str) -> Result<Vec<Resource>, ConnectError> {
        check_header_value(token, "session token")?;
        let answer = self.call(|host| api::get(host, "/api/v1/resources", token))?;
        parse_json::<ResourcesAnswer>(&answer, "resources").map(|a| a.resources)
    }

    /// `POST /api/v1/launch` of `resource` in `mode` (`gateway` or `direct`).
    pub fn launch(&self, token: &str, resource: &str, mode: &str) -> Result<LaunchAnswer, ConnectError> {
        check_header_value(token, "session token")?;
        let body = serde_json::to_vec(&api::LaunchRequest { resource, mode })
            .map_err(|e| ConnectError::Local(format!("launch body: {e}")))?;
        let answer = self.call(|host| api::post_json(host, "/api/v1/launch", Some(token), &body))?;
        parse_json(&answer, "launch")
    }

    /// `GET /api/v1/tunnel` with a launch ticket and the session it was launched in, on a
    /// new connection: the tunnel after `101`.
    pub fn open_tunnel(&self, session: &str, ticket: &str) -> Result<Tunnel, ConnectError> {
        check_header_value(ticket, "launch ticket")?;
        check_header_value(session, "session token")?;
        let mut failures = Vec::new();
        let mut refusal = None;
        for i in self.order() {
            let gateway = &self.gateways[i];
            let mut conn = match self.dialer.dial(gateway) {
                Ok(c) => c,
                Err(AttemptError::Final(e)) => return Err(e),
                Err(AttemptError::Transport(why)) => {
                    self.note_failure(i, &why, &mut failures);
                    continue;
                }
            };
            match conn.exchange(&api::tunnel(gateway, session, ticket)) {
                Ok((head, _)) if head.status == 101 => {
                    if !head.upgrade_tunnel {
                        tracing::debug!(gateway = %gateway, "101 without Upgrade: gatehouse-tunnel");
                    }
                    self.note_success(i);
                    return Ok(conn.into_tunnel());
                }
                Ok((head, body)) if Failover::Tunnel.covers(head.status) => {
                    let e = refused(&head, &body);
                    self.note_failure(i, &e.to_string(), &mut failures);
                    refusal = Some(e);
                }
                Ok((head, _)) if (200..300).contains(&head.status) => {
                    return Err(ConnectError::Protocol(format!(
                        "gateway {gateway} answered the tunnel request with {} instead of 101",
                        head.status
                    )));
                }
                Ok((head, body)) => return Err(refused(&head, &body)),
                Err(AttemptError::Final(e)) => return Err(e),
                Err(AttemptError::Transport(why)) => self.note_failure(i, &why, &mut failures),
            }
        }
        Err(refusal.unwrap_or(ConnectError::Unreachable(failures)))
    }

    /// One API request: on the kept connection when there is one, else on a new connection
    /// to each gateway in turn. Returns the body of a 2xx answer.
    fn call(&self, request: impl Fn(&str) -> Vec<u8>) -> Result<Vec<u8>, ConnectError> {
        let kept = self.kept.lock().take();
        if let Some(mut conn) = kept {
            match conn.exchange(&request(conn.gateway())) {
                Ok((head, body)) if !Failover::Api.covers(head.status) => {
                    return self.finish(conn, &head, body)
                }
                // A refusal to fail over from, or a kept connection the gateway has closed
                // meanwhile (idle timeout): start again on new connections.
                Ok(_) | Err(AttemptError::Transport(_)) => {}
                Err(AttemptError::Final(e)) => return Err(e),
            }
        }
        let mut failures = Vec::new();
        let mut refusal = None;
        for i in self.order() {
            let gateway = &self.gateways[i];
            let mut conn = match self.dialer.dial(gateway) {
                Ok(c) => c,
                Err(AttemptError::Final(e)) => return Err(e),
                Err(AttemptError::Transport(why)) => {
                    self.note_failure(i, &why, &mut failures);
                    continue;
                }
            };
            match conn.exchange(&request(gateway)) {
                Ok((head, body)) if Failover::Api.covers(head.status) => {
                    let e = refused(&head, &body);
                    self.note_failure(i, &e.to_string(), &mut failures);
                    refusal = Some(e);
                }
                Ok((head, body)) => {
                    self.note_success(i);
                    return self.finish(conn, &head, body);
                }
                Err(AttemptError::Final(e)) => return Err(e),
                Err(AttemptError::Transport(why)) => self.note_failure(i, &why, &mut failures),
            }
        }
        Err(refusal.unwrap_or(ConnectError::Unreachable(failures)))
    }

    /// Keeps the connection when the gateway allows, and turns the answer into a result.
    fn finish(&self, conn: HttpConn, head: &AnswerHead, body: Vec<u8>) -> Result<Vec<u8>, ConnectError> {
        if conn.reusable() {
            *self.kept.lock() = Some(conn);
        }
        if (200..300).contains(&head.status) {
            Ok(body)
        } else {
            Err(refused(head, &body))
        }
    }

    /// The preferred gateway first, then the others in configured order.
    fn order(&self) -> Vec<usize> {
        let first = self
            .preferred
            .load(Ordering::Relaxed)
            .min(self.gateways.len() - 1);
        std::iter::once(first)
            .chain((0..self.gateways.len()).filter(|i| *i != first))
            .collect()
    }

    fn note_success(&self, i: usize) {
        let before = self.preferred.swap(i, Ordering::Relaxed);
        if before != i || i != 0 {
            tracing::info!(gateway = %self.gateways[i], "using the {} gateway", role(i));
        } else {
            tracing::debug!(gateway = %self.gateways[i], "using the {} gateway", role(i));
        }
    }

    fn note_failure(&self, i: usize, why: &str, failures: &mut Vec<String>) {
        let gateway = &self.gateways[i];
        tracing::warn!(gateway = %gateway, "{} gateway failed: {why}", role(i));
        failures.push(format!("{} gateway {gateway}: {why}", role(i)));
    }
}

fn role(i: usize) -> &'static str {
    match i {
        0 => "primary",
        1 => "secondary",
        _ => "alternate",
    }
}

fn check_header_value(value: &str, what: &str) -> Result<(), ConnectError> {
    if api::header_safe(value) {
        Ok(())
    } else {
        Err(ConnectError::Protocol(format!(
            "the gateway's {what} is not a valid header value"
        )))
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ConnectError> {
    serde_json::from_slice(body).map_err(|e| ConnectError::Protocol(format!("unexpected {what} answer: {e}")))
}

/// The error a non-2xx answer stands for (CLIENT-API.md "Errors").
fn refused(head: &AnswerHead, body: &[u8]) -> ConnectError {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(e) => ConnectError::Refused {
            status: head.status,
            code: e.error,
            message: e.message,
        },
        Err(_) => ConnectError::Refused {
            status: head.status,
            code: format!("http_{}", head.status),
            message: String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string(),
        },
    }
}
