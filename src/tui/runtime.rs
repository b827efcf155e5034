//! The UI loop: draw, wait for events, hand each to [`App::update`] and carry out the commands
//! it returns (the one `match` over [`Command`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::layout::Rect;

use super::app::{App, Command, Event};
use super::image::ColorMode;
use super::ui;
use super::workers::Workers;
use crate::imaging;
use crate::results::{default_export_path, export_rows};

/// What carries out the UI's commands: the workers and the event sender.
pub struct Runtime {
    pub workers: Workers,
    tx: Sender<Event>,
    root: PathBuf,
    colors: ColorMode,
}

impl Runtime {
    pub fn new(workers: Workers, tx: Sender<Event>, root: PathBuf, colors: ColorMode) -> Self {
        Self {
            workers,
            tx,
            root,
            colors,
        }
    }

    pub fn run_loop<B: Backend>(
        &mut self,
        terminal: &mut Terminal<B>,
        app: &mut App,
        rx: &Receiver<Event>,
    ) -> anyhow::Result<()>
    where
        B::Error: Send + Sync + 'static,
    {
        // Where the last frame drew sixel or iTerm2 pictures.
        let mut overdrawn: Vec<Rect> = Vec::new();
        loop {
            app.now = Instant::now();
            let size = terminal.size()?;
            let area = Rect::new(0, 0, size.width, size.height);
            for c in ui::prepare(app, area) {
                self.execute(c, app);
            }
            if let Some(c) = app.wanted_heatmap() {
                self.execute(c, app);
            }
            if app.screen.overdrawn {
                let now = ui::protocol_areas(app, area);
                if overdrawn.iter().any(|r| !now.contains(r)) {
                    // A picture left its spot: its pixels would stay under blank cells.
                    terminal.clear()?;
                }
                overdrawn = now;
            }
            terminal.draw(|f| ui::draw(f, app, self.colors))?;
            // Test hook (debug builds only): prove the panic hook restores the terminal.
            #[cfg(debug_assertions)]
            if !app.items.is_empty() && std::env::var_os("CXR_TRIAGE_TEST_PANIC").is_some() {
                panic!("test panic requested by CXR_TRIAGE_TEST_PANIC");
            }
            let timeout = if app.work.progress.is_some() {
                250
            } else {
                1000
            };
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
        // Pictures drawn in a protocol are not cells ratatui knows: after a resize, or on
        // leaving the zoom, everything is drawn again from a clear screen.
        let was_zoom = app.zoom.is_some();
        let mode = app.mode.clone();
        let resized = matches!(ev, Event::Resize);
        for command in app.update(ev) {
            if self.execute(command, app) {
                return Ok(true);
            }
        }
        // A closed overlay (help, review) leaves its text over sixel and iTerm2 pictures,
        // which are not redrawn unless they change.
        let overlay_closed = app.screen.overdrawn && mode != app.mode;
        if resized || overlay_closed || was_zoom != app.zoom.is_some() {
            terminal.clear()?;
        }
        Ok(false)
    }

    /// Carry out one command; returns true to quit. The only `match` over [`Command`].
    pub fn execute(&mut self, command: Command, app: &mut App) -> bool {
        match command {
            Command::Quit => return true,
            Command::Score(items) => self.workers.score(items),
            Command::Cancel => self.workers.cancel(),
            Command::Previews(list) => self.workers.previews(list),
            Command::Heatmap { item, path, label } => self.workers.heatmap(item, path, label),
            Command::Zoom { path, .. } => {
                let tx = self.tx.clone();
                thread::spawn(move || {
                    let r = imaging::load_film(&path)
                        .map(|(_, film)| Arc::new(film.settled()))
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Event::ZoomReady(r));
                });
            }
            Command::Pictures(shots) => self.workers.pictures(shots),
            Command::Export { path, format, rows } => {
                let (tx, root, labels) = (self.tx.clone(), self.root.clone(), app.labels.clone());
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
        }
        false
    }
}
