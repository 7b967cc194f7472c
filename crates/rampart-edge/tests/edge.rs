//! End-to-end: the real edge on 127.0.0.1:0 against small upstreams.

mod util;

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rampart_core::ManualClock;
use rampart_edge::{AuthOutcome, AuthRequest, Authenticator, BreakerState, Principal, Rate, HSTS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::*;

const ROOT: &str = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n";

#[tokio::test]
async fn plain_http_redirects_to_https_keeping_path_and_query() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let r = edge.http("API.test:80", "/a/b?x=1&y=%20z").await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    let port = edge.addrs.https.unwrap().port();
    assert_eq!(
        r.header("location"),
        Some(format!("https://api.test:{port}/a/b?x=1&y=%20z").as_str())
    );
    let r = edge.http("evil.test/x", "/").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // No redirect to a host the edge does not serve.
    let r = edge.http("evil.test", "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.header("location").is_none());
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn redirect_omits_port_443() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.redirect_https_port = Some(443)
    })
    .await;
    let r = edge.http("api.test", "/login?next=/").await;
    assert_eq!(r.header("location"), Some("https://api.test/login?next=/"));
}

#[tokio::test]
async fn hsts_and_security_headers_on_every_https_response() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let ok = edge.https("GET", "api.test", "/").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, "a");
    // A response the edge makes itself (no route) carries them too.
    let none = edge.https("GET", "nothing.example.test", "/").await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    for r in [&ok, &none] {
        assert_eq!(r.header("strict-transport-security"), Some(HSTS));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert!(r.header("referrer-policy").is_some());
    }
}

#[tokio::test]
async fn only_tls_1_2_and_1_3_are_negotiated_with_alpn() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let c12 = edge.client_config(&[&rustls::version::TLS12], &[b"http/1.1"]);
    let s = edge.tls("api.test", c12).await.unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let c13 = edge.client_config(&[&rustls::version::TLS13], &[b"h2", b"http/1.1"]);
    let s = edge.tls("api.test", c13).await.unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
}

/// A hand-made TLS 1.1 ClientHello (rustls cannot speak 1.1) is answered
/// with an alert, never a ServerHello.
#[tokio::test]
async fn tls_1_1_client_is_refused() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // AES128/256-CBC-SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut hs = vec![0x01, 0x00];
    hs.extend_from_slice(&(body.len() as u16).to_be_bytes());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x02];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    let mut s = TcpStream::connect(edge.addrs.https.unwrap()).await.unwrap();
    s.write_all(&rec).await.unwrap();
    let mut buf = [0u8; 7];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n >= 1, "connection closed without an alert");
    assert_eq!(
        buf[0],
        0x15,
        "expected an alert record, got {:?}",
        &buf[..n]
    );
}

#[tokio::test]
async fn sni_chooses_the_certificate() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    // The client verifies the chain against the name it asked for, so a
    // wrong choice fails the handshake.
    for sni in ["api.test", "other.test", "x.example.test"] {
        let c = edge.client_config(rustls::DEFAULT_VERSIONS, &[]);
        edge.tls(sni, c)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
    }
    // Each certificate's expiry, by its first name, for /metrics.
    let expiry = edge.handle.certificate_expiry();
    let names: Vec<&str> = expiry.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["api.test", "other.test"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(expiry.iter().all(|(_, at)| *at > now), "{expiry:?}");
}

#[tokio::test]
async fn routes_by_host_and_longest_path_prefix() {
    let (a, b, c) = (
        upstream("a").await,
        upstream("b").await,
        upstream("c").await,
    );
    let routes = r#"
[[routes]]
host = "api.test"
path_prefix = "/"
service = "a"
[[routes]]
host = "api.test"
path_prefix = "/v1"
service = "b"
[[routes]]
host = "*.example.test"
path_prefix = "/"
service = "c"
"#;
    let cfg = config(
        &[
            ("a", vec![a.addr]),
            ("b", vec![b.addr]),
            ("c", vec![c.addr]),
        ],
        routes,
    );
    let edge = TestEdge::start(cfg, |_| {}).await;
    assert_eq!(edge.https("GET", "api.test", "/v1/users").await.body, "b");
    assert_eq!(edge.https("GET", "api.test", "/v10").await.body, "a");
    assert_eq!(edge.https("GET", "api.test", "/").await.body, "a");
    assert_eq!(edge.https("GET", "w.example.test", "/v1").await.body, "c");
}

#[tokio::test]
async fn forwarded_headers_request_id_and_hop_by_hop() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("connection", "x-private"),
                ("x-private", "1"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The client is not a trusted proxy: its X-Forwarded-For is replaced.
    assert_eq!(r.header("echo-x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(r.header("echo-x-forwarded-proto"), Some("https"));
    assert_eq!(r.header("echo-x-request-id").map(str::len), Some(24));
    assert_eq!(r.header("echo-x-private"), None);
    assert_eq!(r.header("echo-connection"), None);
}

#[tokio::test]
async fn forged_forwarding_headers_and_edge_headers_never_reach_the_service() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let forged = [
        ("x-real-ip", "127.0.0.1"),
        ("forwarded", "for=127.0.0.1;proto=https;host=admin.internal"),
        ("x-forwarded-host", "evil.test"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-prefix", "/admin"),
        ("x-original-url", "/admin/users"),
        ("x-rewrite-url", "/admin/users"),
        ("true-client-ip", "10.0.0.1"),
        ("x-client-ip", "10.0.0.1"),
        ("x-rampart-principal", "admin"),
        ("x-rampart-roles", "admin"),
    ];
    let r = edge.https_with("GET", "api.test", "/", &forged).await;
    assert_eq!(r.status, StatusCode::OK);
    for (name, _) in forged {
        assert_eq!(
            r.header(&format!("echo-{name}")),
            None,
            "{name} was forwarded"
        );
    }
}

#[tokio::test]
async fn ipv4_deny_list_holds_on_a_dual_stack_listener() {
    // On [::], IPv4 clients arrive as ::ffff:127.0.0.1; an IPv4 deny list
    // must still refuse them.
    let a = upstream("a").await;
    let routes = format!("{ROOT}deny_cidrs = [\"127.0.0.0/8\"]\n");
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| {
        ec.https_listen = Some("[::]:0".parse().unwrap());
    })
    .await;
    let port = edge.addrs.https.unwrap().port();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("api.test").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let r = send(tls, "GET", "api.test", "/", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn denied_cidr_gets_403_and_never_reaches_upstream() {
    let a = upstream("a").await;
    let routes = format!("{ROOT}deny_cidrs = [\"127.0.0.0/8\"]\n");
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| ec.audit = rec).await;
    let r = edge.https("GET", "api.test", "/").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let recs = records.0.lock().unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].reason, Some("ip_denied"));
    assert_eq!(recs[0].status, 403);
}

#[tokio::test]
async fn global_allow_list_refuses_others() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.allow_cidrs = vec!["10.0.0.0/8".parse().unwrap()]
    })
    .await;
    assert_eq!(
        edge.https("GET", "api.test", "/").await.status,
        StatusCode::FORBIDDEN
    );
}

/// An IPv6 client holds a whole /64: changing the low 64 bits of its
/// address must not give it a fresh bucket.
#[tokio::test]
async fn ipv6_clients_are_limited_per_64_not_per_address() {
    let a = upstream("a").await;
    let clock = Arc::new(ManualClock::at_unix_secs(1_000_000));
    let c = clock.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.rate_limits.per_client = Rate::new(2, 0.01);
        ec.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        ec.clock = c;
    })
    .await;
    let from = |ip: &'static str| {
        let edge = &edge;
        async move {
            edge.https_with("GET", "api.test", "/", &[("x-forwarded-for", ip)])
                .await
                .status
        }
    };
    assert_eq!(from("2001:db8:1:2::1").await, StatusCode::OK);
    assert_eq!(from("2001:db8:1:2::2").await, StatusCode::OK);
    assert_eq!(from("2001:db8:1:2::3").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        from("2001:db8:1:2:ffff::9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another /64 is another client.
    assert_eq!(from("2001:db8:1:3::1").await, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_gives_429_with_retry_after() {
    let a = upstream("a").await;
    let clock = Arc::new(ManualClock::at_unix_secs(1_000_000));
    let c = clock.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.rate_limits.per_client = Rate::new(2, 0.5);
        ec.clock = c;
    })
    .await;
    assert_eq!(
        edge.https("GET", "api.test", "/").await.status,
        StatusCode::OK
    );
    assert_eq!(
        edge.https("GET", "api.test", "/").await.status,
        StatusCode::OK
    );
    let r = edge.https("GET", "api.test", "/").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("strict-transport-security"), Some(HSTS));
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        edge.https("GET", "api.test", "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn auth_routes_get_the_stricter_bucket() {
    let a = upstream("a").await;
    let routes = format!(
        "{ROOT}[[routes]]\nhost = \"api.test\"\npath_prefix = \"/login\"\nservice = \"a\"\n"
    );
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| {
        ec.rate_limits.per_client_auth = Rate::new(1, 0.01);
    })
    .await;
    assert_eq!(
        edge.https("POST", "api.test", "/login").await.status,
        StatusCode::OK
    );
    assert_eq!(
        edge.https("POST", "api.test", "/login").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        edge.https("GET", "api.test", "/other").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn waf_deny_gives_403_and_never_reaches_upstream() {
    let a = upstream("a").await;
    let waf = rampart_waf::Waf::from_str_named(
        "test.conf",
        "SecRuleEngine On\nSecRule ARGS \"@contains attack\" \"id:10,phase:1,deny,status:403\"\n",
    )
    .unwrap();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.waf = Some(Arc::new(waf))
    })
    .await;
    let r = edge.https("GET", "api.test", "/?q=attack").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(
        edge.https("GET", "api.test", "/?q=fine").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn waf_modes_per_route_block_detect_and_off() {
    let a = upstream("a").await;
    let waf = rampart_waf::Waf::from_str_named(
        "test.conf",
        "SecRuleEngine On\nSecRule ARGS \"@contains attack\" \"id:10,phase:1,deny,status:403,msg:'test attack'\"\n",
    )
    .unwrap();
    let routes = format!(
        "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/watch\"\nservice = \"a\"\nwaf = \"detect\"\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/raw\"\nservice = \"a\"\nwaf = \"off\"\n{ROOT}"
    );
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| {
        ec.waf = Some(Arc::new(waf));
        ec.audit = rec;
    })
    .await;
    let last = || records.0.lock().unwrap().last().cloned().unwrap();

    // Block (the default): refused with the rule and request id in the body.
    let r = edge.https("GET", "api.test", "/?q=attack").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "waf");
    assert_eq!(body["error"]["rule"], 10);
    let rec = last();
    assert_eq!(body["error"]["request_id"], rec.request_id.as_str());
    let w = rec.waf.unwrap();
    assert_eq!(
        (w.rule_ids, w.messages),
        (vec![10], vec!["test attack".to_string()])
    );

    // Detect: passed, but the match is recorded.
    let r = edge.https("GET", "api.test", "/watch?q=attack").await;
    assert_eq!(r.status, StatusCode::OK);
    let w = last().waf.expect("detect mode recorded nothing");
    assert_eq!(w.mode, rampart_config::WafMode::Detect);
    assert_eq!(w.disrupted_by, Some(10));

    // Off: the rules do not run.
    let r = edge.https("GET", "api.test", "/raw?q=attack").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(last().waf, None);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

struct RoleAuth;

impl Authenticator for RoleAuth {
    fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome {
        match req
            .head
            .headers
            .get("x-test-role")
            .and_then(|v| v.to_str().ok())
        {
            Some(role) => AuthOutcome::Authenticated(Principal {
                id: "tester".into(),
                roles: vec![role.to_string()],
            }),
            None => AuthOutcome::Unauthenticated,
        }
    }
}

/// An edge over upstream `a` with `/` open and `/admin` needing an API key
/// of a principal with role admin ([`RoleAuth`]); `tweak` adjusts the rest.
async fn admin_edge(a: &Upstream, tweak: impl FnOnce(&mut rampart_edge::EdgeConfig)) -> TestEdge {
    let routes = format!(
        "{ROOT}[[roles]]\nname = \"admin\"\npermissions = [\"*\"]\n[[routes]]\nhost = \"api.test\"\npath_prefix = \"/admin\"\nservice = \"a\"\nauth = \"api_key\"\nroles = [\"admin\"]\n"
    );
    TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| {
        ec.authenticator = Arc::new(RoleAuth);
        tweak(ec);
    })
    .await
}

#[tokio::test]
async fn protected_route_needs_credentials_and_role() {
    let a = upstream("a").await;
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = admin_edge(&a, |ec| ec.audit = rec).await;
    assert_eq!(
        edge.https("GET", "api.test", "/admin").await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = edge
        .https_with("GET", "api.test", "/admin", &[("x-test-role", "viewer")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = edge
        .https_with("GET", "api.test", "/admin", &[("x-test-role", "admin")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let recs = records.0.lock().unwrap();
    let got: Vec<_> = recs
        .iter()
        .map(|r| (r.status, r.reason, r.principal.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (401, Some("unauthenticated"), None),
            (403, Some("forbidden"), Some("tester".into())),
            (200, None, Some("tester".into())),
        ]
    );
}

/// Accepts `Authorization: Bearer good` (the first such header, as an
/// authenticator reads it).
struct BearerAuth;

impl Authenticator for BearerAuth {
    fn authenticate(&self, req: &AuthRequest<'_>) -> AuthOutcome {
        match req.head.headers.get("authorization").map(|v| v.as_bytes()) {
            Some(b"Bearer good") => AuthOutcome::Authenticated(Principal {
                id: "tester".into(),
                roles: vec![],
            }),
            _ => AuthOutcome::Unauthenticated,
        }
    }
}

/// The edge checks one credential; a second `Authorization` (or
/// `X-Api-Key`) would reach the service unchecked, and a service that reads
/// the last one (or decodes a token it trusts the edge to have verified)
/// would act for whoever that one names.
#[tokio::test]
async fn a_second_credential_header_is_refused() {
    let a = upstream("a").await;
    let routes = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\nauth = \"api_key\"\n";
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], routes), |ec| {
        ec.authenticator = Arc::new(BearerAuth);
    })
    .await;
    let r = edge
        .https_with("GET", "api.test", "/", &[("authorization", "Bearer good")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for second in [
        (
            "authorization",
            "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",
        ),
        ("x-api-key", "someone-else"),
    ] {
        let hits = a.hits.load(std::sync::atomic::Ordering::SeqCst);
        let mut headers = vec![("authorization", "Bearer good"), second];
        if second.0 == "x-api-key" {
            headers.push(second);
        }
        let r = edge.https_with("GET", "api.test", "/", &headers).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{second:?}");
        assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), hits);
    }
}

#[tokio::test]
async fn round_robin_spreads_across_two_upstreams() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let edge = TestEdge::start(config(&[("a", vec![a.addr, b.addr])], ROOT), |_| {}).await;
    for _ in 0..10 {
        assert_eq!(
            edge.https("GET", "api.test", "/").await.status,
            StatusCode::OK
        );
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test]
async fn dead_upstream_is_ejected_and_traffic_goes_to_the_live_one() {
    let live = upstream("live").await;
    let dead = dead_addr().await;
    let edge = TestEdge::start(config(&[("a", vec![dead, live.addr])], ROOT), |_| {}).await;
    for _ in 0..10 {
        let r = edge.https("GET", "api.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, "live");
    }
    let st = edge.handle.upstreams();
    let dead_state = st.iter().find(|u| u.addr == dead.to_string()).unwrap();
    assert_eq!(dead_state.state, BreakerState::Open);
    assert_eq!(live.hits.load(std::sync::atomic::Ordering::SeqCst), 10);
}

#[tokio::test]
async fn all_upstreams_down_gives_503_with_retry_after() {
    let (d1, d2) = (dead_addr().await, dead_addr().await);
    let edge = TestEdge::start(config(&[("a", vec![d1, d2])], ROOT), |_| {}).await;
    let mut last = None;
    for _ in 0..5 {
        let r = edge.https("GET", "api.test", "/").await;
        assert!(
            r.status == StatusCode::BAD_GATEWAY || r.status == StatusCode::SERVICE_UNAVAILABLE,
            "{r:?}"
        );
        last = Some(r);
    }
    let r = last.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn drain_finishes_in_flight_and_refuses_new_connections() {
    let a = upstream("a").await;
    let mut edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    let slow = tokio::spawn(async move { send(tls, "GET", "api.test", "/slow", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let served = edge.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(edge.addrs.https.unwrap()).await.is_err(),
        "new connections must be refused while draining"
    );
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "a");
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn http2_requests_are_proxied() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"h2"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://api.test/x?y=1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("strict-transport-security").unwrap(),
        HSTS
    );
    assert_eq!(resp.headers().get("echo-host").unwrap(), "api.test");

    // Cookies sent as several fields, as browsers do over HTTP/2, reach
    // the HTTP/1.1 service as one Cookie header.
    let req = http::Request::get("https://api.test/x")
        .header("cookie", "session=abc")
        .header("cookie", "theme=dark; lang=en")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookies: Vec<_> = resp.headers().get_all("echo-cookie").iter().collect();
    assert_eq!(cookies, ["session=abc; theme=dark; lang=en"]);
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.max_body_bytes = 16
    })
    .await;
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    let r = send_body(tls, "POST", "api.test", "/", &[], vec![b'x'; 17]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    let r = send_body(tls, "POST", "api.test", "/", &[], vec![b'x'; 16]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("echo-content-length"), Some("16"));
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let a = upstream("a").await;
    let routes = format!("{ROOT}deny_cidrs = [\"203.0.113.0/24\"]\n");
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| {
        ec.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]
    })
    .await;
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/",
            &[("x-forwarded-for", "198.51.100.4")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("echo-x-forwarded-for"),
        Some("198.51.100.4, 127.0.0.1")
    );
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/",
            &[("x-forwarded-for", "203.0.113.9")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A proxy that writes the client's port too names the same client.
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/",
            &[("x-forwarded-for", "203.0.113.9:4711")],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn bad_host_over_https_is_400() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let r = edge.https("GET", "api.test", "/").await;
    assert_eq!(r.status, StatusCode::OK);
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    let r = send(tls, "GET", "api.test:notaport", "/", &[]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.header_read_timeout = Duration::from_millis(300)
    })
    .await;
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let mut tls = edge.tls("api.test", cfg).await.expect("raw_https connect");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the edge kept a slow-header connection open");
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// A kept-alive connection waits for its next request up to the
/// keep-alive timeout, which may be longer than the time a new connection
/// has for its first, and is closed after it; a slow head on it is still
/// cut off after the header-read timeout.
#[tokio::test]
async fn kept_alive_connections_wait_for_the_keepalive_timeout() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.header_read_timeout = Duration::from_millis(300);
        ec.keepalive_timeout = Duration::from_millis(2500);
    })
    .await;
    let get = || {
        http::Request::get("https://api.test/x")
            .header("host", "api.test")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[alpn]);
        let tls = edge.tls("api.test", cfg).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tls);
        // The sender lives until the end: dropped, it would end the
        // connection from the client's side.
        let (first, later, conn, _sender): (_, _, _, Box<dyn std::any::Any + Send>) =
            if alpn == b"h2" {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await
                        .unwrap();
                let conn = tokio::spawn(conn);
                let first = sender.send_request(get()).await.unwrap().status();
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let later = sender.send_request(get()).await.map(|r| r.status());
                (first, later.ok(), conn, Box::new(sender))
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                let conn = tokio::spawn(conn);
                let first = sender.send_request(get()).await.unwrap().status();
                tokio::time::sleep(Duration::from_millis(1000)).await;
                let later = sender.send_request(get()).await.map(|r| r.status());
                (first, later.ok(), conn, Box::new(sender))
            };
        assert_eq!(first, StatusCode::OK, "{alpn:?}");
        assert_eq!(
            later,
            Some(StatusCode::OK),
            "{alpn:?}: a connection idle past the header-read timeout but within the keep-alive one was closed"
        );
        let idle_from = std::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
        assert!(
            ended.is_ok(),
            "{alpn:?}: a connection idle past the keep-alive timeout was kept open"
        );
        assert!(
            idle_from.elapsed() >= Duration::from_millis(2000),
            "{alpn:?}: closed after {:?}, before the keep-alive timeout",
            idle_from.elapsed()
        );
    }
    // A second head that trickles in is cut off after the header-read
    // timeout, not the keep-alive one.
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let mut tls = edge.tls("api.test", cfg).await.unwrap();
    tls.write_all(b"GET /x HTTP/1.1\r\nhost: api.test\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).ends_with("a") {
        let mut b = [0u8; 4096];
        let n = tls.read(&mut b).await.unwrap();
        assert!(n > 0, "closed before the first response");
        got.extend_from_slice(&b[..n]);
    }
    tls.write_all(b"GET /x HTTP/1.1\r\nhost: api.test\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the slow second head was not cut off");
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "the slow second head was cut off after {:?}, the keep-alive timeout, not the header-read one",
        started.elapsed()
    );
    let counts = edge.handle.conn_counts();
    assert_eq!(counts.closed_for(rampart_edge::idle::Closed::SlowHead), 1);
    assert_eq!(counts.closed_for(rampart_edge::idle::Closed::Idle), 2);
}

/// A connection that carries no request is closed after the header-read
/// timeout: one silent after its TLS handshake, and an HTTP/2 one whose
/// last stream has ended. Held open, either costs the edge a descriptor
/// for as long as the client likes.
#[tokio::test]
async fn connections_without_requests_are_closed() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.header_read_timeout = Duration::from_millis(300);
        ec.keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[alpn]);
        let mut tls = edge.tls("api.test", cfg).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a silent connection ({alpn:?}) was kept open");
    }
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"h2"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    // A response that takes longer than the timeout is not cut short.
    let req = http::Request::get("https://api.test/slow")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"a");
    // Then, with no stream open, the connection goes.
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection was kept open");
}

#[tokio::test]
async fn active_health_checks_take_out_a_dead_upstream_without_traffic() {
    let live = upstream("live").await;
    let dead = dead_addr().await;
    let edge = TestEdge::start(config(&[("a", vec![dead, live.addr])], ROOT), |ec| {
        ec.health_check = Some(quick_health_check())
    })
    .await;
    let healthy = health_once_one_is_down(&edge).await;
    assert!(healthy.contains(&(dead.to_string(), false)), "{healthy:?}");
    assert!(
        healthy.contains(&(live.addr.to_string(), true)),
        "{healthy:?}"
    );
    for _ in 0..4 {
        assert_eq!(edge.https("GET", "api.test", "/").await.body, "live");
    }
}

#[tokio::test]
async fn reload_swaps_routing_and_a_bad_reload_keeps_the_old_one() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    assert_eq!(edge.https("GET", "api.test", "/").await.body, "a");
    edge.handle
        .reload(&config(&[("a", vec![b.addr])], ROOT))
        .unwrap();
    assert_eq!(edge.https("GET", "api.test", "/").await.body, "b");
    let mut bad = config(&[("a", vec![a.addr])], ROOT);
    bad.services[0].upstreams.clear();
    assert!(matches!(
        edge.handle.reload(&bad),
        Err(rampart_edge::Error::NoUpstreams(_))
    ));
    assert_eq!(edge.https("GET", "api.test", "/").await.body, "b");
}

fn pem_of(c: &rampart_edge::CertConfig) -> (String, String) {
    match &c.source {
        rampart_edge::CertSource::Pem { cert, key } => (cert.clone(), key.clone()),
        other => panic!("{other:?}"),
    }
}

async fn peer_cert(edge: &TestEdge, sni: &str) -> Vec<u8> {
    let c = edge.client_config(rustls::DEFAULT_VERSIONS, &[]);
    let s = edge.tls(sni, c).await.unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn certificate_files_are_reloaded_when_they_change() {
    let a = upstream("a").await;
    let dir = std::env::temp_dir().join(format!("rampart-edge-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ca = TestCa::new();
    let write = |c: &rampart_edge::CertConfig| {
        let (c, k) = pem_of(c);
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
    };
    write(&ca.cert(&["api.test"]));
    let (cert2, key2) = (cert.clone(), key.clone());
    let mut edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), move |ec| {
        ec.certificates = vec![rampart_edge::CertConfig {
            names: vec!["api.test".into()],
            source: rampart_edge::CertSource::Files {
                cert: cert2,
                key: key2,
            },
        }];
        ec.cert_poll_interval = Some(Duration::from_millis(50));
    })
    .await;
    edge.ca = ca;
    let before = peer_cert(&edge, "api.test").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    write(&edge.ca.cert(&["api.test"]));
    let mut after = before.clone();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = peer_cert(&edge, "api.test").await;
        if after != before {
            break;
        }
    }
    assert_ne!(after, before, "the rotated certificate was not picked up");
    // A broken file keeps the current certificate serving.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(peer_cert(&edge, "api.test").await, after);
    edge.shutdown().await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn certificates_can_be_swapped_in_memory() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let new = edge.ca.cert(&["new.test"]);
    edge.handle.reload_certificates(&[new]).unwrap();
    let c = edge.client_config(rustls::DEFAULT_VERSIONS, &[]);
    edge.tls("new.test", c).await.unwrap();
    let broken = rampart_edge::CertConfig {
        names: vec!["x.test".into()],
        source: rampart_edge::CertSource::Pem {
            cert: "junk".into(),
            key: "junk".into(),
        },
    };
    assert!(edge.handle.reload_certificates(&[broken]).is_err());
    let c = edge.client_config(rustls::DEFAULT_VERSIONS, &[]);
    edge.tls("new.test", c).await.unwrap();
}

/// Sends raw bytes over TLS and returns what comes back before close.
async fn raw_https(edge: &TestEdge, bytes: &[u8]) -> String {
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let mut tls = edge.tls("api.test", cfg).await.expect("raw_https connect");
    // The edge may refuse and close before it has read everything (an
    // oversized head): what it answered is still read below.
    let _ = tls.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut buf))
        .await
        .expect("connection left open");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn hostile_requests_are_refused_or_made_safe() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let malformed = raw_https(&edge, b"GET /\x00 HTTP/1.1 extra\r\n\r\n").await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    let smuggle = raw_https(
        &edge,
        b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n",
    )
    .await;
    // Both framings in one request: refused with 400 and the connection
    // closed (raw_https reads to the end), so the smuggled GET never runs.
    assert!(smuggle.starts_with("HTTP/1.1 400"), "{smuggle}");
    assert!(smuggle.contains("conflicting_framing"), "{smuggle}");
    assert_eq!(smuggle.matches("HTTP/1.1 ").count(), 1, "{smuggle}");
    // The same after a clean keep-alive request on the same connection:
    // the first is served, the second refused.
    let second = raw_https(
        &edge,
        b"GET /first HTTP/1.1\r\nHost: api.test\r\n\r\nPOST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.contains("HTTP/1.1 400"), "{second}");
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: api.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let r = raw_https(&edge, huge.as_bytes()).await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    // Only the clean GET arrived.
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// A route's rules apply to the path the service acts on: `..`, encoded
/// dots and doubled slashes cannot take one route's rules to another
/// route's path, and the service receives the path the edge matched.
#[tokio::test]
async fn paths_are_normalised_before_routing_and_forwarding() {
    let a = upstream("a").await;
    let edge = admin_edge(&a, |_| {}).await;
    // Every spelling of /admin needs the admin route's credentials.
    for sneaky in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/.%2E/admin",
        "//admin",
        "/./admin/",
        "/%61dmin",
    ] {
        let r = edge.https("GET", "api.test", sneaky).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{sneaky}");
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // With them, the service gets the normalised path and the query as sent.
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/public/../admin/./x//y?q=%2e%2e/1",
            &[("x-test-role", "admin")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-upstream-path"), Some("/admin/x/y?q=%2e%2e/1"));
    // A normal path goes through byte for byte.
    let r = edge.https("GET", "api.test", "/a/b%20c/?x=1").await;
    assert_eq!(r.header("x-upstream-path"), Some("/a/b%20c/?x=1"));
    // What cannot be made safe is refused, and never reaches the service.
    let before = a.hits.load(std::sync::atomic::Ordering::SeqCst);
    for bad in [
        "/..",
        "/x/../../etc/passwd",
        "/public%2F..%2Fadmin",
        "/a%5Cb",
        "/a%00",
        "/public/%c0%ae%c0%ae/admin",
        "/public%c0%afadmin",
    ] {
        let r = edge.https("GET", "api.test", bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.body.contains("bad_path"), "{bad}: {}", r.body);
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), before);
}

/// A path that Java servers (segment parameters dropped), case-insensitive
/// ones or Windows ones (trailing dots cut) read as the `/admin` route's is
/// refused, not
/// taken to the service under the `/` route's rules.
#[tokio::test]
async fn paths_other_servers_read_as_another_route_are_refused() {
    let a = upstream("a").await;
    let edge = admin_edge(&a, |_| {}).await;
    for sneaky in [
        "/admin;x=1/users",
        "/admin;",
        "/;x/admin/users",
        "/ADMIN/users",
        "/Admin",
        "/public/../Admin/users",
        "/admin./users",
        "/admin%20/users",
    ] {
        let r = edge.https("GET", "api.test", sneaky).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{sneaky}");
        assert!(r.body.contains("bad_path"), "{sneaky}: {}", r.body);
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Parameters and capitals that leave the route as it is pass.
    for fine in ["/admin/Users;jsessionid=1", "/Public;v=2/Files"] {
        let r = edge
            .https_with("GET", "api.test", fine, &[("x-test-role", "admin")])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{fine}");
        assert_eq!(r.header("x-upstream-path"), Some(fine));
    }
}

/// Host confusion and codings the edge cannot pass on are refused.
#[tokio::test]
async fn ambiguous_hosts_and_unknown_transfer_codings_are_refused() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |_| {}).await;
    let two_hosts = raw_https(
        &edge,
        b"GET / HTTP/1.1\r\nHost: api.test\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    let mismatch = raw_https(
        &edge,
        b"GET https://api.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
    )
    .await;
    assert!(mismatch.starts_with("HTTP/1.1 400"), "{mismatch}");
    let same = raw_https(
        &edge,
        b"GET https://api.test/x HTTP/1.1\r\nHost: API.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(same.starts_with("HTTP/1.1 200"), "{same}");
    let gzip = raw_https(
        &edge,
        b"POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(gzip.starts_with("HTTP/1.1 501"), "{gzip}");
    assert!(gzip.contains("unsupported_transfer_encoding"), "{gzip}");
    // A single header line far below hyper's own limit but above the
    // edge's 64 KiB head.
    let long = format!(
        "GET / HTTP/1.1\r\nHost: api.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let r = raw_https(&edge, long.as_bytes()).await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slow_body_gets_408() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.body_read_timeout = Duration::from_millis(300)
    })
    .await;
    let r = raw_https(
        &edge,
        b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// An audit log that refuses every record.
struct RefusingAudit;

impl rampart_edge::AuditSink for RefusingAudit {
    fn record(&self, _rec: &rampart_edge::AccessRecord) {}

    fn record_durable(&self, _rec: &rampart_edge::AccessRecord) -> rampart_edge::DurableRecord {
        Box::pin(std::future::ready(Err("disk full".to_string())))
    }
}

#[tokio::test]
async fn a_refused_access_record_fails_closed_with_503() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.audit = Arc::new(RefusingAudit)
    })
    .await;
    let r = edge.https("GET", "api.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("strict-transport-security").is_some());
}

#[tokio::test]
async fn per_route_rate_limit_and_body_limit_override_the_defaults() {
    let a = upstream("a").await;
    let routes = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/strict\"\nservice = \"a\"\nmax_body_bytes = 8\nrate_limit = { burst = 1, per_second = 0.1 }\n[[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n";
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], routes), |ec| {
        ec.body_read_timeout = Duration::from_secs(5)
    })
    .await;
    // The strict route's body limit is 8 bytes (the default route takes more)…
    for (path, want) in [
        ("/strict", StatusCode::PAYLOAD_TOO_LARGE),
        ("/other", StatusCode::OK),
    ] {
        let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
        let tls = edge.tls("api.test", cfg).await.unwrap();
        let r = send_body(tls, "POST", "api.test", path, &[], vec![b'x'; 9]).await;
        assert_eq!(r.status, want, "{path}");
    }
    // A body declared over the route's limit is refused at once, not read
    // (up to the edge's own 10 MiB) or waited for first.
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let mut tls = edge.tls("api.test", cfg).await.unwrap();
    tls.write_all(b"POST /strict/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(2), tls.read_exact(&mut head))
        .await
        .expect("the edge waited for a body over the route's limit")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // …and its bucket holds one request (a body refused by its declared
    // length took none): the next is 429, the other route is unaffected.
    assert_eq!(
        edge.https("GET", "api.test", "/strict").await.status,
        StatusCode::OK
    );
    let r = edge.https("GET", "api.test", "/strict").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        edge.https("GET", "api.test", "/other").await.status,
        StatusCode::OK
    );
}

/// An upstream slower than the upstream timeout gets 504; a route with a
/// longer timeout of its own waits for it.
#[tokio::test]
async fn a_slow_upstream_gets_504_unless_its_route_waits_longer() {
    let a = upstream("a").await;
    let routes = "[[routes]]\nhost = \"api.test\"\nservice = \"a\"\nupstream_timeout_seconds = 5\n\
                  [[routes]]\nhost = \"*.example.test\"\nservice = \"a\"\n";
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], routes), |ec| {
        ec.upstream_timeout = Duration::from_millis(300)
    })
    .await;
    // `/slow` answers after a second.
    let started = std::time::Instant::now();
    let r = edge.https("GET", "x.example.test", "/slow").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(900));
    let r = edge.https("GET", "api.test", "/slow").await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
}

#[tokio::test]
async fn a_route_can_give_its_prefix_another_name_at_the_service() {
    let a = upstream("a").await;
    let routes = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/api\"\nservice = \"a\"\nupstream_path_prefix = \"/\"\n\
                  [[routes]]\nhost = \"api.test\"\npath_prefix = \"/v1/\"\nservice = \"a\"\nupstream_path_prefix = \"/internal/v1\"\n\
                  [[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n";
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], routes), |_| {}).await;
    for (sent, seen) in [
        ("/api/users?page=2", "/users?page=2"),
        ("/api", "/"),
        ("/api/", "/"),
        // Normalised first, then renamed: the service sees what was routed.
        ("/api/./users/../orders", "/orders"),
        ("/v1/items/7", "/internal/v1/items/7"),
        // Another route, no rename; and a prefix only on a segment boundary.
        ("/apis/x", "/apis/x"),
        ("/other", "/other"),
    ] {
        let r = edge.https("GET", "api.test", sent).await;
        assert_eq!(r.status, StatusCode::OK, "{sent}");
        assert_eq!(r.header("x-upstream-path"), Some(seen), "{sent}");
    }
}

#[tokio::test]
async fn security_headers_and_hsts_are_configurable_and_routes_edit_responses() {
    let a = upstream("a").await;
    let routes = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n\
                  remove_response_headers = [\"X-Upstream\"]\n\
                  response_headers = { \"Cache-Control\" = \"no-store\", \"X-Frame-Options\" = \"SAMEORIGIN\" }\n\
                  [[routes]]\nhost = \"api.test\"\npath_prefix = \"/plain\"\nservice = \"a\"\n";
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], routes), |ec| {
        ec.hsts = "max-age=63072000; includeSubDomains; preload".into();
        ec.security_headers = vec![
            (
                "content-security-policy".into(),
                "default-src 'self'".into(),
            ),
            ("x-frame-options".into(), "DENY".into()),
        ];
    })
    .await;
    // A route without rules: the edge's set, and its HSTS.
    let r = edge.https("GET", "api.test", "/plain").await;
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains; preload")
    );
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'self'")
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    // The configured set replaces the defaults.
    assert_eq!(r.header("x-content-type-options"), None);
    assert_eq!(r.header("x-upstream"), Some("a"));
    // A route's rules: a header removed, others set over the service's and
    // the edge's (which only fills what a response lacks).
    let r = edge.https("GET", "api.test", "/").await;
    assert_eq!(r.header("x-upstream"), None);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'self'")
    );
    // The edge's own refusals carry the set and HSTS too.
    let r = edge.https("GET", "nothing.example.test", "/").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'self'")
    );
}

#[tokio::test]
async fn routes_set_and_remove_request_headers_before_the_service() {
    let a = upstream("a").await;
    let routes = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n\
                  remove_request_headers = [\"Authorization\"]\n\
                  request_headers = { \"X-Env\" = \"prod\" }\n";
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], routes), |_| {}).await;
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/",
            &[("authorization", "Bearer client-token"), ("x-env", "evil")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // The service never sees the client's credential, and gets the
    // route's value over the client's.
    assert_eq!(r.header("echo-authorization"), None);
    assert_eq!(r.header("echo-x-env"), Some("prod"));
    // The edge's own headers still come.
    assert!(r.header("echo-x-request-id").is_some());
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_until_one_ends() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.max_connections = 2;
    })
    .await;
    let cfg = || edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let first = edge.tls("api.test", cfg()).await.unwrap();
    let second = edge.tls("api.test", cfg()).await.unwrap();
    // A third is accepted by the kernel and closed by the edge at once:
    // its handshake fails.
    assert!(edge.tls("api.test", cfg()).await.is_err());
    assert_eq!(
        edge.handle
            .conn_counts()
            .closed_for(rampart_edge::idle::Closed::OverLimit),
        1
    );
    // Once one ends, there is room again.
    drop(first);
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(tls) = edge.tls("api.test", cfg()).await {
            let r = send(tls, "GET", "api.test", "/", &[]).await;
            assert_eq!(r.status, StatusCode::OK);
            served = true;
            break;
        }
    }
    assert!(served, "no room after a connection ended");
    drop(second);
}

#[tokio::test]
async fn one_client_cannot_take_every_connection_slot() {
    let a = upstream("a").await;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROOT), |ec| {
        ec.max_connections = 100;
        ec.max_connections_per_client = 1;
    })
    .await;
    let cfg = || edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let held = edge.tls("api.test", cfg()).await.unwrap();
    // Room in all, none for this client (all tests connect from 127.0.0.1).
    assert!(edge.tls("api.test", cfg()).await.is_err());
    assert_eq!(
        edge.handle
            .conn_counts()
            .closed_for(rampart_edge::idle::Closed::ClientOverLimit),
        1
    );
    let r = send(held, "GET", "api.test", "/", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A service with `balance = "client_hash"` keeps each client to one
/// instance (the client as the trusted proxy's `X-Forwarded-For` names
/// it), spreads clients over its instances, and when a client's instance
/// is down sends it to another while the other clients stay put.
#[tokio::test]
async fn client_hash_keeps_each_client_to_one_instance() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let dead = dead_addr().await;
    let text = format!(
        "[[environments]]\nname = \"test\"\n\
         [[services]]\nname = \"s\"\nenvironment = \"test\"\nport = 8080\nbalance = \"client_hash\"\n\
         upstreams = [\"{}\", \"{}\", \"{dead}\"]\n\
         [[routes]]\nhost = \"api.test\"\nservice = \"s\"\n",
        a.addr, b.addr
    );
    let cfg = rampart_config::Config::parse(&text, "t.toml").unwrap();
    let edge = TestEdge::start(cfg, |ec| {
        ec.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut seen = std::collections::HashMap::new();
    for n in 1..=40 {
        let client = format!("198.51.100.{n}");
        let mut got = Vec::new();
        for _ in 0..3 {
            let r = edge
                .https_with("GET", "api.test", "/", &[("x-forwarded-for", &client)])
                .await;
            assert_eq!(r.status, StatusCode::OK, "{client}");
            got.push(r.header("x-upstream").unwrap().to_string());
        }
        // The clients whose instance is the dead one move, to one other
        // instance, every time.
        assert!(got.windows(2).all(|w| w[0] == w[1]), "{client}: {got:?}");
        *seen.entry(got[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|&n| n >= 5), "{seen:?}");
}

/// Upstreams with weights share a service's requests in proportion: with
/// round robin exactly, in nginx's smooth order; by client, in proportion
/// over many clients.
#[tokio::test]
async fn weighted_upstreams_share_requests_by_weight() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let text = |balance: &str| {
        format!(
            "[[environments]]\nname = \"test\"\n\
             [[services]]\nname = \"s\"\nenvironment = \"test\"\nport = 8080\nbalance = \"{balance}\"\n\
             upstreams = [{{ addr = \"{}\", weight = 3 }}, \"{}\"]\n\
             [[routes]]\nhost = \"api.test\"\nservice = \"s\"\n",
            a.addr, b.addr
        )
    };
    let cfg = rampart_config::Config::parse(&text("round_robin"), "t.toml").unwrap();
    let edge = TestEdge::start(cfg, |ec| {
        ec.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut order = String::new();
    for _ in 0..80 {
        let r = edge.https("GET", "api.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        order.push_str(r.header("x-upstream").unwrap());
    }
    assert_eq!(order.matches('a').count(), 60, "{order}");
    assert!(!order.contains("aaaa"), "{order}");

    let cfg = rampart_config::Config::parse(&text("client_hash"), "t.toml").unwrap();
    let edge = TestEdge::start(cfg, |ec| {
        ec.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let mut to_a = 0;
    for n in 1..=200 {
        let client = format!("198.51.{}.{}", n / 100, n % 100 + 1);
        let r = edge
            .https_with("GET", "api.test", "/", &[("x-forwarded-for", &client)])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{client}");
        to_a += usize::from(r.header("x-upstream") == Some("a"));
    }
    // Expected 150 of 200.
    assert!((125..=175).contains(&to_a), "{to_a}");
}

/// A backup instance takes no requests while another can, and all of
/// them once none can (here the only other refuses connections).
#[tokio::test]
async fn a_backup_stands_in_only_when_the_others_are_out() {
    let (a, b) = (upstream("a").await, upstream("b").await);
    let with = |primary: String| {
        let text = format!(
            "[[environments]]\nname = \"test\"\n\
             [[services]]\nname = \"s\"\nenvironment = \"test\"\nport = 8080\n\
             upstreams = [\"{primary}\", {{ addr = \"{}\", backup = true }}]\n\
             [[routes]]\nhost = \"api.test\"\nservice = \"s\"\n",
            b.addr
        );
        rampart_config::Config::parse(&text, "t.toml").unwrap()
    };
    let edge = TestEdge::start(with(a.addr.to_string()), |_| {}).await;
    for _ in 0..10 {
        let r = edge.https("GET", "api.test", "/").await;
        assert_eq!(r.header("x-upstream"), Some("a"));
    }
    let dead = dead_addr().await;
    let edge = TestEdge::start(with(dead.to_string()), |_| {}).await;
    for _ in 0..10 {
        let r = edge.https("GET", "api.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-upstream"), Some("b"));
    }
}

/// A route's `methods` take those methods (and `HEAD` with `GET`); any
/// other gets 405 with `Allow` and never reaches the service, audited
/// with its reason; a route without the setting takes any method.
#[tokio::test]
async fn a_route_refuses_methods_it_does_not_take_with_405_and_allow() {
    let a = upstream("a").await;
    let routes = format!(
        "{ROOT}methods = [\"GET\", \"POST\"]\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/any\"\nservice = \"a\"\n"
    );
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| ec.audit = rec).await;
    for m in ["GET", "HEAD", "POST"] {
        let r = edge.https(m, "api.test", "/x").await;
        assert_eq!(r.status, StatusCode::OK, "{m}");
    }
    let passed = a.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(passed, 3);
    for m in ["DELETE", "PUT", "OPTIONS", "TRACE", "PROPFIND"] {
        let r = edge.https(m, "api.test", "/x").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(r.header("allow"), Some("GET, POST, HEAD"), "{m}");
        assert!(
            r.body.contains("\"code\":\"method_not_allowed\""),
            "{}",
            r.body
        );
    }
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), passed);
    {
        let recs = records.0.lock().unwrap();
        let refused: Vec<_> = recs.iter().filter(|r| r.status == 405).collect();
        assert_eq!(refused.len(), 5);
        assert!(refused
            .iter()
            .all(|r| r.reason == Some("method_not_allowed")));
    }
    let r = edge.https("DELETE", "api.test", "/any/thing").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// A route with `redirect` answers every request with its status and
/// `Location` (the target, then the request's path and query), never
/// reaching a service, after the IP rules; it is audited as a redirect.
#[tokio::test]
async fn a_redirecting_route_answers_with_location_and_reaches_no_service() {
    let a = upstream("a").await;
    let routes = format!(
        "{ROOT}\
         [[routes]]\nhost = \"old.example.test\"\nredirect = \"https://new.test/v2\"\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/moved\"\nredirect = \"https://api.test\"\nredirect_status = 308\n\
         [[routes]]\nhost = \"closed.example.test\"\nredirect = \"https://new.test\"\ndeny_cidrs = [\"127.0.0.0/8\"]\n"
    );
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| ec.audit = rec).await;
    let r = edge
        .https("GET", "old.example.test", "/docs/page?lang=en&x=1")
        .await;
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.header("location"),
        Some("https://new.test/v2/docs/page?lang=en&x=1")
    );
    assert_eq!(r.body, "");
    assert!(r.header("strict-transport-security").is_some());
    // The path goes on normalised, as routing saw it.
    let r = edge.https("GET", "old.example.test", "/a/./b/../c").await;
    assert_eq!(r.header("location"), Some("https://new.test/v2/a/c"));
    let r = edge.https("POST", "api.test", "/moved/x").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.header("location"), Some("https://api.test/moved/x"));
    // The rest of the host still reaches its service.
    let r = edge.https("GET", "api.test", "/other").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    // IP rules come first.
    let r = edge.https("GET", "closed.example.test", "/").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("location"), None);
    let recs = records.0.lock().unwrap();
    let redirected: Vec<_> = recs
        .iter()
        .filter(|r| r.reason == Some("redirect"))
        .collect();
    assert_eq!(redirected.len(), 3);
    assert_eq!((redirected[0].status, redirected[2].status), (301, 308));
}

/// A route with `cors`: a browser's preflight is answered by the edge
/// (204, before authentication, which it could not pass), fully for an
/// allowed origin and without allowances for another; the service's
/// answers and the edge's refusals on the route carry
/// `Access-Control-Allow-Origin` for the allowed origin only.
#[tokio::test]
async fn cors_preflights_are_answered_at_the_edge_and_responses_marked() {
    let a = upstream("a").await;
    let routes = format!(
        "{ROOT}auth = \"api_key\"\n\
         cors = {{ origins = [\"https://app.example.com\"], methods = [\"GET\", \"PUT\"], headers = [\"authorization\", \"content-type\"], credentials = true }}\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/open\"\nservice = \"a\"\n\
         cors = {{ origins = [\"https://app.example.com\"] }}\n"
    );
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &routes), |ec| ec.audit = rec).await;
    let asked = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "PUT"),
        (
            "access-control-request-headers",
            "authorization,content-type",
        ),
    ];
    let r = edge.https_with("OPTIONS", "api.test", "/x", &asked).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert!(r.body.is_empty());
    // Another origin's preflight is answered without allowances.
    let r = edge
        .https_with(
            "OPTIONS",
            "api.test",
            "/x",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "PUT"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The authenticated route still refuses an actual call without a key,
    // in words the page may read (to send its user to sign in).
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/x",
            &[("origin", "https://app.example.com")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    // The open route's answers carry the allowance for the allowed origin.
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/open",
            &[("origin", "https://app.example.com")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let r = edge
        .https_with(
            "GET",
            "api.test",
            "/open",
            &[("origin", "https://evil.example")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    let recs = records.0.lock().unwrap();
    assert_eq!(
        recs.iter()
            .filter(|r| r.reason == Some("cors_preflight") && r.status == 204)
            .count(),
        2
    );
}
