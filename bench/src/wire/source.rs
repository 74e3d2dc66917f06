//! The optional header that turns a Sink stand-in connection into a source of bytes.
//!
//! Owns: the 24-byte header the `throughput` scenario sends first, and the 8-byte report the
//! sink answers with. A connection whose first bytes are not this header is a plain sink:
//! everything it sends is read and discarded. No I/O here.

/// First 8 bytes of a source request.
pub const SOURCE_MAGIC: [u8; 8] = *b"GHSRC\0\0\x01";
/// Length of a source request: magic, down_bytes u64 BE, flags u64 BE.
pub const SOURCE_HEADER_LEN: usize = 24;
/// Length of the byte-count report sent after the client's EOF.
pub const REPORT_LEN: usize = 8;
/// Flag: after the client's EOF, send the count of bytes received after the header.
pub const FLAG_REPORT_UP: u64 = 1;

/// What a throughput client asks the sink for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRequest {
    /// Bytes the sink streams back at once.
    pub down_bytes: u64,
    /// Whether the sink reports the upstream byte count (8 bytes BE) after the client's EOF,
    /// once the down bytes are all sent, and then closes.
    pub report_up: bool,
}

impl SourceRequest {
    /// The 24 header bytes.
    pub fn encode(&self) -> [u8; SOURCE_HEADER_LEN] {
        let mut out = [0u8; SOURCE_HEADER_LEN];
        out[..8].copy_from_slice(&SOURCE_MAGIC);
        out[8..16].copy_from_slice(&self.down_bytes.to_be_bytes());
        let flags = if self.report_up { FLAG_REPORT_UP } else { 0 };
        out[16..24].copy_from_slice(&flags.to_be_bytes());
        out
    }
}

/// What the first bytes of a sink connection say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// Could still be a source request: wait for more bytes.
    NeedMore,
    /// A complete source request (it used [`SOURCE_HEADER_LEN`] bytes).
    Source(SourceRequest),
    /// Not a source request: a plain sink; every byte counts as payload.
    Plain,
}

/// Classifies the first bytes of a sink connection (at most [`SOURCE_HEADER_LEN`] are read).
pub fn classify(buf: &[u8]) -> Prefix {
    let magic_part = buf.len().min(SOURCE_MAGIC.len());
    if buf[..magic_part] != SOURCE_MAGIC[..magic_part] {
        return Prefix::Plain;
    }
    if buf.len() < SOURCE_HEADER_LEN {
        return Prefix::NeedMore;
    }
    let mut down = [0u8; 8];
    down.copy_from_slice(&buf[8..16]);
    let mut flags = [0u8; 8];
    flags.copy_from_slice(&buf[16..24]);
    Prefix::Source(SourceRequest {
        down_bytes: u64::from_be_bytes(down),
        report_up: u64::from_be_bytes(flags) & FLAG_REPORT_UP != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_source_and_plain() {
        let req = SourceRequest {
            down_bytes: 1 << 33,
            report_up: true,
        };
        let bytes = req.encode();
        for cut in 0..SOURCE_HEADER_LEN {
            assert_eq!(classify(&bytes[..cut]), Prefix::NeedMore, "cut {cut}");
        }
        assert_eq!(classify(&bytes), Prefix::Source(req));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Prefix::Plain);
        assert_eq!(classify(b"GHSRX"), Prefix::Plain);
    }
}
