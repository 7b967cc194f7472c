//! Starting the planes inside `rampart up`: the audit log first (everything
//! else writes to it), then identity, keys and secrets, then
//! the scheduler that rotates, purges, expires elevations and applies
//! retention.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rampart_audit::{Audit, AuditKeys, AuditOptions, OpenReport, RetentionPolicy, Tier};
use rampart_config::Config;
use rampart_core::SharedClock;
use rampart_crypto::{random_array, SecretBytes};
use rampart_identity::{Identity, IdentityConfig, PasswordParams, RedisThrottle, ThrottleConfig};
use rampart_keys::policy::{Effect, Statement};
use rampart_keys::{Auditor, KeyService, KeySpec, Policies};
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
    o.commit_delay = Duration::from_micros(u64::from(config.audit.commit_delay_us));
    o.commit_siblings = usize::try_from(config.audit.commit_siblings).unwrap_or(usize::MAX);
    // The edge's denials: recorded in api-access, copied to security.
    o.copies = vec![(Tier::ApiAccess, Tier::Security)];
    o.copy_delay = Duration::from_millis(u64::from(config.audit.copy_delay_ms));
    o
}

/// Opens the audit log for writing (one writer per data directory), with
/// what opening found (torn tails cut, checkpoints that do not verify),
/// which is also printed and logged here.
pub async fn open_audit(
    keyring: &Keyring,
    data_dir: &Path,
    config: &Config,
    clock: SharedClock,
) -> Result<(Arc<Audit>, OpenReport), CliError> {
    let keys = audit_keys(keyring).await?;
    let (audit, report) = Audit::open(audit_options(data_dir, config), keys, clock)
        .map_err(|e| CliError::Runtime(format!("audit log: {e}")))?;
    for torn in report.torn_tails() {
        println!("audit log: cut a torn tail after a crash: {torn:?}");
    }
    for (from, to, n) in &report.copies_restored {
        if *n > 0 {
            println!("audit log: wrote {n} {to} copies of {from} records that a crash left out");
        }
    }
    for problem in &report.checkpoint_problems {
        // Some checkpoints verify and these do not: rewritten or damaged.
        println!("audit log: WARNING: {problem} (run `rampart audit verify`)");
        tracing::error!(%problem, "audit checkpoint does not verify");
    }
    Ok((Arc::new(audit), report))
}

/// Set (to anything) only by the end-to-end tests: hash new passwords with
/// the cheapest Argon2 parameters. Deliberately undocumented for users.
const INSECURE_HASHING_ENV: &str = "RAMPART_INSECURE_TEST_PASSWORD_HASHING";

/// The identity configuration `rampart.toml` implies. The built-in role
/// table ([`rampart_identity::Policy::default_table`]) is the start; a
/// declared `[[roles]]` entry replaces that role's permissions, except that
/// the built-in `identity:…` self-service grants (own password, own TOTP,
/// own API keys, asking for elevation) are kept unless the entry names an
/// `identity:` permission or `*` itself, since `rampart.toml`'s permission
/// syntax cannot spell their dotted actions. Its `require_mfa` adds or
/// removes the role from the TOTP-required set (`admin` requires TOTP
/// unless declared otherwise).
pub fn identity_config(config: &Config) -> IdentityConfig {
    let id = &config.identity;
    let mut cfg = IdentityConfig {
        node: config.node.name.clone(),
        issuer: id.issuer.clone(),
        audience: id.audience.clone(),
        access_ttl_secs: u64::from(id.access_ttl_seconds),
        refresh_ttl_secs: u64::from(id.refresh_ttl_seconds),
        session_max_secs: u64::from(id.session_max_seconds),
        max_elevation_secs: u64::from(id.max_elevation_seconds),
        elevation_request_ttl_secs: u64::from(id.elevation_request_ttl_seconds),
        throttle: ThrottleConfig {
            free_failures_per_account: id.throttle.free_failures_per_account,
            free_failures_per_source: id.throttle.free_failures_per_source,
            base_delay_secs: u64::from(id.throttle.base_delay_seconds),
            max_delay_secs: u64::from(id.throttle.max_delay_seconds),
            forget_after_secs: u64::from(id.throttle.forget_after_seconds),
            ..ThrottleConfig::default()
        },
        ..IdentityConfig::default()
    };
    for r in &config.roles {
        let declares_identity = r
            .permissions
            .iter()
            .any(|p| p == "*" || p.starts_with("identity:"));
        let mut perms = r.permissions.clone();
        if !declares_identity {
            let builtin = cfg.roles.get(&r.name).cloned().unwrap_or_default();
            perms.extend(builtin.into_iter().filter(|p| p.starts_with("identity:")));
        }
        cfg.roles.insert(r.name.clone(), perms);
        if let Ok(role) = r.name.parse::<rampart_identity::Role>() {
            cfg.totp_required_roles.retain(|x| *x != role);
            if r.require_mfa {
                cfg.totp_required_roles.push(role);
            }
        }
    }
    if std::env::var_os(INSECURE_HASHING_ENV).is_some() {
        tracing::warn!("{INSECURE_HASHING_ENV} is set: new password hashes are weak (tests only)");
        cfg.passwords = PasswordParams::insecure_for_tests();
    }
    cfg
}

/// Opens the identity plane (after the audit log, which it writes to).
/// A role name other than the four identity knows is fatal here. With
/// `[redis]`, the login throttle's shared counts live in Redis (returned
/// too, for `/metrics`); without, in the store.
pub async fn open_identity(
    keyring: Arc<Keyring>,
    audit: Arc<Audit>,
    config: &Config,
    clock: SharedClock,
) -> Result<(Arc<Identity>, Option<Arc<RedisThrottle>>), CliError> {
    let store = keyring.store().clone();
    let identity = Identity::open(store, keyring, audit, clock, identity_config(config))
        .await
        .map_err(|e| match e {
            rampart_identity::IdentityError::Config(m) => CliError::Input(format!(
                "identity plane: {m} (roles are admin, team_admin, team_member, individual)"
            )),
            other => CliError::Runtime(format!("identity plane: {other}")),
        })?;
    let Some(r) = &config.redis else {
        return Ok((Arc::new(identity), None));
    };
    let url = crate::node::url_from_env(&r.url_env, "the Redis URL", "[redis] url_env")?;
    let (conn, target) = rampart_edge::connect_redis(&url, r.tls_ca.as_deref())
        .await
        .map_err(|e| CliError::Input(format!("login throttle: {e}")))?;
    let shared = Arc::new(RedisThrottle::new(conn, target, &r.key_prefix));
    println!("login throttle: counts shared through Redis");
    Ok((
        Arc::new(identity.with_shared_throttle(shared.clone())),
        Some(shared),
    ))
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

/// Starts keys and secrets; ensures the keys `rampart.toml` declares.
pub async fn start(
    keyring: Arc<Keyring>,
    audit: Arc<Audit>,
    config: &Config,
    clock: SharedClock,
) -> Result<Planes, CliError> {
    let store = keyring.store().clone();
    let plane_err = |e: rampart_keys::KeysError| CliError::Runtime(format!("keys plane: {e}"));
    let keys = KeyService::new(
        keyring,
        Policies::new(store.clone(), clock.clone()),
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
    drop_interim_service_tokens(store.as_ref()).await?;
    let secrets = SecretService::new(keys.clone(), store, clock);
    Ok(Planes { keys, secrets })
}

/// Where the interim per-service tokens (`rst_…`, replaced by service
/// principals' identity API keys) kept their HMACs.
const INTERIM_TOKENS_NS: &str = "keys.service-tokens";

/// Deletes what is left of the interim service tokens in a data directory
/// made before identity API keys replaced them: nothing accepts them any
/// more, so their records only linger.
async fn drop_interim_service_tokens(store: &dyn rampart_store::Store) -> Result<(), CliError> {
    let left = store.list(INTERIM_TOKENS_NS, "", 100_000).await?;
    for (id, _) in &left {
        store
            .delete(INTERIM_TOKENS_NS, id, rampart_store::Expect::Any)
            .await?;
    }
    if !left.is_empty() {
        tracing::warn!(
            removed = left.len(),
            "interim service tokens (rst_…) are no longer accepted and were deleted; \
             give each service an API key of its service principal"
        );
    }
    Ok(())
}

/// How often the scheduler prunes spent sessions, refresh tokens,
/// revocations and idle login-throttle entries from the store, seconds of
/// the node's clock.
pub const PRUNE_EVERY_SECS: u64 = 600;

/// Runs the periodic jobs until the process ends: key rotation and
/// destruction, secret rotation and purge, identity housekeeping (expired
/// revocations and elevations; every [`PRUNE_EVERY_SECS`], pruning of
/// sessions, refresh tokens and revocations past their expiry), audit
/// retention.
pub fn spawn_scheduler(planes: Arc<crate::api::AppState>, audit: Arc<Audit>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut pruned_at: Option<u64> = None;
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
                match p.secrets.reconcile_pending(now).await {
                    Ok(done) => {
                        for (name, r) in done {
                            match r {
                                Ok(outcome) => {
                                    tracing::warn!(secret = %name, ?outcome, "settled an interrupted rotation")
                                }
                                Err(e) => {
                                    tracing::error!(secret = %name, error = %e, "could not settle an interrupted rotation")
                                }
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "rotation reconciliation failed"),
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
            if let Some(id) = &planes.identity {
                if let Err(e) = id.maintain().await {
                    tracing::error!(error = %e, "identity housekeeping failed");
                }
                if pruned_at.is_none_or(|at| now >= at.saturating_add(PRUNE_EVERY_SECS)) {
                    pruned_at = Some(now);
                    match id.prune().await {
                        Ok(r) if r.deleted_any() => {
                            tracing::info!(report = ?r, "pruned identity records")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "identity pruning failed"),
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_identity::Role;

    fn config(roles: &str) -> Config {
        let text = format!("[node]\nname = \"n1\"\n\n[[environments]]\nname = \"prod\"\n{roles}");
        Config::parse(&text, "test.toml").unwrap()
    }

    #[tokio::test]
    async fn leftover_interim_service_tokens_are_deleted() {
        use rampart_store::{Expect, SqliteStore, Store};
        let clock: SharedClock = Arc::new(rampart_core::ManualClock::at_unix_secs(100));
        let store = SqliteStore::in_memory(clock).unwrap();
        for id in ["0123456789abcdef", "fedcba9876543210"] {
            store
                .put(INTERIM_TOKENS_NS, id, b"{}", Expect::Absent)
                .await
                .unwrap();
        }
        store.put("other", "k", b"v", Expect::Absent).await.unwrap();
        drop_interim_service_tokens(&store).await.unwrap();
        assert!(store
            .list(INTERIM_TOKENS_NS, "", 10)
            .await
            .unwrap()
            .is_empty());
        assert!(store.get("other", "k").await.unwrap().is_some());
        drop_interim_service_tokens(&store).await.unwrap();
    }

    /// The configuration crate depends on no plane, so it writes the audit
    /// log's defaults down a second time: an `[audit]`-less file must give
    /// exactly the log's own defaults.
    #[test]
    fn an_empty_audit_section_gives_the_logs_own_defaults() {
        let from_config = audit_options(Path::new("/d"), &config(""));
        let own = AuditOptions::new("/d/audit");
        assert_eq!(from_config.dir, own.dir);
        assert_eq!(from_config.commit_delay, own.commit_delay);
        assert_eq!(from_config.commit_siblings, own.commit_siblings);
        assert_eq!(from_config.copy_delay, own.copy_delay);
        assert_eq!(
            from_config.checkpoint_every_records,
            own.checkpoint_every_records
        );
        assert_eq!(from_config.checkpoint_every, own.checkpoint_every);
        assert_eq!(from_config.checkpoint_dir, own.checkpoint_dir);
        for tier in [
            Tier::Security,
            Tier::Processing,
            Tier::Application,
            Tier::Network,
            Tier::ApiAccess,
        ] {
            assert_eq!(
                from_config.retention.days(tier),
                own.retention.days(tier),
                "{tier}"
            );
        }
    }

    /// As for the audit log: an `[identity]`-less file gives exactly the
    /// identity plane's own defaults.
    #[test]
    fn an_empty_identity_section_gives_the_planes_own_defaults() {
        let c = identity_config(&config(""));
        let own = IdentityConfig::default();
        assert_eq!(
            (c.issuer.as_str(), c.audience.as_str()),
            (own.issuer.as_str(), own.audience.as_str())
        );
        assert_eq!(
            (
                c.access_ttl_secs,
                c.refresh_ttl_secs,
                c.session_max_secs,
                c.max_elevation_secs,
                c.elevation_request_ttl_secs
            ),
            (
                own.access_ttl_secs,
                own.refresh_ttl_secs,
                own.session_max_secs,
                own.max_elevation_secs,
                own.elevation_request_ttl_secs
            )
        );
        assert_eq!(c.throttle, own.throttle);
        let c = identity_config(&config(
            "[identity]\naccess_ttl_seconds = 300\nrefresh_ttl_seconds = 3600\n",
        ));
        assert_eq!((c.access_ttl_secs, c.refresh_ttl_secs), (300, 3600));
    }

    #[test]
    fn no_roles_keeps_the_built_in_table_and_admin_totp() {
        let c = identity_config(&config(""));
        assert_eq!(c.node, "n1");
        assert_eq!(c.roles, rampart_identity::Policy::default_table());
        assert_eq!(c.totp_required_roles, vec![Role::Admin]);
    }

    #[test]
    fn declared_roles_replace_permissions_but_keep_identity_self_service() {
        let c = identity_config(&config(
            "[[roles]]\nname = \"admin\"\npermissions = [\"*\"]\n\n\
             [[roles]]\nname = \"team_member\"\npermissions = [\"keys:encrypt\"]\nrequire_mfa = true\n\n\
             [[roles]]\nname = \"individual\"\npermissions = [\"identity:*\"]\n",
        ));
        assert_eq!(c.roles["admin"], vec!["*".to_string()]);
        let tm = &c.roles["team_member"];
        assert_eq!(tm[0], "keys:encrypt");
        assert!(tm.contains(&"identity:apikeys.own".to_string()));
        assert!(!tm.contains(&"keys:decrypt".to_string()));
        // Naming an identity permission takes the whole identity part over.
        assert_eq!(c.roles["individual"], vec!["identity:*".to_string()]);
        assert_eq!(c.totp_required_roles, vec![Role::TeamMember]);
    }
}
