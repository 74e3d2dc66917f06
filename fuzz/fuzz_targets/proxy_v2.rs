//! Arbitrary bytes into the PROXY v2 parser, whole and as every prefix: it must never panic,
//! a prefix of a complete header is never an error, and what parses re-encodes to itself.
#![no_main]

use gatehouse::proxy_protocol::{parse_with_limit, Parsed, MAX_HEADER_LEN_LIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse_with_limit(data, MAX_HEADER_LEN_LIMIT);
    if let Ok(Parsed::Complete { header, consumed }) = &whole {
        for cut in 0..*consumed {
            assert!(matches!(parse_with_limit(&data[..cut], MAX_HEADER_LEN_LIMIT), Ok(Parsed::Incomplete { .. })));
        }
        let mut out = Vec::new();
        if header.encode(&mut out).is_ok() {
            assert!(matches!(parse_with_limit(&out, MAX_HEADER_LEN_LIMIT), Ok(Parsed::Complete { .. })));
        }
    }
});
