//! Shared rate-limit buckets against a real Redis server
//! (`RAMPART_TEST_REDIS_URL`, which `scripts/test` provides through
//! `scripts/with-redis`): two nodes' counters over one Redis, with frozen
//! clocks so that only what the nodes take moves the buckets.

use std::sync::Arc;
use std::time::Duration;

use rampart_core::{ManualClock, SharedClock};
use rampart_edge::{CounterStore, Rate, SharedCounters, SharedLimitsOptions};
use zeroize::Zeroizing;

fn redis_url() -> Option<String> {
    match std::env::var("RAMPART_TEST_REDIS_URL") {
        Ok(u) => Some(u),
        Err(_) => {
            println!("SKIP: RAMPART_TEST_REDIS_URL is not set; run under scripts/with-redis");
            None
        }
    }
}

fn prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("rampart-test:{:016x}:", h.finish())
}

/// Options for `url`; the sync interval is long, as the tests sync by hand.
fn options(url: &str, prefix: &str, tls_ca: Option<&str>) -> SharedLimitsOptions {
    SharedLimitsOptions {
        url: Zeroizing::new(url.to_string()),
        sync_interval: Duration::from_secs(3600),
        key_prefix: prefix.to_string(),
        tls_ca: tls_ca.map(Into::into),
    }
}

async fn node(url: &str, prefix: &str, clock: SharedClock) -> Arc<SharedCounters> {
    SharedCounters::connect(options(url, prefix, None), clock)
        .await
        .unwrap()
}

/// Two nodes on `url` sharing a fresh key prefix (returned), their clocks
/// standing still.
async fn two_nodes(url: &str) -> (String, Arc<SharedCounters>, Arc<SharedCounters>) {
    let prefix = prefix();
    let clock: SharedClock = Arc::new(ManualClock::at_unix_secs(1_000));
    let a = node(url, &prefix, clock.clone()).await;
    let b = node(url, &prefix, clock).await;
    (prefix, a, b)
}

#[tokio::test]
async fn two_nodes_share_one_bucket() {
    let Some(url) = redis_url() else { return };
    let (prefix, a, b) = two_nodes(&url).await;
    let t = 1_000_000_000_000;
    // 10 tokens, refilling about once in 17 minutes: none refill here.
    let rate = Rate::new(10, 0.001);
    for _ in 0..6 {
        a.take("r|api", rate, t).unwrap();
    }
    assert_eq!(a.sync_now().await.unwrap(), 1);
    // B meets the bucket full, takes one, and learns at its sync that A
    // took six: three are left for everyone.
    b.take("r|api", rate, t).unwrap();
    assert_eq!(b.sync_now().await.unwrap(), 1);
    for _ in 0..3 {
        b.take("r|api", rate, t).unwrap();
    }
    let wait = b.take("r|api", rate, t).unwrap_err();
    assert!(wait > Duration::from_secs(60), "{wait:?}");
    b.sync_now().await.unwrap();
    // A last saw four left; at its next sync, having admitted nothing
    // since, it reads the bucket back: empty here too.
    a.sync_now().await.unwrap();
    assert!(a.take("r|api", rate, t).is_err());

    // What a node admits on a stale view is owed. A and B each see 9 left
    // of another bucket; B takes all 9, and before it syncs A admits one
    // more on its view. After both sync, the shared bucket is at -1.
    a.take("r|b2", rate, t).unwrap();
    a.sync_now().await.unwrap();
    b.take("r|b2", rate, t).unwrap();
    b.sync_now().await.unwrap();
    for _ in 0..8 {
        b.take("r|b2", rate, t).unwrap();
    }
    assert!(b.take("r|b2", rate, t).is_err());
    a.take("r|b2", rate, t).unwrap();
    b.sync_now().await.unwrap();
    a.sync_now().await.unwrap();
    assert!(a.take("r|b2", rate, t).is_err());
    b.sync_now().await.unwrap();
    assert!(b.take("r|b2", rate, t).is_err());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let left: String = redis::cmd("HGET")
        .arg(format!("{prefix}r|b2"))
        .arg("t")
        .query_async(&mut conn)
        .await
        .unwrap();
    let left: f64 = left.parse().unwrap();
    assert!((-1.01..-0.99).contains(&left), "{left}");
}

#[tokio::test]
async fn buckets_refill_by_redis_time() {
    let Some(url) = redis_url() else { return };
    let (_, a, b) = two_nodes(&url).await;
    let t = 1_000_000_000_000;
    // 5 tokens, 1000 a second. A empties the shared bucket.
    let fast = Rate::new(5, 1000.0);
    for _ in 0..5 {
        a.take("k", fast, t).unwrap();
    }
    a.sync_now().await.unwrap();
    // The nodes' clocks stand still; Redis's moves 50 ms, and the shared
    // bucket is full again when B next syncs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.take("k", fast, t).unwrap();
    b.sync_now().await.unwrap();
    for _ in 0..4 {
        b.take("k", fast, t).unwrap();
    }
    assert!(b.take("k", fast, t).is_err());
}

#[tokio::test]
async fn a_bad_address_or_password_is_an_error_that_never_shows_the_password() {
    let Some(url) = redis_url() else { return };
    let clock: SharedClock = Arc::new(ManualClock::at_unix_secs(1_000));
    let secret = "n0t-the-Pa55word";
    // The right server, the wrong password.
    let (_, rest) = url.split_once('@').unwrap();
    let wrong = format!("redis://:{secret}@{rest}");
    let err = SharedCounters::connect(options(&wrong, "x:", None), clock.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(!err.contains(secret), "{err}");
    assert!(
        err.contains(rest.trim_end_matches('/').split('/').next().unwrap()),
        "{err}"
    );
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for bad in [
        format!("redis://:{secret}@127.0.0.1:{port}/"),
        format!("notredis://:{secret}@127.0.0.1:{port}/"),
    ] {
        let err = SharedCounters::connect(options(&bad, "x:", None), clock.clone())
            .await
            .unwrap_err()
            .to_string();
        assert!(!err.contains(secret), "{err}");
    }
    assert!(!format!("{:?}", options(&wrong, "x:", None)).contains(secret));
}

/// Over `rediss://` with a CA file the connection is TLS and the server's
/// certificate is checked: the right CA works, another is refused, and a CA
/// file with a plain `redis://` URL is a mistake, not ignored.
#[tokio::test]
async fn tls_is_verified_against_the_configured_ca() {
    let Some(url) = redis_url() else { return };
    let (Ok(tls_url), Ok(ca), Ok(other)) = (
        std::env::var("RAMPART_TEST_REDIS_TLS_URL"),
        std::env::var("RAMPART_TEST_REDIS_CA"),
        std::env::var("RAMPART_TEST_REDIS_OTHER_CA"),
    ) else {
        println!("SKIP: the test Redis offers no TLS");
        return;
    };
    let clock: SharedClock = Arc::new(ManualClock::at_unix_secs(1_000));
    let connect = |url: &str, ca: &str| {
        SharedCounters::connect(options(url, &prefix(), Some(ca)), clock.clone())
    };
    let c = connect(&tls_url, &ca).await.unwrap();
    c.take("k", Rate::new(2, 1.0), 1).unwrap();
    assert_eq!(c.sync_now().await.unwrap(), 1);
    let err = connect(&tls_url, &other).await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = connect(&url, &ca).await.unwrap_err().to_string();
    assert!(err.contains("rediss://"), "{err}");
}
