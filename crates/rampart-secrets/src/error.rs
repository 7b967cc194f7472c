use thiserror::Error;

use crate::postgres::RotationStep;

/// Everything that can go wrong in the secrets plane. No variant carries a
/// secret value.
#[derive(Debug, Error)]
pub enum SecretsError {
    /// The policy refused the request.
    #[error("access denied: {reason}")]
    Denied {
        /// Why.
        reason: String,
    },
    /// No such secret.
    #[error("unknown secret {0}")]
    NotFound(String),
    /// The secret is deleted; it can be restored until `recover_until`.
    #[error("secret {name} is deleted (recoverable until unix time {recover_until})")]
    Deleted {
        /// The secret.
        name: String,
        /// End of the recovery window.
        recover_until: u64,
    },
    /// The secret has no such version (or it was pruned).
    #[error("secret {name} has no version {version}")]
    UnknownVersion {
        /// The secret.
        name: String,
        /// The version asked for.
        version: u32,
    },
    /// A request argument is out of range, malformed or inconsistent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A named request field is out of range (the API names it in its
    /// error's `field`).
    #[error("invalid {field}: {message}")]
    InvalidField {
        /// The field, as the control API names it.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Rotation was asked of a secret whose kind cannot be rotated.
    #[error("secret {0} is not of a rotatable kind")]
    NotRotatable(String),
    /// PostgreSQL rotation failed at `step`; the old password still works
    /// unless `reverted` is false.
    #[error("postgres rotation failed at {step}: {message} (old password restored: {reverted})")]
    Rotation {
        /// The step that failed.
        step: RotationStep,
        /// What failed (never a password).
        message: String,
        /// Whether the old password is in force.
        reverted: bool,
    },
    /// The keys plane refused or failed (denied key use, destroyed key, audit refusal…).
    #[error(transparent)]
    Keys(#[from] rampart_keys::KeysError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] rampart_store::StoreError),
    /// Cryptography failed.
    #[error(transparent)]
    Crypto(#[from] rampart_crypto::CryptoError),
    /// A stored record could not be read.
    #[error("corrupt record {0}")]
    Corrupt(String),
    /// Another writer changed the secret at the same time; retry.
    #[error("concurrent update of {0}; retry")]
    Conflict(String),
    /// Another rotation of the secret (on this node or another sharing the
    /// store) has staged a password and not finished.
    #[error(
        "a rotation of {name} is in progress (staged {age_secs} s ago); try again once it ends"
    )]
    RotationInProgress {
        /// The secret.
        name: String,
        /// Seconds since that rotation staged its password.
        age_secs: u64,
    },
    /// Starting or waiting for a child process failed.
    #[error("running {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl SecretsError {
    /// Whether the caller did something wrong (a 4xx).
    pub fn is_client_error(&self) -> bool {
        match self {
            SecretsError::Keys(k) => k.is_client_error(),
            SecretsError::Store(_)
            | SecretsError::Crypto(_)
            | SecretsError::Corrupt(_)
            | SecretsError::Rotation { .. }
            | SecretsError::Spawn { .. } => false,
            _ => true,
        }
    }
}
