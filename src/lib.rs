//! cxr-triage: chest X-ray triage in the terminal and in batch jobs.
//!
//! The modules are listed in data-flow order: each may use the ones above it, never one below
//! (`tests/it/layers.rs` checks; `docs/architecture.md` says where to add what; rustfmt.toml
//! keeps rustfmt from sorting them).

/// The one decode path, bytes to [`imaging::GrayImage`], guards and thumbnails.
pub mod imaging;
/// Find the images in a folder (streaming, natural order, folder labels); labelled data sets.
pub mod catalog;
/// The manifest, the one preprocessing function, the networks, prediction.
pub mod model;
/// What happened to each image, the one results row, its exports and tally, the store.
pub mod results;
/// The bounded decode-then-score pipeline that runs in the background.
pub mod scoring;
/// Data set review: labels from folders or a CSV, duplicates, per-folder figures.
pub mod review;
/// `eval`: metrics with bootstrap intervals.
pub mod evaluation;
/// `train`, in named stages.
pub mod training;
/// The terminal UI (state in `tui::app`, drawing in `tui::ui`, keys in `tui::keys`).
pub mod tui;
/// Every speed figure of `cxr-triage bench`.
pub mod bench;
/// The command line (the only place that uses `anyhow` and clap).
pub mod cli;
