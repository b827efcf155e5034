//! Background scoring: a bounded pipeline where decoding runs in parallel with inference.
//!
//! ```text
//! entries ─> feeder ─(bounded)─> decoders (N threads: load + preprocess) ─(bounded)─> scorer
//!                                                                                    (batches,
//!                                                                                     model)
//! ```
//! The channels are bounded, so memory stays flat however many files there are, and a scan
//! runs at the pace of the slower stage rather than the sum of both. Results come out in the
//! order of the input through a small reorder buffer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::catalog::Entry;
use crate::imaging::dhash::{DHash, dhash};
use crate::imaging::{self, DicomInfo, Limits};
use crate::imaging::{Thumbnail, thumbnail};
use crate::model::heatmap::{Heatmap, Overlay, Region};
use crate::model::{InputSpec, Model, input_crop, preprocess};
use crate::results::store::{FileKey, Store, content_hash};
use crate::results::{ImageInfo, Outcome, Scored};

#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Largest inference batch; smaller batches run when decoding is the slower stage.
    pub batch: usize,
    /// Decoder threads.
    pub decoders: usize,
    /// Score images that are out of scope (lateral views, other modalities) anyway.
    pub force: bool,
    /// Deliver each scored image's heatmap over a gray copy of the image
    /// ([`Scored::overlay`]); every image is decoded then, none taken from the store.
    pub overlays: bool,
}

/// Longest side of the picture kept for an overlay.
pub const OVERLAY_SIDE: u32 = 1024;

impl Default for PipelineOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            batch: 8,
            decoders: cores.max(1),
            force: false,
            overlays: false,
        }
    }
}

/// A decoded image waiting for the model.
struct Plane {
    index: usize,
    entry: Entry,
    info: ImageInfo,
    plane: Vec<f32>,
    hash: u128,
    dhash: DHash,
    /// Where to store the outcome (with a store only).
    key: Option<FileKey>,
    /// The image in gray and the region the model sees, for an overlay.
    picture: Option<(Thumbnail, Region)>,
}

enum Ready {
    Plane(Plane),
    Done(Scored),
}

/// Decode, preprocess and score every entry; `sink` gets each result in input order.
/// Setting `cancel` stops the work soon (within one batch); what finished was delivered.
pub fn score_all<I, F>(
    entries: I,
    model: &Model,
    options: &PipelineOptions,
    cancel: &AtomicBool,
    sink: F,
) where
    I: IntoIterator<Item = Entry> + Send,
    I::IntoIter: Send,
    F: FnMut(Scored),
{
    score_all_stored(entries, model, options, None, cancel, sink)
}

/// [`score_all`] with a results store: outcomes found there are delivered without decoding
/// (marked `cached`), new ones are stored.
pub fn score_all_stored<I, F>(
    entries: I,
    model: &Model,
    options: &PipelineOptions,
    store: Option<&Store>,
    cancel: &AtomicBool,
    mut sink: F,
) where
    I: IntoIterator<Item = Entry> + Send,
    I::IntoIter: Send,
    F: FnMut(Scored),
{
    let batch = options.batch.max(1);
    let depth = batch * 2 + options.decoders;
    let (job_tx, job_rx) = bounded::<(usize, Entry)>(depth);
    let (ready_tx, ready_rx) = bounded::<Ready>(depth);
    let spec = &model.manifest.input;
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for job in entries.into_iter().enumerate() {
                if cancel.load(Ordering::Relaxed) || job_tx.send(job).is_err() {
                    break;
                }
            }
        });
        for _ in 0..options.decoders.max(1) {
            let (jobs, ready) = (job_rx.clone(), ready_tx.clone());
            scope.spawn(move || decode_loop(jobs, ready, spec, options, store, cancel));
        }
        drop((job_rx, ready_tx));

        let mut reorder = Reorder::default();
        let mut pending: Vec<Plane> = Vec::with_capacity(batch);
        while let Ok(first) = ready_rx.recv() {
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Ready::Done(s) => reorder.push(s),
                    Ready::Plane(p) => pending.push(p),
                }
                if pending.len() < batch {
                    next = ready_rx.try_recv().ok();
                }
            }
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            for s in score_batch(model, std::mem::take(&mut pending), store) {
                reorder.push(s);
            }
            reorder.drain(&mut sink);
        }
        // Leaving the loop drops the receiver, so decoders blocked on `send` stop too.
        drop(ready_rx);
        reorder.drain(&mut sink);
    });
    if let Some(store) = store {
        store.flush();
    }
}

fn decode_loop(
    jobs: Receiver<(usize, Entry)>,
    ready: Sender<Ready>,
    spec: &InputSpec,
    options: &PipelineOptions,
    store: Option<&Store>,
    cancel: &AtomicBool,
) {
    for (index, entry) in jobs {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let item = prepare(index, entry, spec, options, store);
        if ready.send(item).is_err() {
            break;
        }
    }
}

/// A stored outcome as this run would have it: a stored score of an out-of-scope image is
/// not shown without `force`, and a stored "out of scope" is not enough with it.
fn usable(outcome: Outcome, force: bool) -> Option<Outcome> {
    match outcome {
        Outcome::OutOfScope { .. } if force => None,
        Outcome::Scored {
            info,
            probs,
            unusual,
            border,
        } if !force => match info.dicom.as_deref().and_then(DicomInfo::out_of_scope) {
            Some(reason) => Some(Outcome::OutOfScope { info, reason }),
            None => Some(Outcome::Scored {
                info,
                probs,
                unusual,
                border,
            }),
        },
        other => Some(other),
    }
}

/// Everything before the model for one entry: the store, reading, hashing, decoding and
/// preprocessing. Anything but a plane to score is the entry's final outcome.
fn prepare(
    index: usize,
    entry: Entry,
    spec: &InputSpec,
    options: &PipelineOptions,
    store: Option<&Store>,
) -> Ready {
    let force = options.force;
    // With overlays, every image is decoded; outcomes are still stored.
    let reuse = store.filter(|_| !options.overlays);
    let done = |entry, outcome, hash, dhash, cached| {
        Ready::Done(Scored {
            index,
            entry,
            outcome,
            hash,
            dhash,
            cached,
            overlay: None,
        })
    };
    let failed = |info, error| Outcome::Failed { info, error };
    if let Some(e) = &entry.walk_error {
        let outcome = failed(None, e.to_string());
        return done(entry, outcome, None, None, false);
    }
    if let Some(store) = reuse
        && let Some((_, hit)) = restore(std::slice::from_ref(&entry), store, force).next()
    {
        return Ready::Done(Scored { index, ..hit });
    }
    let limits = Limits::default();
    let (bytes, meta) = match imaging::read_file(&entry.path, &limits) {
        Ok(read) => read,
        Err(e) => return done(entry, failed(None, e.to_string()), None, None, false),
    };
    let key = store.map(|_| FileKey::new(&entry.path, &meta));
    let hash = content_hash(&bytes);
    if let (Some(store), Some(key)) = (reuse, &key)
        && let Some(hit) = store.by_hash(hash)
        && let Some(outcome) = usable(hit.outcome, force)
    {
        store.record_file(key.clone(), hash, &outcome, hit.dhash);
        return done(entry, outcome, Some(hash), hit.dhash, true);
    }
    let stored = |entry, outcome: Outcome, dhash| {
        if let (Some(store), Some(key)) = (store, key.clone()) {
            store.put(key, hash, &outcome, dhash);
        }
        done(entry, outcome, Some(hash), dhash, false)
    };
    let decoded = match imaging::decode_bytes(&bytes, &limits) {
        Ok(d) => d,
        Err(e) => return stored(entry, failed(None, e.to_string()), None),
    };
    drop(bytes);
    let info = ImageInfo::from(&decoded);
    let dh = dhash(&decoded.image);
    if !force && let Some(reason) = decoded.dicom.as_ref().and_then(DicomInfo::out_of_scope) {
        return stored(entry, Outcome::OutOfScope { info, reason }, Some(dh));
    }
    match preprocess(&decoded.image, spec) {
        Ok(plane) => Ready::Plane(Plane {
            index,
            entry,
            info,
            plane,
            hash,
            dhash: dh,
            key,
            picture: options.overlays.then(|| {
                let (w, h) = (decoded.image.width, decoded.image.height);
                let region = Region::of(input_crop(&decoded.image, spec), w, h);
                (thumbnail(&decoded.image, OVERLAY_SIDE), region)
            }),
        }),
        Err(e) => stored(entry, failed(Some(info), e.to_string()), Some(dh)),
    }
}

/// Look files up by path, size and mtime only (no read): what reopening a folder shows at
/// once. One statement for the whole batch ([`Store::by_files`]); each found file comes back
/// with its index in `entries`. Files the store has nothing for (or that changed) are left out.
pub fn restore<'a>(
    entries: &'a [Entry],
    store: &Store,
    force: bool,
) -> impl Iterator<Item = (usize, Scored)> + 'a {
    let readable = || {
        entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.walk_error.is_none())
    };
    let stats = FileKey::stat_many(readable().map(|(_, e)| e.path.as_path()));
    let (places, keys): (Vec<usize>, Vec<FileKey>) = readable()
        .zip(stats)
        .filter_map(|((i, _), key)| Some((i, key?)))
        .unzip();
    let hits = store.by_files(&keys);
    places.into_iter().zip(hits).filter_map(move |(i, hit)| {
        let hit = hit?;
        let outcome = usable(hit.outcome, force)?;
        Some((
            i,
            Scored {
                index: 0,
                entry: entries[i].clone(),
                outcome,
                hash: Some(hit.hash),
                dhash: hit.dhash,
                cached: true,
                overlay: None,
            },
        ))
    })
}

fn score_batch(model: &Model, mut batch: Vec<Plane>, store: Option<&Store>) -> Vec<Scored> {
    if batch.is_empty() {
        return Vec::new();
    }
    let planes: Vec<Vec<f32>> = batch
        .iter_mut()
        .map(|p| std::mem::take(&mut p.plane))
        .collect();
    let result = model.predict_full(&planes);
    let failed = result.as_ref().err().map(|e| e.to_string());
    let mut rows = result.ok().map(|r| r.into_iter());
    batch
        .into_iter()
        .map(|p| {
            let mut overlay = None;
            let outcome = match (&mut rows, &failed) {
                (Some(rows), _) => match rows.next() {
                    Some(pred) => {
                        let border = pred.heatmap.as_ref().and_then(Heatmap::border_share);
                        overlay =
                            p.picture
                                .zip(pred.heatmap)
                                .map(|((picture, region), heatmap)| {
                                    Box::new(Overlay {
                                        picture,
                                        region,
                                        heatmap,
                                    })
                                });
                        Outcome::Scored {
                            info: p.info,
                            probs: pred.probs,
                            unusual: pred.unusual,
                            border,
                        }
                    }
                    None => Outcome::Failed {
                        info: Some(p.info),
                        error: "the model returned fewer rows than images".into(),
                    },
                },
                (None, error) => Outcome::Failed {
                    info: Some(p.info),
                    error: error.clone().unwrap_or_default(),
                },
            };
            // A model failure is not the file's fault: not stored, so the next run tries again.
            if let (Some(store), Some(key), Outcome::Scored { .. }) = (store, p.key, &outcome) {
                store.put(key, p.hash, &outcome, Some(p.dhash));
            }
            Scored {
                index: p.index,
                entry: p.entry,
                outcome,
                hash: Some(p.hash),
                dhash: Some(p.dhash),
                cached: false,
                overlay,
            }
        })
        .collect()
}

/// Holds results that arrive early until everything before them has arrived.
#[derive(Default)]
struct Reorder {
    next: usize,
    waiting: BTreeMap<usize, Scored>,
}

impl Reorder {
    fn push(&mut self, s: Scored) {
        self.waiting.insert(s.index, s);
    }

    fn drain(&mut self, sink: &mut impl FnMut(Scored)) {
        while let Some(s) = self.waiting.remove(&self.next) {
            self.next += 1;
            sink(s);
        }
    }
}
