//! Mutual TLS (client certificates, revoked serials, listener-wide
//! requirement) and JSON Schema validation of request bodies, end to end
//! through a real edge and a real upstream on loopback.

mod util;

use std::sync::Arc;

use http::StatusCode;
use rampart_edge::{AuthOutcome, AuthRequest, Authenticator, ClientAuth, ClientCert, Principal};
use util::*;

const EDGE_MTLS: &str = "[edge]\nclient_ca = [\"clients.pem\"]\n";

fn cert_route(extra: &str, edge_extra: &str) -> String {
    format!(
        "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/internal\"\nservice = \"a\"\nauth = \"client_cert\"\n{extra}\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n\
         {EDGE_MTLS}{edge_extra}"
    )
}

fn mtls(ca: &TestCa, required: bool) -> impl FnOnce(&mut rampart_edge::EdgeConfig) {
    let pem = ca.pem();
    move |ec| {
        ec.client_auth = Some(ClientAuth {
            ca_pem: vec![pem],
            required,
        })
    }
}

#[tokio::test]
async fn client_cert_route_refuses_without_a_certificate_and_accepts_a_valid_one() {
    let a = upstream("a").await;
    let clients = TestCa::new();
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let tweak = mtls(&clients, false);
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &cert_route("", "")), |ec| {
        tweak(ec);
        ec.audit = rec;
    })
    .await;

    // No certificate: the optional listener lets the handshake through,
    // the route refuses.
    let r = edge.https("GET", "api.test", "/internal/x").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Other routes still work without one.
    assert_eq!(
        edge.https("GET", "api.test", "/").await.status,
        StatusCode::OK
    );

    // A certificate from the client CA: passed, the principal is its CN.
    let (cert, key) = clients.client("billing-worker", &[0x0a, 0x01]);
    let tls = edge
        .tls("api.test", edge.client_config_with_cert(&cert, &key))
        .await
        .unwrap();
    let r = send(tls, "GET", "api.test", "/internal/x", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let recs = records.0.lock().unwrap().clone();
    let last = recs.last().unwrap();
    assert_eq!(last.principal.as_deref(), Some("billing-worker"));
    assert_eq!(last.client_cert_serial.as_deref(), Some("a01"));

    // A certificate from another CA fails the handshake.
    let stranger = TestCa::new();
    let (cert, key) = stranger.client("mallory", &[0x01]);
    let hs = edge
        .tls("api.test", edge.client_config_with_cert(&cert, &key))
        .await;
    let refused = match hs {
        Err(_) => true,
        // TLS 1.3: the client learns of the refusal on first read.
        Ok(tls) => {
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                try_send(tls, "GET", "api.test", "/internal/x"),
            )
            .await
            .unwrap();
            r.is_none()
        }
    };
    assert!(refused, "a certificate from an unknown CA was accepted");
}

/// Sends one request; `None` if the connection fails.
async fn try_send<S>(io: S, method: &str, host: &str, path: &str) -> Option<StatusCode>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    sender.send_request(req).await.ok().map(|r| r.status())
}

#[tokio::test]
async fn a_revoked_serial_is_refused_and_a_reload_revokes_without_restart() {
    let a = upstream("a").await;
    let clients = TestCa::new();
    let tweak = mtls(&clients, false);
    let cfg_text = cert_route("", "revoked_client_serials = [\"00:0b\"]\n");
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &cfg_text), tweak).await;

    let (revoked_cert, revoked_key) = clients.client("old-laptop", &[0x0b]);
    let tls = edge
        .tls(
            "api.test",
            edge.client_config_with_cert(&revoked_cert, &revoked_key),
        )
        .await
        .unwrap();
    let r = send(tls, "GET", "api.test", "/internal/x", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body.contains("client_cert_revoked"), "{}", r.body);

    // A good certificate passes until its serial is revoked by a reload.
    let (cert, key) = clients.client("new-laptop", &[0x0c]);
    let get = || async {
        let tls = edge
            .tls("api.test", edge.client_config_with_cert(&cert, &key))
            .await
            .unwrap();
        send(tls, "GET", "api.test", "/internal/x", &[])
            .await
            .status
    };
    assert_eq!(get().await, StatusCode::OK);
    let revoked_both = cert_route("", "revoked_client_serials = [\"0b\", \"0C\"]\n");
    edge.handle
        .reload(&config(&[("a", vec![a.addr])], &revoked_both))
        .unwrap();
    assert_eq!(get().await, StatusCode::FORBIDDEN);
}

/// Gives certificate principals the role named after their CN's prefix,
/// and refuses one it knows to be disabled: how the identity plane plugs in.
struct CertRoles;

impl Authenticator for CertRoles {
    fn authenticate(&self, _req: &AuthRequest<'_>) -> AuthOutcome {
        AuthOutcome::Unauthenticated
    }
    fn authenticate_certificate(&self, cert: &ClientCert, _req: &AuthRequest<'_>) -> AuthOutcome {
        if cert.principal == "disabled-bot" {
            return AuthOutcome::Unauthenticated;
        }
        let role = cert.principal.split('-').next().unwrap_or("").to_string();
        AuthOutcome::Authenticated(Principal {
            id: cert.principal.clone(),
            roles: vec![role],
        })
    }
}

#[tokio::test]
async fn certificate_principals_get_roles_through_the_authenticator() {
    let a = upstream("a").await;
    let clients = TestCa::new();
    let tweak = mtls(&clients, false);
    let text = format!(
        "[[roles]]\nname = \"ops\"\npermissions = []\n{}",
        cert_route("roles = [\"ops\"]", "")
    );
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &text), |ec| {
        tweak(ec);
        ec.authenticator = Arc::new(CertRoles);
    })
    .await;
    for (cn, want) in [
        ("ops-runner", StatusCode::OK),
        ("dev-laptop", StatusCode::FORBIDDEN),
        ("disabled-bot", StatusCode::UNAUTHORIZED),
    ] {
        let (cert, key) = clients.client(cn, &[0x42]);
        let tls = edge
            .tls("api.test", edge.client_config_with_cert(&cert, &key))
            .await
            .unwrap();
        let r = send(tls, "GET", "api.test", "/internal/x", &[]).await;
        assert_eq!(r.status, want, "{cn}: {}", r.body);
    }
}

#[tokio::test]
async fn a_listener_that_requires_certificates_refuses_the_handshake_without_one() {
    let a = upstream("a").await;
    let clients = TestCa::new();
    let tweak = mtls(&clients, true);
    let text = format!("{ROUTE_ROOT}{EDGE_MTLS}client_auth = \"required\"\n");
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], &text), tweak).await;
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let refused = match edge.tls("api.test", cfg).await {
        Err(_) => true,
        Ok(tls) => try_send(tls, "GET", "api.test", "/").await.is_none(),
    };
    assert!(refused, "a client without a certificate got through");
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let (cert, key) = clients.client("anyone", &[0x01]);
    let tls = edge
        .tls("api.test", edge.client_config_with_cert(&cert, &key))
        .await
        .unwrap();
    assert_eq!(
        send(tls, "GET", "api.test", "/", &[]).await.status,
        StatusCode::OK
    );
}

const ROUTE_ROOT: &str = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n";

const ORDER_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["sku", "qty"],
  "additionalProperties": false,
  "properties": {
    "sku": { "type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$" },
    "qty": { "type": "integer", "minimum": 1, "maximum": 100 },
    "note": { "type": "string", "maxLength": 200 }
  }
}"#;

/// A directory holding `order.json` ([`ORDER_SCHEMA`]), removed when
/// dropped, and routes: `/orders` checked against it, `/` not.
struct OrderRoutes {
    dir: std::path::PathBuf,
    text: String,
}

impl OrderRoutes {
    fn new(tag: &str) -> OrderRoutes {
        let dir = std::env::temp_dir().join(format!("rampart-edge-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let schema = dir.join("order.json");
        std::fs::write(&schema, ORDER_SCHEMA).unwrap();
        let text = format!(
            "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/orders\"\nservice = \"a\"\njson_schema = {:?}\n{ROUTE_ROOT}",
            schema.display().to_string()
        );
        OrderRoutes { dir, text }
    }
}

impl Drop for OrderRoutes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn post(edge: &TestEdge, ctype: &str, body: &str) -> Resp {
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    send_body(
        tls,
        "POST",
        "api.test",
        "/orders",
        &[("content-type", ctype)],
        body.as_bytes().to_vec(),
    )
    .await
}

#[tokio::test]
async fn json_schema_refuses_bad_bodies_naming_the_field() {
    let a = upstream("a").await;
    let routes = OrderRoutes::new("schema");
    let text = &routes.text;
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], text), |ec| ec.audit = rec).await;

    let ok = post(&edge, "application/json", r#"{"sku":"ABC-1234","qty":2}"#).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let hits = a.hits.load(std::sync::atomic::Ordering::SeqCst);

    let r = post(
        &edge,
        "application/json",
        r#"{"sku":"ABC-1234","qty":98765}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["code"], "schema_violation");
    assert_eq!(v["error"]["field"], "/qty");
    // The value is never echoed (checked in the message: the request id is
    // hex and could hold any digits).
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("98765"),
        "the value is echoed: {}",
        r.body
    );
    assert_eq!(
        v["error"]["request_id"].as_str().map(str::len),
        Some(24),
        "{}",
        r.body
    );
    assert_eq!(
        records.0.lock().unwrap().last().unwrap().detail.as_deref(),
        Some("/qty")
    );

    let r = post(&edge, "application/json", r#"{"sku":"x","qty":1}"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("\"/sku\""), "{}", r.body);

    let r = post(
        &edge,
        "application/json",
        r#"{"sku":"ABC-1234","qty":1,"admin":true}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    let r = post(&edge, "application/json", r#"{"sku": "ABC-1234", "qty": "#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("bad_json"), "{}", r.body);

    let r = post(&edge, "text/plain", r#"{"sku":"ABC-1234","qty":2}"#).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Deeply nested hostile JSON is refused without harm.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = post(&edge, "application/json", &deep).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    assert_eq!(
        a.hits.load(std::sync::atomic::Ordering::SeqCst),
        hits,
        "a refused body reached the upstream"
    );
    // Routes without a schema are not checked.
    let r = edge.https("GET", "api.test", "/").await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Parsers disagree on which of two equal keys counts (serde_json keeps the
/// last, others the first), and services on which of two `Content-Type`s:
/// such a body is refused, not checked under one reading and acted on under
/// the other.
#[tokio::test]
async fn json_schema_refuses_duplicate_keys() {
    let a = upstream("a").await;
    let routes = OrderRoutes::new("schema-dup");
    let text = &routes.text;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], text), |_| {}).await;
    for body in [
        r#"{"sku":"ABC-1234","qty":98765,"qty":2}"#,
        r#"{"sku":"ABC-1234","qty":2,"note":{"a":1,"a":2}}"#,
        r#"[{"x":1,"x":1}]"#,
    ] {
        let r = post(&edge, "application/json", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.body.contains("bad_json"), "{body}: {}", r.body);
        assert!(r.body.contains("duplicate"), "{body}: {}", r.body);
    }
    // Two Content-Types: the body checked as JSON could be read as the
    // other (here a form that sets qty=98765) by the service.
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let tls = edge.tls("api.test", cfg).await.unwrap();
    let polyglot = r#"{"sku":"ABC-1234","qty":2,"note":"&qty=98765&x="}"#;
    let r = send_body(
        tls,
        "POST",
        "api.test",
        "/orders",
        &[
            ("content-type", "application/json"),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        polyglot.as_bytes().to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.body);
    assert_eq!(a.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Numbers, nulls, nesting and equal keys in different objects still pass.
    let ok = post(
        &edge,
        "application/json",
        r#"{"sku":"ABC-1234","qty":2,"note":"n"}"#,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
}

#[tokio::test]
async fn a_reload_with_a_broken_schema_is_refused() {
    let a = upstream("a").await;
    let dir = std::env::temp_dir().join(format!("rampart-edge-schema-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"type": "no-such-type"}"#).unwrap();
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], ROUTE_ROOT), |_| {}).await;
    let text = format!(
        "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/orders\"\nservice = \"a\"\njson_schema = {:?}\n{ROUTE_ROOT}",
        bad.display().to_string()
    );
    let err = edge
        .handle
        .reload(&config(&[("a", vec![a.addr])], &text))
        .unwrap_err();
    assert!(err.to_string().contains("bad.json"), "{err}");
    assert_eq!(
        edge.https("GET", "api.test", "/").await.status,
        StatusCode::OK
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bodies a phase reads whole share one budget: while slow uploads hold
/// it, another body gets 503 with Retry-After instead of more memory, and
/// once they end the budget is whole again.
#[tokio::test]
async fn buffered_bodies_share_one_budget() {
    use tokio::io::AsyncWriteExt;
    let a = upstream("a").await;
    let routes = OrderRoutes::new("budget");
    let text = &routes.text;
    let edge = TestEdge::start(config(&[("a", vec![a.addr])], text), |ec| {
        ec.max_body_bytes = 64 * 1024;
        ec.max_buffered_body_bytes = 64 * 1024;
    })
    .await;

    // A slow upload: 40,000 bytes declared, 30,000 sent, then nothing.
    let cfg = edge.client_config(rustls::DEFAULT_VERSIONS, &[b"http/1.1"]);
    let mut slow = edge.tls("api.test", cfg).await.unwrap();
    slow.write_all(
        b"POST /orders HTTP/1.1\r\nhost: api.test\r\ncontent-type: application/json\r\ncontent-length: 40000\r\n\r\n",
    )
    .await
    .unwrap();
    slow.write_all(&[b' '; 30_000]).await.unwrap();
    slow.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let big = format!("{}{{\"sku\":\"ABC-1234\",\"qty\":2}}", " ".repeat(40_000));
    let r = post(&edge, "application/json", &big).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("body_buffers_full"), "{}", r.body);
    assert_eq!(r.headers.get("retry-after").unwrap(), "1");
    // Small bodies still fit beside the held one.
    let ok = post(&edge, "application/json", r#"{"sku":"ABC-1234","qty":2}"#).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);

    // The slow client goes: its share comes back.
    drop(slow);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..50 {
        status = post(&edge, "application/json", &big).await.status;
        if status != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, StatusCode::OK);
}
