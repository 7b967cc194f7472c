//! End-to-end tests: the real `rampart` binary in a temporary directory.

mod util;

use std::process::Command;

use util::{stderr, stdout, tree, Rampart};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/rampart.toml");
const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../rampart-config/tests/fixtures"
);

#[test]
fn help_names_every_verb_and_every_verb_has_help() {
    let r = Rampart::new();
    let out = r.run(&["--help"]);
    assert!(out.status.success());
    let text = stdout(&out);
    for verb in ["init", "up", "config"] {
        assert!(text.contains(verb), "{text}");
    }
    for args in [
        &["init", "--help"][..],
        &["up", "--help"],
        &["config", "--help"],
        &["config", "check", "--help"],
    ] {
        let out = r.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("Usage:"));
    }
}

#[test]
fn config_check_says_ok_or_names_line_field_and_exits_2() {
    let r = Rampart::new();
    let out = r.run(&["config", "check", EXAMPLE]);
    assert_eq!(stdout(&out).trim(), "ok", "{}", stderr(&out));
    assert!(out.status.success());

    let bad = format!("{FIXTURES}/bad/unknown_service.toml");
    let out = r.run(&["config", "check", &bad]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "{bad}:14:11: routes[0].service: unknown service \"billing\""
        )),
        "{err}"
    );

    // Several errors: all reported, one per line.
    std::fs::write(
        r.path("multi.toml"),
        "[[environments]]\nname = \"prod\"\n\n[[services]]\nname = \"a\"\nenvironment = \"qa\"\nport = 0\n",
    )
    .unwrap();
    let out = r.run(&["config", "check", "multi.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("multi.toml:6:15: services[0].environment: unknown environment"));
    assert!(lines[1].starts_with("multi.toml:7:8: services[0].port: invalid port 0"));

    // Malformed TOML and a missing file: one line, exit 2, no panic.
    std::fs::write(r.path("broken.toml"), "[[routes]\nhost = ").unwrap();
    for file in ["broken.toml", "missing.toml"] {
        let out = r.run(&["config", "check", file]);
        assert_eq!(out.status.code(), Some(2), "{file}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(file), "{err}");
        assert!(!err.contains("panicked"));
    }
}

#[test]
fn init_then_restart_with_right_and_wrong_root_key() {
    let r = Rampart::new();
    let cred = r.init();
    assert!(cred.len() > 60);
    let key = std::fs::read_to_string(r.path("data/root.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(r.path("data/root.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The credential is not stored anywhere in the clear.
    // `rk_admin_<hex id>_<base64url secret>`: the secret may itself hold
    // `_`, so split after the id, not at the last `_` (a short tail would
    // turn up in the database by chance).
    let secret = cred
        .strip_prefix("rk_admin_")
        .and_then(|rest| rest.split_once('_'))
        .unwrap()
        .1;
    assert_eq!(secret.len(), 43, "{cred}");
    for f in tree(&r.path("data")).into_iter().filter(|p| p.is_file()) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{f:?}"
        );
    }
    // Initialising again is refused.
    let again = r.run(&["init", "--data-dir", "data"]);
    assert_eq!(again.status.code(), Some(2));

    // The right key: the node comes up and the credential works.
    let srv = r.up(&["--dev", "--data-dir", "data"]);
    assert_eq!(srv.get("/v1/whoami", Some(&cred)).status, 200);
    let (status, _) = srv.terminate();
    assert!(status.success());

    // Another key in the key file: refused with the exact message, exit 2.
    std::fs::remove_file(r.path("data/root.key")).unwrap();
    let other = r.run(&["init", "--data-dir", "other"]);
    assert!(other.status.success());
    std::fs::copy(r.path("other/root.key"), r.path("data/root.key")).unwrap();
    let out = r.run(&["up", "--dev", "--data-dir", "data"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "error: root key does not match this data directory"
    );
    // The same through RAMPART_ROOT_KEY, and the right key through it works.
    std::fs::remove_file(r.path("data/root.key")).unwrap();
    let wrong = std::fs::read_to_string(r.path("other/root.key")).unwrap();
    let out = r
        .cmd(&["up", "--dev", "--data-dir", "data"])
        .env("RAMPART_ROOT_KEY", wrong.trim())
        .output()
        .unwrap();
    assert_eq!(
        stderr(&out).trim(),
        "error: root key does not match this data directory"
    );
    let mut cmd = r.cmd(&[]);
    cmd.env("RAMPART_ROOT_KEY", key.trim());
    let srv = r.up_with(cmd, &["--dev", "--data-dir", "data"]);
    assert_eq!(srv.get("/v1/whoami", Some(&cred)).status, 200);
    drop(srv);
}

#[test]
fn passphrase_root_key() {
    let r = Rampart::new();
    let out = r
        .cmd(&["init", "--data-dir", "data", "--passphrase-env", "PASS"])
        .env("PASS", "correct horse battery staple")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!r.path("data/root.key").exists());
    assert!(stdout(&out).contains("derived from your passphrase"));

    // Without the passphrase: told what to do.
    let out = r.run(&["up", "--dev", "--data-dir", "data"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("pass --passphrase-env"),
        "{}",
        stderr(&out)
    );
    // The wrong passphrase: refused.
    let out = r
        .cmd(&[
            "up",
            "--dev",
            "--data-dir",
            "data",
            "--passphrase-env",
            "PASS",
        ])
        .env("PASS", "wrong horse")
        .output()
        .unwrap();
    assert_eq!(
        stderr(&out).trim(),
        "error: root key does not match this data directory"
    );
    // The right one: up.
    let mut cmd = r.cmd(&[]);
    cmd.env("PASS", "correct horse battery staple");
    let srv = r.up_with(
        cmd,
        &["--dev", "--data-dir", "data", "--passphrase-env", "PASS"],
    );
    assert_eq!(srv.get("/healthz", None).status, 200);
}

/// Bad input never panics: each case is one line on stderr, exit 2, nothing written.
#[test]
fn bad_input_is_one_line_exit_2_and_writes_nothing() {
    let r = Rampart::new();
    let check = |out: std::process::Output, needle: &str| {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "wanted {needle:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    };

    // An unset passphrase variable: init writes nothing at all.
    check(
        r.run(&[
            "init",
            "--data-dir",
            "data",
            "--passphrase-env",
            "NOPE_UNSET",
        ]),
        "environment variable NOPE_UNSET is not set",
    );
    assert!(tree(r.dir.path()).is_empty(), "{:?}", tree(r.dir.path()));

    // A malformed RAMPART_ROOT_KEY: same.
    let out = r
        .cmd(&["init", "--data-dir", "data"])
        .env("RAMPART_ROOT_KEY", "not base64!")
        .output()
        .unwrap();
    check(out, "RAMPART_ROOT_KEY: invalid root key");
    assert!(tree(r.dir.path()).is_empty());

    // A data directory that cannot be created (its parent is a file).
    std::fs::write(r.path("afile"), "x").unwrap();
    check(
        r.run(&["init", "--data-dir", "afile/data"]),
        "cannot create data directory",
    );
    assert_eq!(tree(r.dir.path()), vec![r.path("afile")]);
    std::fs::remove_file(r.path("afile")).unwrap();

    // A truncated key file: up refuses before touching the store.
    r.init();
    let key = std::fs::read_to_string(r.path("data/root.key")).unwrap();
    std::fs::write(r.path("data/root.key"), &key[..10]).unwrap();
    let before = tree(&r.path("data"));
    let db_before = std::fs::read(r.path("data/rampart.db")).unwrap();
    check(
        r.run(&["up", "--dev", "--data-dir", "data"]),
        "invalid root key",
    );
    assert_eq!(tree(&r.path("data")), before);
    assert_eq!(std::fs::read(r.path("data/rampart.db")).unwrap(), db_before);

    // An uninitialised data directory without --dev.
    check(
        r.run(&["up", "--config", EXAMPLE, "--data-dir", "nowhere"]),
        "is not initialised",
    );
    assert!(!r.path("nowhere").exists());

    // Malformed configuration for up.
    std::fs::write(r.path("bad.toml"), "[control]\nlisten = 7443\n").unwrap();
    check(
        r.run(&["up", "--config", "bad.toml"]),
        "bad.toml:2:10: control.listen",
    );
}

/// A data directory the user may not write: run as `nobody` where we can.
#[test]
fn data_directory_without_permission() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| stdout(&o).trim() == "0")
        .unwrap_or(false);
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if !is_root || !setpriv.exists() {
        eprintln!("SKIP: needs root and setpriv to drop privileges");
        return;
    }
    let r = Rampart::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(r.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = r.path("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            util::BIN,
        ])
        .args(["init", "--data-dir"])
        .arg(locked.join("data"))
        .env_remove("RAMPART_ROOT_KEY")
        .output()
        .unwrap();
    if stderr(&out).contains("Permission denied") && stderr(&out).starts_with("setpriv") {
        eprintln!("SKIP: nobody cannot execute the test binary here");
        return;
    }
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(tree(&locked).is_empty());
}

#[test]
fn control_api_answers_health_metrics_and_json_errors() {
    let r = Rampart::new();
    let cred = r.init();
    let srv = r.up(&["--dev", "--data-dir", "data"]);

    let h = srv.get("/healthz", None);
    assert_eq!((h.status, h.json()["status"].as_str()), (200, Some("ok")));
    let ready = srv.get("/readyz", None);
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["store"], "sqlite");
    // The API's own description, without a credential, as in the repository.
    let doc = srv.get("/v1/openapi.json", None);
    assert_eq!(doc.status, 200, "{}", doc.body);
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc.json(), file);

    // Every response carries a request id; a caller's plain id is kept, a hostile one replaced.
    assert!(h.request_id.as_deref().is_some_and(|id| id.len() >= 32));

    let missing = srv.get("/v1/nope", None);
    assert_eq!(missing.status, 404);
    assert!(missing.content_type.starts_with("application/json"));
    let e = missing.json();
    assert_eq!(e["error"]["code"], "not_found");
    assert!(e["error"]["message"].as_str().unwrap().contains("/v1/nope"));
    assert!(missing.request_id.is_some());

    let unauth = srv.get("/v1/whoami", None);
    assert_eq!(unauth.status, 401);
    assert_eq!(unauth.json()["error"]["code"], "unauthenticated");
    assert_eq!(unauth.json()["error"]["field"], "authorization");
    // Malformed, unknown and tampered credentials all get the same answer.
    let mut tampered = cred.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    for bad in ["garbage", "rk_admin_", &tampered, &"x".repeat(5000)] {
        let resp = srv.get("/v1/whoami", Some(bad));
        assert_eq!(resp.status, 401, "{bad}");
        assert_eq!(resp.body, unauth.body);
    }
    let me = srv.get("/v1/whoami", Some(&cred));
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["principal"], "admin");

    let st = srv.get("/v1/status", Some(&cred)).json();
    assert_eq!(st["store"]["schema_version"], 1);
    assert_eq!(st["environments"][0], "dev");

    // Hostile path parameters and query strings: JSON 400s naming the
    // parameter, never axum's plain-text rejections.
    let bad_utf8 = srv.get("/v1/secrets/dev/%ff%fe/db", Some(&cred));
    assert_eq!(bad_utf8.status, 400, "{}", bad_utf8.body);
    assert!(bad_utf8.content_type.starts_with("application/json"));
    assert_eq!(bad_utf8.json()["error"]["code"], "invalid_path");
    assert_eq!(bad_utf8.json()["error"]["field"], "service");
    for (query, field) in [
        ("limit=99999999999999999999", "limit"),
        ("limit=-1", "limit"),
        ("limit=%ff", "limit"),
    ] {
        let resp = srv.get(&format!("/v1/audit/events?{query}"), Some(&cred));
        assert_eq!(resp.status, 400, "{query}: {}", resp.body);
        assert!(resp.content_type.starts_with("application/json"));
        assert_eq!(resp.json()["error"]["code"], "invalid_query", "{query}");
        assert_eq!(resp.json()["error"]["field"], field, "{query}");
    }
    // A name that breaks the naming rule, in a path or a body, is named
    // too (its value is not echoed).
    for (method, path, field) in [
        ("GET", "/v1/keys/dev/Bad%20Key", "name"),
        ("GET", "/v1/keys/-dev/app", "env"),
        ("GET", "/v1/secrets/dev/app%2Fx/db", "service"),
        ("DELETE", "/v1/secrets/dev/app/..", "name"),
    ] {
        let resp = srv.request(method, path, Some(&cred));
        assert_eq!(resp.status, 400, "{path}: {}", resp.body);
        assert_eq!(resp.json()["error"]["code"], "invalid_path", "{path}");
        assert_eq!(resp.json()["error"]["field"], field, "{path}");
        assert!(!resp.body.contains("Bad Key"), "{}", resp.body);
    }
    let long = "k".repeat(65);
    let resp = srv.post(
        "/v1/keys/dev",
        Some(&cred),
        serde_json::json!({ "name": long }),
    );
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert_eq!(resp.json()["error"]["field"], "name");
    let bad_version = srv.get("/v1/secrets/dev/app/db?version=x", Some(&cred));
    assert_eq!(bad_version.status, 400, "{}", bad_version.body);
    assert_eq!(bad_version.json()["error"]["field"], "version");

    let wrong_method = srv.request("POST", "/healthz", None);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.json()["error"]["code"], "method_not_allowed");

    let m = srv.get("/metrics", None);
    assert_eq!(m.status, 200);
    assert!(m.content_type.starts_with("text/plain"));
    assert!(
        m.body.contains(
            "rampart_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ),
        "{}",
        m.body
    );
    assert!(m.body.contains("route=\"/v1/whoami\",status=\"401\""));
    assert!(m.body.contains("rampart_build_info"));
    // The audit log's group commits, by tier: the calls above were recorded.
    let records = m
        .body
        .lines()
        .find_map(|l| l.strip_prefix("rampart_audit_records_total{tier=\"api-access\"} "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(records.is_some_and(|n| n >= 1), "{}", m.body);
    assert!(m
        .body
        .contains("rampart_audit_syncs_total{tier=\"api-access\"}"));
    assert!(m
        .body
        .contains("rampart_audit_sync_seconds_total{tier=\"api-access\"}"));
}

#[test]
fn up_dev_from_nothing_then_sigterm_stops_gracefully() {
    let r = Rampart::new();
    let srv = r.up(&["--dev"]);
    // It initialised ./rampart-data, printed the credential once, and wrote the dev config.
    let printed = srv.printed.join("\n");
    assert!(
        printed.contains("initialised data directory rampart-data"),
        "{printed}"
    );
    let cred = util::credential(&printed);
    assert!(r.path("rampart-data/rampart.toml").is_file());
    assert_eq!(srv.get("/readyz", None).status, 200);
    assert_eq!(srv.get("/v1/whoami", Some(&cred)).status, 200);
    // The development edge runs the built-in baseline WAF: an injection is
    // refused at the edge (no demo service needs to run on :3000 for that).
    assert!(
        srv.printed
            .iter()
            .any(|l| l.starts_with("edge: WAF loaded")),
        "{printed}"
    );
    let edge = srv
        .printed
        .iter()
        .find_map(|l| l.strip_prefix("edge https: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let insecure = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .disable_verification(true)
                .build(),
        )
        .http_status_as_error(false)
        .build()
        .new_agent();
    let status_of = |path: &str| {
        let req = ureq::http::Request::builder()
            .uri(format!("{edge}{path}"))
            .header("Host", "localhost")
            .body(())
            .unwrap();
        insecure.run(req).unwrap().status().as_u16()
    };
    assert_eq!(status_of("/?id=1%27%20OR%201=1--"), 403);
    assert_eq!(status_of("/?q=%3Cscript%3Ealert(1)%3C/script%3E"), 403);
    assert_ne!(status_of("/?q=hello"), 403);
    let (status, after) = srv.terminate();
    assert!(status.success(), "{status:?}");
    assert!(after.iter().any(|l| l == "rampart stopped"), "{after:?}");

    // The generated config is valid for `config check`.
    let out = r.run(&["config", "check", "rampart-data/rampart.toml"]);
    assert_eq!(stdout(&out).trim(), "ok");
    // A second start reuses the data directory and prints no new credential.
    let srv = r.up(&["--dev"]);
    assert!(!srv.printed.join("\n").contains("rk_admin_"));
    assert_eq!(srv.get("/v1/whoami", Some(&cred)).status, 200);
}

/// A record cut short by a crash (here: a frame that claims 64 bytes and
/// holds 10, after the last whole record) is cut at the next start, said on
/// standard output, and counted per tier on `/metrics`, where every other
/// tier shows 0; `audit verify` passes afterwards.
#[test]
fn a_torn_audit_tail_is_cut_at_start_and_counted_on_metrics() {
    let r = Rampart::new();
    let cred = r.init();
    let srv = r.up(&["--dev", "--data-dir", "data"]);
    assert_eq!(srv.get("/v1/whoami", Some(&cred)).status, 200);
    let (status, _) = srv.terminate();
    assert!(status.success());

    // The newest segment of the api-access tier; walk its frames to the end.
    let tier_dir = r.path("data/audit/api-access");
    let mut segs: Vec<_> = std::fs::read_dir(&tier_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    let seg = segs.last().expect("a segment").clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Header: magic 8, version 2, tier 1, k 1, segment 8, first_seq 8,
    // created 8, prev_hash 32, frontier 32 * k, crc 4. A cleanly closed
    // segment ends at its last record; an open one is zero-filled after it.
    let k = usize::from(bytes[11]);
    let mut off = 68 + 32 * k + 4;
    while off + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        off += 8 + len;
    }
    bytes.truncate(off);
    bytes.extend_from_slice(&64u32.to_le_bytes());
    bytes.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    bytes.extend_from_slice(&[0xAB; 10]);
    std::fs::write(&seg, &bytes).unwrap();

    let srv = r.up(&["--dev", "--data-dir", "data"]);
    assert!(
        srv.printed
            .iter()
            .any(|l| l.starts_with("audit log: cut a torn tail after a crash")),
        "{:?}",
        srv.printed
    );
    let m = srv.get("/metrics", None).body;
    assert!(
        m.contains("rampart_audit_open_torn_tails{tier=\"api-access\"} 1"),
        "{m}"
    );
    for tier in ["security", "processing", "application", "network"] {
        assert!(
            m.contains(&format!(
                "rampart_audit_open_torn_tails{{tier=\"{tier}\"}} 0"
            )),
            "{m}"
        );
    }
    for tier in [
        "security",
        "processing",
        "application",
        "network",
        "api-access",
    ] {
        assert!(
            m.contains(&format!(
                "rampart_audit_open_checkpoint_problems{{tier=\"{tier}\"}} 0"
            )),
            "{m}"
        );
    }
    let (status, _) = srv.terminate();
    assert!(status.success());
    let out = r.run(&["audit", "verify", "--data-dir", "data"]);
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
}

/// With `[redis]` (here without `[edge]`: the login throttle's counts live
/// there), a node whose Redis does not answer refuses to start, naming the
/// server and not the URL's password.
#[test]
fn up_refuses_to_start_when_redis_does_not_answer() {
    let r = Rampart::new();
    std::fs::write(r.path("rampart.toml"), "[redis]\n").unwrap();
    r.init();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = r
        .cmd(&["up", "--config", "rampart.toml", "--data-dir", "data"])
        .env(
            "RAMPART_REDIS_URL",
            format!("redis://:hunter2-secret@127.0.0.1:{port}/0"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&format!("redis 127.0.0.1:{port}")), "{err}");
    assert!(!err.contains("hunter2-secret"), "{err}");
    assert!(!stdout(&out).contains("hunter2-secret"));
    assert!(!err.contains("panicked"), "{err}");
}

/// A CA for clients (PEM) and a client certificate it signed for `cn`
/// (certificate PEM, key PEM).
fn client_ca_and_cert(cn: &str) -> (String, (String, String)) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{cn} clients CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, cn);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), (cert.pem(), key.serialize_pem()))
}

/// With `[control] client_ca`, the control API's TLS handshake needs a
/// client certificate from one of those CAs (as the design's "control
/// API, mTLS" wants): without one, or with another CA's, nothing is
/// answered; with one, the API still wants its credential. The CLI
/// presents one with `--client-cert`/`--client-key`.
#[test]
fn a_control_api_with_client_ca_requires_a_client_certificate() {
    let r = Rampart::new();
    let (ca, ops) = client_ca_and_cert("ops");
    let (_, stranger) = client_ca_and_cert("stranger");
    std::fs::write(r.path("clients.pem"), &ca).unwrap();
    std::fs::write(
        r.path("rampart.toml"),
        "[control]\nclient_ca = [\"clients.pem\"]\n",
    )
    .unwrap();
    let admin = r.init();
    let srv = r.up_presenting(
        &["--config", "rampart.toml", "--data-dir", "data"],
        &ops.0,
        &ops.1,
    );
    assert_eq!(srv.get("/v1/whoami", Some(&admin)).status, 200);
    assert_eq!(srv.get("/v1/whoami", None).status, 401);

    // Without a certificate, or with another CA's: no answer at all.
    let ca_pem = std::fs::read(r.path("data/tls/ca.pem")).unwrap();
    for client in [None, Some(&stranger)] {
        use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
        let client = client.map(|(c, k)| {
            ClientCert::new_with_certs(
                &[Certificate::from_pem(c.as_bytes()).unwrap()],
                PrivateKey::from_pem(k.as_bytes()).unwrap(),
            )
        });
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(std::sync::Arc::new(vec![
                Certificate::from_pem(&ca_pem).unwrap(),
            ])))
            .client_cert(client)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(10)))
            .build()
            .new_agent();
        let answer = agent.get(srv.url("/healthz")).call();
        assert!(
            answer.is_err(),
            "answered without a valid client certificate"
        );
    }

    // The CLI: with the certificate it works, without it fails.
    std::fs::write(r.path("ops.pem"), &ops.0).unwrap();
    std::fs::write(r.path("ops.key"), &ops.1).unwrap();
    let cli = |extra: &[&str]| {
        let mut c = r.cmd(
            &[
                &["users", "list", "--addr", &srv.base(), "--data-dir", "data"],
                extra,
            ]
            .concat(),
        );
        c.env("RAMPART_TOKEN", &admin);
        c.output().unwrap()
    };
    let out = cli(&["--client-cert", "ops.pem", "--client-key", "ops.key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(&[]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let out = cli(&["--client-cert", "ops.pem"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--client-key"), "{}", stderr(&out));
    // A key file that holds no key is named, its contents never shown.
    std::fs::write(r.path("bad.key"), "secret-looking text\n").unwrap();
    let out = cli(&["--client-cert", "ops.pem", "--client-key", "bad.key"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bad.key") && !err.contains("secret-looking"),
        "{err}"
    );
    drop(srv);

    // A CA file that is missing or holds no certificate stops the start.
    for (file, text) in [("missing.pem", None), ("empty.pem", Some("nothing\n"))] {
        if let Some(t) = text {
            std::fs::write(r.path(file), t).unwrap();
        }
        std::fs::write(
            r.path("other.toml"),
            format!("[control]\nclient_ca = [\"{file}\"]\n"),
        )
        .unwrap();
        let out = r.run(&["up", "--config", "other.toml", "--data-dir", "data"]);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(file) && err.contains("control.client_ca"),
            "{err}"
        );
    }
}
