//! Feeds arbitrary bytes to the route matcher, path normalisation, host
//! validation, X-Forwarded-For handling, prefix renaming and
//! Accept-Encoding parsing: none may panic, a normalised path normalises to
//! itself, and a renamed path keeps what followed the prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rampart_config::Route;
use rampart_edge::router::Router;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let (pat, prefix, host, rest) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("/"),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let router = Router::new(vec![Route::new(pat, prefix, "s")]);
    if let Some(h) = rampart_edge::parse_host(host) {
        let _ = router.find(&h, rest);
    }
    if let Ok(once) = rampart_edge::path::normalize(rest) {
        let twice = rampart_edge::path::normalize(&once);
        assert!(twice.is_ok_and(|t| t == once), "{rest:?}");
    }
    if prefix.starts_with('/') && rest.starts_with(prefix) {
        let renamed = rampart_edge::path::replace_prefix(rest, prefix, pat);
        let tail = rest[prefix.len()..].trim_start_matches('/');
        assert!(renamed.ends_with(tail), "{rest:?} {prefix:?} {pat:?}");
    }
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(rest.as_bytes()) {
        headers.insert("x-forwarded-for", v.clone());
        headers.insert("accept-encoding", v);
    }
    let _ = rampart_edge::compress::accepts_gzip(&headers);
    let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
    let _ = rampart_edge::client_addr([127, 0, 0, 1].into(), &headers, &trusted);
});
