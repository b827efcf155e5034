//! One integration-test binary; each module covers one part of the engine.

mod common;
mod imaging;
mod model;
mod scan;
mod train;
mod walk;
