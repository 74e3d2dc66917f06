//! The first phase of a session: reads what must come before routing (a PROXY v2 header
//! from a trusted forwarder, or enough bytes to refuse one from anybody else), applies the
//! listener's address and per-source limits, checks a gateway path, and hands over to the
//! ClientHello (TLS listeners), the gateway front (front listeners) or the connect.

use super::{Ctx, Hello, Phase, ReadMode, Reading, Session, Step, MAX_PROXY_HEADER};
use crate::config::TlsMode;
use crate::gateway::path::{GatewayPath, PP2_TYPE_GATEWAY_PATH};
use crate::metrics::CloseReason;
use crate::proxy_protocol::{self, Parsed, SIGNATURE};
use crate::shared::{admits, ListenerRole};

impl Session {
    pub(super) fn take_source_slot(&mut self, ctx: &mut Ctx<'_>) -> Step {
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

    pub(super) fn drive_reading(&mut self, mut r: Reading, ctx: &mut Ctx<'_>) -> (Phase, Step, bool) {
        let limit = match r.mode {
            ReadMode::ExpectProxy => MAX_PROXY_HEADER,
            ReadMode::RefuseProxy => SIGNATURE.len(),
        };
        let eof = match self.read_client_into(&mut r.buf, limit) {
            Ok(eof) => eof,
            Err(step) => return (Phase::Closed, step, false),
        };
        if eof && r.buf.is_empty() {
            self.routine = true;
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
    pub(super) fn begin(&mut self, early: Vec<u8>, path: Option<&[u8]>, ctx: &mut Ctx<'_>) -> Step {
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
        // The close line names the client from the PROXY header; the forwarder that sent
        // the path is the one to look at.
        let forwarder = self.peer;
        let refuse = |e: crate::gateway::path::PathError| {
            Step::Close(
                CloseReason::PathRefused,
                format!(
                    "gateway path refused ({}) from forwarder {forwarder}: {e}",
                    e.reason()
                ),
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
}
