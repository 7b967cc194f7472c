use std::time::Duration;

use thiserror::Error;

/// Everything that can go wrong in identity. Variants meant for callers
/// outside the server (bad credentials, bad tokens) carry no detail that
/// would help an attacker: the HTTP layer maps each to one status and one
/// fixed message (see [`IdentityError::status`]).
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Wrong name, wrong password, unknown account, disabled account, wrong
    /// or reused second factor: one answer for all, so existence never leaks.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Too many failures for this account or source; try again later.
    #[error("too many attempts; retry after {} s", retry_after.as_secs())]
    Throttled {
        /// How long to wait before the next attempt is considered.
        retry_after: Duration,
    },
    /// The password was right but a TOTP or recovery code is needed.
    #[error("a second factor is required")]
    SecondFactorRequired,
    /// The account's role requires TOTP and none is enrolled; an admin must enrol it.
    #[error("TOTP enrolment is required for this account")]
    SecondFactorEnrolmentRequired,
    /// An access token is malformed, forged, expired, for another audience,
    /// or revoked. The reason is audited, never returned.
    #[error("invalid token")]
    InvalidToken,
    /// A refresh token is unknown, expired or revoked.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// A used refresh token was presented again; its whole family is revoked.
    #[error("refresh token reuse detected; session revoked")]
    RefreshReuse,
    /// An API key is malformed, unknown, revoked or for another environment.
    #[error("invalid API key")]
    InvalidApiKey,
    /// The principal may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such record (user, key, elevation) for an authorised caller.
    #[error("{0} not found")]
    NotFound(String),
    /// A name or other unique value is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A request is well formed but not acceptable (bad role name, too long
    /// an elevation, an elevation approved by its requester…).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A request field is missing or not acceptable; `field` names it.
    #[error("{field}: {message}")]
    InvalidField {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The configuration (role permissions, lifetimes) is invalid.
    #[error("invalid identity configuration: {0}")]
    Config(String),
    /// The audit log refused the record, so the action was refused (fail closed).
    #[error("audit log unavailable: {0}")]
    Audit(#[from] rampart_audit::AuditError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] rampart_store::StoreError),
    /// A cryptographic primitive failed (random source, sealing).
    #[error(transparent)]
    Crypto(#[from] rampart_crypto::CryptoError),
    /// A stored record could not be decoded.
    #[error("corrupt identity record {0}")]
    Corrupt(String),
    /// Password hashing failed (bad parameters).
    #[error("password hashing: {0}")]
    PasswordHash(String),
}

impl IdentityError {
    /// The HTTP status this error maps to: the one place it is decided.
    pub fn status(&self) -> u16 {
        match self {
            IdentityError::InvalidCredentials
            | IdentityError::InvalidToken
            | IdentityError::InvalidRefreshToken
            | IdentityError::RefreshReuse
            | IdentityError::InvalidApiKey
            | IdentityError::SecondFactorRequired
            | IdentityError::SecondFactorEnrolmentRequired => 401,
            IdentityError::Throttled { .. } => 429,
            IdentityError::Forbidden(_) => 403,
            IdentityError::NotFound(_) => 404,
            IdentityError::AlreadyExists(_) => 409,
            IdentityError::InvalidRequest(_) | IdentityError::InvalidField { .. } => 400,
            IdentityError::Audit(_)
            | IdentityError::Store(_)
            | IdentityError::Crypto(_)
            | IdentityError::Corrupt(_)
            | IdentityError::PasswordHash(_)
            | IdentityError::Config(_) => 503,
        }
    }

    /// A short machine-readable code for JSON error bodies (`{"error": code}`);
    /// never carries detail beyond the kind of failure.
    pub fn code(&self) -> &'static str {
        match self {
            IdentityError::InvalidCredentials => "invalid_credentials",
            IdentityError::Throttled { .. } => "too_many_attempts",
            IdentityError::SecondFactorRequired => "second_factor_required",
            IdentityError::SecondFactorEnrolmentRequired => "second_factor_enrolment_required",
            IdentityError::InvalidToken => "invalid_token",
            IdentityError::InvalidRefreshToken | IdentityError::RefreshReuse => "invalid_grant",
            IdentityError::InvalidApiKey => "invalid_api_key",
            IdentityError::Forbidden(_) => "forbidden",
            IdentityError::NotFound(_) => "not_found",
            IdentityError::AlreadyExists(_) => "conflict",
            IdentityError::InvalidRequest(_) | IdentityError::InvalidField { .. } => {
                "invalid_request"
            }
            IdentityError::Audit(_)
            | IdentityError::Store(_)
            | IdentityError::Crypto(_)
            | IdentityError::Corrupt(_)
            | IdentityError::PasswordHash(_)
            | IdentityError::Config(_) => "unavailable",
        }
    }
}
