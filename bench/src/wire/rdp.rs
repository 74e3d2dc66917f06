//! The RDP-like wire format spoken between the `rdp-profile` scenario and the Rdp stand-in.
//!
//! Owns: the X.224 Connection Request parser and Connection Confirm builder (the real first
//! bytes of an RDP session, so a proxy that inspects them sees a genuine request), and the
//! framing of the simplified exchange that follows (input events up, screen updates down).
//! It does no I/O; the stand-in and the scenario move the bytes. The framing is described for
//! users in `standin.rs`.

use std::fmt;

/// TPKT version byte (RFC 1006 §6: version 3).
pub const TPKT_VERSION: u8 = 3;
/// Largest Connection Request accepted. Real ones are 19-100 bytes (cookie + RDP_NEG_REQ +
/// optional correlation info); the bound keeps a hostile client from growing our buffer.
pub const MAX_CONNECTION_REQUEST: usize = 1024;
/// Smallest TPKT-framed X.224 CR: 4 bytes TPKT + 7 bytes X.224 fixed part.
pub const MIN_CONNECTION_REQUEST: usize = 11;
/// `PROTOCOL_RDP` in RDP_NEG_REQ/RSP (MS-RDPBCGR 2.2.1.1.1): standard RDP security.
pub const PROTOCOL_RDP: u32 = 0;

/// Magic of an input event frame (client to host).
pub const INPUT_MAGIC: [u8; 4] = *b"GHIE";
/// Magic of a screen update frame (host to client).
pub const UPDATE_MAGIC: [u8; 4] = *b"GHSU";
/// Bytes of an input event header: magic, length u32, seq u64, reply length u32, flags u32.
pub const INPUT_HEADER_LEN: usize = 24;
/// Largest input event frame a host accepts.
pub const MAX_INPUT_LEN: usize = 4096;
/// Bytes of an update header: magic, length u32, seq u64.
pub const UPDATE_HEADER_LEN: usize = 16;
/// Largest update a client may ask for (1 MiB): bounds the host's work per event.
pub const MAX_UPDATE_LEN: u32 = 1 << 20;
/// Input event flag: this event asks for a burst (a window switch), not a routine update.
pub const FLAG_BURST: u32 = 1;

/// What a Connection Request asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionRequest {
    /// The cookie or routing-token line without its CRLF, if one was sent.
    pub cookie: Option<Vec<u8>>,
    /// `requestedProtocols` of the RDP_NEG_REQ, if one was sent.
    pub requested_protocols: Option<u32>,
}

/// Outcome of feeding the first client bytes to [`parse_connection_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrParse {
    /// Not all bytes of the request are here yet.
    Incomplete,
    /// A full request of `len` bytes; bytes after it belong to the exchange.
    Complete {
        /// Bytes the request used.
        len: usize,
        /// What it asked for.
        request: ConnectionRequest,
    },
}

/// Why a Connection Request or Confirm was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// TPKT version is not 3 or its reserved byte not 0.
    BadTpkt,
    /// TPKT length below the minimum, above the bound, or inconsistent with the X.224 LI.
    BadLength(usize),
    /// X.224 code is not the one expected (0xE0 CR, 0xD0 CC).
    WrongTpdu(u8),
    /// Class option is not class 0 (wire notes: drop such a request).
    NotClass0,
    /// A frame does not start with the expected magic.
    BadMagic,
    /// A frame length field is outside its bounds.
    BadFrameLength(u32),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadTpkt => write!(f, "not a TPKT v3 header"),
            WireError::BadLength(n) => write!(f, "TPKT/X.224 length {n} out of bounds"),
            WireError::WrongTpdu(c) => write!(f, "unexpected X.224 code {c:#04x}"),
            WireError::NotClass0 => write!(f, "X.224 class is not 0"),
            WireError::BadMagic => write!(f, "frame magic mismatch"),
            WireError::BadFrameLength(n) => write!(f, "frame length {n} out of bounds"),
        }
    }
}

impl std::error::Error for WireError {}

/// Parses a TPKT-framed X.224 Connection Request from the start of `buf`.
///
/// Checks follow wire-notes.md: TPKT v3, length within bounds and consistent with the X.224
/// length indicator, CR code 0xE0 (X.224 §13.3), class 0. The cookie line and RDP_NEG_REQ
/// (MS-RDPBCGR 2.2.1.1) are optional.
pub fn parse_connection_request(buf: &[u8]) -> Result<CrParse, WireError> {
    let Some(len) = tpkt_length(buf)? else {
        return Ok(CrParse::Incomplete);
    };
    if buf.len() < len {
        return Ok(CrParse::Incomplete);
    }
    let x224 = &buf[4..len];
    // X.224 LI counts the TPDU bytes after itself: total - 4 (TPKT) - 1 (LI).
    if usize::from(x224[0]) != len - 5 {
        return Err(WireError::BadLength(len));
    }
    if x224[1] & 0xF0 != 0xE0 {
        return Err(WireError::WrongTpdu(x224[1]));
    }
    if x224[6] & 0xF0 != 0 {
        return Err(WireError::NotClass0);
    }
    let mut rest = &x224[7..];
    let mut cookie = None;
    if rest.starts_with(b"Cookie:") || rest.starts_with(b"tsv:") {
        let end = rest.windows(2).position(|w| w == b"\r\n");
        let Some(end) = end else {
            return Err(WireError::BadLength(len));
        };
        cookie = Some(rest[..end].to_vec());
        rest = &rest[end + 2..];
    }
    let mut requested_protocols = None;
    // RDP_NEG_REQ: type 0x01, flags, length 8 (LE), requestedProtocols (LE).
    if rest.len() >= 8 && rest[0] == 0x01 && u16::from_le_bytes([rest[2], rest[3]]) == 8 {
        requested_protocols = Some(u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]));
    }
    Ok(CrParse::Complete {
        len,
        request: ConnectionRequest {
            cookie,
            requested_protocols,
        },
    })
}

/// Builds a Connection Request as a client sends it (cookie `Cookie: mstshash=USER`, and an
/// RDP_NEG_REQ asking for `requested_protocols`).
pub fn connection_request(user: &str, requested_protocols: u32) -> Vec<u8> {
    let cookie = format!("Cookie: mstshash={user}\r\n");
    let len = 4 + 7 + cookie.len() + 8;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[TPKT_VERSION, 0]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[(len - 5) as u8, 0xE0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(cookie.as_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0x08, 0x00]);
    out.extend_from_slice(&requested_protocols.to_le_bytes());
    out
}

/// Builds the Connection Confirm for `request`: with an RDP_NEG_RSP selecting
/// [`PROTOCOL_RDP`] when the client negotiated (MS-RDPBCGR 2.2.1.2), bare otherwise.
pub fn connection_confirm(request: &ConnectionRequest) -> Vec<u8> {
    match request.requested_protocols {
        Some(_) => {
            let mut out = vec![
                TPKT_VERSION,
                0,
                0,
                19,
                14,
                0xD0,
                0,
                0,
                0x12,
                0x34,
                0,
                0x02,
                0x00,
                0x08,
                0x00,
            ];
            out.extend_from_slice(&PROTOCOL_RDP.to_le_bytes());
            out
        }
        None => vec![TPKT_VERSION, 0, 0, 11, 6, 0xD0, 0, 0, 0x12, 0x34, 0],
    }
}

/// Parses a Connection Confirm; `Ok(Some((len, selected_protocol)))` once complete.
pub fn parse_connection_confirm(buf: &[u8]) -> Result<Option<(usize, Option<u32>)>, WireError> {
    let Some(len) = tpkt_length(buf)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    let x224 = &buf[4..len];
    if usize::from(x224[0]) != len - 5 {
        return Err(WireError::BadLength(len));
    }
    if x224[1] & 0xF0 != 0xD0 {
        return Err(WireError::WrongTpdu(x224[1]));
    }
    let rest = &x224[7..];
    // RDP_NEG_RSP type 0x02 (MS-RDPBCGR 2.2.1.2.1).
    let selected = (rest.len() >= 8 && rest[0] == 0x02)
        .then(|| u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]));
    Ok(Some((len, selected)))
}

/// Reads and bounds the TPKT length; `Ok(None)` until 4 bytes are here.
fn tpkt_length(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < 4 {
        if buf.first().is_some_and(|&v| v != TPKT_VERSION) {
            return Err(WireError::BadTpkt);
        }
        return Ok(None);
    }
    if buf[0] != TPKT_VERSION || buf[1] != 0 {
        return Err(WireError::BadTpkt);
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if !(MIN_CONNECTION_REQUEST..=MAX_CONNECTION_REQUEST).contains(&len) {
        return Err(WireError::BadLength(len));
    }
    Ok(Some(len))
}

/// One input event (client to host). The frame is `len` bytes: the 24-byte header, then
/// `len - 24` filler bytes standing in for the input PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputEvent {
    /// Total frame length in bytes, header included (24..=4096).
    pub len: u32,
    /// Sequence number; the host echoes it in the update.
    pub seq: u64,
    /// Total length of the update the host must answer with (0: no answer; else 16..=1 MiB).
    pub reply_len: u32,
    /// [`FLAG_BURST`] or 0.
    pub flags: u32,
}

impl InputEvent {
    /// Appends the frame (header and filler) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&INPUT_MAGIC);
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.reply_len.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        let filler = (self.len as usize).saturating_sub(INPUT_HEADER_LEN);
        out.resize(out.len() + filler, 0x5A);
    }

    /// Parses the header at the start of `buf`: `Ok(None)` until 24 bytes are here. The
    /// caller consumes `len` bytes in total (the filler may not have arrived yet).
    pub fn parse(buf: &[u8]) -> Result<Option<InputEvent>, WireError> {
        let check = buf.len().min(4);
        if buf[..check] != INPUT_MAGIC[..check] {
            return Err(WireError::BadMagic);
        }
        if buf.len() < INPUT_HEADER_LEN {
            return Ok(None);
        }
        let len = be_u32(&buf[4..8]);
        if !(INPUT_HEADER_LEN as u32..=MAX_INPUT_LEN as u32).contains(&len) {
            return Err(WireError::BadFrameLength(len));
        }
        let reply_len = be_u32(&buf[16..20]);
        if reply_len != 0 && !(UPDATE_HEADER_LEN as u32..=MAX_UPDATE_LEN).contains(&reply_len) {
            return Err(WireError::BadFrameLength(reply_len));
        }
        Ok(Some(InputEvent {
            len,
            seq: be_u64(&buf[8..16]),
            reply_len,
            flags: be_u32(&buf[20..24]),
        }))
    }
}

/// The header of one screen update (host to client): `len` bytes in total, header included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateHeader {
    /// Total frame length (16..=1 MiB).
    pub len: u32,
    /// Sequence number of the input event this update answers.
    pub seq: u64,
}

impl UpdateHeader {
    /// The 16 header bytes.
    pub fn encode(&self) -> [u8; UPDATE_HEADER_LEN] {
        let mut out = [0u8; UPDATE_HEADER_LEN];
        out[..4].copy_from_slice(&UPDATE_MAGIC);
        out[4..8].copy_from_slice(&self.len.to_be_bytes());
        out[8..16].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// Parses a complete 16-byte header.
    pub fn parse(buf: &[u8; UPDATE_HEADER_LEN]) -> Result<UpdateHeader, WireError> {
        if buf[..4] != UPDATE_MAGIC {
            return Err(WireError::BadMagic);
        }
        let len = be_u32(&buf[4..8]);
        if !(UPDATE_HEADER_LEN as u32..=MAX_UPDATE_LEN).contains(&len) {
            return Err(WireError::BadFrameLength(len));
        }
        Ok(UpdateHeader {
            len,
            seq: be_u64(&buf[8..16]),
        })
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// FreeRDP 2.11.7 to xrdp 0.9.21, from wire-notes.md.
    const FREERDP_CR: &[u8] = b"\x03\x00\x00\x2d\x28\xe0\x00\x00\x00\x00\x00Cookie: mstshash=rdptest\r\n\x01\x00\x08\x00\x03\x00\x00\x00";

    #[test]
    fn parses_captured_freerdp_request() {
        let got = parse_connection_request(FREERDP_CR).unwrap();
        assert_eq!(
            got,
            CrParse::Complete {
                len: 45,
                request: ConnectionRequest {
                    cookie: Some(b"Cookie: mstshash=rdptest".to_vec()),
                    requested_protocols: Some(3),
                }
            }
        );
    }

    #[test]
    fn incomplete_until_last_byte() {
        for cut in 0..FREERDP_CR.len() {
            assert_eq!(
                parse_connection_request(&FREERDP_CR[..cut]),
                Ok(CrParse::Incomplete),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn refuses_bad_requests() {
        let mut v = FREERDP_CR.to_vec();
        v[0] = 4;
        assert_eq!(parse_connection_request(&v), Err(WireError::BadTpkt));
        let mut v = FREERDP_CR.to_vec();
        v[4] = 0x27;
        assert_eq!(parse_connection_request(&v), Err(WireError::BadLength(45)));
        let mut v = FREERDP_CR.to_vec();
        v[5] = 0xD0;
        assert_eq!(parse_connection_request(&v), Err(WireError::WrongTpdu(0xD0)));
        let mut v = FREERDP_CR.to_vec();
        v[10] = 0x10;
        assert_eq!(parse_connection_request(&v), Err(WireError::NotClass0));
        assert_eq!(
            parse_connection_request(&[3, 0, 0, 10]),
            Err(WireError::BadLength(10))
        );
        assert_eq!(
            parse_connection_request(&[3, 0, 0x10, 0]),
            Err(WireError::BadLength(4096))
        );
    }

    #[test]
    fn builder_round_trips_and_confirm_matches_spec_bytes() {
        let cr = connection_request("rdptest", 3);
        assert_eq!(cr, FREERDP_CR);
        let CrParse::Complete { request, .. } = parse_connection_request(&cr).unwrap() else {
            panic!("complete request expected");
        };
        let cc = connection_confirm(&request);
        assert_eq!(
            cc,
            [3, 0, 0, 0x13, 0x0e, 0xd0, 0, 0, 0x12, 0x34, 0, 0x02, 0, 0x08, 0, 0, 0, 0, 0]
        );
        assert_eq!(parse_connection_confirm(&cc), Ok(Some((19, Some(0)))));
        let bare = connection_confirm(&ConnectionRequest {
            cookie: None,
            requested_protocols: None,
        });
        assert_eq!(parse_connection_confirm(&bare), Ok(Some((11, None))));
        assert_eq!(parse_connection_confirm(&bare[..10]), Ok(None));
    }

    #[test]
    fn input_event_round_trips_and_bounds() {
        let ev = InputEvent {
            len: 80,
            seq: 7,
            reply_len: 1200,
            flags: FLAG_BURST,
        };
        let mut buf = Vec::new();
        ev.encode(&mut buf);
        assert_eq!(buf.len(), 80);
        assert_eq!(InputEvent::parse(&buf), Ok(Some(ev)));
        assert_eq!(InputEvent::parse(&buf[..23]), Ok(None));
        assert_eq!(InputEvent::parse(b"GHIX"), Err(WireError::BadMagic));
        let mut big = buf.clone();
        big[4..8].copy_from_slice(&5000u32.to_be_bytes());
        assert_eq!(InputEvent::parse(&big), Err(WireError::BadFrameLength(5000)));
        let mut huge_reply = buf;
        huge_reply[16..20].copy_from_slice(&(MAX_UPDATE_LEN + 1).to_be_bytes());
        assert!(InputEvent::parse(&huge_reply).is_err());
    }

    #[test]
    fn update_header_round_trips() {
        let h = UpdateHeader { len: 4000, seq: 9 };
        assert_eq!(UpdateHeader::parse(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(UpdateHeader::parse(&bad), Err(WireError::BadFrameLength(3)));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_connection_request(&bytes);
            let _ = parse_connection_confirm(&bytes);
            let _ = InputEvent::parse(&bytes);
        }
    }
}
