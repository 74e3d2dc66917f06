//! Framing of the control protocol: the hello exchange that opens a connection, then
//! length-prefixed frames, each with a kind, a request id and an opaque body.
//!
//! This module owns the byte layout only (see `control/PROTOCOL.md` §2-§4). It knows nothing
//! about the JSON inside bodies (that is [`crate::message`]) nor about sockets or clocks: the
//! shell feeds bytes to [`FrameDecoder`], writes what [`encode`] produced, and drives
//! [`Keepalive`] with `Instant`s it reads itself.

mod decoder;
mod hello;
mod keepalive;

use std::fmt;
use std::time::Duration;

pub use decoder::FrameDecoder;
pub use hello::{
    Hello, HelloDecoder, HelloError, HelloProgress, NegotiatedHello, NodeName, Role, HELLO_MAGIC,
    MAX_NODE_NAME_BYTES, PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MIN,
};
pub use keepalive::{Keepalive, KeepaliveAction, KeepaliveConfig, PongOutcome};

/// Bytes of the length prefix that starts every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Bytes that follow the length prefix before the body: kind (1) and request id (8).
pub const FRAME_HEADER_BYTES: usize = 9;

/// Default bound on a frame's length field (kind + request id + body): 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1 << 20;

/// How long a connection may take to complete the hello exchange before the shell drops it.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a requester waits for a response before failing the request with a timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a frame carries; the byte after the length prefix (PROTOCOL.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// A request from a gateway or host agent; the request id is chosen by the sender.
    Request = 1,
    /// The answer to the request with the same id.
    Response = 2,
    /// A push from the broker that answers no request; request id 0.
    Event = 3,
    /// Keepalive probe; the request id is the ping sequence number, the body is empty.
    Ping = 4,
    /// Keepalive answer echoing the ping's sequence number; the body is empty.
    Pong = 5,
}

impl FrameKind {
    /// The kind for a wire byte, or `None` for a byte this protocol version does not define.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Request),
            2 => Some(Self::Response),
            3 => Some(Self::Event),
            4 => Some(Self::Ping),
            5 => Some(Self::Pong),
            _ => None,
        }
    }

    /// The wire byte of this kind.
    pub fn to_byte(self) -> u8 {
        self as u8
    }

    /// Whether frames of this kind must have an empty body.
    pub fn is_keepalive(self) -> bool {
        matches!(self, Self::Ping | Self::Pong)
    }
}

/// One decoded frame: kind, request id and the body bytes (JSON for requests, responses and
/// events; empty for keepalives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame carries.
    pub kind: FrameKind,
    /// The request id (requests, responses), ping sequence (ping, pong) or 0 (events).
    pub request_id: u64,
    /// The body; its meaning depends on `kind`.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame with the given parts.
    pub fn new(kind: FrameKind, request_id: u64, body: Vec<u8>) -> Self {
        Self {
            kind,
            request_id,
            body,
        }
    }

    /// A keepalive ping with sequence number `seq`.
    pub fn ping(seq: u64) -> Self {
        Self::new(FrameKind::Ping, seq, Vec::new())
    }

    /// The pong answering a ping with sequence number `seq`.
    pub fn pong(seq: u64) -> Self {
        Self::new(FrameKind::Pong, seq, Vec::new())
    }

    /// The value of this frame's length field: header plus body.
    pub fn wire_length(&self) -> usize {
        FRAME_HEADER_BYTES + self.body.len()
    }
}

/// Why a frame could not be encoded or decoded. After a decode error the stream is out of
/// step, so the connection must be closed; [`FrameError::reason`] names the cause for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length field exceeds the configured bound; `size` is the length the peer announced
    /// (or the encoder was asked to produce).
    TooLarge {
        /// The announced length in bytes (kind + request id + body).
        size: u64,
        /// The bound in force.
        max: u32,
    },
    /// The length field is smaller than the 9-byte header, so no kind or request id fits.
    TooShort {
        /// The announced length in bytes.
        size: u32,
    },
    /// The kind byte is not one this protocol version defines.
    UnknownKind {
        /// The byte received.
        byte: u8,
    },
    /// A ping or pong carried a body; keepalives are always empty.
    KeepaliveWithBody {
        /// The body length received.
        body_len: usize,
    },
}

impl FrameError {
    /// A stable, short reason for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "frame_too_large",
            Self::TooShort { .. } => "frame_too_short",
            Self::UnknownKind { .. } => "frame_unknown_kind",
            Self::KeepaliveWithBody { .. } => "keepalive_with_body",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge { size, max } => {
                write!(f, "frame of {size} bytes exceeds the bound of {max} bytes")
            }
            Self::TooShort { size } => write!(
                f,
                "frame length {size} is shorter than the {FRAME_HEADER_BYTES}-byte header"
            ),
            Self::UnknownKind { byte } => write!(f, "unknown frame kind 0x{byte:02x}"),
            Self::KeepaliveWithBody { body_len } => {
                write!(f, "keepalive frame carries a {body_len}-byte body")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Appends the wire form of a frame (length prefix, kind, request id, body) to `out`.
///
/// Refuses a frame whose length field would exceed `max_frame_bytes`, so a node never sends
/// what its peer would reject, and a keepalive with a body. `out` is untouched on error.
pub fn encode(
    kind: FrameKind,
    request_id: u64,
    body: &[u8],
    max_frame_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if kind.is_keepalive() && !body.is_empty() {
        return Err(FrameError::KeepaliveWithBody { body_len: body.len() });
    }
    // usize -> u64 cannot lose bits on any platform Rust supports.
    let length = (FRAME_HEADER_BYTES + body.len()) as u64;
    if length > u64::from(max_frame_bytes) {
        return Err(FrameError::TooLarge {
            size: length,
            max: max_frame_bytes,
        });
    }
    // Checked above: length <= max_frame_bytes, which is a u32.
    let length = length as u32;
    out.reserve(LENGTH_PREFIX_BYTES + length as usize);
    out.extend_from_slice(&length.to_be_bytes());
    out.push(kind.to_byte());
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Appends the wire form of `frame` to `out`; see [`encode`].
pub fn encode_frame(frame: &Frame, max_frame_bytes: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode(frame.kind, frame.request_id, &frame.body, max_frame_bytes, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frame_bytes() {
        let mut out = Vec::new();
        encode(
            FrameKind::Request,
            0x0102_0304_0506_0708,
            b"{}",
            DEFAULT_MAX_FRAME_BYTES,
            &mut out,
        )
        .unwrap();
        assert_eq!(
            out,
            [
                0x00, 0x00, 0x00, 0x0b, // length 11 = 9 + 2
                0x01, // kind: request
                0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // request id
                b'{', b'}',
            ]
        );
    }

    #[test]
    fn ping_frame_bytes() {
        let mut out = Vec::new();
        encode_frame(&Frame::ping(7), DEFAULT_MAX_FRAME_BYTES, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 9, 4, 0, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn encode_refuses_oversized_and_keeps_output() {
        let mut out = vec![0xaa];
        let err = encode(FrameKind::Event, 0, &[0u8; 100], 100, &mut out).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { size: 109, max: 100 });
        assert!(err.to_string().contains("109"));
        assert_eq!(out, [0xaa]);
        // Exactly at the bound is fine.
        encode(FrameKind::Event, 0, &[0u8; 91], 100, &mut out).unwrap();
        assert_eq!(out.len(), 1 + 4 + 100);
    }

    #[test]
    fn encode_refuses_keepalive_with_body() {
        let mut out = Vec::new();
        let err = encode(FrameKind::Pong, 1, b"x", DEFAULT_MAX_FRAME_BYTES, &mut out);
        assert_eq!(err, Err(FrameError::KeepaliveWithBody { body_len: 1 }));
    }

    #[test]
    fn kind_bytes_round_trip() {
        for byte in 0..=255u8 {
            if let Some(kind) = FrameKind::from_byte(byte) {
                assert_eq!(kind.to_byte(), byte);
            }
        }
        assert_eq!(FrameKind::from_byte(0), None);
        assert_eq!(FrameKind::from_byte(6), None);
    }
}
