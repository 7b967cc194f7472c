//! Rampart's identity and access plane.
//!
//! It owns who a principal is and what it may do: users, service principals
//! and teams; the four roles and the one authorisation check every plane and
//! the edge call ([`Authorizer::authorize`]); API keys stored as peppered
//! HMACs; password (Argon2id) and API-key logins that yield Ed25519-signed
//! JWT access tokens with rotating keys published as a JWKS, opaque refresh
//! tokens rotated on every use with reuse detection, and a revocation list
//! that makes logout immediate; TOTP with recovery codes; time-bound
//! elevation with approval; and brute-force throttling.
//!
//! It never speaks HTTP or parses command lines (the `rampart` binary wires
//! [`Identity`]'s methods to routes and subcommands and maps
//! [`IdentityError::status`] to responses), never reads the system clock
//! (time comes from a [`rampart_core::Clock`]), and never stores a secret in
//! the clear: passwords as Argon2id, keys and refresh tokens as HMAC-SHA-256
//! under a pepper from the keyring, TOTP secrets sealed with a keyring data
//! key. Every decision and identity step is recorded in the audit log; if
//! the log refuses, the step is refused.
//!
//! # Permissions identity itself asks for
//!
//! Identity management lives in the [`PLATFORM_ENV`] environment; keys are
//! checked against the key's own environment. Operations on a principal or a
//! team are team-scoped ([`Scope`]; the table of what each role reaches is in
//! [`policy`]): a team admin manages the members of its teams and their API
//! keys, a team member sees its teams, an individual only itself, an admin
//! everything. Service principals never hold an `identity:` permission other
//! than a read: they cannot mint credentials.
//!
//! | operation | permission | scope |
//! | --- | --- | --- |
//! | create user / service | `identity:users.create` | its teams (none: admins only; team admins create users with `team_member` only) |
//! | list / show users, teams | `identity:users.read` | each principal / the actor's teams |
//! | set roles, disable, reset another's password or TOTP | `identity:users.update` | the principal (team admins grant `team_member` only) |
//! | own password, own TOTP | `identity:password.own`, `identity:mfa.own` | own |
//! | create team | `identity:teams.create` | platform (admins) |
//! | create / list / revoke own API keys | `identity:apikeys.own` | own |
//! | the same for other principals' keys | `identity:apikeys.manage` | the key's owner |
//! | revoke another principal's sessions | `identity:sessions.revoke` | the principal |
//! | rotate the token signing key | `identity:signing.rotate` | platform (admins) |
//! | ask for elevation | `identity:elevations.request` | own |
//! | approve / deny elevation (also: unelevated `admin`, not the requester) | `identity:elevations.approve` | platform (admins) |
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

pub mod apikey;
mod elevation;
mod error;
pub mod password;
pub mod policy;
mod service;
mod sessions;
pub mod throttle;
pub mod throttle_redis;
pub mod token;
pub mod totp;

pub use elevation::{Elevation, ElevationStatus};
pub use error::IdentityError;
pub use password::PasswordParams;
pub use policy::{
    Authorizer, Decision, PermissionPattern, Policy, Principal, PrincipalKind, Role, Scope, Target,
    PLATFORM_ENV,
};
pub use service::{Identity, IdentityConfig, NewUser, Team, User};
pub use sessions::{
    ApiKeyInfo, LoginRequest, NewApiKey, PruneReport, Tokens, TotpEnrolment,
    ENDED_RECORD_RETENTION_SECS,
};
pub use throttle::{SharedThrottle, SharedThrottleError, ThrottleConfig};
pub use throttle_redis::RedisThrottle;

/// Records an event and waits until it is durable. Identity's checks are
/// synchronous, but they run inside the async server: on a multi-threaded
/// runtime the wait is announced with `block_in_place`, so the worker's other
/// tasks move elsewhere instead of stalling behind an fsync.
pub(crate) fn record_durably(
    audit: &rampart_audit::Audit,
    ev: rampart_audit::Event,
) -> Result<rampart_audit::Receipt, rampart_audit::AuditError> {
    let multi_thread = tokio::runtime::Handle::try_current()
        .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        .unwrap_or(false);
    if multi_thread {
        tokio::task::block_in_place(|| audit.record(ev))
    } else {
        audit.record(ev)
    }
}
