//! The [`Edge`]: listeners, connection handling, the request path wired end
//! to end, and graceful drain.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, HOST, LOCATION, RETRY_AFTER};
use http::{Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::balance::{Balance, BreakerSettings, Pool, UpstreamStatus};
use crate::config::EdgeConfig;
use crate::error::{Error, Reject, Result};
use crate::framing::{Framing, FramingFlag};
use crate::hooks::{AccessRecord, AuditSink};
use crate::idle::{Activity, ConnCounts, ConnTimeouts, Idle, InFlight, Tracked};
use crate::mtls::{ClientCert, RevokedSerials};
use crate::phases::{self, Phase, RequestCtx};
use crate::proxy::{self, UpstreamClient};
use crate::router::{RouteEntry, Router};
use crate::watch::Watched;
use crate::workers::{self, Workers};

/// The body of every response the edge sends.
pub type EdgeBody = BoxBody<Bytes, hyper::Error>;

/// `Strict-Transport-Security` sent on every HTTPS response.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// The largest HTTP/1 request head (request line and headers) the edge
/// reads, like nginx's `large_client_header_buffers` (4 × 8 KiB) with room
/// to spare; above it the answer is 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Requests one HTTP/2 connection may carry at once (nginx: 128).
const MAX_H2_STREAMS: u32 = 128;

/// Where the edge listens, once bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeAddrs {
    /// The plain HTTP (redirect) listener.
    pub http: Option<SocketAddr>,
    /// The HTTPS listener.
    pub https: Option<SocketAddr>,
}

/// The gateway, bound and ready to serve.
pub struct Edge {
    http: Option<TcpListener>,
    https: Option<(TcpListener, TlsAcceptor)>,
    addrs: EdgeAddrs,
    state: Arc<State>,
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge").field("addrs", &self.addrs).finish()
    }
}

/// A handle that outlives [`Edge::serve`]'s move, for status queries.
#[derive(Clone)]
pub struct EdgeHandle {
    state: Arc<State>,
}

impl std::fmt::Debug for EdgeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeHandle").finish_non_exhaustive()
    }
}

impl EdgeHandle {
    /// Each HTTPS certificate served (by its first name) and when it
    /// expires, in seconds since the Unix epoch.
    pub fn certificate_expiry(&self) -> Vec<(String, i64)> {
        self.state
            .resolver
            .as_ref()
            .map(|r| r.expiry())
            .unwrap_or_default()
    }

    /// Connections closed by the edge's timeouts, by why, and WebSocket
    /// tunnels.
    pub fn conn_counts(&self) -> Arc<ConnCounts> {
        self.state.counts.clone()
    }

    /// Swaps in the routes and services of `config`. Pools whose upstream
    /// list is unchanged keep their health state; requests already in
    /// flight finish on the pools they started with. On error nothing
    /// changes and the old routing keeps serving.
    pub fn reload(&self, config: &rampart_config::Config) -> Result<()> {
        let st = &self.state;
        let mut old = st.routing();
        loop {
            let new = Routing::build(
                config,
                Some(&old),
                st.balance,
                st.breaker,
                &st.clock,
                st.deploy_gate(),
            )?;
            let mut slot = st.routing.write().unwrap_or_else(|p| p.into_inner());
            // A deployment settled while this one was built (files are read
            // without the lock held): build again on what serves now, so
            // that its promotion or rollback is not undone.
            if !Arc::ptr_eq(&slot, &old) {
                old = slot.clone();
                continue;
            }
            *slot = Arc::new(new);
            break;
        }
        tracing::info!(routes = config.routes.len(), "edge routing reloaded");
        Ok(())
    }

    /// Loads `certs` and swaps them in for new handshakes; on error the old
    /// certificates keep serving. Without an HTTPS listener it does nothing.
    pub fn reload_certificates(&self, certs: &[crate::config::CertConfig]) -> Result<()> {
        match &self.state.resolver {
            Some(r) => r.reload(certs),
            None => Ok(()),
        }
    }

    /// Deployments being verified, then the last ones that ended (at most
    /// [`DEPLOYS_KEPT`]), oldest first (see `deploy`).
    pub fn deployments(&self) -> Vec<crate::deploy::DeployStatus> {
        let mut v = self
            .state
            .deploy_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let routing = self.state.routing();
        let mut open: Vec<_> = routing
            .deploys
            .iter()
            .map(|(name, d)| d.status(name, crate::deploy::DeployState::Verifying))
            .collect();
        open.sort_by(|a, b| a.service.cmp(&b.service));
        v.extend(open);
        v
    }

    /// The services that do not serve the instances the config names:
    /// their deployment is being verified, or was rolled back and the
    /// config not changed since (see `deploy`). Sorted.
    pub fn pending_deployments(&self) -> Vec<String> {
        let routing = self.state.routing();
        let mut v: Vec<String> = routing
            .configured
            .iter()
            .filter(|(name, addrs)| {
                routing.deploys.contains_key(*name)
                    || routing
                        .pools
                        .get(*name)
                        .is_some_and(|p| p.addrs() != **addrs)
            })
            .map(|(name, _)| name.clone())
            .collect();
        v.sort();
        v
    }

    /// Every upstream's breaker state and in-flight count.
    pub fn upstreams(&self) -> Vec<UpstreamStatus> {
        let routing = self.state.routing();
        let mut v: Vec<_> = routing.pools.values().flat_map(|p| p.status()).collect();
        v.sort_by(|a, b| (&a.service, &a.addr).cmp(&(&b.service, &b.addr)));
        v
    }
}

/// Routes, pools, JSON Schemas and revoked client serials: swapped whole
/// on reload.
#[derive(Clone)]
struct Routing {
    router: Router,
    pools: HashMap<String, Arc<Pool>>,
    /// Services whose new instances are being verified (see `deploy`):
    /// their traffic stays on `pools` until the candidate is healthy.
    deploys: HashMap<String, crate::deploy::Deploy>,
    /// Each service's instances as the config names them (which `pools`
    /// differs from while a deployment is verified or after a rollback).
    configured: HashMap<String, Vec<String>>,
    /// Services' own health check paths.
    health_paths: HashMap<String, String>,
    schemas: HashMap<std::path::PathBuf, Arc<jsonschema::Validator>>,
    revoked: RevokedSerials,
}

/// Reads and compiles a route's JSON Schema.
fn load_schema(path: &std::path::Path) -> Result<jsonschema::Validator> {
    let bad = |reason: String| Error::BadSchema {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    jsonschema::validator_for(&value).map_err(|e| bad(e.to_string()))
}

impl Routing {
    /// Builds routing for `config`, keeping the pools (and so the breaker
    /// state) of services whose upstreams did not change.
    ///
    /// With `gate` (the deploy window, when active health checks run), a
    /// service that had instances and gets others keeps serving from the
    /// old ones while the new set is verified (see `deploy`).
    fn build(
        config: &rampart_config::Config,
        old: Option<&Routing>,
        balance: Balance,
        breaker: BreakerSettings,
        clock: &rampart_core::SharedClock,
        gate: Option<Duration>,
    ) -> Result<Routing> {
        let mut pools = HashMap::new();
        let mut deploys = HashMap::new();
        let mut configured = HashMap::new();
        for s in &config.services {
            let addrs: Vec<String> = s.upstreams.iter().map(|u| u.to_string()).collect();
            let weights: Vec<u32> = s.upstreams.iter().map(|u| u.weight).collect();
            let backups: Vec<bool> = s.upstreams.iter().map(|u| u.backup).collect();
            configured.insert(s.name.clone(), addrs.clone());
            let tls = service_tls(s)?;
            let tls_key = tls.as_ref().map(|t| t.key().to_string());
            let http2 = s.protocol == rampart_config::UpstreamProtocol::Http2;
            let balance = s.balance.map_or(balance, Balance::from);
            // A pool already reaching and balancing these instances as
            // the config says.
            let same_instances = |p: &Pool| {
                p.addrs() == addrs
                    && p.tls().map(|t| t.key()) == tls_key.as_deref()
                    && p.reach().http2 == http2
                    && p.balance() == balance
            };
            let same =
                |p: &Pool| same_instances(p) && p.weights() == weights && p.backups() == backups;
            let kept = old
                .and_then(|o| o.pools.get(&s.name))
                .filter(|p| same(p))
                .cloned();
            if let Some(pool) = kept {
                pools.insert(s.name.clone(), pool);
                continue;
            }
            let serving = old
                .and_then(|o| o.pools.get(&s.name))
                .filter(|p| !p.is_empty());
            // New weights or backups for the same instances need no
            // verifying.
            let reweighted = serving.is_some_and(|p| same_instances(p));
            let (Some(window), Some(serving), false) =
                (gate.filter(|w| !w.is_zero()), serving, reweighted)
            else {
                let pool = Pool::new(&s.name, addrs, balance, breaker, clock.clone())
                    .with_weights(&weights)
                    .with_backups(&backups)
                    .with_tls(tls)
                    .with_http2(http2);
                pools.insert(s.name.clone(), Arc::new(pool));
                continue;
            };
            // The same change reloaded again goes on being verified.
            let verifying = old
                .and_then(|o| o.deploys.get(&s.name))
                .filter(|d| same(d.candidate()));
            let deploy = match verifying {
                Some(d) => d.clone(),
                None => {
                    let candidate = Pool::new(&s.name, addrs, balance, breaker, clock.clone())
                        .with_weights(&weights)
                        .with_backups(&backups)
                        .with_tls(tls)
                        .with_http2(http2)
                        .starting_down();
                    crate::deploy::Deploy::new(
                        Arc::new(candidate),
                        serving.addrs(),
                        clock.unix_nanos(),
                        window,
                    )
                }
            };
            tracing::info!(
                service = %s.name,
                new = ?deploy.candidate().addrs(),
                "verifying a service's new instances before they get traffic"
            );
            pools.insert(s.name.clone(), serving.clone());
            deploys.insert(s.name.clone(), deploy);
        }
        for r in config.routes.iter().filter(|r| r.redirect.is_none()) {
            if pools.get(&r.service).is_none_or(|p| p.is_empty()) {
                return Err(Error::NoUpstreams(r.service.clone()));
            }
        }
        let mut schemas = HashMap::new();
        for r in &config.routes {
            if let Some(path) = &r.json_schema {
                if !schemas.contains_key(path) {
                    schemas.insert(path.clone(), Arc::new(load_schema(path)?));
                }
            }
        }
        let revoked = RevokedSerials::new(
            config
                .edge
                .iter()
                .flat_map(|e| e.revoked_client_serials.iter()),
        );
        let health_paths = config
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.health_path.clone()?)))
            .collect();
        Ok(Routing {
            router: Router::new(config.routes.clone()),
            pools,
            deploys,
            configured,
            health_paths,
            schemas,
            revoked,
        })
    }
}

/// TLS to `s`'s instances, from its `tls_ca` (and client certificate), if
/// it has one; read at start and at each reload.
fn service_tls(s: &rampart_config::Service) -> Result<Option<Arc<crate::upstream::UpstreamTls>>> {
    let Some(path) = &s.tls_ca else {
        return Ok(None);
    };
    let bad = |reason: String| Error::BadCert {
        name: format!("service {} tls_ca {}", s.name, path.display()),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let read = |p: &std::path::Path| {
        std::fs::read(p)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| bad(format!("{}: {e}", p.display())))
    };
    let client = match &s.tls_client {
        Some(id) => Some((read(&id.cert)?, read(&id.key)?)),
        None => None,
    };
    let tls = crate::upstream::UpstreamTls::new(
        &pem,
        s.tls_server_name.as_deref(),
        client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )
    .map_err(bad)?;
    Ok(Some(Arc::new(tls)))
}

struct State {
    routing: RwLock<Arc<Routing>>,
    counts: Arc<ConnCounts>,
    balance: Balance,
    breaker: BreakerSettings,
    phases: Vec<Box<dyn Phase>>,
    client: UpstreamClient,
    trusted_proxies: Vec<IpNet>,
    proxy_protocol_from: Vec<IpNet>,
    audit: Arc<dyn AuditSink>,
    /// Requests being handled, and those of them waiting for their access
    /// record ([`State::only_audit_waits`]).
    requests: RequestCounts,
    max_body: usize,
    /// Request body bytes all requests may hold at once.
    body_budget: Arc<tokio::sync::Semaphore>,
    upstream_timeout: Duration,
    connect_timeout: Duration,
    conn_timeouts: ConnTimeouts,
    body_read_timeout: Duration,
    drain_deadline: Duration,
    worker_threads: Option<usize>,
    health_check: Option<crate::config::HealthCheck>,
    /// A slot per client connection held (`max_connections`, and per
    /// client `max_connections_per_client`).
    slots: crate::slots::Slots,
    /// Whether responses are compressed where a route does not say.
    gzip_on: bool,
    /// The gzip settings (`[edge.gzip]`'s, else the defaults a route's
    /// `gzip = true` uses).
    gzip: crate::compress::GzipSettings,
    /// Room for compressed responses (`[edge.gzip] max_streams`).
    gzip_streams: crate::compress::Streams,
    /// `Strict-Transport-Security`, as sent.
    hsts: HeaderValue,
    /// Added to responses that lack them.
    security_headers: Vec<(http::HeaderName, HeaderValue)>,
    /// The last deployments that ended (see `deploy`).
    deploy_log: std::sync::Mutex<Vec<crate::deploy::DeployStatus>>,
    assertion: Option<Arc<crate::assertion::AssertionSigner>>,
    resolver: Option<Arc<crate::tls::SniResolver>>,
    certificates: Vec<crate::config::CertConfig>,
    cert_poll_interval: Option<Duration>,
    https_port: u16,
    clock: rampart_core::SharedClock,
    ids: AtomicU64,
}

impl Edge {
    /// Loads certificates, builds pools and phases, and binds the listeners.
    pub async fn bind(cfg: EdgeConfig) -> Result<Edge> {
        let mut resolver = None;
        let https = match cfg.https_listen {
            Some(addr) => {
                let (tls, r) = crate::tls::server_config(
                    &cfg.certificates,
                    cfg.client_auth.as_ref(),
                    &cfg.tls,
                )?;
                resolver = Some(r);
                Some((bind(addr).await?, TlsAcceptor::from(tls)))
            }
            None => None,
        };
        let http = match cfg.http_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let addrs = EdgeAddrs {
            http: http.as_ref().and_then(|l| l.local_addr().ok()),
            https: https.as_ref().and_then(|(l, _)| l.local_addr().ok()),
        };
        let https_port = cfg
            .redirect_https_port
            .or(addrs.https.map(|a| a.port()))
            .unwrap_or(443);

        let routing = Routing::build(
            &cfg.config,
            None,
            cfg.balance,
            cfg.breaker,
            &cfg.clock,
            None,
        )?;

        let gzip = cfg.gzip.clone().unwrap_or_default();
        let mut phases: Vec<Box<dyn Phase>> = vec![
            Box::new(phases::IpRules {
                allow: cfg.allow_cidrs.clone(),
                deny: cfg.deny_cidrs.clone(),
            }),
            Box::new(phases::RateLimit {
                limits: cfg.rate_limits,
                store: cfg.counter_store.clone(),
                clock: cfg.clock.clone(),
            }),
            Box::new(phases::Redirect),
            Box::new(phases::CorsPreflight),
            Box::new(phases::Methods),
        ];
        if let Some(waf) = &cfg.waf {
            phases.push(Box::new(phases::Firewall { waf: waf.clone() }));
        }
        phases.push(Box::new(phases::Authn {
            authenticator: cfg.authenticator.clone(),
        }));
        phases.push(Box::new(phases::PrincipalRateLimit {
            rate: cfg.rate_limits.per_principal,
            store: cfg.counter_store.clone(),
            clock: cfg.clock.clone(),
        }));
        phases.push(Box::new(phases::Authz));
        phases.push(Box::new(phases::BodyLimit {
            max: cfg.max_body_bytes,
        }));
        phases.push(Box::new(phases::JsonSchema));

        let client = crate::upstream::Upstreams::new(cfg.connect_timeout, Duration::from_secs(30));

        let state = Arc::new(State {
            routing: RwLock::new(Arc::new(routing)),
            balance: cfg.balance,
            breaker: cfg.breaker,
            phases,
            client,
            trusted_proxies: cfg.trusted_proxies.clone(),
            proxy_protocol_from: cfg.proxy_protocol_from.clone(),
            audit: cfg.audit.clone(),
            requests: RequestCounts::default(),
            max_body: cfg.max_body_bytes,
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_buffered_body_bytes
                    .clamp(cfg.max_body_bytes, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            upstream_timeout: cfg.upstream_timeout,
            connect_timeout: cfg.connect_timeout,
            counts: Arc::default(),
            conn_timeouts: ConnTimeouts {
                first_request: cfg.header_read_timeout,
                head: Some(cfg.header_read_timeout),
                keepalive: cfg.keepalive_timeout,
                send: cfg.send_timeout,
            },
            body_read_timeout: cfg.body_read_timeout,
            drain_deadline: cfg.drain_deadline,
            worker_threads: cfg.worker_threads,
            health_check: cfg.health_check.clone(),
            slots: crate::slots::Slots::new(cfg.max_connections, cfg.max_connections_per_client),
            gzip_on: cfg.gzip.is_some(),
            gzip_streams: crate::compress::Streams::new(gzip.max_streams),
            gzip,
            hsts: HeaderValue::from_str(&cfg.hsts).unwrap_or_else(|_| {
                tracing::warn!("the HSTS value is no valid header: sending the default");
                HeaderValue::from_static(HSTS)
            }),
            security_headers: crate::router::header_pairs(&cfg.security_headers),
            deploy_log: std::sync::Mutex::default(),
            assertion: cfg.assertion.clone(),
            resolver,
            certificates: cfg.certificates.clone(),
            cert_poll_interval: cfg.cert_poll_interval,
            https_port,
            clock: cfg.clock.clone(),
            ids: AtomicU64::new(0),
        });
        Ok(Edge {
            http,
            https,
            addrs,
            state,
        })
    }

    /// The bound addresses (useful with port 0).
    pub fn local_addrs(&self) -> EdgeAddrs {
        self.addrs
    }

    /// A handle for status queries while serving.
    pub fn handle(&self) -> EdgeHandle {
        EdgeHandle {
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` completes, then drains: the listeners close
    /// at once, idle connections are closed, in-flight requests get up to
    /// the drain deadline, and whatever remains is aborted.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let Edge {
            http, https, state, ..
        } = self;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // A request head above this is refused with 431 (hyper's default
            // lets one header line grow to about 400 KiB).
            .max_buf_size(MAX_HEAD_BYTES)
            .timer(TokioTimer::new())
            // Its timer runs through idle keep-alive time too: heads are
            // timed in `idle`, and this is the backstop, a second behind.
            .header_read_timeout(state.conn_timeouts.backstop());
        // As nginx's http2_max_concurrent_streams: with request bodies read
        // whole, the streams one connection may open bound what it can make
        // the edge hold (and `max_buffered_body_bytes` bounds all of them).
        builder.http2().max_concurrent_streams(MAX_H2_STREAMS);
        let graceful = GracefulShutdown::new();
        let mut conns = JoinSet::new();
        let mut checks = JoinSet::new();
        if let Some(hc) = state.health_check.clone() {
            let st = state.clone();
            checks.spawn(async move {
                let mut tick = tokio::time::interval(hc.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let routing = st.routing();
                    let pools = routing
                        .pools
                        .values()
                        .chain(routing.deploys.values().map(|d| d.candidate()))
                        .map(|p| {
                            let path = routing.health_paths.get(p.service()).unwrap_or(&hc.path);
                            (p.clone(), path.clone())
                        })
                        .collect();
                    drop(routing);
                    let now = st.clock.unix_secs();
                    let signer = st.assertion.as_deref();
                    crate::health::check_all(pools, &st.client, &hc, signer, now).await;
                    st.settle_deploys();
                }
            });
        }
        if let (Some(every), Some(resolver)) = (state.cert_poll_interval, state.resolver.clone()) {
            let certs = state.certificates.clone();
            checks.spawn(watch_certificates(resolver, certs, every));
        }
        // All workers parked and every request they hold waiting for its
        // access record: no record can come until a sync answers them, so
        // the log need not wait for company (`docs/edge.md`).
        let idle_state = Arc::clone(&state);
        let on_idle: crate::workers::IdleHook = Arc::new(move || {
            if idle_state.only_audit_waits() {
                idle_state.audit.callers_idle();
            }
        });
        let workers = Workers::start("edge-worker", state.worker_threads, Some(on_idle))
            .map_err(Error::Worker)?;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                r = accept(http.as_ref()) => {
                    let Some((mut stream, peer)) = r else { continue };
                    let Some(mut slot) = state.admit(peer) else { continue };
                    let st = state.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    conns.spawn(async move {
                        let Some(peer) = st.proxied_client(&mut stream, peer, &mut slot).await else {
                            return;
                        };
                        let _slot = slot;
                        let activity = Activity::default();
                        let io = Watched::new(stream, st.idle(&activity, false));
                        let svc = service_fn(move |req| {
                            let st = st.clone();
                            let busy = activity.begin();
                            async move { Ok::<_, Infallible>(tracked(st.redirect(&req), busy)) }
                        });
                        let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "http connection ended");
                        }
                    });
                }
                r = accept(https.as_ref().map(|(l, _)| l)) => {
                    let Some((stream, peer)) = r else { continue };
                    let Some((_, acceptor)) = https.as_ref() else { continue };
                    let Some(mut slot) = state.admit(peer) else { continue };
                    let acceptor = acceptor.clone();
                    let st = state.clone();
                    let builder = builder.clone();
                    let watcher = graceful.watcher();
                    // The connection lives on one worker thread from here on.
                    workers.spawn(&mut conns, stream, peer, move |mut stream| async move {
                        let Some(peer) = st.proxied_client(&mut stream, peer, &mut slot).await else {
                            return;
                        };
                        let _slot = slot;
                        // The handshake, like the first request, within the header-read timeout.
                        let hs = tokio::time::timeout(st.conn_timeouts.first_request, acceptor.accept(stream)).await;
                        let tls = match hs {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        // The handshake verified the chain; keep what names the principal.
                        let cert = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|der| ClientCert::from_der(der))
                            .map(Arc::new);
                        // Requests are numbered as hyper hands them over, in
                        // the order the guard saw their heads.
                        let flag = FramingFlag::default();
                        let seen = Arc::new(AtomicU64::new(0));
                        let guard_flag = flag.clone();
                        // A connection that carries no request for its
                        // timeout, or whose client stops reading for the
                        // send timeout, is closed (see `idle`).
                        let activity = Activity::default();
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        let idle = Watched::new(tls, st.idle(&activity, h2));
                        let svc = service_fn(move |req| {
                            let st = st.clone();
                            let cert = cert.clone();
                            let index = seen.fetch_add(1, Ordering::Relaxed);
                            let smuggling = flag.is_conflicting(index);
                            // A WebSocket tunnel keeps its connection busy
                            // (see `tunnel`); only a handshake needs this.
                            let mut req = req;
                            if req.headers().contains_key(http::header::UPGRADE) {
                                req.extensions_mut().insert(activity.clone());
                            }
                            let busy = match req.version() {
                                // A stalled stream does not block the socket.
                                Version::HTTP_2 => activity.begin().watch_sends(),
                                _ => activity.begin(),
                            };
                            // Boxed where it is made: hyper moves the
                            // service's future into its own slot, which
                            // copied all of a request's state (some 7 KiB).
                            Box::pin(async move {
                                let resp = st.handle(req, peer, cert, smuggling).await;
                                Ok::<_, Infallible>(tracked(resp, busy))
                            })
                        });
                        let io = TokioIo::new(Watched::new(idle, Framing::new(guard_flag)));
                        let conn = builder.serve_connection_with_upgrades(io, svc).into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "https connection ended");
                        }
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(http);
        drop(https);
        checks.abort_all();
        tracing::info!(connections = conns.len(), "edge draining");
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(state.drain_deadline) => {
                tracing::warn!(left = conns.len(), "drain deadline passed; aborting connections");
            }
        }
        conns.shutdown().await;
        workers.stop();
        Ok(())
    }
}

/// Reloads file-backed certificates when a file's modification time moves.
/// A failed load (say, a half-written file) is logged and retried on the
/// next change; the old certificates keep serving.
async fn watch_certificates(
    resolver: Arc<crate::tls::SniResolver>,
    certs: Vec<crate::config::CertConfig>,
    every: Duration,
) {
    let mut seen = crate::tls::newest_mtime(&certs);
    if seen.is_none() {
        return;
    }
    loop {
        tokio::time::sleep(every).await;
        let now = crate::tls::newest_mtime(&certs);
        if now != seen {
            seen = now;
            match resolver.reload(&certs) {
                Ok(()) => tracing::info!("certificates reloaded"),
                Err(e) => {
                    tracing::warn!(error = %e, "certificate reload failed; keeping the old ones")
                }
            }
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Accepts from `l` ([`workers::accept`]), or waits forever when there is
/// no listener.
async fn accept(l: Option<&TcpListener>) -> Option<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => workers::accept(l).await,
        None => std::future::pending().await,
    }
}

/// `resp` with its request kept in flight until its body has ended.
fn tracked(resp: Response<EdgeBody>, busy: InFlight) -> Response<EdgeBody> {
    resp.map(|body| Tracked::new(body, busy).boxed())
}

fn full(b: impl Into<Bytes>) -> EdgeBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// The host a request names (URI authority, else `Host`), validated,
/// lowercase, without port. `None` (a 400) also for two `Host` headers,
/// or a `Host` that names another host than the URI's authority (HTTP/2's
/// `:authority`, or an absolute-form request target): the edge would route
/// by one and the service might act on the other.
pub fn request_host(uri: &http::Uri, headers: &http::HeaderMap) -> Option<String> {
    let mut all = headers.get_all(HOST).iter();
    let header = match (all.next(), all.next()) {
        (_, Some(_)) => return None,
        (Some(v), None) => Some(parse_host(v.to_str().ok()?)?),
        (None, None) => None,
    };
    match uri.authority() {
        Some(a) => {
            let host = parse_host(a.as_str())?;
            match header {
                Some(h) if h != host => None,
                _ => Some(host),
            }
        }
        None => header,
    }
}

/// A `Transfer-Encoding` other than plain `chunked`: the edge would pass
/// the coded body on as if it were the content (nginx answers 501 too).
/// hyper itself refuses a coding list that does not end in `chunked`.
fn unsupported_transfer_encoding(headers: &http::HeaderMap) -> bool {
    let mut codings = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','));
    match (codings.next(), codings.next()) {
        (None, _) => false,
        (Some(only), None) => !only.trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    }
}

/// Validates `host[:port]`; returns the host, lowercase.
pub fn parse_host(raw: &str) -> Option<String> {
    if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        // Only a port may follow the bracket: `[::1]evil.com` is refused,
        // not read as `[::1]`.
        if !after.is_empty() {
            after.strip_prefix(':')?.parse::<u16>().ok()?;
        }
        return Some(format!("[{}]", v6.to_ascii_lowercase()));
    }
    let host = match raw.rsplit_once(':') {
        Some((h, p)) => {
            p.parse::<u16>().ok()?;
            h
        }
        None => raw,
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| host.to_ascii_lowercase())
}

/// The client address: the peer, or, when the peer is a trusted proxy, the
/// right-most untrusted address in `X-Forwarded-For`. Also returns the
/// `X-Forwarded-For` value to send upstream.
///
/// An IPv4 client reaching a dual-stack (`[::]`) listener, or named so by
/// a proxy, appears as an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`),
/// which no IPv4 network contains: every address is taken in its
/// canonical form, so that IPv4 deny lists, allow lists, trusted proxies
/// and rate-limit keys see the IPv4 address it is.
pub fn client_addr(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> (IpAddr, String) {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return (peer, crate::text::ip_text(peer));
    }
    let chain: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut client = peer;
    for hop in chain.iter().rev() {
        match parse_hop(hop) {
            Some(ip) => {
                let ip = ip.to_canonical();
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            None => break,
        }
    }
    let mut xff = chain.join(", ");
    if !xff.is_empty() {
        xff.push_str(", ");
    }
    crate::text::push_ip(&mut xff, peer);
    (client, xff)
}

/// One `X-Forwarded-For` entry: an address, as most proxies write it, or
/// with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`) or brackets
/// (`[2001:db8::1]`), as some load balancers do. Read as a bare address
/// only, such an entry would stop the walk at the proxy before it, which
/// would then stand for every client behind it: inside allow lists meant
/// for the proxy's own network, outside every deny list.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

impl State {
    /// A slot for a connection just accepted from `peer`, held while it
    /// lives; `None` (and the connection closed, and counted) when the edge
    /// holds `max_connections` already, or this client its
    /// `max_connections_per_client` (see `slots`). A connection from a
    /// balancer in `proxy_protocol_from` counts in all only until its PROXY
    /// header names the client ([`State::proxied_client`]).
    fn admit(&self, peer: SocketAddr) -> Option<crate::slots::Slot> {
        let taken = if self.is_balancer(peer) {
            self.slots.take_edge()
        } else {
            self.slots.take(peer.ip())
        };
        taken.map_err(|full| self.refused(full, peer)).ok()
    }

    fn is_balancer(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.proxy_protocol_from.iter().any(|n| n.contains(&ip))
    }

    /// Counts and logs a connection closed for want of a slot.
    fn refused(&self, full: crate::slots::Full, peer: SocketAddr) {
        let (why, what) = match full {
            crate::slots::Full::Edge => (crate::idle::Closed::OverLimit, "max_connections"),
            crate::slots::Full::Client => (
                crate::idle::Closed::ClientOverLimit,
                "max_connections_per_client",
            ),
        };
        self.counts.closed(why);
        tracing::debug!(%peer, "connection refused: {what} reached");
    }

    /// The client of a connection accepted from `peer`: `peer` itself, or,
    /// from a balancer in `proxy_protocol_from`, the client its PROXY
    /// header names (read within the first-request timeout), with `slot`
    /// then counted against that client. `None`, and the connection to be
    /// closed, on a missing or bad header or a client over its cap.
    async fn proxied_client(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        slot: &mut crate::slots::Slot,
    ) -> Option<SocketAddr> {
        if !self.is_balancer(peer) {
            return Some(peer);
        }
        let read = crate::proxy_protocol::read_header(stream);
        let client = match tokio::time::timeout(self.conn_timeouts.first_request, read).await {
            Ok(Ok(named)) => named.unwrap_or(peer),
            Ok(Err(e)) => {
                self.counts.closed(crate::idle::Closed::ProxyHeader);
                tracing::debug!(%peer, error = %e, "connection closed: bad PROXY header");
                return None;
            }
            Err(_) => {
                self.counts.closed(crate::idle::Closed::ProxyHeader);
                tracing::debug!(%peer, "connection closed: no PROXY header in time");
                return None;
            }
        };
        if let Err(full) = self.slots.claim(slot, client.ip()) {
            self.refused(full, client);
            return None;
        }
        Some(client)
    }

    /// HSTS, always, and the security headers a response lacks.
    fn add_security_headers(&self, h: &mut http::HeaderMap) {
        h.insert(http::header::STRICT_TRANSPORT_SECURITY, self.hsts.clone());
        for (name, value) in &self.security_headers {
            h.entry(name.clone()).or_insert_with(|| value.clone());
        }
    }

    fn routing(&self) -> Arc<Routing> {
        self.routing
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn redirect<B>(&self, req: &Request<B>) -> Response<EdgeBody> {
        let Some(host) = request_host(req.uri(), req.headers()) else {
            return status_response(StatusCode::BAD_REQUEST);
        };
        // Only to a site the edge serves: a redirect to whatever host a
        // request names would let it point a shared cache's copy elsewhere.
        if !self.routing().router.serves_host(&host) {
            return status_response(StatusCode::NOT_FOUND);
        }
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = if self.https_port == 443 {
            format!("https://{host}{pq}")
        } else {
            format!("https://{host}:{}{pq}", self.https_port)
        };
        let mut resp = status_response(StatusCode::MOVED_PERMANENTLY);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(LOCATION, v);
        }
        resp
    }

    fn request_id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(24);
        crate::text::push_hex(&mut id, self.clock.unix_nanos(), 16);
        crate::text::push_hex(&mut id, n, 8);
        id
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        cert: Option<Arc<ClientCert>>,
        smuggling: bool,
    ) -> Response<EdgeBody> {
        let started = Instant::now();
        let _handling = Held::count(&self.requests.handling);
        let (head, body) = req.into_parts();
        let (client, forwarded_for) = client_addr(peer.ip(), &head.headers, &self.trusted_proxies);
        let host = request_host(&head.uri, &head.headers);
        let mut rec = AccessRecord {
            request_id: self.request_id(),
            client,
            method: head.method.to_string(),
            host: host.clone().unwrap_or_default(),
            path: crate::path::redact_parameters(head.uri.path()).into_owned(),
            route: None,
            principal: None,
            status: 0,
            reason: None,
            upstream: None,
            bytes_in: 0,
            bytes_out: None,
            latency: Duration::ZERO,
            waf: None,
            client_cert_serial: cert.as_ref().map(|c| c.serial.clone()),
            detail: None,
        };
        // gRPC runs over HTTP/2 only; its refusals are answered its way.
        let grpc = head.version == http::Version::HTTP_2 && is_grpc(&head.headers);
        // A refusal on a route with `cors` is marked for the page's origin.
        let mut cors_route = None;
        let result = if smuggling {
            // Refused before routing; hyper closes the connection after it.
            Err(Reject::ConflictingFraming)
        } else {
            self.pass(
                Received {
                    head,
                    body,
                    host,
                    forwarded_for,
                    cert,
                },
                &mut rec,
                &mut cors_route,
            )
            .await
        };
        let mut resp = match result {
            Ok(r) => r,
            Err(reject) => {
                rec.reason = Some(reject.reason());
                if let Reject::SchemaViolation { field, .. } = &reject {
                    rec.detail = Some(field.clone());
                }
                let mut resp = if grpc {
                    // Recorded with the HTTP status it stands for.
                    rec.status = reject.status().as_u16();
                    grpc_reject_response(&reject, &rec.request_id)
                } else {
                    reject_response(&reject, &rec.request_id)
                };
                if let (Some((route, origin)), false) =
                    (&cors_route, matches!(reject, Reject::Preflight { .. }))
                {
                    if let Some(cors) = &route.cors {
                        cors.apply(origin.as_ref(), resp.headers_mut());
                    }
                }
                resp
            }
        };
        self.add_security_headers(resp.headers_mut());
        if rec.status == 0 {
            rec.status = resp.status().as_u16();
        }
        rec.bytes_out = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        rec.latency = started.elapsed();
        let waiting = Held::count(&self.requests.awaiting_audit);
        let durable = self.audit.record_durable(&rec).await;
        drop(waiting);
        if let Err(why) = durable {
            // No record, no answer: the client gets a 503 instead.
            tracing::error!(request_id = %rec.request_id, reason = %why, "access record refused; failing closed");
            let mut refused = status_response(StatusCode::SERVICE_UNAVAILABLE);
            self.add_security_headers(refused.headers_mut());
            return refused;
        }
        resp
    }

    /// Whether every request being handled is waiting for its access
    /// record (and at least one is): then no new record comes until the
    /// audit log answers one of them.
    fn only_audit_waits(&self) -> bool {
        only_audit_waits(
            self.requests.handling.load(Ordering::SeqCst),
            self.requests.awaiting_audit.load(Ordering::SeqCst),
        )
    }

    /// Route → phases → balance and proxy.
    async fn pass(
        &self,
        req: Received,
        rec: &mut AccessRecord,
        cors_route: &mut Option<(Arc<RouteEntry>, Option<HeaderValue>)>,
    ) -> Result<Response<EdgeBody>, Reject> {
        let Received {
            head,
            body,
            host,
            forwarded_for,
            cert,
        } = req;
        let client = rec.client;
        let host = host.ok_or(Reject::BadHost)?;
        let routing = self.routing();
        if let Some(c) = &cert {
            if routing.revoked.contains(c) {
                // A revoked certificate is refused on every route, named
                // in the record so that the security tier shows who.
                rec.principal = Some(c.principal.clone());
                return Err(Reject::CertRevoked);
            }
        }
        if unsupported_transfer_encoding(&head.headers) {
            return Err(Reject::UnsupportedTransferEncoding);
        }
        // A path that cannot be normalised is still routed as received, so
        // that the firewall inspects it with its route's settings and an
        // attack is recorded as such; it is refused before the proxy.
        let (path, mut bad_path) = match crate::path::normalize(head.uri.path()) {
            Ok(p) => (p, None),
            Err(e) => (std::borrow::Cow::Borrowed(head.uri.path()), Some(e)),
        };
        // A path that other servers read as another route's (parameters
        // dropped, another case) is refused like a bad one.
        let found = match bad_path {
            Some(_) => routing.router.find(&host, &path),
            None => routing
                .router
                .find_unambiguous(&host, &path)
                .unwrap_or_else(|e| {
                    bad_path = Some(e);
                    routing.router.find(&host, &path)
                }),
        };
        let route = found.ok_or(Reject::NoRoute)?.clone();
        if route.cors.is_some() {
            let origin = head.headers.get(http::header::ORIGIN).cloned();
            *cors_route = Some((route.clone(), origin));
        }
        // The route may give its prefix another name at the service.
        let rewritten = route
            .upstream_path_prefix
            .as_deref()
            .map(|with| crate::path::replace_prefix(&path, &route.path_prefix, with));
        let forward_path = match rewritten.map_or(path, std::borrow::Cow::Owned) {
            std::borrow::Cow::Owned(mut p) => {
                if let Some(q) = head.uri.query() {
                    p.push('?');
                    p.push_str(q);
                }
                // Built from the received path's own bytes: it parses.
                Some(
                    http::uri::PathAndQuery::try_from(p)
                        .map_err(|_| Reject::BadPath(crate::path::PathError::BadEscape))?,
                )
            }
            std::borrow::Cow::Borrowed(_) => None,
        };
        let mut ctx = RequestCtx::new(head, body, client, host, route, rec.request_id.clone());
        ctx.forward_path = forward_path;
        ctx.forwarded_for = forwarded_for;
        rec.route = Some(ctx.route.label().to_string());
        // The route's own limit, when smaller, bounds what is read at all:
        // a body declared over it is refused before any of it is read, and
        // one that grows over it is cut off there.
        // A streamed body is never held, so the edge's limit (which
        // bounds what it reads whole) does not cap a streaming route's.
        let max_body = ctx.route.max_body_bytes.map_or(self.max_body, |m| {
            if ctx.route.stream_request_body {
                m
            } else {
                m.min(self.max_body)
            }
        });
        if phases::declared_too_large(&ctx.head, max_body) {
            return Err(Reject::BodyTooLarge);
        }
        // A redirect carries the path on: one the edge would refuse is
        // refused here rather than sent on.
        if let (Some(_), Some(e)) = (&ctx.route.redirect, &bad_path) {
            return Err(Reject::BadPath(*e));
        }
        ctx.client_cert = cert;
        ctx.schema = ctx
            .route
            .json_schema
            .as_ref()
            .and_then(|p| routing.schemas.get(p))
            .cloned();
        let outcome = phases::run(
            &self.phases,
            &mut ctx,
            max_body,
            self.body_read_timeout,
            &self.body_budget,
        )
        .await;
        rec.principal = ctx.principal.as_ref().map(|p| p.id.clone());
        rec.waf = ctx.waf.take();
        rec.bytes_in = ctx.body().map_or(0, |b| b.len() as u64);
        let checks = outcome?;
        if let Some(e) = bad_path {
            return Err(Reject::BadPath(e));
        }
        let pool = routing
            .pools
            .get(&ctx.route.service)
            .ok_or(Reject::NoHealthyUpstream {
                retry_after: Duration::from_secs(1),
            })?
            .clone();
        let assertion = self.assertion.as_ref().and_then(|signer| {
            let (sub, roles) = match &ctx.principal {
                Some(p) => (p.id.as_str(), p.roles.as_slice()),
                None => ("anonymous", &[][..]),
            };
            signer.header(
                sub,
                roles,
                &ctx.route.service,
                ctx.route.label(),
                self.clock.unix_secs(),
            )
        });
        // The route's own upstream timeout, when it has one.
        let upstream_timeout = ctx
            .route
            .upstream_timeout_seconds
            .map_or(self.upstream_timeout, |s| Duration::from_secs(u64::from(s)));
        if ctx.route.websocket && crate::tunnel::is_websocket(&ctx.head) {
            // Boxed: rare, and its state would otherwise ride in every
            // request's future.
            return Box::pin(self.tunnel(&mut ctx, &pool, assertion, upstream_timeout, rec)).await;
        }
        let streamed = if ctx.route.stream_request_body {
            ctx.take_stream(max_body, self.body_read_timeout)
        } else {
            None
        };
        let progress = streamed.as_ref().map(crate::reqbody::Streamed::progress);
        let fwd = proxy::forward(
            &self.client,
            &pool,
            &ctx,
            streamed,
            true,
            upstream_timeout,
            assertion,
        )
        .await;
        if let Some(p) = progress {
            // What the client had sent by the time the service answered.
            rec.bytes_in = p.bytes();
        }
        let fwd = fwd?;
        rec.upstream = Some(fwd.upstream);
        let (mut parts, body) = fwd.response.into_parts();
        proxy::strip_hop_by_hop(&mut parts.headers);
        // The route's own header rules.
        for name in &ctx.route.remove_response {
            parts.headers.remove(name);
        }
        for (name, value) in &ctx.route.set_response {
            parts.headers.insert(name, value.clone());
        }
        if let Some(cors) = &ctx.route.cors {
            cors.apply(
                ctx.head.headers.get(http::header::ORIGIN),
                &mut parts.headers,
            );
        }
        if checks.is_empty() {
            return Ok(self.maybe_gzip(&ctx, Response::from_parts(parts, body.boxed())));
        }
        // The response phases: read as much of the body as a check asks
        // for (within the upstream timeout), run the checks, then send the
        // body on, read part first.
        let limit = checks.iter().filter_map(|c| c.body_limit(&parts)).max();
        let (body, read) = match limit {
            Some(limit) => {
                let (read, rest) = tokio::time::timeout(
                    upstream_timeout,
                    proxy::read_prefix(body, limit.saturating_add(1)),
                )
                .await
                .map_err(|_| Reject::UpstreamTimeout)??;
                (proxy::Replayed::new(read.clone(), rest).boxed(), read)
            }
            None => (body.boxed(), Bytes::new()),
        };
        let mut refused = Ok(());
        for check in checks {
            if let Err(r) = check.check_response(&mut ctx, &parts, &read) {
                refused = Err(r);
                break;
            }
        }
        if let Some(w) = ctx.waf.take() {
            rec.waf = Some(w);
        }
        refused?;
        Ok(self.maybe_gzip(&ctx, Response::from_parts(parts, body)))
    }

    /// `resp` compressed with gzip when the route, the request and the
    /// response call for it (see `compress`).
    fn maybe_gzip(&self, ctx: &RequestCtx, mut resp: Response<EdgeBody>) -> Response<EdgeBody> {
        if !ctx.route.gzip.unwrap_or(self.gzip_on) {
            return resp;
        }
        let settings = &self.gzip;
        if !crate::compress::compressible(settings, &ctx.head.method, resp.status(), resp.headers())
        {
            return resp;
        }
        // A client that takes gzip gets it while the edge has room for
        // another stream (see `compress::Streams`).
        let slot = match crate::compress::accepts_gzip(&ctx.head.headers) {
            true => self.gzip_streams.take(),
            false => None,
        };
        let Some(slot) = slot else {
            // Caches must not give this client's copy to one that takes
            // gzip, nor the reverse.
            crate::compress::add_vary(resp.headers_mut());
            return resp;
        };
        let (mut parts, body) = resp.into_parts();
        crate::compress::mark_compressed(&mut parts.headers);
        let body = crate::compress::Gzip::new(body, settings.level).holding(slot);
        Response::from_parts(parts, body.boxed())
    }
}

/// Deployments kept in [`EdgeHandle::deployments`] once they have ended.
pub const DEPLOYS_KEPT: usize = 32;

impl State {
    /// The deploy window, when active health checks can verify deployments.
    fn deploy_gate(&self) -> Option<Duration> {
        self.health_check.as_ref().map(|h| h.deploy_window)
    }

    /// Promotes the deployments whose new instances are all healthy and
    /// rolls back those whose window has ended (see `deploy`).
    fn settle_deploys(&self) {
        let now = self.clock.unix_nanos();
        let mut slot = self.routing.write().unwrap_or_else(|p| p.into_inner());
        let ended: Vec<(String, crate::deploy::DeployState)> = slot
            .deploys
            .iter()
            .map(|(name, d)| (name.clone(), d.decide(now)))
            .filter(|(_, state)| *state != crate::deploy::DeployState::Verifying)
            .collect();
        if ended.is_empty() {
            return;
        }
        let mut next = Routing::clone(&slot);
        let mut log = self.deploy_log.lock().unwrap_or_else(|p| p.into_inner());
        for (name, state) in ended {
            let Some(d) = next.deploys.remove(&name) else {
                continue;
            };
            let status = d.status(&name, state);
            match state {
                crate::deploy::DeployState::Promoted => {
                    tracing::info!(service = %name, new = ?status.new, "new instances verified: they take the traffic");
                    next.pools.insert(name, d.candidate().clone());
                }
                _ => {
                    tracing::warn!(
                        service = %name,
                        unhealthy = ?status.unhealthy,
                        previous = ?status.previous,
                        "deployment rolled back: its new instances failed their health checks within the deploy window; the previous instances keep serving"
                    );
                }
            }
            log.push(status);
        }
        let excess = log.len().saturating_sub(DEPLOYS_KEPT);
        log.drain(..excess);
        *slot = Arc::new(next);
    }

    /// The timeouts of a connection whose requests `activity` marks (see
    /// `idle`), counted in the edge's `ConnCounts`; HTTP/2 has no heads to
    /// time.
    fn idle(&self, activity: &Activity, h2: bool) -> Idle {
        let mut timeouts = self.conn_timeouts;
        if h2 {
            timeouts.head = None;
        }
        Idle::new(activity.clone(), timeouts).counting(self.counts.clone())
    }

    /// A WebSocket handshake on a route that allows it: see `tunnel`.
    async fn tunnel(
        &self,
        ctx: &mut RequestCtx,
        pool: &crate::balance::Pool,
        assertion: Option<HeaderValue>,
        upstream_timeout: Duration,
        rec: &mut AccessRecord,
    ) -> Result<Response<EdgeBody>, Reject> {
        let Some(client) = ctx.head.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(Reject::UpstreamFailed);
        };
        let busy = ctx.head.extensions.get::<Activity>().map(Activity::begin);
        let (opened, upstream) =
            crate::tunnel::open(pool, ctx, assertion, self.connect_timeout, upstream_timeout)
                .await?;
        rec.upstream = Some(upstream);
        match opened {
            crate::tunnel::Opened::Switched(resp, up) => {
                let open = self.counts.tunnel();
                crate::tunnel::splice(client, up, upstream_timeout, (busy, open));
                Ok(resp.map(|()| full(Bytes::new())))
            }
            crate::tunnel::Opened::Refused(resp) => {
                let (mut parts, body) = resp.into_parts();
                proxy::strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, body.boxed()))
            }
        }
    }
}

fn status_response(status: StatusCode) -> Response<EdgeBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// Whether a request is a gRPC call (`Content-Type: application/grpc`,
/// with or without a `+format` suffix).
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start();
            v.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
                && matches!(v.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// The gRPC status code for a refusal, from its HTTP status: what a gRPC
/// client can act on (Envoy answers gRPC calls it refuses the same way).
fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 | 415 | 422 => 3,  // INVALID_ARGUMENT
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 | 405 | 501 => 12, // UNIMPLEMENTED
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        413 | 429 | 431 => 8,  // RESOURCE_EXHAUSTED
        502 | 503 => 14,       // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

/// A refusal of a gRPC call, as gRPC clients read one: HTTP 200 with no
/// body and the outcome in `grpc-status` and `grpc-message` (the reason
/// code; a "trailers-only" response), plus the request id and any
/// `Retry-After`.
fn grpc_reject_response(reject: &Reject, request_id: &str) -> Response<EdgeBody> {
    let mut r = Response::new(full(Bytes::new()));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        HeaderValue::from(u16::from(grpc_status(reject.status()))),
    );
    h.insert("grpc-message", HeaderValue::from_static(reject.reason()));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    if let Some(secs) = reject.retry_after_secs() {
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The two counts [`State::only_audit_waits`] reads. Every worker writes
/// them twice a request, so they sit on a cache line of their own: beside
/// the state's read-mostly fields they would evict those from the other
/// worker's cache on every request.
#[derive(Default)]
#[repr(align(64))]
struct RequestCounts {
    handling: AtomicUsize,
    awaiting_audit: AtomicUsize,
}

/// [`State::only_audit_waits`] from its two counts (`waiting` is read
/// second: a request that finished between the reads only lowers it).
fn only_audit_waits(handling: usize, waiting: usize) -> bool {
    waiting > 0 && waiting >= handling
}

/// One count held in a counter for as long as it lives (dropped with the
/// request's future, however it ends).
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn count(c: &'a AtomicUsize) -> Held<'a> {
        c.fetch_add(1, Ordering::SeqCst);
        Held(c)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request as [`State::handle`] hands it on to be routed and passed.
struct Received {
    head: http::request::Parts,
    body: Incoming,
    /// The validated host, if it is one.
    host: Option<String>,
    /// What `X-Forwarded-For` the service gets.
    forwarded_for: String,
    /// The verified client certificate, on mutual TLS connections.
    cert: Option<Arc<ClientCert>>,
}

/// The JSON body of a refusal: `{"error": {...}}`, its keys in the order
/// they always had (alphabetical).
#[derive(serde::Serialize)]
struct RejectBody<'a> {
    error: RejectError<'a>,
}

#[derive(serde::Serialize)]
struct RejectError<'a> {
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    message: &'a str,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<u64>,
}

/// The one place a [`Reject`] becomes a response (but for gRPC calls,
/// [`grpc_reject_response`]): the status from [`Reject::status`] and a
/// JSON body `{"error":{"code","field"?,"message","request_id","rule"?}}`
/// ([`RejectBody`]).
fn reject_response(reject: &Reject, request_id: &str) -> Response<EdgeBody> {
    let status = reject.status();
    if let Reject::Preflight { headers } = reject {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = status;
        *r.headers_mut() = headers.clone();
        return r;
    }
    if let Reject::Redirect { location, .. } = reject {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = status;
        r.headers_mut().insert(LOCATION, location.clone());
        return r;
    }
    let message = match reject {
        Reject::SchemaViolation { message, .. } | Reject::BadJson { message } => message.as_str(),
        _ => status.canonical_reason().unwrap_or(""),
    };
    let body = RejectBody {
        error: RejectError {
            code: reject.reason(),
            field: match reject {
                Reject::SchemaViolation { field, .. } => Some(field.as_str()),
                _ => None,
            },
            message,
            request_id,
            rule: match reject {
                Reject::Waf { rule: Some(id), .. } => Some(*id),
                _ => None,
            },
        },
    };
    // Serializing plain strings and numbers cannot fail; were it to, the
    // status alone still says what happened.
    let mut text = serde_json::to_vec(&body).unwrap_or_default();
    text.push(b'\n');
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = reject.retry_after_secs() {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    // After a request the edge cannot read safely (or that looks built to
    // confuse parsers), the connection is not reused, as nginx does.
    if let Reject::ConflictingFraming
    | Reject::UnsupportedTransferEncoding
    | Reject::BadHost
    | Reject::BadPath(_) = reject
    {
        r.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Reject::WafRedirect { location, .. } = reject {
        if let Ok(v) = HeaderValue::from_str(location) {
            r.headers_mut().insert(LOCATION, v);
        }
    }
    if let Reject::MethodNotAllowed { allow } = reject {
        r.headers_mut().insert(http::header::ALLOW, allow.clone());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_text(r: Response<EdgeBody>) -> String {
        let bytes = r.into_body().collect().await.map(|b| b.to_bytes());
        String::from_utf8(bytes.unwrap_or_default().to_vec()).unwrap_or_default()
    }

    #[test]
    fn the_log_is_told_only_when_every_request_waits_for_its_record() {
        // Nothing in hand: nothing to hurry.
        assert!(!only_audit_waits(0, 0));
        // One request still at its upstream: its record is yet to come.
        assert!(!only_audit_waits(3, 2));
        assert!(only_audit_waits(3, 3));
        // Counts held while a request is handled and dropped after.
        let c = AtomicUsize::new(0);
        {
            let _a = Held::count(&c);
            let _b = Held::count(&c);
            assert_eq!(c.load(Ordering::SeqCst), 2);
        }
        assert_eq!(c.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refusal_names_its_reason_rule_field_and_request_id() {
        let r = reject_response(
            &Reject::Waf {
                status: 403,
                rule: Some(942100),
            },
            "r-1",
        );
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            body_text(r).await,
            "{\"error\":{\"code\":\"waf\",\"message\":\"Forbidden\",\"request_id\":\"r-1\",\"rule\":942100}}\n"
        );
        let r = reject_response(
            &Reject::SchemaViolation {
                field: "/qty".into(),
                message: "\"x\" is not of type integer".into(),
            },
            "r\"2",
        );
        let text = body_text(r).await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(v["error"]["field"], "/qty");
        assert_eq!(v["error"]["message"], "\"x\" is not of type integer");
        assert_eq!(v["error"]["request_id"], "r\"2");
        assert!(v["error"].get("rule").is_none());
    }

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let h = |v: &'static str| {
            let mut m = http::HeaderMap::new();
            m.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(v));
            m
        };
        for (v, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC; charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            assert_eq!(is_grpc(&h(v)), want, "{v}");
        }
        assert!(!is_grpc(&http::HeaderMap::new()));
        assert_eq!(grpc_status(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(grpc_status(StatusCode::FORBIDDEN), 7);
        assert_eq!(grpc_status(StatusCode::TOO_MANY_REQUESTS), 8);
        assert_eq!(grpc_status(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(grpc_status(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(grpc_status(StatusCode::METHOD_NOT_ALLOWED), 12);
        assert_eq!(grpc_status(StatusCode::IM_A_TEAPOT), 2);
    }

    #[test]
    fn host_validation() {
        assert_eq!(
            parse_host("Example.COM:8443").as_deref(),
            Some("example.com")
        );
        assert_eq!(parse_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(parse_host("a b"), None);
        assert_eq!(parse_host("evil.com/x"), None);
        assert_eq!(parse_host("x:99999"), None);
        assert_eq!(parse_host(""), None);
        assert_eq!(parse_host(":80"), None);
        assert_eq!(parse_host("a:b:80"), None);
        assert_eq!(parse_host("a.example:"), None);
        assert_eq!(
            parse_host("[2001:DB8::A]:443").as_deref(),
            Some("[2001:db8::a]")
        );
        assert_eq!(parse_host("[2001:db8::a%eth0]"), None);
        assert_eq!(parse_host(&"a".repeat(253)).map(|h| h.len()), Some(253));
        assert_eq!(parse_host(&"a".repeat(254)), None);
        assert_eq!(parse_host("caf\u{e9}.example"), None);
    }

    #[test]
    fn parse_host_refuses_text_after_an_ipv6_literal() {
        // Found by the proxy_headers fuzz target: the text after `]` was
        // dropped when it did not start with `:`.
        assert_eq!(parse_host("[::1]kpxle.com"), None);
        assert_eq!(parse_host("[::1]x"), None);
        assert_eq!(parse_host("[::1]:"), None);
        assert_eq!(parse_host("[::1]"), Some("[::1]".into()));
        assert_eq!(parse_host("[::1]:8443"), Some("[::1]".into()));
    }

    #[test]
    fn xff_trusted_only_from_proxies() {
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.2.3.4, 10.0.0.9"),
        );
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let (c, xff) = client_addr(peer, &h, &proxies);
        assert_eq!(c, "1.2.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(xff, "1.2.3.4, 10.0.0.9, 10.0.0.1");
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        let (c, xff) = client_addr(stranger, &h, &proxies);
        assert_eq!(c, stranger);
        assert_eq!(xff, "8.8.8.8");
    }

    #[test]
    fn xff_entries_with_ports_or_brackets_name_the_client() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        for (entry, want) in [
            ("203.0.113.9:4711", "203.0.113.9"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("10.0.0.7:80, 203.0.113.9:4711", "203.0.113.9"),
        ] {
            let mut h = http::HeaderMap::new();
            h.insert("x-forwarded-for", HeaderValue::from_str(entry).unwrap());
            let (c, _) = client_addr(proxy, &h, &proxies);
            assert_eq!(c, want.parse::<IpAddr>().unwrap(), "{entry}");
        }
        // What cannot be read still stops the walk.
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("unknown"));
        assert_eq!(client_addr(proxy, &h, &proxies).0, proxy);
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; IPv4
        // deny lists and trusted proxies must still match them.
        let h = http::HeaderMap::new();
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        let (c, xff) = client_addr(mapped, &h, &[]);
        assert_eq!(c, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(xff, "203.0.113.7");
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("::ffff:198.51.100.4"),
        );
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let (c, _) = client_addr(proxy, &h, &proxies);
        assert_eq!(c, "198.51.100.4".parse::<IpAddr>().unwrap());
    }
}
