//! Property tests for the parsers of outside input: the route matcher,
//! host validation and X-Forwarded-For handling never panic and keep
//! their promises on arbitrary input.

use proptest::prelude::*;
use rampart_config::Route;
use rampart_edge::router::Router;
use rampart_edge::{client_addr, parse_host};

fn route(host: String, prefix: String) -> Route {
    Route::new(&host, &prefix, "s")
}

proptest! {
    #[test]
    fn parse_host_never_panics_and_returns_safe_hosts(raw in ".{0,80}") {
        if let Some(h) = parse_host(&raw) {
            prop_assert!(!h.is_empty());
            prop_assert!(h.starts_with('[') || h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
            prop_assert!(!h.contains('/') && !h.contains(' '));
        }
    }

    #[test]
    fn matched_route_is_a_real_match_and_the_longest(
        prefixes in prop::collection::vec("/[a-c]{0,3}(/[a-c]{1,2})?", 1..6),
        path in "/[a-c/]{0,8}",
    ) {
        let routes: Vec<Route> = prefixes.iter().map(|p| route("h.test".into(), p.clone())).collect();
        let r = Router::new(routes);
        if let Some(m) = r.find("h.test", &path) {
            prop_assert!(path.starts_with(&m.path_prefix));
            for p in &prefixes {
                let seg_ok = p == "/" || p.ends_with('/') || path.len() == p.len()
                    || path.as_bytes().get(p.len()) == Some(&b'/');
                if path.starts_with(p.as_str()) && seg_ok {
                    prop_assert!(p.len() <= m.path_prefix.len());
                }
            }
        }
        prop_assert!(r.find("other.test", &path).is_none());
    }

    #[test]
    fn router_never_panics(host in ".{0,40}", path in ".{0,40}", pat in ".{0,20}", prefix in ".{0,20}") {
        let r = Router::new(vec![route(pat, prefix)]);
        let _ = r.find(&host, &path);
    }

    #[test]
    fn untrusted_peers_cannot_spoof_forwarded_for(xff in ".{0,60}", a in any::<[u8; 4]>()) {
        let peer = std::net::IpAddr::from(a);
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let (client, sent) = client_addr(peer, &h, &trusted);
        if !trusted[0].contains(&peer) {
            prop_assert_eq!(client, peer);
            prop_assert_eq!(sent, peer.to_string());
        } else {
            prop_assert!(sent.ends_with(&peer.to_string()));
        }
    }
}
