//! End-to-end: the WAF's response phases (3 to 5) through the real edge on
//! 127.0.0.1:0, against an upstream that leaks what CRS's 95x rules look
//! for: a database error in the body, a server banner in the headers.

mod util;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use util::*;

/// Response rules in the shape of CRS's: 950 reads a response header in
/// phase 3, 951 the body in phase 4 (buffered up to 1 KiB of text/html,
/// the rest passed unread), 952 needs a request-phase variable.
const RULES: &str = "SecRuleEngine On\n\
SecRequestBodyAccess On\n\
SecResponseBodyAccess On\n\
SecResponseBodyMimeType text/html text/plain\n\
SecResponseBodyLimit 1024\n\
SecResponseBodyLimitAction ProcessPartial\n\
SecRule ARGS \"@contains attack\" \"id:10,phase:2,deny,status:403,msg:'attack'\"\n\
SecRule ARGS:debug \"@streq 1\" \"id:11,phase:2,pass,nolog,setvar:tx.debug=1\"\n\
SecRule RESPONSE_HEADERS:X-Powered-By \"@rx ^PHP/\" \"id:950,phase:3,deny,status:403,msg:'server banner'\"\n\
SecRule RESPONSE_BODY \"@contains error in your SQL syntax\" \"id:951,phase:4,deny,status:403,msg:'SQL error leaked'\"\n\
SecRule TX:DEBUG \"@eq 1\" \"id:952,phase:4,chain,deny,status:403,msg:'debug output'\"\n\
  SecRule RESPONSE_BODY \"@contains stack trace\" \"t:none\"\n";

const LEAK: &str = "<p>You have an error in your SQL syntax near 'x'</p>";

/// Answers by the last segment of the path: `leak` (text/html with a SQL error), `banner` (an
/// `X-Powered-By: PHP/8.2` header), `json-leak` (the same error as JSON,
/// a type the rules do not buffer), `big` (2 KiB of text/html, the error
/// past the 1 KiB limit), `trace` (a stack trace), anything else a
/// clean page.
async fn leaky_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let path = req.uri().path();
                    let page = path.rsplit('/').next().unwrap_or("");
                    let (ct, body, banner) = match page {
                        "leak" => ("text/html; charset=utf-8", LEAK.to_string(), None),
                        "banner" => ("text/html", "<p>hi</p>".to_string(), Some("PHP/8.2.1")),
                        "json-leak" => (
                            "application/json",
                            format!("{{\"error\":\"{LEAK}\"}}"),
                            None,
                        ),
                        "big" => ("text/html", format!("{}{LEAK}", "a".repeat(2048)), None),
                        "trace" => ("text/plain", "stack trace: at main.rs:1".to_string(), None),
                        _ => ("text/html", "<p>clean page</p>".to_string(), None),
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    resp.headers_mut()
                        .insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
                    if let Some(b) = banner {
                        resp.headers_mut()
                            .insert("x-powered-by", b.parse().unwrap());
                    }
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn a_leaking_response_is_refused_and_a_clean_one_passes_whole() {
    let (up, hits) = leaky_upstream().await;
    let waf = rampart_waf::Waf::from_str_named("response.conf", RULES).unwrap();
    let routes = "[[routes]]\nhost = \"api.test\"\npath_prefix = \"/watch\"\nservice = \"a\"\nwaf = \"detect\"\n\
                  [[routes]]\nhost = \"api.test\"\npath_prefix = \"/\"\nservice = \"a\"\n";
    let records = Arc::new(Records::default());
    let rec = records.clone();
    let edge = TestEdge::start(config(&[("a", vec![up])], routes), |ec| {
        ec.waf = Some(Arc::new(waf));
        ec.audit = rec;
    })
    .await;
    let last = || records.0.lock().unwrap().last().cloned().unwrap();
    let get = |path: &'static str| edge.https("GET", "api.test", path);

    // A database error in the body: the upstream answered, the client gets
    // the WAF's refusal, never the leak.
    let r = get("/leak").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!r.body.contains("SQL syntax"), "leaked: {}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"]["code"], "waf");
    assert_eq!(body["error"]["rule"], 951);
    let rec = last();
    assert_eq!(body["error"]["request_id"], rec.request_id.as_str());
    assert_eq!(rec.status, 403);
    let w = rec.waf.expect("no WAF findings recorded");
    assert_eq!(w.disrupted_by, Some(951));
    assert_eq!(w.messages, vec!["SQL error leaked".to_string()]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A banner in the headers (phase 3).
    let r = get("/banner").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("x-powered-by"), None);
    assert_eq!(last().waf.unwrap().disrupted_by, Some(950));

    // A clean page passes whole, with nothing recorded against it.
    let r = get("/page").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "<p>clean page</p>");
    assert_eq!(last().waf, None);

    // Media types the rules do not list are streamed unread.
    let r = get("/json-leak").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("SQL syntax"));

    // Past the body limit (ProcessPartial): the first KiB is inspected, the
    // rest streamed on, and the client gets every byte.
    let r = get("/big").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 2048 + LEAK.len());
    assert!(r.body.ends_with(LEAK));

    // The response rules see what the request phases set in TX.
    assert_eq!(get("/trace").await.status, StatusCode::OK);
    let r = get("/trace?debug=1").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(last().waf.unwrap().disrupted_by, Some(952));

    // Detect mode: the response goes out, the finding is recorded.
    let r = get("/watch/leak").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("SQL syntax"));
    let w = last().waf.expect("detect mode recorded nothing");
    assert_eq!(w.mode, rampart_config::WafMode::Detect);
    assert_eq!(w.disrupted_by, Some(951));

    // A request refused in its own phases never reaches the upstream.
    let before = hits.load(Ordering::SeqCst);
    assert_eq!(get("/leak?q=attack").await.status, StatusCode::FORBIDDEN);
    assert_eq!(last().waf.unwrap().disrupted_by, Some(10));
    assert_eq!(hits.load(Ordering::SeqCst), before);
}
