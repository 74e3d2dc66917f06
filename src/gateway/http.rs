//! The HTTP/1.1 request head of the gateway's client API (`CLIENT-API.md`), parsed with
//! `httparse`, and the few response shapes the gateway writes itself.
//!
//! Owns bounds and header semantics: the head is at most [`MAX_HEAD`] bytes, an API body at
//! most [`MAX_BODY`], framed by `Content-Length` or the chunked transfer coding. It decides
//! nothing about endpoints (that is `api::route`) and does no I/O: the event loop feeds
//! [`parse_head`] what it has read, then [`read_body`] the bytes after the head, and writes
//! the bytes the response builders return.

use std::fmt;

use super::api::{is_api_path, TUNNEL_UPGRADE};

/// Longest request head (request line and headers, final CRLF included).
pub const MAX_HEAD: usize = 8192;
/// Longest body of an API request.
pub const MAX_BODY: usize = 16384;
/// Most header lines in a head; more is answered like an oversized head (431).
pub const MAX_HEADERS: usize = 64;
/// Bytes a chunked API body may spend on chunk-size lines, extensions and trailers, on
/// top of [`MAX_BODY`] bytes of data.
pub const CHUNK_FRAMING: usize = 8192;

/// The parts of a request head the gateway acts on.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method token, as sent (case-sensitive, RFC 9110 §9.1).
    pub method: String,
    /// The request target up to its `?` (query dropped), not percent-decoded.
    pub path: String,
    /// Bytes of the head, final CRLF included; the body (or tunnel bytes) starts there.
    pub head_len: usize,
    /// `Content-Length`, 0 when absent (and when chunked). At most [`MAX_BODY`] for API
    /// paths; other requests are forwarded whole and keep whatever they declared.
    pub content_length: usize,
    /// An API request's body comes in the chunked transfer coding ([`decode_chunked`]).
    pub chunked: bool,
    /// `Content-Type`, trimmed.
    pub content_type: Option<String>,
    /// The token of `Authorization: Bearer TOKEN` (other schemes give `None`).
    pub bearer: Option<String>,
    /// `Upgrade`, trimmed and lower-cased, only when `Connection` lists `upgrade`.
    pub upgrade: Option<String>,
    /// Whether the connection stays open after the answer: HTTP/1.1 unless
    /// `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Host`, trimmed; required in HTTP/1.1 (RFC 9112 §3.2).
    pub host: Option<String>,
    /// `Gatehouse-Session`, trimmed: the session token that goes with a tunnel's ticket.
    pub session: Option<String>,
    /// `Expect: 100-continue`: the client waits for `100 Continue` before the body.
    pub expect_continue: bool,
}

/// Why a request head is refused; each maps to a status and a stable code of CLIENT-API.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The head is over [`MAX_HEAD`] bytes or [`MAX_HEADERS`] lines: 431 `head_too_large`.
    HeadTooLarge,
    /// An API body declared over [`MAX_BODY`] bytes (the declared length): 413
    /// `body_too_large`.
    BodyTooLarge(usize),
    /// Not a valid HTTP/1.x head, or contradictory headers: 400 `bad_request`.
    Malformed(String),
    /// An API request whose `Transfer-Encoding` names a coding other than `chunked`: 501
    /// `not_implemented` (RFC 9112 §6.1).
    UnknownCoding,
    /// A chunked API body whose chunk framing alone would pass the input bound (many tiny
    /// chunks): 413 `body_too_large`.
    FramingTooLarge,
    /// The request line alone fills [`MAX_HEAD`]: 414 `uri_too_long` (RFC 9112 §3).
    UriTooLong,
    /// A protocol version other than HTTP/1.x: 505 `version_not_supported`.
    Version,
}

/// The outcome of [`parse_head`] on the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadParse {
    /// Valid so far and under [`MAX_HEAD`]: read more (within the handshake timeout).
    Incomplete,
    /// The head is complete: `head_len` bytes of the buffer.
    Complete(RequestHead),
    /// Answer `err.response()` and close.
    Invalid(HttpError),
}

/// Parses a request head from the start of `buf`. Only the first [`MAX_HEAD`] bytes are
/// looked at: a head still incomplete there is [`HttpError::HeadTooLarge`]. Body bounds
/// and framing rules apply to API paths only (`/api/v1/...`, `/health`); other
/// requests are forwarded whole to the configured web server.
pub fn parse_head(buf: &[u8]) -> HeadParse {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    match parse_window(window, buf.len()) {
        // RFC 9110 §2.5: a later HTTP/1.x is handled as the highest minor version we speak,
        // 1.1. httparse knows only 1.0 and 1.1, so it reads a copy that says 1.1.
        HeadParse::Invalid(HttpError::Version) => match later_minor_version(window) {
            Some(at) => {
                let mut copy = window.to_vec();
                copy[at] = b'1';
                parse_window(&copy, buf.len())
            }
            None => HeadParse::Invalid(HttpError::Version),
        },
        parsed => parsed,
    }
}

/// Where the minor digit of an `HTTP/1.2` to `HTTP/1.9` request line is, if the request
/// line (complete or not yet) ends in one.
fn later_minor_version(window: &[u8]) -> Option<usize> {
    let line_end = window
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(window.len());
    let line = &window[..line_end];
    let at = line.len().checked_sub(1)?;
    let version = line.get(line.len().checked_sub(9)?..)?;
    match version {
        [b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if (b'2'..=b'9').contains(minor) => Some(at),
        _ => None,
    }
}

/// The first line of `window` (all of it while no line ended).
fn request_line(window: &[u8]) -> &[u8] {
    window.split(|&b| b == b'\n').next().unwrap_or(window)
}

/// [`parse_head`] on the first [`MAX_HEAD`] bytes (`window`) of `buffered` bytes.
fn parse_window(window: &[u8], buffered: usize) -> HeadParse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(window) {
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD => {
            let line_ended = window.contains(&b'\n');
            HeadParse::Invalid(match line_ended {
                true => HttpError::HeadTooLarge,
                false => HttpError::UriTooLong,
            })
        }
        Ok(httparse::Status::Partial) => HeadParse::Incomplete,
        Ok(httparse::Status::Complete(head_len)) => match build_head(&req, head_len) {
            Ok(head) => HeadParse::Complete(head),
            Err(e) => HeadParse::Invalid(e),
        },
        Err(httparse::Error::TooManyHeaders) => HeadParse::Invalid(HttpError::HeadTooLarge),
        // An HTTP version we do not speak is 505; anything else there is no HTTP at all
        // (a PROXY v1 line followed by a request has " HTTP/" only on the next line).
        Err(httparse::Error::Version) if request_line(window).windows(6).any(|w| w == b" HTTP/") => {
            HeadParse::Invalid(HttpError::Version)
        }
        Err(e) => HeadParse::Invalid(HttpError::Malformed(e.to_string())),
    }
}

/// The outcome of [`read_body`] on the bytes read after a head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRead {
    /// Valid so far: read more (within the handshake timeout).
    Incomplete,
    /// The whole body, and how many bytes of the input it took (the last chunk and the
    /// trailer section included).
    Complete { body: Vec<u8>, taken: usize },
    /// Answer `err.response()` and close.
    Invalid(HttpError),
}

/// The body of an API request with this `head`, from the bytes read after the head:
/// `Content-Length` bytes, or a chunked body decoded.
pub fn read_body(head: &RequestHead, after_head: &[u8]) -> BodyRead {
    if head.chunked {
        return decode_chunked(after_head);
    }
    match after_head.get(..head.content_length) {
        Some(body) => BodyRead::Complete {
            body: body.to_vec(),
            taken: head.content_length,
        },
        None => BodyRead::Incomplete,
    }
}

/// Decodes a chunked API body (RFC 9112 §7.1) from the start of `buf`: at most
/// [`MAX_BODY`] bytes of data in at most [`MAX_BODY`] + [`CHUNK_FRAMING`] bytes. Chunk
/// extensions and trailer fields are read and dropped.
fn decode_chunked(buf: &[u8]) -> BodyRead {
    let window = &buf[..buf.len().min(MAX_BODY + CHUNK_FRAMING)];
    // Still incomplete with the whole window read: it never will be, within the bound.
    let incomplete = || match buf.len() >= MAX_BODY + CHUNK_FRAMING {
        true => BodyRead::Invalid(HttpError::FramingTooLarge),
        false => BodyRead::Incomplete,
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        // httparse reads an empty size line as 0; the grammar needs a digit (1*HEXDIG).
        match window.get(at) {
            None => return incomplete(),
            Some(b) if !b.is_ascii_hexdigit() => {
                return BodyRead::Invalid(malformed("invalid chunk size line"));
            }
            Some(_) => {}
        }
        let (line, size) = match httparse::parse_chunk_size(&window[at..]) {
            Ok(httparse::Status::Complete(sized)) => sized,
            Ok(httparse::Status::Partial) => return incomplete(),
            Err(_) => return BodyRead::Invalid(malformed("invalid chunk size line")),
        };
        at += line;
        let declared = (body.len() as u64).saturating_add(size);
        if declared > MAX_BODY as u64 {
            let len = usize::try_from(declared).unwrap_or(usize::MAX);
            return BodyRead::Invalid(HttpError::BodyTooLarge(len));
        }
        if size == 0 {
            let mut trailers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            return match httparse::parse_headers(&window[at..], &mut trailers) {
                Ok(httparse::Status::Complete((len, _))) => BodyRead::Complete {
                    body,
                    taken: at + len,
                },
                Ok(httparse::Status::Partial) => incomplete(),
                Err(_) => BodyRead::Invalid(malformed("invalid trailer section")),
            };
        }
        // At most MAX_BODY, checked above.
        let end = at + size as usize;
        let Some(data) = window.get(at..end) else {
            return incomplete();
        };
        body.extend_from_slice(data);
        at = end;
        match &window[at..] {
            [b'\r', b'\n', ..] => at += 2,
            [] | [b'\r'] => return incomplete(),
            _ => return BodyRead::Invalid(malformed("chunk data not followed by CRLF")),
        }
    }
}

/// Bytes of empty lines (CRLF or a bare LF) at the start of `buf`, which a server skips
/// before a request line (RFC 9112 §2.2). A CR that may still be followed by its LF is not
/// counted, and neither is anything after it.
pub fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match &buf[at..] {
            [b'\n', ..] => at += 1,
            [b'\r', b'\n', ..] => at += 2,
            _ => return at,
        }
    }
}

/// A complete response with a JSON body, `Content-Length`, `Date`, and `Connection: close`
/// when `close` (the event loop then closes after writing it) or `Connection: keep-alive`.
pub fn json_response(status: u16, body: &serde_json::Value, close: bool) -> Vec<u8> {
    json_response_with(status, body, close, "")
}

/// [`json_response`] with `extra` header lines (each ending in CRLF), such as `Allow`.
pub fn json_response_with(status: u16, body: &serde_json::Value, close: bool, extra: &str) -> Vec<u8> {
    let body = body.to_string();
    let connection = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\n{extra}Connection: {connection}\r\n\r\n",
        reason_phrase(status),
        http_date(time::OffsetDateTime::now_utc()),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The answer to a HEAD request: `response`'s head alone. Its Content-Length stays the
/// one a GET would get (RFC 9110 §9.3.2, §8.6).
pub fn head_only(mut response: Vec<u8>) -> Vec<u8> {
    if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(end + 4);
    }
    response
}

/// An IMF-fixdate (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(t: time::OffsetDateTime) -> String {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        DAYS[usize::from(t.weekday().number_days_from_monday())],
        t.day(),
        MONTHS[usize::from(u8::from(t.month())) - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `100 Continue`, for a client that sent `Expect: 100-continue` and waits for it before
/// the body (RFC 9110 §10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The tunnel's `101 Switching Protocols` head (CLIENT-API.md, `GET /api/v1/tunnel`); raw
/// bytes follow it both ways.
pub fn switching_protocols() -> Vec<u8> {
    format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: {TUNNEL_UPGRADE}\r\nConnection: Upgrade\r\n\r\n")
        .into_bytes()
}

/// The reason phrase of a status (RFC 9110 §15), for the statuses the gateway sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

impl HttpError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge => 431,
            Self::BodyTooLarge(_) => 413,
            Self::Malformed(_) => 400,
            Self::FramingTooLarge => 413,
            Self::UnknownCoding => 501,
            Self::UriTooLong => 414,
            Self::Version => 505,
        }
    }

    /// The stable error code of the answer (CLIENT-API.md "Errors"); also the log reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::HeadTooLarge => "head_too_large",
            Self::BodyTooLarge(_) | Self::FramingTooLarge => "body_too_large",
            Self::Malformed(_) => "bad_request",
            Self::UnknownCoding => "not_implemented",
            Self::UriTooLong => "uri_too_long",
            Self::Version => "version_not_supported",
        }
    }

    /// The whole error answer (`{"error","message"}`, `Connection: close`).
    pub fn response(&self) -> Vec<u8> {
        let body = serde_json::json!({ "error": self.code(), "message": self.to_string() });
        json_response(self.status(), &body, true)
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeadTooLarge => write!(
                f,
                "request head over {MAX_HEAD} bytes or {MAX_HEADERS} header lines"
            ),
            Self::BodyTooLarge(len) => {
                write!(f, "request body of {len} bytes is over the {MAX_BODY}-byte bound")
            }
            Self::Malformed(why) => write!(f, "malformed request: {why}"),
            Self::UnknownCoding => f.write_str("only the chunked transfer coding is implemented"),
            Self::FramingTooLarge => write!(
                f,
                "chunked request body with its framing over {} bytes",
                MAX_BODY + CHUNK_FRAMING
            ),
            Self::UriTooLong => write!(f, "request line over {MAX_HEAD} bytes"),
            Self::Version => f.write_str("only HTTP/1.0 and HTTP/1.1 are spoken here"),
        }
    }
}

impl std::error::Error for HttpError {}

impl fmt::Debug for RequestHead {
    /// Redacts the bearer token (a session token or launch ticket).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHead")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("head_len", &self.head_len)
            .field("content_length", &self.content_length)
            .field("chunked", &self.chunked)
            .field("content_type", &self.content_type)
            .field(
                "bearer",
                &self
                    .bearer
                    .as_ref()
                    .map(|t| format!("<{} bytes redacted>", t.len())),
            )
            .field(
                "session",
                &self
                    .session
                    .as_ref()
                    .map(|t| format!("<{} bytes redacted>", t.len())),
            )
            .field("upgrade", &self.upgrade)
            .field("keep_alive", &self.keep_alive)
            .field("host", &self.host)
            .field("expect_continue", &self.expect_continue)
            .finish()
    }
}

/// Longest `Content-Length` value in digits (any more would overflow `usize` on 64-bit).
const MAX_LENGTH_DIGITS: usize = 19;

/// Headers of interest, collected before their meaning is decided.
#[derive(Default)]
struct Collected<'a> {
    content_length: Option<usize>,
    codings: Codings,
    content_type: Option<&'a str>,
    authorization: Option<&'a str>,
    session: Option<&'a str>,
    upgrade: Option<&'a str>,
    host: Option<&'a str>,
    expect_continue: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    conn_upgrade: bool,
}

/// The `Transfer-Encoding` lines of a request, as far as framing needs them.
#[derive(Default)]
struct Codings {
    /// A `Transfer-Encoding` line was there (even an empty one).
    seen: bool,
    /// Codings listed, over all lines.
    count: usize,
    /// How many of them are `chunked`.
    chunked: usize,
    /// Whether the last one listed is `chunked`.
    last_chunked: bool,
}

impl Codings {
    fn add(&mut self, value: &str) {
        self.seen = true;
        // A list may have empty elements (RFC 9110 §5.6.1); transfer-parameters are not
        // defined for chunked, so a coding with one is another coding.
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            let chunked = coding.eq_ignore_ascii_case("chunked");
            self.count += 1;
            self.chunked += usize::from(chunked);
            self.last_chunked = chunked;
        }
    }

    /// Whether an API request's body is chunked, or why its framing is refused
    /// (RFC 9112 §6.1, §6.3).
    fn chunked_body(&self, minor: u8, content_length: bool) -> Result<bool, HttpError> {
        if !self.seen {
            return Ok(false);
        }
        if minor == 0 {
            return Err(malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if content_length {
            // Both framings at once is how requests are smuggled past a proxy.
            return Err(malformed("both Transfer-Encoding and Content-Length"));
        }
        if self.count == 0 {
            return Err(malformed("empty Transfer-Encoding"));
        }
        if !self.last_chunked {
            // A request body's length is unknowable unless chunked comes last.
            return Err(malformed("Transfer-Encoding does not end in chunked"));
        }
        if self.count > self.chunked {
            return Err(HttpError::UnknownCoding);
        }
        if self.chunked > 1 {
            return Err(malformed("chunked applied more than once"));
        }
        Ok(true)
    }
}

fn malformed(why: &str) -> HttpError {
    HttpError::Malformed(why.to_owned())
}

/// The body length the `Content-Length` fields of `headers` give (RFC 9110 §8.6: 1*DIGIT;
/// RFC 9112 §6.3: repeated identical values are one value, different ones an error), `None`
/// without one. The error is the detail of a 400. (The admin API frames its requests with it
/// too.)
pub fn content_length(headers: &[httparse::Header<'_>]) -> Result<Option<usize>, &'static str> {
    let mut length = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let v = std::str::from_utf8(h.value).map(str::trim).unwrap_or("");
        if v.is_empty() || v.len() > MAX_LENGTH_DIGITS || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err("invalid Content-Length");
        }
        let n: usize = v.parse().map_err(|_| "invalid Content-Length")?;
        if length.is_some_and(|m| m != n) {
            return Err("conflicting Content-Length");
        }
        length = Some(n);
    }
    Ok(length)
}

fn build_head(req: &httparse::Request<'_, '_>, head_len: usize) -> Result<RequestHead, HttpError> {
    // httparse fills these on Complete; a missing one is still answered, not unwrapped.
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(malformed("incomplete request line"));
    };
    let mut c = Collected {
        content_length: content_length(req.headers).map_err(malformed)?,
        ..Collected::default()
    };
    for h in req.headers.iter() {
        let name = h.name;
        let value = || -> Result<&str, HttpError> {
            std::str::from_utf8(h.value)
                .map(str::trim)
                .map_err(|_| HttpError::Malformed(format!("{name} is not UTF-8")))
        };
        if name.eq_ignore_ascii_case("transfer-encoding") {
            c.codings.add(value()?);
        } else if name.eq_ignore_ascii_case("content-type") {
            once(&mut c.content_type, value()?, "Content-Type")?;
        } else if name.eq_ignore_ascii_case("authorization") {
            once(&mut c.authorization, value()?, "Authorization")?;
        } else if name.eq_ignore_ascii_case("gatehouse-session") {
            once(&mut c.session, value()?, "Gatehouse-Session")?;
        } else if name.eq_ignore_ascii_case("upgrade") {
            once(&mut c.upgrade, value()?, "Upgrade")?;
        } else if name.eq_ignore_ascii_case("host") {
            // RFC 9112 §3.2: more than one Host is a 400.
            once(&mut c.host, value()?, "Host")?;
        } else if name.eq_ignore_ascii_case("expect") {
            // RFC 9110 §10.1.1: 100-continue is the only expectation defined.
            c.expect_continue |= value()?.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value()?.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    c.conn_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    c.conn_keep_alive = true;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    c.conn_upgrade = true;
                }
            }
        }
    }
    if minor == 1 && c.host.is_none() {
        return Err(malformed("HTTP/1.1 request without Host"));
    }
    if c.host.is_some_and(|h| !valid_host(h)) {
        // RFC 9112 §3.2: an invalid Host is a 400.
        return Err(malformed("invalid Host"));
    }
    let path = origin_path(target).ok_or_else(|| malformed("absolute-form target without a host"))?;
    let path = path.split('?').next().unwrap_or(path).to_owned();
    let content_length = c.content_length.unwrap_or(0);
    let chunked = is_api_path(&path) && c.codings.chunked_body(minor, c.content_length.is_some())?;
    if is_api_path(&path) && content_length > MAX_BODY {
        return Err(HttpError::BodyTooLarge(content_length));
    }
    let keep_alive = !c.conn_close && (minor == 1 || c.conn_keep_alive);
    Ok(RequestHead {
        method: method.to_owned(),
        path,
        head_len,
        content_length,
        chunked,
        content_type: c.content_type.map(str::to_owned),
        bearer: c.authorization.and_then(bearer_token).map(str::to_owned),
        // RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is ignored.
        upgrade: c
            .upgrade
            .filter(|_| c.conn_upgrade && minor == 1)
            .map(str::to_ascii_lowercase),
        keep_alive,
        host: c.host.map(str::to_owned),
        session: c.session.map(str::to_owned),
        // RFC 9110 §10.1.1: an HTTP/1.0 client's expectation is ignored (it reads no 1xx).
        expect_continue: c.expect_continue && minor == 1,
    })
}

/// The path of a request target: the target itself in origin form, the part after the
/// authority in absolute form (`http://gw.example/api/v1/login`, which a server must accept,
/// RFC 9112 §3.2.2).
/// `None` for an absolute form with an empty authority (`http:///x`, RFC 9110 §4.2.1).
fn origin_path(target: &str) -> Option<&str> {
    let lower = |n: usize| target.get(..n).map(str::to_ascii_lowercase);
    let scheme = if lower(7).as_deref() == Some("http://") {
        7
    } else if lower(8).as_deref() == Some("https://") {
        8
    } else {
        return Some(target);
    };
    let rest = &target[scheme..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some(match rest.as_bytes().get(end) {
        Some(b'/') => &rest[end..],
        _ => "/",
    })
}

/// A Host value as RFC 9112 §3.2 allows: uri-host [ ":" port ], where uri-host is a
/// reg-name (unreserved, sub-delims, percent-encoded) or an IP literal in brackets; empty
/// when the target has no authority.
fn valid_host(host: &str) -> bool {
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:[]".contains(&b))
}

/// Stores a header that may appear once.
fn once<'a>(slot: &mut Option<&'a str>, value: &'a str, name: &str) -> Result<(), HttpError> {
    if slot.is_some() {
        return Err(HttpError::Malformed(format!("more than one {name}")));
    }
    *slot = Some(value);
    Ok(())
}

/// RFC 6750 §2.1: `Bearer` (any case), one or more spaces, then the token (no spaces).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    // Any visible characters: the endpoint validates the token itself, so a bad one is
    // `session_invalid` / `ticket_malformed` rather than "missing".
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn complete(buf: &[u8]) -> RequestHead {
        match parse_head(buf) {
            HeadParse::Complete(h) => h,
            other => panic!(
                "expected Complete for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn invalid(buf: &[u8]) -> HttpError {
        match parse_head(buf) {
            HeadParse::Invalid(e) => e,
            other => panic!(
                "expected Invalid for {:?}, got {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    const LOGIN: &[u8] = b"POST /api/v1/login?x=1 HTTP/1.1\r\nHost: gw.example:8443\r\n\
        Content-Type: application/json; charset=utf-8\r\nContent-Length: 42\r\n\r\n{\"user\"";

    #[test]
    fn login_head() {
        let h = complete(LOGIN);
        assert_eq!(h.method, "POST");
        assert_eq!(h.path, "/api/v1/login");
        assert_eq!(h.head_len, LOGIN.len() - 7);
        assert_eq!(&LOGIN[h.head_len..], b"{\"user\"");
        assert_eq!(h.content_length, 42);
        assert_eq!(h.content_type.as_deref(), Some("application/json; charset=utf-8"));
        assert_eq!(h.host.as_deref(), Some("gw.example:8443"));
        assert!(h.keep_alive);
        assert_eq!((h.bearer, h.upgrade), (None, None));
    }

    #[test]
    fn empty_lines_before_a_request_line() {
        assert_eq!(leading_empty_lines(b"GET / HTTP/1.1\r\n"), 0);
        assert_eq!(leading_empty_lines(b"\r\nGET /"), 2);
        assert_eq!(leading_empty_lines(b"\n\r\n\nGET /"), 4);
        // A CR whose LF has not arrived yet, or a CR with something else after it.
        assert_eq!(leading_empty_lines(b"\r\n\r"), 2);
        assert_eq!(leading_empty_lines(b"\rGET /"), 0);
        assert_eq!(leading_empty_lines(b""), 0);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let head_len = complete(LOGIN).head_len;
        for cut in 0..head_len {
            assert_eq!(parse_head(&LOGIN[..cut]), HeadParse::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn tunnel_head() {
        let buf = b"GET /api/v1/tunnel HTTP/1.1\r\nHost: gw\r\nConnection: keep-alive, Upgrade\r\n\
            Upgrade: Gatehouse-Tunnel\r\nAuthorization: bearer  T1.abc-_~+/=\r\n\r\n\x03\x00";
        let h = complete(buf);
        assert_eq!(h.upgrade.as_deref(), Some("gatehouse-tunnel"));
        assert_eq!(h.bearer.as_deref(), Some("T1.abc-_~+/="));
        assert_eq!(&buf[h.head_len..], b"\x03\x00");
        // Without Connection: upgrade the Upgrade header means nothing.
        let h = complete(b"GET /api/v1/tunnel HTTP/1.1\r\nHost: gw\r\nUpgrade: gatehouse-tunnel\r\n\r\n");
        assert_eq!(h.upgrade, None);
    }

    #[test]
    fn authorization_schemes() {
        let with = |v: &str| {
            complete(format!("GET / HTTP/1.1\r\nHost: h\r\nAuthorization: {v}\r\n\r\n").as_bytes()).bearer
        };
        assert_eq!(with("Bearer abc"), Some("abc".into()));
        assert_eq!(with("BEARER abc"), Some("abc".into()));
        assert_eq!(with("Basic YWxpY2U6cHc="), None);
        assert_eq!(with("Bearer"), None);
        assert_eq!(with("Bearer a b"), None);
        assert_eq!(with("Bearerabc"), None);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |v: &str, extra: &str| {
            complete(format!("GET / HTTP/1.{v}\r\nHost: h\r\n{extra}\r\n").as_bytes()).keep_alive
        };
        assert!(ka("1", ""));
        assert!(!ka("1", "Connection: close\r\n"));
        assert!(!ka("1", "Connection: Keep-Alive, CLOSE\r\n"));
        assert!(!ka("0", ""));
        assert!(ka("0", "Connection: keep-alive\r\n"));
        // HTTP/1.0 needs no Host.
        assert_eq!(complete(b"GET /health HTTP/1.0\r\n\r\n").host, None);
    }

    #[test]
    fn header_conflicts_are_malformed() {
        for extra in [
            "Host: other\r\n",
            "Content-Length: 1\r\nContent-Length: 2\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 1 2\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n",
            "Content-Type: a\r\nContent-Type: b\r\n",
        ] {
            let buf = format!("POST /api/v1/login HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
            let e = invalid(buf.as_bytes());
            assert!(matches!(e, HttpError::Malformed(_)), "{extra:?}: {e:?}");
            assert_eq!((e.status(), e.code()), (400, "bad_request"));
        }
        // Repeated identical lengths are one length (RFC 9112 §6.3).
        let h = complete(
            b"POST /api/v1/login HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(h.content_length, 3);
        assert!(matches!(
            invalid(b"GET / HTTP/1.1\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        assert!(matches!(
            invalid(b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n"),
            HttpError::Malformed(_)
        ));
    }

    #[test]
    fn request_line_errors() {
        // Another protocol version: 505.
        for bad in [&b"GET / HTTP/2.0\r\n\r\n"[..], b"PRI * HTTP/2.0\r\n\r\n"] {
            let e = invalid(bad);
            assert_eq!((e.status(), e.code()), (505, "version_not_supported"), "{bad:?}");
        }
        for bad in [
            &b"GET  / HTTP/1.1\r\n"[..],
            b"GET / FTP/1.1\r\n",
            b"G\x01T / HTTP/1.1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
            // A PROXY v1 line where no PROXY header is expected, then a request: 400, not
            // 505 for the request's version on the next line.
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(
                matches!(invalid(bad), HttpError::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn absolute_form_targets_are_routed_by_their_path() {
        let h =
            complete(b"POST http://gw.example:8443/api/v1/login?x HTTP/1.1\r\nHost: gw.example:8443\r\n\r\n");
        assert_eq!(h.path, "/api/v1/login");
        let h = complete(b"GET HTTPS://gw.example HTTP/1.1\r\nHost: gw.example\r\n\r\n");
        assert_eq!(h.path, "/");
        // Origin form is left alone.
        assert_eq!(
            complete(b"GET /http://x HTTP/1.1\r\nHost: x\r\n\r\n").path,
            "/http://x"
        );
        // The authority ends at a fragment too; an empty one is no host.
        let h = complete(b"GET http://gw#/api/v1/login HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert_eq!(h.path, "/");
        assert!(matches!(
            invalid(b"GET http:///api/v1/login HTTP/1.1\r\nHost: gw\r\n\r\n"),
            HttpError::Malformed(_)
        ));
    }

    #[test]
    fn host_values_are_checked() {
        for ok in [
            "gw.example",
            "gw.example:8443",
            "[::1]:443",
            "10.0.0.1",
            "a-b_c~d",
            "",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {ok}\r\n\r\n");
            assert_eq!(complete(raw.as_bytes()).host.as_deref(), Some(ok));
        }
        for bad in ["a b", "user@gw", "gw/x", "gw\"x", "gw<"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert!(
                matches!(invalid(raw.as_bytes()), HttpError::Malformed(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn upgrade_only_in_http_1_1_and_expect_continue() {
        let up = "Connection: Upgrade\r\nUpgrade: gatehouse-tunnel\r\n";
        let h11 = format!("GET /api/v1/tunnel HTTP/1.1\r\nHost: x\r\n{up}\r\n");
        assert_eq!(
            complete(h11.as_bytes()).upgrade.as_deref(),
            Some("gatehouse-tunnel")
        );
        // RFC 9110 §7.8: ignored in HTTP/1.0.
        let h10 = format!("GET /api/v1/tunnel HTTP/1.0\r\n{up}\r\n");
        assert_eq!(complete(h10.as_bytes()).upgrade, None);
        let h = complete(
            b"POST /api/v1/login HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n",
        );
        assert!(h.expect_continue);
        assert!(!complete(LOGIN).expect_continue);
        // Ignored in HTTP/1.0 (RFC 9110 §10.1.1).
        let h = complete(b"POST /api/v1/login HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert!(!h.expect_continue);
    }

    #[test]
    fn dates_and_head_answers() {
        let t = time::macros::datetime!(1994-11-06 08:49:37 UTC);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        let full = json_response(200, &serde_json::json!({"a": 1}), true);
        let head = head_only(full.clone());
        assert!(head.ends_with(b"\r\n\r\n") && full.starts_with(&head));
        assert_eq!(full.len() - head.len(), 7, "the body {{\"a\":1}} is gone");
    }

    #[test]
    fn a_request_line_that_fills_the_head_is_414() {
        let mut raw = b"GET /".to_vec();
        raw.resize(MAX_HEAD + 10, b'a');
        assert_eq!(invalid(&raw), HttpError::UriTooLong);
        // Headers that fill it after a short line stay 431.
        let mut raw = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        raw.resize(MAX_HEAD + 10, b'a');
        assert_eq!(invalid(&raw), HttpError::HeadTooLarge);
    }

    #[test]
    fn head_bound() {
        // A head of exactly MAX_HEAD bytes is accepted.
        let start = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ";
        let pad = MAX_HEAD - start.len() - 4;
        let exact = format!("{start}{}\r\n\r\n", "a".repeat(pad));
        assert_eq!(exact.len(), MAX_HEAD);
        assert_eq!(complete(exact.as_bytes()).head_len, MAX_HEAD);
        // One more byte, complete or not, is over the bound.
        let over = format!("{start}{}\r\n\r\n", "a".repeat(pad + 1));
        assert_eq!(invalid(over.as_bytes()), HttpError::HeadTooLarge);
        assert_eq!(
            parse_head(&over.as_bytes()[..MAX_HEAD - 1]),
            HeadParse::Incomplete
        );
        assert_eq!(invalid(&over.as_bytes()[..MAX_HEAD]), HttpError::HeadTooLarge);
        // Too many header lines.
        let many = format!(
            "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS)
        );
        let e = invalid(many.as_bytes());
        assert_eq!((e.status(), e.code()), (431, "head_too_large"));
    }

    #[test]
    fn body_bounds_apply_to_api_paths_only() {
        let at = |path: &str, len: usize| {
            format!("POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: {len}\r\n\r\n")
        };
        assert_eq!(
            complete(at("/api/v1/login", MAX_BODY).as_bytes()).content_length,
            MAX_BODY
        );
        let e = invalid(at("/api/v1/login", MAX_BODY + 1).as_bytes());
        assert_eq!(e, HttpError::BodyTooLarge(MAX_BODY + 1));
        assert_eq!((e.status(), e.code()), (413, "body_too_large"));
        assert_eq!(
            invalid(at("/health", MAX_BODY + 1).as_bytes()),
            HttpError::BodyTooLarge(MAX_BODY + 1)
        );
        // A forwarded upload keeps its length.
        assert_eq!(
            complete(at("/upload", 1 << 30).as_bytes()).content_length,
            1 << 30
        );
        // A forwarded upload's framing is the web server's business.
        let chunked = "POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let h = complete(chunked.as_bytes());
        assert_eq!((h.content_length, h.chunked), (0, false));
    }

    #[test]
    fn transfer_coding_rules() {
        let with = |version: &str, headers: &str| {
            format!("POST /api/v1/login HTTP/1.{version}\r\nHost: h\r\n{headers}\r\n")
        };
        for ok in [
            "Transfer-Encoding: chunked\r\n",
            "Transfer-Encoding: CHUNKED\r\n",
            "Transfer-Encoding: ,chunked,\r\n",
            "Transfer-Encoding:\r\nTransfer-Encoding: chunked\r\n",
        ] {
            let h = complete(with("1", ok).as_bytes());
            assert_eq!((h.chunked, h.content_length), (true, 0), "{ok:?}");
        }
        assert!(!complete(with("1", "Content-Length: 0\r\n").as_bytes()).chunked);
        let refused = [
            // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            ("0", "Transfer-Encoding: chunked\r\n", 400),
            // Both framings: the smuggling pattern.
            ("1", "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
            ("1", "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
            ("1", "Transfer-Encoding:  \r\n", 400),
            // RFC 9112 §6.3: chunked must come last in a request.
            ("1", "Transfer-Encoding: chunked, gzip\r\n", 400),
            (
                "1",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
                400,
            ),
            ("1", "Transfer-Encoding: chunked, chunked\r\n", 400),
            // RFC 9112 §6.1: a coding we do not implement is 501.
            ("1", "Transfer-Encoding: gzip, chunked\r\n", 501),
            ("1", "Transfer-Encoding: chunked;q=1, chunked\r\n", 501),
        ];
        for (version, headers, status) in refused {
            let e = invalid(with(version, headers).as_bytes());
            assert_eq!(e.status(), status, "{version} {headers:?}: {e}");
        }
        let e = invalid(with("1", "Transfer-Encoding: gzip, chunked\r\n").as_bytes());
        assert_eq!(
            (e.code(), e.to_string().contains("gzip")),
            ("not_implemented", false)
        );
    }

    #[test]
    fn chunked_bodies_decode() {
        let complete_body = |encoded: &[u8]| match decode_chunked(encoded) {
            BodyRead::Complete { body, taken } => (body, taken),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(encoded)),
        };
        let encoded = b"7\r\n{\"user\"\r\nB;ext=\"x\"\r\n:\"alice\"}  \r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        let (body, taken) = complete_body(encoded);
        assert_eq!(body, b"{\"user\":\"alice\"}  ");
        assert_eq!(&encoded[taken..], b"NEXT");
        assert_eq!(complete_body(b"0\r\n\r\n"), (Vec::new(), 5));
        // Any cut before the end waits for more.
        let end = encoded.len() - 4;
        for cut in 0..end {
            assert_eq!(
                decode_chunked(&encoded[..cut]),
                BodyRead::Incomplete,
                "cut at {cut}"
            );
        }
        let bad = |encoded: &[u8]| match decode_chunked(encoded) {
            BodyRead::Invalid(e) => e,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(encoded)),
        };
        for malformed in [
            &b"\r\n\r\n"[..],
            b"-1\r\n",
            b"x\r\n",
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3\r\nabc0\r\n\r\n",
            b"1000000000000000000\r\n",
            b"0\r\nno colon\r\n\r\n",
        ] {
            assert_eq!(
                bad(malformed).status(),
                400,
                "{:?}",
                String::from_utf8_lossy(malformed)
            );
        }
        // Over the body bound as soon as the sizes say so.
        let e = bad(format!("{:x}\r\n", MAX_BODY + 1).as_bytes());
        assert_eq!((e.status(), e.code()), (413, "body_too_large"));
        let e = bad(format!("{:x}\r\n", u64::MAX >> 4).as_bytes());
        assert_eq!(e.status(), 413);
        let e = bad(format!("{:x}\r\n{}\r\n1\r\n", MAX_BODY, "a".repeat(MAX_BODY)).as_bytes());
        assert_eq!(e, HttpError::BodyTooLarge(MAX_BODY + 1));
        // The whole bound in one body decodes; tiny chunks that spend the framing bound do not.
        let whole = format!("{:x}\r\n{}\r\n0\r\n\r\n", MAX_BODY, "a".repeat(MAX_BODY));
        assert_eq!(complete_body(whole.as_bytes()).0.len(), MAX_BODY);
        let tiny = "1;pad=xxxxxxxxxx\r\na\r\n".repeat((MAX_BODY + CHUNK_FRAMING) / 20);
        let e = bad(tiny.as_bytes());
        assert_eq!((e.status(), e.code()), (413, "body_too_large"));
    }

    #[test]
    fn later_http_1_minor_versions_are_read_as_1_1() {
        // RFC 9110 §2.5.
        for minor in 2..=9 {
            let h = complete(format!("GET /health HTTP/1.{minor}\r\nHost: h\r\n\r\n").as_bytes());
            assert!(h.keep_alive, "HTTP/1.{minor}");
            let e = invalid(format!("GET /health HTTP/1.{minor}\r\n\r\n").as_bytes());
            assert_eq!(e, HttpError::Malformed("HTTP/1.1 request without Host".into()));
        }
        assert_eq!(parse_head(b"GET / HTTP/1.2"), HeadParse::Incomplete);
        assert_eq!(
            parse_head(b"GET / HTTP/1.2\r\nHost: h\r\n"),
            HeadParse::Incomplete
        );
        for other in [
            &b"GET / HTTP/1.23\r\n\r\n"[..],
            b"GET / HTTP/3.0\r\n\r\n",
            b"GET / HTTP/0.9\r\n\r\n",
        ] {
            assert_eq!(
                invalid(other),
                HttpError::Version,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn rd_gateway_method_parses() {
        // MS-TSGU requests are not API requests: the caller forwards or answers 404.
        let h = complete(b"RDG_OUT_DATA /remoteDesktopGateway/ HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert_eq!(
            (h.method.as_str(), h.path.as_str()),
            ("RDG_OUT_DATA", "/remoteDesktopGateway/")
        );
        assert_eq!(h.upgrade.as_deref(), Some("websocket"));
    }

    #[test]
    fn debug_redacts_bearer() {
        let h = complete(b"GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer sekrit-token\r\n\r\n");
        let dbg = format!("{h:?}");
        assert!(!dbg.contains("sekrit"), "{dbg}");
        assert!(dbg.contains("12 bytes redacted"), "{dbg}");
    }

    /// Splits a response into its head lines and body.
    fn split(resp: &[u8]) -> (Vec<String>, Vec<u8>) {
        let text = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("head end");
        let head = String::from_utf8(resp[..text].to_vec()).expect("ascii head");
        (
            head.split("\r\n").map(str::to_owned).collect(),
            resp[text + 4..].to_vec(),
        )
    }

    #[test]
    fn json_responses() {
        let body = serde_json::json!({"status": "ok", "brokers": ["b1"]});
        let (lines, got) = split(&json_response(200, &body, false));
        assert_eq!(lines[0], "HTTP/1.1 200 OK");
        assert!(lines.contains(&"Content-Type: application/json".to_owned()));
        assert!(lines.contains(&format!("Content-Length: {}", got.len())));
        assert!(lines.contains(&"Connection: keep-alive".to_owned()));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&got).unwrap(), body);
        let (lines, _) = split(&json_response(503, &body, true));
        assert_eq!(lines[0], "HTTP/1.1 503 Service Unavailable");
        assert!(lines.contains(&"Connection: close".to_owned()));
        // Parsed back by httparse as a client would.
        let resp = json_response(
            404,
            &serde_json::json!({"error": "not_found", "message": "x"}),
            true,
        );
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut headers);
        assert!(matches!(r.parse(&resp), Ok(httparse::Status::Complete(_))));
        assert_eq!(r.code, Some(404));
    }

    #[test]
    fn error_response_shape() {
        let (lines, body) = split(&HttpError::HeadTooLarge.response());
        assert_eq!(lines[0], "HTTP/1.1 431 Request Header Fields Too Large");
        assert!(lines.contains(&"Connection: close".to_owned()));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "head_too_large");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    #[test]
    fn upgrade_answer() {
        assert_eq!(
            switching_protocols(),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: gatehouse-tunnel\r\nConnection: Upgrade\r\n\r\n"
        );
        assert_eq!(reason_phrase(418), "Unknown");
    }

    proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..10_000)) {
            if let HeadParse::Complete(h) = parse_head(&bytes) {
                prop_assert!(h.head_len <= MAX_HEAD && h.head_len <= bytes.len());
            }
        }

        #[test]
        fn never_panics_on_header_like_text(
            lines in proptest::collection::vec("[A-Za-z-]{1,16}: [ -~]{0,40}", 0..20),
            path in "/[!-~]{0,30}",
        ) {
            let headers: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
            let buf = format!("POST {path} HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
            if let HeadParse::Complete(h) = parse_head(buf.as_bytes()) {
                prop_assert_eq!(h.head_len, buf.len());
                // A valid head is never refused early: every prefix is only incomplete.
                for cut in 0..buf.len() {
                    prop_assert_eq!(parse_head(&buf.as_bytes()[..cut]), HeadParse::Incomplete);
                }
                let _ = super::super::api::route(&h, &[]);
            }
        }

        #[test]
        fn chunked_bodies_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..20),
            trailer in "([A-Za-z-]{1,12}: [ -~]{0,20}\r\n){0,3}",
            after in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            let mut encoded = Vec::new();
            for chunk in &chunks {
                encoded.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                encoded.extend_from_slice(chunk);
                encoded.extend_from_slice(b"\r\n");
            }
            encoded.extend_from_slice(format!("0\r\n{trailer}\r\n").as_bytes());
            let whole = encoded.len();
            for cut in 0..whole {
                prop_assert_eq!(decode_chunked(&encoded[..cut]), BodyRead::Incomplete);
            }
            encoded.extend_from_slice(&after);
            let BodyRead::Complete { body, taken } = decode_chunked(&encoded) else {
                return Err(TestCaseError::fail("not decoded"));
            };
            prop_assert_eq!(body, chunks.concat());
            prop_assert_eq!(taken, whole);
        }

        #[test]
        fn chunked_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..30_000)) {
            if let BodyRead::Complete { body, taken } = decode_chunked(&bytes) {
                prop_assert!(body.len() <= MAX_BODY && taken <= bytes.len());
            }
        }
    }
}
