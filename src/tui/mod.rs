//! The terminal UI: `cxr-triage [FOLDER]`.
//!
//! ```text
//!  input thread ──┐
//!  walk thread ───┤                       ┌─> preview pool (2 threads, newest request wins)
//!  preview pool ──┼─> one Event channel ──> App::update ──> Commands ─┼─> inference thread (owns the model)
//!  inference ─────┤                       └─> export / zoom threads
//!  signals ───────┘                 draw(&App) after each burst of events
//! ```
//! The UI thread only updates state and draws; decoding, inference and file writes happen on
//! other threads. The terminal is restored on every way out: return, error, panic (the hook
//! restores before the message is printed) and SIGTERM/SIGHUP/SIGINT.

pub mod app;
pub mod image;
pub mod keys;
mod runtime;
mod terminal;
pub mod ui;
mod workers;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::unbounded;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::catalog::WalkOptions;
use crate::model::Model;
use crate::results::default_export_path;
use crate::results::store::Store;
use app::{App, Event, PreviewCache};
use image::ColorMode;
use image::graphics::{Graphics, ImageProtocol};
pub use runtime::Runtime;
pub use terminal::restore_terminal;
use terminal::{TerminalGuard, install_panic_hook, take_worker_panics};
pub use workers::{Workers, spawn_walk};
use workers::{spawn_input, spawn_signals};

/// Longest side of the preview films kept in the cache: enough for half-blocks, and for a
/// graphics protocol's pane (a 60 x 30-cell pane is about 540 x 540 pixels).
pub const PREVIEW_SIDE: u32 = 256;
pub const PREVIEW_SIDE_GRAPHICS: u32 = 512;
/// Longest side of the preview films for `graphics`.
pub fn preview_side(graphics: &Graphics) -> u32 {
    if graphics.is_graphics() {
        PREVIEW_SIDE_GRAPHICS
    } else {
        PREVIEW_SIDE
    }
}

/// The UI state for the terminal's way with pictures: what the screen can show, and a
/// preview cache sized to the films (16-bit: a 512 px one is half a megabyte).
pub fn fit_to(app: &mut App, graphics: &Graphics) {
    app.screen = graphics.screen();
    app.preview.previews = PreviewCache::new(if graphics.is_graphics() { 96 } else { 256 });
}

/// Preview decoder threads.
const PREVIEW_THREADS: usize = 2;

pub struct TuiConfig {
    pub root: PathBuf,
    pub model: Model,
    pub walk: WalkOptions,
    pub force: bool,
    pub show_phi: bool,
    /// Results of earlier runs (shown at once) and where new ones go.
    pub store: Option<Store>,
    /// Why there is no store, when one was wanted.
    pub store_problem: Option<String>,
    /// Where true labels come from (class folders or `--labels`).
    pub truth: crate::review::Truth,
    /// How pictures reach the terminal (`--image-protocol`).
    pub protocol: ImageProtocol,
}

/// The browser was started without a terminal on stdin and stdout (a usage error).
#[derive(Debug, thiserror::Error)]
#[error("the browser needs a terminal (stdin and stdout); for scripts use `cxr-triage scan`")]
pub struct NoTerminal;

/// Run the UI until the user quits.
pub fn run(config: TuiConfig) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(NoTerminal.into());
    }
    let TuiConfig {
        root,
        model,
        walk,
        force,
        show_phi,
        store,
        store_problem,
        truth,
        protocol,
    } = config;
    // Before anything reads stdin: the query's answers arrive there.
    let graphics = Graphics::detect(protocol);
    let (tx, rx) = unbounded::<Event>();
    let mut app = App::new(root.clone(), &model.manifest);
    app.show_phi = show_phi;
    app.export_default = default_export_path(&root);
    app.message = store_problem;
    app.truth = truth;
    fit_to(&mut app, &graphics);
    let store = store.map(Arc::new);
    let workers = Workers::start(model, force, store.clone(), tx.clone(), graphics);
    spawn_walk(root.clone(), walk, store.map(|s| (s, force)), tx.clone());
    spawn_signals(tx.clone());
    spawn_input(tx.clone());

    install_panic_hook();
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    let mut runtime = Runtime::new(workers, tx, root, ColorMode::detect());
    let result = runtime.run_loop(&mut terminal, &mut app, &rx);
    runtime.workers.stop();
    drop(terminal);
    drop(_guard);
    for message in take_worker_panics() {
        eprintln!("a background thread failed: {message}");
    }
    result
}
