//! The keys plane end to end: a real SQLite store, a real root key and a
//! real audit log in a temporary directory, time from a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rampart_audit::{Audit, AuditKeys, AuditOptions, FaultInjector, Outcome, Query};
use rampart_core::{Clock, ManualClock};
use rampart_crypto::RootKey;
use rampart_keys::policy::{Conditions, Effect, Statement};
use rampart_keys::{
    ciphertext, envelope, Auditor, Caller, Context, Envelope, EnvelopeLimits, KeyService, KeySpec,
    KeyState, KeysError, Policies, Principal,
};
use rampart_store::testing::HeldStore;
use rampart_store::{Keyring, RootKeySource, SqliteStore, Store};

const T0: u64 = 1_795_600_000; // late November 2026
const DAY: u64 = 86_400;

struct Kit {
    keys: KeyService,
    audit: Arc<Audit>,
    fault: Arc<FaultInjector>,
    clock: Arc<ManualClock>,
    keyring: Arc<Keyring>,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

fn stmt(id: &str, principals: &[&str], actions: &[&str], resources: &[&str]) -> Statement {
    Statement {
        id: id.into(),
        effect: Effect::Allow,
        principals: principals.iter().map(|s| s.to_string()).collect(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        conditions: Conditions::default(),
    }
}

async fn kit() -> Kit {
    kit_over(|s| s).await
}

/// [`kit`] over the SQLite store as `wrap` wraps it.
async fn kit_over(wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>) -> Kit {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at_unix_secs(T0));
    let store: Arc<dyn Store> = wrap(Arc::new(SqliteStore::in_memory(clock.clone()).unwrap()));
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
    let fault = FaultInjector::new();
    let mut opts = AuditOptions::new(dir.path().join("audit"));
    opts.fault = Some(fault.clone());
    let (audit, _) = Audit::open(opts, AuditKeys::generate().unwrap(), clock.clone()).unwrap();
    let audit = Arc::new(audit);
    let keys = KeyService::new(
        keyring.clone(),
        Policies::new(store.clone(), clock.clone()),
        Auditor::new(audit.clone(), "node-1"),
        clock.clone(),
    );
    // prod: payments may use its own key; ops may manage every key.
    keys.policies()
        .set(
            "prod",
            vec![
                stmt(
                    "payments-use",
                    &["service:payments"],
                    &[
                        "keys:encrypt",
                        "keys:decrypt",
                        "keys:generate-data-key",
                        "keys:rewrap",
                    ],
                    &["key:payments"],
                ),
                stmt("ops-admin", &["role:ops"], &["keys:*"], &["key:*"]),
            ],
        )
        .await
        .unwrap();
    // staging: everyone may do everything, to show the wall holds anyway.
    keys.policies()
        .set("staging", vec![stmt("open", &["*"], &["*"], &["*"])])
        .await
        .unwrap();
    for (env, name) in [
        ("prod", "payments"),
        ("prod", "orders"),
        ("staging", "payments"),
    ] {
        keys.ensure_key(env, name, KeySpec::default())
            .await
            .unwrap();
    }
    Kit {
        keys,
        audit,
        fault,
        clock,
        keyring,
        store,
        _dir: dir,
    }
}

fn ctx(pairs: &[(&str, &str)]) -> Context {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn payments() -> Caller {
    Caller::direct(Principal::service("prod", "payments"))
}

fn ops() -> Caller {
    Caller::direct(Principal::user("prod", "alice", &["ops"]))
}

fn records(audit: &Audit, outcome: Outcome) -> Vec<rampart_audit::Record> {
    audit
        .search(&Query {
            outcome: Some(outcome),
            ..Query::default()
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_wrong_context_tamper_and_truncation() {
    let k = kit().await;
    let c = ctx(&[("order", "42"), ("tenant", "acme")]);
    let ct = k
        .keys
        .encrypt(&payments(), "payments", b"card 4111", &c)
        .await
        .unwrap();
    let p = ciphertext::parse(&ct).unwrap();
    assert_eq!((p.environment, p.key, p.version), ("prod", "payments", 1));
    assert!(!ct.windows(4).any(|w| w == b"4111"));
    let pt = k.keys.decrypt(&payments(), &ct, &c).await.unwrap();
    assert_eq!(pt.expose(), b"card 4111");

    let wrong = ctx(&[("order", "43"), ("tenant", "acme")]);
    assert!(matches!(
        k.keys.decrypt(&payments(), &ct, &wrong).await,
        Err(KeysError::Decrypt)
    ));
    assert!(matches!(
        k.keys.decrypt(&payments(), &ct, &Context::new()).await,
        Err(KeysError::Decrypt)
    ));

    let header_len = p.header.len();
    for i in header_len..ct.len() {
        let mut t = ct.clone();
        t[i] ^= 0x80;
        assert!(
            matches!(
                k.keys.decrypt(&payments(), &t, &c).await,
                Err(KeysError::Decrypt)
            ),
            "flip at {i}"
        );
    }
    // A flipped version byte names another version: refused before any decryption.
    let mut t = ct.clone();
    t[header_len - 1] = 9;
    assert!(matches!(
        k.keys.decrypt(&payments(), &t, &c).await,
        Err(KeysError::UnknownVersion { version: 9, .. })
    ));
    for len in [0, 1, 5, header_len, header_len + 12, ct.len() - 17] {
        let r = k.keys.decrypt(&payments(), &ct[..len], &c).await;
        assert!(
            matches!(r, Err(KeysError::Malformed(_))),
            "len {len}: {r:?}"
        );
    }
    // The failed attempts after an allowed decision are on record as errors.
    assert!(!records(&k.audit, Outcome::Error).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_service_is_denied_and_audited_with_reason() {
    let k = kit().await;
    let orders = Caller::direct(Principal::service("prod", "orders"));
    let err = k
        .keys
        .encrypt(&orders, "payments", b"x", &Context::new())
        .await
        .unwrap_err();
    assert!(matches!(err, KeysError::Denied { .. }), "{err}");
    let ct = k
        .keys
        .encrypt(&payments(), "payments", b"x", &Context::new())
        .await
        .unwrap();
    let err = k
        .keys
        .decrypt(&orders, &ct, &Context::new())
        .await
        .unwrap_err();
    assert!(matches!(err, KeysError::Denied { .. }));
    // payments cannot use orders' key either.
    assert!(matches!(
        k.keys
            .encrypt(&payments(), "orders", b"x", &Context::new())
            .await,
        Err(KeysError::Denied { .. })
    ));
    let denied = records(&k.audit, Outcome::Denied);
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(denied.iter().all(|r| r
        .event
        .reason
        .as_deref()
        .unwrap_or("")
        .starts_with("default deny")));
    assert_eq!(denied[0].event.actor.principal, "svc:orders");
    assert_eq!(denied[0].event.resource, "prod/key:payments");
    let allowed = records(&k.audit, Outcome::Allowed);
    assert!(allowed
        .iter()
        .any(|r| r.event.reason.as_deref() == Some("allowed by statement \"payments-use\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_are_hard_walls_whatever_the_policy() {
    let k = kit().await;
    // Even an allow-everything policy in prod does not admit staging.
    k.keys
        .policies()
        .set("prod", vec![stmt("all", &["*"], &["*"], &["*"])])
        .await
        .unwrap();
    let staging = Caller::direct(Principal::service("staging", "payments"));
    let err = k
        .keys
        .encrypt(&staging, "prod/payments", b"x", &Context::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, KeysError::Denied { reason } if reason.contains("environment wall")),
        "{err}"
    );
    let prod_ct = k
        .keys
        .encrypt(&payments(), "payments", b"x", &Context::new())
        .await
        .unwrap();
    let err = k
        .keys
        .decrypt(&staging, &prod_ct, &Context::new())
        .await
        .unwrap_err();
    assert!(matches!(&err, KeysError::Denied { reason } if reason.contains("environment wall")));
    // Nor does being Rampart itself.
    let sys = Caller::system("staging", "scheduler");
    assert!(matches!(
        k.keys.rotate(&sys, "prod/payments").await,
        Err(KeysError::Denied { .. })
    ));
    // A ciphertext of staging's same-named key does not open with prod's.
    let st_ct = k
        .keys
        .encrypt(&staging, "payments", b"x", &Context::new())
        .await
        .unwrap();
    assert!(matches!(
        k.keys.decrypt(&payments(), &st_ct, &Context::new()).await,
        Err(KeysError::Denied { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_service_and_required_context() {
    let k = kit().await;
    let mut s = stmt(
        "orders-via-secrets",
        &["service:orders"],
        &["keys:decrypt", "keys:encrypt"],
        &["key:orders"],
    );
    s.conditions = Conditions {
        via_services: vec!["secrets".into()],
        context_keys: vec!["secret".into()],
        ..Conditions::default()
    };
    k.keys.policies().set("prod", vec![s]).await.unwrap();
    let orders = Caller::direct(Principal::service("prod", "orders"));
    let c = ctx(&[("secret", "db")]);
    assert!(matches!(
        k.keys.encrypt(&orders, "orders", b"x", &c).await,
        Err(KeysError::Denied { .. })
    ));
    let via = orders.through("secrets");
    let ct = k.keys.encrypt(&via, "orders", b"x", &c).await.unwrap();
    assert_eq!(k.keys.decrypt(&via, &ct, &c).await.unwrap().expose(), b"x");
    assert!(matches!(
        k.keys.encrypt(&via, "orders", b"x", &Context::new()).await,
        Err(KeysError::Denied { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rewrap_and_retired_versions() {
    let k = kit().await;
    let c = ctx(&[("a", "b")]);
    let v1 = k
        .keys
        .encrypt(&payments(), "payments", b"old", &c)
        .await
        .unwrap();
    // The payments service may not rotate; ops may.
    assert!(matches!(
        k.keys.rotate(&payments(), "payments").await,
        Err(KeysError::Denied { .. })
    ));
    assert_eq!(k.keys.rotate(&ops(), "payments").await.unwrap(), 2);
    let v2 = k
        .keys
        .encrypt(&payments(), "payments", b"new", &c)
        .await
        .unwrap();
    assert_eq!(ciphertext::parse(&v2).unwrap().version, 2);
    assert_eq!(
        k.keys.decrypt(&payments(), &v1, &c).await.unwrap().expose(),
        b"old"
    );
    let re = k.keys.rewrap(&payments(), &v1, &c).await.unwrap();
    assert_eq!(ciphertext::parse(&re).unwrap().version, 2);
    assert!(matches!(
        k.keys.rewrap(&payments(), &v1, &ctx(&[("a", "c")])).await,
        Err(KeysError::Decrypt)
    ));

    let info = k
        .keys
        .configure(&ops(), "payments", None, Some(2))
        .await
        .unwrap();
    assert_eq!(info.min_decryption_version, 2);
    let err = k.keys.decrypt(&payments(), &v1, &c).await.unwrap_err();
    assert!(
        matches!(
            err,
            KeysError::RetiredVersion {
                version: 1,
                min: 2,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        k.keys.decrypt(&payments(), &re, &c).await.unwrap().expose(),
        b"old"
    );
    assert!(k
        .keys
        .configure(&ops(), "payments", None, Some(3))
        .await
        .is_err());
}

/// Two nodes' schedulers over one store, at the same moment: each due key
/// gets one new version, not one per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedulers_of_two_nodes_rotate_a_due_key_once() {
    let k = kit().await;
    let other = KeyService::new(
        k.keyring.clone(),
        Policies::new(k.store.clone(), k.clock.clone()),
        k.keys.auditor().clone(),
        k.clock.clone(),
    );
    k.clock.advance(Duration::from_secs(366 * DAY));
    let now = k.clock.unix_secs();
    let (a, b) = tokio::join!(k.keys.rotate_due(now), other.rotate_due(now));
    let mut all: Vec<(String, u32)> = a.unwrap().into_iter().chain(b.unwrap()).collect();
    all.sort();
    assert_eq!(
        all,
        vec![
            ("prod/orders".to_string(), 2),
            ("prod/payments".to_string(), 2),
            ("staging/payments".to_string(), 2)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rotation_follows_each_keys_period() {
    let k = kit().await;
    k.keys
        .configure(&ops(), "orders", Some(30), None)
        .await
        .unwrap();
    assert!(k
        .keys
        .rotate_due(k.clock.unix_secs())
        .await
        .unwrap()
        .is_empty());
    k.clock.advance(Duration::from_secs(31 * DAY));
    let rotated = k.keys.rotate_due(k.clock.unix_secs()).await.unwrap();
    assert_eq!(rotated, vec![("prod/orders".to_string(), 2)]);
    k.clock.advance(Duration::from_secs(335 * DAY));
    let mut rotated = k.keys.rotate_due(k.clock.unix_secs()).await.unwrap();
    rotated.sort();
    assert_eq!(
        rotated,
        vec![
            ("prod/orders".to_string(), 3),
            ("prod/payments".to_string(), 2),
            ("staging/payments".to_string(), 2)
        ]
    );
    let info = k.keys.describe(&ops(), "payments").await.unwrap();
    assert_eq!(info.current_version, 2);
    assert_eq!(info.next_rotation_at, k.clock.unix_secs() + 365 * DAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_window_cancel_and_destruction() {
    let k = kit().await;
    let c = Context::new();
    let ct = k
        .keys
        .encrypt(&payments(), "payments", b"gone soon", &c)
        .await
        .unwrap();
    assert!(matches!(
        k.keys.schedule_deletion(&ops(), "payments", Some(6)).await,
        Err(KeysError::InvalidField { field: "days", .. })
    ));
    assert!(matches!(
        k.keys.schedule_deletion(&ops(), "payments", Some(31)).await,
        Err(KeysError::InvalidField { field: "days", .. })
    ));
    assert!(matches!(
        k.keys
            .schedule_deletion(&payments(), "payments", None)
            .await,
        Err(KeysError::Denied { .. })
    ));
    let at = k
        .keys
        .schedule_deletion(&ops(), "payments", None)
        .await
        .unwrap();
    assert_eq!(at, T0 + 7 * DAY);
    assert!(matches!(
        k.keys.decrypt(&payments(), &ct, &c).await,
        Err(KeysError::PendingDeletion { .. })
    ));
    k.keys.cancel_deletion(&ops(), "payments").await.unwrap();
    assert_eq!(
        k.keys.decrypt(&payments(), &ct, &c).await.unwrap().expose(),
        b"gone soon"
    );

    k.keys
        .schedule_deletion(&ops(), "payments", Some(10))
        .await
        .unwrap();
    k.clock.advance(Duration::from_secs(9 * DAY));
    assert!(k
        .keys
        .purge_due(k.clock.unix_secs())
        .await
        .unwrap()
        .is_empty());
    k.clock.advance(Duration::from_secs(DAY));
    assert_eq!(
        k.keys.purge_due(k.clock.unix_secs()).await.unwrap(),
        vec!["prod/payments".to_string()]
    );
    assert!(matches!(
        k.keys.cancel_deletion(&ops(), "payments").await,
        Err(KeysError::InvalidRequest(_))
    ));
    let info = k.keys.describe(&ops(), "payments").await.unwrap();
    assert!(matches!(info.state, KeyState::Destroyed { .. }));
    assert!(info.versions.iter().all(|v| !v.available));

    // Nobody can decrypt: not the owner, not ops, not Rampart itself, not a
    // fresh process over the same store.
    for who in [payments(), ops(), Caller::system("prod", "scheduler")] {
        assert!(matches!(
            k.keys.decrypt(&who, &ct, &c).await,
            Err(KeysError::Destroyed(_))
        ));
    }
    let fresh = KeyService::new(
        k.keyring.clone(),
        Policies::new(k.store.clone(), k.clock.clone()),
        k.keys.auditor().clone(),
        k.clock.clone(),
    );
    assert!(matches!(
        fresh.decrypt(&Caller::system("prod", "x"), &ct, &c).await,
        Err(KeysError::Destroyed(_))
    ));
    // The stored record holds no wrapped material any more.
    let raw = k.store.get("keys", "prod/payments").await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&raw.value).unwrap();
    assert!(
        json["versions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["wrapped"].is_null()),
        "{json}"
    );
    let destroyed = k
        .audit
        .search(&Query {
            action: Some("keys:destroy".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(destroyed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_refusal_refuses_the_operation() {
    let k = kit().await;
    k.keys
        .encrypt(&payments(), "payments", b"x", &Context::new())
        .await
        .unwrap();
    k.fault.fail_syncs(true);
    let err = k
        .keys
        .encrypt(&payments(), "payments", b"x", &Context::new())
        .await
        .unwrap_err();
    assert!(matches!(err, KeysError::Audit(_)), "{err}");
    assert!(!err.is_client_error());
    let err = k.keys.rotate(&ops(), "payments").await.unwrap_err();
    assert!(matches!(err, KeysError::Audit(_)), "{err}");
    // The rotation did not happen.
    let raw = k.store.get("keys", "prod/payments").await.unwrap().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&raw.value).unwrap();
    assert_eq!(json["versions"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_decide_every_item_and_record_decisions_grouped() {
    let k = kit().await;
    // orders may encrypt under its key only with a `tenant` context.
    let mut s = stmt(
        "orders-tenant",
        &["service:orders"],
        &["keys:*"],
        &["key:orders"],
    );
    s.conditions = Conditions {
        context_keys: vec!["tenant".into()],
        ..Conditions::default()
    };
    k.keys.policies().set("prod", vec![s]).await.unwrap();
    let orders = Caller::direct(Principal::service("prod", "orders"));
    let items: Vec<(Vec<u8>, Context)> = (0..10u8)
        .map(|i| {
            let c = if i % 3 == 0 {
                Context::new()
            } else {
                ctx(&[("tenant", "t1")])
            };
            (vec![i; 8], c)
        })
        .collect();
    let before = records(&k.audit, Outcome::Allowed).len();
    let out = k.keys.encrypt_batch(&orders, "orders", &items).await;
    assert_eq!(out.len(), 10);
    for (i, r) in out.iter().enumerate() {
        if i % 3 == 0 {
            assert!(matches!(r, Err(KeysError::Denied { .. })), "{i}: {r:?}");
        } else {
            assert!(r.is_ok(), "{i}: {r:?}");
        }
    }
    // One allowed record for the six allowed items, one denied record for
    // the four denied ones, each naming its items.
    let allowed = records(&k.audit, Outcome::Allowed);
    assert_eq!(allowed.len(), before + 1);
    let a = &allowed.last().unwrap().event;
    assert_eq!(a.action, "keys:encrypt");
    assert_eq!(a.details.get("batch_size").map(String::as_str), Some("10"));
    assert_eq!(a.details.get("batch_items").map(String::as_str), Some("6"));
    assert_eq!(
        a.details.get("batch_indices").map(String::as_str),
        Some("1-2,4-5,7-8")
    );
    let denied = records(&k.audit, Outcome::Denied);
    let d = &denied.last().unwrap().event;
    assert_eq!(
        d.details.get("batch_indices").map(String::as_str),
        Some("0,3,6,9")
    );
    assert!(
        d.reason
            .as_deref()
            .unwrap_or("")
            .starts_with("default deny"),
        "{d:?}"
    );

    // Decrypt a mix: good items, a tampered one, garbage, and one of a key
    // in another environment (the wall holds per item).
    let mut to_open: Vec<(Vec<u8>, Context)> = out
        .into_iter()
        .zip(&items)
        .filter_map(|(r, (_, c))| r.ok().map(|ct| (ct, c.clone())))
        .collect();
    if let Some(b) = to_open[1].0.last_mut() {
        *b ^= 1;
    }
    to_open.push((b"not a ciphertext".to_vec(), Context::new()));
    let staging = k
        .keys
        .encrypt(
            &Caller::direct(Principal::service("staging", "payments")),
            "payments",
            b"x",
            &Context::new(),
        )
        .await
        .unwrap();
    to_open.push((staging, Context::new()));
    let opened = k.keys.decrypt_batch(&orders, &to_open).await;
    assert_eq!(opened.len(), 8);
    assert_eq!(opened[0].as_ref().unwrap().expose(), &[1u8; 8]);
    assert!(matches!(opened[1], Err(KeysError::Decrypt)));
    assert!(opened[2..6].iter().all(Result::is_ok));
    assert!(matches!(opened[6], Err(KeysError::Malformed(_))));
    assert!(matches!(opened[7], Err(KeysError::Denied { .. })));

    // Fail closed: when the log refuses, every item is refused.
    k.fault.fail_syncs(true);
    let refused = k.keys.encrypt_batch(&orders, "orders", &items[1..3]).await;
    assert!(
        refused
            .iter()
            .all(|r| matches!(r, Err(KeysError::Audit(_) | KeysError::AuditRefused(_)))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_batches_and_bad_input() {
    let k = kit().await;
    let c = ctx(&[("file", "a.bin")]);
    let dk = k
        .keys
        .generate_data_key(&payments(), "payments", &c)
        .await
        .unwrap();
    assert!(format!("{dk:?}").contains("redacted"));
    let back = k
        .keys
        .decrypt_data_key(&payments(), &dk.wrapped, &c)
        .await
        .unwrap();
    assert_eq!(back.expose(), dk.plaintext.expose());

    let items: Vec<(Vec<u8>, Context)> = (0..5)
        .map(|i| (vec![i; 10], ctx(&[("i", &i.to_string())])))
        .collect();
    let cts: Vec<Vec<u8>> = k
        .keys
        .encrypt_batch(&payments(), "payments", &items)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut to_open: Vec<(Vec<u8>, Context)> = cts
        .into_iter()
        .zip(items.iter().map(|i| i.1.clone()))
        .collect();
    to_open[2].1 = ctx(&[("i", "wrong")]);
    let out = k.keys.decrypt_batch(&payments(), &to_open).await;
    assert_eq!(out[0].as_ref().unwrap().expose(), &[0u8; 10]);
    assert!(matches!(out[2], Err(KeysError::Decrypt)));
    assert_eq!(
        k.keys.rewrap_batch(&payments(), &to_open[..2]).await.len(),
        2
    );
    assert_eq!(
        k.keys
            .generate_data_key_batch(&payments(), "payments", &[c.clone(), c])
            .await
            .len(),
        2
    );

    let big = vec![0u8; rampart_keys::MAX_PLAINTEXT + 1];
    assert!(matches!(
        k.keys
            .encrypt(&payments(), "payments", &big, &Context::new())
            .await,
        Err(KeysError::TooLarge { .. })
    ));
    assert!(matches!(
        k.keys.encrypt(&ops(), "nope", b"x", &Context::new()).await,
        Err(KeysError::UnknownKey { .. })
    ));
    assert!(matches!(
        k.keys
            .encrypt(&ops(), "Bad Name", b"x", &Context::new())
            .await,
        Err(KeysError::InvalidName(_))
    ));
    let huge_ctx: Context = (0..100).map(|i| (i.to_string(), String::new())).collect();
    assert!(matches!(
        k.keys
            .encrypt(&payments(), "payments", b"x", &huge_ctx)
            .await,
        Err(KeysError::InvalidRequest(_))
    ));
    assert!(matches!(
        k.keys
            .create_key(&ops(), "payments", KeySpec::default())
            .await,
        Err(KeysError::KeyExists { .. })
    ));
    let spec = KeySpec {
        rotation_period_days: Some(0),
        ..KeySpec::default()
    };
    assert!(matches!(
        k.keys.create_key(&ops(), "zero", spec).await,
        Err(KeysError::InvalidField {
            field: "rotation_period_days",
            ..
        })
    ));
    let listed = k.keys.list_keys(&ops()).await.unwrap();
    assert_eq!(
        listed.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["orders", "payments"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_decisions_match_single_calls_item_by_item() {
    // Decisions are shared within a batch only between items whose contexts
    // agree on the keys the conditions read; each item must still get what
    // a single call would.
    let k = kit().await;
    let mut allow = stmt(
        "tenant-acme",
        &["service:payments"],
        &["keys:encrypt", "keys:decrypt"],
        &["key:payments", "key:orders"],
    );
    allow.conditions.context_equals = ctx(&[("tenant", "acme")]);
    let mut deny = stmt("no-legacy", &["*"], &["keys:decrypt"], &["key:*"]);
    deny.effect = Effect::Deny;
    deny.conditions.context_keys = vec!["legacy".into()];
    k.keys
        .policies()
        .set("prod", vec![allow, deny])
        .await
        .unwrap();
    let contexts = [
        ctx(&[("tenant", "acme")]),
        ctx(&[("tenant", "evil")]),
        ctx(&[("tenant", "acme"), ("other", "1")]),
        ctx(&[]),
        ctx(&[("tenant", "acme"), ("legacy", "")]),
        ctx(&[("tenant", "acme"), ("other", "2")]),
        ctx(&[("tenant", "acme!")]),
    ];
    for key in ["payments", "orders"] {
        let items: Vec<(Vec<u8>, Context)> = contexts
            .iter()
            .cycle()
            .take(3 * contexts.len())
            .enumerate()
            .map(|(i, c)| (vec![i as u8; 5], c.clone()))
            .collect();
        let batch = k.keys.encrypt_batch(&payments(), key, &items).await;
        let mut to_open = Vec::new();
        for ((p, c), got) in items.iter().zip(&batch) {
            let single = k.keys.encrypt(&payments(), key, p, c).await;
            assert_eq!(
                got.is_ok(),
                single.is_ok(),
                "{key} {c:?}: {got:?} {single:?}"
            );
            if let Ok(ct) = got {
                to_open.push((ct.clone(), c.clone()));
                // The decrypt side: with `legacy` added, the deny applies.
                let mut legacy = c.clone();
                legacy.insert("legacy".into(), "1".into());
                to_open.push((ct.clone(), legacy));
            }
        }
        assert_eq!(to_open.len(), 2 * 3 * 4, "{key}");
        let opened = k.keys.decrypt_batch(&payments(), &to_open).await;
        for ((ct, c), got) in to_open.iter().zip(&opened) {
            let single = k.keys.decrypt(&payments(), ct, c).await;
            match (got, &single) {
                (Ok(a), Ok(b)) => assert_eq!(a.expose(), b.expose()),
                (Err(KeysError::Denied { reason: a }), Err(KeysError::Denied { reason: b })) => {
                    assert_eq!(a, b)
                }
                // A context with `legacy` could not have been encrypted
                // with another context, so it is denied (or fails) alike.
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                _ => panic!("{key} {c:?}: {got:?} {single:?}"),
            }
        }
    }
}

#[test]
fn ciphertext_parser_never_panics_on_random_input() {
    let mut seed = [0u8; 32];
    for round in 0..20_000u32 {
        let len = (round % 97) as usize;
        seed = rampart_crypto::hmac_sha256(&seed, &round.to_be_bytes());
        let mut buf: Vec<u8> = seed.iter().cycle().take(len).copied().collect();
        if round % 3 == 0 && !buf.is_empty() {
            buf[0] = ciphertext::FORMAT_V1;
        }
        let _ = ciphertext::parse(&buf);
    }
    let _ = BTreeMap::<String, String>::new();
}

fn envelope(k: &Kit, caller: Caller, key: &str, limits: EnvelopeLimits) -> Envelope {
    Envelope::new(&k.keys, caller, key, limits)
}

fn allowed_actions(audit: &Audit, action: &str) -> usize {
    records(audit, Outcome::Allowed)
        .iter()
        .filter(|r| r.event.action == action)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_round_trip_context_tamper_and_truncation() {
    let k = kit().await;
    let env = envelope(&k, payments(), "payments", EnvelopeLimits::default());
    let c = ctx(&[("tenant", "acme")]);
    let msgs: Vec<Vec<u8>> = {
        let mut v = Vec::new();
        for i in 0..20u8 {
            v.push(env.encrypt(&[i; 300], &c).await.unwrap());
        }
        v
    };
    // One data key for twenty messages, each with its own nonce.
    assert_eq!(env.data_keys_generated(), 1);
    assert_eq!(allowed_actions(&k.audit, "keys:generate-data-key"), 1);
    assert_ne!(
        msgs[0][..msgs[0].len() - 316],
        msgs[1][..msgs[1].len() - 316]
    );

    // Another envelope of the same caller opens them, unwrapping once.
    let reader = envelope(&k, payments(), "payments", EnvelopeLimits::default());
    for (i, m) in msgs.iter().enumerate() {
        assert_eq!(
            reader.decrypt(m, &c).await.unwrap().expose(),
            &[i as u8; 300]
        );
    }
    assert_eq!(reader.data_keys_unwrapped(), 1);
    assert_eq!(allowed_actions(&k.audit, "keys:decrypt"), 1);

    // The wrong context is refused, by the plane (no cached key for it) and
    // by the message's own associated data.
    let other = ctx(&[("tenant", "evil")]);
    assert!(reader.decrypt(&msgs[0], &other).await.is_err());
    assert!(reader.decrypt(&msgs[0], &Context::new()).await.is_err());

    // One flipped byte anywhere is refused; every truncation is refused.
    let m = &msgs[3];
    for i in 0..m.len() {
        let mut bad = m.clone();
        bad[i] ^= 0x01;
        assert!(reader.decrypt(&bad, &c).await.is_err(), "flipped byte {i}");
    }
    for n in 0..m.len() {
        assert!(reader.decrypt(&m[..n], &c).await.is_err(), "length {n}");
    }
    // After a rotation, a message's header can be rewrapped to the new
    // key version without touching the data, and still opens.
    k.keys.rotate(&ops(), "payments").await.unwrap();
    let p = envelope::parse(m).unwrap();
    let rewrapped = k.keys.rewrap(&payments(), p.wrapped, &c).await.unwrap();
    assert_ne!(rewrapped.as_slice(), p.wrapped);
    assert_eq!(ciphertext::parse(&rewrapped).unwrap().version, 2);
    let mut moved = vec![envelope::ENVELOPE_V1];
    moved.extend_from_slice(&(rewrapped.len() as u16).to_be_bytes());
    moved.extend_from_slice(&rewrapped);
    moved.extend_from_slice(&m[p.header.len()..]);
    let fresh = envelope(&k, payments(), "payments", EnvelopeLimits::default());
    assert_eq!(
        fresh.decrypt(&moved, &c).await.unwrap().expose(),
        &[3u8; 300]
    );
    // And nothing of the key shows in Debug.
    let dbg = format!("{reader:?}");
    assert!(dbg.contains("data_keys_unwrapped"), "{dbg}");
    assert!(!dbg.contains("cipher"), "{dbg}");
    assert!(envelope::parse(m).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_limits_renew_data_keys_and_policy_changes_take_effect_at_expiry() {
    let k = kit().await;
    let limits = EnvelopeLimits {
        max_age_secs: 60,
        max_messages: 3,
        max_bytes: 1 << 20,
    };
    let env = envelope(&k, payments(), "payments", limits);
    let c = ctx(&[("tenant", "acme")]);
    for _ in 0..7 {
        env.encrypt(b"x", &c).await.unwrap();
    }
    // 3 messages per data key: 7 messages took 3 keys.
    assert_eq!(env.data_keys_generated(), 3);
    // A different context gets its own data key.
    env.encrypt(b"x", &ctx(&[("tenant", "other")]))
        .await
        .unwrap();
    assert_eq!(env.data_keys_generated(), 4);

    // The byte limit renews too.
    let bytes = EnvelopeLimits {
        max_bytes: 1000,
        ..EnvelopeLimits::default()
    };
    let env2 = envelope(&k, payments(), "payments", bytes);
    env2.encrypt(&[0; 600], &c).await.unwrap();
    env2.encrypt(&[0; 600], &c).await.unwrap();
    assert_eq!(env2.data_keys_generated(), 2);
    assert!(env2.encrypt(&[0; 1001], &c).await.is_err());

    // Revoke payments' access: the cached data key still seals until it
    // expires (the documented bound), then the plane refuses.
    let env3 = envelope(&k, payments(), "payments", EnvelopeLimits::default());
    let sealed = env3.encrypt(b"before", &c).await.unwrap();
    let reader = envelope(&k, payments(), "payments", EnvelopeLimits::default());
    assert_eq!(
        reader.decrypt(&sealed, &c).await.unwrap().expose(),
        b"before"
    );
    k.keys
        .policies()
        .set(
            "prod",
            vec![stmt("ops-admin", &["role:ops"], &["keys:*"], &["key:*"])],
        )
        .await
        .unwrap();
    env3.encrypt(b"still cached", &c).await.unwrap();
    assert_eq!(
        reader.decrypt(&sealed, &c).await.unwrap().expose(),
        b"before"
    );
    k.clock.advance(Duration::from_secs(300));
    assert!(matches!(
        env3.encrypt(b"after", &c).await,
        Err(KeysError::Denied { .. })
    ));
    assert!(matches!(
        reader.decrypt(&sealed, &c).await,
        Err(KeysError::Denied { .. })
    ));
    // A fresh envelope is refused at once, and the refusals are on record.
    let fresh = envelope(&k, payments(), "payments", EnvelopeLimits::default());
    assert!(fresh.decrypt(&sealed, &c).await.is_err());
    assert!(records(&k.audit, Outcome::Denied).len() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_across_environments_and_after_destruction() {
    let k = kit().await;
    let c = Context::new();
    // staging's open policy does not let a staging caller near prod's key.
    let staging = Caller::direct(Principal::service("staging", "payments"));
    let cross = envelope(
        &k,
        staging.clone(),
        "prod/payments",
        EnvelopeLimits::default(),
    );
    assert!(matches!(
        cross.encrypt(b"x", &c).await,
        Err(KeysError::Denied { .. })
    ));
    let env = envelope(&k, payments(), "payments", EnvelopeLimits::default());
    let sealed = env.encrypt(b"gone soon", &c).await.unwrap();
    let staged = envelope(&k, staging, "payments", EnvelopeLimits::default());
    assert!(staged.decrypt(&sealed, &c).await.is_err());

    // Destroy the key: once the caches have expired nobody can open the
    // message again.
    k.keys
        .schedule_deletion(&ops(), "payments", Some(7))
        .await
        .unwrap();
    k.clock.advance(Duration::from_secs(7 * DAY));
    k.keys.purge_due(k.clock.unix_secs()).await.unwrap();
    for caller in [payments(), ops()] {
        let e = envelope(&k, caller, "payments", EnvelopeLimits::default());
        assert!(e.decrypt(&sealed, &c).await.is_err());
    }
    assert!(env.decrypt(&sealed, &c).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_opens_only_messages_of_its_own_key() {
    let k = kit().await;
    let c = ctx(&[("tenant", "acme")]);
    // ops may use every key of prod; an envelope still belongs to one.
    let orders = envelope(&k, ops(), "orders", EnvelopeLimits::default());
    let forged = orders.encrypt(b"pay 1000 to mallory", &c).await.unwrap();
    let payments = envelope(&k, ops(), "payments", EnvelopeLimits::default());
    let err = payments.decrypt(&forged, &c).await.unwrap_err();
    assert!(matches!(err, KeysError::InvalidRequest(_)), "{err}");
    assert_eq!(payments.data_keys_unwrapped(), 0);
    // Its own messages open, whether the key is named with or without
    // its environment.
    let own = payments.encrypt(b"pay 10 to bob", &c).await.unwrap();
    let spelled = envelope(&k, ops(), "prod/payments", EnvelopeLimits::default());
    assert_eq!(
        spelled.decrypt(&own, &c).await.unwrap().expose(),
        b"pay 10 to bob"
    );
    assert!(spelled.decrypt(&forged, &c).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_cannot_be_cancelled_once_its_window_has_ended() {
    let k = kit().await;
    let c = Context::new();
    let ct = k
        .keys
        .encrypt(&payments(), "payments", b"gone soon", &c)
        .await
        .unwrap();
    let at = k
        .keys
        .schedule_deletion(&ops(), "payments", None)
        .await
        .unwrap();
    // The scheduler has not run yet (or failed): the window is over all the same.
    k.clock.advance(Duration::from_secs(at - T0));
    assert!(matches!(
        k.keys.cancel_deletion(&ops(), "payments").await,
        Err(KeysError::InvalidRequest(_))
    ));
    assert!(matches!(
        k.keys.decrypt(&payments(), &ct, &c).await,
        Err(KeysError::PendingDeletion { .. })
    ));
    assert_eq!(
        k.keys.purge_due(k.clock.unix_secs()).await.unwrap(),
        vec!["prod/payments".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_expire_when_the_clock_steps_back() {
    let k = kit().await;
    let c = Context::new();
    let ct = k
        .keys
        .encrypt(&payments(), "payments", b"x", &c)
        .await
        .unwrap();
    let env = envelope(
        &k,
        payments(),
        "payments",
        EnvelopeLimits {
            max_age_secs: 60,
            ..EnvelopeLimits::default()
        },
    );
    env.encrypt(b"x", &c).await.unwrap();
    // This node has payments' key, prod's policy and a data key cached
    // when the system clock is stepped back an hour (NTP, a VM restore).
    k.clock.set_unix_secs(T0 - 3600);
    // Another node over the same store: the envelope's data key expires,
    // then the key is scheduled for deletion and the policy revoked.
    k.clock.advance(Duration::from_secs(60));
    env.encrypt(b"x", &c).await.unwrap();
    assert_eq!(env.data_keys_generated(), 2, "data key kept past max_age");
    let other = KeyService::new(
        k.keyring.clone(),
        Policies::new(k.store.clone(), k.clock.clone()),
        k.keys.auditor().clone(),
        k.clock.clone(),
    );
    other
        .schedule_deletion(&ops(), "payments", None)
        .await
        .unwrap();
    other
        .policies()
        .set(
            "prod",
            vec![stmt("ops-admin", &["role:ops"], &["keys:*"], &["key:*"])],
        )
        .await
        .unwrap();
    // Within the cache time of the clock as it now reads, both are seen.
    k.clock
        .advance(Duration::from_secs(rampart_keys::CACHE_TTL_SECS));
    assert_eq!(k.keys.policies().get("prod").await.unwrap().len(), 1);
    assert!(matches!(
        k.keys.decrypt(&ops(), &ct, &c).await,
        Err(KeysError::PendingDeletion { .. })
    ));
}

/// [`kit`] over a store whose reads can be held (see [`HeldStore`]).
async fn held_kit() -> (Kit, Arc<HeldStore>) {
    let (held, wrap) = HeldStore::wrapping();
    let k = kit_over(wrap).await;
    let h = held.get().unwrap().clone();
    (k, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_raced_a_change_does_not_cache_the_old_record() {
    let (k, h) = held_kit().await;
    let c = Context::new();
    k.keys
        .encrypt(&payments(), "payments", b"x", &c)
        .await
        .unwrap();
    // The cached record goes stale; the next use reads the store again,
    // and that read is held after it has the record (enabled).
    k.clock
        .advance(Duration::from_secs(rampart_keys::CACHE_TTL_SECS + 1));
    h.hold_next_read("keys");
    let keys = k.keys.clone();
    let racing = tokio::spawn(async move {
        keys.encrypt(&payments(), "payments", b"y", &Context::new())
            .await
    });
    h.reached().await;
    // Meanwhile this node schedules the key's deletion.
    k.keys
        .schedule_deletion(&ops(), "payments", None)
        .await
        .unwrap();
    h.release();
    // The racing call may finish with what it read (it began first) ...
    let _ = racing.await.unwrap();
    // ... but the next one, in the same second, must see the deletion.
    assert!(matches!(
        k.keys.encrypt(&payments(), "payments", b"z", &c).await,
        Err(KeysError::PendingDeletion { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_read_that_raced_a_change_does_not_cache_the_old_policy() {
    let (k, h) = held_kit().await;
    assert_eq!(k.keys.policies().get("prod").await.unwrap().len(), 2);
    k.clock
        .advance(Duration::from_secs(rampart_keys::CACHE_TTL_SECS + 1));
    h.hold_next_read("policy");
    let policies = k.keys.policies().clone();
    let racing = tokio::spawn(async move { policies.get("prod").await });
    h.reached().await;
    // payments' right to its key is revoked while that read is held.
    k.keys
        .policies()
        .set(
            "prod",
            vec![stmt("ops-admin", &["role:ops"], &["keys:*"], &["key:*"])],
        )
        .await
        .unwrap();
    h.release();
    let _ = racing.await.unwrap();
    assert_eq!(k.keys.policies().get("prod").await.unwrap().len(), 1);
    assert!(matches!(
        k.keys
            .encrypt(&payments(), "payments", b"z", &Context::new())
            .await,
        Err(KeysError::Denied { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_decides_on_the_record_as_written() {
    let (k, h) = held_kit().await;
    let at = k
        .keys
        .schedule_deletion(&ops(), "payments", None)
        .await
        .unwrap();
    // Another node whose clock runs an hour behind this one's.
    let behind = Arc::new(ManualClock::at_unix_secs(at - 3600));
    let other = KeyService::new(
        k.keyring.clone(),
        Policies::new(k.store.clone(), behind.clone()),
        k.keys.auditor().clone(),
        behind,
    );
    // This node's scheduler finds the window over and reads the record to
    // destroy it; meanwhile the other node, still within the window,
    // cancels the deletion and schedules a new one, a week on.
    k.clock.advance(Duration::from_secs(at - T0));
    h.hold_next_read("keys");
    let keys = k.keys.clone();
    let now = k.clock.unix_secs();
    let purge = tokio::spawn(async move { keys.purge_due(now).await });
    h.reached().await;
    other.cancel_deletion(&ops(), "payments").await.unwrap();
    other
        .schedule_deletion(&ops(), "payments", None)
        .await
        .unwrap();
    h.release();
    assert!(purge.await.unwrap().unwrap().is_empty());
    let info = other.describe(&ops(), "payments").await.unwrap();
    assert!(
        matches!(info.state, KeyState::PendingDeletion { .. }),
        "{:?}",
        info.state
    );
}

#[tokio::test]
async fn a_key_that_cannot_be_written_does_not_hold_up_the_others_due() {
    let (k, h) = held_kit().await;
    for key in ["payments", "orders"] {
        k.keys
            .schedule_deletion(&ops(), key, Some(7))
            .await
            .unwrap();
    }
    k.clock.advance(Duration::from_secs(7 * DAY));
    // Every write to one of them loses to another writer; the one listed
    // first must not stop the destruction of the other.
    h.refuse_puts_to("keys", "prod/orders");
    let now = k.clock.unix_secs();
    assert_eq!(
        k.keys.purge_due(now).await.unwrap(),
        vec!["prod/payments".to_string()]
    );
    let orders = k.keys.describe(&ops(), "orders").await.unwrap();
    assert!(
        matches!(orders.state, KeyState::PendingDeletion { .. }),
        "{:?}",
        orders.state
    );
}

#[tokio::test]
async fn a_key_that_cannot_be_written_does_not_hold_up_the_other_rotations() {
    let (k, h) = held_kit().await;
    k.clock.advance(Duration::from_secs(366 * DAY));
    h.refuse_puts_to("keys", "prod/orders");
    let mut rotated = k.keys.rotate_due(k.clock.unix_secs()).await.unwrap();
    rotated.sort();
    assert_eq!(
        rotated,
        vec![
            ("prod/payments".to_string(), 2),
            ("staging/payments".to_string(), 2)
        ]
    );
    let orders = k.keys.describe(&ops(), "orders").await.unwrap();
    assert_eq!(orders.current_version, 1);
}
