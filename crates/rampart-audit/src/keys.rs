//! The audit keys: one AES-256-GCM key that encrypts records and one Ed25519
//! key that signs checkpoints. The caller keeps them wrapped by its root key
//! and hands them over unwrapped; this crate never stores them.

use std::fmt;

use aes_gcm::aead::{Aead, AeadInPlace, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::error::AuditError;

/// The keys an [`crate::Audit`] log writes with.
pub struct AuditKeys {
    /// Encrypts record bodies (AES-256-GCM).
    pub encryption_key: Zeroizing<[u8; 32]>,
    /// Signs checkpoints (Ed25519).
    pub signing_key: SigningKey,
}

impl fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKeys([redacted])")
    }
}

impl AuditKeys {
    /// Fresh random keys from the operating system.
    pub fn generate() -> Result<Self, AuditError> {
        let mut enc = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(enc.as_mut()).map_err(AuditError::Random)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(AuditError::Random)?;
        Ok(AuditKeys {
            encryption_key: enc,
            signing_key: SigningKey::from_bytes(&seed),
        })
    }

    /// The public key that checks checkpoints; all `verify` needs.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }
}

/// Associated data binding a ciphertext to its tier and time.
fn aad(tier_code: u8, time: u64) -> [u8; 25] {
    let mut a = [0u8; 25];
    a[..16].copy_from_slice(b"rampart-audit v1");
    a[16] = tier_code;
    a[17..].copy_from_slice(&time.to_le_bytes());
    a
}

/// Record encryption with one key.
pub(crate) struct RecordCipher {
    aead: Aes256Gcm,
}

impl RecordCipher {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        RecordCipher {
            aead: Aes256Gcm::new(key.into()),
        }
    }

    /// Encrypts `plain` in place (the tag is appended), so a record costs
    /// no second buffer.
    pub(crate) fn seal(
        &self,
        tier_code: u8,
        time: u64,
        nonce: &[u8; 12],
        mut plain: Vec<u8>,
    ) -> Result<Vec<u8>, AuditError> {
        self.aead
            .encrypt_in_place(Nonce::from_slice(nonce), &aad(tier_code, time), &mut plain)
            .map_err(|_| AuditError::Encrypt)?;
        Ok(plain)
    }

    pub(crate) fn open(
        &self,
        tier_code: u8,
        time: u64,
        nonce: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        if nonce.len() != 12 {
            return None;
        }
        self.aead
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad(tier_code, time),
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_seal_round_trips() {
        let k = AuditKeys::generate().unwrap();
        assert_eq!(format!("{k:?}"), "AuditKeys([redacted])");
        let c = RecordCipher::new(&k.encryption_key);
        let sealed = c.seal(1, 7, &[3; 12], b"hello".to_vec()).unwrap();
        assert_eq!(c.open(1, 7, &[3; 12], &sealed).unwrap(), b"hello");
        assert!(c.open(2, 7, &[3; 12], &sealed).is_none());
        assert!(c.open(1, 8, &[3; 12], &sealed).is_none());
    }
}
