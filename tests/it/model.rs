use cxr_triage::model::{Manifest, Model, ModelError, preprocess};

use crate::common::{pattern8, tiny_model};

#[test]
fn tiny_model_round_trips_and_predicts_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let model = Model::load(&tiny_model(dir.path())).unwrap();
    let img = cxr_triage::imaging::decode_bytes(
        &crate::common::png_bytes(&pattern8(50, 40)),
        &Default::default(),
    )
    .unwrap();
    let plane = preprocess(&img.image, &model.manifest.input).unwrap();
    let probs = model.predict(&[plane.clone(), plane]).unwrap();
    assert_eq!(probs.len(), 2);
    for row in &probs {
        assert_eq!(row.len(), 3);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }
    assert_eq!(probs[0], probs[1], "inference is deterministic");
}

#[test]
fn checksum_mismatch_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let mut manifest = Manifest::from_path(&path).unwrap();
    manifest.sha256 = "ab".repeat(32);
    std::fs::write(&path, manifest.to_json_pretty()).unwrap();
    assert!(matches!(
        Model::load(&path).unwrap_err(),
        ModelError::Checksum { .. }
    ));
}

#[test]
fn truncated_weights_and_wrong_shapes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let manifest = Manifest::from_path(&path).unwrap();
    let weights = std::fs::read(dir.path().join(&manifest.weights)).unwrap();

    let cut = &weights[..weights.len() / 2];
    let m = Manifest {
        sha256: cxr_triage::model::sha256_hex(cut),
        ..manifest.clone()
    };
    let err = Model::from_parts(m, cut).unwrap_err();
    assert!(matches!(err, ModelError::Weights(_)), "{err}");

    // Same file, manifest asking for another width: a shape error naming a tensor.
    let mut m = manifest.clone();
    m.cxrnet = Some(cxr_triage::model::cxrnet::CxrNetConfig {
        widths: vec![4, 16],
    });
    let err = Model::from_parts(m, &weights).unwrap_err();
    assert!(matches!(err, ModelError::Weights(_)), "{err}");
    assert!(err.to_string().contains("shape"), "{err}");

    // Four labels for a three-output head.
    let mut m = manifest;
    m.labels.push("other".into());
    assert!(Model::from_parts(m, &weights).is_err());
}

#[test]
fn manifest_validation_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(tiny_model(dir.path())).unwrap();
    let cases = [
        (
            r#""architecture": "cxrnet""#,
            r#""architecture": "resnet9000""#,
            "unknown architecture",
        ),
        (
            r#""output": "softmax""#,
            r#""output": "maybe""#,
            "unknown variant `maybe`",
        ),
        (r#""size": 32"#, r#""size": 5"#, "input.size"),
        (r#""covid": 0.0"#, r#""covid": 1.5"#, "operating point"),
        (r#""covid": 0.0"#, r#""lungs": 0.5"#, "unknown label"),
    ];
    for (from, to, expected) in cases {
        assert!(good.contains(from), "fixture has {from}");
        let err = Manifest::from_json(&good.replace(from, to)).unwrap_err();
        assert!(err.to_string().contains(expected), "{to}: {err}");
    }
    assert!(Manifest::from_json("{ not json").is_err());
}

#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_model(dir.path());
    let manifest = Manifest::from_path(&path).unwrap();
    let weights_path = dir.path().join(&manifest.weights);
    let mut tensors =
        candle_core::safetensors::load(&weights_path, &candle_core::Device::Cpu).unwrap();
    let bias = tensors["head.bias"].clone();
    tensors.insert("head.bias".into(), (bias * f64::NAN).unwrap());
    let poisoned = dir.path().join("poisoned.safetensors");
    candle_core::safetensors::save(&tensors, &poisoned).unwrap();
    let bytes = std::fs::read(&poisoned).unwrap();
    let m = Manifest {
        sha256: cxr_triage::model::sha256_hex(&bytes),
        ..manifest
    };
    let err = Model::from_parts(m, &bytes).unwrap_err().to_string();
    assert!(err.contains("head.bias") && err.contains("NaN"), "{err}");
}
