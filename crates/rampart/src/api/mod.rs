//! The control API: the private HTTPS interface every plane hangs its
//! `/v1/...` endpoints on, plus health, readiness and metrics.
//!
//! One middleware ([`observe`]) gives every response a request id, enforces
//! the source allow-list, logs the request as JSON and counts it; one type
//! ([`ApiError`]) turns every failure into a JSON error.

mod error;
mod metrics;

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
    pub store: Arc<dyn Store>,
    pub verifier: Verifier,
    pub metrics: Metrics,
    pub clock: SharedClock,
    pub allow: Vec<IpNet>,
    pub environments: Vec<String>,
    pub services: usize,
}

pub type SharedState = Arc<AppState>;

/// The whole control API.
pub fn router(state: SharedState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/whoami", get(whoami))
        .route("/v1/status", get(status))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
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

async fn whoami(Authenticated(p): Authenticated) -> Json<Principal> {
    Json(p)
}

async fn status(
    State(st): State<SharedState>,
    Authenticated(_): Authenticated,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(json!({
        "node": st.node_name,
        "version": env!("CARGO_PKG_VERSION"),
        "store": {
            "backend": st.store.backend(),
            "schema_version": st.store.schema_version().await?,
        },
        "environments": st.environments,
        "services": st.services,
        "time": st.clock.unix_secs(),
    })))
}

async fn not_found(req: Request) -> ApiError {
    let path: String = req.uri().path().chars().take(200).collect();
    ApiError::not_found(&path)
}

/// A caller that presented a valid credential.
pub struct Authenticated(pub Principal);

impl FromRequestParts<SharedState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &SharedState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(ApiError::unauthenticated)?;
        match st.verifier.verify(token.trim()).await? {
            Some(p) => Ok(Authenticated(p)),
            None => Err(ApiError::unauthenticated()),
        }
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
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ip.is_loopback() || allow.iter().any(|n| n.contains(&ip))
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

    let mut resp = if allowed(&st.allow, peer.ip()) {
        next.run(req).await
    } else {
        ApiError::forbidden("source address not allowed").into_response()
    };
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
