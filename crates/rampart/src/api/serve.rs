//! Serving the control API: TLS on its listener, each connection handed to
//! a worker runtime (one per core, as the edge's HTTPS connections are; see
//! [`rampart_edge::workers`]), HTTP/1.1 or HTTP/2 by ALPN, the edge's
//! connection timeouts ([`rampart_edge::idle`]: a connection that sends no
//! request, a slow head, a client that stops reading), and a graceful
//! drain at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rampart_edge::idle::{Activity, ConnTimeouts, Idle, Tracked};
use rampart_edge::watch::Watched;
use rampart_edge::workers::{self, Workers};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::errors::CliError;

/// How long a client may take over its TLS handshake, its first request
/// or a request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection timeouts, as the edge's defaults.
pub const TIMEOUTS: ConnTimeouts = ConnTimeouts {
    first_request: HANDSHAKE_TIMEOUT,
    head: Some(HANDSHAKE_TIMEOUT),
    keepalive: Duration::from_secs(75),
    send: Duration::from_secs(60),
};

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting, lets in-flight requests finish for up to `drain`, and aborts
/// what is left.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    timeouts: ConnTimeouts,
) -> Result<(), CliError> {
    let listener = TcpListener::from_std(listener)
        .map_err(|e| CliError::Runtime(format!("control API listener: {e}")))?;
    let workers = Workers::start("control-worker", None, None)
        .map_err(|e| CliError::Runtime(format!("control API workers: {e}")))?;
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Heads are timed by `Idle`; hyper's timer also counts idle
        // keep-alive time, so it is only the backstop.
        .header_read_timeout(timeouts.backstop());
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            r = workers::accept(&listener) => {
                let Some((stream, peer)) = r else { continue };
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let router = router.clone();
                let watcher = graceful.watcher();
                workers.spawn(&mut conns, stream, peer, move |stream| async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "control API: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let mut timeouts = timeouts;
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        timeouts.head = None;
                    }
                    let activity = Activity::default();
                    let io = Watched::new(tls, Idle::new(activity.clone(), timeouts));
                    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                        let busy = match req.version() {
                            http::Version::HTTP_2 => activity.begin().watch_sends(),
                            _ => activity.begin(),
                        };
                        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                        let answer = router.clone().call(req);
                        async move {
                            let resp = answer.await?;
                            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, busy)))
                        }
                    });
                    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "control API connection ended");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(left = conns.len(), "control API: drain deadline passed; aborting connections");
        }
    }
    conns.shutdown().await;
    workers.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves a one-route router with short timeouts; returns its address
    /// and a client TLS config that trusts it.
    async fn short_timeouts() -> (SocketAddr, Arc<rustls::ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let t = Duration::from_millis(300);
        let timeouts = ConnTimeouts {
            first_request: t,
            head: Some(t),
            keepalive: t,
            send: t,
        };
        tokio::spawn(serve(
            listener,
            Arc::new(server),
            router,
            std::future::pending(),
            Duration::ZERO,
            timeouts,
        ));
        (addr, Arc::new(client))
    }

    async fn connect(
        addr: SocketAddr,
        client: &Arc<rustls::ClientConfig>,
        alpn: &[u8],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut cfg = (**client).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap()
    }

    /// Whether the server closes the connection within a few seconds.
    async fn closes(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf))
            .await
            .is_ok()
    }

    /// The control API closes connections as the edge does: silent after
    /// the handshake (HTTP/1 or HTTP/2), a head that trickles in, and a
    /// kept-alive connection with no next request. Before, each could be
    /// held open for as long as the client liked.
    #[tokio::test]
    async fn idle_and_slow_connections_are_closed() {
        let (addr, client) = short_timeouts().await;
        for alpn in [&b"http/1.1"[..], b"h2"] {
            let mut tls = connect(addr, &client, alpn).await;
            assert!(
                closes(&mut tls).await,
                "a silent {alpn:?} connection was kept"
            );
        }
        let mut tls = connect(addr, &client, b"http/1.1").await;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).ends_with("ok") {
            let mut b = [0u8; 1024];
            let n = tls.read(&mut b).await.unwrap();
            assert!(n > 0, "closed before the answer");
            got.extend_from_slice(&b[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200"));
        assert!(
            closes(&mut tls).await,
            "an idle kept-alive connection was kept"
        );
        let mut tls = connect(addr, &client, b"http/1.1").await;
        tls.write_all(b"GET / HTTP/1.1\r\nhost: loc").await.unwrap();
        assert!(closes(&mut tls).await, "a slow head was waited for");
    }
}
