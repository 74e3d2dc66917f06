//! A sans-IO reader of the TLS ClientHello, for passthrough listeners that route by server
//! name (SNI) and ALPN without terminating TLS.
//!
//! Owns the byte format of the client's first flight only: the record layer (RFC 8446 §5.1),
//! the handshake header (§4), the ClientHello body (§4.1.2) and the three extensions routing
//! needs: server_name (RFC 6066 §3), ALPN (RFC 7301 §3.1) and supported_versions (RFC 8446
//! §4.2.1). It never decrypts, never answers, never does I/O: the shell feeds [`read`] every
//! byte it has buffered so far (from the first byte of the connection) and, once it gets
//! [`Read::Hello`], forwards the same bytes unchanged to the backend it picked.
//!
//! Bounds: a record holds at most 2^14 bytes (§5.1), the ClientHello message at most
//! [`MAX_HELLO_LEN`], spread over at most [`MAX_RECORDS`] records, so the shell never buffers
//! more than [`MAX_BUFFERED`] bytes for a hello. The time bound (a slow client) is the
//! shell's handshake timeout.
//!
//! Validation is incremental: each record header is checked as soon as its 5 bytes are in,
//! the handshake header as soon as its 4 bytes are, so garbage is refused early and every
//! prefix of a valid hello is [`Read::Incomplete`], never an error.

use std::fmt;

/// Record content type of handshake records (RFC 8446 §5.1, `ContentType.handshake`).
pub const CONTENT_TYPE_HANDSHAKE: u8 = 22;

/// Handshake message type of a ClientHello (RFC 8446 §4, `HandshakeType.client_hello`).
pub const HANDSHAKE_CLIENT_HELLO: u8 = 1;

/// Length of a record header: type, legacy version, length (RFC 8446 §5.1).
pub const RECORD_HEADER_LEN: usize = 5;

/// Largest record payload a peer may send in plaintext (RFC 8446 §5.1: 2^14).
pub const MAX_RECORD_PAYLOAD: usize = 16_384;

/// Largest ClientHello message accepted, its 4-byte handshake header included. Real hellos
/// are 200-2,000 bytes (a post-quantum key share adds about 1,200); 16 KiB leaves room for
/// large padding and ticket extensions while bounding what a connection may make us buffer.
pub const MAX_HELLO_LEN: usize = 16_384;

/// Most records a ClientHello may be split over. Clients split a hello only when it exceeds
/// one record; a hello cut into many tiny records is an attack on the reassembly bound.
pub const MAX_RECORDS: usize = 8;

/// Most bytes the shell has to buffer before [`read`] answers with a hello or an error:
/// the largest hello, plus one record header per record it may be split over.
pub const MAX_BUFFERED: usize = MAX_HELLO_LEN + MAX_RECORDS * RECORD_HEADER_LEN;

/// Extension types read here (IANA "TLS ExtensionType Values").
mod ext {
    /// RFC 6066 §3.
    pub const SERVER_NAME: u16 = 0;
    /// RFC 7301 §3.1.
    pub const ALPN: u16 = 16;
    /// RFC 8446 §4.2.1.
    pub const SUPPORTED_VERSIONS: u16 = 43;
}

/// Longest DNS name (RFC 1035 §2.3.4: 255 octets on the wire, 253 as text).
const MAX_HOST_NAME_LEN: usize = 253;

/// What [`read`] made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// Every byte so far is consistent with a ClientHello; read more. The hello cannot be
    /// complete before the buffer (counted from the first byte of the connection) holds
    /// `needed` bytes, which is always more than it holds now; an error may show earlier.
    Incomplete {
        /// Lower bound on the total buffer length of a complete hello.
        needed: usize,
    },
    /// A whole ClientHello.
    Hello(ClientHello),
}

/// The parts of a ClientHello that routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, lower-cased (DNS names compare
    /// case-insensitively); `None` when the client sent no server_name.
    pub server_name: Option<String>,
    /// ALPN protocol names in the client's order of preference; empty without ALPN.
    pub alpn: Vec<Vec<u8>>,
    /// `legacy_version` of the hello body (0x0303 for TLS 1.2 and 1.3 clients).
    pub legacy_version: u16,
    /// The supported_versions extension in the client's order, GREASE values included;
    /// empty when absent (a client that offers TLS 1.2 or older only).
    pub supported_versions: Vec<u16>,
    /// Whether the client's most preferred cipher suite (GREASE skipped) is a
    /// ChaCha20-Poly1305 one: a client without AES instructions says so this way.
    pub prefers_chacha20: bool,
    /// How many bytes from the start of the buffer the records carrying the hello take.
    /// The shell forwards them (and anything after) unchanged.
    pub wire_len: usize,
}

impl ClientHello {
    /// Whether the client offers TLS 1.3 (RFC 8446 §4.2.1: only through supported_versions).
    pub fn offers_tls13(&self) -> bool {
        self.supported_versions.contains(&0x0304)
    }
}

/// Why the first bytes of a connection are not an acceptable ClientHello. Each variant has a
/// stable [`HelloError::reason`] for logs and metric labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// The first byte is not a TLS handshake record: plain bytes (HTTP, RDP) or SSLv2.
    NotTls {
        /// The first byte received.
        first_byte: u8,
    },
    /// A later record is not a handshake record (an alert or data before the hello ended).
    UnexpectedRecord {
        /// Its content type.
        content_type: u8,
    },
    /// The record header's version is not 3.x (RFC 8446 §5.1 `legacy_record_version`).
    BadRecordVersion {
        /// The version found.
        version: u16,
    },
    /// A record longer than 2^14 bytes (RFC 8446 §5.1).
    RecordTooLarge {
        /// The length announced.
        len: usize,
    },
    /// A zero-length handshake record (RFC 8446 §5.1 forbids them).
    EmptyRecord,
    /// The first handshake message is not a ClientHello.
    NotClientHello {
        /// The handshake type found.
        msg_type: u8,
    },
    /// The ClientHello announces more than [`MAX_HELLO_LEN`] bytes.
    HelloTooLarge {
        /// Its announced length, header included.
        len: usize,
    },
    /// The ClientHello is split over more than [`MAX_RECORDS`] records.
    TooFragmented,
    /// The hello body breaks its own length fields.
    Malformed {
        /// Which field.
        field: &'static str,
    },
    /// An extension breaks its own length fields or its RFC's rules.
    MalformedExtension {
        /// The extension type.
        ext_type: u16,
        /// What is wrong.
        problem: &'static str,
    },
    /// The same extension twice (RFC 8446 §4.2: "MUST NOT be more than one").
    DuplicateExtension {
        /// The extension type.
        ext_type: u16,
    },
    /// The server_name is not a DNS host name (RFC 6066 §3: ASCII, no trailing dot).
    BadServerName,
}

impl HelloError {
    /// A stable, lower-case identifier for logs and metric labels; never changes once
    /// released.
    pub fn reason(&self) -> &'static str {
        match self {
            HelloError::NotTls { .. } => "not_tls",
            HelloError::UnexpectedRecord { .. } => "unexpected_record",
            HelloError::BadRecordVersion { .. } => "bad_record_version",
            HelloError::RecordTooLarge { .. } => "record_too_large",
            HelloError::EmptyRecord => "empty_record",
            HelloError::NotClientHello { .. } => "not_client_hello",
            HelloError::HelloTooLarge { .. } => "hello_too_large",
            HelloError::TooFragmented => "hello_too_fragmented",
            HelloError::Malformed { .. } => "malformed_hello",
            HelloError::MalformedExtension { .. } => "malformed_extension",
            HelloError::DuplicateExtension { .. } => "duplicate_extension",
            HelloError::BadServerName => "bad_server_name",
        }
    }
}

impl fmt::Display for HelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HelloError::NotTls { first_byte } => {
                write!(f, "not a TLS handshake (first byte 0x{first_byte:02x})")
            }
            HelloError::UnexpectedRecord { content_type } => {
                write!(f, "record of type {content_type} before the ClientHello ended")
            }
            HelloError::BadRecordVersion { version } => write!(f, "record version 0x{version:04x}"),
            HelloError::RecordTooLarge { len } => {
                write!(f, "record of {len} bytes (limit {MAX_RECORD_PAYLOAD})")
            }
            HelloError::EmptyRecord => write!(f, "empty handshake record"),
            HelloError::NotClientHello { msg_type } => {
                write!(f, "first handshake message has type {msg_type}, not ClientHello")
            }
            HelloError::HelloTooLarge { len } => {
                write!(f, "ClientHello of {len} bytes (limit {MAX_HELLO_LEN})")
            }
            HelloError::TooFragmented => {
                write!(f, "ClientHello split over more than {MAX_RECORDS} records")
            }
            HelloError::Malformed { field } => write!(f, "malformed ClientHello: {field}"),
            HelloError::MalformedExtension { ext_type, problem } => {
                write!(f, "malformed extension {ext_type}: {problem}")
            }
            HelloError::DuplicateExtension { ext_type } => write!(f, "extension {ext_type} sent twice"),
            HelloError::BadServerName => write!(f, "server_name is not a DNS host name"),
        }
    }
}

impl std::error::Error for HelloError {}

/// Reads a ClientHello from the first bytes of a connection. Called by the shell each time
/// more bytes arrive, with everything buffered so far; stateless, so a retry costs one
/// re-parse of at most [`MAX_BUFFERED`] bytes.
pub fn read(buf: &[u8]) -> Result<Read, HelloError> {
    let mut handshake: Vec<u8> = Vec::new();
    let mut hello_len = None;
    let mut pos = 0;
    let mut records = 0;
    loop {
        // The record header, checked byte by byte so a wrong first byte is refused at once.
        let header = &buf[pos.min(buf.len())..buf.len().min(pos + RECORD_HEADER_LEN)];
        if let Some(&content_type) = header.first() {
            if content_type != CONTENT_TYPE_HANDSHAKE {
                return Err(if records == 0 {
                    HelloError::NotTls {
                        first_byte: content_type,
                    }
                } else {
                    HelloError::UnexpectedRecord { content_type }
                });
            }
        }
        if let Some(&major) = header.get(1) {
            // RFC 8446 §5.1: legacy_record_version; any 3.x is seen in the wild (3.1 mostly).
            if major != 3 {
                let minor = header.get(2).copied().unwrap_or(0);
                return Err(HelloError::BadRecordVersion {
                    version: u16::from_be_bytes([major, minor]),
                });
            }
        }
        if header.len() < RECORD_HEADER_LEN {
            return Ok(Read::Incomplete {
                needed: pos + RECORD_HEADER_LEN + still_to_come(handshake.len(), hello_len),
            });
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_RECORD_PAYLOAD {
            return Err(HelloError::RecordTooLarge { len });
        }
        if len == 0 {
            return Err(HelloError::EmptyRecord);
        }
        if records == MAX_RECORDS {
            return Err(HelloError::TooFragmented);
        }
        records += 1;
        let start = pos + RECORD_HEADER_LEN;
        let end = start + len;
        let available = &buf[start..buf.len().min(end)];
        // Look at the handshake header as soon as its bytes are in, even in a partial record.
        if hello_len.is_none() {
            let mut head = handshake.clone();
            head.extend(available.iter().take(4 - head.len()));
            hello_len = check_handshake_header(&head)?;
        }
        if hello_len.is_some_and(|hello_len| handshake.len() + len > hello_len) {
            // The client's next message is under new keys (RFC 8446 §5.1: handshake messages
            // must not span key changes), so nothing may share a record with the hello. This
            // also keeps what the shell buffers within MAX_BUFFERED.
            return Err(HelloError::Malformed {
                field: "record longer than the ClientHello",
            });
        }
        if available.len() < len {
            let after_record = still_to_come(handshake.len() + len, hello_len);
            let next_record = if after_record > 0 {
                RECORD_HEADER_LEN + after_record
            } else {
                0
            };
            return Ok(Read::Incomplete {
                needed: end + next_record,
            });
        }
        handshake.extend_from_slice(available);
        pos = end;
        if let Some(hello_len) = hello_len {
            if handshake.len() == hello_len {
                let mut hello = parse_body(&handshake[4..hello_len])?;
                hello.wire_len = pos;
                return Ok(Read::Hello(hello));
            }
        }
    }
}

/// How many handshake bytes at least are still to come when `have` are in.
fn still_to_come(have: usize, hello_len: Option<usize>) -> usize {
    match hello_len {
        Some(len) => len.saturating_sub(have),
        None => 4usize.saturating_sub(have),
    }
}

/// Checks the 4-byte handshake header (RFC 8446 §4) once its bytes are known; returns the
/// message length header included, or `None` while fewer than 4 bytes are in.
fn check_handshake_header(bytes: &[u8]) -> Result<Option<usize>, HelloError> {
    if let Some(&msg_type) = bytes.first() {
        if msg_type != HANDSHAKE_CLIENT_HELLO {
            return Err(HelloError::NotClientHello { msg_type });
        }
    }
    if bytes.len() < 4 {
        return Ok(None);
    }
    let len = 4 + ((usize::from(bytes[1]) << 16) | (usize::from(bytes[2]) << 8) | usize::from(bytes[3]));
    if len > MAX_HELLO_LEN {
        return Err(HelloError::HelloTooLarge { len });
    }
    Ok(Some(len))
}

/// Parses the ClientHello body (RFC 8446 §4.1.2; RFC 5246 §7.4.1.2 for hellos without
/// extensions).
fn parse_body(body: &[u8]) -> Result<ClientHello, HelloError> {
    let malformed = |field| HelloError::Malformed { field };
    let mut r = Cursor::new(body);
    let legacy_version = r.u16().ok_or(malformed("legacy_version"))?;
    r.take(32).ok_or(malformed("random"))?;
    let session_id = r.vec8().ok_or(malformed("legacy_session_id"))?;
    if session_id.len() > 32 {
        return Err(malformed("legacy_session_id"));
    }
    let suites = r.vec16().ok_or(malformed("cipher_suites"))?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(malformed("cipher_suites"));
    }
    let compression = r.vec8().ok_or(malformed("legacy_compression_methods"))?;
    if compression.is_empty() {
        return Err(malformed("legacy_compression_methods"));
    }
    let mut hello = ClientHello {
        server_name: None,
        alpn: Vec::new(),
        legacy_version,
        supported_versions: Vec::new(),
        prefers_chacha20: leads_with_chacha20(suites),
        wire_len: 0,
    };
    if r.is_empty() {
        // RFC 5246 §7.4.1.2: a hello may end after the compression methods.
        return Ok(hello);
    }
    let extensions = r.vec16().ok_or(malformed("extensions"))?;
    if !r.is_empty() {
        return Err(malformed("bytes after the extensions"));
    }
    let mut r = Cursor::new(extensions);
    let (mut seen_sni, mut seen_alpn, mut seen_versions) = (false, false, false);
    while !r.is_empty() {
        let ext_type = r.u16().ok_or(malformed("extension header"))?;
        let data = r.vec16().ok_or(malformed("extension length"))?;
        let seen = match ext_type {
            ext::SERVER_NAME => &mut seen_sni,
            ext::ALPN => &mut seen_alpn,
            ext::SUPPORTED_VERSIONS => &mut seen_versions,
            _ => continue,
        };
        if std::mem::replace(seen, true) {
            return Err(HelloError::DuplicateExtension { ext_type });
        }
        match ext_type {
            ext::SERVER_NAME => hello.server_name = parse_server_name(data)?,
            ext::ALPN => hello.alpn = parse_alpn(data)?,
            _ => hello.supported_versions = parse_supported_versions(data)?,
        }
    }
    Ok(hello)
}

/// Whether the first cipher suite that is not a GREASE value (RFC 8701 §2: `0x?A?A`) is
/// TLS_CHACHA20_POLY1305_SHA256 (RFC 8446 §B.4) or an ECDHE ChaCha20 suite of TLS 1.2
/// (RFC 7905 §2: 0xCCA8-0xCCAE).
fn leads_with_chacha20(suites: &[u8]) -> bool {
    suites
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .find(|&s| !(s & 0x0f0f == 0x0a0a && s >> 8 == s & 0xff))
        .is_some_and(|s| s == 0x1303 || (0xcca8..=0xccae).contains(&s))
}

/// RFC 6066 §3: `ServerName server_name_list<1..2^16-1>`, at most one `host_name` (type 0).
fn parse_server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let bad = |problem| HelloError::MalformedExtension {
        ext_type: ext::SERVER_NAME,
        problem,
    };
    let mut r = Cursor::new(data);
    let list = r.vec16().ok_or(bad("list length"))?;
    if !r.is_empty() {
        return Err(bad("bytes after the list"));
    }
    if list.is_empty() {
        // RFC 6066 §3: a server MAY send an empty server_name, a client never an empty list.
        return Err(bad("empty list"));
    }
    let mut r = Cursor::new(list);
    let mut host = None;
    while !r.is_empty() {
        let name_type = r.u8().ok_or(bad("name type"))?;
        let name = r.vec16().ok_or(bad("name length"))?;
        if name_type != 0 {
            // Unknown name types are skipped; no other type is defined.
            continue;
        }
        if host.is_some() {
            return Err(bad("two host names"));
        }
        host = Some(host_name(name)?);
    }
    Ok(host)
}

/// A `HostName` as routing uses it: ASCII letters, digits, `-`, `_` and `.` labels, no empty
/// label (so no trailing dot, RFC 6066 §3), at most 253 bytes, lower-cased.
fn host_name(name: &[u8]) -> Result<String, HelloError> {
    let valid_chars = name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    let valid_labels = name
        .split(|&b| b == b'.')
        .all(|label| !label.is_empty() && label.len() <= 63);
    if name.is_empty() || name.len() > MAX_HOST_NAME_LEN || !valid_chars || !valid_labels {
        return Err(HelloError::BadServerName);
    }
    // Every byte is ASCII (checked above), so this is valid UTF-8.
    Ok(name.iter().map(|&b| char::from(b.to_ascii_lowercase())).collect())
}

/// RFC 7301 §3.1: `ProtocolName protocol_name_list<2..2^16-1>`, each name `<1..2^8-1>`.
fn parse_alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, HelloError> {
    let bad = |problem| HelloError::MalformedExtension {
        ext_type: ext::ALPN,
        problem,
    };
    let mut r = Cursor::new(data);
    let list = r.vec16().ok_or(bad("list length"))?;
    if !r.is_empty() {
        return Err(bad("bytes after the list"));
    }
    if list.is_empty() {
        return Err(bad("empty list"));
    }
    let mut r = Cursor::new(list);
    let mut names = Vec::new();
    while !r.is_empty() {
        let name = r.vec8().ok_or(bad("name length"))?;
        if name.is_empty() {
            return Err(bad("empty protocol name"));
        }
        names.push(name.to_vec());
    }
    Ok(names)
}

/// RFC 8446 §4.2.1: in a ClientHello, `ProtocolVersion versions<2..254>`.
fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, HelloError> {
    let bad = |problem| HelloError::MalformedExtension {
        ext_type: ext::SUPPORTED_VERSIONS,
        problem,
    };
    let mut r = Cursor::new(data);
    let list = r.vec8().ok_or(bad("list length"))?;
    if !r.is_empty() {
        return Err(bad("bytes after the list"));
    }
    if list.len() < 2 || list.len() % 2 != 0 {
        return Err(bad("list length"));
    }
    Ok(list
        .chunks_exact(2)
        .map(|v| u16::from_be_bytes([v[0], v[1]]))
        .collect())
}

/// A bounds-checked reader over a byte slice; every read returns `None` past the end.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
#[path = "client_hello_tests.rs"]
mod tests;
