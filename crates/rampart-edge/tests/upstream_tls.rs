//! End-to-end: services reached over TLS (`tls_ca`, `tls_server_name`),
//! as the seeds want internal traffic encrypted too. The upstream is a
//! hyper server behind rustls on 127.0.0.1:0 that speaks only TLS.

mod util;

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use hyper_util::rt::TokioIo;
use rampart_edge::CertSource;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use util::*;

/// A TLS-only upstream whose certificate, from `ca`, names `names`; it
/// answers `tls ok` and echoes headers as `echo-<name>`.
async fn tls_upstream(ca: &TestCa, names: &[&str]) -> SocketAddr {
    tls_upstream_asking(ca, names, None).await
}

/// Same, and with `clients`, requiring a client certificate from that CA.
async fn tls_upstream_asking(ca: &TestCa, names: &[&str], clients: Option<&TestCa>) -> SocketAddr {
    let CertSource::Pem { cert, key } = ca.cert(names).source else {
        panic!("expected PEM")
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(c.der()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(v)
        }
    };
    let config = builder.with_single_cert(chain, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve_tcp(move |s| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(s).await else {
                return;
            };
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let mut resp = http::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from("tls ok"),
                    ));
                    for (k, v) in req.headers() {
                        let n =
                            http::HeaderName::from_bytes(format!("echo-{k}").as_bytes()).unwrap();
                        resp.headers_mut().append(n, v.clone());
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        }
    })
    .await
}

/// An edge with one service on `up`, reached over TLS with `ca_pem` as
/// its CA file (in `dir`) and `server_name`.
async fn edge_for(
    up: SocketAddr,
    dir: &std::path::Path,
    ca_pem: &str,
    server_name: Option<&str>,
) -> TestEdge {
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let mut cfg = config(
        &[("app", vec![up])],
        "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n",
    );
    cfg.services[0].tls_ca = Some(ca_file);
    cfg.services[0].tls_server_name = server_name.map(str::to_string);
    TestEdge::start(cfg, |_| {}).await
}

#[tokio::test]
async fn a_service_with_tls_ca_is_reached_over_verified_tls() {
    let dir = tempfile::tempdir().unwrap();
    let internal = TestCa::new();
    // By the instance's address (an IP SAN), and by a configured name.
    let by_ip = tls_upstream(&internal, &["127.0.0.1"]).await;
    let edge = edge_for(by_ip, dir.path(), &internal.pem(), None).await;
    for _ in 0..3 {
        let r = edge.https("GET", "api.test", "/x").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body, "tls ok");
        assert!(r.header("echo-x-request-id").is_some(), "{r:?}");
    }
    let by_name = tls_upstream(&internal, &["app.internal"]).await;
    let edge = edge_for(by_name, dir.path(), &internal.pem(), Some("app.internal")).await;
    let r = edge.https("GET", "api.test", "/x").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body, "tls ok");
}

#[tokio::test]
async fn an_instance_whose_certificate_does_not_verify_gets_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let internal = TestCa::new();
    let other = TestCa::new();
    // Another CA's certificate.
    let up = tls_upstream(&other, &["127.0.0.1"]).await;
    let edge = edge_for(up, dir.path(), &internal.pem(), None).await;
    let r = edge.https("GET", "api.test", "/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    // The right CA, the wrong name.
    let up = tls_upstream(&internal, &["someone.else"]).await;
    let edge = edge_for(up, dir.path(), &internal.pem(), Some("app.internal")).await;
    let r = edge.https("GET", "api.test", "/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
}

#[tokio::test]
async fn a_tls_ca_file_without_a_certificate_stops_the_edge() {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("empty.pem");
    std::fs::write(&ca_file, "nothing here\n").unwrap();
    let mut cfg = config(
        &[("app", vec!["127.0.0.1:9".parse().unwrap()])],
        "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n",
    );
    cfg.services[0].tls_ca = Some(ca_file);
    let ca = TestCa::new();
    let ec = edge_config(cfg, &ca);
    let err = rampart_edge::Edge::bind(ec).await.unwrap_err().to_string();
    assert!(err.contains("tls_ca") && err.contains("empty.pem"), "{err}");
}

#[tokio::test]
async fn a_service_that_requires_client_certificates_gets_the_edges() {
    let dir = tempfile::tempdir().unwrap();
    let internal = TestCa::new();
    let clients = TestCa::new();
    let up = tls_upstream_asking(&internal, &["127.0.0.1"], Some(&clients)).await;
    // Without a client certificate, the instance refuses the handshake.
    let edge = edge_for(up, dir.path(), &internal.pem(), None).await;
    let r = edge.https("GET", "api.test", "/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
    // With the edge's, it answers.
    let (cert, key) = clients.client("rampart-edge", &[7]);
    std::fs::write(dir.path().join("edge.pem"), cert).unwrap();
    std::fs::write(dir.path().join("edge.key"), key).unwrap();
    let ca_file = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_file, internal.pem()).unwrap();
    let mut cfg = config(
        &[("app", vec![up])],
        "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\n",
    );
    cfg.services[0].tls_ca = Some(ca_file);
    cfg.services[0].tls_client = Some(rampart_config::ClientIdentity {
        cert: dir.path().join("edge.pem"),
        key: dir.path().join("edge.key"),
    });
    let edge = TestEdge::start(cfg, |_| {}).await;
    let r = edge.https("GET", "api.test", "/x").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body, "tls ok");
}
