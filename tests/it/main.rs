//! One integration-test binary; each module covers one part of the engine.

mod common;
mod default_model;
mod densenet;
mod dicom;
mod efficientnet;
mod heatmap;
mod hostile;
mod imaging;
mod kernels;
mod layers;
mod model;
mod pydicom;
mod review;
mod samples;
mod scan;
mod shard;
mod slurm;
mod store;
mod train;
mod tui;
mod walk;
