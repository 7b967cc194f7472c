//! End-to-end: the public edge started by `rampart up` in front of a real
//! upstream: redirect, HSTS, proxying, the WAF, and the access record.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use util::Rampart;

/// The assertion header the upstream saw last.
type Seen = Arc<std::sync::Mutex<Option<String>>>;

/// A tiny HTTP/1.1 upstream on a free port: for each request (no bodies in
/// these tests) `answer` gets the path and the edge's assertion header and
/// returns the body of a 200.
fn spawn_upstream(answer: impl Fn(&str, Option<String>) -> String + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut assertion = None;
                    loop {
                        let mut hdr = String::new();
                        if r.read_line(&mut hdr).unwrap_or(0) == 0 || hdr == "\r\n" {
                            break;
                        }
                        if let Some((k, v)) = hdr.split_once(':') {
                            if k.eq_ignore_ascii_case("x-rampart-assertion") {
                                assertion = Some(v.trim().to_string());
                            }
                        }
                    }
                    let body = answer(&path, assertion);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// An upstream that answers every request with its path, counts what
/// reached it and keeps the edge's assertion header.
fn upstream() -> (u16, Arc<AtomicUsize>, Seen) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen: Seen = Arc::default();
    let (h, seen2) = (hits.clone(), seen.clone());
    let port = spawn_upstream(move |path, assertion| {
        *seen2.lock().unwrap() = assertion;
        h.fetch_add(1, Ordering::SeqCst);
        format!("upstream saw {path}")
    });
    (port, hits, seen)
}

/// The edge's HTTPS base URL, as `rampart up` prints it.
fn edge_https(srv: &util::Server) -> String {
    srv.printed
        .iter()
        .find_map(|l| l.strip_prefix("edge https: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string()
}

/// The edge's assertion key, from the control API, and the time now.
fn assertion_key(srv: &util::Server, admin: &str) -> (ed25519_dalek::VerifyingKey, u64) {
    let key = srv.get("/v1/edge/assertion-key", Some(admin)).json();
    let key_bytes: [u8; 32] = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        key["public_key"].as_str().unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (
        ed25519_dalek::VerifyingKey::from_bytes(&key_bytes).unwrap(),
        now,
    )
}

/// `/v1/audit/events?QUERY` once its events satisfy `done` (the records
/// land as requests are answered, a denial's security copy shortly after),
/// or as it is after 5 s.
fn events_once(
    srv: &util::Server,
    admin: &str,
    query: &str,
    done: impl Fn(&Vec<serde_json::Value>) -> bool,
) -> serde_json::Value {
    let mut found = serde_json::Value::Null;
    for _ in 0..50 {
        found = srv
            .get(&format!("/v1/audit/events?{query}"), Some(admin))
            .json();
        if found["events"].as_array().is_some_and(&done) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    found
}

fn agent(ca: &[u8]) -> ureq::Agent {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![Certificate::from_pem(
            ca,
        )
        .unwrap()])))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent()
}

#[test]
fn edge_redirects_proxies_with_hsts_and_blocks_attacks_before_the_upstream() {
    let (port, hits, seen) = upstream();
    let r = Rampart::new();
    // Rule files by glob; the ignored directive is a load warning.
    std::fs::create_dir(r.path("rules")).unwrap();
    std::fs::write(
        r.path("rules/waf.conf"),
        "SecRuleEngine On\nSecAuditEngine Off\n\
         SecRule ARGS \"@rx (?i)union\\s+select\" \"id:1001,phase:2,deny,status:403,t:urlDecodeUni,msg:'SQL injection'\"\n",
    )
    .unwrap();
    std::fs::write(
        r.path("rampart.toml"),
        format!(
            r#"
[edge]
waf_rules = ["rules/*.conf"]

[[environments]]
name = "prod"

[[services]]
name = "app"
environment = "prod"
port = {port}
upstreams = ["127.0.0.1:{port}"]

[[routes]]
host = "127.0.0.1"
service = "app"

[[routes]]
host = "127.0.0.1"
path_prefix = "/cms"
service = "app"
waf_exclusions = [{{ rule = 1001 }}, {{ rule = 942100 }}]
"#
        ),
    )
    .unwrap();
    let admin = r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    let line = |prefix: &str| {
        srv.printed
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {prefix:?} in {:?}", srv.printed))
    };
    let http = line("edge http: ");
    let https = line("edge https: ");
    assert!(
        srv.printed.iter().any(|l| l.contains("WAF loaded 1 rules")),
        "{:?}",
        srv.printed
    );
    for want in [
        "edge: WAF warning: ignored directives that cannot affect a verdict: SecAuditEngine",
        "edge: WAF warning: routes[1] (127.0.0.1/cms): waf_exclusions names rule 942100, which the loaded rules do not hold",
    ] {
        assert!(
            srv.printed.iter().any(|l| l.starts_with(want)),
            "no {want:?} in {:?}",
            srv.printed
        );
    }
    let ca = std::fs::read(r.path("data/tls/ca.pem")).unwrap();
    let a = agent(&ca);

    // Port 80's job: a permanent redirect to the same path and query on HTTPS.
    let resp = a.get(format!("{http}/a/b?c=d")).call().unwrap();
    assert_eq!(resp.status(), 301);
    let https_port = https.rsplit(':').next().unwrap();
    assert_eq!(
        resp.headers()["location"],
        format!("https://127.0.0.1:{https_port}/a/b?c=d").as_str()
    );

    // HTTPS: proxied, with HSTS and the security headers.
    let mut resp = a.get(format!("{https}/hello?x=1")).call().unwrap();
    assert_eq!(resp.status(), 200);
    let hsts = resp.headers()["strict-transport-security"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        hsts.contains("max-age=31536000") && hsts.contains("includeSubDomains"),
        "{hsts}"
    );
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        resp.body_mut().read_to_string().unwrap(),
        "upstream saw /hello?x=1"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The upstream got a signed assertion it can verify with the edge's public
    // key; a client's forged one is replaced, and no header means "refuse".
    let (vk, now) = assertion_key(&srv, &admin);
    let header = seen
        .lock()
        .unwrap()
        .clone()
        .expect("no assertion reached the upstream");
    let claims = rampart_edge::assertion::verify(&header, &vk, now, "app").unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.svc.as_str()),
        ("anonymous", "app")
    );
    assert!(rampart_edge::assertion::verify(&header, &vk, now, "other-service").is_err());
    let resp = a
        .get(format!("{https}/hello"))
        .header("X-Rampart-Assertion", "v1.forged.forged")
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let header = seen.lock().unwrap().clone().unwrap();
    assert_ne!(header, "v1.forged.forged");
    rampart_edge::assertion::verify(&header, &vk, now, "app").unwrap();
    assert!(rampart_edge::assertion::verify("", &vk, now, "app").is_err());

    // An attack is refused by the WAF and never reaches the upstream.
    let resp = a
        .get(format!(
            "{https}/search?q=1%20UNION%20SELECT%20password%20FROM%20users"
        ))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().contains_key("strict-transport-security"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the attack reached the upstream"
    );
    // The same attack on the route that excludes rule 1001 goes through.
    let resp = a
        .get(format!(
            "{https}/cms/search?q=1%20UNION%20SELECT%20password%20FROM%20users"
        ))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // Every request is in the api-access tier; the denial also in the security tier.
    let found = events_once(&srv, &admin, "tier=api-access&action=edge.get", |e| {
        e.len() >= 2
    });
    let events = found["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["outcome"] == "denied"
            && e["reason"].as_str().unwrap_or("").starts_with("status 403")),
        "{found}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["outcome"] == "allowed" && e["resource"] == "127.0.0.1/hello"),
        "{found}"
    );
    // The security tier's copy follows within the log's copy delay.
    let security = events_once(&srv, &admin, "tier=security&action=edge.get", |e| {
        e.iter().any(|e| e["outcome"] == "denied")
    });
    assert!(
        security["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["outcome"] == "denied")),
        "{security}"
    );
    // The record names the matched rule, its message and the route.
    let waf = security["events"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["details"]["waf_rules"] == "1001"))
        .unwrap_or_else(|| panic!("no WAF details: {security}"));
    assert_eq!(waf["details"]["waf_messages"], "SQL injection", "{waf}");
    assert_eq!(waf["details"]["waf_mode"], "block", "{waf}");
    assert_eq!(waf["details"]["status"], "403", "{waf}");
    assert_eq!(waf["details"]["route"], "127.0.0.1/", "{waf}");

    // Prometheus: edge requests by route and status, upstream health.
    let metrics = srv.get("/metrics", None).body;
    assert!(
        metrics.contains("rampart_edge_requests_total{route=\"127.0.0.1/\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"403\""), "{metrics}");
    for (name, value) in [("up", 1), ("weight", 1), ("backup", 0)] {
        assert!(
            metrics.contains(&format!(
                "rampart_edge_upstream_{name}{{service=\"app\",upstream=\"127.0.0.1:{port}\"}} {value}"
            )),
            "{name}: {metrics}"
        );
    }
    // Connections closed on timeouts, and WebSocket tunnels.
    for line in [
        "rampart_edge_connections_closed_total{reason=\"not_reading\"} 0",
        "rampart_edge_connections_closed_total{reason=\"slow_head\"} 0",
        "rampart_edge_websocket_tunnels_open 0",
        "rampart_edge_websocket_tunnels_total 0",
        "rampart_edge_certificate_expiry_timestamp_seconds{name=",
    ] {
        assert!(metrics.contains(line), "no {line:?} in {metrics}");
    }
}

/// Every request an upstream got: its path and its assertion header.
type Requests = Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// An upstream that answers `ok` and keeps the path and assertion of
/// every request.
fn recording_upstream() -> (u16, Requests) {
    let got: Requests = Arc::default();
    let got2 = got.clone();
    let port = spawn_upstream(move |path, assertion| {
        got2.lock().unwrap().push((path.to_string(), assertion));
        "ok".into()
    });
    (port, got)
}

#[test]
fn active_health_checks_from_the_config_file_eject_a_dead_instance_and_sign_their_probes() {
    let (alive, got) = recording_upstream();
    let (other, other_got) = recording_upstream();
    // An instance nobody listens on: connections are refused. The socket is
    // bound and kept (never listening), so that no test running beside is
    // given the port for a live server.
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = reserved.local_addr().unwrap().port();
    let r = Rampart::new();
    std::fs::write(
        r.path("rampart.toml"),
        format!(
            r#"
[edge]
balance = "least_requests"
connect_timeout_ms = 500
drain_seconds = 5

[edge.breaker]
failures_to_open = 1
open_seconds = 600

[edge.health_check]
path = "/status"
interval_ms = 200
timeout_ms = 150
rise = 1
fall = 1

[[environments]]
name = "prod"

[[services]]
name = "app"
environment = "prod"
port = {alive}
upstreams = ["127.0.0.1:{alive}", "127.0.0.1:{dead}"]

# A service with a health path of its own.
[[services]]
name = "other"
environment = "prod"
port = {other}
upstreams = ["127.0.0.1:{other}"]
health_path = "/other/ready"

[[routes]]
host = "127.0.0.1"
service = "app"
"#
        ),
    )
    .unwrap();
    let admin = r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);

    // With no traffic at all, the probes find the dead instance and take it
    // out; the live one stays in.
    let metric = |port: u16| {
        format!("rampart_edge_upstream_up{{service=\"app\",upstream=\"127.0.0.1:{port}\"}}")
    };
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = srv.get("/metrics", None).body;
        // Both probes of a round run at once: the refused one can be in
        // before the live one's answer.
        if metrics.contains(&format!("{} 0", metric(dead)))
            && !got.lock().unwrap().is_empty()
            && !other_got.lock().unwrap().is_empty()
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        metrics.contains(&format!("{} 0", metric(dead))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("{} 1", metric(alive))),
        "{metrics}"
    );

    // The probes asked for the configured path, signed by the edge as its
    // health checker for the service, so a service that refuses unsigned
    // traffic still answers them.
    let probes: Vec<_> = got.lock().unwrap().clone();
    assert!(!probes.is_empty(), "no probe reached the live instance");
    let (vk, now) = assertion_key(&srv, &admin);
    let probed_as = |probes: &[(String, Option<String>)], want_path: &str, svc: &str| {
        for (path, assertion) in probes {
            assert_eq!(path, want_path);
            let claims = rampart_edge::assertion::verify(
                assertion.as_deref().expect("a probe without an assertion"),
                &vk,
                now,
                svc,
            )
            .unwrap();
            assert_eq!(claims.sub, "rampart-edge-health");
            assert!(claims.roles.is_empty());
        }
    };
    probed_as(&probes, "/status", "app");
    probed_as(&other_got.lock().unwrap().clone(), "/other/ready", "other");

    // Traffic goes to the live instance only: every answer is its own.
    let https = edge_https(&srv);
    let a = agent(&std::fs::read(r.path("data/tls/ca.pem")).unwrap());
    for i in 0..6 {
        let mut resp = a.get(format!("{https}/req{i}")).call().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body_mut().read_to_string().unwrap(), "ok");
    }
    let seen: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .filter(|p| p.starts_with("/req"))
        .collect();
    assert_eq!(seen.len(), 6, "{seen:?}");
}

#[test]
fn bad_edge_upstream_settings_are_refused_with_their_line() {
    let r = Rampart::new();
    std::fs::write(
        r.path("bad.toml"),
        "[edge]\nbalance = \"random\"\n\n[edge.health_check]\npath = \"status\"\ninterval_ms = 1000\ntimeout_ms = 5000\n",
    )
    .unwrap();
    let out = r.run(&["config", "check", "bad.toml"]);
    assert!(!out.status.success());
    let err = util::stderr(&out);
    for want in [
        "bad.toml:2:",
        "edge.balance",
        "least_requests",
        "bad.toml:5:",
        "edge.health_check.path",
        "bad.toml:7:",
        "edge.health_check.timeout_ms",
    ] {
        assert!(err.contains(want), "no {want:?} in {err}");
    }
}

/// `rampart status --check-drift` against `srv`, as `admin`.
fn check_drift(r: &Rampart, srv: &util::Server, admin: &str) -> std::process::Output {
    let mut c = r.cmd(&[
        "status",
        "--check-drift",
        "--addr",
        &srv.base(),
        "--data-dir",
        "data",
    ]);
    c.env("RAMPART_TOKEN", admin);
    c.output().unwrap()
}

/// A config with an edge, one service on the upstream at `port`, and one
/// route for `prefix` on host 127.0.0.1.
fn one_route_config(port: u16, prefix: &str) -> String {
    format!(
        "[edge]\n\n[[environments]]\nname = \"prod\"\n\n[[services]]\nname = \"app\"\nenvironment = \"prod\"\nport = {port}\nupstreams = [\"127.0.0.1:{port}\"]\n\n[[routes]]\nhost = \"127.0.0.1\"\npath_prefix = \"{prefix}\"\nservice = \"app\"\n"
    )
}

/// A node started from `one_route_config(port, "/a")` in a fresh
/// directory, before an upstream on `port`: (port, directory, admin
/// credential, server).
fn one_route_node() -> (u16, Rampart, String, util::Server) {
    let (port, _hits, _seen) = upstream();
    let r = Rampart::new();
    std::fs::write(r.path("rampart.toml"), one_route_config(port, "/a")).unwrap();
    let admin = r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    (port, r, admin, srv)
}

#[test]
fn sighup_reloads_routes_and_refuses_a_bad_config_while_serving() {
    let (port, r, admin, srv) = one_route_node();
    let config = |prefix: &str| one_route_config(port, prefix);
    let https = edge_https(&srv);
    let a = agent(&std::fs::read(r.path("data/tls/ca.pem")).unwrap());
    let status = |path: &str| {
        a.get(format!("{https}{path}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status("/a/x"), 200);
    assert_eq!(status("/b"), 404);
    let hup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &srv.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    };

    std::fs::write(r.path("rampart.toml"), config("/")).unwrap();
    hup();
    let mut ok = false;
    for _ in 0..100 {
        if status("/b") == 200 {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(ok, "the new route never took effect");

    std::fs::write(r.path("rampart.toml"), "[edge]\nnot valid = = toml\n").unwrap();
    hup();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        status("/b"),
        200,
        "a bad reload must leave the old config serving"
    );

    // The control API reloads the same way: a bad file is refused with the
    // line it is wrong on, a good one takes effect; only admins may ask.
    let refused = srv.send("POST", "/v1/edge/reload", Some(&admin), "");
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("rampart.toml:2"), "{}", refused.body);
    assert_eq!(status("/b"), 200);
    std::fs::write(r.path("rampart.toml"), config("/a")).unwrap();
    let ok = srv.send("POST", "/v1/edge/reload", Some(&admin), "");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["routes"], 1);
    assert_eq!(ok.json()["needs_restart"], serde_json::json!([]));
    assert_eq!(status("/b"), 404);
    assert_eq!(status("/a/x"), 200);
    assert_eq!(srv.send("POST", "/v1/edge/reload", None, "").status, 401);
    // Settings read only at start are kept, and the answer names them.
    std::fs::write(
        r.path("rampart.toml"),
        config("/a").replace(
            "[edge]\n",
            "[edge]\nbalance = \"least_requests\"\ndrain_seconds = 1\n",
        ),
    )
    .unwrap();
    let kept = srv.send("POST", "/v1/edge/reload", Some(&admin), "");
    assert_eq!(kept.status, 200, "{}", kept.body);
    assert_eq!(
        kept.json()["needs_restart"],
        serde_json::json!(["edge.balance", "edge.drain_seconds"])
    );
    hup();
    std::thread::sleep(std::time::Duration::from_millis(500));

    let (exit, lines) = srv.terminate();
    assert!(exit.success());
    assert!(
        lines.iter().any(|l| l.starts_with("reloaded ")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("reload refused")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l
                == "reload: kept as started until a restart: edge.balance, edge.drain_seconds"),
        "{lines:?}"
    );
}

/// A client CA as an operator would make one: (issuer, its PEM).
fn client_ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A client certificate: (certificate PEM, key PEM).
fn client_cert(
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    cn: &str,
    serial: &[u8],
) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_string());
    p.serial_number = Some(rcgen::SerialNumber::from_slice(serial));
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn agent_with_cert(ca: &[u8], cert: &str, key: &str) -> ureq::Agent {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(vec![Certificate::from_pem(
            ca,
        )
        .unwrap()])))
        .client_cert(Some(ClientCert::new_with_certs(
            &[Certificate::from_pem(cert.as_bytes()).unwrap()],
            PrivateKey::from_pem(key.as_bytes()).unwrap(),
        )))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .new_agent()
}

#[test]
fn client_certificate_routes_name_the_principal_and_refuse_revoked_serials() {
    let (port, hits, seen) = upstream();
    let r = Rampart::new();
    let ca = client_ca();
    std::fs::write(r.path("clients.pem"), ca.pem()).unwrap();
    std::fs::write(
        r.path("rampart.toml"),
        format!(
            r#"
[edge]
client_ca = ["clients.pem"]
revoked_client_serials = ["0b"]

[[environments]]
name = "prod"

[[services]]
name = "app"
environment = "prod"
port = {port}
upstreams = ["127.0.0.1:{port}"]

[[routes]]
host = "127.0.0.1"
path_prefix = "/internal"
service = "app"
auth = "client_cert"

[[routes]]
host = "127.0.0.1"
service = "app"
"#
        ),
    )
    .unwrap();
    let admin = r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    let https = edge_https(&srv);
    let server_ca = std::fs::read(r.path("data/tls/ca.pem")).unwrap();

    // Without a certificate: the public route answers, the internal one refuses.
    let plain = agent(&server_ca);
    assert_eq!(plain.get(format!("{https}/")).call().unwrap().status(), 200);
    let mut resp = plain.get(format!("{https}/internal/jobs")).call().unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value =
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A certificate from the client CA: passed, and the upstream's assertion
    // names the certificate's principal.
    let (cert, key) = client_cert(&ca, "billing-worker", &[0x0a]);
    let good = agent_with_cert(&server_ca, &cert, &key);
    let resp = good.get(format!("{https}/internal/jobs")).call().unwrap();
    assert_eq!(resp.status(), 200);
    let header = seen.lock().unwrap().clone().unwrap();
    let claims_b64 = header.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims_b64,
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["sub"], "billing-worker");

    // A revoked serial is refused everywhere and lands in the security tier.
    let (cert, key) = client_cert(&ca, "lost-laptop", &[0x0b]);
    let revoked = agent_with_cert(&server_ca, &cert, &key);
    assert_eq!(
        revoked.get(format!("{https}/")).call().unwrap().status(),
        403
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let found = events_once(&srv, &admin, "tier=security&action=edge.get", |e| {
        e.iter().any(|e| {
            e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("client_cert_revoked")
        })
    });
    let events = found["events"].as_array().unwrap();
    let ev = events
        .iter()
        .find(|e| {
            e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("client_cert_revoked")
        })
        .unwrap_or_else(|| panic!("{found}"));
    assert_eq!(ev["actor"]["principal"], "lost-laptop", "{ev}");
    assert_eq!(ev["details"]["client_cert_serial"], "b", "{ev}");
}

/// Two edges (two nodes, each its own data directory) in front of one
/// upstream share a route's per-client bucket through Redis: what one node
/// admitted counts on the other within a sync interval.
#[test]
fn two_edges_share_rate_limits_through_redis() {
    let Some(redis_url) = util::test_redis_url() else {
        return;
    };
    let (port, hits, _) = upstream();
    let prefix = format!("e2e-{}:", std::process::id());
    // Node B reaches Redis over TLS where the test server offers it.
    let tls = std::env::var("RAMPART_TEST_REDIS_TLS_URL")
        .ok()
        .zip(std::env::var("RAMPART_TEST_REDIS_CA").ok());
    let node = |name: &str, url: &str, ca: Option<&str>| {
        let r = Rampart::new();
        let tls_ca = ca.map(|c| format!("tls_ca = {c:?}")).unwrap_or_default();
        std::fs::write(
            r.path("rampart.toml"),
            format!(
                r#"
[node]
name = "{name}"

[redis]
url_env = "LIMITS_REDIS_URL"
sync_interval_ms = 50
key_prefix = "{prefix}"
{tls_ca}

[edge]

[[environments]]
name = "prod"

[[services]]
name = "app"
environment = "prod"
port = {port}
upstreams = ["127.0.0.1:{port}"]

[[routes]]
host = "127.0.0.1"
service = "app"
rate_limit = {{ burst = 6, per_second = 0.01 }}
"#
            ),
        )
        .unwrap();
        r.init();
        let mut cmd = r.cmd(&[]);
        cmd.env("LIMITS_REDIS_URL", url);
        let srv = r.up_with(cmd, &["--config", "rampart.toml", "--data-dir", "data"]);
        assert!(
            srv.printed
                .iter()
                .any(|l| l.starts_with("edge rate limits: shared through Redis")),
            "{:?}",
            srv.printed
        );
        let a = agent(&std::fs::read(r.path("data/tls/ca.pem")).unwrap());
        (r, srv, a)
    };
    let (_ra, srv_a, agent_a) = node("edge-a", &redis_url, None);
    let (_rb, srv_b, agent_b) = match &tls {
        Some((tls_url, ca)) => node("edge-b", tls_url, Some(ca)),
        None => node("edge-b", &redis_url, None),
    };
    let (url_a, url_b) = (edge_https(&srv_a), edge_https(&srv_b));
    let status = |agent: &ureq::Agent, base: &str| {
        agent
            .get(format!("{base}/x"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    let settle = || std::thread::sleep(std::time::Duration::from_millis(400));

    // Four through A; B then sees two left for this client, A none.
    for _ in 0..4 {
        assert_eq!(status(&agent_a, &url_a), 200);
    }
    settle();
    assert_eq!(status(&agent_b, &url_b), 200);
    settle();
    assert_eq!(status(&agent_b, &url_b), 200);
    let refused = agent_b.get(format!("{url_b}/x")).call().unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    settle();
    assert_eq!(status(&agent_a, &url_a), 429);
    assert_eq!(hits.load(Ordering::SeqCst), 6);
    let m = srv_a.get("/metrics", None).body;
    assert!(
        m.lines().any(
            |l| l.starts_with("rampart_edge_rate_limit_syncs_total{result=\"ok\"}")
                && !l.ends_with(" 0")
        ),
        "{m}"
    );

    // Without the variable naming Redis, the node does not start.
    let r = Rampart::new();
    std::fs::write(r.path("rampart.toml"), "[redis]\n[edge]\n").unwrap();
    r.init();
    let out = r.run(&["up", "--config", "rampart.toml", "--data-dir", "data"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        util::stderr(&out).contains("RAMPART_REDIS_URL is not set"),
        "{}",
        util::stderr(&out)
    );
}

/// The environment wall at the edge: an API key (or a session) passes a
/// route only in the environment of the route's service.
#[test]
fn edge_credentials_pass_only_in_their_own_environment() {
    let (port, hits, _seen) = upstream();
    let r = Rampart::new();
    std::fs::write(
        r.path("rampart.toml"),
        format!(
            r#"
[edge]

[[environments]]
name = "prod"

[[environments]]
name = "staging"

[[services]]
name = "billing"
environment = "prod"
port = {port}
upstreams = ["127.0.0.1:{port}"]

[[routes]]
host = "127.0.0.1"
service = "billing"
auth = "api_key"
"#
        ),
    )
    .unwrap();
    let admin = r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    let https = edge_https(&srv);
    let client = agent(&std::fs::read(r.path("data/tls/ca.pem")).unwrap());
    let created = srv.post(
        "/v1/users",
        Some(&admin),
        serde_json::json!({"name": "billing-job", "kind": "service", "roles": ["team_member"],
            "environments": ["prod", "staging"]}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let key_in = |env: &str| {
        let k = srv.post(
            "/v1/apikeys",
            Some(&admin),
            serde_json::json!({"environment": env, "owner": "billing-job"}),
        );
        assert_eq!(k.status, 201, "{}", k.body);
        k.json()["key"].as_str().unwrap().to_string()
    };
    let (prod, staging) = (key_in("prod"), key_in("staging"));
    let call = |key: &str| {
        client
            .get(format!("{https}/invoices"))
            .header("Authorization", format!("Bearer {key}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(call(&staging), 401, "a staging key at a prod service");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    assert_eq!(call(&prod), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// `GET /v1/status` tells admins whether the config file still says what
/// the node runs, and if not, what a reload applies and what needs a
/// restart; a reload moves the routes back in line.
#[test]
fn status_reports_drift_between_the_file_and_what_runs() {
    let (port, r, admin, srv) = one_route_node();
    let config = |prefix: &str| one_route_config(port, prefix);
    let drift = || srv.get("/v1/status", Some(&admin)).json()["config"].clone();
    let d = drift();
    assert_eq!(d["state"], "current", "{d}");
    assert!(d["file"].as_str().unwrap().ends_with("rampart.toml"), "{d}");
    // `rampart status --check-drift`, for a deploy pipeline.
    let check = || check_drift(&r, &srv, &admin);
    let out = check();
    assert_eq!(out.status.code(), Some(0), "{}", util::stderr(&out));
    assert!(util::stdout(&out).contains("\"current\""));

    std::fs::write(
        r.path("rampart.toml"),
        config("/b").replace("[edge]\n", "[edge]\ndrain_seconds = 3\n"),
    )
    .unwrap();
    let d = drift();
    assert_eq!(d["state"], "drifted", "{d}");
    let out = check();
    assert_eq!(out.status.code(), Some(1), "{}", util::stderr(&out));
    assert!(util::stderr(&out).contains("config drift: drifted"));
    assert_eq!(d["reload_applies"], serde_json::json!(["routes"]), "{d}");
    assert_eq!(
        d["restart_needed"],
        serde_json::json!(["edge.drain_seconds"]),
        "{d}"
    );

    let ok = srv.send("POST", "/v1/edge/reload", Some(&admin), "");
    assert_eq!(ok.status, 200, "{}", ok.body);
    let d = drift();
    assert_eq!(d["reload_applies"], serde_json::json!([]), "{d}");
    assert_eq!(
        d["restart_needed"],
        serde_json::json!(["edge.drain_seconds"]),
        "{d}"
    );

    std::fs::write(r.path("rampart.toml"), "[edge]\nnot valid = = toml\n").unwrap();
    let d = drift();
    assert_eq!(d["state"], "invalid", "{d}");
    assert!(
        d["error"].as_str().unwrap().contains("rampart.toml:2"),
        "{d}"
    );
}

/// An expired edge certificate: `config check` refuses it, naming the
/// field and file, and `up` (which still starts, so that a renewal can be
/// reloaded) warns about it.
#[test]
fn an_expired_edge_certificate_is_refused_by_check_and_warned_about_at_start() {
    let (port, _hits, _seen) = upstream();
    let r = Rampart::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(r.path("old.pem"), cert.pem()).unwrap();
    std::fs::write(r.path("old.key"), key.serialize_pem()).unwrap();
    let config = one_route_config(port, "/").replace(
        "[edge]\n",
        "[edge]\n[[edge.certificates]]\nnames = [\"127.0.0.1\"]\ncert = \"old.pem\"\nkey = \"old.key\"\n",
    );
    std::fs::write(r.path("rampart.toml"), config).unwrap();
    let out = r.run(&["config", "check", "rampart.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = util::stderr(&out);
    assert!(
        err.contains("edge.certificates[0].cert")
            && err.contains("old.pem")
            && err.contains("expired"),
        "{err}"
    );
    r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    assert!(
        srv.printed
            .iter()
            .any(|l| l.contains("WARNING: the certificate for 127.0.0.1 has expired")),
        "{:?}",
        srv.printed
    );
}

/// A deployment through the real binary: the config is changed to an
/// instance that never answers and reloaded; the live instance keeps
/// serving, and once the deploy window has passed the rollback shows in
/// `/metrics`.
#[test]
fn a_reload_to_dead_instances_is_rolled_back_and_shown_in_metrics() {
    let (port, _hits, _seen) = upstream();
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead = reserved.local_addr().unwrap().port();
    let checks = "[edge.health_check]\ninterval_ms = 100\ntimeout_ms = 100\nrise = 1\nfall = 1\ndeploy_window_ms = 600\n";
    let config =
        |up: u16| one_route_config(up, "/a").replace("[edge]\n", &format!("[edge]\n{checks}"));
    let r = Rampart::new();
    std::fs::write(r.path("rampart.toml"), config(port)).unwrap();
    let admin = r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    let https = edge_https(&srv);
    let a = agent(&std::fs::read(r.path("data/tls/ca.pem")).unwrap());
    let status = || {
        a.get(format!("{https}/a/x"))
            .call()
            .map_or(0, |r| r.status().as_u16())
    };
    assert_eq!(status(), 200);

    std::fs::write(r.path("rampart.toml"), config(dead)).unwrap();
    let ok = srv.send("POST", "/v1/edge/reload", Some(&admin), "");
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        status(),
        200,
        "the old instance serves during the deployment"
    );
    let rolled_back = "rampart_edge_deployment{service=\"app\",state=\"rolled_back\"} 1";
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = srv.get("/metrics", None).body;
        if metrics.contains(rolled_back) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(metrics.contains(rolled_back), "{metrics}");
    assert_eq!(status(), 200, "the old instance serves after the rollback");
    // The status report and a deploy pipeline's drift check say so.
    let st = srv.get("/v1/status", Some(&admin)).json();
    assert_eq!(
        st["deployments"]["pending"],
        serde_json::json!(["app"]),
        "{st}"
    );
    let recent = &st["deployments"]["recent"][0];
    assert_eq!(recent["state"], "rolled_back", "{st}");
    assert_eq!(
        recent["unhealthy"],
        serde_json::json!([format!("127.0.0.1:{dead}")])
    );
    let out = check_drift(&r, &srv, &admin);
    assert_eq!(out.status.code(), Some(1), "{}", util::stderr(&out));
    assert!(util::stderr(&out).contains("app"), "{}", util::stderr(&out));
    drop(reserved);
}

/// HSTS with `preload` and a security header set from the config file,
/// through the real binary.
#[test]
fn hsts_preload_and_security_headers_come_from_the_config_file() {
    let (port, _hits, _seen) = upstream();
    let r = Rampart::new();
    let config = one_route_config(port, "/").replace(
        "[edge]\n",
        "[edge]\nhsts_preload = true\nsecurity_headers = { \"Content-Security-Policy\" = \"default-src 'self'\" }\n",
    );
    std::fs::write(r.path("rampart.toml"), config).unwrap();
    r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    let a = agent(&std::fs::read(r.path("data/tls/ca.pem")).unwrap());
    let resp = a.get(format!("{}/x", edge_https(&srv))).call().unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    assert_eq!(
        h("strict-transport-security").as_deref(),
        Some("max-age=31536000; includeSubDomains; preload")
    );
    assert_eq!(
        h("content-security-policy").as_deref(),
        Some("default-src 'self'")
    );
    assert_eq!(h("x-frame-options"), None);
}

/// One HTTPS request to the edge at `https` (its URL) over a connection
/// that opens with `header`, as a layer-4 balancer sends it: the status
/// code, or `None` when the edge closed the connection.
fn status_behind_balancer(https: &str, ca: &[u8], header: &[u8]) -> Option<u16> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    use std::io::Read;
    let addr = https.trim_start_matches("https://").trim_end_matches('/');
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    tcp.write_all(header).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(addr.rsplit_once(':').unwrap().0.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let host = addr.rsplit_once(':').unwrap().0;
    let req = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Behind a layer-4 balancer: `proxy_protocol_from` in the config file
/// makes the PROXY header's client the one the IP rules judge.
#[test]
fn the_proxy_protocol_header_names_the_client_for_the_ip_rules() {
    let (port, hits, _seen) = upstream();
    let r = Rampart::new();
    let config = one_route_config(port, "/").replace(
        "[edge]\n",
        "[edge]\nproxy_protocol_from = [\"127.0.0.0/8\"]\ndeny_cidrs = [\"203.0.113.0/24\"]\n",
    );
    std::fs::write(r.path("rampart.toml"), config).unwrap();
    r.init();
    let srv = r.up(&["--config", "rampart.toml", "--data-dir", "data"]);
    let https = edge_https(&srv);
    let ca = std::fs::read(r.path("data/tls/ca.pem")).unwrap();
    let v1 = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 443\r\n").into_bytes();
    assert_eq!(
        status_behind_balancer(&https, &ca, &v1("198.51.100.1")),
        Some(200)
    );
    assert_eq!(
        status_behind_balancer(&https, &ca, &v1("203.0.113.9")),
        Some(403)
    );
    // From the balancer's address, a connection must carry the header.
    assert_eq!(status_behind_balancer(&https, &ca, b""), None);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A denial's security-tier copy is written after the answer (within the
/// log's copy delay); a kill before that loses nothing: the next start
/// writes it from the durable api-access record.
#[test]
fn a_denials_security_copy_survives_a_kill_before_it_is_written() {
    let (port, _hits, _seen) = upstream();
    let r = Rampart::new();
    std::fs::write(
        r.path("rampart.toml"),
        format!(
            "[audit]\ncopy_delay_ms = 60000\n\n{}",
            one_route_config(port, "/")
        )
        .replace("[edge]\n", "[edge]\ndeny_cidrs = [\"127.0.0.0/8\"]\n"),
    )
    .unwrap();
    let admin = r.init();
    let args = ["--config", "rampart.toml", "--data-dir", "data"];
    let srv = r.up(&args);
    let https = edge_https(&srv);
    let a = agent(&std::fs::read(r.path("data/tls/ca.pem")).unwrap());
    let resp = a.get(format!("{https}/x")).call().unwrap();
    assert_eq!(resp.status(), 403);
    let denied = |srv: &util::Server, tier: &str| {
        srv.get(
            &format!("/v1/audit/events?tier={tier}&action=edge.get&outcome=denied"),
            Some(&admin),
        )
        .json()["events"]
            .as_array()
            .map_or(0, Vec::len)
    };
    // answered once the api-access record was durable; the copy waits
    assert_eq!(denied(&srv, "api-access"), 1);
    assert_eq!(denied(&srv, "security"), 0);
    drop(srv); // SIGKILL
               // Offline, verify names the copy not written yet, and passes.
    let out = r.run(&["audit", "verify", "--data-dir", "data"]);
    assert!(out.status.success(), "{}", util::stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("copies api-access -> security: 0 of 1 present")
            && said.contains("1 not written yet"),
        "{said}"
    );

    let srv = r.up(&args);
    assert!(
        srv.printed
            .iter()
            .any(|l| l
                .contains("wrote 1 security copies of api-access records that a crash left out")),
        "{:?}",
        srv.printed
    );
    assert_eq!(denied(&srv, "security"), 1);
    assert_eq!(denied(&srv, "api-access"), 1);
    let (status, _) = srv.terminate();
    assert!(status.success());
    let out = r.run(&["audit", "verify", "--data-dir", "data"]);
    assert!(out.status.success(), "{}", util::stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("copies api-access -> security: 1 of 1 present\nok"),
        "{said}"
    );
}
