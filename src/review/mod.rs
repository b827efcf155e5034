//! Reviewing a data set: true labels (class folders or a CSV), duplicates and leaks, and the
//! per-folder breakdown. The metrics themselves are `eval`'s ([`crate::evaluation::report`]).

pub mod duplicates;
pub mod folders;
pub mod labels;

pub use duplicates::{Candidate, Group, groups};
pub use folders::{FolderStats, by_folder};
pub use labels::{LabelFile, LabelMatcher, Truth};
