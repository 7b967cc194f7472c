//! The login throttle's shared counts in Redis, for deployments that
//! configure `[redis]`: logins are rare, so each check, failure and success
//! is one round trip. A failure is one Lua script over the account's and
//! the source's keys, so concurrent failures through any number of nodes
//! are each counted once (no compare-and-set race to lose), and each key
//! expires once it no longer matters (`forget_after` past the last failure,
//! or the end of its delay if later). Time is the identity plane's clock,
//! passed in as the store backend's is, so that shared and local counts
//! agree; Redis's own clock only drives the expiry.
//!
//! Keys are `PREFIX` + `login-throttle:` + a keyed hash (under the
//! deployment's identity pepper) of the account name or address: Redis
//! never holds a submitted name.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::throttle::{SharedThrottle, SharedThrottleError, ThrottleConfig};

/// Counts one failure on each key (`ARGV[5..]` free failures each), the
/// same rule as the in-memory throttle: forgotten after `forget` seconds
/// without a failure, then past the free ones a delay of `base` doubling up
/// to `max`. A hash per key: `f` failures, `l` last failure, `b` blocked
/// until (Unix seconds). Answers the longest delay imposed.
const FAIL: &str = r"
local now = tonumber(ARGV[1])
local base = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local forget = tonumber(ARGV[4])
local longest = 0
for i, key in ipairs(KEYS) do
  local free = tonumber(ARGV[4 + i])
  local s = redis.call('HMGET', key, 'f', 'l', 'b')
  local f = tonumber(s[1]) or 0
  local l = tonumber(s[2]) or 0
  local b = tonumber(s[3]) or 0
  if now - l > forget then
    f = 0
    b = 0
  end
  f = f + 1
  local delay = 0
  if f > free then
    delay = math.min(base * 2 ^ math.min(f - free - 1, 30), max)
    b = now + delay
  end
  redis.call('HSET', key, 'f', f, 'l', now, 'b', b)
  redis.call('EXPIRE', key, math.max(forget, b - now, 0) + 1)
  if delay > longest then
    longest = delay
  end
end
return longest
";

/// Longest a login waits for Redis before this node's own counts decide:
/// a Redis that stopped answering (rather than refusing connections) must
/// not hold every login for the connection's own timeouts.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// The login throttle's shared counts in Redis.
pub struct RedisThrottle {
    conn: ConnectionManager,
    prefix: String,
    target: String,
    fail: redis::Script,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for RedisThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisThrottle")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisThrottle {
    /// Counts on `conn` (already connected; `target` is `host:port/db`, for
    /// messages), under keys that start with `key_prefix`.
    pub fn new(conn: ConnectionManager, target: String, key_prefix: &str) -> RedisThrottle {
        RedisThrottle {
            conn,
            prefix: format!("{key_prefix}login-throttle:"),
            target,
            fail: redis::Script::new(FAIL),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Calls to Redis that succeeded and that failed (the node's own counts
    /// then decided), for `/metrics`.
    pub fn call_counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one call to Redis within [`CALL_TIMEOUT`], counting how it went.
    async fn counted<T>(
        &self,
        call: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, SharedThrottleError> {
        let r = match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(SharedThrottleError::Redis {
                target: self.target.clone(),
                source,
            }),
            Err(_) => Err(SharedThrottleError::RedisTimeout {
                target: self.target.clone(),
                after: CALL_TIMEOUT,
            }),
        };
        let count = if r.is_ok() { &self.ok } else { &self.failed };
        count.fetch_add(1, Ordering::Relaxed);
        r
    }
}

#[async_trait::async_trait]
impl SharedThrottle for RedisThrottle {
    async fn wait(&self, keys: &[String], now: u64) -> Result<u64, SharedThrottleError> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.hget(self.key(k), "b");
        }
        let mut conn = self.conn.clone();
        let until: Vec<Option<u64>> = self.counted(pipe.query_async(&mut conn)).await?;
        Ok(until
            .into_iter()
            .map(|b| b.unwrap_or(0).saturating_sub(now))
            .max()
            .unwrap_or(0))
    }

    async fn fail(
        &self,
        keys: &[(String, u32)],
        cfg: &ThrottleConfig,
        now: u64,
    ) -> Result<u64, SharedThrottleError> {
        let mut call = self.fail.prepare_invoke();
        for (k, _) in keys {
            call.key(self.key(k));
        }
        call.arg(now)
            .arg(cfg.base_delay_secs)
            .arg(cfg.max_delay_secs)
            .arg(cfg.forget_after_secs);
        for (_, free) in keys {
            call.arg(*free);
        }
        let mut conn = self.conn.clone();
        // EVALSHA, loading the script first if Redis does not know it.
        let delay: u64 = self.counted(call.invoke_async(&mut conn)).await?;
        Ok(delay)
    }

    async fn clear(&self, key: &str) -> Result<(), SharedThrottleError> {
        let mut conn = self.conn.clone();
        let mut del = redis::cmd("DEL");
        del.arg(self.key(key));
        self.counted(del.query_async::<()>(&mut conn)).await
    }
}
