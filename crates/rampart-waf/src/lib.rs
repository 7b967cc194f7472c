//! `rampart-waf`: a SecLang engine that loads the OWASP Core Rule Set
//! unmodified and evaluates requests against it.
//!
//! It owns rule parsing ([`WafBuilder`], errors with `file:line`), the
//! variables, transformations, operators and actions of SecLang, request body
//! parsing (URL-encoded, JSON, multipart, XML) and the verdict ([`Verdict`]). It
//! never does I/O on the request path, never talks to the network and never
//! decides per-route policy: the edge calls [`Waf::inspect`] with a
//! [`Request`] (phases 1 and 2), enforces the returned [`Action`], keeps the
//! [`Inspection`] across the upstream call and finishes it with the
//! [`Response`] (phases 3 to 5: CRS's 95x data-leakage rules and 980
//! reporting), so nothing is evaluated twice. [`Waf::evaluate`] and
//! [`Waf::evaluate_response`] do the same in one call each, for tests and
//! tools. A route's exclusions (CRS exclusion rules without writing
//! SecLang) go in [`Exclusions`].
//!
//! ```
//! use rampart_waf::{Waf, Request, Action};
//! let waf = Waf::from_str_named("inline.conf", r#"
//! SecRuleEngine On
//! SecRule ARGS "@rx <script" "id:1,phase:2,deny,status:403,t:lowercase,msg:'XSS'"
//! "#).unwrap();
//! let v = waf.evaluate(&Request::new("GET", "/?q=%3CSCRIPT%3E"));
//! assert_eq!(v.action, Action::Deny { status: 403 });
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

mod actions;
mod body;
mod engine;
mod error;
mod exclusions;
pub mod ftw;
mod inspection;
mod lexer;
mod macros;
mod operators;
mod prefilter;
mod recall;
mod request;
mod rule;
mod small;
mod transaction;
mod transformations;
mod variables;
mod xml;

pub use actions::EngineMode;

/// Rampart's built-in baseline rule set (`rules/baseline.conf`): a few rules
/// written for this project that refuse SQL injection, cross-site
/// scripting, path traversal in parameters and NUL bytes, each on its own
/// with 403. What `rampart up --dev` runs (`waf_rules =
/// ["builtin:baseline"]` in `rampart.toml`); for production, load the OWASP
/// Core Rule Set instead.
pub const BASELINE_RULES: &str = include_str!("../rules/baseline.conf");
pub use engine::{BodyLimitAction, Config, Waf, WafBuilder};
pub use error::{Error, Location};
pub use exclusions::Exclusions;
pub use inspection::Inspection;
pub use request::{Action, Field, Request, Response, RuleMatch, Verdict};

/// Hooks for conformance tests (secrules-language-tests vectors); not part
/// of the stable API.
#[doc(hidden)]
pub mod testing {
    /// Applies the named transformation; `None` if unknown.
    pub fn transform(name: &str, input: &[u8]) -> Option<Vec<u8>> {
        crate::transformations::Transform::parse(name).map(|t| t.apply(input).into_owned())
    }

    /// Runs the named operator with `param` on `input` (files relative to
    /// `dir`); `Err` carries the load error text.
    pub fn operator(
        name: &str,
        param: &str,
        input: &[u8],
        dir: &std::path::Path,
    ) -> Result<bool, String> {
        let at = crate::error::Location {
            file: dir.join("vector"),
            line: 1,
        };
        let op = crate::operators::Operator::parse(&format!("@{name} {param}"), dir, &at)
            .map_err(|e| e.to_string())?;
        let m = crate::operators::eval(&op.op, input, &mut |m| m.expand(|_| None), None);
        Ok(m != op.negated)
    }

    /// Runs one request body processor (`urlencoded`, `multipart`, `json` or
    /// `xml`) with the engine's default limits and returns how many values
    /// it produced, or its error (for fuzz targets). `content_type` matters
    /// only to multipart (the boundary).
    pub fn body_processor(kind: &str, content_type: &str, body: &[u8]) -> Result<usize, String> {
        let cfg = crate::Config::default();
        match kind {
            "urlencoded" => Ok(crate::body::parse_urlencoded(
                body,
                cfg.argument_separator,
                cfg.arguments_limit,
            )
            .len()),
            "json" => crate::body::parse_json(body, cfg.json_depth_limit, cfg.arguments_limit)
                .map(|p| p.len()),
            "multipart" => {
                let m = crate::body::parse_multipart(
                    body,
                    content_type,
                    cfg.arguments_limit,
                    cfg.upload_file_limit,
                );
                match m.error {
                    Some(e) => Err(e),
                    None => Ok(m.args.len() + m.files.len() + m.part_headers.len()),
                }
            }
            "xml" => crate::xml::parse_xml(body, cfg.xml_depth_limit, cfg.arguments_limit)
                .map(|x| x.text.len() + x.attrs.len()),
            other => Err(format!("no body processor `{other}`")),
        }
    }
}
