//! The root key: where it comes from, how it wraps other keys, and how a data
//! directory recognises it.

use std::io::Write;
use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::{envelope, random_array, CryptoError, DataKey, SecretBytes};

const WRAP_INFO: &[u8] = b"rampart/v1/root/wrap";
const CHECK_INFO: &[u8] = b"rampart/v1/root/check";
const CHECK_PLAINTEXT: &[u8] = b"rampart root key check v1";

/// Argon2id parameters and salt for a passphrase-derived root key. Not secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub m_cost_kib: u32,
    /// Number of passes.
    pub t_cost: u32,
    /// Degree of parallelism.
    pub p_cost: u32,
    /// Random salt, base64.
    pub salt_b64: String,
}

impl KdfParams {
    /// OWASP's recommended Argon2id settings (64 MiB, 3 passes) with a fresh salt.
    pub fn recommended() -> Result<Self, CryptoError> {
        Ok(KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
            salt_b64: B64.encode(random_array::<16>()?),
        })
    }
}

/// The proof, stored beside the data, that a root key is the right one: an
/// envelope of a known text under a key derived from the root key. Opening it
/// with another root key fails authentication instead of yielding garbage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootKeyCheck(pub Vec<u8>);

/// The 256-bit root key. Zeroized on drop; `Debug` is redacted.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RootKey([u8; 32]);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey([redacted])")
    }
}

impl RootKey {
    /// A fresh root key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(RootKey(random_array::<32>()?))
    }

    /// Parses a base64 key (as given in `RAMPART_ROOT_KEY` or a key file).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let raw = Zeroizing::new(
            B64.decode(text.trim().as_bytes())
                .map_err(|_| CryptoError::InvalidRootKey("not valid base64".into()))?,
        );
        let arr: Zeroizing<[u8; 32]> = Zeroizing::new(raw.as_slice().try_into().map_err(|_| {
            CryptoError::InvalidRootKey(format!(
                "decodes to {} bytes, expected 32 (a 256-bit key)",
                raw.len()
            ))
        })?);
        // The local copy is wiped when it goes out of scope.
        Ok(RootKey(*arr))
    }

    /// The key as base64, for writing to a key file or showing once.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(B64.encode(self.0))
    }

    /// Derives the root key from a passphrase with Argon2id.
    pub fn from_passphrase(passphrase: &[u8], params: &KdfParams) -> Result<Self, CryptoError> {
        if passphrase.is_empty() {
            return Err(CryptoError::Kdf("passphrase is empty".into()));
        }
        let salt = B64
            .decode(params.salt_b64.as_bytes())
            .map_err(|_| CryptoError::Kdf("salt is not valid base64".into()))?;
        let p = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        let mut out = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
            .hash_password_into(passphrase, &salt, out.as_mut())
            .map_err(|e| CryptoError::Kdf(e.to_string()))?;
        // The local copy is wiped when it goes out of scope.
        Ok(RootKey(*out))
    }

    /// Reads a key file holding the key in base64. Refuses files that others
    /// can read, and files that do not hold exactly one 256-bit key.
    pub fn read_file(path: &Path) -> Result<Self, CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CryptoError::InvalidRootKey(format!(
                    "{} has mode {mode:04o}: others can read it; run chmod 600 on it",
                    path.display()
                )));
            }
        }
        if meta.len() > 4096 {
            return Err(CryptoError::InvalidRootKey(format!(
                "{} is too large to be a key file",
                path.display()
            )));
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        RootKey::from_base64(&text).map_err(|e| match e {
            CryptoError::InvalidRootKey(why) => {
                CryptoError::InvalidRootKey(format!("{}: {why}", path.display()))
            }
            other => other,
        })
    }

    /// Writes the key to a new file with mode 0600. Fails if the file exists.
    pub fn write_file(&self, path: &Path) -> Result<(), CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(io)?;
        let mut text = self.to_base64();
        text.push('\n');
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    fn derive(&self, info: &[u8]) -> DataKey {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF's limit of 255 * 32, so expand cannot fail.
        if hk.expand(info, &mut okm).is_err() {
            okm = [0u8; 32];
        }
        let k = DataKey::from_bytes(okm);
        okm.zeroize();
        k
    }

    /// The check blob to store with a new data directory.
    pub fn check(&self) -> Result<RootKeyCheck, CryptoError> {
        let k = self.derive(CHECK_INFO);
        envelope::seal(&k, "root-check", CHECK_PLAINTEXT, b"").map(RootKeyCheck)
    }

    /// Confirms this is the root key that made `check`.
    pub fn verify(&self, check: &RootKeyCheck) -> Result<(), CryptoError> {
        let k = self.derive(CHECK_INFO);
        match envelope::open(&k, &check.0, b"") {
            Ok(pt) if crate::ct_eq(&pt, CHECK_PLAINTEXT) => Ok(()),
            _ => Err(CryptoError::RootKeyMismatch),
        }
    }

    /// Wraps secret bytes (a data key, a signing seed, a pepper) for storage;
    /// `purpose` names what it is and is bound into the envelope.
    pub fn wrap(&self, secret: &[u8], purpose: &str) -> Result<Vec<u8>, CryptoError> {
        let k = self.derive(WRAP_INFO);
        envelope::seal(&k, "root", secret, purpose.as_bytes())
    }

    /// Unwraps what [`RootKey::wrap`] made for the same purpose.
    pub fn unwrap_secret(&self, blob: &[u8], purpose: &str) -> Result<SecretBytes, CryptoError> {
        let k = self.derive(WRAP_INFO);
        envelope::open(&k, blob, purpose.as_bytes()).map(SecretBytes::from)
    }

    /// Wraps a data key.
    pub fn wrap_key(&self, key: &DataKey, purpose: &str) -> Result<Vec<u8>, CryptoError> {
        self.wrap(key.expose(), purpose)
    }

    /// Unwraps a data key wrapped by [`RootKey::wrap_key`].
    pub fn unwrap_key(&self, blob: &[u8], purpose: &str) -> Result<DataKey, CryptoError> {
        let s = self.unwrap_secret(blob, purpose)?;
        DataKey::from_slice(s.expose())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_params() -> KdfParams {
        KdfParams {
            m_cost_kib: 1024,
            t_cost: 1,
            p_cost: 1,
            salt_b64: B64.encode([7u8; 16]),
        }
    }

    #[test]
    fn check_accepts_right_key_and_refuses_wrong_one() {
        let a = RootKey::generate().unwrap();
        let b = RootKey::generate().unwrap();
        let check = a.check().unwrap();
        a.verify(&check).unwrap();
        let err = b.verify(&check).unwrap_err();
        assert_eq!(
            err.to_string(),
            "root key does not match this data directory"
        );
    }

    #[test]
    fn wrap_is_bound_to_purpose() {
        let root = RootKey::generate().unwrap();
        let dk = DataKey::generate().unwrap();
        let w = root.wrap_key(&dk, "store").unwrap();
        assert_eq!(root.unwrap_key(&w, "store").unwrap().expose(), dk.expose());
        assert!(root.unwrap_key(&w, "audit").is_err());
        let other = RootKey::generate().unwrap();
        assert!(other.unwrap_key(&w, "store").is_err());
    }

    #[test]
    fn passphrase_derivation_is_deterministic_per_salt() {
        let p = fast_params();
        let a = RootKey::from_passphrase(b"correct horse", &p).unwrap();
        let b = RootKey::from_passphrase(b"correct horse", &p).unwrap();
        let c = RootKey::from_passphrase(b"wrong horse", &p).unwrap();
        assert_eq!(a.0, b.0);
        assert_ne!(a.0, c.0);
        assert!(RootKey::from_passphrase(b"", &p).is_err());
    }

    #[test]
    fn base64_and_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.key");
        let k = RootKey::generate().unwrap();
        k.write_file(&path).unwrap();
        let back = RootKey::read_file(&path).unwrap();
        assert_eq!(back.0, k.0);
        // The file already exists: never overwritten.
        assert!(k.write_file(&path).is_err());
        // A truncated file is a clear error.
        use std::os::unix::fs::PermissionsExt;
        let t = dir.path().join("trunc.key");
        std::fs::write(&t, &k.to_base64()[..20]).unwrap();
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = RootKey::read_file(&t).unwrap_err().to_string();
        assert!(e.contains("invalid root key"), "{e}");
        // A world-readable file is refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(RootKey::read_file(&path).is_err());
        assert!(RootKey::from_base64("!!!").is_err());
        assert!(format!("{k:?}").contains("redacted"));
    }
}
