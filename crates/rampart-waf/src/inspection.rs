//! A transaction kept open from the request to the response.
//!
//! [`Waf::evaluate`] runs the request phases and forgets the transaction.
//! A proxy that also wants the response phases (CRS's 95x data-leakage
//! rules read the status, headers and body the upstream answered, and the
//! anomaly scores and paranoia level the request phases left in TX) starts
//! an [`Inspection`] instead: it runs phases 1 and 2 at once, gives their
//! verdict, and is then held, across the upstream call, until
//! [`Inspection::finish`] runs phases 3, 4 and 5 on the response. Nothing is
//! evaluated twice.

use std::borrow::Cow;

use crate::actions::EngineMode;
use crate::engine::Waf;
use crate::exclusions::Exclusions;
use crate::request::{Field, Request, Response, Verdict};
use crate::transaction::Transaction;

/// A WAF transaction between the request phases and the response phases.
/// `Send`, so an async proxy can hold it across the upstream call; it
/// borrows the engine, which must outlive it.
pub struct Inspection<'w> {
    t: Transaction<'w>,
    /// Whether the response phases run: the request was neither disrupted
    /// nor allowed outright, and the engine is not off.
    respond: bool,
    request: Verdict,
}

impl std::fmt::Debug for Inspection<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspection")
            .field("respond", &self.respond)
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Waf {
    /// Runs the request phases (1 and 2) of `req`, with `exclusions`
    /// applied first if given, and keeps the transaction open for the
    /// response. [`Inspection::request_verdict`] is what
    /// [`Waf::evaluate_with`] would have returned.
    pub fn inspect(&self, req: &Request, exclusions: Option<&Exclusions>) -> Inspection<'_> {
        let mut t = Transaction::new(self, req);
        if let Some(ex) = exclusions {
            t.exclude(ex);
        }
        let respond = t.run_request(req) && self.has_response_rules();
        let request = t.verdict_now();
        t.release_caches();
        Inspection {
            t,
            respond,
            request,
        }
    }

    /// Whether any rule runs in phases 3 to 5; without one, inspecting the
    /// response cannot change anything.
    pub fn has_response_rules(&self) -> bool {
        self.by_phase
            .get(3..)
            .is_some_and(|phases| phases.iter().any(|p| !p.is_empty()))
    }
}

impl Inspection<'_> {
    /// The verdict of the request phases.
    pub fn request_verdict(&self) -> &Verdict {
        &self.request
    }

    /// Whether the response phases will run (when the request was not
    /// disrupted, not allowed outright, and the engine has response rules).
    pub fn wants_response(&self) -> bool {
        self.respond
    }

    /// How many bytes of a response with these headers the engine inspects:
    /// `Some(limit)` when `SecResponseBodyAccess` is on (possibly switched by
    /// a `ctl` during the request) and the media type is listed in
    /// `SecResponseBodyMimeType`. A caller should buffer up to `limit + 1`
    /// bytes, so that the engine sees when the body is over the limit and
    /// applies `SecResponseBodyLimitAction`.
    pub fn response_body_limit(&self, headers: &[Field<'_>]) -> Option<usize> {
        if !self.respond || !self.t.response_body_access() {
            return None;
        }
        let probe = Response {
            status: 200,
            protocol: Cow::Borrowed(""),
            headers: headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(k, v)| (Cow::Borrowed(&**k), Cow::Borrowed(&**v)))
                .collect(),
            body: Cow::Borrowed(&[]),
        };
        self.t
            .response_body_inspected(&probe)
            .then(|| self.t.config().response_body_limit)
    }

    /// Runs the response phases (3 and 4) on `resp` when they apply, then
    /// logging (5), and returns the verdict of the whole transaction: the
    /// request's matches and the response's, and the outbound anomaly
    /// score. A disruption first decided in phase 3 or 4 means the response
    /// must not be sent.
    pub fn finish(mut self, resp: &Response) -> Verdict {
        if self.respond {
            self.t.run_response(resp);
        }
        if self.t.engine_mode() != EngineMode::Off {
            self.t.run_phase(5);
        }
        self.t.into_verdict()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Action;

    const RULES: &str = r#"
SecRuleEngine On
SecRequestBodyAccess On
SecResponseBodyAccess On
SecResponseBodyMimeType text/html text/plain
SecResponseBodyLimit 64
SecResponseBodyLimitAction ProcessPartial
SecAction "id:1,phase:1,pass,nolog,setvar:tx.level=2"
SecRule ARGS "@contains attack" "id:10,phase:2,deny,status:403,msg:'attack'"
SecRule ARGS:watch "@streq 1" "id:11,phase:2,pass,msg:'watched',setvar:tx.watched=1"
SecRule RESPONSE_HEADERS:X-Powered-By "@rx ^PHP" "id:20,phase:3,deny,status:403,msg:'banner'"
SecRule TX:LEVEL "@ge 2" "id:30,phase:4,chain,deny,status:403,msg:'SQL error leaked'"
  SecRule RESPONSE_BODY "@contains SQL syntax" "t:none"
SecRule TX:WATCHED "@eq 1" "id:40,phase:5,pass,log,msg:'watched request finished'"
"#;

    fn waf() -> Waf {
        Waf::from_str_named("inspect.conf", RULES).unwrap()
    }

    fn html(body: &str) -> Response<'static> {
        Response::new(200)
            .header("Content-Type", "text/html; charset=utf-8")
            .body(body)
    }

    #[test]
    fn request_verdict_matches_evaluate_and_a_blocked_request_skips_the_response() {
        let waf = waf();
        let req = Request::new("GET", "/?q=attack");
        let i = waf.inspect(&req, None);
        assert_eq!(i.request_verdict().action, Action::Deny { status: 403 });
        assert_eq!(
            i.request_verdict().matched_ids,
            waf.evaluate(&req).matched_ids
        );
        assert!(!i.wants_response());
        let v = i.finish(&html("You have an error in your SQL syntax"));
        assert_eq!(v.disrupted_by, Some(10));
    }

    #[test]
    fn response_rules_see_the_request_state_and_the_response() {
        let waf = waf();
        let req = Request::new("GET", "/?q=fine");
        let i = waf.inspect(&req, None);
        assert!(i.request_verdict().is_pass());
        assert!(i.wants_response());
        let headers = vec![("Content-Type".into(), b"text/html"[..].into())];
        assert_eq!(i.response_body_limit(&headers), Some(64));
        let v = i.finish(&html("<p>You have an error in your SQL syntax</p>"));
        assert_eq!(v.action, Action::Deny { status: 403 });
        assert_eq!(v.disrupted_by, Some(30));

        let i = waf.inspect(&req, None);
        let v = i.finish(&Response::new(200).header("X-Powered-By", "PHP/8.2"));
        assert_eq!(v.disrupted_by, Some(20));

        let i = waf.inspect(&req, None);
        assert!(i.finish(&html("<p>all good</p>")).is_pass());
    }

    #[test]
    fn unlisted_media_types_are_not_buffered_and_logging_runs_last() {
        let waf = waf();
        let i = waf.inspect(&Request::new("GET", "/?watch=1"), None);
        let json = vec![("content-type".into(), b"application/json"[..].into())];
        assert_eq!(i.response_body_limit(&json), None);
        assert_eq!(i.response_body_limit(&[]), None);
        let v = i.finish(&Response::new(200));
        assert!(v.is_pass());
        assert_eq!(v.matched_ids, vec![1, 11, 40]);
    }

    #[test]
    fn an_engine_without_response_rules_never_asks_for_the_response() {
        let waf = Waf::from_str_named(
            "req.conf",
            "SecRuleEngine On\nSecResponseBodyAccess On\nSecRule ARGS \"@contains x\" \"id:1,phase:2,pass,msg:'x'\"\n",
        )
        .unwrap();
        let i = waf.inspect(&Request::new("GET", "/?a=x"), None);
        assert!(!i.wants_response());
        assert_eq!(i.response_body_limit(&[]), None);
        assert_eq!(i.finish(&Response::new(200)).matched_ids, vec![1]);
    }

    #[test]
    fn an_inspection_can_cross_threads() {
        fn send<T: Send>(_: &T) {}
        let waf = waf();
        let i = waf.inspect(&Request::new("GET", "/"), None);
        send(&i);
    }
}
