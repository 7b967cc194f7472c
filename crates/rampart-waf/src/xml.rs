//! The XML request body processor. SecLang addresses an XML body through
//! XPath (`XML:/*`, `XML://@*`); CRS uses only those two expressions, so the
//! document is read once, streaming, into its text nodes and its attribute
//! values instead of building a tree. Nesting depth and the number of values
//! kept are bounded; a document that is not well-formed is an error, which
//! the transaction reports as `REQBODY_ERROR`.

use quick_xml::events::Event;
use quick_xml::Reader;

/// What CRS reads from an XML body.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct XmlValues {
    /// Non-blank text and CDATA nodes, entities decoded, whitespace trimmed
    /// (`XML:/*`).
    pub text: Vec<Vec<u8>>,
    /// Every attribute value, entities decoded (`XML://@*`).
    pub attrs: Vec<Vec<u8>>,
}

/// Parses `body`, refusing nesting deeper than `depth_limit` and keeping at
/// most `value_limit` values of each kind.
pub(crate) fn parse_xml(
    body: &[u8],
    depth_limit: usize,
    value_limit: usize,
) -> Result<XmlValues, String> {
    let mut reader = Reader::from_reader(body);
    let cfg = reader.config_mut();
    cfg.check_end_names = true;
    cfg.check_comments = true;
    cfg.trim_text(false);
    let mut out = XmlValues::default();
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut buf = Vec::new();
    let err = |e: &dyn std::fmt::Display, pos: u64| format!("XML parsing error at byte {pos}: {e}");
    loop {
        buf.clear();
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| err(&e, reader.error_position()))?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if depth == 0 {
                    roots += 1;
                    if roots > 1 {
                        return Err(err(&"more than one root element", reader.buffer_position()));
                    }
                }
                let empty = matches!(ev, Event::Empty(_));
                if !empty {
                    depth += 1;
                    if depth > depth_limit {
                        return Err(format!(
                            "XML nesting exceeds the depth limit of {depth_limit}"
                        ));
                    }
                }
                for a in e.attributes() {
                    let a = a.map_err(|e| err(&e, reader.buffer_position()))?;
                    if out.attrs.len() < value_limit {
                        let v = match a.unescape_value() {
                            Ok(v) => v.into_owned().into_bytes(),
                            Err(_) => a.value.into_owned(),
                        };
                        out.attrs.push(v);
                    }
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) => {
                if depth == 0 {
                    if t.iter().any(|c| !c.is_ascii_whitespace()) {
                        return Err(err(
                            &"text outside the root element",
                            reader.buffer_position(),
                        ));
                    }
                    continue;
                }
                let v = match t.unescape() {
                    Ok(v) => v.into_owned().into_bytes(),
                    Err(_) => t.into_inner().into_owned(),
                };
                push_text(&mut out.text, &v, value_limit);
            }
            Event::CData(c) => {
                if depth == 0 {
                    return Err(err(
                        &"CDATA outside the root element",
                        reader.buffer_position(),
                    ));
                }
                push_text(&mut out.text, &c.into_inner(), value_limit);
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if depth != 0 {
        return Err(err(
            &"unclosed element at end of body",
            reader.buffer_position(),
        ));
    }
    if roots == 0 {
        return Err(err(&"no root element", reader.buffer_position()));
    }
    Ok(out)
}

fn push_text(out: &mut Vec<Vec<u8>>, v: &[u8], limit: usize) {
    let start = v.iter().take_while(|c| c.is_ascii_whitespace()).count();
    let end = v.len()
        - v.iter()
            .rev()
            .take_while(|c| c.is_ascii_whitespace())
            .count();
    if let Some(t) = v.get(start..end) {
        if !t.is_empty() && out.len() < limit {
            out.push(t.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[Vec<u8>]) -> Vec<String> {
        v.iter()
            .map(|x| String::from_utf8_lossy(x).into_owned())
            .collect()
    }

    #[test]
    fn text_and_attributes() {
        let x = parse_xml(
            br#"<?xml version="1.0"?>
<!-- c --><a x="1 &amp; 2"><b y='z'>hi &lt;there&gt;</b>
  <c><![CDATA[<script>]]></c><d/></a>"#,
            16,
            100,
        )
        .unwrap();
        assert_eq!(s(&x.text), ["hi <there>", "<script>"]);
        assert_eq!(s(&x.attrs), ["1 & 2", "z"]);
    }

    #[test]
    fn malformed_is_an_error() {
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"not xml",
            b"<a></a><b></b>",
            b"<a x=1></a>",
            b"<a></a>junk",
            b"",
        ] {
            assert!(
                parse_xml(bad, 16, 100).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn limits() {
        let deep = "<a>".repeat(100_000);
        let e = parse_xml(deep.as_bytes(), 64, 100).unwrap_err();
        assert!(e.contains("depth"), "{e}");
        let many = format!("<r>{}</r>", "<i v=\"x\">t</i>".repeat(50));
        let x = parse_xml(many.as_bytes(), 64, 10).unwrap();
        assert_eq!((x.text.len(), x.attrs.len()), (10, 10));
    }

    #[test]
    fn hostile_bytes_do_not_panic() {
        for b in [
            &b"<a>\0\xff\xfe</a>"[..],
            b"<a \xc0\xaf='1'/>",
            b"<a>&#xD800;&unknown;</a>",
            b"<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><x>&e;</x>",
        ] {
            let _ = parse_xml(b, 16, 100);
        }
    }
}
