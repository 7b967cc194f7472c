use super::*;
use std::path::Path;

fn fixtures(kind: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(!v.is_empty());
    v
}

#[test]
fn good_fixtures_load() {
    for f in fixtures("good") {
        Config::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

/// Each bad fixture's first line says where the first error must be reported:
/// `# expect: LINE:COL PATH | MESSAGE-SUBSTRING`.
#[test]
fn bad_fixtures_report_line_column_and_field() {
    for f in fixtures("bad") {
        let text = std::fs::read_to_string(&f).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no expect line", f.display()));
        let (loc_path, msg) = expect.split_once(" | ").unwrap();
        let (loc, path) = loc_path.split_once(' ').unwrap_or((loc_path, ""));
        let (line, col) = loc.split_once(':').unwrap();
        let err = Config::load(&f).expect_err(&f.display().to_string());
        let d = err.diagnostics().first().unwrap_or_else(|| panic!("{err}"));
        let name = f.display().to_string();
        assert_eq!(d.file, name);
        assert_eq!(d.line.to_string(), line, "{name}: {d}");
        assert_eq!(d.column.to_string(), col, "{name}: {d}");
        assert_eq!(d.path, path, "{name}: {d}");
        assert!(d.message.contains(msg), "{name}: {d}");
        assert!(d.to_string().starts_with(&format!("{name}:{line}:{col}: ")));
    }
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = r#"
[[environments]]
name = "prod"

[[services]]
name = "api"
environment = "staging"
port = 0

[[routes]]
host = "x.example.com"
service = "nope"
deny_cidrs = ["not-a-net"]
"#;
    let err = Config::parse(text, "t.toml").unwrap_err();
    let paths: Vec<_> = err.diagnostics().iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "services[0].environment",
            "services[0].port",
            "routes[0].service",
            "routes[0].deny_cidrs[0]"
        ]
    );
}

#[test]
fn defaults_and_dev_config() {
    let c = Config::parse("", "empty.toml").unwrap();
    assert_eq!(c.control.listen.to_string(), DEFAULT_CONTROL_LISTEN);
    assert_eq!(c.audit.retention.security, 3653);
    assert_eq!(c.audit.retention.api_access, 90);
    let dev = Config::dev().unwrap();
    assert_eq!(dev.environments[0].name, "dev");
    assert_eq!(dev.keys[0].rotation_days, 365);
}

#[test]
fn example_file_is_valid() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/rampart.toml");
    let c = Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
    assert!(!c.services.is_empty() && !c.routes.is_empty());
}

#[test]
fn hostile_inputs_do_not_panic() {
    for text in [
        "\u{0}",
        "[[",
        "a = \"\\u{D800}\"",
        "[[services]]\nport = 99999999999999999999",
        "[audit.retention]\nsecurity = -1",
        "[[routes]]\nhost = \"\"\nservice = \"\"\npath_prefix = \"../x\"",
        "[control]\nlisten = \"localhost\"",
    ] {
        let _ = Config::parse(text, "h.toml");
    }
    let big = "x".repeat(1 << 16);
    let _ = Config::parse(&big, "big.toml");
}

#[test]
fn permissions_allow_dotted_actions_and_wildcards_only() {
    let role = |perm: &str| format!("[[roles]]\nname = \"r\"\npermissions = [\"{perm}\"]\n");
    for ok in [
        "*",
        "keys:*",
        "keys:encrypt",
        "identity:apikeys.own",
        "identity:users.*",
    ] {
        Config::parse(&role(ok), "p.toml").unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "keys",
        "Keys:encrypt",
        "keys:",
        ":x",
        "keys:.own",
        "keys:a..b",
        "id:a b",
        "x.y:z",
    ] {
        let err = Config::parse(&role(bad), "p.toml").unwrap_err();
        assert_eq!(
            err.diagnostics()[0].path,
            "roles[0].permissions[0]",
            "{bad}"
        );
    }
}

#[test]
fn route_rate_and_body_limits_are_checked() {
    let base = "[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n[[routes]]\nhost = \"x.test\"\nservice = \"a\"\n";
    let ok = Config::parse(
        &format!("{base}max_body_bytes = 1024\nrate_limit = {{ burst = 5, per_second = 0.5 }}\nupstream_timeout_seconds = 120\n"),
        "r.toml",
    )
    .unwrap();
    assert_eq!(ok.routes[0].max_body_bytes, Some(1024));
    assert_eq!(ok.routes[0].upstream_timeout_seconds, Some(120));
    assert_eq!(ok.routes[0].rate_limit.map(|r| r.burst), Some(5));
    let err = Config::parse(
        &format!("{base}max_body_bytes = 0\nrate_limit = {{ burst = 0, per_second = -1.0 }}\nupstream_timeout_seconds = 0\n"),
        "r.toml",
    )
    .unwrap_err();
    let paths: Vec<_> = err.diagnostics().iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].max_body_bytes",
            "routes[0].rate_limit.burst",
            "routes[0].rate_limit.per_second",
            "routes[0].upstream_timeout_seconds"
        ]
    );
}

#[test]
fn control_client_ca_paths_are_kept_and_an_empty_one_is_named() {
    let c = Config::parse("[control]\nclient_ca = [\"a.pem\", \"b.pem\"]\n", "c.toml").unwrap();
    assert_eq!(c.control.client_ca.len(), 2);
    assert!(Config::parse("", "c.toml")
        .unwrap()
        .control
        .client_ca
        .is_empty());
    let err = Config::parse("[control]\nclient_ca = [\"a.pem\", \" \"]\n", "c.toml").unwrap_err();
    assert_eq!(err.diagnostics()[0].path, "control.client_ca[1]");
}

#[test]
fn service_tls_names_its_ca_and_a_server_name_needs_one() {
    let base = "[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n";
    let c = Config::parse(
        &format!("{base}tls_ca = \"ca.pem\"\ntls_server_name = \"App.Internal\"\n"),
        "s.toml",
    )
    .unwrap();
    assert_eq!(
        c.services[0].tls_ca.as_deref(),
        Some(std::path::Path::new("ca.pem"))
    );
    assert_eq!(
        c.services[0].tls_server_name.as_deref(),
        Some("app.internal")
    );
    let err = Config::parse(
        &format!("{base}tls_server_name = \"app.internal\"\n"),
        "s.toml",
    )
    .unwrap_err();
    assert_eq!(err.diagnostics()[0].path, "services[0].tls_server_name");
    let err = Config::parse(&format!("{base}tls_ca = \"\"\n"), "s.toml").unwrap_err();
    assert_eq!(err.diagnostics()[0].path, "services[0].tls_ca");
    // A client certificate: with its key, over TLS.
    let c = Config::parse(
        &format!(
            "{base}tls_ca = \"ca.pem\"\ntls_client_cert = \"e.pem\"\ntls_client_key = \"e.key\"\n"
        ),
        "s.toml",
    )
    .unwrap();
    let id = c.services[0].tls_client.as_ref().unwrap();
    assert_eq!(
        (id.cert.to_str(), id.key.to_str()),
        (Some("e.pem"), Some("e.key"))
    );
    for (text, field) in [
        (
            "tls_ca = \"ca.pem\"\ntls_client_cert = \"e.pem\"\n",
            "services[0].tls_client_cert",
        ),
        (
            "tls_ca = \"ca.pem\"\ntls_client_key = \"e.key\"\n",
            "services[0].tls_client_key",
        ),
        (
            "tls_client_cert = \"e.pem\"\ntls_client_key = \"e.key\"\n",
            "services[0].tls_client_cert",
        ),
    ] {
        let err = Config::parse(&format!("{base}{text}"), "s.toml").unwrap_err();
        assert_eq!(err.diagnostics()[0].path, field, "{text}");
    }
}

#[test]
fn websocket_is_off_unless_a_route_turns_it_on() {
    let base = "[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n[[routes]]\nhost = \"x.test\"\nservice = \"a\"\n";
    assert!(!Config::parse(base, "w.toml").unwrap().routes[0].websocket);
    let on = Config::parse(&format!("{base}websocket = true\n"), "w.toml").unwrap();
    assert!(on.routes[0].websocket);
    let err = Config::parse(&format!("{base}websocket = \"yes\"\n"), "w.toml").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("w.toml:10"), "{text}");
}

#[test]
fn streamed_request_bodies_only_where_nothing_reads_them() {
    let env = "[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n";
    let route = "[[routes]]\nhost = \"x.test\"\nservice = \"a\"\n";
    let base = format!("{env}{route}");
    assert!(!Config::parse(&base, "s.toml").unwrap().routes[0].stream_request_body);
    let on = Config::parse(&format!("{base}stream_request_body = true\n"), "s.toml").unwrap();
    assert!(on.routes[0].stream_request_body);
    // Refused on the setting's own field and line, with what to change.
    let refused = |text: String, line: &str, hint: &str| {
        let err = Config::parse(&text, "s.toml").unwrap_err();
        assert_eq!(
            err.diagnostics()[0].path,
            "routes[0].stream_request_body",
            "{err}"
        );
        let shown = err.to_string();
        assert!(shown.contains(line) && shown.contains(hint), "{shown}");
    };
    // With a JSON Schema.
    refused(
        format!("{base}json_schema = \"s.json\"\nstream_request_body = true\n"),
        "s.toml:11",
        "json_schema",
    );
    // With the firewall on the route (its default once rules are loaded):
    // refused; with the route's firewall off, or no rules at all: allowed.
    let waf = "[edge]\nwaf_rules = [\"rules.conf\"]\n";
    refused(
        format!("{waf}{base}stream_request_body = true\n"),
        "s.toml:12",
        "waf = \"off\"",
    );
    for mode in ["block", "detect"] {
        let text = format!("{waf}{base}waf = \"{mode}\"\nstream_request_body = true\n");
        assert!(Config::parse(&text, "s.toml").is_err(), "{mode}");
    }
    let off = format!("{waf}{base}waf = \"off\"\nstream_request_body = true\n");
    assert!(Config::parse(&off, "s.toml").unwrap().routes[0].stream_request_body);
    let err = Config::parse(&format!("{base}stream_request_body = 1\n"), "s.toml").unwrap_err();
    assert!(err.to_string().contains("s.toml:10"), "{err}");
}

#[test]
fn services_speak_http1_unless_they_say_http2() {
    let svc = "[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n";
    let route = "[[routes]]\nhost = \"x.test\"\nservice = \"a\"\n";
    let c = Config::parse(&format!("{svc}{route}"), "p.toml").unwrap();
    assert_eq!(c.services[0].protocol, UpstreamProtocol::Http1);
    let c = Config::parse(&format!("{svc}protocol = \"http2\"\n{route}"), "p.toml").unwrap();
    assert_eq!(c.services[0].protocol, UpstreamProtocol::Http2);
    let err = Config::parse(&format!("{svc}protocol = \"grpc\"\n{route}"), "p.toml").unwrap_err();
    assert_eq!(err.diagnostics()[0].path, "services[0].protocol");
    assert!(err.to_string().contains("p.toml:7"), "{err}");
    // WebSocket tunnels are HTTP/1.1 upgrades.
    let err = Config::parse(
        &format!("{svc}protocol = \"http2\"\n{route}websocket = true\n"),
        "p.toml",
    )
    .unwrap_err();
    assert_eq!(err.diagnostics()[0].path, "routes[0].websocket", "{err}");
}

#[test]
fn an_upstream_path_prefix_must_be_a_plain_path() {
    let base = "[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n[[routes]]\nhost = \"x.test\"\npath_prefix = \"/api\"\nservice = \"a\"\n";
    assert_eq!(
        Config::parse(base, "u.toml").unwrap().routes[0].upstream_path_prefix,
        None
    );
    let ok = Config::parse(&format!("{base}upstream_path_prefix = \"/v2\"\n"), "u.toml").unwrap();
    assert_eq!(ok.routes[0].upstream_path_prefix.as_deref(), Some("/v2"));
    // As TOML strings.
    for bad in [
        r#""v2""#,
        r#""/a b""#,
        r#""/x?y""#,
        r#""/x#y""#,
        r#""/a/../b""#,
        r#""/\u007f""#,
    ] {
        let text = format!("{base}upstream_path_prefix = {bad}\n");
        let err = Config::parse(&text, "u.toml").unwrap_err();
        assert_eq!(
            err.diagnostics()[0].path,
            "routes[0].upstream_path_prefix",
            "{bad}"
        );
        assert!(err.to_string().contains("u.toml:11"), "{err}");
    }
}

#[test]
fn gzip_is_configured_by_its_table_and_per_route() {
    let edge = |gz: &str| {
        format!("[edge]\n{gz}[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n[[routes]]\nhost = \"x.test\"\nservice = \"a\"\ngzip = false\n")
    };
    let off = Config::parse(&edge(""), "g.toml").unwrap();
    assert_eq!(off.edge.as_ref().unwrap().gzip, None);
    assert_eq!(off.routes[0].gzip, Some(false));
    let on = Config::parse(&edge("[edge.gzip]\n"), "g.toml").unwrap();
    assert_eq!(on.edge.unwrap().gzip, Some(EdgeGzip::default()));
    let own = Config::parse(
        &edge("[edge.gzip]\nmin_bytes = 0\nlevel = 9\ntypes = [\"Text/HTML\", \"application/ld+json\"]\nmax_streams = 64\n"),
        "g.toml",
    )
    .unwrap();
    let g = own.edge.unwrap().gzip.unwrap();
    assert_eq!((g.min_bytes, g.level, g.max_streams), (0, 9, 64));
    assert_eq!(g.types, ["text/html", "application/ld+json"]);
    for (text, path) in [
        ("[edge.gzip]\nlevel = 0\n", "edge.gzip.level"),
        ("[edge.gzip]\nmax_streams = 0\n", "edge.gzip.max_streams"),
        ("[edge.gzip]\nmin_bytes = -1\n", "edge.gzip.min_bytes"),
        ("[edge.gzip]\ntypes = [\"html\"]\n", "edge.gzip.types[0]"),
        (
            "[edge.gzip]\ntypes = [\"text/html; charset=utf-8\"]\n",
            "edge.gzip.types[0]",
        ),
    ] {
        let err = Config::parse(&edge(text), "g.toml").unwrap_err();
        assert_eq!(err.diagnostics()[0].path, path, "{text}");
        assert!(err.to_string().contains("g.toml:3"), "{err}");
    }
}

#[test]
fn security_headers_hsts_and_route_header_rules_are_checked() {
    let cfg = |edge: &str, route: &str| {
        format!("[edge]\n{edge}[[environments]]\nname = \"p\"\n[[services]]\nname = \"a\"\nenvironment = \"p\"\nport = 1\n[[routes]]\nhost = \"x.test\"\nservice = \"a\"\n{route}")
    };
    let d = Config::parse(&cfg("", ""), "h.toml").unwrap();
    let e = d.edge.unwrap();
    assert_eq!(
        (e.hsts_max_age_seconds, e.hsts_preload),
        (31_536_000, false)
    );
    assert_eq!(e.security_headers.len(), DEFAULT_SECURITY_HEADERS.len());
    assert_eq!(
        (e.max_connections, e.max_connections_per_client),
        (10_000, 512)
    );
    let c = Config::parse(
        &cfg(
            "hsts_preload = true\nhsts_max_age_seconds = 63072000\nsecurity_headers = { \"Content-Security-Policy\" = \"default-src 'self'\" }\n",
            "response_headers = { \"Cache-Control\" = \"no-store\" }\nremove_response_headers = [\"Server\", \"X-Powered-By\"]\n",
        ),
        "h.toml",
    )
    .unwrap();
    let e = c.edge.as_ref().unwrap();
    assert!(e.hsts_preload);
    assert_eq!(
        e.security_headers,
        [(
            "content-security-policy".to_string(),
            "default-src 'self'".to_string()
        )]
    );
    assert_eq!(
        c.routes[0].response_headers,
        [("cache-control".to_string(), "no-store".to_string())]
    );
    assert_eq!(
        c.routes[0].remove_response_headers,
        ["server", "x-powered-by"]
    );
    let c = Config::parse(
        &cfg(
            "",
            "request_headers = { \"X-Env\" = \"prod\" }\nremove_request_headers = [\"Authorization\"]\n",
        ),
        "h.toml",
    )
    .unwrap();
    assert_eq!(
        c.routes[0].request_headers,
        [("x-env".to_string(), "prod".to_string())]
    );
    assert_eq!(c.routes[0].remove_request_headers, ["authorization"]);
    for (edge, route, path) in [
        (
            "hsts_max_age_seconds = 86400\n",
            "",
            "edge.hsts_max_age_seconds",
        ),
        ("max_connections = 0\n", "", "edge.max_connections"),
        (
            "max_connections_per_client = 0\n",
            "",
            "edge.max_connections_per_client",
        ),
        (
            "security_headers = { \"Strict-Transport-Security\" = \"max-age=1\" }\n",
            "",
            "edge.security_headers.Strict-Transport-Security",
        ),
        (
            "security_headers = { \"a b\" = \"x\" }\n",
            "",
            "edge.security_headers.a b",
        ),
        (
            "security_headers = { \"X-A\" = \"\" }\n",
            "",
            "edge.security_headers.X-A",
        ),
        (
            "",
            "response_headers = { \"Content-Length\" = \"1\" }\n",
            "routes[0].response_headers.Content-Length",
        ),
        (
            "",
            "response_headers = { \"X-Rampart-Assertion\" = \"x\" }\n",
            "routes[0].response_headers.X-Rampart-Assertion",
        ),
        (
            "",
            "remove_response_headers = [\"Transfer-Encoding\"]\n",
            "routes[0].remove_response_headers[0]",
        ),
        (
            "",
            "request_headers = { \"Host\" = \"other.test\" }\n",
            "routes[0].request_headers.Host",
        ),
        (
            "",
            "request_headers = { \"X-Forwarded-For\" = \"1.2.3.4\" }\n",
            "routes[0].request_headers.X-Forwarded-For",
        ),
        (
            "",
            "remove_request_headers = [\"X-Rampart-Assertion\"]\n",
            "routes[0].remove_request_headers[0]",
        ),
    ] {
        let err = Config::parse(&cfg(edge, route), "h.toml").unwrap_err();
        assert_eq!(err.diagnostics()[0].path, path, "{err}");
        assert!(err.to_string().contains("h.toml:"), "{err}");
    }
}

#[test]
fn serials_are_normalised() {
    assert_eq!(normalise_serial("0A:1b:FF").as_deref(), Some("a1bff"));
    assert_eq!(normalise_serial("00").as_deref(), Some("0"));
    assert_eq!(normalise_serial(""), None);
    assert_eq!(normalise_serial("12:zz"), None);
}

#[test]
fn mutual_tls_schema_and_waf_mode_load() {
    let text = r#"
[[environments]]
name = "prod"
[[services]]
name = "api"
environment = "prod"
port = 8080
[[routes]]
host = "api.example.com"
service = "api"
auth = "client_cert"
json_schema = "schemas/order.json"
waf = "detect"
[edge]
client_ca = ["clients.pem"]
revoked_client_serials = ["01:02"]
"#;
    let c = Config::parse(text, "t.toml").unwrap();
    let e = c.edge.as_ref().unwrap();
    assert_eq!(e.client_auth, ClientAuthMode::Optional);
    assert_eq!(e.revoked_client_serials, vec!["102".to_string()]);
    assert_eq!(c.routes[0].waf.mode, WafMode::Detect);
    assert_eq!(
        c.routes[0].json_schema.as_deref(),
        Some(std::path::Path::new("schemas/order.json"))
    );
}

#[test]
fn waf_exclusions_load_in_order_with_canonical_collections() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/good/waf_exclusions.toml");
    let c = Config::load(&f).unwrap();
    let ex = &c.routes[0].waf.exclusions;
    let target = |collection: &str, key: Option<WafTargetKey>| {
        Some(WafTarget {
            collection: collection.into(),
            key,
        })
    };
    assert_eq!(
        ex,
        &vec![
            WafExclusion {
                rules: WafRuleSelector::Id(942100),
                target: None
            },
            WafExclusion {
                rules: WafRuleSelector::Id(941100),
                target: target("ARGS", Some(WafTargetKey::Name("body".into())))
            },
            WafExclusion {
                rules: WafRuleSelector::Tag("attack-sqli".into()),
                target: target(
                    "REQUEST_COOKIES",
                    Some(WafTargetKey::Name("session".into()))
                )
            },
            WafExclusion {
                rules: WafRuleSelector::Tag("attack-xss".into()),
                target: target("ARGS_POST", Some(WafTargetKey::Regex("^content_".into())))
            },
            WafExclusion {
                rules: WafRuleSelector::Id(920350),
                target: target("REQUEST_HEADERS", None)
            },
        ]
    );
    assert_eq!(
        ex[3].target.as_ref().unwrap().to_string(),
        "ARGS_POST:/^content_/"
    );
    assert_eq!(c.routes[0].waf.mode, WafMode::Block);
}

#[test]
fn audit_commit_delay_and_siblings_have_defaults_and_bounds() {
    let c = Config::parse("", "t.toml").unwrap();
    assert_eq!(
        (c.audit.commit_delay_us, c.audit.commit_siblings),
        (2000, 16)
    );
    let c = Config::parse(
        "[audit]\ncommit_delay_us = 0\ncommit_siblings = 0\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!((c.audit.commit_delay_us, c.audit.commit_siblings), (0, 0));
    refuses_each_at_its_line(
        "audit",
        &[
            ("commit_delay_us", "-1"),
            ("commit_delay_us", "10001"),
            ("commit_delay_us", "4294967296"),
            ("commit_siblings", "-1"),
            ("commit_siblings", "1001"),
            ("copy_delay_ms", "0"),
            ("copy_delay_ms", "60001"),
        ],
    );
    assert_eq!(c.audit.copy_delay_ms, 50);
    let c = Config::parse(
        "[audit]
copy_delay_ms = 10000
",
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.audit.copy_delay_ms, 10_000);
}

#[test]
fn edge_upstream_settings_have_defaults_and_bounds() {
    let c = Config::parse("[edge]\n", "t.toml").unwrap();
    let e = c.edge.unwrap();
    assert_eq!(e.balance, EdgeBalance::RoundRobin);
    assert_eq!(
        (
            e.connect_timeout_ms,
            e.upstream_timeout_seconds,
            e.header_read_timeout_seconds,
            e.body_read_timeout_seconds,
            e.send_timeout_seconds,
            e.keepalive_timeout_seconds,
            e.drain_seconds
        ),
        (3000, 60, 10, 30, 60, 75, 30)
    );
    assert_eq!(e.breaker, EdgeBreaker::default());
    assert_eq!(e.health_check, None);

    let c = Config::parse(
        "[edge]\nbalance = \"least_requests\"\nconnect_timeout_ms = 250\n\
         upstream_timeout_seconds = 5\nheader_read_timeout_seconds = 2\n\
         body_read_timeout_seconds = 7\nsend_timeout_seconds = 9\nkeepalive_timeout_seconds = 11\ndrain_seconds = 0\n\
         [edge.breaker]\nfailures_to_open = 5\nopen_seconds = 20\n\
         [edge.health_check]\ninterval_ms = 1000\nrise = 3\n",
        "t.toml",
    )
    .unwrap();
    let e = c.edge.unwrap();
    assert_eq!(e.balance, EdgeBalance::LeastRequests);
    assert_eq!(
        (
            e.connect_timeout_ms,
            e.upstream_timeout_seconds,
            e.header_read_timeout_seconds,
            e.body_read_timeout_seconds,
            e.send_timeout_seconds,
            e.keepalive_timeout_seconds,
            e.drain_seconds
        ),
        (250, 5, 2, 7, 9, 11, 0)
    );
    assert_eq!(
        e.breaker,
        EdgeBreaker {
            failures_to_open: 5,
            open_seconds: 20
        }
    );
    // An empty table turns checks on with the defaults it does not set.
    assert_eq!(
        e.health_check,
        Some(EdgeHealthCheck {
            path: "/healthz".into(),
            interval_ms: 1000,
            timeout_ms: 1000,
            rise: 3,
            fall: 3,
            deploy_window_ms: 60_000,
        })
    );
    let svc = |path: &str| {
        format!(
            "[[environments]]\nname = \"prod\"\n[[services]]\nname = \"a\"\nenvironment = \"prod\"\nport = 80\nhealth_path = {path}\n"
        )
    };
    let c = Config::parse(&svc("\"/ready\""), "t.toml").unwrap();
    assert_eq!(c.services[0].health_path.as_deref(), Some("/ready"));
    let d = first_error(&svc("\"ready\""));
    assert_eq!(
        (d.path.as_str(), d.line),
        ("services[0].health_path", 7),
        "{d}"
    );
    let c = Config::parse("[edge.health_check]\ninterval_ms = 500\n", "t.toml").unwrap();
    assert_eq!(c.edge.unwrap().health_check.unwrap().timeout_ms, 500);

    refuses_each_at_its_line(
        "edge",
        &[
            ("balance", "\"random\""),
            ("connect_timeout_ms", "0"),
            ("upstream_timeout_seconds", "3601"),
            ("drain_seconds", "-1"),
        ],
    );
    refuses_each_at_its_line(
        "edge.breaker",
        &[("failures_to_open", "0"), ("open_seconds", "0")],
    );
    refuses_each_at_its_line(
        "edge.health_check",
        &[
            ("path", "\"healthz\""),
            ("path", "\"/a b\""),
            ("interval_ms", "99"),
            ("timeout_ms", "9"),
            ("rise", "0"),
            ("fall", "101"),
        ],
    );
    let d = first_error("[edge.health_check]\ninterval_ms = 1000\ntimeout_ms = 2000\n");
    assert_eq!(
        (d.path.as_str(), d.line),
        ("edge.health_check.timeout_ms", 3)
    );
    assert!(d.to_string().contains("longer than interval_ms"), "{d}");
}

#[test]
fn identity_lifetimes_have_defaults_bounds_and_order() {
    let c = Config::parse("", "t.toml").unwrap();
    assert_eq!(c.identity, Identity::default());
    let c = Config::parse(
        "[identity]\nissuer = \"https://id.example.com\"\naudience = \"api\"\n\
         access_ttl_seconds = 300\nrefresh_ttl_seconds = 3600\n\
         session_max_seconds = 86400\nmax_elevation_seconds = 600\n\
         elevation_request_ttl_seconds = 900\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.identity,
        Identity {
            issuer: "https://id.example.com".into(),
            audience: "api".into(),
            access_ttl_seconds: 300,
            refresh_ttl_seconds: 3600,
            session_max_seconds: 86400,
            max_elevation_seconds: 600,
            elevation_request_ttl_seconds: 900,
            throttle: LoginThrottle::default(),
        }
    );
    refuses_each_at_its_line(
        "identity",
        &[
            ("issuer", "\"\""),
            ("audience", "\"two words\""),
            ("access_ttl_seconds", "59"),
            ("access_ttl_seconds", "86401"),
            ("refresh_ttl_seconds", "-1"),
            ("session_max_seconds", "31536001"),
            ("max_elevation_seconds", "604801"),
            ("elevation_request_ttl_seconds", "0"),
        ],
    );
    // A refresh token may not die before its access token, nor a session
    // before its refresh token.
    let err = Config::parse(
        "[identity]\naccess_ttl_seconds = 7200\nrefresh_ttl_seconds = 3600\n\
         session_max_seconds = 1800\n",
        "t.toml",
    )
    .unwrap_err();
    let got: Vec<_> = err
        .diagnostics()
        .iter()
        .map(|d| (d.path.clone(), d.line))
        .collect();
    assert_eq!(
        got,
        vec![
            ("identity.refresh_ttl_seconds".to_string(), 3),
            ("identity.session_max_seconds".to_string(), 4)
        ]
    );
}

#[test]
fn login_throttle_has_defaults_and_bounds() {
    let c = Config::parse(
        "[identity.throttle]\nfree_failures_per_account = 3\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.identity.throttle,
        LoginThrottle {
            free_failures_per_account: 3,
            ..LoginThrottle::default()
        }
    );
    refuses_each_at_its_line(
        "identity.throttle",
        &[
            ("free_failures_per_account", "1001"),
            ("free_failures_per_source", "-1"),
            ("base_delay_seconds", "0"),
            ("max_delay_seconds", "86401"),
            ("forget_after_seconds", "59"),
        ],
    );
    let d = first_error("[identity.throttle]\nbase_delay_seconds = 60\nmax_delay_seconds = 30\n");
    assert_eq!(
        (d.path.as_str(), d.line),
        ("identity.throttle.max_delay_seconds", 3)
    );
}

/// The first error `text` gets.
fn first_error(text: &str) -> Diagnostic {
    Config::parse(text, "t.toml").unwrap_err().diagnostics()[0].clone()
}

/// Each `key = bad` alone in `[table]` is refused, at line 2, naming
/// `table.key`.
fn refuses_each_at_its_line(table: &str, cases: &[(&str, &str)]) {
    for (key, bad) in cases {
        let d = first_error(&format!("[{table}]\n{key} = {bad}\n"));
        assert_eq!(d.path, format!("{table}.{key}"), "{bad}: {d}");
        assert_eq!(d.line, 2, "{bad}: {d}");
    }
}

#[test]
fn store_is_sqlite_by_default_and_postgres_by_name_of_its_url_variable() {
    let c = Config::parse("", "t.toml").unwrap();
    assert_eq!(c.store, StoreBackend::Sqlite);
    let c = Config::parse("[store]\nbackend = \"sqlite\"\n", "t.toml").unwrap();
    assert_eq!(c.store, StoreBackend::Sqlite);
    let c = Config::parse("[store]\nbackend = \"postgres\"\n", "t.toml").unwrap();
    assert_eq!(
        c.store,
        StoreBackend::Postgres(PostgresStore {
            url_env: DEFAULT_DATABASE_URL_ENV.to_string(),
            pool_size: 16,
            tls_ca: None,
            connect_timeout_seconds: 10,
            reload_interval_ms: 2_000,
        })
    );
    let c = Config::parse(
        "[store]\nbackend = \"postgres\"\nurl_env = \"PG_URL\"\npool_size = 4\n\
         tls_ca = \"pg-ca.pem\"\nconnect_timeout_seconds = 3\nreload_interval_ms = 500\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.store,
        StoreBackend::Postgres(PostgresStore {
            url_env: "PG_URL".into(),
            pool_size: 4,
            tls_ca: Some(PathBuf::from("pg-ca.pem")),
            connect_timeout_seconds: 3,
            reload_interval_ms: 500,
        })
    );
}

#[test]
fn store_refuses_bad_values_at_their_line() {
    for (line, path, expect) in [
        // A connection string pasted in place of the variable's name.
        (
            "url_env = \"postgres://u:p@db/x\"",
            "store.url_env",
            "never goes in this file",
        ),
        ("pool_size = 0", "store.pool_size", "1 to 512"),
        ("pool_size = 513", "store.pool_size", "1 to 512"),
        (
            "connect_timeout_seconds = 0",
            "store.connect_timeout_seconds",
            "1 to 300",
        ),
        (
            "reload_interval_ms = 99",
            "store.reload_interval_ms",
            "100 to 60000",
        ),
        ("password = \"x\"", "store.password", "unknown field"),
    ] {
        let d = first_error(&format!("[store]\nbackend = \"postgres\"\n{line}\n"));
        assert_eq!((d.path.as_str(), d.line), (path, 3), "{line}: {d}");
        assert!(d.message.contains(expect), "{line}: {d}");
        assert!(!d.to_string().contains("u:p@"), "{d}");
    }
    let d = first_error("[store]\nbackend = \"mysql\"\n");
    assert_eq!((d.path.as_str(), d.line), ("store.backend", 2));
    assert!(d.message.contains("unknown backend"), "{d}");
    // PostgreSQL settings under the SQLite backend are a mistake, not ignored.
    let d = first_error("[store]\nbackend = \"sqlite\"\npool_size = 4\n");
    assert_eq!((d.path.as_str(), d.line), ("store.pool_size", 3));
    assert!(d.message.contains("only for backend"), "{d}");
    let d = first_error("[store]\nurl_env = \"X\"\n");
    assert!(d.message.contains("backend"), "{d}");
}

#[test]
fn redis_has_defaults_and_refuses_bad_values_at_their_line() {
    assert_eq!(Config::parse("", "t.toml").unwrap().redis, None);
    let c = Config::parse("[redis]\n", "t.toml").unwrap();
    assert_eq!(
        c.redis,
        Some(Redis {
            url_env: DEFAULT_REDIS_URL_ENV.into(),
            sync_interval_ms: 100,
            key_prefix: "rampart:".into(),
            tls_ca: None,
        })
    );
    let c = Config::parse(
        "[redis]\nurl_env = \"LIMITS_REDIS\"\nsync_interval_ms = 50\nkey_prefix = \"acme:prod:\"\n\
         tls_ca = \"redis-ca.pem\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.redis,
        Some(Redis {
            url_env: "LIMITS_REDIS".into(),
            sync_interval_ms: 50,
            key_prefix: "acme:prod:".into(),
            tls_ca: Some(PathBuf::from("redis-ca.pem")),
        })
    );
    refuses_each_at_its_line(
        "redis",
        &[
            ("url_env", "\"redis://:hunter2@cache:6379/\""),
            ("sync_interval_ms", "9"),
            ("sync_interval_ms", "5001"),
            ("key_prefix", "\"\""),
            ("key_prefix", "\"has space\""),
            ("password", "\"x\""),
        ],
    );
    let d = first_error("[redis]\nurl_env = \"redis://:hunter2@cache:6379/\"\n");
    assert!(!d.to_string().contains("hunter2"), "{d}");
}

#[test]
fn edge_worker_threads_default_to_one_per_core_and_are_bounded() {
    let edge = |text: &str| Config::parse(text, "t.toml").unwrap().edge.unwrap();
    assert_eq!(edge("[edge]\n").worker_threads, None);
    assert_eq!(edge("[edge]\nworker_threads = 0\n").worker_threads, Some(0));
    assert_eq!(edge("[edge]\nworker_threads = 4\n").worker_threads, Some(4));
    refuses_each_at_its_line(
        "edge",
        &[("worker_threads", "257"), ("worker_threads", "-1")],
    );
}

#[test]
fn edge_body_budget_defaults_and_holds_at_least_one_body() {
    let e = Config::parse("[edge]\n", "t.toml").unwrap().edge.unwrap();
    assert_eq!(e.max_buffered_body_bytes, 256 << 20);
    let e = Config::parse("[edge]\nmax_body_bytes = 536870912\n", "t.toml")
        .unwrap()
        .edge
        .unwrap();
    assert_eq!(e.max_buffered_body_bytes, 512 << 20);
    let e = Config::parse("[edge]\nmax_buffered_body_bytes = 20971520\n", "t.toml")
        .unwrap()
        .edge
        .unwrap();
    assert_eq!(e.max_buffered_body_bytes, 20 << 20);
    let err = Config::parse(
        "[edge]\nmax_body_bytes = 1048576\nmax_buffered_body_bytes = 1000\n",
        "t.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("t.toml:3") && err.contains("edge.max_buffered_body_bytes"),
        "{err}"
    );
}

#[test]
fn proxy_protocol_balancers_are_networks() {
    let c = Config::parse(
        "[edge]\nproxy_protocol_from = [\"10.0.0.0/16\", \"2001:db8::/32\"]\n",
        "t.toml",
    )
    .unwrap();
    let e = c.edge.unwrap();
    assert_eq!(
        e.proxy_protocol_from,
        vec![
            "10.0.0.0/16".parse::<ipnet::IpNet>().unwrap(),
            "2001:db8::/32".parse().unwrap()
        ]
    );
    assert!(e.trusted_proxies.is_empty());
    let d = first_error("[edge]\nproxy_protocol_from = [\n  \"10.0.0.0/16\",\n  \"nlb\",\n]\n");
    assert_eq!(d.path, "edge.proxy_protocol_from[1]", "{d}");
    assert_eq!(d.line, 4, "{d}");
}

#[test]
fn tls_version_and_session_resumption_have_safe_defaults_and_bounds() {
    let c = Config::parse("[edge]\n", "t.toml").unwrap();
    let e = c.edge.unwrap();
    assert_eq!(
        (e.tls13_only, e.tls_session_cache, e.tls_session_tickets),
        (false, 20_000, false)
    );
    let c = Config::parse(
        "[edge]\ntls_min_version = \"1.3\"\ntls_session_cache = 0\ntls_session_tickets = true\n",
        "t.toml",
    )
    .unwrap();
    let e = c.edge.unwrap();
    assert_eq!(
        (e.tls13_only, e.tls_session_cache, e.tls_session_tickets),
        (true, 0, true)
    );
    refuses_each_at_its_line(
        "edge",
        &[
            ("tls_min_version", "\"1.1\""),
            ("tls_min_version", "\"TLSv1.3\""),
            ("tls_session_cache", "-1"),
            ("tls_session_cache", "1000001"),
            ("tls_session_tickets", "\"yes\""),
        ],
    );
}

#[test]
fn a_service_may_balance_by_client_apart_from_the_edge_default() {
    let svc = |balance: &str| {
        format!(
            "[edge]\nbalance = \"least_requests\"\n\
             [[environments]]\nname = \"prod\"\n\
             [[services]]\nname = \"a\"\nenvironment = \"prod\"\nport = 80\n{balance}"
        )
    };
    let c = Config::parse(&svc("balance = \"client_hash\"\n"), "t.toml").unwrap();
    assert_eq!(c.services[0].balance, Some(EdgeBalance::ClientHash));
    assert_eq!(c.edge.unwrap().balance, EdgeBalance::LeastRequests);
    let c = Config::parse(&svc(""), "t.toml").unwrap();
    assert_eq!(c.services[0].balance, None);
    let d = first_error(&svc("balance = \"sticky\"\n"));
    assert_eq!((d.path.as_str(), d.line), ("services[0].balance", 9), "{d}");
    assert!(
        d.to_string().contains(
            "unknown balance \"sticky\": expected round_robin, least_requests or client_hash"
        ),
        "{d}"
    );
    let d = first_error("[edge]\nbalance = \"ip_hash\"\n");
    assert_eq!((d.path.as_str(), d.line), ("edge.balance", 2), "{d}");
    let d = first_error("[edge]\ntls_min_version = \"1.1\"\n");
    assert_eq!(
        (d.path.as_str(), d.line),
        ("edge.tls_min_version", 2),
        "{d}"
    );
    assert!(
        d.to_string()
            .contains("unknown TLS version \"1.1\": expected 1.2 or 1.3"),
        "{d}"
    );
}

#[test]
fn route_methods_are_upper_case_methods_each_once() {
    let route = |methods: &str| {
        format!(
            "[[environments]]\nname = \"prod\"\n\
             [[services]]\nname = \"a\"\nenvironment = \"prod\"\nport = 80\n\
             [[routes]]\nhost = \"api.test\"\nservice = \"a\"\n{methods}"
        )
    };
    let c = Config::parse(
        &route("methods = [\"GET\", \"POST\", \"PROPFIND\"]\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.routes[0].methods, vec!["GET", "POST", "PROPFIND"]);
    let c = Config::parse(&route(""), "t.toml").unwrap();
    assert!(c.routes[0].methods.is_empty());
    let d = first_error(&route("methods = [\n  \"GET\",\n  \"post\",\n]\n"));
    assert_eq!(
        (d.path.as_str(), d.line),
        ("routes[0].methods[1]", 12),
        "{d}"
    );
    assert!(d.to_string().contains("upper case"), "{d}");
    let d = first_error(&route("methods = [\"GET\", \"GET\"]\n"));
    assert_eq!(d.path, "routes[0].methods[1]", "{d}");
    assert!(d.to_string().contains("twice"), "{d}");
    let d = first_error(&route("websocket = true\nmethods = [\"POST\"]\n"));
    assert_eq!((d.path.as_str(), d.line), ("routes[0].methods", 11), "{d}");
}

#[test]
fn route_cors_names_origins_and_refuses_what_browsers_would() {
    let route = |cors: &str| {
        format!(
            "[[environments]]\nname = \"prod\"\n\
             [[services]]\nname = \"a\"\nenvironment = \"prod\"\nport = 80\n\
             [[routes]]\nhost = \"api.test\"\nservice = \"a\"\n{cors}"
        )
    };
    let c = Config::parse(
        &route(
            "cors = { origins = [\"https://App.Example.com\", \"http://[::1]:8080\"], \
             headers = [\"Content-Type\"], credentials = true, max_age_seconds = 60 }\n",
        ),
        "t.toml",
    )
    .unwrap();
    let cors = c.routes[0].cors.clone().unwrap();
    assert_eq!(
        cors.origins,
        vec!["https://app.example.com", "http://[::1]:8080"]
    );
    assert_eq!(cors.methods, vec!["GET", "HEAD", "POST"]);
    assert_eq!(cors.headers, vec!["content-type"]);
    assert!(cors.credentials && !cors.any_origin);
    assert_eq!(cors.max_age_seconds, 60);
    let any = Config::parse(&route("cors = { origins = [\"*\"] }\n"), "t.toml").unwrap();
    assert!(any.routes[0].cors.as_ref().unwrap().any_origin);
    for (cors, path) in [
        (
            "cors = { origins = [\"https://app.example.com/\"] }",
            "routes[0].cors.origins[0]",
        ),
        (
            "cors = { origins = [\"app.example.com\"] }",
            "routes[0].cors.origins[0]",
        ),
        (
            "cors = { origins = [\"https://a.test:99999\"] }",
            "routes[0].cors.origins[0]",
        ),
        ("cors = { origins = [] }", "routes[0].cors.origins"),
        (
            "cors = { origins = [\"*\"], credentials = true }",
            "routes[0].cors.credentials",
        ),
        (
            "cors = { origins = [\"*\", \"https://a.test\"] }",
            "routes[0].cors.origins",
        ),
        (
            "cors = { origins = [\"https://a.test\"], methods = [\"get\"] }",
            "routes[0].cors.methods[0]",
        ),
        (
            "cors = { origins = [\"https://a.test\"], headers = [\"bad header\"] }",
            "routes[0].cors.headers[0]",
        ),
        (
            "cors = { origins = [\"https://a.test\"], max_age_seconds = 90000 }",
            "routes[0].cors.max_age_seconds",
        ),
    ] {
        let d = first_error(&route(&format!("{cors}\n")));
        assert_eq!((d.path.as_str(), d.line), (path, 10), "{cors}: {d}");
    }
}

#[test]
fn upstreams_may_carry_weights() {
    let svc = |upstreams: &str| {
        format!(
            "[[environments]]\nname = \"prod\"\n\
             [[services]]\nname = \"a\"\nenvironment = \"prod\"\nport = 80\n\
             upstreams = [\n  {upstreams}\n]\n"
        )
    };
    let c = Config::parse(
        &svc(r#""10.0.0.1:80", { addr = "10.0.0.2:80", weight = 9 }, { addr = "[::1]:81" }"#),
        "t.toml",
    )
    .unwrap();
    let got: Vec<(String, u32)> = c.services[0]
        .upstreams
        .iter()
        .map(|u| (u.to_string(), u.weight))
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.1:80".to_string(), 1),
            ("10.0.0.2:80".to_string(), 9),
            ("[::1]:81".to_string(), 1)
        ]
    );
    // Each refusal names the entry and its line (8: the entry's own).
    for (entry, path, message) in [
        (
            r#"{ addr = "10.0.0.2:80", weight = 0 }"#,
            "services[0].upstreams[0].weight",
            "invalid weight 0: expected 1 to 100",
        ),
        (
            r#"{ addr = "10.0.0.2:80", weight = 101 }"#,
            "services[0].upstreams[0].weight",
            "invalid weight 101",
        ),
        (
            r#"{ addr = "10.0.0.2:0", weight = 2 }"#,
            "services[0].upstreams[0]",
            "port 0",
        ),
        (
            r#"{ addr = "10.0.0.2:80", weigth = 2 }"#,
            "services[0].upstreams",
            "unknown field `weigth`",
        ),
        (
            r#"{ weight = 2 }"#,
            "services[0].upstreams",
            "missing field `addr`",
        ),
        (
            r#"{ addr = "10.0.0.2:80", weight = "heavy" }"#,
            "services[0].upstreams",
            "invalid type",
        ),
    ] {
        let d = first_error(&svc(entry));
        assert!(d.path.starts_with(path), "{entry}: {d}");
        assert_eq!(d.line, 8, "{entry}: {d}");
        assert!(d.to_string().contains(message), "{entry}: {d}");
    }
}

#[test]
fn a_route_may_redirect_instead_of_serving_a_service() {
    let base = "[[environments]]\nname = \"prod\"\n\
                [[services]]\nname = \"a\"\nenvironment = \"prod\"\nport = 80\n";
    let c = Config::parse(
        &format!(
            "{base}[[routes]]\nhost = \"old.example.com\"\nredirect = \"HTTPS://New.Example.com/docs/\"\n\
             [[routes]]\nhost = \"www.example.com\"\nredirect = \"https://example.com:8443\"\nredirect_status = 308\n\
             [[routes]]\nhost = \"example.com\"\nservice = \"a\"\n"
        ),
        "t.toml",
    )
    .unwrap();
    let r = &c.routes;
    assert_eq!(
        r[0].redirect,
        Some(RouteRedirect {
            to: "https://new.example.com/docs".into(),
            status: 301
        })
    );
    assert_eq!((r[0].service.as_str(), r[0].environment.as_str()), ("", ""));
    assert_eq!(
        r[1].redirect,
        Some(RouteRedirect {
            to: "https://example.com:8443".into(),
            status: 308
        })
    );
    assert_eq!((r[2].service.as_str(), r[2].redirect.as_ref()), ("a", None));

    // Each refusal at its line (8: the route's host, 9 and 10: the lines after).
    let route = |lines: &str| format!("{base}[[routes]]\nhost = \"x.example.com\"\n{lines}\n");
    for (lines, path, line, message) in [
        (
            "service = \"a\"\nredirect = \"https://example.com\"",
            "routes[0].service",
            9,
            "either serves a service or redirects",
        ),
        ("", "routes[0].service", 8, "missing service"),
        (
            "service = \"a\"\nredirect_status = 302",
            "routes[0].redirect_status",
            10,
            "redirect_status needs redirect",
        ),
        (
            "redirect = \"https://example.com\"\nredirect_status = 300",
            "routes[0].redirect_status",
            10,
            "expected 301, 302, 303, 307 or 308",
        ),
        (
            "redirect = \"https://example.com\"\nauth = \"api_key\"",
            "routes[0].auth",
            10,
            "auth needs a service",
        ),
        (
            "redirect = \"https://example.com\"\nwebsocket = true",
            "routes[0].websocket",
            8,
            "websocket needs a service",
        ),
    ] {
        let d = first_error(&route(lines));
        assert_eq!((d.path.as_str(), d.line), (path, line), "{lines}: {d}");
        assert!(d.to_string().contains(message), "{lines}: {d}");
    }
    for bad in [
        "ftp://example.com",
        "https://",
        "https://example.com?a=1",
        "https://example.com/a#b",
        "https://example.com/../x",
        "https://exa mple.com",
        "https://example.com:0",
        "https://example.com:http",
        "https://[::1/x",
        "example.com/path",
    ] {
        let d = first_error(&route(&format!("redirect = \"{bad}\"")));
        assert_eq!(
            (d.path.as_str(), d.line),
            ("routes[0].redirect", 9),
            "{bad}: {d}"
        );
        assert!(d.to_string().contains("invalid redirect"), "{bad}: {d}");
    }
    let ok = Config::parse(&route("redirect = \"http://[::1]:8080/a\""), "t.toml").unwrap();
    assert_eq!(
        ok.routes[0].redirect.as_ref().unwrap().to,
        "http://[::1]:8080/a"
    );
}

#[test]
fn upstreams_may_be_backups_but_not_all_of_them() {
    let svc = |upstreams: &str| {
        format!(
            "[[environments]]\nname = \"prod\"\n\
             [[services]]\nname = \"a\"\nenvironment = \"prod\"\nport = 80\n\
             upstreams = [{upstreams}]\n"
        )
    };
    let c = Config::parse(
        &svc(r#""10.0.0.1:80", { addr = "10.0.0.2:80", backup = true, weight = 2 }"#),
        "t.toml",
    )
    .unwrap();
    let u = &c.services[0].upstreams;
    assert_eq!((u[0].backup, u[1].backup, u[1].weight), (false, true, 2));
    let d = first_error(&svc(r#"{ addr = "10.0.0.2:80", backup = true }"#));
    assert_eq!(
        (d.path.as_str(), d.line),
        ("services[0].upstreams", 7),
        "{d}"
    );
    assert!(d.to_string().contains("every instance is a backup"), "{d}");
    let d = first_error(&svc(r#"{ addr = "10.0.0.2:80", backup = "yes" }"#));
    assert_eq!(d.line, 7, "{d}");
    assert!(d.to_string().contains("invalid type"), "{d}");
}
