//! The Rdp stand-in's session core: bytes in, frames to send out. No I/O.
//!
//! Owns the per-connection state of an RDP-like host (waiting for the Connection Request,
//! then answering input events with updates). The event loop in `standin.rs` feeds it the
//! bytes it read and writes out what it queued.

use std::collections::VecDeque;

use crate::wire::rdp::{
    connection_confirm, parse_connection_request, CrParse, InputEvent, UpdateHeader, WireError,
    UPDATE_HEADER_LEN,
};

/// One thing waiting to be written to the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Literal bytes (the Connection Confirm); `sent` of them are already written.
    Bytes {
        /// The bytes.
        buf: Vec<u8>,
        /// How many are written.
        sent: usize,
    },
    /// An update: its header, then `payload_left` filler bytes taken from a shared pattern,
    /// so a 60 KB burst costs no per-connection allocation.
    Update {
        /// The 16 header bytes.
        header: [u8; UPDATE_HEADER_LEN],
        /// How many header bytes are written.
        sent: usize,
        /// Payload bytes still to write.
        payload_left: u32,
    },
}

/// The state of one Rdp stand-in connection.
#[derive(Debug)]
pub enum RdpHost {
    /// Collecting the X.224 Connection Request (bounded by the TPKT length check).
    AwaitRequest {
        /// Bytes received so far.
        buf: Vec<u8>,
    },
    /// Answering input events; `partial` holds the start of an incomplete frame (< 4 KiB).
    Exchange {
        /// Bytes of a frame whose end has not arrived.
        partial: Vec<u8>,
    },
}

impl Default for RdpHost {
    fn default() -> Self {
        RdpHost::AwaitRequest { buf: Vec::new() }
    }
}

impl RdpHost {
    /// Feeds bytes read from the client; queues the answers on `out`. An error means the
    /// client broke the protocol and the connection should be closed.
    pub fn on_bytes(&mut self, bytes: &[u8], out: &mut VecDeque<Outgoing>) -> Result<(), WireError> {
        match self {
            RdpHost::AwaitRequest { buf } => {
                buf.extend_from_slice(bytes);
                match parse_connection_request(buf)? {
                    CrParse::Incomplete => Ok(()),
                    CrParse::Complete { len, request } => {
                        out.push_back(Outgoing::Bytes {
                            buf: connection_confirm(&request),
                            sent: 0,
                        });
                        let rest = buf.split_off(len);
                        *self = RdpHost::Exchange { partial: Vec::new() };
                        self.on_bytes(&rest, out)
                    }
                }
            }
            RdpHost::Exchange { partial } => {
                let joined;
                let data: &[u8] = if partial.is_empty() {
                    bytes
                } else {
                    partial.extend_from_slice(bytes);
                    joined = std::mem::take(partial);
                    &joined
                };
                let mut at = 0;
                while at < data.len() {
                    let Some(ev) = InputEvent::parse(&data[at..])? else {
                        break;
                    };
                    let frame_len = ev.len as usize;
                    if data.len() - at < frame_len {
                        break;
                    }
                    at += frame_len;
                    if ev.reply_len > 0 {
                        let header = UpdateHeader {
                            len: ev.reply_len,
                            seq: ev.seq,
                        };
                        out.push_back(Outgoing::Update {
                            header: header.encode(),
                            sent: 0,
                            payload_left: ev.reply_len - UPDATE_HEADER_LEN as u32,
                        });
                    }
                }
                // Keep only the incomplete tail; an idle session holds no buffer.
                *partial = data[at..].to_vec();
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::rdp::{connection_request, FLAG_BURST};

    fn event(seq: u64, reply_len: u32) -> Vec<u8> {
        let mut v = Vec::new();
        InputEvent {
            len: 80,
            seq,
            reply_len,
            flags: 0,
        }
        .encode(&mut v);
        v
    }

    #[test]
    fn confirms_then_answers_events_split_anywhere() {
        let mut stream = connection_request("bench", 3);
        stream.extend(event(1, 1200));
        stream.extend(event(2, 0));
        let mut burst = Vec::new();
        InputEvent {
            len: 80,
            seq: 3,
            reply_len: 61_440,
            flags: FLAG_BURST,
        }
        .encode(&mut burst);
        stream.extend(burst);
        for split in 0..stream.len() {
            let mut host = RdpHost::default();
            let mut out = VecDeque::new();
            host.on_bytes(&stream[..split], &mut out).unwrap();
            host.on_bytes(&stream[split..], &mut out).unwrap();
            assert_eq!(out.len(), 3, "split {split}");
            assert!(matches!(&out[0], Outgoing::Bytes { buf, .. } if buf.len() == 19));
            assert_eq!(
                out[1],
                Outgoing::Update {
                    header: UpdateHeader { len: 1200, seq: 1 }.encode(),
                    sent: 0,
                    payload_left: 1184
                }
            );
            assert!(matches!(
                out[2],
                Outgoing::Update {
                    payload_left: 61_424,
                    ..
                }
            ));
            assert!(matches!(&host, RdpHost::Exchange { partial } if partial.is_empty()));
        }
    }

    #[test]
    fn garbage_is_refused() {
        let mut host = RdpHost::default();
        let mut out = VecDeque::new();
        assert!(host.on_bytes(b"GET / HTTP/1.1\r\n", &mut out).is_err());
        let mut host = RdpHost::default();
        let mut stream = connection_request("bench", 0);
        stream.extend_from_slice(b"junkjunkjunkjunkjunkjunk");
        assert_eq!(host.on_bytes(&stream, &mut out), Err(WireError::BadMagic));
    }
}
