//! The client side of the gateway's client API (src/gateway/CLIENT-API.md), as a third-party
//! client speaks it: HTTP/1.1 with JSON bodies on a kept-alive connection (plain, or inside
//! TLS for the Gateway SSL mode), `POST /api/v1/login`, `POST /api/v1/launch`, and the
//! `GET /api/v1/tunnel` upgrade (ticket and session token) whose connection then carries raw
//! bytes.
//!
//! The response-head parser is sans-IO and bounded ([`parse_head`]); [`HttpConn`] and
//! [`Tunnel`] only move bytes over blocking sockets. Owns no measurement: the load code times
//! these calls.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::net::SourcePool;
use crate::tls::{TlsClient, TlsStream};

/// Largest response head read (the gateway's own request bound is 8 KiB).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest response body read (login answers list resources; the gateway bounds bodies it
/// reads at 16 KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long one answer may take before the call fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A response head: status, where the body starts, how long it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// Bytes of the head, the blank line included.
    pub head_len: usize,
    /// `Content-Length` (0 when absent, as for a `101`).
    pub content_length: usize,
    /// `Connection: close` was sent: the connection cannot carry another request.
    pub close: bool,
}

/// Progress of [`parse_head`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadProgress {
    /// The blank line that ends the head has not arrived yet.
    NeedMore,
    /// A whole head.
    Done(ResponseHead),
}

/// Why an answer could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The head passed [`MAX_HEAD_BYTES`] or the body [`MAX_BODY_BYTES`].
    TooLarge(&'static str),
    /// Not an HTTP/1.x response head.
    Malformed(String),
    /// A socket error, a timeout or a close before the whole answer.
    Io(String),
    /// An answer other than the one asked for: its status and error code (CLIENT-API.md
    /// §Errors), or `status` alone when the body had none.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The body's `error` code, if any.
        code: Option<String>,
    },
}

impl ClientError {
    /// A short stable key for counting failures (`refused_503_no_broker`, `io`, ...).
    pub fn reason(&self) -> String {
        match self {
            ClientError::TooLarge(what) => format!("too_large_{what}"),
            ClientError::Malformed(_) => "malformed".into(),
            ClientError::Io(_) => "io".into(),
            ClientError::Refused { status, code } => match code {
                Some(c) => format!("refused_{status}_{c}"),
                None => format!("refused_{status}"),
            },
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::TooLarge(what) => write!(f, "answer {what} over the bound"),
            ClientError::Malformed(m) => write!(f, "malformed answer: {m}"),
            ClientError::Io(m) => write!(f, "socket: {m}"),
            ClientError::Refused { status, code } => {
                write!(
                    f,
                    "answered {status} {}",
                    code.as_deref().unwrap_or("(no error code)")
                )
            }
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e.to_string())
    }
}

/// Parses the response head at the start of `buf` (RFC 9112 §4 status line, §6.3 message
/// length by `Content-Length`). Bounded: a head longer than [`MAX_HEAD_BYTES`] is an error
/// whether or not its end has arrived.
pub fn parse_head(buf: &[u8]) -> Result<HeadProgress, ClientError> {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(ClientError::TooLarge("head"));
        }
        return Ok(HeadProgress::NeedMore);
    };
    let head_len = end + 4;
    let text =
        std::str::from_utf8(&buf[..end]).map_err(|_| ClientError::Malformed("head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || version.len() != 8 {
        return Err(ClientError::Malformed(format!("status line {status_line:?}")));
    }
    let code = parts.next().unwrap_or("");
    let status: u16 = match code.parse() {
        Ok(s) if code.len() == 3 && (100..=599).contains(&s) => s,
        _ => return Err(ClientError::Malformed(format!("status line {status_line:?}"))),
    };
    let mut content_length: Option<usize> = None;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ClientError::Malformed(format!("header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| ClientError::Malformed(format!("Content-Length {value:?}")))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(ClientError::Malformed("two different Content-Length".into()));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("connection") {
            close |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > MAX_BODY_BYTES {
        return Err(ClientError::TooLarge("body"));
    }
    Ok(HeadProgress::Done(ResponseHead {
        status,
        head_len,
        content_length,
        close,
    }))
}

/// The request bytes of one API call (CLIENT-API.md §Endpoints).
pub fn request_bytes(
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
    extra: &str,
) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gateway.bench\r\n{extra}");
    if let Some(t) = bearer {
        req.push_str("Authorization: Bearer ");
        req.push_str(t);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\nContent-Length: ");
        req.push_str(&body.len().to_string());
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    req.into_bytes()
}

/// A connection to a gateway, to a stand-in, or a tunnel: plain or TLS.
pub enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (the handshake runs on the first read or write).
    Tls(Box<TlsStream>),
}

impl ClientStream {
    /// Connects to `addr` from the next source address; TLS when `tls` is given.
    pub fn connect(
        addr: SocketAddr,
        tls: Option<&TlsClient>,
        sources: &SourcePool,
    ) -> io::Result<ClientStream> {
        let sock = sources.connect(addr, Duration::from_secs(5))?;
        Self::over(sock, tls)
    }

    /// Connects to `addr` from the source address `source` (a user of a logon storm keeps
    /// one address for all its connections, as a real client does); TLS when `tls` is given.
    pub fn connect_from(
        addr: SocketAddr,
        tls: Option<&TlsClient>,
        source: IpAddr,
    ) -> io::Result<ClientStream> {
        let socket = crate::net::socket_from(addr, addr.ip().is_loopback().then_some(source))?;
        socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        Self::over(socket.into(), tls)
    }

    /// A connected socket with the answer timeouts, in TLS when `tls` is given.
    fn over(sock: TcpStream, tls: Option<&TlsClient>) -> io::Result<ClientStream> {
        sock.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        sock.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        match tls {
            None => Ok(ClientStream::Plain(sock)),
            Some(c) => c
                .wrap(sock)
                .map(|s| ClientStream::Tls(Box::new(s)))
                .map_err(io::Error::other),
        }
    }

    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref(),
        }
    }

    /// Sends a TLS close_notify (best effort) and shuts the socket down.
    pub fn close(mut self) {
        if let ClientStream::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Both);
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.read(buf),
            ClientStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Plain(s) => s.write(buf),
            ClientStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ClientStream::Plain(s) => s.flush(),
            ClientStream::Tls(s) => s.flush(),
        }
    }
}

/// An answer with its body.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The parsed head.
    pub head: ResponseHead,
    /// The body (empty for a `101`).
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `Ok(self)` for `status`, else [`ClientError::Refused`] with the body's error code.
    pub fn expect(self, status: u16) -> Result<Answer, ClientError> {
        if self.head.status == status {
            return Ok(self);
        }
        let code = self.json()["error"].as_str().map(str::to_string);
        Err(ClientError::Refused {
            status: self.head.status,
            code,
        })
    }
}

/// One HTTP connection to a gateway: requests one after the other (keep-alive).
pub struct HttpConn {
    stream: ClientStream,
    buf: Vec<u8>,
    closed: bool,
}

impl HttpConn {
    /// Connects to the gateway at `addr`.
    pub fn connect(
        addr: SocketAddr,
        tls: Option<&TlsClient>,
        sources: &SourcePool,
    ) -> Result<HttpConn, ClientError> {
        Ok(HttpConn {
            stream: ClientStream::connect(addr, tls, sources)?,
            buf: Vec::with_capacity(4096),
            closed: false,
        })
    }

    /// An API connection over a stream the caller opened (its own source address, say).
    pub fn over(stream: ClientStream) -> HttpConn {
        HttpConn {
            stream,
            buf: Vec::with_capacity(4096),
            closed: false,
        }
    }

    /// Whether the gateway said it closes the connection after its last answer.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends one request and reads its answer (a `101` ends the HTTP part: see [`tunnel`]).
    pub fn call(
        &mut self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
        extra_headers: &str,
    ) -> Result<Answer, ClientError> {
        self.stream
            .write_all(&request_bytes(method, path, bearer, body, extra_headers))?;
        self.stream.flush()?;
        self.read_answer()
    }

    /// `POST /api/v1/login`: the session token.
    pub fn login(&mut self, user: &str, password: &str) -> Result<String, ClientError> {
        let body = json!({"user": user, "password": password});
        let a = self
            .call("POST", "/api/v1/login", None, Some(&body), "")?
            .expect(200)?;
        string_field(&a, "session_token")
    }

    /// `POST /api/v1/launch` in gateway mode: the ticket.
    pub fn launch(&mut self, token: &str, resource: &str) -> Result<String, ClientError> {
        let body = json!({"resource": resource, "mode": "gateway"});
        let a = self
            .call("POST", "/api/v1/launch", Some(token), Some(&body), "")?
            .expect(200)?;
        string_field(&a, "ticket")
    }

    /// `GET /api/v1/resources`: the ids of the resources the session may launch.
    pub fn resources(&mut self, token: &str) -> Result<Vec<String>, ClientError> {
        let a = self
            .call("GET", "/api/v1/resources", Some(token), None, "")?
            .expect(200)?;
        let list = a.json()["resources"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r["id"].as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| ClientError::Malformed("no \"resources\" list in the answer".into()))?;
        Ok(list)
    }

    /// Closes the connection (TLS close_notify, then shutdown).
    pub fn close(self) {
        self.stream.close();
    }

    /// `GET /health` answered `200`.
    pub fn healthy(&mut self) -> bool {
        matches!(self.call("GET", "/health", None, None, ""), Ok(a) if a.head.status == 200)
    }

    fn read_answer(&mut self) -> Result<Answer, ClientError> {
        let mut chunk = [0u8; 4096];
        let head = loop {
            if let HeadProgress::Done(h) = parse_head(&self.buf)? {
                break h;
            }
            let n = read_some(&mut self.stream, &mut chunk)?;
            self.buf.extend_from_slice(&chunk[..n]);
        };
        if head.status == 101 {
            let body = Vec::new();
            self.buf.drain(..head.head_len);
            return Ok(Answer { head, body });
        }
        let total = head.head_len + head.content_length;
        while self.buf.len() < total {
            let n = read_some(&mut self.stream, &mut chunk)?;
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head.head_len..total].to_vec();
        self.buf.drain(..total);
        self.closed |= head.close;
        Ok(Answer { head, body })
    }
}

/// Opens a tunnel with `ticket` (launched with session `token`) on a new connection to
/// `addr` (`GET /api/v1/tunnel` with `Upgrade: gatehouse-tunnel` and
/// `Gatehouse-Session: TOKEN`); the gateway answers `101` once the host accepted.
pub fn tunnel(
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    sources: &SourcePool,
    token: &str,
    ticket: &str,
) -> Result<Tunnel, ClientError> {
    tunnel_over(HttpConn::connect(addr, tls, sources)?, token, ticket)
}

/// As [`tunnel`], on a connection the caller opened (nothing sent on it yet).
pub fn tunnel_over(mut conn: HttpConn, token: &str, ticket: &str) -> Result<Tunnel, ClientError> {
    let headers =
        format!("Connection: Upgrade\r\nUpgrade: gatehouse-tunnel\r\nGatehouse-Session: {token}\r\n");
    conn.call("GET", "/api/v1/tunnel", Some(ticket), None, &headers)?
        .expect(101)?;
    Ok(Tunnel {
        stream: conn.stream,
        early: conn.buf,
    })
}

/// A byte stream to a session host: an upgraded tunnel, or a direct connection.
pub struct Tunnel {
    stream: ClientStream,
    /// Bytes that arrived with the `101` head.
    early: Vec<u8>,
}

impl Tunnel {
    /// A direct connection (the baseline) as a tunnel.
    pub fn direct(stream: ClientStream) -> Tunnel {
        Tunnel {
            stream,
            early: Vec::new(),
        }
    }

    /// The TCP socket under it (for read timeouts).
    pub fn tcp(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Writes all of `bytes` and flushes (TLS records go out at once).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads what is there (bytes that came with the `101` first); 0 at EOF. A read timeout
    /// is `WouldBlock` or `TimedOut`.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return Ok(n);
        }
        self.stream.read(buf)
    }

    /// Reads what arrives before `deadline` (bytes that came with the `101`, then plaintext
    /// TLS already decrypted, then the socket); `WouldBlock` when nothing came. Waits with
    /// ppoll(2), whose timeout is a high-resolution timer: a socket read timeout
    /// (SO_RCVTIMEO) counts in scheduler ticks of several milliseconds, which would delay
    /// an open loop's next send.
    pub fn read_before(&mut self, buf: &mut [u8], deadline: std::time::Instant) -> io::Result<usize> {
        if !self.early.is_empty() {
            return self.read(buf);
        }
        if let ClientStream::Tls(s) = &mut self.stream {
            match s.conn.reader().read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => return other,
            }
        }
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(self.stream.tcp()),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        let n = unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) };
        match n {
            0 => Err(io::Error::from(ErrorKind::WouldBlock)),
            n if n < 0 => Err(io::Error::last_os_error()),
            _ => self.stream.read(buf),
        }
    }

    /// Reads exactly `buf.len()` bytes (within the socket's read timeout per read).
    pub fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]) {
                Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "closed")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends `msg` and checks that the same bytes come back.
    pub fn echo(&mut self, msg: &[u8], back: &mut [u8]) -> Result<(), String> {
        self.send(msg).map_err(|e| format!("write: {e}"))?;
        self.read_exact(&mut back[..msg.len()])
            .map_err(|e| format!("no echo: {e}"))?;
        if back[..msg.len()] != *msg {
            return Err("echo differs from what was sent".into());
        }
        Ok(())
    }

    /// Closes (TLS close_notify, then shutdown).
    pub fn close(self) {
        self.stream.close();
    }
}

fn read_some(stream: &mut ClientStream, chunk: &mut [u8]) -> Result<usize, ClientError> {
    loop {
        match stream.read(chunk) {
            Ok(0) => return Err(ClientError::Io("closed before the whole answer".into())),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn string_field(a: &Answer, field: &str) -> Result<String, ClientError> {
    a.json()[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Malformed(format!("no {field:?} in the answer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_of_the_gateway_parse() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"ticket\":\"t-1\"}x";
        let HeadProgress::Done(h) = parse_head(ok).unwrap() else {
            panic!("complete head")
        };
        assert_eq!((h.status, h.content_length, h.close), (200, 17, false));
        assert_eq!(&ok[h.head_len..h.head_len + 3], b"{\"t");
        let up = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: gatehouse-tunnel\r\nConnection: Upgrade\r\n\r\nRAW";
        let HeadProgress::Done(h) = parse_head(up).unwrap() else {
            panic!("complete head")
        };
        assert_eq!((h.status, h.content_length), (101, 0));
        assert_eq!(&up[h.head_len..], b"RAW");
        let err = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        let HeadProgress::Done(h) = parse_head(err).unwrap() else {
            panic!("complete head")
        };
        assert!(h.close);
    }

    #[test]
    fn partial_oversized_and_malformed_heads() {
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Ok(HeadProgress::NeedMore)
        );
        assert_eq!(parse_head(b""), Ok(HeadProgress::NeedMore));
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(MAX_HEAD_BYTES, b'a');
        assert_eq!(parse_head(&big), Err(ClientError::TooLarge("head")));
        let body = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        assert_eq!(parse_head(body.as_bytes()), Err(ClientError::TooLarge("body")));
        for bad in [
            &b"SSH-2.0-x\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 \xff\r\n\r\n",
        ] {
            assert!(
                matches!(parse_head(bad), Err(ClientError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn requests_carry_bearer_and_json_length() {
        let body = json!({"resource": "desktop-1", "mode": "gateway"});
        let r = String::from_utf8(request_bytes(
            "POST",
            "/api/v1/launch",
            Some("tok"),
            Some(&body),
            "",
        ))
        .unwrap();
        assert!(
            r.starts_with("POST /api/v1/launch HTTP/1.1\r\nHost: gateway.bench\r\n"),
            "{r}"
        );
        assert!(r.contains("Authorization: Bearer tok\r\n"), "{r}");
        let (head, sent) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", sent.len())), "{r}");
        assert_eq!(serde_json::from_str::<Value>(sent).unwrap(), body);
        let t = String::from_utf8(request_bytes(
            "GET",
            "/api/v1/tunnel",
            Some("T"),
            None,
            "Upgrade: x\r\n",
        ))
        .unwrap();
        assert!(
            t.ends_with("Upgrade: x\r\nAuthorization: Bearer T\r\n\r\n"),
            "{t}"
        );
        assert!(!t.contains("Content-Length"));
    }

    #[test]
    fn refusals_name_their_code() {
        let a = Answer {
            head: ResponseHead {
                status: 403,
                head_len: 0,
                content_length: 0,
                close: true,
            },
            body: br#"{"error":"ticket_replayed","message":"x"}"#.to_vec(),
        };
        let e = a.expect(101).unwrap_err();
        assert_eq!(e.reason(), "refused_403_ticket_replayed");
        assert_eq!(ClientError::Io("x".into()).reason(), "io");
    }

    proptest::proptest! {
        #[test]
        fn parse_head_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_head(&bytes);
            let mut framed = b"HTTP/1.1 200 OK\r\n".to_vec();
            framed.extend_from_slice(&bytes);
            framed.extend_from_slice(b"\r\n\r\n");
            let _ = parse_head(&framed);
        }
    }
}
