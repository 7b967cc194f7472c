//! Test support (feature `test-support`, for this workspace's tests only):
//! fresh databases on the PostgreSQL server that `scripts/with-postgres`
//! starts and names in `RAMPART_TEST_PG_URL`.

// Test support: a test that cannot set up its database should stop there.
#![allow(clippy::expect_used)]

/// A URL to a new, empty database named `<prefix>_<16 random hex digits>`
/// on the test server, or `None`, after a SKIP note, when
/// `RAMPART_TEST_PG_URL` is not set. Panics (it is for tests) when the
/// server cannot be reached.
pub async fn fresh_pg_database(prefix: &str) -> Option<String> {
    let Ok(url) = std::env::var("RAMPART_TEST_PG_URL") else {
        println!("SKIP: RAMPART_TEST_PG_URL is not set; run under scripts/with-postgres for the PostgreSQL store");
        return None;
    };
    let random = rampart_crypto::random_array::<8>().expect("randomness for a database name");
    let name = format!("{prefix}_{}", rampart_crypto::hex(&random));
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL server");
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a test database");
    drop(client);
    let _ = task.await;
    let (base, _) = url.rsplit_once('/').expect("URL with a database");
    Some(format!("{base}/{name}"))
}
