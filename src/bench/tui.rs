//! UI speed figures for `cxr-triage bench --only tui`: launch to first full frame on a big
//! folder, and the time to handle a key and redraw while inference runs. Frames are drawn by
//! the real crossterm backend into a sink (the escape sequences are produced, not displayed).

use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};

use crate::catalog::WalkOptions;
use crate::model::Model;
use crate::tui::app::{App, Command, Event};
use crate::tui::image::ColorMode;
use crate::tui::image::graphics::{Graphics, ImageProtocol};
use crate::tui::{Runtime, Workers, spawn_walk, ui};

pub struct TuiFigures {
    pub files: usize,
    pub folders: usize,
    pub real: usize,
    /// Median ms from start (model load included) to the first frame with a full list.
    pub first_frame_ms: f64,
    /// Median ms until all files were listed.
    pub all_listed_ms: f64,
    /// (what, median ms, p99 ms, max ms, keys) per key-latency scenario.
    pub keys: Vec<(String, f64, f64, f64, usize)>,
    /// Images scored (not failed) by the end of the key figures.
    pub scored_meanwhile: usize,
}

const SIZE: Rect = Rect {
    x: 0,
    y: 0,
    width: 120,
    height: 35,
};

type SinkTerminal = Terminal<CrosstermBackend<std::io::Sink>>;

fn terminal() -> SinkTerminal {
    Terminal::with_options(
        CrosstermBackend::new(std::io::sink()),
        TerminalOptions {
            viewport: Viewport::Fixed(SIZE),
        },
    )
    .expect("sink terminal")
}

fn frame(app: &mut App, runtime: &mut Runtime, terminal: &mut SinkTerminal) {
    app.now = Instant::now();
    for c in ui::prepare(app, SIZE) {
        runtime.execute(c, app);
    }
    terminal
        .draw(|f| ui::draw(f, app, ColorMode::TrueColor))
        .expect("draw into a sink");
}

/// Apply what is waiting, as the UI loop does before a frame (at most 20 ms of it).
fn drain(app: &mut App, runtime: &mut Runtime, rx: &Receiver<Event>) {
    let end = Instant::now() + Duration::from_millis(20);
    while Instant::now() < end {
        let Ok(ev) = rx.try_recv() else { break };
        for c in app.update(ev) {
            runtime.execute(c, app);
        }
    }
}

/// Make `files` files in `dir`, spread over `folders` subfolders (`d0000/`, ...; 1: all in
/// `dir`): every `files / real`-th a generated 1024x1024 PNG (hard links of one file), the rest
/// empty stubs (they list like images and fail fast when scored).
pub fn make_folder(dir: &Path, files: usize, real: usize, folders: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let png = {
        let img = image::DynamicImage::ImageLuma16(super::synthetic_xray(1024, 1)).to_luma8();
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png)
            .map_err(std::io::Error::other)?;
        out.into_inner()
    };
    let every = (files / real.max(1)).max(1);
    let folders = folders.clamp(1, files.max(1));
    let folder = |i: usize| {
        if folders == 1 {
            dir.to_path_buf()
        } else {
            dir.join(format!("d{:04}", i * folders / files.max(1)))
        }
    };
    for f in 0..folders {
        std::fs::create_dir_all(folder(f * files.max(1) / folders))?;
    }
    let original = folder(0).join("img-00000.png");
    std::fs::write(&original, &png)?;
    for i in 1..files {
        let path = folder(i).join(format!("img-{i:05}.png"));
        if i % every == 0 {
            // Hard links: the same decode work per file without the disk space.
            if std::fs::hard_link(&original, &path).is_err() {
                std::fs::write(&path, &png)?;
            }
        } else {
            std::fs::File::create(path)?;
        }
    }
    Ok(())
}

/// This process's peak resident memory in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The UI's command runner, without a screen of its own.
fn runtime(workers: Workers, tx: crossbeam_channel::Sender<Event>, dir: &Path) -> Runtime {
    Runtime::new(workers, tx, dir.to_path_buf(), ColorMode::TrueColor)
}

/// What `tui::run` does before its first frame: model, state, workers, walk, terminal; the
/// pictures drawn as `graphics` says (a forced protocol needs no terminal to ask).
fn start(
    dir: &Path,
    graphics: Graphics,
) -> anyhow::Result<(App, Runtime, Receiver<Event>, SinkTerminal)> {
    let model = Model::embedded()?;
    let (tx, rx) = unbounded();
    let mut app = App::new(dir.to_path_buf(), &model.manifest);
    crate::tui::fit_to(&mut app, &graphics);
    let workers = Workers::start(model, false, None, tx.clone(), graphics);
    spawn_walk(dir.to_path_buf(), WalkOptions::default(), None, tx.clone());
    Ok((app, runtime(workers, tx, dir), rx, terminal()))
}

/// Milliseconds to apply what is waiting, handle `ev` and draw a frame.
fn timed_key(
    app: &mut App,
    runtime: &mut Runtime,
    rx: &Receiver<Event>,
    terminal: &mut SinkTerminal,
    ev: Event,
) -> f64 {
    let t = Instant::now();
    drain(app, runtime, rx);
    for c in app.update(ev) {
        runtime.execute(c, app);
    }
    frame(app, runtime, terminal);
    t.elapsed().as_secs_f64() * 1000.0
}

/// (what, median, p99, max, keys) of one scenario's key times.
fn scenario(name: &str, mut times: Vec<f64>) -> (String, f64, f64, f64, usize) {
    times.sort_by(f64::total_cmp);
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    let max = *times.last().unwrap_or(&0.0);
    (
        name.to_string(),
        times[times.len() / 2],
        p99,
        max,
        times.len(),
    )
}

/// Long on purpose: one benchmark script (set-up, measured runs, key scenarios) read top to bottom.
pub fn figures(
    dir: &Path,
    files: usize,
    folders: usize,
    real: usize,
    runs: usize,
    keys: usize,
) -> anyhow::Result<TuiFigures> {
    make_folder(dir, files, real, folders)?;
    let mut first = Vec::new();
    let mut all = Vec::new();
    for run in 0..=runs {
        let started = Instant::now();
        let (mut app, mut runtime, rx, mut terminal) = start(dir, Graphics::halfblocks())?;
        let mut first_ms = None;
        while app.work.walking {
            let Ok(ev) = rx.recv() else { break };
            for c in app.update(ev) {
                runtime.execute(c, &mut app);
            }
            drain(&mut app, &mut runtime, &rx);
            frame(&mut app, &mut runtime, &mut terminal);
            if first_ms.is_none()
                && (app.list.view.len() >= app.list.list_rows || !app.work.walking)
            {
                first_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let all_ms = started.elapsed().as_secs_f64() * 1000.0;
        runtime.workers.stop();
        if run > 0 {
            // Run 0 warms the file-system cache.
            first.push(first_ms.unwrap_or(all_ms));
            all.push(all_ms);
        }
    }

    // Keys while inference runs over the whole folder: half-blocks, then each graphics
    // protocol forced (10 x 20-pixel cells), its pictures made by the worker as in the UI.
    let mut scenarios = Vec::new();
    let key = |c: char| Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
    // Half-blocks last: its run is kept (inference still going) for the search figure.
    let protocols = [
        (
            ", kitty previews",
            Graphics::forced(ImageProtocol::Kitty, (10, 20)),
        ),
        (
            ", sixel previews",
            Graphics::forced(ImageProtocol::Sixel, (10, 20)),
        ),
        ("", Graphics::halfblocks()),
    ];
    let mut halfblocks = None;
    for (suffix, graphics) in protocols {
        let (mut app, mut runtime, rx, mut terminal) = start(dir, graphics)?;
        while app.work.walking {
            let Ok(ev) = rx.recv() else { break };
            for c in app.update(ev) {
                runtime.execute(c, &mut app);
            }
        }
        for c in app.update(key('R')) {
            assert!(matches!(c, Command::Score(_)));
            runtime.execute(c, &mut app);
        }
        let sorts: &[(&str, usize)] = if suffix.is_empty() {
            &[("sorted by name", 0), ("sorted by P(first label), live", 1)]
        } else {
            &[("sorted by name", 0)]
        };
        for &(name, sort_presses) in sorts {
            for _ in 0..sort_presses {
                app.update(key('s'));
            }
            let mut times = Vec::with_capacity(keys);
            for k in 0..keys {
                if app.work.progress.is_none() {
                    break; // Inference finished: the rest would not be "while inference runs".
                }
                std::thread::sleep(Duration::from_millis(8));
                // Mostly down, with a jump back now and then, like a person reading the list.
                let ev = if k % 50 == 49 {
                    Event::Key(KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE))
                } else {
                    key('j')
                };
                times.push(timed_key(&mut app, &mut runtime, &rx, &mut terminal, ev));
            }
            scenarios.push(scenario(&format!("{name}{suffix}"), times));
        }
        if suffix.is_empty() {
            // Kept for the search figure and the count of images scored meanwhile.
            halfblocks = Some((app, runtime, rx, terminal));
        } else {
            runtime.workers.stop();
        }
    }
    let (mut app, mut runtime, rx, mut terminal) = halfblocks.expect("the half-block run");
    // Search: '/' then a few characters, each key filtering every path (no sleep between).
    while app.list.sort != crate::tui::app::SortKey::Name {
        app.update(key('s'));
    }
    let times = "/img-12"
        .chars()
        .map(|c| timed_key(&mut app, &mut runtime, &rx, &mut terminal, key(c)))
        .collect();
    app.update(Event::Key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)));
    scenarios.push(scenario("search (/img-12, per key)", times));
    let scored = app
        .items
        .iter()
        .filter(|i| i.status == crate::tui::app::Status::Done)
        .count();
    runtime.workers.stop();
    Ok(TuiFigures {
        files,
        folders,
        real,
        first_frame_ms: super::median(first),
        all_listed_ms: super::median(all),
        keys: scenarios,
        scored_meanwhile: scored,
    })
}

/// Reopening a folder whose results are all in the store.
pub struct ReopenFigures {
    pub files: usize,
    /// Filling the store with one result per file (one-off, not part of reopening).
    pub fill_ms: f64,
    /// Launch to every file listed and shown with its stored result (median).
    pub all_shown_ms: f64,
    /// Launch to the first full frame (median).
    pub first_frame_ms: f64,
}

/// Fill a store with a result for each of `files` files, then time reopening the folder in
/// the UI (walk, store lookups by path/size/mtime, state updates and frames) until every
/// file shows its result.
///
/// Long on purpose: one benchmark script (fill the store, reopen, measure) read top to bottom.
pub fn reopen_figures(
    dir: &Path,
    store_path: &Path,
    files: usize,
    runs: usize,
) -> anyhow::Result<ReopenFigures> {
    use crate::results::store::{FileKey, Store, model_id};
    use crate::results::{ImageInfo, Outcome};
    make_folder(dir, files, 0, 1)?;
    let model = Model::embedded()?;
    let id = model_id(&model.manifest);
    let t = Instant::now();
    {
        let store = Store::open(store_path, &id)?;
        for (i, entry) in crate::catalog::walk(dir, &WalkOptions::default()).enumerate() {
            let key = FileKey::stat(&entry.path)?;
            let outcome = Outcome::Scored {
                info: ImageInfo {
                    format: crate::imaging::Format::Png,
                    width: 1024,
                    height: 1024,
                    bit_depth: 8,
                    dicom: None,
                },
                probs: vec![0.2, 0.3, 0.5],
                unusual: Some(0.5),
                border: Some(0.2),
            };
            store.put(key, i as u128 + 1, &outcome, Some([i as u64; 4]));
        }
        store.flush();
        if let Some(p) = store.problem() {
            anyhow::bail!(p);
        }
    }
    let fill_ms = t.elapsed().as_secs_f64() * 1000.0;
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let started = Instant::now();
        let model = Model::embedded()?;
        let store = std::sync::Arc::new(Store::open(store_path, &id)?);
        let (tx, rx) = unbounded();
        let mut app = App::new(dir.to_path_buf(), &model.manifest);
        let workers = Workers::start(
            model,
            false,
            Some(store.clone()),
            tx.clone(),
            Graphics::halfblocks(),
        );
        spawn_walk(
            dir.to_path_buf(),
            WalkOptions::default(),
            Some((store, false)),
            tx.clone(),
        );
        let mut runtime = runtime(workers, tx, dir);
        let mut terminal = terminal();
        let mut first_ms = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        while (app.work.walking || app.work.restored < app.items.len()) && Instant::now() < deadline
        {
            let Ok(ev) = rx.recv_timeout(Duration::from_secs(5)) else {
                break;
            };
            for c in app.update(ev) {
                runtime.execute(c, &mut app);
            }
            drain(&mut app, &mut runtime, &rx);
            frame(&mut app, &mut runtime, &mut terminal);
            if first_ms.is_none() && app.list.view.len() >= app.list.list_rows {
                first_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let all_ms = started.elapsed().as_secs_f64() * 1000.0;
        runtime.workers.stop();
        if app.work.restored != files {
            anyhow::bail!("only {} of {files} results came back", app.work.restored);
        }
        if run > 0 {
            first.push(first_ms.unwrap_or(all_ms));
            all.push(all_ms);
        }
    }
    Ok(ReopenFigures {
        files,
        fill_ms,
        all_shown_ms: super::median(all),
        first_frame_ms: super::median(first),
    })
}
