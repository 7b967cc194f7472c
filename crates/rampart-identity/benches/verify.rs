//! Verification throughput on one core: access tokens (signature check on a
//! cache miss, cache hit, both with the revocation check) and API keys.
//! Prints operations per second and the ratio to a baseline measured in the
//! same run: one bare Ed25519 `verify_strict` and one bare HMAC-SHA-256.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use rampart_audit::{Audit, AuditKeys, AuditOptions};
use rampart_core::{ManualClock, SharedClock};
use rampart_crypto::RootKey;
use rampart_identity::*;
use rampart_store::{Keyring, RootKeySource, SqliteStore, Store};

fn rate(name: &str, budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..1000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..1000 {
            f();
        }
        n += 1000;
    }
    let per_sec = n as f64 / start.elapsed().as_secs_f64();
    println!("{name:<48} {per_sec:>12.0} /s");
    per_sec
}

async fn identity(cache: usize) -> (Identity, tempfile::TempDir) {
    let clock: SharedClock = Arc::new(ManualClock::at_unix_secs(1_800_000_000));
    let dir = tempfile::tempdir().unwrap();
    let (audit, _) = Audit::open(
        AuditOptions::new(dir.path().join("audit")),
        AuditKeys::generate().unwrap(),
        clock.clone(),
    )
    .unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory(clock.clone()).unwrap());
    let keyring = Keyring::initialise(
        store.clone(),
        RootKey::generate().unwrap(),
        RootKeySource::Env,
        None,
        0,
    )
    .await
    .unwrap();
    let cfg = IdentityConfig {
        passwords: PasswordParams::insecure_for_tests(),
        totp_required_roles: vec![],
        token_cache_entries: cache,
        ..IdentityConfig::default()
    };
    let id = Identity::open(store, Arc::new(keyring), Arc::new(audit), clock, cfg)
        .await
        .unwrap();
    (id, dir)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let budget = Duration::from_secs(2);
    let sys = Principal::system(&["platform", "live"]);
    let (id, _d1) = rt.block_on(identity(100_000));
    let (id_nocache, _d2) = rt.block_on(identity(0));
    let mut tokens = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for idn in [&id, &id_nocache] {
        let u = rt
            .block_on(idn.create_user(
                &sys,
                NewUser {
                    name: "bench".into(),
                    kind: PrincipalKind::User,
                    roles: [Role::TeamMember].into(),
                    teams: vec![],
                    environments: ["platform".to_string(), "live".to_string()].into(),
                    password: Some("a long enough password".into()),
                },
            ))
            .unwrap();
        let t = rt
            .block_on(idn.login(
                &LoginRequest {
                    username: "bench".into(),
                    password: "a long enough password".into(),
                    totp: None,
                },
                None,
            ))
            .unwrap();
        tokens.push(t.access_token);
        keys.push(
            rt.block_on(idn.create_api_key(&sys, &u.id, "bench", "live"))
                .unwrap()
                .key,
        );
    }
    // Some revoked sessions, so the revocation check looks at a real list.
    for _ in 0..1000 {
        let t = rt
            .block_on(id.login(
                &LoginRequest {
                    username: "bench".into(),
                    password: "a long enough password".into(),
                    totp: None,
                },
                None,
            ))
            .unwrap();
        let p = id.verify_access(&t.access_token).unwrap();
        rt.block_on(id.logout(&p)).unwrap();
    }

    let key = keys[0].clone();
    let sk = SigningKey::from_bytes(&[9; 32]);
    let vk = sk.verifying_key();
    let msg = tokens[0].as_bytes();
    let sig = sk.sign(msg);
    println!("baselines");
    let ed = rate(
        "  ed25519 verify_strict (same message size)",
        budget,
        || assert!(vk.verify_strict(msg, &sig).is_ok()),
    );
    let hm = rate("  hmac-sha256 of the key text", budget, || {
        std::hint::black_box(rampart_crypto::hmac_sha256(&[1; 32], key.as_bytes()));
    });
    println!("rampart-identity");
    let cold = rate(
        "  access token, no cache (sig+claims+revocation)",
        budget,
        || assert!(id_nocache.verify_access(&tokens[1]).is_ok()),
    );
    let warm = rate("  access token, cache hit (+revocation)", budget, || {
        assert!(id.verify_access(&tokens[0]).is_ok())
    });
    let ak = rate("  API key (parse+hmac+ct_eq+principal)", budget, || {
        assert!(id.check_api_key(&key, None).is_ok())
    });
    println!(
        "ratios: cold token / ed25519 = {:.2}, cached token / ed25519 = {:.1}, API key / hmac = {:.2}",
        cold / ed,
        warm / ed,
        ak / hm
    );
}
