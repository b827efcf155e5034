//! `train --export-views`: augmented views of the train images for the PyTorch twin
//! (`tools/train_twin.py`), so that its inputs are ours by construction.

use super::*;

/// Quantise a [0, 1] plane to u16 (the views file format; 1/65535 steps).
pub(super) fn quantise(unit: &[f32]) -> Vec<u8> {
    unit.iter()
        .flat_map(|v| ((v.clamp(0.0, 1.0) * 65535.0).round() as u16).to_le_bytes())
        .collect()
}

/// `--export-views`: what a PyTorch twin of this recipe trains on, made by this code so both
/// see the same input tensors. `train.u16`: for each train image, `views` augmented planes
/// (seeded as epochs are); `val.u16`: the centre view of each val image; both little-endian
/// u16 of the [0, 1] intensity before `scale`/`mean`/`std`; `index.json`: labels, sources,
/// loss weights, the input spec and the shapes.
///
/// Long on purpose: train and val written in one pass with the index that describes them.
#[allow(clippy::too_many_arguments)]
pub(super) fn export_views(
    dir: &Path,
    cfg: &TrainConfig,
    p: &Prepared,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, TrainError> {
    let (data, spec, train_set, weights) = (&p.data, &p.spec, &p.train_set, &p.sample_weights);
    let (val_set, val_planes) = (&p.val_set, &p.val_planes);
    use std::io::Write;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| TrainError::Io { path, source: e }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let [lo, hi] = spec.scale;
    let unit_spec = InputSpec {
        scale: [0.0, 1.0],
        ..spec.clone()
    };
    let to_unit = |p: &[f32]| -> Vec<f32> { p.iter().map(|v| (v - lo) / (hi - lo)).collect() };
    let train_path = dir.join("train.u16");
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&train_path).map_err(io(&train_path))?);
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (n, chunk) in train_set.chunks(64).enumerate() {
        let planes: Vec<Result<Vec<u8>, ModelError>> = std::thread::scope(|scope| {
            let per = chunk.len().div_ceil(threads);
            let handles: Vec<_> = chunk
                .chunks(per.max(1))
                .enumerate()
                .map(|(j, part)| {
                    let unit_spec = &unit_spec;
                    scope.spawn(move || {
                        part.iter()
                            .enumerate()
                            .map(|(i, s)| {
                                let index = n * 64 + j * per + i;
                                let mut bytes = Vec::new();
                                for v in 0..cfg.views {
                                    let mut r = StdRng::seed_from_u64(
                                        cfg.seed
                                            ^ ((index as u64) << 16 | v as u64)
                                                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
                                    );
                                    bytes.extend(quantise(&augment(&s.image, unit_spec, &mut r)?));
                                }
                                Ok(bytes)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("view thread"))
                .collect()
        });
        for p in planes {
            out.write_all(&p?).map_err(io(&train_path))?;
        }
        log(&format!(
            "views: {} of {} train images ({:.0} s)",
            (n * 64 + chunk.len()).min(train_set.len()),
            train_set.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    out.flush().map_err(io(&train_path))?;
    let val_path = dir.join("val.u16");
    let bytes: Vec<u8> = val_planes
        .iter()
        .flat_map(|p| quantise(&to_unit(p)))
        .collect();
    std::fs::write(&val_path, bytes).map_err(io(&val_path))?;
    let index = serde_json::json!({
        "labels": data.labels,
        "sources": data.sources.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "input": spec,
        "views": cfg.views,
        "seed": cfg.seed,
        "train": {
            "label": train_set.iter().map(|s| s.label).collect::<Vec<_>>(),
            "source": train_set.iter().map(|s| s.source).collect::<Vec<_>>(),
            "weight": weights,
        },
        "val": {
            "label": val_set.iter().map(|s| s.label).collect::<Vec<_>>(),
            "source": val_set.iter().map(|s| s.source).collect::<Vec<_>>(),
        },
    });
    let index_path = dir.join("index.json");
    std::fs::write(
        &index_path,
        serde_json::to_string(&index).expect("index serialises"),
    )
    .map_err(io(&index_path))?;
    log(&format!(
        "wrote {} ({} train x {} views, {} val)",
        dir.display(),
        train_set.len(),
        cfg.views,
        val_set.len()
    ));
    Ok(index_path)
}
