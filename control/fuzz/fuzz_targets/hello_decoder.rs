//! Feeds arbitrary bytes to the hello decoder, then negotiates with whatever it decoded.
#![no_main]

use gatehouse_control::frame::{Hello, HelloDecoder, HelloProgress, NodeName, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = HelloDecoder::new();
    if let Ok(HelloProgress::Done { hello, consumed }) = decoder.feed(data) {
        assert!(consumed <= data.len());
        let ours = Hello::new(Role::Broker, NodeName::new("fuzz").expect("valid name"));
        let _ = ours.negotiate(&hello, Role::Gateway);
    }
});
