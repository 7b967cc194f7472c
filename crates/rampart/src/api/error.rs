//! The one place where failures become HTTP statuses and JSON bodies:
//! `{"error":{"code":"…","message":"…","field":"…"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rampart_store::StoreError;
use serde_json::json;

/// An error answered to an API caller. Messages never carry secrets, and
/// internal failures are logged in full but answered in general terms.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for a `Retry-After` header (throttled logins).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {path}"),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        )
    }

    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "missing or invalid credential",
        )
        .with_field("authorization")
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log for this request id",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "the resource changed; retry",
            ),
            other => {
                tracing::error!(error = %other, "storage failure");
                ApiError::internal()
            }
        }
    }
}

impl From<rampart_keys::KeysError> for ApiError {
    fn from(e: rampart_keys::KeysError) -> Self {
        use rampart_keys::KeysError as K;
        let (status, code) = match &e {
            K::Denied { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            K::UnknownKey { .. } | K::UnknownVersion { .. } => (StatusCode::NOT_FOUND, "not_found"),
            K::KeyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            K::InvalidName(_) | K::InvalidRequest(_) => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            K::InvalidField { field, .. } => {
                return ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
                    .with_field(*field);
            }
            K::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_ciphertext"),
            K::Decrypt => (StatusCode::BAD_REQUEST, "decryption_failed"),
            K::RetiredVersion { .. } => (StatusCode::BAD_REQUEST, "retired_version"),
            K::PendingDeletion { .. } => (StatusCode::CONFLICT, "pending_deletion"),
            K::Destroyed(_) => (StatusCode::GONE, "destroyed"),
            K::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            K::Audit(_) | K::AuditRefused(_) => {
                tracing::error!(error = %e, "audit log refused a record: failing closed");
                return ApiError::unavailable("the audit log cannot record this call; refused");
            }
            K::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            _ => {
                tracing::error!(error = %e, "keys plane failure");
                return ApiError::internal();
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<rampart_secrets::SecretsError> for ApiError {
    fn from(e: rampart_secrets::SecretsError) -> Self {
        use rampart_secrets::SecretsError as S;
        match e {
            S::Keys(k) => k.into(),
            S::Denied { .. } => ApiError::new(StatusCode::FORBIDDEN, "forbidden", e.to_string()),
            S::NotFound(_) | S::UnknownVersion { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            S::Deleted { .. } => ApiError::new(StatusCode::GONE, "deleted", e.to_string()),
            S::InvalidRequest(_) | S::NotRotatable(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
            }
            S::InvalidField { field, .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
                    .with_field(field)
            }
            S::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            S::RotationInProgress { .. } => {
                ApiError::new(StatusCode::CONFLICT, "rotation_in_progress", e.to_string())
            }
            S::Rotation { .. } => {
                tracing::error!(error = %e, "secret rotation failed");
                ApiError::new(StatusCode::BAD_GATEWAY, "rotation_failed", e.to_string())
            }
            other => {
                tracing::error!(error = %other, "secrets plane failure");
                ApiError::internal()
            }
        }
    }
}

impl From<rampart_identity::IdentityError> for ApiError {
    /// Status and code come from the identity crate; the message is fixed per
    /// kind for every refusal of a credential, so that nothing in a 401 tells
    /// an attacker which part was wrong.
    fn from(e: rampart_identity::IdentityError) -> Self {
        use rampart_identity::IdentityError as I;
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match &e {
            I::InvalidCredentials => "invalid credentials".to_string(),
            I::SecondFactorRequired => "a second factor is required".to_string(),
            I::SecondFactorEnrolmentRequired => {
                "this account must enrol a second factor first; ask an admin".to_string()
            }
            I::InvalidToken | I::InvalidApiKey => "missing or invalid credential".to_string(),
            I::InvalidRefreshToken | I::RefreshReuse => "invalid refresh token".to_string(),
            I::Throttled { .. } => "too many attempts; retry later".to_string(),
            I::Audit(_) => {
                tracing::error!(error = %e, "audit log refused a record: failing closed");
                return ApiError::unavailable("the audit log cannot record this call; refused");
            }
            I::Store(_) | I::Crypto(_) | I::Corrupt(_) | I::PasswordHash(_) | I::Config(_) => {
                tracing::error!(error = %e, "identity plane failure");
                return ApiError::unavailable("the identity plane cannot serve this request");
            }
            I::Forbidden(_)
            | I::NotFound(_)
            | I::AlreadyExists(_)
            | I::InvalidRequest(_)
            | I::InvalidField { .. } => e.to_string(),
        };
        let mut err = ApiError::new(status, e.code(), message);
        if let I::InvalidField { field, .. } = &e {
            err = err.with_field(*field);
        }
        if let I::Throttled { retry_after } = &e {
            err.retry_after = Some(retry_after.as_secs().max(1));
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "field": self.field,
            }
        });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
