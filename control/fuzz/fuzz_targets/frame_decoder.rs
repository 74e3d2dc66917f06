//! Feeds arbitrary bytes, split at an arbitrary point, to the frame decoder and types every
//! frame it yields. Must never panic; frames must respect the bound.
#![no_main]

use gatehouse_control::frame::FrameDecoder;
use gatehouse_control::message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(rest.len());
    let mut decoder = FrameDecoder::new(4096);
    for chunk in [&rest[..split], &rest[split..]] {
        decoder.feed(chunk);
        while let Ok(Some(frame)) = decoder.next_frame() {
            assert!(frame.wire_length() <= 4096);
            let _ = message::decode(&frame);
        }
    }
});
