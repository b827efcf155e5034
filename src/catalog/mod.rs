//! Finding the images in a folder: a streaming, naturally sorted, recursive walk.

pub mod dataset;
mod natural;
pub mod shard;

pub use natural::natural_cmp;

use std::io::Read;
use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::imaging::{Format, sniff};

/// File extensions taken as images without looking inside (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "dcm", "dicom", "dic",
];

/// One file the walk found, or one place it could not read.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Path as found (root joined with the relative path).
    pub path: PathBuf,
    /// Path relative to the walked root, for display and export.
    pub rel: PathBuf,
    /// Name of the first folder below the root, when the entry sits in one (class folders).
    pub folder_label: Option<String>,
    /// Set when the walk itself failed here (permission denied, symlink loop).
    pub walk_error: Option<String>,
}

/// How to walk.
#[derive(Clone, Debug, Default)]
pub struct WalkOptions {
    /// Follow symbolic links (loops are detected and reported, not followed forever).
    pub follow_links: bool,
    /// Include files and folders whose names start with a dot.
    pub hidden: bool,
}

/// Is this a file we should try to decode? Known extensions are taken on their name; files
/// without an extension (DICOM often has none) are taken when their first bytes say image.
pub fn is_candidate(path: &Path) -> bool {
    match path.extension() {
        Some(_) => has_image_extension(path),
        None => sniff_file(path).is_some(),
    }
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|ext| IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()))
}

#[cfg(unix)]
fn is_special(t: &std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    t.is_fifo() || t.is_socket() || t.is_block_device() || t.is_char_device()
}

#[cfg(not(unix))]
fn is_special(_: &std::fs::FileType) -> bool {
    false
}

fn sniff_file(path: &Path) -> Option<Format> {
    let mut head = Vec::with_capacity(132);
    std::fs::File::open(path)
        .ok()?
        .take(132)
        .read_to_end(&mut head)
        .ok()?;
    sniff(&head)
}

/// Walk `root` lazily, yielding image candidates in natural order (`img2` before `img10`),
/// folder by folder. A single file as `root` yields just that file.
pub fn walk(root: &Path, options: &WalkOptions) -> impl Iterator<Item = Entry> {
    let root = root.to_path_buf();
    let hidden = options.hidden;
    let walker = WalkDir::new(&root)
        .follow_links(options.follow_links)
        .sort_by(|a, b| {
            natural_cmp(
                &a.file_name().to_string_lossy(),
                &b.file_name().to_string_lossy(),
            )
        })
        .into_iter()
        .filter_entry(move |e| {
            hidden || e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.')
        });
    walker.filter_map(move |item| match item {
        Ok(e) if e.file_type().is_dir() => None,
        Ok(e) => {
            // With follow_links off, a link is listed as a link: take it when it points at a file.
            let is_file = e.file_type().is_file() || (e.path_is_symlink() && e.path().is_file());
            if is_file {
                return (e.depth() == 0 || is_candidate(e.path()))
                    .then(|| make_entry(&root, e.path(), None));
            }
            // A FIFO, socket or device named like an image gets its row (an error when it is
            // read); it is never opened here, where opening a FIFO would block the walk.
            (is_special(&e.file_type()) && (e.depth() == 0 || has_image_extension(e.path())))
                .then(|| make_entry(&root, e.path(), None))
        }
        Err(err) => {
            let path = err
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.clone());
            let message = match err.loop_ancestor() {
                Some(a) => format!("symlink loop back to {}", a.display()),
                None => err
                    .io_error()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| err.to_string()),
            };
            Some(make_entry(
                &root,
                &path,
                Some(format!("cannot read: {message}")),
            ))
        }
    })
}

fn make_entry(root: &Path, path: &Path, walk_error: Option<String>) -> Entry {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let rel = if rel.as_os_str().is_empty() {
        PathBuf::from(path.file_name().unwrap_or(path.as_os_str()))
    } else {
        rel.to_path_buf()
    };
    let mut parts = rel.components();
    let first = parts.next();
    let folder_label = match (first, parts.next()) {
        (Some(dir), Some(_)) => Some(dir.as_os_str().to_string_lossy().into_owned()),
        _ => None,
    };
    Entry {
        path: path.to_path_buf(),
        rel,
        folder_label,
        walk_error,
    }
}

/// Is `path` (which may not exist yet) inside `root`?
pub fn is_inside(path: &Path, root: &Path) -> bool {
    let Ok(root) = root.canonicalize() else {
        return false;
    };
    let root = if root.is_file() {
        root.parent().map(Path::to_path_buf).unwrap_or(root)
    } else {
        root
    };
    // Resolve the longest existing ancestor, then add the rest back.
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let Ok(mut resolved) = existing.canonicalize() else {
        return false;
    };
    resolved.extend(rest.iter().rev());
    resolved.starts_with(&root)
}
