//! The per-folder breakdown: counts and mean scores per folder, so one source that scores very
//! differently from the others stands out.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::catalog::natural_cmp;
use crate::results::{Row, Status};

/// One folder's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FolderStats {
    /// Folder relative to the reviewed root (`.` for the root itself).
    pub folder: String,
    pub images: usize,
    pub scored: usize,
    pub errors: usize,
    pub out_of_scope: usize,
    pub flagged: usize,
    /// Images predicted as each label (model order).
    pub predicted: Vec<usize>,
    /// Mean probability of each label over the scored images (model order).
    pub mean: Vec<f64>,
    /// Mean border-attention share over the scored images that have one (see
    /// [`crate::model::heatmap`]): a folder whose images score on their borders is a folder
    /// with a shortcut.
    pub border_attention: Option<f64>,
}

/// The folder a row's file sits in, relative to the root.
fn folder_of(row: &Row) -> String {
    Path::new(&row.path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| ".".into())
}

/// Figures per folder, folders in natural order. `flagged` says whether a scored row is
/// flagged (at the operating point in force). The rows may be made as they are read (the UI
/// builds each from an item's outcome: a million of them are not collected first).
pub fn by_folder(
    rows: impl IntoIterator<Item = impl std::borrow::Borrow<Row>>,
    labels: &[String],
    flagged: impl Fn(&Row) -> bool,
) -> Vec<FolderStats> {
    let k = labels.len();
    // Per folder: its figures, the sum of each label's probability, and the sum and count of
    // the border shares.
    type Sums = (Vec<f64>, f64, usize);
    let mut map: BTreeMap<String, (FolderStats, Sums)> = BTreeMap::new();
    for row in rows {
        let row = row.borrow();
        let folder = folder_of(row);
        let (s, (sums, border, bordered)) = map.entry(folder.clone()).or_insert_with(|| {
            (
                FolderStats {
                    folder,
                    images: 0,
                    scored: 0,
                    errors: 0,
                    out_of_scope: 0,
                    flagged: 0,
                    predicted: vec![0; k],
                    mean: vec![0.0; k],
                    border_attention: None,
                },
                (vec![0.0; k], 0.0, 0),
            )
        });
        s.images += 1;
        match row.status {
            Status::Error => s.errors += 1,
            Status::OutOfScope => s.out_of_scope += 1,
            Status::Done => {
                s.scored += 1;
                s.flagged += usize::from(flagged(row));
                if let Some(p) = row
                    .predicted
                    .as_ref()
                    .and_then(|p| labels.iter().position(|l| l == p))
                {
                    s.predicted[p] += 1;
                }
                for (sum, p) in sums.iter_mut().zip(&row.probabilities) {
                    *sum += *p as f64;
                }
                if let Some(b) = row.border_attention {
                    *border += b as f64;
                    *bordered += 1;
                }
            }
        }
    }
    let mut out: Vec<FolderStats> = map
        .into_values()
        .map(|(mut s, (sums, border, n))| {
            if s.scored > 0 {
                s.mean = sums.iter().map(|v| v / s.scored as f64).collect();
            }
            s.border_attention = (n > 0).then(|| border / n as f64);
            s
        })
        .collect();
    out.sort_by(|a, b| natural_cmp(&a.folder, &b.folder));
    out
}

/// Write the breakdown as CSV (`folder, images, scored, errors, out_of_scope, flagged,
/// n_<label>..., mean_p_<label>..., mean_border_attention`), a JSON array or JSON Lines.
pub fn write_folders<W: std::io::Write>(
    mut out: W,
    format: crate::results::ExportFormat,
    labels: &[String],
    stats: &[FolderStats],
) -> std::io::Result<()> {
    use crate::results::ExportFormat;
    match format {
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            let mut header: Vec<String> = [
                "folder",
                "images",
                "scored",
                "errors",
                "out_of_scope",
                "flagged",
            ]
            .map(String::from)
            .to_vec();
            header.extend(labels.iter().map(|l| format!("n_{l}")));
            header.extend(labels.iter().map(|l| format!("mean_p_{l}")));
            header.push("mean_border_attention".into());
            w.write_record(&header).map_err(std::io::Error::other)?;
            for s in stats {
                let mut record = vec![
                    s.folder.clone(),
                    s.images.to_string(),
                    s.scored.to_string(),
                    s.errors.to_string(),
                    s.out_of_scope.to_string(),
                    s.flagged.to_string(),
                ];
                record.extend(s.predicted.iter().map(|n| n.to_string()));
                record.extend(s.mean.iter().map(|m| {
                    if s.scored > 0 {
                        format!("{m:.4}")
                    } else {
                        String::new()
                    }
                }));
                record.push(
                    s.border_attention
                        .map(|b| format!("{b:.4}"))
                        .unwrap_or_default(),
                );
                w.write_record(&record).map_err(std::io::Error::other)?;
            }
            w.flush()?;
        }
        ExportFormat::Json => {
            serde_json::to_writer_pretty(&mut out, stats)?;
            out.write_all(b"\n")?;
        }
        ExportFormat::Jsonl => {
            for s in stats {
                serde_json::to_writer(&mut out, s)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()
}
