//! Serving the control API: TLS on its listener, each connection handed to
//! a worker runtime (one per core, as the edge's HTTPS connections are; see
//! [`rampart_edge::workers`]), HTTP/1.1 or HTTP/2 by ALPN, and a graceful
//! drain at shutdown.

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
use rampart_edge::workers::{self, Workers};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::Service;

use crate::errors::CliError;

/// How long a client may take over its TLS handshake or a request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes; then stops
/// accepting, lets in-flight requests finish for up to `drain`, and aborts
/// what is left.
pub async fn serve(
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> Result<(), CliError> {
    let listener = TcpListener::from_std(listener)
        .map_err(|e| CliError::Runtime(format!("control API listener: {e}")))?;
    let workers = Workers::start("control-worker", None)
        .map_err(|e| CliError::Runtime(format!("control API workers: {e}")))?;
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
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
                    let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                        router.clone().call(req)
                    });
                    let conn = builder.serve_connection(TokioIo::new(tls), svc).into_owned();
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
