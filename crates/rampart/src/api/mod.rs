//! The control API: the private HTTPS interface every plane hangs its
//! `/v1/...` endpoints on, plus health, readiness and metrics.
//!
//! One middleware ([`observe`]) gives every response a request id, enforces
//! the source allow-list, logs the request as JSON and counts it; one type
//! ([`ApiError`]) turns every failure into a JSON error.
//!
//! # Credentials
//!
//! [`Authenticated`] accepts, in this order: the bootstrap admin credential
//! (`rk_admin_…`, printed once by `rampart init`), an identity access token
//! (a JWT, `Bearer <jwt>`) and an identity API key (`rk_<env>_…`). Services
//! authenticate with the API keys of their service principals (created with
//! `kind = "service"`). The bootstrap admin credential is not a
//! stored identity user: it acts as the identity plane's local operator,
//! [`rampart_identity::Principal::system`], an unelevated platform `admin` in
//! `platform` and every configured environment. That is how the first users
//! are created and how elevations get their first approver; it holds no
//! session, so it cannot log out or own API keys. Identity principals reach
//! the keys and secrets planes as a [`rampart_keys::Principal`] with their
//! id, the environment of the path (only one they may act in) and their
//! effective roles, so keys policies (`role:admin`, …) apply to them as to
//! anyone else; a service principal arrives as the service of its name
//! (`svc:<name>`), so `service:` principals and the caller-service
//! condition match it.

mod error;
mod extract;
mod identity;
mod json;
mod metrics;
mod planes;
pub mod serve;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ipnet::IpNet;
use rampart_core::SharedClock;
use rampart_store::Store;
use serde_json::json;

pub use error::ApiError;
pub use metrics::Metrics;

use crate::bootstrap::{Principal, Verifier};

const REQUEST_ID: &str = "x-request-id";
/// Largest request body the control API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What handlers share.
pub struct AppState {
    pub node_name: String,
    /// The keys and secrets planes; `None` until they are started.
    pub planes: Option<Planes>,
    /// The identity plane; `None` until it is started.
    pub identity: Option<Arc<rampart_identity::Identity>>,
    /// The edge's assertion public key (base64), when this node runs an edge.
    pub edge_assertion_key: Option<String>,
    /// Reloads the edge from its config file (`POST /v1/edge/reload`), when
    /// this node runs an edge started from a file.
    pub edge_reload: Option<crate::edge::EdgeReload>,
    /// What the node runs, for the drift report in `/v1/status`; `None` in
    /// tests that build a state by hand.
    pub running: Option<Arc<crate::drift::Running>>,
    /// The audit log every `/v1` call is recorded in.
    pub audit: Option<Arc<rampart_audit::Audit>>,
    pub store: Arc<dyn Store>,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub allow: Vec<IpNet>,
    pub environments: Vec<String>,
    pub services: usize,
}

pub type SharedState = Arc<AppState>;

/// The planes behind `/v1/keys`, `/v1/secrets` and `/v1/policies`.
pub struct Planes {
    pub keys: rampart_keys::KeyService,
    pub secrets: rampart_secrets::SecretService,
}

impl AppState {
    fn planes(&self) -> Result<&Planes, ApiError> {
        self.planes
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("the keys and secrets planes are not running"))
    }

    fn identity(&self) -> Result<&rampart_identity::Identity, ApiError> {
        self.identity
            .as_deref()
            .ok_or_else(|| ApiError::unavailable("the identity plane is not running"))
    }
}

/// The whole control API.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/whoami", get(whoami))
        .route("/v1/status", get(status))
        .route("/v1/openapi.json", get(openapi))
        .merge(planes::routes())
        .merge(identity::routes())
        .route("/v1/audit/events", get(audit_events))
        .route("/v1/edge/assertion-key", get(assertion_key))
        .route("/v1/edge/reload", axum::routing::post(edge_reload))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The OpenAPI document of this API (`docs/openapi.json`, built in so the
/// binary and the repository cannot disagree; a test keeps it current).
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(st): State<SharedState>) -> Result<Json<serde_json::Value>, ApiError> {
    st.store.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "store not ready");
        ApiError::unavailable("store is not reachable")
    })?;
    Ok(Json(
        json!({"status": "ready", "store": st.store.backend()}),
    ))
}

async fn metrics_text(State(st): State<SharedState>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn whoami(who: Authenticated) -> Json<serde_json::Value> {
    Json(match &who.0 {
        Credential::Admin(p) => json!(p),
        Credential::Identity(p) => json!({
            "principal": p.id,
            "name": p.name,
            "kind": p.kind,
            "roles": p.roles,
            "environments": p.environments,
            "teams": p.teams,
            "authenticated_by": p.auth_method,
            "session": p.session,
        }),
    })
}

async fn status(
    State(st): State<SharedState>,
    who: Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut status = json!({
        "node": st.node_name,
        "version": env!("CARGO_PKG_VERSION"),
        "store": {
            "backend": st.store.backend(),
            "schema_version": st.store.schema_version().await?,
        },
        "environments": st.environments,
        "services": st.services,
        "time": st.clock.unix_secs(),
    });
    // The config file's drift, for admins: its path and errors are theirs.
    if let (true, Some(running), Some(obj)) = (who.is_admin(), &st.running, status.as_object_mut())
    {
        obj.insert("config".into(), running.report());
    }
    // The edge's deployments (instances named), for admins too.
    if let (true, Some(obj)) = (who.is_admin(), status.as_object_mut()) {
        let (pending, recent) = st.metrics.edge_deployments();
        let recent: Vec<_> = recent
            .into_iter()
            .map(|d| {
                json!({
                    "service": d.service,
                    "state": d.state.as_str(),
                    "previous": d.previous,
                    "new": d.new,
                    "unhealthy": d.unhealthy,
                    "started": d.started_unix,
                })
            })
            .collect();
        obj.insert(
            "deployments".into(),
            json!({ "pending": pending, "recent": recent }),
        );
    }
    Ok(Json(status))
}

/// `GET /v1/edge/assertion-key`: the public key services verify the edge's
/// upstream assertions with (see `rampart_edge::assertion`).
async fn assertion_key(State(st): State<SharedState>) -> Result<Json<serde_json::Value>, ApiError> {
    let key = st
        .edge_assertion_key
        .clone()
        .ok_or_else(|| ApiError::unavailable("this node runs no edge"))?;
    Ok(Json(json!({
        "algorithm": "Ed25519",
        "public_key": key,
        "header": rampart_edge::assertion::HEADER,
    })))
}

/// `POST /v1/edge/reload`: admins reload the edge from its config file, as
/// SIGHUP does. An invalid file is refused with 422 and the errors (file,
/// line, column, field); the running configuration keeps serving.
async fn edge_reload(
    State(st): State<SharedState>,
    who: Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !who.is_admin() {
        return Err(ApiError::forbidden(
            "reloading the edge needs an admin credential",
        ));
    }
    let reload = st.edge_reload.clone().ok_or_else(|| {
        ApiError::unavailable("this node runs no edge started from a config file")
    })?;
    let outcome = tokio::task::spawn_blocking(move || reload.reload())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "edge reload task");
            ApiError::internal()
        })?;
    match outcome {
        Ok(done) => Ok(Json(json!({
            "reloaded": true,
            "routes": done.routes,
            "needs_restart": done.needs_restart,
        }))),
        Err(e) => Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_config",
            e,
        )),
    }
}

/// `GET /v1/audit/events`: admins search the audit log.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    tier: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

fn bad_param(field: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "invalid_query",
        format!("{field}: {e}"),
    )
    .with_field(field)
}

async fn audit_events(
    State(st): State<SharedState>,
    who: Authenticated,
    extract::Query(q): extract::Query<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !who.is_admin() {
        return Err(ApiError::forbidden(
            "searching the audit log needs an admin credential",
        ));
    }
    let audit = st
        .audit
        .clone()
        .ok_or_else(|| ApiError::unavailable("the audit log is not running"))?;
    let time = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(rampart_audit::parse_rfc3339)
            .transpose()
            .map_err(|e| bad_param(field, e))
    };
    let query = rampart_audit::Query {
        tier: q
            .tier
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| bad_param("tier", e))?,
        actor: q.actor,
        action: q.action,
        outcome: q
            .outcome
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| bad_param("outcome", e))?,
        from: time("from", &q.from)?,
        to: time("to", &q.to)?,
        limit: Some(q.limit.unwrap_or(100).min(10_000)),
        newest_first: true,
    };
    query.validate().map_err(|e| bad_param("from", e))?;
    let records = tokio::task::spawn_blocking(move || audit.search(&query))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|e| {
            tracing::error!(error = %e, "audit search failed");
            ApiError::internal()
        })?;
    Ok(Json(json!({ "events": records })))
}

async fn not_found(req: Request) -> ApiError {
    let path: String = req.uri().path().chars().take(200).collect();
    ApiError::not_found(&path)
}

/// What a valid credential proves.
pub enum Credential {
    /// The bootstrap admin credential.
    Admin(Principal),
    /// An identity access token or API key.
    Identity(rampart_identity::Principal),
}

/// A caller that presented a valid credential.
pub struct Authenticated(pub Credential);

impl Authenticated {
    /// How the caller authenticated, for audit records.
    pub fn auth_method(&self) -> &'static str {
        match &self.0 {
            Credential::Admin(_) => "api_key",
            Credential::Identity(p) if p.auth_method == "api-key" => "identity_api_key",
            Credential::Identity(_) => "identity_token",
        }
    }

    /// Whether the caller is a platform admin: the bootstrap credential, or
    /// an identity principal holding `admin` (elevations included).
    pub fn is_admin(&self) -> bool {
        match &self.0 {
            Credential::Admin(_) => true,
            Credential::Identity(p) => p.roles.contains(&rampart_identity::Role::Admin),
        }
    }
}

impl FromRequestParts<SharedState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &SharedState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthenticated)?;
        if let Some(p) = st.verifier.verify(token).await? {
            return Ok(Authenticated(Credential::Admin(p)));
        }
        if let Some(id) = &st.identity {
            let source = parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string());
            // A JWT has exactly two dots; API keys have none.
            let verified = if token.bytes().filter(|b| *b == b'.').count() == 2 {
                id.verify_access(token)
            } else {
                id.verify_api_key(token, source.as_deref()).await
            };
            return match verified {
                Ok(p) => Ok(Authenticated(Credential::Identity(p))),
                // Refusals are one generic 401; an audit failure stays a 503.
                Err(e) if e.status() == 401 => Err(ApiError::unauthenticated()),
                Err(e) => Err(e.into()),
            };
        }
        Err(ApiError::unauthenticated())
    }
}

/// The request id and source address, for audit records.
pub struct RequestMeta {
    pub request_id: String,
    pub peer: SocketAddr,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let request_id = parts
            .headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(RequestMeta { request_id, peer })
    }
}

/// A request id from the caller is kept only if it is short and plain.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_string)
        .unwrap_or_else(new_request_id)
}

/// A fresh request id: 64 random bits drawn once per process, then a
/// counter, as 32 hex digits. Unique without asking the kernel for
/// randomness on every request, as a v4 UUID each time did (3 % of the
/// control API's CPU under load).
fn new_request_id() -> String {
    static IDS: std::sync::OnceLock<(u64, std::sync::atomic::AtomicU64)> =
        std::sync::OnceLock::new();
    let (prefix, next) = IDS.get_or_init(|| {
        let (high, _) = uuid::Uuid::new_v4().as_u64_pair();
        (high, std::sync::atomic::AtomicU64::new(0))
    });
    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix:016x}{n:016x}")
}

/// Who a bearer token claims to be, for the access record, without its secret:
/// the token's public prefix and id (`rk_admin_<id>`, `rk_<env>_<id>`).
fn actor_hint(header: &str) -> String {
    let token = header.strip_prefix("Bearer ").unwrap_or(header).trim();
    if token.contains('.') {
        // An access token's subject is only known once it is verified.
        return "jwt".to_string();
    }
    let public: String = match token.rsplit_once('_') {
        Some((head, _secret)) => head.chars().take(64).collect(),
        None => "malformed".to_string(),
    };
    if public
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        public
    } else {
        "malformed".to_string()
    }
}

fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ip.is_loopback() || allow.iter().any(|n| n.contains(&ip))
}

/// Put in a response's extensions by a handler whose plane has already
/// recorded the call durably in the audit log (with the request id and
/// source): a successful answer then gets no second, api-access record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordedByPlane;

/// An answer whose call its plane has recorded (see [`RecordedByPlane`]).
pub(crate) struct Recorded<T>(pub T);

impl<T: IntoResponse> IntoResponse for Recorded<T> {
    fn into_response(self) -> Response {
        let mut resp = self.0.into_response();
        resp.extensions_mut().insert(RecordedByPlane);
        resp
    }
}

/// Request id, source allow-list, access log and metrics for every request.
async fn observe(
    State(st): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let rid = request_id(&req);
    let rid_header =
        HeaderValue::from_str(&rid).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(REQUEST_ID, rid_header.clone());
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "OTHER",
    }
    .to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let path: String = req.uri().path().chars().take(200).collect();

    let actor = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(actor_hint)
        .unwrap_or_else(|| "anonymous".to_string());
    let mut resp = if allowed(&st.allow, peer.ip()) {
        next.run(req).await
    } else {
        ApiError::forbidden("source address not allowed").into_response()
    };
    // Every /v1 call is recorded before its answer leaves; if the audit log
    // cannot take the record, the caller gets 503 instead (fail closed). A
    // successful call whose plane has already put its own durable record of
    // it in the log (the keys plane's single crypto operations and secret reads: tier security, with
    // this request id, the source, actor, action, resource and decision)
    // gets no second record here, as a KMS call is one CloudTrail event.
    let recorded_by_plane =
        resp.status().is_success() && resp.extensions_mut().remove::<RecordedByPlane>().is_some();
    if path.starts_with("/v1/") && !recorded_by_plane {
        if let Some(audit) = &st.audit {
            let status = resp.status();
            let outcome = match status.as_u16() {
                401 | 403 => rampart_audit::Outcome::Denied,
                s if s >= 400 => rampart_audit::Outcome::Error,
                _ => rampart_audit::Outcome::Allowed,
            };
            let mut ev = rampart_audit::Event::new(
                rampart_audit::Tier::ApiAccess,
                rampart_audit::Actor::new(actor, "bearer"),
                format!("control.{}", method.to_ascii_lowercase()),
                route.clone(),
                outcome,
            );
            ev.node = st.node_name.clone();
            ev.reason = Some(format!("status {}", status.as_u16()));
            ev.request_id = Some(rid.clone());
            ev.source = Some(rampart_edge::text::socket_addr_text(peer));
            if let Err(e) = audit.record_async(ev).await {
                tracing::error!(error = %e, "audit log refused a record: failing closed");
                resp = ApiError::unavailable("the audit log cannot record this call; refused")
                    .into_response();
            }
        }
    }
    resp.headers_mut().insert(REQUEST_ID, rid_header);
    let status = resp.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    st.metrics.observe(&method, &route, status, elapsed);
    tracing::info!(
        request_id = %rid,
        method = %method,
        path = %path,
        route = %route,
        status,
        duration_ms = elapsed * 1000.0,
        peer = %peer,
        "request"
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(method, path)` of every `.route` call (path literal, then method
    /// routers such as `get(h).post(h)`) in the
    /// router's source files.
    fn routes_in_source() -> std::collections::BTreeSet<(String, String)> {
        let sources = [
            include_str!("mod.rs"),
            include_str!("identity.rs"),
            include_str!("planes.rs"),
        ];
        let mut out = std::collections::BTreeSet::new();
        for src in sources {
            for (_, rest) in src
                .match_indices(".route(")
                .map(|(i, _)| src.split_at(i + 7))
            {
                let rest = rest.trim_start();
                let Some(rest) = rest.strip_prefix('"') else {
                    continue;
                };
                let Some((path, rest)) = rest.split_once('"') else {
                    continue;
                };
                // The method routers, up to the call's closing parenthesis.
                let mut depth = 1;
                let mut end = rest.len();
                for (i, c) in rest.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let handlers = &rest[..end];
                for method in ["get", "post", "put", "delete", "patch"] {
                    let call = format!("{method}(");
                    let found = handlers.match_indices(&call).any(|(i, _)| {
                        i == 0
                            || !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    });
                    if found {
                        out.insert((method.to_owned(), path.to_owned()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_document_describes_exactly_the_routes_served() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["summary"].is_string(), "{method} {path}: no summary");
                assert!(op["responses"].is_object(), "{method} {path}: no responses");
                documented.insert((method.clone(), path.clone()));
            }
        }
        let served = routes_in_source();
        assert!(served.len() > 50, "the route parser found only {served:?}");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "routes missing from docs/openapi.json: {undocumented:?}; documented but not served: {unserved:?}"
        );
        // Every path parameter of a path is declared.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                for seg in path.split('/') {
                    if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        assert!(
                            declared.contains(&name),
                            "{method} {path}: {name} not declared"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn request_ids_are_distinct_32_hex_digits() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        }
        // Same process, same prefix; the counter moves.
        assert_eq!(a[..16], b[..16]);
    }

    #[test]
    fn allow_list_always_admits_loopback() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(allowed(&nets, "127.0.0.1".parse().unwrap()));
        assert!(allowed(&nets, "::1".parse().unwrap()));
        assert!(allowed(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!allowed(&nets, "192.0.2.1".parse().unwrap()));
        assert!(!allowed(&[], "192.0.2.1".parse().unwrap()));
    }
}
