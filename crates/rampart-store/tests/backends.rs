//! The same behaviour asked of every backend: SQLite always, PostgreSQL when
//! `RAMPART_TEST_PG_URL` names a server (`scripts/test` starts one through
//! `scripts/with-postgres`). Each PostgreSQL test gets a database of its own,
//! so the tests run in parallel against one server.

use std::sync::Arc;
use std::time::Duration;

use rampart_core::{ManualClock, SharedClock};
use rampart_store::testing::fresh_pg_database;
use rampart_store::{Expect, Op, PgOptions, PgStore, SqliteStore, Store, StoreError};
use zeroize::Zeroizing;

fn clock() -> SharedClock {
    Arc::new(ManualClock::at_unix_secs(100))
}

fn pg_options(url: &str) -> PgOptions {
    PgOptions {
        url: Zeroizing::new(url.to_string()),
        pool_size: 8,
        tls_ca: None,
        connect_timeout: Duration::from_secs(10),
    }
}

async fn pg_at(url: &str) -> Arc<dyn Store> {
    Arc::new(PgStore::connect(pg_options(url), clock()).await.unwrap())
}

/// Runs `$body(store_factory)` once per backend. The factory gives stores
/// that share one database, as the nodes of one deployment do.
macro_rules! on_every_backend {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_backend() {
                let file = tempfile::tempdir().unwrap();
                let dir = file.path().to_path_buf();
                $body(move || {
                    let dir = dir.clone();
                    async move {
                        Arc::new(SqliteStore::open(&dir, true, clock()).unwrap()) as Arc<dyn Store>
                    }
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_backend() {
                let Some(url) = fresh_pg_database("rampart_test").await else {
                    return;
                };
                $body(move || {
                    let url = url.clone();
                    async move { pg_at(&url).await }
                })
                .await;
            }
        }
    };
}

async fn versions_and_compare_and_set<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let s = open().await;
    assert_eq!(s.put("ns", "a", b"1", Expect::Absent).await.unwrap(), 1);
    assert!(matches!(
        s.put("ns", "a", b"x", Expect::Absent).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(s.put("ns", "a", b"2", Expect::Version(1)).await.unwrap(), 2);
    assert!(matches!(
        s.put("ns", "a", b"3", Expect::Version(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.put("ns", "missing", b"3", Expect::Version(1)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(s.put("ns", "a", b"4", Expect::Any).await.unwrap(), 3);
    assert_eq!(s.put("ns", "fresh", b"", Expect::Any).await.unwrap(), 1);
    let e = s.get("ns", "a").await.unwrap().unwrap();
    assert_eq!(
        (e.value.as_slice(), e.version, e.updated_at),
        (&b"4"[..], 3, 100)
    );
    assert_eq!(s.get("ns", "fresh").await.unwrap().unwrap().value, b"");
    assert!(s.get("other", "a").await.unwrap().is_none());

    // Deletes under each condition.
    assert!(matches!(
        s.delete("ns", "a", Expect::Version(2)).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(matches!(
        s.delete("ns", "a", Expect::Absent).await,
        Err(StoreError::Conflict { .. })
    ));
    assert!(s.delete("ns", "a", Expect::Version(3)).await.unwrap());
    assert!(!s.delete("ns", "a", Expect::Any).await.unwrap());
    assert!(!s.delete("ns", "a", Expect::Absent).await.unwrap());
    // A record deleted and written again starts over at version 1.
    assert_eq!(s.put("ns", "a", b"again", Expect::Absent).await.unwrap(), 1);

    // Binary values come back byte for byte.
    let all: Vec<u8> = (0..=255).collect();
    s.put("ns", "bin", &all, Expect::Any).await.unwrap();
    assert_eq!(s.get("ns", "bin").await.unwrap().unwrap().value, all);
    s.ping().await.unwrap();
    assert_eq!(
        s.schema_version().await.unwrap(),
        rampart_store::LATEST_VERSION
    );
}
on_every_backend!(compare_and_set, versions_and_compare_and_set);

async fn listing_is_literal_and_byte_ordered<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let s = open().await;
    for k in ["a_1", "a%2", "ab", "b", "a\\x", "aB", "a"] {
        s.put("ns", k, b"v", Expect::Any).await.unwrap();
    }
    s.put("other", "a_1", b"v", Expect::Any).await.unwrap();
    let keys = |v: Vec<(String, rampart_store::Entry)>| -> Vec<String> {
        v.into_iter().map(|(k, _)| k).collect()
    };
    // Wildcards in the prefix are plain characters.
    assert_eq!(keys(s.list("ns", "a_", 10).await.unwrap()), ["a_1"]);
    assert_eq!(keys(s.list("ns", "a%", 10).await.unwrap()), ["a%2"]);
    assert_eq!(keys(s.list("ns", "a\\", 10).await.unwrap()), ["a\\x"]);
    // Byte order, whatever the database's locale: upper case before
    // `\`, `_` and lower case.
    assert_eq!(
        keys(s.list("ns", "a", 10).await.unwrap()),
        ["a", "a%2", "aB", "a\\x", "a_1", "ab"]
    );
    assert_eq!(keys(s.list("ns", "", 2).await.unwrap()), ["a", "a%2"]);
    assert!(s.list("ns", "zz", 10).await.unwrap().is_empty());
    assert_eq!(s.list("ns", "", usize::MAX).await.unwrap().len(), 7);
}
on_every_backend!(listing, listing_is_literal_and_byte_ordered);

async fn batches_are_all_or_nothing<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let s = open().await;
    s.put("ns", "exists", b"v1", Expect::Any).await.unwrap();
    s.put("ns", "doomed", b"v1", Expect::Any).await.unwrap();
    let put = |key: &str, expect| Op::Put {
        ns: "ns".into(),
        key: key.into(),
        value: b"new".to_vec(),
        expect,
    };
    // The last step fails: the put and the delete before it are undone.
    let r = s
        .apply(vec![
            put("new", Expect::Absent),
            Op::Delete {
                ns: "ns".into(),
                key: "doomed".into(),
                expect: Expect::Version(1),
            },
            put("exists", Expect::Version(7)),
        ])
        .await;
    assert!(matches!(r, Err(StoreError::Conflict { ref key, .. }) if key == "exists"));
    assert!(s.get("ns", "new").await.unwrap().is_none());
    assert_eq!(s.get("ns", "doomed").await.unwrap().unwrap().version, 1);
    // The same steps with the right version all take effect.
    s.apply(vec![
        put("new", Expect::Absent),
        Op::Delete {
            ns: "ns".into(),
            key: "doomed".into(),
            expect: Expect::Version(1),
        },
        put("exists", Expect::Version(1)),
    ])
    .await
    .unwrap();
    assert_eq!(s.get("ns", "new").await.unwrap().unwrap().version, 1);
    assert!(s.get("ns", "doomed").await.unwrap().is_none());
    assert_eq!(s.get("ns", "exists").await.unwrap().unwrap().version, 2);
    // An empty batch is a no-op.
    s.apply(Vec::new()).await.unwrap();
}
on_every_backend!(batches, batches_are_all_or_nothing);

/// Read-modify-write increments from many tasks over two handles on one
/// database (two nodes): compare-and-set loses no update and lets exactly
/// one of many racing creators win.
async fn concurrent_writers_lose_nothing<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    let nodes = [open().await, open().await];
    nodes[0]
        .put("ctr", "n", b"0", Expect::Absent)
        .await
        .unwrap();
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let s = nodes[t % 2].clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for _ in 0..EACH {
                loop {
                    let e = s.get("ctr", "n").await.unwrap().unwrap();
                    let n: usize = std::str::from_utf8(&e.value).unwrap().parse().unwrap();
                    let next = (n + 1).to_string();
                    match s
                        .put("ctr", "n", next.as_bytes(), Expect::Version(e.version))
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let e = nodes[1].get("ctr", "n").await.unwrap().unwrap();
    assert_eq!(e.value, (TASKS * EACH).to_string().as_bytes());
    assert_eq!(e.version, (TASKS * EACH + 1) as u64);

    // Many creators of one record: one wins.
    let mut racers = Vec::new();
    for t in 0..TASKS {
        let s = nodes[t % 2].clone();
        racers.push(tokio::spawn(async move {
            s.put("race", "k", t.to_string().as_bytes(), Expect::Absent)
                .await
                .is_ok()
        }));
    }
    let mut winners = 0;
    for r in racers {
        winners += usize::from(r.await.unwrap());
    }
    assert_eq!(winners, 1);
}
on_every_backend!(concurrency, concurrent_writers_lose_nothing);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_starting_together_migrate_once_and_newer_schema_is_refused() {
    let Some(url) = fresh_pg_database("rampart_test").await else {
        return;
    };
    let mut starts = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        starts.push(tokio::spawn(async move {
            PgStore::connect(pg_options(&url), clock()).await
        }));
    }
    for s in starts {
        let s = s.await.unwrap().unwrap();
        assert_eq!(
            s.schema_version().await.unwrap(),
            rampart_store::LATEST_VERSION
        );
        assert_eq!(s.backend(), "postgres");
    }
    // A database a newer Rampart migrated is refused, not written.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let applied: i64 = client
        .query_one("SELECT COUNT(*) FROM rampart_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, i64::from(rampart_store::LATEST_VERSION));
    client
        .execute(
            "INSERT INTO rampart_schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
            &[],
        )
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    let err = PgStore::connect(pg_options(&url), clock())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NewerSchema { found: 999, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_errors_name_the_server_never_the_password() {
    // Nothing listens on a port just freed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = "s3cret-Pa55word";
    let mut opts = pg_options(&format!(
        "postgres://rampart:{secret}@127.0.0.1:{port}/rampartdb"
    ));
    opts.connect_timeout = Duration::from_secs(2);
    assert!(!format!("{opts:?}").contains(secret));
    let err = PgStore::connect(opts, clock())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}/rampartdb")),
        "{err}"
    );
    assert!(!err.contains(secret), "{err}");

    for bad in [
        format!("postgres://rampart:{secret}@127.0.0.1:notaport/db"),
        format!("host=127.0.0.1 password={secret} sslmode=sometimes"),
    ] {
        let err = PgStore::connect(pg_options(&bad), clock())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("connection string is not valid"), "{err}");
        assert!(!err.contains(secret), "{err}");
    }

    // sslmode=require without a CA to check the server against is refused
    // before any connection is tried.
    let err = PgStore::connect(
        pg_options(&format!(
            "postgres://rampart:{secret}@127.0.0.1:{port}/db?sslmode=require"
        )),
        clock(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("tls_ca"), "{err}");

    // A CA file that is not one is named.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let mut opts = pg_options(&format!("postgres://rampart:{secret}@127.0.0.1:{port}/db"));
    opts.tls_ca = Some(ca.clone());
    let err = PgStore::connect(opts, clock())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&ca.display().to_string()), "{err}");
}

/// With `tls_ca` every pooled connection is TLS, checked against that CA;
/// a server whose certificate another CA issued is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_is_verified_against_the_configured_ca() {
    let Some(url) = fresh_pg_database("rampart_test").await else {
        return;
    };
    let (Ok(ca), Ok(other_ca)) = (
        std::env::var("RAMPART_TEST_PG_CA"),
        std::env::var("RAMPART_TEST_PG_OTHER_CA"),
    ) else {
        println!("SKIP: the test server offers no TLS (RAMPART_TEST_PG_CA unset)");
        return;
    };
    let app = format!(
        "tls_{}",
        rampart_crypto::hex(&rampart_crypto::random_array::<6>().unwrap())
    );
    let with_ca = |ca: &str| {
        let mut o = pg_options(&format!("{url}?application_name={app}"));
        o.tls_ca = Some(ca.into());
        o.connect_timeout = Duration::from_secs(5);
        o
    };
    let s = PgStore::connect(with_ca(&ca), clock()).await.unwrap();
    s.put("ns", "k", b"over tls", Expect::Any).await.unwrap();
    assert_eq!(s.get("ns", "k").await.unwrap().unwrap().value, b"over tls");

    // The server's own view of this store's connections.
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT COUNT(*), COALESCE(bool_and(s.ssl), false) FROM pg_stat_ssl s
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&app],
        )
        .await
        .unwrap();
    let (count, all_tls): (i64, bool) = (row.get(0), row.get(1));
    assert!(
        count >= 1 && all_tls,
        "{count} connections, all TLS: {all_tls}"
    );
    drop(client);
    let _ = task.await;

    let err = PgStore::connect(with_ca(&other_ca), clock())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("certificate") || err.contains("Certificate"),
        "{err}"
    );
}
