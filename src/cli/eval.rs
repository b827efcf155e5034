use anyhow::Context;

use super::{EvalArgs, Exit, load_model};
use crate::catalog::dataset::Dataset;
use crate::evaluation::evaluate;
use crate::model::Manifest;

pub fn run(args: EvalArgs) -> anyhow::Result<Exit> {
    let model = load_model(&args.model)?;
    let labels = model.labels().to_vec();
    // Each folder on its own (rows with labels the model lacks are left out, as when
    // training), then, for several, the pool.
    let mut reports = Vec::new();
    for root in &args.data {
        let data = Dataset::pool(std::slice::from_ref(root), Some(&labels), args.seed, 0.15)?;
        for line in &data.left_out {
            eprintln!("left out: {line}");
        }
        reports.push(evaluate(&model, &data, args.split, args.resamples)?);
    }
    if args.data.len() > 1 {
        let data = Dataset::pool(&args.data, Some(&labels), args.seed, 0.15)?;
        reports.push(evaluate(&model, &data, args.split, args.resamples)?);
    }
    if args.json {
        match reports.as_slice() {
            [one] => println!("{}", serde_json::to_string_pretty(one)?),
            many => println!("{}", serde_json::to_string_pretty(many)?),
        }
    } else {
        let text: Vec<String> = reports.iter().map(|r| r.render()).collect();
        print!("{}", text.join("\n"));
    }
    if args.record {
        let path = args
            .model
            .model
            .as_ref()
            .expect("clap requires --model with --record");
        let mut manifest = Manifest::from_path(path)?;
        manifest.metrics = match reports.as_slice() {
            [one] => serde_json::to_value(one)?,
            many => serde_json::to_value(many)?,
        };
        std::fs::write(path, manifest.to_json_pretty() + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("recorded in {}", path.display());
    }
    Ok(if reports.iter().all(|r| r.failed.is_empty()) {
        Exit::Ok
    } else {
        Exit::SomeFailed
    })
}
