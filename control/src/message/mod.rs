//! Typed bodies of the control protocol and their mapping to frames (PROTOCOL.md §6).
//!
//! Bodies are JSON objects tagged by `"type"`. This module owns their shapes, their field
//! bounds and the turn from a [`Frame`] into an [`Inbound`] message and back. It does not
//! decide anything about users, hosts or tickets: that is the broker's job.

mod refusal;
mod reply;
mod request;
mod secret;
pub(crate) mod validate;

use std::fmt;

use serde::Serialize;

pub use refusal::RefusalReason;
pub use reply::{
    Event, HostChosen, Launched, LoginOk, Redeemed, Refused, Reply, ResourceInfo, ResourceKind, Resources,
};
pub use request::{ChooseHost, HostReport, Launch, LaunchMode, ListResources, Login, RedeemTicket, Request};
pub use secret::Secret;
pub use validate::Invalid;

use crate::frame::{self, Frame, FrameError, FrameKind};

/// Longest user name, in bytes (tickets store it with a one-byte length).
pub const MAX_USER_BYTES: usize = 255;
/// Longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest second factor, in bytes.
pub const MAX_SECOND_FACTOR_BYTES: usize = 256;
/// Longest session token, in bytes.
pub const MAX_SESSION_TOKEN_BYTES: usize = 512;
/// Longest resource id or display name, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 255;
/// Longest host name, in bytes (tickets store it with a one-byte length).
pub const MAX_HOST_BYTES: usize = 255;
/// Longest site name, in bytes (tickets store it with a one-byte length).
pub const MAX_SITE_BYTES: usize = 255;
/// Most sessions one host report may list.
pub const MAX_SESSIONS_PER_REPORT: usize = 4096;
/// Most resources one answer may list.
pub const MAX_RESOURCES: usize = 10_000;
/// Longest `detail` of a refusal, in bytes.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// A decoded frame with its body typed by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// A request to answer with a response frame of the same id.
    Request {
        /// The requester's id, echoed in the response.
        id: u64,
        /// The request.
        request: Request,
    },
    /// The answer to the request with this id.
    Response {
        /// The id of the request it answers.
        id: u64,
        /// The answer.
        reply: Reply,
    },
    /// A push from the broker.
    Event(Event),
    /// A keepalive probe: answer at once with a pong of the same sequence number.
    Ping {
        /// The sequence number to echo.
        seq: u64,
    },
    /// The answer to one of our pings: hand it to [`crate::frame::Keepalive::on_pong`].
    Pong {
        /// The sequence number of the answered ping.
        seq: u64,
    },
}

/// A frame whose body is not a valid message of its kind.
///
/// For a bad request the receiver answers `refused` / `bad_request` with the same id
/// ([`MessageError::refusal`]) and keeps the connection: one bad request disturbs nothing
/// else. For a bad response the requester fails that request with the reason; for a bad
/// event it logs and ignores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The body is not JSON of the expected shape.
    BadJson {
        /// The frame's kind.
        kind: FrameKind,
        /// The frame's request id.
        request_id: u64,
        /// serde_json's description, with line and column.
        detail: String,
    },
    /// The body parsed but a field fails its bounds.
    Invalid {
        /// The frame's kind.
        kind: FrameKind,
        /// The frame's request id.
        request_id: u64,
        /// The failing field.
        invalid: Invalid,
    },
    /// A request or response with id 0, or an event with a non-zero id.
    BadRequestId {
        /// The frame's kind.
        kind: FrameKind,
        /// The id received.
        request_id: u64,
    },
}

impl MessageError {
    /// A stable, short reason for logs and metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadJson { .. } => "body_bad_json",
            Self::Invalid { .. } => "body_invalid_field",
            Self::BadRequestId { .. } => "bad_request_id",
        }
    }

    /// The kind of the offending frame.
    pub fn kind(&self) -> FrameKind {
        match self {
            Self::BadJson { kind, .. } | Self::Invalid { kind, .. } | Self::BadRequestId { kind, .. } => {
                *kind
            }
        }
    }

    /// The request id of the offending frame.
    pub fn request_id(&self) -> u64 {
        match self {
            Self::BadJson { request_id, .. }
            | Self::Invalid { request_id, .. }
            | Self::BadRequestId { request_id, .. } => *request_id,
        }
    }

    /// The refusal to send back when the offending frame was a request.
    pub fn refusal(&self) -> Reply {
        Reply::Refused(Refused::with_detail(RefusalReason::BadRequest, self.to_string()))
    }
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadJson {
                kind,
                request_id,
                detail,
            } => write!(f, "{kind:?} {request_id}: bad body: {detail}"),
            Self::Invalid {
                kind,
                request_id,
                invalid,
            } => write!(f, "{kind:?} {request_id}: {invalid}"),
            Self::BadRequestId { kind, request_id } => {
                write!(f, "{kind:?} with invalid request id {request_id}")
            }
        }
    }
}

impl std::error::Error for MessageError {}

/// Types a decoded frame: parses and validates its JSON body according to its kind.
/// Requests and responses need a non-zero id; events need id 0.
pub fn decode(frame: &Frame) -> Result<Inbound, MessageError> {
    let kind = frame.kind;
    let id = frame.request_id;
    let bad_id = || MessageError::BadRequestId { kind, request_id: id };
    let invalid = |invalid| MessageError::Invalid {
        kind,
        request_id: id,
        invalid,
    };
    match kind {
        FrameKind::Request => {
            if id == 0 {
                return Err(bad_id());
            }
            let request: Request = parse_json(frame)?;
            request.validate().map_err(invalid)?;
            Ok(Inbound::Request { id, request })
        }
        FrameKind::Response => {
            if id == 0 {
                return Err(bad_id());
            }
            let reply: Reply = parse_json(frame)?;
            reply.validate().map_err(invalid)?;
            Ok(Inbound::Response { id, reply })
        }
        FrameKind::Event => {
            if id != 0 {
                return Err(bad_id());
            }
            Ok(Inbound::Event(parse_json(frame)?))
        }
        FrameKind::Ping => Ok(Inbound::Ping { seq: id }),
        FrameKind::Pong => Ok(Inbound::Pong { seq: id }),
    }
}

/// Appends a request frame with id `id` (non-zero, unique among the sender's outstanding
/// requests on this connection) to `out`.
pub fn encode_request(
    id: u64,
    request: &Request,
    max_frame_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    debug_assert_ne!(id, 0, "request id 0 is reserved for events");
    encode_json(FrameKind::Request, id, request, max_frame_bytes, out)
}

/// Appends the response to request `id` to `out`.
pub fn encode_reply(
    id: u64,
    reply: &Reply,
    max_frame_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    encode_json(FrameKind::Response, id, reply, max_frame_bytes, out)
}

/// Appends an event frame (id 0) to `out`.
pub fn encode_event(event: &Event, max_frame_bytes: u32, out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode_json(FrameKind::Event, 0, event, max_frame_bytes, out)
}

fn encode_json<T: Serialize>(
    kind: FrameKind,
    id: u64,
    body: &T,
    max_frame_bytes: u32,
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let body = serde_json::to_vec(body)
        .expect("message types hold only strings, numbers, bools and lists: JSON cannot fail");
    frame::encode(kind, id, &body, max_frame_bytes, out)
}

fn parse_json<T: serde::de::DeserializeOwned>(frame: &Frame) -> Result<T, MessageError> {
    serde_json::from_slice(&frame.body).map_err(|err| MessageError::BadJson {
        kind: frame.kind,
        request_id: frame.request_id,
        detail: err.to_string(),
    })
}

#[cfg(test)]
mod tests;
