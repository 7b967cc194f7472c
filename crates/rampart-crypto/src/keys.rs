//! Zeroizing key types and the small primitives built on them.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::CryptoError;

/// A 256-bit symmetric key for AES-256-GCM. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(DataKey(random_array::<32>()?))
    }

    /// Takes ownership of raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(bytes)
    }

    /// Builds a key from a slice that must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::Malformed("data key is not 32 bytes"))?;
        Ok(DataKey(arr))
    }

    /// The raw key bytes, for handing to a cipher.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

/// Plaintext secret bytes (a decrypted secret, a pepper, a private key).
/// Zeroized on drop; `Debug` is redacted.
#[derive(Clone, Default)]
pub struct SecretBytes(Vec<u8>);

/// Wipes the whole allocation (what `zeroize` does for a `Vec`) in one
/// bulk pass: `Vec`'s own `zeroize` first writes each initialised byte
/// with its own volatile store and then bulk-wipes the full capacity,
/// which covers those bytes again. After `clear` the spare capacity is
/// the whole allocation, so the bulk wipe alone leaves nothing behind.
/// The per-byte pass cost about 0.3 µs per decrypted 1 KiB message here
/// (`crates/rampart-keys/BENCH.md`).
impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.clear();
        self.0.spare_capacity_mut().zeroize();
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.zeroize();
    }
}

impl ZeroizeOnDrop for SecretBytes {}

impl SecretBytes {
    /// Wraps bytes that are secret.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(bytes)
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(mut z: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(std::mem::take(&mut *z))
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| CryptoError::Random)?;
    Ok(out)
}

thread_local! {
    /// Operating-system randomness for nonces, fetched 4 KiB at a time so
    /// that a nonce costs no system call. Every byte is handed out once.
    static NONCE_POOL: std::cell::RefCell<([u8; 4096], usize)> =
        const { std::cell::RefCell::new(([0; 4096], 4096)) };
}

/// A fresh random 96-bit AES-GCM nonce from the operating system's CSPRNG,
/// served from a per-thread pool (see `NONCE_POOL`) instead of one
/// `getrandom` call each: on a VM that call costs about as much as sealing
/// a kilobyte. Nonces are not secret, so the pool is not zeroized. Rampart
/// never forks without exec, so no two processes share a pool.
pub fn random_nonce() -> Result<[u8; 12], CryptoError> {
    NONCE_POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (bytes, used) = &mut *pool;
        if *used + 12 > bytes.len() {
            getrandom::fill(bytes).map_err(|_| CryptoError::Random)?;
            *used = 0;
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(bytes.get(*used..*used + 12).ok_or(CryptoError::Random)?);
        *used += 12;
        Ok(nonce)
    })
}

/// Compares two byte strings in constant time (for equal lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Lower-case hex of `bytes` (token hashes, ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            s.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

/// HMAC-SHA-256 of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pooled_nonces_are_distinct_across_refills() {
        let mut seen = std::collections::HashSet::new();
        // Several refills of the 4 KiB pool.
        for _ in 0..2_000 {
            assert!(seen.insert(super::random_nonce().unwrap()));
        }
    }

    use super::*;

    #[test]
    fn zeroize_empties_secret_bytes_in_place() {
        let mut s = SecretBytes::new(b"correct horse battery staple".to_vec());
        let cap = s.0.capacity();
        s.zeroize();
        assert!(s.expose().is_empty());
        // Wiped where it lies, not moved to a new allocation.
        assert_eq!(s.0.capacity(), cap);
        let mut empty = SecretBytes::default();
        empty.zeroize();
        assert!(empty.expose().is_empty());
    }

    #[test]
    fn debug_never_shows_key_bytes() {
        let k = DataKey::from_bytes([0xAB; 32]);
        let s = format!("{k:?}");
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("ab"),
            "{s}"
        );
        let s = format!("{:?}", SecretBytes::new(b"hunter2".to_vec()));
        assert!(!s.contains("hunter2"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn hmac_rfc4231_case_2() {
        let out = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&out),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
