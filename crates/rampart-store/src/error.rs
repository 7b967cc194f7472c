use thiserror::Error;

/// What can go wrong in storage. Messages never carry stored values.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A conditional write found another version (or presence) than expected.
    #[error("conflict on {ns}/{key}: the record changed or already exists")]
    Conflict {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
    },
    /// The database was written by a newer Rampart.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade rampart")]
    NewerSchema {
        /// Version found.
        found: u32,
        /// Latest version this build knows.
        supported: u32,
    },
    /// The data directory has not been initialised.
    #[error("data directory {0} is not initialised: run `rampart init` first")]
    NotInitialised(String),
    /// A stored record is not what it should be.
    #[error("corrupt record {ns}/{key}: {why}")]
    Corrupt {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// Encryption or the root key failed.
    #[error(transparent)]
    Crypto(#[from] rampart_crypto::CryptoError),
    /// The backend failed.
    #[error("storage backend: {0}")]
    Backend(String),
    /// A file could not be opened or created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}
