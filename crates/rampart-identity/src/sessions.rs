//! Logging in, refreshing, logging out and verifying: access tokens,
//! refresh token families, the revocation list, API keys and TOTP.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rampart_audit::Outcome;
use rampart_store::{Expect, Op, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::elevation::{Elevation, ElevationStatus};
use crate::policy::{Principal, PrincipalKind, Role, Scope, PLATFORM_ENV};
use crate::service::{
    from_json, generation_bump, new_id, read_lock, to_json, write_lock, Identity, TotpState,
    UserRecord, LIST_LIMIT, NS_APIKEYS, NS_ELEVATIONS, NS_REFRESH, NS_REVOKED, NS_SESSIONS,
};
use crate::token::{self, Claims, Expectations, Reject};
use crate::totp::{qr_svg, Totp};
use crate::{apikey, IdentityError};

/// Longest refresh token accepted before lookup.
const MAX_REFRESH_LEN: usize = 128;
/// Only write `last_used` when the stored value is older than this (seconds),
/// so that verification does not write on every request.
const LAST_USED_GRANULARITY: u64 = 60;
/// Allowed clock skew for `iat`.
const SKEW: u64 = 60;

/// A password login.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The account name.
    pub username: String,
    /// The password.
    pub password: String,
    /// A TOTP code or a recovery code, when the account has TOTP.
    #[serde(default)]
    pub totp: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What a login, an API-key exchange or a refresh returns.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// The signed access token (JWT, EdDSA).
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The opaque refresh token; single use.
    pub refresh_token: String,
    /// The session (refresh family) id.
    pub session_id: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("session_id", &self.session_id)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRecord {
    sid: String,
    user: String,
    amr: String,
    env_limit: Option<String>,
    created_at: u64,
    expires_at: u64,
    revoked_at: Option<u64>,
    /// The API key the session was exchanged for: it ends with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    api_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshRecord {
    sid: String,
    user: String,
    issued_at: u64,
    expires_at: u64,
    used: bool,
}

/// A stored API key (its hash, never the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeyRecord {
    pub id: String,
    pub env: String,
    pub owner: String,
    pub name: String,
    pub hash: String,
    pub created_at: u64,
    pub last_used: Option<u64>,
    pub revoked_at: Option<u64>,
}

/// An API key as listings show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// The key id.
    pub id: String,
    /// The visible prefix, `rk_<env>_<id>`.
    pub prefix: String,
    /// The environment it acts in.
    pub environment: String,
    /// The owning principal's id.
    pub owner: String,
    /// A label.
    pub name: String,
    /// When it was made.
    pub created_at: u64,
    /// When it was last used (to within a minute).
    pub last_used: Option<u64>,
    /// When it was revoked.
    pub revoked_at: Option<u64>,
}

impl From<&ApiKeyRecord> for ApiKeyInfo {
    fn from(r: &ApiKeyRecord) -> Self {
        ApiKeyInfo {
            id: r.id.clone(),
            prefix: format!("rk_{}_{}", r.env, r.id),
            environment: r.env.clone(),
            owner: r.owner.clone(),
            name: r.name.clone(),
            created_at: r.created_at,
            last_used: r.last_used,
            revoked_at: r.revoked_at,
        }
    }
}

/// A new API key: the only time its full text exists outside the client.
#[derive(Clone, Serialize, Deserialize)]
pub struct NewApiKey {
    /// What listings will show.
    pub info: ApiKeyInfo,
    /// The key. Shown once; only its HMAC is kept.
    pub key: String,
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A TOTP enrolment in progress: show it to the user once.
#[derive(Clone, Serialize, Deserialize)]
pub struct TotpEnrolment {
    /// The secret in base32, for typing in.
    pub secret_base32: String,
    /// The `otpauth://` URI.
    pub otpauth_uri: String,
    /// The URI as a QR code, SVG.
    pub qr_svg: String,
    /// Ten single-use recovery codes; only their HMACs are kept.
    pub recovery_codes: Vec<String>,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment([redacted])")
    }
}

/// What one [`Identity::prune`] pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Refresh tokens past their expiry, spent or not.
    pub refresh_tokens: usize,
    /// Sessions past their absolute end, or revoked long enough ago that
    /// none of their tokens could be accepted anyway.
    pub sessions: usize,
    /// Revocation-list entries past the last moment an access token of the
    /// revoked session could be valid.
    pub revocations: usize,
    /// Login throttle entries with nothing left to wait for and their
    /// failures forgotten.
    pub throttle_entries: usize,
    /// API keys revoked more than [`ENDED_RECORD_RETENTION_SECS`] ago (and
    /// more than a refresh-token lifetime ago).
    pub api_keys: usize,
    /// Elevations denied or ended more than [`ENDED_RECORD_RETENTION_SECS`]
    /// ago.
    pub elevations: usize,
    /// Records that could not be read and were left alone.
    pub unreadable: usize,
}

impl PruneReport {
    /// Whether anything was deleted.
    pub fn deleted_any(&self) -> bool {
        self.refresh_tokens
            + self.sessions
            + self.revocations
            + self.throttle_entries
            + self.api_keys
            + self.elevations
            > 0
    }
}

/// How long revoked API keys and ended elevations stay listed before
/// [`Identity::prune`] deletes them (90 days). Their history stays in the
/// audit log for its retention; what is pruned is the live record every
/// node holds in memory, which would otherwise grow for ever.
pub const ENDED_RECORD_RETENTION_SECS: u64 = 90 * 86_400;

fn session_key(user: &str, sid: &str) -> String {
    format!("{user}/{sid}")
}

fn new_refresh_token() -> Result<String, IdentityError> {
    Ok(format!(
        "rr_{}",
        crate::totp::base32_encode(&rampart_crypto::random_array::<32>()?).to_lowercase()
    ))
}

fn totp_context(user: &str) -> Vec<u8> {
    format!("identity/totp/{user}").into_bytes()
}

impl Identity {
    // ---------------------------------------------------------------- login

    /// Password login (with a TOTP or recovery code when the account has
    /// TOTP). Unknown accounts, wrong passwords and disabled accounts give
    /// the same error after the same work; failures are throttled per
    /// account name and per `source` address.
    pub async fn login(
        &self,
        req: &LoginRequest,
        source: Option<&str>,
    ) -> Result<Tokens, IdentityError> {
        let now = self.now();
        let name = req.username.as_str();
        let resource = format!("user:{}", name.chars().take(64).collect::<String>());
        // One turn per core from the throttle check to the failure count,
        // so parallel attempts cannot all pass the check first.
        let _turn = self.passwords.permit().await?;
        if let Some(retry_after) = self.throttle_check(name, source, now).await {
            self.record(
                name,
                "password",
                "identity.login",
                &resource,
                Outcome::Denied,
                "throttled",
                source,
            )?;
            return Err(IdentityError::Throttled { retry_after });
        }
        let user = self.user_by_name(name);
        let pw = req.password.as_bytes();
        // The same work whatever the account (a dummy hash for none), so
        // timing does not tell which it was.
        let (phc, usable, why) = match &user {
            None => (None, false, "unknown account"),
            Some(u) => match &u.password_hash {
                None => (None, false, "no password set"),
                Some(_) if u.disabled => (u.password_hash.as_deref(), false, "account disabled"),
                Some(_) if u.kind != PrincipalKind::User => {
                    (u.password_hash.as_deref(), false, "not a user")
                }
                Some(h) => (Some(h.as_str()), true, "wrong password"),
            },
        };
        let ok = self.passwords.verify_held(pw, phc).await && usable;
        let user = match (ok, user) {
            (true, Some(u)) => u,
            _ => return Err(self.login_failed(name, &resource, why, source, now).await),
        };
        let amr = self
            .check_second_factor(&user, req.totp.as_deref(), &resource, source, now)
            .await?;
        self.throttle_success(name).await;
        self.issue_session(&user, &amr, None, None, source).await
    }

    /// A user changing their own password shows the current one first (when
    /// the account has one), as a login would, so that a stolen access
    /// token alone cannot take the account over. A wrong one counts toward
    /// the login throttle.
    pub(crate) async fn step_up_password(
        &self,
        u: &UserRecord,
        current: Option<&str>,
    ) -> Result<(), IdentityError> {
        let Some(hash) = &u.password_hash else {
            return Ok(());
        };
        let now = self.now();
        let _turn = self.passwords.permit().await?;
        if let Some(retry_after) = self.throttle_check(&u.name, None, now).await {
            return Err(IdentityError::Throttled { retry_after });
        }
        let Some(current) = current else {
            return Err(IdentityError::InvalidField {
                field: "current_password",
                message: "changing your own password needs the current one".into(),
            });
        };
        if self
            .passwords
            .verify_held(current.as_bytes(), Some(hash))
            .await
        {
            Ok(())
        } else {
            let resource = format!("user:{}", u.name);
            Err(self
                .login_failed(&u.name, &resource, "wrong current password", None, now)
                .await)
        }
    }

    /// A user restarting their own TOTP enrolment while one is confirmed
    /// shows a current code (or a recovery code) first, as a login would:
    /// a new enrolment replaces the confirmed one.
    pub(crate) async fn step_up_totp(
        &self,
        u: &UserRecord,
        code: Option<&str>,
    ) -> Result<(), IdentityError> {
        if !u.totp.as_ref().is_some_and(|t| t.confirmed) {
            return Ok(());
        }
        let resource = format!("user:{}", u.name);
        self.check_second_factor(u, code, &resource, None, self.now())
            .await
            .map(drop)
    }

    async fn login_failed(
        &self,
        name: &str,
        resource: &str,
        why: &str,
        source: Option<&str>,
        now: u64,
    ) -> IdentityError {
        let delay = self.throttle_failure(name, source, now).await;
        let reason = match delay {
            Some(d) => format!("{why}; next attempt delayed {} s", d.as_secs()),
            None => why.to_owned(),
        };
        match self.record(
            name,
            "password",
            "identity.login",
            resource,
            Outcome::Denied,
            reason,
            source,
        ) {
            Ok(()) => IdentityError::InvalidCredentials,
            Err(e) => e,
        }
    }

    /// Checks the second factor when the account has one (or its role
    /// requires one); returns the authentication method for the token.
    async fn check_second_factor(
        &self,
        user: &UserRecord,
        code: Option<&str>,
        resource: &str,
        source: Option<&str>,
        now: u64,
    ) -> Result<String, IdentityError> {
        let enrolled = user.totp.as_ref().is_some_and(|t| t.confirmed);
        if !enrolled {
            if user
                .roles
                .iter()
                .any(|r| self.cfg.totp_required_roles.contains(r))
            {
                self.record(
                    &user.id,
                    "password",
                    "identity.login",
                    resource,
                    Outcome::Denied,
                    "role requires TOTP; none enrolled",
                    source,
                )?;
                return Err(IdentityError::SecondFactorEnrolmentRequired);
            }
            return Ok("password".into());
        }
        let Some(code) = code else {
            self.record(
                &user.id,
                "password",
                "identity.login",
                resource,
                Outcome::Denied,
                "second factor required",
                source,
            )?;
            return Err(IdentityError::SecondFactorRequired);
        };
        let secret = self.totp_secret(user)?;
        let totp = Totp::new(secret);
        let recovery_hash = self.peppered("recovery", code.trim().as_bytes());
        let user_id = user.id.clone();
        let mut method = String::new();
        let result = self
            .update_user(&user_id, |u| {
                let Some(t) = u.totp.as_mut() else {
                    return Err(IdentityError::InvalidCredentials);
                };
                if let Some(step) = totp.verify(code.trim(), now) {
                    if step <= t.last_step {
                        return Err(IdentityError::InvalidCredentials);
                    }
                    t.last_step = step;
                    return Ok(());
                }
                let before = t.recovery.len();
                t.recovery
                    .retain(|h| !rampart_crypto::ct_eq(h.as_bytes(), recovery_hash.as_bytes()));
                if t.recovery.len() == before {
                    return Err(IdentityError::InvalidCredentials);
                }
                Ok(())
            })
            .await;
        match result {
            Ok(_) => {
                method.push_str(if totp.verify(code.trim(), now).is_some() {
                    "password+totp"
                } else {
                    "password+recovery"
                });
                Ok(method)
            }
            Err(IdentityError::InvalidCredentials) => Err(self
                .login_failed(
                    &user.name,
                    resource,
                    "wrong or reused second factor",
                    source,
                    now,
                )
                .await),
            Err(e) => Err(e),
        }
    }

    fn totp_secret(&self, user: &UserRecord) -> Result<Vec<u8>, IdentityError> {
        let t = user
            .totp
            .as_ref()
            .ok_or_else(|| IdentityError::InvalidRequest("no TOTP enrolment".into()))?;
        let blob = B64
            .decode(&t.sealed)
            .map_err(|_| IdentityError::Corrupt("totp secret".into()))?;
        let plain = rampart_crypto::open(&self.totp_key, &blob, &totp_context(&user.id))?;
        Ok(plain.to_vec())
    }

    /// Starts a new session for `user` and issues its first tokens; a
    /// session exchanged for an API key names it (`api_key`).
    async fn issue_session(
        &self,
        user: &UserRecord,
        amr: &str,
        env_limit: Option<&str>,
        api_key: Option<&str>,
        source: Option<&str>,
    ) -> Result<Tokens, IdentityError> {
        let now = self.now();
        let sid = new_id("ses_")?;
        let session = SessionRecord {
            sid: sid.clone(),
            user: user.id.clone(),
            amr: amr.to_owned(),
            env_limit: env_limit.map(str::to_owned),
            created_at: now,
            expires_at: now.saturating_add(self.cfg.session_max_secs),
            revoked_at: None,
            api_key: api_key.map(str::to_owned),
        };
        let refresh = new_refresh_token()?;
        let rrec = RefreshRecord {
            sid: sid.clone(),
            user: user.id.clone(),
            issued_at: now,
            expires_at: now
                .saturating_add(self.cfg.refresh_ttl_secs)
                .min(session.expires_at),
            used: false,
        };
        self.store
            .apply(vec![
                Op::Put {
                    ns: NS_SESSIONS.into(),
                    key: session_key(&user.id, &sid),
                    value: to_json(&session)?,
                    expect: Expect::Absent,
                },
                Op::Put {
                    ns: NS_REFRESH.into(),
                    key: self.peppered("refresh", refresh.as_bytes()),
                    value: to_json(&rrec)?,
                    expect: Expect::Absent,
                },
            ])
            .await?;
        let (access_token, expires_in) = self.sign_access(user, &session)?;
        self.record(
            &user.id,
            amr,
            "identity.login",
            &sid,
            Outcome::Allowed,
            "session started",
            source,
        )?;
        Ok(Tokens {
            access_token,
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: refresh,
            session_id: sid,
        })
    }

    fn sign_access(
        &self,
        user: &UserRecord,
        session: &SessionRecord,
    ) -> Result<(String, u64), IdentityError> {
        let now = self.now();
        let (p, elevated_until) = self.principal_of(
            user,
            &session.amr,
            Some(session.sid.clone()),
            session.env_limit.as_deref(),
        );
        let mut exp = now
            .saturating_add(self.cfg.access_ttl_secs)
            .min(session.expires_at);
        if let Some(until) = elevated_until {
            exp = exp.min(until);
        }
        let claims = Claims {
            iss: self.cfg.issuer.clone(),
            aud: self.cfg.audience.clone(),
            sub: p.id,
            name: p.name,
            kind: match p.kind {
                PrincipalKind::Service => "service".into(),
                _ => "user".into(),
            },
            roles: p.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            env: p.environments.into_iter().collect(),
            teams: p.teams,
            sid: session.sid.clone(),
            amr: session.amr.clone(),
            exp,
            iat: now,
            jti: new_id("at_")?,
        };
        let s = read_lock(&self.signing);
        let t = token::sign(&s.current, &s.current_kid, &claims)
            .map_err(|e| IdentityError::Corrupt(format!("claims: {e}")))?;
        Ok((t, exp.saturating_sub(now)))
    }

    // -------------------------------------------------------------- refresh

    /// Exchanges a refresh token for new tokens. The presented token is
    /// spent; presenting it again revokes the whole session.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        source: Option<&str>,
    ) -> Result<Tokens, IdentityError> {
        let now = self.now();
        let deny = |why: &str| -> IdentityError {
            match self.record(
                "anonymous",
                "refresh",
                "identity.refresh",
                "-",
                Outcome::Denied,
                why,
                source,
            ) {
                Ok(()) => IdentityError::InvalidRefreshToken,
                Err(e) => e,
            }
        };
        if refresh_token.len() > MAX_REFRESH_LEN || !refresh_token.starts_with("rr_") {
            return Err(deny("malformed refresh token"));
        }
        let key = self.peppered("refresh", refresh_token.as_bytes());
        let Some(entry) = self.store.get(NS_REFRESH, &key).await? else {
            return Err(deny("unknown refresh token"));
        };
        let rec: RefreshRecord = from_json(NS_REFRESH, &key, &entry.value)?;
        if rec.used {
            self.revoke_session(&rec.user, &rec.sid).await?;
            self.record(
                &rec.user,
                "refresh",
                "identity.refresh",
                &rec.sid,
                Outcome::Denied,
                "refresh token reused: session revoked",
                source,
            )?;
            return Err(IdentityError::RefreshReuse);
        }
        let skey = session_key(&rec.user, &rec.sid);
        let session: SessionRecord = match self.store.get(NS_SESSIONS, &skey).await? {
            Some(e) => from_json(NS_SESSIONS, &skey, &e.value)?,
            None => return Err(deny("session gone")),
        };
        if session.revoked_at.is_some() {
            return Err(deny("session revoked"));
        }
        if let Some(key_id) = &session.api_key {
            // From the store, which every node shares, as the session is.
            let live = match self.store.get(NS_APIKEYS, key_id).await? {
                Some(e) => from_json::<ApiKeyRecord>(NS_APIKEYS, key_id, &e.value)?
                    .revoked_at
                    .is_none(),
                None => false,
            };
            if !live {
                return Err(deny("API key revoked"));
            }
        }
        if now >= rec.expires_at || now >= session.expires_at {
            return Err(deny("refresh token expired"));
        }
        let user = match self.user(&rec.user) {
            Some(u) if !u.disabled => u,
            _ => return Err(deny("principal gone or disabled")),
        };
        let fresh = new_refresh_token()?;
        let spent = RefreshRecord {
            used: true,
            ..rec.clone()
        };
        let next = RefreshRecord {
            sid: rec.sid.clone(),
            user: rec.user.clone(),
            issued_at: now,
            expires_at: now
                .saturating_add(self.cfg.refresh_ttl_secs)
                .min(session.expires_at),
            used: false,
        };
        let ops = vec![
            Op::Put {
                ns: NS_REFRESH.into(),
                key: key.clone(),
                value: to_json(&spent)?,
                expect: Expect::Version(entry.version),
            },
            Op::Put {
                ns: NS_REFRESH.into(),
                key: self.peppered("refresh", fresh.as_bytes()),
                value: to_json(&next)?,
                expect: Expect::Absent,
            },
        ];
        match self.store.apply(ops).await {
            Ok(()) => {}
            // Someone spent it between our read and write: that is a reuse.
            Err(StoreError::Conflict { .. }) => {
                self.revoke_session(&rec.user, &rec.sid).await?;
                self.record(
                    &rec.user,
                    "refresh",
                    "identity.refresh",
                    &rec.sid,
                    Outcome::Denied,
                    "concurrent refresh: session revoked",
                    source,
                )?;
                return Err(IdentityError::RefreshReuse);
            }
            Err(e) => return Err(e.into()),
        }
        let (access_token, expires_in) = self.sign_access(&user, &session)?;
        self.record(
            &user.id,
            &session.amr,
            "identity.refresh",
            &rec.sid,
            Outcome::Allowed,
            "tokens rotated",
            source,
        )?;
        Ok(Tokens {
            access_token,
            token_type: "Bearer".into(),
            expires_in,
            refresh_token: fresh,
            session_id: rec.sid,
        })
    }

    // ------------------------------------------------------------ revocation

    /// Revokes a session: its refresh tokens stop working and its access
    /// tokens are refused from this moment (the revocation list).
    async fn revoke_session(&self, user: &str, sid: &str) -> Result<(), IdentityError> {
        let now = self.now();
        let skey = session_key(user, sid);
        if let Some(e) = self.store.get(NS_SESSIONS, &skey).await? {
            let mut s: SessionRecord = from_json(NS_SESSIONS, &skey, &e.value)?;
            if s.revoked_at.is_none() {
                s.revoked_at = Some(now);
                self.put_json(NS_SESSIONS, &skey, &s, Expect::Any).await?;
            }
        }
        // Access tokens of the session live at most access_ttl from now.
        let until = now
            .saturating_add(self.cfg.access_ttl_secs)
            .saturating_add(SKEW);
        self.put_json(NS_REVOKED, sid, &until, Expect::Any).await?;
        self.revoked_mut().insert(sid.to_owned(), until);
        Ok(())
    }

    pub(crate) async fn revoke_user_sessions_inner(
        &self,
        user: &str,
        why: &str,
    ) -> Result<usize, IdentityError> {
        let sessions = self
            .store
            .list(NS_SESSIONS, &format!("{user}/"), LIST_LIMIT)
            .await?;
        let mut n = 0;
        for (k, e) in sessions {
            let s: SessionRecord = from_json(NS_SESSIONS, &k, &e.value)?;
            if s.revoked_at.is_none() && s.expires_at > self.now() {
                self.revoke_session(user, &s.sid).await?;
                n += 1;
            }
        }
        self.record(
            "system",
            "local",
            "identity.session.revoke_all",
            user,
            Outcome::Allowed,
            format!("{n} sessions revoked: {why}"),
            None,
        )?;
        Ok(n)
    }

    /// Deletes session state that can never be accepted again, judged by
    /// the plane's clock:
    ///
    /// - a refresh token once `now` reaches its expiry (a spent one included:
    ///   presenting it after that is refused as unknown rather than revoking
    ///   its family, and it could not have been exchanged anyway);
    /// - a session once `now` reaches its absolute end, or, if revoked, once
    ///   every refresh token issued before the revocation has expired (its
    ///   refresh tokens are refused either way: "session gone");
    /// - a revocation entry once no access token of the revoked session can
    ///   still be valid (it was written to last an access-token lifetime
    ///   plus the clock skew past the revocation).
    ///
    /// Each deletion is a compare-and-set on the version read, so a record
    /// changed meanwhile is left for the next pass. What was deleted is
    /// audited.
    pub async fn prune(&self) -> Result<PruneReport, IdentityError> {
        let now = self.now();
        let mut report = PruneReport::default();
        for (k, e) in self.store.list(NS_REFRESH, "", LIST_LIMIT).await? {
            match from_json::<RefreshRecord>(NS_REFRESH, &k, &e.value) {
                Ok(r) if now >= r.expires_at => {
                    if self.delete_unchanged(NS_REFRESH, &k, e.version).await? {
                        report.refresh_tokens += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => report.unreadable += 1,
            }
        }
        for (k, e) in self.store.list(NS_SESSIONS, "", LIST_LIMIT).await? {
            match from_json::<SessionRecord>(NS_SESSIONS, &k, &e.value) {
                Ok(s) => {
                    let ended = now >= s.expires_at
                        || s.revoked_at
                            .is_some_and(|at| now >= at.saturating_add(self.cfg.refresh_ttl_secs));
                    if ended && self.delete_unchanged(NS_SESSIONS, &k, e.version).await? {
                        report.sessions += 1;
                    }
                }
                Err(_) => report.unreadable += 1,
            }
        }
        for (k, e) in self.store.list(NS_REVOKED, "", LIST_LIMIT).await? {
            match from_json::<u64>(NS_REVOKED, &k, &e.value) {
                Ok(until) if now >= until => {
                    if self.delete_unchanged(NS_REVOKED, &k, e.version).await? {
                        report.revocations += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => report.unreadable += 1,
            }
        }
        write_lock(&self.revoked).retain(|_, until| *until > now);
        // A refresh of a session exchanged for an API key finds the key
        // gone and refuses it, as it refuses a revoked one; keeping the key
        // a refresh-token lifetime anyway lets its listing say why.
        let keep_keys = ENDED_RECORD_RETENTION_SECS.max(self.cfg.refresh_ttl_secs);
        for (k, e) in self.store.list(NS_APIKEYS, "", LIST_LIMIT).await? {
            match from_json::<ApiKeyRecord>(NS_APIKEYS, &k, &e.value) {
                Ok(r)
                    if r.revoked_at
                        .is_some_and(|at| now >= at.saturating_add(keep_keys)) =>
                {
                    if self.delete_cached(NS_APIKEYS, &k, e.version).await? {
                        self.cache_mut().keys.remove(&k);
                        report.api_keys += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => report.unreadable += 1,
            }
        }
        for (k, e) in self.store.list(NS_ELEVATIONS, "", LIST_LIMIT).await? {
            match from_json::<Elevation>(NS_ELEVATIONS, &k, &e.value) {
                Ok(el) => {
                    let ended_at = match el.status {
                        ElevationStatus::Denied => Some(el.decided_at.unwrap_or(el.requested_at)),
                        ElevationStatus::Expired => Some(el.expires_at.unwrap_or_else(|| {
                            el.requested_at
                                .saturating_add(self.cfg.elevation_request_ttl_secs)
                        })),
                        ElevationStatus::Pending | ElevationStatus::Approved => None,
                    };
                    let old = ended_at
                        .is_some_and(|at| now >= at.saturating_add(ENDED_RECORD_RETENTION_SECS));
                    if old && self.delete_cached(NS_ELEVATIONS, &k, e.version).await? {
                        self.cache_mut().elevations.remove(&k);
                        report.elevations += 1;
                    }
                }
                Err(_) => report.unreadable += 1,
            }
        }
        report.throttle_entries = self.prune_throttle(now).await?;
        if report.deleted_any() || report.unreadable > 0 {
            self.record(
                "system",
                "local",
                "identity.prune",
                "-",
                Outcome::Allowed,
                format!(
                    "deleted {} refresh tokens, {} sessions, {} revocations, {} login throttle entries, {} revoked API keys, {} ended elevations; {} unreadable left",
                    report.refresh_tokens,
                    report.sessions,
                    report.revocations,
                    report.throttle_entries,
                    report.api_keys,
                    report.elevations,
                    report.unreadable
                ),
                None,
            )?;
        }
        Ok(report)
    }

    /// Deletes a record if it is still at `version`; a record changed
    /// meanwhile (or already gone) is left alone.
    /// [`Identity::delete_unchanged`] for a namespace nodes cache: the
    /// generation moves with the deletion, so other nodes reload.
    async fn delete_cached(
        &self,
        ns: &str,
        key: &str,
        version: u64,
    ) -> Result<bool, IdentityError> {
        let delete = Op::Delete {
            ns: ns.into(),
            key: key.into(),
            expect: Expect::Version(version),
        };
        match self.store.apply(vec![delete, generation_bump()]).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) async fn delete_unchanged(
        &self,
        ns: &str,
        key: &str,
        version: u64,
    ) -> Result<bool, IdentityError> {
        match self.store.delete(ns, key, Expect::Version(version)).await {
            Ok(gone) => Ok(gone),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Logs out: revokes the session the principal's token belongs to.
    pub async fn logout(&self, principal: &Principal) -> Result<(), IdentityError> {
        let Some(sid) = &principal.session else {
            return Err(IdentityError::InvalidRequest("not a session".into()));
        };
        if principal.auth_method == "api-key" {
            return Err(IdentityError::InvalidRequest(
                "API keys are revoked, not logged out".into(),
            ));
        }
        self.revoke_session(&principal.id, sid).await?;
        self.record_by(
            principal,
            "identity.logout",
            sid,
            Outcome::Allowed,
            "logged out",
        )
    }

    /// Admin revocation of every session of a principal.
    pub async fn revoke_sessions(
        &self,
        actor: &Principal,
        user: &str,
    ) -> Result<usize, IdentityError> {
        let target =
            self.require_on(actor, user, None, "identity:sessions.revoke", PLATFORM_ENV)?;
        let n = self
            .revoke_user_sessions_inner(&target.id, "admin revocation")
            .await?;
        self.record_by(
            actor,
            "identity.session.revoke",
            &target.id,
            Outcome::Allowed,
            format!("{n} sessions"),
        )?;
        Ok(n)
    }

    // ---------------------------------------------------------- verification

    /// Verifies an access token: signature, issuer, audience, expiry and the
    /// revocation list. Synchronous and memory-only, for every request.
    pub fn verify_access(&self, token: &str) -> Result<Principal, IdentityError> {
        let now = self.now();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = read_lock(&self.token_cache).get(&digest).cloned();
        let principal = match cached {
            Some((p, exp)) if now < exp => p,
            _ => match self.verify_uncached(token, now) {
                Ok((p, exp)) => {
                    if self.cfg.token_cache_entries > 0 {
                        let mut c = write_lock(&self.token_cache);
                        if c.len() >= self.cfg.token_cache_entries {
                            c.retain(|_, (_, e)| *e > now);
                            if c.len() >= self.cfg.token_cache_entries {
                                c.clear();
                            }
                        }
                        c.insert(digest, (p.clone(), exp));
                    }
                    p
                }
                Err(r) => return Err(self.token_refused(r)),
            },
        };
        if let Some(sid) = &principal.session {
            if read_lock(&self.revoked)
                .get(sid)
                .is_some_and(|until| *until > now)
            {
                return Err(self.token_refused(Reject::Revoked));
            }
        }
        Ok(principal)
    }

    fn token_refused(&self, r: Reject) -> IdentityError {
        // Refusals are audited; if the log is down the answer is the same.
        let _ = self.record(
            "anonymous",
            "bearer",
            "identity.token.verify",
            "-",
            Outcome::Denied,
            r.as_str(),
            None,
        );
        IdentityError::InvalidToken
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<(Principal, u64), Reject> {
        let claims = {
            let s = read_lock(&self.signing);
            token::verify(
                token,
                &Expectations {
                    keys: &s.verifying,
                    issuer: &self.cfg.issuer,
                    audience: &self.cfg.audience,
                    now,
                    skew: SKEW,
                },
            )?
        };
        let roles = claims
            .roles
            .iter()
            .map(|r| r.parse::<Role>())
            .collect::<Result<BTreeSet<Role>, _>>()
            .map_err(|_| Reject::Malformed)?;
        let kind = match claims.kind.as_str() {
            "user" => PrincipalKind::User,
            "service" => PrincipalKind::Service,
            _ => return Err(Reject::Malformed),
        };
        // Disabling a principal or taking a role away revokes the sessions
        // it finds; one begun across it (on a node that had not heard of it
        // yet, or by a login overlapping it) is caught here: a disabled
        // principal's tokens are refused, and a token carries only the
        // roles its principal still holds.
        let (roles, base_roles) = match self.user(&claims.sub) {
            Some(u) if u.disabled => return Err(Reject::Revoked),
            Some(u) => {
                let held = self.principal_of(&u, &claims.amr, None, None).0.roles;
                let roles: BTreeSet<Role> = roles.intersection(&held).copied().collect();
                let base = u.roles.intersection(&roles).copied().collect();
                (roles, base)
            }
            None => (roles, BTreeSet::new()),
        };
        Ok((
            Principal {
                id: claims.sub,
                name: claims.name,
                kind,
                roles,
                base_roles,
                teams: claims.teams,
                environments: claims.env.into_iter().collect(),
                auth_method: claims.amr,
                session: Some(claims.sid),
            },
            claims.exp,
        ))
    }

    // -------------------------------------------------------------- API keys

    /// Creates an API key for `owner` (an id or name) acting in `env`. The
    /// key text is in the result and nowhere else.
    pub async fn create_api_key(
        &self,
        actor: &Principal,
        owner: &str,
        name: &str,
        env: &str,
    ) -> Result<NewApiKey, IdentityError> {
        let owner = self.require_on(
            actor,
            owner,
            Some("identity:apikeys.own"),
            "identity:apikeys.manage",
            env,
        )?;
        if !owner.environments.contains(env) {
            return Err(IdentityError::InvalidRequest(format!(
                "the owner may not act in {env:?}"
            )));
        }
        if name.len() > 128 {
            return Err(IdentityError::InvalidRequest("name too long".into()));
        }
        let (id, key) = apikey::generate(env)?;
        let rec = ApiKeyRecord {
            id: id.clone(),
            env: env.to_owned(),
            owner: owner.id.clone(),
            name: name.to_owned(),
            hash: self.peppered("apikey", key.as_bytes()),
            created_at: self.now(),
            last_used: None,
            revoked_at: None,
        };
        self.put_json(NS_APIKEYS, &id, &rec, Expect::Absent).await?;
        self.cache_mut().keys.insert(id.clone(), rec.clone());
        self.record_by(
            actor,
            "identity.apikey.create",
            &id,
            Outcome::Allowed,
            format!("for {} in {env}", owner.id),
        )?;
        Ok(NewApiKey {
            info: ApiKeyInfo::from(&rec),
            key,
        })
    }

    /// Lists API keys: the actor's own, one owner's, or everyone's (`owner =
    /// None`) for those allowed `identity:apikeys.manage` (a team admin sees
    /// the keys of its teams' members).
    pub fn list_api_keys(
        &self,
        actor: &Principal,
        owner: Option<&str>,
    ) -> Result<Vec<ApiKeyInfo>, IdentityError> {
        const OWN: &str = "identity:apikeys.own";
        const MANAGE: &str = "identity:apikeys.manage";
        let all = match owner {
            Some(o) if o == actor.id => {
                // Keys span environments; listing is a platform-level read,
                // but a principal that may only act in its own environments
                // can still list its own keys.
                let env = if actor.environments.contains(PLATFORM_ENV) {
                    Some(PLATFORM_ENV)
                } else {
                    actor
                        .environments
                        .iter()
                        .map(String::as_str)
                        .find(|env| self.authz.decide_in(actor, OWN, env, Scope::Own).allowed)
                };
                self.authz
                    .require_in(actor, OWN, env.unwrap_or(PLATFORM_ENV), Scope::Own)?;
                false
            }
            Some(o) => {
                self.require_on(actor, o, None, MANAGE, PLATFORM_ENV)?;
                false
            }
            None => self.require_listing(actor, MANAGE)?,
        };
        let c = read_lock(&self.cache);
        let mut v: Vec<ApiKeyInfo> = c
            .keys
            .values()
            .filter(|k| match owner {
                Some(o) => k.owner == o,
                None => {
                    all || k.owner == actor.id
                        || c.users.get(&k.owner).is_some_and(|u| {
                            self.authz
                                .decide_in(
                                    actor,
                                    MANAGE,
                                    PLATFORM_ENV,
                                    Scope::Principal(u.target()),
                                )
                                .allowed
                        })
                }
            })
            .map(ApiKeyInfo::from)
            .collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    /// Revokes an API key; it is refused from this moment.
    pub async fn revoke_api_key(&self, actor: &Principal, id: &str) -> Result<(), IdentityError> {
        let Some(rec) = read_lock(&self.cache).keys.get(id).cloned() else {
            // Only those who reach every key learn that one does not exist.
            self.authz
                .require(actor, "identity:apikeys.manage", PLATFORM_ENV)?;
            return Err(IdentityError::NotFound("API key".into()));
        };
        self.require_on(
            actor,
            &rec.owner,
            Some("identity:apikeys.own"),
            "identity:apikeys.manage",
            &rec.env,
        )?;
        let owner = rec.owner.clone();
        let mut r = rec;
        r.revoked_at = Some(self.now());
        self.put_json(NS_APIKEYS, id, &r, Expect::Any).await?;
        self.cache_mut().keys.insert(id.to_owned(), r);
        // Sessions exchanged for the key end with it (refresh checks the
        // key too; this makes their access tokens refused at once).
        let now = self.now();
        for (k, e) in self
            .store
            .list(NS_SESSIONS, &format!("{owner}/"), LIST_LIMIT)
            .await?
        {
            let s: SessionRecord = from_json(NS_SESSIONS, &k, &e.value)?;
            if s.api_key.as_deref() == Some(id) && s.revoked_at.is_none() && s.expires_at > now {
                self.revoke_session(&owner, &s.sid).await?;
            }
        }
        self.record_by(
            actor,
            "identity.apikey.revoke",
            id,
            Outcome::Allowed,
            "revoked",
        )
    }

    /// Verifies an API key and returns the principal it acts as (limited to
    /// the key's environment). Memory-only but for a coarse `last_used` write.
    pub async fn verify_api_key(
        &self,
        key: &str,
        source: Option<&str>,
    ) -> Result<Principal, IdentityError> {
        let (p, touch) = self.check_api_key(key, source)?;
        if let Some(id) = touch {
            let used = read_lock(&self.cache)
                .keys
                .get(&id)
                .and_then(|r| r.last_used);
            // Best effort: a failed bookkeeping write does not refuse the
            // key. It leaves the generation alone: other nodes need not
            // re-read everything for a `last_used` (their minute's full
            // read brings it). It changes `last_used` alone on the stored
            // record, compare-and-set, so that it never writes back a key
            // revoked meanwhile (here or on another node) as unrevoked.
            if let Ok(Some(e)) = self.store.get(NS_APIKEYS, &id).await {
                if let Ok(mut rec) = from_json::<ApiKeyRecord>(NS_APIKEYS, &id, &e.value) {
                    rec.last_used = used.max(rec.last_used);
                    if let Ok(value) = to_json(&rec) {
                        let _ = self
                            .store
                            .put(NS_APIKEYS, &id, &value, Expect::Version(e.version))
                            .await;
                    }
                }
            }
        }
        Ok(p)
    }

    /// The synchronous part of API key verification; returns the key id if
    /// its `last_used` should be written.
    pub fn check_api_key(
        &self,
        key: &str,
        source: Option<&str>,
    ) -> Result<(Principal, Option<String>), IdentityError> {
        let now = self.now();
        let deny = |why: &str, id: &str| -> IdentityError {
            match self.record(
                "anonymous",
                "api-key",
                "identity.apikey.verify",
                id,
                Outcome::Denied,
                why,
                source,
            ) {
                Ok(()) => IdentityError::InvalidApiKey,
                Err(e) => e,
            }
        };
        let parsed = match apikey::parse(key) {
            Ok(p) => p,
            Err(_) => return Err(deny("malformed key", "-")),
        };
        let hash = self.peppered("apikey", key.as_bytes());
        let checked = {
            let c = read_lock(&self.cache);
            match c.keys.get(parsed.id) {
                None => Err("unknown key"),
                Some(rec) if !rampart_crypto::ct_eq(rec.hash.as_bytes(), hash.as_bytes()) => {
                    Err("wrong secret")
                }
                Some(rec) if rec.env != parsed.env => Err("environment mismatch"),
                Some(rec) if rec.revoked_at.is_some() => Err("revoked"),
                Some(rec) => match c.users.get(&rec.owner) {
                    Some(owner) if !owner.disabled => {
                        let (p, _) = self.principal_in(
                            &c,
                            owner,
                            "api-key",
                            Some(rec.id.clone()),
                            Some(&rec.env),
                        );
                        let stale = rec
                            .last_used
                            .is_none_or(|t| now.saturating_sub(t) >= LAST_USED_GRANULARITY);
                        Ok((p, stale))
                    }
                    _ => Err("owner gone or disabled"),
                },
            }
        };
        let (p, stale) = checked.map_err(|why| deny(why, parsed.id))?;
        let touch = if stale {
            let mut c = write_lock(&self.cache);
            if let Some(r) = c.keys.get_mut(parsed.id) {
                r.last_used = Some(now);
            }
            Some(parsed.id.to_owned())
        } else {
            None
        };
        Ok((p, touch))
    }

    /// Exchanges an API key for a session limited to the key's environment.
    pub async fn exchange_api_key(
        &self,
        key: &str,
        source: Option<&str>,
    ) -> Result<Tokens, IdentityError> {
        let p = self.verify_api_key(key, source).await?;
        let user = self.user(&p.id).ok_or(IdentityError::InvalidApiKey)?;
        let env = p.environments.iter().next().cloned();
        self.issue_session(
            &user,
            "api-key",
            env.as_deref().or(Some("-")),
            p.session.as_deref(),
            source,
        )
        .await
    }

    // ------------------------------------------------------------------ TOTP

    /// Starts (or restarts) TOTP enrolment for a user: the actor's own, or
    /// anyone's for `identity:users.update`. Not active until confirmed.
    /// Restarting one's own confirmed enrolment needs a current `code` (or
    /// a recovery code); an admin's reset of another user's does not.
    pub async fn enrol_totp(
        &self,
        actor: &Principal,
        user: &str,
        code: Option<&str>,
    ) -> Result<TotpEnrolment, IdentityError> {
        let u = self.require_on(
            actor,
            user,
            Some("identity:mfa.own"),
            "identity:users.update",
            PLATFORM_ENV,
        )?;
        if u.id == actor.id {
            self.step_up_totp(&u, code).await?;
        }
        if u.kind != PrincipalKind::User {
            return Err(IdentityError::InvalidRequest("only users have TOTP".into()));
        }
        let secret = rampart_crypto::random_array::<20>()?.to_vec();
        let sealed = rampart_crypto::seal(
            &self.totp_key,
            "identity/totp",
            &secret,
            &totp_context(&u.id),
        )?;
        let totp = Totp::new(secret);
        let uri = totp.uri(&self.cfg.issuer, &u.name);
        let mut codes = Vec::new();
        let mut hashes = Vec::new();
        for _ in 0..10 {
            let raw =
                crate::totp::base32_encode(&rampart_crypto::random_array::<10>()?).to_lowercase();
            let code = format!(
                "{}-{}-{}-{}",
                raw.get(0..4).unwrap_or_default(),
                raw.get(4..8).unwrap_or_default(),
                raw.get(8..12).unwrap_or_default(),
                raw.get(12..16).unwrap_or_default()
            );
            hashes.push(self.peppered("recovery", code.as_bytes()));
            codes.push(code);
        }
        let state = TotpState {
            sealed: B64.encode(sealed),
            confirmed: false,
            last_step: 0,
            recovery: hashes,
        };
        self.update_user(&u.id, |r| {
            r.totp = Some(state.clone());
            Ok(())
        })
        .await?;
        self.record_by(
            actor,
            "identity.totp.enrol",
            &u.id,
            Outcome::Allowed,
            "enrolment started",
        )?;
        Ok(TotpEnrolment {
            secret_base32: totp.secret_base32(),
            qr_svg: qr_svg(&uri)?,
            otpauth_uri: uri,
            recovery_codes: codes,
        })
    }

    /// Confirms TOTP enrolment with a first code; from then on logins need a code.
    pub async fn confirm_totp(
        &self,
        actor: &Principal,
        user: &str,
        code: &str,
    ) -> Result<(), IdentityError> {
        let u = self.require_on(
            actor,
            user,
            Some("identity:mfa.own"),
            "identity:users.update",
            PLATFORM_ENV,
        )?;
        let totp = Totp::new(self.totp_secret(&u)?);
        let now = self.now();
        let step = totp.verify(code, now);
        let res = self
            .update_user(&u.id, |r| {
                let (Some(t), Some(step)) = (r.totp.as_mut(), step) else {
                    return Err(IdentityError::InvalidCredentials);
                };
                if step <= t.last_step {
                    return Err(IdentityError::InvalidCredentials);
                }
                t.last_step = step;
                t.confirmed = true;
                Ok(())
            })
            .await;
        let (outcome, why) = match &res {
            Ok(_) => (Outcome::Allowed, "enrolment confirmed"),
            Err(_) => (Outcome::Denied, "wrong code"),
        };
        self.record_by(actor, "identity.totp.confirm", &u.id, outcome, why)?;
        res.map(|_| ())
    }
}
