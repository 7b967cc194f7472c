//! Rampart's secrets plane, in the manner of a cloud secrets manager.
//!
//! Owns: versioned secrets per environment and service, each version sealed
//! under a fresh data key that the service's own key (`svc.<service>` in the
//! keys plane) encrypts; deletion with a recovery window; resolving a
//! service's secrets into environment variables for `rampart run`; and
//! PostgreSQL password rotation.
//!
//! Every access is decided by the environment's policy (actions
//! `secrets:*`, resources `secret:SERVICE/NAME`) and audited; the keys plane
//! then decides again whether the caller may use the service's key through
//! the `secrets` plane (the via-service condition). Never: stores or logs a
//! value in the clear, writes a value to disk when starting a process, or
//! reads the system clock.
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
pub mod postgres;
mod run;
mod service;

pub use error::SecretsError;
pub use postgres::{PostgresAdmin, PostgresSecret, RotationFault, RotationStep};
pub use run::{run_watching, run_with_secrets, EnvMap, WatchReport};
pub use service::{
    service_key_name, Reconciled, SecretKind, SecretMeta, SecretService, SecretValue,
    DEFAULT_RECOVERY_DAYS, MAX_SECRET_BYTES, MAX_VERSIONS, STALE_PENDING_SECS,
};
