//! What one probe found: success, or the stage and kind of failure.
//!
//! Owns the failure vocabulary shared by the probes, the tracker, the checker's metrics and
//! the data plane's passive reports. Does no I/O beyond classifying `io::Error` values.

use std::fmt;
use std::io;

/// The result of one health probe (or of one real connect reported passively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The backend answered as the check expects.
    Ok,
    /// The backend failed the check; the failure says where and how.
    Failed(ProbeFailure),
}

impl ProbeOutcome {
    /// True for [`ProbeOutcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, ProbeOutcome::Ok)
    }
}

impl fmt::Display for ProbeOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeOutcome::Ok => f.write_str("ok"),
            ProbeOutcome::Failed(failure) => write!(f, "failed: {failure}"),
        }
    }
}

/// The step of a probe that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// TCP three-way handshake (a full backlog or a dropped SYN ends here).
    Connect,
    /// TLS handshake (a stopped process behind a live listen queue ends here).
    Tls,
    /// Sending the HTTP request.
    Write,
    /// Waiting for the HTTP status line.
    Read,
}

impl Stage {
    /// Lower-case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Write => "write",
            Stage::Read => "read",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a probe (or a passively observed connect) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// The backend host answered the SYN with a reset: nothing listens on the port.
    Refused,
    /// The probe's time budget ran out during this stage.
    Timeout(Stage),
    /// The peer reset the connection after it was established.
    Reset,
    /// The peer closed the connection before answering.
    Closed,
    /// The TLS handshake failed (bad certificate, alert, protocol error, CA file unusable).
    Tls(String),
    /// The HTTP status line was well formed but its code is not the expected one.
    HttpStatus(u16),
    /// The HTTP answer was not a parseable HTTP/1.x response head within the size bound.
    HttpMalformed(String),
    /// Any other local or network error, with its text.
    Io(String),
    /// This host could not make the probe (out of descriptors, memory or local ports): it
    /// says nothing about the backend, so it moves no verdict either way.
    Local(String),
}

impl ProbeFailure {
    /// Every value [`ProbeFailure::reason`] can return, in a fixed order, so metrics can keep
    /// one counter per reason in an array indexed by [`ProbeFailure::reason_index`].
    pub const REASONS: [&'static str; 12] = [
        "refused",
        "connect_timeout",
        "tls_timeout",
        "write_timeout",
        "read_timeout",
        "reset",
        "closed",
        "tls",
        "http_status",
        "http_malformed",
        "io",
        "local",
    ];

    /// Short fixed label for metrics (`failures_total{reason="..."}`).
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.reason_index()]
    }

    /// Position of [`ProbeFailure::reason`] in [`ProbeFailure::REASONS`].
    pub fn reason_index(&self) -> usize {
        match self {
            ProbeFailure::Refused => 0,
            ProbeFailure::Timeout(Stage::Connect) => 1,
            ProbeFailure::Timeout(Stage::Tls) => 2,
            ProbeFailure::Timeout(Stage::Write) => 3,
            ProbeFailure::Timeout(Stage::Read) => 4,
            ProbeFailure::Reset => 5,
            ProbeFailure::Closed => 6,
            ProbeFailure::Tls(_) => 7,
            ProbeFailure::HttpStatus(_) => 8,
            ProbeFailure::HttpMalformed(_) => 9,
            ProbeFailure::Io(_) => 10,
            ProbeFailure::Local(_) => 11,
        }
    }

    /// Classifies a socket error raised during `stage`. The data plane uses this too when it
    /// reports a failed real connect, so active and passive failures read the same in logs.
    pub fn from_io(err: &io::Error, stage: Stage) -> ProbeFailure {
        if is_local_shortage(err) {
            return ProbeFailure::Local(format!("{stage}: {err}"));
        }
        match err.kind() {
            // SO_RCVTIMEO/SO_SNDTIMEO expiry surfaces as EAGAIN (WouldBlock) on Linux.
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ProbeFailure::Timeout(stage),
            io::ErrorKind::ConnectionRefused => ProbeFailure::Refused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                ProbeFailure::Reset
            }
            io::ErrorKind::UnexpectedEof => ProbeFailure::Closed,
            _ => ProbeFailure::Io(format!("{stage}: {err}")),
        }
    }
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Refused => f.write_str("connection refused"),
            ProbeFailure::Timeout(stage) => write!(f, "timeout during {stage}"),
            ProbeFailure::Reset => f.write_str("connection reset by peer"),
            ProbeFailure::Closed => f.write_str("connection closed by peer before an answer"),
            ProbeFailure::Tls(msg) => write!(f, "tls: {msg}"),
            ProbeFailure::HttpStatus(code) => write!(f, "unexpected HTTP status {code}"),
            ProbeFailure::HttpMalformed(msg) => write!(f, "malformed HTTP response: {msg}"),
            ProbeFailure::Io(msg) => write!(f, "i/o error: {msg}"),
            ProbeFailure::Local(msg) => write!(f, "this host could not probe: {msg}"),
        }
    }
}

/// Whether an error means the process or system ran out of descriptors (or the memory a
/// new socket needs).
pub fn is_out_of_files(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Whether `err` is this host running short (descriptors, memory, ephemeral ports) rather
/// than anything the peer did. A connect that fails so proves nothing about the backend.
pub fn is_local_shortage(err: &io::Error) -> bool {
    is_out_of_files(err) || err.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_index_matches_reason_table() {
        let all = [
            ProbeFailure::Refused,
            ProbeFailure::Timeout(Stage::Connect),
            ProbeFailure::Timeout(Stage::Tls),
            ProbeFailure::Timeout(Stage::Write),
            ProbeFailure::Timeout(Stage::Read),
            ProbeFailure::Reset,
            ProbeFailure::Closed,
            ProbeFailure::Tls("x".into()),
            ProbeFailure::HttpStatus(503),
            ProbeFailure::HttpMalformed("x".into()),
            ProbeFailure::Io("x".into()),
            ProbeFailure::Local("x".into()),
        ];
        let reasons: Vec<&str> = all.iter().map(ProbeFailure::reason).collect();
        assert_eq!(reasons, ProbeFailure::REASONS.to_vec());
    }

    #[test]
    fn running_short_here_is_told_apart_from_the_backend_failing() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EADDRNOTAVAIL,
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(is_local_shortage(&e), "{e}");
            let failure = ProbeFailure::from_io(&e, Stage::Connect);
            assert_eq!(failure.reason(), "local", "{e}");
        }
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(!is_local_shortage(&refused));
        assert_eq!(
            ProbeFailure::from_io(&refused, Stage::Connect),
            ProbeFailure::Refused
        );
    }

    #[test]
    fn io_errors_are_classified_by_kind_and_stage() {
        let timed_out = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(
            ProbeFailure::from_io(&timed_out, Stage::Read),
            ProbeFailure::Timeout(Stage::Read)
        );
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ProbeFailure::from_io(&refused, Stage::Connect),
            ProbeFailure::Refused
        );
        let other = io::Error::other("boom");
        assert_eq!(
            ProbeFailure::from_io(&other, Stage::Write),
            ProbeFailure::Io("write: boom".into())
        );
    }

    #[test]
    fn display_is_readable() {
        assert_eq!(
            ProbeFailure::Timeout(Stage::Tls).to_string(),
            "timeout during tls"
        );
        assert_eq!(
            ProbeOutcome::Failed(ProbeFailure::HttpStatus(503)).to_string(),
            "failed: unexpected HTTP status 503"
        );
    }
}
