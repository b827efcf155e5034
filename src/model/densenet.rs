//! DenseNet (Huang et al. 2017) with torchvision's state-dict layout, so that DenseNet-121
//! weights from torchvision or torchxrayvision load as they are:
//!
//! ```text
//! features.conv0 (7x7, stride 2, pad 3) · features.norm0 · relu · max-pool 3x3 stride 2 pad 1
//! features.denseblock{b}.denselayer{l}.{norm1, conv1 (1x1), norm2, conv2 (3x3)}  (concatenated)
//! features.transition{t}.{norm, conv (1x1)} · avg-pool 2x2       (between blocks)
//! features.norm5 · relu · global average pool · classifier (linear)
//! ```
//! Any number of input channels and outputs. Batch norms run on their running statistics at
//! inference (eps 1e-5, as PyTorch).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Linear, VarBuilder};
use gemm::Parallelism;
use serde::{Deserialize, Serialize};

use super::kernels::{self, Act, Affine, Folded, Pad, bn_affine};

/// The shape of a DenseNet; the default is DenseNet-121.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DenseNetConfig {
    pub growth_rate: usize,
    pub block_config: Vec<usize>,
    pub num_init_features: usize,
    pub bn_size: usize,
}

impl Default for DenseNetConfig {
    fn default() -> Self {
        Self {
            growth_rate: 32,
            block_config: vec![6, 12, 24, 16],
            num_init_features: 64,
            bn_size: 4,
        }
    }
}

impl DenseNetConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ok = |v: usize| (1..=1024).contains(&v);
        if self.block_config.is_empty()
            || !self.block_config.iter().all(|&b| ok(b))
            || !ok(self.growth_rate)
            || !ok(self.num_init_features)
            || !ok(self.bn_size)
        {
            return Err(format!(
                "densenet config {self:?}: every value must be in 1..=1024, at least one block"
            ));
        }
        Ok(())
    }

    /// Channels entering the classifier.
    pub fn num_features(&self) -> usize {
        let mut n = self.num_init_features;
        for (i, &layers) in self.block_config.iter().enumerate() {
            n += layers * self.growth_rate;
            if i + 1 < self.block_config.len() {
                n /= 2;
            }
        }
        n
    }
}

fn conv(cin: usize, cout: usize, k: usize, vb: VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(
        (cout, cin, k, k),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )
}

fn bn(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
    candle_nn::batch_norm(channels, 1e-5, vb)
}

#[derive(Debug)]
struct DenseLayer {
    norm1: BatchNorm,
    conv1: Tensor,
    norm2: BatchNorm,
    conv2: Tensor,
}

impl DenseLayer {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.norm1.forward_t(x, train)?.relu()?;
        let y = y.conv2d(&self.conv1, 0, 1, 1, 1)?;
        let y = self.norm2.forward_t(&y, train)?.relu()?;
        y.conv2d(&self.conv2, 1, 1, 1, 1)
    }
}

#[derive(Debug)]
struct Transition {
    norm: BatchNorm,
    conv: Tensor,
}

#[derive(Debug)]
struct Block {
    layers: Vec<DenseLayer>,
    transition: Option<Transition>,
}

/// The network. `forward_t(x, train)` maps `(n, channels, s, s)` inputs to `(n, outputs)`
/// logits.
#[derive(Debug)]
pub struct DenseNet {
    conv0: Tensor,
    norm0: BatchNorm,
    blocks: Vec<Block>,
    norm5: BatchNorm,
    classifier: Linear,
    growth_rate: usize,
    /// Inference only: the buffer kernels' form of every layer.
    folded: Option<FoldedNet>,
}

/// The inference form: batch norms that follow a convolution folded into it (`norm0` into
/// `conv0`, each layer's `norm2` into its `conv1`); the pre-activations (`norm1`, each
/// transition's `norm`, `norm5`) stay per-channel affine maps, since their input is a
/// concatenation that other layers read unnormalised.
#[derive(Debug)]
struct FoldedNet {
    conv0: Folded,
    blocks: Vec<(Vec<FoldedLayer>, Option<FoldedTransition>)>,
    norm5: Affine,
}

/// A transition's pre-activation and its 1x1 convolution.
type FoldedTransition = (Affine, Folded);

#[derive(Debug)]
struct FoldedLayer {
    norm1: Affine,
    conv1: Folded,
    conv2: Folded,
}

impl DenseNet {
    pub fn new(
        cfg: &DenseNetConfig,
        in_channels: usize,
        outputs: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let f = vb.pp("features");
        let mut n = cfg.num_init_features;
        let conv0 = conv(in_channels, n, 7, f.pp("conv0"))?;
        let norm0 = bn(n, f.pp("norm0"))?;
        let mut blocks = Vec::with_capacity(cfg.block_config.len());
        for (b, &count) in cfg.block_config.iter().enumerate() {
            let vb_block = f.pp(format!("denseblock{}", b + 1));
            let mut layers = Vec::with_capacity(count);
            for l in 0..count {
                let vl = vb_block.pp(format!("denselayer{}", l + 1));
                let cin = n + l * cfg.growth_rate;
                let mid = cfg.bn_size * cfg.growth_rate;
                layers.push(DenseLayer {
                    norm1: bn(cin, vl.pp("norm1"))?,
                    conv1: conv(cin, mid, 1, vl.pp("conv1"))?,
                    norm2: bn(mid, vl.pp("norm2"))?,
                    conv2: conv(mid, cfg.growth_rate, 3, vl.pp("conv2"))?,
                });
            }
            n += count * cfg.growth_rate;
            let transition = if b + 1 < cfg.block_config.len() {
                let vt = f.pp(format!("transition{}", b + 1));
                let t = Transition {
                    norm: bn(n, vt.pp("norm"))?,
                    conv: conv(n, n / 2, 1, vt.pp("conv"))?,
                };
                n /= 2;
                Some(t)
            } else {
                None
            };
            blocks.push(Block { layers, transition });
        }
        let norm5 = bn(n, f.pp("norm5"))?;
        let classifier = candle_nn::linear(n, outputs, vb.pp("classifier"))?;
        Ok(Self {
            conv0,
            norm0,
            blocks,
            norm5,
            classifier,
            growth_rate: cfg.growth_rate,
            folded: None,
        })
    }

    /// Fold the batch norms for inference on the buffer kernels ([`kernels`]): a loaded
    /// model does this once; training never does, so its eval passes run candle's layers.
    pub fn fold_batchnorm(&mut self) -> Result<()> {
        let blocks = self
            .blocks
            .iter()
            .map(|b| {
                let layers = b
                    .layers
                    .iter()
                    .map(|l| {
                        Ok(FoldedLayer {
                            norm1: bn_affine(&l.norm1)?,
                            conv1: Folded::new(&l.conv1, &l.norm2)?,
                            conv2: Folded::plain(&l.conv2)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let transition = match &b.transition {
                    Some(t) => Some((bn_affine(&t.norm)?, Folded::plain(&t.conv)?)),
                    None => None,
                };
                Ok((layers, transition))
            })
            .collect::<Result<Vec<_>>>()?;
        self.folded = Some(FoldedNet {
            conv0: Folded::new(&self.conv0, &self.norm0)?,
            blocks,
            norm5: bn_affine(&self.norm5)?,
        });
        Ok(())
    }

    /// The folded network over a batch (see [`kernels::batch`]). Each dense block fills one
    /// buffer of all its channels, so the concatenations copy nothing; a transition pools
    /// before its 1x1 convolution (both are linear, so the order does not change the result)
    /// and convolves a quarter of the pixels.
    fn infer(&self, f: &FoldedNet, x: &Tensor) -> Result<Tensor> {
        let g = self.growth_rate;
        kernels::batch(x, |img, dims, par, _| {
            let (y, h, w) =
                kernels::conv_dense(img, &f.conv0, dims, 7, 2, Pad::Sym(3), Act::Relu, None, par);
            let (mut x, mut h, mut w) =
                kernels::max_pool(&y, (f.conv0.bias.len(), h, w), 3, 2, 1, par);
            let mut c = f.conv0.bias.len();
            for (layers, transition) in &f.blocks {
                let plane = h * w;
                let total = c + layers.len() * g;
                let mut all = x;
                all.resize(total * plane, 0.0);
                let mut pre = vec![0f32; total * plane];
                for (l, layer) in layers.iter().enumerate() {
                    let cin = c + l * g;
                    dense_layer(&mut all, &mut pre, layer, (cin, h, w), par);
                }
                c = total;
                x = all;
                if let Some((norm, conv)) = transition {
                    kernels::affine(&x, &mut pre, norm, Act::Relu, par);
                    let (pooled, ph, pw) = kernels::avg_pool2(&pre, (c, h, w));
                    (h, w) = (ph, pw);
                    x = kernels::pointwise(&pooled, conv, h * w, Act::None, None, par);
                    c = conv.bias.len();
                }
            }
            let mut out = vec![0f32; x.len()];
            kernels::affine(&x, &mut out, &f.norm5, Act::Relu, par);
            (out, (c, h, w))
        })
    }

    /// Pooled features `(n, num_features)`: everything before the classifier.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.stage_t(x, train)?.mean((2, 3))
    }

    /// The last convolutional stage (the last dense block after `norm5` and its ReLU): what the
    /// pool averages and Grad-CAM weighs, `(n, num_features, h / 32, w / 32)`.
    pub fn stage_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let (Some(folded), false) = (&self.folded, train) {
            return self.infer(folded, x);
        }
        let x = x.conv2d(&self.conv0, 3, 2, 1, 1)?;
        let x = self.norm0.forward_t(&x, train)?.relu()?;
        let mut x = if train {
            stem_pool_differentiable(&x)?
        } else {
            stem_pool(&x)?
        };
        for block in &self.blocks {
            let mut features = vec![x];
            for layer in &block.layers {
                let input = if features.len() == 1 {
                    features[0].clone()
                } else {
                    Tensor::cat(&features, 1)?
                };
                features.push(layer.forward_t(&input, train)?);
            }
            x = Tensor::cat(&features, 1)?;
            if let Some(t) = &block.transition {
                let y = t.norm.forward_t(&x, train)?.relu()?;
                let y = y.conv2d(&t.conv, 0, 1, 1, 1)?;
                x = y.avg_pool2d(2)?;
            }
        }
        self.norm5.forward_t(&x, train)?.relu()
    }

    /// The classifier on pooled features: logits `(n, outputs)`.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        self.classifier.forward(features)
    }
}

/// One dense layer on the block's buffer `all` (`cin` channels filled, room for the layer's
/// `growth` more): `norm1` + ReLU into `pre`, the 1x1 convolution with `norm2` + ReLU folded,
/// the 3x3 convolution, its output written after the `cin` channels.
fn dense_layer(
    all: &mut [f32],
    pre: &mut [f32],
    layer: &FoldedLayer,
    (cin, h, w): (usize, usize, usize),
    par: Parallelism,
) {
    let plane = h * w;
    let (norm, conv1, conv2) = (&layer.norm1, &layer.conv1, &layer.conv2);
    kernels::affine(
        &all[..cin * plane],
        &mut pre[..cin * plane],
        norm,
        Act::Relu,
        par,
    );
    let mid = conv1.bias.len();
    let y = kernels::pointwise(&pre[..cin * plane], conv1, plane, Act::Relu, None, par);
    let (out, _, _) = kernels::conv_dense(
        &y,
        conv2,
        (mid, h, w),
        3,
        1,
        Pad::Sym(1),
        Act::None,
        None,
        par,
    );
    all[cin * plane..cin * plane + out.len()].copy_from_slice(&out);
}

/// The stem's MaxPool2d(3, stride 2, padding 1). candle's pool has no padding; after the
/// ReLU every value is >= 0, so zero padding gives exactly what PyTorch's -inf padding gives.
fn stem_pool(x: &Tensor) -> Result<Tensor> {
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .max_pool2d_with_stride(3, 2)
}

/// The same pool from slices and element-wise maxima, which candle can differentiate (its
/// pool backward needs kernel == stride): the maximum of the nine stride-2 samplings of the
/// padded input.
fn stem_pool_differentiable(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Pad 1 before and enough after that every sampling fits (zeros are safe after the ReLU).
    let p = x
        .pad_with_zeros(2, 1, 2 * oh + 1 - h)?
        .pad_with_zeros(3, 1, 2 * ow + 1 - w)?;
    let every_other = |t: &Tensor, dim: usize, start: usize, n: usize| -> Result<Tensor> {
        let t = t.narrow(dim, start, 2 * n)?;
        let mut shape = t.dims().to_vec();
        shape[dim] = n;
        shape.insert(dim + 1, 2);
        t.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
    };
    let mut out: Option<Tensor> = None;
    for di in 0..3 {
        let rows = every_other(&p, 2, di, oh)?;
        for dj in 0..3 {
            let s = every_other(&rows, 3, dj, ow)?;
            out = Some(match out {
                None => s,
                Some(m) => m.maximum(&s)?,
            });
        }
    }
    Ok(out.expect("nine samplings"))
}

impl ModuleT for DenseNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head(&self.features_t(x, train)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_differentiable_stem_pool_equals_the_fast_one() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        for (h, w) in [(8, 8), (9, 7), (16, 13), (5, 6)] {
            let x = Tensor::rand(0f32, 1., (2, 3, h, w), &dev)?;
            let a = stem_pool(&x)?;
            let b = stem_pool_differentiable(&x)?;
            assert_eq!(a.dims(), b.dims(), "{h}x{w}");
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(diff, 0.0, "{h}x{w}");
        }
        Ok(())
    }

    #[test]
    fn densenet121_has_1024_features() {
        assert_eq!(DenseNetConfig::default().num_features(), 1024);
    }
}
