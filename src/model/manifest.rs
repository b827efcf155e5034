use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelError;
use super::cxrnet::CxrNetConfig;
use super::densenet::DenseNetConfig;
use super::unusual::UnusualSpec;

/// Network families a manifest may name.
pub const ARCHITECTURES: &[&str] = &["cxrnet", "densenet121", "densenet", "efficientnet_lite0"];

/// The contract between training and everything else: what a weights file is and how to feed it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    /// Network family; `cxrnet` is the project's own.
    pub architecture: String,
    /// Layer widths for `cxrnet` (absent: the default config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cxrnet: Option<CxrNetConfig>,
    /// Shape of a `densenet121` / `densenet` (absent: DenseNet-121).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub densenet: Option<DenseNetConfig>,
    pub labels: Vec<String>,
    /// Names to show for labels, where they differ from the label itself
    /// (e.g. `"Lung Opacity"` for `lung_opacity`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub label_names: BTreeMap<String, String>,
    pub output: Output,
    pub input: InputSpec,
    /// Logits are divided by this before softmax/sigmoid (calibration).
    #[serde(default = "one")]
    pub temperature: f32,
    /// Per-label thresholds: an image is flagged when any listed label reaches its threshold.
    #[serde(default)]
    pub operating_points: BTreeMap<String, f32>,
    /// The unusual-input score's threshold (its tensors are in the weights file); absent: no
    /// score (older models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unusual: Option<UnusualSpec>,
    /// Weights file (safetensors), relative to the manifest's folder.
    pub weights: String,
    /// Hex SHA-256 of the weights file.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_on: Option<String>,
    /// Figures as printed by `eval`, kept for the record.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metrics: serde_json::Value,
}

fn one() -> f32 {
    1.0
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// One label per image: probabilities sum to one.
    Softmax,
    /// Independent labels (multi-label models).
    Sigmoid,
}

/// How a decoded image becomes the network's input tensor.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputSpec {
    /// 1 (grayscale) or 3 (the gray image repeated, for networks trained on RGB).
    pub channels: usize,
    /// Side of the square input, in pixels.
    pub size: usize,
    pub crop: CropMode,
    /// How raw sample values become [0, 1] before `scale`.
    #[serde(default)]
    pub intensity: Intensity,
    /// The [0, 1] intensity is mapped linearly onto this range ...
    pub scale: [f32; 2],
    /// ... then normalised per channel: `(x - mean) / std`.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CropMode {
    /// Largest centred square, then resize: removes size and aspect cues.
    CenterSquare,
    /// Resize the whole image to a square, distorting the aspect ratio.
    Stretch,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Intensity {
    /// Histogram equalisation: each value becomes its rank. Makes scanners, bit depths and
    /// exposures look alike; invariant to any monotone change of the source values.
    #[default]
    Equalize,
    /// Value divided by the container's maximum (255 or 65535).
    Raw,
}

impl Manifest {
    /// Read and validate a manifest file.
    pub fn from_path(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_json(&text)
    }

    /// Parse and validate manifest JSON.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let manifest: Manifest =
            serde_json::from_str(text).map_err(|e| ModelError::Manifest(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Check everything that can be checked without the weights.
    ///
    /// Long on purpose: one check per field, each with its own message.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Manifest(m));
        if self.name.trim().is_empty() {
            return bad("`name` is empty".into());
        }
        if !ARCHITECTURES.contains(&self.architecture.as_str()) {
            return bad(format!(
                "unknown architecture `{}` (known: {})",
                self.architecture,
                ARCHITECTURES.join(", ")
            ));
        }
        if self.labels.is_empty() {
            return bad("`labels` is empty".into());
        }
        if self.labels.len() > usize::from(u16::MAX) {
            // The UI keeps a label's index in 16 bits per listed file.
            return bad(format!("{} labels; at most 65,535", self.labels.len()));
        }
        for (i, label) in self.labels.iter().enumerate() {
            if label.trim().is_empty() || self.labels[..i].contains(label) {
                return bad(format!("label `{label}` is empty or repeated"));
            }
        }
        if self.output == Output::Softmax && self.labels.len() < 2 {
            return bad("softmax output needs at least two labels".into());
        }
        let input = &self.input;
        if !matches!(input.channels, 1 | 3) {
            return bad(format!(
                "input.channels is {}, expected 1 or 3",
                input.channels
            ));
        }
        if !(16..=1024).contains(&input.size) {
            return bad(format!("input.size is {}, expected 16..=1024", input.size));
        }
        for (field, values) in [("mean", &input.mean), ("std", &input.std)] {
            if values.len() != input.channels && values.len() != 1 {
                return bad(format!(
                    "input.{field} has {} values for {} channels",
                    values.len(),
                    input.channels
                ));
            }
        }
        if input.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || input
                .mean
                .iter()
                .chain(&input.scale)
                .any(|v| !v.is_finite())
        {
            return bad("input.mean/std/scale must be finite, std > 0".into());
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad(format!("temperature {} must be > 0", self.temperature));
        }
        for (label, t) in &self.operating_points {
            if !self.labels.contains(label) {
                return bad(format!("operating point for unknown label `{label}`"));
            }
            if !(0.0..=1.0).contains(t) {
                return bad(format!(
                    "operating point {t} for `{label}` is outside [0, 1]"
                ));
            }
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("`sha256` must be 64 hex digits".into());
        }
        if let Some(cfg) = &self.cxrnet {
            cfg.validate().map_err(ModelError::Manifest)?;
        }
        if let Some(cfg) = &self.densenet {
            cfg.validate().map_err(ModelError::Manifest)?;
        }
        if let Some(u) = &self.unusual
            && !(u.threshold.is_finite() && u.threshold > 0.0)
        {
            return bad(format!("unusual.threshold {} must be > 0", u.threshold));
        }
        for label in self.label_names.keys() {
            if !self.labels.contains(label) {
                return bad(format!("display name for unknown label `{label}`"));
            }
        }
        Ok(())
    }

    /// The name to show for label `i`.
    pub fn display_name(&self, i: usize) -> &str {
        let label = &self.labels[i];
        self.label_names.get(label).unwrap_or(label)
    }

    /// Is this a DenseNet (torchvision / torchxrayvision layout)?
    pub fn is_densenet(&self) -> bool {
        self.architecture.starts_with("densenet")
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serialises")
    }
}
