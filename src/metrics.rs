//! Counters every part of the node bumps, and their Prometheus text form.
//!
//! Owns the process-wide counters (atomics, bumped on the hot path without locks) and the
//! rendering of everything countable, including per-backend figures read from the current
//! snapshot. Every "counted" in an issue is a metric here; tests read them through the admin
//! listener.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::shared::Snapshot;

macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $label:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $(#[doc = $label] $variant,)* }
        impl $name {
            /// Every variant, in metric order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The stable label used in logs and metrics.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)* }
            }
        }
    };
}

reasons! {
    /// Why a proxied connection ended.
    CloseReason {
        Done => "done",
        ClientReset => "client_reset",
        BackendReset => "backend_reset",
        ClientError => "client_error",
        BackendError => "backend_error",
        IdleTimeout => "idle_timeout",
        HandshakeTimeout => "handshake_timeout",
        NoBackend => "no_backend",
        ConnectFailed => "connect_failed",
        ProxyHeaderInvalid => "proxy_header_invalid",
        ProxyHeaderUntrusted => "proxy_header_untrusted",
        SourceLimit => "source_limit",
        GlobalLimit => "global_limit",
        OutOfFiles => "out_of_files",
        Shutdown => "shutdown",
        TlsRefused => "tls_refused",
        TlsError => "tls_error",
        BackendTlsError => "backend_tls_error",
        AddressDenied => "address_denied",
        PathRefused => "path_refused",
        BadRequest => "bad_request",
        Refused => "refused",
        BrokerUnavailable => "broker_unavailable",
    }
}

reasons! {
    /// Why accepting was paused.
    PauseReason {
        OutOfFiles => "out_of_files",
        ConnectionLimit => "connection_limit",
    }
}

/// A fixed set of counters indexed by a reason enum.
pub struct ReasonCounters<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for ReasonCounters<N> {
    fn default() -> Self {
        ReasonCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> ReasonCounters<N> {
    /// Adds one at `index`.
    pub fn bump(&self, index: usize) {
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }
    /// The count at `index`.
    pub fn get(&self, index: usize) -> u64 {
        self.0[index].load(Ordering::Relaxed)
    }
}

const CLOSE_N: usize = 23;
const PAUSE_N: usize = 2;

/// Process-wide counters.
#[derive(Default)]
pub struct Metrics {
    /// Connections accepted by all listeners.
    pub accepted: AtomicU64,
    /// Connections closed, by reason.
    pub closed: ReasonCounters<CLOSE_N>,
    /// Bytes carried client -> backend.
    pub bytes_up: AtomicU64,
    /// Bytes carried backend -> client.
    pub bytes_down: AtomicU64,
    /// Accept pauses, by reason.
    pub accept_pauses: ReasonCounters<PAUSE_N>,
    /// Bytes moved with splice(2) (both directions).
    pub spliced_bytes: AtomicU64,
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Refused reloads (invalid new config).
    pub reloads_failed: AtomicU64,
    /// Backend health transitions.
    pub health_transitions: AtomicU64,
    /// Backend connects whose source port connect(2) searched the whole ephemeral range for,
    /// because no window of the engine's had a usable one (`engine::source_ports`).
    pub source_port_fallbacks: AtomicU64,
    /// TLS clients refused before a tunnel, by reason (`not_tls`, `unknown_sni`,
    /// `handshake_timeout`, ...). Refusals are rare, so a lock is fine here.
    pub tls_refused: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Gateway client-API answers by endpoint and HTTP status (issue 5).
    pub gateway_answers: parking_lot::Mutex<std::collections::BTreeMap<(&'static str, u16), u64>>,
    /// Gateway RDP balancing decisions by outcome (`routed`, `no_host`, ...).
    pub gateway_rdp: parking_lot::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Counts one closed connection.
    pub fn count_close(&self, reason: CloseReason) {
        let i = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.closed.bump(i);
    }

    /// Closed connections for one reason.
    pub fn closed_count(&self, reason: CloseReason) -> u64 {
        let i = CloseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.closed.get(i)
    }

    /// Counts one refused TLS client.
    pub fn count_tls_refused(&self, reason: &'static str) {
        *self.tls_refused.lock().entry(reason).or_insert(0) += 1;
    }

    /// Refused TLS clients for one reason.
    pub fn tls_refused_count(&self, reason: &str) -> u64 {
        self.tls_refused.lock().get(reason).copied().unwrap_or(0)
    }

    /// Counts one gateway client-API answer.
    pub fn count_gateway_answer(&self, endpoint: &'static str, status: u16) {
        *self.gateway_answers.lock().entry((endpoint, status)).or_insert(0) += 1;
    }

    /// Counts one RDP balancing outcome.
    pub fn count_gateway_rdp(&self, outcome: &'static str) {
        *self.gateway_rdp.lock().entry(outcome).or_insert(0) += 1;
    }

    /// Counts one accept pause.
    pub fn count_pause(&self, reason: PauseReason) {
        let i = PauseReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.accept_pauses.bump(i);
    }

    /// The Prometheus text exposition of every counter and of the snapshot's backends.
    pub fn render(&self, snapshot: &Snapshot, active: usize, extra: &str) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "gatehouse_connections_accepted_total",
            "Connections accepted.",
            load(&self.accepted),
        );
        gauge(
            &mut out,
            "gatehouse_connections_active",
            "Connections held now.",
            active as u64,
        );
        header(
            &mut out,
            "gatehouse_connections_closed_total",
            "counter",
            "Connections closed, by reason.",
        );
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "gatehouse_connections_closed_total{{reason=\"{}\"}} {}",
                r.label(),
                self.closed.get(i)
            );
        }
        header(
            &mut out,
            "gatehouse_bytes_total",
            "counter",
            "Bytes carried, by direction.",
        );
        let _ = writeln!(
            out,
            "gatehouse_bytes_total{{direction=\"up\"}} {}",
            load(&self.bytes_up)
        );
        let _ = writeln!(
            out,
            "gatehouse_bytes_total{{direction=\"down\"}} {}",
            load(&self.bytes_down)
        );
        counter(
            &mut out,
            "gatehouse_spliced_bytes_total",
            "Bytes moved with splice(2).",
            load(&self.spliced_bytes),
        );
        counter(
            &mut out,
            "gatehouse_source_port_fallbacks_total",
            "Backend connects that searched the whole ephemeral range for a source port.",
            load(&self.source_port_fallbacks),
        );
        header(
            &mut out,
            "gatehouse_accept_pauses_total",
            "counter",
            "Times accepting was paused, by reason.",
        );
        for (i, r) in PauseReason::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "gatehouse_accept_pauses_total{{reason=\"{}\"}} {}",
                r.label(),
                self.accept_pauses.get(i)
            );
        }
        header(
            &mut out,
            "gatehouse_reloads_total",
            "counter",
            "Configuration reloads, by result.",
        );
        let _ = writeln!(
            out,
            "gatehouse_reloads_total{{result=\"ok\"}} {}",
            load(&self.reloads_ok)
        );
        let _ = writeln!(
            out,
            "gatehouse_reloads_total{{result=\"refused\"}} {}",
            load(&self.reloads_failed)
        );
        counter(
            &mut out,
            "gatehouse_health_transitions_total",
            "Backend health state changes.",
            load(&self.health_transitions),
        );
        header(
            &mut out,
            "gatehouse_tls_refused_total",
            "counter",
            "TLS clients refused before a tunnel, by reason.",
        );
        for (reason, n) in self.tls_refused.lock().iter() {
            let _ = writeln!(out, "gatehouse_tls_refused_total{{reason=\"{reason}\"}} {n}");
        }
        header(
            &mut out,
            "gatehouse_gateway_answers_total",
            "counter",
            "Gateway client-API answers, by endpoint and HTTP status.",
        );
        for ((endpoint, status), n) in self.gateway_answers.lock().iter() {
            let _ = writeln!(
                out,
                "gatehouse_gateway_answers_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            &mut out,
            "gatehouse_gateway_rdp_total",
            "counter",
            "Plain RDP clients on gateway listeners, by outcome.",
        );
        for (outcome, n) in self.gateway_rdp.lock().iter() {
            let _ = writeln!(out, "gatehouse_gateway_rdp_total{{outcome=\"{outcome}\"}} {n}");
        }
        snapshot.render_metrics(&mut out);
        out.push_str(extra);
        out
    }
}

/// Writes a HELP/TYPE header.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

/// Escapes a Prometheus label value.
pub fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_lists_match_array_sizes() {
        assert_eq!(CloseReason::ALL.len(), CLOSE_N);
        assert_eq!(PauseReason::ALL.len(), PAUSE_N);
    }

    #[test]
    fn counts_by_reason() {
        let m = Metrics::default();
        m.count_close(CloseReason::IdleTimeout);
        m.count_close(CloseReason::IdleTimeout);
        assert_eq!(m.closed_count(CloseReason::IdleTimeout), 2);
        assert_eq!(m.closed_count(CloseReason::Done), 0);
    }
}
