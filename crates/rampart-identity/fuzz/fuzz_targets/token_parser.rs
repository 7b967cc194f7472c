//! Feeds arbitrary bytes to the access-token parser and verifier: they must
//! never panic, and nothing but a token signed by the key may verify.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use rampart_identity::token::{parse, verify, Expectations};

/// The verifying keys, built once: deriving the public key per input made
/// this target run at about 2k inputs a second.
fn keys() -> &'static HashMap<String, ed25519_dalek::VerifyingKey> {
    static KEYS: OnceLock<HashMap<String, ed25519_dalek::VerifyingKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        HashMap::from([("k1".to_owned(), key)])
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse(text);
    let want = Expectations {
        keys: keys(),
        issuer: "rampart",
        audience: "rampart-api",
        now: 1_800_000_000,
        skew: 60,
    };
    // A fuzzer cannot forge an Ed25519 signature.
    assert!(verify(text, &want).is_err());
});
