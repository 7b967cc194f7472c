//! The secrets plane end to end: real store, root key, keys plane and audit
//! log; PostgreSQL rotation against a real server when RAMPART_TEST_PG_URL
//! is set (see scripts/with-postgres).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rampart_audit::{Audit, AuditKeys, AuditOptions, FaultInjector, Outcome, Query};
use rampart_core::{Clock, ManualClock};
use rampart_crypto::RootKey;
use rampart_keys::policy::{Conditions, Effect, Statement};
use rampart_keys::{Auditor, Caller, KeyService, KeysError, Policies, Principal};
use rampart_secrets::{
    run_watching, run_with_secrets, PostgresAdmin, PostgresSecret, Reconciled, RotationFault,
    RotationStep, SecretKind, SecretService, SecretsError,
};
use rampart_store::testing::HeldStore;
use rampart_store::{Keyring, RootKeySource, SqliteStore, Store};

const T0: u64 = 1_795_600_000;
const DAY: u64 = 86_400;

struct Kit {
    secrets: SecretService,
    audit: Arc<Audit>,
    fault: Arc<FaultInjector>,
    clock: Arc<ManualClock>,
    store: Arc<dyn Store>,
    dir: tempfile::TempDir,
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

fn via_secrets(mut s: Statement) -> Statement {
    s.conditions.via_services = vec!["secrets".into()];
    s
}

async fn kit() -> Kit {
    kit_over(|s| s).await
}

/// [`kit`] over a store whose reads can be held (see [`HeldStore`]).
async fn held_kit() -> (Kit, Arc<HeldStore>) {
    let (held, wrap) = HeldStore::wrapping();
    let k = kit_over(wrap).await;
    let h = held.get().unwrap().clone();
    (k, h)
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
        keyring,
        Policies::new(store.clone(), clock.clone()),
        Auditor::new(audit.clone(), "n1"),
        clock.clone(),
    );
    keys.policies()
        .set(
            "prod",
            vec![
                stmt(
                    "payments-secrets",
                    &["service:payments"],
                    &["secrets:*"],
                    &["secret:payments/*"],
                ),
                via_secrets(stmt(
                    "payments-key",
                    &["service:payments"],
                    &["keys:generate-data-key", "keys:decrypt"],
                    &["key:svc.payments"],
                )),
                // A mistake: orders may read payments' secrets at the secrets
                // layer, but not use payments' key. The keys plane still says no.
                stmt(
                    "orders-oops",
                    &["service:orders"],
                    &["secrets:get"],
                    &["secret:payments/oops"],
                ),
                stmt("ops", &["role:ops"], &["secrets:*"], &["secret:*"]),
                via_secrets(stmt("ops-keys", &["role:ops"], &["keys:*"], &["key:*"])),
            ],
        )
        .await
        .unwrap();
    keys.policies()
        .set("staging", vec![stmt("open", &["*"], &["*"], &["*"])])
        .await
        .unwrap();
    let secrets = SecretService::new(keys, store.clone(), clock.clone());
    Kit {
        secrets,
        audit,
        fault,
        clock,
        store,
        dir,
    }
}

fn payments() -> Caller {
    Caller::direct(Principal::service("prod", "payments"))
}

fn ops() -> Caller {
    Caller::direct(Principal::user("prod", "alice", &["ops"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_put_get_list_and_nothing_in_clear() {
    let k = kit().await;
    let s = &k.secrets;
    assert_eq!(
        s.put(
            &payments(),
            "payments",
            "api-key",
            b"first-value",
            SecretKind::Generic
        )
        .await
        .unwrap(),
        1
    );
    assert_eq!(
        s.put(
            &payments(),
            "payments",
            "api-key",
            b"second-value",
            SecretKind::Generic
        )
        .await
        .unwrap(),
        2
    );
    s.put(
        &payments(),
        "payments",
        "db-url",
        b"postgres://x",
        SecretKind::Generic,
    )
    .await
    .unwrap();
    let latest = s
        .get(&payments(), "payments", "api-key", None)
        .await
        .unwrap();
    assert_eq!(
        (latest.version, latest.value.expose()),
        (2, &b"second-value"[..])
    );
    assert!(!format!("{latest:?}").contains("second"));
    let v1 = s
        .get(&payments(), "payments", "api-key", Some(1))
        .await
        .unwrap();
    assert_eq!(v1.value.expose(), b"first-value");
    assert!(matches!(
        s.get(&payments(), "payments", "api-key", Some(9)).await,
        Err(SecretsError::UnknownVersion { .. })
    ));
    assert!(matches!(
        s.get(&payments(), "payments", "nope", None).await,
        Err(SecretsError::NotFound(_))
    ));
    let list = s.list(&payments(), "payments").await.unwrap();
    assert_eq!(
        list.iter()
            .map(|m| (m.name.as_str(), m.current_version))
            .collect::<Vec<_>>(),
        [("api-key", 2), ("db-url", 1)]
    );
    // No value is stored in the clear anywhere in the store.
    for ns in ["secrets", "keys"] {
        for (_, e) in k.store.list(ns, "", 1000).await.unwrap() {
            let text = String::from_utf8_lossy(&e.value);
            assert!(
                !text.contains("value") && !text.contains("postgres://"),
                "{ns}: {text}"
            );
        }
    }
    // The service's own key was made for it.
    let key = k
        .secrets
        .keys()
        .describe(&Caller::system("prod", "t"), "svc.payments")
        .await
        .unwrap();
    assert_eq!(key.current_version, 1);
    let too_big = vec![b'x'; rampart_secrets::MAX_SECRET_BYTES + 1];
    assert!(matches!(
        s.put(
            &payments(),
            "payments",
            "big",
            &too_big,
            SecretKind::Generic
        )
        .await,
        Err(SecretsError::InvalidField { field: "value", .. })
    ));
    assert!(matches!(
        s.put(
            &payments(),
            "payments",
            "pg",
            b"{\"host\":1}",
            SecretKind::Postgres
        )
        .await,
        Err(SecretsError::InvalidRequest(_))
    ));
    assert!(matches!(
        s.put(
            &payments(),
            "payments",
            "Bad/Name",
            b"x",
            SecretKind::Generic
        )
        .await,
        Err(SecretsError::Keys(KeysError::InvalidName(_)))
    ));
    // A service whose key name, svc.<service>, would be over 64 characters.
    let long = "s".repeat(61);
    assert!(matches!(
        s.put(&ops(), &long, "db", b"x", SecretKind::Generic).await,
        Err(SecretsError::InvalidField {
            field: "service",
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_service_and_cross_environment_are_denied() {
    let k = kit().await;
    let s = &k.secrets;
    s.put(&payments(), "payments", "db", b"pw", SecretKind::Generic)
        .await
        .unwrap();
    s.put(&payments(), "payments", "oops", b"pw", SecretKind::Generic)
        .await
        .unwrap();
    let orders = Caller::direct(Principal::service("prod", "orders"));
    let err = s.get(&orders, "payments", "db", None).await.unwrap_err();
    assert!(
        matches!(&err, SecretsError::Denied { reason } if reason.starts_with("default deny")),
        "{err}"
    );
    assert!(matches!(
        s.list(&orders, "payments").await,
        Err(SecretsError::Denied { .. })
    ));
    // The secrets-layer mistake is caught by the key policy.
    let err = s.get(&orders, "payments", "oops", None).await.unwrap_err();
    assert!(
        matches!(err, SecretsError::Keys(KeysError::Denied { .. })),
        "{err}"
    );
    // A staging principal under an allow-everything staging policy sees
    // nothing of prod: its names resolve in staging only.
    let staging = Caller::direct(Principal::service("staging", "payments"));
    assert!(matches!(
        s.get(&staging, "payments", "db", None).await,
        Err(SecretsError::NotFound(_))
    ));
    let denied = k
        .audit
        .search(&Query {
            outcome: Some(Outcome::Denied),
            ..Query::default()
        })
        .unwrap();
    assert!(denied.len() >= 3);
    assert!(denied
        .iter()
        .any(|r| r.event.resource == "prod/secret:payments/db"
            && r.event.actor.principal == "svc:orders"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_restore_and_purge_after_the_window() {
    let k = kit().await;
    let s = &k.secrets;
    s.put(&payments(), "payments", "db", b"pw", SecretKind::Generic)
        .await
        .unwrap();
    assert!(matches!(
        s.delete(&payments(), "payments", "db", Some(3)).await,
        Err(SecretsError::InvalidField {
            field: "recovery_days",
            ..
        })
    ));
    let until = s.delete(&payments(), "payments", "db", None).await.unwrap();
    assert_eq!(until, T0 + 7 * DAY);
    assert!(matches!(
        s.get(&payments(), "payments", "db", None).await,
        Err(SecretsError::Deleted { .. })
    ));
    assert_eq!(
        s.list(&payments(), "payments").await.unwrap()[0].recover_until,
        Some(until)
    );
    s.restore(&payments(), "payments", "db").await.unwrap();
    assert_eq!(
        s.get(&payments(), "payments", "db", None)
            .await
            .unwrap()
            .value
            .expose(),
        b"pw"
    );
    s.delete(&payments(), "payments", "db", Some(8))
        .await
        .unwrap();
    k.clock.advance(Duration::from_secs(7 * DAY));
    assert!(s.purge_due(k.clock.unix_secs()).await.unwrap().is_empty());
    k.clock.advance(Duration::from_secs(DAY));
    assert_eq!(
        s.purge_due(k.clock.unix_secs()).await.unwrap(),
        vec!["prod/payments/db".to_string()]
    );
    assert!(matches!(
        s.get(&payments(), "payments", "db", None).await,
        Err(SecretsError::NotFound(_))
    ));
    assert!(matches!(
        s.restore(&payments(), "payments", "db").await,
        Err(SecretsError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_refusal_refuses_access() {
    let k = kit().await;
    k.secrets
        .put(&payments(), "payments", "db", b"pw", SecretKind::Generic)
        .await
        .unwrap();
    k.fault.fail_syncs(true);
    let err = k
        .secrets
        .get(&payments(), "payments", "db", None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SecretsError::Keys(KeysError::Audit(_))),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_injects_secrets_and_watch_restarts_on_change() {
    let k = kit().await;
    let s = &k.secrets;
    s.put(
        &payments(),
        "payments",
        "db-password",
        b"s3cret one",
        SecretKind::Generic,
    )
    .await
    .unwrap();
    let mapping: BTreeMap<String, String> =
        [("db-password".to_string(), "DB_PASSWORD".to_string())].into();
    let env = s
        .resolve_env(&payments(), "payments", &mapping)
        .await
        .unwrap();
    assert!(!format!("{env:?}").contains("s3cret"));
    let args = vec![
        "-c".to_string(),
        "test \"$DB_PASSWORD\" = 's3cret one'".to_string(),
    ];
    assert!(run_with_secrets("sh", &args, &env).await.unwrap().success());
    let args = vec![
        "-c".to_string(),
        "test \"$DB_PASSWORD\" = 'other'".to_string(),
    ];
    assert!(!run_with_secrets("sh", &args, &env).await.unwrap().success());
    let bad: BTreeMap<String, String> = [("db-password".to_string(), "lower".to_string())].into();
    assert!(s.resolve_env(&payments(), "payments", &bad).await.is_err());

    // --watch: the child writes what it saw, then waits; a new version restarts it.
    let out = k.dir.path().join("seen");
    let script = format!("echo \"$DB_PASSWORD\" >> {}; sleep 1", out.display());
    let args = vec!["-c".to_string(), script];
    let watcher = {
        let s = s.clone();
        let mapping = mapping.clone();
        tokio::spawn(async move {
            run_watching(
                &s,
                &payments(),
                "payments",
                &mapping,
                "sh",
                &args,
                Duration::from_millis(100),
                1,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.put(
        &payments(),
        "payments",
        "db-password",
        b"s3cret two",
        SecretKind::Generic,
    )
    .await
    .unwrap();
    let report = watcher.await.unwrap().unwrap();
    assert_eq!(report.restarts, 1);
    assert!(report.status.success());
    let seen = std::fs::read_to_string(&out).unwrap();
    assert_eq!(seen, "s3cret one\ns3cret two\n");
}

// ----- PostgreSQL -----

struct PgUrl {
    user: String,
    password: String,
    host: String,
    port: u16,
}

fn pg_url() -> Option<PgUrl> {
    let Ok(url) = std::env::var("RAMPART_TEST_PG_URL") else {
        println!("SKIP: RAMPART_TEST_PG_URL is not set; run under scripts/with-postgres for the PostgreSQL rotation tests");
        return None;
    };
    let rest = url.strip_prefix("postgres://").expect("postgres:// URL");
    let (creds, hostpart) = rest.rsplit_once('@').unwrap();
    let (user, password) = creds.split_once(':').unwrap();
    let hostport = hostpart.split('/').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    Some(PgUrl {
        user: user.into(),
        password: password.into(),
        host: host.into(),
        port: port.parse().unwrap(),
    })
}

/// A client of the test server, logged in as `user` (no TLS: loopback).
async fn connect_as(
    pg: &PgUrl,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&pg.host)
        .port(pg.port)
        .dbname("postgres")
        .user(user)
        .password(password);
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn login(pg: &PgUrl, user: &str, password: &str) -> bool {
    match connect_as(pg, user, password).await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

async fn admin_exec(pg: &PgUrl, sql: &str) {
    let client = connect_as(pg, &pg.user, &pg.password).await.unwrap();
    client.batch_execute(sql).await.unwrap();
}

/// A fresh login role `role` with `password` (dropped first if a run left
/// it behind).
async fn create_login_role(pg: &PgUrl, role: &str, password: &str) {
    admin_exec(
        pg,
        &format!("DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
    )
    .await;
}

async fn admin_query_one(pg: &PgUrl, sql: &str) -> String {
    let client = connect_as(pg, &pg.user, &pg.password).await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn app_secret(pg: &PgUrl, role: &str, password: &str, admin: PostgresAdmin) -> Vec<u8> {
    let s = PostgresSecret {
        host: pg.host.clone(),
        port: pg.port,
        dbname: "postgres".into(),
        user: role.into(),
        password: password.into(),
        admin,
        tls_ca: None,
    };
    serde_json::to_vec(&s).unwrap()
}

fn password_of(v: &rampart_secrets::SecretValue) -> String {
    serde_json::from_slice::<PostgresSecret>(v.value.expose())
        .unwrap()
        .password
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rotation_on_demand_and_scheduled() {
    let Some(pg) = pg_url() else { return };
    let k = kit().await;
    let s = &k.secrets;
    let role = format!("app_{}", T0 % 100_000 + u64::from(std::process::id()));
    create_login_role(&pg, &role, "initial-pw").await;
    assert!(login(&pg, &role, "initial-pw").await);
    // The admin credentials live in their own secret, referenced by name.
    let admin = app_secret(
        &pg,
        &pg.user,
        &pg.password,
        PostgresAdmin::Inline {
            user: "unused".into(),
            password: "unused".into(),
        },
    );
    s.put(&ops(), "payments", "pg-admin", &admin, SecretKind::Postgres)
        .await
        .unwrap();
    let value = app_secret(
        &pg,
        &role,
        "initial-pw",
        PostgresAdmin::Secret {
            name: "pg-admin".into(),
        },
    );
    s.put(&payments(), "payments", "db", &value, SecretKind::Postgres)
        .await
        .unwrap();

    assert_eq!(s.rotate(&payments(), "payments", "db").await.unwrap(), 2);
    let v2 = s.get(&payments(), "payments", "db", None).await.unwrap();
    let pw2 = password_of(&v2);
    assert_eq!(pw2.len(), 40);
    assert!(login(&pg, &role, &pw2).await, "new password works");
    assert!(
        !login(&pg, &role, "initial-pw").await,
        "old password no longer works"
    );
    // The server was sent a SCRAM verifier, not the password: what it
    // stores is one, and nothing it keeps of the statement holds the
    // password.
    let stored = admin_query_one(
        &pg,
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'"),
    )
    .await;
    assert!(stored.starts_with("SCRAM-SHA-256$4096:"), "{stored}");
    assert!(!stored.contains(&pw2));
    assert_eq!(
        password_of(&s.get(&payments(), "payments", "db", Some(1)).await.unwrap()),
        "initial-pw"
    );

    // Scheduled: every 30 days.
    s.set_rotation(&payments(), "payments", "db", Some(30))
        .await
        .unwrap();
    assert!(s.rotate_due(k.clock.unix_secs()).await.unwrap().is_empty());
    k.clock.advance(Duration::from_secs(30 * DAY));
    let done = s.rotate_due(k.clock.unix_secs()).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, "prod/payments/db");
    assert_eq!(*done[0].1.as_ref().unwrap(), 3);
    let pw3 = password_of(&s.get(&payments(), "payments", "db", None).await.unwrap());
    assert!(login(&pg, &role, &pw3).await);
    assert!(!login(&pg, &role, &pw2).await);
    admin_exec(&pg, &format!("DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rotation_failing_midway_leaves_the_old_password_working() {
    let Some(pg) = pg_url() else { return };
    let k = kit().await;
    let s = &k.secrets;
    let role = format!("app_fail_{}", std::process::id());
    create_login_role(&pg, &role, "keep-me").await;
    let admin = PostgresAdmin::Inline {
        user: pg.user.clone(),
        password: pg.password.clone(),
    };
    s.put(
        &payments(),
        "payments",
        "db",
        &app_secret(&pg, &role, "keep-me", admin),
        SecretKind::Postgres,
    )
    .await
    .unwrap();

    for (fault, step) in [
        (RotationFault::FailVerify, RotationStep::Verify),
        (RotationFault::FailPromote, RotationStep::Promote),
    ] {
        s.inject_rotation_fault(Some(fault));
        let err = s.rotate(&payments(), "payments", "db").await.unwrap_err();
        assert!(
            matches!(&err, SecretsError::Rotation { step: st, reverted: true, .. } if *st == step),
            "{err}"
        );
        assert!(
            login(&pg, &role, "keep-me").await,
            "old password still works after {step}"
        );
        let cur = s.get(&payments(), "payments", "db", None).await.unwrap();
        assert_eq!((cur.version, password_of(&cur)), (1, "keep-me".to_string()));
    }
    // A bad admin password fails before anything changes.
    s.inject_rotation_fault(None);
    let bad_admin = PostgresAdmin::Inline {
        user: pg.user.clone(),
        password: "wrong".into(),
    };
    s.put(
        &payments(),
        "payments",
        "db",
        &app_secret(&pg, &role, "keep-me", bad_admin),
        SecretKind::Postgres,
    )
    .await
    .unwrap();
    let err = s.rotate(&payments(), "payments", "db").await.unwrap_err();
    assert!(
        matches!(
            err,
            SecretsError::Rotation {
                step: RotationStep::SetPassword,
                ..
            }
        ),
        "{err}"
    );
    assert!(login(&pg, &role, "keep-me").await);
    // Rotation outcomes are on record.
    let rec = k
        .audit
        .search(&Query {
            action: Some("secrets:rotated".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(rec.len(), 3);
    assert!(rec.iter().all(|r| r.event.outcome == Outcome::Error));
    admin_exec(&pg, &format!("DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rotation_interrupted_by_a_crash_is_settled() {
    let Some(pg) = pg_url() else { return };
    let k = kit().await;
    let s = &k.secrets;
    let role = format!("app_crash_{}", std::process::id());
    create_login_role(&pg, &role, "before-crash").await;
    let admin = PostgresAdmin::Inline {
        user: pg.user.clone(),
        password: pg.password.clone(),
    };
    s.put(
        &payments(),
        "payments",
        "db",
        &app_secret(&pg, &role, "before-crash", admin),
        SecretKind::Postgres,
    )
    .await
    .unwrap();

    // Killed after the server took the new password: the stored current
    // version no longer logs in until the staged one is settled.
    s.inject_rotation_fault(Some(RotationFault::CrashAfterSet));
    s.rotate(&payments(), "payments", "db").await.unwrap_err();
    s.inject_rotation_fault(None);
    assert!(!login(&pg, &role, "before-crash").await);
    let cur = s.get(&payments(), "payments", "db", None).await.unwrap();
    assert_eq!(cur.version, 1);
    // Too fresh to be left over: a rotation may still be running.
    assert!(s
        .reconcile_pending(k.clock.unix_secs())
        .await
        .unwrap()
        .is_empty());
    k.clock
        .advance(Duration::from_secs(rampart_secrets::STALE_PENDING_SECS));
    let done = s.reconcile_pending(k.clock.unix_secs()).await.unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(*done[0].1.as_ref().unwrap(), Reconciled::Promoted(2));
    let cur = s.get(&payments(), "payments", "db", None).await.unwrap();
    assert_eq!(cur.version, 2);
    assert!(
        login(&pg, &role, &password_of(&cur)).await,
        "the settled version logs in"
    );

    // Killed after staging, before the server was asked: the staged
    // version is dropped and the current one still works.
    s.inject_rotation_fault(Some(RotationFault::CrashAfterStage));
    s.rotate(&payments(), "payments", "db").await.unwrap_err();
    s.inject_rotation_fault(None);
    k.clock
        .advance(Duration::from_secs(rampart_secrets::STALE_PENDING_SECS));
    let done = s.reconcile_pending(k.clock.unix_secs()).await.unwrap();
    assert_eq!(*done[0].1.as_ref().unwrap(), Reconciled::Dropped);
    let cur2 = s.get(&payments(), "payments", "db", None).await.unwrap();
    assert_eq!(cur2.version, 2);
    assert!(login(&pg, &role, &password_of(&cur2)).await);

    // While a staged version is fresh, it may be another node's rotation
    // under way: a second rotation is refused rather than racing it (two
    // rotations each setting a password could leave the server with the
    // one the store does not hold). Once stale, an on-demand rotation
    // settles it first.
    s.inject_rotation_fault(Some(RotationFault::CrashAfterSet));
    s.rotate(&payments(), "payments", "db").await.unwrap_err();
    s.inject_rotation_fault(None);
    assert!(matches!(
        s.rotate(&payments(), "payments", "db").await,
        Err(SecretsError::RotationInProgress { .. })
    ));
    k.clock
        .advance(Duration::from_secs(rampart_secrets::STALE_PENDING_SECS));
    let v = s.rotate(&payments(), "payments", "db").await.unwrap();
    let cur3 = s.get(&payments(), "payments", "db", None).await.unwrap();
    assert_eq!(cur3.version, v);
    assert!(login(&pg, &role, &password_of(&cur3)).await);
    let settled = k
        .audit
        .search(&Query {
            action: Some("secrets:rotation-reconciled".into()),
            ..Query::default()
        })
        .unwrap();
    assert_eq!(settled.len(), 3, "each settlement is on record");
    admin_exec(&pg, &format!("DROP ROLE {role}")).await;
}

/// Two nodes over one store rotate the same password at once: one claims
/// the rotation by staging first, the other is refused before it touches
/// the server, and the stored password is the one that logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_on_two_nodes_leave_one_working_password() {
    let Some(pg) = pg_url() else { return };
    let k = kit().await;
    let other_node = SecretService::new(k.secrets.keys().clone(), k.store.clone(), k.clock.clone());
    let role = format!("app_race_{}", std::process::id());
    create_login_role(&pg, &role, "before-race").await;
    let admin = PostgresAdmin::Inline {
        user: pg.user.clone(),
        password: pg.password.clone(),
    };
    k.secrets
        .put(
            &payments(),
            "payments",
            "db",
            &app_secret(&pg, &role, "before-race", admin),
            SecretKind::Postgres,
        )
        .await
        .unwrap();
    let caller = payments();
    for round in 0..4 {
        let (a, b) = tokio::join!(
            k.secrets.rotate(&caller, "payments", "db"),
            other_node.rotate(&caller, "payments", "db"),
        );
        let won = usize::from(a.is_ok()) + usize::from(b.is_ok());
        assert!(won <= 1, "round {round}: both rotated");
        for r in [&a, &b] {
            if let Err(e) = r {
                assert!(
                    matches!(
                        e,
                        SecretsError::RotationInProgress { .. } | SecretsError::Conflict(_)
                    ),
                    "round {round}: {e}"
                );
            }
        }
        let cur = k
            .secrets
            .get(&payments(), "payments", "db", None)
            .await
            .unwrap();
        assert!(
            login(&pg, &role, &password_of(&cur)).await,
            "round {round}: the stored password logs in"
        );
        let cur_other = other_node
            .get(&payments(), "payments", "db", None)
            .await
            .unwrap();
        assert_eq!(cur_other.version, cur.version);
    }
    admin_exec(&pg, &format!("DROP ROLE {role}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_generic_secret_is_refused() {
    let k = kit().await;
    k.secrets
        .put(&payments(), "payments", "x", b"y", SecretKind::Generic)
        .await
        .unwrap();
    assert!(matches!(
        k.secrets.rotate(&payments(), "payments", "x").await,
        Err(SecretsError::NotRotatable(_))
    ));
    assert!(matches!(
        k.secrets
            .set_rotation(&payments(), "payments", "x", Some(30))
            .await,
        Err(SecretsError::NotRotatable(_))
    ));
}

/// A `postgres` secret pointing at an unreachable server (rotation would
/// fail at its first connection), with admin credentials from `admin`.
fn unreachable_pg(admin: PostgresAdmin) -> Vec<u8> {
    serde_json::to_vec(&PostgresSecret {
        host: "127.0.0.1".into(),
        port: 1,
        dbname: "app".into(),
        user: "app".into(),
        password: "old-password".into(),
        admin,
        tls_ca: None,
    })
    .unwrap()
}

/// payments' `pg-admin` secret (kept by ops), and a DBA who may write and
/// rotate `payments/db` but not read `pg-admin`.
async fn admin_secret_and_a_dba(s: &SecretService) -> Caller {
    s.put(
        &ops(),
        "payments",
        "pg-admin",
        &unreachable_pg(PostgresAdmin::Inline {
            user: "postgres".into(),
            password: "root-pw".into(),
        }),
        SecretKind::Postgres,
    )
    .await
    .unwrap();
    let mut policy = (*s.keys().policies().get("prod").await.unwrap()).clone();
    policy.push(stmt(
        "dba",
        &["role:dba"],
        &["secrets:put", "secrets:rotate"],
        &["secret:payments/db"],
    ));
    policy.push(via_secrets(stmt(
        "dba-keys",
        &["role:dba"],
        &["keys:generate-data-key", "keys:decrypt"],
        &["key:svc.payments"],
    )));
    s.keys().policies().set("prod", policy).await.unwrap();
    Caller::direct(Principal::user("prod", "dave", &["dba"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_needs_the_right_to_read_the_admin_secret_it_uses() {
    let k = kit().await;
    let s = &k.secrets;
    // ops keeps the admin credentials; a DBA may write and rotate the
    // application's secret, but not read the admin one.
    let dba = admin_secret_and_a_dba(s).await;
    assert!(matches!(
        s.get(&dba, "payments", "pg-admin", None).await,
        Err(SecretsError::Denied { .. })
    ));
    // Without the check, rotation would log in to the server the secret
    // names (any host) with the admin's password, for a caller who may
    // not see it.
    s.put(
        &ops(),
        "payments",
        "db",
        &unreachable_pg(PostgresAdmin::Secret {
            name: "pg-admin".into(),
        }),
        SecretKind::Postgres,
    )
    .await
    .unwrap();
    let err = s.rotate(&dba, "payments", "db").await.unwrap_err();
    assert!(matches!(err, SecretsError::Denied { .. }), "{err}");
    // A deleted admin secret is not used either.
    s.delete(&ops(), "payments", "pg-admin", None)
        .await
        .unwrap();
    let err = s.rotate(&ops(), "payments", "db").await.unwrap_err();
    assert!(matches!(err, SecretsError::Deleted { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_values_never_appear_in_errors_or_the_audit_log() {
    let k = kit().await;
    let s = &k.secrets;
    // A generic secret that happens to be JSON, named as the admin
    // secret of a postgres one: it does not parse as one.
    s.put(
        &payments(),
        "payments",
        "pin",
        b"918273645",
        SecretKind::Generic,
    )
    .await
    .unwrap();
    s.put(
        &payments(),
        "payments",
        "db",
        &unreachable_pg(PostgresAdmin::Secret { name: "pin".into() }),
        SecretKind::Postgres,
    )
    .await
    .unwrap();
    let err = s.rotate(&payments(), "payments", "db").await.unwrap_err();
    assert!(!err.to_string().contains("918273645"), "{err}");
    assert!(!format!("{err:?}").contains("918273645"), "{err:?}");
    // A postgres value of the wrong shape: its fields are not echoed.
    let bad = br#"{"host":"h","port":1,"dbname":"d","user":"u","password":4711471147,"admin":{"type":"secret","name":"x"}}"#;
    let err = s
        .put(&payments(), "payments", "db2", bad, SecretKind::Postgres)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("4711471147"), "{err}");
    let bad = br#"{"host":"h","port":"pw-in-the-wrong-field","dbname":"d","user":"u","password":"p","admin":{"type":"secret","name":"x"}}"#;
    let err = s
        .put(&payments(), "payments", "db2", bad, SecretKind::Postgres)
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("pw-in-the-wrong"), "{err}");
    let records = k.audit.search(&Query::default()).unwrap();
    assert!(records.iter().any(|r| r.event.action == "secrets:rotated"));
    for r in records {
        let text = format!("{:?}", r.event);
        assert!(!text.contains("918273645"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_secret_cannot_be_restored_once_its_window_has_ended() {
    let k = kit().await;
    let s = &k.secrets;
    s.put(&payments(), "payments", "db", b"pw", SecretKind::Generic)
        .await
        .unwrap();
    let until = s.delete(&payments(), "payments", "db", None).await.unwrap();
    // The scheduler has not purged it yet: the window is over all the same.
    k.clock.advance(Duration::from_secs(until - T0));
    let err = s.restore(&payments(), "payments", "db").await.unwrap_err();
    assert!(matches!(err, SecretsError::InvalidRequest(_)), "{err}");
    assert!(matches!(
        s.get(&payments(), "payments", "db", None).await,
        Err(SecretsError::Deleted { .. })
    ));
    assert_eq!(
        s.purge_due(k.clock.unix_secs()).await.unwrap(),
        vec!["prod/payments/db".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_secrets_mapped_to_one_variable_are_refused() {
    let k = kit().await;
    let s = &k.secrets;
    for (name, value) in [("db-password", "one"), ("db-password-old", "two")] {
        s.put(
            &payments(),
            "payments",
            name,
            value.as_bytes(),
            SecretKind::Generic,
        )
        .await
        .unwrap();
    }
    let mapping: BTreeMap<String, String> = [
        ("db-password".to_string(), "DB_PASSWORD".to_string()),
        ("db-password-old".to_string(), "DB_PASSWORD".to_string()),
    ]
    .into();
    let err = s
        .resolve_env(&payments(), "payments", &mapping)
        .await
        .unwrap_err();
    assert!(matches!(err, SecretsError::InvalidRequest(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_a_postgres_secret_that_names_an_admin_secret_needs_the_right_to_read_it() {
    let k = kit().await;
    let s = &k.secrets;
    let dba = admin_secret_and_a_dba(s).await;
    // Otherwise the DBA could name any host and the admin secret, schedule
    // a rotation, and the scheduler (which policy does not stop) would log
    // in there with the admin's password.
    let evil = unreachable_pg(PostgresAdmin::Secret {
        name: "pg-admin".into(),
    });
    let err = s
        .put(&dba, "payments", "db", &evil, SecretKind::Postgres)
        .await
        .unwrap_err();
    assert!(matches!(err, SecretsError::Denied { .. }), "{err}");
    assert!(matches!(
        s.get(&ops(), "payments", "db", None).await,
        Err(SecretsError::NotFound(_))
    ));
    // Inline admin credentials are the writer's own business.
    let inline = unreachable_pg(PostgresAdmin::Inline {
        user: "postgres".into(),
        password: "mine".into(),
    });
    s.put(&dba, "payments", "db", &inline, SecretKind::Postgres)
        .await
        .unwrap();
    // A bad admin secret name is refused as it is written.
    let bad = unreachable_pg(PostgresAdmin::Secret {
        name: "../pg-admin".into(),
    });
    assert!(s
        .put(&ops(), "payments", "db2", &bad, SecretKind::Postgres)
        .await
        .is_err());
}

/// A value written while a rotation's version is staged gets a number
/// after it; once the staged version is made current, the next value must
/// not reuse a number already given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_numbers_are_never_reused_after_a_write_during_a_rotation() {
    let Some(pg) = pg_url() else { return };
    let k = kit().await;
    let s = &k.secrets;
    let role = format!("app_renum_{}", std::process::id());
    create_login_role(&pg, &role, "first").await;
    let admin = || PostgresAdmin::Inline {
        user: pg.user.clone(),
        password: pg.password.clone(),
    };
    let value = |pw: &str| app_secret(&pg, &role, pw, admin());
    s.put(
        &payments(),
        "payments",
        "db",
        &value("first"),
        SecretKind::Postgres,
    )
    .await
    .unwrap();
    // Interrupted after the server took version 2's password.
    s.inject_rotation_fault(Some(RotationFault::CrashAfterSet));
    s.rotate(&payments(), "payments", "db").await.unwrap_err();
    s.inject_rotation_fault(None);
    let v3 = s
        .put(
            &payments(),
            "payments",
            "db",
            &value("written"),
            SecretKind::Postgres,
        )
        .await
        .unwrap();
    assert_eq!(v3, 3);
    k.clock
        .advance(Duration::from_secs(rampart_secrets::STALE_PENDING_SECS));
    let done = s.reconcile_pending(k.clock.unix_secs()).await.unwrap();
    assert_eq!(*done[0].1.as_ref().unwrap(), Reconciled::Promoted(2));
    let v = s
        .put(
            &payments(),
            "payments",
            "db",
            &value("later"),
            SecretKind::Postgres,
        )
        .await
        .unwrap();
    assert_eq!(v, 4);
    let meta = s.list(&payments(), "payments").await.unwrap();
    let mut versions = meta[0].versions.clone();
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len(),
        meta[0].versions.len(),
        "{:?}",
        meta[0].versions
    );
    assert_eq!(
        password_of(&s.get(&payments(), "payments", "db", Some(3)).await.unwrap()),
        "written"
    );
    assert_eq!(
        password_of(&s.get(&payments(), "payments", "db", None).await.unwrap()),
        "later"
    );
    admin_exec(&pg, &format!("DROP ROLE {role}")).await;
}

/// Whoever can write the store (a shared database) but not the service's
/// key must not be able to plant a value: a version whose data key is
/// wrapped under another key, even one the reader may use, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_data_key_is_under_another_key_is_refused() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let k = kit().await;
    let s = &k.secrets;
    s.put(&payments(), "payments", "db", b"real", SecretKind::Generic)
        .await
        .unwrap();
    // A data key the attacker knows, made under orders' key (which ops,
    // the reader, may also use) with the context of payments/db v2.
    let orders_key = rampart_secrets::service_key_name("orders");
    s.keys()
        .ensure_key("prod", &orders_key, Default::default())
        .await
        .unwrap();
    let context: BTreeMap<String, String> = [
        ("environment", "prod"),
        ("service", "payments"),
        ("secret", "db"),
        ("version", "2"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let dk = s
        .keys()
        .generate_data_key(&Caller::system("prod", "attacker"), &orders_key, &context)
        .await
        .unwrap();
    let sealed =
        rampart_crypto::seal(&dk.plaintext, "secret", b"planted", b"prod/payments/db/v2").unwrap();
    let raw = k
        .store
        .get("secrets", "prod/payments/db")
        .await
        .unwrap()
        .unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&raw.value).unwrap();
    record["versions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "version": 2,
            "created_at": T0,
            "wrapped_key": b64.encode(&dk.wrapped),
            "sealed": b64.encode(sealed),
        }));
    k.store
        .put(
            "secrets",
            "prod/payments/db",
            &serde_json::to_vec(&record).unwrap(),
            rampart_store::Expect::Any,
        )
        .await
        .unwrap();
    let got = s.get(&ops(), "payments", "db", None).await;
    assert!(
        !matches!(&got, Ok(v) if v.value.expose() == b"planted"),
        "a planted value was served"
    );
    assert!(matches!(got, Err(SecretsError::Corrupt(_))), "{got:?}");
    // The genuine version still opens.
    assert_eq!(
        s.get(&ops(), "payments", "db", Some(1))
            .await
            .unwrap()
            .value
            .expose(),
        b"real"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_whose_version_number_a_write_took_stops_before_the_server() {
    let (k, h) = held_kit().await;
    // No server listens there: a rotation that got as far as setting the
    // password would fail at that step.
    let value = serde_json::to_vec(&PostgresSecret {
        host: "127.0.0.1".into(),
        port: 9,
        dbname: "postgres".into(),
        user: "app".into(),
        password: "initial-pw".into(),
        admin: PostgresAdmin::Inline {
            user: "admin".into(),
            password: "admin-pw".into(),
        },
        tls_ca: None,
    })
    .unwrap();
    let s = k.secrets.clone();
    s.put(&ops(), "payments", "db", &value, SecretKind::Postgres)
        .await
        .unwrap();
    h.hold_next_read("secrets");
    let rotating = {
        let s = s.clone();
        tokio::spawn(async move { s.rotate(&ops(), "payments", "db").await })
    };
    h.reached().await;
    // A write lands while the rotation prepares version 2.
    assert_eq!(
        s.put(&ops(), "payments", "db", &value, SecretKind::Postgres)
            .await
            .unwrap(),
        2
    );
    h.release();
    match rotating.await.unwrap() {
        Err(SecretsError::Rotation { step, .. }) => assert_eq!(step, RotationStep::Stage),
        other => panic!("expected the rotation to stop at staging, got {other:?}"),
    }
    // Versions 1 and 2 as written, 2 current, and no staged third.
    let current = s.get(&ops(), "payments", "db", None).await.unwrap();
    assert_eq!(current.version, 2);
    assert!(s.get(&ops(), "payments", "db", Some(1)).await.is_ok());
    assert!(s.get(&ops(), "payments", "db", Some(3)).await.is_err());
    assert!(s
        .reconcile_pending(k.clock.unix_secs())
        .await
        .unwrap()
        .is_empty());
}

/// Two nodes purge at once: the one whose listing went stale skips what
/// the other purged, without an error, and reports only what it purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_that_races_another_node_skips_what_that_node_purged() {
    let (k, h) = held_kit().await;
    let s = k.secrets.clone();
    for name in ["a", "b"] {
        s.put(&ops(), "payments", name, b"v", SecretKind::Generic)
            .await
            .unwrap();
        s.delete(&ops(), "payments", name, None).await.unwrap();
    }
    k.clock.advance(Duration::from_secs(8 * DAY));
    let now = k.clock.unix_secs();
    h.hold_next_read("secrets");
    let stale = {
        let s = s.clone();
        tokio::spawn(async move { s.purge_due(now).await })
    };
    h.reached().await;
    assert_eq!(s.purge_due(now).await.unwrap().len(), 2);
    h.release();
    assert_eq!(stale.await.unwrap().unwrap(), Vec::<String>::new());
}

/// A secret naming a server on another machine must say which CA signs
/// its certificate: credentials never go there over plain TCP.
#[tokio::test]
async fn a_postgres_secret_off_loopback_needs_a_ca_and_a_usable_one() {
    let k = kit().await;
    let s = &k.secrets;
    let secret = |host: &str, tls_ca: Option<&str>| {
        serde_json::to_vec(&PostgresSecret {
            host: host.into(),
            port: 5432,
            dbname: "app".into(),
            user: "app".into(),
            password: "pw".into(),
            admin: PostgresAdmin::Inline {
                user: "admin".into(),
                password: "admin-pw".into(),
            },
            tls_ca: tls_ca.map(str::to_owned),
        })
        .unwrap()
    };
    for host in [
        "db.internal",
        "10.0.0.5",
        "::ffff:10.0.0.5",
        "[2001:db8::1]",
    ] {
        match s
            .put(
                &ops(),
                "payments",
                "db",
                &secret(host, None),
                SecretKind::Postgres,
            )
            .await
        {
            Err(SecretsError::InvalidField { field, message }) => {
                assert_eq!(field, "tls_ca");
                assert!(message.contains("not loopback"), "{message}");
            }
            other => panic!("{host}: {other:?}"),
        }
    }
    let junk = "-----BEGIN CERTIFICATE-----\nc2VjcmV0LWlzaA==\n-----END CERTIFICATE-----\n";
    for ca in ["hunter2", junk] {
        match s
            .put(
                &ops(),
                "payments",
                "db",
                &secret("db.internal", Some(ca)),
                SecretKind::Postgres,
            )
            .await
        {
            Err(
                e @ SecretsError::InvalidField {
                    field: "tls_ca", ..
                },
            ) => {
                assert!(!e.to_string().contains("hunter2"), "{e}");
            }
            other => panic!("{ca}: {other:?}"),
        }
    }
    // Loopback may go without TLS, as before.
    for host in ["127.0.0.1", "localhost", "::1"] {
        s.put(
            &ops(),
            "payments",
            "db",
            &secret(host, None),
            SecretKind::Postgres,
        )
        .await
        .unwrap();
    }
}

/// Rotation over TLS: with the CA that signed the server's certificate it
/// goes through (channel binding required); with another CA the server is
/// not trusted, nothing is sent, and the old password stays current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rotation_over_tls_checks_the_servers_certificate() {
    let Some(pg) = pg_url() else { return };
    let (Ok(ca), Ok(other_ca)) = (
        std::env::var("RAMPART_TEST_PG_CA"),
        std::env::var("RAMPART_TEST_PG_OTHER_CA"),
    ) else {
        println!("SKIP: RAMPART_TEST_PG_CA is not set; run under scripts/with-postgres");
        return;
    };
    let ca = std::fs::read_to_string(ca).unwrap();
    let other_ca = std::fs::read_to_string(other_ca).unwrap();
    let k = kit().await;
    let s = &k.secrets;
    let role = format!("tls_{}", T0 % 100_000 + u64::from(std::process::id()));
    create_login_role(&pg, &role, "initial-pw").await;
    let value = |tls_ca: &str| {
        serde_json::to_vec(&PostgresSecret {
            // The name the server's certificate carries.
            host: "localhost".into(),
            port: pg.port,
            dbname: "postgres".into(),
            user: role.clone(),
            password: "initial-pw".into(),
            admin: PostgresAdmin::Inline {
                user: pg.user.clone(),
                password: pg.password.clone(),
            },
            tls_ca: Some(tls_ca.to_owned()),
        })
        .unwrap()
    };

    s.put(
        &ops(),
        "payments",
        "db",
        &value(&other_ca),
        SecretKind::Postgres,
    )
    .await
    .unwrap();
    let refused = s.rotate(&ops(), "payments", "db").await;
    let msg = format!("{refused:?}");
    assert!(refused.is_err() && msg.contains("certificate"), "{msg}");
    assert!(!msg.contains(&pg.password), "{msg}");
    assert!(login(&pg, &role, "initial-pw").await, "old password kept");

    s.put(&ops(), "payments", "db", &value(&ca), SecretKind::Postgres)
        .await
        .unwrap();
    let v = s.rotate(&ops(), "payments", "db").await.unwrap();
    let new = s.get(&ops(), "payments", "db", Some(v)).await.unwrap();
    let pw = password_of(&new);
    assert!(login(&pg, &role, &pw).await, "new password works");
    assert!(!login(&pg, &role, "initial-pw").await);
}
