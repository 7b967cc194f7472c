//! Types that every Rampart plane shares and that belong to none of them.
//!
//! For now this is the [`Clock`]: time is passed in, never read ad hoc, so
//! that every expiry (sessions, rotation, retention, elevation) is testable
//! with a [`ManualClock`] instead of sleeping.
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

pub mod clock;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
