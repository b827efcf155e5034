//! Training: `cxrnet` or DenseNet-121 from scratch, or from an existing model (`--init`, with
//! `--freeze` only its classifier); augmentation, weighted loss, validation, checkpoints,
//! temperature calibration and the operating point, all seeded.

mod augment;
mod data;
mod finish;
mod step;
mod views;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, DType, Device, ModuleT, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::catalog::dataset::{Dataset, Split};
use crate::evaluation::metrics::{Metrics, at_threshold};
use crate::imaging::{self, Crop, GrayImage, resize_gray};
use crate::model::Net;
use crate::model::cxrnet::CxrNetConfig;
use crate::model::{
    CropMode, InputSpec, Intensity, Manifest, ModelError, Output, build_net, input_tensor,
    preprocess, preprocess_region, to_scale,
};

pub use augment::augment;
use data::{Loaded, load_split, per_source_metrics, sample_weights};
pub use finish::operating_point;
use finish::{finish, nll};
use step::{
    Pass, cosine_lr, in_chunks, init_from, is_head, read_init, seeded_dropout, seeded_init,
    weighted_loss,
};
use views::export_views;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Dataset(#[from] crate::catalog::dataset::DatasetError),
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    let p = prepare(cfg, log)?;
    if let Some(dir) = &cfg.export_views {
        return export_views(dir, cfg, &p, log);
    }
    let mut manifest = new_manifest(cfg, &p)?;
    let (varmap, net) = build_network(cfg, &manifest, &p, log)?;
    let checkpoints = Checkpoints::open(cfg)?;
    let mut state = if resume {
        checkpoints.resume(&varmap, log)?
    } else {
        State::default()
    };
    let mut opt = optimizer(cfg, &varmap, &net)?;
    let frozen = if cfg.freeze {
        // Under --freeze the backbone never trains: its features come from a copy of the
        // network over the same variables, folded once for the inference kernels.
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let mut fast = build_net(&manifest, vb)?;
        fast.prepare_inference()?;
        Some(frozen_features(&fast, &p, log, batch_done)?)
    } else {
        None
    };
    let run = Run {
        cfg,
        p: &p,
        net: &net.net,
        frozen: frozen.as_ref(),
    };
    for epoch in state.epochs_done..cfg.epochs {
        let (entry, seen) = run.epoch(epoch, &mut opt, batch_done)?;
        let score = run.log_epoch(&entry, seen, log);
        // Model selection on val: macro AUC, with accuracy as a small tie-breaker.
        if score > state.best_score || state.history.is_empty() {
            state.best_score = score;
            state.best_epoch = epoch + 1;
            varmap.save(&checkpoints.best)?;
        }
        state.epochs_done = epoch + 1;
        state.seconds += entry.seconds;
        state.history.push(entry);
        checkpoints.save(&varmap, &state)?;
    }
    // Finish with the best epoch's weights, calibrated on val (`--epochs 0` with `--init`:
    // the starting weights, e.g. from a PyTorch twin of this recipe, calibrated here).
    if cfg.epochs > 0 {
        let mut vm = varmap.clone();
        vm.load(&checkpoints.best)?;
    }
    finish(&run, &state, &mut manifest, &varmap, log, batch_done)
}

/// The data of a run: the pooled data set, the starting model, the train images and the val
/// planes, ready for the epochs.
struct Prepared {
    data: Dataset,
    init: Option<(Manifest, Vec<u8>)>,
    spec: InputSpec,
    train_set: Vec<Loaded>,
    sample_weights: Vec<f32>,
    val_set: Vec<Loaded>,
    val_planes: Vec<Vec<f32>>,
    val_truth: Vec<usize>,
    val_source: Vec<usize>,
}

/// Stage 1, data: the pool, the starting model, both splits loaded, the loss weights logged.
fn prepare(cfg: &TrainConfig, log: &mut dyn FnMut(&str)) -> Result<Prepared, TrainError> {
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
    let sample_weights = sample_weights(&train_set, data.labels.len(), data.sources.len());
    log_shares(&data, &train_set, &sample_weights, log);
    Ok(Prepared {
        val_truth: val_set.iter().map(|s| s.label).collect(),
        val_source: val_set.iter().map(|s| s.source).collect(),
        data,
        init,
        spec,
        train_set,
        sample_weights,
        val_set,
        val_planes,
    })
}

/// Train images per (source, label) and each label's share of the loss.
fn log_shares(data: &Dataset, train_set: &[Loaded], weights: &[f32], log: &mut dyn FnMut(&str)) {
    let k = data.labels.len();
    for (i, source) in data.sources.iter().enumerate() {
        let mut counts = vec![0usize; k];
        let mut mass = vec![0f64; k];
        for (s, w) in train_set.iter().zip(weights) {
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
}

/// Stage 2, manifest: the network (from `--init` or `--arch`), labels, preprocessing.
fn new_manifest(cfg: &TrainConfig, p: &Prepared) -> Result<Manifest, TrainError> {
    let (architecture, cxrnet, densenet) = match &p.init {
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
    let data = &p.data;
    let manifest = Manifest {
        name: cfg.name(),
        architecture,
        cxrnet,
        densenet,
        label_names: Default::default(),
        labels: data.labels.clone(),
        output: Output::Softmax,
        input: p.spec.clone(),
        temperature: 1.0,
        operating_points: Default::default(),
        unusual: None,
        weights: String::new(),
        sha256: "0".repeat(64),
        trained_on: Some(match &p.init {
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
    Ok(manifest)
}

/// The network being trained, with the parameter prefixes that stay fixed.
struct Network {
    net: Net,
    fixed: Vec<String>,
}

/// Stage 3, network: built, seeded, frozen where asked, then the `--init` weights copied in.
fn build_network(
    cfg: &TrainConfig,
    manifest: &Manifest,
    p: &Prepared,
    log: &mut dyn FnMut(&str),
) -> Result<(VarMap, Network), TrainError> {
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let mut net = build_net(
        manifest,
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
    if let Some((base, weights)) = &p.init {
        let keep_head = base.labels == p.data.labels;
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
    Ok((varmap, Network { net, fixed }))
}

/// AdamW over what trains: the classifier alone with `--freeze`, else all but the fixed blocks.
fn optimizer(cfg: &TrainConfig, varmap: &VarMap, net: &Network) -> Result<AdamW, TrainError> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut vars: Vec<(&String, &Var)> = data
        .iter()
        .filter(|(n, _)| {
            if cfg.freeze {
                is_head(n)
            } else {
                !net.fixed.iter().any(|p| n.starts_with(p.as_str()))
            }
        })
        .collect();
    vars.sort_by_key(|(n, _)| n.as_str());
    let trainable = vars.into_iter().map(|(_, v)| v.clone()).collect();
    Ok(AdamW::new(
        trainable,
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?)
}

/// Where a run keeps its checkpoints: OUT.train/{checkpoint,best}.safetensors and state.json.
struct Checkpoints {
    last: PathBuf,
    best: PathBuf,
    state: PathBuf,
}

impl Checkpoints {
    fn open(cfg: &TrainConfig) -> Result<Self, TrainError> {
        let dir = cfg.checkpoint_dir();
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::Io {
            path: dir.clone(),
            source: e,
        })?;
        Ok(Self {
            last: dir.join("checkpoint.safetensors"),
            best: dir.join("best.safetensors"),
            state: dir.join("state.json"),
        })
    }

    /// The state of an earlier run, its last weights loaded into `varmap` (a fresh state when
    /// there is none).
    fn resume(&self, varmap: &VarMap, log: &mut dyn FnMut(&str)) -> Result<State, TrainError> {
        if !self.state.exists() {
            return Ok(State::default());
        }
        let text = std::fs::read_to_string(&self.state).map_err(|e| TrainError::Io {
            path: self.state.clone(),
            source: e,
        })?;
        let state: State = serde_json::from_str(&text)
            .map_err(|e| TrainError::Data(format!("{}: {e}", self.state.display())))?;
        let mut vm = varmap.clone();
        vm.load(&self.last)?;
        log(&format!(
            "resumed after epoch {} (best so far: epoch {}, score {:.4})",
            state.epochs_done, state.best_epoch, state.best_score
        ));
        Ok(state)
    }

    fn save(&self, varmap: &VarMap, state: &State) -> Result<(), TrainError> {
        varmap.save(&self.last)?;
        let text = serde_json::to_string_pretty(state).expect("state serialises");
        std::fs::write(&self.state, text).map_err(|e| TrainError::Io {
            path: self.state.clone(),
            source: e,
        })
    }
}

/// Stage 4 (`--freeze` only), frozen features: they do not change, so they are computed once
/// (train images from the centre view, without augmentation), and every epoch is only the
/// classifier's work. With augmentation each epoch would cost a forward pass per image (about
/// 0.5 s for DenseNet-121 at 224 px on 2 cores).
fn frozen_features(
    net: &Net,
    p: &Prepared,
    log: &mut dyn FnMut(&str),
    batch_done: &mut dyn FnMut(usize, usize, usize),
) -> Result<(Tensor, Tensor), TrainError> {
    log(&format!(
        "frozen features: computing them once for {} train (centre view, no augmentation) and {} val images",
        p.train_set.len(),
        p.val_planes.len()
    ));
    let train_planes: Vec<Vec<f32>> = p
        .train_set
        .iter()
        .map(|s| preprocess(&s.image, &p.spec))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let total =
        train_planes.len().div_ceil(FEATURE_CHUNK) + p.val_planes.len().div_ceil(FEATURE_CHUNK);
    let mut done = 0;
    let mut features_of = |planes: &[Vec<f32>]| -> candle_core::Result<Tensor> {
        let parts = planes
            .chunks(FEATURE_CHUNK)
            .map(|chunk| {
                let t = in_chunks(net, chunk, &p.spec, &Device::Cpu, Pass::Features)?;
                done += 1;
                batch_done(0, done, total);
                Ok(t)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    };
    let features = (features_of(&train_planes)?, features_of(&p.val_planes)?);
    log(&format!(
        "frozen features: done in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(features)
}

/// What an epoch and the finish work with.
struct Run<'a> {
    cfg: &'a TrainConfig,
    p: &'a Prepared,
    net: &'a Net,
    /// `--freeze`: the train and val features, computed once.
    frozen: Option<&'a (Tensor, Tensor)>,
}

/// One batch as the loader thread hands it over: indices, augmented planes (none with frozen
/// features), labels, loss weights, the dropout seed.
type Batch<'a> = (
    &'a [usize],
    Result<Vec<Vec<f32>>, ModelError>,
    Vec<u32>,
    Vec<f32>,
    u64,
);

impl Run<'_> {
    /// The val logits of the network as it is now (detached).
    fn val_logits(&self) -> candle_core::Result<Tensor> {
        match self.frozen {
            Some((_, val)) => self.net.head(val).map(|t| t.detach()),
            None => in_chunks(
                self.net,
                &self.p.val_planes,
                &self.p.spec,
                &Device::Cpu,
                Pass::Logits,
            ),
        }
    }

    /// Stage 5, an epoch: batches augmented on a loader thread while the model trains on the
    /// previous one, then validation. Returns the log entry and the images seen.
    ///
    /// Long on purpose: the loader thread and the training loop share the batch order and seeds.
    fn epoch(
        &self,
        epoch: usize,
        opt: &mut AdamW,
        batch_done: &mut dyn FnMut(usize, usize, usize),
    ) -> Result<(EpochLog, usize), TrainError> {
        let (cfg, p) = (self.cfg, self.p);
        let started = Instant::now();
        let mut rng = StdRng::seed_from_u64(
            cfg.seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut order: Vec<usize> = (0..p.train_set.len()).collect();
        order.shuffle(&mut rng);
        let steps_per_epoch = p.train_set.len().div_ceil(cfg.batch);
        let total_steps = (steps_per_epoch * cfg.epochs).max(1);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        let batches: Vec<Vec<usize>> = order.chunks(cfg.batch).map(<[usize]>::to_vec).collect();
        let seeds: Vec<u64> = batches.iter().map(|_| rng.random()).collect();
        std::thread::scope(|scope| -> Result<(), TrainError> {
            let (tx, rx) = crossbeam_channel::bounded::<Batch<'_>>(2);
            let augmenting = self.frozen.is_none();
            let (batches, seeds) = (&batches, &seeds);
            scope.spawn(move || {
                for (idx, seed) in batches.iter().zip(seeds) {
                    let mut r = StdRng::seed_from_u64(*seed);
                    let planes: Result<Vec<Vec<f32>>, ModelError> = if augmenting {
                        idx.iter()
                            .map(|&i| augment(&p.train_set[i].image, &p.spec, &mut r))
                            .collect()
                    } else {
                        Ok(Vec::new())
                    };
                    let labels = idx.iter().map(|&i| p.train_set[i].label as u32).collect();
                    let weights = idx.iter().map(|&i| p.sample_weights[i]).collect();
                    let mask_seed: u64 = r.random();
                    if tx.send((idx, planes, labels, weights, mask_seed)).is_err() {
                        break;
                    }
                }
            });
            let device = Device::Cpu;
            for (step_in_epoch, (idx, planes, labels, weights, mask_seed)) in rx.iter().enumerate()
            {
                let planes = planes?;
                let step = epoch * steps_per_epoch + step_in_epoch;
                lr = cosine_lr(cfg.lr, step, total_steps, steps_per_epoch);
                opt.set_learning_rate(lr);
                let y = Tensor::from_vec(labels.clone(), labels.len(), &device)?;
                let feats = match self.frozen {
                    Some((train, _)) => {
                        let rows: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                        train.index_select(&Tensor::from_vec(rows, idx.len(), &device)?, 0)?
                    }
                    None => self
                        .net
                        .features_t(&input_tensor(&planes, &p.spec, &device)?, true)?,
                };
                let feats = seeded_dropout(&feats, cfg.dropout, mask_seed)?;
                let logits = self.net.head(&feats)?;
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

        let val_logits = self.val_logits()?;
        let val_probs = candle_nn::ops::softmax_last_dim(&val_logits)?.to_vec2::<f32>()?;
        let m = Metrics::compute(&val_probs, &p.val_truth, &p.data.labels);
        let entry = EpochLog {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss: nll(&val_logits, &p.val_truth, 1.0)?,
            val_accuracy: m.accuracy,
            val_macro_auc: m.macro_auc.unwrap_or(f64::NAN),
            val_per_source: per_source_metrics(&p.data, &val_probs, &p.val_truth, &p.val_source),
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((entry, seen))
    }

    /// The epoch's log lines; returns its model-selection score.
    fn log_epoch(&self, e: &EpochLog, seen: usize, log: &mut dyn FnMut(&str)) -> f64 {
        log(&format!(
            "epoch {:>3}/{}  lr {:.2e}  train loss {:.4} acc {:.3}  val loss {:.4} acc {:.3} macro AUC {:.4}  {:.0} s ({:.1} img/s)",
            e.epoch,
            self.cfg.epochs,
            e.lr,
            e.train_loss,
            e.train_accuracy,
            e.val_loss,
            e.val_accuracy,
            e.val_macro_auc,
            e.seconds,
            seen as f64 / e.seconds
        ));
        if e.val_per_source.len() > 1 {
            let parts: Vec<String> = e
                .val_per_source
                .iter()
                .map(|(name, acc, auc)| format!("{name} acc {acc:.3} AUC {auc:.4}"))
                .collect();
            log(&format!("          val per source: {}", parts.join("; ")));
        }
        e.val_macro_auc + 0.1 * e.val_accuracy
    }
}

/// Images per progress step of the `--freeze` feature pass.
pub const FEATURE_CHUNK: usize = 32;

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
