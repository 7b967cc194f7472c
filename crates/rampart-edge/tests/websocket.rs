//! End-to-end: WebSocket handshakes through the edge to a hand-written
//! upstream on 127.0.0.1:0 that answers `101` and then echoes every byte,
//! upper-cased. The edge does not read WebSocket frames, so plain bytes
//! stand for them.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use util::*;

/// Answers a handshake with 101 and echoes upper-cased; anything else with
/// `200 plain`. Sends each request head it reads (lower-cased) on the
/// channel.
async fn echo_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = serve_tcp(move |mut s| {
        let tx = tx.clone();
        async move {
        let Some(head) = read_head(&mut s).await else {
            return;
        };
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let _ = tx.send(text.clone());
        if !text.contains("\r\nupgrade: websocket\r\n") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain")
                .await;
            return;
        }
        let _ = s
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
                  connection: upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            )
            .await;
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let up = b[..n].to_ascii_uppercase();
                    if s.write_all(&up).await.is_err() {
                        return;
                    }
                }
            }
        }
        }
    })
    .await;
    (addr, rx)
}

const HANDSHAKE: &[u8] = b"GET /ws/chat HTTP/1.1\r\nhost: api.test\r\nupgrade: websocket\r\n\
connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";

async fn edge_for(
    up: SocketAddr,
    websocket: bool,
    tweak: impl FnOnce(&mut rampart_edge::EdgeConfig),
) -> TestEdge {
    let cfg = config(
        &[("app", vec![up])],
        &format!("[[routes]]\nhost = \"api.test\"\nservice = \"app\"\nwebsocket = {websocket}\n"),
    );
    TestEdge::start(cfg, tweak).await
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Sends the handshake; returns the connection and the response head.
async fn handshake(edge: &TestEdge) -> (Tls, String) {
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let mut tls = edge.tls("api.test", cfg).await.unwrap();
    tls.write_all(HANDSHAKE).await.unwrap();
    let got = read_head(&mut tls)
        .await
        .expect("closed before the response head");
    (tls, String::from_utf8_lossy(&got).to_ascii_lowercase())
}

/// Writes `msg` and reads back as many bytes.
async fn echo(tls: &mut Tls, msg: &[u8]) -> Vec<u8> {
    tls.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back))
        .await
        .expect("no echo")
        .unwrap();
    back
}

#[tokio::test]
async fn a_websocket_route_tunnels_the_connection_after_101() {
    let (up, mut heads) = echo_upstream().await;
    let edge = edge_for(up, true, |_| {}).await;
    let (mut tls, head) = handshake(&edge).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(
        head.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{head}"
    );
    // The service got the handshake, upgrade headers and key included,
    // with the edge's forwarding headers.
    let seen = heads.recv().await.unwrap();
    assert!(seen.starts_with("get /ws/chat http/1.1\r\n"), "{seen}");
    for h in [
        "\r\nupgrade: websocket\r\n",
        "\r\nconnection: upgrade\r\n",
        "\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n",
        "\r\nx-forwarded-proto: https\r\n",
    ] {
        assert!(seen.contains(h), "{h:?} missing from {seen}");
    }
    // Bytes flow both ways, several times.
    for msg in [&b"hello"[..], b"second message", &[b'x'; 70_000]] {
        assert_eq!(echo(&mut tls, msg).await, msg.to_ascii_uppercase());
    }
}

#[tokio::test]
async fn without_websocket_on_the_route_the_service_sees_a_plain_get() {
    let (up, mut heads) = echo_upstream().await;
    let edge = edge_for(up, false, |_| {}).await;
    let (_tls, head) = handshake(&edge).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let seen = heads.recv().await.unwrap();
    assert!(!seen.contains("\r\nupgrade:"), "{seen}");
}

#[tokio::test]
async fn a_tunnel_outlives_the_keepalive_timeout_and_ends_when_idle() {
    let (up, _heads) = echo_upstream().await;
    let edge = edge_for(up, true, |ec| {
        ec.keepalive_timeout = Duration::from_millis(300);
        ec.upstream_timeout = Duration::from_millis(1500);
    })
    .await;
    let (mut tls, head) = handshake(&edge).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let counts = edge.handle.conn_counts();
    assert_eq!(counts.tunnels().1, 1);
    // Traffic every 500 ms for 2 s: past the keep-alive timeout, and
    // never idle for the upstream timeout.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let msg = format!("ping {i}");
        assert_eq!(
            echo(&mut tls, msg.as_bytes()).await,
            msg.to_ascii_uppercase().as_bytes()
        );
    }
    // Then silence: the tunnel is closed after the upstream timeout.
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "an idle tunnel was kept open");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        counts.tunnels(),
        (0, 1),
        "the closed tunnel is still counted open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_handshake_goes_through_the_request_phases_first() {
    let (up, mut heads) = echo_upstream().await;
    let cfg = config(
        &[("app", vec![up])],
        "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\nwebsocket = true\nallow_cidrs = [\"10.0.0.0/8\"]\n",
    );
    let edge = TestEdge::start(cfg, |_| {}).await;
    let (_tls, head) = handshake(&edge).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(
        heads.try_recv().is_err(),
        "the refused handshake reached the service"
    );
}
