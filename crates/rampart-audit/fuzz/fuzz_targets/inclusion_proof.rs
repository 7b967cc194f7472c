//! Feeds arbitrary bytes to the inclusion-proof checker, as `rampart audit
//! verify-proof` receives them from whoever hands over a proof: parsing and
//! checking must never panic, and no fuzzed proof may verify (that would
//! take a forged checkpoint signature). The audit path is also walked
//! directly, since the signature check stops most inputs before it.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use rampart_audit::merkle::{hash_from_hex, leaf_hash, root_from_path};
use rampart_audit::{verify_proof, InclusionProof};

fuzz_target!(|data: &[u8]| {
    let Ok(proof) = serde_json::from_slice::<InclusionProof>(data) else {
        return;
    };
    let key = SigningKey::from_bytes(&[9u8; 32]).verifying_key();
    assert!(verify_proof(&proof, &key).is_err());
    let path: Vec<_> = proof
        .audit_path
        .iter()
        .filter_map(|h| hash_from_hex(h))
        .collect();
    let leaf = leaf_hash(proof.record.as_bytes());
    if let Some(root) = root_from_path(proof.seq, proof.tree_size, &leaf, &path) {
        assert!(proof.seq < proof.tree_size);
        let _ = root;
    }
});
