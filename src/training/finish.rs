//! The last stage: temperature on val, the operating point, the unusual-input score.

use super::*;

/// Stage 6, finish: temperature on val, the operating point (sensitivity target on val), the
/// model saved, then the unusual-input score fitted on the saved model and saved with it.
pub(super) fn finish(
    run: &Run,
    state: &State,
    manifest: &mut Manifest,
    varmap: &VarMap,
    log: &mut dyn FnMut(&str),
    batch_done: &mut dyn FnMut(usize, usize, usize),
) -> Result<PathBuf, TrainError> {
    let (cfg, p) = (run.cfg, run.p);
    let val_logits = run.val_logits()?;
    let temperature = calibrate_temperature(&val_logits, &p.val_truth)?;
    manifest.temperature = temperature;
    let val_probs =
        candle_nn::ops::softmax_last_dim(&(val_logits / temperature as f64)?)?.to_vec2::<f32>()?;
    let labels = &p.data.labels;
    let flag_class = labels.iter().position(|l| l == "covid").unwrap_or(0);
    let threshold = operating_point(&val_probs, &p.val_truth, flag_class, cfg.target_sensitivity);
    let (sens, spec_) = at_threshold(&val_probs, &p.val_truth, flag_class, threshold);
    manifest
        .operating_points
        .insert(labels[flag_class].clone(), threshold);
    log(&format!(
        "best epoch {} of {}; temperature {temperature:.3}; operating point {} >= {threshold:.3} (val sensitivity {sens:.3}, specificity {spec_:.3}); {:.0} s in all",
        state.best_epoch, cfg.epochs, labels[flag_class], state.seconds
    ));
    let path = crate::model::save(&cfg.dir(), manifest, varmap)?;
    fit_unusual(
        &path,
        manifest,
        varmap,
        &p.train_set,
        &p.val_planes,
        log,
        batch_done,
    )?;
    let path = crate::model::save(&cfg.dir(), manifest, varmap)?;
    log(&format!("wrote {}", path.display()));
    Ok(path)
}

/// Fit the unusual-input score on the saved model's features (the inference network, batch
/// norms folded): class means and covariance from the train images' centre views, the
/// threshold at the 95th percentile of val. Adds its tensors to `varmap` and its spec to
/// `manifest`.
pub(super) fn fit_unusual(
    saved: &Path,
    manifest: &mut Manifest,
    varmap: &VarMap,
    train_set: &[Loaded],
    val_planes: &[Vec<f32>],
    log: &mut dyn FnMut(&str),
    batch_done: &mut dyn FnMut(usize, usize, usize),
) -> Result<(), TrainError> {
    use crate::model::unusual::{
        CENTRES, SCALES, SHRINKAGE, TYPICAL_SHARE, Unusual, UnusualSpec, WHITEN, centres_name,
        quantile, whiten_name,
    };
    let started = Instant::now();
    let model = crate::model::Model::load(saved)?;
    let spec = &model.manifest.input;
    // Train and val go in separate chunks: the progress total counts each split's own.
    let total = train_set.len().div_ceil(FEATURE_CHUNK) + val_planes.len().div_ceil(FEATURE_CHUNK);
    let mut done = 0;
    let mut features_of = |planes: &[Vec<f32>]| -> Result<Vec<Tensor>, TrainError> {
        let t = model.unusual_features(planes)?;
        done += 1;
        batch_done(0, done, total);
        Ok(t)
    };
    // Chunks of layers -> layers of all images.
    let by_layer = |chunks: Vec<Vec<Tensor>>| -> Result<Vec<Tensor>, TrainError> {
        let layers = chunks.first().map_or(0, Vec::len);
        (0..layers)
            .map(|l| {
                let parts: Vec<&Tensor> = chunks.iter().map(|c| &c[l]).collect();
                Ok(Tensor::cat(&parts, 0)?)
            })
            .collect()
    };
    let mut parts = Vec::new();
    for chunk in train_set.chunks(FEATURE_CHUNK) {
        let planes: Vec<Vec<f32>> = chunk
            .iter()
            .map(|s| preprocess(&s.image, spec))
            .collect::<Result<_, _>>()?;
        parts.push(features_of(&planes)?);
    }
    let train_features = by_layer(parts)?;
    let parts = val_planes
        .chunks(FEATURE_CHUNK)
        .map(&mut features_of)
        .collect::<Result<Vec<_>, _>>()?;
    let val_features = by_layer(parts)?;
    let labels: Vec<usize> = train_set.iter().map(|s| s.label).collect();
    let (fit, val_scores) = Unusual::fit(
        &train_features,
        &labels,
        manifest.labels.len(),
        &val_features,
    )?;
    let threshold = quantile(&val_scores, TYPICAL_SHARE);
    let layers = fit.layers.len();
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        if let [(layer, _)] = fit.layers.as_slice() {
            // One layer keeps the names from before there were layers.
            data.insert(WHITEN.into(), Var::from_tensor(&layer.whiten)?);
            data.insert(CENTRES.into(), Var::from_tensor(&layer.centres)?);
        } else {
            for (i, (layer, _)) in fit.layers.iter().enumerate() {
                data.insert(whiten_name(i), Var::from_tensor(&layer.whiten)?);
                data.insert(centres_name(i), Var::from_tensor(&layer.centres)?);
            }
            let scales: Vec<f32> = fit.layers.iter().map(|(_, s)| *s).collect();
            let scales = Tensor::from_vec(scales, layers, &candle_core::Device::Cpu)?;
            data.insert(SCALES.into(), Var::from_tensor(&scales)?);
        }
    }
    let what = if layers == 1 {
        "the pooled features".to_string()
    } else {
        format!(
            "{layers} layers (the stem's and each stage's per-channel mean and deviation, the pooled features), each divided by its val 95th percentile, the largest kept"
        )
    };
    manifest.unusual = Some(UnusualSpec {
        method: "mahalanobis".into(),
        threshold,
        layers,
        fitted_on: format!(
            "{} train images (centre view; {what}; class means, shared covariance shrunk {} % to the identity); threshold: {} % of {} val images typical",
            train_set.len(),
            SHRINKAGE * 100.0,
            (TYPICAL_SHARE * 100.0).round(),
            val_planes.len()
        ),
    });
    log(&format!(
        "unusual-input score: fitted on {} train images ({layers} layer(s)), threshold {threshold:.4} (95th percentile of val), {:.0} s",
        train_set.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Mean negative log-likelihood of the truth at temperature `t`.
pub(super) fn nll(logits: &Tensor, truth: &[usize], t: f32) -> candle_core::Result<f64> {
    let logp = candle_nn::ops::log_softmax(&(logits / t as f64)?, D::Minus1)?.to_vec2::<f32>()?;
    Ok(-logp
        .iter()
        .zip(truth)
        .map(|(row, &c)| row[c] as f64)
        .sum::<f64>()
        / truth.len().max(1) as f64)
}

/// The temperature in [0.25, 5] that minimises validation NLL (grid search, then refine).
pub(super) fn calibrate_temperature(logits: &Tensor, truth: &[usize]) -> candle_core::Result<f32> {
    let mut best = (f64::INFINITY, 1.0f32);
    for i in 0..=100 {
        let t = 0.25 * (20.0f32).powf(i as f32 / 100.0);
        let v = nll(logits, truth, t)?;
        if v < best.0 {
            best = (v, t);
        }
    }
    Ok(best.1)
}

/// The highest threshold on `class`'s probability that keeps sensitivity on these images at
/// or above `target`, rounded down to 0.001 (so the images that set it stay flagged; a coarser
/// step costs specificity where the threshold is small: 0.089 rounded to 0.08 flags every image
/// between them).
pub fn operating_point(probs: &[Vec<f32>], truth: &[usize], class: usize, target: f64) -> f32 {
    let mut pos: Vec<f32> = probs
        .iter()
        .zip(truth)
        .filter(|(_, t)| **t == class)
        .map(|(p, _)| p[class])
        .collect();
    if pos.is_empty() {
        return 0.5;
    }
    pos.sort_by(|a, b| b.total_cmp(a));
    let needed = ((target * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
    ((pos[needed - 1] * 1000.0).floor() / 1000.0).clamp(0.001, 0.999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operating_point_keeps_the_target_without_flagging_more_than_it_needs() {
        // 20 positives at 0.0895..0.99: 95 % sensitivity needs the 19th highest, 0.0895.
        let mut probs: Vec<Vec<f32>> = (0..19).map(|i| vec![0.99 - i as f32 * 0.01, 0.0]).collect();
        probs[18][0] = 0.0895;
        probs.push(vec![0.02, 0.0]);
        let mut truth = vec![0; 20];
        // Negatives between 0.080 and 0.089: none should be flagged.
        for i in 0..9 {
            probs.push(vec![0.080 + i as f32 * 0.001, 0.0]);
            truth.push(1);
        }
        let t = operating_point(&probs, &truth, 0, 0.95);
        assert!((0.089..=0.0895).contains(&t), "{t}");
        let flagged_pos = (0..20).filter(|&i| probs[i][0] >= t).count();
        assert_eq!(flagged_pos, 19);
        let flagged_neg = (20..29).filter(|&i| probs[i][0] >= t).count();
        assert_eq!(flagged_neg, 0);
    }
}
