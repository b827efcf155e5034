//! The UI's background threads: keyboard input, signals, the folder walk (with results
//! restored from the store), the preview decoders, the picture maker and the inference thread.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use ratatui::crossterm::event;

use super::PREVIEW_THREADS;
use super::app::{Event, HeatResult, HeatView, Preview};
use super::image::graphics::{Graphics, Shot};
use crate::catalog::{Entry, WalkOptions, walk};
use crate::imaging::{self, render};
use crate::model::heatmap::Region;
use crate::model::{Model, input_crop, preprocess};
use crate::results::Scored;
use crate::results::store::Store;
use crate::scoring::{PipelineOptions, restore, score_all_stored};

pub(super) fn spawn_input(tx: Sender<Event>) {
    thread::spawn(move || {
        loop {
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

pub(super) fn spawn_signals(tx: Sender<Event>) {
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

/// A folder with more files than this is streamed in sorted chunks rather than read whole
/// before its first file is shown (reading a million names takes about a second here); the
/// list sorts by name whatever the order of arrival ([`crate::tui::app::NameOrder`]).
pub const STREAM_AFTER: usize = 32_768;

/// Stream the walk in growing batches: the first rows arrive at once, later ones in bulk.
/// With a store (and the `--force` setting), a second thread looks each batch up there and
/// sends what earlier runs found, without reading the files.
pub fn spawn_walk(
    root: PathBuf,
    mut options: WalkOptions,
    store: Option<(Arc<Store>, bool)>,
    tx: Sender<Event>,
) {
    let restore_tx = store.map(|(store, force)| {
        let (batches, rx) = unbounded::<(usize, Vec<Entry>)>();
        let tx = tx.clone();
        thread::spawn(move || restore_loop(&store, force, &rx, &tx));
        batches
    });
    options.stream_after = Some(STREAM_AFTER);
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
        let found: Vec<(usize, Scored)> = restore(&entries, store, force)
            .map(|(i, s)| (first + i, s))
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
    items: Vec<(usize, Arc<Entry>)>,
    cancel: Arc<AtomicBool>,
}

/// The pictures wanted now (the newest request replaces the list) and whether to stop.
#[derive(Default)]
struct PictureQueue {
    wanted: VecDeque<Shot>,
    stop: bool,
}

/// The heatmap wanted next (the newest request wins) and whether to stop.
#[derive(Default)]
struct HeatQueue {
    next: Option<(usize, PathBuf, Option<usize>)>,
    stop: bool,
}

/// The background threads the UI hands work to.
pub struct Workers {
    previews: Arc<(Mutex<PreviewQueue>, Condvar)>,
    pictures: Arc<(Mutex<PictureQueue>, Condvar)>,
    heat: Arc<(Mutex<HeatQueue>, Condvar)>,
    jobs: Option<Sender<Job>>,
    cancels: Vec<Arc<AtomicBool>>,
}

impl Workers {
    /// Start the threads; previews are decoded and pictures made for `graphics`.
    pub fn start(
        model: Model,
        force: bool,
        store: Option<Arc<Store>>,
        tx: Sender<Event>,
        graphics: Graphics,
    ) -> Self {
        let preview_side = super::preview_side(&graphics);
        let previews = Arc::new((Mutex::new(PreviewQueue::default()), Condvar::new()));
        for _ in 0..PREVIEW_THREADS {
            let (queue, tx) = (previews.clone(), tx.clone());
            thread::spawn(move || preview_loop(&queue, preview_side, &tx));
        }
        let pictures = Arc::new((Mutex::new(PictureQueue::default()), Condvar::new()));
        {
            let (queue, tx) = (pictures.clone(), tx.clone());
            thread::spawn(move || picture_loop(&queue, &graphics, &tx));
        }
        let model = Arc::new(model);
        let heat = Arc::new((Mutex::new(HeatQueue::default()), Condvar::new()));
        {
            let (queue, tx, model) = (heat.clone(), tx.clone(), model.clone());
            thread::spawn(move || heat_loop(&queue, &model, force, &tx));
        }
        let (job_tx, job_rx) = unbounded::<Job>();
        let options = PipelineOptions {
            force,
            ..PipelineOptions::default()
        };
        thread::spawn(move || inference_loop(&model, &options, store.as_deref(), &job_rx, &tx));
        Self {
            previews,
            pictures,
            heat,
            jobs: Some(job_tx),
            cancels: Vec::new(),
        }
    }

    /// Queue images for scoring (a job the next [`Workers::cancel`] stops).
    pub fn score(&mut self, items: Vec<(usize, Arc<Entry>)>) {
        let cancel = Arc::new(AtomicBool::new(false));
        self.cancels.push(cancel.clone());
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job { items, cancel });
        }
    }

    /// Stop every scoring job queued or running.
    pub fn cancel(&mut self) {
        for c in self.cancels.drain(..) {
            c.store(true, Ordering::Relaxed);
        }
    }

    /// The previews wanted now, nearest first (replaces the previous wish list).
    pub fn previews(&self, list: Vec<(usize, PathBuf)>) {
        let (lock, cv) = &*self.previews;
        let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
        q.wanted = list
            .into_iter()
            .filter(|(i, _)| !q.busy.contains(i))
            .collect();
        cv.notify_all();
    }

    /// The pictures wanted now, most wanted first (replaces the previous list: moving
    /// through the list never queues more than what is on screen).
    pub fn pictures(&self, list: Vec<Shot>) {
        let (lock, cv) = &*self.pictures;
        lock.lock().unwrap_or_else(|e| e.into_inner()).wanted = list.into();
        cv.notify_all();
    }

    /// Compute this heatmap next (replaces a request not started yet).
    pub fn heatmap(&self, item: usize, path: PathBuf, label: Option<usize>) {
        let (lock, cv) = &*self.heat;
        lock.lock().unwrap_or_else(|e| e.into_inner()).next = Some((item, path, label));
        cv.notify_all();
    }

    pub fn stop(&mut self) {
        self.cancel();
        self.jobs = None;
        let (lock, cv) = &*self.heat;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
        let (lock, cv) = &*self.previews;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
        let (lock, cv) = &*self.pictures;
        lock.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
    }
}

fn picture_loop(queue: &(Mutex<PictureQueue>, Condvar), graphics: &Graphics, tx: &Sender<Event>) {
    let (lock, cv) = queue;
    loop {
        let shot = {
            let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.stop {
                    return;
                }
                if let Some(next) = q.wanted.pop_front() {
                    break next;
                }
                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        // The encoders are third-party code: a panic becomes this picture's error.
        let picture = imaging::guard::catch(|| graphics.take(&shot)).unwrap_or_else(Err);
        if tx
            .send(Event::Picture {
                key: shot.key,
                picture,
            })
            .is_err()
        {
            return;
        }
    }
}

fn preview_loop(queue: &(Mutex<PreviewQueue>, Condvar), side: u32, tx: &Sender<Event>) {
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
        let preview = match imaging::load_film(&path) {
            Ok((d, film)) => {
                let film = film.fitted(side).settled();
                Preview::Ready {
                    thumb: Arc::new(render(&film.image, film.voi(), false)),
                    film: Some(Arc::new(film)),
                    describe: d.describe(),
                }
            }
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

fn heat_loop(queue: &(Mutex<HeatQueue>, Condvar), model: &Model, force: bool, tx: &Sender<Event>) {
    let (lock, cv) = queue;
    loop {
        let (item, path, label) = {
            let mut q = lock.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if q.stop {
                    return;
                }
                if let Some(next) = q.next.take() {
                    break next;
                }
                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            heat_of(model, &path, label, force)
        }))
        .unwrap_or_else(|_| Err("the heatmap failed (details when the UI closes)".into()));
        if tx
            .send(Event::Heatmap {
                item,
                label,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}

/// One file's heatmap: decoded and preprocessed as for scoring, then Grad-CAM of `label`
/// (`None`: the predicted one).
pub fn heat_of(model: &Model, path: &Path, label: Option<usize>, force: bool) -> HeatResult {
    let d = imaging::load(path).map_err(|e| e.to_string())?;
    if !force && let Some(reason) = d.dicom.as_ref().and_then(|i| i.out_of_scope()) {
        return Err(format!("no heatmap: {reason}"));
    }
    let spec = &model.manifest.input;
    let plane = preprocess(&d.image, spec).map_err(|e| e.to_string())?;
    let region = Region::of(input_crop(&d.image, spec), d.image.width, d.image.height);
    let maps = match label {
        Some(l) => model.heatmaps(&[plane], l),
        None => model
            .predict_full(&[plane])
            .map(|p| p.into_iter().filter_map(|p| p.heatmap).collect()),
    };
    let heatmap = maps
        .map_err(|e| e.to_string())?
        .pop()
        .ok_or("the model returned no heatmap")?;
    Ok(Arc::new(HeatView { heatmap, region }))
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
            // Copied one by one as the pipeline takes them, not all at once.
            let entries = job.items.into_iter().map(|(_, e)| Arc::unwrap_or_clone(e));
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
