//! Classification metrics shared by `train` (validation), `eval` and dataset review.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::model::argmax;

/// One-vs-rest ROC AUC for `class` (Mann-Whitney U, ties counted half). `None` when the class
/// or its complement is absent.
pub fn roc_auc(probs: &[Vec<f32>], truth: &[usize], class: usize) -> Option<f64> {
    let mut scored: Vec<(f32, bool)> = probs
        .iter()
        .zip(truth)
        .map(|(p, &t)| (p[class], t == class))
        .collect();
    let pos = scored.iter().filter(|s| s.1).count();
    let neg = scored.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of positive ranks with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < scored.len() {
        let mut j = i;
        while j < scored.len() && scored[j].0 == scored[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0; // ranks are 1-based: (i+1 + j) / 2
        rank_sum += avg_rank * scored[i..j].iter().filter(|s| s.1).count() as f64;
        i = j;
    }
    Some((rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64)
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassMetrics {
    pub label: String,
    pub support: usize,
    pub sensitivity: f64,
    pub specificity: f64,
    pub ppv: f64,
    pub auc: Option<f64>,
}

/// Point estimates for a set of predictions against labels.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    pub macro_auc: Option<f64>,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

impl Metrics {
    pub fn compute(probs: &[Vec<f32>], truth: &[usize], labels: &[String]) -> Self {
        let k = labels.len();
        let mut confusion = vec![vec![0usize; k]; k];
        for (p, &t) in probs.iter().zip(truth) {
            confusion[t][argmax(p)] += 1;
        }
        let n = truth.len();
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let per_class: Vec<ClassMetrics> = (0..k)
            .map(|c| {
                let tp = confusion[c][c];
                let support: usize = confusion[c].iter().sum();
                let predicted: usize = (0..k).map(|t| confusion[t][c]).sum();
                let tn = n + tp - support - predicted;
                ClassMetrics {
                    label: labels[c].clone(),
                    support,
                    sensitivity: ratio(tp, support),
                    specificity: ratio(tn, n - support),
                    ppv: ratio(tp, predicted),
                    auc: roc_auc(probs, truth, c),
                }
            })
            .collect();
        let aucs: Vec<f64> = per_class.iter().filter_map(|c| c.auc).collect();
        Self {
            n,
            accuracy: ratio(correct, n),
            macro_auc: (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64),
            per_class,
            confusion,
        }
    }
}

/// Accuracy of telling class `a` from class `b`, on the images whose truth is `a` or `b`,
/// choosing whichever of the two has the higher probability.
pub fn pairwise_accuracy(probs: &[Vec<f32>], truth: &[usize], a: usize, b: usize) -> Option<f64> {
    let pairs: Vec<bool> = probs
        .iter()
        .zip(truth)
        .filter(|(_, t)| **t == a || **t == b)
        .map(|(p, &t)| (if p[a] >= p[b] { a } else { b }) == t)
        .collect();
    (!pairs.is_empty()).then(|| pairs.iter().filter(|&&c| c).count() as f64 / pairs.len() as f64)
}

/// Sensitivity and specificity of "`probs[class] >= threshold`" for `class`.
pub fn at_threshold(
    probs: &[Vec<f32>],
    truth: &[usize],
    class: usize,
    threshold: f32,
) -> (f64, f64) {
    let (mut tp, mut pos, mut tn, mut neg) = (0, 0, 0, 0);
    for (p, &t) in probs.iter().zip(truth) {
        let flagged = p[class] >= threshold;
        if t == class {
            pos += 1;
            tp += usize::from(flagged);
        } else {
            neg += 1;
            tn += usize::from(!flagged);
        }
    }
    (ratio(tp, pos), ratio(tn, neg))
}

/// 95 % percentile bootstrap interval of `stat` over resamples of the indices (seeded).
pub fn bootstrap_ci(
    n: usize,
    resamples: usize,
    seed: u64,
    stat: impl Fn(&[usize]) -> f64,
) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut values: Vec<f64> = (0..resamples)
        .map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            stat(&idx)
        })
        .filter(|v| v.is_finite())
        .collect();
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_and_reversed_rankings() {
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.8, 0.2],
            vec![0.3, 0.7],
            vec![0.1, 0.9],
        ];
        let truth = [0, 0, 1, 1];
        assert_eq!(roc_auc(&probs, &truth, 0), Some(1.0));
        assert_eq!(roc_auc(&probs, &[1, 1, 0, 0], 0), Some(0.0));
        // All tied: chance.
        let tied = vec![vec![0.5, 0.5]; 4];
        assert_eq!(roc_auc(&tied, &truth, 0), Some(0.5));
        assert_eq!(roc_auc(&probs, &[0, 0, 0, 0], 0), None);
    }

    #[test]
    fn confusion_and_rates() {
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.4, 0.6],
            vec![0.3, 0.7],
            vec![0.6, 0.4],
        ];
        let m = Metrics::compute(&probs, &[0, 0, 1, 1], &labels);
        assert_eq!(m.confusion, vec![vec![1, 1], vec![1, 1]]);
        assert_eq!(m.accuracy, 0.5);
        assert_eq!(m.per_class[0].sensitivity, 0.5);
        assert_eq!(m.per_class[0].ppv, 0.5);
        assert_eq!(at_threshold(&probs, &[0, 0, 1, 1], 0, 0.35), (1.0, 0.5));
    }

    #[test]
    fn all_one_class_all_correct() {
        // support + predicted > n: the true-negative count must not underflow.
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let m = Metrics::compute(&[vec![0.9, 0.1], vec![0.8, 0.2]], &[0, 0], &labels);
        assert_eq!(m.accuracy, 1.0);
        assert!(
            m.per_class[0].specificity.is_nan(),
            "no negatives: undefined"
        );
        assert_eq!(m.per_class[1].specificity, 1.0);
    }
}
