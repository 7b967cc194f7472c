//! End-to-end: an edge behind a layer-4 balancer. Connections from
//! `proxy_protocol_from` open with a PROXY header (version 1 or 2) whose
//! client stands for the peer in the IP rules, the per-client connection
//! cap, `X-Forwarded-For` and the audit record; such a connection without a
//! valid header is closed; a header from anyone else is not believed.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use util::*;

const ROOT: &str = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n";

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 50000 443\r\n").into_bytes()
}

fn v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&443u16.to_be_bytes());
    h
}

/// A TCP connection to `addr` that has sent `header` first.
async fn with_header(addr: SocketAddr, header: &[u8]) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(header).await.unwrap();
    tcp
}

/// TLS with SNI `api.test` over `tcp`.
async fn tls(
    edge: &TestEdge,
    tcp: TcpStream,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("api.test").unwrap(), tcp)
        .await
}

async fn get_via(edge: &TestEdge, header: &[u8]) -> Option<Resp> {
    let tcp = with_header(edge.addrs.https.unwrap(), header).await;
    let tls = tls(edge, tcp).await.ok()?;
    Some(send(tls, "GET", "api.test", "/", &[]).await)
}

#[tokio::test]
async fn the_balancers_header_names_the_client_everywhere() {
    let a = upstream("a").await;
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.proxy_protocol_from = vec!["127.0.0.0/8".parse().unwrap()];
        ec.deny_cidrs = vec!["203.0.113.0/24".parse().unwrap()];
        ec.audit = rec;
    })
    .await;

    // Version 1: the client goes to the service and into the record.
    let r = get_via(&edge, &v1("198.51.100.7")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("echo-x-forwarded-for"), Some("198.51.100.7"));
    let last = records.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.client.to_string(), "198.51.100.7");

    // Version 2: a denied client is refused by the IP rules.
    let r = get_via(&edge, &v2([203, 0, 113, 5], 4000)).await.unwrap();
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let last = records.0.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.client.to_string(), "203.0.113.5");

    // Version 1 UNKNOWN keeps the balancer's own address.
    let r = get_via(&edge, b"PROXY UNKNOWN\r\n").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("echo-x-forwarded-for"), Some("127.0.0.1"));

    // The redirect listener takes the header too.
    let mut tcp = with_header(edge.addrs.http.unwrap(), &v1("198.51.100.7")).await;
    tcp.flush().await.unwrap();
    let r = send(tcp, "GET", "api.test", "/x?y=1", &[]).await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    let location = r.header("location").unwrap();
    assert!(
        location.starts_with("https://api.test") && location.ends_with("/x?y=1"),
        "{location}"
    );
}

#[tokio::test]
async fn a_balancer_connection_without_a_valid_header_is_closed() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.proxy_protocol_from = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let closed = || {
        edge.handle
            .conn_counts()
            .closed_for(rampart_edge::idle::Closed::ProxyHeader)
    };
    // Straight TLS, no header.
    assert!(get_via(&edge, b"").await.is_none());
    assert_eq!(closed(), 1);
    // Malformed headers of both versions.
    for bad in [
        &b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n"[..],
        b"PROXY TCP4 198.51.100.7 127.0.0.1 99999 443\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04\x01\x02\x03\x04",
    ] {
        assert!(get_via(&edge, bad).await.is_none(), "{bad:?}");
    }
    assert_eq!(closed(), 4);
    // A good one still works.
    let r = get_via(&edge, &v1("198.51.100.7")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn the_connection_cap_per_client_counts_the_named_client() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.proxy_protocol_from = vec!["127.0.0.0/8".parse().unwrap()];
        ec.max_connections = 100;
        ec.max_connections_per_client = 1;
    })
    .await;
    let https = edge.addrs.https.unwrap();
    // Every connection comes from 127.0.0.1, the balancer; one per client.
    let held = tls(&edge, with_header(https, &v1("198.51.100.7")).await)
        .await
        .unwrap();
    let other = tls(&edge, with_header(https, &v1("198.51.100.8")).await)
        .await
        .unwrap();
    assert!(tls(&edge, with_header(https, &v1("198.51.100.7")).await)
        .await
        .is_err());
    assert_eq!(
        edge.handle
            .conn_counts()
            .closed_for(rampart_edge::idle::Closed::ClientOverLimit),
        1
    );
    assert_eq!(
        send(held, "GET", "api.test", "/", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(other, "GET", "api.test", "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_header_from_anyone_else_is_not_believed() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        // The balancers are elsewhere; the tests connect from 127.0.0.1.
        ec.proxy_protocol_from = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    assert!(get_via(&edge, &v1("198.51.100.7")).await.is_none());
    let r = get_via(&edge, b"").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("echo-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        edge.handle
            .conn_counts()
            .closed_for(rampart_edge::idle::Closed::ProxyHeader),
        0
    );
}
