//! Splitting a folder's images into N shards for a cluster job array: by a hash of each path
//! relative to the scanned root, so the partition depends on neither the walk order nor the
//! machine, N shards cover every image exactly once, and rerunning one shard redoes only its
//! own files.

use std::cmp::Ordering;
use std::path::Path;

use super::natural_cmp;

/// Shard `index` of `count`, counted from 1 (Slurm: `--array=1-N` and
/// `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The shard (1..=count) a path relative to the root belongs to.
    pub fn of(rel: &Path, count: u32) -> u32 {
        (xxhash_rust::xxh3::xxh3_64(rel_key(rel).as_bytes()) % u64::from(count.max(1))) as u32 + 1
    }

    pub fn contains(&self, rel: &Path) -> bool {
        Self::of(rel, self.count) == self.index
    }
}

/// The bytes a path is hashed by: its components joined with `/`, whatever the platform.
fn rel_key(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected K/N with 1 <= K <= N, e.g. 3/8 (Slurm: --array=1-8 and \
                     --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT)";
        let (k, n) = s.split_once('/').ok_or_else(|| format!("{s:?}: {usage}"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?}: {usage}"))
        };
        let (index, count) = (parse(k)?, parse(n)?);
        if index == 0 {
            return Err(format!(
                "{s:?}: shards count from 1 (with a job array numbered from 0, pass \
                 $((SLURM_ARRAY_TASK_ID + 1))/N)"
            ));
        }
        if count == 0 || index > count {
            return Err(format!("{s:?}: {usage}"));
        }
        Ok(Self { index, count })
    }
}

/// The order a single walk yields paths relative to its root in: folder by folder, each
/// folder's names in natural order (see [`super::walk`]). Merged shards are put back in it.
pub fn walk_order(a: &Path, b: &Path) -> Ordering {
    let (mut x, mut y) = (a.components(), b.components());
    loop {
        match (x.next(), y.next()) {
            (Some(p), Some(q)) => {
                let ord = natural_cmp(
                    &p.as_os_str().to_string_lossy(),
                    &q.as_os_str().to_string_lossy(),
                );
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn every_path_lands_in_exactly_one_shard_and_shards_are_balanced() {
        let paths: Vec<PathBuf> = (0..4000)
            .map(|i| PathBuf::from(format!("p{}/img{i}.png", i % 7)))
            .collect();
        for n in 1..=16u32 {
            let mut sizes = vec![0usize; n as usize];
            for p in &paths {
                let owners: Vec<u32> = (1..=n)
                    .filter(|&k| Shard { index: k, count: n }.contains(p))
                    .collect();
                assert_eq!(owners.len(), 1, "{p:?} in {owners:?} of {n}");
                sizes[owners[0] as usize - 1] += 1;
            }
            // 4000 / n expected each; a fair hash stays within 25 % at these sizes.
            let expected = 4000.0 / n as f64;
            assert!(
                sizes
                    .iter()
                    .all(|&s| (s as f64 - expected).abs() < 0.25 * expected),
                "{n}: {sizes:?}"
            );
        }
    }

    #[test]
    fn adding_files_moves_no_file_to_another_shard() {
        let before: Vec<PathBuf> = (0..500)
            .map(|i| PathBuf::from(format!("a/{i}.dcm")))
            .collect();
        let assigned: Vec<u32> = before.iter().map(|p| Shard::of(p, 8)).collect();
        // New files and folders, some sorting between the old ones.
        let mut after = before.clone();
        after.extend((0..500).map(|i| PathBuf::from(format!("a/{i}b.dcm"))));
        after.extend((0..100).map(|i| PathBuf::from(format!("0new/{i}.png"))));
        after.sort_by(|a, b| walk_order(a, b));
        for (p, k) in before.iter().zip(&assigned) {
            assert_eq!(Shard::of(p, 8), *k, "{p:?}");
        }
    }

    #[test]
    fn the_partition_is_fixed_across_versions_and_machines() {
        // Pinned when written (xxh3-64 of the `/`-joined relative path, mod N, plus 1).
        const PINNED: [u32; 3] = [8, 2, 5];
        // Changing the hash would send a resubmitted shard other files than its first run had.
        let got: Vec<u32> = ["a.png", "covid/x1.dcm", "deep/er/z.jpg"]
            .iter()
            .map(|p| Shard::of(Path::new(p), 8))
            .collect();
        assert_eq!(got, PINNED);
    }

    #[test]
    fn parsing_says_what_is_wrong() {
        assert_eq!("3/8".parse::<Shard>(), Ok(Shard { index: 3, count: 8 }));
        assert!("0/4".parse::<Shard>().unwrap_err().contains("count from 1"));
        for bad in ["5/4", "1/0", "x/4", "3", "-1/4"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn walk_order_is_folder_by_folder_in_natural_order() {
        let mut paths: Vec<PathBuf> = ["b/img10.png", "a.png", "b/img2.png", "a/z.png", "B2.png"]
            .iter()
            .map(PathBuf::from)
            .collect();
        paths.sort_by(|a, b| walk_order(a, b));
        let got: Vec<_> = paths.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            got,
            ["a/z.png", "a.png", "b/img2.png", "b/img10.png", "B2.png"]
        );
    }
}
