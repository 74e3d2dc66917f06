//! The Sink stand-in's session core: counts what arrives, and streams bytes back when the
//! connection opened with a source request. No I/O.

use crate::wire::source::{classify, Prefix, SourceRequest, REPORT_LEN, SOURCE_HEADER_LEN};

/// The state of one Sink stand-in connection.
#[derive(Debug)]
pub enum SinkConn {
    /// The first bytes, until they are known to be a source request or not.
    Prefix {
        /// Bytes received so far (at most a header).
        buf: [u8; SOURCE_HEADER_LEN],
        /// How many of `buf` are filled.
        len: usize,
    },
    /// Plain sink: read and discard until EOF.
    Plain,
    /// Source: stream `down_left` bytes, count upstream bytes, maybe report them at EOF.
    Source(Source),
}

/// A connection that asked for bytes.
#[derive(Debug)]
pub struct Source {
    /// Bytes still to stream to the client.
    pub down_left: u64,
    /// Payload bytes received after the header.
    pub up_bytes: u64,
    report_up: bool,
    tail: Tail,
}

#[derive(Debug)]
enum Tail {
    Open,
    Reporting { bytes: [u8; REPORT_LEN], sent: usize },
    Done,
}

/// What the event loop should write next.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteWork<'a> {
    /// Up to this many pattern bytes.
    Pattern(u64),
    /// These literal bytes (the report).
    Literal(&'a [u8]),
    /// Nothing for now (wait for more input or for EOF).
    Idle,
    /// Everything is written: close the connection.
    Finished,
}

impl Default for SinkConn {
    fn default() -> Self {
        SinkConn::Prefix {
            buf: [0; SOURCE_HEADER_LEN],
            len: 0,
        }
    }
}

impl SinkConn {
    /// Feeds bytes read; returns how many count as payload (header bytes do not).
    pub fn on_bytes(&mut self, bytes: &[u8]) -> u64 {
        match self {
            SinkConn::Plain => bytes.len() as u64,
            SinkConn::Source(s) => {
                s.up_bytes += bytes.len() as u64;
                bytes.len() as u64
            }
            SinkConn::Prefix { buf, len } => {
                let take = (SOURCE_HEADER_LEN - *len).min(bytes.len());
                buf[*len..*len + take].copy_from_slice(&bytes[..take]);
                *len += take;
                match classify(&buf[..*len]) {
                    Prefix::NeedMore => 0,
                    Prefix::Plain => {
                        let counted = (*len + bytes.len() - take) as u64;
                        *self = SinkConn::Plain;
                        counted
                    }
                    Prefix::Source(SourceRequest {
                        down_bytes,
                        report_up,
                    }) => {
                        let rest = (bytes.len() - take) as u64;
                        *self = SinkConn::Source(Source {
                            down_left: down_bytes,
                            up_bytes: rest,
                            report_up,
                            tail: Tail::Open,
                        });
                        rest
                    }
                }
            }
        }
    }

    /// The client closed its sending side. Returns true when the connection can close now.
    pub fn on_eof(&mut self) -> bool {
        match self {
            SinkConn::Prefix { .. } | SinkConn::Plain => true,
            SinkConn::Source(s) if !matches!(s.tail, Tail::Open) => false,
            SinkConn::Source(s) => {
                s.tail = if s.report_up {
                    Tail::Reporting {
                        bytes: s.up_bytes.to_be_bytes(),
                        sent: 0,
                    }
                } else {
                    Tail::Done
                };
                false
            }
        }
    }

    /// Whether the client's EOF was seen (only a source outlives it).
    pub fn read_closed(&self) -> bool {
        matches!(self, SinkConn::Source(s) if !matches!(s.tail, Tail::Open))
    }

    /// What to write next.
    pub fn next_write(&self) -> WriteWork<'_> {
        match self {
            SinkConn::Prefix { .. } | SinkConn::Plain => WriteWork::Idle,
            SinkConn::Source(s) if s.down_left > 0 => WriteWork::Pattern(s.down_left),
            SinkConn::Source(s) => match &s.tail {
                Tail::Open => WriteWork::Idle,
                Tail::Reporting { bytes, sent } => WriteWork::Literal(&bytes[*sent..]),
                Tail::Done => WriteWork::Finished,
            },
        }
    }

    /// Records that `n` bytes of the last [`next_write`](Self::next_write) were written.
    pub fn wrote(&mut self, n: usize) {
        let SinkConn::Source(s) = self else {
            return;
        };
        if s.down_left > 0 {
            s.down_left -= (n as u64).min(s.down_left);
        } else if let Tail::Reporting { sent, .. } = &mut s.tail {
            *sent += n;
            if *sent >= REPORT_LEN {
                s.tail = Tail::Done;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sink_counts_every_byte() {
        let mut s = SinkConn::default();
        assert_eq!(s.on_bytes(b"GH"), 0);
        assert_eq!(s.on_bytes(b"x hello"), 9);
        assert_eq!(s.on_bytes(b"more"), 4);
        assert_eq!(s.next_write(), WriteWork::Idle);
        assert!(s.on_eof());
    }

    #[test]
    fn source_streams_then_reports() {
        let mut s = SinkConn::default();
        let hdr = SourceRequest {
            down_bytes: 10,
            report_up: true,
        }
        .encode();
        assert_eq!(s.on_bytes(&hdr[..5]), 0);
        let mut rest = hdr[5..].to_vec();
        rest.extend_from_slice(b"abc");
        assert_eq!(s.on_bytes(&rest), 3);
        assert_eq!(s.on_bytes(b"de"), 2);
        assert_eq!(s.next_write(), WriteWork::Pattern(10));
        s.wrote(4);
        assert_eq!(s.next_write(), WriteWork::Pattern(6));
        assert!(!s.on_eof());
        s.wrote(6);
        assert_eq!(s.next_write(), WriteWork::Literal(&5u64.to_be_bytes()));
        s.wrote(3);
        assert_eq!(s.next_write(), WriteWork::Literal(&5u64.to_be_bytes()[3..]));
        s.wrote(5);
        assert_eq!(s.next_write(), WriteWork::Finished);
    }
}
