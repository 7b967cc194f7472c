//! Brute-force throttling of logins, per account and per source address.
//!
//! The first few failures are free; after that each failure makes the next
//! attempt wait twice as long as the last, up to a ceiling. Nothing sleeps:
//! the check answers how long to wait and the HTTP layer answers 429 with
//! `Retry-After`. Accounts are keyed by the name submitted, known or not, so
//! throttling reveals nothing about which accounts exist.
//!
//! The identity plane keeps the counts in its store (under keyed hashes of
//! the account names and addresses), so every node sharing a store sees
//! the failures made through any of them and a restart forgets nothing;
//! the prune job drops idle entries. [`Throttle`] is the same logic in
//! memory, per node, bounded in size: always kept up to date, it decides
//! alone while the store cannot be reached, so throttling never turns off.

use std::collections::HashMap;
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
            source.map(|s| format!("s:{s}")),
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
const CAS_ROUNDS: usize = 8;

/// The shared counts, kept in the identity plane's store.
impl Identity {
    /// How long an attempt for `account` from `source` must wait: from the
    /// counts all nodes share, or this node's own while the store fails.
    pub(crate) async fn throttle_check(
        &self,
        account: &str,
        source: Option<&str>,
        now: u64,
    ) -> Option<Duration> {
        let local = self.throttle.check(account, source, now);
        let (a, s) = Throttle::keys(account, source);
        let mut wait = 0;
        for k in std::iter::once(a).chain(s) {
            match self.shared_entry(&k).await {
                Ok(e) => wait = wait.max(e.map_or(0, |(e, _)| e.wait(now))),
                Err(e) => {
                    tracing::warn!(error = %e, "login throttle: the store did not answer; this node's counts decide");
                    return local;
                }
            }
        }
        (wait > 0).then(|| Duration::from_secs(wait))
    }

    /// Counts a failure, here and in the store; returns the delay imposed.
    pub(crate) async fn throttle_failure(
        &self,
        account: &str,
        source: Option<&str>,
        now: u64,
    ) -> Option<Duration> {
        let local = self.throttle.failure(account, source, now);
        let cfg = *self.throttle.config();
        let (a, s) = Throttle::keys(account, source);
        let mut delay = 0;
        let keys = std::iter::once((a, cfg.free_failures_per_account))
            .chain(s.map(|s| (s, cfg.free_failures_per_source)));
        for (k, free) in keys {
            match self.shared_fail(&k, &cfg, free, now).await {
                Ok(d) => delay = delay.max(d),
                Err(e) => {
                    tracing::warn!(error = %e, "login throttle: the store did not take a failure; this node's counts decide");
                    return local;
                }
            }
        }
        (delay > 0).then(|| Duration::from_secs(delay))
    }

    /// Clears the account's failures after a successful login, here and in
    /// the store (the source's count stands).
    pub(crate) async fn throttle_success(&self, account: &str) {
        self.throttle.success(account);
        let (a, _) = Throttle::keys(account, None);
        if let Err(e) = self
            .store
            .delete(NS_THROTTLE, &self.throttle_key(&a), Expect::Any)
            .await
        {
            tracing::warn!(error = %e, "login throttle: the store did not clear an account's failures");
        }
    }

    /// Deletes the shared entries that no longer matter; returns how many.
    pub(crate) async fn prune_throttle(&self, now: u64) -> Result<usize, IdentityError> {
        let cfg = *self.throttle.config();
        let mut gone = 0;
        for (k, e) in self.store.list(NS_THROTTLE, "", LIST_LIMIT).await? {
            let idle =
                serde_json::from_slice::<Entry>(&e.value).map_or(true, |t| t.idle(&cfg, now));
            if idle {
                match self
                    .store
                    .delete(NS_THROTTLE, &k, Expect::Version(e.version))
                    .await
                {
                    Ok(true) => gone += 1,
                    Ok(false) | Err(StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(gone)
    }

    /// The store key of an entry: a keyed hash, so the store holds no
    /// submitted account names or addresses.
    fn throttle_key(&self, key: &str) -> String {
        self.peppered("throttle", key.as_bytes())
    }

    async fn shared_entry(&self, key: &str) -> Result<Option<(Entry, u64)>, IdentityError> {
        let Some(e) = self.store.get(NS_THROTTLE, &self.throttle_key(key)).await? else {
            return Ok(None);
        };
        // An unreadable entry counts as none; the next failure rewrites it.
        Ok(serde_json::from_slice::<Entry>(&e.value)
            .ok()
            .map(|t| (t, e.version)))
    }

    async fn shared_fail(
        &self,
        key: &str,
        cfg: &ThrottleConfig,
        free: u32,
        now: u64,
    ) -> Result<u64, IdentityError> {
        let store_key = self.throttle_key(key);
        for _ in 0..CAS_ROUNDS {
            let current = self.store.get(NS_THROTTLE, &store_key).await?;
            let (mut entry, expect) = match &current {
                Some(e) => (
                    serde_json::from_slice::<Entry>(&e.value).unwrap_or_default(),
                    Expect::Version(e.version),
                ),
                None => (Entry::default(), Expect::Absent),
            };
            let delay = entry.fail(cfg, free, now);
            let value = crate::service::to_json(&entry)?;
            match self
                .store
                .put(NS_THROTTLE, &store_key, &value, expect)
                .await
            {
                Ok(_) => return Ok(delay),
                // Another attempt counted meanwhile: count on top of it.
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(IdentityError::Store(StoreError::Conflict {
            ns: NS_THROTTLE.into(),
            key: store_key,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
