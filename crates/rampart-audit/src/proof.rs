//! Inclusion proofs: a record, its RFC 6962 audit path and the signed
//! checkpoint it leads to. Checking one needs only the public key.

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::error::AuditError;
use crate::event::Tier;
use crate::format::BODY_FIXED;
use crate::merkle::{hash_from_hex, leaf_hash, root_from_path};

/// Proof that a record is in a tier's Merkle tree as signed by a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The tier.
    pub tier: Tier,
    /// The record's sequence number (its leaf index).
    pub seq: u64,
    /// The tree size the proof is against (the checkpoint's count).
    pub tree_size: u64,
    /// The encrypted record body, base64: the Merkle leaf.
    pub record: String,
    /// Its leaf hash, hex.
    pub leaf_hash: String,
    /// Sibling hashes from the leaf up, hex.
    pub audit_path: Vec<String>,
    /// The signed checkpoint.
    pub checkpoint: Checkpoint,
}

/// Checks an inclusion proof: the checkpoint's signature, the leaf, and the
/// path up to the signed root.
pub fn verify_proof(proof: &InclusionProof, key: &VerifyingKey) -> Result<(), AuditError> {
    let cp = proof
        .checkpoint
        .verified(key)
        .map_err(|_| AuditError::InvalidProof("checkpoint signature does not verify"))?;
    if cp.cp.tier != proof.tier {
        return Err(AuditError::InvalidProof("checkpoint is for another tier"));
    }
    if cp.cp.count != proof.tree_size || proof.seq >= proof.tree_size {
        return Err(AuditError::InvalidProof(
            "tree size does not match the checkpoint",
        ));
    }
    let record = base64::engine::general_purpose::STANDARD
        .decode(&proof.record)
        .map_err(|_| AuditError::InvalidProof("record is not base64"))?;
    if record.len() < BODY_FIXED {
        return Err(AuditError::InvalidProof("record is too short"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(record.get(..8).unwrap_or(&[0; 8]));
    if u64::from_le_bytes(seq) != proof.seq {
        return Err(AuditError::InvalidProof(
            "record carries another sequence number",
        ));
    }
    let leaf = leaf_hash(&record);
    if hash_from_hex(&proof.leaf_hash) != Some(leaf) {
        return Err(AuditError::InvalidProof(
            "leaf hash does not match the record",
        ));
    }
    let path = proof
        .audit_path
        .iter()
        .map(|h| hash_from_hex(h))
        .collect::<Option<Vec<_>>>()
        .ok_or(AuditError::InvalidProof("audit path is malformed"))?;
    match root_from_path(proof.seq, proof.tree_size, &leaf, &path) {
        Some(root) if root == cp.root => Ok(()),
        _ => Err(AuditError::InvalidProof(
            "audit path does not lead to the signed root",
        )),
    }
}
