//! The two seams the `rampart` binary wires to other planes: an
//! [`Authenticator`] (identity plane) and an [`AuditSink`] (audit log).

use std::net::IpAddr;
use std::time::Duration;

use rampart_config::{Route, RouteAuth, WafMode};

use crate::mtls::ClientCert;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stable identifier (`anonymous` on `auth = "none"` routes).
    pub id: String,
    /// Roles held.
    pub roles: Vec<String>,
}

impl Principal {
    /// The caller on a route that does not authenticate.
    pub fn anonymous() -> Principal {
        Principal {
            id: "anonymous".into(),
            roles: Vec::new(),
        }
    }
}

/// What an authenticator sees.
#[derive(Debug)]
pub struct AuthRequest<'a> {
    /// The matched route.
    pub route: &'a Route,
    /// The request head.
    pub head: &'a http::request::Parts,
    /// The client address (after trusted `X-Forwarded-For`).
    pub client: IpAddr,
}

/// Outcome of authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials accepted.
    Authenticated(Principal),
    /// Missing or invalid credentials (401).
    Unauthenticated,
}

/// Authenticates routes whose `auth` is `api_key` or `session`, and names
/// the principal of a verified client certificate on `client_cert` routes.
/// Routes with `auth = "none"` never reach it.
pub trait Authenticator: Send + Sync {
    /// Checks the request's credentials for `req.route.auth` (`api_key` or
    /// `session`).
    fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome;

    /// The principal of `cert`, which the handshake verified against the
    /// client CAs and which is not revoked. The default takes the name
    /// the certificate gives ([`ClientCert::principal`]) with no roles;
    /// the identity plane adds the roles of the principal of that name,
    /// or refuses a disabled one.
    fn authenticate_certificate(&self, cert: &ClientCert, _req: &AuthRequest<'_>) -> AuthOutcome {
        AuthOutcome::Authenticated(Principal {
            id: cert.principal.clone(),
            roles: Vec::new(),
        })
    }
}

/// Refuses every credential: the safe default until the identity plane is
/// wired in.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuthenticator;

impl Authenticator for NoAuthenticator {
    fn authenticate(&self, _req: &AuthRequest<'_>) -> AuthOutcome {
        AuthOutcome::Unauthenticated
    }
}

/// Whether `p` may use `route`: any principal when the route names no
/// roles, else one role in common.
pub fn authorised(route: &Route, p: &Principal) -> bool {
    route.auth == RouteAuth::None
        || route.roles.is_empty()
        || route.roles.iter().any(|r| p.roles.contains(r))
}

/// One request as the audit log sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// The request id sent upstream as `X-Request-Id`.
    pub request_id: String,
    /// Client address.
    pub client: IpAddr,
    /// Method.
    pub method: String,
    /// Host (no port).
    pub host: String,
    /// Path, without the query and with segment parameters cut
    /// (`/login;…`): both can carry credentials.
    pub path: String,
    /// The matched route's `host` + `path_prefix`, if any.
    pub route: Option<String>,
    /// The principal, once authenticated.
    pub principal: Option<String>,
    /// Status sent to the client.
    pub status: u16,
    /// The refusal reason (see [`crate::Reject::reason`]), if refused.
    pub reason: Option<&'static str>,
    /// The upstream that answered, if any.
    pub upstream: Option<String>,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Response `Content-Length`, when known.
    pub bytes_out: Option<u64>,
    /// Time until response headers.
    pub latency: Duration,
    /// What the WAF found, when it ran and a rule matched.
    pub waf: Option<WafFindings>,
    /// The client certificate's serial (hex), on mutual TLS connections.
    pub client_cert_serial: Option<String>,
    /// More about a refusal: for a schema violation, the JSON Pointer of
    /// the offending field.
    pub detail: Option<String>,
}

/// The WAF's findings on one request, for the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WafFindings {
    /// The route's mode when the rules ran.
    pub mode: WafMode,
    /// Ids of the rules that matched and log, in order.
    pub rule_ids: Vec<u64>,
    /// Their messages (at most 8, each at most 200 characters).
    pub messages: Vec<String>,
    /// The inbound anomaly score (CRS).
    pub anomaly_score: i64,
    /// The outbound anomaly score (CRS's response rules; 0 when the
    /// response phases did not run).
    pub outbound_anomaly_score: i64,
    /// The rule whose disruptive action decided, if any (in detect mode it
    /// was not enforced).
    pub disrupted_by: Option<u64>,
}

/// Receives one [`AccessRecord`] per request, refused or not.
pub trait AuditSink: Send + Sync {
    /// Records `rec`. Must not block for long: it runs on the request path.
    fn record(&self, rec: &AccessRecord);

    /// Records `rec` and resolves once it is durable. The edge awaits this
    /// before it answers; an error turns the answer into a 503 (the edge
    /// fails closed when its access record cannot be kept). The default
    /// calls [`AuditSink::record`] and succeeds at once.
    fn record_durable(&self, rec: &AccessRecord) -> DurableRecord {
        self.record(rec);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Every edge worker is about to park and every request in flight
    /// waits for its record, so no new record comes until the log answers
    /// one of them. A log that gathers records into group commits can sync
    /// what it holds at once. Runs on a worker thread: must not block.
    fn callers_idle(&self) {}
}

/// What [`AuditSink::record_durable`] returns: `Err` with a reason (never
/// shown to the client) when the record could not be kept.
pub type DurableRecord =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'static>>;

/// Discards records.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn record(&self, _rec: &AccessRecord) {}
}
