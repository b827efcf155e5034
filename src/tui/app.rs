//! The UI's state and every change to it. No IO here: events come in through
//! [`App::update`], and what the outside world should do comes back as [`Command`]s. The runtime
//! (`tui::run`) carries the commands out; tests drive `App` directly.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind};

use super::keys::{self, Action};
use crate::catalog::Entry;
use crate::imaging::{Crop, Film, Thumbnail, Window};
use crate::model::heatmap::{Heatmap, Region};
use crate::model::{Manifest, argmax};
use crate::results::{ExportFormat, Row, Status as RowStatus, Tally};
use crate::results::{Outcome, Scored};
use crate::tui::image::graphics::{Picture, Shot, ShotKey};

/// Where an item is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Pending,
    /// In a running (or queued) inference job.
    Running,
    Done,
    Error,
    OutOfScope,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Done => "done",
            Status::Error => "error",
            Status::OutOfScope => "out of scope",
        }
    }
}

/// One file in the list.
#[derive(Clone, Debug)]
pub struct Item {
    /// Shared with a running job, which holds every pending item's entry (a million copies of
    /// the paths otherwise).
    pub entry: Arc<Entry>,
    pub status: Status,
    /// The result, once the model (or the decoder) has had its say: the outcome and the
    /// file's hashes in one allocation (a [`Row`] is built from it where one is shown or
    /// exported, not kept: a million rows were half a gigabyte). A failure with nothing but its
    /// message (an empty file, a file that is not an image) is shared by every item that
    /// failed the same way ([`App`] keeps one of each). It holds PHI only with `--show-phi`.
    pub result: Option<Arc<ItemResult>>,
    /// Index of the predicted label (16 bits, like `truth`: a million items are listed; a
    /// manifest has at most 65,535 labels). Set exactly when the result is a score.
    predicted: Option<u16>,
    pub marked: bool,
    /// The true label (class folder or `--labels`), as an index into the model's labels.
    truth: Option<u16>,
}

/// What an item keeps once read: at most one allocation per file (a million are listed).
#[derive(Clone, Debug)]
pub struct ItemResult {
    pub outcome: Outcome,
    /// Content hash (xxh3-128) in two halves, when the file could be read: a `u128` would
    /// align the whole result to 16 bytes.
    hash: Option<[u64; 2]>,
    /// Difference hash (near duplicates), when the file could be decoded.
    dhash: Option<crate::imaging::dhash::DHash>,
}

impl ItemResult {
    pub fn new(
        outcome: Outcome,
        hash: Option<u128>,
        dhash: Option<crate::imaging::dhash::DHash>,
    ) -> Self {
        Self {
            outcome,
            hash: hash.map(|h| [h as u64, (h >> 64) as u64]),
            dhash: hash.and(dhash),
        }
    }

    /// Content hash and difference hash (for duplicates), when the file could be read.
    pub fn hashes(&self) -> Option<(u128, Option<crate::imaging::dhash::DHash>)> {
        let [low, high] = self.hash?;
        Some((u128::from(low) | u128::from(high) << 64, self.dhash))
    }

    /// A failure with nothing but its message and the file's content hash (when it was read):
    /// the same result for every file with those bytes, or unread, that failed so.
    fn bare_failure(&self) -> Option<(&str, Option<[u64; 2]>)> {
        match &self.outcome {
            Outcome::Failed { info: None, error } if self.dhash.is_none() => {
                Some((error, self.hash))
            }
            _ => None,
        }
    }
}

/// The bare failures ([`ItemResult::bare_failure`]) seen so far, one of each, for the items
/// to share: a folder of a million empty files, or of files that are not images, keeps a
/// result or a few, not a million.
#[derive(Debug, Default)]
pub struct Failures {
    seen: HashMap<(String, Option<[u64; 2]>), Arc<ItemResult>>,
}

impl Failures {
    /// At most this many are kept (a message that names its file is never met again; past
    /// this, a failure keeps its own result).
    pub const MAX: usize = 4096;

    /// `result`, or the same failure met before.
    fn share(&mut self, result: ItemResult) -> Arc<ItemResult> {
        let Some((error, hash)) = result.bare_failure() else {
            return Arc::new(result);
        };
        // Looked up by borrowed parts would need a key type of its own; the copy is one
        // short string per failure, dropped at once.
        let key = (error.to_owned(), hash);
        if let Some(shared) = self.seen.get(&key) {
            return shared.clone();
        }
        let result = Arc::new(result);
        if self.seen.len() < Self::MAX {
            self.seen.insert(key, result.clone());
        }
        result
    }
}

impl Item {
    /// Index of the predicted label, once scored.
    pub fn predicted(&self) -> Option<usize> {
        self.predicted.map(usize::from)
    }

    /// The true label, as an index into the model's labels.
    pub fn truth(&self) -> Option<usize> {
        self.truth.map(usize::from)
    }

    pub fn probs(&self) -> &[f32] {
        self.result.as_ref().map_or(&[], |r| r.outcome.probs())
    }

    /// The unusual-input score, in multiples of the model's threshold.
    pub fn unusual_score(&self) -> Option<f32> {
        self.result.as_ref().and_then(|r| r.outcome.unusual())
    }

    /// Does the unusual-input score call this image unlike the training data?
    pub fn is_unusual(&self) -> bool {
        self.unusual_score().is_some_and(|u| {
            crate::results::Typicality::of(u) == crate::results::Typicality::Unusual
        })
    }

    /// Why the image was not scored (its error, or why it is out of scope).
    pub fn message(&self) -> Option<&str> {
        self.result.as_ref().and_then(|r| r.outcome.message())
    }
}

/// A decoded preview, or why there is none.
#[derive(Clone, Debug)]
pub enum Preview {
    Ready {
        /// The film through its own window, 8 bits: what the list and grid draw.
        thumb: Arc<Thumbnail>,
        /// The film itself (16 bits, the thumbnail's size), for window/level; `None` when only
        /// the 8-bit picture is known.
        film: Option<Arc<Film>>,
        /// e.g. `2048x2500 DICOM 12-bit DX PA`.
        describe: String,
    },
    Failed(String),
}

/// How the reader looks at the films: the current film's window (`w W , .`; `v` back to the
/// file's own) and white-on-black or black-on-white (`i`, kept for every film). Only what is
/// drawn changes: the model reads the file as decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Look {
    /// The current film's window, in its samples; `None`: the file's own.
    pub window: Option<Window>,
    pub invert: bool,
    /// The item the window belongs to (another film opens with its own window).
    pub(super) item: Option<usize>,
}

/// Window steps: `w`/`W` narrow or widen by this factor, `,`/`.` move the level by this share
/// of the container's range.
pub const WINDOW_STEP: f32 = 1.25;
pub const LEVEL_STEP: f32 = 0.05;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Walk order: natural order of the relative path.
    Name,
    /// Probability of one label, highest first (unscored last).
    Label(usize),
    Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    All,
    /// Predicted label.
    Label(usize),
    Flagged,
    Errors,
    /// Predicted label differs from the true label (folder or `--labels`), most confident
    /// first.
    Disagree,
    /// Images with an exact or near duplicate, by group.
    Duplicates,
    /// Images the unusual-input score calls unlike the training data.
    Unusual,
}

/// Which rows an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportScope {
    /// The list as shown (filter and search applied).
    Shown,
    All,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// The data set review overlay: label metrics and the per-folder breakdown.
    Review,
    /// Typing a `/` search.
    Search,
    Help,
    /// One film full-screen, zoomed and panned ([`App::zoom`]).
    Zoom,
    /// Typing the export path.
    Export {
        path: String,
        scope: ExportScope,
    },
}

/// What the runtime should do.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Score these items (index, entry).
    Score(Vec<(usize, Arc<Entry>)>),
    /// Cancel every inference job.
    Cancel,
    /// Decode previews of these items, most wanted first; replaces the previous request.
    Previews(Vec<(usize, PathBuf)>),
    /// Decode this file whole for the zoom (answered by [`Event::ZoomReady`]), with this
    /// heatmap over it when there is one.
    Zoom {
        path: PathBuf,
        heat: Option<Arc<HeatView>>,
    },
    /// Make these pictures, most wanted first; replaces the previous request.
    Pictures(Vec<Shot>),
    /// Compute the heatmap of `label` (`None`: the predicted label) for this item
    /// (answered by [`Event::Heatmap`]; a newer request replaces one not started).
    Heatmap {
        item: usize,
        path: PathBuf,
        label: Option<usize>,
    },
    /// Group these items into duplicates (answered by [`Event::Duplicates`]).
    FindDuplicates {
        candidates: Vec<crate::review::Candidate>,
        threshold: u32,
    },
    /// Write these rows.
    Export {
        path: PathBuf,
        format: ExportFormat,
        rows: Vec<Row>,
    },
    Quit,
}

/// Everything that happens to the UI, from the keyboard or from the background threads.
#[derive(Debug)]
pub enum Event {
    Key(KeyEvent),
    Resize,
    /// More files found by the walk.
    Found(Vec<Entry>),
    WalkDone,
    /// One item's result from an inference job (`item` is the index in the list).
    Scored {
        item: usize,
        scored: Box<Scored>,
    },
    /// Results of earlier runs from the store, by item index (shown without scoring).
    Restored(Vec<(usize, Scored)>),
    /// An inference job ended (finished or cancelled).
    JobEnded,
    /// Duplicate groups (item indices), for the items of the last `FindDuplicates`.
    Duplicates(Vec<crate::review::Group>),
    Preview {
        item: usize,
        preview: Preview,
    },
    Exported(Result<String, String>),
    /// The zoom's film is decoded, whole.
    ZoomReady(Result<Arc<Film>, String>),
    /// A picture is made (or why not).
    Picture {
        key: ShotKey,
        picture: Result<Picture, String>,
    },
    /// An item's heatmap, or why there is none.
    Heatmap {
        item: usize,
        label: Option<usize>,
        result: HeatResult,
    },
    /// A background thread failed; shown on the message line.
    Problem(String),
    /// Redraw (progress rates, ETA).
    Tick,
    /// SIGTERM, SIGHUP, SIGINT: leave cleanly.
    Signal(i32),
}

/// A heatmap and where it sits in its image.
#[derive(Debug, PartialEq)]
pub struct HeatView {
    pub heatmap: Heatmap,
    pub region: Region,
}

pub type HeatResult = Result<Arc<HeatView>, String>;

/// The heatmap over the preview (`H`): which label, and the maps computed so far.
#[derive(Debug, Default)]
pub struct HeatState {
    pub on: bool,
    /// The label shown; `None`: each image's predicted label.
    pub label: Option<usize>,
    pub(super) maps: HashMap<(usize, Option<usize>), HeatResult>,
    /// The request in flight.
    pub(super) asked: Option<(usize, Option<usize>)>,
}

/// Heatmaps kept (they are small; the list forgets them all past this).
const HEAT_CACHE: usize = 128;

impl HeatState {
    /// The map of `item` for the label shown, if computed.
    pub fn of(&self, item: usize) -> Option<&HeatResult> {
        self.maps.get(&(item, self.label))
    }

    /// The map to draw over `item`: only while the overlay is on and the map is computed.
    pub fn shown(&self, item: usize) -> Option<&Arc<HeatView>> {
        match self.of(item) {
            Some(Ok(view)) if self.on => Some(view),
            _ => None,
        }
    }

    /// Is the map of `item` for the label shown on its way?
    pub fn pending(&self, item: usize) -> bool {
        self.asked == Some((item, self.label))
    }
}

/// Progress of the inference jobs in flight.
#[derive(Clone, Debug)]
pub struct Progress {
    pub total: usize,
    pub done: usize,
    pub started: Instant,
    pub jobs: usize,
}

/// `new` (in `order`) merged into `sorted` (in `order`), in place (on ties the elements already
/// there first). From the back: each new element finds its place by binary search and the
/// elements after it move once, in a block, so k new elements cost k log n comparisons and
/// one pass of moves, and no second list of a million is allocated.
fn merge_into(
    sorted: &mut Vec<usize>,
    new: Vec<usize>,
    order: impl Fn(&usize, &usize) -> std::cmp::Ordering,
) {
    let mut end = sorted.len();
    sorted.resize(end + new.len(), 0);
    let mut free = sorted.len();
    for y in new.into_iter().rev() {
        let at = sorted[..end].partition_point(|x| !order(&y, x).is_lt());
        sorted.copy_within(at..end, free - (end - at));
        free -= end - at + 1;
        sorted[free] = y;
        end = at;
    }
}

/// `p` as a number that sorts the larger probabilities first (`f32::total_cmp`'s order,
/// reversed: bits of negative numbers flipped, the sign bit set on the others).
fn descending(p: f32) -> u32 {
    let bits = p.to_bits();
    !(if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    })
}

/// Does `path` contain `needle` (lower case), ignoring case? Without allocating for ASCII
/// needles: the search runs over every path on each key typed.
fn contains_folded(path: &std::path::Path, needle: &str) -> bool {
    let hay = path.as_os_str().as_encoded_bytes();
    if let (true, Some(&first)) = (needle.is_ascii(), needle.as_bytes().first()) {
        let rest = &needle.as_bytes()[1..];
        let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
        return memchr::memchr2_iter(lower, upper, hay).any(|i| {
            hay.get(i + 1..i + 1 + rest.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(rest))
        });
    }
    needle.is_empty() || path.to_string_lossy().to_lowercase().contains(needle)
}

/// The items in name order (the walk's natural order), kept as files arrive in any order: a
/// streamed big folder sends its files in chunks, each sorted, in no order between chunks.
#[derive(Debug, Default)]
pub struct NameOrder {
    /// Item indices, sorted by relative path.
    sorted: Vec<usize>,
    /// Each item's position in `sorted`, when `ranked` (renumbered only when a sort or a
    /// filter needs it: the plain list by name does not, and a walk that streams a big
    /// folder would otherwise renumber a million items per frame).
    rank: Vec<u32>,
    ranked: bool,
}

impl NameOrder {
    /// Take in items `sorted.len()..items.len()`: an append when they all sort after the ones
    /// already there (a sorted walk), else one merge (O(n) moves, k log n comparisons).
    fn add(&mut self, items: &[Item]) {
        let first = self.sorted.len();
        if first == items.len() {
            return;
        }
        let by_path = |a: &usize, b: &usize| {
            crate::catalog::path_cmp(items[*a].entry.rel(), items[*b].entry.rel()).then(a.cmp(b))
        };
        let mut new: Vec<usize> = (first..items.len()).collect();
        if !new.is_sorted_by(|a, b| by_path(a, b).is_le()) {
            new.sort_by(by_path);
        }
        let appended = self
            .sorted
            .last()
            .is_none_or(|last| by_path(last, &new[0]).is_lt());
        if appended {
            if self.ranked {
                self.rank.resize(items.len(), 0);
                for (k, &i) in new.iter().enumerate() {
                    self.rank[i] = (first + k) as u32;
                }
            }
            self.sorted.extend(new);
        } else {
            merge_into(&mut self.sorted, new, by_path);
            self.ranked = false;
        }
    }

    /// Make [`NameOrder::rank`] answer for every item taken in.
    fn renumber(&mut self) {
        if self.ranked && self.rank.len() == self.sorted.len() {
            return;
        }
        self.rank.resize(self.sorted.len(), 0);
        for (k, &i) in self.sorted.iter().enumerate() {
            self.rank[i] = k as u32;
        }
        self.ranked = true;
    }

    /// The item's position in name order (after [`NameOrder::renumber`]).
    pub fn rank(&self, item: usize) -> u32 {
        self.rank[item]
    }

    /// Every item, in name order.
    pub fn all(&self) -> &[usize] {
        &self.sorted
    }
}

/// A small LRU cache (previews by item, pictures by shot).
#[derive(Debug)]
pub struct Lru<K, V> {
    map: HashMap<K, (V, u64)>,
    clock: u64,
    capacity: usize,
}

/// Decoded previews by item.
pub type PreviewCache = Lru<usize, Preview>;

impl<K: std::hash::Hash + Eq + Copy, V> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn get(&mut self, key: K) -> Option<&V> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(&key).map(|(p, used)| {
            *used = clock;
            &*p
        })
    }

    pub fn peek(&self, key: K) -> Option<&V> {
        self.map.get(&key).map(|(p, _)| p)
    }

    pub fn contains(&self, key: K) -> bool {
        self.map.contains_key(&key)
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.clock += 1;
        if self.map.len() >= self.capacity
            && !self.map.contains_key(&key)
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
        {
            self.map.remove(&oldest);
        }
        self.map.insert(key, (value, self.clock));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Forget what `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.map.retain(|k, _| keep(k));
    }
}

/// Step of `+`/`-` on the operating point.
pub const OP_STEP: f32 = 0.05;

pub struct App {
    /// The folder (or file) being triaged, as given.
    pub root: PathBuf,
    pub labels: Vec<String>,
    pub manifest: Manifest,
    pub items: Vec<Item>,
    /// The list (or grid): what it shows, in what order, where the cursor is.
    pub list: ListState,
    pub mode: Mode,
    /// Label whose operating point `+`/`-` moves (in `manifest.operating_points`, which holds
    /// the thresholds the UI flags with).
    pub op_label: usize,
    /// The walk and the scoring jobs.
    pub work: WorkState,
    /// One-line message at the bottom (export written, nothing to run, ...).
    pub message: Option<String>,
    /// The preview pane: decoded thumbnails and the probabilities' scroll.
    pub preview: PreviewPane,
    /// Window/level and invert of what is shown.
    pub look: Look,
    /// The full-screen view, while it is open (`z`).
    pub zoom: Option<ZoomView>,
    /// First line of the `?` help shown (it scrolls on small terminals).
    pub help_scroll: usize,
    /// The terminal's size, as the last frame drew it (the zoom's keys need it).
    pub zoom_area: ratatui::layout::Rect,
    /// How pictures are drawn: with a graphics protocol (made by a worker, see
    /// [`Command::Pictures`]) or half-blocks, and a cell's size in pixels.
    pub screen: Screen,
    /// The time now, for rates and ETA (set by the runtime; tests set it by hand).
    pub now: Instant,
    pub show_phi: bool,
    /// The path the export prompt starts with (set by the runtime: it knows the disk).
    pub export_default: String,
    /// Where true labels come from.
    pub truth: crate::review::Truth,
    /// Near-duplicate groups.
    pub dups: DupState,
    /// The heatmap overlay.
    pub heat: HeatState,
    /// The summary counts, kept up to date item by item (see [`App::summary`]).
    counts: Tally,
    /// One result for each way of failing with nothing else to keep, shared by the items.
    failures: Failures,
    /// The items in name order, whatever order the walk sent them in.
    names: NameOrder,
    /// Some item sits in a folder below the root (the list shows a folder column).
    pub has_folders: bool,
}

/// The list pane's state.
#[derive(Debug)]
pub struct ListState {
    /// The view must be rebuilt (the sort, the filter, the search or the groups changed).
    pub(super) view_dirty: bool,
    /// The search grew by a character since the view was built: what it now shows is a subset
    /// of the view, in the same order, so the view is filtered rather than rebuilt and sorted.
    pub(super) narrowed: bool,
    /// Items listed or given a result since the view was built: [`App::refresh_view`] moves
    /// only these (an O(n) merge, not a sort of the whole list).
    pub(super) changed: Vec<usize>,
    /// Indices into `items`, filtered and sorted: what the list shows.
    pub view: Vec<usize>,
    /// Position of the cursor in `view`.
    pub cursor: usize,
    /// First row of `view` shown (kept so the cursor stays visible).
    pub scroll: usize,
    pub sort: SortKey,
    pub filter: Filter,
    pub search: String,
    /// Items the grid shows at once (set by the drawing code).
    pub grid_cells: usize,
    pub grid: bool,
    /// Rows the list can show (set by the drawing code from the terminal size).
    pub list_rows: usize,
    /// The user has moved the cursor (until then it stays on the first row while files arrive).
    pub(super) moved: bool,
}

/// The preview pane's state.
#[derive(Debug)]
pub struct PreviewPane {
    pub previews: PreviewCache,
    /// Previews asked for and not yet arrived.
    pub(super) requested: HashSet<usize>,
    pub(super) last_request: Vec<usize>,
    /// First row of the probability pane when a model has more labels than fit (`[` `]`).
    pub prob_scroll: usize,
    /// The current film through the reader's window: (item, window, picture).
    pub(super) adjusted: Option<(usize, Window, Arc<Thumbnail>)>,
    /// Pictures made for the screen (graphics protocols, and the zoom).
    pub pictures: Lru<ShotKey, Result<Picture, String>>,
    /// The pictures last asked for.
    pub(super) asked: Vec<ShotKey>,
}

/// The terminal's way with pictures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Screen {
    /// Pictures go out in a graphics protocol (else the list and grid draw half-blocks).
    pub graphics: bool,
    /// Pixels of one cell: the font's, or 1 x 2 for half-blocks.
    pub cell_px: (u32, u32),
    /// Pictures are pixels drawn over the cells (sixel, iTerm2), not placed in them (kitty):
    /// a spot a picture leaves must be cleared.
    pub overdrawn: bool,
    /// The protocol's name, for the help.
    pub name: &'static str,
}

impl Default for Screen {
    fn default() -> Self {
        Self {
            graphics: false,
            cell_px: (1, 2),
            overdrawn: false,
            name: "half-blocks",
        }
    }
}

/// Zoom steps multiply or divide the scale by this.
pub const ZOOM_STEP: f64 = 1.5;

/// The full-screen view of one film: how far in, and where.
#[derive(Clone, Debug)]
pub struct ZoomView {
    pub item: usize,
    /// The whole film, once decoded.
    pub film: Option<Arc<Film>>,
    pub error: Option<String>,
    /// 1: the whole film fits the screen; 2: twice as large.
    pub scale: f64,
    /// The film pixel at the middle of the view.
    pub center: (f64, f64),
    pub heat: Option<Arc<HeatView>>,
    /// The picture last drawn, kept on screen while the next one is made.
    pub(super) last: Option<Picture>,
}

impl ZoomView {
    pub fn new(item: usize, heat: Option<Arc<HeatView>>) -> Self {
        Self {
            item,
            film: None,
            error: None,
            scale: 1.0,
            center: (0.0, 0.0),
            heat,
            last: None,
        }
    }

    /// Screen pixels per film pixel at fit.
    fn fit(w: f64, h: f64, screen: (u32, u32)) -> f64 {
        (screen.0.max(1) as f64 / w).min(screen.1.max(1) as f64 / h)
    }

    /// The largest scale: 32 screen pixels a film pixel (or the fit, if already more).
    pub fn max_scale(w: f64, h: f64, screen: (u32, u32)) -> f64 {
        (32.0 / Self::fit(w, h, screen)).max(1.0)
    }

    /// The part of a `w` x `h` film the view shows on a screen of `screen` pixels: the
    /// screen's shape at this scale, never larger than the film, centred as close to
    /// `center` as the film's edges allow.
    pub fn crop(&self, w: u32, h: u32, screen: (u32, u32)) -> Crop {
        let (w, h) = (w.max(1) as f64, h.max(1) as f64);
        let per_px = Self::fit(w, h, screen) * self.scale;
        let cw = (screen.0.max(1) as f64 / per_px).min(w);
        let ch = (screen.1.max(1) as f64 / per_px).min(h);
        let cx = self.center.0.clamp(cw / 2.0, w - cw / 2.0);
        let cy = self.center.1.clamp(ch / 2.0, h - ch / 2.0);
        Crop {
            left: cx - cw / 2.0,
            top: cy - ch / 2.0,
            width: cw,
            height: ch,
        }
    }

    /// Zoom by `factor` (within 1 and [`ZoomView::max_scale`]) or pan by a share of the
    /// view; the centre is kept where the crop can reach.
    pub fn step(&mut self, factor: f64, pan: (f64, f64), w: u32, h: u32, screen: (u32, u32)) {
        let max = Self::max_scale(w.max(1) as f64, h.max(1) as f64, screen);
        self.scale = (self.scale * factor).clamp(1.0, max);
        let crop = self.crop(w, h, screen);
        self.center = (
            crop.left + crop.width / 2.0 + pan.0 * crop.width,
            crop.top + crop.height / 2.0 + pan.1 * crop.height,
        );
        let crop = self.crop(w, h, screen);
        self.center = (crop.left + crop.width / 2.0, crop.top + crop.height / 2.0);
    }
}

/// Background work: the walk and the scoring jobs.
#[derive(Debug)]
pub struct WorkState {
    pub progress: Option<Progress>,
    /// Last job's summary, e.g. `scored 312 images in 8.1 s`.
    pub last_run: Option<String>,
    pub walking: bool,
    /// Items whose result came from the results store.
    pub restored: usize,
    /// Stored results for items the walk has not listed yet.
    pub(super) early: std::collections::BTreeMap<usize, Scored>,
}

/// Near-duplicate groups and how fresh they are.
#[derive(Debug)]
pub struct DupState {
    /// Duplicate groups of the items that were read when they were last asked for.
    pub duplicates: Vec<crate::review::Group>,
    /// Items read since the groups were made (they are out of date).
    pub(super) dups_stale: bool,
    /// A `FindDuplicates` is on its way.
    pub dups_pending: bool,
    /// Largest difference-hash distance for near duplicates.
    pub dup_threshold: u32,
}

impl App {
    pub fn new(root: PathBuf, manifest: &Manifest) -> Self {
        let labels = manifest.labels.clone();
        let truth = crate::review::Truth::folders_only(&labels);
        let mut manifest = manifest.clone();
        let counts = Tally::new(&manifest);
        if manifest.operating_points.is_empty()
            && let Some(first) = labels.first()
        {
            manifest.operating_points.insert(first.clone(), 0.5);
        }
        let op_label = labels
            .iter()
            .position(|l| manifest.operating_points.contains_key(l))
            .unwrap_or(0);
        Self {
            root,
            labels,
            manifest,
            items: Vec::new(),
            list: ListState {
                view: Vec::new(),
                view_dirty: false,
                narrowed: false,
                changed: Vec::new(),
                cursor: 0,
                scroll: 0,
                sort: SortKey::Name,
                filter: Filter::All,
                search: String::new(),
                grid: false,
                list_rows: 20,
                grid_cells: 12,
                moved: false,
            },
            mode: Mode::Normal,
            op_label,
            work: WorkState {
                walking: true,
                progress: None,
                last_run: None,
                restored: 0,
                early: Default::default(),
            },
            message: None,
            preview: PreviewPane {
                previews: PreviewCache::new(256),
                requested: HashSet::new(),
                last_request: Vec::new(),
                prob_scroll: 0,
                adjusted: None,
                pictures: Lru::new(40),
                asked: Vec::new(),
            },
            look: Look::default(),
            zoom: None,
            zoom_area: ratatui::layout::Rect::new(0, 0, 80, 24),
            help_scroll: 0,
            screen: Screen::default(),
            now: Instant::now(),
            show_phi: false,
            export_default: "cxr-triage-results.csv".into(),
            truth,
            dups: DupState {
                duplicates: Vec::new(),
                dups_stale: true,
                dups_pending: false,
                dup_threshold: crate::review::duplicates::DEFAULT_THRESHOLD,
            },
            heat: HeatState::default(),
            counts,
            failures: Failures::default(),
            names: NameOrder::default(),
            has_folders: false,
        }
    }

    /// The heatmap to compute now: the current item's, when the overlay is on and it is
    /// neither known nor on its way.
    pub fn wanted_heatmap(&mut self) -> Option<Command> {
        let item = self.current().filter(|_| self.heat.on)?;
        let key = (item, self.heat.label);
        if self.heat.maps.contains_key(&key) || self.heat.asked == Some(key) {
            return None;
        }
        self.heat.asked = Some(key);
        Some(Command::Heatmap {
            item,
            path: self.items[item].entry.path.clone(),
            label: self.heat.label,
        })
    }

    /// The item under the cursor.
    pub fn current(&self) -> Option<usize> {
        self.list.view.get(self.list.cursor).copied()
    }

    pub fn is_flagged(&self, item: &Item) -> bool {
        item.status == Status::Done && crate::model::is_flagged(&self.manifest, item.probs())
    }

    /// Does the prediction differ from the true label? Only labels that match one of the
    /// model's labels count (`covid/`, `COVID-19/`, `No Finding/`); `dicom/` says nothing.
    pub fn disagrees(&self, item: &Item) -> bool {
        matches!((item.truth, item.predicted), (Some(t), Some(p)) if t != p)
    }

    /// Ask for duplicate groups when they are out of date and none are being made.
    fn ask_duplicates(&mut self, out: &mut Vec<Command>) {
        if self.list.filter != Filter::Duplicates || self.dups.dups_pending || !self.dups.dups_stale
        {
            return;
        }
        let candidates: Vec<crate::review::Candidate> = self
            .items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| {
                let (hash, dhash) = item.result.as_ref()?.hashes()?;
                Some(crate::review::Candidate { index, hash, dhash })
            })
            .collect();
        self.dups.dups_stale = false;
        self.dups.dups_pending = true;
        out.push(Command::FindDuplicates {
            candidates,
            threshold: self.dups.dup_threshold,
        });
    }

    /// The operating point of label `l`, if it has one.
    pub fn threshold_of(&self, l: usize) -> Option<f32> {
        let label = self.labels.get(l)?;
        self.manifest.operating_points.get(label).copied()
    }

    /// The operating point `+`/`-` moves.
    pub fn threshold(&self) -> f32 {
        self.threshold_of(self.op_label).unwrap_or(0.5)
    }

    /// Handle one event; returns what the runtime should do.
    ///
    /// Long on purpose: the one match over events, an arm each.
    pub fn update(&mut self, event: Event) -> Vec<Command> {
        let mut out = Vec::new();
        match event {
            Event::Key(key) if key.kind != KeyEventKind::Release => self.key(key, &mut out),
            Event::Key(_) | Event::Resize | Event::Tick => {}
            Event::Found(entries) => {
                let first = self.items.len();
                let truth = &self.truth;
                self.items.extend(entries.into_iter().map(|entry| Item {
                    truth: truth.of(&entry).and_then(|t| u16::try_from(t).ok()),
                    entry: Arc::new(entry),
                    status: Status::Pending,
                    result: None,
                    predicted: None,
                    marked: false,
                }));
                self.has_folders |= self.items[first..]
                    .iter()
                    .any(|i| i.entry.folder_label.is_some());
                self.list.changed.extend(first..self.items.len());
                self.counts.pending += self.items.len() - first;
                let listed = self.items.len();
                let ready: Vec<usize> = self.work.early.range(..listed).map(|(i, _)| *i).collect();
                for i in ready {
                    if let Some(scored) = self.work.early.remove(&i) {
                        self.scored(i, scored);
                        self.work.restored += 1;
                    }
                }
            }
            Event::Duplicates(groups) => {
                self.dups.duplicates = groups;
                self.dups.dups_pending = false;
                if self.list.filter == Filter::Duplicates {
                    self.list.view_dirty = true;
                }
                // Results that came in meanwhile ask again.
                self.ask_duplicates(&mut out);
            }
            Event::WalkDone => self.work.walking = false,
            Event::Scored { item, scored } => self.scored(item, *scored),
            Event::Restored(found) => {
                for (item, scored) in found {
                    if item >= self.items.len() {
                        // Not listed yet: kept until the walk gets there.
                        self.work.early.insert(item, scored);
                    } else if self.items[item].status == Status::Pending {
                        // (A result that arrived from a run in the meantime wins.)
                        self.scored(item, scored);
                        self.work.restored += 1;
                    }
                }
            }
            Event::JobEnded => {
                if let Some(p) = &mut self.work.progress {
                    p.jobs = p.jobs.saturating_sub(1);
                    if p.jobs == 0 {
                        let secs = self.now.duration_since(p.started).as_secs_f64();
                        let mut line = format!("scored {} of {}", p.done, p.total);
                        if secs >= 0.1 {
                            line.push_str(&format!(
                                " in {secs:.1} s ({:.1} img/s)",
                                p.done as f64 / secs
                            ));
                        }
                        self.work.last_run = Some(line);
                        self.work.progress = None;
                        self.unqueue();
                    }
                }
            }
            Event::Preview { item, preview } => {
                self.preview.requested.remove(&item);
                self.preview.previews.insert(item, preview);
            }
            Event::Exported(result) => {
                self.message = Some(match result {
                    Ok(m) => m,
                    Err(e) => format!("export failed: {e}"),
                });
            }
            Event::Problem(m) => self.message = Some(m),
            Event::ZoomReady(result) => {
                if let Some(z) = &mut self.zoom {
                    match result {
                        Ok(film) => {
                            z.center = (
                                film.image.width as f64 / 2.0,
                                film.image.height as f64 / 2.0,
                            );
                            z.film = Some(film);
                        }
                        Err(e) => z.error = Some(e),
                    }
                }
            }
            Event::Picture { key, picture } => {
                self.preview.asked.retain(|k| *k != key);
                if key.zoom
                    && let (Some(z), Ok(p)) = (&mut self.zoom, &picture)
                    && z.item == key.item
                {
                    z.last = Some(p.clone());
                }
                self.preview.pictures.insert(key, picture);
            }
            Event::Heatmap {
                item,
                label,
                result,
            } => {
                if self.heat.asked == Some((item, label)) {
                    self.heat.asked = None;
                }
                if self.heat.maps.len() >= HEAT_CACHE {
                    self.heat.maps.clear();
                }
                self.heat.maps.insert((item, label), result);
            }
            Event::Signal(_) => out.push(Command::Quit),
        }
        out
    }

    fn scored(&mut self, index: usize, scored: Scored) {
        if index >= self.items.len() {
            return;
        }
        // PHI is kept in memory only when it is to be shown (read again from the header for
        // a result from the store, which never keeps it).
        let phi = if self.show_phi {
            scored.phi()
        } else {
            Default::default()
        };
        let outcome = scored.outcome.with_phi(phi);
        let before = self.count_of(&self.items[index]);
        let item = &mut self.items[index];
        if scored.hash.is_some() {
            self.dups.dups_stale = true;
        }
        item.status = match &outcome {
            Outcome::Scored { .. } => Status::Done,
            Outcome::Failed { .. } => Status::Error,
            Outcome::OutOfScope { .. } => Status::OutOfScope,
        };
        item.predicted = (item.status == Status::Done).then(|| argmax(outcome.probs()) as u16);
        item.result = Some(self.failures.share(ItemResult::new(
            outcome,
            scored.hash,
            scored.dhash,
        )));
        let after = self.count_of(&self.items[index]);
        self.counts.remove(&before);
        self.counts.add(&after);
        if let Some(p) = &mut self.work.progress {
            p.done += 1;
        }
        if self.list.sort != SortKey::Name || self.list.filter != Filter::All {
            self.list.changed.push(index);
        }
    }

    /// Items still marked running go back to pending (after a cancel).
    fn unqueue(&mut self) {
        for item in &mut self.items {
            if item.status == Status::Running {
                item.status = Status::Pending;
                self.counts.running = self.counts.running.saturating_sub(1);
                self.counts.pending += 1;
            }
        }
    }

    fn key(&mut self, key: KeyEvent, out: &mut Vec<Command>) {
        if keys::is_interrupt(&key) {
            out.push(Command::Quit);
            return;
        }
        match self.mode.clone() {
            Mode::Help => match key.code {
                KeyCode::Down | KeyCode::Char('j') => self.help_scroll += 1,
                KeyCode::Up | KeyCode::Char('k') => {
                    self.help_scroll = self.help_scroll.saturating_sub(1)
                }
                _ => {
                    self.help_scroll = 0;
                    self.mode = Mode::Normal;
                }
            },
            Mode::Review => self.mode = Mode::Normal,
            Mode::Zoom => self.zoom_key(key),
            Mode::Search => match key.code {
                KeyCode::Esc => {
                    self.list.search.clear();
                    self.mode = Mode::Normal;
                    self.list.view_dirty = true;
                }
                KeyCode::Enter => self.mode = Mode::Normal,
                KeyCode::Backspace => {
                    self.list.search.pop();
                    self.list.view_dirty = true;
                }
                KeyCode::Char(c) => {
                    self.list.search.push(c);
                    self.list.narrowed = true;
                }
                KeyCode::Down | KeyCode::Up => self.normal_key(key, out),
                _ => {}
            },
            Mode::Export { mut path, scope } => match key.code {
                KeyCode::Esc => self.mode = Mode::Normal,
                KeyCode::Enter => {
                    self.mode = Mode::Normal;
                    self.export(PathBuf::from(path.trim()), scope, out);
                }
                KeyCode::Tab => {
                    let scope = match scope {
                        ExportScope::Shown => ExportScope::All,
                        ExportScope::All => ExportScope::Shown,
                    };
                    self.mode = Mode::Export { path, scope };
                }
                KeyCode::Backspace => {
                    path.pop();
                    self.mode = Mode::Export { path, scope };
                }
                KeyCode::Char(c) => {
                    path.push(c);
                    self.mode = Mode::Export { path, scope };
                }
                _ => {}
            },
            Mode::Normal => self.normal_key(key, out),
        }
    }

    /// Long on purpose: one short arm per action of the key table (`keys::KEYS`).
    fn normal_key(&mut self, key: KeyEvent, out: &mut Vec<Command>) {
        self.message = None;
        // Keys act on the list as it is now, even if no frame was drawn since it changed.
        self.refresh_view();
        let page = if self.list.grid {
            self.list.grid_cells
        } else {
            self.list.list_rows
        }
        .max(1);
        let Some(action) = keys::lookup(&key) else {
            return;
        };
        match action {
            Action::Quit => out.push(Command::Quit),
            Action::Down => self.move_cursor(1),
            Action::Up => self.move_cursor(-1),
            Action::Right if self.list.grid => self.move_cursor(1),
            Action::Left if self.list.grid => self.move_cursor(-1),
            Action::Right | Action::Left => {}
            Action::PageDown => self.move_cursor(page as isize),
            Action::HalfPageDown => self.move_cursor(page as isize / 2),
            Action::PageUp => self.move_cursor(-(page as isize)),
            Action::HalfPageUp => self.move_cursor(-(page as isize) / 2),
            Action::First => self.move_cursor(isize::MIN / 2),
            Action::Last => self.move_cursor(isize::MAX / 2),
            Action::Mark => {
                if let Some(i) = self.current() {
                    self.items[i].marked = !self.items[i].marked;
                    self.move_cursor(1);
                }
            }
            Action::RunSelection => {
                self.names.add(&self.items);
                let marked: Vec<usize> = (self.names.all().iter().copied())
                    .filter(|&i| self.items[i].marked)
                    .collect();
                let chosen = if marked.is_empty() {
                    self.current().into_iter().collect()
                } else {
                    marked
                };
                self.run(chosen, true, out);
            }
            Action::RunPending => {
                self.names.add(&self.items);
                let pending = (self.names.all().iter().copied())
                    .filter(|&i| self.items[i].status == Status::Pending)
                    .collect();
                self.run(pending, false, out);
            }
            Action::Cancel => {
                if self.work.progress.is_some() {
                    out.push(Command::Cancel);
                    self.unqueue();
                    self.message = Some("cancelled: finished results are kept".into());
                } else if !self.list.search.is_empty() {
                    self.list.search.clear();
                    self.list.view_dirty = true;
                } else {
                    self.items.iter_mut().for_each(|i| i.marked = false);
                }
            }
            Action::Sort => {
                self.list.sort = match self.list.sort {
                    SortKey::Name if !self.labels.is_empty() => SortKey::Label(0),
                    SortKey::Label(i) if i + 1 < self.labels.len() => SortKey::Label(i + 1),
                    SortKey::Name | SortKey::Label(_) => SortKey::Status,
                    SortKey::Status => SortKey::Name,
                };
                self.list.view_dirty = true;
            }
            Action::Filter => {
                self.list.filter = match self.list.filter {
                    Filter::All if !self.labels.is_empty() => Filter::Label(0),
                    Filter::Label(i) if i + 1 < self.labels.len() => Filter::Label(i + 1),
                    Filter::All | Filter::Label(_) => Filter::Flagged,
                    Filter::Flagged => Filter::Errors,
                    Filter::Errors => Filter::Disagree,
                    Filter::Disagree => Filter::Duplicates,
                    Filter::Duplicates if self.manifest.unusual.is_some() => Filter::Unusual,
                    Filter::Duplicates | Filter::Unusual => Filter::All,
                };
                self.list.view_dirty = true;
                self.ask_duplicates(out);
            }
            Action::Review => self.mode = Mode::Review,
            Action::FilterOff => {
                self.list.filter = Filter::All;
                self.list.view_dirty = true;
            }
            Action::Search => self.mode = Mode::Search,
            Action::NextLabel => {
                if !self.labels.is_empty() {
                    self.op_label = (self.op_label + 1) % self.labels.len();
                }
            }
            Action::ScrollProbsDown => {
                self.preview.prob_scroll = self.preview.prob_scroll.saturating_add(1)
            }
            Action::ScrollProbsUp => {
                self.preview.prob_scroll = self.preview.prob_scroll.saturating_sub(1)
            }
            Action::ThresholdUp => self.nudge_threshold(OP_STEP),
            Action::ThresholdDown => self.nudge_threshold(-OP_STEP),
            Action::Grid => self.list.grid = !self.list.grid,
            Action::Zoom => {
                if let Some(i) = self.current() {
                    let heat = self.heat.shown(i).cloned();
                    self.zoom = Some(ZoomView::new(i, heat.clone()));
                    self.mode = Mode::Zoom;
                    out.push(Command::Zoom {
                        path: self.items[i].entry.path.clone(),
                        heat,
                    });
                }
            }
            Action::Heatmap => self.heat.on = !self.heat.on,
            Action::HeatLabelNext | Action::HeatLabelPrev => {
                // Predicted, then each label in turn, then predicted again.
                let n = self.labels.len();
                let at = self.heat.label.map_or(0, |l| l + 1);
                let next = if action == Action::HeatLabelNext {
                    (at + 1) % (n + 1)
                } else {
                    (at + n) % (n + 1)
                };
                self.heat.label = next.checked_sub(1);
                self.heat.on = true;
            }
            Action::Export => {
                self.mode = Mode::Export {
                    path: self.export_default.clone(),
                    scope: ExportScope::Shown,
                }
            }
            Action::Help => self.mode = Mode::Help,
            Action::Invert
            | Action::WindowNarrow
            | Action::WindowWiden
            | Action::LevelDown
            | Action::LevelUp
            | Action::WindowReset => self.look_key(action),
            // Zoom-only actions (their keys are the zoom's).
            Action::ZoomIn
            | Action::ZoomOut
            | Action::Fit
            | Action::PanLeft
            | Action::PanRight
            | Action::PanUp
            | Action::PanDown
            | Action::Back => {}
        }
    }

    /// The shot of `item` for `rect` of the grid or the preview pane (`pane`: with the
    /// heatmap when it is on), once its film is decoded.
    pub fn shot(&self, item: usize, rect: ratatui::layout::Rect, pane: bool) -> Option<Shot> {
        let film = self.film(item)?;
        let window = self.look.window.filter(|_| self.look.item == Some(item));
        let heat = self.heat.shown(item).filter(|_| pane).cloned();
        Some(Shot::new(
            item,
            film.clone(),
            Crop::full(&film.image),
            (rect.width, rect.height),
            window,
            self.look.invert,
            heat,
        ))
    }

    /// The zoom's shot for a terminal of `area`, once its film is decoded. The heatmap shows
    /// at fit only (it covers the whole film).
    pub fn zoom_shot(&self, area: ratatui::layout::Rect) -> Option<Shot> {
        let z = self.zoom.as_ref()?;
        let film = z.film.clone()?;
        let crop = z.crop(film.image.width, film.image.height, self.zoom_screen(area));
        let heat = z.heat.clone().filter(|_| z.scale <= 1.0);
        let mut shot = Shot::new(
            z.item,
            film,
            crop,
            (area.width, area.height.saturating_sub(1)),
            self.look.window,
            self.look.invert,
            heat,
        );
        shot.key.zoom = true;
        Some(shot)
    }

    /// Ask for the shots not made yet, most wanted first; a command when that list changed
    /// (the newest request replaces the last in the worker's queue).
    pub fn wanted_pictures(&mut self, shots: Vec<Shot>) -> Option<Command> {
        let shots: Vec<Shot> = shots
            .into_iter()
            .filter(|s| !self.preview.pictures.contains(s.key))
            .collect();
        let keys: Vec<ShotKey> = shots.iter().map(|s| s.key).collect();
        if keys == self.preview.asked {
            return None;
        }
        self.preview.asked = keys;
        Some(Command::Pictures(shots))
    }

    /// The zoom's screen in pixels: the whole terminal but the info line.
    pub fn zoom_screen(&self, area: ratatui::layout::Rect) -> (u32, u32) {
        let (cw, ch) = self.screen.cell_px;
        (
            area.width as u32 * cw,
            area.height.saturating_sub(1) as u32 * ch,
        )
    }

    fn zoom_key(&mut self, key: KeyEvent) {
        let Some(action) = keys::lookup_in(keys::ZOOM_KEYS, &key) else {
            return;
        };
        let screen = self.zoom_screen(self.zoom_area);
        let Some(z) = &mut self.zoom else {
            self.mode = Mode::Normal;
            return;
        };
        let size = z.film.as_ref().map(|f| (f.image.width, f.image.height));
        let mut step = |factor: f64, pan: (f64, f64)| {
            if let Some((w, h)) = size {
                z.step(factor, pan, w, h, screen);
            }
        };
        match action {
            Action::Back => {
                self.zoom = None;
                self.mode = Mode::Normal;
                // Full-screen pictures are large (an encoded kitty frame is megabytes).
                self.preview.pictures.retain(|k| !k.zoom);
            }
            Action::ZoomIn => step(ZOOM_STEP, (0.0, 0.0)),
            Action::ZoomOut => step(1.0 / ZOOM_STEP, (0.0, 0.0)),
            Action::Fit => step(0.0, (0.0, 0.0)),
            Action::PanLeft => step(1.0, (-0.1, 0.0)),
            Action::PanRight => step(1.0, (0.1, 0.0)),
            Action::PanUp => step(1.0, (0.0, -0.1)),
            Action::PanDown => step(1.0, (0.0, 0.1)),
            _ => self.look_key(action),
        }
    }

    /// The current item's film, when its preview is decoded.
    pub fn current_film(&self) -> Option<&Arc<Film>> {
        self.film(self.current()?)
    }

    /// An item's film, when its preview is decoded.
    fn film(&self, item: usize) -> Option<&Arc<Film>> {
        match self.preview.previews.peek(item) {
            Some(Preview::Ready {
                film: Some(film), ..
            }) => Some(film),
            _ => None,
        }
    }

    /// The window the current film is shown through: the reader's, else the file's own.
    pub fn window(&self) -> Option<Window> {
        let film = self.current_film()?;
        Some(self.look.window.unwrap_or_else(|| film.voi()))
    }

    /// `w W , . v i`: narrow, widen, move the level of or reset the current film's window,
    /// or invert (the same in the list and the zoom; other actions do nothing here).
    fn look_key(&mut self, action: Action) {
        if action == Action::Invert {
            self.look.invert = !self.look.invert;
            return;
        }
        if !matches!(
            action,
            Action::WindowNarrow
                | Action::WindowWiden
                | Action::LevelDown
                | Action::LevelUp
                | Action::WindowReset
        ) {
            return;
        }
        self.sync_look();
        let Some(film) = self.current_film().cloned() else {
            self.message = Some("no picture to window yet".into());
            return;
        };
        let now = self.look.window.unwrap_or_else(|| film.voi());
        let max = film.max();
        self.look.window = match action {
            Action::WindowNarrow => Some(now.scaled(1.0 / WINDOW_STEP, max)),
            Action::WindowWiden => Some(now.scaled(WINDOW_STEP, max)),
            Action::LevelDown => Some(now.shifted(-LEVEL_STEP * max, max)),
            Action::LevelUp => Some(now.shifted(LEVEL_STEP * max, max)),
            _ => None,
        };
    }

    /// A new current film opens with its own window (invert stays: it is the reader's taste).
    pub fn sync_look(&mut self) {
        let current = self.current();
        if self.look.item != current {
            self.look.item = current;
            self.look.window = None;
        }
    }

    /// The current film through the reader's window, when one is set (computed here, once per
    /// window, from the 16-bit film: the drawing code only reads it).
    pub fn prepare_adjusted(&mut self) {
        self.sync_look();
        let (Some(item), Some(window)) = (self.current(), self.look.window) else {
            self.preview.adjusted = None;
            return;
        };
        if matches!(&self.preview.adjusted, Some((i, w, _)) if *i == item && *w == window) {
            return;
        }
        self.preview.adjusted = self.current_film().map(|film| {
            let pic = crate::imaging::render(&film.image, window, false);
            (item, window, Arc::new(pic))
        });
    }

    /// The picture to draw for `item`: the reader's window over the current film, else the
    /// film through its own window.
    pub fn picture(&self, item: usize) -> Option<&Arc<Thumbnail>> {
        if let Some((i, w, pic)) = &self.preview.adjusted
            && *i == item
            && Some(*w) == self.look.window
        {
            return Some(pic);
        }
        match self.preview.previews.peek(item) {
            Some(Preview::Ready { thumb, .. }) => Some(thumb),
            _ => None,
        }
    }

    fn nudge_threshold(&mut self, delta: f32) {
        if let Some(label) = self.labels.get(self.op_label).cloned() {
            let v = (self.threshold() + delta).clamp(0.0, 1.0);
            self.manifest
                .operating_points
                .insert(label, (v * 100.0).round() / 100.0);
            self.counts = self.count_all();
            if self.list.filter == Filter::Flagged {
                self.list.view_dirty = true;
            }
        }
    }

    fn run(&mut self, chosen: Vec<usize>, rerun: bool, out: &mut Vec<Command>) {
        let jobs: Vec<(usize, Arc<Entry>)> = chosen
            .into_iter()
            .filter(|&i| {
                let s = self.items[i].status;
                s != Status::Running && (rerun || s == Status::Pending)
            })
            .map(|i| (i, self.items[i].entry.clone()))
            .collect();
        if jobs.is_empty() {
            self.message = Some(if self.items.is_empty() {
                "nothing to run: no images here".into()
            } else {
                "nothing to run: already scored or running".into()
            });
            return;
        }
        for (i, _) in &jobs {
            let before = self.count_of(&self.items[*i]);
            self.items[*i].status = Status::Running;
            self.items[*i].marked = false;
            self.counts.remove(&before);
            self.counts.running += 1;
        }
        let n = jobs.len();
        match &mut self.work.progress {
            Some(p) => {
                p.total += n;
                p.jobs += 1;
            }
            None => {
                self.work.progress = Some(Progress {
                    total: n,
                    done: 0,
                    started: self.now,
                    jobs: 1,
                })
            }
        }
        out.push(Command::Score(jobs));
    }

    fn export(&mut self, path: PathBuf, scope: ExportScope, out: &mut Vec<Command>) {
        self.refresh_view();
        if path.as_os_str().is_empty() {
            self.message = Some("export cancelled: no path".into());
            return;
        }
        let indices: Vec<usize> = match scope {
            ExportScope::Shown => self.list.view.clone(),
            ExportScope::All => self.names.all().to_vec(),
        };
        let rows: Vec<Row> = indices
            .iter()
            .filter_map(|&i| self.row(&self.items[i]))
            .collect();
        if rows.is_empty() {
            self.message = Some("nothing to export: no results yet (press R to run)".into());
            return;
        }
        let format = ExportFormat::from_path(&path);
        out.push(Command::Export { path, format, rows });
    }

    fn move_cursor(&mut self, delta: isize) {
        self.refresh_view();
        self.list.moved = true;
        if self.list.view.is_empty() {
            self.list.cursor = 0;
            return;
        }
        let last = self.list.view.len() as isize - 1;
        self.list.cursor = (self.list.cursor as isize)
            .saturating_add(delta)
            .clamp(0, last) as usize;
    }

    /// Recompute the filtered, sorted view if anything changed; keeps the cursor on its item.
    /// Items that were listed or scored since the last refresh are merged into the view where
    /// they now belong (O(n)); only a new sort, filter, search or duplicate grouping rebuilds
    /// and sorts the whole view.
    pub fn refresh_view(&mut self) {
        // The duplicate filter and the disagreement order depend on more than one item.
        let incremental = !matches!(self.list.filter, Filter::Duplicates | Filter::Disagree);
        if !incremental && !self.list.changed.is_empty() {
            self.list.view_dirty = true;
        }
        let narrowed = std::mem::take(&mut self.list.narrowed);
        if !self.list.view_dirty && self.list.changed.is_empty() && !narrowed {
            return;
        }
        self.names.add(&self.items);
        let everything = self.list.filter == Filter::All && self.list.search.is_empty();
        if !(everything && self.list.sort == SortKey::Name) {
            self.names.renumber();
        }
        let mut changed = std::mem::take(&mut self.list.changed);
        let current = self.current();
        // The view's storage is used again (a million indices: no new list on every burst).
        let mut old = std::mem::take(&mut self.list.view);
        let rank = |i: &usize| self.names.rank(*i);
        let needle = self.list.search.to_lowercase();
        let in_group: HashMap<usize, usize> = if self.list.filter == Filter::Duplicates {
            self.dups
                .duplicates
                .iter()
                .enumerate()
                .flat_map(|(g, group)| group.members.iter().map(move |&i| (i, g)))
                .collect()
        } else {
            HashMap::new()
        };
        let keep = |i: usize| -> bool {
            let item = &self.items[i];
            let shown = match self.list.filter {
                Filter::All => true,
                Filter::Label(l) => item.predicted() == Some(l),
                Filter::Flagged => self.is_flagged(item),
                Filter::Errors => item.status == Status::Error,
                Filter::Disagree => self.disagrees(item),
                Filter::Duplicates => in_group.contains_key(&i),
                Filter::Unusual => item.is_unusual(),
            };
            shown && (needle.is_empty() || contains_folded(item.entry.rel(), &needle))
        };
        // Which items to show, asked in storage order (their entries were allocated in that
        // order too) and read in the view's: on a disk whose listing comes in hash order, a
        // million items asked in name order were cache misses more than work.
        let kept = || -> Vec<bool> { (0..self.items.len()).map(&keep).collect() };
        // Only a scored item has probabilities: the others are answered without reading their
        // boxed result (a million errors would be a million cache misses).
        let scored = |i: usize| Some(&self.items[i]).filter(|item| item.predicted.is_some());
        let confidence = |i: usize| {
            scored(i).map_or(-1.0, |item| {
                item.probs().iter().copied().fold(-1.0f32, f32::max)
            })
        };
        let label_p = |l: usize, i: usize| {
            scored(i)
                .and_then(|item| item.probs().get(l).copied())
                .unwrap_or(-1.0)
        };
        // The view's order as one number per item: what it is sorted by, then its place by
        // name (so every order is total, and sorting a million items sorts plain integers).
        let first = |i: usize| -> u32 {
            match self.list.sort {
                SortKey::Name if self.list.filter == Filter::Disagree => descending(confidence(i)),
                SortKey::Name if self.list.filter == Filter::Duplicates => {
                    in_group.get(&i).map_or(u32::MAX, |&g| g as u32)
                }
                SortKey::Name => 0,
                SortKey::Label(l) => descending(label_p(l, i)),
                SortKey::Status => self.items[i].status as u32,
            }
        };
        let pack = |first: u32, i: usize| (u64::from(first) << 32) | u64::from(rank(&i));
        let key = |i: usize| pack(first(i), i);
        let by_name = self.list.sort == SortKey::Name && incremental;
        let view = if everything && self.list.sort == SortKey::Name {
            // Every item, in name order.
            old.clear();
            old.extend_from_slice(self.names.all());
            old
        } else if self.list.view_dirty && by_name {
            let kept = kept();
            old.clear();
            old.extend(self.names.all().iter().copied().filter(|&i| kept[i]));
            old
        } else if self.list.view_dirty {
            // The value most items share while a folder is being scored (no probability yet,
            // pending): those keep their order by name and only the others are sorted, so the
            // first key after `s` does not sort a million items that are all alike.
            let common = match self.list.sort {
                SortKey::Label(_) => Some(descending(-1.0)),
                SortKey::Status if self.counts.running > self.counts.pending => {
                    Some(Status::Running as u32)
                }
                SortKey::Status => Some(Status::Pending as u32),
                SortKey::Name => None,
            };
            // Asked in storage order (the items are read one after the other).
            let kept = if everything { Vec::new() } else { kept() };
            let firsts: Vec<u32> = (0..self.items.len())
                .map(|i| if everything || kept[i] { first(i) } else { 0 })
                .collect();
            let shown = |i: usize| everything || kept[i];
            let mut keys: Vec<u64> = (0..self.items.len())
                .filter(|&i| shown(i) && Some(firsts[i]) != common)
                .map(|i| pack(firsts[i], i))
                .collect();
            keys.sort_unstable();
            let names = self.names.all();
            let item = |k: &u64| names[(k & 0xffff_ffff) as usize];
            let split = common.map_or(keys.len(), |c| {
                keys.partition_point(|k| (k >> 32) < u64::from(c))
            });
            let mut view = old;
            view.clear();
            view.extend(keys[..split].iter().map(item));
            if let Some(c) = common {
                view.extend(
                    names
                        .iter()
                        .copied()
                        .filter(|&i| shown(i) && firsts[i] == c),
                );
            }
            view.extend(keys[split..].iter().map(item));
            view
        } else {
            changed.sort_unstable();
            changed.dedup();
            let mut moved: Vec<usize> = changed.iter().copied().filter(|&i| keep(i)).collect();
            moved.sort_by_key(|&i| key(i));
            // The rest keep their values, so they are still in order (and a longer search keeps
            // a subset of them).
            let kept = if narrowed { kept() } else { Vec::new() };
            let mut is_changed = vec![false; self.items.len()];
            for &i in &changed {
                is_changed[i] = true;
            }
            old.retain(|&i| !is_changed[i] && (!narrowed || kept[i]));
            merge_into(&mut old, moved, |a, b| key(*a).cmp(&key(*b)));
            old
        };
        self.list.view_dirty = false;
        self.list.view = view;
        let (cursor, row) = (
            self.list.cursor,
            self.list.cursor.saturating_sub(self.list.scroll),
        );
        self.list.cursor = if self.work.walking && !self.list.moved {
            // Untouched while files still arrive: the cursor stays on the first row.
            0
        } else {
            current
                .and_then(|c| self.list.view.iter().position(|&i| i == c))
                .unwrap_or(cursor.min(self.list.view.len().saturating_sub(1)))
        };
        // The cursor's item keeps its row on screen when items come in above it.
        self.list.scroll = self.list.cursor.saturating_sub(row);
    }

    /// Keep the cursor inside the `rows` shown, scrolling as little as possible.
    pub fn scroll_to_cursor(&mut self, rows: usize) {
        let rows = rows.max(1);
        if self.list.cursor < self.list.scroll {
            self.list.scroll = self.list.cursor;
        } else if self.list.cursor >= self.list.scroll + rows {
            self.list.scroll = self.list.cursor + 1 - rows;
        }
        self.list.scroll = self
            .list
            .scroll
            .min(self.list.view.len().saturating_sub(rows));
        if self.list.cursor < self.list.scroll {
            self.list.scroll = self.list.cursor;
        }
    }

    /// The previews worth decoding now: the current item first, then the visible ones; returns
    /// a command when that list changed (newest request wins in the preview pool).
    pub fn wanted_previews(&mut self, visible: std::ops::Range<usize>) -> Option<Command> {
        let mut want = Vec::new();
        if let Some(c) = self.current() {
            want.push(c);
        }
        let visible: Vec<usize> = self.list.view
            [visible.start.min(self.list.view.len())..visible.end.min(self.list.view.len())]
            .to_vec();
        want.extend(visible.into_iter().filter(|i| Some(*i) != self.current()));
        want.retain(|i| !self.preview.previews.contains(*i));
        if want == self.preview.last_request {
            return None;
        }
        self.preview.last_request = want.clone();
        self.preview.requested = want.iter().copied().collect();
        Some(Command::Previews(
            want.into_iter()
                .map(|i| (i, self.items[i].entry.path.clone()))
                .collect(),
        ))
    }

    /// Is a preview of `item` on its way?
    pub fn preview_requested(&self, item: usize) -> bool {
        self.preview.requested.contains(&item)
    }

    /// Counts for the summary bar.
    pub fn summary(&self) -> Tally {
        self.counts.clone()
    }

    /// The summary counted from scratch over every item: what [`App::summary`] keeps up to
    /// date one item at a time (a list of a million files is not counted on every frame).
    pub fn count_all(&self) -> Tally {
        let mut s = Tally::new(&self.manifest);
        for item in &self.items {
            s.add(&self.count_of(item));
        }
        s
    }

    /// One item's share of the summary.
    fn count_of(&self, item: &Item) -> Tally {
        let mut s = Tally::new(&self.manifest);
        match item.status {
            Status::Pending => s.pending += 1,
            Status::Running => s.running += 1,
            Status::Error => s.errors += 1,
            Status::OutOfScope => s.out_of_scope += 1,
            Status::Done => s.scored(
                item.probs(),
                item.predicted(),
                self.is_flagged(item),
                item.is_unusual(),
                |l| self.threshold_of(l),
            ),
        }
        s
    }

    /// The item's result as shown and exported: its true label, and flagged at the operating
    /// point in force (not at the one of scoring time).
    pub fn row(&self, item: &Item) -> Option<Row> {
        let outcome = &item.result.as_deref()?.outcome;
        let mut row = Row::from_outcome(&item.entry, outcome, &self.manifest, outcome.phi());
        row.label = item.truth().map(|t| self.labels[t].clone());
        if row.status == RowStatus::Done {
            row.flagged = Some(self.is_flagged(item));
        }
        Some(row)
    }

    /// Label metrics and the per-folder breakdown of what is scored so far.
    pub fn review(&self) -> Review {
        let mut probs = Vec::new();
        let mut truth = Vec::new();
        for item in &self.items {
            if let (Some(t), Status::Done) = (item.truth(), item.status) {
                probs.push(item.probs().to_vec());
                truth.push(t);
            }
        }
        Review {
            labelled: self.items.iter().filter(|i| i.truth.is_some()).count(),
            unmatched: self.truth.unmatched(self.items.iter().map(|i| &*i.entry)),
            metrics: (!probs.is_empty()).then(|| {
                crate::evaluation::metrics::Metrics::compute(&probs, &truth, &self.labels)
            }),
            // Flagged at the operating point in force (the rows keep the one of scoring time);
            // by_folder only asks about scored rows.
            folders: crate::review::by_folder(
                self.items.iter().filter_map(|i| self.row(i)),
                &self.labels,
                |r| crate::model::is_flagged(&self.manifest, &r.probabilities),
            ),
        }
    }

    /// Images per second and time left of the running jobs.
    pub fn rate_and_eta(&self) -> Option<(f64, Duration)> {
        let p = self.work.progress.as_ref()?;
        let secs = self.now.duration_since(p.started).as_secs_f64();
        if p.done == 0 || secs <= 0.0 {
            return None;
        }
        let rate = p.done as f64 / secs;
        let left = (p.total - p.done.min(p.total)) as f64 / rate;
        Some((rate, Duration::from_secs_f64(left)))
    }
}

/// What the review overlay (`m`) shows.
#[derive(Clone, Debug)]
pub struct Review {
    /// Items with a label that matches one of the model's labels.
    pub labelled: usize,
    /// Label names that match none of the model's labels, with their counts.
    pub unmatched: Vec<(String, usize)>,
    /// Label metrics over the scored, labelled items (`eval`'s point estimates).
    pub metrics: Option<crate::evaluation::metrics::Metrics>,
    pub folders: Vec<crate::review::FolderStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_in_place_equals_a_stable_sort_of_both() {
        // Values with many ties (v % 7): on a tie, the element already there comes first.
        let order = |a: &usize, b: &usize| (a % 7).cmp(&(b % 7));
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            (seed >> 33) as usize
        };
        for (n, k) in [(0, 0), (0, 5), (5, 0), (1, 1), (40, 3), (3, 40), (200, 200)] {
            let mut sorted: Vec<usize> = (0..n).map(|_| next() % 1000).collect();
            let mut new: Vec<usize> = (0..k).map(|_| 1000 + next() % 1000).collect();
            sorted.sort_by(order);
            new.sort_by(order);
            let mut want: Vec<usize> = sorted.iter().chain(&new).copied().collect();
            want.sort_by(order);
            merge_into(&mut sorted, new, order);
            assert_eq!(sorted, want, "{n} + {k}");
        }
    }

    #[test]
    fn the_search_matches_anywhere_ignoring_case() {
        let p = |s: &str| std::path::PathBuf::from(s);
        assert!(contains_folded(&p("Covid/IMG-12.png"), "img-12"));
        assert!(contains_folded(&p("a/b/x.PNG"), "png"), "at the very end");
        assert!(contains_folded(&p("iiimg"), "img"), "after false starts");
        assert!(!contains_folded(&p("a/im"), "img"), "cut off by the end");
        assert!(!contains_folded(&p("a"), "abc"), "longer than the path");
        assert!(contains_folded(&p("a"), ""));
        assert!(contains_folded(&p("Ärzte/Lunge.png"), "ärzte"), "non-ASCII");
    }

    #[test]
    fn an_entry_in_the_list_stays_small() {
        // A million of them sit in the list: a result is boxed (a Row is over 400 bytes, most
        // of them empty fields), the relative path is the tail of the full one.
        assert!(std::mem::size_of::<Row>() > 300);
        assert!(
            std::mem::size_of::<Entry>() <= 64,
            "{}",
            std::mem::size_of::<Entry>()
        );
        assert!(
            std::mem::size_of::<Item>() <= 40,
            "{}",
            std::mem::size_of::<Item>()
        );
        // What a scored or failed item keeps: the outcome, not a row (DICOM facts boxed).
        assert!(
            std::mem::size_of::<Outcome>() <= 80,
            "{}",
            std::mem::size_of::<Outcome>()
        );
        // The hashes in 64-bit halves: no 16-byte alignment (it was 144 with a u128).
        assert!(
            std::mem::size_of::<ItemResult>() <= 128,
            "{}",
            std::mem::size_of::<ItemResult>()
        );
        assert_eq!(std::mem::align_of::<ItemResult>(), 8);
    }

    #[test]
    fn a_failure_with_nothing_but_its_message_is_kept_once() {
        let mut failures = Failures::default();
        let failed = |m: &str, hash| {
            let outcome = Outcome::Failed {
                info: None,
                error: m.into(),
            };
            ItemResult::new(outcome, hash, None)
        };
        let a = failures.share(failed("empty file", None));
        let b = failures.share(failed("empty file", None));
        assert!(Arc::ptr_eq(&a, &b));
        let other = failures.share(failed("not an image", None));
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(other.outcome.message(), Some("not an image"));
        // A file that was read shares only with files of the same bytes.
        let read = failures.share(failed("empty file", Some(u128::MAX - 5)));
        assert!(!Arc::ptr_eq(&a, &read));
        assert_eq!(read.hashes(), Some((u128::MAX - 5, None)));
        let same_bytes = failures.share(failed("empty file", Some(u128::MAX - 5)));
        assert!(Arc::ptr_eq(&read, &same_bytes));
        let other_bytes = failures.share(failed("empty file", Some(3)));
        assert!(!Arc::ptr_eq(&read, &other_bytes));
        // A failure with image facts or a difference hash keeps its own result.
        let decoded = || {
            ItemResult::new(
                Outcome::Failed {
                    info: None,
                    error: "empty file".into(),
                },
                Some(3),
                Some([0; 4]),
            )
        };
        assert!(!Arc::ptr_eq(
            &failures.share(decoded()),
            &failures.share(decoded())
        ));
        // Past the limit, a new message is kept but not shared.
        for i in 0..Failures::MAX {
            failures.share(failed(&format!("failure {i}"), None));
        }
        assert_eq!(failures.seen.len(), Failures::MAX);
        let (x, y) = (
            failures.share(failed("late", None)),
            failures.share(failed("late", None)),
        );
        assert!(!Arc::ptr_eq(&x, &y));
        assert!(Arc::ptr_eq(&a, &failures.share(failed("empty file", None))));
    }

    #[test]
    fn a_result_keeps_both_hashes() {
        let outcome = || Outcome::Failed {
            info: None,
            error: "x".into(),
        };
        let both = ItemResult::new(outcome(), Some(u128::MAX / 3), Some([1, 2, 3, u64::MAX]));
        assert_eq!(
            both.hashes(),
            Some((u128::MAX / 3, Some([1, 2, 3, u64::MAX])))
        );
        assert_eq!(
            ItemResult::new(outcome(), None, Some([1; 4])).hashes(),
            None
        );
    }

    #[test]
    fn descending_sorts_larger_probabilities_first_in_total_order() {
        let values = [
            f32::NEG_INFINITY,
            -1.0,
            -0.5,
            -0.0,
            0.0,
            1e-30,
            0.25,
            0.5,
            0.999,
            1.0,
            f32::INFINITY,
        ];
        for a in values {
            for b in values {
                assert_eq!(
                    descending(a).cmp(&descending(b)),
                    b.total_cmp(&a),
                    "{a} against {b}"
                );
            }
        }
    }
}
