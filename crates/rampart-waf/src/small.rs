//! Short byte strings kept inline: the values of MATCHED_VARS.
//!
//! A rule that matches copies each matched value out of the collections
//! (the rule's actions may change them, TX above all). Most such values
//! are short (a TX flag, a paranoia level, a header), and a heap copy of
//! each, freed when the next rule clears MATCHED_VARS, was a large share
//! of the engine's allocations. [`SmallBytes`] holds up to
//! [`INLINE`] bytes in place, in four words (a `Vec<u8>` and one word),
//! and longer values on the heap.

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
    fn takes_four_words() {
        assert_eq!(
            std::mem::size_of::<SmallBytes>(),
            4 * std::mem::size_of::<usize>()
        );
    }
}
