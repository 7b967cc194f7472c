//! The validated configuration. Every value here has been checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// A validated `rampart.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This node.
    pub node: Node,
    /// The control API.
    pub control: Control,
    /// Environments (dev, test, prod, …); hard walls between principals and keys.
    pub environments: Vec<Environment>,
    /// Services behind the edge.
    pub services: Vec<Service>,
    /// Routes from host and path prefix to a service.
    pub routes: Vec<Route>,
    /// Roles and their permissions.
    pub roles: Vec<Role>,
    /// Declared keys.
    pub keys: Vec<KeyDecl>,
    /// The audit log.
    pub audit: Audit,
    /// The public edge, if this node runs one.
    pub edge: Option<Edge>,
    /// Sessions and elevations.
    pub identity: Identity,
    /// Where keys, secrets, identities and policies are kept.
    pub store: StoreBackend,
    /// Redis, through which the nodes share their rate-limit buckets.
    pub redis: Option<Redis>,
    /// The file this came from, if any.
    pub source: Option<PathBuf>,
}

/// This node's identity and storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The node name recorded in audit events.
    pub name: String,
    /// The data directory, if the file names one (the CLI's `--data-dir` wins).
    pub data_dir: Option<PathBuf>,
}

/// The private control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Source networks allowed to connect; empty means loopback only.
    pub allow: Vec<IpNet>,
    /// PEM files of the CAs whose client certificates every connection
    /// must present (mutual TLS); empty means none is asked for.
    pub client_ca: Vec<PathBuf>,
}

/// An environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// Its name.
    pub name: String,
    /// Whether it holds production data.
    pub production: bool,
    /// Free text.
    pub description: String,
}

/// An upstream address: a host name or IP address and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Its share of the service's requests against the other instances'
    /// (1–100, default 1), as nginx's `weight=`.
    pub weight: u32,
    /// Used only while no other instance is available, as nginx's
    /// `backup`.
    pub backup: bool,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A service that Rampart fronts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// The environment it runs in.
    pub environment: String,
    /// The port it listens on.
    pub port: u16,
    /// Its instances.
    pub upstreams: Vec<Upstream>,
    /// Secrets injected by `rampart run`: environment variable → secret name.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// The path the edge's active health checks request on its instances
    /// (`None`: `[edge.health_check]`'s).
    pub health_path: Option<String>,
    /// When set, the edge reaches the instances over TLS and verifies
    /// their certificates against this PEM CA file.
    pub tls_ca: Option<PathBuf>,
    /// The name the instances' certificates must carry (`None`: each
    /// instance's host).
    pub tls_server_name: Option<String>,
    /// The certificate (PEM chain) and key the edge presents to the
    /// instances, when they require client certificates (mutual TLS).
    pub tls_client: Option<ClientIdentity>,
    /// The HTTP version the edge speaks to the instances.
    pub protocol: UpstreamProtocol,
    /// How its instances are picked, when not as `[edge] balance` says.
    pub balance: Option<EdgeBalance>,
    /// Free text.
    pub description: String,
}

/// The HTTP version the edge speaks to a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, connections kept alive and pooled.
    #[default]
    Http1,
    /// HTTP/2: over TLS (ALPN `h2`) when the service has `tls_ca`, else
    /// cleartext with prior knowledge (h2c); one multiplexed connection
    /// per instance and worker thread. What gRPC services need.
    Http2,
}

/// A client certificate and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// How a route authenticates callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    /// No authentication.
    None,
    /// An API key.
    ApiKey,
    /// A session token.
    Session,
    /// A client certificate.
    ClientCert,
}

/// A route from a host and path prefix to a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Host name, or `*.example.com`.
    pub host: String,
    /// Path prefix, starting with `/`.
    pub path_prefix: String,
    /// The service name.
    pub service: String,
    /// The service's environment (resolved at load, so that it travels
    /// with the route through a reload).
    pub environment: String,
    /// How callers authenticate.
    pub auth: RouteAuth,
    /// Roles allowed (empty: any authenticated principal).
    pub roles: Vec<String>,
    /// Source networks allowed (empty: all).
    pub allow_cidrs: Vec<IpNet>,
    /// Source networks denied.
    pub deny_cidrs: Vec<IpNet>,
    /// The HTTP methods this route takes (empty: any), upper case, each
    /// once; `GET` takes `HEAD` too. Others get 405 with `Allow`.
    pub methods: Vec<String>,
    /// Cross-origin requests from browsers (CORS), answered by the edge.
    pub cors: Option<RouteCors>,
    /// Requests are answered with a redirect instead of reaching a service
    /// (then `service` and `environment` are empty).
    pub redirect: Option<RouteRedirect>,
    /// Requests per client on this route, instead of the edge's default.
    pub rate_limit: Option<RouteRate>,
    /// Largest request body on this route (the edge's limit still caps it).
    pub max_body_bytes: Option<usize>,
    /// Time for the service to send its response headers on this route,
    /// and the longest a WebSocket tunnel may be idle, in seconds, instead
    /// of the edge's `upstream_timeout_seconds`.
    pub upstream_timeout_seconds: Option<u32>,
    /// A JSON Schema file that request bodies must satisfy (relative paths
    /// are resolved against the config file by [`crate::Config::load`]).
    pub json_schema: Option<PathBuf>,
    /// What the web application firewall does on this route.
    pub waf: RouteWaf,
    /// Whether a WebSocket handshake (an HTTP/1.1 `Upgrade: websocket`)
    /// on this route is passed on and, once the service accepts it, the
    /// connection tunnelled to it.
    pub websocket: bool,
    /// Whether request bodies are passed on to the service as they arrive
    /// instead of read whole first (nginx's `proxy_request_buffering
    /// off`): for large uploads. Only where nothing reads the body (no
    /// JSON Schema, the firewall off); a streamed request is not retried
    /// on another instance once its body has started.
    pub stream_request_body: bool,
    /// What the matched `path_prefix` becomes in the path sent to the
    /// service (Envoy's `prefix_rewrite`; nginx's `proxy_pass` with a
    /// URI): `"/"` serves `/api/users` to the service as `/users`. `None`
    /// sends the path as received (normalised).
    pub upstream_path_prefix: Option<String>,
    /// gzip of this route's responses: `Some(false)` never (routes whose
    /// pages put request input next to secrets, see BREACH), `Some(true)`
    /// always (with `[edge.gzip]`'s settings, or its defaults), `None` as
    /// `[edge.gzip]` says.
    pub gzip: Option<bool>,
    /// Headers set on this route's responses from the service, replacing
    /// the service's (name in lower case, value), in name order.
    pub response_headers: Vec<(String, String)>,
    /// Headers removed from this route's responses from the service
    /// (`server`, `x-powered-by`…), in lower case.
    pub remove_response_headers: Vec<String>,
    /// Headers set on this route's requests to the service, replacing the
    /// client's (name in lower case, value), in name order.
    pub request_headers: Vec<(String, String)>,
    /// Headers removed from this route's requests before they reach the
    /// service (an `Authorization` the service need not see…).
    pub remove_request_headers: Vec<String>,
}

impl Route {
    /// A route from `host` and `path_prefix` to `service` with every other
    /// setting at its default (no environment, no authentication, no
    /// limits of its own, the firewall blocking), as code and tests build
    /// one; `rampart.toml` routes come from [`crate::Config::parse`].
    pub fn new(host: &str, path_prefix: &str, service: &str) -> Route {
        Route {
            host: host.to_string(),
            path_prefix: path_prefix.to_string(),
            service: service.to_string(),
            environment: String::new(),
            auth: RouteAuth::None,
            roles: Vec::new(),
            allow_cidrs: Vec::new(),
            deny_cidrs: Vec::new(),
            methods: Vec::new(),
            redirect: None,
            cors: None,
            rate_limit: None,
            max_body_bytes: None,
            upstream_timeout_seconds: None,
            json_schema: None,
            waf: RouteWaf::default(),
            websocket: false,
            stream_request_body: false,
            upstream_path_prefix: None,
            gzip: None,
            response_headers: Vec::new(),
            remove_response_headers: Vec::new(),
            request_headers: Vec::new(),
            remove_request_headers: Vec::new(),
        }
    }
}

/// Where a redirecting route sends its clients, as nginx's
/// `return 301 https://example.com$request_uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRedirect {
    /// `scheme://host[:port][/path]`, without a trailing `/`: the request's
    /// path and query are appended.
    pub to: String,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// Which browser pages may call a route from another origin (CORS), as
/// the edge answers their preflight requests and marks the responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteCors {
    /// Origins allowed, `scheme://host[:port]` in lower case; empty when
    /// `any_origin`.
    pub origins: Vec<String>,
    /// `origins = ["*"]`: any origin, without credentials.
    pub any_origin: bool,
    /// Methods a preflight may ask for (default `GET`, `HEAD`, `POST`).
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for, lower case.
    pub headers: Vec<String>,
    /// Response headers the page may read beyond the safelisted ones,
    /// lower case.
    pub expose_headers: Vec<String>,
    /// Whether the page may send cookies and credentials.
    pub credentials: bool,
    /// How long a browser may keep a preflight's answer, seconds.
    pub max_age_seconds: u32,
}

/// The web application firewall's policy on one route.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteWaf {
    /// Block, detect only, or off.
    pub mode: WafMode,
    /// Rules and targets removed on this route, applied at the start of
    /// each request like CRS exclusion rules (`ctl:ruleRemoveById` and
    /// friends).
    pub exclusions: Vec<WafExclusion>,
}

/// One per-route WAF exclusion.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WafExclusion {
    /// The rules it applies to.
    pub rules: WafRuleSelector,
    /// `None` removes the rules; `Some` removes only this target from them.
    pub target: Option<WafTarget>,
}

/// Which rules an exclusion names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WafRuleSelector {
    /// One rule id (`ctl:ruleRemoveById`, `ctl:ruleRemoveTargetById`).
    Id(u64),
    /// Rules with a tag matching this regex, as in SecLang
    /// (`ctl:ruleRemoveByTag`, `ctl:ruleRemoveTargetByTag`).
    Tag(String),
}

/// A target to remove: a collection, optionally one key or keys matching a
/// regex (case-insensitive), such as `ARGS:body` or `REQUEST_COOKIES:/^sess/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WafTarget {
    /// The collection name, uppercase (one of [`WAF_TARGET_COLLECTIONS`]).
    pub collection: String,
    /// The key, if any.
    pub key: Option<WafTargetKey>,
}

/// The key part of a [`WafTarget`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WafTargetKey {
    /// One key, compared case-insensitively.
    Name(String),
    /// Keys matching this regex (without the slashes).
    Regex(String),
}

impl std::fmt::Display for WafTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            None => f.write_str(&self.collection),
            Some(WafTargetKey::Name(k)) => write!(f, "{}:{k}", self.collection),
            Some(WafTargetKey::Regex(r)) => write!(f, "{}:/{r}/", self.collection),
        }
    }
}

/// Collections a WAF exclusion may name as its target, and whether they
/// have keys (`ARGS:name`) or are single values (`REQUEST_URI`). These are
/// the request-side variables rules inspect; the engine accepts every one.
pub const WAF_TARGET_COLLECTIONS: &[(&str, bool)] = &[
    ("ARGS", true),
    ("ARGS_GET", true),
    ("ARGS_POST", true),
    ("ARGS_NAMES", true),
    ("ARGS_GET_NAMES", true),
    ("ARGS_POST_NAMES", true),
    ("REQUEST_HEADERS", true),
    ("REQUEST_HEADERS_NAMES", true),
    ("REQUEST_COOKIES", true),
    ("REQUEST_COOKIES_NAMES", true),
    ("FILES", true),
    ("FILES_NAMES", true),
    ("MULTIPART_PART_HEADERS", true),
    ("XML", true),
    ("REQUEST_URI", false),
    ("REQUEST_URI_RAW", false),
    ("REQUEST_FILENAME", false),
    ("REQUEST_BASENAME", false),
    ("REQUEST_LINE", false),
    ("REQUEST_METHOD", false),
    ("REQUEST_PROTOCOL", false),
    ("QUERY_STRING", false),
    ("REQUEST_BODY", false),
];

/// What the web application firewall does on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WafMode {
    /// Rules run and a disruptive match refuses the request (the default).
    #[default]
    Block,
    /// Rules run and matches are recorded, but nothing is refused.
    Detect,
    /// Rules do not run.
    Off,
}

/// Whether the HTTPS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuthMode {
    /// No certificate is requested (no `client_ca`).
    #[default]
    Off,
    /// A certificate is requested and verified when sent; routes with
    /// `auth = "client_cert"` refuse requests without one.
    Optional,
    /// The handshake fails without a certificate that chains to `client_ca`.
    Required,
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteRate {
    /// Bucket size.
    pub burst: u32,
    /// Refill rate.
    pub per_second: f64,
}

impl Eq for RouteRate {}

/// A role and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Its name.
    pub name: String,
    /// Permissions such as `keys:encrypt` or `secrets:*`.
    pub permissions: Vec<String>,
    /// Whether members must use a second factor.
    pub require_mfa: bool,
    /// Free text.
    pub description: String,
}

/// A declared key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDecl {
    /// Its name, unique within its environment.
    pub name: String,
    /// The environment it belongs to.
    pub environment: String,
    /// The service allowed to use it, if dedicated to one.
    pub service: Option<String>,
    /// Days between automatic rotations.
    pub rotation_days: u32,
    /// Free text.
    pub description: String,
}

/// The identity plane's token and elevation lifetimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `iss` of the access tokens it signs.
    pub issuer: String,
    /// `aud` of the access tokens it signs.
    pub audience: String,
    /// Access token lifetime, seconds.
    pub access_ttl_seconds: u32,
    /// Refresh token lifetime, seconds.
    pub refresh_ttl_seconds: u32,
    /// A session's absolute lifetime however often it is refreshed, seconds.
    pub session_max_seconds: u32,
    /// Longest elevation that may be requested, seconds.
    pub max_elevation_seconds: u32,
    /// How long an elevation request waits for approval, seconds.
    pub elevation_request_ttl_seconds: u32,
    /// Brute-force throttling of logins.
    pub throttle: LoginThrottle,
}

/// Growing delays after failed logins, per account and per source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginThrottle {
    /// Failures per account before delays start.
    pub free_failures_per_account: u32,
    /// Failures per source address before delays start.
    pub free_failures_per_source: u32,
    /// The first delay, seconds; it doubles with each further failure.
    pub base_delay_seconds: u32,
    /// The longest delay, seconds.
    pub max_delay_seconds: u32,
    /// Seconds without a failure after which failures are forgotten.
    pub forget_after_seconds: u32,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle {
            free_failures_per_account: 5,
            free_failures_per_source: 20,
            base_delay_seconds: 1,
            max_delay_seconds: 900,
            forget_after_seconds: 3_600,
        }
    }
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            issuer: "rampart".into(),
            audience: "rampart-api".into(),
            access_ttl_seconds: 3_600,
            refresh_ttl_seconds: 14 * 86_400,
            session_max_seconds: 30 * 86_400,
            max_elevation_seconds: 8 * 3_600,
            elevation_request_ttl_seconds: 86_400,
            throttle: LoginThrottle::default(),
        }
    }
}

/// Where the planes keep their records (`[store]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// One SQLite file in the data directory: a single node.
    #[default]
    Sqlite,
    /// One PostgreSQL database that every node of a deployment shares.
    Postgres(PostgresStore),
}

/// How to reach the shared PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStore {
    /// The environment variable that holds the connection string (it
    /// carries a password, so it is never written in the file).
    pub url_env: String,
    /// Most connections a node keeps open.
    pub pool_size: u32,
    /// CA certificates (PEM) the server's certificate must chain to; when
    /// set, TLS is required (relative paths are relative to the file).
    pub tls_ca: Option<PathBuf>,
    /// How long to wait for a connection.
    pub connect_timeout_seconds: u32,
    /// How often a node re-reads identities (principals, API keys,
    /// elevations, revocations) that other nodes may have changed.
    pub reload_interval_ms: u32,
}

/// Redis, shared by the nodes of a deployment (`[redis]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    /// The environment variable that holds the URL (it may carry a
    /// password, so it is never written in the file).
    pub url_env: String,
    /// How often a node sends its rate-limit counts and reads back the
    /// shared buckets.
    pub sync_interval_ms: u32,
    /// Prefix of every key Rampart writes.
    pub key_prefix: String,
    /// CA certificates (PEM) a `rediss://` server's certificate must chain
    /// to (relative paths are relative to the file); without it, the
    /// system's roots.
    pub tls_ca: Option<PathBuf>,
}

/// `[redis] url_env` by default.
pub const DEFAULT_REDIS_URL_ENV: &str = "RAMPART_REDIS_URL";

/// `[store] url_env` by default.
pub const DEFAULT_DATABASE_URL_ENV: &str = "RAMPART_DATABASE_URL";

/// The audit log's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// Retention per tier, in days.
    pub retention: Retention,
    /// Write a checkpoint after this many records.
    pub checkpoint_every_records: u32,
    /// Write a checkpoint after this many seconds.
    pub checkpoint_every_seconds: u32,
    /// A second directory to copy checkpoints to.
    pub checkpoint_dir: Option<PathBuf>,
    /// How long a group commit may wait for more records (microseconds,
    /// 0 = the log's own adaptive wait only) once `commit_siblings`
    /// callers usually wait at once: fewer, larger syncs for less CPU per
    /// record under heavy load, at up to this much added latency.
    pub commit_delay_us: u32,
    /// How many callers must usually wait at once for `commit_delay_us` to
    /// apply (0 = always), like PostgreSQL's `commit_siblings`.
    pub commit_siblings: u32,
    /// How long the security tier's copies of the edge's denials may
    /// gather before they are written and synced, in milliseconds.
    pub copy_delay_ms: u32,
}

/// The public edge: listeners, certificates, network rules, the WAF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Plain HTTP (answered with 301 to HTTPS); `None` turns it off.
    pub http_listen: Option<SocketAddr>,
    /// HTTPS.
    pub https_listen: SocketAddr,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Layer-4 balancers that must open each connection with a PROXY
    /// protocol header (v1 or v2) naming the client.
    pub proxy_protocol_from: Vec<IpNet>,
    /// Source networks allowed on every route (empty: all).
    pub allow_cidrs: Vec<IpNet>,
    /// Source networks refused on every route.
    pub deny_cidrs: Vec<IpNet>,
    /// SecLang rule files (for example OWASP CRS), loaded in order; globs allowed.
    pub waf_rules: Vec<String>,
    /// `Strict-Transport-Security`'s max-age, in seconds (at least a year).
    pub hsts_max_age_seconds: u32,
    /// Whether HSTS carries `preload` (for the browsers' preload lists).
    pub hsts_preload: bool,
    /// Whether the HTTPS listener takes TLS 1.3 only (else 1.2 and 1.3).
    pub tls13_only: bool,
    /// TLS sessions kept for resumption (0: none).
    pub tls_session_cache: u32,
    /// Whether resumption may also use stateless session tickets.
    pub tls_session_tickets: bool,
    /// Headers added to every HTTPS response that lacks them (name in lower
    /// case, value), in name order.
    pub security_headers: Vec<(String, String)>,
    /// Largest request body read.
    pub max_body_bytes: usize,
    /// Bytes of request bodies held in memory at once, all requests
    /// together; past it, a body being read gets 503.
    pub max_buffered_body_bytes: usize,
    /// Certificates chosen by SNI; empty means one from the development CA.
    pub certificates: Vec<Certificate>,
    /// PEM files of the CAs client certificates must chain to.
    pub client_ca: Vec<PathBuf>,
    /// Whether a client certificate is requested or required.
    pub client_auth: ClientAuthMode,
    /// Serial numbers of client certificates refused although they chain
    /// to `client_ca`: lowercase hex, no separators, no leading zeros.
    pub revoked_client_serials: Vec<String>,
    /// The edge's default token buckets.
    pub rate_limits: EdgeRateLimits,
    /// How a service's instances are chosen.
    pub balance: EdgeBalance,
    /// Time to connect to an upstream instance, in milliseconds.
    pub connect_timeout_ms: u32,
    /// Time for an upstream to send its response headers, in seconds.
    pub upstream_timeout_seconds: u32,
    /// Time for a client to send its request headers, in seconds.
    pub header_read_timeout_seconds: u32,
    /// Time for a client to send its request body, in seconds.
    pub body_read_timeout_seconds: u32,
    /// The longest a client may take none of the response bytes it is
    /// sent before its connection is closed, in seconds.
    pub send_timeout_seconds: u32,
    /// How long a connection may carry no request after one has ended,
    /// in seconds.
    pub keepalive_timeout_seconds: u32,
    /// How long in-flight requests may run once shutdown begins, in seconds.
    pub drain_seconds: u32,
    /// Threads that serve HTTPS connections, each a runtime of its own
    /// (`None`: one per core; `Some(0)`: the process's shared runtime).
    pub worker_threads: Option<u32>,
    /// Client connections the edge holds at once, both listeners together;
    /// one more is closed as soon as it is accepted.
    pub max_connections: u32,
    /// Of those, connections from one client (an IPv6 one's /64), so that
    /// one cannot take them all.
    pub max_connections_per_client: u32,
    /// The circuit breaker of every upstream instance.
    pub breaker: EdgeBreaker,
    /// Active health checks; `None` ejects on failed requests only.
    pub health_check: Option<EdgeHealthCheck>,
    /// gzip of responses for clients that accept it (`[edge.gzip]`);
    /// `None`: off, except on routes with `gzip = true`.
    pub gzip: Option<EdgeGzip>,
}

/// Which responses the edge compresses with gzip, and how hard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeGzip {
    /// Responses declared shorter than this many bytes are sent as they are.
    pub min_bytes: u64,
    /// Media types (`type/subtype`, lower case) compressed.
    pub types: Vec<String>,
    /// zlib level, 1 (fastest) to 9 (smallest).
    pub level: u32,
    /// Responses compressed at once, edge-wide; past it, responses go out
    /// uncompressed. Each holds a deflate state of a few hundred KB.
    pub max_streams: u32,
}

/// The headers `[edge] security_headers` adds unless it lists its own.
pub const DEFAULT_SECURITY_HEADERS: [(&str, &str); 3] = [
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
];

/// [`DEFAULT_SECURITY_HEADERS`] as owned (name, value) pairs, as
/// `[edge] security_headers` holds them.
pub fn default_security_headers() -> Vec<(String, String)> {
    DEFAULT_SECURITY_HEADERS
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// Response headers a config may not set or remove: the edge frames
/// responses and sends HSTS itself.
pub const RESERVED_RESPONSE_HEADERS: [&str; 9] = [
    "connection",
    "content-length",
    "content-encoding",
    "keep-alive",
    "strict-transport-security",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request headers a config may not set or remove: the edge frames
/// requests, names the host, and states the client, the protocol, the
/// request id and its assertion itself.
pub const RESERVED_REQUEST_HEADERS: [&str; 13] = [
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
];

/// The media types `[edge.gzip]` compresses unless it lists its own: text,
/// and the structured text formats services send (images, video and
/// archives are compressed already).
pub const DEFAULT_GZIP_TYPES: [&str; 10] = [
    "text/html",
    "text/css",
    "text/plain",
    "text/javascript",
    "text/xml",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/problem+json",
    "image/svg+xml",
];

impl Default for EdgeGzip {
    fn default() -> Self {
        EdgeGzip {
            min_bytes: 1024,
            types: DEFAULT_GZIP_TYPES.iter().map(|t| t.to_string()).collect(),
            level: 5,
            max_streams: 1024,
        }
    }
}

/// How the edge picks an instance of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EdgeBalance {
    /// In turn.
    #[default]
    RoundRobin,
    /// The less busy of two picked at random (power of two choices).
    LeastRequests,
    /// By the client's address (an IPv6 client's /64), so that a client
    /// keeps to one instance while it is up (rendezvous hashing: when an
    /// instance leaves, only its own clients move), as nginx's `ip_hash`.
    ClientHash,
}

/// When an upstream instance's circuit breaker opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeBreaker {
    /// Consecutive connect errors or 5xx answers that open it.
    pub failures_to_open: u32,
    /// Seconds it stays open before one probe request is let through.
    pub open_seconds: u32,
}

impl Default for EdgeBreaker {
    fn default() -> Self {
        EdgeBreaker {
            failures_to_open: 3,
            open_seconds: 10,
        }
    }
}

/// Active health checks: `GET path` on every instance every interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeHealthCheck {
    /// The path requested (a 2xx or 3xx answer is healthy).
    pub path: String,
    /// Milliseconds between checks.
    pub interval_ms: u32,
    /// Milliseconds allowed for an answer.
    pub timeout_ms: u32,
    /// Consecutive healthy answers that bring an instance back.
    pub rise: u32,
    /// Consecutive failures that take it out.
    pub fall: u32,
    /// Milliseconds a reload's new instances of a service have to pass
    /// their checks before the change is rolled back to the old ones; 0
    /// applies changes at once.
    pub deploy_window_ms: u32,
}

impl Default for EdgeHealthCheck {
    fn default() -> Self {
        EdgeHealthCheck {
            path: "/healthz".into(),
            interval_ms: 5_000,
            timeout_ms: 2_000,
            rise: 2,
            fall: 3,
            deploy_window_ms: 60_000,
        }
    }
}

/// The edge's default token buckets (a route's own `rate_limit` replaces
/// the per-client one on that route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeRateLimits {
    /// Per client address on ordinary routes.
    pub per_client: RouteRate,
    /// Per client address on routes that look like authentication
    /// (`/login`, `/auth`, `/token`…).
    pub per_client_auth: RouteRate,
    /// Per route, all clients together.
    pub per_route: RouteRate,
    /// Per authenticated principal.
    pub per_principal: RouteRate,
}

impl Default for EdgeRateLimits {
    fn default() -> Self {
        let r = |burst, per_second| RouteRate { burst, per_second };
        EdgeRateLimits {
            per_client: r(200, 100.0),
            per_client_auth: r(10, 0.2),
            per_route: r(10_000, 5_000.0),
            per_principal: r(100, 50.0),
        }
    }
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Names it serves (`*.example.com` allowed).
    pub names: Vec<String>,
    /// Certificate chain file, leaf first.
    pub cert: PathBuf,
    /// Private key file.
    pub key: PathBuf,
}

/// Retention per audit tier, in days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Security events.
    pub security: u32,
    /// Data processing events.
    pub processing: u32,
    /// Application events.
    pub application: u32,
    /// Network events.
    pub network: u32,
    /// API access events.
    pub api_access: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            security: 3653,
            processing: 365,
            application: 180,
            network: 90,
            api_access: 90,
        }
    }
}

/// The default control API address.
pub const DEFAULT_CONTROL_LISTEN: &str = "127.0.0.1:7443";
/// Default days between key rotations.
pub const DEFAULT_ROTATION_DAYS: u32 = 365;

/// A certificate serial as lowercase hex without separators or leading
/// zeros (`0A:1b` → `a1b`), or `None` if it is not hex.
pub fn normalise_serial(s: &str) -> Option<String> {
    let hex: String = s.trim().chars().filter(|c| *c != ':').collect();
    if hex.is_empty() || hex.len() > 80 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let t = hex.trim_start_matches('0').to_ascii_lowercase();
    Some(if t.is_empty() { "0".into() } else { t })
}
