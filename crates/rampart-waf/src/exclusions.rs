//! Per-request exclusions: what CRS exclusion rules do with
//! `ctl:ruleRemoveById`, `ctl:ruleRemoveByTag`, `ctl:ruleRemoveTargetById`
//! and `ctl:ruleRemoveTargetByTag`, given by the caller instead of written in
//! SecLang. The edge builds one set per route and passes it to
//! [`Waf::evaluate_with`]; the transaction applies the same `ctl` actions a
//! rule would, before phase 1, so the semantics are the engine's own.
//!
//! Building a set parses targets and compiles tag regexes; do it once (per
//! route, per configuration), not per request. [`Exclusions::resolve`]
//! also works out once which rules each tag selects, so that evaluation
//! looks tags up in a table instead of matching regexes rule by rule.

use std::sync::Arc;

use crate::actions::{parse_id_ranges, tag_regex, target_exclusion, Ctl, IdRange};
use crate::engine::Waf;
use crate::error::{Error, Location};
use crate::request::{Request, Verdict};
use crate::transaction::Transaction;

/// Per rule, whether a tag selects it; `None` for entries naming no tag.
pub(crate) type TagTable = Option<Arc<[bool]>>;

/// Rules and targets removed for one request (see the module docs).
///
/// ```
/// use rampart_waf::{Action, Exclusions, Request, Waf};
/// let waf = Waf::from_str_named("inline.conf", r#"
/// SecRuleEngine On
/// SecRule ARGS "@contains attack" "id:10,phase:2,deny,status:403"
/// "#).unwrap();
/// let mut ex = Exclusions::new();
/// ex.remove_target_by_id(10, "ARGS:note").unwrap();
/// ex.resolve(&waf);
/// let v = waf.evaluate_with(&Request::new("GET", "/?note=attack"), &ex);
/// assert_eq!(v.action, Action::Pass);
/// let v = waf.evaluate_with(&Request::new("GET", "/?q=attack"), &ex);
/// assert_eq!(v.action, Action::Deny { status: 403 });
/// ```
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    pub(crate) ctls: Vec<Ctl>,
    /// Per entry of `ctls`, for those naming a tag: the rules it selects,
    /// by index in the engine's rules, worked out for the engine with this
    /// id ([`Exclusions::resolve`]).
    tables: Option<(u64, Vec<TagTable>)>,
}

/// Errors from the parsers point at a `Location`; an exclusion has none.
fn detail(e: Error) -> String {
    match e {
        Error::Syntax { message, .. } | Error::Regex { message, .. } => message,
        Error::Unsupported { kind, name, .. } => format!("unsupported {kind} `{name}`"),
        other => other.to_string(),
    }
}

impl Exclusions {
    /// No exclusions.
    pub fn new() -> Exclusions {
        Exclusions::default()
    }

    /// True when nothing is excluded.
    pub fn is_empty(&self) -> bool {
        self.ctls.is_empty()
    }

    fn push(&mut self, ctl: Ctl) -> &mut Self {
        self.ctls.push(ctl);
        self.tables = None;
        self
    }

    fn parse<T>(
        what: impl FnOnce() -> String,
        f: impl FnOnce(&Location) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let at = Location {
            file: "<exclusion>".into(),
            line: 0,
        };
        f(&at).map_err(|e| Error::Exclusion {
            exclusion: what(),
            message: detail(e),
        })
    }

    /// The rule does not run (`ctl:ruleRemoveById=ID`).
    pub fn remove_rule(&mut self, id: u64) -> &mut Self {
        self.push(Ctl::RuleRemoveById(vec![IdRange(id, id)]))
    }

    /// Rules with a tag matching `tag` (a regex, as in SecLang) do not run
    /// (`ctl:ruleRemoveByTag=TAG`).
    pub fn remove_tag(&mut self, tag: &str) -> Result<&mut Self, Error> {
        let re = Self::parse(|| tag.to_string(), |at| tag_regex(tag, at))?;
        Ok(self.push(Ctl::RuleRemoveByTag(re)))
    }

    /// The rule does not look at `target` (`ARGS:name`, `ARGS:/regex/`,
    /// `REQUEST_HEADERS`…): `ctl:ruleRemoveTargetById=ID;TARGET`. `ids` may
    /// be a range list as in SecLang (`942100`, `942100-942199`).
    pub fn remove_target_by_id(
        &mut self,
        ids: impl std::fmt::Display,
        target: &str,
    ) -> Result<&mut Self, Error> {
        let ids = ids.to_string();
        let what = || format!("{ids};{target}");
        let ranges = Self::parse(what, |at| parse_id_ranges(&ids, at))?;
        let ex = Self::parse(what, |at| target_exclusion(target, at))?;
        Ok(self.push(Ctl::RuleRemoveTargetById(ranges, ex)))
    }

    /// Rules with a tag matching `tag` do not look at `target`
    /// (`ctl:ruleRemoveTargetByTag=TAG;TARGET`).
    pub fn remove_target_by_tag(&mut self, tag: &str, target: &str) -> Result<&mut Self, Error> {
        let what = || format!("{tag};{target}");
        let re = Self::parse(what, |at| tag_regex(tag, at))?;
        let ex = Self::parse(what, |at| target_exclusion(target, at))?;
        Ok(self.push(Ctl::RuleRemoveTargetByTag(re, ex)))
    }

    /// Every single rule id named (ranges are left out), for checking
    /// against [`Waf::has_rule`].
    pub fn rule_ids(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for c in &self.ctls {
            if let Ctl::RuleRemoveById(r) | Ctl::RuleRemoveTargetById(r, _) = c {
                out.extend(r.iter().filter(|r| r.0 == r.1).map(|r| r.0));
            }
        }
        out
    }

    /// Works out which of `waf`'s rules each tag selects, once. Optional:
    /// without it (or when evaluated by another engine) tags are matched
    /// rule by rule, with the same result.
    pub fn resolve(&mut self, waf: &Waf) {
        let tables = self
            .ctls
            .iter()
            .map(|c| match c {
                Ctl::RuleRemoveByTag(re) | Ctl::RuleRemoveTargetByTag(re, _) => Some(
                    waf.rules
                        .iter()
                        .map(|r| r.has_tag(re))
                        .collect::<Arc<[bool]>>(),
                ),
                _ => None,
            })
            .collect();
        self.tables = Some((waf.id, tables));
    }

    /// The tag tables, if resolved against `waf`.
    pub(crate) fn tables_for(&self, waf: &Waf) -> Option<&[TagTable]> {
        match &self.tables {
            Some((id, t)) if *id == waf.id => Some(t),
            _ => None,
        }
    }
}

impl Waf {
    /// Like [`Waf::evaluate`], with `exclusions` applied at the start of the
    /// transaction, as CRS exclusion rules (`ctl:ruleRemove…`) in a phase 1
    /// rule before all others would apply them.
    pub fn evaluate_with(&self, req: &Request, exclusions: &Exclusions) -> Verdict {
        let mut t = Transaction::new(self, req);
        t.exclude(exclusions);
        t.run_request(req);
        t.into_verdict()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Action;

    /// CRS in miniature: two detection rules add to the anomaly score, a
    /// blocking rule refuses at 5. 100 reads every argument, 200 only
    /// cookies; both carry tags.
    const RULES: &str = r#"
SecRuleEngine On
SecRequestBodyAccess On
SecAction "id:1,phase:1,pass,nolog,setvar:tx.anomaly_score=0"
SecRule ARGS "@rx (?i)union\s+select" "id:100,phase:2,pass,t:urlDecodeUni,msg:'SQLi',tag:'attack-sqli',tag:'paranoia-level/1',setvar:'tx.anomaly_score=+5'"
SecRule REQUEST_COOKIES|ARGS_GET "@contains <script" "id:200,phase:2,pass,t:lowercase,msg:'XSS',tag:'attack-xss',setvar:'tx.anomaly_score=+5'"
SecRule TX:ANOMALY_SCORE "@ge 5" "id:949,phase:2,deny,status:403,msg:'Anomaly score exceeded'"
"#;

    fn waf() -> Waf {
        Waf::from_str_named("mini.conf", RULES).unwrap()
    }

    fn sqli(arg: &str) -> Request<'static> {
        Request::new("GET", &format!("/?{arg}=1%20UNION%20SELECT%20pw"))
    }

    fn blocked(v: &Verdict) -> bool {
        v.action == Action::Deny { status: 403 }
    }

    #[test]
    fn a_removed_rule_lets_its_attack_through_only_where_excluded() {
        let waf = waf();
        let mut ex = Exclusions::new();
        ex.remove_rule(100);
        let v = waf.evaluate_with(&sqli("q"), &ex);
        assert!(!blocked(&v), "{v:?}");
        assert_eq!(v.anomaly_score, 0);
        assert!(!v.matched_ids.contains(&100));
        // Elsewhere (no exclusions, or other ones) it is still refused.
        let v = waf.evaluate(&sqli("q"));
        assert!(blocked(&v));
        assert_eq!(v.disrupted_by, Some(949));
        assert!(blocked(&waf.evaluate_with(&sqli("q"), &Exclusions::new())));
        let mut other = Exclusions::new();
        other.remove_rule(200);
        assert!(blocked(&waf.evaluate_with(&sqli("q"), &other)));
    }

    #[test]
    fn a_removed_target_passes_that_argument_and_no_other() {
        let waf = waf();
        let mut ex = Exclusions::new();
        ex.remove_target_by_id(100, "ARGS:body").unwrap();
        assert!(!blocked(&waf.evaluate_with(&sqli("body"), &ex)));
        // Keys compare case-insensitively, as in SecLang.
        assert!(!blocked(&waf.evaluate_with(&sqli("BODY"), &ex)));
        let v = waf.evaluate_with(&sqli("title"), &ex);
        assert!(blocked(&v));
        assert!(v.matched_ids.contains(&100));
        // Both at once: the other argument still counts.
        let both = Request::new(
            "GET",
            "/?body=1%20union%20select%20x&title=union%20select%20y",
        );
        assert!(blocked(&waf.evaluate_with(&both, &ex)));
        // A regex key.
        let mut re = Exclusions::new();
        re.remove_target_by_id(100, "ARGS:/^content_/").unwrap();
        assert!(!blocked(&waf.evaluate_with(&sqli("content_html"), &re)));
        assert!(blocked(&waf.evaluate_with(&sqli("html"), &re)));
        // A whole collection removed from the rule.
        let mut all = Exclusions::new();
        all.remove_target_by_id(100, "ARGS").unwrap();
        assert!(!blocked(&waf.evaluate_with(&sqli("anything"), &all)));
    }

    #[test]
    fn tags_select_rules_with_and_without_resolving() {
        let waf = waf();
        let xss = Request::new("GET", "/").header("Cookie", "session=<SCRIPT>x");
        let mut by_tag = Exclusions::new();
        by_tag.remove_tag("attack-sqli").unwrap();
        let mut target_by_tag = Exclusions::new();
        target_by_tag
            .remove_target_by_tag("^attack-xss$", "REQUEST_COOKIES:session")
            .unwrap();
        for resolve in [false, true] {
            let (mut a, mut b) = (by_tag.clone(), target_by_tag.clone());
            if resolve {
                a.resolve(&waf);
                b.resolve(&waf);
            }
            assert!(!blocked(&waf.evaluate_with(&sqli("q"), &a)), "{resolve}");
            assert!(blocked(&waf.evaluate_with(&xss, &a)), "{resolve}");
            assert!(!blocked(&waf.evaluate_with(&xss, &b)), "{resolve}");
            let other = Request::new("GET", "/").header("Cookie", "theme=<script>x");
            assert!(blocked(&waf.evaluate_with(&other, &b)), "{resolve}");
            assert!(blocked(&waf.evaluate_with(&sqli("q"), &b)), "{resolve}");
        }
    }

    #[test]
    fn tables_resolved_for_another_engine_are_not_used() {
        // The second engine has rules in another order: a table of the
        // first would remove the wrong rule.
        let first = waf();
        let second = Waf::from_str_named(
            "other.conf",
            "SecRuleEngine On\n\
             SecRule ARGS \"@contains evil\" \"id:5,phase:2,deny,status:403,tag:'other'\"\n\
             SecRule ARGS \"@contains bad\" \"id:6,phase:2,deny,status:403,tag:'attack-sqli'\"\n",
        )
        .unwrap();
        let mut ex = Exclusions::new();
        ex.remove_tag("attack-sqli").unwrap();
        ex.resolve(&first);
        let evil = Request::new("GET", "/?a=evil");
        assert!(blocked(&second.evaluate_with(&evil, &ex)));
        assert!(!blocked(
            &second.evaluate_with(&Request::new("GET", "/?a=bad"), &ex)
        ));
    }

    #[test]
    fn malformed_exclusions_are_errors_naming_them() {
        let mut ex = Exclusions::new();
        let e = ex.remove_target_by_id(100, "NOPE:x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "exclusion `100;NOPE:x`: unsupported variable `NOPE`"
        );
        let e = ex.remove_tag("(unclosed").unwrap_err();
        assert!(e.to_string().starts_with("exclusion `(unclosed`: "), "{e}");
        assert!(ex.remove_target_by_id("x", "ARGS").is_err());
        assert!(ex.is_empty());
        ex.remove_rule(942100)
            .remove_target_by_id("941100-941199", "ARGS:body")
            .unwrap()
            .remove_target_by_id(941200, "ARGS:body")
            .unwrap();
        assert_eq!(ex.rule_ids(), vec![942100, 941200]);
    }
}
