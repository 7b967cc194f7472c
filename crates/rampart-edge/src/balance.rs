//! Upstream pools: choosing an instance (round robin or power of two
//! choices over in-flight requests), passive ejection and the per-upstream
//! circuit breaker.
//!
//! Passive ejection *is* the breaker opening: after `failures_to_open`
//! consecutive connect errors or 5xx the upstream is open (ejected) for
//! `open_for`; then one probe request is let through (half-open) and its
//! outcome closes or reopens the breaker. Time comes from the [`Clock`](rampart_core::Clock).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_core::SharedClock;

/// How a pool picks an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// In turn.
    #[default]
    RoundRobin,
    /// Two at random, the one with fewer requests in flight.
    LeastRequests,
}

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            failures_to_open: 3,
            open_for: Duration::from_secs(10),
        }
    }
}

/// A breaker's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// Ejected; no traffic.
    Open,
    /// One probe allowed.
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until_nanos: u64 },
    HalfOpen { probing: bool },
}

/// One instance of a service.
#[derive(Debug)]
pub struct UpstreamNode {
    /// Its address as configured (`host:port`).
    pub addr: String,
    in_flight: AtomicUsize,
    state: Mutex<State>,
    /// Set by active health checks; passive ejection is the breaker.
    down: AtomicBool,
    checks: Mutex<(u32, u32)>,
}

/// A snapshot of one upstream, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// The service.
    pub service: String,
    /// The instance.
    pub addr: String,
    /// Breaker state.
    pub state: BreakerState,
    /// Requests in flight.
    pub in_flight: usize,
    /// False when active health checks mark it down.
    pub healthy: bool,
}

/// The instances of one service.
#[derive(Debug)]
pub struct Pool {
    /// The service name.
    pub service: String,
    nodes: Vec<UpstreamNode>,
    balance: Balance,
    breaker: BreakerSettings,
    next: AtomicUsize,
    seed: AtomicU64,
    clock: SharedClock,
    /// TLS to the instances, if the service asks for it.
    tls: Option<Arc<crate::upstream::UpstreamTls>>,
    /// Whether the instances are spoken to in HTTP/2.
    http2: bool,
}

/// Held while a request is in flight to a node; settles the breaker.
#[derive(Debug)]
pub struct Lease<'a> {
    pool: &'a Pool,
    index: usize,
    settled: bool,
}

impl Pool {
    /// A pool over `addrs`.
    pub fn new(
        service: &str,
        addrs: Vec<String>,
        balance: Balance,
        breaker: BreakerSettings,
        clock: SharedClock,
    ) -> Pool {
        let nodes = addrs
            .into_iter()
            .map(|addr| UpstreamNode {
                addr,
                in_flight: AtomicUsize::new(0),
                state: Mutex::new(State::Closed { failures: 0 }),
                down: AtomicBool::new(false),
                checks: Mutex::new((0, 0)),
            })
            .collect();
        Pool {
            service: service.to_string(),
            nodes,
            balance,
            breaker,
            next: AtomicUsize::new(0),
            seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15 ^ clock.unix_nanos()),
            clock,
            tls: None,
            http2: false,
        }
    }

    /// The same pool, reaching its instances over `tls`.
    pub fn with_tls(mut self, tls: Option<Arc<crate::upstream::UpstreamTls>>) -> Pool {
        self.tls = tls;
        self
    }

    /// TLS to the instances, if any.
    pub fn tls(&self) -> Option<&crate::upstream::UpstreamTls> {
        self.tls.as_deref()
    }

    /// The same pool with every instance down until active health checks
    /// find it healthy: a deployment's candidate (see `deploy`).
    pub fn starting_down(self) -> Pool {
        for n in &self.nodes {
            n.down.store(true, Ordering::Relaxed);
        }
        self
    }

    /// Whether no instance is down by its health checks.
    pub fn all_healthy(&self) -> bool {
        self.nodes.iter().all(|n| !n.down.load(Ordering::Relaxed))
    }

    /// The instances down by their health checks.
    pub fn unhealthy_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.down.load(Ordering::Relaxed))
            .map(|n| n.addr.clone())
            .collect()
    }

    /// The same pool, speaking HTTP/2 to its instances when `on`.
    pub fn with_http2(mut self, on: bool) -> Pool {
        self.http2 = on;
        self
    }

    /// How to reach the instances: TLS or not, HTTP/1.1 or HTTP/2.
    pub fn reach(&self) -> crate::upstream::Reach<'_> {
        crate::upstream::Reach {
            tls: self.tls.as_deref(),
            http2: self.http2,
        }
    }

    /// The service whose instances these are.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True if the pool has no instances.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Picks an available upstream not in `tried` and leases it.
    pub fn pick(&self, tried: &[usize]) -> Option<Lease<'_>> {
        let now = self.clock.unix_nanos();
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !tried.contains(i))
            .filter(|&i| self.would_admit(i, now))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let n = candidates.len();
        let chosen = match self.balance {
            Balance::RoundRobin => {
                let k = self.next.fetch_add(1, Ordering::Relaxed);
                candidates.get(k % n).copied()
            }
            Balance::LeastRequests => {
                let r = self.random();
                let a = candidates.get((r % n as u64) as usize).copied();
                let b = candidates.get(((r >> 32) % n as u64) as usize).copied();
                match (a, b) {
                    (Some(a), Some(b)) => {
                        if self.in_flight(b) < self.in_flight(a) {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    (a, b) => a.or(b),
                }
            }
        }?;
        // Admission may race with another request taking the half-open
        // probe; `admit` is the authoritative check.
        if !self.admit(chosen, now) {
            let mut tried = tried.to_vec();
            tried.push(chosen);
            return self.pick(&tried);
        }
        if let Some(node) = self.nodes.get(chosen) {
            node.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Some(Lease {
            pool: self,
            index: chosen,
            settled: false,
        })
    }

    /// How long until some open breaker allows a probe (for Retry-After).
    pub fn retry_after(&self) -> Duration {
        let now = self.clock.unix_nanos();
        self.nodes
            .iter()
            .filter_map(|n| match *lock(&n.state) {
                State::Open { until_nanos } => {
                    Some(Duration::from_nanos(until_nanos.saturating_sub(now)))
                }
                _ => None,
            })
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    /// A snapshot of every instance.
    pub fn status(&self) -> Vec<UpstreamStatus> {
        self.nodes
            .iter()
            .map(|n| UpstreamStatus {
                service: self.service.clone(),
                addr: n.addr.clone(),
                state: match *lock(&n.state) {
                    State::Closed { .. } => BreakerState::Closed,
                    State::Open { .. } => BreakerState::Open,
                    State::HalfOpen { .. } => BreakerState::HalfOpen,
                },
                in_flight: n.in_flight.load(Ordering::Relaxed),
                healthy: !n.down.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn in_flight(&self, i: usize) -> usize {
        self.nodes
            .get(i)
            .map_or(usize::MAX, |n| n.in_flight.load(Ordering::Relaxed))
    }

    fn would_admit(&self, i: usize, now: u64) -> bool {
        let Some(node) = self.nodes.get(i) else {
            return false;
        };
        if node.down.load(Ordering::Relaxed) {
            return false;
        }
        match *lock(&node.state) {
            State::Closed { .. } => true,
            State::Open { until_nanos } => now >= until_nanos,
            State::HalfOpen { probing } => !probing,
        }
    }

    fn admit(&self, i: usize, now: u64) -> bool {
        let Some(node) = self.nodes.get(i) else {
            return false;
        };
        let mut st = lock(&node.state);
        match *st {
            State::Closed { .. } => true,
            State::Open { until_nanos } if now >= until_nanos => {
                *st = State::HalfOpen { probing: true };
                true
            }
            State::Open { .. } => false,
            State::HalfOpen { probing: false } => {
                *st = State::HalfOpen { probing: true };
                true
            }
            State::HalfOpen { probing: true } => false,
        }
    }

    fn settle(&self, i: usize, ok: bool) {
        let Some(node) = self.nodes.get(i) else {
            return;
        };
        node.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut st = lock(&node.state);
        let open = || State::Open {
            until_nanos: self.clock.unix_nanos().saturating_add(
                u64::try_from(self.breaker.open_for.as_nanos()).unwrap_or(u64::MAX),
            ),
        };
        *st = match (*st, ok) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if failures >= self.breaker.failures_to_open {
                    tracing::warn!(service = %self.service, upstream = %node.addr, "upstream ejected: breaker open");
                    open()
                } else {
                    State::Closed { failures }
                }
            }
            (State::HalfOpen { .. }, false) => open(),
            (s @ State::Open { .. }, false) => s,
        };
    }

    /// The instances' addresses, in pool order.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Records an active health check result for instance `i`: `fall`
    /// consecutive failures mark it down, `rise` consecutive successes up.
    pub fn record_check(&self, i: usize, ok: bool, rise: u32, fall: u32) {
        let Some(node) = self.nodes.get(i) else {
            return;
        };
        let mut c = lock(&node.checks);
        let (oks, fails) = &mut *c;
        if ok {
            *oks = oks.saturating_add(1);
            *fails = 0;
            if *oks >= rise && node.down.swap(false, Ordering::Relaxed) {
                tracing::info!(service = %self.service, upstream = %node.addr, "upstream healthy again");
            }
        } else {
            *fails = fails.saturating_add(1);
            *oks = 0;
            if *fails >= fall && !node.down.swap(true, Ordering::Relaxed) {
                tracing::warn!(service = %self.service, upstream = %node.addr, "upstream failed health checks");
            }
        }
    }

    fn random(&self) -> u64 {
        // splitmix64 over a shared counter: cheap, and good enough to spread.
        let mut z = self
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Lease<'_> {
    /// The leased instance's index in the pool.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The leased instance's address.
    pub fn addr(&self) -> &str {
        self.pool
            .nodes
            .get(self.index)
            .map_or("", |n| n.addr.as_str())
    }

    /// Records the outcome: `ok` false for a connect error or 5xx.
    pub fn finish(mut self, ok: bool) {
        self.settled = true;
        self.pool.settle(self.index, ok);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // A request abandoned mid-flight (client went away) is not the
        // upstream's fault.
        if !self.settled {
            if let Some(node) = self.pool.nodes.get(self.index) {
                node.in_flight.fetch_sub(1, Ordering::Relaxed);
                let mut st = lock(&node.state);
                if let State::HalfOpen { probing: true } = *st {
                    *st = State::HalfOpen { probing: false };
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_core::ManualClock;
    use std::sync::Arc;

    fn pool(balance: Balance, clock: Arc<ManualClock>) -> Pool {
        Pool::new(
            "svc",
            vec!["a:1".into(), "b:1".into()],
            balance,
            BreakerSettings {
                failures_to_open: 2,
                open_for: Duration::from_secs(5),
            },
            clock,
        )
    }

    #[test]
    fn round_robin_alternates() {
        let p = pool(
            Balance::RoundRobin,
            Arc::new(ManualClock::at_unix_secs(100)),
        );
        let picks: Vec<String> = (0..4)
            .map(|_| {
                let l = p.pick(&[]).unwrap();
                let a = l.addr().to_string();
                l.finish(true);
                a
            })
            .collect();
        assert_eq!(picks, ["a:1", "b:1", "a:1", "b:1"]);
    }

    #[test]
    fn least_requests_avoids_the_busy_one() {
        let p = pool(
            Balance::LeastRequests,
            Arc::new(ManualClock::at_unix_secs(100)),
        );
        let busy = p.pick(&[]).unwrap();
        let busy_addr = busy.addr().to_string();
        for _ in 0..20 {
            let l = p.pick(&[]).unwrap();
            // With two nodes, p2c either sees both (picks the idle one) or
            // the same one twice.
            if l.addr() == busy_addr {
                assert_eq!(p.in_flight(l.index()), 2);
            }
            l.finish(true);
        }
        busy.finish(true);
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let clock = Arc::new(ManualClock::at_unix_secs(100));
        let p = pool(Balance::RoundRobin, clock.clone());
        for _ in 0..2 {
            p.pick(&[1]).unwrap().finish(false);
        }
        assert_eq!(p.status()[0].state, BreakerState::Open);
        // Only b is available now.
        for _ in 0..3 {
            let l = p.pick(&[]).unwrap();
            assert_eq!(l.addr(), "b:1");
            l.finish(true);
        }
        assert!(p.pick(&[1]).is_none());
        assert_eq!(p.retry_after(), Duration::from_secs(5));
        clock.advance(Duration::from_secs(5));
        let probe = p.pick(&[1]).unwrap();
        assert_eq!(p.status()[0].state, BreakerState::HalfOpen);
        assert!(p.pick(&[1]).is_none(), "one probe at a time");
        probe.finish(false);
        assert_eq!(p.status()[0].state, BreakerState::Open);
        clock.advance(Duration::from_secs(5));
        p.pick(&[1]).unwrap().finish(true);
        assert_eq!(p.status()[0].state, BreakerState::Closed);
    }

    #[test]
    fn active_checks_mark_down_and_up() {
        let p = pool(
            Balance::RoundRobin,
            Arc::new(ManualClock::at_unix_secs(100)),
        );
        p.record_check(0, false, 2, 2);
        assert!(p.status()[0].healthy);
        p.record_check(0, false, 2, 2);
        assert!(!p.status()[0].healthy);
        for _ in 0..4 {
            let l = p.pick(&[]).unwrap();
            assert_eq!(l.addr(), "b:1");
            l.finish(true);
        }
        p.record_check(0, true, 2, 2);
        assert!(!p.status()[0].healthy);
        p.record_check(0, true, 2, 2);
        assert!(p.status()[0].healthy);
    }
}
