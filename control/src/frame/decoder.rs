//! The incremental frame decoder: bytes in, frames out, no I/O, no panics.
//!
//! It owns only its buffer. It checks the length field as soon as its four bytes arrive, so
//! an oversized frame is refused before any of its body is buffered (PROTOCOL.md §3).

use super::{Frame, FrameError, FrameKind, DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES};

/// Bytes already consumed at the front of the buffer before it is compacted.
const COMPACT_AFTER_BYTES: usize = 4096;

/// Sans-IO decoder for the frames that follow the hello exchange.
///
/// The shell calls [`FrameDecoder::feed`] with every chunk it reads from the socket, then
/// [`FrameDecoder::next_frame`] until it returns `Ok(None)`. Doing so keeps the buffer at most
/// one partial frame (bounded by the configured maximum) plus one read. An error is sticky:
/// the stream is out of step, so every later call returns the same error and the shell closes
/// the connection, logging [`FrameError::reason`].
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_bytes: u32,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder that refuses frames whose length field exceeds `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> Self {
        Self {
            max_frame_bytes,
            buf: Vec::new(),
            start: 0,
            failed: None,
        }
    }

    /// The bound on a frame's length field this decoder enforces.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Appends bytes read from the peer. Ignored once the decoder has failed.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered_len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or the error that
    /// ended the stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.parse() {
            Ok(frame) => Ok(frame),
            Err(err) => {
                self.failed = Some(err.clone());
                self.buf = Vec::new();
                self.start = 0;
                Err(err)
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.start..];
        let Some(prefix) = avail.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(*prefix);
        if length > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                size: u64::from(length),
                max: self.max_frame_bytes,
            });
        }
        if (length as usize) < super::FRAME_HEADER_BYTES {
            return Err(FrameError::TooShort { size: length });
        }
        // Check the kind as soon as it arrives so garbage is refused early.
        let Some(&kind_byte) = avail.get(LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let kind = FrameKind::from_byte(kind_byte).ok_or(FrameError::UnknownKind { byte: kind_byte })?;
        let total = LENGTH_PREFIX_BYTES + length as usize;
        let Some(frame_bytes) = avail.get(..total) else {
            return Ok(None);
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&frame_bytes[LENGTH_PREFIX_BYTES + 1..LENGTH_PREFIX_BYTES + 9]);
        let body = &frame_bytes[LENGTH_PREFIX_BYTES + super::FRAME_HEADER_BYTES..];
        if kind.is_keepalive() && !body.is_empty() {
            return Err(FrameError::KeepaliveWithBody { body_len: body.len() });
        }
        let frame = Frame::new(kind, u64::from_be_bytes(id), body.to_vec());
        self.start += total;
        self.compact();
        Ok(Some(frame))
    }

    fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= COMPACT_AFTER_BYTES && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

impl Default for FrameDecoder {
    /// A decoder with the default 1 MiB bound.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::frame::{encode_frame, FRAME_HEADER_BYTES};

    fn collect(decoder: &mut FrameDecoder) -> Result<Vec<Frame>, FrameError> {
        let mut frames = Vec::new();
        while let Some(frame) = decoder.next_frame()? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// Two frames as a peer would send them, written out by hand.
    const TWO_FRAMES: &[u8] = &[
        0x00, 0x00, 0x00, 0x0d, // length 13
        0x02, // response
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, // request id 256
        b'"', b'o', b'k', b'"', // body
        0x00, 0x00, 0x00, 0x09, // length 9
        0x05, // pong
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, // seq u64::MAX - 1
    ];

    #[test]
    fn decodes_byte_vector_in_one_feed() {
        let mut decoder = FrameDecoder::default();
        decoder.feed(TWO_FRAMES);
        let frames = collect(&mut decoder).unwrap();
        assert_eq!(
            frames,
            vec![
                Frame::new(FrameKind::Response, 256, b"\"ok\"".to_vec()),
                Frame::pong(u64::MAX - 1),
            ]
        );
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn decodes_one_byte_at_a_time() {
        let mut decoder = FrameDecoder::default();
        let mut frames = Vec::new();
        for (i, byte) in TWO_FRAMES.iter().enumerate() {
            decoder.feed(std::slice::from_ref(byte));
            let got = collect(&mut decoder).unwrap();
            // A frame appears exactly when its last byte arrives.
            match i {
                16 | 29 => assert_eq!(got.len(), 1, "frame should complete at byte {i}"),
                _ => assert!(got.is_empty(), "no frame expected at byte {i}"),
            }
            frames.extend(got);
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].request_id, 256);
        assert_eq!(frames[1].kind, FrameKind::Pong);
    }

    #[test]
    fn oversized_frame_is_refused_from_the_prefix_alone() {
        let mut decoder = FrameDecoder::new(1024);
        decoder.feed(&[0x00, 0x00, 0x04, 0x01]); // 1025
        let err = decoder.next_frame().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                size: 1025,
                max: 1024
            }
        );
        assert_eq!(err.reason(), "frame_too_large");
        assert!(err.to_string().contains("1025"));
        // Sticky: more bytes do not revive the stream and are not buffered.
        decoder.feed(&[0u8; 64]);
        assert_eq!(decoder.buffered_len(), 0);
        assert_eq!(decoder.next_frame().unwrap_err(), err);
    }

    #[test]
    fn largest_allowed_frame_passes() {
        let mut decoder = FrameDecoder::new(1024);
        let frame = Frame::new(FrameKind::Event, 0, vec![b'x'; 1024 - FRAME_HEADER_BYTES]);
        let mut wire = Vec::new();
        encode_frame(&frame, 1024, &mut wire).unwrap();
        decoder.feed(&wire);
        assert_eq!(decoder.next_frame().unwrap(), Some(frame));
    }

    #[test]
    fn default_bound_is_one_mebibyte() {
        let mut decoder = FrameDecoder::default();
        decoder.feed(&(DEFAULT_MAX_FRAME_BYTES + 1).to_be_bytes());
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                size: 1_048_577,
                max: 1_048_576
            })
        );
    }

    #[test]
    fn short_length_is_refused() {
        let mut decoder = FrameDecoder::default();
        decoder.feed(&[0, 0, 0, 8]);
        assert_eq!(decoder.next_frame(), Err(FrameError::TooShort { size: 8 }));
    }

    #[test]
    fn unknown_kind_is_refused_before_the_body() {
        let mut decoder = FrameDecoder::default();
        decoder.feed(&[0, 0, 0, 20, 0x09]);
        let err = decoder.next_frame().unwrap_err();
        assert_eq!(err, FrameError::UnknownKind { byte: 9 });
        assert_eq!(err.reason(), "frame_unknown_kind");
    }

    #[test]
    fn ping_with_body_is_refused() {
        let mut decoder = FrameDecoder::default();
        decoder.feed(&[0, 0, 0, 10, 4, 0, 0, 0, 0, 0, 0, 0, 1, b'x']);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::KeepaliveWithBody { body_len: 1 })
        );
    }

    #[test]
    fn buffer_is_compacted_over_many_frames() {
        let mut decoder = FrameDecoder::default();
        let mut wire = Vec::new();
        let frame = Frame::new(FrameKind::Request, 1, vec![b'a'; 100]);
        encode_frame(&frame, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
        // Feed each frame split in two so a tail is always left behind.
        let (head, tail) = wire.split_at(50);
        decoder.feed(head);
        for _ in 0..1000 {
            decoder.feed(tail);
            decoder.feed(head);
            assert_eq!(decoder.next_frame().unwrap().as_ref(), Some(&frame));
            assert!(decoder.buf.len() < 2 * COMPACT_AFTER_BYTES + wire.len());
        }
        assert_eq!(decoder.buffered_len(), 50);
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                prop_oneof![
                    Just(FrameKind::Request),
                    Just(FrameKind::Response),
                    Just(FrameKind::Event)
                ],
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(kind, id, body)| Frame::new(kind, id, body)),
            any::<u64>().prop_map(Frame::ping),
            any::<u64>().prop_map(Frame::pong),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_on_random_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16),
            max in 0u32..2048,
        ) {
            let mut decoder = FrameDecoder::new(max);
            for chunk in &chunks {
                decoder.feed(chunk);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    prop_assert!(frame.wire_length() <= max as usize);
                }
                prop_assert!(decoder.buffered_len() <= chunks.iter().map(Vec::len).sum::<usize>());
            }
        }

        #[test]
        fn encode_then_decode_round_trips(
            frames in proptest::collection::vec(arb_frame(), 0..8),
            split in proptest::collection::vec(1usize..40, 1..20),
        ) {
            let mut wire = Vec::new();
            for frame in &frames {
                encode_frame(frame, DEFAULT_MAX_FRAME_BYTES, &mut wire).unwrap();
            }
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            let mut rest = &wire[..];
            let mut sizes = split.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().unwrap()).min(rest.len());
                decoder.feed(&rest[..n]);
                rest = &rest[n..];
                got.extend(collect(&mut decoder).unwrap());
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(decoder.buffered_len(), 0);
        }
    }
}
