//! End-to-end: a route with `stream_request_body = true` passes request
//! bodies to the service as they arrive, still held to the route's body
//! limit and the body read timeout; a route without it reads them whole
//! first.
//!
//! The service is a hyper server on 127.0.0.1:0 that reports how much of
//! each body it has received, frame by frame, and whether the body ended
//! or broke off. The client sends its body from a channel, so the test
//! decides when each part leaves.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use util::*;

/// What the service saw of a request body.
#[derive(Debug, PartialEq)]
enum Seen {
    /// This many bytes so far.
    Bytes(usize),
    /// The body ended whole, this long.
    Ended(usize),
    /// The body broke off after this many bytes.
    Broken(usize),
}

/// A service that reads each request body frame by frame, reporting as it
/// goes, and answers 200 with the length it read.
async fn counting_service() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve_tcp(move |s| {
        let tx = tx.clone();
        async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let tx = tx.clone();
                async move {
                    let mut body = req.into_body();
                    let mut n = 0;
                    loop {
                        match body.frame().await {
                            None => break,
                            Some(Ok(f)) => {
                                if let Some(d) = f.data_ref() {
                                    n += d.len();
                                    let _ = tx.send(Seen::Bytes(n));
                                }
                            }
                            Some(Err(_)) => {
                                let _ = tx.send(Seen::Broken(n));
                                return Err("body broke off");
                            }
                        }
                    }
                    let _ = tx.send(Seen::Ended(n));
                    Ok(Response::new(Full::new(Bytes::from(n.to_string()))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
    .await;
    (addr, rx)
}

/// Starts a POST of a channel body to `path` on `api.test`; returns the
/// chunk sender and the pending response (status and body, or an error
/// when the edge closed the connection first).
async fn post(
    edge: &TestEdge,
    path: &str,
) -> (
    mpsc::UnboundedSender<Frame<Bytes>>,
    tokio::task::JoinHandle<Result<(StatusCode, String), hyper::Error>>,
) {
    let mut sender = edge.h1_client("api.test").await;
    let (tx, rx) = mpsc::unbounded_channel();
    let req = Request::post(path)
        .header("host", "api.test")
        .body(ChannelBody(rx))
        .unwrap();
    let resp = tokio::spawn(async move {
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    });
    (tx, resp)
}

/// Waits (at most `ms`) for the service to report at least `n` bytes, or
/// the body's end or break; returns the last report.
async fn seen_at_least(rx: &mut mpsc::UnboundedReceiver<Seen>, n: usize, ms: u64) -> Option<Seen> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Seen::Bytes(m))) if m < n => continue,
            Ok(Some(s)) => return Some(s),
            Ok(None) | Err(_) => return None,
        }
    }
}

const CHUNK: usize = 64 * 1024;

fn routes(extra: &str) -> String {
    format!(
        "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\npath_prefix = \"/up\"\nstream_request_body = true\n{extra}\
         [[routes]]\nhost = \"api.test\"\nservice = \"app\"\npath_prefix = \"/whole\"\n"
    )
}

#[tokio::test]
async fn a_streamed_body_reaches_the_service_before_it_ends() {
    let (up, mut seen) = counting_service().await;
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("app", vec![up])], &routes("")), |ec| {
        ec.audit = rec
    })
    .await;

    let (tx, resp) = post(&edge, "/up/file").await;
    tx.send(Frame::data(Bytes::from(vec![b'a'; CHUNK])))
        .unwrap();
    // The first chunk is at the service while the client still holds the
    // rest back.
    assert_eq!(
        seen_at_least(&mut seen, CHUNK, 5_000).await,
        Some(Seen::Bytes(CHUNK))
    );
    for _ in 0..3 {
        tx.send(Frame::data(Bytes::from(vec![b'b'; CHUNK])))
            .unwrap();
    }
    drop(tx);
    let (status, body) = resp.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, (4 * CHUNK).to_string());
    assert_eq!(
        seen_at_least(&mut seen, usize::MAX, 5_000).await,
        Some(Seen::Ended(4 * CHUNK))
    );
    let recs = records.0.lock().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].status, 200);
    assert_eq!(recs[0].bytes_in, (4 * CHUNK) as u64);
}

#[tokio::test]
async fn a_route_without_streaming_reads_the_body_whole_first() {
    let (up, mut seen) = counting_service().await;
    let edge = TestEdge::start(config(&[("app", vec![up])], &routes("")), |_| {}).await;

    let (tx, resp) = post(&edge, "/whole/file").await;
    tx.send(Frame::data(Bytes::from(vec![b'a'; CHUNK])))
        .unwrap();
    // Nothing reaches the service while the body is incomplete.
    assert_eq!(seen_at_least(&mut seen, 1, 500).await, None);
    tx.send(Frame::data(Bytes::from(vec![b'b'; CHUNK])))
        .unwrap();
    drop(tx);
    let (status, body) = resp.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, (2 * CHUNK).to_string());
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_cut_off_with_413() {
    let (up, mut seen) = counting_service().await;
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(
        config(&[("app", vec![up])], &routes("max_body_bytes = 100000\n")),
        |ec| ec.audit = rec,
    )
    .await;

    // No Content-Length: the limit can only be found as the body arrives.
    let (tx, resp) = post(&edge, "/up/file").await;
    tx.send(Frame::data(Bytes::from(vec![b'a'; CHUNK])))
        .unwrap();
    tx.send(Frame::data(Bytes::from(vec![b'b'; CHUNK])))
        .unwrap();
    drop(tx);
    let (status, body) = resp.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    // The service got the part under the limit and then a broken body,
    // never a whole one.
    match seen_at_least(&mut seen, usize::MAX, 5_000).await {
        Some(Seen::Broken(n)) => assert!(n <= 100_000, "{n}"),
        other => panic!("service saw {other:?}"),
    }
    let recs = records.0.lock().unwrap();
    assert_eq!(recs[0].status, 413);
    assert_eq!(recs[0].reason, Some("body_too_large"));
}

#[tokio::test]
async fn a_streamed_body_the_client_stops_sending_times_out_with_408() {
    let (up, mut seen) = counting_service().await;
    let edge = TestEdge::start(config(&[("app", vec![up])], &routes("")), |ec| {
        ec.body_read_timeout = Duration::from_millis(300)
    })
    .await;

    let (tx, resp) = post(&edge, "/up/file").await;
    tx.send(Frame::data(Bytes::from(vec![b'a'; 1000]))).unwrap();
    // The client keeps its connection and sends nothing more.
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .expect("the edge answers within the body read timeout")
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{body}");
    match seen_at_least(&mut seen, usize::MAX, 5_000).await {
        Some(Seen::Broken(1000)) => {}
        other => panic!("service saw {other:?}"),
    }
    drop(tx);
}

#[tokio::test]
async fn a_slow_steady_upload_is_not_cut_by_the_upstream_timeout() {
    let (up, _seen) = counting_service().await;
    let edge = TestEdge::start(config(&[("app", vec![up])], &routes("")), |ec| {
        ec.upstream_timeout = Duration::from_millis(400);
        ec.body_read_timeout = Duration::from_millis(400);
    })
    .await;

    // Six parts 200 ms apart: longer in all than the upstream timeout,
    // never idle for it.
    let (tx, resp) = post(&edge, "/up/file").await;
    for _ in 0..6 {
        tx.send(Frame::data(Bytes::from(vec![b'a'; 1000]))).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tx);
    let (status, body) = resp.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "6000");
}

#[tokio::test]
async fn a_streamed_body_goes_to_another_instance_after_a_connect_error() {
    let (up, _seen) = counting_service().await;
    let dead = dead_addr().await;
    let edge = TestEdge::start(config(&[("app", vec![dead, up])], &routes("")), |_| {}).await;
    // Round robin starts on either instance; over four requests some go
    // to the dead one first and must move on with their body unread.
    for i in 0..4 {
        let (tx, resp) = post(&edge, "/up/file").await;
        tx.send(Frame::data(Bytes::from(vec![b'a'; 5000 + i])))
            .unwrap();
        drop(tx);
        let (status, body) = resp.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        assert_eq!(body, (5000 + i).to_string());
    }
}

#[tokio::test]
async fn a_streaming_route_may_take_bodies_over_the_edges_buffered_limit() {
    let (up, _seen) = counting_service().await;
    // The edge reads at most 100 kB whole; the streaming route takes 1 MB.
    let routes = "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\npath_prefix = \"/up\"\nstream_request_body = true\nmax_body_bytes = 1000000\n\
                  [[routes]]\nhost = \"api.test\"\nservice = \"app\"\npath_prefix = \"/whole\"\nmax_body_bytes = 1000000\n";
    let edge = TestEdge::start(config(&[("app", vec![up])], routes), |ec| {
        ec.max_body_bytes = 100_000;
        ec.max_buffered_body_bytes = 100_000;
    })
    .await;
    for (path, want) in [
        ("/up/file", StatusCode::OK),
        ("/whole/file", StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        // 128 KiB, over the edge's limit.
        let (tx, resp) = post(&edge, path).await;
        for _ in 0..2 {
            tx.send(Frame::data(Bytes::from(vec![b'a'; CHUNK])))
                .unwrap();
        }
        drop(tx);
        let (status, body) = resp.await.unwrap().unwrap();
        assert_eq!(status, want, "{path}: {body}");
    }
}
