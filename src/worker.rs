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
use crate::imaging::{self, Decoded, DicomInfo, Format};
use crate::model::{InputSpec, Model, preprocess};

/// Facts about a decoded image, kept with its result.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ImageInfo {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    pub dicom: Option<DicomInfo>,
}

impl From<&Decoded> for ImageInfo {
    fn from(d: &Decoded) -> Self {
        Self {
            format: d.format,
            width: d.image.width,
            height: d.image.height,
            bit_depth: d.image.bit_depth,
            dicom: d.dicom.clone(),
        }
    }
}

/// What happened to one entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Scored {
        info: ImageInfo,
        probs: Vec<f32>,
    },
    Failed {
        info: Option<ImageInfo>,
        error: String,
    },
    /// Read fine, but not what the model is for (a lateral view, a CT slice): not scored.
    OutOfScope {
        info: ImageInfo,
        reason: String,
    },
}

/// One entry's result, with its position in the input.
#[derive(Clone, Debug)]
pub struct Scored {
    pub index: usize,
    pub entry: Entry,
    pub outcome: Outcome,
}

#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// Largest inference batch; smaller batches run when decoding is the slower stage.
    pub batch: usize,
    /// Decoder threads.
    pub decoders: usize,
    /// Score images that are out of scope (lateral views, other modalities) anyway.
    pub force: bool,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            batch: 8,
            decoders: cores.max(1),
            force: false,
        }
    }
}

enum Ready {
    Plane {
        index: usize,
        entry: Entry,
        info: ImageInfo,
        plane: Vec<f32>,
    },
    Done(Scored),
}

/// Decode, preprocess and score every entry; `sink` gets each result in input order.
/// Setting `cancel` stops the work soon (within one batch); what finished was delivered.
pub fn score_all<I, F>(
    entries: I,
    model: &Model,
    options: &PipelineOptions,
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
            let force = options.force;
            scope.spawn(move || decode_loop(jobs, ready, spec, force, cancel));
        }
        drop((job_rx, ready_tx));

        let mut reorder = Reorder::default();
        let mut pending: Vec<(usize, Entry, ImageInfo, Vec<f32>)> = Vec::with_capacity(batch);
        while let Ok(first) = ready_rx.recv() {
            let mut next = Some(first);
            while let Some(item) = next.take() {
                match item {
                    Ready::Done(s) => reorder.push(s),
                    Ready::Plane {
                        index,
                        entry,
                        info,
                        plane,
                    } => pending.push((index, entry, info, plane)),
                }
                if pending.len() < batch {
                    next = ready_rx.try_recv().ok();
                }
            }
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            for s in score_batch(model, std::mem::take(&mut pending)) {
                reorder.push(s);
            }
            reorder.drain(&mut sink);
        }
        // Leaving the loop drops the receiver, so decoders blocked on `send` stop too.
        drop(ready_rx);
        reorder.drain(&mut sink);
    });
}

fn decode_loop(
    jobs: Receiver<(usize, Entry)>,
    ready: Sender<Ready>,
    spec: &InputSpec,
    force: bool,
    cancel: &AtomicBool,
) {
    for (index, entry) in jobs {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let item = match decode_one(&entry, spec, force) {
            Ok((info, plane)) => Ready::Plane {
                index,
                entry,
                info,
                plane,
            },
            Err(outcome) => Ready::Done(Scored {
                index,
                entry,
                outcome: *outcome,
            }),
        };
        if ready.send(item).is_err() {
            break;
        }
    }
}

/// Load and preprocess one entry; anything but a plane to score is its final outcome
/// (boxed: it is the rare, large path).
fn decode_one(
    entry: &Entry,
    spec: &InputSpec,
    force: bool,
) -> Result<(ImageInfo, Vec<f32>), Box<Outcome>> {
    let failed = |info, error| Box::new(Outcome::Failed { info, error });
    if let Some(e) = &entry.walk_error {
        return Err(failed(None, e.clone()));
    }
    let decoded = imaging::load(&entry.path).map_err(|e| failed(None, e.to_string()))?;
    let info = ImageInfo::from(&decoded);
    if !force && let Some(reason) = decoded.dicom.as_ref().and_then(DicomInfo::out_of_scope) {
        return Err(Box::new(Outcome::OutOfScope { info, reason }));
    }
    let plane =
        preprocess(&decoded.image, spec).map_err(|e| failed(Some(info.clone()), e.to_string()))?;
    Ok((info, plane))
}

fn score_batch(model: &Model, batch: Vec<(usize, Entry, ImageInfo, Vec<f32>)>) -> Vec<Scored> {
    if batch.is_empty() {
        return Vec::new();
    }
    let (meta, planes): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|(index, entry, info, plane)| ((index, entry, info), plane))
        .unzip();
    match model.predict(&planes) {
        Ok(rows) => meta
            .into_iter()
            .zip(rows)
            .map(|((index, entry, info), probs)| Scored {
                index,
                entry,
                outcome: Outcome::Scored { info, probs },
            })
            .collect(),
        Err(e) => meta
            .into_iter()
            .map(|(index, entry, info)| Scored {
                index,
                entry,
                outcome: Outcome::Failed {
                    info: Some(info),
                    error: e.to_string(),
                },
            })
            .collect(),
    }
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
