//! Forwarding to an upstream: balance, build the upstream request (hop-by-hop
//! headers stripped, `X-Forwarded-For`, `X-Forwarded-Proto` and
//! `X-Request-Id` set, other forwarding headers a client could forge
//! removed), send, and on failure retry on another instance when that is
//! safe.
//!
//! Retry rules: a connect error is retried for any method (nothing was
//! sent); other errors, timeouts and 502/503/504 only for idempotent
//! methods. At most three attempts, each on a different instance.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;

use crate::balance::Pool;
use crate::error::Reject;
use crate::phases::RequestCtx;
use crate::reqbody::{answered_within, ForwardBody, Streamed};
use crate::upstream::{UpstreamBody, Upstreams};

/// The HTTP client used towards upstreams.
pub type UpstreamClient = std::sync::Arc<Upstreams>;

/// Attempts per request, each on another instance.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 9] = [
    HeaderName::from_static("connection"),
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-authenticate"),
    HeaderName::from_static("proxy-authorization"),
    HeaderName::from_static("te"),
    HeaderName::from_static("trailer"),
    HeaderName::from_static("transfer-encoding"),
    HeaderName::from_static("upgrade"),
];

/// The place in [`HOP_BY_HOP`] of a header name (in lower case, as a
/// [`HeaderName`] holds it).
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "proxy-connection" => 1,
        "keep-alive" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        _ => return None,
    })
}

/// Removes hop-by-hop headers, including those named in `Connection`.
///
/// Most messages carry none, or only `Connection` naming none but
/// hop-by-hop headers and `close` (an upstream's `Connection: keep-alive`):
/// one pass over the names finds those present, and only they are
/// removed; a name is built only for other headers `Connection` lists.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let mut present = 0u16;
    for n in h.keys() {
        if let Some(i) = hop_index(n.as_str()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let listed: Vec<HeaderName> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            // as sent (lower case) in all but odd messages
            let known = |n: &str| n == "close" || hop_index(n).is_some();
            !known(n)
                && (!n.bytes().any(|b| b.is_ascii_uppercase()) || !known(&n.to_ascii_lowercase()))
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for (i, hop) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(hop);
        }
    }
    for n in listed {
        h.remove(n);
    }
}

/// Headers in which proxies tell services about the client or the original
/// request, other than the ones the edge sets itself. Services and their
/// frameworks believe them (a client address from `X-Real-IP` or
/// `Forwarded`, absolute URLs such as password-reset links built from
/// `X-Forwarded-Host`, the route from `X-Original-URL`), and only the edge
/// knows the facts they state, so a client's are removed, not forwarded.
const FORGEABLE: [&str; 11] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-original-url",
    "x-rewrite-url",
];

/// Header names the edge reserves for itself (the assertion among them): a
/// client's never reach a service.
const RESERVED_PREFIX: &str = "x-rampart-";

/// Removes the forwarding headers in [`FORGEABLE`] and any in the edge's
/// own `x-rampart-` namespace.
fn strip_forgeable(h: &mut HeaderMap) {
    let gone: Vec<HeaderName> = h
        .keys()
        .filter(|n| FORGEABLE.contains(&n.as_str()) || n.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    for n in gone {
        h.remove(n);
    }
}

/// Joins several `Cookie` fields into one, with `; ` between them.
///
/// An HTTP/2 client may send its cookies as several fields, and browsers
/// do (RFC 9113 §8.2.3, for better header compression); an HTTP/1.1
/// request carries at most one (RFC 6265 §5.4), and many servers read only
/// the first, so the upstream would see a session without most of its
/// cookies. The edge speaks HTTP/1.1 to upstreams and joins them, as the
/// RFC requires of a gateway.
fn join_cookies(h: &mut HeaderMap) {
    let mut all = h.get_all(http::header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in h.get_all(http::header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    // Each part was a valid field value, and so is their join.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        h.insert(http::header::COOKIE, v);
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// What came back from the upstream.
#[derive(Debug)]
pub struct Forwarded {
    /// The response.
    pub response: Response<UpstreamBody>,
    /// The instance that answered.
    pub upstream: String,
}

/// Sends the request to an instance of `pool`, retrying as described above.
///
/// `streamed` is the client's body when the route streams it (see
/// `reqbody`); the request then goes to another instance only while its
/// body is unread (a connect error), and the upstream timeout counts from
/// the body's last byte.
pub async fn forward(
    client: &UpstreamClient,
    pool: &Pool,
    ctx: &RequestCtx,
    streamed: Option<Streamed>,
    https: bool,
    timeout: Duration,
    assertion: Option<HeaderValue>,
) -> Result<Forwarded, Reject> {
    let body = ctx.body().cloned().unwrap_or_default();
    let progress = streamed.as_ref().map(Streamed::progress);
    // A streamed body can be sent once: the request is built once and
    // handed back only by a connect error.
    let mut unsent = match streamed {
        Some(s) => Some(upstream_request(
            ctx,
            ForwardBody::Streamed(s),
            https,
            assertion.clone(),
            pool.reach(),
        )?),
        None => None,
    };
    let retry_ok = idempotent(&ctx.head.method);
    let attempts = pool.len().min(MAX_ATTEMPTS);
    let affinity = pool.affinity(ctx.client);
    let mut tried = Vec::new();
    let mut last: Result<Forwarded, Reject> = Err(Reject::UpstreamFailed);
    loop {
        if tried.len() >= attempts {
            return last;
        }
        let mut req = match &progress {
            None => Some(upstream_request(
                ctx,
                ForwardBody::whole(body.clone()),
                https,
                assertion.clone(),
                pool.reach(),
            )?),
            // Sent already to an instance that failed: nothing to retry.
            Some(_) if unsent.is_none() => return last,
            Some(_) => unsent.take(),
        };
        let Some(lease) = pool.pick(&tried, affinity) else {
            if tried.is_empty() {
                return Err(Reject::NoHealthyUpstream {
                    retry_after: pool.retry_after(),
                });
            }
            return last;
        };
        tried.push(lease.index());
        let upstream = lease.addr().to_string();
        let answer = answered_within(
            timeout,
            client.request(&upstream, pool.reach(), &mut req),
            progress.as_deref(),
        )
        .await;
        if progress.is_some() {
            unsent = req.take();
        }
        // A streamed body cut off (too large, too slow, broken) fails the
        // request whatever the upstream made of it.
        if let Some(refused) = progress.as_ref().and_then(|p| p.failure()) {
            lease.finish(true);
            return Err(refused);
        }
        match answer {
            Some(Ok(response)) => {
                let status = response.status().as_u16();
                lease.finish(status < 500);
                let gateway = matches!(status, 502..=504);
                let out = Forwarded { response, upstream };
                if gateway && retry_ok {
                    last = Ok(out);
                    continue;
                }
                return Ok(out);
            }
            Some(Err(e)) => {
                lease.finish(false);
                tracing::debug!(%upstream, error = %e, "upstream request failed");
                last = Err(Reject::UpstreamFailed);
                if !(e.is_connect() || retry_ok) {
                    return last;
                }
            }
            None => {
                lease.finish(false);
                last = Err(Reject::UpstreamTimeout);
                if !retry_ok {
                    return last;
                }
            }
        }
    }
}

/// The request sent to an upstream for `ctx`: origin form, the
/// normalised path, hop-by-hop and forgeable headers gone, the edge's own
/// forwarding headers and assertion set.
///
/// To an HTTP/2 service (`reach.http2`) `TE: trailers`, which gRPC
/// requires and HTTP/2 allows, is kept when the client sent it (the
/// request takes HTTP/2's form in `upstream`).
pub(crate) fn upstream_request(
    ctx: &RequestCtx,
    body: ForwardBody,
    https: bool,
    assertion: Option<HeaderValue>,
    reach: crate::upstream::Reach<'_>,
) -> Result<Request<ForwardBody>, Reject> {
    // Origin form (`/path?query`): the connection is to the upstream
    // already, and `Host` says which site. The path is the normalised one
    // the route was matched on.
    let pq = ctx
        .forward_path
        .as_ref()
        .or(ctx.head.uri.path_and_query())
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let mut headers = ctx.head.headers.clone();
    join_cookies(&mut headers);
    let te_trailers = reach.http2
        && headers
            .get_all(http::header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(&mut headers);
    if te_trailers {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    // Only the edge speaks for the edge: a client's assertion (or any
    // other `x-rampart-` header) and forwarding claims never pass.
    strip_forgeable(&mut headers);
    // The route's own rules (never on the names the edge sets below).
    for name in &ctx.route.remove_request {
        headers.remove(name);
    }
    for (name, value) in &ctx.route.set_request {
        headers.insert(name, value.clone());
    }
    headers.remove(http::header::CONTENT_LENGTH);
    if !headers.contains_key(http::header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&ctx.host) {
            headers.insert(http::header::HOST, v);
        }
    }
    let uri = http::Uri::from(pq);
    let set = |h: &mut HeaderMap, name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(&mut headers, "x-forwarded-for", &ctx.forwarded_for);
    set(
        &mut headers,
        "x-forwarded-proto",
        if https { "https" } else { "http" },
    );
    set(&mut headers, "x-request-id", &ctx.request_id);
    if let Some(a) = assertion {
        headers.insert(HeaderName::from_static(crate::assertion::HEADER), a);
    }
    let mut req = Request::new(body);
    *req.method_mut() = ctx.head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Reads `body` until `max` bytes or its end, whichever comes first, and
/// returns what was read and what follows: the rest of the body, or the
/// trailers it ended with. [`Replayed`] sends both on.
pub async fn read_prefix(mut body: UpstreamBody, max: usize) -> Result<(Bytes, Rest), Reject> {
    let mut buf = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok((buf.freeze(), Rest::Done(None))),
            Some(Err(_)) => return Err(Reject::UpstreamFailed),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() >= max {
                        return Ok((buf.freeze(), Rest::Body(body)));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Ok((buf.freeze(), Rest::Done(Some(trailers))));
                    }
                }
            },
        }
    }
}

/// What follows the part of a response body that [`read_prefix`] read.
#[derive(Debug)]
pub enum Rest {
    /// The body ended, with these trailers if it had any.
    Done(Option<HeaderMap>),
    /// The body goes on.
    Body(UpstreamBody),
}

/// A response body whose first part was read already: that part, then the
/// rest as it arrives.
#[derive(Debug)]
pub struct Replayed {
    read: Option<Bytes>,
    rest: Rest,
}

impl Replayed {
    /// `read` first, then `rest`.
    pub fn new(read: Bytes, rest: Rest) -> Replayed {
        Replayed {
            read: (!read.is_empty()).then_some(read),
            rest,
        }
    }
}

impl hyper::body::Body for Replayed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        use std::task::Poll;
        if let Some(read) = self.read.take() {
            return Poll::Ready(Some(Ok(hyper::body::Frame::data(read))));
        }
        match &mut self.rest {
            Rest::Body(b) => std::pin::Pin::new(b).poll_frame(cx),
            Rest::Done(trailers) => {
                Poll::Ready(trailers.take().map(|t| Ok(hyper::body::Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.rest {
            Rest::Body(b) => self.read.is_none() && b.is_end_stream(),
            Rest::Done(t) => self.read.is_none() && t.is_none(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let read = self.read.as_ref().map_or(0, |r| r.len() as u64);
        match &self.rest {
            Rest::Body(b) => {
                let h = b.size_hint();
                let mut out = hyper::body::SizeHint::new();
                out.set_lower(h.lower().saturating_add(read));
                if let Some(u) = h.upper() {
                    out.set_upper(u.saturating_add(read));
                }
                out
            }
            Rest::Done(_) => hyper::body::SizeHint::with_exact(read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_cookie_fields_become_one() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.append("cookie", HeaderValue::from_static("b=2; c=3"));
        h.append("cookie", HeaderValue::from_static("d=4"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3; d=4"]);

        let mut one = HeaderMap::new();
        one.append("cookie", HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one.get_all("cookie").iter().collect::<Vec<_>>(), ["a=1"]);
        let mut none = HeaderMap::new();
        join_cookies(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn hop_index_names_each_hop_by_hop_header() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(n.as_str()), Some(i));
        }
        assert_eq!(hop_index("Connection"), None, "names are lower case");
        assert_eq!(hop_index("x-connection"), None);
    }

    #[test]
    fn hop_by_hop_and_connection_listed_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
        // names listed in any case, beside hop-by-hop ones and `close`, in
        // several Connection headers; a message without any keeps all
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("Keep-Alive , X-A"));
        h.append("connection", HeaderValue::from_static("close,TE, x-b,,"));
        for n in [
            "keep-alive",
            "te",
            "x-a",
            "x-b",
            "x-c",
            "upgrade",
            "proxy-connection",
        ] {
            h.insert(n, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-c"]);
        let mut plain = HeaderMap::new();
        plain.insert("x-a", HeaderValue::from_static("1"));
        plain.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 2);
    }

    #[test]
    fn forgeable_forwarding_headers_and_the_edge_namespace_go() {
        let mut h = HeaderMap::new();
        for n in FORGEABLE {
            h.insert(n, HeaderValue::from_static("127.0.0.1"));
        }
        h.insert("x-rampart-assertion", HeaderValue::from_static("v2.x.y"));
        h.insert("X-Rampart-Principal", HeaderValue::from_static("admin"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_forgeable(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        // X-Forwarded-For is rewritten by the caller, not removed here.
        assert_eq!(left, ["accept", "x-forwarded-for"]);
    }
}
