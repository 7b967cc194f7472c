//! Short byte strings kept inline: the values of MATCHED_VARS and TX.
//!
//! A rule that matches copies each matched value out of the collections
//! (the rule's actions may change them, TX above all). Most such values
//! are short (a TX flag, a paranoia level, a header), and a heap copy of
//! each, freed when the next rule clears MATCHED_VARS, was a large share
//! of the engine's allocations. [`SmallBytes`] holds up to
//! [`INLINE`] bytes in place, in four words (a `Vec<u8>` and one word),
//! and longer values on the heap. TX values (flags, levels, scores) are
//! short too, and CRS sets a few dozen new ones on every request.

use std::ops::Deref;

/// Most bytes held without allocating.
pub(crate) const INLINE: usize = 22;

/// A byte string, inline when it is at most [`INLINE`] bytes long.
#[derive(Clone)]
pub(crate) enum SmallBytes {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Vec<u8>),
}

impl SmallBytes {
    /// A copy of `b`.
    pub(crate) fn copy_of(b: &[u8]) -> SmallBytes {
        let mut buf = [0u8; INLINE];
        match (buf.get_mut(..b.len()), u8::try_from(b.len())) {
            (Some(dst), Ok(len)) => {
                dst.copy_from_slice(b);
                SmallBytes::Inline { len, buf }
            }
            _ => SmallBytes::Heap(b.to_vec()),
        }
    }

    /// Holds `b` from now on, in the heap buffer it has if it has one.
    pub(crate) fn set(&mut self, b: &[u8]) {
        match self {
            SmallBytes::Heap(v) => {
                v.clear();
                v.extend_from_slice(b);
            }
            SmallBytes::Inline { .. } => *self = SmallBytes::copy_of(b),
        }
    }
}

impl From<Vec<u8>> for SmallBytes {
    /// Inline when short, else the vector itself (no copy).
    fn from(v: Vec<u8>) -> SmallBytes {
        if v.len() <= INLINE {
            SmallBytes::copy_of(&v)
        } else {
            SmallBytes::Heap(v)
        }
    }
}

impl Default for SmallBytes {
    fn default() -> SmallBytes {
        SmallBytes::Inline {
            len: 0,
            buf: [0; INLINE],
        }
    }
}

impl Deref for SmallBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SmallBytes::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or(&[]),
            SmallBytes::Heap(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_every_length_as_given() {
        let long: Vec<u8> = (0..100u8).collect();
        for n in 0..long.len() {
            let b = SmallBytes::copy_of(&long[..n]);
            assert_eq!(&*b, &long[..n]);
            assert_eq!(matches!(b, SmallBytes::Inline { .. }), n <= INLINE);
        }
        assert!(SmallBytes::default().is_empty());
    }

    #[test]
    fn set_and_from_hold_what_they_are_given() {
        let long: Vec<u8> = (0..100u8).collect();
        for (a, b) in [(0, 5), (5, 0), (3, 40), (40, 3), (40, 60), (60, 40)] {
            let mut s = SmallBytes::from(long[..a].to_vec());
            assert_eq!(&*s, &long[..a]);
            s.set(&long[..b]);
            assert_eq!(&*s, &long[..b]);
        }
    }

    #[test]
    fn takes_four_words() {
        assert_eq!(
            std::mem::size_of::<SmallBytes>(),
            4 * std::mem::size_of::<usize>()
        );
    }
}
