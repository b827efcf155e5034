//! The unusual-input score: how far an image's features lie from the training data.
//!
//! Mahalanobis distance (Lee et al. 2018) with class means and one shared covariance per
//! layer, fitted on the training images' features (centre view): `d2(f) = min_c |W (f -
//! mu_c)|^2` where `W = L^-1` and `L L^T` is the covariance, shrunk towards a multiple of the
//! identity so that it stays invertible with few images. A network gives one or more layers of
//! features (the pooled features; for EfficientNet also the per-channel mean and deviation of
//! the stem's and each stage's map, where texture, noise and contrast show), and each layer's
//! distance is divided by its own 95th percentile on `val`; the score is the largest of those.
//! The manifest stores the threshold on that score chosen on `val` (95 % of val images at or
//! below it); a score is reported as `score / threshold`, so above 1 is unusual: a photo, a CT
//! slice, a lateral view, a rendered film, an inverted one. Unusual images are still scored;
//! the flag says "check before trusting".

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Share of the covariance replaced by `trace / d * I`.
pub const SHRINKAGE: f64 = 0.1;
/// Share of val images that the threshold keeps typical.
pub const TYPICAL_SHARE: f64 = 0.95;
/// Tensor names in the weights file: a score of several layers has each layer's
/// (`unusual.{i}.whiten`, `...centres`) and their scales (`unusual.scales`); a score of one
/// layer keeps the names from before there were layers (`unusual.whiten`, `unusual.centres`).
pub fn whiten_name(layer: usize) -> String {
    format!("unusual.{layer}.whiten")
}
pub fn centres_name(layer: usize) -> String {
    format!("unusual.{layer}.centres")
}
pub const SCALES: &str = "unusual.scales";
pub const WHITEN: &str = "unusual.whiten";
pub const CENTRES: &str = "unusual.centres";

fn one() -> usize {
    1
}

/// The manifest's part: what the tensors are and the threshold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UnusualSpec {
    /// Always `mahalanobis` (class means, shared shrunk covariance, per layer).
    pub method: String,
    /// Score at which an image becomes unusual (95th percentile on val): the squared distance
    /// for one layer, the largest scaled one for several.
    pub threshold: f32,
    /// Layers of features the score combines (1: the pooled features alone).
    #[serde(default = "one")]
    pub layers: usize,
    /// How it was fitted, for the record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fitted_on: String,
}

/// The fitted score: one [`Layer`] per layer of features, and each layer's scale (its
/// distances are divided by it before the largest is taken).
#[derive(Clone, Debug)]
pub struct Unusual {
    pub layers: Vec<(Layer, f32)>,
}

impl Unusual {
    /// Fit every layer on the train features `(n, d_l)` and scale it by its val distances'
    /// [`TYPICAL_SHARE`] quantile; returns the score and the val images' scores.
    pub fn fit(
        train: &[Tensor],
        labels: &[usize],
        k: usize,
        val: &[Tensor],
    ) -> Result<(Self, Vec<f32>)> {
        if train.len() != val.len() || train.is_empty() {
            candle_core::bail!("{} train and {} val layers", train.len(), val.len());
        }
        let mut layers = Vec::new();
        let mut val_scores: Vec<f32> = Vec::new();
        for (t, v) in train.iter().zip(val) {
            let layer = Layer::fit(t, labels, k)?;
            let d = layer.distances(v)?;
            let scale = if train.len() == 1 {
                1.0
            } else {
                quantile(&d, TYPICAL_SHARE).max(f32::MIN_POSITIVE)
            };
            combine(&mut val_scores, &d, scale);
            layers.push((layer, scale));
        }
        Ok((Self { layers }, val_scores))
    }

    /// The score of each image: the largest of its layers' scaled distances. `features` holds
    /// one tensor `(n, d_l)` per layer.
    pub fn scores(&self, features: &[Tensor]) -> Result<Vec<f32>> {
        if features.len() != self.layers.len() {
            candle_core::bail!(
                "the unusual-input score has {} layers, given {}",
                self.layers.len(),
                features.len()
            );
        }
        let mut out = Vec::new();
        for ((layer, scale), f) in self.layers.iter().zip(features) {
            combine(&mut out, &layer.distances(f)?, *scale);
        }
        Ok(out)
    }
}

/// `acc = max(acc, d / scale)` element-wise (`acc` empty: the first layer).
fn combine(acc: &mut Vec<f32>, d: &[f32], scale: f32) {
    if acc.is_empty() {
        acc.extend(d.iter().map(|v| v / scale));
    } else {
        acc.iter_mut()
            .zip(d)
            .for_each(|(a, v)| *a = a.max(v / scale));
    }
}

/// One layer's fit: whitening matrix and whitened class centres.
#[derive(Clone, Debug)]
pub struct Layer {
    /// `(d, d)`: rows of `W`.
    pub whiten: Tensor,
    /// `(k, d)`: `W mu_c`.
    pub centres: Tensor,
}

impl Layer {
    /// Fit on features `(n, d)` with their labels (`k` classes; a class without images is
    /// left out).
    pub fn fit(features: &Tensor, labels: &[usize], k: usize) -> Result<Self> {
        let (n, d) = features.dims2()?;
        let device = features.device();
        let f = features.to_dtype(DType::F32)?;
        let rows = f.to_vec2::<f32>()?;
        let mut means = vec![vec![0f64; d]; k];
        let mut counts = vec![0usize; k];
        for (row, &c) in rows.iter().zip(labels) {
            counts[c] += 1;
            for (m, v) in means[c].iter_mut().zip(row) {
                *m += *v as f64;
            }
        }
        for (m, &c) in means.iter_mut().zip(&counts) {
            m.iter_mut().for_each(|v| *v /= c.max(1) as f64);
        }
        let centred: Vec<f32> = rows
            .iter()
            .zip(labels)
            .flat_map(|(row, &c)| {
                let mean = &means[c];
                row.iter()
                    .zip(mean)
                    .map(|(v, m)| (*v as f64 - m) as f32)
                    .collect::<Vec<_>>()
            })
            .collect();
        let x = Tensor::from_vec(centred, (n, d), device)?;
        let cov = (x.t()?.matmul(&x)? / n.max(1) as f64)?.to_vec2::<f32>()?;
        let trace: f64 = (0..d).map(|i| cov[i][i] as f64).sum();
        let ridge = (trace / d as f64).max(1e-12);
        let mut a: Vec<f64> = Vec::with_capacity(d * d);
        for (i, row) in cov.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let diag = if i == j { SHRINKAGE * ridge } else { 0.0 };
                a.push((1.0 - SHRINKAGE) * v as f64 + diag);
            }
        }
        let l = cholesky(&mut a, d).ok_or_else(|| {
            candle_core::Error::Msg("feature covariance is not positive definite".into())
        })?;
        let w = lower_inverse(&l, d);
        let whiten = Tensor::from_vec(
            w.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            (d, d),
            device,
        )?;
        let present: Vec<usize> = (0..k).filter(|&c| counts[c] > 0).collect();
        let mu: Vec<f32> = present
            .iter()
            .flat_map(|&c| means[c].iter().map(|&v| v as f32))
            .collect();
        let mu = Tensor::from_vec(mu, (present.len(), d), device)?;
        let centres = mu.matmul(&whiten.t()?)?;
        Ok(Self { whiten, centres })
    }

    /// Squared distances `d2` of features `(n, d)` to the nearest class centre.
    pub fn distances(&self, features: &Tensor) -> Result<Vec<f32>> {
        let z = features.matmul(&self.whiten.t()?)?; // (n, d)
        let (n, _) = z.dims2()?;
        let z = z.to_vec2::<f32>()?;
        let c = self.centres.to_vec2::<f32>()?;
        Ok((0..n)
            .map(|i| {
                c.iter()
                    .map(|centre| {
                        centre
                            .iter()
                            .zip(&z[i])
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum::<f32>()
                    })
                    .fold(f32::INFINITY, f32::min)
            })
            .collect())
    }

    /// Read the tensors from a weights file's variables.
    pub fn from_tensors(whiten: Tensor, centres: Tensor) -> Result<Self> {
        let (d, d2) = whiten.dims2()?;
        let (_, dc) = centres.dims2()?;
        if d != d2 || dc != d {
            return Err(candle_core::Error::Msg(format!(
                "unusual-input tensors have shapes {:?} and {:?}",
                whiten.dims(),
                centres.dims()
            )));
        }
        Ok(Self { whiten, centres })
    }
}

/// The value below which `share` of `values` lie (nearest rank, at least one value).
pub fn quantile(values: &[f32], share: f64) -> f32 {
    let mut v: Vec<f32> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f32::INFINITY;
    }
    v.sort_by(f32::total_cmp);
    let rank = ((share * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// In-place Cholesky factor of a symmetric positive definite `d x d` matrix (row-major):
/// returns the lower triangle `L` with `A = L L^T`, or `None` if `A` is not positive definite.
fn cholesky(a: &mut [f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for j in 0..d {
        let row_j = &l[j * d..j * d + j];
        let s: f64 = row_j.iter().map(|v| v * v).sum();
        let diag = a[j * d + j] - s;
        if diag <= 0.0 || !diag.is_finite() {
            return None;
        }
        let ljj = diag.sqrt();
        l[j * d + j] = ljj;
        for i in j + 1..d {
            let (head, tail) = l.split_at_mut(i * d);
            let dot: f64 = tail[..j]
                .iter()
                .zip(&head[j * d..j * d + j])
                .map(|(x, y)| x * y)
                .sum();
            tail[j] = (a[i * d + j] - dot) / ljj;
        }
    }
    Some(l)
}

/// Inverse of a lower-triangular `d x d` matrix (row-major), by forward substitution.
fn lower_inverse(l: &[f64], d: usize) -> Vec<f64> {
    let mut inv = vec![0f64; d * d];
    for i in 0..d {
        inv[i * d + i] = 1.0 / l[i * d + i];
        for j in 0..i {
            let mut s = 0.0;
            for m in j..i {
                s += l[i * d + m] * inv[m * d + j];
            }
            inv[i * d + j] = -s / l[i * d + i];
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn gauss(rng: &mut StdRng) -> f32 {
        let u1: f32 = rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = rng.random();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    #[test]
    fn cholesky_and_inverse_whiten_a_known_matrix() {
        // A = [[4, 2], [2, 3]]: L = [[2, 0], [1, sqrt 2]].
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let l = cholesky(&mut a, 2).unwrap();
        assert!((l[0] - 2.0).abs() < 1e-12 && (l[2] - 1.0).abs() < 1e-12);
        assert!((l[3] - 2f64.sqrt()).abs() < 1e-12);
        let w = lower_inverse(&l, 2);
        // W L = I
        let prod = [
            w[0] * l[0] + w[1] * l[2],
            w[0] * l[1] + w[1] * l[3],
            w[2] * l[0] + w[3] * l[2],
            w[2] * l[1] + w[3] * l[3],
        ];
        for (p, want) in prod.iter().zip([1.0, 0.0, 0.0, 1.0]) {
            assert!((p - want).abs() < 1e-12, "{prod:?}");
        }
        assert!(cholesky(&mut [1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    /// Points of the fitted clusters score low, points far off score high, and the 95th
    /// percentile threshold keeps about 95 % of fresh in-distribution points typical.
    #[test]
    fn far_points_score_far_and_the_threshold_keeps_95_percent() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(3);
        let d = 16;
        let sample = |rng: &mut StdRng, n: usize| -> (Vec<f32>, Vec<usize>) {
            let mut v = Vec::new();
            let mut y = Vec::new();
            for i in 0..n {
                let c = i % 2;
                for j in 0..d {
                    let centre = if c == 0 { 2.0 } else { -2.0 } * (j % 3) as f32;
                    v.push(centre + gauss(rng) * (1.0 + j as f32 / 8.0));
                }
                y.push(c);
            }
            (v, y)
        };
        let (v, y) = sample(&mut rng, 2000);
        let fit = Layer::fit(&Tensor::from_vec(v, (2000, d), &Device::Cpu)?, &y, 2)?;
        let (v, _) = sample(&mut rng, 1000);
        let val = fit.distances(&Tensor::from_vec(v, (1000, d), &Device::Cpu)?)?;
        let t = quantile(&val, TYPICAL_SHARE);
        let (v, _) = sample(&mut rng, 1000);
        let fresh = fit.distances(&Tensor::from_vec(v, (1000, d), &Device::Cpu)?)?;
        let typical = fresh.iter().filter(|&&x| x <= t).count();
        assert!((920..=980).contains(&typical), "{typical} of 1000 typical");
        let far = Tensor::from_vec(vec![25f32; d], (1, d), &Device::Cpu)?;
        assert!(fit.distances(&far)?[0] > 10.0 * t);
        Ok(())
    }

    /// Two layers, each scaled by its val quantile: a point typical in one layer and far in the
    /// other is unusual, in-distribution points stay typical at the val threshold, and the
    /// score of one layer alone is its plain distance.
    #[test]
    fn a_point_far_in_any_layer_is_unusual() -> Result<()> {
        let mut rng = StdRng::seed_from_u64(5);
        let cpu = &Device::Cpu;
        // Layer 0: 8 dims around 0; layer 1: 4 dims around 10, ten times wider.
        let sample = |rng: &mut StdRng, n: usize| -> Result<Vec<Tensor>> {
            let a: Vec<f32> = (0..n * 8).map(|_| gauss(rng)).collect();
            let b: Vec<f32> = (0..n * 4).map(|_| 10.0 + 10.0 * gauss(rng)).collect();
            Ok(vec![
                Tensor::from_vec(a, (n, 8), cpu)?,
                Tensor::from_vec(b, (n, 4), cpu)?,
            ])
        };
        let labels = vec![0; 3000];
        let (fit, val) = Unusual::fit(
            &sample(&mut rng, 3000)?,
            &labels,
            1,
            &sample(&mut rng, 1000)?,
        )?;
        let t = quantile(&val, TYPICAL_SHARE);
        // Each layer scaled to its own 95th percentile: the largest of two such is about 1.1-1.3.
        assert!((1.0..1.5).contains(&t), "threshold {t}");
        let fresh = fit.scores(&sample(&mut rng, 1000)?)?;
        let typical = fresh.iter().filter(|&&x| x <= t).count();
        assert!((920..=980).contains(&typical), "{typical} of 1000 typical");
        // Typical in layer 1, 6 sigma off in layer 0; then the other way round.
        let far_a = vec![
            Tensor::from_vec(vec![6f32; 8], (1, 8), cpu)?,
            Tensor::from_vec(vec![10f32; 4], (1, 4), cpu)?,
        ];
        let far_b = vec![
            Tensor::from_vec(vec![0f32; 8], (1, 8), cpu)?,
            Tensor::from_vec(vec![70f32; 4], (1, 4), cpu)?,
        ];
        assert!(fit.scores(&far_a)?[0] > 3.0 * t);
        assert!(fit.scores(&far_b)?[0] > 3.0 * t);
        assert!(fit.scores(&far_a[..1]).is_err(), "a layer missing");
        // One layer: the score is the layer's distance, unscaled.
        let one = sample(&mut rng, 500)?;
        let (single, val) = Unusual::fit(&one[..1], &labels[..500], 1, &one[..1])?;
        assert_eq!(single.layers[0].1, 1.0);
        assert_eq!(val, single.layers[0].0.distances(&one[0])?);
        Ok(())
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&[3.0], 0.95), 3.0);
        assert!(quantile(&[], 0.95).is_infinite());
    }
}
