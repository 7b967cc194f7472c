use thiserror::Error;

/// Everything that can go wrong in the keys plane. No variant carries key
/// material, plaintext or a token.
#[derive(Debug, Error)]
pub enum KeysError {
    /// The policy refused the request; `reason` says which rule decided.
    #[error("access denied: {reason}")]
    Denied {
        /// Why (the wall, the statement, or that none allowed it).
        reason: String,
    },
    /// No key of that name in that environment.
    #[error("unknown key {env}/{name}")]
    UnknownKey {
        /// Environment.
        env: String,
        /// Key name.
        name: String,
    },
    /// A key of that name already exists.
    #[error("key {env}/{name} already exists")]
    KeyExists {
        /// Environment.
        env: String,
        /// Key name.
        name: String,
    },
    /// A name (key, environment, service) is not acceptable.
    #[error("invalid name {0:?}: use 1-64 characters from a-z, 0-9, '.', '_' and '-'")]
    InvalidName(String),
    /// A request argument is out of range or inconsistent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A named request field is out of range (the API names it in its
    /// error's `field`).
    #[error("invalid {field}: {message}")]
    InvalidField {
        /// The field, as the control API's request bodies name it.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A ciphertext could not be parsed.
    #[error("malformed ciphertext: {0}")]
    Malformed(&'static str),
    /// Authentication of a ciphertext failed: wrong context, wrong key or tampering.
    #[error("decryption failed: wrong context, wrong key or tampered ciphertext")]
    Decrypt,
    /// The ciphertext was made with a version below the key's minimum decryption version.
    #[error("key version {version} of {key} is retired (minimum decryption version is {min})")]
    RetiredVersion {
        /// The key.
        key: String,
        /// The version the ciphertext names.
        version: u32,
        /// The key's minimum decryption version.
        min: u32,
    },
    /// The ciphertext names a version the key never had.
    #[error("key {key} has no version {version}")]
    UnknownVersion {
        /// The key.
        key: String,
        /// The version.
        version: u32,
    },
    /// The key is scheduled for deletion and cannot be used.
    #[error("key {key} is pending deletion (destroyed at unix time {delete_at})")]
    PendingDeletion {
        /// The key.
        key: String,
        /// When the material will be destroyed.
        delete_at: u64,
    },
    /// The key's material has been destroyed; nothing under it can be decrypted.
    #[error("key {0} has been destroyed")]
    Destroyed(String),
    /// The payload is larger than the plane accepts.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The audit log refused the record, so the operation was refused.
    #[error("audit log refused the record; operation refused: {0}")]
    Audit(#[from] rampart_audit::AuditError),
    /// The audit log refused the record of a batch decision, so those
    /// items were refused (the batch's shared record; the message is the
    /// log's error).
    #[error("audit log refused the record; operation refused: {0}")]
    AuditRefused(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] rampart_store::StoreError),
    /// Cryptography failed (random source, key unwrap).
    #[error(transparent)]
    Crypto(#[from] rampart_crypto::CryptoError),
    /// A stored record could not be read.
    #[error("corrupt record {0}")]
    Corrupt(String),
    /// A background task failed (the audit writer thread could not be reached).
    #[error("internal error: {0}")]
    Internal(String),
    /// Another writer changed the key at the same time; retry.
    #[error("concurrent update of {0}; retry")]
    Conflict(String),
}

impl KeysError {
    /// Whether the caller did something wrong (a 4xx), as opposed to the server failing.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            KeysError::Audit(_)
                | KeysError::AuditRefused(_)
                | KeysError::Store(_)
                | KeysError::Crypto(_)
                | KeysError::Corrupt(_)
                | KeysError::Internal(_)
        )
    }
}
