//! The time index: for each sealed segment of a tier, the oldest and the
//! newest time among its records, so that a search bounded in time opens
//! only the segments that can hold a match instead of every segment the
//! tier keeps (a year of a busy tier is hundreds of gigabytes).
//!
//! Record times are stamped by the callers and may run backwards (a clock
//! stepped back, threads queueing out of order), so neither the segment
//! numbers nor their creation times bound them: the writer notes each
//! segment's true span as it writes and appends one line,
//! `<segment> <oldest> <newest>` in Unix nanoseconds, to `<tier>/times`
//! once the segment is sealed and durable.
//!
//! The index only lets a search pass segments over; it is never trusted
//! for what a search returns (the records are). A segment without a line
//! (sealed before this index existed, or by a writer that crashed between
//! sealing it and writing its line), and any line that does not parse, mean
//! "read the segment". `verify` compares every line with its segment, so an
//! index edited to hide records from searches is reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::checkpoint::{append_line, read_lines};
use crate::error::AuditError;
use crate::event::Tier;

/// The index file's name in a tier's directory.
const FILE: &str = "times";

/// The oldest and newest record time of a segment, in Unix nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) oldest: u64,
    pub(crate) newest: u64,
}

impl Span {
    /// The span of one record.
    pub(crate) fn at(t: u64) -> Span {
        Span {
            oldest: t,
            newest: t,
        }
    }

    /// This span widened to take in `t`.
    pub(crate) fn with(self, t: u64) -> Span {
        Span {
            oldest: self.oldest.min(t),
            newest: self.newest.max(t),
        }
    }

    /// Whether a record in this span can fall in `[from, to)`.
    pub(crate) fn meets(&self, from: Option<u64>, to: Option<u64>) -> bool {
        from.is_none_or(|f| self.newest >= f) && to.is_none_or(|t| self.oldest < t)
    }
}

/// Widens an optional span to take in `t`.
pub(crate) fn widen(span: Option<Span>, t: u64) -> Option<Span> {
    Some(span.map_or(Span::at(t), |s| s.with(t)))
}

/// The index file of the tier directory `tier_dir`.
pub(crate) fn path(tier_dir: &Path) -> PathBuf {
    tier_dir.join(FILE)
}

/// Appends `segment`'s span and makes it durable. One write of the whole
/// line: a crash leaves at most a torn last line, which counts as no line.
pub(crate) fn append(tier_dir: &Path, segment: u64, span: Span) -> Result<(), AuditError> {
    let line = format!("{segment} {} {}\n", span.oldest, span.newest);
    append_line(&path(tier_dir), line.as_bytes())
}

/// The spans the index holds, by segment number; a missing file is an empty
/// index, a line that does not parse is passed over.
pub(crate) fn load(tier_dir: &Path) -> Result<HashMap<u64, Span>, AuditError> {
    let mut spans = HashMap::new();
    read_lines(&path(tier_dir), &mut |_, line| {
        if let Some((segment, span)) = parse(line) {
            spans.insert(segment, span);
        }
    })?;
    Ok(spans)
}

/// [`load`], or an empty index when the file cannot be read, with a
/// warning that ends with what the caller does `instead`: the index is only
/// an aid, and a segment without a line is read.
pub(crate) fn load_or_empty(tier: Tier, tier_dir: &Path, instead: &str) -> HashMap<u64, Span> {
    load(tier_dir).unwrap_or_else(|e| {
        tracing::warn!(%tier, error = %e, "cannot read the audit time index; {instead}");
        HashMap::new()
    })
}

/// One line: `<segment> <oldest> <newest>`, oldest not after newest.
fn parse(line: &[u8]) -> Option<(u64, Span)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut fields = text.split(' ');
    let mut num = || fields.next()?.parse::<u64>().ok();
    let (segment, oldest, newest) = (num()?, num()?, num()?);
    if fields.next().is_some() || oldest > newest {
        return None;
    }
    Some((segment, Span { oldest, newest }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_appended_and_read_back_and_bad_lines_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        append(dir.path(), 0, Span::at(5).with(9).with(3)).unwrap();
        append(dir.path(), 1, Span::at(10)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path(dir.path()))
            .unwrap();
        // a line too many fields, one backwards, one not a number, then a
        // torn last line
        std::io::Write::write_all(&mut f, b"2 1 2 3\n3 9 8\nx 1 2\n4 1 2\n5 1").unwrap();
        let spans = load(dir.path()).unwrap();
        assert_eq!(spans.len(), 3, "{spans:?}");
        assert_eq!(
            spans.get(&0),
            Some(&Span {
                oldest: 3,
                newest: 9
            })
        );
        assert_eq!(spans.get(&1), Some(&Span::at(10)));
        assert_eq!(
            spans.get(&4),
            Some(&Span {
                oldest: 1,
                newest: 2
            })
        );
        assert!(!spans.contains_key(&5));
    }

    #[test]
    fn a_span_meets_a_range_that_can_hold_one_of_its_records() {
        let s = Span {
            oldest: 10,
            newest: 20,
        };
        assert!(s.meets(None, None));
        assert!(s.meets(Some(20), None));
        assert!(!s.meets(Some(21), None));
        assert!(s.meets(None, Some(11)));
        // `to` is exclusive
        assert!(!s.meets(None, Some(10)));
        assert!(s.meets(Some(0), Some(100)));
        assert!(s.meets(Some(15), Some(16)));
        assert!(!s.meets(Some(0), Some(5)));
        assert_eq!(widen(None, 7), Some(Span::at(7)));
        assert_eq!(
            widen(Some(s), 30),
            Some(Span {
                oldest: 10,
                newest: 30
            })
        );
    }
}
