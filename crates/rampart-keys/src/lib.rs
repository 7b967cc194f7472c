//! Rampart's keys plane, in the manner of a cloud KMS.
//!
//! Owns: named keys per environment, each with versions whose material is
//! generated here, kept wrapped by the root key and unwrapped only in memory
//! (zeroized on drop); the [`ciphertext`] format; [`policy`] decisions,
//! default deny, shared with the secrets plane; rotation and deletion
//! schedules. Who a caller is comes from the identity plane, as a
//! [`Principal`] inside a [`Caller`].
//!
//! Never: logs or returns key material (only data keys the caller asked
//! for), lets a principal cross an environment, or performs an operation
//! the audit log did not take a record of (fail closed). It reads time only
//! from the [`rampart_core::Clock`] it is given, and speaks no HTTP: the
//! control API and the CLI wire these calls.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod auditor;
pub mod ciphertext;
pub mod envelope;
mod error;
pub mod policy;
mod principal;
mod service;

pub use auditor::Auditor;
pub use envelope::{Envelope, EnvelopeLimits};
pub use error::KeysError;
pub use policy::{Conditions, Decision, Effect, Policies, Statement};
pub use principal::{Caller, Principal};
pub use service::{
    Context, GeneratedDataKey, KeyInfo, KeyService, KeySpec, KeyState, VersionInfo, CACHE_TTL_SECS,
    DEFAULT_DELETION_DAYS, DEFAULT_ROTATION_DAYS, MAX_PLAINTEXT,
};

/// Checks a key, environment or service name: 1 to 64 characters from
/// `a-z`, `0-9`, `.`, `_` and `-`, not starting with a punctuation mark.
pub fn valid_name(name: &str) -> Result<(), KeysError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(KeysError::InvalidName(name.chars().take(80).collect()))
    }
}
