//! Test kit: a test CA, small upstream servers, and a running edge with
//! clients for it, so each test reads as a scenario.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rampart_edge::{
    AccessRecord, AuditSink, CertConfig, CertSource, Edge, EdgeAddrs, EdgeConfig, EdgeHandle,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A CA that issues server certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        TestCa {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for `names`, as edge configuration.
    pub fn cert(&self, names: &[&str]) -> CertConfig {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names.clone())
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        CertConfig {
            names,
            source: CertSource::Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            },
        }
    }
}

impl TestCa {
    /// PEM of the CA certificate itself (to configure as a client CA).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate with common name `cn` and serial `serial`
    /// (big-endian bytes): (certificate PEM, key PEM).
    pub fn client(&self, cn: &str, serial: &[u8]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        p.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A small upstream: answers 200 with its name (header `x-upstream` and
/// body), echoes request headers as `echo-<name>`, sleeps on `/slow`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

pub async fn upstream(name: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let h = h.clone();
                    async move {
                        h.fetch_add(1, Ordering::SeqCst);
                        if req.uri().path().starts_with("/slow") {
                            tokio::time::sleep(Duration::from_millis(1000)).await;
                        }
                        let mut resp = Response::new(Full::new(Bytes::from(name)));
                        for (k, v) in req.headers() {
                            let n = http::HeaderName::from_bytes(format!("echo-{k}").as_bytes())
                                .unwrap();
                            resp.headers_mut().append(n, v.clone());
                        }
                        resp.headers_mut()
                            .insert("x-upstream", name.parse().unwrap());
                        // The path and query as the service received them.
                        let pq = req.uri().path_and_query().map_or("", |p| p.as_str());
                        resp.headers_mut()
                            .insert("x-upstream-path", pq.parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Upstream { addr, hits }
}

/// An address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    // A socket bound but never listening: connects are refused, and the
    // port stays taken for the life of the test process. (A listener bound
    // and dropped freed the port, and a test running beside could be given
    // it for its live upstream, which the "dead" address then reached.)
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    Box::leak(Box::new(s));
    addr
}

/// Config text with one environment, the services and the routes given.
/// `services`: (name, upstream addresses). `routes`: extra TOML per route.
pub fn config(services: &[(&str, Vec<SocketAddr>)], routes: &str) -> rampart_config::Config {
    let mut t = String::from("[[environments]]\nname = \"test\"\n");
    for (name, ups) in services {
        let ups: Vec<String> = ups.iter().map(|a| format!("\"{a}\"")).collect();
        t.push_str(&format!(
            "[[services]]\nname = \"{name}\"\nenvironment = \"test\"\nport = 8080\nupstreams = [{}]\n",
            ups.join(", ")
        ));
    }
    t.push_str(routes);
    rampart_config::Config::parse(&t, "test.toml").unwrap_or_else(|e| panic!("{e}\n{t}"))
}

/// Collects audit records.
#[derive(Default)]
pub struct Records(pub Mutex<Vec<AccessRecord>>);

impl AuditSink for Records {
    fn record(&self, rec: &AccessRecord) {
        self.0.lock().unwrap().push(rec.clone());
    }
}

pub struct TestEdge {
    pub addrs: EdgeAddrs,
    pub handle: EdgeHandle,
    pub ca: TestCa,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<rampart_edge::Result<()>>>,
}

/// An edge config on 127.0.0.1:0 with certificates for `api.test`,
/// `other.test` and `*.example.test`.
pub fn edge_config(cfg: rampart_config::Config, ca: &TestCa) -> EdgeConfig {
    let mut ec = EdgeConfig::new(cfg);
    ec.http_listen = Some("127.0.0.1:0".parse().unwrap());
    ec.https_listen = Some("127.0.0.1:0".parse().unwrap());
    ec.certificates = vec![
        ca.cert(&["api.test", "*.example.test"]),
        ca.cert(&["other.test"]),
    ];
    ec.connect_timeout = Duration::from_millis(500);
    ec.drain_deadline = Duration::from_secs(5);
    ec
}

impl TestEdge {
    /// Starts the edge; `tweak` adjusts the config first.
    pub async fn start(
        cfg: rampart_config::Config,
        tweak: impl FnOnce(&mut EdgeConfig),
    ) -> TestEdge {
        let ca = TestCa::new();
        let mut ec = edge_config(cfg, &ca);
        tweak(&mut ec);
        let edge = Edge::bind(ec).await.unwrap();
        let addrs = edge.local_addrs();
        let handle = edge.handle();
        let (tx, rx) = oneshot::channel();
        let served = tokio::spawn(edge.serve(async move {
            let _ = rx.await;
        }));
        TestEdge {
            addrs,
            handle,
            ca,
            stop: Some(tx),
            served: Some(served),
        }
    }

    /// Begins shutdown; returns the serve task to await.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<rampart_edge::Result<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.served.take().unwrap()
    }

    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        c
    }

    /// A client config that presents `cert`/`key` (PEM) as its certificate.
    pub fn client_config_with_cert(&self, cert: &str, key: &str) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der()).unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        c
    }

    /// Opens a TLS connection with SNI `sni`.
    pub async fn tls(
        &self,
        sni: &str,
        cfg: rustls::ClientConfig,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addrs.https.unwrap()).await?;
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
    }

    /// A fresh HTTP/1.1 connection over TLS with SNI `host`, its
    /// connection driven by a task of its own.
    pub async fn h1_client<B>(&self, host: &str) -> hyper::client::conn::http1::SendRequest<B>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let cfg = self.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
        let tls = self.tls(host, cfg).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    /// An HTTPS request over a fresh HTTP/1.1 connection; SNI is `host`.
    pub async fn https(&self, method: &str, host: &str, path: &str) -> Resp {
        let cfg = self.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
        let tls = self.tls(host, cfg).await.unwrap();
        send(tls, method, host, path, &[]).await
    }

    /// Same with extra request headers.
    pub async fn https_with(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let cfg = self.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
        let tls = self.tls(host, cfg).await.unwrap();
        send(tls, method, host, path, headers).await
    }

    /// A plain HTTP request to the redirect listener.
    pub async fn http(&self, host: &str, path: &str) -> Resp {
        let tcp = TcpStream::connect(self.addrs.http.unwrap()).await.unwrap();
        send(tcp, "GET", host, path, &[]).await
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send<S>(io: S, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    send_body(io, method, host, path, headers, Vec::new()).await
}

/// Same with a request body (sent with `Content-Length`).
pub async fn send_body<S>(
    io: S,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Resp
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Reads from `s` until a whole HTTP head (through its blank line) has
/// arrived, one byte at a time so that nothing after it is taken; `None`
/// if the stream ends or fails first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => head.push(b[0]),
        }
    }
    Some(head)
}

/// A server on 127.0.0.1:0 that runs `handle` on each connection it
/// accepts, each on a task of its own; returns its address.
pub async fn serve_tcp<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handle(s));
        }
    });
    addr
}

/// A request or response body sent from a channel of frames; it ends when
/// the sender is dropped (chunked in HTTP/1.1, no `Content-Length`).
pub struct ChannelBody(pub tokio::sync::mpsc::UnboundedReceiver<hyper::body::Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// Active health checks every 50 ms, 200 ms to answer, down after two
/// failures, up after one success; a reload's new instances have 1 s to
/// pass.
pub fn quick_health_check() -> rampart_edge::HealthCheck {
    rampart_edge::HealthCheck {
        path: "/healthz".into(),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(200),
        rise: 1,
        fall: 2,
        deploy_window: Duration::from_secs(1),
    }
}

/// The edge's instances as (address, healthy), once one is down or after
/// two seconds.
pub async fn health_once_one_is_down(edge: &TestEdge) -> Vec<(String, bool)> {
    let mut healthy = vec![];
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        healthy = edge
            .handle
            .upstreams()
            .iter()
            .map(|u| (u.addr.clone(), u.healthy))
            .collect();
        if healthy.iter().any(|(_, h)| !h) {
            break;
        }
    }
    healthy
}
