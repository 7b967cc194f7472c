//! Feeds arbitrary bytes to the client-certificate reader behind mutual TLS
//! (principal, serial, fingerprint): it must never panic, and what it
//! returns must be well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_edge::{ClientCert, RevokedSerials};

fuzz_target!(|data: &[u8]| {
    if let Some(c) = ClientCert::from_der(data) {
        assert_eq!(c.fingerprint.len(), 64);
        assert!(!c.principal.is_empty());
        let revoked = RevokedSerials::new([c.serial.as_str()]);
        assert!(revoked.contains(&c));
    }
});
