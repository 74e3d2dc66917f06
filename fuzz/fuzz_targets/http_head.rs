//! Arbitrary bytes into the client API's request-head parser and router: they must never
//! panic, a complete head lies within the head bound, and every prefix of it is incomplete;
//! the bytes after it are read as its body (by length or chunked) and routed.
#![no_main]

use gatehouse::gateway::api::route;
use gatehouse::gateway::http::{parse_head, read_body, BodyRead, HeadParse, MAX_BODY, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let HeadParse::Complete(head) = parse_head(data) {
        assert!(head.head_len <= MAX_HEAD && head.head_len <= data.len());
        for cut in 0..head.head_len {
            assert_eq!(parse_head(&data[..cut]), HeadParse::Incomplete);
        }
        let rest = &data[head.head_len..];
        if let BodyRead::Complete { body, taken } = read_body(&head, rest) {
            assert!(taken <= rest.len() && (!head.chunked || body.len() <= MAX_BODY));
            let _ = route(&head, &body);
        }
    }
});
