use super::{BenchArgs, Exit, load_model};
use crate::bench::{decode_figures, fixed_input_probabilities, inference_figure, scan_figures};
use crate::worker::PipelineOptions;

pub fn run(args: BenchArgs) -> anyhow::Result<Exit> {
    let model = load_model(&args.model)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "cxr-triage bench · {cores} cores · model {} ({}x{} input)\n",
        model.manifest.name, model.manifest.input.size, model.manifest.input.size
    );

    println!("decode and thumbnail (median of {} runs)", args.runs);
    println!(
        "  {:<24} {:>10} {:>16}",
        "image", "decode ms", "thumb 256 px ms"
    );
    for (name, decode, thumb) in decode_figures(args.runs) {
        println!("  {name:<24} {decode:>10.2} {thumb:>16.2}");
    }

    let fixed: Vec<String> = fixed_input_probabilities(&model)
        .iter()
        .map(|p| format!("{p:.4}"))
        .collect();
    println!(
        "\ninference (median of {} runs); fixed-input probabilities [{}]",
        args.runs,
        fixed.join(", ")
    );
    for batch in [1, 8] {
        println!(
            "  batch {batch}: {:>8.1} images/s",
            inference_figure(&model, batch, args.runs)
        );
    }

    let dir = std::env::temp_dir().join(format!("cxr-triage-bench-{}", std::process::id()));
    let options = PipelineOptions::default();
    let figures = scan_figures(&model, &dir, args.images, &options);
    let _ = std::fs::remove_dir_all(&dir);
    let f = figures?;
    let slower = f.decode_only.min(f.infer_only);
    println!(
        "\nscan of {} generated 1024x1024 PNGs (batch {}, {} decoder threads)",
        f.images, options.batch, options.decoders
    );
    println!(
        "  decode + preprocess alone  {:>8.1} images/s",
        f.decode_only
    );
    println!(
        "  inference alone            {:>8.1} images/s",
        f.infer_only
    );
    println!(
        "  pipeline end to end        {:>8.1} images/s  ({:.0} % of the slower stage alone)",
        f.end_to_end,
        f.end_to_end / slower * 100.0
    );
    Ok(Exit::Ok)
}
