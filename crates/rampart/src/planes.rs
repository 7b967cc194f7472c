//! Starting the planes inside `rampart up`: the audit log first (everything
//! else writes to it), then keys, secrets and service tokens, then the
//! scheduler that rotates, purges and applies retention.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rampart_audit::{Audit, AuditKeys, AuditOptions, RetentionPolicy, Tier};
use rampart_config::Config;
use rampart_core::SharedClock;
use rampart_crypto::{random_array, SecretBytes};
use rampart_keys::policy::{Effect, Statement};
use rampart_keys::{Auditor, KeyService, KeySpec, Policies, ServiceTokens};
use rampart_secrets::SecretService;
use rampart_store::Keyring;
use zeroize::Zeroizing;

use crate::api::Planes;
use crate::errors::CliError;

/// The audit log's directory inside the data directory.
pub const AUDIT_DIR: &str = "audit";

/// The audit log's keys, kept wrapped by the root key in the keyring and
/// separate from every other plane's keys.
pub async fn audit_keys(keyring: &Keyring) -> Result<AuditKeys, CliError> {
    let fresh = || Ok(SecretBytes::new(random_array::<32>()?.to_vec()));
    let enc = keyring.secret("audit/encryption", fresh).await?;
    let seed = keyring.secret("audit/signing", fresh).await?;
    let to32 = |s: &SecretBytes| -> Result<Zeroizing<[u8; 32]>, CliError> {
        let arr: [u8; 32] = s
            .expose()
            .try_into()
            .map_err(|_| CliError::Runtime("stored audit key has the wrong length".into()))?;
        Ok(Zeroizing::new(arr))
    };
    let seed = to32(&seed)?;
    Ok(AuditKeys {
        encryption_key: to32(&enc)?,
        signing_key: ed25519_dalek::SigningKey::from_bytes(&seed),
    })
}

/// The audit log's options from the configuration.
pub fn audit_options(data_dir: &Path, config: &Config) -> AuditOptions {
    let r = &config.audit.retention;
    let mut o = AuditOptions::new(data_dir.join(AUDIT_DIR));
    o.retention = RetentionPolicy::default()
        .with(Tier::Security, r.security)
        .with(Tier::Processing, r.processing)
        .with(Tier::Application, r.application)
        .with(Tier::Network, r.network)
        .with(Tier::ApiAccess, r.api_access);
    o.checkpoint_every_records = u64::from(config.audit.checkpoint_every_records);
    o.checkpoint_every = Duration::from_secs(u64::from(config.audit.checkpoint_every_seconds));
    o.checkpoint_dir = config.audit.checkpoint_dir.clone();
    o
}

/// Opens the audit log for writing (one writer per data directory).
pub async fn open_audit(
    keyring: &Keyring,
    data_dir: &Path,
    config: &Config,
    clock: SharedClock,
) -> Result<Arc<Audit>, CliError> {
    let keys = audit_keys(keyring).await?;
    let (audit, report) = Audit::open(audit_options(data_dir, config), keys, clock)
        .map_err(|e| CliError::Runtime(format!("audit log: {e}")))?;
    for torn in report.torn_tails() {
        println!("audit log: cut a torn tail after a crash: {torn:?}");
    }
    Ok(Arc::new(audit))
}

/// The statement every environment starts with: the platform admin may do
/// everything. Anything else is denied until a policy allows it.
fn admin_baseline() -> Statement {
    Statement {
        id: "platform-admin".into(),
        effect: Effect::Allow,
        principals: vec!["role:admin".into()],
        actions: vec!["*".into()],
        resources: vec!["*".into()],
        conditions: Default::default(),
    }
}

/// Starts keys, secrets and service tokens; ensures the keys `rampart.toml` declares.
pub async fn start(
    keyring: Arc<Keyring>,
    audit: Arc<Audit>,
    config: &Config,
    clock: SharedClock,
) -> Result<Planes, CliError> {
    let store = keyring.store().clone();
    let plane_err = |e: rampart_keys::KeysError| CliError::Runtime(format!("keys plane: {e}"));
    let tokens = ServiceTokens::open(&keyring).await.map_err(plane_err)?;
    let keys = KeyService::new(
        keyring,
        Policies::new(store.clone()),
        Auditor::new(audit, &config.node.name),
        clock.clone(),
    );
    for env in &config.environments {
        if keys
            .policies()
            .get(&env.name)
            .await
            .map_err(plane_err)?
            .is_empty()
        {
            keys.policies()
                .set(&env.name, vec![admin_baseline()])
                .await
                .map_err(plane_err)?;
        }
    }
    for k in &config.keys {
        let spec = KeySpec {
            description: k.description.clone(),
            rotation_period_days: Some(k.rotation_days),
        };
        keys.ensure_key(&k.environment, &k.name, spec)
            .await
            .map_err(plane_err)?;
    }
    let secrets = SecretService::new(keys.clone(), store, clock);
    Ok(Planes {
        keys,
        secrets,
        tokens,
    })
}

/// Runs the periodic jobs until the process ends: key rotation and
/// destruction, secret rotation and purge, audit retention.
pub fn spawn_scheduler(planes: Arc<crate::api::AppState>, audit: Arc<Audit>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = planes.clock.unix_secs();
            if let Some(p) = &planes.planes {
                match p.keys.rotate_due(now).await {
                    Ok(done) if !done.is_empty() => tracing::info!(?done, "rotated keys"),
                    Err(e) => tracing::error!(error = %e, "key rotation failed"),
                    _ => {}
                }
                match p.keys.purge_due(now).await {
                    Ok(done) if !done.is_empty() => tracing::info!(?done, "destroyed keys"),
                    Err(e) => tracing::error!(error = %e, "key destruction failed"),
                    _ => {}
                }
                match p.secrets.purge_due(now).await {
                    Ok(done) if !done.is_empty() => tracing::info!(?done, "purged secrets"),
                    Err(e) => tracing::error!(error = %e, "secret purge failed"),
                    _ => {}
                }
                match p.secrets.rotate_due(now).await {
                    Ok(done) => {
                        for (name, r) in done {
                            match r {
                                Ok(v) => {
                                    tracing::info!(secret = %name, version = v, "rotated secret")
                                }
                                Err(e) => {
                                    tracing::error!(secret = %name, error = %e, "secret rotation failed")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "secret rotation failed"),
                }
            }
            let a = audit.clone();
            match tokio::task::spawn_blocking(move || a.apply_retention()).await {
                Ok(Ok(r)) => tracing::debug!(report = ?r, "audit retention"),
                Ok(Err(e)) => tracing::error!(error = %e, "audit retention failed"),
                Err(e) => tracing::error!(error = %e, "audit retention task failed"),
            }
        }
    });
}
