//! The one results type ([`Row`]), its exports (CSV, JSON, JSON Lines) and the store that
//! keeps outcomes between runs ([`store`]).

mod export;
mod outcome;
pub mod overlays;
pub mod parts;
pub mod store;
mod tally;
pub use export::{create_export, default_export_path, export_rows};
pub use outcome::{ImageInfo, Outcome, Scored};
pub use tally::Tally;

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::catalog::Entry;
use crate::imaging::Phi;
use crate::model::{Manifest, argmax, is_flagged};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Done,
    Error,
    /// Read, but not a frontal chest radiograph (see `scan --force`).
    #[serde(rename = "out of scope")]
    OutOfScope,
}

/// One image's result, as shown and exported.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub path: String,
    pub status: Status,
    pub error: Option<String>,
    pub folder_label: Option<String>,
    /// The image's true label (class folder or `--labels` file) as one of the model's labels.
    pub label: Option<String>,
    pub format: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub bit_depth: Option<u8>,
    pub modality: Option<String>,
    pub view_position: Option<String>,
    pub body_part: Option<String>,
    pub photometric: Option<String>,
    pub study_date: Option<String>,
    /// Empty unless `--show-phi`.
    pub patient_id: Option<String>,
    pub study_instance_uid: Option<String>,
    pub series_instance_uid: Option<String>,
    pub sop_instance_uid: Option<String>,
    /// Empty unless `--show-phi`.
    pub accession_number: Option<String>,
    /// One probability per model label, in the manifest's order (empty on error).
    pub probabilities: Vec<f32>,
    pub predicted: Option<String>,
    pub flagged: Option<bool>,
    /// `typical` or `unusual` (the image is unlike the model's training data: check before
    /// trusting the score); empty for a model without the score.
    pub typicality: Option<Typicality>,
    /// The unusual-input score as a multiple of the model's threshold (above 1: unusual).
    pub unusual_score: Option<f32>,
    /// Share of the predicted label's heatmap in the outer 10 % band of the image (0 to 1;
    /// about 0.36 for attention spread evenly): high values mean the score came from borders,
    /// corners and the markers printed there (see [`crate::model::heatmap`]).
    pub border_attention: Option<f32>,
}

/// What the unusual-input score says of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Typicality {
    Typical,
    Unusual,
}

impl Typicality {
    /// From a score in multiples of the threshold.
    pub fn of(score: f32) -> Self {
        if score > 1.0 {
            Self::Unusual
        } else {
            Self::Typical
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Typical => "typical",
            Self::Unusual => "unusual",
        }
    }
}

impl Row {
    /// The row for one pipeline result; `show_phi` lets the patient ID and the accession number
    /// through (read again from the file when the result came from the store).
    pub fn from_scored(s: &Scored, manifest: &Manifest, show_phi: bool) -> Self {
        let phi = if show_phi { s.phi() } else { Phi::default() };
        Self::from_outcome(&s.entry, &s.outcome, manifest, phi)
    }

    /// The row for `entry`'s outcome, with `phi` (empty unless PHI is to be shown).
    pub fn from_outcome(entry: &Entry, outcome: &Outcome, manifest: &Manifest, phi: Phi) -> Self {
        let (info, probs, error, status, unusual, border) = match outcome {
            Outcome::Scored {
                info,
                probs,
                unusual,
                border,
            } => (
                Some(info),
                probs.clone(),
                None,
                Status::Done,
                *unusual,
                *border,
            ),
            Outcome::Failed { info, error } => (
                info.as_ref(),
                Vec::new(),
                Some(error.clone()),
                Status::Error,
                None,
                None,
            ),
            Outcome::OutOfScope { info, reason } => (
                Some(info),
                Vec::new(),
                Some(reason.clone()),
                Status::OutOfScope,
                None,
                None,
            ),
        };
        let scored = status == Status::Done;
        let dicom = info.and_then(|i| i.dicom.as_deref());
        let field = |f: fn(&crate::imaging::DicomInfo) -> Option<String>| dicom.and_then(f);
        Row {
            path: entry.rel().to_string_lossy().into_owned(),
            status,
            folder_label: entry.folder_label.as_deref().map(String::from),
            label: None,
            format: info.map(|i| i.format.to_string()),
            width: info.map(|i| i.width),
            height: info.map(|i| i.height),
            bit_depth: info.map(|i| dicom.map_or(i.bit_depth, |d| d.bits_stored as u8)),
            modality: field(|d| d.modality.clone()),
            view_position: field(|d| d.view_position.clone()),
            body_part: field(|d| d.body_part.clone()),
            photometric: field(|d| Some(d.photometric.clone())),
            study_date: field(|d| d.study_date.clone()),
            patient_id: phi.patient_id,
            study_instance_uid: field(|d| d.study_uid.clone()),
            series_instance_uid: field(|d| d.series_uid.clone()),
            sop_instance_uid: field(|d| d.sop_uid.clone()),
            accession_number: phi.accession_number,
            predicted: scored.then(|| manifest.labels[argmax(&probs)].clone()),
            flagged: scored.then(|| is_flagged(manifest, &probs)),
            probabilities: probs,
            error,
            typicality: unusual.map(Typicality::of),
            unusual_score: unusual,
            border_attention: border,
        }
    }
}

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Csv,
    Json,
    Jsonl,
}

impl ExportFormat {
    /// From a file name's extension: `.json`, `.jsonl`/`.ndjson`, anything else CSV.
    pub fn from_path(path: &Path) -> Self {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("json") => Self::Json,
            Some("jsonl" | "ndjson") => Self::Jsonl,
            _ => Self::Csv,
        }
    }
}

/// Streams rows to a writer; call [`RowWriter::finish`] at the end.
pub struct RowWriter<W: Write> {
    out: W,
    format: ExportFormat,
    labels: Vec<String>,
    /// Names of extra columns after the fixed ones (see [`RowWriter::write_extra`]).
    extra: Vec<String>,
    rows: usize,
}

const FIXED_COLUMNS: [&str; 19] = [
    "path",
    "status",
    "error",
    "folder_label",
    "label",
    "format",
    "width",
    "height",
    "bit_depth",
    "modality",
    "view_position",
    "body_part",
    "photometric",
    "study_date",
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "accession_number",
];

impl<W: Write> RowWriter<W> {
    pub fn new(out: W, format: ExportFormat, labels: &[String]) -> std::io::Result<Self> {
        Self::with_extra(out, format, labels, &[])
    }

    /// A writer with `extra` columns after the usual ones.
    pub fn with_extra(
        mut out: W,
        format: ExportFormat,
        labels: &[String],
        extra: &[&str],
    ) -> std::io::Result<Self> {
        match format {
            ExportFormat::Csv => {
                let mut header: Vec<String> = FIXED_COLUMNS.iter().map(|s| s.to_string()).collect();
                header.extend(labels.iter().map(|l| format!("p_{l}")));
                header.extend([
                    "predicted".into(),
                    "flagged".into(),
                    "typicality".into(),
                    "unusual_score".into(),
                    "border_attention".into(),
                ]);
                header.extend(extra.iter().map(|s| s.to_string()));
                write_csv_record(&mut out, &header)?;
            }
            ExportFormat::Json => out.write_all(b"[\n")?,
            ExportFormat::Jsonl => {}
        }
        Ok(Self {
            out,
            format,
            labels: labels.to_vec(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            rows: 0,
        })
    }

    pub fn write(&mut self, row: &Row) -> std::io::Result<()> {
        self.write_extra(row, &[])
    }

    /// Write a row with values for the extra columns (missing ones are empty).
    pub fn write_extra(&mut self, row: &Row, values: &[String]) -> std::io::Result<()> {
        let extra = |i: usize| values.get(i).cloned().unwrap_or_default();
        match self.format {
            ExportFormat::Csv => {
                let opt = |v: Option<String>| v.unwrap_or_default();
                let mut record = vec![
                    row.path.clone(),
                    serde_plain(&row.status),
                    opt(row.error.clone()),
                    opt(row.folder_label.clone()),
                    opt(row.label.clone()),
                    opt(row.format.clone()),
                    opt(row.width.map(|v| v.to_string())),
                    opt(row.height.map(|v| v.to_string())),
                    opt(row.bit_depth.map(|v| v.to_string())),
                    opt(row.modality.clone()),
                    opt(row.view_position.clone()),
                    opt(row.body_part.clone()),
                    opt(row.photometric.clone()),
                    opt(row.study_date.clone()),
                    opt(row.patient_id.clone()),
                    opt(row.study_instance_uid.clone()),
                    opt(row.series_instance_uid.clone()),
                    opt(row.sop_instance_uid.clone()),
                    opt(row.accession_number.clone()),
                ];
                record.extend((0..self.labels.len()).map(|i| {
                    row.probabilities
                        .get(i)
                        .map(|p| format!("{p:.6}"))
                        .unwrap_or_default()
                }));
                record.push(opt(row.predicted.clone()));
                record.push(opt(row
                    .flagged
                    .map(|f| if f { "yes" } else { "no" }.to_string())));
                record.push(opt(row.typicality.map(|t| t.as_str().to_string())));
                record.push(opt(row.unusual_score.map(|v| format!("{v:.3}"))));
                record.push(opt(row.border_attention.map(|v| format!("{v:.3}"))));
                record.extend((0..self.extra.len()).map(extra));
                write_csv_record(&mut self.out, &record)?;
            }
            ExportFormat::Json | ExportFormat::Jsonl => {
                if self.format == ExportFormat::Json && self.rows > 0 {
                    self.out.write_all(b",\n")?;
                }
                let mut value = self.json_value(row);
                for (i, name) in self.extra.iter().enumerate() {
                    value[name] = serde_json::Value::String(extra(i));
                }
                serde_json::to_writer(&mut self.out, &value)?;
                if self.format == ExportFormat::Jsonl {
                    self.out.write_all(b"\n")?;
                }
            }
        }
        self.rows += 1;
        Ok(())
    }

    fn json_value(&self, row: &Row) -> serde_json::Value {
        let mut value = serde_json::to_value(row).expect("row serialises");
        let probs: serde_json::Map<String, serde_json::Value> = self
            .labels
            .iter()
            .zip(&row.probabilities)
            .map(|(l, p)| (l.clone(), serde_json::json!(p)))
            .collect();
        value["probabilities"] = serde_json::Value::Object(probs);
        value
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        if self.format == ExportFormat::Json {
            self.out.write_all(b"\n]\n")?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn write_csv_record<W: Write>(out: &mut W, fields: &[String]) -> std::io::Result<()> {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    w.write_record(fields).map_err(std::io::Error::other)?;
    let bytes = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    out.write_all(&bytes)
}
