use std::io::{BufWriter, Write};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Exit, ScanArgs, UsageError, load_model};
use crate::catalog::dataset::Split;
use crate::catalog::walk;
use crate::imaging::dhash::DHash;
use crate::results::parts;
use crate::results::{ExportFormat, Row, RowWriter, Status, Tally};
use crate::review::{Candidate, by_folder, folders::write_folders, groups};
use crate::scoring::{PipelineOptions, score_all_stored};

/// A row kept for a review output, with what the review needs.
struct Kept {
    row: Row,
    hash: Option<u128>,
    dhash: Option<DHash>,
    split: Option<Split>,
}

/// Write the review output `args` asks for (disagreements, duplicates or the per-folder
/// table); returns a summary for stderr.
fn write_review(
    args: &ScanArgs,
    labels: &[String],
    mut kept: Vec<Kept>,
    out: impl Write,
    format: ExportFormat,
) -> std::io::Result<String> {
    if args.by_folder {
        let stats = by_folder(kept.iter().map(|k| &k.row), labels, |r| {
            r.flagged == Some(true)
        });
        let n = stats.len();
        write_folders(out, format, labels, &stats)?;
        return Ok(format!("{n} folders"));
    }
    if args.disagreements {
        kept.retain(|k| {
            k.row.label.is_some() && k.row.predicted.is_some() && k.row.label != k.row.predicted
        });
        let confidence = |r: &Row| r.probabilities.iter().copied().fold(0.0f32, f32::max);
        kept.sort_by(|a, b| confidence(&b.row).total_cmp(&confidence(&a.row)));
        let mut w = RowWriter::new(out, format, labels)?;
        for k in &kept {
            w.write(&k.row)?;
        }
        w.finish()?;
        return Ok(format!(
            "{} images where the label and the prediction differ",
            kept.len()
        ));
    }
    // Duplicates.
    let candidates: Vec<Candidate> = kept
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            k.hash.map(|hash| Candidate {
                index: i,
                hash,
                dhash: k.dhash,
            })
        })
        .collect();
    let found = groups(&candidates, args.dup_threshold);
    let mut w = RowWriter::with_extra(out, format, labels, &["group", "match", "leak"])?;
    let (mut images, mut exact, mut leaks) = (0, 0, 0);
    for (g, group) in found.iter().enumerate() {
        let leak = leak_of(group.members.iter().map(|&i| &kept[i]));
        images += group.members.len();
        exact += usize::from(group.exact);
        leaks += usize::from(!leak.is_empty());
        let kind = if group.exact { "exact" } else { "near" };
        for &i in &group.members {
            w.write_extra(
                &kept[i].row,
                &[(g + 1).to_string(), kind.to_string(), leak.clone()],
            )?;
        }
    }
    w.finish()?;
    Ok(format!(
        "{} duplicate groups ({images} images): {exact} exact, {} near; {leaks} span labels or splits (a leak)",
        found.len(),
        found.len() - exact
    ))
}

/// Why a duplicate group is a leak: it spans labels (class folders) or splits; empty if not.
fn leak_of<'a>(members: impl Iterator<Item = &'a Kept>) -> String {
    let mut labels = std::collections::BTreeSet::new();
    let mut splits = std::collections::BTreeSet::new();
    for k in members {
        if let Some(l) = k.row.label.as_ref().or(k.row.folder_label.as_ref()) {
            labels.insert(l.clone());
        }
        if let Some(s) = k.split {
            splits.insert(format!("{s:?}").to_lowercase());
        }
    }
    let mut parts = Vec::new();
    if labels.len() > 1 {
        parts.push(format!(
            "labels {}",
            labels.into_iter().collect::<Vec<_>>().join("/")
        ));
    }
    if splits.len() > 1 {
        parts.push(format!(
            "splits {}",
            splits.into_iter().collect::<Vec<_>>().join("/")
        ));
    }
    parts.join("; ")
}

/// `scan`: walk, score (through the store), stream or collect the rows, then the review
/// outputs, label figures and the summary line. The per-row closure in the middle shares the
/// writer, the review buffers and the summary, which is why it stays in one piece.
pub fn run(args: ScanArgs) -> anyhow::Result<Exit> {
    if !args.path.exists() {
        return Err(UsageError(format!("{}: no such file or folder", args.path.display())).into());
    }
    let model = load_model(&args.model)?;
    let labels = model.labels().to_vec();
    let truth = args
        .review
        .truth(&args.path, &labels)
        .map_err(|e| UsageError(format!("{e:#}")))?;
    let (store, store_problem) = args.cache.open(&args.path, &model.manifest);
    if let Some(problem) = &store_problem {
        eprintln!("warning: {problem}");
    }

    if let Some(out) = args.output.out.as_deref().filter(|_| args.shard.is_some()) {
        parts::forget_record(out).with_context(|| {
            format!(
                "cannot remove the earlier record {}",
                parts::record_path(out).display()
            )
        })?;
    }
    let (entries, progress) = find_images(&args);

    let mut overlays = match &args.heatmaps {
        Some(dir) => Some(
            crate::results::overlays::OverlayWriter::new(dir, &args.path, &labels)
                .map_err(|e| UsageError(format!("{e:#}")))?,
        ),
        None => None,
    };
    let (format, out) = open_output(&args)?;
    // Review outputs need every row before the first is written; plain scans stream.
    let collect = args.disagreements || args.duplicates || args.by_folder;
    let (mut writer, mut out) = if collect {
        (None, Some(out))
    } else {
        (Some(RowWriter::new(out, format, &labels)?), None)
    };
    let mut kept: Vec<Kept> = Vec::new();
    let mut labelled_entries: Vec<crate::catalog::Entry> = Vec::new();

    let options = PipelineOptions {
        batch: args.batch as usize,
        decoders: args
            .jobs
            .map_or(PipelineOptions::default().decoders, |j| j as usize),
        force: args.input.force,
        overlays: args.heatmaps.is_some(),
    };
    let started = Instant::now();
    let mut summary = Summary::new(&model.manifest);
    let mut write_error = None;
    let cancel = AtomicBool::new(false);
    // Test hook (debug builds only): slow each result down so a test can kill a scan midway.
    #[cfg(debug_assertions)]
    let slow = std::env::var("CXR_TRIAGE_TEST_SLOW_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis);
    score_all_stored(
        entries,
        &model,
        &options,
        store.as_ref(),
        &cancel,
        |scored| {
            let mut row = Row::from_scored(&scored, &model.manifest, args.input.show_phi);
            let truth_index = truth.of(&scored.entry);
            row.label = truth_index.map(|i| labels[i].clone());
            if truth.name_of(&scored.entry).is_some() {
                labelled_entries.push(scored.entry.clone());
            }
            summary.add(&row, &model.manifest);
            summary.stored += usize::from(scored.cached);
            if let Some(o) = &mut overlays {
                o.write(&scored, &row.probabilities);
            }
            #[cfg(debug_assertions)]
            if let Some(pause) = slow {
                std::thread::sleep(pause);
            }
            match &mut writer {
                Some(w) => {
                    if write_error.is_none()
                        && let Err(e) = w.write(&row)
                    {
                        write_error = Some(e);
                        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                None => kept.push(Kept {
                    split: truth.split_of(&scored.entry),
                    row,
                    hash: scored.hash,
                    dhash: scored.dhash,
                }),
            }
            progress.inc(1);
        },
    );
    progress.finish_and_clear();
    if let Some(problem) = store.as_ref().and_then(|s| s.problem()) {
        eprintln!("warning: {problem}");
    }
    if let Some(e) = write_error {
        return Err(e).context("cannot write results");
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(w) = writer {
        w.finish().context("cannot write results")?;
    }
    if let (Some(shard), Some(out)) = (args.shard, &args.output.out) {
        let record = parts::ShardRecord {
            version: parts::RECORD_VERSION,
            shard,
            root: args
                .path
                .canonicalize()
                .unwrap_or_else(|_| args.path.clone()),
            model: crate::results::store::model_id(&model.manifest),
            model_manifest: args
                .model
                .model
                .as_ref()
                .map(|m| m.canonicalize().unwrap_or_else(|_| m.clone())),
            options: scan_options(&args),
            format,
            images: summary.total,
            errors: summary.tally.errors,
            seconds: elapsed,
            written_by: env!("CARGO_PKG_VERSION").to_string(),
        };
        parts::write_record(out, &record)
            .with_context(|| format!("cannot write {}", parts::record_path(out).display()))?;
    }
    if let Some(out) = out.take() {
        let review =
            write_review(&args, &labels, kept, out, format).context("cannot write results")?;
        if !args.quiet && !review.is_empty() {
            eprintln!("{review}");
        }
    }
    if !args.quiet {
        print_label_figures(&args, &model.manifest, &truth, &labelled_entries, &summary);
        eprintln!("{}", summary.line(&model.manifest, elapsed));
        if let Some(path) = &args.output.out {
            eprintln!("results written to {}", path.display());
        }
    }
    if let (Some(o), Some(dir)) = (&overlays, &args.heatmaps) {
        for s in o.skipped.iter().take(10) {
            eprintln!("warning: heatmap not written: {s}");
        }
        if o.skipped.len() > 10 {
            eprintln!(
                "warning: {} more heatmaps not written",
                o.skipped.len() - 10
            );
        }
        if !args.quiet {
            eprintln!("{} heatmaps written to {}", o.written, dir.display());
        }
    }
    Ok(if summary.tally.errors > 0 {
        Exit::SomeFailed
    } else {
        Exit::Ok
    })
}

/// The counts behind the summary line (shared with `merge`).
pub(super) struct Summary {
    pub(super) total: usize,
    /// Outcomes taken from the results store.
    stored: usize,
    pub(super) tally: Tally,
    /// Probabilities and true label (index) of each scored image that has one.
    labelled: (Vec<Vec<f32>>, Vec<usize>),
}

impl Summary {
    pub(super) fn new(manifest: &crate::model::Manifest) -> Self {
        Self {
            total: 0,
            stored: 0,
            tally: Tally::new(manifest),
            labelled: Default::default(),
        }
    }

    pub(super) fn add(&mut self, row: &Row, manifest: &crate::model::Manifest) {
        self.total += 1;
        match row.status {
            Status::Error => self.tally.errors += 1,
            Status::OutOfScope => self.tally.out_of_scope += 1,
            Status::Done => {
                if let Some(t) = row
                    .label
                    .as_ref()
                    .and_then(|l| manifest.labels.iter().position(|m| m == l))
                {
                    self.labelled.0.push(row.probabilities.clone());
                    self.labelled.1.push(t);
                }
                let predicted = row
                    .predicted
                    .as_ref()
                    .and_then(|p| manifest.labels.iter().position(|l| l == p));
                self.tally.scored(
                    &row.probabilities,
                    predicted,
                    row.flagged == Some(true),
                    row.typicality == Some(crate::results::Typicality::Unusual),
                    |l| manifest.operating_points.get(&manifest.labels[l]).copied(),
                );
            }
        }
    }

    fn line(&self, manifest: &crate::model::Manifest, secs: f64) -> String {
        format!(
            "{} images in {:.1} s ({:.1}/s): {}",
            self.total,
            secs,
            self.total as f64 / secs.max(1e-9),
            self.counts(manifest)
        )
    }

    /// `eval`'s report on the scored images that have a true label; `None` without any.
    pub(super) fn label_report(
        &self,
        manifest: &crate::model::Manifest,
        name: &str,
        resamples: usize,
    ) -> Option<String> {
        let (probs, truth) = &self.labelled;
        (!probs.is_empty()).then(|| {
            crate::evaluation::report(manifest, name, None, probs, truth, Vec::new(), resamples)
                .render()
        })
    }

    /// Per label, flagged, unusual, out of scope, errors (and from the store).
    pub(super) fn counts(&self, manifest: &crate::model::Manifest) -> String {
        let multi = self.tally.multi_label;
        let mut counts: Vec<(usize, String)> = (self.tally.per_label.iter().copied())
            .enumerate()
            .filter(|&(_, n)| !multi || n > 0)
            .map(|(i, n)| (n, format!("{} {n}", manifest.display_name(i))))
            .collect();
        if multi {
            // Flagged per label, most often flagged first.
            counts.sort_by_key(|c| std::cmp::Reverse(c.0));
        }
        let counts: Vec<String> = counts.into_iter().map(|(_, s)| s).collect();
        let counts = match (multi, counts.is_empty()) {
            (true, true) => "flagged per label: none".to_string(),
            (true, false) => format!("flagged per label: {}", counts.join(", ")),
            (false, _) => counts.join(" · "),
        };
        let stored = if self.stored > 0 {
            format!(" · {} from the results store", self.stored)
        } else {
            String::new()
        };
        let unusual = if manifest.unusual.is_some() {
            format!(" · unusual {}", self.tally.unusual)
        } else {
            String::new()
        };
        format!(
            "{} · flagged {}{unusual} · out of scope {} · errors {}{stored}",
            counts, self.tally.flagged, self.tally.out_of_scope, self.tally.errors
        )
    }
}

/// The options a shard's parts must share.
fn scan_options(args: &ScanArgs) -> parts::ScanOptions {
    parts::ScanOptions {
        follow_links: args.input.follow_links,
        hidden: args.input.hidden,
        force: args.input.force,
        show_phi: args.input.show_phi,
        labels: args
            .review
            .labels
            .as_ref()
            .map(|l| l.canonicalize().unwrap_or_else(|_| l.clone())),
    }
}

/// The walk, with a spinner while it runs; returns the progress bar set up for scoring.
fn find_images(args: &ScanArgs) -> (Vec<crate::catalog::Entry>, ProgressBar) {
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    progress.set_draw_target(if args.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    });
    progress.set_message(format!("finding images in {}", args.path.display()));
    let walk_options = args.input.walk_options();
    let entries: Vec<_> = walk(&args.path, &walk_options)
        .inspect(|_| progress.tick())
        .filter(|e| args.shard.is_none_or(|s| s.contains(e.rel())))
        .collect();
    if entries.is_empty() {
        progress.finish_and_clear();
        if !args.quiet {
            eprintln!("no images found in {}", args.path.display());
        }
    }
    progress.set_length(entries.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  ETA {eta}  {msg}")
            .expect("valid template"),
    );
    progress.set_message("");
    (entries, progress)
}

/// The results file (or stdout) and its format: `--format`, else the extension, else CSV.
fn open_output(args: &ScanArgs) -> anyhow::Result<(ExportFormat, BufWriter<Box<dyn Write>>)> {
    let format = args.output.format();
    let out: Box<dyn Write> = match &args.output.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let out = BufWriter::new(out);
    Ok((format, out))
}

/// With true labels: the labels the model does not know, and `eval`'s report on the rest.
fn print_label_figures(
    args: &ScanArgs,
    manifest: &crate::model::Manifest,
    truth: &crate::review::Truth,
    labelled_entries: &[crate::catalog::Entry],
    summary: &Summary,
) {
    let unmatched = truth.unmatched(labelled_entries);
    if !unmatched.is_empty() {
        let list: Vec<String> = unmatched
            .iter()
            .map(|(name, n)| format!("{name} ({n})"))
            .collect();
        eprintln!(
            "labels not matched to the model's labels ({}), so not counted: {}",
            manifest.labels.join(", "),
            list.join(", ")
        );
    }
    if let Some(report) =
        summary.label_report(manifest, &args.path.display().to_string(), args.resamples)
    {
        eprintln!("{report}");
    }
}
