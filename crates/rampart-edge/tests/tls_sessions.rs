//! End-to-end: the HTTPS listener's session resumption and lowest TLS
//! version. A returning client resumes its session from the edge's cache
//! (TLS 1.3 and 1.2); with no cache and no tickets it cannot; with tickets
//! it resumes without a cache; `tls13_only` refuses a TLS 1.2 client.

mod util;

use http::StatusCode;
use rampart_edge::TlsSettings;
use rustls::HandshakeKind;
use util::*;

const ROOT: &str = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n";

/// How the second of two connections with the same client settings
/// (and so the same session store) shook hands. The first carries a
/// request, so that the client has read the server's session ticket.
async fn second_handshake(
    edge: &TestEdge,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Option<HandshakeKind> {
    let cfg = edge.client_config(versions, &[b"http/1.1"]);
    let first = edge.tls("api.test", cfg.clone()).await.unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    assert_eq!(
        send(first, "GET", "api.test", "/", &[]).await.status,
        StatusCode::OK
    );
    let second = edge.tls("api.test", cfg).await.unwrap();
    let kind = second.get_ref().1.handshake_kind();
    assert_eq!(
        send(second, "GET", "api.test", "/", &[]).await.status,
        StatusCode::OK
    );
    kind
}

#[tokio::test]
async fn a_returning_client_resumes_from_the_session_cache() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    assert_eq!(
        second_handshake(&edge, &[&rustls::version::TLS13]).await,
        Some(HandshakeKind::Resumed)
    );
    assert_eq!(
        second_handshake(&edge, &[&rustls::version::TLS12]).await,
        Some(HandshakeKind::Resumed)
    );
}

#[tokio::test]
async fn without_a_cache_or_tickets_every_handshake_is_full() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.tls = TlsSettings {
            session_cache: 0,
            ..TlsSettings::default()
        }
    })
    .await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(
            second_handshake(&edge, &[v]).await,
            Some(HandshakeKind::Full)
        );
    }
}

#[tokio::test]
async fn tickets_resume_sessions_without_a_cache() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.tls = TlsSettings {
            session_cache: 0,
            session_tickets: true,
            ..TlsSettings::default()
        }
    })
    .await;
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        assert_eq!(
            second_handshake(&edge, &[v]).await,
            Some(HandshakeKind::Resumed)
        );
    }
}

#[tokio::test]
async fn tls13_only_refuses_a_tls12_client() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.tls = TlsSettings {
            tls13_only: true,
            ..TlsSettings::default()
        }
    })
    .await;
    let tls12 = edge.client_config(&[&rustls::version::TLS12], &[b"http/1.1"]);
    assert!(edge.tls("api.test", tls12).await.is_err());
    let tls13 = edge.client_config(&[&rustls::version::TLS13], &[b"http/1.1"]);
    let s = edge.tls("api.test", tls13).await.unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}
