//! HTTP/1.1 connections to upstream instances, kept alive between requests
//! and driven by the request that uses them.
//!
//! A pooling client that runs each connection as a task of its own (as
//! `hyper_util`'s legacy client does) costs every proxied request two
//! hand-offs between tasks: the request travels over a channel to the
//! connection's task, and the response comes back over another. Here a
//! request takes an idle connection (hyper's `SendRequest` and its
//! `Connection`) out of the pool and polls the connection itself while it
//! waits for the response head; the response body it hands on keeps
//! polling the connection as the edge's server side reads it, and puts the
//! connection back in the pool once the body has ended. A body dropped
//! before its end takes its connection with it (it is closed), so a
//! connection is only ever reused at a message boundary.
//!
//! A pooled connection the upstream closed while it sat idle is noticed
//! when it is taken (polling it finds the end of the stream) and replaced
//! by a fresh one; a request hyper reports as never sent ("canceled") is
//! retried once on a fresh connection, whatever its method.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::reqbody::ForwardBody;

type Conn = http1::Connection<TokioIo<UpstreamIo>, ForwardBody>;
type Sender = http1::SendRequest<ForwardBody>;
/// One connection: its sender and the connection itself, boxed once when
/// made so that moving it in and out of the pool moves a pointer.
type Link = Box<(Sender, Conn)>;

/// Why a request to an upstream failed.
#[derive(Debug)]
pub enum UpstreamError {
    /// No connection could be made (nothing was sent).
    Connect(std::io::Error),
    /// The connection failed after the request may have been sent.
    Http(hyper::Error),
}

impl UpstreamError {
    /// Whether nothing reached the upstream, so any request may be retried.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect: {e}"),
            UpstreamError::Http(e) => write!(f, "{e}"),
        }
    }
}

struct Idle {
    link: Link,
    since: Instant,
}

/// Maps looked up on every request by keys the edge makes itself (thread
/// ids, configured addresses), so they need no hash that resists chosen
/// keys: foldhash (hashbrown's own) instead of SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The pool of kept-alive upstream connections, by `host:port`.
pub struct Upstreams {
    /// By thread, then address: a connection is reused on the thread (and
    /// so the reactor) that made it.
    idle: Mutex<FastMap<std::thread::ThreadId, FastMap<String, Vec<Idle>>>>,
    /// HTTP/2 connections, by thread, then key: one per instance, shared
    /// by every request on its thread.
    h2: Mutex<FastMap<std::thread::ThreadId, FastMap<String, H2Link>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_addr: usize,
}

type H2Sender = http2::SendRequest<ForwardBody>;
/// An HTTP/2 connection's sender and when a request last took it.
type H2Link = (H2Sender, Instant);

/// How to reach a service's instances.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reach<'a> {
    /// TLS, if the service asks for it.
    pub tls: Option<&'a UpstreamTls>,
    /// HTTP/2 instead of HTTP/1.1.
    pub http2: bool,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Upstreams {
    /// A pool whose connects give up after `connect_timeout` and whose idle
    /// connections are closed after `idle_timeout`.
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Arc<Upstreams> {
        Arc::new(Upstreams {
            idle: Mutex::new(FastMap::default()),
            h2: Mutex::new(FastMap::default()),
            connect_timeout,
            idle_timeout,
            max_idle_per_addr: 256,
        })
    }

    /// Sends the request in `req` to `addr` (`host:port`), over TLS with
    /// `tls`, and returns the response head; its body streams from the
    /// connection, which returns to the pool when the body ends.
    ///
    /// The request is taken out of `req` only to be sent: after a connect
    /// error it is still there (its body unread), so that a streamed body
    /// can go to another instance.
    pub async fn request(
        self: &Arc<Self>,
        addr: &str,
        reach: Reach<'_>,
        req: &mut Option<Request<ForwardBody>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if reach.http2 {
            // Boxed, so that HTTP/1.1 requests do not carry its state.
            return Box::pin(self.request_h2(addr, reach.tls, req)).await;
        }
        let tls = reach.tls;
        // Plain connections are pooled by address, TLS ones by address and
        // TLS settings.
        let key: std::borrow::Cow<'_, str> = match tls {
            None => addr.into(),
            Some(t) => format!("{}|{addr}", t.key).into(),
        };
        // A pooled connection may turn out to be closed only once used: one
        // more go on a fresh connection, for a request that was not sent.
        for fresh in [false, true] {
            let (mut link, reused) = match self.take_ready(&key, fresh).await {
                Some(link) => (link, true),
                // Boxed: a new connection is rare on a warm pool, and its
                // state would otherwise ride in every request's future.
                None => (Box::pin(self.connect(addr, tls)).await?, false),
            };
            let Some(r) = req.take() else { break };
            let (sender, conn) = &mut *link;
            let mut sent = std::pin::pin!(sender.try_send_request(r));
            let mut conn_done = false;
            let result = poll_fn(|cx| {
                if !conn_done && Pin::new(&mut *conn).poll(cx).is_ready() {
                    // The connection ended; the response future says how.
                    conn_done = true;
                }
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let keep = (!conn_done).then_some(link);
                    let body = UpstreamBody {
                        body,
                        conn: keep,
                        pool: Arc::clone(self),
                        addr: key.into_owned(),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: hyper hands the request back, and it may
                    // go again on a fresh connection whatever its method.
                    Some(back) if reused => {
                        tracing::debug!(%addr, "pooled upstream connection was closed; reconnecting");
                        *req = Some(back);
                    }
                    Some(back) => {
                        *req = Some(back);
                        return Err(UpstreamError::Connect(std::io::Error::other(
                            e.into_error(),
                        )));
                    }
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        Err(UpstreamError::Connect(std::io::Error::other(
            "pooled upstream connection closed",
        )))
    }

    /// The same over HTTP/2: the thread's connection to `addr` (made when
    /// there is none, or it has closed), its connection driven by a task
    /// of its own since many requests share it.
    async fn request_h2(
        self: &Arc<Self>,
        addr: &str,
        tls: Option<&UpstreamTls>,
        req: &mut Option<Request<ForwardBody>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let key: String = match tls {
            None => format!("h2|{addr}"),
            Some(t) => format!("h2|{}|{addr}", t.key),
        };
        for fresh in [false, true] {
            let (mut sender, reused) = match self.h2_sender(&key, fresh) {
                Some(s) => (s, true),
                None => (self.connect_h2(&key, addr, tls).await?, false),
            };
            if poll_fn(|cx| sender.poll_ready(cx)).await.is_err() {
                self.forget_h2(&key);
                if reused {
                    continue;
                }
                return Err(UpstreamError::Connect(std::io::Error::other(
                    "HTTP/2 connection closed",
                )));
            }
            let Some(mut r) = req.take() else { break };
            to_http2(&mut r, tls.is_some());
            match sender.try_send_request(r).await {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    // The edge's own side sets the version it speaks.
                    parts.version = http::Version::HTTP_11;
                    let body = UpstreamBody {
                        body,
                        conn: None,
                        pool: Arc::clone(self),
                        addr: key,
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        // Not sent (the connection went away): once more on
                        // a fresh connection, whatever the method.
                        *req = Some(back);
                        self.forget_h2(&key);
                        if !reused {
                            return Err(UpstreamError::Connect(std::io::Error::other(
                                e.into_error(),
                            )));
                        }
                    }
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        Err(UpstreamError::Connect(std::io::Error::other(
            "HTTP/2 connection closed",
        )))
    }

    /// The thread's connection to `key`, if it is open; connections
    /// unused for the idle timeout are let go here (dropping the pool's
    /// sender closes a connection once its last request is done).
    fn h2_sender(&self, key: &str, skip: bool) -> Option<H2Sender> {
        let mut all = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        let mine = all.get_mut(&std::thread::current().id())?;
        let now = Instant::now();
        mine.retain(|_, (s, used)| {
            !s.is_closed() && now.duration_since(*used) <= self.idle_timeout
        });
        if skip {
            return None;
        }
        let (sender, used) = mine.get_mut(key)?;
        *used = now;
        Some(sender.clone())
    }

    fn forget_h2(&self, key: &str) {
        let mut all = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = all.get_mut(&std::thread::current().id()) {
            m.remove(key);
        }
    }

    async fn connect_h2(
        &self,
        key: &str,
        addr: &str,
        tls: Option<&UpstreamTls>,
    ) -> Result<H2Sender, UpstreamError> {
        let io = connect_io_for(addr, tls, self.connect_timeout, true)
            .await
            .map_err(UpstreamError::Connect)?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect(std::io::Error::other(e)))?;
        let peer = addr.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(upstream = %peer, error = %e, "HTTP/2 upstream connection ended");
            }
        });
        let mut all = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(std::thread::current().id())
            .or_default()
            .insert(key.to_string(), (sender.clone(), Instant::now()));
        Ok(sender)
    }

    /// An idle connection to `addr` that is ready for a request, if any
    /// (`skip` takes none, to force a fresh connection).
    async fn take_ready(&self, addr: &str, skip: bool) -> Option<Link> {
        if skip {
            return None;
        }
        loop {
            let Idle { mut link, since } = self.pop(addr)?;
            if since.elapsed() > self.idle_timeout {
                continue;
            }
            let (sender, conn) = &mut *link;
            // Drive the connection until the sender is ready; if the
            // connection ends first (the upstream closed it), try the next.
            let ready = poll_fn(|cx| {
                if Pin::new(&mut *conn).poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                match sender.poll_ready(cx) {
                    Poll::Ready(r) => Poll::Ready(r.is_ok()),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            if ready {
                return Some(link);
            }
        }
    }

    fn pop(&self, addr: &str) -> Option<Idle> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get_mut(&std::thread::current().id())?
            .get_mut(addr)?
            .pop()
    }

    fn put(&self, addr: &str, link: Link) {
        let mut all = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let idle = all.entry(std::thread::current().id()).or_default();
        let now = Instant::now();
        let list = match idle.get_mut(addr) {
            Some(list) => list,
            None => idle.entry(addr.to_string()).or_default(),
        };
        // The oldest sit at the front: forget those past their time.
        let stale = list
            .iter()
            .take_while(|i| now.duration_since(i.since) > self.idle_timeout)
            .count();
        list.drain(..stale);
        if list.len() < self.max_idle_per_addr {
            list.push(Idle { link, since: now });
        }
    }

    async fn connect(&self, addr: &str, tls: Option<&UpstreamTls>) -> Result<Link, UpstreamError> {
        let io = connect_io(addr, tls, self.connect_timeout)
            .await
            .map_err(UpstreamError::Connect)?;
        let link = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpstreamError::Connect(std::io::Error::other(e)))?;
        Ok(Box::new(link))
    }
}

/// Puts an HTTP/1.1-shaped request into HTTP/2's form: the target in
/// absolute form, from the scheme of the connection and the `Host` field
/// (sent as `:scheme` and `:authority`; the field itself is dropped).
fn to_http2<B>(req: &mut Request<B>, tls: bool) {
    *req.version_mut() = http::Version::HTTP_2;
    if req.uri().scheme().is_some() {
        return;
    }
    // A host that is no authority leaves the request as it is: sent with
    // its `Host` field, as a client could have.
    let Some(authority) = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
    else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        req.headers_mut().remove(http::header::HOST);
    }
}

/// How the edge reaches a service's instances over TLS: the CA their
/// certificates chain to, and the name they carry (else each instance's
/// host).
#[derive(Debug)]
pub struct UpstreamTls {
    config: Arc<rustls::ClientConfig>,
    /// The same, offering `h2` by ALPN, for HTTP/2 services.
    config_h2: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// Tells pooled TLS connections apart from plain ones and from other
    /// TLS settings to the same address.
    key: String,
}

impl UpstreamTls {
    /// TLS 1.2 and 1.3, certificates verified against the CA certificates
    /// in `ca_pem`, named `server_name` (or the instance's host); with
    /// `client` (certificate chain PEM, key PEM), presenting that
    /// certificate to instances that ask for one.
    pub fn new(
        ca_pem: &[u8],
        server_name: Option<&str>,
        client: Option<(&[u8], &[u8])>,
    ) -> Result<UpstreamTls, String> {
        use rustls::pki_types::pem::PemObject;
        use sha2::Digest;
        let mut roots = rustls::RootCertStore::empty();
        if crate::tls::add_pem_certificates(&mut roots, ca_pem).map_err(|e| format!("CA: {e}"))?
            == 0
        {
            return Err("no CA certificate in the file".into());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut digest = sha2::Sha256::new();
        digest.update(ca_pem);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("client certificate PEM: {e}"))?;
                if chain.is_empty() {
                    return Err("no client certificate in the file".into());
                }
                // The key's own errors could quote it: say only what failed.
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem)
                    .map_err(|_| "no PEM private key in the client key file".to_string())?;
                digest.update(cert_pem);
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
        };
        let server_name_text = server_name;
        let server_name = server_name
            .map(|n| ServerName::try_from(n.to_string()).map_err(|e| format!("server name: {e}")))
            .transpose()?;
        let mut config_h2 = config.clone();
        config_h2.alpn_protocols = vec![b"h2".to_vec()];
        Ok(UpstreamTls {
            config: Arc::new(config),
            config_h2: Arc::new(config_h2),
            key: format!(
                "tls:{}:{}",
                crate::mtls::hex(&digest.finalize()),
                server_name_text.unwrap_or("")
            ),
            server_name,
        })
    }
}

impl UpstreamTls {
    /// What tells these settings apart from others: the CA file's digest
    /// and the server name.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// A connection to an instance: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum UpstreamIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to `addr`, then, with `tls`, makes the TLS handshake; both
/// within `timeout`.
pub async fn connect_io(
    addr: &str,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
) -> std::io::Result<UpstreamIo> {
    connect_io_for(addr, tls, timeout, false).await
}

/// [`connect_io`], offering `h2` by ALPN when `h2`.
async fn connect_io_for(
    addr: &str,
    tls: Option<&UpstreamTls>,
    timeout: Duration,
    h2: bool,
) -> std::io::Result<UpstreamIo> {
    let connect = async {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(UpstreamIo::Plain(stream));
        };
        let name = match &tls.server_name {
            Some(n) => n.clone(),
            None => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr, |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                ServerName::try_from(host.to_string()).map_err(std::io::Error::other)?
            }
        };
        let config = if h2 { &tls.config_h2 } else { &tls.config };
        let tls_stream = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, stream)
            .await?;
        Ok(UpstreamIo::Tls(Box::new(tls_stream)))
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An upstream response body. It polls its connection as it is read and
/// returns the connection to the pool at its end.
pub struct UpstreamBody {
    body: Incoming,
    conn: Option<Link>,
    pool: Arc<Upstreams>,
    addr: String,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// Hands the connection back once the message is over and the
    /// connection still open.
    fn release(&mut self) {
        if let Some(link) = self.conn.take() {
            if !link.0.is_closed() {
                self.pool.put(&self.addr, link);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(link) = this.conn.as_mut() {
            if Pin::new(&mut link.1).poll(cx).is_ready() {
                // Closed (or failed): the body reports what it got.
                this.conn = None;
            }
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that was complete without being read (an empty one) leaves
        // its connection at a message boundary; any other is cut short.
        if self.conn.is_some() && self.body.is_end_stream() {
            self.release();
        }
    }
}
