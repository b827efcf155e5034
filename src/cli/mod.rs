//! Command line: clap definitions and the commands. Errors here are `anyhow`, printed with
//! `{:#}`; exit codes follow [`Exit`].

mod bench;
mod eval;
mod merge;
mod scan;
mod train;
mod values;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::results::ExportFormat;

/// Exit codes: 0 every file was read, 1 some files failed (or the run failed part-way),
/// 2 the command could not start (bad arguments, missing folder, invalid model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    SomeFailed = 1,
    Usage = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// An error that stops a command before it does its work (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[derive(Debug, Parser)]
#[command(
    name = "cxr-triage",
    version,
    about = "Chest X-ray triage: browse a folder of X-rays, score them with a CNN, sort the worklist, export results",
    long_about = "Chest X-ray triage: browse a folder of X-rays in the terminal, score them with a \
CNN, sort the worklist, export results. Without a command it opens the terminal UI on FOLDER \
(press ? there for the keys); `scan` does the same work headless.\n\nNot a medical device: \
research and workflow support only.",
    after_help = "Examples:\n  cxr-triage /data/xrays                      browse, run (R), sort, export (e)\n  \
cxr-triage samples                          the same on the images shipped with the project\n  \
cxr-triage scan /data/xrays --out results.csv\n  \
cxr-triage scan /data/xrays --format jsonl > results.jsonl\n  \
cxr-triage eval --data ../shared/data/cxr3 --split test\n  \
sbatch --array=1-8 deploy/slurm/scan.sbatch /data/xrays   a Slurm job array, merged at the end"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Threads for the networks and the pool their kernels share (inference, `train`,
    /// `eval`, `bench`), given after the command name (`scan --threads 1 ...`). Default:
    /// $RAYON_NUM_THREADS, else every core. Decoding threads are `scan --jobs`.
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub browse: BrowseArgs,
}

/// Options of the terminal UI (the default command).
#[derive(Debug, Args)]
pub struct BrowseArgs {
    /// Folder to browse (or one image, or a disc's DICOMDIR: the images it lists). Default: the
    /// current folder. A folder named like a command (scan, samples, ...) is written ./NAME.
    pub folder: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub review: ReviewArgs,
    #[command(flatten)]
    pub view: ViewArgs,
}

/// How the UI draws pictures: shared by the UI and `samples`.
#[derive(Debug, Args, Default, Clone)]
pub struct ViewArgs {
    /// How pictures reach the terminal: `auto` asks it (kitty, sixel, iTerm2; half-blocks if
    /// it names none, as plain tmux and most SSH clients); `halfblocks` works everywhere.
    /// Default: $CXR_TRIAGE_IMAGE_PROTOCOL, else auto. Inside tmux, auto turns on the pane's
    /// allow-passthrough (as yazi does) so that the outer terminal's protocol gets through.
    #[arg(long, value_name = "PROTOCOL")]
    pub image_protocol: Option<crate::tui::image::graphics::ImageProtocol>,
}

/// Where results are kept between runs: shared by the UI, `samples`, `scan` and `cache`.
#[derive(Debug, Args, Default, Clone)]
pub struct CacheArgs {
    /// Results store (SQLite). Default: $XDG_CACHE_HOME/cxr-triage/results.sqlite3
    /// (~/.cache/... without XDG_CACHE_HOME). Never inside the image folder.
    #[arg(long, value_name = "FILE")]
    pub cache: Option<PathBuf>,
    /// Neither read nor write the results store: score everything afresh.
    #[arg(long)]
    pub no_cache: bool,
}

impl CacheArgs {
    /// The store for a run over `root`, or `None` with `--no-cache`. A store that cannot be
    /// used (unreadable, from a newer version, inside the image folder) is not fatal: the
    /// reason comes back and the run goes on without it. The second value also carries the
    /// store's warning (readable by other users) when it opened.
    pub fn open(
        &self,
        root: &std::path::Path,
        manifest: &crate::model::Manifest,
    ) -> (Option<crate::results::store::Store>, Option<String>) {
        use crate::results::store::{Store, model_id};
        if self.no_cache {
            return (None, None);
        }
        match Store::open_for(root, self.cache.as_deref(), &model_id(manifest)) {
            Ok(store) => {
                let warning = store.warning();
                (Some(store), warning)
            }
            Err(e) => (
                None,
                Some(format!("{e}; running without the results store")),
            ),
        }
    }
}

/// Data set review: where true labels come from (shared by the UI and `scan`).
#[derive(Debug, Args, Default, Clone)]
pub struct ReviewArgs {
    /// True labels from a CSV with `path` and `label` columns (paths relative to the folder;
    /// a `split` column is used for leak checks). Default: class folder names (`covid/`,
    /// `COVID-19/`, `normal/`, `No Finding/`, ... matched to the model's labels).
    #[arg(long, value_name = "FILE.csv")]
    pub labels: Option<PathBuf>,
}

impl ReviewArgs {
    /// The true labels of `root` for a model with `labels`.
    pub fn truth(
        &self,
        root: &std::path::Path,
        labels: &[String],
    ) -> anyhow::Result<crate::review::Truth> {
        use crate::review::{LabelFile, Truth};
        Ok(match &self.labels {
            Some(file) => Truth::from_file(labels, LabelFile::read(file, root)?),
            None => Truth::from_folders(labels, root),
        })
    }
}

/// Which files are read and what is shown of them: shared by the UI and `scan`.
#[derive(Debug, Args, Default)]
pub struct InputArgs {
    /// Follow symbolic links (loops are detected and reported).
    #[arg(short = 'L', long)]
    pub follow_links: bool,
    /// Include hidden files and folders (names starting with a dot).
    #[arg(long)]
    pub hidden: bool,
    /// Score images that are out of scope too (DICOM lateral views, modalities other than
    /// CR/DX/DR); by default they get the status "out of scope" and no scores.
    #[arg(long)]
    pub force: bool,
    /// Include the DICOM Patient ID and Accession Number in results and exports (protected
    /// health information: off by default). Never kept in the results store: a stored result
    /// reads them again from the file.
    #[arg(long)]
    pub show_phi: bool,
}

impl InputArgs {
    pub fn walk_options(&self) -> crate::catalog::WalkOptions {
        crate::catalog::WalkOptions {
            follow_links: self.follow_links,
            hidden: self.hidden,
            stream_after: None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the terminal UI on the sample images shipped with the project (samples/).
    Samples(SamplesArgs),
    /// Score every image under a folder (or one file) and write one row per image.
    Scan(ScanArgs),
    /// Train a model (cxrnet or DenseNet-121 from scratch, or any network from --init) on one or
    /// more labelled folders.
    Train(TrainArgs),
    /// Evaluate a model on a labelled split: accuracy, sensitivity, specificity, PPV, ROC AUC,
    /// confusion matrix, with 95 % bootstrap intervals.
    Eval(EvalArgs),
    /// Measure decode, thumbnail, inference, scan and UI speed on images the benchmark makes.
    Bench(BenchArgs),
    /// Join the parts of a sharded scan (`scan --shard K/N`) into one result, checked and in
    /// the order a single scan writes.
    Merge(MergeArgs),
    /// Show, clear or import into the results store (stored outcomes of earlier runs).
    Cache(CacheCommandArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Each part is a results file (CSV, JSON or JSON Lines, in any mix) written by `scan --shard K/N --out FILE`, with the FILE.shard.json that scan writes beside it when the shard finishes. merge checks that the parts come from one scan (same folder, model, options and N) and cover shards 1..N exactly once: a missing, unfinished or doubled shard is an error that names it. The rows come out in the order one `scan` of the folder writes them, followed by the same summary, and, where rows have true labels, the same figures as `eval`. An existing output is never overwritten.

Examples:
  cxr-triage merge --out results.csv parts/part-*.csv
  cxr-triage merge parts/*.jsonl --format jsonl > all.jsonl

Cluster jobs: deploy/slurm/ and the README's \"Clusters\" section."
)]
pub struct MergeArgs {
    /// The parts (results files of `scan --shard`).
    #[arg(required = true, value_name = "PART")]
    pub parts: Vec<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The model the scan used (checked against the parts). Default: the one the parts name.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Bootstrap resamples for the 95 % intervals of the label figures.
    #[arg(long, default_value_t = 200)]
    pub resamples: usize,
    /// No summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "The store keeps every outcome by file content hash and model, so reopening a \
folder or scanning it again only scores what is new or changed. It lives in \
$XDG_CACHE_HOME/cxr-triage/ (or ~/.cache/cxr-triage/) unless --cache says otherwise.\n\n\
Examples:\n  cxr-triage cache info\n  cxr-triage cache clear\n  cxr-triage scan /data/xrays --no-cache\n  \
cxr-triage cache import results/store-*.sqlite3    (each cluster shard's --cache)"
)]
pub struct CacheCommandArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Where the store is, its size, and how many results it holds per model.
    Info(StorePath),
    /// Delete the store (every model's results).
    Clear(StorePath),
    /// Copy the results of other stores (e.g. each shard's `--cache` on a cluster) into this
    /// one, so the UI on the login node shows them all. The other stores are only read.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Stores to import from.
    #[arg(required = true, value_name = "STORE")]
    pub from: Vec<PathBuf>,
    #[command(flatten)]
    pub into: StorePath,
}

#[derive(Debug, Args)]
pub struct StorePath {
    /// The store file. Default: $XDG_CACHE_HOME/cxr-triage/results.sqlite3 (~/.cache/...
    /// without XDG_CACHE_HOME).
    #[arg(long, value_name = "FILE")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SamplesArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub view: ViewArgs,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Figures are medians of --runs repetitions (decode, thumbnail, inference, UI first \
frame) or one timed pass (scan stages); key latency is the median, 99th percentile and maximum \
of --keys presses. Generated images go to a temporary folder that is removed after.\n\n\
Example:\n  cxr-triage bench --only tui"
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images for the scan throughput figures (1024x1024 PNGs).
    #[arg(long, default_value_t = 200)]
    pub images: usize,
    /// Repetitions for the median figures.
    #[arg(long, default_value_t = 15)]
    pub runs: usize,
    /// Run one part only.
    #[arg(long, value_enum)]
    pub only: Option<BenchPart>,
    /// Files in the folder for the UI figures (empty stubs, 1,000 of them real images).
    #[arg(long, default_value_t = 20_000)]
    pub tui_files: usize,
    /// Subfolders the UI figures' files are spread over (1: all in one folder).
    #[arg(long, default_value_t = 1)]
    pub tui_folders: usize,
    /// Key presses per UI latency figure.
    #[arg(long, default_value_t = 500)]
    pub keys: usize,
    /// Rows for the merge figures.
    #[arg(long, default_value_t = 1_000_000)]
    pub merge_rows: usize,
}

/// Parts of `bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPart {
    /// Decode and thumbnail times per format.
    Decode,
    /// Model inference throughput, batch 1 and 8.
    Inference,
    /// The scan pipeline, stage by stage and end to end.
    Scan,
    /// The terminal UI: first frame on a big folder, key latency while inference runs.
    Tui,
    /// The results store: reopening a folder of --tui-files stored results, and scan
    /// throughput with the store off, empty and full.
    Store,
    /// `merge` of --merge-rows generated rows in 8 shards: time and peak memory.
    Merge,
    /// Grad-CAM heatmaps: time per image against inference alone, batch 1 and 8.
    Heatmap,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Each --data folder is reported on its own (rows whose label the model lacks are \
left out), then, with several, the pool. A folder with labels.csv and no splits (an external \
set) counts every image as test.\n\nExamples:\n  cxr-triage eval --data ../shared/data/cxr3 --split test\n  \
cxr-triage eval --data ../shared/data/cxr3 --data ../shared/data/siim-covid --data ../shared/data/cohen-2020-07\n  \
cxr-triage eval --data ../shared/data/ext-normal"
)]
pub struct EvalArgs {
    /// Folder with one subfolder per class (and splits.csv or labels.csv); repeat for a
    /// report per folder and a pooled one.
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = crate::catalog::dataset::Split::Test)]
    pub split: crate::catalog::dataset::Split,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Bootstrap resamples for the 95 % intervals.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Store the report in the manifest's `metrics` field (needs --model).
    #[arg(long, requires = "model")]
    pub record: bool,
    /// Seed of the validation split when the data has no splits.csv (as given to `train`).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Data layout: DATA/<class>/*.png (one subfolder per class). With DATA/splits.csv \
(columns path,label,split) its train/val splits are used; without it a seeded, stratified \
validation split is made.\n\nWrites OUT.safetensors and OUT.json (the manifest), and checkpoints \
plus state.json in OUT.train/ after every epoch; --resume continues from them. The log goes to \
stderr, one line per epoch.\n\nExamples:\n  cxr-triage train --data ../shared/data/cxr3 --out models/cxrnet-v1\n  \
cxr-triage train --data ../shared/data/cxr3 --data ../shared/data/siim-covid --data ../shared/data/cohen-2020-07 \
--labels covid,normal,pneumonia --init efficientnet-lite0-imagenet.json --freeze-blocks 3 --out models/lite0\n  \
cxr-triage train --data ../shared/data/cxr3 --out models/xrv-cxr3 --init models/xrv-all.json --freeze\n\n\
The default model's full recipe (ImageNet conversion, PyTorch twin, calibration): models/MODEL_CARD.md."
)]
pub struct TrainArgs {
    /// Folder with one subfolder per class; repeat to pool several (each keeps its own splits,
    /// validation is reported per folder and pooled).
    #[arg(long, required = true)]
    pub data: Vec<PathBuf>,
    /// The model's labels, comma-separated; rows with other labels are left out (default: the
    /// first folder's labels).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Output prefix, e.g. models/cxrnet-v1.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 45)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate (AdamW, one epoch of warm-up, cosine decay).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// Seed for initialisation, splits, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Input side in pixels.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Network to train from scratch: cxrnet (compact, the former default cxrnet-v1's) or
    /// densenet121 (the original project's; about 100x slower on a CPU). EfficientNet-Lite0, the
    /// default model's network, starts from ImageNet weights: use --init.
    #[arg(long, value_enum, default_value_t = crate::training::Arch::Cxrnet)]
    pub arch: crate::training::Arch,
    /// Layer widths: stem, then one residual stage each (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = crate::model::cxrnet::CxrNetConfig::default().widths)]
    pub widths: Vec<usize>,
    /// Start from an existing model (its manifest): network, configuration, preprocessing and
    /// weights, e.g. a torchxrayvision DenseNet-121 exported with
    /// tools/export_torchxrayvision.py. The classifier starts afresh unless the model has the
    /// same labels as DATA.
    #[arg(long, value_name = "MANIFEST", conflicts_with_all = ["arch", "widths", "size"])]
    pub init: Option<PathBuf>,
    /// With --init: keep its features as they are and train only the classifier (fast: no
    /// backward pass through the network).
    #[arg(long, requires = "init")]
    pub freeze: bool,
    /// Continue from the last checkpoint in OUT.train/.
    #[arg(long)]
    pub resume: bool,
    /// Write augmented views of the train images (and the val images' centre views) to DIR for
    /// a PyTorch twin of this recipe (tools/train_twin.py), then stop.
    #[arg(long, value_name = "DIR")]
    pub export_views: Option<PathBuf>,
    /// EfficientNet: keep the stem and the first N blocks as they are (no backward pass through
    /// them; their batch norms still adapt).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub freeze_blocks: usize,
    /// With --export-views: augmented views per train image (one per twin epoch).
    #[arg(long, default_value_t = 8, requires = "export_views")]
    pub views: usize,
    /// Use at most N training images (quick smoke runs).
    #[arg(long, hide = true)]
    pub limit: Option<usize>,
}

/// Where rows go: shared by `scan` and `merge`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Write results here; the format follows the extension (.csv, .json, .jsonl). Default: stdout.
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Output format (default: from --out's extension, CSV on stdout).
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
}

impl OutputArgs {
    /// `--format`, else `--out`'s extension, else CSV.
    pub fn format(&self) -> ExportFormat {
        self.format
            .or(self.out.as_deref().map(ExportFormat::from_path))
            .unwrap_or(ExportFormat::Csv)
    }
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model manifest (JSON) with its safetensors weights beside it. Default: the built-in
    /// cxr-lite0-v2 (COVID-19 / normal / pneumonia; see models/MODEL_CARD.md).
    #[arg(long, value_name = "MANIFEST.json")]
    pub model: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Output columns: path, status (done/error/out of scope), error, folder_label, \
label (the true label, when the folder or --labels gives one), format, width, height, bit_depth, \
DICOM fields, p_<label> for each model label, predicted, flagged (yes/no against the manifest's \
operating points), typicality and unusual_score (the unusual-input score), border_attention (the \
share of the predicted label's heatmap in the outer 10 % band of the image: about 0.36 when spread \
evenly, near 1 when the score came from borders, corners and the markers printed there).\n\nWhen images have labels, accuracy, per-class sensitivity, specificity, PPV, \
ROC AUC and the confusion matrix are printed on stderr (the same figures as `eval`).\n\n\
Results are kept in the results store: a second scan of the same files takes them from there \
(see `cxr-triage cache --help`).\n\nExit status: 0 every file was read, 1 some files failed (all \
rows are still written), 2 usage error.\n\nExamples:\n  cxr-triage scan /data/xrays --out results.csv\n  \
cxr-triage scan /data/set --disagreements --out check.csv\n  \
cxr-triage scan /data/set --duplicates\n  cxr-triage scan /data/set --by-folder\n  \
cxr-triage scan /data/set --shard 3/8 --out part-3.csv   (one of 8 cluster tasks; then `merge`)\n  \
cxr-triage scan /data/set --heatmaps /tmp/heatmaps --out results.csv"
)]
pub struct ScanArgs {
    /// Folder to scan recursively (or a single image file, or a CD/DVD export's DICOMDIR: the
    /// images its records list).
    pub path: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Largest inference batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch: u16,
    /// Decoder threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    #[command(flatten)]
    pub review: ReviewArgs,
    /// Write only the images whose label (folder or --labels) differs from the prediction,
    /// most confident first.
    #[arg(long, conflicts_with_all = ["duplicates", "by_folder"])]
    pub disagreements: bool,
    /// Write only images with an exact or near duplicate, by group, with columns `group`,
    /// `match` (exact/near) and `leak` (the group spans labels or splits).
    #[arg(long, conflicts_with = "by_folder")]
    pub duplicates: bool,
    /// Largest difference-hash distance (of 256 bits) for near duplicates.
    #[arg(long, default_value_t = crate::review::duplicates::DEFAULT_THRESHOLD, value_name = "BITS")]
    pub dup_threshold: u32,
    /// Write one row per folder instead of per image: counts, flagged, and mean score per label.
    #[arg(long)]
    pub by_folder: bool,
    /// Bootstrap resamples for the 95 % intervals of the label metrics.
    #[arg(long, default_value_t = 200)]
    pub resamples: usize,
    /// Score only shard K of N (K from 1), for a cluster job array: the images are split by a
    /// hash of their path under PATH, so N shards cover each image once, whatever the machine.
    /// Needs --out; a `FILE.shard.json` beside it, written when the shard finishes, lets
    /// `merge` check the parts. Slurm: --array=1-N, --shard
    /// $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT (deploy/slurm/).
    #[arg(long, value_name = "K/N", requires = "out", conflicts_with_all = ["disagreements", "duplicates", "by_folder"])]
    pub shard: Option<crate::catalog::shard::Shard>,
    /// Write one PNG per scored image into DIR (created if missing, never inside PATH): the
    /// image in gray (longer side at most 1024 px) with the predicted label's Grad-CAM
    /// heatmap blended over it, named `<image>.<label>-<P>.png` in the image's subfolder.
    /// Existing files are never overwritten. Every image is decoded again (none is taken
    /// from the results store). A hint of where the model looked, not a localisation.
    #[arg(long, value_name = "DIR")]
    pub heatmaps: Option<PathBuf>,
    /// No progress bar or summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Parse arguments and run; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads 0: give at least 1");
            return ExitCode::from(2);
        }
        // Before any thread starts: candle and gemm read RAYON_NUM_THREADS, the kernels use
        // the global pool.
        // SAFETY: no other thread exists yet to read the environment while it changes.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let result = match cli.command {
        None => browse(cli.browse),
        Some(Command::Samples(args)) => samples(args),
        Some(Command::Scan(args)) => scan::run(args),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Eval(args)) => eval::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        Some(Command::Merge(args)) => merge::run(args),
        Some(Command::Cache(args)) => cache(args),
    };
    match result {
        Ok(exit) => exit.into(),
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.downcast_ref::<UsageError>().is_some()
                || err.downcast_ref::<crate::tui::NoTerminal>().is_some()
                || err.downcast_ref::<crate::model::ModelError>().is_some()
                || err
                    .downcast_ref::<crate::catalog::dataset::DatasetError>()
                    .is_some()
                || matches!(
                    err.downcast_ref::<crate::training::TrainError>(),
                    Some(crate::training::TrainError::Dataset(_))
                )
            {
                Exit::Usage.into()
            } else {
                Exit::SomeFailed.into()
            }
        }
    }
}

/// Load the model named by `--model`, or the default model built into the binary.
pub fn load_model(args: &ModelArgs) -> anyhow::Result<crate::model::Model> {
    Ok(match &args.model {
        Some(path) => crate::model::Model::load(path)?,
        None => crate::model::Model::embedded()?,
    })
}

/// The terminal UI on a folder.
fn browse(args: BrowseArgs) -> anyhow::Result<Exit> {
    let root = args.folder.unwrap_or_else(|| PathBuf::from("."));
    if !root.exists() {
        return Err(UsageError(format!("{}: no such file or folder", root.display())).into());
    }
    let protocol = crate::tui::image::graphics::ImageProtocol::resolve(
        args.view.image_protocol,
        std::env::var_os(crate::tui::image::graphics::PROTOCOL_ENV).as_deref(),
    )
    .map_err(UsageError)?;
    let model = load_model(&args.model)?;
    let truth = args
        .review
        .truth(&root, model.labels())
        .map_err(|e| UsageError(format!("{e:#}")))?;
    let (store, store_problem) = args.cache.open(&root, &model.manifest);
    crate::tui::run(crate::tui::TuiConfig {
        protocol,
        truth,
        root,
        model,
        walk: args.input.walk_options(),
        force: args.input.force,
        show_phi: args.input.show_phi,
        store,
        store_problem,
    })?;
    Ok(Exit::Ok)
}

/// Where the shipped samples are: `samples/` in the source tree this binary was built from,
/// or beside the executable.
pub fn samples_dir() -> Option<PathBuf> {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples");
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("samples")));
    std::iter::once(source)
        .chain(beside)
        .find(|d| d.join("README.md").is_file())
}

fn samples(args: SamplesArgs) -> anyhow::Result<Exit> {
    let Some(dir) = samples_dir() else {
        return Err(UsageError(
            "cannot find the samples folder (samples/ in the source tree, or beside the binary)"
                .into(),
        )
        .into());
    };
    browse(BrowseArgs {
        folder: Some(dir),
        model: args.model,
        input: InputArgs::default(),
        cache: args.cache,
        review: ReviewArgs::default(),
        view: args.view,
    })
}

fn cache(args: CacheCommandArgs) -> anyhow::Result<Exit> {
    use crate::results::store;
    let (CacheAction::Info(p)
    | CacheAction::Clear(p)
    | CacheAction::Import(ImportArgs { into: p, .. })) = &args.action;
    let Some(path) = p.cache.clone().or_else(store::default_path) else {
        return Err(UsageError("no store path: set --cache, XDG_CACHE_HOME or HOME".into()).into());
    };
    match args.action {
        CacheAction::Info(_) => {
            if !path.exists() {
                println!("{}: no results stored yet", path.display());
                return Ok(Exit::Ok);
            }
            let stats = store::stats(&path)?;
            println!(
                "{}: {} results for {} files, {:.1} MiB",
                path.display(),
                stats.results,
                stats.files,
                stats.bytes as f64 / (1 << 20) as f64
            );
            for (model, n) in stats.models {
                println!("  {model}: {n} results");
            }
        }
        CacheAction::Import(import) => {
            let mut failed = false;
            for from in &import.from {
                match store::import(&path, from) {
                    Ok(n) => println!(
                        "{}: {} new results, {} files imported into {}",
                        from.display(),
                        n.results,
                        n.files,
                        path.display()
                    ),
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if failed {
                return Ok(Exit::SomeFailed);
            }
        }
        CacheAction::Clear(_) => {
            if store::clear(&path).with_context(|| format!("cannot delete {}", path.display()))? {
                println!("cleared {}", path.display());
            } else {
                println!("{}: nothing to clear", path.display());
            }
        }
    }
    Ok(Exit::Ok)
}
