//! Rampart's audit log: tamper-evident, encrypted, durable, like CloudTrail
//! with log-file integrity validation.
//!
//! Every plane records through one call, [`Audit::record`], which returns a
//! [`Receipt`] only once the record is fsynced; concurrent callers share
//! writes and syncs (group commit). Records go to one of five retention
//! [`Tier`]s, each an append-only series of segment files under
//! `<dir>/<tier>/`, encrypted with AES-256-GCM, linked by a hash chain and
//! summarised by signed RFC 6962 Merkle checkpoints. [`verify`] checks a log
//! with the public key alone; [`AuditReader`] searches, exports and proves
//! inclusion; [`Audit::apply_retention`] drops whole expired segments and
//! signs what it dropped.
//!
//! This crate owns the log format, its writer and its checks. It never
//! stores or unwraps keys (the caller hands it [`AuditKeys`]), never reads
//! the system clock (time comes from a [`rampart_core::Clock`]) and never
//! decides what a failed record means: on any error the caller refuses its
//! action (fail closed).
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

pub mod bench;
pub mod checkpoint;
mod copies;
mod error;
mod event;
pub mod format;
mod keys;
mod log;
pub mod merkle;
mod proof;
mod search;
mod times;
mod verify;

pub use checkpoint::{Checkpoint, CheckpointError, CheckpointKind, Disposal};
pub use copies::CopyCheck;
pub use error::AuditError;
pub use event::{
    format_rfc3339, parse_rfc3339, unix_nanos, Actor, Details, Event, EventRef, Outcome, Receipt,
    Record, RetentionPolicy, Tier,
};
pub use keys::AuditKeys;
pub use log::{
    Audit, AuditOptions, CommitStats, Disposed, FaultInjector, OpenReport, RecordFuture,
    RetentionReport, TierOpenReport, TornTail,
};
pub use proof::{verify_proof, InclusionProof};
pub use search::{AuditReader, Query};
pub use verify::{verify, Finding, Problem, TierReport, VerifyFailure, VerifyReport};
