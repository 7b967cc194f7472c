//! gzip of responses for clients that accept it, as nginx's `gzip on`.
//!
//! A response is compressed when the edge's `gzip` is on and the route does
//! not turn it off, the request accepts `gzip` (`Accept-Encoding`, a
//! q-value above 0) and is not `HEAD`, and the response is a 200 (or
//! another status with a body that is not a partial one) of a listed
//! content type, with no `Content-Encoding` already, no `Cache-Control:
//! no-transform`, and a declared length, if any, of at least the minimum.
//! The headers say so: `Content-Encoding: gzip`, `Vary: Accept-Encoding`,
//! no `Content-Length`, and a strong `ETag` made weak (the bytes differ).
//!
//! Each frame of the upstream's body is compressed as it comes and
//! flushed (a sync flush), so streamed responses (server-sent events, long
//! polls) reach the client without waiting for the rest; the deflate
//! dictionary carries over between frames. At most `max_streams`
//! responses are compressed at once ([`Streams`]); past that they go out
//! as they are.
//!
//! Compressing a response that holds a secret next to text the client
//! chose can leak the secret through the compressed length (BREACH): turn
//! it off (`gzip = false`) on routes whose pages reflect request input next
//! to tokens, or keep such tokens out of compressed responses.

use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use flate2::write::GzEncoder;
use http::header::{HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use rampart_config::EdgeGzip as GzipSettings;

/// Whether `headers` (a request's) accept a gzip response.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut star = None;
    for item in headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q_zero = parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .or_else(|| p.strip_prefix("Q="))
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
        });
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return !q_zero;
        }
        if coding == "*" {
            star = Some(!q_zero);
        }
    }
    star.unwrap_or(false)
}

/// Whether a response with `status` and `headers` to a `method` request is
/// one to compress under `settings` (the request accepting gzip is checked
/// apart, by [`accepts_gzip`]).
pub fn compressible(
    settings: &GzipSettings,
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> bool {
    if *method == Method::HEAD
        || status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
        )
        || headers.contains_key(http::header::CONTENT_ENCODING)
        || headers.contains_key(http::header::CONTENT_RANGE)
    {
        return false;
    }
    let no_transform = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
    if no_transform {
        return false;
    }
    let short = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n < settings.min_bytes);
    if short {
        return false;
    }
    let Some(media) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
    else {
        return false;
    };
    settings.types.contains(&media)
}

/// Sets the headers of a response whose body [`Gzip`] compresses.
pub fn mark_compressed(headers: &mut HeaderMap) {
    headers.remove(http::header::CONTENT_LENGTH);
    headers.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("gzip"),
    );
    add_vary(headers);
    // Another representation: a strong validator no longer holds.
    if let Some(etag) = headers.get(http::header::ETAG) {
        let b = etag.as_bytes();
        if b.first() == Some(&b'"') {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(b);
            match HeaderValue::from_bytes(&weak) {
                Ok(v) => {
                    headers.insert(http::header::ETAG, v);
                }
                Err(_) => {
                    headers.remove(http::header::ETAG);
                }
            }
        }
    }
}

/// Adds `Vary: Accept-Encoding` unless the response varies on it (or on
/// everything) already.
pub fn add_vary(headers: &mut HeaderMap) {
    let varies = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let v = v.trim();
            v == "*" || v.eq_ignore_ascii_case("accept-encoding")
        });
    if !varies {
        headers.append(
            http::header::VARY,
            HeaderValue::from_static("Accept-Encoding"),
        );
    }
}

/// A body compressed with gzip frame by frame (see the module docs).
pub struct Gzip<B> {
    inner: B,
    /// `None` once the stream has been finished.
    enc: Option<GzEncoder<Vec<u8>>>,
    /// The stream's place under `max_streams`, given back with the
    /// encoder's memory.
    slot: Option<OwnedSemaphorePermit>,
}

impl<B> std::fmt::Debug for Gzip<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gzip").finish_non_exhaustive()
    }
}

impl<B> Gzip<B> {
    /// The last frame: the end of the gzip stream.
    fn finish<E>(&mut self) -> Option<Result<Frame<Bytes>, E>> {
        let mut enc = self.enc.take()?;
        let out = deflate(&mut enc, &[]);
        drop(enc);
        self.slot = None;
        out.map(|out| Ok(Frame::data(out)))
    }

    /// Compresses `inner` at zlib `level` (1–9).
    pub fn new(inner: B, level: u32) -> Gzip<B> {
        Gzip {
            inner,
            enc: Some(GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level.clamp(1, 9)),
            )),
            slot: None,
        }
    }

    /// The same, holding `slot` (of [`Streams`]) until the stream ends or
    /// the body is dropped.
    pub fn holding(mut self, slot: OwnedSemaphorePermit) -> Gzip<B> {
        self.slot = Some(slot);
        self
    }
}

/// How many responses the edge compresses at once (`[edge.gzip]
/// max_streams`): each holds a deflate state of a few hundred KB (the
/// window, the match finder's tables and the output buffer), so without a
/// cap connections times HTTP/2 streams would bound the memory. A
/// response that finds no room goes out uncompressed, as
/// a client that does not take gzip gets it.
#[derive(Debug, Clone)]
pub struct Streams(Arc<Semaphore>);

impl Streams {
    /// Room for `max` streams at once (at least one).
    pub fn new(max: u32) -> Streams {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        Streams(Arc::new(Semaphore::new(
            max.clamp(1, Semaphore::MAX_PERMITS),
        )))
    }

    /// A place for one more stream, if there is room.
    pub fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }

    /// Places free now (for tests and status).
    pub fn free(&self) -> usize {
        self.0.available_permits()
    }
}

/// The output of compressing `data` and flushing, or (`data` empty) of
/// finishing the stream. Writing into memory cannot fail; were it to, the
/// body would end there, a truncated stream the client detects.
fn deflate(enc: &mut GzEncoder<Vec<u8>>, data: &[u8]) -> Option<Bytes> {
    let out = if data.is_empty() {
        enc.try_finish().ok()?;
        std::mem::take(enc.get_mut())
    } else {
        enc.write_all(data).ok()?;
        enc.flush().ok()?;
        std::mem::take(enc.get_mut())
    };
    Some(Bytes::from(out))
}

impl<B> Body for Gzip<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(enc) = this.enc.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => match deflate(enc, &data) {
                        Some(out) if out.is_empty() => {}
                        Some(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        None => {
                            this.enc = None;
                            this.slot = None;
                            return Poll::Ready(None);
                        }
                    },
                    // Trailers end the body: finish the stream. (A
                    // compressed response's trailers are dropped; none of
                    // the types compressed carries any.)
                    Err(_) => return Poll::Ready(this.finish()),
                },
                Poll::Ready(None) => return Poll::Ready(this.finish()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.enc.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::io::Read;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn accept_encoding_is_read_with_its_q_values() {
        for (value, want) in [
            ("gzip", true),
            ("br, gzip;q=0.8", true),
            ("GZIP", true),
            ("x-gzip", true),
            ("gzip;q=0", false),
            ("gzip; q=0.000", false),
            ("br", false),
            ("*", true),
            ("*;q=0", false),
            ("gzip;q=0, *", false),
            ("identity", false),
            ("", false),
        ] {
            let h = headers(&[("accept-encoding", value)]);
            assert_eq!(accepts_gzip(&h), want, "{value:?}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn only_listed_full_bodies_without_an_encoding_are_compressed() {
        let s = GzipSettings::default();
        let ok = |h: &[(&'static str, &'static str)]| {
            compressible(&s, &Method::GET, StatusCode::OK, &headers(h))
        };
        assert!(ok(&[("content-type", "text/html; charset=utf-8")]));
        assert!(ok(&[("content-type", "Application/JSON")]));
        assert!(ok(&[
            ("content-type", "text/css"),
            ("content-length", "4096")
        ]));
        assert!(!ok(&[
            ("content-type", "text/css"),
            ("content-length", "100")
        ]));
        assert!(!ok(&[("content-type", "image/png")]));
        assert!(!ok(&[]));
        assert!(!ok(&[
            ("content-type", "text/html"),
            ("content-encoding", "br")
        ]));
        assert!(!ok(&[
            ("content-type", "text/html"),
            ("cache-control", "public, no-transform")
        ]));
        let html = headers(&[("content-type", "text/html")]);
        assert!(!compressible(&s, &Method::HEAD, StatusCode::OK, &html));
        for status in [
            StatusCode::NO_CONTENT,
            StatusCode::NOT_MODIFIED,
            StatusCode::PARTIAL_CONTENT,
        ] {
            assert!(!compressible(&s, &Method::GET, status, &html), "{status}");
        }
        assert!(compressible(&s, &Method::GET, StatusCode::NOT_FOUND, &html));
    }

    #[test]
    fn marked_responses_vary_and_lose_length_and_strong_etags() {
        let mut h = headers(&[
            ("content-length", "5000"),
            ("etag", "\"abc\""),
            ("vary", "Origin"),
        ]);
        mark_compressed(&mut h);
        assert!(!h.contains_key("content-length"));
        assert_eq!(h["content-encoding"], "gzip");
        assert_eq!(h["etag"], "W/\"abc\"");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        let mut h = headers(&[("etag", "W/\"x\""), ("vary", "accept-encoding")]);
        mark_compressed(&mut h);
        assert_eq!(h["etag"], "W/\"x\"");
        assert_eq!(h.get_all("vary").iter().count(), 1);
    }

    /// A body of ready frames.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn frames_are_compressed_as_they_come_and_decompress_whole() {
        let lines: Vec<String> = (0..20)
            .map(|i| format!("line {i}: {}\n", "x".repeat(200)))
            .collect();
        let want = lines.concat();
        let mut body = Gzip::new(Frames(lines.into_iter().map(Bytes::from).collect()), 5);
        // Every input frame gives an output frame at once (a sync flush).
        let mut frames = Vec::new();
        while let Some(f) = body.frame().await {
            frames.push(f.unwrap().into_data().unwrap());
        }
        assert_eq!(frames.len(), 21, "one per frame and the trailer");
        let all: Vec<u8> = frames.concat();
        assert!(all.len() < want.len() / 4, "{} bytes", all.len());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&all[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, want);
    }
}
