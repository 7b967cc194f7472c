//! Opening a node's data directory: find the root key, open the store,
//! unlock the keyring. Shared by every command that touches the data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_config::{Config, StoreBackend};
use rampart_core::SharedClock;
use rampart_crypto::RootKey;
use rampart_store::{Keyring, PgOptions, PgStore, RootKeySource, RootMeta, SqliteStore, Store};
use zeroize::Zeroizing;

use crate::cli::DataArgs;
use crate::errors::CliError;

/// The key file's name inside the data directory.
pub const ROOT_KEY_FILE: &str = "root.key";
/// The environment variable holding a base64 root key.
pub const ROOT_KEY_ENV: &str = "RAMPART_ROOT_KEY";
/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "rampart-data";

/// An unlocked node.
pub struct Node {
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
}

/// The data directory: the flag, else the config's, else ./rampart-data.
pub fn data_dir(args: &DataArgs, config: Option<&Config>) -> PathBuf {
    args.data_dir
        .clone()
        .or_else(|| config.and_then(|c| c.data_dir().cloned()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

/// Reads a passphrase from the named environment variable.
pub fn passphrase(var: &str) -> Result<Zeroizing<String>, CliError> {
    secret_from_env(var, str::is_empty, " (named by --passphrase-env)")
}

/// A secret from the environment variable `var`, never echoed; `blank`
/// says which values count as empty, `context` ends every message.
fn secret_from_env(
    var: &str,
    blank: impl Fn(&str) -> bool,
    context: &str,
) -> Result<Zeroizing<String>, CliError> {
    let state = match std::env::var(var) {
        Ok(v) if !blank(&v) => return Ok(Zeroizing::new(v)),
        Ok(_) => "is empty",
        Err(std::env::VarError::NotPresent) => "is not set",
        Err(std::env::VarError::NotUnicode(_)) => "is not valid UTF-8",
    };
    Err(CliError::Input(format!(
        "environment variable {var} {state}{context}"
    )))
}

/// The root key given in `RAMPART_ROOT_KEY`, if set.
pub fn env_root_key() -> Result<Option<RootKey>, CliError> {
    match std::env::var(ROOT_KEY_ENV) {
        Ok(v) => RootKey::from_base64(&Zeroizing::new(v))
            .map(Some)
            .map_err(|e| CliError::Input(format!("{ROOT_KEY_ENV}: {e}"))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(CliError::Input(format!(
            "{ROOT_KEY_ENV}: invalid root key: not valid UTF-8"
        ))),
    }
}

/// The store the configuration names (SQLite without one).
pub fn backend(config: Option<&Config>) -> &StoreBackend {
    static SQLITE: StoreBackend = StoreBackend::Sqlite;
    config.map_or(&SQLITE, |c| &c.store)
}

/// Whether `dir` holds an initialised node: its SQLite file, or for a
/// shared PostgreSQL store the data directory `rampart init` made.
pub fn is_initialised(dir: &Path, config: Option<&Config>) -> bool {
    match backend(config) {
        StoreBackend::Sqlite => dir.join(rampart_store::DB_FILE).is_file(),
        StoreBackend::Postgres(_) => dir.join("tls").is_dir(),
    }
}

/// A connection string from the environment variable `var` (named by the
/// config's `field`), never echoed.
pub fn url_from_env(var: &str, what: &str, field: &str) -> Result<Zeroizing<String>, CliError> {
    secret_from_env(
        var,
        |v| v.trim().is_empty(),
        &format!(": it must hold {what} ({field})"),
    )
}

/// Opens the store the configuration names: the SQLite file in `dir`
/// (created if `create`), or the PostgreSQL database that the variable
/// `[store] url_env` points at, migrated to this build's schema.
pub async fn open_store(
    config: Option<&Config>,
    dir: &Path,
    create: bool,
    clock: SharedClock,
) -> Result<Arc<dyn Store>, CliError> {
    match backend(config) {
        StoreBackend::Sqlite => Ok(Arc::new(SqliteStore::open(dir, create, clock)?)),
        StoreBackend::Postgres(pg) => {
            let url = url_from_env(
                &pg.url_env,
                "the PostgreSQL connection string",
                "[store] url_env",
            )?;
            let opts = PgOptions {
                url,
                pool_size: pg.pool_size as usize,
                tls_ca: pg.tls_ca.clone(),
                connect_timeout: std::time::Duration::from_secs(u64::from(
                    pg.connect_timeout_seconds,
                )),
            };
            Ok(Arc::new(PgStore::connect(opts, clock).await?))
        }
    }
}

/// The root key derived from `pass` with the Argon2id parameters the store
/// records; `whose` names the store and `instead` ends the message when
/// its key is not passphrase-derived.
pub fn passphrase_root_key(
    pass: &str,
    meta: &RootMeta,
    whose: &str,
    instead: &str,
) -> Result<RootKey, CliError> {
    let kdf = meta.kdf.as_ref().ok_or_else(|| {
        CliError::Input(format!(
            "{whose} root key is not derived from a passphrase: drop --passphrase-env{instead}"
        ))
    })?;
    Ok(RootKey::from_passphrase(pass.as_bytes(), kdf)?)
}

/// Opens an initialised data directory and unlocks it with its root key.
pub async fn open(
    dir: &Path,
    args: &DataArgs,
    config: Option<&Config>,
    clock: SharedClock,
) -> Result<Node, CliError> {
    if !is_initialised(dir, config) {
        let hint = match (backend(config), config.and_then(|c| c.source.as_ref())) {
            (StoreBackend::Postgres(_), Some(file)) => format!(" --config {}", file.display()),
            _ => String::new(),
        };
        return Err(CliError::Input(format!(
            "data directory {} is not initialised: run `rampart init --data-dir {}{hint}` first",
            dir.display(),
            dir.display()
        )));
    }
    // Read whatever the key input is before touching the store, so a bad key
    // input fails without opening (let alone changing) anything.
    let pass = args.passphrase_env.as_deref().map(passphrase).transpose()?;
    let env_key = if pass.is_none() {
        env_root_key()?
    } else {
        None
    };
    let key_file = dir.join(ROOT_KEY_FILE);
    let file_key = if pass.is_none() && env_key.is_none() && key_file.exists() {
        Some(RootKey::read_file(&key_file)?)
    } else {
        None
    };

    let store = open_store(config, dir, false, clock).await?;
    let meta = RootMeta::read(store.as_ref()).await?.ok_or_else(|| {
        CliError::Input(match backend(config) {
            StoreBackend::Sqlite => format!(
                "data directory {} has no root key record: it was not initialised by `rampart init`",
                dir.display()
            ),
            StoreBackend::Postgres(pg) => format!(
                "the PostgreSQL store in {} has no root key record: run `rampart init` against it first",
                pg.url_env
            ),
        })
    })?;
    let root = match (pass, env_key, file_key) {
        (Some(p), _, _) => passphrase_root_key(&p, &meta, "this data directory's", "")?,
        (None, Some(k), _) | (None, None, Some(k)) => k,
        (None, None, None) => {
            return Err(CliError::Input(match meta.source {
                RootKeySource::Passphrase => "this data directory's root key is derived from a passphrase: pass --passphrase-env VAR".to_string(),
                RootKeySource::Env => format!("this data directory's root key is given in {ROOT_KEY_ENV}, which is not set"),
                RootKeySource::File => format!("root key file {} is missing (or set {ROOT_KEY_ENV})", key_file.display()),
            }))
        }
    };
    let keyring = Keyring::unlock(store.clone(), root).await?;
    Ok(Node {
        store,
        keyring: Arc::new(keyring),
    })
}
