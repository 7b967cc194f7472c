//! [`Identity`]: the records, the caches in front of them, and the
//! operations on users, teams and signing keys. Sessions, API keys, TOTP and
//! elevations add their operations in their own modules.
//!
//! The store is the truth; every record is JSON in an `identity/…`
//! namespace. What verification reads on every request (users, API keys,
//! elevations, the revocation list, the published keys) is held in memory,
//! loaded at [`Identity::open`], written through on every change and pruned
//! by [`Identity::maintain`]; [`Identity::prune`] deletes the sessions,
//! refresh tokens and revocations the store no longer needs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use ed25519_dalek::{SigningKey, VerifyingKey};
use rampart_audit::{Actor, Audit, Event, Outcome, Tier};
use rampart_core::SharedClock;
use rampart_crypto::{DataKey, SecretBytes};
use rampart_store::{Expect, Keyring, Store, StoreError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::apikey::hex;
use crate::elevation::Elevation;
use crate::password::{check_new_password, PasswordParams, Passwords};
use crate::policy::{
    Authorizer, Policy, Principal, PrincipalKind, Role, Scope, Target, PLATFORM_ENV,
};
use crate::sessions::ApiKeyRecord;
use crate::throttle::{SharedThrottle, StoreThrottle, Throttle, ThrottleConfig};
use crate::IdentityError;

pub(crate) const NS_USERS: &str = "identity/users";
pub(crate) const NS_NAMES: &str = "identity/user_names";
pub(crate) const NS_TEAMS: &str = "identity/teams";
pub(crate) const NS_APIKEYS: &str = "identity/apikeys";
pub(crate) const NS_SESSIONS: &str = "identity/sessions";
pub(crate) const NS_REFRESH: &str = "identity/refresh";
pub(crate) const NS_REVOKED: &str = "identity/revoked";
pub(crate) const NS_SIGNING: &str = "identity/signing";
pub(crate) const NS_ELEVATIONS: &str = "identity/elevations";
/// One record, `generation`, rewritten in the same atomic write as every
/// change to a namespace nodes cache (principals, API keys, elevations,
/// revocations): its version tells another node whether to re-read them.
pub(crate) const NS_META: &str = "identity/meta";
const GENERATION: &str = "generation";
/// Even when the generation has not moved, a node re-reads everything this
/// often (seconds), so that a change written without it (by an older
/// binary during a rolling upgrade, or by hand) still arrives.
const FULL_RELOAD_SECS: u64 = 60;

/// Whether writes to `ns` must move the generation.
fn cached_ns(ns: &str) -> bool {
    [NS_USERS, NS_APIKEYS, NS_ELEVATIONS, NS_REVOKED].contains(&ns)
}

/// The write that moves the generation, to add to a change's batch.
pub(crate) fn generation_bump() -> rampart_store::Op {
    rampart_store::Op::Put {
        ns: NS_META.into(),
        key: GENERATION.into(),
        value: b"{}".to_vec(),
        expect: Expect::Any,
    }
}
pub(crate) const LIST_LIMIT: usize = 1_000_000;

/// Identity configuration, as `rampart.toml` gives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Access token lifetime, seconds (1 hour by default).
    pub access_ttl_secs: u64,
    /// Refresh token lifetime, seconds.
    pub refresh_ttl_secs: u64,
    /// A session's absolute lifetime, however often refreshed, seconds.
    pub session_max_secs: u64,
    /// Role name → permission patterns (`plane:action`, `*` wildcards).
    pub roles: std::collections::BTreeMap<String, Vec<String>>,
    /// Roles whose holders must log in with TOTP (an elevation to one
    /// counts only in a session that passed a second factor).
    pub totp_required_roles: Vec<Role>,
    /// Argon2id parameters for new password hashes.
    pub passwords: PasswordParams,
    /// Brute-force throttling.
    pub throttle: ThrottleConfig,
    /// Longest elevation that may be requested, seconds.
    pub max_elevation_secs: u64,
    /// How long an elevation request waits for approval, seconds.
    pub elevation_request_ttl_secs: u64,
    /// The node name put in audit records.
    pub node: String,
    /// Verified access tokens remembered (signature checks skipped on a hit;
    /// expiry and revocation are still checked). 0 disables.
    pub token_cache_entries: usize,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            issuer: "rampart".into(),
            audience: "rampart-api".into(),
            access_ttl_secs: 3600,
            refresh_ttl_secs: 14 * 86_400,
            session_max_secs: 30 * 86_400,
            roles: Policy::default_table(),
            totp_required_roles: vec![Role::Admin],
            passwords: PasswordParams::default(),
            throttle: ThrottleConfig::default(),
            max_elevation_secs: 8 * 3600,
            elevation_request_ttl_secs: 86_400,
            node: String::new(),
            token_cache_entries: 100_000,
        }
    }
}

/// TOTP enrolment state of a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TotpState {
    /// The secret, sealed under the identity TOTP data key, base64.
    pub sealed: String,
    /// Whether a code has confirmed the enrolment.
    pub confirmed: bool,
    /// The last step a code was accepted for (codes are single use).
    pub last_step: u64,
    /// HMACs of the unused recovery codes.
    pub recovery: Vec<String>,
}

/// A stored user or service principal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserRecord {
    pub id: String,
    pub name: String,
    pub kind: PrincipalKind,
    pub roles: BTreeSet<Role>,
    pub teams: Vec<String>,
    pub environments: BTreeSet<String>,
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub created_at: u64,
    pub totp: Option<TotpState>,
}

/// A user or service principal as the API shows it (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// User or service.
    pub kind: PrincipalKind,
    /// Roles held without elevation.
    pub roles: BTreeSet<Role>,
    /// Teams.
    pub teams: Vec<String>,
    /// Environments it may act in.
    pub environments: BTreeSet<String>,
    /// Disabled principals cannot log in; their sessions were revoked.
    pub disabled: bool,
    /// When it was created.
    pub created_at: u64,
    /// Whether TOTP is enrolled and confirmed.
    pub totp_enabled: bool,
}

impl UserRecord {
    /// The principal as team scoping sees it.
    pub(crate) fn target(&self) -> Target<'_> {
        Target {
            id: &self.id,
            teams: &self.teams,
            roles: &self.roles,
            environments: &self.environments,
        }
    }
}

impl From<&UserRecord> for User {
    fn from(u: &UserRecord) -> Self {
        User {
            id: u.id.clone(),
            name: u.name.clone(),
            kind: u.kind,
            roles: u.roles.clone(),
            teams: u.teams.clone(),
            environments: u.environments.clone(),
            disabled: u.disabled,
            created_at: u.created_at,
            totp_enabled: u.totp.as_ref().is_some_and(|t| t.confirmed),
        }
    }
}

/// What creating a user or service principal takes.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Unique name: 1–64 of `a-z 0-9 . _ @ -`.
    pub name: String,
    /// User or service (services have no password; they use API keys).
    pub kind: PrincipalKind,
    /// Roles.
    pub roles: BTreeSet<Role>,
    /// Teams (must exist).
    #[serde(default)]
    pub teams: Vec<String>,
    /// Environments.
    pub environments: BTreeSet<String>,
    /// Initial password (users only).
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("roles", &self.roles)
            .field("teams", &self.teams)
            .field("environments", &self.environments)
            .finish_non_exhaustive()
    }
}

/// A team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Team {
    /// Unique name.
    pub name: String,
    /// When it was created.
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningMeta {
    gen: u64,
    kid: String,
    created_at: u64,
    retired_at: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Signing {
    pub current_kid: String,
    pub current: SigningKey,
    pub verifying: HashMap<String, VerifyingKey>,
    metas: Vec<SigningMeta>,
}

#[derive(Debug, Default)]
pub(crate) struct Cache {
    pub users: HashMap<String, UserRecord>,
    pub names: HashMap<String, String>,
    pub keys: HashMap<String, ApiKeyRecord>,
    pub elevations: HashMap<String, Elevation>,
}

/// The identity plane. Share it behind an `Arc`.
pub struct Identity {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: SharedClock,
    pub(crate) cfg: IdentityConfig,
    pub(crate) authz: Authorizer,
    pub(crate) audit: Arc<Audit>,
    pub(crate) pepper: SecretBytes,
    pub(crate) totp_key: DataKey,
    pub(crate) passwords: Passwords,
    pub(crate) throttle: Throttle,
    /// Where the counts every node shares live (the store unless
    /// [`Identity::with_shared_throttle`] says otherwise).
    pub(crate) shared_throttle: Arc<dyn SharedThrottle>,
    /// Times the shared counts failed and this node's own decided.
    pub(crate) throttle_fallbacks: std::sync::atomic::AtomicU64,
    pub(crate) cache: RwLock<Cache>,
    pub(crate) signing: RwLock<Signing>,
    pub(crate) revoked: RwLock<HashMap<String, u64>>,
    /// Changes this node made to `cache` or `revoked`, counted so that a
    /// reload that read the store before one of them does not undo it.
    pub(crate) local_changes: std::sync::atomic::AtomicU64,
    pub(crate) token_cache: RwLock<HashMap<[u8; 32], (Principal, u64)>>,
    /// The generation the cache was last read at, and when (Unix seconds),
    /// for [`Identity::refresh`].
    loaded: std::sync::Mutex<Loaded>,
    keyring: Arc<Keyring>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Loaded {
    generation: Option<u64>,
    at: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

pub(crate) fn read_lock<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write_lock<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, IdentityError> {
    serde_json::to_vec(v).map_err(|e| IdentityError::Corrupt(format!("encode: {e}")))
}

pub(crate) fn from_json<T: DeserializeOwned>(
    ns: &str,
    key: &str,
    bytes: &[u8],
) -> Result<T, IdentityError> {
    serde_json::from_slice(bytes).map_err(|e| IdentityError::Corrupt(format!("{ns}/{key}: {e}")))
}

fn random_seed() -> Result<SecretBytes, StoreError> {
    Ok(SecretBytes::new(
        rampart_crypto::random_array::<32>()?.to_vec(),
    ))
}

/// A fresh random id with a prefix: `u_` + 16 hex digits.
pub(crate) fn new_id(prefix: &str) -> Result<String, IdentityError> {
    Ok(format!(
        "{prefix}{}",
        hex(&rampart_crypto::random_array::<8>()?)
    ))
}

/// A service principal's name is the service name keys policies match
/// (`service:NAME`), so it keeps to the keys plane's name rules.
fn valid_service_name(s: &str) -> bool {
    valid_name(s) && !s.contains('@') && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._@-".contains(&b))
}

impl Identity {
    /// Opens the identity plane over `store`, taking its pepper, TOTP key
    /// and signing keys from `keyring` (created on first use), loading the
    /// records verification needs into memory.
    pub async fn open(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        audit: Arc<Audit>,
        clock: SharedClock,
        cfg: IdentityConfig,
    ) -> Result<Identity, IdentityError> {
        let policy = Policy::from_config(&cfg.roles)?;
        if cfg.access_ttl_secs == 0 || cfg.refresh_ttl_secs == 0 || cfg.session_max_secs == 0 {
            return Err(IdentityError::Config("lifetimes must be positive".into()));
        }
        let pepper = keyring.secret("identity/pepper", random_seed).await?;
        let totp_key = keyring.data_key("identity/totp").await?;
        let passwords = Passwords::new(cfg.passwords)?;
        let authz = Authorizer::new(policy, Arc::clone(&audit), cfg.node.clone());
        let signing = load_signing(store.as_ref(), &keyring, clock.unix_secs()).await?;
        let id = Identity {
            throttle: Throttle::new(cfg.throttle),
            shared_throttle: Arc::new(StoreThrottle {
                store: store.clone(),
            }),
            throttle_fallbacks: std::sync::atomic::AtomicU64::new(0),
            store,
            clock,
            cfg,
            authz,
            audit,
            pepper,
            totp_key,
            passwords,
            cache: RwLock::new(Cache::default()),
            signing: RwLock::new(signing),
            revoked: RwLock::new(HashMap::new()),
            local_changes: std::sync::atomic::AtomicU64::new(0),
            token_cache: RwLock::new(HashMap::new()),
            loaded: std::sync::Mutex::new(Loaded::default()),
            keyring,
        };
        id.reload().await?;
        Ok(id)
    }

    /// Reloads every cached record from the store (after another node
    /// changed them, or to recover from a suspected divergence).
    ///
    /// A reload that overlaps a change made here keeps what it had (the
    /// change is in the store, so the next reload reads it); it reports
    /// whether it replaced the records.
    pub async fn reload(&self) -> Result<bool, IdentityError> {
        let generation = self.generation().await?;
        self.reload_at(generation).await
    }

    /// [`Identity::reload`], the generation already read. It must be read
    /// before the records: a change that lands between the two is then
    /// read with a generation older than its own, and read again.
    async fn reload_at(&self, generation: Option<u64>) -> Result<bool, IdentityError> {
        use std::sync::atomic::Ordering;
        let before = self.local_changes.load(Ordering::Acquire);
        let mut cache = Cache::default();
        for (k, e) in self.store.list(NS_USERS, "", LIST_LIMIT).await? {
            let u: UserRecord = from_json(NS_USERS, &k, &e.value)?;
            cache.names.insert(u.name.clone(), u.id.clone());
            cache.users.insert(u.id.clone(), u);
        }
        for (k, e) in self.store.list(NS_APIKEYS, "", LIST_LIMIT).await? {
            let r: ApiKeyRecord = from_json(NS_APIKEYS, &k, &e.value)?;
            cache.keys.insert(r.id.clone(), r);
        }
        for (k, e) in self.store.list(NS_ELEVATIONS, "", LIST_LIMIT).await? {
            let r: Elevation = from_json(NS_ELEVATIONS, &k, &e.value)?;
            cache.elevations.insert(r.id.clone(), r);
        }
        let now = self.now();
        // Signing keys, as rotated here or on another node. A store caught
        // between a rotation's two writes (no current key) is left for the
        // next reload.
        let metas = signing_metas(self.store.as_ref()).await?;
        if metas.iter().any(|m| m.retired_at.is_none()) {
            let fresh = signing_from(metas, &self.keyring, now).await?;
            self.set_signing(fresh);
        }
        let mut revoked = HashMap::new();
        for (k, e) in self.store.list(NS_REVOKED, "", LIST_LIMIT).await? {
            let until: u64 = from_json(NS_REVOKED, &k, &e.value)?;
            if until > now {
                revoked.insert(k, until);
            }
        }
        {
            // Both locks are held while the count is compared, and every
            // local change bumps the count under one of them.
            let mut c = write_lock(&self.cache);
            let mut r = write_lock(&self.revoked);
            if self.local_changes.load(Ordering::Acquire) != before {
                return Ok(false);
            }
            *c = cache;
            *r = revoked;
        }
        write_lock(&self.token_cache).clear();
        if let Ok(mut l) = self.loaded.lock() {
            *l = Loaded {
                generation,
                at: now,
            };
        }
        Ok(true)
    }

    /// What the periodic reload of a node sharing its store calls: reads
    /// one record, the generation, and re-reads everything ([`reload`]) only
    /// when another write has moved it since the last read, or when the
    /// last full read is a minute old. Returns whether the records were
    /// re-read and replaced.
    ///
    /// [`reload`]: Identity::reload
    pub async fn reload_if_changed(&self) -> Result<bool, IdentityError> {
        let generation = self.generation().await?;
        let now = self.now();
        let last = self.loaded.lock().map(|l| *l).unwrap_or_default();
        if generation == last.generation && now.saturating_sub(last.at) < FULL_RELOAD_SECS {
            return Ok(false);
        }
        self.reload_at(generation).await
    }

    async fn generation(&self) -> Result<Option<u64>, IdentityError> {
        Ok(self
            .store
            .get(NS_META, GENERATION)
            .await?
            .map(|e| e.version))
    }

    /// The cached records, for a change this node makes.
    pub(crate) fn cache_mut(&self) -> RwLockWriteGuard<'_, Cache> {
        let guard = write_lock(&self.cache);
        self.local_changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        guard
    }

    /// The revoked sessions, for a revocation this node makes.
    pub(crate) fn revoked_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, u64>> {
        let guard = write_lock(&self.revoked);
        self.local_changes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        guard
    }

    /// Replaces the signing state, unless it is older than the one held
    /// (a reload that read the store before this node's own rotation).
    /// Tokens of a key that stopped verifying leave the token cache.
    fn set_signing(&self, fresh: Signing) {
        let latest = |s: &Signing| s.metas.iter().map(|m| m.gen).max();
        let shrank = {
            let mut s = write_lock(&self.signing);
            if latest(&fresh) < latest(&s) {
                return;
            }
            let shrank = s.verifying.keys().any(|k| !fresh.verifying.contains_key(k));
            *s = fresh;
            shrank
        };
        if shrank {
            write_lock(&self.token_cache).clear();
        }
    }

    /// The authorisation check, to hand to every plane and the edge.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authz
    }

    /// Keeps the login throttle's shared counts in `shared` (Redis, when
    /// `[redis]` is configured) rather than the store.
    pub fn with_shared_throttle(mut self, shared: Arc<dyn SharedThrottle>) -> Identity {
        self.shared_throttle = shared;
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &IdentityConfig {
        &self.cfg
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.unix_secs()
    }

    /// HMAC-SHA-256 of `msg` under the pepper, hex, with a domain label.
    pub(crate) fn peppered(&self, label: &str, msg: &[u8]) -> String {
        let mut m = Vec::with_capacity(label.len() + 1 + msg.len());
        m.extend_from_slice(label.as_bytes());
        m.push(0);
        m.extend_from_slice(msg);
        hex(&rampart_crypto::hmac_sha256(self.pepper.expose(), &m))
    }

    /// Records an identity step in the security tier; an error means the
    /// step must be refused.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        actor: &str,
        auth: &str,
        action: &str,
        resource: &str,
        outcome: Outcome,
        reason: impl Into<String>,
        source: Option<&str>,
    ) -> Result<(), IdentityError> {
        let mut ev = Event::new(
            Tier::Security,
            Actor::new(actor, auth),
            action,
            resource,
            outcome,
        );
        ev.node = self.cfg.node.clone();
        ev.environment = PLATFORM_ENV.into();
        ev.reason = Some(reason.into());
        ev.source = source.map(str::to_owned);
        crate::record_durably(&self.audit, ev)?;
        Ok(())
    }

    pub(crate) fn record_by(
        &self,
        p: &Principal,
        action: &str,
        resource: &str,
        outcome: Outcome,
        reason: impl Into<String>,
    ) -> Result<(), IdentityError> {
        self.record(
            &p.id,
            &p.auth_method,
            action,
            resource,
            outcome,
            reason,
            None,
        )
    }

    pub(crate) async fn put_json<T: Serialize>(
        &self,
        ns: &str,
        key: &str,
        v: &T,
        expect: Expect,
    ) -> Result<(), IdentityError> {
        let value = to_json(v)?;
        if cached_ns(ns) {
            let put = rampart_store::Op::Put {
                ns: ns.into(),
                key: key.into(),
                value,
                expect,
            };
            self.store.apply(vec![put, generation_bump()]).await?;
        } else {
            self.store.put(ns, key, &value, expect).await?;
        }
        Ok(())
    }

    pub(crate) fn user(&self, id: &str) -> Option<UserRecord> {
        read_lock(&self.cache).users.get(id).cloned()
    }

    pub(crate) fn user_by_name(&self, name: &str) -> Option<UserRecord> {
        let c = read_lock(&self.cache);
        c.names.get(name).and_then(|id| c.users.get(id)).cloned()
    }

    /// A user named by id, or else by name, as the API and CLI accept both.
    pub(crate) fn user_by_id_or_name(&self, id_or_name: &str) -> Option<UserRecord> {
        self.user(id_or_name)
            .or_else(|| self.user_by_name(id_or_name))
    }

    /// The stored principal `id_or_name` names, once `actor` may act on it:
    /// with `own` (if given) when it is the actor itself, otherwise with
    /// `other` scoped to that principal (team scoping). An unknown name is
    /// refused like one out of reach unless the actor reaches the whole
    /// platform, so that names cannot be probed.
    pub(crate) fn require_on(
        &self,
        actor: &Principal,
        id_or_name: &str,
        own: Option<&str>,
        other: &str,
        env: &str,
    ) -> Result<UserRecord, IdentityError> {
        let Some(u) = self.user_by_id_or_name(id_or_name) else {
            self.authz.require(actor, other, env)?;
            return Err(IdentityError::NotFound("user".into()));
        };
        match own {
            Some(perm) if u.id == actor.id => {
                self.authz.require_in(actor, perm, env, Scope::Own)?
            }
            _ => {
                // Judged by the roles it holds now: a member elevated to
                // admin is out of a team admin's reach until it ends.
                let roles = self.principal_of(&u, "-", None, None).0.roles;
                let target = Target {
                    roles: &roles,
                    ..u.target()
                };
                self.authz
                    .require_in(actor, other, env, Scope::Principal(target))?
            }
        }
        Ok(u)
    }

    /// Whether `actor` reaches every principal (and team) with `permission`:
    /// listings show everything then, else only what team scoping reaches.
    /// The listing itself is authorised (and audited) either way.
    pub(crate) fn require_listing(
        &self,
        actor: &Principal,
        permission: &str,
    ) -> Result<bool, IdentityError> {
        if self.authz.decide(actor, permission, PLATFORM_ENV).allowed {
            self.authz.require(actor, permission, PLATFORM_ENV)?;
            Ok(true)
        } else {
            self.authz
                .require_in(actor, permission, PLATFORM_ENV, Scope::Teams(&actor.teams))?;
            Ok(false)
        }
    }

    /// Refuses `action` on `resource` for `why`, audited.
    pub(crate) fn refuse(
        &self,
        actor: &Principal,
        action: &str,
        resource: &str,
        why: &str,
    ) -> IdentityError {
        match self.record_by(actor, action, resource, Outcome::Denied, why) {
            Ok(()) => IdentityError::Forbidden(why.to_owned()),
            Err(e) => e,
        }
    }

    /// Reads, changes and writes a user record with compare-and-set,
    /// retrying if another writer got there first; updates the cache.
    pub(crate) async fn update_user(
        &self,
        id: &str,
        f: impl Fn(&mut UserRecord) -> Result<(), IdentityError>,
    ) -> Result<UserRecord, IdentityError> {
        for _ in 0..5 {
            let e = self
                .store
                .get(NS_USERS, id)
                .await?
                .ok_or_else(|| IdentityError::NotFound("user".into()))?;
            let mut u: UserRecord = from_json(NS_USERS, id, &e.value)?;
            f(&mut u)?;
            match self
                .put_json(NS_USERS, id, &u, Expect::Version(e.version))
                .await
            {
                Ok(_) => {
                    self.cache_mut().users.insert(id.to_owned(), u.clone());
                    return Ok(u);
                }
                Err(IdentityError::Store(StoreError::Conflict { .. })) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(IdentityError::Store(StoreError::Conflict {
            ns: NS_USERS.into(),
            key: id.into(),
        }))
    }

    /// Creates a user or service principal.
    pub async fn create_user(
        &self,
        actor: &Principal,
        new: NewUser,
    ) -> Result<User, IdentityError> {
        // A principal in teams is created within those teams (a team admin
        // may); one in none is a platform matter (admins only).
        let scope = if new.teams.is_empty() {
            Scope::Environment
        } else {
            Scope::Teams(&new.teams)
        };
        self.authz
            .require_in(actor, "identity:users.create", PLATFORM_ENV, scope)?;
        if !actor.roles.contains(&Role::Admin) {
            // Team admins add people to their teams, nothing more: no
            // service principals (a service's name is its identity in keys
            // policies), no role above team_member, no environment they lack.
            let why = if new.kind != PrincipalKind::User {
                Some("only admins create service principals")
            } else if !new.roles.iter().all(|r| *r == Role::TeamMember) {
                Some("team admins grant no role but team_member")
            } else if !new.environments.is_subset(&actor.environments) {
                Some("team admins grant no environment they lack")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(self.refuse(actor, "identity.user.create", &new.name, why));
            }
        }
        if !valid_name(&new.name) {
            return Err(IdentityError::InvalidRequest(
                "name must be 1-64 of a-z 0-9 . _ @ -".into(),
            ));
        }
        if new.kind == PrincipalKind::Service && !valid_service_name(&new.name) {
            return Err(IdentityError::InvalidRequest(
                "a service principal's name is its service name: 1-64 of a-z 0-9 . _ -, \
                 starting with a letter or digit"
                    .into(),
            ));
        }
        if new.environments.is_empty()
            || !new.environments.iter().all(|e| crate::apikey::valid_env(e))
        {
            return Err(IdentityError::InvalidRequest(
                "environments must be non-empty lower-case names".into(),
            ));
        }
        for t in &new.teams {
            if self.store.get(NS_TEAMS, t).await?.is_none() {
                return Err(IdentityError::InvalidRequest(format!("no team {t:?}")));
            }
        }
        let password_hash = match (&new.kind, &new.password) {
            (PrincipalKind::User, Some(p)) => {
                check_new_password(p.as_bytes())?;
                Some(self.passwords.hash_async(p.as_bytes()).await?)
            }
            (PrincipalKind::User, None) => None,
            (PrincipalKind::Service, None) => None,
            _ => {
                return Err(IdentityError::InvalidRequest(
                    "only users have passwords; system principals are not stored".into(),
                ))
            }
        };
        let id = new_id(match new.kind {
            PrincipalKind::Service => "s_",
            _ => "u_",
        })?;
        let rec = UserRecord {
            id: id.clone(),
            name: new.name.clone(),
            kind: new.kind,
            roles: new.roles,
            teams: new.teams,
            environments: new.environments,
            password_hash,
            disabled: false,
            created_at: self.now(),
            totp: None,
        };
        let ops = vec![
            rampart_store::Op::Put {
                ns: NS_NAMES.into(),
                key: rec.name.clone(),
                value: to_json(&id)?,
                expect: Expect::Absent,
            },
            rampart_store::Op::Put {
                ns: NS_USERS.into(),
                key: id.clone(),
                value: to_json(&rec)?,
                expect: Expect::Absent,
            },
            generation_bump(),
        ];
        match self.store.apply(ops).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(IdentityError::AlreadyExists(format!("user {:?}", rec.name)))
            }
            Err(e) => return Err(e.into()),
        }
        {
            let mut c = self.cache_mut();
            c.names.insert(rec.name.clone(), id.clone());
            c.users.insert(id.clone(), rec.clone());
        }
        self.record_by(
            actor,
            "identity.user.create",
            &id,
            Outcome::Allowed,
            format!(
                "{} {:?} roles [{}]",
                if rec.kind == PrincipalKind::Service {
                    "service"
                } else {
                    "user"
                },
                rec.name,
                rec.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )?;
        Ok(User::from(&rec))
    }

    /// Lists users and service principals: all of them for admins, the
    /// members of the actor's teams for team roles.
    pub fn list_users(&self, actor: &Principal) -> Result<Vec<User>, IdentityError> {
        const PERM: &str = "identity:users.read";
        let all = self.require_listing(actor, PERM)?;
        let mut v: Vec<User> = read_lock(&self.cache)
            .users
            .values()
            .filter(|u| {
                all || self
                    .authz
                    .decide_in(actor, PERM, PLATFORM_ENV, Scope::Principal(u.target()))
                    .allowed
            })
            .map(User::from)
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// One user by id or name.
    pub fn get_user(&self, actor: &Principal, id_or_name: &str) -> Result<User, IdentityError> {
        self.require_on(actor, id_or_name, None, "identity:users.read", PLATFORM_ENV)
            .map(|u| User::from(&u))
    }

    /// Replaces a principal's roles. Added roles count from its next token;
    /// removing a role revokes its sessions at once.
    pub async fn set_roles(
        &self,
        actor: &Principal,
        user: &str,
        roles: BTreeSet<Role>,
    ) -> Result<User, IdentityError> {
        let target = self.require_on(actor, user, None, "identity:users.update", PLATFORM_ENV)?;
        let id = target.id;
        if !actor.roles.contains(&Role::Admin) && !roles.iter().all(|r| *r == Role::TeamMember) {
            return Err(self.refuse(
                actor,
                "identity.user.roles",
                &id,
                "team admins grant no role but team_member",
            ));
        }
        let before = target.roles;
        // An admin only through an elevation acts as admin for its hour,
        // and no longer: granting a standing role beyond team_member (to
        // itself or anyone) would outlast it and skip the approval.
        if actor.roles.contains(&Role::Admin)
            && !actor.base_roles.contains(&Role::Admin)
            && roles.difference(&before).any(|r| *r != Role::TeamMember)
        {
            return Err(self.refuse(
                actor,
                "identity.user.roles",
                &id,
                "an admin through an elevation grants no role but team_member",
            ));
        }
        let u = self
            .update_user(&id, |u| {
                u.roles = roles.clone();
                Ok(())
            })
            .await?;
        // Tokens carry roles: taking one away must not wait for them to expire.
        if !before.is_subset(&u.roles) {
            self.revoke_user_sessions_inner(&id, "role removed").await?;
        }
        self.record_by(
            actor,
            "identity.user.roles",
            &id,
            Outcome::Allowed,
            format!(
                "roles now [{}]",
                u.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        )?;
        Ok(User::from(&u))
    }

    /// Sets a user's password: an admin reset (no `current` needed), or the
    /// user's own change, which needs the `current` password when the
    /// account has one.
    pub async fn set_password(
        &self,
        actor: &Principal,
        user: &str,
        password: &str,
        current: Option<&str>,
    ) -> Result<(), IdentityError> {
        let u = self.require_on(
            actor,
            user,
            Some("identity:password.own"),
            "identity:users.update",
            PLATFORM_ENV,
        )?;
        if u.id == actor.id {
            self.step_up_password(&u, current).await?;
        }
        let id = u.id;
        check_new_password(password.as_bytes())?;
        let hash = self.passwords.hash_async(password.as_bytes()).await?;
        self.update_user(&id, |u| {
            if u.kind != PrincipalKind::User {
                return Err(IdentityError::InvalidRequest(
                    "services have no password".into(),
                ));
            }
            u.password_hash = Some(hash.clone());
            Ok(())
        })
        .await?;
        self.record_by(
            actor,
            "identity.user.password",
            &id,
            Outcome::Allowed,
            "password set",
        )
    }

    /// Disables (or re-enables) a principal; disabling revokes every session
    /// at once.
    pub async fn set_disabled(
        &self,
        actor: &Principal,
        user: &str,
        disabled: bool,
    ) -> Result<(), IdentityError> {
        let id = self
            .require_on(actor, user, None, "identity:users.update", PLATFORM_ENV)?
            .id;
        self.update_user(&id, |u| {
            u.disabled = disabled;
            Ok(())
        })
        .await?;
        if disabled {
            self.revoke_user_sessions_inner(&id, "principal disabled")
                .await?;
        }
        self.record_by(
            actor,
            "identity.user.disable",
            &id,
            Outcome::Allowed,
            if disabled { "disabled" } else { "enabled" },
        )
    }

    /// Creates a team.
    pub async fn create_team(&self, actor: &Principal, name: &str) -> Result<Team, IdentityError> {
        self.authz
            .require(actor, "identity:teams.create", PLATFORM_ENV)?;
        if !valid_name(name) {
            return Err(IdentityError::InvalidRequest("bad team name".into()));
        }
        let t = Team {
            name: name.to_owned(),
            created_at: self.now(),
        };
        match self.put_json(NS_TEAMS, name, &t, Expect::Absent).await {
            Ok(_) => {}
            Err(IdentityError::Store(StoreError::Conflict { .. })) => {
                return Err(IdentityError::AlreadyExists(format!("team {name:?}")))
            }
            Err(e) => return Err(e),
        }
        self.record_by(
            actor,
            "identity.team.create",
            name,
            Outcome::Allowed,
            "created",
        )?;
        Ok(t)
    }

    /// Lists teams: all of them for admins, the actor's own for team roles.
    pub async fn list_teams(&self, actor: &Principal) -> Result<Vec<Team>, IdentityError> {
        let all = self.require_listing(actor, "identity:users.read")?;
        let mut out = Vec::new();
        for (k, e) in self.store.list(NS_TEAMS, "", LIST_LIMIT).await? {
            if all || actor.teams.contains(&k) {
                out.push(from_json(NS_TEAMS, &k, &e.value)?);
            }
        }
        Ok(out)
    }

    /// The principal a stored user acts as now: base roles plus active
    /// elevations, environments limited to `env_limit` if given. Also
    /// returns when the earliest contributing elevation ends.
    pub(crate) fn principal_of(
        &self,
        u: &UserRecord,
        auth_method: &str,
        session: Option<String>,
        env_limit: Option<&str>,
    ) -> (Principal, Option<u64>) {
        let cache = read_lock(&self.cache);
        self.principal_in(&cache, u, auth_method, session, env_limit)
    }

    /// [`Self::principal_of`] under a cache lock the caller already holds.
    pub(crate) fn principal_in(
        &self,
        cache: &Cache,
        u: &UserRecord,
        auth_method: &str,
        session: Option<String>,
        env_limit: Option<&str>,
    ) -> (Principal, Option<u64>) {
        let now = self.now();
        let mut roles = u.roles.clone();
        let mut until: Option<u64> = None;
        // Elevations are granted to a person in a login session, not to
        // the API keys they own.
        let elevations_apply = auth_method != "api-key" && auth_method != "client-cert";
        let elevations = if elevations_apply {
            Some(cache.elevations.values())
        } else {
            None
        };
        // A role that needs TOTP at login needs it in every session: one
        // that passed no second factor gains none through elevation, nor
        // keeps one granted since it began (a fresh login would be refused).
        let second_factor_missing = auth_method == "password";
        for e in elevations.into_iter().flatten() {
            if elevations_apply
                && e.user == u.id
                && e.is_active(now)
                && !u.roles.contains(&e.role)
                && !(second_factor_missing && self.cfg.totp_required_roles.contains(&e.role))
            {
                roles.insert(e.role);
                let end = e.expires_at.unwrap_or(now);
                until = Some(until.map_or(end, |x: u64| x.min(end)));
            }
        }
        if second_factor_missing {
            roles.retain(|r| !self.cfg.totp_required_roles.contains(r));
        }
        let environments = match env_limit {
            Some(env) => u
                .environments
                .iter()
                .filter(|e| *e == env)
                .cloned()
                .collect(),
            None => u.environments.clone(),
        };
        (
            Principal {
                id: u.id.clone(),
                name: u.name.clone(),
                kind: u.kind,
                base_roles: u.roles.intersection(&roles).copied().collect(),
                roles,
                teams: u.teams.clone(),
                environments,
                auth_method: auth_method.to_owned(),
                session,
            },
            until,
        )
    }

    /// The principal a verified client certificate names: the user or
    /// service called `name`, with its standing roles (no elevations: a
    /// certificate is a standing credential, like an API key).
    /// `Ok(None)` when no principal has that name; an error when it is
    /// disabled.
    pub fn certificate_principal(&self, name: &str) -> Result<Option<Principal>, IdentityError> {
        match self.user_by_name(name) {
            None => Ok(None),
            Some(u) if u.disabled => Err(IdentityError::InvalidCredentials),
            Some(u) => Ok(Some(self.principal_of(&u, "client-cert", None, None).0)),
        }
    }

    /// The published verification keys: `/.well-known/jwks.json`.
    pub fn jwks(&self) -> serde_json::Value {
        let s = read_lock(&self.signing);
        let mut keys: Vec<serde_json::Value> = s
            .verifying
            .iter()
            .map(|(kid, k)| crate::token::jwk(kid, k))
            .collect();
        keys.sort_by(|a, b| a["kid"].as_str().cmp(&b["kid"].as_str()));
        serde_json::json!({ "keys": keys })
    }

    /// The id of the key new tokens are signed with.
    pub fn current_kid(&self) -> String {
        read_lock(&self.signing).current_kid.clone()
    }

    /// Starts signing with a new key. The old one stays published until
    /// the last token it signed has expired.
    pub async fn rotate_signing_key(&self, actor: &Principal) -> Result<String, IdentityError> {
        self.authz
            .require(actor, "identity:signing.rotate", PLATFORM_ENV)?;
        let now = self.now();
        let gen = {
            let s = read_lock(&self.signing);
            s.metas.iter().map(|m| m.gen).max().unwrap_or(0) + 1
        };
        let previous: Vec<SigningMeta> = read_lock(&self.signing)
            .metas
            .iter()
            .filter(|m| m.retired_at.is_none())
            .cloned()
            .collect();
        for mut m in previous {
            m.retired_at = Some(now);
            self.put_json(NS_SIGNING, &format!("{:010}", m.gen), &m, Expect::Any)
                .await?;
        }
        let kid = new_signing_key(self.store.as_ref(), &self.keyring, gen, now).await?;
        let fresh = load_signing(self.store.as_ref(), &self.keyring, now).await?;
        self.set_signing(fresh);
        self.record_by(
            actor,
            "identity.signing.rotate",
            &kid,
            Outcome::Allowed,
            "new signing key",
        )?;
        Ok(kid)
    }

    /// Housekeeping to call every minute or so: prunes the revocation list
    /// and the token cache of what has expired, and marks (and audits)
    /// elevations that have ended.
    pub async fn maintain(&self) -> Result<(), IdentityError> {
        let now = self.now();
        let dropped = {
            let mut s = write_lock(&self.signing);
            let ended: Vec<String> = s
                .metas
                .iter()
                .filter(|m| !published(m, now))
                .map(|m| m.kid.clone())
                .collect();
            ended
                .iter()
                .filter(|kid| s.verifying.remove(*kid).is_some())
                .count()
        };
        if dropped > 0 {
            // Tokens it signed must not live on in the cache.
            write_lock(&self.token_cache).clear();
        }
        write_lock(&self.revoked).retain(|_, until| *until > now);
        write_lock(&self.token_cache).retain(|_, (_, exp)| *exp > now);
        self.expire_elevations().await
    }

    /// How many sessions are on the revocation list (for metrics).
    pub fn revocation_list_len(&self) -> usize {
        read_lock(&self.revoked).len()
    }
}

async fn new_signing_key(
    store: &dyn Store,
    keyring: &Keyring,
    gen: u64,
    now: u64,
) -> Result<String, IdentityError> {
    let seed = keyring
        .secret(&format!("identity/signing/{gen}"), random_seed)
        .await?;
    let arr: [u8; 32] = seed
        .expose()
        .try_into()
        .map_err(|_| IdentityError::Corrupt("signing seed length".into()))?;
    let vk = SigningKey::from_bytes(&arr).verifying_key();
    let digest = rampart_crypto::hmac_sha256(b"rampart-kid", vk.as_bytes());
    let kid = format!("ed25519-{gen}-{}", hex(digest.get(..4).unwrap_or_default()));
    let meta = SigningMeta {
        gen,
        kid: kid.clone(),
        created_at: now,
        retired_at: None,
    };
    store
        .put(
            NS_SIGNING,
            &format!("{gen:010}"),
            &to_json(&meta)?,
            Expect::Any,
        )
        .await?;
    Ok(kid)
}

/// A retired key stays published (and verifies) for a day, comfortably
/// past the longest access token it can have signed.
const PUBLISH_AFTER_RETIRE: u64 = 86_400;

/// Whether a signing key is still published (and verifies) at `now`.
fn published(m: &SigningMeta, now: u64) -> bool {
    m.retired_at
        .is_none_or(|r| r.saturating_add(PUBLISH_AFTER_RETIRE) > now)
}

async fn signing_metas(store: &dyn Store) -> Result<Vec<SigningMeta>, IdentityError> {
    let mut metas: Vec<SigningMeta> = Vec::new();
    for (k, e) in store.list(NS_SIGNING, "", LIST_LIMIT).await? {
        metas.push(from_json(NS_SIGNING, &k, &e.value)?);
    }
    Ok(metas)
}

async fn load_signing(
    store: &dyn Store,
    keyring: &Keyring,
    now: u64,
) -> Result<Signing, IdentityError> {
    let metas = signing_metas(store).await?;
    if !metas.iter().any(|m| m.retired_at.is_none()) {
        let gen = metas.iter().map(|m| m.gen).max().unwrap_or(0) + 1;
        new_signing_key(store, keyring, gen, now).await?;
        return Box::pin(load_signing(store, keyring, now)).await;
    }
    signing_from(metas, keyring, now).await
}

/// The signing state `metas` describe: the current key and every key
/// still published.
async fn signing_from(
    mut metas: Vec<SigningMeta>,
    keyring: &Keyring,
    now: u64,
) -> Result<Signing, IdentityError> {
    metas.sort_by_key(|m| m.gen);
    let mut verifying = HashMap::new();
    let mut current = None;
    for m in &metas {
        if !published(m, now) {
            continue;
        }
        let seed = keyring
            .secret(&format!("identity/signing/{}", m.gen), random_seed)
            .await?;
        let arr: [u8; 32] = seed
            .expose()
            .try_into()
            .map_err(|_| IdentityError::Corrupt("signing seed length".into()))?;
        let sk = SigningKey::from_bytes(&arr);
        verifying.insert(m.kid.clone(), sk.verifying_key());
        if m.retired_at.is_none() {
            current = Some((m.kid.clone(), sk));
        }
    }
    let (current_kid, current) =
        current.ok_or_else(|| IdentityError::Corrupt("no current signing key".into()))?;
    Ok(Signing {
        current_kid,
        current,
        verifying,
        metas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_user_debug_never_shows_the_password() {
        let new = NewUser {
            name: "max".into(),
            kind: PrincipalKind::User,
            roles: [Role::TeamMember].into(),
            teams: vec![],
            environments: ["live".to_string()].into(),
            password: Some("correct horse battery staple".into()),
        };
        let shown = format!("{new:?}");
        assert!(shown.contains("max"));
        assert!(!shown.contains("correct horse"), "{shown}");
    }
}
