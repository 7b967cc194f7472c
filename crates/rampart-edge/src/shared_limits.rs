//! Rate-limit buckets that every node of a deployment shares through Redis.
//!
//! The request path never waits for the network: [`SharedCounters`] decides
//! each request from a local copy of its bucket, as [`MemoryStore`] does,
//! and counts what it admitted. A task sends those counts to Redis every
//! sync interval, in one pipelined round trip: per bucket, a Lua script
//! refills the shared bucket by Redis's own clock, takes the counts of
//! every node off it, and answers what is left, which becomes the local
//! copy (less whatever was admitted here meanwhile). Buckets used here in
//! the last ten seconds are read back at every sync even if this node
//! admitted nothing since the last, so a bucket others have emptied is
//! empty here within one interval.
//!
//! What that costs in precision: between two syncs each node admits from
//! its last view, so a deployment may admit up to what its nodes admit in
//! one interval beyond a bucket's limit (and a node that meets a bucket for
//! the first time starts from a full one). What is over-admitted is owed:
//! the shared bucket goes below zero (down to minus its burst) and refills
//! from there, so over time the limit holds.
//!
//! With a `rediss://` URL the connection is TLS (rustls), checked against
//! the CA file given, else the system's roots.
//!
//! If Redis cannot be reached, the local buckets keep limiting (each node
//! then enforces the limits on its own), the counts are kept and sent once
//! it answers again, and each failed sync is logged and counted.
//!
//! [`MemoryStore`]: crate::MemoryStore

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rampart_core::SharedClock;
use redis::aio::ConnectionManager;
use zeroize::Zeroizing;

use crate::ratelimit::{Bucket, CounterStore, Rate};

/// Refills, charges and answers one shared bucket (a hash of `t`, the
/// tokens, and `at`, when they were counted). Time is Redis's own, so the
/// nodes' clocks do not matter. The key expires once the bucket would be
/// full again.
const SCRIPT: &str = r"
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) + tonumber(now_t[2]) / 1000000
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local used = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
end
tokens = math.max(tokens - used, -burst)
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
local ttl = 86400
if rate > 0 then
  ttl = math.min(math.ceil((burst - tokens) / rate) + 1, 86400)
end
redis.call('EXPIRE', KEYS[1], ttl)
return tostring(tokens)
";

/// A bucket unused this long, with nothing left to send, is forgotten here.
const IDLE: Duration = Duration::from_secs(120);

/// Most buckets kept here. Past it (many client addresses), the least
/// recently used are dropped with any unsent counts: the shared limit is
/// then looser for them, never stricter.
const MAX_SLOTS: usize = 200_000;

/// A bucket used this recently is read back at every sync even when this
/// node has admitted nothing since the last one, so that what other nodes
/// took shows here within an interval.
const REFRESH: Duration = Duration::from_secs(10);

/// How to reach Redis and how often to sync.
pub struct SharedLimitsOptions {
    /// `redis://[:password@]host:port/[db]`. It may carry a password, so it
    /// is kept zeroized and never shown.
    pub url: Zeroizing<String>,
    /// How often this node's counts go to Redis.
    pub sync_interval: Duration,
    /// Prefix of every key, so that one Redis can serve several
    /// deployments.
    pub key_prefix: String,
    /// CA certificates (PEM) that a `rediss://` server's certificate must
    /// chain to; without it, the system's roots.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SharedLimitsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimitsOptions")
            .field("url", &"<redacted>")
            .field("sync_interval", &self.sync_interval)
            .field("key_prefix", &self.key_prefix)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

/// Why shared counters could not start.
#[derive(Debug, thiserror::Error)]
#[error("redis {target}: {why}")]
pub struct SharedLimitsError {
    target: String,
    why: String,
}

struct Slot {
    /// The bucket as this node sees it.
    bucket: Bucket,
    rate: Rate,
    /// Admitted here and not yet sent.
    pending: u32,
    last_used_nanos: u64,
}

/// A [`CounterStore`] whose buckets all nodes share through Redis.
pub struct SharedCounters {
    slots: Mutex<HashMap<String, Slot>>,
    prefix: String,
    target: String,
    clock: SharedClock,
    script: redis::Script,
    conn: ConnectionManager,
    syncs: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for SharedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCounters")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// `host:port/db` of a Redis URL, for messages (never its password).
fn describe(info: &redis::ConnectionInfo) -> String {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => {
            format!("{host}:{port}/{}", info.redis_settings().db())
        }
        redis::ConnectionAddr::Unix(path) => path.display().to_string(),
        other => other.to_string(),
    }
}

fn loopback(info: &redis::ConnectionInfo) -> bool {
    match info.addr() {
        redis::ConnectionAddr::Tcp(host, _) => {
            matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1" | "[::1]")
        }
        redis::ConnectionAddr::Unix(_) => true,
        _ => false,
    }
}

fn lock(m: &Mutex<HashMap<String, Slot>>) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connects to the Redis at `url` (`redis://` or `rediss://`, TLS checked
/// against the CA file `tls_ca` if given, else the system's roots) and
/// checks that it answers; returns the connection and `host:port/db`, for
/// messages. The rate-limit buckets and the login throttle both use it.
pub async fn connect_redis(
    url: &Zeroizing<String>,
    tls_ca: Option<&std::path::Path>,
) -> Result<(ConnectionManager, String), SharedLimitsError> {
    use redis::IntoConnectionInfo;
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| SharedLimitsError {
            target: "(url)".into(),
            // The parser's message does not quote the URL.
            why: format!("the connection URL is not valid: {}", e.category()),
        })?;
    let target = describe(&info);
    let fail = |e: redis::RedisError| SharedLimitsError {
        target: target.clone(),
        why: e.to_string(),
    };
    let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
    let client = match tls_ca {
        Some(ca) if tls => {
            let pem = std::fs::read(ca).map_err(|e| SharedLimitsError {
                target: target.clone(),
                why: format!("{}: {e}", ca.display()),
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(fail)?
        }
        Some(_) => {
            return Err(SharedLimitsError {
                target,
                why: "a CA file (tls_ca) needs a rediss:// URL".into(),
            })
        }
        None => {
            if !tls && !loopback(&info) {
                tracing::warn!(target_addr = %target, "Redis connection without TLS: use a rediss:// URL unless the network is private");
            }
            redis::Client::open(info).map_err(fail)?
        }
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2);
    let conn = ConnectionManager::new_with_config(client, config)
        .await
        .map_err(fail)?;
    Ok((conn, target))
}

impl SharedCounters {
    /// Connects, checks that Redis answers, and starts syncing every
    /// `sync_interval` on the current Tokio runtime (the task ends when the
    /// counters are dropped).
    pub async fn connect(
        opts: SharedLimitsOptions,
        clock: SharedClock,
    ) -> Result<Arc<SharedCounters>, SharedLimitsError> {
        let (mut conn, target) = connect_redis(&opts.url, opts.tls_ca.as_deref()).await?;
        let fail = |e: redis::RedisError| SharedLimitsError {
            target: target.clone(),
            why: e.to_string(),
        };
        let script = redis::Script::new(SCRIPT);
        script
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(fail)?;
        let this = Arc::new(SharedCounters {
            slots: Mutex::new(HashMap::new()),
            prefix: opts.key_prefix,
            target,
            clock,
            script,
            conn,
            syncs: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        tokio::spawn(sync_loop(Arc::downgrade(&this), opts.sync_interval));
        Ok(this)
    }

    /// Syncs now rather than at the next tick (for tests and shutdown);
    /// returns how many buckets went to Redis.
    pub async fn sync_now(&self) -> Result<usize, SharedLimitsError> {
        let mut conn = self.conn.clone();
        self.sync(&mut conn).await.map_err(|e| SharedLimitsError {
            target: self.target.clone(),
            why: e.to_string(),
        })
    }

    /// Syncs done and failed so far.
    pub fn sync_counts(&self) -> (u64, u64) {
        (
            self.syncs.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    async fn sync(&self, conn: &mut ConnectionManager) -> Result<usize, redis::RedisError> {
        let now = self.clock.unix_nanos();
        let idle = IDLE.as_nanos() as u64;
        let refresh = REFRESH.as_nanos() as u64;
        let batch: Vec<(String, Rate, u32)> = {
            let mut slots = lock(&self.slots);
            slots.retain(|_, s| s.pending > 0 || now.saturating_sub(s.last_used_nanos) < idle);
            slots
                .iter_mut()
                .filter(|(_, s)| s.pending > 0 || now.saturating_sub(s.last_used_nanos) < refresh)
                .map(|(k, s)| {
                    let used = std::mem::take(&mut s.pending);
                    (k.clone(), s.rate, used)
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for (key, rate, used) in &batch {
            pipe.invoke_script(
                self.script
                    .key(format!("{}{key}", self.prefix))
                    .arg(rate.burst)
                    .arg(rate.per_second)
                    .arg(*used),
            );
        }
        let answers: Result<Vec<String>, _> = match pipe.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted and forgot the script: load it, go again.
                self.script.prepare_invoke().load_async(conn).await?;
                pipe.query_async(conn).await
            }
            other => other,
        };
        let answers = match answers {
            Ok(a) => a,
            Err(e) => {
                // Not counted in Redis: send these counts next time.
                let mut slots = lock(&self.slots);
                for (key, _, used) in &batch {
                    if let Some(s) = slots.get_mut(key) {
                        s.pending = s.pending.saturating_add(*used);
                    }
                }
                return Err(e);
            }
        };
        let now = self.clock.unix_nanos();
        let mut slots = lock(&self.slots);
        for ((key, rate, _), left) in batch.iter().zip(answers) {
            let Ok(left) = left.parse::<f64>() else {
                continue;
            };
            if let Some(s) = slots.get_mut(key) {
                // What was admitted here since the batch left is owed too.
                s.bucket.tokens = (left - f64::from(s.pending)).min(f64::from(rate.burst));
                s.bucket.at_nanos = now;
            }
        }
        Ok(batch.len())
    }
}

async fn sync_loop(counters: Weak<SharedCounters>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = counters.upgrade() else {
            return;
        };
        let mut conn = c.conn.clone();
        match c.sync(&mut conn).await {
            Ok(_) => {
                c.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let failed = c.failures.fetch_add(1, Ordering::Relaxed) + 1;
                // Once, then every 100th, so that an outage does not flood the log.
                if failed == 1 || failed % 100 == 0 {
                    tracing::warn!(
                        target_addr = %c.target,
                        error = %e.to_string(),
                        failed,
                        "shared rate limits: sync with Redis failed; limiting per node until it answers"
                    );
                }
            }
        }
    }
}

impl CounterStore for SharedCounters {
    fn take(&self, key: &str, rate: Rate, now_nanos: u64) -> Result<(), Duration> {
        let mut slots = lock(&self.slots);
        if slots.len() >= MAX_SLOTS {
            crate::ratelimit::evict_least_recent(&mut slots, MAX_SLOTS - 1, |s| s.last_used_nanos);
        }
        let made = || Slot {
            bucket: Bucket::full(rate, now_nanos),
            rate,
            pending: 0,
            last_used_nanos: now_nanos,
        };
        let Some(s) = crate::ratelimit::entry(&mut slots, key, made) else {
            return Err(Duration::from_secs(1));
        };
        // The route's rate may have changed on reload: the newest applies.
        s.rate = rate;
        s.last_used_nanos = now_nanos;
        s.bucket.take(rate, now_nanos)?;
        s.pending = s.pending.saturating_add(1);
        Ok(())
    }
}
