//! WebSocket: an HTTP/1.1 `Upgrade: websocket` handshake on a route with
//! `websocket = true` goes through every request phase (ip rules, rate
//! limits, the firewall, authentication and roles) like any request; then,
//! instead of the pooled proxy, it is sent to an instance on a connection
//! of its own, with the upgrade headers kept. If the service answers `101
//! Switching Protocols`, the client gets that answer and the two
//! connections are joined: bytes are copied both ways until either side
//! closes, or neither sends anything for the upstream timeout (as nginx's
//! `proxy_read_timeout` ends an idle WebSocket).
//!
//! Any other answer is passed on as a normal response. On a route without
//! `websocket`, the upgrade headers are hop-by-hop and dropped, as before:
//! the service sees a plain GET.
//!
//! The client connection counts as busy while its tunnel lives (the idle
//! and keep-alive timeouts of `idle` do not apply), and a client that stops
//! reading is still cut off by the send timeout. At shutdown, tunnels are
//! closed when the edge's worker threads stop, after in-flight requests.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{Response, StatusCode, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use crate::balance::Pool;
use crate::error::Reject;
use crate::idle::{InFlight, TunnelOpen};
use crate::phases::RequestCtx;
use crate::watch::{read_seen, IoHook, Watched};

/// Whether `head` asks to switch to WebSocket (RFC 6455 §4.1): an HTTP/1.1
/// GET with `Upgrade: websocket` and `upgrade` among its `Connection`
/// options.
pub fn is_websocket(head: &http::request::Parts) -> bool {
    head.method == http::Method::GET
        && head.version == Version::HTTP_11
        && head
            .headers
            .get_all(UPGRADE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && head
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|o| o.trim().eq_ignore_ascii_case("upgrade"))
}

/// Sets `Connection: upgrade` and `Upgrade: websocket`, which the proxy
/// strips from every other message as hop-by-hop.
fn set_upgrade(h: &mut http::HeaderMap) {
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

/// What the upstream answered a handshake with.
pub enum Opened {
    /// `101`: the response to send, and the upstream's side of the tunnel.
    Switched(Response<()>, Box<Upgraded>),
    /// Anything else, to pass on as it is.
    Refused(Response<hyper::body::Incoming>),
}

/// Sends the handshake in `ctx` to an instance of `pool` on a connection of
/// its own; a refused connect is tried on another instance.
pub async fn open(
    pool: &Pool,
    ctx: &RequestCtx,
    assertion: Option<HeaderValue>,
    connect_timeout: Duration,
    upstream_timeout: Duration,
) -> Result<(Opened, String), Reject> {
    let mut tried = Vec::new();
    loop {
        let Some(lease) = pool.pick(&tried, pool.affinity(ctx.client)) else {
            return Err(if tried.is_empty() {
                Reject::NoHealthyUpstream {
                    retry_after: pool.retry_after(),
                }
            } else {
                Reject::UpstreamFailed
            });
        };
        tried.push(lease.index());
        let addr = lease.addr().to_string();
        let stream = match crate::upstream::connect_io(&addr, pool.tls(), connect_timeout).await {
            Ok(s) => s,
            Err(_) => {
                lease.finish(false);
                if tried.len() >= pool.len().min(crate::proxy::MAX_ATTEMPTS) {
                    return Err(Reject::UpstreamFailed);
                }
                continue;
            }
        };
        let mut req = crate::proxy::upstream_request(
            ctx,
            crate::reqbody::ForwardBody::whole(Bytes::new()),
            true,
            assertion.clone(),
            crate::upstream::Reach::default(),
        )?;
        // The upgrade headers are hop-by-hop, but this hop is upgraded too.
        set_upgrade(req.headers_mut());
        let sent = tokio::time::timeout(upstream_timeout, async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake::<
                _,
                crate::reqbody::ForwardBody,
            >(TokioIo::new(stream))
            .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "websocket upstream connection ended");
                }
            });
            sender.send_request(req).await
        })
        .await;
        let mut resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(upstream = %addr, error = %e, "websocket handshake failed");
                lease.finish(false);
                return Err(Reject::UpstreamFailed);
            }
            Err(_) => {
                lease.finish(false);
                return Err(Reject::UpstreamTimeout);
            }
        };
        lease.finish(resp.status().as_u16() < 500);
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok((Opened::Refused(resp), addr));
        }
        let upgraded = tokio::time::timeout(upstream_timeout, hyper::upgrade::on(&mut resp))
            .await
            .map_err(|_| Reject::UpstreamTimeout)?
            .map_err(|_| Reject::UpstreamFailed)?;
        let (mut parts, ()) = resp.map(|_| ()).into_parts();
        crate::proxy::strip_hop_by_hop(&mut parts.headers);
        set_upgrade(&mut parts.headers);
        return Ok((
            Opened::Switched(Response::from_parts(parts, ()), Box::new(upgraded)),
            addr,
        ));
    }
}

/// Joins the client's connection, once hyper hands it over, to the
/// upstream's, on a task of its own; `held` (the client connection's
/// request in flight, and the tunnel's count) lives until the tunnel ends.
pub fn splice(
    client: OnUpgrade,
    upstream: Box<Upgraded>,
    idle: Duration,
    held: (Option<InFlight>, TunnelOpen),
) {
    tokio::spawn(async move {
        let _held = held;
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "websocket client upgrade failed");
                return;
            }
        };
        let last = Arc::new(Heard::default());
        let mut a = Watched::new(TokioIo::new(client), last.clone());
        let mut b = Watched::new(TokioIo::new(*upstream), last.clone());
        let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
        tokio::pin!(copy);
        loop {
            let deadline = last.at() + idle;
            tokio::select! {
                r = &mut copy => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "websocket tunnel ended");
                    }
                    return;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if last.at() + idle <= Instant::now() {
                        tracing::debug!("closing a websocket tunnel idle for the upstream timeout");
                        return;
                    }
                }
            }
        }
    });
}

/// When the tunnel last carried bytes either way.
#[derive(Debug)]
struct Heard {
    start: Instant,
    /// Milliseconds after `start`.
    ms: AtomicU64,
}

impl Default for Heard {
    fn default() -> Self {
        Heard {
            start: Instant::now(),
            ms: AtomicU64::new(0),
        }
    }
}

impl Heard {
    fn at(&self) -> Instant {
        self.start + Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }

    fn now(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_max(ms, Ordering::Relaxed);
    }
}

impl IoHook for Arc<Heard> {
    fn poll_read_from<IO: AsyncRead + Unpin>(
        &mut self,
        inner: &mut IO,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        read_seen(inner, cx, buf, |_| self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, version: Version, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder()
            .method(method)
            .version(version)
            .uri("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_an_http_1_1_get_asking_for_websocket_is_a_handshake() {
        let ws = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert!(is_websocket(&head("GET", Version::HTTP_11, &ws)));
        assert!(!is_websocket(&head("POST", Version::HTTP_11, &ws)));
        assert!(!is_websocket(&head("GET", Version::HTTP_10, &ws)));
        assert!(!is_websocket(&head("GET", Version::HTTP_11, &ws[..1])));
        assert!(!is_websocket(&head(
            "GET",
            Version::HTTP_11,
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        )));
    }
}
