//! Route matching: exact host beats `*.suffix` wildcard; within a host the
//! longest path prefix wins. Prefixes match on segment boundaries, so
//! `/api` matches `/api` and `/api/x` but not `/apix`.

use std::sync::Arc;

use rampart_config::Route;

/// The routes, ready for matching.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// Builds a router over `routes`.
    pub fn new(routes: Vec<Route>) -> Router {
        Router {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// Whether any route is for `host` (no port, any case).
    pub fn serves_host(&self, host: &str) -> bool {
        self.routes
            .iter()
            .any(|r| host_rank(&r.host, host).is_some())
    }

    /// The best route for `host` (no port, any case) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        let mut best: Option<(u8, usize, &Arc<Route>)> = None;
        for r in &self.routes {
            let Some(host_rank) = host_rank(&r.host, host) else {
                continue;
            };
            if !prefix_matches(&r.path_prefix, path) {
                continue;
            }
            let key = (host_rank, r.path_prefix.len());
            if best.is_none_or(|(h, l, _)| key > (h, l)) {
                best = Some((host_rank, r.path_prefix.len(), r));
            }
        }
        best.map(|(_, _, r)| r)
    }
}

/// 2 for an exact host, 1 for a wildcard match, `None` for no match. Both
/// compare without regard to ASCII case.
fn host_rank(pattern: &str, host: &str) -> Option<u8> {
    if pattern.eq_ignore_ascii_case(host) {
        return Some(2);
    }
    let suffix = pattern.strip_prefix("*.")?;
    // One or more labels, then a dot, then the suffix.
    let cut = host.len().checked_sub(suffix.len() + 1)?;
    let (head, tail) = (host.get(..cut)?, host.get(cut..)?);
    let matches = !head.is_empty()
        && tail.starts_with('.')
        && tail
            .get(1..)
            .is_some_and(|t| t.eq_ignore_ascii_case(suffix));
    matches.then_some(1)
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_config::RouteAuth;

    fn route(host: &str, prefix: &str, service: &str) -> Route {
        Route {
            host: host.into(),
            path_prefix: prefix.into(),
            service: service.into(),
            environment: String::new(),
            auth: RouteAuth::None,
            roles: vec![],
            allow_cidrs: vec![],
            deny_cidrs: vec![],
            rate_limit: None,
            max_body_bytes: None,
            json_schema: None,
            waf: Default::default(),
        }
    }

    #[test]
    fn exact_host_and_longest_prefix_win() {
        let r = Router::new(vec![
            route("*.example.com", "/", "wild"),
            route("api.example.com", "/", "root"),
            route("api.example.com", "/v1", "v1"),
            route("api.example.com", "/v1/admin", "admin"),
        ]);
        let svc = |h, p| r.find(h, p).map(|r| r.service.as_str());
        assert_eq!(svc("api.example.com", "/v1/admin/x"), Some("admin"));
        assert_eq!(svc("API.example.com", "/v1/x"), Some("v1"));
        assert_eq!(svc("api.example.com", "/v1x"), Some("root"));
        assert_eq!(svc("www.example.com", "/v1"), Some("wild"));
        assert_eq!(svc("example.com", "/"), None);
        assert_eq!(svc("other.org", "/"), None);
        assert!(r.serves_host("API.example.com") && r.serves_host("x.example.com"));
        assert!(!r.serves_host("example.com") && !r.serves_host("evil.test"));
    }
}
