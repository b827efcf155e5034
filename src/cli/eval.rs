use anyhow::Context;

use super::{EvalArgs, Exit, load_model};
use crate::dataset::Dataset;
use crate::eval::evaluate;
use crate::model::Manifest;

pub fn run(args: EvalArgs) -> anyhow::Result<Exit> {
    let model = load_model(&args.model)?;
    let data = Dataset::open(&args.data, args.seed, 0.15)?;
    let report = evaluate(&model, &data, args.split, args.resamples)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if args.record {
        let path = args
            .model
            .model
            .as_ref()
            .expect("clap requires --model with --record");
        let mut manifest = Manifest::from_path(path)?;
        manifest.metrics = serde_json::to_value(&report)?;
        std::fs::write(path, manifest.to_json_pretty() + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("recorded in {}", path.display());
    }
    Ok(if report.failed.is_empty() {
        Exit::Ok
    } else {
        Exit::SomeFailed
    })
}
