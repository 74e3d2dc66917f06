//! Arbitrary bytes into the client API's request-head parser and router: they must never
//! panic, a complete head lies within the head bound, and every prefix of it is incomplete.
#![no_main]

use gatehouse::gateway::api::route;
use gatehouse::gateway::http::{parse_head, HeadParse, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let HeadParse::Complete(head) = parse_head(data) {
        assert!(head.head_len <= MAX_HEAD && head.head_len <= data.len());
        for cut in 0..head.head_len {
            assert_eq!(parse_head(&data[..cut]), HeadParse::Incomplete);
        }
        let rest = &data[head.head_len..];
        let _ = route(&head, &rest[..rest.len().min(head.content_length)]);
    }
});
