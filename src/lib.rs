//! cxr-triage: chest X-ray triage in the terminal and in batch jobs.
//!
//! Module map (data flows top to bottom):
//! - [`catalog`]: find the images in a folder (streaming, natural order, folder labels).
//! - [`imaging`]: the one decode path, bytes to [`imaging::GrayImage`], and thumbnails.
//! - [`model`]: the manifest, the one preprocessing function, the networks, prediction.
//! - [`worker`]: the bounded decode-then-score pipeline that runs in the background.
//! - [`results`]: the one results type, its CSV / JSON exports, and the results store.
//! - [`review`]: data set review: labels from folders or a CSV, duplicates, per-folder figures.
//! - [`tui`]: the terminal UI (state in `tui::app`, drawing in `tui::ui`).
//! - [`cli`]: the command line (the only place that uses `anyhow`).

pub mod bench;
pub mod catalog;
pub mod cli;
pub mod dataset;
pub mod drr;
pub mod eval;
pub mod imaging;
pub mod metrics;
pub mod model;
pub mod results;
pub mod review;
pub mod train;
pub mod tui;
pub mod worker;
