//! Variable names, key selectors and target lists (`ARGS:foo|!ARGS:bar|&TX:x`).

use crate::error::{syntax, Error, Location};

/// How a variable's values are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A stored collection of `(key, value)` pairs.
    Keyed,
    /// A stored single value (or absent).
    Scalar,
    /// The keys of another stored collection.
    Names(VarName),
    /// The transaction collection `TX`.
    Tx,
    /// A persistent collection (IP, GLOBAL, …): per transaction here.
    Persist,
    /// MATCHED_VARS / MATCHED_VARS_NAMES / MATCHED_VAR / MATCHED_VAR_NAME.
    Matched,
}

macro_rules! var_names {
    ($($v:ident = $s:literal : $k:expr),* $(,)?) => {
        /// Every variable the engine knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(clippy::enum_variant_names)]
        pub(crate) enum VarName { $($v),* }

        impl VarName {
            /// Looks a variable up by its SecLang name, case-insensitively.
            pub(crate) fn parse(s: &str) -> Option<VarName> {
                $( if s.eq_ignore_ascii_case($s) { return Some(VarName::$v); } )*
                None
            }
            /// The SecLang name.
            pub(crate) fn name(self) -> &'static str {
                match self { $(VarName::$v => $s),* }
            }
            /// How values are found (a table look-up: the rules ask on
            /// every value they read).
            #[inline]
            pub(crate) fn kind(self) -> Kind {
                const KINDS: [Kind; VAR_COUNT] = [$($k),*];
                // the discriminants number the variables from 0
                KINDS.get(self as usize).copied().unwrap_or(Kind::Scalar)
            }
        }

        /// Number of variables, for slot tables.
        pub(crate) const VAR_COUNT: usize = [$($s),*].len();
    };
}

var_names! {
    Args = "ARGS": Kind::Keyed,
    ArgsGet = "ARGS_GET": Kind::Keyed,
    ArgsPost = "ARGS_POST": Kind::Keyed,
    ArgsNames = "ARGS_NAMES": Kind::Names(VarName::Args),
    ArgsGetNames = "ARGS_GET_NAMES": Kind::Names(VarName::ArgsGet),
    ArgsPostNames = "ARGS_POST_NAMES": Kind::Names(VarName::ArgsPost),
    ArgsCombinedSize = "ARGS_COMBINED_SIZE": Kind::Scalar,
    RequestHeaders = "REQUEST_HEADERS": Kind::Keyed,
    RequestHeadersNames = "REQUEST_HEADERS_NAMES": Kind::Names(VarName::RequestHeaders),
    RequestCookies = "REQUEST_COOKIES": Kind::Keyed,
    RequestCookiesNames = "REQUEST_COOKIES_NAMES": Kind::Names(VarName::RequestCookies),
    Files = "FILES": Kind::Keyed,
    FilesNames = "FILES_NAMES": Kind::Names(VarName::Files),
    FilesSizes = "FILES_SIZES": Kind::Keyed,
    FilesTmpNames = "FILES_TMPNAMES": Kind::Keyed,
    FilesTmpContent = "FILES_TMP_CONTENT": Kind::Keyed,
    FilesCombinedSize = "FILES_COMBINED_SIZE": Kind::Scalar,
    MultipartPartHeaders = "MULTIPART_PART_HEADERS": Kind::Keyed,
    Xml = "XML": Kind::Keyed,
    Env = "ENV": Kind::Keyed,
    Geo = "GEO": Kind::Keyed,
    ResponseHeaders = "RESPONSE_HEADERS": Kind::Keyed,
    ResponseHeadersNames = "RESPONSE_HEADERS_NAMES": Kind::Names(VarName::ResponseHeaders),
    RequestUri = "REQUEST_URI": Kind::Scalar,
    RequestUriRaw = "REQUEST_URI_RAW": Kind::Scalar,
    RequestFilename = "REQUEST_FILENAME": Kind::Scalar,
    RequestBasename = "REQUEST_BASENAME": Kind::Scalar,
    RequestLine = "REQUEST_LINE": Kind::Scalar,
    RequestMethod = "REQUEST_METHOD": Kind::Scalar,
    RequestProtocol = "REQUEST_PROTOCOL": Kind::Scalar,
    QueryString = "QUERY_STRING": Kind::Scalar,
    RequestBody = "REQUEST_BODY": Kind::Scalar,
    RequestBodyLength = "REQUEST_BODY_LENGTH": Kind::Scalar,
    FullRequest = "FULL_REQUEST": Kind::Scalar,
    FullRequestLength = "FULL_REQUEST_LENGTH": Kind::Scalar,
    RemoteAddr = "REMOTE_ADDR": Kind::Scalar,
    RemotePort = "REMOTE_PORT": Kind::Scalar,
    RemoteHost = "REMOTE_HOST": Kind::Scalar,
    RemoteUser = "REMOTE_USER": Kind::Scalar,
    ServerAddr = "SERVER_ADDR": Kind::Scalar,
    ServerName = "SERVER_NAME": Kind::Scalar,
    ServerPort = "SERVER_PORT": Kind::Scalar,
    AuthType = "AUTH_TYPE": Kind::Scalar,
    UniqueId = "UNIQUE_ID": Kind::Scalar,
    ReqbodyProcessor = "REQBODY_PROCESSOR": Kind::Scalar,
    ReqbodyError = "REQBODY_ERROR": Kind::Scalar,
    ReqbodyErrorMsg = "REQBODY_ERROR_MSG": Kind::Scalar,
    ReqbodyProcessorError = "REQBODY_PROCESSOR_ERROR": Kind::Scalar,
    ReqbodyProcessorErrorMsg = "REQBODY_PROCESSOR_ERROR_MSG": Kind::Scalar,
    InboundDataError = "INBOUND_DATA_ERROR": Kind::Scalar,
    OutboundDataError = "OUTBOUND_DATA_ERROR": Kind::Scalar,
    UrlencodedError = "URLENCODED_ERROR": Kind::Scalar,
    MultipartStrictError = "MULTIPART_STRICT_ERROR": Kind::Scalar,
    MultipartUnmatchedBoundary = "MULTIPART_UNMATCHED_BOUNDARY": Kind::Scalar,
    MultipartBoundaryQuoted = "MULTIPART_BOUNDARY_QUOTED": Kind::Scalar,
    MultipartBoundaryWhitespace = "MULTIPART_BOUNDARY_WHITESPACE": Kind::Scalar,
    MultipartDataBefore = "MULTIPART_DATA_BEFORE": Kind::Scalar,
    MultipartDataAfter = "MULTIPART_DATA_AFTER": Kind::Scalar,
    MultipartHeaderFolding = "MULTIPART_HEADER_FOLDING": Kind::Scalar,
    MultipartLfLine = "MULTIPART_LF_LINE": Kind::Scalar,
    MultipartCrlfLfLines = "MULTIPART_CRLF_LF_LINES": Kind::Scalar,
    MultipartMissingSemicolon = "MULTIPART_MISSING_SEMICOLON": Kind::Scalar,
    MultipartInvalidQuoting = "MULTIPART_INVALID_QUOTING": Kind::Scalar,
    MultipartInvalidPart = "MULTIPART_INVALID_PART": Kind::Scalar,
    MultipartInvalidHeaderFolding = "MULTIPART_INVALID_HEADER_FOLDING": Kind::Scalar,
    MultipartFileLimitExceeded = "MULTIPART_FILE_LIMIT_EXCEEDED": Kind::Scalar,
    MultipartFilename = "MULTIPART_FILENAME": Kind::Scalar,
    MultipartName = "MULTIPART_NAME": Kind::Scalar,
    ResponseBody = "RESPONSE_BODY": Kind::Scalar,
    ResponseStatus = "RESPONSE_STATUS": Kind::Scalar,
    ResponseProtocol = "RESPONSE_PROTOCOL": Kind::Scalar,
    ResponseContentType = "RESPONSE_CONTENT_TYPE": Kind::Scalar,
    ResponseContentLength = "RESPONSE_CONTENT_LENGTH": Kind::Scalar,
    StatusLine = "STATUS_LINE": Kind::Scalar,
    HighestSeverity = "HIGHEST_SEVERITY": Kind::Scalar,
    Duration = "DURATION": Kind::Scalar,
    WebserverErrorLog = "WEBSERVER_ERROR_LOG": Kind::Scalar,
    Tx = "TX": Kind::Tx,
    Ip = "IP": Kind::Persist,
    Global = "GLOBAL": Kind::Persist,
    Session = "SESSION": Kind::Persist,
    User = "USER": Kind::Persist,
    Resource = "RESOURCE": Kind::Persist,
    MatchedVar = "MATCHED_VAR": Kind::Matched,
    MatchedVarName = "MATCHED_VAR_NAME": Kind::Matched,
    MatchedVars = "MATCHED_VARS": Kind::Matched,
    MatchedVarsNames = "MATCHED_VARS_NAMES": Kind::Matched,
}

/// Which keys of a collection a target selects.
#[derive(Debug, Clone)]
pub(crate) enum Selector {
    /// The whole collection.
    All,
    /// One key, compared case-insensitively (stored lowercase).
    Key(String),
    /// Keys matching a regex (case-insensitive).
    Regex(KeyRegex),
}

/// A key selector's regex, with the literal prefix it stands for when it
/// is one (`/^header_name_920450_/`): ASCII keys are then compared
/// without running the regex.
#[derive(Debug, Clone)]
pub(crate) struct KeyRegex {
    re: regex::Regex,
    /// The lowercased literal of a pattern `^literal` (letters, digits, `_`
    /// and `-` only).
    prefix: Option<String>,
}

impl KeyRegex {
    fn new(re: regex::Regex) -> KeyRegex {
        let prefix = re
            .as_str()
            .strip_prefix('^')
            .filter(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .map(str::to_ascii_lowercase);
        KeyRegex { re, prefix }
    }

    #[inline(never)]
    fn is_match(&self, key: &str) -> bool {
        match &self.prefix {
            // the literal as written (TX keys are stored lowercased): the
            // regex matches it whatever follows
            Some(p) if key.as_bytes().starts_with(p.as_bytes()) => true,
            // For ASCII text, the case-insensitive regex `^literal` is an
            // ASCII-case-insensitive prefix test (Unicode's extra case
            // pairs of `k` and `s` are not ASCII).
            Some(p) if key.is_ascii() => key
                .as_bytes()
                .get(..p.len())
                .is_some_and(|k| k.eq_ignore_ascii_case(p.as_bytes())),
            _ => self.re.is_match(key),
        }
    }

    fn as_str(&self) -> &str {
        self.re.as_str()
    }
}

impl Selector {
    // inlined into the loops over a collection's keys (the regex apart)
    #[inline(always)]
    pub(crate) fn matches(&self, key: &str) -> bool {
        match self {
            Selector::All => true,
            Selector::Key(k) => key.eq_ignore_ascii_case(k),
            Selector::Regex(r) => r.is_match(key),
        }
    }

    /// True when `other` names exactly this selector (for exclusions written
    /// the same way, e.g. `ctl:ruleRemoveTargetById=1;ARGS:/^a/`).
    fn same_as(&self, other: &Selector) -> bool {
        match (self, other) {
            (Selector::All, Selector::All) => true,
            (Selector::Key(a), Selector::Key(b)) => a.eq_ignore_ascii_case(b),
            (Selector::Regex(a), Selector::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

/// One element of a rule's variable list.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub var: VarName,
    pub selector: Selector,
    /// `&VAR`: the number of values instead of the values.
    pub count: bool,
    /// The name every value this target selects is matched as
    /// (MATCHED_VAR_NAME), when the target alone fixes it: `&VAR`, a
    /// scalar, `TX:key` (TX keys are looked up exactly). Worked out once,
    /// so that a hit borrows it instead of writing a name per request.
    pub fixed_name: Option<String>,
    /// For `TX:key`, the key's id (filled by
    /// [`crate::engine::WafBuilder::build`]).
    pub tx_id: Option<u32>,
    /// For `TX` and `TX:/regex/`, the ids of the keys the rules name that
    /// it selects, in key order (filled by
    /// [`crate::engine::WafBuilder::build`]).
    pub tx_selected: Option<Vec<u32>>,
    /// For one key of a stored collection (`REQUEST_HEADERS:User-Agent`),
    /// the key's id ([`crate::engine::SelKeys`]; filled by
    /// [`crate::engine::WafBuilder::build`]).
    pub key_id: Option<u8>,
}

impl Target {
    pub(crate) fn new(var: VarName, selector: Selector, count: bool) -> Target {
        let fixed_name = match (&selector, var.kind()) {
            _ if count => Some(format!("&{}", var.name())),
            (_, Kind::Scalar) => Some(var.name().to_string()),
            (Selector::Key(k), Kind::Tx | Kind::Persist) => Some(format!("{}:{k}", var.name())),
            _ => None,
        };
        Target {
            var,
            selector,
            count,
            fixed_name,
            tx_id: None,
            tx_selected: None,
            key_id: None,
        }
    }
}

/// A `!VAR:key` element: values it selects are skipped.
#[derive(Debug, Clone)]
pub(crate) struct Exclusion {
    pub var: VarName,
    pub selector: Selector,
}

impl Exclusion {
    /// True when this exclusion removes the value `key` of `var`.
    pub(crate) fn excludes(&self, var: VarName, key: &str) -> bool {
        self.var == var && self.selector.matches(key)
    }

    /// True when this exclusion removes `target` entirely.
    pub(crate) fn removes_target(&self, target: &Target) -> bool {
        self.var == target.var
            && (matches!(self.selector, Selector::All) || self.selector.same_as(&target.selector))
    }
}

/// A parsed variable list.
#[derive(Debug, Clone, Default)]
pub(crate) struct Targets {
    pub targets: Vec<Target>,
    pub exclusions: Vec<Exclusion>,
}

/// Parses `ARGS|!ARGS:foo|&TX:x|REQUEST_COOKIES:/^a|b$/`.
pub(crate) fn parse_targets(s: &str, at: &Location) -> Result<Targets, Error> {
    let mut out = Targets::default();
    for part in split_targets(s, at)? {
        let part = part.trim();
        if part.is_empty() {
            return Err(syntax(at, format!("empty variable in `{s}`")));
        }
        let (negated, count, rest) = match part.as_bytes().first() {
            Some(b'!') => (true, false, part.get(1..).unwrap_or("")),
            Some(b'&') => (false, true, part.get(1..).unwrap_or("")),
            _ => (false, false, part),
        };
        let (name, key) = match rest.split_once(':') {
            Some((n, k)) => (n, Some(k)),
            None => (rest, None),
        };
        let var = VarName::parse(name).ok_or_else(|| Error::Unsupported {
            at: at.clone(),
            kind: "variable",
            name: name.to_string(),
        })?;
        let selector = match key {
            None => Selector::All,
            Some(k) => parse_selector(k, at)?,
        };
        // The XML body processor answers the two XPath expressions CRS uses;
        // any other would silently select nothing.
        let xpath_ok = match &selector {
            Selector::All => true,
            Selector::Key(k) => k == "/*" || k == "//@*",
            Selector::Regex(_) => false,
        };
        if var == VarName::Xml && !xpath_ok {
            return Err(Error::Unsupported {
                at: at.clone(),
                kind: "XPath expression",
                name: key.unwrap_or("").to_string(),
            });
        }
        if negated {
            out.exclusions.push(Exclusion { var, selector });
        } else {
            out.targets.push(Target::new(var, selector, count));
        }
    }
    Ok(out)
}

/// Parses the part after `VAR:`: a name, a quoted name or a `/regex/`.
pub(crate) fn parse_selector(k: &str, at: &Location) -> Result<Selector, Error> {
    let k = k.trim();
    if k.len() >= 2 && k.starts_with('/') && k.ends_with('/') {
        let pat = k.get(1..k.len() - 1).unwrap_or("");
        let re = regex::RegexBuilder::new(pat)
            .case_insensitive(true)
            .build()
            .map_err(|e| Error::Regex {
                at: at.clone(),
                message: e.to_string(),
            })?;
        return Ok(Selector::Regex(KeyRegex::new(re)));
    }
    let k = k
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .unwrap_or(k);
    Ok(Selector::Key(k.to_ascii_lowercase()))
}

/// Splits on `|`, except inside a `/regex/` key or a quoted key.
fn split_targets(s: &str, at: &Location) -> Result<Vec<String>, Error> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut in_regex = false;
    let mut in_quote = false;
    let mut prev = '\0';
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if in_regex {
            cur.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            } else if c == '/' {
                in_regex = false;
            }
        } else if in_quote {
            cur.push(c);
            if c == '\'' {
                in_quote = false;
            }
        } else if c == '|' {
            parts.push(std::mem::take(&mut cur));
        } else {
            if prev == ':' && c == '/' && !cur.to_ascii_uppercase().ends_with("XML:") {
                in_regex = true;
            } else if prev == ':' && c == '\'' {
                in_quote = true;
            }
            cur.push(c);
        }
        prev = c;
    }
    if in_regex || in_quote {
        return Err(syntax(at, format!("unterminated key selector in `{s}`")));
    }
    parts.push(cur);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn at() -> Location {
        Location {
            file: PathBuf::from("t"),
            line: 1,
        }
    }

    #[test]
    fn prefix_regexes_match_as_the_regex_does() {
        let sel = |p: &str| parse_selector(p, &at()).unwrap();
        let prefix = sel("/^header_name_920450_/");
        assert!(matches!(&prefix, Selector::Regex(r) if r.prefix.is_some()));
        let plain = Selector::Regex(KeyRegex {
            re: regex::RegexBuilder::new("^header_name_920450_")
                .case_insensitive(true)
                .build()
                .unwrap(),
            prefix: None,
        });
        for key in [
            "header_name_920450_x",
            "HEADER_NAME_920450_",
            "header_name_920450",
            "xheader_name_920450_",
            "",
            "header_name_920450_\u{212a}",
            "header_name_92045\u{212a}_",
        ] {
            assert_eq!(prefix.matches(key), plain.matches(key), "{key}");
        }
        let ks = sel("/^ks-/");
        assert!(ks.matches("KS-a") && ks.matches("\u{212a}\u{17f}-a") && !ks.matches("k-"));
        assert!(matches!(sel("/^a|b/"), Selector::Regex(r) if r.prefix.is_none()));
        assert!(matches!(sel("/^a.b/"), Selector::Regex(r) if r.prefix.is_none()));
    }

    #[test]
    fn parses_lists() {
        let t = parse_targets(
            "REQUEST_COOKIES|!REQUEST_COOKIES:/__utm|_ga/|&ARGS:x|XML:/*|ARGS:'a b'",
            &at(),
        )
        .unwrap();
        assert_eq!(t.targets.len(), 4);
        assert_eq!(t.exclusions.len(), 1);
        assert!(t.exclusions[0].excludes(VarName::RequestCookies, "_ga"));
        assert!(t.targets[1].count);
        assert!(matches!(&t.targets[3].selector, Selector::Key(k) if k == "a b"));
    }

    #[test]
    fn only_crs_xpath_is_supported() {
        assert!(parse_targets("XML:/*|XML://@*|!XML:/*|XML", &at()).is_ok());
        let e = parse_targets("XML:/soap:Envelope/*", &at()).unwrap_err();
        assert!(matches!(
            e,
            Error::Unsupported {
                kind: "XPath expression",
                ..
            }
        ));
    }

    #[test]
    fn kinds_are_listed_in_order() {
        assert_eq!(VarName::Args.kind(), Kind::Keyed);
        assert_eq!(VarName::ArgsNames.kind(), Kind::Names(VarName::Args));
        assert_eq!(VarName::RequestUri.kind(), Kind::Scalar);
        assert_eq!(VarName::Tx.kind(), Kind::Tx);
        assert_eq!(VarName::Ip.kind(), Kind::Persist);
        assert_eq!(VarName::MatchedVarsNames.kind(), Kind::Matched);
    }

    #[test]
    fn unknown_variable_is_unsupported() {
        let e = parse_targets("ARGS|NOPE", &at()).unwrap_err();
        assert!(matches!(
            e,
            Error::Unsupported {
                kind: "variable",
                ..
            }
        ));
    }
}
