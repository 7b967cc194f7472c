//! Cross-origin requests from browsers (CORS) on routes that set `cors`.
//!
//! A browser asks before a cross-origin call that is not "simple" with a
//! preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`,
//! and without the page's credentials. The edge answers it itself (204),
//! after the IP rules and rate limits and before the route's methods,
//! the firewall and authentication, which a preflight could not pass on an
//! authenticated route. The answer names the origin, methods and headers
//! only when the route allows all that was asked; otherwise it has none of
//! them and the browser does not make the call. Responses to an allowed
//! origin, the service's and the edge's own refusals on the route (a 401
//! the page must read to send its user to sign in), get
//! `Access-Control-Allow-Origin` (and the credentials and exposed headers
//! the route allows).

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method};
use rampart_config::RouteCors;

/// A route's CORS policy, made ready at load.
#[derive(Debug)]
pub struct Cors {
    origins: Vec<String>,
    any_origin: bool,
    methods: Vec<Method>,
    allow_methods: Option<HeaderValue>,
    headers: Vec<String>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

fn joined(items: &[String]) -> Option<HeaderValue> {
    crate::router::comma_list(items.iter().map(String::as_str))
}

impl Cors {
    /// The policy of `c` (checked at load).
    pub fn new(c: &RouteCors) -> Cors {
        Cors {
            origins: c.origins.clone(),
            any_origin: c.any_origin,
            methods: crate::router::parse_methods(&c.methods),
            allow_methods: joined(&c.methods),
            headers: c.headers.clone(),
            expose: joined(&c.expose_headers),
            credentials: c.credentials,
            max_age: HeaderValue::from(c.max_age_seconds),
        }
    }

    /// What `Access-Control-Allow-Origin` says to a request from
    /// `origin`, if the route allows it.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(text))
            .then(|| origin.clone())
    }

    /// When `method` and `headers` are a preflight request, the headers
    /// of the edge's answer to it; `None` for any other request.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<HeaderMap> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(ORIGIN)?;
        let asked = headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
        let mut out = HeaderMap::new();
        out.insert(
            VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        let Some(allow_origin) = self.allow_origin(origin) else {
            return Some(out);
        };
        let method_ok =
            Method::from_bytes(asked.as_bytes()).is_ok_and(|m| self.methods.contains(&m));
        let asked_headers: Vec<String> = headers
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let headers_ok = asked_headers.iter().all(|h| self.headers.contains(h));
        if !(method_ok && headers_ok) {
            return Some(out);
        }
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if let Some(m) = &self.allow_methods {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        if let Some(h) = joined(&asked_headers) {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, h);
        }
        if self.credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        out.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(out)
    }

    /// Marks a response to a request from `origin` (its `Origin`
    /// header): an allowed origin may read it. The service's own CORS
    /// headers give way to the route's.
    pub fn apply(&self, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            ACCESS_CONTROL_EXPOSE_HEADERS,
        ] {
            response.remove(name);
        }
        if !self.any_origin {
            response.append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(allow) = origin.and_then(|o| self.allow_origin(o)) else {
            return;
        };
        response.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.credentials {
            response.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.expose {
            response.insert(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(credentials: bool) -> Cors {
        Cors::new(&RouteCors {
            origins: vec!["https://app.example.com".into()],
            any_origin: false,
            methods: vec!["GET".into(), "POST".into(), "DELETE".into()],
            headers: vec!["content-type".into(), "authorization".into()],
            expose_headers: vec!["x-request-id".into()],
            credentials,
            max_age_seconds: 600,
        })
    }

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered_in_full() {
        let h = policy(true)
            .preflight(
                &Method::OPTIONS,
                &req(&[
                    ("origin", "https://APP.example.com"),
                    ("access-control-request-method", "DELETE"),
                    (
                        "access-control-request-headers",
                        "Content-Type, authorization",
                    ),
                ]),
            )
            .unwrap();
        assert_eq!(h["access-control-allow-origin"], "https://APP.example.com");
        assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE");
        assert_eq!(
            h["access-control-allow-headers"],
            "content-type, authorization"
        );
        assert_eq!(h["access-control-allow-credentials"], "true");
        assert_eq!(h["access-control-max-age"], "600");
    }

    #[test]
    fn a_preflight_asking_too_much_gets_no_allowance() {
        let p = policy(false);
        for asked in [
            req(&[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "GET"),
            ]),
            req(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
            ]),
            req(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-admin"),
            ]),
            req(&[
                ("origin", "https://app.example.com.evil.example"),
                ("access-control-request-method", "GET"),
            ]),
        ] {
            let h = p.preflight(&Method::OPTIONS, &asked).unwrap();
            assert!(h.get("access-control-allow-origin").is_none(), "{asked:?}");
            assert!(h.get("vary").is_some());
        }
        // Not preflights: passed on.
        let plain = req(&[("origin", "https://app.example.com")]);
        assert!(p.preflight(&Method::OPTIONS, &plain).is_none());
        let get = req(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "GET"),
        ]);
        assert!(p.preflight(&Method::GET, &get).is_none());
    }

    #[test]
    fn responses_name_only_an_allowed_origin_and_replace_the_services() {
        let p = policy(false);
        let mut resp = req(&[("access-control-allow-origin", "*")]);
        p.apply(
            req(&[("origin", "https://evil.example")]).get(ORIGIN),
            &mut resp,
        );
        assert!(resp.get("access-control-allow-origin").is_none());
        assert_eq!(resp["vary"], "Origin");
        let mut resp = HeaderMap::new();
        p.apply(
            req(&[("origin", "https://app.example.com")]).get(ORIGIN),
            &mut resp,
        );
        assert_eq!(
            resp["access-control-allow-origin"],
            "https://app.example.com"
        );
        assert_eq!(resp["access-control-expose-headers"], "x-request-id");
        assert!(resp.get("access-control-allow-credentials").is_none());
        let any = Cors::new(&RouteCors {
            origins: vec![],
            any_origin: true,
            methods: vec!["GET".into()],
            headers: vec![],
            expose_headers: vec![],
            credentials: false,
            max_age_seconds: 0,
        });
        let mut resp = HeaderMap::new();
        any.apply(
            req(&[("origin", "https://x.example")]).get(ORIGIN),
            &mut resp,
        );
        assert_eq!(resp["access-control-allow-origin"], "*");
        assert!(resp.get("vary").is_none());
    }
}
