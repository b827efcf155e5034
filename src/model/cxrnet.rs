//! `cxrnet`: the project's own compact residual CNN, sized to train on a 2-core CPU.
//!
//! Stem (5x5 conv, stride 2) then one residual block per stage, each halving the resolution,
//! global average pooling and a linear head. Keys follow PyTorch naming so the same
//! safetensors load in a PyTorch twin (`benches/cxrnet_torch.py`).

use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Linear, VarBuilder};
use gemm::Parallelism;
use serde::{Deserialize, Serialize};

use super::kernels::{self, Act, Folded, Pad};

/// Layer widths: `widths[0]` is the stem, each further entry one stride-2 residual stage.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CxrNetConfig {
    pub widths: Vec<usize>,
}

impl Default for CxrNetConfig {
    fn default() -> Self {
        Self {
            widths: vec![24, 32, 64, 128, 192],
        }
    }
}

impl CxrNetConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.widths.len() < 2 || self.widths.iter().any(|&w| w == 0 || w > 4096) {
            return Err(format!(
                "cxrnet.widths {:?}: need >= 2 widths in 1..=4096",
                self.widths
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ConvBn {
    weight: Tensor,
    k: usize,
    stride: usize,
    bn: BatchNorm,
}

impl ConvBn {
    fn new(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        Ok(Self {
            weight: vb
                .pp("conv")
                .get_with_hints((cout, cin, k, k), "weight", init)?,
            k,
            stride,
            bn: candle_nn::batch_norm(cout, 1e-5, vb.pp("bn"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = x.conv2d(&self.weight, self.k / 2, self.stride, 1, 1)?;
        self.bn.forward_t(&y, train)
    }

    /// The batch norm folded into the convolution, for the buffer kernels.
    fn fold(&self) -> Result<Folded> {
        Folded::new(&self.weight, &self.bn)
    }

    /// One image through the folded layer (padding `k / 2`, as the training form).
    fn infer(
        &self,
        f: &Folded,
        x: &[f32],
        dims: (usize, usize, usize),
        act: Act,
        residual: Option<&[f32]>,
        par: Parallelism,
    ) -> (Vec<f32>, usize, usize) {
        let pad = Pad::Sym(self.k / 2);
        kernels::conv_dense(x, f, dims, self.k, self.stride, pad, act, residual, par)
    }
}

#[derive(Debug)]
struct Block {
    a: ConvBn,
    b: ConvBn,
    down: ConvBn,
}

impl Block {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            a: ConvBn::new(cin, cout, 3, 2, vb.pp("a"))?,
            b: ConvBn::new(cout, cout, 3, 1, vb.pp("b"))?,
            down: ConvBn::new(cin, cout, 1, 2, vb.pp("down"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.a.forward_t(x, train)?.relu()?;
        let y = self.b.forward_t(&y, train)?;
        (y + self.down.forward_t(x, train)?)?.relu()
    }
}

/// The network. `forward_t(x, train)` maps `(n, 1, s, s)` inputs to `(n, labels)` logits.
#[derive(Debug)]
pub struct CxrNet {
    stem: ConvBn,
    blocks: Vec<Block>,
    head: Linear,
    /// Inference only: every layer folded (stem, then each block's a, b, down).
    folded: Option<(Folded, Vec<[Folded; 3]>)>,
}

impl CxrNet {
    pub fn new(
        cfg: &CxrNetConfig,
        in_channels: usize,
        labels: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let w = &cfg.widths;
        let stem = ConvBn::new(in_channels, w[0], 5, 2, vb.pp("stem"))?;
        let blocks = w
            .windows(2)
            .enumerate()
            .map(|(i, pair)| Block::new(pair[0], pair[1], vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let head = candle_nn::linear(w[w.len() - 1], labels, vb.pp("head"))?;
        Ok(Self {
            stem,
            blocks,
            head,
            folded: None,
        })
    }
}

impl CxrNet {
    /// Fold every batch norm into its convolution for inference on the buffer kernels
    /// ([`kernels`]): a loaded model does this once; training never does (its variables
    /// change), so its eval passes run candle's layers.
    pub fn fold_batchnorm(&mut self) -> Result<()> {
        let blocks = self
            .blocks
            .iter()
            .map(|b| Ok([b.a.fold()?, b.b.fold()?, b.down.fold()?]))
            .collect::<Result<Vec<_>>>()?;
        self.folded = Some((self.stem.fold()?, blocks));
        Ok(())
    }

    /// The folded network over a batch (see [`kernels::batch`]).
    fn infer(&self, (stem, folded): &(Folded, Vec<[Folded; 3]>), x: &Tensor) -> Result<Tensor> {
        kernels::batch(x, |img, dims, par, _| {
            let (mut y, mut h, mut w) = self.stem.infer(stem, img, dims, Act::Relu, None, par);
            let mut c = stem.bias.len();
            for (block, [a, b, down]) in self.blocks.iter().zip(folded) {
                let (ya, oh, ow) = block.a.infer(a, &y, (c, h, w), Act::Relu, None, par);
                let (skip, _, _) = block.down.infer(down, &y, (c, h, w), Act::None, None, par);
                c = b.bias.len();
                let next = (c, oh, ow);
                (y, h, w) = block.b.infer(b, &ya, next, Act::Relu, Some(&skip), par);
            }
            (y, (c, h, w))
        })
    }

    /// Pooled features `(n, widths.last())`; training applies its own dropout between these
    /// and [`CxrNet::head`].
    pub fn features_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.stage_t(x, train)?.mean((2, 3))
    }

    /// The last convolutional stage (the last block's output): what the pool averages and
    /// Grad-CAM weighs, `(n, widths.last(), h', w')`.
    pub fn stage_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let (Some(folded), false) = (&self.folded, train) {
            return self.infer(folded, x);
        }
        let mut x = self.stem.forward_t(x, train)?.relu()?;
        for block in &self.blocks {
            x = block.forward_t(&x, train)?;
        }
        Ok(x)
    }

    /// The linear classifier on pooled features: logits `(n, labels)`.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        self.head.forward(features)
    }
}

impl ModuleT for CxrNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.head(&self.features_t(x, train)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// Folded inference must match the unfolded layers with non-trivial batch-norm statistics.
    #[test]
    fn folding_batchnorm_keeps_outputs() -> Result<()> {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let cfg = CxrNetConfig {
            widths: vec![4, 8, 8],
        };
        let mut net = CxrNet::new(
            &cfg,
            1,
            3,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )?;
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name.contains("bn.") {
                let fresh = Tensor::rand(0.5f32, 1.5, var.dims(), &dev)?;
                var.set(&fresh)?;
            }
        }
        let x = Tensor::randn(0f32, 1., (2, 1, 32, 32), &dev)?;
        let before = net.forward_t(&x, false)?;
        net.fold_batchnorm()?;
        let after = net.forward_t(&x, false)?;
        let diff = (before - after)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "max difference {diff}");
        Ok(())
    }
}
