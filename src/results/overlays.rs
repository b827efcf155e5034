//! `scan --heatmaps DIR`: one PNG per scored image, the image in gray with the predicted
//! label's heatmap blended over it, named after the image, the label and its probability
//! (`chest/a.png` → `DIR/chest/a.png.covid-0.87.png`). Never inside the scanned folder, never
//! over an existing file; folders `0700` and files `0600`, like the results store (they show
//! patients' films).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::catalog::is_inside;
use crate::results::Scored;

/// Writes the overlays of one scan.
pub struct OverlayWriter {
    dir: PathBuf,
    labels: Vec<String>,
    pub written: usize,
    /// Overlays not written, with why (an existing file, a write error).
    pub skipped: Vec<String>,
}

impl OverlayWriter {
    /// Refuses a folder inside `root` (the user's image folders are read-only to us); creates
    /// `dir` when it does not exist.
    pub fn new(dir: &Path, root: &Path, labels: &[String]) -> anyhow::Result<Self> {
        if is_inside(dir, root) {
            anyhow::bail!(
                "--heatmaps {} is inside the scanned folder {}: choose a folder outside it \
                 (the image folders are never written to)",
                dir.display(),
                root.display()
            );
        }
        create_dirs(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            labels: labels.to_vec(),
            written: 0,
            skipped: Vec::new(),
        })
    }

    /// The file an image's overlay goes to.
    pub fn path_for(&self, rel: &Path, label: usize, p: f32) -> PathBuf {
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let label = self.labels.get(label).map_or("label", String::as_str);
        let file = format!("{name}.{label}-{p:.2}.png");
        match rel.parent() {
            Some(parent) => self.dir.join(parent).join(file),
            None => self.dir.join(file),
        }
    }

    /// Write the overlay of one result, if it has one (scored images only).
    pub fn write(&mut self, scored: &Scored, probs: &[f32]) {
        let Some(overlay) = &scored.overlay else {
            return;
        };
        let label = overlay.heatmap.label;
        let p = probs.get(label).copied().unwrap_or(0.0);
        let path = self.path_for(scored.entry.rel(), label, p);
        match write_png(&path, &overlay.render()) {
            Ok(()) => self.written += 1,
            Err(e) => self.skipped.push(format!("{}: {e:#}", path.display())),
        }
    }
}

fn create_dirs(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_png(path: &Path, image: &image::RgbImage) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        create_dirs(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow::anyhow!("exists, not overwritten"),
        _ => e.into(),
    })?;
    let mut out = std::io::BufWriter::new(file);
    let written = image
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(out.flush()?));
    if written.is_err() {
        // A half-written file is not an overlay: the next run may try again.
        let _ = std::fs::remove_file(path);
    }
    written
}
