//! Starting the public edge inside `rampart up`: its listeners and
//! certificates from `[edge]`, the WAF from the rule files it names, the
//! identity plane as its authenticator and the audit log as its access log.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_audit::{Audit, EventRef, Outcome, Tier};
use rampart_config::{ClientAuthMode, Config, RouteAuth};
use rampart_core::SharedClock;
use rampart_edge::{
    AccessRecord, AuditSink, AuthOutcome, AuthRequest, Authenticator, BreakerSettings, CertConfig,
    CertSource, ClientAuth, ClientCert, DurableRecord, Edge, EdgeConfig, HealthCheck, Principal,
};
use rampart_identity::Identity;
use rampart_store::Keyring;

use crate::api::Metrics;
use crate::errors::CliError;
use crate::tls;

/// Routes with `auth = "api_key"` or `"session"` are checked by the identity
/// plane: `Authorization: Bearer <access token or API key>` (or `X-Api-Key`).
/// On `client_cert` routes the certificate (verified by the handshake) names
/// the principal; the identity plane gives it the roles of the user or
/// service of that name, refuses it if that principal is disabled, and
/// leaves it without roles if no principal has that name. A principal the
/// identity plane knows passes only in its own environments: an API key
/// is limited to one, a user to its own, so the environment wall holds at
/// the edge too (the route carries its service's environment).
struct IdentityAuth {
    identity: Arc<Identity>,
}

/// Whether `p` may act in the environment of `route`'s service.
fn admits(route: &rampart_config::Route, p: &rampart_identity::Principal) -> bool {
    p.environments.contains(&route.environment)
}

impl Authenticator for IdentityAuth {
    fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome {
        let headers = &req.head.headers;
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
        let source = rampart_edge::text::ip_text(req.client);
        let principal = match req.route.auth {
            RouteAuth::Session => bearer.and_then(|t| self.identity.verify_access(t).ok()),
            RouteAuth::ApiKey => bearer
                .or(api_key)
                .and_then(|k| self.identity.check_api_key(k, Some(&source)).ok())
                .map(|(p, _)| p),
            RouteAuth::ClientCert | RouteAuth::None => None,
        }
        .filter(|p| admits(req.route, p));
        match principal {
            Some(p) => AuthOutcome::Authenticated(Principal {
                id: p.id,
                roles: p.roles.iter().map(|r| r.to_string()).collect(),
            }),
            None => AuthOutcome::Unauthenticated,
        }
    }

    fn authenticate_certificate(&self, cert: &ClientCert, req: &AuthRequest<'_>) -> AuthOutcome {
        match self.identity.certificate_principal(&cert.principal) {
            Ok(Some(p)) if !admits(req.route, &p) => AuthOutcome::Unauthenticated,
            Ok(Some(p)) => AuthOutcome::Authenticated(Principal {
                id: p.id,
                roles: p.roles.iter().map(|r| r.to_string()).collect(),
            }),
            Ok(None) => AuthOutcome::Authenticated(Principal {
                id: cert.principal.clone(),
                roles: Vec::new(),
            }),
            Err(_) => AuthOutcome::Unauthenticated,
        }
    }
}

/// Every edge request goes to the audit log's api-access tier, and denials
/// also to the security tier, as a derived copy; the edge answers only
/// once the api-access record is durable (the copy follows within the
/// log's copy delay, and opening the log after a crash writes any copy
/// missing): if the log refuses a record, the client gets a 503 instead
/// (fail closed).
struct EdgeAudit {
    audit: Arc<Audit>,
    node: String,
    metrics: Arc<Metrics>,
}

thread_local! {
    /// The text of this thread's edge audit events (one a request), kept
    /// between requests so that building one allocates nothing.
    static EVENT_TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The most text of an edge event kept between requests.
const MAX_KEPT_TEXT: usize = 16 * 1024;

/// Most details an edge event has.
const EDGE_DETAILS: usize = 14;

/// Appends what `f` writes to `text` and returns where it is.
fn span(text: &mut String, f: impl FnOnce(&mut String)) -> std::ops::Range<usize> {
    let start = text.len();
    f(text);
    start..text.len()
}

/// Puts `name` = `value`, when there is a value, at `details[*n]`.
fn add_detail<'a>(
    details: &mut [(&'a str, &'a str)],
    n: &mut usize,
    name: &'static str,
    value: Option<&'a str>,
) {
    if let (Some(v), Some(slot)) = (value, details.get_mut(*n)) {
        *slot = (name, v);
        *n += 1;
    }
}

/// `n` in decimal.
fn push_int(text: &mut String, n: impl itoa::Integer) {
    text.push_str(itoa::Buffer::new().format(n));
}

/// Calls `f` with the audit event of `rec` (tier api-access) seen by
/// `node`, lent: its text is written into this thread's buffer, not into
/// strings of its own.
fn with_edge_event<R>(node: &str, rec: &AccessRecord, f: impl FnOnce(&EventRef<'_>) -> R) -> R {
    let outcome = match rec.status {
        401 | 403 | 405 | 429 => Outcome::Denied,
        s if s >= 500 => Outcome::Error,
        _ => Outcome::Allowed,
    };
    EVENT_TEXT.with_borrow_mut(|text| {
        text.clear();
        let action = span(text, |t| {
            t.push_str("edge.");
            t.extend(rec.method.chars().map(|c| c.to_ascii_lowercase()));
        });
        let resource = span(text, |t| {
            t.push_str(&rec.host);
            t.push_str(&rec.path);
        });
        let reason = span(text, |t| {
            t.push_str("status ");
            push_int(t, rec.status);
            if let Some(r) = rec.reason {
                t.push_str(": ");
                t.push_str(r);
            }
        });
        let source = span(text, |t| rampart_edge::text::push_ip(t, rec.client));
        let status = span(text, |t| push_int(t, rec.status));
        // Milliseconds with three decimals, without float formatting.
        let latency = span(text, |t| {
            let micros = (rec.latency.as_nanos() + 500) / 1000;
            push_int(t, micros / 1000);
            t.push('.');
            let frac = (micros % 1000) as u16;
            for digit in [frac / 100, (frac / 10) % 10, frac % 10] {
                t.push(char::from(b'0' + digit as u8));
            }
        });
        let bytes_in = span(text, |t| push_int(t, rec.bytes_in));
        let bytes_out = rec.bytes_out.map(|n| span(text, |t| push_int(t, n)));
        let waf = rec.waf.as_ref().map(|w| {
            let rules = span(text, |t| {
                for (i, id) in w.rule_ids.iter().enumerate() {
                    if i > 0 {
                        t.push(',');
                    }
                    push_int(t, *id);
                }
            });
            let messages = span(text, |t| {
                for (i, m) in w.messages.iter().enumerate() {
                    if i > 0 {
                        t.push_str(" | ");
                    }
                    t.push_str(m);
                }
            });
            let score = span(text, |t| push_int(t, w.anomaly_score));
            let outbound = (w.outbound_anomaly_score != 0)
                .then(|| span(text, |t| push_int(t, w.outbound_anomaly_score)));
            let disrupted = w.disrupted_by.map(|id| span(text, |t| push_int(t, id)));
            let mode = match w.mode {
                rampart_config::WafMode::Block => "block",
                rampart_config::WafMode::Detect => "detect",
                rampart_config::WafMode::Off => "off",
            };
            (mode, rules, messages, score, outbound, disrupted)
        });
        let t: &str = text;
        let at = |r: std::ops::Range<usize>| t.get(r).unwrap_or("");
        let mut details = [("", ""); EDGE_DETAILS];
        let mut n = 0;
        let mut add = |name, value| add_detail(&mut details, &mut n, name, value);
        add("status", Some(at(status)));
        add("latency_ms", Some(at(latency)));
        add("bytes_in", Some(at(bytes_in)));
        add("bytes_out", bytes_out.map(at));
        add("route", rec.route.as_deref());
        add("upstream", rec.upstream.as_deref());
        add("client_cert_serial", rec.client_cert_serial.as_deref());
        add("field", rec.detail.as_deref());
        if let Some((mode, rules, messages, score, outbound, disrupted)) = waf {
            add("waf_mode", Some(mode));
            add("waf_rules", Some(at(rules)));
            add("waf_messages", Some(at(messages)));
            add("waf_anomaly_score", Some(at(score)));
            add("waf_outbound_anomaly_score", outbound.map(at));
            add("waf_disrupted_by", disrupted.map(at));
        }
        let ev = EventRef {
            tier: Tier::ApiAccess,
            node,
            environment: "",
            principal: rec.principal.as_deref().unwrap_or("anonymous"),
            auth: "edge",
            action: at(action),
            resource: at(resource),
            outcome,
            reason: Some(at(reason)),
            request_id: Some(&rec.request_id),
            source: Some(at(source)),
            details: details.get(..n).unwrap_or_default(),
        };
        let out = f(&ev);
        // a very long host or path is not kept for the thread's life
        if text.capacity() > MAX_KEPT_TEXT {
            *text = String::new();
        }
        out
    })
}

impl AuditSink for EdgeAudit {
    fn record(&self, rec: &AccessRecord) {
        let fut = self.record_durable(rec);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::error!(error = %e, "audit log refused an edge access record");
            }
        });
    }

    fn callers_idle(&self) {
        self.audit.callers_idle();
    }

    fn record_durable(&self, rec: &AccessRecord) -> DurableRecord {
        self.metrics.observe_edge(
            rec.route.as_deref().unwrap_or("unmatched"),
            rec.status,
            rec.latency.as_secs_f64(),
        );
        let kept = with_edge_event(&self.node, rec, |ev| {
            if ev.outcome == Outcome::Denied {
                // a denial also goes to the security tier, as a derived copy
                self.audit.record_ref_async_with_copy(ev, Tier::Security)
            } else {
                self.audit.record_ref_async(ev)
            }
        });
        Box::pin(async move { kept.await.map(drop).map_err(|e| e.to_string()) })
    }
}

/// Reloads the edge from the file it was started with: what SIGHUP and
/// `POST /v1/edge/reload` do.
#[derive(Clone)]
pub struct EdgeReload {
    path: std::path::PathBuf,
    handle: rampart_edge::EdgeHandle,
    /// The `[edge]` section the edge started with.
    started: Option<rampart_config::Edge>,
    /// What the node runs, told of each reload (for the drift report).
    running: Option<std::sync::Arc<crate::drift::Running>>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Routes now served.
    pub routes: usize,
    /// `[edge]` settings the file changes that only a restart applies.
    pub needs_restart: Vec<&'static str>,
}

impl EdgeReload {
    /// A reloader of `handle` from `path`; `started` is the `[edge]`
    /// section the edge was started with.
    pub fn new(
        path: std::path::PathBuf,
        handle: rampart_edge::EdgeHandle,
        started: Option<rampart_config::Edge>,
    ) -> Self {
        EdgeReload {
            path,
            handle,
            started,
            running: None,
        }
    }

    /// Tells `running` of every successful reload.
    pub fn reporting_to(mut self, running: std::sync::Arc<crate::drift::Running>) -> Self {
        self.running = Some(running);
        self
    }

    /// The file it reloads.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Loads and validates the file and swaps the edge's routing (routes,
    /// services and their instances, revoked client serials) to it
    /// atomically. On error nothing changes and the message says why
    /// (every config error with file:line:column). Other `[edge]` settings
    /// keep the values the edge started with; the ones the file changes
    /// are named in [`Reloaded::needs_restart`].
    pub fn reload(&self) -> Result<Reloaded, String> {
        let cfg = Config::load(&self.path).map_err(|e| e.to_string())?;
        self.handle.reload(&cfg).map_err(|e| e.to_string())?;
        if let Some(r) = &self.running {
            r.reloaded(&cfg);
        }
        Ok(Reloaded {
            routes: cfg.routes.len(),
            needs_restart: start_only_changes(self.started.as_ref(), cfg.edge.as_ref()),
        })
    }
}

/// The `[edge]` settings that differ between `old` and `new` and that the
/// edge reads only at start.
pub(crate) fn start_only_changes(
    old: Option<&rampart_config::Edge>,
    new: Option<&rampart_config::Edge>,
) -> Vec<&'static str> {
    let (old, new) = match (old, new) {
        (Some(o), Some(n)) => (o, n),
        (None, None) => return Vec::new(),
        _ => return vec!["edge"],
    };
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &'static str| {
        if differs {
            changed.push(name);
        }
    };
    check(old.http_listen != new.http_listen, "edge.http_listen");
    check(old.https_listen != new.https_listen, "edge.https_listen");
    check(
        old.trusted_proxies != new.trusted_proxies,
        "edge.trusted_proxies",
    );
    check(
        old.proxy_protocol_from != new.proxy_protocol_from,
        "edge.proxy_protocol_from",
    );
    check(old.allow_cidrs != new.allow_cidrs, "edge.allow_cidrs");
    check(old.deny_cidrs != new.deny_cidrs, "edge.deny_cidrs");
    check(old.waf_rules != new.waf_rules, "edge.waf_rules");
    check(
        old.max_body_bytes != new.max_body_bytes,
        "edge.max_body_bytes",
    );
    check(
        old.max_buffered_body_bytes != new.max_buffered_body_bytes,
        "edge.max_buffered_body_bytes",
    );
    check(old.certificates != new.certificates, "edge.certificates");
    check(old.client_ca != new.client_ca, "edge.client_ca");
    check(old.client_auth != new.client_auth, "edge.client_auth");
    check(old.rate_limits != new.rate_limits, "edge.rate_limits");
    check(old.balance != new.balance, "edge.balance");
    check(
        old.connect_timeout_ms != new.connect_timeout_ms,
        "edge.connect_timeout_ms",
    );
    check(
        old.upstream_timeout_seconds != new.upstream_timeout_seconds,
        "edge.upstream_timeout_seconds",
    );
    check(
        old.header_read_timeout_seconds != new.header_read_timeout_seconds,
        "edge.header_read_timeout_seconds",
    );
    check(
        old.body_read_timeout_seconds != new.body_read_timeout_seconds,
        "edge.body_read_timeout_seconds",
    );
    check(
        old.send_timeout_seconds != new.send_timeout_seconds,
        "edge.send_timeout_seconds",
    );
    check(
        old.keepalive_timeout_seconds != new.keepalive_timeout_seconds,
        "edge.keepalive_timeout_seconds",
    );
    check(old.drain_seconds != new.drain_seconds, "edge.drain_seconds");
    check(
        old.worker_threads != new.worker_threads,
        "edge.worker_threads",
    );
    check(
        old.max_connections != new.max_connections,
        "edge.max_connections",
    );
    check(
        old.max_connections_per_client != new.max_connections_per_client,
        "edge.max_connections_per_client",
    );
    check(old.breaker != new.breaker, "edge.breaker");
    check(old.health_check != new.health_check, "edge.health_check");
    check(old.gzip != new.gzip, "edge.gzip");
    check(
        old.hsts_max_age_seconds != new.hsts_max_age_seconds,
        "edge.hsts_max_age_seconds",
    );
    check(old.hsts_preload != new.hsts_preload, "edge.hsts_preload");
    check(old.tls13_only != new.tls13_only, "edge.tls_min_version");
    check(
        old.tls_session_cache != new.tls_session_cache,
        "edge.tls_session_cache",
    );
    check(
        old.tls_session_tickets != new.tls_session_tickets,
        "edge.tls_session_tickets",
    );
    check(
        old.security_headers != new.security_headers,
        "edge.security_headers",
    );
    changed
}

/// A certificate this close to expiry gets a warning at start.
const CERT_WARN_DAYS: i64 = 14;

/// How long an upstream assertion is valid.
const ASSERTION_TTL_SECS: u64 = 60;

/// The key the edge signs upstream assertions with, kept in the keyring
/// (wrapped by the root key) so every node of a deployment shares it.
pub async fn assertion_signer(
    keyring: &Keyring,
) -> Result<rampart_edge::assertion::AssertionSigner, CliError> {
    let seed = keyring
        .secret("edge/assertion", || {
            Ok(rampart_crypto::SecretBytes::new(
                rampart_crypto::random_array::<32>()?.to_vec(),
            ))
        })
        .await?;
    let seed: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
        seed.expose()
            .try_into()
            .map_err(|_| CliError::Runtime("stored assertion key has the wrong length".into()))?,
    );
    Ok(rampart_edge::assertion::AssertionSigner::new(
        &seed,
        ASSERTION_TTL_SECS,
    ))
}

/// The public key services verify upstream assertions with, base64.
pub async fn assertion_public_key(keyring: &Keyring) -> Result<String, CliError> {
    use base64::Engine;
    let signer = assertion_signer(keyring).await?;
    Ok(base64::engine::general_purpose::STANDARD.encode(signer.verifying_key().as_bytes()))
}

/// `edge.waf_rules` in order, each `*` in a file name (`rules/*.conf`)
/// replaced by the files it matches, in name order. A pattern that matches
/// nothing is an error, as is a `*` in a directory part: a typo must not
/// leave the edge without its rules.
fn expand_rule_files(entries: &[String]) -> Result<Vec<PathBuf>, CliError> {
    let mut out = Vec::new();
    for entry in entries {
        let path = Path::new(entry);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir = path.parent().unwrap_or(Path::new(""));
        if dir.to_string_lossy().contains('*') {
            return Err(CliError::Input(format!(
                "edge.waf_rules: {entry}: '*' is allowed in the file name only"
            )));
        }
        if !name.contains('*') {
            out.push(path.to_path_buf());
            continue;
        }
        let listing = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let read = std::fs::read_dir(listing).map_err(|err| {
            CliError::Input(format!(
                "edge.waf_rules: {entry}: cannot read {}: {err}",
                listing.display()
            ))
        })?;
        let mut found: Vec<PathBuf> = read
            .filter_map(|d| d.ok())
            .filter(|d| {
                d.file_name()
                    .to_str()
                    .is_some_and(|n| wildcard_match(name, n))
            })
            .map(|d| dir.join(d.file_name()))
            .filter(|p| p.is_file())
            .collect();
        if found.is_empty() {
            return Err(CliError::Input(format!(
                "edge.waf_rules: {entry}: matches no file"
            )));
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// The WAF of `edge.waf_rules`: each file (or the built-in baseline) loaded
/// in order, a bad rule an error with its file and line.
pub fn load_waf(entries: &[String]) -> Result<rampart_waf::Waf, CliError> {
    let mut b = rampart_waf::WafBuilder::new();
    for entry in entries {
        if entry == rampart_config::BUILTIN_BASELINE {
            b.load_str(entry, rampart_waf::BASELINE_RULES)
                .map_err(|err| CliError::Input(format!("WAF rules: {err}")))?;
            continue;
        }
        for f in expand_rule_files(std::slice::from_ref(entry))? {
            b.load_file(&f)
                .map_err(|err| CliError::Input(format!("WAF rules: {err}")))?;
        }
    }
    b.build()
        .map_err(|err| CliError::Input(format!("WAF rules: {err}")))
}

/// Whether `name` matches `pattern`, where `*` stands for any run of
/// characters; as in shell globs, a leading `*` does not match a leading dot.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let last = parts.pop();
    for p in parts {
        match rest.find(p) {
            Some(i) => rest = rest.get(i + p.len()..).unwrap_or(""),
            None => return false,
        }
    }
    match last {
        Some(l) => rest.ends_with(l),
        // No `*` at all: the whole name must match.
        None => rest.is_empty(),
    }
}

/// Binds the edge if the configuration has an `[edge]` section.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    config: &Config,
    metrics: Arc<Metrics>,
    keyring: &Keyring,
    identity: Arc<Identity>,
    audit: Arc<Audit>,
    clock: SharedClock,
    http_override: Option<SocketAddr>,
    https_override: Option<SocketAddr>,
) -> Result<Option<Edge>, CliError> {
    let Some(e) = &config.edge else {
        return Ok(None);
    };
    let mut ec = EdgeConfig::new(config.clone());
    ec.http_listen = http_override.or(e.http_listen);
    ec.https_listen = Some(https_override.unwrap_or(e.https_listen));
    ec.trusted_proxies = e.trusted_proxies.clone();
    ec.proxy_protocol_from = e.proxy_protocol_from.clone();
    ec.allow_cidrs = e.allow_cidrs.clone();
    ec.deny_cidrs = e.deny_cidrs.clone();
    ec.max_body_bytes = e.max_body_bytes;
    ec.max_buffered_body_bytes = e.max_buffered_body_bytes;
    ec.rate_limits = e.rate_limits.into();
    if let Some(r) = &config.redis {
        let url = crate::node::url_from_env(&r.url_env, "the Redis URL", "[redis] url_env")?;
        let shared = rampart_edge::SharedCounters::connect(
            rampart_edge::SharedLimitsOptions {
                url,
                sync_interval: Duration::from_millis(u64::from(r.sync_interval_ms)),
                key_prefix: r.key_prefix.clone(),
                tls_ca: r.tls_ca.clone(),
            },
            clock.clone(),
        )
        .await
        .map_err(|e| CliError::Input(format!("shared rate limits: {e}")))?;
        println!(
            "edge rate limits: shared through Redis (synced every {} ms)",
            r.sync_interval_ms
        );
        metrics.set_shared_limits(shared.clone());
        ec.counter_store = shared;
    }
    ec.balance = e.balance.into();
    ec.connect_timeout = Duration::from_millis(u64::from(e.connect_timeout_ms));
    ec.upstream_timeout = Duration::from_secs(u64::from(e.upstream_timeout_seconds));
    ec.header_read_timeout = Duration::from_secs(u64::from(e.header_read_timeout_seconds));
    ec.body_read_timeout = Duration::from_secs(u64::from(e.body_read_timeout_seconds));
    ec.send_timeout = Duration::from_secs(u64::from(e.send_timeout_seconds));
    ec.keepalive_timeout = Duration::from_secs(u64::from(e.keepalive_timeout_seconds));
    ec.drain_deadline = Duration::from_secs(u64::from(e.drain_seconds));
    ec.worker_threads = e.worker_threads.map(|n| n as usize);
    ec.max_connections = e.max_connections as usize;
    ec.max_connections_per_client = e.max_connections_per_client;
    ec.breaker = BreakerSettings {
        failures_to_open: e.breaker.failures_to_open,
        open_for: Duration::from_secs(u64::from(e.breaker.open_seconds)),
    };
    ec.health_check = e.health_check.as_ref().map(|h| HealthCheck {
        path: h.path.clone(),
        interval: Duration::from_millis(u64::from(h.interval_ms)),
        timeout: Duration::from_millis(u64::from(h.timeout_ms)),
        rise: h.rise,
        fall: h.fall,
        deploy_window: Duration::from_millis(u64::from(h.deploy_window_ms)),
    });
    ec.gzip = e.gzip.clone();
    ec.hsts = format!(
        "max-age={}; includeSubDomains{}",
        e.hsts_max_age_seconds,
        if e.hsts_preload { "; preload" } else { "" }
    );
    ec.security_headers = e.security_headers.clone();
    ec.tls = rampart_edge::TlsSettings {
        tls13_only: e.tls13_only,
        session_cache: usize::try_from(e.tls_session_cache).unwrap_or(usize::MAX),
        session_tickets: e.tls_session_tickets,
    };
    ec.clock = clock.clone();
    if e.certificates.is_empty() {
        let mut hosts: Vec<String> = config
            .routes
            .iter()
            .map(|r| r.host.clone())
            .filter(|h| h.parse::<IpAddr>().is_err())
            .collect();
        hosts.dedup();
        let (cert, key) = tls::edge_dev_certificate(keyring, &hosts, clock.as_ref()).await?;
        println!("edge: no [[edge.certificates]]: using a development certificate for {hosts:?}");
        ec.certificates.push(CertConfig {
            names: hosts,
            source: CertSource::Pem {
                cert,
                key: key.to_string(),
            },
        });
    } else {
        for c in &e.certificates {
            ec.certificates.push(CertConfig {
                names: c.names.clone(),
                source: CertSource::Files {
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                },
            });
        }
    }
    if e.client_auth != ClientAuthMode::Off {
        let mut ca_pem = Vec::new();
        for path in &e.client_ca {
            let text = std::fs::read_to_string(path).map_err(|err| {
                CliError::Input(format!(
                    "edge.client_ca: cannot read {}: {err}",
                    path.display()
                ))
            })?;
            ca_pem.push(text);
        }
        ec.client_auth = Some(ClientAuth {
            ca_pem,
            required: e.client_auth == ClientAuthMode::Required,
        });
    }
    if !e.waf_rules.is_empty() {
        let waf = load_waf(&e.waf_rules)?;
        println!("edge: WAF loaded {} rules", waf.rule_count());
        for w in waf.warnings() {
            println!("edge: WAF warning: {w}");
        }
        for w in rampart_edge::phases::Firewall::check_exclusions(&waf, &config.routes) {
            println!("edge: WAF warning: {w}");
        }
        ec.waf = Some(Arc::new(waf));
    }
    ec.assertion = Some(Arc::new(assertion_signer(keyring).await?));
    ec.authenticator = Arc::new(IdentityAuth { identity });
    ec.audit = Arc::new(EdgeAudit {
        audit,
        node: config.node.name.clone(),
        metrics,
    });
    let edge = Edge::bind(ec)
        .await
        .map_err(|err| CliError::Input(format!("edge: {err}")))?;
    let now = i64::try_from(clock.unix_secs()).unwrap_or(i64::MAX);
    for (name, at) in edge.handle().certificate_expiry() {
        let days = (at - now).div_euclid(86_400);
        if at <= now {
            println!("edge: WARNING: the certificate for {name} has expired");
        } else if days < CERT_WARN_DAYS {
            println!("edge: WARNING: the certificate for {name} expires in {days} days");
        }
    }
    Ok(Some(edge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_shell_globs_in_one_name() {
        for (p, n, ok) in [
            ("*.conf", "REQUEST-901.conf", true),
            ("*.conf", "a.conf.bak", false),
            ("*.conf", ".hidden.conf", false),
            ("REQUEST-9*-*.conf", "REQUEST-942-SQLI.conf", true),
            ("REQUEST-9*-*.conf", "RESPONSE-950.conf", false),
            ("a*a", "a", false),
            ("a*a", "aa", true),
            ("*", "x", true),
            ("crs-setup.conf", "crs-setup.conf", true),
        ] {
            assert_eq!(wildcard_match(p, n), ok, "{p} {n}");
        }
    }

    #[test]
    fn rule_files_expand_in_name_order_and_empty_patterns_fail() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        for f in ["b.conf", "a.conf", "c.data", "10.conf"] {
            std::fs::write(rules.join(f), "").unwrap();
        }
        std::fs::create_dir(rules.join("d.conf")).unwrap();
        let setup = dir.path().join("setup.conf").display().to_string();
        let glob = rules.join("*.conf").display().to_string();
        let got = expand_rule_files(&[setup.clone(), glob]).unwrap();
        let want: Vec<PathBuf> = [dir.path().join("setup.conf")]
            .into_iter()
            .chain(["10.conf", "a.conf", "b.conf"].map(|f| rules.join(f)))
            .collect();
        assert_eq!(got, want);

        let none = rules.join("*.rules").display().to_string();
        let e = expand_rule_files(&[none]).unwrap_err().to_string();
        assert!(e.contains("matches no file"), "{e}");
        let in_dir = dir.path().join("*/x.conf").display().to_string();
        let e = expand_rule_files(&[in_dir]).unwrap_err().to_string();
        assert!(e.contains("file name only"), "{e}");
    }

    // The audit event the edge records per request.

    fn record() -> AccessRecord {
        AccessRecord {
            request_id: "req-1".into(),
            client: "2001:db8::7".parse().unwrap(),
            method: "PoST".into(),
            host: "shop.example.com".into(),
            path: "/cart".into(),
            route: Some("shop.example.com/".into()),
            principal: None,
            status: 403,
            reason: Some("waf"),
            upstream: None,
            bytes_in: 120,
            bytes_out: Some(87),
            latency: Duration::from_micros(1_234_567),
            waf: Some(rampart_edge::WafFindings {
                mode: rampart_config::WafMode::Block,
                rule_ids: vec![942100, 949110],
                messages: vec![
                    "SQL Injection Attack Detected via libinjection".into(),
                    "Inbound Anomaly Score Exceeded".into(),
                ],
                anomaly_score: 5,
                outbound_anomaly_score: 0,
                disrupted_by: Some(949110),
            }),
            client_cert_serial: None,
            detail: None,
        }
    }

    #[test]
    fn an_edge_event_holds_what_the_request_did() {
        let (head, details) = with_edge_event("node-a", &record(), |e| {
            let head = (
                e.tier,
                e.node.to_owned(),
                e.principal.to_owned(),
                e.auth.to_owned(),
                e.action.to_owned(),
                e.resource.to_owned(),
                e.outcome,
                e.reason.map(str::to_owned),
                e.request_id.map(str::to_owned),
                e.source.map(str::to_owned),
            );
            let details: Vec<(String, String)> = e
                .details
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            (head, details)
        });
        assert_eq!(
            head,
            (
                Tier::ApiAccess,
                "node-a".into(),
                "anonymous".into(),
                "edge".into(),
                "edge.post".into(),
                "shop.example.com/cart".into(),
                Outcome::Denied,
                Some("status 403: waf".into()),
                Some("req-1".into()),
                Some("2001:db8::7".into()),
            )
        );
        let want = [
            ("status", "403"),
            ("latency_ms", "1234.567"),
            ("bytes_in", "120"),
            ("bytes_out", "87"),
            ("route", "shop.example.com/"),
            ("waf_mode", "block"),
            ("waf_rules", "942100,949110"),
            (
                "waf_messages",
                "SQL Injection Attack Detected via libinjection | Inbound Anomaly Score Exceeded",
            ),
            ("waf_anomaly_score", "5"),
            ("waf_disrupted_by", "949110"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(details, want);
    }

    #[test]
    fn an_event_with_every_detail_keeps_them_all() {
        // EDGE_DETAILS must hold every detail the edge writes
        let mut rec = record();
        rec.upstream = Some("127.0.0.1:3000".into());
        rec.client_cert_serial = Some("0a1b".into());
        rec.detail = Some("/items/0".into());
        if let Some(w) = rec.waf.as_mut() {
            w.outbound_anomaly_score = 4;
        }
        let names = with_edge_event("n", &rec, |e| {
            e.details
                .iter()
                .map(|(k, _)| (*k).to_owned())
                .collect::<Vec<_>>()
        });
        assert_eq!(names.len(), EDGE_DETAILS, "{names:?}");
        assert!(names.iter().any(|n| n == "waf_outbound_anomaly_score"));
    }

    #[test]
    fn a_long_path_is_recorded_whole_and_its_buffer_not_kept() {
        let mut rec = record();
        rec.path = format!("/{}", "a".repeat(40_000));
        let resource_len = with_edge_event("n", &rec, |e| e.resource.len());
        assert_eq!(resource_len, "shop.example.com".len() + 40_001);
        assert!(EVENT_TEXT.with_borrow(|t| t.capacity()) <= MAX_KEPT_TEXT);
    }

    #[test]
    fn a_second_event_on_the_thread_keeps_nothing_of_the_first() {
        let mut rec = record();
        with_edge_event("n", &rec, |_| ());
        rec.waf = None;
        rec.status = 200;
        rec.reason = None;
        rec.bytes_out = None;
        rec.latency = Duration::from_micros(999);
        rec.principal = Some("svc-billing".into());
        let (reason, principal, outcome, details) = with_edge_event("n", &rec, |e| {
            (
                e.reason.map(str::to_owned),
                e.principal.to_owned(),
                e.outcome,
                e.details
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>(),
            )
        });
        assert_eq!(reason.as_deref(), Some("status 200"));
        assert_eq!(principal, "svc-billing");
        assert_eq!(outcome, Outcome::Allowed);
        assert_eq!(
            details,
            [
                "status=200",
                "latency_ms=0.999",
                "bytes_in=120",
                "route=shop.example.com/"
            ]
        );
    }
}
