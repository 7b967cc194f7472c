//! The crate's one error type.

use std::io;
use std::path::PathBuf;

use crate::event::Tier;
use crate::verify::{Finding, VerifyFailure};

/// Everything that can go wrong in the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file or directory could not be read or written.
    #[error("audit I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The record could not be made durable; the caller must refuse its action.
    #[error("audit log tier {tier} could not write the record: {source}")]
    WriteFailed {
        /// The tier.
        tier: Tier,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An fsync failed earlier, so nothing more is accepted until the log is reopened.
    #[error("audit log tier {tier} refuses records after a failed sync; reopen the log")]
    Poisoned {
        /// The tier.
        tier: Tier,
    },
    /// The log has been closed.
    #[error("audit log is closed")]
    Closed,
    /// Another process holds the log directory.
    #[error("audit directory {0} is in use by another writer")]
    Locked(PathBuf),
    /// None of a tier's checkpoints verifies under the key the log was
    /// opened with: another node's log, or checkpoints rewritten.
    #[error("audit log tier {tier}: none of its {checkpoints} checkpoint(s) verifies under this node's audit signing key (the log of another node or data directory, or rewritten checkpoints); not writing to it. `rampart audit verify` lists what it finds")]
    ForeignKey {
        /// The tier.
        tier: Tier,
        /// Checkpoints whose signature does not verify.
        checkpoints: usize,
    },
    /// The log on disk is damaged in a way a crash does not explain.
    #[error("audit log is corrupt: {0}")]
    Corrupt(Box<Finding>),
    /// Verification found problems.
    #[error("{0}")]
    VerifyFailed(Box<VerifyFailure>),
    /// A query's time range ends before it starts.
    #[error("invalid time range: from {from} is after to {to}")]
    InvalidTimeRange {
        /// The start, RFC 3339.
        from: String,
        /// The end, RFC 3339.
        to: String,
    },
    /// A time that is not RFC 3339 UTC.
    #[error("invalid time {0:?}: expected RFC 3339 UTC such as 2026-11-25T12:00:00Z")]
    InvalidTime(String),
    /// An unknown tier name.
    #[error("unknown audit tier {0:?} (expected security, processing, application, network or api-access)")]
    UnknownTier(String),
    /// An unknown outcome name.
    #[error("unknown outcome {0:?} (expected allowed, denied or error)")]
    UnknownOutcome(String),
    /// A record failed authentication on decryption: wrong key or tampering.
    #[error("record {seq} of tier {tier} could not be decrypted (wrong key or tampered)")]
    Decrypt {
        /// The tier.
        tier: Tier,
        /// The record.
        seq: u64,
    },
    /// A decrypted record is not a valid event.
    #[error("record {seq} of tier {tier} does not hold a valid event: {reason}")]
    BadEvent {
        /// The tier.
        tier: Tier,
        /// The record.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// An event could not be encoded.
    #[error("event could not be encoded: {0}")]
    Encode(String),
    /// The event is larger than a record may be.
    #[error("event of {0} bytes is larger than the record limit")]
    TooLarge(usize),
    /// AES-GCM refused to encrypt.
    #[error("record encryption failed")]
    Encrypt,
    /// The operating system gave no randomness.
    #[error("no randomness available: {0}")]
    Random(getrandom::Error),
    /// No such record.
    #[error("tier {tier} has no record {seq}")]
    NoSuchRecord {
        /// The tier.
        tier: Tier,
        /// The sequence number asked for.
        seq: u64,
    },
    /// The record is not yet covered by a checkpoint, so there is nothing to prove against.
    #[error("record {seq} of tier {tier} is not covered by a checkpoint yet")]
    NotCheckpointed {
        /// The tier.
        tier: Tier,
        /// The sequence number asked for.
        seq: u64,
    },
    /// A derived copy between two tiers the log was not opened for.
    #[error("the audit log does not copy records of tier {from} to tier {to} (not in its options' copies)")]
    CopyNotDeclared {
        /// The tier of the record.
        from: Tier,
        /// The tier of the copy asked for.
        to: Tier,
    },
    /// An inclusion proof does not hold.
    #[error("inclusion proof is invalid: {0}")]
    InvalidProof(&'static str),
    /// Writing an export failed.
    #[error("writing the export failed: {0}")]
    Export(#[source] io::Error),
}

impl AuditError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        AuditError::Io {
            path: path.into(),
            source,
        }
    }
}
