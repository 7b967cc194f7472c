//! Active health checks: every interval, `GET path` on every instance of
//! every pool, fed to [`Pool::record_check`].

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::task::JoinSet;

use crate::balance::Pool;
use crate::config::HealthCheck;
use crate::proxy::UpstreamClient;

/// Probes every instance of `pools` once, concurrently.
pub async fn check_all(pools: Vec<Arc<Pool>>, client: &UpstreamClient, hc: &HealthCheck) {
    let mut probes = JoinSet::new();
    for pool in pools {
        for (i, addr) in pool.addrs().into_iter().enumerate() {
            let (pool, client, hc) = (pool.clone(), client.clone(), hc.clone());
            probes.spawn(async move {
                let ok = probe(&client, &addr, &hc).await;
                pool.record_check(i, ok, hc.rise, hc.fall);
            });
        }
    }
    while probes.join_next().await.is_some() {}
}

async fn probe(client: &UpstreamClient, addr: &str, hc: &HealthCheck) -> bool {
    let Ok(req) = Request::get(hc.path.as_str())
        .header(http::header::HOST, addr)
        .header(http::header::USER_AGENT, "rampart-edge-health")
        .body(Full::new(Bytes::new()))
    else {
        return false;
    };
    let answer = async {
        let resp = client.request(addr, req).await.ok()?;
        let ok = resp.status().is_success() || resp.status().is_redirection();
        // Read the (small) body so the connection can serve traffic next.
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(hc.timeout, answer).await,
        Ok(Some(true))
    )
}
