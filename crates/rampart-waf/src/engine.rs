//! Loading: directives become a [`Waf`], an immutable compiled rule set
//! shared by every request.

use crate::actions::{
    parse_actions, parse_id_ranges, tag_regex, Actions, Ctl, Disruptive, EngineMode, SetOp,
};
use crate::error::{syntax, Error, Location};
use crate::lexer::{lex, Directive};
use crate::operators::{atoi, Op, Operator, RxEngine};
use crate::prefilter::{ByteSet, LiteralIndex, Prefilter};
use crate::rule::{Rule, RuleBody, TxCompare};
use crate::transaction::SeededState;
use crate::transformations::Transform;
use crate::variables::{parse_targets, Kind, Selector, VarName};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What to do with a body larger than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimitAction {
    /// Refuse the request (413).
    Reject,
    /// Inspect only the first `limit` bytes.
    ProcessPartial,
}

/// Engine settings from `Sec*` directives.
#[derive(Debug, Clone)]
pub struct Config {
    /// `SecRuleEngine`.
    pub engine: EngineMode,
    /// `SecRequestBodyAccess`.
    pub request_body_access: bool,
    /// `SecRequestBodyLimit`, bytes.
    pub request_body_limit: usize,
    /// `SecRequestBodyNoFilesLimit`, bytes.
    pub request_body_no_files_limit: usize,
    /// `SecRequestBodyLimitAction`.
    pub request_body_limit_action: BodyLimitAction,
    /// `SecArgumentsLimit`: arguments beyond this are not parsed.
    pub arguments_limit: usize,
    /// `SecRequestBodyJsonDepthLimit`.
    pub json_depth_limit: usize,
    /// Deepest element nesting the XML body processor accepts (libxml2's
    /// default limit, 256).
    pub xml_depth_limit: usize,
    /// `SecUploadFileLimit`.
    pub upload_file_limit: usize,
    /// `SecResponseBodyAccess`.
    pub response_body_access: bool,
    /// `SecResponseBodyMimeType`: media types whose bodies are inspected.
    pub response_body_mime_types: Vec<String>,
    /// `SecResponseBodyLimit`, bytes.
    pub response_body_limit: usize,
    /// `SecResponseBodyLimitAction`.
    pub response_body_limit_action: BodyLimitAction,
    /// `SecArgumentSeparator`.
    pub argument_separator: u8,
    /// `SecComponentSignature` values.
    pub component_signatures: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            engine: EngineMode::On,
            request_body_access: true,
            request_body_limit: 13_107_200,
            request_body_no_files_limit: 131_072,
            request_body_limit_action: BodyLimitAction::Reject,
            arguments_limit: 1000,
            json_depth_limit: 512,
            xml_depth_limit: 256,
            upload_file_limit: 100,
            response_body_access: false,
            response_body_mime_types: vec!["text/plain".into(), "text/html".into()],
            response_body_limit: 524_288,
            response_body_limit_action: BodyLimitAction::Reject,
            argument_separator: b'&',
            component_signatures: Vec::new(),
        }
    }
}

/// Directives accepted and ignored because they cannot change a verdict
/// (logging, persistence, temporary files).
const IGNORED: &[&str] = &[
    "SecAuditEngine",
    "SecAuditLog",
    "SecAuditLog2",
    "SecAuditLogParts",
    "SecAuditLogType",
    "SecAuditLogFormat",
    "SecAuditLogStorageDir",
    "SecAuditLogDirMode",
    "SecAuditLogFileMode",
    "SecAuditLogRelevantStatus",
    "SecDebugLog",
    "SecDebugLogLevel",
    "SecTmpDir",
    "SecDataDir",
    "SecUploadDir",
    "SecUploadKeepFiles",
    "SecUploadFileMode",
    "SecTmpSaveUploadedFiles",
    "SecCollectionTimeout",
    "SecStatusEngine",
    "SecServerSignature",
    "SecWebAppId",
    "SecPcreMatchLimit",
    "SecPcreMatchLimitRecursion",
    "SecRequestBodyInMemoryLimit",
    "SecCookieFormat",
    "SecUnicodeMapFile",
    "SecUnicodeCodePage",
    "SecGeoLookupDb",
    "SecSensorId",
];

/// Builds a [`Waf`] from one or more rule files or strings, in order.
#[derive(Debug, Default)]
pub struct WafBuilder {
    rules: Vec<Rule>,
    defaults: BTreeMap<u8, Actions>,
    config: Config,
    open_chain: Option<Rule>,
    ignored: BTreeMap<String, usize>,
    warnings: Vec<String>,
    depth: usize,
}

impl WafBuilder {
    /// An empty builder with ModSecurity's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a rule file; `Include` paths are relative to it.
    pub fn load_file(&mut self, path: impl AsRef<Path>) -> Result<&mut Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_str(path, &text)?;
        Ok(self)
    }

    /// Loads rule text as if read from `name`; relative paths (Include,
    /// @pmFromFile) resolve against `name`'s directory.
    pub fn load_str(&mut self, name: impl AsRef<Path>, text: &str) -> Result<&mut Self, Error> {
        let name = name.as_ref();
        let dir = name.parent().map(Path::to_path_buf).unwrap_or_default();
        for d in lex(name, text)? {
            self.directive(&d, &dir)?;
        }
        Ok(self)
    }

    /// Finishes loading.
    pub fn build(&mut self) -> Result<Waf, Error> {
        if let Some(r) = self.open_chain.take() {
            return Err(syntax(&r.at, "rule ends with `chain` but no rule follows"));
        }
        let mut warnings = std::mem::take(&mut self.warnings);
        if !self.ignored.is_empty() {
            let list: Vec<String> = self
                .ignored
                .iter()
                .map(|(k, n)| format!("{k} ({n})"))
                .collect();
            warnings.push(format!(
                "ignored directives that cannot affect a verdict: {}",
                list.join(", ")
            ));
        }
        let mut rules = std::mem::take(&mut self.rules);
        let hash_seed = SeededState::random().0;
        let mut chains = ChainTrie::default();
        for r in &mut rules {
            prepare(r, &mut chains);
        }
        let mut tx_keys = TxKeys::new(hash_seed);
        for r in &mut rules {
            tx_keys.intern_rule(r);
        }
        for r in &mut rules {
            tx_keys.select(r);
            set_tx_compare(r);
        }
        let mut sel_keys = SelKeys::new(hash_seed);
        for r in &mut rules {
            sel_keys.intern_rule(r);
        }
        let tag_sets = tag_sets(&rules);
        let tf_triggers = chains.triggers;
        let fancy: Vec<u64> = rules
            .iter()
            .filter(|r| uses_fancy(r))
            .map(|r| r.id)
            .collect();
        if !fancy.is_empty() {
            warnings.push(format!(
                "{} rules need the backtracking regex engine: {:?}",
                fancy.len(),
                fancy
            ));
        }
        for r in &rules {
            unavailable(r, &mut warnings);
        }
        LiteralIndex::share(rules.iter().flat_map(prefilters));
        let mut by_phase: [Vec<usize>; 6] = Default::default();
        let mut skip_after: [Vec<usize>; 6] = Default::default();
        for (p, (list, resume)) in by_phase.iter_mut().zip(&mut skip_after).enumerate() {
            (*list, *resume) = phase_plan(&rules, p);
        }
        Ok(Waf {
            rules,
            by_phase,
            skip_after,
            tag_sets,
            tf_triggers,
            tx_keys: tx_keys.keys,
            tx_ids: tx_keys.ids,
            sel_keys,
            hash_seed,
            config: self.config.clone(),
            warnings,
            id: NEXT_WAF_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    fn defaults_for(&self, phase: u8) -> Actions {
        self.defaults
            .get(&phase)
            .cloned()
            .unwrap_or_else(|| Actions {
                disruptive: Some(Disruptive::Pass),
                log: Some(true),
                auditlog: Some(true),
                ..Actions::default()
            })
    }

    fn directive(&mut self, d: &Directive, dir: &Path) -> Result<(), Error> {
        let args = &d.args;
        let at = &d.at;
        let arg = |n: usize| {
            args.get(n)
                .map(String::as_str)
                .ok_or_else(|| syntax(at, format!("{} needs {} argument(s)", d.name, n + 1)))
        };
        let name = d.name.as_str();
        if self.open_chain.is_some() && !name.eq_ignore_ascii_case("SecRule") {
            return Err(syntax(
                at,
                format!("`{name}` inside a chain: expected SecRule"),
            ));
        }
        match name.to_ascii_lowercase().as_str() {
            "secrule" => {
                if args.len() < 2 || args.len() > 3 {
                    return Err(syntax(at, "SecRule needs VARIABLES OPERATOR [ACTIONS]"));
                }
                let targets = parse_targets(arg(0)?, at)?;
                let op = Operator::parse(arg(1)?, dir, at)?;
                let actions = match args.get(2) {
                    Some(a) => parse_actions(a, at)?,
                    None => Actions::default(),
                };
                self.add_rule(RuleBody::Match { targets, op }, actions, at)?;
            }
            "secaction" => {
                let actions = parse_actions(arg(0)?, at)?;
                self.add_rule(RuleBody::Action, actions, at)?;
            }
            "secmarker" => {
                let name = arg(0)?.to_string();
                self.rules.push(Rule {
                    id: 0,
                    phase: 0,
                    at: at.clone(),
                    body: RuleBody::Marker(name),
                    actions: Actions::default(),
                    block_action: Disruptive::Pass,
                    chain: None,
                    tf_path: Vec::new(),
                    skip_bytes: None,
                    skip_slots: Vec::new(),
                    tx_compare: None,
                    tf_bytes: Vec::new(),
                    tags: std::sync::Arc::from([]),
                });
            }
            "secdefaultaction" => {
                let a = parse_actions(arg(0)?, at)?;
                let phase = a
                    .phase
                    .ok_or_else(|| syntax(at, "SecDefaultAction needs a phase"))?;
                if a.disruptive.is_none() {
                    return Err(syntax(at, "SecDefaultAction needs a disruptive action"));
                }
                self.defaults.insert(phase, a);
            }
            "secruleengine" => {
                self.config.engine = EngineMode::parse(arg(0)?).ok_or_else(|| {
                    syntax(at, format!("bad SecRuleEngine `{}`", arg(0).unwrap_or("")))
                })?;
            }
            "secrequestbodyaccess" => self.config.request_body_access = on_off(arg(0)?, at)?,
            "secrequestbodylimit" => self.config.request_body_limit = number(arg(0)?, at)?,
            "secrequestbodynofileslimit" => {
                self.config.request_body_no_files_limit = number(arg(0)?, at)?
            }
            "secrequestbodylimitaction" => {
                self.config.request_body_limit_action = match arg(0)?.to_ascii_lowercase().as_str()
                {
                    "reject" => BodyLimitAction::Reject,
                    "processpartial" => BodyLimitAction::ProcessPartial,
                    v => return Err(syntax(at, format!("bad SecRequestBodyLimitAction `{v}`"))),
                }
            }
            "secresponsebodyaccess" => self.config.response_body_access = on_off(arg(0)?, at)?,
            "secresponsebodylimit" => self.config.response_body_limit = number(arg(0)?, at)?,
            "secresponsebodymimetype" => {
                self.config.response_body_mime_types.extend(
                    args.iter()
                        .flat_map(|a| a.split_whitespace())
                        .map(str::to_ascii_lowercase),
                );
            }
            "secresponsebodymimetypesclear" => self.config.response_body_mime_types.clear(),
            "secresponsebodylimitaction" => {
                self.config.response_body_limit_action = match arg(0)?.to_ascii_lowercase().as_str()
                {
                    "reject" => BodyLimitAction::Reject,
                    "processpartial" => BodyLimitAction::ProcessPartial,
                    v => return Err(syntax(at, format!("bad SecResponseBodyLimitAction `{v}`"))),
                }
            }
            "secargumentslimit" => self.config.arguments_limit = number(arg(0)?, at)?,
            "secrequestbodyjsondepthlimit" => self.config.json_depth_limit = number(arg(0)?, at)?,
            "secuploadfilelimit" => self.config.upload_file_limit = number(arg(0)?, at)?,
            "secargumentseparator" => {
                let s = arg(0)?;
                self.config.argument_separator = match s.as_bytes() {
                    [b] => *b,
                    _ => return Err(syntax(at, "SecArgumentSeparator takes one character")),
                };
            }
            "seccomponentsignature" => self.config.component_signatures.push(arg(0)?.to_string()),
            "secruleremovebyid" => {
                let mut ranges = Vec::new();
                for a in args {
                    ranges.extend(parse_id_ranges(a, at)?);
                }
                self.rules
                    .retain(|r| r.id == 0 || !ranges.iter().any(|x| x.contains(r.id)));
            }
            "secruleremovebytag" => {
                let re = tag_regex(arg(0)?, at)?;
                self.rules.retain(|r| !r.has_tag(&re));
            }
            "secruleremovebymsg" => {
                let re = tag_regex(arg(0)?, at)?;
                self.rules.retain(|r| {
                    !r.actions
                        .msg
                        .as_ref()
                        .and_then(|m| m.as_literal())
                        .is_some_and(|m| re.is_match(m))
                });
            }
            "secruleupdatetargetbyid" | "secruleupdatetargetbytag" | "secruleupdatetargetbymsg" => {
                let extra = parse_targets(arg(1)?, at)?;
                let replaced = match args.get(2) {
                    Some(r) => Some(parse_targets(r, at)?),
                    None => None,
                };
                let select: Box<dyn Fn(&Rule) -> bool> = if name
                    .eq_ignore_ascii_case("SecRuleUpdateTargetById")
                {
                    let ranges = parse_id_ranges(arg(0)?, at)?;
                    Box::new(move |r: &Rule| r.id != 0 && ranges.iter().any(|x| x.contains(r.id)))
                } else if name.eq_ignore_ascii_case("SecRuleUpdateTargetByTag") {
                    let re = tag_regex(arg(0)?, at)?;
                    Box::new(move |r: &Rule| r.has_tag(&re))
                } else {
                    let re = tag_regex(arg(0)?, at)?;
                    Box::new(move |r: &Rule| {
                        r.actions
                            .msg
                            .as_ref()
                            .and_then(|m| m.as_literal())
                            .is_some_and(|m| re.is_match(m))
                    })
                };
                for r in self.rules.iter_mut().filter(|r| select(r)) {
                    if let RuleBody::Match { targets, .. } = &mut r.body {
                        if let Some(rep) = &replaced {
                            targets.targets.retain(|t| {
                                !rep.targets.iter().any(|x| {
                                    x.var == t.var
                                        && format!("{:?}", x.selector)
                                            == format!("{:?}", t.selector)
                                })
                            });
                        }
                        targets.targets.extend(extra.targets.iter().cloned());
                        targets.exclusions.extend(extra.exclusions.iter().cloned());
                    }
                }
            }
            "secruleupdateactionbyid" => {
                let ranges = parse_id_ranges(arg(0)?, at)?;
                let upd = parse_actions(arg(1)?, at)?;
                for r in self
                    .rules
                    .iter_mut()
                    .filter(|r| r.id != 0 && ranges.iter().any(|x| x.contains(r.id)))
                {
                    merge_actions(&mut r.actions, &upd);
                }
            }
            "include" => self.include(arg(0)?, dir, at)?,
            _ => {
                if let Some(known) = IGNORED.iter().find(|i| i.eq_ignore_ascii_case(name)) {
                    *self.ignored.entry((*known).to_string()).or_default() += 1;
                } else {
                    return Err(Error::Unsupported {
                        at: at.clone(),
                        kind: "directive",
                        name: name.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    fn add_rule(
        &mut self,
        body: RuleBody,
        mut actions: Actions,
        at: &Location,
    ) -> Result<(), Error> {
        let chain = actions.chain;
        if let Some(mut parent) = self.open_chain.take() {
            if actions.id.is_some() || actions.phase.is_some() {
                return Err(syntax(at, "a chained rule cannot have `id` or `phase`"));
            }
            let phase = parent.phase;
            let link = Rule {
                id: 0,
                phase,
                at: at.clone(),
                body,
                actions,
                block_action: parent.block_action.clone(),
                chain: None,
                tf_path: Vec::new(),
                skip_bytes: None,
                skip_slots: Vec::new(),
                tx_compare: None,
                tf_bytes: Vec::new(),
                tags: std::sync::Arc::from([]),
            };
            parent.last_link_mut().chain = Some(Box::new(link));
            if chain {
                self.open_chain = Some(parent);
            } else {
                self.rules.push(parent);
            }
            return Ok(());
        }
        let id = actions
            .id
            .ok_or_else(|| syntax(at, "rule has no `id` action"))?;
        if self.rules.iter().any(|r| r.id == id) {
            return Err(syntax(at, format!("duplicate rule id {id}")));
        }
        let phase = actions.phase.unwrap_or(2);
        let defaults = self.defaults_for(phase);
        if actions.disruptive.is_none() {
            actions.disruptive = defaults.disruptive.clone();
        }
        if !actions.t_none {
            let mut t = defaults.transforms.clone();
            t.append(&mut actions.transforms);
            actions.transforms = t;
        }
        actions.log = actions.log.or(defaults.log);
        actions.auditlog = actions.auditlog.or(defaults.auditlog);
        actions.status = actions.status.or(defaults.status);
        let rule = Rule {
            id,
            phase,
            at: at.clone(),
            body,
            actions,
            block_action: defaults.disruptive.clone().unwrap_or(Disruptive::Pass),
            chain: None,
            tf_path: Vec::new(),
            skip_bytes: None,
            skip_slots: Vec::new(),
            tx_compare: None,
            tf_bytes: Vec::new(),
            tags: std::sync::Arc::from([]),
        };
        if chain {
            self.open_chain = Some(rule);
        } else {
            self.rules.push(rule);
        }
        Ok(())
    }

    fn include(&mut self, pattern: &str, dir: &Path, at: &Location) -> Result<(), Error> {
        if self.depth > 16 {
            return Err(syntax(at, "Include nested too deeply"));
        }
        let full = dir.join(pattern);
        let files = expand_glob(&full).map_err(|source| Error::Io {
            path: full.clone(),
            source,
        })?;
        if files.is_empty() && !has_wildcard(pattern) {
            return Err(syntax(
                at,
                format!("Include: no such file `{}`", full.display()),
            ));
        }
        self.depth += 1;
        for f in files {
            let r = self.load_file(&f).map(|_| ());
            if r.is_err() {
                self.depth -= 1;
                return r;
            }
        }
        self.depth -= 1;
        Ok(())
    }
}

/// Every transformation chain in the rule set, as a trie: chains that
/// share a prefix (`urlDecodeUni,lowercase` and `urlDecodeUni,jsDecode`)
/// share its node, so a transaction transforms a value once per prefix.
struct ChainTrie {
    nodes: HashMap<(u32, Transform), u32>,
    /// Per node (by number): the trigger bytes of every transformation on
    /// its path ([`Transform::triggers`]); `None` when one of them may
    /// change any value.
    triggers: Vec<Option<ByteSet>>,
}

impl Default for ChainTrie {
    fn default() -> Self {
        ChainTrie {
            nodes: HashMap::new(),
            // the root: no transformation, nothing changes
            triggers: vec![Some(ByteSet::default())],
        }
    }
}

impl ChainTrie {
    fn path(&mut self, transforms: &[Transform]) -> Vec<u32> {
        let mut node = ROOT_NODE;
        let mut path = Vec::with_capacity(transforms.len());
        for &t in transforms {
            let next = u32::try_from(self.nodes.len() + 1).unwrap_or(u32::MAX);
            let parent = node;
            node = *self.nodes.entry((parent, t)).or_insert(next);
            if node == next && self.triggers.len() == next as usize {
                let up = self.triggers.get(parent as usize).copied().flatten();
                self.triggers.push(up.zip(t.triggers()).map(|(mut a, b)| {
                    a.union_with(&b);
                    a
                }));
            }
            path.push(node);
        }
        path
    }
}

/// The chain-trie node of an untransformed value.
pub(crate) const ROOT_NODE: u32 = 0;

/// Resolves the transformation chains of a rule and its chain links.
fn prepare(r: &mut Rule, chains: &mut ChainTrie) {
    r.tf_path = chains.path(&r.actions.transforms);
    r.tf_bytes = r
        .actions
        .transforms
        .iter()
        .map(|t| (t.triggers(), t.introduces()))
        .collect();
    r.tags = r.actions.tags.iter().cloned().collect();
    let last = r.tf_path.last().copied().unwrap_or(ROOT_NODE);
    let triggers = chains.triggers.get(last as usize).copied().flatten();
    r.skip_bytes = match &r.body {
        RuleBody::Match { op, .. } if !op.negated => {
            triggers.zip(op.op.required_bytes()).map(|(mut t, need)| {
                t.union_with(need);
                t
            })
        }
        _ => None,
    };
    if let Some(c) = r.chain.as_deref_mut() {
        prepare(c, chains);
    }
}

/// The TX keys the rules name literally (in `setvar`, `TX:key` targets
/// and `%{tx.key}` macros), each given an id: a transaction keeps their
/// values in a vector indexed by it rather than hashing the key on every
/// read and write. Ids 0 to 9 are the capture keys `0` to `9`.
struct TxKeys {
    keys: Vec<String>,
    ids: HashMap<String, u32, SeededState>,
}

impl TxKeys {
    fn new(seed: u64) -> TxKeys {
        TxKeys {
            keys: Vec::new(),
            ids: HashMap::with_hasher(SeededState(seed)),
        }
    }

    fn id(&mut self, key: &str) -> u32 {
        if self.keys.is_empty() {
            for d in 0..10u8 {
                let k = char::from(b'0' + d).to_string();
                self.ids.insert(k.clone(), u32::from(d));
                self.keys.push(k);
            }
        }
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        let id = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        self.keys.push(key.to_string());
        self.ids.insert(key.to_string(), id);
        id
    }

    fn intern_rule(&mut self, r: &mut Rule) {
        let mut id = |k: &str| self.id(k);
        let a = &mut r.actions;
        for m in a.msg.iter_mut().chain(a.logdata.iter_mut()) {
            m.intern_tx(&mut id);
        }
        for sv in &mut a.setvars {
            sv.key.intern_tx(&mut id);
            if sv.coll == VarName::Tx {
                sv.key_id = sv.key.as_literal().map(&mut id);
            }
            match &mut sv.op {
                SetOp::Set(m) | SetOp::Add(m) | SetOp::Sub(m) => m.intern_tx(&mut id),
                SetOp::Delete => {}
            }
        }
        if let RuleBody::Match { targets, op } = &mut r.body {
            if let Some(m) = op.op.macro_mut() {
                m.intern_tx(&mut id);
            }
            for t in &mut targets.targets {
                if let (VarName::Tx, Selector::Key(k)) = (t.var, &t.selector) {
                    t.tx_id = Some(id(k));
                }
            }
        }
        if let Some(c) = r.chain.as_deref_mut() {
            self.intern_rule(c);
        }
    }

    /// Lists, for every `TX` and `TX:/regex/` target, the keys the rules
    /// name that it selects ([`crate::variables::Target::tx_selected`]).
    fn select(&self, r: &mut Rule) {
        if let RuleBody::Match { targets, .. } = &mut r.body {
            for t in &mut targets.targets {
                if t.var == VarName::Tx && !matches!(t.selector, Selector::Key(_)) {
                    let mut ids: Vec<u32> = (0..self.keys.len())
                        .filter(|&i| self.keys.get(i).is_some_and(|k| t.selector.matches(k)))
                        .filter_map(|i| u32::try_from(i).ok())
                        .collect();
                    ids.sort_by(|&a, &b| self.keys.get(a as usize).cmp(&self.keys.get(b as usize)));
                    t.tx_selected = Some(ids);
                }
            }
        }
        if let Some(c) = r.chain.as_deref_mut() {
            self.select(c);
        }
    }
}

/// No key id ([`SelKeys`]).
pub(crate) const NO_KEY: u8 = u8::MAX;

/// Most key ids ([`SelKeys`]): one bit each in a slot's mask.
const SEL_KEYS: usize = 64;

/// Longest key given an id ([`SelKeys`]).
const SEL_KEY_LEN: usize = 64;

/// The keys targets select in stored collections (`REQUEST_HEADERS:Referer`,
/// `REQUEST_COOKIES:/*`), lowercased, each given an id (up to
/// [`SEL_KEYS`]): a stored value gets the id of its key when it is stored,
/// so that such a target compares ids instead of keys, and passes over a
/// collection whose mask of key ids lacks its own.
#[derive(Debug)]
pub(crate) struct SelKeys {
    ids: HashMap<Box<[u8]>, u8, SeededState>,
    /// The longest key with an id.
    longest: usize,
    /// The lengths of the keys with an id, one bit each.
    lengths: u128,
}

impl SelKeys {
    fn new(seed: u64) -> SelKeys {
        SelKeys {
            ids: HashMap::with_hasher(SeededState(seed)),
            longest: 0,
            lengths: 0,
        }
    }

    /// The id of `key`, compared ASCII-case-insensitively, or [`NO_KEY`].
    pub(crate) fn id(&self, key: &str) -> u8 {
        if key.len() > self.longest
            || self.lengths & 1u128.checked_shl(key.len() as u32).unwrap_or(0) == 0
        {
            return NO_KEY;
        }
        let mut buf = [0u8; SEL_KEY_LEN];
        let Some(low) = buf.get_mut(..key.len()) else {
            return NO_KEY;
        };
        low.copy_from_slice(key.as_bytes());
        low.make_ascii_lowercase();
        self.ids.get(&*low).copied().unwrap_or(NO_KEY)
    }

    fn intern_rule(&mut self, r: &mut Rule) {
        if let RuleBody::Match { targets, .. } = &mut r.body {
            for t in &mut targets.targets {
                let Selector::Key(k) = &t.selector else {
                    continue;
                };
                if !matches!(t.var.kind(), Kind::Keyed | Kind::Names(_)) || k.len() > SEL_KEY_LEN {
                    continue;
                }
                let k = k.to_ascii_lowercase().into_bytes().into_boxed_slice();
                let next = self.ids.len();
                t.key_id = match self.ids.get(&k) {
                    Some(&id) => Some(id),
                    None if next < SEL_KEYS => {
                        let id = u8::try_from(next).unwrap_or(NO_KEY);
                        self.longest = self.longest.max(k.len());
                        self.lengths |= 1u128.checked_shl(k.len() as u32).unwrap_or(0);
                        self.ids.insert(k, id);
                        Some(id)
                    }
                    None => None,
                };
            }
        }
        r.skip_slots = match (&r.body, r.skip_bytes) {
            (RuleBody::Match { targets, .. }, skip)
                if skip.is_some() || targets.targets.iter().any(|t| t.key_id.is_some()) =>
            {
                targets
                    .targets
                    .iter()
                    .take(crate::rule::SKIP_SLOTS)
                    .map(|t| {
                        let (var, keys) = match t.var.kind() {
                            _ if t.count => return None,
                            Kind::Keyed | Kind::Scalar => (t.var, false),
                            Kind::Names(src) => (src, true),
                            _ => return None,
                        };
                        match (skip, t.key_id) {
                            (None, None) => None,
                            (_, id) => Some((var as u8, keys, id.unwrap_or(NO_KEY))),
                        }
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        if let Some(c) = r.chain.as_deref_mut() {
            self.intern_rule(c);
        }
    }
}

/// Fills [`Rule::tx_compare`] for a link and its chain, once TX keys have
/// their ids.
fn set_tx_compare(r: &mut Rule) {
    r.tx_compare = tx_compare(r);
    if let Some(c) = r.chain.as_deref_mut() {
        set_tx_compare(c);
    }
}

/// A link whose only target is one TX key (its value, or with `&` whether
/// it is set), with no exclusion and no transformation, compared by a
/// numeric operator with a number written in the rule.
fn tx_compare(r: &Rule) -> Option<TxCompare> {
    let RuleBody::Match { targets, op } = &r.body else {
        return None;
    };
    let [t] = targets.targets.as_slice() else {
        return None;
    };
    if t.var != VarName::Tx
        || !matches!(t.selector, Selector::Key(_))
        || !targets.exclusions.is_empty()
        || !r.actions.transforms.is_empty()
    {
        return None;
    }
    let Op::Num(cmp, m) = &op.op else {
        return None;
    };
    Some(TxCompare {
        tx_id: t.tx_id?,
        count: t.count,
        cmp: *cmp,
        value: atoi(m.as_literal()?.as_bytes()),
        negated: op.negated,
    })
}

/// The literal prefilters of the `@rx` operators of a rule and its chain.
fn prefilters(r: &Rule) -> Vec<&Prefilter> {
    let mut out = Vec::new();
    let mut link = Some(r);
    while let Some(l) = link {
        if let RuleBody::Match {
            op: Operator { op: Op::Rx(rx), .. },
            ..
        } = &l.body
        {
            out.extend(rx.prefilter());
        }
        link = l.chain.as_deref();
    }
    out
}

/// For every tag regex a `ctl` can name at run time, which rules (by index)
/// carry a matching tag, so that a transaction never runs it per rule.
fn tag_sets(rules: &[Rule]) -> HashMap<String, Vec<bool>> {
    fn ctl_regexes<'a>(r: &'a Rule, out: &mut Vec<&'a regex::Regex>) {
        for c in &r.actions.ctls {
            match c {
                Ctl::RuleRemoveByTag(re) | Ctl::RuleRemoveTargetByTag(re, _) => out.push(re),
                _ => {}
            }
        }
        if let Some(c) = &r.chain {
            ctl_regexes(c, out);
        }
    }
    let mut res = Vec::new();
    for r in rules {
        ctl_regexes(r, &mut res);
    }
    let mut out = HashMap::new();
    for re in res {
        out.entry(re.as_str().to_string())
            .or_insert_with(|| rules.iter().map(|r| r.has_tag(re)).collect());
    }
    out
}

/// One phase's rules in order, markers left out, and aligned with them
/// the position to resume at when the rule there has `skipAfter` and
/// matches (past the named marker or rule; the end when there is none
/// after it). The positions are worked out on the phase's list with every
/// marker in it, as `skipAfter` may name a marker from any phase; markers
/// do nothing when reached, so the list a transaction walks leaves them out.
fn phase_plan(rules: &[Rule], phase: usize) -> (Vec<usize>, Vec<usize>) {
    let full: Vec<usize> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.marker_name().is_some() || usize::from(r.phase) == phase)
        .map(|(i, _)| i)
        .collect();
    let targets = skip_after_targets(rules, &full);
    // position in the list without markers of each position in `full`
    // (and of its end)
    let mut compact_at = Vec::with_capacity(full.len() + 1);
    let mut list = Vec::with_capacity(full.len());
    let mut resume = Vec::with_capacity(full.len());
    for (&idx, &target) in full.iter().zip(&targets) {
        compact_at.push(list.len());
        if rules.get(idx).is_some_and(|r| r.marker_name().is_none()) {
            list.push(idx);
            resume.push(target);
        }
    }
    compact_at.push(list.len());
    for r in &mut resume {
        *r = compact_at.get(*r).copied().unwrap_or(list.len());
    }
    (list, resume)
}

/// For each position of a phase's rule list, where evaluation resumes after
/// that rule's `skipAfter` fires: just past the first later marker of that
/// name (or rule with that id), else the end of the list. Positions whose
/// rule has no `skipAfter` get the end too; they are never read.
fn skip_after_targets(rules: &[Rule], list: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(list.len());
    for (pos, &idx) in list.iter().enumerate() {
        let target = rules.get(idx).and_then(|r| r.actions.skip_after.as_deref());
        let Some(target) = target else {
            out.push(list.len());
            continue;
        };
        let id: Option<u64> = target.parse().ok();
        let found = list.iter().enumerate().skip(pos + 1).find(|(_, &j)| {
            rules.get(j).is_some_and(|r| {
                r.marker_name() == Some(target) || (id.is_some() && Some(r.id) == id)
            })
        });
        out.push(found.map_or(list.len(), |(p, _)| p + 1));
    }
    out
}

fn uses_fancy(r: &Rule) -> bool {
    let mine = matches!(&r.body, RuleBody::Match { op: Operator { op: Op::Rx(rx), .. }, .. } if rx.engine() == RxEngine::Fancy);
    mine || r.chain.as_deref().is_some_and(uses_fancy)
}

/// Warns about each link of `r` whose operator can never match here.
fn unavailable(r: &Rule, warnings: &mut Vec<String>) {
    if let RuleBody::Match {
        op: Operator {
            op: Op::Unavailable(why),
            ..
        },
        ..
    } = &r.body
    {
        warnings.push(format!("{}: {why}", r.at));
    }
    if let Some(c) = r.chain.as_deref() {
        unavailable(c, warnings);
    }
}

fn merge_actions(dst: &mut Actions, upd: &Actions) {
    if upd.disruptive.is_some() {
        dst.disruptive = upd.disruptive.clone();
    }
    if upd.msg.is_some() {
        dst.msg = upd.msg.clone();
    }
    if upd.logdata.is_some() {
        dst.logdata = upd.logdata.clone();
    }
    if upd.severity.is_some() {
        dst.severity = upd.severity;
    }
    if upd.status.is_some() {
        dst.status = upd.status;
    }
    if upd.t_none {
        dst.transforms.clear();
    }
    dst.transforms.extend(upd.transforms.iter().copied());
    dst.tags.extend(upd.tags.iter().cloned());
    dst.setvars.extend(upd.setvars.iter().cloned());
    dst.ctls.extend(upd.ctls.iter().cloned());
    dst.log = upd.log.or(dst.log);
    dst.auditlog = upd.auditlog.or(dst.auditlog);
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expands wildcards in the last path component (sorted, as Apache does).
fn expand_glob(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !has_wildcard(&name) {
        return Ok(if path.exists() {
            vec![path.to_path_buf()]
        } else {
            vec![]
        });
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(parent)? {
        let entry = entry?;
        let fname = entry.file_name().to_string_lossy().into_owned();
        if wildcard_match(name.as_bytes(), fname.as_bytes()) && entry.path().is_file() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn wildcard_match(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(p.get(1..).unwrap_or(&[]), s)
                || (!s.is_empty() && wildcard_match(p, s.get(1..).unwrap_or(&[])))
        }
        (Some(b'?'), Some(_)) => {
            wildcard_match(p.get(1..).unwrap_or(&[]), s.get(1..).unwrap_or(&[]))
        }
        (Some(a), Some(b)) if a == b => {
            wildcard_match(p.get(1..).unwrap_or(&[]), s.get(1..).unwrap_or(&[]))
        }
        _ => false,
    }
}

fn on_off(v: &str, at: &Location) -> Result<bool, Error> {
    match v.to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(syntax(at, format!("expected On or Off, got `{v}`"))),
    }
}

fn number(v: &str, at: &Location) -> Result<usize, Error> {
    v.parse()
        .map_err(|_| syntax(at, format!("expected a number, got `{v}`")))
}

/// A loaded, compiled rule set. Cheap to share (`Arc<Waf>`); every request
/// is evaluated with [`Waf::evaluate`].
#[derive(Debug)]
pub struct Waf {
    pub(crate) rules: Vec<Rule>,
    /// Indices into `rules` per phase, without the markers.
    pub(crate) by_phase: [Vec<usize>; 6],
    /// Per phase, aligned with `by_phase`: the list position to resume at
    /// when the rule there matches and has `skipAfter`.
    pub(crate) skip_after: [Vec<usize>; 6],
    /// Per tag regex named by a `ctl` (by source): which rules, by index in
    /// `rules`, it selects.
    pub(crate) tag_sets: HashMap<String, Vec<bool>>,
    /// Per transformation-chain node: the bytes a value must hold for the
    /// chain up to that node to change it (`None`: it may change any
    /// value). A value lacking them all skips the chain and its cache.
    pub(crate) tf_triggers: Vec<Option<ByteSet>>,
    /// The TX keys the rules name, by id ([`TxKeys`]).
    pub(crate) tx_keys: Vec<String>,
    /// The id of each key in `tx_keys`.
    pub(crate) tx_ids: HashMap<String, u32, SeededState>,
    /// The keys targets select in stored collections, by id.
    pub(crate) sel_keys: SelKeys,
    /// Random seed of the transaction's TX hash maps.
    pub(crate) hash_seed: u64,
    pub(crate) config: Config,
    warnings: Vec<String>,
    /// Unique per built engine, so that [`crate::Exclusions`] resolved
    /// against one engine are never read as tables of another.
    pub(crate) id: u64,
}

/// Source of [`Waf::id`].
static NEXT_WAF_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Waf {
    /// Starts loading a rule set.
    pub fn builder() -> WafBuilder {
        WafBuilder::new()
    }

    /// Loads one file (and its Includes).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Waf, Error> {
        WafBuilder::new().load_file(path)?.build()
    }

    /// Loads rule text; `name` is used in errors and to resolve relative paths.
    pub fn from_str_named(name: impl AsRef<Path>, text: &str) -> Result<Waf, Error> {
        WafBuilder::new().load_str(name, text)?.build()
    }

    /// Number of rules with an id (chains count once; markers not at all).
    pub fn rule_count(&self) -> usize {
        self.rules.iter().filter(|r| r.id != 0).count()
    }

    /// Load-time warnings: ignored directives, backtracking regexes.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The engine settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True when a rule with this id is loaded.
    pub fn has_rule(&self, id: u64) -> bool {
        self.rules.iter().any(|r| r.id == id)
    }

    /// The number of `@rx` operators compiled by each engine:
    /// `(regex crate, fancy-regex)`.
    pub fn regex_engine_counts(&self) -> (usize, usize) {
        fn walk(r: &Rule, acc: &mut (usize, usize)) {
            if let RuleBody::Match {
                op: Operator { op: Op::Rx(rx), .. },
                ..
            } = &r.body
            {
                match rx.engine() {
                    RxEngine::Fast => acc.0 += 1,
                    RxEngine::Fancy => acc.1 += 1,
                }
            }
            if let Some(c) = &r.chain {
                walk(c, acc);
            }
        }
        let mut acc = (0, 0);
        for r in &self.rules {
            walk(r, &mut acc);
        }
        acc
    }
}
