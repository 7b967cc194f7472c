//! Brute-force throttling of logins, per account and per source address.
//!
//! The first few failures are free; after that each failure makes the next
//! attempt wait twice as long as the last, up to a ceiling. Nothing sleeps:
//! the check answers how long to wait and the HTTP layer answers 429 with
//! `Retry-After`. Accounts are keyed by the name submitted, known or not, so
//! throttling reveals nothing about which accounts exist.
//!
//! The counts every node shares sit behind [`SharedThrottle`], under keyed
//! hashes of the account names and addresses: by default records in the
//! identity plane's store (so nodes sharing a store see the failures made
//! through any of them, and a restart forgets nothing; the prune job drops
//! idle entries), or Redis when `[redis]` is configured
//! ([`crate::RedisThrottle`]: one atomic script per failure, keys that
//! expire on their own). [`Throttle`] is the same logic in memory, per
//! node, bounded in size: always kept up to date, it decides alone while
//! the shared counts cannot be reached, so throttling never turns off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rampart_store::{Expect, StoreError};
use serde::{Deserialize, Serialize};

use crate::service::{Identity, LIST_LIMIT};
use crate::IdentityError;

/// Throttling parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures per account before delays start.
    pub free_failures_per_account: u32,
    /// Failures per source address before delays start.
    pub free_failures_per_source: u32,
    /// The first delay, seconds; doubles with each further failure.
    pub base_delay_secs: u64,
    /// The longest delay, seconds.
    pub max_delay_secs: u64,
    /// Failures are forgotten after this long without one, seconds.
    pub forget_after_secs: u64,
    /// Most entries kept (accounts and sources together).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_failures_per_account: 5,
            free_failures_per_source: 20,
            base_delay_secs: 1,
            max_delay_secs: 900,
            forget_after_secs: 3600,
            max_entries: 100_000,
        }
    }
}

/// One account's or source's failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) failures: u32,
    pub(crate) last_failure: u64,
    pub(crate) blocked_until: u64,
}

impl Entry {
    /// Counts a failure at `now` (after `free` free ones); returns the
    /// delay it imposes, in seconds (0 for none).
    pub(crate) fn fail(&mut self, cfg: &ThrottleConfig, free: u32, now: u64) -> u64 {
        if now.saturating_sub(self.last_failure) > cfg.forget_after_secs {
            *self = Entry::default();
        }
        self.failures = self.failures.saturating_add(1);
        self.last_failure = now;
        if self.failures > free {
            let exp = (self.failures - free - 1).min(30);
            let delay = cfg
                .base_delay_secs
                .saturating_mul(1u64 << exp)
                .min(cfg.max_delay_secs);
            self.blocked_until = now.saturating_add(delay);
            delay
        } else {
            0
        }
    }

    /// Seconds still to wait at `now`.
    pub(crate) fn wait(&self, now: u64) -> u64 {
        self.blocked_until.saturating_sub(now)
    }

    /// Whether the entry no longer matters at `now`: nothing to wait for,
    /// and its failures are forgotten.
    pub(crate) fn idle(&self, cfg: &ThrottleConfig, now: u64) -> bool {
        self.blocked_until <= now && now.saturating_sub(self.last_failure) > cfg.forget_after_secs
    }
}

/// The throttle.
#[derive(Debug)]
pub struct Throttle {
    cfg: ThrottleConfig,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    /// An empty throttle.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Throttle {
            cfg,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The parameters.
    pub fn config(&self) -> &ThrottleConfig {
        &self.cfg
    }

    /// The entry keys for an account and a source.
    pub(crate) fn keys(account: &str, source: Option<&str>) -> (String, Option<String>) {
        (
            format!("a:{}", account.to_lowercase()),
            source.map(source_key),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the caller must wait before an attempt for `account` from
    /// `source` is considered, if at all.
    pub fn check(&self, account: &str, source: Option<&str>, now: u64) -> Option<Duration> {
        let (a, s) = Self::keys(account, source);
        let map = self.lock();
        let wait = |k: &str| map.get(k).map(|e| e.wait(now)).unwrap_or(0);
        let w = wait(&a).max(s.as_deref().map_or(0, wait));
        (w > 0).then(|| Duration::from_secs(w))
    }

    /// Records a failure; returns the delay now imposed, if any.
    pub fn failure(&self, account: &str, source: Option<&str>, now: u64) -> Option<Duration> {
        let (a, s) = Self::keys(account, source);
        let mut map = self.lock();
        if map.len() >= self.cfg.max_entries {
            let horizon = now.saturating_sub(self.cfg.forget_after_secs);
            map.retain(|_, e| e.last_failure > horizon || e.blocked_until > now);
        }
        let mut bump =
            |k: String, free: u32| -> u64 { map.entry(k).or_default().fail(&self.cfg, free, now) };
        let da = bump(a, self.cfg.free_failures_per_account);
        let ds = s.map_or(0, |s| bump(s, self.cfg.free_failures_per_source));
        let d = da.max(ds);
        (d > 0).then(|| Duration::from_secs(d))
    }

    /// Clears the account's failures after a successful login (the
    /// source's count stands: one success does not excuse a spray).
    pub fn success(&self, account: &str) {
        let (a, _) = Self::keys(account, None);
        self.lock().remove(&a);
    }
}

/// Where the shared counts live in the store.
pub(crate) const NS_THROTTLE: &str = "identity/throttle";
/// Rounds of compare-and-set before a failure is counted locally only.
/// A round that loses the race backs off first (see [`cas_backoff`]), so
/// that nodes failing on one account at once take turns instead of
/// colliding again: 64 concurrent failures on one key lost 19 to this
/// limit when it was 8 rounds with no back-off.
const CAS_ROUNDS: usize = 16;

/// How long a compare-and-set that lost round `round` (from 0) waits
/// before the next: a random spell up to 1 ms, doubling each round up to
/// 32 ms (about 0.4 s in all, in the worst case, on a failed login).
fn cas_backoff(round: usize) -> Duration {
    let cap_us = 1_000u64 << round.min(5);
    let r = rampart_crypto::random_array::<8>().map_or(cap_us / 2, u64::from_le_bytes);
    Duration::from_micros(r % cap_us)
}

/// Why the shared counts could not be read or written. The throttle then
/// decides from this node's own counts.
#[derive(Debug, thiserror::Error)]
pub enum SharedThrottleError {
    /// The store failed, or kept losing the compare-and-set race.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Redis did not answer in time.
    #[error("redis {target}: no answer within {} ms", after.as_millis())]
    RedisTimeout {
        /// `host:port/db`.
        target: String,
        /// How long the call waited.
        after: Duration,
    },
    /// An entry could not be encoded for the store.
    #[error("encode a throttle entry: {0}")]
    Encode(#[from] serde_json::Error),
    /// Redis did not answer, or answered an error.
    #[error("redis {target}: {source}")]
    Redis {
        /// `host:port/db` (never the password).
        target: String,
        /// What the client reported.
        #[source]
        source: redis::RedisError,
    },
}

/// Where the counts that every node shares live: the store (the default)
/// or Redis ([`crate::RedisThrottle`]). Keys are already keyed hashes of
/// the account names and addresses; time is the identity plane's clock,
/// passed in, so every node counts on the same scale as its own fallback.
#[async_trait::async_trait]
pub trait SharedThrottle: Send + Sync + std::fmt::Debug {
    /// Seconds still to wait at `now`, the longest over `keys`.
    async fn wait(&self, keys: &[String], now: u64) -> Result<u64, SharedThrottleError>;

    /// Counts one failure at `now` on each key (with its number of free
    /// failures), atomically per key; returns the longest delay imposed,
    /// in seconds (0 for none).
    async fn fail(
        &self,
        keys: &[(String, u32)],
        cfg: &ThrottleConfig,
        now: u64,
    ) -> Result<u64, SharedThrottleError>;

    /// Forgets a key's failures.
    async fn clear(&self, key: &str) -> Result<(), SharedThrottleError>;
}

/// The shared counts as records in the identity plane's store, under
/// compare-and-set.
#[derive(Debug)]
pub(crate) struct StoreThrottle {
    pub(crate) store: std::sync::Arc<dyn rampart_store::Store>,
}

impl StoreThrottle {
    async fn entry(&self, key: &str) -> Result<Option<Entry>, SharedThrottleError> {
        let Some(e) = self.store.get(NS_THROTTLE, key).await? else {
            return Ok(None);
        };
        // An unreadable entry counts as none; the next failure rewrites it.
        Ok(serde_json::from_slice::<Entry>(&e.value).ok())
    }

    async fn fail_one(
        &self,
        key: &str,
        cfg: &ThrottleConfig,
        free: u32,
        now: u64,
    ) -> Result<u64, SharedThrottleError> {
        for round in 0..CAS_ROUNDS {
            if round > 0 {
                tokio::time::sleep(cas_backoff(round - 1)).await;
            }
            let current = self.store.get(NS_THROTTLE, key).await?;
            let (mut entry, expect) = match &current {
                Some(e) => (
                    serde_json::from_slice::<Entry>(&e.value).unwrap_or_default(),
                    Expect::Version(e.version),
                ),
                None => (Entry::default(), Expect::Absent),
            };
            let delay = entry.fail(cfg, free, now);
            let value = serde_json::to_vec(&entry)?;
            match self.store.put(NS_THROTTLE, key, &value, expect).await {
                Ok(_) => return Ok(delay),
                // Another attempt counted meanwhile: count on top of it.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict {
            ns: NS_THROTTLE.into(),
            key: key.into(),
        }
        .into())
    }
}

#[async_trait::async_trait]
impl SharedThrottle for StoreThrottle {
    async fn wait(&self, keys: &[String], now: u64) -> Result<u64, SharedThrottleError> {
        let mut wait = 0;
        for k in keys {
            wait = wait.max(self.entry(k).await?.map_or(0, |e| e.wait(now)));
        }
        Ok(wait)
    }

    async fn fail(
        &self,
        keys: &[(String, u32)],
        cfg: &ThrottleConfig,
        now: u64,
    ) -> Result<u64, SharedThrottleError> {
        let mut delay = 0;
        for (k, free) in keys {
            delay = delay.max(self.fail_one(k, cfg, *free, now).await?);
        }
        Ok(delay)
    }

    async fn clear(&self, key: &str) -> Result<(), SharedThrottleError> {
        self.store.delete(NS_THROTTLE, key, Expect::Any).await?;
        Ok(())
    }
}

/// Logs a fallback to the node's own counts: the first, then every 100th,
/// so that an outage does not flood the log.
fn fallback(count: &AtomicU64, what: &str, e: &SharedThrottleError) {
    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
    if n == 1 || n.is_multiple_of(100) {
        tracing::warn!(error = %e, fallbacks = n, "login throttle: {what}; this node's own counts decide");
    }
}

/// The throttle as the identity plane runs it: the shared counts decide,
/// this node's own (always kept up to date) while they cannot be had.
impl Identity {
    /// How long an attempt for `account` from `source` must wait: from the
    /// counts all nodes share, or this node's own while those fail.
    pub(crate) async fn throttle_check(
        &self,
        account: &str,
        source: Option<&str>,
        now: u64,
    ) -> Option<Duration> {
        let local = self.throttle.check(account, source, now);
        let (a, s) = Throttle::keys(account, source);
        let keys: Vec<String> = std::iter::once(a)
            .chain(s)
            .map(|k| self.throttle_key(&k))
            .collect();
        match self.shared_throttle.wait(&keys, now).await {
            Ok(w) => (w > 0).then(|| Duration::from_secs(w)),
            Err(e) => {
                fallback(
                    &self.throttle_fallbacks,
                    "the shared counts did not answer",
                    &e,
                );
                local
            }
        }
    }

    /// Counts a failure, here and in the shared counts; returns the delay
    /// imposed.
    pub(crate) async fn throttle_failure(
        &self,
        account: &str,
        source: Option<&str>,
        now: u64,
    ) -> Option<Duration> {
        let local = self.throttle.failure(account, source, now);
        let cfg = *self.throttle.config();
        let (a, s) = Throttle::keys(account, source);
        let keys: Vec<(String, u32)> = std::iter::once((a, cfg.free_failures_per_account))
            .chain(s.map(|s| (s, cfg.free_failures_per_source)))
            .map(|(k, free)| (self.throttle_key(&k), free))
            .collect();
        match self.shared_throttle.fail(&keys, &cfg, now).await {
            Ok(d) => (d > 0).then(|| Duration::from_secs(d)),
            Err(e) => {
                fallback(
                    &self.throttle_fallbacks,
                    "the shared counts did not take a failure",
                    &e,
                );
                local
            }
        }
    }

    /// Clears the account's failures after a successful login, here and in
    /// the shared counts (the source's count stands).
    pub(crate) async fn throttle_success(&self, account: &str) {
        self.throttle.success(account);
        let (a, _) = Throttle::keys(account, None);
        if let Err(e) = self.shared_throttle.clear(&self.throttle_key(&a)).await {
            fallback(
                &self.throttle_fallbacks,
                "the shared counts did not clear an account's failures",
                &e,
            );
        }
    }

    /// Deletes the store's entries that no longer matter; returns how many.
    /// (Redis forgets its own: each key expires.)
    pub(crate) async fn prune_throttle(&self, now: u64) -> Result<usize, IdentityError> {
        let cfg = *self.throttle.config();
        let mut gone = 0;
        for (k, e) in self.store.list(NS_THROTTLE, "", LIST_LIMIT).await? {
            let idle =
                serde_json::from_slice::<Entry>(&e.value).map_or(true, |t| t.idle(&cfg, now));
            if idle && self.delete_unchanged(NS_THROTTLE, &k, e.version).await? {
                gone += 1;
            }
        }
        Ok(gone)
    }

    /// The shared key of an entry: a keyed hash under the deployment's
    /// pepper, so neither the store nor Redis holds submitted account
    /// names or addresses.
    fn throttle_key(&self, key: &str) -> String {
        self.peppered("throttle", key.as_bytes())
    }

    /// Times the shared counts did not answer and this node's own decided.
    pub fn throttle_fallbacks(&self) -> u64 {
        self.throttle_fallbacks.load(Ordering::Relaxed)
    }
}

/// The count a source address is kept under: an IPv6 address by its /64
/// (one subscriber's network: counting each address alone would let a
/// client walk its own prefix past the limit), an IPv4 address (or an
/// IPv4-mapped IPv6 one) by itself.
fn source_key(source: &str) -> String {
    match source.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("s:{v4}"),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("s:{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
        _ => format!("s:{source}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_counted_by_its_64() {
        let t = Throttle::new(ThrottleConfig::default());
        // Twenty failures, each from another address of one /64.
        for i in 0..20 {
            let ip = format!("2001:db8:1:2::{:x}", i + 1);
            assert_eq!(t.failure(&format!("user{i}"), Some(&ip), 5), None);
        }
        assert!(t.failure("user99", Some("2001:db8:1:2::ff"), 5).is_some());
        assert!(t.check("fresh", Some("2001:db8:1:2:ffff::9"), 5).is_some());
        assert!(t.check("fresh", Some("2001:db8:1:3::1"), 5).is_none());
        assert_eq!(source_key("::ffff:9.9.9.9"), "s:9.9.9.9");
        assert_eq!(source_key("9.9.9.9"), "s:9.9.9.9");
    }

    #[test]
    fn delays_grow_after_free_failures() {
        let t = Throttle::new(ThrottleConfig::default());
        let mut now = 1000;
        for _ in 0..5 {
            assert_eq!(t.check("bob", Some("1.2.3.4"), now), None);
            assert_eq!(t.failure("bob", Some("1.2.3.4"), now), None);
        }
        let mut last = 0;
        for _ in 0..4 {
            assert_eq!(t.check("bob", None, now), None);
            let d = t.failure("bob", None, now).unwrap().as_secs();
            assert!(d > last, "{d} after {last}");
            assert!(t.check("BOB", None, now).is_some());
            last = d;
            now += d;
        }
        t.success("bob");
        assert_eq!(t.check("bob", None, now), None);
    }

    #[test]
    fn source_throttled_across_accounts() {
        let t = Throttle::new(ThrottleConfig::default());
        for i in 0..20 {
            assert_eq!(t.failure(&format!("user{i}"), Some("9.9.9.9"), 5), None);
        }
        assert!(t.failure("user99", Some("9.9.9.9"), 5).is_some());
        assert!(t.check("fresh", Some("9.9.9.9"), 5).is_some());
        assert!(t.check("fresh", Some("8.8.8.8"), 5).is_none());
    }

    fn store_throttle() -> StoreThrottle {
        let clock: rampart_core::SharedClock =
            std::sync::Arc::new(rampart_core::ManualClock::at_unix_secs(1_000));
        StoreThrottle {
            store: std::sync::Arc::new(rampart_store::SqliteStore::in_memory(clock).unwrap()),
        }
    }

    /// The store backend counts as the in-memory throttle does, per key,
    /// answering the longest delay and wait over its keys.
    #[tokio::test]
    async fn store_backend_counts_each_key_with_its_free_failures() {
        let shared = store_throttle();
        let cfg = ThrottleConfig {
            free_failures_per_account: 2,
            free_failures_per_source: 3,
            ..ThrottleConfig::default()
        };
        let keys = [("acct".to_string(), 2), ("addr".to_string(), 3)];
        let names = ["acct".to_string(), "addr".to_string()];
        let mut delays = vec![];
        for _ in 0..5 {
            delays.push(shared.fail(&keys, &cfg, 100).await.unwrap());
        }
        // The account's third failure costs 1 s, then 2, then 4; the
        // source's fourth 1 s, then 2: the longest counts.
        assert_eq!(delays, [0, 0, 1, 2, 4]);
        assert_eq!(shared.wait(&names, 100).await.unwrap(), 4);
        assert_eq!(shared.wait(&names, 103).await.unwrap(), 1);
        assert_eq!(shared.wait(&names[1..], 100).await.unwrap(), 2);
        // Clearing the account leaves the source's count.
        shared.clear("acct").await.unwrap();
        assert_eq!(shared.wait(&names, 100).await.unwrap(), 2);
        assert_eq!(shared.fail(&keys, &cfg, 100).await.unwrap(), 4);
        // Past forget_after, both start again.
        let later = 100 + cfg.forget_after_secs + 1;
        assert_eq!(shared.fail(&keys, &cfg, later).await.unwrap(), 0);
    }

    /// Many nodes failing on one account at once: every failure is counted
    /// in the shared entry, none is left to one node's own counts because
    /// it kept losing the compare-and-set race.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_failures_on_one_key_are_all_counted() {
        let shared = std::sync::Arc::new(store_throttle());
        let cfg = ThrottleConfig {
            free_failures_per_account: 1_000,
            ..ThrottleConfig::default()
        };
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let shared = std::sync::Arc::clone(&shared);
                tokio::spawn(
                    async move { shared.fail(&[("acct".to_string(), 1_000)], &cfg, 100).await },
                )
            })
            .collect();
        let mut refused = 0;
        for t in tasks {
            if t.await.unwrap().is_err() {
                refused += 1;
            }
        }
        assert_eq!(refused, 0, "failures left uncounted");
        let entry = shared.entry("acct").await.unwrap().unwrap();
        assert_eq!(entry.failures, 64);
    }
}
