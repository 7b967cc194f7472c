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

/// A store that, once armed, holds the next read (`get` or `list`) in one
/// namespace after it has read, until released: a read that lands just before a change made by
/// the same process, for tests of what a plane caches or stages from it.
/// It can also refuse every write to one record as a conflict, as if
/// another writer always got there first, or fail every call in one
/// namespace, as a shared database would while unreachable.
#[derive(Debug)]
pub struct HeldStore {
    inner: std::sync::Arc<dyn crate::Store>,
    refused: std::sync::Mutex<Option<(String, String)>>,
    down: std::sync::Mutex<Option<String>>,
    ns: std::sync::Mutex<String>,
    armed: std::sync::atomic::AtomicBool,
    reached: tokio::sync::Notify,
    release: tokio::sync::Notify,
}

impl HeldStore {
    /// Wraps `inner`; nothing is held until [`HeldStore::hold_next_read`].
    pub fn new(inner: std::sync::Arc<dyn crate::Store>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(HeldStore {
            inner,
            refused: std::sync::Mutex::new(None),
            down: std::sync::Mutex::new(None),
            ns: std::sync::Mutex::new(String::new()),
            armed: false.into(),
            reached: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        })
    }

    /// For a test kit that builds its own store and takes a function to
    /// wrap it: that function, and a cell that holds the wrapper once the
    /// kit has called it.
    #[allow(clippy::type_complexity)]
    pub fn wrapping() -> (
        std::sync::Arc<std::sync::OnceLock<std::sync::Arc<HeldStore>>>,
        impl FnOnce(std::sync::Arc<dyn crate::Store>) -> std::sync::Arc<dyn crate::Store>,
    ) {
        let cell: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<HeldStore>>> =
            std::sync::Arc::default();
        let slot = cell.clone();
        let wrap =
            move |inner: std::sync::Arc<dyn crate::Store>| -> std::sync::Arc<dyn crate::Store> {
                let h = HeldStore::new(inner);
                let _ = slot.set(h.clone());
                h
            };
        (cell, wrap)
    }

    /// Holds the next read in `ns` once it has read.
    pub fn hold_next_read(&self, ns: &str) {
        *self.ns.lock().unwrap_or_else(|e| e.into_inner()) = ns.to_owned();
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// From now on, every `put` to `key` in `ns` fails with a conflict.
    pub fn refuse_puts_to(&self, ns: &str, key: &str) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((ns.to_owned(), key.to_owned()));
    }

    /// From now on, every call in `ns` fails as if the database could not
    /// be reached.
    pub fn fail_namespace(&self, ns: &str) {
        *self.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(ns.to_owned());
    }

    /// The failure of a call in `ns`, if that namespace is down.
    fn check_up(&self, ns: &str) -> Result<(), crate::StoreError> {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if down.as_deref() == Some(ns) {
            return Err(crate::StoreError::Backend("connection refused".into()));
        }
        Ok(())
    }

    /// Waits until the held read has read.
    pub async fn reached(&self) {
        self.reached.notified().await;
    }

    /// Lets the held read return.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// A read in `ns` has read: holds it if armed for `ns`.
    async fn hold(&self, ns: &str) {
        let held = *self.ns.lock().unwrap_or_else(|e| e.into_inner()) == ns;
        if held && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
    }
}

#[async_trait::async_trait]
impl crate::Store for HeldStore {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<crate::Entry>, crate::StoreError> {
        self.check_up(ns)?;
        let got = self.inner.get(ns, key).await;
        self.hold(ns).await;
        got
    }

    async fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        expect: crate::Expect,
    ) -> Result<u64, crate::StoreError> {
        self.check_up(ns)?;
        let refused = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(n, k)| n == ns && k == key);
        if refused {
            return Err(crate::StoreError::Conflict {
                ns: ns.to_owned(),
                key: key.to_owned(),
            });
        }
        self.inner.put(ns, key, value, expect).await
    }

    async fn delete(
        &self,
        ns: &str,
        key: &str,
        expect: crate::Expect,
    ) -> Result<bool, crate::StoreError> {
        self.check_up(ns)?;
        self.inner.delete(ns, key, expect).await
    }

    async fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, crate::Entry)>, crate::StoreError> {
        self.check_up(ns)?;
        let got = self.inner.list(ns, prefix, limit).await;
        self.hold(ns).await;
        got
    }

    async fn apply(&self, ops: Vec<crate::Op>) -> Result<(), crate::StoreError> {
        for op in &ops {
            let (crate::Op::Put { ns, .. } | crate::Op::Delete { ns, .. }) = op;
            self.check_up(ns)?;
        }
        self.inner.apply(ops).await
    }

    async fn ping(&self) -> Result<(), crate::StoreError> {
        self.inner.ping().await
    }

    async fn schema_version(&self) -> Result<u32, crate::StoreError> {
        self.inner.schema_version().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
