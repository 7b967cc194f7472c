use thiserror::Error;

/// Everything that can go wrong in this crate. No variant ever carries key
/// material or plaintext.
#[derive(Debug, Error)]
pub enum CryptoError {
    /// A ciphertext failed authentication: wrong key, wrong context, or tampering.
    #[error("decryption failed: wrong key, wrong context or tampered ciphertext")]
    Decrypt,
    /// An envelope is too short or has an unknown format.
    #[error("malformed ciphertext: {0}")]
    Malformed(&'static str),
    /// The root key presented is not the one the data directory was created with.
    #[error("root key does not match this data directory")]
    RootKeyMismatch,
    /// A root key (file, variable or base64 text) is not a valid 256-bit key.
    #[error("invalid root key: {0}")]
    InvalidRootKey(String),
    /// Deriving a key from a passphrase failed.
    #[error("key derivation failed: {0}")]
    Kdf(String),
    /// The operating system's random source failed.
    #[error("random number generator failed")]
    Random,
    /// Reading or writing the root key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}
