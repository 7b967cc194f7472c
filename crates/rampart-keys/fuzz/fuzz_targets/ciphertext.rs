#![no_main]
//! The ciphertext parser must take any bytes without panicking, and what it
//! accepts must describe a slice of its input.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = rampart_keys::ciphertext::parse(data) {
        assert!(p.header.len() + p.nonce.len() + p.body.len() == data.len());
        assert!(p.version > 0);
    }
});
