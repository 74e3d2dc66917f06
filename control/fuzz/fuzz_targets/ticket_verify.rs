//! Verifies arbitrary text as a launch ticket. Must never panic nor accept.
#![no_main]

use gatehouse_control::ticket::{FarmKey, KeyId, KeyRing, UnixMillis};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ring = KeyRing::new(FarmKey::new(KeyId(1), [7; 32]));
    assert!(ring.verify(text, UnixMillis(0)).is_err());
});
