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
    /// One folder, or several pooled (each with its own splits).
    pub data: Vec<PathBuf>,
    /// The model's labels; rows with other labels are left out (default: the first folder's).
    pub labels: Option<Vec<String>>,
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
    /// Write `views` augmented views of every train image and the centre view of every val
    /// image to this folder (for a PyTorch twin of this recipe), then stop.
    pub export_views: Option<PathBuf>,
    pub views: usize,
    /// EfficientNet: keep the stem and this many leading blocks as they are (no backward pass
    /// through them; their batch norms still adapt), as `tools/train_twin.py --freeze-blocks`.
    pub freeze_blocks: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: Vec::new(),
            labels: None,
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
            export_views: None,
            views: 8,
            freeze_blocks: 0,
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
    /// Per source of a pool: (name, accuracy, macro AUC over the labels it has).
    #[serde(default)]
    pub val_per_source: Vec<(String, f64, f64)>,
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
    source: usize,
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
    let data = Dataset::pool(&cfg.data, cfg.labels.as_deref(), cfg.seed, cfg.val_fraction)?;
    log(&format!(
        "data: {} ({} classes: {}; splits: {})",
        data.name(),
        data.labels.len(),
        data.labels.join(", "),
        data.split_source
    ));
    for line in &data.left_out {
        log(&format!("left out: {line}"));
    }
    let init = cfg.init.as_deref().map(read_init).transpose()?;
    if cfg.epochs == 0 && init.is_none() && cfg.export_views.is_none() {
        return Err(TrainError::Data(
            "--epochs 0 needs --init: it only calibrates an existing model on val".into(),
        ));
    }
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
    let val_source: Vec<usize> = val_set.iter().map(|s| s.source).collect();

    let k = data.labels.len();
    let sample_weights = sample_weights(&train_set, k, data.sources.len());
    for (i, source) in data.sources.iter().enumerate() {
        let mut counts = vec![0usize; k];
        let mut mass = vec![0f64; k];
        for (s, w) in train_set.iter().zip(&sample_weights) {
            if s.source == i {
                counts[s.label] += 1;
                mass[s.label] += *w as f64;
            }
        }
        let share: Vec<String> = mass
            .iter()
            .map(|m| format!("{:.1} %", 100.0 * m / train_set.len() as f64))
            .collect();
        log(&format!(
            "train images of {} per class ({}): {counts:?}; share of the loss {}",
            source.name,
            data.labels.join("/"),
            share.join("/")
        ));
    }
    if let Some(dir) = &cfg.export_views {
        return export_views(
            dir,
            cfg,
            &data,
            &spec,
            &train_set,
            &sample_weights,
            &val_set,
            &val_planes,
            log,
        );
    }

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
        unusual: None,
        weights: String::new(),
        sha256: "0".repeat(64),
        trained_on: Some(match &init {
            Some((base, _)) => format!(
                "{} train split, starting from {}{}",
                data.name(),
                base.name,
                if cfg.freeze {
                    " (its features frozen, classifier trained)"
                } else {
                    ""
                }
            ),
            None => format!("{} train split", data.name()),
        }),
        metrics: serde_json::Value::Null,
    };
    manifest.validate()?;

    let device = Device::Cpu;
    let varmap = VarMap::new();
    let mut net = build_net(
        &manifest,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    let fixed: Vec<String> = match &mut net {
        Net::EfficientNet(n) => n.freeze_blocks(cfg.freeze_blocks),
        _ if cfg.freeze_blocks > 0 => {
            return Err(TrainError::Data(
                "--freeze-blocks is for EfficientNet models (--init an efficientnet_lite0)".into(),
            ));
        }
        _ => Vec::new(),
    };
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
        let data = varmap.data().lock().expect("varmap lock");
        let mut vars: Vec<(&String, &Var)> = data
            .iter()
            .filter(|(n, _)| !fixed.iter().any(|p| n.starts_with(p.as_str())))
            .collect();
        vars.sort_by_key(|(n, _)| n.as_str());
        vars.into_iter().map(|(_, v)| v.clone()).collect()
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
            let sample_weights = &sample_weights;
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
                    let weights: Vec<f32> = idx.iter().map(|&i| sample_weights[i]).collect();
                    let mask_seed: u64 = r.random();
                    if tx.send((idx, planes, labels, weights, mask_seed)).is_err() {
                        break;
                    }
                }
            });
            for (step_in_epoch, (idx, planes, labels, weights, mask_seed)) in rx.iter().enumerate()
            {
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
                let w = Tensor::from_vec(weights, labels.len(), &device)?;
                let loss = weighted_loss(&logits, &y, &w, cfg.label_smoothing)?;
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
        let per_source = per_source_metrics(&data, &val_probs, &val_truth, &val_source);
        let secs = started.elapsed().as_secs_f64();
        let entry = EpochLog {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss,
            val_accuracy: m.accuracy,
            val_macro_auc: auc,
            val_per_source: per_source.clone(),
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
        if per_source.len() > 1 {
            let parts: Vec<String> = per_source
                .iter()
                .map(|(name, acc, auc)| format!("{name} acc {acc:.3} AUC {auc:.4}"))
                .collect();
            log(&format!("          val per source: {}", parts.join("; ")));
        }
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

    // Finish with the best epoch's weights, calibrated on val (`--epochs 0` with `--init`:
    // the starting weights, e.g. from a PyTorch twin of this recipe, calibrated here).
    if cfg.epochs > 0 {
        let mut vm = varmap.clone();
        vm.load(&best)?;
    }
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
    fit_unusual(
        &path,
        &mut manifest,
        &varmap,
        &train_set,
        &val_planes,
        log,
        batch_done,
    )?;
    let path = crate::model::save(&cfg.dir(), &mut manifest, &varmap)?;
    log(&format!("wrote {}", path.display()));
    Ok(path)
}

/// Fit the unusual-input score on the saved model's features (the inference network, batch
/// norms folded): class means and covariance from the train images' centre views, the
/// threshold at the 95th percentile of val. Adds its tensors to `varmap` and its spec to
/// `manifest`.
fn fit_unusual(
    saved: &Path,
    manifest: &mut Manifest,
    varmap: &VarMap,
    train_set: &[Loaded],
    val_planes: &[Vec<f32>],
    log: &mut dyn FnMut(&str),
    batch_done: &mut dyn FnMut(usize, usize, usize),
) -> Result<(), TrainError> {
    use crate::model::unusual::{
        CENTRES, SHRINKAGE, TYPICAL_SHARE, Unusual, UnusualSpec, WHITEN, quantile,
    };
    let started = Instant::now();
    let model = crate::model::Model::load(saved)?;
    let spec = &model.manifest.input;
    // Train and val go in separate chunks: the progress total counts each split's own.
    let total = train_set.len().div_ceil(FEATURE_CHUNK) + val_planes.len().div_ceil(FEATURE_CHUNK);
    let mut done = 0;
    let mut features_of = |planes: &[Vec<f32>]| -> Result<Tensor, TrainError> {
        let t = model.features(planes)?;
        done += 1;
        batch_done(0, done, total);
        Ok(t)
    };
    let mut parts = Vec::new();
    for chunk in train_set.chunks(FEATURE_CHUNK) {
        let planes: Vec<Vec<f32>> = chunk
            .iter()
            .map(|s| preprocess(&s.image, spec))
            .collect::<Result<_, _>>()?;
        parts.push(features_of(&planes)?);
    }
    let train_features = Tensor::cat(&parts, 0)?;
    let parts = val_planes
        .chunks(FEATURE_CHUNK)
        .map(&mut features_of)
        .collect::<Result<Vec<_>, _>>()?;
    let val_features = Tensor::cat(&parts, 0)?;
    let labels: Vec<usize> = train_set.iter().map(|s| s.label).collect();
    let fit = Unusual::fit(&train_features, &labels, manifest.labels.len())?;
    let threshold = quantile(&fit.distances(&val_features)?, TYPICAL_SHARE);
    {
        let mut data = varmap.data().lock().expect("varmap lock");
        data.insert(WHITEN.into(), Var::from_tensor(&fit.whiten)?);
        data.insert(CENTRES.into(), Var::from_tensor(&fit.centres)?);
    }
    manifest.unusual = Some(UnusualSpec {
        method: "mahalanobis".into(),
        threshold,
        fitted_on: format!(
            "{} train images (centre view; class means, shared covariance shrunk {} % to the identity); threshold: {} % of {} val images typical",
            train_set.len(),
            SHRINKAGE * 100.0,
            (TYPICAL_SHARE * 100.0).round(),
            val_planes.len()
        ),
    });
    log(&format!(
        "unusual-input score: fitted on {} train images, threshold {threshold:.1} (95th percentile of val), {:.0} s",
        train_set.len(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
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
                    source: s.source,
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

/// One augmented training plane, randomising what differs between sources: a random
/// downscale (half the images: the longer side to 192-320 px, as heavily resized archives
/// are), JPEG re-compression (half the 8-bit images, quality 30-90), a random resized crop of
/// the preprocessing's region (any position, 55-100 % of its area, aspect 3:4-4:3: borders and
/// corner markers come and go), rotation +-10 degrees, blur (30 %, sigma 0.4-1.2 px), gamma
/// 0.7-1.4, contrast 0.8-1.2, noise, and up to two erased patches (30 %). Everything after the
/// crop is the inference preprocessing.
pub fn augment(
    img: &GrayImage,
    spec: &InputSpec,
    rng: &mut StdRng,
) -> Result<Vec<f32>, ModelError> {
    let small;
    let img = if rng.random_bool(0.5) && img.width.max(img.height) > 320 {
        let target = rng.random_range(192.0..=320.0) / img.width.max(img.height) as f64;
        let (w, h) = (
            (img.width as f64 * target).round().max(16.0) as u32,
            (img.height as f64 * target).round().max(16.0) as u32,
        );
        small = resize_gray(img, Crop::full(img), w, h);
        &small
    } else {
        img
    };
    let recompressed;
    let img = if img.bit_depth == 8 && rng.random_bool(0.5) {
        recompressed =
            jpeg_roundtrip(img, rng.random_range(30..=90)).unwrap_or_else(|| img.clone());
        &recompressed
    } else {
        img
    };
    let base = match spec.crop {
        CropMode::CenterSquare => Crop::center_square(img),
        CropMode::Stretch => Crop::full(img),
    };
    let area = rng.random_range(0.55..=1.0);
    let aspect: f64 = rng.random_range((0.75f64).ln()..=(4.0f64 / 3.0).ln()).exp();
    let cw = (base.width * (area * aspect).sqrt()).min(img.width as f64);
    let ch = (base.height * (area / aspect).sqrt()).min(img.height as f64);
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
    let size = spec.size;
    let mut plane = rotate(&plane, size, rng.random_range(-10.0f32..=10.0).to_radians());
    if rng.random_bool(0.3) {
        plane = blur(&plane, size, rng.random_range(0.4f32..=1.2));
    }
    let gamma = rng.random_range(0.7f32..=1.4);
    let contrast = rng.random_range(0.8f32..=1.2);
    let noise = rng.random_range(0.0f32..=0.03);
    let mut unit: Vec<f32> = plane
        .into_iter()
        .map(|v| {
            let v =
                ((v.clamp(0.0, 1.0).powf(gamma) - 0.5) * contrast + 0.5) + noise * gaussian(rng);
            v.clamp(0.0, 1.0)
        })
        .collect();
    if rng.random_bool(0.3) {
        for _ in 0..rng.random_range(1..=2) {
            let (w, h) = (
                rng.random_range(size / 20..=size / 6).max(1),
                rng.random_range(size / 20..=size / 6).max(1),
            );
            let (x0, y0) = (
                rng.random_range(0..=size - w),
                rng.random_range(0..=size - h),
            );
            let fill: f32 = rng.random();
            for y in y0..y0 + h {
                unit[y * size + x0..y * size + x0 + w].fill(fill);
            }
        }
    }
    Ok(to_scale(unit, spec))
}

/// Separable Gaussian blur of a square plane (edges clamped).
fn blur(plane: &[f32], size: usize, sigma: f32) -> Vec<f32> {
    let r = (2.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for y in 0..size {
            for x in 0..size {
                let mut acc = 0f32;
                for (j, k) in kernel.iter().enumerate() {
                    let d = j as isize - r;
                    let (sx, sy) = if horizontal {
                        ((x as isize + d).clamp(0, size as isize - 1) as usize, y)
                    } else {
                        (x, (y as isize + d).clamp(0, size as isize - 1) as usize)
                    };
                    acc += src[sy * size + sx] * k;
                }
                out[y * size + x] = acc / total;
            }
        }
        out
    };
    pass(&pass(plane, true), false)
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
    name.starts_with("head.") || name.starts_with("classifier.") || name.starts_with("_fc.")
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
/// Per-sample loss weights that keep every source and label represented: within a pool, each
/// (source, label) cell weighs as the square root of its size (a cell 100x larger counts 10x,
/// not 100x), then labels are rebalanced to equal shares; mean 1 over the samples.
fn sample_weights(set: &[Loaded], labels: usize, sources: usize) -> Vec<f32> {
    let mut cell = vec![0usize; labels * sources];
    set.iter()
        .for_each(|s| cell[s.source * labels + s.label] += 1);
    let raw: Vec<f64> = set
        .iter()
        .map(|s| 1.0 / (cell[s.source * labels + s.label] as f64).sqrt())
        .collect();
    let mut per_label = vec![0f64; labels];
    set.iter()
        .zip(&raw)
        .for_each(|(s, w)| per_label[s.label] += w);
    let present = per_label.iter().filter(|&&m| m > 0.0).count().max(1) as f64;
    let n = set.len() as f64;
    set.iter()
        .zip(&raw)
        .map(|(s, w)| (w * n / (present * per_label[s.label])) as f32)
        .collect()
}

/// Accuracy and macro AUC on each source's val images (AUC over the labels it has).
fn per_source_metrics(
    data: &Dataset,
    probs: &[Vec<f32>],
    truth: &[usize],
    source: &[usize],
) -> Vec<(String, f64, f64)> {
    data.sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let rows: Vec<usize> = (0..truth.len()).filter(|&r| source[r] == i).collect();
            if rows.is_empty() {
                return None;
            }
            let p: Vec<Vec<f32>> = rows.iter().map(|&r| probs[r].clone()).collect();
            let t: Vec<usize> = rows.iter().map(|&r| truth[r]).collect();
            let m = Metrics::compute(&p, &t, &data.labels);
            Some((s.name.clone(), m.accuracy, m.macro_auc.unwrap_or(f64::NAN)))
        })
        .collect()
}

/// Quantise a [0, 1] plane to u16 (the views file format; 1/65535 steps).
fn quantise(unit: &[f32]) -> Vec<u8> {
    unit.iter()
        .flat_map(|v| ((v.clamp(0.0, 1.0) * 65535.0).round() as u16).to_le_bytes())
        .collect()
}

/// `--export-views`: what a PyTorch twin of this recipe trains on, made by this code so both
/// see the same input tensors. `train.u16`: for each train image, `views` augmented planes
/// (seeded as epochs are); `val.u16`: the centre view of each val image; both little-endian
/// u16 of the [0, 1] intensity before `scale`/`mean`/`std`; `index.json`: labels, sources,
/// loss weights, the input spec and the shapes.
#[allow(clippy::too_many_arguments)]
fn export_views(
    dir: &Path,
    cfg: &TrainConfig,
    data: &Dataset,
    spec: &InputSpec,
    train_set: &[Loaded],
    weights: &[f32],
    val_set: &[Loaded],
    val_planes: &[Vec<f32>],
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, TrainError> {
    use std::io::Write;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| TrainError::Io { path, source: e }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let [lo, hi] = spec.scale;
    let unit_spec = InputSpec {
        scale: [0.0, 1.0],
        ..spec.clone()
    };
    let to_unit = |p: &[f32]| -> Vec<f32> { p.iter().map(|v| (v - lo) / (hi - lo)).collect() };
    let train_path = dir.join("train.u16");
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&train_path).map_err(io(&train_path))?);
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (n, chunk) in train_set.chunks(64).enumerate() {
        let planes: Vec<Result<Vec<u8>, ModelError>> = std::thread::scope(|scope| {
            let per = chunk.len().div_ceil(threads);
            let handles: Vec<_> = chunk
                .chunks(per.max(1))
                .enumerate()
                .map(|(j, part)| {
                    let unit_spec = &unit_spec;
                    scope.spawn(move || {
                        part.iter()
                            .enumerate()
                            .map(|(i, s)| {
                                let index = n * 64 + j * per + i;
                                let mut bytes = Vec::new();
                                for v in 0..cfg.views {
                                    let mut r = StdRng::seed_from_u64(
                                        cfg.seed
                                            ^ ((index as u64) << 16 | v as u64)
                                                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
                                    );
                                    bytes.extend(quantise(&augment(&s.image, unit_spec, &mut r)?));
                                }
                                Ok(bytes)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("view thread"))
                .collect()
        });
        for p in planes {
            out.write_all(&p?).map_err(io(&train_path))?;
        }
        log(&format!(
            "views: {} of {} train images ({:.0} s)",
            (n * 64 + chunk.len()).min(train_set.len()),
            train_set.len(),
            started.elapsed().as_secs_f64()
        ));
    }
    out.flush().map_err(io(&train_path))?;
    let val_path = dir.join("val.u16");
    let bytes: Vec<u8> = val_planes
        .iter()
        .flat_map(|p| quantise(&to_unit(p)))
        .collect();
    std::fs::write(&val_path, bytes).map_err(io(&val_path))?;
    let index = serde_json::json!({
        "labels": data.labels,
        "sources": data.sources.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
        "input": spec,
        "views": cfg.views,
        "seed": cfg.seed,
        "train": {
            "label": train_set.iter().map(|s| s.label).collect::<Vec<_>>(),
            "source": train_set.iter().map(|s| s.source).collect::<Vec<_>>(),
            "weight": weights,
        },
        "val": {
            "label": val_set.iter().map(|s| s.label).collect::<Vec<_>>(),
            "source": val_set.iter().map(|s| s.source).collect::<Vec<_>>(),
        },
    });
    let index_path = dir.join("index.json");
    std::fs::write(
        &index_path,
        serde_json::to_string(&index).expect("index serialises"),
    )
    .map_err(io(&index_path))?;
    log(&format!(
        "wrote {} ({} train x {} views, {} val)",
        dir.display(),
        train_set.len(),
        cfg.views,
        val_set.len()
    ));
    Ok(index_path)
}

fn weighted_loss(
    logits: &Tensor,
    y: &Tensor,
    sample_weights: &Tensor,
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
    (per_sample * sample_weights)?.sum_all()? / sample_weights.sum_all()?.to_scalar::<f32>()? as f64
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

    #[test]
    fn sample_weights_give_labels_equal_shares_and_temper_big_cells() {
        let img = GrayImage {
            width: 1,
            height: 1,
            bit_depth: 8,
            pixels: vec![0],
        };
        let mut set = Vec::new();
        // Source 0: 100 of label 0, 4 of label 1; source 1: 25 of label 0.
        for (source, label, n) in [(0, 0, 100), (0, 1, 4), (1, 0, 25)] {
            for _ in 0..n {
                set.push(Loaded {
                    image: img.clone(),
                    label,
                    source,
                });
            }
        }
        let w = sample_weights(&set, 2, 2);
        let mass = |f: &dyn Fn(&Loaded) -> bool| -> f64 {
            set.iter()
                .zip(&w)
                .filter(|(s, _)| f(s))
                .map(|(_, w)| *w as f64)
                .sum()
        };
        let total = set.len() as f64;
        assert!((mass(&|s| s.label == 0) - total / 2.0).abs() < 1e-3);
        assert!((mass(&|s| s.label == 1) - total / 2.0).abs() < 1e-3);
        // Within label 0 the cells weigh as the square roots of their sizes: 10 : 5.
        let ratio =
            mass(&|s| s.label == 0 && s.source == 0) / mass(&|s| s.label == 0 && s.source == 1);
        assert!((ratio - 2.0).abs() < 1e-3, "{ratio}");
    }

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
            unusual: None,
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
