use indicatif::{ProgressBar, ProgressStyle};

use super::{Exit, TrainArgs};
use crate::training::{TrainConfig, TrainEvent, train};

pub fn run(args: TrainArgs) -> anyhow::Result<Exit> {
    let cfg = TrainConfig {
        data: args.data,
        labels: args.labels,
        export_views: args.export_views,
        views: args.views.max(1),
        freeze_blocks: args.freeze_blocks,
        out: args.out,
        epochs: args.epochs,
        batch: args.batch.max(1),
        lr: args.lr,
        seed: args.seed,
        size: args.size,
        widths: args.widths,
        arch: args.arch,
        limit: args.limit,
        init: args.init,
        freeze: args.freeze,
        ..TrainConfig::default()
    };
    let started = std::time::Instant::now();
    // The bar draws only on a terminal; the log lines always reach stderr (and log files).
    // Until the first batch there is nothing to count: a spinner-free line instead of a full
    // "0/0 batches" bar.
    let bar = ProgressBar::new(0)
        .with_style(ProgressStyle::with_template("{msg}").expect("valid template"))
        .with_message("loading images...");
    let counting = ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} batches  ETA {eta}")
        .expect("valid template");
    train(&cfg, args.resume, &mut |event| match event {
        TrainEvent::Log(line) => {
            let line = format!("[{:>6.0} s] {line}", started.elapsed().as_secs_f64());
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        TrainEvent::Batch { epoch, done, total } => {
            if done == 1 {
                bar.set_style(counting.clone());
                bar.reset();
                bar.set_length(total as u64);
                bar.set_message(if epoch == 0 {
                    "features (once)".to_string()
                } else {
                    format!("epoch {epoch}/{}", cfg.epochs)
                });
            }
            bar.set_position(done as u64);
        }
    })?;
    bar.finish_and_clear();
    Ok(Exit::Ok)
}
