use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Exit, ScanArgs, UsageError, load_model};
use crate::catalog::walk;
use crate::results::{ExportFormat, Row, RowWriter, Status};
use crate::worker::{PipelineOptions, score_all_stored};

pub fn run(args: ScanArgs) -> anyhow::Result<Exit> {
    if !args.path.exists() {
        return Err(UsageError(format!("{}: no such file or folder", args.path.display())).into());
    }
    let model = load_model(&args.model)?;
    let labels = model.labels().to_vec();
    let (store, store_problem) = args.cache.open(&args.path, &model.manifest);
    if let Some(problem) = &store_problem {
        eprintln!("warning: {problem}");
    }

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

    let format = args
        .format
        .or(args.out.as_deref().map(ExportFormat::from_path))
        .unwrap_or(ExportFormat::Csv);
    let out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut writer = RowWriter::new(BufWriter::new(out), format, &labels)?;

    let options = PipelineOptions {
        batch: args.batch as usize,
        decoders: args
            .jobs
            .map_or(PipelineOptions::default().decoders, |j| j as usize),
        force: args.input.force,
    };
    let started = Instant::now();
    let mut summary = Summary::default();
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
            let row = Row::from_scored(&scored, &model.manifest, args.input.show_phi);
            summary.add(&row);
            summary.stored += usize::from(scored.cached);
            #[cfg(debug_assertions)]
            if let Some(pause) = slow {
                std::thread::sleep(pause);
            }
            if write_error.is_none()
                && let Err(e) = writer.write(&row)
            {
                write_error = Some(e);
                cancel.store(true, std::sync::atomic::Ordering::Relaxed);
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
    writer.finish().context("cannot write results")?;
    if !args.quiet {
        eprintln!("{}", summary.line(&labels, started.elapsed().as_secs_f64()));
        if let Some(path) = &args.out {
            eprintln!("results written to {}", path.display());
        }
    }
    Ok(if summary.errors > 0 {
        Exit::SomeFailed
    } else {
        Exit::Ok
    })
}

#[derive(Default)]
struct Summary {
    total: usize,
    errors: usize,
    out_of_scope: usize,
    flagged: usize,
    /// Outcomes taken from the results store.
    stored: usize,
    per_label: BTreeMap<String, usize>,
}

impl Summary {
    fn add(&mut self, row: &Row) {
        self.total += 1;
        match row.status {
            Status::Error => self.errors += 1,
            Status::OutOfScope => self.out_of_scope += 1,
            Status::Done => {
                if let Some(label) = &row.predicted {
                    *self.per_label.entry(label.clone()).or_default() += 1;
                }
                self.flagged += usize::from(row.flagged == Some(true));
            }
        }
    }

    fn line(&self, labels: &[String], secs: f64) -> String {
        let counts: Vec<String> = labels
            .iter()
            .map(|l| format!("{l} {}", self.per_label.get(l).copied().unwrap_or(0)))
            .collect();
        let stored = if self.stored > 0 {
            format!(" · {} from the results store", self.stored)
        } else {
            String::new()
        };
        format!(
            "{} images in {:.1} s ({:.1}/s): {} · flagged {} · out of scope {} · errors {}{stored}",
            self.total,
            secs,
            self.total as f64 / secs.max(1e-9),
            counts.join(" · "),
            self.flagged,
            self.out_of_scope,
            self.errors
        )
    }
}
