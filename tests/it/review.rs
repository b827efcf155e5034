//! Data set review in `scan`: labels from folders or a CSV, metrics (eval's code),
//! disagreements, duplicates with leaks, the per-folder breakdown.

use std::path::Path;

use crate::common::{LABELS, cxr, tiny_model};

/// A smooth picture that depends on `seed` (different seeds: unrelated pictures).
fn smooth(seed: u32, w: u32, h: u32) -> image::GrayImage {
    let s = seed as f32;
    image::GrayImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        let a = (u * (3.0 + s * 1.7) + s).sin() * (v * (2.0 + s * 0.9) - s * 0.5).cos();
        let b = ((u + v) * (4.0 + s * 0.3) + s * 2.0).sin();
        image::Luma([(128.0 + 60.0 * a + 50.0 * b).clamp(0.0, 255.0) as u8])
    })
}

fn save(root: &Path, rel: &str, img: &image::GrayImage) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// `scan` as JSON Lines; returns (rows, stderr, exit code).
fn scan_json(root: &Path, model: &Path, extra: &[&str]) -> (Vec<serde_json::Value>, String, i32) {
    let out = cxr()
        .args([
            "scan",
            root.to_str().unwrap(),
            "--format",
            "jsonl",
            "--no-cache",
            "--model",
        ])
        .arg(model)
        .args(extra)
        .output()
        .unwrap();
    let rows = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        rows,
        String::from_utf8(out.stderr).unwrap(),
        out.status.code().unwrap(),
    )
}

fn labelled_folder(root: &Path) {
    for i in 0..4 {
        save(root, &format!("COVID-19/c{i}.png"), &smooth(i, 64, 64));
        save(
            root,
            &format!("No Finding/n{i}.png"),
            &smooth(10 + i, 64, 64),
        );
        save(
            root,
            &format!("pneumonia/p{i}.png"),
            &smooth(20 + i, 64, 64),
        );
    }
    save(root, "dicom/x.png", &smooth(30, 64, 64));
}

#[test]
fn folder_labels_are_matched_with_aliases_and_the_metrics_are_evals() {
    let (models, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let model = tiny_model(models.path());
    labelled_folder(data.path());
    let (rows, err, code) = scan_json(data.path(), &model, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(rows.len(), 13);
    let label_of = |p: &str| {
        rows.iter().find(|r| r["path"] == p).unwrap()["label"]
            .as_str()
            .map(String::from)
    };
    assert_eq!(label_of("COVID-19/c0.png").as_deref(), Some("covid"));
    assert_eq!(label_of("No Finding/n1.png").as_deref(), Some("normal"));
    assert_eq!(label_of("dicom/x.png"), None);
    assert!(err.contains("not counted: dicom (1)"), "{err}");

    // The figures are eval's, computed from the rows scan wrote.
    let labels: Vec<String> = LABELS.map(String::from).to_vec();
    let (mut probs, mut truth) = (Vec::new(), Vec::new());
    for r in rows.iter().filter(|r| !r["label"].is_null()) {
        probs.push(
            labels
                .iter()
                .map(|l| r["probabilities"][l].as_f64().unwrap() as f32)
                .collect::<Vec<f32>>(),
        );
        truth.push(labels.iter().position(|l| r["label"] == *l).unwrap());
    }
    let manifest = cxr_triage::model::Manifest::from_path(&model).unwrap();
    let report = cxr_triage::evaluation::report(
        &manifest,
        &data.path().display().to_string(),
        None,
        &probs,
        &truth,
        Vec::new(),
        200,
    );
    assert_eq!(report.n, 12);
    assert!(
        err.contains(&report.render()),
        "{err}\n---\n{}",
        report.render()
    );
}

#[test]
fn a_labels_file_overrides_folders_and_a_bad_one_is_a_usage_error() {
    let (models, data, files) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let model = tiny_model(models.path());
    labelled_folder(data.path());
    let csv = files.path().join("labels.csv");
    std::fs::write(
        &csv,
        "path,label\nCOVID-19/c0.png,Normal\ndicom/x.png,PNEUMONIA\nNo Finding/n0.png,effusion\n",
    )
    .unwrap();
    let (rows, err, code) = scan_json(data.path(), &model, &["--labels", csv.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let label_of = |p: &str| rows.iter().find(|r| r["path"] == p).unwrap()["label"].clone();
    assert_eq!(label_of("COVID-19/c0.png"), "normal");
    assert_eq!(label_of("dicom/x.png"), "pneumonia");
    assert!(label_of("COVID-19/c1.png").is_null(), "not in the file");
    assert!(err.contains("not counted: effusion (1)"), "{err}");

    std::fs::write(&csv, "file,class\na.png,covid\n").unwrap();
    let (_, err, code) = scan_json(data.path(), &model, &["--labels", csv.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("`path` and `label` columns"), "{err}");
}

#[test]
fn disagreements_are_the_rows_whose_label_differs_most_confident_first() {
    let (models, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let model = tiny_model(models.path());
    labelled_folder(data.path());
    let (all, _, _) = scan_json(data.path(), &model, &[]);
    let (rows, err, code) = scan_json(data.path(), &model, &["--disagreements"]);
    assert_eq!(code, 0, "{err}");
    let differs = |r: &serde_json::Value| !r["label"].is_null() && r["label"] != r["predicted"];
    assert_eq!(rows.len(), all.iter().filter(|r| differs(r)).count());
    assert!(rows.iter().all(differs));
    let confidence: Vec<f64> = rows
        .iter()
        .map(|r| {
            r["probabilities"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_f64().unwrap())
                .fold(0.0, f64::max)
        })
        .collect();
    assert!(
        confidence.windows(2).all(|w| w[0] >= w[1]),
        "{confidence:?}"
    );
}

#[test]
fn duplicates_find_copies_and_near_copies_and_name_the_leak() {
    let (models, data, files) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let model = tiny_model(models.path());
    let root = data.path();
    save(root, "covid/a.png", &smooth(1, 96, 96));
    std::fs::create_dir_all(root.join("normal")).unwrap();
    std::fs::copy(root.join("covid/a.png"), root.join("normal/a-copy.png")).unwrap();
    let smaller = image::imageops::resize(
        &smooth(1, 96, 96),
        60,
        60,
        image::imageops::FilterType::Triangle,
    );
    save(root, "covid/a-small.png", &smaller);
    save(root, "covid/b.png", &smooth(2, 96, 96));
    save(root, "covid/b-again.png", &smooth(2, 96, 96));
    for i in 3..8 {
        save(
            root,
            &format!("normal/other{i}.png"),
            &smooth(i * 7, 96, 96),
        );
    }
    let (rows, err, code) = scan_json(root, &model, &["--duplicates"]);
    assert_eq!(code, 0, "{err}");
    let group_of = |p: &str| {
        rows.iter().find(|r| r["path"] == p).map(|r| {
            (
                r["group"].as_str().unwrap().to_string(),
                r["match"].clone(),
                r["leak"].clone(),
            )
        })
    };
    let (g1, m1, leak1) = group_of("covid/a.png").expect("a is in a group");
    assert_eq!(group_of("normal/a-copy.png").unwrap().0, g1);
    assert_eq!(group_of("covid/a-small.png").unwrap().0, g1);
    assert_eq!(
        m1, "near",
        "the resized copy makes the group near, not exact"
    );
    assert_eq!(leak1, "labels covid/normal");
    let (g2, m2, leak2) = group_of("covid/b.png").expect("b is in a group");
    assert_ne!(g1, g2);
    assert_eq!(m2, "exact");
    assert_eq!(leak2, "");
    assert_eq!(rows.len(), 5, "the five unrelated images are not written");
    assert!(
        err.contains("2 duplicate groups (5 images): 1 exact, 1 near; 1 span"),
        "{err}"
    );

    // A split column in --labels makes a group across splits a leak too.
    let csv = files.path().join("labels.csv");
    std::fs::write(
        &csv,
        "path,label,split\ncovid/b.png,covid,train\ncovid/b-again.png,covid,test\n",
    )
    .unwrap();
    let (rows, _, _) = scan_json(
        root,
        &model,
        &["--duplicates", "--labels", csv.to_str().unwrap()],
    );
    let b = rows.iter().find(|r| r["path"] == "covid/b.png").unwrap();
    assert_eq!(b["leak"], "splits test/train");
}

#[test]
fn by_folder_counts_and_means_match_the_rows() {
    let (models, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let model = tiny_model(models.path());
    labelled_folder(data.path());
    std::fs::write(data.path().join("pneumonia/broken.png"), b"not a png").unwrap();
    let (rows, _, _) = scan_json(data.path(), &model, &[]);
    let (folders, err, code) = scan_json(data.path(), &model, &["--by-folder"]);
    assert_eq!(
        code, 1,
        "a broken file still makes the exit status 1: {err}"
    );
    let names: Vec<&str> = folders
        .iter()
        .map(|f| f["folder"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["COVID-19", "dicom", "No Finding", "pneumonia"]);
    let pneumonia = &folders[3];
    assert_eq!(pneumonia["images"], 5);
    assert_eq!(pneumonia["errors"], 1);
    assert_eq!(pneumonia["scored"], 4);
    let mean: f64 = rows
        .iter()
        .filter(|r| r["path"].as_str().unwrap().starts_with("pneumonia/") && r["status"] == "done")
        .map(|r| r["probabilities"]["covid"].as_f64().unwrap())
        .sum::<f64>()
        / 4.0;
    assert!((pneumonia["mean"][0].as_f64().unwrap() - mean).abs() < 1e-6);
}
