//! Rampart's storage.
//!
//! Planes never see SQL. They see the [`Store`] trait: namespaced records
//! with versions, compare-and-set writes, prefix listing and atomic batches.
//! That shape maps one-to-one onto a table in SQLite ([`SqliteStore`], the
//! embedded backend, one file in the data directory) and in PostgreSQL
//! ([`PgStore`], the backend that many nodes share), so a new backend never
//! touches a plane.
//!
//! Secrets are never stored in the clear: [`SealedStore`] encrypts values
//! with AES-256-GCM under a data key that the [`Keyring`] keeps wrapped by the
//! root key, binding each value to its namespace and key.
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

mod error;
mod keyring;
mod migrations;
mod postgres;
mod sealed;
mod sqlite;
#[cfg(feature = "test-support")]
pub mod testing;

use async_trait::async_trait;

pub use error::StoreError;
pub use keyring::{Keyring, RootKeySource, RootMeta};
pub use migrations::LATEST_VERSION;
pub use postgres::pg_message;
pub use postgres::{PgOptions, PgStore};
pub use sealed::SealedStore;
pub use sqlite::{SqliteStore, DB_FILE};

/// A stored value and its version.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// Starts at 1 and grows by one on every write.
    pub version: u64,
    /// When it was last written, seconds since the Unix epoch.
    pub updated_at: u64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be sealed secrets; their bytes stay out of logs either way.
        f.debug_struct("Entry")
            .field("len", &self.value.len())
            .field("version", &self.version)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

/// The condition a write is made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Write whatever is there.
    Any,
    /// Write only if nothing is there.
    Absent,
    /// Write only if the current version is this one.
    Version(u64),
}

/// One write in an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put a value.
    Put {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Condition.
        expect: Expect,
    },
    /// Delete a value.
    Delete {
        /// Namespace.
        ns: String,
        /// Key.
        key: String,
        /// Condition.
        expect: Expect,
    },
}

/// What every storage backend offers the planes.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads one record.
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, StoreError>;

    /// Writes one record if `expect` holds; returns its new version.
    async fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<u64, StoreError>;

    /// Deletes one record if `expect` holds; returns whether one was there.
    async fn delete(&self, ns: &str, key: &str, expect: Expect) -> Result<bool, StoreError>;

    /// Lists records whose key starts with `prefix`, in key order, at most `limit`.
    async fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, StoreError>;

    /// Applies every operation or none.
    async fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError>;

    /// Checks the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// The schema version the backend is at.
    async fn schema_version(&self) -> Result<u32, StoreError>;

    /// A short name of the backend, such as `sqlite`.
    fn backend(&self) -> &'static str;
}
