//! The xml request body processor on arbitrary bytes: it must return values
//! or an error within its limits, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rampart_waf::testing::body_processor("xml", "", data);
});
