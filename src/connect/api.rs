//! The client's half of the gateway's client API (`src/gateway/CLIENT-API.md`), sans I/O:
//! the request bytes it sends, the JSON bodies it expects, and a bounded parser for answer
//! heads.
//!
//! Owns only the wire format. It does not open sockets or apply time limits (that is
//! `transport`), and it keeps its own copies of the JSON structs so that it does not depend
//! on the server's `gateway::api` module.

use serde::{Deserialize, Serialize};

/// Largest answer head (status line and headers) accepted from a gateway. CLIENT-API.md
/// bounds request heads at 8 KiB; answers are smaller, so the same bound is generous.
pub const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Largest answer body accepted from a gateway: room for a long list of resources.
pub const MAX_ANSWER_BODY: usize = 1024 * 1024;

/// Most headers read from one answer head.
const MAX_HEADERS: usize = 32;

/// Body of `POST /api/v1/login` (CLIENT-API.md "POST /api/v1/login").
#[derive(Serialize)]
pub struct LoginRequest<'a> {
    /// The user name as the broker knows it.
    pub user: &'a str,
    /// The password; never logged.
    pub password: &'a str,
}

/// `200` answer to a login: the session token and what the user may launch.
#[derive(Deserialize, Debug, Clone)]
pub struct LoginAnswer {
    /// Opaque session token, sent back as `Authorization: Bearer TOKEN`.
    pub session_token: String,
    /// The resources the user may launch.
    #[serde(default)]
    pub resources: Vec<Resource>,
}

/// `200` answer to `GET /api/v1/resources`.
#[derive(Deserialize, Debug, Clone)]
pub struct ResourcesAnswer {
    /// The resources the user may launch.
    #[serde(default)]
    pub resources: Vec<Resource>,
}

/// One published resource.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Stable id, what `--resource` names.
    pub id: String,
    /// Name for humans.
    #[serde(default)]
    pub name: String,
    /// What it is (`desktop`, `application`, ...).
    #[serde(default)]
    pub kind: String,
}

/// Body of `POST /api/v1/launch`.
#[derive(Serialize)]
pub struct LaunchRequest<'a> {
    /// Id of the resource to launch.
    pub resource: &'a str,
    /// `gateway` or `direct` (the SSL variants differ only in the transport).
    pub mode: &'a str,
}

/// `200` answer to a launch, by mode.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum LaunchAnswer {
    /// Open `GET /api/v1/tunnel` with this single-use ticket.
    Gateway {
        /// The launch ticket (opaque).
        ticket: String,
    },
    /// Connect to this host and port directly.
    Direct {
        /// Host name or address of the session host.
        host: String,
        /// Its RDP port.
        port: u16,
    },
}

/// The body of every non-2xx answer (CLIENT-API.md "Errors").
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    /// Stable code such as `wrong_password`.
    pub error: String,
    /// Text for humans.
    #[serde(default)]
    pub message: String,
}

/// An answer head as read from the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerHead {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Length`, when present.
    pub content_length: Option<usize>,
    /// The gateway said `Connection: close` (or answered HTTP/1.0 without keep-alive).
    pub closes: bool,
    /// `Upgrade: gatehouse-tunnel` was present.
    pub upgrade_tunnel: bool,
    /// Length of the head in bytes, including the blank line.
    pub len: usize,
}

/// Why an answer head could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP, or a malformed head.
    Malformed(String),
    /// Longer than [`MAX_ANSWER_HEAD`] without an end.
    TooLarge,
    /// `Content-Length` larger than [`MAX_ANSWER_BODY`] or not a number.
    BadLength,
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeadError::Malformed(why) => write!(f, "malformed HTTP answer: {why}"),
            HeadError::TooLarge => write!(f, "HTTP answer head over {MAX_ANSWER_HEAD} bytes"),
            HeadError::BadLength => write!(f, "HTTP answer with a bad or too large Content-Length"),
        }
    }
}

/// Reads an answer head from the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_answer_head(buf: &[u8]) -> Result<Option<AnswerHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_ANSWER_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > MAX_ANSWER_HEAD {
        return Err(HeadError::TooLarge);
    }
    let status = answer.code.unwrap_or(0);
    let mut head = AnswerHead {
        status,
        content_length: None,
        // RFC 9112 §9.3: HTTP/1.0 closes unless it says keep-alive.
        closes: answer.version == Some(0),
        upgrade_tunnel: false,
        len,
    };
    for h in answer.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| HeadError::BadLength)?;
            if n > MAX_ANSWER_BODY || head.content_length.is_some_and(|m| m != n) {
                return Err(HeadError::BadLength);
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.closes = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    head.closes = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_tunnel = value.eq_ignore_ascii_case("gatehouse-tunnel");
        }
    }
    Ok(Some(head))
}

/// `POST PATH` with a JSON body and, when given, a bearer token.
pub fn post_json(host: &str, path: &str, bearer: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: keep-alive\r\n",
        body.len()
    );
    if let Some(token) = bearer {
        out.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `GET PATH` with a bearer token.
pub fn get(host: &str, path: &str, bearer: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {bearer}\r\nConnection: keep-alive\r\n\r\n")
        .into_bytes()
}

/// `GET /api/v1/tunnel` with the launch ticket and the session token it was launched with
/// (CLIENT-API.md "GET /api/v1/tunnel").
pub fn tunnel(host: &str, session: &str, ticket: &str) -> Vec<u8> {
    format!(
        "GET /api/v1/tunnel HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n\
         Upgrade: gatehouse-tunnel\r\nAuthorization: Bearer {ticket}\r\nGatehouse-Session: {session}\r\n\r\n"
    )
    .into_bytes()
}

/// A token or ticket is sent in a header: it must not be able to add headers.
pub fn header_safe(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_complete_with_length_and_close() {
        let raw =
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"a\":\"b\"}...";
        let head = parse_answer_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 401);
        assert_eq!(head.content_length, Some(12));
        assert!(head.closes);
        assert!(!head.upgrade_tunnel);
        assert_eq!(&raw[head.len..head.len + 3], b"{\"a");
    }

    #[test]
    fn head_upgrade_and_partial() {
        let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: gatehouse-tunnel\r\nConnection: Upgrade\r\n\r\nRDP";
        for cut in 0..raw.len() - 3 {
            let part = parse_answer_head(&raw[..cut]);
            assert!(matches!(part, Ok(None)), "cut {cut}: {part:?}");
        }
        let head = parse_answer_head(raw).unwrap().unwrap();
        assert_eq!(head.status, 101);
        assert!(head.upgrade_tunnel);
        assert_eq!(&raw[head.len..], b"RDP");
    }

    #[test]
    fn head_bounds() {
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() < MAX_ANSWER_HEAD + 10 {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            parse_answer_head(&big),
            Err(HeadError::TooLarge) | Err(HeadError::Malformed(_))
        ));
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_ANSWER_BODY + 1
        );
        assert_eq!(parse_answer_head(huge.as_bytes()), Err(HeadError::BadLength));
        assert_eq!(
            parse_answer_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(HeadError::BadLength)
        );
        assert!(matches!(
            parse_answer_head(b"SSH-2.0-x\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn launch_answers_by_mode() {
        let g: LaunchAnswer = serde_json::from_str(r#"{"mode":"gateway","ticket":"T1"}"#).unwrap();
        assert_eq!(g, LaunchAnswer::Gateway { ticket: "T1".into() });
        let d: LaunchAnswer =
            serde_json::from_str(r#"{"mode":"direct","host":"10.0.0.5","port":3389}"#).unwrap();
        assert_eq!(
            d,
            LaunchAnswer::Direct {
                host: "10.0.0.5".into(),
                port: 3389
            }
        );
        assert!(serde_json::from_str::<LaunchAnswer>(r#"{"mode":"teleport"}"#).is_err());
    }

    #[test]
    fn requests_are_well_formed() {
        let body = br#"{"user":"a","password":"b"}"#;
        let req = post_json("gw:443", "/api/v1/login", None, body);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut headers);
        let n = match parsed.parse(&req).unwrap() {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => panic!("partial"),
        };
        assert_eq!(parsed.method, Some("POST"));
        assert_eq!(&req[n..], body);
        assert!(header_safe("gw1~abc.def-_="));
        assert!(!header_safe("abc\r\nX-Evil: 1"));
        assert!(!header_safe(""));
    }
}
