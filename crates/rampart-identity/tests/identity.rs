//! End-to-end scenarios against a real store, keyring and audit log, with a
//! manual clock.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rampart_audit::{Audit, AuditKeys, AuditOptions, Outcome, Query};
use rampart_core::{Clock, ManualClock, SharedClock};
use rampart_crypto::RootKey;
use rampart_identity::totp::Totp;
use rampart_identity::*;
use rampart_store::{Keyring, RootKeySource, SqliteStore, Store};

const T0: u64 = 1_800_000_000;
const PASSWORD: &str = "correct horse battery staple";

struct H {
    id: Arc<Identity>,
    clock: Arc<ManualClock>,
    audit: Arc<Audit>,
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    sys: Principal,
    _dir: tempfile::TempDir,
}

fn cfg() -> IdentityConfig {
    IdentityConfig {
        passwords: PasswordParams::insecure_for_tests(),
        totp_required_roles: vec![],
        node: "test-node".into(),
        ..IdentityConfig::default()
    }
}

async fn harness_with(cfg: IdentityConfig) -> H {
    let clock = Arc::new(ManualClock::at_unix_secs(T0));
    let shared: SharedClock = clock.clone();
    let dir = tempfile::tempdir().unwrap();
    let (audit, _) = Audit::open(
        AuditOptions::new(dir.path().join("audit")),
        AuditKeys::generate().unwrap(),
        shared.clone(),
    )
    .unwrap();
    let audit = Arc::new(audit);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory(shared.clone()).unwrap());
    let keyring = Arc::new(
        Keyring::initialise(
            store.clone(),
            RootKey::generate().unwrap(),
            RootKeySource::Env,
            None,
            T0,
        )
        .await
        .unwrap(),
    );
    let id = Identity::open(store.clone(), keyring.clone(), audit.clone(), shared, cfg)
        .await
        .unwrap();
    H {
        id: Arc::new(id),
        clock,
        audit,
        store,
        keyring,
        sys: Principal::system(&["platform", "live", "test"]),
        _dir: dir,
    }
}

async fn harness() -> H {
    harness_with(cfg()).await
}

impl H {
    /// Another `Identity` over this harness's store, keys, log and clock:
    /// a restart, or a second node.
    async fn open_again(&self, cfg: IdentityConfig) -> Identity {
        Identity::open(
            self.store.clone(),
            self.keyring.clone(),
            self.audit.clone(),
            self.clock.clone(),
            cfg,
        )
        .await
        .unwrap()
    }

    /// A service principal in `live` and an API key of it.
    async fn service_with_key(&self, name: &str) -> (User, NewApiKey) {
        let svc = self
            .id
            .create_user(
                &self.sys,
                NewUser {
                    name: name.into(),
                    kind: PrincipalKind::Service,
                    roles: [Role::TeamMember].into(),
                    teams: vec![],
                    environments: ["live".to_string()].into(),
                    password: None,
                },
            )
            .await
            .unwrap();
        let k = self
            .id
            .create_api_key(&self.sys, &svc.id, "ci", "live")
            .await
            .unwrap();
        (svc, k)
    }

    async fn user(&self, name: &str, roles: &[Role], envs: &[&str]) -> User {
        self.id
            .create_user(
                &self.sys,
                NewUser {
                    name: name.into(),
                    kind: PrincipalKind::User,
                    roles: roles.iter().copied().collect(),
                    teams: vec![],
                    environments: envs.iter().map(|s| s.to_string()).collect(),
                    password: Some(PASSWORD.into()),
                },
            )
            .await
            .unwrap()
    }

    async fn login(&self, name: &str) -> Result<Tokens, IdentityError> {
        self.id
            .login(
                &LoginRequest {
                    username: name.into(),
                    password: PASSWORD.into(),
                    totp: None,
                },
                Some("192.0.2.1"),
            )
            .await
    }

    async fn login_as(&self, name: &str) -> Principal {
        let t = self.login(name).await.unwrap();
        self.id.verify_access(&t.access_token).unwrap()
    }

    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    fn audited(&self, action: &str, outcome: Outcome) -> Vec<String> {
        self.audit
            .search(&Query {
                action: Some(action.into()),
                outcome: Some(outcome),
                ..Query::default()
            })
            .unwrap()
            .into_iter()
            .map(|r| r.event.reason.unwrap_or_default())
            .collect()
    }
}

#[tokio::test]
async fn each_role_allowed_and_denied_on_a_sample_of_operations() {
    let h = harness().await;
    let envs = ["platform", "live"];
    let admin = h.user("ada", &[Role::Admin], &envs).await;
    let _ = admin;
    h.user("tina", &[Role::TeamAdmin], &envs).await;
    h.user("max", &[Role::TeamMember], &envs).await;
    h.user("ivy", &[Role::Individual], &envs).await;
    let az = h.id.authorizer();
    let table: &[(&str, &str, &str, bool)] = &[
        ("ada", "keys:rotate", "live", true),
        ("ada", "identity:users.create", "platform", true),
        ("ada", "keys:rotate", "test", false), // environments are walls, even for admin
        ("tina", "keys:rotate", "live", true),
        ("tina", "secrets:write", "live", true),
        ("tina", "identity:users.create", "platform", false),
        ("tina", "identity:elevations.approve", "platform", false),
        ("max", "keys:read", "live", true),
        ("max", "keys:rotate", "live", false),
        ("max", "secrets:write", "live", false),
        ("max", "identity:apikeys.manage", "platform", false),
        ("ivy", "secrets:read", "live", true),
        ("ivy", "keys:read", "live", false),
        ("ivy", "identity:elevations.request", "platform", false),
        ("ivy", "nonsense", "live", false),
    ];
    for (who, perm, env, want) in table {
        let p = h.login_as(who).await;
        let d = az.authorize(&p, perm, env);
        assert_eq!(d.allowed, *want, "{who} {perm} in {env}: {}", d.reason);
        assert!(!d.reason.is_empty());
    }
    // Every decision is in the audit log with its reason.
    let allowed = h.audited("authz.decide", Outcome::Allowed);
    let denied = h.audited("authz.decide", Outcome::Denied);
    assert!(allowed
        .iter()
        .any(|r| r.contains("role admin grants \"*\"")));
    assert!(denied
        .iter()
        .any(|r| r.contains("outside the principal's environments")));
    assert!(denied
        .iter()
        .any(|r| r.contains("grants keys:rotate") && r.contains("team_member")));
}

#[tokio::test]
async fn api_key_verified_then_revoked_and_refused() {
    let h = harness().await;
    let (svc, k) = h.service_with_key("billing-svc").await;
    assert!(k.key.starts_with(&format!("rk_live_{}_", k.info.id)));
    assert_eq!(k.info.prefix, format!("rk_live_{}", k.info.id));
    // Service principals cannot log in with passwords, and a key for an
    // environment the owner lacks is refused.
    assert!(h
        .id
        .create_api_key(&h.sys, &svc.id, "x", "test")
        .await
        .is_err());

    let p = h.id.verify_api_key(&k.key, None).await.unwrap();
    assert_eq!(p.id, svc.id);
    assert_eq!(p.auth_method, "api-key");
    assert_eq!(p.environments, BTreeSet::from(["live".to_string()]));
    assert!(h.id.authorizer().authorize(&p, "keys:read", "live").allowed);

    let listed = h.id.list_api_keys(&h.sys, None).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].owner, svc.id);
    assert_eq!(listed[0].last_used, Some(T0));
    assert!(!serde_json::to_string(&listed).unwrap().contains(&k.key));

    // Wrong secret, swapped environment: refused.
    let mut wrong = k.key.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    assert!(matches!(
        h.id.verify_api_key(&wrong, None).await,
        Err(IdentityError::InvalidApiKey)
    ));
    let swapped = k.key.replacen("rk_live_", "rk_test_", 1);
    assert!(matches!(
        h.id.verify_api_key(&swapped, None).await,
        Err(IdentityError::InvalidApiKey)
    ));

    // Exchange for a session limited to the key's environment.
    let t = h.id.exchange_api_key(&k.key, None).await.unwrap();
    let sp = h.id.verify_access(&t.access_token).unwrap();
    assert_eq!(sp.environments, BTreeSet::from(["live".to_string()]));

    h.id.revoke_api_key(&h.sys, &k.info.id).await.unwrap();
    assert!(matches!(
        h.id.verify_api_key(&k.key, None).await,
        Err(IdentityError::InvalidApiKey)
    ));
    assert!(h.id.exchange_api_key(&k.key, None).await.is_err());
    assert!(h
        .audited("identity.apikey.verify", Outcome::Denied)
        .iter()
        .any(|r| r == "revoked"));

    // The store holds no key text, only its HMAC, and Debug never shows it.
    let secret = k.key.rsplit('_').next().unwrap();
    for (_, e) in h.store.list("identity/apikeys", "", 100).await.unwrap() {
        assert!(!String::from_utf8_lossy(&e.value).contains(secret));
    }
    assert!(!format!("{k:?}").contains(secret));
}

#[tokio::test]
async fn users_own_keys_need_their_environment() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let max = h.login_as("max").await;
    let k =
        h.id.create_api_key(&max, "max", "laptop", "live")
            .await
            .unwrap();
    assert_eq!(h.id.list_api_keys(&max, Some(&max.id)).unwrap().len(), 1);
    // Someone else's keys, or all keys: not for a team member.
    assert!(h.id.list_api_keys(&max, None).is_err());
    h.user("ivy", &[Role::Individual], &["platform", "live"])
        .await;
    assert!(matches!(
        h.id.create_api_key(&max, "ivy", "x", "live").await,
        Err(IdentityError::Forbidden(_))
    ));
    h.id.revoke_api_key(&max, &k.info.id).await.unwrap();
}

fn tamper_payload(token: &str, f: impl Fn(&mut serde_json::Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    f(&mut claims);
    let p = B64URL.encode(serde_json::to_vec(&claims).unwrap());
    format!("{}.{}.{}", parts[0], p, parts[2])
}

#[tokio::test]
async fn expired_wrong_audience_tampered_and_alg_none_tokens_are_refused() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let t = h.login("max").await.unwrap();
    assert_eq!(t.expires_in, 3600);
    let p = h.id.verify_access(&t.access_token).unwrap();
    assert!(p.roles.contains(&Role::TeamMember));

    // Tampered: more roles, same signature.
    let evil = tamper_payload(&t.access_token, |c| {
        c["roles"] = serde_json::json!(["admin"])
    });
    assert!(matches!(
        h.id.verify_access(&evil),
        Err(IdentityError::InvalidToken)
    ));
    // alg: none.
    let parts: Vec<&str> = t.access_token.split('.').collect();
    let none = B64URL.encode(br#"{"alg":"none","typ":"JWT","kid":"x"}"#);
    for forged in [
        format!("{none}.{}.", parts[1]),
        format!("{none}.{}.{}", parts[1], parts[2]),
        format!("{none}.{}", parts[1]),
    ] {
        assert!(matches!(
            h.id.verify_access(&forged),
            Err(IdentityError::InvalidToken)
        ));
    }
    // Wrong audience: another deployment over the same keys.
    let other_cfg = IdentityConfig {
        audience: "someone-else".into(),
        ..cfg()
    };
    let other = h.open_again(other_cfg).await;
    assert!(other.verify_access(&t.access_token).is_err());
    let t_other = other
        .login(
            &LoginRequest {
                username: "max".into(),
                password: PASSWORD.into(),
                totp: None,
            },
            None,
        )
        .await
        .unwrap();
    assert!(matches!(
        h.id.verify_access(&t_other.access_token),
        Err(IdentityError::InvalidToken)
    ));

    // Expired: one hour later, cached or not.
    h.advance(3599);
    assert!(h.id.verify_access(&t.access_token).is_ok());
    h.advance(1);
    assert!(matches!(
        h.id.verify_access(&t.access_token),
        Err(IdentityError::InvalidToken)
    ));
    let reasons = h.audited("identity.token.verify", Outcome::Denied);
    for want in [
        "bad signature",
        "algorithm not EdDSA",
        "wrong audience",
        "expired",
    ] {
        assert!(
            reasons.iter().any(|r| r == want),
            "{want} not in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let t1 = h.login("max").await.unwrap();
    h.advance(10);
    let t2 = h.id.refresh(&t1.refresh_token, None).await.unwrap();
    assert_ne!(t2.refresh_token, t1.refresh_token);
    assert_eq!(t2.session_id, t1.session_id);
    h.advance(10);
    let t3 = h.id.refresh(&t2.refresh_token, None).await.unwrap();
    assert!(h.id.verify_access(&t3.access_token).is_ok());
    // An attacker replays the first refresh token.
    assert!(matches!(
        h.id.refresh(&t1.refresh_token, None).await,
        Err(IdentityError::RefreshReuse)
    ));
    // The whole family is gone: the latest refresh token and every access token.
    assert!(matches!(
        h.id.refresh(&t3.refresh_token, None).await,
        Err(IdentityError::InvalidRefreshToken)
    ));
    for t in [&t1, &t2, &t3] {
        assert!(h.id.verify_access(&t.access_token).is_err());
    }
    // Other sessions stand.
    let t4 = h.login("max").await.unwrap();
    assert!(h.id.verify_access(&t4.access_token).is_ok());
    // Garbage refresh tokens are plain errors.
    for bad in ["", "rr_", "nope", &"rr_x".repeat(100)] {
        assert!(h.id.refresh(bad, None).await.is_err());
    }
}

#[tokio::test]
async fn refresh_tokens_expire() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let t = h.login("max").await.unwrap();
    h.advance(14 * 86_400);
    assert!(matches!(
        h.id.refresh(&t.refresh_token, None).await,
        Err(IdentityError::InvalidRefreshToken)
    ));
}

#[tokio::test]
async fn logout_refuses_the_old_access_token_at_once() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let a = h.login("max").await.unwrap();
    let b = h.login("max").await.unwrap();
    let p = h.id.verify_access(&a.access_token).unwrap(); // now cached
    h.id.logout(&p).await.unwrap();
    assert!(matches!(
        h.id.verify_access(&a.access_token),
        Err(IdentityError::InvalidToken)
    ));
    assert!(h.id.refresh(&a.refresh_token, None).await.is_err());
    assert!(h.id.verify_access(&b.access_token).is_ok());
    assert_eq!(h.id.revocation_list_len(), 1);

    // Admin revocation: every session of the user, at once.
    let n = h.id.revoke_sessions(&h.sys, &p.id).await.unwrap();
    assert_eq!(n, 1);
    assert!(h.id.verify_access(&b.access_token).is_err());

    // The list survives a restart, and is pruned once the tokens it guards
    // have expired.
    let reopened = h.open_again(cfg()).await;
    assert!(reopened.verify_access(&a.access_token).is_err());
    assert_eq!(reopened.revocation_list_len(), 2);
    h.advance(3600 + 61);
    reopened.maintain().await.unwrap();
    assert_eq!(reopened.revocation_list_len(), 0);
}

#[tokio::test]
async fn disabling_a_user_ends_their_sessions_and_logins() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let t = h.login("max").await.unwrap();
    h.id.set_disabled(&h.sys, "max", true).await.unwrap();
    assert!(h.id.verify_access(&t.access_token).is_err());
    assert!(matches!(
        h.login("max").await,
        Err(IdentityError::InvalidCredentials)
    ));
}

#[tokio::test]
async fn removing_a_role_revokes_sessions_adding_one_does_not() {
    let h = harness().await;
    h.user("tina", &[Role::TeamAdmin], &["platform", "live"])
        .await;
    let t = h.login("tina").await.unwrap();
    h.id.set_roles(&h.sys, "tina", [Role::TeamAdmin, Role::Individual].into())
        .await
        .unwrap();
    assert!(h.id.verify_access(&t.access_token).is_ok());
    h.id.set_roles(&h.sys, "tina", [Role::Individual].into())
        .await
        .unwrap();
    assert!(h.id.verify_access(&t.access_token).is_err());
    let p = h.login_as("tina").await;
    assert!(
        !h.id
            .authorizer()
            .authorize(&p, "keys:rotate", "live")
            .allowed
    );
}

#[tokio::test]
async fn totp_code_refused_on_second_use_and_recovery_codes_work_once() {
    let h = harness_with(IdentityConfig {
        totp_required_roles: vec![Role::Admin],
        ..cfg()
    })
    .await;
    h.user("ada", &[Role::Admin], &["platform", "live"]).await;
    // Admins must have TOTP.
    assert!(matches!(
        h.login("ada").await,
        Err(IdentityError::SecondFactorEnrolmentRequired)
    ));
    let e = h.id.enrol_totp(&h.sys, "ada", None).await.unwrap();
    assert!(e
        .otpauth_uri
        .starts_with("otpauth://totp/rampart:ada?secret="));
    assert!(e.qr_svg.contains("<svg"));
    assert_eq!(e.recovery_codes.len(), 10);
    let totp = Totp::new(decode_b32(&e.secret_base32));
    h.id.confirm_totp(&h.sys, "ada", &totp.code_at(h.clock.unix_secs()))
        .await
        .unwrap();

    let login = |code: Option<String>| {
        let id = h.id.clone();
        async move {
            id.login(
                &LoginRequest {
                    username: "ada".into(),
                    password: PASSWORD.into(),
                    totp: code,
                },
                None,
            )
            .await
        }
    };
    assert!(matches!(
        login(None).await,
        Err(IdentityError::SecondFactorRequired)
    ));
    // The confirmation code is spent.
    let spent = totp.code_at(h.clock.unix_secs());
    assert!(matches!(
        login(Some(spent)).await,
        Err(IdentityError::InvalidCredentials)
    ));
    h.advance(30);
    let code = totp.code_at(h.clock.unix_secs());
    let t = login(Some(code.clone())).await.unwrap();
    let p = h.id.verify_access(&t.access_token).unwrap();
    assert_eq!(p.auth_method, "password+totp");
    // Second use of the same code, same step: refused.
    assert!(matches!(
        login(Some(code)).await,
        Err(IdentityError::InvalidCredentials)
    ));
    // One step of drift is allowed (the next step's code), but not two.
    let next = totp.code_for_step(totp.step_at(h.clock.unix_secs()) + 1);
    assert!(login(Some(next)).await.is_ok());
    h.advance(120);
    let stale = totp.code_for_step(totp.step_at(h.clock.unix_secs()) - 2);
    assert!(login(Some(stale)).await.is_err());
    // Recovery codes: once each.
    let rc = e.recovery_codes[3].clone();
    let t = login(Some(rc.clone())).await.unwrap();
    assert_eq!(
        h.id.verify_access(&t.access_token).unwrap().auth_method,
        "password+recovery"
    );
    assert!(login(Some(rc)).await.is_err());
    // Nothing secret is stored in the clear.
    for (_, e2) in h.store.list("identity/users", "", 100).await.unwrap() {
        let s = String::from_utf8_lossy(&e2.value).to_string();
        assert!(!s.contains(&e.secret_base32) && !s.contains(&e.recovery_codes[0]));
    }
}

fn decode_b32(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u64, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("bad base32"),
        };
        buf = (buf << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn elevation_cannot_be_self_approved_and_expires_on_time() {
    let h = harness().await;
    let envs = ["platform", "live"];
    h.user("max", &[Role::TeamMember], &envs).await;
    h.user("ada", &[Role::Admin], &envs).await;
    h.user("tina", &[Role::TeamAdmin], &envs).await;
    let max = h.login_as("max").await;
    let ada = h.login_as("ada").await;
    let tina = h.login_as("tina").await;

    assert!(h
        .id
        .request_elevation(&max, Role::Admin, 3600, "  ")
        .await
        .is_err());
    assert!(h
        .id
        .request_elevation(&max, Role::Admin, 9 * 3600, "incident")
        .await
        .is_err());
    let e =
        h.id.request_elevation(
            &max,
            Role::TeamAdmin,
            1800,
            "INC-42: rotate the payment key",
        )
        .await
        .unwrap();
    assert_eq!(e.status, ElevationStatus::Pending);
    // Nobody approves their own request; non-admins approve nothing.
    assert!(matches!(
        h.id.decide_elevation(&max, &e.id, true).await,
        Err(IdentityError::Forbidden(_))
    ));
    assert!(matches!(
        h.id.decide_elevation(&tina, &e.id, true).await,
        Err(IdentityError::Forbidden(_))
    ));
    // An admin asking for more cannot approve themself either.
    let e_ada =
        h.id.request_elevation(&ada, Role::TeamAdmin, 60, "x")
            .await
            .unwrap();
    assert!(h.id.decide_elevation(&ada, &e_ada.id, true).await.is_err());
    assert!(!h
        .id
        .effective_roles(&max.id)
        .unwrap()
        .contains(&Role::TeamAdmin));

    h.advance(60);
    let approved = h.id.decide_elevation(&ada, &e.id, true).await.unwrap();
    assert_eq!(approved.expires_at, Some(T0 + 60 + 1800));
    assert!(h
        .id
        .effective_roles(&max.id)
        .unwrap()
        .contains(&Role::TeamAdmin));
    // A token issued now carries the role and ends with the elevation.
    let t = h.login("max").await.unwrap();
    assert_eq!(t.expires_in, 1800);
    let p = h.id.verify_access(&t.access_token).unwrap();
    assert!(
        h.id.authorizer()
            .authorize(&p, "keys:rotate", "live")
            .allowed
    );
    assert!(!p.base_roles.contains(&Role::TeamAdmin));

    h.advance(1799);
    assert!(h
        .id
        .effective_roles(&max.id)
        .unwrap()
        .contains(&Role::TeamAdmin));
    h.advance(1);
    assert!(!h
        .id
        .effective_roles(&max.id)
        .unwrap()
        .contains(&Role::TeamAdmin));
    assert!(h.id.verify_access(&t.access_token).is_err());
    let t2 = h.login("max").await.unwrap();
    let p2 = h.id.verify_access(&t2.access_token).unwrap();
    assert!(
        !h.id
            .authorizer()
            .authorize(&p2, "keys:rotate", "live")
            .allowed
    );
    h.id.maintain().await.unwrap();
    let listed = h.id.list_elevations(&max).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, ElevationStatus::Expired);
    // Every step is on the record.
    for action in [
        "identity.elevation.request",
        "identity.elevation.approve",
        "identity.elevation.expire",
    ] {
        assert!(!h.audited(action, Outcome::Allowed).is_empty(), "{action}");
    }
    assert!(h
        .audited("identity.elevation.approve", Outcome::Denied)
        .iter()
        .any(|r| r.contains("own elevation")));
}

#[tokio::test]
async fn tenth_failed_login_is_slowed_down_and_unknown_accounts_look_the_same() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let bad = |name: &str| LoginRequest {
        username: name.into(),
        password: "wrong password!".into(),
        totp: None,
    };
    let mut waits = Vec::new();
    for attempt in 1..=10 {
        let r = match h.id.login(&bad("max"), Some("198.51.100.7")).await {
            Err(IdentityError::Throttled { retry_after }) => {
                waits.push((attempt, retry_after.as_secs()));
                h.advance(retry_after.as_secs());
                h.id.login(&bad("max"), Some("198.51.100.7")).await
            }
            other => other,
        };
        assert!(
            matches!(r, Err(IdentityError::InvalidCredentials)),
            "attempt {attempt}: {r:?}"
        );
    }
    // Five free failures, then each one doubles the wait before the next.
    assert_eq!(waits, vec![(7, 1), (8, 2), (9, 4), (10, 8)]);
    // After the tenth failure even the right password waits 16 s.
    match h.login("max").await {
        Err(IdentityError::Throttled { retry_after }) => assert_eq!(retry_after.as_secs(), 16),
        other => panic!("{other:?}"),
    }
    h.advance(16);
    assert!(h.login("max").await.is_ok());

    // An unknown account fails exactly as a known one does.
    for _ in 0..5 {
        assert!(matches!(
            h.id.login(&bad("nobody"), None).await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        h.id.login(&bad("nobody"), None).await,
        Err(IdentityError::InvalidCredentials)
    ));
    assert!(matches!(
        h.id.login(&bad("nobody"), None).await,
        Err(IdentityError::Throttled { .. })
    ));
    let reasons = h.audited("identity.login", Outcome::Denied);
    assert!(reasons.iter().any(|r| r.starts_with("unknown account")));
}

#[tokio::test]
async fn malformed_tokens_and_keys_are_errors_never_panics() {
    let h = harness().await;
    let mut inputs: Vec<String> = vec![
        "".into(),
        ".".into(),
        "..".into(),
        "....".into(),
        "a.b.c".into(),
        "Bearer x".into(),
        "\u{0}\u{ffff}".into(),
        "rk_live__".into(),
        "rk_live_0123456789abcdef_".into(),
        "x".repeat(100_000),
    ];
    let mut seed = 0x1234_5678_9abc_def0u64;
    for _ in 0..2000 {
        let len = (seed % 300) as usize;
        let mut s = String::new();
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push(char::from(
                b"ab.rk_-eyJ0123456789{}\"=+/"[(seed % 26) as usize],
            ));
        }
        inputs.push(s);
    }
    for s in &inputs {
        assert!(h.id.verify_access(s).is_err());
        assert!(h.id.check_api_key(s, None).is_err());
    }
}

#[tokio::test]
async fn audit_failure_fails_closed() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let p = h.login_as("max").await;
    h.audit.close().unwrap();
    let d = h.id.authorizer().authorize(&p, "keys:read", "live");
    assert!(!d.allowed, "{}", d.reason);
    assert!(matches!(h.login("max").await, Err(IdentityError::Audit(_))));
    assert!(h
        .id
        .create_api_key(&h.sys, "max", "k", "live")
        .await
        .is_err());
}

#[tokio::test]
async fn signing_keys_rotate_and_are_published() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let jwks = h.id.jwks();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    let old = h.login("max").await.unwrap();
    let kid1 = h.id.current_kid();
    let kid2 = h.id.rotate_signing_key(&h.sys).await.unwrap();
    assert_ne!(kid1, kid2);
    assert_eq!(h.id.jwks()["keys"].as_array().unwrap().len(), 2);
    let new = h.login("max").await.unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &B64URL
            .decode(new.access_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["kid"], kid2.as_str());
    assert!(h.id.verify_access(&old.access_token).is_ok());
    assert!(h.id.verify_access(&new.access_token).is_ok());
    // Only admins rotate.
    let max = h.id.verify_access(&new.access_token).unwrap();
    assert!(h.id.rotate_signing_key(&max).await.is_err());
}

impl H {
    /// A principal in `teams`, created by the local operator.
    async fn member(
        &self,
        name: &str,
        kind: PrincipalKind,
        roles: &[Role],
        teams: &[&str],
        envs: &[&str],
    ) -> User {
        self.id
            .create_user(
                &self.sys,
                NewUser {
                    name: name.into(),
                    kind,
                    roles: roles.iter().copied().collect(),
                    teams: teams.iter().map(|s| s.to_string()).collect(),
                    environments: envs.iter().map(|s| s.to_string()).collect(),
                    password: (kind == PrincipalKind::User).then(|| PASSWORD.into()),
                },
            )
            .await
            .unwrap()
    }
}

fn forbidden<T: std::fmt::Debug>(r: Result<T, IdentityError>, what: &str) {
    assert!(
        matches!(r, Err(IdentityError::Forbidden(_))),
        "{what}: expected Forbidden, got {r:?}"
    );
}

fn names(users: &[User]) -> BTreeSet<String> {
    users.iter().map(|u| u.name.clone()).collect()
}

#[tokio::test]
async fn team_scoping_each_role_allowed_and_denied_on_team_operations() {
    let h = harness().await;
    let envs = ["platform", "live"];
    for t in ["alpha", "beta"] {
        h.id.create_team(&h.sys, t).await.unwrap();
    }
    h.user("ada", &[Role::Admin], &envs).await;
    let u = PrincipalKind::User;
    h.member("tina", u, &[Role::TeamAdmin], &["alpha"], &envs)
        .await;
    h.member("tara", u, &[Role::TeamAdmin], &["alpha"], &envs)
        .await;
    h.member("tom", u, &[Role::TeamAdmin], &["beta"], &envs)
        .await;
    let max = h
        .member("max", u, &[Role::TeamMember], &["alpha"], &envs)
        .await;
    let bob = h
        .member("bob", u, &[Role::TeamMember], &["beta"], &envs)
        .await;
    h.member(
        "pat",
        u,
        &[Role::TeamMember],
        &["alpha"],
        &["platform", "live", "test"],
    )
    .await;
    h.user("ivy", &[Role::Individual], &envs).await;
    let worker = h
        .member(
            "worker-a",
            PrincipalKind::Service,
            &[Role::TeamMember],
            &["alpha"],
            &["live"],
        )
        .await;
    let bob_key =
        h.id.create_api_key(&h.sys, "bob", "b", "live")
            .await
            .unwrap();

    // team_admin of alpha: manages alpha's members and their keys.
    let tina = h.login_as("tina").await;
    let own_key =
        h.id.create_api_key(&tina, "tina", "t", "live")
            .await
            .unwrap();
    let max_key =
        h.id.create_api_key(&tina, "max", "m", "live")
            .await
            .unwrap();
    let worker_key =
        h.id.create_api_key(&tina, &worker.id, "w", "live")
            .await
            .unwrap();
    let seen: BTreeSet<String> =
        h.id.list_api_keys(&tina, None)
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
    assert_eq!(
        seen,
        BTreeSet::from([
            own_key.info.id.clone(),
            max_key.info.id.clone(),
            worker_key.info.id.clone()
        ])
    );
    assert_eq!(h.id.list_api_keys(&tina, Some(&max.id)).unwrap().len(), 1);
    h.id.set_disabled(&tina, "max", true).await.unwrap();
    h.id.set_disabled(&tina, "max", false).await.unwrap();
    h.id.set_roles(&tina, "max", [Role::TeamMember].into())
        .await
        .unwrap();
    assert_eq!(h.id.revoke_sessions(&tina, "max").await.unwrap(), 0);
    let added =
        h.id.create_user(
            &tina,
            NewUser {
                name: "newbie".into(),
                kind: u,
                roles: [Role::TeamMember].into(),
                teams: vec!["alpha".into()],
                environments: ["live".to_string()].into(),
                password: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(added.teams, ["alpha"]);
    h.id.set_password(&tina, "newbie", "another long password here", None)
        .await
        .unwrap();
    assert_eq!(
        names(&h.id.list_users(&tina).unwrap()),
        ["max", "newbie", "pat", "tara", "tina", "worker-a"]
            .map(String::from)
            .into()
    );
    assert_eq!(h.id.get_user(&tina, "max").unwrap().id, max.id);
    let teams = h.id.list_teams(&tina).await.unwrap();
    assert_eq!(
        teams.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["alpha"]
    );
    h.id.revoke_api_key(&tina, &max_key.info.id).await.unwrap();

    // ... and nothing of beta's, nothing above itself, nothing beyond its walls.
    forbidden(
        h.id.create_api_key(&tina, "bob", "x", "live").await,
        "tina: key for bob",
    );
    forbidden(h.id.list_api_keys(&tina, Some(&bob.id)), "tina: bob's keys");
    forbidden(
        h.id.revoke_api_key(&tina, &bob_key.info.id).await,
        "tina: revoke bob's key",
    );
    forbidden(
        h.id.set_disabled(&tina, "bob", true).await,
        "tina: disable bob",
    );
    forbidden(
        h.id.revoke_sessions(&tina, "bob").await,
        "tina: bob's sessions",
    );
    forbidden(
        h.id.set_password(&tina, "bob", "another long password here", None)
            .await,
        "tina: bob's password",
    );
    forbidden(h.id.get_user(&tina, "bob"), "tina: read bob");
    forbidden(h.id.get_user(&tina, "nobody"), "tina: probe a name");
    forbidden(
        h.id.set_disabled(&tina, "tara", true).await,
        "tina: disable a fellow team admin",
    );
    forbidden(
        h.id.set_disabled(&tina, "pat", true).await,
        "tina: pat acts in test, tina does not",
    );
    forbidden(
        h.id.set_roles(&tina, "max", [Role::Admin].into()).await,
        "tina: grant admin",
    );
    forbidden(
        h.id.set_roles(&tina, "tina", [Role::Admin].into()).await,
        "tina: promote herself",
    );
    forbidden(
        h.id.create_team(&tina, "gamma").await,
        "tina: create a team",
    );
    let new = |name: &str, kind, roles: &[Role], teams: &[&str]| NewUser {
        name: name.into(),
        kind,
        roles: roles.iter().copied().collect(),
        teams: teams.iter().map(|s| s.to_string()).collect(),
        environments: ["live".to_string()].into(),
        password: None,
    };
    forbidden(
        h.id.create_user(&tina, new("x1", u, &[Role::TeamMember], &["beta"]))
            .await,
        "tina: user in beta",
    );
    forbidden(
        h.id.create_user(&tina, new("x2", u, &[Role::TeamMember], &[]))
            .await,
        "tina: teamless user",
    );
    forbidden(
        h.id.create_user(&tina, new("x3", u, &[Role::Admin], &["alpha"]))
            .await,
        "tina: admin user",
    );
    forbidden(
        h.id.create_user(&tina, new("x4", PrincipalKind::Service, &[], &["alpha"]))
            .await,
        "tina: service principal",
    );

    // team_admin of beta: the mirror image.
    let tom = h.login_as("tom").await;
    h.id.create_api_key(&tom, "bob", "b2", "live")
        .await
        .unwrap();
    forbidden(
        h.id.create_api_key(&tom, "max", "x", "live").await,
        "tom: key for max",
    );
    forbidden(h.id.list_api_keys(&tom, Some(&max.id)), "tom: max's keys");
    assert_eq!(
        names(&h.id.list_users(&tom).unwrap()),
        ["bob", "tom"].map(String::from).into()
    );

    // team_member: sees its team, administers nothing.
    let maxp = h.login_as("max").await;
    assert_eq!(h.id.get_user(&maxp, "tina").unwrap().name, "tina");
    assert!(names(&h.id.list_users(&maxp).unwrap()).contains("tina"));
    assert!(!names(&h.id.list_users(&maxp).unwrap()).contains("bob"));
    assert_eq!(h.id.list_teams(&maxp).await.unwrap().len(), 1);
    h.id.create_api_key(&maxp, "max", "own", "live")
        .await
        .unwrap();
    forbidden(h.id.get_user(&maxp, "bob"), "max: read bob");
    forbidden(
        h.id.create_api_key(&maxp, "pat", "x", "live").await,
        "max: key for pat",
    );
    forbidden(
        h.id.set_disabled(&maxp, "pat", true).await,
        "max: disable pat",
    );
    forbidden(
        h.id.revoke_sessions(&maxp, "pat").await,
        "max: pat's sessions",
    );
    forbidden(h.id.list_api_keys(&maxp, None), "max: everyone's keys");

    // individual: only itself.
    let ivy = h.login_as("ivy").await;
    h.id.create_api_key(&ivy, "ivy", "own", "live")
        .await
        .unwrap();
    assert_eq!(h.id.list_api_keys(&ivy, Some(&ivy.id)).unwrap().len(), 1);
    forbidden(h.id.list_users(&ivy), "ivy: list users");
    forbidden(h.id.list_teams(&ivy).await, "ivy: list teams");
    forbidden(h.id.get_user(&ivy, "max"), "ivy: read max");
    forbidden(
        h.id.create_api_key(&ivy, "max", "x", "live").await,
        "ivy: key for max",
    );

    // admin: everything.
    let ada = h.login_as("ada").await;
    h.id.create_api_key(&ada, "bob", "b3", "live")
        .await
        .unwrap();
    h.id.set_roles(&ada, "max", [Role::TeamAdmin].into())
        .await
        .unwrap();
    h.id.set_disabled(&ada, "tara", true).await.unwrap();
    assert_eq!(h.id.list_users(&ada).unwrap().len(), 10);
    assert_eq!(h.id.list_teams(&ada).await.unwrap().len(), 2);
    assert!(matches!(
        h.id.get_user(&ada, "nobody"),
        Err(IdentityError::NotFound(_))
    ));

    // Every scoped denial is audited with its reason.
    let denied = h.audited("authz.decide", Outcome::Denied);
    assert!(
        denied
            .iter()
            .any(|r| r.contains(&bob.id) && r.contains("none of the principal's teams")),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|r| r.contains("holds admin or team_admin")),
        "{denied:?}"
    );
    assert!(
        denied
            .iter()
            .any(|r| r.contains("no role of [team_member] grants identity:users.update")),
        "{denied:?}"
    );
}

#[tokio::test]
async fn service_principals_mint_no_credentials_whatever_their_roles() {
    let h = harness().await;
    h.member(
        "ops-bot",
        PrincipalKind::Service,
        &[Role::Admin],
        &[],
        &["platform", "live"],
    )
    .await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let k =
        h.id.create_api_key(&h.sys, "ops-bot", "ci", "platform")
            .await
            .unwrap();
    let bot = h.id.verify_api_key(&k.key, None).await.unwrap();
    assert_eq!(bot.kind, PrincipalKind::Service);
    forbidden(
        h.id.create_api_key(&bot, "ops-bot", "more", "platform")
            .await,
        "own key",
    );
    forbidden(
        h.id.create_api_key(&bot, "max", "x", "platform").await,
        "key for max",
    );
    forbidden(
        h.id.set_password(&bot, "max", "another long password here", None)
            .await,
        "password",
    );
    forbidden(h.id.revoke_sessions(&bot, "max").await, "sessions");
    let new = NewUser {
        name: "bot2".into(),
        kind: PrincipalKind::Service,
        roles: BTreeSet::new(),
        teams: vec![],
        environments: ["live".to_string()].into(),
        password: None,
    };
    forbidden(h.id.create_user(&bot, new).await, "create a principal");
    // Reads are fine: an admin service may look principals up.
    assert!(h.id.get_user(&bot, "max").is_ok());
    let denied = h.audited("authz.decide", Outcome::Denied);
    assert!(
        denied.iter().any(|r| r.contains("mint no credentials")),
        "{denied:?}"
    );
    // A service principal's name is the service name keys policies match.
    let bad = NewUser {
        name: "billing@corp".into(),
        kind: PrincipalKind::Service,
        roles: BTreeSet::new(),
        teams: vec![],
        environments: ["live".to_string()].into(),
        password: None,
    };
    assert!(matches!(
        h.id.create_user(&h.sys, bad).await,
        Err(IdentityError::InvalidRequest(_))
    ));
}

/// Stored refresh tokens, sessions and revocations.
async fn counts(h: &H) -> (usize, usize, usize) {
    let n = |ns: &'static str| async move { h.store.list(ns, "", 1000).await.unwrap().len() };
    (
        n("identity/refresh").await,
        n("identity/sessions").await,
        n("identity/revoked").await,
    )
}

#[tokio::test]
async fn pruning_deletes_only_what_can_never_be_accepted_again() {
    const DAY: u64 = 86_400;
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    // Session 1: refreshed once (a spent and a live refresh token), then logged out.
    let t1 = h.login("max").await.unwrap();
    let t2 = h.id.refresh(&t1.refresh_token, None).await.unwrap();
    let p2 = h.id.verify_access(&t2.access_token).unwrap();
    h.id.logout(&p2).await.unwrap();
    // Session 2: stays in use.
    let t3 = h.login("max").await.unwrap();
    assert_eq!(counts(&h).await, (3, 2, 1));
    assert_eq!(h.id.prune().await.unwrap(), PruneReport::default());

    // The revocation stays while session 1's access token could be valid...
    h.advance(3599);
    assert_eq!(h.id.prune().await.unwrap().revocations, 0);
    assert!(h.id.verify_access(&t2.access_token).is_err());
    // ... and goes once it cannot: by then the token has expired anyway.
    h.advance(61 + 1);
    let r = h.id.prune().await.unwrap();
    assert_eq!((r.revocations, r.refresh_tokens, r.sessions), (1, 0, 0));
    assert_eq!(counts(&h).await, (3, 2, 0));
    assert!(h.id.verify_access(&t2.access_token).is_err());

    // Day 13: session 2 refreshes; its new refresh token outlives the others.
    h.clock.set_unix_secs(T0 + 13 * DAY);
    let t4 = h.id.refresh(&t3.refresh_token, None).await.unwrap();
    // Day 14: every refresh token issued on day 0 has expired, and so has
    // everything session 1 could still have been refreshed with.
    h.clock.set_unix_secs(T0 + 14 * DAY);
    let r = h.id.prune().await.unwrap();
    assert_eq!(
        (r.refresh_tokens, r.sessions, r.revocations),
        (3, 1, 0),
        "{r:?}"
    );
    assert_eq!(counts(&h).await, (1, 1, 0));
    // A pruned spent token is simply unknown; the live one still works.
    assert!(matches!(
        h.id.refresh(&t1.refresh_token, None).await,
        Err(IdentityError::InvalidRefreshToken)
    ));
    let t5 = h.id.refresh(&t4.refresh_token, None).await.unwrap();
    assert!(h.id.verify_access(&t5.access_token).is_ok());

    // Day 30: session 2 reaches its absolute end; all of it goes.
    h.clock.set_unix_secs(T0 + 30 * DAY);
    let r = h.id.prune().await.unwrap();
    assert_eq!((r.refresh_tokens, r.sessions), (2, 1), "{r:?}");
    assert_eq!(counts(&h).await, (0, 0, 0));
    assert!(h
        .audited("identity.prune", Outcome::Allowed)
        .iter()
        .any(|r| r.contains("2 refresh tokens, 1 sessions")));
}

/// Two nodes over one store (as over a shared PostgreSQL database): what one
/// changes, the other applies at its next reload, revocations included, and
/// a reload that overlaps a change of its own node does not undo it.
#[tokio::test]
async fn a_second_node_applies_changes_at_its_next_reload() {
    let h = harness().await;
    let other = h.open_again(cfg()).await;
    let (svc, k) = h.service_with_key("billing-svc").await;
    // Unknown on the other node until it reloads.
    assert!(other.verify_api_key(&k.key, None).await.is_err());
    assert!(other.reload().await.unwrap());
    assert_eq!(other.verify_api_key(&k.key, None).await.unwrap().id, svc.id);
    // Revoked on the first node: refused on the other after its reload.
    h.id.revoke_api_key(&h.sys, &k.info.id).await.unwrap();
    assert!(other.reload().await.unwrap());
    assert!(matches!(
        other.verify_api_key(&k.key, None).await,
        Err(IdentityError::InvalidApiKey)
    ));
    // A logged-out session, likewise.
    let u = h.user("max", &[Role::TeamMember], &["live"]).await;
    let t = h.login(&u.name).await.unwrap();
    h.id.logout(&h.id.verify_access(&t.access_token).unwrap())
        .await
        .unwrap();
    assert!(h.id.verify_access(&t.access_token).is_err());
    // Until its reload the other node has not heard of it.
    assert!(other.verify_access(&t.access_token).is_ok());
    assert!(other.reload().await.unwrap());
    assert!(other.verify_access(&t.access_token).is_err());
}

/// The periodic reload reads one record, the identity generation, and
/// re-reads everything only when a change moved it; a change written
/// without it (by hand, or by an older node during an upgrade) still
/// arrives at the minute's full read.
#[tokio::test]
async fn reload_if_changed_reads_everything_only_after_a_change_or_a_minute() {
    let h = harness().await;
    let other = h.open_again(cfg()).await;
    // Nothing changed since it opened.
    assert!(!other.reload_if_changed().await.unwrap());

    let (svc, k) = h.service_with_key("billing-svc").await;
    assert!(other.verify_api_key(&k.key, None).await.is_err());
    assert!(other.reload_if_changed().await.unwrap());
    assert_eq!(other.verify_api_key(&k.key, None).await.unwrap().id, svc.id);
    assert!(!other.reload_if_changed().await.unwrap());

    // A revocation moves it too.
    h.id.revoke_api_key(&h.sys, &k.info.id).await.unwrap();
    assert!(other.reload_if_changed().await.unwrap());
    assert!(matches!(
        other.verify_api_key(&k.key, None).await,
        Err(IdentityError::InvalidApiKey)
    ));

    // A key deleted behind the plane's back: unseen until the full read.
    let (_, k2) = h.service_with_key("ledger-svc").await;
    assert!(other.reload_if_changed().await.unwrap());
    assert!(other.verify_api_key(&k2.key, None).await.is_ok());
    assert!(h
        .store
        .delete("identity/apikeys", &k2.info.id, rampart_store::Expect::Any)
        .await
        .unwrap());
    assert!(!other.reload_if_changed().await.unwrap());
    h.clock.set_unix_secs(h.clock.unix_secs() + 61);
    assert!(other.reload_if_changed().await.unwrap());
    assert!(other.verify_api_key(&k2.key, None).await.is_err());
}

/// Two nodes over one store: failed logins through one count on the other,
/// so spreading attempts over nodes buys nothing; a success on either
/// clears the account on both; the store holds no account names; idle
/// entries are pruned.
#[tokio::test]
async fn login_failures_are_counted_across_nodes_sharing_a_store() {
    let h = harness().await;
    let other = h.open_again(cfg()).await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let bad = LoginRequest {
        username: "max".into(),
        password: "wrong password!".into(),
        totp: None,
    };
    // Six failures alternating between the nodes: five free, the sixth
    // imposes 1 s, which the other node enforces.
    for attempt in 0..6 {
        let node = if attempt % 2 == 0 { &h.id } else { &other };
        assert!(matches!(
            node.login(&bad, Some("198.51.100.7")).await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    for node in [&h.id, &other] {
        match node.login(&bad, Some("203.0.113.9")).await {
            Err(IdentityError::Throttled { retry_after }) => assert_eq!(retry_after.as_secs(), 1),
            r => panic!("{r:?}"),
        }
    }
    // The next failure, on the other node, doubles it for both.
    h.advance(1);
    assert!(matches!(
        other.login(&bad, None).await,
        Err(IdentityError::InvalidCredentials)
    ));
    match h.id.login(&bad, None).await {
        Err(IdentityError::Throttled { retry_after }) => assert_eq!(retry_after.as_secs(), 2),
        r => panic!("{r:?}"),
    }
    // A success through the first node clears the account on the other.
    h.advance(2);
    assert!(h.login("max").await.is_ok());
    assert!(matches!(
        other.login(&bad, None).await,
        Err(IdentityError::InvalidCredentials)
    ));

    // The shared entries name neither the account nor the address.
    let entries = h.store.list("identity/throttle", "", 100).await.unwrap();
    assert!(!entries.is_empty());
    for (k, e) in &entries {
        let text = format!("{k} {}", String::from_utf8_lossy(&e.value));
        assert!(
            !text.contains("max") && !text.contains("198.51.100.7"),
            "{text}"
        );
    }
    // An hour and more later nothing is left to wait for: pruned.
    h.advance(3601);
    let r = h.id.prune().await.unwrap();
    assert_eq!(r.throttle_entries, entries.len(), "{r:?}");
    assert!(h
        .store
        .list("identity/throttle", "", 100)
        .await
        .unwrap()
        .is_empty());
}

/// While the store cannot take the shared counts, the node's own counts
/// still throttle: throttling never turns off.
#[tokio::test]
async fn login_throttling_falls_back_to_the_node_while_the_store_fails() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    // The throttle's shared counts cannot be reached.
    let flaky = rampart_store::testing::HeldStore::new(h.store.clone());
    flaky.fail_namespace("identity/throttle");
    let node = Identity::open(
        flaky.clone(),
        h.keyring.clone(),
        h.audit.clone(),
        h.clock.clone(),
        cfg(),
    )
    .await
    .unwrap();
    let bad = LoginRequest {
        username: "max".into(),
        password: "wrong password!".into(),
        totp: None,
    };
    for _ in 0..6 {
        assert!(matches!(
            node.login(&bad, None).await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    assert!(matches!(
        node.login(&bad, None).await,
        Err(IdentityError::Throttled { .. })
    ));
    // Nothing reached the store meanwhile.
    assert!(h
        .store
        .list("identity/throttle", "", 10)
        .await
        .unwrap()
        .is_empty());
}

// --- The login throttle's shared counts in Redis -------------------------
//
// Against a real Redis server (`RAMPART_TEST_REDIS_URL`, which
// `scripts/test` provides through `scripts/with-redis`); skipped without.

fn redis_url() -> Option<String> {
    match std::env::var("RAMPART_TEST_REDIS_URL") {
        Ok(u) => Some(u),
        Err(_) => {
            println!("SKIP: RAMPART_TEST_REDIS_URL is not set; run under scripts/with-redis");
            None
        }
    }
}

/// A key prefix no other test run uses.
fn redis_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("rampart-test:{:016x}:", h.finish())
}

async fn redis_conn(url: &str) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(url).unwrap();
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1);
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .unwrap()
}

/// A node of the harness's deployment whose throttle counts in Redis.
async fn redis_node(h: &H, conn: redis::aio::ConnectionManager, prefix: &str) -> Arc<Identity> {
    let shared = Arc::new(RedisThrottle::new(conn, "test".into(), prefix));
    Arc::new(h.open_again(cfg()).await.with_shared_throttle(shared))
}

fn wrong_password(name: &str) -> LoginRequest {
    LoginRequest {
        username: name.into(),
        password: "wrong password!".into(),
        totp: None,
    }
}

fn throttled_for(r: Result<Tokens, IdentityError>) -> u64 {
    match r {
        Err(IdentityError::Throttled { retry_after }) => retry_after.as_secs(),
        r => panic!("expected a throttled login: {r:?}"),
    }
}

/// Two nodes sharing one Redis: failures through A make B refuse with the
/// same delay, the delay doubles whichever node counts the next failure, a
/// success clears the account on both, Redis holds no account names or
/// addresses and its keys expire; once `forget_after` has passed, failures
/// count from zero again.
#[tokio::test]
async fn login_failures_are_counted_across_nodes_sharing_redis() {
    let Some(url) = redis_url() else { return };
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let prefix = redis_prefix();
    let mut conn = redis_conn(&url).await;
    let a = redis_node(&h, conn.clone(), &prefix).await;
    let b = redis_node(&h, conn.clone(), &prefix).await;
    let bad = wrong_password("max");

    // Six failures, all through A: five free, the sixth imposes 1 s, which
    // B (which has counted nothing itself) enforces.
    for _ in 0..6 {
        assert!(matches!(
            a.login(&bad, Some("198.51.100.7")).await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    assert_eq!(throttled_for(b.login(&bad, Some("203.0.113.9")).await), 1);
    // Account names are keyed by the name submitted, whatever its case.
    let upper = wrong_password("MAX");
    assert_eq!(throttled_for(b.login(&upper, None).await), 1);
    // The next failure, on B, doubles it for A.
    h.advance(1);
    assert!(matches!(
        b.login(&bad, None).await,
        Err(IdentityError::InvalidCredentials)
    ));
    assert_eq!(throttled_for(a.login(&bad, None).await), 2);
    // An account that does not exist is throttled the same way.
    for _ in 0..6 {
        assert!(matches!(
            a.login(&wrong_password("nobody"), None).await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    assert_eq!(
        throttled_for(b.login(&wrong_password("nobody"), None).await),
        1
    );

    // Redis holds keyed hashes under the prefix, never the names or the
    // address, and every key expires.
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 3, "max, nobody, 198.51.100.7: {keys:?}");
    for k in &keys {
        assert!(k.starts_with(&format!("{prefix}login-throttle:")), "{k}");
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        let text = format!("{k} {fields:?}");
        for clear in ["max", "nobody", "198.51.100.7"] {
            assert!(!text.contains(clear), "{text}");
        }
        let ttl: i64 = redis::cmd("TTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=3601).contains(&ttl), "{k}: TTL {ttl}");
    }

    // A success through A clears the account on B: its next failure is
    // free again.
    h.advance(2);
    let good = LoginRequest {
        username: "max".into(),
        password: PASSWORD.into(),
        totp: None,
    };
    assert!(a.login(&good, None).await.is_ok());
    assert!(matches!(
        b.login(&bad, None).await,
        Err(IdentityError::InvalidCredentials)
    ));

    // "nobody" has seven failures, the last doubling its delay; an hour
    // later they are forgotten, so five more are free again.
    assert!(matches!(
        b.login(&wrong_password("nobody"), None).await,
        Err(IdentityError::InvalidCredentials)
    ));
    assert_eq!(
        throttled_for(a.login(&wrong_password("nobody"), None).await),
        2
    );
    h.advance(3601);
    for node in [&a, &b, &a, &b, &a] {
        assert!(matches!(
            node.login(&wrong_password("nobody"), None).await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    assert_eq!(a.throttle_fallbacks() + b.throttle_fallbacks(), 0);
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A TCP relay to Redis that can stall (forward nothing more, as a Redis
/// or network that stopped answering would) or be cut (as a refused
/// connection would).
struct Relay {
    addr: std::net::SocketAddr,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Copies `from` to `to` until either closes; bytes read while stalled are
/// dropped, so no answer ever comes.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.load(std::sync::atomic::Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    async fn to(upstream: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stalled.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (down_r, down_w) = down.into_split();
                let (up_r, up_w) = up.into_split();
                conns.spawn(pump(down_r, up_w, flag.clone()));
                conns.spawn(pump(up_r, down_w, flag.clone()));
            }
        });
        Relay {
            addr,
            stalled,
            task,
        }
    }

    fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes the listener and every relayed connection.
    async fn cut(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A relay to the test Redis, and `url` rewritten to go through it.
async fn relayed(url: &str) -> (Relay, String) {
    let info = redis::IntoConnectionInfo::into_connection_info(url).unwrap();
    let upstream = match info.addr() {
        redis::ConnectionAddr::Tcp(host, port) => tokio::net::lookup_host((host.as_str(), *port))
            .await
            .unwrap()
            .next()
            .unwrap(),
        other => panic!("RAMPART_TEST_REDIS_URL is not plain TCP: {other}"),
    };
    let relay = Relay::to(upstream).await;
    let through = url.replacen(&upstream.to_string(), &relay.addr.to_string(), 1);
    assert_ne!(through, url, "the URL names {upstream} literally");
    (relay, through)
}

/// A Redis that stops answering holds each call for about a second, then
/// this node's own counts decide.
#[tokio::test]
async fn login_throttling_decides_locally_when_redis_stops_answering() {
    let Some(url) = redis_url() else { return };
    let h = harness().await;
    let (relay, through) = relayed(&url).await;
    let shared = Arc::new(RedisThrottle::new(
        redis_conn(&through).await,
        "test".into(),
        &redis_prefix(),
    ));
    let node = h
        .open_again(cfg())
        .await
        .with_shared_throttle(shared.clone());
    let bad = wrong_password("max");
    for _ in 0..5 {
        assert!(node.login(&bad, None).await.is_err());
    }
    relay.stall();
    // The sixth failure: its check and its count each wait out the call
    // timeout; this node's count imposes 1 s, and the next attempt is
    // refused on it.
    let started = std::time::Instant::now();
    assert!(matches!(
        node.login(&bad, None).await,
        Err(IdentityError::InvalidCredentials)
    ));
    assert_eq!(throttled_for(node.login(&bad, None).await), 1);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    assert_eq!(node.throttle_fallbacks(), 3);
    assert_eq!(shared.call_counts(), (10, 3));
    relay.cut().await;
}

/// While Redis cannot be reached, each node's own counts throttle (so
/// throttling never turns off), the calls that failed are counted, and
/// the failures are not in Redis.
#[tokio::test]
async fn login_throttling_falls_back_to_the_node_while_redis_is_down() {
    let Some(url) = redis_url() else { return };
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let (relay, relayed) = relayed(&url).await;
    let prefix = redis_prefix();
    let shared = Arc::new(RedisThrottle::new(
        redis_conn(&relayed).await,
        "test".into(),
        &prefix,
    ));
    let node = h
        .open_again(cfg())
        .await
        .with_shared_throttle(shared.clone());
    let bad = wrong_password("max");
    // Two failures counted in Redis, then Redis goes away.
    for _ in 0..2 {
        assert!(node.login(&bad, None).await.is_err());
    }
    let (ok_before, failed_before) = shared.call_counts();
    assert!(ok_before >= 4, "{ok_before}");
    assert_eq!(failed_before, 0);
    relay.cut().await;
    // Four more failures: this node's own count reaches six, the sixth
    // imposing 1 s, so the next attempt is refused.
    for _ in 0..4 {
        assert!(matches!(
            node.login(&bad, None).await,
            Err(IdentityError::InvalidCredentials)
        ));
    }
    assert_eq!(throttled_for(node.login(&bad, None).await), 1);
    assert!(
        node.throttle_fallbacks() >= 9,
        "{}",
        node.throttle_fallbacks()
    );
    let (_, failed) = shared.call_counts();
    assert!(failed >= 9, "{failed}");
    // Redis saw only the two failures made before it went away.
    let mut conn = redis_conn(&url).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let f: u32 = redis::cmd("HGET")
        .arg(&keys[0])
        .arg("f")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(f, 2);
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The Redis script counts exactly as the in-memory throttle does: the
/// same delays over a schedule of failures with short and long gaps (some
/// past `forget_after`), for the free failures of an account and of a
/// source.
#[tokio::test]
async fn redis_script_counts_as_the_in_memory_throttle_does() {
    let Some(url) = redis_url() else { return };
    let prefix = redis_prefix();
    let mut conn = redis_conn(&url).await;
    let redis_throttle = RedisThrottle::new(conn.clone(), "test".into(), &prefix);
    let cfg = ThrottleConfig {
        forget_after_secs: 50,
        max_delay_secs: 40,
        ..ThrottleConfig::default()
    };
    let memory = throttle::Throttle::new(cfg);
    let mut now = T0;
    // A fixed pseudo-random walk: mostly small steps, now and then a gap.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        now += match x % 10 {
            0 => 51 + x % 30,
            1..=3 => 0,
            _ => x % 9,
        };
        let free = cfg.free_failures_per_source;
        let expected = memory
            .failure("acct", Some("addr"), now)
            .map_or(0, |d| d.as_secs());
        let got = redis_throttle
            .fail(
                &[
                    ("acct".into(), cfg.free_failures_per_account),
                    ("addr".into(), free),
                ],
                &cfg,
                now,
            )
            .await
            .unwrap();
        assert_eq!(got, expected, "failure {i} at {now}");
        let expected_wait = memory
            .check("acct", Some("addr"), now)
            .map_or(0, |d| d.as_secs());
        let wait = redis_throttle
            .wait(&["acct".into(), "addr".into()], now)
            .await
            .unwrap();
        assert_eq!(wait, expected_wait, "wait after failure {i} at {now}");
    }
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}login-throttle:acct"))
        .arg(format!("{prefix}login-throttle:addr"))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// A session an API key was exchanged for ends with the key: revoking a
/// leaked key must not leave its holder a refreshable session for the
/// session's whole lifetime.
#[tokio::test]
async fn revoking_an_api_key_ends_the_sessions_exchanged_for_it() {
    let h = harness().await;
    let (_svc, k) = h.service_with_key("billing-svc").await;
    let (_, other) = h.service_with_key("ledger-svc").await;
    let t = h.id.exchange_api_key(&k.key, None).await.unwrap();
    let kept = h.id.exchange_api_key(&other.key, None).await.unwrap();
    h.advance(10);
    let t2 = h.id.refresh(&t.refresh_token, None).await.unwrap();
    assert!(h.id.verify_access(&t2.access_token).is_ok());

    h.id.revoke_api_key(&h.sys, &k.info.id).await.unwrap();
    assert!(matches!(
        h.id.verify_access(&t2.access_token),
        Err(IdentityError::InvalidToken)
    ));
    assert!(matches!(
        h.id.refresh(&t2.refresh_token, None).await,
        Err(IdentityError::InvalidRefreshToken)
    ));
    // Another key's session stands.
    assert!(h.id.verify_access(&kept.access_token).is_ok());
    let kept = h.id.refresh(&kept.refresh_token, None).await.unwrap();

    // A revocation that did not end the sessions (written by an older
    // node, or by hand) still ends them at their next refresh.
    let e = h
        .store
        .get("identity/apikeys", &other.info.id)
        .await
        .unwrap()
        .unwrap();
    let mut rec: serde_json::Value = serde_json::from_slice(&e.value).unwrap();
    rec["revoked_at"] = serde_json::json!(T0 + 10);
    h.store
        .put(
            "identity/apikeys",
            &other.info.id,
            &serde_json::to_vec(&rec).unwrap(),
            rampart_store::Expect::Any,
        )
        .await
        .unwrap();
    assert!(matches!(
        h.id.refresh(&kept.refresh_token, None).await,
        Err(IdentityError::InvalidRefreshToken)
    ));
}

/// Team scoping judges a member by the roles it holds now, elevations
/// included: a team admin may not reset the password (or TOTP) of a member
/// elevated to admin and log in as them to act as an admin.
#[tokio::test]
async fn a_team_admin_cannot_take_over_a_member_elevated_to_admin() {
    let h = harness().await;
    let envs = ["platform", "live"];
    h.id.create_team(&h.sys, "alpha").await.unwrap();
    h.user("ada", &[Role::Admin], &envs).await;
    let u = PrincipalKind::User;
    h.member("tina", u, &[Role::TeamAdmin], &["alpha"], &envs)
        .await;
    h.member("max", u, &[Role::TeamMember], &["alpha"], &envs)
        .await;
    let ada = h.login_as("ada").await;
    let tina = h.login_as("tina").await;
    let max = h.login_as("max").await;
    // Before any elevation the team admin manages max.
    h.id.set_password(&tina, "max", PASSWORD, None)
        .await
        .unwrap();

    let e =
        h.id.request_elevation(&max, Role::Admin, 3600, "INC-7")
            .await
            .unwrap();
    h.id.decide_elevation(&ada, &e.id, true).await.unwrap();
    forbidden(
        h.id.set_password(&tina, "max", "tina knows this one now", None)
            .await,
        "password of an elevated admin",
    );
    forbidden(
        h.id.enrol_totp(&tina, "max", None).await,
        "TOTP of an elevated admin",
    );
    // Had it worked, this login would be tina acting as an admin.
    let as_max = h.login_as("max").await;
    assert!(as_max.roles.contains(&Role::Admin));
    assert!(
        h.id.authorizer()
            .decide(&as_max, "identity:users.update", "platform")
            .allowed
    );

    // Once the elevation ends, max is a team member again.
    h.advance(3600);
    h.id.set_password(&tina, "max", PASSWORD, None)
        .await
        .unwrap();
}

/// A role that needs TOTP at login needs it through elevation too: a
/// session that passed no second factor (a fresh password login, or the
/// refresh of one begun before the approval) does not carry it.
#[tokio::test]
async fn an_elevation_to_a_totp_role_needs_a_totp_session() {
    let h = harness_with(IdentityConfig {
        totp_required_roles: vec![Role::Admin],
        ..cfg()
    })
    .await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let before = h.login("max").await.unwrap();
    let max = h.id.verify_access(&before.access_token).unwrap();
    let e =
        h.id.request_elevation(&max, Role::Admin, 3600, "INC-9")
            .await
            .unwrap();
    h.id.decide_elevation(&h.sys, &e.id, true).await.unwrap();

    let fresh = h.login_as("max").await;
    assert_eq!(fresh.auth_method, "password");
    assert!(!fresh.roles.contains(&Role::Admin), "password-only login");
    let refreshed = h.id.refresh(&before.refresh_token, None).await.unwrap();
    let p = h.id.verify_access(&refreshed.access_token).unwrap();
    assert!(
        !p.roles.contains(&Role::Admin),
        "refresh of a password session"
    );

    // With TOTP the elevation counts.
    let en = h.id.enrol_totp(&fresh, "max", None).await.unwrap();
    let totp = Totp::new(decode_b32(&en.secret_base32));
    h.id.confirm_totp(&fresh, "max", &totp.code_at(h.clock.unix_secs()))
        .await
        .unwrap();
    h.advance(30);
    let t =
        h.id.login(
            &LoginRequest {
                username: "max".into(),
                password: PASSWORD.into(),
                totp: Some(totp.code_at(h.clock.unix_secs())),
            },
            None,
        )
        .await
        .unwrap();
    let p = h.id.verify_access(&t.access_token).unwrap();
    assert_eq!(p.auth_method, "password+totp");
    assert!(p.roles.contains(&Role::Admin));
}

/// A node that has not yet heard of a key's revocation may accept the key
/// until its next reload, but its `last_used` bookkeeping must not write
/// the key back unrevoked: the revocation must survive on every node.
#[tokio::test]
async fn last_used_bookkeeping_never_undoes_a_revocation_made_elsewhere() {
    let h = harness().await;
    let other = h.open_again(cfg()).await;
    let (_svc, k) = h.service_with_key("billing-svc").await;
    assert!(other.reload().await.unwrap());
    assert!(h.id.verify_api_key(&k.key, None).await.is_ok());
    h.advance(61);
    other.revoke_api_key(&h.sys, &k.info.id).await.unwrap();
    // Not yet reloaded: this node still accepts it, and records the use.
    assert!(h.id.verify_api_key(&k.key, None).await.is_ok());
    for node in [&*h.id, &other] {
        assert!(node.reload().await.unwrap());
        assert!(matches!(
            node.verify_api_key(&k.key, None).await,
            Err(IdentityError::InvalidApiKey)
        ));
    }
    let listed = other.list_api_keys(&h.sys, None).unwrap();
    assert!(listed[0].revoked_at.is_some());
    assert_eq!(listed[0].last_used, Some(T0 + 61));
}

/// A rotation reaches every node at its next reload (they sign with the
/// new key and accept its tokens), and a retired key stops verifying, on
/// every node and for tokens already cached, once its day of publication
/// is over, as it leaves the JWKS.
#[tokio::test]
async fn retired_signing_keys_stop_verifying_on_every_node() {
    let long = IdentityConfig {
        access_ttl_secs: 3 * 86_400,
        ..cfg()
    };
    let h = harness_with(long.clone()).await;
    let other = h.open_again(long).await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    assert!(other.reload().await.unwrap());
    let old = h.login("max").await.unwrap();
    assert!(other.verify_access(&old.access_token).is_ok()); // now cached
    let kid2 = h.id.rotate_signing_key(&h.sys).await.unwrap();

    other.reload().await.unwrap();
    assert_eq!(other.current_kid(), kid2);
    let new = h.login("max").await.unwrap();
    assert!(other.verify_access(&new.access_token).is_ok());
    assert_eq!(other.jwks()["keys"].as_array().unwrap().len(), 2);

    h.advance(86_400);
    // The housekeeping alone drops it (a single node never reloads), and
    // so does a reload.
    h.id.maintain().await.unwrap();
    other.reload().await.unwrap();
    for node in [&*h.id, &other] {
        assert_eq!(node.jwks()["keys"].as_array().unwrap().len(), 1);
        assert!(matches!(
            node.verify_access(&old.access_token),
            Err(IdentityError::InvalidToken)
        ));
        assert!(node.verify_access(&new.access_token).is_ok());
    }
}

/// A role granted while a password-only session runs does not reach that
/// session's next tokens when the role needs TOTP: a fresh login would be
/// refused for want of it, and a refresh must not get round that.
#[tokio::test]
async fn a_totp_role_granted_mid_session_needs_a_totp_session() {
    let h = harness_with(IdentityConfig {
        totp_required_roles: vec![Role::Admin],
        ..cfg()
    })
    .await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    let t = h.login("max").await.unwrap();
    h.id.set_roles(&h.sys, "max", [Role::TeamMember, Role::Admin].into())
        .await
        .unwrap();
    assert!(matches!(
        h.login("max").await,
        Err(IdentityError::SecondFactorEnrolmentRequired)
    ));
    let r = h.id.refresh(&t.refresh_token, None).await.unwrap();
    let p = h.id.verify_access(&r.access_token).unwrap();
    assert_eq!(p.auth_method, "password");
    assert!(!p.roles.contains(&Role::Admin));
    assert!(p.roles.contains(&Role::TeamMember));
}

/// A session that slipped past a disable (begun on a node that had not yet
/// heard of it, or by a login whose password check overlapped it) is not
/// on the revocation list; its access tokens must still be refused once
/// the node knows the principal is disabled.
#[tokio::test]
async fn a_token_issued_across_a_disable_is_refused() {
    let h = harness().await;
    let other = h.open_again(cfg()).await;
    h.user("max", &[Role::TeamMember], &["platform", "live"])
        .await;
    assert!(other.reload().await.unwrap());
    h.id.set_disabled(&h.sys, "max", true).await.unwrap();
    // The other node has not reloaded yet: the login goes through there.
    let t = other
        .login(
            &LoginRequest {
                username: "max".into(),
                password: PASSWORD.into(),
                totp: None,
            },
            None,
        )
        .await
        .unwrap();
    assert!(other.reload().await.unwrap());
    for node in [&*h.id, &other] {
        assert!(matches!(
            node.verify_access(&t.access_token),
            Err(IdentityError::InvalidToken)
        ));
    }
    assert!(h.id.refresh(&t.refresh_token, None).await.is_err());
}

/// Likewise for a role taken away: a token issued across the removal (its
/// session not among those revoked) carries the role no longer once the
/// node knows it is gone.
#[tokio::test]
async fn a_role_removed_across_a_login_is_not_honoured() {
    let h = harness().await;
    let other = h.open_again(cfg()).await;
    h.user("tina", &[Role::TeamAdmin], &["platform", "live"])
        .await;
    assert!(other.reload().await.unwrap());
    h.id.set_roles(&h.sys, "tina", [Role::Individual].into())
        .await
        .unwrap();
    let t = other
        .login(
            &LoginRequest {
                username: "tina".into(),
                password: PASSWORD.into(),
                totp: None,
            },
            None,
        )
        .await
        .unwrap();
    assert!(other.reload().await.unwrap());
    for node in [&*h.id, &other] {
        let p = node.verify_access(&t.access_token).unwrap();
        assert!(!p.roles.contains(&Role::TeamAdmin));
        assert!(!node.authorizer().decide(&p, "keys:rotate", "live").allowed);
    }
}

/// A stolen access token alone does not take an account over: changing
/// one's own password needs the current one (an admin's reset does not).
#[tokio::test]
async fn changing_ones_own_password_needs_the_current_one() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform"]).await;
    let max = h.login_as("max").await;
    let new = "a brand new long password";
    assert!(matches!(
        h.id.set_password(&max, "max", new, None).await,
        Err(IdentityError::InvalidField {
            field: "current_password",
            ..
        })
    ));
    assert!(matches!(
        h.id.set_password(&max, "max", new, Some("not the password at all"))
            .await,
        Err(IdentityError::InvalidCredentials)
    ));
    // Neither attempt changed it.
    assert!(h.login("max").await.is_ok());
    h.id.set_password(&max, "max", new, Some(PASSWORD))
        .await
        .unwrap();
    let t =
        h.id.login(
            &LoginRequest {
                username: "max".into(),
                password: new.into(),
                totp: None,
            },
            None,
        )
        .await;
    assert!(t.is_ok());
    assert!(h.login("max").await.is_err(), "the old password is gone");
}

/// Restarting one's own confirmed TOTP enrolment needs a current code: a
/// new enrolment replaces the confirmed one.
#[tokio::test]
async fn restarting_ones_own_totp_needs_a_current_code() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform"]).await;
    let max = h.login_as("max").await;
    let en = h.id.enrol_totp(&max, "max", None).await.unwrap();
    let totp = Totp::new(decode_b32(&en.secret_base32));
    h.id.confirm_totp(&max, "max", &totp.code_at(h.clock.unix_secs()))
        .await
        .unwrap();
    h.advance(30);
    assert!(matches!(
        h.id.enrol_totp(&max, "max", None).await,
        Err(IdentityError::SecondFactorRequired)
    ));
    assert!(matches!(
        h.id.enrol_totp(&max, "max", Some("000000")).await,
        Err(IdentityError::InvalidCredentials)
    ));
    // Refused, so the confirmed enrolment still guards the account.
    assert!(matches!(
        h.login("max").await,
        Err(IdentityError::SecondFactorRequired)
    ));
    let code = totp.code_at(h.clock.unix_secs());
    h.id.enrol_totp(&max, "max", Some(&code)).await.unwrap();
}

/// An elevation to admin lasts its hour: the elevated admin may not grant
/// itself (or anyone) a standing role beyond team_member, which would
/// outlast it and skip the approval.
#[tokio::test]
async fn an_admin_through_an_elevation_grants_no_standing_role() {
    let h = harness().await;
    let envs = ["platform", "live"];
    h.user("ada", &[Role::Admin], &envs).await;
    h.user("max", &[Role::TeamMember], &envs).await;
    h.user("zed", &[Role::TeamMember], &envs).await;
    let ada = h.login_as("ada").await;
    let max = h.login_as("max").await;
    let e =
        h.id.request_elevation(&max, Role::Admin, 3600, "INC-11")
            .await
            .unwrap();
    h.id.decide_elevation(&ada, &e.id, true).await.unwrap();
    let as_max = h.login_as("max").await;
    assert!(as_max.roles.contains(&Role::Admin));
    let set = |roles: &[Role]| roles.iter().cloned().collect::<BTreeSet<Role>>();
    forbidden(
        h.id.set_roles(&as_max, "max", set(&[Role::Admin])).await,
        "itself to standing admin",
    );
    forbidden(
        h.id.set_roles(&as_max, "zed", set(&[Role::Admin])).await,
        "another to admin",
    );
    forbidden(
        h.id.set_roles(&as_max, "zed", set(&[Role::TeamAdmin]))
            .await,
        "another to team admin",
    );
    // What a team admin could do, it may.
    h.id.set_roles(&as_max, "zed", set(&[Role::TeamMember]))
        .await
        .unwrap();
    // A standing admin grants as before.
    h.id.set_roles(&ada, "zed", set(&[Role::TeamAdmin]))
        .await
        .unwrap();
}

/// Two nodes: a denial on one is not overwritten by an approval on the
/// other before it has reloaded.
#[tokio::test]
async fn an_elevation_is_decided_once_across_nodes() {
    let h = harness().await;
    let envs = ["platform", "live"];
    h.user("ada", &[Role::Admin], &envs).await;
    h.user("bea", &[Role::Admin], &envs).await;
    h.user("max", &[Role::TeamMember], &envs).await;
    let ada = h.login_as("ada").await;
    let bea = h.login_as("bea").await;
    let max = h.login_as("max").await;
    let other = h.open_again(cfg()).await;
    let e =
        h.id.request_elevation(&max, Role::Admin, 3600, "INC-12")
            .await
            .unwrap();
    assert!(other.reload().await.unwrap());
    h.id.decide_elevation(&ada, &e.id, false).await.unwrap();
    // The other node still holds it as pending.
    assert!(matches!(
        other.decide_elevation(&bea, &e.id, true).await,
        Err(IdentityError::InvalidRequest(_))
    ));
    assert!(other.reload().await.unwrap());
    let as_max = other.verify_access(&h.login(&max.name).await.unwrap().access_token);
    assert!(!as_max.unwrap().roles.contains(&Role::Admin));
}

/// Wrong passwords sent in parallel do not all pass the throttle's check
/// before any failure is counted: beyond the free failures, at most one
/// attempt per concurrent verification slips through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_wrong_passwords_do_not_outrun_the_throttle() {
    let h = harness().await;
    h.user("max", &[Role::TeamMember], &["platform"]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let id = h.id.clone();
        tasks.spawn(async move {
            id.login(
                &LoginRequest {
                    username: "max".into(),
                    password: format!("guess number {i} here"),
                    totp: None,
                },
                None,
            )
            .await
        });
    }
    let (mut refused, mut throttled) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Err(IdentityError::InvalidCredentials) => refused += 1,
            Err(IdentityError::Throttled { .. }) => throttled += 1,
            other => panic!("{other:?}"),
        }
    }
    let slots = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        refused <= 5 + slots,
        "{refused} guesses checked, {throttled} throttled"
    );
    assert_eq!(refused + throttled, 24);
}

#[tokio::test]
async fn pruning_drops_long_revoked_api_keys_and_long_ended_elevations_on_every_node() {
    const DAY: u64 = 86_400;
    let h = harness().await;
    let envs = ["platform", "live"];
    h.user("max", &[Role::TeamMember], &envs).await;
    h.user("ada", &[Role::Admin], &envs).await;
    let max = h.login_as("max").await;
    let ada = h.login_as("ada").await;
    let (svc, k) = h.service_with_key("billing-svc").await;
    let exchanged = h.id.exchange_api_key(&k.key, None).await.unwrap();
    h.id.revoke_api_key(&h.sys, &k.info.id).await.unwrap();
    let denied =
        h.id.request_elevation(&max, Role::TeamAdmin, 600, "INC-1")
            .await
            .unwrap();
    h.id.decide_elevation(&ada, &denied.id, false)
        .await
        .unwrap();
    // Asked for and never decided: it lapses a day later.
    let lapsed =
        h.id.request_elevation(&max, Role::TeamAdmin, 600, "INC-2")
            .await
            .unwrap();
    h.advance(DAY);
    h.id.maintain().await.unwrap();
    let other = h.open_again(cfg()).await;
    let listed = |id: &Identity| {
        let keys = id.list_api_keys(&h.sys, Some(&svc.id)).unwrap().len();
        let els = id.list_elevations(&h.sys).unwrap();
        (keys, els.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
    };
    assert_eq!(listed(&other).0, 1);
    assert_eq!(listed(&other).1.len(), 2);

    // Within the retention, nothing goes.
    h.clock
        .set_unix_secs(T0 + rampart_identity::ENDED_RECORD_RETENTION_SECS - 1);
    let r = h.id.prune().await.unwrap();
    assert_eq!((r.api_keys, r.elevations), (0, 0), "{r:?}");
    // Then the key and the denied request go; the lapsed one a day later.
    h.clock
        .set_unix_secs(T0 + rampart_identity::ENDED_RECORD_RETENTION_SECS);
    let r = h.id.prune().await.unwrap();
    assert_eq!((r.api_keys, r.elevations), (1, 1), "{r:?}");
    assert_eq!(listed(&h.id), (0, vec![lapsed.id.clone()]));
    // The other node drops them at its next reload.
    assert!(other.reload().await.unwrap());
    assert_eq!(listed(&other), (0, vec![lapsed.id.clone()]));
    h.clock
        .set_unix_secs(T0 + rampart_identity::ENDED_RECORD_RETENTION_SECS + DAY);
    assert_eq!(h.id.prune().await.unwrap().elevations, 1);
    assert!(listed(&h.id).1.is_empty());
    // A key gone is as refused as a revoked one, and so is the session
    // exchanged for it.
    assert!(h.id.verify_api_key(&k.key, None).await.is_err());
    assert!(h.id.refresh(&exchanged.refresh_token, None).await.is_err());
    assert!(h
        .audited("identity.prune", Outcome::Allowed)
        .iter()
        .any(|r| r.contains("1 revoked API keys, 1 ended elevations")));
}
