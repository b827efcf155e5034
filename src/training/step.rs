//! The pieces of a training step: initialisation (seeded, or from `--init`), dropout, the
//! weighted loss, the learning-rate schedule, batched forward passes.

use super::augment::gaussian;
use super::*;

pub(super) fn cosine_lr(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    base * (0.02 + 0.98 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()))
}

/// Replace every trainable weight with seeded values (candle's CPU RNG cannot be seeded):
/// Kaiming-normal for conv and linear weights, zero biases, batch-norm as initialised.
pub(super) fn seeded_init(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let var: &Var = &data[name];
        let dims = var.dims().to_vec();
        // Every convolution (4-D weight) and the classifier: without this DenseNet's layers
        // took candle's unseeded default initialisation and two runs with one seed differed.
        if (name.ends_with(".weight") && dims.len() == 4)
            || (is_head(name) && name.ends_with(".weight"))
        {
            let fan_in: usize = dims[1..].iter().product();
            let std = (2.0 / fan_in as f32).sqrt();
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| gaussian(&mut rng) * std)
                .collect();
            var.set(&Tensor::from_vec(values, dims, var.device())?)?;
        } else if is_head(name) && name.ends_with(".bias") {
            var.set(&var.zeros_like()?)?;
        }
    }
    Ok(())
}

/// The classifier's tensors: `head.*` (cxrnet) or `classifier.*` (DenseNet).
pub(super) fn is_head(name: &str) -> bool {
    name.starts_with("head.") || name.starts_with("classifier.") || name.starts_with("_fc.")
}

/// The manifest and weights `--init` names, checked the way every model load is (hash,
/// finite values, a network that builds).
pub(super) fn read_init(path: &Path) -> Result<(Manifest, Vec<u8>), TrainError> {
    let (manifest, weights) = crate::model::read_parts(path)?;
    crate::model::Model::from_parts(manifest.clone(), &weights)?;
    Ok((manifest, weights))
}

/// Copy the starting model's tensors into `varmap` by name (the classifier too when
/// `keep_head`). Returns how many were copied and the names left as initialised.
pub(super) fn init_from(
    varmap: &VarMap,
    weights: &[u8],
    keep_head: bool,
    device: &Device,
) -> Result<(usize, Vec<String>), TrainError> {
    let tensors = candle_core::safetensors::load_buffer(weights, device)?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let (mut copied, mut fresh) = (0, Vec::new());
    for name in names {
        let var = &data[name];
        match tensors.get(name.as_str()) {
            Some(t) if t.dims() == var.dims() && (keep_head || !is_head(name)) => {
                var.set(&t.to_dtype(DType::F32)?)?;
                copied += 1;
            }
            Some(t) if !is_head(name) => {
                return Err(TrainError::Data(format!(
                    "--init: tensor `{name}` has shape {:?}, the network needs {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            _ => fresh.push(name.clone()),
        }
    }
    Ok((copied, fresh))
}

pub(super) fn seeded_dropout(x: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let keep: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f32>() < p {
                0.0
            } else {
                1.0 / (1.0 - p)
            }
        })
        .collect();
    x.mul(&Tensor::from_vec(keep, x.dims(), x.device())?)
}

pub(super) fn weighted_loss(
    logits: &Tensor,
    y: &Tensor,
    sample_weights: &Tensor,
    smoothing: f32,
) -> candle_core::Result<Tensor> {
    let k = logits.dim(1)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let onehot = candle_nn::encoding::one_hot(
        y.clone(),
        k,
        1.0f32 - smoothing,
        smoothing / (k as f32 - 1.0),
    )?;
    let per_sample = (onehot * logp)?.sum(1)?.neg()?;
    (per_sample * sample_weights)?.sum_all()? / sample_weights.sum_all()?.to_scalar::<f32>()? as f64
}

/// What [`in_chunks`] computes.
#[derive(Clone, Copy)]
pub(super) enum Pass {
    /// Pooled features before the classifier.
    Features,
    /// Logits.
    Logits,
}

/// The network in inference mode over `planes`, in chunks, detached from any graph.
pub(super) fn in_chunks(
    net: &Net,
    planes: &[Vec<f32>],
    spec: &InputSpec,
    device: &Device,
    pass: Pass,
) -> candle_core::Result<Tensor> {
    // Detached: the logits of a trainable network would keep every chunk's whole graph (all
    // activations) alive until the last chunk is done; DenseNet-121 at 224 px ran out of
    // 24 GiB that way on the 121 validation images. Chunks of 8: one chunk's graph still
    // lives while it runs (12.4 GB peak with chunks of 32 for DenseNet-121 at 224 px).
    let parts = planes
        .chunks(8)
        .map(|chunk| {
            let x = input_tensor(chunk, spec, device)?;
            match pass {
                Pass::Features => net.features_t(&x, false),
                Pass::Logits => net.forward_t(&x, false),
            }
            .map(|t| t.detach())
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}
