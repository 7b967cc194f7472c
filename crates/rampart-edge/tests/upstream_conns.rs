//! End-to-end: how the edge keeps its upstream connections, against a
//! hand-written HTTP/1.1 upstream on 127.0.0.1:0 that counts connections
//! and can close them the ways real servers do: after every response
//! (`Connection: close`), or after a short idle time (a keep-alive timeout
//! shorter than the edge's, the race every proxy meets).

mod util;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::*;

#[derive(Clone, Copy)]
enum Mode {
    /// Keep-alive until the client closes.
    KeepAlive,
    /// `Connection: close` on every response, then close.
    CloseEach,
    /// Keep-alive, but close a connection idle for 100 ms.
    IdleClose,
}

struct RawUpstream {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// Reads request heads (and `Content-Length` bodies) and answers each with
/// `ok <n>`, where n counts requests over all connections.
async fn raw_upstream(mode: Mode) -> RawUpstream {
    let conns = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (conns.clone(), requests.clone());
    let addr = serve_tcp(move |mut s| {
        c.fetch_add(1, Ordering::SeqCst);
        let r = r.clone();
        async move {
            let mut buf = Vec::new();
            loop {
                // Wait for a whole head (and its body).
                let (head_end, body_len) = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                        if buf.len() >= i + 4 + len {
                            break (i + 4, len);
                        }
                    }
                    let mut chunk = [0u8; 4096];
                    let read = match mode {
                        Mode::IdleClose => {
                            match tokio::time::timeout(
                                Duration::from_millis(100),
                                s.read(&mut chunk),
                            )
                            .await
                            {
                                Ok(r) => r,
                                Err(_) => return, // idle: close
                            }
                        }
                        _ => s.read(&mut chunk).await,
                    };
                    match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                buf.drain(..head_end + body_len);
                let n = r.fetch_add(1, Ordering::SeqCst) + 1;
                let body = format!("ok {n}");
                let close = matches!(mode, Mode::CloseEach);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n{body}",
                    body.len(),
                    if close { "connection: close\r\n" } else { "" }
                );
                if s.write_all(resp.as_bytes()).await.is_err() || close {
                    return;
                }
            }
        }
    })
    .await;
    RawUpstream {
        addr,
        conns,
        requests,
    }
}

async fn edge_for(up: &RawUpstream) -> TestEdge {
    let cfg = config(
        &[("app", vec![up.addr])],
        "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n",
    );
    TestEdge::start(cfg, |_| {}).await
}

#[tokio::test]
async fn one_upstream_connection_serves_many_requests() {
    let up = raw_upstream(Mode::KeepAlive).await;
    let edge = edge_for(&up).await;
    for i in 1..=20 {
        let r = edge.https("GET", "api.test", "/x").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body, format!("ok {i}"));
    }
    // Connections are pooled per worker thread (one per core by default),
    // and each client connection lands on one of them.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let made = up.conns.load(Ordering::SeqCst);
    assert!(
        (1..=threads).contains(&made),
        "sequential requests reuse one kept-alive upstream connection per worker thread: {made} for {threads} threads"
    );
}

/// One worker thread, or none (connections on the shared runtime): one
/// upstream connection for every sequential request.
#[tokio::test]
async fn with_one_thread_every_request_shares_one_upstream_connection() {
    for threads in [1, 0] {
        let up = raw_upstream(Mode::KeepAlive).await;
        let cfg = config(
            &[("app", vec![up.addr])],
            "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n",
        );
        let edge = TestEdge::start(cfg, |c| c.worker_threads = Some(threads)).await;
        for i in 1..=10 {
            let r = edge.https("GET", "api.test", "/x").await;
            assert_eq!(r.body, format!("ok {i}"), "{threads} threads: {r:?}");
        }
        assert_eq!(up.conns.load(Ordering::SeqCst), 1, "{threads} threads");
    }
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_response_still_gets_every_request() {
    let up = raw_upstream(Mode::CloseEach).await;
    let edge = edge_for(&up).await;
    for i in 1..=10 {
        let r = edge.https("POST", "api.test", "/x").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {r:?}");
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 10);
    assert_eq!(up.conns.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn a_post_after_the_upstream_closed_an_idle_connection_is_sent_once() {
    let up = raw_upstream(Mode::IdleClose).await;
    let edge = edge_for(&up).await;
    for i in 1..=5 {
        let r = edge.https("POST", "api.test", "/x").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {r:?}");
        // Past the upstream's idle timeout: the pooled connection is gone.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Each POST reached the upstream exactly once, each on a new connection.
    assert_eq!(up.requests.load(Ordering::SeqCst), 5);
    assert_eq!(up.conns.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn concurrent_requests_share_a_bounded_set_of_connections() {
    let up = raw_upstream(Mode::KeepAlive).await;
    let edge = Arc::new(edge_for(&up).await);
    for _round in 0..3 {
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let edge = edge.clone();
            tasks.push(tokio::spawn(async move {
                edge.https("GET", "api.test", "/x").await.status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 24);
    let conns = up.conns.load(Ordering::SeqCst);
    assert!(
        (1..=8).contains(&conns),
        "three rounds of 8 concurrent requests opened {conns} upstream connections"
    );
}
