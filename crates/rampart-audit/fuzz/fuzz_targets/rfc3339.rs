//! Feeds arbitrary text to the RFC 3339 parser behind `rampart audit search
//! --since/--until`: it must never panic, and whatever it accepts must come
//! back unchanged through the formatter and the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_audit::{format_rfc3339, parse_rfc3339, unix_nanos};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = parse_rfc3339(text) {
        let nanos = unix_nanos(t);
        if nanos < u64::MAX {
            let again = parse_rfc3339(&format_rfc3339(nanos));
            assert_eq!(again.ok().map(unix_nanos), Some(nanos), "{text}");
        }
    }
});
