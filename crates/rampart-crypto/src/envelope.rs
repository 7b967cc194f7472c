//! The self-describing AES-256-GCM envelope.
//!
//! ```text
//! +------+-----+-----------+-----------+------------------------+
//! | 0x01 |  L  | key id(L) | nonce(12) | ciphertext || tag (16) |
//! +------+-----+-----------+-----------+------------------------+
//! ```
//!
//! The header (format byte, length and key id) and the caller's context are
//! both bound as associated data, so an envelope cannot be moved to another
//! key id or another context (a secret's name, a record's namespace) without
//! failing to open. Nonces are 96 random bits: each key encrypts far fewer
//! than 2^32 messages, so collisions are negligible.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::{random_nonce, CryptoError, DataKey};

/// The format byte of version 1 envelopes.
pub const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

fn aad(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.len() + 8);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(context.len() as u64).to_be_bytes());
    aad.extend_from_slice(context);
    aad
}

/// Encrypts `plaintext` under `key`, naming the key `key_id` in the header and
/// binding `context` as associated data.
pub fn seal(
    key: &DataKey,
    key_id: &str,
    plaintext: &[u8],
    context: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let id = key_id.as_bytes();
    let id_len = u8::try_from(id.len()).map_err(|_| CryptoError::Malformed("key id too long"))?;
    let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(FORMAT_V1);
    out.push(id_len);
    out.extend_from_slice(id);
    let header_len = out.len();
    let nonce: [u8; NONCE_LEN] = random_nonce()?;
    let cipher = Aes256Gcm::new(key.expose().into());
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad(out.get(..header_len).unwrap_or_default(), context),
            },
        )
        .map_err(|_| CryptoError::Malformed("encryption failed"))?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The parts of an envelope, borrowed from its bytes.
struct Parts<'a> {
    header: &'a [u8],
    key_id: &'a str,
    nonce: &'a [u8],
    body: &'a [u8],
}

fn split(blob: &[u8]) -> Result<Parts<'_>, CryptoError> {
    let (&format, rest) = blob
        .split_first()
        .ok_or(CryptoError::Malformed("empty ciphertext"))?;
    if format != FORMAT_V1 {
        return Err(CryptoError::Malformed("unknown envelope format"));
    }
    let (&id_len, rest) = rest
        .split_first()
        .ok_or(CryptoError::Malformed("truncated header"))?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed("truncated ciphertext"));
    }
    let (id, rest) = rest.split_at(id_len);
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let key_id = std::str::from_utf8(id).map_err(|_| CryptoError::Malformed("key id not UTF-8"))?;
    let header = blob
        .get(..2 + id_len)
        .ok_or(CryptoError::Malformed("truncated header"))?;
    Ok(Parts {
        header,
        key_id,
        nonce,
        body,
    })
}

/// The key id an envelope names, so the caller can pick the key to open it with.
pub fn key_id(blob: &[u8]) -> Result<&str, CryptoError> {
    split(blob).map(|p| p.key_id)
}

/// Decrypts an envelope made by [`seal`] with the same key and context.
pub fn open(key: &DataKey, blob: &[u8], context: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let parts = split(blob)?;
    let cipher = Aes256Gcm::new(key.expose().into());
    cipher
        .decrypt(
            Nonce::from_slice(parts.nonce),
            Payload {
                msg: parts.body,
                aad: &aad(parts.header, context),
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let k = DataKey::generate().unwrap();
        let blob = seal(&k, "svc/v1", b"attack at dawn", b"ctx").unwrap();
        assert_eq!(key_id(&blob).unwrap(), "svc/v1");
        assert_eq!(&open(&k, &blob, b"ctx").unwrap()[..], b"attack at dawn");
        // Wrong context, wrong key, flipped byte: all refused.
        assert!(matches!(
            open(&k, &blob, b"other"),
            Err(CryptoError::Decrypt)
        ));
        let k2 = DataKey::generate().unwrap();
        assert!(matches!(
            open(&k2, &blob, b"ctx"),
            Err(CryptoError::Decrypt)
        ));
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 0x01;
            assert!(open(&k, &t, b"ctx").is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let k = DataKey::generate().unwrap();
        let blob = seal(&k, "id", b"x", b"").unwrap();
        for len in 0..blob.len() {
            assert!(open(&k, &blob[..len], b"").is_err());
        }
        assert!(open(&k, &[2, 0, 0], b"").is_err());
        assert!(open(&k, &[1, 255], b"").is_err());
    }

    #[test]
    fn nonces_differ() {
        let k = DataKey::generate().unwrap();
        let a = seal(&k, "id", b"same", b"").unwrap();
        let b = seal(&k, "id", b"same", b"").unwrap();
        assert_ne!(a, b);
    }
}
