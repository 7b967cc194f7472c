//! End-to-end: a client that stops reading its response (on the socket, or
//! on an HTTP/2 stream's flow-control window) has its connection closed
//! after the send timeout, and the upstream connection behind the response
//! is let go; a slow upstream with a reading client is not cut.
//!
//! The upstream is a hand-written HTTP/1.1 server on 127.0.0.1:0 that
//! streams its body in chunks and reports whether it finished or its
//! connection was closed under it.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use util::*;

/// How a streamed response ended, as the upstream saw it.
#[derive(Debug, PartialEq)]
enum Ended {
    /// Every byte was written.
    Sent,
    /// A write failed: the edge closed the connection.
    Cut,
}

/// Answers every request with `chunks` chunks of `size` bytes (one
/// `Content-Length`), waiting `gap` before each; reports each response's end.
async fn streaming_upstream(
    chunks: usize,
    size: usize,
    gap: Duration,
) -> (SocketAddr, mpsc::UnboundedReceiver<Ended>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve_tcp(move |mut s| {
        let tx = tx.clone();
        async move {
            if read_head(&mut s).await.is_none() {
                return;
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                chunks * size
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                let _ = tx.send(Ended::Cut);
                return;
            }
            let chunk = vec![b'x'; size];
            for _ in 0..chunks {
                tokio::time::sleep(gap).await;
                if s.write_all(&chunk).await.is_err() {
                    let _ = tx.send(Ended::Cut);
                    return;
                }
            }
            let _ = tx.send(Ended::Sent);
            // Keep the connection open, as a keep-alive server would.
            let _ = s.read(&mut [0u8; 1]).await;
        }
    })
    .await;
    (addr, rx)
}

async fn edge_for(up: SocketAddr) -> TestEdge {
    let cfg = config(
        &[("app", vec![up])],
        "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n",
    );
    TestEdge::start(cfg, |ec| ec.send_timeout = Duration::from_millis(300)).await
}

/// How the upstream's response ended, waiting at most `secs`.
async fn ended(rx: &mut mpsc::UnboundedReceiver<Ended>, secs: u64) -> Option<Ended> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn a_client_that_stops_reading_the_socket_is_cut_off_and_the_upstream_let_go() {
    // 1 GiB: far more than the socket buffers on the way hold.
    let (up, mut rx) = streaming_upstream(16 * 1024, 64 * 1024, Duration::ZERO).await;
    let edge = edge_for(up).await;
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let mut tls = edge.tls("api.test", cfg).await.unwrap();
    tls.write_all(b"GET /big HTTP/1.1\r\nhost: api.test\r\n\r\n")
        .await
        .unwrap();
    let got = read_head(&mut tls)
        .await
        .expect("closed before the response head");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    // The client reads nothing more.
    assert_eq!(
        ended(&mut rx, 5).await,
        Some(Ended::Cut),
        "the edge still holds the upstream connection of a response nobody reads"
    );
    // And the client's connection is over: what was in flight, then the end.
    let mut rest = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest += n,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the client's connection stayed open");
    assert!(rest < 1 << 30, "the whole body arrived: {rest} bytes");
    let counts = edge.handle.conn_counts();
    assert_eq!(counts.closed_for(rampart_edge::idle::Closed::NotReading), 1);
}

/// An HTTP/2 client over TLS with a small stream window.
async fn h2_client(
    edge: &TestEdge,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"h2"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

fn get(path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!("https://api.test{path}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test]
async fn an_http2_stream_whose_window_stays_shut_is_cut_off_and_the_upstream_let_go() {
    let (up, mut rx) = streaming_upstream(16 * 1024, 64 * 1024, Duration::ZERO).await;
    let edge = edge_for(up).await;
    let mut sender = h2_client(&edge).await;
    // The response is taken, its body never read: the client's connection
    // keeps reading the socket, but never opens the stream's window.
    let resp = sender.send_request(get("/big")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        ended(&mut rx, 5).await,
        Some(Ended::Cut),
        "the edge still holds the upstream connection of a stream nobody reads"
    );
    drop(resp);
    let counts = edge.handle.conn_counts();
    assert_eq!(counts.closed_for(rampart_edge::idle::Closed::NotReading), 1);
}

#[tokio::test]
async fn a_slow_upstream_with_a_reading_client_is_not_cut() {
    // Gaps longer than the send timeout, on both protocols: waiting on
    // the upstream is not the client's doing.
    let (up, mut rx) = streaming_upstream(3, 1024, Duration::from_millis(700)).await;
    let edge = edge_for(up).await;

    let r = edge.https("GET", "api.test", "/slow").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 3 * 1024);
    assert_eq!(ended(&mut rx, 20).await, Some(Ended::Sent));

    let mut sender = h2_client(&edge).await;
    let resp = sender.send_request(get("/slow")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 3 * 1024);
    assert_eq!(ended(&mut rx, 20).await, Some(Ended::Sent));
}
