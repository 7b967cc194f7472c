//! Active health checks: every interval, `GET path` (the service's own
//! path, else the checks') on every instance of every pool, fed to
//! [`Pool::record_check`].
//!
//! A probe carries the edge's signed assertion when the edge signs them
//! (subject [`PROBE_SUBJECT`], no roles, the pool's service, route
//! [`PROBE_ROUTE`]), so a service that refuses traffic without one (see
//! [`crate::assertion`]) still answers its health checks, and can tell them
//! from user traffic.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use tokio::task::JoinSet;

use crate::assertion::AssertionSigner;
use crate::balance::Pool;
use crate::config::HealthCheck;
use crate::proxy::UpstreamClient;
use crate::reqbody::ForwardBody;

/// The principal a health probe's assertion names.
pub const PROBE_SUBJECT: &str = "rampart-edge-health";
/// The route a health probe's assertion names.
pub const PROBE_ROUTE: &str = "health-check";

/// Probes every instance of `pools` once, concurrently, each pool on its
/// path; `now` (seconds since the Unix epoch) dates the probes' assertions.
pub async fn check_all(
    pools: Vec<(Arc<Pool>, String)>,
    client: &UpstreamClient,
    hc: &HealthCheck,
    signer: Option<&AssertionSigner>,
    now: u64,
) {
    let mut probes = JoinSet::new();
    for (pool, path) in pools {
        let assertion =
            signer.and_then(|s| s.header(PROBE_SUBJECT, &[], pool.service(), PROBE_ROUTE, now));
        for (i, addr) in pool.addrs().into_iter().enumerate() {
            let (pool, client, hc, assertion, path) = (
                pool.clone(),
                client.clone(),
                hc.clone(),
                assertion.clone(),
                path.clone(),
            );
            probes.spawn(async move {
                let ok = probe(&client, &addr, pool.reach(), &path, hc.timeout, assertion).await;
                pool.record_check(i, ok, hc.rise, hc.fall);
            });
        }
    }
    while probes.join_next().await.is_some() {}
}

async fn probe(
    client: &UpstreamClient,
    addr: &str,
    reach: crate::upstream::Reach<'_>,
    path: &str,
    timeout: std::time::Duration,
    assertion: Option<http::HeaderValue>,
) -> bool {
    let mut req = Request::get(path)
        .header(http::header::HOST, addr)
        .header(http::header::USER_AGENT, "rampart-edge-health");
    if let Some(a) = assertion {
        req = req.header(crate::assertion::HEADER, a);
    }
    let Ok(req) = req.body(ForwardBody::whole(Bytes::new())) else {
        return false;
    };
    let mut req = Some(req);
    let answer = async {
        let resp = client.request(addr, reach, &mut req).await.ok()?;
        let ok = resp.status().is_success() || resp.status().is_redirection();
        // Read the (small) body so the connection can serve traffic next.
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, answer).await, Ok(Some(true)))
}
