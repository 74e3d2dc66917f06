//! Arbitrary text as a configuration file: loading must never panic, and every error must
//! carry a position inside the text (or 0 when unknown) and a key.
#![no_main]

use gatehouse::config::{load_str, ValidateOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(errors) = load_str(text, "fuzz.toml", ValidateOptions::default()) {
        let lines = text.lines().count().max(1) + 1;
        for e in errors.0 {
            assert!(e.line <= lines, "line {} past the end ({lines})", e.line);
            assert!(!e.key.is_empty());
        }
    }
});
