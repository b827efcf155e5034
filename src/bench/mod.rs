//! `cxr-triage bench`: speed figures on inputs the benchmark makes itself. Medians of repeated
//! runs; nothing here is asserted by tests.

pub mod merge;
pub mod tui;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use image::{DynamicImage, ImageFormat};

use crate::catalog::{WalkOptions, walk};
use crate::imaging::{self, Limits, thumbnail};
use crate::model::{Model, preprocess};
use crate::scoring::{PipelineOptions, score_all};

/// A radiograph-like test image: smooth anatomy-ish shapes plus film grain, `side` x `side`.
pub fn synthetic_xray(side: u32, seed: u32) -> image::ImageBuffer<image::Luma<u16>, Vec<u16>> {
    let s = side as f32;
    image::ImageBuffer::from_fn(side, side, |x, y| {
        let (u, v) = (x as f32 / s - 0.5, y as f32 / s - 0.5);
        let body = (1.0 - (u * u * 3.0 + v * v * 1.5)).max(0.0);
        let lungs = (-((u.abs() - 0.18).powi(2) * 40.0 + (v + 0.05).powi(2) * 12.0)).exp();
        let grain = (((x.wrapping_mul(7919) ^ y.wrapping_mul(104_729) ^ seed.wrapping_mul(31)) % 97)
            as f32)
            / 97.0;
        let value = (0.2 + 0.6 * body - 0.35 * lungs + 0.05 * grain).clamp(0.0, 1.0);
        image::Luma([(value * 65535.0) as u16])
    })
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("in-memory encode");
    out.into_inner()
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect(),
    )
}

/// The bench's 16-bit DICOM: 12 bits stored, uncompressed or RLE Lossless.
pub fn dicom_bytes(img: &image::ImageBuffer<image::Luma<u16>, Vec<u16>>, rle: bool) -> Vec<u8> {
    let stored: Vec<u16> = img.as_raw().iter().map(|v| v >> 4).collect();
    let options = imaging::DicomWrite {
        bits_stored: 12,
        rle,
        ..Default::default()
    };
    imaging::write_dicom(&stored, img.width(), img.height(), &options)
}

/// Decode + 256 px thumbnail, per format, in milliseconds (median).
pub fn decode_figures(runs: usize) -> Vec<(String, f64, f64)> {
    let wide = synthetic_xray(2048, 1);
    let narrow = DynamicImage::ImageLuma16(wide.clone()).to_luma8();
    let tall = image::imageops::resize(
        &synthetic_xray(2048, 2),
        2048,
        2560,
        image::imageops::FilterType::Triangle,
    );
    let cases = [
        (
            "2048x2560 PNG 16-bit",
            encode(&DynamicImage::ImageLuma16(tall.clone()), ImageFormat::Png),
        ),
        ("2048x2560 DICOM 16-bit", dicom_bytes(&tall, false)),
        ("2048x2560 DICOM RLE", dicom_bytes(&tall, true)),
        (
            "2048x2048 PNG 8-bit",
            encode(&DynamicImage::ImageLuma8(narrow.clone()), ImageFormat::Png),
        ),
        (
            "2048x2048 PNG 16-bit",
            encode(&DynamicImage::ImageLuma16(wide), ImageFormat::Png),
        ),
        (
            "2048x2048 JPEG 8-bit",
            encode(&DynamicImage::ImageLuma8(narrow), ImageFormat::Jpeg),
        ),
    ];
    cases
        .into_iter()
        .map(|(name, bytes)| {
            let limits = Limits::default();
            let decode = time_ms(runs, || {
                imaging::decode_bytes(&bytes, &limits).expect("bench image decodes");
            });
            let decoded = imaging::decode_bytes(&bytes, &limits).expect("bench image decodes");
            let thumb = time_ms(runs, || {
                thumbnail(&decoded.image, 256);
            });
            (name.to_string(), decode, thumb)
        })
        .collect()
}

/// Throughputs (images/s) of decoding alone, inference alone, and the pipeline end to end.
pub struct ScanFigures {
    pub images: usize,
    pub decode_only: f64,
    pub infer_only: f64,
    pub end_to_end: f64,
}

pub fn scan_figures(
    model: &Model,
    dir: &Path,
    images: usize,
    options: &PipelineOptions,
) -> std::io::Result<ScanFigures> {
    std::fs::create_dir_all(dir)?;
    for i in 0..images {
        let path = dir.join(format!("img{i:04}.png"));
        if !path.exists() {
            let img = DynamicImage::ImageLuma16(synthetic_xray(1024, i as u32)).to_luma8();
            img.save(&path).map_err(std::io::Error::other)?;
        }
    }
    let entries: Vec<_> = walk(dir, &WalkOptions::default()).take(images).collect();
    let paths: Vec<PathBuf> = entries.iter().map(|e| e.path.clone()).collect();
    let spec = &model.manifest.input;

    // Decoding alone, with as many threads as the pipeline uses.
    let t = Instant::now();
    let chunks: Vec<&[PathBuf]> = paths
        .chunks(paths.len().div_ceil(options.decoders.max(1)))
        .collect();
    let planes: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|p| {
                            preprocess(&imaging::load(p).expect("bench image").image, spec)
                                .expect("preprocess")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decoder thread"))
            .collect()
    });
    let decode_only = images as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    for batch in planes.chunks(options.batch.max(1)) {
        model.predict(batch).expect("inference");
    }
    let infer_only = images as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut done = 0;
    score_all(entries, model, options, &AtomicBool::new(false), |_| {
        done += 1
    });
    let end_to_end = done as f64 / t.elapsed().as_secs_f64();
    Ok(ScanFigures {
        images,
        decode_only,
        infer_only,
        end_to_end,
    })
}

/// The inference benches' input: a synthetic 16-bit film through the PNG decoder and
/// [`preprocess`].
fn bench_plane(model: &Model) -> Vec<f32> {
    let img = DynamicImage::ImageLuma16(synthetic_xray(512, 3));
    let decoded = imaging::decode_bytes(&encode(&img, ImageFormat::Png), &Limits::default())
        .expect("decodes");
    preprocess(&decoded.image, &model.manifest.input).expect("preprocess")
}

/// Inference images/s at a given batch size on preprocessed planes (median of `runs`).
pub fn inference_figure(model: &Model, batch: usize, runs: usize) -> f64 {
    let planes = vec![bench_plane(model); batch];
    let ms = time_ms(runs, || {
        model.predict(&planes).expect("inference");
    });
    batch as f64 / (ms / 1000.0)
}

/// GFLOP/s of one 1024^3 matrix product on every core (median of `runs`): the ceiling for the
/// networks' own figures.
pub fn matmul_ceiling(runs: usize) -> f64 {
    let n = 1024;
    let ms = time_ms(runs, crate::model::square_product(n));
    2.0 * (n * n * n) as f64 / (ms / 1000.0) / 1e9
}

/// Milliseconds per batch (medians, the three taken in turn in each run so that the machine's
/// noise hits them alike): inference alone, inference with the predicted label's Grad-CAM (what
/// `scan` does for `border_attention`), and the heatmap of a chosen label (what the UI's `<` `>`
/// ask for).
#[derive(Clone, Copy, Debug)]
pub struct HeatmapFigures {
    pub batch: usize,
    pub infer_ms: f64,
    pub with_heatmap_ms: f64,
    pub chosen_label_ms: f64,
}

pub fn heatmap_figures(model: &Model, batch: usize, runs: usize) -> HeatmapFigures {
    let planes = vec![bench_plane(model); batch];
    let last = model.labels().len().saturating_sub(1);
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1000.0
    };
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs.max(1) {
        let ta = timed(&mut || drop(model.predict(&planes).expect("inference")));
        let tb = timed(&mut || drop(model.predict_full(&planes).expect("inference")));
        let tc = timed(&mut || drop(model.heatmaps(&planes, last).expect("heatmap")));
        // The first round warms up.
        if run > 0 {
            a.push(ta);
            b.push(tb);
            c.push(tc);
        }
    }
    HeatmapFigures {
        batch,
        infer_ms: median(a),
        with_heatmap_ms: median(b),
        chosen_label_ms: median(c),
    }
}

/// Probabilities for a fixed input (a ramp from 0 to 1 over the plane, row-major), the same
/// input `benches/cxrnet_torch.py` feeds its PyTorch twin: equal numbers mean equal networks.
pub fn fixed_input_probabilities(model: &Model) -> Vec<f32> {
    let n = model.manifest.input.size * model.manifest.input.size;
    let plane: Vec<f32> = (0..n).map(|i| i as f32 / (n - 1) as f32).collect();
    model.predict(&[plane]).expect("inference").remove(0)
}

/// Scan throughput without the store, with an empty one (every result written) and with a
/// full one (every result read back), in images/s: medians of `runs`, the three kinds of run
/// taking turns so that they see the same machine.
pub struct StoreScanFigures {
    pub images: usize,
    pub off: f64,
    pub cold: f64,
    pub warm: f64,
    /// xxh3-128 of one file's bytes, ms (median).
    pub hash_ms: f64,
    /// Difference hash of one decoded 1024x1024 image, ms (median).
    pub dhash_ms: f64,
    /// Decoding one of the files, ms (median), for scale.
    pub decode_ms: f64,
}

pub fn store_scan_figures(
    model: &Model,
    dir: &Path,
    store_dir: &Path,
    images: usize,
    runs: usize,
    options: &PipelineOptions,
) -> anyhow::Result<StoreScanFigures> {
    use crate::results::store::{Store, content_hash, model_id};
    std::fs::create_dir_all(dir)?;
    for i in 0..images {
        let path = dir.join(format!("img{i:04}.png"));
        if !path.exists() {
            let img = DynamicImage::ImageLuma16(synthetic_xray(1024, i as u32)).to_luma8();
            img.save(&path)?;
        }
    }
    let entries: Vec<_> = walk(dir, &WalkOptions::default()).take(images).collect();
    let id = model_id(&model.manifest);
    std::fs::create_dir_all(store_dir)?;
    let run = |store: Option<&Store>| -> f64 {
        let t = Instant::now();
        let mut done = 0;
        crate::scoring::score_all_stored(
            entries.clone(),
            model,
            options,
            store,
            &AtomicBool::new(false),
            |_| done += 1,
        );
        done as f64 / t.elapsed().as_secs_f64()
    };
    let warm_path = store_dir.join("warm.sqlite3");
    {
        let warm = Store::open(&warm_path, &id)?;
        run(Some(&warm));
    }
    let (mut off, mut cold, mut warm) = (Vec::new(), Vec::new(), Vec::new());
    run(None); // warm-up: file-system cache, threads
    for r in 0..runs {
        off.push(run(None));
        let cold_path = store_dir.join(format!("cold-{r}.sqlite3"));
        let store = Store::open(&cold_path, &id)?;
        cold.push(run(Some(&store)));
        drop(store);
        crate::results::store::clear(&cold_path)?;
        let store = Store::open(&warm_path, &id)?;
        warm.push(run(Some(&store)));
    }
    let first = std::fs::read(&entries[0].path)?;
    let decoded = imaging::decode_bytes(&first, &Limits::default())?;
    let hash_ms = time_ms(runs.max(5), || {
        std::hint::black_box(content_hash(&first));
    });
    let dhash_ms = time_ms(runs.max(5), || {
        std::hint::black_box(imaging::dhash::dhash(&decoded.image));
    });
    let decode_ms = time_ms(runs.max(5), || {
        std::hint::black_box(imaging::decode_bytes(&first, &Limits::default()).ok());
    });
    Ok(StoreScanFigures {
        images,
        off: median(off),
        cold: median(cold),
        warm: median(warm),
        hash_ms,
        dhash_ms,
        decode_ms,
    })
}
