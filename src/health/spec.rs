//! What to check and how often: the check kinds, TLS verification choice, expected HTTP status.
//!
//! Owns the plain data the config layer fills in and its validation. Does no I/O (loading the
//! CA file happens in `tls.rs`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// How a backend is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// The TCP handshake completes (then the probe closes).
    Tcp,
    /// A full TLS client handshake completes.
    Tls {
        /// SNI and name to verify; `None` means the backend's IP address (no SNI is sent for
        /// an IP, RFC 6066 §3, and the certificate must then carry that IP).
        server_name: Option<String>,
        /// How the server certificate is checked.
        verify: TlsVerify,
    },
    /// `GET path HTTP/1.1` answers with a status matching `expect`.
    Http {
        /// Request target, origin form (starts with `/`).
        path: String,
        /// Host header; `None` means the TLS server name if any, else `IP:port`.
        host: Option<String>,
        /// Accepted status codes.
        expect: StatusMatch,
        /// `Some((sni, verify))` for HTTPS, with the same meaning as in [`CheckKind::Tls`].
        tls: Option<(Option<String>, TlsVerify)>,
    },
}

impl CheckKind {
    /// Checks what a probe cannot fix at run time: an HTTP path or host that would break the
    /// request line (RFC 9112 §3: no whitespace or control characters in the target).
    /// Config validation calls this; a probe with an invalid kind fails with `Io`.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            CheckKind::Tcp | CheckKind::Tls { .. } => Ok(()),
            CheckKind::Http { path, host, .. } => {
                if !path.starts_with('/') {
                    return Err(format!("http check path {path:?} must start with '/'"));
                }
                if !is_token_text(path) {
                    return Err(format!(
                        "http check path {path:?} contains whitespace or control characters"
                    ));
                }
                match host {
                    Some(h) if h.is_empty() || !is_token_text(h) => Err(format!(
                        "http check host {h:?} is empty or contains whitespace or control characters"
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Short name for logs and metric labels: `tcp`, `tls`, `http` or `https`.
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Tls { .. } => "tls",
            CheckKind::Http { tls: None, .. } => "http",
            CheckKind::Http { tls: Some(_), .. } => "https",
        }
    }
}

/// How a TLS probe checks the server certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsVerify {
    /// Verify the chain against the PEM certificates in this file, and the name.
    CaFile(PathBuf),
    /// Accept any certificate (the handshake signature is still checked against it).
    /// Only for backends with self-signed certificates the operator chose not to pin.
    InsecureSkipVerify,
}

/// The HTTP status codes a check accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusMatch {
    /// Inclusive range, e.g. `200-399`.
    Range(u16, u16),
    /// Any of these codes, e.g. `200,204`.
    Exact(Vec<u16>),
}

impl StatusMatch {
    /// True when `code` is accepted.
    pub fn matches(&self, code: u16) -> bool {
        match self {
            StatusMatch::Range(lo, hi) => (*lo..=*hi).contains(&code),
            StatusMatch::Exact(codes) => codes.contains(&code),
        }
    }
}

impl Default for StatusMatch {
    /// `200-399`, like HAProxy's default for `option httpchk`.
    fn default() -> Self {
        StatusMatch::Range(200, 399)
    }
}

impl FromStr for StatusMatch {
    type Err = String;

    /// Parses `"200-399"`, `"200"` or `"200,204"`; codes must lie in 100-599 (RFC 9110 §15).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some((lo, hi)) = s.split_once('-') {
            let lo = parse_code(lo)?;
            let hi = parse_code(hi)?;
            if lo > hi {
                return Err(format!("status range {s:?} is empty ({lo} > {hi})"));
            }
            return Ok(StatusMatch::Range(lo, hi));
        }
        let codes = s
            .split(',')
            .map(parse_code)
            .collect::<Result<Vec<u16>, String>>()?;
        Ok(StatusMatch::Exact(codes))
    }
}

impl fmt::Display for StatusMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatusMatch::Range(lo, hi) => write!(f, "{lo}-{hi}"),
            StatusMatch::Exact(codes) => {
                for (i, code) in codes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{code}")?;
                }
                Ok(())
            }
        }
    }
}

/// One backend pool's check settings, shared by all its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// What to probe.
    pub kind: CheckKind,
    /// Start-to-start time between probes.
    pub interval: Duration,
    /// Budget for one whole probe (connect, handshake, write, read).
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down (also the passive threshold).
    pub fall: u32,
    /// Start each probe with a PROXY v2 LOCAL header (the pool sends PROXY headers, so its
    /// backends may refuse a connection without one).
    pub send_proxy: bool,
}

fn parse_code(s: &str) -> Result<u16, String> {
    let t = s.trim();
    let code: u16 = t
        .parse()
        .map_err(|_| format!("{t:?} is not an HTTP status code"))?;
    if !(100..=599).contains(&code) {
        return Err(format!("HTTP status {code} is outside 100-599"));
    }
    Ok(code)
}

/// Visible ASCII only: no space, no control, no non-ASCII (would need percent-encoding).
fn is_token_text(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_match_parses_the_three_forms() {
        assert_eq!("200-399".parse(), Ok(StatusMatch::Range(200, 399)));
        assert_eq!("200".parse(), Ok(StatusMatch::Exact(vec![200])));
        assert_eq!(" 200, 204 ".parse(), Ok(StatusMatch::Exact(vec![200, 204])));
    }

    #[test]
    fn status_match_rejects_nonsense() {
        for bad in ["", "abc", "399-200", "200-", "99", "600", "200,,204", "70000"] {
            assert!(bad.parse::<StatusMatch>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn status_match_matches_and_round_trips() {
        let range: StatusMatch = "200-399".parse().expect("valid");
        assert!(range.matches(200) && range.matches(399) && !range.matches(400));
        let exact: StatusMatch = "200,204".parse().expect("valid");
        assert!(exact.matches(204) && !exact.matches(201));
        for s in ["200-399", "200", "200,204"] {
            let m: StatusMatch = s.parse().expect("valid");
            assert_eq!(m.to_string(), s);
        }
    }

    #[test]
    fn http_kind_validation() {
        let http = |path: &str, host: Option<&str>| CheckKind::Http {
            path: path.into(),
            host: host.map(str::to_string),
            expect: StatusMatch::default(),
            tls: None,
        };
        assert!(http("/health?x=1", Some("app.example")).validate().is_ok());
        assert!(http("health", None).validate().is_err());
        assert!(http("/a b", None).validate().is_err());
        assert!(http("/a\r\nX: y", None).validate().is_err());
        assert!(http("/", Some("h\r\n")).validate().is_err());
        assert!(http("/", Some("")).validate().is_err());
        assert!(CheckKind::Tcp.validate().is_ok());
    }
}
