//! Writing rows to a file the user named: never over an existing file, never inside the image
//! folder (which is read-only to us).

use std::path::{Path, PathBuf};

use super::{ExportFormat, Row, RowWriter};
use crate::catalog::is_inside;

/// The default export file: in the current folder, or the home folder when the current folder
/// is inside the image folder (which is read-only to us); never over an existing file.
pub fn default_export_path(root: &Path) -> String {
    let name = root
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "results".into());
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let dir = if is_inside(&cwd, root) {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
    } else {
        PathBuf::from(".")
    };
    let mut n = 1;
    loop {
        let file = if n == 1 {
            format!("cxr-triage-{name}.csv")
        } else {
            format!("cxr-triage-{name}-{n}.csv")
        };
        let path = dir.join(&file);
        if !path.exists() {
            return if dir == Path::new(".") {
                file
            } else {
                path.display().to_string()
            };
        }
        n += 1;
    }
}

/// A new file for results: never over an existing one, never inside the image folder `root`.
pub fn create_export(path: &Path, root: &Path) -> Result<std::fs::File, String> {
    if is_inside(path, root) {
        return Err(format!(
            "{}: inside the image folder, which cxr-triage never writes to; choose another place",
            path.display()
        ));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!("{} exists; choose another name", path.display())
            }
            _ => format!("{}: {e}", path.display()),
        })
}

/// Write rows to a new file (never over an existing one, never inside the image folder).
pub fn export_rows(
    path: &Path,
    root: &Path,
    format: ExportFormat,
    labels: &[String],
    rows: &[Row],
) -> Result<String, String> {
    let file = create_export(path, root)?;
    let write = || -> std::io::Result<()> {
        let mut w = RowWriter::new(std::io::BufWriter::new(file), format, labels)?;
        for row in rows {
            w.write(row)?;
        }
        w.finish()?;
        Ok(())
    };
    write().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("{} rows written to {}", rows.len(), path.display()))
}
