//! RFC 6962 Merkle trees: leaf and node hashes, an append-only accumulator
//! that keeps only the right frontier, and inclusion proofs.
//!
//! Leaves are the encrypted record bodies, so roots and proofs can be checked
//! without the decryption key.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The roots of the perfect subtrees that make up a tree of `size` leaves,
/// largest (leftmost) first: one per set bit of `size`. Enough to go on
/// appending and to compute the root, and what a disposal checkpoint keeps of
/// the leaves it removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Rebuilds a frontier from its parts; `None` unless there is one node per
    /// set bit of `size`.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (usize::try_from(size.count_ones()).ok() == Some(nodes.len()))
            .then_some(Frontier { size, nodes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The subtree roots, largest first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends a leaf (already leaf-hashed).
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            match self.nodes.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break,
            }
            s >>= 1;
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The RFC 6962 root of the tree.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// The ranges `[start, start + len)` the nodes cover, in order.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut start = 0u64;
        (0..64u32).rev().filter_map(move |bit| {
            let len = 1u64 << bit;
            (self.size & len != 0).then(|| {
                let r = (start, len);
                start += len;
                r
            })
        })
    }
}

/// Largest power of two strictly less than `n` (n ≥ 2).
fn split_point(n: u64) -> u64 {
    let mut k = 1u64;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// Hashes of a tree whose leaves below `base` are gone and summarised by a
/// frontier of size `base`; `leaves[i]` is leaf `base + i`.
pub(crate) struct PrunedTree<'a> {
    pub(crate) base: &'a Frontier,
    pub(crate) leaves: &'a [Hash],
}

impl PrunedTree<'_> {
    fn size(&self) -> u64 {
        self.base.size() + self.leaves.len() as u64
    }

    /// MTH of leaves `[a, b)`; `None` if it needs leaves that are gone and not
    /// summarised by one frontier node.
    fn subtree(&self, a: u64, b: u64) -> Option<Hash> {
        if b <= self.base.size() {
            return self
                .base
                .ranges()
                .zip(self.base.nodes())
                .find(|((s, l), _)| *s == a && s + l == b)
                .map(|(_, h)| *h);
        }
        if b - a == 1 {
            let i = usize::try_from(a.checked_sub(self.base.size())?).ok()?;
            return self.leaves.get(i).copied();
        }
        let k = split_point(b - a);
        Some(node_hash(
            &self.subtree(a, a + k)?,
            &self.subtree(a + k, b)?,
        ))
    }

    /// The root of the whole tree.
    pub(crate) fn root(&self) -> Option<Hash> {
        match self.size() {
            0 => Some(empty_root()),
            n => self.subtree(0, n),
        }
    }

    /// The RFC 6962 audit path for leaf `m`, bottom up.
    pub(crate) fn audit_path(&self, m: u64) -> Option<Vec<Hash>> {
        let n = self.size();
        if m >= n || m < self.base.size() {
            return None;
        }
        let mut path = Vec::new();
        let (mut a, mut b) = (0u64, n);
        // Walk down, collecting siblings top-down, then reverse.
        while b - a > 1 {
            let k = split_point(b - a);
            if m < a + k {
                path.push(self.subtree(a + k, b)?);
                b = a + k;
            } else {
                path.push(self.subtree(a, a + k)?);
                a += k;
            }
        }
        path.reverse();
        Some(path)
    }
}

/// Recomputes the root from a leaf, its index, the tree size and the audit
/// path (RFC 9162 §2.1.3.2). `None` if the path has the wrong shape.
pub fn root_from_path(index: u64, size: u64, leaf: &Hash, path: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if snode == 0 {
            return None;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    (snode == 0).then_some(r)
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 15] {
            s.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

/// Parses 64 hex digits.
pub fn hash_from_hex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = char::from(*pair.first()?).to_digit(16)?;
        let lo = char::from(*pair.get(1)?).to_digit(16)?;
        *o = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The test vectors of RFC 6962's reference implementation
    /// (certificate-transparency merkle_tree_test.cc).
    #[test]
    fn rfc6962_reference_roots() {
        let inputs = [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut f = Frontier::new();
        for (input, root) in inputs.iter().zip(roots) {
            f.push(leaf_hash(&hex(input)));
            assert_eq!(to_hex(&f.root()), root, "size {}", f.size());
        }
    }

    #[test]
    fn frontier_matches_naive_and_proofs_verify_with_pruning() {
        let leaves: Vec<Hash> = (0u32..70).map(|i| leaf_hash(&i.to_le_bytes())).collect();
        let mut f = Frontier::new();
        for n in 1..=leaves.len() {
            f.push(leaves[n - 1]);
            assert_eq!(f.root(), naive_root(&leaves[..n]));
        }
        for n in [1usize, 2, 3, 7, 8, 9, 33, 64, 70] {
            for cut in [0usize, 1, 4, 5, n / 2, n - 1] {
                if cut >= n {
                    continue;
                }
                let mut base = Frontier::new();
                leaves[..cut].iter().for_each(|l| base.push(*l));
                let t = PrunedTree {
                    base: &base,
                    leaves: &leaves[cut..n],
                };
                let root = naive_root(&leaves[..n]);
                assert_eq!(t.root(), Some(root));
                #[allow(clippy::needless_range_loop)]
                for m in cut..n {
                    let path = t.audit_path(m as u64).unwrap();
                    assert_eq!(
                        root_from_path(m as u64, n as u64, &leaves[m], &path),
                        Some(root),
                        "n {n} cut {cut} m {m}"
                    );
                    assert_ne!(
                        root_from_path(m as u64, n as u64, &leaf_hash(b"other"), &path),
                        Some(root)
                    );
                }
            }
        }
    }

    #[test]
    fn hex_round_trips() {
        let h = leaf_hash(b"x");
        assert_eq!(hash_from_hex(&to_hex(&h)), Some(h));
        assert_eq!(hash_from_hex("zz"), None);
        assert_eq!(Frontier::from_parts(3, vec![h]), None);
    }
}
