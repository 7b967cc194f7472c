//! Rule actions (`id:1,phase:2,deny,t:lowercase,setvar:tx.x=+1,…`).

use crate::error::{syntax, Error, Location};
use crate::macros::Macro;
use crate::transformations::Transform;
use crate::variables::{parse_selector, Exclusion, Kind, VarName};

/// What a rule does to the request when it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Disruptive {
    Pass,
    Deny,
    Drop,
    Block,
    Allow(AllowScope),
    Redirect(String),
}

/// `allow`, `allow:phase`, `allow:request`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AllowScope {
    All,
    Phase,
    Request,
}

/// Engine mode (`SecRuleEngine`, `ctl:ruleEngine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineMode {
    /// Rules run and disruptive actions are enforced.
    On,
    /// No rule runs.
    Off,
    /// Rules run and are reported, but nothing is blocked.
    DetectionOnly,
}

impl EngineMode {
    pub(crate) fn parse(s: &str) -> Option<EngineMode> {
        match s.to_ascii_lowercase().as_str() {
            "on" => Some(EngineMode::On),
            "off" => Some(EngineMode::Off),
            "detectiononly" => Some(EngineMode::DetectionOnly),
            _ => None,
        }
    }
}

/// Request body processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyProcessor {
    UrlEncoded,
    Multipart,
    Json,
    Xml,
}

impl BodyProcessor {
    pub(crate) fn parse(s: &str) -> Option<BodyProcessor> {
        match s.to_ascii_uppercase().as_str() {
            "URLENCODED" => Some(BodyProcessor::UrlEncoded),
            "MULTIPART" => Some(BodyProcessor::Multipart),
            "JSON" => Some(BodyProcessor::Json),
            "XML" => Some(BodyProcessor::Xml),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            BodyProcessor::UrlEncoded => "URLENCODED",
            BodyProcessor::Multipart => "MULTIPART",
            BodyProcessor::Json => "JSON",
            BodyProcessor::Xml => "XML",
        }
    }
}

/// A `setvar` action.
#[derive(Debug, Clone)]
pub(crate) struct SetVar {
    pub coll: VarName,
    pub key: Macro,
    pub op: SetOp,
    /// The id of a literal TX key (filled by
    /// [`crate::engine::WafBuilder::build`]).
    pub key_id: Option<u32>,
}

/// What `setvar` does.
#[derive(Debug, Clone)]
pub(crate) enum SetOp {
    Set(Macro),
    Add(Macro),
    Sub(Macro),
    Delete,
}

/// An inclusive range of rule ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdRange(pub u64, pub u64);

impl IdRange {
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.0 <= id && id <= self.1
    }
}

/// Parses `1 2-5,9` into id ranges.
pub(crate) fn parse_id_ranges(s: &str, at: &Location) -> Result<Vec<IdRange>, Error> {
    let mut out = Vec::new();
    for part in s.split([' ', ',', '\t']).filter(|p| !p.is_empty()) {
        let parse = |x: &str| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| syntax(at, format!("bad rule id `{part}`")))
        };
        out.push(match part.split_once('-') {
            Some((a, b)) => IdRange(parse(a)?, parse(b)?),
            None => {
                let v = parse(part)?;
                IdRange(v, v)
            }
        });
    }
    Ok(out)
}

/// A `ctl` action.
#[derive(Debug, Clone)]
pub(crate) enum Ctl {
    RuleEngine(EngineMode),
    RuleRemoveById(Vec<IdRange>),
    RuleRemoveByTag(regex::Regex),
    RuleRemoveTargetById(Vec<IdRange>, Exclusion),
    RuleRemoveTargetByTag(regex::Regex, Exclusion),
    RequestBodyProcessor(BodyProcessor),
    RequestBodyAccess(bool),
    ForceRequestBodyVariable(bool),
    ResponseBodyAccess(bool),
    /// Audit-log settings: no effect on the verdict.
    Ignored,
}

/// Every action of one rule (or chain link).
#[derive(Debug, Clone, Default)]
pub(crate) struct Actions {
    pub id: Option<u64>,
    pub phase: Option<u8>,
    pub disruptive: Option<Disruptive>,
    pub status: Option<u16>,
    pub chain: bool,
    pub msg: Option<Macro>,
    pub logdata: Option<Macro>,
    pub tags: Vec<String>,
    pub severity: Option<u8>,
    pub ver: Option<String>,
    pub capture: bool,
    pub multi_match: bool,
    pub log: Option<bool>,
    pub auditlog: Option<bool>,
    /// `t:none` seen: default transformations do not apply.
    pub t_none: bool,
    pub transforms: Vec<Transform>,
    pub setvars: Vec<SetVar>,
    pub ctls: Vec<Ctl>,
    pub skip: u32,
    pub skip_after: Option<String>,
}

/// Splits an action list on commas outside single quotes.
fn split_actions(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted && chars.peek() == Some(&'\'') => {
                cur.push('\'');
                chars.next();
            }
            '\'' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect()
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .unwrap_or(v)
}

/// Severity names and numbers to 0–7.
fn severity(v: &str) -> Option<u8> {
    Some(match v.to_ascii_uppercase().as_str() {
        "EMERGENCY" | "0" => 0,
        "ALERT" | "1" => 1,
        "CRITICAL" | "2" => 2,
        "ERROR" | "3" => 3,
        "WARNING" | "4" => 4,
        "NOTICE" | "5" => 5,
        "INFO" | "6" => 6,
        "DEBUG" | "7" => 7,
        _ => return None,
    })
}

fn unsupported(at: &Location, name: &str) -> Error {
    Error::Unsupported {
        at: at.clone(),
        kind: "action",
        name: name.to_string(),
    }
}

/// Parses an action list.
pub(crate) fn parse_actions(s: &str, at: &Location) -> Result<Actions, Error> {
    let mut a = Actions::default();
    for item in split_actions(s) {
        let (name, value) = match item.split_once(':') {
            Some((n, v)) => (n.trim(), Some(unquote(v))),
            None => (item.as_str(), None),
        };
        let need = || value.ok_or_else(|| syntax(at, format!("action `{name}` needs a value")));
        match name.to_ascii_lowercase().as_str() {
            "id" => {
                let v = need()?;
                a.id = Some(
                    v.parse()
                        .map_err(|_| syntax(at, format!("bad rule id `{v}`")))?,
                );
            }
            "phase" => {
                let v = need()?;
                a.phase = Some(match v.to_ascii_lowercase().as_str() {
                    "request" => 2,
                    "response" => 4,
                    "logging" => 5,
                    n => match n.parse::<u8>() {
                        Ok(p @ 1..=5) => p,
                        _ => return Err(syntax(at, format!("bad phase `{v}`"))),
                    },
                });
            }
            "chain" => a.chain = true,
            "pass" => a.disruptive = Some(Disruptive::Pass),
            "deny" => a.disruptive = Some(Disruptive::Deny),
            "drop" => a.disruptive = Some(Disruptive::Drop),
            "block" => a.disruptive = Some(Disruptive::Block),
            "allow" => {
                a.disruptive = Some(Disruptive::Allow(
                    match value.map(str::to_ascii_lowercase).as_deref() {
                        None => AllowScope::All,
                        Some("phase") => AllowScope::Phase,
                        Some("request") => AllowScope::Request,
                        Some(v) => return Err(syntax(at, format!("bad allow scope `{v}`"))),
                    },
                ))
            }
            "redirect" => a.disruptive = Some(Disruptive::Redirect(need()?.to_string())),
            "status" => {
                let v = need()?;
                a.status = Some(
                    v.parse()
                        .map_err(|_| syntax(at, format!("bad status `{v}`")))?,
                );
            }
            "msg" => a.msg = Some(Macro::parse(need()?)),
            "logdata" => a.logdata = Some(Macro::parse(need()?)),
            "tag" => a.tags.push(need()?.to_string()),
            "severity" => {
                let v = need()?;
                a.severity =
                    Some(severity(v).ok_or_else(|| syntax(at, format!("bad severity `{v}`")))?);
            }
            "ver" => a.ver = Some(need()?.to_string()),
            "rev" | "maturity" | "accuracy" => {}
            "capture" => a.capture = true,
            "multimatch" => a.multi_match = true,
            "log" => a.log = Some(true),
            "nolog" => a.log = Some(false),
            "auditlog" => a.auditlog = Some(true),
            "noauditlog" => a.auditlog = Some(false),
            "t" => {
                let v = need()?;
                if v.eq_ignore_ascii_case("none") {
                    a.t_none = true;
                    a.transforms.clear();
                } else {
                    a.transforms
                        .push(Transform::parse(v).ok_or_else(|| Error::Unsupported {
                            at: at.clone(),
                            kind: "transformation",
                            name: v.to_string(),
                        })?);
                }
            }
            "setvar" => a.setvars.push(parse_setvar(need()?, at)?),
            "ctl" => a.ctls.push(parse_ctl(need()?, at)?),
            "skip" => {
                let v = need()?;
                a.skip = v
                    .parse()
                    .map_err(|_| syntax(at, format!("bad skip `{v}`")))?;
            }
            "skipafter" => a.skip_after = Some(need()?.to_string()),
            // Persistence and environment: no effect on this transaction's verdict.
            "initcol"
            | "expirevar"
            | "setuid"
            | "setsid"
            | "setenv"
            | "deprecatevar"
            | "sanitisearg"
            | "sanitisematched"
            | "sanitisematchedbytes"
            | "sanitiserequestheader"
            | "sanitiseresponseheader"
            | "xmlns"
            | "auditlogparts" => {}
            _ => return Err(unsupported(at, name)),
        }
    }
    Ok(a)
}

fn parse_setvar(v: &str, at: &Location) -> Result<SetVar, Error> {
    let (delete, v) = match v.strip_prefix('!') {
        Some(r) => (true, r),
        None => (false, v),
    };
    let (lhs, op) = match v.split_once('=') {
        None if delete => (v, SetOp::Delete),
        None => (v, SetOp::Set(Macro::parse("1"))),
        Some((l, r)) => {
            if let Some(x) = r.strip_prefix('+') {
                (l, SetOp::Add(Macro::parse(x)))
            } else if let Some(x) = r.strip_prefix('-') {
                (l, SetOp::Sub(Macro::parse(x)))
            } else {
                (l, SetOp::Set(Macro::parse(r)))
            }
        }
    };
    let (coll, key) = lhs
        .trim()
        .split_once('.')
        .ok_or_else(|| syntax(at, format!("setvar needs COLLECTION.key: `{v}`")))?;
    let coll = VarName::parse(coll)
        .filter(|c| matches!(c.kind(), Kind::Tx | Kind::Persist))
        .ok_or_else(|| syntax(at, format!("setvar on unknown collection `{coll}`")))?;
    Ok(SetVar {
        coll,
        key: Macro::parse(&key.to_ascii_lowercase()),
        op,
        key_id: None,
    })
}

fn on_off(v: &str, at: &Location) -> Result<bool, Error> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(syntax(at, format!("expected On or Off, got `{v}`"))),
    }
}

pub(crate) fn target_exclusion(t: &str, at: &Location) -> Result<Exclusion, Error> {
    let (name, key) = match t.split_once(':') {
        Some((n, k)) => (n, Some(k)),
        None => (t, None),
    };
    let var = VarName::parse(name.trim()).ok_or_else(|| Error::Unsupported {
        at: at.clone(),
        kind: "variable",
        name: name.to_string(),
    })?;
    let selector = match key {
        Some(k) => parse_selector(k, at)?,
        None => crate::variables::Selector::All,
    };
    Ok(Exclusion { var, selector })
}

pub(crate) fn tag_regex(s: &str, at: &Location) -> Result<regex::Regex, Error> {
    regex::Regex::new(s).map_err(|e| Error::Regex {
        at: at.clone(),
        message: e.to_string(),
    })
}

fn parse_ctl(v: &str, at: &Location) -> Result<Ctl, Error> {
    let (name, value) = v
        .split_once('=')
        .ok_or_else(|| syntax(at, format!("ctl needs name=value: `{v}`")))?;
    let value = value.trim();
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "ruleengine" => Ctl::RuleEngine(
            EngineMode::parse(value)
                .ok_or_else(|| syntax(at, format!("bad engine mode `{value}`")))?,
        ),
        "ruleremovebyid" => Ctl::RuleRemoveById(parse_id_ranges(value, at)?),
        "ruleremovebytag" => Ctl::RuleRemoveByTag(tag_regex(value, at)?),
        "ruleremovetargetbyid" => {
            let (ids, target) = value
                .split_once(';')
                .ok_or_else(|| syntax(at, "ruleRemoveTargetById needs ID;TARGET"))?;
            Ctl::RuleRemoveTargetById(parse_id_ranges(ids, at)?, target_exclusion(target, at)?)
        }
        "ruleremovetargetbytag" => {
            let (tag, target) = value
                .split_once(';')
                .ok_or_else(|| syntax(at, "ruleRemoveTargetByTag needs TAG;TARGET"))?;
            Ctl::RuleRemoveTargetByTag(tag_regex(tag, at)?, target_exclusion(target, at)?)
        }
        "requestbodyprocessor" => Ctl::RequestBodyProcessor(
            BodyProcessor::parse(value)
                .ok_or_else(|| syntax(at, format!("unknown body processor `{value}`")))?,
        ),
        "requestbodyaccess" => Ctl::RequestBodyAccess(on_off(value, at)?),
        "forcerequestbodyvariable" => Ctl::ForceRequestBodyVariable(on_off(value, at)?),
        "responsebodyaccess" => Ctl::ResponseBodyAccess(on_off(value, at)?),
        "auditengine" | "auditlogparts" | "debugloglevel" | "hashengine" | "hashenforcement" => {
            Ctl::Ignored
        }
        other => return Err(unsupported(at, &format!("ctl:{other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn parses_crs_style_actions() {
        let at = Location {
            file: PathBuf::from("t"),
            line: 1,
        };
        let a = parse_actions(
            "id:942100,    phase:2,block,capture,t:none,t:utf8toUnicode,t:urlDecodeUni,\
             msg:'SQL Injection, detected',logdata:'Matched Data: %{TX.0}',tag:'attack-sqli',\
             severity:'CRITICAL',setvar:'tx.inbound_anomaly_score_pl1=+%{tx.critical_anomaly_score}',\
             ctl:ruleRemoveTargetById=942100;ARGS:pwd,skipAfter:END",
            &at,
        )
        .unwrap();
        assert_eq!(a.id, Some(942100));
        assert_eq!(a.phase, Some(2));
        assert_eq!(a.disruptive, Some(Disruptive::Block));
        assert_eq!(a.transforms.len(), 2);
        assert_eq!(a.severity, Some(2));
        assert_eq!(a.msg.unwrap().as_literal(), Some("SQL Injection, detected"));
        assert!(matches!(a.setvars[0].op, SetOp::Add(_)));
        assert_eq!(a.skip_after.as_deref(), Some("END"));
        assert!(parse_actions("id:1,exec:/bin/sh", &at).is_err());
    }
}
