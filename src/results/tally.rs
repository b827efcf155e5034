//! Counts over results: images per predicted label, flagged, unusual, errors. The one tally
//! behind `scan`'s summary line and the UI's summary bar.

use crate::model::{Manifest, Output};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Images per predicted label (softmax models), or flagged per label (sigmoid models,
    /// where labels are independent).
    pub per_label: Vec<usize>,
    pub multi_label: bool,
    pub flagged: usize,
    /// Scored images the unusual-input score calls unusual.
    pub unusual: usize,
    pub errors: usize,
    pub out_of_scope: usize,
    /// Not scored yet (the UI's queue; always 0 in a finished scan).
    pub pending: usize,
    /// Being scored now (the UI only).
    pub running: usize,
}

impl Tally {
    pub fn new(manifest: &Manifest) -> Self {
        Self {
            per_label: vec![0; manifest.labels.len()],
            multi_label: manifest.output == Output::Sigmoid,
            ..Self::default()
        }
    }

    /// Count one scored image. `threshold_of(label)` is the operating point in force (sigmoid
    /// models count each label at or above its own).
    pub fn scored(
        &mut self,
        probs: &[f32],
        predicted: Option<usize>,
        flagged: bool,
        unusual: bool,
        threshold_of: impl Fn(usize) -> Option<f32>,
    ) {
        if self.multi_label {
            for (l, &p) in probs.iter().enumerate() {
                if threshold_of(l).is_some_and(|t| p >= t) {
                    self.per_label[l] += 1;
                }
            }
        } else if let Some(p) = predicted {
            self.per_label[p] += 1;
        }
        self.flagged += usize::from(flagged);
        self.unusual += usize::from(unusual);
    }

    /// Add another tally's counts (of the same model) to these.
    pub fn add(&mut self, other: &Tally) {
        self.combine(other, |a, b| a + b);
    }

    /// Take away counts that were added before (an item whose result changed).
    pub fn remove(&mut self, other: &Tally) {
        self.combine(other, usize::saturating_sub);
    }

    fn combine(&mut self, other: &Tally, f: impl Fn(usize, usize) -> usize) {
        for (a, &b) in self.per_label.iter_mut().zip(&other.per_label) {
            *a = f(*a, b);
        }
        for (a, b) in [
            (&mut self.flagged, other.flagged),
            (&mut self.unusual, other.unusual),
            (&mut self.errors, other.errors),
            (&mut self.out_of_scope, other.out_of_scope),
            (&mut self.pending, other.pending),
            (&mut self.running, other.running),
        ] {
            *a = f(*a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(output: Output) -> Manifest {
        let mut m = Manifest::from_json(crate::model::DEFAULT_MANIFEST).unwrap();
        m.output = output;
        m
    }

    #[test]
    fn softmax_counts_the_predicted_label_and_sigmoid_each_label_over_its_threshold() {
        let mut t = Tally::new(&manifest(Output::Softmax));
        t.scored(&[0.7, 0.2, 0.1], Some(0), true, false, |_| Some(0.5));
        t.scored(&[0.1, 0.8, 0.1], Some(1), false, true, |_| Some(0.5));
        assert_eq!(
            (t.per_label.as_slice(), t.flagged, t.unusual),
            ([1, 1, 0].as_slice(), 1, 1)
        );
        let mut t = Tally::new(&manifest(Output::Sigmoid));
        t.scored(&[0.7, 0.6, 0.1], None, true, false, |l| {
            (l != 1).then_some(0.5)
        });
        assert_eq!(t.per_label, [1, 0, 0]);
    }
}
