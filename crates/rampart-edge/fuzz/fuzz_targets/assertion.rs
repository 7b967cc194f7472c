//! Feeds arbitrary bytes to the edge-assertion check a service runs on
//! `X-Rampart-Assertion`, which anyone who reaches the service directly can
//! set: it must never panic and nothing unsigned may verify. The same bytes
//! are then signed as the claims part with the edge's key, so the claims
//! decoding and the time and service checks behind the signature are
//! driven too.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use rampart_edge::assertion::verify;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let vk = key.verifying_key();
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(verify(text, &vk, NOW, "billing").is_err());
    }
    let signed = format!("v2.{}", B64.encode(data));
    let header = format!(
        "{signed}.{}",
        B64.encode(key.sign(signed.as_bytes()).to_bytes())
    );
    for now in [0, NOW, u64::MAX] {
        if let Ok(c) = verify(&header, &vk, now, "billing") {
            assert!(c.svc == "billing");
            assert!(now < c.exp);
        }
    }
});
