//! Brute-force throttling of logins, per account and per source address.
//!
//! The first few failures are free; after that each failure makes the next
//! attempt wait twice as long as the last, up to a ceiling. Nothing sleeps:
//! the check answers how long to wait and the HTTP layer answers 429 with
//! `Retry-After`. Accounts are keyed by the name submitted, known or not, so
//! throttling reveals nothing about which accounts exist. State is in
//! memory, per node, bounded in size; idle entries are dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    failures: u32,
    last_failure: u64,
    blocked_until: u64,
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

    fn keys(account: &str, source: Option<&str>) -> (String, Option<String>) {
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
        let wait = |k: &str| {
            map.get(k)
                .map(|e| e.blocked_until.saturating_sub(now))
                .unwrap_or(0)
        };
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
        let mut bump = |k: String, free: u32| -> u64 {
            let e = map.entry(k).or_default();
            if now.saturating_sub(e.last_failure) > self.cfg.forget_after_secs {
                *e = Entry::default();
            }
            e.failures = e.failures.saturating_add(1);
            e.last_failure = now;
            if e.failures > free {
                let exp = (e.failures - free - 1).min(30);
                let delay = self
                    .cfg
                    .base_delay_secs
                    .saturating_mul(1u64 << exp)
                    .min(self.cfg.max_delay_secs);
                e.blocked_until = now.saturating_add(delay);
                delay
            } else {
                0
            }
        };
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
