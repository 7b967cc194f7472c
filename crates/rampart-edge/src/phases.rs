//! The request path as an ordered list of [`Phase`]s. Each phase may refuse
//! the request with a [`Reject`]; the first refusal ends the list and
//! becomes the response (status mapped in [`Reject::status`]). Balancing,
//! proxying, response headers and audit follow in [`crate::Edge`]'s handler.
//!
//! ```text
//! ip rules → rate limit → waf → authn → principal rate limit → authz → body limit
//!   → json schema → (balance → proxy [retry on another upstream] → response checks
//!   → response headers → audit)
//! ```
//! A phase that also judges the response (the WAF's phases 3 to 5) keeps a
//! [`ResponseCheck`] from its request half ([`Phase::check_keeping`]); the
//! handler runs it on the upstream's answer before any of it is sent.
//! A phase that needs the request body says so ([`Phase::needs_body`]);
//! the runner then reads it once, bounded by the body limit, and keeps it
//! for later phases and for retries.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock, RwLock};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use ipnet::IpNet;
use rampart_config::{Route, RouteAuth, WafExclusion, WafMode, WafRuleSelector};
use rampart_core::SharedClock;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Reject;
use crate::hooks::{authorised, AuthOutcome, AuthRequest, Authenticator, Principal, WafFindings};
use crate::mtls::ClientCert;
use crate::ratelimit::{looks_like_auth, CounterStore, Rate, RateLimits};
use crate::router::RouteEntry;

/// What the phases see and fill in.
#[derive(Debug)]
pub struct RequestCtx {
    /// The request head as received.
    pub head: http::request::Parts,
    /// The client address (after trusted `X-Forwarded-For`).
    pub client: IpAddr,
    /// The validated host, lowercase, without port.
    pub host: String,
    /// The matched route.
    pub route: Arc<RouteEntry>,
    /// Set by authentication.
    pub principal: Option<Principal>,
    /// Sent upstream as `X-Request-Id`.
    pub request_id: String,
    /// Sent upstream as `X-Forwarded-For`.
    pub forwarded_for: String,
    /// The verified client certificate, on mutual TLS connections.
    pub client_cert: Option<Arc<ClientCert>>,
    /// The route's JSON Schema for request bodies, if it has one.
    pub schema: Option<Arc<jsonschema::Validator>>,
    /// What the WAF found (set by the firewall phase when a rule matched).
    pub waf: Option<WafFindings>,
    /// The normalised path the route was matched on, with the query as
    /// received, when the path differs from the one received; sent
    /// upstream in its place (see [`crate::path`]).
    pub forward_path: Option<http::uri::PathAndQuery>,
    pending: Option<Incoming>,
    body: Option<Bytes>,
    /// The share of the edge's body budget the read body holds.
    body_permit: Option<OwnedSemaphorePermit>,
}

impl RequestCtx {
    /// A context for a request whose body has not been read.
    pub fn new(
        head: http::request::Parts,
        body: Incoming,
        client: IpAddr,
        host: String,
        route: Arc<RouteEntry>,
        request_id: String,
    ) -> RequestCtx {
        RequestCtx {
            head,
            client,
            host,
            route,
            principal: None,
            request_id,
            forwarded_for: String::new(),
            client_cert: None,
            schema: None,
            waf: None,
            forward_path: None,
            pending: Some(body),
            body: None,
            body_permit: None,
        }
    }

    /// The body, once a phase that needs it has run.
    pub fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }

    /// The client's body, unread, to be streamed to the upstream within
    /// `limit` bytes and `frame_timeout` between frames; `None` once a
    /// phase has read it.
    pub fn take_stream(
        &mut self,
        limit: usize,
        frame_timeout: std::time::Duration,
    ) -> Option<crate::reqbody::Streamed> {
        if self.body.is_some() {
            return None;
        }
        let incoming = self.pending.take()?;
        Some(crate::reqbody::Streamed::new(
            incoming,
            limit,
            frame_timeout,
        ))
    }

    /// Reads the body (at most `limit` bytes) unless already read. Each
    /// chunk takes its size from `budget`, the bytes all requests may hold
    /// at once, until the request ends; when the budget has run out the
    /// request is refused (503) rather than held.
    pub async fn buffer_body(
        &mut self,
        limit: usize,
        budget: &Arc<Semaphore>,
    ) -> Result<&Bytes, Reject> {
        if self.body.is_none() {
            let bytes = match self.pending.take() {
                Some(mut incoming) => {
                    let mut chunks: Vec<Bytes> = Vec::new();
                    let mut total = 0usize;
                    while let Some(frame) = incoming.frame().await {
                        let frame = frame.map_err(|_| Reject::BadBody)?;
                        let Ok(data) = frame.into_data() else {
                            continue; // trailers
                        };
                        if data.is_empty() {
                            continue;
                        }
                        total = total.saturating_add(data.len());
                        if total > limit {
                            return Err(Reject::BodyTooLarge);
                        }
                        let n = u32::try_from(data.len()).map_err(|_| Reject::BodyTooLarge)?;
                        let permit = budget
                            .clone()
                            .try_acquire_many_owned(n)
                            .map_err(|_| Reject::BodyBuffersFull)?;
                        match &mut self.body_permit {
                            Some(held) => held.merge(permit),
                            None => self.body_permit = Some(permit),
                        }
                        chunks.push(data);
                    }
                    if chunks.len() <= 1 {
                        chunks.pop().unwrap_or_default()
                    } else {
                        let mut all = BytesMut::with_capacity(total);
                        for c in &chunks {
                            all.extend_from_slice(c);
                        }
                        all.freeze()
                    }
                }
                None => Bytes::new(),
            };
            self.body = Some(bytes);
        }
        Ok(self.body.get_or_insert_with(Bytes::new))
    }
}

/// One step of the request path.
pub trait Phase: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Whether the body must be read before [`Phase::check`].
    fn needs_body(&self) -> bool {
        false
    }
    /// Passes the request on, or refuses it.
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject>;
    /// Like [`Phase::check`], for a phase that also wants to see what the
    /// upstream answers: it may hand back a [`ResponseCheck`], which the
    /// handler runs on the response before it is sent. The default keeps
    /// nothing.
    fn check_keeping<'a>(
        &'a self,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Box<dyn ResponseCheck + 'a>>, Reject> {
        self.check(ctx).map(|()| None)
    }
}

/// The response half of a phase (the WAF's phases 3 to 5), kept from the
/// request phase that made it and run once the upstream's response head
/// has arrived.
pub trait ResponseCheck: Send {
    /// How many bytes of this response's body must be read before
    /// [`ResponseCheck::check_response`]; `None` streams the body unread.
    fn body_limit(&self, head: &http::response::Parts) -> Option<usize>;
    /// Passes the response on, or refuses it (the client then gets the
    /// refusal instead). `body` holds what was read: empty when no check
    /// asked for it, at most the largest limit plus one byte otherwise.
    fn check_response(
        self: Box<Self>,
        ctx: &mut RequestCtx,
        head: &http::response::Parts,
        body: &[u8],
    ) -> Result<(), Reject>;
}

/// The response checks the request phases kept, in phase order.
pub type ResponseChecks<'a> = Vec<Box<dyn ResponseCheck + 'a>>;

/// Runs `phases` in order; stops at the first refusal. The body, when a
/// phase needs it, must arrive within `body_timeout`; on a route that
/// streams request bodies it is not read here (no phase that reads it
/// applies there: the config refuses that).
///
/// Returns the response checks the phases kept ([`Phase::check_keeping`]).
pub async fn run<'a>(
    phases: &'a [Box<dyn Phase>],
    ctx: &mut RequestCtx,
    max_body: usize,
    body_timeout: std::time::Duration,
    body_budget: &Arc<Semaphore>,
) -> Result<ResponseChecks<'a>, Reject> {
    let mut kept = Vec::new();
    for p in phases {
        if p.needs_body() && !ctx.route.stream_request_body {
            tokio::time::timeout(body_timeout, ctx.buffer_body(max_body, body_budget))
                .await
                .map_err(|_| Reject::BodyTimeout)??;
        }
        match p.check_keeping(ctx) {
            Ok(Some(check)) => kept.push(check),
            Ok(None) => {}
            Err(r) => {
                tracing::debug!(phase = p.name(), reason = r.reason(), "request refused");
                return Err(r);
            }
        }
    }
    Ok(kept)
}

/// Global and per-route allow/deny lists. Deny wins; a non-empty allow
/// list admits only its networks.
#[derive(Debug)]
pub struct IpRules {
    /// Allowed everywhere (empty: all).
    pub allow: Vec<IpNet>,
    /// Denied everywhere.
    pub deny: Vec<IpNet>,
}

fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&ip))
}

impl Phase for IpRules {
    fn name(&self) -> &'static str {
        "ip_rules"
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        let ip = ctx.client;
        let r = &ctx.route;
        if contains(&self.deny, ip) || contains(&r.deny_cidrs, ip) {
            return Err(Reject::IpDenied);
        }
        if (!self.allow.is_empty() && !contains(&self.allow, ip))
            || (!r.allow_cidrs.is_empty() && !contains(&r.allow_cidrs, ip))
        {
            return Err(Reject::IpDenied);
        }
        Ok(())
    }
}

/// A route with `redirect` answers every request with its redirect: after
/// the IP rules and rate limits, before anything that needs a service.
/// The request's path (normalised) and query are appended to the target, as
/// nginx's `return 301 https://example.com$request_uri`.
#[derive(Debug)]
pub struct Redirect;

impl Phase for Redirect {
    fn name(&self) -> &'static str {
        "redirect"
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        let Some(r) = &ctx.route.redirect else {
            return Ok(());
        };
        // The normalised path, as routing saw it.
        let rest = ctx
            .forward_path
            .as_ref()
            .or(ctx.head.uri.path_and_query())
            .map_or("/", |pq| pq.as_str());
        let mut location = String::with_capacity(r.to.len() + rest.len());
        location.push_str(&r.to);
        location.push_str(rest);
        // The target was checked at load and hyper only takes visible
        // bytes in a path, so this does not fail; if it did, the bare
        // target would do.
        let location = http::HeaderValue::from_str(&location)
            .or_else(|_| http::HeaderValue::from_str(&r.to))
            .map_err(|_| Reject::NoRoute)?;
        Err(Reject::Redirect {
            status: r.status,
            location,
        })
    }
}

/// A CORS preflight on a route with `cors`, answered by the edge (see
/// [`crate::cors`]), before the route's methods, the firewall and
/// authentication.
#[derive(Debug)]
pub struct CorsPreflight;

impl Phase for CorsPreflight {
    fn name(&self) -> &'static str {
        "cors_preflight"
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        match ctx
            .route
            .cors
            .as_ref()
            .and_then(|c| c.preflight(&ctx.head.method, &ctx.head.headers))
        {
            Some(headers) => Err(Reject::Preflight { headers }),
            None => Ok(()),
        }
    }
}

/// The route's `methods`: any other gets 405 with `Allow`. After the IP
/// rules and rate limits, so that a refused client learns nothing of the
/// route, and before the firewall and authentication, which a request
/// the route never takes need not pass.
#[derive(Debug)]
pub struct Methods;

impl Phase for Methods {
    fn name(&self) -> &'static str {
        "methods"
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        ctx.route
            .allows(&ctx.head.method)
            .map_err(|allow| Reject::MethodNotAllowed { allow })
    }
}

/// Token buckets per client address (stricter on auth-like routes) and
/// per route.
#[derive(Debug)]
pub struct RateLimit {
    /// The limits.
    pub limits: RateLimits,
    /// The counters.
    pub store: Arc<dyn CounterStore>,
    /// The clock.
    pub clock: SharedClock,
}

impl Phase for RateLimit {
    fn name(&self) -> &'static str {
        "rate_limit"
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        let now = self.clock.unix_nanos();
        let route = ctx.route.label();
        // Keys: `c|IP` (default per-client bucket), `ca|IP|ROUTE` (stricter
        // on authentication routes), `cr|IP|ROUTE` (a route's own per-client
        // bucket, which replaces the defaults), and `r|ROUTE` per route. An
        // IPv6 client is its /64 (see [`push_client_key`]).
        let mut key = String::with_capacity(48 + route.len());
        let rate = if let Some(r) = ctx.route.rate_limit {
            key.push_str("cr|");
            Rate::new(r.burst, r.per_second)
        } else if looks_like_auth(&ctx.route.path_prefix) {
            key.push_str("ca|");
            self.limits.per_client_auth
        } else {
            key.push_str("c|");
            self.limits.per_client
        };
        push_client_key(&mut key, ctx.client);
        if !key.starts_with("c|") {
            key.push('|');
            key.push_str(route);
        }
        self.store
            .take(&key, rate, now)
            .and_then(|()| {
                key.clear();
                key.push_str("r|");
                key.push_str(route);
                self.store.take(&key, self.limits.per_route, now)
            })
            .map_err(|retry_after| Reject::RateLimited { retry_after })
    }
}

/// Appends the client as per-client buckets know it: an IPv4 address as
/// it is, an IPv6 one as its /64 (`2001:db8:1:2::/64`). One subscriber,
/// one host even, is given a whole /64 and may send from any address in
/// it (privacy addresses rotate on their own), so a bucket per IPv6
/// address would give such a client 2^64 buckets: no limit at all, on
/// login routes too.
pub fn push_client_key(out: &mut String, ip: IpAddr) {
    crate::text::push_ip(out, crate::slots::client_of(ip));
    if ip.is_ipv6() {
        out.push_str("/64");
    }
}

/// The firewall: hands the request (head and body) to the WAF, with the
/// route's exclusions (`waf_exclusions` in `rampart.toml`).
pub struct Firewall {
    /// The engine.
    pub waf: Arc<rampart_waf::Waf>,
}

/// Compiled exclusions, per engine (by address) and per distinct exclusion
/// list.
///
/// Why a memo here rather than compiling per request or at load: compiling
/// a list parses its targets, compiles its tag and key regexes and resolves
/// each tag over every rule (for CRS, hundreds of rules), far more than a
/// request should pay; but the phase list is built once at bind while
/// routes (and so exclusions) change on reload, and a route carries only
/// the validated config form, since `rampart-config` does not know the
/// engine. So the first request on a route compiles its list once and later
/// ones share it after one uncontended read lock; routes without
/// exclusions never look. A reload with new lists adds entries; the memo is
/// emptied when it grows past [`EXCLUSION_MEMO_MAX`] lists. An engine
/// dropped and another built at the same address cannot be misled: the
/// tag tables are stamped with the engine they were resolved for and are
/// ignored by any other (tags are then matched rule by rule).
type ExclusionMemo = HashMap<usize, HashMap<Vec<WafExclusion>, Arc<rampart_waf::Exclusions>>>;

static EXCLUSION_MEMO: OnceLock<RwLock<ExclusionMemo>> = OnceLock::new();

/// Most exclusion lists kept in [`EXCLUSION_MEMO`].
const EXCLUSION_MEMO_MAX: usize = 1024;

impl Firewall {
    /// The engine's form of a route's exclusions, tag tables resolved
    /// against `waf`. Fails only on what configuration validation already
    /// refuses (an unknown collection, a bad regex).
    pub fn compile_exclusions(
        waf: &rampart_waf::Waf,
        list: &[WafExclusion],
    ) -> Result<rampart_waf::Exclusions, rampart_waf::Error> {
        let mut ex = rampart_waf::Exclusions::new();
        for x in list {
            let target = x.target.as_ref().map(ToString::to_string);
            match (&x.rules, target) {
                (WafRuleSelector::Id(id), None) => {
                    ex.remove_rule(*id);
                }
                (WafRuleSelector::Id(id), Some(t)) => {
                    ex.remove_target_by_id(id, &t)?;
                }
                (WafRuleSelector::Tag(tag), None) => {
                    ex.remove_tag(tag)?;
                }
                (WafRuleSelector::Tag(tag), Some(t)) => {
                    ex.remove_target_by_tag(tag, &t)?;
                }
            }
        }
        ex.resolve(waf);
        Ok(ex)
    }

    /// What is worth a warning at start (or reload) about the routes'
    /// exclusions against the loaded rules: rule ids the rules do not hold
    /// (not an error, since rule sets differ) and lists the engine refuses.
    /// Each message names the route.
    pub fn check_exclusions(waf: &rampart_waf::Waf, routes: &[Route]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            if r.waf.exclusions.is_empty() {
                continue;
            }
            let name = format!("routes[{i}] ({}{})", r.host, r.path_prefix);
            for x in &r.waf.exclusions {
                if let WafRuleSelector::Id(id) = x.rules {
                    if !waf.has_rule(id) {
                        out.push(format!(
                            "{name}: waf_exclusions names rule {id}, which the loaded rules do not hold"
                        ));
                    }
                }
            }
            if let Err(e) = Firewall::compile_exclusions(waf, &r.waf.exclusions) {
                out.push(format!(
                    "{name}: waf_exclusions refused by the engine ({e}); the route runs without them"
                ));
            }
        }
        out
    }

    /// The route's compiled exclusions from [`EXCLUSION_MEMO`]; `None` when
    /// the route has none or the engine refuses them (then the route runs
    /// every rule: failing towards blocking).
    fn exclusions(&self, list: &[WafExclusion]) -> Option<Arc<rampart_waf::Exclusions>> {
        if list.is_empty() {
            return None;
        }
        let memo = EXCLUSION_MEMO.get_or_init(RwLock::default);
        let engine = Arc::as_ptr(&self.waf) as usize;
        if let Ok(m) = memo.read() {
            if let Some(ex) = m.get(&engine).and_then(|by_list| by_list.get(list)) {
                return Some(ex.clone());
            }
        }
        let ex = match Firewall::compile_exclusions(&self.waf, list) {
            Ok(ex) => Arc::new(ex),
            Err(e) => {
                tracing::error!(error = %e, "waf_exclusions refused by the engine; running every rule");
                Arc::new(rampart_waf::Exclusions::new())
            }
        };
        if let Ok(mut m) = memo.write() {
            if m.values().map(HashMap::len).sum::<usize>() >= EXCLUSION_MEMO_MAX {
                m.clear();
            }
            m.entry(engine)
                .or_default()
                .insert(list.to_vec(), ex.clone());
        }
        (!ex.is_empty()).then_some(ex)
    }
}

/// The WAF's findings for the access record, when any rule matched.
fn findings(mode: WafMode, v: &rampart_waf::Verdict) -> Option<WafFindings> {
    (!v.matched_rules.is_empty() || v.disrupted_by.is_some()).then(|| WafFindings {
        mode,
        rule_ids: v.matched_rules.iter().map(|m| m.id).collect(),
        messages: v
            .matched_rules
            .iter()
            .filter(|m| !m.msg.is_empty())
            .take(8)
            .map(|m| m.msg.chars().take(200).collect())
            .collect(),
        anomaly_score: v.anomaly_score,
        outbound_anomaly_score: v.outbound_anomaly_score,
        disrupted_by: v.disrupted_by,
    })
}

/// The refusal a disruptive WAF action stands for.
fn enforce(action: &rampart_waf::Action, rule: Option<u64>) -> Result<(), Reject> {
    match action {
        rampart_waf::Action::Pass => Ok(()),
        rampart_waf::Action::Deny { status } => Err(Reject::Waf {
            status: *status,
            rule,
        }),
        // Dropping needs the connection; answer 403 instead.
        rampart_waf::Action::Drop => Err(Reject::Waf { status: 403, rule }),
        rampart_waf::Action::Redirect { status, location } => Err(Reject::WafRedirect {
            status: *status,
            location: location.clone(),
        }),
    }
}

impl Phase for Firewall {
    fn name(&self) -> &'static str {
        "waf"
    }
    fn needs_body(&self) -> bool {
        true
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        self.check_keeping(ctx).map(|_| ())
    }
    fn check_keeping<'a>(
        &'a self,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Box<dyn ResponseCheck + 'a>>, Reject> {
        let mode = ctx.route.waf.mode;
        if mode == WafMode::Off {
            return Ok(None);
        }
        // The engine reads the request where it lies: no header is copied.
        let h = &ctx.head;
        let mut headers: Vec<rampart_waf::Field<'_>> = Vec::with_capacity(h.headers.len() + 1);
        // HTTP/2 carries the host in :authority; CRS rules read Host.
        if !h.headers.contains_key(http::header::HOST) {
            headers.push((Cow::Borrowed("Host"), Cow::Borrowed(ctx.host.as_bytes())));
        }
        headers.extend(
            h.headers
                .iter()
                .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_bytes()))),
        );
        let req = rampart_waf::Request {
            method: Cow::Borrowed(h.method.as_str()),
            uri: Cow::Borrowed(h.uri.path_and_query().map_or("/", |p| p.as_str())),
            protocol: Cow::Borrowed(version_text(h.version)),
            remote_addr: ctx.client,
            remote_port: 0,
            headers,
            body: Cow::Borrowed(ctx.body().map_or(&[][..], |b| &b[..])),
        };
        let ex = self.exclusions(&ctx.route.waf.exclusions);
        let inspection = self.waf.inspect(&req, ex.as_deref());
        let v = inspection.request_verdict();
        ctx.waf = findings(mode, v);
        if mode == WafMode::Block {
            enforce(&v.action, v.disrupted_by)?;
        }
        // Phases 3 to 5 run on the response only when the request went on
        // and the rules have anything to say about responses.
        Ok(inspection
            .wants_response()
            .then(|| Box::new(WafResponse { inspection, mode }) as Box<dyn ResponseCheck + 'a>))
    }
}

/// The WAF transaction of a request that went upstream, kept for the
/// response phases.
struct WafResponse<'a> {
    inspection: rampart_waf::Inspection<'a>,
    mode: WafMode,
}

/// A header map as the engine reads it, borrowed.
fn header_list(headers: &http::HeaderMap) -> Vec<rampart_waf::Field<'_>> {
    headers
        .iter()
        .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_bytes())))
        .collect()
}

/// The protocol as a request or status line writes it.
fn version_text(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

impl ResponseCheck for WafResponse<'_> {
    fn body_limit(&self, head: &http::response::Parts) -> Option<usize> {
        let ct: Vec<rampart_waf::Field<'_>> = head
            .headers
            .get_all(http::header::CONTENT_TYPE)
            .iter()
            .map(|v| (Cow::Borrowed("content-type"), Cow::Borrowed(v.as_bytes())))
            .collect();
        self.inspection.response_body_limit(&ct)
    }

    fn check_response(
        self: Box<Self>,
        ctx: &mut RequestCtx,
        head: &http::response::Parts,
        body: &[u8],
    ) -> Result<(), Reject> {
        let resp = rampart_waf::Response {
            status: head.status.as_u16(),
            protocol: Cow::Borrowed(version_text(head.version)),
            headers: header_list(&head.headers),
            body: Cow::Borrowed(body),
        };
        let v = self.inspection.finish(&resp);
        ctx.waf = findings(self.mode, &v);
        if self.mode == WafMode::Block {
            enforce(&v.action, v.disrupted_by)?;
        }
        Ok(())
    }
}

/// Authentication: `auth = "none"` gives the anonymous principal; other
/// modes ask the [`Authenticator`].
///
/// A request with two `Authorization` or two `X-Api-Key` headers is
/// refused (401) on a route that authenticates: the authenticator checks
/// the first, the service receives both, and one that reads the last (or
/// decodes a token it trusts the edge to have verified) would act for a
/// principal nobody checked.
pub struct Authn {
    /// The identity plane's hook.
    pub authenticator: Arc<dyn Authenticator>,
}

impl Phase for Authn {
    fn name(&self) -> &'static str {
        "authn"
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        if ctx.route.auth == RouteAuth::None {
            ctx.principal = Some(Principal::anonymous());
            return Ok(());
        }
        // One credential: the authenticator reads the first header, and a
        // second one would reach the service unchecked (see the type doc).
        let repeated = |name: &str| ctx.head.headers.get_all(name).iter().nth(1).is_some();
        if repeated("authorization") || repeated("x-api-key") {
            return Err(Reject::Unauthenticated);
        }
        let req = AuthRequest {
            route: &ctx.route,
            head: &ctx.head,
            client: ctx.client,
        };
        let out = match (ctx.route.auth, &ctx.client_cert) {
            (RouteAuth::ClientCert, Some(cert)) => {
                self.authenticator.authenticate_certificate(cert, &req)
            }
            (RouteAuth::ClientCert, None) => AuthOutcome::Unauthenticated,
            _ => self.authenticator.authenticate(&req),
        };
        match out {
            AuthOutcome::Authenticated(p) => {
                ctx.principal = Some(p);
                Ok(())
            }
            AuthOutcome::Unauthenticated => Err(Reject::Unauthenticated),
        }
    }
}

/// Token bucket per authenticated principal (anonymous callers are
/// already limited per address).
#[derive(Debug)]
pub struct PrincipalRateLimit {
    /// The bucket shape.
    pub rate: crate::ratelimit::Rate,
    /// The counters.
    pub store: Arc<dyn CounterStore>,
    /// The clock.
    pub clock: SharedClock,
}

impl Phase for PrincipalRateLimit {
    fn name(&self) -> &'static str {
        "principal_rate_limit"
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        match &ctx.principal {
            Some(p) if ctx.route.auth != RouteAuth::None => self
                .store
                .take(&format!("p|{}", p.id), self.rate, self.clock.unix_nanos())
                .map_err(|retry_after| Reject::RateLimited { retry_after }),
            _ => Ok(()),
        }
    }
}

/// Authorisation: the route's roles.
#[derive(Debug)]
pub struct Authz;

impl Phase for Authz {
    fn name(&self) -> &'static str {
        "authz"
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        match &ctx.principal {
            Some(p) if authorised(&ctx.route, p) => Ok(()),
            Some(_) => Err(Reject::Forbidden),
            None => Err(Reject::Unauthenticated),
        }
    }
}

/// Body size: refuses a declared `Content-Length` over the limit before
/// reading, and reads the body (bounded) so that it can be retried.
#[derive(Debug)]
pub struct BodyLimit {
    /// Largest body, in bytes.
    pub max: usize,
}

impl Phase for BodyLimit {
    fn name(&self) -> &'static str {
        "body_limit"
    }
    fn needs_body(&self) -> bool {
        true
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        let max = ctx
            .route
            .max_body_bytes
            .map_or(self.max, |m| m.min(self.max));
        match ctx.body() {
            Some(b) if b.len() > max => Err(Reject::BodyTooLarge),
            _ => Ok(()),
        }
    }
}

/// JSON Schema validation of request bodies on routes that name a schema:
/// the body must be declared JSON (`application/json` or `+json`, else
/// 415), parse (else 400 `bad_json`) and satisfy the schema (else 400
/// `schema_violation` naming the field by JSON Pointer).
///
/// An object with the same key twice is `bad_json` too: JSON parsers
/// disagree on which of the two counts (serde_json, and so the schema
/// check, keeps the last; others, such as Go's gjson, the first), so
/// `{"role":"admin","role":"user"}` could pass the schema as `user` and
/// reach the service as `admin`.
#[derive(Debug)]
pub struct JsonSchema;

impl Phase for JsonSchema {
    fn name(&self) -> &'static str {
        "json_schema"
    }
    fn needs_body(&self) -> bool {
        true
    }
    fn check(&self, ctx: &mut RequestCtx) -> Result<(), Reject> {
        let Some(schema) = ctx.schema.clone() else {
            return Ok(());
        };
        let body = ctx.body().cloned().unwrap_or_default();
        // Methods without a body (GET, DELETE…) pass when they send none.
        if body.is_empty() && !ctx.head.headers.contains_key(http::header::CONTENT_TYPE) {
            return Ok(());
        }
        if !is_json(&ctx.head.headers) {
            return Err(Reject::UnsupportedMediaType);
        }
        let value = serde_json::from_slice::<UniqueKeys>(&body)
            .map_err(|e| Reject::BadJson {
                message: match e.classify() {
                    serde_json::error::Category::Data => format!(
                        "duplicate object key at line {} column {}",
                        e.line(),
                        e.column()
                    ),
                    _ => format!("invalid JSON at line {} column {}", e.line(), e.column()),
                },
            })?
            .0;
        let first = schema
            .iter_errors(&value)
            .next()
            .map(|e| Reject::SchemaViolation {
                field: e.instance_path().to_string(),
                message: e.masked().to_string(),
            });
        first.map_or(Ok(()), Err)
    }
}

/// A JSON value parsed as [`serde_json::Value`] is, but refused (a `Data`
/// error) if an object holds a key twice.
struct UniqueKeys(serde_json::Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor).map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if object.insert(key, value).is_some() {
                return Err(serde::de::Error::custom("duplicate object key"));
            }
        }
        Ok(serde_json::Value::Object(object))
    }
}

/// Whether `Content-Type` declares JSON, and only JSON: with two
/// `Content-Type` headers a service may read the body by the other (say, a
/// form), so a body checked as JSON would not be the body it acts on.
fn is_json(headers: &http::HeaderMap) -> bool {
    let mut all = headers.get_all(http::header::CONTENT_TYPE).iter();
    let (Some(only), None) = (all.next(), all.next()) else {
        return false;
    };
    Some(only)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

/// Refuses a declared `Content-Length` over `max` before any body is read.
pub fn declared_too_large(head: &http::request::Parts, max: usize) -> bool {
    head.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_is_told_the_protocol_as_the_request_line_writes_it() {
        // CRS 920430 compares REQUEST_PROTOCOL with `HTTP/1.0 HTTP/1.1
        // HTTP/2 HTTP/2.0`: the text must be http's own
        for v in [
            http::Version::HTTP_09,
            http::Version::HTTP_10,
            http::Version::HTTP_11,
            http::Version::HTTP_2,
            http::Version::HTTP_3,
        ] {
            assert_eq!(version_text(v), format!("{v:?}"));
        }
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64() {
        let key = |ip: &str| {
            let mut k = String::new();
            push_client_key(&mut k, ip.parse().unwrap());
            k
        };
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
            key("2001:db8:1:2::2")
        );
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }
}
