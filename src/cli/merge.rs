//! `merge`: the parts of a sharded scan (`scan --shard K/N`) back into one result, checked
//! (same folder, model and options; shards 1..N each exactly once; every row in its own shard)
//! and in the order a single scan writes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::scan::Summary;
use super::{Exit, MergeArgs, UsageError, load_model};
use crate::catalog::shard::{Shard, walk_order};
use crate::results::parts::{RowReader, ShardRecord, read_record, row_reader};
use crate::results::{ExportFormat, Row, RowWriter, create_export};

pub fn run(args: MergeArgs) -> anyhow::Result<Exit> {
    let records: Vec<(PathBuf, ShardRecord)> = args
        .parts
        .iter()
        .map(|p| read_record(p).map(|r| (p.clone(), r)))
        .collect::<Result<_, _>>()
        .map_err(UsageError)?;
    let first = check_same_scan(&records).map_err(UsageError)?;
    // The scan's model, as its parts recorded it, unless --model names one.
    let model = match (&args.model.model, &first.model_manifest) {
        (None, Some(path)) => crate::model::Model::load(path).with_context(|| {
            format!(
                "the parts' model {} (pass --model if it moved)",
                path.display()
            )
        })?,
        _ => load_model(&args.model)?,
    };
    let labels = model.labels().to_vec();
    let model_id = crate::results::store::model_id(&model.manifest);
    if first.model != model_id {
        return Err(UsageError(format!(
            "the parts were scored by model {}, not by {model_id}: pass the scan's --model",
            first.model
        ))
        .into());
    }
    check_coverage(&records, first.shard.count).map_err(UsageError)?;

    let out_path = args.output.out.as_deref();
    let format = args.output.format();
    let mut summary = Summary::new(&model.manifest);
    let mut parts = Parts::open(&records, &labels).map_err(UsageError)?;
    let mut on_row = |row: &Row| summary.add(row, &model.manifest);
    match out_path {
        None => {
            let out = BufWriter::new(std::io::stdout().lock());
            parts.merge_into(out, format, &labels, &mut on_row)?;
        }
        Some(path) => {
            let file = create_export(path, &first.root).map_err(UsageError)?;
            // A merge that stops half way leaves no half-written output behind.
            if let Err(e) = parts.merge_into(BufWriter::new(file), format, &labels, &mut on_row) {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        }
    }

    if !args.quiet {
        let name = first.root.display().to_string();
        if let Some(report) = summary.label_report(&model.manifest, &name, args.resamples) {
            eprintln!("{report}");
        }
        let seconds: f64 = records.iter().map(|(_, r)| r.seconds).sum();
        eprintln!(
            "{} images from {} shards ({seconds:.1} s of scanning in all): {}",
            summary.total,
            records.len(),
            summary.counts(&model.manifest)
        );
        if let Some(path) = out_path {
            eprintln!("results written to {}", path.display());
        }
    }
    Ok(if summary.tally.errors > 0 {
        Exit::SomeFailed
    } else {
        Exit::Ok
    })
}

/// Every part from the same folder, model, options and number of shards; returns the first
/// part's record.
fn check_same_scan(records: &[(PathBuf, ShardRecord)]) -> Result<&ShardRecord, String> {
    let (first_path, first) = records.first().ok_or("no parts given")?;
    for (path, r) in &records[1..] {
        let differs = |what: &str, a: String, b: String| {
            format!(
                "{} and {} are not parts of one scan: {what} {a} and {b}",
                first_path.display(),
                path.display()
            )
        };
        if r.root != first.root {
            return Err(differs(
                "folders",
                first.root.display().to_string(),
                r.root.display().to_string(),
            ));
        }
        if r.shard.count != first.shard.count {
            return Err(differs(
                "shard counts",
                first.shard.count.to_string(),
                r.shard.count.to_string(),
            ));
        }
        if r.model != first.model {
            return Err(differs("models", first.model.clone(), r.model.clone()));
        }
        if r.options != first.options {
            return Err(differs(
                "options",
                serde_json::to_string(&first.options).unwrap_or_default(),
                serde_json::to_string(&r.options).unwrap_or_default(),
            ));
        }
    }
    Ok(first)
}

/// Shards 1..=count, each exactly once.
fn check_coverage(records: &[(PathBuf, ShardRecord)], count: u32) -> Result<(), String> {
    let mut by_shard: BTreeMap<u32, Vec<&Path>> = BTreeMap::new();
    for (path, r) in records {
        by_shard.entry(r.shard.index).or_default().push(path);
    }
    if let Some((k, paths)) = by_shard.iter().find(|(_, p)| p.len() > 1) {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(format!(
            "shard {k}/{count} given {} times: {}",
            paths.len(),
            names.join(", ")
        ));
    }
    let missing: Vec<String> = (1..=count)
        .filter(|k| !by_shard.contains_key(k))
        .map(|k| format!("{k}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing shard{} {}: run {} (`scan --shard K/{count}`) or pass {} output",
            if missing.len() > 1 { "s" } else { "" },
            missing.join(", "),
            if missing.len() > 1 { "them" } else { "it" },
            if missing.len() > 1 { "their" } else { "its" },
        ));
    }
    Ok(())
}

/// The parts being merged: each is in the order `scan` wrote it (the walk's), so one pass
/// over all of them at once, always taking the row that comes first, gives the single scan's
/// order with one row per part in memory.
struct Parts<'a> {
    records: &'a [(PathBuf, ShardRecord)],
    readers: Vec<RowReader>,
    rows: Vec<usize>,
    last: Vec<Option<String>>,
}

/// A part's next row, ordered so that the heap's top is the row the walk reaches first.
struct Head {
    row: Row,
    part: usize,
}

impl Head {
    fn cmp_key(&self, other: &Self) -> Ordering {
        walk_order(Path::new(&other.row.path), Path::new(&self.row.path))
            .then(other.part.cmp(&self.part))
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_key(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_key(other)
    }
}

impl<'a> Parts<'a> {
    fn open(records: &'a [(PathBuf, ShardRecord)], labels: &[String]) -> Result<Self, String> {
        let readers = records
            .iter()
            .map(|(path, r)| row_reader(path, r.format, labels))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            records,
            readers,
            rows: vec![0; records.len()],
            last: vec![None; records.len()],
        })
    }

    /// Part `k`'s next row, checked: it belongs to the part's shard, comes after the part's
    /// previous row, and the part holds as many rows as its record says.
    fn next(&mut self, k: usize) -> Result<Option<Head>, String> {
        let (path, record) = &self.records[k];
        let Some(row) = self.readers[k].next().transpose()? else {
            if self.rows[k] != record.images {
                return Err(format!(
                    "{}: {} rows, but its shard record says {} (changed after the shard finished?)",
                    path.display(),
                    self.rows[k],
                    record.images
                ));
            }
            return Ok(None);
        };
        self.rows[k] += 1;
        if !record.shard.contains(Path::new(&row.path)) {
            return Err(format!(
                "{}: {} belongs to shard {}/{}, not to this part's {}",
                path.display(),
                row.path,
                Shard::of(Path::new(&row.path), record.shard.count),
                record.shard.count,
                record.shard
            ));
        }
        if let Some(last) = &self.last[k]
            && walk_order(Path::new(last), Path::new(&row.path)) != Ordering::Less
        {
            return Err(format!(
                "{}: {} comes after {}, not in the order scan writes (was the file sorted or edited?)",
                path.display(),
                row.path,
                last
            ));
        }
        self.last[k] = Some(row.path.clone());
        Ok(Some(Head { row, part: k }))
    }

    /// Write every part's rows in the single scan's order; `on_row` sees each.
    fn merge_into<W: std::io::Write>(
        &mut self,
        out: W,
        format: ExportFormat,
        labels: &[String],
        on_row: &mut impl FnMut(&Row),
    ) -> anyhow::Result<()> {
        let mut w = RowWriter::new(out, format, labels).context("cannot write results")?;
        let mut heap = BinaryHeap::new();
        for k in 0..self.readers.len() {
            if let Some(head) = self.next(k).map_err(UsageError)? {
                heap.push(head);
            }
        }
        while let Some(Head { row, part }) = heap.pop() {
            w.write(&row).context("cannot write results")?;
            on_row(&row);
            if let Some(head) = self.next(part).map_err(UsageError)? {
                heap.push(head);
            }
        }
        w.finish().context("cannot write results")?;
        Ok(())
    }
}
