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
pub mod bench;
pub mod image;
pub mod ui;

use std::collections::{HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::crossterm::{cursor, event, execute, terminal};
use ratatui::layout::Rect;

use crate::catalog::{Entry, WalkOptions, is_inside, walk};
use crate::imaging::{self, Thumbnail, thumbnail};
use crate::model::Model;
use crate::results::RowWriter;
use crate::results::store::Store;
use crate::worker::{PipelineOptions, Scored, restore, score_all_stored};
use app::{App, Command, Event, Preview};
use image::ColorMode;

/// Longest side of the preview thumbnails kept in the cache.
pub const PREVIEW_SIDE: u32 = 256;
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
}

/// Run the UI until the user quits.
pub fn run(config: TuiConfig) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(crate::cli::UsageError(
            "the browser needs a terminal (stdin and stdout); for scripts use `cxr-triage scan`"
                .into(),
        )
        .into());
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
    } = config;
    let (tx, rx) = unbounded::<Event>();
    let mut app = App::new(root.clone(), &model.manifest);
    app.show_phi = show_phi;
    app.export_default = default_export_path(&root);
    app.message = store_problem;
    app.truth = truth;
    let store = store.map(Arc::new);
    let workers = Workers::start(model, force, store.clone(), tx.clone());
    spawn_walk(root.clone(), walk, store.map(|s| (s, force)), tx.clone());
    spawn_signals(tx.clone());
    let paused = Arc::new(Pause::default());
    spawn_input(tx.clone(), paused.clone());

    install_panic_hook();
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    let mut runtime = Runtime {
        workers,
        tx,
        root,
        colors: ColorMode::detect(),
        zoom: ZoomState::Off,
        paused,
    };
    let result = runtime.run_loop(&mut terminal, &mut app, &rx);
    runtime.workers.stop();
    drop(terminal);
    drop(_guard);
    for message in take_worker_panics() {
        eprintln!("a background thread failed: {message}");
    }
    result
}

/// Raw mode and the alternate screen, undone on drop.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<Self> {
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        silence_stderr();
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The real stderr while the UI runs (-1 when not redirected). Libraries write to stderr on
/// their own (tiff 0.11 has a `dbg!` on a limits error): on the UI's screen that would be
/// garbage over the frame, so stderr goes to /dev/null while the UI owns the terminal.
static SAVED_STDERR: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

fn silence_stderr() {
    // SAFETY: plain fd calls on the process's own descriptors; failures leave stderr as it was.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null < 0 {
            return;
        }
        let saved = libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3);
        if saved >= 0 && libc::dup2(null, libc::STDERR_FILENO) >= 0 {
            SAVED_STDERR.store(saved, Ordering::SeqCst);
        } else if saved >= 0 {
            libc::close(saved);
        }
        libc::close(null);
    }
}

fn restore_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` is the descriptor `silence_stderr` duplicated.
        unsafe {
            libc::dup2(saved, libc::STDERR_FILENO);
            libc::close(saved);
        }
    }
}

/// Leave raw mode and the alternate screen, and give stderr back; safe to call more than once
/// and when the terminal is gone (errors are ignored: there is nobody to tell).
pub fn restore_terminal() {
    restore_stderr();
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
    let _ = std::io::stdout().flush();
}

static WORKER_PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn take_worker_panics() -> Vec<String> {
    std::mem::take(&mut *WORKER_PANICS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A panic on the UI thread restores the terminal, then reports as usual. A panic on a
/// background thread is recorded (printed after the UI closes) instead of garbling the screen.
fn install_panic_hook() {
    let ui = thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if imaging::guard::is_guarded() {
            // A decoder panic that becomes a per-file error: not ours to report.
            previous(info);
        } else if thread::current().id() == ui {
            restore_terminal();
            previous(info);
        } else {
            let msg = imaging::guard::panic_message(info.payload());
            let at = info
                .location()
                .map(|l| format!(" at {l}"))
                .unwrap_or_default();
            WORKER_PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{msg}{at}"));
        }
    }));
}

/// The default export file: in the current folder, or the home folder when the current folder
/// is inside the image folder (which is read-only to us); never over an existing file.
pub fn default_export_path(root: &Path) -> String {
    let name = root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "results".into());
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let dir = if is_inside(&cwd, root) {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    } else {
        PathBuf::from(".")
    };
    let mut n = 1;
    loop {
        let file = if n == 1 {
            format!("cxr-triage-{name}.csv")
        } else {
            format!("cxr-triage-{name}-{n}.csv")
        };
        let path = dir.join(&file);
        if !path.exists() {
            return if dir == Path::new(".") {
                file
            } else {
                path.display().to_string()
            };
        }
        n += 1;
    }
}

/// Write rows to a new file (never over an existing one, never inside the image folder).
pub fn export_rows(
    path: &Path,
    root: &Path,
    format: crate::results::ExportFormat,
    labels: &[String],
    rows: &[crate::results::Row],
) -> Result<String, String> {
    if is_inside(path, root) {
        return Err(format!(
            "{}: inside the image folder, which cxr-triage never writes to; choose another place",
            path.display()
        ));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!("{} exists; choose another name", path.display())
            }
            _ => format!("{}: {e}", path.display()),
        })?;
    let write = || -> std::io::Result<()> {
        let mut w = RowWriter::new(std::io::BufWriter::new(file), format, labels)?;
        for row in rows {
            w.write(row)?;
        }
        w.finish()?;
        Ok(())
    };
    write().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("{} rows written to {}", rows.len(), path.display()))
}

/// Stops the input thread from reading while something else owns stdin (viuer's protocol
/// queries during zoom).
#[derive(Default)]
struct Pause {
    paused: AtomicBool,
    idle: AtomicBool,
}

fn spawn_input(tx: Sender<Event>, pause: Arc<Pause>) {
    thread::spawn(move || {
        loop {
            if pause.paused.load(Ordering::Acquire) {
                pause.idle.store(true, Ordering::Release);
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            pause.idle.store(false, Ordering::Release);
            match event::poll(Duration::from_millis(50)) {
                Ok(true) => {
                    let ev = match event::read() {
                        Ok(event::Event::Key(k)) => Event::Key(k),
                        Ok(event::Event::Resize(..)) => Event::Resize,
                        Ok(_) => continue,
                        Err(_) => break,
                    };
                    if tx.send(ev).is_err() {
                        break;
                    }
                }
                Ok(false) => {}
                // The terminal is gone (SSH dropped): leave like a hang-up.
                Err(_) => {
                    let _ = tx.send(Event::Signal(1));
                    break;
                }
            }
        }
    });
}

fn spawn_signals(tx: Sender<Event>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT]) else {
        return;
    };
    thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = tx.send(Event::Signal(sig));
        }
    });
}

/// Stream the walk in growing batches: the first rows arrive at once, later ones in bulk.
/// With a store (and the `--force` setting), a second thread looks each batch up there and
/// sends what earlier runs found, without reading the files.
pub fn spawn_walk(
    root: PathBuf,
    options: WalkOptions,
    store: Option<(Arc<Store>, bool)>,
    tx: Sender<Event>,
) {
    let restore_tx = store.map(|(store, force)| {
        let (batches, rx) = unbounded::<(usize, Vec<Entry>)>();
        let tx = tx.clone();
        thread::spawn(move || restore_loop(&store, force, &rx, &tx));
        batches
    });
    thread::spawn(move || {
        let mut batch = Vec::with_capacity(64);
        let mut size = 64;
        let mut sent = 0;
        let mut last = Instant::now();
        let send = |batch: Vec<Entry>, sent: &mut usize| -> bool {
            // Found first: the restore thread's answer then always comes after it.
            let copy = restore_tx.as_ref().map(|_| batch.clone());
            let first = *sent;
            *sent += batch.len();
            if tx.send(Event::Found(batch)).is_err() {
                return false;
            }
            if let (Some(r), Some(copy)) = (&restore_tx, copy) {
                let _ = r.send((first, copy));
            }
            true
        };
        for entry in walk(&root, &options) {
            batch.push(entry);
            if batch.len() >= size || last.elapsed() > Duration::from_millis(50) {
                if !send(std::mem::take(&mut batch), &mut sent) {
                    return;
                }
                size = (size * 2).min(4096);
                last = Instant::now();
            }
        }
        if !batch.is_empty() {
            send(batch, &mut sent);
        }
        let _ = tx.send(Event::WalkDone);
    });
}

fn restore_loop(
    store: &Store,
    force: bool,
    batches: &Receiver<(usize, Vec<Entry>)>,
    tx: &Sender<Event>,
) {
    for (first, entries) in batches {
        let found: Vec<(usize, Scored)> = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| restore(e, store, force).map(|s| (first + i, s)))
            .collect();
        if !found.is_empty() && tx.send(Event::Restored(found)).is_err() {
            return;
        }
    }
    if let Some(problem) = store.problem() {
        let _ = tx.send(Event::Problem(problem));
    }
}

#[derive(Default)]
struct PreviewQueue {
    wanted: VecDeque<(usize, PathBuf)>,
    busy: HashSet<usize>,
    stop: bool,
}

struct Job {
    items: Vec<(usize, Entry)>,
    cancel: Arc<AtomicBool>,
}

/// The background threads the UI hands work to.
pub struct Workers {
    previews: Arc<(Mutex<PreviewQueue>, Condvar)>,
    jobs: Option<Sender<Job>>,
    cancels: Vec<Arc<AtomicBool>>,
}

impl Workers {
    pub fn start(model: Model, force: bool, store: Option<Arc<Store>>, tx: Sender<Event>) -> Self {
        let previews = Arc::new((Mutex::new(PreviewQueue::default()), Condvar::new()));
        for _ in 0..PREVIEW_THREADS {
            let (queue, tx) = (previews.clone(), tx.clone());
            thread::spawn(move || preview_loop(&queue, &tx));
        }
        let (job_tx, job_rx) = unbounded::<Job>();
        let options = PipelineOptions {
            force,
            ..PipelineOptions::default()
        };
        thread::spawn(move || inference_loop(&model, &options, store.as_deref(), &job_rx, &tx));
        Self {
            previews,
            jobs: Some(job_tx),
            cancels: Vec::new(),
        }
    }

    /// Carry out one command (all but zoom, export and quit, which need the runtime).
    pub fn execute(&mut self, command: Command) {
        match command {
            Command::Score(items) => {
                let cancel = Arc::new(AtomicBool::new(false));
                self.cancels.push(cancel.clone());
                if let Some(jobs) = &self.jobs {
                    let _ = jobs.send(Job { items, cancel });
                }
            }
            Command::Cancel => {
                for c in self.cancels.drain(..) {
                    c.store(true, Ordering::Relaxed);
                }
            }
            Command::Previews(list) => {
                let (lock, cv) = &*self.previews;
                let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
                q.wanted = list
                    .into_iter()
                    .filter(|(i, _)| !q.busy.contains(i))
                    .collect();
                cv.notify_all();
            }
            Command::Zoom(_)
            | Command::Export { .. }
            | Command::FindDuplicates { .. }
            | Command::Quit => {}
        }
    }

    pub fn stop(&mut self) {
        self.execute(Command::Cancel);
        self.jobs = None;
        let (lock, cv) = &*self.previews;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
    }
}

fn preview_loop(queue: &(Mutex<PreviewQueue>, Condvar), tx: &Sender<Event>) {
    let (lock, cv) = queue;
    loop {
        let (item, path) = {
            let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.stop {
                    return;
                }
                if let Some(next) = q.wanted.pop_front() {
                    q.busy.insert(next.0);
                    break next;
                }
                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let preview = match imaging::load(&path) {
            Ok(d) => Preview::Ready {
                thumb: Arc::new(thumbnail(&d.image, PREVIEW_SIDE)),
                describe: d.describe(),
            },
            Err(e) => Preview::Failed(e.to_string()),
        };
        lock.lock()
            .unwrap_or_else(|e| e.into_inner())
            .busy
            .remove(&item);
        if tx.send(Event::Preview { item, preview }).is_err() {
            return;
        }
    }
}

fn inference_loop(
    model: &Model,
    options: &PipelineOptions,
    store: Option<&Store>,
    jobs: &Receiver<Job>,
    tx: &Sender<Event>,
) {
    for job in jobs {
        if !job.cancel.load(Ordering::Relaxed) {
            let map: Vec<usize> = job.items.iter().map(|(i, _)| *i).collect();
            let entries: Vec<Entry> = job.items.into_iter().map(|(_, e)| e).collect();
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                score_all_stored(entries, model, options, store, &job.cancel, |s| {
                    let _ = tx.send(Event::Scored {
                        item: map[s.index],
                        scored: Box::new(s),
                    });
                })
            }));
            if run.is_err() {
                let _ = tx.send(Event::Problem(
                    "inference failed (details are printed when the UI closes)".into(),
                ));
            }
        }
        if tx.send(Event::JobEnded).is_err() {
            return;
        }
    }
}

enum ZoomState {
    Off,
    /// Waiting for the decode.
    Loading,
    /// The image is on screen; the next key returns.
    Showing,
}

struct Runtime {
    workers: Workers,
    tx: Sender<Event>,
    root: PathBuf,
    colors: ColorMode,
    zoom: ZoomState,
    paused: Arc<Pause>,
}

impl Runtime {
    fn run_loop<B: Backend>(
        &mut self,
        terminal: &mut Terminal<B>,
        app: &mut App,
        rx: &Receiver<Event>,
    ) -> anyhow::Result<()>
    where
        B::Error: Send + Sync + 'static,
    {
        loop {
            if matches!(self.zoom, ZoomState::Off) {
                app.now = Instant::now();
                let size = terminal.size()?;
                if let Some(c) = ui::prepare(app, Rect::new(0, 0, size.width, size.height)) {
                    self.workers.execute(c);
                }
                terminal.draw(|f| ui::draw(f, app, self.colors))?;
                // Test hook (debug builds only): prove the panic hook restores the terminal.
                #[cfg(debug_assertions)]
                if !app.items.is_empty() && std::env::var_os("CXR_TRIAGE_TEST_PANIC").is_some() {
                    panic!("test panic requested by CXR_TRIAGE_TEST_PANIC");
                }
            }
            let timeout = if app.progress.is_some() { 250 } else { 1000 };
            let first = match rx.recv_timeout(Duration::from_millis(timeout)) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => Event::Tick,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            // Take whatever else is waiting (a burst of results), for at most 20 ms, then draw.
            let burst_end = Instant::now() + Duration::from_millis(20);
            let mut next = Some(first);
            while let Some(ev) = next.take() {
                if self.handle(terminal, app, ev)? {
                    return Ok(());
                }
                if Instant::now() < burst_end {
                    next = rx.try_recv().ok();
                }
            }
        }
    }

    /// Returns true to quit.
    fn handle<B: Backend>(
        &mut self,
        terminal: &mut Terminal<B>,
        app: &mut App,
        ev: Event,
    ) -> anyhow::Result<bool>
    where
        B::Error: Send + Sync + 'static,
    {
        match (&self.zoom, ev) {
            (ZoomState::Showing | ZoomState::Loading, Event::Key(_)) => {
                self.zoom = ZoomState::Off;
                terminal.clear()?;
                return Ok(false);
            }
            (_, Event::ZoomReady(result)) => {
                if matches!(self.zoom, ZoomState::Loading) {
                    match result {
                        Ok(thumb) => {
                            self.show_zoom(&thumb)?;
                            self.zoom = ZoomState::Showing;
                        }
                        Err(e) => {
                            self.zoom = ZoomState::Off;
                            app.message = Some(format!("cannot zoom: {e}"));
                            terminal.clear()?;
                        }
                    }
                }
                return Ok(false);
            }
            (_, ev) => {
                for command in app.update(ev) {
                    match command {
                        Command::Quit => return Ok(true),
                        Command::Zoom(path) => {
                            self.zoom = ZoomState::Loading;
                            let tx = self.tx.clone();
                            let side = zoom_side();
                            thread::spawn(move || {
                                let r = imaging::load(&path)
                                    .map(|d| Box::new(thumbnail(&d.image, side)))
                                    .map_err(|e| e.to_string());
                                let _ = tx.send(Event::ZoomReady(r));
                            });
                        }
                        Command::Export { path, format, rows } => {
                            let (tx, root, labels) =
                                (self.tx.clone(), self.root.clone(), app.labels.clone());
                            thread::spawn(move || {
                                let r = export_rows(&path, &root, format, &labels, &rows);
                                let _ = tx.send(Event::Exported(r));
                            });
                            app.export_default = default_export_path(&self.root);
                            app.message = Some("writing…".into());
                        }
                        Command::FindDuplicates {
                            candidates,
                            threshold,
                        } => {
                            let tx = self.tx.clone();
                            thread::spawn(move || {
                                let groups = crate::review::groups(&candidates, threshold);
                                let _ = tx.send(Event::Duplicates(groups));
                            });
                        }
                        other => self.workers.execute(other),
                    }
                }
            }
        }
        Ok(false)
    }

    /// Print the image full-screen with viuer (kitty, iTerm2, sixel, else half-blocks).
    fn show_zoom(&self, thumb: &Thumbnail) -> anyhow::Result<()> {
        let (cols, rows) = terminal::size().unwrap_or((80, 24));
        // viuer reads the terminal's answers to its protocol queries from stdin: stop ours first.
        self.paused.paused.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_millis(300);
        while !self.paused.idle.load(Ordering::Acquire) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let mut out = std::io::stdout();
        execute!(out, terminal::Clear(terminal::ClearType::All))?;
        let img = ::image::GrayImage::from_raw(thumb.width, thumb.height, thumb.pixels.clone())
            .map(::image::DynamicImage::ImageLuma8);
        let result = match img {
            Some(img) => {
                // viuer stretches to the width and height it is given: fit them first.
                let (w, h) =
                    image::fitted_cells(thumb.width, thumb.height, cols, rows.saturating_sub(1));
                let config = viuer::Config {
                    absolute_offset: true,
                    x: (cols - w) / 2,
                    y: 0,
                    width: Some(w.max(1) as u32),
                    height: Some(h.max(1) as u32),
                    truecolor: self.colors == ColorMode::TrueColor,
                    ..Default::default()
                };
                viuer::print(&img, &config)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            None => Err("bad thumbnail".into()),
        };
        execute!(out, cursor::MoveTo(0, rows.saturating_sub(1)))?;
        match result {
            Ok(()) => write!(out, "any key returns")?,
            Err(e) => write!(out, "cannot show the image: {e} · any key returns")?,
        }
        out.flush()?;
        self.paused.paused.store(false, Ordering::Release);
        Ok(())
    }
}

/// Longest side of the zoomed image: what the terminal can show, capped.
fn zoom_side() -> u32 {
    let (cols, rows) = terminal::size().unwrap_or((80, 24));
    // Graphics protocols show more than one pixel per cell; 1024 px is plenty for any screen.
    (cols as u32 * 10).max(rows as u32 * 20).clamp(256, 1024)
}
