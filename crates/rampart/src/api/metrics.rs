//! Prometheus metrics for the control API.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EdgeLabels {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    service: String,
    upstream: String,
}

/// One route's edge metrics: handles on the entries of the families that
/// `/metrics` encodes (a clone shares its counter).
struct EdgeRoute {
    latency: Histogram,
    by_status: Vec<(u16, Counter)>,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    edge_requests: Family<EdgeLabels, Counter>,
    edge_latency: Family<RouteLabels, Histogram>,
    /// The two families' metrics for each route seen, found by the route's
    /// name alone: a request costs no label sets (two `String`s and two
    /// look-ups of the families' maps).
    edge_routes: std::sync::RwLock<std::collections::HashMap<Box<str>, EdgeRoute>>,
    upstream_up: Family<UpstreamLabels, Gauge>,
    upstream_breaker_open: Family<UpstreamLabels, Gauge>,
    edge_closed: Family<ReasonLabels, Counter>,
    edge_cert_expiry: Family<NameLabels, Gauge>,
    edge_deployment: Family<DeployLabels, Gauge>,
    edge_tunnels_open: Gauge<i64>,
    edge_tunnels: Counter<u64>,
    upstream_in_flight: Family<UpstreamLabels, Gauge>,
    upstream_weight: Family<UpstreamLabels, Gauge>,
    upstream_backup: Family<UpstreamLabels, Gauge>,
    audit_syncs: Family<TierLabels, Counter>,
    audit_records: Family<TierLabels, Counter>,
    audit_sync_seconds: Family<TierLabels, Counter<f64, AtomicU64>>,
    audit_torn_tails: Family<TierLabels, Gauge>,
    audit_checkpoint_problems: Family<TierLabels, Gauge>,
    shared_limit_syncs: Family<ResultLabels, Counter>,
    edge: Mutex<Option<rampart_edge::EdgeHandle>>,
    audit: Mutex<Option<Arc<rampart_audit::Audit>>>,
    shared_limits: Mutex<Option<Arc<rampart_edge::SharedCounters>>>,
    login_throttle_calls: Family<ResultLabels, Counter>,
    login_throttle: Mutex<Option<Arc<rampart_identity::RedisThrottle>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeployLabels {
    service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl Metrics {
    pub fn new(started_at: u64) -> Self {
        let mut registry = Registry::with_prefix("rampart");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Control API requests by method, route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Control API request latency",
            latency.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "Build of this rampart binary", build);
        let start = Gauge::<i64>::default();
        start.set(i64::try_from(started_at).unwrap_or(0));
        registry.register(
            "start_time_seconds",
            "When this process started, seconds since the Unix epoch",
            start,
        );
        let edge_requests = Family::<EdgeLabels, Counter>::default();
        registry.register(
            "edge_requests",
            "Edge requests by route and status",
            edge_requests.clone(),
        );
        let edge_latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "edge_request_duration_seconds",
            "Edge latency until response headers",
            edge_latency.clone(),
        );
        let upstream_up = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "edge_upstream_up",
            "1 when the upstream takes traffic (breaker not open, health checks passing)",
            upstream_up.clone(),
        );
        let upstream_breaker_open = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "edge_upstream_breaker_open",
            "1 when the upstream's circuit breaker is open",
            upstream_breaker_open.clone(),
        );
        let upstream_in_flight = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "edge_upstream_in_flight",
            "Requests in flight to the upstream",
            upstream_in_flight.clone(),
        );
        let upstream_weight = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "edge_upstream_weight",
            "The upstream's configured weight (its share of the service's requests)",
            upstream_weight.clone(),
        );
        let upstream_backup = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "edge_upstream_backup",
            "1 when the upstream is a backup, used only while no other instance is available",
            upstream_backup.clone(),
        );
        let edge_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "edge_connections_closed",
            "Client connections the edge closed on a timeout, by reason (idle: no request for the first-request or keep-alive timeout; slow_head; not_reading: no response bytes taken for the send timeout)",
            edge_closed.clone(),
        );
        let edge_cert_expiry = Family::<NameLabels, Gauge>::default();
        registry.register(
            "edge_certificate_expiry_timestamp_seconds",
            "When each HTTPS certificate the edge serves expires (by its first name), seconds since the Unix epoch",
            edge_cert_expiry.clone(),
        );
        let edge_deployment = Family::<DeployLabels, Gauge>::default();
        registry.register(
            "edge_deployment",
            "1 for the state of each service's latest deployment (a reload that changed its instances): verifying, promoted or rolled_back; 0 for the others",
            edge_deployment.clone(),
        );
        let edge_tunnels_open = Gauge::<i64>::default();
        registry.register(
            "edge_websocket_tunnels_open",
            "WebSocket tunnels open now",
            edge_tunnels_open.clone(),
        );
        let edge_tunnels = Counter::<u64>::default();
        registry.register(
            "edge_websocket_tunnels",
            "WebSocket tunnels opened",
            edge_tunnels.clone(),
        );
        let audit_syncs = Family::<TierLabels, Counter>::default();
        registry.register(
            "audit_syncs",
            "Audit log fdatasyncs (group commits) by tier",
            audit_syncs.clone(),
        );
        let audit_records = Family::<TierLabels, Counter>::default();
        registry.register(
            "audit_records",
            "Audit records made durable by tier",
            audit_records.clone(),
        );
        let audit_sync_seconds = Family::<TierLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "audit_sync_seconds",
            "Time spent in audit log fdatasyncs by tier",
            audit_sync_seconds.clone(),
        );
        let audit_torn_tails = Family::<TierLabels, Gauge>::default();
        registry.register(
            "audit_open_torn_tails",
            "Torn tails (records cut short by a crash) cut from the tier's log when this process opened it",
            audit_torn_tails.clone(),
        );
        let audit_checkpoint_problems = Family::<TierLabels, Gauge>::default();
        registry.register(
            "audit_open_checkpoint_problems",
            "Checkpoints of the tier that did not verify when this process opened the log (run `rampart audit verify`)",
            audit_checkpoint_problems.clone(),
        );
        let shared_limit_syncs = Family::<ResultLabels, Counter>::default();
        registry.register(
            "edge_rate_limit_syncs",
            "Syncs of the edge's shared rate-limit buckets with Redis, by result (ok, failed)",
            shared_limit_syncs.clone(),
        );
        let login_throttle_calls = Family::<ResultLabels, Counter>::default();
        registry.register(
            "login_throttle_redis_calls",
            "Calls to Redis for the login throttle's shared counts, by result (ok, failed: this node's own counts decided)",
            login_throttle_calls.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            login_throttle_calls,
            login_throttle: Mutex::new(None),
            shared_limit_syncs,
            shared_limits: Mutex::new(None),
            requests,
            latency,
            edge_requests,
            edge_latency,
            edge_routes: Default::default(),
            upstream_up,
            upstream_breaker_open,
            upstream_in_flight,
            upstream_weight,
            upstream_backup,
            edge_closed,
            edge_cert_expiry,
            edge_deployment,
            edge_tunnels_open,
            edge_tunnels,
            audit_syncs,
            audit_records,
            audit_sync_seconds,
            audit_torn_tails,
            audit_checkpoint_problems,
            edge: Mutex::new(None),
            audit: Mutex::new(None),
        }
    }

    /// Lets `/metrics` report the edge's upstreams.
    /// The edge's services that do not serve what the config names, and
    /// its recent deployments (see `rampart_edge::deploy`), for the status
    /// report; empty without an edge.
    pub fn edge_deployments(&self) -> (Vec<String>, Vec<rampart_edge::deploy::DeployStatus>) {
        match self.edge.lock() {
            Ok(edge) => edge
                .as_ref()
                .map(|e| (e.pending_deployments(), e.deployments()))
                .unwrap_or_default(),
            Err(_) => Default::default(),
        }
    }

    pub fn set_edge(&self, handle: rampart_edge::EdgeHandle) {
        if let Ok(mut e) = self.edge.lock() {
            *e = Some(handle);
        }
    }

    /// Lets `/metrics` report the audit log's group commits, and what
    /// opening it found: per tier, torn tails cut and checkpoints that did
    /// not verify (0 for a healthy tier, so alerts can match on `> 0`).
    pub fn set_audit(&self, audit: Arc<rampart_audit::Audit>, report: &rampart_audit::OpenReport) {
        for tier in rampart_audit::Tier::ALL {
            let l = TierLabels {
                tier: tier.as_str(),
            };
            let torn = report
                .torn_tails()
                .filter(|t| t.finding.tier == tier)
                .count();
            let bad = report
                .checkpoint_problems
                .iter()
                .filter(|p| p.tier == tier)
                .count();
            self.audit_torn_tails
                .get_or_create(&l)
                .set(i64::try_from(torn).unwrap_or(i64::MAX));
            self.audit_checkpoint_problems
                .get_or_create(&l)
                .set(i64::try_from(bad).unwrap_or(i64::MAX));
        }
        if let Ok(mut a) = self.audit.lock() {
            *a = Some(audit);
        }
    }

    /// Lets `/metrics` report the syncs of shared rate-limit buckets.
    pub fn set_shared_limits(&self, counters: Arc<rampart_edge::SharedCounters>) {
        if let Ok(mut c) = self.shared_limits.lock() {
            *c = Some(counters);
        }
    }

    /// Lets `/metrics` report the login throttle's calls to Redis.
    pub fn set_login_throttle(&self, throttle: Arc<rampart_identity::RedisThrottle>) {
        if let Ok(mut t) = self.login_throttle.lock() {
            *t = Some(throttle);
        }
    }

    fn refresh_login_throttle(&self) {
        let Ok(t) = self.login_throttle.lock() else {
            return;
        };
        let Some(t) = t.as_ref() else { return };
        let (ok, failed) = t.call_counts();
        for (result, total) in [("ok", ok), ("failed", failed)] {
            let counter = self
                .login_throttle_calls
                .get_or_create(&ResultLabels { result });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    fn refresh_shared_limits(&self) {
        let Ok(c) = self.shared_limits.lock() else {
            return;
        };
        let Some(c) = c.as_ref() else { return };
        let (ok, failed) = c.sync_counts();
        for (result, total) in [("ok", ok), ("failed", failed)] {
            let counter = self
                .shared_limit_syncs
                .get_or_create(&ResultLabels { result });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// Brings the audit counters up to the log's own totals.
    fn refresh_audit(&self) {
        let Ok(audit) = self.audit.lock() else { return };
        let Some(audit) = audit.as_ref() else { return };
        for (tier, st) in audit.commit_stats() {
            let l = TierLabels {
                tier: tier.as_str(),
            };
            let syncs = self.audit_syncs.get_or_create(&l);
            syncs.inc_by(st.syncs.saturating_sub(syncs.get()));
            let records = self.audit_records.get_or_create(&l);
            records.inc_by(st.records.saturating_sub(records.get()));
            let secs = self.audit_sync_seconds.get_or_create(&l);
            let total = st.sync_nanos as f64 / 1e9;
            if total > secs.get() {
                secs.inc_by(total - secs.get());
            }
        }
    }

    /// Counts one edge request (`route` is "unmatched" when none matched).
    pub fn observe_edge(&self, route: &str, status: u16, seconds: f64) {
        {
            let routes = self
                .edge_routes
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(r) = routes.get(route) {
                if let Some((_, c)) = r.by_status.iter().find(|(s, _)| *s == status) {
                    c.inc();
                    r.latency.observe(seconds);
                    return;
                }
            }
        }
        // The first request of a route, or of a status on it.
        let mut routes = self
            .edge_routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = routes.entry(route.into()).or_insert_with(|| EdgeRoute {
            latency: self
                .edge_latency
                .get_or_create(&RouteLabels {
                    route: route.to_string(),
                })
                .clone(),
            by_status: Vec::new(),
        });
        let counter = match r.by_status.iter().find(|(s, _)| *s == status) {
            Some((_, c)) => c.clone(),
            None => {
                let c = self
                    .edge_requests
                    .get_or_create(&EdgeLabels {
                        route: route.to_string(),
                        status,
                    })
                    .clone();
                r.by_status.push((status, c.clone()));
                c
            }
        };
        counter.inc();
        r.latency.observe(seconds);
    }

    fn refresh_upstreams(&self) {
        let Ok(edge) = self.edge.lock() else { return };
        let Some(edge) = edge.as_ref() else { return };
        let counts = edge.conn_counts();
        use rampart_edge::idle::Closed;
        for (reason, why) in [
            ("idle", Closed::Idle),
            ("slow_head", Closed::SlowHead),
            ("not_reading", Closed::NotReading),
            ("over_limit", Closed::OverLimit),
            ("client_over_limit", Closed::ClientOverLimit),
            ("proxy_header", Closed::ProxyHeader),
        ] {
            let c = self.edge_closed.get_or_create(&ReasonLabels { reason });
            c.inc_by(counts.closed_for(why).saturating_sub(c.get()));
        }
        for (name, at) in edge.certificate_expiry() {
            self.edge_cert_expiry
                .get_or_create(&NameLabels { name })
                .set(at);
        }
        // The latest deployment of each service (those that ended come in
        // the order they ended, those being verified last).
        let mut latest = std::collections::BTreeMap::new();
        for d in edge.deployments() {
            latest.insert(d.service.clone(), d.state);
        }
        for (service, state) in latest {
            use rampart_edge::deploy::DeployState;
            for s in [
                DeployState::Verifying,
                DeployState::Promoted,
                DeployState::RolledBack,
            ] {
                self.edge_deployment
                    .get_or_create(&DeployLabels {
                        service: service.clone(),
                        state: s.as_str(),
                    })
                    .set(i64::from(s == state));
            }
        }
        let (open, total) = counts.tunnels();
        self.edge_tunnels_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        self.edge_tunnels
            .inc_by(total.saturating_sub(self.edge_tunnels.get()));
        for u in edge.upstreams() {
            let l = UpstreamLabels {
                service: u.service.clone(),
                upstream: u.addr.clone(),
            };
            let open = u.state == rampart_edge::BreakerState::Open;
            self.upstream_up
                .get_or_create(&l)
                .set(i64::from(u.healthy && !open));
            self.upstream_breaker_open
                .get_or_create(&l)
                .set(i64::from(open));
            self.upstream_in_flight
                .get_or_create(&l)
                .set(i64::try_from(u.in_flight).unwrap_or(i64::MAX));
            self.upstream_weight
                .get_or_create(&l)
                .set(i64::from(u.weight));
            self.upstream_backup
                .get_or_create(&l)
                .set(i64::from(u.backup));
        }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Under the registry lock, so that two scrapes at once cannot both
        // add the same audit delta.
        if let Ok(reg) = self.registry.lock() {
            self.refresh_upstreams();
            self.refresh_audit();
            self.refresh_shared_limits();
            self.refresh_login_throttle();
            let _ = encode(&mut out, &reg);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Edge requests are counted per route and status, and their latency
    /// per route, as the families encode them, whether the route and
    /// status were seen before or not.
    #[test]
    fn edge_requests_counted_per_route_and_status() {
        let m = Metrics::new(0);
        m.observe_edge("api.test/", 200, 0.001);
        m.observe_edge("api.test/", 200, 0.002);
        m.observe_edge("api.test/", 404, 0.003);
        m.observe_edge("unmatched", 404, 0.004);
        let text = m.render();
        for line in [
            r#"rampart_edge_requests_total{route="api.test/",status="200"} 2"#,
            r#"rampart_edge_requests_total{route="api.test/",status="404"} 1"#,
            r#"rampart_edge_requests_total{route="unmatched",status="404"} 1"#,
            r#"rampart_edge_request_duration_seconds_count{route="api.test/"} 3"#,
            r#"rampart_edge_request_duration_seconds_count{route="unmatched"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
