//! Where an image's true label comes from: its class folder, or a `--labels` CSV; and how such
//! names are matched to a model's labels.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::catalog::Entry;
use crate::catalog::dataset::Split;

/// Names people give class folders, mapped to the label they mean (compared after
/// [`normalize`]).
const ALIASES: &[(&str, &str)] = &[
    ("covid19", "covid"),
    ("covid", "covid"),
    ("sarscov2", "covid"),
    ("covidpositive", "covid"),
    ("nofinding", "normal"),
    ("nofindings", "normal"),
    ("normal", "normal"),
    ("healthy", "normal"),
    ("negative", "normal"),
    ("pneumonia", "pneumonia"),
    ("viralpneumonia", "pneumonia"),
    ("bacterialpneumonia", "pneumonia"),
];

/// Lower case, letters and digits only: `COVID-19` -> `covid19`, `No Finding` -> `nofinding`.
pub fn normalize(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Matches names (folder names, CSV labels) to a model's labels.
#[derive(Clone, Debug)]
pub struct LabelMatcher {
    normalized: Vec<String>,
}

impl LabelMatcher {
    pub fn new(model_labels: &[String]) -> Self {
        Self {
            normalized: model_labels.iter().map(|l| normalize(l)).collect(),
        }
    }

    /// The model label `name` means: the same name in any case and punctuation, or a known
    /// alias of it (`COVID-19`, `No Finding`, `no_findings`, ...).
    pub fn matches(&self, name: &str) -> Option<usize> {
        let n = normalize(name);
        if n.is_empty() {
            return None;
        }
        if let Some(i) = self.normalized.iter().position(|l| *l == n) {
            return Some(i);
        }
        let group = alias_group(&n)?;
        self.normalized
            .iter()
            .position(|l| alias_group(l) == Some(group))
    }
}

/// The label a normalized name stands for, when it is a known alias.
fn alias_group(normalized: &str) -> Option<&'static str> {
    ALIASES
        .iter()
        .find(|(a, _)| *a == normalized)
        .map(|(_, c)| *c)
}

/// What a `--labels` CSV (or a data set's `splits.csv`) says about each file.
#[derive(Clone, Debug, Default)]
pub struct LabelFile {
    /// Label as written, by path relative to the folder under review.
    pub labels: HashMap<PathBuf, String>,
    /// Split (train / val / test), when the file has a `split` column.
    pub splits: HashMap<PathBuf, Split>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct LabelFileError {
    pub path: PathBuf,
    pub message: String,
}

impl LabelFile {
    /// Read a CSV with a header naming `path` and `label` columns (and optionally `split`;
    /// other columns are ignored). Paths are relative to `root`, or absolute under it.
    pub fn read(path: &Path, root: &Path) -> Result<Self, LabelFileError> {
        let err = |message: String| LabelFileError {
            path: path.to_path_buf(),
            message,
        };
        let mut reader = csv::Reader::from_path(path).map_err(|e| err(e.to_string()))?;
        let headers = reader.headers().map_err(|e| err(e.to_string()))?.clone();
        let column = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(name))
        };
        let (Some(p), Some(l)) = (column("path"), column("label")) else {
            return Err(err(format!(
                "needs a header with `path` and `label` columns (found: {})",
                headers.iter().collect::<Vec<_>>().join(", ")
            )));
        };
        let s = column("split");
        let mut out = Self::default();
        for (n, record) in reader.records().enumerate() {
            let record = record.map_err(|e| err(format!("row {}: {e}", n + 2)))?;
            let file = PathBuf::from(record.get(p).unwrap_or("").trim());
            let rel = if file.is_absolute() {
                file.strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or(file)
            } else {
                file
            };
            let label = record.get(l).unwrap_or("").trim().to_string();
            if let Some(split) = s.and_then(|s| record.get(s)).and_then(parse_split) {
                out.splits.insert(rel.clone(), split);
            }
            if !label.is_empty() {
                out.labels.insert(rel, label);
            }
        }
        Ok(out)
    }
}

fn parse_split(s: &str) -> Option<Split> {
    match s.trim().to_ascii_lowercase().as_str() {
        "train" => Some(Split::Train),
        "val" | "valid" | "validation" => Some(Split::Val),
        "test" => Some(Split::Test),
        _ => None,
    }
}

/// The true labels of a folder under review.
#[derive(Clone, Debug)]
pub struct Truth {
    matcher: LabelMatcher,
    file: Option<LabelFile>,
    /// Splits from the file, or from `splits.csv` in the folder (a data set in `train`'s layout).
    splits: HashMap<PathBuf, Split>,
}

impl Truth {
    /// Labels from class folders, no splits (no file is read).
    pub fn folders_only(model_labels: &[String]) -> Self {
        Self {
            matcher: LabelMatcher::new(model_labels),
            file: None,
            splits: HashMap::new(),
        }
    }

    /// Labels from class folders (and splits from `ROOT/splits.csv` when there is one).
    pub fn from_folders(model_labels: &[String], root: &Path) -> Self {
        let splits = LabelFile::read(&root.join("splits.csv"), root)
            .map(|f| f.splits)
            .unwrap_or_default();
        Self {
            matcher: LabelMatcher::new(model_labels),
            file: None,
            splits,
        }
    }

    /// Labels (and splits, when it has them) from a CSV.
    pub fn from_file(model_labels: &[String], file: LabelFile) -> Self {
        Self {
            matcher: LabelMatcher::new(model_labels),
            splits: file.splits.clone(),
            file: Some(file),
        }
    }

    /// The name an entry is labelled with, as written (folder name or CSV label).
    pub fn name_of<'a>(&'a self, entry: &'a Entry) -> Option<&'a str> {
        match &self.file {
            Some(f) => f.labels.get(entry.rel()).map(String::as_str),
            None => entry.folder_label.as_deref(),
        }
    }

    /// The entry's label as an index into the model's labels.
    pub fn of(&self, entry: &Entry) -> Option<usize> {
        self.name_of(entry).and_then(|n| self.matcher.matches(n))
    }

    pub fn split_of(&self, entry: &Entry) -> Option<Split> {
        self.splits.get(entry.rel()).copied()
    }

    /// Label names that match none of the model's labels, with how many images carry each.
    pub fn unmatched<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a Entry>,
    ) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for e in entries {
            if let Some(name) = self.name_of(e)
                && self.matcher.matches(name).is_none()
            {
                *counts.entry(name.to_string()).or_default() += 1;
            }
        }
        counts.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["covid", "normal", "pneumonia"].map(String::from).to_vec()
    }

    #[test]
    fn folder_names_match_in_any_case_and_with_aliases() {
        let m = LabelMatcher::new(&labels());
        for (name, want) in [
            ("covid", Some(0)),
            ("COVID", Some(0)),
            ("covid-19", Some(0)),
            ("COVID_19", Some(0)),
            ("Normal", Some(1)),
            ("No Finding", Some(1)),
            ("no_findings", Some(1)),
            ("PNEUMONIA", Some(2)),
            ("dicom", None),
            ("2024-03", None),
            ("", None),
        ] {
            assert_eq!(m.matches(name), want, "{name}");
        }
        // Aliases work both ways: a model whose label is `No Finding` takes `normal/`.
        let other = LabelMatcher::new(&["Effusion".to_string(), "No Finding".to_string()]);
        assert_eq!(other.matches("normal"), Some(1));
        assert_eq!(other.matches("covid"), None);
        assert_eq!(other.matches("no_finding"), Some(1));
        assert_eq!(other.matches("effusion"), Some(0));
    }
}
