//! Feeds arbitrary bytes to the segment reader: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rampart_audit::format::read_segment(data);
});
