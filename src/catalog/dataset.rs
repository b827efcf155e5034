//! Labelled data sets for `train` and `eval`: a folder with one subfolder per class, with or
//! without a `splits.csv` (columns `path,label,split`, paths relative to the folder; a
//! `labels.csv` without a `split` column holds a set for reporting only: every row is `test`).
//! Several folders pool into one [`Dataset`] whose samples remember their source.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::catalog::{WalkOptions, walk};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
    pub split: Split,
    /// Index into [`Dataset::sources`].
    pub source: usize,
    /// Marked `in_cxr3=yes` in its splits file: the same film is in `cxr3`.
    pub in_cxr3: bool,
}

/// One folder of a pooled data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The folder's name (`cxr3`, `siim-covid`, ...), as logs and reports show it.
    pub name: String,
    pub root: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    /// The first source's folder.
    pub root: PathBuf,
    pub sources: Vec<Source>,
    /// Class names: sorted for one folder; the chosen labels for a pool.
    pub labels: Vec<String>,
    pub samples: Vec<Sample>,
    /// How the splits were made, for logs and model cards.
    pub split_source: String,
    /// Rows left out while pooling, one line each kind ("siim-covid: 1108 `indeterminate`").
    pub left_out: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: no such folder", .0.display())]
    Missing(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Splits { path: PathBuf, message: String },
    #[error("{}: no class subfolders with images (expected e.g. covid/, normal/, pneumonia/)", .0.display())]
    Empty(PathBuf),
}

#[derive(serde::Deserialize)]
struct SplitRow {
    path: String,
    label: String,
    /// Absent in a `labels.csv`: every row is for reporting (`test`).
    #[serde(default = "test_split")]
    split: Split,
    /// `yes` where this film is also in `cxr3` (`cohen-2020-07`): left out when pooled with it.
    #[serde(default)]
    in_cxr3: String,
}

fn test_split() -> Split {
    Split::Test
}

impl Dataset {
    /// Open a data set. Without `splits.csv`, `val_fraction` of each class (seeded, stratified)
    /// becomes the validation split and the rest is training data; there is no test split.
    pub fn open(root: &Path, seed: u64, val_fraction: f64) -> Result<Self, DatasetError> {
        if !root.is_dir() {
            return Err(DatasetError::Missing(root.to_path_buf()));
        }
        for file in ["splits.csv", "labels.csv"] {
            let splits = root.join(file);
            if splits.exists() {
                return Self::from_splits(root, &splits);
            }
        }
        let entries: Vec<_> = walk(root, &WalkOptions::default())
            .filter(|e| e.walk_error.is_none() && e.folder_label.is_some())
            .collect();
        let labels: Vec<String> = entries
            .iter()
            .filter_map(|e| e.folder_label.as_deref().map(String::from))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if labels.is_empty() {
            return Err(DatasetError::Empty(root.to_path_buf()));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let mut samples = Vec::new();
        for (class, name) in labels.iter().enumerate() {
            let mut paths: Vec<PathBuf> = entries
                .iter()
                .filter(|e| e.folder_label.as_deref() == Some(name))
                .map(|e| e.path.clone())
                .collect();
            paths.shuffle(&mut rng);
            let n_val = ((paths.len() as f64 * val_fraction).round() as usize).min(paths.len());
            for (i, path) in paths.into_iter().enumerate() {
                let split = if i < n_val { Split::Val } else { Split::Train };
                samples.push(Sample {
                    path,
                    label: class,
                    split,
                    source: 0,
                    in_cxr3: false,
                });
            }
        }
        samples.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Self {
            root: root.to_path_buf(),
            sources: vec![Source::of(root)],
            labels,
            samples,
            left_out: Vec::new(),
            split_source: format!(
                "no splits.csv: seeded (seed {seed}) stratified {:.0} % validation split, not grouped by patient",
                val_fraction * 100.0
            ),
        })
    }

    fn from_splits(root: &Path, splits: &Path) -> Result<Self, DatasetError> {
        let err = |message: String| DatasetError::Splits {
            path: splits.to_path_buf(),
            message,
        };
        let mut reader = csv::Reader::from_path(splits).map_err(|e| err(e.to_string()))?;
        let rows: Vec<SplitRow> = reader
            .deserialize()
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        let labels: Vec<String> = rows
            .iter()
            .map(|r| r.label.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if labels.is_empty() {
            return Err(err("no rows".into()));
        }
        let samples = rows
            .into_iter()
            .map(|r| Sample {
                path: root.join(&r.path),
                label: labels
                    .iter()
                    .position(|l| *l == r.label)
                    .expect("label collected above"),
                split: r.split,
                source: 0,
                in_cxr3: r.in_cxr3 == "yes",
            })
            .collect();
        let name = splits.file_name().unwrap_or_default().to_string_lossy();
        Ok(Self {
            root: root.to_path_buf(),
            sources: vec![Source::of(root)],
            labels,
            samples,
            left_out: Vec::new(),
            split_source: if name == "labels.csv" {
                "labels.csv (no splits: every image is for reporting, as `test`)".into()
            } else {
                "splits.csv (patient-grouped)".into()
            },
        })
    }

    /// Pool several folders into one data set with the given labels (default: the first
    /// folder's). Rows with other labels are left out (e.g. `siim-covid`'s `indeterminate`), as
    /// are rows marked `in_cxr3=yes` when a folder named `cxr3` is in the pool (the same films
    /// twice). Each folder keeps its own splits; samples remember their source.
    pub fn pool(
        roots: &[PathBuf],
        labels: Option<&[String]>,
        seed: u64,
        val_fraction: f64,
    ) -> Result<Self, DatasetError> {
        let sets = roots
            .iter()
            .map(|r| Self::open(r, seed, val_fraction))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = sets.first() else {
            return Err(DatasetError::Empty(PathBuf::new()));
        };
        if sets.len() == 1 && labels.is_none_or(|l| l == first.labels.as_slice()) {
            return Ok(first.clone());
        }
        let labels: Vec<String> = labels.map_or_else(|| first.labels.clone(), <[String]>::to_vec);
        let names: Vec<Source> = sets.iter().map(|d| Source::of(&d.root)).collect();
        let has_cxr3 = names.iter().any(|s| s.name == "cxr3");
        let mut samples = Vec::new();
        let mut left_out = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let mut dropped: Vec<(String, usize)> = Vec::new();
            let mut count = |what: String| match dropped.iter_mut().find(|(w, _)| *w == what) {
                Some((_, n)) => *n += 1,
                None => dropped.push((what, 1)),
            };
            for s in &set.samples {
                let name = &set.labels[s.label];
                if has_cxr3 && s.in_cxr3 && names[i].name != "cxr3" {
                    count("`in_cxr3=yes` (the same films as in cxr3)".into());
                    continue;
                }
                match labels.iter().position(|l| l == name) {
                    Some(label) => samples.push(Sample {
                        label,
                        source: i,
                        ..s.clone()
                    }),
                    None => count(format!("`{name}`")),
                }
            }
            for (what, n) in dropped {
                left_out.push(format!("{}: {n} {what}", names[i].name));
            }
        }
        Ok(Self {
            root: first.root.clone(),
            split_source: sets
                .iter()
                .zip(&names)
                .map(|(d, n)| format!("{}: {}", n.name, d.split_source))
                .collect::<Vec<_>>()
                .join("; "),
            sources: names,
            labels,
            samples,
            left_out,
        })
    }

    /// A short name for logs and reports: the folder, or the pool's folders joined by `+`.
    pub fn name(&self) -> String {
        self.sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }

    pub fn split(&self, split: Split) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.split == split).collect()
    }
}

impl Source {
    fn of(root: &Path) -> Self {
        let name = root
            .canonicalize()
            .unwrap_or_else(|_| root.to_path_buf())
            .file_name()
            .map_or_else(
                || root.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
        Self {
            name,
            root: root.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(dir: &Path, name: &str, csv_name: &str, rows: &str) -> PathBuf {
        let root = dir.join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(csv_name), rows).unwrap();
        root
    }

    #[test]
    fn pooling_keeps_sources_and_leaves_out_other_labels_and_cxr3_copies() {
        let dir = tempfile::tempdir().unwrap();
        let cxr3 = set(
            dir.path(),
            "cxr3",
            "splits.csv",
            "path,label,split\ncovid/a.png,covid,train\nnormal/b.png,normal,val\n",
        );
        let siim = set(
            dir.path(),
            "siim-covid",
            "splits.csv",
            "path,label,raw_label,split\ni/1.jpg,covid,Typical,train\ni/2.jpg,indeterminate,Indeterminate,train\ni/3.jpg,normal,Negative,test\n",
        );
        let cohen = set(
            dir.path(),
            "cohen-2020-07",
            "splits.csv",
            "path,label,split,in_cxr3\ncovid/a.png,covid,train,yes\ncovid/c.png,covid,train,no\n",
        );
        let ext = set(
            dir.path(),
            "ext-normal",
            "labels.csv",
            "path,label\nnormal/x.png,normal\n",
        );
        let labels: Vec<String> = ["covid", "normal", "pneumonia"].map(String::from).to_vec();
        let pool = Dataset::pool(&[cxr3, siim, cohen.clone()], Some(&labels), 0, 0.15).unwrap();
        assert_eq!(pool.name(), "cxr3+siim-covid+cohen-2020-07");
        assert_eq!(pool.labels, labels);
        let by_source: Vec<usize> = (0..3)
            .map(|i| pool.samples.iter().filter(|s| s.source == i).count())
            .collect();
        assert_eq!(by_source, [2, 2, 1]);
        assert_eq!(
            pool.left_out,
            [
                "siim-covid: 1 `indeterminate`",
                "cohen-2020-07: 1 `in_cxr3=yes` (the same films as in cxr3)"
            ]
        );
        assert_eq!(pool.split(Split::Test).len(), 1);
        // Without cxr3 in the pool, cohen's copies count.
        let alone = Dataset::pool(&[cohen], Some(&labels), 0, 0.15).unwrap();
        assert_eq!(alone.samples.len(), 2);
        // labels.csv: an external set, every row for reporting.
        let ext = Dataset::pool(&[ext], Some(&labels), 0, 0.15).unwrap();
        assert_eq!(ext.split(Split::Test).len(), 1);
        assert!(
            ext.split_source.contains("labels.csv"),
            "{}",
            ext.split_source
        );
    }
}
