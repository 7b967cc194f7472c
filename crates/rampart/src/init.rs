//! `rampart init`: a new data directory, built aside and moved into place in
//! one rename, so a failure part-way leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_config::Config;
use rampart_core::{SharedClock, SystemClock};
use rampart_crypto::{KdfParams, RootKey};
use rampart_store::{Keyring, RootKeySource, SqliteStore, Store};
use zeroize::Zeroizing;

use crate::cli::{DataArgs, InitArgs};
use crate::errors::CliError;
use crate::node::{self, ROOT_KEY_FILE};
use crate::{bootstrap, tls};

/// What a fresh data directory hands its operator, once.
pub struct Initialised {
    pub data_dir: PathBuf,
    pub source: RootKeySource,
    pub admin_credential: Zeroizing<String>,
}

pub async fn run(args: InitArgs) -> Result<(), CliError> {
    let config = args
        .config
        .as_deref()
        .map(Config::load)
        .transpose()
        .map_err(CliError::Config)?;
    let dir = node::data_dir(&args.data, config.as_ref());
    let control_ip = config
        .as_ref()
        .map(|c| c.control.listen.ip())
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let done = initialise(&dir, &args.data, control_ip, SystemClock::shared()).await?;
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
    println!("  bootstrap admin credential (shown once, store it now; only its hash is kept):");
    println!("    {}", done.admin_credential.as_str());
}

/// Creates the data directory at `dir`. Refuses a directory that already
/// holds anything; writes nothing if any step fails.
pub async fn initialise(
    dir: &Path,
    data: &DataArgs,
    control_ip: std::net::IpAddr,
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
    let result = build(&staging, pass, env_key, control_ip, clock).await;
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
    control_ip: std::net::IpAddr,
    clock: SharedClock,
) -> Result<(RootKeySource, Zeroizing<String>), CliError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(staging, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CliError::Input(format!("{}: {e}", staging.display())))?;
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
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(staging, true, clock.clone())?);
    let keyring = Keyring::initialise(store.clone(), root, source, kdf, clock.unix_secs()).await?;
    tls::generate_dev_pki(&keyring, staging, control_ip, clock.as_ref()).await?;
    let cred = bootstrap::create_admin(&keyring, clock.unix_secs()).await?;
    drop(keyring);
    drop(store);
    Ok((source, cred))
}
