use cxr_triage::model::Model;

use crate::common::write_png8;

/// A seed-layout folder: one subfolder per class with `n` small PNGs each.
fn class_folders(classes: &[(&str, u32)]) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    for &(class, n) in classes {
        std::fs::create_dir(data.path().join(class)).unwrap();
        for i in 0..n {
            write_png8(
                &data.path().join(class).join(format!("{i}.png")),
                40 + i * 3,
                48,
            );
        }
    }
    data
}

/// A seed-layout folder (one subfolder per class, no splits.csv): train one epoch, resume to a
/// second, and load the result. Plumbing only: nothing here claims accuracy.
#[test]
fn train_on_class_folders_checkpoints_resumes_and_writes_a_loadable_model() {
    let data = class_folders(&[("covid", 6), ("normal", 8)]);
    let out = tempfile::tempdir().unwrap();
    let prefix = out.path().join("smoke");
    let train = |epochs: &str, resume: bool| {
        let mut cmd = crate::common::cxr();
        cmd.args([
            "train",
            "--data",
            data.path().to_str().unwrap(),
            "--out",
            prefix.to_str().unwrap(),
        ]);
        cmd.args([
            "--epochs", epochs, "--size", "32", "--widths", "4,8", "--batch", "4",
        ]);
        if resume {
            cmd.arg("--resume");
        }
        let output = cmd.assert().success().get_output().clone();
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let log = train("1", false);
    assert!(log.contains("no splits.csv: seeded"), "{log}");
    assert!(log.contains("epoch   1/1"), "{log}");
    assert!(
        out.path()
            .join("smoke.train/checkpoint.safetensors")
            .exists()
    );

    let log = train("2", true);
    assert!(log.contains("resumed after epoch 1"), "{log}");
    assert!(
        log.contains("epoch   2/2") && !log.contains("epoch   1/2"),
        "{log}"
    );

    let model = Model::load(&out.path().join("smoke.json")).unwrap();
    assert_eq!(model.labels(), ["covid", "normal"]);
    assert!(model.manifest.operating_points.contains_key("covid"));
    assert!(model.manifest.temperature > 0.0);
}

#[test]
fn missing_data_folder_is_a_usage_error() {
    let out = tempfile::tempdir().unwrap();
    let assert = crate::common::cxr()
        .args([
            "train",
            "--data",
            "/no/such/data",
            "--out",
            out.path().join("m").to_str().unwrap(),
        ])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert_eq!(err.trim(), "error: /no/such/data: no such folder");
}

/// `train --arch densenet121`: one tiny epoch (32 px, 10 images) makes a DenseNet-121 manifest
/// that loads and scores, and the same seed gives the same weights (DenseNet's convolutions
/// once took candle's unseeded default initialisation, and two runs differed).
#[test]
fn train_densenet121_smoke() {
    let data = class_folders(&[("covid", 5), ("normal", 5)]);
    let out = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let log = crate::common::cxr()
            .args(["train", "--data", data.path().to_str().unwrap(), "--out"])
            .arg(out.path().join(name))
            .args([
                "--arch",
                "densenet121",
                "--epochs",
                "1",
                "--size",
                "32",
                "--batch",
                "4",
            ])
            .assert()
            .success()
            .get_output()
            .stderr
            .clone();
        String::from_utf8_lossy(&log).into_owned()
    };
    let log = run("dn");
    assert!(log.contains("epoch   1/1"), "{log}");
    let model = Model::load(&out.path().join("dn.json")).unwrap();
    assert_eq!(model.manifest.architecture, "densenet121");
    assert_eq!(model.labels(), ["covid", "normal"]);
    let plane = vec![0.5f32; 32 * 32];
    let p = model.predict(&[plane]).unwrap();
    assert!((p[0].iter().sum::<f32>() - 1.0).abs() < 1e-4);

    run("again");
    let weights =
        |name: &str| std::fs::read(out.path().join(format!("{name}.safetensors"))).unwrap();
    assert!(
        weights("dn") == weights("again"),
        "same seed, different weights"
    );
}

fn tensors(path: &std::path::Path) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap()
}

/// `train --init MODEL --freeze`: the network, its configuration and preprocessing come from
/// MODEL, every tensor but the classifier (batch-norm statistics included) stays exactly as it
/// was, and the classifier is new, sized for DATA's labels.
#[test]
fn train_from_a_model_with_frozen_features_changes_only_the_classifier() {
    let data = class_folders(&[("covid", 5), ("normal", 5)]);
    let out = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/densenet");
    let log = crate::common::cxr()
        .args(["train", "--data", data.path().to_str().unwrap(), "--out"])
        .arg(out.path().join("ft"))
        .arg("--init")
        .arg(fixture.join("tiny-densenet.json"))
        .args(["--freeze", "--epochs", "2", "--batch", "4"])
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("starting from tiny-densenet")
            && log.contains("new: classifier.bias, classifier.weight"),
        "{log}"
    );
    let base = Model::load(&fixture.join("tiny-densenet.json")).unwrap();
    let model = Model::load(&out.path().join("ft.json")).unwrap();
    assert_eq!(model.manifest.architecture, "densenet121");
    assert_eq!(model.manifest.densenet, base.manifest.densenet);
    assert_eq!(model.manifest.input, base.manifest.input);
    assert_eq!(model.labels(), ["covid", "normal"]);

    let before = tensors(&fixture.join("tiny-densenet.safetensors"));
    let after = tensors(&out.path().join("ft.safetensors"));
    // The unusual-input score is fitted anew for the new model: two tensors more.
    assert_eq!(before.len() + 2, after.len());
    assert!(model.manifest.unusual.is_some());
    for (name, t) in &after {
        if name.starts_with("unusual.") {
            continue;
        }
        if name.starts_with("classifier.") {
            assert_eq!(t.dims()[0], 2, "{name}");
            continue;
        }
        let diff = (t - &before[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{name} changed by {diff}");
    }
}

#[test]
fn freeze_without_init_and_init_with_arch_are_usage_errors() {
    let data = class_folders(&[("covid", 1), ("normal", 1)]);
    let out = tempfile::tempdir().unwrap();
    for extra in [
        &["--freeze"][..],
        &["--init", "m.json", "--arch", "densenet121"],
    ] {
        let assert = crate::common::cxr()
            .args(["train", "--data", data.path().to_str().unwrap(), "--out"])
            .arg(out.path().join("x"))
            .args(extra)
            .assert()
            .code(2);
        let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        assert!(err.contains("--init"), "{err}");
    }
}

/// The one-off feature pass of `--freeze` reports progress as epoch 0, up to its last batch,
/// before the first epoch starts.
#[test]
fn the_frozen_feature_pass_reports_progress() {
    use cxr_triage::training::{TrainConfig, TrainEvent, train};
    let data = class_folders(&[("covid", 5), ("normal", 5)]);
    let out = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/densenet");
    let cfg = TrainConfig {
        data: vec![data.path().to_path_buf()],
        out: out.path().join("ft"),
        epochs: 1,
        batch: 4,
        init: Some(fixture.join("tiny-densenet.json")),
        freeze: true,
        ..TrainConfig::default()
    };
    let mut batches = Vec::new();
    train(&cfg, false, &mut |e| {
        if let TrainEvent::Batch { epoch, done, total } = e {
            batches.push((epoch, done, total));
        }
    })
    .unwrap();
    let first_epoch = batches.iter().position(|b| b.0 == 1).unwrap();
    let features = &batches[..first_epoch];
    assert!(!features.is_empty(), "{batches:?}");
    assert!(features.iter().all(|b| b.0 == 0), "{batches:?}");
    let last = features.last().unwrap();
    assert_eq!(last.1, last.2, "{batches:?}");
}

/// Two folders with splits files in the layout of `../shared/data` (a label the model lacks,
/// a film marked `in_cxr3`), small enough for a smoke run.
fn pool_folders() -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let mut roots = Vec::new();
    for (name, extra) in [("cxr3", ""), ("siim-covid", "indeterminate")] {
        let root = dir.path().join(name);
        let mut csv = String::from("path,label,split,in_cxr3\n");
        for (i, label) in ["covid", "normal", "pneumonia", extra]
            .iter()
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            std::fs::create_dir_all(root.join(label)).unwrap();
            for j in 0..4u32 {
                let split = if j == 3 { "val" } else { "train" };
                let path = format!("{label}/{j}.png");
                write_png8(&root.join(&path), 40 + 5 * i as u32 + j, 44 + j);
                csv.push_str(&format!("{path},{label},{split},no\n"));
            }
        }
        std::fs::write(root.join("splits.csv"), csv).unwrap();
        roots.push(root);
    }
    (dir, roots)
}

/// `train --data A --data B --labels ...`: rows with other labels are left out (and said so),
/// validation is logged per source, and the model carries a fitted unusual-input score.
#[test]
fn pooled_training_reports_each_source_and_fits_the_unusual_score() {
    let (_dir, roots) = pool_folders();
    let out = tempfile::tempdir().unwrap();
    let log = crate::common::cxr()
        .args(["train", "--data"])
        .arg(&roots[0])
        .arg("--data")
        .arg(&roots[1])
        .args(["--labels", "covid,normal,pneumonia", "--out"])
        .arg(out.path().join("pool"))
        .args([
            "--epochs", "1", "--size", "32", "--widths", "4,8", "--batch", "4",
        ])
        .assert()
        .success()
        .get_output()
        .stderr
        .clone();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("data: cxr3+siim-covid"), "{log}");
    assert!(
        log.contains("left out: siim-covid: 4 `indeterminate`"),
        "{log}"
    );
    assert!(log.contains("val per source: cxr3 acc"), "{log}");
    assert!(
        log.contains("train images of siim-covid per class"),
        "{log}"
    );
    assert!(
        log.contains("unusual-input score: fitted on 18 train images"),
        "{log}"
    );
    let model = Model::load(&out.path().join("pool.json")).unwrap();
    let spec = model.manifest.unusual.clone().expect("unusual spec");
    assert!(spec.threshold > 0.0);
    // Scores come with every prediction; the val images themselves are mostly typical.
    let img = cxr_triage::imaging::load(&roots[0].join("covid/3.png")).unwrap();
    let plane = cxr_triage::model::preprocess(&img.image, &model.manifest.input).unwrap();
    let p = model.predict_full(&[plane]).unwrap().remove(0);
    assert!(
        p.unusual.is_some_and(|u| u.is_finite() && u >= 0.0),
        "{p:?}"
    );
}

/// `--export-views`: the val planes written are `preprocess`'s output (what every inference
/// path sees), the train file holds VIEWS planes an image, and nothing is trained.
#[test]
fn exported_views_are_the_inputs_train_and_inference_see() {
    let (_dir, roots) = pool_folders();
    let out = tempfile::tempdir().unwrap();
    let views = out.path().join("views");
    crate::common::cxr()
        .args(["train", "--data"])
        .arg(&roots[0])
        .args(["--out"])
        .arg(out.path().join("v"))
        .args(["--size", "32", "--views", "3", "--export-views"])
        .arg(&views)
        .assert()
        .success();
    assert!(!out.path().join("v.json").exists(), "export only");
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(views.join("index.json")).unwrap()).unwrap();
    let n_train = index["train"]["label"].as_array().unwrap().len();
    assert_eq!(n_train, 9);
    assert_eq!(index["views"], 3);
    let train = std::fs::read(views.join("train.u16")).unwrap();
    assert_eq!(train.len(), n_train * 3 * 32 * 32 * 2);
    let val = std::fs::read(views.join("val.u16")).unwrap();
    let spec: cxr_triage::model::InputSpec =
        serde_json::from_value(index["input"].clone()).unwrap();
    // The val split in splits.csv order: covid/3, normal/3, pneumonia/3.
    for (k, label) in ["covid", "normal", "pneumonia"].iter().enumerate() {
        let img = cxr_triage::imaging::load(&roots[0].join(format!("{label}/3.png"))).unwrap();
        let want = cxr_triage::model::preprocess(&img.image, &spec).unwrap();
        let [lo, hi] = spec.scale;
        for (i, w) in want.iter().enumerate() {
            let o = (k * 32 * 32 + i) * 2;
            let u = u16::from_le_bytes([val[o], val[o + 1]]) as f32 / 65535.0;
            let got = lo + u * (hi - lo);
            assert!(
                (got - w).abs() <= (hi - lo) / 65535.0,
                "{label} pixel {i}: {got} vs {w}"
            );
        }
    }
}

#[test]
fn zero_epochs_without_init_is_refused() {
    let data = class_folders(&[("covid", 2), ("normal", 2)]);
    let out = tempfile::tempdir().unwrap();
    let assert = crate::common::cxr()
        .args(["train", "--data", data.path().to_str().unwrap(), "--out"])
        .arg(out.path().join("x"))
        .args(["--epochs", "0"])
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(err.contains("--epochs 0 needs --init"), "{err}");
}
