//! The multipart request body processor on arbitrary bytes: the first line is
//! the Content-Type (with the boundary), the rest the body. It must return
//! values or an error within its limits, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (ct, body) = match data.iter().position(|&b| b == b'\n') {
        Some(p) => (&data[..p], &data[p + 1..]),
        None => (&b"multipart/form-data; boundary=x"[..], data),
    };
    let ct = String::from_utf8_lossy(ct);
    let _ = rampart_waf::testing::body_processor("multipart", &ct, body);
});
