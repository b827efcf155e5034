//! Labelled data sets for `train` and `eval`: a folder with one subfolder per class, with or
//! without a `splits.csv` (columns `path,label,split`, paths relative to the folder).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::catalog::{WalkOptions, walk};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
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
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub root: PathBuf,
    /// Class names, sorted.
    pub labels: Vec<String>,
    pub samples: Vec<Sample>,
    /// How the splits were made, for logs and model cards.
    pub split_source: String,
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
    split: Split,
}

impl Dataset {
    /// Open a data set. Without `splits.csv`, `val_fraction` of each class (seeded, stratified)
    /// becomes the validation split and the rest is training data; there is no test split.
    pub fn open(root: &Path, seed: u64, val_fraction: f64) -> Result<Self, DatasetError> {
        if !root.is_dir() {
            return Err(DatasetError::Missing(root.to_path_buf()));
        }
        let splits = root.join("splits.csv");
        if splits.exists() {
            return Self::from_splits(root, &splits);
        }
        let entries: Vec<_> = walk(root, &WalkOptions::default())
            .filter(|e| e.walk_error.is_none() && e.folder_label.is_some())
            .collect();
        let labels: Vec<String> = entries
            .iter()
            .filter_map(|e| e.folder_label.clone())
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
                });
            }
        }
        samples.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Self {
            root: root.to_path_buf(),
            labels,
            samples,
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
            })
            .collect();
        Ok(Self {
            root: root.to_path_buf(),
            labels,
            samples,
            split_source: "splits.csv (patient-grouped)".into(),
        })
    }

    pub fn split(&self, split: Split) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.split == split).collect()
    }
}
