use cxr_triage::model::{DEFAULT_MANIFEST, DEFAULT_WEIGHTS, Manifest, Model, sha256_hex};

use crate::common::shared_data;

#[test]
fn embedded_model_loads_and_matches_its_hash() {
    let manifest = Manifest::from_json(DEFAULT_MANIFEST).unwrap();
    assert_eq!(sha256_hex(DEFAULT_WEIGHTS), manifest.sha256);
    let model = Model::embedded().unwrap();
    assert_eq!(model.labels(), ["covid", "normal", "pneumonia"]);
    assert!(model.manifest.operating_points.contains_key("covid"));
}

/// The accuracy recorded in the manifest by `eval --record` is reproduced by `eval` today:
/// same weights, same data, same number.
#[test]
fn eval_reproduces_the_recorded_test_accuracy() {
    let Some(data) = shared_data() else { return };
    let manifest = Manifest::from_json(DEFAULT_MANIFEST).unwrap();
    let recorded = manifest.metrics["accuracy"]["value"]
        .as_f64()
        .expect("manifest records eval's accuracy");
    assert_eq!(manifest.metrics["split"], "test");
    let out = crate::common::cxr()
        .args([
            "eval",
            "--data",
            data.to_str().unwrap(),
            "--split",
            "test",
            "--json",
            "--resamples",
            "20",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let accuracy = report["accuracy"]["value"].as_f64().unwrap();
    assert!(
        (accuracy - recorded).abs() < 0.001,
        "eval now {accuracy}, recorded {recorded}"
    );
    assert_eq!(report["n"], manifest.metrics["n"]);
}
