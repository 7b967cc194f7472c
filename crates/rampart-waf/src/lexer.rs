//! Splits SecLang text into directives: joins `\` continuation lines, drops
//! comments and splits arguments the way Apache's config reader does (inside
//! quotes only an escaped quote loses its backslash, so regexes survive).

use crate::error::{syntax, Error, Location};
use std::path::Path;

/// One directive with its arguments, quotes removed.
#[derive(Debug, Clone)]
pub(crate) struct Directive {
    pub name: String,
    pub args: Vec<String>,
    pub at: Location,
}

/// Splits `text` (read from `file`) into directives.
pub(crate) fn lex(file: &Path, text: &str) -> Result<Vec<Directive>, Error> {
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut start_line = 0usize;
    let mut continuing = false;
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if !continuing {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            start_line = line_no;
            logical.clear();
        }
        let body = line.trim_end();
        if let Some(head) = body.strip_suffix('\\') {
            logical.push_str(head);
            continuing = true;
            continue;
        }
        logical.push_str(body);
        continuing = false;
        let at = Location {
            file: file.to_path_buf(),
            line: start_line,
        };
        if let Some(d) = split(&logical, &at)? {
            out.push(d);
        }
    }
    if continuing {
        let at = Location {
            file: file.to_path_buf(),
            line: start_line,
        };
        if let Some(d) = split(&logical, &at)? {
            out.push(d);
        }
    }
    Ok(out)
}

fn split(line: &str, at: &Location) -> Result<Option<Directive>, Error> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '\\' && chars.peek() == Some(&first) {
                    word.push(first);
                    chars.next();
                } else if c == first {
                    closed = true;
                    break;
                } else {
                    word.push(c);
                }
            }
            if !closed {
                return Err(syntax(at, format!("unterminated {first}-quoted argument")));
            }
            if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                return Err(syntax(at, "missing space after a quoted argument"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    let mut it = words.into_iter();
    let Some(name) = it.next() else {
        return Ok(None);
    };
    Ok(Some(Directive {
        name,
        args: it.collect(),
        at: at.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex_str(s: &str) -> Vec<Directive> {
        lex(Path::new("t.conf"), s).unwrap()
    }

    #[test]
    fn continuation_and_quotes() {
        let d = lex_str(
            "# c\n\nSecRule ARGS \"@rx a\\\"b\\d\" \\\n    \"id:1,\\\n    msg:'x'\"\nSecMarker END\n",
        );
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "SecRule");
        assert_eq!(d[0].args, vec!["ARGS", "@rx a\"b\\d", "id:1,    msg:'x'"]);
        assert_eq!(d[0].at.line, 3);
        assert_eq!(d[1].at.line, 6);
    }

    #[test]
    fn unterminated_quote_reports_line() {
        let e = lex(Path::new("x.conf"), "\n\nSecRule ARGS \"@rx a").unwrap_err();
        assert_eq!(e.to_string(), "x.conf:3: unterminated \"-quoted argument");
    }
}
