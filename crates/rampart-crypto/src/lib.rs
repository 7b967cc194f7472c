//! Rampart's root of trust and the envelope format every plane encrypts with.
//!
//! The key hierarchy is: a 256-bit [`RootKey`] (from a key file, from a
//! passphrase through Argon2id, or from `RAMPART_ROOT_KEY`) wraps
//! [`DataKey`]s, which encrypt data with AES-256-GCM in the self-describing
//! [`envelope`] format. The root key never encrypts data itself: it only
//! wraps keys and proves, through a check blob, that it is the key a data
//! directory was created with.
//!
//! Key material lives in zeroizing buffers, is never printed by `Debug`, and
//! secrets are compared in constant time ([`ct_eq`]).
//!
//! This crate performs no I/O beyond reading and writing the root key file.
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

pub mod envelope;
mod error;
pub mod keys;
pub mod root;

pub use envelope::{open, seal};
pub use error::CryptoError;
pub use keys::{ct_eq, hex, hmac_sha256, random_array, random_nonce, DataKey, SecretBytes};
pub use root::{KdfParams, RootKey, RootKeyCheck};
