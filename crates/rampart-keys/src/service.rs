//! The key service: key records, their wrapped material, and every operation
//! on them, each decided by policy and recorded in the audit log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rampart_audit::Outcome;
use rampart_core::SharedClock;
use rampart_crypto::{random_nonce, DataKey, SecretBytes};
use rampart_store::{Expect, Keyring, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::ciphertext::{self, NONCE_LEN, TAG_LEN};
use crate::policy::{self, Policies, Request, Statement};
use crate::{valid_name, Auditor, Caller, KeysError};

const KEYS_NS: &str = "keys";
/// The largest plaintext `encrypt` accepts (64 KiB); bigger data is
/// encrypted locally under a data key.
pub const MAX_PLAINTEXT: usize = 64 * 1024;
/// The rotation period of a key unless it says otherwise.
pub const DEFAULT_ROTATION_DAYS: u32 = 365;
/// The deletion window unless the request says otherwise.
pub const DEFAULT_DELETION_DAYS: u32 = 7;
const DAY: u64 = 86_400;

/// An encryption context: key/value pairs bound to a ciphertext.
pub type Context = BTreeMap<String, String>;

/// Where a key stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyState {
    /// Usable.
    Enabled,
    /// Unusable; its material is destroyed at `delete_at` unless cancelled.
    PendingDeletion {
        /// When the deletion was scheduled.
        scheduled_at: u64,
        /// When the material will be destroyed.
        delete_at: u64,
    },
    /// The material is gone.
    Destroyed {
        /// When it was destroyed.
        destroyed_at: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionRecord {
    version: u32,
    created_at: u64,
    /// The key material wrapped by the root key; `None` once destroyed.
    wrapped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRecord {
    environment: String,
    name: String,
    description: String,
    created_at: u64,
    rotation_period_days: u32,
    last_rotated_at: u64,
    min_decryption_version: u32,
    state: KeyState,
    versions: Vec<VersionRecord>,
}

impl KeyRecord {
    fn current(&self) -> u32 {
        self.versions.last().map_or(0, |v| v.version)
    }

    fn next_rotation_at(&self) -> u64 {
        self.last_rotated_at
            .saturating_add(u64::from(self.rotation_period_days).saturating_mul(DAY))
    }
}

/// What a caller may set when creating a key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Days between automatic rotations (1 to 3650; default 365).
    #[serde(default)]
    pub rotation_period_days: Option<u32>,
}

/// One version of a key, as described to callers (never its material).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version number, from 1.
    pub version: u32,
    /// When it was made.
    pub created_at: u64,
    /// Whether its material still exists.
    pub available: bool,
}

/// A key as described to callers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// Environment.
    pub environment: String,
    /// Name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When it was created.
    pub created_at: u64,
    /// Days between automatic rotations.
    pub rotation_period_days: u32,
    /// When it was last rotated (or created).
    pub last_rotated_at: u64,
    /// When the scheduler will next rotate it.
    pub next_rotation_at: u64,
    /// The version new ciphertexts use.
    pub current_version: u32,
    /// Ciphertexts of older versions are refused.
    pub min_decryption_version: u32,
    /// Life-cycle state.
    pub state: KeyState,
    /// Versions, oldest first.
    pub versions: Vec<VersionInfo>,
}

impl From<&KeyRecord> for KeyInfo {
    fn from(r: &KeyRecord) -> Self {
        KeyInfo {
            environment: r.environment.clone(),
            name: r.name.clone(),
            description: r.description.clone(),
            created_at: r.created_at,
            rotation_period_days: r.rotation_period_days,
            last_rotated_at: r.last_rotated_at,
            next_rotation_at: r.next_rotation_at(),
            current_version: r.current(),
            min_decryption_version: r.min_decryption_version,
            state: r.state,
            versions: r
                .versions
                .iter()
                .map(|v| VersionInfo {
                    version: v.version,
                    created_at: v.created_at,
                    available: v.wrapped.is_some(),
                })
                .collect(),
        }
    }
}

/// A data key: the plaintext, for the caller to encrypt with locally and then
/// forget, and the same key encrypted under the named key, to store.
#[derive(Debug)]
pub struct GeneratedDataKey {
    /// The plaintext key (zeroized on drop).
    pub plaintext: DataKey,
    /// The key as a ciphertext of the named key.
    pub wrapped: Vec<u8>,
}

/// A key record with its unwrapped ciphers, cached in memory.
struct Loaded {
    record: KeyRecord,
    loaded_at: u64,
    /// By version, ascending (the versions not retired nor destroyed).
    ciphers: Vec<(u32, Aes256Gcm)>,
}

impl Loaded {
    fn cipher(&self, version: u32) -> Option<&Aes256Gcm> {
        // The current version is the last and the one encryption uses.
        match self.ciphers.last() {
            Some((v, c)) if *v == version => Some(c),
            _ => self
                .ciphers
                .iter()
                .find(|(v, _)| *v == version)
                .map(|(_, c)| c),
        }
    }
}

// The cached ciphers hold expanded key material; their AES round keys
// must be wiped when a `Loaded` is dropped (the `zeroize` feature of `aes`,
// see Cargo.toml). Fails to compile if that feature is lost.
const _: fn() = || {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    wiped_on_drop::<aes::Aes256>();
};

/// Loaded keys by environment, then name.
type KeyCache = HashMap<String, HashMap<String, Arc<Loaded>>>;

/// How long a cached key record is trusted before it is read again, so a
/// change made by another node (rotation, destruction) is seen within it.
pub const CACHE_TTL_SECS: u64 = 5;

/// Whether something obtained at `since` is younger than `max_age` at
/// `now`; not if the clock now reads before `since` (stepped back), so an
/// age limit is never stretched by the size of the step.
pub(crate) fn younger_than(now: u64, since: u64, max_age: u64) -> bool {
    now.checked_sub(since).is_some_and(|age| age < max_age)
}

/// The keys plane. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct KeyService {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    policies: Policies,
    auditor: Auditor,
    clock: SharedClock,
    /// Loaded keys by environment, then name (looked up without building
    /// an `env/name` string).
    cache: Arc<RwLock<KeyCache>>,
    /// Bumped (with the cache locked) by every `forget`: a `load` that read
    /// the store before a change landed does not cache what it read.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for KeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyService").finish_non_exhaustive()
    }
}

/// Appends a fresh random nonce, `plaintext` sealed in place and the tag
/// to `out`, which holds the header already (with room reserved for the
/// rest): the layout of the plane's ciphertexts and of envelope messages.
pub(crate) fn seal_after_header(
    cipher: &Aes256Gcm,
    mut out: Vec<u8>,
    plaintext: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, KeysError> {
    let nonce: [u8; NONCE_LEN] = random_nonce()?;
    out.extend_from_slice(&nonce);
    let body = out.len();
    out.extend_from_slice(plaintext);
    let sealed = out
        .get_mut(body..)
        .ok_or_else(|| KeysError::Internal("encryption failed".into()))?;
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, sealed)
        .map_err(|_| KeysError::Internal("encryption failed".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn purpose(env: &str, name: &str, version: u32) -> String {
    format!("keys/{env}/{name}/v{version}")
}

fn record_id(env: &str, name: &str) -> String {
    format!("{env}/{name}")
}

/// Splits `env/name` or `name` (the caller's environment).
pub(crate) fn key_ref<'a>(
    caller: &'a Caller,
    key: &'a str,
) -> Result<(&'a str, &'a str), KeysError> {
    let (env, name) = match key.split_once('/') {
        Some((env, name)) => (env, name),
        None => (caller.principal.environment.as_str(), key),
    };
    valid_name(env)?;
    valid_name(name)?;
    Ok((env, name))
}

fn resource(name: &str) -> String {
    format!("key:{name}")
}

impl KeyService {
    /// The keys plane over `keyring`'s store, deciding with `policies` and
    /// recording to `auditor`.
    pub fn new(
        keyring: Arc<Keyring>,
        policies: Policies,
        auditor: Auditor,
        clock: SharedClock,
    ) -> Self {
        KeyService {
            store: keyring.store().clone(),
            keyring,
            policies,
            auditor,
            clock,
            cache: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// The policies this service decides with.
    pub fn policies(&self) -> &Policies {
        &self.policies
    }

    /// The audit recorder this service writes to.
    pub fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    /// The clock the plane reads time from.
    pub(crate) fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// The policy decision point for keys and for the planes built on them
    /// (secrets): decides, records the decision with its reason, returns
    /// `Err(Denied)` for a deny, and refuses when the audit log does.
    pub async fn authorise(
        &self,
        caller: &Caller,
        action: &str,
        env: &str,
        res: &str,
        context: Option<&Context>,
    ) -> Result<(), KeysError> {
        let decision = self
            .policies
            .decide(
                caller,
                &Request {
                    action,
                    resource: res,
                    environment: env,
                    context,
                },
            )
            .await?;
        let outcome = if decision.allowed {
            Outcome::Allowed
        } else {
            Outcome::Denied
        };
        self.auditor
            .record(
                caller,
                env,
                action,
                &format!("{env}/{res}"),
                outcome,
                decision.reason.clone(),
            )
            .await?;
        if decision.allowed {
            Ok(())
        } else {
            Err(KeysError::Denied {
                reason: decision.reason,
            })
        }
    }

    /// Records a failure after an allowed decision (best effort: the
    /// decision itself is already on record).
    async fn record_error(
        &self,
        caller: &Caller,
        action: &str,
        env: &str,
        res: &str,
        err: &KeysError,
    ) {
        let _ = self
            .auditor
            .record(
                caller,
                env,
                action,
                &format!("{env}/{res}"),
                Outcome::Error,
                err.to_string(),
            )
            .await;
    }

    fn build(&self, record: KeyRecord) -> Result<Loaded, KeysError> {
        let root = self.keyring.root();
        let mut ciphers = Vec::new();
        if !matches!(record.state, KeyState::Destroyed { .. }) {
            for v in &record.versions {
                if v.version < record.min_decryption_version {
                    continue;
                }
                let Some(w) = &v.wrapped else { continue };
                let blob = B64.decode(w.as_bytes()).map_err(|_| {
                    KeysError::Corrupt(format!("{KEYS_NS}/{}/{}", record.environment, record.name))
                })?;
                let key = root.unwrap_key(
                    &blob,
                    &purpose(&record.environment, &record.name, v.version),
                )?;
                ciphers.push((v.version, Aes256Gcm::new(key.expose().into())));
            }
        }
        Ok(Loaded {
            record,
            loaded_at: self.clock.unix_secs(),
            ciphers,
        })
    }

    async fn load(&self, env: &str, name: &str) -> Result<Arc<Loaded>, KeysError> {
        let now = self.clock.unix_secs();
        if let Some(l) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(env)
            .and_then(|keys| keys.get(name))
        {
            if younger_than(now, l.loaded_at, CACHE_TTL_SECS) {
                return Ok(l.clone());
            }
        }
        let id = record_id(env, name);
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let entry = self
            .store
            .get(KEYS_NS, &id)
            .await?
            .ok_or_else(|| KeysError::UnknownKey {
                env: env.to_owned(),
                name: name.to_owned(),
            })?;
        let record: KeyRecord = serde_json::from_slice(&entry.value)
            .map_err(|e| KeysError::Corrupt(format!("{KEYS_NS}/{id}: {e}")))?;
        let loaded = Arc::new(self.build(record)?);
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        // A change of this node's since the read above (rotation, a
        // scheduled deletion): what was read may be the old record, so it
        // serves this call only.
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            cache
                .entry(env.to_owned())
                .or_default()
                .insert(name.to_owned(), loaded.clone());
        }
        Ok(loaded)
    }

    /// The key `env/name` for one batch call: loaded at its first item,
    /// then reused by the call's other items.
    async fn load_for_batch<'k, 'a>(
        &self,
        keys: &'k mut BatchKeys<'a>,
        env: &'a str,
        name: &'a str,
    ) -> Result<&'k Loaded, KeysError> {
        let i = match keys.position(env, name) {
            Some(i) => i,
            None => {
                let loaded = self.load(env, name).await?;
                keys.insert(env, name, loaded)
            }
        };
        keys.at(i)
            .ok_or_else(|| KeysError::Internal("batch key missing".into()))
    }

    fn forget(&self, env: &str, name: &str) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(keys) = cache.get_mut(env) {
            keys.remove(name);
        }
    }

    /// Reads, changes and writes a key record under compare-and-set.
    async fn update<T>(
        &self,
        env: &str,
        name: &str,
        mut change: impl FnMut(&mut KeyRecord) -> Result<T, KeysError>,
    ) -> Result<(T, KeyRecord), KeysError> {
        let id = record_id(env, name);
        for _ in 0..5 {
            self.forget(env, name);
            let entry =
                self.store
                    .get(KEYS_NS, &id)
                    .await?
                    .ok_or_else(|| KeysError::UnknownKey {
                        env: env.to_owned(),
                        name: name.to_owned(),
                    })?;
            let mut record: KeyRecord = serde_json::from_slice(&entry.value)
                .map_err(|e| KeysError::Corrupt(format!("{KEYS_NS}/{id}: {e}")))?;
            let out = change(&mut record)?;
            let json =
                serde_json::to_vec(&record).map_err(|e| KeysError::Corrupt(e.to_string()))?;
            match self
                .store
                .put(KEYS_NS, &id, &json, Expect::Version(entry.version))
                .await
            {
                Ok(_) => {
                    self.forget(env, name);
                    return Ok((out, record));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(KeysError::Conflict(id))
    }

    fn new_version(
        &self,
        env: &str,
        name: &str,
        version: u32,
        now: u64,
    ) -> Result<VersionRecord, KeysError> {
        let key = DataKey::generate()?;
        let wrapped = self
            .keyring
            .root()
            .wrap_key(&key, &purpose(env, name, version))?;
        Ok(VersionRecord {
            version,
            created_at: now,
            wrapped: Some(B64.encode(wrapped)),
        })
    }

    fn usable(loaded: &Loaded) -> Result<(), KeysError> {
        let r = &loaded.record;
        match r.state {
            KeyState::Enabled => Ok(()),
            KeyState::PendingDeletion { delete_at, .. } => Err(KeysError::PendingDeletion {
                key: record_id(&r.environment, &r.name),
                delete_at,
            }),
            KeyState::Destroyed { .. } => {
                Err(KeysError::Destroyed(record_id(&r.environment, &r.name)))
            }
        }
    }

    // ----- management -----

    /// Creates a key named `name` (or `env/name`) with its first version.
    pub async fn create_key(
        &self,
        caller: &Caller,
        name: &str,
        spec: KeySpec,
    ) -> Result<KeyInfo, KeysError> {
        let (env, name) = key_ref(caller, name)?;
        self.authorise(caller, "keys:create", env, &resource(name), None)
            .await?;
        let period = spec.rotation_period_days.unwrap_or(DEFAULT_ROTATION_DAYS);
        if !(1..=3650).contains(&period) {
            return Err(KeysError::InvalidField {
                field: "rotation_period_days",
                message: format!("rotation period {period} days is outside 1..=3650"),
            });
        }
        let now = self.clock.unix_secs();
        let record = KeyRecord {
            environment: env.to_owned(),
            name: name.to_owned(),
            description: spec.description,
            created_at: now,
            rotation_period_days: period,
            last_rotated_at: now,
            min_decryption_version: 1,
            state: KeyState::Enabled,
            versions: vec![self.new_version(env, name, 1, now)?],
        };
        let json = serde_json::to_vec(&record).map_err(|e| KeysError::Corrupt(e.to_string()))?;
        match self
            .store
            .put(KEYS_NS, &record_id(env, name), &json, Expect::Absent)
            .await
        {
            Ok(_) => Ok(KeyInfo::from(&record)),
            Err(StoreError::Conflict { .. }) => Err(KeysError::KeyExists {
                env: env.to_owned(),
                name: name.to_owned(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the key unless it exists (for keys declared in configuration,
    /// and the secrets plane's per-service keys). Runs as Rampart itself.
    pub async fn ensure_key(
        &self,
        environment: &str,
        name: &str,
        spec: KeySpec,
    ) -> Result<KeyInfo, KeysError> {
        let sys = Caller::system(environment, "config");
        match self.create_key(&sys, name, spec).await {
            Err(KeysError::KeyExists { .. }) => self.describe(&sys, name).await,
            other => other,
        }
    }

    /// Describes a key (never its material).
    pub async fn describe(&self, caller: &Caller, key: &str) -> Result<KeyInfo, KeysError> {
        let (env, name) = key_ref(caller, key)?;
        self.authorise(caller, "keys:describe", env, &resource(name), None)
            .await?;
        self.forget(env, name);
        Ok(KeyInfo::from(&self.load(env, name).await?.record))
    }

    /// Lists the keys of the caller's environment.
    pub async fn list_keys(&self, caller: &Caller) -> Result<Vec<KeyInfo>, KeysError> {
        let env = caller.principal.environment.clone();
        self.authorise(caller, "keys:list", &env, "key:*", None)
            .await?;
        self.all_records(Some(&env))
            .await
            .map(|v| v.iter().map(KeyInfo::from).collect())
    }

    async fn all_records(&self, env: Option<&str>) -> Result<Vec<KeyRecord>, KeysError> {
        let prefix = env.map(|e| format!("{e}/")).unwrap_or_default();
        let rows = self.store.list(KEYS_NS, &prefix, usize::MAX >> 1).await?;
        rows.into_iter()
            .map(|(id, e)| {
                serde_json::from_slice(&e.value)
                    .map_err(|err| KeysError::Corrupt(format!("{KEYS_NS}/{id}: {err}")))
            })
            .collect()
    }

    /// Adds a new version; new ciphertexts use it, old ones still decrypt.
    pub async fn rotate(&self, caller: &Caller, key: &str) -> Result<u32, KeysError> {
        let v = self.rotate_if(caller, key, None).await?;
        // Without a condition a version is always added.
        v.ok_or_else(|| KeysError::Conflict(key.to_owned()))
    }

    /// Rotates, or with `due_by` only if the key's period has run out by
    /// then, decided on the record as written (so that nodes sharing the
    /// store and running their schedulers at once rotate it once).
    async fn rotate_if(
        &self,
        caller: &Caller,
        key: &str,
        due_by: Option<u64>,
    ) -> Result<Option<u32>, KeysError> {
        let (env, name) = key_ref(caller, key)?;
        self.authorise(caller, "keys:rotate", env, &resource(name), None)
            .await?;
        let now = self.clock.unix_secs();
        let res = self
            .update(env, name, |r| {
                if r.state != KeyState::Enabled {
                    return Err(KeysError::InvalidRequest(format!(
                        "key {env}/{name} is not enabled; it cannot be rotated"
                    )));
                }
                if due_by.is_some_and(|t| r.next_rotation_at() > t) {
                    return Ok(None);
                }
                let v = r.current().saturating_add(1);
                r.versions.push(self.new_version(env, name, v, now)?);
                r.last_rotated_at = now;
                Ok(Some(v))
            })
            .await;
        match res {
            Ok((v, _)) => Ok(v),
            Err(e) => {
                self.record_error(caller, "keys:rotate", env, &resource(name), &e)
                    .await;
                Err(e)
            }
        }
    }

    /// Rotates every enabled key whose period has run out by `now`; for the
    /// scheduler. Returns the keys rotated (`env/name`, new version); a key
    /// another node rotated first is not rotated again.
    pub async fn rotate_due(&self, now: u64) -> Result<Vec<(String, u32)>, KeysError> {
        let mut out = Vec::new();
        for r in self.all_records(None).await? {
            if r.state == KeyState::Enabled && r.next_rotation_at() <= now {
                let sys = Caller::system(&r.environment, "scheduler");
                match self.rotate_if(&sys, &r.name, Some(now)).await {
                    Ok(Some(v)) => out.push((record_id(&r.environment, &r.name), v)),
                    Ok(None) => {}
                    // As in `purge_due`: left for the next run, the others
                    // rotate now.
                    Err(KeysError::Conflict(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// Sets the rotation period and/or the minimum decryption version (which
    /// retires every older version: its ciphertexts are refused).
    pub async fn configure(
        &self,
        caller: &Caller,
        key: &str,
        rotation_period_days: Option<u32>,
        min_decryption_version: Option<u32>,
    ) -> Result<KeyInfo, KeysError> {
        let (env, name) = key_ref(caller, key)?;
        self.authorise(caller, "keys:configure", env, &resource(name), None)
            .await?;
        let (_, r) = self
            .update(env, name, |r| {
                if let Some(p) = rotation_period_days {
                    if !(1..=3650).contains(&p) {
                        return Err(KeysError::InvalidField {
                            field: "rotation_period_days",
                            message: format!("rotation period {p} days is outside 1..=3650"),
                        });
                    }
                    r.rotation_period_days = p;
                }
                if let Some(m) = min_decryption_version {
                    if m == 0 || m > r.current() {
                        return Err(KeysError::InvalidField {
                            field: "min_decryption_version",
                            message: format!(
                                "minimum decryption version {m} must be between 1 and the current version {}",
                                r.current()
                            ),
                        });
                    }
                    r.min_decryption_version = m;
                }
                Ok(())
            })
            .await?;
        Ok(KeyInfo::from(&r))
    }

    /// Schedules the destruction of a key's material in `days` (7 to 30,
    /// default 7); the key is unusable from now on. Returns the deletion time.
    pub async fn schedule_deletion(
        &self,
        caller: &Caller,
        key: &str,
        days: Option<u32>,
    ) -> Result<u64, KeysError> {
        let (env, name) = key_ref(caller, key)?;
        let days = days.unwrap_or(DEFAULT_DELETION_DAYS);
        if !(7..=30).contains(&days) {
            return Err(KeysError::InvalidField {
                field: "days",
                message: format!("deletion window {days} days is outside 7..=30"),
            });
        }
        self.authorise(caller, "keys:schedule-deletion", env, &resource(name), None)
            .await?;
        let now = self.clock.unix_secs();
        let delete_at = now.saturating_add(u64::from(days) * DAY);
        self.update(env, name, |r| match r.state {
            KeyState::Enabled => {
                r.state = KeyState::PendingDeletion {
                    scheduled_at: now,
                    delete_at,
                };
                Ok(())
            }
            _ => Err(KeysError::InvalidRequest(format!(
                "key {env}/{name} is already pending deletion or destroyed"
            ))),
        })
        .await?;
        Ok(delete_at)
    }

    /// Cancels a scheduled deletion before its window ends; the key is
    /// usable again.
    pub async fn cancel_deletion(&self, caller: &Caller, key: &str) -> Result<(), KeysError> {
        let (env, name) = key_ref(caller, key)?;
        self.authorise(caller, "keys:cancel-deletion", env, &resource(name), None)
            .await?;
        let now = self.clock.unix_secs();
        self.update(env, name, |r| match r.state {
            // Past its window the key is due for destruction, whether or
            // not the scheduler has got to it.
            KeyState::PendingDeletion { delete_at, .. } if delete_at <= now => {
                Err(KeysError::InvalidRequest(format!(
                    "key {env}/{name}'s deletion window ended at unix time {delete_at}; it can no longer be cancelled"
                )))
            }
            KeyState::PendingDeletion { .. } => {
                r.state = KeyState::Enabled;
                Ok(())
            }
            _ => Err(KeysError::InvalidRequest(format!(
                "key {env}/{name} is not pending deletion"
            ))),
        })
        .await?;
        Ok(())
    }

    /// Destroys the material of every key whose deletion window has passed
    /// by `now`; for the scheduler. Returns the keys destroyed.
    pub async fn purge_due(&self, now: u64) -> Result<Vec<String>, KeysError> {
        let mut out = Vec::new();
        for r in self.all_records(None).await? {
            let KeyState::PendingDeletion { delete_at, .. } = r.state else {
                continue;
            };
            if delete_at > now {
                continue;
            }
            let sys = Caller::system(&r.environment, "scheduler");
            let res = resource(&r.name);
            // Record first: a destruction nobody can account for must not happen.
            self.auditor
                .record(
                    &sys,
                    &r.environment,
                    "keys:destroy",
                    &format!("{}/{res}", r.environment),
                    Outcome::Allowed,
                    format!("deletion window ended at {delete_at}"),
                )
                .await?;
            let updated = self
                .update(&r.environment, &r.name, |rec| {
                    // Decided on the record as written: a deletion cancelled
                    // (and perhaps scheduled again, later) since the list
                    // was read is not due.
                    match rec.state {
                        KeyState::PendingDeletion { delete_at, .. } if delete_at <= now => {}
                        _ => return Ok(false),
                    }
                    for v in &mut rec.versions {
                        v.wrapped = None;
                    }
                    rec.state = KeyState::Destroyed { destroyed_at: now };
                    Ok(true)
                })
                .await;
            match updated {
                Ok((true, _)) => out.push(record_id(&r.environment, &r.name)),
                Ok((false, _)) => {}
                // Changed by others on every try: left for the next run,
                // and the other due keys are still destroyed in this one.
                Err(KeysError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    // ----- cryptography -----

    /// Encrypts under the key's current version; `aad` is scratch space
    /// for the associated data (a batch reuses one buffer for every item).
    fn seal_with(
        loaded: &Loaded,
        plaintext: &[u8],
        context: &Context,
        aad: &mut Vec<u8>,
    ) -> Result<Vec<u8>, KeysError> {
        Self::usable(loaded)?;
        let r = &loaded.record;
        let version = r.current();
        let cipher = loaded
            .cipher(version)
            .ok_or_else(|| KeysError::Destroyed(record_id(&r.environment, &r.name)))?;
        // Sealed in place in the output, allocated once at its final size:
        // header, nonce, then the plaintext's bytes encrypted where they
        // lie, then the tag.
        let mut out = Vec::with_capacity(
            ciphertext::header_len(&r.environment, &r.name) + NONCE_LEN + plaintext.len() + TAG_LEN,
        );
        ciphertext::write_header(&mut out, &r.environment, &r.name, version)?;
        ciphertext::aad_into(aad, &out, context);
        seal_after_header(cipher, out, plaintext, aad)
    }

    /// Decrypts with the version the ciphertext names; `aad` as for
    /// [`KeyService::seal_with`].
    fn open_with(
        loaded: &Loaded,
        parsed: &ciphertext::Parsed<'_>,
        context: &Context,
        aad: &mut Vec<u8>,
    ) -> Result<SecretBytes, KeysError> {
        Self::usable(loaded)?;
        let r = &loaded.record;
        let id = || record_id(&r.environment, &r.name);
        if parsed.version < r.min_decryption_version {
            return Err(KeysError::RetiredVersion {
                key: id(),
                version: parsed.version,
                min: r.min_decryption_version,
            });
        }
        if parsed.version > r.current() {
            return Err(KeysError::UnknownVersion {
                key: id(),
                version: parsed.version,
            });
        }
        let cipher = loaded
            .cipher(parsed.version)
            .ok_or_else(|| KeysError::Destroyed(id()))?;
        ciphertext::aad_into(aad, parsed.header, context);
        cipher
            .decrypt(
                Nonce::from_slice(parsed.nonce),
                Payload {
                    msg: parsed.body,
                    aad,
                },
            )
            .map(SecretBytes::new)
            .map_err(|_| KeysError::Decrypt)
    }

    fn check_input(plaintext: &[u8], context: &Context) -> Result<(), KeysError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(KeysError::TooLarge {
                len: plaintext.len(),
                max: MAX_PLAINTEXT,
            });
        }
        ciphertext::check_context(context)
    }

    async fn with_error_record<T>(
        &self,
        caller: &Caller,
        action: &str,
        env: &str,
        name: &str,
        res: Result<T, KeysError>,
    ) -> Result<T, KeysError> {
        if let Err(e) = &res {
            self.record_error(caller, action, env, &resource(name), e)
                .await;
        }
        res
    }

    /// Encrypts `plaintext` under the newest version of `key` (`name` or
    /// `env/name`), binding `context`.
    pub async fn encrypt(
        &self,
        caller: &Caller,
        key: &str,
        plaintext: &[u8],
        context: &Context,
    ) -> Result<Vec<u8>, KeysError> {
        let (env, name) = key_ref(caller, key)?;
        Self::check_input(plaintext, context)?;
        self.authorise(caller, "keys:encrypt", env, &resource(name), Some(context))
            .await?;
        let res = match self.load(env, name).await {
            Ok(l) => Self::seal_with(&l, plaintext, context, &mut Vec::new()),
            Err(e) => Err(e),
        };
        self.with_error_record(caller, "keys:encrypt", env, name, res)
            .await
    }

    /// Decrypts a ciphertext made by [`KeyService::encrypt`] with the same context.
    pub async fn decrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        context: &Context,
    ) -> Result<SecretBytes, KeysError> {
        ciphertext::check_context(context)?;
        let parsed = ciphertext::parse(blob)?;
        let (env, name) = (parsed.environment, parsed.key);
        valid_name(env)?;
        valid_name(name)?;
        self.authorise(caller, "keys:decrypt", env, &resource(name), Some(context))
            .await?;
        let res = match self.load(env, name).await {
            Ok(l) => Self::open_with(&l, &parsed, context, &mut Vec::new()),
            Err(e) => Err(e),
        };
        self.with_error_record(caller, "keys:decrypt", env, name, res)
            .await
    }

    /// A fresh 256-bit data key, in plaintext and encrypted under `key` with `context`.
    pub async fn generate_data_key(
        &self,
        caller: &Caller,
        key: &str,
        context: &Context,
    ) -> Result<GeneratedDataKey, KeysError> {
        let (env, name) = key_ref(caller, key)?;
        ciphertext::check_context(context)?;
        self.authorise(
            caller,
            "keys:generate-data-key",
            env,
            &resource(name),
            Some(context),
        )
        .await?;
        let res = async {
            let loaded = self.load(env, name).await?;
            let plaintext = DataKey::generate()?;
            let wrapped = Self::seal_with(&loaded, plaintext.expose(), context, &mut Vec::new())?;
            Ok(GeneratedDataKey { plaintext, wrapped })
        }
        .await;
        self.with_error_record(caller, "keys:generate-data-key", env, name, res)
            .await
    }

    /// Decrypts a wrapped data key made by [`KeyService::generate_data_key`].
    pub async fn decrypt_data_key(
        &self,
        caller: &Caller,
        wrapped: &[u8],
        context: &Context,
    ) -> Result<DataKey, KeysError> {
        let plain = self.decrypt(caller, wrapped, context).await?;
        Ok(DataKey::from_slice(plain.expose())?)
    }

    /// Re-encrypts a ciphertext under the newest version of its key, with
    /// the same context, without the plaintext leaving the service.
    pub async fn rewrap(
        &self,
        caller: &Caller,
        blob: &[u8],
        context: &Context,
    ) -> Result<Vec<u8>, KeysError> {
        ciphertext::check_context(context)?;
        let parsed = ciphertext::parse(blob)?;
        let (env, name) = (parsed.environment, parsed.key);
        valid_name(env)?;
        valid_name(name)?;
        self.authorise(caller, "keys:rewrap", env, &resource(name), Some(context))
            .await?;
        let res = async {
            let loaded = self.load(env, name).await?;
            let mut aad = Vec::new();
            let plain = Self::open_with(&loaded, &parsed, context, &mut aad)?;
            Self::seal_with(&loaded, plain.expose(), context, &mut aad)
        }
        .await;
        self.with_error_record(caller, "keys:rewrap", env, name, res)
            .await
    }

    /// Encrypts many plaintexts under one key; one result per item, in order.
    /// Every item is decided by policy as a single call would be; the
    /// decisions are recorded as in [`KeyService::authorise_batch`].
    pub async fn encrypt_batch(
        &self,
        caller: &Caller,
        key: &str,
        items: &[(Vec<u8>, Context)],
    ) -> Vec<Result<Vec<u8>, KeysError>> {
        let action = "keys:encrypt";
        let mut out: Vec<Result<Vec<u8>, KeysError>> = Vec::with_capacity(items.len());
        let mut targets = Vec::with_capacity(items.len());
        // The key is resolved once; when it is bad, every item says so.
        let resolved = key_ref(caller, key).ok();
        for (plaintext, context) in items {
            match resolved
                .map_or_else(|| key_ref(caller, key), Ok)
                .and_then(|k| Self::check_input(plaintext, context).map(|()| k))
            {
                Ok((env, name)) => {
                    targets.push(Some(BatchTarget { env, name, context }));
                    out.push(Ok(Vec::new()));
                }
                Err(e) => {
                    targets.push(None);
                    out.push(Err(e));
                }
            }
        }
        let decided = self.authorise_batch(caller, action, &targets).await;
        let mut failures = Vec::new();
        let mut keys = BatchKeys::default();
        let mut aad = Vec::new();
        for (i, ((slot, target), decision)) in out.iter_mut().zip(&targets).zip(decided).enumerate()
        {
            let Some(t) = target else { continue };
            if let Err(e) = decision {
                *slot = Err(e);
                continue;
            }
            let res = match self.load_for_batch(&mut keys, t.env, t.name).await {
                Ok(l) => items.get(i).map_or(Err(KeysError::Decrypt), |(p, c)| {
                    Self::seal_with(l, p, c, &mut aad)
                }),
                Err(e) => Err(e),
            };
            if let Err(e) = &res {
                failures.push((i, t.env, t.name, e.to_string()));
            }
            *slot = res;
        }
        self.record_batch_errors(caller, action, failures).await;
        out
    }

    /// Decrypts many ciphertexts (of any keys of the caller's reach); one
    /// result per item, in order.
    pub async fn decrypt_batch(
        &self,
        caller: &Caller,
        items: &[(Vec<u8>, Context)],
    ) -> Vec<Result<SecretBytes, KeysError>> {
        self.ciphertext_batch(caller, "keys:decrypt", items, Self::open_with)
            .await
    }

    /// Generates many data keys under one key; one result per context, in order.
    pub async fn generate_data_key_batch(
        &self,
        caller: &Caller,
        key: &str,
        contexts: &[Context],
    ) -> Vec<Result<GeneratedDataKey, KeysError>> {
        let action = "keys:generate-data-key";
        let mut out = Vec::with_capacity(contexts.len());
        let mut targets = Vec::with_capacity(contexts.len());
        let mut early = Vec::with_capacity(contexts.len());
        let resolved = key_ref(caller, key).ok();
        for context in contexts {
            match resolved
                .map_or_else(|| key_ref(caller, key), Ok)
                .and_then(|k| ciphertext::check_context(context).map(|()| k))
            {
                Ok((env, name)) => {
                    targets.push(Some(BatchTarget { env, name, context }));
                    early.push(None);
                }
                Err(e) => {
                    targets.push(None);
                    early.push(Some(e));
                }
            }
        }
        let decided = self.authorise_batch(caller, action, &targets).await;
        let mut failures = Vec::new();
        let mut keys = BatchKeys::default();
        let mut aad = Vec::new();
        for (i, ((target, early), decision)) in targets.iter().zip(early).zip(decided).enumerate() {
            let t = match (target, early, decision) {
                (_, Some(e), _) | (_, None, Err(e)) => {
                    out.push(Err(e));
                    continue;
                }
                (Some(t), None, Ok(())) => t,
                (None, None, Ok(())) => {
                    out.push(Err(KeysError::Decrypt));
                    continue;
                }
            };
            let res = async {
                let loaded = self.load_for_batch(&mut keys, t.env, t.name).await?;
                let plaintext = DataKey::generate()?;
                let wrapped = Self::seal_with(loaded, plaintext.expose(), t.context, &mut aad)?;
                Ok::<_, KeysError>(GeneratedDataKey { plaintext, wrapped })
            }
            .await;
            if let Err(e) = &res {
                failures.push((i, t.env, t.name, e.to_string()));
            }
            out.push(res);
        }
        self.record_batch_errors(caller, action, failures).await;
        out
    }

    /// Rewraps many ciphertexts; one result per item, in order.
    pub async fn rewrap_batch(
        &self,
        caller: &Caller,
        items: &[(Vec<u8>, Context)],
    ) -> Vec<Result<Vec<u8>, KeysError>> {
        self.ciphertext_batch(caller, "keys:rewrap", items, |loaded, p, context, aad| {
            let plain = Self::open_with(loaded, p, context, aad)?;
            Self::seal_with(loaded, plain.expose(), context, aad)
        })
        .await
    }

    /// A batch call over ciphertexts: each is parsed, decided by policy as
    /// `action` on the key it names (see [`KeyService::authorise_batch`]),
    /// and given with that key to `op`; failures after the decision are
    /// recorded together.
    async fn ciphertext_batch<T>(
        &self,
        caller: &Caller,
        action: &'static str,
        items: &[(Vec<u8>, Context)],
        mut op: impl FnMut(
            &Loaded,
            &ciphertext::Parsed<'_>,
            &Context,
            &mut Vec<u8>,
        ) -> Result<T, KeysError>,
    ) -> Vec<Result<T, KeysError>> {
        let parsed = parse_batch(items);
        let targets: Vec<Option<BatchTarget<'_>>> = parsed
            .iter()
            .zip(items)
            .map(|(p, (_, context))| {
                p.as_ref().ok().map(|p| BatchTarget {
                    env: p.environment,
                    name: p.key,
                    context,
                })
            })
            .collect();
        let decided = self.authorise_batch(caller, action, &targets).await;
        let mut out = Vec::with_capacity(items.len());
        let mut failures = Vec::new();
        let mut keys = BatchKeys::default();
        let mut aad = Vec::new();
        for (i, ((p, (_, context)), decision)) in
            parsed.into_iter().zip(items).zip(decided).enumerate()
        {
            let p = match (p, decision) {
                (Err(e), _) | (Ok(_), Err(e)) => {
                    out.push(Err(e));
                    continue;
                }
                (Ok(p), Ok(())) => p,
            };
            let res = match self.load_for_batch(&mut keys, p.environment, p.key).await {
                Ok(loaded) => op(loaded, &p, context, &mut aad),
                Err(e) => Err(e),
            };
            if let Err(e) = &res {
                failures.push((i, p.environment, p.key, e.to_string()));
            }
            out.push(res);
        }
        self.record_batch_errors(caller, action, failures).await;
        out
    }

    /// Decides every item of one batch call by policy, exactly as single
    /// calls would be decided, and records the decisions: one audit record
    /// per distinct (key, outcome, reason), whose details give the batch
    /// size, how many items it covers and their indices. The records are
    /// queued together and share a group commit. An item proceeds only if
    /// it was allowed and its record was taken (fail closed). Items given
    /// as `None` failed before the decision and get `Ok` here, unrecorded,
    /// as a single call that fails its input checks.
    async fn authorise_batch(
        &self,
        caller: &Caller,
        action: &str,
        targets: &[Option<BatchTarget<'_>>],
    ) -> Vec<Result<(), KeysError>> {
        let mut out: Vec<Result<(), KeysError>> = Vec::with_capacity(targets.len());
        // Each environment's policy is read once per call, with the context
        // keys its conditions read: items of the same key whose contexts
        // agree on those keys get the same decision, so it is made once
        // (`policy::condition_context_keys`). Every item is still decided,
        // recorded and refused or allowed on its own.
        type Snapshot = Arc<(Arc<Vec<Statement>>, Vec<String>)>;
        let mut policies: HashMap<&str, Snapshot> = HashMap::new();
        // The last item's environment and its snapshot, so a run of items
        // of one environment looks nothing up.
        let mut current: Option<(&str, Snapshot)> = None;
        // (env, name, the context's values of those keys) -> group.
        let mut memo: HashMap<(&str, &str, Vec<Option<&str>>), usize> = HashMap::new();
        let mut last: Option<(&str, &str, Vec<Option<&str>>, usize)> = None;
        // (env, name, allowed, reason) and the item indices.
        let mut groups: Vec<(GroupKey<'_>, Vec<usize>)> = Vec::new();
        let mut group_index: HashMap<GroupKey<'_>, usize> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            let Some(t) = t else {
                out.push(Ok(()));
                continue;
            };
            if current.as_ref().is_none_or(|(env, _)| !same(env, t.env)) {
                let snapshot = match policies.get(t.env) {
                    Some(s) => s.clone(),
                    None => match self.policies.get(t.env).await {
                        Ok(statements) => {
                            let keys = policy::condition_context_keys(&statements)
                                .into_iter()
                                .map(str::to_owned)
                                .collect();
                            let s = Arc::new((statements, keys));
                            policies.insert(t.env, s.clone());
                            s
                        }
                        Err(e) => {
                            out.push(Err(e));
                            continue;
                        }
                    },
                };
                current = Some((t.env, snapshot));
            }
            let Some((_, snapshot)) = &current else {
                out.push(Err(KeysError::Internal("policy snapshot missing".into())));
                continue;
            };
            let (statements, keys) = &**snapshot;
            let values: Vec<Option<&str>> = keys
                .iter()
                .map(|k| t.context.get(k).map(String::as_str))
                .collect();
            let group = match &last {
                Some((env, name, v, g))
                    if same(env, t.env) && same(name, t.name) && *v == values =>
                {
                    *g
                }
                _ => {
                    let key = (t.env, t.name, values);
                    let g = match memo.get(&key) {
                        Some(g) => *g,
                        None => {
                            let res = resource(t.name);
                            let d = policy::evaluate(
                                statements,
                                caller,
                                &Request {
                                    action,
                                    resource: &res,
                                    environment: t.env,
                                    context: Some(t.context),
                                },
                            );
                            let group_key = (t.env, t.name, d.allowed, d.reason);
                            let g = match group_index.get(&group_key) {
                                Some(g) => *g,
                                None => {
                                    group_index.insert(group_key.clone(), groups.len());
                                    groups.push((group_key, Vec::new()));
                                    groups.len() - 1
                                }
                            };
                            memo.insert(key.clone(), g);
                            g
                        }
                    };
                    last = Some((key.0, key.1, key.2, g));
                    g
                }
            };
            if let Some((_, indices)) = groups.get_mut(group) {
                indices.push(i);
            }
            out.push(Ok(()));
        }
        // In the order of (env, name, allowed, reason), as before.
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let total = targets.len().to_string();
        let mut pending = Vec::new();
        for ((env, name, allowed, reason), indices) in groups {
            for chunk in indices.chunks(BATCH_RECORD_ITEMS) {
                let mut details = BTreeMap::new();
                details.insert("batch_size".into(), total.clone());
                details.insert("batch_items".into(), chunk.len().to_string());
                details.insert("batch_indices".into(), index_ranges(chunk));
                let outcome = if allowed {
                    Outcome::Allowed
                } else {
                    Outcome::Denied
                };
                let record = self.auditor.submit(
                    caller,
                    env,
                    action,
                    &format!("{env}/{}", resource(name)),
                    outcome,
                    reason.clone(),
                    details,
                );
                pending.push((record, allowed, reason.clone(), chunk.to_vec()));
            }
        }
        for (record, allowed, reason, indices) in pending {
            let taken = record.await.map_err(|e| e.to_string());
            for i in indices {
                let Some(slot) = out.get_mut(i) else { continue };
                *slot = match &taken {
                    Err(e) => Err(KeysError::AuditRefused(e.clone())),
                    Ok(_) if !allowed => Err(KeysError::Denied {
                        reason: reason.clone(),
                    }),
                    Ok(_) => Ok(()),
                };
            }
        }
        out
    }

    /// Records the failures of allowed batch items (best effort, as for
    /// single calls): one record per distinct (key, error).
    async fn record_batch_errors(
        &self,
        caller: &Caller,
        action: &str,
        failures: Vec<(usize, &str, &str, String)>,
    ) {
        let mut groups: BTreeMap<(&str, &str, String), Vec<usize>> = BTreeMap::new();
        for (i, env, name, err) in failures {
            groups.entry((env, name, err)).or_default().push(i);
        }
        let mut pending = Vec::new();
        for ((env, name, err), indices) in groups {
            for chunk in indices.chunks(BATCH_RECORD_ITEMS) {
                let mut details = BTreeMap::new();
                details.insert("batch_items".into(), chunk.len().to_string());
                details.insert("batch_indices".into(), index_ranges(chunk));
                pending.push(self.auditor.submit(
                    caller,
                    env,
                    action,
                    &format!("{env}/{}", resource(name)),
                    Outcome::Error,
                    err.clone(),
                    details,
                ));
            }
        }
        for p in pending {
            let _ = p.await;
        }
    }
}

/// Checks and parses the items of a batch of ciphertexts as single calls
/// do; names equal to the previous item's valid ones are not checked again.
fn parse_batch(items: &[(Vec<u8>, Context)]) -> Vec<Result<ciphertext::Parsed<'_>, KeysError>> {
    let mut valid: Option<(&str, &str)> = None;
    items
        .iter()
        .map(|(blob, context)| {
            ciphertext::check_context(context)?;
            let p = ciphertext::parse(blob)?;
            if !valid.is_some_and(|(e, n)| e == p.environment && n == p.key) {
                valid_name(p.environment)?;
                valid_name(p.key)?;
                valid = Some((p.environment, p.key));
            }
            Ok(p)
        })
        .collect()
}

/// One item of a batch call, as its policy decision sees it.
struct BatchTarget<'a> {
    env: &'a str,
    name: &'a str,
    context: &'a Context,
}

/// A batch decision's record: (env, name, allowed, reason).
type GroupKey<'a> = (&'a str, &'a str, bool, String);

/// The keys one batch call has loaded, each loaded once per call (as a
/// single call loads its key once), so items do not each go through the
/// shared cache. A failed load is not kept: every item of that key tries
/// again and gets its own error.
#[derive(Default)]
struct BatchKeys<'a> {
    loaded: Vec<(&'a str, &'a str, Arc<Loaded>)>,
    index: HashMap<(&'a str, &'a str), usize>,
    last: usize,
}

impl<'a> BatchKeys<'a> {
    fn position(&mut self, env: &'a str, name: &'a str) -> Option<usize> {
        let hit = match self.loaded.get(self.last) {
            Some((e, n, _)) if same(e, env) && same(n, name) => self.last,
            _ => *self.index.get(&(env, name))?,
        };
        self.last = hit;
        Some(hit)
    }

    fn insert(&mut self, env: &'a str, name: &'a str, loaded: Arc<Loaded>) -> usize {
        self.last = self.loaded.len();
        self.index.insert((env, name), self.last);
        self.loaded.push((env, name, loaded));
        self.last
    }

    fn at(&self, i: usize) -> Option<&Loaded> {
        self.loaded.get(i).map(|(_, _, l)| &**l)
    }
}

/// String equality that skips the bytes when both are the same slice (the
/// items of `encrypt_batch` all name their key with the caller's string).
fn same(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Most item indices one batch audit record names.
const BATCH_RECORD_ITEMS: usize = 512;

/// Sorted indices as ranges: `0-3,5,7-9`.
fn index_ranges(indices: &[usize]) -> String {
    let mut out = String::new();
    let mut iter = indices.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
    }
    out
}
