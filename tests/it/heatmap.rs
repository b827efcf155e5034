//! Heatmaps (Grad-CAM) for every network the app loads, `scan --heatmaps` and the
//! `border_attention` column.

use std::path::Path;

use cxr_triage::model::{Model, argmax, preprocess};

use crate::common::{pattern8, tiny_model, write_png8};

fn plane(model: &Model, w: u32, h: u32) -> Vec<f32> {
    let d = cxr_triage::imaging::decode_bytes(
        &crate::common::png_bytes(&pattern8(w, h)),
        &cxr_triage::imaging::Limits::default(),
    )
    .unwrap();
    preprocess(&d.image, &model.manifest.input).unwrap()
}

/// The built-in EfficientNet-Lite0, cxrnet-v1 and the DenseNet fixture: a map of the last
/// stage's size for the predicted label (and for any label asked), never negative.
#[test]
fn every_network_gives_a_heatmap_of_its_last_stage_for_the_predicted_label() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = [
        (Model::embedded().unwrap(), 6),
        (Model::load(&root.join("models/cxrnet-v1.json")).unwrap(), 4),
        (
            Model::load(&root.join("tests/fixtures/densenet/tiny-densenet.json")).unwrap(),
            0,
        ),
    ];
    for (model, side) in &models {
        let p = plane(model, 300, 200);
        let full = model
            .predict_full(std::slice::from_ref(&p))
            .unwrap()
            .remove(0);
        let heat = full.heatmap.expect("predict_full has the heatmap");
        let name = &model.manifest.name;
        assert_eq!(heat.label, argmax(&full.probs), "{name}");
        if *side > 0 {
            assert_eq!((heat.width, heat.height), (*side, *side), "{name}");
        }
        assert_eq!(heat.values.len(), heat.width * heat.height);
        assert!(
            heat.values.iter().all(|v| v.is_finite() && *v >= 0.0),
            "{name}"
        );
        if let Some(b) = heat.border_share() {
            assert!((0.0..=1.0).contains(&b), "{name}: {b}");
        }
        // Probabilities are the same with or without the heatmap.
        assert_eq!(
            model.predict(std::slice::from_ref(&p)).unwrap()[0],
            full.probs
        );
        for label in 0..model.labels().len() {
            let maps = model.heatmaps(&[p.clone(), p.clone()], label).unwrap();
            assert_eq!(maps.len(), 2);
            assert_eq!(
                maps[0], maps[1],
                "{name}: images in a batch are independent"
            );
            assert_eq!(maps[0].label, label);
        }
        assert!(model.heatmaps(&[p], model.labels().len()).is_err());
    }
}

fn scan_heatmaps(folder: &Path, model: &Path, out: &Path) -> assert_cmd::assert::Assert {
    crate::common::cxr()
        .args(["scan", "--quiet", "--no-cache", "--model"])
        .arg(model)
        .arg(folder)
        .arg("--heatmaps")
        .arg(out)
        .assert()
}

#[test]
fn scan_writes_one_overlay_per_scored_image_outside_the_folder_and_never_overwrites() {
    let models = tempfile::tempdir().unwrap();
    let model = tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("normal")).unwrap();
    write_png8(&data.path().join("normal/a.png"), 64, 48);
    // Extremes: too small to score (an error row, no overlay), 4096 px wide, 4096 px tall.
    write_png8(&data.path().join("one-pixel.png"), 1, 1);
    write_png8(&data.path().join("wide.png"), 4096, 16);
    write_png8(&data.path().join("tall.png"), 16, 4096);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("heat");
    let run = scan_heatmaps(data.path(), &model, &dir).code(1);
    let text = String::from_utf8(run.get_output().stdout.clone()).unwrap();
    let rows: Vec<csv::StringRecord> = csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(Result::unwrap)
        .collect();
    let header: Vec<String> = csv::Reader::from_reader(text.as_bytes())
        .headers()
        .unwrap()
        .iter()
        .map(String::from)
        .collect();
    let col = header.iter().position(|h| h == "border_attention").unwrap();
    let mut files: Vec<String> = Vec::new();
    for entry in walkdir::WalkDir::new(&dir) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            files.push(
                entry
                    .path()
                    .strip_prefix(&dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    for row in &rows {
        let path = &row[0];
        if &row[1] != "done" {
            assert!(row[col].is_empty());
            assert!(!files.iter().any(|f| f.starts_with(path)), "{path}");
            continue;
        }
        let share: f32 = row[col].parse().unwrap();
        assert!((0.0..=1.0).contains(&share), "{path}: {share}");
        let file = files
            .iter()
            .find(|f| f.starts_with(&format!("{path}.")))
            .unwrap_or_else(|| panic!("no overlay for {path}: {files:?}"));
        // <image>.<predicted label>-<P>.png
        let predicted = &row[header.iter().position(|h| h == "predicted").unwrap()];
        assert!(
            file.starts_with(&format!("{path}.{predicted}-0.")) && file.ends_with(".png"),
            "{file}"
        );
        let img = image::open(dir.join(file)).unwrap();
        let (w, h) = (img.width(), img.height());
        assert!(w.max(h) <= 1024 && w.min(h) >= 1, "{file}: {w}x{h}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{file} is readable by others: {mode:o}");
        }
    }
    assert!(files.iter().any(|f| f.starts_with("normal/a.png.")));
    // A second run into the same folder keeps the files and says so.
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let again = crate::common::cxr()
        .args(["scan", "--no-cache", "--model"])
        .arg(&model)
        .arg(data.path())
        .arg("--heatmaps")
        .arg(&dir)
        .assert()
        .code(1);
    let err = String::from_utf8(again.get_output().stderr.clone()).unwrap();
    assert!(err.contains("exists, not overwritten"), "{err}");
    assert!(err.contains("0 heatmaps written"), "{err}");
    let after: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn a_heatmap_folder_inside_the_scanned_folder_is_refused_before_anything_is_written() {
    let models = tempfile::tempdir().unwrap();
    let model = tiny_model(models.path());
    let data = tempfile::tempdir().unwrap();
    write_png8(&data.path().join("a.png"), 64, 48);
    let inside = data.path().join("heat");
    let run = scan_heatmaps(data.path(), &model, &inside).code(2);
    let err = String::from_utf8(run.get_output().stderr.clone()).unwrap();
    assert!(err.contains("inside the scanned folder"), "{err}");
    assert!(run.get_output().stdout.is_empty());
    assert!(!inside.exists());
}
