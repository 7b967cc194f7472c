//! `rampart-edge`: Rampart's public tier.
//!
//! It owns the listeners (plain HTTP that only redirects to HTTPS; HTTPS
//! with rustls, TLS 1.2+ and SNI), the request path as an ordered list of
//! [phases] (ip rules → rate limit → waf → authn → authz → body
//! limit → JSON Schema), mutual TLS with revoked serials, balancing with passive ejection and a circuit breaker per
//! upstream, proxying with retries, security response headers, an audit
//! record per request, and graceful drain.
//!
//! The `rampart` binary builds an [`EdgeConfig`] from the validated config
//! plus listener addresses, certificates and the two hooks, calls
//! [`Edge::bind`], keeps an [`EdgeHandle`] (for [`EdgeHandle::reload`] on
//! SIGHUP, [`EdgeHandle::reload_certificates`] and
//! [`EdgeHandle::upstreams`] for metrics) and runs [`Edge::serve`] with a
//! shutdown future (SIGTERM). Refusals are [`Reject`]s; their status is
//! decided in [`Reject::status`] only.
//!
//! It never verifies credentials itself (the identity plane does, through
//! [`Authenticator`]), never writes the audit log (it hands records to an
//! [`AuditSink`]) and never parses configuration files (it takes a validated
//! [`rampart_config::Config`] inside an [`EdgeConfig`]).
//!
//! ```no_run
//! # async fn run(cfg: rampart_config::Config) -> Result<(), rampart_edge::Error> {
//! use rampart_edge::{CertConfig, CertSource, Edge, EdgeConfig};
//! let mut ec = EdgeConfig::new(cfg);
//! ec.certificates.push(CertConfig {
//!     names: vec!["api.example.com".into()],
//!     source: CertSource::Files { cert: "cert.pem".into(), key: "key.pem".into() },
//! });
//! let edge = Edge::bind(ec).await?;
//! edge.serve(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
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

pub mod assertion;
pub mod balance;
pub mod compress;
mod config;
pub mod cors;
pub mod deploy;
mod error;
pub mod framing;
mod health;
pub mod hooks;
pub mod idle;
pub mod mtls;
pub mod path;
pub mod phases;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod reqbody;
pub mod router;
mod server;
pub mod shared_limits;
pub mod slots;
pub mod text;
mod tls;
pub mod tunnel;
pub mod upstream;
pub mod watch;
pub mod workers;

pub use balance::{Balance, BreakerSettings, BreakerState, UpstreamStatus};
pub use config::{CertConfig, CertSource, ClientAuth, EdgeConfig, HealthCheck};
pub use error::{Error, Reject, Result};
pub use hooks::{
    AccessRecord, AuditSink, AuthOutcome, AuthRequest, Authenticator, DurableRecord, Principal,
    WafFindings,
};
pub use mtls::{ClientCert, RevokedSerials};
pub use ratelimit::{CounterStore, MemoryStore, Rate, RateLimits};
pub use server::{
    client_addr, parse_host, request_host, Edge, EdgeAddrs, EdgeBody, EdgeHandle, HSTS,
};
pub use shared_limits::{connect_redis, SharedCounters, SharedLimitsError, SharedLimitsOptions};
pub use tls::{add_pem_certificates, not_after as certificate_not_after, TlsSettings};
