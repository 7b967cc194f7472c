//! Feeds arbitrary request heads to the edge's header handling: the host a
//! request names, hop-by-hop stripping before proxying, and the declared
//! body size. None may panic; an accepted host must be the input's host
//! part, and no hop-by-hop header may survive stripping.
#![no_main]

use http::header::{HeaderName, HeaderValue, CONNECTION};
use libfuzzer_sys::fuzz_target;
use rampart_edge::phases::declared_too_large;
use rampart_edge::proxy::strip_hop_by_hop;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("");

    // Host: what is accepted is the input's host, lowercased, with at most
    // a numeric port after it.
    if let Some(host) = rampart_edge::parse_host(target) {
        let lower = target.to_ascii_lowercase();
        let rest = lower.strip_prefix(host.as_str());
        assert!(
            rest.is_some_and(|r| r.is_empty()
                || r.strip_prefix(':')
                    .is_some_and(|p| p.parse::<u16>().is_ok())),
            "{target:?} -> {host:?}"
        );
    }

    let mut req = http::Request::builder().method("POST");
    if let Ok(uri) = target.parse::<http::Uri>() {
        req = req.uri(uri);
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_bytes(value.trim().as_bytes()),
        ) else {
            continue;
        };
        req = req.header(n, v);
    }
    let Ok(req) = req.body(()) else {
        return;
    };
    let (mut head, ()) = req.into_parts();
    let _ = rampart_edge::request_host(&head.uri, &head.headers);
    let _ = declared_too_large(&head, 1 << 20);

    let named: Vec<HeaderName> = head
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    strip_hop_by_hop(&mut head.headers);
    for n in named.iter().chain(&[
        CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::TE,
    ]) {
        assert!(!head.headers.contains_key(n), "{n} survived");
    }
});
