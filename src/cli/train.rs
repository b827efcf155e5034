use super::{Exit, TrainArgs};
use crate::train::{TrainConfig, train};

pub fn run(args: TrainArgs) -> anyhow::Result<Exit> {
    let cfg = TrainConfig {
        data: args.data,
        out: args.out,
        epochs: args.epochs,
        batch: args.batch.max(1),
        lr: args.lr,
        seed: args.seed,
        size: args.size,
        widths: args.widths,
        limit: args.limit,
        ..TrainConfig::default()
    };
    let started = std::time::Instant::now();
    train(&cfg, args.resume, &mut |line| {
        eprintln!("[{:>6.0} s] {line}", started.elapsed().as_secs_f64());
    })?;
    Ok(Exit::Ok)
}
