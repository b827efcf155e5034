//! Models: the manifest, the one preprocessing function, the networks and prediction.

pub mod cxrnet;
pub mod densenet;
pub mod efficientnet;
pub mod heatmap;
mod kernels;
pub use kernels::square_product;
mod manifest;
mod preprocess;
pub mod unusual;

pub use manifest::{ARCHITECTURES, CropMode, InputSpec, Intensity, Manifest, Output};
pub use preprocess::{MIN_SIDE, equalize, input_crop, preprocess, preprocess_region, to_scale};

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use sha2::{Digest, Sha256};
use thiserror::Error;

use cxrnet::CxrNet;
use densenet::DenseNet;
use efficientnet::EfficientNetLite;
use heatmap::Heatmap;
use unusual::Unusual;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid model manifest: {0}")]
    Manifest(String),
    #[error(
        "weights file does not match the manifest: sha256 is {actual}, manifest says {expected}"
    )]
    Checksum { expected: String, actual: String },
    #[error("invalid weights: {0}")]
    Weights(String),
    #[error("{0}")]
    Input(String),
    #[error("inference failed: {0}")]
    Compute(#[from] candle_core::Error),
}

/// Hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A loaded model: manifest plus network, ready to score preprocessed planes.
pub struct Model {
    pub manifest: Manifest,
    net: Net,
    /// The unusual-input score, where the manifest has one.
    unusual: Option<Unusual>,
    device: Device,
}

/// One image's prediction.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub probs: Vec<f32>,
    /// Unusual-input score as a multiple of the manifest's threshold (above 1: unusual);
    /// `None` for a model without one.
    pub unusual: Option<f32>,
    /// Grad-CAM of the predicted label (see [`heatmap`]); `None` from [`Model::predict`].
    pub heatmap: Option<Heatmap>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Load a manifest and the weights file it names (relative to the manifest's folder).
    pub fn load(manifest_path: &Path) -> Result<Self, ModelError> {
        let (manifest, bytes) = read_parts(manifest_path)?;
        Self::from_parts(manifest, &bytes)
    }

    /// Build from a validated manifest and the weights' bytes (checked against `sha256`).
    pub fn from_parts(manifest: Manifest, weights: &[u8]) -> Result<Self, ModelError> {
        manifest.validate()?;
        let actual = sha256_hex(weights);
        if !actual.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(ModelError::Checksum {
                expected: manifest.sha256.clone(),
                actual,
            });
        }
        check_finite(weights)?;
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights.to_vec(), DType::F32, &device)
            .map_err(|e| ModelError::Weights(e.to_string()))?;
        let mut net = build_net(&manifest, vb).map_err(|e| ModelError::Weights(e.to_string()))?;
        net.prepare_inference()?;
        let unusual = match &manifest.unusual {
            Some(spec) => Some(read_unusual(weights, &device, spec, &net)?),
            None => None,
        };
        Ok(Self {
            manifest,
            net,
            unusual,
            device,
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.manifest.labels
    }

    /// Logits for an input tensor `(n, channels, h, w)` that is already normalised (what
    /// [`input_tensor`] makes); for checking a network against another runtime.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.net.forward_t(x, false)?)
    }

    /// Probabilities for such a tensor: one row per image.
    pub fn predict_tensor(&self, x: &Tensor) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(probabilities(&self.logits(x)?, &self.manifest)?.to_vec2::<f32>()?)
    }

    /// Probabilities for a batch of planes from [`preprocess`]: one row per plane.
    pub fn predict(&self, planes: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(self
            .run(planes, false)?
            .into_iter()
            .map(|p| p.probs)
            .collect())
    }

    /// Probabilities, the unusual-input score and the predicted label's heatmap for a batch
    /// of planes: one per plane.
    pub fn predict_full(&self, planes: &[Vec<f32>]) -> Result<Vec<Prediction>, ModelError> {
        self.run(planes, true)
    }

    fn run(&self, planes: &[Vec<f32>], heatmaps: bool) -> Result<Vec<Prediction>, ModelError> {
        if planes.is_empty() {
            return Ok(Vec::new());
        }
        let layers = self.unusual.as_ref().map_or(1, |u| u.layers.len());
        let x = input_tensor(planes, &self.manifest.input, &self.device)?;
        let (map, stats) = self.net.stage_parts(&x, layers > 1)?;
        let features = map.mean((2, 3))?;
        let logits = self.net.head(&features)?;
        let probs = probabilities(&logits, &self.manifest)?.to_vec2::<f32>()?;
        let unusual = match (&self.unusual, &self.manifest.unusual) {
            (Some(u), Some(spec)) => u
                .scores(&unusual_layers(features.clone(), stats)?)?
                .into_iter()
                .map(|d| Some(d / spec.threshold))
                .collect(),
            _ => vec![None; probs.len()],
        };
        let heatmaps: Vec<Option<Heatmap>> = if heatmaps {
            let predicted: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
            heatmap::grad_cam(&map, |m| self.net.from_stage(m), &predicted)?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; probs.len()]
        };
        Ok(probs
            .into_iter()
            .zip(unusual)
            .zip(heatmaps)
            .map(|((probs, unusual), heatmap)| Prediction {
                probs,
                unusual,
                heatmap,
            })
            .collect())
    }

    /// Grad-CAM of `label` for each plane (see [`heatmap`]).
    pub fn heatmaps(&self, planes: &[Vec<f32>], label: usize) -> Result<Vec<Heatmap>, ModelError> {
        if planes.is_empty() {
            return Ok(Vec::new());
        }
        let map = self.stage(planes)?;
        let labels = vec![label; planes.len()];
        Ok(heatmap::grad_cam(
            &map,
            |m| self.net.from_stage(m),
            &labels,
        )?)
    }

    /// The last convolutional stage's map for a batch of planes: `(n, channels, h', w')`.
    fn stage(&self, planes: &[Vec<f32>]) -> Result<Tensor, ModelError> {
        let x = input_tensor(planes, &self.manifest.input, &self.device)?;
        Ok(self.net.stage_t(&x, false)?)
    }

    /// Multiply-adds of one image through the network on the inference kernels (see
    /// [`kernels::multiply_adds`]: measured while nothing else runs inference).
    pub fn multiply_adds_per_image(&self) -> Result<u64, ModelError> {
        let s = self.manifest.input.size;
        let (probs, n) = kernels::multiply_adds(|| self.predict(&[vec![0.5; s * s]]));
        probs?;
        Ok(n)
    }

    /// The features an unusual-input score is fitted on, one tensor `(n, d_l)` per layer:
    /// for EfficientNet the stem's and each stage's per-channel mean and deviation, then the
    /// pooled features; for the other networks the pooled features alone.
    pub fn unusual_features(&self, planes: &[Vec<f32>]) -> Result<Vec<Tensor>, ModelError> {
        let x = input_tensor(planes, &self.manifest.input, &self.device)?;
        let (map, stats) = self.net.stage_parts(&x, true)?;
        unusual_layers(map.mean((2, 3))?, stats)
    }
}

/// Read a manifest and the bytes of the weights file it names (relative to the manifest's
/// folder), unchecked: [`Model::from_parts`] checks them.
pub fn read_parts(manifest_path: &Path) -> Result<(Manifest, Vec<u8>), ModelError> {
    let manifest = Manifest::from_path(manifest_path)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let weights_path = dir.join(&manifest.weights);
    let bytes = std::fs::read(&weights_path).map_err(|e| ModelError::Io {
        path: weights_path.clone(),
        source: e,
    })?;
    Ok((manifest, bytes))
}

/// One of the networks a manifest can name.
#[derive(Debug)]
pub enum Net {
    CxrNet(CxrNet),
    DenseNet(DenseNet),
    EfficientNet(EfficientNetLite),
}

impl Net {
    /// Fixed weights from here on: precompute the inference forms (folded batch norms).
    pub fn prepare_inference(&mut self) -> candle_core::Result<()> {
        match self {
            Net::EfficientNet(n) => n.fold_batchnorm(),
            Net::CxrNet(n) => n.fold_batchnorm(),
            Net::DenseNet(n) => n.fold_batchnorm(),
        }
    }

    /// The last stage's map at inference and, where asked and the network has them (the
    /// EfficientNet), its stages' statistics for the unusual-input score.
    pub fn stage_parts(
        &self,
        x: &Tensor,
        stats: bool,
    ) -> candle_core::Result<(Tensor, Option<Tensor>)> {
        match self {
            Net::EfficientNet(n) if stats => {
                let (map, stats) = n.stage_and_statistics(x)?;
                Ok((map, Some(stats)))
            }
            _ => Ok((self.stage_t(x, false)?, None)),
        }
    }

    /// Layers of features the unusual-input score can use (see [`Model::unusual_features`]).
    pub fn unusual_layer_count(&self) -> usize {
        match self {
            Net::EfficientNet(_) => efficientnet::STAGE_WIDTHS.len() + 1,
            _ => 1,
        }
    }

    /// Pooled features, before the classifier (training puts its dropout between the two).
    pub fn features_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.stage_t(x, train)?.mean((2, 3))
    }

    /// The last convolutional stage, before the pool: `(n, channels, h', w')`.
    pub fn stage_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Net::CxrNet(n) => n.stage_t(x, train),
            Net::DenseNet(n) => n.stage_t(x, train),
            Net::EfficientNet(n) => n.stage_t(x, train),
        }
    }

    /// Logits from the last stage's map: the pool, then [`Net::head`]. Differentiable, so
    /// Grad-CAM can ask how each map position moves a logit.
    pub fn from_stage(&self, map: &Tensor) -> candle_core::Result<Tensor> {
        self.head(&map.mean((2, 3))?)
    }

    /// The classifier on pooled features: logits.
    pub fn head(&self, features: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Net::CxrNet(n) => n.head(features),
            Net::DenseNet(n) => n.head(features),
            Net::EfficientNet(n) => n.head(features),
        }
    }
}

impl ModuleT for Net {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.head(&self.features_t(x, train)?)
    }
}

/// Build the network a manifest describes on top of a variable source.
pub fn build_net(manifest: &Manifest, vb: VarBuilder) -> candle_core::Result<Net> {
    let (channels, outputs) = (manifest.input.channels, manifest.labels.len());
    Ok(if manifest.architecture == "efficientnet_lite0" {
        Net::EfficientNet(EfficientNetLite::lite0(channels, outputs, vb)?)
    } else if manifest.is_densenet() {
        let cfg = manifest.densenet.clone().unwrap_or_default();
        Net::DenseNet(DenseNet::new(&cfg, channels, outputs, vb)?)
    } else {
        let cfg = manifest.cxrnet.clone().unwrap_or_default();
        Net::CxrNet(CxrNet::new(&cfg, channels, outputs, vb)?)
    })
}

/// A batch norm in eval mode as a per-channel affine map `x * scale + shift`, with
/// `scale = gamma / sqrt(var + eps)` and `shift = beta - mean * scale`: what folding it into the
/// convolution before it needs.
pub(crate) fn bn_scale_shift(bn: &candle_nn::BatchNorm) -> candle_core::Result<(Tensor, Tensor)> {
    let var = (bn.running_var() + bn.eps())?.sqrt()?;
    let (gamma, beta) = match bn.weight_and_bias() {
        Some((g, b)) => (g.clone(), b.clone()),
        None => (var.ones_like()?, var.zeros_like()?),
    };
    let scale = (gamma / var)?;
    let shift = (beta - (bn.running_mean() * &scale)?)?;
    Ok((scale, shift))
}

/// Logits to probabilities with the manifest's temperature and output kind.
pub fn probabilities(logits: &Tensor, manifest: &Manifest) -> candle_core::Result<Tensor> {
    let scaled = (logits / manifest.temperature as f64)?;
    match manifest.output {
        Output::Softmax => candle_nn::ops::softmax_last_dim(&scaled),
        Output::Sigmoid => candle_nn::ops::sigmoid(&scaled),
    }
}

/// Stack planes into an `(n, channels, size, size)` tensor with per-channel mean/std applied.
pub fn input_tensor(
    planes: &[Vec<f32>],
    spec: &InputSpec,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let s = spec.size;
    let flat: Vec<f32> = planes.iter().flat_map(|p| p.iter().copied()).collect();
    let x = Tensor::from_vec(flat, (planes.len(), 1, s, s), device)?;
    let x = if spec.channels > 1 {
        x.repeat((1, spec.channels, 1, 1))?
    } else {
        x
    };
    let per_channel =
        |v: &[f32]| -> Vec<f32> { (0..spec.channels).map(|c| v[c.min(v.len() - 1)]).collect() };
    let mean = Tensor::from_vec(per_channel(&spec.mean), (1, spec.channels, 1, 1), device)?;
    let std = Tensor::from_vec(per_channel(&spec.std), (1, spec.channels, 1, 1), device)?;
    x.broadcast_sub(&mean)?.broadcast_div(&std)
}

/// The unusual-input score's layers: each stage's statistics (where there are any), then the
/// pooled features.
fn unusual_layers(features: Tensor, stats: Option<Tensor>) -> Result<Vec<Tensor>, ModelError> {
    let mut layers = Vec::new();
    if let Some(stats) = stats {
        let mut at = 0;
        for w in efficientnet::STAGE_WIDTHS {
            layers.push(stats.narrow(1, at, 2 * w)?);
            at += 2 * w;
        }
    }
    layers.push(features);
    Ok(layers)
}

/// The unusual-input tensors of a weights file: one layer under the names from before there
/// were layers, or `spec.layers` indexed layers and their scales.
fn read_unusual(
    weights: &[u8],
    device: &Device,
    spec: &unusual::UnusualSpec,
    net: &Net,
) -> Result<Unusual, ModelError> {
    if spec.layers != 1 && spec.layers != net.unusual_layer_count() {
        return Err(ModelError::Weights(format!(
            "the manifest's unusual-input score has {} layers of features; this network gives 1 or {}",
            spec.layers,
            net.unusual_layer_count()
        )));
    }
    let tensors = safetensors::SafeTensors::deserialize(weights)
        .map_err(|e| ModelError::Weights(format!("not a readable safetensors file: {e}")))?;
    let get = |name: &str| -> Result<Tensor, ModelError> {
        let view = tensors.tensor(name).map_err(|_| {
            ModelError::Weights(format!(
                "the manifest has an unusual-input score but the weights lack `{name}`"
            ))
        })?;
        Ok(candle_core::safetensors::Load::load(&view, device)?.to_dtype(DType::F32)?)
    };
    let layer = |whiten: &str, centres: &str| {
        unusual::Layer::from_tensors(get(whiten)?, get(centres)?)
            .map_err(|e| ModelError::Weights(e.to_string()))
    };
    if spec.layers == 1 {
        return Ok(Unusual {
            layers: vec![(layer(unusual::WHITEN, unusual::CENTRES)?, 1.0)],
        });
    }
    let scales = get(unusual::SCALES)?.to_vec1::<f32>()?;
    if scales.len() != spec.layers || scales.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(ModelError::Weights(format!(
            "`{}` must hold {} positive finite scales, one per layer; it holds {scales:?}",
            unusual::SCALES,
            spec.layers
        )));
    }
    let layers = (0..spec.layers)
        .zip(scales)
        .map(|(i, s)| {
            Ok((
                layer(&unusual::whiten_name(i), &unusual::centres_name(i))?,
                s,
            ))
        })
        .collect::<Result<_, ModelError>>()?;
    Ok(Unusual { layers })
}

/// Refuse weights with NaN or infinite values, and unreadable safetensors, with a clear reason.
fn check_finite(weights: &[u8]) -> Result<(), ModelError> {
    let tensors = safetensors::SafeTensors::deserialize(weights)
        .map_err(|e| ModelError::Weights(format!("not a readable safetensors file: {e}")))?;
    for (name, view) in tensors.tensors() {
        if view.dtype() == safetensors::Dtype::F32 {
            let finite = view
                .data()
                .chunks_exact(4)
                .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
            if !finite {
                return Err(ModelError::Weights(format!(
                    "tensor `{name}` has NaN or infinite values"
                )));
            }
        }
    }
    Ok(())
}

/// Index of the largest probability.
pub fn argmax(probs: &[f32]) -> usize {
    probs
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
            if p > best.1 { (i, p) } else { best }
        })
        .0
}

/// Does any label with an operating point reach it?
pub fn is_flagged(manifest: &Manifest, probs: &[f32]) -> bool {
    manifest
        .labels
        .iter()
        .zip(probs)
        .any(|(label, p)| manifest.operating_points.get(label).is_some_and(|t| p >= t))
}

/// Write `varmap`'s tensors as `<dir>/<name>.safetensors` and the manifest, with its `weights`
/// and `sha256` filled in, as `<dir>/<name>.json`. Returns the manifest path.
pub fn save(
    dir: &Path,
    manifest: &mut Manifest,
    varmap: &candle_nn::VarMap,
) -> Result<PathBuf, ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| ModelError::Io { path, source: e }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let weights_name = format!("{}.safetensors", manifest.name);
    let weights_path = dir.join(&weights_name);
    varmap
        .save(&weights_path)
        .map_err(|e| ModelError::Weights(e.to_string()))?;
    let bytes = std::fs::read(&weights_path).map_err(io(&weights_path))?;
    manifest.weights = weights_name;
    manifest.sha256 = sha256_hex(&bytes);
    let manifest_path = dir.join(format!("{}.json", manifest.name));
    std::fs::write(&manifest_path, manifest.to_json_pretty() + "\n").map_err(io(&manifest_path))?;
    Ok(manifest_path)
}

/// The default model's manifest, compiled into the binary (see `models/MODEL_CARD.md`).
pub const DEFAULT_MANIFEST: &str = include_str!("../../models/cxr-lite0-v2.json");
/// The default model's weights (safetensors), compiled into the binary.
pub const DEFAULT_WEIGHTS: &[u8] = include_bytes!("../../models/cxr-lite0-v2.safetensors");

impl Model {
    /// The default model built into the binary, checked against its own manifest's hash.
    pub fn embedded() -> Result<Self, ModelError> {
        Self::from_parts(Manifest::from_json(DEFAULT_MANIFEST)?, DEFAULT_WEIGHTS)
    }
}
