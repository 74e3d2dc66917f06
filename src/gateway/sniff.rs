//! First-byte classification of a connection on the gateway's one port.
//!
//! Owns only the decision "what protocol does this stream start with", from at most
//! [`MAX_SNIFF_BYTES`] bytes. The event loop calls [`classify`] each time bytes arrive until
//! it returns `Some`, then hands the stream to TLS offload, the X.224 reader or the HTTP head
//! parser. A PROXY v2 header is not classified here: the shell consumes it first, and only
//! from trusted forwarders; anywhere else its signature is [`FirstBytes::Unknown`].

/// What the first bytes of a connection look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FirstBytes {
    /// A TLS handshake record (RFC 8446 §5.1: content type 22, legacy version 0x03 0x00-0x04).
    Tls,
    /// A TPKT header (RFC 1006 §6: version 3, reserved 0): an RDP client's X.224 Connection
    /// Request (MS-RDPBCGR 2.2.1.1).
    Rdp,
    /// An HTTP/1.x request line: a method token of letters, `_` and `-` (GET, POST, ...,
    /// RDG_OUT_DATA; also `get`, which is not GET (RFC 9110 §9.1: methods are
    /// case-sensitive) and gets an HTTP answer rather than a silent close).
    Http,
    /// None of the above; the connection is refused with a log line.
    Unknown,
}

/// The most bytes [`classify`] ever needs to decide.
pub const MAX_SNIFF_BYTES: usize = 8;

/// Classifies the start of a stream. `None` means "need more bytes"; it is never returned for
/// a buffer of [`MAX_SNIFF_BYTES`] or more.
///
/// An HTTP method token is one or more of `A-Z`, `a-z`, `_`, `-` followed by a space; a token that
/// fills all eight bytes (`RDG_OUT_DATA`, `M-SEARCH`) is taken as HTTP too and left to the
/// HTTP parser to accept or refuse.
pub fn classify(buf: &[u8]) -> Option<FirstBytes> {
    let first = *buf.first()?;
    match first {
        // RFC 8446 §5.1: ContentType handshake(22), ProtocolVersion legacy_record_version.
        0x16 => {
            let version = buf.get(1..3)?;
            Some(if version[0] == 0x03 && version[1] <= 0x04 {
                FirstBytes::Tls
            } else {
                FirstBytes::Unknown
            })
        }
        // RFC 1006 §6: TPKT vrsn 3, reserved 0.
        0x03 => {
            let reserved = *buf.get(1)?;
            Some(if reserved == 0 {
                FirstBytes::Rdp
            } else {
                FirstBytes::Unknown
            })
        }
        b'A'..=b'Z' | b'a'..=b'z' => Some(classify_method(buf)?),
        _ => Some(FirstBytes::Unknown),
    }
}

/// The method-token rule of [`classify`]; the first byte is already known to be a letter.
fn classify_method(buf: &[u8]) -> Option<FirstBytes> {
    for (i, &b) in buf.iter().enumerate().take(MAX_SNIFF_BYTES) {
        match b {
            b' ' if i > 0 => return Some(FirstBytes::Http),
            b'A'..=b'Z' | b'a'..=b'z' | b'_' | b'-' => {}
            _ => return Some(FirstBytes::Unknown),
        }
    }
    if buf.len() >= MAX_SNIFF_BYTES {
        Some(FirstBytes::Http)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every strict prefix of `full` needs more bytes, and `full` gives `want`.
    fn assert_prefixes(full: &[u8], want: FirstBytes) {
        assert_eq!(classify(&[]), None);
        for cut in 1..full.len() {
            assert_eq!(classify(&full[..cut]), None, "prefix {:?}", &full[..cut]);
        }
        assert_eq!(classify(full), Some(want), "{full:?}");
    }

    #[test]
    fn tls_client_hello_records() {
        for minor in 0..=4u8 {
            assert_prefixes(&[0x16, 0x03, minor], FirstBytes::Tls);
        }
        // A real ClientHello start (openssl s_client): 16 03 01 LEN 01 ...
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
            Some(FirstBytes::Tls)
        );
        assert_eq!(classify(&[0x16, 0x03, 0x05]), Some(FirstBytes::Unknown));
        assert_eq!(classify(&[0x16, 0x02, 0x00]), Some(FirstBytes::Unknown));
        // SSLv2-style or other record types are not offloaded.
        assert_eq!(classify(&[0x17, 0x03, 0x03]), Some(FirstBytes::Unknown));
        assert_eq!(classify(&[0x80, 0x2e, 0x01]), Some(FirstBytes::Unknown));
    }

    #[test]
    fn tpkt_from_the_freerdp_capture() {
        let capture = [0x03, 0x00, 0x00, 0x2d, 0x28, 0xe0];
        assert_eq!(classify(&capture), Some(FirstBytes::Rdp));
        assert_prefixes(&capture[..2], FirstBytes::Rdp);
        assert_eq!(classify(&[0x03, 0x01]), Some(FirstBytes::Unknown));
    }

    #[test]
    fn http_methods() {
        for method in [
            "GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "CONNECT",
        ] {
            let line = format!("{method} / HTTP/1.1\r\n");
            let needed = (method.len() + 1).min(MAX_SNIFF_BYTES);
            assert_prefixes(&line.as_bytes()[..needed], FirstBytes::Http);
            assert_eq!(classify(line.as_bytes()), Some(FirstBytes::Http));
        }
        // MS-TSGU methods are longer than the sniff window.
        for method in ["RDG_OUT_DATA", "RDG_IN_DATA"] {
            let line = format!("{method} /remoteDesktopGateway/ HTTP/1.1\r\n");
            assert_prefixes(&line.as_bytes()[..MAX_SNIFF_BYTES], FirstBytes::Http);
        }
    }

    #[test]
    fn lower_case_methods_are_http_for_the_parser_to_answer() {
        assert_eq!(classify(b"get / HTTP/1.1"), Some(FirstBytes::Http));
        assert_eq!(classify(b"Post /"), Some(FirstBytes::Http));
    }

    #[test]
    fn not_http() {
        assert_eq!(classify(b"\r\nGET / "), Some(FirstBytes::Unknown));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(FirstBytes::Unknown));
        assert_eq!(classify(b" GET"), Some(FirstBytes::Unknown));
        assert_eq!(classify(b"G\r\n"), Some(FirstBytes::Unknown));
        assert_eq!(classify(b"GET\t/"), Some(FirstBytes::Unknown));
        assert_eq!(classify(b"\x00\x00"), Some(FirstBytes::Unknown));
    }

    #[test]
    fn proxy_v2_signature_is_unknown() {
        // Only the shell may accept PROXY v2, and only from trusted forwarders.
        let sig = crate::proxy_protocol::SIGNATURE;
        assert_eq!(classify(&sig), Some(FirstBytes::Unknown));
        assert_eq!(classify(&sig[..1]), Some(FirstBytes::Unknown));
        // PROXY v1 text ("PROXY TCP4 ...") looks like a method: the HTTP parser refuses it.
        assert_eq!(classify(b"PROXY TCP4 1.2.3.4"), Some(FirstBytes::Http));
    }

    proptest! {
        #[test]
        fn never_panics_and_decides_within_the_window(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let verdict = classify(&bytes);
            if bytes.len() >= MAX_SNIFF_BYTES {
                prop_assert!(verdict.is_some());
            }
            // More bytes never change a decision already made.
            if let Some(v) = verdict {
                for extra in 0..=bytes.len() {
                    if let Some(w) = classify(&bytes[..extra]) {
                        prop_assert_eq!(w, v);
                    }
                }
            }
        }
    }
}
