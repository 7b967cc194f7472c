//! Password hashing with Argon2id, with parameters from configuration (cheap
//! ones in tests), and a dummy verification so that unknown accounts cost
//! the same work as known ones.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::IdentityError;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordParams {
    /// Memory, KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for PasswordParams {
    /// OWASP's Argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        PasswordParams {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

impl PasswordParams {
    /// The cheapest parameters Argon2 accepts; for tests only.
    pub fn insecure_for_tests() -> Self {
        PasswordParams {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

/// Hashes and verifies passwords.
#[derive(Debug, Clone)]
pub struct Passwords {
    argon: Argon2<'static>,
    dummy: String,
}

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 12;
/// The longest password accepted (bounds hashing work per request).
pub const MAX_PASSWORD_LEN: usize = 1024;

impl Passwords {
    /// A hasher with `params`.
    pub fn new(params: PasswordParams) -> Result<Self, IdentityError> {
        let p = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, None)
            .map_err(|e| IdentityError::Config(format!("argon2 parameters: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
        let mut me = Passwords {
            argon,
            dummy: String::new(),
        };
        me.dummy = me.hash(b"rampart dummy password for unknown accounts")?;
        Ok(me)
    }

    /// A PHC string for `password` with a fresh salt.
    pub fn hash(&self, password: &[u8]) -> Result<String, IdentityError> {
        let salt_bytes = rampart_crypto::random_array::<16>()?;
        let salt = SaltString::encode_b64(&salt_bytes)
            .map_err(|e| IdentityError::PasswordHash(e.to_string()))?;
        self.argon
            .hash_password(password, &salt)
            .map(|h| h.to_string())
            .map_err(|e| IdentityError::PasswordHash(e.to_string()))
    }

    /// Whether `password` matches `phc` (parameters are read from the hash,
    /// so older hashes keep working after a parameter change).
    pub fn verify(&self, password: &[u8], phc: &str) -> bool {
        if password.len() > MAX_PASSWORD_LEN {
            return false;
        }
        match PasswordHash::new(phc) {
            Ok(h) => self.argon.verify_password(password, &h).is_ok(),
            Err(_) => false,
        }
    }

    /// Spends the same work as a real verification and fails; for unknown
    /// accounts, so timing does not tell whether an account exists.
    pub fn verify_dummy(&self, password: &[u8]) -> bool {
        let _ = self.verify(password, &self.dummy);
        false
    }
}

/// Checks a new password's length.
pub fn check_new_password(password: &[u8]) -> Result<(), IdentityError> {
    if password.len() < MIN_PASSWORD_LEN || password.len() > MAX_PASSWORD_LEN {
        return Err(IdentityError::InvalidRequest(format!(
            "password must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let p = Passwords::new(PasswordParams::insecure_for_tests()).unwrap();
        let h = p.hash(b"correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(p.verify(b"correct horse battery", &h));
        assert!(!p.verify(b"wrong", &h));
        assert!(!p.verify(b"x", "not a hash"));
        assert!(!p.verify_dummy(b"anything"));
    }
}
