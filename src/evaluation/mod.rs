//! Evaluating a model on a labelled split: point estimates with 95 % bootstrap intervals.

pub mod metrics;

use std::sync::atomic::AtomicBool;

use serde::Serialize;

use crate::catalog::Entry;
use crate::catalog::dataset::{Dataset, Split};
use crate::evaluation::metrics::{Metrics, at_threshold, bootstrap_ci, pairwise_accuracy, roc_auc};
use crate::model::Model;
use crate::results::Outcome;
use crate::results::Typicality;
use crate::scoring::{PipelineOptions, score_all};

/// A figure with its 95 % bootstrap interval.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub label: String,
    pub support: usize,
    pub sensitivity: Estimate,
    pub specificity: Estimate,
    pub ppv: Estimate,
    pub auc: Option<Estimate>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OperatingPointReport {
    pub label: String,
    pub threshold: f32,
    pub sensitivity: Estimate,
    pub specificity: Estimate,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: String,
    pub data: String,
    /// The split evaluated (`None`: a whole folder, as `scan` reviews it).
    pub split: Option<Split>,
    pub n: usize,
    /// Files that could not be scored (excluded from every figure).
    pub failed: Vec<String>,
    pub accuracy: Estimate,
    pub macro_auc: Option<Estimate>,
    pub per_class: Vec<ClassReport>,
    pub labels: Vec<String>,
    /// `confusion[truth][predicted]`, in `labels` order.
    pub confusion: Vec<Vec<usize>>,
    /// COVID-19 vs normal, on the images of those two classes (when the model has both).
    pub covid_vs_normal_accuracy: Option<Estimate>,
    /// ROC AUC of P(covid) separating the COVID-19 images from the normal ones (when the data
    /// has both).
    #[serde(default)]
    pub covid_vs_normal_auc: Option<Estimate>,
    /// Scored images the unusual-input score calls unusual (models with the score).
    #[serde(default)]
    pub unusual: Option<usize>,
    pub operating_points: Vec<OperatingPointReport>,
    pub bootstrap_resamples: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("the data set's label `{0}` is not one of the model's labels ({1})")]
    UnknownLabel(String, String),
    #[error("the {0:?} split has no images")]
    EmptySplit(Split),
    #[error("no image of the split could be scored ({0} failed)")]
    NothingScored(usize),
}

/// A figure computed from probabilities and truths (resampled by the bootstrap).
type Statistic<'a> = dyn Fn(&[Vec<f32>], &[usize]) -> f64 + 'a;

/// Score every image of `split` and compute the report (seeded bootstrap, `resamples` draws).
pub fn evaluate(
    model: &Model,
    data: &Dataset,
    split: Split,
    resamples: usize,
) -> Result<EvalReport, EvalError> {
    let labels = model.labels().to_vec();
    let map: Vec<usize> = data
        .labels
        .iter()
        .map(|l| {
            labels
                .iter()
                .position(|m| m == l)
                .ok_or_else(|| EvalError::UnknownLabel(l.clone(), labels.join(", ")))
        })
        .collect::<Result<_, _>>()?;
    let samples = data.split(split);
    if samples.is_empty() {
        return Err(EvalError::EmptySplit(split));
    }
    let names: Vec<std::sync::Arc<str>> = data.labels.iter().map(|l| l.as_str().into()).collect();
    let entries: Vec<Entry> = samples
        .iter()
        .map(|s| {
            Entry::new(&data.sources[s.source].root, s.path.clone())
                .with_label(Some(names[s.label].clone()))
        })
        .collect();
    let mut probs = Vec::new();
    let mut truth = Vec::new();
    let mut failed = Vec::new();
    let mut unusual = 0usize;
    score_all(
        entries,
        model,
        &PipelineOptions::default(),
        &AtomicBool::new(false),
        |s| match s.outcome {
            Outcome::Scored {
                probs: p,
                unusual: u,
                ..
            } => {
                probs.push(p);
                truth.push(map[samples[s.index].label]);
                unusual += usize::from(u.map(Typicality::of) == Some(Typicality::Unusual));
            }
            Outcome::Failed { error, .. } | Outcome::OutOfScope { reason: error, .. } => {
                failed.push(format!("{}: {error}", s.entry.rel().display()))
            }
        },
    );
    if probs.is_empty() {
        return Err(EvalError::NothingScored(failed.len()));
    }
    let name = if data.sources.len() == 1 {
        data.root.display().to_string()
    } else {
        data.name()
    };
    let mut r = report(
        &model.manifest,
        &name,
        Some(split),
        &probs,
        &truth,
        failed,
        resamples,
    );
    r.unusual = model.manifest.unusual.is_some().then_some(unusual);
    Ok(r)
}

/// The report for scored images with known labels (indices into the manifest's labels): the
/// figures `eval` prints, also used by `scan` and the UI when a folder has labels.
///
/// Long on purpose: every figure of the report computed in one place, in the order printed.
pub fn report(
    manifest: &crate::model::Manifest,
    data: &str,
    split: Option<Split>,
    probs: &[Vec<f32>],
    truth: &[usize],
    failed: Vec<String>,
    resamples: usize,
) -> EvalReport {
    let labels = manifest.labels.clone();
    let n = probs.len();
    let pick = |idx: &[usize]| -> (Vec<Vec<f32>>, Vec<usize>) {
        (
            idx.iter().map(|&i| probs[i].clone()).collect(),
            idx.iter().map(|&i| truth[i]).collect(),
        )
    };
    let estimate = |stat: &Statistic| -> Estimate {
        let value = stat(probs, truth);
        let (lo, hi) = bootstrap_ci(n, resamples, 0, |idx| {
            let (p, t) = pick(idx);
            stat(&p, &t)
        });
        Estimate { value, lo, hi }
    };
    let m = Metrics::compute(probs, truth, &labels);
    let lbl = &labels;
    let accuracy = estimate(&|p, t| Metrics::compute(p, t, lbl).accuracy);
    let macro_auc = m
        .macro_auc
        .map(|_| estimate(&|p, t| Metrics::compute(p, t, lbl).macro_auc.unwrap_or(f64::NAN)));
    let per_class = (0..labels.len())
        .map(|c| ClassReport {
            label: labels[c].clone(),
            support: m.per_class[c].support,
            sensitivity: estimate(&|p, t| Metrics::compute(p, t, lbl).per_class[c].sensitivity),
            specificity: estimate(&|p, t| Metrics::compute(p, t, lbl).per_class[c].specificity),
            ppv: estimate(&|p, t| Metrics::compute(p, t, lbl).per_class[c].ppv),
            auc: m.per_class[c]
                .auc
                .map(|_| estimate(&|p, t| roc_auc(p, t, c).unwrap_or(f64::NAN))),
        })
        .collect();
    let covid = labels.iter().position(|l| l == "covid");
    let normal = labels.iter().position(|l| l == "normal");
    let covid_vs_normal_accuracy = match (covid, normal) {
        (Some(a), Some(b)) if pairwise_accuracy(probs, truth, a, b).is_some() => {
            Some(estimate(&|p, t| {
                pairwise_accuracy(p, t, a, b).unwrap_or(f64::NAN)
            }))
        }
        _ => None,
    };
    let covid_vs_normal_auc = match (covid, normal) {
        (Some(a), Some(b)) if truth.contains(&a) && truth.contains(&b) => {
            let auc = move |p: &[Vec<f32>], t: &[usize]| -> f64 {
                let (pp, tt): (Vec<Vec<f32>>, Vec<usize>) = p
                    .iter()
                    .zip(t)
                    .filter(|(_, y)| **y == a || **y == b)
                    .map(|(p, y)| (p.clone(), *y))
                    .unzip();
                roc_auc(&pp, &tt, a).unwrap_or(f64::NAN)
            };
            Some(estimate(&auc))
        }
        _ => None,
    };
    let operating_points = manifest
        .operating_points
        .iter()
        .filter_map(|(label, &threshold)| {
            let c = labels.iter().position(|l| l == label)?;
            Some(OperatingPointReport {
                label: label.clone(),
                threshold,
                sensitivity: estimate(&|p, t| at_threshold(p, t, c, threshold).0),
                specificity: estimate(&|p, t| at_threshold(p, t, c, threshold).1),
            })
        })
        .collect();
    EvalReport {
        model: manifest.name.clone(),
        data: data.to_string(),
        split,
        n,
        failed,
        accuracy,
        macro_auc,
        per_class,
        labels,
        confusion: m.confusion,
        covid_vs_normal_accuracy,
        covid_vs_normal_auc,
        unusual: None,
        operating_points,
        bootstrap_resamples: resamples,
    }
}

impl EvalReport {
    /// The human-readable report `eval` prints.
    ///
    /// Long on purpose: the report's sections in print order, a few lines each.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let pct = |e: &Estimate| {
            format!(
                "{:6.2} %  [{:6.2}, {:6.2}]",
                e.value * 100.0,
                e.lo * 100.0,
                e.hi * 100.0
            )
        };
        let num = |e: &Estimate| format!("{:.4}  [{:.4}, {:.4}]", e.value, e.lo, e.hi);
        let mut s = String::new();
        let split = self
            .split
            .map(|sp| format!(" ({sp:?} split)"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "model {} on {}{split}: {} images scored, {} failed",
            self.model,
            self.data,
            self.n,
            self.failed.len()
        );
        for f in &self.failed {
            let _ = writeln!(s, "  failed: {f}");
        }
        let _ = writeln!(
            s,
            "95 % intervals: percentile bootstrap, {} resamples, seed 0\n",
            self.bootstrap_resamples
        );
        let _ = writeln!(s, "accuracy            {}", pct(&self.accuracy));
        if let Some(a) = &self.macro_auc {
            let _ = writeln!(s, "macro ROC AUC       {}", num(a));
        }
        if let Some(a) = &self.covid_vs_normal_accuracy {
            let _ = writeln!(
                s,
                "COVID-19 vs normal  {}  (accuracy on those two classes)",
                pct(a)
            );
        }
        if let Some(a) = &self.covid_vs_normal_auc {
            let _ = writeln!(
                s,
                "COVID-19 vs normal  {}  (ROC AUC of P(covid) on those two classes)",
                num(a)
            );
        }
        if let Some(u) = self.unusual {
            let _ = writeln!(
                s,
                "typical input       {:6.2} %  ({} of {} images unusual)",
                100.0 * (self.n - u) as f64 / self.n.max(1) as f64,
                u,
                self.n
            );
        }
        let _ = writeln!(
            s,
            "\nper class (argmax)   n   sensitivity                  specificity                  PPV                          ROC AUC"
        );
        for c in &self.per_class {
            let auc = c.auc.as_ref().map_or("-".to_string(), num);
            let _ = writeln!(
                s,
                "{:<16} {:>5}   {}   {}   {}   {}",
                c.label,
                c.support,
                pct(&c.sensitivity),
                pct(&c.specificity),
                pct(&c.ppv),
                auc
            );
        }
        for op in &self.operating_points {
            let _ = writeln!(
                s,
                "\noperating point {} >= {:.3}: sensitivity {}  specificity {}",
                op.label,
                op.threshold,
                pct(&op.sensitivity),
                pct(&op.specificity)
            );
        }
        let width = self
            .labels
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(5)
            .max(9);
        let _ = writeln!(s, "\nconfusion (rows: truth, columns: predicted)");
        let _ = write!(s, "{:>width$}", "");
        for l in &self.labels {
            let _ = write!(s, " {l:>width$}");
        }
        let _ = writeln!(s);
        for (l, row) in self.labels.iter().zip(&self.confusion) {
            let _ = write!(s, "{l:>width$}");
            for v in row {
                let _ = write!(s, " {v:>width$}");
            }
            let _ = writeln!(s);
        }
        s
    }
}
