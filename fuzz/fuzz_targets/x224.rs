//! Arbitrary bytes into the X.224 Connection Request parser, whole and as every prefix: it
//! must never panic, a prefix of a complete request is never an error, and a complete
//! request stays within the size bound and the buffer.
#![no_main]

use gatehouse::gateway::x224::{parse_connection_request, X224Parse, MAX_CONNECTION_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let X224Parse::Complete(request) = parse_connection_request(data) {
        assert!(request.len <= MAX_CONNECTION_REQUEST && request.len <= data.len());
        for cut in 0..request.len {
            assert_eq!(parse_connection_request(&data[..cut]), X224Parse::Incomplete);
        }
        // Bytes after the request do not change it.
        assert_eq!(
            parse_connection_request(&data[..request.len]),
            X224Parse::Complete(request)
        );
    }
});
