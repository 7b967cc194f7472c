//! Feeds arbitrary text to the API key parser: it must never panic, and
//! what it accepts must have the documented shape.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_identity::apikey::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = parse(text) {
        assert!(text.starts_with("rk_"));
        assert_eq!(p.id.len(), 16);
    }
});
