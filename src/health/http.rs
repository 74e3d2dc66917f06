//! Sans-IO HTTP/1.1 pieces of the HTTP check: the request bytes and the status-line reader.
//!
//! Owns only byte handling; the probe shell in `probe.rs` moves the bytes.

/// Most bytes of response read while looking for the status line; past this the answer is
/// malformed for our purpose.
pub(crate) const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Headers parsed at most; a response with more still yields its status line.
const MAX_HEADERS: usize = 64;

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StatusRead {
    /// The status line is not complete yet: read more.
    Incomplete,
    /// A well-formed status line with this code.
    Status(u16),
    /// Not an HTTP/1.x response.
    Malformed(String),
}

/// The request an HTTP check sends. `path` and `host` must have passed
/// `CheckKind::validate` (no whitespace or control characters).
///
/// RFC 9112 §3.2: Host is mandatory in HTTP/1.1; §9.6: `Connection: close` asks the server to
/// close after answering, so the server, not the checker, holds the TIME_WAIT.
pub(crate) fn request(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gatehouse-health\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Reads the status code from the first bytes of a response (RFC 9112 §4). Returns as soon as
/// the status line is complete; header errors after a good status line other than "too many
/// headers" still make the answer malformed.
pub(crate) fn read_status(buf: &[u8]) -> StatusRead {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response.parse(buf);
    // httparse fills `reason` only once the whole status line (through CRLF) is parsed.
    let status_line_done = response.reason.is_some();
    match (parsed, response.code) {
        (Ok(_), Some(code)) if status_line_done => StatusRead::Status(code),
        (Err(httparse::Error::TooManyHeaders), Some(code)) if status_line_done => StatusRead::Status(code),
        (Ok(_), _) if buf.len() >= MAX_RESPONSE_HEAD => {
            StatusRead::Malformed(format!("no status line in the first {MAX_RESPONSE_HEAD} bytes"))
        }
        (Ok(_), _) => StatusRead::Incomplete,
        (Err(e), _) => StatusRead::Malformed(format!("{e} in {}", preview(buf))),
    }
}

/// The start of a bad answer, printable, for the log line.
fn preview(buf: &[u8]) -> String {
    let head = &buf[..buf.len().min(40)];
    format!("{:?}", String::from_utf8_lossy(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_host_and_close() {
        let req = request("/health", "10.0.0.1:8080");
        assert_eq!(
            req,
            b"GET /health HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: gatehouse-health\r\n\
              Accept: */*\r\nConnection: close\r\n\r\n"
                .to_vec()
        );
    }

    #[test]
    fn status_from_full_and_partial_heads() {
        assert_eq!(
            read_status(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            StatusRead::Status(200)
        );
        // Status line complete, headers still coming: enough.
        assert_eq!(
            read_status(b"HTTP/1.0 503 Service Unavailable\r\nServer: x"),
            StatusRead::Status(503)
        );
        // No reason phrase is allowed (RFC 9112 §4).
        assert_eq!(read_status(b"HTTP/1.1 204\r\n"), StatusRead::Status(204));
    }

    #[test]
    fn incomplete_until_the_status_line_ends() {
        for cut in [
            "",
            "H",
            "HTTP/1.1",
            "HTTP/1.1 20",
            "HTTP/1.1 200",
            "HTTP/1.1 200 O",
        ] {
            assert_eq!(read_status(cut.as_bytes()), StatusRead::Incomplete, "{cut:?}");
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
            b"HTTP/2 200\r\n",
            b"HTTP/1.1 2x0 OK\r\n",
            b"\x16\x03\x01\x00\x05hello",
            b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        ] {
            assert!(
                matches!(read_status(bad), StatusRead::Malformed(_)),
                "{bad:?} not malformed"
            );
        }
    }

    #[test]
    fn oversized_head_without_status_is_malformed() {
        // A status line that never ends: httparse keeps asking for more, we stop at the bound.
        let mut big = b"HTTP/1.1 200 ".to_vec();
        big.resize(MAX_RESPONSE_HEAD, b'a');
        assert!(matches!(read_status(&big), StatusRead::Malformed(_)));
    }

    #[test]
    fn many_headers_still_give_the_status() {
        let mut resp = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..100 {
            resp.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        resp.extend_from_slice(b"\r\n");
        assert_eq!(read_status(&resp), StatusRead::Status(200));
    }

    #[test]
    fn never_panics_on_any_prefix_of_mixed_bytes() {
        let sample = b"HTTP/1.1 200 OK\r\n\x00\xff\r\n\r\nHTTP/1.1 \xc3\x28 x";
        for end in 0..=sample.len() {
            for start in 0..end {
                let _ = read_status(&sample[start..end]);
            }
        }
    }
}
