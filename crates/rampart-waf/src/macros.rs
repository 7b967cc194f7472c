//! Macro expansion (`%{tx.anomaly_score}`, `%{MATCHED_VAR}`, `%{rule.id}`),
//! parsed once at load into literal and variable segments.

use crate::variables::VarName;

/// One piece of a macro string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// Literal text.
    Lit(String),
    /// The first value of a variable, optionally by key (lowercased), and
    /// for a TX key the rules name, its id (filled by
    /// [`crate::engine::WafBuilder::build`]).
    Var(VarName, Option<String>, Option<u32>),
    /// A field of the current rule (`id`, `msg`, `severity`, …), lowercase.
    Rule(String),
}

/// A string with `%{…}` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Macro {
    pub segs: Vec<Seg>,
}

impl Macro {
    /// Parses `text`; unknown references stay literal, as in ModSecurity.
    pub(crate) fn parse(text: &str) -> Macro {
        let mut segs = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(pos) = rest.find("%{") {
            let (before, after) = rest.split_at(pos);
            lit.push_str(before);
            let inner_start = after.get(2..).unwrap_or("");
            let Some(end) = inner_start.find('}') else {
                lit.push_str(after);
                rest = "";
                break;
            };
            let inner = inner_start.get(..end).unwrap_or("");
            let (name, key) = match inner.split_once(['.', ':']) {
                Some((n, k)) => (n, Some(k.to_ascii_lowercase())),
                None => (inner, None),
            };
            let seg = if name.eq_ignore_ascii_case("rule") {
                key.map(Seg::Rule)
            } else {
                VarName::parse(name).map(|v| Seg::Var(v, key, None))
            };
            match seg {
                Some(seg) => {
                    if !lit.is_empty() {
                        segs.push(Seg::Lit(std::mem::take(&mut lit)));
                    }
                    segs.push(seg);
                }
                None => {
                    lit.push_str("%{");
                    lit.push_str(inner);
                    lit.push('}');
                }
            }
            rest = inner_start.get(end + 1..).unwrap_or("");
        }
        lit.push_str(rest);
        if !lit.is_empty() || segs.is_empty() {
            segs.push(Seg::Lit(lit));
        }
        Macro { segs }
    }

    /// The text when there are no references.
    pub(crate) fn as_literal(&self) -> Option<&str> {
        match self.segs.as_slice() {
            [Seg::Lit(s)] => Some(s),
            _ => None,
        }
    }

    /// Sets the id of every TX key it reads (`id` interns a key).
    pub(crate) fn intern_tx(&mut self, id: &mut impl FnMut(&str) -> u32) {
        for seg in &mut self.segs {
            if let Seg::Var(VarName::Tx, Some(k), slot) = seg {
                *slot = Some(id(k));
            }
        }
    }

    /// Expands with `lookup` resolving each reference (absent → empty).
    pub(crate) fn expand(&self, mut lookup: impl FnMut(&Seg) -> Option<Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.extend_from_slice(s.as_bytes()),
                other => {
                    if let Some(v) = lookup(other) {
                        out.extend_from_slice(&v);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_segments() {
        let m = Macro::parse("Matched %{TX.0} in %{MATCHED_VAR_NAME}: %{rule.id} %{nope}");
        assert_eq!(
            m.segs,
            vec![
                Seg::Lit("Matched ".into()),
                Seg::Var(VarName::Tx, Some("0".into()), None),
                Seg::Lit(" in ".into()),
                Seg::Var(VarName::MatchedVarName, None, None),
                Seg::Lit(": ".into()),
                Seg::Rule("id".into()),
                Seg::Lit(" %{nope}".into()),
            ]
        );
        assert_eq!(Macro::parse("abc").as_literal(), Some("abc"));
    }
}
