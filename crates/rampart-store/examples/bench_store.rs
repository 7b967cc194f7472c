//! Store throughput, SQLite against PostgreSQL, in one run.
//!
//!   cargo run --release -p rampart-store --example bench_store [SECONDS] [TASKS,...]
//!
//! For each backend and each number of concurrent tasks: conditional writes
//! (`put` with `Expect::Any` on 1,000 keys) and reads (`get`) per second, and
//! the median and 99th percentile latency. SQLite is a file in a temporary
//! directory (WAL, `synchronous=FULL`); PostgreSQL is the server that
//! `RAMPART_BENCH_PG_URL` (or `RAMPART_TEST_PG_URL`, as `scripts/with-postgres`
//! sets it) names, in a fresh database, and is skipped without one. Run it
//! as `RAMPART_PG_FSYNC=on scripts/with-postgres cargo run …` so that the
//! server, like SQLite here, syncs every commit (the script's default,
//! `fsync=off`, is for tests).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rampart_core::SystemClock;
use rampart_store::{Expect, PgOptions, PgStore, SqliteStore, Store};

const KEYS: usize = 1_000;

async fn run(store: Arc<dyn Store>, tasks: usize, secs: u64, write: bool) -> (f64, f64, f64) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let s = store.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t;
            while Instant::now() < until {
                let key = format!("k{:04}", i % KEYS);
                let start = Instant::now();
                if write {
                    s.put("bench", &key, &[7u8; 256], Expect::Any)
                        .await
                        .unwrap();
                } else {
                    s.get("bench", &key).await.unwrap();
                }
                lat.push(start.elapsed());
                i += tasks;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort();
    let n = all.len().max(1);
    let p = |q: f64| {
        all.get(((n as f64 * q) as usize).min(n - 1))
            .copied()
            .unwrap_or_default()
    };
    (
        all.len() as f64 / secs as f64,
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
    )
}

async fn fill(store: &Arc<dyn Store>) {
    for i in 0..KEYS {
        store
            .put("bench", &format!("k{i:04}"), &[7u8; 256], Expect::Any)
            .await
            .unwrap();
    }
}

async fn bench(name: &str, store: Arc<dyn Store>, secs: u64, tasks: &[usize]) {
    fill(&store).await;
    for &t in tasks {
        for write in [true, false] {
            let (rate, p50, p99) = run(store.clone(), t, secs, write).await;
            println!(
                "{name:<10} {:<5} tasks={t:<3} {rate:>9.0} ops/s  p50 {p50:>6.3} ms  p99 {p99:>6.3} ms",
                if write { "put" } else { "get" }
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let tasks: Vec<usize> = args
        .get(2)
        .map(|s| s.split(',').filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16]);
    let clock = SystemClock::shared();

    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path(), true, clock.clone()).unwrap());
    bench("sqlite", sqlite, secs, &tasks).await;

    let url =
        std::env::var("RAMPART_BENCH_PG_URL").or_else(|_| std::env::var("RAMPART_TEST_PG_URL"));
    let Ok(url) = url else {
        println!("postgres   skipped: set RAMPART_BENCH_PG_URL or run under scripts/with-postgres");
        return;
    };
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let db = format!("rampart_bench_{}", std::process::id());
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap();
    let pg: Arc<dyn Store> = Arc::new(
        PgStore::connect(
            PgOptions {
                url: zeroize::Zeroizing::new(format!("{base}/{db}")),
                pool_size: tasks.iter().copied().max().unwrap_or(1).max(1),
                tls_ca: None,
                connect_timeout: Duration::from_secs(10),
            },
            clock,
        )
        .await
        .unwrap(),
    );
    bench("postgres", pg, secs, &tasks).await;
}
