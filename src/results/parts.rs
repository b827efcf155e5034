//! Results written in parts (`scan --shard K/N`) and read back for `merge`: each part's record
//! (which shard, which model, which options; written only when the shard finished) and a reader
//! for the rows of a CSV, JSON or JSON Lines results file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ExportFormat, Row, Status, Typicality};
use crate::catalog::shard::Shard;

/// Version of [`ShardRecord`]'s layout.
pub const RECORD_VERSION: u32 = 1;

/// What a finished shard says about its results file, beside it as `FILE.shard.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub version: u32,
    pub shard: Shard,
    /// The scanned folder, as given and canonical.
    pub root: PathBuf,
    /// The model's identity ([`super::store::model_id`]).
    pub model: String,
    /// Its manifest, canonical (`None`: the built-in model), for `merge` to load.
    pub model_manifest: Option<PathBuf>,
    /// Options that change which files are read or what a row says.
    pub options: ScanOptions,
    /// The results file's format.
    pub format: ExportFormat,
    /// Rows in the results file.
    pub images: usize,
    pub errors: usize,
    pub seconds: f64,
    /// The cxr-triage version that wrote it.
    pub written_by: String,
}

/// The scan options every part of one result must share.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanOptions {
    pub follow_links: bool,
    pub hidden: bool,
    pub force: bool,
    pub show_phi: bool,
    /// The `--labels` file, canonical, if one was given.
    pub labels: Option<PathBuf>,
}

/// Where the record of the results file `out` is.
pub fn record_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".shard.json");
    PathBuf::from(name)
}

/// Remove a record left by an earlier run of this shard (the run starting now has not
/// finished, and until it has, its part must not look finished).
pub fn forget_record(out: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(record_path(out)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Write the record of a finished shard (whole or not at all: a temporary file renamed).
pub fn write_record(out: &Path, record: &ShardRecord) -> std::io::Result<()> {
    let path = record_path(out);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_string_pretty(record)? + "\n")?;
    std::fs::rename(&tmp, &path)
}

/// The record of the results file `part`; an error that says what to do when it is missing.
pub fn read_record(part: &Path) -> Result<ShardRecord, String> {
    let path = record_path(part);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{}: no {} beside it: not the output of a finished `scan --shard` (a shard that was \
             killed leaves none: run it again)",
            part.display(),
            path.display()
        ),
        _ => format!("{}: {e}", path.display()),
    })?;
    let record: ShardRecord =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if record.version != RECORD_VERSION {
        return Err(format!(
            "{}: record version {} (this cxr-triage reads {RECORD_VERSION})",
            path.display(),
            record.version
        ));
    }
    Ok(record)
}

/// The rows of a results file written by `scan` (or `merge`) for a model with `labels`.
pub fn read_rows(path: &Path, format: ExportFormat, labels: &[String]) -> Result<Vec<Row>, String> {
    row_reader(path, format, labels)?.collect()
}

/// Rows of a results file, one at a time (CSV and JSON Lines are streamed; a JSON array is
/// read whole). Errors name the file and the row.
pub type RowReader = Box<dyn Iterator<Item = Result<Row, String>>>;

pub fn row_reader(
    path: &Path,
    format: ExportFormat,
    labels: &[String],
) -> Result<RowReader, String> {
    let name = path.display().to_string();
    let fail = move |e: String| format!("{name}: {e}");
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let file = std::io::BufReader::new(file);
    let labels = labels.to_vec();
    Ok(match format {
        ExportFormat::Csv => {
            let mut reader = csv::Reader::from_reader(file);
            let header = reader.headers().map_err(|e| fail(e.to_string()))?.clone();
            let columns = CsvColumns::new(&header, &labels).map_err(&fail)?;
            Box::new(reader.into_records().enumerate().map(move |(i, record)| {
                record
                    .map_err(|e| e.to_string())
                    .and_then(|r| columns.row(&r, &labels))
                    .map_err(|e| fail(format!("row {}: {e}", i + 1)))
            }))
        }
        ExportFormat::Json => {
            let values: Vec<serde_json::Value> =
                serde_json::from_reader(file).map_err(|e| fail(e.to_string()))?;
            Box::new(values.into_iter().enumerate().map(move |(i, v)| {
                row_from_json(&v, &labels).map_err(|e| fail(format!("row {}: {e}", i + 1)))
            }))
        }
        ExportFormat::Jsonl => {
            use std::io::BufRead;
            Box::new(
                file.lines()
                    .enumerate()
                    .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
                    .map(move |(i, line)| {
                        line.map_err(|e| e.to_string())
                            .and_then(|l| serde_json::from_str(&l).map_err(|e| e.to_string()))
                            .and_then(|v| row_from_json(&v, &labels))
                            .map_err(|e| fail(format!("line {}: {e}", i + 1)))
                    }),
            )
        }
    })
}

fn status_of(s: &str) -> Result<Status, String> {
    match s {
        "done" => Ok(Status::Done),
        "error" => Ok(Status::Error),
        "out of scope" => Ok(Status::OutOfScope),
        other => Err(format!("unknown status {other:?}")),
    }
}

fn typicality_of(s: &str) -> Result<Typicality, String> {
    match s {
        "typical" => Ok(Typicality::Typical),
        "unusual" => Ok(Typicality::Unusual),
        other => Err(format!("unknown typicality {other:?}")),
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: not a number: {v:?}"))
}

/// Where a CSV's columns are.
struct CsvColumns {
    index: std::collections::HashMap<String, usize>,
    probs: Vec<usize>,
}

impl CsvColumns {
    fn new(header: &csv::StringRecord, labels: &[String]) -> Result<Self, String> {
        let index: std::collections::HashMap<String, usize> = header
            .iter()
            .enumerate()
            .map(|(i, h)| (h.to_string(), i))
            .collect();
        for name in ["path", "status"] {
            if !index.contains_key(name) {
                return Err(format!("no {name:?} column"));
            }
        }
        let probs = labels
            .iter()
            .map(|l| {
                index.get(&format!("p_{l}")).copied().ok_or_else(|| {
                    format!(
                        "no p_{l} column: written for another model than the one with labels {}",
                        labels.join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { index, probs })
    }

    fn row(&self, record: &csv::StringRecord, labels: &[String]) -> Result<Row, String> {
        let get = |name: &str| {
            self.index
                .get(name)
                .and_then(|&c| record.get(c))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        row_from_fields(get, || {
            self.probs
                .iter()
                .zip(labels)
                .map(|(&c, l)| number::<f32>(&format!("p_{l}"), record.get(c).unwrap_or_default()))
                .collect()
        })
    }
}

fn row_from_json(v: &serde_json::Value, labels: &[String]) -> Result<Row, String> {
    // Each field as the CSV writes it, so that both formats share one reading.
    let get = |name: &str| match v.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(if *b { "yes" } else { "no" }.to_string()),
        _ => None,
    };
    row_from_fields(get, || {
        let map = v
            .get("probabilities")
            .and_then(|p| p.as_object())
            .ok_or("no probabilities")?;
        labels
            .iter()
            .map(|l| {
                map.get(l)
                    .and_then(|p| p.as_f64())
                    .map(|p| p as f32)
                    .ok_or_else(|| format!("no probability for {l}: written for another model"))
            })
            .collect()
    })
}

/// A row from its fields' text as the CSV writes them (`get`: none for an empty field) and,
/// for a scored image, its probabilities.
fn row_from_fields(
    get: impl Fn(&str) -> Option<String>,
    probabilities: impl FnOnce() -> Result<Vec<f32>, String>,
) -> Result<Row, String> {
    let int = |name: &str| -> Result<Option<u32>, String> {
        get(name).map(|v| number(name, &v)).transpose()
    };
    let status = status_of(&get("status").ok_or("no status")?)?;
    Ok(Row {
        path: get("path").ok_or("no path")?,
        status,
        error: get("error"),
        folder_label: get("folder_label"),
        label: get("label"),
        format: get("format"),
        width: int("width")?,
        height: int("height")?,
        bit_depth: int("bit_depth")?.map(|v| v.min(255) as u8),
        modality: get("modality"),
        view_position: get("view_position"),
        body_part: get("body_part"),
        photometric: get("photometric"),
        study_date: get("study_date"),
        patient_id: get("patient_id"),
        study_instance_uid: get("study_instance_uid"),
        series_instance_uid: get("series_instance_uid"),
        sop_instance_uid: get("sop_instance_uid"),
        accession_number: get("accession_number"),
        probabilities: if status == Status::Done {
            probabilities()?
        } else {
            Vec::new()
        },
        predicted: get("predicted"),
        flagged: get("flagged").map(|v| v == "yes"),
        typicality: get("typicality").map(|v| typicality_of(&v)).transpose()?,
        unusual_score: get("unusual_score")
            .map(|v| number("unusual_score", &v))
            .transpose()?,
        border_attention: get("border_attention")
            .map(|v| number("border_attention", &v))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::RowWriter;

    fn rows() -> Vec<Row> {
        let base = Row {
            path: "covid/a, \"quoted\".png".into(),
            status: Status::Done,
            error: None,
            folder_label: Some("covid".into()),
            label: Some("covid".into()),
            format: Some("PNG".into()),
            width: Some(512),
            height: Some(480),
            bit_depth: Some(16),
            modality: Some("DX".into()),
            view_position: Some("PA".into()),
            body_part: None,
            photometric: Some("MONOCHROME2".into()),
            study_date: Some("20200101".into()),
            patient_id: None,
            study_instance_uid: Some("1.2.3".into()),
            series_instance_uid: None,
            sop_instance_uid: Some("1.2.3.4".into()),
            accession_number: None,
            probabilities: vec![0.812345, 0.1, 0.087655],
            predicted: Some("covid".into()),
            flagged: Some(true),
            typicality: Some(Typicality::Unusual),
            unusual_score: Some(1.25),
            border_attention: Some(0.125),
        };
        let failed = Row {
            path: "broken.png".into(),
            status: Status::Error,
            error: Some("cannot decode: truncated".into()),
            folder_label: None,
            label: None,
            format: None,
            width: None,
            height: None,
            bit_depth: None,
            modality: None,
            view_position: None,
            body_part: None,
            photometric: None,
            study_date: None,
            probabilities: Vec::new(),
            predicted: None,
            flagged: None,
            typicality: None,
            unusual_score: None,
            border_attention: None,
            ..base.clone()
        };
        let out_of_scope = Row {
            status: Status::OutOfScope,
            path: "lat.dcm".into(),
            error: Some("lateral view".into()),
            probabilities: Vec::new(),
            predicted: None,
            flagged: None,
            typicality: None,
            unusual_score: None,
            border_attention: None,
            ..base.clone()
        };
        vec![base, failed, out_of_scope]
    }

    #[test]
    fn every_format_reads_back_what_was_written() {
        let labels: Vec<String> = ["covid", "normal", "pneumonia"].map(String::from).to_vec();
        for format in [ExportFormat::Csv, ExportFormat::Json, ExportFormat::Jsonl] {
            let mut w = RowWriter::new(Vec::new(), format, &labels).unwrap();
            for r in rows() {
                w.write(&r).unwrap();
            }
            let bytes = w.finish().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("part");
            std::fs::write(&path, &bytes).unwrap();
            let back = read_rows(&path, format, &labels).unwrap();
            assert_eq!(back, rows(), "{format:?}");
            // And written again, byte for byte the same file.
            let mut w = RowWriter::new(Vec::new(), format, &labels).unwrap();
            for r in &back {
                w.write(r).unwrap();
            }
            assert_eq!(w.finish().unwrap(), bytes, "{format:?}");
        }
    }

    #[test]
    fn a_file_for_other_labels_is_refused_by_name() {
        let labels: Vec<String> = ["covid", "normal", "pneumonia"].map(String::from).to_vec();
        let mut w = RowWriter::new(Vec::new(), ExportFormat::Csv, &labels).unwrap();
        w.write(&rows()[0]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.csv");
        std::fs::write(&path, w.finish().unwrap()).unwrap();
        let other: Vec<String> = ["covid", "tb"].map(String::from).to_vec();
        let e = read_rows(&path, ExportFormat::Csv, &other).unwrap_err();
        assert!(e.contains("no p_tb column"), "{e}");
    }
}
