//! The EfficientNet-Lite0 network against PyTorch: the built-in model's logits on fixed inputs
//! equal those `tests/fixtures/efficientnet/make_fixture.py` computed with PyTorch on the same
//! weights (candle's folded inference path: direct depthwise kernel, 1x1 as matrix products).

use candle_core::{Device, Tensor};
use cxr_triage::model::{DEFAULT_MANIFEST, Manifest, Model};

#[test]
fn builtin_efficientnet_matches_pytorch_logits() {
    let manifest = Manifest::from_json(DEFAULT_MANIFEST).unwrap();
    if manifest.architecture != "efficientnet_lite0" {
        eprintln!("skipping: the built-in model is not an EfficientNet");
        return;
    }
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/efficientnet/torch_logits.json")).unwrap();
    assert_eq!(
        fixture["sha256"], manifest.sha256,
        "the fixture is for other weights: rerun tests/fixtures/efficientnet/make_fixture.py"
    );
    let model = Model::embedded().unwrap();
    for (k, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
        let side = case["side"].as_u64().unwrap() as usize;
        let x: Vec<f32> = (0..side * side)
            .map(|i| (1.5 * (0.37 * i as f64 + 1.3 * k as f64).sin()) as f32)
            .collect();
        let x = Tensor::from_vec(x, (1, 1, side, side), &Device::Cpu).unwrap();
        let got = model
            .logits(&x)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .remove(0);
        let want: Vec<f32> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "side {side}: candle {got:?}, PyTorch {want:?}"
            );
        }
    }
}
