//! End-to-end: gzip of responses (`[edge.gzip]`, route `gzip`) for clients
//! that accept it, as nginx's `gzip on`: text types over the minimum size,
//! nothing compressed twice, caches told (`Vary`, weak `ETag`), streamed
//! responses compressed frame by frame so they are not held back.
//!
//! The service is a hyper server on 127.0.0.1:0 with one path per case.

mod util;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use util::*;

fn page() -> String {
    (0..200)
        .map(|i| format!("<p>row {i} of the report</p>\n"))
        .collect()
}

async fn service() -> SocketAddr {
    serve_tcp(|s| async move {
        let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
            let (ctype, body, extra): (&str, Bytes, Option<(&str, &str)>) = match req.uri().path() {
                "/small" => ("text/html", Bytes::from_static(b"<p>hi</p>"), None),
                "/png" => ("image/png", Bytes::from(vec![7u8; 8000]), None),
                "/encoded" => (
                    "text/html",
                    Bytes::from(page()),
                    Some(("content-encoding", "br")),
                ),
                "/stream" => {
                    // Two parts two seconds apart, no length.
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(async move {
                        let _ = tx.send(Frame::data(Bytes::from("first part\n".repeat(50))));
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let _ = tx.send(Frame::data(Bytes::from("second part\n".repeat(50))));
                    });
                    let mut r = Response::new(ChannelBody(rx).boxed());
                    r.headers_mut()
                        .insert("content-type", "text/plain".parse().unwrap());
                    return Ok::<_, Infallible>(r);
                }
                _ => ("text/html; charset=utf-8", Bytes::from(page()), None),
            };
            let mut r = Response::new(
                Full::new(body)
                    .map_err(|never: Infallible| match never {})
                    .boxed(),
            );
            r.headers_mut()
                .insert("content-type", ctype.parse().unwrap());
            r.headers_mut().insert("etag", "\"v1\"".parse().unwrap());
            if let Some((k, v)) = extra {
                r.headers_mut().insert(k, v.parse().unwrap());
            }
            Ok(r)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

fn gunzip(b: &[u8]) -> String {
    let mut d = flate2::write::GzDecoder::new(Vec::new());
    d.write_all(b).unwrap();
    String::from_utf8(d.finish().unwrap()).unwrap()
}

const ROUTES: &str = "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n\
                      [[routes]]\nhost = \"api.test\"\npath_prefix = \"/account\"\nservice = \"app\"\ngzip = false\n";

async fn get(
    edge: &TestEdge,
    method: &str,
    path: &str,
    gzip: bool,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let mut sender = edge.h1_client("api.test").await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.test");
    if gzip {
        req = req.header("accept-encoding", "br;q=1.0, gzip;q=0.8");
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn text_responses_are_gzipped_for_clients_that_accept_it() {
    let up = service().await;
    let edge = TestEdge::start(config(&[("app", vec![up])], ROUTES), |ec| {
        ec.gzip = Some(Default::default())
    })
    .await;

    let (status, h, body) = get(&edge, "GET", "/report", true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-encoding"], "gzip");
    assert!(!h.contains_key("content-length"));
    assert_eq!(h["vary"], "Accept-Encoding");
    assert_eq!(h["etag"], "W/\"v1\"");
    assert!(body.len() * 5 < page().len(), "{} bytes", body.len());
    assert_eq!(gunzip(&body), page());

    // Without Accept-Encoding: as the service sent it, and caches told.
    let (_, h, body) = get(&edge, "GET", "/report", false).await;
    assert!(!h.contains_key("content-encoding"));
    assert_eq!(h["vary"], "Accept-Encoding");
    assert_eq!(h["etag"], "\"v1\"");
    assert_eq!(String::from_utf8(body).unwrap(), page());

    // Not compressed: short, not text, encoded already, HEAD, and a route
    // that turns gzip off.
    for (method, path) in [
        ("GET", "/small"),
        ("GET", "/png"),
        ("GET", "/encoded"),
        ("HEAD", "/report"),
        ("GET", "/account/page"),
    ] {
        let (status, h, _) = get(&edge, method, path, true).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}");
        let enc = h.get("content-encoding").map(|v| v.to_str().unwrap());
        assert_ne!(enc, Some("gzip"), "{method} {path}");
    }
}

#[tokio::test]
async fn gzip_is_off_unless_the_edge_or_the_route_turns_it_on() {
    let up = service().await;
    let routes = "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n\
                  [[routes]]\nhost = \"api.test\"\npath_prefix = \"/docs\"\nservice = \"app\"\ngzip = true\n";
    let edge = TestEdge::start(config(&[("app", vec![up])], routes), |_| {}).await;
    let (_, h, _) = get(&edge, "GET", "/report", true).await;
    assert!(!h.contains_key("content-encoding"));
    assert!(!h.contains_key("vary"));
    let (_, h, body) = get(&edge, "GET", "/docs/report", true).await;
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(gunzip(&body), page());
}

#[tokio::test]
async fn a_streamed_response_is_compressed_part_by_part() {
    let up = service().await;
    let edge = TestEdge::start(config(&[("app", vec![up])], ROUTES), |ec| {
        ec.gzip = Some(Default::default())
    })
    .await;
    let mut sender = edge.h1_client("api.test").await;
    let req = Request::get("/stream")
        .header("host", "api.test")
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let mut body = resp.into_body();
    // The first part decompresses before the service has sent the second.
    let mut d = flate2::write::GzDecoder::new(Vec::new());
    let first = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let f = body.frame().await.unwrap().unwrap();
            d.write_all(&f.into_data().unwrap()).unwrap();
            d.flush().unwrap();
            if d.get_ref().len() >= "first part\n".len() * 50 {
                return String::from_utf8(d.get_ref().clone()).unwrap();
            }
        }
    })
    .await
    .expect("the first part arrives on its own");
    assert_eq!(first, "first part\n".repeat(50));
    while let Some(f) = body.frame().await {
        d.write_all(&f.unwrap().into_data().unwrap()).unwrap();
    }
    let all = String::from_utf8(d.finish().unwrap()).unwrap();
    assert_eq!(all, "first part\n".repeat(50) + &"second part\n".repeat(50));
}

/// The stream of `/stream` with gzip asked for, its first frame read.
async fn open_stream(edge: &TestEdge) -> (http::HeaderMap, hyper::body::Incoming) {
    let mut sender = edge.h1_client("api.test").await;
    let req = Request::get("/stream")
        .header("host", "api.test")
        .header("accept-encoding", "gzip")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (parts, mut body) = sender.send_request(req).await.unwrap().into_parts();
    body.frame().await.unwrap().unwrap();
    (parts.headers, body)
}

#[tokio::test]
async fn past_max_streams_responses_go_out_uncompressed_until_one_ends() {
    let up = service().await;
    let edge = TestEdge::start(config(&[("app", vec![up])], ROUTES), |ec| {
        ec.gzip = Some(rampart_config::EdgeGzip {
            max_streams: 1,
            ..Default::default()
        })
    })
    .await;
    // One compressed stream in flight holds the only place.
    let (h, held) = open_stream(&edge).await;
    assert_eq!(h["content-encoding"], "gzip");
    let (status, h, body) = get(&edge, "GET", "/report", true).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!h.contains_key("content-encoding"));
    assert_eq!(h["vary"], "Accept-Encoding");
    assert_eq!(String::from_utf8(body).unwrap(), page());
    // A stream whose client goes away gives its place back too.
    drop(held);
    // (Within a second: the service sends its second part after two.)
    let mut freed = false;
    for _ in 0..20 {
        let (_, h, body) = get(&edge, "GET", "/report", true).await;
        if h.get("content-encoding").is_some() {
            assert_eq!(gunzip(&body), page());
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "the place of a dropped stream never came back");
    // And a whole response gives it back as it ends.
    for _ in 0..3 {
        let (_, h, _) = get(&edge, "GET", "/report", true).await;
        assert_eq!(h["content-encoding"], "gzip");
    }
}
