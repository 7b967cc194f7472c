#![no_main]
//! The envelope message parser must take any bytes without panicking, and
//! what it accepts must be its input, split without gaps or overlaps.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = rampart_keys::envelope::parse(data) {
        assert_eq!(p.header.len() + p.nonce.len() + p.body.len() + p.tag.len(), data.len());
        assert_eq!(p.header.len(), 3 + p.wrapped.len());
        assert!(!p.wrapped.is_empty());
        assert_eq!(&data[3..3 + p.wrapped.len()], p.wrapped);
    }
});
