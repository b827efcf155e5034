//! The training data: images of a split loaded once, per-sample loss weights, per-source
//! validation figures.

use super::augment::shrink;
use super::*;

pub(super) struct Loaded {
    pub(super) image: GrayImage,
    pub(super) label: usize,
    pub(super) source: usize,
}

pub(super) fn load_split(
    data: &Dataset,
    split: Split,
    shrink_to: usize,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Loaded>, TrainError> {
    let samples = data.split(split);
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        match imaging::load(&s.path) {
            Ok(d) => {
                let image = if shrink_to > 0 {
                    shrink(&d.image, shrink_to)
                } else {
                    d.image
                };
                out.push(Loaded {
                    image,
                    label: s.label,
                    source: s.source,
                });
            }
            Err(e) => log(&format!("skipping {}: {e}", s.path.display())),
        }
    }
    log(&format!("{split:?}: {} images loaded", out.len()));
    Ok(out)
}

/// Class-weighted cross-entropy with label smoothing, averaged by weight.
/// Per-sample loss weights that keep every source and label represented: within a pool, each
/// (source, label) cell weighs as the square root of its size (a cell 100x larger counts 10x,
/// not 100x), then labels are rebalanced to equal shares; mean 1 over the samples.
pub(super) fn sample_weights(set: &[Loaded], labels: usize, sources: usize) -> Vec<f32> {
    let mut cell = vec![0usize; labels * sources];
    set.iter()
        .for_each(|s| cell[s.source * labels + s.label] += 1);
    let raw: Vec<f64> = set
        .iter()
        .map(|s| 1.0 / (cell[s.source * labels + s.label] as f64).sqrt())
        .collect();
    let mut per_label = vec![0f64; labels];
    set.iter()
        .zip(&raw)
        .for_each(|(s, w)| per_label[s.label] += w);
    let present = per_label.iter().filter(|&&m| m > 0.0).count().max(1) as f64;
    let n = set.len() as f64;
    set.iter()
        .zip(&raw)
        .map(|(s, w)| (w * n / (present * per_label[s.label])) as f32)
        .collect()
}

/// Accuracy and macro AUC on each source's val images (AUC over the labels it has).
pub(super) fn per_source_metrics(
    data: &Dataset,
    probs: &[Vec<f32>],
    truth: &[usize],
    source: &[usize],
) -> Vec<(String, f64, f64)> {
    data.sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let rows: Vec<usize> = (0..truth.len()).filter(|&r| source[r] == i).collect();
            if rows.is_empty() {
                return None;
            }
            let p: Vec<Vec<f32>> = rows.iter().map(|&r| probs[r].clone()).collect();
            let t: Vec<usize> = rows.iter().map(|&r| truth[r]).collect();
            let m = Metrics::compute(&p, &t, &data.labels);
            Some((s.name.clone(), m.accuracy, m.macro_auc.unwrap_or(f64::NAN)))
        })
        .collect()
}
