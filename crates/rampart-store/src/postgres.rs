//! The backend for many nodes: one PostgreSQL database that every node of a
//! deployment shares.
//!
//! The schema is the SQLite backend's one table (`rampart_records`, with
//! `rampart_schema_migrations` beside it), so a record means the same on
//! both. Each conditional write is one statement whose `WHERE` or
//! `ON CONFLICT` clause is the condition, so two nodes writing the same
//! record at once cannot both pass a version check: the row lock decides,
//! and the loser gets [`StoreError::Conflict`]. Batches run in one
//! transaction. Keys compare byte-wise (`COLLATE "C"`), as in SQLite, so
//! listings come back in the same order whatever the database's locale.
//!
//! Migrations take a transaction-scoped advisory lock first, so nodes that
//! start together migrate once. The connection string carries a password:
//! it is held zeroized and never printed; errors and `Debug` name only the
//! host, port and database.
//!
//! TLS: with a CA file the connection must use TLS and the server's
//! certificate must chain to that CA and name the host (rustls); without
//! one the connection is plain, which is only for loopback or a private
//! network, and a warning says so at start for any other host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rampart_core::SharedClock;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;
use zeroize::Zeroizing;

use crate::migrations::LATEST_VERSION;
use crate::{Entry, Expect, Op, Store, StoreError};

/// An arbitrary constant that names Rampart's migration lock among the
/// database's advisory locks.
const MIGRATION_LOCK: i64 = 0x7261_6d70_6172_7431;

/// The PostgreSQL schema, step by step; the versions match the SQLite
/// backend's, and a step is never edited once released.
const MIGRATIONS: &[(u32, &str, &str)] = &[(
    1,
    "records",
    r#"CREATE TABLE rampart_records (
        ns TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        value BYTEA NOT NULL,
        version BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (ns, key)
    )"#,
)];

/// How to reach the database.
pub struct PgOptions {
    /// A `postgres://` URL or a `key=value` connection string. It carries
    /// the password, so it is kept zeroized and never shown.
    pub url: Zeroizing<String>,
    /// Most connections this node keeps open.
    pub pool_size: usize,
    /// CA certificates (PEM) the server's certificate must chain to; when
    /// set, TLS is required.
    pub tls_ca: Option<PathBuf>,
    /// How long to wait for a connection, made or pooled.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &"<redacted>")
            .field("pool_size", &self.pool_size)
            .field("tls_ca", &self.tls_ca)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The PostgreSQL backend.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    target: Arc<str>,
    clock: SharedClock,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// `host:port/database` of a connection string, for messages.
fn describe(cfg: &tokio_postgres::Config) -> String {
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let db = cfg
        .get_dbname()
        .or(cfg.get_user())
        .unwrap_or("postgres")
        .to_string();
    format!("{host}:{port}/{db}")
}

/// The message of a PostgreSQL error and its causes (the server's own
/// message for a database error), never the connection string.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn tls_config(ca: &Path) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let io = |why: String| StoreError::Io {
        path: ca.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, why),
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| io(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| io(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| io(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(io("no PEM certificate in the file".into()));
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PgStore {
    /// Connects, checks the server answers, and brings the schema to
    /// [`LATEST_VERSION`] (refusing a newer one).
    pub async fn connect(opts: PgOptions, clock: SharedClock) -> Result<Self, StoreError> {
        let mut cfg: tokio_postgres::Config = opts.url.parse().map_err(|e| {
            StoreError::Backend(format!(
                "the PostgreSQL connection string is not valid: {}",
                pg_message(&e)
            ))
        })?;
        let target: Arc<str> = describe(&cfg).into();
        cfg.connect_timeout(opts.connect_timeout);
        if cfg.get_application_name().is_none() {
            cfg.application_name("rampart");
        }
        let manager_cfg = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &opts.tls_ca {
            Some(ca) => {
                cfg.ssl_mode(SslMode::Require);
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(ca)?);
                Manager::from_config(cfg, tls, manager_cfg)
            }
            None => {
                if cfg.get_ssl_mode() == SslMode::Require {
                    return Err(StoreError::Backend(format!(
                        "{target}: sslmode=require needs a CA file to check the server against ([store] tls_ca)"
                    )));
                }
                cfg.ssl_mode(SslMode::Disable);
                let local = cfg.get_hosts().iter().all(|h| match h {
                    Host::Tcp(h) => matches!(h.as_str(), "localhost" | "127.0.0.1" | "::1"),
                    #[cfg(unix)]
                    Host::Unix(_) => true,
                });
                if !local {
                    tracing::warn!(%target, "PostgreSQL connection without TLS: set [store] tls_ca unless the network is private");
                }
                Manager::from_config(cfg, NoTls, manager_cfg)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.connect_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| StoreError::Backend(format!("{target}: {e}")))?;
        let store = PgStore {
            pool,
            target,
            clock,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// `host:port/database`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn err(&self, e: tokio_postgres::Error) -> StoreError {
        StoreError::Backend(format!("{}: {}", self.target, pg_message(&e)))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            let why = match &e {
                deadpool_postgres::PoolError::Backend(e) => pg_message(e),
                other => other.to_string(),
            };
            StoreError::Backend(format!("{}: {why}", self.target))
        })
    }

    async fn migrate(&self) -> Result<Vec<u32>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.err(e))?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS rampart_schema_migrations (
                version INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )",
        )
        .await
        .map_err(|e| self.err(e))?;
        let current = self.version_in(&tx).await?;
        if current > LATEST_VERSION {
            return Err(StoreError::NewerSchema {
                found: current,
                supported: LATEST_VERSION,
            });
        }
        let now = self.clock.unix_secs() as i64;
        let mut applied = Vec::new();
        for &(version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            tx.batch_execute(sql).await.map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO rampart_schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                &[&(version as i32), &name, &now],
            )
            .await
            .map_err(|e| self.err(e))?;
            applied.push(version);
        }
        tx.commit().await.map_err(|e| self.err(e))?;
        if !applied.is_empty() {
            tracing::info!(target = %self.target, ?applied, "PostgreSQL schema migrated");
        }
        Ok(applied)
    }

    async fn version_in(&self, c: &impl GenericClient) -> Result<u32, StoreError> {
        let row = c
            .query_one("SELECT MAX(version) FROM rampart_schema_migrations", &[])
            .await
            .map_err(|e| self.err(e))?;
        let v: Option<i32> = row.try_get(0).map_err(|e| self.err(e))?;
        Ok(v.map_or(0, |v| v.max(0) as u32))
    }

    /// At most one row of `sql`, through the connection's statement cache
    /// (one round trip once the statement is prepared, not two).
    async fn one_row(
        &self,
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let stmt = c.prepare_cached(sql).await?;
        c.query_opt(&stmt, params).await
    }

    /// Runs `sql` through the statement cache; the rows it changed.
    async fn exec(
        &self,
        c: &impl GenericClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let stmt = c.prepare_cached(sql).await?;
        c.execute(&stmt, params).await
    }

    async fn put_in(
        &self,
        c: &impl GenericClient,
        ns: &str,
        key: &str,
        value: &[u8],
        expect: Expect,
        now: i64,
    ) -> Result<u64, StoreError> {
        let row = match expect {
            Expect::Any => {
                self.one_row(
                    c,
                    "INSERT INTO rampart_records (ns, key, value, version, updated_at)
                     VALUES ($1, $2, $3, 1, $4)
                     ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value,
                         version = rampart_records.version + 1, updated_at = EXCLUDED.updated_at
                     RETURNING version",
                    &[&ns, &key, &value, &now],
                )
                .await
            }
            Expect::Absent => {
                self.one_row(
                    c,
                    "INSERT INTO rampart_records (ns, key, value, version, updated_at)
                     VALUES ($1, $2, $3, 1, $4)
                     ON CONFLICT (ns, key) DO NOTHING
                     RETURNING version",
                    &[&ns, &key, &value, &now],
                )
                .await
            }
            Expect::Version(v) => {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                self.one_row(
                    c,
                    "UPDATE rampart_records SET value = $3, version = version + 1, updated_at = $4
                     WHERE ns = $1 AND key = $2 AND version = $5
                     RETURNING version",
                    &[&ns, &key, &value, &now, &v],
                )
                .await
            }
        }
        .map_err(|e| self.err(e))?;
        match row {
            Some(row) => {
                let v: i64 = row.try_get(0).map_err(|e| self.err(e))?;
                Ok(v as u64)
            }
            None => Err(conflict(ns, key)),
        }
    }

    async fn delete_in(
        &self,
        c: &impl GenericClient,
        ns: &str,
        key: &str,
        expect: Expect,
    ) -> Result<bool, StoreError> {
        match expect {
            Expect::Any => {
                let n = self
                    .exec(
                        c,
                        "DELETE FROM rampart_records WHERE ns = $1 AND key = $2",
                        &[&ns, &key],
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                Ok(n > 0)
            }
            Expect::Absent => {
                let row = self
                    .one_row(
                        c,
                        "SELECT 1 FROM rampart_records WHERE ns = $1 AND key = $2",
                        &[&ns, &key],
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                match row {
                    Some(_) => Err(conflict(ns, key)),
                    None => Ok(false),
                }
            }
            Expect::Version(v) => {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                let n = self
                    .exec(
                        c,
                        "DELETE FROM rampart_records WHERE ns = $1 AND key = $2 AND version = $3",
                        &[&ns, &key, &v],
                    )
                    .await
                    .map_err(|e| self.err(e))?;
                if n == 0 {
                    Err(conflict(ns, key))
                } else {
                    Ok(true)
                }
            }
        }
    }
}

fn conflict(ns: &str, key: &str) -> StoreError {
    StoreError::Conflict {
        ns: ns.to_string(),
        key: key.to_string(),
    }
}

fn entry(row: &tokio_postgres::Row, first: usize) -> Result<Entry, tokio_postgres::Error> {
    Ok(Entry {
        value: row.try_get(first)?,
        version: row.try_get::<_, i64>(first + 1)? as u64,
        updated_at: row.try_get::<_, i64>(first + 2)? as u64,
    })
}

#[async_trait]
impl Store for PgStore {
    async fn get(&self, ns: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        let c = self.client().await?;
        let row = self
            .one_row(
                &c,
                "SELECT value, version, updated_at FROM rampart_records WHERE ns = $1 AND key = $2",
                &[&ns, &key],
            )
            .await
            .map_err(|e| self.err(e))?;
        row.map(|r| entry(&r, 0))
            .transpose()
            .map_err(|e| self.err(e))
    }

    async fn put(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        expect: Expect,
    ) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let now = self.clock.unix_secs() as i64;
        self.put_in(&c, ns, key, value, expect, now).await
    }

    async fn delete(&self, ns: &str, key: &str, expect: Expect) -> Result<bool, StoreError> {
        let c = self.client().await?;
        self.delete_in(&c, ns, key, expect).await
    }

    async fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Entry)>, StoreError> {
        let c = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let stmt = c
            .prepare_cached(
                "SELECT key, value, version, updated_at FROM rampart_records
                 WHERE ns = $1 AND key >= $2 AND starts_with(key, $2)
                 ORDER BY key LIMIT $3",
            )
            .await
            .map_err(|e| self.err(e))?;
        let rows = c
            .query(&stmt, &[&ns, &prefix, &limit])
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| Ok((r.try_get::<_, String>(0)?, entry(r, 1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(|e| self.err(e))
    }

    async fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let now = self.clock.unix_secs() as i64;
        let tx = c.transaction().await.map_err(|e| self.err(e))?;
        for op in &ops {
            // An error drops `tx`, which rolls every earlier step back.
            match op {
                Op::Put {
                    ns,
                    key,
                    value,
                    expect,
                } => {
                    self.put_in(&tx, ns, key, value, *expect, now).await?;
                }
                Op::Delete { ns, key, expect } => {
                    self.delete_in(&tx, ns, key, *expect).await?;
                }
            }
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        c.query_one("SELECT 1", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    async fn schema_version(&self) -> Result<u32, StoreError> {
        let c = self.client().await?;
        self.version_in(&c).await
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
