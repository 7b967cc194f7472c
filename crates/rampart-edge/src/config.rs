//! [`EdgeConfig`]: rampart-config's validated [`Config`] plus what only the
//! process that starts the edge knows (listener addresses, certificates,
//! hooks).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use rampart_config::Config;
use rampart_core::{SharedClock, SystemClock};

use crate::balance::{Balance, BreakerSettings};
use crate::hooks::{AuditSink, Authenticator, NoAudit, NoAuthenticator};
use crate::ratelimit::{CounterStore, MemoryStore, RateLimits};

/// Where a certificate chain and its key come from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files on disk.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// PEM text in memory.
    Pem {
        /// The certificate chain, leaf first.
        cert: String,
        /// The private key.
        key: String,
    },
}

/// One certificate and the server names (SNI) it answers for.
#[derive(Debug, Clone)]
pub struct CertConfig {
    /// Names such as `api.example.com` or `*.example.com`. The first
    /// certificate also answers clients that send no or an unknown name.
    pub names: Vec<String>,
    /// The chain and key.
    pub source: CertSource,
}

/// Mutual TLS on the HTTPS listener: the CAs client certificates must
/// chain to. Which serials are revoked comes with the routing
/// (`[edge] revoked_client_serials` in [`Config`]) so that it reloads.
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// PEM text of the CA certificates.
    pub ca_pem: Vec<String>,
    /// Whether the handshake fails without a client certificate (else a
    /// certificate is only asked for, and `auth = "client_cert"` routes
    /// refuse requests without one).
    pub required: bool,
}

/// Active health checks: `GET path` on every upstream each `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path to request, e.g. `/healthz`.
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed for an answer.
    pub timeout: Duration,
    /// Consecutive successes (2xx or 3xx) that bring an instance back.
    pub rise: u32,
    /// Consecutive failures that take it out.
    pub fall: u32,
    /// How long a reload's new instances of a service have to pass their
    /// checks before the change is rolled back (see `deploy`); zero applies
    /// changes at once.
    pub deploy_window: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            deploy_window: Duration::from_secs(60),
        }
    }
}

/// Everything the edge needs to start.
#[derive(Clone)]
pub struct EdgeConfig {
    /// Services and routes.
    pub config: Config,
    /// Plain HTTP listener (redirects only); `None` for none.
    pub http_listen: Option<SocketAddr>,
    /// HTTPS listener; `None` for none.
    pub https_listen: Option<SocketAddr>,
    /// The HTTPS port named in redirects; defaults to the bound HTTPS port.
    pub redirect_https_port: Option<u16>,
    /// Certificates for the HTTPS listener.
    pub certificates: Vec<CertConfig>,
    /// Mutual TLS; `None` asks clients for no certificate.
    pub client_auth: Option<ClientAuth>,
    /// TLS versions and session resumption of the HTTPS listener.
    pub tls: crate::tls::TlsSettings,
    /// How often file-backed certificates are checked for changes and
    /// reloaded (`None`: only through [`crate::EdgeHandle::reload_certificates`]).
    pub cert_poll_interval: Option<Duration>,
    /// Source networks allowed on every route (empty: all).
    pub allow_cidrs: Vec<IpNet>,
    /// Source networks denied on every route.
    pub deny_cidrs: Vec<IpNet>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Layer-4 balancers that open each connection with a PROXY protocol
    /// header naming the client (see `proxy_protocol`).
    pub proxy_protocol_from: Vec<IpNet>,
    /// Token-bucket limits.
    pub rate_limits: RateLimits,
    /// Where counters live.
    pub counter_store: Arc<dyn CounterStore>,
    /// The WAF, if any.
    pub waf: Option<Arc<rampart_waf::Waf>>,
    /// Authenticates routes whose `auth` is not `none`.
    pub authenticator: Arc<dyn Authenticator>,
    /// Receives one record per request.
    pub audit: Arc<dyn AuditSink>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Bytes of request bodies held in memory at once, over all requests
    /// (bodies a phase reads whole: the WAF's, a schema's); a body that
    /// would pass it gets 503 with Retry-After.
    pub max_buffered_body_bytes: usize,
    /// How pools choose.
    pub balance: Balance,
    /// Breaker settings for every upstream.
    pub breaker: BreakerSettings,
    /// Active health checks; `None` for passive ejection only.
    pub health_check: Option<HealthCheck>,
    /// Client connections held at once, both listeners together; one more
    /// is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Of those, connections from one client (an IPv6 one's /64).
    pub max_connections_per_client: u32,
    /// gzip of responses (see `compress`): `None` off, except on routes
    /// that turn it on.
    pub gzip: Option<crate::compress::GzipSettings>,
    /// The `Strict-Transport-Security` value sent on every HTTPS response.
    pub hsts: String,
    /// Headers added to every HTTPS response that lacks them (name, value).
    pub security_headers: Vec<(String, String)>,
    /// Signs the assertion sent to upstreams (see [`crate::assertion`]);
    /// `None` sends none.
    pub assertion: Option<std::sync::Arc<crate::assertion::AssertionSigner>>,
    /// Time to connect to an upstream.
    pub connect_timeout: Duration,
    /// Time for an upstream to send response headers.
    pub upstream_timeout: Duration,
    /// Time for a client to send request headers (HTTP/1), and the
    /// longest a new connection may wait for its first request.
    pub header_read_timeout: Duration,
    /// The longest a connection may carry no request after one has ended
    /// (nginx's `keepalive_timeout`).
    pub keepalive_timeout: Duration,
    /// Time for a client to send the request body.
    pub body_read_timeout: Duration,
    /// The longest a client may take no response bytes it is sent (on the
    /// socket, or on an HTTP/2 stream's window) before its connection is
    /// closed, as nginx's `send_timeout`.
    pub send_timeout: Duration,
    /// How long in-flight requests may run after shutdown begins.
    pub drain_deadline: Duration,
    /// Threads that serve HTTPS connections, each with a single-threaded
    /// runtime of its own: `None` one per core, `Some(0)` none (connections
    /// run on the runtime that calls `serve`).
    pub worker_threads: Option<usize>,
    /// The clock.
    pub clock: SharedClock,
}

impl std::fmt::Debug for EdgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeConfig")
            .field("http_listen", &self.http_listen)
            .field("https_listen", &self.https_listen)
            .field("routes", &self.config.routes.len())
            .field("certificates", &self.certificates.len())
            .field("waf", &self.waf.is_some())
            .finish_non_exhaustive()
    }
}

impl EdgeConfig {
    /// Defaults around `config`: HTTP on `0.0.0.0:80`, HTTPS on
    /// `0.0.0.0:443`, no certificates yet (add them), no WAF, a
    /// deny-everything authenticator for protected routes, no audit sink.
    pub fn new(config: Config) -> EdgeConfig {
        EdgeConfig {
            config,
            http_listen: Some(SocketAddr::from(([0, 0, 0, 0], 80))),
            https_listen: Some(SocketAddr::from(([0, 0, 0, 0], 443))),
            redirect_https_port: None,
            certificates: Vec::new(),
            client_auth: None,
            tls: crate::tls::TlsSettings::default(),
            cert_poll_interval: Some(Duration::from_secs(30)),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            trusted_proxies: Vec::new(),
            proxy_protocol_from: Vec::new(),
            rate_limits: RateLimits::default(),
            counter_store: Arc::new(MemoryStore::default()),
            waf: None,
            authenticator: Arc::new(NoAuthenticator),
            audit: Arc::new(NoAudit),
            max_body_bytes: 10 * 1024 * 1024,
            max_buffered_body_bytes: 256 * 1024 * 1024,
            balance: Balance::RoundRobin,
            breaker: BreakerSettings::default(),
            health_check: None,
            gzip: None,
            max_connections: 10_000,
            max_connections_per_client: 512,
            hsts: crate::server::HSTS.to_string(),
            security_headers: rampart_config::default_security_headers(),
            assertion: None,
            connect_timeout: Duration::from_secs(3),
            upstream_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            drain_deadline: Duration::from_secs(30),
            worker_threads: None,
            clock: SystemClock::shared(),
        }
    }
}
