//! The embedded backend: one SQLite file in WAL mode with full fsync, so an
//! acknowledged write survives a crash.
//!
//! Writes take the database's write lock when their transaction begins
//! (`BEGIN IMMEDIATE`). A transaction that read first and asked for the lock
//! later would fail at once ("database is locked") whenever another process
//! on the same file, such as a `rampart keys` command beside `rampart up`,
//! had written in between; taken up front, the lock is waited for instead
//! (up to the busy timeout).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rampart_core::SharedClock;
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::migrations;
use crate::{Entry, Expect, Op, Store, StoreError};

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "rampart.db";

/// The SQLite backend.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    clock: SharedClock,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if `create`) the database in `data_dir` and migrates it.
    pub fn open(data_dir: &Path, create: bool, clock: SharedClock) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !create && !path.exists() {
            return Err(StoreError::NotInitialised(data_dir.display().to_string()));
        }
        let mut conn = Connection::open(&path).map_err(|e| StoreError::Io {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA foreign_keys = ON;
             PRAGMA busy_timeout = 5000;",
        )?;
        migrations::migrate(&mut conn, clock.unix_secs())?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
            clock,
        })
    }

    /// An in-memory database, for tests.
    pub fn in_memory(clock: SharedClock) -> Result<Self, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        migrations::migrate(&mut conn, clock.unix_secs())?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: PathBuf::from(":memory:"),
            clock,
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, u64) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        let now = self.clock.unix_secs();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Backend("connection lock poisoned".into()))?;
            f(&mut guard, now)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
    }
}

fn current(tx: &Transaction<'_>, ns: &str, key: &str) -> Result<Option<u64>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT version FROM records WHERE ns = ?1 AND key = ?2",
            params![ns, key],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|v| v as u64))
}

fn check(expect: Expect, found: Option<u64>, ns: &str, key: &str) -> Result<(), StoreError> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => found.is_none(),
        Expect::Version(v) => found == Some(v),
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            ns: ns.to_string(),
            key: key.to_string(),
        })
    }
}

fn put_in(
    tx: &Transaction<'_>,
    ns: &str,
    key: &str,
    value: &[u8],
    expect: Expect,
    now: u64,
) -> Result<u64, StoreError> {
    let found = current(tx, ns, key)?;
    check(expect, found, ns, key)?;
    let version = found.unwrap_or(0) + 1;
    tx.execute(
        "INSERT INTO records (ns, key, value, version, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value,
             version = excluded.version, updated_at = excluded.updated_at",
        params![ns, key, value, version as i64, now as i64],
    )?;
    Ok(version)
}

fn delete_in(
    tx: &Transaction<'_>,
    ns: &str,
    key: &str,
    expect: Expect,
) -> Result<bool, StoreError> {
    let found = current(tx, ns, key)?;
    check(expect, found, ns, key)?;
    let n = tx.execute(
        "DELETE FROM records WHERE ns = ?1 AND key = ?2",
        params![ns, key],
    )?;
    Ok(n > 0)
}

/// Escapes LIKE wildcards so a prefix matches literally.
fn like_prefix(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        let (ns, key) = (ns.to_string(), key.to_string());
        self.with(move |c, _| {
            let mut stmt = c.prepare_cached(
                "SELECT value, version, updated_at FROM records WHERE ns = ?1 AND key = ?2",
            )?;
            Ok(stmt
                .query_row(params![ns, key], |r| {
                    Ok(Entry {
                        value: r.get(0)?,
                        version: r.get::<_, i64>(1)? as u64,
                        updated_at: r.get::<_, i64>(2)? as u64,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<u64, StoreError> {
        let (ns, key, value) = (ns.to_string(), key.to_string(), value.to_vec());
        self.with(move |c, now| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let v = put_in(&tx, &ns, &key, &value, expect, now)?;
            tx.commit()?;
            Ok(v)
        })
        .await
    }

    async fn delete(&self, ns: &str, key: &str, expect: Expect) -> Result<bool, StoreError> {
        let (ns, key) = (ns.to_string(), key.to_string());
        self.with(move |c, _| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gone = delete_in(&tx, &ns, &key, expect)?;
            tx.commit()?;
            Ok(gone)
        })
        .await
    }

    async fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, StoreError> {
        let (ns, pattern) = (ns.to_string(), like_prefix(prefix));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |c, _| {
            let mut stmt = c.prepare_cached(
                "SELECT key, value, version, updated_at FROM records
                 WHERE ns = ?1 AND key LIKE ?2 ESCAPE '\\' ORDER BY key LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![ns, pattern, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Entry {
                        value: r.get(1)?,
                        version: r.get::<_, i64>(2)? as u64,
                        updated_at: r.get::<_, i64>(3)? as u64,
                    },
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        self.with(move |c, now| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for op in &ops {
                match op {
                    Op::Put {
                        ns,
                        key,
                        value,
                        expect,
                    } => {
                        put_in(&tx, ns, key, value, *expect, now)?;
                    }
                    Op::Delete { ns, key, expect } => {
                        delete_in(&tx, ns, key, *expect)?;
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c, _| {
            c.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    async fn schema_version(&self) -> Result<u32, StoreError> {
        self.with(|c, _| migrations::current_version(c)).await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_core::{ManualClock, SystemClock};

    fn store() -> SqliteStore {
        SqliteStore::in_memory(Arc::new(ManualClock::at_unix_secs(100))).unwrap()
    }

    #[tokio::test]
    async fn versions_and_compare_and_set() {
        let s = store();
        assert_eq!(s.put("ns", "a", b"1", Expect::Absent).await.unwrap(), 1);
        assert!(matches!(
            s.put("ns", "a", b"x", Expect::Absent).await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(s.put("ns", "a", b"2", Expect::Version(1)).await.unwrap(), 2);
        assert!(s.put("ns", "a", b"3", Expect::Version(1)).await.is_err());
        let e = s.get("ns", "a").await.unwrap().unwrap();
        assert_eq!(
            (e.value.as_slice(), e.version, e.updated_at),
            (&b"2"[..], 2, 100)
        );
        assert!(s.get("other", "a").await.unwrap().is_none());
        assert!(s.delete("ns", "a", Expect::Version(2)).await.unwrap());
        assert!(!s.delete("ns", "a", Expect::Any).await.unwrap());
    }

    #[tokio::test]
    async fn list_prefix_is_literal() {
        let s = store();
        for k in ["a_1", "a%2", "ab", "b"] {
            s.put("ns", k, b"v", Expect::Any).await.unwrap();
        }
        let keys: Vec<String> = s
            .list("ns", "a_", 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a_1"]);
        assert_eq!(s.list("ns", "", 2).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn batches_are_atomic() {
        let s = store();
        s.put("ns", "exists", b"v", Expect::Any).await.unwrap();
        let r = s
            .apply(vec![
                Op::Put {
                    ns: "ns".into(),
                    key: "new".into(),
                    value: b"v".to_vec(),
                    expect: Expect::Absent,
                },
                Op::Put {
                    ns: "ns".into(),
                    key: "exists".into(),
                    value: b"v".to_vec(),
                    expect: Expect::Absent,
                },
            ])
            .await;
        assert!(r.is_err());
        assert!(s.get("ns", "new").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn file_database_survives_reopen_and_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let clock = SystemClock::shared();
        assert!(matches!(
            SqliteStore::open(dir.path(), false, clock.clone()),
            Err(StoreError::NotInitialised(_))
        ));
        {
            let s = SqliteStore::open(dir.path(), true, clock.clone()).unwrap();
            s.put("ns", "k", b"durable", Expect::Any).await.unwrap();
            assert_eq!(s.schema_version().await.unwrap(), crate::LATEST_VERSION);
        }
        let s = SqliteStore::open(dir.path(), false, clock).unwrap();
        assert_eq!(s.get("ns", "k").await.unwrap().unwrap().value, b"durable");
        let mode: String = s
            .conn
            .lock()
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
