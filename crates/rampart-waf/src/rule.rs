//! A compiled rule: targets, operator and actions, with its chain links.

use crate::actions::{Actions, Disruptive};
use crate::error::Location;
use crate::operators::{Cmp, Operator};
use crate::prefilter::ByteSet;
use crate::transformations::TfBytes;
use crate::variables::Targets;

/// What a rule entry is.
#[derive(Debug)]
pub(crate) enum RuleBody {
    /// `SecRule VARS OP ACTIONS`.
    Match { targets: Targets, op: Operator },
    /// `SecAction ACTIONS`: matches unconditionally.
    Action,
    /// `SecMarker NAME`: a target for `skipAfter`, in every phase.
    Marker(String),
}

/// One rule or chain link.
#[derive(Debug)]
pub(crate) struct Rule {
    /// 0 for chain links and markers.
    pub id: u64,
    pub phase: u8,
    pub at: Location,
    pub body: RuleBody,
    pub actions: Actions,
    /// What `block` means for this rule: the phase's default disruptive action.
    pub block_action: Disruptive,
    pub chain: Option<Box<Rule>>,
    /// Filled by [`crate::engine::WafBuilder::build`]: for each of this
    /// link's transformations, the node of the shared chain trie reached
    /// after it (the key of the per-transaction transformation cache).
    pub tf_path: Vec<u32>,
    /// Filled by [`crate::engine::WafBuilder::build`]: when a stored value
    /// holding none of these bytes cannot match this link (it lacks every
    /// byte that would make the transformations change it and every byte
    /// the non-negated operator needs), so it is skipped unread.
    pub skip_bytes: Option<ByteSet>,
    /// Filled by [`crate::engine::WafBuilder::build`] when the link has
    /// `skip_bytes` or a target selecting one key of a stored collection:
    /// per target (up to [`SKIP_SLOTS`]), the stored slot that decides
    /// whether it can yield a value (its index, whether its keys or its
    /// values are read, whose byte union is tested against `skip_bytes`,
    /// and the key's id, [`crate::engine::SelKeys`], or
    /// [`crate::engine::NO_KEY`]); `None` for a target always read (TX, a
    /// count, MATCHED_*, or a whole collection without `skip_bytes`).
    pub skip_slots: Vec<Option<(u8, bool, u8)>>,
    /// Filled by [`crate::engine::WafBuilder::build`] for a link that only
    /// compares one TX value with a number (CRS's paranoia-level gates, its
    /// `&TX:key "@eq 0"` defaults), so that the link is told, and its one
    /// hit made, without being set up.
    pub tx_compare: Option<TxCompare>,
    /// Filled by [`crate::engine::WafBuilder::build`]: per transformation
    /// of this link, its trigger bytes and the bytes it may introduce
    /// ([`crate::transformations::Transform::triggers`], `introduces`),
    /// worked out once for [`crate::transformations::chain_may_hold`].
    pub tf_bytes: Vec<TfBytes>,
    /// Filled by [`crate::engine::WafBuilder::build`]: the `tag` values,
    /// shared with every [`crate::RuleMatch`] of this rule.
    pub tags: std::sync::Arc<[String]>,
}

/// A link that compares one TX key's value (or, with `count`, whether the
/// key is set: 1 or 0) with `value`; see [`Rule::tx_compare`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct TxCompare {
    pub tx_id: u32,
    pub count: bool,
    pub cmp: Cmp,
    pub value: i64,
    pub negated: bool,
}

impl TxCompare {
    /// Whether the (possibly negated) operator matches the number `n`.
    pub(crate) fn holds(&self, n: i64) -> bool {
        self.cmp.holds(n, self.value) != self.negated
    }
}

/// Most targets of a link whose stored slots are tested before the link
/// is set up (one bit each); later ones are always read.
pub(crate) const SKIP_SLOTS: usize = 64;

impl Rule {
    pub(crate) fn marker_name(&self) -> Option<&str> {
        match &self.body {
            RuleBody::Marker(n) => Some(n),
            _ => None,
        }
    }

    /// The last link of this rule's chain.
    pub(crate) fn last_link_mut(&mut self) -> &mut Rule {
        match self.chain {
            Some(ref mut c) => c.last_link_mut(),
            None => self,
        }
    }

    pub(crate) fn has_tag(&self, re: &regex::Regex) -> bool {
        self.actions.tags.iter().any(|t| re.is_match(t))
    }
}
