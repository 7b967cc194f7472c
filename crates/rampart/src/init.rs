//! `rampart init`: a new data directory, built aside and moved into place in
//! one rename, so a failure part-way leaves nothing behind.

use std::path::{Path, PathBuf};

use rampart_config::{Config, StoreBackend};
use rampart_core::{SharedClock, SystemClock};
use rampart_crypto::{KdfParams, RootKey};
use rampart_store::{Keyring, RootKeySource, RootMeta};
use zeroize::Zeroizing;

use crate::cli::{DataArgs, InitArgs};
use crate::errors::CliError;
use crate::node::{self, ROOT_KEY_FILE};
use crate::{bootstrap, tls};

/// What a fresh data directory hands its operator, once.
pub struct Initialised {
    pub data_dir: PathBuf,
    pub source: RootKeySource,
    /// The bootstrap admin's credential; `None` for a node that joined a
    /// shared store another node initialised (its admins already exist).
    pub admin_credential: Option<Zeroizing<String>>,
    /// Whether the records are in a PostgreSQL store other nodes share.
    pub shared: bool,
}

pub async fn run(args: InitArgs) -> Result<(), CliError> {
    let config = args
        .data
        .config
        .as_deref()
        .map(Config::load)
        .transpose()
        .map_err(CliError::Config)?;
    let dir = node::data_dir(&args.data, config.as_ref());
    let done = initialise(&dir, &args.data, config.as_ref(), SystemClock::shared()).await?;
    print_initialised(&done);
    Ok(())
}

pub fn print_initialised(done: &Initialised) {
    let d = done.data_dir.display();
    println!("initialised data directory {d}");
    match done.source {
        RootKeySource::File => println!(
            "  root key: {d}/{ROOT_KEY_FILE} (mode 0600); back it up apart from the data: without it nothing here can be read"
        ),
        RootKeySource::Passphrase => {
            println!("  root key: derived from your passphrase (Argon2id); pass the same --passphrase-env to `rampart up`")
        }
        RootKeySource::Env => println!("  root key: from {}; set it for `rampart up` too", node::ROOT_KEY_ENV),
    }
    println!("  control API CA certificate: {d}/tls/ca.pem");
    match &done.admin_credential {
        Some(cred) => {
            if done.shared {
                println!("  store: PostgreSQL, shared; other nodes join it with `rampart init` and the same root key");
                if done.source == RootKeySource::File {
                    println!("    (give them this node's key: RAMPART_ROOT_KEY=\"$(cat {d}/{ROOT_KEY_FILE})\")");
                }
            }
            println!("  bootstrap admin credential (shown once, store it now; only its hash is kept):");
            println!("    {}", cred.as_str());
        }
        None => println!(
            "  store: joined the shared PostgreSQL store another node initialised; its admins and keys are this node's too"
        ),
    }
}

/// Creates the data directory at `dir`. Refuses a directory that already
/// holds anything; writes nothing if any step fails.
pub async fn initialise(
    dir: &Path,
    data: &DataArgs,
    config: Option<&Config>,
    clock: SharedClock,
) -> Result<Initialised, CliError> {
    // Everything that can be wrong with the input is checked before any write.
    let pass = data
        .passphrase_env
        .as_deref()
        .map(node::passphrase)
        .transpose()?;
    let env_key = if pass.is_none() {
        node::env_root_key()?
    } else {
        None
    };
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .map_err(|e| CliError::Input(format!("{}: {e}", dir.display())))?
            .next()
            .is_some();
        if non_empty {
            return Err(CliError::Input(format!(
                "{} already exists and is not empty: refusing to initialise over it",
                dir.display()
            )));
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .ok_or_else(|| CliError::Input(format!("{} is not a directory name", dir.display())))?;
    let suffix = rampart_crypto::hex(&rampart_crypto::random_array::<6>()?);
    let staging = parent.join(format!(".{}.init-{suffix}", name.to_string_lossy()));
    std::fs::create_dir(&staging).map_err(|e| {
        CliError::Input(format!(
            "cannot create data directory in {}: {e}",
            parent.display()
        ))
    })?;
    let result = build(&staging, pass, env_key, config, clock).await;
    let result = result.and_then(|(source, cred)| {
        if dir.exists() {
            std::fs::remove_dir(dir)
                .map_err(|e| CliError::Input(format!("{}: {e}", dir.display())))?;
        }
        std::fs::rename(&staging, dir).map_err(|e| {
            CliError::Input(format!(
                "cannot move data directory into {}: {e}",
                dir.display()
            ))
        })?;
        Ok((source, cred))
    });
    match result {
        Ok((source, admin_credential)) => Ok(Initialised {
            data_dir: dir.to_path_buf(),
            source,
            admin_credential,
            shared: matches!(node::backend(config), StoreBackend::Postgres(_)),
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

async fn build(
    staging: &Path,
    pass: Option<Zeroizing<String>>,
    env_key: Option<RootKey>,
    config: Option<&Config>,
    clock: SharedClock,
) -> Result<(RootKeySource, Option<Zeroizing<String>>), CliError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CliError::Input(format!("{}: {e}", staging.display())))?;
    }
    let store = node::open_store(config, staging, true, clock.clone()).await?;
    if let Some(meta) = RootMeta::read(store.as_ref()).await? {
        // A shared store another node initialised: join it with its root key.
        let root = match (pass, env_key) {
            (Some(p), _) => node::passphrase_root_key(
                &p,
                &meta,
                "the shared store's",
                " and set RAMPART_ROOT_KEY",
            )?,
            (None, Some(k)) => k,
            (None, None) => {
                return Err(CliError::Input(format!(
                    "the shared store is already initialised: to join it, give this node the same root key ({} in {}, or --passphrase-env for a passphrase-derived key)",
                    match meta.source {
                        RootKeySource::File => "the first node's root.key, base64,",
                        _ => "the key",
                    },
                    node::ROOT_KEY_ENV
                )))
            }
        };
        let keyring = Keyring::unlock(store.clone(), root).await?;
        if meta.source == RootKeySource::File {
            // `rampart up` on this node finds the key where the first
            // node keeps it.
            keyring.root().write_file(&staging.join(ROOT_KEY_FILE))?;
        }
        tls::write_dev_ca(&keyring, staging).await?;
        return Ok((meta.source, None));
    }
    let (root, source, kdf) = match (pass, env_key) {
        (Some(p), _) => {
            let kdf = KdfParams::recommended()?;
            (
                RootKey::from_passphrase(p.as_bytes(), &kdf)?,
                RootKeySource::Passphrase,
                Some(kdf),
            )
        }
        (None, Some(k)) => (k, RootKeySource::Env, None),
        (None, None) => {
            let k = RootKey::generate()?;
            k.write_file(&staging.join(ROOT_KEY_FILE))?;
            (k, RootKeySource::File, None)
        }
    };
    let keyring = Keyring::initialise(store.clone(), root, source, kdf, clock.unix_secs()).await?;
    tls::generate_dev_pki(&keyring, staging, clock.as_ref()).await?;
    let cred = bootstrap::create_admin(&keyring, clock.unix_secs()).await?;
    drop(keyring);
    drop(store);
    Ok((source, Some(cred)))
}
