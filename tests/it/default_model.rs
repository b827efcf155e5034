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
    // `eval --record` over several data sets stores one report each (then the pool): the
    // first is cxr3's.
    let metrics = match &manifest.metrics {
        serde_json::Value::Array(reports) => reports[0].clone(),
        one => one.clone(),
    };
    let recorded = metrics["accuracy"]["value"]
        .as_f64()
        .expect("manifest records eval's accuracy");
    assert_eq!(metrics["split"], "test");
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
    assert_eq!(report["n"], metrics["n"]);
}

/// The unusual-input score was calibrated on val so that 95 % of val images are typical: on
/// each training source's test split at least 90 % must be.
#[test]
fn most_test_images_of_every_source_are_typical() {
    let Some(cxr3) = shared_data() else { return };
    let root = cxr3.parent().unwrap();
    let sets = ["cxr3", "siim-covid", "cohen-2020-07"];
    if sets.iter().any(|s| !root.join(s).is_dir()) {
        eprintln!("skipping: ../shared/data lacks one of {sets:?}");
        return;
    }
    let mut cmd = crate::common::cxr();
    cmd.args(["eval", "--split", "test", "--json", "--resamples", "1"]);
    for s in sets {
        cmd.arg("--data").arg(root.join(s));
    }
    let out = cmd.assert().success().get_output().stdout.clone();
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(reports.len(), 4, "three sets and the pool");
    for r in &reports[..3] {
        let n = r["n"].as_u64().unwrap() as f64;
        let unusual = r["unusual"]
            .as_u64()
            .expect("the default model has the score") as f64;
        assert!(
            unusual / n <= 0.10,
            "{}: {unusual} of {n} unusual",
            r["data"]
        );
    }
}

/// Things that are not chest radiographs are unusual to the default model: noise, a smooth
/// gradient, a colour photo-like scene, a checkerboard.
#[test]
fn noise_gradients_and_photos_are_unusual() {
    use cxr_triage::imaging::{Limits, decode_bytes};
    let model = Model::embedded().unwrap();
    assert!(
        model.manifest.unusual.is_some(),
        "the default model has the score"
    );
    let mut state = 12345u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u8
    };
    let (w, h) = (320u32, 256u32);
    let noise = image::GrayImage::from_fn(w, h, |_, _| image::Luma([next()]));
    let gradient =
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x + y) * 255 / (w + h)) as u8]));
    let checker = image::GrayImage::from_fn(w, h, |x, y| {
        image::Luma([if (x / 16 + y / 16) % 2 == 0 { 30 } else { 220 }])
    });
    // Sky, a sun, grass and a house: colour regions with texture.
    let photo = image::RgbImage::from_fn(w, h, |x, y| {
        let t = ((x * 7 + y * 13) % 17) as u8;
        if (x as i32 - 250).pow(2) + (y as i32 - 50).pow(2) < 900 {
            image::Rgb([250, 220, 40])
        } else if y < 150 {
            image::Rgb([90 + t, 150 + t, 235])
        } else if (60..160).contains(&x) && y < 210 {
            image::Rgb([170 + t, 40, 30])
        } else {
            image::Rgb([40, 140 + t * 3, 40])
        }
    });
    let png = |img: image::DynamicImage| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    for (name, bytes) in [
        ("noise", png(noise.into())),
        ("gradient", png(gradient.into())),
        ("checkerboard", png(checker.into())),
        ("photo", png(photo.into())),
    ] {
        let decoded = decode_bytes(&bytes, &Limits::default()).unwrap();
        let plane = cxr_triage::model::preprocess(&decoded.image, &model.manifest.input).unwrap();
        let p = model.predict_full(&[plane]).unwrap().remove(0);
        let score = p.unusual.unwrap();
        assert!(
            score > 1.0,
            "{name}: unusual score {score} (typical at or below 1)"
        );
    }
}

/// A film shown inverted (a MONOCHROME1 film read as MONOCHROME2, a negative) is unusual to
/// the default model, and the same films shown plainly are typical: the first 40 test films of
/// siim-covid and of cxr3 as `eval` reads them (`Dataset::pool` with the model's labels, so
/// without siim-covid's `indeterminate`), written plain and inverted and scanned. The
/// score on the pooled features alone called a fifth of inverted films unusual; the per-stage
/// statistics see the reversed contrast. (Scanned by the binary, not in this process: the
/// hostile tests measure their children's peak memory, which includes this process's peak.)
#[test]
fn inverted_films_are_unusual() {
    use cxr_triage::catalog::dataset::{Dataset, Split};
    use cxr_triage::imaging::load;
    let Some(cxr3) = shared_data() else { return };
    let root = cxr3.parent().unwrap();
    let labels = Model::embedded().unwrap().labels().to_vec();
    let out = tempfile::tempdir().unwrap();
    let mut n = 0;
    for set in ["siim-covid", "cxr3"] {
        let dir = root.join(set);
        if !dir.join("splits.csv").exists() {
            eprintln!("skipping {set}: no splits.csv");
            continue;
        }
        let data = Dataset::pool(&[dir], Some(&labels), 0, 0.15).unwrap();
        for sample in data.split(Split::Test).into_iter().take(40) {
            let image = load(&sample.path).unwrap().image;
            let max = image.max_value();
            for (kind, invert) in [("plain", false), ("inverted", true)] {
                let px: Vec<u16> = image
                    .pixels
                    .iter()
                    .map(|&v| if invert { max - v } else { v })
                    .collect();
                let (w, h) = (image.width, image.height);
                let file = out.path().join(kind).join(format!("{set}-{n:03}.png"));
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                let png: image::DynamicImage = if image.bit_depth <= 8 {
                    let px = px.iter().map(|&v| v as u8).collect();
                    image::GrayImage::from_raw(w, h, px).unwrap().into()
                } else {
                    image::ImageBuffer::<image::Luma<u16>, _>::from_raw(w, h, px)
                        .unwrap()
                        .into()
                };
                png.save(&file).unwrap();
            }
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    let unusual = |kind: &str| {
        let stdout = crate::common::cxr()
            .args(["scan", "--format", "jsonl", "--quiet"])
            .arg(out.path().join(kind))
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let rows: Vec<serde_json::Value> = stdout
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(rows.len(), n);
        rows.iter().filter(|r| r["typicality"] == "unusual").count()
    };
    let (plain, inverted) = (unusual("plain"), unusual("inverted"));
    assert!(plain * 10 <= n, "{plain} of {n} plain films unusual");
    assert!(
        inverted * 10 >= n * 8,
        "{inverted} of {n} inverted films unusual"
    );
}

/// A manifest whose unusual-input score does not match its weights is refused with a reason:
/// a layer count the network cannot give, or one layer where the weights hold nine.
#[test]
fn a_manifest_with_the_wrong_unusual_layers_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let manifest: serde_json::Value = serde_json::from_str(DEFAULT_MANIFEST).unwrap();
    let weights = manifest["weights"].as_str().unwrap();
    std::fs::write(dir.path().join(weights), DEFAULT_WEIGHTS).unwrap();
    assert_eq!(manifest["unusual"]["layers"], 9);
    for (layers, reason) in [(5, "has 5 layers"), (1, "unusual.whiten")] {
        let mut m = manifest.clone();
        m["unusual"]["layers"] = layers.into();
        let path = dir.path().join("m.json");
        std::fs::write(&path, m.to_string()).unwrap();
        let err = Model::load(&path).unwrap_err().to_string();
        assert!(err.contains(reason), "layers {layers}: {err}");
    }
}
