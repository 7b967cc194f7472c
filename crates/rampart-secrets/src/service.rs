//! The secret store: records, envelope encryption under the service's key,
//! and every operation decided by policy and audited.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rampart_audit::Outcome;
use rampart_core::SharedClock;
use rampart_crypto::SecretBytes;
use rampart_keys::{valid_name, Caller, Context, KeyService, KeySpec};
use rampart_store::{Expect, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::postgres::{self, PostgresAdmin, PostgresSecret, RotationFault, RotationStep};
use crate::SecretsError;

const SECRETS_NS: &str = "secrets";
/// A staged rotation version older than this was left by an interrupted
/// rotation (a rotation takes seconds; its connections time out at 10 s).
pub const STALE_PENDING_SECS: u64 = 300;

/// What [`SecretService::reconcile_pending`] did with a staged version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// The server had the staged password; that version is now current.
    Promoted(u32),
    /// The server kept the current password; the staged version is gone.
    Dropped,
    /// Neither password logs in; both are kept for an operator.
    Unresolved,
    /// Nothing was staged.
    NothingPending,
}
const DAY: u64 = 86_400;
/// The largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Versions kept per secret; older ones are pruned.
pub const MAX_VERSIONS: usize = 100;
/// The recovery window of a deleted secret unless the request says otherwise.
pub const DEFAULT_RECOVERY_DAYS: u32 = 7;

/// What a secret holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// Opaque bytes.
    Generic,
    /// A [`PostgresSecret`] as JSON; rotatable.
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredVersion {
    version: u32,
    created_at: u64,
    /// The data key, as a ciphertext of the service's key.
    wrapped_key: String,
    /// The value sealed under the data key.
    sealed: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deletion {
    deleted_at: u64,
    recover_until: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRecord {
    environment: String,
    service: String,
    name: String,
    kind: SecretKind,
    created_at: u64,
    updated_at: u64,
    deleted: Option<Deletion>,
    rotation_period_days: Option<u32>,
    last_rotated_at: Option<u64>,
    versions: Vec<StoredVersion>,
    /// A rotation's staged version, not yet current.
    pending: Option<StoredVersion>,
}

impl SecretRecord {
    fn current(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }

    /// The number for a new version: above every version kept or staged.
    /// The current (last) version is not always the highest: a rotation's
    /// staged version made current after a later write comes after it.
    fn next_version(&self) -> Result<u32, SecretsError> {
        self.versions
            .iter()
            .chain(&self.pending)
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| {
                SecretsError::InvalidRequest(format!(
                    "secret {} has no version numbers left",
                    self.name
                ))
            })
    }
}

/// A secret's value at one version. `Debug` is redacted.
#[derive(Debug)]
pub struct SecretValue {
    /// The version.
    pub version: u32,
    /// The kind.
    pub kind: SecretKind,
    /// When this version was written.
    pub created_at: u64,
    /// The value (zeroized on drop).
    pub value: SecretBytes,
}

/// What a listing shows of a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: SecretKind,
    /// The current version.
    pub current_version: u32,
    /// Versions kept.
    pub versions: Vec<u32>,
    /// When created.
    pub created_at: u64,
    /// When last written.
    pub updated_at: u64,
    /// Set while deleted: the end of the recovery window.
    pub recover_until: Option<u64>,
    /// Days between automatic rotations, if scheduled.
    pub rotation_period_days: Option<u32>,
}

impl From<&SecretRecord> for SecretMeta {
    fn from(r: &SecretRecord) -> Self {
        SecretMeta {
            name: r.name.clone(),
            kind: r.kind,
            current_version: r.current(),
            versions: r.versions.iter().map(|v| v.version).collect(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            recover_until: r.deleted.map(|d| d.recover_until),
            rotation_period_days: r.rotation_period_days,
        }
    }
}

/// The key a service's secrets are encrypted under.
pub fn service_key_name(service: &str) -> String {
    format!("svc.{service}")
}

/// The secrets plane. Cheap to clone.
#[derive(Clone)]
pub struct SecretService {
    keys: KeyService,
    store: Arc<dyn Store>,
    clock: SharedClock,
    fault: Arc<Mutex<Option<RotationFault>>>,
}

impl std::fmt::Debug for SecretService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretService").finish_non_exhaustive()
    }
}

fn record_id(env: &str, service: &str, name: &str) -> String {
    format!("{env}/{service}/{name}")
}

fn seal_context(env: &str, service: &str, name: &str, version: u32) -> Context {
    [
        ("environment", env.to_owned()),
        ("service", service.to_owned()),
        ("secret", name.to_owned()),
        ("version", version.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl SecretService {
    /// The secrets plane, keeping records in `store` and encrypting through `keys`.
    pub fn new(keys: KeyService, store: Arc<dyn Store>, clock: SharedClock) -> Self {
        SecretService {
            keys,
            store,
            clock,
            fault: Arc::default(),
        }
    }

    /// Test support: makes the next rotations fail at a chosen step.
    pub fn inject_rotation_fault(&self, fault: Option<RotationFault>) {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
    }

    fn fault(&self) -> Option<RotationFault> {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn authorise(
        &self,
        caller: &Caller,
        action: &str,
        service: &str,
        name: &str,
    ) -> Result<(), SecretsError> {
        let env = caller.principal.environment.clone();
        let resource = format!("secret:{service}/{name}");
        self.keys
            .authorise(caller, action, &env, &resource, None)
            .await
            .map_err(|e| match e {
                rampart_keys::KeysError::Denied { reason } => SecretsError::Denied { reason },
                other => other.into(),
            })
    }

    async fn record_outcome(
        &self,
        caller: &Caller,
        action: &str,
        service: &str,
        name: &str,
        outcome: Outcome,
        reason: String,
    ) -> Result<(), SecretsError> {
        let env = caller.principal.environment.clone();
        self.keys
            .auditor()
            .record(
                caller,
                &env,
                action,
                &format!("{env}/secret:{service}/{name}"),
                outcome,
                reason,
            )
            .await?;
        Ok(())
    }

    async fn read(
        &self,
        env: &str,
        service: &str,
        name: &str,
    ) -> Result<(SecretRecord, u64), SecretsError> {
        let id = record_id(env, service, name);
        let e = self
            .store
            .get(SECRETS_NS, &id)
            .await?
            .ok_or_else(|| SecretsError::NotFound(id.clone()))?;
        let r = serde_json::from_slice(&e.value)
            .map_err(|err| SecretsError::Corrupt(format!("{SECRETS_NS}/{id}: {err}")))?;
        Ok((r, e.version))
    }

    async fn write(&self, r: &SecretRecord, expect: Expect) -> Result<(), SecretsError> {
        let id = record_id(&r.environment, &r.service, &r.name);
        let json = serde_json::to_vec(r).map_err(|e| SecretsError::Corrupt(e.to_string()))?;
        match self.store.put(SECRETS_NS, &id, &json, expect).await {
            Ok(_) => Ok(()),
            Err(StoreError::Conflict { .. }) => Err(SecretsError::Conflict(id)),
            Err(e) => Err(e.into()),
        }
    }

    async fn seal(
        &self,
        caller: &Caller,
        r: &SecretRecord,
        version: u32,
        value: &[u8],
    ) -> Result<StoredVersion, SecretsError> {
        let ctx = seal_context(&r.environment, &r.service, &r.name, version);
        let key = format!("{}/{}", r.environment, service_key_name(&r.service));
        let dk = self
            .keys
            .generate_data_key(&caller.through("secrets"), &key, &ctx)
            .await?;
        let aad = record_id(&r.environment, &r.service, &r.name) + &format!("/v{version}");
        let sealed = rampart_crypto::seal(&dk.plaintext, "secret", value, aad.as_bytes())?;
        Ok(StoredVersion {
            version,
            created_at: self.clock.unix_secs(),
            wrapped_key: B64.encode(&dk.wrapped),
            sealed: B64.encode(sealed),
        })
    }

    async fn open(
        &self,
        caller: &Caller,
        r: &SecretRecord,
        v: &StoredVersion,
    ) -> Result<SecretBytes, SecretsError> {
        let ctx = seal_context(&r.environment, &r.service, &r.name, v.version);
        let corrupt = || SecretsError::Corrupt(record_id(&r.environment, &r.service, &r.name));
        let wrapped = B64
            .decode(v.wrapped_key.as_bytes())
            .map_err(|_| corrupt())?;
        let sealed = B64.decode(v.sealed.as_bytes()).map_err(|_| corrupt())?;
        // The data key must be under the service's own key: one wrapped
        // under another key (planted by whoever can write the store) is
        // not this secret's, even if the caller may use that key.
        let under = rampart_keys::ciphertext::parse(&wrapped).map_err(|_| corrupt())?;
        if under.environment != r.environment || under.key != service_key_name(&r.service) {
            return Err(corrupt());
        }
        let dk = self
            .keys
            .decrypt_data_key(&caller.through("secrets"), &wrapped, &ctx)
            .await?;
        let aad = record_id(&r.environment, &r.service, &r.name) + &format!("/v{}", v.version);
        Ok(SecretBytes::from(rampart_crypto::open(
            &dk,
            &sealed,
            aad.as_bytes(),
        )?))
    }

    fn check_names(service: &str, name: &str) -> Result<(), SecretsError> {
        valid_name(service)?;
        valid_name(name)?;
        // The service's key, `svc.<service>`, must be a valid key name too
        // (at most 64 characters: a service name of at most 60).
        if valid_name(&service_key_name(service)).is_err() {
            return Err(SecretsError::InvalidField {
                field: "service",
                message: "a service name is at most 60 characters (its key is svc.<service>)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Writes a new version of `service`'s secret `name`; returns its number.
    /// Creates the secret (and the service's key) on first write.
    pub async fn put(
        &self,
        caller: &Caller,
        service: &str,
        name: &str,
        value: &[u8],
        kind: SecretKind,
    ) -> Result<u32, SecretsError> {
        Self::check_names(service, name)?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretsError::InvalidField {
                field: "value",
                message: format!(
                    "secret of {} bytes exceeds the limit of {MAX_SECRET_BYTES}",
                    value.len()
                ),
            });
        }
        let mut admin_secret = None;
        if kind == SecretKind::Postgres {
            let pg = serde_json::from_slice::<PostgresSecret>(value)
                .map_err(|e| SecretsError::InvalidRequest(postgres::shape_error(&e)))?;
            pg.check_transport()
                .map_err(|(field, message)| SecretsError::InvalidField { field, message })?;
            if let PostgresAdmin::Secret { name: admin } = &pg.admin {
                valid_name(admin)?;
                admin_secret = Some(admin.clone());
            }
        }
        self.authorise(caller, "secrets:put", service, name).await?;
        // The writer chooses the server that rotation, the scheduler's
        // included, logs in to with the admin secret's password: only a
        // caller who may read that secret may name it.
        if let Some(admin) = &admin_secret {
            self.authorise(caller, "secrets:get", service, admin)
                .await?;
        }
        let env = caller.principal.environment.clone();
        self.keys
            .ensure_key(&env, &service_key_name(service), KeySpec::default())
            .await?;
        let now = self.clock.unix_secs();
        let (mut r, expect) = match self.read(&env, service, name).await {
            Ok((r, v)) => (r, Expect::Version(v)),
            Err(SecretsError::NotFound(_)) => (
                SecretRecord {
                    environment: env.clone(),
                    service: service.to_owned(),
                    name: name.to_owned(),
                    kind,
                    created_at: now,
                    updated_at: now,
                    deleted: None,
                    rotation_period_days: None,
                    last_rotated_at: None,
                    versions: Vec::new(),
                    pending: None,
                },
                Expect::Absent,
            ),
            Err(e) => return Err(e),
        };
        if let Some(d) = r.deleted {
            return Err(SecretsError::Deleted {
                name: name.to_owned(),
                recover_until: d.recover_until,
            });
        }
        if r.kind != kind {
            return Err(SecretsError::InvalidRequest(format!(
                "secret {name} is of another kind"
            )));
        }
        let version = r.next_version()?;
        let v = self.seal(caller, &r, version, value).await?;
        r.versions.push(v);
        if r.versions.len() > MAX_VERSIONS {
            r.versions.remove(0);
        }
        r.updated_at = now;
        self.write(&r, expect).await?;
        Ok(version)
    }

    /// Reads the latest version, or `version`.
    pub async fn get(
        &self,
        caller: &Caller,
        service: &str,
        name: &str,
        version: Option<u32>,
    ) -> Result<SecretValue, SecretsError> {
        Self::check_names(service, name)?;
        self.authorise(caller, "secrets:get", service, name).await?;
        let (r, _) = self
            .read(&caller.principal.environment, service, name)
            .await?;
        if let Some(d) = r.deleted {
            return Err(SecretsError::Deleted {
                name: name.to_owned(),
                recover_until: d.recover_until,
            });
        }
        let want = version.unwrap_or_else(|| r.current());
        let v = r
            .versions
            .iter()
            .find(|v| v.version == want)
            .ok_or_else(|| SecretsError::UnknownVersion {
                name: name.to_owned(),
                version: want,
            })?;
        let value = self.open(caller, &r, v).await?;
        Ok(SecretValue {
            version: v.version,
            kind: r.kind,
            created_at: v.created_at,
            value,
        })
    }

    /// Lists `service`'s secrets (names and versions, never values),
    /// including deleted ones still within their recovery window.
    pub async fn list(
        &self,
        caller: &Caller,
        service: &str,
    ) -> Result<Vec<SecretMeta>, SecretsError> {
        valid_name(service)?;
        self.authorise(caller, "secrets:list", service, "*").await?;
        let prefix = format!("{}/{service}/", caller.principal.environment);
        let rows = self
            .store
            .list(SECRETS_NS, &prefix, usize::MAX >> 1)
            .await?;
        rows.iter()
            .map(|(id, e)| {
                serde_json::from_slice::<SecretRecord>(&e.value)
                    .map(|r| SecretMeta::from(&r))
                    .map_err(|err| SecretsError::Corrupt(format!("{SECRETS_NS}/{id}: {err}")))
            })
            .collect()
    }

    async fn modify<T>(
        &self,
        env: &str,
        service: &str,
        name: &str,
        mut change: impl FnMut(&mut SecretRecord) -> Result<T, SecretsError>,
    ) -> Result<T, SecretsError> {
        for _ in 0..5 {
            let (mut r, v) = self.read(env, service, name).await?;
            let out = change(&mut r)?;
            match self.write(&r, Expect::Version(v)).await {
                Ok(()) => return Ok(out),
                Err(SecretsError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(SecretsError::Conflict(record_id(env, service, name)))
    }

    /// Deletes a secret, recoverable for `recovery_days` (7 to 30, default 7).
    /// Returns the end of the recovery window.
    pub async fn delete(
        &self,
        caller: &Caller,
        service: &str,
        name: &str,
        recovery_days: Option<u32>,
    ) -> Result<u64, SecretsError> {
        Self::check_names(service, name)?;
        let days = recovery_days.unwrap_or(DEFAULT_RECOVERY_DAYS);
        if !(7..=30).contains(&days) {
            return Err(SecretsError::InvalidField {
                field: "recovery_days",
                message: format!("recovery window {days} days is outside 7..=30"),
            });
        }
        self.authorise(caller, "secrets:delete", service, name)
            .await?;
        let now = self.clock.unix_secs();
        let until = now + u64::from(days) * DAY;
        self.modify(&caller.principal.environment, service, name, |r| {
            if r.deleted.is_some() {
                return Err(SecretsError::InvalidRequest(format!(
                    "secret {name} is already deleted"
                )));
            }
            r.deleted = Some(Deletion {
                deleted_at: now,
                recover_until: until,
            });
            Ok(())
        })
        .await?;
        Ok(until)
    }

    /// Restores a deleted secret within its recovery window.
    pub async fn restore(
        &self,
        caller: &Caller,
        service: &str,
        name: &str,
    ) -> Result<(), SecretsError> {
        Self::check_names(service, name)?;
        self.authorise(caller, "secrets:restore", service, name)
            .await?;
        let now = self.clock.unix_secs();
        self.modify(&caller.principal.environment, service, name, |r| {
            match r.deleted {
                None => Err(SecretsError::InvalidRequest(format!(
                    "secret {name} is not deleted"
                ))),
                // Past its window the secret is due for purging, whether
                // or not the scheduler has got to it.
                Some(d) if d.recover_until <= now => Err(SecretsError::InvalidRequest(format!(
                    "secret {name}'s recovery window ended at unix time {}; it can no longer be restored",
                    d.recover_until
                ))),
                Some(_) => {
                    r.deleted = None;
                    Ok(())
                }
            }
        })
        .await
    }

    /// Removes for good every deleted secret whose recovery window ended by
    /// `now`; for the scheduler. Returns the secrets removed.
    pub async fn purge_due(&self, now: u64) -> Result<Vec<String>, SecretsError> {
        let mut out = Vec::new();
        for (id, e) in self.store.list(SECRETS_NS, "", usize::MAX >> 1).await? {
            let Ok(r) = serde_json::from_slice::<SecretRecord>(&e.value) else {
                continue;
            };
            if r.deleted.is_some_and(|d| d.recover_until <= now) {
                let sys = Caller::system(&r.environment, "scheduler");
                self.record_outcome(
                    &sys,
                    "secrets:purge",
                    &r.service,
                    &r.name,
                    Outcome::Allowed,
                    "recovery window ended".into(),
                )
                .await?;
                // Only as listed: a record changed or purged since (by
                // another node) is left for the next run, and the rest are
                // still purged.
                match self
                    .store
                    .delete(SECRETS_NS, &id, Expect::Version(e.version))
                    .await
                {
                    Ok(true) => out.push(id),
                    Ok(false) | Err(StoreError::Conflict { .. }) => {}
                    Err(other) => return Err(other.into()),
                }
            }
        }
        Ok(out)
    }

    /// Schedules (or with `None` stops) automatic rotation of a `postgres` secret.
    pub async fn set_rotation(
        &self,
        caller: &Caller,
        service: &str,
        name: &str,
        period_days: Option<u32>,
    ) -> Result<(), SecretsError> {
        Self::check_names(service, name)?;
        if period_days.is_some_and(|d| !(1..=3650).contains(&d)) {
            return Err(SecretsError::InvalidRequest(
                "rotation period must be 1..=3650 days".into(),
            ));
        }
        self.authorise(caller, "secrets:rotate", service, name)
            .await?;
        let now = self.clock.unix_secs();
        self.modify(&caller.principal.environment, service, name, |r| {
            if r.kind != SecretKind::Postgres {
                return Err(SecretsError::NotRotatable(name.to_owned()));
            }
            r.rotation_period_days = period_days;
            r.last_rotated_at.get_or_insert(now);
            Ok(())
        })
        .await
    }

    /// Rotates every scheduled secret whose period has run out by `now`; for
    /// the scheduler. Returns `(secret, result)` for each one tried.
    pub async fn rotate_due(
        &self,
        now: u64,
    ) -> Result<Vec<(String, Result<u32, SecretsError>)>, SecretsError> {
        let mut out = Vec::new();
        for (id, e) in self.store.list(SECRETS_NS, "", usize::MAX >> 1).await? {
            let Ok(r) = serde_json::from_slice::<SecretRecord>(&e.value) else {
                continue;
            };
            let (Some(days), Some(last)) = (r.rotation_period_days, r.last_rotated_at) else {
                continue;
            };
            if r.deleted.is_none() && last + u64::from(days) * DAY <= now {
                // Read again just before: another node's scheduler sharing
                // the store may have rotated it since the listing (and if
                // one is rotating it now, staging refuses this one).
                let Ok((fresh, _)) = self.read(&r.environment, &r.service, &r.name).await else {
                    continue;
                };
                if fresh.last_rotated_at != r.last_rotated_at || fresh.pending.is_some() {
                    continue;
                }
                let sys = Caller::system(&r.environment, "scheduler");
                out.push((id, self.rotate(&sys, &r.service, &r.name).await));
            }
        }
        Ok(out)
    }

    /// Rotates a `postgres` secret's password now; returns the new version.
    /// On any failure the previous version stays current and, if the server
    /// was changed, the old password is put back.
    pub async fn rotate(
        &self,
        caller: &Caller,
        service: &str,
        name: &str,
    ) -> Result<u32, SecretsError> {
        Self::check_names(service, name)?;
        self.authorise(caller, "secrets:rotate", service, name)
            .await?;
        let res = self.rotate_inner(caller, service, name).await;
        let (outcome, reason) = match &res {
            Ok(v) => (Outcome::Allowed, format!("rotated to version {v}")),
            Err(e) => (Outcome::Error, e.to_string()),
        };
        self.record_outcome(caller, "secrets:rotated", service, name, outcome, reason)
            .await?;
        res
    }

    async fn rotate_inner(
        &self,
        caller: &Caller,
        service: &str,
        name: &str,
    ) -> Result<u32, SecretsError> {
        let env = caller.principal.environment.clone();
        let fail = |step, message: String, reverted| SecretsError::Rotation {
            step,
            message,
            reverted,
        };
        // Prepare: settle what an interrupted rotation left first, so the
        // password rotated from is the one the server has.
        let (r, _) = self.read(&env, service, name).await?;
        if r.kind != SecretKind::Postgres {
            return Err(SecretsError::NotRotatable(name.to_owned()));
        }
        // A staged password younger than STALE_PENDING_SECS belongs to a
        // rotation still under way, here or on another node sharing the
        // store: leave it alone. An older one was left by a crash.
        let now = self.clock.unix_secs();
        let r = match &r.pending {
            Some(p) if now < p.created_at.saturating_add(STALE_PENDING_SECS) => {
                return Err(SecretsError::RotationInProgress {
                    name: name.to_owned(),
                    age_secs: now.saturating_sub(p.created_at),
                })
            }
            Some(_) => {
                self.reconcile_one(caller, &r).await?;
                self.read(&env, service, name).await?.0
            }
            None => r,
        };
        if let Some(d) = r.deleted {
            return Err(SecretsError::Deleted {
                name: name.to_owned(),
                recover_until: d.recover_until,
            });
        }
        let cur = r
            .versions
            .last()
            .ok_or_else(|| SecretsError::NotFound(name.to_owned()))?;
        let old: PostgresSecret =
            serde_json::from_slice(self.open(caller, &r, cur).await?.expose()).map_err(|e| {
                fail(
                    RotationStep::Prepare,
                    format!("stored value: {}", postgres::shape_error(&e)),
                    true,
                )
            })?;
        // A value stored before hosts off loopback needed a CA stops here,
        // before anything is staged.
        old.check_transport()
            .map_err(|(field, why)| fail(RotationStep::Prepare, format!("{field}: {why}"), true))?;
        let (admin_user, admin_password) = match &old.admin {
            PostgresAdmin::Inline { user, password } => {
                (user.clone(), zeroize::Zeroizing::new(password.clone()))
            }
            PostgresAdmin::Secret { name: admin } => {
                // Rotation logs in with the admin's password, to the server
                // this secret names: only a caller who may read the admin
                // secret may have it used so.
                valid_name(admin)?;
                self.authorise(caller, "secrets:get", service, admin)
                    .await?;
                let (ar, _) = self.read(&env, service, admin).await?;
                if let Some(d) = ar.deleted {
                    return Err(SecretsError::Deleted {
                        name: admin.clone(),
                        recover_until: d.recover_until,
                    });
                }
                let av = ar
                    .versions
                    .last()
                    .ok_or_else(|| SecretsError::NotFound(admin.clone()))?;
                let a: PostgresSecret = serde_json::from_slice(
                    self.open(caller, &ar, av).await?.expose(),
                )
                .map_err(|e| {
                    fail(
                        RotationStep::Prepare,
                        format!("admin secret {admin}: {}", postgres::shape_error(&e)),
                        true,
                    )
                })?;
                (a.user.clone(), zeroize::Zeroizing::new(a.password.clone()))
            }
        };
        let mut new = old.clone();
        new.password = postgres::generate_password()?;
        let new_json = zeroize::Zeroizing::new(
            serde_json::to_vec(&new).map_err(|e| SecretsError::Corrupt(e.to_string()))?,
        );

        // Stage: the new password is stored before the server knows it, so a
        // crash after the next step never loses it.
        let version = r.next_version()?;
        let staged = self.seal(caller, &r, version, &new_json).await?;
        // Staging is the claim: only one rotation can move `pending` from
        // empty, so only one sets a password on the server.
        self.modify(&env, service, name, |rec| match &rec.pending {
            Some(p) => Err(SecretsError::RotationInProgress {
                name: name.to_owned(),
                age_secs: staged.created_at.saturating_sub(p.created_at),
            }),
            // A write since the record was read took this number: the
            // staged value is sealed to it, so this rotation stops here,
            // before the server is touched (the scheduler tries again).
            None if rec.next_version().ok() != Some(version) => Err(SecretsError::Conflict(
                format!("secret {name} got a new version while its rotation was prepared; retry"),
            )),
            None => {
                rec.pending = Some(staged.clone());
                Ok(())
            }
        })
        .await
        .map_err(|e| match e {
            e @ SecretsError::RotationInProgress { .. } => e,
            e => fail(RotationStep::Stage, e.to_string(), true),
        })?;
        let ours = |rec: &SecretRecord| rec.pending.as_ref().is_some_and(|p| p.version == version);
        let unstage = || async {
            let _ = self
                .modify(&env, service, name, |rec| {
                    if ours(rec) {
                        rec.pending = None;
                    }
                    Ok(())
                })
                .await;
        };

        if self.fault() == Some(RotationFault::CrashAfterStage) {
            return Err(fail(RotationStep::Stage, "injected crash".into(), false));
        }

        // Set.
        if let Err(m) =
            postgres::set_password(&old, &admin_user, &admin_password, &new.password).await
        {
            unstage().await;
            return Err(fail(RotationStep::SetPassword, m, true));
        }
        if self.fault() == Some(RotationFault::CrashAfterSet) {
            return Err(fail(
                RotationStep::SetPassword,
                "injected crash".into(),
                false,
            ));
        }
        let revert = || async {
            postgres::set_password(&old, &admin_user, &admin_password, &old.password)
                .await
                .is_ok()
        };

        // Verify.
        let verified = match self.fault() {
            Some(RotationFault::FailVerify) => Err("injected verification failure".to_owned()),
            _ => postgres::check_login(&new, &new.password).await,
        };
        if let Err(m) = verified {
            let reverted = revert().await;
            unstage().await;
            return Err(fail(RotationStep::Verify, m, reverted));
        }

        // Promote.
        let now = self.clock.unix_secs();
        let promoted = match self.fault() {
            Some(RotationFault::FailPromote) => Err(SecretsError::InvalidRequest(
                "injected promotion failure".into(),
            )),
            _ => {
                self.modify(&env, service, name, |rec| {
                    if !ours(rec) {
                        return Err(SecretsError::Conflict(name.to_owned()));
                    }
                    let Some(p) = rec.pending.take() else {
                        return Err(SecretsError::Conflict(name.to_owned()));
                    };
                    rec.versions.push(p);
                    if rec.versions.len() > MAX_VERSIONS {
                        rec.versions.remove(0);
                    }
                    rec.updated_at = now;
                    rec.last_rotated_at = Some(now);
                    Ok(())
                })
                .await
            }
        };
        if let Err(e) = promoted {
            let reverted = revert().await;
            unstage().await;
            return Err(fail(RotationStep::Promote, e.to_string(), reverted));
        }
        Ok(version)
    }

    /// Settles rotations a crash interrupted (for the scheduler): a secret
    /// whose staged version is older than [`STALE_PENDING_SECS`] is checked
    /// against the server. If the staged password logs in, the server has
    /// it and it becomes current; if the current one logs in, the server
    /// never changed and the staged one is dropped; if neither does, both
    /// stay and the result says so. Each outcome is audited.
    pub async fn reconcile_pending(
        &self,
        now: u64,
    ) -> Result<Vec<(String, Result<Reconciled, SecretsError>)>, SecretsError> {
        let mut out = Vec::new();
        for (id, e) in self.store.list(SECRETS_NS, "", usize::MAX >> 1).await? {
            let Ok(r) = serde_json::from_slice::<SecretRecord>(&e.value) else {
                continue;
            };
            let stale = r
                .pending
                .as_ref()
                .is_some_and(|p| now >= p.created_at.saturating_add(STALE_PENDING_SECS));
            if stale && r.kind == SecretKind::Postgres && r.deleted.is_none() {
                let sys = Caller::system(&r.environment, "scheduler");
                out.push((id, self.reconcile_one(&sys, &r).await));
            }
        }
        Ok(out)
    }

    async fn reconcile_one(
        &self,
        caller: &Caller,
        r: &SecretRecord,
    ) -> Result<Reconciled, SecretsError> {
        let Some(p) = &r.pending else {
            return Ok(Reconciled::NothingPending);
        };
        let (env, service, name) = (&r.environment, &r.service, &r.name);
        let staged: PostgresSecret =
            serde_json::from_slice(self.open(caller, r, p).await?.expose()).map_err(|e| {
                SecretsError::Corrupt(format!(
                    "{name}: staged value: {}",
                    postgres::shape_error(&e)
                ))
            })?;
        let settled = if postgres::check_login(&staged, &staged.password)
            .await
            .is_ok()
        {
            let now = self.clock.unix_secs();
            let staged_version = p.version;
            self.modify(env, service, name, |rec| match rec.pending.take() {
                Some(p) if p.version == staged_version => {
                    rec.versions.push(p);
                    if rec.versions.len() > MAX_VERSIONS {
                        rec.versions.remove(0);
                    }
                    rec.updated_at = now;
                    rec.last_rotated_at = Some(now);
                    Ok(())
                }
                other => {
                    rec.pending = other;
                    Err(SecretsError::Conflict(name.to_owned()))
                }
            })
            .await?;
            Reconciled::Promoted(staged_version)
        } else {
            let current = match r.versions.last() {
                Some(v) => {
                    let c: PostgresSecret = serde_json::from_slice(
                        self.open(caller, r, v).await?.expose(),
                    )
                    .map_err(|e| {
                        SecretsError::Corrupt(format!(
                            "{name}: current value: {}",
                            postgres::shape_error(&e)
                        ))
                    })?;
                    postgres::check_login(&c, &c.password).await.is_ok()
                }
                None => false,
            };
            if current {
                let staged_version = p.version;
                self.modify(env, service, name, |rec| {
                    if rec
                        .pending
                        .as_ref()
                        .is_some_and(|p| p.version == staged_version)
                    {
                        rec.pending = None;
                    }
                    Ok(())
                })
                .await?;
                Reconciled::Dropped
            } else {
                Reconciled::Unresolved
            }
        };
        let (outcome, reason) = match settled {
            Reconciled::Promoted(v) => (
                Outcome::Allowed,
                format!("interrupted rotation: the server has staged version {v}; made it current"),
            ),
            Reconciled::Dropped => (
                Outcome::Allowed,
                "interrupted rotation: the server kept the current password; staged version dropped".to_owned(),
            ),
            Reconciled::Unresolved | Reconciled::NothingPending => (
                Outcome::Error,
                "interrupted rotation: neither the staged nor the current password logs in".to_owned(),
            ),
        };
        self.record_outcome(
            caller,
            "secrets:rotation-reconciled",
            service,
            name,
            outcome,
            reason,
        )
        .await?;
        Ok(settled)
    }

    /// The current version of each named secret of `service` (for `--watch`).
    pub async fn current_versions(
        &self,
        caller: &Caller,
        service: &str,
        names: &[String],
    ) -> Result<BTreeMap<String, u32>, SecretsError> {
        let mut out = BTreeMap::new();
        for name in names {
            Self::check_names(service, name)?;
            self.authorise(caller, "secrets:get", service, name).await?;
            let (r, _) = self
                .read(&caller.principal.environment, service, name)
                .await?;
            out.insert(name.clone(), r.current());
        }
        Ok(out)
    }

    /// Resolves `service`'s secrets into environment variables: `mapping`
    /// maps a secret name to a variable name. Each read is authorised and
    /// audited; values must be UTF-8.
    pub async fn resolve_env(
        &self,
        caller: &Caller,
        service: &str,
        mapping: &BTreeMap<String, String>,
    ) -> Result<crate::EnvMap, SecretsError> {
        // Every name is checked before any secret is read.
        let mut vars: BTreeMap<&str, &str> = BTreeMap::new();
        for (secret, var) in mapping {
            let ok_var = !var.is_empty()
                && var
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && !var.as_bytes().first().is_some_and(u8::is_ascii_digit);
            if !ok_var {
                return Err(SecretsError::InvalidRequest(format!(
                    "{var:?} is not a valid environment variable name (A-Z, 0-9, _)"
                )));
            }
            // Two secrets for one variable: refuse rather than let one
            // silently replace the other.
            if let Some(other) = vars.insert(var, secret) {
                return Err(SecretsError::InvalidRequest(format!(
                    "secrets {other:?} and {secret:?} are both mapped to ${var}"
                )));
            }
        }
        let mut env = crate::EnvMap::default();
        for (secret, var) in mapping {
            let v = self.get(caller, service, secret, None).await?;
            let text = std::str::from_utf8(v.value.expose()).map_err(|_| {
                SecretsError::InvalidRequest(format!(
                    "secret {secret} is not UTF-8; it cannot be an environment variable"
                ))
            })?;
            env.insert(var.clone(), text.to_owned(), v.version, secret.clone());
        }
        Ok(env)
    }

    /// The keys plane this service encrypts through.
    pub fn keys(&self) -> &KeyService {
        &self.keys
    }
}
