use super::{BenchArgs, BenchPart, Exit, load_model};
use crate::bench::{
    decode_figures, fixed_input_probabilities, inference_figure, matmul_ceiling, scan_figures,
    store_scan_figures,
};
use crate::scoring::PipelineOptions;

pub fn run(args: BenchArgs) -> anyhow::Result<Exit> {
    let model = load_model(&args.model)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = rayon::current_num_threads();
    println!(
        "cxr-triage bench · {cores} cores, {threads} threads · model {} ({}x{} input)\n",
        model.manifest.name, model.manifest.input.size, model.manifest.input.size
    );

    let part = |p: BenchPart| args.only.is_none_or(|o| o == p);
    if part(BenchPart::Decode) {
        decode(&args);
    }
    if part(BenchPart::Inference) {
        inference(&args, &model);
    }
    if part(BenchPart::Scan) {
        scan(&args, &model)?;
    }
    if part(BenchPart::Tui) {
        tui(&args)?;
    }
    if part(BenchPart::Store) {
        store(&args, &model)?;
    }
    if part(BenchPart::Merge) {
        merge(&args, &model)?;
    }
    if part(BenchPart::Heatmap) {
        heatmap(&args, &model);
    }
    Ok(Exit::Ok)
}

fn heatmap(args: &BenchArgs, model: &crate::model::Model) {
    println!(
        "\nheatmaps (Grad-CAM), ms per batch, median of {} runs taken in turn",
        args.runs
    );
    for batch in [1, 8] {
        let f = crate::bench::heatmap_figures(model, batch, args.runs);
        println!(
            "  batch {batch}: inference {:>7.1} · with the predicted label's heatmap {:>7.1} ({:.2}x) \
             · a chosen label's heatmap {:>7.1} ({:.2}x)",
            f.infer_ms,
            f.with_heatmap_ms,
            f.with_heatmap_ms / f.infer_ms,
            f.chosen_label_ms,
            f.chosen_label_ms / f.infer_ms,
        );
    }
}

fn merge(args: &BenchArgs, model: &crate::model::Model) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cxr-triage-bench-merge-{}", std::process::id()));
    let runs = args.runs.min(3);
    let figures = crate::bench::merge::merge_figures(
        &dir,
        &model.manifest,
        args.model.model.as_deref(),
        args.merge_rows,
        8,
        runs,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let f = figures?;
    println!(
        "\nmerge of {} rows in {} CSV parts ({:.0} MiB), median of {runs} runs",
        f.rows,
        f.shards,
        f.bytes as f64 / (1 << 20) as f64
    );
    let median = crate::bench::median(f.seconds.clone());
    println!(
        "  time {median:>8.2} s ({:.0} rows/s), peak memory {:.0} MiB (the model included)",
        f.rows as f64 / median,
        f.peak_mib,
    );
    Ok(())
}

fn store(args: &BenchArgs, model: &crate::model::Model) -> anyhow::Result<()> {
    let base = std::env::temp_dir().join(format!("cxr-triage-bench-store-{}", std::process::id()));
    let reopen = crate::bench::tui::reopen_figures(
        &base.join("folder"),
        &base.join("reopen.sqlite3"),
        args.tui_files,
        args.runs,
    );
    let options = PipelineOptions::default();
    let scan = store_scan_figures(
        model,
        &base.join("images"),
        &base.join("stores"),
        args.images,
        args.runs.min(5),
        &options,
    );
    let _ = std::fs::remove_dir_all(&base);
    let (reopen, scan) = (reopen?, scan?);
    println!(
        "
results store: reopening a folder of {} files whose results are all stored",
        reopen.files
    );
    println!(
        "  launch to first full frame  {:>8.1} ms  (median of {} runs; model load included)",
        reopen.first_frame_ms, args.runs
    );
    println!(
        "  launch to all {} shown  {:>8.1} ms",
        reopen.files, reopen.all_shown_ms
    );
    println!("  (filling the store once took {:.0} ms)", reopen.fill_ms);
    println!(
        "
scan of {} generated 1024x1024 PNGs with the results store (median of {} runs each, taking turns)",
        scan.images,
        args.runs.min(5)
    );
    println!("  store off                  {:>8.1} images/s", scan.off);
    println!(
        "  empty store (all written)  {:>8.1} images/s  ({:+.1} % vs off)",
        scan.cold,
        (scan.cold / scan.off - 1.0) * 100.0
    );
    println!(
        "  full store (all read)      {:>8.1} images/s  ({:.0}x off)",
        scan.warm,
        scan.warm / scan.off
    );
    println!(
        "  per image: content hash {:.3} ms, difference hash {:.3} ms, decode {:.2} ms",
        scan.hash_ms, scan.dhash_ms, scan.decode_ms
    );
    Ok(())
}

fn decode(args: &BenchArgs) {
    println!("decode and thumbnail (median of {} runs)", args.runs);
    println!(
        "  {:<24} {:>10} {:>16}",
        "image", "decode ms", "thumb 256 px ms"
    );
    for (name, decode, thumb) in decode_figures(args.runs) {
        println!("  {name:<24} {decode:>10.2} {thumb:>16.2}");
    }
}

fn inference(args: &BenchArgs, model: &crate::model::Model) {
    let fixed: Vec<String> = fixed_input_probabilities(model)
        .iter()
        .map(|p| format!("{p:.4}"))
        .collect();
    println!(
        "\ninference (median of {} runs); fixed-input probabilities [{}]",
        args.runs,
        fixed.join(", ")
    );
    let macs = model.multiply_adds_per_image().unwrap_or(0) as f64;
    for batch in [1, 8] {
        let rate = inference_figure(model, batch, args.runs);
        println!(
            "  batch {batch}: {rate:>8.1} images/s  {:>6.1} GFLOP/s",
            2.0 * macs * rate / 1e9
        );
    }
    println!(
        "  {:.3} GFLOP per image (the kernels' multiply-adds x 2); ceiling: one 1024^3 matrix \
         product on every core {:.1} GFLOP/s",
        2.0 * macs / 1e9,
        matmul_ceiling(args.runs.min(9))
    );
}

fn scan(args: &BenchArgs, model: &crate::model::Model) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cxr-triage-bench-{}", std::process::id()));
    let options = PipelineOptions::default();
    let figures = scan_figures(model, &dir, args.images, &options);
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
    Ok(())
}

fn tui(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cxr-triage-bench-tui-{}", std::process::id()));
    let real = 1000.min(args.tui_files);
    let figures = crate::bench::tui::figures(
        &dir,
        args.tui_files,
        args.tui_folders,
        real,
        args.runs,
        args.keys,
    );
    let _ = std::fs::remove_dir_all(&dir);
    let f = figures?;
    let layout = if f.folders > 1 {
        format!(" in {} folders", f.folders)
    } else {
        String::new()
    };
    println!(
        "\nterminal UI, 120x35, {} files{layout} ({} real 1024x1024 PNGs, the rest empty stubs)",
        f.files, f.real
    );
    println!(
        "  launch to first full frame  {:>8.1} ms  (median of {} runs; model load included)",
        f.first_frame_ms, args.runs
    );
    println!("  all files listed            {:>8.1} ms", f.all_listed_ms);
    println!("  key + redraw while inference runs (queued results applied first):");
    for (name, median, p99, max, n) in &f.keys {
        println!(
            "    {name:<32} median {median:>6.2} ms  p99 {p99:>6.2} ms  max {max:>6.2} ms  ({n} keys)"
        );
    }
    println!("  images scored by then       {:>8}", f.scored_meanwhile);
    if let Some(peak) = crate::bench::tui::peak_rss_mib() {
        println!("  peak memory of the process  {peak:>8.0} MiB (every run, the model included)");
    }
    Ok(())
}
