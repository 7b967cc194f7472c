//! End-to-end: the keys, secrets and audit planes through the real binary,
//! its control API and its client commands.

mod util;

use serde_json::json;
use util::{stderr, stdout, Rampart};

const CONFIG: &str = r#"
[node]
name = "e2e-1"

[[environments]]
name = "prod"

[[environments]]
name = "dev"

[[services]]
name = "api"
environment = "prod"
port = 8080
secrets = { DB_PASSWORD = "db-password" }

[[services]]
name = "billing"
environment = "prod"
port = 8081

[[keys]]
name = "api-data"
environment = "prod"
service = "api"
"#;

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Creates the service principal `name` acting in `envs` and returns a new
/// identity API key of it for `env`: the credential a service uses.
fn service_key(srv: &util::Server, admin: &str, name: &str, envs: &[&str], env: &str) -> String {
    let created = srv.post(
        "/v1/users",
        Some(admin),
        json!({"name": name, "kind": "service", "roles": [], "environments": envs}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let key = srv.post(
        "/v1/apikeys",
        Some(admin),
        json!({"environment": env, "owner": name, "name": "deploy"}),
    );
    assert_eq!(key.status, 201, "{}", key.body);
    key.json()["key"].as_str().unwrap().to_string()
}

/// A node with the config above, its admin credential, and a running server.
fn node() -> (Rampart, String, util::Server) {
    let r = Rampart::new();
    std::fs::write(r.path("rampart.toml"), CONFIG).unwrap();
    let cred = r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    (r, cred, srv)
}

#[test]
fn keys_through_the_api_allow_deny_and_refuse_bad_input() {
    let (_r, admin, srv) = node();
    let t = Some(admin.as_str());

    // The declared key exists; encrypt and decrypt round-trip with the context bound.
    let ct = srv.post(
        "/v1/keys/prod/api-data/encrypt",
        t,
        json!({"plaintext": b64("card 4111"), "context": {"tenant": "acme"}}),
    );
    assert_eq!(ct.status, 200, "{}", ct.body);
    let ciphertext = ct.json()["ciphertext"].as_str().unwrap().to_string();
    let pt = srv.post(
        "/v1/keys/prod/decrypt",
        t,
        json!({"ciphertext": ciphertext, "context": {"tenant": "acme"}}),
    );
    assert_eq!(pt.json()["plaintext"], b64("card 4111"));
    // Base64 that is no ciphertext names the field too.
    for path in ["/v1/keys/prod/decrypt", "/v1/keys/prod/rewrap"] {
        let junk = srv.post(path, t, json!({"ciphertext": b64("not a ciphertext")}));
        assert_eq!(junk.status, 400, "{}", junk.body);
        assert_eq!(junk.json()["error"]["field"], "ciphertext", "{}", junk.body);
    }

    // A value out of range is refused with the field named.
    let window = srv.post(
        "/v1/keys/prod/api-data/schedule-deletion",
        t,
        json!({"days": 1}),
    );
    assert_eq!(window.status, 400, "{}", window.body);
    assert_eq!(window.json()["error"]["field"], "days", "{}", window.body);
    let period = srv.post(
        "/v1/keys/prod",
        t,
        json!({"name": "short-lived", "rotation_period_days": 0}),
    );
    assert_eq!(period.status, 400, "{}", period.body);
    assert_eq!(
        period.json()["error"]["field"],
        "rotation_period_days",
        "{}",
        period.body
    );

    // Wrong context, tampered ciphertext, bad base64, unknown field, unknown key: 4xx JSON naming it.
    let wrong = srv.post(
        "/v1/keys/prod/decrypt",
        t,
        json!({"ciphertext": ciphertext, "context": {"tenant": "evil"}}),
    );
    assert_eq!(
        (wrong.status, wrong.json()["error"]["code"].as_str()),
        (400, Some("decryption_failed"))
    );
    let mut raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &ciphertext).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let tampered = srv.post(
        "/v1/keys/prod/decrypt",
        t,
        json!({"ciphertext": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw), "context": {"tenant": "acme"}}),
    );
    assert_eq!(tampered.status, 400);
    let bad = srv.post("/v1/keys/prod/decrypt", t, json!({"ciphertext": "%%%"}));
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["field"], "ciphertext");
    let truncated = srv.post("/v1/keys/prod/decrypt", t, json!({"ciphertext": b64("x")}));
    assert_eq!(truncated.json()["error"]["code"], "malformed_ciphertext");
    let unknown_field = srv.post(
        "/v1/keys/prod/api-data/encrypt",
        t,
        json!({"plaintext": b64("x"), "contxt": {}}),
    );
    assert_eq!(unknown_field.status, 400);
    assert_eq!(unknown_field.json()["error"]["field"], "contxt");
    let malformed = srv.send("POST", "/v1/keys/prod/decrypt", t, "{\"ciphertext\": ");
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["error"]["code"], "invalid_body");
    let nokey = srv.post(
        "/v1/keys/prod/nope/encrypt",
        t,
        json!({"plaintext": b64("x")}),
    );
    assert_eq!(nokey.status, 404);
    let huge = srv.post(
        "/v1/keys/prod/api-data/encrypt",
        t,
        json!({"plaintext": b64(&"x".repeat(100_000))}),
    );
    assert_eq!(huge.status, 413, "{}", huge.body);

    // A service authenticates with its service principal's identity API key:
    // billing may not use api's key (default deny), and a prod key can never
    // act in dev.
    let billing = service_key(&srv, &admin, "billing", &["prod"], "prod");
    assert!(billing.starts_with("rk_prod_"), "{billing}");
    let me = srv.get("/v1/whoami", Some(&billing)).json();
    assert_eq!(
        (me["kind"].as_str(), me["name"].as_str()),
        (Some("service"), Some("billing"))
    );
    let denied = srv.post(
        "/v1/keys/prod/api-data/encrypt",
        Some(&billing),
        json!({"plaintext": b64("x")}),
    );
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert_eq!(denied.json()["error"]["code"], "forbidden");
    let cross_env = srv.post(
        "/v1/keys/dev/anything/encrypt",
        Some(&billing),
        json!({"plaintext": b64("x")}),
    );
    assert_eq!(cross_env.status, 403);
    // A service principal in two environments still gets one per key.
    let both = service_key(&srv, &admin, "reports", &["prod", "dev"], "dev");
    let walled = srv.post(
        "/v1/keys/prod/api-data/encrypt",
        Some(&both),
        json!({"plaintext": b64("x")}),
    );
    assert_eq!(walled.status, 403, "{}", walled.body);
    // Services cannot mint credentials: no API key for another service or
    // for themselves, no new principal; and the interim tokens are gone.
    for (path, body) in [
        (
            "/v1/apikeys",
            json!({"environment": "prod", "owner": "api"}),
        ),
        ("/v1/apikeys", json!({"environment": "prod"})),
        (
            "/v1/users",
            json!({"name": "evil", "kind": "service", "roles": ["admin"], "environments": ["prod"]}),
        ),
    ] {
        let escalate = srv.post(path, Some(&billing), body);
        assert_eq!(escalate.status, 403, "{path}: {}", escalate.body);
    }
    let gone = srv.post(
        "/v1/tokens",
        t,
        json!({"environment": "prod", "service": "api"}),
    );
    assert_eq!(gone.status, 404, "{}", gone.body);

    // Every decision is in the audit log, denials with their reason.
    let events = srv
        .get("/v1/audit/events?tier=security&outcome=denied", t)
        .json();
    let list = events["events"].as_array().unwrap();
    assert!(
        list.iter().any(|e| e["actor"]["principal"] == "svc:billing"
            && e["action"] == "keys:encrypt"
            && e["reason"].as_str().unwrap_or("").contains("default deny")),
        "{events}"
    );
    let bad_range = srv.get(
        "/v1/audit/events?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
        t,
    );
    assert_eq!(bad_range.status, 400);
}

#[test]
fn secrets_cli_and_run_inject_without_writing_to_disk() {
    let (r, admin, srv) = node();
    let as_ = |token: &str, args: &[&str]| {
        let mut c = r.cmd(args);
        c.env("RAMPART_TOKEN", token)
            .env("RAMPART_ADDR", srv.base())
            .env("RAMPART_DATA_DIR", r.path("data"))
            .env("THE_PASSWORD", "hunter2-very-secret");
        c.output().unwrap()
    };
    let client = |args: &[&str]| as_(&admin, args);
    // `secrets put` (the value from THE_PASSWORD) and `secrets get` of
    // service api in prod.
    let put_secret = |token: &str, name: &str| {
        as_(
            token,
            &[
                "secrets",
                "put",
                "--env",
                "prod",
                "--service",
                "api",
                name,
                "--value-env",
                "THE_PASSWORD",
            ],
        )
    };
    let get_secret =
        |name: &str| client(&["secrets", "get", "--env", "prod", "--service", "api", name]);
    let put = put_secret(&admin, "db-password");
    assert!(put.status.success(), "{}", stderr(&put));
    let get = get_secret("db-password");
    assert_eq!(stdout(&get).trim(), "hunter2-very-secret");

    // `rampart run` authenticates as the service, with its service
    // principal's API key. The policy lets service api read its own secrets,
    // and use its secrets key only through the secrets plane (via-service).
    let policy = srv.send(
        "PUT",
        "/v1/policies/prod",
        Some(&admin),
        &json!({"statements": [
            {"id": "platform-admin", "effect": "allow", "principals": ["role:admin"],
             "actions": ["*"], "resources": ["*"]},
            {"id": "api-reads-its-secrets", "effect": "allow", "principals": ["service:api"],
             "actions": ["secrets:get", "secrets:list"], "resources": ["secret:api/*"],
             "conditions": {"caller_services": ["api"]}},
            {"id": "api-key-through-secrets", "effect": "allow", "principals": ["service:api"],
             "actions": ["keys:decrypt"], "resources": ["key:svc.api"],
             "conditions": {"via_services": ["secrets"], "caller_services": ["api"]}},
        ]})
        .to_string(),
    );
    assert_eq!(policy.status, 200, "{}", policy.body);
    // The service principal and its key, made with the CLI.
    let made = client(&["users", "create", "api", "--service", "--env", "prod"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let made = client(&["apikeys", "create", "--env", "prod", "--owner", "api"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let made: serde_json::Value = serde_json::from_str(&stdout(&made)).unwrap();
    let api = made["key"].as_str().unwrap().to_string();
    let billing = service_key(&srv, &admin, "billing", &["prod"], "prod");
    let run_as = |token: &str| {
        as_(
            token,
            &[
                "run",
                "--env",
                "prod",
                "--service",
                "api",
                "--config",
                "rampart.toml",
                "--",
                "sh",
                "-c",
                "echo \"got=$DB_PASSWORD\"; exit 7",
            ],
        )
    };
    let run = run_as(&api);
    assert_eq!(
        stdout(&run).trim(),
        "got=hunter2-very-secret",
        "{}",
        stderr(&run)
    );
    assert_eq!(
        run.status.code(),
        Some(7),
        "the child's exit code is passed on"
    );
    // Another service's key gets nothing, and starts nothing.
    let stolen = run_as(&billing);
    assert_eq!(stolen.status.code(), Some(2), "{}", stderr(&stolen));
    assert!(stderr(&stolen).contains("403"), "{}", stderr(&stolen));
    assert!(!stdout(&stolen).contains("got="));
    // api may not use its secrets key directly: only through the secrets plane.
    let direct = srv.post(
        "/v1/keys/prod/svc.api/encrypt",
        Some(&api),
        json!({"plaintext": b64("x")}),
    );
    assert_eq!(direct.status, 403, "{}", direct.body);
    // Nor write its secrets: the policy grants reads only.
    let write = put_secret(&api, "db-password");
    assert_eq!(write.status.code(), Some(2), "{}", stderr(&write));
    let events = srv
        .get(
            "/v1/audit/events?tier=security&outcome=denied",
            Some(&admin),
        )
        .json();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"]["principal"] == "svc:billing" && e["action"] == "secrets:get"),
        "{events}"
    );

    // The value is nowhere on disk in the clear.
    for f in util::tree(&r.path("data"))
        .into_iter()
        .filter(|p| p.is_file())
    {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"hunter2"), "{f:?}");
    }

    // Bad input: one line, a 4xx exit code, the field named.
    let nokey = client(&["keys", "decrypt", "--env", "prod", "--ciphertext", "***"]);
    assert_eq!(nokey.status.code(), Some(2));
    assert!(
        stderr(&nokey).contains("field ciphertext"),
        "{}",
        stderr(&nokey)
    );
    let missing = get_secret("nope");
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("404"), "{}", stderr(&missing));

    // Without a config naming the variables, each secret is its name in
    // upper case; two names that give one variable are refused, and the
    // command never starts.
    let twin = put_secret(&admin, "db.password");
    assert!(twin.status.success(), "{}", stderr(&twin));
    let clash = client(&[
        "run",
        "--env",
        "prod",
        "--service",
        "api",
        "--",
        "sh",
        "-c",
        "echo started",
    ]);
    assert_eq!(clash.status.code(), Some(2), "{}", stderr(&clash));
    assert!(
        stderr(&clash).contains("$DB_PASSWORD"),
        "{}",
        stderr(&clash)
    );
    assert!(!stdout(&clash).contains("started"));

    // A recovery window out of range names its parameter; nothing is deleted.
    let window = srv.request(
        "DELETE",
        "/v1/secrets/prod/api/db.password?recovery_days=3",
        Some(&admin),
    );
    assert_eq!(window.status, 400, "{}", window.body);
    assert_eq!(window.json()["error"]["field"], "recovery_days");
    let still = get_secret("db.password");
    assert!(still.status.success(), "{}", stderr(&still));
}

#[test]
fn audit_log_verifies_and_names_tampering() {
    let (r, admin, srv) = node();
    for i in 0..5 {
        let resp = srv.post(
            "/v1/keys/prod/api-data/encrypt",
            Some(&admin),
            json!({"plaintext": b64(&format!("record {i}"))}),
        );
        assert_eq!(resp.status, 200);
    }
    let (status, _) = srv.terminate();
    assert!(status.success());

    let ok = r.run(&["audit", "verify", "--data-dir", "data"]);
    assert!(ok.status.success(), "{}{}", stdout(&ok), stderr(&ok));
    assert!(stdout(&ok).trim_end().ends_with("ok"));

    let search = r.run(&[
        "audit",
        "search",
        "--data-dir",
        "data",
        "--action",
        "keys:encrypt",
    ]);
    assert_eq!(stdout(&search).lines().count(), 5, "{}", stdout(&search));
    let bad_range = r.run(&[
        "audit",
        "search",
        "--data-dir",
        "data",
        "--from",
        "2027-01-01T00:00:00Z",
        "--to",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(bad_range.status.code(), Some(2));

    let proof = r.run(&[
        "audit",
        "prove",
        "--data-dir",
        "data",
        "--tier",
        "security",
        "--seq",
        "2",
    ]);
    assert!(proof.status.success(), "{}", stderr(&proof));
    std::fs::write(r.path("proof.json"), stdout(&proof)).unwrap();
    let checked = r.run(&["audit", "verify-proof", "--data-dir", "data", "proof.json"]);
    assert!(checked.status.success(), "{}", stderr(&checked));

    // Flip one byte in the security tier's segment: verify names the place and exits 1.
    let seg = util::tree(&r.path("data/audit/security"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let bad = r.run(&["audit", "verify", "--data-dir", "data"]);
    assert_eq!(bad.status.code(), Some(1), "{}", stdout(&bad));
    let err = stderr(&bad);
    assert!(
        err.contains("tier security") && err.contains(".seg") && err.contains("seq"),
        "{err}"
    );
}

#[test]
fn key_batches_through_the_api_answer_per_item_and_refuse_bad_input() {
    let (_r, admin, srv) = node();
    let t = Some(admin.as_str());

    let enc = srv.post(
        "/v1/keys/prod/api-data/encrypt-batch",
        t,
        json!({"items": [
            {"plaintext": b64("one"), "context": {"i": "1"}},
            {"plaintext": b64("two"), "context": {"i": "2"}},
        ]}),
    );
    assert_eq!(enc.status, 200, "{}", enc.body);
    let results = enc.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 2);
    let ct: Vec<String> = results
        .iter()
        .map(|r| r["ciphertext"].as_str().unwrap().to_string())
        .collect();

    // Per item: a good one, one under the wrong context, a malformed one.
    let dec = srv.post(
        "/v1/keys/prod/decrypt-batch",
        t,
        json!({"items": [
            {"ciphertext": ct[0], "context": {"i": "1"}},
            {"ciphertext": ct[1], "context": {"i": "9"}},
            {"ciphertext": b64("x")},
        ]}),
    );
    assert_eq!(dec.status, 200, "{}", dec.body);
    let r = dec.json()["results"].clone();
    assert_eq!(r[0]["plaintext"], b64("one"));
    assert_eq!(r[1]["error"]["code"], "decryption_failed");
    assert_eq!(r[2]["error"]["code"], "malformed_ciphertext");

    let rewrap = srv.post(
        "/v1/keys/prod/rewrap-batch",
        t,
        json!({"items": [{"ciphertext": ct[0], "context": {"i": "1"}}]}),
    );
    assert_eq!(rewrap.status, 200, "{}", rewrap.body);
    assert!(rewrap.json()["results"][0]["ciphertext"].is_string());
    let dks = srv.post(
        "/v1/keys/prod/api-data/data-key-batch",
        t,
        json!({"contexts": [{"f": "a"}, {"f": "b"}]}),
    );
    assert_eq!(dks.status, 200, "{}", dks.body);
    assert_eq!(dks.json()["results"].as_array().unwrap().len(), 2);

    // Bad base64 in one item refuses the batch, naming the item.
    let bad = srv.post(
        "/v1/keys/prod/api-data/encrypt-batch",
        t,
        json!({"items": [{"plaintext": b64("ok")}, {"plaintext": "%%%"}]}),
    );
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"]["field"], "items[1].plaintext");
    // Empty and oversized batches, unknown fields.
    let empty = srv.post("/v1/keys/prod/decrypt-batch", t, json!({"items": []}));
    assert_eq!(empty.status, 400);
    assert_eq!(empty.json()["error"]["field"], "items");
    let many: Vec<_> = (0..1001).map(|_| json!({"plaintext": b64("x")})).collect();
    let too_many = srv.post(
        "/v1/keys/prod/api-data/encrypt-batch",
        t,
        json!({ "items": many }),
    );
    assert_eq!(too_many.status, 400, "{}", too_many.body);
    let unknown = srv.post(
        "/v1/keys/prod/api-data/encrypt-batch",
        t,
        json!({"items": [{"plaintext": b64("x"), "ctx": {}}]}),
    );
    assert_eq!(unknown.status, 400);

    // The decisions are on record, grouped per batch.
    let events = srv
        .get("/v1/audit/events?tier=security&action=keys:encrypt", t)
        .json();
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["details"]["batch_items"] == "2" && e["outcome"] == "allowed"),
        "{events}"
    );
}

#[test]
fn a_key_operation_is_one_record_and_a_refused_call_is_still_on_record() {
    let (_r, admin, srv) = node();
    let t = Some(admin.as_str());
    let events = |query: &str| -> Vec<serde_json::Value> {
        let r = srv.get(&format!("/v1/audit/events?{query}"), t);
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["events"].as_array().unwrap().clone()
    };
    let with_id = |evs: &[serde_json::Value], id: &str| -> usize {
        evs.iter().filter(|e| e["request_id"] == id).count()
    };

    // An encrypt that succeeds: its decision in tier security names the
    // request, and there is no second record of it in api-access.
    let ok = srv.post(
        "/v1/keys/prod/api-data/encrypt",
        t,
        json!({"plaintext": b64("one record"), "context": {"tenant": "acme"}}),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok_id = ok.request_id.clone().unwrap();
    let security = events("tier=security&action=keys:encrypt");
    assert_eq!(with_id(&security, &ok_id), 1, "{security:?}");
    let access = events("tier=api-access");
    assert_eq!(with_id(&access, &ok_id), 0, "{access:?}");

    // A call refused before any plane saw it (bad base64) is recorded by
    // the API itself, with its status.
    let bad = srv.post(
        "/v1/keys/prod/api-data/encrypt",
        t,
        json!({"plaintext": "%%%"}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let bad_id = bad.request_id.clone().unwrap();
    let access = events("tier=api-access");
    assert_eq!(with_id(&access, &bad_id), 1, "{access:?}");

    // A decrypt that fails after an allowed decision (a tampered
    // ciphertext): the decision and the error in security, and the call's
    // 4xx in api-access.
    let tampered = {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD;
        let mut raw = b.decode(ok.json()["ciphertext"].as_str().unwrap()).unwrap();
        *raw.last_mut().unwrap() ^= 1;
        b.encode(&raw)
    };
    let dec = srv.post(
        "/v1/keys/prod/decrypt",
        t,
        json!({"ciphertext": tampered, "context": {"tenant": "acme"}}),
    );
    assert!(dec.status >= 400 && dec.status < 500, "{}", dec.body);
    let dec_id = dec.request_id.clone().unwrap();
    let security = events("tier=security&action=keys:decrypt");
    assert!(with_id(&security, &dec_id) >= 1, "{security:?}");
    let access = events("tier=api-access");
    assert_eq!(with_id(&access, &dec_id), 1, "{access:?}");
}

/// `keys encrypt` takes the plaintext from standard input, a file or an
/// environment variable, never the command line (where `ps` and shell
/// history would keep it); `keys decrypt` gives back the exact bytes.
#[test]
fn keys_cli_encrypts_bytes_from_stdin_or_a_file_and_decrypts_them_exactly() {
    use std::io::Write;
    use std::process::Stdio;
    let (r, admin, srv) = node();
    let cli = |args: &[&str]| {
        let mut c = r.cmd(args);
        c.env("RAMPART_TOKEN", &admin)
            .env("RAMPART_ADDR", srv.base())
            .env("RAMPART_DATA_DIR", r.path("data"));
        c
    };
    let decrypt = |ct: &str| {
        let out = cli(&[
            "keys",
            "decrypt",
            "--env",
            "prod",
            "--ciphertext",
            ct,
            "--context",
            "tenant=acme",
        ])
        .output()
        .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        out.stdout
    };
    let encrypt = ["keys", "encrypt", "--env", "prod", "api-data"];

    // Any bytes, through standard input.
    let bytes: Vec<u8> = (0..=255u8).chain(*b"\n\0tail").collect();
    let mut child = cli(&[&encrypt[..], &["--context", "tenant=acme"]].concat())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ct = stdout(&out).trim().to_string();
    assert_eq!(decrypt(&ct), bytes);

    // From a file, and from an environment variable.
    std::fs::write(r.path("card.bin"), b"card 4111\xff").unwrap();
    let out = cli(&[
        &encrypt[..],
        &["--from-file", "card.bin", "--context", "tenant=acme"],
    ]
    .concat())
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(decrypt(stdout(&out).trim()), b"card 4111\xff");
    let out = cli(&[
        &encrypt[..],
        &["--plaintext-env", "CARD", "--context", "tenant=acme"],
    ]
    .concat())
    .env("CARD", "card 5500")
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(decrypt(stdout(&out).trim()), b"card 5500");

    // Not on the command line; a variable that is not set is named.
    let argv = cli(&[&encrypt[..], &["--plaintext", "card 4111"]].concat())
        .output()
        .unwrap();
    assert_eq!(argv.status.code(), Some(2), "{}", stderr(&argv));
    let unset = cli(&[&encrypt[..], &["--plaintext-env", "NOT_SET_ANYWHERE"]].concat())
        .output()
        .unwrap();
    assert_eq!(unset.status.code(), Some(2), "{}", stderr(&unset));
    assert!(
        stderr(&unset).contains("NOT_SET_ANYWHERE"),
        "{}",
        stderr(&unset)
    );
}
