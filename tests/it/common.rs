//! Helpers: images made in the test, a tiny random-weight model (plumbing only, no accuracy).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use cxr_triage::model::cxrnet::CxrNetConfig;
use cxr_triage::model::{CropMode, InputSpec, Intensity, Manifest, Output, build_net, save};

pub const LABELS: [&str; 3] = ["covid", "normal", "pneumonia"];

/// A smooth 8-bit gradient with a bright disc, `w` x `h`.
pub fn pattern8(w: u32, h: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - w as f32 / 2.0, y as f32 - h as f32 / 3.0);
        let disc = if dx * dx + dy * dy < (w.min(h) as f32 / 5.0).powi(2) {
            80.0
        } else {
            0.0
        };
        image::Luma([
            ((x * 150 / w.max(1)) as f32 + (y * 20 / h.max(1)) as f32 + disc).min(255.0) as u8,
        ])
    })
}

pub fn write_png8(path: &Path, w: u32, h: u32) {
    pattern8(w, h).save(path).unwrap();
}

pub fn png_bytes(img: &image::GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Write a random-weight cxrnet (widths 4, 8; input 32 px) into `dir`; returns the manifest.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let mut manifest = Manifest {
        name: "tiny".into(),
        architecture: "cxrnet".into(),
        cxrnet: Some(CxrNetConfig { widths: vec![4, 8] }),
        densenet: None,
        label_names: Default::default(),
        labels: LABELS.map(String::from).to_vec(),
        output: Output::Softmax,
        input: InputSpec {
            channels: 1,
            size: 32,
            crop: CropMode::CenterSquare,
            intensity: Intensity::Equalize,
            scale: [0.0, 1.0],
            mean: vec![0.5],
            std: vec![0.29],
        },
        temperature: 1.0,
        operating_points: [("covid".to_string(), 0.0f32)].into_iter().collect(),
        unusual: None,
        weights: String::new(),
        sha256: "0".repeat(64),
        trained_on: None,
        metrics: serde_json::Value::Null,
    };
    let varmap = VarMap::new();
    build_net(
        &manifest,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    save(dir, &mut manifest, &varmap).unwrap()
}

/// Running as root makes `chmod 000` files readable; tests of unreadable files skip then.
pub fn unreadable_possible(path: &Path) -> bool {
    std::fs::read(path).is_err()
}

/// `../shared/data/cxr3` when present; tests that need it skip with a message otherwise.
pub fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cxr3");
    if dir.join("splits.csv").exists() {
        Some(dir)
    } else {
        eprintln!("skipping: ../shared/data/cxr3 is absent");
        None
    }
}

/// A new, empty folder to use as `XDG_CACHE_HOME` for one run of the binary: runs never share
/// stored results unless a test says so, and never touch the user's own cache.
pub fn fresh_cache_home() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "cache-home-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The binary, with its own fresh cache folder.
pub fn cxr() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("cxr-triage").unwrap();
    cmd.env("XDG_CACHE_HOME", fresh_cache_home());
    cmd
}

/// The binary as a plain `std::process::Command`, with its own fresh cache folder.
pub fn cxr_std() -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("cxr-triage"));
    cmd.env("XDG_CACHE_HOME", fresh_cache_home());
    cmd
}

/// The largest |a - b| over two tensors of one shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
