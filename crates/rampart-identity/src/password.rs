//! Password hashing with Argon2id, with parameters from configuration (cheap
//! ones in tests), and a dummy verification so that unknown accounts cost
//! the same work as known ones.
//!
//! Requests hash and verify off the async runtime ([`Passwords::hash_async`],
//! [`Passwords::verify_async`]): each takes tens of milliseconds of CPU and
//! its memory cost, which on an executor thread would stall every other
//! request that thread serves. At most one per core runs at once, so a
//! flood of logins cannot take more memory than that.

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
    /// Hashes and verifications running at once, off the runtime.
    running: std::sync::Arc<tokio::sync::Semaphore>,
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut me = Passwords {
            argon,
            dummy: String::new(),
            running: std::sync::Arc::new(tokio::sync::Semaphore::new(cores)),
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

    /// [`Passwords::hash`] on a blocking thread, at most one per core at once.
    pub async fn hash_async(&self, password: &[u8]) -> Result<String, IdentityError> {
        let _permit = self.permit().await?;
        let me = self.clone();
        let pw = zeroize::Zeroizing::new(password.to_vec());
        tokio::task::spawn_blocking(move || me.hash(&pw))
            .await
            .map_err(|_| IdentityError::PasswordHash("the hashing task did not finish".into()))?
    }

    /// [`Passwords::verify`] against `phc`, or with `None`
    /// [`Passwords::verify_dummy`], on a blocking thread, at most one per
    /// core at once. False if the task could not run.
    pub async fn verify_async(&self, password: &[u8], phc: Option<&str>) -> bool {
        let Ok(_permit) = self.permit().await else {
            return false;
        };
        self.verify_held(password, phc).await
    }

    /// A turn to verify, for a caller that must check and count attempts
    /// around the verification (the login throttle): holding it from the
    /// throttle check to the failure count keeps parallel attempts from
    /// all passing the check before any failure is counted.
    pub(crate) async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, IdentityError> {
        self.running
            .acquire()
            .await
            .map_err(|_| IdentityError::PasswordHash("password checks are shut down".into()))
    }

    /// [`Passwords::verify_async`] for a caller holding a [`Passwords::permit`].
    pub(crate) async fn verify_held(&self, password: &[u8], phc: Option<&str>) -> bool {
        let me = self.clone();
        let pw = zeroize::Zeroizing::new(password.to_vec());
        let phc = phc.map(str::to_owned);
        tokio::task::spawn_blocking(move || match phc {
            Some(h) => me.verify(&pw, &h),
            None => me.verify_dummy(&pw),
        })
        .await
        .unwrap_or(false)
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

#[cfg(test)]
mod off_runtime_tests {
    use super::*;

    /// While a costly verification runs, the runtime's one thread still
    /// serves other tasks.
    #[tokio::test(flavor = "current_thread")]
    async fn verification_leaves_the_runtime_free() {
        let p = Passwords::new(PasswordParams {
            m_cost_kib: 8 * 1024,
            t_cost: 2,
            p_cost: 1,
        })
        .unwrap();
        let phc = p.hash(b"correct horse battery staple").unwrap();
        let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        let started = std::time::Instant::now();
        assert!(
            p.verify_async(b"correct horse battery staple", Some(&phc))
                .await
        );
        assert!(!p.verify_async(b"wrong", Some(&phc)).await);
        assert!(!p.verify_async(b"anything", None).await);
        let took = started.elapsed();
        ticker.abort();
        // Thousands of ticks while three hashes ran; on the runtime thread
        // itself there would be none until they were done.
        let n = ticks.load(std::sync::atomic::Ordering::SeqCst);
        assert!(n > 100, "{n} ticks in {took:?}");
        let h = p.hash_async(b"another password here").await.unwrap();
        assert!(p.verify(b"another password here", &h));
    }
}
