//! Token buckets keyed by client address and by route. The counters live
//! behind [`CounterStore`] so that a shared (Redis) store can replace the
//! in-memory one; time comes from a [`Clock`](rampart_core::Clock).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// A bucket's shape: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Bucket capacity.
    pub burst: u32,
    /// Tokens added per second.
    pub per_second: f64,
}

impl Rate {
    /// A rate of `per_second` with a burst of `burst`.
    pub const fn new(burst: u32, per_second: f64) -> Rate {
        Rate { burst, per_second }
    }
}

/// The limits the edge applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimits {
    /// Per client address on ordinary routes.
    pub per_client: Rate,
    /// Per client address on routes that look like authentication.
    pub per_client_auth: Rate,
    /// Per route, all clients together.
    pub per_route: Rate,
    /// Per authenticated principal.
    pub per_principal: Rate,
}

impl Default for RateLimits {
    /// The defaults `rampart.toml` documents for `[edge.rate_limits]`.
    fn default() -> Self {
        rampart_config::EdgeRateLimits::default().into()
    }
}

impl From<rampart_config::EdgeRateLimits> for RateLimits {
    fn from(c: rampart_config::EdgeRateLimits) -> Self {
        let rate = |r: rampart_config::RouteRate| Rate::new(r.burst, r.per_second);
        RateLimits {
            per_client: rate(c.per_client),
            per_client_auth: rate(c.per_client_auth),
            per_route: rate(c.per_route),
            per_principal: rate(c.per_principal),
        }
    }
}

/// Where token counts are kept.
pub trait CounterStore: Send + Sync + std::fmt::Debug {
    /// Takes one token from `key`'s bucket at time `now_nanos` (Unix
    /// nanoseconds). `Err` carries how long until a token is available.
    fn take(&self, key: &str, rate: Rate, now_nanos: u64) -> Result<(), Duration>;
}

/// A process-local [`CounterStore`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// One token bucket: the tokens it held when it was last counted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    pub(crate) tokens: f64,
    /// When `tokens` was counted (Unix nanoseconds).
    pub(crate) at_nanos: u64,
}

impl Bucket {
    /// A full bucket at `now_nanos`.
    pub(crate) fn full(rate: Rate, now_nanos: u64) -> Bucket {
        Bucket {
            tokens: f64::from(rate.burst),
            at_nanos: now_nanos,
        }
    }

    /// Refills for the time since it was counted, then takes one token, or
    /// says how long until one is there.
    pub(crate) fn take(&mut self, rate: Rate, now_nanos: u64) -> Result<(), Duration> {
        let elapsed = now_nanos.saturating_sub(self.at_nanos) as f64 / 1e9;
        self.tokens = (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst));
        self.at_nanos = now_nanos.max(self.at_nanos);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate.per_second > 0.0 {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_second,
            ))
        } else {
            Err(Duration::from_secs(3600))
        }
    }
}

/// `key`'s entry, made by `make` if absent. Looks up before inserting, so
/// the common case allocates no key. `None` only if the map refused the
/// insert (it cannot).
pub(crate) fn entry<'m, V>(
    map: &'m mut HashMap<String, V>,
    key: &str,
    make: impl FnOnce() -> V,
) -> Option<&'m mut V> {
    if !map.contains_key(key) {
        map.insert(key.to_string(), make());
    }
    map.get_mut(key)
}

/// Above this many buckets, full ones are forgotten (they carry no state).
const PRUNE_ABOVE: usize = 100_000;

impl CounterStore for MemoryStore {
    fn take(&self, key: &str, rate: Rate, now_nanos: u64) -> Result<(), Duration> {
        let burst = f64::from(rate.burst);
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, b| {
                let elapsed = now_nanos.saturating_sub(b.at_nanos) as f64 / 1e9;
                b.tokens + elapsed * rate.per_second < burst
            });
            evict_least_recent(&mut map, PRUNE_ABOVE, |b| b.at_nanos);
        }
        // one lookup for a key seen before (every request but a client's
        // or a route's first)
        if let Some(b) = map.get_mut(key) {
            return b.take(rate, now_nanos);
        }
        let mut b = Bucket::full(rate, now_nanos);
        let taken = b.take(rate, now_nanos);
        map.insert(key.to_string(), b);
        taken
    }
}

/// Past `cap` entries, drops the least recently used until a tenth of
/// `cap` is free, so that many distinct keys (an IPv6 client can use as
/// many addresses as it likes) can neither grow memory without bound nor
/// make every request scan the map: a full scan happens at most once per
/// `cap / 10` new keys. A dropped bucket starts full again if its key comes
/// back, which only loosens the limit for it.
pub(crate) fn evict_least_recent<V>(
    map: &mut HashMap<String, V>,
    cap: usize,
    last_used: impl Fn(&V) -> u64,
) {
    if map.len() <= cap {
        return;
    }
    let keep = cap - cap / 10;
    if keep == 0 {
        map.clear();
        return;
    }
    let mut times: Vec<u64> = map.values().map(&last_used).collect();
    let cut = times.len() - keep;
    let (_, nth, _) = times.select_nth_unstable(cut);
    let threshold = *nth;
    map.retain(|_, v| last_used(v) > threshold);
}

/// Whether a route prefix looks like an authentication endpoint, which
/// gets the stricter per-client bucket.
pub fn looks_like_auth(path_prefix: &str) -> bool {
    let p = path_prefix.to_ascii_lowercase();
    [
        "login", "logon", "signin", "sign-in", "auth", "token", "session", "password", "mfa", "otp",
    ]
    .iter()
    .any(|w| p.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_and_refills_with_time() {
        let s = MemoryStore::default();
        let r = Rate::new(2, 1.0);
        let t0 = 1_000_000_000_000;
        assert!(s.take("k", r, t0).is_ok());
        assert!(s.take("k", r, t0).is_ok());
        let wait = s.take("k", r, t0).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(s.take("other", r, t0).is_ok());
        assert!(s.take("k", r, t0 + 1_000_000_000).is_ok());
        assert!(s.take("k", r, t0 + 1_000_000_000).is_err());
    }

    #[test]
    fn many_keys_are_bounded_and_the_least_recent_go_first() {
        let s = MemoryStore::default();
        let r = Rate::new(2, 0.001);
        let t0 = 1_000_000_000_000u64;
        // Each key used once (so not full): nothing the prune can forget.
        for i in 0..(PRUNE_ABOVE + 50) {
            let _ = s.take(&format!("c|2001:db8::{i:x}"), r, t0 + i as u64);
        }
        let map = s.buckets.lock().unwrap();
        assert!(map.len() <= PRUNE_ABOVE, "{}", map.len());
        assert!(map.len() >= PRUNE_ABOVE - PRUNE_ABOVE / 10);
        // The newest keys are kept, the oldest dropped.
        assert!(map.contains_key(&format!("c|2001:db8::{:x}", PRUNE_ABOVE + 49)));
        assert!(!map.contains_key("c|2001:db8::0"));
    }

    #[test]
    fn auth_like_paths() {
        assert!(looks_like_auth("/login"));
        assert!(looks_like_auth("/api/oauth/token"));
        assert!(!looks_like_auth("/api/orders"));
    }
}
