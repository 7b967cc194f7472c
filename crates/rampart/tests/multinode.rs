//! End-to-end: two nodes, each the real binary with a data directory of its
//! own, sharing one PostgreSQL store (`[store] backend = "postgres"`). The
//! second node joins with the first one's root key; keys, policies,
//! principals, API keys and revocations made through one node hold on the
//! other. Runs when `RAMPART_TEST_PG_URL` names a server (`scripts/test`
//! starts one).

mod util;

use std::time::{Duration, Instant};

use serde_json::json;
use util::{credential, stderr, stdout, Rampart, Resp, Server};

fn config(node: &str) -> String {
    format!(
        r#"
[node]
name = "{node}"

[store]
backend = "postgres"
url_env = "RAMPART_DATABASE_URL"
reload_interval_ms = 200

[[environments]]
name = "prod"

[[services]]
name = "api"
environment = "prod"
port = 8080

[[services]]
name = "billing"
environment = "prod"
port = 8081

[[keys]]
name = "api-data"
environment = "prod"
service = "api"

# Long enough that the throttled attempt lands inside the wait: delays count
# in whole seconds, so a 1 s delay imposed at x.999 s is over 1 ms later.
[identity.throttle]
base_delay_seconds = 30
"#
    )
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Retries `check` for a few seconds: a change made through one node
/// reaches the other within its reload interval or key cache time.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rampart init` for a node of the shared store at `db`; with `root_key`
/// it joins a store another node initialised.
fn init_node(r: &Rampart, db: &str, root_key: Option<&str>) -> std::process::Output {
    let mut c = r.cmd(&["init", "--config", "rampart.toml", "--data-dir", "data"]);
    c.env("RAMPART_DATABASE_URL", db);
    if let Some(k) = root_key {
        c.env("RAMPART_ROOT_KEY", k);
    }
    c.output().unwrap()
}

/// `rampart up` for a node of the shared store at `db`, its control API on
/// `control`, with `env` set too.
fn up_node(r: &Rampart, db: &str, control: &str, env: &[(&str, &str)]) -> Server {
    let mut c = r.cmd(&[]);
    c.env("RAMPART_DATABASE_URL", db);
    c.envs(env.iter().copied());
    r.up_with(
        c,
        &[
            "--config",
            "rampart.toml",
            "--data-dir",
            "data",
            "--control-listen",
            control,
        ],
    )
}

/// Failed logins for one account, odd attempts through `a` and even ones
/// through `b`, each refused with 401, until one is refused with 429 (or
/// `most` attempts): that attempt and its answer.
fn failed_logins_until_throttled(a: &Server, b: &Server, most: u32) -> Option<(u32, Resp)> {
    for attempt in 1..=most {
        let srv = if attempt % 2 == 1 { a } else { b };
        let r = srv.post(
            "/v1/auth/login",
            None,
            json!({"username": "mallory", "password": "guessing-password-1"}),
        );
        if r.status == 429 {
            return Some((attempt, r));
        }
        assert_eq!(r.status, 401, "attempt {attempt}: {}", r.body);
    }
    None
}

#[test]
fn two_nodes_share_one_postgres_store() {
    let Some(db) = util::fresh_pg_database() else {
        return;
    };
    let (a, b) = (Rampart::new(), Rampart::new());
    std::fs::write(a.path("rampart.toml"), config("node-a")).unwrap();
    std::fs::write(b.path("rampart.toml"), config("node-b")).unwrap();
    let init = |r: &Rampart, root_key: Option<&str>| init_node(r, &db, root_key);

    // Without the variable naming the database: refused, naming it.
    let out = a
        .cmd(&["init", "--config", "rampart.toml", "--data-dir", "data"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("RAMPART_DATABASE_URL is not set"),
        "{}",
        stderr(&out)
    );
    assert!(!a.path("data").exists());

    // Node A initialises the shared store: no database file of its own.
    let out = init(&a, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let admin = credential(&stdout(&out));
    assert!(
        stdout(&out).contains("other nodes join it"),
        "{}",
        stdout(&out)
    );
    assert!(!a.path("data/rampart.db").exists());
    let root_key = std::fs::read_to_string(a.path("data/root.key")).unwrap();
    let root_key = root_key.trim();

    // Node B without the root key, or with another one: refused, nothing
    // left behind, and the password in the URL never printed.
    let password = db
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_string())
        .unwrap();
    let out = init(&b, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already initialised") && stderr(&out).contains("RAMPART_ROOT_KEY"),
        "{}",
        stderr(&out)
    );
    assert!(!b.path("data").exists());
    let other_key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    };
    let out = init(&b, Some(&other_key));
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "error: root key does not match this data directory"
    );
    assert!(!b.path("data").exists());

    // With it, node B joins: no new admin, the key file in its place.
    let out = init(&b, Some(root_key));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("joined the shared PostgreSQL store"));
    assert!(!stdout(&out).contains("rk_admin_"));
    assert_eq!(
        std::fs::read_to_string(b.path("data/root.key"))
            .unwrap()
            .trim(),
        root_key
    );
    assert!(!stdout(&out).contains(&password) && !stderr(&out).contains(&password));

    // Both nodes up.
    // B's control API on another loopback address: clients that trust the
    // shared development CA reach it there, so its certificate names B's
    // own address (each node has its own, issued when it starts).
    let (srv_a, srv_b) = (
        up_node(&a, &db, "127.0.0.1:0", &[]),
        up_node(&b, &db, "127.0.0.2:0", &[]),
    );
    assert!(srv_b.addr.starts_with("127.0.0.2:"), "{}", srv_b.addr);
    let admin = Some(admin.as_str());
    assert_eq!(srv_b.get("/v1/whoami", admin).status, 200);
    let status = srv_b.get("/v1/status", admin).json();
    assert_eq!(status["store"]["backend"], "postgres", "{status}");

    // Failed logins spread over both nodes are counted once: five are free,
    // the sixth imposes a wait, so the seventh attempt is refused with 429
    // whichever node it reaches (each node alone has seen at most four).
    let refused = failed_logins_until_throttled(&srv_a, &srv_b, 7);
    assert_eq!(refused.map(|(attempt, _)| attempt), Some(7));

    // A ciphertext made through A opens through B, with its context.
    let ct = srv_a.post(
        "/v1/keys/prod/api-data/encrypt",
        admin,
        json!({"plaintext": b64("card 4111"), "context": {"tenant": "acme"}}),
    );
    assert_eq!(ct.status, 200, "{}", ct.body);
    let ciphertext = ct.json()["ciphertext"].as_str().unwrap().to_string();
    let pt = srv_b.post(
        "/v1/keys/prod/decrypt",
        admin,
        json!({"ciphertext": ciphertext, "context": {"tenant": "acme"}}),
    );
    assert_eq!(pt.status, 200, "{}", pt.body);
    assert_eq!(pt.json()["plaintext"], b64("card 4111"));

    // A service principal and its API key made on A work on B; a policy
    // set on A decides on B.
    let made = srv_a.post(
        "/v1/users",
        admin,
        json!({"name": "billing", "kind": "service", "roles": [], "environments": ["prod"]}),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let key = srv_a.post(
        "/v1/apikeys",
        admin,
        json!({"environment": "prod", "owner": "billing", "name": "deploy"}),
    );
    assert_eq!(key.status, 201, "{}", key.body);
    let key_id = key.json()["info"]["id"].as_str().unwrap().to_string();
    let billing = key.json()["key"].as_str().unwrap().to_string();
    let billing = Some(billing.as_str());
    let encrypt_as_billing = |srv: &util::Server| {
        srv.post(
            "/v1/keys/prod/api-data/encrypt",
            billing,
            json!({"plaintext": b64("x"), "context": {"tenant": "acme"}}),
        )
        .status
    };
    // Known on B (within its reload interval), and denied: no policy yet.
    eventually("B knows billing's key", || {
        srv_b.get("/v1/whoami", billing).status == 200
    });
    assert_eq!(encrypt_as_billing(&srv_b), 403);
    let policy = srv_a.send(
        "PUT",
        "/v1/policies/prod",
        admin,
        &json!({"statements": [
            {"id": "platform-admin", "effect": "allow", "principals": ["role:admin"],
             "actions": ["*"], "resources": ["*"]},
            {"id": "billing-encrypts", "effect": "allow", "principals": ["service:billing"],
             "actions": ["keys:encrypt"], "resources": ["key:api-data"]},
        ]})
        .to_string(),
    );
    assert_eq!(policy.status, 200, "{}", policy.body);
    assert_eq!(encrypt_as_billing(&srv_a), 200);
    eventually("B applies A's policy", || encrypt_as_billing(&srv_b) == 200);

    // Revoked on A: refused on B too.
    let revoked = srv_a.request("DELETE", &format!("/v1/apikeys/{key_id}"), admin);
    assert!(revoked.status < 300, "{} {}", revoked.status, revoked.body);
    assert_eq!(srv_a.get("/v1/whoami", billing).status, 401);
    eventually("B refuses the revoked key", || {
        srv_b.get("/v1/whoami", billing).status == 401
    });

    // Each node keeps its own audit log, with its own name on its records.
    let events = srv_b
        .get("/v1/audit/events?tier=security&outcome=denied", admin)
        .json();
    let items = events["events"].as_array().unwrap();
    assert!(
        !items.is_empty() && items.iter().all(|e| e["node"] == "node-b"),
        "{events}"
    );
    let (sa, _) = srv_a.terminate();
    let (sb, _) = srv_b.terminate();
    assert!(sa.success() && sb.success());
}

/// Two nodes on one PostgreSQL store and one Redis (`[redis]`, so the login
/// throttle counts there): failed logins spread over both nodes are
/// counted once, so the seventh is refused with 429 and the sixth's delay
/// as Retry-After whichever node it reaches, and each node's `/metrics` shows its calls to
/// Redis. Runs when both `RAMPART_TEST_PG_URL` and `RAMPART_TEST_REDIS_URL`
/// name a server (`scripts/test` starts both).
#[test]
fn two_nodes_throttle_logins_through_redis() {
    let Some(redis_url) = util::test_redis_url() else {
        return;
    };
    let Some(db) = util::fresh_pg_database() else {
        return;
    };
    let prefix = format!("e2e-throttle-{}:", std::process::id());
    let (a, b) = (Rampart::new(), Rampart::new());
    for (r, name) in [(&a, "node-a"), (&b, "node-b")] {
        let with_redis = format!(
            "{}\n[redis]\nurl_env = \"THROTTLE_REDIS_URL\"\nkey_prefix = \"{prefix}\"\n",
            config(name)
        );
        std::fs::write(r.path("rampart.toml"), with_redis).unwrap();
    }
    let out = init_node(&a, &db, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let root_key = std::fs::read_to_string(a.path("data/root.key")).unwrap();
    let out = init_node(&b, &db, Some(root_key.trim()));
    assert!(out.status.success(), "{}", stderr(&out));
    let env = [("THROTTLE_REDIS_URL", redis_url.as_str())];
    let (srv_a, srv_b) = (
        up_node(&a, &db, "127.0.0.1:0", &env),
        up_node(&b, &db, "127.0.0.2:0", &env),
    );

    let (attempt, r) = failed_logins_until_throttled(&srv_a, &srv_b, 7).expect("never throttled");
    assert_eq!(attempt, 7);
    // 30 s from the sixth failure (a second may have ticked since).
    let wait = r.retry_after.as_deref().and_then(|w| w.parse::<u64>().ok());
    assert!(matches!(wait, Some(29 | 30)), "{wait:?}: {}", r.body);

    for srv in [&srv_a, &srv_b] {
        let metrics = srv.get("/metrics", None).body;
        let calls = |result: &str| {
            let line = format!("rampart_login_throttle_redis_calls_total{{result=\"{result}\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(line.as_str()))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {line}in {metrics}"))
        };
        assert!(calls("ok") >= 3, "{metrics}");
        assert_eq!(calls("failed"), 0, "{metrics}");
    }
}
