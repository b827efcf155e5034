//! Training: `cxrnet` or DenseNet-121 from scratch, or from an existing model (`--init`, with
//! `--freeze` only its classifier); augmentation, weighted loss, validation, checkpoints,
//! temperature calibration and the operating point, all seeded.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, ModuleT, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Split};
use crate::imaging::{self, Crop, GrayImage, resize_gray};
use crate::metrics::{Metrics, at_threshold};
use crate::model::Net;
use crate::model::cxrnet::CxrNetConfig;
use crate::model::{
    CropMode, InputSpec, Intensity, Manifest, ModelError, Output, build_net, input_tensor,
    preprocess, preprocess_region, to_scale,
};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("training computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Data(String),
}

/// Network families `train` can fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The project's compact residual CNN (minutes per epoch on 2 cores).
    Cxrnet,
    /// DenseNet-121, the original project's network (about 100x the compute of cxrnet).
    Densenet121,
}

/// Everything that defines a training run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: PathBuf,
    /// Output prefix: `models/cxrnet-v1` writes `models/cxrnet-v1.{json,safetensors}` and
    /// checkpoints in `models/cxrnet-v1.train/`.
    pub out: PathBuf,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
    pub size: usize,
    /// Network family: `cxrnet` (the default model's) or `densenet121`.
    pub arch: Arch,
    /// Layer widths (cxrnet only).
    pub widths: Vec<usize>,
    pub dropout: f32,
    pub label_smoothing: f32,
    /// Without splits.csv: fraction of each class held out for validation.
    pub val_fraction: f64,
    /// Target sensitivity on `val` for the first label's operating point (`covid` in cxr3).
    pub target_sensitivity: f64,
    /// Use at most this many training images (smoke tests).
    pub limit: Option<usize>,
    /// Start from this model (manifest path): its network, configuration, preprocessing and
    /// weights; the classifier is new unless the labels are the same. `arch`, `widths` and
    /// `size` are then ignored.
    pub init: Option<PathBuf>,
    /// With `init`: train only the classifier on the model's features (batch norm statistics
    /// and every other weight stay as they are).
    pub freeze: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            out: PathBuf::new(),
            epochs: 45,
            batch: 32,
            lr: 2e-3,
            weight_decay: 1e-4,
            seed: 7,
            size: 128,
            arch: Arch::Cxrnet,
            widths: CxrNetConfig::default().widths,
            dropout: 0.3,
            label_smoothing: 0.05,
            val_fraction: 0.15,
            target_sensitivity: 0.95,
            limit: None,
            init: None,
            freeze: false,
        }
    }
}

/// Written after every epoch; `--resume` continues from it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    epochs_done: usize,
    best_epoch: usize,
    best_score: f64,
    history: Vec<EpochLog>,
    seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_auc: f64,
    pub seconds: f64,
}

impl TrainConfig {
    fn name(&self) -> String {
        self.out
            .file_name()
            .map_or("model".into(), |n| n.to_string_lossy().into_owned())
    }

    fn dir(&self) -> PathBuf {
        self.out
            .parent()
            .map_or(PathBuf::from("."), Path::to_path_buf)
    }

    fn checkpoint_dir(&self) -> PathBuf {
        self.dir().join(format!("{}.train", self.name()))
    }

    fn input_spec(&self) -> InputSpec {
        // Equalised intensities are uniform on [0, 1]: mean 0.5, std 1/sqrt(12).
        InputSpec {
            channels: 1,
            size: self.size,
            crop: CropMode::CenterSquare,
            intensity: Intensity::Equalize,
            scale: [0.0, 1.0],
            mean: vec![0.5],
            std: vec![0.2887],
        }
    }
}

struct Loaded {
    image: GrayImage,
    label: usize,
}

/// What a training run reports as it goes.
#[derive(Clone, Debug)]
pub enum TrainEvent {
    /// One line for the log (data, epochs, checkpoints, the final calibration).
    Log(String),
    /// `done` of `total` batches of the current epoch (1-based `epoch`); epoch 0 is the
    /// one-off feature pass of `--freeze` (batches of [`FEATURE_CHUNK`] images).
    Batch {
        epoch: usize,
        done: usize,
        total: usize,
    },
}

/// Train, calibrate, and write the model; `observer` gets every [`TrainEvent`].
pub fn train(
    cfg: &TrainConfig,
    resume: bool,
    observer: &mut dyn FnMut(TrainEvent),
) -> Result<PathBuf, TrainError> {
    let observer = std::cell::RefCell::new(observer);
    train_inner(
        cfg,
        resume,
        &mut |line: &str| (observer.borrow_mut())(TrainEvent::Log(line.to_string())),
        &mut |epoch, done, total| (observer.borrow_mut())(TrainEvent::Batch { epoch, done, total }),
    )
}

fn train_inner(
    cfg: &TrainConfig,
    resume: bool,
    log: &mut dyn FnMut(&str),
    batch_done: &mut dyn FnMut(usize, usize, usize),
) -> Result<PathBuf, TrainError> {
    let data = Dataset::open(&cfg.data, cfg.seed, cfg.val_fraction)?;
    log(&format!(
        "data: {} ({} classes: {}; splits: {})",
        cfg.data.display(),
        data.labels.len(),
        data.labels.join(", "),
        data.split_source
    ));
    let init = cfg.init.as_deref().map(read_init).transpose()?;
    if cfg.freeze && init.is_none() {
        return Err(TrainError::Data(
            "--freeze needs --init: there are no features to keep".into(),
        ));
    }
    let spec = init
        .as_ref()
        .map_or_else(|| cfg.input_spec(), |(m, _)| m.input.clone());
    let mut train_set = load_split(&data, Split::Train, spec.size, log)?;
    if let Some(limit) = cfg.limit {
        train_set.truncate(limit);
    }
    let val_set = load_split(&data, Split::Val, 0, log)?;
    if train_set.is_empty() || val_set.is_empty() {
        return Err(TrainError::Data(
            "need images in both the train and val splits".into(),
        ));
    }
    let val_planes: Vec<Vec<f32>> = val_set
        .iter()
        .map(|s| preprocess(&s.image, &spec))
        .collect::<Result<_, _>>()?;
    let val_truth: Vec<usize> = val_set.iter().map(|s| s.label).collect();

    let k = data.labels.len();
    let mut counts = vec![0usize; k];
    train_set.iter().for_each(|s| counts[s.label] += 1);
    // Inverse-frequency class weights, normalised to mean 1 over the samples.
    let n = train_set.len() as f64;
    let class_weights: Vec<f32> = counts
        .iter()
        .map(|&c| {
            if c == 0 {
                0.0
            } else {
                (n / (k as f64 * c as f64)) as f32
            }
        })
        .collect();
    log(&format!(
        "train images per class: {counts:?}; loss weights {class_weights:?}"
    ));

    let (architecture, cxrnet, densenet) = match &init {
        Some((base, _)) => (
            base.architecture.clone(),
            base.cxrnet.clone(),
            base.densenet.clone(),
        ),
        None => (
            match cfg.arch {
                Arch::Cxrnet => "cxrnet",
                Arch::Densenet121 => "densenet121",
            }
            .to_string(),
            (cfg.arch == Arch::Cxrnet).then(|| CxrNetConfig {
                widths: cfg.widths.clone(),
            }),
            None,
        ),
    };
    let mut manifest = Manifest {
        name: cfg.name(),
        architecture,
        cxrnet,
        densenet,
        label_names: Default::default(),
        labels: data.labels.clone(),
        output: Output::Softmax,
        input: spec.clone(),
        temperature: 1.0,
        operating_points: Default::default(),
        weights: String::new(),
        sha256: "0".repeat(64),
        trained_on: Some(match &init {
            Some((base, _)) => format!(
                "{} train split, starting from {}{}",
                cfg.data.display(),
                base.name,
                if cfg.freeze {
                    " (its features frozen, classifier trained)"
                } else {
                    ""
                }
            ),
            None => format!("{} train split", cfg.data.display()),
        }),
        metrics: serde_json::Value::Null,
    };
    manifest.validate()?;

    let device = Device::Cpu;
    let varmap = VarMap::new();
    let net = build_net(
        &manifest,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    seeded_init(&varmap, cfg.seed)?;
    if let Some((base, weights)) = &init {
        let keep_head = base.labels == data.labels;
        let (copied, fresh) = init_from(&varmap, weights, keep_head, &device)?;
        log(&format!(
            "starting from {} ({}): {copied} tensors copied; new: {}",
            base.name,
            cfg.init.as_deref().unwrap_or(Path::new("")).display(),
            if fresh.is_empty() {
                "none (same labels)".to_string()
            } else {
                fresh.join(", ")
            }
        ));
    }
    let ckpt_dir = cfg.checkpoint_dir();
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| TrainError::Io {
        path: ckpt_dir.clone(),
        source: e,
    })?;
    let ckpt = ckpt_dir.join("checkpoint.safetensors");
    let best = ckpt_dir.join("best.safetensors");
    let state_path = ckpt_dir.join("state.json");
    let mut state = State::default();
    if resume && state_path.exists() {
        let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::Io {
            path: state_path.clone(),
            source: e,
        })?;
        state = serde_json::from_str(&text)
            .map_err(|e| TrainError::Data(format!("{}: {e}", state_path.display())))?;
        let mut vm = varmap.clone();
        vm.load(&ckpt)?;
        log(&format!(
            "resumed after epoch {} (best so far: epoch {}, score {:.4})",
            state.epochs_done, state.best_epoch, state.best_score
        ));
    }

    let trainable = if cfg.freeze {
        let data = varmap.data().lock().expect("varmap lock");
        let mut head: Vec<(&String, &Var)> = data.iter().filter(|(n, _)| is_head(n)).collect();
        head.sort_by_key(|(n, _)| n.as_str());
        head.into_iter().map(|(_, v)| v.clone()).collect()
    } else {
        varmap.all_vars()
    };
    let mut opt = AdamW::new(
        trainable,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let steps_per_epoch = train_set.len().div_ceil(cfg.batch);
    let total_steps = (steps_per_epoch * cfg.epochs).max(1);
    let weights_t = Tensor::from_vec(class_weights.clone(), k, &device)?;

    // Frozen features do not change: compute them once (train images from the centre view,
    // without augmentation), and every epoch is only the classifier's work. With augmentation
    // each epoch would cost a forward pass per image (about 0.5 s for DenseNet-121 at 224 px
    // on 2 cores).
    let frozen = if cfg.freeze {
        log(&format!(
            "frozen features: computing them once for {} train (centre view, no augmentation) and {} val images",
            train_set.len(),
            val_planes.len()
        ));
        let train_planes: Vec<Vec<f32>> = train_set
            .iter()
            .map(|s| preprocess(&s.image, &spec))
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        let total =
            train_planes.len().div_ceil(FEATURE_CHUNK) + val_planes.len().div_ceil(FEATURE_CHUNK);
        let mut done = 0;
        let mut features_of = |planes: &[Vec<f32>]| -> candle_core::Result<Tensor> {
            let parts = planes
                .chunks(FEATURE_CHUNK)
                .map(|chunk| {
                    let t = in_chunks(&net, chunk, &spec, &device, Pass::Features)?;
                    done += 1;
                    batch_done(0, done, total);
                    Ok(t)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::cat(&parts, 0)
        };
        let features = (features_of(&train_planes)?, features_of(&val_planes)?);
        log(&format!(
            "frozen features: done in {:.0} s",
            started.elapsed().as_secs_f64()
        ));
        Some(features)
    } else {
        None
    };
    let val_logits_now = || -> candle_core::Result<Tensor> {
        match &frozen {
            Some((_, val)) => net.head(val).map(|t| t.detach()),
            None => in_chunks(&net, &val_planes, &spec, &device, Pass::Logits),
        }
    };

    for epoch in state.epochs_done..cfg.epochs {
        let started = Instant::now();
        let mut rng = StdRng::seed_from_u64(
            cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        let batches: Vec<Vec<usize>> = order.chunks(cfg.batch).map(<[usize]>::to_vec).collect();
        let seeds: Vec<u64> = batches.iter().map(|_| rng.random()).collect();
        std::thread::scope(|scope| -> Result<(), TrainError> {
            let (tx, rx) = crossbeam_channel::bounded(2);
            let (train_set, spec) = (&train_set, &spec);
            let batches_ref = &batches;
            let seeds_ref = &seeds;
            let augmenting = frozen.is_none();
            scope.spawn(move || {
                for (idx, seed) in batches_ref.iter().zip(seeds_ref) {
                    let mut r = StdRng::seed_from_u64(*seed);
                    let planes: Result<Vec<Vec<f32>>, ModelError> = if augmenting {
                        idx.iter()
                            .map(|&i| augment(&train_set[i].image, spec, &mut r))
                            .collect()
                    } else {
                        Ok(Vec::new())
                    };
                    let labels: Vec<u32> = idx.iter().map(|&i| train_set[i].label as u32).collect();
                    let mask_seed: u64 = r.random();
                    if tx.send((idx, planes, labels, mask_seed)).is_err() {
                        break;
                    }
                }
            });
            for (step_in_epoch, (idx, planes, labels, mask_seed)) in rx.iter().enumerate() {
                let planes = planes?;
                let step = epoch * steps_per_epoch + step_in_epoch;
                lr = cosine_lr(cfg.lr, step, total_steps, steps_per_epoch);
                opt.set_learning_rate(lr);
                let y = Tensor::from_vec(labels.clone(), labels.len(), &device)?;
                let feats = match &frozen {
                    Some((train, _)) => {
                        let rows: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                        train.index_select(&Tensor::from_vec(rows, idx.len(), &device)?, 0)?
                    }
                    None => net.features_t(&input_tensor(&planes, spec, &device)?, true)?,
                };
                let feats = seeded_dropout(&feats, cfg.dropout, mask_seed)?;
                let logits = net.head(&feats)?;
                let loss = weighted_loss(&logits, &y, &weights_t, cfg.label_smoothing)?;
                opt.backward_step(&loss)?;
                loss_sum += loss.to_scalar::<f32>()? as f64 * labels.len() as f64;
                let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
                correct += pred.iter().zip(&labels).filter(|(p, t)| p == t).count();
                seen += labels.len();
                batch_done(epoch + 1, step_in_epoch + 1, steps_per_epoch);
            }
            Ok(())
        })?;

        let val_logits = val_logits_now()?;
        let val_probs = candle_nn::ops::softmax_last_dim(&val_logits)?.to_vec2::<f32>()?;
        let val_loss = nll(&val_logits, &val_truth, 1.0)?;
        let m = Metrics::compute(&val_probs, &val_truth, &data.labels);
        let auc = m.macro_auc.unwrap_or(f64::NAN);
        let secs = started.elapsed().as_secs_f64();
        let entry = EpochLog {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_accuracy: m.accuracy,
            val_macro_auc: auc,
            seconds: secs,
        };
        log(&format!(
            "epoch {:>3}/{}  lr {:.2e}  train loss {:.4} acc {:.3}  val loss {:.4} acc {:.3} macro AUC {:.4}  {:.0} s ({:.1} img/s)",
            entry.epoch,
            cfg.epochs,
            lr,
            entry.train_loss,
            entry.train_accuracy,
            val_loss,
            m.accuracy,
            auc,
            secs,
            seen as f64 / secs
        ));
        // Model selection on val: macro AUC, with accuracy as a small tie-breaker.
        let score = auc + 0.1 * m.accuracy;
        if score > state.best_score || state.history.is_empty() {
            state.best_score = score;
            state.best_epoch = epoch + 1;
            varmap.save(&best)?;
        }
        state.epochs_done = epoch + 1;
        state.seconds += secs;
        state.history.push(entry);
        varmap.save(&ckpt)?;
        let text = serde_json::to_string_pretty(&state).expect("state serialises");
        std::fs::write(&state_path, text).map_err(|e| TrainError::Io {
            path: state_path.clone(),
            source: e,
        })?;
    }

    // Finish with the best epoch's weights, calibrated on val.
    let mut vm = varmap.clone();
    vm.load(&best)?;
    let val_logits = val_logits_now()?;
    let temperature = calibrate_temperature(&val_logits, &val_truth)?;
    manifest.temperature = temperature;
    let val_probs =
        candle_nn::ops::softmax_last_dim(&(val_logits / temperature as f64)?)?.to_vec2::<f32>()?;
    let flag_class = data.labels.iter().position(|l| l == "covid").unwrap_or(0);
    let threshold = operating_point(&val_probs, &val_truth, flag_class, cfg.target_sensitivity);
    let (sens, spec_) = at_threshold(&val_probs, &val_truth, flag_class, threshold);
    manifest
        .operating_points
        .insert(data.labels[flag_class].clone(), threshold);
    log(&format!(
        "best epoch {} of {}; temperature {temperature:.3}; operating point {} >= {threshold:.3} (val sensitivity {sens:.3}, specificity {spec_:.3}); {:.0} s in all",
        state.best_epoch, cfg.epochs, data.labels[flag_class], state.seconds
    ));
    let path = crate::model::save(&cfg.dir(), &mut manifest, &varmap)?;
    log(&format!("wrote {}", path.display()));
    Ok(path)
}

fn load_split(
    data: &Dataset,
    split: Split,
    shrink_to: usize,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<Loaded>, TrainError> {
    let samples = data.split(split);
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        match imaging::load(&s.path) {
            Ok(d) => {
                let image = if shrink_to > 0 {
                    shrink(&d.image, shrink_to)
                } else {
                    d.image
                };
                out.push(Loaded {
                    image,
                    label: s.label,
                });
            }
            Err(e) => log(&format!("skipping {}: {e}", s.path.display())),
        }
    }
    log(&format!("{split:?}: {} images loaded", out.len()));
    Ok(out)
}

/// Keep training images small in memory: shorter side at most 1.4x the input size.
fn shrink(img: &GrayImage, size: usize) -> GrayImage {
    let short = img.width.min(img.height) as f64;
    let target = size as f64 * 1.4;
    if short <= target {
        return img.clone();
    }
    let s = target / short;
    let (w, h) = (
        (img.width as f64 * s).round() as u32,
        (img.height as f64 * s).round() as u32,
    );
    resize_gray(img, Crop::full(img), w.max(1), h.max(1))
}

/// One augmented training plane: random resized crop (any position, 55-100 % of the square's
/// area, aspect 3:4-4:3), JPEG re-compression, small rotation, gamma/contrast jitter, noise.
/// Everything after the crop is the inference preprocessing.
pub fn augment(
    img: &GrayImage,
    spec: &InputSpec,
    rng: &mut StdRng,
) -> Result<Vec<f32>, ModelError> {
    let recompressed;
    let img = if img.bit_depth == 8 && rng.random_bool(0.3) {
        recompressed =
            jpeg_roundtrip(img, rng.random_range(30..=90)).unwrap_or_else(|| img.clone());
        &recompressed
    } else {
        img
    };
    let side = img.width.min(img.height) as f64;
    let area = rng.random_range(0.55..=1.0);
    let aspect: f64 = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp();
    let cw = (side * (area * aspect).sqrt()).min(img.width as f64);
    let ch = (side * (area / aspect).sqrt()).min(img.height as f64);
    let crop = Crop {
        left: rng.random_range(0.0..=(img.width as f64 - cw)),
        top: rng.random_range(0.0..=(img.height as f64 - ch)),
        width: cw,
        height: ch,
    };
    let plane = preprocess_region(
        img,
        crop,
        &InputSpec {
            scale: [0.0, 1.0],
            ..spec.clone()
        },
    )?;
    let plane = rotate(
        &plane,
        spec.size,
        rng.random_range(-10.0f32..=10.0).to_radians(),
    );
    let gamma = rng.random_range(0.7f32..=1.4);
    let contrast = rng.random_range(0.8f32..=1.2);
    let noise = rng.random_range(0.0f32..=0.03);
    let unit = plane
        .into_iter()
        .map(|v| {
            let v =
                ((v.clamp(0.0, 1.0).powf(gamma) - 0.5) * contrast + 0.5) + noise * gaussian(rng);
            v.clamp(0.0, 1.0)
        })
        .collect();
    Ok(to_scale(unit, spec))
}

fn gaussian(rng: &mut StdRng) -> f32 {
    // Box-Muller.
    let u1: f32 = rng.random_range(f32::EPSILON..1.0);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn jpeg_roundtrip(img: &GrayImage, quality: u8) -> Option<GrayImage> {
    let bytes: Vec<u8> = img.pixels.iter().map(|&v| v.min(255) as u8).collect();
    let buf = image::GrayImage::from_raw(img.width, img.height, bytes)?;
    let mut out = Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&buf)
        .ok()?;
    imaging::decode_bytes(out.get_ref(), &imaging::Limits::default())
        .ok()
        .map(|d| d.image)
}

/// Rotate a square plane about its centre (bilinear, edges clamped).
fn rotate(plane: &[f32], size: usize, angle: f32) -> Vec<f32> {
    let (s, c) = angle.sin_cos();
    let mid = (size as f32 - 1.0) / 2.0;
    let at = |x: isize, y: isize| {
        let x = x.clamp(0, size as isize - 1) as usize;
        let y = y.clamp(0, size as isize - 1) as usize;
        plane[y * size + x]
    };
    let mut out = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let (dx, dy) = (x as f32 - mid, y as f32 - mid);
            let (sx, sy) = (c * dx + s * dy + mid, -s * dx + c * dy + mid);
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as isize, y0 as isize);
            let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx;
            let bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

fn cosine_lr(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let t = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    base * (0.02 + 0.98 * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()))
}

/// Replace every trainable weight with seeded values (candle's CPU RNG cannot be seeded):
/// Kaiming-normal for conv and linear weights, zero biases, batch-norm as initialised.
fn seeded_init(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    for name in names {
        let var: &Var = &data[name];
        let dims = var.dims().to_vec();
        // Every convolution (4-D weight) and the classifier: without this DenseNet's layers
        // took candle's unseeded default initialisation and two runs with one seed differed.
        if (name.ends_with(".weight") && dims.len() == 4)
            || (is_head(name) && name.ends_with(".weight"))
        {
            let fan_in: usize = dims[1..].iter().product();
            let std = (2.0 / fan_in as f32).sqrt();
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| gaussian(&mut rng) * std)
                .collect();
            var.set(&Tensor::from_vec(values, dims, var.device())?)?;
        } else if is_head(name) && name.ends_with(".bias") {
            var.set(&var.zeros_like()?)?;
        }
    }
    Ok(())
}

/// The classifier's tensors: `head.*` (cxrnet) or `classifier.*` (DenseNet).
fn is_head(name: &str) -> bool {
    name.starts_with("head.") || name.starts_with("classifier.")
}

/// The manifest and weights `--init` names, checked the way every model load is (hash,
/// finite values, a network that builds).
fn read_init(path: &Path) -> Result<(Manifest, Vec<u8>), TrainError> {
    let (manifest, weights) = crate::model::read_parts(path)?;
    crate::model::Model::from_parts(manifest.clone(), &weights)?;
    Ok((manifest, weights))
}

/// Copy the starting model's tensors into `varmap` by name (the classifier too when
/// `keep_head`). Returns how many were copied and the names left as initialised.
fn init_from(
    varmap: &VarMap,
    weights: &[u8],
    keep_head: bool,
    device: &Device,
) -> Result<(usize, Vec<String>), TrainError> {
    let tensors = candle_core::safetensors::load_buffer(weights, device)?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let (mut copied, mut fresh) = (0, Vec::new());
    for name in names {
        let var = &data[name];
        match tensors.get(name.as_str()) {
            Some(t) if t.dims() == var.dims() && (keep_head || !is_head(name)) => {
                var.set(&t.to_dtype(DType::F32)?)?;
                copied += 1;
            }
            Some(t) if !is_head(name) => {
                return Err(TrainError::Data(format!(
                    "--init: tensor `{name}` has shape {:?}, the network needs {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            _ => fresh.push(name.clone()),
        }
    }
    Ok((copied, fresh))
}

fn seeded_dropout(x: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let keep: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.random::<f32>() < p {
                0.0
            } else {
                1.0 / (1.0 - p)
            }
        })
        .collect();
    x.mul(&Tensor::from_vec(keep, x.dims(), x.device())?)
}

/// Class-weighted cross-entropy with label smoothing, averaged by weight.
fn weighted_loss(
    logits: &Tensor,
    y: &Tensor,
    class_weights: &Tensor,
    smoothing: f32,
) -> candle_core::Result<Tensor> {
    let k = logits.dim(1)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let onehot = candle_nn::encoding::one_hot(
        y.clone(),
        k,
        1.0f32 - smoothing,
        smoothing / (k as f32 - 1.0),
    )?;
    let per_sample = (onehot * logp)?.sum(1)?.neg()?;
    let w = class_weights.index_select(y, 0)?;
    (per_sample * &w)?.sum_all()? / w.sum_all()?.to_scalar::<f32>()? as f64
}

/// Images per progress step of the `--freeze` feature pass.
pub const FEATURE_CHUNK: usize = 32;

/// What [`in_chunks`] computes.
#[derive(Clone, Copy)]
enum Pass {
    /// Pooled features before the classifier.
    Features,
    /// Logits.
    Logits,
}

/// The network in inference mode over `planes`, in chunks, detached from any graph.
fn in_chunks(
    net: &Net,
    planes: &[Vec<f32>],
    spec: &InputSpec,
    device: &Device,
    pass: Pass,
) -> candle_core::Result<Tensor> {
    // Detached: the logits of a trainable network would keep every chunk's whole graph (all
    // activations) alive until the last chunk is done; DenseNet-121 at 224 px ran out of
    // 24 GiB that way on the 121 validation images. Chunks of 8: one chunk's graph still
    // lives while it runs (12.4 GB peak with chunks of 32 for DenseNet-121 at 224 px).
    let parts = planes
        .chunks(8)
        .map(|chunk| {
            let x = input_tensor(chunk, spec, device)?;
            match pass {
                Pass::Features => net.features_t(&x, false),
                Pass::Logits => net.forward_t(&x, false),
            }
            .map(|t| t.detach())
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// Mean negative log-likelihood of the truth at temperature `t`.
fn nll(logits: &Tensor, truth: &[usize], t: f32) -> candle_core::Result<f64> {
    let logp = candle_nn::ops::log_softmax(&(logits / t as f64)?, D::Minus1)?.to_vec2::<f32>()?;
    Ok(-logp
        .iter()
        .zip(truth)
        .map(|(row, &c)| row[c] as f64)
        .sum::<f64>()
        / truth.len().max(1) as f64)
}

/// The temperature in [0.25, 5] that minimises validation NLL (grid search, then refine).
fn calibrate_temperature(logits: &Tensor, truth: &[usize]) -> candle_core::Result<f32> {
    let mut best = (f64::INFINITY, 1.0f32);
    for i in 0..=100 {
        let t = 0.25 * (20.0f32).powf(i as f32 / 100.0);
        let v = nll(logits, truth, t)?;
        if v < best.0 {
            best = (v, t);
        }
    }
    Ok(best.1)
}

/// The highest threshold on `class`'s probability that keeps sensitivity on these images at
/// or above `target`, rounded down to 0.01 (so the images that set it stay flagged).
pub fn operating_point(probs: &[Vec<f32>], truth: &[usize], class: usize, target: f64) -> f32 {
    let mut pos: Vec<f32> = probs
        .iter()
        .zip(truth)
        .filter(|(_, t)| **t == class)
        .map(|(p, _)| p[class])
        .collect();
    if pos.is_empty() {
        return 0.5;
    }
    pos.sort_by(|a, b| b.total_cmp(a));
    let needed = ((target * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
    ((pos[needed - 1] * 100.0).floor() / 100.0).clamp(0.01, 0.99)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validation logits must not keep the network's graph alive (see `in_chunks`).
    #[test]
    fn validation_logits_are_detached_from_the_graph() -> candle_core::Result<()> {
        let cfg = TrainConfig {
            size: 32,
            widths: vec![4, 8],
            ..TrainConfig::default()
        };
        let spec = cfg.input_spec();
        let manifest = Manifest {
            name: "t".into(),
            architecture: "cxrnet".into(),
            cxrnet: Some(CxrNetConfig { widths: vec![4, 8] }),
            densenet: None,
            labels: vec!["a".into(), "b".into()],
            label_names: Default::default(),
            output: Output::Softmax,
            input: spec.clone(),
            temperature: 1.0,
            operating_points: Default::default(),
            weights: String::new(),
            sha256: "0".repeat(64),
            trained_on: None,
            metrics: serde_json::Value::Null,
        };
        let varmap = VarMap::new();
        let net = build_net(
            &manifest,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )?;
        let planes = vec![vec![0.5f32; 32 * 32]; 3];
        let direct = net.forward_t(&input_tensor(&planes, &spec, &Device::Cpu)?, false)?;
        assert!(
            direct.track_op(),
            "a trainable network's output tracks its graph"
        );
        let logits = in_chunks(&net, &planes, &spec, &Device::Cpu, Pass::Logits)?;
        assert!(!logits.track_op());
        assert_eq!(logits.dims(), [3, 2]);
        Ok(())
    }
}
