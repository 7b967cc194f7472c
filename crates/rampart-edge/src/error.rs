//! The edge's errors: [`Error`] for setup (bind, certificates) and
//! [`Reject`] for a request the edge answers itself. [`Reject::status`] is
//! the one place a refusal becomes an HTTP status.

use std::time::Duration;

use http::StatusCode;

/// Why the edge could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadCert {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// PEM text held no usable certificate or key.
    #[error("certificate {name}: {reason}")]
    BadCert {
        /// Which certificate (its first server name).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// An HTTPS listener was configured without certificates.
    #[error("an HTTPS listener needs at least one certificate")]
    NoCertificates,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A route names a service that has no upstreams.
    #[error("service {0:?} has no upstreams")]
    NoUpstreams(String),
    /// A route's JSON Schema could not be read or compiled.
    #[error("JSON Schema {path}: {reason}")]
    BadSchema {
        /// The schema file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Accepting connections failed.
    #[error("accept: {0}")]
    Accept(std::io::Error),
    /// A worker thread (or its runtime) could not be started.
    #[error("starting edge worker thread: {0}")]
    Worker(std::io::Error),
}

/// A request the edge answers itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// The Host header is missing or malformed.
    BadHost,
    /// The path cannot be normalised safely (see [`crate::path`]).
    BadPath(crate::path::PathError),
    /// A `Transfer-Encoding` other than `chunked`.
    UnsupportedTransferEncoding,
    /// The request carried both Content-Length and Transfer-Encoding
    /// (a request-smuggling attempt; see [`crate::framing`]).
    ConflictingFraming,
    /// No route matches host and path.
    NoRoute,
    /// The client address is denied by an IP rule.
    IpDenied,
    /// A CORS preflight, answered by the edge (204) on a route with
    /// `cors` (see [`crate::cors`]).
    Preflight {
        /// The answer's headers.
        headers: http::HeaderMap,
    },
    /// The route redirects its requests (`redirect`): answered with
    /// `status` and `Location`, no body.
    Redirect {
        /// 301, 302, 303, 307 or 308.
        status: u16,
        /// Where to.
        location: http::HeaderValue,
    },
    /// The route does not take the request's method.
    MethodNotAllowed {
        /// The methods it takes, for the `Allow` header.
        allow: http::HeaderValue,
    },
    /// A token bucket is empty.
    RateLimited {
        /// When a token will be available again.
        retry_after: Duration,
    },
    /// The WAF denied the request with this status (or dropped it: 403).
    Waf {
        /// Status the rule asked for.
        status: u16,
        /// The rule that decided, if known.
        rule: Option<u64>,
    },
    /// The WAF asked for a redirect.
    WafRedirect {
        /// Status the rule asked for.
        status: u16,
        /// Where to.
        location: String,
    },
    /// No or bad credentials.
    Unauthenticated,
    /// The client certificate's serial is on the revoked list.
    CertRevoked,
    /// The route validates JSON bodies and this one is not declared JSON.
    UnsupportedMediaType,
    /// The body is not valid JSON.
    BadJson {
        /// The parser's complaint (line and column), never the body.
        message: String,
    },
    /// The body does not satisfy the route's JSON Schema.
    SchemaViolation {
        /// JSON Pointer to the offending value (`""` for the whole body).
        field: String,
        /// What is wrong, without the value itself.
        message: String,
    },
    /// Authenticated but not allowed (roles).
    Forbidden,
    /// The body is larger than the route allows.
    BodyTooLarge,
    /// The body could not be read.
    BadBody,
    /// The body did not arrive in time.
    BodyTimeout,
    /// The bytes of request bodies held at once reached
    /// `max_buffered_body_bytes`.
    BodyBuffersFull,
    /// No upstream is healthy.
    NoHealthyUpstream {
        /// When to try again.
        retry_after: Duration,
    },
    /// Every attempt to reach an upstream failed.
    UpstreamFailed,
    /// The upstream did not answer in time.
    UpstreamTimeout,
}

impl Reject {
    /// The HTTP status sent for this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadHost
            | Reject::BadPath(_)
            | Reject::ConflictingFraming
            | Reject::BadBody
            | Reject::BadJson { .. }
            | Reject::SchemaViolation { .. } => StatusCode::BAD_REQUEST,
            Reject::CertRevoked => StatusCode::FORBIDDEN,
            Reject::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            Reject::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Reject::NoRoute => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Reject::Preflight { .. } => StatusCode::NO_CONTENT,
            Reject::Redirect { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::MOVED_PERMANENTLY)
            }
            Reject::IpDenied | Reject::Forbidden => StatusCode::FORBIDDEN,
            Reject::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Reject::Waf { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN)
            }
            Reject::WafRedirect { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FOUND)
            }
            Reject::Unauthenticated => StatusCode::UNAUTHORIZED,
            Reject::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::NoHealthyUpstream { .. } | Reject::BodyBuffersFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reject::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Reject::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Seconds for a `Retry-After` header, if this refusal carries one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Reject::RateLimited { retry_after } | Reject::NoHealthyUpstream { retry_after } => {
                // Round up: "retry after 0 seconds" would invite a hot loop.
                let s = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                Some(s.max(1))
            }
            Reject::BodyBuffersFull => Some(1),
            _ => None,
        }
    }

    /// A short machine-readable reason for the audit record.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadHost => "bad_host",
            Reject::BadPath(_) => "bad_path",
            Reject::UnsupportedTransferEncoding => "unsupported_transfer_encoding",
            Reject::ConflictingFraming => "conflicting_framing",
            Reject::NoRoute => "no_route",
            Reject::IpDenied => "ip_denied",
            Reject::MethodNotAllowed { .. } => "method_not_allowed",
            Reject::Preflight { .. } => "cors_preflight",
            Reject::Redirect { .. } => "redirect",
            Reject::RateLimited { .. } => "rate_limited",
            Reject::Waf { .. } | Reject::WafRedirect { .. } => "waf",
            Reject::Unauthenticated => "unauthenticated",
            Reject::CertRevoked => "client_cert_revoked",
            Reject::UnsupportedMediaType => "unsupported_media_type",
            Reject::BadJson { .. } => "bad_json",
            Reject::SchemaViolation { .. } => "schema_violation",
            Reject::Forbidden => "forbidden",
            Reject::BodyTooLarge => "body_too_large",
            Reject::BadBody => "bad_body",
            Reject::BodyTimeout => "body_timeout",
            Reject::BodyBuffersFull => "body_buffers_full",
            Reject::NoHealthyUpstream { .. } => "no_healthy_upstream",
            Reject::UpstreamFailed => "upstream_failed",
            Reject::UpstreamTimeout => "upstream_timeout",
        }
    }
}

/// Result alias for setup.
pub type Result<T, E = Error> = std::result::Result<T, E>;
