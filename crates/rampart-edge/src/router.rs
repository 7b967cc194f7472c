//! Route matching: exact host beats `*.suffix` wildcard; within a host the
//! longest path prefix wins. Prefixes match on segment boundaries, so
//! `/api` matches `/api` and `/api/x` but not `/apix`.
//!
//! [`Router::find_unambiguous`] also refuses a path that other servers
//! read as one under a different route (see [`crate::path`]): without its
//! segment parameters (`/admin;x/users`) or in another case
//! (`/ADMIN/users`), either of which would otherwise take a service's
//! `/admin` past the `/admin` route's authentication.

use std::ops::Deref;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use rampart_config::Route;

/// A route, with what the edge works out from it once, when the routes
/// are loaded, rather than on each of its requests: its header rules as
/// header names and values, and its label. Reads as the [`Route`] it was
/// made from.
#[derive(Debug)]
pub struct RouteEntry {
    route: Route,
    /// Host and path prefix, as records, rate-limit keys and assertions
    /// name the route.
    label: String,
    /// `request_headers`, set over the client's before the service.
    pub(crate) set_request: Vec<(HeaderName, HeaderValue)>,
    /// `remove_request_headers`.
    pub(crate) remove_request: Vec<HeaderName>,
    /// `response_headers`, set over the service's.
    pub(crate) set_response: Vec<(HeaderName, HeaderValue)>,
    /// `remove_response_headers`.
    pub(crate) remove_response: Vec<HeaderName>,
    /// `methods` (with `HEAD` when `GET` is there); empty: any.
    methods: Vec<http::Method>,
    /// The `Allow` header of a 405 on this route.
    allow: Option<HeaderValue>,
    /// `cors`.
    pub(crate) cors: Option<crate::cors::Cors>,
}

impl RouteEntry {
    /// Works `route` out. A header name or value that is not valid
    /// (the config refuses them at load) is left out with a warning.
    pub fn new(route: Route) -> RouteEntry {
        let mut label = String::with_capacity(route.host.len() + route.path_prefix.len());
        label.push_str(&route.host);
        label.push_str(&route.path_prefix);
        let mut methods = parse_methods(&route.methods);
        if methods.contains(&http::Method::GET) && !methods.contains(&http::Method::HEAD) {
            methods.push(http::Method::HEAD);
        }
        let allow = comma_list(methods.iter().map(http::Method::as_str));
        RouteEntry {
            cors: route.cors.as_ref().map(crate::cors::Cors::new),
            methods,
            allow,
            label,
            set_request: header_pairs(&route.request_headers),
            remove_request: header_names(&route.remove_request_headers),
            set_response: header_pairs(&route.response_headers),
            remove_response: header_names(&route.remove_response_headers),
            route,
        }
    }

    /// Host and path prefix, as records, rate-limit keys and assertions
    /// name the route.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether the route takes `method`; when not, the `Allow` header
    /// that says which it does.
    pub fn allows(&self, method: &http::Method) -> Result<(), HeaderValue> {
        match &self.allow {
            Some(allow) if !self.methods.contains(method) => Err(allow.clone()),
            _ => Ok(()),
        }
    }
}

impl Deref for RouteEntry {
    type Target = Route;

    fn deref(&self) -> &Route {
        &self.route
    }
}

/// Methods from their names (checked at load).
pub(crate) fn parse_methods(names: &[String]) -> Vec<http::Method> {
    names
        .iter()
        .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .collect()
}

/// `a, b, c` as a header value (`Allow`, CORS lists); `None` for none.
pub(crate) fn comma_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<HeaderValue> {
    let items: Vec<&str> = items.into_iter().collect();
    (!items.is_empty())
        .then(|| HeaderValue::from_str(&items.join(", ")).ok())
        .flatten()
}

/// Header names and values from text, leaving out (with a warning) those
/// that are not valid.
pub(crate) fn header_pairs(pairs: &[(String, String)]) -> Vec<(HeaderName, HeaderValue)> {
    pairs
        .iter()
        .filter_map(|(n, v)| {
            let pair = HeaderName::from_bytes(n.as_bytes())
                .ok()
                .zip(HeaderValue::from_str(v).ok());
            if pair.is_none() {
                tracing::warn!(header = %n, "not a valid header: left out");
            }
            pair
        })
        .collect()
}

fn header_names(names: &[String]) -> Vec<HeaderName> {
    names
        .iter()
        .filter_map(|n| {
            let name = HeaderName::from_bytes(n.as_bytes()).ok();
            if name.is_none() {
                tracing::warn!(header = %n, "not a valid header name: left out");
            }
            name
        })
        .collect()
}

/// The routes, ready for matching.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Arc<RouteEntry>>,
    /// Each route's prefix as servers that drop segment parameters read it
    /// (the prefix itself when it has no `;`), in `routes` order.
    bare_prefixes: Vec<String>,
    /// Whether a path prefix has capitals (then even a lower-case path may
    /// match another route in another case).
    capitals: bool,
}

impl Router {
    /// Builds a router over `routes`.
    pub fn new(routes: Vec<Route>) -> Router {
        let capitals = routes
            .iter()
            .any(|r| r.path_prefix.bytes().any(|b| b.is_ascii_uppercase()));
        let bare_prefixes = routes
            .iter()
            .map(|r| {
                crate::path::without_parameters(&r.path_prefix)
                    .unwrap_or_else(|| r.path_prefix.clone())
            })
            .collect();
        Router {
            routes: routes
                .into_iter()
                .map(|r| Arc::new(RouteEntry::new(r)))
                .collect(),
            bare_prefixes,
            capitals,
        }
    }

    /// Whether any route is for `host` (no port, any case).
    pub fn serves_host(&self, host: &str) -> bool {
        self.routes
            .iter()
            .any(|r| host_rank(&r.host, host).is_some())
    }

    /// The best route for `host` (no port, any case) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<RouteEntry>> {
        self.find_by(host, path, false, false)
    }

    /// Like [`Router::find`] for a normal path (see [`crate::path`]), but
    /// refuses it when the path read without its segment parameters,
    /// without regard to case, or without trailing dots and spaces in its
    /// segments (and so in any combination), falls under another route.
    pub fn find_unambiguous(
        &self,
        host: &str,
        path: &str,
    ) -> Result<Option<&Arc<RouteEntry>>, crate::path::PathError> {
        let Some(route) = self.find(host, path) else {
            return Ok(None);
        };
        let bare = crate::path::without_parameters(path);
        let dotted = crate::path::without_trailing_dots(path);
        if bare.is_none()
            && dotted.is_none()
            && !self.capitals
            && !path.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Ok(Some(route));
        }
        let bare = bare.as_deref().unwrap_or(path);
        let same = |other: Option<&Arc<RouteEntry>>| other.is_some_and(|o| Arc::ptr_eq(o, route));
        // Windows servers are case-insensitive too; their reading of the
        // bare path covers the path with its parameters as well.
        let windows = || {
            crate::path::without_trailing_dots(bare).is_none_or(|w| {
                same(self.find_by(host, &w, true, false))
                    && same(self.find_by(host, &w, true, true))
            })
        };
        if same(self.find_by(host, path, true, false))
            && same(self.find_by(host, bare, false, true))
            && same(self.find_by(host, bare, true, true))
            && (dotted.is_none() || windows())
        {
            Ok(Some(route))
        } else {
            Err(crate::path::PathError::Ambiguous)
        }
    }

    /// The best route, prefixes compared without regard to ASCII case when
    /// `any_case` (then, of equally long prefixes, one in the path's own
    /// case wins), and read without their segment parameters when `bare`
    /// (then, of equally long ones, one that had none wins).
    fn find_by(
        &self,
        host: &str,
        path: &str,
        any_case: bool,
        bare: bool,
    ) -> Option<&Arc<RouteEntry>> {
        // Host rank, prefix length, prefix in the path's own case, prefix
        // as written.
        type Rank = (u8, usize, bool, bool);
        let mut best: Option<(Rank, &Arc<RouteEntry>)> = None;
        for (r, bare_prefix) in self.routes.iter().zip(&self.bare_prefixes) {
            let Some(host_rank) = host_rank(&r.host, host) else {
                continue;
            };
            let prefix = if bare { bare_prefix } else { &r.path_prefix };
            let exact = prefix_matches(prefix, path);
            if !(exact || (any_case && prefix_matches_any_case(prefix, path))) {
                continue;
            }
            let key = (host_rank, prefix.len(), exact, *prefix == r.path_prefix);
            if best.is_none_or(|(k, _)| key > k) {
                best = Some((key, r));
            }
        }
        best.map(|(_, r)| r)
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
        Some(rest) => on_boundary(prefix, rest),
        None => false,
    }
}

fn prefix_matches_any_case(prefix: &str, path: &str) -> bool {
    match (path.get(..prefix.len()), path.get(prefix.len()..)) {
        (Some(head), Some(rest)) => head.eq_ignore_ascii_case(prefix) && on_boundary(prefix, rest),
        _ => false,
    }
}

/// Whether `rest`, what follows a matching prefix, starts a new segment.
fn on_boundary(prefix: &str, rest: &str) -> bool {
    prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, prefix: &str, service: &str) -> Route {
        Route::new(host, prefix, service)
    }

    #[test]
    fn a_route_entry_holds_its_header_rules_ready_and_reads_as_its_route() {
        let mut r = route("api.test", "/v1", "svc");
        r.request_headers = vec![
            ("X-Env".into(), "prod".into()),
            ("bad name".into(), "x".into()),
        ];
        r.remove_request_headers = vec!["Authorization".into()];
        r.response_headers = vec![("Cache-Control".into(), "no-store".into())];
        r.remove_response_headers = vec!["Server".into(), "X-Powered-By".into()];
        let e = RouteEntry::new(r);
        assert_eq!(e.label(), "api.test/v1");
        assert_eq!(e.service, "svc");
        // The invalid pair is left out (the config refuses it at load).
        assert_eq!(
            e.set_request,
            vec![(
                HeaderName::from_static("x-env"),
                HeaderValue::from_static("prod")
            )]
        );
        assert_eq!(e.remove_request, vec![http::header::AUTHORIZATION]);
        assert_eq!(
            e.set_response,
            vec![(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store")
            )]
        );
        assert_eq!(
            e.remove_response,
            vec![
                http::header::SERVER,
                HeaderName::from_static("x-powered-by")
            ]
        );
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

    #[test]
    fn paths_read_as_another_route_by_other_servers_are_refused() {
        let r = Router::new(vec![
            route("api.test", "/", "public"),
            route("api.test", "/admin", "admin"),
            route("api.test", "/Docs", "docs"),
        ]);
        let svc = |p| {
            r.find_unambiguous("api.test", p)
                .map(|r| r.map(|r| r.service.as_str()))
        };
        let ambiguous = Err(crate::path::PathError::Ambiguous);
        // Tomcat, Jetty and Spring drop parameters: /admin/users.
        assert_eq!(svc("/admin;x/users"), ambiguous);
        assert_eq!(svc("/admin;"), ambiguous);
        assert_eq!(svc("/;x/admin"), ambiguous);
        // Case-insensitive services read /admin/users.
        assert_eq!(svc("/ADMIN/users"), ambiguous);
        assert_eq!(svc("/Admin"), ambiguous);
        assert_eq!(svc("/docs/x"), ambiguous);
        // Windows servers cut trailing dots and spaces: /admin/users.
        assert_eq!(svc("/admin./users"), ambiguous);
        assert_eq!(svc("/admin%20/users"), ambiguous);
        assert_eq!(svc("/ADMIN../users"), ambiguous);
        assert_eq!(svc("/admin.;x/users"), ambiguous);
        assert_eq!(svc("/admin."), ambiguous);
        // Every reading on the same route: fine.
        assert_eq!(svc("/admin/users;jsessionid=1"), Ok(Some("admin")));
        assert_eq!(svc("/admin/Users/ABC"), Ok(Some("admin")));
        assert_eq!(svc("/Docs/Intro"), Ok(Some("docs")));
        assert_eq!(svc("/public;v=1/Files"), Ok(Some("public")));
        assert_eq!(svc("/administrator"), Ok(Some("public")));
        assert_eq!(svc("/admin/users./x."), Ok(Some("admin")));
        assert_eq!(svc("/files/report.v1./"), Ok(Some("public")));
        assert!(matches!(
            r.find_unambiguous("nothing.test", "/ADMIN"),
            Ok(None)
        ));
    }

    #[test]
    fn a_prefix_with_parameters_is_read_as_java_servers_read_it() {
        let alone = Router::new(vec![
            route("api.test", "/", "public"),
            route("api.test", "/a;v=1", "v1"),
        ]);
        assert_eq!(
            alone
                .find_unambiguous("api.test", "/a;v=1/x")
                .map(|r| r.map(|r| r.service.as_str())),
            Ok(Some("v1"))
        );
        // Beside a route for /a, Java servers would serve it as /a/x.
        let beside = Router::new(vec![
            route("api.test", "/a;v=1", "v1"),
            route("api.test", "/a", "a"),
        ]);
        assert!(matches!(
            beside.find_unambiguous("api.test", "/a;v=1/x"),
            Err(crate::path::PathError::Ambiguous)
        ));
    }

    #[test]
    fn routes_differing_only_in_case_each_keep_their_own_paths() {
        let r = Router::new(vec![
            route("api.test", "/API", "upper"),
            route("api.test", "/api", "lower"),
        ]);
        let svc = |p| {
            r.find_unambiguous("api.test", p)
                .map(|r| r.map(|r| r.service.as_str()))
        };
        assert_eq!(svc("/api/x"), Ok(Some("lower")));
        assert_eq!(svc("/API/x"), Ok(Some("upper")));
    }
}
