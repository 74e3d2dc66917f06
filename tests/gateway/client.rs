//! A tiny HTTP/1.1 client for the gateway's client API, plain or over TLS, written against
//! CLIENT-API.md rather than the project's own client (so the two are checked against the
//! spec, not against each other).

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use gatehouse::tls::verify::CertificateRule;

/// A stream to the gateway: plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

impl Stream {
    pub fn connect(addr: SocketAddr, tls: bool) -> io::Result<Stream> {
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        if !tls {
            return Ok(Stream::Plain(sock));
        }
        let config: Arc<rustls::ClientConfig> = CertificateRule::AnyInsecure
            .client_config()
            .map_err(io::Error::other)?;
        let name = rustls::pki_types::ServerName::try_from("gateway.test")
            .unwrap()
            .to_owned();
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    /// Bytes read after the body (a tunnel's first bytes).
    pub rest: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }
}

/// Sends one request on `stream` and reads its answer (by Content-Length, or the head only
/// for a 101).
pub fn send(
    stream: &mut Stream,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
    extra_headers: &str,
) -> io::Result<Response> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\n{extra_headers}");
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes())?;
    stream.flush()?;
    read_response(stream)
}

/// Reads one response.
pub fn read_response(stream: &mut Stream) -> io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "closed after {} bytes: {:?}",
                    buf.len(),
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line: {head:?}")))?;
    if status == 101 {
        return Ok(Response {
            status,
            head,
            body: Vec::new(),
            rest: buf[head_end..].to_vec(),
        });
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = (head_end + len).min(buf.len());
    Ok(Response {
        status,
        head,
        body: buf[head_end..end].to_vec(),
        rest: buf[end..].to_vec(),
    })
}

/// One request on a fresh plain connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
) -> io::Result<Response> {
    let mut s = Stream::connect(addr, false)?;
    send(&mut s, method, path, bearer, body, "Connection: close\r\n")
}

/// Logs in; returns the session token.
pub fn login(stream: &mut Stream, user: &str, password: &str) -> Response {
    let body = serde_json::json!({"user": user, "password": password});
    send(stream, "POST", "/api/v1/login", None, Some(&body), "").expect("login answer")
}

/// Launches `resource` in `mode`.
pub fn launch(stream: &mut Stream, token: &str, resource: &str, mode: &str) -> Response {
    let body = serde_json::json!({"resource": resource, "mode": mode});
    send(stream, "POST", "/api/v1/launch", Some(token), Some(&body), "").expect("launch answer")
}

/// Asks for a tunnel with `ticket` (launched in `session`) on a new connection; the stream
/// is the tunnel when 101.
pub fn tunnel(addr: SocketAddr, tls: bool, launch: &Launched) -> (Stream, Response) {
    let mut s = Stream::connect(addr, tls).expect("connect");
    let headers = format!(
        "Connection: Upgrade\r\nUpgrade: gatehouse-tunnel\r\nGatehouse-Session: {}\r\n",
        launch.session
    );
    let r = send(
        &mut s,
        "GET",
        "/api/v1/tunnel",
        Some(&launch.ticket),
        None,
        &headers,
    )
    .expect("tunnel answer");
    (s, r)
}

/// A gateway-mode launch: the session token it was made in and the ticket.
#[derive(Clone, Debug)]
pub struct Launched {
    pub session: String,
    pub ticket: String,
}

/// Login + gateway launch on one connection.
pub fn ticket_for(addr: SocketAddr, tls: bool, user: &str, password: &str) -> Launched {
    let mut s = Stream::connect(addr, tls).expect("connect");
    let r = login(&mut s, user, password);
    assert_eq!(r.status, 200, "login: {r:?}");
    let token = r.json()["session_token"].as_str().unwrap().to_string();
    let r = launch(&mut s, &token, "desktop-a", "gateway");
    assert_eq!(r.status, 200, "launch: {r:?}");
    Launched {
        session: token,
        ticket: r.json()["ticket"].as_str().unwrap().to_string(),
    }
}
