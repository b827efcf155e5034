//! Whole networks on the inference kernels against the same weights through candle's own
//! layers (`build_net` without `prepare_inference`: candle's convolutions and batch norms, the
//! reference the kernels replaced): the shipped models and the DenseNet fixture, batch 1 and 7,
//! logits within 1e-4 of the largest.

use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;
use cxr_triage::model::{Manifest, Model, build_net, read_parts};

use crate::common::max_abs_diff;

fn check(manifest_path: &Path) {
    let (manifest, weights) = read_parts(manifest_path).unwrap();
    let fast = Model::from_parts(manifest.clone(), &weights).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu).unwrap();
    let reference = build_net(&manifest, vb).unwrap();
    check_inputs(&manifest, &fast, |x| reference.forward_t(x, false).unwrap());
}

fn check_inputs(manifest: &Manifest, fast: &Model, reference: impl Fn(&Tensor) -> Tensor) {
    let (s, c) = (manifest.input.size, manifest.input.channels);
    for n in [1, 7] {
        // Fixed, varied inputs: a different oscillation in every image.
        let len = n * c * s * s;
        let v: Vec<f32> = (0..len)
            .map(|i| 1.5 * ((i as f32 * 0.37).sin() + (i as f32 * 0.0011).cos()))
            .collect();
        let x = Tensor::from_vec(v, (n, c, s, s), &Device::Cpu).unwrap();
        let got = fast.logits(&x).unwrap();
        let want = reference(&x);
        let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
        let diff = max_abs_diff(&got, &want);
        eprintln!(
            "{} batch {n}: max |difference| {diff:e} of {scale:e}",
            manifest.name
        );
        assert!(scale > 0.0, "{}: all-zero logits", manifest.name);
        assert!(
            diff <= 1e-4 * scale,
            "{} batch {n}: {diff} of {scale}",
            manifest.name
        );
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn cxrnet_v1_on_the_kernels_equals_candles_layers() {
    check(&root().join("models/cxrnet-v1.json"));
}

#[test]
fn the_default_efficientnet_on_the_kernels_equals_candles_layers() {
    check(&root().join("models/cxr-lite0-v2.json"));
}

#[test]
fn densenet_on_the_kernels_equals_candles_layers() {
    check(&root().join("tests/fixtures/densenet/tiny-densenet.json"));
}
