//! The RDP client's first message: an X.224 Connection Request inside TPKT
//! (MS-RDPBCGR 2.2.1.1, X.224 §13.3, RFC 1006 §6), read by the gateway's RDP load-balancing
//! listener to find the user hint (`Cookie: mstshash=`) or routing token (`Cookie: msts=`).
//!
//! Owns the byte format only: [`parse_connection_request`] takes what has been read so far
//! and says whether the request is complete; the shell forwards the request bytes unchanged
//! to the host the broker picks. The cookie is a hint for affinity and never an address: the
//! shell honours a routing token only when it names a host of the listener's pool.
//! [`negotiation_failure`] builds the answer sent before closing a client that cannot be
//! routed (MS-RDPBCGR 2.2.1.2.2).

use std::fmt;
use std::net::Ipv4Addr;

/// The largest Connection Request accepted, TPKT header included. Real ones are 19 to ~100
/// bytes (cookie + RDP_NEG_REQ + RDP_NEG_CORRELATION_INFO); a larger TPKT length is
/// [`X224Error::TooLong`] as soon as the 4-byte TPKT header is in.
pub const MAX_CONNECTION_REQUEST: usize = 1024;

/// The smallest Connection Request: TPKT header (4) + fixed X.224 CR header (7).
pub const MIN_CONNECTION_REQUEST: usize = 11;

/// Longest user hint kept from `Cookie: mstshash=` (the broker's user-name bound).
pub const MAX_COOKIE_USER_BYTES: usize = 255;

/// RDP_NEG_FAILURE codes (MS-RDPBCGR 2.2.1.2.2), for [`negotiation_failure`].
pub mod failure_code {
    /// The server requires TLS.
    pub const SSL_REQUIRED_BY_SERVER: u32 = 0x0000_0001;
    /// The server does not allow TLS. Clients retry without negotiation: do not use it to
    /// refuse.
    pub const SSL_NOT_ALLOWED_BY_SERVER: u32 = 0x0000_0002;
    /// The server has no certificate. Clients retry without negotiation: do not use it to
    /// refuse.
    pub const SSL_CERT_NOT_ON_SERVER: u32 = 0x0000_0003;
    /// The requested protocols are inconsistent.
    pub const INCONSISTENT_FLAGS: u32 = 0x0000_0004;
    /// The server requires CredSSP (NLA).
    pub const HYBRID_REQUIRED_BY_SERVER: u32 = 0x0000_0005;
    /// The server requires TLS with user authentication.
    pub const SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER: u32 = 0x0000_0006;
    /// What the gateway answers when it cannot route a client (no host, no broker, bad
    /// request). The spec has no "unavailable" code; this one is final in FreeRDP, rdesktop
    /// and mstsc (none of them retries on it, unlike 2 and 3) and is not mistaken for a
    /// security-policy problem of the host.
    pub const CANNOT_ROUTE: u32 = INCONSISTENT_FLAGS;
}

/// The cookie or routing token of a Connection Request (MS-RDPBCGR 2.2.1.1: `routingToken`
/// or `cookie`, one line ending in CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cookie {
    /// `Cookie: mstshash=NAME`: the user name as the client typed it, possibly truncated
    /// (mstsc keeps 9 characters). Decoded as UTF-8, else byte-per-char (ANSI).
    User(String),
    /// `Cookie: msts=IP.PORT.0000`: a load balancer's routing token (a host where the user
    /// has a session). IP is the address as a little-endian u32 in decimal, PORT the port
    /// byte-swapped in decimal.
    RoutingToken {
        /// The host address the token names.
        addr: Ipv4Addr,
        /// The host port the token names.
        port: u16,
    },
    /// Any other token line (e.g. `tsv://MS Terminal Services Plugin.1.<collection>`), without
    /// its CRLF; ignored for routing.
    OtherToken(String),
}

/// A complete, well-formed Connection Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRequest {
    /// The cookie or routing token, if the client sent one.
    pub cookie: Option<Cookie>,
    /// `requestedProtocols` of RDP_NEG_REQ (MS-RDPBCGR 2.2.1.1.1), if present: 0 = standard
    /// RDP security, bit 0 TLS, bit 1 CredSSP, bit 3 RDSTLS, ...
    pub requested_protocols: Option<u32>,
    /// Length of the whole request (the TPKT length): the bytes to forward unchanged.
    pub len: usize,
}

/// Why a Connection Request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum X224Error {
    /// The first bytes are not a TPKT header (version 3, reserved 0).
    NotTpkt,
    /// The TPKT length is under 11 bytes, or the X.224 length indicator does not match it.
    BadLength(usize),
    /// The TPKT length is over [`MAX_CONNECTION_REQUEST`].
    TooLong(usize),
    /// The TPDU code is not Connection Request (0xE0, CDT 0); the byte found.
    NotConnectionRequest(u8),
    /// The class option is not class 0; the byte found.
    NotClassZero(u8),
    /// The cookie or routing-token line is malformed.
    BadCookie(&'static str),
    /// RDP_NEG_REQ is present but malformed.
    BadNegotiation(&'static str),
}

/// The outcome of [`parse_connection_request`] on the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum X224Parse {
    /// Every byte so far is consistent; read more (within the listener's time bound).
    Incomplete,
    /// The request is complete: route it, then forward `len` bytes unchanged.
    Complete(ConnectionRequest),
    /// Refuse: answer [`negotiation_failure`] where it makes sense, log, close.
    Invalid(X224Error),
}

/// Reads a Connection Request from the start of `buf`. Fixed fields are checked as soon as
/// they arrive, so a bad first byte is refused at once and a valid prefix is always
/// `Incomplete`. Bytes after the TPKT length are not looked at.
pub fn parse_connection_request(buf: &[u8]) -> X224Parse {
    match parse(buf) {
        Ok(Some(request)) => X224Parse::Complete(request),
        Ok(None) => X224Parse::Incomplete,
        Err(e) => X224Parse::Invalid(e),
    }
}

/// An X.224 Connection Confirm carrying RDP_NEG_FAILURE with `code` (MS-RDPBCGR 2.2.1.2,
/// 2.2.1.2.2; see [`failure_code`]): what the gateway answers before closing an RDP client
/// it cannot route, so the client shows an error instead of a bare reset.
pub fn negotiation_failure(code: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(19);
    // RFC 1006 §6 TPKT: version 3, reserved, length 19 (big endian).
    out.extend_from_slice(&[0x03, 0x00, 0x00, 19]);
    // X.224 §13.4 CC: LI 14, CC code 0xD0, DST-REF 0, SRC-REF 0, class 0.
    out.extend_from_slice(&[14, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x00]);
    // MS-RDPBCGR 2.2.1.2.2 RDP_NEG_FAILURE: type 3, flags 0, length 8 (LE), failureCode (LE).
    out.extend_from_slice(&[0x03, 0x00, 0x08, 0x00]);
    out.extend_from_slice(&code.to_le_bytes());
    out
}

impl X224Error {
    /// A stable snake_case reason for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotTpkt => "not_tpkt",
            Self::BadLength(_) => "bad_length",
            Self::TooLong(_) => "too_long",
            Self::NotConnectionRequest(_) => "not_connection_request",
            Self::NotClassZero(_) => "not_class_zero",
            Self::BadCookie(_) => "bad_cookie",
            Self::BadNegotiation(_) => "bad_negotiation",
        }
    }
}

impl fmt::Display for X224Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTpkt => f.write_str("not a TPKT header"),
            Self::BadLength(len) => write!(f, "inconsistent X.224 request length {len}"),
            Self::TooLong(len) => write!(
                f,
                "X.224 request of {len} bytes is over the {MAX_CONNECTION_REQUEST}-byte bound"
            ),
            Self::NotConnectionRequest(code) => {
                write!(f, "X.224 TPDU code {code:#04x} is not a Connection Request")
            }
            Self::NotClassZero(class) => write!(f, "X.224 class option {class:#04x} is not class 0"),
            Self::BadCookie(why) => write!(f, "bad X.224 cookie: {why}"),
            Self::BadNegotiation(why) => write!(f, "bad RDP_NEG_REQ: {why}"),
        }
    }
}

impl std::error::Error for X224Error {}

// Offsets in the request (RFC 1006 §6, X.224 §13.3.1).
const TPKT_LEN_END: usize = 4;
const LI_AT: usize = 4;
const CODE_AT: usize = 5;
const CLASS_AT: usize = 10;
/// X.224 §13.3: CR code 1110 with CDT 0000 (class 0 uses no credit).
const CR_CODE: u8 = 0xe0;
/// MS-RDPBCGR 2.2.1.1.1 RDP_NEG_REQ type and length.
const TYPE_RDP_NEG_REQ: u8 = 0x01;
const RDP_NEG_REQ_LEN: usize = 8;

/// `Ok(None)`: consistent so far, incomplete.
fn parse(buf: &[u8]) -> Result<Option<ConnectionRequest>, X224Error> {
    // RFC 1006 §6: vrsn 3, reserved 0.
    if buf.first().is_some_and(|&b| b != 0x03) || buf.get(1).is_some_and(|&b| b != 0x00) {
        return Err(X224Error::NotTpkt);
    }
    let Some(len_bytes) = buf.get(2..TPKT_LEN_END) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    if len < MIN_CONNECTION_REQUEST {
        return Err(X224Error::BadLength(len));
    }
    if len > MAX_CONNECTION_REQUEST {
        return Err(X224Error::TooLong(len));
    }
    // X.224 §13.2.1: LI counts the TPDU header after itself; RDP puts nothing after the
    // header (the cookie and RDP_NEG_REQ are its variable part), so LI = TPKT length - 5.
    // LI is one byte: clients write that value truncated to 8 bits when a long cookie makes
    // the request longer than 260 bytes, so compare modulo 256.
    if let Some(&li) = buf.get(LI_AT) {
        if li != ((len - 5) & 0xff) as u8 {
            return Err(X224Error::BadLength(len));
        }
    }
    if let Some(&code) = buf.get(CODE_AT) {
        if code != CR_CODE {
            return Err(X224Error::NotConnectionRequest(code));
        }
    }
    // DST-REF (2 bytes) and SRC-REF (2 bytes) take any value. X.224 §13.3.3: class in the
    // high nibble.
    if let Some(&class) = buf.get(CLASS_AT) {
        if class >> 4 != 0 {
            return Err(X224Error::NotClassZero(class));
        }
    }
    let Some(request) = buf.get(..len) else {
        return Ok(None);
    };
    let (cookie, rest) = parse_cookie(&request[MIN_CONNECTION_REQUEST..])?;
    let requested_protocols = parse_negotiation(rest)?;
    Ok(Some(ConnectionRequest {
        cookie,
        requested_protocols,
        len,
    }))
}

/// MS-RDPBCGR 2.2.1.1: an optional routingToken or cookie line, ending in CRLF, opens the
/// variable part. It starts with printable ASCII; RDP_NEG_REQ starts with 0x01.
fn parse_cookie(variable: &[u8]) -> Result<(Option<Cookie>, &[u8]), X224Error> {
    match variable.first() {
        Some(b) if (0x20..0x7f).contains(b) => {}
        _ => return Ok((None, variable)),
    }
    let Some(end) = variable.windows(2).position(|w| w == b"\r\n") else {
        return Err(X224Error::BadCookie("no CRLF before the end of the request"));
    };
    let line = &variable[..end];
    let rest = &variable[end + 2..];
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(X224Error::BadCookie("control character"));
    }
    let cookie = if let Some(name) = line.strip_prefix(b"Cookie: mstshash=") {
        if name.is_empty() {
            // An empty hint is no hint: balance as if there were no cookie.
            None
        } else if name.len() > MAX_COOKIE_USER_BYTES {
            return Err(X224Error::BadCookie("user name too long"));
        } else {
            let user = ansi_text(name);
            // The bytes had no C0 control; UTF-8 can still spell a C1 one (U+0085), which
            // the broker refuses in a hint: refuse it here, under this reason.
            if user.chars().any(char::is_control) {
                return Err(X224Error::BadCookie("control character"));
            }
            Some(Cookie::User(user))
        }
    } else if let Some(token) = line.strip_prefix(b"Cookie: msts=") {
        let (addr, port) = decode_msts(token).ok_or(X224Error::BadCookie("malformed msts routing token"))?;
        Some(Cookie::RoutingToken { addr, port })
    } else {
        Some(Cookie::OtherToken(ansi_text(line)))
    };
    Ok((cookie, rest))
}

/// Decodes `IP.PORT.0000` (wire-notes; MS-RDPBCGR 2.2.1.1 routingToken as Windows load
/// balancers write it): IP is the IPv4 address as a little-endian u32 in decimal, PORT the
/// port with its bytes swapped, in decimal; the last field is four decimal digits (`0000`).
fn decode_msts(token: &[u8]) -> Option<(Ipv4Addr, u16)> {
    let text = std::str::from_utf8(token).ok()?;
    let mut fields = text.split('.');
    let ip = decimal::<u32>(fields.next()?)?;
    let port = decimal::<u16>(fields.next()?)?;
    let tail = fields.next()?;
    if fields.next().is_some() || tail.len() != 4 || !tail.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Ipv4Addr::from(ip.to_le_bytes()), port.swap_bytes()))
}

/// A plain decimal number: digits only (no sign, no spaces), 1 to 10 of them.
fn decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Cookie text: UTF-8 when it is, else Windows-1252, the commonest ANSI code page (the
/// client's own is unknown). Latin-1 alone would turn 0x80-0x9F (Š, ž, œ, € ...) into control
/// characters, which the broker refuses in a user name; the five bytes 1252 leaves undefined
/// become U+FFFD. The text is cut at a character boundary to [`MAX_COOKIE_USER_BYTES`], as
/// widening can pass it: a hint, like mstsc's own truncated one.
fn ansi_text(bytes: &[u8]) -> String {
    let mut text = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => bytes.iter().map(|&b| windows_1252(b)).collect(),
    };
    if text.len() > MAX_COOKIE_USER_BYTES {
        let mut end = MAX_COOKIE_USER_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// One byte of Windows-1252 as a char.
fn windows_1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{fffd}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{fffd}', 'Ž', '\u{fffd}',
        '\u{fffd}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{fffd}', 'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9f => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

/// MS-RDPBCGR 2.2.1.1.1 RDP_NEG_REQ: type 1, flags, length 8 (LE), requestedProtocols (LE).
/// What follows it (RDP_NEG_CORRELATION_INFO, 2.2.1.1.2) is forwarded without a look.
fn parse_negotiation(rest: &[u8]) -> Result<Option<u32>, X224Error> {
    if rest.first() != Some(&TYPE_RDP_NEG_REQ) {
        return Ok(None);
    }
    let Some(req) = rest.get(..RDP_NEG_REQ_LEN) else {
        return Err(X224Error::BadNegotiation("truncated"));
    };
    if usize::from(u16::from_le_bytes([req[2], req[3]])) != RDP_NEG_REQ_LEN {
        return Err(X224Error::BadNegotiation("length is not 8"));
    }
    Ok(Some(u32::from_le_bytes([req[4], req[5], req[6], req[7]])))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Builds a request around a variable part, with consistent TPKT length and LI.
    fn request(variable: &[u8]) -> Vec<u8> {
        let len = MIN_CONNECTION_REQUEST + variable.len();
        let mut out = vec![0x03, 0x00];
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&[(len - 5) as u8, 0xe0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(variable);
        out
    }

    const NEG_REQ_TLS_HYBRID: [u8; 8] = [0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x00, 0x00];

    /// The FreeRDP 2.11.7 -> xrdp capture from wire-notes.
    fn freerdp_capture() -> Vec<u8> {
        let mut v = vec![0x03, 0x00, 0x00, 0x2d, 0x28, 0xe0, 0x00, 0x00, 0x00, 0x00, 0x00];
        v.extend_from_slice(b"Cookie: mstshash=rdptest\r\n");
        v.extend_from_slice(&NEG_REQ_TLS_HYBRID);
        v
    }

    fn complete(buf: &[u8]) -> ConnectionRequest {
        match parse_connection_request(buf) {
            X224Parse::Complete(r) => r,
            other => panic!("expected Complete, got {other:?}"),
        }
    }

    fn invalid(buf: &[u8]) -> X224Error {
        match parse_connection_request(buf) {
            X224Parse::Invalid(e) => e,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    /// Every strict prefix of a valid request is Incomplete.
    fn assert_prefixes_incomplete(buf: &[u8]) {
        for cut in 0..buf.len() {
            assert_eq!(
                parse_connection_request(&buf[..cut]),
                X224Parse::Incomplete,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn freerdp_capture_parses() {
        let capture = freerdp_capture();
        assert_eq!(capture.len(), 45);
        let r = complete(&capture);
        assert_eq!(r.cookie, Some(Cookie::User("rdptest".into())));
        assert_eq!(r.requested_protocols, Some(3));
        assert_eq!(r.len, 45);
        assert_prefixes_incomplete(&capture);
        // Trailing bytes (beyond the TPKT length) are not part of the request.
        let mut more = capture.clone();
        more.extend_from_slice(b"\x03\x00garbage");
        assert_eq!(complete(&more).len, 45);
    }

    #[test]
    fn truncated_user_names_are_kept_as_sent() {
        // mstsc truncates mstshash to 9 characters; the hint stays as the client sent it.
        let mut v = b"Cookie: mstshash=administ\r\n".to_vec();
        v.extend_from_slice(&NEG_REQ_TLS_HYBRID);
        assert_eq!(
            complete(&request(&v)).cookie,
            Some(Cookie::User("administ".into()))
        );
    }

    #[test]
    fn ansi_user_names_read_as_windows_1252_within_the_broker_bound() {
        let user = |name: &[u8]| {
            let mut v = b"Cookie: mstshash=".to_vec();
            v.extend_from_slice(name);
            v.extend_from_slice(b"\r\n");
            match complete(&request(&v)).cookie {
                Some(Cookie::User(u)) => u,
                other => panic!("{other:?}"),
            }
        };
        // Š and ž are 0x8A and 0x9E: C1 control characters if read as Latin-1.
        assert_eq!(user(b"\x8aimon"), "Šimon");
        assert_eq!(user(b"\x9eiga"), "žiga");
        assert_eq!(user(b"Ren\xe9"), "René");
        assert_eq!(user(b"a\x81b"), "a\u{fffd}b");
        // 200 bytes that widen to 400 in UTF-8: cut to the broker's 255 on a char boundary.
        let long = user(&[0xe9; 200]);
        assert_eq!(long, "é".repeat(127));
    }

    #[test]
    fn mstshash_cut_before_its_crlf_is_bad_cookie() {
        // The TPKT length ends inside the cookie line: no CRLF in the request.
        for cookie in [
            &b"Cookie: mstshash=rdpt"[..],
            b"Cookie: mstshash=rdptest\r",
            b"Cookie: msts",
        ] {
            assert_eq!(
                invalid(&request(cookie)),
                X224Error::BadCookie("no CRLF before the end of the request")
            );
        }
    }

    #[test]
    fn no_cookie_and_no_negotiation() {
        // Legacy clients: the bare 11-byte request.
        let r = complete(&request(&[]));
        assert_eq!((r.cookie, r.requested_protocols, r.len), (None, None, 11));
        let r = complete(&request(&NEG_REQ_TLS_HYBRID));
        assert_eq!((r.cookie, r.requested_protocols), (None, Some(3)));
        assert_prefixes_incomplete(&request(&NEG_REQ_TLS_HYBRID));
    }

    #[test]
    fn correlation_info_after_neg_req() {
        // mstsc: cookie, RDP_NEG_REQ, RDP_NEG_CORRELATION_INFO (type 6, 36 bytes).
        let mut v = b"Cookie: mstshash=alice\r\n".to_vec();
        v.extend_from_slice(&[0x01, 0x08, 0x08, 0x00, 0x0b, 0x00, 0x00, 0x00]);
        v.extend_from_slice(&[0x06, 0x00, 0x24, 0x00]);
        v.extend_from_slice(&[0xab; 32]);
        let buf = request(&v);
        let r = complete(&buf);
        assert_eq!(r.cookie, Some(Cookie::User("alice".into())));
        assert_eq!(r.requested_protocols, Some(0x0b));
        assert_eq!(r.len, buf.len());
        assert_prefixes_incomplete(&buf);
    }

    #[test]
    fn msts_routing_token_known_vector() {
        // wire-notes: 3640205228 = 0xD8F91FAC -> LE bytes AC 1F F9 D8 = 172.31.249.216;
        // 15629 = 0x3D0D -> swapped 0x0D3D = 3389.
        let mut v = b"Cookie: msts=3640205228.15629.0000\r\n".to_vec();
        v.extend_from_slice(&NEG_REQ_TLS_HYBRID);
        let r = complete(&request(&v));
        assert_eq!(
            r.cookie,
            Some(Cookie::RoutingToken {
                addr: Ipv4Addr::new(172, 31, 249, 216),
                port: 3389
            })
        );
    }

    #[test]
    fn msts_encode_decode_round_trip() {
        for (addr, port) in [
            (Ipv4Addr::new(10, 0, 0, 5), 3389u16),
            (Ipv4Addr::new(127, 0, 0, 1), 40000),
            (Ipv4Addr::new(255, 255, 255, 255), 1),
        ] {
            let token = format!("{}.{}.0000", u32::from_le_bytes(addr.octets()), port.swap_bytes());
            assert_eq!(decode_msts(token.as_bytes()), Some((addr, port)), "{token}");
        }
    }

    #[test]
    fn malformed_msts_tokens() {
        for token in [
            "",
            "1.2",
            "1.2.3",
            "1.2.00000",
            "x.3389.0000",
            "4294967296.1.0000",
            "1.65536.0000",
            "1.2.0000.4",
            "+1.2.0000",
            "1..0000",
            " 1.2.0000",
        ] {
            let line = format!("Cookie: msts={token}\r\n");
            assert_eq!(
                invalid(&request(line.as_bytes())),
                X224Error::BadCookie("malformed msts routing token"),
                "{token:?}"
            );
        }
    }

    #[test]
    fn other_tokens_and_odd_cookies() {
        let line = b"tsv://MS Terminal Services Plugin.1.Sessions\r\n";
        assert_eq!(
            complete(&request(line)).cookie,
            Some(Cookie::OtherToken(
                "tsv://MS Terminal Services Plugin.1.Sessions".into()
            ))
        );
        assert_eq!(
            complete(&request(b"Cookie: other=1\r\n")).cookie,
            Some(Cookie::OtherToken("Cookie: other=1".into()))
        );
        assert_eq!(complete(&request(b"Cookie: mstshash=\r\n")).cookie, None);
        // ANSI user names (not UTF-8) stay printable, one char per byte.
        assert_eq!(
            complete(&request(b"Cookie: mstshash=Ren\xe9\r\n")).cookie,
            Some(Cookie::User("René".into()))
        );
        assert_eq!(
            invalid(&request(b"Cookie: mstshash=a\tb\r\n")),
            X224Error::BadCookie("control character")
        );
        // UTF-8 for U+0085 (NEL): no control byte, a control character all the same.
        assert_eq!(
            invalid(&request("Cookie: mstshash=de\u{85}mo\r\n".as_bytes())),
            X224Error::BadCookie("control character")
        );
        let long = format!("Cookie: mstshash={}\r\n", "u".repeat(MAX_COOKIE_USER_BYTES + 1));
        assert_eq!(
            invalid(&request(long.as_bytes())),
            X224Error::BadCookie("user name too long")
        );
        let max = format!("Cookie: mstshash={}\r\n", "u".repeat(MAX_COOKIE_USER_BYTES));
        assert!(matches!(complete(&request(max.as_bytes())).cookie, Some(Cookie::User(u)) if u.len() == 255));
    }

    #[test]
    fn bad_negotiation() {
        assert_eq!(
            invalid(&request(&NEG_REQ_TLS_HYBRID[..7])),
            X224Error::BadNegotiation("truncated")
        );
        let mut wrong_len = NEG_REQ_TLS_HYBRID;
        wrong_len[2] = 9;
        assert_eq!(
            invalid(&request(&wrong_len)),
            X224Error::BadNegotiation("length is not 8")
        );
    }

    #[test]
    fn header_errors_are_found_at_the_first_bad_byte() {
        assert_eq!(invalid(&[0x16]), X224Error::NotTpkt);
        assert_eq!(invalid(&[0x03, 0x01]), X224Error::NotTpkt);
        assert_eq!(invalid(&[0x03, 0x00, 0x00, 0x0a]), X224Error::BadLength(10));
        assert_eq!(invalid(&[0x03, 0x00, 0x00, 0x00]), X224Error::BadLength(0));
        assert_eq!(invalid(&[0x03, 0x00, 0x04, 0x01]), X224Error::TooLong(1025));
        assert_eq!(invalid(&[0x03, 0x00, 0xff, 0xff]), X224Error::TooLong(65535));
        // LI must be TPKT length - 5.
        assert_eq!(invalid(&[0x03, 0x00, 0x00, 0x2d, 0x27]), X224Error::BadLength(45));
        assert_eq!(
            invalid(&[0x03, 0x00, 0x00, 0x2d, 0x28, 0xd0]),
            X224Error::NotConnectionRequest(0xd0)
        );
        assert_eq!(
            invalid(&[0x03, 0x00, 0x00, 0x2d, 0x28, 0xe1]),
            X224Error::NotConnectionRequest(0xe1)
        );
        let mut class2 = freerdp_capture();
        class2[CLASS_AT] = 0x20;
        assert_eq!(invalid(&class2[..11]), X224Error::NotClassZero(0x20));
        // Class 0 with option bits in the low nibble is still class 0.
        let mut opts = freerdp_capture();
        opts[CLASS_AT] = 0x02;
        assert!(matches!(parse_connection_request(&opts), X224Parse::Complete(_)));
    }

    #[test]
    fn bounds() {
        // Exactly MAX_CONNECTION_REQUEST is accepted (an OtherToken fills it).
        let mut line = vec![b'a'; MAX_CONNECTION_REQUEST - MIN_CONNECTION_REQUEST - 2];
        line.extend_from_slice(b"\r\n");
        let buf = request(&line);
        assert_eq!(buf.len(), MAX_CONNECTION_REQUEST);
        assert_eq!(complete(&buf).len, MAX_CONNECTION_REQUEST);
        // One more byte is refused from the header alone.
        assert_eq!(
            invalid(&[0x03, 0x00, 0x04, 0x01]),
            X224Error::TooLong(MAX_CONNECTION_REQUEST + 1)
        );
    }

    #[test]
    fn negotiation_failure_bytes() {
        let bytes = negotiation_failure(failure_code::CANNOT_ROUTE);
        assert_eq!(
            bytes,
            [0x03, 0x00, 0x00, 0x13, 0x0e, 0xd0, 0, 0, 0, 0, 0, 0x03, 0x00, 0x08, 0x00, 0x04, 0, 0, 0]
        );
        // Same frame shape as the server's Connection Confirm captured in wire-notes.
        let confirm = [
            0x03, 0x00, 0x00, 0x13, 0x0e, 0xd0, 0x00, 0x00, 0x12, 0x34, 0x00, 0x02, 0x01, 0x08, 0x00, 0x01,
            0x00, 0x00, 0x00,
        ];
        assert_eq!(bytes.len(), confirm.len());
        assert_eq!(bytes[..6], confirm[..6]);
        assert_eq!(negotiation_failure(0x0102_0304)[15..], [4, 3, 2, 1]);
    }

    #[test]
    fn reasons_are_distinct() {
        let all = [
            X224Error::NotTpkt,
            X224Error::BadLength(1),
            X224Error::TooLong(2000),
            X224Error::NotConnectionRequest(0),
            X224Error::NotClassZero(0x10),
            X224Error::BadCookie("x"),
            X224Error::BadNegotiation("y"),
        ];
        let reasons: std::collections::HashSet<_> = all.iter().map(X224Error::reason).collect();
        assert_eq!(reasons.len(), all.len());
        for e in &all {
            assert!(!e.to_string().is_empty());
        }
    }

    proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = parse_connection_request(&bytes);
        }

        #[test]
        fn user_hints_are_what_the_broker_accepts(name in proptest::collection::vec(0x20u8..=0xff, 1..200)) {
            let mut v = b"Cookie: mstshash=".to_vec();
            v.extend_from_slice(&name);
            v.extend_from_slice(b"\r\n");
            if let X224Parse::Complete(ConnectionRequest { cookie: Some(Cookie::User(u)), .. }) =
                parse_connection_request(&request(&v))
            {
                // control::message's check of a user name: 1..=255 bytes, no control character.
                prop_assert!(!u.is_empty() && u.len() <= MAX_COOKIE_USER_BYTES, "{:?}", u);
                prop_assert!(!u.chars().any(char::is_control), "{:?}", u);
            }
        }

        #[test]
        fn utf8_user_hints_are_what_the_broker_accepts(name in any::<String>()) {
            prop_assume!(!name.is_empty() && !name.contains('\r') && !name.contains('\n'));
            let mut v = b"Cookie: mstshash=".to_vec();
            v.extend_from_slice(name.as_bytes());
            v.extend_from_slice(b"\r\n");
            if let X224Parse::Complete(ConnectionRequest { cookie: Some(Cookie::User(u)), .. }) =
                parse_connection_request(&request(&v))
            {
                prop_assert!(!u.is_empty() && u.len() <= MAX_COOKIE_USER_BYTES, "{:?}", u);
                prop_assert!(!u.chars().any(char::is_control), "{:?}", u);
            }
        }

        #[test]
        fn never_panics_behind_a_valid_header(variable in proptest::collection::vec(any::<u8>(), 0..200)) {
            // A consistent header so the random part reaches the cookie and neg-req code.
            let buf = request(&variable);
            if let X224Parse::Complete(r) = parse_connection_request(&buf) {
                prop_assert_eq!(r.len, buf.len());
                for cut in 0..buf.len() {
                    prop_assert_eq!(parse_connection_request(&buf[..cut]), X224Parse::Incomplete);
                }
            }
        }

        #[test]
        fn user_cookies_round_trip(name in "[A-Za-z0-9._@\\\\-]{1,64}") {
            let line = format!("Cookie: mstshash={name}\r\n");
            let buf = request(line.as_bytes());
            prop_assert_eq!(complete(&buf).cookie, Some(Cookie::User(name)));
        }
    }
}
