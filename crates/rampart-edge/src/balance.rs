//! Upstream pools: choosing an instance (round robin, power of two
//! choices over in-flight requests, or by the client's address, each
//! weighted by the instances' `weight`), passive ejection and the
//! per-upstream circuit breaker.
//!
//! Weights, when they differ, work in each way as nginx's `weight=` and
//! Envoy's load-balancing weights do: round robin walks a smooth schedule
//! in which each instance appears `weight` times (spread out, not in
//! runs); least requests draws its two candidates in proportion to weight
//! and keeps the one with more weight per request in flight; the client
//! hash gives each instance a weighted rendezvous score (`weight / -ln u`),
//! so an instance keeps a share of clients in proportion to its weight and
//! only its own clients move when it leaves.
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
    /// By the client (see [`client_affinity`]): the available instance
    /// with the highest score for it (rendezvous hashing), so a client
    /// keeps to one instance while that instance is up, and when one
    /// leaves or comes back only its own clients move.
    ClientHash,
}

impl From<rampart_config::EdgeBalance> for Balance {
    fn from(b: rampart_config::EdgeBalance) -> Self {
        match b {
            rampart_config::EdgeBalance::RoundRobin => Balance::RoundRobin,
            rampart_config::EdgeBalance::LeastRequests => Balance::LeastRequests,
            rampart_config::EdgeBalance::ClientHash => Balance::ClientHash,
        }
    }
}

/// A 64-bit mix of `x` (SplitMix64's finaliser): spreads close inputs
/// apart, for rendezvous scores.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a of `bytes`, mixed: the same on every node and every run, so that
/// several edges send a client to the same instance.
fn stable_hash(bytes: &[u8]) -> u64 {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    mix(h)
}

/// The weighted rendezvous score of an instance whose plain score for a
/// client is `h`: `weight / -ln u` with `u` in (0, 1) taken from `h`. With
/// equal weights it orders instances as `h` does.
fn rendezvous_score(h: u64, weight: u32) -> f64 {
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    f64::from(weight) / -u.ln()
}

/// A smooth round-robin schedule for `weights` (after dividing them by
/// their greatest common divisor): nginx's smooth weighted round robin run
/// once through, so that instance `i` appears `weights[i]` times and the
/// turns of a heavy instance are spread between the others' (5, 1, 1 gives
/// a a b a c a a).
fn schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1))).max(1);
    let w: Vec<i64> = weights.iter().map(|&w| i64::from(w.max(1) / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&w) {
            *c += w;
        }
        // The highest current weight; the first of equals.
        let (best, _) =
            current.iter().enumerate().fold(
                (0, i64::MIN),
                |(bi, bc), (i, &c)| if c > bc { (i, c) } else { (bi, bc) },
            );
        if let Some(c) = current.get_mut(best) {
            *c -= total;
        }
        out.push(u32::try_from(best).unwrap_or(u32::MAX));
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What [`Balance::ClientHash`] keeps a client to: its address, an IPv6
/// client's /64 (whose privacy addresses change).
pub fn client_affinity(client: std::net::IpAddr) -> u64 {
    match crate::slots::client_of(client.to_canonical()) {
        std::net::IpAddr::V4(v4) => stable_hash(&v4.octets()),
        std::net::IpAddr::V6(v6) => stable_hash(&v6.octets()),
    }
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
    /// [`stable_hash`] of the address, for [`Balance::ClientHash`].
    key: u64,
    /// Its share of requests (1 unless configured).
    weight: u32,
    /// Used only while no other instance is available.
    backup: bool,
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
    /// Its `weight`.
    pub weight: u32,
    /// Whether it is a backup.
    pub backup: bool,
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
    /// When the weights differ: node indices, each `weight` times, in a
    /// smooth order (see [`schedule`]); empty when they are all equal.
    schedule: Vec<u32>,
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
                key: stable_hash(addr.as_bytes()),
                weight: 1,
                backup: false,
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
            schedule: Vec::new(),
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

    /// The same pool with the instances' weights, in pool order (1 for
    /// any not given; 0 is taken as 1).
    pub fn with_weights(mut self, weights: &[u32]) -> Pool {
        for (node, &w) in self.nodes.iter_mut().zip(weights) {
            node.weight = w.max(1);
        }
        self.reschedule();
        self
    }

    /// The same pool with these instances (`true`, in pool order) kept as
    /// backups, as nginx's `backup`: they take requests only while no
    /// other instance is available.
    pub fn with_backups(mut self, backups: &[bool]) -> Pool {
        for (node, &b) in self.nodes.iter_mut().zip(backups) {
            node.backup = b;
        }
        self.reschedule();
        self
    }

    /// The weighted schedule over the instances that are not backups
    /// (empty when their weights are all equal).
    fn reschedule(&mut self) {
        let (index, w): (Vec<u32>, Vec<u32>) = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.backup)
            .map(|(i, n)| (u32::try_from(i).unwrap_or(u32::MAX), n.weight))
            .unzip();
        self.schedule = if w.iter().all(|&x| Some(&x) == w.first()) {
            Vec::new()
        } else {
            schedule(&w)
                .into_iter()
                .filter_map(|k| index.get(k as usize).copied())
                .collect()
        };
    }

    /// Which instances are backups, in pool order.
    pub fn backups(&self) -> Vec<bool> {
        self.nodes.iter().map(|n| n.backup).collect()
    }

    /// The instances' weights, in pool order.
    pub fn weights(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.weight).collect()
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

    /// How the pool picks an instance.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// What [`Pool::pick`] is given for a request from `client`:
    /// [`client_affinity`] when the pool balances by client, else 0.
    pub fn affinity(&self, client: std::net::IpAddr) -> u64 {
        match self.balance {
            Balance::ClientHash => client_affinity(client),
            _ => 0,
        }
    }

    /// Picks an available upstream not in `tried` and leases it;
    /// `affinity` ([`client_affinity`]) matters to [`Balance::ClientHash`]
    /// only.
    pub fn pick(&self, tried: &[usize], affinity: u64) -> Option<Lease<'_>> {
        let now = self.clock.unix_nanos();
        let mut candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !tried.contains(i))
            .filter(|&i| self.would_admit(i, now))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        // Backups only while no other instance is available.
        let is_backup = |i: usize| self.nodes.get(i).is_some_and(|n| n.backup);
        if candidates.iter().any(|&i| !is_backup(i)) {
            candidates.retain(|&i| !is_backup(i));
        }
        let n = candidates.len();
        let weighted = !self.schedule.is_empty();
        let chosen = match self.balance {
            Balance::RoundRobin if weighted => {
                let k = self.next.fetch_add(1, Ordering::Relaxed);
                match self.schedule.get(k % self.schedule.len()) {
                    Some(&i) if candidates.contains(&(i as usize)) => Some(i as usize),
                    // Its turn is not available (down, open, tried): the
                    // others by weight, so that none takes all of its turns.
                    _ => self.draw_weighted(&candidates, mix(k as u64)),
                }
            }
            Balance::RoundRobin => {
                let k = self.next.fetch_add(1, Ordering::Relaxed);
                candidates.get(k % n).copied()
            }
            Balance::LeastRequests => {
                let r = self.random();
                let (a, b) = if weighted {
                    (
                        self.draw_weighted(&candidates, r),
                        self.draw_weighted(&candidates, r >> 32),
                    )
                } else {
                    (
                        candidates.get((r % n as u64) as usize).copied(),
                        candidates.get(((r >> 32) % n as u64) as usize).copied(),
                    )
                };
                match (a, b) {
                    // The one with more weight per request in flight (with
                    // equal weights: fewer in flight; ties keep `a`).
                    (Some(a), Some(b)) => {
                        let flight = |i: usize| self.in_flight(i) as u128 + 1;
                        let weight = |i: usize| u128::from(self.weight(i));
                        if weight(b) * flight(a) > weight(a) * flight(b) {
                            Some(b)
                        } else {
                            Some(a)
                        }
                    }
                    (a, b) => a.or(b),
                }
            }
            Balance::ClientHash if weighted => candidates.iter().copied().max_by(|&x, &y| {
                let score = |i: usize| {
                    self.nodes.get(i).map_or(0.0, |node| {
                        rendezvous_score(mix(node.key ^ affinity), node.weight)
                    })
                };
                score(x).total_cmp(&score(y))
            }),
            Balance::ClientHash => candidates
                .iter()
                .copied()
                .max_by_key(|&i| self.nodes.get(i).map_or(0, |node| mix(node.key ^ affinity))),
        }?;
        // Admission may race with another request taking the half-open
        // probe; `admit` is the authoritative check.
        if !self.admit(chosen, now) {
            let mut tried = tried.to_vec();
            tried.push(chosen);
            return self.pick(&tried, affinity);
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
                weight: n.weight,
                backup: n.backup,
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

    fn weight(&self, i: usize) -> u32 {
        self.nodes.get(i).map_or(1, |n| n.weight)
    }

    /// A candidate drawn in proportion to weight (a random place in the
    /// schedule), or evenly among the candidates when a few draws land
    /// only on instances that are not.
    fn draw_weighted(&self, candidates: &[usize], r: u64) -> Option<usize> {
        let len = self.schedule.len() as u64;
        let mut r = r;
        for _ in 0..4 {
            let i = self
                .schedule
                .get((r % len.max(1)) as usize)
                .map(|&i| i as usize);
            if let Some(i) = i.filter(|i| candidates.contains(i)) {
                return Some(i);
            }
            r = mix(r);
        }
        candidates
            .get((r % candidates.len().max(1) as u64) as usize)
            .copied()
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
                let l = p.pick(&[], 0).unwrap();
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
        let busy = p.pick(&[], 0).unwrap();
        let busy_addr = busy.addr().to_string();
        for _ in 0..20 {
            let l = p.pick(&[], 0).unwrap();
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
            p.pick(&[1], 0).unwrap().finish(false);
        }
        assert_eq!(p.status()[0].state, BreakerState::Open);
        // Only b is available now.
        for _ in 0..3 {
            let l = p.pick(&[], 0).unwrap();
            assert_eq!(l.addr(), "b:1");
            l.finish(true);
        }
        assert!(p.pick(&[1], 0).is_none());
        assert_eq!(p.retry_after(), Duration::from_secs(5));
        clock.advance(Duration::from_secs(5));
        let probe = p.pick(&[1], 0).unwrap();
        assert_eq!(p.status()[0].state, BreakerState::HalfOpen);
        assert!(p.pick(&[1], 0).is_none(), "one probe at a time");
        probe.finish(false);
        assert_eq!(p.status()[0].state, BreakerState::Open);
        clock.advance(Duration::from_secs(5));
        p.pick(&[1], 0).unwrap().finish(true);
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
            let l = p.pick(&[], 0).unwrap();
            assert_eq!(l.addr(), "b:1");
            l.finish(true);
        }
        p.record_check(0, true, 2, 2);
        assert!(!p.status()[0].healthy);
        p.record_check(0, true, 2, 2);
        assert!(p.status()[0].healthy);
    }

    fn three(balance: Balance) -> Pool {
        Pool::new(
            "svc",
            vec![
                "10.0.0.1:80".into(),
                "10.0.0.2:80".into(),
                "10.0.0.3:80".into(),
            ],
            balance,
            BreakerSettings::default(),
            Arc::new(ManualClock::at_unix_secs(100)),
        )
    }

    fn pick_for(p: &Pool, tried: &[usize], client: &str) -> usize {
        let l = p
            .pick(tried, client_affinity(client.parse().unwrap()))
            .unwrap();
        let i = l.index;
        l.finish(true);
        i
    }

    #[test]
    fn client_hash_keeps_a_client_to_one_instance_and_spreads_clients() {
        let p = three(Balance::ClientHash);
        let mut seen = [0usize; 3];
        for n in 0..300u32 {
            let client = format!("198.51.{}.{}", n / 250, n % 250 + 1);
            let first = pick_for(&p, &[], &client);
            for _ in 0..3 {
                assert_eq!(pick_for(&p, &[], &client), first, "{client}");
            }
            seen[first] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        // An IPv6 client is its /64.
        assert_eq!(
            pick_for(&p, &[], "2001:db8:7:7::1"),
            pick_for(&p, &[], "2001:db8:7:7:ffff::2")
        );
    }

    #[test]
    fn client_hash_moves_only_the_clients_of_an_instance_that_is_out() {
        let p = three(Balance::ClientHash);
        let clients: Vec<String> = (1..=200).map(|n| format!("203.0.113.{n}")).collect();
        let before: Vec<usize> = clients.iter().map(|c| pick_for(&p, &[], c)).collect();
        // Instance 1 taken out (as a retry excludes it, or its breaker).
        let after: Vec<usize> = clients.iter().map(|c| pick_for(&p, &[1], c)).collect();
        for ((c, b), a) in clients.iter().zip(&before).zip(&after) {
            if *b == 1 {
                assert_ne!(*a, 1, "{c}");
            } else {
                assert_eq!(a, b, "{c} moved although its instance stayed");
            }
        }
        // The same on every node, every run and every version: the hash is
        // fixed (a change would move every client on upgrade).
        assert_eq!(
            client_affinity("192.0.2.1".parse().unwrap()),
            0x1e00e9a12f8249cb
        );
        assert_eq!(
            client_affinity("::ffff:192.0.2.1".parse().unwrap()),
            client_affinity("192.0.2.1".parse().unwrap())
        );
    }

    #[test]
    fn the_schedule_spreads_each_instance_by_its_weight() {
        let s = schedule(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        for (i, w) in [(0, 5), (1, 1), (2, 1)] {
            assert_eq!(s.iter().filter(|&&x| x == i).count(), w, "{s:?}");
        }
        // Spread out, as nginx orders them.
        assert_eq!(s, [0, 0, 1, 0, 2, 0, 0]);
        // Weights are reduced by their common divisor.
        assert_eq!(schedule(&[20, 40]), schedule(&[1, 2]));
        assert_eq!(schedule(&[1, 2]).len(), 3);
    }

    fn weighted(balance: Balance, weights: &[u32]) -> Pool {
        three(balance).with_weights(weights)
    }

    #[test]
    fn weighted_round_robin_gives_each_its_share() {
        let p = weighted(Balance::RoundRobin, &[3, 1, 1]);
        let mut seen = [0usize; 3];
        for _ in 0..500 {
            let l = p.pick(&[], 0).unwrap();
            seen[l.index] += 1;
            l.finish(true);
        }
        assert_eq!(seen, [300, 100, 100]);
        // With the heaviest tried already, the others share its turns too.
        let mut seen = [0usize; 3];
        for _ in 0..2000 {
            let l = p.pick(&[0], 0).unwrap();
            seen[l.index] += 1;
            l.finish(true);
        }
        assert_eq!(seen[0], 0);
        assert!((850..=1150).contains(&seen[1]), "{seen:?}");
        // Equal weights are plain round robin.
        assert!(weighted(Balance::RoundRobin, &[2, 2, 2])
            .schedule
            .is_empty());
    }

    #[test]
    fn weighted_least_requests_keeps_load_in_proportion() {
        let p = weighted(Balance::LeastRequests, &[4, 1, 1]);
        // Requests that stay in flight pile up in proportion to weight.
        let held: Vec<Lease<'_>> = (0..600).map(|_| p.pick(&[], 0).unwrap()).collect();
        let mut seen = [0usize; 3];
        for l in &held {
            seen[l.index] += 1;
        }
        assert!((360..=440).contains(&seen[0]), "{seen:?}");
        assert!(seen[1] >= 80 && seen[2] >= 80, "{seen:?}");
    }

    #[test]
    fn weighted_client_hash_shares_clients_by_weight_and_moves_only_an_instance_s_own() {
        let p = weighted(Balance::ClientHash, &[2, 1, 1]);
        let clients: Vec<String> = (0..4000u32)
            .map(|n| format!("198.{}.{}.{}", 18 + n / 62500, (n / 250) % 250, n % 250 + 1))
            .collect();
        let first: Vec<usize> = clients.iter().map(|c| pick_for(&p, &[], c)).collect();
        let mut seen = [0usize; 3];
        for &i in &first {
            seen[i] += 1;
        }
        // Expected 2000 / 1000 / 1000.
        assert!((1850..=2150).contains(&seen[0]), "{seen:?}");
        assert!((850..=1150).contains(&seen[1]), "{seen:?}");
        // With instance 1 out, only its clients move.
        for (c, &was) in clients.iter().zip(&first) {
            let now = pick_for(&p, &[1], c);
            if was != 1 {
                assert_eq!(now, was, "{c}");
            }
        }
        // Each client keeps to its instance.
        assert_eq!(pick_for(&p, &[], &clients[7]), first[7]);
    }

    #[test]
    fn backups_serve_only_while_no_other_instance_can() {
        let p = three(Balance::RoundRobin).with_backups(&[false, false, true]);
        assert!((0..20).all(|_| pick_with(&p, &[]) != 2));
        assert_eq!(pick_with(&p, &[0, 1]), 2);
        // Weighted, by client, by load: the same.
        for balance in [Balance::LeastRequests, Balance::ClientHash] {
            let p = three(balance)
                .with_weights(&[1, 1, 50])
                .with_backups(&[false, false, true]);
            for n in 0..20u8 {
                let l = p.pick(&[], client_affinity([192, 0, 2, n].into())).unwrap();
                assert_ne!(l.index, 2);
                l.finish(true);
            }
            let l = p.pick(&[1, 0], 0).unwrap();
            assert_eq!(l.index, 2);
        }
        let p = three(Balance::RoundRobin)
            .with_weights(&[3, 1, 9])
            .with_backups(&[false, false, true]);
        let mut seen = [0usize; 3];
        for _ in 0..400 {
            seen[pick_with(&p, &[])] += 1;
        }
        assert_eq!(seen, [300, 100, 0]);
    }

    fn pick_with(p: &Pool, tried: &[usize]) -> usize {
        let l = p.pick(tried, 0).unwrap();
        let i = l.index;
        l.finish(true);
        i
    }
}
