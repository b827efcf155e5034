//! DenseNet: the torchvision / torchxrayvision layout, checked against PyTorch's own outputs
//! (tests/fixtures/densenet/make_fixture.py made them; no Python is needed here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cxr_triage::model::densenet::{DenseNet, DenseNetConfig};
use cxr_triage::model::{Model, Output};

use crate::common::{cxr, max_abs_diff};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/densenet")
}

fn fixture() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("fixture.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn exported_densenet_matches_pytorch_to_1e_4() {
    let model = Model::load(&fixtures().join("tiny-densenet.json")).unwrap();
    assert_eq!(model.manifest.output, Output::Sigmoid);
    let f = fixture();
    for (input, logits, probs) in [
        ("inputs64", "logits64", "outputs64"),
        ("input224", "logits224", "output224"),
    ] {
        let ours = model.logits(&f[input]).unwrap();
        let diff = max_abs_diff(&ours, &f[logits]);
        eprintln!("{input}: max |logit difference| {diff:e}");
        assert!(diff < 1e-4, "{input}: logits differ by {diff}");
        let p = model.predict_tensor(&f[input]).unwrap();
        let p = Tensor::new(p, &Device::Cpu).unwrap();
        let diff = max_abs_diff(&p, &f[probs]);
        assert!(diff < 1e-4, "{input}: probabilities differ by {diff}");
    }
    // The fixture is not trivial: outputs spread over (0, 1).
    let p = f["outputs64"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        p.iter().any(|&v| v < 0.2)
            && p.iter().any(|&v| v > 0.8)
            && p.iter().any(|&v| (0.3..0.7).contains(&v))
    );
}

#[test]
fn densenet121_has_torchvisions_keys_and_shapes() {
    let text = std::fs::read_to_string(fixtures().join("densenet121_keys.json")).unwrap();
    let torch: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
    let varmap = VarMap::new();
    DenseNet::new(
        &DenseNetConfig::default(),
        1,
        18,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let ours: BTreeMap<String, Vec<usize>> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    assert_eq!(ours.len(), 606);
    assert_eq!(ours, torch);
}

#[test]
fn the_export_tools_manifest_carries_labels_names_and_operating_points() {
    let model = Model::load(&fixtures().join("tiny-densenet.json")).unwrap();
    let m = &model.manifest;
    assert_eq!(
        m.labels,
        [
            "atelectasis",
            "unused_1",
            "lung_opacity",
            "effusion",
            "no_finding"
        ]
    );
    assert_eq!(m.display_name(2), "Lung Opacity");
    assert_eq!(m.display_name(1), "(not trained)");
    assert_eq!(m.display_name(0), "Atelectasis");
    assert_eq!(m.input.scale, [-1024.0, 1024.0]);
    // The untrained output has no operating point (its threshold was NaN).
    assert_eq!(m.operating_points.len(), 4);
    assert!(!m.operating_points.contains_key("unused_1"));
}

#[test]
fn scan_runs_a_multi_label_model_and_flags_per_label() {
    let data = tempfile::tempdir().unwrap();
    for i in 0..3 {
        crate::common::write_png8(&data.path().join(format!("{i}.png")), 80 + i * 10, 90);
    }
    let out = cxr()
        .args([
            "scan",
            data.path().to_str().unwrap(),
            "--format",
            "jsonl",
            "--no-cache",
            "--model",
        ])
        .arg(fixtures().join("tiny-densenet.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("flagged"), "{stderr}");
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    let probs = rows[0]["probabilities"].as_object().unwrap();
    assert_eq!(probs.len(), 5);
    let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!(
        (sum - 1.0).abs() > 1e-3,
        "sigmoid outputs are independent, not a softmax"
    );
}
