//! End-to-end: services that speak HTTP/2 (`protocol = "http2"`), in
//! cleartext with prior knowledge (h2c) or over TLS with ALPN `h2`, as gRPC
//! services do: requests reach them as HTTP/2 with `:authority` and
//! `TE: trailers`, one connection carries many requests, response trailers
//! (gRPC's status) come back to the client, and a streamed request and its
//! response flow both ways at once (a bidirectional gRPC stream).
//!
//! The services are hyper HTTP/2 servers on 127.0.0.1:0.

mod util;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_edge::CertSource;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use util::*;

/// The gRPC-like service: on `/echo.Echo/Chat` it sends each request frame
/// back as it arrives, prefixed `echo:`, and ends with the trailer
/// `grpc-status: 0`; on any other path it answers with what it saw of the
/// request (version, authority, `Host`, `te`).
fn service(req: Request<hyper::body::Incoming>) -> Response<ChannelBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    if req.uri().path() == "/echo.Echo/Chat" {
        let mut body = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(f)) = body.frame().await {
                if let Some(d) = f.data_ref() {
                    let mut out = b"echo:".to_vec();
                    out.extend_from_slice(d);
                    let _ = tx.send(Frame::data(Bytes::from(out)));
                }
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = tx.send(Frame::trailers(trailers));
        });
        let mut resp = Response::new(ChannelBody(rx));
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        return resp;
    }
    let te = req
        .headers()
        .get("te")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let seen = format!(
        "{:?} authority={} host={} te={}",
        req.version(),
        req.uri().authority().map_or("-", |a| a.as_str()),
        req.headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        te,
    );
    let _ = tx.send(Frame::data(Bytes::from(seen)));
    Response::new(ChannelBody(rx))
}

/// Serves `io` in HTTP/2 only.
async fn serve_h2<I>(io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc =
        hyper::service::service_fn(
            |req| async move { Ok::<_, std::convert::Infallible>(service(req)) },
        );
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// An h2c service (HTTP/2 with prior knowledge, no TLS); counts the
/// connections it accepts.
async fn h2c_service() -> (SocketAddr, Arc<AtomicUsize>) {
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    let addr = serve_tcp(move |s| {
        c.fetch_add(1, Ordering::SeqCst);
        serve_h2(s)
    })
    .await;
    (addr, conns)
}

/// An HTTP/2 service behind TLS that offers only `h2` by ALPN, with a
/// certificate from `ca` for 127.0.0.1.
async fn h2_tls_service(ca: &TestCa) -> SocketAddr {
    let CertSource::Pem { cert, key } = ca.cert(&["127.0.0.1"]).source else {
        panic!("expected PEM")
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve_tcp(move |s| {
        let acceptor = acceptor.clone();
        async move {
            if let Ok(tls) = acceptor.accept(s).await {
                serve_h2(tls).await;
            }
        }
    })
    .await
}

const ROUTES: &str =
    "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\nstream_request_body = true\n";

async fn edge_for(up: SocketAddr, tls_ca: Option<std::path::PathBuf>) -> TestEdge {
    let mut cfg = config(&[("app", vec![up])], ROUTES);
    cfg.services[0].protocol = rampart_config::UpstreamProtocol::Http2;
    cfg.services[0].tls_ca = tls_ca;
    TestEdge::start(cfg, |_| {}).await
}

/// An HTTP/2 client connection to the edge.
async fn h2_client(edge: &TestEdge) -> hyper::client::conn::http2::SendRequest<ChannelBody> {
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"h2"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn requests_reach_an_h2c_service_as_http2_on_one_connection() {
    let (up, conns) = h2c_service().await;
    let edge = edge_for(up, None).await;
    // HTTP/1.1 clients and HTTP/2 clients alike.
    for _ in 0..5 {
        let r = edge
            .https_with("GET", "api.test", "/x", &[("te", "trailers")])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        // `TE` is hop-by-hop in HTTP/1.1: the client's HTTP/1.1 request
        // carried it, but only `trailers` may pass into HTTP/2.
        assert_eq!(r.body, "HTTP/2.0 authority=api.test host=- te=trailers");
    }
    let mut h2 = h2_client(&edge).await;
    for _ in 0..5 {
        let (_tx, rx) = mpsc::unbounded_channel();
        let req = Request::get("https://api.test/y")
            .body(ChannelBody(rx))
            .unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "HTTP/2.0 authority=api.test host=- te=-");
    }
    // Ten requests one after another: at most one connection per edge
    // worker thread, each carrying many requests.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = conns.load(Ordering::SeqCst);
    assert!(n >= 1 && n <= workers, "{n} connections for 10 requests");
}

#[tokio::test]
async fn a_bidirectional_grpc_stream_flows_both_ways_and_ends_with_its_status() {
    let (up, _) = h2c_service().await;
    let edge = edge_for(up, None).await;
    let mut h2 = h2_client(&edge).await;
    let (tx, rx) = mpsc::unbounded_channel();
    let req = Request::post("https://api.test/echo.Echo/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(ChannelBody(rx))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    // Each message comes back before the next is sent: the request is
    // still open while its answers arrive.
    for i in 0..3 {
        let msg = format!("\0\0\0\0\x05hello{i}");
        tx.send(Frame::data(Bytes::from(msg.clone()))).unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the echo arrives while the stream is open")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), format!("echo:{msg}"));
    }
    drop(tx);
    // The end of the stream carries gRPC's status as a trailer.
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        if let Ok(t) = f.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn an_http2_service_over_tls_is_reached_with_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let internal = TestCa::new();
    let up = h2_tls_service(&internal).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, internal.pem()).unwrap();
    let edge = edge_for(up, Some(ca_file)).await;
    for _ in 0..3 {
        let r = edge.https("GET", "api.test", "/x").await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body, "HTTP/2.0 authority=api.test host=- te=-");
    }
}

#[tokio::test]
async fn an_http1_service_is_not_spoken_to_in_http2() {
    // A service left at the default protocol gets HTTP/1.1, as before.
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("app", vec![a.addr])], ROUTES), |_| {}).await;
    let r = edge.https("GET", "api.test", "/x").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "a");
    // And an h2c service whose instance is down gives 502, not a hang.
    let dead = dead_addr().await;
    let edge = edge_for(dead, None).await;
    let r = edge.https("GET", "api.test", "/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{r:?}");
}

#[tokio::test]
async fn health_checks_of_an_http2_service_speak_http2() {
    // Two instances: one speaks HTTP/2, the other only HTTP/1.1, which
    // refuses the HTTP/2 preface. Probes over HTTP/2 keep the first and
    // take the second out.
    let (h2, _) = h2c_service().await;
    let h1 = upstream("h1").await;
    let mut cfg = config(&[("app", vec![h2, h1.addr])], ROUTES);
    cfg.services[0].protocol = rampart_config::UpstreamProtocol::Http2;
    let edge = TestEdge::start(cfg, |ec| ec.health_check = Some(quick_health_check())).await;
    let healthy = health_once_one_is_down(&edge).await;
    assert!(healthy.contains(&(h2.to_string(), true)), "{healthy:?}");
    assert!(
        healthy.contains(&(h1.addr.to_string(), false)),
        "{healthy:?}"
    );
}

#[tokio::test]
async fn grpc_calls_the_edge_refuses_get_a_grpc_status() {
    let (up, _) = h2c_service().await;
    let routes =
        "[[routes]]\nhost = \"api.test\"\nservice = \"app\"\ndeny_cidrs = [\"127.0.0.0/8\"]\n";
    let mut cfg = config(&[("app", vec![up])], routes);
    cfg.services[0].protocol = rampart_config::UpstreamProtocol::Http2;
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(cfg, |ec| ec.audit = rec).await;
    let mut h2 = h2_client(&edge).await;
    let call = |ctype: &'static str| {
        let (_tx, rx) = mpsc::unbounded_channel();
        Request::post("https://api.test/echo.Echo/Chat")
            .header("content-type", ctype)
            .header("te", "trailers")
            .body(ChannelBody(rx))
            .unwrap()
    };
    // A gRPC client reads the refusal from grpc-status: 7 is
    // PERMISSION_DENIED, the gRPC reading of the edge's 403.
    let resp = h2
        .send_request(call("application/grpc+proto"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "7");
    assert_eq!(resp.headers()["grpc-message"], "ip_denied");
    assert!(resp.headers().contains_key("x-request-id"));
    // The audit record keeps the HTTP status the refusal stands for.
    assert_eq!(records.0.lock().unwrap()[0].status, 403);
    // Any other call gets the usual JSON refusal.
    let resp = h2.send_request(call("application/json")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(!resp.headers().contains_key("grpc-status"));
}
