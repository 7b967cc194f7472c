//! The one place where errors become exit codes and messages.
//!
//! Exit code 2 means the input was wrong (arguments, configuration, key,
//! data directory) and nothing was changed; 1 means a runtime failure.

use rampart_config::ConfigError;
use rampart_store::StoreError;

/// An error that ends the command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is invalid or unreadable.
    #[error("{0}")]
    Config(ConfigError),
    /// Bad input: arguments, environment, key or data directory.
    #[error("{0}")]
    Input(String),
    /// Storage or the root key failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Something failed while running.
    #[error("{0}")]
    Runtime(String),
    /// A verification found a problem (exit 1, the problem named).
    #[error("{0}")]
    Verify(String),
    /// The control API answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The JSON error, formatted.
        message: String,
    },
}

impl From<rampart_crypto::CryptoError> for CliError {
    fn from(e: rampart_crypto::CryptoError) -> Self {
        CliError::Input(e.to_string())
    }
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Input(_) => 2,
            CliError::Store(e) => match e {
                StoreError::Crypto(_)
                | StoreError::NotInitialised(_)
                | StoreError::NewerSchema { .. }
                | StoreError::Io { .. } => 2,
                _ => 1,
            },
            CliError::Runtime(_) | CliError::Verify(_) => 1,
            CliError::Api { status, .. } if (400..500).contains(status) => 2,
            CliError::Api { .. } => 1,
        }
    }

    pub fn print(&self) {
        match self {
            // Configuration problems start with the file name, like a compiler's.
            CliError::Config(e) => eprintln!("{e}"),
            CliError::Verify(m) => eprintln!("{m}"),
            other => eprintln!("error: {other}"),
        }
    }
}
